# StartupMonkey developer commands. `make help` lists them.
.PHONY: help test setup demo lint types contract unit component integration e2e generate

help: ## list the commands
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

test: ## set up what is missing, then lint, types, import contract and every test
	bash hack/test.sh

setup: ## install system packages and the Python environment only
	bash hack/install-system-packages.sh && bash hack/setup-venv.sh

demo: setup ## run the demo on a throwaway PostgreSQL (no cluster needed)
	.venv/bin/startupmonkey demo

lint: ## ruff
	.venv/bin/ruff check .

types: ## mypy --strict over the installed package
	cd /tmp && $(CURDIR)/.venv/bin/mypy --config-file $(CURDIR)/pyproject.toml -p startupmonkey

contract: ## import-linter: components never import each other
	cd /tmp && $(CURDIR)/.venv/bin/lint-imports --config $(CURDIR)/.importlinter

unit: ## unit tests only (no servers)
	.venv/bin/python -m pytest tests/unit

component: ## component tests (real gRPC and NATS, hand-built snapshots: transport edge cases)
	.venv/bin/python -m pytest tests/component

integration: ## integration tests (real PostgreSQL, nats-server, gRPC)
	.venv/bin/python -m pytest tests/integration

e2e: ## tests on the real Kubernetes control plane
	.venv/bin/python -m pytest tests/e2e

.PHONY: test-matrix
test-matrix: ## the pg_matrix tier on PostgreSQL 13, 14, 16, 17 and 18 (make test runs one per commit)
	bash hack/install-postgres.sh
	STARTUPMONKEY_PG_MAJORS=all .venv/bin/python -m pytest tests/pg_matrix

generate: ## regenerate CRDs and gRPC stubs from their sources
	.venv/bin/python hack/gen_crds.py
	.venv/bin/python hack/gen_schemas.py
	.venv/bin/python hack/gen_protos.py
	.venv/bin/python hack/gen_config_docs.py
	.venv/bin/python hack/gen_rbac_docs.py

.PHONY: bench bench-quick
bench: ## full benchmarks, about an hour (figures in bench/results/, see docs/performance.md)
	.venv/bin/python bench/run.py --full

bench-quick: ## quick benchmarks, a few minutes (CI runs it so the harness cannot rot)
	.venv/bin/python bench/run.py --quick

.PHONY: image e2e-pods
image: ## build the image, the NATS image and the pause image without a registry (buildah, docs/control-plane.md#images)
	bash hack/install-node-packages.sh && bash hack/build-image.sh

e2e-pods: ## the chart on a real kubelet: real pods from the image built here (tests/pods, docs/control-plane.md#the-node)
	bash hack/install-node-packages.sh && bash hack/build-binaries.sh --node && bash hack/build-image.sh >/dev/null \
	  && .venv/bin/python -m pytest tests/pods
