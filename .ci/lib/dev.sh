# Sourced by the CI scripts that need a running `finmatch dev`: `dev_start WORKDIR` builds the
# debug binary, makes a fresh database, starts `finmatch dev` on a free port and exports what its
# banner's `export NAME=value` lines say (TOKEN, BANK_<X>, ...); it sets `dev_port`. `dev_stop`
# stops it and drops the database. The caller's EXIT trap should call `dev_stop`.

dev_server_url=${FINMATCH_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432}
dev_db="finmatch_ci_$$"
dev_pid=
dev_port=
dev_work=

dev_fail() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

dev_start() {
  dev_work=$1
  cargo build --locked
  local target_dir
  target_dir=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)

  # A port nothing answers on, so a developer's own `dev` on 50051 is left alone.
  local candidate
  for candidate in $(seq $((50100 + RANDOM % 800)) 50999); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then dev_port=$candidate; break; fi
  done
  [ -n "$dev_port" ] || dev_fail "no free port in 50100-50999"

  psql -q "$dev_server_url/postgres" -c "CREATE DATABASE $dev_db" >/dev/null
  NO_COLOR=1 "$target_dir/debug/finmatch" dev --database-url "$dev_server_url/$dev_db" \
    --listen "127.0.0.1:$dev_port" >"$dev_work/dev.out" 2>"$dev_work/dev.err" &
  dev_pid=$!

  # The banner's `export NAME=value` lines are its only part the scripts rely on.
  local _
  for _ in $(seq 1 300); do
    grep -q '^[[:space:]]*export TOKEN=' "$dev_work/dev.out" && break
    kill -0 "$dev_pid" 2>/dev/null || { cat "$dev_work/dev.err" >&2; dev_fail "finmatch dev exited before serving"; }
    sleep 0.5
  done
  grep -q '^[[:space:]]*export TOKEN=' "$dev_work/dev.out" \
    || { tail -n 20 "$dev_work/dev.err" >&2; dev_fail "finmatch dev printed no 'export TOKEN=' line within 150 s"; }
  sleep 1 # the banner is one print; let it finish
  local assignment
  while read -r assignment; do
    export "${assignment?}"
  done < <(sed -n 's/^[[:space:]]*export \([A-Za-z_][A-Za-z0-9_]*=[^[:space:]]*\).*/\1/p' "$dev_work/dev.out")
  [ -n "${BANK_ICBC:-}" ] || dev_fail "the banner has no 'export BANK_ICBC=' line"
}

dev_stop() {
  if [ -n "$dev_pid" ] && kill -0 "$dev_pid" 2>/dev/null; then
    kill "$dev_pid" && wait "$dev_pid" 2>/dev/null || true
  fi
  psql -q "$dev_server_url/postgres" -c "DROP DATABASE IF EXISTS $dev_db WITH (FORCE)" >/dev/null 2>&1 || true
}
