# Two commands do everything:  `make run` (the main job) and `make test` (the test suite, as CI runs it).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: run test train demo lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	touch $@

## make run: install if needed, train the quick synthetic zoo when weights/ has no member, then open the demo
run: $(VENV)/.installed
	@if ! ls weights/*/metrics.json >/dev/null 2>&1; then $(PY) train_all.py; else \
		echo "weights/ already holds members (rm -r weights to retrain)"; fi
	$(PY) -m demo --weights weights

## make train: only the quick synthetic training run (prints the leaderboard)
train: $(VENV)/.installed
	$(PY) train_all.py

## make demo: only the demo
demo: $(VENV)/.installed
	$(PY) -m demo --weights weights

## make test: install test dependencies if needed (chromium via apt when root and missing), lint, run pytest
test: $(VENV)/.installed-test
	@command -v chromium >/dev/null 2>&1 || bash .ci/ensure-chromium || echo "chromium missing: browser test will skip"
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .

clean:
	rm -rf weights data/synthetic .pytest_cache
