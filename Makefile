# Thin entry points; the logic lives in scripts/bootstrap.py, dode/companion/run_notebooks.py and dode/companion/build_book.py.
#   make book [PROFILE=smoke|cpu|paper]   run every notebook of the book, then build book/_build/html
#   make test                             ruff, then pytest
PYTHON ?= python3
VENV := .venv
PROFILE ?= cpu
# notebooks run at a time (each kernel on one thread; the reproduction notebook alone)
JOBS ?= 2
PY := $(VENV)/bin/python
# This checkout's own `dode` comes first even where .venv is shared with another checkout.
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: book test models clean venv

venv:
	@$(PYTHON) scripts/bootstrap.py --venv $(VENV)

book: venv
	$(PY) -m dode.companion.run_notebooks --profile $(PROFILE) --jobs $(JOBS)
	$(PY) -m dode.companion.build_book

test: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

models: venv
	$(PY) -m dode.zoo.train --model all
	$(PY) -m dode.metrics.classifier
	$(PY) -m dode.metrics digits-reference

clean:
	rm -rf book/_build book/executed
