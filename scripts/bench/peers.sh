# shellcheck shell=bash disable=SC2034,SC2154,SC2004 # a fragment: bench.sh declares and reads these
# scripts/bench/peers.sh: sourced by scripts/bench.sh (uses its log, bounded, spawned, smoke_check,
# run_wrk, proc_tree, ...). The proxies a user would pick instead of keyrelay, installed from the
# package registries into target/bench/peers/ when missing, pinned exactly, and measured in (1)
# against the same stand-in upstream with the same 4 keys:
#   LiteLLM proxy   PyPI litellm[proxy]==$LITELLM_VERSION in a venv: target/bench/peers/litellm/
#   Portkey gateway npm @portkey-ai/gateway@$PORTKEY_VERSION, @hono/node-server pinned to
#                   $HONO_NODE_SERVER_VERSION (newer ones break its streaming): target/bench/peers/portkey/
# PEER_STATE[peer] is "ok" or what went wrong ("not installed: ...", "failed: ...", "skipped ...");
# a peer that is not ok is shown so in the table, and the rest of the bench runs on.

LITELLM_VERSION=1.108.7
PORTKEY_VERSION=1.15.2
HONO_NODE_SERVER_VERSION=1.13.5
PEER_DIR=$OUT/peers
PEER_LIST=(litellm portkey)
declare -A PEER_LABEL=([litellm]=LiteLLM [portkey]=Portkey)
declare -A PEER_STATE=()
declare -A PEER_INSTALL_S=() # peer -> seconds its install took in this run (0: already there)
declare -A PEER_READY_S=()   # peer -> seconds from spawn to a good answer
declare -A PEER_BODY=()      # peer -> the chat request body wrk and the smoke check send
declare -A PEER_HEADERS=()   # peer -> extra request headers, one "Name: value" a line
declare -A PEER_ROUTE=()     # peer -> what the table says about its route
LITELLM_MODEL=bench-model
PEER_WARMUP_SECS=$((DURATION > 5 ? DURATION : 5))

# peer_fail PEER STATE: records why PEER is out of the comparison.
peer_fail() {
  PEER_STATE[$1]=$2
  log "peer ${PEER_LABEL[$1]}: $2"
}

# last_line FILE: for a reason, the last line of FILE that names an error (node ends its report
# with its version, npm with where its log is), else the last non-empty one; at most 160 characters.
last_line() {
  local line
  line=$(grep -E 'Error:|ERROR:|refused to start' "$1" 2>/dev/null | tail -1) || true
  [[ -n $line ]] || line=$(grep -iE 'error|refused|exception|not found|no such' "$1" 2>/dev/null | tail -1) || true
  [[ -n $line ]] || line=$(grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -1) || true
  echo "${line:0:160}"
}

# ---------------------------------------------------------------------------------------------
# Installation

install_peers() {
  local peer
  if [[ $PEERS == 0 ]]; then
    for peer in "${PEER_LIST[@]}"; do PEER_STATE[$peer]="skipped (BENCH_PEERS=0)"; done
    return 0
  fi
  mkdir -p "$PEER_DIR"
  for peer in "${PEER_LIST[@]}"; do
    local started=$SECONDS
    PEER_STATE[$peer]=ok
    "install_$peer" || true
    PEER_INSTALL_S[$peer]=$((SECONDS - started))
  done
}

litellm_installed_version() {
  "$PEER_DIR/litellm/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))' 2>/dev/null
}

install_litellm() {
  local venv=$PEER_DIR/litellm have
  have=$(litellm_installed_version) || true
  [[ $have == "$LITELLM_VERSION" && -x $venv/bin/litellm ]] && return 0
  command -v python3 >/dev/null || { peer_fail litellm "not installed: python3 not found"; return 1; }
  log "installing LiteLLM: pip install 'litellm[proxy]==$LITELLM_VERSION' into $venv (a few minutes)"
  if [[ ! -x $venv/bin/pip ]]; then
    rm -rf "$venv"
    python3 -m venv "$venv" >"$RAW/install-litellm.log" 2>&1 ||
      { peer_fail litellm "not installed: python3 -m venv failed: $(last_line "$RAW/install-litellm.log")"; return 1; }
  fi
  PIP_CACHE_DIR=$PEER_DIR/cache/pip bounded 1200 "$venv/bin/pip" install --disable-pip-version-check \
    --no-input -q "litellm[proxy]==$LITELLM_VERSION" >>"$RAW/install-litellm.log" 2>&1 ||
    { peer_fail litellm "not installed: pip install failed: $(last_line "$RAW/install-litellm.log")"; return 1; }
  have=$(litellm_installed_version) || true
  [[ $have == "$LITELLM_VERSION" && -x $venv/bin/litellm ]] ||
    { peer_fail litellm "not installed: pip left litellm ${have:-missing}, not $LITELLM_VERSION"; return 1; }
  # What else came with it, for the record (pip pins only litellm itself).
  "$venv/bin/pip" freeze --disable-pip-version-check >"$venv/freeze.txt" 2>/dev/null || true
}

