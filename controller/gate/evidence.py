"""Keep the gate's evidence in MLflow, linked to the candidate version, so it outlives the resource.

One run per gate request in the experiment `modelrollout-golden-gate`: tags say which model, versions, dataset and
outcome; metrics carry the deciding numbers; `gate-report.json` holds the full record. The candidate version gets
tags pointing at that run. The outcome is tagged last, just before the run is FINISHED: a run left RUNNING by a
killed operator says nothing of it, and the rollout's next gate run marks it KILLED. Recording the same request_id
twice reuses the run and logs only the numbers it does not hold yet, so an operator that restarts mid-way leaves no
duplicate runs or metric points; the run is created without blind retries (a run created whose answer was lost is
looked up before creating another).

Blocking (mlflow-skinny's HTTP client): call it with `await asyncio.to_thread(record_gate_evidence, ...)`.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller.gate.errors import ErrorKind, SourceError
from controller.gate.mlflow_access import MlflowAccess, MlflowRest, experiment_id_for, json_bytes, upload_artifact
from controller.gate.runner import GateReport
from controller.redaction import redacted_url
from controller.verdict import DATASET_INTEGRITY, Outcome

EXPERIMENT_NAME = "modelrollout-golden-gate"
REPORT_ARTIFACT = "gate-report.json"
TAG_PREFIX = "modelrollout.gate"
_LOG_BATCH_LIMIT = 1000
DATASET_MISMATCH = "dataset-mismatch"  # the version tag's outcome when only the dataset's hash failed
# What an MLflow search literal may hold: its parser unescapes nothing (a version number, a namespace/name, a request
# id "<uid>/<attempt>:gate-<n>" are made of these).
_SEARCH_SAFE = re.compile(r"[A-Za-z0-9._:/@+-]+")
_SEARCH_LIMIT = 100  # runs of one request_id looked at: a few at most, left by a create retried past a lost answer
_METRIC_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


@dataclass(frozen=True)
class EvidenceRecord:
    run_id: str
    experiment_id: str
    report_uri: str  # runs:/<run_id>/gate-report.json
    version_tags: dict[str, str]


def record_gate_evidence(access: MlflowAccess, report: GateReport, *, model_name: str, candidate_version: str,
                         stable_version: str | None = None, rollout: str | None = None,
                         request_id: str | None = None, experiment_name: str = EXPERIMENT_NAME,
                         dropped: Callable[[], bool] = lambda: False) -> EvidenceRecord:
    """Write the run, its metrics and JSON report, and tag the candidate version. Raises SourceError.

    dropped: asked before each write; once true (the gate run was cancelled, e.g. its URL fixed, while this ran in a
    thread nobody can stop) nothing more is written: a stale pass must not tag the version or fill the rerun's run."""
    rest = MlflowRest(access)

    def still_asked() -> None:
        if dropped():
            raise SourceError(ErrorKind.ERROR, "the gate run was dropped (its URLs changed, or the rollout did) "
                                               "while its evidence was written: nothing more is written")

    def write(path: str, body: dict[str, Any]) -> Any:
        still_asked()
        return rest.call("POST", path, body=body)

    experiment_id = experiment_id_for(rest, experiment_name)
    run = _existing_run(rest, experiment_id, request_id) if request_id else None
    # What the run is about; the verdict's own tags are written last (below), with the run's end.
    tags = {f"{TAG_PREFIX}.model": model_name, f"{TAG_PREFIX}.candidate_version": candidate_version,
            f"{TAG_PREFIX}.dataset_sha256": report.dataset_sha256 or ""}
    if stable_version:
        tags[f"{TAG_PREFIX}.stable_version"] = stable_version
    if rollout:
        tags[f"{TAG_PREFIX}.rollout"] = rollout
    if request_id:
        tags[f"{TAG_PREFIX}.request_id"] = request_id
    now_ms = int(time.time() * 1000)
    if run is None:
        still_asked()
        run = _create_run(rest, experiment_id, request_id, {
            "experiment_id": experiment_id, "start_time": now_ms,
            "run_name": f"gate-{model_name}-v{candidate_version}",
            "tags": [{"key": key, "value": value} for key, value in tags.items()]})
    info = run.get("info", {})
    run_id = str(info.get("run_id") or info.get("run_uuid") or "")
    artifact_root = str(info.get("artifact_uri") or "")
    if not run_id:
        raise SourceError(ErrorKind.ERROR, "MLflow created a run but returned no run id")
    if rollout:
        _end_abandoned(rest, experiment_id, run, tags, write)
    logged = _logged_metrics(run)  # a re-record after a restart: the history keeps one point per number
    metrics = [{"key": key, "value": value, "timestamp": now_ms, "step": 0}
               for key, value in gate_metrics(report).items() if logged.get(key) != value]
    dataset_uri = redacted_url(str(report.status.get("dataset", {}).get("uri", "")))  # a presigned URL's query
    params = [{"key": "dataset_uri", "value": dataset_uri[:6000]}]
    tag_list = [{"key": key, "value": value} for key, value in tags.items()]
    # MLflow takes 1000 metrics, params and tags together per call: with per-class limits on 1000 classes the
    # first call refused them all, and the report below was never uploaded.
    first = _LOG_BATCH_LIMIT - len(params) - len(tag_list)
    write("/api/2.0/mlflow/runs/log-batch", {
        "run_id": run_id, "metrics": metrics[:first], "params": params, "tags": tag_list})
    for start in range(first, len(metrics), _LOG_BATCH_LIMIT):
        write("/api/2.0/mlflow/runs/log-batch", {"run_id": run_id, "metrics": metrics[start:start + _LOG_BATCH_LIMIT]})
    still_asked()
    upload_artifact(access, f"{artifact_root.rstrip('/')}/{REPORT_ARTIFACT}",
                    json_bytes({"verdicts": [v.to_dict() for v in report.verdicts], "gate": report.evidence}),
                    content_type="application/json")
    # The outcome only now, next to the run's end: a run its operator was killed in (or whose gate moved to fixed
    # URLs, a new request id) must not be left RUNNING saying "pass" for a candidate the rerun rejected.
    write("/api/2.0/mlflow/runs/log-batch", {"run_id": run_id, "tags": [
        {"key": f"{TAG_PREFIX}.outcome", "value": str(report.outcome)},
        {"key": f"{TAG_PREFIX}.reason", "value": report.reason[:4000]}]})
    write("/api/2.0/mlflow/runs/update", {"run_id": run_id, "status": "FINISHED", "end_time": int(time.time() * 1000)})
    report_uri = f"runs:/{run_id}/{REPORT_ARTIFACT}"
    version_tags = {f"{TAG_PREFIX}.run_id": run_id, f"{TAG_PREFIX}.outcome": _version_outcome(report),
                    f"{TAG_PREFIX}.dataset_sha256": report.dataset_sha256 or "",
                    f"{TAG_PREFIX}.report": report_uri}
    for key, value in version_tags.items():
        write("/api/2.0/mlflow/model-versions/set-tag", {
            "name": model_name, "version": str(candidate_version), "key": key, "value": value})
    return EvidenceRecord(run_id=run_id, experiment_id=experiment_id, report_uri=report_uri,
                          version_tags=version_tags)


