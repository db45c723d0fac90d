#!/usr/bin/env bash
# scripts/bench.sh: the side-by-side benchmark of issues 5 and 14. keyrelay (4 keys), built twice
# (the glibc release binary and the static musl one of scripts/build-static.sh, each its own
# column and its own process), and a reference nginx reverse proxy (one fixed key) in front of
# the same fast stand-in upstream, all on 127.0.0.1, measured in one run. Columns: direct (the
# upstream itself), nginx, keyrelay (glibc), keyrelay musl; then the peers a user would pick
# instead, LiteLLM proxy and Portkey gateway, in (1):
#   (1) wrk -t2 -c64 POST /openai/v1/chat/completions (~400-byte JSON body): rps, p50, p99, and
#       each proxy's CPU time and context switches per request (from /proc, over its process
#       tree: nginx's master and workers, keyrelay's threads), peak RSS (VmHWM after (1), summed
#       over the tree); then 64 fresh keep-alive connections at once: any left waiting >= 1 s
#       (starving)
#   (2) wrk -t1 -c1, the same: latency each proxy adds over calling the upstream directly
#   (3) keyrelay's RSS idle (VmRSS before any load) and peak (VmHWM after (1)), glibc and musl
#   (4) 1,000 concurrent SSE streams (opened over 0.5 s; 20 events, 50 ms apart) through each
#       proxy, keyrelay with default settings (a fresh process per column): time to first event,
#       per-event delay from the upstream's write to the client's read, stalled/failed streams,
#       keyrelay's RSS and threads, each proxy's CPU time over its run and how busy the whole
#       machine was meanwhile (the client and the stand-in share its CPUs)
#   (5) a 1 GiB download through each proxy, MB/s
#   (6) keyrelay's start-up time, spawn to ready (glibc and musl)
#   (7) 10,000 idle keep-alive connections held open to keyrelay (glibc; MAX_CONNECTIONS=20000,
#       ulimit -n 30000; no byte sent on them): keyrelay alive, its threads and RSS, and the time
#       of one GET /health and one proxied POST from another client meanwhile
#   (8) heap allocations and bytes per proxied request (glibc build under valgrind DHAT,
#       scripts/bench/allocs.sh)
#   (9) only with BENCH_AFFINITY=1 (issue 19, session affinity): scripts/bench/prompt_cache.py
#       (50 conversations x 8 turns through keyrelay against a stand-in that caches prompt
#       prefixes per key, SESSION_AFFINITY on and off) and scripts/bench/affinity_c64.sh (wrk
#       -c64, interleaved rounds: keyrelay before affinity (40929c8, built in its own worktree),
#       now with SESSION_AFFINITY=on and off); printed after the peers. Both also run standalone.
#   (10) only with BENCH_SHARED=1 (issue 20, shared state through Redis):
#       scripts/bench/shared_state.sh (with scripts/bench/shared_state.py): bench-to-honour
#       latency from one instance to another (disable, 429), wrk -c64 with SHARED_STATE_URL
#       against without (interleaved rounds; Redis's PUBLISH, commands and CPU per request), and
#       the upstream 429s a key costs with 3 instances on one Redis; printed last. Also standalone.
# (1) and (2) run 3 rounds (direct, nginx, keyrelay, keyrelay musl interleaved); each figure is
# the median. Ratio lines under the table: musl/glibc rps, peak RSS and p99 (c64 and the
# streams), glibc/nginx rps, keyrelay/peer rps, and whether keyrelay's p99 and RSS are lower.
# Peers (scripts/bench/peers.sh), installed when missing and pinned exactly, into
# target/bench/peers/: LiteLLM proxy (PyPI litellm[proxy]==1.108.7 in a venv, python3 -m venv)
# and Portkey gateway (npm @portkey-ai/gateway@1.15.2 with @hono/node-server 1.13.5; needs node
# and npm). Each runs alone against the same stand-in with the same 4 keys, one worker, after the
# rest, for (1) only and for one round by default (BENCH_PEER_ROUNDS): three would add about a
# minute for figures 10-100x apart. A peer that cannot be installed or does not answer is shown
# in the table as "not installed: ..." or "failed: ...", and the rest of the bench runs on.
# Prints one table and writes it to target/bench/last.txt; raw outputs and logs go to
# target/bench/raw/.
#
# Usage: scripts/bench.sh                  full run (about 6 minutes on 2 cores, plus the builds
#                                          (glibc and musl, a few minutes each from scratch) and
#                                          the first install of the peers (about 3 minutes))
#        BENCH_QUICK=1 scripts/bench.sh    smoke run: 3 s wrk, 1 round, 200 streams, 256 MiB bulk,
#                                          2,000 idle connections
# Other knobs: BENCH_PEERS (default 1; 0 skips the peers, the table says so), BENCH_PEER_ROUNDS
# (default 1), BENCH_AFFINITY (default 0; 1 adds (9)), BENCH_SHARED (default 0; 1 adds (10)),
# BENCH_PORT_BASE (default 18100; ports +1..+13 are used, +14..+16 by (9), +17..+19 by (10)),
# BENCH_NGINX_WORKERS
# (worker_processes of both nginx instances, default auto = one per CPU), BENCH_WORKERS
# (keyrelay's WORKERS for (1)-(3), (5)-(7); default unset = keyrelay's default),
# BENCH_STREAM_WORKERS (keyrelay's WORKERS for (4); default unset = keyrelay's default),
# BENCH_QUIET_WAIT (seconds to wait for other work on the machine to calm down before measuring;
# default 60, 0 when quick).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
START_NS=$(date +%s%N)

# ---------------------------------------------------------------------------------------------
# Settings

QUICK=${BENCH_QUICK:-0}
if [[ $QUICK == 1 ]]; then
  DURATION=3 ROUNDS=1 STREAMS=200 BULK_MIB=256 BULK_RUNS=1 STARTUP_RUNS=3 IDLE_CONNS=2000
else
  DURATION=10 ROUNDS=3 STREAMS=1000 BULK_MIB=1024 BULK_RUNS=3 STARTUP_RUNS=7 IDLE_CONNS=10000
fi
EVENTS=20 EVENT_INTERVAL_MS=50 STALL_SECS=5
# Streams open over this long, all still concurrent (each lasts >= 1 s): opening 1,000 in the same
# instant is a burst of connections, which is (1)'s check, not this one's. The stand-in listens
# with a 4,096 backlog (std's 128 overflowed when a proxy's connections came faster than its
# accept thread took them, and the SYN retransmit put a 1 s first event in the table).
STREAM_RAMP_MS=500
NGINX_WORKERS=${BENCH_NGINX_WORKERS:-auto}
QUIET_WAIT=${BENCH_QUIET_WAIT:-$((QUICK == 1 ? 0 : 60))}
KR_WORKERS=${BENCH_WORKERS:-}
PEERS=${BENCH_PEERS:-1}
AFFINITY=${BENCH_AFFINITY:-0}
SHARED_BENCH=${BENCH_SHARED:-0}
PEER_ROUNDS=${BENCH_PEER_ROUNDS:-1}
STREAM_WORKERS=${BENCH_STREAM_WORKERS:-} # each stream holds a keyrelay worker for its whole life
IDLE_MAX_CONNECTIONS=20000 IDLE_NOFILE=30000 # (7)'s keyrelay
CLK_TCK=$(getconf CLK_TCK)
KR_KEYS=sk-bench-key-0000000001,sk-bench-key-0000000002,sk-bench-key-0000000003,sk-bench-key-0000000004
NGINX_KEY=sk-bench-key-nginx-0000000001

BASE=${BENCH_PORT_BASE:-18100}
P_UP=$((BASE + 1))       # nginx stand-in upstream: fixed JSON, bulk file
P_NGX=$((BASE + 2))      # nginx reference proxy -> P_UP
P_KR=$((BASE + 3))       # keyrelay -> P_UP
P_SSE=$((BASE + 4))      # Rust SSE stand-in upstream
P_NGX_SSE=$((BASE + 5))  # nginx reference proxy -> P_SSE (proxy_buffering off)
P_KR_SSE=$((BASE + 6))   # keyrelay for the streams -> P_SSE
P_START=$((BASE + 7))    # start-up timing
P_IDLE=$((BASE + 8))     # keyrelay holding the idle connections -> P_UP
P_KRM=$((BASE + 9))      # keyrelay musl -> P_UP
P_KRM_SSE=$((BASE + 10)) # keyrelay musl for the streams -> P_SSE
P_LITELLM=$((BASE + 11)) # LiteLLM proxy -> P_UP
P_PORTKEY=$((BASE + 12)) # Portkey gateway -> P_UP
P_ALLOC=$((BASE + 13))   # keyrelay under valgrind, (8)

