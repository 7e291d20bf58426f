-- Every row SubmitNeed writes, in one statement as finmatch sends it: the need, three referrals,
-- their three CREATED events, the audit row, the replay record (a response of about 4 KiB) and
-- three daily-usage counters. Not a §7 baseline (that is submit.sql); it shows what PostgreSQL
-- alone does with SubmitNeed's own writes on this machine. Tables as in public, without foreign
-- keys and triggers. Synchronous commit on. Run with -M prepared.
\set lender1 random(1, 50)
\set lender2 1 + (:lender1 - 1 + random(1, 24)) % 50
\set lender3 1 + (:lender1 - 1 + random(25, 49)) % 50
\set product random(1, 1000)
\set amount random(10000000, 5000000000)
WITH need AS (
  INSERT INTO bench_pg.needs (id, enterprise_id, amount_minor, term_months, purpose, collateral,
      max_rate_bps, needed_by, consent_to_share, channel, status, routing_attempts,
      idempotency_key, created_by)
  VALUES (gen_random_uuid(), gen_random_uuid(), :amount, 12, 'WORKING_CAPITAL', '{CREDIT,GUARANTEE}',
      500, current_date + 180, true, 'BUREAU', 'ROUTED', 3, 'pgbench-' || gen_random_uuid(),
      '00000000-0000-0000-0000-000000000001')
  RETURNING id, enterprise_id
), referral AS (
  INSERT INTO bench_pg.referrals (id, need_id, lender_id, product_id, score, factors, sla_deadline)
  SELECT gen_random_uuid(), need.id, r.lender_id, r.product_id, r.score, r.factors::jsonb, r.sla_deadline
  FROM need, (VALUES
    (lpad(to_hex(CAST(:lender1 AS integer)), 32, '0')::uuid, lpad(to_hex(CAST(:product AS integer)), 32, '0')::uuid, 812,
   '[{"name":"rate","value_bps":7200,"weight_bps":3000,"points":216,"note":"expected 3.85%"},{"name":"amount_fit","value_bps":9100,"weight_bps":1500,"points":136,"note":"centre"},{"name":"approval_history","value_bps":5000,"weight_bps":1500,"points":75,"note":"prior"},{"name":"responsiveness","value_bps":5000,"weight_bps":1000,"points":50,"note":"prior"},{"name":"capacity","value_bps":10000,"weight_bps":1000,"points":100,"note":"headroom"},{"name":"policy_priority","value_bps":0,"weight_bps":1000,"points":0,"note":"none"},{"name":"locality","value_bps":6000,"weight_bps":1000,"points":60,"note":"prefecture"}]',
   now() + interval '72 hours'),
    (lpad(to_hex(CAST(:lender2 AS integer)), 32, '0')::uuid, lpad(to_hex(CAST(:product AS integer) + 1000), 32, '0')::uuid, 790,
   '[{"name":"rate","value_bps":7000,"weight_bps":3000,"points":210,"note":"expected 3.95%"},{"name":"amount_fit","value_bps":8800,"weight_bps":1500,"points":132,"note":"centre"},{"name":"approval_history","value_bps":5000,"weight_bps":1500,"points":75,"note":"prior"},{"name":"responsiveness","value_bps":5000,"weight_bps":1000,"points":50,"note":"prior"},{"name":"capacity","value_bps":10000,"weight_bps":1000,"points":100,"note":"headroom"},{"name":"policy_priority","value_bps":0,"weight_bps":1000,"points":0,"note":"none"},{"name":"locality","value_bps":6000,"weight_bps":1000,"points":60,"note":"prefecture"}]',
   now() + interval '48 hours'),
    (lpad(to_hex(CAST(:lender3 AS integer)), 32, '0')::uuid, lpad(to_hex(CAST(:product AS integer) + 2000), 32, '0')::uuid, 771,
   '[{"name":"rate","value_bps":6600,"weight_bps":3000,"points":198,"note":"expected 4.10%"},{"name":"amount_fit","value_bps":8500,"weight_bps":1500,"points":127,"note":"centre"},{"name":"approval_history","value_bps":5000,"weight_bps":1500,"points":75,"note":"prior"},{"name":"responsiveness","value_bps":5000,"weight_bps":1000,"points":50,"note":"prior"},{"name":"capacity","value_bps":10000,"weight_bps":1000,"points":100,"note":"headroom"},{"name":"policy_priority","value_bps":0,"weight_bps":1000,"points":0,"note":"none"},{"name":"locality","value_bps":3000,"weight_bps":1000,"points":30,"note":"province"}]',
   now() + interval '120 hours')) AS r(lender_id, product_id, score, factors, sla_deadline)
  RETURNING id, need_id, lender_id, product_id, score, sla_deadline
), event AS (
  INSERT INTO bench_pg.referral_events (referral_id, lender_id, need_id, kind, status, detail)
  SELECT id, lender_id, need_id, 'CREATED', 'PENDING',
      jsonb_build_object('product_id', product_id, 'score', score, 'sla_deadline', sla_deadline)
  FROM referral
), audit AS (
  INSERT INTO bench_pg.audit_log (principal_id, principal_role, rpc, entity_type, entity_id, detail)
  SELECT '00000000-0000-0000-0000-000000000001', 'OPERATOR', '/finmatch.v1.FinancingService/SubmitNeed',
      'need', id::text, jsonb_build_object('enterprise_id', enterprise_id, 'status', 'ROUTED')
  FROM need
), replay AS (
  INSERT INTO bench_pg.idempotency_keys (principal_id, rpc, key, request_hash, response)
  SELECT '00000000-0000-0000-0000-000000000001', '/finmatch.v1.FinancingService/SubmitNeed',
      id::text, sha256(id::text::bytea), convert_to(repeat(id::text, 110), 'UTF8')
  FROM need
)
INSERT INTO bench_pg.product_daily_usage AS u (product_id, day, referrals)
SELECT product_id, current_date, 1 FROM referral ORDER BY product_id
ON CONFLICT (product_id, day) DO UPDATE SET referrals = u.referrals + 1;