def _version_outcome(report: GateReport) -> str:
    """What the candidate version is tagged with: a dataset that is not the pinned one judged nothing of it, so
    that is no "fail" of the model (the run keeps the gate's own outcome)."""
    failed = {verdict.name for verdict in report.verdicts if verdict.outcome is Outcome.FAIL}
    return DATASET_MISMATCH if failed == {DATASET_INTEGRITY} else str(report.outcome)


def gate_metrics(report: GateReport) -> dict[str, float]:
    """The deciding numbers as MLflow metrics (undefined ones are left out, never written as 0)."""
    metrics: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        if isinstance(value, int | float) and not isinstance(value, bool):
            metrics[_METRIC_KEY_UNSAFE.sub("_", key)[:250]] = float(value)

    status = report.status
    # Per class: those status shows and every class the thresholds name (status may show only some of them).
    named = set((report.evidence.get("thresholds") or {}).get("classes") or {})
    for side in ("candidate", "stable"):
        block = status.get(side)
        if not block:
            continue
        put(f"{side}.accuracy", block["metrics"].get("accuracy"))
        put(f"{side}.samples_answered", block["responses"].get("answered"))
        put(f"{side}.samples_unanswered", block["responses"].get("unanswered"))
        shown = block["metrics"].get("perClass", {})
        every = ((report.evidence.get(side) or {}).get("metrics") or {}).get("perClass") or shown
        for label, values in every.items():
            if label in shown or label in named:
                for name in ("precision", "recall", "falsePositiveRate"):
                    put(f"{side}.{label}.{name}", values.get(name))
    comparison = status.get("comparison") or {}
    put("disagreement", comparison.get("disagreement"))
    put("accuracy_drop", comparison.get("accuracyDrop"))
    for tag, values in (status.get("slices") or {}).items():
        put(f"slice.{tag}.candidate_accuracy", values.get("candidateAccuracy"))
        put(f"slice.{tag}.disagreement", (values.get("comparison") or {}).get("disagreement"))
    dataset = status.get("dataset") or {}
    put("dataset.usable_samples", dataset.get("usable"))
    put("dataset.unusable_samples", dataset.get("unusable"))
    return metrics


def _logged_metrics(run: dict[str, Any]) -> dict[str, float]:
    """The latest value of each metric a found run already holds (runs/search answers with the run's data)."""
    data = run.get("data") if isinstance(run.get("data"), dict) else {}
    return {str(metric.get("key")): metric.get("value") for metric in data.get("metrics") or []
            if isinstance(metric, dict)}


