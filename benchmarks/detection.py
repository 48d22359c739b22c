"""How fast does each judge catch a canary whose class rate is too high, and how often does it fail a clean one?

Simulated prediction streams, canary at 10% of traffic (9 stable samples per canary sample), every judge
evaluated every 10 canary samples on what it would see at that moment, over the grid

    stable class rate {0.2%, 0.5%, 2%, 5%} x canary/stable ratio {1 (clean), 2, 3, 5, 10}

with margin maxRelativeIncrease 0.5 (a canary within 1.5x stable is acceptable), confidence 0.99, and a
horizon of 20,000 canary samples. Judges:

(a) ours: controller.analysis.judges.evaluate_proportion, the exact code the operator runs, on the
    cumulative counts at each look (stable's rate is never given to it: it only sees stable's counts).
(b) threshold: Flagger/Argo style. A fixed maximum on the canary's class rate over the last W samples,
    evaluated at the same cadence as every other judge (every 10 canary samples, i.e. Flagger's interval with a
    query range of W samples), once a full window exists (a rate over fewer samples would be a noisier judge
    needing a higher maximum); the rollout fails after `limit` consecutive failed evaluations (Flagger and
    Argo count failed checks in total; overlapping windows fail in runs, so the two hardly differ, and limit 1,
    the same under both, wins almost every cell). Configured once for the whole grid: for each W in {50, 100,
    200, 500, 1000} and limit in {1, 2, 3}, the smallest maximum that keeps false rollbacks <= 1% at every
    stable rate of the grid. Overlapping windows are not independent, so there is no closed form: the share
    is estimated on clean rollouts of its own (standard error about 0.07% at 1%, so a maximum whose share
    lies that close to 1% can come out one count off). Each cell reports the configuration that catches
    fastest there, which flatters this judge.
(c) oracle: Wald's SPRT that knows both true rates, testing canary rate = 1.5 x stable against the true
    canary rate at alpha = beta = 1% on the canary's samples (only for ratios above 1.5).

Also reported, outside the goals: ours at the margin itself (ratio 1.5, the worst case its guarantee covers)
and, for reference, a plug-in mixture SPRT that treats stable's estimated rate as known. The plug-in is what
a "plain mixture SPRT" usually means; it is faster, and the margin check shows why it is not valid.

Per-rate threshold reference, also outside the goals: the global maximum is set by the 5% rate, so the
threshold judge (b) can catch nothing below 2% stable; a team running Flagger on one model would set the
maximum from that model's own rate. This reference is (b) with the same windows and failure limits, calibrated
on the same clean rollouts but at the cell's own stable rate only (so never above the global maximum), best
configuration per cell. The margin check reports both thresholds' false rollbacks (worst configuration): neither
keeps 1% there; the per-rate one buys its speed by losing that guarantee at every stable rate, the global one
loses it where its maximum is set (5%) and is slow or blind elsewhere.

Known-ratio reference, also outside the goals: the conditional SPRT that is told the cell's true
canary/stable ratio rho1 but not stable's rate. It is ours with the mixture collapsed to the single atom
rho1 / 1.5 (the same evaluate_proportion code, the same calibrated boundary, no lower boundary), i.e. Wald's
SPRT of theta0 = 1.5 n / (1.5 n + m) against theta1 = rho1 n / (rho1 n + m) on the canary's share of events.
A mixture over ratios can only spread its evidence over alternatives this test is told, so (up to
overshoot and discreteness) its speed is the ceiling for ours and for any prior in the conditional family.
Its gap to the oracle is the price of not knowing stable's rate, not of the prior; its gap to ours is
what a better prior could still win. The margin check (ratio 1.5, each alternative's test) shows it valid.

Information floor, the theoretical bound, also outside the goals. Wald's inequality: any sequential test
that fails a model at the margin with probability <= alpha and catches a bad one with probability >= 1 - beta
needs on average at least kl(1 - beta, alpha) / K canary samples (and never fewer than one look), where K is
the information one canary sample (with its 9 stable samples) carries against the closest null the test must
guard against. For the oracle's question the null is one point (stable's rate is given):
K = KL(Bern(rho p) || Bern(1.5 p)). A test that must keep false rollbacks <= alpha at the margin for *every*
stable rate faces the closest null of all, K = min over q of KL(Bern(rho p) || Bern(1.5 q)) + 9 KL(Bern(p) ||
Bern(q)). The floor is exact for means; it says nothing of how close a real test can come, and medians can sit
below means. The summary scores a test whose samples to catch equal the margin-valid floor in every cell:
roughly the best any valid test could show, for ours and for threshold_over_ours.

Samples to catch count canary samples; a rollout not caught within the horizon counts as never caught, so
a median or p90 is null when fewer than half or 90% of rollouts are caught. A judge catches a cell when it
catches 90% of its rollouts; a summary ratio set against ours (or the known-ratio reference) is null when it
misses a cell the other judge catches, and ours_missed_cells counts those cells.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from controller.analysis.judges import FAIL, ProportionCriteria, evaluate_proportion
from controller.analysis.sequential import MixturePrior, log_boundary, quantize_odds

STABLE_RATES = (0.002, 0.005, 0.02, 0.05)
RATIOS = (1.0, 2.0, 3.0, 5.0, 10.0)
ALTERNATIVES = tuple(r for r in RATIOS if r > 1.5)  # ratios the oracle and the known-ratio reference test
MARGIN = 0.5
CONFIDENCE = 0.99
MIN_SAMPLES = 200
CANARY_WEIGHT = 0.10
STABLE_PER_CANARY = round((1 - CANARY_WEIGHT) / CANARY_WEIGHT)  # 9
LOOK_EVERY = 10
HORIZON = 20_000
WINDOWS = (50, 100, 200, 500, 1000)
FAILURE_LIMITS = (1, 2, 3)
MAX_FALSE_ROLLBACK = 0.01
# More rollouts at the margin: a false-rollback share near 1% needs them to be told apart from 1.3% or 0.7%.
MARGIN_RUNS_FACTOR = 5
CAUGHT = 0.90  # a judge "catches" a cell when it catches at least this share of its rollouts

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Streams:
    """Cumulative counts at every look, one row per simulated rollout."""

    canary_events: IntArray
    stable_events: IntArray
    canary_total: IntArray  # per look, same for every rollout
    stable_total: IntArray


def simulate(stable_rate: float, ratio: float, runs: int, rng: np.random.Generator) -> Streams:
    looks = HORIZON // LOOK_EVERY
    canary_rate = min(1.0, stable_rate * ratio)
    # Per look: 10 canary samples and 90 stable samples, each a Bernoulli draw of the class.
    c = rng.binomial(LOOK_EVERY, canary_rate, size=(runs, looks)).cumsum(axis=1)
    s = rng.binomial(LOOK_EVERY * STABLE_PER_CANARY, stable_rate, size=(runs, looks)).cumsum(axis=1)
    n = np.arange(1, looks + 1, dtype=np.int64) * LOOK_EVERY
    return Streams(c, s, n, n * STABLE_PER_CANARY)


def first_look(hit: npt.NDArray[np.bool_]) -> FloatArray:
    """Canary samples at the first look where `hit` is true, inf if never."""
    anyhit = hit.any(axis=1)
    return np.where(anyhit, (hit.argmax(axis=1) + 1) * LOOK_EVERY, np.inf).astype(np.float64)


# --- (a) ours ---------------------------------------------------------------------------------------------

CRITERIA = ProportionCriteria(max_relative_increase=MARGIN, confidence=CONFIDENCE, min_samples=MIN_SAMPLES)


def ours(st: Streams) -> FloatArray:
    batch = evaluate_proportion(st.canary_events, st.canary_total[None, :], st.stable_events,
                                st.stable_total[None, :], CRITERIA)
    return first_look(batch.outcome == FAIL)


# --- (b) threshold ------------------------------------------------------------------------------------------


THRESHOLD_CALIBRATION_ROLLOUTS = 20_000  # clean rollouts per stable rate; standard error about 0.07% at 1%
CALIBRATION_CHUNK = 5_000


def window_counts(cumulative: IntArray, window: int) -> IntArray:
    """Class count over the last `window` canary samples, at every look from the first full window on."""
    per = window // LOOK_EVERY
    out = cumulative[:, per - 1:].copy()
    out[:, 1:] -= cumulative[:, :-per]
    return out


def sustained(counts: IntArray, limit: int) -> IntArray:
    """Least count over each run of `limit` consecutive evaluations (the run ending at that evaluation)."""
    out = counts[:, limit - 1:].copy()
    for back in range(1, limit):
        np.minimum(out, counts[:, limit - 1 - back:counts.shape[1] - back], out=out)
    return out


Maxima = dict[tuple[int, int], int]  # (window, failure limit) -> max count per window


def calibrate_threshold_per_rate(rng: np.random.Generator) -> dict[float, Maxima]:
    """Stable rate -> (window, limit) -> the smallest max count per window keeping false rollbacks <= 1% there.

    A clean rollout is failed by max count c when some run of `limit` evaluations all exceed c, i.e. when the
    largest sustained count exceeds c: one pass over clean rollouts gives the false-rollback share for every c.
    """
    looks = HORIZON // LOOK_EVERY
    maxima: dict[float, Maxima] = {}
    for p in STABLE_RATES:
        peaks: dict[tuple[int, int], list[IntArray]] = {}
        for _ in range(THRESHOLD_CALIBRATION_ROLLOUTS // CALIBRATION_CHUNK):
            cumulative = rng.binomial(LOOK_EVERY, p, size=(CALIBRATION_CHUNK, looks)).cumsum(axis=1, dtype=np.int32)
            for w in WINDOWS:
                counts = window_counts(cumulative, w)
                for limit in FAILURE_LIMITS:
                    peaks.setdefault((w, limit), []).append(sustained(counts, limit).max(axis=1))
        maxima[p] = {}
        for key, chunks in peaks.items():
            peak = np.concatenate(chunks)
            false_rollback = (peak[None, :] > np.arange(key[0] + 1)[:, None]).mean(axis=1)  # index: max count
            maxima[p][key] = int(np.flatnonzero(false_rollback <= MAX_FALSE_ROLLBACK)[0])
    return maxima


def global_maxima(per_rate: dict[float, Maxima]) -> Maxima:
    """The smallest maxima keeping false rollbacks <= 1% at every rate: each rate's share only falls as the
    maximum rises, so that is the largest of the per-rate maxima."""
    keys = next(iter(per_rate.values()))
    return {key: max(m[key] for m in per_rate.values()) for key in keys}


def calibrate_threshold(rng: np.random.Generator) -> Maxima:
    """(window, limit) -> the smallest max count per window keeping false rollbacks <= 1% at every rate."""
    return global_maxima(calibrate_threshold_per_rate(rng))


def threshold(st: Streams, window: int, limit: int, max_count: int) -> FloatArray:
    over = sustained(window_counts(st.canary_events, window), limit) > max_count
    skipped = window // LOOK_EVERY - 1 + limit - 1  # looks before the first full run of evaluations
    return first_look(over) + skipped * LOOK_EVERY


def best_threshold(st: Streams, maxima: Maxima, null: bool) -> dict[str, Any]:
    """Every configuration on these streams; under the null (clean or at the margin) the one with the most
    false rollbacks, else the one that catches fastest (by median, then by share caught)."""
    configs = []
    for (w, limit), max_count in maxima.items():
        d = describe(threshold(st, w, limit, max_count))
        d.update({"window": w, "failure_limit": limit, "max_rate": max_count / w})
        configs.append(d)
    if null:
        return max(configs, key=lambda d: d["caught"])
    return min(configs, key=lambda d: (math.inf if d["median"] is None else d["median"], -d["caught"]))


# --- (c) oracle ---------------------------------------------------------------------------------------------


def oracle(st: Streams, stable_rate: float, ratio: float, alpha: float = 0.01, beta: float = 0.01) -> FloatArray:
    p0, p1 = (1 + MARGIN) * stable_rate, min(stable_rate * ratio, 1 - 1e-12)
    llr = (st.canary_events * math.log(p1 / p0)
           + (st.canary_total[None, :] - st.canary_events) * math.log((1 - p1) / (1 - p0)))
    up = first_look(llr >= math.log((1 - beta) / alpha))
    down = first_look(llr <= math.log(beta / (1 - alpha)))
    return np.where(up < down, up, np.inf)  # stopping at the lower boundary accepts: never caught


# --- the theoretical bound: Wald's information floor ---------------------------------------------------------


def bernoulli_kl(a: float, b: float) -> float:
    """KL(Bern(a) || Bern(b)) in nats."""
    out = 0.0
    if a > 0:
        out += a * math.log(a / b)
    if a < 1:
        out += (1 - a) * math.log((1 - a) / (1 - b))
    return out


def margin_valid_information(stable_rate: float, ratio: float) -> float:
    """Information per canary sample (and its stable samples) against the closest null a margin-valid test
    must guard against: min over stable rates q of the pair's KL to (canary 1.5 q, stable q)."""
    canary_rate = min(stable_rate * ratio, 1 - 1e-12)

    def kl_to(q: float) -> float:
        return bernoulli_kl(canary_rate, (1 + MARGIN) * q) + STABLE_PER_CANARY * bernoulli_kl(stable_rate, q)

    # Convex in q (KL is convex in its second argument): golden-section search over the null's stable rates.
    lo, hi = 1e-12, 1 / (1 + MARGIN) - 1e-12
    g = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if kl_to(a) <= kl_to(b):
            hi = b
        else:
            lo = a
    return kl_to((lo + hi) / 2)


