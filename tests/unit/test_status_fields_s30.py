"""What the on-call CLI needs of the engine's state is in status fields, not in its sentences (s30): the attempt each
history entry belongs to, the promotion's hold (status.promotion.hold) with the advice apart, and a rollback whose
candidate served as stable. A status an older operator wrote (none of them) is read too: the CLI then says less,
and the engine fills the fields on its next reconcile.

The statuses come from the real engine (the engine tests' World)."""

from __future__ import annotations

import dataclasses
import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from test_cli_commands import engine_rollout
from test_engine_support import World, spec_dict

from controller.api.commands import CommandAction
from controller.api.spec import SpecError
from controller.api.status import HISTORY_LIMIT, ConditionType, HoldReason, ModelRolloutStatus, Phase
from controller.cli.oncall import OnCall
from controller.engine import reject_spec

ADVICE = "point @production back at version 6 to promote candidate 7, or roll back"
HELD_SINCE = "2026-01-05T09:21:00Z"
DEADLINE = "2026-01-05T09:51:00Z"  # progressDeadline (30m) from the promotion's start


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture()
def oncall(offline_kubeconfig: Path) -> OnCall:
    return OnCall(str(offline_kubeconfig), None, out=io.StringIO())


def held(**spec: Any) -> World:
    """Promoting, held: @production moved to 5 by hand while the rollout paused at 50% (stable 6, candidate 7)."""
    world = World(spec=spec_dict(**spec)) if spec else World()
    world.registry.versions["5"] = {}
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.registry.aliases["production"] = "5"
    world.send(CommandAction.PROMOTE, command_id="first")
    for _ in range(3):
        world.advance(timedelta(minutes=1))
        world.reconcile()
    assert world.status.phase is Phase.PROMOTING and world.status.message.startswith("Holding the promotion: ")
    return world


def older(status: dict[str, Any]) -> dict[str, Any]:
    """`status` as an operator from before these fields wrote it."""
    hold = status.get("promotion", {}).pop("hold", None)
    assert hold is not None or status.get("phase") != "Promoting" or "Holding" not in status["message"]
    status.get("rollback", {}).pop("candidateServedAsStable", None)
    for entry in status["history"]:
        entry.pop("attempt", None)
        entry.pop("advice", None)
    return status


# --- the engine records the hold -------------------------------------------------------------------------------


def test_a_hold_on_a_hand_moved_alias_is_recorded_with_its_deadline_and_advice() -> None:
    world = held()
    promotion = world.status.promotion
    assert promotion is not None and promotion.hold is not None
    hold = promotion.hold
    assert hold.reason is HoldReason.STABLE_ALIAS_MOVED and hold.advice == ADVICE
    assert hold.since is not None and world.status.to_dict()["promotion"]["hold"] == {
        "reason": "StableAliasMoved", "deadline": DEADLINE, "since": HELD_SINCE, "rollsBack": True,
        "rejectCandidate": False, "advice": ADVICE}
    # The Event keeps telling the advice; the entry carries it apart too.
    entry = next(e for e in reversed(world.status.history) if e.event == "StableMismatch")
    assert entry.advice == ADVICE and entry.detail.endswith(f": {ADVICE}")


def test_a_hold_keeps_its_start_when_the_alias_moves_again_and_is_cleared_when_it_ends() -> None:
    world = held()
    world.advance(timedelta(minutes=1))
    world.registry.versions["4"] = {}
    world.registry.aliases["production"] = "4"
    world.reconcile()
    hold = world.status.promotion.hold if world.status.promotion else None
    assert hold is not None and hold.advice == ADVICE and world.status.to_dict()["promotion"]["hold"]["since"] == \
        HELD_SINCE
    ready = world.status.condition(ConditionType.READY)
    # `kubectl get`'s Reason column (Ready's reason) tells a held promotion from a moving one (review s32crd).
    assert ready is not None and ready.reason == "StableAliasMoved", ready
    world.registry.aliases["production"] = "6"  # put back: the promotion goes on
    world.reconcile()
    assert world.status.promotion is not None and world.status.promotion.hold is None
    ready = world.status.condition(ConditionType.READY)
    assert ready is not None and ready.reason != "StableAliasMoved", ready


def test_a_hold_past_its_deadline_leaves_no_hold_behind() -> None:
    world = held()
    world.run_until(lambda w: w.status.phase is not Phase.PROMOTING)
    assert world.status.phase in (Phase.ROLLING_BACK, Phase.ROLLED_BACK)
    assert world.status.promotion is not None and world.status.promotion.hold is None
    assert "hold" not in world.status.to_dict()["promotion"]


