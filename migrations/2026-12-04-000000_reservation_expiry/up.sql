-- A reservation holds quota for a bounded time, set per program; the sweeper releases lapsed
-- ones. Additive: the previous release ignores the new columns (its allocations get the default
-- hold from their creation time).
ALTER TABLE programs ADD COLUMN reservation_hours integer NOT NULL DEFAULT 72
    CHECK (reservation_hours BETWEEN 1 AND 8760);
COMMENT ON COLUMN programs.reservation_hours IS 'How long a RESERVED allocation holds quota before the sweeper releases it, in hours (1 to 8760).';

ALTER TABLE allocations ADD COLUMN expires_at timestamptz;
UPDATE allocations SET expires_at = created_at + interval '72 hours';
ALTER TABLE allocations ALTER COLUMN expires_at SET NOT NULL;
ALTER TABLE allocations ALTER COLUMN expires_at SET DEFAULT now() + interval '72 hours';
COMMENT ON COLUMN allocations.expires_at IS 'When a RESERVED allocation lapses (created_at + the program''s reservation_hours): confirmation is refused from then on and the sweeper releases it.';

ALTER TABLE allocations ADD COLUMN release_reason text CHECK (release_reason IN ('RELEASED_BY_CALLER', 'LAPSED'));
UPDATE allocations SET release_reason = 'RELEASED_BY_CALLER' WHERE status = 'RELEASED';
COMMENT ON COLUMN allocations.release_reason IS 'Why a RELEASED allocation was released: RELEASED_BY_CALLER (ReleaseAllocation) or LAPSED (its reservation time ran out); NULL otherwise (and on rows the previous release released).';

-- The sweeper's scan: only live reservations, soonest to lapse first.
CREATE INDEX allocations_reserved_expires_at_idx ON allocations (expires_at) WHERE status = 'RESERVED';
