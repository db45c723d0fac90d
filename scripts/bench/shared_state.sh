#!/usr/bin/env bash
# shellcheck disable=SC2034,SC2154 # bench.sh declares and reads these
# scripts/bench/shared_state.sh: issue 20's figures, several instances sharing their key state
# through Redis (SHARED_STATE_URL).
#
# How to run:
#   scripts/bench/shared_state.sh                 standalone (about 3 minutes after the build;
#                                                 table in target/bench/shared/last.txt, raw files
#                                                 and keyrelay logs in target/bench/shared/raw/)
#   SHARED_REV=HEAD scripts/bench/shared_state.sh the last commit, built in a worktree of its own
#                                                 (SHARED_DIR, default /tmp/kr-shared-<commit>),
#                                                 not the working tree
#   BENCH_SHARED=1 scripts/bench.sh               as section (10) of the full bench
#   python3 scripts/bench/shared_state.py         (1) and (3) alone, with a Redis of their own
# Needs redis-server and redis-cli (installed when missing, apt-get install redis-server), wrk and
# nginx (bench.sh's stand-in; installed when missing), python3 (standard library only).
#
# (1) bench-to-honour latency: instances A and B on one Redis; key 1 disabled on A (POST
#     /status/keys/openai/1/disable), or 429 Retry-After: 60 on A; the time until B's requests
#     avoid it, and until B's /status (polled every 1 ms) says so; and back (enable, reset).
#     SHARED_HONOUR_ROUNDS rounds (200), p50 / p99 / max; target p99 <= 100 ms.
#     scripts/bench/shared_state.py, which says exactly how each figure is taken.
# (2) wrk -t2 -c64 POST /openai/v1/chat/completions (bench.sh's ~400-byte body) through one
#     keyrelay with SHARED_STATE_URL and the same keyrelay without, against bench.sh's fast
#     stand-in (nginx, fixed answer), 4 keys, SHARED_ROUNDS rounds (3) interleaved, the order
#     reversed every other round, one process each for all rounds. Per variant: median rps, p50,
#     p99, keyrelay's CPU us per request (utime + stime from /proc/<pid>/stat over the run) and
#     context switches per request; for the shared one also Redis's work per request over each
#     run: PUBLISH and SET calls (INFO commandstats), commands processed (INFO stats
#     total_commands_processed) and redis-server's CPU us (from /proc). Every request is the
#     first turn of one same conversation, so each records the conversation's key (coalesced per
#     5 ms batch by the writer). Target: shared rps >= 0.95x local.
# (3) the cost of a 429 across instances: 3 instances, 4 keys, a stand-in answering 429
#     Retry-After: 60 on a key's first use (and a "sticky" variant: 429 for 60 s, as a provider
#     does), requests round-robin over the instances (sequential back to back, 3 and 10 ms apart,
#     3 concurrent clients), and the same without SHARED_STATE_URL; each scenario
#     SHARED_COST_REPEATS times; 429s per key; target 1 per key, not 3. scripts/bench/shared_state.py.
# Before measuring it waits (at most SHARED_BUSY_WAIT s over the run, default 900) while a busy
# cargo, rustc or wrk process not its own, or scripts/bench/prompt_cache.py or affinity_c64.sh,
# runs, then for a quiet moment (bench.sh's wait_for_quiet, BENCH_QUIET_WAIT). A wrk run during
# which other work took more than SHARED_OTHERS_MAX % of the CPUs (default 3; a quiet run shows
# 0-0.5; the machine's busy time from /proc/stat less that of keyrelay, the stand-in,
# redis-server, wrk and this script) is run again, at most twice. It prints how busy the machine
# was before, during and after, and the share other work took during (1), each wrk run of (2),
# and (3).
#
# Knobs: SHARED_ROUNDS (3), SHARED_DURATION (10 s per wrk run; bench.sh's DURATION in the full
# bench), SHARED_HONOUR_ROUNDS (200), SHARED_COST_REQUESTS (30), SHARED_COST_REPEATS (5),
# SHARED_REV, SHARED_DIR, SHARED_BUSY_WAIT, SHARED_OTHERS_MAX, and bench.sh's BENCH_PORT_BASE,
# BENCH_WORKERS, BENCH_QUIET_WAIT. Ports: BENCH_PORT_BASE+1 (the stand-in), +17 (redis-server),
# +18 and +19 (the two keyrelays of (2)); (1) and (3) take free ports of their own and use the
# same redis-server, each scenario under a SHARED_STATE_PREFIX of its own.
#
# When run, this file sources scripts/bench.sh for its pieces (the stand-in's nginx config, the wrk
# script and its RESULT line, start_keyrelay, run_wrk, medians, proc_usage, the quiet check, the
# clean-up); bench.sh runs its own main only when it is executed itself.

