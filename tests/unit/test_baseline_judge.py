"""The bake's baseline judge: what the history's day-to-day spread (phi) may and may not change."""

from __future__ import annotations

import json

import numpy as np
import pytest

from controller.analysis.judges import (
    FAIL,
    INCONCLUSIVE,
    ProportionCriteria,
    baseline_judge,
    evaluate_proportion,
)
from controller.verdict import Outcome, Verdict

STEADY = [(100, 10_000)] * 6  # 1% every day: binomial noise only
SWINGING = [(200, 10_000), (800, 10_000)] * 3 + [(500, 10_000)]  # 5% on average, 2% / 8% by day
ALTERNATING = [(100, 10_000), (300, 10_000)] * 3 + [(100, 10_000)]  # 1.86% on average, 1% / 3% by day


def strict_json(v: Verdict) -> str:
    return json.dumps(v.to_dict(), allow_nan=False)


# --- maxRate is a ceiling on the new version's own rate --------------------------------------------------------


@pytest.mark.parametrize(("criteria", "events", "total"), [
    (ProportionCriteria(max_relative_increase=100, max_rate=0.05), 100, 1_000),  # only the ceiling can bite
    (ProportionCriteria(max_relative_increase=0.5, max_rate=0.05), 500, 5_000),
])
def test_max_rate_fails_whatever_the_history_spread(criteria: ProportionCriteria, events: int, total: int) -> None:
    v = baseline_judge("nsfw", events, total, SWINGING, criteria)
    assert v.evidence["dispersion"] > 100  # the spread is real and large...
    assert v.outcome is Outcome.FAIL, v.reason  # ...but 10% is above a 5% ceiling all the same
    assert "above maxRate 5%" in v.reason and f"({events}/{total})" in v.reason
    test = v.evidence["max_rate_test"]
    assert test["log_e_value"] >= test["log_boundary"]
    strict_json(v)


def test_deflation_reaches_the_relative_test_only() -> None:
    x, n, y, m, phi = 100.0, 1_000.0, 3_500.0, 70_000.0, 20.0
    c = ProportionCriteria(max_rate=0.05)
    deflated = evaluate_proportion(x, n, y, m, c, deflation=phi)
    divided = evaluate_proportion(x / phi, n / phi, y / phi, m / phi, c)
    raw = evaluate_proportion(x, n, y, m, c)
    assert float(deflated.log_e_relative) == pytest.approx(float(divided.log_e_relative))
    assert float(deflated.log_e_relative) < float(raw.log_e_relative)
    assert float(deflated.log_e_max_rate) == pytest.approx(float(raw.log_e_max_rate))
    assert deflated.outcome == FAIL and divided.outcome != FAIL


@pytest.mark.parametrize("phi", [0.5, float("nan"), float("inf")])
def test_a_deflation_below_one_or_not_finite_is_unusable(phi: float) -> None:
    batch = evaluate_proportion(10, 1_000, 70, 7_000, ProportionCriteria(), deflation=phi)
    assert batch.outcome == INCONCLUSIVE and not batch.valid


def test_min_samples_counts_real_predictions() -> None:
    c = ProportionCriteria(min_samples=200)
    assert evaluate_proportion(2, 199, 1_300, 70_000, c, deflation=60.0).outcome == INCONCLUSIVE
    assert evaluate_proportion(2, 200, 1_300, 70_000, c, deflation=60.0).outcome != INCONCLUSIVE


# --- near-empty days do not make the spread ---------------------------------------------------------------------


@pytest.mark.parametrize("tiny_day", [(1, 1), (2, 3), (0.4, 0.4)])
def test_a_near_empty_history_day_does_not_hide_a_threefold_increase(tiny_day: tuple[float, float]) -> None:
    v = baseline_judge("nsfw", 300, 10_000, [*STEADY, tiny_day])
    assert v.evidence["dispersion"] == 1.0 and v.evidence["dispersion_days"] == 6
    assert v.outcome is Outcome.FAIL, v.reason
    assert len(v.evidence["history"]) == 7  # still part of the pooled rate


