"""Promotion against a real MLflow that changed under the rollout (review s28registry): the operator process, a real
kube-apiserver with the KServe stand-in and a real `mlflow server`.

- @production pointed at a third version by a human while the rollout paused: the promotion holds before any
  traffic moves, says why, and a rollback leaves their alias where they put it.
- The pinned candidate deleted from MLflow while paused: never promoted, failed at once (not at progressDeadline).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from controller.devstack.mlflow_server import MlflowServer
from controller.devstack.scenario import STABLE_ALIAS, Scenario
from tests.integration.test_rollout_kserve_lifecycle import (  # noqa: F401  (fixtures)
    Rig,
    events,
    paused_at,
    phase_in,
    predictor_status,
    revisions,
    rig,
    scenario_factory,
)

pytestmark = pytest.mark.integration


def mlflow(url: str, method: str, endpoint: str, payload: dict[str, Any]) -> dict[str, Any]:
    answer = requests.request(method, f"{url}/api/2.0/mlflow/{endpoint}", timeout=10,
                              **({"params": payload} if method == "GET" else {"json": payload}))
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return body


def aliases(url: str, model: str) -> dict[str, str]:
    found = mlflow(url, "GET", "registered-models/get", {"name": model})["registered_model"].get("aliases", [])
    return {entry["alias"]: entry["version"] for entry in found}


def shares(on: Rig, name: str) -> dict[str, int]:
    """Percent of traffic per storage URI, as KServe reports it."""
    isvc = on.isvc(name)
    uri_of = {r["name"]: r["storage_uri"] for r in revisions(isvc)}
    found: dict[str, int] = {}
    for entry in predictor_status(isvc).get("traffic") or []:
        if int(entry.get("percent") or 0):
            uri = uri_of.get(entry.get("revisionName"), "?")
            found[uri] = found.get(uri, 0) + int(entry["percent"])
    return found


def of_version(found: dict[str, int], version: str) -> int:
    return sum(percent for uri, percent in found.items() if uri.rstrip("/").endswith(f"/{version}"))


def test_an_alias_moved_by_hand_holds_the_promotion_and_is_left_by_the_rollback(
        rig: Rig, scenario_factory: Callable[..., Scenario], mlflow_server: MlflowServer) -> None:  # noqa: F811
    url, scenario = mlflow_server.url, scenario_factory("clean")
    name, stable, candidate = scenario.model_name, scenario.stable_version, scenario.candidate_version
    rig.start_operator()
    rig.apply(scenario.rollout(progressDeadline="300s", steps=[{"setWeight": 10}, {"pause": {}}]))
    rig.wait(name, paused_at(1, 10), 150, "paused at 10%")
    third = mlflow(url, "POST", "model-versions/create", {"name": name, "source": "s3://x/human"})
    third_version = third["model_version"]["version"]
    mlflow(url, "POST", "registered-models/alias", {"name": name, "alias": STABLE_ALIAS, "version": third_version})
    rig.command(name, "promote", "carol", "promote-1")
    held = f"Holding the promotion: @{STABLE_ALIAS} names version {third_version}, set outside this rollout"
    status = rig.wait(name, lambda s: str(s.get("message", "")).startswith(held), 60, "the promotion held")
    time.sleep(5)  # a few reconciles more: still held, nothing moved
    status = rig.status(name)
    assert status["phase"] == "Promoting" and str(status["message"]).startswith(held)
    assert "Promoted" not in events(status) and events(status).count("StableMismatch") == 1
    assert of_version(shares(rig, name), candidate) == 10 and of_version(shares(rig, name), stable) == 90
    assert aliases(url, name)[STABLE_ALIAS] == third_version
    rig.command(name, "rollback", "dave", "rollback-1")
    status = rig.wait(name, phase_in("RolledBack", "Failed"), 90, "rolled back")
    assert status["phase"] == "RolledBack" and status["rollback"].get("aliasLeftOn") == third_version
    assert "AliasLeft" in events(status) and "AliasRestored" not in events(status)
    assert aliases(url, name)[STABLE_ALIAS] == third_version  # their decision stands
    rig.wait(name, lambda _: of_version(shares(rig, name), stable) == 100, 60, "traffic back on stable")


def test_a_deleted_candidate_is_never_promoted(
        rig: Rig, scenario_factory: Callable[..., Scenario], mlflow_server: MlflowServer) -> None:  # noqa: F811
    url, scenario = mlflow_server.url, scenario_factory("clean")
    name, stable, candidate = scenario.model_name, scenario.stable_version, scenario.candidate_version
    rig.start_operator()
    rig.apply(scenario.rollout(progressDeadline="300s", steps=[{"setWeight": 10}, {"pause": {}}]))
    rig.wait(name, paused_at(1, 10), 150, "paused at 10%")
    mlflow(url, "DELETE", "model-versions/delete", {"name": name, "version": candidate})
    asked = time.monotonic()
    rig.command(name, "promote", "carol", "promote-1")
    status = rig.wait(name, phase_in("Succeeded", "RolledBack", "Failed"), 90, "ended")
    assert time.monotonic() - asked < 90  # well inside progressDeadline (300 s)
    assert status["phase"] == "Failed" and "Promoted" not in events(status)
    assert status["rollback"]["reason"] == f"candidate {candidate} no longer exists in the registry, so it cannot " \
                                           "be promoted"
    assert not status["rollback"]["rejectCandidate"] and "CandidateRejected" not in events(status)
    promote = next(a for a in status.get("actions") or [] if a["id"] == "1:promote:target")
    assert not promote.get("sentAt")  # the target was never asked to give it all traffic
    assert aliases(url, name) == {STABLE_ALIAS: stable}
    rig.wait(name, lambda _: of_version(shares(rig, name), stable) == 100, 60, "traffic back on stable")