SHARED_ROUNDS=${SHARED_ROUNDS:-3}
SHARED_HONOUR_ROUNDS=${SHARED_HONOUR_ROUNDS:-200}
SHARED_COST_REQUESTS=${SHARED_COST_REQUESTS:-30}
SHARED_COST_REPEATS=${SHARED_COST_REPEATS:-5}
SHARED_REV=${SHARED_REV:-}
SHARED_BUSY_WAIT=${SHARED_BUSY_WAIT:-900}
SHARED_OTHERS_MAX=${SHARED_OTHERS_MAX:-3}
SS_DURATION=${SHARED_DURATION:-${DURATION:-10}}
SS_VARIANTS=(ss-shared ss-local)
declare -A SS_LABEL=([ss-shared]="SHARED_STATE_URL set" [ss-local]="no SHARED_STATE_URL")
declare -A SS=() # figures for the table

ss_ports() { echo $((BASE + 17)) $((BASE + 18)) $((BASE + 19)); }

ss_install() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
  log "(10) installing redis-server"
  local sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  bounded 300 "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server ||
    { bounded 300 "${sudo[@]}" apt-get update &&
      bounded 300 "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server; } ||
    die "cannot install redis-server"
}

# shared_build: SS_BIN, the keyrelay measured: KR_BIN (the working tree's), or with SHARED_REV
# that commit built (release) in a git worktree of its own (SHARED_DIR) with its own target dir.
shared_build() {
  SS_BIN=$KR_BIN
  SS[rev]=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo '+dirty')
  SS[bin]=target/release/keyrelay
  [[ -n $SHARED_REV ]] || return 0
  local want short dir have
  want=$(git -C "$ROOT" rev-parse --verify "$SHARED_REV^{commit}") || die "no commit $SHARED_REV in $ROOT"
  short=${want:0:7}
  dir=${SHARED_DIR:-/tmp/kr-shared-$short}
  if [[ ! -e $dir ]]; then
    log "(10) git worktree add --detach $dir $short"
    git -C "$ROOT" worktree add --detach "$dir" "$want" >"$RAW/shared-worktree.log" 2>&1 ||
      die "git worktree add failed: $(tail -3 "$RAW/shared-worktree.log")"
  fi
  have=$(git -C "$dir" rev-parse HEAD 2>/dev/null) || die "$dir is not a git worktree"
  [[ $have == "$want" ]] || die "$dir is at ${have:0:9}, not $SHARED_REV"
  git -C "$dir" diff --quiet HEAD -- src Cargo.toml Cargo.lock || die "$dir has local changes to src/"
  log "(10) building keyrelay $short (release) in $dir"
  (cd "$dir" && bounded 1800 env CARGO_TARGET_DIR="$dir/target" cargo build --release --quiet) \
    >"$RAW/shared-build.log" 2>&1 || die "build of $short failed: $(tail -5 "$RAW/shared-build.log")"
  SS_BIN=$dir/target/release/keyrelay SS[rev]=$short SS[bin]=$SS_BIN
}

