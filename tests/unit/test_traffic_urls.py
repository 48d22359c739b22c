"""Inference URLs built from serving objects: names from a spec are one path segment, never more, and a host
read from a status its editors can write is one the gate may call."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes import client
from seldon_fake import FakeObjectClient

from controller.api import parse_spec
from controller.api.status import VersionRef
from controller.engine.actions import RunGate
from controller.engine.observations import AdapterErrorKind
from controller.operator.runtime import OperatorConfig, RolloutRuntime
from controller.traffic import router_for
from controller.traffic.base import CandidateModel
from controller.traffic.kube import SELDON_DEPLOYMENT
from controller.traffic.seldon import (
    ANN_CANDIDATE_MODEL,
    SeldonDeploymentRouter,
    SeldonExperimentRouter,
    predictor_service,
)


def test_seldon_graph_name_is_escaped_into_one_path_segment() -> None:
    predictor = {"name": "canary", "graph": {"name": "m/../../admin?x=1#"}}
    obj = {"metadata": {"name": "nsfw"}, "spec": {"protocol": "v2"},
           "status": {"serviceStatus": {"nsfw-canary": {"httpEndpoint": "nsfw-canary.ns:8000"}}}}
    url, _ = SeldonDeploymentRouter(client.ApiClient(), "ns", "nsfw", "main", "canary")._url(obj, predictor)
    assert url == "http://nsfw-canary.ns.svc.cluster.local:8000/v2/models/m%2F..%2F..%2Fadmin%3Fx%3D1%23/infer"


def staged_sdep(endpoint: str, gate_hosts: tuple[str, ...] = ()) -> SeldonDeploymentRouter:
    """A SeldonDeployment in namespace ns with a staged canary, every predictor's Service reported at `endpoint`
    (SVC standing for that Service's name), as a tenant can write it: Seldon Core v1's CRD has no status
    subresource."""
    allowed = {"gate_hosts": gate_hosts} if gate_hosts else {}  # without: the router's default
    router = SeldonDeploymentRouter(client.ApiClient(), "ns", "nsfw", "main", "canary", **allowed)
    main = {"name": "main", "traffic": 100, "graph": {"name": "classifier", "modelUri": "s3://models/6"}}
    fake = FakeObjectClient(SELDON_DEPLOYMENT, {"spec": {"protocol": "v2", "predictors": [main]},
                                                "status": {"state": "Available"}})
    router.client = fake
    router.stage(CandidateModel("nsfw", "7", "s3://models/7"), "6")
    services = [predictor_service("nsfw", p) for p in fake.obj["spec"]["predictors"]]
    fake.obj["status"]["serviceStatus"] = {s: {"httpEndpoint": endpoint.replace("SVC", s)} for s in services}
    return router


@pytest.mark.parametrize("host", ["SVC.ns", "SVC.ns.svc", "SVC.ns.svc.cluster.local", "SVC.ns.svc.cluster.local.",
                                  "SVC.NS."])
def test_seldon_v1_endpoint_of_the_predictors_own_service_gives_its_full_cluster_name(host: str) -> None:
    # Seldon writes "<svc>.<ns>:<port>"; the short name falls through to public DNS for a namespace named like
    # a top-level domain, so the URL names the Service in full.
    state = staged_sdep(f"{host}:8000").observe()
    assert state.canary_url == "http://nsfw-canary.ns.svc.cluster.local:8000/v2/models/classifier/infer"
    assert state.stable_url == "http://nsfw-main.ns.svc.cluster.local:8000/v2/models/classifier/infer"
    assert "httpEndpoint" not in state.message


@pytest.mark.parametrize("endpoint", [
    "fraud.team-b.svc.cluster.local:9000",  # another namespace's Service
    "fraud.team-b:9000",
    "nsfw-canary.team-b:8000",  # the predictor's Service name, in another namespace
    "nsfw-canary.ns.svc.svc.cluster.local:8000",  # pod nsfw-canary of Service ns in a namespace named svc
    "fraud.ns:9000",  # another Service of the namespace by its short name (public DNS for a TLD namespace)
    "10.0.0.7:8000", "127.0.0.1:8000", "[::1]:8000", "2130706433:8000",  # IPs, none allowed here
    "169.254.169.254:80/computeMetadata/v1/x?",  # a path and a query smuggled in
    "nsfw-canary.ns:8000/admin", "nsfw-canary.ns:8000?x=1", "nsfw-canary.ns:8000#x",
    "user:s3cr3t@nsfw-canary.ns:8000",  # userinfo
    "nsfw-canary.ns:8000\n", "nsfw-canary.ns", "nsfw-canary.ns:http", "nsfw-canary.ns:0", "nsfw-canary.ns:99999",
])
def test_seldon_v1_endpoint_elsewhere_gives_no_url_and_says_why(endpoint: str) -> None:
    state = staged_sdep(endpoint).observe()
    assert (state.canary_url, state.stable_url) == (None, None)
    assert "status.serviceStatus httpEndpoint" in state.message
    assert "is not the predictor's Service of namespace ns (nsfw-canary.ns:<port>)" in state.message
    assert "nor another of its Services by full name (<service>.ns.svc.cluster.local:<port>)" in state.message
    assert "s3cr3t" not in state.message


@pytest.mark.parametrize(("endpoint", "gate_hosts", "base"), [
    ("127.0.0.1:8123", ("127.0.0.1",), "http://127.0.0.1:8123"),  # the local stack's model servers
    ("[::1]:8123", ("[::1]",), "http://[::1]:8123"),
    ("fraud.ns.svc.cluster.local:9000", (), "http://fraud.ns.svc.cluster.local:9000"),  # the namespace's, in full
    ("m.ns.models.example.com:80", ("*.{namespace}.models.example.com",), "http://m.ns.models.example.com:80"),
])
def test_seldon_v1_endpoint_on_a_host_the_gate_rule_allows_is_used(endpoint: str, gate_hosts: tuple[str, ...],
                                                                   base: str) -> None:
    assert staged_sdep(endpoint, gate_hosts).observe().canary_url == f"{base}/v2/models/classifier/infer"


def test_router_for_hands_the_operators_gate_hosts_to_the_seldon_v1_router() -> None:
    target = {"seldonDeployment": {"name": "nsfw", "stablePredictor": "main", "canaryPredictor": "canary"}}
    router = router_for(target, "ns", client.ApiClient(), gate_hosts=("127.0.0.1",))
    assert isinstance(router, SeldonDeploymentRouter) and router.gate_hosts == ("127.0.0.1",)


def test_a_refused_seldon_v1_endpoint_fails_the_gate_run_instead_of_calling_it() -> None:
    """Not a silent pass: the gate reports it cannot run (retried, then inconclusive at the deadline)."""
    raw: dict[str, Any] = {
        "model": {"name": "nsfw", "version": "7"},
        "target": {"seldonDeployment": {"name": "nsfw", "stablePredictor": "main", "canaryPredictor": "canary"}},
        "canary": {"steps": [{"setWeight": 10}]},
        "goldenDataset": {"uri": "configmap://golden/set.jsonl", "sha256": "ab" * 32,
                          "thresholds": {"minAccuracy": 0.8}}}
    spec = parse_spec(raw)
    runtime = RolloutRuntime({"metadata": {"namespace": "ns", "name": "nsfw"}, "spec": raw}, spec, None,
                             OperatorConfig())  # type: ignore[arg-type]
    state = staged_sdep("169.254.169.254:80/computeMetadata/v1/x?").observe()
    action = RunGate(id="gate-1", candidate=VersionRef("7"), stable=None, dataset=spec.golden_dataset)
    result = asyncio.run(runtime.measure_gate(action, state))
    assert result.error is not None and result.error.kind is AdapterErrorKind.UNAVAILABLE and not result.verdicts
    assert "the staged candidate has no inference URL" in result.error.message  # refused before anything is read


def test_seldon_experiment_model_names_are_escaped_into_one_path_segment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The Experiment CRD puts no pattern on candidates[].name: a name must not reach another model's path.
    router = SeldonExperimentRouter(client.ApiClient(), "ns", "nsfw")
    obj = {"metadata": {"name": "nsfw", "namespace": "ns", "annotations": {ANN_CANDIDATE_MODEL: "v7/../admin#"}},
           "spec": {"default": "fraud/infer?x=", "candidates": [{"name": "fraud/infer?x=", "weight": 100},
                                                               {"name": "v7/../admin#", "weight": 0}]}}
    monkeypatch.setattr(router.client, "get_or_none", lambda: obj)
    monkeypatch.setattr(router, "_mesh_url", lambda: "http://mesh")
    state = router.observe()
    assert (state.stable_name, state.canary_name) == ("fraud/infer?x=", "v7/../admin#")
    assert state.stable_url == "http://mesh/v2/models/fraud%2Finfer%3Fx%3D/infer"
    assert state.canary_url == "http://mesh/v2/models/v7%2F..%2Fadmin%23/infer"
