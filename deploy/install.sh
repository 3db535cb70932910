#!/bin/bash
# Install, upgrade or remove SafeGate as a systemd service on Debian 12, Raspberry Pi OS
# (bookworm) or Ubuntu LTS, amd64 or arm64. Run from a clone of the repository, as root:
#
#   sudo ./deploy/install.sh                  # first install: /opt/safegate, /etc/safegate, start
#   sudo ./deploy/install.sh --upgrade        # new code; config untouched; restart if it checks
#   sudo ./deploy/install.sh --uninstall [--purge]
#
# Layout: /opt/safegate (a venv of the distribution's python3), /etc/safegate (gateway.yaml,
# policies/, blocklists/: copied once, never overwritten; newer examples land next to them as
# *.dist), /var/lib/safegate (state), user `safegate`, units in /etc/systemd/system.
# Guide: docs/install.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: install.sh [--upgrade | --uninstall [--purge]] [options]
  --source PATH       what to pip-install: a SafeGate checkout (default: this one), a wheel
                      or an sdist; examples and units always come from this checkout
  --with-proxy        also install the HTTP(S) proxy extra (mitmproxy; needs g++)
  --address ADDR      the LAN address blocked names answer with (web.public_address);
                      default: this machine's first address from `hostname -I`
  --free-port-53      stop systemd-resolved's stub listener (DNSStubListener=no) so SafeGate
                      can serve :53, and point /etc/resolv.conf at the real upstreams
  --python PY         interpreter for the venv (default: first python3 >= 3.11)
  --root DIR          install below DIR instead of / (tests, image builds); the venv's
                      scripts then point into DIR; implies --no-systemctl
  --no-systemctl      do not call systemctl (no daemon-reload, enable, start or restart)
  --deps-from DIR     offline/testing: reuse the dependencies installed in site-packages DIR
                      (a .pth file) and pip-install SafeGate itself with --no-deps
EOF
}

die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

MODE=install PURGE=0 USE_SYSTEMCTL=1 SOURCE="" PYTHON="" DEPS_FROM="" ADDRESS="" FREE53=0
EXTRAS="" ROOT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --upgrade) MODE=upgrade ;;
        --uninstall) MODE=uninstall ;;
        --purge) PURGE=1 ;;
        --source) SOURCE=${2:?--source needs a path}; shift ;;
        --with-proxy) EXTRAS="[proxy]" ;;
        --address) ADDRESS=${2:?--address needs an IP address}; shift ;;
        --free-port-53) FREE53=1 ;;
        --python) PYTHON=${2:?--python needs an interpreter}; shift ;;
        --root) ROOT=${2:?--root needs a directory}; shift ;;
        --no-systemctl) USE_SYSTEMCTL=0 ;;
        --deps-from) DEPS_FROM=${2:?--deps-from needs a site-packages directory}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done
[ "$PURGE" = 0 ] || [ "$MODE" = uninstall ] || die "--purge only goes with --uninstall"

# Paths on the target system; $R prefixes them with --root.
PREFIX=/opt/safegate CONF=/etc/safegate STATE=/var/lib/safegate UNITDIR=/etc/systemd/system
USER_NAME=safegate
UNITS="safegate.service safegate-healthcheck.service safegate-healthcheck.timer safegate-restart.service"
SRC_DIR=$(cd "$(dirname "$0")/.." && pwd)
SYSTEMCTL=${SYSTEMCTL:-systemctl}   # overridable so tests can record what would be run

if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd)
    [ "$ROOT" != / ] || ROOT=""
    [ -z "$ROOT" ] || USE_SYSTEMCTL=0
fi
R=$ROOT
IS_ROOT=0
[ "$(id -u)" = 0 ] && IS_ROOT=1
[ "$IS_ROOT" = 1 ] || [ -n "$R" ] || die "run as root (sudo $0 ...), or use --root DIR"
umask 022

systemctl_do() {
    if [ "$USE_SYSTEMCTL" = 1 ]; then "$SYSTEMCTL" "$@"; else say "(skipped) systemctl $*"; fi
}

# ------------------------------------------------------------------ user and ownership

