"""The golden gate end to end: fetch + pin, stream batches to candidate and stable, count, judge.

What the operator calls (DESIGN.md section 4, step 3):

    report = await run_gate(spec.golden_dataset, candidate_endpoint, stable_endpoint,
                            namespace=rollout_namespace, sources=DatasetSources(...), options=GateOptions())
    observations.gate = report.to_judge_result(request_id)   # verdicts + dataset sha256, or an error
    status.gate extras  <- report.status                     # compact, JSON-able, every deciding number

`report.evidence` is the full record (all slices, and matrices as their non-zero cells: MATRIX_FORMAT) for
`record_gate_evidence`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import shutil
import stat
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np

from controller.api.spec import ClassThresholds, GoldenDatasetSpec, GoldenThresholds
from controller.gate.clients import SAMPLE_RESPONSE_BYTES, TOO_LARGE, BatchAnswer, InferenceClient, InferenceEndpoint
from controller.gate.errors import ErrorKind, SourceError, SourcePolicyError
from controller.gate.formats import MAX_PROBLEM_EXAMPLES, Batch, DatasetFormatError, open_dataset, sha256_file
from controller.gate.judge import (
    MAX_NAME_CHARS,
    NAMED_CLASSES,
    GateTally,
    JudgeSettings,
    ResponseTally,
    clipped,
    judge,
    pct,
)
from controller.gate.metrics import PairedCounts, accuracy, matrix_json, summarize
from controller.gate.sources import DatasetSources, fetch_dataset
from controller.redaction import redact_urls, redacted_url
from controller.text_bounds import WORDS_MAX, cut_text
from controller.verdict import DATASET_INTEGRITY, Outcome, Verdict, combine

if TYPE_CHECKING:
    from controller.engine.observations import JudgeResult


@dataclass(frozen=True)
class GateOptions:
    """Operator-level tuning; the spec's thresholds decide, these only shape how the data are sent."""

    batch_size: int = 128  # samples per request; lower it for large inputs (images)
    concurrency: int = 4  # requests in flight per endpoint
    request_timeout_seconds: float = 30.0
    retries: int = 2  # per batch, for connection errors, timeouts, 429/502/503/504
    gate_timeout_seconds: float = 1800.0
    max_response_bytes: int = 64 * 1024 * 1024
    # A batch's answer may be 64 KiB plus this much a sample (enough for two 1000-class score vectors; more for
    # models with more output classes), never more than max_response_bytes.
    max_response_bytes_per_sample: int = SAMPLE_RESPONSE_BYTES
    # Stop sending after this many batches in a row found an endpoint unreachable: it is down.
    max_consecutive_unavailable: int = 20
    # Only for datasets that declare no class list; in the models' output order, as the exporter's --class-names.
    class_names: tuple[str, ...] | None = None
    max_tracked_slices: int = 64
    # Slices tracked beyond the whole dataset are fewer when many classes make each one's matrices large.
    max_count_bytes: int = 256 * 1024 * 1024
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    # status.gate lives in etcd: beyond these, matrices, slices, per-class numbers and check names go only to the
    # MLflow evidence (a spec may set limits on 1000 classes).
    status_matrix_max_classes: int = 12
    status_max_slices: int = 10
    status_max_classes: int = 20  # per-class metrics and limits, and each slice's most predicted classes
    status_max_checks: int = 50  # names in failedChecks and inconclusiveChecks each
    work_dir: str | None = None  # where the dataset is downloaded; default: the system temp dir


# How the evidence's matrices read (status keeps rows of every cell, for a dozen classes at most).
MATRIX_FORMAT = ("each *Matrix is {shape: [n, n], cells: [[row, column, count], ...]} listing only its non-zero "
                 "cells; row and column index dataset.classes. confusionMatrix and candidateConfusionMatrix: row = "
                 "true class, column = predicted class; flipMatrix: row = stable's answer, column = the candidate's")


@dataclass(frozen=True)
class GateError:
    kind: str  # an AdapterErrorKind value: Unavailable, NotFound, Forbidden, Invalid, Error
    message: str


