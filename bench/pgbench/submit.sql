-- The transaction equivalent to one SubmitNeed: insert a need, its three referrals (three
-- distinct lenders of 50), and count them on a daily-usage counter row (one of 1,000);
-- synchronous commit on (run.sh checks it). Run with -M prepared.
\set lender1 random(1, 50)
\set lender2 1 + (:lender1 - 1 + random(1, 24)) % 50
\set lender3 1 + (:lender1 - 1 + random(25, 49)) % 50
\set product random(1, 1000)
\set amount random(10000000, 5000000000)
BEGIN;
INSERT INTO bench_pg.needs (enterprise_id, amount_minor, term_months, purpose, collateral,
    max_rate_bps, needed_by, consent_to_share, channel, status, routing_attempts,
    idempotency_key, created_by)
VALUES (gen_random_uuid(), :amount, 12, 'WORKING_CAPITAL', '{CREDIT,GUARANTEE}', 500,
    current_date + 180, true, 'BUREAU', 'ROUTED', 3, 'pgbench-' || gen_random_uuid(),
    '00000000-0000-0000-0000-000000000001')
RETURNING id AS need_id \gset
INSERT INTO bench_pg.referrals (need_id, lender_id, product_id, score, factors, sla_deadline)
VALUES
  (:need_id, lpad(to_hex(CAST(:lender1 AS integer)), 32, '0')::uuid, lpad(to_hex(CAST(:product AS integer)), 32, '0')::uuid, 812,
   '[{"name":"rate","value_bps":7200,"weight_bps":3000,"points":216,"note":"expected 3.85%"},{"name":"amount_fit","value_bps":9100,"weight_bps":1500,"points":136,"note":"centre"},{"name":"approval_history","value_bps":5000,"weight_bps":1500,"points":75,"note":"prior"},{"name":"responsiveness","value_bps":5000,"weight_bps":1000,"points":50,"note":"prior"},{"name":"capacity","value_bps":10000,"weight_bps":1000,"points":100,"note":"headroom"},{"name":"policy_priority","value_bps":0,"weight_bps":1000,"points":0,"note":"none"},{"name":"locality","value_bps":6000,"weight_bps":1000,"points":60,"note":"prefecture"}]',
   now() + interval '72 hours'),
  (:need_id, lpad(to_hex(CAST(:lender2 AS integer)), 32, '0')::uuid, lpad(to_hex(CAST(:product AS integer) + 1000), 32, '0')::uuid, 790,
   '[{"name":"rate","value_bps":7000,"weight_bps":3000,"points":210,"note":"expected 3.95%"},{"name":"amount_fit","value_bps":8800,"weight_bps":1500,"points":132,"note":"centre"},{"name":"approval_history","value_bps":5000,"weight_bps":1500,"points":75,"note":"prior"},{"name":"responsiveness","value_bps":5000,"weight_bps":1000,"points":50,"note":"prior"},{"name":"capacity","value_bps":10000,"weight_bps":1000,"points":100,"note":"headroom"},{"name":"policy_priority","value_bps":0,"weight_bps":1000,"points":0,"note":"none"},{"name":"locality","value_bps":6000,"weight_bps":1000,"points":60,"note":"prefecture"}]',
   now() + interval '48 hours'),
  (:need_id, lpad(to_hex(CAST(:lender3 AS integer)), 32, '0')::uuid, lpad(to_hex(CAST(:product AS integer) + 2000), 32, '0')::uuid, 771,
   '[{"name":"rate","value_bps":6600,"weight_bps":3000,"points":198,"note":"expected 4.10%"},{"name":"amount_fit","value_bps":8500,"weight_bps":1500,"points":127,"note":"centre"},{"name":"approval_history","value_bps":5000,"weight_bps":1500,"points":75,"note":"prior"},{"name":"responsiveness","value_bps":5000,"weight_bps":1000,"points":50,"note":"prior"},{"name":"capacity","value_bps":10000,"weight_bps":1000,"points":100,"note":"headroom"},{"name":"policy_priority","value_bps":0,"weight_bps":1000,"points":0,"note":"none"},{"name":"locality","value_bps":3000,"weight_bps":1000,"points":30,"note":"province"}]',
   now() + interval '120 hours');
UPDATE bench_pg.product_daily_usage SET referrals = referrals + 1
WHERE product_id = lpad(to_hex(CAST(:product AS integer)), 32, '0')::uuid AND day = current_date;
END;