ensure_user() {
    [ "$IS_ROOT" = 1 ] || { say "not root: no user '$USER_NAME', files stay yours"; return; }
    [ -z "$R" ] || [ -f "$R/etc/passwd" ] || die "--root $R has no etc/passwd (a target system's root is expected)"
    if ! grep -q "^$USER_NAME:" "$R/etc/passwd" 2>/dev/null; then
        local prefix=()
        [ -z "$R" ] || prefix=(--prefix "$R")
        useradd "${prefix[@]}" --system --user-group --home-dir "$STATE" --no-create-home \
            --shell /usr/sbin/nologin --comment "SafeGate DNS filter" "$USER_NAME"
        say "created system user $USER_NAME"
    fi
}

# Numeric ids from the target's own passwd/group (the host's may differ under --root).
owner_ids() {
    local uid gid
    uid=$(awk -F: -v u="$USER_NAME" '$1 == u {print $3}' "$R/etc/passwd")
    gid=$(awk -F: -v g="$USER_NAME" '$1 == g {print $3}' "$R/etc/group")
    [ -n "$uid" ] && [ -n "$gid" ] || die "user or group '$USER_NAME' missing in $R/etc"
    echo "$uid:$gid"
}

# own PATH OWNER MODE (OWNER "user" = safegate:safegate, "conf" = root:safegate)
own() {
    local path=$1 who=$2 mode=$3
    chmod "$mode" "$path"
    [ "$IS_ROOT" = 1 ] || return 0
    local ids
    ids=$(owner_ids)
    case "$who" in
        user) chown "$ids" "$path" ;;
        conf) chown "0:${ids#*:}" "$path" ;;
    esac
}

# ------------------------------------------------------------------ python and the venv

find_python() {
    if [ -n "$PYTHON" ]; then
        "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
            die "$PYTHON is not Python >= 3.11"
        return
    fi
    local p
    for p in python3 python3.13 python3.12 python3.11; do
        if command -v "$p" >/dev/null 2>&1 &&
            "$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            PYTHON=$(command -v "$p"); return
        fi
    done
    die "SafeGate needs Python >= 3.11 (Debian 12, Raspberry Pi OS bookworm and Ubuntu 24.04 have it: apt-get install python3)"
}

ensure_venv_module() {
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null && return
    if [ -n "$R" ] || ! command -v apt-get >/dev/null 2>&1; then
        die "$PYTHON has no venv module: apt-get install python3-venv"
    fi
    say "installing python3-venv"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv ||
        { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv; }
}

# A clean copy of the package sources: pip builds a local directory in place, and the
# checkout (perhaps someone's work tree) must not get build/ or egg-info written into it.
source_copy() {
    local src=$1 tmp
    tmp=$(mktemp -d)
    cp -r "$src/pyproject.toml" "$src/setup.py" "$src/build_ext_lookup.py" "$src/README.md" \
        "$src/gateway" "$tmp/"
    # No __pycache__ and no in-place builds (`make compile`): pip builds the optional C
    # accelerators where a compiler is installed, else SafeGate runs its pure-Python paths.
    find "$tmp" -name __pycache__ -type d -prune -exec rm -rf {} +
    find "$tmp/gateway" -name '*.so' -delete
    echo "$tmp"
}

install_package() {
    local venv="$R$PREFIX" src=${SOURCE:-$SRC_DIR} target tmp=""
    if [ -d "$src" ]; then
        [ -f "$src/pyproject.toml" ] || die "--source $src: not a SafeGate checkout (no pyproject.toml)"
        tmp=$(source_copy "$src")
        target=$tmp
    elif [ -f "$src" ]; then
        target=$(cd "$(dirname "$src")" && pwd)/$(basename "$src")
    else
        die "--source $src: no such file or directory"
    fi
    local pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-input --quiet)
    if [ -n "$DEPS_FROM" ]; then
        # The build backend (setuptools) comes from DEPS_FROM too: nothing is downloaded.
        "${pip[@]}" install --no-deps --no-build-isolation --force-reinstall "$target$EXTRAS"
    else
        # --force-reinstall --no-deps: a checkout keeps its version number between commits.
        "${pip[@]}" install --force-reinstall --no-deps "$target$EXTRAS"
        "${pip[@]}" install "$target$EXTRAS"
    fi
    [ -z "$tmp" ] || rm -rf "$tmp"
    "$venv/bin/safegate" --version >/dev/null || die "the installed safegate does not start"
}

