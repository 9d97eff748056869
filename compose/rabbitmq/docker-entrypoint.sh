#!/bin/sh
# The official image's entry point, in small: the default user from the environment, then the
# server as the rabbitmq user (setpriv execs it, so it is the process that gets SIGTERM).
set -eu

if [ -n "${RABBITMQ_DEFAULT_USER:-}" ] || [ -n "${RABBITMQ_DEFAULT_PASS:-}" ]; then
    {
        echo "default_user = ${RABBITMQ_DEFAULT_USER:-guest}"
        echo "default_pass = ${RABBITMQ_DEFAULT_PASS:-guest}"
    } >/etc/rabbitmq/conf.d/05-default-user.conf
    chmod 0644 /etc/rabbitmq/conf.d/05-default-user.conf
fi

if [ "${1:-}" = rabbitmq-server ] && [ "$(id -u)" = 0 ]; then
    shift
    chown rabbitmq:rabbitmq /var/lib/rabbitmq
    export HOME=/var/lib/rabbitmq
    exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
        /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
fi
exec "$@"
