# Fresh-machine entry points: `make demo` and `make test` each create .venv if missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ihs-installed

.PHONY: demo test test-fast lint install clean browser

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first, pinned: a looser requirement would pull a multi-GB CUDA build.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The whole analysis of the default model on the built-in sets, and one HTML report (see README, "ihs run").
demo: $(STAMP)
	$(VENV)/bin/ihs run --out runs/demo
	@echo "demo report: $(CURDIR)/runs/demo/report.html"

test: $(STAMP) browser
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/pytest -q

# Headless Chromium for the report's browser test: installed when running as root and missing; never fails
# the target (without it the browser test skips and says why).
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium and chromium-driver for the browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
			>/dev/null 2>&1 || echo "note: could not install chromium; the browser test will be skipped"; \
	else echo "note: chromium not installed (not root or no apt-get); the browser test will be skipped"; fi

test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
