# Two commands for a newcomer: `make run` and `make test`. Both create (or reuse) .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test tools bench outage lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

## run: the daemon on its embedded default (simulated providers + a local broker)
run: $(STAMP)
	$(BIN)/fairfeed run

## tools: the system tools the tests run (apt as root, else the command to type)
tools:
	tools/test-tools.sh

## test: lint, then the whole test suite
test: $(STAMP) tools
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/pytest

## bench: micro-benchmarks, Kaiko's gRPC path, saturation (three frame shapes, daemon vs baseline), 28k msg/s (daemon, baseline, broker floor), idle
bench: $(STAMP)
	$(BIN)/pytest bench --benchmark-only --benchmark-columns=min,median,mean,ops,rounds
	$(BIN)/python -m bench.kaiko_path
	$(BIN)/python -m bench.e2e
	$(BIN)/python -m bench.steady --flush-delay 2 --flush-delay 20

## outage: Kafka outages (10 s and 60 s), process kills, a full spool at the reference load, 28k trades/s
outage: $(STAMP)
	FAIRFEED_OUTAGE_RATE=28000 FAIRFEED_OUTAGE_SECONDS=10 $(BIN)/pytest -s -p no:cacheprovider tests/daemon/test_output_outage_e2e.py
	FAIRFEED_OUTAGE_RATE=28000 FAIRFEED_OUTAGE_SECONDS=60 $(BIN)/pytest -s -p no:cacheprovider tests/daemon/test_output_outage_e2e.py -k "broker_outage or network"

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .benchmarks .hypothesis build *.egg-info
