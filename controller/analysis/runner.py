"""Run every analysis judge once: render the queries, read Prometheus, hand the numbers to the judges.

Canary mode compares canary with stable over the same window. Bake mode compares the promoted version with
the same window at the same hour on each of the past `baseline` days, when the previous version served.

Predictions are told apart by the model version that made them, which the router writes into each serving
revision's logger URL: the candidate's own against every other version's (canary mode), or against the
previous version's and unlabelled traffic's (the bake's history: not a canary rejected on one of those days).
Without a candidate version the variant label selects instead.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from controller.analysis.judges import ProportionCriteria, baseline_judge, proportion_judge, threshold_judge
from controller.analysis.prometheus import Budget, Measurement, PrometheusProvider, QueryProblem
from controller.analysis.queries import (
    PREDICTIONS_SERIES,
    QueryScope,
    TemplateError,
    fewest_copies_query,
    prediction_series_queries,
    predictions_query,
    promql_duration,
    recent_samples_query,
    render,
    template_variables,
)
from controller.api.durations import format_duration
from controller.api.serialization import format_time
from controller.api.spec import MetricSpec, ProportionMetric
from controller.engine.actions import HISTORY_SPACING_SLACK as HISTORY_SPACING_SLACK
from controller.engine.actions import history_days_back, history_every_days
from controller.exporter.events import UNLABELLED_VERSION
from controller.verdict import Outcome, Verdict

STABLE, CANARY = "stable", "canary"
# Each metric's time for all its queries: the queue worker running it serves every rollout. It grows with the
# queries the metric sends (a bake's four per history day: 28 days at a normal speed must fit); past it, each
# query left is PrometheusTooSlow (an inconclusive verdict) instead of being sent.
METRIC_BASE_SECONDS = 30.0
SECONDS_PER_QUERY = 1.0
# And every metric's together, whatever their number and baselines: what one rollout may hold a worker for.
MEASUREMENT_MAX_SECONDS = 300.0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalysisRequest:
    namespace: str
    target: str  # the served model's name, as the exporter labels it (inference_service)
    mode: str  # "canary" | "bake"
    window_start: datetime
    now: datetime
    baseline_window: timedelta | None = None
    candidate_version: str | None = None  # the canary (or the promoted version, in bake mode)
    baseline_version: str | None = None  # bake mode: the version whose history is the reference
    promoted_at: datetime | None = None  # bake mode: when the candidate took all traffic (RunAnalysis.promoted_at)


def run_analysis(metrics: Sequence[MetricSpec], request: AnalysisRequest, provider: PrometheusProvider, *,
                 base_seconds: float = METRIC_BASE_SECONDS, per_query_seconds: float = SECONDS_PER_QUERY,
                 max_seconds: float = MEASUREMENT_MAX_SECONDS) -> tuple[Verdict, ...]:
    """Every metric's verdict, each metric's queries within its own budget: `base_seconds` and
    `per_query_seconds` for each query it sends, and no more than what is left of `max_seconds` for them all (the
    provider sends none past it: that metric is inconclusive)."""
    window = promql_duration((request.now - request.window_start).total_seconds())
    earlier = getattr(provider, "budget", None)  # a test's stand-in may have none
    verdicts = []
    ends = time.monotonic() + max_seconds
    try:
        for metric in metrics:
            own = base_seconds + per_query_seconds * _planned_queries(metric, request)
            provider.budget = Budget.starting(max(0.0, min(own, ends - time.monotonic())))
            verdicts.append(_judge(metric, request, window, provider))
    finally:
        provider.budget = earlier
    return tuple(verdicts)


def _planned_queries(metric: MetricSpec, request: AnalysisRequest) -> int:
    """The queries a metric sends when each answers with a number: its counts, each arm's freshness check and its
    two counts of series (_read_twice), a canary threshold's count of the canary's predictions and a bake's four per
    history day with traffic: its counts and its own two counts of series (_count_copies). Not planned, as for the
    arms: the follow-up for a missing series (it ends inconclusive anyway) and the two counts of copies of series
    read twice (DuplicateSeries), which the base leaves room for."""
    if metric.threshold is not None:
        return 5 if request.mode == CANARY else 4
    return 10 if request.mode == CANARY else 5 + 4 * _history_days(request)


def _history_days(request: AnalysisRequest) -> int:
    """How many past days a bake compares with."""
    return max(1, int((request.baseline_window or timedelta(days=7)) / timedelta(days=1)))


def _scope(request: AnalysisRequest, variant: str, window: str, candidate: bool) -> QueryScope:
    """`candidate`: the candidate's predictions; else every other version's (stable's)."""
    versions = (request.candidate_version,) if request.candidate_version else ()
    return QueryScope(namespace=request.namespace, target=request.target, variant=variant, window=window,
                      versions=versions, other_versions=not candidate)


def _history_scope(request: AnalysisRequest, window: str) -> QueryScope:
    """The baseline version's predictions, and those no revision labelled (served before the operator
    labelled any): a canary rejected on one of those days is not the reference."""
    if not request.baseline_version:
        return _scope(request, STABLE, window, candidate=False)
    return QueryScope(namespace=request.namespace, target=request.target, variant=STABLE, window=window,
                      versions=(request.baseline_version, UNLABELLED_VERSION))


def _window_evidence(request: AnalysisRequest, window: str,
                     freshness: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"start": request.window_start.isoformat(), "end": request.now.isoformat(), "range": window,
            "mode": request.mode, **(freshness or {})}


def _stale_arm(arms: Mapping[str, QueryScope], templates: Sequence[str], request: AnalysisRequest,
               provider: PrometheusProvider, queries: dict[str, str], *,
               rules_count: bool = False) -> tuple[dict[str, Any] | None, Measurement | None]:
    """The freshness evidence (the rule, how many of each arm's series were sampled within it, how many prediction
    series and label sets it has; None: not checked), and the first arm whose series stopped reporting or whose
    check failed, else the first whose series are read twice (_read_twice). Every arm is checked past one read
    twice: a proportion is judged on counts divided by the copies only when each arm's are known (_whole_copies).

    A count over the window keeps answering from the samples before its source went away: without this, a
    window seen only in its first minutes would be judged as if seen whole. The arm's series are known through
    {{selector}}, or the variant label for templates with {{variant}} alone (_checked_scope): templates with
    neither are not checked. Adds each check's query to `queries`."""
    scopes = {arm: _checked_scope(scope, templates) for arm, scope in arms.items()}
    checked = {arm: scope for arm, scope in scopes.items() if scope is not None}
    if len(checked) < len(scopes):
        return None, None
    sampled: dict[str, float] = {}
    copies: dict[str, dict[str, float]] = {}
    evidence = {"freshWithin": provider.fresh_within, "freshSeries": sampled, "predictionSeries": copies}
    duplicate = None
    for arm, scope in checked.items():
        queries[f"{arm}_freshness"] = query = recent_samples_query(scope, provider.fresh_seconds,
                                                                   rules_count=rules_count)
        fresh = provider.freshness(query, request.now)
        if not fresh.ok:
            return evidence, dataclasses.replace(fresh, detail=f"the {arm} arm: {fresh.detail}")
        sampled[arm] = fresh.value or 0.0
        twice = _read_twice(arm, scope, request, provider, queries, copies)
        if twice is not None and twice.problem is not QueryProblem.DUPLICATE:
            return evidence, twice
        duplicate = duplicate or twice
    return evidence, duplicate


def _checked_scope(scope: QueryScope, templates: Sequence[str]) -> QueryScope | None:
    """The scope an arm's freshness and copies are checked on: its own when a template uses {{selector}}; by the
    variant label alone (as _scope builds without a candidate version) when they use {{variant}} but not
    {{selector}}, since that is what they select; None when they use neither (the arm's series are not known)."""
    used = {name for template in templates for name in template_variables(template)}
    if "selector" in used:
        return scope
    if "variant" in used:
        return dataclasses.replace(scope, versions=(), other_versions=False)
    return None


def _read_twice(arm: str, scope: QueryScope, request: AnalysisRequest, provider: PrometheusProvider,
                queries: dict[str, str], copies: dict[str, dict[str, float]]) -> Measurement | None:
    """DuplicateSeries when the arm has more prediction series than exporter label sets (or the check's problem;
    None otherwise, and when it has no prediction series: its templates count another metric). The exporter
    scraped by two jobs, or an HA Prometheus pair read without deduplication, gives every count twice: sum() would
    pass minSamples on half the predictions and the test would be overconfident. Records the counts in `copies`
    (_count_copies)."""
    counts, problem = _count_copies(arm, scope, request.now, provider, queries)
    if problem is not None:
        return dataclasses.replace(problem, detail=f"the {arm} arm: {problem.detail}")
    if counts is None:
        return None
    copies[arm] = counts
    if counts["series"] <= counts["labelSets"]:
        return None
    return Measurement(queries[f"{arm}_series"], None, QueryProblem.DUPLICATE,
                       f"the {arm} arm: {counts['series']:g} series of {PREDICTIONS_SERIES} for "
                       f"{counts['labelSets']:g} of the exporter's label sets: its series are read more than once "
                       "(scraped by two jobs, or an HA Prometheus pair queried without deduplication), so every count "
                       "would be multiplied; scrape the exporter once, or query a deduplicating endpoint",
                       request.now)


def _count_copies(key: str, scope: QueryScope, at: datetime, provider: PrometheusProvider,
                  queries: dict[str, str]) -> tuple[dict[str, float] | None, Measurement | None]:
    """The scope's prediction series and exporter label sets at `at` (None: it has none), with the fewest copies of a
    label set when the series are a whole multiple of them and as many held through the scope's window ending at
    `at` (a failed read of those leaves it out: not divided); or the failed read of the counts. Adds each query to
    `queries` under `key`."""
    counts: dict[str, float] = {}
    for name, query in zip(("series", "labelSets"), prediction_series_queries(scope), strict=True):
        queries[f"{key}_{name}"] = query
        counted = provider.scalar(query, at, check_stale=False)
        if counted.problem is QueryProblem.EMPTY:
            return None, None
        if not counted.ok:
            return None, counted
        counts[name] = counted.value or 0.0
    if counts["series"] > counts["labelSets"] > 0 and counts["series"] % counts["labelSets"] == 0:
        # A whole multiple may still be uneven (one label set 3 times, another once): only the fewest tells.
        queries[f"{key}_fewestCopies"] = query = fewest_copies_query(scope)
        fewest = provider.scalar(query, at, check_stale=False)
        if fewest.ok and fewest.value is not None:
            # And as many through the whole window: a copy that started (or stopped) within it counts only part.
            queries[f"{key}_fewestCopiesInWindow"] = query = fewest_copies_query(
                scope, provider.scrape_interval.total_seconds())
            throughout = provider.scalar(query, at, check_stale=False)
            counts["fewestCopiesInWindow"] = throughout.value if throughout.ok else None
            if throughout.ok and throughout.value == fewest.value:
                counts["fewestCopies"] = fewest.value
    return counts, None


def _copies_of(counts: Mapping[str, Any]) -> int | None:
    """How many times each of an arm's label sets is read through its whole window (_count_copies): 1 when its
    series are no more than its label sets, k when every one is read exactly k times; None otherwise (uneven)."""
    if counts["series"] <= counts["labelSets"]:
        return 1
    fewest = counts.get("fewestCopies")
    return int(fewest) if fewest is not None and fewest * counts["labelSets"] == counts["series"] else None


def _judge(metric: MetricSpec, request: AnalysisRequest, window: str, provider: PrometheusProvider) -> Verdict:
    """One metric's verdict; whatever goes wrong is an inconclusive verdict, never an exception that would
    stop the reconcile (and be retried for ever)."""
    try:
        return _judge_metric(metric, request, window, provider)
    except TemplateError as exc:
        return Verdict(metric.name, Outcome.INCONCLUSIVE, f"query template refused: {exc}",
                       {"queries": _templates(metric), "window": _window_evidence(request, window)})
    except Exception as exc:  # the last resort; only the type is shown (a message may hold a URL)
        log.error("analysis of metric %s failed: %s", metric.name, type(exc).__name__)
        return Verdict(metric.name, Outcome.INCONCLUSIVE, f"the analysis could not run: {type(exc).__name__}",
                       {"window": _window_evidence(request, window)})


def _judge_metric(metric: MetricSpec, request: AnalysisRequest, window: str,
                  provider: PrometheusProvider) -> Verdict:
    if metric.threshold is not None:
        variant = CANARY if request.mode == CANARY else STABLE
        scope = _scope(request, variant, window, candidate=True)
        query = render(metric.threshold.query, scope)
        value = provider.scalar(query, request.now)
        if not value.ok:
            return _unmeasured(metric.name, value, {"value": query}, _window_evidence(request, window))
        queries = {"value": query}
        fresh, stale = _stale_arm({variant: scope}, [metric.threshold.query], request, provider, queries,
                                  rules_count=True)
        if stale:
            # DuplicateSeries too, whatever the value: the user's query may read the doubled scrape as well (a count
            # of errors doubled fails a max it meets), and how to undo that depends on the query (a ratio is not
            # doubled), so neither a pass nor a fail on it is trusted.
            return _unmeasured(metric.name, stale, queries, _window_evidence(request, window, fresh))
        verdict = threshold_judge(metric.name, value.value, minimum=metric.threshold.min,
                                  maximum=metric.threshold.max, query=query,
                                  window=_window_evidence(request, window, fresh))
        # Only a pass needs the canary to have served: a value beyond a bound fails whatever the traffic. The arm is
        # known through {{selector}} or {{variant}} (as for freshness, _checked_scope) and has prediction series
        # (else the query counts another metric, with no exporter to say whether it served, as _read_twice).
        if (verdict.outcome is Outcome.PASS and request.mode == CANARY and fresh is not None
                and variant in fresh["predictionSeries"]):
            checked = _checked_scope(scope, [metric.threshold.query]) or scope
            unserved = _no_canary_traffic(metric, value.value, checked, request, window, provider, queries, fresh)
            if unserved:
                return unserved
        return verdict
    assert metric.proportion is not None
    if request.mode == CANARY:
        verdict = _canary_proportion(metric.name, metric.proportion, request, window, provider)
    else:
        verdict = _bake_proportion(metric.name, metric.proportion, request, window, provider)
    scrape = provider.scrape_interval.total_seconds()
    if verdict.evidence.get("problem") == QueryProblem.EMPTY and _seconds(window) < 2 * scrape:
        # Not "nothing counted": a window this short may hold one sample of a series, and increase() needs two.
        detail = (f"the window ({window}) is shorter than two scrapes (every {scrape:g}s), too short for increase() "
                  "to count anything reliably; a step's window needs at least twice the scrape interval")
        return Verdict(metric.name, Outcome.INCONCLUSIVE, f"{QueryProblem.TOO_FEW_SCRAPES}: {detail}",
                       {**verdict.evidence, "problem": str(QueryProblem.TOO_FEW_SCRAPES), "detail": detail})
    return verdict


def _no_canary_traffic(metric: MetricSpec, value: float | None, scope: QueryScope, request: AnalysisRequest,
                       window: str, provider: PrometheusProvider, queries: dict[str, str],
                       fresh: Mapping[str, Any]) -> Verdict | None:
    """The inconclusive verdict of a passing threshold whose canary has prediction series but served nothing in
    the window (None when it served).
    The candidate's series stay exported from the gate's predictions, so they are fresh: without this, a count of
    its errors would read 0 and pass a canary no live request reached. As the proportion judge's "no canary traffic
    yet", measured here on the exporter's counter, since a threshold has no total of its own."""
    assert metric.threshold is not None
    queries["canary_predictions"] = query = predictions_query(scope)
    served = provider.scalar(query, request.now, check_stale=False)
    evidence = _window_evidence(request, window, fresh)
    if served.problem not in (None, QueryProblem.EMPTY):  # EMPTY: series with one sample in the window at most
        return _unmeasured(metric.name, served, queries, evidence)
    if (served.value or 0.0) > 0:
        return None
    scrape = provider.scrape_interval.total_seconds()
    short = (f"; the window ({window}) is shorter than two scrapes (every {scrape:g}s), in which increase() may count "
             "nothing" if _seconds(window) < 2 * scrape else "")
    return Verdict(metric.name, Outcome.INCONCLUSIVE,
                   f"no canary traffic in the window: the candidate's predictions ({PREDICTIONS_SERIES}) did not "
                   f"increase from {format_time(request.window_start)} to {format_time(request.now)}, so its value "
                   f"({'none' if value is None else f'{value:g}'}) says nothing about it{short}",
                   {"queries": queries, "value": value, "min": metric.threshold.min, "max": metric.threshold.max,
                    "canaryPredictions": served.value, "window": evidence})


def _seconds(window: str) -> float:
    """The seconds of a range promql_duration rendered."""
    return float(window.removesuffix("s"))


def _observed_share(window: str, provider: PrometheusProvider) -> float:
    """The share of `window` a counter's samples span on average: increase() extrapolates the change between the
    first and last sample in the window to its edges, and those lie half a scrape inside each edge on average (a
    60s window read every 30s: its counts doubled). The judges read counts as predictions seen (the test's
    evidence, minSamples), so a proportion's counts are scaled back by it. At least a half: a window of fewer
    than two scrapes is not counted at all."""
    return max(0.5, 1.0 - provider.scrape_interval.total_seconds() / _seconds(window))


def _canary_proportion(name: str, spec: ProportionMetric, request: AnalysisRequest, window: str,
                       provider: PrometheusProvider) -> Verdict:
    queries = {}
    values = {}
    for variant in (CANARY, STABLE):
        for part, template in (("events", spec.events), ("total", spec.total)):
            key = f"{variant}_{part}"
            queries[key] = render(template, _scope(request, variant, window, candidate=variant == CANARY))
    if (queries["canary_events"], queries["canary_total"]) == (queries["stable_events"], queries["stable_total"]):
        # The canary would be compared with itself and could never fail (the spec parser refuses this too).
        return Verdict(name, Outcome.INCONCLUSIVE, "the canary and stable queries are identical: the events and "
                       "total templates must use {{selector}} to tell them apart",
                       {"queries": queries, "window": _window_evidence(request, window)})
    for key, query in queries.items():
        values[key] = provider.scalar(query, request.now)
        if not values[key].ok:  # one unanswered query already makes the verdict: do not wait on the rest
            return _unmeasured(name, values[key], queries, _window_evidence(request, window))
    arms = {variant: _scope(request, variant, window, candidate=variant == CANARY) for variant in (CANARY, STABLE)}
    fresh, stale = _stale_arm(arms, [spec.events, spec.total], request, provider, queries)
    copies = _whole_copies(fresh, stale)
    if stale and not copies:
        return _unmeasured(name, stale, queries, _window_evidence(request, window, fresh))
    share = _observed_share(window, provider)
    counts = [values[key].value * share / (copies or 1)
              for key in ("canary_events", "canary_total", "stable_events", "stable_total")]
    evidence = _window_evidence(request, window, {**(fresh or {}), "countsScaledBy": share,
                                                  **_divided_evidence(copies)})
    verdict = proportion_judge(name, *counts, ProportionCriteria.from_spec(spec), queries=queries, window=evidence)
    return _failure_stands(verdict, stale, copies, queries, evidence)


def _bake_proportion(name: str, spec: ProportionMetric, request: AnalysisRequest, window: str,
                     provider: PrometheusProvider) -> Verdict:
    now, before = _scope(request, STABLE, window, candidate=True), _history_scope(request, window)
    queries = {"current_events": render(spec.events, now), "current_total": render(spec.total, now),
               "history_events": render(spec.events, before), "history_total": render(spec.total, before)}
    current = {key: provider.scalar(queries[key], request.now) for key in ("current_events", "current_total")}
    if problem := _first_problem(current):
        return _unmeasured(name, problem, queries, _window_evidence(request, window))
    fresh, stale = _stale_arm({"current": now}, [spec.events, spec.total], request, provider, queries)
    copies = _whole_copies(fresh, stale)
    if stale and not copies:
        return _unmeasured(name, stale, queries, _window_evidence(request, window, fresh))
    # Past windows as long as the bake's, a day apart, would overlap each other and the nearest would reach past
    # promotion into the bake's own: they move by as many whole days as the window spans, give or take the slack,
    # and all of them back past the promotion when the window starts after it.
    span = request.now - request.window_start
    since_promotion = request.now - request.promoted_at if request.promoted_at is not None else None
    history_at = [request.now - timedelta(days=back)
                  for back in history_days_back(span, _history_days(request), since_promotion)]
    share = _observed_share(window, provider)  # every day's window is as long as the bake's
    scale = share / (copies or 1)
    evidence = {**_window_evidence(request, window, fresh), "countsScaledBy": share, **_divided_evidence(copies),
                "historyEveryDays": history_every_days(span), "historyAt": [at.isoformat() for at in history_at],
                "historyFrom": (history_at[-1] - span).isoformat()}
    # Each past day is divided by its own copies (a day read twice would otherwise weigh twice, and its doubled
    # counts inflate phi, which deflates the new version's evidence as much), counted as now's when now's are.
    checked = fresh is not None and "current" in fresh["predictionSeries"]
    # A past day's copies are counted while the previous version still served: a window ending after the
    # promotion (a late run, by up to the slack) finds no series once its exporter restarted or dropped it.
    promotion = request.promoted_at or request.window_start
    history_scope = _checked_scope(before, [spec.events, spec.total]) or before
    history: list[tuple[float, float]] = []
    divisors: list[int | None] = []
    left_out: dict[int, dict[str, Any]] = {}  # each day left out for its copies: why, and its undivided counts
    for i, at in enumerate(history_at):
        # A day with no series then had no traffic for this model: a gap, not a stale source.
        events = provider.scalar(queries["history_events"], at, check_stale=False)
        total = provider.scalar(queries["history_total"], at, check_stale=False)
        if broken := next((m for m in (events, total) if m.problem not in (None, QueryProblem.EMPTY)), None):
            return _unmeasured(name, broken, queries, evidence)
        divisor: int | None = 1
        if checked and (total.value or 0.0) > 0:
            counts, problem = _count_copies("history", history_scope, min(at, promotion), provider, queries)
            if problem is not None:
                detail = f"the history day ending {format_time(at)}: {problem.detail}"
                return _unmeasured(name, dataclasses.replace(problem, detail=detail), queries, evidence)
            divisor = _copies_of(counts) if counts is not None else None
            if divisor is None:
                left_out[i] = {"left_out": _uneven_day(counts), "events": (events.value or 0.0) * share,
                               "total": (total.value or 0.0) * share}
        divisors.append(divisor)
        # A day left out is passed on without traffic, so that it neither counts nor makes up the history.
        day_scale = share / divisor if divisor else 0.0
        history.append(((events.value or 0.0) * day_scale, (total.value or 0.0) * day_scale))
    evidence["historyCountsDividedBy"] = divisors
    verdict = baseline_judge(name, current["current_events"].value * scale, current["current_total"].value * scale,
                             history, ProportionCriteria.from_spec(spec), queries=queries, window=evidence,
                             history_at=evidence["historyAt"])
    verdict = _history_copies(verdict, divisors, left_out)
    if verdict.outcome is Outcome.INCONCLUSIVE and "day(s) of history with traffic" in verdict.reason:
        reach = _history_reach(request, history_at[-1] - span)
        uneven = (f"; {len(left_out)} day(s) left out for their copies (history_days.uneven_copies)"
                  if left_out else "")
        verdict = dataclasses.replace(verdict, reason=f"{verdict.reason}{uneven}; {reach}")
    stands = _failure_stands(verdict, stale, copies, queries, evidence)
    if stands is not verdict:  # the DuplicateSeries kept: its evidence keeps the days it was judged on
        stands = dataclasses.replace(stands, evidence={
            **stands.evidence, **{key: verdict.evidence[key] for key in ("history", "history_days")
                                  if key in verdict.evidence}})
    return stands


def _uneven_day(counts: Mapping[str, Any] | None) -> str:
    """Why a past day's copies are not known whole (_count_copies' counts, None: no prediction series at its end)."""
    if counts is None:
        return (f"copies unknown: no series of {PREDICTIONS_SERIES} at the window's end (or the promotion, if "
                "earlier), so how many times each prediction was read is not known")
    through = counts.get("fewestCopiesInWindow")
    return (f"uneven copies: {counts['series']:g} prediction series for {counts['labelSets']:g} label sets at the "
            f"window's end" + ("" if through is None else f", {through:g} of some label set through the whole window")
            + ": read more than once for some predictions only, its counts cannot be divided")


def _history_copies(verdict: Verdict, divisors: Sequence[int | None],
                    left_out: Mapping[int, Mapping[str, Any]]) -> Verdict:
    """The baseline judge's verdict with each past day's divisor in its history, and the days left out for their
    copies (passed on without traffic) marked as such, with their undivided counts, not as days without traffic."""
    days = verdict.evidence.get("history")
    if not isinstance(days, list) or len(days) != len(divisors):
        return verdict
    days = [{**day, "countsDividedBy": divisors[i]} for i, day in enumerate(days)]
    for i, day in left_out.items():
        days[i].update(day, no_traffic=False, rate=day["events"] / day["total"])
    summary = dict(verdict.evidence.get("history_days") or {})
    if summary and left_out:
        summary.update(no_traffic=summary["no_traffic"] - len(left_out), uneven_copies=len(left_out))
    return dataclasses.replace(verdict, evidence={**verdict.evidence, "history": days,
                                                  **({"history_days": summary} if summary else {})})


def _whole_copies(fresh: Mapping[str, Any] | None, duplicate: Measurement | None) -> int | None:
    """k when the arms' series are read twice (DuplicateSeries) and every checked arm holds exactly k >= 2 copies of
    each of its label sets (_read_twice); None otherwise (uneven copies, an arm read once: not divided).
    Every copy held through the whole window (fewestCopiesInWindow) counts every prediction, so counts divided by k
    are the counts: a failure on them stands. A copy that started mid-window would weight the window's end twice."""
    if duplicate is None or duplicate.problem is not QueryProblem.DUPLICATE:
        return None
    found = set()
    for counts in ((fresh or {}).get("predictionSeries") or {}).values():
        if (copies := _copies_of(counts)) is None:
            return None
        found.add(copies)
    return found.pop() if len(found) == 1 and min(found) >= 2 else None


def _divided_evidence(copies: int | None) -> dict[str, Any]:
    if not copies:
        return {}
    return {"countsDividedBy": copies,
            "dividedBecause": f"every exporter label set's prediction series is read {copies} times through the whole "
                              "window (DuplicateSeries): only a failure on the divided counts is kept"}


def _failure_stands(verdict: Verdict, duplicate: Measurement | None, copies: int | None, queries: dict[str, str],
                    window: dict[str, Any]) -> Verdict:
    """A verdict on counts divided by `copies` (_whole_copies): its failure stands, saying so; anything else is the
    DuplicateSeries it was (the divided counts rest on the copies being whole: only a failure on them is kept)."""
    if not copies or duplicate is None:
        return verdict
    if verdict.outcome is Outcome.FAIL:
        return dataclasses.replace(verdict, reason=f"{verdict.reason} (on counts divided by {copies}: every "
                                   f"prediction series is read {copies} times, DuplicateSeries)")
    detail = f"{duplicate.detail}; on the counts divided by {copies} it did not fail ({verdict.reason})"
    return _unmeasured(verdict.name, dataclasses.replace(duplicate, detail=detail), queries, window)


def _history_reach(request: AnalysisRequest, earliest: datetime) -> str:
    """How far back a bake's history reached and why days there may have had no traffic: a bake of days reads
    about `baseline` times as many days back (its windows are as long as it, as many days apart)."""
    back = _hours(request.now - earliest)
    before = ""
    if request.promoted_at is not None and earliest < request.promoted_at:
        before = f"{_hours(request.promoted_at - earliest)} before the promotion, "
    version = f"version {request.baseline_version}" if request.baseline_version else "the previous version"
    return (f"its history reached back {before}{back} before this run (to {format_time(earliest)}): Prometheus "
            f"may not keep data that long (its retention, 15d by default), or {version} had not served that long")


def _hours(duration: timedelta) -> str:
    """A long duration to the nearest hour, e.g. "21d" or "2d23h"."""
    return format_duration(timedelta(hours=round(duration / timedelta(hours=1))))


def _templates(metric: MetricSpec) -> dict[str, str]:
    """The metric's templates, unrendered: what a verdict can show when rendering them failed."""
    if metric.threshold is not None:
        return {"value": metric.threshold.query}
    return {"events": metric.proportion.events, "total": metric.proportion.total} if metric.proportion else {}


def _first_problem(values: dict[str, Measurement]) -> Measurement | None:
    return next((m for m in values.values() if not m.ok), None)


def _unmeasured(name: str, measurement: Measurement, queries: dict[str, str], window: dict[str, Any]) -> Verdict:
    """Missing evidence is never success: every query problem is an inconclusive verdict that says why."""
    return Verdict(name, Outcome.INCONCLUSIVE, f"{measurement.problem}: {measurement.detail}",
                   {"queries": queries, "failedQuery": measurement.query, "problem": str(measurement.problem),
                    "detail": measurement.detail, "window": window})
