"""Engine transitions, one test per path: success, every failure, every command, faults and restarts."""

from __future__ import annotations

import copy
import dataclasses
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from test_engine_support import GATE_REPORT, SHA, T0, Registry, Target, World, spec_dict, verdict

from controller.api import (
    ActionState,
    CommandAction,
    ConditionStatus,
    ModelRolloutStatus,
    PauseReason,
    Phase,
    RollbackCause,
    SpecError,
    parse_spec,
)
from controller.api.durations import format_duration
from controller.api.serialization import format_time
from controller.engine import (
    GATE_INTERRUPTIONS_LIMIT,
    REJECTED_TAG,
    REJECTED_TIME_TAG,
    Action,
    ActionType,
    AdapterError,
    AdapterErrorKind,
    Decision,
    JudgeResult,
    Observations,
    RestoreStable,
    RunAnalysis,
    RunGate,
    SetAlias,
    SetCanaryWeight,
    TagRejected,
    decide,
    holds_deletion,
    reject_spec,
    rejection_time,
)
from controller.engine.decide import ALIAS_POLL
from controller.registry.types import REJECTED_REASON_TAG
from controller.verdict import DATASET_INTEGRITY, Outcome, Verdict

DONE = (Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED)


def settled(world: World) -> bool:
    return world.status.phase in (*DONE, Phase.PAUSED)


def finished(world: World) -> bool:
    return world.status.phase in DONE


def events(world: World) -> list[str]:
    return [entry.event for entry in world.status.history]


def effect_ids(world: World) -> list[str]:
    return [action.id for action in world.executed if action.type not in (ActionType.RUN_ANALYSIS, ActionType.RUN_GATE)]


def weights_sent(world: World) -> list[int]:
    return [action.weight for action in world.executed if isinstance(action, SetCanaryWeight)]


def condition(world: World, name: str) -> tuple[str, str]:
    found = world.status.condition(name)
    assert found is not None, name
    return str(found.status), found.reason


def fail_from(world: World, step_index: int | None, after: timedelta = timedelta(minutes=2),
              mode: str = "canary") -> None:
    """Judges pass until `after` into the given step (or the bake), then fail."""
    def judge(request: RunAnalysis) -> list:
        if str(request.mode) == mode and request.step_index == step_index and world.now >= request.window_start + after:
            return [verdict(Outcome.FAIL)]
        return [verdict(Outcome.PASS)]
    world.judge = judge


def reach_final_pause(world: World) -> None:
    world.run_until(settled)
    assert world.status.phase is Phase.PAUSED
    assert world.status.pause is not None and world.status.pause.reason is PauseReason.PAUSE_STEP


# --- the success path --------------------------------------------------------------------------------


def test_full_rollout_succeeds() -> None:
    world = World()
    reach_final_pause(world)
    assert world.status.current_step == 5
    assert world.status.canary_weight == 50
    assert world.status.message == "Paused at step 6/6 with candidate 7 at 50% until someone runs promote."
    assert condition(world, "Progressing") == ("False", "PauseStep")
    world.send(CommandAction.PROMOTE, actor="alice")
    world.run_until(finished)
    status = world.status
    assert status.phase is Phase.SUCCEEDED
    assert status.message == "Version 7 serves all traffic as @production."
    # What the gate measured stays in status (per-class metrics of both versions), and survives a round trip.
    assert status.gate is not None and status.gate.report == GATE_REPORT
    assert ModelRolloutStatus.from_dict(status.to_dict()).gate == status.gate
    # The promotion's alias move asks the registry to record the way back (the previous version) too.
    [alias_move] = [a for a in world.executed if a.id == "1:promote:alias"]
    assert isinstance(alias_move, SetAlias) and alias_move.promotion and alias_move.version == "7"
    assert effect_ids(world) == ["1:stage:7", "1:step-0:weight-1", "1:step-2:weight-10", "1:step-4:weight-50",
                                 "1:promote:target", "1:promote:alias"]
    assert weights_sent(world) == [1, 10, 50]
    assert world.registry.aliases["production"] == "7"
    assert (world.target.stable_version, world.target.canary_version) == ("7", None)
    assert status.canary_weight == 100
    assert status.candidate is not None and status.candidate.run_id == "run-7"
    assert status.candidate.source == "models:/nsfw/7" and status.candidate.lineage == {"dataset": "nsfw-v3"}
    assert status.stable is not None and status.stable.version == "6"
    assert status.promotion is not None and status.promotion.previous_version == "6"
    assert status.completed_at == world.now
    assert events(world) == [
        "Resolved", "CandidateStaged", "GateStarted", "GatePassed", "WeightChanged", "AnalysisStarted",
        "AnalysisPassed", "WeightChanged", "AnalysisStarted", "AnalysisPassed", "WeightChanged", "Paused",
        "CommandApplied", "StepsCompleted", "PromotionStarted", "Promoted", "AliasMoved", "BakeStarted", "BakePassed",
        "Succeeded"]
    promote = next(entry for entry in status.history if entry.event == "CommandApplied")
    assert promote.actor == "alice" and promote.command_id == world.command.id  # type: ignore[union-attr]
    assert condition(world, "Ready") == ("True", "RolloutSucceeded")
    assert condition(world, "Progressing") == ("False", "RolloutSucceeded")
    assert condition(world, "GatePassed") == ("True", "GatePassed")
    assert condition(world, "AnalysisHealthy") == ("True", "AnalysisPassed")
    assert condition(world, "RegistryAvailable") == ("True", "RegistryReachable")
    assert condition(world, "TargetReady") == ("True", "TargetReady")
    assert all(record.state is ActionState.CONFIRMED for record in status.actions)
    assert world.decisions[-1].requeue_after is None


def test_analysis_holds_for_its_duration_and_runs_every_interval() -> None:
    world = World()
    interval, duration = timedelta(seconds=30), timedelta(minutes=10)
    run_times: list[datetime] = []
    steps_seen: list[tuple[datetime, int | None]] = []

    def judge(request: RunAnalysis) -> list[Verdict]:
        if request.step_index == 1:
            run_times.append(world.now)
        return [verdict(Outcome.PASS)]

    def past_the_analysis(w: World) -> bool:
        steps_seen.append((w.now, w.status.current_step))
        return (w.status.current_step or 0) >= 2

    world.judge = judge
    # Reconciles every 10s, a third of the interval: the judges still run only once an interval.
    world.run_until(past_the_analysis, step=timedelta(seconds=10))
    runs = [action for action in world.executed if isinstance(action, RunAnalysis) and action.step_index == 1]
    # Every 30s over 10 minutes, the last at the end itself: its result, which covers the whole window, decides.
    assert len(runs) == len(run_times) == 20
    assert [later - earlier for earlier, later in pairwise(run_times)] == [interval] * 19
    assert (run_times[0], run_times[-1]) == (T0 + interval, T0 + duration)
    # The step holds for the whole duration and moves on at its end, right after the last run.
    assert {step for now, step in steps_seen if now < T0 + duration} == {1}
    assert next(now for now, step in steps_seen if step != 1) == T0 + duration
    assert {action.canary_weight for action in runs} == {1}
    assert len({action.id for action in runs}) == len(runs)
    assert {action.window_start for action in runs} == {T0}  # the window starts when the weight was in place


def test_requeue_hints_follow_the_flow() -> None:
    world = World()
    decision = world.reconcile()  # at T0: weight 1 confirmed, analysis waiting for its first interval
    assert world.status.phase is Phase.PROGRESSING and world.status.current_step == 1
    assert decision.requeue_after == timedelta(seconds=30)
    world.spec["canary"] = {"steps": [{"setWeight": 5}, {"pause": {"duration": "5m"}}, {"setWeight": 20}]}
    world.spec["bake"] = None
    world.status = ModelRolloutStatus()
    decision = world.reconcile()
    assert world.status.phase is Phase.PAUSED
    assert decision.requeue_after == timedelta(seconds=30)  # background judging interval
    world.advance(timedelta(minutes=5))
    world.run_until(finished)
    assert weights_sent(world)[-2:] == [5, 20]


def test_timed_pause_goes_on_by_itself() -> None:
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {"duration": "5m"}}]},
                                 analysis=None, bake=None))
    world.reconcile()
    assert world.status.phase is Phase.PAUSED
    assert world.status.pause is not None and world.status.pause.until == T0 + timedelta(minutes=5)
    assert world.decisions[-1].requeue_after == timedelta(minutes=5)
    world.advance(timedelta(minutes=4))
    world.reconcile()
    assert world.status.phase is Phase.PAUSED
    world.advance(timedelta(minutes=1))
    world.reconcile()
    assert world.status.phase is Phase.SUCCEEDED
    assert "PauseEnded" in events(world)


def test_a_timed_pause_ends_only_after_a_last_run_and_a_late_failure_rolls_back() -> None:
    # The operator is down across the end of a watched pause; the candidate went bad meanwhile. The judges'
    # last word before the downtime was a pass, but the pause may not end on it.
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {"duration": "5m"}}]}, bake=None))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED and w.status.analysis is not None
                    and w.status.analysis.runs > 0)
    world.judge = lambda _request: [verdict(Outcome.FAIL)]
    world.advance(timedelta(minutes=10))
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK, world.status.message
    assert world.status.rollback is not None and world.status.rollback.cause is RollbackCause.ANALYSIS_FAILED
    assert "PauseEnded" not in events(world)


def test_a_watched_timed_pause_that_stays_clean_goes_on() -> None:
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {"duration": "5m"}}]}, bake=None))
    run_times: list[datetime] = []

    def judge(_request: RunAnalysis) -> list[Verdict]:
        run_times.append(world.now)
        return [verdict(Outcome.PASS)]

    world.judge = judge
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    assert world.status.pause is not None and world.status.pause.until is not None
    until = world.status.pause.until
    world.run_until(finished)
    assert world.status.phase is Phase.SUCCEEDED
    assert run_times and max(run_times) >= until  # the last run covers the whole pause


def test_after_downtime_the_bake_ends_on_a_fresh_run_not_an_old_pass() -> None:
    world = World()
    reach_final_pause(world)
    world.send(CommandAction.PROMOTE)
    world.run_until(lambda w: w.status.phase is Phase.BAKING and w.status.analysis is not None
                    and w.status.analysis.runs > 0)
    world.judge = lambda _request: [verdict(Outcome.FAIL)]
    world.advance(timedelta(hours=3))  # the bake (1h) ended two hours ago, with no run since its start
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK, world.status.message
    assert world.status.rollback is not None and world.status.rollback.cause is RollbackCause.BAKE_FAILED

def baked_for(world: World, baked: timedelta) -> None:
    """Promoted, and baking for `baked` with no run out."""
    reach_final_pause(world)
    world.send(CommandAction.PROMOTE)
    world.run_until(lambda w: w.status.phase is Phase.BAKING)
    start = world.status.analysis.window_start if world.status.analysis else None
    assert start is not None
    world.run_until(lambda w: w.now >= start + baked and w.status.analysis is not None
                    and w.status.analysis.request_id is None)


def test_bake_duration_edited_mid_bake_is_followed_from_the_bake_s_start() -> None:
    """Lengthened (1h -> 3h): the bake goes on to its start + 3h. Shortened below the time baked (-> 20m): it
    ends at once on the last run, which was measured past the new end."""
    world = World()
    reach_final_pause(world)
    world.send(CommandAction.PROMOTE)
    world.run_until(lambda w: w.status.phase is Phase.BAKING)
    start = world.status.analysis.window_start if world.status.analysis else None
    assert start is not None
    world.advance(timedelta(minutes=5))
    world.spec = {**world.spec, "bake": {"duration": "3h", "baseline": "7d"}}
    world.generation += 1
    world.reconcile()
    assert world.status.analysis is not None and world.status.analysis.ends_at == start + timedelta(hours=3)
    changed = [h.detail for h in world.status.history if h.event == "SpecChanged" and "bake" in h.detail]
    assert changed == [f"bake.duration is now 3h: the bake ends at {format_time(start + timedelta(hours=3))}"]
    world.run_until(lambda w: w.status.phase is not Phase.BAKING, step=timedelta(minutes=1))
    assert world.status.phase is Phase.SUCCEEDED and world.now >= start + timedelta(hours=3)
    assert len([h for h in world.status.history if h.event == "SpecChanged" and "bake" in h.detail]) == 1

    shorter = World()
    baked_for(shorter, timedelta(minutes=40))
    assert shorter.status.phase is Phase.BAKING
    shorter.spec = {**shorter.spec, "bake": {"duration": "20m", "baseline": "7d"}}
    shorter.generation += 1
    shorter.reconcile()
    assert shorter.status.phase is Phase.SUCCEEDED and "BakePassed" in events(shorter)


def baked_into_an_outage() -> World:
    """A 40-minute-old bake (onInconclusive: rollback) whose last run met a Prometheus outage."""
    outage = Verdict("nsfw-rate", Outcome.INCONCLUSIVE, "PrometheusUnreachable: connection refused",
                     {"problem": "PrometheusUnreachable"})
    world = World(spec=spec_dict(analysis={**spec_dict()["analysis"], "onInconclusive": "rollback"}))
    baked_for(world, timedelta(minutes=40))
    world.judge = lambda _request: [outage]
    world.run_until(lambda w: w.status.analysis is not None and w.status.analysis.outcome is Outcome.INCONCLUSIVE
                    and w.status.analysis.request_id is None)
    return world


def test_a_bake_shortened_below_a_run_that_met_an_outage_is_decided_by_a_fresh_run() -> None:
    """The last run met a moment's Prometheus outage; shortened past it, the bake must not end on that run (the
    outage rule would have retried it at a natural end): a fresh run decides."""
    world = baked_into_an_outage()
    world.judge = lambda _request: [verdict(Outcome.PASS)]  # Prometheus is back
    world.spec = {**world.spec, "bake": {"duration": "20m", "baseline": "7d"}}
    world.generation += 1
    world.run_until(finished, step=timedelta(seconds=30))
    assert world.status.phase is Phase.SUCCEEDED and world.status.rollback is None


def test_alias_named_candidate_is_resolved_once() -> None:
    world = World(spec=spec_dict(model={"name": "nsfw-classifier", "alias": "challenger"}))
    world.registry.aliases["challenger"] = "8"
    world.reconcile()
    assert world.status.candidate is not None and world.status.candidate.version == "8"
    assert effect_ids(world)[0] == "1:stage:8"


