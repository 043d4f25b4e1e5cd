"""The tiny matrix the tests train: one builder instead of a TOML copy in every test file.

:func:`toml` writes a profile whose defaults are the smallest cell that still trains
(:data:`DEFAULTS`: 32 px, alpha 0.35, random weights, batch 8, 3 steps an epoch, 2
epochs); a test states only what it needs otherwise: ``epochs=1``, a default left out
with ``drop=("steps_per_epoch",)`` (real data sets their own steps), its cell groups
(:func:`group`). :func:`write` puts the text in a file and returns its path, for
``--profile``. Values are written as JSON, which TOML reads the same (numbers, strings,
lists, booleans).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

TOLERANCES: dict[str, Any] = {"accuracy_points": 5.0, "throughput_relative": 0.5}
DEFAULTS: dict[str, Any] = {
    "image_size": 32,
    "alpha": 0.35,
    "weights": "none",
    "batch_size": 8,
    "steps_per_epoch": 3,
    "epochs": 2,
    "augmentation": "flip",
    "warmup_steps": 1,
    "inference_batch": 8,
    "inference_steps": 2,
    "inference_warmup": 1,
}
SYNTHETIC: dict[str, Any] = {"input": "synthetic", "num_classes": 3}


def group(
    datasets: str | Iterable[str],
    strategies: str | Iterable[str],
    *,
    precisions: Iterable[str] = ("float32",),
    seeds: Iterable[int] = (0,),
    **more: Any,
) -> dict[str, Any]:
    """One ``[[cells]]`` group: every dataset x strategy x precision x seed, plus ``more``."""

    def listed(value: str | Iterable[Any]) -> list[Any]:
        return [value] if isinstance(value, str) else list(value)

    return {
        "datasets": listed(datasets),
        "strategies": listed(strategies),
        "precisions": listed(precisions),
        "seeds": list(seeds),
        **more,
    }


def _table(name: str, values: Mapping[str, Any]) -> str:
    return f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


def toml(
    *groups: Mapping[str, Any],
    description: str | None = None,
    tolerances: Mapping[str, Any] | None = None,
    baseline: Mapping[str, Any] | None = None,
    drop: Iterable[str] = (),
    extra: str = "",
    **defaults: Any,
) -> str:
    """The profile's text: ``[tolerances]`` (:data:`TOLERANCES` updated by ``tolerances``),
    an optional ``[baseline]``, ``[defaults]`` (:data:`DEFAULTS` less ``drop``, updated by
    ``defaults``), ``extra`` (raw TOML: more defaults, or groups of one's own), ``groups``."""
    parts = []
    if description is not None:
        parts.append(_table("profile", {"description": description}))
    parts.append(_table("tolerances", {**TOLERANCES, **(tolerances or {})}))
    if baseline is not None:
        parts.append(_table("baseline", baseline))
    dropped = set(drop)
    kept = {k: v for k, v in DEFAULTS.items() if k not in dropped}
    parts.append(_table("defaults", {**kept, **defaults}) + extra)
    parts += [_table("[cells]", g) for g in groups]
    return "".join(parts)


def write(folder: Path, *groups: Mapping[str, Any], name: str = "tiny", **kw: Any) -> Path:
    """:func:`toml` written to ``folder/<name>.toml``; its path."""
    path = Path(folder) / f"{name}.toml"
    path.write_text(toml(*groups, **kw))
    return path
