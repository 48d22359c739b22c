"""The API server raises a custom resource's generation when it sets deletionTimestamp (review s30runtime LOW 1):
no human edited the spec, so the deletion records no SpecChanged (an Event on-call would read as an edit)."""

from __future__ import annotations

from datetime import timedelta

from test_engine import events, finished
from test_engine_support import World, spec_dict

from controller.api.commands import CommandAction
from controller.api.status import Phase


def test_a_deletion_raising_the_generation_is_not_recorded_as_a_spec_change() -> None:
    world = World(spec=spec_dict(rollback={"revertOnDeletion": True}))
    world.run_until(lambda w: w.status.current_step == 1)
    world.deleting = True
    world.generation += 1
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK, world.status.message
    assert "SpecChanged" not in events(world), [h.detail for h in world.status.history if h.event == "SpecChanged"]
    assert world.status.observed_generation == world.generation


def test_a_spec_edit_is_still_recorded() -> None:
    world = World()
    world.run_until(lambda w: w.status.current_step == 1)
    world.generation += 1
    world.reconcile()
    assert "SpecChanged" in events(world)


def test_a_deletion_without_revert_on_deletion_starts_nothing_new() -> None:
    """A foreground delete (Argo CD's default prune) keeps the object a while with deletionTimestamp set and the
    generation raised: a Failed rollout is not restarted by it, nor a new version staged, nor a command run
    (review s30r4)."""
    world = World()
    world.target.never_ready = True  # the candidate never gets ready: Failed at progressDeadline, not rejected
    world.run_until(lambda w: w.status.phase in (Phase.FAILED, Phase.ROLLED_BACK), step=timedelta(minutes=5))
    ended = world.status
    assert ended.rollback is None or not ended.rollback.reject_candidate
    sent = len(world.executed)
    world.deleting = True
    world.generation += 1
    world.spec["model"]["version"] = "8"
    world.send(CommandAction.RETRY, command_id="r-1")
    for _ in range(20):
        world.now += timedelta(seconds=30)
        world.reconcile()
    assert world.status.phase is ended.phase and world.status.attempt == ended.attempt
    assert "SpecChanged" not in events(world) and "Resolved" not in events(world)[len(ended.history):]
    assert [h.detail for h in world.status.history if h.command_id == "r-1"] == [
        "retry: the ModelRollout is being deleted"]
    assert len(world.executed) == sent, world.executed[sent:]


def test_a_pending_rollout_being_deleted_without_revert_stages_nothing() -> None:
    world = World()
    world.deleting = True
    world.reconcile()
    assert world.status.phase is Phase.PENDING and "being deleted" in world.status.message
    assert world.executed == []


def test_a_rollout_deleted_mid_canary_without_revert_moves_no_traffic() -> None:
    """Left as it is (README): no further step's weight, no promotion, while the object is still there (review
    s30r5 1)."""
    world = World()
    world.run_until(lambda w: w.status.current_step == 1)
    sent, weight = len(world.executed), world.target.canary_weight
    world.deleting = True
    world.generation += 1
    for _ in range(60):
        world.advance(timedelta(seconds=30))
        world.reconcile()
    moved = [a.id for a in world.executed[sent:] if a.type not in ("RunAnalysis", "RunGate")]
    assert moved == [], moved
    assert world.target.canary_weight == weight and world.status.phase is not Phase.SUCCEEDED
    assert "being deleted" in world.status.message, world.status.message


def test_a_dataset_re_pinned_while_being_deleted_starts_no_new_gate() -> None:
    """The spec edited while a foreground delete holds the object: no rollback to gate again, no new attempt
    (review s30readme 2)."""
    world = World()
    world.run_until(lambda w: w.status.current_step == 1)
    sent = len(world.executed)
    world.deleting = True
    world.generation += 1
    world.spec["goldenDataset"]["sha256"] = "b" * 64
    for _ in range(20):
        world.advance(timedelta(seconds=30))
        world.reconcile()
    assert [a.id for a in world.executed[sent:]] == []
    assert "RolledBackToGateAgain" not in events(world) and "DatasetChanged" not in events(world)
