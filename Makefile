# `make demo` and `make test` do all the set-up on a fresh machine:
# a virtual environment in .venv, PyTorch and torchreid at the versions of
# constraints.txt, this package (editable) with its test extra.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
STAMP := $(VENV)/.installed

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch torchvision
	$(PIP) -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) tools/demo.py

clean:
	rm -rf $(VENV) log build *.egg-info
