# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/qarad demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -p no:cacheprovider

bench: $(STAMP)
	$(PY) benchmarks/detect.py

clean:
	rm -rf runs .pytest_cache
