#!/usr/bin/env bash
# Build Podium's minimal local base image with debootstrap and import it with podman.
#
# For machines with podman but no reachable container registry (air-gapped): the bento's
# Dockerfile then starts FROM this local image (bentofile.yaml: docker.base_image), so nothing
# is pulled. Debian bookworm, whose python3 is 3.11 (the version Podium pins).
#
# What the image holds: a debootstrap "minbase" system + python3 (3.11), python3-venv,
# python3-pip, ca-certificates, uv (the installer BentoML's Dockerfile uses), the host's extra
# CA certificates (copied from the host trust store at build time, never committed), and no
# EXTERNALLY-MANAGED marker (so pip may install into the system Python).
#
# Idempotent: does nothing if the image already exists, unless FORCE=1.
# Needs: root, debootstrap, podman (apt-get install -y podman runc debootstrap).
#
# Environment:
#   IMAGE          image name            (default localhost/podium-base:bookworm-py311)
#   SUITE          Debian suite           (default bookworm)
#   DEBIAN_MIRROR  Debian mirror URL      (default: the first one in this host's apt sources)
#   UV_VERSION     uv to bake in          (default: the uv version on PATH or in .venv, else latest)
#   EXTRA_CA_DIRS  extra dirs of *.crt    (default /usr/local/share/ca-certificates)
#   FORCE=1        rebuild even if the image exists
#   KEEP_ROOTFS=1  keep the temporary rootfs (for debugging)
set -euo pipefail

IMAGE="${IMAGE:-localhost/podium-base:bookworm-py311}"
SUITE="${SUITE:-bookworm}"
EXTRA_CA_DIRS="${EXTRA_CA_DIRS:-/usr/local/share/ca-certificates}"
PACKAGES="python3,python3-venv,python3-pip,ca-certificates"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

t0=$(date +%s)
step() { printf '[build-base %4ss] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }
die() { echo "build-base: $*" >&2; exit 1; }

command -v podman >/dev/null || die "podman not found (apt-get install -y podman runc debootstrap)"
if [[ "${FORCE:-0}" != 1 ]] && podman image exists "$IMAGE"; then
    step "$IMAGE already exists ($(podman image inspect --format '{{.Size}}' "$IMAGE") bytes); FORCE=1 rebuilds it"
    exit 0
fi
[[ $(id -u) == 0 ]] || die "debootstrap needs root"
command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install -y debootstrap)"

# The mirror: whatever this host's apt already uses (deb822 *.sources or one-line sources.list).
if [[ -z "${DEBIAN_MIRROR:-}" ]]; then
    DEBIAN_MIRROR="$(
        { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
          grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | sed -E 's/\[[^]]*\]//' | awk '{print $2}'; } | grep -v -- '-security' | head -n1
    )" || true
fi
[[ -n "${DEBIAN_MIRROR:-}" ]] || die "no Debian mirror found in /etc/apt; set DEBIAN_MIRROR"

if [[ -z "${UV_VERSION:-}" ]]; then
    for uv in "$(command -v uv || true)" "$REPO/.venv/bin/uv"; do
        [[ -x "$uv" ]] && UV_VERSION="$("$uv" --version | awk '{print $2}')" && break
    done
fi
UV_SPEC="uv${UV_VERSION:+==$UV_VERSION}"

WORK="$(mktemp -d /tmp/podium-base.XXXXXX)"
ROOTFS="$WORK/rootfs"
cleanup() {
    # never leave the host's /proc mounted inside the rootfs, never delete through a mount
    if mountpoint -q "$ROOTFS/proc" 2>/dev/null; then umount "$ROOTFS/proc" || umount -l "$ROOTFS/proc" || true; fi
    if grep -q " $ROOTFS/" /proc/mounts; then echo "build-base: mounts left under $ROOTFS, not deleting it" >&2
    elif [[ "${KEEP_ROOTFS:-0}" == 1 ]]; then echo "rootfs kept in $ROOTFS"
    else rm -rf "$WORK"; fi
}
trap cleanup EXIT

