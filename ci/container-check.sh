#!/usr/bin/env bash
# The container path, run for real: builds the Dockerfile unchanged, runs a job in
# the image, then brings the docker-compose.yml stack up and checks what it
# stored and serves. Everything it starts is removed at the end, on failure too.
#
#   bash ci/container-check.sh                        # podman (installed if missing, as root)
#   ITM_CHECK_ENGINE=docker bash ci/container-check.sh  # Docker with `docker compose`
#
# podman (the CI's way, no registry needed): Debian's podman + podman-compose from
# PyPI, and stand-ins for the two registry images:
#   python:3.11-slim-bookworm  a Debian rootfs made by mmdebstrap, with the host's
#                              extra CA certificates (so pip reaches the index);
#   mongo:7                    ci/mongo-standin (SecantusDB behind the official
#                              image's entrypoint contract).
# Images already present under those names are used as they are. With
# ITM_CHECK_ENGINE=docker the real images are pulled instead (ITM_CHECK_STANDINS=1
# builds the stand-ins there too).
#
# Stages, each checked:
#   1. `python -m itm.run --help` runs; the user is uid 1000;
#   2. a job in the container (host network) on a local image server and MongoDB:
#      exactly the expected images (md5 of the served bytes) and errors by reason;
#   3. the compose stack (+ ci/compose.check.yml: an image server on the stack's
#      network, the URL list on the head), started in stages (podman-compose
#      cannot wait on service_healthy with podman 4.3): 2 Ray nodes, the job
#      service exits 0, the API on 127.0.0.1:5000 answers /healthz,
#      /monitoring?format=json and /image/<md5>, the API's MongoDB user can read
#      and cannot write.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

engine=${ITM_CHECK_ENGINE:-podman}
standins=${ITM_CHECK_STANDINS:-$([ "$engine" = podman ] && echo 1 || echo 0)}
project=itmcheck
work=$(mktemp -d /tmp/itm-container-check.XXXXXX)
chmod 755 "$work"
started=$SECONDS

