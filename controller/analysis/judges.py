"""The analysis judges: pure functions from numbers already fetched to a Verdict with its evidence.

- threshold: one number against min/max, as Argo Rollouts and Flagger do (error rate, latency).
- proportion: a class's rate on the canary against stable's over the same window, with a sequential test
  that stays valid when re-evaluated at every interval on the cumulative counts (see sequential.py).
- baseline: a class's rate against its own history (the same window at the same hour on past days), for
  when no stable version runs beside the model (the bake after promotion). Same test, history as the
  reference arm; the relative test's counts are deflated by the day-to-day overdispersion of that history,
  while maxRate and minSamples read the raw counts.

What the proportion outcomes mean:
- FAIL: the always-valid test has rejected "canary rate <= (1 + maxRelativeIncrease) x stable rate" (or
  "canary rate <= maxRate"). A model that meets the margin is failed with probability at most
  1 - confidence over the whole analysis, however often it is evaluated. A failure may come before
  minSamples: the guarantee holds at every sample size, and a gross backdoor should not wait.
- PASS: the evidence so far is clean: at least minSamples on both arms and no rejection. It is not proof
  that the canary is within the margin (a small lift may need more samples than the step gives); it says
  the test, which is built to catch increases as early as the data allow, has found none.
- INCONCLUSIVE: not enough evidence yet (below minSamples, no stable traffic) or unusable input. Never a pass.

`evaluate_proportion` is the vectorised entry point: the scalar judges call it on one element, and the
benchmark calls it on whole simulation matrices, so both run exactly the same code.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.analysis.sequential import (
    MAX_RATE_PRIOR,
    RELATIVE_PRIOR,
    FloatArray,
    MixturePrior,
    log_boundary,
    log_evalue,
    quantize_odds,
)
from controller.api.spec import MAX_RATE_RANGE, MIN_BAKE_BASELINE_DAYS
from controller.verdict import Outcome, Verdict

# Outcome codes in the vectorised results (int8 arrays).
PASS, FAIL, INCONCLUSIVE = 0, 1, 2
OUTCOME_OF_CODE = {PASS: Outcome.PASS, FAIL: Outcome.FAIL, INCONCLUSIVE: Outcome.INCONCLUSIVE}

# With maxRate set, two nulls are tested; alpha is split so that a model meeting both is still failed with
# probability <= alpha. maxRate is a coarse ceiling whose breaches are usually gross, so it gets the
# smaller share and the relative test (the subtle one) keeps most of its power.
MAX_RATE_ALPHA_SHARE = 0.1
# The bake's history leaves out a day that a test flags as an outlier against the other days (see _odd_day). Days
# whose rates vary normally (same volume, symmetric spread) are wrongly flagged about this often; real histories
# more often (a review's simulation: 13-18% with weekday/weekend volumes or a ramp-up, 55% with traffic growing
# 1000-fold in a week), which errs towards failing: a clean new version's false-fail rate stayed below 1% at
# 20-30% spreads over 3 to 14 days and with unequal volumes (it roughly doubles, to 2-4%, at a 60% spread or
# with 1000-fold growth, where it was already 1-2%).
ODD_DAY_ALPHA = 0.05

TEST_NAME = "conditional binomial mixture SPRT, calibrated boundary"
# Canary/stable sample ratios the test reads; beyond, the null's odds under- or overflow (garbage counts).
SPLIT_LIMITS = (1e-9, 1e9)
# Totals the test reads: far past any real count, and far enough below float's limit (1.8e308) that its sums
# and products (e.g. 1.5 x total) stay finite.
MAX_COUNT = 1e300


@dataclass(frozen=True)
class ProportionCriteria:
    """The spec's proportion limits (names as in controller.api.spec.ProportionMetric)."""

    max_relative_increase: float = 0.5
    max_rate: float | None = None
    confidence: float = 0.99
    min_samples: float = 200
    prior: MixturePrior = RELATIVE_PRIOR

    @classmethod
    def from_spec(cls, spec: Any) -> ProportionCriteria:
        """Build from any object with the spec's attribute names (e.g. ProportionMetric)."""
        return cls(max_relative_increase=spec.max_relative_increase, max_rate=spec.max_rate,
                   confidence=spec.confidence, min_samples=spec.min_samples)

    def problems(self) -> list[str]:
        """What is wrong with this configuration, in words (empty when usable)."""
        out = []
        if not _is_number(self.max_relative_increase) or not 0 <= self.max_relative_increase < 1e6:
            out.append(f"maxRelativeIncrease must be a number >= 0, got {self.max_relative_increase!r}")
        if self.max_rate is not None and (not _is_number(self.max_rate)
                                          or not MAX_RATE_RANGE[0] <= self.max_rate <= MAX_RATE_RANGE[1]):
            out.append(f"maxRate must be a number from 0.000001 to 0.999999, got {self.max_rate!r}")
        if not _is_number(self.confidence) or not 0.5 <= self.confidence < 1:
            out.append(f"confidence must be a number in [0.5, 1), got {self.confidence!r}")
        if not _is_number(self.min_samples) or self.min_samples < 0:
            out.append(f"minSamples must be a number >= 0, got {self.min_samples!r}")
        return out

    @property
    def alpha(self) -> float:
        return round(1.0 - float(self.confidence), 12)  # 1 - 0.99 is 0.010000000000000009 in floats

    @property
    def alpha_relative(self) -> float:
        return round(self.alpha * (1.0 - MAX_RATE_ALPHA_SHARE), 12) if self.max_rate is not None else self.alpha

    @property
    def alpha_max_rate(self) -> float:
        return round(self.alpha * MAX_RATE_ALPHA_SHARE, 12) if self.max_rate is not None else 0.0


