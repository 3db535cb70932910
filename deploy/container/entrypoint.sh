#!/bin/sh
# Container entrypoint: on the first start (no gateway.yaml in the config volume) copy the
# example configuration in, then refuse to start on a broken configuration (`safegate
# check`, errors as file:line), then exec `safegate run` so signals (SIGTERM to stop, SIGHUP
# to reload) reach the gateway itself.
#   docker run IMAGE                  -> check, then run
#   docker run IMAGE check|explain …  -> that safegate command on /etc/safegate/gateway.yaml
# Environment (first start only, written into gateway.yaml):
#   SAFEGATE_PUBLIC_ADDRESS  address clients reach the block page at (the host's LAN address)
#   SAFEGATE_METRICS_LISTEN  metrics listener (image default 0.0.0.0:9153, for Prometheus)
#   SAFEGATE_IPV6            auto (default: when the container has IPv6) | yes | no
# Paths (overridable for tests): SAFEGATE_CONF_DIR, SAFEGATE_STATE_DIR, SAFEGATE_EXAMPLE_DIR,
# SAFEGATE_BIN.
set -eu

conf=${SAFEGATE_CONF_DIR:-/etc/safegate}
state=${SAFEGATE_STATE_DIR:-/var/lib/safegate}
example=${SAFEGATE_EXAMPLE_DIR:-/usr/share/safegate/example}
safegate=${SAFEGATE_BIN:-safegate}
config=$conf/gateway.yaml

log() { echo "safegate-entrypoint: $*" >&2; }

has_ipv6() {
    case "${SAFEGATE_IPV6:-auto}" in
        yes) return 0 ;;
        no) return 1 ;;
        auto) [ -s /proc/net/if_inet6 ] ;;
        *) log "SAFEGATE_IPV6 must be auto, yes or no, not '${SAFEGATE_IPV6}'"; exit 64 ;;
    esac
}

first_start() {
    [ -f "$example/gateway.yaml" ] || { log "no example configuration in $example"; exit 66; }
    address=${SAFEGATE_PUBLIC_ADDRESS:-}
    if [ -z "$address" ]; then
        address=127.0.0.1
        log "SAFEGATE_PUBLIC_ADDRESS is not set: blocked names answer 127.0.0.1; set it to the host's LAN address"
    fi
    case "$address" in *[!0-9A-Fa-f.:]*) log "SAFEGATE_PUBLIC_ADDRESS '$address' is not an IP address"; exit 64 ;; esac
    metrics=${SAFEGATE_METRICS_LISTEN:-127.0.0.1:9153}
    case "$metrics" in *[!0-9A-Fa-f.:\[\]]*) log "SAFEGATE_METRICS_LISTEN '$metrics' is not host:port"; exit 64 ;; esac
    mkdir -p "$conf/policies" "$conf/blocklists"
    # -n: files already in the volume (a policy the school mounted) are kept as they are.
    cp -Rn "$example/policies/." "$conf/policies/"
    cp -Rn "$example/blocklists/." "$conf/blocklists/"
    dns='listen: ["0.0.0.0:53", "[::]:53"]'
    has_ipv6 || dns='listen: ["0.0.0.0:53"]'
    sed -e "s|@PUBLIC_ADDRESS@|$address|" \
        -e "s|^\\(  \\)listen: \\[\"0.0.0.0:53\", \"\\[::\\]:53\"\\]|\\1$dns|" \
        -e "s|^\\(  listen: \\)\"127.0.0.1:9153\"|\\1\"$metrics\"|" \
        -e "s|^state_dir: .*|state_dir: \"$state\"|" \
        "$example/gateway.yaml" > "$config.tmp"
    mv "$config.tmp" "$config"
    log "first start: example configuration copied to $conf (edit policies/, then restart)"
}

[ -f "$config" ] || first_start

if [ $# -gt 0 ] && [ "$1" != run ]; then
    cmd=$1
    shift
    exec "$safegate" "$cmd" -c "$config" "$@"
fi

if ! "$safegate" check -c "$config"; then
    log "$config has errors (above): not starting"
    exit 1
fi
exec "$safegate" run -c "$config"