def information_floor(stable_rate: float, ratio: float, alpha: float = 0.01, beta: float = 0.01) -> dict[str, float]:
    """Least mean canary samples to catch: for the oracle's question (stable's rate given) and for any test
    valid at the margin whatever stable's rate. No test stops before its first look."""
    work = bernoulli_kl(1 - beta, alpha)
    oracle_kl = bernoulli_kl(min(stable_rate * ratio, 1 - 1e-12), (1 + MARGIN) * stable_rate)
    valid_kl = margin_valid_information(stable_rate, ratio)
    return {"oracle_samples": max(LOOK_EVERY, work / oracle_kl),
            "margin_valid_samples": max(LOOK_EVERY, work / valid_kl),
            "margin_valid_over_oracle": oracle_kl / valid_kl}


# --- reference: plug-in mixture SPRT ------------------------------------------------------------------------

PLUGIN_FACTORS = np.exp(np.linspace(math.log(1.05), math.log(15.0), 20))  # log-uniform above the margin


def plugin(st: Streams) -> FloatArray:
    """Mixture SPRT on the canary's samples with stable's estimated rate plugged in as if known."""
    n = st.canary_total[None, :]
    p0 = np.minimum((1 + MARGIN) * (st.stable_events + 0.5) / (st.stable_total[None, :] + 1.0), 0.999)
    acc = np.full(st.canary_events.shape, -np.inf)
    for f in PLUGIN_FACTORS:
        p1 = np.minimum(p0 * f, 0.9999)
        term = st.canary_events * np.log(p1 / p0) + (n - st.canary_events) * np.log((1 - p1) / (1 - p0))
        acc = np.logaddexp(acc, term - math.log(PLUGIN_FACTORS.size))
    return first_look(acc >= math.log(1 / (1 - CONFIDENCE)))


