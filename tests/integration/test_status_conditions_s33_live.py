"""Another field manager's status condition stays its own (s33): the operator's server-side apply of status holds only
its own condition types, so a tool that applies `ExternalCheck` can still change and withdraw it after the operator
wrote, and an operator that co-owned such an entry before (as older ones did) releases it on its next write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controller.api.status import ConditionType
from controller.operator.kubeapi import FIELD_MANAGER
from tests.conftest import run_kubectl
from tests.integration.operator_process import OperatorProcess, get_rollout, wait_for

pytestmark = pytest.mark.integration
NAME = "ext"
EXTERNAL = {"type": "ExternalCheck", "status": "True", "reason": "Fine", "message": "ok",
            "lastTransitionTime": "2026-01-05T08:00:00Z"}


def _apply_status(kubeconfig: Path, namespace: str, manager: str, conditions: list[dict[str, Any]],
                  force: bool = False) -> tuple[int, str]:
    body = {"apiVersion": "modelrollout.io/v1alpha1", "kind": "ModelRollout",
            "metadata": {"name": NAME, "namespace": namespace}, "status": {"conditions": conditions}}
    args = ["apply", "--server-side", f"--field-manager={manager}", "--subresource=status", "-f", "-"]
    result = run_kubectl(kubeconfig, *args, *(["--force-conflicts"] if force else []), input_text=json.dumps(body))
    return result.returncode, result.stdout + result.stderr


def _controller_fields(obj: dict[str, Any]) -> str:
    return json.dumps([m.get("fieldsV1") for m in obj["metadata"]["managedFields"] if m["manager"] == FIELD_MANAGER])


def _conditions(obj: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions", [])}


@pytest.mark.parametrize("co_owned_before", [False, True], ids=["fresh", "co-owned-before"])
def test_another_managers_condition_stays_its_own(kubeconfig: Path, namespace: str, tmp_path: Path,
                                                  co_owned_before: bool) -> None:
    manifest = {"apiVersion": "modelrollout.io/v1alpha1", "kind": "ModelRollout",
                "metadata": {"name": NAME, "namespace": namespace},
                "spec": {"model": {"name": "m", "version": "2"}, "registry": {"trackingUri": "http://127.0.0.1:1"},
                         "target": {"kserve": {"inferenceService": "nosuch"}},
                         "canary": {"steps": [{"setWeight": 50}]},
                         "goldenDataset": {"uri": "configmap://g/golden.jsonl", "sha256": "a" * 64}}}
    created = run_kubectl(kubeconfig, "apply", "-f", "-", input_text=json.dumps(manifest))
    assert created.returncode == 0, created.stderr
    assert _apply_status(kubeconfig, namespace, "other-tool", [EXTERNAL])[0] == 0
    if co_owned_before:
        # What an older operator wrote: the foreign entry carried in its forced apply, so it co-owns it.
        code, out = _apply_status(kubeconfig, namespace, FIELD_MANAGER, [EXTERNAL], force=True)
        assert code == 0, out
        assert "ExternalCheck" in _controller_fields(get_rollout(kubeconfig, namespace, NAME))
    log = tmp_path / "operator.log"
    with OperatorProcess(kubeconfig, log):
        # A reconcile wrote the operator's own conditions (and, co-owned before, left the foreign entry out).
        obj = wait_for(kubeconfig, namespace, NAME,
                       lambda o: str(ConditionType.READY) in _conditions(o)
                       and str(ConditionType.PROGRESSING) in _conditions(o), timeout=90, log=log)
        obj = wait_for(kubeconfig, namespace, NAME, lambda o: "ExternalCheck" not in _controller_fields(o),
                       timeout=30, log=log)
        assert _conditions(obj)["ExternalCheck"] == "True"

        code, out = _apply_status(kubeconfig, namespace, "other-tool", [{**EXTERNAL, "status": "False",
                                                                         "reason": "Broken"}])
        assert code == 0, out  # no conflict with modelrollout-controller: it owns none of the entry
        assert _conditions(get_rollout(kubeconfig, namespace, NAME))["ExternalCheck"] == "False"

        code, out = _apply_status(kubeconfig, namespace, "other-tool", [])
        assert code == 0, out
        obj = get_rollout(kubeconfig, namespace, NAME)
        assert "ExternalCheck" not in _conditions(obj)  # withdrawn by its owner: gone, not kept by the operator
        assert {str(ConditionType.READY), str(ConditionType.PROGRESSING)} <= set(_conditions(obj))
        assert "ExternalCheck" not in _controller_fields(obj)
