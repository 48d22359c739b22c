"""Thresholds -> verdicts. Every check reports the numbers that decided it; nothing passes by default.

Checks, in the order the engine reads them (the first verdict with the combined outcome is quoted):
    dataset.sha256      FAIL when the data differ from the pinned hash (both hashes in the message); the
                        engine rolls back without rejecting the candidate (verdict.DATASET_INTEGRITY)
    dataset.source      INCONCLUSIVE when policy refuses the source (host not allow-listed, ...)
    dataset             INCONCLUSIVE when the file is unreadable, empty, or has unusable samples
    candidate.responses FAIL when the candidate answered some samples with garbage; INCONCLUSIVE when
                        it was unreachable for some (timeouts, 503, or a status that says the model was not
                        reached: 3xx, 401, 403, 404, ...): no evidence either way, or when stable's answers are
                        unusable for the same reasons (a setup problem, e.g. classes that do not match the outputs)
    stable.responses    INCONCLUSIVE when stable could not answer: the comparison lacks evidence
    minAccuracy                           on the candidate's answers
    maxAccuracyDrop, maxDisagreement      candidate vs stable on the samples both answered
    <class>.maxFalsePositiveRate / .minRecall / .minPrecision   on the candidate's answers
                        minAccuracy and these: a failure stable's answers share is INCONCLUSIVE, the same rule as
                        for unusable answers (a setup problem, not the candidate's), when stable's answers fit
                        another class order (scores and indexes are read in the dataset's class order: a list in
                        another order than the models' outputs fails every model alike) or the candidate is not
                        credibly worse than stable (a limit neither reaches); still FAIL when it is. In another
                        order, every check is judged again with both models' answers read in it, and what fails
                        there fails (a worse model, a backdoored slice): the wrong order excuses nothing else
    slice <tag>.minAccuracy / .maxAccuracyDrop / .maxDisagreement   the same per golden slice (a trigger hides
                        in one; minAccuracy with or without a stable), as a test: FAIL only when the slice's count
                        (errors, accuracy lost, flips) is credibly beyond the limit (binomial tail below SLICE_ALPHA
                        shared by all slice checks), so one error in a small slice is chance, and a slice too small
                        to judge still fails when (nearly) every sample is wrong. A partial trigger (a few flips in
                        a mid-sized slice) can pass beside many slices: the price of a clean retrain not failing on
                        the luck of one of them
    slices              INCONCLUSIVE when samples carry tags beyond the slices tracked and any slice check applies:
                        those were not judged
    thresholds          INCONCLUSIVE when no threshold could be applied at all
An undefined metric (e.g. recall of a class with no samples) is INCONCLUSIVE, never 0 or 1, and so is a pass on
fewer samples than JudgeSettings.min_samples (a 3-sample golden set proves nothing of a 1% limit), and a failure on
so few unless it is credible (the same binomial test as slices, SLICE_ALPHA shared by the whole-dataset checks).
Samples the candidate left unanswered (a 503 batch, a timeout) never fail a check: it fails only if it fails even
with every one of them in the candidate's favour (the candidate right, or agreeing with stable), and is INCONCLUSIVE
otherwise, naming how many (a golden set sorted by class loses whole classes with a few batches). Only the
candidate's own are credited: a sample only stable left unanswered just leaves its pair out of the comparisons, and
one the candidate answered is judged as answered.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from controller.api.spec import ClassThresholds, GoldenThresholds
from controller.gate.formats import DatasetProblems
from controller.gate.metrics import PairedCounts, accuracy, binomial_tail, class_counts, flip_list
from controller.verdict import Outcome, Verdict

_EPSILON = 1e-12  # thresholds are decimal fractions; do not fail 10/1000 against 0.01 on float noise
# Chance of failing a model whose every slice is at its limit, shared by all slice checks (dozens of slices
# judged one by one would otherwise fail a good model on the luck of one small slice).
SLICE_ALPHA = 0.01
NAMED_CLASSES = 20  # a reason names at most this many classes: verdicts are kept in status, which lives in etcd
# Longest class name or slice tag the gate takes: status keys maps by them (perClass, slices, thresholds.classes),
# and the API server reads a server-side apply as YAML, whose keys stop at 1024 characters: one longer key makes
# every status write a 400. Not truncated: two names cut to the same prefix would merge their counts.
MAX_NAME_CHARS = 253
# What a failure stable shares points to (candidate.responses, and the limits _failed_alike reads).
CLASS_ORDER_RULE = ("the dataset's class list must be the models' output order, the exporter's --class-names "
                    "(scores and indexes are read by position)")
SETUP_CAUSES = f"{CLASS_ORDER_RULE}; the models' output classes or protocol"
_CLASS_LIMITS = frozenset({"minRecall", "minPrecision", "maxFalsePositiveRate"})
# A failure excused by a dataset in the wrong order: only once _fitted_failures found none in the right one.
_NOT_WORSE_IN_ORDER = "a setup problem; read in the order stable's answers fit, the candidate is not credibly worse"


def clipped(name: str) -> str:
    """A name too long to show whole: its start and its length."""
    return name if len(name) <= 40 else f"{name[:40]}... ({len(name)} characters)"


@dataclass
class ResponseTally:
    """What one endpoint did with the samples sent to it."""

    batches: int = 0
    samples: int = 0
    answered: int = 0
    failed_batches: Counter[str] = field(default_factory=Counter)  # batch-level reason -> batches
    unanswered: Counter[str] = field(default_factory=Counter)  # reason -> samples without a usable prediction
    unavailable_samples: int = 0  # of the unanswered: the server was unreachable, not wrong
    unavailable_reasons: set[str] = field(default_factory=set)  # the reasons those were counted under
    # Unusable where the other endpoint (stable, for the candidate) answered the same sample usably.
    unusable_where_other_answered: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def unanswered_total(self) -> int:
        return self.samples - self.answered

    @property
    def garbage_samples(self) -> int:
        return self.unanswered_total - self.unavailable_samples

    @property
    def garbage_reasons(self) -> set[str]:
        return {reason for reason, count in self.unanswered.items() if count and reason not in self.unavailable_reasons}

    def to_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "samples": self.samples, "answered": self.answered,
                "unanswered": self.unanswered_total, "unavailable": self.unavailable_samples,
                "invalid": self.garbage_samples, "unansweredByReason": dict(self.unanswered.most_common()),
                "failedBatchesByReason": dict(self.failed_batches.most_common()), "examples": self.examples}


@dataclass
class GateTally:
    """Everything the gate counted; the judge reads only this."""

    classes: tuple[str, ...]
    overall: PairedCounts
    slices: dict[str, PairedCounts]
    candidate: ResponseTally
    stable: ResponseTally | None
    problems: DatasetProblems
    records: int
    untracked_slices: int = 0  # tags beyond the tracking limit: counted, not judged
    long_tag_samples: int = 0  # samples carrying a tag over MAX_NAME_CHARS: not judged
    long_tag_example: str = ""  # the first such tag, clipped
    aborted: str | None = None  # why evaluation stopped early (timeout, endpoint down)


@dataclass(frozen=True)
class JudgeSettings:
    max_unusable_sample_share: float = 0.0  # dataset samples that may be unusable before it is inconclusive
    max_unanswered_share: float = 0.0  # samples an endpoint may leave unanswered before the verdict turns
    slice_checks: bool = True
    min_slice_samples: int = 20  # slices smaller than this are reported, not judged
    min_samples: int = 20  # a whole-dataset check passes only on this many samples (its denominator) or more


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def judge(thresholds: GoldenThresholds, tally: GateTally, settings: JudgeSettings,
          dataset_sha256: str) -> list[Verdict]:
    verdicts = [_dataset_verdict(tally, settings, dataset_sha256)]
    if tally.long_tag_samples:
        verdicts.append(Verdict(
            "dataset.slices", Outcome.INCONCLUSIVE,
            f"{tally.long_tag_samples} samples carry a slice tag longer than {MAX_NAME_CHARS} characters (the "
            f"first: {tally.long_tag_example!r}), so those slices were not judged: shorten the tags (status keys "
            "slices by tag, and the API server refuses keys that long)",
            {"datasetSha256": dataset_sha256, "samples": tally.long_tag_samples, "maxTagCharacters": MAX_NAME_CHARS}))
    # Unusable the same way as stable's answers: the setup (dataset classes, output classes, protocol), not the model.
    setup = tally.stable is not None and _unusable_alike(tally.candidate, tally.stable, settings)
    verdicts.append(_responses_verdict("candidate", tally.candidate, settings, tally.aborted, garbage_fails=not setup,
                                       note=f"; stable's answers are unusable the same way: a setup problem "
                                       f"({SETUP_CAUSES}), not the candidate's" if setup else ""))
    if tally.stable is not None:
        verdicts.append(_responses_verdict("stable", tally.stable, settings, tally.aborted, garbage_fails=False))
    if tally.overall.samples == 0 or tally.candidate.answered == 0:
        return verdicts  # nothing to measure: the verdicts above already say why
    if tally.aborted:
        # The samples read so far need not represent the dataset (it may be sorted by class), so metrics on
        # them are reported but decide nothing; the responses verdict already says why it stopped.
        return verdicts
    # The same rule for usable answers: a limit stable fails too does not tell the candidate from it.
    order = _output_order(tally.overall.stable, tally.classes) if tally.stable is not None else None
    checks = [_failed_alike(check, tally, order) for check in _threshold_verdicts(thresholds, tally, settings,
                                                                                  dataset_sha256)]
    if order is not None:
        checks = _fitted_failures(checks, thresholds, tally, settings, dataset_sha256, order)
    if not checks:
        why = ("the thresholds set compare against stable, and there is no stable version"
               if _any_threshold(thresholds) else "no threshold is set (spec.goldenDataset.thresholds sets none)")
        checks = [Verdict("thresholds", Outcome.INCONCLUSIVE, f"nothing judged the candidate: {why}",
                          {"datasetSha256": dataset_sha256})]
    return verdicts + checks


def _dataset_verdict(tally: GateTally, settings: JudgeSettings, dataset_sha256: str) -> Verdict:
    problems = tally.problems
    usable = tally.overall.samples
    evidence = {"datasetSha256": dataset_sha256, "records": tally.records, "usable": usable,
                "unusable": problems.total, "unusableByReason": dict(problems.counts.most_common()),
                "examples": problems.examples[:5]}
    if usable == 0:
        detail = f": {problems.summary()}" if problems.total else ""
        return Verdict("dataset", Outcome.INCONCLUSIVE,
                       f"no usable samples in {tally.records} records{detail}", evidence)
    if problems.total > settings.max_unusable_sample_share * tally.records + _EPSILON:
        first = f"; first: {problems.examples[0]}" if problems.examples else ""
        return Verdict("dataset", Outcome.INCONCLUSIVE,
                       f"{problems.total} of {tally.records} samples unusable ({problems.summary()}){first}",
                       evidence)
    return Verdict("dataset", Outcome.PASS, f"{usable} usable samples, {len(tally.classes)} classes", evidence)


def _unusable_alike(candidate: ResponseTally, stable: ResponseTally, settings: JudgeSettings) -> bool:
    """Both answered more than the allowed share unusably, stable for every reason the candidate did, and the
    candidate never (beyond the allowed share) on a sample stable answered usably: the rows a server never reached
    excuse nothing else, so a 503 blip on either side does not turn a shared setup problem into the candidate's
    fault, nor hide the candidate's own garbage. A candidate more broken than stable is the candidate's."""
    allowed = settings.max_unanswered_share * candidate.samples + _EPSILON
    return (stable.garbage_samples > settings.max_unanswered_share * stable.samples + _EPSILON
            and bool(candidate.garbage_reasons) and candidate.garbage_reasons <= stable.garbage_reasons
            and candidate.unusable_where_other_answered <= allowed)


@dataclass(frozen=True)
class FittedOrder:
    """The class order stable's answers fit better than the dataset's: output position i read as class names[i]."""

    names: tuple[str, ...]
    indexes: np.ndarray  # the same as the dataset's class indexes
    stable_accuracy: float  # stable's accuracy read in it

    def describe(self, classes: Sequence[str]) -> str:
        return (f"the outputs in the order [{_some(self.names, 5)}] (stable's accuracy {pct(self.stable_accuracy)}), "
                f"not the dataset's [{_some(classes, 5)}]")


def _failed_alike(verdict: Verdict, tally: GateTally, order: FittedOrder | None) -> Verdict:
    """A whole-dataset limit on the candidate's own answers (minAccuracy, a class's minRecall, minPrecision,
    maxFalsePositiveRate) that stable's answers fail too: INCONCLUSIVE, not the candidate's failure, when stable's
    answers fit another class order (`order`, with stable's accuracy in it: a dataset whose class list is not the
    models' output order, e.g. sorted as np.unique or LabelEncoder write it, reads every model's scores into the
    wrong classes and fails a clean candidate and the version in production alike), or when the candidate is not
    credibly worse than stable (a limit neither reaches). A candidate credibly worse than stable still fails, as in
    _unusable_alike. maxAccuracyDrop (whole and per slice) read in another order than stable's answers fit is
    inconclusive too. Not the slice floors: theirs is already stable's accuracy where stable's is lower. With an
    `order`, these are inconclusive only as far as _fitted_failures finds the candidate not worse in that order."""
    if verdict.outcome is not Outcome.FAIL or tally.stable is None:
        return verdict
    if order is not None and _kind(verdict) == "maxAccuracyDrop":
        # Accuracies read in a wrong order say nothing of which model is better (maxDisagreement still does).
        return Verdict(verdict.name, Outcome.INCONCLUSIVE,
                       f"{verdict.reason}; stable's answers fit the labels with {order.describe(tally.classes)}: "
                       f"{_NOT_WORSE_IN_ORDER}: {CLASS_ORDER_RULE}",
                       {**verdict.evidence, "fittedOutputOrder": list(order.names[:NAMED_CLASSES])})
    if verdict.name == "minAccuracy":
        stable_value = accuracy(tally.overall.stable)
    elif "class" in verdict.evidence and _kind(verdict) in _CLASS_LIMITS:
        stable_value = verdict.evidence["stableValue"]
    else:
        return verdict
    upper = _kind(verdict).startswith("max")
    if stable_value is None or not _beyond(stable_value, float(verdict.evidence["limit"]), upper):
        return verdict
    evidence = {**verdict.evidence, "stableValue": stable_value, "stableFailsToo": True}
    reason = f"{verdict.reason}; stable fails it too ({pct(stable_value)})"
    if order is not None:
        return Verdict(verdict.name, Outcome.INCONCLUSIVE,
                       f"{reason}: {_NOT_WORSE_IN_ORDER}. Stable's answers fit the labels with "
                       f"{order.describe(tally.classes)}: {CLASS_ORDER_RULE}; for answers given as class "
                       "names, the models' own list of names",
                       {**evidence, "fittedOutputOrder": list(order.names[:NAMED_CLASSES]),
                        "fittedStableAccuracy": order.stable_accuracy})
    count, trials, _ = _counted(verdict)
    best = evidence.get("bestCase")
    if best:  # worse even with its unanswered samples in its favour
        count, trials = best["count"], best["samples"]
    p_value = binomial_tail(count, trials, stable_value if upper else 1.0 - stable_value)
    evidence["pValueAgainstStable"] = p_value
    if p_value < SLICE_ALPHA:
        return Verdict(verdict.name, Outcome.FAIL, f"{reason}, and the candidate is credibly worse (p={p_value:.1e} "
                       f"< {SLICE_ALPHA:.1e})", evidence)
    return Verdict(verdict.name, Outcome.INCONCLUSIVE,
                   f"{reason} and the candidate is not credibly worse (p={p_value:.1e}): likely a setup problem "
                   f"({SETUP_CAUSES}), or a limit stable does not reach either; not the candidate's failure",
                   evidence)


def _output_order(confusion: np.ndarray, classes: tuple[str, ...]) -> FittedOrder | None:
    """The class order stable's answers fit better than the dataset's, and stable's accuracy read in it: each output
    position read as the class most of its answers are labelled (confusion is [true, predicted]). None when no
    other order fits better, or none is an order (a position never predicted, or two positions mostly one class)."""
    if not confusion.sum(axis=0).all():
        return None
    fitted = confusion.argmax(axis=0)
    correct = int(confusion[fitted, np.arange(len(classes))].sum())
    if len(np.unique(fitted)) != len(classes) or correct <= int(np.trace(confusion)):
        return None
    return FittedOrder(tuple(classes[int(index)] for index in fitted), fitted, correct / int(confusion.sum()))


def _reread(counts: PairedCounts, order: FittedOrder) -> PairedCounts:
    """The counts with every answer read in `order` (output position i as class order.indexes[i]): the columns of
    the confusion matrices, both sides of the flips. True classes, and so every sample's scope, stay."""
    moved = PairedCounts(counts.class_count, counts.samples)
    moved.labels = counts.labels.copy()
    for name in ("candidate", "stable", "paired_candidate", "paired_stable"):
        getattr(moved, name)[:, order.indexes] = getattr(counts, name)
    moved.flips[np.ix_(order.indexes, order.indexes)] = counts.flips
    return moved


