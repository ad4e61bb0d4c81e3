# cart_course: two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test lint bench fmt clean serve demo

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "cart_course needs Python 3.11+"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## run: the HTTP service and dashboard on http://127.0.0.1:8000 over the embedded SQLite default
## (var/cart-course.sqlite); an empty store gets a demo cohort, and the demo tokens are printed
run: $(STAMP)
	$(VENV)/bin/cart-course serve --demo --host 127.0.0.1 --port 8000

## test: the whole suite (PostgreSQL tests start their own server)
test: $(STAMP)
	$(PY) -m pytest

## lint: ruff and mypy --strict on the package
lint: $(STAMP)
	$(VENV)/bin/ruff check cart_course tests bench
	$(VENV)/bin/ruff format --check cart_course tests bench
	$(VENV)/bin/mypy cart_course

fmt: $(STAMP)
	$(VENV)/bin/ruff format cart_course tests bench
	$(VENV)/bin/ruff check --fix cart_course tests bench

## bench: benchmarks; writes docs/performance.md
bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
