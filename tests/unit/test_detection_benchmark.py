"""benchmarks/detection.py's known-ratio reference: what it is, that it is valid at its first look, and how
the summary scores it (the full benchmark is too slow for a unit test)."""

from __future__ import annotations

import importlib.util
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
    assert "known_ratio_over_oracle_worst" not in detection.summarize(cells, with_known_ratio=False)
