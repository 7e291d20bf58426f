-- updated_at is set by the UPDATE statements themselves (src/storage), not by triggers: a
-- distributed PostgreSQL (Citus, DESIGN §9) refuses triggers on distributed tables by default,
-- and a row's update time is part of what the statement that changes it means.
DROP TRIGGER enterprises_touch_updated_at ON enterprises;
DROP TRIGGER lenders_touch_updated_at ON lenders;
DROP TRIGGER products_touch_updated_at ON products;
DROP TRIGGER needs_touch_updated_at ON needs;
DROP TRIGGER referrals_touch_updated_at ON referrals;
DROP TRIGGER programs_touch_updated_at ON programs;
DROP TRIGGER allocations_touch_updated_at ON allocations;
DROP FUNCTION finmatch_touch_updated_at();
