"""Session 33 (review s33cli): a second `dev demo` on the same stack is refused up front, in one line that says how
to get a fresh stack, instead of failing part way with an unexplained ConflictException.

The demo cannot run again on its own leftovers: its ModelRollouts, InferenceServices and golden ConfigMaps keep
their names, and a re-applied ModelRollout still shows the first run's terminal phase, which the demo's watch would
report as the new run's outcome."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from kubernetes import client

from controller.devstack.controlplane import ControlPlane
from controller.devstack.demo import ROLLOUTS, run_demo
from controller.devstack.mlflow_server import MlflowServer
from controller.devstack.processes import StackError
from controller.devstack.prometheus_server import PrometheusServer
from controller.devstack.scenario import golden_config_map_name
from controller.devstack.stack import kubectl
from controller.operator.kubeapi import load_client_config

pytestmark = pytest.mark.integration
NAMESPACE = "moderation"  # where run_demo puts its objects


def test_a_second_demo_on_the_same_stack_is_refused_before_anything_starts(
        control_plane: ControlPlane, mlflow_server: MlflowServer, prometheus: PrometheusServer,
        tmp_path: Path) -> None:
    kubeconfig = control_plane.admin_kubeconfig
    core = client.CoreV1Api(load_client_config(str(kubeconfig)))
    kubectl(kubeconfig, "create", "namespace", NAMESPACE, check=False)
    # What a first run creates first (and leaves, even when it was killed right after).
    left = golden_config_map_name(ROLLOUTS[0].name)
    created = not any(item.metadata.name == left for item in core.list_namespaced_config_map(NAMESPACE).items)
    if created:
        core.create_namespaced_config_map(NAMESPACE, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=left),
                                                                         data={"golden.jsonl": "{}\n"}))
    state_dir = tmp_path / "state"
    state = {"env": {"KUBECONFIG": str(kubeconfig), "MLFLOW_TRACKING_URI": mlflow_server.url,
                     "PROMETHEUS_URL": prometheus.url},
             "prometheusRoot": str(prometheus.root), "stateDir": str(state_dir)}
    out = io.StringIO()
    try:
        with pytest.raises(StackError) as refused:
            run_demo(state, tmp_path / "demo", out=out)
        message = str(refused.value)
        assert "\n" not in message
        assert f"configmap/{left}" in message and f"namespace {NAMESPACE}" in message
        assert f"dev down --state-dir {state_dir}`" in message and f"dev up --state-dir {state_dir}`" in message
        # Refused up front: no operator, exporter or model server was started, nothing printed as begun.
        assert not (tmp_path / "demo").exists()
        assert out.getvalue() == ""
    finally:
        if created:
            core.delete_namespaced_config_map(left, NAMESPACE)
