# voltabuild — `make demo` runs a real build on the local stack; `make test` runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: help venv system-deps lint test test-flaky mutate demo up down status metrics bench fuzz package deploy clean

help:
	@echo "make demo     start the local stack and build the canary image end to end"
	@echo "make test     lint and run every test (creates .venv, installs Debian packages as root)"
	@echo "make test-flaky N=5  the end-to-end and concurrency tests N times in a row; fails on any failure"
	@echo "make up/down  start/stop the local stack (moto, chalice local, registry, Slack sink, worker)"
	@echo "make status   what the local stack runs and where"
	@echo "make metrics  the local stack's metrics (the EMF lines its processes logged), summed up"
	@echo "make mutate  mutation testing of the core modules (MODULE=name for one); not part of make test"
	@echo "make bench    AWS calls per operation, latency/scale ratios, cold start; writes bench/results.json"
	@echo "make fuzz     a long schemathesis run against the API's OpenAPI document"
	@echo "make catalog-refresh  list PyPI releases newer than the catalog; writes dist/catalog-refresh/catalog.patch"
	@echo "make lock     learn the base images' digests, then resolve every combination's lock file (reuses the ones up to date)"
	@echo "make package  build dist/<stage>/sam.json (CloudFormation/SAM) and deployment.zip (STAGE=dev|prod)"
	@echo "make deploy   package and deploy to the AWS account of your credentials (STAGE=dev|prod)"

$(STAMP): requirements.txt requirements-dev.txt $(wildcard client/pyproject.toml)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	@if [ -f client/pyproject.toml ]; then $(PY) -m pip install -q --disable-pip-version-check -e client; fi
	@touch $@

venv: $(STAMP)

system-deps:
	@bash scripts/system-deps.sh

lint: venv
	$(VENV)/bin/ruff check .

# The suite runs on TEST_WORKERS processes (pytest-xdist), a whole test file to each at a time:
# the files that start a local stack keep it to themselves. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: venv system-deps lint
	$(PY) -m pytest -q --durations=15 $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# `make test-flaky N=5`: the end-to-end and concurrency tests N times in a row; any failure
# in any round fails the target, and each round's summary is printed.
N ?= 5
FLAKY_TESTS ?= tests/e2e tests/api/test_concurrency.py tests/notify/test_consumer_races.py
test-flaky: venv system-deps
	@mkdir -p .voltabuild/flaky; fails=0; for i in $$(seq 1 $(N)); do \
	  log=.voltabuild/flaky/round-$$i.log; echo "== round $$i of $(N)"; \
	  if $(PY) -m pytest -q -p no:cacheprovider $(FLAKY_TESTS) >$$log 2>&1; then tail -n 1 $$log; \
	  else fails=$$((fails + 1)); grep -E '^(FAILED|ERROR) ' $$log; tail -n 1 $$log; echo "   the whole output: $$log"; fi; \
	done; \
	echo "$$fails of $(N) rounds failed"; [ $$fails -eq 0 ]

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

# ---- the local stack --------------------------------------------------------
up: venv system-deps
	$(PY) -m voltabuild_local up

down:
	@if [ -x $(PY) ]; then $(PY) -m voltabuild_local down; fi

status: venv
	$(PY) -m voltabuild_local status

metrics: venv
	$(PY) -m voltabuild_local metrics

demo: venv system-deps
	$(PY) -m voltabuild_local demo $(if $(KEEP),--keep)

# ---- deployment -------------------------------------------------------------
STAGE ?= dev

package: venv
	$(PY) -m infra.package --stage $(STAGE) --out dist/$(STAGE)

deploy: package
	STAGE=$(STAGE) bash scripts/deploy.sh

# ---- mutation testing ------------------------------------------------------------------
# `make mutate` (every core module) or `make mutate MODULE=hostscript`: mutmut per module
# (MUTATE_CHILDREN=1 runs one test process at a time),
# scores and surviving mutants; equivalents are listed in tests/mutation/equivalents.txt.
mutate: venv
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-mutate.txt
	$(PY) scripts/mutate.py $(MODULE)

# ---- benchmarks -----------------------------------------------------------
# `make bench`: API calls per operation, latency ratios, scale, cold start (bench/results.json)
# (FAST=1: fewer samples, 2,000 builds for the scale and reaper figures instead of 10,000 and a burst of
# 10 canaries instead of 50, in about 5 minutes on 2 CPUs; needs buildah as root, as make demo)
bench: venv system-deps
	$(PY) -m bench.run $(if $(FAST),--quick)

# `make fuzz`: schemathesis against the served OpenAPI document, many more examples than `make test`
FUZZ_EXAMPLES ?= 300
fuzz: venv
	FUZZ_MAX_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider tests/fuzz

# ---- the catalog -----------------------------------------------------------
# `make lock`: the base images' digests (buildspecs/facts/base-digests.yaml, scripts/base_digests.py), then
# the images' lock files (buildspecs/locks/, scripts/lock.py); ALL=1 every combination.
# Reproducible: --exclude-newer at each version's PACKAGES_AS_OF, and uv pinned in requirements-dev.txt.
.PHONY: lock
lock: venv
	$(PY) scripts/lock.py --uv $(VENV)/bin/uv $(if $(ALL),--all)

# `make catalog-refresh`: releases on PyPI newer than the catalog, as a patch for review
.PHONY: catalog-refresh
catalog-refresh: venv
	$(PY) -m infra.catalog_refresh
