#!/usr/bin/env bash
# The whole test suite: what `make test` (and so CI) runs. Arguments go to pytest.
#
# The broker of the contract and integration suites:
#   - a container, the `rabbitmq` service of docker-compose.yml (compose project taskshuttle-test,
#     on 127.0.0.1:5670, management on 15670), wherever a Docker engine can be had: one answers,
#     or this runs as root and scripts/containers.sh can install and start one;
#   - Debian's rabbitmq-server on 127.0.0.1:5672 otherwise.
#   TASKSHUTTLE_TEST_BROKER=container|debian forces one. The run says which at its top, and
#   pytest's summary says which broker each suite used.
# The fault and cluster suites start private Debian nodes of their own (tests/rabbit_node.py,
# scripts/cluster.sh), so Debian's rabbitmq-server is installed either way; the compose suite
# (tests/compose) brings up a compose project of its own.
#
# What this script starts, it stops at the end: the compose project (and its volume), and
# dockerd when this run started it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
# shellcheck source=lib/amqp.sh
source "$ROOT/scripts/lib/amqp.sh"
# shellcheck source=lib/docker.sh
source "$ROOT/scripts/lib/docker.sh"
PROJECT=taskshuttle-test
AMQP_PORT="${TASKSHUTTLE_TEST_AMQP_PORT:-5670}"
MANAGEMENT_PORT="${TASKSHUTTLE_TEST_MANAGEMENT_PORT:-15670}"
MODE="${TASKSHUTTLE_TEST_BROKER:-auto}"
HEALTHY_WAIT=120

log() { echo "test: $*"; }
die() {
    echo "test: error: $*" >&2
    exit 1
}

# A Docker engine can be had: one answers, or root can install (apt-get) and start one.
engine_possible() {
    engine_answers && return 0
    [[ $EUID -eq 0 ]] && { command -v dockerd >/dev/null 2>&1 || command -v apt-get >/dev/null 2>&1; }
}

compose() {
    local command
    command="$(compose_command)" || die "no Compose command (docker compose or docker-compose)"
    # shellcheck disable=SC2086  # "docker compose" is two words, split on purpose
    $command -p "$PROJECT" -f "$ROOT/docker-compose.yml" "$@"
}

started_dockerd=0
started_project=0
cleanup() {
    local rc=$?
    if ((started_project)); then
        log "stopping compose project $PROJECT (down -v)"
        compose down -v -t 10 >/dev/null 2>&1 || log "warning: 'down' of $PROJECT failed"
    fi
    if ((started_dockerd)); then
        bash "$ROOT/scripts/containers.sh" stop || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# container_broker: up the `rabbitmq` service on its test ports; wait until Docker calls it
# healthy (its healthcheck: AMQP answers) and AMQP answers from here.
container_broker() {
    local t0=$SECONDS id status said
    engine_answers || started_dockerd=1
    # The application image follows this tree, so it is rebuilt; the others are kept.
    REBUILD_APP=1 bash "$ROOT/scripts/containers.sh" setup
    eval "$(bash "$ROOT/scripts/containers.sh" env)"
    export RABBITMQ_IMAGE TASKSHUTTLE_IMAGE PYTHON_BASE_IMAGE
    export TASKSHUTTLE_AMQP_PORT=$AMQP_PORT TASKSHUTTLE_MANAGEMENT_PORT=$MANAGEMENT_PORT
    t0=$SECONDS
    started_project=1
    compose down -v -t 10 >/dev/null 2>&1 || true # what a killed run may have left
    said="$(compose up -d rabbitmq 2>&1)" ||
        die "compose could not start the rabbitmq service: $(echo "$said" | tail -n 1)"
    id="$(compose ps -q rabbitmq)"
    while :; do
        status="$(docker inspect -f '{{.State.Health.Status}}' "$id" 2>/dev/null || echo gone)"
        [[ "$status" == healthy ]] && break
        if [[ "$status" == gone || "$status" == unhealthy ]] || ((SECONDS - t0 >= HEALTHY_WAIT)); then
            compose logs --tail 30 rabbitmq >&2 || true
            die "the rabbitmq container is $status after $((SECONDS - t0))s"
        fi
        sleep 0.5
    done
    amqp_answers 127.0.0.1 "$AMQP_PORT" ||
        die "the rabbitmq container is healthy but AMQP does not answer on 127.0.0.1:$AMQP_PORT"
    export AMQP_URL="amqp://taskshuttle:taskshuttle@127.0.0.1:$AMQP_PORT/%2F"
    # What the operator's-view tests compare with: this broker's management API and its
    # own rabbitmqctl (the host's would talk to the Debian node).
    export TASKSHUTTLE_MANAGEMENT_URL="http://127.0.0.1:$MANAGEMENT_PORT"
    export TASKSHUTTLE_TEST_RABBITMQCTL="docker exec $id rabbitmqctl"
    local version
    version="$(docker exec "$id" sh -c 'rabbitmqctl -q version' 2>/dev/null || echo '?')"
    export TASKSHUTTLE_TEST_BROKER_LABEL="container $RABBITMQ_IMAGE (RabbitMQ $version, compose project $PROJECT)"
    log "broker container healthy in $((SECONDS - t0))s"
}

debian_broker() {
    BROKER_MODE=debian bash "$ROOT/scripts/broker.sh" start
    export TASKSHUTTLE_MANAGEMENT_URL="http://127.0.0.1:15672"
    export TASKSHUTTLE_TEST_RABBITMQCTL="rabbitmqctl"
    export TASKSHUTTLE_TEST_BROKER_LABEL="Debian's rabbitmq-server (rabbit@localhost)"
}

bash "$ROOT/scripts/broker.sh" install
case "$MODE" in
    container)
        engine_possible || die "TASKSHUTTLE_TEST_BROKER=container, but no Docker engine answers and none can be installed here (not root)"
        container_broker
        ;;
    debian) debian_broker ;;
    auto)
        if engine_possible; then
            container_broker
        else
            log "no Docker engine here (and not root, so none can be installed): using Debian's broker"
            debian_broker
        fi
        ;;
    *) die "TASKSHUTTLE_TEST_BROKER must be auto, container or debian (got '$MODE')" ;;
esac
log "broker of the contract and integration suites: $TASKSHUTTLE_TEST_BROKER_LABEL at ${AMQP_URL:-amqp://guest:***@localhost:5672/%2F}" | sed 's/taskshuttle:taskshuttle@/taskshuttle:***@/'

"$PY" -m pytest "$@"
