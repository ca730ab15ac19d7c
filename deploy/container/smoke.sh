#!/usr/bin/env bash
# Run a Podium (or any BentoML) image with podman on 127.0.0.1, wait for /readyz, run a check,
# then stop and remove the container. Bounded in time; leaves nothing running (trap).
#
# Usage: deploy/container/smoke.sh IMAGE [-- CHECK_COMMAND [ARGS...]]
#   The check runs on the host with BASE_URL=http://127.0.0.1:$PORT and PORT exported; it must
#   exit 0 for the smoke test to pass. Without one, the default check GETs /livez and /metrics.
#   Example: deploy/container/smoke.sh podium:latest -- .venv/bin/python -m tests.container_smoke
#
# Environment:
#   PORT            host port to serve on (default: a free one on 127.0.0.1)
#   READY_TIMEOUT   seconds to wait for /readyz          (default 180)
#   CHECK_TIMEOUT   seconds the check may take           (default 120)
#   PODMAN_RUN_ARGS extra `podman run` arguments, e.g. "-v /srv/store:/store:ro -e BENTOML_HOME=/store"
#   EXPECT_LOG_ONCE a fixed string the container log must hold exactly once (e.g. the GPU image's
#                   CPU-fallback warning: once per process, not once per model)
#   KEEP_LOGS=1     print the container log even on success
#
# Networking is always --network=host (podman's default bridge is not used) and the server binds
# 127.0.0.1 only. --runtime runc and the ulimits are what podman needs on our build machines.
set -euo pipefail

usage() { sed -n '2,9p' "$0" >&2; exit 2; }
[[ $# -ge 1 && "$1" != -* ]] || usage
IMAGE="$1"; shift
if [[ $# -gt 0 ]]; then [[ "$1" == "--" ]] || usage; shift; fi

READY_TIMEOUT="${READY_TIMEOUT:-180}"
CHECK_TIMEOUT="${CHECK_TIMEOUT:-120}"
PODMAN=(timeout 60 podman)
t0=$(date +%s)
say() { printf '[smoke %4ss] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }

command -v podman >/dev/null || { echo "smoke: podman not found" >&2; exit 2; }
command -v curl >/dev/null || { echo "smoke: curl not found" >&2; exit 2; }
podman image exists "$IMAGE" || { echo "smoke: image $IMAGE not found (make container)" >&2; exit 2; }

if [[ -z "${PORT:-}" ]]; then
    PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
BASE_URL="http://127.0.0.1:$PORT"
if curl -s -o /dev/null --max-time 2 "$BASE_URL/"; then
    echo "smoke: something already listens on 127.0.0.1:$PORT" >&2; exit 2
fi
NAME="podium-smoke-$$-$PORT"

cid=""
cleanup() {
    rc=$?
    if [[ -n "$cid" ]]; then
        if [[ $rc -ne 0 || "${KEEP_LOGS:-0}" == 1 ]]; then
            echo "----- container log (tail) -----" >&2
            timeout 20 podman logs --tail 60 "$cid" >&2 2>&1 || true
            echo "--------------------------------" >&2
        fi
        timeout 30 podman stop -t 10 "$cid" >/dev/null 2>&1 || true
        timeout 30 podman rm -f "$cid" >/dev/null 2>&1 || true
        say "container $NAME stopped and removed"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "run $IMAGE as $NAME on $BASE_URL"
# shellcheck disable=SC2086  # PODMAN_RUN_ARGS is a list of words on purpose
cid="$("${PODMAN[@]}" run -d --name "$NAME" --network=host --runtime runc \
    --ulimit nofile=1024:1024 --ulimit nproc=1000:1000 ${PODMAN_RUN_ARGS:-} \
    "$IMAGE" --host 127.0.0.1 --port "$PORT")"

deadline=$(( $(date +%s) + READY_TIMEOUT ))
until curl -fs -o /dev/null --max-time 2 "$BASE_URL/readyz"; do
    state="$(timeout 20 podman inspect --format '{{.State.Status}}' "$cid" 2>/dev/null || echo gone)"
    if [[ "$state" != running && "$state" != created ]]; then
        echo "smoke: container is $state before /readyz answered" >&2; exit 1
    fi
    if (( $(date +%s) > deadline )); then
        echo "smoke: /readyz not ready after ${READY_TIMEOUT}s" >&2; exit 1
    fi
    sleep 1
done
say "/readyz OK"

export BASE_URL PORT
if [[ $# -gt 0 ]]; then
    say "check: $*"
    timeout "$CHECK_TIMEOUT" "$@"
else
    say "check: default (/livez, /metrics)"
    timeout "$CHECK_TIMEOUT" bash -c 'curl -fsS --max-time 5 "$BASE_URL/livez" >/dev/null &&
        curl -fsS --max-time 5 "$BASE_URL/metrics" | grep -q "^# TYPE"'
fi
if [[ -n "${EXPECT_LOG_ONCE:-}" ]]; then
    n="$(timeout 20 podman logs "$cid" 2>&1 | grep -cF -- "$EXPECT_LOG_ONCE" || true)"
    if [[ "$n" != 1 ]]; then
        echo "smoke: the container log holds \"$EXPECT_LOG_ONCE\" $n time(s), expected once" >&2; exit 1
    fi
    say "log: \"$EXPECT_LOG_ONCE\" exactly once"
fi
say "PASS ($IMAGE)"