# npm_version DIR PACKAGE: the installed version of PACKAGE under DIR/node_modules.
npm_version() {
  sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$1/node_modules/$2/package.json" 2>/dev/null | head -1
}

install_portkey() {
  local dir=$PEER_DIR/portkey
  mkdir -p "$dir"
  cat >"$dir/package.json.new" <<EOF
{
  "name": "keyrelay-bench-portkey",
  "private": true,
  "description": "Portkey gateway for scripts/bench.sh, pinned",
  "dependencies": {
    "@portkey-ai/gateway": "$PORTKEY_VERSION",
    "@hono/node-server": "$HONO_NODE_SERVER_VERSION"
  },
  "overrides": {
    "@hono/node-server": "$HONO_NODE_SERVER_VERSION"
  }
}
EOF
  if cmp -s "$dir/package.json.new" "$dir/package.json" &&
    [[ $(npm_version "$dir" @portkey-ai/gateway) == "$PORTKEY_VERSION" &&
      $(npm_version "$dir" @hono/node-server) == "$HONO_NODE_SERVER_VERSION" &&
      -f $dir/node_modules/@portkey-ai/gateway/build/start-server.js ]]; then
    rm -f "$dir/package.json.new"
    return 0
  fi
  mv "$dir/package.json.new" "$dir/package.json"
  command -v node >/dev/null || { peer_fail portkey "not installed: node not found"; return 1; }
  command -v npm >/dev/null || { peer_fail portkey "not installed: npm not found"; return 1; }
  log "installing Portkey: npm install @portkey-ai/gateway@$PORTKEY_VERSION @hono/node-server@$HONO_NODE_SERVER_VERSION into $dir"
  (cd "$dir" && npm_config_cache=$PEER_DIR/cache/npm bounded 900 npm install --no-audit --no-fund \
    --loglevel=error) >"$RAW/install-portkey.log" 2>&1 ||
    { peer_fail portkey "not installed: npm install failed: $(last_line "$RAW/install-portkey.log")"; return 1; }
  local gw hono
  gw=$(npm_version "$dir" @portkey-ai/gateway) hono=$(npm_version "$dir" @hono/node-server)
  [[ $gw == "$PORTKEY_VERSION" && $hono == "$HONO_NODE_SERVER_VERSION" ]] ||
    { peer_fail portkey "not installed: npm left gateway ${gw:-missing}, @hono/node-server ${hono:-missing}"; return 1; }
}

# ---------------------------------------------------------------------------------------------
# Configuration and start-up

