-- Reverts 2026-11-29-000000_initial: drops everything up.sql created, in
-- reverse order (triggers go with their tables).
DROP TABLE audit_log;
DROP TABLE idempotency_keys;
DROP TABLE allocations;
DROP TABLE program_enterprises;
DROP TABLE program_lender_quotas;
DROP TABLE programs;
DROP TABLE disbursements;
DROP TABLE referral_events;
DROP FUNCTION finmatch_notify_referral_event();
DROP TABLE referrals;
DROP TABLE needs;
DROP TABLE credentials;
DROP TABLE product_daily_usage;
DROP TABLE products;
DROP TABLE lenders;
DROP FUNCTION finmatch_notify_products_changed();
DROP TABLE designations;
DROP TABLE enterprises;
DROP FUNCTION finmatch_forbid_change();
DROP FUNCTION finmatch_touch_updated_at();
DROP FUNCTION finmatch_all_match(text[], text);
