"""The environment fingerprint: the contract's keys, container provenance, no TF import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import env, provenance

REPO = Path(__file__).resolve().parent.parent
KEYS = {
    "harness_version", "git_commit", "python", "platform", "keras", "backend", "tensorflow",
    "jax", "torch", "cuda", "cudnn", "gpu", "cpu", "container", "manifest_digest",
    # what decides whether results are bit-identical (issue 7)
    "lock", "packages", "packages_digest", "numpy", "threads", "git_dirty", "git_dirty_paths",
    # what decides each cell's thread counts (issue 19): harness.threads' rule and overrides
    "thread_policy",
}  # fmt: skip


def test_fingerprint_has_the_contract_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_HOME", str(REPO))
    monkeypatch.delenv("BENCH_IMAGE_ID", raising=False)
    monkeypatch.delenv("BENCH_IMAGE_DIGEST", raising=False)
    fp = env.fingerprint()
    assert set(fp) == KEYS
    assert fp["cpu"]["count"] >= 1 and fp["cpu"]["model"]
    assert fp["keras"].startswith("3.")
    assert fp["backend"] in ("tensorflow", "jax", "torch")
    assert fp["manifest_digest"] and len(fp["manifest_digest"]) == 64
    assert fp["git_commit"] is None or len(fp["git_commit"].split("+")[0]) == 40
    if fp["gpu"] is not None:  # pragma: no cover - GPU machines
        assert set(fp["gpu"]) == {"name", "count", "driver", "clocks"}
    json.dumps(fp)  # plain JSON
    ident = env.hardware_identity(fp)
    assert "container.image_id" not in ident and ident["cpu.count"] == fp["cpu"]["count"]
    # another installed framework is not part of it: the same TensorFlow run, with and
    # without the jax extra, is the same hardware (a newcomer's env vs the test env)
    tf_run = {**fp, "backend": "tensorflow", "tensorflow": "2.21.0"}
    assert env.hardware_identity({**tf_run, "jax": "0.10.2"}) == env.hardware_identity(
        {**tf_run, "jax": None}
    )
    assert env.hardware_identity({**tf_run, "tensorflow": "2.22.0"}) != env.hardware_identity(
        tf_run
    )


def test_container_provenance_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BENCH_IMAGE_ID", "sha256:abc")
    monkeypatch.setenv("BENCH_IMAGE_DIGEST", "repo@sha256:def")
    # On the host (no image.json) an exported image id does not make it a container.
    assert env.container_info(tmp_path / "absent.json") is None
    image_json = tmp_path / "image.json"
    monkeypatch.setenv("BENCH_BUILD_GIT_COMMIT", "abc123")
    provenance.write_image_provenance(image_json)
    info = env.container_info(image_json)
    assert info is not None
    assert info["image_id"] == "sha256:abc" and info["image_digest"] == "repo@sha256:def"
    assert info["build"]["git_commit"] == "abc123" and "pip_freeze" not in info["build"]
    assert env.fingerprint("jax")["backend"] == "jax"


def test_fingerprint_does_not_import_tensorflow() -> None:
    code = (
        "import sys, harness.env as e; fp = e.fingerprint(); "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules, fp['tensorflow'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout.split()
    assert out[:2] == ["False", "False"]
    assert out[2] != "None"  # the version still comes from the package metadata


def test_bench_env_prints_the_fingerprint(run_bench) -> None:  # type: ignore[no-untyped-def]
    proc = run_bench("env")
    assert proc.returncode == 0
    printed = json.loads(proc.stdout)
    assert (printed.pop("kind"), printed.pop("schema")) == ("transfer-bench.environment", 1)
    assert set(printed) == KEYS


def test_fingerprint_records_the_lock_and_every_installed_version() -> None:
    import hashlib
    import importlib.metadata

    fp = env.fingerprint()
    lock = REPO / "uv.lock"
    assert fp["lock"] == {
        "digest": hashlib.sha256(lock.read_bytes()).hexdigest(),
        "path": str(lock),
    }
    # numpy and Pillow decide synthetic data and decoding: their versions must be there.
    assert fp["packages"]["numpy"] == importlib.metadata.version("numpy")
    assert fp["packages"]["pillow"] == importlib.metadata.version("pillow")
    assert fp["numpy"]["version"] == importlib.metadata.version("numpy")
    simd = fp["numpy"]["simd"]
    assert simd["baseline"] and set(simd["dispatch_found"]).isdisjoint(simd["dispatch_missing"])
    assert fp["numpy"]["blas"] and fp["numpy"]["blas"][0]["internal_api"]
    assert set(fp["cpu"]["numerics_flags"]) <= set(env.NUMERICS_FLAGS)
    assert set(env.THREAD_VARS) <= set(fp["threads"]) and fp["threads"]["affinity_cpus"] >= 1
    assert fp["git_dirty"] in (True, False, None)


def test_reproducibility_differences_name_what_changed() -> None:
    base = env.fingerprint()
    base["git_dirty"] = False
    run = json.loads(json.dumps(base))
    assert env.reproducibility_differences(base, run) == []
    run["lock"]["digest"] = "f" * 64
    run["packages"]["numpy"] = "9.9.9"
    run["packages"]["extra-pkg"] = "1.0"
    # a flag this CPU lacks (the test runs on AMD EPYC and on Intel Xeon with AMX alike)
    absent = next(f for f in env.NUMERICS_FLAGS if f not in base["cpu"]["numerics_flags"])
    run["cpu"]["numerics_flags"] = [*base["cpu"]["numerics_flags"], absent]
    run["numpy"]["simd"]["dispatch_found"] = [*base["numpy"]["simd"]["dispatch_found"], "X"]
    run["threads"]["OMP_NUM_THREADS"] = "1"
    run["git_dirty"] = True
    lines = env.reproducibility_differences(base, run)
    text = "\n".join(lines)
    assert f"lock digest: {str(base['lock']['digest'])[:12]} -> ffffffffffff" in text
    assert f"numpy {base['packages']['numpy']} -> 9.9.9" in text
    # a package no cell imports changes nothing a cell computes: not listed (issue 16)
    assert "extra-pkg" not in text
    named = env.reproducibility_differences(base, run, imported={"numpy", "extra-pkg"})
    assert any("+extra-pkg 1.0" in line for line in named)
    assert f"CPU numerics flags: only baseline -, only run ['{absent}']" in text
    assert "numpy SIMD dispatch" in text and "OMP_NUM_THREADS None -> 1" in text
    assert "run dirty" in text
    # Never a line whose two sides print the same: the BLAS's thread count is shown when it
    # is what differs, and a same-printing difference is no line at all.
    blas_run = json.loads(json.dumps(base))
    if base["numpy"]["blas"]:
        blas_run["numpy"]["blas"][0]["num_threads"] = 99
        (line,) = env.reproducibility_differences(base, blas_run)
        assert line.startswith("BLAS: ") and "99 threads" in line
        left, right = line[len("BLAS: ") :].split(" -> ")
        assert left != right
    # A fingerprint from before these keys existed says so instead of inventing a change.
    old = {k: v for k, v in base.items() if k not in ("lock", "packages", "numpy", "threads")}
    assert "lock digest: not recorded on one side" in env.reproducibility_differences(old, run)