def test_a_new_attempt_does_not_show_the_promoted_versions_weight_as_the_new_candidates() -> None:
    """After a promotion canaryWeight is 100; the first status of the next version's attempt said it of the new
    candidate, being staged at 0% (kubectl get mro: "candidate 8, Pending, 100%")."""
    world = World()
    reach_final_pause(world)
    world.send(CommandAction.PROMOTE)
    world.run_until(finished)
    assert world.status.canary_weight == 100
    world.spec = {**world.spec, "model": {**world.spec["model"], "version": "8"}}
    world.generation += 1
    seen = len(world.decisions)
    world.reconcile()
    first = next(d.status for d in world.decisions[seen:] if d.status.candidate and d.status.candidate.version == "8")
    assert first.canary_weight == 0


def test_an_ended_rollout_follows_its_candidate_alias_when_it_moves_not_at_the_next_unrelated_wake() -> None:
    """Mid-rollout a move of the candidate alias starts the new version; an ended rollout must see it too, by
    looking again every ALIAS_POLL, not whenever an annotation or an operator restart happens to wake it."""
    world = World(spec=spec_dict(model={"name": "nsfw-classifier", "alias": "challenger"}))
    world.registry.aliases["challenger"] = "7"
    reach_final_pause(world)
    world.send(CommandAction.PROMOTE)
    decision = world.run_until(finished)
    assert world.status.phase is Phase.SUCCEEDED and decision.requeue_after == ALIAS_POLL
    world.registry.aliases["challenger"] = "8"  # the training pipeline registers the next version
    world.advance(ALIAS_POLL)
    world.reconcile()
    started = [h.detail for h in world.status.history if h.event == "NewCandidate"]
    assert started == ["candidate 8 (@challenger names it now) replaces 7 (generation 1)"]
    assert world.status.candidate is not None and world.status.candidate.version == "8"

    never_resolved = World(spec=spec_dict(model={"name": "nsfw-classifier", "alias": "challenger"}))
    assert never_resolved.run_until(finished).requeue_after is None  # @challenger not set: Failed at the deadline
    assert never_resolved.status.phase is Phase.FAILED and never_resolved.status.candidate is None

    by_version = World()
    reach_final_pause(by_version)
    by_version.send(CommandAction.PROMOTE)
    assert by_version.run_until(finished).requeue_after is None  # a version number never moves: nothing to poll


def test_without_golden_dataset_the_gate_is_not_skipped_the_spec_is_refused() -> None:
    # Required by the CRD; a spec written under an older CRD must not be promoted with the gate skipped.
    with pytest.raises(SpecError, match=r"spec\.goldenDataset"):
        parse_spec(spec_dict(goldenDataset=None))


def test_first_rollout_without_stable_promotes_without_canary() -> None:
    world = World(registry=Registry(aliases={}), target=Target(stable_version=None))
    world.run_until(finished)
    assert world.status.phase is Phase.SUCCEEDED
    assert world.status.stable is None
    assert "NoStableVersion" in events(world)
    assert weights_sent(world) == []
    gate = next(action for action in world.executed if action.type is ActionType.RUN_GATE)
    assert gate.stable is None  # type: ignore[union-attr]
    assert world.registry.aliases["production"] == "7"
    assert "BakeStarted" not in events(world)  # nothing to compare with


def test_a_first_rollout_beside_a_version_an_earlier_rollout_recorded_says_so() -> None:
    """A misspelt stableAlias makes any rollout a first one: the history must name what the target serves."""
    world = World(registry=Registry(aliases={}))
    world.run_until(finished)
    detail = next(entry.detail for entry in world.status.history if entry.event == "NoStableVersion")
    assert detail == ("@production is not set; promoting without canary steps (InferenceService nsfw-classifier "
                      "serves version 6, recorded by an earlier rollout: if @production should name it, "
                      "spec.model.stableAlias may be misspelt)")


def test_candidate_already_stable_is_a_no_op_success() -> None:
    world = World(registry=Registry(aliases={"production": "7"}), target=Target(stable_version="7"))
    world.reconcile()
    assert world.status.phase is Phase.SUCCEEDED
    assert world.executed == []
    assert "AlreadyStable" in events(world)
    assert world.status.message == "Version 7 serves all traffic as @production."


def test_candidate_already_stable_but_tagged_rejected_is_reported() -> None:
    """The alias moved onto a rejected version by hand: done, but the on-call engineer must hear production runs it."""
    world = World(registry=Registry(aliases={"production": "7"}), target=Target(stable_version="7"))
    world.registry.versions["7"].update({REJECTED_TAG: "true"})
    world.reconcile()
    assert world.status.phase is Phase.SUCCEEDED
    assert events(world)[-3:-1] == ["AlreadyStable", "PreviouslyRejected"], events(world)
    assert world.executed == []
    assert world.status.message == ("Version 7 serves all traffic as @production, though it carries "
                                    "modelrollout.rejected=true: a verdict rejected it and the alias was moved onto "
                                    "it by hand.")


def test_candidate_already_stable_while_the_target_serves_another_version_fails_saying_nothing_was_done() -> None:
    """The alias is the model's: a second InferenceService of the same model may still serve version 6."""
    world = World(registry=Registry(aliases={"production": "7"}), target=Target(stable_version="6"))
    world.reconcile()
    assert world.status.phase is Phase.FAILED and world.executed == []
    assert world.status.message == ("Failed: version 7 is already @production, but InferenceService nsfw-classifier "
                                    "serves version 6: nothing was rolled out (to roll it out here, point "
                                    "@production back at version 6 first).")
    ready = world.status.condition("Ready")
    assert ready is not None and ready.status == "False"


@pytest.mark.parametrize("target", [Target(exists=False), Target(unreachable=True)])
def test_candidate_already_stable_on_a_target_that_cannot_be_read_waits_for_it(target: Target) -> None:
    world = World(registry=Registry(aliases={"production": "7"}), target=target)
    world.reconcile()
    assert world.status.phase is Phase.PENDING and world.status.candidate is None and world.executed == []
    assert "Version 7 is already @production; waiting to read InferenceService nsfw-classifier" in \
        world.status.message
    assert "serves all traffic" not in world.status.message
    target.exists, target.unreachable, target.stable_version = True, False, "7"
    world.reconcile()
    assert world.status.phase is Phase.SUCCEEDED


def test_candidate_already_stable_on_a_target_that_records_no_version_claims_nothing() -> None:
    world = World(registry=Registry(aliases={"production": "7"}), target=Target(stable_version=None))
    world.reconcile()
    assert world.status.phase is Phase.SUCCEEDED and world.executed == []
    assert "serves all traffic" not in world.status.message
    assert "records no version" in world.status.message and world.status.message.endswith("nothing was rolled out.")


# --- resolve and staging faults ----------------------------------------------------------------------


def test_a_version_mlflow_could_not_register_or_that_has_no_source_fails_at_resolve_not_at_the_deadline() -> None:
    for registry, why in ((Registry(statuses={"7": "FAILED_REGISTRATION"}), "its registration status is "
                                                                             "FAILED_REGISTRATION"),
                          (Registry(sourceless={"7"}), "it has no source")):
        world = World(registry=registry)
        world.reconcile()
        assert world.status.phase is Phase.FAILED
        assert world.status.message == f"Failed: nsfw-classifier version 7 cannot be served: {why}."
        assert world.executed == []  # nothing staged


def test_a_version_still_registering_is_waited_for_then_rolled_out() -> None:
    world = World(registry=Registry(statuses={"7": "PENDING_REGISTRATION"}))
    world.reconcile()
    assert world.status.phase is Phase.PENDING and world.status.candidate is None
    assert "to finish registering" in (world.status.message or "")
    assert world.executed == []
    world.registry.statuses.clear()
    world.reconcile()
    assert world.status.candidate is not None and world.status.candidate.version == "7"
    assert world.executed and world.executed[0].id == "1:stage:7"


def test_version_that_does_not_exist_fails_at_resolve() -> None:
    world = World(spec=spec_dict(model={"name": "nsfw-classifier", "version": "99"}))
    world.reconcile()
    assert world.status.phase is Phase.FAILED
    assert world.status.message == "Failed: nsfw-classifier version 99 does not exist in the registry."
    assert world.executed == []
    assert condition(world, "Ready") == ("False", "Failed")
    assert condition(world, "Progressing") == ("False", "RolloutFailed")


def test_registry_unreachable_backs_off_and_changes_nothing() -> None:
    world = World()
    world.registry.down = True
    hints = []
    for _ in range(4):
        decision = world.reconcile()
        hints.append(decision.requeue_after)
        world.advance(timedelta(seconds=10))
    assert world.executed == []
    assert world.status.phase is Phase.PENDING
    assert hints == [timedelta(seconds=2), timedelta(seconds=4), timedelta(seconds=8), timedelta(seconds=16)]
    assert condition(world, "RegistryAvailable") == ("False", "RegistryUnavailable")
    assert "Waiting for the registry" in world.status.message and "retry 4" in world.status.message
    world.registry.down = False
    world.reconcile()
    assert world.status.retry is None
    assert condition(world, "RegistryAvailable") == ("True", "RegistryReachable")
    assert world.status.phase is Phase.PROGRESSING


def test_a_missing_target_leaves_the_candidate_unresolved_so_a_typo_in_spec_target_can_still_be_fixed() -> None:
    """A candidate in status puts the rollout in flight (the CRD then refuses another spec.target): none is set
    while the target cannot be read, so a mistyped InferenceService name can be corrected with an apply."""
    world = World(target=Target(exists=False))
    world.reconcile()
    assert world.status.phase is Phase.PENDING and world.status.candidate is None
    assert world.status.message.startswith("Waiting to read InferenceService nsfw-classifier before starting "
                                           "version 7 (")
    assert condition(world, "TargetReady") == ("False", "TargetNotFound")
    assert condition(world, "Progressing") == ("True", "Resolving")
    world.advance(timedelta(minutes=31))
    world.reconcile()
    # Still trying (nothing was done, nothing to undo), but stuck for longer than progressDeadline: said so.
    assert world.status.phase is Phase.PENDING and world.status.candidate is None
    assert condition(world, "Progressing") == ("False", "ProgressDeadlineExceeded")
    assert effect_ids(world) == []
    world.target.exists = True  # the corrected spec names one that exists
    world.generation += 1
    world.reconcile()
    assert world.status.candidate is not None and world.status.candidate.version == "7"
    assert effect_ids(world)[0] == "1:stage:7"


def test_a_rollout_deleted_while_its_target_is_missing_ends_at_once() -> None:
    world = World(spec=spec_dict(rollback={"automatic": True, "revertOnDeletion": True}),
                  target=Target(exists=False))
    world.reconcile()
    world.deleting = True
    world.reconcile()
    assert world.status.phase is Phase.ROLLED_BACK and effect_ids(world) == []


def test_a_target_gone_after_resolution_fails_after_the_deadline_with_nothing_applied() -> None:
    """Resolved on a target that was there (not ready yet, so nothing staged), which then vanished: nothing
    reached it, and the deadline ends the attempt."""
    world = World(target=Target(ready=False))
    world.reconcile()
    assert world.status.phase is Phase.PENDING and world.status.candidate is not None
    world.target.exists = False
    world.reconcile()
    assert condition(world, "TargetReady") == ("False", "TargetNotFound")
    world.advance(timedelta(minutes=29))
    world.reconcile()
    assert world.status.phase is Phase.PENDING
    world.advance(timedelta(minutes=2))
    world.reconcile()
    assert world.status.phase is Phase.FAILED
    assert world.status.message.startswith("Failed: InferenceService nsfw-classifier unavailable for longer than "
                                           "progressDeadline 30m")
    assert effect_ids(world) == []


def test_target_not_ready_fails_after_the_deadline() -> None:
    world = World(target=Target(ready=False))
    world.reconcile()
    assert condition(world, "TargetReady") == ("False", "TargetNotReady")
    world.advance(timedelta(minutes=31))
    world.reconcile()
    assert world.status.phase is Phase.FAILED
    assert "InferenceService nsfw-classifier is not ready within progressDeadline 30m" in world.status.message
    assert effect_ids(world) == []


def test_staging_waits_for_the_candidate_to_become_ready() -> None:
    world = World(target=Target(ready_delay=timedelta(minutes=3)))
    world.reconcile()
    assert world.status.phase is Phase.PENDING
    assert condition(world, "TargetReady") == ("False", "CandidateNotReady")
    assert "Staging candidate 7" in world.status.message
    world.advance(timedelta(minutes=3))
    world.reconcile()
    assert world.status.phase is Phase.PROGRESSING
    assert effect_ids(world).count("1:stage:7") == 1  # sent once, then observed done


def test_candidate_never_ready_is_unstaged_and_fails() -> None:
    world = World(target=Target(never_ready=True))
    world.reconcile()
    world.advance(timedelta(minutes=31))
    world.reconcile()
    assert world.status.phase is Phase.FAILED
    assert world.status.message == ("Failed: candidate 7 did not become ready on InferenceService nsfw-classifier "
                                    "within progressDeadline 30m: RevisionMissing: revision failed.")
    assert world.target.canary_version is None  # nothing half-applied
    assert REJECTED_TAG not in world.registry.versions["7"]  # not the model's fault
    assert effect_ids(world)[-1] == "1:rollback:unstage"
    assert world.registry.aliases["production"] == "6"


# --- the gate ----------------------------------------------------------------------------------------


def test_gate_failure_rolls_back_before_any_user_sees_the_candidate() -> None:
    world = World(gate_verdicts=[verdict(Outcome.PASS, "accuracy", "0.98"),
                                 verdict(Outcome.FAIL, "nsfw-recall", "0.91 below minRecall 0.95")])
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.status.message == "Rolled back: golden gate nsfw-recall: 0.91 below minRecall 0.95."
    assert weights_sent(world) == []  # the candidate never left 0%: nothing to undo on the target
    assert world.registry.versions["7"][REJECTED_REASON_TAG].startswith("golden gate nsfw-recall")
    assert condition(world, "GatePassed") == ("False", "GateFailed")
    gate = world.status.gate
    assert gate is not None and gate.dataset_sha256 == SHA and len(gate.verdicts) == 2
    assert events(world)[-6:] == ["GateFailed", "RollbackStarted", "TrafficRestored", "Recovered",
                                  "CandidateRejected", "RolledBack"]


