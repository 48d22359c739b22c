"""What a spec needs from the operator's own settings is refused before anything is called, naming the field."""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

import controller.operator.runtime as runtime_module
from controller.api import SpecError, parse_spec
from controller.api.status import AnalysisMode, GateStatus, ModelRolloutStatus, Phase, VersionRef
from controller.devstack.processes import free_port
from controller.engine.actions import RunAnalysis, RunGate
from controller.engine.observations import AdapterErrorKind
from controller.operator import handlers
from controller.operator.runtime import (
    OperatorConfig,
    RolloutRuntime,
    RolloutStepper,
    check_operator_settings,
    fill_storage_uri,
)
from controller.traffic.base import TargetState
from controller.verdict import Outcome

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
RAW: dict[str, Any] = {
    "model": {"name": "nsfw", "version": "2"}, "target": {"kserve": {"inferenceService": "nsfw"}},
    "canary": {"steps": [{"setWeight": 10}, {"analysis": {"duration": "5m"}}]},
    "analysis": {"metrics": [{"name": "errors", "threshold": {"query": "vector(0)", "max": 1}}]},
    "goldenDataset": {"uri": "configmap://golden/set.jsonl", "sha256": "ab" * 32},
}


def refusal(raw: dict[str, Any], config: OperatorConfig) -> dict[str, Any]:
    """The Ready condition of a first reconcile. The stepper has no API client: any call would raise."""
    obj = {"metadata": {"namespace": "team-a", "name": "nsfw", "generation": 1}, "spec": raw}
    stepper = RolloutStepper(None, config, write_ahead=False)  # type: ignore[arg-type]
    outcome = asyncio.run(stepper.step(obj))
    assert outcome.status["phase"] == "Failed" and not outcome.actions_taken
    ready: dict[str, Any] = next(c for c in outcome.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "InvalidSpec"
    return ready


def test_a_gate_url_outside_the_namespace_fails_the_rollout_naming_the_field() -> None:
    raw = copy.deepcopy(RAW)
    raw["target"]["kserve"]["candidateUrl"] = "http://10.0.0.7:8080"
    ready = refusal(raw, OperatorConfig(gate_hosts=("127.0.0.1",), default_prometheus_url="http://prom:9090"))
    assert "spec.target.kserve.candidateUrl" in ready["message"] and "'10.0.0.7'" in ready["message"]


def test_metrics_without_a_prometheus_anywhere_fail_naming_the_address() -> None:
    ready = refusal(copy.deepcopy(RAW), OperatorConfig())
    assert "spec.analysis.prometheus.address" in ready["message"] and "--prometheus-url" in ready["message"]


def test_an_https_dataset_host_outside_the_operators_allow_list_fails_before_anything_is_staged() -> None:
    """The gate refuses it (gate.sources.check_https_uri): the first reconcile says so, not the gate later."""
    raw = copy.deepcopy(RAW)
    raw["goldenDataset"]["uri"] = "https://data.example.com/golden.jsonl"
    for hosts in ((), ("other.example.com",), ("*.data.example.com",)):
        config = OperatorConfig(https_allowed_hosts=hosts, default_prometheus_url="http://prom:9090")
        with pytest.raises(SpecError) as refused:
            check_operator_settings(parse_spec(raw), "team-a", config)
        assert refused.value.path == "spec.goldenDataset.uri"
        assert "data.example.com" in refused.value.problem and "--dataset-https-hosts" in refused.value.problem
        ready = refusal(raw, config)
        assert "spec.goldenDataset.uri" in ready["message"] and "--dataset-https-hosts" in ready["message"]
    for hosts in (("data.example.com",), ("*.example.com",), ("DATA.example.com.",)):
        config = OperatorConfig(https_allowed_hosts=hosts, default_prometheus_url="http://prom:9090")
        check_operator_settings(parse_spec(raw), "team-a", config)  # the gate would fetch it: accepted


PASSED_GATE = GateStatus(request_id="1:gate", started_at=T0, completed_at=T0, outcome=Outcome.PASS)


@pytest.mark.parametrize(("phase", "gate", "gate_ahead"), [
    (Phase.GATING, None, True),
    (Phase.GATING, GateStatus(request_id="1:gate", started_at=T0), True),
    (Phase.PROGRESSING, PASSED_GATE, False),
    # Ended: a new version or a retry starts a new attempt, and stages it, in this very decision.
    (Phase.SUCCEEDED, PASSED_GATE, True),
    (Phase.ROLLED_BACK, PASSED_GATE, True),
])
def test_the_dataset_host_matters_only_until_the_gate_has_run(monkeypatch: pytest.MonkeyPatch, phase: Phase,
                                                               gate: GateStatus | None, gate_ahead: bool) -> None:
    """Past its gate a rollout is not frozen because the dataset's host has left the allow-list since."""
    raw = copy.deepcopy(RAW)
    raw["goldenDataset"]["uri"] = "https://data.example.com/golden.jsonl"
    config = OperatorConfig(default_prometheus_url="http://prom:9090")
    check_operator_settings(parse_spec(raw), "team-a", config, gate_ahead=False)  # the gate will not run again
    with pytest.raises(SpecError, match=r"data\.example\.com"):
        check_operator_settings(parse_spec(raw), "team-a", config, gate_ahead=True)
    asked: list[bool] = []

    def record(*_: Any, gate_ahead: bool = True) -> None:
        asked.append(gate_ahead)
        raise SpecError("spec.goldenDataset.uri", "stop here")  # no further call: the stepper has no client

    monkeypatch.setattr(runtime_module, "check_operator_settings", record)
    status = ModelRolloutStatus(phase=phase, attempt=1,
                                observed_generation=1, candidate=VersionRef("2"), gate=gate, started_at=T0)
    obj = {"metadata": {"namespace": "team-a", "name": "nsfw", "generation": 1}, "spec": raw,
           "status": status.to_dict()}
    asyncio.run(RolloutStepper(None, config, write_ahead=False).step(obj))  # type: ignore[arg-type]
    assert asked == [gate_ahead]


@pytest.mark.parametrize(("named_in_spec", "default"), [(False, True), (True, False), (True, True)])
def test_the_spec_s_prometheus_is_asked_else_the_operators_default(named_in_spec: bool, default: bool) -> None:
    """Nothing listens on either port: which one the verdict says did not answer shows which was asked."""
    spec_url, default_url = (f"http://127.0.0.1:{free_port()}" for _ in range(2))
    raw = copy.deepcopy(RAW)
    if named_in_spec:
        raw["analysis"]["prometheus"] = {"address": spec_url}
    config = OperatorConfig(default_prometheus_url=default_url if default else None)
    spec = parse_spec(raw)
    check_operator_settings(spec, "team-a", config)  # accepted: a Prometheus is known
    obj = {"metadata": {"namespace": "team-a", "name": "nsfw"}, "spec": raw}
    runtime = RolloutRuntime(obj, spec, None, config)  # type: ignore[arg-type]
    action = RunAnalysis(id="a-1", mode=AnalysisMode.CANARY, candidate_version="2", baseline_version="1",
                         canary_weight=10, window_start=datetime(2026, 1, 1, tzinfo=UTC))
    result = runtime.measure_analysis(action, datetime(2026, 1, 1, 0, 5, tzinfo=UTC))
    detail = " ".join(v.reason for v in result.verdicts)
    asked = spec_url if named_in_spec else default_url
    assert asked.removeprefix("http://") in detail, detail
    other = default_url if named_in_spec else spec_url
    assert other.removeprefix("http://") not in detail


def test_the_operators_scrape_interval_reaches_the_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """--scrape-interval sets how fresh an arm's series must be (StaleSeries beyond twice it)."""
    raw = copy.deepcopy(RAW)
    raw["analysis"]["prometheus"] = {"address": f"http://127.0.0.1:{free_port()}"}
    made: list[Any] = []
    real = runtime_module.PrometheusProvider

    def provider(*args: Any, **kwargs: Any) -> Any:
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(runtime_module, "PrometheusProvider", provider)
    config = OperatorConfig(scrape_interval=timedelta(seconds=5))
    obj = {"metadata": {"namespace": "team-a", "name": "nsfw"}, "spec": raw}
    runtime = RolloutRuntime(obj, parse_spec(raw), None, config)  # type: ignore[arg-type]
    action = RunAnalysis(id="a-1", mode=AnalysisMode.CANARY, candidate_version="2", baseline_version="1",
                         canary_weight=10, window_start=datetime(2026, 1, 1, tzinfo=UTC))
    runtime.measure_analysis(action, datetime(2026, 1, 1, 0, 5, tzinfo=UTC))
    assert [p.scrape_interval for p in made] == [timedelta(seconds=5)]


def test_a_gate_that_compares_with_stable_waits_for_stables_url_instead_of_skipping_the_comparison() -> None:
    raw = copy.deepcopy(RAW)
    raw["goldenDataset"] = {"uri": "configmap://golden/set.jsonl", "sha256": "ab" * 32,
                            "thresholds": {"minAccuracy": 0.8, "maxAccuracyDrop": 0.01}}
    spec = parse_spec(raw)
    obj = {"metadata": {"namespace": "team-a", "name": "nsfw"}, "spec": raw}
    runtime = RolloutRuntime(obj, spec, None, OperatorConfig())  # type: ignore[arg-type]
    state = TargetState(target="nsfw", exists=True, stable_version="1", stable_url=None, canary_version="2",
                        canary_url="http://nsfw-latest.team-a.svc.cluster.local")
    action = RunGate(id="gate-1", candidate=VersionRef("2"), stable=VersionRef("1"), dataset=spec.golden_dataset)
    result = asyncio.run(runtime.measure_gate(action, state))  # nothing is fetched or called: no client here
    assert result.error is not None and result.error.kind is AdapterErrorKind.UNAVAILABLE
    assert "stable version 1 has no inference URL yet" in result.error.message and not result.verdicts


def test_the_seldon_v1_router_gets_the_operators_gate_hosts_and_a_refused_endpoint_is_the_gates_reason() -> None:
    raw = copy.deepcopy(RAW)
    raw["target"] = {"seldonDeployment": {"name": "nsfw", "stablePredictor": "main", "canaryPredictor": "canary"}}
    raw["goldenDataset"] = {"uri": "configmap://golden/set.jsonl", "sha256": "ab" * 32,
                            "thresholds": {"minAccuracy": 0.8}}
    spec = parse_spec(raw)
    obj = {"metadata": {"namespace": "team-a", "name": "nsfw"}, "spec": raw}
    runtime = RolloutRuntime(obj, spec, None, OperatorConfig(gate_hosts=("127.0.0.1",)))  # type: ignore[arg-type]
    assert runtime.router.gate_hosts == ("127.0.0.1",)  # type: ignore[attr-defined]
    refused = "the gate does not call predictor canary: its status.serviceStatus httpEndpoint is elsewhere"
    state = TargetState(target="nsfw", exists=True, stable_version="1", canary_version="2", canary_url=None,
                        message=refused)
    action = RunGate(id="gate-1", candidate=VersionRef("2"), stable=VersionRef("1"), dataset=spec.golden_dataset)
    result = asyncio.run(runtime.measure_gate(action, state))
    assert result.error is not None and result.error.kind is AdapterErrorKind.UNAVAILABLE
    assert result.error.message == f"the staged candidate has no inference URL yet: {refused}"


def test_a_registry_secret_the_gate_cannot_read_is_an_explained_gate_error_not_an_exception() -> None:
    raw = copy.deepcopy(RAW)
    raw["registry"] = {"trackingUri": "http://mlflow.team-a.svc.cluster.local:5000",
                       "credentialsSecretRef": {"name": "mlflow"}}
    raw["goldenDataset"] = {"uri": "configmap://golden/set.jsonl", "sha256": "ab" * 32,
                            "thresholds": {"minAccuracy": 0.8}}
    spec = parse_spec(raw)
    runtime = RolloutRuntime({"metadata": {"namespace": "team-a", "name": "nsfw"}, "spec": raw}, spec,
                             None, OperatorConfig())  # type: ignore[arg-type]

    def missing_secret() -> None:  # what the API server answers for a Secret that does not exist
        raise ApiException(status=404, reason="Not Found")

    runtime.credentials = missing_secret  # type: ignore[method-assign]
    state = TargetState(target="nsfw", exists=True, canary_version="2",
                        canary_url="http://nsfw-latest.team-a.svc.cluster.local")
    action = RunGate(id="gate-1", candidate=VersionRef("2"), stable=None, dataset=spec.golden_dataset)
    result = asyncio.run(runtime.measure_gate(action, state))
    assert result.error is not None and result.error.kind is AdapterErrorKind.NOT_FOUND
    assert result.error.message == (
        "registry credentials Secret team-a/mlflow (spec.registry.credentialsSecretRef) not found (HTTP 404): "
        "create it with 'trackingUri' and 'token' (or 'username' and 'password'), or fix the name")


LEAKY_URL = "https://kubernetes.default.svc/api/v1/namespaces/team-a/secrets/mlflow?access_token=s3cr3t"


@pytest.mark.parametrize("error", [
    urllib3.exceptions.ReadTimeoutError(None, LEAKY_URL, "Read timed out. (read timeout=30.0)"),
    urllib3.exceptions.MaxRetryError(None, LEAKY_URL),
    ConnectionResetError(f"reset while reading {LEAKY_URL}"),
], ids=["read-timeout", "max-retries", "connection-reset"])
def test_a_credentials_secret_that_cannot_be_read_is_an_unavailable_registry_and_gate_not_a_crash(
        monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """No answer from the API server: the reconcile goes on (the target is still observed, RegistryAvailable
    says why), a gate's result is an error, not lost, and the message names the exception's type only."""
    raw = copy.deepcopy(RAW)
    raw["registry"] = {"trackingUri": "http://mlflow.team-a.svc.cluster.local:5000",
                       "credentialsSecretRef": {"name": "mlflow"}}

    class Core:
        def __init__(self, api_client: Any) -> None:
            pass

        def read_namespaced_secret(self, name: str, namespace: str) -> None:
            raise error

    monkeypatch.setattr("controller.operator.runtime.client.CoreV1Api", Core)
    spec = parse_spec(raw)
    runtime = RolloutRuntime({"metadata": {"namespace": "team-a", "name": "nsfw"}, "spec": raw}, spec,
                             None, OperatorConfig())  # type: ignore[arg-type]
    expected = ("registry credentials Secret team-a/mlflow (spec.registry.credentialsSecretRef) could not be read: "
                f"{type(error).__name__}")
    observed = runtime.observe_registry().error
    assert observed is not None and (observed.kind, observed.message) == (AdapterErrorKind.UNAVAILABLE, expected)
    state = TargetState(target="nsfw", exists=True, canary_version="2",
                        canary_url="http://nsfw-latest.team-a.svc.cluster.local")
    action = RunGate(id="gate-1", candidate=VersionRef("2"), stable=None, dataset=spec.golden_dataset)
    gate = asyncio.run(runtime.measure_gate(action, state)).error
    assert gate is not None and (gate.kind, gate.message) == (AdapterErrorKind.UNAVAILABLE, expected)


def test_a_storage_uri_template_that_cannot_be_filled_says_so() -> None:
    assert fill_storage_uri("s3://models/{name}/{version}", name="nsfw", version="2", source="", run_id="") \
        == "s3://models/nsfw/2"
    for template in ("s3://models/{model}/{version}", "s3://models/{0}", "s3://models/{name",
                     "s3://models/{name.real}", "s3://models/{name[x]}", "s3://models/{version:>9999999999}",
                     "s3://models/{name!r}", "s3://models/{name[0]}"):
        with pytest.raises(ValueError, match=r"--storage-uri-template .* cannot be filled"):
            fill_storage_uri(template, name="nsfw", version="2", source="", run_id="")


def test_kopf_retries_a_forbidden_watch_for_ever_instead_of_stopping_the_operator(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf escalates a request's error once its backoffs run out, and a watch that escalates (one namespace's
    RoleBinding revoked) stops the whole operator. Each request iterates them afresh: they must never run out."""
    monkeypatch.setattr(handlers, "load_client_config", lambda *_args, **_kwargs: None)
    registry = handlers.build_registry(OperatorConfig())
    start = next(h.fn for h in registry._activities.get_all_handlers() if h.fn.__name__ == "start_queue")
    settings = kopf.OperatorSettings()

    async def main() -> None:
        await start(settings=settings)
        state = next(c.cell_contents for c in start.__closure__ if isinstance(c.cell_contents, dict))
        state["task"].cancel()

    asyncio.run(main())
    backoffs = settings.networking.error_backoffs
    assert isinstance(backoffs, Iterable) and not isinstance(backoffs, Iterator)
    for _request in range(2):
        delays = list(itertools.islice(backoffs, 1000))
        assert len(delays) == 1000 and delays[0] == 1 and max(delays) == 60


def test_a_bake_runs_promotion_time_reaches_the_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without it the watch of a version paused on an inconclusive bake reads the bake's own days as history."""
    raw = copy.deepcopy(RAW)
    raw["analysis"]["prometheus"] = {"address": f"http://127.0.0.1:{free_port()}"}
    asked: list[Any] = []
    monkeypatch.setattr(runtime_module, "run_analysis",
                        lambda _metrics, request, _provider: asked.append(request) or ())
    obj = {"metadata": {"namespace": "team-a", "name": "nsfw"}, "spec": raw}
    runtime = RolloutRuntime(obj, parse_spec(raw), None, OperatorConfig())  # type: ignore[arg-type]
    promoted = datetime(2026, 1, 1, tzinfo=UTC)
    action = RunAnalysis(id="a-1", mode=AnalysisMode.BAKE, candidate_version="2", baseline_version="1",
                         canary_weight=100, window_start=promoted + timedelta(hours=25),
                         baseline_window=timedelta(days=3), promoted_at=promoted)
    runtime.measure_analysis(action, promoted + timedelta(hours=26))
    assert [request.promoted_at for request in asked] == [promoted]


def test_a_gate_url_host_matters_only_until_the_gate_has_run() -> None:
    """Review s29crd: a rollout past its gate froze (InvalidSpec, its canary kept) once its gate URL's host was no
    longer allowed, e.g. after an operator upgrade refusing the short name.<ns>.svc form."""
    raw = copy.deepcopy(RAW)
    raw["target"]["kserve"]["candidateUrl"] = "http://cand.team-a.svc/v1/models/m:predict"
    config = OperatorConfig(default_prometheus_url="http://prom:9090")
    check_operator_settings(parse_spec(raw), "team-a", config, gate_ahead=False)
    with pytest.raises(SpecError, match=r"spec\.target\.kserve\.candidateUrl"):
        check_operator_settings(parse_spec(raw), "team-a", config, gate_ahead=True)
