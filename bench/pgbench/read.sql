-- The primary-key read equivalent to one GetNeed: a need and its referrals, from copies of
-- the needs finmatch routed in this run (run with -M prepared -D needs=N).
\set i random(1, :needs)
SELECT * FROM bench_pg.read_needs WHERE id = lpad(to_hex(CAST(:i AS integer)), 32, '0')::uuid;
SELECT * FROM bench_pg.read_referrals WHERE need_id = lpad(to_hex(CAST(:i AS integer)), 32, '0')::uuid;
