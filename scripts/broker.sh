#!/usr/bin/env bash
# RabbitMQ for development and tests, listening on 127.0.0.1 only.
#
#   scripts/broker.sh start    start it (no-op when it already answers) and wait for AMQP
#   scripts/broker.sh stop     stop it (no-op when it is not running)
#   scripts/broker.sh status   one line; exit 0 when AMQP answers on 127.0.0.1:5672
#   scripts/broker.sh install  apt-install Debian's rabbitmq-server when missing (root); no start
#
# Where a Docker engine answers (`docker info`), the `rabbitmq` service of docker-compose.yml
# is used. Otherwise Debian's rabbitmq-server is used (installed with apt-get when missing and
# running as root), configured for loopback only through /etc/rabbitmq.
#
# Environment:
#   BROKER_MODE=auto|docker|debian   force one way of running it (default: auto)
#   BROKER_WAIT=90                   seconds to wait for the broker to come up
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMPOSE_FILE="$ROOT/docker-compose.yml"
# shellcheck source=lib/amqp.sh
source "$ROOT/scripts/lib/amqp.sh"
# shellcheck source=lib/docker.sh
source "$ROOT/scripts/lib/docker.sh"
HOST=127.0.0.1
PORT=5672
WAIT="${BROKER_WAIT:-90}"
MODE="${BROKER_MODE:-auto}"

ETC=/etc/rabbitmq
LOG_DIR=/var/log/rabbitmq
NODENAME=rabbit@localhost
APP_USER=taskshuttle
# Any epmd that a CLI call below happens to start listens on loopback too (the CLI tools read
# /etc/rabbitmq/rabbitmq-env.conf, but that file may not have been written yet).
export ERL_EPMD_ADDRESS=$HOST

log() { echo "broker: $*"; }
die() {
    echo "broker: error: $*" >&2
    exit 1
}

# --- probes ----------------------------------------------------------------------------------

# True when something on HOST:PORT answers AMQP (see scripts/lib/amqp.sh).
amqp_ok() {
    amqp_answers "$HOST" "$PORT"
}

compose() {
    local command
    command="$(compose_command)" ||
        die "a Docker engine answers but neither 'docker compose' nor 'docker-compose' is installed"
    # shellcheck disable=SC2086  # "docker compose" is two words, split on purpose
    $command -f "$COMPOSE_FILE" "$@"
}

pick_mode() {
    case "$MODE" in
        docker)
            engine_answers || die "BROKER_MODE=docker but no Docker engine answers ('docker info' failed)"
            echo docker
            ;;
        debian) echo debian ;;
        auto) if engine_answers; then echo docker; else echo debian; fi ;;
        *) die "BROKER_MODE must be auto, docker or debian (got '$MODE')" ;;
    esac
}

wait_for_amqp() {
    local deadline=$1
    until amqp_ok; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 0.5
    done
}

# --- Debian's rabbitmq-server ----------------------------------------------------------------

show_log_tail() {
    local f
    echo "broker: ---- last lines of the broker's logs ----" >&2
    for f in "$LOG_DIR/startup_err" "$LOG_DIR/startup_log" "$LOG_DIR/$NODENAME.log"; do
        if [[ -s "$f" ]]; then
            echo "broker: == $f" >&2
            tail -n 30 "$f" >&2 || true
        fi
    done
}

ensure_installed() {
    if [[ -x /usr/sbin/rabbitmq-server && -x /usr/sbin/rabbitmqctl ]]; then
        return 0
    fi
    if [[ $EUID -ne 0 ]]; then
        die "rabbitmq-server is not installed. Install it as root with:
    apt-get update && apt-get install -y rabbitmq-server
or start a Docker engine, so that this script can use docker-compose.yml instead."
    fi
    log "installing rabbitmq-server with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q rabbitmq-server
}

