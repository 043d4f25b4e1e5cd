"""Findings: winners and the notes' rules of thumb, decided only by the numbers."""

from __future__ import annotations

from types import SimpleNamespace

import runkit

from harness import findings as F


def _cells(dataset: str, accs: dict[str, float]) -> list:
    return [runkit.cell(dataset, s, val=a, test=a) for s, a in accs.items()]


def _manifest(**regimes: str) -> SimpleNamespace:
    """A manifest stand-in declaring ``dataset="small-similar"``-style regimes."""
    entries = {}
    for name, regime in regimes.items():
        data, domain = regime.split("-")
        entries[name] = SimpleNamespace(regime={"data": data, "domain": domain})
    return SimpleNamespace(datasets=entries)


def _rule(found: F.Findings, regime: str) -> list[F.RuleCheck]:
    return [r for r in found.rules if r.regime == regime]


def test_small_similar_head_only_competitive_held_and_not_held():
    manifest = _manifest(few="small-similar")
    held = _cells("few", {"feature-extract": 0.88, "fine-tune": 0.89, "scratch": 0.60})
    found = F.compute(held, tolerance_points=2.0, manifest=manifest)
    (r,) = _rule(found, "small data, similar domain")
    assert r.status == F.HELD and r.dataset == "few"
    assert (
        "feature-extract 88.0% vs fine-tune 89.0%" in r.evidence and "1.0 pts behind" in r.evidence
    )
    worse = _cells("few", {"feature-extract": 0.80, "fine-tune": 0.95})
    found = F.compute(worse, tolerance_points=2.0, manifest=manifest)
    (r,) = _rule(found, "small data, similar domain")
    assert r.status == F.NOT_HELD and "15.0 pts behind" in r.evidence


def test_big_similar_and_big_different():
    cells = _cells("many", {"full-fine-tune": 0.95, "feature-extract": 0.70, "scratch": 0.85})
    cells += _cells("xray", {"scratch": 0.85, "fine-tune": 0.95, "feature-extract": 0.90})
    manifest = _manifest(many="big-similar", xray="big-different")
    found = F.compute(cells, tolerance_points=2.0, manifest=manifest)
    (big_sim,) = _rule(found, "big data, similar domain")
    assert big_sim.status == F.HELD and "full-fine-tune 95.0% vs scratch 85.0%" in big_sim.evidence
    (big_diff,) = _rule(found, "big data, different domain")
    assert big_diff.status == F.NOT_HELD and "10.0 pts behind" in big_diff.evidence
    (small,) = _rule(found, "small data, similar domain")
    assert small.status == F.NOT_ENOUGH and small.dataset is None


def test_missing_strategy_gives_not_enough_data():
    cells = _cells("xray", {"fine-tune": 0.95, "feature-extract": 0.90})
    found = F.compute(cells, tolerance_points=2.0, manifest=_manifest(xray="big-different"))
    (r,) = _rule(found, "big data, different domain")
    assert r.status == F.NOT_ENOUGH and "no ok scratch cell on xray" in r.evidence


def test_winner_margin_and_failed_cells_excluded():
    cells = _cells("few", {"fine-tune": 0.91, "scratch": 0.70, "feature-extract": 0.86})
    cells.append(runkit.cell("few", "two-stage", status="failed"))
    (d,) = F.compute(cells, tolerance_points=2.0).datasets
    assert d.winner.strategy == "fine-tune" and round(d.margin, 6) == 5.0
    assert d.failed == ("few/two-stage/float32/s0",) and d.score("two-stage") is None
    line = F.winner_sentence(d, 2.0)
    assert "fine-tune won with 91.0% test accuracy, 5.0 pts ahead of feature-extract" in line
    assert "tie" not in line


def test_regime_derived_from_manifest_when_not_declared():
    cells = _cells("gray", {"scratch": 0.9})
    entry = SimpleNamespace(regime=None, splits={"train": 58388, "val": 2000}, channels=1)
    regime = F.regime_of("gray", cells, entry)
    assert (regime.data, regime.domain) == ("big", "different")
    assert regime.source == "derived: 58388 train images >= 4000; 1 channel(s)"
    regime = {"data": "small", "domain": "similar"}
    declared = SimpleNamespace(regime=regime, splits={"train": 99999}, channels=1)
    assert F.regime_of("gray", cells, declared) == F.Regime("small", "similar", "manifest")
    unknown = F.regime_of("gray", cells, None)
    assert (unknown.data, unknown.domain) == (None, None)


def test_pretrained_strategy_without_weights_is_not_counted_as_transfer():
    # The runner records a pretrained strategy run on a random backbone as "<name>-random".
    cells = _cells("few", {"fine-tune": 0.90, "scratch": 0.60, "feature-extract-random": 0.95})
    found = F.compute(cells, tolerance_points=2.0, manifest=_manifest(few="small-similar"))
    assert found.datasets[0].winner.strategy == "feature-extract-random"
    (r,) = _rule(found, "small data, similar domain")
    assert r.status == F.NOT_ENOUGH and "no ok head-only cell" in r.evidence


def test_tie_within_tolerance_is_called_a_tie():
    cells = _cells("few", {"fine-tune": 0.900, "full-fine-tune": 0.895})
    (d,) = F.compute(cells, tolerance_points=2.0).datasets
    line = F.winner_sentence(d, 2.0)
    assert "fine-tune led with 90.0%" in line and "0.5 pts ahead of full-fine-tune" in line
    assert "effectively a tie" in line