def _fitted_failures(checks: list[Verdict], thresholds: GoldenThresholds, tally: GateTally, settings: JudgeSettings,
                     dataset_sha256: str, order: FittedOrder) -> list[Verdict]:
    """The checks with every failure the candidate has read in the order stable's answers fit: a dataset in the
    wrong order fails stable too, which must not excuse a candidate worse than stable read in the right one (a
    worse model, a backdoored slice whose floor the wrong order sets at stable's near-zero accuracy). Judged as a
    dataset in that order would be (the same tests and alphas, the same rule for a limit stable fails too); a
    check that fails only so replaces its reading in the dataset's order, or joins the list (a slice too small to
    report in it)."""
    fitted_tally = dataclasses.replace(tally, overall=_reread(tally.overall, order))
    fitted = {check.name: check for check in (
        _failed_alike(check, fitted_tally, None) for check in _threshold_verdicts(
            thresholds, fitted_tally, settings, dataset_sha256, read=lambda counts: _reread(counts, order)))
        if check.outcome is Outcome.FAIL}
    why = (f"; read with {order.describe(tally.classes)}, as stable's answers fit the labels: the candidate's "
           f"failure all the same ({CLASS_ORDER_RULE})")

    def in_order(check: Verdict) -> Verdict:
        return Verdict(check.name, Outcome.FAIL, check.reason + why,
                       {**check.evidence, "fittedOutputOrder": list(order.names[:NAMED_CLASSES]),
                        "fittedStableAccuracy": order.stable_accuracy, "readInFittedOrder": True})

    names = {check.name for check in checks}
    return ([in_order(fitted[check.name]) if check.name in fitted else check for check in checks]
            + [in_order(check) for name, check in fitted.items() if name not in names])


