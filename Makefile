# rp9 control plane. `make dev` brings the platform up on its embedded defaults; `make test`
# installs and starts everything the tests need, then runs lint and the whole suite.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STACK := deploy/local/stack.sh
export DAGSTER_HOME := $(CURDIR)/.dagster_home
# Every target that talks to the stack runs with its environment (generated secrets included).
WITH_ENV := set -a && source .stack/env && set +a &&

.PHONY: bench-autoscale bench-backup bench-load bench-promote bench-provision bench-upgrade bench-usage demo-credentials help install stack-up stack-down stack-status swarm-up swarm-down swarm-status swarm-verify swarm-images migrate lint format test test-fast test-swarm dev api dagster validate-production

help:
	@echo "make dev          platform up on embedded defaults: stack, migrations, Dagster UI, API"
	@echo "make test         install + start everything, then lint and the full test suite"
	@echo "make test-fast    pure unit tests only (no services)"
	@echo "make lint         ruff + mypy"
	@echo "make validate-production  check deploy/production offline (compose config, promtool, structure)"
	@echo "make stack-up     start the local stack (idempotent); stack-down stops it"
	@echo "make swarm-up     a 4-node Docker Swarm on this machine (DinD; idempotent); swarm-down removes it"
	@echo "make test-swarm   the runtime contract on Docker and on the Swarm, placement, node drain and loss, a tenant's flows on the Swarm"
	@echo "make bench-provision  POST /tenants → first webhook vs. a bare docker run (TENANTS=5; RUNTIME=swarm)"
	@echo "make bench-backup     backup to S3 vs. pg_dump -Fc to a file, 200 MB of executions (MB=200); drill RTO"
	@echo "make bench-autoscale  autoscaler: second worker, 200-execution drain vs 1 worker, tick at 1k/5k tenants"
	@echo "make bench-load       a tenant under webhook load: sustainable rate, scale/kill/restart at 80 %, 3x overload (PLANS=starter,pro)"
	@echo "make bench-promote    promotion of a shared tenant with 200 MB of executions under 20 webhooks/s, and its rollback"
	@echo "make bench-upgrade    n8n 2.20.12 -> 2.22.6 of a tenant with 200 MB of executions under 20 webhooks/s, and its rollback"
	@echo "make bench-usage      usage aggregation of 10M executions / 1,000 tenants; chargeback 5,000 tenants x 30 days"

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]' 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	touch $@

install: $(VENV)/.installed

stack-up: install
	bash $(STACK) up

stack-down:
	bash $(STACK) down

stack-status:
	bash $(STACK) status

migrate: stack-up
	$(WITH_ENV) $(BIN)/python -m rp9_pipelines.catalog.migrate up
	$(WITH_ENV) $(BIN)/python -m rp9_pipelines.catalog.supabase_migrate

validate-production: install
	bash deploy/production/validate.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy rp9_pipelines rp9_run_launcher rp9_pipelines_tests bench testing

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test-fast: install
	$(BIN)/pytest -q -m "not stack"

# A Docker Swarm of Docker-in-Docker nodes on this machine (deploy/swarm/swarm.sh): m1 manager,
# w1 and w2 in region eu-1, w3 in us-1, with the stack's n8n image on every worker.
SWARM := deploy/swarm/swarm.sh
WITH_SWARM := $(WITH_ENV) eval "$$(bash $(SWARM) env)" && export TENANT_RUNTIME=swarm SWARM_MANAGER_HOST SWARM_NODE_ENGINE SWARM_SERVICES_IP S3_REGION_BUCKETS &&

swarm-up: stack-up
	bash $(SWARM) up
	$(WITH_ENV) bash $(SWARM) images "$$N8N_IMAGE:$$N8N_VERSION"

swarm-down:
	bash $(SWARM) down

swarm-status:
	bash $(SWARM) status

# What the Swarm runtime relies on, checked on the running swarm with figures (deploy/swarm/README.md).
swarm-verify: swarm-up
	bash $(SWARM) verify

# The upgrade versions' images on every worker too, for upgrades on the Swarm (build.sh waits for
# stack.sh's background build of a version, or finds it built).
swarm-images: swarm-up
	$(WITH_ENV) for v in $$N8N_UPGRADE_VERSIONS; do \
	  bash deploy/images/n8n/build.sh "$$v" "$$N8N_IMAGE" && bash $(SWARM) images "$$N8N_IMAGE:$$v" || exit 1; \
	done

# The runtime contract on both runtimes, and placement, node loss and the platform's flows on the
# Swarm.
test-swarm: migrate swarm-images
	$(WITH_SWARM) $(BIN)/pytest -q --durations=10 rp9_pipelines_tests/runtime

test: lint migrate
	$(WITH_ENV) $(BIN)/pytest -q --durations=15 -m "not swarm"

# RUNTIME=swarm: the tenants on the local Swarm (make swarm-up), beside a bare service create.
bench-provision: migrate $(if $(filter swarm,$(RUNTIME)),swarm-up)
	$(if $(filter swarm,$(RUNTIME)),$(WITH_SWARM),$(WITH_ENV)) $(BIN)/python -m bench.provision --tenants $${TENANTS:-5}

bench-backup: migrate
	$(WITH_ENV) $(BIN)/python -m bench.backup --mb $${MB:-200}

bench-autoscale: migrate
	$(WITH_ENV) $(BIN)/python -m bench.autoscale

bench-load: migrate
	$(WITH_ENV) $(BIN)/python -m bench.load --plans $${PLANS:-starter,pro}

bench-promote: migrate
	$(WITH_ENV) $(BIN)/python -m bench.promote

bench-upgrade: migrate
	$(WITH_ENV) $(BIN)/python -m bench.upgrade

bench-usage: migrate
	$(WITH_ENV) $(BIN)/python -m bench.usage

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

dagster: $(DAGSTER_HOME)/dagster.yaml
	$(WITH_ENV) $(BIN)/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

api:
	$(WITH_ENV) $(BIN)/uvicorn rp9_pipelines.api.main:app --host 127.0.0.1 --port $${ORCH_PORT}

demo-credentials:
	@$(WITH_ENV) $(BIN)/python -c "from rp9_pipelines.settings import get_settings as g; \
	from rp9_pipelines.resources.vault import VaultResource as V; s = g(); \
	v = V(vault_addr=s.vault_addr, vault_token=s.vault_token.get_secret_value()).read('rp9/tenants/demo') or {}; \
	print('email:', v.get('owner_email')); print('password:', v.get('owner_password'))"

dev: migrate $(DAGSTER_HOME)/dagster.yaml
	$(WITH_ENV) bash deploy/local/dev.sh
