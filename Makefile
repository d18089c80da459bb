# Two commands set everything up: `make demo` and `make test`. Each creates or reuses the venv.
SHELL := /bin/bash
VENV = $(shell ./scripts/venv.sh)
PY = PYTHONPATH=$(CURDIR)/src $(VENV)/bin/python
DEMO_DIR ?= demo-output

.PHONY: demo test venv bench clean
venv:
	@./scripts/venv.sh

demo:
	@$(PY) -m covidct demo --out $(DEMO_DIR)

test:
	@./scripts/browser.sh
	@./scripts/dicom-tools.sh
	@$(PY) -m pytest -q -n 2 --dist loadgroup tests

bench:
	@$(PY) -m benchmarks.run --tiny

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
