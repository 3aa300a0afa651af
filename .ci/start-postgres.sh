#!/usr/bin/env bash
# A PostgreSQL server on loopback for the Optuna scale-out test (tests/test_prompt_study.py).
# Idempotent: installs Debian's `postgresql` if missing, creates and starts a cluster listening on 127.0.0.1 only,
# creates the role and database modalflip/modalflip, and prints one line for the caller to eval:
#   export MODALFLIP_TEST_POSTGRES_URL=postgresql+psycopg://modalflip:modalflip@127.0.0.1:PORT/modalflip
# Usage: eval "$(bash .ci/start-postgres.sh)". Everything else goes to stderr. Runs as root or as postgres.
set -euo pipefail
ROLE=modalflip
PASSWORD=modalflip
DATABASE=modalflip
CLUSTER=main

log() { echo "start-postgres: $*" >&2; }

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    log "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
fi
VERSION=$(ls /usr/lib/postgresql | sort -V | tail -n 1)

as_postgres() {
    if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$VERSION $CLUSTER"; then
    log "creating cluster $VERSION/$CLUSTER"
    pg_createcluster "$VERSION" "$CLUSTER" >&2
fi
CONF_DIR=/etc/postgresql/$VERSION/$CLUSTER
mkdir -p "$CONF_DIR/conf.d"
cat > "$CONF_DIR/conf.d/modalflip.conf" <<CONF
# written by .ci/start-postgres.sh: loopback only
listen_addresses = '127.0.0.1'
CONF
PORT=$(pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c {print $3}')
STATUS=$(pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c {print $4}')
if [ "$STATUS" != online ]; then
    log "starting cluster $VERSION/$CLUSTER on 127.0.0.1:$PORT"
    pg_ctlcluster "$VERSION" "$CLUSTER" start >&2
fi
for _ in $(seq 1 30); do
    as_postgres pg_isready -q -h 127.0.0.1 -p "$PORT" && break
    sleep 1
done
as_postgres pg_isready -q -h 127.0.0.1 -p "$PORT" || { log "the server did not come up; see /var/log/postgresql"; exit 1; }

psql_admin() { as_postgres psql -v ON_ERROR_STOP=1 -q -p "$PORT" -d postgres "$@"; }
if [ -z "$(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" ]; then
    psql_admin -c "CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD'" >&2
fi
if [ -z "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")" ]; then
    psql_admin -c "CREATE DATABASE $DATABASE OWNER $ROLE" >&2
fi
log "ready on 127.0.0.1:$PORT"
echo "export MODALFLIP_TEST_POSTGRES_URL=postgresql+psycopg://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DATABASE"
