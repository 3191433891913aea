# kdbench: every target sets up its own virtual environment from pyproject.toml first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PAPER  ?= dkd
PRESET ?= paper
PAIR   ?=
SEEDS  ?= 1
MODEL  ?= resnet32x4
ARGS   ?=

.PHONY: setup reproduce test leaderboard check bench profile teachers list clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

reproduce: setup
	$(PY) -m kdbench reproduce $(PAPER) --preset $(PRESET) $(if $(PAIR),--pair $(PAIR)) --seeds $(SEEDS) $(ARGS)

# one test worker per core (pytest-xdist; the tests of a file stay on one worker), each on one thread
test: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -n auto --dist loadfile $(ARGS)

leaderboard: setup
	$(PY) -m kdbench leaderboard

check: setup
	$(PY) -m kdbench check

bench: setup
	$(PY) -m kdbench bench $(ARGS)
	$(PY) -m pytest tests/test_bench.py --benchmark-enable --benchmark-only -q

profile: setup
	$(PY) -m kdbench profile $(ARGS)

teachers: setup
	$(PY) -m kdbench teachers $(MODEL) $(ARGS)

list: setup
	$(PY) -m kdbench list

clean:
	rm -rf $(VENV) runs .pytest_cache
