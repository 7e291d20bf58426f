DROP INDEX allocations_reserved_expires_at_idx;
ALTER TABLE allocations DROP COLUMN release_reason;
ALTER TABLE allocations DROP COLUMN expires_at;
ALTER TABLE programs DROP COLUMN reservation_hours;
