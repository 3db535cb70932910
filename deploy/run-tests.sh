#!/bin/sh
# The whole test suite, as CI runs it: installs the Debian packages the tests use (unbound,
# kdig, dig, promtool, dnsperf, dnsmasq) when missing, then ruff, mypy and pytest in .venv.
set -eu
cd "$(dirname "$0")/.."
. deploy/bootstrap-debian.sh
make deps-apt
exec make test "$@"
