#!/bin/sh
# kemi-outbound container entry point: ko-entry ROLE
#   edge | registrar | single   Kamailio (cfg/ROLE.cfg) in the foreground (-DD -E), logs on stderr
#   dns                NSD serving /usr/share/kemi-outbound/dns/*.zone
#   ua                 idle; SIPp runs in it through `docker exec`
#   health             readiness probe of the role named by $KO_ROLE
# Environment: KO_ROLE (set by the role), KO_ADDR (listen address; default the
# container's first address), KO_DNS_SERVER (resolver written to
# /etc/resolv.conf), KO_SHM_MB / KO_PKG_MB (Kamailio memory), KO_DEBUG=1;
# every setting of cfg/*.cfg (KO_PORT, KO_REGISTRAR, KO_CONFIG, KO_TCP_LIFETIME,
# KO_DEFAULT_EXPIRES, ...) and KO_FORCE_OUTBOUND, KO_FLOW_TIMER,
# KO_FLOW_KEYS_FILE (passed as -A defines). Arguments after ROLE go to kamailio.
# registrar / single: KO_DB_URL (default sqlite:///var/lib/kemi-outbound/kemi-outbound.sqlite)
# is the subscriber database; an SQLite file that is missing is made at start from
# Kamailio's schema + db/kemi-outbound-create.sql (empty: add subscribers with
# `docker exec -i CONTAINER ko-subscriber add user@domain`, password on stdin);
# KO_AUTH_SECRET is the nonce secret, the same on every registrar of a farm.
# The same file holds usrloc's location table (write-back: bindings survive a
# restart of the container); it is made in WAL mode, so that the usrloc timer's
# writes and the auth_db reads of the workers never wait for each other.
# KO_SERVER_ID: Kamailio's server_id (--server-id), a number of its own for each
# registrar of a farm: usrloc's record ids (ruid) carry it, so the bindings the
# two members of a pair make never share an id (containers have the same pids
# and may start in the same second, and the ids are made of time and pid alone).
# KO_DEFINES: switches of the cfg (names only, space-separated), each passed as
# -A NAME: e.g. "WITH_DMQ" for a registrar pair, with KO_DMQ_ADDRESS and
# KO_DMQ_PEER ("sip:ADDR:PORT") in the environment (docker/compose.yaml).
set -eu

role="${1:-help}"
[ $# -gt 0 ] && shift

use_dns_server() {
    if [ -n "${KO_DNS_SERVER:-}" ]; then
        printf 'nameserver %s\nsearch %s\noptions timeout:1 attempts:2\n' \
            "$KO_DNS_SERVER" "${KO_DNS_DOMAIN:-example.com}" > /etc/resolv.conf
    fi
}

# The SQLite subscriber database of KO_DB_URL, made when missing (a mounted file
# is used as it is); PostgreSQL URLs are left alone (the schema is the DBA's).
ensure_subscriber_db() {
    url="${KO_DB_URL:-sqlite:///var/lib/kemi-outbound/kemi-outbound.sqlite}"
    case "$url" in
        sqlite://*) db="${url#sqlite://}" ;;
        *) return 0 ;;
    esac
    [ -e "$db" ] && return 0
    mkdir -p "$(dirname "$db")"
    python3 - "$db" <<'PY'
import os, sqlite3, sys
files = ["/usr/share/kamailio/db_sqlite/standard-create.sql", "/usr/share/kamailio/db_sqlite/auth_db-create.sql",
         "/usr/share/kamailio/db_sqlite/usrloc-create.sql", "/usr/share/kemi-outbound/db/kemi-outbound-create.sql",
         "/usr/share/kemi-outbound/db/location-guard-sqlite.sql"]
tmp = sys.argv[1] + ".new"
if os.path.exists(tmp):
    os.remove(tmp)  # left by a start that was killed
conn = sqlite3.connect(tmp)
conn.executescript("BEGIN;\n" + "\n".join(open(f).read() for f in files) + "\nCOMMIT;\n")
conn.execute("PRAGMA journal_mode=WAL")  # kept in the file: readers and the one writer never block
tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
missing = {"version", "subscriber", "location"} - tables
if missing:
    sys.exit(f"ko-entry: the schema made no table {sorted(missing)}")
conn.close()
os.rename(tmp, sys.argv[1])
PY
    echo "ko-entry: made the database $db (subscribers: none yet; bindings: usrloc's location table)" >&2
}