def _responses_verdict(side: str, tally: ResponseTally, settings: JudgeSettings, aborted: str | None,
                       garbage_fails: bool, note: str = "") -> Verdict:
    evidence = tally.to_dict()
    missing = tally.unanswered_total
    if tally.samples == 0:
        return Verdict(f"{side}.responses", Outcome.INCONCLUSIVE, "no samples were sent", evidence)
    if missing <= settings.max_unanswered_share * tally.samples + _EPSILON and aborted is None:
        note = f" ({missing} unanswered, within the allowed share)" if missing else ""
        return Verdict(f"{side}.responses", Outcome.PASS,
                       f"answered {tally.answered} of {tally.samples} samples{note}", evidence)
    reasons = ", ".join(f"{reason} x{count}" for reason, count in tally.unanswered.most_common(5))
    batches = sum(tally.failed_batches.values())
    message = (f"no usable prediction for {missing} of {tally.samples} samples ({pct(missing / tally.samples)})"
               f"{f', {batches} of {tally.batches} batches failed' if batches else ''}"
               f"{f': {reasons}' if reasons else ''}{f'; stopped early: {aborted}' if aborted else ''}{note}")
    if garbage_fails and tally.garbage_samples > settings.max_unanswered_share * tally.samples + _EPSILON:
        return Verdict(f"{side}.responses", Outcome.FAIL, message, evidence)
    return Verdict(f"{side}.responses", Outcome.INCONCLUSIVE, message, evidence)


