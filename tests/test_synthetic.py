"""Synthetic datasets: deterministic, independent per split, well-formed, pinned in the manifest."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from harness.datasets import synthetic
from harness.datasets.cache import prepared_digest
from harness.errors import InputError
from harness.manifest import SyntheticSource, load_manifest

ROOT = Path(__file__).resolve().parents[1]
SYNTH = ("synth-source", "synth-few", "synth-many", "synth-xray")


@pytest.fixture(scope="module")
def manifest():
    return load_manifest(ROOT / "data" / "manifest.json")


def _digest(source, splits, size=32):
    arrays = synthetic.generate(source, splits, size)
    return prepared_digest(synthetic.class_names(source), arrays)


@pytest.mark.parametrize("name", ["synth-few", "synth-xray"])
def test_same_seed_same_digest_other_seed_other_digest(manifest, name):
    source = manifest.dataset(name).source
    splits = {"train": 40, "val": 10}
    assert _digest(source, splits) == _digest(source, splits)
    assert _digest(replace(source, seed=source.seed + 1), splits) != _digest(source, splits)


def test_one_splits_size_does_not_change_another_split(manifest):
    source = manifest.dataset("synth-many").source
    small = synthetic.generate(source, {"train": 30, "val": 20}, 32)
    large = synthetic.generate(source, {"val": 20, "train": 130, "test": 7}, 32)
    assert np.array_equal(small["val"][0], large["val"][0])
    assert np.array_equal(small["val"][1], large["val"][1])
    assert not np.array_equal(small["train"][0], large["train"][0][:30])  # a real change


@pytest.mark.parametrize("name", SYNTH)
def test_shapes_dtypes_labels_and_balance(manifest, name):
    entry = manifest.dataset(name)
    names = synthetic.class_names(entry.source)
    assert len(names) == entry.num_classes
    if entry.class_names is not None:
        assert names == entry.class_names
    n = 3 * entry.num_classes + 2
    images, labels = synthetic.generate(entry.source, {"train": n}, 32)["train"]
    assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int32
    counts = np.bincount(labels, minlength=entry.num_classes)
    assert len(counts) == entry.num_classes and counts.max() - counts.min() <= 1
    assert images.std() > 20  # real pictures, not a constant fill
    assert len({im.tobytes() for im in images}) == n  # every image distinct


def test_xray_target_is_gray_and_shapes_are_colour(manifest):
    gray, _ = synthetic.generate(manifest.dataset("synth-xray").source, {"x": 16}, 32)["x"]
    assert manifest.dataset("synth-xray").channels == 1
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])
    colour, _ = synthetic.generate(manifest.dataset("synth-few").source, {"x": 16}, 32)["x"]
    assert not np.array_equal(colour[..., 0], colour[..., 1])


def test_other_image_sizes(manifest):
    images, _ = synthetic.generate(manifest.dataset("synth-few").source, {"x": 3}, 96)["x"]
    assert images.shape == (3, 96, 96, 3)


def test_classes_differ_in_form_not_only_noise(manifest):
    """Mean images per class differ (the class signal exists) for the xray target."""
    source = manifest.dataset("synth-xray").source
    images, labels = synthetic.generate(source, {"x": 400}, 32)["x"]
    x = images[..., 0].astype(np.float32)
    # The positive class adds a bright patch inside a lobe: brighter on average.
    assert x[labels == 1].mean() > x[labels == 0].mean() + 1.0


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        (SyntheticSource("nope-v9", 1, {}), "nope-v9"),
        (SyntheticSource("shapes-v1", 1, {"classes": ["disc-solid", "ring-dots"]}), "shapes-v1"),
        (SyntheticSource("shapes-v2", 1, {"classes": ["disc-solid", "blob-solid"]}), "blob-solid"),
        (SyntheticSource("shapes-v2", 1, {"classes": ["disc-solid", "disc-solid"]}), "duplicates"),
        (SyntheticSource("xray-v2", 1, {"classes": ["a", "b"]}), "'a'"),
        (SyntheticSource("xray-v2", 1, {"noise": "loud"}), "'loud'"),
        (
            SyntheticSource(
                "shapes-v2", 1, {"classes": ["disc-solid", "ring-dots"], "clutter": 1.5}
            ),
            "1.5",
        ),
    ],
)
def test_bad_sources_are_refused_naming_the_value(source, needle):
    with pytest.raises(InputError, match=needle):
        synthetic.generate(source, {"train": 4}, 32)


def test_bad_split_size_is_refused(manifest):
    with pytest.raises(InputError, match="-3"):
        synthetic.generate(manifest.dataset("synth-few").source, {"train": -3}, 32)


def test_manifest_pins_every_synthetic_digest_at_32(manifest, tmp_path, monkeypatch):
    """The pinned prepared digests match what the generators make now (a changed generator fails).

    ``ensure_prepared`` generates each set into a fresh cache and refuses a digest mismatch.
    """
    from harness.datasets.prepare import ensure_prepared

    monkeypatch.setenv("BENCH_HOME", str(ROOT))
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path))
    for name in SYNTH:
        assert manifest.dataset(name).pinned_digest(32), f"{name} has no pinned digest at 32 px"
        folder = ensure_prepared(name, 32)
        assert (folder / "meta.json").is_file()


# --------------------------------------------------------------------------- SIMD levels

# Rendered in a fresh interpreter per SIMD level: NPY_DISABLE_CPU_FEATURES is read once,
# when numpy is imported. Prints the features numpy really ran with and a digest per set.
_RENDER = r"""
import hashlib, importlib.util, json, sys
spec = json.loads(sys.argv[1])
if spec["module"]:
    loaded = importlib.util.spec_from_file_location("synthetic_under_test", spec["module"])
    synthetic = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(synthetic)
