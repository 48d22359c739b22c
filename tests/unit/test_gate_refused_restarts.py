"""A gate that answers, whose decision the API server refuses to store, is not interrupted by a restart.

Before, each operator restart during a long StatusRejected counted one more gate interruption (the gate was handed
out, requestedAt set, resend pending): the gate ran again, passed, was refused again, and the third restart ended it
GateInconclusive "out of memory?" (rolling back a candidate that passed, with onInconclusive: rollback). And each
restart's write (the gate handed out again) replaced the Ready condition, so the next refusal was said again: one more
StatusRejected entry and Warning Event per restart, not once per generation.

The engine decides as the stepper does (write-ahead, then the gate's answer); the decision the gate leads to is the
one refused, and refused_status (the operator's) is what is stored in its place.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_engine_support import World, spec_dict

from controller.api import ModelRolloutStatus, Phase
from controller.engine import RunGate, decide
from controller.engine.decide import GATE_INTERRUPTIONS_LIMIT
from controller.operator.runtime import refused_status

PROBLEM = "invalid (HTTP 422)"


def store(world: World, status: ModelRolloutStatus) -> None:
    world.status = ModelRolloutStatus.from_dict(status.to_dict())  # as JSON, as the API server holds it


def gate_handed_out(world: World) -> RunGate:
    """Decide and act (as the stepper does) until a decision hands out the gate; its status is stored."""
    done: tuple[str, ...] = ()
    for _ in range(50):
        decision = decide(world.parsed_spec, world.status, world.observe(done=done), world.now)
        world.restarted = False
        store(world, decision.status)
        gates = [action for action in decision.actions if isinstance(action, RunGate)]
        if gates:
            return gates[0]
        for action in decision.actions:
            world.execute(action)
        done = tuple(action.id for action in decision.actions)
        world.advance(timedelta(seconds=30))
    raise AssertionError(f"no gate handed out: {world.status.message}")


def answered_and_refused(world: World, gate: RunGate, size: int) -> None:
    """The gate runs and passes; the API server refuses the decision (a policy refusing phase Progressing), and
    the stored status is kept, saying so."""
    answer, _analysis, _failure = world.execute(gate)
    decided = decide(world.parsed_spec, world.status, world.observe(gate=answer), world.now)
    assert decided.status.phase is Phase.PROGRESSING
    store(world, ModelRolloutStatus.from_dict(refused_status(
        world.status.to_dict(), f"{PROBLEM}; it was {size:,} bytes", world.generation, world.now)))


def restart(world: World, size: int) -> None:
    world.advance(timedelta(minutes=2))
    world.restarted = True  # the gate is handed out again (its status written ahead), runs, and is refused again
    answered_and_refused(world, gate_handed_out(world), size)


@pytest.mark.parametrize("on_inconclusive", ["pause", "rollback"])
def test_restarts_while_the_gates_decision_is_refused_are_no_interruptions_and_say_it_once(
        on_inconclusive: str) -> None:
    world = World(spec=spec_dict(analysis={**spec_dict()["analysis"], "onInconclusive": on_inconclusive}))
    answered_and_refused(world, gate_handed_out(world), 10_210)
    for number in range(GATE_INTERRUPTIONS_LIMIT + 2):
        restart(world, 10_596 + 386 * number)  # the decided status differs by a few bytes each time
        gate = world.status.gate
        assert world.status.phase is Phase.GATING and gate is not None and gate.outcome is None
        assert gate.interrupted == 0, f"restart {number + 1} counted as an interruption: {world.status.message}"
        ready = world.status.condition("Ready")
        assert ready is not None and ready.reason == "StatusRejected" and PROBLEM in ready.message
    said = [entry.detail for entry in world.status.history if entry.event == "StatusRejected"]
    assert len(said) == 1, said
    assert not any("Inconclusive" in entry.event for entry in world.status.history)


def test_a_gate_that_kills_the_operator_after_a_refusal_still_ends_inconclusive() -> None:
    """What the count is for: once a restart's write-ahead has replaced Ready, a restart mid-gate counts."""
    world = World()
    answered_and_refused(world, gate_handed_out(world), 10_000)
    for _ in range(GATE_INTERRUPTIONS_LIMIT):
        world.advance(timedelta(minutes=2))
        world.restarted = True
        gate_handed_out(world)  # stored, then the operator is killed while the gate runs
    world.restarted = True
    decision = decide(world.parsed_spec, world.status, world.observe(), world.now)
    gate = decision.status.gate
    assert gate is not None and gate.interrupted == GATE_INTERRUPTIONS_LIMIT
    assert "interrupted 3 times in a row" in decision.status.message


def test_a_refusal_for_a_new_generation_is_said_again() -> None:
    world = World()
    answered_and_refused(world, gate_handed_out(world), 10_000)
    world.generation += 1  # a spec edit that does not help
    restart(world, 10_400)
    said = [entry.detail for entry in world.status.history if entry.event == "StatusRejected"]
    assert len(said) == 2 and "generation 2 " in said[1], said
