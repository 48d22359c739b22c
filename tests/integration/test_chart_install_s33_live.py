"""`helm install` of the chart into the real API server, with the pinned helm.

`namespace.create=true` cannot be installed by Helm: its release record lives in the release namespace, so without
`--create-namespace` that namespace is missing, and with it the chart's own Namespace already exists (the rest
of the chart was then applied half-way). The chart refuses it while rendering, before Helm applies anything or
creates the namespace. The documented way, `--create-namespace` and then the README's `kubectl label`, is
installed here and shown to enforce the "restricted" Pod Security Standard.
"""

from __future__ import annotations

import json
import re
import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_kubectl
from tests.unit.test_deploy_render import CHART, NAMESPACE, run_tool

pytestmark = pytest.mark.integration

REFUSAL = "namespace.create=true works only with helm template (kubectl apply, Argo CD), not helm install or upgrade"
CLUSTER_KINDS = "clusterroles,clusterrolebindings,validatingadmissionpolicies,validatingadmissionpolicybindings"
NAMESPACED_KINDS = "deployments,serviceaccounts,services,roles,rolebindings,secrets,configmaps"


def documented_label_command(namespace: str) -> list[str]:
    """The chart README's `kubectl label namespace ...` (Pod Security), for `namespace`."""
    readme = (CHART / "README.md").read_text()
    found = re.search(r"```sh\n(kubectl label namespace .*?)\n```", readme, re.DOTALL)
    assert found, "the chart README no longer shows the kubectl label command"
    words = shlex.split(found.group(1).replace("\\\n", " "))
    assert words[3] == NAMESPACE, words
    return [*words[1:3], namespace, *words[4:]]


def helm(kubeconfig: Path, *args: str) -> tuple[int, str]:
    result = run_tool("helm", f"--kubeconfig={kubeconfig}", *args)
    return result.returncode, result.stdout + result.stderr


def objects_of(kubeconfig: Path, release: str, kinds: str, *where: str) -> list[str]:
    result = run_kubectl(kubeconfig, "get", kinds, *where, "-l", f"app.kubernetes.io/instance={release}", "-o", "name")
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def namespace_exists(kubeconfig: Path, name: str) -> bool:
    result = run_kubectl(kubeconfig, "get", "namespace", name)
    assert result.returncode == 0 or "NotFound" in result.stderr, result.stderr
    return result.returncode == 0


@pytest.fixture
def release() -> str:
    return f"r{uuid.uuid4().hex[:8]}"


@pytest.fixture
def installed(kubeconfig: Path, release: str) -> Iterator[str]:
    """The documented install into a namespace Helm creates; uninstalled after (its admission policies are
    cluster-wide). Yields the namespace."""
    namespace = f"t-{uuid.uuid4().hex[:10]}"
    code, output = helm(kubeconfig, "install", release, str(CHART), "-n", namespace, "--create-namespace")
    try:
        assert code == 0, output
        yield namespace
    finally:
        helm(kubeconfig, "uninstall", release, "-n", namespace)


def pod_from(deployment: dict, namespace: str) -> dict:
    template = deployment["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod", "spec": template["spec"],
            "metadata": {"name": deployment["metadata"]["name"], "namespace": namespace}}


def admitted(kubeconfig: Path, pod: dict) -> tuple[bool, str]:
    result = run_kubectl(kubeconfig, "create", "--dry-run=server", "-f", "-", input_text=json.dumps(pod))
    return result.returncode == 0, result.stderr


def test_the_documented_helm_install_and_label_enforce_restricted(kubeconfig: Path, installed: str,
                                                                  release: str) -> None:
    namespace = installed
    code, output = helm(kubeconfig, "status", release, "-n", namespace, "-o", "json")
    assert code == 0, output
    assert json.loads(output)["info"]["status"] == "deployed"
    labels_of = ["get", "namespace", namespace, "-o", "jsonpath={.metadata.labels}"]
    # Helm's --create-namespace labels nothing: hence the README's step.
    assert "pod-security.kubernetes.io/enforce" not in json.loads(run_kubectl(kubeconfig, *labels_of).stdout)

    result = run_kubectl(kubeconfig, *documented_label_command(namespace))
    assert result.returncode == 0, result.stderr
    labels = json.loads(run_kubectl(kubeconfig, *labels_of).stdout)
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"

    deployments = run_kubectl(kubeconfig, "get", "deployments", "-n", namespace, "-o", "json")
    assert deployments.returncode == 0, deployments.stderr
    items = json.loads(deployments.stdout)["items"]
    assert len(items) == 2
    for deployment in items:  # the chart's own pods pass the enforced standard
        ok, stderr = admitted(kubeconfig, pod_from(deployment, namespace))
        assert ok, stderr
    sloppy = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sloppy", "namespace": namespace},
              "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}
    ok, stderr = admitted(kubeconfig, sloppy)
    assert not ok and "violates PodSecurity" in stderr, stderr


@pytest.mark.parametrize("how", ["missing-namespace", "create-namespace", "existing-namespace"])
def test_helm_install_of_namespace_create_is_refused_before_anything_is_applied(kubeconfig: Path, release: str,
                                                                               how: str) -> None:
    """The README's old way, Helm's --create-namespace, and a namespace made beforehand: each refused, naming
    the value and the way that works, with no release, namespace or object left behind."""
    namespace = f"t-{uuid.uuid4().hex[:10]}"
    flags = {"missing-namespace": [], "create-namespace": ["--create-namespace"], "existing-namespace": []}[how]
    if how == "existing-namespace":
        result = run_kubectl(kubeconfig, "create", "namespace", namespace)
        assert result.returncode == 0, result.stderr
    try:
        code, output = helm(kubeconfig, "install", release, str(CHART), "-n", namespace, *flags,
                            "--set", "namespace.create=true")
        assert code != 0
        assert REFUSAL in output, output
        assert shlex.join(documented_label_command(namespace)) in output, output

        assert namespace_exists(kubeconfig, namespace) == (how == "existing-namespace")
        assert objects_of(kubeconfig, release, CLUSTER_KINDS) == []
        if how == "existing-namespace":
            assert objects_of(kubeconfig, release, NAMESPACED_KINDS, "-n", namespace) == []
            helm_secrets = run_kubectl(kubeconfig, "get", "secrets", "-n", namespace, "-l", f"name={release}",
                                       "-o", "name")
            assert helm_secrets.returncode == 0 and helm_secrets.stdout == "", helm_secrets
        code, output = helm(kubeconfig, "list", "-A", "-a", "-q", "--filter", f"^{release}$")
        assert code == 0 and output.strip() == "", output
    finally:  # on the code before the fix, a half-applied release holds cluster-wide admission policies
        helm(kubeconfig, "uninstall", release, "-n", namespace)
