# Containers (issue 7; deploy/README.md). The store is $BENTOML_HOME (default ~/bentoml), kept
# outside the source tree.
#   make bento            offline `bentoml build` with the configured model versions; prints the tag
#                         (GPU=1: the onnxruntime-gpu variant; PODIUM_BASE_IMAGE: another base image)
#   make container        bento + OCI image: CONTAINER_BACKEND=podman (here: local debootstrap
#                         base, chroot isolation, host network) or docker/buildx/... (standard path)
#   make container-smoke  run IMAGE on 127.0.0.1 (--network=host), wait for /readyz, one checked
#                         request per model, stop and remove it; bounded (SMOKE_TIMEOUT)
#   make container-lint   hadolint on the bento's generated Dockerfile (error level fails)
#   make container-report all of the above, timed, written to results/container/ (FORCE_BASE=1 also
#                         rebuilds the base image from scratch)
#   make container-tools  podman, buildah, runc and debootstrap from Debian when missing (root or sudo)
# The GPU image (issue 13): the same base, the `gpu` extra (onnxruntime-gpu + NVIDIA's CUDA/cuDNN
# wheels) instead of onnxruntime, no CUDA base image and no torch; the driver comes from the host.
#   make container-gpu        bento (GPU=1) + image $(GPU_IMAGE)
#   make container-gpu-smoke  its smoke test: here (no GPU) it must serve on the CPU provider and log
#                             the fallback warning exactly once (SMOKE_DEVICE=cuda on a GPU host)
#   make container-gpu-report both, timed, written to results/container/ (report-gpu.json)
CONTAINER_BACKEND ?= podman
IMAGE_NAME        ?= podium
IMAGE             ?= $(IMAGE_NAME):latest
BENTO_BUILD_DIR   ?= $(or $(TMPDIR),/tmp)/podium-bento-build
BENTO_TAG_FILE    := $(BENTO_BUILD_DIR)/bento-tag
SMOKE_TIMEOUT     ?= 420
CONTAINERIZE_OPTS ?= $(if $(filter podman,$(CONTAINER_BACKEND)),--opt isolation=chroot --opt network=host)
BENTOML_ENV       := BENTOML_DO_NOT_TRACK=true
GPU_IMAGE_NAME    ?= $(IMAGE_NAME)-gpu
GPU_IMAGE         ?= $(GPU_IMAGE_NAME):latest
GPU_BUILD_DIR     ?= $(BENTO_BUILD_DIR)-gpu
# The device the smoke test expects every model to run on (this build machine has no GPU).
SMOKE_DEVICE      ?= cpu
# A log line the container must print exactly once (smoke.sh); container-gpu-smoke sets it.
EXPECT_LOG_ONCE   ?=
CONTAINER_TOOLS   := podman buildah runc debootstrap
LOCAL_BASE_IMAGE  := localhost/podium-base:bookworm-py311

.PHONY: bento container container-base container-smoke container-lint container-report container-tools \
	container-gpu container-gpu-smoke container-gpu-report

# A fresh machine has none of these; Debian ships them (SPEC §5).
container-tools:
ifeq ($(CONTAINER_BACKEND),podman)
	@missing=""; for t in $(CONTAINER_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); echo "installing$$missing"; \
		$$SUDO apt-get install -y -q $$missing || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q $$missing; }; \
	fi
endif

bento: venv
	@mkdir -p $(BENTO_BUILD_DIR)
	$(BIN)/python deploy/bentofile.py $(if $(filter 1,$(GPU)),--gpu) --output $(BENTO_BUILD_DIR)/bentofile.yaml
	@set -e; t0=$$(date +%s); \
	out=$$($(BENTOML_ENV) $(BIN)/bentoml build -f $(BENTO_BUILD_DIR)/bentofile.yaml -o tag . 2>$(BENTO_BUILD_DIR)/build.log) \
		|| { cat $(BENTO_BUILD_DIR)/build.log >&2; exit 1; }; \
	tag=$$(printf '%s\n' "$$out" | sed -n 's/^__tag__://p' | tail -n1); \
	test -n "$$tag" || { echo "bentoml build printed no tag: $$out" >&2; exit 1; }; \
	echo "$$tag" > $(BENTO_TAG_FILE); \
	echo "bento: $$tag ($$(( $$(date +%s) - t0 ))s)"

