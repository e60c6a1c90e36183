# pgmedic: `make test` installs what is missing and runs every check; `make demo` shows a real recovery.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test demo dashboards lint rules-check system-deps venv bench clean

test: venv system-deps lint rules-check
	$(PY) -m pytest tests

demo: venv system-deps
	$(VENV)/bin/pgmedic demo

dashboards: venv
	$(PY) grafana/build.py

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

system-deps:
	scripts/system-deps.sh

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

rules-check: system-deps
	promtool check rules alerts/pgmedic.rules.yml
	promtool test rules alerts/tests/*.yml
	amtool check-config alerts/alertmanager.yml
	promtool check config alerts/prometheus.yml

bench: venv
	scripts/system-deps.sh prometheus-postgres-exporter
	$(PY) bench/scrape.py
	$(PY) bench/mttr.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