def test_gate_inconclusive_pauses_and_promote_overrides() -> None:
    world = World(gate_verdicts=[verdict(Outcome.INCONCLUSIVE, "accuracy", "only 12 golden samples")])
    world.reconcile()
    assert world.status.phase is Phase.PAUSED
    assert world.status.pause is not None and world.status.pause.reason is PauseReason.GATE_INCONCLUSIVE
    assert world.status.message == ("Paused: golden gate accuracy: only 12 golden samples; run promote, retry or "
                                    "rollback.")
    assert condition(world, "GatePassed") == ("False", "GateInconclusive")
    world.send(CommandAction.PROMOTE, actor="carol")
    world.reconcile()
    assert world.status.phase is Phase.PROGRESSING
    assert world.status.gate is not None and world.status.gate.overridden_by == "carol"
    assert condition(world, "GatePassed") == ("True", "GateOverridden")
    override = next(entry for entry in world.status.history if entry.event == "GateOverridden")
    assert override.actor == "carol"


def test_gate_retry_runs_it_again() -> None:
    world = World(gate_verdicts=[verdict(Outcome.INCONCLUSIVE, "accuracy", "dataset too small")])
    world.reconcile()
    world.gate_verdicts = [verdict(Outcome.PASS, "accuracy", "0.98")]
    world.send(CommandAction.RETRY, actor="dave")
    world.reconcile()
    gates = [action.id for action in world.executed if action.type is ActionType.RUN_GATE]
    assert gates == ["1:gate-1", "1:gate-2"]
    assert world.status.phase is Phase.PROGRESSING


class OperatorKilled(Exception):
    pass


def test_a_gate_the_operator_keeps_restarting_under_ends_inconclusive_instead_of_crash_looping() -> None:
    world = World()
    execute = world.execute

    def killed_by_the_gate(action: Action) -> Any:
        if isinstance(action, RunGate):
            raise OperatorKilled  # e.g. out of memory: the status handing the gate out was written first
        return execute(action)

    world.execute = killed_by_the_gate  # type: ignore[method-assign]
    for _ in range(GATE_INTERRUPTIONS_LIMIT):
        with pytest.raises(OperatorKilled):
            world.reconcile()
        assert world.status.phase is Phase.GATING
        world.restarted = True
        world.advance(timedelta(seconds=40))
    world.reconcile()  # the next start: the gate is not run again
    assert not any(isinstance(action, RunGate) for action in world.decisions[-1].actions)
    gate = world.status.gate
    assert gate is not None and gate.outcome is Outcome.INCONCLUSIVE and gate.interrupted == GATE_INTERRUPTIONS_LIMIT
    assert world.status.phase is Phase.PAUSED
    assert world.status.pause is not None and world.status.pause.reason is PauseReason.GATE_INCONCLUSIVE
    assert "interrupted 3 times in a row: the operator restarted while it ran" in world.status.message
    world.execute = execute  # type: ignore[method-assign]
    world.send(CommandAction.RETRY)  # on-call gave the operator more memory
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING)
    assert world.status.gate is not None and world.status.gate.interrupted == 0


def test_a_gate_that_answers_between_restarts_is_not_counted_as_interrupted() -> None:
    world = World()
    world.gate_error = AdapterError(AdapterErrorKind.UNAVAILABLE, "golden dataset store unreachable")
    world.run_until(lambda w: w.status.phase is Phase.GATING)
    for _ in range(GATE_INTERRUPTIONS_LIMIT + 1):
        world.restarted = True  # a restart, after which the gate runs and answers (an error): not an interruption
        world.advance(timedelta(minutes=1))
        world.reconcile()
    assert world.status.phase is Phase.GATING and world.status.gate is not None
    assert world.status.gate.interrupted == 0 and world.status.gate.outcome is None


def test_gate_error_is_retried_with_backoff() -> None:
    world = World(gate_error=AdapterError(AdapterErrorKind.UNAVAILABLE, "golden dataset fetch: 503"))
    decision = world.reconcile()
    assert world.status.phase is Phase.GATING
    assert condition(world, "GatePassed") == ("Unknown", "GateError")
    assert "could not run" in world.status.message
    assert decision.requeue_after == timedelta(seconds=2)
    world.gate_error = None
    world.advance(timedelta(seconds=2))
    world.reconcile()
    assert world.status.phase is Phase.PROGRESSING
    assert [action.id for action in world.executed if action.type is ActionType.RUN_GATE] == ["1:gate-1"] * 2


def test_gate_inconclusive_with_on_inconclusive_rollback_rolls_back() -> None:
    spec = spec_dict()
    spec["analysis"]["onInconclusive"] = "rollback"
    world = World(spec=spec, gate_verdicts=[verdict(Outcome.INCONCLUSIVE, "accuracy", "too few samples")])
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.status.rollback is not None and world.status.rollback.cause is RollbackCause.GATE_INCONCLUSIVE


# --- canary analysis ---------------------------------------------------------------------------------


def test_failing_analysis_rolls_back_at_once_with_evidence() -> None:
    world = World()
    fail_from(world, step_index=3)
    world.run_until(finished)
    status = world.status
    assert status.phase is Phase.ROLLED_BACK
    assert status.message == ("Rolled back: nsfw-rate canary 6.2% (31/500) vs stable 0.2% (98/49k), p<1e-9, "
                              "at step 4/6 (10%).")
    rollback = status.rollback
    assert rollback is not None
    assert rollback.cause is RollbackCause.ANALYSIS_FAILED
    assert rollback.verdict_at == T0 + timedelta(minutes=12)
    assert rollback.recovered_at == rollback.verdict_at  # simulated instant actuation
    assert rollback.time_to_recover_seconds == 0.0
    assert (rollback.from_step, rollback.from_weight) == (3, 10)
    assert rollback.evidence["verdicts"][0]["evidence"] == {"canary": [31, 500], "stable": [98, 49000]}
    assert weights_sent(world) == [1, 10, 0]
    assert world.registry.aliases["production"] == "6"
    tag_action = next(action for action in world.executed if action.type is ActionType.TAG_REJECTED)
    assert tag_action.evidence == rollback.evidence  # type: ignore[union-attr]
    assert condition(world, "AnalysisHealthy") == ("False", "AnalysisFailed")
    assert status.analysis is not None and status.analysis.metrics[0].outcome is Outcome.FAIL
    # Traffic first, then the registry: the first actions after the verdict.
    rollback_actions = [action.type for action in world.executed if "rollback" in action.id]
    assert rollback_actions == [ActionType.SET_CANARY_WEIGHT, ActionType.TAG_REJECTED]


def test_time_to_recover_counts_until_traffic_and_alias_are_verified() -> None:
    slow = World()
    fail_from(slow, step_index=1)
    slow.run_until(lambda w: w.status.current_step == 1 and w.status.analysis is not None
                   and w.now >= T0 + timedelta(minutes=1, seconds=30))
    slow.target.frozen = True  # the weight-0 patch takes effect only on a later look
    slow.advance(timedelta(seconds=30))
    slow.reconcile()
    assert slow.status.phase is Phase.ROLLING_BACK
    assert slow.status.message.startswith("Rolling back: nsfw-rate")
    assert slow.status.message.endswith("returning traffic to stable.")
    slow.target.frozen = False
    slow.advance(timedelta(milliseconds=1500))
    slow.restarted = True  # the patch was lost: a restarted operator sends it again at once
    slow.reconcile()
    rollback = slow.status.rollback
    assert slow.status.phase is Phase.ROLLED_BACK and rollback is not None
    assert rollback.time_to_recover_seconds == 1.5


def test_inconclusive_analysis_pauses_then_promote_goes_on() -> None:
    world = World(judge=lambda _request: [verdict(Outcome.INCONCLUSIVE)])
    world.run_until(settled)
    status = world.status
    assert status.phase is Phase.PAUSED and status.current_step == 1
    assert status.pause is not None and status.pause.reason is PauseReason.ANALYSIS_INCONCLUSIVE
    assert "not enough evidence after 20 runs" in status.message
    assert condition(world, "AnalysisHealthy") == ("Unknown", "NotEnoughEvidence")
    weights_before = weights_sent(world)
    world.advance(timedelta(hours=1))
    world.reconcile()
    assert weights_sent(world) == weights_before  # nothing moves while waiting for a human
    world.send(CommandAction.PROMOTE, actor="erin")
    world.reconcile()
    assert world.status.phase is Phase.PROGRESSING and world.status.current_step == 3


@pytest.mark.parametrize("where", ["analysis step", "bake"])
def test_a_version_paused_on_an_inconclusive_verdict_is_still_judged_and_a_failure_rolls_it_back(where: str) -> None:
    # The canary (or the promoted version) kept serving with no judge at all until a human came: a trigger that
    # started after the step ended was never caught, while a pause step at the same weight is watched.
    verdicts = {"now": Outcome.INCONCLUSIVE}
    world = World(judge=lambda _request: [verdict(verdicts["now"])])
    if where == "bake":
        world.judge = lambda _request: [verdict(Outcome.PASS)]
        reach_final_pause(world)
        world.judge = lambda _request: [verdict(verdicts["now"])]
        world.send(CommandAction.PROMOTE)
    world.run_until(settled)
    pause = world.status.pause
    assert pause is not None and pause.reason is (PauseReason.BAKE_INCONCLUSIVE if where == "bake"
                                                  else PauseReason.ANALYSIS_INCONCLUSIVE)
    runs = len([action for action in world.executed if isinstance(action, RunAnalysis)])
    world.advance(timedelta(hours=1))
    world.reconcile()
    assert world.status.phase is Phase.PAUSED  # still inconclusive: the human decides
    watched = [action for action in world.executed if isinstance(action, RunAnalysis)][runs:]
    assert watched and all(action.window_start == pause.since for action in watched)
    verdicts["now"] = Outcome.FAIL
    world.run_until(finished)
    rollback = world.status.rollback
    assert world.status.phase is Phase.ROLLED_BACK and rollback is not None
    assert rollback.cause is (RollbackCause.BAKE_FAILED if where == "bake" else RollbackCause.ANALYSIS_FAILED)
    assert REJECTED_TAG in world.registry.versions["7"] and world.registry.aliases["production"] == "6"
    assert not world.target.canary_weight and world.target.stable_version == "6"


def error_rate_world(failing_runs: set[int], failure_limit: int) -> World:
    """nsfw-rate passes; error-rate, a threshold with a failureLimit, fails on the given runs (counted from 1)."""
    spec = spec_dict()
    spec["analysis"]["metrics"].append({"name": "error-rate", "threshold": {
        "query": "e{{selector}}", "max": 0.01, "failureLimit": failure_limit}})
    runs = {"n": 0}

    def judge(_request: RunAnalysis) -> list[Verdict]:
        runs["n"] += 1
        failed = runs["n"] in failing_runs
        return [verdict(Outcome.PASS), verdict(Outcome.FAIL if failed else Outcome.PASS, "error-rate",
                                               "0.2 is above the maximum 0.01" if failed else "0.001 is within")]

    return World(spec=spec, judge=judge)


def test_a_threshold_run_failing_within_its_failure_limit_is_counted_not_acted_on() -> None:
    # Argo Rollouts' failureLimit: one early run on a handful of requests (1 error of 5) must not reject a version.
    world = error_rate_world({1}, failure_limit=1)
    world.run_until(lambda w: w.status.current_step == 3)
    assert world.status.rollback is None and REJECTED_TAG not in world.registry.versions["7"]
    passed = next(entry for entry in world.status.history if entry.event == "AnalysisPassed")
    assert passed.detail.startswith("step 2/6")
    failing = error_rate_world({1, 4}, failure_limit=1)
    failing.run_until(finished)
    rollback = failing.status.rollback
    assert rollback is not None and rollback.cause is RollbackCause.ANALYSIS_FAILED
    assert "failed run 2, past failureLimit 1" in rollback.reason and rollback.from_step == 1
    assert REJECTED_TAG in failing.registry.versions["7"]


def test_a_last_run_failing_within_the_failure_limit_is_no_pass() -> None:
    world = error_rate_world(set(range(20, 200)), failure_limit=5)  # the step's last runs fail
    world.run_until(settled)
    pause = world.status.pause
    assert pause is not None and pause.reason is PauseReason.ANALYSIS_INCONCLUSIVE and world.status.current_step == 1
    assert "within failureLimit 5" in pause.detail


def test_the_watch_of_a_paused_step_keeps_its_failing_runs_its_verdict_and_its_time_since_promotion() -> None:
    # A threshold's failing runs within its failureLimit carry into the watch (it got twice its limit).
    world = error_rate_world(set(range(20, 1000)), failure_limit=2)
    world.run_until(settled)
    assert world.status.pause is not None and world.status.pause.reason is PauseReason.ANALYSIS_INCONCLUSIVE
    world.run_until(finished)
    assert world.status.rollback is not None and "failed run 3, past failureLimit 2" in world.status.rollback.reason
    # A short watch that passes does not read as a healthy analysis: the step's inconclusive verdict stands.
    world = World(judge=lambda _request: [verdict(Outcome.INCONCLUSIVE)])
    world.run_until(settled)
    world.judge = lambda _request: [verdict(Outcome.PASS)]
    world.advance(timedelta(minutes=2))
    world.reconcile()
    assert world.status.analysis is not None and world.status.analysis.outcome is Outcome.PASS
    status, reason = condition(world, "AnalysisHealthy")
    assert (status, reason) == ("Unknown", "NotEnoughEvidence")
    world.analysis_error = AdapterError(AdapterErrorKind.UNAVAILABLE, "prometheus: connection refused")
    world.advance(timedelta(minutes=1))
    world.reconcile()
    assert condition(world, "AnalysisHealthy") == ("Unknown", "AnalysisError")  # not hidden by the step's verdict
    world.analysis_error = None
    # A bake failure caught by the watch counts its time from the promotion, not from the pause.
    world = World()
    reach_final_pause(world)
    world.judge = lambda _request: [verdict(Outcome.INCONCLUSIVE)]
    world.send(CommandAction.PROMOTE)
    world.run_until(settled)
    promotion = world.status.promotion
    assert promotion is not None and promotion.target_confirmed_at is not None
    world.advance(timedelta(hours=5))
    world.judge = lambda _request: [verdict(Outcome.FAIL)]
    world.run_until(lambda w: w.status.rollback is not None)
    elapsed = format_duration(world.now - promotion.target_confirmed_at)
    assert world.status.rollback is not None and f"during bake ({elapsed} after promotion)" in \
        world.status.rollback.reason


