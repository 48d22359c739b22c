"""A rollout naming a registered model that does not exist (a typo) fails saying so, as a missing version
does; it used to wait in Pending for ever, because the stable alias lookup failed on the same missing model."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from controller.api.spec import parse_spec
from controller.api.status import ModelRolloutStatus, Phase
from controller.engine import Observations, decide
from controller.operator.runtime import OperatorConfig, RolloutRuntime
from controller.registry import InMemoryRegistry

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nsfw-classifier.yaml"


@pytest.mark.parametrize("model_exists", [True, False])
def test_a_missing_model_or_version_fails_the_rollout_naming_it(model_exists: bool) -> None:
    obj = yaml.safe_load(EXAMPLE.read_text())
    obj["metadata"]["namespace"] = "team-a"
    spec = parse_spec(obj["spec"])
    runtime = RolloutRuntime(obj, spec, client.ApiClient(), OperatorConfig())
    registry = InMemoryRegistry()
    if model_exists:
        registry.add_version(spec.model.name)  # version 1 only; the spec asks for 7
    runtime._registry = registry
    status = ModelRolloutStatus()
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    observation = runtime.observe_registry(status)
    assert observation.error is None
    status = decide(spec, status, Observations(generation=1, registry=observation), start).status
    assert status.phase is Phase.FAILED
    assert "nsfw-classifier version 7 does not exist in the registry" in status.message


def test_a_model_deleted_while_staging_is_a_registry_error_not_a_first_rollout() -> None:
    from controller.api.status import VersionRef

    obj = yaml.safe_load(EXAMPLE.read_text())
    obj["metadata"]["namespace"] = "team-a"
    spec = parse_spec(obj["spec"])
    runtime = RolloutRuntime(obj, spec, client.ApiClient(), OperatorConfig())
    runtime._registry = InMemoryRegistry()  # the model is gone
    staging = ModelRolloutStatus(candidate=VersionRef(version="7"))  # Pending, candidate already resolved
    observation = runtime.observe_registry(staging)
    assert observation.error is not None and "does not exist" in observation.error.message