# ss_others: other heavy work on the machine, one line each (empty when none): cargo, rustc or
# wrk processes that are not ours and whose process tree used >= 10% of a CPU over 1 s (an idle
# `cargo run` parent of a server does not count), and the other bench helpers (prompt_cache.py,
# affinity_c64.sh) whatever they use.
ss_others() {
  local pid mine cands=() helpers=() p
  mine=" $$ $(proc_tree $$ | tr '\n' ' ') "
  local -A before=()
  for pid in $(pgrep -x 'cargo|rustc|wrk' || true); do
    [[ $mine == *" $pid "* ]] || cands+=("$pid")
  done
  for pid in $(pgrep -f 'prompt_cache\.py|affinity_c64\.sh' || true); do
    [[ $mine == *" $pid "* ]] || helpers+=("$pid")
  done
  for pid in "${helpers[@]}"; do ps -o pid=,args= -p "$pid" 2>/dev/null | cut -c1-120; done
  ((${#cands[@]})) || return 0
  for pid in "${cands[@]}"; do before[$pid]=$(proc_usage "$pid" | cut -d' ' -f1); done
  sleep 1
  for pid in "${cands[@]}"; do
    p=$(proc_usage "$pid" | cut -d' ' -f1)
    ((p - ${before[$pid]:-0} >= CLK_TCK / 10)) && ps -o pid=,args= -p "$pid" 2>/dev/null | cut -c1-120
  done
  return 0
}

# ss_wait_for_others: while other heavy work runs, wait, at most SHARED_BUSY_WAIT s over the run.
SS_WAITED=0
ss_wait_for_others() {
  local said=0 others
  while others=$(ss_others) && [[ -n $others ]] && ((SS_WAITED < SHARED_BUSY_WAIT)); do
    ((said)) || log "(10) other work is running: waiting for it to end ($(head -1 <<<"$others"))"
    said=1
    sleep 5
    SS_WAITED=$((SS_WAITED + 5))
  done
  others=$(ss_others)
  if [[ -n $others ]]; then
    SS[others_during]=$((${SS[others_during]:-0} + 1))
    log "(10) measuring with other work running: $(head -1 <<<"$others")"
  fi
}

# ss_start_redis: redis-server on the first port of ss_ports; SS_REDIS_PID.
ss_start_redis() {
  local port dir=$TMP/redis
  read -r port _ <<<"$(ss_ports)"
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --logfile "$dir/redis.log" >"$dir/stderr.log" 2>&1 &
  SS_REDIS_PID=$!
  spawned redis-server
  wait_ready "$port" "$SS_REDIS_PID" "$dir/stderr.log"
  SS_REDIS_PORT=$port
  SS[redis_version]=$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')
}

# ss_redis_counts: "publish_calls set_calls commands cpu_ticks" of our redis-server now.
ss_redis_counts() {
  local info
  info=$(redis-cli -p "$SS_REDIS_PORT" INFO all | tr -d '\r')
  awk -v ticks="$(proc_usage "$SS_REDIS_PID" | cut -d' ' -f1)" '
    /^cmdstat_publish:/ { split($0, a, /[=,]/); p = a[2] }
    /^cmdstat_set:/ { split($0, a, /[=,]/); s = a[2] }
    /^total_commands_processed:/ { split($0, a, ":"); t = a[2] }
    END { printf "%d %d %d %d\n", p, s, t, ticks }' <<<"$info"
}

# ss_wait_up PORT: until keyrelay on PORT says its shared state is up (at most 10 s).
ss_wait_up() {
  local _
  for _ in $(seq 1 200); do
    curl -s --max-time 2 "http://127.0.0.1:$1/status" | grep -q '"shared_state":{[^}]*"state":"up"' && return 0
    sleep 0.05
  done
  die "keyrelay on port $1: shared_state not up after 10 s"
}

# ss_own_ticks: CPU ticks used so far by what this section runs: the keyrelays of (2), the
# stand-in (nginx, master and workers), redis-server, and this script with the children it has
# waited for (wrk, shared_state.py and everything it started).
ss_own_ticks() {
  local pid sum=0 t f
  for pid in "${PROXY_PID[ss-shared]:-}" "${PROXY_PID[ss-local]:-}" "$SS_UP_PID" "$SS_REDIS_PID"; do
    [[ -n $pid ]] || continue
    read -r t _ <<<"$(proc_usage "$pid")"
    sum=$((sum + t))
  done
  read -r -a f <<<"$(sed 's/.*) //' "/proc/$$/stat")"
  echo $((sum + f[11] + f[12] + f[13] + f[14]))
}

# ss_others_pct STAT_LINE OWN_TICKS: the share of all CPUs, in percent, that other work used from
# then to now: the machine's busy time (/proc/stat) less ss_own_ticks'.
ss_others_pct() {
  awk -v a="$1" -v b="$(head -1 /proc/stat)" -v own=$(($(ss_own_ticks) - $2)) 'BEGIN {
    split(a, x); split(b, y)
    for (i = 2; i <= 9; i++) total += y[i] - x[i]
    busy = total - (y[5] - x[5]) - (y[6] - x[6])
    o = total ? 100 * (busy - own) / total : 0
    printf "%.1f", o < 0 ? 0 : o }'
}

# ss_thread_ticks PID: "NAME=TICKS ..." of PID's live threads, summed by thread name (worker,
# listener, shared-state (the writer), shared-events (the subscriber), keyrelay (main)).
ss_thread_ticks() {
  local f name stat rest fields
  declare -A sum=()
  for f in /proc/"$1"/task/*/stat; do
    stat=$(cat "$f" 2>/dev/null) || continue
    name=${stat#*(} name=${name%%)*}
    rest=${stat##*) }
    read -r -a fields <<<"$rest"
    sum[$name]=$((${sum[$name]:-0} + fields[11] + fields[12]))
  done
  for name in "${!sum[@]}"; do printf '%s=%s ' "$name" "${sum[$name]}"; done
  echo
}

# ss_thread_split BEFORE AFTER REQUESTS: CPU us per request by thread name between two
# ss_thread_ticks.
ss_thread_split() {
  awk -v b="$1" -v a="$2" -v n="$3" -v hz="$CLK_TCK" 'BEGIN {
    nb = split(b, x, " "); for (i = 1; i <= nb; i++) { split(x[i], kv, "="); before[kv[1]] = kv[2] }
    na = split(a, y, " ")
    for (i = 1; i <= na; i++) {
      split(y[i], kv, "=")
      if (n) printf "%s%s %.1f", (out++ ? ", " : ""), kv[1], (kv[2] - before[kv[1]]) * 1e6 / hz / n
    }
    print "" }'
}

# ss_run TAG TARGET: one wrk run (run_wrk), with Redis's counts over it in $RAW/redis-TAG-TARGET.txt;
# run again (at most twice) when other work took more than SHARED_OTHERS_MAX % of the CPUs
# meanwhile (that share in $RAW/others-TAG-TARGET.txt).
ss_run() {
  local tag=$1 target=$2 before after try stat0 own0 others threads0 threads1
  for try in 1 2 3; do
    ss_wait_for_others
    stat0=$(head -1 /proc/stat)
    own0=$(ss_own_ticks)
    before=$(ss_redis_counts)
    threads0=$(ss_thread_ticks "${PROXY_PID[$target]}")
    run_wrk "$tag" "$target" 2 64 "$SS_DURATION"
    threads1=$(ss_thread_ticks "${PROXY_PID[$target]}")
    after=$(ss_redis_counts)
    others=$(ss_others_pct "$stat0" "$own0")
    echo "RESULT others_pct=$others tries=$try" >"$RAW/others-$tag-$target.txt"
    awk -v o="$others" -v m="$SHARED_OTHERS_MAX" 'BEGIN { exit !(o <= m) }' && break
    if ((try == 3)); then
      SS[disturbed]=$((${SS[disturbed]:-0} + 1))
    else
      log "(10) other work took $others% of the CPUs during that run: running it again"
    fi
  done
  awk -v b="$before" -v a="$after" -v n="$(kv "$RAW/wrk-$tag-$target.txt" requests)" -v hz="$CLK_TCK" 'BEGIN {
    split(b, x, " "); split(a, y, " ")
    p = y[1] - x[1]; s = y[2] - x[2]; c = y[3] - x[3]; t = y[4] - x[4]
    printf "RESULT publish=%d set=%d commands=%d redis_ticks=%d requests=%d publish_per_req=%.4f set_per_req=%.4f commands_per_req=%.4f redis_cpu_us_per_req=%.2f\n",
      p, s, c, t, n, n ? p / n : 0, n ? s / n : 0, n ? c / n : 0, n ? t * 1e6 / hz / n : 0 }' >"$RAW/redis-$tag-$target.txt"
  ss_thread_split "$threads0" "$threads1" "$(kv "$RAW/wrk-$tag-$target.txt" requests)" >"$RAW/threads-$tag-$target.txt"
}

# ss_python PARTS OUT: scripts/bench/shared_state.py for (1) or (3) against our redis-server, run
# again (at most twice) when other work took more than SHARED_OTHERS_MAX % of the CPUs meanwhile;
# that share in SS[others_partN], the tries in SS[tries_partN].
ss_python() {
  local parts=$1 out=$2 status try stat0 own0
  for try in 1 2 3; do
    ss_wait_for_others
    stat0=$(head -1 /proc/stat)
    own0=$(ss_own_ticks)
    status=0
    bounded 900 python3 "$ROOT/scripts/bench/shared_state.py" --bin "$SS_BIN" --label "${SS[rev]}" \
      --redis-port "$SS_REDIS_PORT" --parts "$parts" --rounds "$SHARED_HONOUR_ROUNDS" \
      --cost-requests "$SHARED_COST_REQUESTS" --cost-repeats "$SHARED_COST_REPEATS" --keep-logs "$RAW" \
      --json "$RAW/shared-part$parts.json" >"$out" 2>&1 || status=$?
    SS[others_part$parts]=$(ss_others_pct "$stat0" "$own0") SS[tries_part$parts]=$try
    if ((status != 0)); then
      log "(10) shared_state.py --parts $parts exited with status $status: $(tail -3 "$out")"
      return 0
    fi
    awk -v o="${SS[others_part$parts]}" -v m="$SHARED_OTHERS_MAX" 'BEGIN { exit !(o <= m) }' && return 0
    ((try == 3)) || log "(10) other work took ${SS[others_part$parts]}% of the CPUs during part ($parts): running it again"
  done
}

# shared_c64: (2). Needs: the stand-in on P_UP, $TMP/post.lua, SS_BIN, our redis-server.
shared_c64() {
  local p_shared p_local
  read -r _ p_shared p_local <<<"$(ss_ports)"
  KR_START_BIN=$SS_BIN start_keyrelay ss-shared "$p_shared" "$P_UP" "$KR_WORKERS" "" \
    SHARED_STATE_URL="redis://127.0.0.1:$SS_REDIS_PORT" SHARED_STATE_PREFIX=krbench-c64
  PROXY_PID[ss-shared]=$KR_PID
  KR_START_BIN=$SS_BIN start_keyrelay ss-local "$p_local" "$P_UP" "$KR_WORKERS"
  PROXY_PID[ss-local]=$KR_PID
  URL[ss-shared]="http://127.0.0.1:$p_shared$CHAT" URL[ss-local]="http://127.0.0.1:$p_local$CHAT"
  ss_wait_up "$p_shared"
  local target round i order=()
  for target in "${SS_VARIANTS[@]}"; do smoke "${URL[$target]}"; done
  sleep 0.5
  ss_wait_for_others
  wait_for_quiet
  SS[busy_before]=$BUSY_BEFORE SS[quiet_waited]=$QUIET_WAITED
  log "(10) warm-up: 1 s of wrk -c64 per variant"
  for target in "${SS_VARIANTS[@]}"; do run_wrk ss-warmup "$target" 2 64 1; done
  local stat_before
  stat_before=$(head -1 /proc/stat)
  for round in $(seq 1 "$SHARED_ROUNDS"); do
    order=("${SS_VARIANTS[@]}")
    if ((round % 2 == 0)); then # reversed every other round
      order=()
      for ((i = ${#SS_VARIANTS[@]} - 1; i >= 0; i--)); do order+=("${SS_VARIANTS[i]}"); done
    fi
    for target in "${order[@]}"; do
      log "(10) (2) round $round/$SHARED_ROUNDS: ${SS_LABEL[$target]}, wrk -t2 -c64 -d${SS_DURATION}s"
      ss_run "ss-c64-r$round" "$target"
    done
  done
  SS[busy_during]=$(busy_since "$stat_before")
  local key
  for target in "${SS_VARIANTS[@]}"; do
    medians ss-c64 "$target" "$SHARED_ROUNDS"
    for key in publish_per_req set_per_req commands_per_req redis_cpu_us_per_req; do
      W[ss-c64,$target,$key]=$(for round in $(seq 1 "$SHARED_ROUNDS"); do
        kv "$RAW/redis-ss-c64-r$round-$target.txt" "$key"
      done | median)
    done
  done
  SS[busy_after]=$(cpu_busy_pct 1)
  SS[shared_status]=$(curl -s --max-time 2 "http://127.0.0.1:$p_shared/status" | grep -o '"shared_state":{[^}]*}')
  ensure_alive
}

print_shared_c64() {
  local t r rounds
  local fmt='%-20s %7s %7s %7s %10s %7s %11s %8s %8s %12s %10s   %s\n'
  echo "(2) wrk -t2 -c64 -d${SS_DURATION}s POST $CHAT, $SHARED_ROUNDS rounds interleaved (order reversed every other round), medians; keyrelay ${SS[rev]} (${SS[bin]}), 4 keys, WORKERS=${KR_WORKERS:-default}; Redis ${SS[redis_version]} on 127.0.0.1:$SS_REDIS_PORT"
  # shellcheck disable=SC2059
  printf "$fmt" "variant" "rps" "p50 ms" "p99 ms" "CPU us/req" "ctx/req" "PUBLISH/req" "SET/req" "cmds/req" "redis us/req" "non2xx/err" "rps per round (others' CPU %)"
  for t in "${SS_VARIANTS[@]}"; do
    rounds=$(for r in $(seq 1 "$SHARED_ROUNDS"); do
      printf '%.0f (%s) ' "$(kv "$RAW/wrk-ss-c64-r$r-$t.txt" rps)" "$(kv "$RAW/others-ss-c64-r$r-$t.txt" others_pct)"
    done)
    # shellcheck disable=SC2059
    printf "$fmt" "${SS_LABEL[$t]}" "${W[ss-c64,$t,rps]%.*}" "$(fmt_ms "${W[ss-c64,$t,p50_us]}")" \
      "$(fmt_ms "${W[ss-c64,$t,p99_us]}")" "${W[ss-c64,$t,cpu_us_per_req]}" "${W[ss-c64,$t,switches_per_req]}" \
      "${W[ss-c64,$t,publish_per_req]}" "${W[ss-c64,$t,set_per_req]}" "${W[ss-c64,$t,commands_per_req]}" \
      "${W[ss-c64,$t,redis_cpu_us_per_req]}" "${W[ss-c64,$t,non2xx]}/${W[ss-c64,$t,sockerr]}" "${rounds% }"
  done
  local on=${W[ss-c64,ss-shared,rps]} off=${W[ss-c64,ss-local,rps]}
  echo "rps shared / local: $(ratio "$on" "$off")   $(verdict "$on >= 0.95 * $off") >= 0.95x;  CPU us/req shared - local: $(awk -v a="${W[ss-c64,ss-shared,cpu_us_per_req]}" -v b="${W[ss-c64,ss-local,cpu_us_per_req]}" 'BEGIN { printf "%+.1f", a - b }') (keyrelay), +${W[ss-c64,ss-shared,redis_cpu_us_per_req]} (redis-server, same 2 CPUs)"
  for t in "${SS_VARIANTS[@]}"; do
    echo "keyrelay CPU us/req by thread, ${SS_LABEL[$t]}, per round: $(for r in $(seq 1 "$SHARED_ROUNDS"); do
      printf '[%s] ' "$(cat "$RAW/threads-ss-c64-r$r-$t.txt")"
    done)"
  done
  echo "Per round, Redis (shared): $(for r in $(seq 1 "$SHARED_ROUNDS"); do kv "$RAW/redis-ss-c64-r$r-ss-shared.txt" publish | tr '\n' ' '; done)PUBLISH, $(for r in $(seq 1 "$SHARED_ROUNDS"); do kv "$RAW/redis-ss-c64-r$r-ss-shared.txt" requests | tr '\n' ' '; done)requests; while the local one ran: $(for r in $(seq 1 "$SHARED_ROUNDS"); do kv "$RAW/redis-ss-c64-r$r-ss-local.txt" commands | tr '\n' ' '; done)commands (the shared one's idle PINGs)."
  echo "CPU us/req = (utime + stime) of the keyrelay process over the wrk run / requests; redis us/req the same for redis-server (${CLK_TCK} ticks/s); PUBLISH, SET and commands from INFO commandstats / stats before and after each run. After the runs: ${SS[shared_status]}"
}

print_shared_section() {
  echo "(10) shared state (issue 20), keyrelay ${SS[rev]} (${SS[bin]})"
  echo "machine: CPUs busy with other work ${SS[busy_before]}% before (2) (after waiting ${SS[quiet_waited]}s for quiet; ${SS_WAITED}s waited in all for other busy cargo/rustc/wrk or bench helpers), ${SS[busy_after]}% after; all CPUs ${SS[busy_during]}% busy over (2)'s rounds (wrk, nginx, keyrelay and redis included); share of the CPUs other work took: (1) ${SS[others_part1]}% (try ${SS[tries_part1]}), (2) per run below, (3) ${SS[others_part3]}% (try ${SS[tries_part3]}); wrk runs run again because others took > ${SHARED_OTHERS_MAX}%: $(cat "$RAW"/others-ss-c64-r*.txt | awk -F'tries=' '{ s += $2 - 1 } END { print s + 0 }'), still disturbed after 3 tries: ${SS[disturbed]:-0}; measurements started with other work running: ${SS[others_during]:-0}"
  echo
  cat "$RAW/shared-part1.txt"
  print_shared_c64
  echo
  cat "$RAW/shared-part3.txt"
}

# shared_section: (10) in bench.sh, and the whole of the standalone run.
shared_section() {
  ss_install
  SS_UP_PID=$(cat "$TMP/nginx-upstream/nginx.pid")
  ss_start_redis
  log "(10) (1) bench-to-honour latency, $SHARED_HONOUR_ROUNDS rounds: scripts/bench/shared_state.py --parts 1"
  ss_python 1 "$RAW/shared-part1.txt"
  shared_c64
  log "(10) (3) the cost of a 429 across instances: scripts/bench/shared_state.py --parts 3"
  ss_python 3 "$RAW/shared-part3.txt"
}

# ---------------------------------------------------------------------------------------------
# Standalone

# Run when executed, not when sourced (bench.sh sources it; bash -c 'source ...' has one
# BASH_SOURCE element too, but there $0 is bash).
if [[ ${BASH_SOURCE[0]} == "$0" && ${#BASH_SOURCE[@]} == 1 ]]; then
  set -euo pipefail
  # shellcheck source=scripts/bench.sh
  source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/bench.sh"
  OUT=$ROOT/target/bench/shared RAW=$OUT/raw
  BULK_MIB=1 # bench.sh's stand-in also serves a download; not used here
  mkdir -p "$OUT" "$RAW"
  rm -f "$RAW"/*
  if ! command -v wrk >/dev/null || ! { command -v nginx || [[ -x /usr/sbin/nginx ]]; } >/dev/null; then
    log "installing wrk and nginx-light"
    sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    bounded 300 "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y wrk nginx-light ||
      { bounded 300 "${sudo[@]}" apt-get update && bounded 300 "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y wrk nginx-light; }
  fi
  ulimit -n 65536 2>/dev/null || true
  for p in "$P_UP" $(ss_ports); do port_free "$p" || die "port $p is in use (set BENCH_PORT_BASE)"; done
  KR_BIN=$ROOT/target/release/keyrelay
  if [[ -z $SHARED_REV ]]; then
    log "building keyrelay (release) from the working tree"
    (cd "$ROOT" && bounded 900 cargo build --release --quiet) || die "build failed"
  fi
  shared_build
  write_wrk_script "$TMP/post.lua" "$BODY" "Authorization: Bearer sk-client-placeholder"
  write_upstream_conf
  start_nginx "$TMP/nginx-upstream" "$P_UP"
  shared_section
  print_shared_section | tee "$OUT/last.txt"
  echo "total time $(elapsed_s) s" | tee -a "$OUT/last.txt"
fi