# --- reference: conditional SPRT told the true ratio ---------------------------------------------------------


def known_ratio_criteria(ratio: float) -> ProportionCriteria:
    """Ours with the mixture prior collapsed onto the true ratio: a single-atom (plain Wald) conditional SPRT."""
    return dataclasses.replace(CRITERIA, prior=MixturePrior(factors=(ratio / (1 + MARGIN),), weights=(1.0,)))


def known_ratio(st: Streams, ratio: float) -> FloatArray:
    """Conditional SPRT of canary/stable = 1.5 against canary/stable = `ratio` on the canary's share of events,
    calibrated boundary as for ours (no lower boundary: it never accepts, it only fails or runs on)."""
    batch = evaluate_proportion(st.canary_events, st.canary_total[None, :], st.stable_events,
                                st.stable_total[None, :], known_ratio_criteria(ratio))
    return first_look(batch.outcome == FAIL)


def known_ratio_boundary(ratio: float) -> float:
    """The calibrated log boundary the known-ratio reference uses at this benchmark's split (Ville's is log 100)."""
    odds = float(quantize_odds((1 + MARGIN) / STABLE_PER_CANARY)[1])
    c = known_ratio_criteria(ratio)
    return log_boundary(odds, c.alpha_relative, c.prior)


# --- reporting ----------------------------------------------------------------------------------------------