# The peers' requests: the same ~400-byte chat body (LiteLLM's with its model name), and for
# Portkey its routing config in a header.
peer_requests() {
  PEER_BODY[litellm]=${BODY/\"model\":\"gpt-4o-mini\"/\"model\":\"$LITELLM_MODEL\"}
  PEER_HEADERS[litellm]=""
  PEER_ROUTE[litellm]="POST /v1/chat/completions, model $LITELLM_MODEL = 4 deployments (openai/gpt-4o-mini, api_base http://127.0.0.1:$P_UP/v1, one key each; simple-shuffle), no master key, no database, 1 worker"
  PEER_BODY[portkey]=$BODY
  local key targets="" sep=""
  for key in ${KR_KEYS//,/ }; do
    targets+="$sep{\"provider\":\"openai\",\"api_key\":\"$key\",\"custom_host\":\"http://127.0.0.1:$P_UP/v1\",\"weight\":1}"
    sep=,
  done
  PORTKEY_CONFIG="{\"strategy\":{\"mode\":\"loadbalance\"},\"targets\":[$targets]}"
  PEER_HEADERS[portkey]="x-portkey-config: $PORTKEY_CONFIG"
  PEER_ROUTE[portkey]="POST /v1/chat/completions, header x-portkey-config = {strategy: loadbalance, 4 targets: provider openai, api_key, custom_host http://127.0.0.1:$P_UP/v1 (+ /chat/completions), weight 1}"
}

write_litellm_conf() {
  local dir=$1 key
  {
    echo "model_list:"
    for key in ${KR_KEYS//,/ }; do
      cat <<EOF
  - model_name: $LITELLM_MODEL
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:$P_UP/v1
      api_key: $key
EOF
    done
    cat <<EOF
litellm_settings:
  set_verbose: false
  json_logs: false
general_settings:
  # No client authentication, like keyrelay in this bench (no PROXY_API_KEYS). Without this (or a
  # master_key) LiteLLM $LITELLM_VERSION refuses to start (litellm/proxy/auth/master_key_boot_check.py).
  dangerously_permit_weak_or_unset_master_key: true
EOF
  } >"$dir/config.yaml"
}

# wait_peer PEER PORT PID LOGFILE SECS: until PORT accepts and the smoke check passes (retried:
# a Python app may bind before it is quite ready). Non-zero, with PEER_STATE set, otherwise.
wait_peer() {
  local peer=$1 port=$2 pid=$3 logfile=$4 secs=$5 started=$SECONDS _
  while ! port_open "$port"; do
    kill -0 "$pid" 2>/dev/null || { peer_fail "$peer" "failed: exited at start: $(last_line "$logfile")"; return 1; }
    ((SECONDS - started < secs)) || { peer_fail "$peer" "failed: not listening on $port after ${secs}s: $(last_line "$logfile")"; return 1; }
    sleep 0.1
  done
  local headers=()
  mapfile -t headers <<<"${PEER_HEADERS[$peer]}"
  for _ in 1 2 3 4 5; do
    smoke_check "http://127.0.0.1:$port/v1/chat/completions" "${PEER_BODY[$peer]}" "${headers[@]}" && break
    sleep 1
  done
  [[ -z $SMOKE_ERR ]] || { peer_fail "$peer" "failed: smoke check: $SMOKE_ERR"; return 1; }
  PEER_READY_S[$peer]=$((SECONDS - started))
}

# start_litellm: sets PEER_PID; non-zero when it does not answer.
start_litellm() {
  local dir=$TMP/litellm venv=$PEER_DIR/litellm
  mkdir -p "$dir/home"
  write_litellm_conf "$dir"
  # LITELLM_LOCAL_MODEL_COST_MAP: use the bundled price map, not a download at start. Its
  # --telemetry flag is a no-op in this version; nothing else phones home without callbacks.
  (cd "$dir" && exec env -i PATH="$venv/bin:/usr/bin:/bin" HOME="$dir/home" LANG=C.UTF-8 \
    LITELLM_LOG=ERROR LITELLM_LOCAL_MODEL_COST_MAP=True PYTHONDONTWRITEBYTECODE=1 \
    "$venv/bin/litellm" --config "$dir/config.yaml" --host 127.0.0.1 --port "$P_LITELLM" \
    --num_workers 1) >"$dir/stdout.log" 2>"$dir/stderr.log" &
  PEER_PID=$!
  spawned "LiteLLM"
  wait_peer litellm "$P_LITELLM" "$PEER_PID" "$dir/stderr.log" 120
}

# start_portkey: sets PEER_PID. Its start script takes the port as --port=N and hands no host
# to @hono/node-server (every interface): scripts/bench/loopback.cjs makes that 127.0.0.1.
start_portkey() {
  local dir=$TMP/portkey gw=$PEER_DIR/portkey/node_modules/@portkey-ai/gateway/build/start-server.js
  mkdir -p "$dir"
  (cd "$dir" && exec env -i PATH=/usr/bin:/bin HOME="$dir" NODE_ENV=production BENCH_LISTEN_HOST=127.0.0.1 \
    node --require "$ROOT/scripts/bench/loopback.cjs" "$gw" --port="$P_PORTKEY" --headless) \
    >"$dir/stdout.log" 2>"$dir/stderr.log" &
  PEER_PID=$!
  spawned "Portkey"
  wait_peer portkey "$P_PORTKEY" "$PEER_PID" "$dir/stderr.log" 60
}

# stop_tree PID: SIGTERM to PID and its descendants, SIGKILL after 10 s; then forgets PID.
stop_tree() {
  local pid=$1 pids=() p _
  mapfile -t pids < <(proc_tree "$pid")
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  for p in "${pids[@]}"; do
    kill -0 "$p" 2>/dev/null && { log "${PNAME[$pid]} (pid $p) still running 10 s after SIGTERM: killing it"; kill -KILL "$p" 2>/dev/null; }
  done
  wait "$pid" 2>/dev/null || true
  local keep=()
  for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# ---------------------------------------------------------------------------------------------
# Measurement: (1) for each peer in turn, alone: start, smoke, a warm-up of PEER_WARMUP_SECS (the
# first seconds of LiteLLM run at 2/3 of its later rate), PEER_ROUNDS wrk runs
# (the same -t2 -c64 -d$DURATION as the others, with --timeout 30s so that its slow answers are
# in the latencies rather than counted as timeouts), peak RSS, stop.

measure_peers() {
  [[ $PEERS == 0 ]] && return 0
  peer_requests
  local peer
  for peer in "${PEER_LIST[@]}"; do
    [[ ${PEER_STATE[$peer]} == ok ]] || continue
    log "(1) peer ${PEER_LABEL[$peer]}: starting on 127.0.0.1"
    local started=$SECONDS
    PEER_PID=""
    "start_$peer" || { [[ -z ${PEER_PID:-} ]] || stop_tree "$PEER_PID"; continue; }
    log "(1) peer ${PEER_LABEL[$peer]}: answering after ${PEER_READY_S[$peer]}s"
    local pid=$PEER_PID
    PROXY_PID[$peer]=$pid
    URL[$peer]="http://127.0.0.1:$(peer_port "$peer")/v1/chat/completions"
    write_wrk_script "$TMP/post-$peer.lua" "${PEER_BODY[$peer]}" "${PEER_HEADERS[$peer]}"
    WRK_SCRIPT[$peer]=$TMP/post-$peer.lua
    WRK_EXTRA[$peer]="--timeout 30s"
    local ok=1 round
    run_wrk warmup "$peer" 2 64 "$PEER_WARMUP_SECS" || ok=0
    for round in $(seq 1 "$PEER_ROUNDS"); do
      ((ok)) || break
      log "(c64) peer round $round/$PEER_ROUNDS: ${PEER_LABEL[$peer]}, wrk -t2 -c64 -d${DURATION}s"
      run_wrk "c64-r$round" "$peer" 2 64 "$DURATION" || ok=0
    done
    if ((ok)); then
      W[c64,$peer,peak_rss_kib]=$(tree_kib "$pid" VmHWM)
      W[c64,$peer,procs]=$(proc_tree "$pid" | wc -l)
      W[c64,$peer,threads]=$(tree_kib "$pid" Threads)
      medians c64 "$peer" "$PEER_ROUNDS"
    fi
    stop_tree "$pid"
    log "(1) peer ${PEER_LABEL[$peer]}: done in $((SECONDS - started))s"
  done
}

peer_port() { case $1 in litellm) echo "$P_LITELLM" ;; portkey) echo "$P_PORTKEY" ;; esac; }

peer_version() {
  case $1 in
    litellm) echo "litellm[proxy] $LITELLM_VERSION (Python $("$PEER_DIR/litellm/bin/python" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo '?'))" ;;
    portkey) echo "@portkey-ai/gateway $PORTKEY_VERSION, @hono/node-server $HONO_NODE_SERVER_VERSION (node $(node --version 2>/dev/null || echo '?'))" ;;
  esac
}

