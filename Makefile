# The two entry points: `make demo` and `make test` (`make docs` regenerates README's tables). Each creates or reuses .venv itself.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export RAY_USAGE_STATS_ENABLED ?= 0
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: venv demo test docs clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# demo data -> 4-trial sweep (norm_pixel vs pixel x causal vs prefix) -> report, all under ./demo
demo: venv
	rm -rf demo
	$(VENV)/bin/aimctl data demo --out demo/data --per-shard 400 --curated-train 1200 --curated-test 400
	$(VENV)/bin/aimctl sweep experiments/ablations/demo.yaml
	$(VENV)/bin/aimctl report demo --tracking-uri sqlite:///$(CURDIR)/demo/mlflow.db --out demo/report
	@echo
	@echo "Report:    $(CURDIR)/demo/report/report.html  (and report.md, PNG charts)"
	@echo "MLflow UI: $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/demo/mlflow.db --host 127.0.0.1 --port 5000"

test: venv
	bash scripts/install_browser.sh  # headless Chromium for the `browser` tests (a no-op when one is installed)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m scripts.docs --check
	$(PY) -m pytest -q -p no:cacheprovider

# README's generated regions (<!-- BEGIN generated: NAME -->) from the JSON under docs/results/
docs: venv
	$(PY) -m scripts.docs

clean:
	rm -rf $(VENV) build *.egg-info
