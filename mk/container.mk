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
CONTAINER_BACKEND ?= podman
IMAGE_NAME        ?= podium
IMAGE             ?= $(IMAGE_NAME):latest
BENTO_BUILD_DIR   ?= $(or $(TMPDIR),/tmp)/podium-bento-build
BENTO_TAG_FILE    := $(BENTO_BUILD_DIR)/bento-tag
SMOKE_TIMEOUT     ?= 420
CONTAINERIZE_OPTS ?= $(if $(filter podman,$(CONTAINER_BACKEND)),--opt isolation=chroot --opt network=host)
BENTOML_ENV       := BENTOML_DO_NOT_TRACK=true

.PHONY: bento container container-base container-smoke container-lint container-report

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

container-base:
ifeq ($(CONTAINER_BACKEND),podman)
	deploy/container/build-base.sh
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
	SMOKE_BENTO=$$bento timeout -k 20 $(SMOKE_TIMEOUT) \
		deploy/container/smoke.sh $(IMAGE) -- $(BIN)/python -m tests.container_smoke

container-lint: venv
	@tag=$$(cat $(BENTO_TAG_FILE) 2>/dev/null || echo podium:latest); \
	dockerfile=$$($(BIN)/bentoml get "$$tag" -o path)/env/docker/Dockerfile; \
	echo "hadolint $$dockerfile"; \
	$(BIN)/hadolint --failure-threshold error "$$dockerfile"

container-report: venv
	$(BIN)/python deploy/container/report.py results/container