def describe(times: FloatArray) -> dict[str, Any]:
    caught = float(np.isfinite(times).mean())
    med, p90 = (float(v) for v in np.quantile(times, [0.5, 0.9], method="inverted_cdf"))
    return {"caught": caught, "median": med if math.isfinite(med) else None,
            "p90": p90 if math.isfinite(p90) else None}


def geomean(values: list[float]) -> float | None:
    """None for no values, and when one is infinite: the judge set below misses a cell the other catches, so a
    geomean of the other cells would flatter it (summaries count such cells in ours_missed_cells)."""
    if not values or not all(math.isfinite(v) for v in values):
        return None
    return float(math.exp(sum(math.log(v) for v in values) / len(values)))


def run(runs: int, seed: int) -> dict[str, Any]:
    started = time.monotonic()
    rng = np.random.default_rng(seed)
    per_rate = calibrate_threshold_per_rate(np.random.default_rng([seed, 1]))  # streams of its own
    limits = global_maxima(per_rate)
    cells: list[dict[str, Any]] = []
    margin_checks: list[dict[str, Any]] = []
    for ps in STABLE_RATES:
        for ratio in (*RATIOS, 1 + MARGIN):
            at_margin = ratio == 1 + MARGIN
            st = simulate(ps, ratio, runs * MARGIN_RUNS_FACTOR if at_margin else runs, rng)
            if at_margin:  # validity at the edge of the null: every valid test must stay <= alpha
                # The known-ratio reference is a different test per alternative: check each on these streams.
                known = {str(r): describe(known_ratio(st, r))["caught"] for r in ALTERNATIVES}
                margin_checks.append({"stable_rate": ps, "ratio": ratio, "runs": runs * MARGIN_RUNS_FACTOR,
                                      "ours_false_rollback": describe(ours(st))["caught"],
                                      "plugin_false_rollback": describe(plugin(st))["caught"],
                                      "known_ratio_false_rollback": max(known.values()),
                                      "known_ratio_false_rollback_by_alternative": known,
                                      "threshold_false_rollback": best_threshold(st, limits, True)["caught"],
                                      "threshold_per_rate_false_rollback":
                                          best_threshold(st, per_rate[ps], True)["caught"]})
                continue
            cell: dict[str, Any] = {"stable_rate": ps, "ratio": ratio, "canary_rate": ps * ratio,
                                    "clean": ratio == 1.0, "ours": describe(ours(st))}
            best = best_threshold(st, limits, ratio == 1.0)
            cell["threshold"] = best
            cell["threshold_per_rate_reference"] = best_threshold(st, per_rate[ps], ratio == 1.0)
            cell["oracle"] = describe(oracle(st, ps, ratio)) if ratio > 1 + MARGIN else None
            cell["known_ratio_reference"] = describe(known_ratio(st, ratio)) if ratio > 1 + MARGIN else None
            cell["information_floor"] = information_floor(ps, ratio) if ratio > 1 + MARGIN else None
            cell["plugin_reference"] = describe(plugin(st))
            if cell["clean"]:
                cell["false_rollback"] = {"ours": cell["ours"]["caught"], "threshold": best["caught"],
                                          "plugin_reference": cell["plugin_reference"]["caught"],
                                          "threshold_per_rate_reference":
                                              cell["threshold_per_rate_reference"]["caught"]}
            cells.append(cell)
    # The plug-in reference scored the same way, as if it were ours (it is not valid: see margin_checks).
    as_if_ours = [{**c, "ours": c["plugin_reference"]} for c in cells]
    reference = {k: v for k, v in summarize(as_if_ours, with_references=False).items() if k != "cells_caught"}
    summary = {**summarize(cells), **margin_summary(margin_checks)}
    return {"cells": cells, "summary": summary, "margin_checks": margin_checks,
            "plugin_reference_summary": reference,
            "threshold_per_rate_reference_summary": threshold_per_rate_summary(cells, margin_checks),
            "config": {"runs": runs, "seed": seed, "horizon": HORIZON, "look_every": LOOK_EVERY,
                       "canary_weight": CANARY_WEIGHT, "margin": MARGIN, "confidence": CONFIDENCE,
                       "min_samples": MIN_SAMPLES,
                       "known_ratio_log_boundary": {str(r): known_ratio_boundary(r) for r in ALTERNATIVES},
                       "threshold_max_per_window": {f"{w}x{k}": c / w for (w, k), c in limits.items()},
                       "threshold_per_rate_max_per_window": {str(p): {f"{w}x{k}": c / w for (w, k), c in m.items()}
                                                             for p, m in per_rate.items()},
                       "threshold_calibration_rollouts": THRESHOLD_CALIBRATION_ROLLOUTS},
            "seconds": round(time.monotonic() - started, 1)}