def test_thresholds_changed_after_an_upgrade_from_an_operator_that_did_not_sign_them_are_seen() -> None:
    world = World()
    world.run_until(lambda w: w.status.current_step == 3)
    old = world.status.to_dict()
    old["gate"].pop("thresholdsSignature")
    world.status = ModelRolloutStatus.from_dict(old)
    world.reconcile()  # the new operator's first look: the thresholds it finds are the gate's
    assert world.status.gate is not None and world.status.gate.thresholds_signature is not None
    golden = world.spec["goldenDataset"]
    tightened = {**golden["thresholds"], "minAccuracy": 0.99}
    world.spec = {**world.spec, "goldenDataset": {**golden, "thresholds": tightened}}
    world.generation += 1
    world.reconcile()
    assert "DatasetChanged" in events(world) and world.status.attempt == 2


def test_inconclusive_analysis_retry_restarts_the_step() -> None:
    world = World(judge=lambda _request: [verdict(Outcome.INCONCLUSIVE)])
    world.run_until(settled)
    world.judge = lambda _request: [verdict(Outcome.PASS)]
    world.send(CommandAction.RETRY)
    world.reconcile()
    assert world.status.phase is Phase.PROGRESSING and world.status.current_step == 1
    assert world.status.analysis is not None and world.status.analysis.window_start == world.now
    world.run_until(lambda w: (w.status.current_step or 0) >= 3)


def test_inconclusive_analysis_with_on_inconclusive_rollback() -> None:
    spec = spec_dict()
    spec["analysis"]["onInconclusive"] = "rollback"
    world = World(spec=spec, judge=lambda _request: [verdict(Outcome.INCONCLUSIVE)])
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.status.rollback is not None
    assert world.status.rollback.cause is RollbackCause.ANALYSIS_INCONCLUSIVE
    assert world.status.message.startswith("Rolled back: not enough evidence after 20 runs")


def test_without_automatic_rollback_a_failure_waits_for_a_human() -> None:
    world = World(spec=spec_dict(rollback={"automatic": False}))
    fail_from(world, step_index=3)
    world.run_until(settled)
    status = world.status
    assert status.phase is Phase.PAUSED
    assert status.pause is not None and status.pause.reason is PauseReason.ANALYSIS_FAILED
    assert status.message.startswith("Paused: nsfw-rate canary 6.2%")
    assert "AwaitingDecision" in events(world)
    sent = len(world.executed)
    world.advance(timedelta(minutes=30))
    world.reconcile()
    assert len(world.executed) == sent  # weight held, judges stopped
    assert world.decisions[-1].requeue_after is None
    world.send(CommandAction.ROLLBACK, actor="frank")
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.status.rollback is not None and world.status.rollback.actor == "frank"
    assert world.status.message == "Rolled back: rollback requested by frank."


def test_without_automatic_rollback_promote_overrides_a_failure() -> None:
    world = World(spec=spec_dict(rollback={"automatic": False}))
    fail_from(world, step_index=1)
    world.run_until(settled)
    world.judge = lambda _request: [verdict(Outcome.PASS)]
    world.send(CommandAction.PROMOTE)
    world.reconcile()
    assert world.status.phase is Phase.PROGRESSING and world.status.current_step == 3
    assert weights_sent(world) == [1, 10]


def test_a_model_waiting_at_a_pause_is_still_watched() -> None:
    world = World()
    fail_from(world, step_index=5, after=timedelta(hours=2))
    reach_final_pause(world)
    world.run_until(finished, step=timedelta(minutes=5))
    assert world.status.phase is Phase.ROLLED_BACK
    assert "at step 6/6 (50%)" in world.status.message


def test_stale_judge_results_are_ignored() -> None:
    world = World()
    world.reconcile()
    spec = parse_spec(world.spec)
    stale = JudgeResult("1:analysis-999", (verdict(Outcome.FAIL),))
    observations = dataclasses.replace(world.observe(), analysis=stale, gate=stale)
    decision = decide(spec, world.status, observations, world.now + timedelta(seconds=30))
    assert decision.status.phase is Phase.PROGRESSING


def test_analysis_error_is_retried() -> None:
    world = World(analysis_error=AdapterError(AdapterErrorKind.UNAVAILABLE, "prometheus: 503"))
    world.reconcile()
    world.advance(timedelta(seconds=30))
    decision = world.reconcile()
    assert condition(world, "AnalysisHealthy") == ("Unknown", "AnalysisError")
    assert "analysis judges could not run" in world.status.message
    assert decision.requeue_after == timedelta(seconds=2)
    world.analysis_error = None
    world.run_until(lambda w: (w.status.current_step or 0) >= 2)


# --- commands ----------------------------------------------------------------------------------------


def test_abort_rolls_back_and_records_the_actor() -> None:
    world = World()
    world.run_until(lambda w: w.status.current_step == 3)
    command = world.send(CommandAction.ABORT, actor="grace")
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.status.message == "Rolled back: aborted by grace."
    applied = [entry for entry in world.status.history if entry.command_id == command.id]
    assert [(entry.event, entry.actor) for entry in applied] == [("CommandApplied", "grace")]
    tag = next(action for action in world.executed if action.type is ActionType.TAG_REJECTED)
    assert tag.actor == "grace"  # type: ignore[union-attr]


def reverting(world: World) -> World:
    world.spec["rollback"] = {"automatic": True, "revertOnDeletion": True}
    return world


def test_a_rollout_deleted_mid_flight_with_revert_on_deletion_rolls_back_without_rejecting_then_lets_go() -> None:
    world = reverting(World())
    world.run_until(lambda w: w.status.current_step == 3)
    assert world.target.canary_weight == 10
    assert holds_deletion(world.parsed_spec, world.status)
    world.deleting = True
    world.run_until(finished)
    status = world.status
    assert status.phase is Phase.ROLLED_BACK
    assert status.rollback is not None and status.rollback.cause is RollbackCause.DELETED
    assert world.target.canary_weight == 0 and world.registry.aliases["production"] == "6"
    assert REJECTED_TAG not in world.registry.versions["7"]  # deleted, not judged
    assert not any(a.type is ActionType.TAG_REJECTED for a in world.executed)
    assert "deleted" in status.message
    assert not holds_deletion(world.parsed_spec, status)  # ended: the delete may complete


@pytest.mark.parametrize("ending", ["delete", "new version"])
@pytest.mark.parametrize(("failing", "rejected"), [("analysis", True), ("gate", True), ("dataset hash", False)])
def test_a_candidate_a_check_failed_is_rejected_for_that_check_when_a_delete_or_new_version_ends_the_wait(
        ending: str, failing: str, rejected: bool) -> None:
    # Automatic rollback off, a check failed the candidate, then the rollout was deleted or given a new version: the
    # rollback left the version untagged, so the judged-bad version could be rolled out again without
    # PreviouslyRejected (and a first fix tagged it "deleted", without the failing check's evidence).
    world = World(spec=spec_dict(rollback={"automatic": False, "revertOnDeletion": True}))
    if failing == "analysis":
        world.judge = lambda _request: [verdict(Outcome.FAIL)]
    else:
        world.gate_verdicts = [verdict(Outcome.FAIL, DATASET_INTEGRITY if failing == "dataset hash" else "accuracy")]
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    detail = world.status.pause.detail if world.status.pause else ""
    if ending == "delete":
        world.deleting = True
    else:
        world.spec["model"] = {**world.spec["model"], "version": "8"}
        world.generation += 1
    if ending == "delete":
        world.run_until(finished)
        assert world.status.rollback is not None and world.status.rollback.cause is RollbackCause.DELETED
    else:
        world.run_until(lambda w: w.status.attempt == 2)
        assert "RolledBackForNewCandidate" in events(world)
    assert (REJECTED_TAG in world.registry.versions["7"]) is rejected
    tags = [action for action in world.executed if isinstance(action, TagRejected)]
    if rejected:
        assert [tag.version for tag in tags] == ["7"]
        assert detail in tags[0].reason and "awaiting a decision since" in tags[0].reason
        assert tags[0].evidence["verdicts"][0]["outcome"] == "fail"
    else:
        assert tags == []


def test_a_failure_a_human_retried_past_is_no_reason_to_reject_on_a_later_delete() -> None:
    world = World(spec=spec_dict(rollback={"automatic": False, "revertOnDeletion": True}),
                  judge=lambda _request: [verdict(Outcome.FAIL)])
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.judge = lambda _request: [verdict(Outcome.PASS)]
    world.send(CommandAction.RETRY)
    world.run_until(lambda w: w.status.current_step == 3)
    world.deleting = True
    world.run_until(finished)
    assert world.status.rollback is not None and world.status.rollback.cause is RollbackCause.DELETED
    assert REJECTED_TAG not in world.registry.versions["7"]


def test_a_deletion_without_revert_on_deletion_changes_nothing() -> None:
    world = World()
    world.run_until(lambda w: w.status.current_step == 3)
    assert not holds_deletion(world.parsed_spec, world.status)  # in flight, but nothing asked to hold it
    world.deleting = True
    world.reconcile()
    assert world.status.phase is Phase.PROGRESSING and world.target.canary_weight == 10


def test_a_deleted_rollout_in_its_bake_goes_back_to_the_previous_version_as_an_abort_would() -> None:
    world = reverting(World())
    reach_final_pause(world)
    world.send(CommandAction.PROMOTE)
    world.run_until(lambda w: w.status.phase is Phase.BAKING)
    world.deleting = True
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.target.stable_version == "6" and world.registry.aliases["production"] == "6"


def test_a_deleted_rollout_that_had_ended_stays_as_it_was_and_starts_nothing() -> None:
    world = reverting(World(spec=spec_dict(bake=None)))
    reach_final_pause(world)
    world.send(CommandAction.PROMOTE)
    world.run_until(finished)
    assert world.status.phase is Phase.SUCCEEDED
    executed = len(world.executed)
    world.deleting = True
    world.spec["model"] = {"name": "nsfw-classifier", "version": "8", "stableAlias": "production"}
    world.generation = 2
    world.send(CommandAction.ROLLBACK, actor="mia")
    world.reconcile()
    assert world.status.phase is Phase.SUCCEEDED and len(world.executed) == executed  # no new attempt, no rollback
    assert world.status.history[-1].event == "CommandIgnored"
    assert "being deleted" in world.status.history[-1].detail
    assert not holds_deletion(world.parsed_spec, world.status)


def test_a_deleted_rollout_that_had_failed_is_not_started_again_by_a_spec_change() -> None:
    world = reverting(World())
    world.spec["model"] = {"name": "nsfw-classifier", "version": "9", "stableAlias": "production"}  # not there
    world.reconcile()
    assert world.status.phase is Phase.FAILED
    world.deleting = True
    world.spec["model"] = {"name": "nsfw-classifier", "version": "8", "stableAlias": "production"}
    world.generation = 2
    world.reconcile()
    assert world.status.phase is Phase.FAILED and world.executed == []
    assert "Resolved" not in events(world)


def test_a_deleted_rollout_whose_rollback_cannot_finish_gives_up_at_the_progress_deadline() -> None:
    """A namespace being deleted can take the registry Secret with it: the delete must not wait for good."""
    world = reverting(World())
    world.run_until(lambda w: w.status.current_step == 3)
    world.registry.down = True  # the stable alias can never be confirmed
    world.deleting = True
    world.run_until(finished)
    status = world.status
    assert status.phase is Phase.FAILED
    assert world.target.canary_weight == 0  # traffic went back at once; only the alias is unconfirmed
    failed = status.history[-1]
    assert failed.event == "Failed" and "gave up after progressDeadline 30m" in failed.detail

    stuck = reverting(World())  # the target never takes the weight back: its write is asked for every time
    stuck.run_until(lambda w: w.status.current_step == 3)
    stuck.target.frozen = True
    stuck.deleting = True
    stuck.run_until(finished, step=timedelta(minutes=1))
    ending = next(d for d in stuck.decisions if d.status.phase is Phase.FAILED)
    assert ending.actions == ()  # nothing more is sent once it has given up
    assert stuck.status.history[-1].detail.endswith("not confirmed: traffic to stable")
    assert failed.detail.endswith("not confirmed: stable alias"), failed.detail
    assert status.rollback is not None and status.completed_at - status.rollback.verdict_at >= timedelta(minutes=30)
    assert not holds_deletion(world.parsed_spec, status)


def test_a_rollback_stuck_past_the_progress_deadline_says_so_in_its_progressing_condition() -> None:
    """The rejected candidate may still serve: Progressing=True/RollingBack for hours hid it (Argo CD: Progressing,
    no notification). Past progressDeadline it is False/ProgressDeadlineExceeded (Degraded), naming what is missing."""
    world = World()
    fail_from(world, step_index=1)
    world.run_until(lambda w: w.status.current_step == 1)
    world.target.frozen = True  # the weight-0 write never takes effect
    world.run_until(lambda w: w.status.phase is Phase.ROLLING_BACK)
    world.advance(timedelta(minutes=29))
    world.reconcile()
    assert condition(world, "Progressing") == ("True", "RollingBack")
    world.advance(timedelta(minutes=2))
    world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK
    status, reason = condition(world, "Progressing")
    message = world.status.condition("Progressing").message  # type: ignore[union-attr]
    assert (status, reason) == ("False", "ProgressDeadlineExceeded"), message
    assert message.startswith("rollback unconfirmed for more than progressDeadline 30m (not confirmed: traffic back on "
                              "stable")
    world.advance(timedelta(minutes=5))
    world.reconcile()
    assert events(world).count("ProgressDeadlineExceeded") == 1  # one Warning Event, not one per look
    world.target.frozen = False
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK
    assert condition(world, "Progressing") == ("False", "RolledBack")


def test_a_rollback_that_is_not_for_a_delete_never_gives_up() -> None:
    world = reverting(World())
    world.run_until(lambda w: w.status.current_step == 3)
    world.registry.down = True
    world.send(CommandAction.ABORT)
    for _ in range(12):
        world.reconcile()
        world.advance(timedelta(minutes=10))
    assert world.status.phase is Phase.ROLLING_BACK  # two hours on: still trying, as before revertOnDeletion