step "debootstrap --variant=minbase $SUITE (+ $PACKAGES) into $ROOTFS"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$DEBIAN_MIRROR" \
    > "$WORK/debootstrap.log" 2>&1 || { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }

# A clean environment inside the chroot, except the host's proxy settings (if any).
proxy_env=()
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    [[ -n "${!v:-}" ]] && proxy_env+=("$v=${!v}")
done
chroot_run() { chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "${proxy_env[@]}" "$@"; }
mount -t proc proc "$ROOTFS/proc"     # debootstrap already created the device nodes in /dev
cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf"

# Same apt sources as the host (security updates included), then upgrade and drop the lists.
step "apt sources from the host, security updates"
rm -f "$ROOTFS/etc/apt/sources.list"
cp /etc/apt/sources.list.d/*.sources "$ROOTFS/etc/apt/sources.list.d/" 2>/dev/null || true
[[ -f /etc/apt/sources.list ]] && cp /etc/apt/sources.list "$ROOTFS/etc/apt/sources.list"
chroot_run apt-get -q update >>"$WORK/apt.log" 2>&1 || { tail -n 20 "$WORK/apt.log" >&2; die "apt-get update failed"; }
chroot_run apt-get -q -y --no-install-recommends upgrade >>"$WORK/apt.log" 2>&1 \
    || { tail -n 20 "$WORK/apt.log" >&2; die "apt-get upgrade failed"; }

step "extra CA certificates from the host trust store"
n=0
mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
for d in $EXTRA_CA_DIRS; do
    [[ -d "$d" ]] || continue
    while IFS= read -r -d '' crt; do
        install -m 0644 "$crt" "$ROOTFS/usr/local/share/ca-certificates/host-$(basename "$crt")"; n=$((n + 1))
    done < <(find "$d" -type f -name '*.crt' -print0)
done
# A CA bundle that pip/requests are told to use, if it is not the system bundle, is trusted too.
pip_cert="$(pip config get global.cert 2>/dev/null || true)"
for b in "${PIP_CERT:-}" "${REQUESTS_CA_BUNDLE:-}" "${SSL_CERT_FILE:-}" "$pip_cert"; do
    [[ -n "$b" && -f "$b" && "$(readlink -f "$b")" != /etc/ssl/certs/ca-certificates.crt ]] || continue
    install -m 0644 "$b" "$ROOTFS/usr/local/share/ca-certificates/host-bundle-$n.crt"; n=$((n + 1))
done
chroot_run update-ca-certificates >/dev/null 2>&1
step "  $n extra CA file(s) trusted"

step "remove EXTERNALLY-MANAGED, install $UV_SPEC"
rm -f "$ROOTFS"/usr/lib/python3*/EXTERNALLY-MANAGED
chroot_run python3 -m pip install -q --no-cache-dir --root-user-action=ignore \
    --cert /etc/ssl/certs/ca-certificates.crt "$UV_SPEC"
chroot_run python3 --version
chroot_run uv --version

step "trim (apt lists and caches, docs, man pages, locales, logs)"
umount "$ROOTFS/proc"
chroot_run apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/debconf/*-old \
       "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
       "$ROOTFS"/usr/share/locale/* "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/* \
       "$ROOTFS"/root/.cache "$ROOTFS"/tmp/* "$ROOTFS"/etc/resolv.conf
: > "$ROOTFS/etc/resolv.conf"      # podman writes its own at run time
find "$ROOTFS/usr/lib/python3" "$ROOTFS/usr/local/lib" -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true

step "podman import -> $IMAGE"
podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
tar --numeric-owner --xattrs -C "$ROOTFS" -c . | podman import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV UV_NATIVE_TLS=1' \
    --change 'ENV UV_NO_CACHE=1' \
    --change 'ENV PIP_NO_CACHE_DIR=1' \
    --change 'CMD ["/bin/bash"]' \
    --message "podium base: debian $SUITE minbase + python3 + uv (build-base.sh)" \
    - "$IMAGE" >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
step "done: $IMAGE, $((size / 1000000)) MB, $(podman run --rm --network=host --runtime runc \
    --ulimit nofile=1024:1024 --ulimit nproc=1000:1000 "$IMAGE" python3 --version)"
