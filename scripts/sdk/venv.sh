#!/usr/bin/env bash
# Creates target/sdk-venv with the official Python SDKs pinned in requirements.txt, for the
# ignored tests in tests/it/sdk.rs. Idempotent: when the venv's stamp matches requirements.txt
# and the Python it was made with, it returns at once. On a fresh Debian machine with only
# python3, it installs python3-venv (apt) when `python3 -m venv` cannot make a venv.
set -euo pipefail
cd "$(dirname "$0")/../.."

requirements=scripts/sdk/requirements.txt
venv=target/sdk-venv
python=${PYTHON:-python3}
stamp_file=$venv/.keyrelay-stamp

command -v "$python" >/dev/null 2>&1 || {
  echo "sdk-venv: $python not found; install Python 3 (apt-get install python3)" >&2
  exit 1
}
stamp="$(sha256sum "$requirements" | cut -d' ' -f1) $("$python" -c 'import sys; print(sys.version.split()[0], sys.executable)')"
if [ -x "$venv/bin/python" ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
  exit 0
fi

make_venv() {
  rm -rf "$venv"
  "$python" -m venv "$venv" >/dev/null 2>&1
}

if ! make_venv; then
  # Debian splits ensurepip out of the standard library: `python3 -m venv` fails without it.
  echo "sdk-venv: $python -m venv failed; installing python3-venv"
  sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq python3-venv "python$version-venv" >/dev/null 2>&1 ||
    "${sudo[@]}" apt-get install -y -qq python3-venv >/dev/null
  make_venv || {
    rm -rf "$venv"
    echo "sdk-venv: $python -m venv $venv still fails after installing python3-venv" >&2
    exit 1
  }
fi

echo "sdk-venv: installing $(grep -v '^#' "$requirements" | xargs) into $venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
"$venv/bin/python" -m pip install -q -r "$requirements"
echo "$stamp" >"$stamp_file"
