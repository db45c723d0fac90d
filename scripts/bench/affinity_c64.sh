#!/usr/bin/env bash
# shellcheck disable=SC2034,SC2154 # bench.sh declares and reads these
# scripts/bench/affinity_c64.sh: issue 19's wrk -c64 row. Does affinity cost rps, and how much
# CPU per request do the id and session look-ups add? In one run, interleaved, wrk -t2 -c64
# against bench.sh's fast stand-in upstream (nginx, fixed answer) through:
#   before      keyrelay at AFFINITY_BEFORE_REV (default 40929c8, main before affinity), built in
#               its own git worktree (AFFINITY_BEFORE_DIR, default /tmp/kr-before) and target dir
#   on          today's keyrelay (target/release/keyrelay, built from the working tree; or, with
#               AFFINITY_NOW_REV=<commit>, that commit built in a worktree of its own,
#               AFFINITY_NOW_DIR, default /tmp/kr-now-<commit>), SESSION_AFFINITY=on
#   off         today's keyrelay, SESSION_AFFINITY=off
# with bench.sh's ~400-byte chat request (a first turn: the session is recorded, nothing looked
# up), and then before and on again with a later turn (the same request with an assistant answer
# and a second question, ~600 bytes: the session is looked up and the turn pinned), as
# before-t2 and on-t2. With AFFINITY_FRESH=1 (the default) every variant runs in a fresh process
# each round, warmed up for 1 s: one process's luck (where its threads and memory land) moved
# its CPU per request by ~1.5 us between processes of one binary, and is so sampled once a round,
# not once a run (AFFINITY_FRESH=0: each process keeps its pid for the whole run).
# AFFINITY_ROUNDS rounds (default 3), the order reversed every other round (before, on, off, ..., then ..., off, on,
# before), so a drift of the machine does not favour one variant. Per variant: the median rps,
# p50, p99, CPU us per request (utime + stime of /proc/<pid>/stat over the run / requests) and
# context switches per request, and each round's rps; then on/before and off/before rps (target:
# on >= 0.95x before) and the CPU us per request each change adds. Before every wrk run it waits
# (at most AFFINITY_CARGO_WAIT s over the run, default 900) while a cargo, rustc or wrk runs;
# a run during which other work took more than AFFINITY_OTHERS_MAX % (default 3) of the CPUs
# (/proc/stat's busy time less that of keyrelay, the stand-in, wrk and the script) is run again,
# at most twice; the table shows that share for every run.
#
# Standalone:  scripts/bench/affinity_c64.sh   (about 3 minutes, plus the two release builds the
#              first time; table in target/bench/affinity/last.txt, raw files beside it; one run
#              at a time, a second waits for the first's lock, target/bench/affinity/.lock)
#              AFFINITY_NOW_REV=HEAD scripts/bench/affinity_c64.sh   (now = the last commit, not
#              the working tree)
# In the full bench: BENCH_AFFINITY=1 scripts/bench.sh, section (9), which also runs
# scripts/bench/prompt_cache.py.
# Knobs: AFFINITY_ROUNDS (3), AFFINITY_FRESH (1), AFFINITY_DURATION (10 s per wrk run; bench.sh's DURATION in the
# full bench), AFFINITY_LATER (1; 0 leaves out the later-turn variants), AFFINITY_BEFORE_REV,
# AFFINITY_BEFORE_DIR, AFFINITY_NOW_REV, AFFINITY_NOW_DIR, AFFINITY_CARGO_WAIT, and bench.sh's
# BENCH_PORT_BASE, BENCH_WORKERS, BENCH_QUIET_WAIT. Ports: BENCH_PORT_BASE+1 (the stand-in),
# +14..+16.
#
# When run, this file sources scripts/bench.sh for its pieces (the stand-in's nginx config, the
# wrk script and its RESULT line, start_keyrelay, run_wrk, medians, the quiet check, the clean-up);
# bench.sh runs its own main only when it is executed itself.

