"""Engine scenarios from the mutation review of the command, deletion and failure-pause paths (review s29engine):
each fails on a surviving mutant of controller/engine/decide.py, or on the defect it found."""

from __future__ import annotations

from datetime import timedelta

from test_engine import _first_rollout_killed_after_its_alias_moved, events, fail_from, finished
from test_engine_support import Registry, Target, World

from controller.api.commands import CommandAction
from controller.api.status import Phase
from controller.engine import REJECTED_TAG


def ignored(world: World, command_id: str) -> list[str]:
    return [h.detail for h in world.status.history if h.command_id == command_id and h.event == "CommandIgnored"]


def superseding() -> World:
    """Rolling version 7 back for version 8 (the withdrawal does not show yet)."""
    world = World()
    world.run_until(lambda w: w.status.current_step == 1)
    world.target.frozen = True
    world.spec["model"]["version"] = "8"
    world.generation += 1
    world.run_until(lambda w: w.status.phase is Phase.ROLLING_BACK)
    assert world.status.rollback is not None and world.status.rollback.restart
    return world


# C01: only abort stops a superseding rollback's new attempt; rollback is refused ("already rolling back").
def test_a_rollback_command_during_a_superseding_rollback_is_refused_and_the_new_candidate_starts() -> None:
    world = superseding()
    world.send(CommandAction.ROLLBACK, command_id="rb-1")
    world.reconcile()
    assert ignored(world, "rb-1") and "already rolling back" in ignored(world, "rb-1")[0]
    world.target.frozen = False
    world.run_until(lambda w: w.status.attempt == 2)
    assert world.status.candidate is not None and world.status.candidate.version == "8"


# C02: a success that rolled nothing out (the alias named the candidate already) has nothing to return to.
def test_rollback_after_an_already_stable_success_is_refused() -> None:
    world = World(registry=Registry(aliases={"production": "7"}), target=Target(stable_version="7"))
    world.reconcile()
    assert world.status.phase is Phase.SUCCEEDED and world.status.promotion is None
    world.send(CommandAction.ROLLBACK, command_id="rb-2")
    world.run_until(finished)
    assert world.status.phase is Phase.SUCCEEDED
    assert ignored(world, "rb-2") == ["rollback: there is no previous version to return to: version 7 was @production "
                                      "already, and this rollout changed nothing"]
    assert "RollbackStarted" not in events(world)


# Defect: an aborted first rollout ends Failed (TrafficNotRestored); a later spec edit of any field restarted it as
# "a fixed spec after failure", promoting the version on-call aborted (and tagged rejected) again.
def test_an_aborted_first_rollout_is_not_rolled_out_again_by_a_spec_edit() -> None:
    world = _first_rollout_killed_after_its_alias_moved()
    world.send(CommandAction.ABORT)
    world.run_until(finished, step=timedelta(seconds=2))
    assert world.status.phase is Phase.FAILED and world.registry.versions["7"].get(REJECTED_TAG) == "true"
    assert "production" not in world.registry.aliases
    world.spec["progressDeadline"] = "45m"  # an unrelated edit (a GitOps sync)
    world.generation += 1
    world.advance(timedelta(minutes=5))
    for _ in range(40):
        world.reconcile()
        world.advance(timedelta(seconds=30))
    assert world.status.attempt == 1
    assert "production" not in world.registry.aliases
    # Said, so that the rollout does not look stuck after the edit (review s29r4).
    (changed,) = [h.detail for h in world.status.history if h.event == "SpecChanged"]
    assert changed.endswith("not restarted: version 7 was rejected (retry, or a new version, starts again)")


# --- last session's survivors (s28engine) ----------------------------------------------------------------------

def at_final_pause(world: World) -> World:
    world.run_until(lambda w: w.status.phase is Phase.PAUSED and w.status.current_step == 5)
    return world


# P03: a candidate still staged but never ready when the promotion deadline passes failed on its own: rejected.
def test_a_candidate_staged_but_not_ready_at_the_promotion_deadline_is_tagged_rejected() -> None:
    world = at_final_pause(World())
    world.target.never_ready = True
    world.send(CommandAction.PROMOTE, command_id="p-1")
    world.run_until(finished)
    assert world.status.rollback is not None and world.status.rollback.reject_candidate
    assert world.registry.versions["7"].get(REJECTED_TAG) == "true"


