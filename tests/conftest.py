"""Session-wide real servers: the same Stack code that `modelrollout dev up` runs."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from controller.devstack.controlplane import ControlPlane
from controller.devstack.mlflow_server import MlflowServer
from controller.devstack.processes import interrupt_on_termination
from controller.devstack.prometheus_server import PrometheusServer
from controller.devstack.stack import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Started lazily: a test that needs only the API server does not wait for MLflow.

    SIGTERM/SIGHUP (a CI timeout, `kill`, a closed terminal) interrupt the run as Ctrl-C does, so that the servers,
    each in its own session, are still stopped here.
    """
    session_stack = Stack(root=tmp_path_factory.mktemp("devstack"))
    with interrupt_on_termination():
        try:
            yield session_stack
        finally:
            session_stack.down()


@pytest.fixture(scope="session")
def control_plane(stack: Stack) -> ControlPlane:
    return stack.start_control_plane()


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlane) -> Path:
    return control_plane.admin_kubeconfig


@pytest.fixture(scope="session")
def mlflow_server(stack: Stack) -> MlflowServer:
    return stack.start_mlflow()


@pytest.fixture(scope="session")
def prometheus(stack: Stack) -> PrometheusServer:
    return stack.start_prometheus()


def run_kubectl(kubeconfig: Path, *args: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", f"--kubeconfig={kubeconfig}", *args], input=input_text,
                          capture_output=True, text=True, check=False, timeout=120)


@pytest.fixture
def namespace(kubeconfig: Path) -> str:
    """A fresh namespace per test: without a controller-manager, namespaces never finish terminating."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    result = run_kubectl(kubeconfig, "create", "namespace", name)
    assert result.returncode == 0, result.stderr
    return name


@pytest.fixture
def offline_kubeconfig(tmp_path: Path) -> Path:
    """A kubeconfig for an API server that is not there (127.0.0.1:1), namespace "ns": for code that must not
    need one."""
    config = {"apiVersion": "v1", "current-context": "c",
              "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
              "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "ns"}}],
              "users": [{"name": "u", "user": {"token": "t"}}]}
    path = tmp_path / "offline-kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path