OUT=$ROOT/target/bench
RAW=$OUT/raw
CHAT=/openai/v1/chat/completions
# shellcheck source=scripts/bench/peers.sh
source "$ROOT/scripts/bench/peers.sh" # LiteLLM and Portkey: install, start, measure, table
# shellcheck source=scripts/bench/allocs.sh
source "$ROOT/scripts/bench/allocs.sh" # (8) heap allocations per request, valgrind DHAT
# shellcheck source=scripts/bench/affinity_c64.sh
source "$ROOT/scripts/bench/affinity_c64.sh" # (9) session affinity: prompt cache, wrk A/B
# shellcheck source=scripts/bench/shared_state.sh
source "$ROOT/scripts/bench/shared_state.sh" # (10) shared state: honour latency, wrk A/B, 429 cost

# ---------------------------------------------------------------------------------------------
# Processes and clean-up

TMP=$(mktemp -d /tmp/keyrelay-bench.XXXXXX)
PIDS=()
declare -A PNAME=() # pid -> what it is, for the clean-up report

# spawned NAME: records the last background job for clean-up.
spawned() {
  PIDS+=("$!")
  PNAME[$!]=$1
}

# Progress goes to the script's own stderr, kept on a spare descriptor: a trap runs inside the
# redirections of whatever command it interrupted (e.g. wrk's >file 2>&1).
exec {LOG_FD}>&2
log() { printf '[bench %5.1fs] %s\n' "$(elapsed_s)" "$*" >&"$LOG_FD"; }
die() {
  log "FAILED: $*"
  check_keyrelays
  local line
  for line in "${KR_DEAD[@]}"; do log "$line"; done
  exit 1
}

KR_WATCH=()            # keyrelay pids
declare -A KR_LOG=()   # pid -> its stderr file
declare -A KR_DEAD=()  # pid -> how it ended, once it has

# check_keyrelays: notes in KR_DEAD how each keyrelay that has exited ended (status or signal,
# and the end of its stderr), so a crash is reported as a crash, not as a client error.
# kr_unwatch PID: a keyrelay that is meant to end (or was reported ended) is no longer watched.
kr_unwatch() {
  local keep=() p
  for p in "${KR_WATCH[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  KR_WATCH=("${keep[@]}")
}

check_keyrelays() {
  local pid status how
  for pid in "${KR_WATCH[@]}"; do
    [[ -z ${KR_DEAD[$pid]:-} ]] || continue
    kill -0 "$pid" 2>/dev/null && continue
    status=0
    wait "$pid" || status=$?
    how="status $status"
    ((status <= 128)) || how="signal $((status - 128)) (SIG$(kill -l $((status - 128)) 2>/dev/null))"
    KR_DEAD[$pid]="${PNAME[$pid]} (pid $pid) exited with $how; stderr: $(tail -5 "${KR_LOG[$pid]}" | tr '\n' ' ')"
  done
}
elapsed_s() { awk -v a="$START_NS" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }

cleanup() {
  local status=$? pid _
  set +e
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for _ in $(seq 1 50); do # at most 5 s for everything to exit
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      log "${PNAME[$pid]} (pid $pid) still running 5 s after SIGTERM: killing it"
      kill -KILL "$pid" 2>/dev/null
    fi
  done
  wait 2>/dev/null
  # Keep the logs of the last run for a post-mortem; the big file and configs go.
  mkdir -p "$RAW"
  find "$TMP" -name '*.log' -size -8M | while read -r f; do
    cp "$f" "$RAW/$(basename "$(dirname "$f")")-$(basename "$f")" 2>/dev/null
  done
  rm -rf "$TMP"
  exit "$status"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# Runs a command with a hard time limit, staying in the foreground process group so that
# Ctrl-C reaches it.
bounded() {
  local secs=$1
  shift
  timeout --foreground -k 5 "$secs" "$@"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_ready PORT PID LOGFILE: until the port accepts, for at most about 10 s. The port, not a
# log line, is the signal: keyrelay prints "listening on" only at LOG_LEVEL=info.
wait_ready() {
  local port=$1 pid=$2 logfile=$3 _
  for _ in $(seq 1 1000); do
    kill -0 "$pid" 2>/dev/null || die "process $pid for port $port exited: $(tail -5 "$logfile")"
    port_open "$port" && return 0
    sleep 0.01
  done
  die "nothing listening on port $port after 10 s: $(tail -5 "$logfile")"
}

# ---------------------------------------------------------------------------------------------
# Preparation

install_tools() {
  command -v wrk >/dev/null && command -v valgrind >/dev/null &&
    { command -v nginx || [[ -x /usr/sbin/nginx ]]; } >/dev/null && return 0
  log "installing wrk, nginx-light and valgrind"
  local sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  bounded 300 "${sudo[@]}" apt-get install -y nginx-light wrk valgrind ||
    { bounded 300 "${sudo[@]}" apt-get update && bounded 300 "${sudo[@]}" apt-get install -y nginx-light wrk valgrind; }
}

raise_fd_limit() {
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  local n
  n=$(ulimit -n)
  [[ $n == unlimited || $n -ge 8192 ]] || die "open-file limit is $n; 1,000 streams need about 8,000"
  # (7)'s client raises its own limit, as far as the hard limit (or further, if privileged).
  [[ $(ulimit -Hn) == unlimited || $(ulimit -Hn) -ge $((IDLE_CONNS + 64)) ]] ||
    die "hard open-file limit is $(ulimit -Hn); $IDLE_CONNS idle connections need $((IDLE_CONNS + 64))"
  log "open-file limit: $n"
}

build() {
  log "building keyrelay and the sse-upstream example (release)"
  local started=$SECONDS
  (cd "$ROOT" && bounded 900 cargo build --release --quiet &&
    bounded 900 cargo build --release --quiet --example sse-upstream) || die "build failed"
  KR_BIN=$ROOT/target/release/keyrelay
  TOOL=$ROOT/target/release/examples/sse-upstream
  log "building the static musl keyrelay (scripts/build-static.sh)"
  (cd "$ROOT" && bounded 1200 bash scripts/build-static.sh) >"$RAW/build-static.log" 2>&1 ||
    die "static musl build failed: $(tail -5 "$RAW/build-static.log")"
  KRM_BIN=$ROOT/target/x86_64-unknown-linux-musl/release/keyrelay
  [[ -x $KRM_BIN ]] || die "scripts/build-static.sh left no $KRM_BIN"
  BUILD_S=$((SECONDS - started))
}

# bin_info BIN: size in MiB and linkage, for the table's header.
bin_info() {
  local size link
  size=$(awk -v s="$(stat -c %s "$1")" 'BEGIN { printf "%.2f MiB", s / 1048576 }')
  case $(ldd "$1" 2>&1 || true) in
    *"statically linked"* | *"not a dynamic executable"*) link=static ;;
    *) link=dynamic ;;
  esac
  echo "$size, $link"
}

check_ports() {
  local p
  local ports=("$P_UP" "$P_NGX" "$P_KR" "$P_SSE" "$P_NGX_SSE" "$P_KR_SSE" "$P_START" "$P_IDLE" "$P_KRM" "$P_KRM_SSE" "$P_ALLOC")
  [[ $PEERS == 0 ]] || ports+=("$P_LITELLM" "$P_PORTKEY")
  [[ $AFFINITY == 0 ]] || read -r -a ports <<<"${ports[*]} $(aff_ports)"
  [[ $SHARED_BENCH == 0 ]] || read -r -a ports <<<"${ports[*]} $(ss_ports)"
  for p in "${ports[@]}"; do
    port_free "$p" || die "port $p is in use (set BENCH_PORT_BASE)"
  done
}

# A realistic chat request, about 400 bytes.
BODY='{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a concise assistant. Answer in one short paragraph, plain text, no lists."},{"role":"user","content":"Summarise the trade-offs between thread-per-connection servers and event loops for an HTTP proxy that relays streaming LLM responses to many slow clients."}],"temperature":0.2,"max_tokens":256,"stream":false,"user":"bench-client-0042"}'

# The stand-in upstream's answer.
ANSWER='{"id":"chatcmpl-bench0001","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Threads are simple and isolate slow clients; event loops hold more connections per byte of memory."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":64,"completion_tokens":21,"total_tokens":85},"system_fingerprint":"fp_bench"}'

