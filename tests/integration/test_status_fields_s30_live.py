"""The status fields the on-call CLI reads instead of the engine's sentences (s30: promotion.hold, history entries'
attempt and advice, rollback.candidateServedAsStable) are stored by the real kube-apiserver under the CRD's
structural schema, and `modelrollout explain` reads them back from it."""

from __future__ import annotations

import io
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from controller.api.commands import CommandAction
from controller.api.status import Phase
from controller.cli.oncall import OnCall
from controller.operator.kubeapi import GROUP, PLURAL, VERSION, RolloutStore, load_client_config
from tests.unit.test_engine_support import World, spec_dict

pytestmark = pytest.mark.integration
SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nsfw-classifier.yaml"
ADVICE = "point @production back at version 6 to promote candidate 7, or roll back"


def _held() -> World:
    world = World()
    world.registry.versions["5"] = {}
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.registry.aliases["production"] = "5"
    world.send(CommandAction.PROMOTE, command_id="first")
    for _ in range(3):
        world.advance(timedelta(minutes=1))
        world.reconcile()
    return world


def _hand_promoted_abort() -> World:
    world = World(spec=spec_dict(bake=None))
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and w.status.current_step == 1)
    world.target.stable_version, world.target.canary_version, world.target.canary_weight = "7", None, None
    world.target.frozen = True
    world.send(CommandAction.ABORT, command_id="abort-1")
    for _ in range(3):
        world.advance(timedelta(seconds=30))
        world.reconcile()
    return world


def test_the_new_status_fields_are_stored_and_explained(kubeconfig: Path, namespace: str) -> None:
    store = RolloutStore(load_client_config(str(kubeconfig), bounded=True))
    manifest = yaml.safe_load(SAMPLE.read_text())
    name = f"fields-{uuid.uuid4().hex[:6]}"
    manifest["metadata"] = {"name": name, "namespace": namespace}
    created = store.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)

    held = _held().status.to_dict()
    assert held["phase"] == "Promoting"
    stored = store.apply_status(created, {**held, "observedGeneration": 1})["status"]
    assert stored["promotion"]["hold"] == held["promotion"]["hold"]
    assert stored["promotion"]["hold"]["reason"] == "StableAliasMoved"
    assert stored["promotion"]["hold"]["advice"] == ADVICE
    assert [e.get("attempt") for e in stored["history"]] == [e["attempt"] for e in held["history"]]
    assert any(e.get("advice") == ADVICE for e in stored["history"])

    oncall = OnCall(str(kubeconfig), namespace, out=io.StringIO())
    text = oncall.explain(oncall.get(name))
    assert ("unless the hold ends first, it is rolled back untagged (not tagged rejected) at progressDeadline "
            f"({held['promotion']['hold']['deadline']}).") in text

    aborted = _hand_promoted_abort().status.to_dict()
    assert aborted["phase"] == "RollingBack"
    current = store.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    stored = store.apply_status(current, {**aborted, "observedGeneration": 1, "canaryWeight": 0})["status"]
    assert stored["rollback"]["candidateServedAsStable"] is True
    assert "the candidate may still serve all of it." in oncall.explain(oncall.get(name))
