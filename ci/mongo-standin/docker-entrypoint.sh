#!/bin/bash
# The entrypoint of the mongo:7 stand-in (see the Dockerfile): the official
# image's first-start sequence, with SecantusDB as the server.
#   mongod [--port N] [--bind_ip ADDR | --bind_ip_all]
set -euo pipefail
[ "${1:-}" = mongod ] && shift
port=27017
bind=0.0.0.0
while [ $# -gt 0 ]; do
    case $1 in
        --port) port=$2; shift 2 ;;
        --bind_ip) bind=$2; shift 2 ;;
        --bind_ip_all) bind=0.0.0.0; shift ;;
        *) echo "mongod stand-in: unsupported option $1" >&2; exit 2 ;;
    esac
done
server=(secantusd-py --storage-path /data/db --standalone --cache-size 256M --port "$port")

# SecantusDB 0.7.0b3 can deadlock on a second SIGTERM: one, then SIGKILL.
stop() {
    kill -TERM "$1"
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.2; done
    kill -KILL "$1"
}

auth=()
if [ -n "${MONGO_INITDB_ROOT_USERNAME:-}" ]; then
    : "${MONGO_INITDB_ROOT_PASSWORD:?MONGO_INITDB_ROOT_PASSWORD must be set with MONGO_INITDB_ROOT_USERNAME}"
    auth=(--auth)
    if [ -z "$(ls -A /data/db)" ]; then
        "${server[@]}" --host 127.0.0.1 --log-level WARNING &
        pid=$!
        until mongosh --quiet --port "$port" --eval 'quit(db.adminCommand({ping: 1}).ok ? 0 : 1)' 2>/dev/null; do
            kill -0 "$pid" 2>/dev/null || { echo "mongod stand-in: the server did not start" >&2; exit 1; }
            sleep 0.5
        done
        mongosh --quiet --port "$port" admin --eval 'db.createUser({
            user: process.env.MONGO_INITDB_ROOT_USERNAME,
            pwd: process.env.MONGO_INITDB_ROOT_PASSWORD,
            roles: [{role: "root", db: "admin"}]})'
        root=(mongosh --quiet --port "$port" --username "$MONGO_INITDB_ROOT_USERNAME"
              --password "$MONGO_INITDB_ROOT_PASSWORD" --authenticationDatabase admin)
        for f in /docker-entrypoint-initdb.d/*; do
            case $f in
                *.sh) echo "mongod stand-in: running $f"
                      if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;
                *.js) echo "mongod stand-in: running $f"
                      "${root[@]}" "${MONGO_INITDB_DATABASE:-test}" "$f" ;;
                *) [ -e "$f" ] && echo "mongod stand-in: ignoring $f" ;;
            esac
        done
        stop "$pid"
        wait "$pid" || true
        echo "mongod stand-in: initialized; restarting with authentication"
    fi
fi
exec "${server[@]}" --host "$bind" "${auth[@]}"
