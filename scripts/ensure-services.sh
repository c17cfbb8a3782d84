#!/usr/bin/env bash
# Make sure the Postgres and RabbitMQ the integration tests use are answering; start them if not.
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
rabbit_up() { python3 - <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(); s.settimeout(1)
try:
    s.connect(("127.0.0.1", 5672)); s.sendall(b"AMQP\x00\x00\x09\x01")
    sys.exit(0 if s.recv(8) else 1)
except OSError:
    sys.exit(1)
PY
}
wait_for() { # name, check, seconds
  for _ in $(seq "$3"); do "$2" && return 0; sleep 1; done
  echo "ensure-services: $1 did not come up in $3 s" >&2; return 1
}

if ! pg_up; then
  echo "ensure-services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
  wait_for PostgreSQL pg_up 30
fi
psql -h 127.0.0.1 -U postgres -tAc "select 1 from pg_database where datname = 'test'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -c "create database test" >/dev/null

if ! rabbit_up; then
  echo "ensure-services: starting RabbitMQ"
  rabbitmq-server -detached || true
  wait_for RabbitMQ rabbit_up 90
fi
echo "ensure-services: PostgreSQL and RabbitMQ answer"
