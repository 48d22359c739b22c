"""Review s31registry finding 1, end to end: the operator run without --storage-uri-template (its default {source})
and a version whose source only MLflow resolves (the local stack registers run artifacts, mlflow-artifacts:/...;
MLflow 3's logged models are models:/m-<id>). Before, the candidate was staged with that URI and only failed at
progressDeadline, blaming the InferenceService; now the rollout waits in Pending, RegistryAvailable False
(RegistryInvalid) naming the flag, the chart value and {download_uri}, and nothing is staged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from controller.devstack.scenario import Scenario
from tests.integration.test_rollout_kserve_lifecycle import (  # noqa: F401 (fixtures)
    Rig,
    predictor_status,
    rig,
    scenario_factory,
)

pytestmark = pytest.mark.integration


def refused(status: dict[str, Any]) -> bool:
    return any(c.get("type") == "RegistryAvailable" and c.get("reason") == "RegistryInvalid"
               for c in status.get("conditions") or [])


def test_a_source_no_model_server_loads_waits_in_pending_saying_what_to_set(
        rig: Rig, scenario_factory: Callable[..., Scenario]) -> None:  # noqa: F811
    scenario = scenario_factory("clean")
    name = scenario.model_name
    before = rig.wait_isvc(name, lambda o: bool(predictor_status(o).get("latestRolledoutRevision")))
    rig.start_operator(storage_uri_template="")  # not set: the default {source}
    rig.apply(scenario.rollout(steps=[{"setWeight": 10}, {"pause": {}}]))
    status = rig.wait(name, refused, 120, "the refusal")
    condition = next(c for c in status["conditions"] if c["type"] == "RegistryAvailable")
    assert condition["status"] == "False"
    message = condition["message"]
    assert f"version {scenario.candidate_version}'s source is a mlflow-artifacts: URI" in message, message
    assert "--storage-uri-template (chart value controller.storageUriTemplate) is not set" in message
    assert "{download_uri}" in message
    assert status.get("phase") == "Pending" and not status.get("candidate"), status
    assert (status.get("message") or "").startswith("Waiting for the registry to resolve"), status.get("message")
    after = rig.isvc(name)
    assert after["spec"] == before["spec"]  # nothing staged
