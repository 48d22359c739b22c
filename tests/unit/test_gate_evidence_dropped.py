"""A gate run a URL fix cancels writes no evidence (review s25r2gate finding 5): its evidence runs in a worker thread
that cancelling the task cannot stop, and it was recorded under the same request id (rollout uid / judge id) as the
run restarted at the fixed URL, so the mistaken URL's pass filled the rerun's MLflow run and tagged the candidate
version `outcome=pass` while the rollout failed it. Real stepper, reconciler, engine, RolloutRuntime.measure_gate and
record_gate_evidence against a real `mlflow server`; run_gate stands in as in test_operator_gate_url_edit (the mistaken
URL passes, the fixed one fails). MLflow answers the first run's evidence only once the rerun has been judged."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from test_operator_gate_url_edit import KEY, NAME, NS, RIGHT, WRONG, fix_the_url
from test_operator_interrupts import until
from test_operator_slots import Store, runtime_replaced, spec

from controller.devstack.mlflow_server import MlflowServer
from controller.engine import TargetObservation
from controller.engine.actions import SetCanaryWeight, StageCandidate, UnstageCandidate
from controller.gate import GateReport, InferenceEndpoint, MlflowAccess
from controller.gate.mlflow_access import MlflowRest
from controller.operator import runtime as runtime_module
from controller.operator.reconciler import Reconciler
from controller.operator.runtime import OperatorConfig, RolloutRuntime, RolloutStepper
from controller.operator.scheduler import WakeupQueue
from controller.verdict import Outcome, Verdict


def test_a_run_cancelled_by_a_url_fix_records_no_evidence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow = MlflowServer(tmp_path / "mlflow")
    mlflow.start()
    try:
        rest = MlflowRest(MlflowAccess(mlflow.url))
        rest.call("POST", "/api/2.0/mlflow/registered-models/create", body={"name": NAME})
        made = rest.call("POST", "/api/2.0/mlflow/runs/create", body={"experiment_id": "0"})["run"]["info"]
        for _ in range(8):  # the spec's candidate is version 8
            rest.call("POST", "/api/2.0/mlflow/model-versions/create", body={
                "name": NAME, "source": made["artifact_uri"] + "/model", "run_id": made["run_id"]})
        runs, version_tags, status = scenario(monkeypatch, mlflow.url, rest)
    finally:
        mlflow.stop()
    assert status["gate"]["outcome"] == "fail" and status["gate"]["report"]["candidate"]["url"] == RIGHT
    assert [reason for reason, _, _ in runs] == [f"judged at {RIGHT}"]  # nothing of the mistaken URL's run
    [(_, outcome, request_id)] = runs
    assert outcome == "fail" and request_id.startswith(f"uid-{NAME}/") and request_id.count("/") == 2
    assert version_tags["modelrollout.gate.outcome"] == "fail"


def scenario(monkeypatch: pytest.MonkeyPatch, tracking_uri: str,
             rest: MlflowRest) -> tuple[list[tuple[str, str, str]], dict[str, str], dict[str, Any]]:
    weights: dict[tuple[str, str], int] = {}
    first_write_started, url_fixed = threading.Event(), threading.Event()

    async def run_gate(dataset: Any, candidate: InferenceEndpoint, stable: Any, **_: Any) -> GateReport:
        await asyncio.sleep(0.2)
        outcome = Outcome.PASS if candidate.base_url == WRONG else Outcome.FAIL
        verdict = Verdict("minAccuracy", outcome, f"judged at {candidate.base_url}", {})
        status = {"dataset": {"uri": "configmap://golden/set.jsonl"},
                  "candidate": {"url": candidate.base_url, "metrics": {"accuracy": 0.9, "perClass": {}},
                                "responses": {"answered": 300, "unanswered": 0}}}
        return GateReport(outcome=outcome, reason=verdict.reason, verdicts=(verdict,), dataset_sha256="ab" * 32,
                          status=status, evidence={"candidate": {"url": candidate.base_url}})

    real_call = MlflowRest.call

    def call(self: MlflowRest, method: str, path: str, **kwargs: Any) -> Any:
        # The mistaken URL's evidence: MLflow answers it only once the rerun at the fixed URL has been judged.
        if path == "/api/2.0/mlflow/runs/search" and not first_write_started.is_set():
            first_write_started.set()
            assert url_fixed.wait(10)
        return real_call(self, method, path, **kwargs)

    def observe_target(self: RolloutRuntime) -> tuple[TargetObservation, None]:
        staged = KEY in weights
        return TargetObservation(ready=True, stable_version="7", canary_version="8" if staged else None,
                                 canary_ready=staged, canary_weight=weights.get(KEY, 0)), None

    def act(self: RolloutRuntime, action: Any, status: Any) -> None:
        if isinstance(action, StageCandidate):
            weights[KEY] = 0
        elif isinstance(action, SetCanaryWeight) and not action.withdraw:
            weights[KEY] = action.weight
        elif isinstance(action, SetCanaryWeight | UnstageCandidate):
            weights.pop(KEY, None)

    runtime_replaced(monkeypatch, observe_target=observe_target, act=act, credentials=lambda self: None)
    monkeypatch.setattr(runtime_module, "run_gate", run_gate)
    monkeypatch.setattr(MlflowRest, "call", call)
    store = Store()
    stepper = RolloutStepper(None, OperatorConfig(scrape_interval=dt.timedelta(0),  # type: ignore[arg-type]
                                                  default_tracking_uri=tracking_uri))
    stepper.store = store  # type: ignore[assignment]
    queue = WakeupQueue(Reconciler(store, stepper.step).reconcile)  # type: ignore[arg-type]
    store.queue = queue

    async def main() -> None:
        running = asyncio.create_task(queue.run(concurrency=2))
        try:
            store.create(NS, NAME, spec(NAME, target={"kserve": {"inferenceService": NAME, "candidateUrl": WRONG}}))
            await until(first_write_started.is_set, 10)
            fix_the_url(store)
            await until(lambda: (store.status(*KEY).get("gate") or {}).get("completedAt"), 10)
            url_fixed.set()  # the rerun's evidence is written: the first run's thread goes on now
            await asyncio.sleep(2)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)

    asyncio.run(main())
    monkeypatch.undo()
    experiment = rest.call("GET", "/api/2.0/mlflow/experiments/get-by-name",
                           params={"experiment_name": "modelrollout-golden-gate"})["experiment"]["experiment_id"]
    found = []
    for run in rest.call("POST", "/api/2.0/mlflow/runs/search", body={"experiment_ids": [experiment]})["runs"]:
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        sink = io.BytesIO()
        path = run["info"]["artifact_uri"].split("mlflow-artifacts:", 1)[-1].lstrip("/")
        rest.stream_to("/api/2.0/mlflow-artifacts/artifacts/" + path + "/gate-report.json", sink, 1 << 20)
        found.append((json.loads(sink.getvalue())["verdicts"][0]["reason"], tags["modelrollout.gate.outcome"],
                      tags["modelrollout.gate.request_id"]))
    version = rest.call("GET", "/api/2.0/mlflow/model-versions/get", params={"name": NAME, "version": "8"})
    return found, {t["key"]: t["value"] for t in version["model_version"].get("tags", [])}, store.status(*KEY)
