#!/usr/bin/env bash
# A Docker engine and the project's images, on a machine that reaches no image registry.
#
#   scripts/containers.sh setup    engine + images: what the tests need (idempotent)
#   scripts/containers.sh engine   Docker and Compose installed when missing (root), dockerd started
#                                  when nothing answers `docker info`
#   scripts/containers.sh images   the local images, each built only when missing (REBUILD=1: all)
#   scripts/containers.sh stop     stop the dockerd that this script started (no-op otherwise)
#   scripts/containers.sh status   one line; exit 0 when an engine answers
#   scripts/containers.sh env      the variables that make docker-compose.yml use the local images,
#                                  as shell assignments (eval "$(scripts/containers.sh env)")
#
# The images users pull (rabbitmq:3.13.7-management, python:3.11-slim) stay the defaults of
# docker-compose.yml and the Dockerfile; these local ones stand in for them through variables:
#   local/bookworm:base          debootstrap --variant=minbase bookworm, imported (no registry)
#   taskshuttle/rabbitmq:local   compose/rabbitmq/Dockerfile: Debian's rabbitmq-server
#   taskshuttle/python:local     compose/python/Dockerfile: Debian's Python 3.11 in a venv
#   taskshuttle:local            ./Dockerfile on taskshuttle/python:local, from a wheelhouse
#                                built here (a container reaches no package index of ours)
#
# Each step prints what it does and how long it took; a failure is one line on stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${TASKSHUTTLE_DOCKER_STATE:-/var/tmp/taskshuttle-docker}"
DOCKERD_PID="$STATE/dockerd.pid"
DOCKERD_LOG="$STATE/dockerd.log"
ENGINE_WAIT="${ENGINE_WAIT:-60}"
# shellcheck source=lib/docker.sh
source "$ROOT/scripts/lib/docker.sh"

BASE_IMAGE=local/bookworm:base
RABBITMQ_IMAGE=taskshuttle/rabbitmq:local
PYTHON_IMAGE=taskshuttle/python:local
APP_IMAGE=taskshuttle:local

log() { echo "containers: $*"; }
die() {
    echo "containers: error: $*" >&2
    exit 1
}

# timed NAME COMMAND...: run COMMAND, then say how long it took.
timed() {
    local name=$1 t0=$SECONDS
    shift
    log "$name ..."
    "$@"
    log "$name: done in $((SECONDS - t0))s"
}

need_root() {
    [[ $EUID -eq 0 ]] || die "$1 needs root (run this script as root, or install Docker yourself)"
}

# --- the engine ------------------------------------------------------------------------------

install_packages() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || die "apt-get update failed"
    # Debian's policy-rc.d keeps the packages from starting anything; dockerd is started below.
    apt-get install -y -q docker.io docker-compose debootstrap >/dev/null ||
        die "apt-get install docker.io docker-compose debootstrap failed"
}

