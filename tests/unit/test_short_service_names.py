"""A short Service name (name.<namespace>.svc) is refused wherever the operator sends credentials or trust, as it
is for gate URLs: with ndots:5 the resolver tries the search list first, and name.<namespace>.svc.svc.cluster.local
is answered from a namespace named `svc`. Whoever owns that namespace would get the registry token, or answer the
registry (what is served) or Prometheus (whether the canary is healthy). Review s30tenancy.
"""

from __future__ import annotations

import base64
import copy
import re
from pathlib import Path
from typing import Any

import pytest

from controller.api import SpecError, parse_spec
from controller.operator.runtime import OperatorConfig, check_operator_settings
from controller.registry import Credentials, MlflowRegistry, RegistryConfigError, validated_tracking_uri
from tests.unit.test_operator_settings import RAW, refusal

REPO = Path(__file__).resolve().parents[2]
SHORT = "http://mlflow.mlflow.svc:5000"
FULL = "http://mlflow.mlflow.svc.cluster.local:5000"
SHORT_PROMETHEUS = "http://prometheus.monitoring.svc:9090"
FULL_PROMETHEUS = "http://prometheus.monitoring.svc.cluster.local:9090"


def secret_data(tracking_uri: str) -> dict[str, str]:
    return {key: base64.b64encode(value.encode()).decode()
            for key, value in {"token": "s3cr3t-token", "trackingUri": tracking_uri}.items()}


def says_the_fix(message: str, host: str) -> None:
    assert f"'{host}'" in message and f"{host}.cluster.local" in message, message
    assert "search list" in message and "namespace (one named 'svc')" in message, message
    assert "s3cr3t" not in message


@pytest.mark.parametrize("uri", [SHORT, "https://MLflow.MLflow.SVC/mlflow", "http://mlflow.mlflow.svc.:5000"])
def test_credentials_are_not_given_for_a_short_service_name(uri: str) -> None:
    with pytest.raises(RegistryConfigError) as refused:
        Credentials.from_secret_data(secret_data(uri), tracking_uri=uri)
    assert "Secret key 'trackingUri'" in refused.value.message
    says_the_fix(refused.value.message, re.split(r"[/:]+", uri)[1].lower().rstrip("."))
    assert Credentials.from_secret_data(secret_data(FULL), tracking_uri=FULL).token == "s3cr3t-token"


def test_the_registry_client_refuses_a_short_service_name() -> None:
    with pytest.raises(RegistryConfigError) as refused:
        MlflowRegistry(SHORT)
    assert refused.value.message.startswith("the registry tracking URI: ")
    says_the_fix(refused.value.message, "mlflow.mlflow.svc")
    assert validated_tracking_uri(FULL) == FULL
    assert validated_tracking_uri("http://mlflow.mlops:5000") == "http://mlflow.mlops:5000"  # not a .svc name


def spec_with(tracking_uri: str | None = None, prometheus: str | None = None) -> dict[str, Any]:
    raw = copy.deepcopy(RAW)
    if tracking_uri:
        raw["registry"] = {"trackingUri": tracking_uri, "credentialsSecretRef": {"name": "mlflow"}}
    if prometheus:
        raw["analysis"]["prometheus"] = {"address": prometheus}
    return raw


@pytest.mark.parametrize("gate_ahead", [True, False])  # the registry and Prometheus are called at every phase
def test_the_spec_naming_a_short_service_name_is_refused_naming_the_field(gate_ahead: bool) -> None:
    config = OperatorConfig(default_tracking_uri=FULL, default_prometheus_url=FULL_PROMETHEUS)
    for raw, path, host in ((spec_with(tracking_uri=SHORT), "spec.registry.trackingUri", "mlflow.mlflow.svc"),
                            (spec_with(prometheus=SHORT_PROMETHEUS), "spec.analysis.prometheus.address",
                             "prometheus.monitoring.svc")):
        with pytest.raises(SpecError) as refused:
            check_operator_settings(parse_spec(raw), "team-a", config, gate_ahead=gate_ahead)
        assert refused.value.path == path
        says_the_fix(str(refused.value), host)
    check_operator_settings(parse_spec(spec_with(FULL, FULL_PROMETHEUS)), "team-a", config, gate_ahead=gate_ahead)


def test_the_operators_default_naming_a_short_service_name_is_refused_naming_the_setting() -> None:
    raw = spec_with()
    with pytest.raises(SpecError) as refused:
        check_operator_settings(parse_spec(raw), "team-a", OperatorConfig(default_tracking_uri=SHORT,
                                                                          default_prometheus_url=FULL_PROMETHEUS))
    assert refused.value.path == "spec.registry.trackingUri"
    assert "is unset, and the operator's default (operator run --tracking-uri, $MLFLOW_TRACKING_URI)" in \
        str(refused.value)
    says_the_fix(str(refused.value), "mlflow.mlflow.svc")
    with pytest.raises(SpecError) as refused:
        check_operator_settings(parse_spec(raw), "team-a", OperatorConfig(default_tracking_uri=FULL,
                                                                          default_prometheus_url=SHORT_PROMETHEUS))
    assert refused.value.path == "spec.analysis.prometheus.address"
    assert "operator run --prometheus-url, $PROMETHEUS_URL" in str(refused.value)
    # The spec's own address wins over the default, and a rollout without metrics never asks Prometheus.
    check_operator_settings(parse_spec(spec_with(prometheus=FULL_PROMETHEUS)), "team-a",
                            OperatorConfig(default_tracking_uri=FULL, default_prometheus_url=SHORT_PROMETHEUS))
    without_metrics = spec_with()
    without_metrics["analysis"] = {}
    without_metrics["canary"] = {"steps": [{"setWeight": 10}]}
    check_operator_settings(parse_spec(without_metrics), "team-a",
                            OperatorConfig(default_tracking_uri=FULL, default_prometheus_url=SHORT_PROMETHEUS))


def test_a_rollout_naming_a_short_registry_fails_before_anything_is_called() -> None:
    """The reconcile itself: InvalidSpec on the first step, with no API client (reading the Secret would raise)."""
    ready = refusal(spec_with(tracking_uri=SHORT), OperatorConfig(default_prometheus_url=FULL_PROMETHEUS))
    assert "spec.registry.trackingUri" in ready["message"]
    says_the_fix(ready["message"], "mlflow.mlflow.svc")


def test_nothing_shipped_names_a_short_service_name() -> None:
    """Examples, chart, deploy/, the dev stack and the docs: every http(s) URL they spell is one the operator takes."""
    from controller.api.reach import short_service_refusal

    files = [REPO / "README.md", *(REPO / "examples").rglob("*"), *(REPO / "charts").rglob("*"),
             *(REPO / "deploy").rglob("*"), *(REPO / "docs").rglob("*"), *(REPO / "controller" / "devstack").rglob("*")]
    scanned, refused = 0, []
    for path in files:
        if not path.is_file() or path.suffix not in (".md", ".yaml", ".yml", ".json", ".py", ".tpl", ".txt"):
            continue
        for url in re.findall(r"https?://[^\s\"'`<>)\]}]+", path.read_text(errors="replace")):
            scanned += 1
            if short_service_refusal(url):
                refused.append(f"{path.relative_to(REPO)}: {url}")
    assert scanned > 20 and not refused, refused
    assert short_service_refusal(SHORT)  # the scan can find one