def test_a_hold_with_automatic_rollback_off_says_it_pauses_at_the_deadline(oncall: OnCall) -> None:
    world = held(rollback={"automatic": False})
    hold = world.status.promotion.hold if world.status.promotion else None
    assert hold is not None and hold.rolls_back is False
    assert ("The promotion is held since 2026-01-05T09:21:00Z: unless the hold ends first, it is paused for a human "
            f"(spec.rollback.automatic is false) at progressDeadline ({DEADLINE}).") in oncall.explain(
                engine_rollout(world))
    world.run_until(lambda w: w.status.phase is not Phase.PROMOTING)
    assert world.status.phase is Phase.PAUSED  # as the hold said


def test_a_target_that_stops_answering_holds_the_promotion_and_the_hold_says_so() -> None:
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.target.unreachable = True
    world.send(CommandAction.PROMOTE, command_id="first")
    world.advance(timedelta(seconds=30))
    world.reconcile()
    assert world.status.phase is Phase.PROMOTING and world.status.message.startswith("Holding the promotion until")
    hold = world.status.promotion.hold if world.status.promotion else None
    assert hold is not None and hold.reason is HoldReason.TARGET_UNAVAILABLE and hold.advice is None
    # Never sent to the target: rolled back at the deadline, not tagged rejected (as _deadline_failure decides).
    assert hold.reject_candidate is False and hold.rolls_back is True
    world.target.unreachable = False
    world.reconcile()
    assert world.status.promotion is not None and world.status.promotion.hold is None


def test_a_held_promotion_whose_spec_is_refused_tells_no_deadline(oncall: OnCall) -> None:
    world = held()
    world.status = reject_spec(world.status, SpecError("spec.target", "not allowed here"), 2, world.now).status
    assert world.status.promotion is not None and world.status.promotion.hold is None
    world.generation = 2
    assert "unless the hold ends" not in oncall.explain(engine_rollout(world))


# --- an operator upgraded mid-hold fills the fields ------------------------------------------------------------


def test_an_older_operators_hold_is_read_saying_less_and_filled_on_the_next_reconcile(oncall: OnCall) -> None:
    world = held()
    stored = engine_rollout(world)
    older(stored["status"])
    text = oncall.explain(stored)
    # No hold recorded: no deadline told (never a made-up one), and the hold's advice not cut from an entry.
    assert "The promotion is held" not in text and "unless the hold ends" not in text
    world.status = ModelRolloutStatus.from_dict(stored["status"])  # the newer operator reads it
    world.advance(timedelta(seconds=5))
    world.reconcile()
    hold = world.status.promotion.hold if world.status.promotion else None
    # Filled: since when is not known (it began before), the rest is.
    assert hold is not None and hold.since is None and hold.advice == ADVICE
    assert world.status.to_dict()["promotion"]["hold"]["deadline"] == DEADLINE
    entry = next(e for e in reversed(world.status.history) if e.event == "StableMismatch")
    assert entry.advice == ADVICE  # the same entry (not said again), now with its advice apart
    assert [e.event for e in world.status.history].count("StableMismatch") == 1
    assert ("The promotion is held: unless the hold ends first, it is rolled back untagged (not tagged rejected) at "
            f"progressDeadline ({DEADLINE}).") in oncall.explain(engine_rollout(world))


def test_an_older_operators_held_promotion_is_not_coloured_as_paused(offline_kubeconfig: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    out = Terminal()
    oncall = OnCall(str(offline_kubeconfig), None, out=out)
    stored = engine_rollout(held())
    older(stored["status"])
    oncall.print_rollout(stored)
    assert "Phase:      \033[32mPromoting\033[0m" in out.getvalue()


def test_an_ended_hold_from_an_older_operator_is_told_without_its_advice(oncall: OnCall) -> None:
    world = held()
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK)
    stored = engine_rollout(world)
    older(stored["status"])
    text = oncall.explain(stored)
    assert ADVICE not in text.split("Last event:")[0]
    assert "StableMismatch at" in text and "recorded by an older operator" in text


# --- the attempt each entry belongs to -------------------------------------------------------------------------


def rolled_back_then_retried() -> World:
    """Rolled back (the hold past its deadline), then a retry whose new attempt cannot resolve: the registry is away."""
    world = held()
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK)
    world.registry.down = True
    world.send(CommandAction.RETRY, command_id="again")
    world.advance(timedelta(seconds=30))
    world.reconcile()
    assert world.status.phase is Phase.PENDING and world.status.candidate is None
    return world


