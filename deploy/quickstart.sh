#!/bin/sh
# One command for a newcomer on a fresh Debian/Ubuntu/Raspberry Pi OS machine: install what is
# missing (make, python3-venv), create .venv, install SafeGate and run it with the example
# config on unprivileged ports (DNS 127.0.0.1:5353 and [::1]:5353). Ctrl-C stops it.
set -eu
cd "$(dirname "$0")/.."
. deploy/bootstrap-debian.sh
exec make run "$@"
