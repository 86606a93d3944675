# mail-proxy: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# The suite runs on PostgreSQL (the production database) and again on SQLite (the embedded one).
TEST_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/mailproxy

.PHONY: run install install-dev test test-postgres test-sqlite test-reliability lint migrations-check compose-check bench bench-compare clean

$(BIN)/.installed: requirements/base.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements/base.txt
	$(BIN)/pip install --quiet --no-deps -e .  # puts the `mail-proxy` command in $(BIN)
	touch $@

$(BIN)/.installed-dev: requirements/dev.txt requirements/base.txt $(BIN)/.installed
	$(BIN)/pip install --quiet -r requirements/dev.txt
	touch $@

install: $(BIN)/.installed
install-dev: $(BIN)/.installed-dev

## run: install, migrate and run the embedded instance (API + worker + beat, SQLite in ./var)
run: install
	$(BIN)/python manage.py serve --host $(HOST) --port $(PORT)

## test: the whole suite on PostgreSQL, then on SQLite
test: install-dev test-postgres test-sqlite

test-postgres: install-dev
	DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/pytest --create-db -m "not sqlite_only" $(PYTEST_ARGS)

test-sqlite: install-dev
	DATABASE_URL= $(BIN)/pytest -m "not postgres" $(PYTEST_ARGS)

## test-reliability: the fault-injection suite on PostgreSQL (about 12 min; PYTEST_ARGS='-m "not slow"' for the quick part)
test-reliability: install-dev
	DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/pytest --create-db tests/reliability $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy .

migrations-check: install-dev
	GMP_DATA_DIR=$$(mktemp -d) $(BIN)/python manage.py makemigrations --check --dry-run

## compose-check: docker-compose.yml parses and interpolates (dummy secrets; no Docker engine needed)
compose-check:
	POSTGRES_PASSWORD=compose-check GMP_API_TOKEN=compose-check MAIL_PROXY_ENCRYPTION_KEY=compose-check \
	  DJANGO_SECRET_KEY=compose-check docker-compose -f docker-compose.yml config -q

bench: install-dev
	DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python bench/enqueue.py

## bench-compare: this product side by side with the seed genro-mail-proxy 0.7.0 (bench/COMPARE.md; ~10 min)
bench-compare: install-dev
	DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python bench/compare.py $(COMPARE_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