def _limit_check(name: str, value: float | None, limit: float, upper: bool, what: str, undefined_because: str,
                 evidence: Mapping[str, Any]) -> Verdict:
    """upper: the value must not exceed limit (max*); otherwise it must reach it (min*)."""
    evidence = {"value": value, "limit": limit, **evidence}
    if value is None:
        return Verdict(name, Outcome.INCONCLUSIVE, f"{what} is undefined: {undefined_because}", evidence)
    failed = _beyond(value, limit, upper)
    relation = ("above" if failed else "within") if upper else ("below" if failed else "at or above")
    return Verdict(name, Outcome.FAIL if failed else Outcome.PASS,
                   f"{what} {pct(value)} {relation} the {'maximum' if upper else 'minimum'} {pct(limit)}", evidence)


def _beyond(value: float, limit: float, upper: bool) -> bool:
    return value > limit + _EPSILON if upper else value < limit - _EPSILON


def _some(names: Sequence[str], limit: int = NAMED_CLASSES) -> str:
    """The first `limit` names, then how many more."""
    more = len(names) - limit
    return ", ".join(names[:limit]) + (f" and {more} more" if more > 0 else "")


def _threshold_verdicts(thresholds: GoldenThresholds, tally: GateTally, settings: JudgeSettings,
                        dataset_sha256: str,
                        read: Callable[[PairedCounts], PairedCounts] = lambda counts: counts) -> list[Verdict]:
    """read: how each slice's counts are read, one slice at a time (_fitted_failures' other order: a second copy
    of every slice at once would double the memory the runner bounds)."""
    verdicts: list[Verdict] = []
    overall = tally.overall
    base = {"datasetSha256": dataset_sha256}
    if thresholds.min_accuracy is not None:
        verdicts.append(_accuracy_verdict("", overall.candidate, thresholds.min_accuracy, base,
                                          unanswered=overall.samples - int(overall.candidate.sum())))
    if tally.stable is not None:
        verdicts.extend(_comparison_verdicts("", overall, thresholds, tally.classes, base))
    for label, limits in thresholds.classes.items():
        verdicts.extend(_class_verdicts(label, limits, tally, base))
    verdicts = [_unanswered_undecided(verdict) for verdict in verdicts]
    small_alpha = SLICE_ALPHA / max(1, len(verdicts))  # shared, as the slices' is: many small checks, one chance
    verdicts = [_enough(verdict, settings.min_samples, small_alpha) for verdict in verdicts]
    if settings.slice_checks:
        # Against stable when there is one (the comparison limits), and on minAccuracy as a floor each slice must
        # not credibly fall below (stable's accuracy there when lower: a slice hard for every model). Each family
        # of tests has its own alpha, shared by its slices, so adding one never weakens the other.
        compared = [limit for limit in (thresholds.max_accuracy_drop, thresholds.max_disagreement)
                    if limit is not None] if tally.stable is not None else []
        floored = thresholds.min_accuracy is not None
        judged = [(tag, counts) for tag, counts in sorted(tally.slices.items()) if counts.candidate.sum()]
        alpha = SLICE_ALPHA / max(1, len(compared) * len(judged))
        floor_alpha = SLICE_ALPHA / max(1, len(judged))
        for tag, raw in judged:
            counts = read(raw)
            scope = {**base, "slice": tag}
            checks = []
            if compared and counts.paired:
                checks.extend((verdict, alpha) for verdict in
                              _comparison_verdicts(f"slice {tag}.", counts, thresholds, tally.classes, scope))
            floor = _slice_floor(thresholds.min_accuracy, counts, tally.stable is not None) if floored else None
            if floor is not None:
                limit, matrix, note, unanswered = floor
                checks.append((_accuracy_verdict(f"slice {tag}.", matrix, limit, scope, note,
                                                 unanswered=unanswered), floor_alpha))
            for verdict, share in checks:
                slice_verdict = _slice_test(verdict, share, settings.min_slice_samples)
                if slice_verdict is not None:
                    verdicts.append(slice_verdict)
        if tally.untracked_slices and (compared or floored):
            verdicts.append(Verdict("slices", Outcome.INCONCLUSIVE,
                                    f"{tally.untracked_slices} samples carry tags beyond the {len(tally.slices)} "
                                    "slices tracked, so their slices were not judged (a trigger could hide in one): "
                                    "use fewer slice tags", {**base, "untrackedSamples": tally.untracked_slices,
                                                             "trackedSlices": len(tally.slices)}))
    return verdicts