# write_conf PATH CONTENT: (re)write a file owned by rabbitmq when its content differs.
write_conf() {
    local path=$1 content=$2 tmp
    if [[ -f "$path" ]] && [[ "$(cat "$path")" == "$content" ]]; then
        return 0
    fi
    [[ $EUID -eq 0 ]] || die "$path needs writing and that takes root"
    tmp="$(mktemp)"
    printf '%s\n' "$content" >"$tmp"
    install -o rabbitmq -g rabbitmq -m 0644 "$tmp" "$path"
    rm -f "$tmp"
    log "wrote $path"
}

write_configs() {
    mkdir -p "$ETC"
    [[ $EUID -ne 0 ]] || chown rabbitmq:rabbitmq "$ETC"
    write_conf "$ETC/rabbitmq.conf" "# Written by scripts/broker.sh: listen on loopback only.
listeners.tcp.default = $HOST:$PORT
management.tcp.ip = $HOST
management.tcp.port = 15672"
    write_conf "$ETC/rabbitmq-env.conf" "# Written by scripts/broker.sh: loopback only, for the server and every CLI tool.
NODENAME=$NODENAME
NODE_IP_ADDRESS=$HOST
NODE_PORT=$PORT
ERL_EPMD_ADDRESS=$HOST
SERVER_ADDITIONAL_ERL_ARGS=\"-kernel inet_dist_use_interface {127,0,0,1}\"
CTL_ERL_ARGS=\"-kernel inet_dist_use_interface {127,0,0,1}\""
    write_conf "$ETC/enabled_plugins" "[rabbitmq_management]."
}

epmd_names() {
    command -v epmd >/dev/null 2>&1 || return 0
    epmd -names 2>/dev/null | grep '^name ' || true
}

# An epmd started earlier without ERL_EPMD_ADDRESS listens on every interface. Replace it
# when no node is registered with it; only warn otherwise.
fix_wildcard_epmd() {
    command -v ss >/dev/null 2>&1 || return 0
    if ! ss -Hltn 'sport = :4369' | awk '{print $4}' | grep -qvE '^(127\.0\.0\.1|\[::1\]):'; then
        return 0
    fi
    if [[ -z "$(epmd_names)" ]]; then
        log "epmd listens beyond loopback and has no nodes: restarting it on $HOST"
        epmd -kill >/dev/null 2>&1 || true
    else
        log "warning: epmd (port 4369) listens beyond loopback; 'epmd -kill' once no node runs"
    fi
}

# The user that docker-compose.yml creates, so that one URL works whichever way the broker runs:
# amqp://taskshuttle:taskshuttle@127.0.0.1:5672/%2F (guest/guest works too, from loopback).
ensure_app_user() {
    if rabbitmqctl -q list_users 2>/dev/null | awk '{print $1}' | grep -qx "$APP_USER"; then
        return 0
    fi
    log "adding user $APP_USER (password $APP_USER) with full rights on vhost /"
    rabbitmqctl -q add_user "$APP_USER" "$APP_USER" >/dev/null
    rabbitmqctl -q set_permissions -p / "$APP_USER" '.*' '.*' '.*' >/dev/null
}

node_pings() {
    rabbitmq-diagnostics -q ping >/dev/null 2>&1
}

start_debian() {
    local started=$SECONDS deadline=$((SECONDS + WAIT))
    ensure_installed
    if [[ $EUID -ne 0 && "$(id -un)" != rabbitmq ]]; then
        die "Debian's rabbitmq-server must be started as root (or as the rabbitmq user)"
    fi
    write_configs
    mkdir -p "$LOG_DIR"
    [[ $EUID -ne 0 ]] || chown rabbitmq:rabbitmq "$LOG_DIR"

    if node_pings; then
        # The Erlang node runs but AMQP does not answer: the app was stopped (stop_app).
        log "node $NODENAME runs but its app is stopped: rabbitmqctl start_app"
        rabbitmqctl -q start_app
    else
        fix_wildcard_epmd
        log "starting rabbitmq-server ($NODENAME) on $HOST:$PORT"
        rabbitmq-server -detached
        until node_pings; do
            if ((SECONDS >= deadline)); then
                show_log_tail
                die "node $NODENAME did not answer 'rabbitmq-diagnostics ping' within ${WAIT}s"
            fi
            sleep 0.5
        done
        log "node answers ping after $((SECONDS - started))s; waiting for startup"
        if ! rabbitmqctl -q await_startup --timeout "$WAIT"; then
            show_log_tail
            die "rabbitmqctl await_startup failed"
        fi
    fi
    if ! wait_for_amqp "$deadline"; then
        show_log_tail
        die "nothing accepts AMQP on $HOST:$PORT after ${WAIT}s"
    fi
    ensure_app_user
    log "up on $HOST:$PORT after $((SECONDS - started))s"
}

