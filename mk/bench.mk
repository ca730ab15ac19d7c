# Benchmarks (issues 3, 4 and 15). Results go to BENCH_OUT and are committed (results/bench/).
#   make bench         raw in-process ONNX Runtime samples/s of every stored model (batch 1/64/256)
#   make bench-serve   the whole serving benchmark in one run (~10-15 min): runtime, the parse
#                      ceiling, the naive FastAPI+ORT server (1 and 2 workers), plain BentoML,
#                      Podium batching on/off per input form, char-rnn chars/s by concurrency,
#                      .npy 1024 in/out, workers × runtime threads, start-up; report + raw JSON +
#                      PNGs. Exits 1 (report: FAIL) when one of issue 15's targets is missed.
# The machine should be quiet: bench-serve waits up to BENCH_LOAD_WAIT s for the 1-minute load
# average to fall below BENCH_MAX_LOAD, then measures anyway (each figure records its load).
BENCH_OUT       ?= results/bench
BENCH_SECONDS   ?= 8
BENCH_MAX_LOAD  ?= 2.5
BENCH_LOAD_WAIT ?= 300
BENCH_PROFILE   ?= auto
BENCH_ARGS      ?=

.PHONY: bench bench-serve bench-tools

bench: venv
	$(BIN)/python -m benchmarks.bench_runtime --json $(BENCH_OUT)/runtime.json

# hey (the HTTP load generator) from the distribution's packages when it is missing; py-spy (the
# profiler, used only when a target is missed) into the venv — a tool, not a project dependency.
bench-tools: venv
	@command -v hey >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get install -y hey || { $$SUDO apt-get update && $$SUDO apt-get install -y hey; }; }
	@test "$(BENCH_PROFILE)" = never || test -x $(BIN)/py-spy || \
		$(BIN)/python -m pip install -q py-spy || echo "py-spy unavailable: no profile"

bench-serve: venv bench-tools
	$(BIN)/python -m benchmarks.bench_serve --out $(BENCH_OUT) --seconds $(BENCH_SECONDS) \
		--max-load $(BENCH_MAX_LOAD) --load-wait $(BENCH_LOAD_WAIT) --profile $(BENCH_PROFILE) \
		$(BENCH_ARGS)

# A/B of the serving path against an earlier commit, in one run (issues 10, 14, 15: "≥ 0.97×").
#   make bench-ab BASE=7688e6a   mnist-cnn JSON c=64; BENCH_AB_ARGS='--form oip --concurrency 16'
BASE        ?= HEAD~1
BENCH_AB_ARGS ?=

.PHONY: bench-ab
bench-ab: venv bench-tools
	$(BIN)/python -m benchmarks.ab_serve --base $(BASE) --max-load $(BENCH_MAX_LOAD) $(BENCH_AB_ARGS)
