#!/usr/bin/env bash
# The one-command benchmark of DESIGN §7 (see docs/performance.md and README "Benchmarks").
#
#   bench/run.sh [--quick] [--duration SECS] [--warmup SECS] [--concurrency C]
#                [--sweep "1 2 4 8 16 32"] [--streams N] [--import ROWS] [--no-criterion]
#
# On this machine, in one run: builds the release binary, installs what is missing (h2load,
# gnuplot), creates a fresh database on the PostgreSQL at FINMATCH_BENCH_PG (default
# postgres://postgres@127.0.0.1:5432), starts `finmatch serve` on a free port against it, seeds
# 1,000 products over 50 lenders through the API, runs pgbench baselines on the same PostgreSQL,
# runs the `finmatch bench` scenarios and h2load, samples the server's RSS, checks the tool's
# success counts against rows in PostgreSQL (and fails loudly on a mismatch), prints the §7
# table and writes docs/performance.md and docs/performance-submit.png. The server is stopped and
# the database dropped at the end, also on failure.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

DURATION=10
WARMUP=2
CONCURRENCY=16
SWEEP="1 2 4 8 16 32"
STREAMS=1000
IMPORT_ROWS=0
CRITERION=1
QUICK=0
ORIG_ARGS="$*"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; DURATION=3; WARMUP=1; SWEEP="1 4 16" ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --concurrency) CONCURRENCY=$2; shift ;;
    --sweep) SWEEP=$2; shift ;;
    --streams) STREAMS=$2; shift ;;
    --import) IMPORT_ROWS=$2; shift ;;
    --no-criterion) CRITERION=0 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case " $SWEEP " in *" $CONCURRENCY "*) ;; *) SWEEP="$SWEEP $CONCURRENCY" ;; esac

PG=${FINMATCH_BENCH_PG:-postgres://postgres@127.0.0.1:5432}
PG=${PG%/}
DB="finmatch_bench_$(date +%s)_$$"
DB_URL="$PG/$DB"
OUT=$(mktemp -d /tmp/finmatch-bench.XXXXXX)
BIN="$ROOT/target/release/finmatch"
SERVER_PID=""
RSS_PID=""
log() { printf '\n== %s\n' "$*" >&2; }

cleanup() {
  local status=$?
  [ -n "$RSS_PID" ] && kill "$RSS_PID" 2>/dev/null || true
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  psql "$PG/postgres" -qAt -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  if [ $status -ne 0 ]; then echo "bench/run.sh failed (exit $status); logs and results in $OUT" >&2; fi
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. The binary and the tools. ---------------------------------------------------------------
log "building the release binary"
cargo build --release --quiet
need_apt=()
command -v psql >/dev/null || need_apt+=(postgresql-client)
command -v pgbench >/dev/null || need_apt+=(postgresql-contrib)
command -v h2load >/dev/null || need_apt+=(nghttp2-client)
command -v gnuplot >/dev/null || need_apt+=(gnuplot-nox)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v pgbench >/dev/null || { echo "pgbench is missing (it ships with PostgreSQL)" >&2; exit 1; }

# 2. A fresh database, the server, an operator, the catalogue. --------------------------------
log "creating database $DB"
psql "$PG/postgres" -qAt -c "CREATE DATABASE \"$DB\"" >/dev/null
SYNC=$(psql "$DB_URL" -qAt -c "SHOW synchronous_commit")
[ "$SYNC" = on ] || { echo "synchronous_commit is $SYNC on this PostgreSQL; §7 is measured with it on" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
METRICS_PORT=$(free_port)
SERVER="http://127.0.0.1:$PORT"
log "starting finmatch serve on $SERVER (metrics on 127.0.0.1:$METRICS_PORT)"
# The watch scenario opens --streams streams over the seeded lenders' one credential each, far
# beyond a production credential's share (FINMATCH_MAX_WATCH_STREAMS_PER_CREDENTIAL, default 4),
# and each open stream holds one of the FINMATCH_MAX_CONCURRENT_CALLS permits (default 512).
FINMATCH_DATABASE_URL="$DB_URL" FINMATCH_LISTEN_ADDR="127.0.0.1:$PORT" \
  FINMATCH_METRICS_ADDR="127.0.0.1:$METRICS_PORT" RUST_LOG=warn \
  FINMATCH_MAX_WATCH_STREAMS_PER_CREDENTIAL="$STREAMS" \
  FINMATCH_MAX_CONCURRENT_CALLS=$((STREAMS + 1024)) \
  "$BIN" serve >"$OUT/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 300); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$OUT/server.log" >&2; exit 1; }
  sleep 0.1
done
# RSS throughout: sampled every half second, each sample labelled with the phase then running
# ($OUT/phase, written by each step), so the peak can be traced to a scenario; VmHWM (the
# kernel's peak) read at the end too.
echo setup >"$OUT/phase"
( while kill -0 "$SERVER_PID" 2>/dev/null; do
    kb=$(awk '/^VmRSS/ {print $2}' "/proc/$SERVER_PID/status" 2>/dev/null)
    [ -n "$kb" ] && echo "$(cat "$OUT/phase") $kb"
    sleep 0.5
  done ) >"$OUT/rss.txt" &
RSS_PID=$!

export FINMATCH_TOKEN
FINMATCH_TOKEN=$(FINMATCH_DATABASE_URL="$DB_URL" RUST_LOG=warn "$BIN" credentials create --role operator --label bench 2>/dev/null)
STATE="$OUT/state.json"
log "seeding 50 lenders and 1,000 products through the API"
"$BIN" bench seed --server "$SERVER" --state "$STATE" --lenders 50 --products 1000 | tee "$OUT/seed.txt"

sql() { psql "$DB_URL" -qAt -v ON_ERROR_STOP=1 -c "$1"; }
# Rows the checks compare with the tool's counts.
snapshot() {
  sql "SELECT (SELECT count(*) FROM enterprises), (SELECT count(*) FROM needs),
          (SELECT count(*) FROM referrals WHERE status = 'APPROVED'),
          (SELECT count(*) FROM referrals WHERE status = 'DECLINED'),
          (SELECT count(*) FROM audit_log WHERE rpc LIKE '%/AcknowledgeReferral'),
          (SELECT deadlocks FROM pg_stat_database WHERE datname = current_database())" | tr '|' ' '
}
ACTIVE=$(sql "SELECT count(*) FROM products WHERE active")
LENDERS=$(sql "SELECT count(*) FROM lenders WHERE active")
[ "$ACTIVE" -ge 1000 ] && [ "$LENDERS" -ge 50 ] || { echo "seed made $ACTIVE products over $LENDERS lenders" >&2; exit 1; }

# One scenario: its JSON in $OUT/NAME.json, the row counts before and after in NAME.rows.
bench() {
  local name=$1; shift
  local before; before=$(snapshot)
  log "bench $name $*"
  echo "$name" >"$OUT/phase"
  "$BIN" bench "$@" --server "$SERVER" --state "$STATE" --json "$OUT/$name.json" | tee "$OUT/$name.txt"
  echo "$before $(snapshot)" >"$OUT/$name.rows"
}
calls_per_sec() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["calls_per_sec"])' "$1"; }
# Requests to prepare: a generous multiple of a rate seen before (at least 50/s).
expect() { python3 -c 'import sys; print(max(50, round(float(sys.argv[1]) * float(sys.argv[2]))))' "$1" "$2"; }
ratio() { python3 -c 'import sys; print(float(sys.argv[1]) / float(sys.argv[2]))' "$1" "$2"; }

COMMON=(--duration "${DURATION}s" --warmup "${WARMUP}s")

# 4a. The baseline and the submit sweep. -------------------------------------------------------
bench noop noop --concurrency "$CONCURRENCY" "${COMMON[@]}"
rate=400
prev=1
for c in $SWEEP; do
  expected=$(expect "$rate" "$(ratio "$((3 * c))" "$((2 * prev))")")
  bench "submit-c$c" submit --concurrency "$c" --expected-rate "$expected" "${COMMON[@]}"
  rate=$(calls_per_sec "$OUT/submit-c$c.json"); prev=$c
done
cp "$OUT/submit-c$CONCURRENCY.json" "$OUT/submit.json"
cp "$OUT/submit-c$CONCURRENCY.rows" "$OUT/submit.rows"
SUBMIT_RATE=$(calls_per_sec "$OUT/submit.json")

# 3a. pgbench: the SubmitNeed transaction, at the same client count. ----------------------------
PGB=(pgbench -n -M prepared -c "$CONCURRENCY" -j 2 -T "$DURATION")
log "pgbench: the SubmitNeed transaction, $CONCURRENCY clients"
echo pgbench >"$OUT/phase"
psql "$DB_URL" -q -v ON_ERROR_STOP=1 -f bench/pgbench/schema.sql >"$OUT/pgbench-schema.txt"
PGOPTIONS='-c synchronous_commit=on' "${PGB[@]}" -f bench/pgbench/submit.sql "$DB_URL" >"$OUT/pgbench-submit.txt" 2>&1
cat "$OUT/pgbench-submit.txt"
log "pgbench: every row SubmitNeed writes, in one statement, $CONCURRENCY clients (context, not a target)"
PGOPTIONS='-c synchronous_commit=on' "${PGB[@]}" -f bench/pgbench/submit_writes.sql "$DB_URL" >"$OUT/pgbench-submit-writes.txt" 2>&1
grep -E '^(tps|latency)' "$OUT/pgbench-submit-writes.txt" || cat "$OUT/pgbench-submit-writes.txt"

# 4b. The other scenarios. -----------------------------------------------------------------------
bench get get --concurrency "$CONCURRENCY" "${COMMON[@]}"
bench preview preview --concurrency "$CONCURRENCY" "${COMMON[@]}"
bench decide decide --concurrency "$CONCURRENCY" --expected-rate "$(expect "$SUBMIT_RATE" 3)" "${COMMON[@]}"
bench mixed mixed --concurrency 32 --expected-rate "$(expect "$SUBMIT_RATE" 3)" "${COMMON[@]}"
# Streams resume from the relay's delivery cursor: wait until it has caught up, then start after it.
for _ in $(seq 1 100); do
  [ "$(sql "SELECT count(*) FROM referral_events WHERE delivery_cursor IS NULL")" = 0 ] && break
  sleep 0.1
done
AFTER=$(sql "SELECT coalesce(max(delivery_cursor), 0) FROM referral_events")
bench watch watch --streams "$STREAMS" --after-cursor "$AFTER" --concurrency "$CONCURRENCY" \
  --expected-rate "$(expect "$SUBMIT_RATE" 1.5)" "${COMMON[@]}"

# 3b. pgbench: the GetNeed read, on copies of the needs routed in this run. ----------------------
log "pgbench: the GetNeed read, $CONCURRENCY clients"
echo pgbench >"$OUT/phase"
psql "$DB_URL" -q -v ON_ERROR_STOP=1 -f bench/pgbench/schema.sql >"$OUT/pgbench-schema.txt"
READ_NEEDS=$(tail -n 3 "$OUT/pgbench-schema.txt" | grep -Eo '^ *[0-9]+' | tr -d ' ' | tail -n 1)
"${PGB[@]}" -D "needs=$READ_NEEDS" -f bench/pgbench/read.sql "$DB_URL" >"$OUT/pgbench-read.txt" 2>&1
cat "$OUT/pgbench-read.txt"
psql "$DB_URL" -qAt -c "DROP SCHEMA bench_pg CASCADE" >/dev/null

# 4c. h2load, the independent cross-check (it sees HTTP status, not grpc-status). ----------------
NEED_ID=$(sql "SELECT id FROM needs n WHERE EXISTS (SELECT 1 FROM referrals r WHERE r.need_id = n.id) LIMIT 1")
python3 - "$OUT" "$NEED_ID" <<'PY'
import struct, sys
out, need_id = sys.argv[1], sys.argv[2].encode()
frame = lambda body: b"\0" + struct.pack(">I", len(body)) + body
open(f"{out}/noop.bin", "wb").write(frame(b""))
open(f"{out}/getneed.bin", "wb").write(frame(b"\x0a" + bytes([len(need_id)]) + need_id))
PY
H2=(h2load -c 2 -m $(( (CONCURRENCY + 1) / 2 )) -D "$DURATION" --warm-up-time "$WARMUP"
    -H 'content-type: application/grpc' -H 'te: trailers')
log "h2load: Health/Check and GetNeed"
echo h2load >"$OUT/phase"
"${H2[@]}" -d "$OUT/noop.bin" "$SERVER/grpc.health.v1.Health/Check" >"$OUT/h2load-noop.txt" 2>&1 || true
"${H2[@]}" -H "authorization: Bearer $FINMATCH_TOKEN" -d "$OUT/getneed.bin" \
  "$SERVER/finmatch.v1.FinancingService/GetNeed" >"$OUT/h2load-get.txt" 2>&1 || true
grep -h 'finished in' "$OUT"/h2load-*.txt || true

# 7. ImportNeeds, only when asked (it takes minutes). ---------------------------------------------
if [ "$IMPORT_ROWS" -gt 0 ]; then
  log "finmatch import of $IMPORT_ROWS generated rows"
  python3 bench/import_csv.py "$IMPORT_ROWS" >"$OUT/import.csv"
  echo import >"$OUT/phase"
  before=$(sql "SELECT count(*) FROM needs")
  start=$(date +%s.%N)
  "$BIN" import "$OUT/import.csv" --server "$SERVER" >"$OUT/import.txt" 2>"$OUT/import.err" || true
  end=$(date +%s.%N)
  after=$(sql "SELECT count(*) FROM needs")
  keys=$(sql "SELECT count(DISTINCT idempotency_key) FROM needs WHERE idempotency_key LIKE 'import-%'")
  python3 -c 'import json,sys; r,b,a,s,e,k=sys.argv[1:7]; json.dump({"rows":int(r),"stored":int(a)-int(b),"distinct_keys":int(k),"secs":float(e)-float(s)},open(sys.argv[7],"w"))' \
    "$IMPORT_ROWS" "$before" "$after" "$start" "$end" "$keys" "$OUT/import.json"
  tail -n 3 "$OUT/import.txt" "$OUT/import.err" || true
fi

# 5. RSS, then the server stops (the database is dropped by the trap). ------------------------------
HWM=$(awk '/^VmHWM/ {print $2}' "/proc/$SERVER_PID/status")
SAMPLED=$(awk '{print $2}' "$OUT/rss.txt" | sort -n | tail -n 1)
echo "${HWM:-0} ${SAMPLED:-0}" >"$OUT/rss.max"
# The largest sample of each phase, in the order the phases ran.
awk '!($1 in max) {order[n++] = $1} $2 > max[$1] {max[$1] = $2}
     END {for (i = 0; i < n; i++) print order[i], max[order[i]]}' "$OUT/rss.txt" >"$OUT/rss.phases"
kill "$RSS_PID" 2>/dev/null || true; RSS_PID=""

# Matching alone (criterion, one core).
if [ "$CRITERION" -eq 1 ]; then
  log "cargo bench --bench matching"
  crit=(cargo bench --quiet --bench matching -- evaluate_and_select_10k_products)
  [ "$QUICK" -eq 1 ] && crit+=(--warm-up-time 1 --measurement-time 2)
  taskset -c 0 "${crit[@]}" >"$OUT/criterion.txt" 2>&1 || "${crit[@]}" >"$OUT/criterion.txt" 2>&1 || true
  grep -A1 'evaluate_and_select' "$OUT/criterion.txt" | head -n 3 || true
fi

# 6-8. Checks, the table, docs/performance.md and the chart. -----------------------------------
python3 bench/report.py "$OUT" --concurrency "$CONCURRENCY" --sweep "$SWEEP" --streams "$STREAMS" \
  --quick "$QUICK" --database "$PG" --args="$ORIG_ARGS"