AFFINITY_BEFORE_REV=${AFFINITY_BEFORE_REV:-40929c8}
AFFINITY_BEFORE_DIR=${AFFINITY_BEFORE_DIR:-/tmp/kr-before}
AFFINITY_NOW_REV=${AFFINITY_NOW_REV:-}
AFFINITY_ROUNDS=${AFFINITY_ROUNDS:-3}
AFFINITY_LATER=${AFFINITY_LATER:-1}
AFFINITY_FRESH=${AFFINITY_FRESH:-1}
AFFINITY_CARGO_WAIT=${AFFINITY_CARGO_WAIT:-900}
AFFINITY_OTHERS_MAX=${AFFINITY_OTHERS_MAX:-3}
AFF_DURATION=${AFFINITY_DURATION:-${DURATION:-10}}
AFF_VARIANTS=(aff-before aff-on aff-off)
[[ $AFFINITY_LATER == 0 ]] || AFF_VARIANTS+=(aff-before-t2 aff-on-t2)
declare -A AFF_LABEL=([aff-before]="before (${AFFINITY_BEFORE_REV})" [aff-on]="now, SESSION_AFFINITY=on"
  [aff-off]="now, SESSION_AFFINITY=off" [aff-before-t2]="before, later turn"
  [aff-on-t2]="now on, later turn")
declare -A AFF=() # figures for the table

# A later turn of bench.sh's conversation: its request, the stand-in's answer, a second question.
AFF_BODY_T2='{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a concise assistant. Answer in one short paragraph, plain text, no lists."},{"role":"user","content":"Summarise the trade-offs between thread-per-connection servers and event loops for an HTTP proxy that relays streaming LLM responses to many slow clients."},{"role":"assistant","content":"Threads are simple and isolate slow clients; event loops hold more connections per byte of memory."},{"role":"user","content":"And which one needs fewer wake-ups per request?"}],"temperature":0.2,"max_tokens":256,"stream":false,"user":"bench-client-0042"}'

aff_ports() { echo $((BASE + 14)) $((BASE + 15)) $((BASE + 16)); }

# aff_worktree_build REV DIR: keyrelay at REV, built (release) in a git worktree DIR of its own
# with its own target dir; created when missing, built when missing or stale (cargo decides).
# Sets AFF_BUILT to the binary.
aff_worktree_build() {
  local rev=$1 dir=$2 want have
  want=$(git -C "$ROOT" rev-parse --verify "$rev^{commit}") || die "no commit $rev in $ROOT"
  if [[ ! -e $dir ]]; then
    log "(9) git worktree add --detach $dir $rev"
    git -C "$ROOT" worktree add --detach "$dir" "$want" >"$RAW/affinity-worktree.log" 2>&1 ||
      die "git worktree add failed: $(tail -3 "$RAW/affinity-worktree.log")"
  fi
  have=$(git -C "$dir" rev-parse HEAD 2>/dev/null) || die "$dir is not a git worktree"
  [[ $have == "$want" ]] || die "$dir is at ${have:0:9}, not $rev"
  git -C "$dir" diff --quiet HEAD -- src Cargo.toml Cargo.lock || die "$dir has local changes to src/"
  log "(9) building keyrelay $rev (release) in $dir"
  (cd "$dir" && export CARGO_TARGET_DIR=$dir/target && bounded 1200 cargo build --release --quiet) \
    >"$RAW/affinity-build.log" 2>&1 || die "build of $rev failed: $(tail -5 "$RAW/affinity-build.log")"
  AFF_BUILT=$dir/target/release/keyrelay
}

# affinity_build: the before binary (AFF_BEFORE_BIN) and, when AFFINITY_NOW_REV is set, the now
# binary (AFF_NOW_BIN; else KR_BIN, the working tree's).
affinity_build() {
  aff_worktree_build "$AFFINITY_BEFORE_REV" "$AFFINITY_BEFORE_DIR"
  AFF_BEFORE_BIN=$AFF_BUILT
  AFF_NOW_BIN=$KR_BIN
  AFF[now_rev]=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo '+dirty')
  AFF[now_bin]=target/release/keyrelay
  if [[ -n $AFFINITY_NOW_REV ]]; then
    local short
    short=$(git -C "$ROOT" rev-parse --short "$AFFINITY_NOW_REV^{commit}") || die "no commit $AFFINITY_NOW_REV"
    aff_worktree_build "$AFFINITY_NOW_REV" "${AFFINITY_NOW_DIR:-/tmp/kr-now-$short}"
    AFF_NOW_BIN=$AFF_BUILT
    AFF[now_rev]=$short AFF[now_bin]=$AFF_BUILT
  fi
}