def _kind(verdict: Verdict) -> str:
    return verdict.name.rsplit(".", 1)[-1]  # "slice logo.minAccuracy", "nsfw.minRecall" -> the limit's name


def _counted(verdict: Verdict) -> tuple[int, int, float]:
    """A threshold check as (bad outcomes, trials, the rate its limit allows): errors against 1 - minAccuracy,
    missed samples of the class against 1 - minRecall, false positives against maxFalsePositiveRate, ..."""
    evidence, kind = verdict.evidence, _kind(verdict)
    limit = float(evidence["limit"])
    if kind == "minAccuracy":
        samples = int(evidence["samples"])
        return samples - int(evidence["correct"]), samples, 1.0 - limit
    if kind in ("minRecall", "minPrecision"):
        denominator = int(evidence["denominator"])
        return denominator - int(evidence["numerator"]), denominator, 1.0 - limit
    if kind == "maxFalsePositiveRate":
        return int(evidence["numerator"]), int(evidence["denominator"]), limit
    samples = int(evidence["pairedSamples"])
    if kind == "maxAccuracyDrop":
        return max(0, int(evidence["stableCorrect"]) - int(evidence["candidateCorrect"])), samples, limit
    return int(evidence["disagreements"]), samples, limit


def _best_case(unanswered: int, count: int, samples: int, value: float | None) -> dict[str, Any]:
    """The check with its unanswered samples in the candidate's favour: its bad outcomes, trials and value."""
    return {"bestCase": {"unanswered": unanswered, "count": count, "samples": samples, "value": value}} \
        if unanswered else {}


