-- Scratch copies of finmatch's tables for pgbench: the same columns, defaults, checks and
-- indexes (LIKE … INCLUDING ALL), none of the foreign keys (pgbench has no enterprises or
-- credentials to point at). Counter rows and referral lender/product ids are UUIDs made from
-- integers, so the scripts can pick them at random without a lookup.
DROP SCHEMA IF EXISTS bench_pg CASCADE;
CREATE SCHEMA bench_pg;
CREATE TABLE bench_pg.needs (LIKE public.needs INCLUDING ALL);
CREATE TABLE bench_pg.referrals (LIKE public.referrals INCLUDING ALL);
CREATE TABLE bench_pg.product_daily_usage (LIKE public.product_daily_usage INCLUDING ALL);
-- What SubmitNeed writes besides (submit_writes.sql): its events, audit row and replay record.
CREATE TABLE bench_pg.referral_events (LIKE public.referral_events INCLUDING ALL);
CREATE TABLE bench_pg.audit_log (LIKE public.audit_log INCLUDING ALL);
CREATE TABLE bench_pg.idempotency_keys (LIKE public.idempotency_keys INCLUDING ALL);
INSERT INTO bench_pg.product_daily_usage (product_id, day, referrals)
SELECT lpad(to_hex(i), 32, '0')::uuid, current_date, 0 FROM generate_series(1, 1000) AS i;

-- The read: copies of the needs finmatch routed (and their referrals), renumbered 1..N.
CREATE TABLE bench_pg.read_needs (LIKE public.needs INCLUDING ALL);
CREATE TABLE bench_pg.read_referrals (LIKE public.referrals INCLUDING ALL);
CREATE TEMPORARY TABLE renumbered AS
SELECT n.id AS old_id,
       lpad(to_hex(row_number() OVER (ORDER BY n.created_at, n.id)), 32, '0')::uuid AS new_id
FROM public.needs n
WHERE EXISTS (SELECT 1 FROM public.referrals r WHERE r.need_id = n.id);
INSERT INTO bench_pg.read_needs
SELECT n.* FROM public.needs n JOIN renumbered ON n.id = old_id;
UPDATE bench_pg.read_needs n SET id = new_id FROM renumbered WHERE n.id = old_id;
INSERT INTO bench_pg.read_referrals
SELECT r.* FROM public.referrals r JOIN renumbered ON r.need_id = old_id;
UPDATE bench_pg.read_referrals r SET need_id = new_id FROM renumbered WHERE r.need_id = old_id;
ANALYZE bench_pg.needs, bench_pg.referrals, bench_pg.product_daily_usage,
    bench_pg.read_needs, bench_pg.read_referrals;
SELECT count(*) AS read_needs FROM bench_pg.read_needs;