# P10: the promotion's alias move is not sent while the registry does not answer (it is held, then sent once back).
def test_the_promotion_alias_move_is_not_sent_while_the_registry_is_away() -> None:
    world = at_final_pause(World())
    world.registry.slow_promotion = True  # the alias move is accepted but does not show
    world.send(CommandAction.PROMOTE, command_id="p-2")
    world.run_until(lambda w: w.status.promotion is not None and w.status.promotion.target_confirmed_at is not None)
    world.registry.down = True
    before = len(world.executed)
    for _ in range(10):
        world.reconcile()
        world.advance(timedelta(seconds=30))
    assert not [a for a in world.executed[before:] if type(a).__name__ == "SetAlias"]
    world.registry.down = False
    world.registry.slow_promotion = False
    world.run_until(lambda w: w.status.phase is Phase.BAKING)
    assert world.registry.aliases["production"] == "7"


# B09: time up with no outcome recorded (a status written without it) is never a pass.
def test_a_bake_whose_time_is_up_without_an_outcome_is_not_passed() -> None:
    import dataclasses
    world = at_final_pause(World())
    world.send(CommandAction.PROMOTE, command_id="p-3")
    world.run_until(lambda w: w.status.phase is Phase.BAKING and w.status.analysis is not None
                    and w.status.analysis.request_id is None and w.status.analysis.ends_at is not None)
    analysis = world.status.analysis
    assert analysis is not None
    world.status = dataclasses.replace(world.status, analysis=dataclasses.replace(
        analysis, outcome=None, window_start=world.now - timedelta(hours=1, seconds=1),
        ends_at=world.now - timedelta(seconds=1), measured_at=world.now))
    world.reconcile()
    assert world.status.phase is not Phase.SUCCEEDED
    assert "BakePassed" not in events(world)


# R11: after a promotion, a superseding rollback restored stable (the promoted version is off the target): the new
# attempt starts even when the target keeps a pinned 0% canary (Knative canaryTrafficPercent: 0); no unstage.
def test_a_promoted_version_superseded_starts_the_new_attempt_without_an_unstage() -> None:
    import dataclasses

    class PinnedTarget(Target):
        pin = False

        def observe(self, now):  # type: ignore[no-untyped-def]
            observed = super().observe(now)
            return dataclasses.replace(observed, pinned=True) if self.pin and observed.error is None else observed

    world = at_final_pause(World(target=PinnedTarget()))
    world.send(CommandAction.PROMOTE, command_id="p-4")
    world.run_until(lambda w: w.status.phase is Phase.BAKING)
    world.target.pin = True  # type: ignore[attr-defined]
    world.spec["model"]["version"] = "8"
    world.generation += 1
    for _ in range(20):
        world.reconcile()
        world.advance(timedelta(seconds=30))
    assert world.status.attempt == 2
    assert not [a for a in world.executed if a.id == "1:rollback:unstage"]


# C05: after success, a target already put back on the previous version by hand still takes a rollback command:
# the alias goes back and the candidate is tagged rejected (the command is not refused as "another release").
def test_rollback_after_success_on_a_target_reverted_by_hand_still_restores_the_alias() -> None:
    world = World()
    del world.spec["bake"]
    at_final_pause(world)
    world.send(CommandAction.PROMOTE, command_id="p-5")
    world.run_until(finished)
    assert world.status.phase is Phase.SUCCEEDED and world.registry.aliases["production"] == "7"
    world.target.stable_version = "6"  # put back by hand
    world.send(CommandAction.ROLLBACK, command_id="rb-5")
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, limit=200)
    assert not ignored(world, "rb-5")
    assert world.registry.aliases["production"] == "6"
    assert world.registry.versions["7"].get(REJECTED_TAG) == "true"


