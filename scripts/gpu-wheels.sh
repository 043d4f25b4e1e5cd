#!/usr/bin/env bash
# Download, here, every wheel scripts/gpu-check.sh installs on a GPU machine that has no
# network: `scripts/gpu-wheels.sh DIR [--python 3.11,3.12] [--exclude NAME,...]`.
#
# The set: the harness's runtime dependencies and theirs (keras, namex, optree, absl-py,
# h5py, rich, tabulate, matplotlib, pillow, docker, ruptures, threadpoolctl, ... as uv.lock
# resolves them), at the versions uv.lock pins, as CPython wheels for manylinux x86_64,
# once per Python version (default 3.11 and 3.12), plus the project itself as a wheel.
# Left out: JAX and what JAX itself needs (numpy, scipy, ml-dtypes, opt-einsum), and
# PyTorch: the GPU machine's own builds are the ones to use. `--exclude` leaves out more
# (packages the target already has, to keep the folder small); gpu-check.sh installs with
# the machine's packages visible, so pip takes from DIR only what is missing there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

usage() { echo "usage: scripts/gpu-wheels.sh DIR [--python 3.11,3.12] [--exclude NAME,...]" >&2; exit 2; }
[[ $# -ge 1 && $1 != -* ]] || usage
dir="$1"; shift
pythons="3.11,3.12"
exclude=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --python) [[ $# -ge 2 ]] || usage; pythons="$2"; shift 2 ;;
        --exclude) [[ $# -ge 2 ]] || usage; exclude="$2"; shift 2 ;;
        *) echo "gpu-wheels: unknown argument '$1'" >&2; usage ;;
    esac
done
py="${BENCH_WHEELS_PYTHON:-python3}"
"$py" -m pip --version >/dev/null 2>&1 || { echo "gpu-wheels: '$py -m pip' is not available" >&2; exit 2; }
mkdir -p "$dir"

# name==version per target Python, from uv.lock (markers evaluated for that Python on Linux x86-64).
pins="$("$py" - "$root/uv.lock" "$pythons" "$exclude" <<'EOF'
import sys, tomllib
from pip._vendor.packaging.markers import Marker

lock, pythons, exclude = sys.argv[1], sys.argv[2].split(","), set(filter(None, sys.argv[3].split(",")))
skip = {"jax", "jaxlib", "numpy", "scipy", "ml-dtypes", "opt-einsum", "torch", "tensorflow"} | exclude
packages = tomllib.load(open(lock, "rb"))["package"]
by_name = {}
for p in packages:
    by_name.setdefault(p["name"], []).append(p)

def env(pyv):
    return {"python_full_version": pyv + ".0", "python_version": pyv, "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "extra": ""}

def fits(marker, e):
    return marker is None or Marker(marker).evaluate(e)

for pyv in pythons:
    e = env(pyv.strip())
    todo, seen = [("transfer-bench", None)], {}
    while todo:
        name, version = todo.pop()
        cands = [p for p in by_name[name] if version is None or p["version"] == version]
        cands = [p for p in cands if any(fits(m, e) for m in p.get("resolution-markers") or [None])] or cands
        pkg = cands[0]
        if name in seen:
            continue
        seen[name] = pkg["version"]
        for dep in pkg.get("dependencies", []):
            if fits(dep.get("marker"), e) and dep["name"] not in seen:
                todo.append((dep["name"], dep.get("version")))
    for name, version in sorted(seen.items()):
        if name != "transfer-bench" and name not in skip:
            print(pyv.strip(), f"{name}=={version}")
EOF
)"

platforms=(--platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform manylinux2014_x86_64)
for n in $(seq 5 39); do platforms+=(--platform "manylinux_2_${n}_x86_64"); done

quiet() { grep -v "is ignored: it is neither a file nor a directory" >&2 || true; }
for pyv in ${pythons//,/ }; do
    mapfile -t want < <(awk -v v="$pyv" '$1 == v {print $2}' <<<"$pins")
    echo "gpu-wheels: cp${pyv/./}: ${want[*]}" >&2
    PIP_CONSTRAINT="" "$py" -m pip download --quiet --no-deps --only-binary=:all: \
        --implementation cp --python-version "$pyv" "${platforms[@]}" -d "$dir" "${want[@]}" \
        2> >(quiet)
done

echo "gpu-wheels: the project (transfer-bench) as a wheel" >&2
PIP_CONSTRAINT="" "$py" -m pip wheel --quiet --no-deps -w "$dir" "$root" 2> >(quiet)
ls -1 "$dir" | sed 's/^/  /' >&2
echo "gpu-wheels: $(ls -1 "$dir"/*.whl | wc -l) wheels, $(du -sh "$dir" | cut -f1) in $dir" >&2
