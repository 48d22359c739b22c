"""An evidence run its operator was killed in says nothing of the outcome, and the gate's next run ends it (review
s26chaos L1). The run was created with `outcome=pass` before anything else was written; killed right there, then
restarted with the gate's URLs fixed (a new request id), the mistaken URL's run stayed RUNNING saying "pass" for a
candidate the rerun failed. record_gate_evidence against a real `mlflow server`; the kill is `dropped` turning true
once the run exists (nothing more is written, as after a SIGKILL)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from controller.devstack.mlflow_server import MlflowServer
from controller.gate import GateReport, MlflowAccess, record_gate_evidence
from controller.gate.errors import SourceError
from controller.gate.evidence import EXPERIMENT_NAME
from controller.gate.mlflow_access import MlflowRest
from controller.verdict import Outcome, Verdict

MODEL = f"evidence-abandoned-{uuid.uuid4().hex[:8]}"  # the session's MLflow holds other tests' models and runs
ROLLOUT = "moderation/nsfw"
AT_WRONG, AT_FIXED = "uid-1/1:gate-1/aaaaaaaaaaaa", "uid-1/1:gate-1/bbbbbbbbbbbb"


def report(outcome: Outcome) -> GateReport:
    verdict = Verdict("minAccuracy", outcome, f"accuracy judged {outcome}", {})
    status = {"dataset": {"uri": "configmap://golden/set.jsonl"},
              "candidate": {"metrics": {"accuracy": 0.9, "perClass": {}}, "responses": {"answered": 300}}}
    return GateReport(outcome=outcome, reason=verdict.reason, verdicts=(verdict,), dataset_sha256="ab" * 32,
                      status=status, evidence={})


def runs(rest: MlflowRest) -> dict[str, dict[str, Any]]:
    """request id -> status and tags of its run (one each)."""
    experiment = rest.call("GET", "/api/2.0/mlflow/experiments/get-by-name",
                           params={"experiment_name": EXPERIMENT_NAME})["experiment"]["experiment_id"]
    found: dict[str, dict[str, Any]] = {}
    body = {"experiment_ids": [experiment], "filter": f"tags.`modelrollout.gate.model` = '{MODEL}'"}
    for run in rest.call("POST", "/api/2.0/mlflow/runs/search", body=body).get("runs", []):
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        assert tags["modelrollout.gate.request_id"] not in found, "two runs for one request"
        found[tags["modelrollout.gate.request_id"]] = {"status": run["info"]["status"], **tags}
    return found


@pytest.mark.integration
def test_a_run_killed_after_its_create_says_no_outcome_and_the_rerun_ends_it(mlflow_server: MlflowServer) -> None:
    access = MlflowAccess(mlflow_server.url)
    rest = MlflowRest(access)
    rest.call("POST", "/api/2.0/mlflow/registered-models/create", body={"name": MODEL})
    made = rest.call("POST", "/api/2.0/mlflow/runs/create", body={"experiment_id": "0"})["run"]["info"]
    for _ in range(2):
        rest.call("POST", "/api/2.0/mlflow/model-versions/create", body={
            "name": MODEL, "source": made["artifact_uri"] + "/model", "run_id": made["run_id"]})

    def killed_after_create(request_id: str, rollout: str, outcome: Outcome) -> None:
        with pytest.raises(SourceError, match="dropped"):
            record_gate_evidence(access, report(outcome), model_name=MODEL, candidate_version="2",
                                 stable_version="1", rollout=rollout, request_id=request_id,
                                 dropped=lambda: request_id in runs(rest))

    def recorded(request_id: str, outcome: Outcome) -> None:
        record_gate_evidence(access, report(outcome), model_name=MODEL, candidate_version="2", stable_version="1",
                             rollout=ROLLOUT, request_id=request_id)

    # Another rollout's gate for the same version, killed too: it is not this rollout's to end.
    killed_after_create("uid-2/1:gate-1/cccccccccccc", "moderation/other", Outcome.PASS)
    killed_after_create(AT_WRONG, ROLLOUT, Outcome.PASS)  # a pass at the mistaken URL, killed right there
    abandoned = runs(rest)[AT_WRONG]
    assert abandoned["status"] == "RUNNING"
    assert "modelrollout.gate.outcome" not in abandoned and "modelrollout.gate.reason" not in abandoned, abandoned
    assert abandoned["modelrollout.gate.candidate_version"] == "2"  # what it is about is known from the start

    recorded(AT_FIXED, Outcome.FAIL)  # restarted at the fixed URLs: the gate fails
    recorded(AT_FIXED, Outcome.FAIL)  # and a restart after that changes nothing
    found = runs(rest)
    assert {request: run["status"] for request, run in found.items()} == {
        AT_WRONG: "KILLED", AT_FIXED: "FINISHED", "uid-2/1:gate-1/cccccccccccc": "RUNNING"}
    assert "modelrollout.gate.outcome" not in found[AT_WRONG]
    assert found[AT_FIXED]["modelrollout.gate.outcome"] == "fail"
    assert found[AT_FIXED]["modelrollout.gate.reason"] == "accuracy judged fail"
