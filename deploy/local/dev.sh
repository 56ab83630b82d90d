#!/usr/bin/env bash
# `make dev`: the Dagster webserver + daemon (instance under DAGSTER_HOME, storage in the stack's
# Postgres), the API and the catalog exporter,
# in the foreground until Ctrl-C. Runs with the stack's environment (see the Makefile).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin="$root/.venv/bin"
mkdir -p "$root/.stack/logs"

# Each server runs in a process group of its own, so that stopping `make dev` stops
# everything they started (`dagster dev` has a webserver, a daemon and code servers).
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -INT -- "-$pid" 2>/dev/null || true; done
  sleep 2
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The platform as operators run it: the autoscaler, the container sampler and plan enforcement
# on (tests start their own Dagster without them).
export AUTOSCALE_ENABLED=${AUTOSCALE_ENABLED:-true}
export USAGE_SAMPLING_ENABLED=${USAGE_SAMPLING_ENABLED:-true}
export ENFORCEMENT_ENABLED=${ENFORCEMENT_ENABLED:-true}
setsid "$bin/dagster" dev -h 127.0.0.1 -p 3000 -w "$root/workspace.yaml" \
  >"$root/.stack/logs/dagster.log" 2>&1 &
pids+=($!)
setsid "$bin/uvicorn" rp9_pipelines.api.main:app --host 127.0.0.1 --port "$ORCH_PORT" \
  >"$root/.stack/logs/api.log" 2>&1 &
pids+=($!)
# The catalog exporter (fleet metrics for the alerts and dashboards, docs/observability.md).
exporter_port=${EXPORTER_PORT:-59464}
setsid "$bin/python" -m rp9_pipelines.observability.exporter --port "$exporter_port" \
  >"$root/.stack/logs/exporter.log" 2>&1 &
pids+=($!)
# Prometheus scrapes both from the target files it watches.
echo "[{\"targets\": [\"127.0.0.1:$ORCH_PORT\"]}]" >"$PROMETHEUS_TARGETS_DIR/api.json"
echo "[{\"targets\": [\"127.0.0.1:$exporter_port\"]}]" >"$PROMETHEUS_TARGETS_DIR/catalog.json"

wait_http() {
  local name=$1 url=$2 deadline=$((SECONDS + $3))
  until curl -fsS "$url" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { echo "$name did not start; see .stack/logs/" >&2; exit 1; }
    sleep 0.5
  done
}
wait_http api "http://127.0.0.1:$ORCH_PORT/healthz" 60
wait_http dagster "http://127.0.0.1:3000/server_info" 120
wait_http exporter "http://127.0.0.1:$exporter_port/metrics" 30

cat <<MSG

rp9 is up (Ctrl-C stops Dagster and the API; \`make stack-down\` stops the stack):
  Dagster UI       http://127.0.0.1:3000
  API              http://127.0.0.1:$ORCH_PORT  (health /healthz, OpenAPI /docs)
  Traefik          http://127.0.0.1:8088  (tenants at http://<slug>.localhost:8088)
  Traefik admin    http://127.0.0.1:8089/dashboard/
  Prometheus       http://127.0.0.1:59090  (alerts /alerts; rules deploy/observability/)
  Exporter         http://127.0.0.1:$exporter_port/metrics  (the catalog's fleet metrics)
  Stripe (double)  http://127.0.0.1:12111  (the project's Stripe-compatible server)
  Supabase REST    http://127.0.0.1:54321/rest/v1
  API token        in .stack/env (ORCH_TOKEN)
MSG
"$bin/python" "$root/deploy/local/demo_tenant.py" || echo "the demo tenant could not be provisioned; see the Dagster UI" >&2
wait -n "${pids[@]}"
