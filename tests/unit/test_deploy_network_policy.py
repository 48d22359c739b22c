"""The NetworkPolicies (deploy/network-policy, the chart's networkPolicy values) let in whom they say.

No network plugin runs here to enforce them, so the policies are read the way the NetworkPolicy API defines
them (a peer with a namespaceSelector and a podSelector matches pods that both select; rules add up; a port
name is the selected pod's containerPort name) and asked about concrete pods. The real API server accepts the
same renders in tests/integration/test_deploy_apply.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from tests.unit.test_deploy_render import ALL_ON, DEPLOY, helm_template, kustomize_build, run_tool

Obj = dict[str, Any]


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str]


KSERVE_PREDICTOR = Pod("moderation", {"serving.kserve.io/inferenceservice": "classifier", "component": "predictor"})
SELDON_PREDICTOR = Pod("moderation", {"seldon-deployment-id": "classifier", "app": "classifier-default"})
PROMETHEUS = Pod("monitoring", {"app.kubernetes.io/name": "prometheus", "prometheus": "kube-prometheus"})
OTHER_POD = Pod("moderation", {"app": "curl"})
PROMETHEUS_ELSEWHERE = Pod("moderation", {"app.kubernetes.io/name": "prometheus"})


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """A LabelSelector; {} selects everything."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        present, value = expr["key"] in labels, labels.get(expr["key"])
        ok = {"Exists": present, "DoesNotExist": not present, "In": value in expr.get("values", []),
              "NotIn": value not in expr.get("values", [])}[expr["operator"]]
        if not ok:
            return False
    return True


def peer_matches(peer: Obj, pod: Pod, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        return False  # pods are reached by selectors here
    namespace_ok = (selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": pod.namespace})
                    if "namespaceSelector" in peer else pod.namespace == policy_namespace)
    return namespace_ok and selects(peer.get("podSelector", {}), pod.labels)


def admitted_ports(policy: Obj, pod: Pod) -> set[Any]:
    """The ports of the selected pods that `pod` may open, by the ingress rules."""
    ports: set[Any] = set()
    for rule in policy["spec"].get("ingress") or []:
        if any(peer_matches(peer, pod, policy["metadata"]["namespace"]) for peer in rule.get("from", [])):
            ports |= {p["port"] for p in rule["ports"]}
    return ports


def policies(objs: list[Obj]) -> dict[str, Obj]:
    """NetworkPolicies by the component they guard."""
    return {o["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]: o
            for o in objs if o["kind"] == "NetworkPolicy"}


@pytest.fixture(scope="module")
def everything() -> list[Obj]:
    return kustomize_build(DEPLOY)


def test_each_policy_guards_one_deployment_and_names_its_container_ports(everything: list[Obj]) -> None:
    deployments = [o for o in everything if o["kind"] == "Deployment"]
    guarded = policies(everything)
    assert set(guarded) == {"exporter", "controller"}
    for component, policy in guarded.items():
        selector = policy["spec"]["podSelector"]
        matched = [d for d in deployments if selects(selector, d["spec"]["template"]["metadata"]["labels"])]
        assert [d["metadata"]["name"] for d in matched] == [f"modelrollout-{component}"]
        assert policy["metadata"]["namespace"] == matched[0]["metadata"]["namespace"]
        port_names = {p["name"] for c in matched[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        named = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        assert named <= port_names, (component, named, port_names)
        assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress is the chart's option (cluster-specific)


def test_only_model_server_pods_and_prometheus_reach_the_exporter(everything: list[Obj]) -> None:
    exporter = policies(everything)["exporter"]
    assert admitted_ports(exporter, KSERVE_PREDICTOR) == {"http"}
    assert admitted_ports(exporter, SELDON_PREDICTOR) == {"http"}
    assert admitted_ports(exporter, PROMETHEUS) == {"http"}
    assert admitted_ports(exporter, OTHER_POD) == set()
    assert admitted_ports(exporter, PROMETHEUS_ELSEWHERE) == set()


def test_only_prometheus_reaches_the_controller_and_only_its_metrics(everything: list[Obj]) -> None:
    controller = policies(everything)["controller"]
    assert admitted_ports(controller, PROMETHEUS) == {"metrics"}  # not healthz: the kubelet comes from the node
    for pod in (KSERVE_PREDICTOR, SELDON_PREDICTOR, OTHER_POD, PROMETHEUS_ELSEWHERE):
        assert admitted_ports(controller, pod) == set(), pod


def test_chart_network_policy_values_change_what_they_say() -> None:
    one_namespace = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "moderation"}},
                      "podSelector": {"matchExpressions": [{"key": "serving.kserve.io/inferenceservice",
                                                            "operator": "Exists"}]}}]
    api_server = [{"to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}], "ports": [{"port": 6443, "protocol": "TCP"}]}]
    objs = helm_template(*ALL_ON, "--set-json", f"networkPolicy.loggers={json.dumps(one_namespace)}",
                         "--set-json", f"networkPolicy.controllerEgress={json.dumps(api_server)}")
    guarded = policies(objs)
    assert admitted_ports(guarded["exporter"], KSERVE_PREDICTOR) == {"http"}
    assert admitted_ports(guarded["exporter"], Pod("other-team", KSERVE_PREDICTOR.labels)) == set()
    assert admitted_ports(guarded["exporter"], SELDON_PREDICTOR) == set()
    assert admitted_ports(guarded["exporter"], PROMETHEUS) == {"http"}
    controller = guarded["controller"]["spec"]
    assert controller["policyTypes"] == ["Ingress", "Egress"]
    dns, *rest = controller["egress"]
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert {p["port"] for p in dns["ports"]} == {53}
    assert rest == api_server

    without_exporter = policies(helm_template("--set", "networkPolicy.enabled=true", "--set", "exporter.enabled=false"))
    assert set(without_exporter) == {"controller"}


@pytest.mark.parametrize(("args", "complaint"), [
    (("--set-json", 'networkPolicy.loggers=[{"podSelectors": {}}]'), "/networkPolicy/loggers/0"),
    (("--set-json", 'networkPolicy.scrapers=[{}]'), "/networkPolicy/scrapers/0"),
    (("--set-json", 'networkPolicy.controllerEgress=[{"ports": [{"port": 443, "protocol": "HTTPS"}]}]'),
     "/networkPolicy/controllerEgress/0/ports/0/protocol"),
])
def test_values_schema_refuses_bad_network_policy_values(args: tuple[str, ...], complaint: str) -> None:
    result = run_tool("helm", "template", "modelrollout", str(DEPLOY.parent / "charts" / "modelrollout"), *args)
    assert result.returncode != 0
    assert complaint in result.stderr, result.stderr
