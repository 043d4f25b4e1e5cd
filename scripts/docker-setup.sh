#!/usr/bin/env bash
# Prepare this machine to build and run the transfer-bench container. Idempotent.
#
#   1. installs the Debian packages docker.io, docker-compose (v1) and debootstrap if missing;
#   2. starts dockerd in the background if the engine does not answer, and waits for it;
#   3. builds the local base image transfer-bench-base:bookworm (a debootstrapped Debian
#      root with python3 + venv + pip, `docker import`ed) if the engine lacks it. No image
#      registry is reachable here, so nothing is pulled; the rootfs tarball is cached in
#      $BENCH_DOCKER_CACHE (default /var/cache/transfer-bench) so repeated runs are fast.
#
# Needs root for what it has to do (not when all is in place). Prints one line per step saying what it did (or that nothing was needed).
# Environment knobs:
#   BENCH_BASE_IMAGE     tag of the base image      (default transfer-bench-base:bookworm)
#   BENCH_DOCKER_CACHE   rootfs tarball cache dir   (default /var/cache/transfer-bench)
#   BENCH_DEBIAN_MIRROR  mirror for debootstrap     (default http://deb.debian.org/debian)
#   BENCH_DOCKERD_LOG    dockerd log file           (default /var/log/transfer-bench-dockerd.log)
set -euo pipefail

BASE_IMAGE="${BENCH_BASE_IMAGE:-transfer-bench-base:bookworm}"
CACHE_DIR="${BENCH_DOCKER_CACHE:-/var/cache/transfer-bench}"
MIRROR="${BENCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
ROOTFS_TAR="$CACHE_DIR/debian-$SUITE-python3-rootfs.tar"
DOCKERD_LOG="${BENCH_DOCKERD_LOG:-/var/log/transfer-bench-dockerd.log}"
# Prefer Debian's client (/usr/bin/docker): it builds with BuildKit; another client on the
# PATH may lack buildx.
DOCKER=""

say() { printf 'docker-setup: %s\n' "$*"; }
die() { printf 'docker-setup: error: %s\n' "$*" >&2; exit 1; }

# --- 1. packages -------------------------------------------------------------------------
# Any working engine and client will do (a GPU runner may carry docker-ce); Debian's
# packages are installed only for what is missing.
need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root to $1; try: sudo $0"
}
pick_docker() {
    if [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker
    else DOCKER="$(command -v docker || true)"; fi
}
base_present() { [[ -n $DOCKER ]] && "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; }
pick_docker
missing=()
{ [[ -n $DOCKER ]] && command -v dockerd >/dev/null 2>&1; } || missing+=(docker.io)
command -v docker-compose >/dev/null 2>&1 \
    || { [[ -n $DOCKER ]] && "$DOCKER" compose version >/dev/null 2>&1; } \
    || missing+=(docker-compose)
if ! command -v debootstrap >/dev/null 2>&1 && [[ ! -s $ROOTFS_TAR ]] && ! base_present; then
    missing+=(debootstrap)
fi
if ((${#missing[@]})); then
    need_root "install ${missing[*]}"
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
    pick_docker
else
    say "packages already installed (docker: $DOCKER, compose, debootstrap or a base image)"
fi

# --- 2. engine ---------------------------------------------------------------------------
if "$DOCKER" info >/dev/null 2>&1; then
    say "dockerd already running"
else
    need_root "start dockerd"
    say "starting dockerd in the background (log: $DOCKERD_LOG)"
    nohup dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
    disown || true
    for _ in $(seq 1 60); do
        "$DOCKER" info >/dev/null 2>&1 && break
        sleep 1
    done
    "$DOCKER" info >/dev/null 2>&1 || die "dockerd did not answer within 60 s; see $DOCKERD_LOG"
    say "dockerd is up"
fi

# --- 3. base image -----------------------------------------------------------------------
if base_present; then
    say "base image $BASE_IMAGE already present"
    exit 0
fi

if [[ -s "$ROOTFS_TAR" ]]; then
    say "using cached rootfs $ROOTFS_TAR"
else
    need_root "debootstrap a Debian root"
    mkdir -p "$CACHE_DIR"
    work="$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    say "debootstrapping Debian $SUITE with python3 into $work (a few minutes)"
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates \
        "$SUITE" "$work/root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
    # Slim the root: package lists and caches are not needed at run time.
    rm -rf "$work/root/var/lib/apt/lists/"* "$work/root/var/cache/apt/"*.bin \
        "$work/root/var/cache/apt/archives/"*.deb "$work/root/usr/share/doc/"* \
        "$work/root/usr/share/man/"* "$work/root/usr/share/locale/"*
    tar --numeric-owner -C "$work/root" -cf "$work/rootfs.tar" .
    mv "$work/rootfs.tar" "$ROOTFS_TAR"
    rm -rf "$work"
    trap - EXIT
    say "cached rootfs $ROOTFS_TAR ($(du -h "$ROOTFS_TAR" | cut -f1))"
fi

say "importing $ROOTFS_TAR as $BASE_IMAGE"
"$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    "$ROOTFS_TAR" "$BASE_IMAGE" >/dev/null
say "base image $BASE_IMAGE ready ($("$DOCKER" image inspect -f '{{.Size}}' "$BASE_IMAGE") bytes)"
