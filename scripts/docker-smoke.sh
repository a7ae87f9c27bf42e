#!/usr/bin/env bash
# The container, built and run on this machine (CI: .ci/run). Needs root (dockerd, apt-get).
#
#   bash scripts/docker-smoke.sh            # SMOKE_GPU=0 skips the GPU variant's build
#
# 1. Docker: installs Debian's docker.io when dockerd is missing; starts dockerd when none answers.
# 2. Base: when the Dockerfile's FROM image (BASE_IMAGE) is not in the daemon, builds it from
#    Debian packages (debootstrap minbase + python3.11 + the host's CA bundle) under that tag, so
#    no image registry is needed; the daemon keeps it, so later runs reuse it.
# 3. Builds the CPU image and the GPU variant (`--network host`: pip reaches the index as the
#    host does); the CPU image must carry no pip, compilers, tests or torch, and its hot path
#    must be the compiled one (built in the Dockerfile's native stage).
# 4. Trains a small bundle (`recsae train --dataset synthetic`), starts a redis-server on a free
#    loopback port and the CPU container (`--network host`, bundle mounted read-only as written,
#    a state volume), and checks: /readyz 200, GET /recommend?explain=true 200 with concepts, no
#    process runs as uid 0, the HEALTHCHECK reports healthy, and a policy PUT with the admin
#    token is served by a new container on the same state volume after Redis lost it.
# Everything it starts it stops; the first failed check exits 1 with a line saying which.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${SMOKE_IMAGE:-recsae-serve:latest}
GPU_IMAGE=${SMOKE_GPU_IMAGE:-recsae-serve:gpu}
BUILD_GPU=${SMOKE_GPU:-1}
PY=.venv/bin/python
T0=$(date +%s)
WORK=$(mktemp -d /tmp/recsae-docker-smoke.XXXXXX)
CID="" VOL="" REDIS_PID="" DOCKERD_PID="" TRAIN_PID=""

step() { echo "docker-smoke [$(($(date +%s) - T0))s] $*"; }
fail() {
  echo "docker-smoke: FAILED: $*" >&2
  if [[ -n $CID ]]; then
    echo "--- container log (last 40 lines) ---" >&2
    docker logs --tail 40 "$CID" >&2 2>&1 || true
  fi
  exit 1
}
cleanup() {
  local rc=$?
  if [[ -n $CID ]]; then docker rm -f "$CID" >/dev/null 2>&1 || true; fi
  if [[ -n $VOL ]]; then docker volume rm -f "$VOL" >/dev/null 2>&1 || true; fi
  if [[ -n $TRAIN_PID ]]; then kill "$TRAIN_PID" 2>/dev/null || true; wait "$TRAIN_PID" 2>/dev/null || true; fi
  if [[ -n $REDIS_PID ]]; then kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; fi
  if [[ -n $DOCKERD_PID ]]; then
    kill "$DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
# run a logged command; on failure show the end of its log
logged() {
  local log=$1; shift
  "$@" >"$log" 2>&1 || { tail -n 60 "$log" >&2; fail "$* (log above)"; }
}
# HTTP status of a GET (body to $WORK/body); 000 when nothing answers
http() { curl -s -o "$WORK/body" -w '%{http_code}' --max-time 5 "$@" || true; }
json() { "$PY" -c "import json, sys; d = json.load(open('$WORK/body')); $1"; }

[[ $(id -u) == 0 ]] || fail "run as root (it installs and starts dockerd)"
command -v curl >/dev/null || fail "curl is missing (apt-get install curl)"
command -v redis-server >/dev/null || fail "redis-server is missing (apt-get install redis-server)"
[[ -x $PY ]] || { step "no .venv: make install"; make install >/dev/null; }

# -- 1. Docker ---------------------------------------------------------------------------------
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  step "installing docker.io and debootstrap (Debian packages)"
  logged "$WORK/apt.log" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap"
fi
if ! docker info >/dev/null 2>&1; then
  step "starting dockerd (stopped again at exit)"
  setsid dockerd >"$WORK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { tail -n 30 "$WORK/dockerd.log" >&2; fail "dockerd did not start (log above)"; }
fi
export DOCKER_BUILDKIT=0  # the classic builder: BuildKit would fetch its frontend from a registry

# -- 2. Base image -----------------------------------------------------------------------------
BASE=$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile)
[[ -n $BASE ]] || fail "Dockerfile has no 'ARG BASE_IMAGE=' line"
if docker image inspect "$BASE" >/dev/null 2>&1; then
  step "base $BASE present"
else
  # Debian bookworm's python3 is 3.11: the only base this can stand in for
  [[ $BASE == python:3.11-* ]] || fail "$BASE is missing and only python:3.11-* can be made from Debian packages; docker pull it"
  step "base $BASE missing: building it from Debian packages (debootstrap; once per machine)"
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -1 || true)
  [[ -n $mirror ]] || mirror=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  rootfs=$WORK/rootfs
  logged "$WORK/debootstrap.log" debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}"
  ln -sf python3 "$rootfs/usr/bin/python"
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"  # trust what the host trusts
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' - "$BASE" >/dev/null \
    || fail "docker import of the base failed"
  rm -rf "$rootfs"
fi

# -- 3. Images (the bundle trains meanwhile) ---------------------------------------------------
step "training a small bundle in the background (recsae train --dataset synthetic --model bprmf)"
"$PY" -m recsae.cli train --dataset synthetic --model bprmf --out "$WORK/bundle" --work-dir "$WORK/train-work" \
  -q --sae-epochs 2 --expansion 8 --train-param epochs=2 --quality-budget 0 >"$WORK/train.log" 2>&1 &
TRAIN_PID=$!
build() {  # TAG VARIANT
  local t=$(date +%s)
  # the dependency stage tagged too: kept as the cache, and a replaced one is pruned below
  logged "$WORK/build-$2.log" docker build --network host --build-arg "VARIANT=$2" --target deps -t "recsae-serve-deps:$2" .
  logged "$WORK/build-$2.log" docker build --network host --build-arg "VARIANT=$2" -t "$1" .
  # drop replaced builds (untagged images with our label); the base and current layers stay
  docker image prune -f --filter label=org.opencontainers.image.title=recsae-serve >/dev/null
  step "built $1 ($2) in $(($(date +%s) - t))s: $(docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1e6}')"
}
build "$IMAGE" cpu
docker run --rm --network none --user 0 --entrypoint sh "$IMAGE" -c '
  for t in pip pip3 pip3.11 gcc cc c++ g++ clang make; do command -v "$t" && exit 1; done
  python -m pip --version 2>/dev/null && exit 1
  python -m ensurepip --version 2>/dev/null && exit 1
  python -c "import torch" 2>/dev/null && exit 1
  python -c "import pytest" 2>/dev/null && exit 1
  find /opt /usr/lib/python3* /usr/local/lib -type d \( -name tests -o -name test \) -path "*-packages/*" 2>/dev/null | grep . && exit 1
  test ! -e /opt/recsae/tests -a ! -e /opt/recsae/models
  python -c "import faiss" || exit 1
' || fail "the CPU image carries what it should not (pip, a compiler, torch, pytest or tests: printed above) or lacks faiss"
step "CPU image: no pip, compiler, torch or tests; faiss for bundles with an index"
# the compiled hot path was built in the image's native stage (it needs Debian's gcc there; set
# SMOKE_ALLOW_PY_HOTPATH=1 where the build cannot reach Debian's packages)
kind=$(docker run --rm --network none --entrypoint python "$IMAGE" -c "from service import hotpath; print(hotpath.KIND)") \
  || fail "service.hotpath does not import in the image"
[[ $kind == compiled || ${SMOKE_ALLOW_PY_HOTPATH:-0} == 1 ]] \
  || fail "the image's hot path is '$kind', not compiled: see the native stage of the build log ($WORK/build-cpu.log)"
step "CPU image: hot path $kind"

# -- 4. The container --------------------------------------------------------------------------
[[ -n $TRAIN_PID ]] && { wait "$TRAIN_PID" || { tail -n 40 "$WORK/train.log" >&2; TRAIN_PID=""; fail "recsae train failed (log above)"; }; }
TRAIN_PID=""
[[ -f $WORK/bundle/manifest.json ]] || fail "recsae train wrote no bundle"
USER_ID=$("$PY" -c "import numpy as np; print(np.load('$WORK/bundle/users.npz')['user_ids'][0])")

RPORT=$(free_port)
redis-server --bind 127.0.0.1 --port "$RPORT" --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 1 50); do redis-cli -p "$RPORT" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
redis-cli -p "$RPORT" ping 2>/dev/null | grep -q PONG || fail "redis-server did not start on 127.0.0.1:$RPORT"

