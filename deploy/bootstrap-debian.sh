# Sourced by quickstart.sh and run-tests.sh: install make and python3-venv when missing
# (Debian, Ubuntu, Raspberry Pi OS), as root or with sudo.
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
