#!/usr/bin/env bash
# A three-node RabbitMQ cluster on loopback, for scale-out work and fault tests.
#
#   scripts/cluster.sh start         start the nodes that are down, join nodes 2 and 3 to node 1
#                                    when they are not members yet, wait until all three run
#                                    clustered and answer AMQP (a no-op when they already do)
#   scripts/cluster.sh stop          stop all three nodes (graceful; SIGKILL if one hangs)
#   scripts/cluster.sh status        one line per node; exit 0 only when all three run clustered
#   scripts/cluster.sh urls          the comma-separated AMQP URLs of the three nodes
#   scripts/cluster.sh running       one line per node, "N up" or "N down": AMQP answers or not
#                                    (probes only, no CLI call: fast)
#   scripts/cluster.sh kill N        SIGKILL node N's Erlang VM (a crash)
#   scripts/cluster.sh stop-node N   stop node N gracefully
#   scripts/cluster.sh start-node N  start node N again and wait until it runs in the cluster
#                                    (it keeps its Mnesia folder, so it rejoins by itself)
#   scripts/cluster.sh cli N TOOL [ARGS...]
#                                    run a RabbitMQ CLI tool (rabbitmqctl, rabbitmq-queues,
#                                    rabbitmq-diagnostics) against node N, with the nodes' own
#                                    environment, e.g. `cli 1 rabbitmqctl cluster_status`
#
# Nodes ts-c1@localhost .. ts-c3@localhost: AMQP on 127.0.0.1:5681-5683, Erlang distribution on
# 127.0.0.1:25681-25683. The shared development broker (rabbit@localhost, 5672/15672/25672) is
# never touched. Debian's scripts in /usr/lib/rabbitmq/bin run with a clean environment
# (`env -i`), as the rabbitmq user when run as root, each node with its own config file,
# empty plugins file, Mnesia and log folders under one state folder, and one Erlang cookie
# shared by the three (a copy of /var/lib/rabbitmq/.erlang.cookie when there is one, so the
# usual `rabbitmqctl -n ts-c1@localhost ...` works too). guest/guest works from loopback.
# When rabbitmq-server is not installed, `start` installs it through `scripts/broker.sh install`.
#
# Environment:
#   CLUSTER_DIR=/var/tmp/taskshuttle-cluster   state folder (config, cookie, Mnesia, logs)
#   CLUSTER_WAIT=120                           seconds `start`/`start-node` wait at most
#
# Timings on a 2-core machine busy with other test runs (load average 4-8):
#   start, from nothing (empty CLUSTER_DIR):     34-35 s (three boots in parallel, two joins)
#   start, all three stopped (Mnesia kept):      18-21 s
#   start, already running and clustered:        1.2-2.3 s (three AMQP probes, one CLI call)
#   kill N: 0.2 s; start-node N after it:        8-14 s
#   stop:                                        6 s
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib/amqp.sh
source "$ROOT/scripts/lib/amqp.sh"
BIN=/usr/lib/rabbitmq/bin
SHARED_COOKIE=/var/lib/rabbitmq/.erlang.cookie
HOST=127.0.0.1
NODES=(1 2 3)
DIR="${CLUSTER_DIR:-/var/tmp/taskshuttle-cluster}"
WAIT="${CLUSTER_WAIT:-120}"
CLI_TIMEOUT=60 # seconds, for one CLI call
LOOPBACK_DIST_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
RUN_USER=rabbitmq

log() { echo "cluster: $*"; }
die() {
    echo "cluster: error: $*" >&2
    exit 1
}

[[ "$WAIT" =~ ^[0-9]+$ ]] || die "CLUSTER_WAIT must be a whole number of seconds (got '$WAIT')"

node_name() { echo "ts-c$1@localhost"; }
amqp_port() { echo $((5680 + $1)); }
dist_port() { echo $((25680 + $1)); }
node_dir() { echo "$DIR/n$1"; }
pid_file() { echo "$DIR/n$1/node.pid"; }
launcher_file() { echo "$DIR/n$1/launcher.pid"; }
url_of() { echo "amqp://guest:guest@$HOST:$(amqp_port "$1")/%2F"; }