stop_debian() {
    if [[ ! -x /usr/sbin/rabbitmqctl ]]; then
        log "rabbitmq-server is not installed: nothing to stop"
        return 0
    fi
    if ! node_pings; then
        log "not running"
        return 0
    fi
    local started=$SECONDS
    log "stopping $NODENAME (rabbitmqctl shutdown)"
    rabbitmqctl -q shutdown >/dev/null
    if [[ -z "$(epmd_names)" ]]; then
        epmd -kill >/dev/null 2>&1 || true
    fi
    log "stopped after $((SECONDS - started))s"
}

# --- Docker ----------------------------------------------------------------------------------

# With no registry, the image of docker-compose.yml cannot be pulled: use the stand-in that
# scripts/containers.sh builds from Debian's packages when it is there and the other is not.
pick_local_image() {
    local default=rabbitmq:3.13.7-management local_image
    [[ -z "${RABBITMQ_IMAGE:-}" ]] || return 0
    docker image inspect "$default" >/dev/null 2>&1 && return 0
    local_image="$(bash "$ROOT/scripts/containers.sh" env | sed -n 's/^RABBITMQ_IMAGE=//p')"
    if docker image inspect "$local_image" >/dev/null 2>&1; then
        export RABBITMQ_IMAGE=$local_image
        log "using the local image $RABBITMQ_IMAGE ($default is not here)"
    fi
}

start_docker() {
    local started=$SECONDS deadline=$((SECONDS + WAIT))
    [[ -f "$COMPOSE_FILE" ]] || die "$COMPOSE_FILE not found"
    pick_local_image
    log "starting the rabbitmq service with docker compose"
    # No `--wait`: Compose v1 lacks it; AMQP answering is waited for below.
    if ! compose up -d rabbitmq; then
        compose logs --tail 40 rabbitmq >&2 || true
        die "docker compose could not start the rabbitmq service"
    fi
    if ! wait_for_amqp "$deadline"; then
        compose logs --tail 40 rabbitmq >&2 || true
        die "nothing accepts AMQP on $HOST:$PORT after ${WAIT}s"
    fi
    log "up on $HOST:$PORT after $((SECONDS - started))s (docker)"
}

stop_docker() {
    log "stopping the rabbitmq service (docker compose stop)"
    compose stop rabbitmq
}

# --- commands --------------------------------------------------------------------------------

cmd_start() {
    local mode
    if amqp_ok; then
        log "already up on $HOST:$PORT"
        return 0
    fi
    mode="$(pick_mode)"
    case "$mode" in
        docker) start_docker ;;
        debian) start_debian ;;
    esac
}

cmd_stop() {
    local mode
    mode="$(pick_mode)"
    case "$mode" in
        docker) stop_docker ;;
        debian) stop_debian ;;
    esac
}

cmd_status() {
    if amqp_ok; then
        log "up: AMQP answers on $HOST:$PORT"
        return 0
    fi
    log "down: nothing answers AMQP on $HOST:$PORT"
    return 1
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    install) ensure_installed ;;
    *)
        echo "usage: $0 start|stop|status|install" >&2
        exit 2
        ;;
esac