@dataclass(frozen=True)
class GateReport:
    outcome: Outcome
    reason: str
    verdicts: tuple[Verdict, ...]
    dataset_sha256: str | None  # what was actually fetched; None when nothing was
    status: dict[str, Any]  # compact: for the resource's status.gate
    evidence: dict[str, Any]  # complete: for the MLflow run's JSON artifact
    error: GateError | None = None  # the gate could not run now (dataset unreachable): retry later

    def to_judge_result(self, request_id: str) -> JudgeResult:
        from controller.engine.observations import AdapterError, AdapterErrorKind, JudgeResult

        if self.error is not None:
            return JudgeResult(request_id=request_id, error=AdapterError(AdapterErrorKind(self.error.kind),
                                                                         self.error.message))
        return JudgeResult(request_id=request_id, verdicts=self.verdicts, dataset_sha256=self.dataset_sha256,
                           report=self.status)


def golden_dataset_from(raw: GoldenDatasetSpec | Mapping[str, Any]) -> GoldenDatasetSpec:
    """Accept the typed spec or the resource's plain `goldenDataset` dict (camelCase keys)."""
    if isinstance(raw, GoldenDatasetSpec):
        return raw
    limits = raw.get("thresholds") or {}
    classes = {str(label): ClassThresholds(max_false_positive_rate=item.get("maxFalsePositiveRate"),
                                           min_recall=item.get("minRecall"), min_precision=item.get("minPrecision"))
               for label, item in (limits.get("classes") or {}).items()}
    return GoldenDatasetSpec(uri=str(raw["uri"]), sha256=str(raw["sha256"]).lower(), thresholds=GoldenThresholds(
        min_accuracy=limits.get("minAccuracy"), max_accuracy_drop=limits.get("maxAccuracyDrop"),
        max_disagreement=limits.get("maxDisagreement"), classes=classes))


async def run_gate(dataset: GoldenDatasetSpec | Mapping[str, Any], candidate: InferenceEndpoint,
                   stable: InferenceEndpoint | None, *, namespace: str, sources: DatasetSources,
                   options: GateOptions | None = None) -> GateReport:
    """Fetch, pin, evaluate and judge. Never raises for bad data or bad servers; see GateReport.error."""
    spec = golden_dataset_from(dataset)
    options = options or GateOptions()
    work_dir = options.work_dir or tempfile.gettempdir()
    try:
        _sweep_dead_scratch(work_dir)
        scratch_dir = tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=work_dir)
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        return _fetch_error(spec, SourceError(ErrorKind.UNAVAILABLE if full else ErrorKind.ERROR,
                                              f"cannot make the gate's scratch directory in {work_dir}: "
                                              f"{exc.strerror or type(exc).__name__}"))
    with scratch_dir as scratch, _in_use(Path(scratch)):
        started = time.monotonic()
        try:
            fetched = await fetch_dataset(spec.uri, namespace, sources, Path(scratch) / "dataset",
                                          expected_sha256=spec.sha256)
        except SourcePolicyError as exc:
            # A message may quote a location MLflow returned (a version's source): never with its secret, nor
            # whole (any length; status keeps it twice, in the verdict and the report).
            verdict = Verdict("dataset.source", Outcome.INCONCLUSIVE, cut_text(redact_urls(exc.message), WORDS_MAX),
                              {"uri": redacted_url(spec.uri)})
            return _report_without_data(spec, (verdict,))
        except SourceError as exc:
            return _fetch_error(spec, exc)
        return await evaluate_dataset_file(fetched.path, spec, candidate, stable, options=options,
                                           actual_sha256=fetched.sha256, source=fetched.source,
                                           fetch_seconds=time.monotonic() - started)


SCRATCH_PREFIX = "modelrollout-gate-"
_IN_USE = ".in-use"  # locked (flock) by the gate that owns the scratch directory, for as long as it runs