first_address() {
    ip -4 -o addr show scope global | awk '{split($4, a, "/"); print a[1]; exit}'
}

case "$role" in
    edge|registrar|single)
        use_dns_server
        export KO_ROLE="$role"
        export KO_ADDR="${KO_ADDR:-$(first_address)}"
        export KO_RPC_SOCKET="${KO_RPC_SOCKET:-/run/kamailio/ko-$role.sock}"
        # a restarted container keeps its files: no stale pid file or RPC socket
        mkdir -p /run/kamailio
        rm -f "/run/kamailio/$role.pid" "$KO_RPC_SOCKET"
        if [ "$role" != edge ]; then
            ensure_subscriber_db
        fi
        set -- -f "/usr/share/kemi-outbound/cfg/$role.cfg" -DD -E \
            -m "${KO_SHM_MB:-64}" -M "${KO_PKG_MB:-8}" -x "${KO_MEM_MANAGER:-tlsf}" \
            -P "/run/kamailio/$role.pid" "$@"
        # YAML keys that the cfg does not read from the environment itself
        # (adapter/runtime.py DEFINE_OVERRIDES) become -A defines
        for name in KO_FORCE_OUTBOUND KO_FLOW_KEYS_FILE KO_FLOW_TIMER; do
            value="$(printenv "$name" || true)"
            if [ -n "$value" ]; then
                set -- "$@" -A "$name=$value"
            fi
        done
        if [ -n "${KO_SERVER_ID:-}" ]; then
            case "$KO_SERVER_ID" in
                *[!0-9]*|0)
                    echo "ko-entry: KO_SERVER_ID: '$KO_SERVER_ID' is not a number above 0" >&2
                    exit 2
                    ;;
            esac
            set -- "$@" "--server-id=$KO_SERVER_ID"
        fi
        set -f  # the names are split on blanks, never expanded as file patterns
        for name in ${KO_DEFINES:-}; do
            case "$name" in
                *[!A-Za-z0-9_]*|[0-9]*)
                    echo "ko-entry: KO_DEFINES: '$name' is not a define name" >&2
                    exit 2
                    ;;
            esac
            set -- "$@" -A "$name"
        done
        set +f
        if [ "${KO_DEBUG:-0}" = 1 ]; then
            set -- "$@" -A WITH_DEBUG
        fi
        exec kamailio "$@"
        ;;
    dns)
        mkdir -p /run/nsd /var/lib/nsd
        cat > /run/nsd/nsd.conf <<CONF
server:
    username: ""
    database: ""
    zonelistfile: "/run/nsd/zone.list"
    xfrdfile: "/run/nsd/xfrd.state"
    pidfile: "/run/nsd/nsd.pid"
    logfile: "/dev/stderr"
    server-count: 1
    verbosity: 1
remote-control:
    control-enable: no
CONF
        # zone files name hosts by the last octet only: @NET@ is this network's /24
        net="${KO_NET:-$(first_address | cut -d. -f1-3)}"
        for zone in /usr/share/kemi-outbound/dns/*.zone; do
            name="$(basename "$zone" .zone)"
            sed "s/@NET@/$net/g" "$zone" > "/run/nsd/$name.zone"
            printf 'zone:\n    name: "%s"\n    zonefile: "/run/nsd/%s.zone"\n' "$name" "$name" >> /run/nsd/nsd.conf
        done
        nsd-checkconf /run/nsd/nsd.conf
        exec nsd -d -c /run/nsd/nsd.conf "$@"
        ;;
    ua)
        use_dns_server
        mkdir -p /out
        exec sleep infinity
        ;;
    health)
        case "${KO_ROLE:-}" in
            edge|registrar|single) exec ko-rpc core.uptime >/dev/null ;;
            dns) exec python3 -c 'import dns.resolver as r; x = r.Resolver(configure=False); x.nameservers = ["127.0.0.1"]; x.resolve("example.com", "SOA")' ;;
            *) exit 0 ;;
        esac
        ;;
    *)
        sed -n '2,10p' "$0"
        exit 2
        ;;
esac
