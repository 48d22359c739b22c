"""The Kustomize and Helm renders, validated by the real API server (`kubectl apply --dry-run=server`).

Server-side dry run runs the whole admission chain: schema and field validation (strict: an unknown field
is an error), RBAC's escalation check on the ClusterRoles (which an admin, as here, always passes: the grants
themselves are proven in test_rbac_proof.py), and Pod Security admission, which warns about a
Deployment whose pods would break the "restricted" standard. Namespaced objects are moved into the test's
namespace (the install namespace does not exist here, and a dry-run does not create it). Kinds the server
does not serve (the Prometheus Operator's) are left out: tests/unit/test_deploy_monitoring.py covers them.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import run_kubectl
from tests.unit.test_deploy_render import ALL_ON, DEPLOY, NAMESPACE, helm_template, kustomize_build

pytestmark = pytest.mark.integration

EXAMPLE_ROLE = DEPLOY / "examples" / "registry-credentials-role.yaml"
NETWORK_POLICY_LOGGERS = ('networkPolicy.loggers=[{"namespaceSelector": {"matchLabels": '
                          '{"kubernetes.io/metadata.name": "moderation"}}, "podSelector": {"matchExpressions": '
                          '[{"key": "serving.kserve.io/inferenceservice", "operator": "Exists"}]}}]')
CONTROLLER_EGRESS = ('networkPolicy.controllerEgress=[{"to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}], '
                     '"ports": [{"port": 6443, "protocol": "TCP"}]}, {"to": [{"namespaceSelector": {}}], '
                     '"ports": [{"port": 5000}, {"port": 9090}, {"port": 8080, "endPort": 8090}]}]')
# Well-formed EnvVars, Tolerations and /tmp sizes the schema lets through are accepted by the API server too.
POD_OPTIONS = ("--set-json", 'controller.extraEnv=[{"name": "A", "value": "1"}, {"name": "POD", "valueFrom": '
               '{"fieldRef": {"fieldPath": "metadata.name"}}}]',
               "--set-json", 'exporter.tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml", '
               '"effect": "NoSchedule"}, {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}]',
               "--set", "controller.tmpSizeLimit=2Gi", "--set", "controller.maxDatasetBytes=1536Mi")
Obj = dict[str, Any]


def served_groups(kubeconfig: Path) -> set[str]:
    result = run_kubectl(kubeconfig, "api-versions")
    assert result.returncode == 0, result.stderr
    return {line.rsplit("/", 1)[0] if "/" in line else "" for line in result.stdout.split()}


def into_namespace(objs: list[Obj], kubeconfig: Path, namespace: str) -> tuple[list[Obj], set[str]]:
    """Move namespaced objects (and ServiceAccount subjects) into `namespace`; drop kinds not served here."""
    groups = served_groups(kubeconfig)
    kept: list[Obj] = []
    skipped: set[str] = set()
    for original in objs:
        obj = copy.deepcopy(original)
        group = obj["apiVersion"].rsplit("/", 1)[0] if "/" in obj["apiVersion"] else ""
        if group not in groups:
            skipped.add(obj["kind"])
            continue
        if obj["metadata"].get("namespace") == NAMESPACE:
            obj["metadata"]["namespace"] = namespace
        for subject in obj.get("subjects", []):
            if subject.get("namespace") == NAMESPACE:
                subject["namespace"] = namespace
        kept.append(obj)
    return kept, skipped


def dry_run(kubeconfig: Path, objs: list[Obj]) -> str:
    """Apply as the server would, without persisting; return the warnings."""
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
    result = run_kubectl(kubeconfig, "apply", "--dry-run=server", "--validate=strict", "-f", "-",
                         input_text=manifest)
    assert result.returncode == 0, result.stderr
    applied = [line for line in result.stdout.splitlines() if "(server dry run)" in line]
    assert len(applied) == len(objs), result.stdout
    return result.stderr


@pytest.fixture
def restricted_namespace(kubeconfig: Path, namespace: str) -> str:
    """The test namespace, warning about pods that break the "restricted" Pod Security Standard."""
    result = run_kubectl(kubeconfig, "label", "namespace", namespace, "pod-security.kubernetes.io/warn=restricted",
                         "pod-security.kubernetes.io/warn-version=latest")
    assert result.returncode == 0, result.stderr
    return namespace


def test_pod_security_admission_is_watching(kubeconfig: Path, restricted_namespace: str) -> None:
    """The control for the tests below: a Deployment without hardening does get the warning here."""
    sloppy = {"apiVersion": "apps/v1", "kind": "Deployment",
              "metadata": {"name": "sloppy", "namespace": restricted_namespace},
              "spec": {"selector": {"matchLabels": {"app": "sloppy"}},
                       "template": {"metadata": {"labels": {"app": "sloppy"}},
                                    "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}}
    assert "would violate PodSecurity" in dry_run(kubeconfig, [sloppy])


def test_kustomize_output_is_accepted(kubeconfig: Path, restricted_namespace: str) -> None:
    objs, skipped = into_namespace(kustomize_build(DEPLOY), kubeconfig, restricted_namespace)
    assert skipped <= {"ServiceMonitor", "PrometheusRule"}
    assert {"Namespace", "CustomResourceDefinition", "ClusterRole", "Deployment"} <= {o["kind"] for o in objs}
    warnings = dry_run(kubeconfig, objs)
    assert "PodSecurity" not in warnings, warnings


@pytest.mark.parametrize("args", [(), ALL_ON, ("--set", "image.digest=sha256:" + "0" * 64,
                                              "--set", "exporter.classNames={safe,nsfw}",
                                              "--set", "controller.tolerations[0].operator=Exists"),
                                  (*ALL_ON, "--set-json", NETWORK_POLICY_LOGGERS, "--set-json", CONTROLLER_EGRESS),
                                  POD_OPTIONS],
                         ids=["defaults", "everything", "options", "network-policy-options", "pod-options"])
def test_helm_output_is_accepted(kubeconfig: Path, restricted_namespace: str, args: tuple[str, ...]) -> None:
    objs, skipped = into_namespace(helm_template(*args), kubeconfig, restricted_namespace)
    assert skipped <= {"ServiceMonitor", "PrometheusRule"}
    warnings = dry_run(kubeconfig, objs)
    assert "PodSecurity" not in warnings, warnings


def test_registry_credentials_example_is_accepted(kubeconfig: Path, namespace: str) -> None:
    objs = [doc for doc in yaml.safe_load_all(EXAMPLE_ROLE.read_text()) if doc]
    for obj in objs:
        obj["metadata"]["namespace"] = namespace
    dry_run(kubeconfig, objs)