install_venv() {
    find_python
    ensure_venv_module
    local venv="$R$PREFIX" site
    if [ -n "$DEPS_FROM" ]; then
        # Everything, pip included, comes from DEPS_FROM: no ensurepip (7 s), no downloads.
        [ -d "$DEPS_FROM" ] || die "--deps-from $DEPS_FROM: no such directory"
        [ -x "$venv/bin/python" ] || "$PYTHON" -m venv --without-pip "$venv"
        site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
        (cd "$DEPS_FROM" && pwd) > "$site/safegate-deps.pth"
    elif [ ! -x "$venv/bin/python" ]; then
        say "creating the venv in $venv ($("$PYTHON" -V))"
        "$PYTHON" -m venv "$venv"
    fi
    say "installing SafeGate into $R$PREFIX"
    install_package
    install -d -m 0755 "$R$PREFIX/libexec" "$R$PREFIX/share/doc/safegate"
    install -m 0755 "$SRC_DIR/deploy/systemd/safegate-health" "$R$PREFIX/libexec/safegate-health"
    install -m 0644 "$SRC_DIR/docs/install.md" "$R$PREFIX/share/doc/safegate/install.md"
    # JSON Schemas for an editor's YAML extension: /etc/safegate has no docs/ beside it.
    install -d -m 0755 "$R$PREFIX/share/doc/safegate/schema"
    install -m 0644 "$SRC_DIR"/docs/schema/*.schema.json "$R$PREFIX/share/doc/safegate/schema/"
}

# ------------------------------------------------------------------ configuration

# conf_file SRC DST: first install copies; an edited file is never touched, and a newer
# example is put beside it as DST.dist for the administrator to compare.
conf_file() {
    local src=$1 dst=$2
    if [ ! -e "$dst" ]; then
        install -m 0640 "$src" "$dst"
        own "$dst" conf 0640
    elif ! cmp -s "$src" "$dst"; then
        install -m 0640 "$src" "$dst.dist"
        own "$dst.dist" conf 0640
        say "kept ${dst#"$R"} (yours); the new example is ${dst#"$R"}.dist"
    elif [ -e "$dst.dist" ]; then
        rm -f "$dst.dist"
    fi
}

conf_dir() {
    install -d "$1"
    own "$1" conf 0750
}

# --address, else the one the installed gateway.yaml has (an upgrade's example then matches
# an unedited file), else this machine's first address.
detect_address() {
    [ -n "$ADDRESS" ] && { echo "$ADDRESS"; return; }
    local a=""
    [ ! -f "$R$CONF/gateway.yaml" ] ||
        a=$(sed -n 's/^ *public_address: \["\([^"]*\)"\].*/\1/p' "$R$CONF/gateway.yaml" | head -n 1)
    [ -n "$a" ] || [ -n "$R" ] || a=$(hostname -I 2>/dev/null | awk '{print $1}')
    echo "${a:-192.0.2.1}"
}

