# shellcheck shell=bash
# Sourced by scripts/broker.sh and scripts/cluster.sh.

# amqp_answers HOST PORT: true when HOST:PORT answers the AMQP 0-9-1 protocol header with a
# frame (Connection.Start begins with frame type 1). Plain bash and coreutils: no client needed.
amqp_answers() {
    local first
    first="$(timeout 3 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "AMQP\000\000\011\001" >&3
        head -c 1 <&3 | od -An -tx1
    ' "$1" "$2" 2>/dev/null)" || return 1
    [[ "${first// /}" == "01" ]]
}
