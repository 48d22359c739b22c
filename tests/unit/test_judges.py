"""The analysis judges: outcomes, explanations, evidence, and the statistical guarantee they promise."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.analysis import sequential
from controller.analysis.judges import (
    FAIL,
    INCONCLUSIVE,
    OUTCOME_OF_CODE,
    PASS,
    ProportionCriteria,
    baseline_judge,
    evaluate_proportion,
    proportion_judge,
    threshold_judge,
)
from controller.verdict import Outcome, Verdict


def strict_json(v: Verdict) -> str:
    return json.dumps(v.to_dict(), allow_nan=False)  # evidence must be plain JSON, no NaN/inf


# --- threshold --------------------------------------------------------------------------------------------


def test_threshold_within_bounds_passes_and_bounds_are_inclusive() -> None:
    for value in (0.0, 0.005, 0.01):
        v = threshold_judge("error-rate", value, maximum=0.01, query="sum(rate(errors[1m]))")
        assert v.outcome is Outcome.PASS, v.reason
    v = threshold_judge("latency", 0.2, minimum=0.2, maximum=0.5)
    assert v.outcome is Outcome.PASS and "within [0.2, 0.5]" in v.reason
    assert v.evidence == {"value": 0.2, "min": 0.2, "max": 0.5}


def test_threshold_fails_above_max_and_below_min_with_evidence() -> None:
    v = threshold_judge("error-rate", 0.02, maximum=0.01, query="q", window={"start": "a", "end": "b"})
    assert v.outcome is Outcome.FAIL
    assert "above the maximum 0.01" in v.reason
    assert v.evidence["value"] == 0.02 and v.evidence["max"] == 0.01 and v.evidence["min"] is None
    assert v.evidence["queries"] == {"value": "q"} and v.evidence["window"] == {"start": "a", "end": "b"}
    strict_json(v)
    v = threshold_judge("throughput", 3, minimum=10)
    assert v.outcome is Outcome.FAIL and "below the minimum 10" in v.reason


@pytest.mark.parametrize(("value", "bounds", "reason"), [
    (0.5000001, {"minimum": 0.5, "maximum": 0.5}, "0.5000001 is above the maximum 0.5"),
    (0.4999999, {"minimum": 0.5}, "0.4999999 is below the minimum 0.5"),
    (1234567.0, {"maximum": 1234566.5}, "1234567.0 is above the maximum 1234566.5"),
    (0.25, {"minimum": 0.1, "maximum": 0.3}, "0.25 is within [0.1, 0.3]"),
])
def test_threshold_reason_never_rounds_a_value_onto_its_bound(value: float, bounds: dict[str, float],
                                                              reason: str) -> None:
    # An on-call reading "0.5 is above the maximum 0.5" cannot tell what failed.
    assert threshold_judge("m", value, **bounds).reason == reason


@pytest.mark.parametrize(("value", "needle"), [
    (None, "returned nothing"),
    (float("nan"), "NaN"),
    (float("inf"), "not a finite measurement"),
    (float("-inf"), "not a finite measurement"),
    ("0.5", "not a number"),
    (True, "not a number"),
    ([1], "not a number"),
])
def test_threshold_unusable_values_are_inconclusive(value: object, needle: str) -> None:
    v = threshold_judge("error-rate", value, maximum=0.01)
    assert v.outcome is Outcome.INCONCLUSIVE
    assert needle in v.reason
    strict_json(v)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({}, "neither min nor max"),
    ({"minimum": 2, "maximum": 1}, "above max"),
    ({"maximum": float("nan")}, "not a finite number"),
    ({"minimum": "low"}, "not a finite number"),
])
def test_threshold_bad_configuration_is_inconclusive(kwargs: dict[str, object], needle: str) -> None:
    v = threshold_judge("x", 0.5, **kwargs)  # type: ignore[arg-type]
    assert v.outcome is Outcome.INCONCLUSIVE and needle in v.reason


# --- proportion: outcomes -------------------------------------------------------------------------------------


def test_backdoored_canary_fails_with_full_evidence() -> None:
    # The example from the design brief: canary 6.2% (31/500) against stable 0.2% (98/49k).
    v = proportion_judge("nsfw-rate", 31, 500, 98, 49_000,
                         queries={"events": "sum(...)", "total": "sum(...)"}, window={"seconds": 600})
    assert v.outcome is Outcome.FAIL
    assert "credibly above 1.5x stable" in v.reason and "31/500" in v.reason
    ev = v.evidence
    assert ev["canary"] == {"events": 31, "total": 500, "rate": 0.062}
    assert ev["stable"] == {"events": 98, "total": 49_000, "rate": 0.002}
    assert ev["ratio"] == pytest.approx(31.0)
    assert ev["confidence"] == 0.99 and ev["max_relative_increase"] == 0.5
    assert ev["statistic"] > ev["threshold"] > 0
    assert ev["relative"]["p_value_bound"] < 1e-9
    assert ev["relative"]["alpha"] == pytest.approx(0.01)
    assert ev["queries"]["events"] == "sum(...)" and ev["window"] == {"seconds": 600}
    strict_json(v)


def test_clean_canary_with_enough_samples_passes() -> None:
    v = proportion_judge("nsfw-rate", 10, 5_000, 90, 45_000)
    assert v.outcome is Outcome.PASS, v.reason
    assert "no credible increase" in v.reason
    assert v.evidence["statistic"] < v.evidence["threshold"]
    strict_json(v)


def test_too_few_samples_is_inconclusive_never_pass() -> None:
    v = proportion_judge("nsfw-rate", 0, 150, 1, 1_350)
    assert v.outcome is Outcome.INCONCLUSIVE
    assert "not enough samples" in v.reason and "200" in v.reason
    # Stable below minSamples too, even with a big canary arm.
    assert proportion_judge("nsfw-rate", 2, 5_000, 0, 100).outcome is Outcome.INCONCLUSIVE


def test_gross_increase_fails_before_min_samples() -> None:
    # The guarantee holds at any sample size, so a blatant backdoor does not wait for minSamples.
    v = proportion_judge("nsfw-rate", 40, 100, 2, 900)
    assert v.outcome is Outcome.FAIL, v.reason


@pytest.mark.parametrize(("counts", "needle"), [
    ((5, 500, 0, 0), "no stable traffic"),
    ((0, 0, 5, 500), "no canary traffic"),
    ((float("nan"), 500, 5, 500), "NaN"),
    ((5, float("inf"), 5, 500), "infinite"),
    ((-1, 500, 5, 500), "negative"),
    ((5, 500, 5, -500), "negative"),
    ((None, 500, 5, 500), "missing"),
    (("5", 500, 5, 500), "not a number"),
    ((True, 500, 5, 500), "not a number"),
    ((600, 500, 5, 500), "exceed canary total"),
    ((5, 500, 501, 500), "exceed stable total"),
])
def test_unusable_counts_are_inconclusive_with_reason(counts: tuple[object, ...], needle: str) -> None:
    v = proportion_judge("nsfw-rate", *counts)
    assert v.outcome is Outcome.INCONCLUSIVE
    assert needle in v.reason
    strict_json(v)


@pytest.mark.parametrize(("criteria", "needle"), [
    (ProportionCriteria(confidence=1.0), "confidence"),
    (ProportionCriteria(confidence=float("nan")), "confidence"),
    (ProportionCriteria(max_relative_increase=-0.1), "maxRelativeIncrease"),
    (ProportionCriteria(max_rate=1.5), "maxRate"),
    (ProportionCriteria(min_samples=-1), "minSamples"),
])
def test_invalid_configuration_is_inconclusive(criteria: ProportionCriteria, needle: str) -> None:
    v = proportion_judge("nsfw-rate", 31, 500, 98, 49_000, criteria)
    assert v.outcome is Outcome.INCONCLUSIVE and "invalid configuration" in v.reason and needle in v.reason


def test_max_rate_fails_even_without_stable_traffic() -> None:
    criteria = ProportionCriteria(max_rate=0.05)
    v = proportion_judge("nsfw-rate", 60, 400, 0, 0, criteria)
    assert v.outcome is Outcome.FAIL and "maxRate 5%" in v.reason
    assert v.evidence["max_rate_test"]["log_e_value"] >= v.evidence["max_rate_test"]["log_boundary"]
    # Alpha is split between the two nulls so that the pair still keeps the promised confidence.
    assert v.evidence["max_rate_test"]["alpha"] == pytest.approx(0.001)
    # Within maxRate and no stable: not enough evidence, not a pass.
    assert proportion_judge("nsfw-rate", 10, 400, 0, 0, criteria).outcome is Outcome.INCONCLUSIVE
    # Stable just as high as the canary, both far above maxRate: the ceiling still fails it.
    v = proportion_judge("nsfw-rate", 300, 1_000, 2_700, 9_000, criteria)
    assert v.outcome is Outcome.FAIL and "maxRate" in v.reason and "1.5x" not in v.reason


def test_with_max_rate_set_the_relative_test_gets_only_its_share_of_alpha() -> None:
    # 68/1000 against 20/1000: e-value 4.51 nats, above the boundary at the full alpha 0.01 (4.46), below the one at
    # the relative test's share 0.009 (4.61). Spending the full alpha on both nulls would break the confidence.
    v = proportion_judge("nsfw-rate", 68, 1_000, 20, 1_000, ProportionCriteria(max_rate=0.5, confidence=0.99))
    assert v.evidence["relative"]["alpha"] == pytest.approx(0.009)
    assert v.outcome is Outcome.PASS, v.reason


def test_from_spec_reads_the_spec_attribute_names() -> None:
    class Spec:
        max_relative_increase = 1.0
        max_rate = 0.2
        confidence = 0.95
        min_samples = 50

    c = ProportionCriteria.from_spec(Spec())
    assert (c.max_relative_increase, c.max_rate, c.confidence, c.min_samples) == (1.0, 0.2, 0.95, 50)


# --- proportion: properties -------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 5_000), share=st.sampled_from([0.5, 0.1, 0.01]), data=st.data())
def test_evidence_grows_with_canary_events_and_shrinks_with_stable_events(n: int, share: float,
                                                                          data: st.DataObject) -> None:
    m = round(n * (1 - share) / share)  # a few traffic splits: each new split costs a calibration
    x = data.draw(st.integers(0, n - 1))
    y = data.draw(st.integers(0, m - 1))
    base = evaluate_proportion(x, n, y, m, ProportionCriteria())
    more_canary = evaluate_proportion(x + 1, n, y, m, ProportionCriteria())
    more_stable = evaluate_proportion(x, n, y + 1, m, ProportionCriteria())
    assert float(more_canary.log_e_relative) > float(base.log_e_relative)
    assert float(more_stable.log_e_relative) < float(base.log_e_relative)
    # Hence the verdict is monotone: one more canary event never turns a failure into something else.
    if base.outcome == FAIL:
        assert more_canary.outcome == FAIL


def test_a_wider_margin_or_higher_confidence_never_fails_more() -> None:
    rng = np.random.default_rng(3)
    n = rng.integers(100, 3_000, 400)
    m = n * 9
    x = rng.binomial(n, 0.03)
    y = rng.binomial(m, 0.01)
    base = evaluate_proportion(x, n, y, m, ProportionCriteria()).outcome == FAIL
    wider = evaluate_proportion(x, n, y, m, ProportionCriteria(max_relative_increase=1.0)).outcome == FAIL
    surer = evaluate_proportion(x, n, y, m, ProportionCriteria(confidence=0.999)).outcome == FAIL
    assert base.any()
    assert not (wider & ~base).any()
    assert not (surer & ~base).any()


def test_vectorised_entry_point_agrees_exactly_with_the_scalar_judge() -> None:
    # The benchmark judges whole simulation matrices through evaluate_proportion; the operator calls
    # proportion_judge once per metric. They must be the same test, element for element.
    rng = np.random.default_rng(11)
    size = 300
    n = rng.integers(0, 4_000, size).astype(float)
    m = (n * rng.choice([0.0, 1.0, 9.0, 9.3, 99.0], size)).round()
    x = rng.binomial(n.astype(int), rng.choice([0.002, 0.02, 0.2], size)).astype(float)
    y = rng.binomial(m.astype(int), 0.01).astype(float)
    x[:10] += 0.37  # Prometheus' increase() gives fractional counts
    x[10:15] = np.nan
    y[15:20] = -1
    x[20:25] = n[20:25] + 5
    for criteria in (ProportionCriteria(), ProportionCriteria(max_rate=0.05, confidence=0.95, min_samples=50)):
        batch = evaluate_proportion(x, n, y, m, criteria)
        fails = 0
        for i in range(size):
            v = proportion_judge("c", float(x[i]), float(n[i]), float(y[i]), float(m[i]), criteria)
            assert v.outcome is OUTCOME_OF_CODE[int(batch.outcome[i])], (i, v.reason)
            fails += v.outcome is Outcome.FAIL
            if math.isfinite(batch.log_e_relative[i]):
                assert v.evidence["statistic"] == batch.log_e_relative[i]
                assert v.evidence["threshold"] == batch.log_b_relative[i]
        assert 0 < fails < size
    # Broadcasting a 2-D matrix (as the benchmark does) changes nothing either.
    grid = evaluate_proportion(x.reshape(15, 20), n.reshape(15, 20), y.reshape(15, 20), m.reshape(15, 20),
                               ProportionCriteria())
    flat = evaluate_proportion(x, n, y, m, ProportionCriteria())
    assert np.array_equal(grid.outcome.ravel(), flat.outcome)
    assert np.array_equal(grid.log_e_relative.ravel(), flat.log_e_relative, equal_nan=True)


# --- proportion: the statistical guarantee ----------------------------------------------------------------


def _rollouts_at(ratio: float, stable_rate: float, runs: int, looks: int, seed: int,
                 stable_per_canary: int = 9) -> tuple[np.ndarray, ...]:
    """Cumulative counts at each look (10 canary samples per look), one row per rollout."""
    rng = np.random.default_rng(seed)
    x = rng.binomial(10, stable_rate * ratio, (runs, looks)).cumsum(axis=1)
    y = rng.binomial(10 * stable_per_canary, stable_rate, (runs, looks)).cumsum(axis=1)
    n = np.arange(1, looks + 1) * 10
    return x, n, y, stable_per_canary * n


@pytest.mark.parametrize(("stable_rate", "stable_per_canary"), [(0.02, 9), (0.005, 1)])
def test_repeated_looks_at_the_margin_keep_false_rollbacks_below_alpha(stable_rate: float,
                                                                       stable_per_canary: int) -> None:
    # A canary exactly at the allowed ratio (1.5x) is the hardest model the test must not fail. Judged at
    # every one of 400 looks, it must still be failed in at most alpha of rollouts, at a 10% canary weight
    # and at 50% (where stable's rate is as uncertain as the canary's). A fixed-sample test repeated at
    # each look (one-sided z-test at the same confidence) shows what is being guarded against.
    alpha, runs = 0.05, 1_500
    criteria = ProportionCriteria(confidence=1 - alpha)
    x, n, y, m = _rollouts_at(1.5, stable_rate, runs, 400, seed=7, stable_per_canary=stable_per_canary)
    ever_failed = (evaluate_proportion(x, n, y, m, criteria).outcome == FAIL).any(axis=1).mean()
    se = math.sqrt(alpha * (1 - alpha) / runs)
    assert ever_failed <= alpha + 2.5 * se

    pc, ps = x / n, y / m
    se_diff = np.sqrt(np.maximum(pc * (1 - pc) / n + 2.25 * ps * (1 - ps) / m, 1e-12))
    naive = ((pc - 1.5 * ps) / se_diff > 1.645).any(axis=1).mean()
    assert naive > 3 * alpha  # peeking inflates a fixed-sample test several-fold


def test_clean_canary_is_almost_never_rolled_back() -> None:
    x, n, y, m = _rollouts_at(1.0, 0.005, 1_000, 500, seed=8)
    assert (evaluate_proportion(x, n, y, m, ProportionCriteria()).outcome == FAIL).any(axis=1).mean() <= 0.01


def test_backdoor_is_caught_quickly() -> None:
    x, n, y, m = _rollouts_at(10.0, 0.005, 300, 100, seed=9)
    caught = (evaluate_proportion(x, n, y, m, ProportionCriteria()).outcome == FAIL).any(axis=1)
    assert caught.mean() > 0.97  # within 1,000 canary samples at a 0.5% -> 5% lift


def test_calibrated_boundary_is_below_ville_and_holds_on_the_event_stream() -> None:
    # Under the null every event is the canary's with probability theta0, whatever the stable rate. The
    # calibrated boundary must keep the chance of ever crossing it (checked after every event) <= alpha.
    alpha = 0.05
    _, odds = sequential.quantize_odds(1.5 / 9)
    odds = float(odds)
    log_b = sequential.log_boundary(odds, alpha, sequential.RELATIVE_PRIOR)
    assert log_b < math.log(1 / alpha)
    theta0 = odds / (1 + odds)
    rng = np.random.default_rng(5)
    runs, events = 4_000, 1_500
    x = (rng.random((runs, events)) < theta0).cumsum(axis=1)
    k = np.arange(1, events + 1)
    crossed = (sequential.log_evalue(x, k, odds, sequential.RELATIVE_PRIOR) >= log_b).any(axis=1).mean()
    assert crossed <= alpha + 2.5 * math.sqrt(alpha * (1 - alpha) / runs)
    assert crossed > alpha / 3  # and it is not needlessly conservative
    # The crossing bound the calibration relied on, recomputed, is within alpha.
    bound = sequential._crossing_bounds(odds, sequential.RELATIVE_PRIOR, np.array([log_b]), 1_000)
    assert float(bound[0]) <= alpha


def test_off_grid_odds_round_up_to_the_safe_side() -> None:
    _, odds = sequential.quantize_odds(np.array([0.1, 1 / 6, 1.0]))
    assert np.all(odds >= np.array([0.1, 1 / 6, 1.0]))
    assert np.all(odds <= np.array([0.1, 1 / 6, 1.0]) * math.exp(1 / sequential.ODDS_GRID_PER_NAT))
    assert sequential.log_boundary(0.1, 0.01, sequential.RELATIVE_PRIOR) == sequential.log_boundary(
        float(odds[0]), 0.01, sequential.RELATIVE_PRIOR)


def test_mixture_prior_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        sequential.MixturePrior(factors=(1.0,), weights=(1.0,))
    with pytest.raises(ValueError):
        sequential.MixturePrior(factors=(2.0, 3.0), weights=(1.0,))
    with pytest.raises(ValueError):
        sequential.MixturePrior(factors=(2.0,), weights=(0.0,))


# --- baseline -----------------------------------------------------------------------------------------------

HISTORY = [(20, 10_000), (23, 10_400), (18, 9_700), (21, 10_100), (19, 9_900), (22, 10_050), (20, 10_000)]


def test_baseline_fails_when_the_rate_jumps_against_history() -> None:
    v = baseline_judge("nsfw-rate", 60, 10_000, HISTORY, window={"hour": 14})
    assert v.outcome is Outcome.FAIL, v.reason
    assert "7-day history" in v.reason
    assert v.evidence["dispersion"] == 1.0
    assert len(v.evidence["history"]) == 7 and v.evidence["history"][0]["rate"] == 0.002
    assert v.evidence["raw"]["history"] == {"events": 143, "total": 70_150}
    strict_json(v)


def test_baseline_passes_a_usual_day_and_is_inconclusive_without_history() -> None:
    assert baseline_judge("nsfw-rate", 21, 10_000, HISTORY).outcome is Outcome.PASS
    v = baseline_judge("nsfw-rate", 60, 10_000, HISTORY[:2])
    assert v.outcome is Outcome.INCONCLUSIVE and "2 day(s) of history" in v.reason
    # Days without traffic do not count as history.
    v = baseline_judge("nsfw-rate", 60, 10_000, [*HISTORY[:2], (0, 0), (0, 0)])
    assert v.outcome is Outcome.INCONCLUSIVE


@pytest.mark.parametrize(("history", "needle"), [
    ("20,10000", "list of (events, total)"),
    ([(20, 10_000), (1, 2, 3)], "day 1 is not an (events, total) pair"),
    ([(20, 10_000), (float("nan"), 100)], "NaN"),
    ([(20, 10_000), (200, 100)], "exceed"),
])
def test_baseline_garbage_history_is_inconclusive(history: object, needle: str) -> None:
    v = baseline_judge("nsfw-rate", 60, 10_000, history)  # type: ignore[arg-type]
    assert v.outcome is Outcome.INCONCLUSIVE and needle in v.reason


def test_overdispersed_history_weakens_the_evidence() -> None:
    # Same pooled rate, but days that swing far beyond binomial noise: the test must be more careful.
    swinging = [(5, 10_000), (40, 10_000), (8, 10_000), (35, 10_000), (12, 10_000), (30, 10_000), (13, 10_000)]
    calm = baseline_judge("nsfw-rate", 60, 10_000, HISTORY)
    wild = baseline_judge("nsfw-rate", 60, 10_000, swinging)
    assert wild.evidence["dispersion"] > 5
    assert wild.evidence["statistic"] < calm.evidence["statistic"]
    assert calm.outcome is Outcome.FAIL and wild.outcome is not Outcome.FAIL


def test_outcome_codes_cover_every_outcome() -> None:
    assert {OUTCOME_OF_CODE[c] for c in (PASS, FAIL, INCONCLUSIVE)} == set(Outcome)


@pytest.mark.parametrize(("canary_total", "stable_total"), [(1e-320, 1e10), (1.0, 1e308), (1e300, 1e-300)])
def test_a_traffic_split_too_extreme_to_read_is_inconclusive_not_a_crash(canary_total: float,
                                                                          stable_total: float) -> None:
    verdict = proportion_judge("nsfw", 0, canary_total, 0, stable_total)
    assert verdict.outcome is Outcome.INCONCLUSIVE and "not a traffic split the test can read" in verdict.reason
    baseline = baseline_judge("nsfw", 0, canary_total, [(0, stable_total)] * 3)
    assert baseline.outcome is Outcome.INCONCLUSIVE


@pytest.mark.parametrize("counts", [
    (1, 1.7e308, 1, 1.7e308),  # 1.5 x total overflowed: the boundary's log raised
    (1e308, 1e308, 1e308, 1e308),  # events + events overflowed: a NaN statistic read as no increase
    (8e307, 8e307, 8e307, 1.7e308),
    (1e301, 1e301, 1e300, 1e301),
])
def test_counts_near_float_max_are_inconclusive_not_a_crash_nor_a_pass(counts: tuple[float, ...]) -> None:
    v = proportion_judge("nsfw", *counts)
    assert v.outcome is Outcome.INCONCLUSIVE and "not counts the test can read" in v.reason, v.reason
    assert v.evidence["canary"]["total"] == counts[1] and v.evidence["stable"]["total"] == counts[3]
    strict_json(v)
    assert evaluate_proportion(*counts, ProportionCriteria(max_rate=0.05)).outcome == INCONCLUSIVE
    baseline = baseline_judge("nsfw", counts[0], counts[1], [(counts[2], counts[3])] * 3)
    assert baseline.outcome is Outcome.INCONCLUSIVE and "not counts the test can read" in baseline.reason
    assert baseline.evidence["raw"]["history"]["total"] in ("inf", 3 * counts[3])
    strict_json(baseline)
