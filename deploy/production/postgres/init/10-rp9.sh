#!/bin/bash
# Runs once, when the postgres image creates the cluster (an empty postgres-data volume): the
# catalog's owner and database (DATABASE_URL), the Dagster instance's login and database
# (DAGSTER_PG_*), and the tenant boundary (deploy/postgres/tenant_boundary.sql, mounted at
# /rp9/tenant_boundary.sql) with the tenant administrator's login (TENANT_ADMIN_DATABASE_URL).
# Each password is read from the one variable that holds it in .env; none is echoed.
set -euo pipefail

die() {
  echo "10-rp9.sh: $*" >&2
  exit 1
}

userinfo() {
  local rest=${1#*://}
  echo "${rest%%@*}"
}
url_user() {
  local info
  info=$(userinfo "$1")
  echo "${info%%:*}"
}
url_password() {
  local info
  info=$(userinfo "$1")
  [[ $info == *:* ]] || return 0
  echo "${info#*:}"
}
url_database() {
  local rest=${1##*/}
  echo "${rest%%\?*}"
}

# Passwords go into URLs and SQL: only characters neither has to escape, and never a placeholder.
check_password() {
  if [[ ! $2 =~ ^[A-Za-z0-9._~-]{32,}$ ]] || [[ $2 == *change-me* ]]; then
    die "$1: set a password of 32+ characters from [A-Za-z0-9._~-] (openssl rand -hex 32)"
  fi
}

catalog_user=$(url_user "$DATABASE_URL")
catalog_db=$(url_database "$DATABASE_URL")
admin_user=$(url_user "$TENANT_ADMIN_DATABASE_URL")
export RP9_CATALOG_PASSWORD RP9_TENANT_ADMIN_PASSWORD RP9_DAGSTER_PASSWORD
RP9_CATALOG_PASSWORD=$(url_password "$DATABASE_URL")
RP9_TENANT_ADMIN_PASSWORD=$(url_password "$TENANT_ADMIN_DATABASE_URL")
RP9_DAGSTER_PASSWORD=$DAGSTER_PG_PASSWORD
check_password DATABASE_URL "$RP9_CATALOG_PASSWORD"
check_password TENANT_ADMIN_DATABASE_URL "$RP9_TENANT_ADMIN_PASSWORD"
check_password DAGSTER_PG_PASSWORD "$RP9_DAGSTER_PASSWORD"

sql() {
  psql -v ON_ERROR_STOP=1 --quiet --no-psqlrc --no-password --username "$POSTGRES_USER" \
    --dbname postgres "$@"
}

sql -v catalog_user="$catalog_user" -v catalog_db="$catalog_db" \
  -v dagster_user="$DAGSTER_PG_USER" -v dagster_db="$DAGSTER_PG_DB" <<'SQL'
\getenv catalog_password RP9_CATALOG_PASSWORD
\getenv dagster_password RP9_DAGSTER_PASSWORD
CREATE ROLE :"catalog_user" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'catalog_password';
CREATE DATABASE :"catalog_db" OWNER :"catalog_user";
CREATE ROLE :"dagster_user" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'dagster_password';
CREATE DATABASE :"dagster_db" OWNER :"dagster_user";
-- Tenants log in to this server: only the Dagster login connects to Dagster's database.
REVOKE ALL ON DATABASE :"dagster_db" FROM PUBLIC;
SQL

sql -v tenant_admin="$admin_user" -v catalog="$catalog_db" -f /rp9/tenant_boundary.sql

sql -v tenant_admin="$admin_user" <<'SQL'
\getenv admin_password RP9_TENANT_ADMIN_PASSWORD
ALTER ROLE :"tenant_admin" PASSWORD :'admin_password';
SQL