say() { printf '\n== [%3ss] %s\n' "$((SECONDS - started))" "$*"; }
fail() { printf 'container-check: FAILED: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ tools

if [ "$engine" = podman ]; then
    # Machine limits of VMs like the CI's: see the file. /etc is left alone.
    export CONTAINERS_CONF=$root/ci/containers.conf
    need=()
    for tool in podman runc catatonit fuse-overlayfs slirp4netns newuidmap mmdebstrap netavark; do
        command -v "$tool" >/dev/null || [ -x "/usr/lib/podman/$tool" ] || need+=("$tool")
    done
    if [ "${#need[@]}" -gt 0 ]; then
        say "installing podman and its helpers (missing: ${need[*]})"
        sudo=$([ "$(id -u)" = 0 ] || echo sudo)
        $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
            --no-install-recommends podman runc catatonit fuse-overlayfs slirp4netns uidmap \
            mmdebstrap netavark aardvark-dns >/dev/null
    fi
    # Debian's podman-compose 1.0.3 ignores profiles and leaves ${VAR:-} unexpanded.
    if [ ! -x .venv/bin/podman-compose ]; then
        [ -d .venv ] || python3 -m venv .venv
        .venv/bin/pip install -q "podman-compose==1.6.0"
    fi
    compose=("$root/.venv/bin/podman-compose")
else
    compose=(docker compose)
fi
compose+=(-p "$project" -f docker-compose.yml -f ci/compose.check.yml --env-file "$work/.env")
ctr() { "$engine" "$@"; }

# ------------------------------------------------------------------ cleanup

cleanup() {
    status=$?
    set +e
    if [ "$status" != 0 ] && [ -f "$work/.env" ]; then
        echo "container-check: the stack's last logs:" >&2
        "${compose[@]}" logs --tail 30 >&2 2>&1
    fi
    [ -f "$work/.env" ] && "${compose[@]}" down -v --timeout 10 >/dev/null 2>&1
    ctr rm -f -v -t 5 itmcheck-mongo itmcheck-job >/dev/null 2>&1
    [ -f "$work/images.pid" ] && kill "$(cat "$work/images.pid")" 2>/dev/null
    rm -rf "$work"
    [ "$status" = 0 ] && say "container check passed" || echo "container-check: FAILED" >&2
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ images

image_present() { ctr image inspect "$1" >/dev/null 2>&1; }
# Builds use the host's network: pip reaches the index as the host does, whatever
# NAT the container network has (or lacks) on this machine.

if [ "$standins" = 1 ] && ! image_present docker.io/library/python:3.11-slim-bookworm; then
    say "stand-in base image python:3.11-slim-bookworm (mmdebstrap)"
    # The CA certificates added to this host (e.g. a TLS-inspecting proxy's) go
    # into the rootfs too, or pip in the build cannot reach the package index.
    mmdebstrap --quiet --variant=minbase \
        --include=python3,python3-venv,python-is-python3,ca-certificates \
        --customize-hook='cp -r /usr/local/share/ca-certificates/. "$1/usr/local/share/ca-certificates/"' \
        --customize-hook='chroot "$1" update-ca-certificates >/dev/null 2>&1' \
        bookworm "$work/rootfs.tar" http://deb.debian.org/debian </dev/null
    ctr import --quiet --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' \
        "$work/rootfs.tar" docker.io/library/python:3.11-slim-bookworm >/dev/null
    rm -f "$work/rootfs.tar"
fi
if [ "$standins" = 1 ] && ! image_present docker.io/library/mongo:7; then
    say "stand-in image mongo:7 (ci/mongo-standin: SecantusDB)"
    ctr build --quiet --pull=never --network host -t docker.io/library/mongo:7 ci/mongo-standin \
        >/dev/null
fi

say "building the Dockerfile (itm:local)"
build_started=$SECONDS
pull=$([ "$standins" = 1 ] && echo --pull=never || echo --pull)
ctr build --quiet "$pull" --network host -t itm:local . >/dev/null
echo "built in $((SECONDS - build_started)) s; $(ctr image inspect itm:local --format '{{.Size}}' \
    | awk '{printf "%.0f MB", $1 / 1e6}')"

# ------------------------------------------------------------------ 1. the image

say "1. --help and the user"
ctr run --rm itm:local python -m itm.run --help | sed -n 1,3p
uid=$(ctr run --rm itm:local id -u)
[ "$uid" = 1000 ] || fail "the image runs as uid $uid, not 1000"
echo "uid $uid"

# ------------------------------------------------------------------ 2. a job in the container

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
expect=$(python3 ci/imageserver.py expect)

say "2. a job in the container, host network"
images_port=$(free_port)
mongo_port=$(free_port)
python3 ci/imageserver.py serve --port "$images_port" --lifetime 600 2>"$work/images.log" &
echo $! >"$work/images.pid"
# The served bytes are the ones the expectation names.
python3 - "http://127.0.0.1:$images_port" "$expect" <<'EOF'
import hashlib, json, sys, time, urllib.request
base, expect = sys.argv[1], json.loads(sys.argv[2])
for _ in range(50):
    try:
        served = sorted(hashlib.md5(urllib.request.urlopen(f"{base}/img/{n}.png").read()).hexdigest()
                        for n in (1, 2))
        break
    except OSError:
        time.sleep(0.2)
assert served == expect["images"], (served, expect["images"])
EOF
python3 ci/imageserver.py urls "http://127.0.0.1:$images_port" >"$work/urls.txt"
ctr run -d --name itmcheck-mongo --network host docker.io/library/mongo:7 \
    mongod --bind_ip 127.0.0.1 --port "$mongo_port" >/dev/null
uri="mongodb://127.0.0.1:$mongo_port"
# The job needs loopback fetching (ITM_ALLOW_PRIVATE_ADDRESSES), and a /dev/shm
# that holds its local Ray's object store: Ray sizes it at 30% of the memory, and
# falls back to disk (with a warning) when /dev/shm is smaller.
shm=$(awk '/^MemTotal:/ {print int($2 * 0.35 / 1024) "m"}' /proc/meminfo)
ctr run --rm --name itmcheck-job --network host --shm-size "$shm" \
    -v "$work/urls.txt:/data/urls.txt:ro" -e ITM_ALLOW_PRIVATE_ADDRESSES=1 \
    -e ITM_MONGO_URI="$uri" \
    itm:local python -m itm.run --urls /data/urls.txt --no-serve 2>&1 \
    | tee "$work/job.log" | grep -E "^(run |  success|  errors|itm: )"
grep -q "^  errors     3 " "$work/job.log" || fail "the job in the container did not end as expected"
ctr run --rm -i --network host -e ITM_MONGO_URI="$uri" itm:local python - "$expect" \
    <ci/verify_store.py
ctr rm -f -v -t 5 itmcheck-mongo >/dev/null
kill "$(cat "$work/images.pid")" && rm "$work/images.pid"

# ------------------------------------------------------------------ 3. the compose stack

say "3. the compose stack"
cp .env.example "$work/.env"
python3 ci/imageserver.py urls http://images:8000 >"$work/stack-urls.txt"
export ITM_CHECK_URLS=$work/stack-urls.txt

container() {  # the id of a service's (first) container
    ctr ps -aq --filter "label=com.docker.compose.project=$project" \
        --filter "label=com.docker.compose.service=$1" | head -1
}
healthy() {
    local id
    id=$(container "$1")
    [ -n "$id" ] || return 1
    if [ "$engine" = podman ]; then
        ctr healthcheck run "$id" >/dev/null 2>&1  # podman 4.3 has no timer without systemd
    else
        [ "$(ctr inspect -f '{{.State.Health.Status}}' "$id")" = healthy ]
    fi
}
wait_healthy() {
    local deadline=$((SECONDS + 180))
    for service in "$@"; do
        until healthy "$service"; do
            [ "$SECONDS" -lt "$deadline" ] || fail "$service is not healthy after 180 s"
            sleep 3
        done
        echo "$service: healthy"
    done
}

# podman-compose cannot wait on service_healthy: start in the order depends_on gives.
"${compose[@]}" up -d --no-deps mongo ray-head images >/dev/null 2>&1
wait_healthy mongo ray-head
"${compose[@]}" up -d --no-deps ray-worker api >/dev/null 2>&1
wait_healthy api
head=$(container ray-head)
ctr exec "$head" python -c '
import time, ray
ray.init("auto", logging_level="ERROR")
for _ in range(60):
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) >= 2:
        break
    time.sleep(2)
print(f"Ray cluster: {len(nodes)} nodes")
assert len(nodes) >= 2
'
# The job's user (the head's ITM_MONGO_URI) authenticates. (The job's own first
# check waits 30 s in the stack, ITM_MONGO_TIMEOUT: podman's DNS stalls 5-10 s while
# a container joins or leaves the network, as the job's container does.)
ctr exec "$head" python -c '
import os, time
from pymongo import MongoClient
client = MongoClient(os.environ["ITM_MONGO_URI"], serverSelectionTimeoutMS=60_000)
print("MongoDB as itm-job:", client.itm.command("ping"))
'

"${compose[@]}" up -d --no-deps job >/dev/null 2>&1
job=$(container job)
status=$(ctr wait "$job")
ctr logs "$job" 2>&1 | grep -E "^(run |  success|  errors|itm: |Job .* (succeeded|failed))" || true
[ "$status" = 0 ] || fail "the job service exited with $status"
echo "job service: exit 0"

api=$(container api)
ctr exec -i "$api" python - "$expect" --read-only <ci/verify_store.py
python3 - "$expect" <<'EOF'
import json, sys, time, urllib.error, urllib.request
expect = json.loads(sys.argv[1])
base = "http://127.0.0.1:5000"
def get(path, tries=10):
    """A 503 is the API's "try again" (a MongoDB connection still opening, say):
    wait its Retry-After, as a client should."""
    try:
        with urllib.request.urlopen(base + path, timeout=30) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read()
    except urllib.error.HTTPError as error:
        if error.code != 503 or tries == 1:
            raise
        print(f"GET {path}: 503, retrying in {error.headers['Retry-After']} s")
        time.sleep(float(error.headers["Retry-After"]))
        return get(path, tries - 1)
status, _, body = get("/healthz")
assert status == 200 and json.loads(body)["status"] == "ok", body
print("GET /healthz: 200", body.decode())
status, _, body = get("/monitoring?format=json")
totals = json.loads(body)["totals"]
assert status == 200 and (totals["success"], totals["error"]) == (
    expect["success"], len(expect["reasons"])), totals
print("GET /monitoring?format=json: 200, totals", totals)
for md5 in expect["images"]:
    status, kind, body = get(f"/image/{md5}")
    assert status == 200 and kind == "image/png" and body.startswith(b"\x89PNG"), (status, kind)
    print(f"GET /image/{md5}: 200 {kind}, {len(body)} bytes")
EOF
