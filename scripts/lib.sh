# Shared settings for the scripts: sourced, not run.
# shellcheck shell=bash
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export RABBITMQ_NODENAME="${RABBITMQ_NODENAME:-rabbit@localhost}"
PG_VERSION="${PG_VERSION:-15}"
PG_MAIN_PORT="${PG_MAIN_PORT:-5432}"
# A second cluster, only for tests that restart or kill PostgreSQL.
PG_CHAOS_PORT="${PG_CHAOS_PORT:-5433}"
# A second RabbitMQ node, only for tests that kill or pause a broker.
RABBIT_CHAOS_PORT="${RABBIT_CHAOS_PORT:-5673}"
RABBIT_CHAOS_TLS_PORT="${RABBIT_CHAOS_TLS_PORT:-5674}"
# Python tools the tests use as outside clients (pika), in a venv beside the checkout.
VENV="${VENV:-$ROOT/.venv}"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_postgres() { runuser -u postgres -- "$@"; }

wait_for_port() { # host port seconds
    local deadline=$((SECONDS + $3))
    until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.3
    done
}
