# Two commands for newcomers: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The harness never reaches a model hub; tests also enforce this with a socket guard.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup test demo bench lint clean

setup: $(STAMP)

# Re-installs only when the dependency declaration changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,data,app]'
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(VENV)/bin/pytest

# The embedded default: OpenMoji data -> autoencoder -> editing model -> edits -> grid + metrics.
# Reuses data and checkpoints from earlier runs; `make demo FRESH=1` starts over.
demo: setup
	FRESH=$(FRESH) PY=$(PY) bash scripts/quickstart.sh

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
