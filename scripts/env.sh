# shellcheck shell=bash
# Sourced by scripts/bench and scripts/test: `ensure_env EXTRA...` makes .venv match uv.lock
# with those extras (plus the ones it already had), syncing only when the lock or the set
# of extras changed since the last sync. A stamp file in .venv records both.
#
# Bytecode is compiled at install time (uv sync --compile-bytecode): where
# PYTHONDONTWRITEBYTECODE is set (as on the CI machines), Python never caches .pyc files,
# and every cell process would compile TensorFlow's Python from source on import: measured
# on the 2-core CI machine, `import tensorflow` took 12 s without, 4.7 s with.
#
# The TensorFlow flavour: BENCH_TF=cpu|cuda, default cuda where `nvidia-smi -L` lists a GPU.
# tf-cpu and tf-cuda install the same package files, so asking for one drops the other.

_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

tf_flavour() {
    case "${BENCH_TF:-}" in
        cpu|cuda) echo "$BENCH_TF" ;;
        "") if nvidia-smi -L >/dev/null 2>&1; then echo cuda; else echo cpu; fi ;;
        *) echo "BENCH_TF must be cpu or cuda, got '$BENCH_TF'" >&2; return 2 ;;
    esac
}

_sorted_set() { tr ', ' '\n\n' <<<"$*" | sed '/^$/d' | sort -u | paste -sd, -; }

ensure_env() {
    local stamp="$_root/.venv/.transfer-bench-sync" lock_sha had_sha="" had="" had_pyc="" e tf=""
    lock_sha="$(sha256sum "$_root/uv.lock" | cut -d' ' -f1)"
    if [[ -f $stamp && -x $_root/.venv/bin/bench ]]; then
        read -r had_sha had had_pyc < "$stamp" || true
    fi
    [[ $had_sha == "$lock_sha" ]] || had=""
    for e in "$@"; do [[ $e == tf-* ]] && tf=$e; done
    local keep=()
    for e in ${had//,/ }; do
        [[ -n $tf && $e == tf-* ]] || keep+=("$e")
    done
    local want
    want="$(_sorted_set "${keep[*]:-}" "$*")"
    if [[ $had_sha == "$lock_sha" && "$(_sorted_set "$had")" == "$want" && $had_pyc == pyc ]]; then
        return 0
    fi
    local args=()
    for e in ${want//,/ }; do args+=(--extra "$e"); done
    echo "env: syncing .venv with uv.lock (extras: $want)" >&2
    "$_root/scripts/uv" sync --frozen --compile-bytecode "${args[@]}" >&2
    printf '%s %s pyc\n' "$lock_sha" "$want" > "$stamp"
}