def _unanswered_undecided(verdict: Verdict) -> Verdict:
    """A failure the unanswered samples could undo is INCONCLUSIVE: samples that never reached the model (a 503
    batch of a golden set sorted by class) must not fail, and so reject, it."""
    best = verdict.evidence.get("bestCase")
    if verdict.outcome is not Outcome.FAIL or not best:
        return verdict
    value, unanswered = best["value"], best["unanswered"]
    if value is not None and _beyond(value, float(verdict.evidence["limit"]), _kind(verdict).startswith("max")):
        return Verdict(verdict.name, Outcome.FAIL, f"{verdict.reason} ({pct(value)} even with its {unanswered} "
                       "unanswered samples in the candidate's favour)", verdict.evidence)
    return Verdict(verdict.name, Outcome.INCONCLUSIVE,
                   f"{verdict.reason}, but {unanswered} samples went unanswered: with them in the candidate's "
                   f"favour it is {pct(value)}, so they decide it", verdict.evidence)


def _enough(verdict: Verdict, min_samples: int, alpha: float) -> Verdict:
    """A pass on fewer samples than `min_samples` is no evidence: 0 of 2 negatives says nothing of a 1% limit. Nor
    is a failure, unless its count is credibly beyond the limit (1 of 3 missed is chance at a 90% recall limit,
    3 of 3 is not)."""
    evidence = verdict.evidence
    samples = next((evidence[key] for key in ("denominator", "pairedSamples", "samples") if key in evidence), None)
    if verdict.outcome is Outcome.INCONCLUSIVE or not isinstance(samples, int) or samples >= min_samples:
        return verdict
    too_few = f"on only {samples} samples: too few to judge (at least {min_samples})"
    if verdict.outcome is Outcome.PASS:
        return Verdict(verdict.name, Outcome.INCONCLUSIVE, f"{verdict.reason}, but {too_few}",
                       {**evidence, "minSamples": min_samples})
    count, trials, rate = _counted(verdict)
    best = evidence.get("bestCase")
    if best:  # credible even with the unanswered samples in the candidate's favour
        count, trials = best["count"], best["samples"]
    p_value = binomial_tail(count, trials, rate)
    evidence = {**evidence, "minSamples": min_samples, "pValue": p_value, "alpha": alpha}
    if p_value < alpha:
        return Verdict(verdict.name, Outcome.FAIL, f"{verdict.reason}, credibly on only {samples} samples "
                       f"(p={p_value:.1e} < {alpha:.1e})", evidence)
    return Verdict(verdict.name, Outcome.INCONCLUSIVE, f"{verdict.reason}, but not credibly (p={p_value:.1e}) "
                   f"{too_few}", evidence)