def test_a_deleted_rollout_rolled_back_but_for_its_rejection_tag_ends_rolled_back_saying_so() -> None:
    """Deleted during a judged rollback whose traffic and alias are back: only the tag was left to write."""
    world = reverting(World())
    fail_from(world, step_index=3)
    for _ in range(200):
        world.conflict_ids.add("1:rollback:tag")  # the registry refuses this one write, every time
        world.reconcile()
        if world.status.phase is Phase.ROLLING_BACK and not world.deleting:
            assert world.status.rollback is not None and world.status.rollback.recovered_at is not None
            world.deleting = True
        if finished(world):
            break
        world.advance(timedelta(minutes=1))
    status = world.status
    assert status.phase is Phase.ROLLED_BACK, status.message
    assert status.history[-1].event == "RolledBack"
    assert status.history[-1].detail.endswith(f"not confirmed: {REJECTED_TAG} tag"), status.history[-1].detail
    assert world.target.canary_weight == 0 and world.registry.aliases["production"] == "6"


def test_a_rollout_deleted_before_resolution_ends_at_once() -> None:
    world = reverting(World())
    world.registry.down = True
    world.reconcile()
    world.deleting = True
    world.reconcile()
    assert world.status.phase is Phase.ROLLED_BACK and world.executed == []
    assert world.status.history[-1].event == "Deleted"


def test_a_deleted_rollout_rolling_back_for_a_new_candidate_ends_instead_of_starting_over() -> None:
    world = reverting(World())
    world.run_until(lambda w: w.status.current_step == 3)
    world.target.frozen = True  # traffic writes take no effect: the rollback stays in flight
    world.spec["model"] = {"name": "nsfw-classifier", "version": "8", "stableAlias": "production"}
    world.generation = 2
    world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK and world.status.rollback is not None
    assert world.status.rollback.restart
    world.deleting = True
    world.target.frozen = False
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.status.candidate is not None and world.status.candidate.version == "7"  # never started 8
    assert "Deleted" in events(world) and "RolledBackForNewCandidate" not in events(world)


def test_each_command_is_applied_once() -> None:
    world = World()
    reach_final_pause(world)
    command = world.send(CommandAction.PROMOTE)
    for _ in range(5):
        world.reconcile()
        world.advance(timedelta(minutes=1))
    assert [entry.command_id for entry in world.status.history].count(command.id) == 1
    assert command.id in world.status.handled_commands
    assert world.status.phase is Phase.BAKING  # one promote: past the pause, not past the bake


def test_refused_commands_are_recorded_once() -> None:
    world = World()
    world.reconcile()  # at step 1 (analysis), Progressing
    world.run_until(lambda w: w.status.current_step == 1)
    command = world.send(CommandAction.RETRY, actor="heidi")
    world.reconcile()
    world.reconcile()
    refused = [entry for entry in world.status.history if entry.command_id == command.id]
    assert [(entry.event, entry.actor) for entry in refused] == [("CommandIgnored", "heidi")]
    assert "nothing to retry" in refused[0].detail


def test_promote_skips_an_analysis_step_but_not_a_weight_step() -> None:
    world = World(target=Target(ignore_weights=True))
    world.reconcile()  # stuck on setWeight 1: the target never takes it
    assert world.status.current_step == 0
    world.send(CommandAction.PROMOTE)
    world.reconcile()
    assert world.status.current_step == 0
    assert world.status.history[-1].event == "CommandIgnored"
    world.target.ignore_weights = False
    world.advance(timedelta(seconds=10))  # the pending weight is sent again after RESEND_AFTER
    world.reconcile()
    assert world.status.current_step == 1
    world.send(CommandAction.PROMOTE)
    world.reconcile()
    assert world.status.current_step == 3  # analysis skipped, weight 10 set, next analysis started


def test_promote_full_skips_every_remaining_step() -> None:
    world = World()
    world.reconcile()
    world.send(CommandAction.PROMOTE, full=True, actor="ivan")
    world.reconcile()
    assert world.status.phase is Phase.BAKING
    assert weights_sent(world) == [1]
    assert world.status.promotion is not None and world.status.promotion.actor == "ivan"


def test_gate_cannot_be_skipped_while_it_runs() -> None:
    world = World(gate_error=AdapterError(AdapterErrorKind.UNAVAILABLE, "dataset unreachable"))
    world.reconcile()
    assert world.status.phase is Phase.GATING
    world.send(CommandAction.PROMOTE, full=True)
    world.reconcile()
    assert world.status.phase is Phase.GATING
    assert world.status.history[-1].event == "CommandIgnored"


def test_rollback_after_success_restores_the_previous_version() -> None:
    world = World(spec=spec_dict(bake=None))
    reach_final_pause(world)
    world.send(CommandAction.PROMOTE)
    world.run_until(finished)
    assert world.status.phase is Phase.SUCCEEDED
    world.advance(timedelta(days=2))
    world.send(CommandAction.ROLLBACK, actor="judy")
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.target.stable_version == "6" and world.registry.aliases["production"] == "6"
    assert effect_ids(world)[-3:] == ["1:rollback:restore", "1:rollback:alias", "1:rollback:tag"]
    assert world.status.rollback is not None and world.status.rollback.after_promotion

@pytest.mark.parametrize("serving", ["8", None])
def test_rollback_after_success_is_refused_once_another_release_serves_or_what_serves_is_unknown(
        serving: str | None) -> None:
    """Release 8 (another ModelRollout) promoted on the same target since: rolling this one back would undo it.
    A target that cannot be read now is no better: never act blind."""
    world = World(spec=spec_dict(bake=None))
    reach_final_pause(world)
    world.send(CommandAction.PROMOTE)
    world.run_until(finished)
    assert world.status.phase is Phase.SUCCEEDED
    world.registry.aliases["production"] = "8"
    if serving is None:
        world.target.unreachable = True
    else:
        world.target.stable_version = serving
    world.advance(timedelta(days=2))
    world.executed.clear()
    world.send(CommandAction.ROLLBACK, actor="bob")
    world.reconcile()
    world.advance(timedelta(minutes=1))
    world.reconcile()
    assert world.status.phase is Phase.SUCCEEDED and world.executed == []
    assert world.registry.aliases["production"] == "8" and not any(
        key.startswith("modelrollout.rejected") for key in world.registry.versions["7"])  # never tagged rejected
    last = world.status.history[-1]
    assert last.event == "CommandIgnored"
    assert ("version 8 serves now, not this rollout's 7: nothing of it to roll back" if serving
            else "cannot tell what serves on InferenceService nsfw-classifier now") in last.detail


@pytest.mark.parametrize("alias", ["7", "8"])
def test_rollback_after_success_on_a_target_reporting_no_version_asks_the_registry(alias: str) -> None:
    """A promoted version whose pods crash-loop reports no version it serves (Seldon v1's Deployments not available,
    a hand edit in KServe): unknown, not another release. The stable alias decides: still this rollout's candidate,
    on-call's rollback goes ahead; moved on, it is refused."""
    world = World(spec=spec_dict(bake=None))
    reach_final_pause(world)
    world.send(CommandAction.PROMOTE)
    world.run_until(finished)
    world.target.stable_version = None
    world.registry.aliases["production"] = alias
    world.executed.clear()
    world.send(CommandAction.ROLLBACK, actor="bob")
    world.run_until(finished)
    if alias == "7":
        assert world.status.phase is Phase.ROLLED_BACK and world.registry.aliases["production"] == "6"
    else:
        assert world.status.phase is Phase.SUCCEEDED and world.executed == []
        assert "it reports none) and @production no longer names 7" in world.status.history[-1].detail



def test_abort_after_success_is_refused() -> None:
    world = World(registry=Registry(aliases={"production": "7"}), target=Target(stable_version="7"))
    world.reconcile()
    world.send(CommandAction.ABORT)
    world.reconcile()
    assert world.status.phase is Phase.SUCCEEDED
    assert world.status.history[-1].event == "CommandIgnored"


def test_abort_before_resolution() -> None:
    world = World()
    world.registry.down = True
    world.reconcile()
    world.send(CommandAction.ABORT, actor="ken")
    world.reconcile()
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.executed == []


def test_retry_after_rollback_starts_a_new_attempt() -> None:
    world = World()
    fail_from(world, step_index=1)
    world.run_until(finished)
    assert world.status.attempt == 1
    world.judge = lambda _request: [verdict(Outcome.PASS)]
    world.send(CommandAction.RETRY, actor="leo")
    reach_final_pause(world)
    assert world.status.attempt == 2
    assert world.status.rollback is None
    attempt_two = [action_id for action_id in effect_ids(world) if action_id.startswith("2:")]
    # Still staged at 0% from attempt 1, so staging is observed done and not sent again.
    assert attempt_two == ["2:step-0:weight-1", "2:step-2:weight-10", "2:step-4:weight-50"]
    assert "PreviouslyRejected" in events(world)


def test_a_rejection_a_later_promotion_overruled_is_not_reported_or_taken_as_a_new_one() -> None:
    """modelrollout.rejected=false (a promotion since): no PreviouslyRejected, and a new rejection is confirmed only
    once the flag is true again, not by its time tag alone (written before the flag: a kill between the two)."""
    world = World()
    world.registry.versions["7"].update({REJECTED_TAG: "false", REJECTED_TIME_TAG: "2026-01-01T00:00:00Z"})
    world.reconcile()
    assert world.status.candidate is not None and "PreviouslyRejected" not in events(world)
    fail_from(world, step_index=1)
    world.conflict_ids.add("1:rollback:tag")  # the tag write fails once: the rollback waits on it
    world.run_until(lambda w: w.status.phase is Phase.ROLLING_BACK)
    rollback = world.status.rollback
    assert rollback is not None and rollback.tag_confirmed_at is None
    # This rejection's time tag is written, the flag not yet (a kill between the two): not confirmed.
    world.registry.versions["7"].update({REJECTED_TAG: "false",
                                          REJECTED_TIME_TAG: rejection_time(rollback.verdict_at)})
    decision = decide(world.parsed_spec, world.status, world.observe(), world.now)
    assert decision.status.rollback is not None and decision.status.rollback.tag_confirmed_at is None
    assert "CandidateRejected" not in [entry.event for entry in decision.status.history]


def test_a_second_rejection_of_the_same_version_is_recorded_with_its_own_reason() -> None:
    world = World()
    fail_from(world, step_index=1)
    world.run_until(finished)
    first = world.registry.versions["7"][REJECTED_TIME_TAG]
    world.advance(timedelta(hours=1))
    world.send(CommandAction.RETRY, actor="leo")
    world.judge = lambda _request: [verdict(Outcome.FAIL, reason="canary 9.9% (50/505) vs stable 0.2%")]
    world.run_until(lambda w: finished(w) and w.status.attempt == 2)
    tags = [action for action in world.executed if isinstance(action, TagRejected)]
    assert [action.id.split(":")[0] for action in tags] == ["1", "2"]
    assert world.registry.versions["7"][REJECTED_TIME_TAG] > first
    assert "9.9%" in world.registry.versions["7"][REJECTED_REASON_TAG]


# --- bake --------------------------------------------------------------------------------------------


def test_bake_failure_rolls_back_to_the_previous_version() -> None:
    world = World()
    fail_from(world, step_index=None, mode="bake", after=timedelta(minutes=20))
    reach_final_pause(world)
    world.send(CommandAction.PROMOTE)
    world.run_until(finished)
    status = world.status
    assert status.phase is Phase.ROLLED_BACK
    assert status.rollback is not None and status.rollback.cause is RollbackCause.BAKE_FAILED
    assert status.message.startswith("Rolled back: nsfw-rate canary 6.2%")
    assert "during bake (20m after promotion)" in status.message
    assert (world.target.stable_version, world.registry.aliases["production"]) == ("6", "6")
    bake_runs = [action for action in world.executed if isinstance(action, RunAnalysis) and str(action.mode) == "bake"]
    assert bake_runs[0].baseline_version == "6" and bake_runs[0].baseline_window == timedelta(days=7)
    assert bake_runs[0].canary_weight == 100


def test_a_restore_after_promotion_is_confirmed_only_once_the_restored_version_serves() -> None:
    world = World()
    fail_from(world, step_index=None, mode="bake", after=timedelta(minutes=20))
    reach_final_pause(world)
    world.send(CommandAction.PROMOTE)

    def not_ready_once_restored(_status: object, _observations: object, decision: Decision) -> None:
        if any(isinstance(action, RestoreStable) for action in decision.actions):
            world.target.ready = False  # the version put back needs new pods: KServe Standard mode, Seldon

    world.on_decision = not_ready_once_restored
    world.run_until(lambda w: w.status.rollback is not None)
    world.on_decision = None
    for _ in range(5):
        world.advance(timedelta(seconds=1))
        world.reconcile()
    assert world.target.stable_version == "6"  # written back, not serving yet
    assert world.status.phase is Phase.ROLLING_BACK and "TrafficRestored" not in events(world)
    world.target.ready = True
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK and "TrafficRestored" in events(world)


def test_the_bake_judges_from_when_the_candidate_took_all_traffic_though_the_alias_moved_later() -> None:
    world = World()
    reach_final_pause(world)

    def registry_away_once_promoted(_status: object, _observations: object, decision: Decision) -> None:
        promotion = decision.status.promotion
        if promotion is not None and promotion.target_confirmed_at is not None and world.on_decision is not None:
            world.registry.down = True  # the candidate serves all traffic; the alias cannot move yet
            world.on_decision = None

    world.on_decision = registry_away_once_promoted
    world.send(CommandAction.PROMOTE)
    world.run_until(lambda w: w.registry.down)
    served_from = world.status.promotion.target_confirmed_at if world.status.promotion else None
    assert served_from is not None and world.status.phase is Phase.PROMOTING
    world.advance(timedelta(minutes=5))
    world.reconcile()
    world.registry.down = False
    world.run_until(lambda w: w.status.phase is Phase.BAKING)
    analysis = world.status.analysis
    assert analysis is not None and analysis.window_start == served_from  # not when the alias moved
    assert analysis.ends_at == served_from + timedelta(hours=1)
    assert world.now - served_from >= timedelta(minutes=5)
    started = next(entry for entry in world.status.history if entry.event == "BakeStarted")
    assert started.detail.endswith(f"since the promotion at {served_from.strftime('%Y-%m-%dT%H:%M:%SZ')}")


