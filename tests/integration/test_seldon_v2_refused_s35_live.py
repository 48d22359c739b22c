"""Review s34seldon, end to end (operator process, real kube-apiserver with the upstream Seldon CRDs, the Seldon v2
stand-in and its mesh, real MLflow): a mirror of the stable Model added by hand mid-canary makes the rollback's
experiment one Seldon's scheduler refuses (a name both candidate and mirror), so users stay on the split it last
started. The rollback must not read as done: RollingBack, saying why, until the mirror goes and Seldon starts it."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.devstack.scenario import Scenario
from controller.operator.kubeapi import load_client_config
from tests.integration.operator_process import send_command
from tests.integration.test_rollout_kserve import apply, start_operator
from tests.integration.test_seldon_withdraw_record_s30_live import FINAL, STEPS, paused_at_10, wait

pytestmark = pytest.mark.integration


def test_a_rollback_seldon_refuses_holds_until_seldon_starts_it(kubeconfig: Path, tmp_path: Path,
                                                                 seldon_scenario: Any) -> None:
    scenario: Scenario = seldon_scenario("seldonExperiment", "clean")
    objects = client.CustomObjectsApi(load_client_config(str(kubeconfig)))
    key = ("mlops.seldon.io", "v1alpha1", scenario.namespace, "experiments", scenario.model_name)
    stable, candidate = (scenario.serving_name(v) for v in (scenario.stable_version, scenario.candidate_version))
    mesh = scenario.standin.mesh(scenario.namespace)

    def edit(spec: dict[str, Any]) -> None:  # a human's `kubectl edit`
        objects.patch_namespaced_custom_object(*key, {"spec": spec}, field_manager="kubectl-edit")
        scenario.standin.reconcile(scenario.namespace, scenario.model_name)

    operator = start_operator(kubeconfig, tmp_path)
    try:
        apply(kubeconfig, scenario.rollout(steps=STEPS, progressDeadline="120s"))
        wait(kubeconfig, scenario, paused_at_10, 150, "paused at 10%")
        edit({"mirror": {"name": stable, "percent": 10}})
        started = mesh.experiments[scenario.model_name]
        assert (candidate, 10) in started.candidates  # the mirror changes nothing Seldon serves: it refuses it
        send_command(kubeconfig, scenario.namespace, scenario.model_name, "abort", "oncall", uuid.uuid4().hex[:8])
        refused = f"Seldon refuses the experiment as written ({stable} is named twice among its candidates and mirror)"
        status = wait(kubeconfig, scenario, lambda s: s.get("phase") == "RollingBack"
                      and refused in (s.get("message") or ""), 60, "the rollback held")
        time.sleep(3)  # several reconciles: none may confirm it
        status = wait(kubeconfig, scenario, lambda s: True, 5, "the status")
        assert status["phase"] == "RollingBack", status.get("message")
        assert f"does not report stable version {scenario.stable_version} serving and ready yet" in status["message"]
        assert not {"TrafficRestored", "Recovered"} & {h["event"] for h in status.get("history") or []}
        [target_ready] = [c for c in status["conditions"] if c["type"] == "TargetReady"]
        assert (target_ready["status"], target_ready["reason"]) == ("False", "TargetNotReady")
        assert refused in target_ready["message"] and "each candidate and mirror must be unique" in \
            target_ready["message"], target_ready
        assert mesh.experiments[scenario.model_name] == started  # users are still on the candidate's 10%
        assert [(c["name"], c["weight"]) for c in objects.get_namespaced_custom_object(*key)["spec"]["candidates"]] \
            == [(stable, 100)]

        edit({"mirror": None})  # on-call removes the mirror: Seldon starts the rollback's experiment
        status = wait(kubeconfig, scenario, lambda s: s.get("phase") in FINAL, 60, "the end")
        assert status["phase"] == "RolledBack", status.get("message")
        assert mesh.experiments[scenario.model_name].candidates == [(stable, 100)]
        assert "TrafficRestored" in {h["event"] for h in status["history"]}
    finally:
        operator.stop()