# aff_wait_for_cargo: while someone's cargo, rustc or wrk runs (a build, a test or another
# benchmark would share the two CPUs with the measurement; none of ours runs when this is called),
# wait, at most AFFINITY_CARGO_WAIT s over the whole run.
AFF_CARGO_WAITED=0
aff_wait_for_cargo() {
  local said=0
  while pgrep -x 'cargo|rustc|wrk' >/dev/null && ((AFF_CARGO_WAITED < AFFINITY_CARGO_WAIT)); do
    ((said)) || log "(9) a cargo, rustc or wrk process is running: waiting for it to end ($(pgrep -a -x 'cargo|rustc|wrk' | head -1 | cut -c1-100))"
    said=1
    sleep 5
    AFF_CARGO_WAITED=$((AFF_CARGO_WAITED + 5))
  done
  if pgrep -x 'cargo|rustc|wrk' >/dev/null; then AFF[cargo_during]=$((${AFF[cargo_during]:-0} + 1)); fi
}

# aff_own_ticks TARGET: CPU ticks so far of what a run is made of: the variant's keyrelay, the
# stand-in's nginx (master and workers), this shell and its waited-for children (wrk, once it
# has exited; the helpers' cat and awk).
aff_own_ticks() {
  local kr ngx f
  read -r kr _ <<<"$(proc_usage "${PROXY_PID[$1]}")"
  read -r ngx _ <<<"$(proc_usage "$AFF_UP_PID")"
  read -r -a f <<<"$(sed 's/.*) //' "/proc/$$/stat")"
  echo $((kr + ngx + f[11] + f[12] + f[13] + f[14]))
}

# aff_run TAG TARGET: one wrk run, run again (at most twice) when other work took more than
# AFFINITY_OTHERS_MAX % of the CPUs meanwhile: the machine's busy time (/proc/stat) less that of
# keyrelay, the stand-in, wrk and this script; before running it again, it waits (at most 2 min)
# for the CPUs to be under 10 % busy. Writes that share to $RAW/others-TAG-TARGET.txt.
aff_run() {
  local tag=$1 target=$2 try stat0 own0 own1 others
  for try in 1 2 3; do
    aff_wait_for_cargo
    if ((try > 1)); then # and, for a run again, up to 2 minutes for the CPUs to calm down
      local waited=0
      while (($(cpu_busy_pct 2) > 10 && waited < 120)); do waited=$((waited + 2)); done
    fi
    stat0=$(head -1 /proc/stat)
    own0=$(aff_own_ticks "$target")
    run_wrk "$tag" "$target" 2 64 "$AFF_DURATION"
    own1=$(aff_own_ticks "$target")
    others=$(awk -v a="$stat0" -v b="$(head -1 /proc/stat)" -v own=$((own1 - own0)) 'BEGIN {
      split(a, x); split(b, y)
      for (i = 2; i <= 9; i++) total += y[i] - x[i]
      busy = total - (y[5] - x[5]) - (y[6] - x[6])
      o = total ? 100 * (busy - own) / total : 0
      printf "%.1f", o < 0 ? 0 : o }')
    echo "RESULT others_pct=$others tries=$try" >"$RAW/others-$tag-$target.txt"
    awk -v o="$others" -v m="$AFFINITY_OTHERS_MAX" 'BEGIN { exit !(o <= m) }' && return 0
    ((try == 3)) || log "(9) other work took $others% of the CPUs during that run: running it again"
  done
  AFF[disturbed]=$((${AFF[disturbed]:-0} + 1))
}