def summarize(cells: list[dict[str, Any]], with_references: bool = True) -> dict[str, Any]:
    dirty = [c for c in cells if not c["clean"]]

    def ok(d: dict[str, Any] | None) -> bool:
        return d is not None and d["caught"] >= CAUGHT and d["median"] is not None

    ours_over_oracle = [c["ours"]["median"] / c["oracle"]["median"] if ok(c["ours"]) else math.inf
                        for c in dirty if ok(c["oracle"])]
    thr_over_ours = [c["threshold"]["median"] / c["ours"]["median"] if ok(c["ours"]) else math.inf for c in dirty
                     if ok(c["threshold"])]
    thr_over_oracle = [c["threshold"]["median"] / c["oracle"]["median"] for c in dirty
                       if ok(c["threshold"]) and ok(c["oracle"])]
    worst = max(ours_over_oracle) if ours_over_oracle else None
    # Outside the goals: the conditional SPRT told the true ratio, scored exactly like ours.
    known: dict[str, Any] = {}
    if with_references:
        known_over_oracle = [c["known_ratio_reference"]["median"] / c["oracle"]["median"]
                             if ok(c["known_ratio_reference"]) else math.inf for c in dirty if ok(c["oracle"])]
        thr_over_known = [c["threshold"]["median"] / c["known_ratio_reference"]["median"]
                          if ok(c["known_ratio_reference"]) else math.inf for c in dirty if ok(c["threshold"])]
        kworst = max(known_over_oracle) if known_over_oracle else None
        known = {"known_ratio_over_oracle_worst": kworst if kworst is None or math.isfinite(kworst) else None,
                 "threshold_over_known_ratio_geomean": geomean(thr_over_known)}
    # Outside the goals: the theoretical bound, scored as if it were a judge that stops at the margin-valid
    # floor in every cell (over the same cells as the goal it is set beside).
    floor: dict[str, Any] = {}
    if with_references:
        def at_floor(c: dict[str, Any]) -> float:
            return float(c["information_floor"]["margin_valid_samples"])

        have = [c for c in dirty if c.get("information_floor")]
        ours_over_floor = [c["ours"]["median"] / at_floor(c) if ok(c["ours"]) else math.inf
                           for c in have if ok(c["oracle"])]
        fworst = max(ours_over_floor) if ours_over_floor else None
        floor = {"threshold_over_floor_geomean": geomean([c["threshold"]["median"] / at_floor(c) for c in have
                                                          if ok(c["threshold"]) and ok(c["oracle"])]),
                 "ours_over_floor_worst": fworst if fworst is None or math.isfinite(fworst) else None,
                 "ours_over_floor_geomean": geomean(ours_over_floor)}
    return {
        "max_false_rollback": max(c["ours"]["caught"] for c in cells if c["clean"]),
        "ours_over_oracle_worst": worst if worst is None or math.isfinite(worst) else None,
        "threshold_over_ours_geomean": geomean(thr_over_ours),
        "threshold_over_oracle_geomean": geomean(thr_over_oracle),
        "cells_caught": {k: sum(ok(c[k]) for c in dirty) for k in ("ours", "threshold", "oracle")},
        # Cells the other judge catches and ours misses: each makes ours' ratio against that judge null.
        "ours_missed_cells": {k: sum(ok(c[k]) and not ok(c["ours"]) for c in dirty) for k in ("threshold", "oracle")},
        "ours_catches_every_oracle_cell": all(ok(c["ours"]) for c in dirty if ok(c["oracle"])),
        **known,
        **floor,
    }


