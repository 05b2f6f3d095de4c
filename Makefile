# Two entry points for a fresh clone: `make demo` and `make test`. Both create .venv themselves,
# with the exact versions of constraints.txt. Any Python 3.10-3.14 works; 3.11 is preferred when
# present because the tests and figures were made with it.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null || command -v python)
VENV := .venv
BIN := $(VENV)/$(if $(filter Windows_NT,$(OS)),Scripts,bin)
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean bench

PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m midigen.cli.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(PIP_INSTALL) -e '.[test,bench]'
	$(BIN)/python benchmarks/codec_speed.py
	$(BIN)/python benchmarks/prepare_speed.py

clean:
	rm -rf $(VENV) data/demo out/demo
