"""Which cluster the operator talks to: a kubeconfig it is told to use wins over the pod's own cluster
(controller-runtime's order), so an operator in a hub cluster driving another never acts on the wrong one."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes.config import incluster_config

from controller.operator.kubeapi import load_client_config

POD_CLUSTER = "https://10.96.0.1:443"
NAMED_CLUSTER = "https://remote.example:6443"
KUBECONFIG = f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "{NAMED_CLUSTER}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"""


@pytest.fixture
def in_a_pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment and files a pod's service account gives; returns a kubeconfig naming another cluster."""
    (tmp_path / "token").write_text("pod-token")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(tmp_path / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    kubeconfig = tmp_path / "other.kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    return kubeconfig


def test_in_a_pod_the_kubeconfig_named_on_the_command_line_wins(in_a_pod: Path) -> None:
    assert load_client_config(str(in_a_pod)).configuration.host == NAMED_CLUSTER


def test_in_a_pod_the_kubeconfig_named_by_the_environment_wins(in_a_pod: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(in_a_pod))
    assert load_client_config(bounded=True).configuration.host == NAMED_CLUSTER


def test_in_a_pod_told_nothing_the_pods_own_cluster_is_used(in_a_pod: Path) -> None:
    assert load_client_config().configuration.host == POD_CLUSTER
