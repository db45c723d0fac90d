# scripts/bench/allocs.sh, sourced by scripts/bench.sh: (8) heap allocations per proxied request.
# The glibc keyrelay runs under valgrind's DHAT twice, serving ALLOC_FEW and then ALLOC_MANY
# sequential keep-alive POSTs (the same chat request as (1)); the difference in blocks and bytes
# allocated over the difference in requests is the per-request figure, free of start-up and
# shutdown. Instructions, not time, so it holds on a busy machine. The musl binary is static:
# valgrind cannot intercept its allocator, so only the glibc build is counted (the code path and
# allocation sites are the same).

ALLOC_FEW=200 ALLOC_MANY=1200
declare -A ALLOCS=()

# alloc_run N: sets ALLOC_BLOCKS and ALLOC_BYTES for a keyrelay under DHAT that served N requests.
alloc_run() {
  local n=$1 dir=$TMP/dhat-$1
  mkdir -p "$dir"
  env -i PATH="$PATH" PORT="$P_ALLOC" OPENAI_API_KEYS="$KR_KEYS" OPENAI_BASE_URL="http://127.0.0.1:$P_UP" \
    LOG_LEVEL=warn valgrind --tool=dhat --dhat-out-file="$dir/dhat.json" "$KR_BIN" >"$dir/stdout" 2>"$dir/valgrind.log" &
  spawned "keyrelay under valgrind ($n requests)"
  local pid=$!
  wait_ready "$P_ALLOC" "$pid" "$dir/valgrind.log"
  python3 - "$P_ALLOC" "$n" "$BODY" >"$dir/client.txt" 2>&1 <<'PY' || { kill "$pid"; return 1; }
import http.client, sys
port, n, body = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
for _ in range(n):
    conn.request("POST", "/openai/v1/chat/completions", body=body,
                 headers={"Content-Type": "application/json", "Authorization": "Bearer x"})
    reply = conn.getresponse()
    reply.read()
    assert reply.status == 200, reply.status
print("ok", n)
PY
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  cp "$dir/valgrind.log" "$RAW/dhat-$n.log"
  # "Total:     35,650,530 bytes in 134,622 blocks"
  read -r ALLOC_BYTES ALLOC_BLOCKS < <(sed -n 's/.*Total: *\([0-9,]*\) bytes in \([0-9,]*\) blocks.*/\1 \2/p' \
    "$dir/valgrind.log" | head -1 | tr -d ,)
  [[ -n ${ALLOC_BLOCKS:-} ]]
}

alloc_test() {
  if ! command -v valgrind >/dev/null; then
    ALLOCS[status]="not measured: valgrind is not installed (apt-get install valgrind)"
    return 0
  fi
  log "(8) heap allocations per request: keyrelay under valgrind DHAT, $ALLOC_FEW and $ALLOC_MANY requests"
  local few_blocks few_bytes
  if ! alloc_run "$ALLOC_FEW"; then
    ALLOCS[status]="failed: see $RAW/dhat-$ALLOC_FEW.log"
    return 0
  fi
  few_blocks=$ALLOC_BLOCKS few_bytes=$ALLOC_BYTES
  if ! alloc_run "$ALLOC_MANY"; then
    ALLOCS[status]="failed: see $RAW/dhat-$ALLOC_MANY.log"
    return 0
  fi
  local n=$((ALLOC_MANY - ALLOC_FEW))
  ALLOCS[blocks]=$(awk -v a="$few_blocks" -v b="$ALLOC_BLOCKS" -v n="$n" 'BEGIN { printf "%.1f", (b - a) / n }')
  ALLOCS[bytes]=$(awk -v a="$few_bytes" -v b="$ALLOC_BYTES" -v n="$n" 'BEGIN { printf "%.0f", (b - a) / n }')
  ALLOCS[status]=ok
}

print_allocs() {
  if [[ ${ALLOCS[status]:-} == ok ]]; then
    row "(8) heap allocations per request" "-" "-" "${ALLOCS[blocks]}" "-" "" "reported"
    row "(8) heap bytes allocated per request" "-" "-" "${ALLOCS[bytes]}" "-" "" "reported"
  else
    row "(8) heap allocations per request" "-" "-" "-" "-" "" "${ALLOCS[status]:-not run}"
  fi
}
