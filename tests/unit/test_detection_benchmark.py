"""benchmarks/detection.py's parts (the full benchmark is too slow for a unit test): the known-ratio reference
and the information floor, how the summary scores them, and the threshold judge's sliding window and
calibration."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from scipy.stats import binom

from controller.analysis.judges import FAIL, evaluate_proportion


@pytest.fixture(scope="module")
def detection() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "detection.py"
    spec = importlib.util.spec_from_file_location("detection_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_known_ratio_is_ours_with_a_single_atom_at_the_true_ratio(detection: ModuleType) -> None:
    for ratio in detection.ALTERNATIVES:
        c = detection.known_ratio_criteria(ratio)
        assert c.prior.factors == (ratio / (1 + detection.MARGIN),)
        assert (c.max_relative_increase, c.confidence) == (detection.MARGIN, detection.CONFIDENCE)
        # Calibrated: never above Ville's boundary, which is always valid.
        assert 0 < detection.known_ratio_boundary(ratio) <= math.log(1 / (1 - detection.CONFIDENCE)) + 1e-12


def test_known_ratio_first_look_spends_little_alpha_at_the_margin(detection: ModuleType) -> None:
    # Exact: the probability of failing at the first look (10 canary, 90 stable samples) at the margin,
    # for any stable rate, is far below the whole run's alpha. Against ratio 2 ten canary samples can never
    # be enough (10 events of 10 give a log likelihood ratio of 2.4); against 3 and above they can.
    x, y = np.arange(11)[:, None], np.arange(91)[None, :]
    for ratio in detection.ALTERNATIVES:
        reject = evaluate_proportion(x, 10, y, 90, detection.known_ratio_criteria(ratio)).outcome == FAIL
        assert reject.any() == (ratio >= 3) and not reject.all(), ratio
        for p in np.geomspace(1e-4, 0.6, 200):
            size = (np.outer(binom.pmf(np.arange(11), 10, 1.5 * p), binom.pmf(np.arange(91), 90, p)) * reject).sum()
            assert size <= 0.01 / 5, (ratio, p, size)


def test_known_ratio_catches_a_gross_canary_no_slower_than_ours(detection: ModuleType) -> None:
    st = detection.simulate(0.05, 10.0, 200, np.random.default_rng(0))
    known, ours = detection.known_ratio(st, 10.0), detection.ours(st)
    assert np.isfinite(known).all()
    assert np.median(known) <= np.median(ours)


def _cell(ratio: float, ours: float, known: float | None, oracle: float | None,
          threshold: float | None) -> dict[str, Any]:
    def d(median: float | None) -> dict[str, Any] | None:
        return None if median is None else {"caught": 1.0, "median": median, "p90": median}

    clean = ratio == 1.0
    return {"ratio": ratio, "clean": clean, "ours": {"caught": 0.0, "median": None, "p90": None} if clean else d(ours),
            "known_ratio_reference": d(known), "oracle": d(oracle),
            "threshold": {"caught": 0.0, "median": None, "p90": None} if threshold is None else d(threshold)}


def test_summary_scores_known_ratio_like_ours(detection: ModuleType) -> None:
    cells = [_cell(1.0, 0, None, None, None), _cell(2.0, 300, 200, 100, None), _cell(5.0, 60, 40, 40, 160)]
    s = detection.summarize(cells)
    assert s["ours_over_oracle_worst"] == 3.0
    assert s["known_ratio_over_oracle_worst"] == 2.0
    assert s["threshold_over_ours_geomean"] == pytest.approx(160 / 60)
    assert s["threshold_over_known_ratio_geomean"] == pytest.approx(4.0)
    assert "known_ratio_over_oracle_worst" not in detection.summarize(cells, with_references=False)


def test_bernoulli_kl(detection: ModuleType) -> None:
    assert detection.bernoulli_kl(0.3, 0.3) == 0.0
    assert detection.bernoulli_kl(0.0, 0.5) == pytest.approx(math.log(2))
    assert detection.bernoulli_kl(0.2, 0.1) == pytest.approx(0.2 * math.log(2) + 0.8 * math.log(0.8 / 0.9))


def test_margin_valid_information_is_the_closest_null(detection: ModuleType) -> None:
    for p, ratio in ((0.002, 10.0), (0.05, 2.0), (0.05, 10.0)):
        pc = p * ratio
        found = detection.margin_valid_information(p, ratio)
        grid = [detection.bernoulli_kl(pc, 1.5 * q) + 9 * detection.bernoulli_kl(p, q)
                for q in np.geomspace(p / 4, min(4 * p, 0.66), 4001)]
        assert found <= min(grid) + 1e-12
        assert found >= min(grid) - 1e-3 * min(grid)
        # The oracle's null (stable's true rate) is one of the nulls, so it is never closer.
        assert found < detection.bernoulli_kl(pc, 1.5 * p)


def test_information_floor_matches_the_conditional_test_for_rare_classes(detection: ModuleType) -> None:
    # For a rare class the closest null is the Poisson one, where the canary's share of events is all the
    # evidence: per canary sample, (rho p + 9 p) KL(theta1 || theta0) with theta = rho / (rho + 9).
    p, ratio = 1e-4, 10.0
    theta1, theta0 = ratio / (ratio + 9), 1.5 / 10.5
    conditional = (ratio * p + 9 * p) * detection.bernoulli_kl(theta1, theta0)
    assert detection.margin_valid_information(p, ratio) == pytest.approx(conditional, rel=2e-3)
    floor = detection.information_floor(p, ratio)
    work = detection.bernoulli_kl(0.99, 0.01)
    assert floor["margin_valid_samples"] == pytest.approx(work / conditional, rel=2e-3)
    assert floor["oracle_samples"] == pytest.approx(work / detection.bernoulli_kl(ratio * p, 1.5 * p))
    assert 1.3 < floor["margin_valid_over_oracle"] < 1.4


def test_information_floor_never_undercuts_the_first_look(detection: ModuleType) -> None:
    floor = detection.information_floor(0.05, 10.0)  # about 7 and 9 samples on information alone
    assert floor["oracle_samples"] == floor["margin_valid_samples"] == detection.LOOK_EVERY


def test_information_floor_is_close_below_a_valid_test(detection: ModuleType) -> None:
    # Wald's bound on mean samples holds for the known-ratio reference (valid at the margin), and that test,
    # told the true ratio, comes within a quarter of it: the floor is neither violated nor vacuous.
    st = detection.simulate(0.005, 5.0, 300, np.random.default_rng(1))
    floor = detection.information_floor(0.005, 5.0)["margin_valid_samples"]
    known = detection.known_ratio(st, 5.0)
    assert np.isfinite(known).all()
    assert floor <= known.mean() <= 1.25 * floor


def test_summary_scores_the_floor_as_a_judge(detection: ModuleType) -> None:
    cells = [_cell(1.0, 0, None, None, None), _cell(2.0, 300, 200, 100, None), _cell(5.0, 60, 40, 40, 160)]
    cells[0]["information_floor"] = None
    cells[1]["information_floor"] = {"margin_valid_samples": 120.0}
    cells[2]["information_floor"] = {"margin_valid_samples": 50.0}
    s = detection.summarize(cells)
    assert s["ours_over_floor_worst"] == 2.5  # the cell the threshold misses counts here
    assert s["ours_over_floor_geomean"] == pytest.approx(math.sqrt(2.5 * 1.2))
    assert s["threshold_over_floor_geomean"] == pytest.approx(160 / 50)  # only where both catch
    assert "threshold_over_floor_geomean" not in detection.summarize(cells, with_references=False)


def test_margin_summary_reports_the_worst_stable_rate(detection: ModuleType) -> None:
    checks = [{"ours_false_rollback": 0.006, "plugin_false_rollback": 0.016},
              {"ours_false_rollback": 0.008, "plugin_false_rollback": 0.011}]
    assert detection.margin_summary(checks) == {"max_false_rollback_at_margin": 0.008,
                                                "plugin_max_false_rollback_at_margin": 0.016}


def test_threshold_judge_slides_its_window_at_the_common_cadence(detection: ModuleType) -> None:
    # Looks every 10 canary samples; the window of 30 samples is the last three looks' counts.
    per_look = np.array([[1, 2, 0, 4, 4, 0, 0]])
    counts = detection.window_counts(per_look.cumsum(axis=1), 30)
    assert counts.tolist() == [[3, 6, 8, 8, 4]]  # from the first full window (look 3) on
    assert detection.sustained(counts, 2).tolist() == [[3, 6, 8, 4]]
    streams = detection.Streams(per_look.cumsum(axis=1), per_look.cumsum(axis=1), np.arange(1, 8) * 10,
                                np.arange(1, 8) * 90)
    # Over 5 twice in a row first at looks 4 and 5 (6 and 8 events): caught at 50 samples.
    assert detection.threshold(streams, 30, 2, 5).tolist() == [50.0]
    assert detection.threshold(streams, 30, 1, 7).tolist() == [50.0]  # 8 > 7 first at look 5
    assert detection.threshold(streams, 30, 1, 8).tolist() == [math.inf]


def small_grid(detection: ModuleType, monkeypatch: pytest.MonkeyPatch, *, horizon: int, window: int, limit: int,
               rates: tuple[float, ...]) -> None:
    """Calibrate over one window size, one failure limit and a few stable rates (the highest sets the maximum)."""
    monkeypatch.setattr(detection, "HORIZON", horizon)
    monkeypatch.setattr(detection, "WINDOWS", (window,))
    monkeypatch.setattr(detection, "FAILURE_LIMITS", (limit,))
    monkeypatch.setattr(detection, "STABLE_RATES", rates)


def test_threshold_calibration_matches_the_exact_answer_for_a_single_window(
        detection: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    # With a horizon of one window there is one evaluation: false rollbacks are P(Bin(W, p) > max) exactly.
    small_grid(detection, monkeypatch, horizon=100, window=100, limit=1, rates=(0.005, 0.02))
    exact = int(np.flatnonzero(binom.sf(np.arange(101), 100, 0.02) <= detection.MAX_FALSE_ROLLBACK)[0])
    # Both neighbours are many standard errors (0.07%) from 1%, so the estimate cannot land elsewhere.
    assert binom.sf(exact, 100, 0.02) < 0.005 and binom.sf(exact - 1, 100, 0.02) > 0.015
    assert detection.calibrate_threshold(np.random.default_rng(3)) == {(100, 1): exact}


def test_threshold_calibration_over_overlapping_windows_matches_enumeration(
        detection: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    # Three looks, a window of two looks (two overlapping evaluations), two consecutive failures needed: a clean
    # rollout fails when min(a + b, b + c) > max for its per-look counts a, b, c. Enumerate them all.
    small_grid(detection, monkeypatch, horizon=30, window=20, limit=2, rates=(0.02, 0.05))
    pmf = binom.pmf(np.arange(11), 10, 0.05)
    a, b, c = np.meshgrid(*(np.arange(11),) * 3, indexing="ij")
    prob = pmf[a] * pmf[b] * pmf[c]
    sustained = np.minimum(a + b, b + c)
    false_rollback = np.array([prob[sustained > k].sum() for k in range(21)])
    exact = int(np.flatnonzero(false_rollback <= detection.MAX_FALSE_ROLLBACK)[0])
    assert false_rollback[exact] < 0.005 and false_rollback[exact - 1] > 0.02  # clear of Monte Carlo noise
    assert detection.calibrate_threshold(np.random.default_rng(4)) == {(20, 2): exact}


def test_threshold_per_rate_keeps_one_percent_at_its_own_rate_and_never_exceeds_the_global_maximum(
        detection: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small sizes: 200 looks, two windows, two failure limits, a rare and a common stable rate.
    rates = (0.005, 0.05)
    monkeypatch.setattr(detection, "HORIZON", 2000)
    monkeypatch.setattr(detection, "WINDOWS", (100, 500))
    monkeypatch.setattr(detection, "FAILURE_LIMITS", (1, 2))
    monkeypatch.setattr(detection, "STABLE_RATES", rates)
    per_rate = detection.calibrate_threshold_per_rate(np.random.default_rng(6))
    glob = detection.global_maxima(per_rate)
    assert glob == detection.calibrate_threshold(np.random.default_rng(6))  # the same calibration, one rate at a time
    runs = 20_000
    noise = 3 * math.sqrt(2 * 0.01 * 0.99 / runs)  # both the calibration and this check are estimates
    for p in rates:
        st = detection.simulate(p, 1.0, runs, np.random.default_rng([7, int(1000 * p)]))  # clean, streams of its own
        for (w, limit), max_count in per_rate[p].items():
            assert max_count <= glob[(w, limit)]
            share = float(np.isfinite(detection.threshold(st, w, limit, max_count)).mean())
            assert share <= detection.MAX_FALSE_ROLLBACK + noise, (p, w, limit, share)
            # The smallest such maximum: one count lower breaks the 1% at this rate.
            lower = float(np.isfinite(detection.threshold(st, w, limit, max_count - 1)).mean())
            assert lower > detection.MAX_FALSE_ROLLBACK - noise, (p, w, limit, lower)
    # Set at stable's own rate: the rare class gets a maximum well below the one the common class forces.
    assert all(per_rate[0.005][key] < glob[key] for key in glob)


def test_best_threshold_reports_the_worst_configuration_under_the_null_and_the_fastest_otherwise(
        detection: ModuleType) -> None:
    per_look = np.array([[1, 2, 0, 4, 4, 0, 0]])
    streams = detection.Streams(per_look.cumsum(axis=1), per_look.cumsum(axis=1), np.arange(1, 8) * 10,
                                np.arange(1, 8) * 90)
    maxima = {(30, 2): 5, (30, 1): 5, (20, 1): 8}  # caught at 50, 40 and never
    fastest = detection.best_threshold(streams, maxima, False)
    assert (fastest["window"], fastest["failure_limit"], fastest["median"]) == (30, 1, 40.0)
    assert fastest["max_rate"] == pytest.approx(5 / 30)
    assert detection.best_threshold(streams, {(20, 1): 8, (30, 2): 5}, True)["window"] == 30  # the one that fails


def test_threshold_per_rate_summary_scores_it_like_the_threshold_judge(detection: ModuleType) -> None:
    cells = [_cell(1.0, 0, None, None, None), _cell(2.0, 300, 200, 100, None), _cell(5.0, 60, 40, 40, 160)]
    per_rate = [{"caught": 0.012, "median": None, "p90": None}, {"caught": 1.0, "median": 150, "p90": 150},
                {"caught": 1.0, "median": 30, "p90": 30}]
    for c, t in zip(cells, per_rate, strict=True):
        c["threshold_per_rate_reference"] = t
    checks = [{"threshold_false_rollback": 0.0, "threshold_per_rate_false_rollback": 0.4},
              {"threshold_false_rollback": 1.0, "threshold_per_rate_false_rollback": 1.0}]
    s = detection.threshold_per_rate_summary(cells, checks)
    assert s["threshold_per_rate_over_ours_geomean"] == pytest.approx(0.5)  # 150 / 300 and 30 / 60
    assert s["threshold_per_rate_over_oracle_geomean"] == pytest.approx(math.sqrt(1.5 * 0.75))
    assert s["cells_caught"] == {"threshold_per_rate": 2, "ours": 2, "threshold": 1, "oracle": 2}
    assert s["threshold_per_rate_max_false_rollback"] == 0.012
    assert s["threshold_max_false_rollback_at_margin"] == 1.0
    assert s["threshold_per_rate_max_false_rollback_at_margin"] == 1.0
    # The issue's summary is untouched: the per-rate reference is not the threshold judge.
    assert detection.summarize(cells)["threshold_over_ours_geomean"] == pytest.approx(160 / 60)


def test_summary_ratios_against_ours_are_null_when_ours_misses_a_cell_the_other_judge_catches(
        detection: ModuleType) -> None:
    # The third cell: the threshold judge catches at 400, the oracle at 100; ours catches only 70% of rollouts.
    cells = [_cell(1.0, 0, None, None, None), _cell(2.0, 300, 200, 100, 600), _cell(5.0, 60, 40, 40, 160),
             _cell(3.0, 0, 100, 100, 400)]
    cells[3]["ours"] = {"caught": 0.7, "median": 900, "p90": None}
    for c, floor in zip(cells, (None, 120.0, 50.0, 80.0), strict=True):
        c["information_floor"] = None if floor is None else {"margin_valid_samples": floor}
    s = detection.summarize(cells)
    # Left out (as they were), the threshold judge would read 2.3x slower than ours and ours 1.7x the floor.
    assert s["threshold_over_ours_geomean"] is None
    assert s["ours_over_oracle_worst"] is None
    assert s["ours_over_floor_geomean"] is None
    assert s["ours_missed_cells"] == {"threshold": 1, "oracle": 1}
    assert s["cells_caught"] == {"ours": 2, "threshold": 3, "oracle": 3}
    assert s["threshold_over_oracle_geomean"] == pytest.approx((6 * 4 * 4) ** (1 / 3))  # ours plays no part
    json.loads(json.dumps(s, allow_nan=False))  # strict JSON: no Infinity
    # Where ours catches every cell the others do, nothing changes, and the count says so.
    s = detection.summarize(cells[:3])
    assert s["threshold_over_ours_geomean"] == pytest.approx(math.sqrt(2 * 160 / 60))
    assert s["ours_missed_cells"] == {"threshold": 0, "oracle": 0}


def test_threshold_per_rate_summary_counts_the_cells_ours_misses_and_it_catches(detection: ModuleType) -> None:
    cells = [_cell(1.0, 0, None, None, None), _cell(2.0, 300, 200, 100, None), _cell(5.0, 60, 40, 40, 160)]
    cells[1]["ours"] = {"caught": 0.74, "median": 14200, "p90": None}
    cells[1]["oracle"] = {"caught": 0.88, "median": 9100, "p90": None}
    for c, caught, median in zip(cells, (0.0, 0.92, 1.0), (None, 4890, 30), strict=True):
        c["threshold_per_rate_reference"] = {"caught": caught, "median": median, "p90": None}
    s = detection.threshold_per_rate_summary(cells, [])
    assert s["threshold_per_rate_over_ours_geomean"] is None  # it catches the 2x cell, ours does not
    assert s["ours_missed_cells"] == {"threshold_per_rate": 1, "threshold": 0, "oracle": 0}


def test_ours_is_judged_with_the_operators_defaults_for_the_issue_s_metric(detection: ModuleType) -> None:
    """Review s32bench: the benchmark's settings were copied from the parser's defaults, so a change of a default
    (confidence, minSamples) left it measuring another judge with every test passing."""
    from controller.analysis.judges import ProportionCriteria
    from controller.api.spec import parse_spec
    from tests.unit.test_engine_support import spec_dict

    metric = {"name": "nsfw-rate", "proportion": {"events": "e{{selector}}", "total": "t{{selector}}",
                                                  "maxRelativeIncrease": detection.MARGIN}}
    spec = spec_dict()
    parsed = parse_spec({**spec, "analysis": {**spec["analysis"], "metrics": [metric]}})
    (as_run,) = parsed.analysis.metrics
    assert as_run.proportion is not None
    assert ProportionCriteria.from_spec(as_run.proportion) == detection.CRITERIA