def test_a_promotion_past_its_deadline_does_not_send_its_alias_move_beside_the_rollback() -> None:
    world = World()
    reach_final_pause(world)
    world.registry.slow_promotion = True
    world.send(CommandAction.PROMOTE)
    world.run_until(lambda w: w.status.promotion is not None and w.status.promotion.target_confirmed_at is not None)
    world.advance(timedelta(minutes=31))  # the alias move is due again, and past progressDeadline
    decision = decide(world.parsed_spec, world.status, world.observe(), world.now)
    assert decision.status.phase is Phase.ROLLING_BACK
    assert not [action for action in decision.actions if isinstance(action, SetAlias) and action.promotion]
    world.registry.slow_promotion = False
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK and world.registry.aliases["production"] == "6"


def test_bake_inconclusive_pauses_and_promote_ends_it() -> None:
    world = World()
    reach_final_pause(world)
    world.judge = lambda _request: [verdict(Outcome.INCONCLUSIVE)]
    world.send(CommandAction.PROMOTE)
    world.run_until(settled)
    assert world.status.pause is not None and world.status.pause.reason is PauseReason.BAKE_INCONCLUSIVE
    world.send(CommandAction.PROMOTE, actor="mia")
    world.reconcile()
    assert world.status.phase is Phase.SUCCEEDED


# --- faults during the rollout -----------------------------------------------------------------------


def test_registry_outage_holds_the_weight_until_it_answers() -> None:
    world = World()
    world.run_until(lambda w: w.status.current_step == 1)
    world.registry.down = True
    world.advance(timedelta(minutes=11))
    world.reconcile()
    assert world.status.current_step == 2
    assert weights_sent(world) == [1]
    assert "until the registry answers" in world.status.message
    assert condition(world, "RegistryAvailable") == ("False", "RegistryUnavailable")
    world.registry.down = False
    world.reconcile()
    assert weights_sent(world) == [1, 10]


def test_registry_outage_does_not_delay_traffic_going_back_to_stable() -> None:
    world = World()
    fail_from(world, step_index=1, after=timedelta(minutes=1))
    world.run_until(lambda w: w.now >= T0 + timedelta(seconds=30))
    world.registry.down = True
    world.advance(timedelta(seconds=30))
    decision = world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK
    assert world.target.canary_weight == 0
    rollback = world.status.rollback
    assert rollback is not None and rollback.traffic_confirmed_at == world.now and rollback.recovered_at is None
    assert "restoring @production" in world.status.message
    assert decision.requeue_after == timedelta(seconds=2)  # backoff, not a 1s hammering of the registry
    world.registry.down = False
    world.advance(timedelta(seconds=5))
    world.reconcile()
    rollback = world.status.rollback
    assert world.status.phase is Phase.ROLLED_BACK and rollback is not None
    assert rollback.time_to_recover_seconds == 5.0


def test_conflicts_are_retried_and_recorded() -> None:
    world = World()
    world.conflict_ids = {"1:step-0:weight-1"}
    decision = world.reconcile()
    record = next(item for item in world.status.actions if item.id == "1:step-0:weight-1")
    assert record.attempts == 2 and record.last_error == "Conflict: 409 conflict"
    assert condition(world, "TargetReady") == ("False", "TargetConflict")
    assert decision.requeue_after == timedelta(seconds=2)
    world.advance(timedelta(seconds=2))
    world.reconcile()
    assert world.status.current_step == 1
    assert condition(world, "TargetReady") == ("True", "TargetReady")


def test_weight_that_never_takes_effect_rolls_back_after_the_deadline() -> None:
    world = World()
    world.run_until(lambda w: w.status.current_step == 1)
    world.target.ignore_weights = True  # weight 10 (step 3) never takes effect
    world.run_until(finished, step=timedelta(minutes=5))
    assert world.status.rollback is not None
    assert world.status.rollback.cause is RollbackCause.PROGRESS_DEADLINE_EXCEEDED
    assert "did not take weight 10% within progressDeadline 30m (observed 1%)" in world.status.message


def test_weight_deadline_with_the_candidate_gone_says_none_is_staged() -> None:
    # Someone else took the candidate out of the target (a sync) mid-canary: the step can never be taken.
    world = World()
    world.run_until(lambda w: w.status.current_step == 1)
    world.target.ignore_weights = True
    world.target.canary_version = world.target.canary_weight = None
    world.run_until(finished, step=timedelta(minutes=5))
    assert "did not take weight 10% within progressDeadline 30m (observed no candidate staged)" in world.status.message


def test_weight_deadline_without_automatic_rollback_can_be_retried() -> None:
    world = World(spec=spec_dict(rollback={"automatic": False}))
    world.run_until(lambda w: w.status.current_step == 1)
    world.target.ignore_weights = True  # weight 10 (step 3) never takes effect
    world.run_until(settled, step=timedelta(minutes=5))
    assert world.status.pause is not None
    assert world.status.pause.reason is PauseReason.PROGRESS_DEADLINE_EXCEEDED
    world.target.ignore_weights = False
    world.send(CommandAction.RETRY)
    world.reconcile()
    assert world.status.current_step == 3


def test_promotion_that_never_takes_effect_rolls_back() -> None:
    world = World()
    reach_final_pause(world)
    world.target.ignore_weights = True
    world.send(CommandAction.PROMOTE)
    world.run_until(finished, step=timedelta(minutes=5))
    rollback = world.status.rollback
    assert rollback is not None and rollback.cause is RollbackCause.PROGRESS_DEADLINE_EXCEEDED
    assert rollback.after_promotion
    assert world.registry.aliases["production"] == "6"


def test_operator_killed_between_writing_status_and_acting_sends_each_action_once() -> None:
    world = World()
    world.crash_after = 1  # status written with the staging pending, then killed before acting
    world.reconcile()
    assert effect_ids(world) == []
    pending = [record.id for record in world.status.actions if record.state is ActionState.PENDING]
    assert pending == ["1:stage:7"]
    reach_final_pause(world)
    ids = effect_ids(world)
    assert ids == ["1:stage:7", "1:step-0:weight-1", "1:step-2:weight-10", "1:step-4:weight-50"]


def test_operator_killed_after_acting_finds_the_effect_and_moves_on() -> None:
    world = World()
    world.crash_after = 2  # staged on the target, killed before the next status write
    world.reconcile()
    assert effect_ids(world) == ["1:stage:7"]
    world.reconcile()
    assert effect_ids(world) == ["1:stage:7", "1:step-0:weight-1"]  # staging not sent again


@pytest.mark.parametrize("crash_after", [1, 2, 3, 4])
def test_operator_killed_at_every_boundary_reaches_the_same_end(crash_after: int) -> None:
    # The uncrashed run, reconcile by reconcile: what each left behind, and whether it made more than
    # `crash_after` status writes and action batches (a write per decision, a batch between two), so that a
    # kill after that many lands inside it.
    reference = World()
    fail_from(reference, step_index=3)
    left_behind: list[tuple[dict, int]] = []
    crash_points: list[int] = []
    while not finished(reference):
        assert len(left_behind) < 200, reference.status.message
        decided = len(reference.decisions)
        reference.reconcile()
        if 2 * (len(reference.decisions) - decided) - 1 > crash_after:
            crash_points.append(len(left_behind))
        left_behind.append((reference.status.to_dict(), len(reference.executed)))
        reference.advance(timedelta(seconds=30))
    # Every reconcile a kill can land in, from the first to the one that finishes the rollout.
    assert crash_points[0] == 0 and crash_points[-1] == len(left_behind) - 1, crash_points
    for crash_at_reconcile in crash_points:
        world = World()
        fail_from(world, step_index=3)
        for count in range(200):
            if finished(world):
                break
            if count == crash_at_reconcile:
                world.crash_after = crash_after
            world.reconcile()
            if count == crash_at_reconcile:  # the kill happened: the reconcile left less behind than uncrashed
                assert (world.status.to_dict(), len(world.executed)) != left_behind[count], count
            world.advance(timedelta(seconds=30))
        assert world.status.phase is reference.status.phase, crash_at_reconcile
        assert world.status.message == reference.status.message
        assert effect_ids(world) == effect_ids(reference)


# --- spec changes ------------------------------------------------------------------------------------


def test_new_candidate_mid_rollout_rolls_back_and_starts_over() -> None:
    world = World()
    world.run_until(lambda w: w.status.current_step == 3)
    world.spec["model"] = {"name": "nsfw-classifier", "version": "8"}
    world.generation = 2
    world.reconcile()
    status = world.status
    assert status.candidate is not None and status.candidate.version == "8"
    assert status.attempt == 2 and status.observed_generation == 2
    assert world.target.canary_version == "8"
    assert REJECTED_TAG not in world.registry.versions["7"]  # superseded, not rejected
    assert "1:rollback:traffic" in effect_ids(world)
    new = next(entry for entry in status.history if entry.event == "NewCandidate")
    assert "candidate 8 replaces 7 (generation 2)" in new.detail
    assert {"SpecChanged", "RollbackStarted", "RolledBackForNewCandidate"} <= set(events(world))
    reach_final_pause(world)


def test_new_candidate_after_success_starts_a_new_rollout() -> None:
    world = World(spec=spec_dict(bake=None))
    reach_final_pause(world)
    world.send(CommandAction.PROMOTE)
    world.run_until(finished)
    world.spec["model"] = {"name": "nsfw-classifier", "version": "8"}
    world.generation = 2
    world.reconcile()
    assert world.status.candidate is not None and world.status.candidate.version == "8"
    assert world.status.stable is not None and world.status.stable.version == "7"


NEW_SHA = "9a1e" + "0" * 60


def repin(world: World) -> None:
    world.spec = {**world.spec, "goldenDataset": {**world.spec["goldenDataset"], "sha256": NEW_SHA}}
    world.generation += 1


def gates_run(world: World) -> list[tuple[str, str]]:
    """(attempt, dataset hash) of every gate run."""
    return [(action.id.partition(":")[0], action.dataset.sha256) for action in world.executed
            if isinstance(action, RunGate)]


def test_a_dataset_re_pinned_mid_canary_takes_the_canary_out_and_gates_it_again_on_the_new_data() -> None:
    world = World()
    world.run_until(lambda w: w.status.current_step == 3)
    assert world.target.canary_weight == 10
    repin(world)
    world.reconcile()
    status = world.status
    assert status.attempt == 2 and status.candidate is not None and status.candidate.version == "7"
    assert gates_run(world) == [("1", SHA), ("2", NEW_SHA)]
    assert status.gate is not None and status.gate.dataset_sha256 == NEW_SHA
    assert REJECTED_TAG not in world.registry.versions["7"]  # nothing judged it on the new data
    ids = [action.id for action in world.executed]
    second_gate = next(i for i, action in enumerate(world.executed) if isinstance(action, RunGate)
                       and action.id.startswith("2:"))
    assert ids.index("1:rollback:traffic") < second_gate  # the canary is out before the new gate
    changed = next(entry for entry in status.history if entry.event == "DatasetChanged")
    assert changed.detail == f"golden dataset re-pinned: {SHA[:12]} -> {NEW_SHA[:12]}; rolling 7 back to gate it again"
    assert {"RollbackStarted", "RolledBackToGateAgain"} <= set(events(world))
    assert "RolledBackForNewCandidate" not in events(world)
    reach_final_pause(world)  # fresh deadlines: no step of the old attempt counts against the new one
    assert world.status.rollback is None and world.status.attempt == 2
    assert any(action.id.startswith("2:step-0") for action in world.executed)


def test_a_gate_answer_on_data_re_pinned_while_it_ran_is_not_taken_the_gate_starts_over_on_the_new_data() -> None:
    world = World()
    world.gate_error = AdapterError(AdapterErrorKind.UNAVAILABLE, "golden dataset store unreachable")
    world.run_until(lambda w: w.status.phase is Phase.GATING)
    gate = world.status.gate
    assert gate is not None and gate.request_id is not None and gate.dataset_sha256 == SHA
    repin(world)  # while the gate ran on the old data, whose answer the next decision reads
    answer = JudgeResult(gate.request_id, (verdict(Outcome.PASS, "accuracy", "0.98"),), dataset_sha256=SHA)
    decision = decide(world.parsed_spec, world.status, world.observe(gate=answer), world.now)
    assert decision.status.phase is Phase.GATING and decision.status.attempt == 1
    assert decision.status.gate is not None and decision.status.gate.outcome is None
    assert decision.status.gate.request_id != gate.request_id and decision.status.gate.dataset_sha256 == NEW_SHA
    assert [(entry.event, entry.detail) for entry in decision.events][-2:] == [
        ("DatasetChanged", f"golden dataset re-pinned: {SHA[:12]} -> {NEW_SHA[:12]}; the gate starts over"),
        ("GateStarted", f"golden dataset {NEW_SHA[:12]}: candidate 7 against stable 6")]
    assert [action.dataset.sha256 for action in decision.actions if isinstance(action, RunGate)] == [NEW_SHA]


def test_a_dataset_re_pinned_after_promotion_or_past_an_overridden_gate_waits_for_the_next_attempt() -> None:
    baking = World()
    reach_final_pause(baking)
    baking.send(CommandAction.PROMOTE)
    baking.run_until(lambda w: w.status.phase is Phase.BAKING)
    repin(baking)
    baking.reconcile()
    assert baking.status.phase is Phase.BAKING and "DatasetChanged" not in events(baking)

    overridden = World(gate_verdicts=[verdict(Outcome.INCONCLUSIVE, "accuracy", "only 12 golden samples")])
    overridden.reconcile()
    overridden.send(CommandAction.PROMOTE, actor="carol")
    overridden.reconcile()
    assert overridden.status.phase is Phase.PROGRESSING
    repin(overridden)
    overridden.reconcile()
    assert overridden.status.phase is Phase.PROGRESSING and "DatasetChanged" not in events(overridden)

    # A promoted version paused in its bake stays promoted: no alias restored, no canary again.
    bake_paused = World()
    reach_final_pause(bake_paused)
    bake_paused.judge = lambda _request: [verdict(Outcome.INCONCLUSIVE)]
    bake_paused.send(CommandAction.PROMOTE)
    bake_paused.run_until(settled)
    assert bake_paused.status.pause is not None and bake_paused.status.pause.reason is PauseReason.BAKE_INCONCLUSIVE
    repin(bake_paused)
    bake_paused.reconcile()
    assert bake_paused.status.pause is not None and bake_paused.status.pause.reason is PauseReason.BAKE_INCONCLUSIVE
    assert bake_paused.registry.aliases["production"] == "7" and "DatasetChanged" not in events(bake_paused)