else:
    from harness.datasets import synthetic
from harness.manifest import SyntheticSource
try:
    from numpy._core import _multiarray_umath as mu
except ImportError:  # numpy < 2
    from numpy.core import _multiarray_umath as mu
digests = {}
for name, source in spec["sources"].items():
    for size, splits in spec["sizes"].items():
        h = hashlib.sha256()
        arrays = synthetic.generate(SyntheticSource(**source), splits, int(size))
        for split in sorted(arrays):
            h.update(arrays[split][0].tobytes())
            h.update(arrays[split][1].tobytes())
        digests[f"{name}@{size}px"] = h.hexdigest()
print(json.dumps({"features": sorted(k for k, v in mu.__cpu_features__.items() if v),
                  "digests": digests}))
"""


def simd_levels() -> list[tuple[str, ...]]:
    """Feature sets to switch off, one per SIMD level this machine has: none first, then
    the highest dispatch target, then the two highest, ... down to the baseline only.

    Read at run time: numpy's dispatch targets (``__cpu_dispatch__``, lowest first) that
    this CPU supports (``__cpu_features__``). Switching off a suffix of that list keeps
    every level consistent (a feature is never on while one it builds on is off).
    """
    try:
        from numpy._core import _multiarray_umath as mu
    except ImportError:  # pragma: no cover - numpy < 2
        from numpy.core import _multiarray_umath as mu
    have = [f for f in mu.__cpu_dispatch__ if mu.__cpu_features__.get(f)]
    return [(), *(tuple(have[i:]) for i in reversed(range(len(have))))]


def render_under_simd_levels(
    sources: dict[str, dict], module: Path | None = None
) -> dict[tuple[str, ...], dict]:
    """{disabled features: {"features": [...], "digests": {...}}}, one subprocess per level."""
    import json
    import os
    import subprocess
    import sys

    spec = {
        "module": str(module) if module else None,
        "sources": sources,
        # A slice of every split at 32 px and a couple of images at 224 px: seconds, not minutes.
        "sizes": {"32": {"train": 96, "val": 32, "test": 32}, "224": {"train": 2}},
    }
    out = {}
    for level in simd_levels():
        env = {k: v for k, v in os.environ.items() if not k.startswith("NPY_")}
        env["PYTHONPATH"] = str(ROOT)
        if level:
            env["NPY_DISABLE_CPU_FEATURES"] = " ".join(level)
        proc = subprocess.run(
            [sys.executable, "-c", _RENDER, json.dumps(spec)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        out[level] = json.loads(proc.stdout.splitlines()[-1])
        assert not set(level) & set(out[level]["features"]), (level, out[level]["features"])
    return out


def _manifest_sources(manifest) -> dict[str, dict]:
    return {
        name: {"generator": e.source.generator, "seed": e.source.seed, "params": e.source.params}
        for name, e in manifest.datasets.items()
        if name.startswith("synth-")
    }


def _differences(rendered: dict[tuple[str, ...], dict]) -> list[str]:
    levels = list(rendered)
    first = rendered[levels[0]]["digests"]
    return [
        f"{key}: {first[key][:12]} with every feature, {rendered[lv]['digests'][key][:12]} "
        f"with {' '.join(lv)} off"
        for lv in levels[1:]
        for key in first
        if rendered[lv]["digests"][key] != first[key]
    ]


def test_every_synthetic_set_is_identical_under_every_simd_level(manifest):
    sources = _manifest_sources(manifest)
    assert set(sources) == set(SYNTH)
    rendered = render_under_simd_levels(sources)
    print(f"\nSIMD levels (features switched off): {[' '.join(lv) or '-' for lv in rendered]}")
    diffs = _differences(rendered)
    assert not diffs, "\n".join(diffs)


V1_COMMIT = "f290f4b5bf11a8217626b3fb936437f8db204c55"  # the last commit with xray-v1 / shapes-v1


def _git_show(path: str) -> str | None:
    import subprocess

    try:
        return subprocess.run(
            ["git", "show", f"{V1_COMMIT}:{path}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def test_the_simd_check_catches_the_v1_generator(tmp_path):
    """The same check, run on the float32 xray-v1 it replaced, finds the SIMD dependence.

    Shown where it is known to occur: x86-64 with an AVX2 (or higher) dispatch level.
    Needs the git history (a shallow clone skips).
    """
    import json
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64") or len(simd_levels()) < 2:
        pytest.skip(f"needs x86-64 with a SIMD level above the baseline: {simd_levels()}")
    code, old_manifest = _git_show("harness/datasets/synthetic.py"), _git_show("data/manifest.json")
    if code is None or old_manifest is None:
        pytest.skip(f"no git history: cannot read the v1 generator at {V1_COMMIT[:10]}")
    module = tmp_path / "synthetic_v1.py"
    module.write_text(code)
    old = json.loads(old_manifest)["datasets"]["synth-xray"]["source"]
    assert old["generator"] == "xray-v1"
    source = {"generator": old["generator"], "seed": old["seed"], "params": old["params"]}
    diffs = _differences(render_under_simd_levels({"synth-xray": source}, module))
    print("\n" + "\n".join(diffs))
    assert any(d.startswith("synth-xray@32px") for d in diffs), diffs


def test_chunk_size_changes_no_image(manifest):
    """Per-image draws come first and the noise is drawn in pixel order: chunking is speed only."""
    for name in ("synth-many", "synth-xray"):
        source = manifest.dataset(name).source
        whole = synthetic.generate(source, {"train": 50}, 32, chunk_values=1 << 20)["train"]
        pieces = synthetic.generate(source, {"train": 50}, 32, chunk_values=5000)["train"]
        assert np.array_equal(whole[0], pieces[0]) and np.array_equal(whole[1], pieces[1])


def test_exact_op_sin_cos_exp_are_close_to_libm():
    t = np.linspace(-40.0, 40.0, 400_001)
    assert np.abs(synthetic.sin_turns(t) - np.sin(2 * np.pi * t)).max() < 1e-7
    assert np.abs(synthetic.cos_turns(t) - np.cos(2 * np.pi * t)).max() < 1e-7
    z = np.linspace(0.0, 40.0, 400_001)
    assert (np.abs(synthetic.exp_neg(z) / np.exp(-z) - 1.0)).max() < 2e-7
    assert synthetic.exp_neg(np.array([1e6]))[0] == synthetic.exp_neg(np.array([40.0]))[0] > 0


def test_the_generator_uses_no_platform_dependent_numerics():
    """A lint for the pinned path: no transcendental ufunc, BLAS, float reduction, float32,
    ``**`` or distribution sampler in harness/datasets/synthetic.py (the v1 code had them all).
    """
    import ast

    path = ROOT / "harness" / "datasets" / "synthetic.py"
    tree = ast.parse(path.read_text())
    banned_np = {
        "exp", "expm1", "exp2", "log", "log1p", "log2", "log10", "sin", "cos", "tan", "arcsin",
        "arccos", "arctan", "arctan2", "sinh", "cosh", "tanh", "hypot", "power", "float_power",
        "dot", "vdot", "matmul", "einsum", "inner", "tensordot", "sum", "mean", "std", "var",
        "prod", "cumsum", "cumprod", "float32", "float16", "longdouble", "pi", "e",
    }  # fmt: skip
    banned_methods = {
        "sum", "mean", "std", "var", "dot", "prod", "cumsum", "normal", "uniform",
        "standard_normal", "exponential", "random", "integers", "permutation", "choice",
    }  # fmt: skip
    allowed_math = {"factorial", "ldexp", "sqrt", "prod"}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp | ast.AugAssign) and isinstance(
            node.op, ast.MatMult | ast.Pow
        ):
            found.append(f"line {node.lineno}: {type(node.op).__name__}")
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            mod = node.value.id
            if (mod == "np" and node.attr in banned_np) or (
                mod == "math" and node.attr not in allowed_math
            ):
                found.append(f"line {node.lineno}: {mod}.{node.attr}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and not (isinstance(node.func.value, ast.Name) and node.func.value.id in ("np", "math"))
            and node.func.attr in banned_methods
        ):
            found.append(f"line {node.lineno}: .{node.func.attr}()")
    assert not found, found