# R43: a deleted rollout's refused rejection tag is given up by the delete's own deadline (from the delete), not by
# the CandidateNotTagged rule of a rollback that is not being deleted.
def test_a_deleted_rollout_whose_tag_is_refused_gives_up_from_the_delete() -> None:
    from tests.unit.test_engine import reverting
    world = reverting(World())
    fail_from(world, step_index=3)
    deleted_at = None
    for _ in range(300):
        world.conflict_ids.add("1:rollback:tag")  # the registry refuses this one write, every time
        world.reconcile()
        rollback = world.status.rollback
        if world.status.phase is Phase.ROLLING_BACK and rollback is not None and deleted_at is None \
                and world.now - rollback.verdict_at >= timedelta(minutes=20):
            world.deleting = True
            deleted_at = world.now
        if finished(world):
            break
        world.advance(timedelta(minutes=1))
    assert deleted_at is not None and world.status.phase is Phase.ROLLED_BACK
    assert "CandidateNotTagged" not in events(world)
    assert world.status.history[-1].detail.endswith(f"not confirmed: {REJECTED_TAG} tag")
    assert world.now - deleted_at >= timedelta(minutes=30)


# --- this session's survivors -----------------------------------------------------------------------------------

# D05: a bake failure waiting for a human (automatic rollback off) is rejected for that failure when the rollout is
# deleted, as an analysis failure is.
def test_a_deleted_rollout_paused_on_a_bake_failure_rejects_the_candidate_for_it() -> None:
    from tests.unit.test_engine_support import spec_dict
    world = World(spec=spec_dict(rollback={"automatic": False, "revertOnDeletion": True}))
    fail_from(world, step_index=None, after=timedelta(minutes=5), mode="bake")
    at_final_pause(world)
    world.send(CommandAction.PROMOTE, command_id="p-6")
    world.run_until(lambda w: w.status.phase is Phase.PAUSED and w.status.pause is not None
                    and str(w.status.pause.reason) == "BakeFailed")
    world.deleting = True
    world.run_until(finished)
    assert world.status.rollback is not None and world.status.rollback.reject_candidate
    assert world.registry.versions["7"].get(REJECTED_TAG) == "true"
    assert world.registry.aliases["production"] == "6" and world.target.stable_version == "6"


# D10: the deadline has passed only after progressDeadline, not at it (as _rollback_stuck and a Deployment count).
def test_a_staging_deadline_is_not_passed_at_the_exact_instant() -> None:
    world = World(target=Target(stable_version="6", never_ready=False, ready_delay=timedelta(hours=2)))
    world.reconcile()
    started = world.status.started_at
    assert started is not None and world.status.phase is Phase.PENDING
    world.now = started + timedelta(minutes=30)
    world.reconcile()
    assert world.status.phase is Phase.PENDING and world.status.rollback is None
    world.now = started + timedelta(minutes=30, seconds=1)
    world.reconcile()
    assert world.status.phase is not Phase.PENDING or world.status.rollback is not None


# D09: a rollback is "stuck" (Progressing False) only past progressDeadline, not at it.
def test_a_rollback_is_not_called_stuck_at_the_exact_deadline() -> None:
    world = World()
    fail_from(world, step_index=1)
    world.run_until(lambda w: w.status.current_step == 1)
    world.registry.down = True  # the alias cannot be confirmed
    world.run_until(lambda w: w.status.phase is Phase.ROLLING_BACK)
    rollback = world.status.rollback
    assert rollback is not None
    world.now = rollback.verdict_at + timedelta(minutes=30)
    world.reconcile()
    assert "ProgressDeadlineExceeded" not in events(world)
    world.now += timedelta(seconds=1)
    world.reconcile()
    assert "ProgressDeadlineExceeded" in events(world)


# N09: abort (or rollback) of a Failed rollout is refused: nothing of it serves to roll back.
def test_an_abort_of_a_failed_rollout_is_refused_and_starts_nothing() -> None:
    world = World()
    world.spec["model"]["version"] = "99"  # no such version: Failed at resolve
    world.run_until(finished)
    assert world.status.phase is Phase.FAILED
    world.send(CommandAction.ABORT, command_id="ab-9")
    for _ in range(5):
        world.reconcile()
        world.advance(timedelta(seconds=30))
    assert world.status.phase is Phase.FAILED and "RollbackStarted" not in events(world)
    assert ignored(world, "ab-9") == ["abort: nothing to roll back in phase Failed"]


# N08: an abort during an ordinary rollback (not one making way for a new version) is refused: nothing to cancel.
def test_an_abort_during_an_ordinary_rollback_is_refused() -> None:
    world = World()
    fail_from(world, step_index=1)
    world.run_until(lambda w: w.status.current_step == 1)
    world.registry.down = True  # the rollback waits for the alias
    world.run_until(lambda w: w.status.phase is Phase.ROLLING_BACK)
    reason = world.status.rollback.reason if world.status.rollback else ""
    world.send(CommandAction.ABORT, command_id="ab-8")
    world.reconcile()
    assert ignored(world, "ab-8") == ["abort: already rolling back"]
    assert world.status.rollback is not None and world.status.rollback.reason == reason