ensure_installed() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(dockerd)
    command -v docker >/dev/null 2>&1 || missing+=(docker)
    compose_command >/dev/null 2>&1 || missing+=(compose)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    ((${#missing[@]} == 0)) && return 0
    need_root "installing ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 || die "no apt-get here: cannot install ${missing[*]}"
    timed "installing docker.io, docker-compose and debootstrap from Debian (missing: ${missing[*]})" \
        install_packages
}

start_dockerd() {
    local deadline=$((SECONDS + ENGINE_WAIT))
    mkdir -p "$STATE"
    # A dockerd killed with SIGKILL leaves its pid file, and the next one refuses to start.
    if [[ -f /var/run/docker.pid ]] && ! pgrep -x dockerd >/dev/null; then
        rm -f /var/run/docker.pid
    fi
    setsid dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
    echo $! >"$DOCKERD_PID"
    until engine_answers; do
        if ! kill -0 "$(cat "$DOCKERD_PID")" 2>/dev/null; then
            tail -n 5 "$DOCKERD_LOG" >&2 || true
            die "dockerd exited at start-up (log: $DOCKERD_LOG)"
        fi
        if ((SECONDS >= deadline)); then
            die "dockerd did not answer 'docker info' within ${ENGINE_WAIT}s (log: $DOCKERD_LOG)"
        fi
        sleep 0.5
    done
}

cmd_engine() {
    if engine_answers; then
        log "engine: answers ($(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?'))"
        # An engine of the user's own is used as it is; only Compose is needed beside it.
        compose_command >/dev/null 2>&1 || ensure_installed
        return 0
    fi
    ensure_installed
    need_root "starting dockerd"
    timed "starting dockerd (log: $DOCKERD_LOG)" start_dockerd
    log "engine: $(docker version -f 'server {{.Server.Version}}, client {{.Client.Version}}'), $(compose_command)"
}

# --- images ----------------------------------------------------------------------------------

have_image() {
    docker image inspect "$1" >/dev/null 2>&1
}

debian_mirror() {
    local mirror=""
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
    fi
    if [[ -z "$mirror" && -f /etc/apt/sources.list ]]; then
        mirror="$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list)"
    fi
    echo "${mirror:-http://deb.debian.org/debian}"
}

build_base() {
    local rootfs
    need_root "debootstrap"
    command -v debootstrap >/dev/null 2>&1 || ensure_installed
    rootfs="$(mktemp -d /var/tmp/taskshuttle-rootfs.XXXXXX)"
    if ! debootstrap --variant=minbase bookworm "$rootfs" "$(debian_mirror)" >"$STATE/debootstrap.log" 2>&1; then
        rm -rf "$rootfs"
        die "debootstrap failed (log: $STATE/debootstrap.log)"
    fi
    # Packages installed in an image must not try to start services.
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 755 "$rootfs/usr/sbin/policy-rc.d"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
}

build_from() {
    local tag=$1 context=$2
    shift 2
    docker build -q -t "$tag" "$@" "$context" >"$STATE/build.log" 2>&1 || {
        tail -n 20 "$STATE/build.log" >&2
        die "docker build of $tag failed (log: $STATE/build.log)"
    }
}

# The project and its dependencies as wheels, so that the image installs with no index.
build_wheelhouse() {
    local wheels="$ROOT/.wheels" python="${PYTHON:-$ROOT/.venv/bin/python}"
    [[ -x "$python" ]] || python=python3
    rm -rf "$wheels"
    "$python" -m pip wheel -q --wheel-dir "$wheels" "$ROOT" >"$STATE/wheels.log" 2>&1 ||
        die "pip wheel failed (log: $STATE/wheels.log)"
}

build_app() {
    build_wheelhouse
    build_from "$APP_IMAGE" "$ROOT" --build-arg "BASE_IMAGE=$PYTHON_IMAGE"
    rm -rf "$ROOT/.wheels"
}

# image TAG DESCRIPTION COMMAND...: build TAG with COMMAND unless it exists (or REBUILD=1).
image() {
    local tag=$1 what=$2
    shift 2
    if [[ "${REBUILD:-0}" != 1 ]] && have_image "$tag"; then
        log "image $tag: present, kept"
        return 0
    fi
    timed "image $tag: building ($what)" "$@"
}

cmd_images() {
    engine_answers || die "no Docker engine answers: run '$0 engine' first"
    mkdir -p "$STATE"
    image "$BASE_IMAGE" "debootstrap bookworm from $(debian_mirror)" build_base
    image "$RABBITMQ_IMAGE" "Debian's rabbitmq-server" \
        build_from "$RABBITMQ_IMAGE" "$ROOT/compose/rabbitmq" --build-arg "BASE_IMAGE=$BASE_IMAGE"
    image "$PYTHON_IMAGE" "Debian's python3" \
        build_from "$PYTHON_IMAGE" "$ROOT/compose/python" --build-arg "BASE_IMAGE=$BASE_IMAGE"
    # The application image follows the tree: REBUILD_APP=1 (the tests set it) rebuilds it
    # alone, in seconds, on top of the kept base images.
    if [[ "${REBUILD_APP:-0}" == 1 ]]; then
        timed "image $APP_IMAGE: building (this tree)" build_app
    else
        image "$APP_IMAGE" "this tree" build_app
    fi
}

# --- commands --------------------------------------------------------------------------------

cmd_stop() {
    local pid
    if [[ ! -f "$DOCKERD_PID" ]]; then
        log "no dockerd started by this script: nothing to stop"
        return 0
    fi
    pid="$(cat "$DOCKERD_PID")"
    if ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$DOCKERD_PID"
        log "dockerd (pid $pid) is not running"
        return 0
    fi
    local t0=$SECONDS
    # dockerd stops its containers (each with its stop timeout) and its containerd, then exits.
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS - t0 >= 60)); then
            log "dockerd (pid $pid) still running after 60s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            rm -f /var/run/docker.pid
            break
        fi
        sleep 0.5
    done
    rm -f "$DOCKERD_PID"
    log "dockerd (pid $pid) stopped in $((SECONDS - t0))s"
}

cmd_status() {
    if engine_answers; then
        log "up: Docker $(docker version -f '{{.Server.Version}}'), $(compose_command || echo 'no compose')"
        return 0
    fi
    log "down: no Docker engine answers"
    return 1
}

cmd_env() {
    echo "RABBITMQ_IMAGE=$RABBITMQ_IMAGE"
    echo "TASKSHUTTLE_IMAGE=$APP_IMAGE"
    echo "PYTHON_BASE_IMAGE=$PYTHON_IMAGE"
}

case "${1:-}" in
    setup)
        t0=$SECONDS
        cmd_engine
        cmd_images
        log "setup: done in $((SECONDS - t0))s"
        ;;
    engine) cmd_engine ;;
    images) cmd_images ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *)
        echo "usage: $0 setup|engine|images|stop|status|env" >&2
        exit 2
        ;;
esac
