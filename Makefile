# Fresh-machine entry points: `make demo` and `make test` each create .venv if missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ihs-installed

.PHONY: demo test test-fast lint install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first, pinned: a looser requirement would pull a multi-GB CUDA build.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ihs extract --model smollm2-135m-instruct \
		--data normal=builtin:normal --data malicious=builtin:malicious \
		--limit 100 --out runs/demo --overwrite
	$(VENV)/bin/ihs probe runs/demo --out runs/demo/probe
	@echo "demo results: runs/demo (probe.json and figures in runs/demo/probe)"

test: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/pytest -q

test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
