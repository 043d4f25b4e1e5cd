"""Findings: winners and the notes' rules of thumb, decided only by the numbers."""

from __future__ import annotations

from types import SimpleNamespace

import runkit

from harness.analysis import findings as F


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


# --------------------------------------------------------------------------- did not learn


def _learning_cells(dataset: str, accs: dict[str, float], classes: int, n: int) -> list:
    """Cells that record their class count and validation size, as the runner does."""
    effective = {"effective": {"num_classes": classes, "val_examples": n}}
    return [
        runkit.cell(dataset, s, val=a, test=a, epochs=3, config=effective) for s, a in accs.items()
    ]


def test_binomial_bound_is_exact():
    # P(X >= 10) = 1/1024 <= 0.001 < P(X >= 9) = 11/1024 for Binomial(10, 1/2).
    assert F.binomial_upper_quantile(10, 0.5, 0.001) == 10
    assert F.binomial_upper_quantile(10, 0.5, 11 / 1024 + 1e-12) == 9
    # The smoke sets' bars (module doc): 3 epochs, alpha 0.001 / 3.
    assert F.binomial_upper_quantile(200, 1 / 2, 0.001 / 3) == 125
    assert F.binomial_upper_quantile(200, 1 / 5, 0.001 / 3) == 61
    assert F.binomial_upper_quantile(240, 1 / 48, 0.001 / 3) == 15


def test_chance_check_bar_and_unknowns():
    (at,) = _learning_cells("xray", {"fine-tune": 125 / 200}, classes=2, n=200)
    (below,) = _learning_cells("xray", {"fine-tune": 124 / 200}, classes=2, n=200)
    assert F.chance_check(at).learned and F.chance_check(at).threshold == 0.625
    assert not F.chance_check(below).learned
    assert F.chance_check(below).chance == 0.5 and F.chance_check(below).epochs == 3
    assert F.chance_check(runkit.cell("xray", "scratch", val=0.5)) is None  # no effective sizes
    assert F.chance_check(runkit.cell("xray", "scratch", status="failed")) is None


def test_cells_that_did_not_learn_are_flagged_and_never_beaten():
    accs = {"scratch": 0.20, "feature-extract": 0.93, "fine-tune": 0.90, "full-fine-tune": 0.25}
    cells = _learning_cells("few", accs, classes=5, n=200)
    found = F.compute(cells, tolerance_points=2.0, manifest=_manifest(few="small-similar"))
    (d,) = found.datasets
    assert [s.strategy for s in d.scores] == ["feature-extract", "fine-tune"]
    assert {c.cell_id for c in d.did_not_learn} == {
        "few/scratch/float32/s0",
        "few/full-fine-tune/float32/s0",
    }
    line = F.winner_sentence(d, 2.0)
    assert "feature-extract won" in line and "ahead of fine-tune" in line
    assert "scratch" not in line and "full-fine-tune" not in line
    note = F.did_not_learn_note(next(c for c in d.did_not_learn if "scratch" in c.cell_id))
    assert note == "few/scratch/float32/s0 (best val 20.0%, chance 20.0%, needs >= 30.5%)"


def test_no_winner_when_only_one_or_no_strategy_learned():
    one = _learning_cells("xray", {"scratch": 0.52, "fine-tune": 0.90}, classes=2, n=200)
    (d,) = F.compute(one, tolerance_points=2.0).datasets
    assert F.winner_sentence(d, 2.0) == "**xray**: only fine-tune learned (90.0% test accuracy)."
    none = _learning_cells("xray", {"scratch": 0.52, "fine-tune": 0.55}, classes=2, n=200)
    (d,) = F.compute(none, tolerance_points=2.0).datasets
    assert d.winner is None and "no strategy learned" in F.winner_sentence(d, 2.0)
    assert "won" not in F.winner_sentence(d, 2.0)


def test_a_rule_that_needs_a_strategy_that_did_not_learn_lacks_data():
    cells = _learning_cells("xray", {"scratch": 0.51, "fine-tune": 0.95}, classes=2, n=200)
    found = F.compute(cells, tolerance_points=2.0, manifest=_manifest(xray="big-different"))
    (r,) = _rule(found, "big data, different domain")
    assert r.status == F.NOT_ENOUGH
    assert "no scratch cell on xray that learned" in r.evidence and "scratch/float32" in r.evidence


def test_the_report_flags_cells_that_did_not_learn():
    from harness.analysis import report

    cells = _learning_cells("few", {"scratch": 0.21, "fine-tune": 0.90}, classes=5, n=200)
    status = {row[1]: row[-1] for row in report.matrix_rows(cells)}
    assert status == {"scratch": "ok, did not learn (chance 20.0%)", "fine-tune": "ok"}
    section = "\n".join(report._findings_section(F.compute(cells, tolerance_points=2.0)))
    assert "not ranked, did not learn (within noise of chance): few/scratch/float32/s0" in section
    assert "only fine-tune learned" in section
