"""What a spec needs from the operator's own settings is refused before anything is called, naming the field."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from controller.api import parse_spec
from controller.operator.runtime import OperatorConfig, RolloutStepper

RAW: dict[str, Any] = {
    "model": {"name": "nsfw", "version": "2"}, "target": {"kserve": {"inferenceService": "nsfw"}},
    "canary": {"steps": [{"setWeight": 10}, {"analysis": {"duration": "5m"}}]},
    "analysis": {"metrics": [{"name": "errors", "threshold": {"query": "vector(0)", "max": 1}}]},
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


@pytest.mark.parametrize(("spec_address", "default"), [(None, "http://prometheus.monitoring:9090"),
                                                        ("http://prom.team-a:9090", None)])
def test_the_operators_default_prometheus_stands_in_for_the_spec(spec_address: str | None,
                                                                  default: str | None) -> None:
    from controller.operator.runtime import check_operator_settings

    raw = copy.deepcopy(RAW)
    if spec_address:
        raw["analysis"]["prometheus"] = {"address": spec_address}
    check_operator_settings(parse_spec(raw), "team-a", OperatorConfig(default_prometheus_url=default))