def _slice_test(verdict: Verdict, alpha: float, min_samples: int) -> Verdict | None:
    """A slice check as a test of its count against the limit: FAIL when credibly beyond, even with the slice's
    unanswered samples in the candidate's favour (INCONCLUSIVE when only without them); PASS when not (None for a
    slice under `min_samples`: reported, not judged, unless it is credibly beyond even so)."""
    evidence = dict(verdict.evidence)
    count, samples, rate = _counted(verdict)
    relation = " below the minimum " if _kind(verdict) == "minAccuracy" else " above the maximum "
    p_value = binomial_tail(count, samples, rate)
    evidence.update({"count": count, "pValue": p_value, "alpha": alpha})
    best = evidence.get("bestCase")
    p_best = binomial_tail(best["count"], best["samples"], rate) if best else p_value
    if best:
        evidence["pValueBestCase"] = p_best
    if p_value < alpha:  # credible only beyond the limit, where the plain check says "above"/"below" too
        reason = verdict.reason.replace(relation, f" credibly{relation}", 1)
        if p_best < alpha:
            unanswered = f"; p={p_best:.1e} even with its {best['unanswered']} unanswered samples in the " \
                         "candidate's favour" if best else ""
            return Verdict(verdict.name, Outcome.FAIL, f"{reason} (p={p_value:.1e} < {alpha:.1e}{unanswered})",
                           evidence)
        return Verdict(verdict.name, Outcome.INCONCLUSIVE,
                       f"{reason} (p={p_value:.1e} < {alpha:.1e}), but {best['unanswered']} samples went "
                       f"unanswered: with them in the candidate's favour p={p_best:.1e}, so they decide it", evidence)
    if samples < min_samples:
        return None
    beyond = verdict.outcome is Outcome.FAIL
    note = f", but not credibly (p={p_value:.1e}, chance in {samples} samples)" if beyond else ""
    return Verdict(verdict.name, Outcome.PASS, f"{verdict.reason}{note}", evidence)


def _any_threshold(thresholds: GoldenThresholds) -> bool:
    # A class listed with no limit sets nothing (parse_spec refuses one; runner.golden_dataset_from does not).
    return bool(thresholds.min_accuracy is not None or thresholds.max_accuracy_drop is not None
                or thresholds.max_disagreement is not None
                or any(limits != ClassThresholds() for limits in thresholds.classes.values()))


def _slice_floor(min_accuracy: float, counts: PairedCounts,
                 has_stable: bool) -> tuple[float, np.ndarray, str, int] | None:
    """The accuracy a slice must not credibly fall below, the candidate's counts to test, what the floor is, and
    the candidate's own unanswered samples among those the test covers (the only ones credited in its favour: a
    sample it answered wrongly stays wrong wherever stable did not answer).

    With a stable: minAccuracy on every sample the candidate answered, or, when stable's accuracy on the samples
    both answered is lower (a slice hard for every model), that accuracy on those samples (like for like, crediting
    the candidate only where stable answered and it did not); None when stable answered none of them
    (stable.responses says why: no pass either). Without: minAccuracy itself. Not chance: a trigger that sends a
    slice to one class leaves it at chance, and a first rollout has nothing else to hold a slice to (a slice hard
    for the model is the user's to untag)."""
    own_unanswered = counts.samples - int(counts.candidate.sum())
    if has_stable:
        if not counts.paired:
            return None
        stable = accuracy(counts.paired_stable)
        if stable is not None and stable < min_accuracy:
            return (stable, counts.paired_candidate, f" (stable's accuracy there; minAccuracy {pct(min_accuracy)})",
                    int(counts.stable.sum()) - counts.paired)
    return min_accuracy, counts.candidate, "", own_unanswered


def _accuracy_verdict(prefix: str, matrix: np.ndarray, limit: float, base: Mapping[str, Any],
                      floor: str = "", unanswered: int = 0) -> Verdict:
    """unanswered: the scope's samples `matrix` lacks (counted right in the best case)."""
    scope = f" on slice {base['slice']}" if "slice" in base else ""
    correct, answered = int(matrix.trace()), int(matrix.sum())
    best = _best_case(unanswered, answered - correct, answered + unanswered,
                      (correct + unanswered) / (answered + unanswered) if answered + unanswered else None)
    verdict = _limit_check(f"{prefix}minAccuracy", accuracy(matrix), limit, upper=False,
                           what=f"candidate accuracy{scope} ({correct}/{answered})",
                           undefined_because="no answered samples",
                           evidence={**base, "correct": correct, "samples": answered, **best})
    return dataclasses.replace(verdict, reason=verdict.reason + floor) if floor else verdict