# write_wrk_script FILE BODY HEADERS: HEADERS is "Name: value" lines (the peers' own).
write_wrk_script() {
  local file=$1 body=$2 hdrs=$3 name value
  {
    cat <<EOF
-- POST a ~400-byte chat request; print exact figures from wrk's own histogram at the end.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
EOF
    while IFS= read -r name; do
      [[ -n $name ]] || continue
      value=${name#*: } name=${name%%: *}
      echo "wrk.headers[\"$name\"] = [[$value]]"
    done <<<"$hdrs"
    cat <<EOF
wrk.body = [[$body]]

done = function(summary, latency, requests)
  local e = summary.errors
  local rps = summary.requests / (summary.duration / 1e6)
  io.write(string.format(
    "RESULT requests=%d rps=%.1f p50_us=%d p99_us=%d max_us=%d non2xx=%d sockerr=%d\n",
    summary.requests, rps, latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect + e.read + e.write + e.timeout))
end
EOF
  } >"$file"
}

# Lines shared by both nginx instances: everything private to $dir.
nginx_main() {
  local dir=$1
  [[ $(id -u) == 0 ]] && echo "user $(id -un) $(id -gn);" # workers must read our temp dir
  cat <<EOF
worker_processes $NGINX_WORKERS;
worker_rlimit_nofile 16384;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
EOF
}

nginx_http_common() {
  local dir=$1
  cat <<EOF
  access_log off;
  client_body_temp_path $dir/client_body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
EOF
}

write_upstream_conf() {
  local dir=$TMP/nginx-upstream
  mkdir -p "$dir" "$TMP/www/v1/files"
  truncate -s "${BULK_MIB}M" "$TMP/www/v1/files/big"
  # Read it once so every download is served from the page cache, the first one included.
  cat "$TMP/www/v1/files/big" >/dev/null
  {
    nginx_main "$dir"
    echo "http {"
    nginx_http_common "$dir"
    cat <<EOF
  sendfile on;
  server {
    listen 127.0.0.1:$P_UP;
    location = /v1/chat/completions {
      default_type application/json;
      return 200 '$ANSWER';
    }
    location /v1/files/ {
      root $TMP/www;
      default_type application/octet-stream;
    }
  }
}
EOF
  } >"$dir/nginx.conf"
}

# The reference: nginx as people deploy it in front of an LLM API, with one fixed key.
write_proxy_conf() {
  local dir=$TMP/nginx-proxy
  mkdir -p "$dir"
  local common="proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Authorization \"Bearer $NGINX_KEY\";
      proxy_max_temp_file_size 0;"
  {
    nginx_main "$dir"
    echo "http {"
    nginx_http_common "$dir"
    cat <<EOF
  upstream chat { server 127.0.0.1:$P_UP; keepalive 128; keepalive_requests 1000000; }
  upstream sse { server 127.0.0.1:$P_SSE; keepalive 128; }
  server {
    listen 127.0.0.1:$P_NGX;
    location /openai/ {
      proxy_pass http://chat/;
      $common
    }
  }
  server {
    listen 127.0.0.1:$P_NGX_SSE;
    location /openai/ {
      proxy_pass http://sse/;
      proxy_buffering off;
      $common
    }
  }
}
EOF
  } >"$dir/nginx.conf"
}

# start_nginx DIR PORT: sets NGX_PID (the master; daemon off, so it is our child).
start_nginx() {
  local dir=$1 port=$2 nginx_bin
  nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
  "$nginx_bin" -t -q -e "$dir/startup.log" -p "$dir" -c "$dir/nginx.conf" 2>"$dir/test.log" ||
    die "nginx config $dir/nginx.conf rejected: $(cat "$dir/test.log")"
  "$nginx_bin" -e "$dir/startup.log" -p "$dir" -c "$dir/nginx.conf" 2>"$dir/stderr.log" &
  NGX_PID=$!
  spawned "nginx ($(basename "$dir"))"
  wait_ready "$port" "$NGX_PID" "$dir/stderr.log"
}

