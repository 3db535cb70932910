#!/bin/sh
# The whole test suite, as CI runs it: installs the Debian packages the tests use (unbound,
# kdig, dig, promtool, dnsperf, dnsmasq) when missing, then ruff, mypy and pytest in .venv.
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
make deps-apt
exec make test "$@"
