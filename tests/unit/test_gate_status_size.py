"""A spec the API server accepts (goldenDataset.thresholds.classes: up to 1000 classes, each with its limits) must give
a gate status that can be stored: etcd refuses a request over 1.5 MiB, and the API server's status write with it.
The gate runs for real against a loopback model server; its result goes through the engine into the status the
operator writes (review s25crd finding 1: 2 MB and 11 MB before)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from test_engine_support import World, spec_dict
from test_gate_support import endpoint, http_server, run

from controller.api.status import Phase
from controller.engine import JudgeResult, RunGate
from controller.gate import GateOptions, GateReport, evaluate_dataset_file
from controller.gate.formats import write_jsonl_dataset
from controller.verdict import Outcome, combine

K = 1000  # the CRD's maxProperties for thresholds.classes, and the gate's most classes
PER_CLASS = 25  # enough for every per-class check to be judged (20 or more samples)
STATUS_BUDGET = 256 * 1024  # well under etcd's 1.5 MiB: history, analysis and managedFields share the object
MATCHING = tuple(f"imagenet_class_{i:04d}" for i in range(K))
SPELT_OTHERWISE = tuple(f"n{i:08d}" for i in range(K))


def labelling_model(classes: tuple[str, ...], wrong: bool) -> Any:
    """A V2 model server whose one input feature is the class index: it answers that class's name (or the next
    class's, when `wrong`)."""
    async def handler(request: web.Request) -> web.Response:
        data = (await request.json())["inputs"][0]["data"]
        labels = [classes[(int(x) + wrong) % len(classes)] for x in data]
        return web.json_response({"outputs": [{"name": "label", "shape": [len(labels)], "datatype": "BYTES",
                                               "data": labels}]})
    return handler


def gate(tmp_path: Path, dataset_classes: tuple[str, ...], thresholds: dict[str, Any], wrong: bool) -> GateReport:
    index = np.repeat(np.arange(len(dataset_classes)), PER_CLASS)
    path = tmp_path / "golden.jsonl"
    sha = write_jsonl_dataset(path, dataset_classes, index.reshape(-1, 1).astype(float),
                              [dataset_classes[i] for i in index])

    async def scenario() -> GateReport:
        # Stable answers right: a limit stable fails too is inconclusive (a setup problem), not the candidate's.
        async with http_server(labelling_model(dataset_classes, wrong)) as url, \
                http_server(labelling_model(dataset_classes, False)) as stable:
            return await evaluate_dataset_file(path, {"uri": "configmap://golden/data", "sha256": sha,
                                                      "thresholds": thresholds}, endpoint(url), endpoint(stable),
                                               options=GateOptions(batch_size=1000, concurrency=2))

    return run(scenario())


def engine_status(report: GateReport, thresholds: dict[str, Any]) -> World:
    """The gate's result read by the engine, as the operator hands it over; the status it writes."""
    spec = spec_dict(goldenDataset={"uri": "configmap://golden/data", "sha256": report.dataset_sha256,
                                    "thresholds": thresholds})
    world = World(spec=spec)
    plain = world.execute

    def execute(action: Any) -> Any:
        if isinstance(action, RunGate):
            result: JudgeResult = report.to_judge_result(action.id)
            return result, None, None
        return plain(action)

    world.execute = execute  # type: ignore[method-assign]
    world.run_until(lambda w: w.status.gate is not None and w.status.gate.completed_at is not None)
    return world


def limits(names: tuple[str, ...], count: int, per_class: int) -> dict[str, Any]:
    keys = ("minRecall", "minPrecision", "maxFalsePositiveRate")[:per_class]
    return {"minAccuracy": 0.5, "maxDisagreement": 0.5,
            "classes": {name: {key: 0.5 if key != "maxFalsePositiveRate" else 0.01 for key in keys}
                        for name in names[:count]}}