# aff_start: the three keyrelays (before, on, off), listening on aff_ports.
aff_start() {
  local p_before p_on p_off
  read -r p_before p_on p_off <<<"$(aff_ports)"
  KR_START_BIN=$AFF_BEFORE_BIN start_keyrelay aff-before "$p_before" "$P_UP" "$KR_WORKERS"
  PROXY_PID[aff-before]=$KR_PID PROXY_PID[aff-before-t2]=$KR_PID
  KR_START_BIN=$AFF_NOW_BIN start_keyrelay aff-on "$p_on" "$P_UP" "$KR_WORKERS" "" SESSION_AFFINITY=on
  PROXY_PID[aff-on]=$KR_PID PROXY_PID[aff-on-t2]=$KR_PID
  KR_START_BIN=$AFF_NOW_BIN start_keyrelay aff-off "$p_off" "$P_UP" "$KR_WORKERS" "" SESSION_AFFINITY=off
  PROXY_PID[aff-off]=$KR_PID
}

# aff_stop: stops the three keyrelays (SIGTERM, then waits for them) and stops watching them.
aff_stop() {
  local target
  for target in aff-before aff-on aff-off; do
    kr_unwatch "${PROXY_PID[$target]}"
    stop_tree "${PROXY_PID[$target]}"
  done
}