# N11: an abort before the candidate is resolved ends the rollout at once, with nothing to roll back.
def test_an_abort_before_resolution_records_aborted_and_no_rollback() -> None:
    world = World()
    world.registry.down = True
    world.reconcile()
    world.send(CommandAction.ABORT, actor="ken", command_id="ab-11")
    world.reconcile()
    assert world.status.phase is Phase.ROLLED_BACK and world.status.completed_at == world.now
    assert world.status.rollback is None
    assert "Aborted" in events(world) and "RollbackStarted" not in events(world)


# N10: abort after a promotion that succeeded is refused (rollback is the command for that), not a rollback.
def test_abort_after_a_promoted_success_is_refused_pointing_to_rollback() -> None:
    world = World()
    del world.spec["bake"]
    at_final_pause(world)
    world.send(CommandAction.PROMOTE, command_id="p-10")
    world.run_until(finished)
    assert world.status.phase is Phase.SUCCEEDED and world.status.promotion is not None
    world.send(CommandAction.ABORT, command_id="ab-10")
    world.reconcile()
    assert world.status.phase is Phase.SUCCEEDED and world.registry.aliases["production"] == "7"
    assert ignored(world, "ab-10") == [
        "abort: the rollout is finished; use rollback to return to the previous version"]


# N18: promote is refused at a missed weight deadline (the target never took the weight): it must not skip past it.
def test_promote_at_a_missed_weight_deadline_is_refused_and_skips_nothing() -> None:
    from tests.unit.test_engine import settled
    from tests.unit.test_engine_support import spec_dict
    world = World(spec=spec_dict(rollback={"automatic": False}))
    world.run_until(lambda w: w.status.current_step == 1)
    world.target.ignore_weights = True  # weight 10 (step 3) never takes effect
    world.run_until(settled, step=timedelta(minutes=5))
    assert world.status.pause is not None and str(world.status.pause.reason) == "ProgressDeadlineExceeded"
    step = world.status.current_step
    world.send(CommandAction.PROMOTE, command_id="p-18")
    world.reconcile()
    assert world.status.current_step == step and world.status.phase is Phase.PAUSED
    assert ignored(world, "p-18") == ["promote: the target did not take the last change; use retry to try it again "
                                      "or rollback"]


# N23: retry starts a Failed rollout again (without a spec edit).
def test_retry_of_a_failed_rollout_starts_a_new_attempt() -> None:
    world = World()
    world.spec["model"]["version"] = "9"  # not registered yet: Failed at resolve
    world.run_until(finished)
    assert world.status.phase is Phase.FAILED
    world.registry.versions["9"] = {}
    world.send(CommandAction.RETRY, command_id="rt-23")
    world.run_until(lambda w: w.status.candidate is not None, limit=20)
    assert world.status.candidate is not None and world.status.candidate.version == "9"
    assert not ignored(world, "rt-23")


# N24: retry of a failed gate (automatic rollback off) runs the gate again, as for an inconclusive one.
def test_retry_of_a_failed_gate_runs_it_again() -> None:
    from controller.engine import ActionType
    from controller.verdict import Outcome
    from tests.unit.test_engine_support import spec_dict, verdict
    world = World(spec=spec_dict(rollback={"automatic": False}),
                  gate_verdicts=[verdict(Outcome.FAIL, "accuracy", "0.90 < 0.97")])
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    assert world.status.pause is not None and str(world.status.pause.reason) == "GateFailed"
    world.gate_verdicts = [verdict(Outcome.PASS, "accuracy", "0.98")]
    world.send(CommandAction.RETRY, command_id="rt-24")
    world.reconcile()
    gates = [action.id for action in world.executed if action.type is ActionType.RUN_GATE]
    assert gates == ["1:gate-1", "1:gate-2"]
    assert world.status.phase is Phase.PROGRESSING