install_config() {
    local f tmp address
    conf_dir "$R$CONF"
    conf_dir "$R$CONF/policies"
    conf_dir "$R$CONF/blocklists"
    address=$(detect_address)
    [ "$address" != 192.0.2.1 ] || [ -e "$R$CONF/gateway.yaml" ] ||
        say "warning: no LAN address found; set web.public_address in $CONF/gateway.yaml (or use --address)"
    tmp=$(mktemp)
    sed "s/@PUBLIC_ADDRESS@/$address/" "$SRC_DIR/deploy/templates/gateway.yaml" > "$tmp"
    conf_file "$tmp" "$R$CONF/gateway.yaml"
    rm -f "$tmp"
    for f in "$SRC_DIR"/policies/*.yaml; do conf_file "$f" "$R$CONF/policies/$(basename "$f")"; done
    for f in "$SRC_DIR"/blocklists/*; do
        [ -f "$f" ] && conf_file "$f" "$R$CONF/blocklists/$(basename "$f")"
    done
    install -d "$R$STATE"
    own "$R$STATE" user 0750
}

install_units() {
    local u
    install -d "$R$UNITDIR"
    for u in $UNITS; do
        install -m 0644 "$SRC_DIR/deploy/systemd/$u" "$R$UNITDIR/$u"
    done
}

# ------------------------------------------------------------------ port 53

free_port_53() {
    install -d -m 0755 "$R/etc/systemd/resolved.conf.d"
    cat > "$R/etc/systemd/resolved.conf.d/safegate.conf" <<'EOF'
# Written by SafeGate's install.sh: SafeGate answers DNS on port 53 of this machine.
# systemd-resolved keeps resolving for local programs, without its 127.0.0.53:53 listener.
[Resolve]
DNSStubListener=no
EOF
    # The stub resolv.conf names 127.0.0.53, which no longer answers: use resolved's list of
    # the real upstream servers instead (what SafeGate forwards to, too).
    if readlink "$R/etc/resolv.conf" 2>/dev/null | grep -q 'stub-resolv.conf$'; then
        ln -sfn /run/systemd/resolve/resolv.conf "$R/etc/resolv.conf"
        say "/etc/resolv.conf now points at /run/systemd/resolve/resolv.conf"
    fi
    systemctl_do try-restart systemd-resolved.service
    say "systemd-resolved no longer listens on port 53"
}

warn_port_53() {
    [ -z "$R" ] && [ "$FREE53" = 0 ] && command -v ss >/dev/null 2>&1 || return 0
    if ss -H -lnup 'sport = :53' 2>/dev/null | grep -q systemd-resolve; then
        say "warning: systemd-resolved holds port 53; rerun with --free-port-53 or see docs/install.md"
    fi
}

# ------------------------------------------------------------------ check, start

check_config() {
    local cmd=("$R$PREFIX/bin/safegate" check -c "$R$CONF/gateway.yaml")
    # As the service's user where possible: also proves it can read every file.
    if [ -z "$R" ] && [ "$IS_ROOT" = 1 ] && command -v runuser >/dev/null 2>&1; then
        cmd=(runuser -u "$USER_NAME" -- "${cmd[@]}")
    fi
    "${cmd[@]}"
}

do_install() {
    local upgrading=$1
    if [ "$upgrading" = 1 ]; then
        [ -x "$R$PREFIX/bin/safegate" ] || die "no installation in $R$PREFIX to upgrade (run without --upgrade)"
    fi
    ensure_user
    install_venv
    install_config
    install_units
    [ "$FREE53" = 0 ] || free_port_53
    systemctl_do daemon-reload
    if ! check_config; then
        if [ "$upgrading" = 1 ]; then
            echo "install.sh: safegate check failed: the running gateway was NOT restarted (it keeps serving); fix $CONF and run: systemctl restart safegate" >&2
        else
            echo "install.sh: safegate check failed: not started; fix $CONF and run: systemctl enable --now safegate" >&2
        fi
        exit 1
    fi
    if [ "$upgrading" = 1 ]; then
        systemctl_do try-restart safegate.service
        say "upgraded: $("$R$PREFIX/bin/safegate" --version)"
    else
        systemctl_do enable --now safegate.service
        warn_port_53
        say "installed: $("$R$PREFIX/bin/safegate" --version); config in $CONF, logs: journalctl -u safegate"
    fi
}

do_uninstall() {
    local u
    systemctl_do disable --now safegate.service safegate-healthcheck.timer || true
    for u in $UNITS; do rm -f "$R$UNITDIR/$u"; done
    systemctl_do daemon-reload || true
    rm -rf "${R:?}$PREFIX"
    if [ -f "$R/etc/systemd/resolved.conf.d/safegate.conf" ]; then
        rm -f "$R/etc/systemd/resolved.conf.d/safegate.conf"
        systemctl_do try-restart systemd-resolved.service || true
        say "systemd-resolved's stub listener is back after its restart"
    fi
    if [ "$PURGE" = 1 ]; then
        rm -rf "${R:?}$CONF" "${R:?}$STATE"
        if [ "$IS_ROOT" = 1 ] && grep -q "^$USER_NAME:" "$R/etc/passwd" 2>/dev/null; then
            local prefix=()
            [ -z "$R" ] || prefix=(--prefix "$R")
            userdel "${prefix[@]}" "$USER_NAME"
        fi
        say "removed $PREFIX, $CONF, $STATE and user $USER_NAME"
    else
        say "removed $PREFIX; kept $CONF and $STATE (--purge removes them)"
    fi
}

case "$MODE" in
    install) do_install 0 ;;
    upgrade) do_install 1 ;;
    uninstall) do_uninstall ;;
esac
