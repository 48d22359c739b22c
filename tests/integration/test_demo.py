"""The README's main job (`hack/demo.sh` -> `modelrollout dev demo`) on the session's stack: three rollouts,
each ending as the README says."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from controller.devstack.controlplane import ControlPlane
from controller.devstack.demo import run_demo
from controller.devstack.mlflow_server import MlflowServer
from controller.devstack.prometheus_server import PrometheusServer
from controller.devstack.scenario import STABLE_ALIAS, STORAGE_URI_TEMPLATE
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
