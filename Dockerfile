# transfer-bench image: `docker compose run bench all` (see compose.yaml), or
# `bench docker build` / `bench docker run -- ARGS` (harness/container.py).
#
# Works with the classic builder (Docker SDK, docker-compose v1) and with BuildKit; so it
# uses no `RUN --mount`, no heredocs and no `# syntax=` line (BuildKit would try to pull
# that frontend from a registry, and none may be reachable).
#
# Build args:
#   BASE_IMAGE     an image with python3 (>= 3.11), venv and pip. Default: the Debian bookworm
#                  root that scripts/docker-setup.sh debootstraps and imports (no registry
#                  needed); python:3.11-slim-bookworm or debian:bookworm + python3-venv also do.
#   TF_EXTRA       cpu -> tensorflow-cpu (lean; tests and CPU machines)
#                  cuda -> tensorflow[and-cuda] (default): pip brings the CUDA and cuDNN
#                  libraries, so a plain Debian base runs on GPUs on a host with the NVIDIA
#                  driver and the NVIDIA container toolkit; no CUDA base image is needed.
#   BASE_IMAGE_ID, GIT_COMMIT   provenance recorded in /etc/transfer-bench/image.json.
#
# TLS: where HTTPS is intercepted, pip needs the host's CA bundle. The tooling
# (harness/container.py, scripts/docker-build.sh) copies it to .docker-ca/ca-certificates.crt
# in the build context (git-ignored). It is used in the `deps` stage only and never reaches
# the final image. Builds need network for pip (the tooling builds with --network host);
# containers run with no network at all.

ARG BASE_IMAGE=transfer-bench-base:bookworm

# --- deps: the virtual environment with every dependency, but not the harness itself -----
# Installed from uv.lock, hash-checked (pip --require-hashes), with the TensorFlow flavour's
# extra and the dask extra (the image serves as a Dask worker: docs/scale-out.md): the same versions as `scripts/bench` and `scripts/test` install on a host. uv (the
# version pyproject.toml's [tool.uv] required-version pins) only exports the locked set and
# is not kept. Changes only when pyproject.toml, uv.lock, TF_EXTRA, BASE_IMAGE or the CA
# bundle change, so code edits reuse this layer.
FROM ${BASE_IMAGE} AS deps
ARG TF_EXTRA=cuda
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180 \
    PYTHONDONTWRITEBYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never
WORKDIR /build
# The wildcard lets the build go on when .docker-ca/ is absent (machines without TLS
# interception); pyproject.toml and uv.lock always match.
COPY pyproject.toml uv.lock .docker-ca* /build/
RUN set -eu; \
    case "$TF_EXTRA" in cpu|cuda) ;; \
      *) echo "TF_EXTRA must be cpu or cuda, got '$TF_EXTRA'" >&2; exit 2;; esac; \
    if [ -s /build/ca-certificates.crt ]; then \
      export PIP_CERT=/build/ca-certificates.crt SSL_CERT_FILE=/build/ca-certificates.crt; fi; \
    uv_version="$(sed -n 's/^required-version = "==\(.*\)"$/\1/p' pyproject.toml)"; \
    python3 -m venv /build/uv; \
    /build/uv/bin/pip install -q "uv==$uv_version"; \
    /build/uv/bin/uv export --frozen --no-emit-project --no-default-groups --group build \
      --extra "tf-$TF_EXTRA" --extra dask --format requirements-txt -o requirements.txt; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install --require-hashes --no-deps -r requirements.txt; \
    /opt/venv/bin/pip check; \
    rm -rf /build

# --- final image -------------------------------------------------------------------------
FROM ${BASE_IMAGE}
# User: a non-root `bench` (uid 1000) is the default, and HOME, caches and the /workspace
# mount points are world-writable (sticky), so the container also runs as any other uid.
# harness/container.py runs it as the calling user (uid:gid) and compose.yaml as
# ${BENCH_UID:-1000}:${BENCH_GID:-1000}, so files written to the mounted data/ and
# reports/ belong to the host user and volume writes work whoever owns the folders.
RUN set -eu; \
    useradd --uid 1000 --user-group --create-home --home-dir /home/bench --shell /bin/bash bench; \
    mkdir -p /home/bench/.keras /home/bench/.cache/matplotlib /etc/transfer-bench \
      /workspace/data/archives /workspace/data/prepared /workspace/reports/runs; \
    chmod 1777 /home/bench /home/bench/.keras /home/bench/.cache /home/bench/.cache/matplotlib \
      /workspace /workspace/data /workspace/data/archives /workspace/data/prepared \
      /workspace/reports /workspace/reports/runs
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/home/bench \
    KERAS_HOME=/home/bench/.keras \
    XDG_CACHE_HOME=/home/bench/.cache \
    MPLCONFIGDIR=/home/bench/.cache/matplotlib \
    BENCH_HOME=/workspace \
    KERAS_BACKEND=tensorflow \
    TF_CPP_MIN_LOG_LEVEL=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --from=deps /opt/venv /opt/venv

# The lock the venv came from: every run's fingerprint records its digest.
COPY uv.lock /etc/transfer-bench/uv.lock

# The harness itself: a small layer (no network needed: deps and setuptools are in the venv).
COPY pyproject.toml README* LICENSE* /tmp/src/
COPY harness/ /tmp/src/harness/
RUN pip install --no-deps --no-build-isolation /tmp/src && rm -rf /tmp/src

WORKDIR /workspace
# The manifest, small pinned weights and benchmark matrices; compose/`bench docker run`
# mount the host's data/ and reports/ over these folders.
COPY data/ /workspace/data/
COPY benchmarks/ /workspace/benchmarks/

# Build provenance (the fingerprint of every run reads it) and labels for `bench docker info`.
# The ARGs are declared here, not earlier, so a new commit does not invalidate the layers above.
ARG BASE_IMAGE
ARG BASE_IMAGE_ID=""
ARG TF_EXTRA=cuda
ARG GIT_COMMIT=""
RUN BENCH_BUILD_BASE_IMAGE="$BASE_IMAGE" BENCH_BUILD_BASE_IMAGE_ID="$BASE_IMAGE_ID" \
    BENCH_BUILD_TF_EXTRA="$TF_EXTRA" BENCH_BUILD_GIT_COMMIT="$GIT_COMMIT" \
    python -c "from harness.provenance import write_image_provenance as w; w()" \
    && cat /etc/transfer-bench/image.json | head -n 20
LABEL org.opencontainers.image.title="transfer-bench" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      io.transfer-bench.tf="${TF_EXTRA}"

# For the NVIDIA container toolkit (GPU hosts): CUDA compute plus nvidia-smi in the container.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility

USER bench
ENTRYPOINT ["bench"]
CMD ["--help"]
