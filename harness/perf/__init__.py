"""``bench perf``: is this installation fast? Seven figures measured here, each against its target.

=============================== ============================================ ===============
key                             what                                         target
=============================== ============================================ ===============
harness_overhead_ratio          harness train throughput ÷ bare model.fit    >= 0.97
loader_images_per_s_224         streaming reader, 224 px, per core-second    >= 10,000
streaming_ratio                 streamed ÷ in-memory training, 224 px        >= 0.97
linear_probe_speedup            feature-extract time ÷ linear-probe time     >= 10×
                                to the same accuracy (both bests - 1 point)
prepare_images_per_s_per_core   prepare (JPEG -> 224 px), per core-second    >= 0.9 × Pillow
cell_start_s                    spawn to Keras imported, per cell process    (reported)
thread_efficiency               smoke cells' train images/s at the thread    >= 0.95
                                rule's setting ÷ the best of a sweep
=============================== ============================================ ===============

Where each is measured: :mod:`harness.perf.training` (overhead, streaming),
:mod:`harness.perf.data` (loader, prepare), :mod:`harness.perf.cells` (linear probe,
cell start), :mod:`harness.perf.threads` (thread efficiency). Everything runs in a
temporary folder (its own ``BENCH_DATA_DIR``); nothing
under the project is written. ``quick`` shrinks sizes and rounds to about a minute on an
idle 2-core machine: its figures are indicative only. Timing figures on a shared machine
move with the load around them: the JSON keeps the load average and the cross-checks
(best-of and CPU-second ratios) next to each figure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

from harness import jsonio
from harness.errors import EXIT_FAILURE, EXIT_OK

PERF_KIND = "transfer-bench.perf"
PERF_SCHEMA = 1
KEYS = (
    "harness_overhead_ratio",
    "loader_images_per_s_224",
    "streaming_ratio",
    "linear_probe_speedup",
    "prepare_images_per_s_per_core",
    "cell_start_s",
    "thread_efficiency",
)
PREPARE_TO_PILLOW = 0.9


@dataclass(frozen=True)
class Sizes:
    """How much each measurement does (full or quick)."""

    overhead_steps: int
    overhead_rounds: int
    loader_images: int
    loader_rounds: int
    prepare_images: int
    prepare_rounds: int
    stream_images: int
    stream_epochs: int
    stream_rounds: int
    probe_size: int
    probe_epochs: int

    thread_rounds: int = 2
    thread_strategies: tuple[str, ...] = (
        "scratch",
        "feature-extract",
        "fine-tune",
        "full-fine-tune",
    )


FULL = Sizes(40, 7, 1024, 9, 128, 3, 256, 2, 3, 224, 20)
QUICK = Sizes(20, 3, 256, 3, 64, 2, 64, 2, 1, 32, 15, 1, ("full-fine-tune",))


@dataclass(frozen=True)
class Figure:
    """One measured figure, its target and whether it holds (None: no target)."""

    key: str
    what: str
    value: float | None
    unit: str
    target: str
    holds: bool | None
    note: str = ""


@dataclass
class PerfReport:
    quick: bool
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_FAILURE if any(f.holds is False for f in self.figures) else EXIT_OK

    def value(self, key: str) -> float | None:
        return next(f.value for f in self.figures if f.key == key)

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: self.value(k) for k in KEYS},
            "quick": self.quick,
            "figures": [asdict(f) for f in self.figures],
            "details": self.details,
            "wall_seconds": self.wall_seconds,
            "exit_code": self.exit_code,
        }


def _at_least(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def figures_from(details: dict[str, Any]) -> list[Figure]:
    """The table's figures from the measurements' details (pure; tested)."""
    ov, ld, st = details["overhead"], details["loader"], details["streaming"]
    pr, pb, cs = details["prepare"], details["cells"]["probe"], details["cells"]["cell_start"]
    th = details["threads"]
    worst = min(th["cells"], key=lambda k: th["cells"][k]["efficiency"])
    ratio = ov["ratio_harness_over_bare"]
    stream = st["ratio_stream_over_memory"]
    speed = pb["speedup"]
    probe_holds = _at_least(speed, 10.0)
    prep = pr["images_per_s_per_core"]
    pillow = pr["pillow_images_per_s_per_core"]
    return [
        Figure(
            "harness_overhead_ratio", "harness train throughput ÷ bare model.fit", ratio,
            "ratio", ">= 0.97", _at_least(ratio, 0.97),
            f"best-of {ov['ratio_best_of']:.3f}, CPU-s {ov['ratio_cpu_seconds']:.3f}",
        ),
        Figure(
            "loader_images_per_s_224", "loader, 224 px, batch 32, shuffled, one core",
            ld["images_per_s"], "images/s", ">= 10,000", _at_least(ld["images_per_s"], 10_000),
            f"{ld['fraction_of_memcpy']:.2f} of memcpy; mmap gather "
            f"{ld['mmap_gather_images_per_s']:,.0f}/s",
        ),
        Figure(
            "streaming_ratio", "streamed ÷ in-memory training, 224 px", stream, "ratio",
            ">= 0.97", _at_least(stream, 0.97),
            f"best-of {st['ratio_best_of']:.3f}, CPU-s {st['ratio_cpu_seconds']:.3f}",
        ),
        Figure(
            "linear_probe_speedup", "linear probe over feature-extract, equal accuracy",
            speed, "×", ">= 10×", probe_holds,
            f"to val acc {pb['target_val_accuracy']:.3f} (best {pb['feature_extract_best_val']:.3f}"
            f" / {pb['linear_probe_best_val']:.3f} - 1 pt): epoch {pb['feature_extract_epochs']} / "
            f"{pb['linear_probe_epochs']}; same epochs {pb['same_epochs_speedup']:.1f}×",
        ),
        Figure(
            "prepare_images_per_s_per_core", "prepare JPEG 500×375 -> 224 px, one worker",
            prep, "images/s", f">= {PREPARE_TO_PILLOW:g} × Pillow ({pillow:,.0f})",
            _at_least(prep / pillow if pillow else None, PREPARE_TO_PILLOW),
            f"{pr['ratio_to_pillow']:.2f} × plain Pillow decode + resize",
        ),
        Figure(
            "cell_start_s", "start a cell: spawn to Keras imported", cs["median_s"], "s",
            "reported", None, f"median of {len(cs['samples_s'])}",
        ),
        Figure(
            "thread_efficiency", "smoke cells' train img/s, thread rule ÷ best of a sweep",
            th["efficiency"], "ratio", f">= {th['target']:g}",
            _at_least(th["efficiency"], th["target"]),
            f"geometric mean of {len(th['cells'])} cells; lowest {worst} "
            f"{th['cells'][worst]['efficiency']:.3f} (best there: {th['cells'][worst]['best']})",
        ),
    ]  # fmt: skip


@contextlib.contextmanager
def _data_dir(folder: Path) -> Iterator[None]:
    old = os.environ.get("BENCH_DATA_DIR")
    os.environ["BENCH_DATA_DIR"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("BENCH_DATA_DIR", None)
        else:
            os.environ["BENCH_DATA_DIR"] = old


def run_perf(*, quick: bool = False, progress: Callable[[str], None] | None = None) -> PerfReport:
    """Measure every figure (see the module doc) and return the report."""
    from harness.perf import cells, data, threads, training

    say = progress or (lambda line: None)
    sizes = QUICK if quick else FULL
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-perf-"))
    details: dict[str, Any] = {}
    try:
        with _data_dir(tmp / "data"):
            say("loader: 224 px cache, one core")
            data.write_cache("perf-loader", sizes.loader_images)
            details["loader"] = data.measure_loader("perf-loader", rounds=sizes.loader_rounds)
            say("prepare: JPEG -> 224 px against plain Pillow")
            details["prepare"] = data.measure_prepare(
                tmp / "jpegs", sizes.prepare_images, rounds=sizes.prepare_rounds
            )
            say("harness overhead: bare fit vs the harness, interleaved")
            details["overhead"] = training.measure_overhead(
                sizes.overhead_steps, sizes.overhead_rounds
            )
            say("streaming: in-memory vs streamed training at 224 px, interleaved")
            data.write_cache("perf-stream", sizes.stream_images)
            details["streaming"] = training.measure_streaming(
                "perf-stream", epochs=sizes.stream_epochs, rounds=sizes.stream_rounds
            )
        say("cells: feature-extract and linear-probe as cell processes")
        details["cells"] = cells.measure_cells(
            tmp, epochs=sizes.probe_epochs, image_size=sizes.probe_size
        )
        say("threads: the smoke cells under the thread rule and a sweep, interleaved")
        details["threads"] = threads.measure_threads(
            tmp, rounds=sizes.thread_rounds, strategies=sizes.thread_strategies
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    details["load_average_1m_end"] = os.getloadavg()[0]
    details["cpu_count"] = os.cpu_count()
    report = PerfReport(quick, figures_from(details), details, time.perf_counter() - t0)
    return report


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "images/s":
        return f"{value:,.0f}"
    if unit == "×":
        return f"{value:.1f}×"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:.3f}"


def render_table(report: PerfReport, tablefmt: str = "simple") -> str:
    rows = [
        [
            f.key,
            f.what,
            _fmt(f.value, f.unit),
            f.target,
            {True: "yes", False: "NO", None: "—"}[f.holds],
            f.note,
        ]
        for f in report.figures
    ]
    headers = ("figure", "what", "measured", "target", "holds", "notes")
    failed = [f.key for f in report.figures if f.holds is False]
    lines = [tabulate(rows, headers=headers, tablefmt=tablefmt), ""]
    if report.quick:
        lines.append("--quick: smaller sizes and fewer rounds; these figures are indicative only")
    load = report.details.get("load_average_1m_end")
    lines.append(
        f"{report.details.get('cpu_count')} CPUs, load average {load:.1f} at the end; "
        f"{report.wall_seconds:.0f}s"
    )
    lines.append(f"targets missed: {', '.join(failed)}" if failed else "every target holds")
    return "\n".join(lines)


def render_json(report: PerfReport) -> str:
    return jsonio.dumps({**report.to_dict(), "kind": PERF_KIND, "schema": PERF_SCHEMA})
