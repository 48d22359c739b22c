"""The bake's baseline judge: what the history's day-to-day spread (phi) may and may not change."""

from __future__ import annotations

import json

import numpy as np
import pytest

from controller.analysis.judges import (
    FAIL,
    INCONCLUSIVE,
    ProportionCriteria,
    _t_tail,
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


# --- one unusual day does not blind the comparison --------------------------------------------------------------


def test_one_odd_day_in_seven_does_not_hide_a_fivefold_rate() -> None:
    """One day at 3x the usual rate made phi ~450 and the pooled rate 1.29%: a new version at 5% passed."""
    history = [(1_000, 100_000)] * 6 + [(3_000, 100_000)]
    v = baseline_judge("nsfw", 5_000, 100_000, history)
    assert v.outcome is Outcome.FAIL, v.reason
    assert "its 6-day history (an outlying day left out) 1% (6000/600000)" in v.reason
    assert v.evidence["dispersion"] == 1.0 and v.evidence["dispersion_days"] == 6
    odd = v.evidence["history"][6]
    assert odd["left_out"] == "outlier" and odd["outlier_p_value"] < 0.05
    assert all("left_out" not in day for day in v.evidence["history"][:6])
    strict_json(v)


def test_an_odd_low_day_is_left_out_too() -> None:
    # An outage-like day at a tenth of the usual rate inflated phi just the same.
    v = baseline_judge("nsfw", 300, 10_000, [(100, 10_000)] * 6 + [(10, 10_000)])
    assert v.outcome is Outcome.FAIL and v.evidence["history"][6]["left_out"] == "outlier"


@pytest.mark.parametrize("history", [SWINGING, ALTERNATING, [(20, 1_000), (35, 1_000), (0, 1_000)]])
def test_a_history_that_really_varies_keeps_every_day(history: list[tuple[int, int]]) -> None:
    # Several days at each level, or too few days to tell one out of line: the spread is real, not one day's.
    v = baseline_judge("nsfw", 300, 10_000, history)
    assert all("left_out" not in day for day in v.evidence["history"])
    assert v.evidence["dispersion"] > 5


def test_clean_new_versions_rarely_fail_against_histories_that_vary() -> None:
    """Days at 1% x lognormal(0.3), the new version's window drawn like any day: the false-fail rate stays
    below 1 - confidence although days out of line are sometimes left out."""
    rng = np.random.default_rng(18)
    fails = 0
    for _ in range(300):
        events = rng.binomial(10_000, 0.01 * np.exp(rng.normal(0, 0.3, 8)))
        v = baseline_judge("nsfw", int(events[0]), 10_000, [(int(e), 10_000) for e in events[1:]])
        fails += v.outcome is Outcome.FAIL
    assert fails <= 3


@pytest.mark.parametrize(("s", "nu", "tail"), [(1.0, 1, 0.5), (2.0, 2, 1 - 2 / 6 ** 0.5), (2.5706, 5, 0.05),
                                               (2.0423, 30, 0.05), (0.0, 7, 1.0), (float("inf"), 4, 0.0)])
def test_the_outlier_tests_t_tail(s: float, nu: int, tail: float) -> None:
    assert _t_tail(s, nu) == pytest.approx(tail, abs=2e-5)


# --- a near-empty day is not a day of history -------------------------------------------------------------------


@pytest.mark.parametrize("third", [(0, 0.4), (0, 1), (1, 1), (0, 60)])
def test_a_near_empty_day_does_not_make_up_a_three_day_history(third: tuple[float, float]) -> None:
    v = baseline_judge("nsfw", 100, 10_000, [(100, 10_000), (110, 10_000), third])
    assert v.outcome is Outcome.INCONCLUSIVE, v.reason
    assert v.reason.startswith("only 2 day(s) of history with traffic (at least 66.7 predictions), need 3")
    assert v.evidence["history"][2]["left_out"] == "too little traffic"


def test_a_day_with_its_share_of_min_samples_counts() -> None:
    # minSamples 200 over 3 days: 67 predictions make a day; so does any whole prediction with minSamples 0.
    assert baseline_judge("nsfw", 100, 10_000, [(100, 10_000), (110, 10_000), (1, 67)]).outcome is Outcome.PASS
    c = ProportionCriteria(min_samples=0)
    assert baseline_judge("nsfw", 100, 10_000, [(100, 10_000), (110, 10_000), (0, 1)], c).outcome is Outcome.PASS
    assert baseline_judge("nsfw", 100, 10_000, [(100, 10_000), (110, 10_000), (0, 0.4)],
                          c).outcome is Outcome.INCONCLUSIVE


def test_an_odd_day_is_not_left_out_of_a_history_of_only_the_days_required() -> None:
    # Three days, one far out of line: leaving it out judged the new version on two days (a spread measured on
    # one degree of freedom), though fewer than three days is never judged.
    verdict = baseline_judge("nsfw", 100, 10000, [(100, 10000), (101, 10000), (1000, 10000)])
    assert not any(day.get("left_out") for day in verdict.evidence["history"])
    assert "3-day history" in verdict.reason


# --- what the history's spread could not have seen (review s31bake) -----------------------------------------------

# A Monday's 7-day history: the weekend's class rate is half the weekdays' (2.5% vs 5%), 20 000 predictions a day.
# The two weekend days agree, so neither is left out as an outlier: their steady difference reads as phi ~73.
WEEKLY = [(500, 20_000)] * 2 + [(1_000, 20_000)] * 5


def test_a_weekly_pattern_that_hides_a_twofold_regression_says_so() -> None:
    """A new version at twice the weekdays' rate (2.33x the pooled history, allowed 1.5x) passes, as before; the
    pass now says the history's spread hides increases below the ratio it could have seen."""
    v = baseline_judge("nsfw", 2_000, 20_000, WEEKLY)
    assert v.outcome is Outcome.PASS, v.reason  # the outcome is kept: only made visible
    assert v.evidence["dispersion"] > 50 and not any(day.get("left_out") for day in v.evidence["history"])
    detectable = v.evidence["detectable_ratio"]
    assert 3.0 < detectable < 3.2 and v.evidence["ratio"] == pytest.approx(7 / 3)
    assert v.reason.endswith(f"; this history's day-to-day spread hides increases below {detectable:.3g}x")
    assert "so few predictions" not in v.reason
    strict_json(v)


@pytest.mark.parametrize(("history", "events", "total"), [(WEEKLY, 2_000, 20_000), (STEADY, 150, 10_000),
                                                          (ALTERNATING, 2, 250), (STEADY, 5, 300)])
def test_the_detectable_ratio_is_where_the_real_judge_starts_to_fail(history: list[tuple[int, int]], events: int,
                                                                      total: int) -> None:
    """Seen a hair above the ratio, the same totals and history fail; a hair below, they do not."""
    v = baseline_judge("nsfw", events, total, history)
    history_rate = v.evidence["stable"]["rate"]
    at = v.evidence["detectable_ratio"] * history_rate * total
    assert baseline_judge("nsfw", at * 1.001, total, history).outcome is Outcome.FAIL
    assert baseline_judge("nsfw", at * 0.999, total, history).outcome is not Outcome.FAIL


def test_a_pass_that_could_see_twice_the_allowance_says_nothing_more() -> None:
    v = baseline_judge("nsfw", 150, 10_000, STEADY)  # 1.5x, binomial noise only, 10 000 predictions
    assert v.outcome is Outcome.PASS, v.reason
    assert v.evidence["detectable_ratio"] < 3.0
    assert "hide" not in v.reason


def test_too_few_predictions_are_named_rather_than_the_spread() -> None:
    # No spread (phi 1), 300 predictions: the counts alone hide up to ~4.4x.
    few = baseline_judge("nsfw", 5, 300, STEADY)
    assert few.outcome is Outcome.PASS and few.evidence["dispersion"] == 1.0, few.reason
    assert few.reason.endswith(f"; so few predictions hide increases below {few.evidence['detectable_ratio']:.3g}x")
    # Both: 250 predictions against a history that swings 1% / 3%.
    both = baseline_judge("nsfw", 2, 250, ALTERNATING)
    assert both.outcome is Outcome.PASS, both.reason
    assert "; so few predictions and this history's day-to-day spread hide increases below" in both.reason


def test_a_spread_that_hides_every_rate_says_any_increase() -> None:
    # 250 predictions against a history whose days swing 2% / 8%: not even 250 of 250 would have failed.
    v = baseline_judge("nsfw", 5, 250, SWINGING)
    assert v.outcome is Outcome.PASS, v.reason
    assert v.evidence["detectable_ratio"] is None
    assert v.reason.endswith("; this history's day-to-day spread hides any increase")
    assert baseline_judge("nsfw", 250, 250, SWINGING).outcome is Outcome.PASS  # the test can indeed not fail
    strict_json(v)


def test_a_failure_keeps_its_reason_and_shows_the_ratio() -> None:
    v = baseline_judge("nsfw", 4_000, 20_000, WEEKLY)
    assert v.outcome is Outcome.FAIL, v.reason
    assert v.evidence["detectable_ratio"] == pytest.approx(3.08, abs=0.01)
    assert "hide" not in v.reason