# N37: a failure waiting for a human says since when: the failure's time, not the attempt's start.
def test_a_failure_pause_counts_from_the_failure() -> None:
    from controller.verdict import Outcome
    from tests.unit.test_engine_support import spec_dict, verdict
    world = World(spec=spec_dict(rollback={"automatic": False}))
    world.run_until(lambda w: w.status.current_step == 1)
    world.judge = lambda _request: [verdict(Outcome.FAIL)]
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    pause = world.status.pause
    assert pause is not None and str(pause.reason) == "AnalysisFailed"
    awaiting = next(h for h in world.status.history if h.event == "AwaitingDecision")
    assert pause.since == awaiting.time and pause.since != world.status.started_at


# N38: paused at a missed promotion deadline, the message still names the promotion's refused write (a paused
# rollout's failed actions are those of the phase it resumes).
def test_a_promotion_deadline_pause_keeps_naming_the_refused_alias_write() -> None:
    from tests.unit.test_engine_support import spec_dict
    world = World(spec=spec_dict(rollback={"automatic": False}))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED and w.status.current_step == 5)
    world.send(CommandAction.PROMOTE, command_id="p-38")
    for _ in range(200):
        world.conflict_ids.add("1:promote:alias")  # the registry refuses the alias move, every time
        world.reconcile()
        if world.status.phase is Phase.PAUSED and world.status.pause is not None \
                and str(world.status.pause.reason) == "ProgressDeadlineExceeded":
            break
        world.advance(timedelta(minutes=1))
    assert world.status.pause is not None and world.status.pause.resume_phase is Phase.PROMOTING
    world.advance(timedelta(minutes=1))
    world.reconcile()
    assert "1:promote:alias: 409 conflict" in world.status.message, world.status.message


# N41: a delete seen only long after it was made (the operator was down) still gets a rollback of progressDeadline
# from when the rollback started, not one given up at once for the delete's age.
def test_a_delete_seen_late_gets_its_full_rollback_deadline() -> None:
    from tests.unit.test_engine import reverting
    world = reverting(World())
    world.run_until(lambda w: w.status.current_step == 3)
    world.registry.down = True  # the alias cannot be confirmed for now
    world.deleting = True
    world.deleted_at = world.now - timedelta(minutes=40)  # deleted while the operator was down
    world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK
    world.advance(timedelta(minutes=5))
    world.registry.down = False
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.registry.aliases["production"] == "6" and not world.target.canary_weight


# N45: an inconclusive bake pause records the phase it resumes (status.pause.resumePhase), as a failure pause does.
def test_an_inconclusive_bake_pause_records_that_it_resumes_the_bake() -> None:
    from controller.verdict import Outcome
    from tests.unit.test_engine_support import verdict
    world = World()
    at_final_pause(world)
    world.judge = lambda request: [verdict(Outcome.INCONCLUSIVE if str(request.mode) == "bake" else Outcome.PASS)]
    world.send(CommandAction.PROMOTE, command_id="p-45")
    world.run_until(lambda w: w.status.phase is Phase.PAUSED and w.status.pause is not None
                    and str(w.status.pause.reason) == "BakeInconclusive")
    assert world.status.pause is not None and world.status.pause.resume_phase is Phase.BAKING


def test_a_new_version_on_a_rejected_failed_rollout_is_not_said_not_restarted() -> None:
    # Review s29r6: the SpecChanged entry said "not restarted" just before the new version's attempt started.
    world = _first_rollout_killed_after_its_alias_moved()
    world.send(CommandAction.ABORT)
    world.run_until(finished, step=timedelta(seconds=2))
    world.spec["model"]["version"] = "8"
    world.generation += 1
    world.reconcile()
    (changed,) = [h.detail for h in world.status.history if h.event == "SpecChanged"]
    assert "not restarted" not in changed and world.status.attempt == 2


# A refused rollback of a Succeeded first rollout names the way out left (review s32: it named none).
def test_rollback_after_a_first_rollout_names_the_way_forward() -> None:
    world = World(registry=Registry(aliases={}), target=Target(stable_version=None))
    world.run_until(finished)
    assert world.status.phase is Phase.SUCCEEDED and world.status.stable is None
    world.send(CommandAction.ROLLBACK, command_id="rb-3")
    world.run_until(finished)
    assert world.status.phase is Phase.SUCCEEDED
    assert ignored(world, "rb-3") == [
        "rollback: there is no previous version to return to: @production named no version before version 7; "
        "to replace it, roll out a known-good version (spec.model.version)"]
    assert "RollbackStarted" not in events(world)
