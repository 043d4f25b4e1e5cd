"""Synthetic generation rate: images/s of ``shapes-v1`` and ``xray-v1`` at 32 and 224 px.

Run: ``.venv/bin/pytest benchmarks/bench_synthetic.py --benchmark-only``. One core (NumPy,
vectorised over chunks of images); the figures land in ``extra_info`` and are printed.
"""

from __future__ import annotations

import time

import pytest

from harness.datasets import synthetic
from harness.manifest import SyntheticSource

SHAPES = SyntheticSource(
    "shapes-v1", 7, {"classes": [f"{s}-{t}" for s in synthetic.SHAPES for t in synthetic.TEXTURES]}
)
XRAY = SyntheticSource("xray-v1", 7, {"classes": list(synthetic.XRAY_CLASSES)})


@pytest.mark.parametrize(
    ("source", "size", "count"),
    [(SHAPES, 32, 2000), (XRAY, 32, 2000), (SHAPES, 224, 64), (XRAY, 224, 64)],
    ids=["shapes-32", "xray-32", "shapes-224", "xray-224"],
)
def test_generation_rate(benchmark, source, size, count):
    def once() -> float:
        started = time.perf_counter()
        images, _ = synthetic.generate(source, {"train": count}, size)["train"]
        assert images.shape == (count, size, size, 3)
        return time.perf_counter() - started

    seconds = benchmark.pedantic(once, rounds=3, iterations=1)
    rate = count / benchmark.stats.stats.median
    benchmark.extra_info.update({"images": count, "image_size": size, "images_per_s": rate})
    print(f"\n{source.generator} {size}px: {rate:,.0f} images/s (last round {seconds:.2f} s)")
