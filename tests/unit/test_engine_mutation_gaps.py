"""Scenario tests for engine behaviour that surviving mutants of controller/engine/decide.py showed untested.

Ported from review s25engine's gap tests; the comment above each test names the mutant(s) it kills.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from test_engine_properties import Checker, apply
from test_engine_support import World, spec_dict, verdict

from controller.api import CommandAction
from controller.api.status import TERMINAL_PHASES, Phase
from controller.engine import BACKOFF_MAX, REJECTED_TAG, ActionType
from controller.verdict import Outcome


def finished(world: Any) -> bool:
    return world.status.phase in TERMINAL_PHASES


# G2 (mutant 36): onInconclusive: rollback rolls back without tagging the candidate rejected (README "departs").
def test_an_inconclusive_analysis_rolled_back_by_policy_is_not_tagged_rejected() -> None:
    spec = spec_dict()
    spec["analysis"]["onInconclusive"] = "rollback"
    world = World(spec=spec, judge=lambda _request: [verdict(Outcome.INCONCLUSIVE)])
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.status.rollback is not None and not world.status.rollback.reject_candidate
    assert REJECTED_TAG not in world.registry.versions["7"]
    assert not [a for a in world.executed if a.type is ActionType.TAG_REJECTED]


def test_an_inconclusive_gate_rolled_back_by_policy_is_not_tagged_rejected() -> None:
    spec = spec_dict()
    spec["analysis"]["onInconclusive"] = "rollback"
    world = World(spec=spec, gate_verdicts=[verdict(Outcome.INCONCLUSIVE, "accuracy", "too few samples")])
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK
    assert REJECTED_TAG not in world.registry.versions["7"]


# G1 (mutant 33): the decision that reads an action's failure does not hand the same action out again: the backoff
# paces it. World stops a reconcile at a failure, but the operator's loop (runtime.py) goes on with that decision's
# actions in the same reconcile (up to MAX_ROUNDS), so the decision itself must hold the action back.
def test_the_decision_that_reads_a_failure_does_not_resend_the_failed_action() -> None:
    world = World()
    world.conflict_ids = {"1:stage:7"}
    world.reconcile()
    after_failure = world.decisions[-1]
    assert world.status.actions and world.status.actions[0].last_error  # the failure was read
    assert "1:stage:7" not in [action.id for action in after_failure.actions]
    assert after_failure.requeue_after is not None and after_failure.requeue_after >= timedelta(seconds=2)


# A seeded random walk of the fake world (random specs; ticks, verdicts, commands, registry and target faults,
# kills, new candidates, re-pins, step edits), for the wake-up check below.
def _random_spec(rng: random.Random) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    weight = 0
    for _ in range(rng.randint(1, 3)):
        weight = rng.randint(weight, 100)
        steps.append({"setWeight": weight})
        follow = rng.choice(["analysis", "analysis", "pause", "timed-pause", "none"])
        if follow == "analysis":
            steps.append({"analysis": {"duration": f"{rng.randint(1, 3)}m"}})
        elif follow == "pause":
            steps.append({"pause": {}})
        elif follow == "timed-pause":
            steps.append({"pause": {"duration": f"{rng.randint(1, 2)}m"}})
    if weight == 0:
        steps.append({"setWeight": rng.randint(1, 100)})
    spec = spec_dict(canary={"steps": steps}, rollback={"automatic": rng.random() < 0.7, "revertOnDeletion": True},
                     bake={"duration": "5m", "baseline": "3d"} if rng.random() < 0.5 else None,
                     progressDeadline=f"{rng.randint(2, 6)}m")
    spec["analysis"]["onInconclusive"] = rng.choice(["pause", "rollback"])
    spec["analysis"]["interval"] = rng.choice(["20s", "30s"])
    return spec


def _random_op(rng: random.Random) -> tuple[str, Any]:
    kind = rng.choice(["tick"] * 6 + ["judges", "gate", "command", "registry", "target", "crash", "new-candidate",
                                      "re-pin", "steps"])
    value: Any = {
        "tick": lambda: rng.choice([1, 5, 20, 30, 60, 120, 300]),
        "judges": lambda: rng.choice([Outcome.PASS, Outcome.PASS, Outcome.PASS, Outcome.FAIL, Outcome.INCONCLUSIVE]),
        "gate": lambda: rng.choice([Outcome.PASS, Outcome.PASS, Outcome.FAIL, Outcome.INCONCLUSIVE]),
        "command": lambda: rng.choice(["abort", "promote", "promote-full", "retry", "rollback"]),
        "registry": lambda: rng.random() < 0.5,
        "target": lambda: rng.choice(["ok", "ok", "unreachable", "missing", "never-ready", "frozen", "ignore",
                                      "slow"]),
        "crash": lambda: rng.randint(0, 4),
        "new-candidate": lambda: rng.random() < 0.3,
        "re-pin": lambda: rng.random() < 0.3,
        "steps": lambda: rng.random() < 0.3,
    }[kind]()
    return kind, value


# G3 (mutants 87 336 368): the operator watches only ModelRollouts, so a rollout waiting for an
# effect on the target or registry, or for a judge, is woken only by requeue_after. Every such wait must ask.
def _walk_checks(seed: int, count: int) -> list[str]:
    """The decision each reconcile ends with (whose requeue_after the operator uses) must ask to be woken."""
    rng = random.Random(seed)
    problems: list[str] = []
    for _ in range(count):
        world = World(spec=_random_spec(rng))
        judges = rng.choice([Outcome.PASS, Outcome.FAIL, Outcome.INCONCLUSIVE])
        state: dict[str, Any] = {"judges": judges, "commands": 0}
        world.judge = lambda _request, state=state: [verdict(state["judges"])]
        world.reconcile()
        for _ in range(30):
            world.command = None  # each command is seen once
            apply(world, Checker(world), _random_op(rng), state)
            if world.crash_after is not None or world.restarted:
                continue  # killed: the next start wakes it
            decision = world.decisions[-1]
            status = decision.status
            pause = status.pause
            if status.phase in TERMINAL_PHASES or (status.phase is Phase.PAUSED and pause is not None
                                                    and pause.until is None and decision.requeue_after is None):
                continue
            bound = BACKOFF_MAX
            if pause is not None and pause.until is not None:
                bound = max(bound, pause.until - world.now + timedelta(seconds=1))
            if decision.requeue_after is None or decision.requeue_after > bound:
                problems.append(f"{status.phase} requeue {decision.requeue_after}: {status.message}")
    return problems


def test_every_wait_for_an_effect_or_a_judge_asks_to_be_woken() -> None:
    problems = _walk_checks(seed=1, count=120)
    assert not problems, problems[:3]


def test_staging_asks_to_look_again_soon() -> None:
    world = World()
    world.target.ready_delay = timedelta(minutes=2)
    decision = world.reconcile()
    assert world.status.phase is Phase.PENDING
    assert decision.requeue_after is not None and decision.requeue_after <= timedelta(seconds=10)


def test_a_superseded_rollback_waiting_for_the_unstage_asks_to_look_again() -> None:
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and w.status.current_step == 1)
    world.target.frozen = True  # the unstage is accepted but does not show yet
    world.spec["model"] = {**world.spec["model"], "version": "8"}
    world.generation += 1
    decision = world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK
    for _ in range(3):
        world.advance(timedelta(seconds=1))
        decision = world.reconcile()
        assert world.status.phase is Phase.ROLLING_BACK
        assert decision.requeue_after is not None, world.status.message


def test_abort_then_the_target_frozen_rollback_asks_to_look_again() -> None:
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and w.status.current_step == 3)
    world.target.frozen = True
    world.send(CommandAction.ABORT)
    decision = world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK
    world.advance(timedelta(seconds=1))
    decision = world.reconcile()
    assert decision.requeue_after is not None and decision.requeue_after <= timedelta(seconds=10)


def test_a_target_not_ready_before_staging_asks_to_look_again_soon() -> None:
    world = World()
    world.target.ready = False
    decision = world.reconcile()
    assert world.status.phase is Phase.PENDING and world.status.candidate is not None
    assert decision.requeue_after is not None and decision.requeue_after <= timedelta(seconds=10)


def test_a_promotion_held_for_a_vanished_canary_asks_to_look_again_soon() -> None:
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and w.status.current_step == 1)
    world.target.canary_version, world.target.canary_weight = None, None  # a sync reapplied the target
    world.target.frozen = True
    world.send(CommandAction.PROMOTE, full=True)
    decision = world.reconcile()
    assert world.status.phase is Phase.PROMOTING, world.status.message
    assert "no longer staged" in world.status.message
    assert decision.requeue_after is not None and decision.requeue_after <= timedelta(seconds=10)


# The 1 s confirmation poll (CONFIRM_POLL) of an effect that has not shown yet: without it the wait falls back to the
# RESEND_AFTER (10 s) wake-up, which slows every confirmation, the rollback's too (time to recover, benchmarks/mttr.py).
def _final(world: World) -> Any:
    return world.decisions[-1]


def test_staging_polls_every_second() -> None:
    from controller.engine import CONFIRM_POLL
    world = World()
    world.target.ready_delay = timedelta(minutes=2)
    world.reconcile()
    assert world.status.phase is Phase.PENDING and _final(world).requeue_after == CONFIRM_POLL


def test_a_weight_step_polls_every_second() -> None:
    from controller.engine import CONFIRM_POLL
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and w.status.current_step == 1)
    world.advance(timedelta(minutes=11))
    world.target.frozen = True
    world.reconcile()
    assert world.status.current_step == 2 and _final(world).requeue_after == CONFIRM_POLL, world.status.message


def test_a_rollback_polls_every_second() -> None:
    from controller.engine import CONFIRM_POLL
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and w.status.current_step == 3)
    world.target.frozen = True
    world.send(CommandAction.ABORT)
    world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK and _final(world).requeue_after == CONFIRM_POLL


def test_a_superseded_rollback_waiting_for_its_unstage_polls_every_second() -> None:
    from controller.engine import CONFIRM_POLL
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and w.status.current_step == 1)
    execute = world.execute

    def no_unstage(action: Any) -> Any:  # withdrawn to 0% at once, but the staged revision stays a while
        if action.type is ActionType.UNSTAGE_CANDIDATE:
            world.executed.append(action)
            return None, None, None
        return execute(action)

    world.execute = no_unstage  # type: ignore[method-assign]
    world.spec["model"] = {**world.spec["model"], "version": "8"}
    world.generation += 1
    world.reconcile()
    rollback = world.status.rollback
    assert world.status.phase is Phase.ROLLING_BACK and rollback is not None and rollback.recovered_at is not None
    assert _final(world).requeue_after == CONFIRM_POLL, (world.status.message, _final(world).requeue_after)


# Mutant 65: a pause step at 0% is not judged (nothing of the candidate serves; at 0% its only predictions are the
# gate's golden set, rich in positives, which would fail it). Steps may hold at 0% (0 is a valid step weight).
def test_a_pause_at_zero_percent_is_not_judged() -> None:
    spec = spec_dict(canary={"steps": [{"setWeight": 0}, {"pause": {"duration": "5m"}}, {"setWeight": 10},
                                       {"analysis": {"duration": "2m"}}]})
    requests: list[Any] = []

    def judge(request: Any) -> list:
        requests.append(request)
        return [verdict(Outcome.FAIL)]

    world = World(spec=spec, judge=judge)
    world.run_until(lambda w: w.status.phase is Phase.PAUSED and w.status.current_step == 1)
    for _ in range(6):
        world.advance(timedelta(seconds=30))
        world.reconcile()
    assert world.status.phase is Phase.PAUSED and world.status.current_step == 1, world.status.message
    assert not requests


# Mutant 87: `retry` of a bake paused on a failure (automatic rollback off) or an inconclusive bake runs a full bake
# again from now. No test retries a bake: without _start_bake the retried bake has no analysis and decide raises.
def test_retry_of_a_bake_paused_on_a_failure_bakes_again_from_now() -> None:
    outcomes = {"bake": Outcome.FAIL}
    spec = spec_dict(canary={"steps": [{"setWeight": 10}, {"analysis": {"duration": "1m"}}]},
                     rollback={"automatic": False}, bake={"duration": "10m", "baseline": "3d"})
    world = World(spec=spec, judge=lambda r: [verdict(outcomes["bake"] if str(r.mode) == "bake" else Outcome.PASS)])
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    assert world.status.pause is not None and str(world.status.pause.reason) == "BakeFailed"
    outcomes["bake"] = Outcome.PASS
    world.send(CommandAction.RETRY)
    world.reconcile()
    assert world.status.phase is Phase.BAKING
    analysis = world.status.analysis
    assert analysis is not None and str(analysis.mode) == "bake" and analysis.window_start == world.now
    world.run_until(finished)
    assert world.status.phase is Phase.SUCCEEDED


# Mutant 85: the rollback's traffic record is confirmed in the ledger once traffic is seen back (an ended rollout
# keeps no record pending: status.actions is what `explain` shows of what was done).
def test_an_ended_rollback_leaves_no_pending_record() -> None:
    world = World(judge=lambda _r: [verdict(Outcome.FAIL)])
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK
    pending = [r.id for r in world.status.actions if str(r.state) == "Pending"]
    assert not pending, pending


def _outage() -> Any:
    from controller.verdict import Verdict
    return Verdict("nsfw-rate", Outcome.INCONCLUSIVE, "PrometheusUnreachable: did not answer",
                   {"queries": {}, "problem": "PrometheusUnreachable", "detail": "did not answer"})


# Mutant 128: a measurement outage in a run with no end (the background judging of an indefinite pause step, or the
# watch of a version paused on an inconclusive verdict) is an ordinary inconclusive run; without the `ends_at is not
# None` guard decide raises TypeError (None compared with a datetime) on every reconcile.
def test_an_outage_while_judging_an_indefinite_pause_step_is_an_ordinary_run() -> None:
    answers = iter([[verdict(Outcome.PASS)]] * 3 + [[_outage()]] * 50)
    spec = spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]})
    world = World(spec=spec, judge=lambda _r: next(answers))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED and w.status.analysis is not None
                    and w.status.analysis.runs >= 4)
    assert world.status.phase is Phase.PAUSED and world.status.pause is not None
    assert str(world.status.pause.reason) == "PauseStep"


# Mutant 132: a deletion seen while a rollback (not a restart) runs posts nothing more; without the `restart` test,
# every reconcile until the rollback ends records another "Deleted" history entry (and Kubernetes Event).
def test_a_deletion_during_an_abort_rollback_records_no_repeated_deleted_entries() -> None:
    world = World(spec=spec_dict(rollback={"automatic": True, "revertOnDeletion": True}))
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and w.status.current_step == 3)
    world.target.frozen = True
    world.send(CommandAction.ABORT)
    world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK
    world.deleting = True
    for _ in range(5):
        world.advance(timedelta(seconds=5))
        world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK
    assert [e.event for e in world.status.history].count("Deleted") == 0


# Mutant 323: abort or rollback on an ended RolledBack/Failed rollout is refused out loud (CommandIgnored), not
# swallowed as handled.
def test_abort_on_a_rolled_back_rollout_is_refused_with_a_reason() -> None:
    world = World(judge=lambda _r: [verdict(Outcome.FAIL)])
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK
    command = world.send(CommandAction.ABORT, actor="oncall")
    world.reconcile()
    last = world.status.history[-1]
    assert last.event == "CommandIgnored" and last.command_id == command.id and "nothing to roll back" in last.detail


# Mutant 138: a new candidate named while the target cannot be read and nothing of the old one was staged starts a
# new attempt (without the `target is not None` guard decide raises AttributeError).
def test_a_new_candidate_while_the_target_is_unreadable_before_staging_starts_over() -> None:
    world = World()
    world.target.ready = False  # resolved, but staging waits for the target to be ready
    world.reconcile()
    assert world.status.phase is Phase.PENDING and world.status.candidate is not None
    assert not world.status.actions
    world.target.unreachable = True
    world.spec["model"] = {**world.spec["model"], "version": "8"}
    world.generation += 1
    world.reconcile()
    assert "NewCandidate" in [e.event for e in world.status.history]


# Mutant 141: a first rollout's rollback takes the stable alias off the rejected candidate only while it names it:
# an alias someone pointed at another version meanwhile counts as done (RemoveAlias would not touch it, and the
# rollback would wait for ever).
def test_a_first_rollouts_rollback_with_the_alias_moved_by_hand_ends() -> None:
    world = World(gate_verdicts=[verdict(Outcome.FAIL, "accuracy", "0.90")])
    world.registry.aliases = {}
    world.target.stable_version = None
    world.target.ready = False  # hold it in staging
    world.reconcile()
    world.registry.aliases["production"] = "8"  # someone points @production elsewhere
    world.target.ready = True
    world.run_until(finished, limit=200)
    assert world.status.phase is Phase.ROLLED_BACK, world.status.message
    assert world.registry.aliases == {"production": "8"}


# Mutant 343: a condition message is cut to metav1.Condition's 32768 characters (the API server refuses a longer
# one, and the status write would fail on every reconcile).
def test_a_condition_message_quoting_a_huge_refusal_is_cut_to_the_api_limit() -> None:
    from controller.engine import ActionFailure, AdapterError, AdapterErrorKind
    world = World()
    world.reconcile()
    assert world.status.phase is Phase.GATING or world.status.phase is Phase.PROGRESSING
    huge = "denied: " + "x" * 40000
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and w.status.current_step == 1)
    execute = world.execute

    def refuse(action: Any) -> Any:
        if action.type is ActionType.SET_CANARY_WEIGHT:
            world.executed.append(action)
            return None, None, ActionFailure(action.id, AdapterError(AdapterErrorKind.INVALID, huge))
        return execute(action)

    world.execute = refuse  # type: ignore[method-assign]
    world.advance(timedelta(minutes=11))
    world.reconcile()
    assert all(len(c.message) <= 32768 for c in world.status.conditions)
    # Cut where the adapter's words enter the engine, well within the API's limit (review s40obs).
    assert any("characters cut" in c.message for c in world.status.conditions)


# Mutant 129: the watch of a version paused on an inconclusive analysis judges only while the candidate has traffic.
def test_a_watched_pause_whose_canary_vanished_is_not_judged() -> None:
    outcomes = {"now": Outcome.INCONCLUSIVE}
    requests: list[Any] = []

    def judge(request: Any) -> list:
        requests.append(request)
        return [verdict(outcomes["now"])]

    world = World(judge=judge)
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    assert str(world.status.pause.reason) == "AnalysisInconclusive"
    world.target.canary_version, world.target.canary_weight = None, None  # a sync reapplied the target
    outcomes["now"] = Outcome.FAIL
    before = len(requests)
    for _ in range(6):
        world.advance(timedelta(seconds=30))
        world.reconcile()
    assert world.status.phase is Phase.PAUSED and len(requests) == before


# Mutant 167: a rollback making way for a new candidate on a target that was deleted meanwhile (NOT_FOUND) has nothing
# to unstage: the new attempt starts (it then waits for the target).
def test_a_superseded_rollback_on_a_deleted_target_starts_the_new_attempt() -> None:
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and w.status.current_step == 1)
    world.target.exists = False
    world.target.canary_version, world.target.canary_weight, world.target.canary_ready_at = None, None, None
    world.spec["model"] = {**world.spec["model"], "version": "8"}
    world.generation += 1
    for _ in range(3):
        world.reconcile()
        world.advance(timedelta(seconds=5))
    assert "RolledBackForNewCandidate" in [e.event for e in world.status.history], world.status.message
    assert world.status.phase is Phase.PENDING


# Mutant 187: a promotion that missed progressDeadline with automatic rollback off pauses with resume_phase Promoting,
# and `retry` resumes the promotion itself (not the steps, which would complete again and start a second promotion).
def test_retry_after_a_promotion_deadline_resumes_the_promotion() -> None:
    spec = spec_dict(rollback={"automatic": False}, progressDeadline="5m",
                     canary={"steps": [{"setWeight": 10}, {"analysis": {"duration": "1m"}}]})
    world = World(spec=spec)
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and w.status.current_step == 1)
    world.target.ignore_weights = True  # the promotion is accepted but never takes effect
    world.run_until(lambda w: w.status.phase is Phase.PAUSED, step=timedelta(seconds=30))
    pause = world.status.pause
    assert pause is not None and str(pause.reason) == "ProgressDeadlineExceeded"
    assert pause.resume_phase is Phase.PROMOTING
    world.target.ignore_weights = False
    mark = len(world.status.history)
    world.send(CommandAction.RETRY)
    world.reconcile()
    events = [e.event for e in world.status.history[mark:]]
    assert "StepsCompleted" not in events and events.count("PromotionStarted") == 0, events


# Mutant 236: a first rollout's rollback (no stable version: the alias is taken off the rejected candidate) waits
# while the registry is away (without the guard decide raises AttributeError on every reconcile).
def test_a_first_rollouts_rollback_waits_for_the_registry() -> None:
    world = World(gate_verdicts=[verdict(Outcome.FAIL, "accuracy", "0.90")])
    world.registry.aliases = {}
    world.target.stable_version = None
    execute = world.execute

    def registry_goes_with_the_gate(action: Any) -> Any:
        if action.type is ActionType.RUN_GATE:
            world.registry.down = True  # away from the failing verdict on
        return execute(action)

    world.execute = registry_goes_with_the_gate  # type: ignore[method-assign]
    world.reconcile()
    for _ in range(3):
        world.advance(timedelta(seconds=5))
        world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK, world.status.message
    world.registry.down = False
    world.run_until(finished, limit=100)
    assert world.status.phase is Phase.ROLLED_BACK


# Mutant 224: bake removed from the spec while baking ends the rollout Succeeded (without the guard decide raises).
def test_bake_removed_while_baking_succeeds() -> None:
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"analysis": {"duration": "1m"}}]}))
    world.run_until(lambda w: w.status.phase is Phase.BAKING)
    world.spec = {**world.spec, "bake": None}
    world.spec.pop("bake")
    world.generation += 1
    world.reconcile()
    assert world.status.phase is Phase.SUCCEEDED


# Mutant 354: a status an operator before source redaction wrote is redacted at the next decision, also when only the
# candidate's source carries credentials (the stable one is clean).
def test_a_legacy_status_with_credentials_only_in_the_candidate_source_is_redacted() -> None:
    import dataclasses
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING)
    candidate = world.status.candidate
    assert candidate is not None and world.status.stable is not None
    leaked = dataclasses.replace(candidate, source="https://user:s3cret@models.example.com/nsfw/7?token=abc")
    world.status = dataclasses.replace(world.status, candidate=leaked)
    world.advance(timedelta(seconds=1))
    world.reconcile()
    source = world.status.candidate.source or ""
    assert "s3cret" not in source and "token=abc" not in source, source


def test_an_ended_bake_rollback_leaves_no_pending_record() -> None:
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"analysis": {"duration": "1m"}}]}),
                   judge=lambda r: [verdict(Outcome.FAIL if str(r.mode) == "bake" else Outcome.PASS)])
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK and world.status.rollback.after_promotion
    pending = [r.id for r in world.status.actions if str(r.state) == "Pending"]
    assert not pending, pending


# Mutant 133: a missed deadline's rollback evidence names the step and weight it was at (it goes into the rejection
# tag's evidence in the registry).
def test_a_weight_deadline_rollback_keeps_the_step_and_weight_in_its_evidence() -> None:
    world = World(spec=spec_dict(progressDeadline="5m"))
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and w.status.current_step == 1)
    world.target.frozen = True
    world.run_until(lambda w: w.status.phase is not Phase.PROGRESSING, limit=200)
    rollback = world.status.rollback
    assert rollback is not None and str(rollback.cause) == "ProgressDeadlineExceeded"
    assert rollback.evidence.get("step") == 2 and rollback.evidence.get("weight") == 10, rollback.evidence


# Mutant 271: a pending action that shows no effect (and no error) is handed out again after RESEND_AFTER (10 s), not
# at the error backoff's first 2 s.
def test_a_pending_weight_without_errors_is_resent_after_ten_seconds() -> None:
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and w.status.current_step == 1)
    world.target.frozen = True
    world.advance(timedelta(minutes=11))
    world.reconcile()
    assert world.status.current_step == 2
    sent = [a for a in world.executed if a.id == "1:step-2:weight-10"]
    assert len(sent) == 1
    for _ in range(3):
        world.advance(timedelta(seconds=3))
        world.reconcile()
    assert len([a for a in world.executed if a.id == "1:step-2:weight-10"]) == 1
    world.advance(timedelta(seconds=2))
    world.reconcile()
    assert len([a for a in world.executed if a.id == "1:step-2:weight-10"]) == 2


# Mutant 253: a target that never became ready before anything was staged fails with nothing to undo: no rollback.
def test_a_target_never_ready_before_staging_fails_without_a_rollback() -> None:
    world = World(spec=spec_dict(progressDeadline="5m"))
    world.target.ready = False
    world.run_until(finished, limit=100)
    assert world.status.phase is Phase.FAILED and world.status.rollback is None
    assert "RollbackStarted" not in [e.event for e in world.status.history]