# start_keyrelay NAME PORT UPSTREAM_PORT [WORKERS [NOFILE [VAR=VALUE ...]]]: sets KR_PID.
# Empty WORKERS or NOFILE: keyrelay's default, the script's open-file limit. A NOFILE above the
# hard limit (and no privilege to raise it) becomes the hard limit: read /proc/PID/limits.
# KR_START_BIN=... before the call runs that binary (the musl one) instead of KR_BIN.
start_keyrelay() {
  local name=$1 dir=$TMP/$1 port=$2 upstream=$3 workers=${4:-} nofile=${5:-} bin=${KR_START_BIN:-$KR_BIN}
  shift $(($# < 5 ? $# : 5))
  mkdir -p "$dir"
  local envs=(PORT="$port" HOST=127.0.0.1 OPENAI_API_KEYS="$KR_KEYS"
    OPENAI_BASE_URL="http://127.0.0.1:$upstream" LOG_LEVEL=warn "$@")
  [[ -n $workers ]] && envs+=(WORKERS="$workers")
  (
    if [[ -n $nofile ]]; then ulimit -n "$nofile" 2>/dev/null || ulimit -n "$(ulimit -Hn)"; fi
    cd "$dir" && exec env -i "${envs[@]}" "$bin"
  ) 2>"$dir/stderr.log" &
  KR_PID=$!
  spawned "keyrelay ($name)"
  KR_WATCH+=("$KR_PID")
  KR_LOG[$KR_PID]=$dir/stderr.log
  wait_ready "$port" "$KR_PID" "$dir/stderr.log"
}

start_sse_upstream() {
  mkdir -p "$TMP/sse-upstream"
  "$TOOL" serve --port "$P_SSE" --events "$EVENTS" --interval-ms "$EVENT_INTERVAL_MS" \
    2>"$TMP/sse-upstream/stderr.log" &
  spawned sse-upstream
  wait_ready "$P_SSE" "$!" "$TMP/sse-upstream/stderr.log"
}

# smoke_check URL [BODY [HEADER...]]: whether a target answers the chat POST with 200 and the
# stand-in's JSON; SMOKE_ERR says how it did not (empty when it did).
smoke_check() {
  local url=$1 body=${2:-$BODY} code h args=()
  shift $(($# < 2 ? $# : 2))
  for h in "$@"; do [[ -z $h ]] || args+=(-H "$h"); done
  code=$(curl -s -o "$TMP/smoke.out" -w '%{http_code}' --max-time 10 -X POST \
    -H 'Content-Type: application/json' "${args[@]}" --data-binary "$body" "$url") || code=000
  SMOKE_ERR=""
  if [[ $code != 200 ]] || ! grep -q chatcmpl-bench0001 "$TMP/smoke.out"; then
    SMOKE_ERR="POST $url answered $code: $(head -c 300 "$TMP/smoke.out" | tr '\n' ' ')"
    return 1
  fi
}
smoke() { smoke_check "$1" || die "$SMOKE_ERR"; }

# ---------------------------------------------------------------------------------------------
# Measurements

# ensure_alive: fails the run if a keyrelay has exited (die says how).
ensure_alive() {
  check_keyrelays
  ((${#KR_DEAD[@]} == 0)) || die "keyrelay exited during the run"
}

# A key's value in the last RESULT line of a file.
kv() { grep '^RESULT' "$1" | tail -1 | tr ' ' '\n' | sed -n "s/^$2=//p"; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "nan" }'; }
# cpu_busy_pct SECS: how busy all CPUs were over SECS, in percent, whoever used them. Taken while
# everything of ours is idle, it shows how much other work competed with the measurements.
cpu_busy_pct() {
  local before
  before=$(head -1 /proc/stat)
  sleep "$1"
  busy_since "$before"
}
# busy_since STAT_LINE: how busy all CPUs were, in percent, from the /proc/stat line given to now.
busy_since() {
  awk -v a="$1" -v b="$(head -1 /proc/stat)" 'BEGIN {
    split(a, x); split(b, y)
    for (i = 2; i <= 9; i++) total += y[i] - x[i]   # user .. steal (guest is inside user)
    idle = (y[5] - x[5]) + (y[6] - x[6])            # idle + iowait
    printf "%.0f", total ? 100 * (total - idle) / total : 0
  }'
}
# wait_for_quiet: waits, at most QUIET_WAIT s, for a moment when other work keeps the CPUs
# under 25% busy, so that the measurements compete with as little as possible.
wait_for_quiet() {
  local waited=0 busy
  busy=$(cpu_busy_pct 1)
  while ((busy > 25 && waited < QUIET_WAIT)); do
    ((waited > 0)) || log "CPUs ${busy}% busy with other work: waiting up to ${QUIET_WAIT}s for quiet"
    busy=$(cpu_busy_pct 2)
    waited=$((waited + 2))
  done
  BUSY_BEFORE=$busy
  QUIET_WAITED=$waited
}
status_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# proc_tree PID: PID and all its descendants, one a line.
proc_tree() {
  local c
  echo "$1"
  for c in $(pgrep -P "$1" || true); do proc_tree "$c"; done
}
# tree_kib PID FIELD: a /proc/P/status field (VmHWM, VmRSS, Threads) summed over PID's tree.
tree_kib() {
  local p sum=0 v
  for p in $(proc_tree "$1"); do
    v=$(status_kib "$p" "$2" 2>/dev/null) || continue
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}

# proc_usage PID: "TICKS SWITCHES" for PID and its descendants (nginx: master and workers; a
# peer's workers): utime + stime (fields 14 and 15 of /proc/P/stat, in clock ticks, threads that
# ended included) and voluntary + nonvoluntary context switches summed over /proc/P/task/*/status.
proc_usage() {
  local pids=() p ticks=0 switches=0 stat rest f cs
  mapfile -t pids < <(proc_tree "$1")
  for p in "${pids[@]}"; do
    stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    rest=${stat##*) } # after the command name, which may hold spaces: field 3 onwards
    read -r -a f <<<"$rest"
    ticks=$((ticks + f[11] + f[12]))
    # cat, not awk FILES: a thread that ends meanwhile must not cost the others' counts.
    cs=$(cat /proc/"$p"/task/*/status 2>/dev/null |
      awk '$1 == "voluntary_ctxt_switches:" || $1 == "nonvoluntary_ctxt_switches:" { s += $2 }
        END { print s + 0 }') || true
    switches=$((switches + ${cs:-0}))
  done
  echo "$ticks $switches"
}

declare -A URL=(
  [direct]="http://127.0.0.1:$P_UP/v1/chat/completions"
  [nginx]="http://127.0.0.1:$P_NGX$CHAT"
  [keyrelay]="http://127.0.0.1:$P_KR$CHAT"
  [keyrelay-musl]="http://127.0.0.1:$P_KRM$CHAT"
)
TARGETS=(direct nginx keyrelay keyrelay-musl)
KEYRELAYS=(keyrelay keyrelay-musl) # the columns that are keyrelay: glibc and static musl

declare -A PROXY_PID=()  # target -> the proxy's pid, for CPU and context switches per request
declare -A WRK_SCRIPT=() # target -> its wrk script, when not $TMP/post.lua (the peers)
declare -A WRK_EXTRA=()  # target -> more wrk options (the peers: --timeout)

# run_wrk TAG TARGET THREADS CONNS SECS: raw output to $RAW/wrk-TAG-TARGET.txt; for a target in
# PROXY_PID, its CPU time and context switches over the run to $RAW/proc-TAG-TARGET.txt. A
# failure ends the run, except for a peer: then it is noted in PEER_STATE and run_wrk fails.
run_wrk() {
  local tag=$1 target=$2 threads=$3 conns=$4 secs=$5
  local out=$RAW/wrk-$tag-$target.txt pid=${PROXY_PID[$target]:-}
  local status=0 before=() after=() extra=()
  read -r -a extra <<<"${WRK_EXTRA[$target]:-}"
  [[ -z $pid ]] || read -r -a before <<<"$(proc_usage "$pid")"
  bounded $((secs + 60)) wrk -t"$threads" -c"$conns" -d"${secs}s" --latency "${extra[@]}" \
    -s "${WRK_SCRIPT[$target]:-$TMP/post.lua}" "${URL[$target]}" >"$out" 2>&1 || status=$?
  [[ -z $pid ]] || read -r -a after <<<"$(proc_usage "$pid")"
  ensure_alive
  local err=""
  ((status == 0)) || err="wrk against $target failed: $(tail -3 "$out")"
  [[ -n $err ]] || grep -q '^RESULT' "$out" || err="wrk printed no result for $target: $(tail -3 "$out")"
  [[ -z $pid || -n $err ]] || kill -0 "$pid" 2>/dev/null || err="$target exited during wrk"
  if [[ -n $err ]]; then
    [[ -n ${PEER_STATE[$target]:-} ]] || die "$err"
    peer_fail "$target" "failed: $(tr '\n' ' ' <<<"$err")"
    return 1
  fi
  if [[ -n $pid ]]; then
    awk -v t="$((after[0] - before[0]))" -v c="$((after[1] - before[1]))" -v n="$(kv "$out" requests)" \
      -v hz="$CLK_TCK" 'BEGIN {
        printf "RESULT ticks=%d switches=%d requests=%d cpu_us_per_req=%.1f switches_per_req=%.2f\n",
          t, c, n, n ? t * 1e6 / hz / n : 0, n ? c / n : 0 }' >"$RAW/proc-$tag-$target.txt"
  fi
}

# measure_wrk NAME THREADS CONNS: ROUNDS interleaved rounds; medians into W[NAME,target,key].
declare -A W=()
declare -A RSS_IDLE=() RSS_PEAK=() RSS_PEAK_BULK=() RSS_SSE_IDLE=() # target -> KiB
measure_wrk() {
  local name=$1 threads=$2 conns=$3 round target key
  for round in $(seq 1 "$ROUNDS"); do
    for target in "${TARGETS[@]}"; do
      log "($name) round $round/$ROUNDS: $target, wrk -t$threads -c$conns -d${DURATION}s"
      run_wrk "$name-r$round" "$target" "$threads" "$conns" "$DURATION"
    done
  done
  for target in "${TARGETS[@]}"; do medians "$name" "$target" "$ROUNDS"; done
}

# medians NAME TARGET ROUNDS: W[NAME,TARGET,key] from the raw files of rounds 1..ROUNDS.
medians() {
  local name=$1 target=$2 rounds=$3 key round
  for key in rps p50_us p99_us max_us; do
    W[$name,$target,$key]=$(for round in $(seq 1 "$rounds"); do
      kv "$RAW/wrk-$name-r$round-$target.txt" "$key"
    done | median)
  done
  if [[ -n ${PROXY_PID[$target]:-} ]]; then
    for key in cpu_us_per_req switches_per_req; do
      W[$name,$target,$key]=$(for round in $(seq 1 "$rounds"); do
        kv "$RAW/proc-$name-r$round-$target.txt" "$key"
      done | median)
    done
  fi
  # Errors are summed over rounds, not medianed: one bad round must show.
  for key in non2xx sockerr; do
    W[$name,$target,$key]=$(for round in $(seq 1 "$rounds"); do
      kv "$RAW/wrk-$name-r$round-$target.txt" "$key"
    done | awk '{ s += $1 } END { print s + 0 }')
  done
}

# starvation_test: 64 keep-alive connections opened at once per target, each sending back to
# back; counts connections that waited >= 1 s for an answer (wrk cannot show them: a request
# that never completes is in none of its figures).
starvation_test() {
  local target secs=$((DURATION / 2 > 2 ? DURATION / 2 : 2))
  for target in "${TARGETS[@]}"; do
    log "(1) starvation check: 64 fresh keep-alive connections for ${secs}s, $target"
    local url=${URL[$target]#http://}
    local status=0
    bounded $((secs + 30)) "$TOOL" conns --addr "${url%%/*}" --path "/${url#*/}" --conns 64 \
      --secs "$secs" --body "$BODY" >"$RAW/conns-$target.txt" 2>"$RAW/conns-$target.err" || status=$?
    ensure_alive
    ((status == 0)) || die "starvation check against $target failed: $(tail -3 "$RAW/conns-$target.err")"
  done
}

# stream_test TARGET PORT PATH [PID [CPU_PID]]: 1,000 SSE streams; RESULT to $RAW/sse-TARGET.txt,
# and to $RAW/sse-TARGET.cpu how busy the whole machine was meanwhile (client, stand-in and proxy
# share its CPUs: near 100% the run measures the machine's queue, not the proxy) and the CPU time
# of CPU_PID's tree (the proxy; PID when not given).
stream_test() {
  local target=$1 port=$2 path=$3 pid=${4:-} cpu_pid=${5:-${4:-}}
  local watch=()
  [[ -n $pid ]] && watch=(--watch-pid "$pid")
  log "(4) $STREAMS concurrent SSE streams: $target"
  local status=0 stat_before busy use_before=(0 0) use_after=(0 0)
  stat_before=$(head -1 /proc/stat)
  [[ -n $cpu_pid ]] && read -r -a use_before <<<"$(proc_usage "$cpu_pid")"
  bounded 180 "$TOOL" client --addr "127.0.0.1:$port" --path "$path" --streams "$STREAMS" \
    --events "$EVENTS" --stall-secs "$STALL_SECS" --deadline-secs 90 --ramp-ms "$STREAM_RAMP_MS" "${watch[@]}" \
    >"$RAW/sse-$target.txt" 2>"$RAW/sse-$target.err" || status=$?
  busy=$(busy_since "$stat_before")
  [[ -n $cpu_pid ]] && read -r -a use_after <<<"$(proc_usage "$cpu_pid")"
  awk -v busy="$busy" -v t=$((use_after[0] - use_before[0])) -v hz="$CLK_TCK" -v proxy="$cpu_pid" \
    'BEGIN { printf "RESULT busy_pct=%s proxy_cpu_ms=%s\n", busy, proxy == "" ? "-" : sprintf("%.0f", 1000 * t / hz) }' \
    >"$RAW/sse-$target.cpu"
  ensure_alive
  ((status == 0)) || die "stream client failed: $(tail -3 "$RAW/sse-$target.err")"
  sed 's/^/    /' "$RAW/sse-$target.err" >&2
}

# bulk TARGET URL: one download; prints MB/s (10^6 bytes).
bulk() {
  local target=$1 url=$2 line code speed size
  line=$(curl -s -o /dev/null --max-time 120 -w '%{http_code} %{speed_download} %{size_download}' "$url") ||
    die "bulk download through $target failed: $line"
  read -r code speed size <<<"$line"
  [[ $code == 200 && $size == $((BULK_MIB * 1048576)) ]] ||
    die "bulk download through $target: status $code, $size bytes"
  awk -v s="$speed" 'BEGIN { printf "%.0f\n", s / 1e6 }'
}

# measure_bulk: BULK_RUNS interleaved rounds; the median MB/s into BULK[target].
declare -A BULK=()
measure_bulk() {
  local -A path=([direct]="http://127.0.0.1:$P_UP/v1/files/big"
    [nginx]="http://127.0.0.1:$P_NGX/openai/v1/files/big"
    [keyrelay]="http://127.0.0.1:$P_KR/openai/v1/files/big"
    [keyrelay-musl]="http://127.0.0.1:$P_KRM/openai/v1/files/big")
  local round target
  for round in $(seq 1 "$BULK_RUNS"); do
    for target in "${TARGETS[@]}"; do
      log "(5) round $round/$BULK_RUNS: $BULK_MIB MiB download, $target"
      bulk "$target" "${path[$target]}" >>"$RAW/bulk-$target.txt"
      ensure_alive
    done
  done
  for target in "${TARGETS[@]}"; do BULK[$target]=$(median <"$RAW/bulk-$target.txt"); done
}

# startup_test TARGET BIN: (6) for BIN; RESULT to $RAW/startup-TARGET.txt.
startup_test() {
  local target=$1 bin=$2
  mkdir -p "$TMP/startup"
  log "(6) start-up time, $STARTUP_RUNS runs, $target"
  local envs=(--env "OPENAI_API_KEYS=$KR_KEYS" --env "OPENAI_BASE_URL=http://127.0.0.1:$P_UP"
    --env LOG_LEVEL=warn)
  [[ -n $KR_WORKERS ]] && envs+=(--env "WORKERS=$KR_WORKERS")
  bounded 120 "$TOOL" startup --bin "$bin" --dir "$TMP/startup" --port "$P_START" \
    --runs "$STARTUP_RUNS" "${envs[@]}" >"$RAW/startup-$target.txt" 2>"$RAW/startup-$target.err" ||
    die "start-up timing of $target failed: $(tail -5 "$RAW/startup-$target.err")"
}

# idle_test: (7). Starts a keyrelay with MAX_CONNECTIONS=20000 under ulimit -n 30000, holds
# IDLE_CONNS idle connections to it (scripts/idle_conns.py, no byte sent), then, while they are
# held, times one GET /health and one proxied POST with curl and reads keyrelay's threads and
# VmRSS. Results in IDLE[...]. A keyrelay that dies here is reported in the table, not fatal.
declare -A IDLE=()
idle_test() {
  local dir=$TMP/idle-client
  mkdir -p "$dir"
  start_keyrelay keyrelay-idle "$P_IDLE" "$P_UP" "$KR_WORKERS" "$IDLE_NOFILE" \
    MAX_CONNECTIONS="$IDLE_MAX_CONNECTIONS"
  local kr=$KR_PID
  IDLE[nofile]=$(awk '/^Max open files/ { print $4 }' "/proc/$kr/limits")
  [[ ${IDLE[nofile]} == "$IDLE_NOFILE" ]] ||
    log "(7) cannot raise the open-file limit to $IDLE_NOFILE (hard limit $(ulimit -Hn)): keyrelay runs with ${IDLE[nofile]}"
  IDLE[workers]=${KR_WORKERS:-$("$KR_BIN" --help 2>/dev/null | awk '$1 == "WORKERS" { print $2; exit }')}
  [[ ${IDLE[workers]} =~ ^[0-9]+$ ]] || IDLE[workers]=1024 # keyrelay's documented default
  smoke "http://127.0.0.1:$P_IDLE$CHAT" # one request first: a worker and an upstream connection
  local fds0
  fds0=$(find "/proc/$kr/fd" -mindepth 1 -maxdepth 1 | wc -l)
  log "(7) opening $IDLE_CONNS idle connections to keyrelay (MAX_CONNECTIONS=$IDLE_MAX_CONNECTIONS, ulimit -n ${IDLE[nofile]})"
  # The helper holds its connections until its stdin (a FIFO we keep open) gets a line or EOF.
  mkfifo "$dir/ctl"
  python3 "$ROOT/scripts/idle_conns.py" --addr "127.0.0.1:$P_IDLE" --conns "$IDLE_CONNS" \
    --connect-secs 30 --hold-secs 120 <"$dir/ctl" >"$RAW/idle.txt" 2>"$RAW/idle.err" &
  local client=$!
  spawned idle-client
  local ctl
  exec {ctl}>"$dir/ctl"
  local _ held=""
  for _ in $(seq 1 400); do # the helper gives up connecting after 30 s
    held=$(grep '^HELD' "$RAW/idle.txt" 2>/dev/null | tr ' ' '\n' | sed -n 's/^held=//p') || true
    [[ -n $held ]] && break
    kill -0 "$client" 2>/dev/null || break
    sleep 0.1
  done
  [[ -n $held ]] || { exec {ctl}>&-; die "idle-connection client failed: $(tail -3 "$RAW/idle.err")"; }
  # Connected on the client's side is not yet accepted: wait (at most 10 s) for keyrelay's
  # descriptors to stop growing.
  local fds=$fds0 last=-1 same=0
  for _ in $(seq 1 50); do
    kill -0 "$kr" 2>/dev/null || break
    fds=$(find "/proc/$kr/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l) || true
    ((fds - fds0 >= held)) && break
    if ((fds == last)); then same=$((same + 1)); else same=0; fi
    ((same < 5)) || break # no change for 1 s
    last=$fds
    sleep 0.2
  done
  IDLE[accepted]=$((fds > fds0 ? fds - fds0 : 0))
  IDLE[health_ms]=$(curl -s -o /dev/null --max-time 10 -w '%{http_code} %{time_total}' \
    "http://127.0.0.1:$P_IDLE/health" | awk '$1 == 200 { printf "%.1f", $2 * 1000 }') || true
  IDLE[proxied_ms]=$(curl -s -o "$dir/proxied.out" --max-time 10 -w '%{http_code} %{time_total}' \
    -X POST -H 'Content-Type: application/json' --data-binary "$BODY" "http://127.0.0.1:$P_IDLE$CHAT" |
    awk '$1 == 200 { printf "%.1f", $2 * 1000 }') || true
  grep -q chatcmpl-bench0001 "$dir/proxied.out" 2>/dev/null || IDLE[proxied_ms]=""
  IDLE[threads]=$(status_kib "$kr" Threads 2>/dev/null) || true
  IDLE[rss_kib]=$(status_kib "$kr" VmRSS 2>/dev/null) || true
  echo done >&"$ctl"
  exec {ctl}>&-
  local status=0
  wait "$client" || status=$?
  ((status == 0)) || log "idle-connection client exited with status $status: $(tail -3 "$RAW/idle.err")"
  IDLE[held]=$held
  IDLE[still_open]=$(kv "$RAW/idle.txt" still_open) || true
  local key
  for key in failed errors connect_ms; do
    IDLE[$key]=$(grep '^HELD' "$RAW/idle.txt" | tr ' ' '\n' | sed -n "s/^$key=//p") || true
  done
  sleep 0.2 # a keyrelay that is going down because of the load: let it
  check_keyrelays
  if [[ -n ${KR_DEAD[$kr]:-} ]]; then
    IDLE[alive]=no
    log "(7) ${KR_DEAD[$kr]}"
    # Reported in the table; the run goes on.
    unset "KR_DEAD[$kr]"
    kr_unwatch "$kr"
  else
    IDLE[alive]=yes
  fi
  log "(7) held ${IDLE[still_open]:-?}/$IDLE_CONNS (accepted ${IDLE[accepted]}, connect errors ${IDLE[errors]:-?}), threads ${IDLE[threads]:-?}, RSS $(fmt_mib "${IDLE[rss_kib]:-}") MiB, /health ${IDLE[health_ms]:-failed} ms, proxied ${IDLE[proxied_ms]:-failed} ms, alive ${IDLE[alive]}"
}

# ---------------------------------------------------------------------------------------------
# The table

fmt_ms() { awk -v u="$1" 'BEGIN { if (u == "" || u == "nan") print "-"; else printf "%.3f", u / 1000 }'; }
fmt_mib() { awk -v k="$1" 'BEGIN { if (k == "") print "-"; else printf "%.1f", k / 1024 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "-"; else printf "%.2fx", a / b }'; }
diff_ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.3f ms", a - b }'; }
# verdict OK_EXPRESSION: "ok" or "MISS".
verdict() { awk "BEGIN { print (($1) ? \"ok\" : \"MISS\") }"; }

row() { printf '%-40s %12s %12s %12s %12s %14s   %s\n' "$@"; }
rline() { printf '  %-50s %s\n' "$@"; }

print_table() {
  local -A S=()
  local t key
  for t in direct nginx "${KEYRELAYS[@]}"; do
    for key in concurrent_peak ok stalled failed delay_p50_ms delay_p99_ms delay_max_ms first_event_p50_ms \
      first_event_p99_ms first_event_max_ms rss_peak_kib threads_peak; do
      S[$t,$key]=$(kv "$RAW/sse-$t.txt" "$key")
    done
    # The stream client may not print first_event_p99_ms (older builds of the example): shown as -.
    S[$t,first_event_p99_ms]=${S[$t,first_event_p99_ms]:--}
  done
  local d_p50=${W[c1,direct,p50_us]} d_p99=${W[c1,direct,p99_us]}
  local -A add50=() add99=()
  for t in nginx "${KEYRELAYS[@]}"; do
    add50[$t]=$(fmt_ms $((${W[c1,$t,p50_us]} - d_p50)))
    add99[$t]=$(fmt_ms $((${W[c1,$t,p99_us]} - d_p99)))
  done
  local kr_rps=${W[c64,keyrelay,rps]} krm_rps=${W[c64,keyrelay-musl,rps]} ngx_rps=${W[c64,nginx,rps]}
  local start_ms startm_ms
  start_ms=$(kv "$RAW/startup-keyrelay.txt" startup_ms_median)
  startm_ms=$(kv "$RAW/startup-keyrelay-musl.txt" startup_ms_median)

  echo "keyrelay benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo '+dirty'), $(nproc) CPUs, quick=$QUICK"
  echo "nginx $(nginx_version), worker_processes $NGINX_WORKERS; keyrelay LOG_LEVEL=warn, WORKERS=${KR_WORKERS:-default} (streams: ${STREAM_WORKERS:-default}), 4 keys"
  echo "keyrelay = target/release/keyrelay ($(bin_info "$KR_BIN")); kr musl = target/x86_64-unknown-linux-musl/release/keyrelay ($(bin_info "$KRM_BIN")); a process of its own per column and measurement"
  echo "nginx proxy: upstream keepalive, proxy_buffering on (off for the SSE server), proxy_max_temp_file_size 0"
  echo "(1),(2): median of $ROUNDS x ${DURATION}s wrk runs (direct, nginx, keyrelay, kr musl interleaved); errors summed over runs. Latencies in ms."
  echo "CPU busy with other work while ours idled: ${BUSY_BEFORE}% before (after waiting ${QUIET_WAITED}s), ${BUSY_AFTER}% after (noise: keep it near 0)"
  echo
  row "metric" "direct" "nginx" "keyrelay" "kr musl" "kr vs nginx" "target"
  row "(1) rps, 64 conns" "${W[c64,direct,rps]%.*}" "${ngx_rps%.*}" "${kr_rps%.*}" "${krm_rps%.*}" \
    "$(ratio "$kr_rps" "$ngx_rps")" "$(verdict "$kr_rps >= 0.5 * $ngx_rps") >=0.5x"
  for key in p50_us p99_us max_us; do
    row "(1) ${key%_us} ms, 64 conns" "$(fmt_ms "${W[c64,direct,$key]}")" "$(fmt_ms "${W[c64,nginx,$key]}")" \
      "$(fmt_ms "${W[c64,keyrelay,$key]}")" "$(fmt_ms "${W[c64,keyrelay-musl,$key]}")" "" \
      "$([[ $key == p99_us ]] && echo "$(verdict "${W[c64,keyrelay,p99_us]} <= 5000") <=5 ms")"
  done
  row "(1) CPU us/req, 64 conns" "-" "${W[c64,nginx,cpu_us_per_req]}" "${W[c64,keyrelay,cpu_us_per_req]}" \
    "${W[c64,keyrelay-musl,cpu_us_per_req]}" \
    "$(ratio "${W[c64,keyrelay,cpu_us_per_req]}" "${W[c64,nginx,cpu_us_per_req]}")" "reported"
  row "(1) ctx switches/req, 64 conns" "-" "${W[c64,nginx,switches_per_req]}" \
    "${W[c64,keyrelay,switches_per_req]}" "${W[c64,keyrelay-musl,switches_per_req]}" \
    "$(ratio "${W[c64,keyrelay,switches_per_req]}" "${W[c64,nginx,switches_per_req]}")" "reported"
  row "(1) peak RSS MiB (VmHWM after (1))" "-" "$(fmt_mib "${RSS_PEAK[nginx]}")" "$(fmt_mib "${RSS_PEAK[keyrelay]}")" \
    "$(fmt_mib "${RSS_PEAK[keyrelay-musl]}")" "$(ratio "${RSS_PEAK[keyrelay]}" "${RSS_PEAK[nginx]}")" "see (3)"
  row "(1) starving conns of 64 (>=1 s wait)" "$(kv "$RAW/conns-direct.txt" starving)" \
    "$(kv "$RAW/conns-nginx.txt" starving)" "$(kv "$RAW/conns-keyrelay.txt" starving)" \
    "$(kv "$RAW/conns-keyrelay-musl.txt" starving)" "" \
    "$(verdict "$(kv "$RAW/conns-keyrelay.txt" starving) == 0") 0"
  row "(1) longest wait ms, 64 fresh conns" "$(kv "$RAW/conns-direct.txt" longest_wait_ms)" \
    "$(kv "$RAW/conns-nginx.txt" longest_wait_ms)" "$(kv "$RAW/conns-keyrelay.txt" longest_wait_ms)" \
    "$(kv "$RAW/conns-keyrelay-musl.txt" longest_wait_ms)" "" ""
  row "(1) non-2xx / socket errors" "${W[c64,direct,non2xx]} / ${W[c64,direct,sockerr]}" \
    "${W[c64,nginx,non2xx]} / ${W[c64,nginx,sockerr]}" "${W[c64,keyrelay,non2xx]} / ${W[c64,keyrelay,sockerr]}" \
    "${W[c64,keyrelay-musl,non2xx]} / ${W[c64,keyrelay-musl,sockerr]}" "" \
    "$(verdict "${W[c64,keyrelay,non2xx]} + ${W[c64,keyrelay,sockerr]} == 0") 0"
  row "(2) rps, 1 conn" "${W[c1,direct,rps]%.*}" "${W[c1,nginx,rps]%.*}" "${W[c1,keyrelay,rps]%.*}" \
    "${W[c1,keyrelay-musl,rps]%.*}" "$(ratio "${W[c1,keyrelay,rps]}" "${W[c1,nginx,rps]}")" ""
  row "(2) p50 ms, 1 conn" "$(fmt_ms "$d_p50")" "$(fmt_ms "${W[c1,nginx,p50_us]}")" \
    "$(fmt_ms "${W[c1,keyrelay,p50_us]}")" "$(fmt_ms "${W[c1,keyrelay-musl,p50_us]}")" "" ""
  row "(2) p99 ms, 1 conn" "$(fmt_ms "$d_p99")" "$(fmt_ms "${W[c1,nginx,p99_us]}")" \
    "$(fmt_ms "${W[c1,keyrelay,p99_us]}")" "$(fmt_ms "${W[c1,keyrelay-musl,p99_us]}")" "" ""
  row "(2) added p50 ms over direct" "-" "${add50[nginx]}" "${add50[keyrelay]}" "${add50[keyrelay-musl]}" \
    "$(diff_ms "${add50[keyrelay]}" "${add50[nginx]}")" "$(verdict "${add50[keyrelay]} <= 0.1") <=0.1 ms"
  row "(2) added p99 ms over direct" "-" "${add99[nginx]}" "${add99[keyrelay]}" "${add99[keyrelay-musl]}" \
    "$(diff_ms "${add99[keyrelay]}" "${add99[nginx]}")" ""
  row "(2) non-2xx / socket errors" "${W[c1,direct,non2xx]} / ${W[c1,direct,sockerr]}" \
    "${W[c1,nginx,non2xx]} / ${W[c1,nginx,sockerr]}" "${W[c1,keyrelay,non2xx]} / ${W[c1,keyrelay,sockerr]}" \
    "${W[c1,keyrelay-musl,non2xx]} / ${W[c1,keyrelay-musl,sockerr]}" "" ""
  row "(3) RSS idle MiB (before load)" "-" "$(fmt_mib "${RSS_IDLE[nginx]}")" "$(fmt_mib "${RSS_IDLE[keyrelay]}")" \
    "$(fmt_mib "${RSS_IDLE[keyrelay-musl]}")" "" "$(verdict "${RSS_IDLE[keyrelay]} <= 5 * 1024") <=5 MiB"
  row "(3) RSS peak MiB (VmHWM after (1))" "-" "$(fmt_mib "${RSS_PEAK[nginx]}")" "$(fmt_mib "${RSS_PEAK[keyrelay]}")" \
    "$(fmt_mib "${RSS_PEAK[keyrelay-musl]}")" "" "$(verdict "${RSS_PEAK[keyrelay]} <= 20 * 1024") <=20 MiB"
  row "(4) SSE streams open at once (peak)" "${S[direct,concurrent_peak]}" "${S[nginx,concurrent_peak]}" \
    "${S[keyrelay,concurrent_peak]}" "${S[keyrelay-musl,concurrent_peak]}" "" ""
  local -A osf=()
  for t in direct nginx "${KEYRELAYS[@]}"; do osf[$t]=${S[$t,ok]}/${S[$t,stalled]}/${S[$t,failed]}; done
  row "(4) SSE streams ok/stalled/failed" "${osf[direct]}" "${osf[nginx]}" "${osf[keyrelay]}" "${osf[keyrelay-musl]}" "" \
    "$(verdict "${S[keyrelay,stalled]} + ${S[keyrelay,failed]} == 0 && ${S[keyrelay,ok]} == $STREAMS") $STREAMS/0/0"
  local -A label=([delay_p50_ms]="event delay p50" [delay_p99_ms]="event delay p99"
    [delay_max_ms]="event delay max" [first_event_p50_ms]="time to first event p50"
    [first_event_p99_ms]="time to first event p99" [first_event_max_ms]="time to first event max")
  local -A target=([delay_p99_ms]="<= 5" [first_event_p99_ms]="< 200" [first_event_max_ms]="< 200")
  local v goal
  for key in delay_p50_ms delay_p99_ms delay_max_ms first_event_p50_ms first_event_p99_ms first_event_max_ms; do
    v=${S[keyrelay,$key]} goal=""
    if [[ -n ${target[$key]:-} ]]; then
      if [[ $v =~ ^[0-9.]+$ ]]; then goal="$(verdict "$v ${target[$key]}")"; else goal="n/a"; fi
      goal="$goal ${target[$key]// /} ms"
    fi
    row "(4) ${label[$key]} ms" "${S[direct,$key]}" "${S[nginx,$key]}" "$v" "${S[keyrelay-musl,$key]}" \
      "$([[ $v =~ ^[0-9.]+$ && ${S[nginx,$key]} =~ ^[0-9.]+$ ]] && diff_ms "$v" "${S[nginx,$key]}")" "$goal"
  done
  row "(4) proxy CPU ms over the streams" "-" "$(kv "$RAW/sse-nginx.cpu" proxy_cpu_ms)" \
    "$(kv "$RAW/sse-keyrelay.cpu" proxy_cpu_ms)" "$(kv "$RAW/sse-keyrelay-musl.cpu" proxy_cpu_ms)" \
    "$(ratio "$(kv "$RAW/sse-keyrelay.cpu" proxy_cpu_ms)" "$(kv "$RAW/sse-nginx.cpu" proxy_cpu_ms)")" "reported"
  row "(4) machine CPU busy % over the streams" "$(kv "$RAW/sse-direct.cpu" busy_pct)" \
    "$(kv "$RAW/sse-nginx.cpu" busy_pct)" "$(kv "$RAW/sse-keyrelay.cpu" busy_pct)" \
    "$(kv "$RAW/sse-keyrelay-musl.cpu" busy_pct)" "" "reported"
  row "(4) RSS idle MiB, WORKERS=${STREAM_WORKERS:-default}" "-" "-" "$(fmt_mib "${RSS_SSE_IDLE[keyrelay]}")" \
    "$(fmt_mib "${RSS_SSE_IDLE[keyrelay-musl]}")" "" ""
  row "(4) RSS peak MiB during streams" "-" "-" "$(fmt_mib "${S[keyrelay,rss_peak_kib]}")" \
    "$(fmt_mib "${S[keyrelay-musl,rss_peak_kib]}")" "" \
    "$(verdict "${S[keyrelay,rss_peak_kib]:-1e12} <= 80 * 1024") <=80 MiB"
  row "(4) threads peak during streams" "-" "-" "${S[keyrelay,threads_peak]}" "${S[keyrelay-musl,threads_peak]}" "" \
    "$(verdict "${S[keyrelay,threads_peak]:-1e12} <= 1100") <=1,100"
  row "(5) bulk MB/s, $BULK_MIB MiB (median/$BULK_RUNS)" "${BULK[direct]}" "${BULK[nginx]}" "${BULK[keyrelay]}" \
    "${BULK[keyrelay-musl]}" "$(ratio "${BULK[keyrelay]}" "${BULK[nginx]}")" \
    "$(verdict "${BULK[keyrelay]} >= 0.8 * ${BULK[nginx]}") >=0.8x"
  row "(5) RSS peak MiB (VmHWM after bulk)" "-" "-" "$(fmt_mib "${RSS_PEAK_BULK[keyrelay]}")" \
    "$(fmt_mib "${RSS_PEAK_BULK[keyrelay-musl]}")" "" ""
  row "(6) start-up to ready ms (median/$STARTUP_RUNS)" "-" "-" "$start_ms" "$startm_ms" "" \
    "$(verdict "$start_ms <= 20") <=20 ms"
  local k=$((IDLE_CONNS / 1000))k held_shown=${IDLE[still_open]:-0}/$IDLE_CONNS
  [[ ${IDLE[alive]} == yes ]] || held_shown="died"
  row "(7) idle conns held" "-" "-" "$held_shown" "-" "" \
    "$(verdict "${IDLE[still_open]:-0} == $IDLE_CONNS && ${IDLE[accepted]:-0} >= $IDLE_CONNS && \"${IDLE[alive]}\" == \"yes\"") $IDLE_CONNS/$IDLE_CONNS, alive"
  row "(7) threads with $k idle" "-" "-" "${IDLE[threads]:--}" "-" "" \
    "$(verdict "${IDLE[threads]:-1e12} <= ${IDLE[workers]} + 16") <=$((IDLE[workers] + 16)) (WORKERS+16)"
  row "(7) RSS MiB with $k idle" "-" "-" "$(fmt_mib "${IDLE[rss_kib]:-}")" "-" "" \
    "$(verdict "${IDLE[rss_kib]:-1e12} <= 100 * 1024") <=100 MiB"
  row "(7) request ms with $k idle" "-" "-" "${IDLE[health_ms]:--}/${IDLE[proxied_ms]:--}" "-" "" \
    "$(verdict "${IDLE[health_ms]:-1e12} < 50 && ${IDLE[proxied_ms]:-1e12} < 50") <50 ms"
  print_allocs
  echo
  echo "Ratios:"
  rline "musl rps / glibc rps, 64 conns:" "$(ratio "$krm_rps" "$kr_rps")"
  rline "musl p99 / glibc p99, 64 conns:" "$(ratio "${W[c64,keyrelay-musl,p99_us]}" "${W[c64,keyrelay,p99_us]}")"
  rline "musl peak RSS / glibc peak RSS, after (1):" "$(ratio "${RSS_PEAK[keyrelay-musl]}" "${RSS_PEAK[keyrelay]}")"
  rline "musl p99 / glibc p99, $STREAMS streams:" "event delay $(ratio "${S[keyrelay-musl,delay_p99_ms]}" "${S[keyrelay,delay_p99_ms]}"), first event $(ratio "${S[keyrelay-musl,first_event_p99_ms]}" "${S[keyrelay,first_event_p99_ms]}")"
  rline "musl peak RSS / glibc peak RSS, $STREAMS streams:" "$(ratio "${S[keyrelay-musl,rss_peak_kib]}" "${S[keyrelay,rss_peak_kib]}")"
  rline "glibc rps / nginx rps, 64 conns:" "$(ratio "$kr_rps" "$ngx_rps")"
  print_peers
  echo
  echo "ready = $(kv "$RAW/startup-keyrelay.txt" signal) (port accepting, or the 'listening on' line if printed first); min/max $(kv "$RAW/startup-keyrelay.txt" startup_ms_min)/$(kv "$RAW/startup-keyrelay.txt" startup_ms_max) ms (musl $(kv "$RAW/startup-keyrelay-musl.txt" startup_ms_min)/$(kv "$RAW/startup-keyrelay-musl.txt" startup_ms_max) ms)."
  echo "Event delay = client read time - upstream write time, per event ($((STREAMS * EVENTS)) events per column); first event = request sent to first event read."
  echo "Streams are opened evenly over ${STREAM_RAMP_MS} ms; RSS from /proc/<pid>/status (VmRSS, VmHWM; kernel RSS counters are approximate; nginx: summed over master and workers)."
  echo "CPU us/req = (utime + stime) over the c64 wrk run / requests (nginx: master + workers; ${CLK_TCK} ticks/s); ctx switches/req = voluntary + nonvoluntary over /proc/<pid>/task/*, / requests. Median of $ROUNDS."
  echo "(7), glibc only: $IDLE_CONNS idle connections (no byte sent) opened in ${IDLE[connect_ms]:-?} ms, keyrelay accepted ${IDLE[accepted]:-?} of them (its descriptors), connect errors ${IDLE[errors]:-?}; MAX_CONNECTIONS=$IDLE_MAX_CONNECTIONS, ulimit -n ${IDLE[nofile]:-?} (asked $IDLE_NOFILE), WORKERS=${KR_WORKERS:-default (${IDLE[workers]})}; request ms = one GET /health / one proxied POST (curl time_total) while they are held; keyrelay alive afterwards: ${IDLE[alive]}."
}

nginx_version() { "$(command -v nginx || echo /usr/sbin/nginx)" -v 2>&1 | sed 's/.*nginx\///'; }

# ---------------------------------------------------------------------------------------------
# Main

main() {
  mkdir -p "$OUT" "$RAW"
  rm -f "$RAW"/*
  install_tools
  raise_fd_limit
  check_ports
  local started=$SECONDS
  install_peers
  INSTALL_S=$((SECONDS - started))
  build
  [[ $AFFINITY == 0 ]] || affinity_build
  [[ $SHARED_BENCH == 0 ]] || shared_build
  write_wrk_script "$TMP/post.lua" "$BODY" "Authorization: Bearer sk-client-placeholder"
  write_upstream_conf
  write_proxy_conf

  log "starting the stand-in upstream (nginx), the reference proxy (nginx), keyrelay (glibc and musl)"
  start_nginx "$TMP/nginx-upstream" "$P_UP"
  start_sse_upstream
  start_nginx "$TMP/nginx-proxy" "$P_NGX"
  PROXY_PID[nginx]=$NGX_PID
  port_open "$P_NGX_SSE" || die "nginx SSE proxy port $P_NGX_SSE not listening"
  start_keyrelay keyrelay "$P_KR" "$P_UP" "$KR_WORKERS"
  PROXY_PID[keyrelay]=$KR_PID
  KR_START_BIN=$KRM_BIN start_keyrelay keyrelay-musl "$P_KRM" "$P_UP" "$KR_WORKERS"
  PROXY_PID[keyrelay-musl]=$KR_PID
  sleep 0.5 # let them finish starting their workers: idle means settled, not half-started
  local target
  RSS_IDLE[nginx]=$(tree_kib "${PROXY_PID[nginx]}" VmRSS)
  for target in "${KEYRELAYS[@]}"; do RSS_IDLE[$target]=$(status_kib "${PROXY_PID[$target]}" VmRSS); done
  wait_for_quiet

  for target in "${TARGETS[@]}"; do smoke "${URL[$target]}"; done
  log "warm-up: 1 s of wrk -c64 per target"
  for target in "${TARGETS[@]}"; do run_wrk warmup "$target" 2 64 1; done

  measure_wrk c64 2 64
  starvation_test
  RSS_PEAK[nginx]=$(tree_kib "${PROXY_PID[nginx]}" VmHWM)
  for target in "${KEYRELAYS[@]}"; do
    RSS_PEAK[$target]=$(status_kib "${PROXY_PID[$target]}" VmHWM)
    W[c64,$target,threads]=$(status_kib "${PROXY_PID[$target]}" Threads)
  done
  measure_wrk c1 1 1

  measure_bulk
  for target in "${KEYRELAYS[@]}"; do RSS_PEAK_BULK[$target]=$(status_kib "${PROXY_PID[$target]}" VmHWM); done

  # The streams: a fresh keyrelay per column, started before the first stream test.
  local -A sse_pid=()
  start_keyrelay keyrelay-streams "$P_KR_SSE" "$P_SSE" "$STREAM_WORKERS"
  sse_pid[keyrelay]=$KR_PID
  KR_START_BIN=$KRM_BIN start_keyrelay keyrelay-musl-streams "$P_KRM_SSE" "$P_SSE" "$STREAM_WORKERS"
  sse_pid[keyrelay-musl]=$KR_PID
  sleep 0.5
  for target in "${KEYRELAYS[@]}"; do RSS_SSE_IDLE[$target]=$(status_kib "${sse_pid[$target]}" VmRSS); done
  stream_test direct "$P_SSE" /v1/chat/completions
  stream_test nginx "$P_NGX_SSE" "$CHAT" "" "${PROXY_PID[nginx]}"
  stream_test keyrelay "$P_KR_SSE" "$CHAT" "${sse_pid[keyrelay]}"
  stream_test keyrelay-musl "$P_KRM_SSE" "$CHAT" "${sse_pid[keyrelay-musl]}"

  startup_test keyrelay "$KR_BIN"
  startup_test keyrelay-musl "$KRM_BIN"
  idle_test
  alloc_test
  [[ $AFFINITY == 0 ]] || affinity_section
  [[ $SHARED_BENCH == 0 ]] || shared_section
  measure_peers
  BUSY_AFTER=$(cpu_busy_pct 1)

  ensure_alive
  local lines
  lines=$(cat "$TMP"/keyrelay*/stderr.log | wc -l)
  ((lines == 0)) || log "keyrelay wrote $lines line(s) to stderr at LOG_LEVEL=warn; see $RAW/keyrelay*-stderr.log"

  {
    print_table
    if [[ $AFFINITY != 0 ]]; then print_affinity_section; fi
    if [[ $SHARED_BENCH != 0 ]]; then
      echo
      print_shared_section
    fi
  } | tee "$OUT/last.txt"
  echo "total time $(elapsed_s) s, of which building ${BUILD_S} s, installing peers ${INSTALL_S} s" | tee -a "$OUT/last.txt"
}

# Run when executed, not when sourced (scripts/bench/affinity_c64.sh and shared_state.sh source it
# for their pieces).
# bash -c 'source scripts/bench.sh; ...' also sees one BASH_SOURCE element, but there $0 is bash.
if [[ ${BASH_SOURCE[0]} == "$0" && ${#BASH_SOURCE[@]} == 1 ]]; then main "$@"; fi