check_n() {
    [[ "${1:-}" =~ ^[123]$ ]] || die "node number must be 1, 2 or 3 (got '${1:-}')"
}

# As root the nodes and the CLI run as the rabbitmq user; otherwise as the caller.
as_user() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u "$RUN_USER" -- "$@"
    else
        "$@"
    fi
}

# node_env N: the whole environment of node N (server and CLI alike), one VAR=value a word.
node_env() {
    local n=$1 d
    d="$(node_dir "$n")"
    NODE_ENV=(
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        "HOME=$DIR/home"
        "LANG=C.UTF-8"
        "LC_ALL=C.UTF-8"
        "RABBITMQ_NODENAME=$(node_name "$n")"
        "RABBITMQ_NODE_IP_ADDRESS=$HOST"
        "RABBITMQ_NODE_PORT=$(amqp_port "$n")"
        "RABBITMQ_DIST_PORT=$(dist_port "$n")"
        "ERL_EPMD_ADDRESS=$HOST"
        "RABBITMQ_MNESIA_BASE=$d/mnesia"
        "RABBITMQ_LOG_BASE=$d/log"
        "RABBITMQ_PID_FILE=$(pid_file "$n")"
        "RABBITMQ_CONF_ENV_FILE=$d/rabbitmq-env.conf"
        "RABBITMQ_CONFIG_FILE=$d/rabbitmq.conf"
        "RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins"
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=$LOOPBACK_DIST_ARGS"
        "RABBITMQ_CTL_ERL_ARGS=$LOOPBACK_DIST_ARGS"
    )
}

# cli N TOOL [ARGS...]: a CLI tool against node N, bounded by CLI_TIMEOUT.
cli() {
    local n=$1 tool=$2
    shift 2
    case "$tool" in
        rabbitmqctl | rabbitmq-queues | rabbitmq-diagnostics | rabbitmq-plugins | rabbitmq-upgrade) ;;
        *) die "unknown CLI tool '$tool'" ;;
    esac
    node_env "$n"
    (cd "$DIR" && as_user env -i "${NODE_ENV[@]}" \
        timeout -k 5 "$CLI_TIMEOUT" "$BIN/$tool" -n "$(node_name "$n")" "$@")
}

# --- probes ----------------------------------------------------------------------------------

# True when node N answers AMQP on its port (see scripts/lib/amqp.sh).
amqp_ok() {
    amqp_answers "$HOST" "$(amqp_port "$1")"
}

# The pid of node N's Erlang VM, when it runs (read from its pid file, checked in /proc).
vm_pid() {
    local pid
    pid="$(cat "$(pid_file "$1")" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    # The node name is in the VM's environment, not on its command line.
    tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -qx "RABBITMQ_NODENAME=$(node_name "$1")" ||
        return 1
    echo "$pid"
}

