"""The operator starts against the real API server, explains what it waits for, and survives its own SIGKILL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_kubectl
from tests.integration.operator_process import OperatorProcess, get_rollout, wait_for

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nsfw-classifier.yaml"


@pytest.mark.integration
def test_operator_writes_status_and_resumes_after_kill(kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    manifest = yaml.safe_load(SAMPLE.read_text())
    applied = run_kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", input_text=json.dumps(manifest))
    assert applied.returncode == 0, applied.stderr
    log = tmp_path / "operator.log"

    def observed(generation: int):
        return lambda obj: (obj.get("status") or {}).get("observedGeneration") == generation

    operator = OperatorProcess(kubeconfig, log).start()
    try:
        obj = wait_for(kubeconfig, namespace, "nsfw-classifier", observed(1), log=log)
        status = obj["status"]
        assert status["phase"] == "Pending", status
        # No registry configured and no InferenceService: each is a condition that says so, nothing moves.
        assert "nsfw-classifier version 7" in status["message"]
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["Ready"]["status"] == "False" and conditions["Ready"]["observedGeneration"] == 1
        assert conditions["RegistryAvailable"]["status"] == "False"
        assert "spec.registry.trackingUri" in conditions["RegistryAvailable"]["message"]
        assert conditions["TargetReady"]["reason"] == "TargetNotFound"
        assert status["actions"] == []
        managers = {entry["manager"] for entry in obj["metadata"]["managedFields"]
                    if entry.get("subresource") == "status"}
        assert managers == {"modelrollout-controller"}
        # kopf stores nothing on the object: Argo CD sees no drift.
        assert not obj["metadata"].get("finalizers")
        assert not any(k.startswith("kopf.") for k in (obj["metadata"].get("annotations") or {}))

        operator.kill()
        manifest["spec"]["model"]["version"] = "8"
        changed = run_kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", input_text=json.dumps(manifest))
        assert changed.returncode == 0, changed.stderr
        assert get_rollout(kubeconfig, namespace, "nsfw-classifier")["status"]["observedGeneration"] == 1

        operator = OperatorProcess(kubeconfig, log).start()
        obj = wait_for(kubeconfig, namespace, "nsfw-classifier", observed(2), log=log)
        assert "version 8" in obj["status"]["message"]
        assert [h["detail"] for h in obj["status"]["history"] if h["event"] == "SpecChanged"] == ["generation 1 -> 2"]
    finally:
        operator.stop()
    assert "Traceback" not in log.read_text()
