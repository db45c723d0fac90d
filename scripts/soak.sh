#!/usr/bin/env bash
# scripts/soak.sh: the soak run of issue 3. Builds the release binary, starts it on 127.0.0.1
# against a local stand-in upstream (scripts/soak_upstream.rs), and for SOAK_SECS keeps a mix of
# clients busy:
#   normal      POST /openai/v1/chat/completions, one request per connection
#   keepalive   10 requests per curl run on one keep-alive connection
#   streaming   SSE streams (10 events, 100 ms apart) read to [DONE]
#   ratelimit   Gemini requests: one of the two keys always answers 429 (Retry-After: 1), and
#               every fifth request hits a route where all keys answer 429 (all keys benched 1 s)
#   disconnect  SSE streams abandoned after 0.3 s (curl --max-time)
# then prints requests served, errors by kind (the log's status= fields and aborted= notes, WARN
# and ERROR lines), what the clients saw, peak RSS (VmHWM), threads and descriptors at start and
# end, and how the proxy shut down on SIGTERM. Not part of CI.
#
# Usage: scripts/soak.sh                 60 s
#        SOAK_SECS=20 scripts/soak.sh    shorter
# Other knobs: SOAK_KEEP=1 keeps the work directory (logs) instead of deleting it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SOAK_SECS=${SOAK_SECS:-60}
[[ $SOAK_SECS =~ ^[0-9]+$ ]] && ((SOAK_SECS > 0)) || {
  echo "soak: SOAK_SECS must be a positive whole number" >&2
  exit 2
}
GRACE_SECS=10
MAX_PER_LOOP=100000 # a bound on every client loop besides the clock

WORK=$(mktemp -d /tmp/keyrelay-soak.XXXXXX)
UP_PID="" PROXY_PID="" SAMPLER_PID=""
CLIENT_PIDS=()

log() { printf '[soak] %s\n' "$*" >&2; }

