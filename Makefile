# Two commands set everything up: `make demo` and `make test`. Each creates or reuses the venv.
SHELL := /bin/bash
VENV = $(shell ./scripts/venv.sh)
PY = PYTHONPATH=$(CURDIR)/src $(VENV)/bin/python
DEMO_DIR ?= demo-output

.PHONY: demo test venv bench bench-tiny clean
venv:
	@./scripts/venv.sh

demo:
	@$(PY) -m covidct demo --out $(DEMO_DIR)

test:
	@./scripts/browser.sh
	@./scripts/dicom-tools.sh
	@$(PY) -m pytest -q -rs -n 2 --dist loadgroup tests

# The full run on this machine (about 20 min on 2 quiet cores), written to BENCHMARKS.md and
# its JSON. It waits up to 10 min for the load average to fall to half the cores, refuses to
# report (exit 3) if it does not or if the load rises above it during the run.
BENCH_JSON ?= benchmarks/results/full-cpu-$(shell nproc)core.json
bench:
	@$(PY) -m benchmarks.run --wait-quiet 600 --json $(BENCH_JSON) --md BENCHMARKS.md

# Tiny sizes (seconds): checks that every row runs; the figures mean nothing.
bench-tiny:
	@$(PY) -m benchmarks.run --tiny --allow-loaded

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
