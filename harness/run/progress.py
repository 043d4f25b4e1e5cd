"""Progress of a matrix run: a rich display on a terminal, plain lines otherwise.

On a terminal: a bar of cells done (with ETA) and a bar of the current cell's epochs.
When stdout is not a terminal (CI logs, pipes): one plain line per epoch and per cell.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RunProgress:
    """Receives run events (cell start / epoch / cell end) and shows them."""

    def __init__(self, total: int, *, done: int = 0, stream: TextIO | None = None,
                 rich: bool | None = None) -> None:  # fmt: skip
        self.stream = stream or sys.stdout
        self.total = total
        self.done = done
        self.rich = self.stream.isatty() if rich is None else rich
        self._progress: Progress | None = None
        self._cells_task: Any = None
        self._epoch_task: Any = None
        self._cell_t0 = 0.0
        self._index = done
        self._started: dict[str, tuple[int, float]] = {}  # cell -> (its number, start time)

    def __enter__(self) -> RunProgress:
        if self.rich:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._progress.start()
            self._cells_task = self._progress.add_task(
                "cells", total=self.total, completed=self.done
            )
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        if self._progress is not None:
            self._progress.stop()

    def line(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=self.stream, flush=True)

    def cell_start(self, cell_id: str, epochs: int) -> None:
        self._index += 1
        self._cell_t0 = time.perf_counter()
        self._started[cell_id] = (self._index, self._cell_t0)  # cells may run side by side
        if self._progress is not None:
            if self._epoch_task is not None:
                self._progress.remove_task(self._epoch_task)
            self._epoch_task = self._progress.add_task(f"{cell_id} epochs", total=epochs)
        else:
            self.line(f"[{self._index}/{self.total}] {cell_id}: starting")

    def epoch(self, event: dict[str, Any]) -> None:
        ep, eps = event.get("epoch"), event.get("epochs")
        if self._progress is not None and self._epoch_task is not None:
            self._progress.update(self._epoch_task, completed=ep, total=eps)
            return
        vals = " ".join(
            f"{k}={event[k]:.4f}"
            for k in ("loss", "accuracy", "val_loss", "val_accuracy")
            if isinstance(event.get(k), (int, float))
        )
        index = self._started.get(str(event.get("cell")), (self._index, 0.0))[0]
        self.line(
            f"[{index}/{self.total}] {event.get('cell')} epoch {ep}/{eps} {vals} "
            f"({event.get('seconds', 0.0):.1f}s)"
        )

    def cell_end(self, cell_id: str, status: str, error: str | None = None) -> None:
        index, t0 = self._started.pop(cell_id, (self._index, self._cell_t0))
        secs = time.perf_counter() - t0
        self.done += 1
        if self._progress is not None:
            self._progress.update(self._cells_task, completed=self.done)
        msg = f"[{index}/{self.total}] {cell_id}: {status} in {secs:.1f}s"
        if error:
            msg += f" — {error}"
        self.line(msg)

    def cell_skipped(self, cell_id: str, why: str) -> None:
        self.line(f"{cell_id}: {why}")
