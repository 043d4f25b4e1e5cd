#!/usr/bin/env bash
# Build the transfer-bench image with the docker CLI (for hosts without the harness
# installed, e.g. a CI runner; with the harness, `bench docker build` does the same
# through the Docker SDK).
#
#   scripts/docker-build.sh [cpu|cuda] [--base IMAGE] [--tag TAG] [--no-cache]
#
# Default flavour: cuda (tensorflow[and-cuda]); default base: transfer-bench-base:bookworm
# (from scripts/docker-setup.sh). Tag: transfer-bench:<flavour>, which compose.yaml uses.
# Stages the host CA bundle into .docker-ca/ (git-ignored) for pip, builds with the host
# network (pip needs PyPI; the containers themselves run without network), uses BuildKit
# when the client has it, and prints the image id and size at the end.
set -euo pipefail

cd "$(dirname "$0")/.."
TF=cuda
BASE="${BENCH_BASE_IMAGE:-transfer-bench-base:bookworm}"
TAG=""
EXTRA=()
while (($#)); do
    case "$1" in
        cpu|cuda) TF="$1" ;;
        --base) BASE="$2"; shift ;;
        --tag) TAG="$2"; shift ;;
        --no-cache) EXTRA+=(--no-cache) ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "docker-build: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
TAG="${TAG:-transfer-bench:$TF}"

if [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker; else DOCKER="$(command -v docker)"; fi
"$DOCKER" info >/dev/null 2>&1 \
    || { echo "docker-build: Docker engine not reachable; run scripts/docker-setup.sh" >&2; exit 2; }
BASE_ID="$("$DOCKER" image inspect -f '{{.Id}}' "$BASE" 2>/dev/null)" \
    || { echo "docker-build: base image '$BASE' not found; run scripts/docker-setup.sh or pass --base" >&2; exit 2; }

# The CA bundle for pip inside the build, and the commit with the same '+dirty' rule that
# runs record: the harness's own functions (standard library only, no install needed).
COMMIT="$(PYTHONPATH=. python3 - <<'EOF'
from pathlib import Path

from harness.container import host_ca_bundle, stage_ca_bundle
from harness.env import git_commit

stage_ca_bundle(Path("."), host_ca_bundle())
print(git_commit(Path(".")) or "")
EOF
)"

# BuildKit: built into clients before 23.0 (Debian's 20.10); later ones need the buildx plugin.
# Override with DOCKER_BUILDKIT=0/1.
if [[ -z ${DOCKER_BUILDKIT:-} ]]; then
    client="$("$DOCKER" version -f '{{.Client.Version}}' 2>/dev/null || echo 0)"
    if "$DOCKER" buildx version >/dev/null 2>&1 || ((${client%%.*} < 23)); then
        DOCKER_BUILDKIT=1
    else
        DOCKER_BUILDKIT=0
    fi
fi
export DOCKER_BUILDKIT
echo "docker-build: $TAG from $BASE (tf=$TF, BuildKit=$DOCKER_BUILDKIT, commit ${COMMIT:-unknown})"
start=$SECONDS
"$DOCKER" build --network host "${EXTRA[@]}" \
    --build-arg BASE_IMAGE="$BASE" --build-arg BASE_IMAGE_ID="$BASE_ID" \
    --build-arg TF_EXTRA="$TF" --build-arg GIT_COMMIT="$COMMIT" \
    -t "$TAG" .
echo "docker-build: built $TAG $("$DOCKER" image inspect -f '{{.Id}}' "$TAG")" \
    "($(("$("$DOCKER" image inspect -f '{{.Size}}' "$TAG")" / 1000000)) MB) in $((SECONDS - start)) s"
