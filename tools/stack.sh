#!/usr/bin/env bash
# Starts (or stops) the whole pyrunner stack locally: a private
# redis-server, the demo SQLite K-lines, the API on :9000 and two workers.
# State, logs and pid files live in .run/.
#   tools/stack.sh start | stop | redis
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${PYRUNNER_RUN_DIR:-.run}
mkdir -p "$RUN" && RUN=$(cd "$RUN" && pwd)
PORT=${PYRUNNER_PORT:-9000}
REDIS_PORT=${PYRUNNER_REDIS_PORT:-6390}
DB=$RUN/exchange.db
WORK="${TMPDIR:-/tmp}/pyrunner-stack-$PORT"

# stop_pids FILE...: SIGTERM to each, then wait (up to 30 s) until they
# are gone: workers end their scripts and write so before Redis stops.
stop_pids() {
  local pids=()
  for f in "$@"; do
    [ -f "$f" ] || continue
    pids+=("$(cat "$f")")
    rm -f "$f"
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 1 300); do
    kill -0 "${pids[@]}" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
}

stop() {
  stop_pids "$RUN"/worker-*.pid "$RUN/api.pid"
  stop_pids "$RUN/redis.pid"
  rm -rf "$WORK"
}

# taken PORT: something already listens on 127.0.0.1:PORT.
taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# alive NAME: its pid file names a running process, or say why not.
alive() {
  kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null && return 0
  echo "stack: $1 died; the end of $RUN/$1.log:" >&2
  tail -n 5 "$RUN/$1.log" >&2
  return 1
}

wait_for() { # url seconds
  for _ in $(seq 1 $(( $2 * 10 ))); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "stack: $1 did not come up; see $RUN/*.log" >&2
  return 1
}

# start_redis: the stack's redis-server, durable (docker/redis.conf:
# append-only file, no eviction); its files stay in $RUN/redis across
# make stop / make run, and make clean removes them.
start_redis() {
  mkdir -p "$RUN/redis"
  redis-server docker/redis.conf --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$RUN/redis" --daemonize no \
    >>"$RUN/redis.log" 2>&1 & echo $! > "$RUN/redis.pid"
  for _ in $(seq 1 100); do [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
  alive redis || exit 1
}

start() {
  mkdir -p "$RUN"
  stop
  for p in "$PORT" "$REDIS_PORT"; do
    if taken "$p"; then
      echo "stack: port $p is already in use (another pyrunner, or something else)." >&2
      echo "stack: pick free ports, e.g. PYRUNNER_PORT=9100 PYRUNNER_REDIS_PORT=6490 make run" >&2
      exit 1
    fi
  done
  if [ ! -f "$DB" ]; then
    echo "stack: writing demo K-lines to $DB"
    bin/pyrunner-demodata --sqlite "$DB" >/dev/null
  fi
  start_redis
  export PYRUNNER_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
  export PYRUNNER_READONLY_TYPE=sqlite PYRUNNER_READONLY_URI="$DB"
  # The work dir must be reachable by the user code runs as (nobody, when
  # root), so it lives under /tmp rather than in a possibly private checkout.
  export PYRUNNER_LISTEN="127.0.0.1:$PORT" PYRUNNER_WORK_DIR="$WORK"
  export SCRIPT_SCRIPTS_PATH="${SCRIPT_SCRIPTS_PATH:-$PWD/examples/scripts}" SCRIPT_STATE_DIR="$RUN/state"
  nohup bin/pyrunner-api >"$RUN/api.log" 2>&1 & echo $! > "$RUN/api.pid"
  for i in 1 2; do
    nohup bin/pyrunner-worker >"$RUN/worker-$i.log" 2>&1 & echo $! > "$RUN/worker-$i.pid"
  done
  wait_for "http://127.0.0.1:$PORT/health" 20
  alive api || exit 1
  n=0
  for _ in $(seq 1 100); do
    n=$(curl -fsS "http://127.0.0.1:$PORT/health" | /usr/bin/python3 -c 'import json,sys; print(len(json.load(sys.stdin)["workers"]))')
    [ "$n" -ge 2 ] && break
    sleep 0.2
  done
  alive worker-1 && alive worker-2 || exit 1
  if [ "$n" -lt 2 ]; then
    echo "stack: only $n of 2 workers came up:" >&2
    tail -n 5 "$RUN"/worker-*.log >&2
    exit 1
  fi
  cat <<MSG
pyrunner is running: API http://127.0.0.1:$PORT, 2 workers, redis on :$REDIS_PORT, demo K-lines in $DB
(logs in $RUN/, stop with 'make stop'). Try:

  curl -sS -X POST http://127.0.0.1:$PORT/v1/research/run -H 'content-type: application/json' \\
    -d '{"exchange":"binance","symbol":"BTCUSDT","binSize":"1m","start":1735689600,"end":1735776000,"limit":10000,"timeoutSec":30,"code":"result = {\\"rows\\": len(df)}"}'

MSG
}

case "${1:-}" in
  start) start ;;
  redis) start_redis ;; # Redis alone again, as start runs it (after a crash)
  stop) stop; echo "stack stopped" ;;
  *) echo "usage: $0 start|stop|redis" >&2; exit 2 ;;
esac