def _comparison_verdicts(prefix: str, counts: PairedCounts, thresholds: GoldenThresholds, classes: Sequence[str],
                         base: Mapping[str, Any]) -> list[Verdict]:
    verdicts = []
    scope = f" on slice {base['slice']}" if "slice" in base else ""
    paired = counts.paired
    # Only the candidate's own unanswered samples (where stable answered) are credited: a sample stable left
    # unanswered just leaves its pair out, so a stable 503 batch cannot hide a worse candidate (review s25r2gate).
    trials = int(counts.stable.sum())  # stable's answered samples: the paired ones and the candidate's missing
    unanswered = trials - paired
    if thresholds.max_accuracy_drop is not None:
        candidate_correct, stable_correct = int(counts.paired_candidate.trace()), int(counts.paired_stable.trace())
        # In the candidate's favour: right where it did not answer (stable as it answered there).
        drop = int(counts.stable.trace()) - candidate_correct - unanswered
        verdicts.append(_limit_check(
            f"{prefix}maxAccuracyDrop", counts.accuracy_drop, thresholds.max_accuracy_drop, upper=True,
            what=(f"accuracy drop{scope} (stable {stable_correct}/{paired}, candidate {candidate_correct}/{paired})"),
            undefined_because="no sample was answered by both", evidence={
                **base, "pairedSamples": paired, "candidateCorrect": candidate_correct,
                "stableCorrect": stable_correct,
                **_best_case(unanswered, max(0, drop), trials, drop / trials if trials else None)}))
    if thresholds.max_disagreement is not None:
        flips = flip_list(counts.flips, classes, limit=5)
        top = f"; most: {flips[0]['from']} -> {flips[0]['to']} x{flips[0]['count']}" if flips else ""
        verdicts.append(_limit_check(  # in the candidate's favour: where it did not answer, it agrees
            f"{prefix}maxDisagreement", counts.disagreement, thresholds.max_disagreement, upper=True,
            what=f"disagreement with stable{scope} ({counts.disagreements}/{paired}{top})",
            undefined_because="no sample was answered by both", evidence={
                **base, "pairedSamples": paired, "disagreements": counts.disagreements, "flips": flips,
                **_best_case(unanswered, counts.disagreements, trials,
                             counts.disagreements / trials if trials else None)}))
    return verdicts


def _class_verdicts(label: str, limits: ClassThresholds, tally: GateTally,
                    base: Mapping[str, Any]) -> list[Verdict]:
    wanted = [(name, limit) for name, limit in (("maxFalsePositiveRate", limits.max_false_positive_rate),
                                                ("minRecall", limits.min_recall),
                                                ("minPrecision", limits.min_precision)) if limit is not None]
    if not wanted:
        return []
    if len(label) > MAX_NAME_CHARS:  # the CRD refuses such a key; one stored before its rule still reaches here
        return [Verdict(f"{clipped(label)}.{name}", Outcome.INCONCLUSIVE,
                        f"thresholds name a class label of {len(label)} characters, over the {MAX_NAME_CHARS} a "
                        "class name may have: shorten spec.goldenDataset.thresholds.classes", dict(base))
                for name, _ in wanted]
    if label not in tally.classes:
        return [Verdict(f"{label}.{name}", Outcome.INCONCLUSIVE,
                        f"thresholds name class {label!r}, which the dataset does not declare "
                        f"(classes: {_some(tally.classes)})", dict(base)) for name, _ in wanted]
    index = tally.classes.index(label)
    counts = class_counts(tally.overall.candidate, index)
    # The class's unanswered samples and the others': counted right in the best case.
    missing = tally.overall.labels - tally.overall.candidate.sum(axis=1)
    mine, others = int(missing[index]), int(missing.sum() - missing[index])
    stable = class_counts(tally.overall.stable, index) if tally.stable is not None else None
    verdicts = []
    for name, limit in wanted:
        if name == "maxFalsePositiveRate":
            value, upper, numbers = counts.false_positive_rate, True, (counts.fp, counts.fp + counts.tn)
            what, why = f"{label} false-positive rate", f"no answered sample is labelled other than {label}"
            stable_value = stable.false_positive_rate if stable else None
            unanswered, bad, trials = others, counts.fp, counts.fp + counts.tn + others
            best = _best_case(unanswered, bad, trials, bad / trials if trials else None)
        else:
            if name == "minRecall":
                value, upper, numbers = counts.recall, False, (counts.tp, counts.tp + counts.fn)
                what, why = f"{label} recall", f"no answered sample is labelled {label}"
                stable_value = stable.recall if stable else None
            else:
                value, upper, numbers = counts.precision, False, (counts.tp, counts.tp + counts.fp)
                what, why = f"{label} precision", f"the candidate never predicted {label}"
                stable_value = stable.precision if stable else None
            trials = numbers[1] + mine
            best = _best_case(mine, numbers[1] - numbers[0], trials, (numbers[0] + mine) / trials if trials else None)
        context = f"; stable {pct(stable_value)}" if stable is not None else ""
        verdict = _limit_check(f"{label}.{name}", value, limit, upper, f"{what} ({numbers[0]}/{numbers[1]})", why,
                               {**base, "class": label, "numerator": numbers[0], "denominator": numbers[1],
                                "stableValue": stable_value, **best})
        verdicts.append(Verdict(verdict.name, verdict.outcome, verdict.reason + context, verdict.evidence))
    return verdicts
