#!/bin/sh
# One command for a newcomer on a fresh Debian/Ubuntu/Raspberry Pi OS machine: install what is
# missing (make, python3-venv), create .venv, install SafeGate and run it with the example
# config on unprivileged ports (DNS 127.0.0.1:5353 and [::1]:5353). Ctrl-C stops it.
set -eu
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
need=""
command -v make >/dev/null 2>&1 || need="$need make"
python3 -c 'import ensurepip, venv' 2>/dev/null || need="$need python3-venv"
if [ -n "$need" ]; then
    $SUDO apt-get update
    # shellcheck disable=SC2086
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $need
fi
exec make run "$@"
