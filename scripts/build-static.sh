#!/usr/bin/env bash
# Builds keyrelay as one statically linked binary (musl), installing the musl target and C
# toolchain first when they are missing, and prints where it is and how big.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-musl
if ! rustup target list --installed | grep -qx "$target"; then
  echo "build-static: adding the $target Rust target"
  rustup target add "$target"
fi
if ! command -v musl-gcc >/dev/null 2>&1; then
  echo "build-static: installing musl-tools (ring needs a C compiler for musl)"
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null
  fi
fi

CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked --target "$target"

bin="target/$target/release/keyrelay"
size=$(stat -c %s "$bin")
echo "built $bin"
echo "size: $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.2f", s / 1048576 }') MiB)"
linkage=$(ldd "$bin" 2>&1 || true)
case "$linkage" in
  *"statically linked"*|*"not a dynamic executable"*) echo "statically linked: yes" ;;
  *) echo "error: $bin links dynamically:" >&2; echo "$linkage" >&2; exit 1 ;;
esac
