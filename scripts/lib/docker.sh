# shellcheck shell=bash
# Sourced by scripts/broker.sh, scripts/containers.sh and scripts/test.sh.

# engine_answers: true when a Docker engine answers `docker info` (bounded: a wedged daemon
# must not hang the caller).
engine_answers() {
    command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1
}

# compose_command: print the Compose command, v2 (`docker compose`) where the plugin exists,
# else v1 (`docker-compose`); false when there is neither.
compose_command() {
    if docker compose version >/dev/null 2>&1; then
        echo "docker compose"
    elif command -v docker-compose >/dev/null 2>&1; then
        echo docker-compose
    else
        return 1
    fi
}
