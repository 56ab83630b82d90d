#!/bin/sh
# One image, three services of a DR drill's scratch environment, chosen by the first argument;
# the rest goes to the server. Secrets arrive as files under /etc/rp9-scratch, copied into the
# container before it starts (never in its environment or arguments, so never in
# `docker inspect`):
#   postgres  postgres.password  the `postgres` superuser's password (initdb --pwfile)
#   redis     redis.conf         the whole configuration, requirepass included
#   openbao   openbao.token      the dev server's root token
set -eu
secrets=/etc/rp9-scratch
service=${1:?usage: rp9-scratch postgres|redis|openbao [ARG...]}
shift

case "$service" in
  postgres)
    export PGDATA=/var/lib/rp9-scratch/postgres
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
      # A throwaway cluster: nothing is synced, it never outlives the drill.
      initdb --pgdata="$PGDATA" --username=postgres --pwfile="$secrets/postgres.password" \
        --auth-local=peer --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 \
        --no-sync >/dev/null
      printf 'host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n' \
        >>"$PGDATA/pg_hba.conf"
    fi
    exec postgres -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql "$@"
    ;;
  redis)
    exec redis-server "$secrets/redis.conf" "$@"
    ;;
  openbao)
    # Read from the environment, which only this process and root can see. The dev server
    # prints its root token and unseal key: they stay out of the container's log (tini -g
    # signals the whole pipeline).
    BAO_DEV_ROOT_TOKEN_ID=$(cat "$secrets/openbao.token")
    export BAO_DEV_ROOT_TOKEN_ID HOME=/tmp
    bao server -dev -dev-listen-address=0.0.0.0:8200 -dev-no-store-token "$@" 2>&1 \
      | sed -u -e '/Root Token:/d' -e '/Unseal Key:/d'
    ;;
  *)
    echo "unknown service $service (postgres, redis or openbao)" >&2
    exit 64
    ;;
esac
