#!/bin/sh
# The entrypoint of juliarun's queue broker image: RabbitMQ (Debian's rabbitmq-server, with the
# STOMP and management plugins) on fixed ports, with the user and password given in the
# environment (JULIARUN_QUEUE_USER / JULIARUN_QUEUE_PASSWORD, from a Kubernetes Secret or the
# container's config). The config file holding them is readable by root only.
set -eu
: "${JULIARUN_QUEUE_USER:?the broker needs JULIARUN_QUEUE_USER}"
: "${JULIARUN_QUEUE_PASSWORD:?the broker needs JULIARUN_QUEUE_PASSWORD}"
umask 077
cat > /etc/rabbitmq/rabbitmq.conf <<CONF
listeners.tcp.default = 5672
stomp.listeners.tcp.1 = 61613
management.tcp.port = 15672
management.rates_mode = basic
collect_statistics_interval = 2000
default_user = ${JULIARUN_QUEUE_USER}
default_pass = ${JULIARUN_QUEUE_PASSWORD}
default_user_tags.administrator = true
loopback_users = none
vm_memory_high_watermark.absolute = 512MB
disk_free_limit.absolute = 50MB
log.console = true
log.console.level = info
log.file = false
CONF
unset JULIARUN_QUEUE_PASSWORD
export RABBITMQ_NODENAME=rabbit@localhost HOME=/var/lib/rabbitmq
exec /usr/lib/rabbitmq/bin/rabbitmq-server