def margin_summary(margin_checks: list[dict[str, Any]]) -> dict[str, Any]:
    """Outside the goals: false rollbacks at the margin itself, where validity is tested (clean cells cannot
    show an over-rejecting test)."""
    return {"max_false_rollback_at_margin": max((m["ours_false_rollback"] for m in margin_checks), default=None),
            "plugin_max_false_rollback_at_margin": max((m["plugin_false_rollback"] for m in margin_checks),
                                                       default=None)}


def threshold_per_rate_summary(cells: list[dict[str, Any]], margin_checks: list[dict[str, Any]]) -> dict[str, Any]:
    """Outside the goals: the threshold calibrated per stable rate, scored as the threshold judge is, beside the
    global one, and both thresholds' false rollbacks at the margin (the guarantee the per-rate one gives up)."""
    scored = summarize([{**c, "threshold": c["threshold_per_rate_reference"]} for c in cells], with_references=False)
    plain = summarize(cells, with_references=False)
    return {"threshold_per_rate_over_ours_geomean": scored["threshold_over_ours_geomean"],
            "threshold_per_rate_over_oracle_geomean": scored["threshold_over_oracle_geomean"],
            "cells_caught": {"threshold_per_rate": scored["cells_caught"]["threshold"], **plain["cells_caught"]},
            "ours_missed_cells": {"threshold_per_rate": scored["ours_missed_cells"]["threshold"],
                                  **plain["ours_missed_cells"]},
            "threshold_per_rate_max_false_rollback": max(c["threshold_per_rate_reference"]["caught"]
                                                         for c in cells if c["clean"]),
            "threshold_max_false_rollback_at_margin": max((m["threshold_false_rollback"] for m in margin_checks),
                                                          default=None),
            "threshold_per_rate_max_false_rollback_at_margin": max(
                (m["threshold_per_rate_false_rollback"] for m in margin_checks), default=None)}


