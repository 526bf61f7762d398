#!/usr/bin/env bash
# PostgreSQL for the tests, from Debian's packages, on a machine that starts no services:
# installs the server if missing, reuses one that already answers on 127.0.0.1:5432, or else
# creates (once) and starts a cluster of its own, without systemd, with trust authentication
# on loopback only. Then makes sure the role and database the tests use exist
# (postgresql+psycopg://root@127.0.0.1:5432/test, see tests/conftest.py). Idempotent.
#
#   bash .ci/postgres.sh          # as root (apt-get, and the cluster runs as user postgres)
#
# The cluster's data lives outside the clone: $INTENTGATE_PG_DIR (default
# /var/tmp/intentgate-pg), its log in that directory's server.log.
set -euo pipefail

PGPORT=5432
DATA="${INTENTGATE_PG_DIR:-/var/tmp/intentgate-pg}"
if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi

pg_up() { pg_isready -h 127.0.0.1 -p "$PGPORT" -q 2>/dev/null; }

pg_bindir() {
    local v
    v="$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -1)"
    [ -n "$v" ] && [ -x "/usr/lib/postgresql/$v/bin/initdb" ] && echo "/usr/lib/postgresql/$v/bin"
}

if ! pg_up; then
    if [ -z "$(pg_bindir)" ]; then
        echo "installing PostgreSQL from Debian's packages"
        "${sudo[@]}" apt-get update -q
        # the package's own post-install creates a default cluster but cannot start it here
        # (no systemd); that cluster is left alone, the tests use the one below
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
    fi
    BIN="$(pg_bindir)"
    [ -n "$BIN" ] || { echo "PostgreSQL's server binaries are missing after apt-get install" >&2; exit 1; }
    as_pg=("${sudo[@]}" runuser -u postgres --)
    if [ ! -s "$DATA/PG_VERSION" ]; then
        echo "creating a PostgreSQL cluster in $DATA"
        "${sudo[@]}" mkdir -p "$DATA"
        "${sudo[@]}" chown postgres:postgres "$DATA"
        "${sudo[@]}" chmod 700 "$DATA"
        "${as_pg[@]}" "$BIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=trust \
            --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    fi
    # a server killed without a clean shutdown leaves its pid file behind; pg_ctl handles that
    echo "starting PostgreSQL ($BIN) on 127.0.0.1:$PGPORT"
    "${as_pg[@]}" "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 start \
        -o "-c listen_addresses=127.0.0.1 -p $PGPORT -c unix_socket_directories=$DATA -c max_connections=300" \
        >/dev/null || { tail -20 "$DATA/server.log" >&2; exit 1; }
fi
pg_up || { echo "PostgreSQL does not answer on 127.0.0.1:$PGPORT" >&2; exit 1; }

# the role and database of the tests: over TCP as the cluster's superuser (trust on our own
# cluster), or over the local socket as user postgres (peer) on a server that was running already
psql_admin() {
    if psql -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -tAq -c 'select 1' >/dev/null 2>&1; then
        psql -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -tAq "$@"
    else
        "${sudo[@]}" runuser -u postgres -- psql -p "$PGPORT" -d postgres -v ON_ERROR_STOP=1 -tAq "$@"
    fi
}
if [ "$(psql_admin -c "select count(*) from pg_roles where rolname = 'root'")" = "0" ]; then
    psql_admin -c 'create role root superuser login'
fi
if [ "$(psql_admin -c "select count(*) from pg_database where datname = 'test'")" = "0" ]; then
    psql_admin -c 'create database test owner root'
fi
psql -h 127.0.0.1 -p "$PGPORT" -U root -d test -tAq -c 'select 1' >/dev/null \
    || { echo "PostgreSQL answers, but not to root@127.0.0.1/test without a password" >&2; exit 1; }
# the text index's trigram operators: made once here, in the public schema (the migration makes
# them where missing, which for a test would be inside its own schema, dropped after it)
psql -h 127.0.0.1 -p "$PGPORT" -U root -d test -tAq -c 'create extension if not exists pg_trgm' >/dev/null
echo "PostgreSQL is up on 127.0.0.1:$PGPORT (root@test)"