# IMAGE is set explicitly: a command-line IMAGE=... (container-gpu passes one) is exported to the
# recipe's environment, and build-base.sh would otherwise build the base under that name.
container-base: container-tools
ifeq ($(CONTAINER_BACKEND),podman)
	IMAGE=$(LOCAL_BASE_IMAGE) deploy/container/build-base.sh
endif

container: bento container-base
	@set -e; tag=$$(cat $(BENTO_TAG_FILE)); t0=$$(date +%s); \
	echo "containerize $$tag -> $(IMAGE) (backend $(CONTAINER_BACKEND))"; \
	$(BENTOML_ENV) $(BIN)/bentoml containerize "$$tag" --backend $(CONTAINER_BACKEND) $(CONTAINERIZE_OPTS) \
		--image-tag $(IMAGE_NAME):$${tag#*:} --image-tag $(IMAGE); \
	secs=$$(( $$(date +%s) - t0 )); \
	if [ "$(CONTAINER_BACKEND)" = podman ]; then \
		size=$$(podman image inspect --format '{{.Size}}' $(IMAGE)); \
	else size=$$(docker image inspect --format '{{.Size}}' $(IMAGE)); fi; \
	echo "image: $(IMAGE) = $(IMAGE_NAME):$${tag#*:}, $$((size / 1000000)) MB, containerize $${secs}s"

# SMOKE_BENTO: the bento the image was built from, whose versions it must serve (default: the last
# `make bento`, when IMAGE is tagged with its version; otherwise that check is skipped).
SMOKE_BENTO ?=
container-smoke: venv
	@bento="$(SMOKE_BENTO)"; last=$$(cat $(BENTO_TAG_FILE) 2>/dev/null || true); \
	if [ -z "$$bento" ] && [ -n "$$last" ] && [ "$(CONTAINER_BACKEND)" = podman ] && \
		podman image inspect --format '{{.RepoTags}}' $(IMAGE) 2>/dev/null | grep -q ":$${last#*:}"; then \
		bento=$$last; fi; \
	echo "smoke: $(IMAGE)$${bento:+ (bento $$bento)}"; \
	SMOKE_BENTO=$$bento SMOKE_DEVICE=$(SMOKE_DEVICE) EXPECT_LOG_ONCE="$(EXPECT_LOG_ONCE)" timeout -k 20 $(SMOKE_TIMEOUT) \
		deploy/container/smoke.sh $(IMAGE) -- $(BIN)/python -m tests.container_smoke

container-gpu:
	$(MAKE) --no-print-directory container GPU=1 IMAGE_NAME=$(GPU_IMAGE_NAME) IMAGE=$(GPU_IMAGE) \
		BENTO_BUILD_DIR=$(GPU_BUILD_DIR)

# Without a GPU: the CPU provider, and the fallback warning logged once (not once per model).
container-gpu-smoke:
	$(MAKE) --no-print-directory container-smoke IMAGE=$(GPU_IMAGE) BENTO_BUILD_DIR=$(GPU_BUILD_DIR) \
		SMOKE_DEVICE=$(SMOKE_DEVICE) \
		$(if $(filter cpu,$(SMOKE_DEVICE)),EXPECT_LOG_ONCE="no CUDA device is visible: serving on the CPU provider")

container-lint: venv
	@tag=$$(cat $(BENTO_TAG_FILE) 2>/dev/null || echo podium:latest); \
	dockerfile=$$($(BIN)/bentoml get "$$tag" -o path)/env/docker/Dockerfile; \
	echo "hadolint $$dockerfile"; \
	$(BIN)/hadolint --failure-threshold error "$$dockerfile"

container-report: venv
	$(BIN)/python deploy/container/report.py results/container

container-gpu-report: venv
	$(BIN)/python deploy/container/report.py results/container --gpu
