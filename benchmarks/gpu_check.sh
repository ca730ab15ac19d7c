#!/usr/bin/env bash
# Issue 13's GPU figures in ONE call of the `device` tool (benchmarks/gpu_check.py measures).
#
#   here, once:  BENTOML_HOME=<a quick store> benchmarks/gpu_check.sh prepare
#                  -> .gpu-check/ (git-ignored): the serving wheels the GPU machine lacks (Python
#                     3.12, ~8 MB) and a copy of the store's models (~5 MB); must stay < 64 MiB
#   device:      run(command="bash benchmarks/gpu_check.sh", carry=[".gpu-check"], timeout_s=560)
#                  -> $OUT/gpu_check.json, $OUT/gpu_check.md, $OUT/server.log; commit them under
#                     results/gpu/ with the GPU model and driver they name
#   here, CPU:   benchmarks/gpu_check.sh --dry-run   (short runs on the CPU: checks the logic)
#
# The GPU machine (device README, KINDS.md) runs Python 3.12 with torch (CUDA 13), onnxruntime
# (CPU build) and numpy, and reaches no network: the rest of the serving stack (bentoml, fastapi,
# pydantic, ...) travels as wheels. onnxruntime-gpu itself is a 256 MB wheel, over the 64 MiB a
# call may carry: when it is not there, the figures are Podium's TorchScript runtime on CUDA (same
# batcher, HTTP path and settings), and gpu_check.json says which runtime produced them.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=.gpu-check

# The serving dependencies the GPU machine's image lacks, exactly as pip resolved bentoml==1.4.39
# and pyproject's serving pins for CPython 3.12 on 2026-11-30, pydantic-settings since issue 14,
# pysimdjson since issue 15 (the image's own numpy, pillow, PyYAML, httpx, uvloop,
# prometheus-client, ... are used as they are).
WHEELS=(
    bentoml==1.4.39 pydantic==2.14.3 pydantic_core==2.50.4 fastapi==0.165.0 starlette==1.10.0
    python-multipart==0.0.34 orjson==3.13.0 httptools==0.9.0 uvicorn==0.54.0 annotated-types==0.8.0
    typing-inspection==0.4.5 cattrs==23.1.2 opentelemetry-api==1.45.1 opentelemetry-sdk==1.45.1
    opentelemetry-semantic-conventions==0.66b1 opentelemetry-instrumentation==0.66b1
    opentelemetry-instrumentation-aiohttp-client==0.66b1 opentelemetry-instrumentation-asgi==0.66b1
    opentelemetry-util-http==0.66b1 asgiref==3.13.0 a2wsgi==1.10.10 aiohttp-asgi-connector==1.2.0
    aiosqlite==0.22.1 httpx-ws==0.9.0 kantoku==0.18.3 pip-requirements-parser==32.0.1 pyzmq==27.3.0
    rich-toolkit==0.20.6 simple-di==0.1.5 tornado==6.6.1 watchfiles==1.3.0 click-option-group==0.5.10
    python-json-logger==4.2.0 schema==0.7.8 tomli_w==1.2.0 tzdata==2026.6 wsproto==1.3.2
    pydantic-settings==2.16.3 python-dotenv==1.2.4 pysimdjson==7.0.2
)
PLATFORMS=(manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64
           manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64 manylinux1_x86_64)

prepare() {
    local home="${BENTOML_HOME:-$HOME/bentoml}"
    [[ -d "$home/models" ]] || { echo "gpu_check: no store at $home (set BENTOML_HOME)" >&2; exit 2; }
    rm -rf "$KIT" && mkdir -p "$KIT/wheels" "$KIT/store"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]/#/--platform=}" -d "$KIT/wheels" "${WHEELS[@]}"
    cp -r "$home/models" "$KIT/store/models"
    chmod -R a+rX "$KIT"
    local mib=$(( $(du -sb "$KIT" | cut -f1) / 1048576 ))
    echo "gpu_check: $KIT holds $(ls "$KIT/wheels" | wc -l) wheels and the models of $home: ${mib} MiB"
    (( mib < 60 )) || { echo "gpu_check: over the 64 MiB a device call carries (with the tree)" >&2; exit 1; }
}

device() {
    local out="${OUT:-results/tmp/gpu-check}"
    [[ -d "$KIT/wheels" && -d "$KIT/store/models" ]] || {
        echo "gpu_check: $KIT is missing: run 'benchmarks/gpu_check.sh prepare' here and carry it" >&2; exit 2; }
    mkdir -p "$out"
    nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
    # A venv of its own (bentoml's console script must sit beside its python: services/launch.py)
    # that also sees the image's packages (torch, numpy, ...) behind the carried serving wheels.
    # The image's python3 is itself a venv, so --system-site-packages would miss them: a .pth does it.
    "${PYTHON:-python3}" -m venv /tmp/podium-venv
    "${PYTHON:-python3}" -c 'import site; print("\n".join(site.getsitepackages()))' \
        > "$(/tmp/podium-venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/image.pth"
    /tmp/podium-venv/bin/python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        "$KIT"/wheels/*.whl
    export PYTHONUNBUFFERED=1 BENTOML_DO_NOT_TRACK=true
    local rc=0
    /tmp/podium-venv/bin/python -m benchmarks.gpu_check --store "$KIT/store" --out "$out" "$@" || rc=$?
    cp "$out"/server/*.log "$out/server.log" 2>/dev/null || true
    rm -rf "$out/server"
    return $rc
}

case "${1:-}" in
    prepare) prepare ;;
    --dry-run) shift; exec "${PYTHON:-.venv/bin/python}" -m benchmarks.gpu_check --dry-run "$@" ;;
    *) device "$@" ;;
esac
