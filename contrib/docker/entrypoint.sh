#!/bin/sh
# The image's entrypoint.
#   serve [--worker NAME]   run the server (the default); writes a config first if none
#   generate                write /data/starling.yaml and a signing key, then exit
#   anything else           passed to `starling` (e.g. register-user, port-db, version)
# Environment: SERVER_NAME (needed to generate), STARLING_DATABASE_URL (postgresql://...;
# SQLite in /data without it), STARLING_CONFIG_PATH (default /data/starling.yaml), and any
# STARLING_<KEY> / STARLING_<SECTION>__<KEY> override (docs/configuration.md), e.g.
# STARLING_REDIS__HOST=redis to run with workers.
set -eu

CONFIG="${STARLING_CONFIG_PATH:-/data/starling.yaml}"
LISTENERS="${STARLING_LISTENERS_PATH:-/etc/starling/listeners.yaml}"

generate() {
    if [ -z "${SERVER_NAME:-}" ]; then
        echo "starling-entrypoint: set SERVER_NAME (the domain in your users' IDs) to generate a config" >&2
        exit 2
    fi
    set -- generate-config --server-name "$SERVER_NAME" --data-dir "$(dirname "$CONFIG")"
    if [ -n "${STARLING_DATABASE_URL:-}" ]; then
        set -- "$@" --database "$STARLING_DATABASE_URL"
    fi
    starling "$@"
}

command="${1:-serve}"
[ "$#" -gt 0 ] && shift
case "$command" in
    generate)
        generate
        ;;
    serve)
        [ -f "$CONFIG" ] || generate
        exec starling serve -c "$CONFIG" -c "$LISTENERS" "$@"
        ;;
    *)
        exec starling "$command" "$@"
        ;;
esac
