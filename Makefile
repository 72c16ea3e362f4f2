# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
DB     ?= data/events.db
HOST   ?= 127.0.0.1
PORT   ?= 5000

.PHONY: run test lint format bench chromium postgres clean-db

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

## run: create the venv and database if missing, seed sample data into an empty database, serve on 127.0.0.1:5000
run: $(VENV)/.runtime
	$(PY) -m app migrate --db $(DB)
	@if [ -f generate_events.py ]; then $(PY) generate_events.py --db $(DB) --if-empty --seed 42; fi
	$(PY) -m app serve --db $(DB) --host $(HOST) --port $(PORT)

## test: the whole test suite on SQLite and on PostgreSQL, browser tests included (installs
## Chromium and Debian's postgresql when missing; the tests start their own throwaway cluster)
test: $(VENV)/.dev chromium postgres
	$(PY) -m pytest

chromium:
	@scripts/ensure-chromium

postgres:
	@scripts/ensure-postgres >/dev/null

lint: $(VENV)/.dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(VENV)/.dev
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

$(VENV)/.bench: $(VENV)/.runtime bench/requirements.txt
	$(PY) -m pip install --quiet -r bench/requirements.txt
	touch $@

## bench: the benchmark suite (a few minutes; BENCH_SIZES=1000000,10000000 for the 10M run, see bench/run.py),
## then PostgreSQL against SQLite (bench/postgres.py) and the data lifecycle (bench/lifecycle_postgres.py, at most
## 30 minutes) on throwaway PostgreSQL clusters; BENCH_ONLY=postgres or BENCH_ONLY=lifecycle_postgres for one alone
bench: $(VENV)/.bench postgres
	@scripts/ensure-wrk
	$(PY) bench/run.py
	$(PY) bench/postgres.py
	timeout -k 60 1800 $(PY) bench/lifecycle_postgres.py