@contextlib.contextmanager
def _in_use(scratch: Path) -> Iterator[None]:
    """Hold the scratch directory's lock; the kernel drops it when the process dies, however it dies."""
    with contextlib.ExitStack() as stack:
        try:
            lock = stack.enter_context(open(scratch / (_IN_USE + ".new"), "wb"))
            fcntl.flock(lock, fcntl.LOCK_EX)
            # Named once locked, so that a sweep never finds it unlocked while this gate lives.
            os.rename(scratch / (_IN_USE + ".new"), scratch / _IN_USE)
        except OSError:
            pass  # the gate runs without it (a sweep leaves an unlocked directory alone); the fetch says why
        yield


def _sweep_dead_scratch(work_dir: str) -> None:
    """Remove what gates of dead processes left: a killed operator leaves its dataset behind, and a restarted
    container keeps its emptyDir, where the leftovers would count against the volume's sizeLimit."""
    for entry in Path(work_dir).glob(SCRATCH_PREFIX + "*"):
        try:
            # Never blocks (a FIFO planted in a shared /tmp would hang the event loop) and never follows a link.
            fd = os.open(entry / _IN_USE, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            continue  # no lock yet (a gate being made), or not a gate's directory
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                continue  # not a lock this operator made
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # taken: its gate is dead
            shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue  # locked: a gate in flight
        finally:
            os.close(fd)


def _fetch_error(spec: GoldenDatasetSpec, exc: SourceError) -> GateReport:
    """The dataset could not be fetched now: an error the operator reports and retries, not a verdict."""
    error = GateError(kind=str(exc.kind), message=redact_urls(exc.message))
    status = {"outcome": str(Outcome.INCONCLUSIVE), "error": {"kind": error.kind, "message": error.message},
              "dataset": {"uri": redacted_url(spec.uri), "expectedSha256": spec.sha256}}
    return GateReport(Outcome.INCONCLUSIVE, f"dataset not fetched: {error.message}", (), None, status, status, error)


def _report_without_data(spec: GoldenDatasetSpec, verdicts: tuple[Verdict, ...],
                         actual_sha256: str | None = None) -> GateReport:
    outcome = combine(list(verdicts))
    decisive = next(v for v in verdicts if v.outcome == outcome)
    reason = f"{decisive.name}: {decisive.reason}"
    status = {"outcome": str(outcome), "reason": reason,
              "dataset": {"uri": redacted_url(spec.uri), "expectedSha256": spec.sha256, "sha256": actual_sha256},
              "failedChecks": [v.name for v in verdicts if v.outcome is not Outcome.PASS],
              "checks": [v.to_dict() for v in verdicts]}
    return GateReport(outcome, reason, verdicts, actual_sha256, status, status)


async def evaluate_dataset_file(path: Path, dataset: GoldenDatasetSpec | Mapping[str, Any],
                                candidate: InferenceEndpoint, stable: InferenceEndpoint | None, *,
                                options: GateOptions | None = None, actual_sha256: str | None = None,
                                source: str | None = None, fetch_seconds: float = 0.0) -> GateReport:
    """Verify a local copy against the pinned sha256, then evaluate it. Used by run_gate and benchmarks."""
    spec = golden_dataset_from(dataset)
    options = options or GateOptions()
    started = time.monotonic()
    actual = actual_sha256 or await asyncio.to_thread(sha256_file, path)
    if actual != spec.sha256:
        size = path.stat().st_size  # a size well short of the dataset's says a cut download, not a changed one
        verdict = Verdict(DATASET_INTEGRITY, Outcome.FAIL,
                          f"dataset sha256 mismatch: pinned {spec.sha256}, fetched {actual} ({size} bytes); the data "
                          "were changed or the pin is wrong", {"expectedSha256": spec.sha256, "actualSha256": actual,
                                                               "actualBytes": size, "uri": redacted_url(spec.uri)})
        return _report_without_data(spec, (verdict,), actual)
    integrity = Verdict(DATASET_INTEGRITY, Outcome.PASS, f"matches the pinned {actual[:12]}...",
                        {"expectedSha256": spec.sha256, "actualSha256": actual})
    try:
        # Off the event loop: it reads the JSON Lines header (up to 16 MiB) or the .npz's zip directory, before the
        # gate's time limit starts.
        reader = await asyncio.to_thread(open_dataset, path, options.batch_size, options.class_names)
        too_long = [name for name in reader.classes if len(name) > MAX_NAME_CHARS]
        if too_long:  # status keys per-class numbers by name: one longer than this makes every status write a 400
            raise DatasetFormatError(f"{len(too_long)} class names are longer than {MAX_NAME_CHARS} characters "
                                     f"(the first: {clipped(too_long[0])!r}): shorten them")
        evaluation = _Evaluation(reader.classes, stable is not None, options)
        await evaluation.run(reader, candidate, stable)
    except DatasetFormatError as exc:
        verdict = Verdict("dataset", Outcome.INCONCLUSIVE, f"dataset unreadable: {exc}",
                          {"datasetSha256": actual})
        return _report_without_data(spec, (integrity, verdict), actual)
    tally = evaluation.tally(reader.problems, reader.records)
    verdicts = (integrity, *judge(spec.thresholds, tally, options.judge, actual))
    outcome = combine(list(verdicts))
    reason = _reason(verdicts, outcome, tally)
    timing = {"fetchSeconds": round(fetch_seconds, 3), "evaluateSeconds": round(time.monotonic() - started, 3)}
    full = _status(spec, actual, source, reader.format, tally, verdicts, outcome, reason, candidate, stable,
                   timing, compact=None)
    compact = _status(spec, actual, source, reader.format, tally, verdicts, outcome, reason, candidate, stable,
                      timing, compact=options)
    return GateReport(outcome, reason, verdicts, actual, compact, full)


def _reason(verdicts: tuple[Verdict, ...], outcome: Outcome, tally: GateTally) -> str:
    if outcome is not Outcome.PASS:
        decisive = next(v for v in verdicts if v.outcome == outcome)
        others = sum(1 for v in verdicts if v.outcome == outcome) - 1
        return f"{decisive.name}: {decisive.reason}" + (f" (and {others} more)" if others else "")
    summary = f"all {len(verdicts)} checks passed on {tally.overall.samples} samples: candidate accuracy " \
              f"{pct(accuracy(tally.overall.candidate))}"
    if tally.stable is not None:
        summary += f", disagreement with stable {pct(tally.overall.disagreement)}"
    return summary


class _Evaluation:
    """Streams batches through both endpoints with bounded batches in flight, folding answers into counts."""

    def __init__(self, classes: tuple[str, ...], with_stable: bool, options: GateOptions) -> None:
        self.classes = classes
        self.options = options
        k = len(classes)
        self.overall = PairedCounts(k)
        self.slice_limit = min(options.max_tracked_slices,
                               max(0, options.max_count_bytes // PairedCounts.bytes_for(k) - 1))
        self.slices: dict[str, PairedCounts] = {}
        self.untracked_slices = 0
        self.long_tag_samples, self.long_tag_example = 0, ""
        self.candidate = ResponseTally()
        self.stable = ResponseTally() if with_stable else None
        self.aborted: str | None = None
        self._unavailable_streak = {"candidate": 0, "stable": 0}

    def tally(self, problems: Any, records: int) -> GateTally:
        return GateTally(classes=self.classes, overall=self.overall, slices=self.slices, candidate=self.candidate,
                         stable=self.stable, problems=problems, records=records,
                         untracked_slices=self.untracked_slices, long_tag_samples=self.long_tag_samples,
                         long_tag_example=self.long_tag_example, aborted=self.aborted)

    async def run(self, reader: Any, candidate: InferenceEndpoint, stable: InferenceEndpoint | None) -> None:
        options = self.options
        connector = aiohttp.TCPConnector(limit=2 * options.concurrency + 2)
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            clients = [self._client(candidate, session)]
            if stable is not None:
                clients.append(self._client(stable, session))
            try:
                async with asyncio.timeout(options.gate_timeout_seconds):
                    await self._pump(reader.batches(), clients)
            except TimeoutError:
                self.aborted = f"the gate's time limit of {options.gate_timeout_seconds:.0f}s ran out"

    def _client(self, endpoint: InferenceEndpoint, session: aiohttp.ClientSession) -> InferenceClient:
        options = self.options
        return InferenceClient(endpoint, session, self.classes, concurrency=options.concurrency,
                               timeout_seconds=options.request_timeout_seconds, retries=options.retries,
                               max_response_bytes=options.max_response_bytes,
                               max_response_bytes_per_sample=options.max_response_bytes_per_sample)

    async def _pump(self, batches: Iterator[Batch], clients: list[InferenceClient]) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        try:
            async for batch in _cooperative(batches):
                while len(in_flight) >= self.options.concurrency:
                    done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()
                if self.aborted:
                    break
                in_flight.add(asyncio.create_task(self._evaluate(batch, clients)))
            if in_flight:
                await asyncio.gather(*in_flight)
        finally:
            for task in in_flight:
                task.cancel()

    async def _evaluate(self, batch: Batch, clients: list[InferenceClient]) -> None:
        bodies: dict[Any, bytes] = {}
        for client in clients:
            if client.encoding not in bodies:
                bodies[client.encoding] = client.encode(batch.features)
        answers = await asyncio.gather(*(client.predict(batch.features, bodies[client.encoding])
                                         for client in clients))
        self._fold(batch, answers[0], answers[1] if len(answers) > 1 else None)

    def _fold(self, batch: Batch, candidate: BatchAnswer, stable: BatchAnswer | None) -> None:
        self._count_responses("candidate", self.candidate, candidate)
        if stable is not None and self.stable is not None:
            self._count_responses("stable", self.stable, stable)
        stable_predicted = stable.predicted if stable is not None else None
        if stable_predicted is not None and not candidate.unavailable:
            self.candidate.unusable_where_other_answered += int(((candidate.predicted < 0)
                                                                 & (stable_predicted >= 0)).sum())
        self.overall.add(batch.labels, candidate.predicted, stable_predicted)
        for tag, rows in batch.slices.items():
            counts = self.slices.get(tag)
            if counts is None and len(tag) > MAX_NAME_CHARS:  # never a status key: judge says so (inconclusive)
                self.long_tag_samples += len(rows)
                self.long_tag_example = self.long_tag_example or clipped(tag)
                continue
            if counts is None:
                if len(self.slices) >= self.slice_limit:
                    self.untracked_slices += len(rows)
                    continue
                counts = self.slices[tag] = PairedCounts(len(self.classes))
            counts.add(batch.labels[rows], candidate.predicted[rows],
                       stable_predicted[rows] if stable_predicted is not None else None)

    def _count_responses(self, side: str, tally: ResponseTally, answer: BatchAnswer) -> None:
        count = int(answer.predicted.shape[0])
        tally.batches += 1
        tally.samples += count
        tally.answered += answer.answered
        if answer.failure is not None:
            tally.failed_batches[answer.failure] += 1
            tally.unanswered[answer.failure] += count
            if answer.unavailable:
                tally.unavailable_samples += count
                tally.unavailable_reasons.add(answer.failure)
            if len(tally.examples) < MAX_PROBLEM_EXAMPLES:
                detail = f" ({answer.detail})" if answer.detail else ""
                tally.examples.append(f"batch {tally.batches}: {answer.failure}{detail}")
        tally.unanswered.update(answer.sample_problems)
        # An answer past the gate's size limit is no verdict on the model, but the endpoint was reached.
        streak = self._unavailable_streak[side] + 1 if answer.unavailable and answer.failure != TOO_LARGE else 0
        self._unavailable_streak[side] = streak
        if streak >= self.options.max_consecutive_unavailable and self.aborted is None:
            self.aborted = f"{side} was unreachable for {streak} batches in a row"


async def _cooperative(batches: Iterator[Batch]) -> AsyncIterator[Batch]:
    """Yield to the event loop between batches, so answers are read while the file is parsed.

    Parsing stays on the event loop's thread on purpose: a read-ahead thread measured slower (the
    parser and the loop fight over the GIL), and a batch parses in a few milliseconds. An empty batch is the
    reader's pause while nothing usable turns up (blank or bad lines): only a chance to yield, never sent.
    """
    for batch in batches:
        if len(batch):
            yield batch
        await asyncio.sleep(0)


def _status(spec: GoldenDatasetSpec, sha256: str, source: str | None, data_format: str, tally: GateTally,
            verdicts: tuple[Verdict, ...], outcome: Outcome, reason: str, candidate: InferenceEndpoint,
            stable: InferenceEndpoint | None, timing: Mapping[str, float],
            compact: GateOptions | None) -> dict[str, Any]:
    """The gate's record. compact=options trims it for status (matrices and slices beyond the limits)."""
    classes = tally.classes
    matrices = compact is None or len(classes) <= compact.status_matrix_max_classes
    sparse = compact is None  # the evidence: up to 1000 classes, a dozen matrices of a million cells each
    problems = tally.problems
    result: dict[str, Any] = {
        "outcome": str(outcome), "reason": reason,
        "dataset": {"uri": redacted_url(spec.uri), "source": source, "sha256": sha256, "expectedSha256": spec.sha256,
                    "format": data_format, "classes": list(classes if compact is None else classes[:NAMED_CLASSES]),
                    "classCount": len(classes), "records": tally.records,
                    "usable": tally.overall.samples, "unusable": problems.total,
                    "unusableByReason": dict(problems.counts.most_common()), "examples": problems.examples},
        "thresholds": _thresholds_dict(spec.thresholds),
        "candidate": {**candidate.describe(), "responses": tally.candidate.to_dict(),
                      "metrics": summarize(tally.overall.candidate, classes, matrices, sparse)},
        "failedChecks": [v.name for v in verdicts if v.outcome is Outcome.FAIL],
        "inconclusiveChecks": [v.name for v in verdicts if v.outcome is Outcome.INCONCLUSIVE],
        "timing": dict(timing),
    }
    if compact is None:  # status has them as status.gate.verdicts already
        result["matrixFormat"] = MATRIX_FORMAT
        result["checks"] = [{"name": v.name, "outcome": str(v.outcome), "value": v.evidence.get("value"),
                             "limit": v.evidence.get("limit")} for v in verdicts]
    else:
        omitted = {}
        for key, word in (("failedChecks", "failed"), ("inconclusiveChecks", "inconclusive")):
            omitted[word] = max(0, len(result[key]) - compact.status_max_checks)
            result[key] = result[key][:compact.status_max_checks]
        if any(omitted.values()):
            result["checksOmitted"] = omitted
    if tally.aborted:
        result["stoppedEarly"] = tally.aborted
    if stable is not None and tally.stable is not None:
        result["stable"] = {**stable.describe(), "responses": tally.stable.to_dict(),
                            "metrics": summarize(tally.overall.stable, classes, matrices, sparse)}
        result["comparison"] = tally.overall.comparison(classes, include_matrix=matrices, sparse=sparse)
    limit = compact.status_max_classes if compact is not None else None
    if not matrices:  # many classes: per-class numbers in status only for (some of) the classes the thresholds name
        shown = _status_classes(spec.thresholds, verdicts, limit, within=set(classes))
        for side in ("candidate", "stable"):
            if side in result:
                per_class = result[side]["metrics"]["perClass"]
                result[side]["metrics"]["perClass"] = {label: per_class[label] for label in shown}
    limits = result["thresholds"].get("classes", {})
    if limit is not None and len(limits) > limit:
        result["thresholds"]["classes"] = {label: limits[label]
                                           for label in _status_classes(spec.thresholds, verdicts, limit)}
        result["thresholds"]["classesOmitted"] = len(limits) - limit
    # The slices a check failed (or could not judge) first, whatever their size: their details are the evidence.
    flagged = {v.evidence.get("slice") for v in verdicts if v.outcome is not Outcome.PASS}
    slices = sorted(tally.slices.items(), key=lambda item: (item[0] not in flagged, -item[1].samples))
    if compact is not None:
        slices = slices[:compact.status_max_slices]
    result["slices"] = {tag: _slice_dict(counts, classes, stable is not None, matrices, limit, sparse)
                        for tag, counts in slices}
    omitted = len(tally.slices) - len(slices)
    if omitted or tally.untracked_slices:
        result["slicesOmitted"] = {"slices": omitted, "untrackedSampleTags": tally.untracked_slices}
    return result


def _status_classes(thresholds: GoldenThresholds, verdicts: tuple[Verdict, ...], limit: int | None,
                    within: set[str] | None = None) -> list[str]:
    """The classes the thresholds name (of those `within`), those a check did not pass first; at most `limit`."""
    flagged = {v.name.rsplit(".", 1)[0] for v in verdicts if v.outcome is not Outcome.PASS}
    named = [label for label in thresholds.classes
             if len(label) <= MAX_NAME_CHARS and (within is None or label in within)]
    return sorted(named, key=lambda label: label not in flagged)[:limit]


def _slice_dict(counts: PairedCounts, classes: tuple[str, ...], paired: bool, matrices: bool,
                top: int | None = None, sparse: bool = False) -> dict[str, Any]:
    """top: only that many of the most predicted classes (a trigger's shift shows among them)."""
    answered = int(counts.candidate.sum())
    result: dict[str, Any] = {"samples": counts.samples, "candidateAnswered": answered,
                              "candidateAccuracy": summarize(counts.candidate, classes, False)["accuracy"],
                              "candidatePredicted": _predicted(counts.candidate, classes, top)}
    if matrices:
        result["candidateConfusionMatrix"] = matrix_json(counts.candidate, sparse)
    if paired:
        result["stableAccuracy"] = summarize(counts.stable, classes, False)["accuracy"]
        result["stablePredicted"] = _predicted(counts.stable, classes, top)
        result["comparison"] = counts.comparison(classes, include_matrix=matrices, flip_limit=5, sparse=sparse)
    return result


def _predicted(confusion: np.ndarray, classes: tuple[str, ...], top: int | None = None) -> dict[str, int]:
    """How often each class was predicted: the class-rate view of a slice (a trigger shifts it); the `top` most."""
    totals = confusion.sum(axis=0)
    counts = Counter({name: int(totals[i]) for i, name in enumerate(classes) if totals[i]})
    return dict(counts) if top is None else dict(counts.most_common(top))


def _thresholds_dict(thresholds: GoldenThresholds) -> dict[str, Any]:
    result: dict[str, Any] = {key: value for key, value in (
        ("minAccuracy", thresholds.min_accuracy), ("maxAccuracyDrop", thresholds.max_accuracy_drop),
        ("maxDisagreement", thresholds.max_disagreement)) if value is not None}
    classes = {}
    for label, limits in thresholds.classes.items():
        if len(label) > MAX_NAME_CHARS:  # never a status key (a 400); its verdicts say so
            result["classesTooLong"] = result.get("classesTooLong", 0) + 1
            continue
        classes[label] = {key: value for key, value in (
            ("maxFalsePositiveRate", limits.max_false_positive_rate), ("minRecall", limits.min_recall),
            ("minPrecision", limits.min_precision)) if value is not None}
    if classes:
        result["classes"] = classes
    return result


def describe_outcome(report: GateReport) -> str:
    """One line for logs and Events."""
    sha = (report.dataset_sha256 or "?")[:12]
    accuracy = report.status.get("candidate", {}).get("metrics", {}).get("accuracy")
    return f"golden gate {report.outcome} on dataset {sha} (candidate accuracy {pct(accuracy)}): {report.reason}"