@dataclass(frozen=True)
class ProportionBatch:
    """Element-wise results of evaluate_proportion (arrays of the broadcast input shape)."""

    outcome: npt.NDArray[np.int8]
    valid: npt.NDArray[np.bool_]
    log_e_relative: FloatArray  # NaN where the relative test could not run
    log_b_relative: FloatArray
    null_share: FloatArray  # theta0: share of events expected from the canary at the margin
    log_e_max_rate: FloatArray  # NaN without maxRate
    log_b_max_rate: FloatArray


def evaluate_proportion(canary_events: npt.ArrayLike, canary_total: npt.ArrayLike,
                        stable_events: npt.ArrayLike, stable_total: npt.ArrayLike,
                        criteria: ProportionCriteria, deflation: npt.ArrayLike = 1.0) -> ProportionBatch:
    """The proportion test on arrays of cumulative counts (any broadcastable shapes).

    Each element is judged independently, as the operator would judge that set of counts.
    `deflation` (phi >= 1, the baseline's day-to-day overdispersion) divides the counts the relative test
    reads, and only those: maxRate caps the canary's own rate and minSamples counts real predictions.
    """
    x, n, y, m, phi = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in
                                            (canary_events, canary_total, stable_events, stable_total, deflation)))
    shape = x.shape
    nan = np.full(shape, np.nan)
    if criteria.problems():
        return ProportionBatch(np.full(shape, INCONCLUSIVE, np.int8), np.zeros(shape, bool),
                               nan, nan.copy(), nan.copy(), nan.copy(), nan.copy())
    with np.errstate(invalid="ignore"):
        valid = (np.isfinite(x) & np.isfinite(n) & np.isfinite(y) & np.isfinite(m)
                 & (x >= 0) & (y >= 0) & (x <= n) & (y <= m) & (n <= MAX_COUNT) & (m <= MAX_COUNT)
                 & np.isfinite(phi) & (phi >= 1))  # phi < 1 would inflate the evidence
    has_canary = valid & (n > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        split = n / np.where(m > 0, m, 1.0)
    relative_ok = has_canary & (m > 0) & (split >= SPLIT_LIMITS[0]) & (split <= SPLIT_LIMITS[1])

    log_e_rel, log_b_rel, share = nan.copy(), nan.copy(), nan.copy()
    rho0 = 1.0 + float(criteria.max_relative_increase)
    if relative_ok.any():
        keys, odds_q = quantize_odds(rho0 * n[relative_ok] / m[relative_ok])  # n / m: phi cancels
        x_rel = x[relative_ok] / phi[relative_ok]
        y_rel = y[relative_ok] / phi[relative_ok]
        e_part = np.empty(keys.shape)
        b_part = np.empty(keys.shape)
        for key in np.unique(keys):
            sel = keys == key
            odds = float(odds_q[sel][0])
            xs = x_rel[sel]
            e_part[sel] = log_evalue(xs, xs + y_rel[sel], odds, criteria.prior)
            b_part[sel] = log_boundary(odds, criteria.alpha_relative, criteria.prior)
        log_e_rel[relative_ok] = e_part
        log_b_rel[relative_ok] = b_part
        share[relative_ok] = odds_q / (1.0 + odds_q)

    log_e_max, log_b_max = nan.copy(), nan.copy()
    fail = relative_ok & (np.nan_to_num(log_e_rel, nan=-np.inf) >= log_b_rel)
    if criteria.max_rate is not None and has_canary.any():
        _, odds_q = quantize_odds(criteria.max_rate / (1.0 - criteria.max_rate))
        odds = float(odds_q)
        log_e_max[has_canary] = log_evalue(x[has_canary], n[has_canary], odds, MAX_RATE_PRIOR)
        log_b_max[has_canary] = log_boundary(odds, criteria.alpha_max_rate, MAX_RATE_PRIOR)
        fail |= has_canary & (np.nan_to_num(log_e_max, nan=-np.inf) >= log_b_max)

    enough = relative_ok & (n >= criteria.min_samples) & (m >= criteria.min_samples)
    outcome = np.where(fail, FAIL, np.where(enough, PASS, INCONCLUSIVE)).astype(np.int8)
    return ProportionBatch(outcome, valid, log_e_rel, log_b_rel, share, log_e_max, log_b_max)


def proportion_judge(name: str, canary_events: Any, canary_total: Any, stable_events: Any, stable_total: Any,
                     criteria: ProportionCriteria | None = None, *, queries: Mapping[str, str] | None = None,
                     window: Mapping[str, Any] | None = None) -> Verdict:
    """Canary's class rate against stable's over the same window, from cumulative counts."""
    criteria = criteria or ProportionCriteria()
    evidence: dict[str, Any] = _context(queries, window)
    evidence.update(_criteria_evidence(criteria))
    if problems := criteria.problems():
        return Verdict(name, Outcome.INCONCLUSIVE, "invalid configuration: " + "; ".join(problems), evidence)
    counts, complaint = _parse_counts({"canary events": canary_events, "canary total": canary_total,
                                       "stable events": stable_events, "stable total": stable_total})
    if complaint:
        evidence["input"] = {k: _jsonable_input(v) for k, v in
                             zip(("canary_events", "canary_total", "stable_events", "stable_total"),
                                 (canary_events, canary_total, stable_events, stable_total), strict=True)}
        return Verdict(name, Outcome.INCONCLUSIVE, complaint, evidence)
    x, n, y, m = counts
    return _proportion_verdict(name, x, n, y, m, criteria, evidence, reference="stable")


def baseline_judge(name: str, current_events: Any, current_total: Any,
                   history: Sequence[tuple[Any, Any]], criteria: ProportionCriteria | None = None, *,
                   min_history_days: int = MIN_BAKE_BASELINE_DAYS, queries: Mapping[str, str] | None = None,
                   window: Mapping[str, Any] | None = None, history_at: Sequence[str] | None = None) -> Verdict:
    """A class rate against its own history: `history` holds (events, total) for the same window on past days,
    `history_at` (optional) when each of those windows ended, for the evidence.

    The pooled history is the reference arm of the same sequential test as the proportion judge. Day-to-day
    variation beyond binomial noise (Pearson dispersion across the days, phi >= 1) deflates the relative
    test's counts by phi, the quasi-likelihood correction, so that an ordinary busy day is not mistaken for a
    regression. maxRate and minSamples read the raw counts: the history's spread says nothing about them.
    Left out first: days with less than their share of minSamples (they do not count towards min_history_days),
    and one day far out of line with the others (`_odd_day`), which would inflate phi and shift the pooled rate.
    """
    criteria = criteria or ProportionCriteria()
    evidence: dict[str, Any] = _context(queries, window)
    evidence.update(_criteria_evidence(criteria))
    if problems := criteria.problems():
        return Verdict(name, Outcome.INCONCLUSIVE, "invalid configuration: " + "; ".join(problems), evidence)
    current, complaint = _parse_counts({"current events": current_events, "current total": current_total})
    if complaint:
        return Verdict(name, Outcome.INCONCLUSIVE, complaint, evidence)
    days: list[tuple[float, float]] = []
    if isinstance(history, str | bytes) or not isinstance(history, Sequence):
        return Verdict(name, Outcome.INCONCLUSIVE, f"history must be a list of (events, total), got "
                       f"{type(history).__name__}", evidence)
    for i, day in enumerate(history):
        if isinstance(day, str | bytes) or not isinstance(day, Sequence) or len(day) != 2:
            return Verdict(name, Outcome.INCONCLUSIVE, f"history day {i} is not an (events, total) pair", evidence)
        parsed, complaint = _parse_counts({f"history day {i} events": day[0], f"history day {i} total": day[1]})
        if complaint:
            return Verdict(name, Outcome.INCONCLUSIVE, complaint, evidence)
        days.append((parsed[0], parsed[1]))
    # Every day, in step with history_at (window.historyAt): one without traffic is kept, marked.
    ends = list(history_at) if history_at is not None and len(history_at) == len(days) else None
    evidence["history"] = [{"events": _num(e), "total": _num(t), "rate": _ratio(e, t), "no_traffic": t <= 0,
                            **({"at": ends[i]} if ends else {})} for i, (e, t) in enumerate(days)]
    # A day counts when it saw its share of minSamples (the predictions that make a rate worth judging, spread
    # over the days required): a window of one prediction, or an increase() extrapolation of 0.4, says nothing
    # of the class's usual rate and must not make up the history. A day without traffic (e.g. before the model
    # existed) says nothing either.
    enough = max(1.0, float(criteria.min_samples) / max(1, min_history_days))
    for i, (_, t) in enumerate(days):
        if 0 < t < enough:
            evidence["history"][i]["left_out"] = "too little traffic"
    kept = [i for i, (_, t) in enumerate(days) if t >= enough]
    # The days in numbers, which stay whole when status keeps only the ends of a long history.
    evidence["history_days"] = {"read": len(days), "no_traffic": sum(1 for _, t in days if t <= 0),
                                "too_little_traffic": sum(1 for _, t in days if 0 < t < enough), "kept": len(kept)}
    if len(kept) < min_history_days:
        return Verdict(name, Outcome.INCONCLUSIVE, f"only {len(kept)} day(s) of history with traffic (at least "
                       f"{enough:.3g} predictions), need {min_history_days} to know the class's usual rate and its "
                       "day-to-day spread", evidence)
    # One unusual day would both inflate phi (a Pearson sum over a handful of days) and shift the pooled rate. Never
    # below min_history_days: what is left must still show the usual rate and its spread.
    odd = _odd_day([days[i] for i in kept]) if len(kept) > min_history_days else None
    if odd is not None:
        evidence["history"][kept[odd[0]]].update({"left_out": "outlier", "outlier_p_value": odd[1]})
        evidence["history_days"].update(kept=len(kept) - 1, outlier=dict(evidence["history"][kept[odd[0]]]))
        del kept[odd[0]]
    days = [days[i] for i in kept]
    y = sum(e for e, _ in days)
    m = sum(t for _, t in days)
    phi, phi_days = _dispersion(days)
    evidence["dispersion"] = phi
    evidence["dispersion_days"] = phi_days
    x, n = current
    if max(n, m) > MAX_COUNT:  # garbage-sized counts (the days' sum may even be infinite): not for the test
        evidence["raw"] = {"current": {"events": _jsonable_input(x), "total": _jsonable_input(n)},
                           "history": {"events": _jsonable_input(y), "total": _jsonable_input(m)}}
        return Verdict(name, Outcome.INCONCLUSIVE, f"the new version's total ({n:g}) or its history's ({m:g}) is "
                       f"past {MAX_COUNT:g}: not counts the test can read", evidence)
    # "canary"/"stable" (read by the report) and "raw" hold the real counts; "deflated" what the relative test reads.
    evidence["raw"] = {"current": {"events": _num(x), "total": _num(n)},
                       "history": {"events": _num(y), "total": _num(m)}}
    evidence["deflated"] = {"current": {"events": x / phi, "total": n / phi},
                            "history": {"events": y / phi, "total": m / phi}}
    reference = f"its {len(days)}-day history" + (" (an outlying day left out)" if odd is not None else "")
    verdict = _proportion_verdict(name, x, n, y, m, criteria, evidence, reference=reference, arm="new version",
                                  phi=phi)
    return _blind_spot(verdict, n, y, m, criteria, phi)


def _blind_spot(verdict: Verdict, n: float, y: float, m: float, criteria: ProportionCriteria, phi: float) -> Verdict:
    """The verdict with `detectable_ratio` in its evidence (_detectable_ratio; None: no rate of the new version
    would have failed), and a pass that could not have seen twice the allowed ratio saying so: a history whose
    days differ for a reason (weekends in a 7-day baseline) reads as a large phi, which can hide a 2x regression
    for a whole bake, and the pass alone would not show it."""
    if verdict.evidence.get("relative") is None or y <= 0:
        return verdict  # the relative test did not run, or a history without events gives no ratio
    rho0 = 1.0 + float(criteria.max_relative_increase)
    detectable = _detectable_ratio(n, y, m, criteria, phi)
    evidence = {**verdict.evidence, "detectable_ratio": detectable}
    if verdict.outcome is not Outcome.PASS or (detectable is not None and detectable <= 2 * rho0):
        return dataclasses.replace(verdict, evidence=evidence)
    below = f"increases below {detectable:.3g}x" if detectable is not None else "any increase"
    # Early in a bake, too few predictions hide as much without any spread: name what does.
    unspread = _detectable_ratio(n, y, m, criteria, 1.0) if phi > 1 else detectable
    few = unspread is None or unspread > 2 * rho0
    cause = {(True, False): "so few predictions hide", (False, True): "this history's day-to-day spread hides",
             (True, True): "so few predictions and this history's day-to-day spread hide"}[(few, phi > 1)]
    return dataclasses.replace(verdict, reason=f"{verdict.reason}; {cause} {below}", evidence=evidence)


def _detectable_ratio(n: float, y: float, m: float, criteria: ProportionCriteria, phi: float) -> float | None:
    """The smallest ratio of the new version's rate to the history's that, seen on these totals (n; y events of m),
    would have failed the relative test at its confidence with this phi; None when not even a new version whose
    every prediction is an event would have. A new version seen below it passes this run whatever its true rate.
    The same units as the evidence's `ratio` and `allowed_ratio`."""
    _, odds = quantize_odds((1.0 + float(criteria.max_relative_increase)) * n / m)  # as evaluate_proportion
    log_b = log_boundary(float(odds), criteria.alpha_relative, criteria.prior)

    def fails(x: float) -> bool:
        return float(log_evalue(x / phi, (x + y) / phi, float(odds), criteria.prior)) >= log_b

    if not fails(n):
        return None
    low, high = 0.0, n  # the e-value grows with the new version's events (the history's fixed): bisect on them
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (low, mid) if fails(mid) else (mid, high)
    ratio = (high / n) * (m / y)
    return ratio if math.isfinite(ratio) else None  # garbage-sized totals: no ratio to show


def threshold_judge(name: str, value: Any, *, minimum: Any = None, maximum: Any = None, query: str | None = None,
                    window: Mapping[str, Any] | None = None) -> Verdict:
    """One number against optional min/max bounds (inclusive), as Argo Rollouts and Flagger do."""
    evidence: dict[str, Any] = _context({"value": query} if query else None, window)
    evidence.update({"value": _jsonable_input(value), "min": _jsonable_input(minimum),
                     "max": _jsonable_input(maximum)})
    if minimum is None and maximum is None:
        return Verdict(name, Outcome.INCONCLUSIVE, "invalid configuration: neither min nor max is set", evidence)
    for label, bound in (("min", minimum), ("max", maximum)):
        if bound is not None and not _is_finite_number(bound):
            return Verdict(name, Outcome.INCONCLUSIVE, f"invalid configuration: {label} {bound!r} is not a "
                           "finite number", evidence)
    if minimum is not None and maximum is not None and minimum > maximum:
        return Verdict(name, Outcome.INCONCLUSIVE, f"invalid configuration: min {_exact(minimum)} is above max "
                       f"{_exact(maximum)}", evidence)
    if value is None:
        return Verdict(name, Outcome.INCONCLUSIVE, "no value: the query returned nothing", evidence)
    if not _is_number(value):
        return Verdict(name, Outcome.INCONCLUSIVE, f"value {value!r} is not a number", evidence)
    v = float(value)
    if math.isnan(v):
        return Verdict(name, Outcome.INCONCLUSIVE, "value is NaN (e.g. a rate over zero requests): nothing "
                       "to judge", evidence)
    if math.isinf(v):  # e.g. errors / 0 requests in PromQL: an artefact of no traffic, not a measurement
        return Verdict(name, Outcome.INCONCLUSIVE, f"value is {v:g}: not a finite measurement (a division "
                       "by zero traffic?)", evidence)
    if maximum is not None and v > maximum:
        return Verdict(name, Outcome.FAIL, f"{_exact(v)} is above the maximum {_exact(maximum)}", evidence)
    if minimum is not None and v < minimum:
        return Verdict(name, Outcome.FAIL, f"{_exact(v)} is below the minimum {_exact(minimum)}", evidence)
    return Verdict(name, Outcome.PASS, f"{_exact(v)} is within {_bounds_text(minimum, maximum)}", evidence)


# --- helpers ---------------------------------------------------------------------------------------------


def _proportion_verdict(name: str, x: float, n: float, y: float, m: float, criteria: ProportionCriteria,
                        evidence: dict[str, Any], reference: str, arm: str = "canary", phi: float = 1.0) -> Verdict:
    batch = evaluate_proportion(x, n, y, m, criteria, deflation=phi)
    outcome = OUTCOME_OF_CODE[int(batch.outcome)]
    rho0 = 1.0 + float(criteria.max_relative_increase)
    rate_c, rate_s = _ratio(x, n), _ratio(y, m)
    ratio = rate_c / rate_s if rate_c is not None and rate_s else None
    log_e, log_b = float(batch.log_e_relative), float(batch.log_b_relative)
    evidence.update({
        "test": TEST_NAME,
        "canary": {"events": _num(x), "total": _num(n), "rate": rate_c},
        "stable": {"events": _num(y), "total": _num(m), "rate": rate_s},
        "ratio": ratio,
        "allowed_ratio": rho0,
    })
    if math.isfinite(log_e):
        evidence["relative"] = {
            "statistic": "log e-value of the canary's share of events, mixture over rate ratios",
            "log_e_value": log_e, "e_value": _exp(log_e),
            "log_boundary": log_b, "boundary": _exp(log_b),
            # Ville: 1/E is an always-valid p-value (conservative next to the calibrated boundary).
            "p_value_bound": min(1.0, _exp(-log_e)),
            "null_canary_share_of_events": float(batch.null_share),
            "canary_share_of_events": _ratio(x, x + y),
            "alternatives_ratio": [rho0 * f for f in criteria.prior.factors],
            "alternatives_weight": list(criteria.prior.weights),
            "alpha": criteria.alpha_relative,
        }
    failed_max = False
    if criteria.max_rate is not None and math.isfinite(float(batch.log_e_max_rate)):
        le, lb = float(batch.log_e_max_rate), float(batch.log_b_max_rate)
        failed_max = le >= lb
        evidence["max_rate_test"] = {"max_rate": float(criteria.max_rate), "log_e_value": le, "e_value": _exp(le),
                                     "log_boundary": lb, "boundary": _exp(lb), "alpha": criteria.alpha_max_rate}
    evidence["statistic"] = log_e if math.isfinite(log_e) else None
    evidence["threshold"] = log_b if math.isfinite(log_b) else None

    canary_txt = f"{arm} {_pct(rate_c)} ({_count(x)}/{_count(n)})"
    ref_txt = f"{reference} {_pct(rate_s)} ({_count(y)}/{_count(m)})"
    # The relative test's counts were divided by phi: say so, or its e-value looks too small for the counts.
    spread = (f"; {reference} varies day to day beyond chance (phi={phi:.3g}), so the comparison with it is "
              f"widened accordingly" if phi > 1 else "")
    if outcome is Outcome.FAIL:
        parts = []
        if math.isfinite(log_e) and log_e >= log_b:
            parts.append(f"{canary_txt} is credibly above {rho0:g}x {ref_txt}: e-value {_exp(log_e):.3g} >= "
                         f"boundary {_exp(log_b):.3g} (confidence {criteria.confidence:g}{spread})")
        if failed_max:
            parts.append(f"{canary_txt} is credibly above maxRate {_pct(criteria.max_rate)}")
        return Verdict(name, outcome, "; ".join(parts), evidence)
    if m <= 0:
        why = f"no {reference} traffic to compare with ({canary_txt})"
    elif n <= 0:
        why = f"no {arm} traffic yet ({ref_txt})"
    elif not SPLIT_LIMITS[0] <= n / m <= SPLIT_LIMITS[1]:
        why = (f"the {arm}'s and {reference}'s totals differ by more than a factor of {SPLIT_LIMITS[1]:g} "
               f"({canary_txt}, {ref_txt}): not a traffic split the test can read")
    elif max(n, m) > MAX_COUNT:
        why = f"a total is past {MAX_COUNT:g} ({canary_txt}, {ref_txt}): not counts the test can read"
    elif outcome is Outcome.INCONCLUSIVE:
        why = (f"not enough samples yet: {canary_txt}, {ref_txt}; need {criteria.min_samples:g} on each "
               f"(no credible increase so far, e-value {_exp(log_e):.3g} < {_exp(log_b):.3g}{spread})")
    else:
        why = (f"no credible increase: {canary_txt} vs {ref_txt}, e-value {_exp(log_e):.3g} < boundary "
               f"{_exp(log_b):.3g} (allowed ratio {rho0:g}, confidence {criteria.confidence:g}{spread})")
    return Verdict(name, outcome, why, evidence)


def _dispersion(days: list[tuple[float, float]]) -> tuple[float, int]:
    """Pearson dispersion of daily rates around the pooled rate, floored at 1 (binomial noise only), and the
    number of days it was estimated from.

    Only days expecting at least 5 events and 5 non-events count (the usual rule for Pearson's chi-square): a
    near-empty day (1 of 1) adds about (1 - p) / p to the sum alone, and a phi that high would hide a real
    regression. The usable days still give phi from what is left; fewer than 2 leave it at 1. Too low errs
    towards failing (a rollback to the known previous version), too high towards missing a regression, so the
    unknown spread takes the low side; and at under 5 expected events a day binomial noise outweighs all but
    wild swings of the rate (phi ~ 1 + t * p * cv^2), so 1 is not far off.
    """
    e = np.array([d[0] for d in days], dtype=np.float64)
    t = np.array([d[1] for d in days], dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # garbage-sized totals: p comes out 0 and the floor applies
        p = e.sum() / t.sum() if len(t) else 0.0
        if not 0 < p < 1:
            return 1.0, 0  # no events (or nothing else): no spread to measure
        keep = t * min(p, 1 - p) >= 5
        e, t = e[keep], t[keep]
        p = e.sum() / t.sum() if len(t) else 0.0  # pooled over the days tested against it
    if len(t) < 2 or not 0 < p < 1:
        return 1.0, len(t)
    chi2 = float((((e - t * p) ** 2) / (t * p * (1 - p))).sum())
    return max(1.0, chi2 / (len(t) - 1)), len(t)


def _odd_day(days: list[tuple[float, float]]) -> tuple[int, float] | None:
    """The day that is an outlier against the others (its index, Bonferroni p-value), or None.

    Each day `_dispersion` would use is compared with the pooled rate of the others, in units of the others' own
    spread: its studentized deleted residual (e - t p)^2 / (phi t p (1 - p) (1 + t / m)), where p, m and phi are
    the others', is F(1, nu) in a history of ordinary days, nu being phi's degrees of freedom. The most extreme
    day is an outlier when its p-value times the days tested is below ODD_DAY_ALPHA (Bonferroni); with few days
    (nu small) only a day far out of line with agreeing others is. At most one day is left out.
    """
    e = np.array([d[0] for d in days], dtype=np.float64)
    t = np.array([d[1] for d in days], dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        p = e.sum() / t.sum() if len(t) else 0.0
    if not 0 < p < 1:
        return None
    usable = [i for i in range(len(days)) if t[i] * min(p, 1 - p) >= 5]  # as in _dispersion
    best: tuple[int, float] | None = None
    for j in usable:
        others = [i for i in usable if i != j]
        phi, phi_days = _dispersion([days[i] for i in others])
        if phi_days < 2:
            continue  # the others' spread is not measured: nothing to be out of line with
        with np.errstate(all="ignore"):
            p_o, m_o = e[others].sum() / t[others].sum(), t[others].sum()
            d = (e[j] - t[j] * p_o) ** 2 / (phi * t[j] * p_o * (1 - p_o) * (1 + t[j] / m_o))
        if math.isnan(d):
            continue
        p_value = min(1.0, len(usable) * _t_tail(math.sqrt(d), phi_days - 1))
        if p_value < ODD_DAY_ALPHA and (best is None or p_value < best[1]):
            best = (j, p_value)
    return best


def _t_tail(s: float, nu: int) -> float:
    """P(|T| > s) for Student's t with nu >= 1 degrees of freedom, exact (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(s / math.sqrt(nu))
    c2 = math.cos(theta) ** 2
    term = total = 1.0
    for j in range(1, nu // 2 if nu % 2 == 0 else (nu - 1) // 2):
        term *= c2 * ((2 * j - 1) / (2 * j) if nu % 2 == 0 else 2 * j / (2 * j + 1))
        total += term
    if nu % 2 == 0:
        inside = math.sin(theta) * total
    else:
        inside = 2 / math.pi * (theta + (math.sin(theta) * math.cos(theta) * total if nu > 1 else 0.0))
    return max(0.0, 1.0 - inside)


def _parse_counts(named: Mapping[str, Any]) -> tuple[tuple[float, ...], str | None]:
    """Counts as floats, or the reason they cannot be used. Pairs are (events, total) in order."""
    values = []
    for label, raw in named.items():
        if raw is None:
            return (), f"{label} is missing (the query returned nothing)"
        if not _is_number(raw):
            return (), f"{label} {raw!r} is not a number"
        v = float(raw)
        if math.isnan(v):
            return (), f"{label} is NaN: nothing to judge"
        if math.isinf(v):
            return (), f"{label} is infinite: not a count"
        if v < 0:
            return (), f"{label} is negative ({v:g}): counts cannot be; was a counter reset mishandled?"
        values.append(v)
    labels = list(named)
    for i in range(0, len(values) - 1, 2):
        if values[i] > values[i + 1]:
            return (), (f"{labels[i]} ({values[i]:g}) exceed {labels[i + 1]} ({values[i + 1]:g}): the two "
                        "queries do not count the same requests")
    return tuple(values), None


def _is_number(v: Any) -> bool:
    # bool is an int subclass but never a count; numpy scalars are numbers.
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool | np.bool_)


def _is_finite_number(v: Any) -> bool:
    return _is_number(v) and math.isfinite(float(v))


def _jsonable_input(v: Any) -> Any:
    if v is None or isinstance(v, str):
        return v
    if _is_number(v):
        f = float(v)
        return _num(f) if math.isfinite(f) else str(f)
    return repr(v)


def _context(queries: Mapping[str, str] | None, window: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if queries:
        out["queries"] = dict(queries)
    if window:
        out["window"] = dict(window)
    return out


def _criteria_evidence(c: ProportionCriteria) -> dict[str, Any]:
    return {"max_relative_increase": _jsonable_input(c.max_relative_increase),
            "max_rate": _jsonable_input(c.max_rate), "confidence": _jsonable_input(c.confidence),
            "min_samples": _jsonable_input(c.min_samples)}


def _num(v: float) -> int | float:
    return int(v) if float(v).is_integer() else float(v)


def _ratio(a: float, b: float) -> float | None:
    return float(a) / float(b) if b > 0 else None


def _exp(v: float) -> float:
    return math.exp(min(v, 700.0))  # stays a finite JSON number


def _pct(r: float | None) -> str:
    return "n/a" if r is None else f"{100 * r:.3g}%"


def _count(v: float) -> str:
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"


def _bounds_text(minimum: Any, maximum: Any) -> str:
    if minimum is not None and maximum is not None:
        return f"[{_exact(minimum)}, {_exact(maximum)}]"
    if minimum is not None:
        return f"the minimum {_exact(minimum)}"
    return f"the maximum {_exact(maximum)}"


def _exact(v: Any) -> str:
    """Short as :g, unless that rounds it: a value just past a bound must not read as the bound itself."""
    short = f"{float(v):g}"
    return short if float(short) == float(v) else repr(float(v))
