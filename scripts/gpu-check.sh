#!/usr/bin/env bash
# The GPU check, one command: `scripts/gpu-check.sh OUT_DIR [options]`.
#
# For a Linux machine with an NVIDIA GPU, JAX with CUDA and PyTorch, no TensorFlow and no
# network. Run it from a checkout (it reads benchmarks/ and data/manifest.json there):
#
#   1. a virtual environment (--venv, default /tmp/transfer-bench-gpu-venv) made with
#      --system-site-packages from the machine's Python (--python, default python3), which
#      also sees that Python's own site-packages when it is itself a venv, so the machine's
#      JAX, CUDA libraries and PyTorch are the ones used;
#   2. the project installed into it from a folder of wheels (--wheels, default ./.whl,
#      made here by `scripts/gpu-wheels.sh DIR`), with --no-index: pip takes from the folder
#      only what the machine lacks (keras, namex, optree, docker, ruptures, ...);
#   3. a check that JAX sees a GPU, then `python -m harness.gpucheck OUT_DIR` (see
#      harness/gpucheck.py): warm-up, throughput with XLA on, smoke at float32 and
#      mixed_bfloat16, throughput with XLA off, within --budget-s (default 480 s); run
#      folders, reports, summary.json and summary.md under OUT_DIR.
#
# --cpu-dry-run: the same on the CPU, shrunk to a few cells (what CI runs). --no-install:
# use --python as it is (an environment that already has the harness, e.g. .venv) instead
# of steps 1 and 2. Other options (--budget-s N, --jobs N) go to harness.gpucheck.
# Exit: 0 everything ran and passed; 1 a cell failed or the budget ran out; 2 bad usage
# or a machine that cannot run the check.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

usage() {
    echo "usage: scripts/gpu-check.sh OUT_DIR [--cpu-dry-run] [--python PY] [--wheels DIR]" \
        "[--venv DIR] [--no-install] [--budget-s N] [--jobs N]" >&2
    exit 2
}
[[ $# -ge 1 && $1 != -* ]] || usage
out="$1"; shift
py=python3; wheels="$root/.whl"; venv="${TMPDIR:-/tmp}/transfer-bench-gpu-venv"
install=1; dry=0; pass=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cpu-dry-run) dry=1; pass+=("$1"); shift ;;
        --python) [[ $# -ge 2 ]] || usage; py="$2"; shift 2 ;;
        --wheels) [[ $# -ge 2 ]] || usage; wheels="$2"; shift 2 ;;
        --venv) [[ $# -ge 2 ]] || usage; venv="$2"; shift 2 ;;
        --no-install) install=0; shift ;;
        --budget-s|--jobs) [[ $# -ge 2 ]] || usage; pass+=("$1" "$2"); shift 2 ;;
        *) echo "gpu-check: unknown argument '$1'" >&2; usage ;;
    esac
done
mkdir -p "$out"
out="$(cd "$out" && pwd)"
say() { printf 'gpu-check: %s (%ss)\n' "$1" "$SECONDS" >&2; }

command -v "$py" >/dev/null 2>&1 || { echo "gpu-check: no Python '$py'" >&2; exit 2; }
if [[ $install == 1 ]]; then
    ls "$wheels"/transfer_bench-*.whl >/dev/null 2>&1 || {
        echo "gpu-check: no transfer_bench wheel in $wheels; make the folder with" \
            "scripts/gpu-wheels.sh $wheels (where there is a network) and carry it here" >&2
        exit 2
    }
    say "virtual environment $venv (seeing $py's packages)"
    rm -rf "$venv"
    "$py" -m venv --system-site-packages --without-pip "$venv"
    base_sites="$("$py" -c 'import site; print("\n".join(site.getsitepackages()))')"
    venv_site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    printf '%s\n' "$base_sites" > "$venv_site/_machine_site_packages.pth"
    say "installing transfer-bench from $wheels (no index: only what is missing here)"
    pip_cmd=("$venv/bin/python" -m pip)
    "${pip_cmd[@]}" --version >/dev/null 2>&1 || pip_cmd=("$py" -m pip --python "$venv/bin/python")
    PIP_CONSTRAINT="" PIP_FIND_LINKS="" "${pip_cmd[@]}" install --quiet --no-index \
        --find-links "$wheels" --disable-pip-version-check --no-warn-script-location \
        --upgrade-strategy only-if-needed transfer-bench
    run_py="$venv/bin/python"
else
    run_py="$py"
fi

export BENCH_HOME="$root" PYTHONUNBUFFERED=1 KERAS_BACKEND=jax
export BENCH_TENSORBOARD=0  # the check needs no event files (and TensorFlow writes them)
export BENCH_JAX_CACHE_DIR="${BENCH_JAX_CACHE_DIR:-$out/jax-cache}"
say "environment: $(cd / && "$run_py" - <<'EOF'
import importlib.metadata as md, importlib.util, sys
def v(d):
    try:
        return md.version(d)
    except md.PackageNotFoundError:
        return "absent"
tf = "present (not used)" if importlib.util.find_spec("tensorflow") else "absent"
print(f"python {sys.version.split()[0]}, keras {v('keras')}, jax {v('jax')}, "
      f"torch {v('torch')}, tensorflow {tf}, harness from {importlib.util.find_spec('harness').origin}")
EOF
)"
if [[ $dry == 0 ]]; then
    "$run_py" - <<'EOF' || { echo "gpu-check: JAX sees no GPU here (use --cpu-dry-run on a CPU)" >&2; exit 2; }
import jax, sys
gpus = [d for d in jax.devices() if d.platform in ("gpu", "cuda", "rocm")]
print("gpu-check: jax devices:", gpus or jax.devices(), file=sys.stderr)
sys.exit(0 if gpus else 1)
EOF
fi
say "running the phases"
cd "$out"  # not the checkout: the harness is the installed one (BENCH_HOME finds benchmarks/)
exec "$run_py" -m harness.gpucheck "$out" "${pass[@]}"
