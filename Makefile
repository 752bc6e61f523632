# Every target works on a fresh machine: `make setup` is a dependency of the others.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup test demo lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# the CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,photos]'
	@test -d $(FASHION_DIR) || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; } \
	  || echo "warning: dataset-fashion-mnist not installed; 'cogview data fashion' will not work"
	touch $@

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/cogview data shapes --out demo/shapes --n 512 --seed 0

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache
