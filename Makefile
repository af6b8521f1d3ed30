# Two commands a newcomer needs: `make demo` and `make test`. Both set up what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# make test's pytest worker processes (pytest-xdist): the process tests mostly wait on brokers and services,
# so two workers on a 2-core machine take about two thirds of one worker's time. TEST_WORKERS=0 runs in-process.
TEST_WORKERS ?= 2

.PHONY: demo demo-sites test lint typecheck check mosquitto prometheus venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Mosquitto from Debian's packages when the binary is missing (root or sudo needed once).
mosquitto:
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
		echo "installing mosquitto with apt-get"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq mosquitto mosquitto-clients; \
	fi

# Prometheus and promtool from Debian's packages when missing: the monitoring tests run a real server
# and check deploy/prometheus/ with promtool. No recommends: the node exporter and the rest are not needed.
prometheus:
	@if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then \
		echo "installing prometheus with apt-get"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends prometheus; \
	fi

demo: venv mosquitto
	$(BIN)/python examples/surface_defect_detection/run_demo.py

# The same job across two factory sites: a cloud broker and two site brokers bridged to it (docs/operations.md).
demo-sites: venv mosquitto
	$(BIN)/python examples/surface_defect_detection/run_demo.py --sites --workdir .demo-sites

test: venv mosquitto prometheus
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -n $(TEST_WORKERS)

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy

clean:
	rm -rf .demo .demo-sites .bench
