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

pytestmark = pytest.mark.integration


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