def test_a_dataset_re_pinned_while_a_failure_waits_for_a_human_leaves_the_failed_canary_off_traffic() -> None:
    world = World(spec=spec_dict(rollback={"automatic": False}))
    fail_from(world, step_index=3)
    world.run_until(settled)
    assert world.status.pause is not None and world.status.pause.reason is PauseReason.ANALYSIS_FAILED
    sent = len(weights_sent(world))
    repin(world)
    world.reconcile()
    assert world.status.pause is not None and world.status.pause.reason is PauseReason.ANALYSIS_FAILED
    assert world.status.attempt == 1 and len(weights_sent(world)) == sent and "DatasetChanged" not in events(world)


def test_a_retry_out_of_a_pause_after_a_re_pin_gates_the_new_data_before_any_traffic() -> None:
    world = World(spec=spec_dict(rollback={"automatic": False}))
    world.target.ignore_weights = True  # the target never takes the step: paused past progressDeadline
    world.run_until(settled)
    assert world.status.pause is not None and world.status.pause.reason is PauseReason.PROGRESS_DEADLINE_EXCEEDED
    repin(world)
    world.reconcile()
    world.target.ignore_weights = False
    before = len(world.executed)
    world.send(CommandAction.RETRY)
    world.run_until(lambda w: w.status.attempt == 2 and w.status.phase is Phase.PROGRESSING)
    after = world.executed[before:]
    new_gate = next(i for i, action in enumerate(after) if isinstance(action, RunGate)
                    and action.dataset.sha256 == NEW_SHA)
    raised = [i for i, action in enumerate(after) if isinstance(action, SetCanaryWeight) and action.weight > 0]
    assert raised and min(raised) > new_gate  # no user saw the candidate on the old data's gate
    assert "DatasetChanged" in events(world)


def test_a_full_promote_after_a_re_pin_says_it_goes_on_the_old_data_s_gate() -> None:
    world = World(spec=spec_dict(rollback={"automatic": False}))
    fail_from(world, step_index=3)
    world.run_until(settled)
    repin(world)
    world.send(CommandAction.PROMOTE, actor="erin", full=True)
    world.reconcile()
    changed = [entry for entry in world.status.history if entry.event == "DatasetChanged"]
    assert [(entry.actor, entry.detail) for entry in changed] == [
        ("erin", f"golden dataset re-pinned: {SHA[:12]} -> {NEW_SHA[:12]}; promoted by erin on the earlier gate, "
                 "not gated again")]


def test_an_abort_before_staging_leaves_a_canary_share_the_target_does_not_ascribe_to_the_candidate() -> None:
    world = World()
    world.target.canary_weight = 25  # e.g. a Seldon predictor named like the canary, the team's own A/B test
    world.target.frozen = True  # staging does not take (Seldon refuses to stage over that predictor)
    world.reconcile()
    assert world.status.phase is Phase.PENDING and world.status.candidate is not None
    world.send(CommandAction.ABORT)
    world.reconcile()
    assert world.status.phase is Phase.ROLLED_BACK
    assert not [action for action in world.decisions[-1].actions if isinstance(action, SetCanaryWeight)]
    restored = next(entry for entry in world.status.history if entry.event == "TrafficRestored")
    assert restored.detail.startswith("the candidate was never staged on")


def test_golden_thresholds_changed_mid_canary_gate_the_candidate_again_by_the_new_ones() -> None:
    # Tightened after the gate passed (minAccuracy 0.97 -> 0.999): the canary went on, judged by the old ones.
    world = World()
    world.run_until(lambda w: w.status.current_step == 3)
    golden = world.spec["goldenDataset"]
    world.spec = {**world.spec, "goldenDataset": {**golden, "thresholds": {**golden["thresholds"],
                                                                           "minAccuracy": 0.999}}}
    world.generation += 1
    world.gate_verdicts = [verdict(Outcome.FAIL, "minAccuracy", "0.98 < 0.999")]
    world.run_until(finished)
    assert [attempt for attempt, _ in gates_run(world)] == ["1", "2"]
    changed = next(entry for entry in world.status.history if entry.event == "DatasetChanged")
    assert changed.detail == "goldenDataset.thresholds changed since the gate ran; rolling 7 back to gate it again"
    assert world.status.phase is Phase.ROLLED_BACK and world.target.canary_weight == 0
    assert world.status.rollback is not None and world.status.rollback.cause is RollbackCause.GATE_FAILED
    # Only the thresholds count, as parsed: the same ones written again change nothing.
    again = World()
    again.run_until(lambda w: w.status.current_step == 3)
    again.spec = copy.deepcopy(again.spec)
    again.generation += 1
    again.reconcile()
    assert len(gates_run(again)) == 1 and again.status.current_step == 3


def test_a_new_candidate_named_while_a_re_pin_takes_the_canary_out_is_the_one_started() -> None:
    world = World()
    world.run_until(lambda w: w.status.current_step == 3)
    world.target.frozen = True
    repin(world)
    world.reconcile()
    world.spec = {**world.spec, "model": {**world.spec["model"], "version": "8"}}
    world.generation += 1
    world.reconcile()
    new = [entry.detail for entry in world.status.history if entry.event == "NewCandidate"]
    assert new == ["candidate 8 replaces 7 (generation 3); starting over once the rollback completes"]
    world.target.frozen = False
    world.run_until(lambda w: w.status.attempt == 2 and w.status.phase is Phase.PROGRESSING)
    assert world.status.candidate is not None and world.status.candidate.version == "8"
    assert "RolledBackForNewCandidate" in events(world) and "RolledBackToGateAgain" not in events(world)


def test_an_abort_while_a_re_pin_takes_the_canary_out_ends_the_rollout_and_retry_gates_on_the_new_data() -> None:
    world = World()
    world.run_until(lambda w: w.status.current_step == 3)
    world.target.frozen = True
    repin(world)
    world.reconcile()
    assert world.status.rollback is not None and world.status.rollback.restart
    world.send(CommandAction.ABORT, command_id="abort-1")
    world.reconcile()
    world.target.frozen = False
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK and world.status.attempt == 1
    assert "RolledBackToGateAgain" not in events(world)
    world.send(CommandAction.RETRY)
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING, step=timedelta(seconds=5))
    assert gates_run(world)[-1] == ("2", NEW_SHA)


def test_same_candidate_spec_change_keeps_going() -> None:
    world = World()
    world.run_until(lambda w: w.status.current_step == 1)
    world.spec["analysis"]["interval"] = "1m"
    world.generation = 2
    world.reconcile()
    assert world.status.observed_generation == 2
    assert world.status.phase is Phase.PROGRESSING and world.status.attempt == 1
    assert events(world)[-1] == "SpecChanged"


def test_fixing_the_spec_after_failure_starts_over() -> None:
    world = World(spec=spec_dict(model={"name": "nsfw-classifier", "version": "99"}))
    world.reconcile()
    assert world.status.phase is Phase.FAILED
    world.spec["model"] = {"name": "nsfw-classifier", "version": "7"}
    world.generation = 2
    world.reconcile()
    assert world.status.phase is Phase.PROGRESSING


def test_spec_change_during_rollback_starts_over_after_it() -> None:
    world = World()
    fail_from(world, step_index=1, after=timedelta(minutes=1))
    world.run_until(lambda w: w.now >= T0 + timedelta(seconds=30))
    world.registry.down = True  # keeps the rollback open on the alias and tag
    world.advance(timedelta(seconds=30))
    world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK
    world.spec["model"] = {"name": "nsfw-classifier", "version": "8"}
    world.generation = 2
    world.reconcile()
    assert world.status.rollback is not None and world.status.rollback.restart
    world.registry.down = False
    world.judge = lambda _request: [verdict(Outcome.PASS)]
    world.reconcile()
    assert world.status.candidate is not None and world.status.candidate.version == "8"
    assert REJECTED_TAG in world.registry.versions["7"]  # 7 failed its analysis before being replaced


@pytest.mark.parametrize("deleted", [False, True])
def test_a_rejection_tag_that_failed_is_written_after_the_spec_moved_on(deleted: bool) -> None:
    """The ledger says the tag was asked for, not that it was written: the rejected version's own tags are
    observed even when the spec names another version by then."""
    world = World()
    world.gate_verdicts = [verdict(Outcome.FAIL, "accuracy", "0.80 < 0.97")]
    world.conflict_ids.add("1:rollback:tag")  # MLflow refuses the tag write once
    world.run_until(lambda w: any(r.id == "1:rollback:tag" for r in w.status.actions), step=timedelta(seconds=1))
    assert REJECTED_TAG not in world.registry.versions["7"] and world.status.phase is Phase.ROLLING_BACK
    world.spec["model"] = {"name": "nsfw-classifier", "version": "8", "stableAlias": "production"}
    world.generation = 2
    if deleted:
        del world.registry.versions["7"]
    world.gate_verdicts = [verdict(Outcome.PASS)]
    world.advance(timedelta(seconds=5))
    world.reconcile()
    assert world.status.candidate is not None and world.status.candidate.version == "8"
    rejected = [h.detail for h in world.status.history if h.event == "CandidateRejected"]
    if deleted:
        assert rejected == [f"version 7 no longer exists in the registry: no {REJECTED_TAG} tag to write"]
    else:
        assert REJECTED_TAG in world.registry.versions["7"] and rejected == [f"version 7 tagged {REJECTED_TAG}"]


def _first_rollout_killed_after_its_alias_moved() -> World:
    """A first rollout (no stable version) whose operator was killed right after the promotion moved the alias."""
    base = World(registry=Registry(aliases={}))
    del base.spec["bake"]
    while base.status.phase is not Phase.SUCCEEDED:
        for budget in range(1, 12):
            world = copy.deepcopy(base)
            world.crash_after = budget
            world.reconcile()
            if world.registry.aliases.get("production") == "7" and world.status.phase is Phase.PROMOTING:
                world.advance(timedelta(seconds=5))
                return world
        base.reconcile()
        base.advance(timedelta(seconds=30))
    raise AssertionError("no point between the alias move and the end of the promotion")


def test_a_first_rollout_rejected_after_its_alias_moved_fails_and_does_not_stay_stable() -> None:
    """No earlier version to put back: the candidate keeps the traffic, which the rollout must say instead of
    RolledBack, and the stable alias must not go on naming the rejected version."""
    world = _first_rollout_killed_after_its_alias_moved()
    world.send(CommandAction.ABORT)
    world.run_until(lambda w: w.status.phase in (Phase.ROLLED_BACK, Phase.FAILED), step=timedelta(seconds=2))
    events = [h.event for h in world.status.history]
    assert world.status.phase is Phase.FAILED and "Recovered" not in events and "TrafficRestored" not in events
    assert "TrafficNotRestored" in events and "AliasRemoved" in events
    assert "production" not in world.registry.aliases and REJECTED_TAG in world.registry.versions["7"]
    assert world.status.rollback is not None and world.status.rollback.time_to_recover_seconds is None


def test_a_promoted_first_rollout_superseded_stays_stable_for_its_successor() -> None:
    """Not rejected, only replaced: the next candidate is canaried against it, as against any stable."""
    world = _first_rollout_killed_after_its_alias_moved()
    world.spec["model"] = {"name": "nsfw-classifier", "version": "8", "stableAlias": "production"}
    world.generation = 2
    world.run_until(lambda w: w.status.attempt == 2 and w.status.current_step is not None, step=timedelta(seconds=2))
    events = [h.event for h in world.status.history]
    after = events[events.index("RolledBackForNewCandidate"):]
    assert "TrafficNotRestored" not in events and "AliasRemoved" not in events and "NoStableVersion" not in after
    assert world.status.stable is not None and world.status.stable.version == "7"
    assert world.registry.aliases.get("production") == "7"


def test_a_first_rollout_aborted_before_the_target_took_it_rolls_back() -> None:
    """The promotion had started, but stable still served: the candidate's share goes back as usual."""
    world = World(registry=Registry(aliases={}))
    del world.spec["bake"]
    world.target.ignore_weights = True  # the target accepts the writes but never moves traffic
    world.reconcile()
    world.advance(timedelta(seconds=5))
    world.send(CommandAction.ABORT)
    world.target.ignore_weights = False
    world.run_until(lambda w: w.status.phase in (Phase.ROLLED_BACK, Phase.FAILED), step=timedelta(seconds=2))
    events = [h.event for h in world.status.history]
    assert world.status.phase is Phase.ROLLED_BACK and "TrafficNotRestored" not in events
    assert "TrafficRestored" in events and world.target.stable_version != "7"


@pytest.mark.parametrize("phase", [Phase.GATING, Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTING, Phase.BAKING])
def test_a_status_edited_into_a_phase_without_its_candidate_starts_over(phase: Phase) -> None:
    world = World()
    world.status = ModelRolloutStatus(phase=phase, current_step=1)  # written by hand: no candidate
    world.reconcile()
    assert world.status.candidate is not None and world.status.candidate.version == "7"
    assert [h.event for h in world.status.history][:2] == ["StatusReset", "Resolved"]


def test_the_step_is_published_counted_from_one_as_messages_say_it() -> None:
    world = World()
    total = len(world.spec["canary"]["steps"])
    world.run_until(lambda w: w.status.current_step == 1)
    assert world.status.step == f"2/{total}" and f"step 2/{total}" in world.status.message.lower()
    assert world.status.to_dict()["step"] == f"2/{total}"


# --- engine hygiene ----------------------------------------------------------------------------------


def test_decide_is_pure() -> None:
    world = World()
    world.run_until(lambda w: w.status.current_step == 1)
    spec = parse_spec(world.spec)
    observations = world.observe()
    before = copy.deepcopy(world.status)
    first = decide(spec, world.status, observations, world.now + timedelta(seconds=30))
    second = decide(spec, world.status, observations, world.now + timedelta(seconds=30))
    assert first == second
    assert world.status == before


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(parse_spec(spec_dict()), None, Observations(generation=1), datetime(2026, 1, 1))


