# Load tests (issue 6). Locust runs in its own process; every run is time-bounded and targets
# 127.0.0.1. Without HOST a server is started over the store ($BENTOML_HOME or ~/bentoml).
#   make loadtest                      bounded mixed-traffic run → CSV + HTML in LOADTEST_OUT
#   make loadtest-sweep                capacity per model: table, throughput-vs-p99 PNG
#   make loadtest-soak                 fixed load at SOAK_FRACTION of CAPACITY for SOAK_TIME s
HOST           ?=
LOADTEST_USERS ?= 8
LOADTEST_TIME  ?= 60
LOADTEST_OUT   ?=
LOADTEST_ARGS  ?=
WEIGHTS        ?=
P99_MS         ?= 100,char-rnn=400,mixed=400
STEP_TIME      ?= 12
MAX_USERS      ?= 64
SOAK_TIME      ?= 600
SOAK_FRACTION  ?= 0.7
SOAK_ROW       ?= mixed
RPS            ?=
CAPACITY       ?= $(lastword $(sort $(wildcard results/loadtest/*/sweep.json)))

LOADTEST := $(BIN)/python -m loadtests.run
LOADTEST_COMMON = $(if $(HOST),--host $(HOST)) $(if $(LOADTEST_OUT),--out $(LOADTEST_OUT)) \
	$(if $(WEIGHTS),--weights '$(WEIGHTS)') $(LOADTEST_ARGS)

.PHONY: loadtest loadtest-sweep loadtest-soak

loadtest: venv
	$(LOADTEST) once --users $(LOADTEST_USERS) --run-time $(LOADTEST_TIME) $(LOADTEST_COMMON)

loadtest-sweep: venv
	$(LOADTEST) sweep --p99-ms '$(P99_MS)' --step-s $(STEP_TIME) --max-users $(MAX_USERS) \
		$(LOADTEST_COMMON)

loadtest-soak: venv
	$(LOADTEST) soak --duration $(SOAK_TIME) --row $(SOAK_ROW) \
		$(if $(RPS),--rps $(RPS),$(if $(CAPACITY),--capacity $(CAPACITY)) --fraction $(SOAK_FRACTION)) \
		$(LOADTEST_COMMON)