PORT=$(free_port)
TOKEN=$("$PY" -c "import secrets; print(secrets.token_hex(24))")
VOL=recsae-smoke-state-$$
docker volume create "$VOL" >/dev/null
URL=http://127.0.0.1:$PORT
start_container() {
  CID=$(docker run -d --network host -v "$WORK/bundle:/bundle:ro" -v "$VOL:/var/lib/recsae/state" \
    -e RECSAE_HOST=127.0.0.1 -e RECSAE_PORT="$PORT" -e REDIS_URL="redis://127.0.0.1:$RPORT/0" \
    -e RECSAE_ADMIN_TOKEN="$TOKEN" "$IMAGE") || fail "docker run failed"
}
wait_200() {  # PATH: poll until 200 (60 s), fail when the container exits
  for _ in $(seq 1 600); do
    [[ $(http "$URL$1") == 200 ]] && return 0
    [[ $(docker inspect -f '{{.State.Running}}' "$CID") == true ]] || fail "the container exited before $1 answered 200"
    sleep 0.1
  done
  fail "GET $1 did not answer 200 within 60 s (last: $(http "$URL$1"))"
}

t_start=$(date +%s.%N)
start_container
wait_200 "/recommend?user_id=$USER_ID&k=5&explain=true"
first_answer=$(python3 -c "print(f'{$(date +%s.%N) - $t_start:.1f}')")
step "container answered /recommend 200 ${first_answer}s after docker run"

[[ $(http "$URL/readyz") == 200 ]] || fail "/readyz is not 200"
code=$(http "$URL/recommend?user_id=$USER_ID&k=5&explain=true")
[[ $code == 200 ]] || fail "GET /recommend?explain=true answered $code"
json "assert len(d['items']) == 5, d; a = d['active_latents']; assert a and all(x.get('description') for x in a), a" \
  || fail "GET /recommend?explain=true has no items or no concepts with a description: $(head -c 400 "$WORK/body")"
step "/readyz 200; /recommend?explain=true 200 with $(json "print(len(d['active_latents']))") concepts"

uids=$(docker top "$CID" -eo pid,uid,args | awk 'NR > 1 {print $2}' | sort -u | tr '\n' ' ')
[[ -n $uids && ! " $uids" =~ " 0 " ]] || fail "a container process runs as uid 0 (uids: $uids)"
docker top "$CID" -eo pid,uid,args | grep -q "bentoml serve" || fail "no bentoml process in the container"
step "container processes run as uid $uids"

for _ in $(seq 1 60); do
  health=$(docker inspect -f '{{.State.Health.Status}}' "$CID")
  [[ $health == healthy || $health == unhealthy ]] && break
  sleep 1
done
[[ $health == healthy ]] || fail "HEALTHCHECK status is '$health', not healthy"
step "HEALTHCHECK: healthy"

# A policy outlives its container through the state volume: Redis forgets it in between
# (FLUSHALL, as a Redis without persistence that restarted), so only the volume can bring it back.
code=$(http -X PUT -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{"latents": [0, {"latent": 1, "strength": 0.5}], "strength": 0.8}' "$URL/admin/policies/smoke")
[[ $code == 200 ]] || fail "PUT /admin/policies/smoke answered $code: $(head -c 300 "$WORK/body")"
cp "$WORK/body" "$WORK/policy.json"
docker stop -t 10 "$CID" >/dev/null
docker rm "$CID" >/dev/null
CID=""
redis-cli -p "$RPORT" flushall >/dev/null
start_container
wait_200 /readyz
code=$(http -H "authorization: Bearer $TOKEN" "$URL/admin/policies/smoke")
[[ $code == 200 ]] || fail "after the restart GET /admin/policies/smoke answered $code: $(head -c 300 "$WORK/body")"
json "p = json.load(open('$WORK/policy.json')); k = ('latents', 'strengths', 'strength', 'created_at'); assert all(d[x] == p[x] for x in k), (p, d)" \
  || fail "the policy after the restart differs from the one PUT"
code=$(http "$URL/recommend?user_id=$USER_ID&k=5&policy=smoke")
[[ $code == 200 ]] && json "assert d['policy'] == 'smoke'" || fail "GET /recommend?policy=smoke after the restart answered $code"
step "policy 'smoke' survived a new container on the state volume (Redis flushed in between)"

# -- GPU variant: built, not run (no GPU here) ------------------------------------------------
if [[ $BUILD_GPU == 1 ]]; then
  build "$GPU_IMAGE" gpu
  docker run --rm --network none --entrypoint python "$GPU_IMAGE" -c \
    "import onnxruntime as o; p = o.get_available_providers(); assert 'CUDAExecutionProvider' in p, p" \
    || fail "the GPU image's onnxruntime has no CUDAExecutionProvider"
fi

size() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1e6}'; }
echo "docker-smoke: OK in $(($(date +%s) - T0))s; first answer ${first_answer}s after docker run;" \
  "images: $IMAGE $(size "$IMAGE")$([[ $BUILD_GPU == 1 ]] && echo ", $GPU_IMAGE $(size "$GPU_IMAGE")"), base $BASE $(size "$BASE")"