@pytest.mark.parametrize(("case", "dataset_classes", "count", "per_class", "wrong", "outcome"), [
    ("classes-match", MATCHING, 1000, 3, False, Outcome.PASS),
    ("classes-match-600", MATCHING, 600, 3, False, Outcome.PASS),
    ("classes-spelt-otherwise", SPELT_OTHERWISE, 1000, 1, False, Outcome.INCONCLUSIVE),
    ("classes-spelt-otherwise-150", SPELT_OTHERWISE, 150, 1, False, Outcome.INCONCLUSIVE),
    ("every-class-fails", MATCHING, 1000, 3, True, Outcome.FAIL),
    ("three-classes-none-named", ("safe", "suggestive", "nsfw"), 1000, 3, False, Outcome.INCONCLUSIVE),
])
def test_a_gate_on_1000_classes_gives_a_status_that_can_be_stored(
        tmp_path: Path, case: str, dataset_classes: tuple[str, ...], count: int, per_class: int, wrong: bool,
        outcome: Outcome) -> None:
    thresholds = limits(MATCHING, count, per_class)
    report = gate(tmp_path, dataset_classes, thresholds, wrong)
    checks = len(report.verdicts)
    assert report.outcome is outcome and checks >= count * per_class, report.reason
    world = engine_status(report, thresholds)
    status = world.status.to_dict()
    size = len(json.dumps(status))
    gate_status = world.status.gate
    assert gate_status is not None and gate_status.outcome is outcome
    assert size < STATUS_BUDGET, f"{case}: status {size:,} bytes ({len(json.dumps(status['gate'])):,} of it the gate)"
    # Every failing and inconclusive check is still there, whole or counted and named; passes are counted.
    kept = gate_status.verdicts
    assert combine(list(kept)) is outcome and len(kept) < 150
    counted = sum(v.evidence.get("checks", 1) if v.name.startswith("more checks ") else 1 for v in kept)
    assert counted == checks
    assert all(len(v.reason) < 1000 for v in kept)  # no reason repeats the dataset's 1000 classes
    if outcome is Outcome.PASS:
        assert gate_status.reason == f"{checks} checks passed"  # the count of every check, not of those kept
        assert world.status.phase is Phase.PROGRESSING
    else:
        assert next(v for v in kept if v.name.startswith("more checks ")).outcome is outcome
    # The report: no second copy of the verdicts, per-class numbers for a few classes; the evidence has them all.
    assert "checks" not in gate_status.report and "checks" in report.evidence
    assert len(gate_status.report["candidate"]["metrics"]["perClass"]) <= 20
    assert len(gate_status.report["thresholds"]["classes"]) <= 20
    assert len(report.evidence["candidate"]["metrics"]["perClass"]) == len(dataset_classes)
    assert len(report.evidence["thresholds"]["classes"]) == count


def test_a_reason_names_only_a_few_of_the_datasets_classes(tmp_path: Path) -> None:
    report = gate(tmp_path, SPELT_OTHERWISE, limits(MATCHING, 2, 1), wrong=False)
    undeclared = next(v for v in report.verdicts if v.name == "imagenet_class_0000.minRecall")
    assert undeclared.outcome is Outcome.INCONCLUSIVE
    assert undeclared.reason.endswith("(classes: " + ", ".join(SPELT_OTHERWISE[:20]) + " and 980 more)")


def test_every_verdict_goes_to_the_mlflow_evidence_run(tmp_path: Path) -> None:
    # What status leaves out is kept in the evidence run (a real `mlflow server`): the report with every verdict, and
    # the per-class numbers of every class the thresholds name. MLflow takes 1000 metrics, params and tags together
    # per call: the first call carried 1000 metrics beside them, was refused, and nothing was uploaded.
    import io

    from controller.devstack.mlflow_server import MlflowServer
    from controller.gate import MlflowAccess, record_gate_evidence
    from controller.gate.mlflow_access import MlflowRest

    thresholds = limits(MATCHING, 1000, 3)
    report = gate(tmp_path, MATCHING, thresholds, wrong=False)
    mlflow = MlflowServer(tmp_path / "mlflow")
    try:
        mlflow.start()
        access = MlflowAccess(mlflow.url)
        rest = MlflowRest(access)
        rest.call("POST", "/api/2.0/mlflow/registered-models/create", body={"name": "m"})
        model_run = rest.call("POST", "/api/2.0/mlflow/runs/create", body={"experiment_id": "0"})["run"]["info"]
        rest.call("POST", "/api/2.0/mlflow/model-versions/create", body={
            "name": "m", "source": model_run["artifact_uri"] + "/model", "run_id": model_run["run_id"]})
        record = record_gate_evidence(access, report, model_name="m", candidate_version="1",
                                      request_id="uid/1:gate-1")
        run_info = rest.call("GET", "/api/2.0/mlflow/runs/get", params={"run_id": record.run_id})["run"]
        path = run_info["info"]["artifact_uri"].split("mlflow-artifacts:", 1)[-1].lstrip("/")
        sink = io.BytesIO()
        rest.stream_to(f"/api/2.0/mlflow-artifacts/artifacts/{path}/gate-report.json", sink, 1 << 26)
    finally:
        mlflow.stop()
    artifact = json.loads(sink.getvalue())
    assert len(artifact["verdicts"]) == len(report.verdicts) == 3006
    assert len(artifact["gate"]["candidate"]["metrics"]["perClass"]) == K
    metrics = {metric["key"] for metric in run_info["data"]["metrics"]}
    assert {f"candidate.{name}.recall" for name in MATCHING} <= metrics