def test_a_retry_begins_a_new_attempt_in_the_history() -> None:
    world = rolled_back_then_retried()
    retry = next(e for e in world.status.history if e.command_id == "again")
    before = world.status.history[:world.status.history.index(retry)]
    assert retry.attempt == 2 and {e.attempt for e in before} == {1}
    assert {e.attempt for e in world.status.history[world.status.history.index(retry):]} == {2}


def test_explain_tells_only_the_retried_attempts_warnings_however_far_the_history_was_trimmed(
        oncall: OnCall) -> None:
    world = rolled_back_then_retried()
    assert "Warnings in this attempt:" not in oncall.explain(engine_rollout(world))
    # Many entries of the new attempt (commands refused while it resolves): the history keeps the newest
    # HISTORY_LIMIT, the retry that began the attempt no longer among them.
    for number in range(HISTORY_LIMIT + 5):
        world.advance(timedelta(seconds=10))
        world.send(CommandAction.PROMOTE, command_id=f"p{number}")
        world.reconcile(rounds=1)
    stored = engine_rollout(world)
    history = stored["status"]["history"]
    assert len(history) == HISTORY_LIMIT and {e["attempt"] for e in history} == {2}
    assert not any(e.get("commandId") == "again" for e in history)
    text = oncall.explain(stored)
    assert "Warnings in this attempt:" in text and "CommandIgnored at" in text
    assert "StableMismatch" not in text


def test_an_older_operators_unresolved_retry_tells_no_warnings_of_the_attempt_before(oncall: OnCall) -> None:
    world = rolled_back_then_retried()
    world.registry.down = False
    world.target.unreachable = True  # the new attempt waits to read the target: Pending, no candidate
    world.advance(timedelta(minutes=1))
    world.reconcile()
    stored = engine_rollout(world)
    older(stored["status"])
    assert "StableMismatch at" not in oncall.explain(stored)


def test_the_engine_numbers_an_older_operators_entries_of_the_resolved_attempt() -> None:
    world = held()
    stored = older(world.status.to_dict())
    world.status = ModelRolloutStatus.from_dict(stored)
    world.advance(timedelta(seconds=5))
    world.reconcile()
    history = world.status.history
    resolved = max(i for i, e in enumerate(history) if e.event == "Resolved")
    assert all(e.attempt == 1 for e in history[resolved:]) and all(e.attempt is None for e in history[:resolved])


# --- a rollback whose candidate served as stable ---------------------------------------------------------------


def hand_promoted_abort() -> World:
    """Aborted mid-canary after the candidate was rolled out by hand: it serves as stable, not back yet."""
    world = World(spec=spec_dict(bake=None))
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and w.status.current_step == 1)
    world.target.stable_version, world.target.canary_version, world.target.canary_weight = "7", None, None
    world.target.frozen = True
    world.send(CommandAction.ABORT, command_id="abort-1")
    for _ in range(3):
        world.advance(timedelta(seconds=30))
        world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK
    return world


def test_a_rollback_records_that_the_candidate_served_as_stable_and_explain_says_all_of_it(oncall: OnCall) -> None:
    world = hand_promoted_abort()
    rollback = world.status.rollback
    assert rollback is not None and rollback.candidate_served_as_stable is True and not rollback.after_promotion
    world.target.unreachable = True  # unreadable for a while: what was seen still holds
    world.advance(timedelta(seconds=30))
    world.reconcile()
    assert world.status.rollback is not None and world.status.rollback.candidate_served_as_stable is True
    stored = engine_rollout(world)
    stored["status"]["canaryWeight"] = 0  # no other sign of it (the weight read before the hand promotion)
    assert "the candidate may still serve all of it." in oncall.explain(stored)
    # An older operator's status: the CLI says less (some), and the next reconcile records it.
    older(stored["status"])
    assert "the candidate may still serve some of it." in oncall.explain(stored)
    world.status = ModelRolloutStatus.from_dict(stored["status"])
    world.target.unreachable = False
    world.advance(timedelta(seconds=30))
    world.reconcile()
    assert world.status.rollback is not None and world.status.rollback.candidate_served_as_stable is True


# --- review s30r2a: a hold says what its deadline does; every attempt has its own number -------------------------


def holds_only_while_the_message_says_so(world: World) -> None:
    """Checked on every decision: a hold is recorded exactly while the message says the promotion is held."""
    def check(_before: ModelRolloutStatus, _observations: Any, decision: Any) -> None:
        status = decision.status
        holding = status.phase is Phase.PROMOTING and status.message.startswith("Holding the promotion")
        assert holding == (status.promotion is not None and status.promotion.hold is not None), status.message
    world.on_decision = check