def test_first_decision_without_observations_waits() -> None:
    decision = decide(parse_spec(spec_dict()), None, Observations(generation=1), T0)
    assert decision.actions == ()
    assert decision.status.phase is Phase.PENDING
    assert decision.status.observed_generation == 1
    assert decision.status.message.startswith("Waiting for the registry to resolve nsfw-classifier version 7")
    assert {item.type for item in decision.status.conditions} == {
        "Ready", "Progressing", "GatePassed", "AnalysisHealthy"}
    for item in decision.status.conditions:
        assert item.observed_generation == 1
        assert item.status in (ConditionStatus.TRUE, ConditionStatus.FALSE, ConditionStatus.UNKNOWN)


def test_condition_transition_time_moves_only_when_status_changes() -> None:
    world = World()
    world.reconcile()
    ready = world.status.condition("TargetReady")
    world.advance(timedelta(minutes=3))
    world.reconcile()
    assert world.status.condition("TargetReady") == ready


def test_history_is_bounded() -> None:
    world = World()
    reach_final_pause(world)
    for index in range(80):
        world.send(CommandAction.RETRY, command_id=f"noise-{index}")
        world.reconcile()
    assert len(world.status.history) == 50
    assert world.status.history[-1].command_id == "noise-79"
    assert len(world.status.handled_commands) == 20


def test_target_deleted_mid_canary_counts_as_no_traffic_on_the_candidate() -> None:
    world = World()
    fail_from(world, step_index=1)
    world.run_until(lambda w: w.now >= T0 + timedelta(minutes=1, seconds=30))
    world.target.exists = False
    world.advance(timedelta(seconds=30))
    world.reconcile()
    assert world.status.phase is Phase.ROLLED_BACK
    restored = next(entry for entry in world.status.history if entry.event == "TrafficRestored")
    assert restored.detail == "InferenceService nsfw-classifier no longer exists"


def test_target_lost_after_staging_is_cleaned_up_once_it_answers() -> None:
    world = World(target=Target(ready_delay=timedelta(hours=1)))
    world.reconcile()
    world.target.unreachable = True
    world.advance(timedelta(minutes=31))
    world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK
    assert world.status.rollback is not None
    assert world.status.rollback.cause is RollbackCause.CANDIDATE_NOT_READY
    world.target.unreachable = False
    world.advance(timedelta(seconds=10))
    world.reconcile()
    assert world.status.phase is Phase.FAILED
    assert world.target.canary_version is None
    assert world.status.message.startswith("Failed: InferenceService nsfw-classifier unavailable for longer than "
                                           "progressDeadline 30m: connection refused")


def test_an_invalid_spec_fails_an_idle_rollout() -> None:
    error = SpecError("spec.canary.steps[2].setWeight", "must be an integer from 0 to 100")
    decision = reject_spec(None, error, generation=4, now=T0)
    assert decision.actions == ()
    assert decision.status.phase is Phase.FAILED
    assert decision.status.message == ("Invalid spec: spec.canary.steps[2].setWeight: must be an integer from 0 "
                                       "to 100.")
    assert decision.status.observed_generation == 4
    assert condition_of(decision.status, "Ready") == ("False", "InvalidSpec")
    again = reject_spec(decision.status, error, generation=4, now=T0 + timedelta(minutes=1))
    assert again.events == () and len(again.status.history) == 1


def test_an_invalid_spec_holds_a_rollout_in_flight() -> None:
    world = World()
    world.run_until(lambda w: w.status.current_step == 1)
    error = SpecError("spec.analysis.interval", "must be longer than 0s")
    decision = reject_spec(world.status, error, generation=2, now=world.now)
    assert decision.status.phase is Phase.PROGRESSING
    assert decision.status.message == "Holding Progressing unchanged: invalid spec: spec.analysis.interval: must be " \
                                      "longer than 0s."
    assert decision.status.current_step == 1 and decision.actions == ()


@pytest.mark.parametrize("outcome", [Phase.SUCCEEDED, Phase.ROLLED_BACK])
def test_a_finished_rollout_whose_unchanged_spec_became_invalid_keeps_its_outcome(outcome: Phase) -> None:
    """A newer operator, or its settings, may refuse a spec it ran: the outcome stands, it cannot run again."""
    world = World()
    if outcome is Phase.ROLLED_BACK:
        fail_from(world, step_index=1)
    else:
        reach_final_pause(world)
        world.send(CommandAction.PROMOTE, actor="alice")
    world.run_until(finished)
    assert world.status.phase is outcome
    done = world.status
    error = SpecError("spec.target.kserve.candidateUrl", "host '10.0.0.7' is not a Service of namespace team-a")
    decision = reject_spec(done, error, generation=done.observed_generation or 0, now=world.now)
    assert decision.status.phase is outcome and decision.actions == ()
    assert decision.status.completed_at == done.completed_at
    assert decision.status.message == f"{outcome}; its spec cannot run again: {error}."
    assert condition_of(decision.status, "Ready") == ("False", "InvalidSpec")
    assert [e.event for e in decision.events] == ["InvalidSpec"]
    again = reject_spec(decision.status, error, generation=done.observed_generation or 0, now=world.now)
    assert again.status == decision.status and again.events == ()
    # A new spec that is invalid has nothing running: Failed, as for any idle rollout.
    edited = reject_spec(done, error, generation=(done.observed_generation or 0) + 1, now=world.now)
    assert edited.status.phase is Phase.FAILED


def condition_of(status: ModelRolloutStatus, name: str) -> tuple[str, str]:
    found = status.condition(name)
    assert found is not None
    return str(found.status), found.reason


def test_promotion_waits_when_the_staged_candidate_vanished() -> None:
    world = World()
    reach_final_pause(world)
    world.target.canary_version, world.target.canary_weight = None, None  # a sync wiped the canary
    world.send(CommandAction.PROMOTE)
    world.reconcile()
    assert world.status.phase is Phase.PROMOTING
    assert "no longer staged and ready" in world.status.message
    assert not any(action.type is ActionType.PROMOTE_CANDIDATE for action in world.executed)
    world.run_until(finished, step=timedelta(minutes=5))
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.status.rollback is not None
    assert world.status.rollback.cause is RollbackCause.PROGRESS_DEADLINE_EXCEEDED
    # Nothing judged it bad (its canary vanished, the promotion was never sent): not tagged rejected.
    assert not world.status.rollback.reject_candidate
    assert not any(isinstance(action, TagRejected) for action in world.executed)
    assert REJECTED_TAG not in world.registry.versions["7"] and "CandidateRejected" not in events(world)


def test_a_registry_away_past_the_progress_deadline_says_so_while_it_keeps_trying() -> None:
    """As a Deployment does: Progressing=False (ProgressDeadlineExceeded), not a terminal phase (nothing was done)."""
    world = World()
    world.registry.down = True
    world.reconcile()
    progressing = world.status.condition("Progressing")
    assert progressing is not None and (progressing.status, progressing.reason) == ("True", "Resolving")
    world.now += timedelta(minutes=31)  # progressDeadline 30m
    world.reconcile()
    progressing = world.status.condition("Progressing")
    assert world.status.phase is Phase.PENDING
    assert progressing is not None and (progressing.status, progressing.reason) == ("False", "ProgressDeadlineExceeded")
    assert progressing.message.startswith("no progress for more than progressDeadline 30m: Waiting for the registry")
    world.registry.down = False
    world.reconcile()
    progressing = world.status.condition("Progressing")
    assert progressing is not None and progressing.status == "True" and world.status.candidate is not None


def test_a_version_that_never_finishes_registering_is_polled_and_passes_the_progress_deadline() -> None:
    """A wait with no failure: the registry sends no change, so the engine must look again itself, and a version
    stuck registering is as stuck as a registry away."""
    world = World(registry=Registry(statuses={"7": "PENDING_REGISTRATION"}))
    decision = world.reconcile()
    assert decision.requeue_after is not None and decision.requeue_after <= timedelta(seconds=5)
    assert world.status.resolving_since == world.now
    world.now += timedelta(minutes=29)
    world.reconcile()
    progressing = world.status.condition("Progressing")
    assert progressing is not None and (progressing.status, progressing.reason) == ("True", "Resolving")
    world.now += timedelta(minutes=2)  # progressDeadline 30m
    decision = world.reconcile()
    progressing = world.status.condition("Progressing")
    assert world.status.phase is Phase.PENDING and decision.requeue_after is not None
    assert progressing is not None and (progressing.status, progressing.reason) == ("False", "ProgressDeadlineExceeded")
    assert "Waiting for nsfw-classifier version 7 to finish registering" in progressing.message
    world.registry.statuses.clear()
    world.reconcile()
    progressing = world.status.condition("Progressing")
    assert world.status.candidate is not None and world.status.resolving_since is None
    assert progressing is not None and progressing.status == "True"


def test_candidate_already_stable_on_a_target_that_stays_unready_is_polled_past_the_deadline() -> None:
    """No event comes when the target turns ready (the operator watches ModelRollouts only): the wait polls."""
    world = World(registry=Registry(aliases={"production": "7"}), target=Target(stable_version="7", ready=False))
    decision = world.reconcile()
    assert decision.requeue_after is not None and decision.requeue_after <= timedelta(seconds=5)
    world.now += timedelta(minutes=31)
    world.reconcile()
    progressing = world.status.condition("Progressing")
    assert world.status.phase is Phase.PENDING
    assert progressing is not None and (progressing.status, progressing.reason) == ("False", "ProgressDeadlineExceeded")
    world.target.ready = True
    world.reconcile()
    assert world.status.phase is Phase.SUCCEEDED and world.status.resolving_since is None


def test_a_restarted_attempt_counts_its_progress_deadline_from_the_restart() -> None:
    """The deadline of a wait with no failure counts from when resolving began, not from an older attempt."""
    world = World(registry=Registry(statuses={"7": "PENDING_REGISTRATION"}))
    world.reconcile()
    world.registry.statuses.clear()
    reach_final_pause(world)
    world.send(CommandAction.PROMOTE)
    world.run_until(finished, step=timedelta(minutes=5))
    assert world.status.phase is Phase.SUCCEEDED and world.status.resolving_since is None
    world.now += timedelta(hours=5)
    world.registry.statuses["8"] = "PENDING_REGISTRATION"
    world.spec = {**world.spec, "model": {**world.spec["model"], "version": "8"}}
    world.generation += 1
    world.reconcile()
    progressing = world.status.condition("Progressing")
    assert world.status.phase is Phase.PENDING and world.status.resolving_since == world.now
    assert progressing is not None and (progressing.status, progressing.reason) == ("True", "Resolving")


def test_the_deadline_anchor_is_not_an_older_one() -> None:
    """A registry outage still running from the ended rollout (its retry), a spec refused while resolving, and a
    spec edit while resolving: each new wait counts its progressDeadline from its own start."""
    world = World()
    reach_final_pause(world)
    world.send(CommandAction.PROMOTE)
    world.run_until(finished, step=timedelta(minutes=5))
    world.target.unreachable = True
    world.reconcile()  # errors while Succeeded: a retry from now, still running when the new attempt starts
    assert world.status.retry is not None
    world.now += timedelta(hours=2)
    world.registry.statuses["8"] = "PENDING_REGISTRATION"
    world.spec = {**world.spec, "model": {**world.spec["model"], "version": "8"}}
    world.generation += 1
    world.reconcile()
    assert world.status.retry is not None and world.status.retry.since < world.now - timedelta(hours=1)
    assert world.status.phase is Phase.PENDING and condition(world, "Progressing") == ("True", "Resolving")
    world.target.unreachable = False
    # Refused while resolving (Failed), then fixed two hours later: a fresh deadline.
    refused = reject_spec(world.status, SpecError("spec.analysis.interval", "must be longer than 0s"),
                          generation=world.generation + 1, now=world.now)
    assert refused.status.phase is Phase.FAILED and refused.status.resolving_since is None
    world.status, world.generation = refused.status, world.generation + 2
    world.now += timedelta(hours=2)
    world.reconcile()
    assert world.status.phase is Phase.PENDING and condition(world, "Progressing") == ("True", "Resolving")
    # Edited while resolving, 29 minutes in, then 2 more minutes: not past the edit's deadline.
    world.now += timedelta(minutes=29)
    world.reconcile()
    world.registry.versions["9"] = {}
    world.registry.statuses["9"] = "PENDING_REGISTRATION"
    world.spec = {**world.spec, "model": {**world.spec["model"], "version": "9"}}
    world.generation += 1
    world.reconcile()
    world.now += timedelta(minutes=2)
    world.reconcile()
    assert condition(world, "Progressing") == ("True", "Resolving")


def test_a_long_resolving_wait_looks_again_less_often() -> None:
    """1 s at first, 30 s once it has lasted 5 minutes: a version stuck registering must not cost the registry
    seven calls a second for ever."""
    world = World(registry=Registry(statuses={"7": "PENDING_REGISTRATION"}))
    assert world.reconcile().requeue_after == timedelta(seconds=1)
    world.now += timedelta(minutes=1)
    assert world.reconcile().requeue_after == timedelta(seconds=6)
    world.now += timedelta(minutes=40)
    assert world.reconcile().requeue_after == timedelta(seconds=30)
    world.registry.down = True  # errors: the backoff paces it, not the poll
    decision = world.reconcile()
    assert world.status.retry is not None and decision.requeue_after == timedelta(seconds=2)


@pytest.mark.parametrize("version", ["7", None])
def test_candidate_already_stable_on_a_target_that_is_not_ready_waits(version: str | None) -> None:
    world = World(registry=Registry(aliases={"production": "7"}), target=Target(stable_version=version, ready=False))
    world.reconcile()
    assert world.status.phase is Phase.PENDING and world.executed == []
    assert "waiting to read InferenceService nsfw-classifier" in world.status.message


def test_candidate_already_stable_beside_traffic_modelrollout_does_not_manage_claims_nothing_but_ends() -> None:
    """A ready target the router has words about (another team's A/B split, a canary entry it did not create) and
    no recorded version: a wait there would last until the other team's traffic went."""
    world = World(registry=Registry(aliases={"production": "7"}), target=Target(stable_version=None))
    world.target.never_ready = True  # only for its detail; the target itself reports ready
    world.target.canary_version = None
    world.reconcile()
    assert world.status.phase is Phase.SUCCEEDED and "none is claimed" in world.status.message
