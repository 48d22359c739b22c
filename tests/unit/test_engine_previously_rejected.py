"""A rollout sent to the version the stable alias names already, which a verdict rejected (the alias was moved onto
it by hand): done (Succeeded: nothing to roll out), but not good. Ready is False with reason PreviouslyRejected, so
that Argo CD shows it Degraded and `kubectl wait --for=condition=Ready` does not take it for a success."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_argocd_health import CUSTOMIZATION, run_lua
from test_engine_support import Registry, Target, World

from controller.api import CommandAction
from controller.api.status import ConditionStatus, ConditionType, Phase
from controller.engine import REJECTED_TAG

REJECTED_MESSAGE = ("Version 7 serves all traffic as @production, though it carries modelrollout.rejected=true: a "
                    "verdict rejected it and the alias was moved onto it by hand.")


def already_stable(rejected: bool, target_records: str | None = "7") -> World:
    world = World(registry=Registry(aliases={"production": "7"}), target=Target(stable_version=target_records))
    if rejected:
        world.registry.versions["7"][REJECTED_TAG] = "true"
    world.reconcile()
    assert world.status.phase is Phase.SUCCEEDED and world.executed == []
    return world


def test_ready_is_false_with_reason_previously_rejected() -> None:
    world = already_stable(rejected=True)
    ready = world.status.condition(ConditionType.READY)
    assert ready is not None
    assert (ready.status, ready.reason, ready.message) == (ConditionStatus.FALSE, "PreviouslyRejected",
                                                           REJECTED_MESSAGE)
    progressing = world.status.condition(ConditionType.PROGRESSING)
    assert progressing is not None and (progressing.status, progressing.reason) == (ConditionStatus.FALSE,
                                                                                    "RolloutSucceeded")
    world.reconcile()  # and it stays so
    assert world.status.condition(ConditionType.READY) == ready


def test_a_version_not_rejected_is_ready() -> None:
    ready = already_stable(rejected=False).status.condition(ConditionType.READY)
    assert ready is not None and (ready.status, ready.reason) == (ConditionStatus.TRUE, "RolloutSucceeded")


def test_with_no_claim_on_what_serves_the_message_still_names_the_rejection() -> None:
    world = already_stable(rejected=True, target_records=None)
    assert world.status.message == (
        "Version 7 is already @production; InferenceService nsfw-classifier records no version it serves that can be "
        "confirmed, so none is claimed: nothing was rolled out. Version 7 carries modelrollout.rejected=true: a "
        "verdict rejected it.")
    ready = world.status.condition(ConditionType.READY)
    assert ready is not None and ready.reason == "PreviouslyRejected" and ready.message == world.status.message


@pytest.mark.parametrize(("rejected", "health"), [(True, "Degraded"), (False, "Healthy")])
def test_argocd_health_of_the_engines_status(rejected: bool, health: str) -> None:
    world = already_stable(rejected)
    obj = {"apiVersion": "modelrollout.io/v1alpha1", "kind": "ModelRollout",
           "metadata": {"name": "nsfw-classifier", "namespace": "moderation", "generation": world.generation},
           "spec": world.spec, "status": world.status.to_dict()}
    assert run_lua(CUSTOMIZATION / "health.lua", obj) == {"status": health, "message": world.status.message}


def test_it_stays_so_once_the_history_has_moved_past_the_rejection() -> None:
    # The history keeps 50 entries: refused commands on the ended rollout (or spec edits) push AlreadyStable out.
    world = already_stable(rejected=True)
    for index in range(60):
        world.advance(timedelta(minutes=1))
        world.send(CommandAction.PROMOTE, command_id=f"promote-{index}")
        world.reconcile()
    assert all(entry.event != "AlreadyStable" for entry in world.status.history)
    ready = world.status.condition(ConditionType.READY)
    assert ready is not None and (ready.status, ready.reason) == (ConditionStatus.FALSE, "PreviouslyRejected")
    assert world.status.message == REJECTED_MESSAGE