def promote_into(case: str, automatic: bool = True) -> World:
    """Paused at 50%, then promoted into a hold of the kind `case` names."""
    world = World(spec=spec_dict(rollback={"automatic": automatic}))
    holds_only_while_the_message_says_so(world)
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.target.frozen = case in ("target_sent", "registry_sent_canary_gone")
    world.target.unreachable = case == "target_unsent"
    world.registry.down = case.startswith("registry_unsent")
    world.target.never_ready = case in ("not_ready", "registry_unsent_canary_not_ready")
    world.registry.slow_promotion = case in ("alias_step_moved", "alias_step_registry_down")
    if case == "alias_moved":
        world.registry.versions["5"] = {}
        world.registry.aliases["production"] = "5"
    if case == "not_staged":
        world.target.canary_version, world.target.canary_weight = None, None
    world.send(CommandAction.PROMOTE, command_id="p")
    world.advance(timedelta(seconds=30))
    world.reconcile()
    if case == "target_sent":  # sent, not taken, then the target stops answering
        world.target.unreachable = True
    if case == "registry_sent_canary_gone":  # sent, not taken; the staged candidate goes (a sync), the registry too
        world.target.frozen = False
        world.target.canary_version, world.target.canary_weight = None, None
        world.registry.down = True
    if case == "alias_step_moved":  # all traffic on the candidate; @production moved by hand before the alias step
        world.registry.versions["5"] = {}
        world.registry.aliases["production"] = "5"
    if case == "alias_step_registry_down":  # all traffic on the candidate; the registry goes before the alias moves
        world.registry.down = True
    world.advance(timedelta(seconds=30))
    world.reconcile()
    return world


HOLD_CASES = ["target_unsent", "target_sent", "registry_unsent", "alias_moved", "not_staged", "not_ready",
              "alias_step_moved", "registry_unsent_canary_not_ready", "registry_sent_canary_gone",
              "alias_step_registry_down"]


@pytest.mark.parametrize("automatic", [True, False])
@pytest.mark.parametrize("case", HOLD_CASES)
def test_every_hold_tells_the_outcome_its_deadline_has(case: str, automatic: bool) -> None:
    world = promote_into(case, automatic)
    hold = world.status.promotion.hold if world.status.promotion else None
    assert hold is not None, world.status.message
    world.now = hold.deadline + timedelta(seconds=1)
    world.reconcile()
    rollback = world.status.rollback
    if automatic:
        assert hold.rolls_back and world.status.phase in (Phase.ROLLING_BACK, Phase.ROLLED_BACK)
        assert rollback is not None and rollback.reject_candidate is hold.reject_candidate, rollback.reason
    else:
        assert not hold.rolls_back and world.status.phase is Phase.PAUSED


@pytest.mark.parametrize(("case", "tagged"), [
    # The registry away before the promotion was sent, the staged candidate not ready: its own failing, tagged.
    ("registry_unsent_canary_not_ready", True),
    # Sent, not taken, the staged candidate gone from the target: nothing judged it, untagged.
    ("registry_sent_canary_gone", False),
])
def test_a_registry_hold_tells_the_tagging_of_the_candidate_gone_from_the_target(case: str, tagged: bool,
                                                                                  oncall: OnCall) -> None:
    world = promote_into(case)
    hold = world.status.promotion.hold if world.status.promotion else None
    assert hold is not None and hold.reason is HoldReason.REGISTRY_UNAVAILABLE
    assert hold.reject_candidate is tagged
    assert ("rolled back untagged" in oncall.explain(engine_rollout(world))) is not tagged


def test_the_alias_step_holds_while_the_registry_is_down(oncall: OnCall) -> None:
    world = promote_into("alias_step_registry_down")
    promotion = world.status.promotion
    assert promotion is not None and promotion.target_confirmed_at is not None  # all traffic on the candidate
    hold = promotion.hold
    assert hold is not None and hold.reason is HoldReason.REGISTRY_UNAVAILABLE and hold.reject_candidate is False
    # From the alias step's start (the target's confirmation), as the deadline counts.
    assert hold.deadline == promotion.target_confirmed_at + timedelta(minutes=30)
    assert world.status.message.startswith("Holding the promotion: @production moves to version 7 once the registry "
                                           "answers")
    deadline = f"{hold.deadline:%Y-%m-%dT%H:%M:%SZ}"
    assert f"it is rolled back untagged (not tagged rejected) at progressDeadline ({deadline})" in oncall.explain(
        engine_rollout(world))
    world.send(CommandAction.PROMOTE, command_id="again")  # refused: the hold says what ends it
    world.advance(timedelta(seconds=30))
    world.reconcile()
    assert "the promotion is held: @production moves to version 7 once the registry answers" in \
        world.status.history[-1].detail
    world.registry.down = world.registry.slow_promotion = False  # back: the alias moves and the hold ends
    world.advance(timedelta(seconds=30))
    world.reconcile()
    assert world.status.phase is not Phase.PROMOTING or world.status.promotion.hold is None
    assert "AliasMoved" in [e.event for e in world.status.history]