# ---------------------------------------------------------------------------------------------
# The peers' part of the table

print_peers() {
  local peer cols=() kr_rps=${W[c64,keyrelay,rps]}
  echo
  echo "Peers, (1) only: the same wrk -t2 -c64 -d${DURATION}s POST against the same stand-in with 4 keys, each peer alone, $PEER_ROUNDS round(s) (median), after a ${PEER_WARMUP_SECS} s warm-up; wrk --timeout 30s for them."
  echo "CPU, ctx switches and peak RSS (sum of VmHWM) over the peer's whole process tree. keyrelay = the glibc column above."
  prow "metric" "keyrelay" "${PEER_LABEL[litellm]}" "${PEER_LABEL[portkey]}"
  for peer in "${PEER_LIST[@]}"; do
    case ${PEER_STATE[$peer]} in
      ok) cols+=(ok) ;; skipped*) cols+=(skipped) ;; "not installed"*) cols+=("not installed") ;; *) cols+=(failed) ;;
    esac
  done
  prow "status" "ok" "${cols[@]}"
  local key
  prow "(1) rps, 64 conns" "${kr_rps%.*}" "$(pcell litellm rps)" "$(pcell portkey rps)"
  for key in p50_us p99_us max_us; do
    prow "(1) ${key%_us} ms, 64 conns" "$(fmt_ms "${W[c64,keyrelay,$key]}")" "$(pcell litellm "$key")" "$(pcell portkey "$key")"
  done
  prow "(1) CPU us/req" "${W[c64,keyrelay,cpu_us_per_req]}" "$(pcell litellm cpu_us_per_req)" "$(pcell portkey cpu_us_per_req)"
  prow "(1) ctx switches/req" "${W[c64,keyrelay,switches_per_req]}" "$(pcell litellm switches_per_req)" "$(pcell portkey switches_per_req)"
  prow "(1) peak RSS MiB (VmHWM, tree)" "$(fmt_mib "${RSS_PEAK[keyrelay]}")" "$(pcell litellm peak_rss_kib)" "$(pcell portkey peak_rss_kib)"
  prow "(1) processes / threads at end" "1 / ${W[c64,keyrelay,threads]:--}" "$(pcell litellm procs) / $(pcell litellm threads)" \
    "$(pcell portkey procs) / $(pcell portkey threads)"
  prow "(1) non-2xx / socket errors" "${W[c64,keyrelay,non2xx]} / ${W[c64,keyrelay,sockerr]}" \
    "$(pcell litellm non2xx) / $(pcell litellm sockerr)" "$(pcell portkey non2xx) / $(pcell portkey sockerr)"
  for peer in "${PEER_LIST[@]}"; do
    echo "${PEER_LABEL[$peer]}: ${PEER_STATE[$peer]}; $(peer_version "$peer"), in $PEER_DIR/$peer (install this run: ${PEER_INSTALL_S[$peer]:-0}s; start to first answer: ${PEER_READY_S[$peer]:--}s)"
    echo "  route: ${PEER_ROUTE[$peer]:--}"
  done
  for peer in "${PEER_LIST[@]}"; do
    local label=${PEER_LABEL[$peer]}
    if [[ ${PEER_STATE[$peer]} != ok || -z ${W[c64,$peer,rps]:-} ]]; then
      echo "ratio keyrelay rps / $label rps: - ($label ${PEER_STATE[$peer]})"
      continue
    fi
    echo "ratio keyrelay rps / $label rps: $(ratio "$kr_rps" "${W[c64,$peer,rps]}")"
    echo "keyrelay p99 lower than ${label}'s: $(yes_no "${W[c64,keyrelay,p99_us]} < ${W[c64,$peer,p99_us]}") ($(fmt_ms "${W[c64,keyrelay,p99_us]}") vs $(fmt_ms "${W[c64,$peer,p99_us]}") ms; $label/keyrelay $(ratio "${W[c64,$peer,p99_us]}" "${W[c64,keyrelay,p99_us]}"))"
    echo "keyrelay peak RSS lower than ${label}'s: $(yes_no "${RSS_PEAK[keyrelay]} < ${W[c64,$peer,peak_rss_kib]}") ($(fmt_mib "${RSS_PEAK[keyrelay]}") vs $(fmt_mib "${W[c64,$peer,peak_rss_kib]}") MiB; $label/keyrelay $(ratio "${W[c64,$peer,peak_rss_kib]}" "${RSS_PEAK[keyrelay]}"))"
  done
}

prow() { printf '%-40s %14s %14s %14s\n' "$@"; }
yes_no() { awk "BEGIN { print (($1) ? \"yes\" : \"no\") }"; }

# pcell PEER KEY: a peer's figure for the table, or "-".
pcell() {
  local v=${W[c64,$1,$2]:-}
  [[ ${PEER_STATE[$1]} == ok && -n $v ]] || { echo "-"; return; }
  case $2 in
    rps) echo "${v%.*}" ;;
    *_us) fmt_ms "$v" ;;
    *_kib) fmt_mib "$v" ;;
    *) echo "$v" ;;
  esac
}