# True while the process that runs node N's rabbitmq-server (launched by us) is alive.
launcher_alive() {
    local pid
    pid="$(cat "$(launcher_file "$1")" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
        ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

node_up() { vm_pid "$1" >/dev/null || launcher_alive "$1"; }

# cluster_nodes N FIELD: the node names in FIELD (running_nodes, disk_nodes) of node N's
# `cluster_status`, one a line.
cluster_nodes() {
    local json
    json="$(cli "$1" rabbitmqctl -q cluster_status --formatter json 2>/dev/null)" || return 1
    sed -n "s/.*\"$2\":\[\([^]]*\)\].*/\1/p" <<<"$json" | tr ',' '\n' | tr -d '" '
}

# True when node N sees all three nodes running in its cluster.
all_running_from() {
    local names
    names="$(cluster_nodes "$1" running_nodes)" || return 1
    for m in "${NODES[@]}"; do
        grep -qx "$(node_name "$m")" <<<"$names" || return 1
    done
}

# True when node N counts node 1 among its cluster's members.
is_member() {
    cluster_nodes "$1" disk_nodes 2>/dev/null | grep -qx "$(node_name 1)"
}

show_log_tail() {
    local n=$1 f
    for f in "$(node_dir "$n")/log/$(node_name "$n").log" "$(node_dir "$n")/stdout.log"; do
        if [[ -s "$f" ]]; then
            echo "cluster: == last lines of $f" >&2
            tail -n 25 "$f" >&2 || true
        fi
    done
}

fail_node() {
    local n=$1
    shift
    echo "cluster: error: node $n ($(node_name "$n")): $*" >&2
    show_log_tail "$n"
    exit 1
}

# --- setup -----------------------------------------------------------------------------------

ensure_installed() {
    [[ -x "$BIN/rabbitmq-server" ]] && return 0
    log "rabbitmq-server is not installed: scripts/broker.sh install"
    bash "$ROOT/scripts/broker.sh" install
    [[ -x "$BIN/rabbitmq-server" ]] || die "$BIN/rabbitmq-server is still missing after the install"
}

# write_file PATH CONTENT: write when the content differs, owned by the user the nodes run as.
write_file() {
    local path=$1 content=$2
    if [[ ! -f "$path" ]] || [[ "$(cat "$path")" != "$content" ]]; then
        printf '%s\n' "$content" >"$path"
    fi
    own "$path"
}

own() {
    [[ $EUID -ne 0 ]] || chown "$RUN_USER:$RUN_USER" "$@"
}

prepare() {
    local n d cookie="$DIR/home/.erlang.cookie"
    if [[ $EUID -eq 0 ]] && ! id -u "$RUN_USER" >/dev/null 2>&1; then
        die "user $RUN_USER does not exist (is rabbitmq-server installed?)"
    fi
    mkdir -p "$DIR/home"
    own "$DIR" "$DIR/home"
    as_user test -w "$DIR" -a -x "$DIR" ||
        die "CLUSTER_DIR $DIR is not writable by $(if [[ $EUID -eq 0 ]]; then echo "$RUN_USER"; else id -un; fi)"
    if [[ ! -s "$cookie" ]]; then
        if [[ -r "$SHARED_COOKIE" ]]; then
            cp "$SHARED_COOKIE" "$cookie"
        else
            (umask 077 && tr -dc 'A-Z' </dev/urandom | head -c 20 >"$cookie")
        fi
        chmod 400 "$cookie"
        own "$cookie"
    fi
    for n in "${NODES[@]}"; do
        d="$(node_dir "$n")"
        mkdir -p "$d/mnesia" "$d/log"
        own "$d" "$d/mnesia" "$d/log"
        write_file "$d/rabbitmq.conf" "# Written by scripts/cluster.sh: node $n of the local cluster, loopback only.
listeners.tcp.default = $HOST:$(amqp_port "$n")
loopback_users.guest = true"
        write_file "$d/rabbitmq-env.conf" "# Written by scripts/cluster.sh: empty, everything comes from the environment."
        write_file "$d/enabled_plugins" "[]."
    done
}

# --- one node --------------------------------------------------------------------------------

# Start node N's rabbitmq-server in a session of its own, output to its stdout.log.
launch() {
    local n=$1 d
    d="$(node_dir "$n")"
    rm -f "$(pid_file "$n")"
    node_env "$n"
    log "starting $(node_name "$n") on $HOST:$(amqp_port "$n")"
    # setsid execs (a background job of a script is no group leader), so $! is the launcher.
    (cd "$d" && exec setsid bash -c 'if [[ $EUID -eq 0 ]]; then exec runuser -u "$0" -- "$@"; else exec "$@"; fi' \
        "$RUN_USER" env -i "${NODE_ENV[@]}" "$BIN/rabbitmq-server" \
        </dev/null >>"$d/stdout.log" 2>&1 9>&-) &
    echo $! >"$(launcher_file "$n")"
}

# wait_amqp DEADLINE N...: wait until each node answers AMQP; fail early when one dies.
wait_amqp() {
    local deadline=$1 n pending
    shift
    while :; do
        pending=()
        for n in "$@"; do
            amqp_ok "$n" || pending+=("$n")
        done
        ((${#pending[@]} == 0)) && return 0
        for n in "${pending[@]}"; do
            node_up "$n" || fail_node "$n" "its Erlang VM exited before it accepted AMQP connections"
        done
        ((SECONDS < deadline)) || fail_node "${pending[0]}" "no AMQP on $HOST:$(amqp_port "${pending[0]}") within ${WAIT}s"
        sleep 0.5
    done
}

# A node whose VM runs without AMQP: still booting (wait) or its app was stopped (start_app).
revive_app() {
    local n=$1 state
    state="$(cli "$n" rabbitmqctl -q eval 'rabbit:is_booting() orelse rabbit:is_running().' 2>/dev/null || true)"
    if [[ "$state" == "false" ]]; then
        log "$(node_name "$n") runs with its app stopped: start_app"
        cli "$n" rabbitmqctl -q start_app >/dev/null || fail_node "$n" "start_app failed"
    fi
}

join() {
    local n=$1
    log "joining $(node_name "$n") to $(node_name 1)"
    cli "$n" rabbitmqctl -q stop_app >/dev/null || fail_node "$n" "stop_app failed"
    cli "$n" rabbitmqctl -q join_cluster "$(node_name 1)" >/dev/null || fail_node "$n" "join_cluster $(node_name 1) failed"
    cli "$n" rabbitmqctl -q start_app >/dev/null || fail_node "$n" "start_app after join_cluster failed"
}

# bring_up N...: start the given nodes that are down (together: a node restarted after the
# whole cluster stopped waits for its peers' tables), join to node 1 those that are not members,
# and wait until they answer AMQP.
bring_up() {
    local deadline=$((SECONDS + WAIT)) n
    for n in "$@"; do
        if node_up "$n"; then
            amqp_ok "$n" || revive_app "$n"
        else
            launch "$n"
        fi
    done
    wait_amqp "$deadline" "$@"
    for n in "$@"; do
        if [[ $n != 1 ]] && ! is_member "$n"; then
            amqp_ok 1 || wait_amqp "$deadline" 1
            join "$n"
        fi
    done
    wait_amqp "$deadline" "$@"
}

stop_one() {
    local n=$1 pid i
    if ! pid="$(vm_pid "$n")"; then
        if launcher_alive "$n"; then
            # Booting, pid file not written yet: stop its session, which holds the VM too.
            kill -TERM -- "-$(cat "$(launcher_file "$n")")" 2>/dev/null || true
        else
            log "$(node_name "$n") is not running"
            return 0
        fi
    else
        log "stopping $(node_name "$n")"
        cli "$n" rabbitmqctl -q shutdown >/dev/null 2>&1 || true
    fi
    for ((i = 0; i < 60; i++)); do
        node_up "$n" || return 0
        sleep 0.5
    done
    log "$(node_name "$n") still runs 30 s after shutdown: SIGKILL"
    kill_one "$n"
}

kill_one() {
    local n=$1 pid i
    pid="$(vm_pid "$n")" || {
        launcher_alive "$n" || {
            log "$(node_name "$n") is not running: nothing to kill"
            return 0
        }
        kill -KILL -- "-$(cat "$(launcher_file "$n")")" 2>/dev/null || true
        pid=""
    }
    if [[ -n "$pid" ]]; then
        log "SIGKILL $(node_name "$n") (Erlang VM pid $pid)"
        kill -KILL "$pid"
    fi
    for ((i = 0; i < 100; i++)); do
        if ! node_up "$n" && ! amqp_ok "$n"; then
            return 0
        fi
        sleep 0.1
    done
    die "$(node_name "$n") still runs 10 s after SIGKILL"
}

# --- commands --------------------------------------------------------------------------------

# Serialise the commands that change the cluster (two test sessions may call start at once).
lock() {
    mkdir -p "$DIR"
    exec 9>"$DIR/.lock"
    flock -w "$((WAIT + 60))" 9 || die "another scripts/cluster.sh holds $DIR/.lock"
}

cmd_start() {
    local started=$SECONDS n
    ensure_installed
    lock
    prepare
    if amqp_ok 1 && amqp_ok 2 && amqp_ok 3 && all_running_from 1; then
        log "already running: 3 nodes clustered on $HOST:5681-5683"
        return 0
    fi
    bring_up "${NODES[@]}"
    until all_running_from 1; do
        ((SECONDS < started + WAIT)) || fail_node 1 "cluster_status does not show three running nodes after ${WAIT}s"
        sleep 1
    done
    log "up after $((SECONDS - started))s: 3 nodes clustered on $HOST:5681-5683"
}

cmd_stop() {
    local n pids=() rc=0
    [[ -d "$DIR" ]] || {
        log "$DIR does not exist: nothing to stop"
        return 0
    }
    lock
    for n in "${NODES[@]}"; do
        stop_one "$n" &
        pids+=($!)
    done
    for n in "${pids[@]}"; do
        wait "$n" || rc=1
    done
    for n in "${NODES[@]}"; do
        ! node_up "$n" || die "$(node_name "$n") still runs"
    done
    ((rc == 0)) || die "a node did not stop cleanly"
    log "stopped"
}

cmd_status() {
    local n ok=0 names running
    [[ -x "$BIN/rabbitmq-server" ]] || {
        log "rabbitmq-server is not installed"
        return 1
    }
    for n in "${NODES[@]}"; do
        if ! amqp_ok "$n"; then
            if node_up "$n"; then
                echo "$(node_name "$n") $HOST:$(amqp_port "$n") no-amqp (its Erlang VM runs: booting, or its app is stopped)"
            else
                echo "$(node_name "$n") $HOST:$(amqp_port "$n") down"
            fi
            ok=1
            continue
        fi
        names="$(cluster_nodes "$n" running_nodes 2>/dev/null)" || names=""
        running="$(grep -c . <<<"$names" || true)"
        if [[ -n "$names" ]] && all_in "$names"; then
            echo "$(node_name "$n") $HOST:$(amqp_port "$n") running clustered ($running/3 nodes running)"
        else
            echo "$(node_name "$n") $HOST:$(amqp_port "$n") running degraded (${running:-0}/3 nodes running: $(paste -sd, <<<"$names"))"
            ok=1
        fi
    done
    return "$ok"
}

all_in() {
    local m
    for m in "${NODES[@]}"; do
        grep -qx "$(node_name "$m")" <<<"$1" || return 1
    done
}

cmd_running() {
    local n
    for n in "${NODES[@]}"; do
        if amqp_ok "$n"; then echo "$n up"; else echo "$n down"; fi
    done
}

cmd_urls() {
    local n out=()
    for n in "${NODES[@]}"; do
        out+=("$(url_of "$n")")
    done
    (
        IFS=,
        echo "${out[*]}"
    )
}

cmd_start_node() {
    local n=$1 started=$SECONDS
    ensure_installed
    lock
    prepare
    bring_up "$n"
    until cluster_nodes "$n" running_nodes | grep -qx "$(node_name "$n")" && is_member "$n"; do
        ((SECONDS < started + WAIT)) || fail_node "$n" "not running in the cluster after ${WAIT}s"
        sleep 0.5
    done
    log "$(node_name "$n") running in the cluster after $((SECONDS - started))s"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    urls) cmd_urls ;;
    running) cmd_running ;;
    kill)
        check_n "${2:-}"
        lock
        kill_one "$2"
        ;;
    stop-node)
        check_n "${2:-}"
        lock
        stop_one "$2"
        ;;
    start-node)
        check_n "${2:-}"
        cmd_start_node "$2"
        ;;
    cli)
        check_n "${2:-}"
        [[ -n "${3:-}" ]] || die "usage: $0 cli N TOOL [ARGS...]"
        cli "${@:2}"
        ;;
    *)
        echo "usage: $0 start|stop|status|urls|running|kill N|stop-node N|start-node N|cli N TOOL [ARGS...]" >&2
        exit 2
        ;;
esac