def test_small_days_on_the_other_side_are_left_out_too() -> None:
    # A class at 99%: a day of 0 out of 1 adds ~p/(1-p) = 99 to the chi-square.
    v = baseline_judge("accept", 9_900, 10_000, [(9_900, 10_000)] * 6 + [(0, 1)])
    assert v.evidence["dispersion"] == 1.0 and v.evidence["dispersion_days"] == 6


def test_the_spread_is_still_measured_on_the_usable_days() -> None:
    v = baseline_judge("nsfw", 300, 10_000, [*ALTERNATING, (1, 1)])
    assert v.evidence["dispersion_days"] == 7 and v.evidence["dispersion"] > 30


def test_too_few_usable_days_leave_phi_at_one_and_still_judge() -> None:
    # A rare class on little traffic: every day expects 2 events. Three days of traffic still make a baseline.
    v = baseline_judge("nsfw", 200, 10_000, [(2, 1_000), (0, 1_000), (5, 1_000)])
    assert v.evidence["dispersion"] == 1.0 and v.evidence["dispersion_days"] == 0
    assert v.outcome is Outcome.FAIL, v.reason
    v = baseline_judge("nsfw", 60, 10_000, [(100, 10_000), (0, 300), (1, 300)])
    assert v.evidence["dispersion"] == 1.0 and v.evidence["dispersion_days"] == 1


# --- the words: raw counts, phi, "new version" -----------------------------------------------------------------


def test_the_reason_shows_raw_counts_min_samples_and_phi() -> None:
    v = baseline_judge("nsfw", 2, 150, ALTERNATING)
    phi = v.evidence["dispersion"]
    assert phi > 30 and v.outcome is Outcome.INCONCLUSIVE
    assert "new version 1.33% (2/150)" in v.reason and "(1300/70000)" in v.reason
    assert "need 200 on each" in v.reason
    assert f"phi={phi:.3g}" in v.reason and "varies day to day" in v.reason and "widened" in v.reason
    assert "canary" not in v.reason
    ev = v.evidence
    assert ev["canary"] == {"events": 2, "total": 150, "rate": pytest.approx(2 / 150)}
    assert ev["stable"]["events"] == 1_300 and ev["stable"]["total"] == 70_000
    assert ev["raw"] == {"current": {"events": 2, "total": 150}, "history": {"events": 1_300, "total": 70_000}}
    assert ev["deflated"]["current"]["total"] == pytest.approx(150 / phi)
    assert ev["deflated"]["history"]["events"] == pytest.approx(1_300 / phi)
    strict_json(v)


def test_pass_and_fail_in_a_bake_speak_of_the_new_version() -> None:
    passed = baseline_judge("nsfw", 2, 250, ALTERNATING)
    assert passed.outcome is Outcome.PASS, passed.reason
    assert "new version 0.8% (2/250)" in passed.reason and "phi=" in passed.reason
    failed = baseline_judge("nsfw", 300, 10_000, STEADY)
    assert failed.outcome is Outcome.FAIL, failed.reason
    assert failed.reason.startswith("new version 3% (300/10000) is credibly above 1.5x its 6-day history")
    assert "phi=" not in failed.reason  # binomial noise only: nothing to explain
    for v in (passed, failed):
        assert "canary" not in v.reason
    assert np.isclose(failed.evidence["canary"]["rate"], 0.03)


def test_every_history_day_stays_in_the_evidence_in_step_with_its_end() -> None:
    """A day without traffic is not judged, but dropping it from the evidence would shift the days after it
    against window.historyAt."""
    ends = [f"2026-03-0{d}T12:00:00+00:00" for d in (9, 8, 7, 6)]
    v = baseline_judge("nsfw", 40, 1_000, [(10, 1_000), (0, 0), (30, 1_000), (12, 1_000)], history_at=ends)
    history = v.evidence["history"]
    assert [day["at"] for day in history] == ends
    assert [day["no_traffic"] for day in history] == [False, True, False, False]
    assert history[1] == {"events": 0, "total": 0, "rate": None, "no_traffic": True, "at": ends[1]}
    assert history[2]["rate"] == 0.03 and v.evidence["raw"]["history"] == {"events": 52, "total": 3_000}
    assert "3-day history" in v.reason
    strict_json(v)