def _fmt(d: dict[str, Any] | None) -> str:
    if d is None:
        return f"{'-':>22}"
    med = "-" if d["median"] is None else f"{d['median']:.0f}"
    p90 = "-" if d["p90"] is None else f"{d['p90']:.0f}"
    return f"{100 * d['caught']:5.1f}% {med:>7} {p90:>7}"


def print_table(result: dict[str, Any]) -> None:
    def cfg(t: dict[str, Any]) -> str:
        return f"W{t['window']}x{t['failure_limit']}>{100 * t['max_rate']:.1f}%"

    print(f"{'stable':>7} {'ratio':>5} | {'ours: caught median p90':>22} | {'threshold (best W x limit)':>34} | "
          f"{'oracle':>22} | {'known ratio (reference)':>23} | {'plug-in (reference)':>22} | "
          f"{'threshold per rate (reference)':>35} | floor (mean)")
    for c in result["cells"]:
        t, tr, floor = c["threshold"], c["threshold_per_rate_reference"], c["information_floor"]
        print(f"{100 * c['stable_rate']:6.1f}% {c['ratio']:5.0f} | {_fmt(c['ours'])} | {cfg(t):>11} {_fmt(t)} | "
              f"{_fmt(c['oracle'])} | {_fmt(c['known_ratio_reference']):>23} | {_fmt(c['plugin_reference'])} | "
              f"{cfg(tr):>12} {_fmt(tr)} | {'-' if floor is None else format(floor['margin_valid_samples'], '.0f')}")
    print("\nAt the margin (ratio 1.5, the null's edge): false rollbacks, should be <= 1%")
    for m in result["margin_checks"]:
        print(f"  stable {100 * m['stable_rate']:.1f}%: ours {100 * m['ours_false_rollback']:.1f}%, "
              f"plug-in reference {100 * m['plugin_false_rollback']:.1f}%, "
              f"known-ratio reference (worst alternative) {100 * m['known_ratio_false_rollback']:.1f}%, "
              f"threshold {100 * m['threshold_false_rollback']:.1f}%, "
              f"threshold per rate (reference) {100 * m['threshold_per_rate_false_rollback']:.1f}%")
    print("\nSummary:")
    for k, v in result["summary"].items():
        print(f"  {k}: {v}")
    print("Plug-in reference scored the same way (not a valid test, see above):")
    for k, v in result["plugin_reference_summary"].items():
        print(f"  {k}: {v}")
    print("Threshold calibrated per stable rate (reference; no guarantee at the margin, see above):")
    for k, v in result["threshold_per_rate_reference_summary"].items():
        print(f"  {k}: {v}")
    print(f"\n{result['config']['runs']} rollouts per cell, seed {result['config']['seed']}, "
          f"{result['seconds']} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="simulated rollouts per cell (default 1000)")
    parser.add_argument("--seed", type=int, default=5, help="random seed (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be positive")
    result = run(args.runs, args.seed)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
