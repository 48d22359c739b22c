"""The README's main job (`hack/demo.sh` -> `modelrollout dev demo`) on the session's stack: three rollouts,
each ending as the README says."""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client

from controller.devstack.controlplane import ControlPlane
from controller.devstack.demo import run_demo, watch
from controller.devstack.mlflow_server import MlflowServer
from controller.devstack.processes import StackError, start
from controller.devstack.prometheus_server import PrometheusServer
from controller.devstack.scenario import STABLE_ALIAS, STORAGE_URI_TEMPLATE, Scenario
from controller.devstack.stack import kubectl
from controller.operator.kubeapi import load_client_config
from controller.registry import MlflowRegistry
from controller.registry.types import REJECTED_TAG
from tests.integration.operator_process import get_rollout
from tests.integration.test_rollout_kserve import isvc

pytestmark = pytest.mark.integration
NAMESPACE = "moderation"  # where run_demo puts its rollouts and InferenceServices


def test_demo_ends_each_rollout_as_the_readme_says(control_plane: ControlPlane, mlflow_server: MlflowServer,
                                                   prometheus: PrometheusServer, tmp_path: Path) -> None:
    state = {"env": {"KUBECONFIG": str(control_plane.admin_kubeconfig), "MLFLOW_TRACKING_URI": mlflow_server.url,
                     "PROMETHEUS_URL": prometheus.url},
             "prometheusRoot": str(prometheus.root)}
    out = io.StringIO()
    code = run_demo(state, tmp_path / "demo", out=out)
    text = out.getvalue()
    assert code == 0, text[-4000:]
    summary = json.loads(text.strip().splitlines()[-1])
    assert summary["as_expected"] is True
    assert [tuple(o) for o in summary["outcomes"]] == [
        ("nsfw-classifier", "Succeeded", None), ("nsfw-classifier-poisoned", "RolledBack", "GateFailed"),
        ("nsfw-classifier-live", "RolledBack", "AnalysisFailed")]
    assert "after its first live request" in text  # the live catch is timed for the reader

    # What the README's "Set up" promises besides the phases, read from MLflow and the InferenceServices the
    # demo leaves behind (its operator has stopped: nothing changes any more).
    kubeconfig = control_plane.admin_kubeconfig
    registry = MlflowRegistry(mlflow_server.url)
    for name, phase, _ in summary["outcomes"]:
        status = get_rollout(kubeconfig, NAMESPACE, name)["status"]
        candidate = status["candidate"]["version"]
        spec = isvc(kubeconfig, NAMESPACE, name)["spec"]
        predictor = spec["predictor"]
        tags = registry.resolve(name, version=candidate).tags
        if phase == "Succeeded":
            # The clean retrain: @production moved to it, and it serves all traffic.
            assert registry.verify_alias(name, STABLE_ALIAS) == candidate, name
            assert REJECTED_TAG not in tags, (name, tags)
            assert predictor["model"]["storageUri"] == STORAGE_URI_TEMPLATE.format(name=name, version=candidate)
            assert "canaryTrafficPercent" not in predictor and "canary" not in spec, spec
        else:
            # The backdoored ones: tagged rejected, @production left on stable, withdrawn from the
            # InferenceService (its spec no longer names the candidate's model, no traffic to a canary).
            stable = status["stable"]["version"]
            assert registry.verify_alias(name, STABLE_ALIAS) == stable, name
            assert tags.get(REJECTED_TAG) == "true", (name, tags)
            assert predictor["model"]["storageUri"] == STORAGE_URI_TEMPLATE.format(name=name, version=stable)
            assert f'"{STORAGE_URI_TEMPLATE.format(name=name, version=candidate)}"' not in json.dumps(spec), spec
            assert not predictor.get("canaryTrafficPercent"), predictor


def test_the_demo_stops_at_once_when_its_operator_exits(control_plane: ControlPlane, tmp_path: Path) -> None:
    """Was: one status line, then silence until the 300 s timeout, for each of the three rollouts."""
    kubeconfig = control_plane.admin_kubeconfig
    api_client = load_client_config(str(kubeconfig))
    namespace = "demo-watch"
    kubectl(kubeconfig, "create", "namespace", namespace, check=False)
    scenario = Scenario(api_client, "http://127.0.0.1:9", namespace, tmp_path, model_name="watched",
                        stable_version="1", candidate_version="2", dataset_sha256="0" * 64)
    kubectl(kubeconfig, "apply", "-f", "-", input_text=json.dumps(scenario.rollout()))
    operator = start("operator", [sys.executable, "-c", "import sys, time; print('Traceback: the last words', "
                                  "flush=True); time.sleep(1); sys.exit(3)"], tmp_path / "operator.log")
    exporter = start("exporter", ["sleep", "120"], tmp_path / "exporter.log")
    out = io.StringIO()
    started = time.monotonic()
    try:
        with pytest.raises(StackError, match=r"the demo's operator exited .*/operator\.log: Traceback: the last words"):
            watch(client.CustomObjectsApi(api_client), namespace, "watched", out, 300, needed=(operator, exporter))
        assert time.monotonic() - started < 15
        assert "step=-" in out.getvalue()  # it did watch until then
    finally:
        exporter.stop()
        operator.stop()
        # Not left for the operators of other tests that watch every namespace.
        kubectl(kubeconfig, "delete", "mro", "watched", "-n", namespace, "--wait=false", check=False)
