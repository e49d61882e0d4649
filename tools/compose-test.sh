#!/usr/bin/env bash
# make test-compose: the real compose.yaml, scaled to 4 workers, on a real
# Docker engine, driven by `docker compose` (Compose v2) and tested over
# HTTP (e2e/compose_test.go). From a fresh Debian machine it installs
# Docker and debootstrap, builds Compose v2 from its Go module (once per
# pinned version, cached) as the docker CLI plugin, starts an engine when
# none answers (its own data root, kept between runs as the image cache),
# makes the base images without a registry (debootstrap + docker import,
# then stand-ins built on that), and always tears the stack down.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${PYRUNNER_COMPOSE_CACHE:-/var/cache/pyrunner-compose}
ENGINE=/run/pyrunner-docker
MIRROR=${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit} /^deb / {print $2; exit}' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -n1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
t0=$(date +%s)
say() { echo "test-compose [$(( $(date +%s) - t0 ))s]: $*"; }

# 1. Tools.
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y "${need[@]}" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y "${need[@]}" >/dev/null; }
fi
# Debian's client matches Debian's engine (a newer docker on PATH may not).
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER=$(command -v docker)
export PYRUNNER_DOCKER=$DOCKER

# Compose v2, the `docker compose` users run: built from its Go module
# (go install refuses it: its go.mod has exclude directives), kept in the
# cache per version, installed as the CLI plugin.
COMPOSE_VERSION=v2.40.3
COMPOSE_BIN=$CACHE/docker-compose-$COMPOSE_VERSION
if [ ! -x "$COMPOSE_BIN" ]; then
  say "building Compose $COMPOSE_VERSION from its Go module (a few minutes, once)"
  mkdir -p "$CACHE"
  c0=$(date +%s)
  dir=$(GOFLAGS=-mod=mod go mod download -json "github.com/docker/compose/v2@$COMPOSE_VERSION" \
    | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  (cd "$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION" \
    -o "$COMPOSE_BIN.part" ./cmd) && mv "$COMPOSE_BIN.part" "$COMPOSE_BIN"
  say "Compose $COMPOSE_VERSION built in $(( $(date +%s) - c0 ))s"
fi
mkdir -p "$HOME/.docker/cli-plugins"
ln -sf "$COMPOSE_BIN" "$HOME/.docker/cli-plugins/docker-compose"
$DOCKER compose version >/dev/null || { echo "test-compose: docker compose does not run" >&2; exit 1; }

# 2. An engine: the one that answers, or our own.
started_engine=
if ! $DOCKER info >/dev/null 2>&1; then
  export DOCKER_HOST=unix://$ENGINE/docker.sock
  if ! $DOCKER info >/dev/null 2>&1; then
    say "starting dockerd (data root /var/lib/pyrunner-docker)"
    mkdir -p "$ENGINE" /var/lib/pyrunner-docker
    driver=overlay2
    mkdir -p /tmp/pyrunner-ovl/{l,u,w,m}
    mount -t overlay overlay -o lowerdir=/tmp/pyrunner-ovl/l,upperdir=/tmp/pyrunner-ovl/u,workdir=/tmp/pyrunner-ovl/w /tmp/pyrunner-ovl/m 2>/dev/null \
      && umount /tmp/pyrunner-ovl/m || driver=vfs
    rm -rf /tmp/pyrunner-ovl
    nohup dockerd --storage-driver "$driver" --data-root /var/lib/pyrunner-docker --exec-root "$ENGINE/exec" \
      -H "$DOCKER_HOST" --pidfile "$ENGINE/dockerd.pid" >"$ENGINE/dockerd.log" 2>&1 &
    started_engine=$!
    for _ in $(seq 1 120); do $DOCKER info >/dev/null 2>&1 && break; sleep 0.5; done
    $DOCKER info >/dev/null || { tail -20 "$ENGINE/dockerd.log"; exit 1; }
  fi
fi
PROJECT=pyrunner-compose-test
teardown() {
  say "tearing down"
  $DOCKER compose -p "$PROJECT" -f compose.yaml -f tools/compose/override.yaml --profile mysql down -v --remove-orphans >/dev/null 2>&1 || true
  if [ -n "$started_engine" ]; then
    kill "$started_engine" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$started_engine" 2>/dev/null || break; sleep 0.5; done
  fi
}
trap teardown EXIT

# 3. Base images, without a registry.
if ! $DOCKER image inspect pyrunner-standin/debian-rootfs:bookworm >/dev/null 2>&1; then
  mkdir -p "$CACHE"
  if [ ! -f "$CACHE/bookworm.tar" ]; then
    say "debootstrap bookworm from $MIRROR"
    rm -rf "$CACHE/rootfs"
    debootstrap --variant=minbase bookworm "$CACHE/rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
      || { tail -20 "$CACHE/debootstrap.log"; exit 1; }
    tar -C "$CACHE/rootfs" -cf "$CACHE/bookworm.tar.part" . && mv "$CACHE/bookworm.tar.part" "$CACHE/bookworm.tar"
    rm -rf "$CACHE/rootfs"
  fi
  $DOCKER import "$CACHE/bookworm.tar" pyrunner-standin/debian-rootfs:bookworm >/dev/null
fi
say "stand-in images"
cas=$(mktemp -d)
mkdir -p "$cas/local"
cp /usr/local/share/ca-certificates/*.crt "$cas/local/" 2>/dev/null || true
cp /etc/ssl/certs/ca-certificates.crt "$cas/"
$DOCKER build -q --build-arg=ROOTFS_IMAGE=pyrunner-standin/debian-rootfs:bookworm -t pyrunner-standin/debian:bookworm \
  -f tools/compose/debian.Dockerfile "$cas" >/dev/null
rm -rf "$cas"
base=--build-arg=BASE_IMAGE=pyrunner-standin/debian:bookworm
$DOCKER build -q $base -t pyrunner-standin/golang:1.26-bookworm -f tools/compose/golang.Dockerfile "$(go env GOROOT)" >/dev/null
$DOCKER build -q $base -t pyrunner-standin/redis:7.2 -f tools/compose/redis.Dockerfile tools/compose >/dev/null
$DOCKER build -q $base -t pyrunner-standin/mariadb:11.4 -f tools/compose/mariadb.Dockerfile tools/compose >/dev/null

# 4. The test itself: builds the project's images from docker/*.Dockerfile
# through compose, and drives the stack.
export PYRUNNER_COMPOSE_TEST=1 PYRUNNER_COMPOSE_PROJECT=$PROJECT GOPROXY=$(go env GOPROXY)
say "go test ./e2e -run TestCompose"
set +e
go test -count=1 -timeout 45m -v -run 'TestCompose' ./e2e 2>&1 | tee "${PYRUNNER_COMPOSE_LOG:-/tmp/pyrunner-compose-test.log}"
status=${PIPESTATUS[0]}
set -e
say "done (exit $status)"
exit "$status"