def test_last_event_tells_an_ended_hold_without_its_advice(oncall: OnCall) -> None:
    world = World()
    world.registry.versions["5"] = {}
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.registry.aliases["production"] = "5"
    world.target.frozen = True  # the promotion stays in its target step: StableMismatch stays the last entry
    world.send(CommandAction.PROMOTE, command_id="p")
    world.advance(timedelta(seconds=30))
    world.reconcile()
    assert ADVICE in oncall.explain(engine_rollout(world)).split("Last event:")[1]  # held: the way out is told
    world.registry.aliases["production"] = "6"  # the human followed the advice: the hold ends
    world.advance(timedelta(seconds=30))
    world.reconcile()
    assert world.status.promotion is not None and world.status.promotion.hold is None
    assert world.status.history[-1].event == "StableMismatch"
    last = oncall.explain(engine_rollout(world)).split("Last event:")[1]
    assert ADVICE not in last and "(the promotion was held; that hold has ended)" in last


def failed_unresolved() -> World:
    """The spec pins version 9, which the registry does not have: Failed before the candidate was resolved."""
    world = World(spec=spec_dict(model={"name": "nsfw-classifier", "version": "9", "stableAlias": "production"}))
    world.run_until(lambda w: w.status.phase is Phase.FAILED)
    assert world.status.candidate is None and world.status.history[-1].attempt == 1
    return world


@pytest.mark.parametrize("how", ["retry", "new_version"])
def test_an_attempt_failed_before_resolving_keeps_its_number_and_its_warnings(how: str, oncall: OnCall) -> None:
    world = failed_unresolved()
    if how == "retry":
        world.registry.versions["9"] = {}
        world.send(CommandAction.RETRY, command_id="again")
    else:
        world.spec = spec_dict(model={"name": "nsfw-classifier", "version": "7", "stableAlias": "production"})
        world.generation = 2
    world.advance(timedelta(seconds=30))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    numbered = [(e.attempt, e.event) for e in world.status.history]
    failed = numbered.index((1, "Failed"))
    begins = (2, "CommandApplied") if how == "retry" else (1, "SpecChanged")  # the spec change ends the failed one
    assert numbered[failed + 1] == begins and {n for n, _ in numbered[failed + 2:]} == {2}
    resolved = next(e for e in world.status.history if e.event == "Resolved")
    assert world.status.attempt == 2 and resolved.detail.startswith("attempt 2: ")  # one numbering, entries and ids
    assert all(record.id.startswith("2:") for record in world.status.actions)
    text = oncall.explain(engine_rollout(world))
    assert "does not exist in the registry" not in text


def test_an_unresolved_failure_and_retry_recorded_by_an_older_operator_are_read_sanely(oncall: OnCall) -> None:
    world = failed_unresolved()
    world.status = ModelRolloutStatus.from_dict(older(world.status.to_dict()))
    world.registry.versions["9"] = {}
    world.send(CommandAction.RETRY, command_id="again")
    world.advance(timedelta(seconds=30))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    history = world.status.history
    # Its entries unnumbered, the older attempt cannot be told by number: the new one starts at the next.
    assert history[0].event == "Failed" and history[0].attempt is None
    assert {e.attempt for e in history[1:]} == {1} and world.status.attempt == 1
    assert "does not exist in the registry" not in oncall.explain(engine_rollout(world))


def test_a_status_reset_begins_the_new_attempt_after_an_unresolved_failure() -> None:
    world = failed_unresolved()
    world.status = dataclasses.replace(world.status, phase=Phase.PROGRESSING)  # edited by hand: no candidate
    world.registry.versions["9"] = {}
    world.advance(timedelta(seconds=30))
    world.reconcile()
    numbered = [(e.attempt, e.event) for e in world.status.history]
    reset = numbered.index((2, "StatusReset"))
    assert (1, "Failed") in numbered[:reset] and numbered[reset + 1] == (2, "Resolved")