cleanup() {
  local status=$? pid
  set +e
  trap - EXIT INT TERM
  for pid in "${CLIENT_PIDS[@]}" $SAMPLER_PID; do kill "$pid" 2>/dev/null; done
  if [[ -n $PROXY_PID ]] && kill -0 "$PROXY_PID" 2>/dev/null; then
    kill -KILL "$PROXY_PID" 2>/dev/null
  fi
  [[ -n $UP_PID ]] && kill "$UP_PID" 2>/dev/null
  wait 2>/dev/null
  if [[ ${SOAK_KEEP:-0} == 1 ]]; then
    log "logs kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT INT TERM

# status_field PID NAME: a numeric field of /proc/PID/status (VmRSS, VmHWM, Threads).
status_field() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

# wait_listening FILE: prints the port once FILE has a `listening on http://127.0.0.1:P` line.
wait_listening() {
  local i port
  for i in $(seq 1 100); do
    port=$(sed -n 's#.*listening on http://127\.0\.0\.1:\([0-9]*\).*#\1#p' "$1" | head -n 1)
    [[ -n $port ]] && {
      echo "$port"
      return 0
    }
    sleep 0.1
  done
  return 1
}

log "building the release binary and the stand-in upstream"
(cd "$ROOT" && cargo build --release --quiet --bin keyrelay --example soak-upstream)
BIN=$ROOT/target/release/keyrelay
UP_BIN=$ROOT/target/release/examples/soak-upstream

"$UP_BIN" 0 2>"$WORK/upstream.log" &
UP_PID=$!
UP_PORT=$(wait_listening "$WORK/upstream.log") || {
  log "the upstream did not start"
  exit 1
}

# A clean environment and an empty working directory: no .env, no stray settings.
(cd "$WORK" && exec env -i HOST=127.0.0.1 PORT=0 \
  OPENAI_API_KEYS=sk-soak-openai-0001,sk-soak-openai-0002,sk-soak-openai-0003 \
  OPENAI_BASE_URL="http://127.0.0.1:$UP_PORT" \
  GEMINI_API_KEYS=soak-gemini-key-0001-hot,soak-gemini-key-0002-ok \
  GEMINI_BASE_URL="http://127.0.0.1:$UP_PORT" \
  SHUTDOWN_GRACE_SECS=$GRACE_SECS \
  "$BIN" 2>"$WORK/proxy.log") &
PROXY_PID=$!
PORT=$(wait_listening "$WORK/proxy.log") || {
  log "keyrelay did not start; its log:"
  cat "$WORK/proxy.log" >&2
  exit 1
}
BASE=http://127.0.0.1:$PORT

# settle: prints "threads fds" once both read the same 3 times in a row, 200 ms apart (workers
# start as requests need them; closed connections are let go within a listener tick),
# or after 10 s.
settle() {
  local last="" now same=0 _
  for _ in $(seq 1 50); do
    now="$(status_field "$PROXY_PID" Threads) $(fd_count "$PROXY_PID")"
    if [[ $now == "$last" ]]; then ((++same >= 3)) && break; else same=0; fi
    last=$now
    sleep 0.2
  done
  echo "$last"
}
read -r START_THREADS START_FDS < <(settle)
START_RSS=$(status_field "$PROXY_PID" VmRSS)
log "keyrelay pid $PROXY_PID on $BASE, upstream on 127.0.0.1:$UP_PORT; soaking for ${SOAK_SECS}s"

END=$(($(date +%s) + SOAK_SECS))
running() { (($(date +%s) < END)); }

# Each loop appends one outcome per request to $WORK/<kind>.out.
normal() {
  local n=0
  while running && ((n++ < MAX_PER_LOOP)); do
    curl -s -o /dev/null -w '%{http_code}\n' --max-time 10 -H 'Content-Type: application/json' \
      -d '{"model":"soak","messages":[{"role":"user","content":"hi"}]}' \
      "$BASE/openai/v1/chat/completions" >>"$WORK/normal.out" || echo "curl-error" >>"$WORK/normal.out"
  done
}
keepalive() {
  local n=0 args=() i
  for i in $(seq 1 10); do args+=(-o /dev/null "$BASE/openai/v1/models"); done
  while running && ((n++ < MAX_PER_LOOP)); do
    curl -s -w '%{http_code} %{num_connects}\n' --max-time 20 "${args[@]}" >>"$WORK/keepalive.raw" ||
      echo "curl-error 0" >>"$WORK/keepalive.raw"
  done
}
streaming() {
  local n=0 out=$WORK/stream.$BASHPID
  while running && ((n++ < MAX_PER_LOOP)); do
    if curl -sN --max-time 10 -o "$out" -H 'Content-Type: application/json' \
      -d '{"model":"soak","stream":true,"messages":[]}' "$BASE/openai/v1/chat/completions"; then
      if grep -q 'data: \[DONE\]' "$out"; then echo complete; else echo incomplete; fi
    else
      echo "curl-error"
    fi >>"$WORK/streaming.out"
  done
}
ratelimit() {
  local n=0 path
  while running && ((n++ < MAX_PER_LOOP)); do
    if ((n % 5)); then path=soak:generateContent; else path=overloaded:generateContent; fi
    curl -s -o /dev/null -w '%{http_code}\n' --max-time 10 -H 'Content-Type: application/json' \
      -d '{"contents":[{"parts":[{"text":"hi"}]}]}' \
      "$BASE/gemini/v1beta/models/$path" >>"$WORK/ratelimit.out" || echo "curl-error" >>"$WORK/ratelimit.out"
  done
}
disconnect() {
  local n=0 code
  while running && ((n++ < MAX_PER_LOOP)); do
    code=0
    curl -sN --max-time 0.3 -o /dev/null -d '{"stream":true}' \
      "$BASE/openai/v1/chat/completions" || code=$?
    # 28: curl gave up at --max-time, i.e. the client left mid-stream as intended.
    if ((code == 28)); then echo left-mid-stream; else echo "curl-exit-$code"; fi >>"$WORK/disconnect.out"
  done
}
sampler() {
  while running; do
    echo "$(status_field "$PROXY_PID" Threads) $(status_field "$PROXY_PID" VmRSS) $(fd_count "$PROXY_PID")" >>"$WORK/samples"
    sleep 1
  done
}

started_ns=$(date +%s%N)
for f in normal normal normal normal keepalive streaming streaming streaming ratelimit ratelimit disconnect disconnect; do
  "$f" &
  CLIENT_PIDS+=("$!")
done
sampler &
SAMPLER_PID=$!
wait "${CLIENT_PIDS[@]}" "$SAMPLER_PID" 2>/dev/null || true
CLIENT_PIDS=() SAMPLER_PID=""
load_s=$(awk -v a="$started_ns" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')

read -r END_THREADS END_FDS < <(settle)
END_RSS=$(status_field "$PROXY_PID" VmRSS)
PEAK_RSS=$(status_field "$PROXY_PID" VmHWM)
PEAK_THREADS=$(awk 'BEGIN { m = 0 } $1 > m { m = $1 } END { print m }' "$WORK/samples")
PEAK_FDS=$(awk 'BEGIN { m = 0 } $3 > m { m = $3 } END { print m }' "$WORK/samples")

# Established connections from the proxy to the upstream (its idle keep-alive pool).
UP_CONNS=$(ss -Htn state established "( dport = :$UP_PORT )" 2>/dev/null | wc -l || echo "?")

# Graceful shutdown with nothing in flight: exit code and time.
sig_ns=$(date +%s%N)
kill -TERM "$PROXY_PID"
exit_code=0
wait "$PROXY_PID" || exit_code=$?
stop_ms=$(awk -v a="$sig_ns" -v b="$(date +%s%N)" 'BEGIN { printf "%d", (b - a) / 1e6 }')
PROXY_PID=""

# ------------------------------------------------------------------------------------------
# Report

LOG=$WORK/proxy.log
count() { grep -c -- "$1" "$2" 2>/dev/null || true; }
histogram() { # FILE: "value count" lines, most frequent first
  [[ -s $1 ]] || return 0
  sort "$1" | uniq -c | sort -rn | awk '{ printf "%s=%s ", $2, $1 }'
}
served=$(grep -c 'status=[0-9]' "$LOG" || true)
awk '{ print $1 }' "$WORK/keepalive.raw" >"$WORK/keepalive.out" 2>/dev/null || true
ka_connects=$(awk '{ s += $2 } END { print s + 0 }' "$WORK/keepalive.raw" 2>/dev/null || echo 0)

echo
echo "=== keyrelay soak: ${SOAK_SECS}s of load (${load_s}s with the last requests), 12 client loops ==="
echo "requests served (log lines): $served"
echo "  by status:      $(grep -o 'status=[0-9]*' "$LOG" | sed 's/status=//' | sort | uniq -c | sort -rn | awk '{ printf "%s=%s ", $2, $1 }')"
echo "  aborted:        $(grep -o 'aborted=[a-z-]*' "$LOG" | sed 's/aborted=//' | sort | uniq -c | sort -rn | awk '{ printf "%s=%s ", $2, $1 }')"
echo "  errors (>=400): $(grep -o 'status=[0-9]*' "$LOG" | sed 's/status=//' | awk '$1 >= 400' | wc -l)"
echo "  WARN lines:     $(count '\[WARN\]' "$LOG") ($(count 'benched' "$LOG") key benchings)"
echo "  ERROR lines:    $(count '\[ERROR\]' "$LOG")"
if grep -q '\[ERROR\]' "$LOG"; then
  grep '\[ERROR\]' "$LOG" | sed 's/^[^[]*//' | sort | uniq -c | sort -rn | head -n 5 | sed 's/^/      /'
fi
echo "what the clients saw:"
echo "  normal:     $(histogram "$WORK/normal.out")"
echo "  keepalive:  $(histogram "$WORK/keepalive.out")(${ka_connects} connections for $(wc -l <"$WORK/keepalive.out") requests)"
echo "  streaming:  $(histogram "$WORK/streaming.out")"
echo "  ratelimit:  $(histogram "$WORK/ratelimit.out")"
echo "  disconnect: $(histogram "$WORK/disconnect.out")"
echo "memory: VmRSS start ${START_RSS} KiB, end ${END_RSS} KiB; peak (VmHWM) ${PEAK_RSS} KiB"
echo "threads: start ${START_THREADS}, peak sampled ${PEAK_THREADS}, end ${END_THREADS}"
echo "descriptors: start ${START_FDS}, peak sampled ${PEAK_FDS}, end ${END_FDS} (end includes idle pooled upstream connections: ${UP_CONNS})"
echo "SIGTERM when idle: exit code ${exit_code} after ${stop_ms} ms"
