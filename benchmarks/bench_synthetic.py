"""Synthetic generation rate: images/s of ``shapes`` and ``xray`` at 32 and 224 px, v1 vs v2.

Run: ``.venv/bin/pytest benchmarks/bench_synthetic.py --benchmark-only -s``. One core (NumPy,
vectorised over chunks of images); the figures land in ``extra_info`` and are printed.

``v2`` is today's generator (float64, exact operations only: bit-identical on every CPU).
``v1`` is the float32 generator it replaced (numpy's SIMD transcendentals, not stable across
CPUs), read from git at :data:`V1_COMMIT` so that both are timed in the same session on the
same machine; it is skipped where the checkout has no git history. The issue's budget:
stability may cost at most 2× the old rate. The last test prints the v2 / v1 ratios.
"""

from __future__ import annotations

import importlib.util
import subprocess
import time
from pathlib import Path
from types import ModuleType

import pytest

from harness.datasets import synthetic
from harness.manifest import SyntheticSource

ROOT = Path(__file__).resolve().parents[1]
V1_COMMIT = "f290f4b5bf11a8217626b3fb936437f8db204c55"  # the last commit with shapes-v1/xray-v1
CLASSES = [f"{s}-{t}" for s in synthetic.SHAPES for t in synthetic.TEXTURES]
CASES = [("shapes", 32, 2000), ("xray", 32, 2000), ("shapes", 224, 64), ("xray", 224, 64)]
RATES: dict[tuple[str, str, int], float] = {}


def _v1(tmp_dir: Path) -> ModuleType | None:
    try:
        text = subprocess.run(
            ["git", "show", f"{V1_COMMIT}:harness/datasets/synthetic.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = tmp_dir / "synthetic_v1.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("synthetic_v1", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModuleType | None]:
    return {"v1": _v1(tmp_path_factory.mktemp("v1")), "v2": synthetic}


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(("kind", "size", "count"), CASES, ids=[f"{k}-{s}" for k, s, _ in CASES])
def test_generation_rate(benchmark, modules, version, kind, size, count):
    module = modules[version]
    if module is None:
        pytest.skip(f"no git history: cannot read the v1 generator at {V1_COMMIT[:10]}")
    params = {"classes": CLASSES if kind == "shapes" else list(synthetic.XRAY_CLASSES)}
    source = SyntheticSource(f"{kind}-{version}", 7, params)

    def once() -> float:
        started = time.perf_counter()
        images, _ = module.generate(source, {"train": count}, size)["train"]
        assert images.shape == (count, size, size, 3)
        return time.perf_counter() - started

    seconds = benchmark.pedantic(once, rounds=3, iterations=1)
    rate = count / benchmark.stats.stats.median
    RATES[(version, kind, size)] = rate
    benchmark.extra_info.update(
        {"generator": source.generator, "images": count, "image_size": size, "images_per_s": rate}
    )
    print(f"\n{source.generator} {size}px: {rate:,.0f} images/s (last round {seconds:.2f} s)")


def test_ratio_v2_to_v1(benchmark):
    """Prints v2 / v1 per case (the budget is >= 0.5); reported, not asserted."""
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    lines = []
    for kind, size, _ in CASES:
        old, new = RATES.get(("v1", kind, size)), RATES.get(("v2", kind, size))
        if old and new:
            ratio = new / old
            lines.append(f"{kind} {size}px: v1 {old:,.0f}/s, v2 {new:,.0f}/s, v2/v1 {ratio:.2f}")
            benchmark.extra_info[f"{kind}-{size}"] = round(ratio, 3)
    print("\n" + "\n".join(lines or ["(run the rate cases first: v1 and v2 of each)"]))
