#!/usr/bin/env bash
# Validates the production deployment offline, with .env.example's values; fails loudly.
#
#   deploy/production/validate.sh [COMPOSE_FILE]    (default: compose.yaml beside this script)
#
# 1. `docker compose config -q` (or Debian's `docker-compose`, installed with apt-get if neither
#    is there): the file is a valid Compose file and every required variable is set;
# 2. `promtool check config` and `promtool check rules` (Debian's `prometheus` package provides
#    promtool; installed if missing); `amtool check-config` when amtool is installed;
# 3. `sh -n` of the shell scripts the containers run;
# 4. validate.py on the configuration as Compose resolves it: which services listen where (only
#    Traefik publicly, on 80 and 443), images pinned, healthchecks, restart policies, state in
#    volumes, every referenced file present, the UIs behind basic auth, Traefik's static
#    configuration, settings that must agree, and no secret value in the files.
#
# Needs no registry and no running service. Compose runs with a clean environment, so
# variables exported in the calling shell (a sourced .stack/env) do not leak into the check.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
compose_file=$(realpath "${1:-$here/compose.yaml}")

log() { printf '[validate] %s\n' "$*"; }
fail() {
  printf '[validate] FAIL: %s\n' "$*" >&2
  exit 1
}

apt_install() {
  [ "$(id -u)" = 0 ] || fail "$1 is not installed and only root can install it: apt-get install $1"
  command -v apt-get >/dev/null || fail "$1 is not installed and there is no apt-get to install it"
  log "installing $1 (apt-get)"
  apt-get update -qq >/dev/null || fail "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null \
    || fail "apt-get install $1 failed"
}

[ -f "$compose_file" ] || fail "no compose file at $compose_file"
[ -f "$here/.env.example" ] || fail "no .env.example in $here"

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  apt_install docker-compose
  compose=(docker-compose)
fi
command -v promtool >/dev/null 2>&1 || apt_install prometheus
command -v promtool >/dev/null 2>&1 || fail "promtool is still missing after installing prometheus"

python=${RP9_PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=$(command -v python3 || true)
[ -n "$python" ] || fail "no Python to run validate.py"
"$python" -c "import yaml" 2>/dev/null || fail "$python has no PyYAML (make install, or RP9_PYTHON=...)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Operator-made files (never committed) stand in as empty files; everything else is real.
: >"$work/ops.htpasswd"

run_compose() {
  env -i PATH="$PATH" HOME="${HOME:-/root}" \
    RP9_ENV_FILE="$here/.env.example" OPS_HTPASSWD_FILE="$work/ops.htpasswd" \
    "${compose[@]}" --project-directory "$here" --env-file "$here/.env.example" \
    -f "$compose_file" "$@"
}

log "${compose[*]} config -q ($(basename "$compose_file"), .env.example)"
run_compose config -q || fail "${compose[*]} config rejected $compose_file"
run_compose config >"$work/resolved.yaml" 2>"$work/compose.err" \
  || fail "${compose[*]} config: $(cat "$work/compose.err")"

log "promtool check config prometheus/prometheus.yml"
promtool check config "$here/prometheus/prometheus.yml" || fail "promtool check config failed"
shopt -s nullglob
# The rules and Alertmanager's routes are deploy/observability's (compose.yaml mounts them);
# their promtool and amtool tests run in make test (rp9_pipelines_tests/observability).
observability="$root/deploy/observability"
rules=("$observability"/prometheus/rules/*.yml)
((${#rules[@]} > 0)) || fail "no rule file in $observability/prometheus/rules/"
log "promtool check rules deploy/observability/prometheus/rules/*.yml"
promtool check rules "${rules[@]}" || fail "promtool check rules failed"

if command -v amtool >/dev/null 2>&1; then
  log "amtool check-config deploy/observability/alertmanager/alertmanager.yml"
  amtool check-config "$observability/alertmanager/alertmanager.yml" || fail "amtool check-config failed"
fi

for script in "$here"/postgres/init/*.sh; do
  bash -n "$script" || fail "bash -n $script"
done
for script in "$here"/redis/*.sh; do
  sh -n "$script" || fail "sh -n $script"
done

log "structural checks (validate.py)"
"$python" "$here/validate.py" --project "$here" --compose "$compose_file" \
  --resolved "$work/resolved.yaml" || fail "structural checks failed (above)"

log "OK: $(basename "$compose_file") and its configuration are valid"