# affinity_c64: starts the three keyrelays against P_UP, then the interleaved wrk rounds (with
# AFFINITY_FRESH=1, the default, three fresh processes each round).
# Needs: the stand-in on P_UP, $TMP/post.lua, KR_BIN, AFF_BEFORE_BIN.
affinity_c64() {
  local p_before p_on p_off
  read -r p_before p_on p_off <<<"$(aff_ports)"
  write_wrk_script "$TMP/post-t2.lua" "$AFF_BODY_T2" "Authorization: Bearer sk-client-placeholder"
  aff_start
  URL[aff-before]="http://127.0.0.1:$p_before$CHAT" URL[aff-before-t2]=${URL[aff-before]}
  URL[aff-on]="http://127.0.0.1:$p_on$CHAT" URL[aff-on-t2]=${URL[aff-on]}
  URL[aff-off]="http://127.0.0.1:$p_off$CHAT"
  WRK_SCRIPT[aff-before-t2]=$TMP/post-t2.lua WRK_SCRIPT[aff-on-t2]=$TMP/post-t2.lua
  local target round i order=()
  AFF_UP_PID=$(cat "$TMP/nginx-upstream/nginx.pid")
  for target in aff-before aff-on aff-off; do smoke "${URL[$target]}"; done
  [[ $AFFINITY_LATER == 0 ]] || for target in aff-before aff-on; do
    smoke_check "${URL[$target]}" "$AFF_BODY_T2" || die "$SMOKE_ERR"
  done
  sleep 0.5
  aff_wait_for_cargo
  wait_for_quiet
  AFF[busy_before]=$BUSY_BEFORE AFF[quiet_waited]=$QUIET_WAITED
  log "(9) warm-up: 1 s of wrk -c64 per variant"
  for target in "${AFF_VARIANTS[@]}"; do run_wrk aff-warmup "$target" 2 64 1; done
  local stat_before
  stat_before=$(head -1 /proc/stat)
  for round in $(seq 1 "$AFFINITY_ROUNDS"); do
    order=("${AFF_VARIANTS[@]}")
    if ((round % 2 == 0)); then # reversed every other round
      order=()
      for ((i = ${#AFF_VARIANTS[@]} - 1; i >= 0; i--)); do order+=("${AFF_VARIANTS[i]}"); done
    fi
    if ((round > 1)) && [[ $AFFINITY_FRESH == 1 ]]; then
      # A process's own luck (where its threads and memory land) moved its CPU per request by
      # ~1.5 us between runs: each round samples it afresh.
      log "(9) round $round/$AFFINITY_ROUNDS: fresh processes, 1 s of wrk -c64 each to warm up"
      aff_stop
      aff_start
      for target in "${AFF_VARIANTS[@]}"; do run_wrk aff-warmup "$target" 2 64 1; done
    fi
    for target in "${order[@]}"; do
      log "(9) round $round/$AFFINITY_ROUNDS: ${AFF_LABEL[$target]}, wrk -t2 -c64 -d${AFF_DURATION}s"
      aff_run "aff-c64-r$round" "$target"
    done
  done
  AFF[busy_during]=$(busy_since "$stat_before")
  for target in "${AFF_VARIANTS[@]}"; do medians aff-c64 "$target" "$AFFINITY_ROUNDS"; done
  AFF[busy_after]=$(cpu_busy_pct 1)
  ensure_alive
}

# print_affinity_c64: the table.
print_affinity_c64() {
  local t r rounds
  local fmt='%-30s %9s %8s %8s %10s %8s %12s   %s\n'
  echo "(9) affinity: wrk -t2 -c64 -d${AFF_DURATION}s POST $CHAT, $AFFINITY_ROUNDS round(s) interleaved (order reversed every other round), medians; 4 keys, WORKERS=${KR_WORKERS:-default}"
  echo "before = $AFFINITY_BEFORE_REV ($AFFINITY_BEFORE_DIR/target/release/keyrelay); now = ${AFF[now_rev]} (${AFF[now_bin]}); first turn = bench.sh's ~400-byte request, later turn = the same with an answer and a second question (~600 bytes)"
  echo "machine: CPUs busy with other work ${AFF[busy_before]}% before (after waiting ${AFF[quiet_waited]}s), ${AFF[busy_after]}% after; all CPUs ${AFF[busy_during]}% busy over the rounds (wrk, nginx and keyrelay included); runs that started with a cargo/rustc/wrk running: ${AFF[cargo_during]:-0} (waited ${AFF_CARGO_WAITED}s for them); runs run again because others took > ${AFFINITY_OTHERS_MAX}% of the CPUs: $(cat "$RAW"/others-aff-c64-r*.txt | awk -F'tries=' '{ s += $2 - 1 } END { print s + 0 }'), still disturbed after 3 tries: ${AFF[disturbed]:-0}"
  echo
  # shellcheck disable=SC2059
  printf "$fmt" "variant" "rps" "p50 ms" "p99 ms" "CPU us/req" "ctx/req" "non2xx/err" "rps per round (others' CPU %)"
  for t in "${AFF_VARIANTS[@]}"; do
    rounds=$(for r in $(seq 1 "$AFFINITY_ROUNDS"); do
      printf '%.0f (%s) ' "$(kv "$RAW/wrk-aff-c64-r$r-$t.txt" rps)" "$(kv "$RAW/others-aff-c64-r$r-$t.txt" others_pct)"
    done)
    # shellcheck disable=SC2059
    printf "$fmt" "${AFF_LABEL[$t]}" "${W[aff-c64,$t,rps]%.*}" "$(fmt_ms "${W[aff-c64,$t,p50_us]}")" \
      "$(fmt_ms "${W[aff-c64,$t,p99_us]}")" "${W[aff-c64,$t,cpu_us_per_req]}" "${W[aff-c64,$t,switches_per_req]}" \
      "${W[aff-c64,$t,non2xx]}/${W[aff-c64,$t,sockerr]}" "${rounds% }"
  done
  echo
  local on=${W[aff-c64,aff-on,rps]} off=${W[aff-c64,aff-off,rps]} before=${W[aff-c64,aff-before,rps]}
  local cpu_b=${W[aff-c64,aff-before,cpu_us_per_req]} cpu_on=${W[aff-c64,aff-on,cpu_us_per_req]}
  local cpu_off=${W[aff-c64,aff-off,cpu_us_per_req]}
  echo "rps now on / before:  $(ratio "$on" "$before")   $(verdict "$on >= 0.95 * $before") >= 0.95x"
  echo "rps now off / before: $(ratio "$off" "$before");  now on / now off: $(ratio "$on" "$off")"
  echo "CPU us/req added, first turn: on - before $(aff_delta "$cpu_on" "$cpu_b"), off - before $(aff_delta "$cpu_off" "$cpu_b") (id look-ups, answer watch), on - off $(aff_delta "$cpu_on" "$cpu_off") (fingerprint, session recorded)"
  if [[ $AFFINITY_LATER != 0 ]]; then
    local on2=${W[aff-c64,aff-on-t2,rps]} b2=${W[aff-c64,aff-before-t2,rps]}
    echo "later turn: rps on / before $(ratio "$on2" "$b2")   $(verdict "$on2 >= 0.95 * $b2") >= 0.95x; CPU us/req on - before $(aff_delta "${W[aff-c64,aff-on-t2,cpu_us_per_req]}" "${W[aff-c64,aff-before-t2,cpu_us_per_req]}") (session looked up and pinned as well)"
  fi
  echo "CPU us/req = (utime + stime) of the keyrelay process over the wrk run / requests (${CLK_TCK} ticks/s); medians of $AFFINITY_ROUNDS; $([[ $AFFINITY_FRESH == 1 ]] && echo "fresh processes every round" || echo "one process per variant for all rounds") (the later-turn variants share theirs)."
}
aff_delta() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.1f us", a - b }'; }

# affinity_section: (9) in bench.sh: the prompt-cache workload, then the wrk rows.
affinity_section() {
  log "(9) prompt-cache workload: scripts/bench/prompt_cache.py, SESSION_AFFINITY on and off"
  aff_wait_for_cargo
  local status=0
  bounded 600 python3 "$ROOT/scripts/bench/prompt_cache.py" --bin "$AFF_NOW_BIN" --label "${AFF[now_rev]}" --keep-logs "$RAW" \
    --json "$RAW/prompt-cache.json" >"$RAW/prompt-cache.txt" 2>&1 || status=$?
  ((status == 0)) || log "(9) prompt_cache.py exited with status $status: $(tail -3 "$RAW/prompt-cache.txt")"
  affinity_c64
}

print_affinity_section() {
  echo
  cat "$RAW/prompt-cache.txt"
  echo
  print_affinity_c64
}

# ---------------------------------------------------------------------------------------------
# Standalone

# Executed, not sourced: neither by bench.sh (BASH_SOURCE longer) nor by bash -c ($0 is bash).
if [[ ${BASH_SOURCE[0]} == "$0" && ${#BASH_SOURCE[@]} == 1 ]]; then
  set -euo pipefail
  # shellcheck source=scripts/bench.sh
  source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/bench.sh"
  OUT=$ROOT/target/bench/affinity RAW=$OUT/raw
  BULK_MIB=1 # bench.sh's stand-in also serves a download; not used here
  mkdir -p "$OUT" "$RAW"
  # One run at a time: a second one would empty RAW under the first (and share its CPUs).
  exec {AFF_LOCK}>"$OUT/.lock"
  if ! flock -n "$AFF_LOCK"; then
    log "another scripts/bench/affinity_c64.sh is running (lock $OUT/.lock): waiting for it to end"
    flock -w 3600 "$AFF_LOCK" || die "still locked after an hour: $OUT/.lock"
  fi
  rm -f "$RAW"/*
  if ! command -v wrk >/dev/null || ! { command -v nginx || [[ -x /usr/sbin/nginx ]]; } >/dev/null; then
    log "installing wrk and nginx-light"
    sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    bounded 300 "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y wrk nginx-light ||
      { bounded 300 "${sudo[@]}" apt-get update && bounded 300 "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y wrk nginx-light; }
  fi
  ulimit -n 65536 2>/dev/null || true
  for p in "$P_UP" $(aff_ports); do port_free "$p" || die "port $p is in use (set BENCH_PORT_BASE)"; done
  KR_BIN=$ROOT/target/release/keyrelay
  if [[ -z $AFFINITY_NOW_REV ]]; then
    log "building keyrelay (release) from the working tree"
    (cd "$ROOT" && bounded 900 cargo build --release --quiet) || die "build failed"
  fi
  affinity_build
  write_wrk_script "$TMP/post.lua" "$BODY" "Authorization: Bearer sk-client-placeholder"
  write_upstream_conf
  start_nginx "$TMP/nginx-upstream" "$P_UP"
  affinity_c64
  print_affinity_c64 | tee "$OUT/last.txt"
  echo "total time $(elapsed_s) s" | tee -a "$OUT/last.txt"
fi