def _create_run(rest: MlflowRest, experiment_id: str, request_id: str | None, body: dict[str, Any]) -> Any:
    """runs/create, never retried blind: a server that created the run but answered late (a read timeout, a proxy's
    5xx) would create a second one for the same request. Retried by us only, after looking the request's run up."""
    failures = 0
    while True:
        try:
            return rest.call("POST", "/api/2.0/mlflow/runs/create", body=body, retry=False).get("run", {})
        except SourceError as exc:
            failures += 1
            # Without a request_id a created run cannot be found again: one try only.
            if exc.kind is not ErrorKind.UNAVAILABLE or request_id is None or failures > rest.access.max_retries:
                raise
        if (run := _existing_run(rest, experiment_id, request_id)) is not None:
            return run


def _end_abandoned(rest: MlflowRest, experiment_id: str, run: dict[str, Any], tags: dict[str, str],
                   write: Callable[[str, dict[str, Any]], Any]) -> None:
    """Mark KILLED the RUNNING runs of this rollout's gate for this candidate that started before this one: a rollout
    runs one gate at a time, so they were left by a killed operator or a gate moved to fixed URLs. Idempotent (only
    RUNNING runs are looked at); a newer run is left alone (a dropped thread that got this far must not end it)."""
    info = run.get("info") if isinstance(run.get("info"), dict) else {}
    run_id, start = str(info.get("run_id") or info.get("run_uuid") or ""), str(info.get("start_time", ""))
    if not start.isdigit():
        return
    keys = (f"{TAG_PREFIX}.model", f"{TAG_PREFIX}.candidate_version", f"{TAG_PREFIX}.rollout")
    # MLflow's filter parser strips a literal's quotes but unescapes nothing: a model name with ' or a trailing \
    # matches nothing or is refused (HTTP 400, every gate's evidence lost). So only the tags that cannot hold them
    # (a version number; namespace/name) go into the filter, and all three are compared here.
    same = " and ".join(f"tags.`{key}` = {_quoted(tags[key])}" for key in keys[1:] if _SEARCH_SAFE.fullmatch(tags[key]))
    found = rest.call("POST", "/api/2.0/mlflow/runs/search", body={
        "experiment_ids": [experiment_id], "max_results": _SEARCH_LIMIT,
        "filter": f"{same + ' and ' if same else ''}attributes.status = 'RUNNING'"})
    for other in found.get("runs") or []:
        other_info = other.get("info") if isinstance(other, dict) and isinstance(other.get("info"), dict) else {}
        other_id, other_start = str(other_info.get("run_id") or ""), str(other_info.get("start_time", ""))
        if any(_run_tags(other).get(key) != tags[key] for key in keys):
            continue
        if other_id and other_id != run_id and other_start.isdigit() and int(other_start) < int(start):
            write("/api/2.0/mlflow/runs/update", {"run_id": other_id, "status": "KILLED",
                                                  "end_time": int(time.time() * 1000)})


def _existing_run(rest: MlflowRest, experiment_id: str, request_id: str) -> dict[str, Any] | None:
    """The request's run that holds its evidence (a FINISHED one, else the oldest), chosen the same way every time:
    MLflow's own order (newest first) could pick an empty twin left by a lost create answer. An id no search literal
    can hold is never found (a run is created, as without one)."""
    if not _SEARCH_SAFE.fullmatch(request_id):
        return None
    found = rest.call("POST", "/api/2.0/mlflow/runs/search", body={
        "experiment_ids": [experiment_id], "max_results": _SEARCH_LIMIT, "order_by": ["attributes.start_time ASC"],
        "filter": f"tags.`{TAG_PREFIX}.request_id` = {_quoted(request_id)}"})
    runs = [run for run in found.get("runs") or [] if isinstance(run, dict)]
    return min(runs, key=_evidence_order, default=None)


def _quoted(value: str) -> str:
    """A string literal for an MLflow search filter, for values made only of _SEARCH_SAFE's characters (MLflow
    unescapes nothing, so no other value can be written as one: ValueError)."""
    if not _SEARCH_SAFE.fullmatch(value):
        raise ValueError(f"{value!r} cannot be written as an MLflow search literal")
    return f"'{value}'"


def _run_tags(run: Any) -> dict[str, str]:
    data = run.get("data") if isinstance(run, dict) and isinstance(run.get("data"), dict) else {}
    return {str(tag.get("key")): str(tag.get("value")) for tag in data.get("tags") or [] if isinstance(tag, dict)}


def _evidence_order(run: dict[str, Any]) -> tuple[bool, int, str]:
    info = run.get("info") if isinstance(run.get("info"), dict) else {}
    start = str(info.get("start_time", ""))
    return (info.get("status") != "FINISHED", int(start) if start.isdigit() else sys.maxsize,
            str(info.get("run_id") or info.get("run_uuid") or ""))
