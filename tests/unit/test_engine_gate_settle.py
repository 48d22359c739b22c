"""The first traffic step after the golden gate waits until the gate's own predictions are scraped.

The gate's requests pass through the serving revision's logger agent, so the exporter counts them like live ones
(a golden set rich in positives); Prometheus shows a new series' count only a scrape after its first sample. A
window opened before then would judge the gate's predictions as the canary's live traffic.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest

from controller.api import CommandAction
from controller.api.status import ActionState, Phase
from controller.engine import ActionFailure, AdapterError, AdapterErrorKind, Observations, RunAnalysis, SetCanaryWeight
from controller.engine.decide import GATE_SETTLE_MARGIN, gate_predictions_scraped_by
from controller.verdict import Outcome
from tests.unit.test_engine_support import T0, World, spec_dict, verdict

SCRAPE = timedelta(seconds=30)


@dataclass
class ScrapedWorld(World):
    """The fake world, observed as the operator does: with its Prometheus scrape interval."""

    scrape_interval: timedelta | None = SCRAPE

    def observe(self, *args: Any, **kwargs: Any) -> Observations:
        return dataclasses.replace(super().observe(*args, **kwargs), scrape_interval=self.scrape_interval)


def weights_at(world: ScrapedWorld, log: list[tuple[datetime, int]]) -> None:
    """Records the time of each weight the world executes (World.execute wrapped)."""
    execute = world.execute

    def timed(action: Any) -> Any:
        if isinstance(action, SetCanaryWeight) and action.weight > 0:
            log.append((world.now, action.weight))
        return execute(action)

    world.execute = timed  # type: ignore[method-assign]


def gate_completed(world: World) -> datetime:
    gate = world.status.gate
    assert gate is not None and gate.completed_at is not None
    return gate.completed_at


def test_first_weight_waits_for_the_gates_predictions_to_be_scraped() -> None:
    world = ScrapedWorld()
    sent: list[tuple[datetime, int]] = []
    weights_at(world, sent)
    decision = world.reconcile()  # staged, gated and passed at T0
    assert world.status.gate is not None and world.status.gate.outcome is Outcome.PASS
    settled = T0 + 2 * SCRAPE + GATE_SETTLE_MARGIN
    assert gate_completed(world) == T0 and gate_predictions_scraped_by(T0, SCRAPE) == settled
    assert sent == [] and world.status.phase is Phase.PROGRESSING and world.status.current_step == 0
    assert world.status.message.startswith("Holding step 1/6 until 2026-01-05T09:01:05Z: the gate's own predictions "
                                           "must be scraped before live traffic is judged")
    assert decision.requeue_after == settled - T0  # woken when the hold ends, not polled
    # Nothing is pending meanwhile: the step's progressDeadline has not started.
    assert not any(r.id.endswith("weight-1") for r in world.status.actions)
    world.advance(settled - T0 - timedelta(seconds=1))
    world.reconcile()
    assert sent == [] and world.status.analysis is None
    world.advance(timedelta(seconds=1))
    world.reconcile()
    assert sent == [(settled, 1)]
    record = next(r for r in world.status.actions if r.id.endswith("weight-1"))
    assert record.issued_at == settled and record.state is ActionState.CONFIRMED
    assert world.status.current_step == 1  # the weight showed: the analysis step started


@pytest.mark.parametrize("scrape", [timedelta(seconds=1), timedelta(seconds=15), timedelta(minutes=1)])
def test_the_hold_follows_the_scrape_interval_observed(scrape: timedelta) -> None:
    world = ScrapedWorld(scrape_interval=scrape)
    sent: list[tuple[datetime, int]] = []
    weights_at(world, sent)
    world.run_until(lambda w: bool(sent), step=timedelta(seconds=1))
    assert sent == [(T0 + 2 * scrape + GATE_SETTLE_MARGIN, 1)]


def test_the_first_analysis_window_opens_after_the_gates_predictions_are_scraped() -> None:
    world = ScrapedWorld()
    world.run_until(lambda w: w.status.analysis is not None, step=timedelta(seconds=10))
    analysis = world.status.analysis
    assert analysis is not None and analysis.step_index == 1
    assert analysis.window_start >= gate_completed(world) + 2 * SCRAPE
    # Every analysis the judges are asked for starts there or later.
    world.run_until(lambda w: w.status.phase is Phase.PAUSED, step=timedelta(seconds=30))  # the last step
    starts = [a.window_start for a in world.executed if isinstance(a, RunAnalysis)]
    assert starts and min(starts) >= gate_completed(world) + 2 * SCRAPE


def test_a_weight_already_in_place_is_not_held() -> None:
    world = ScrapedWorld()
    world.reconcile()
    assert world.status.current_step == 0
    world.target.canary_weight = 1  # someone set it by hand
    world.advance(timedelta(seconds=1))
    world.reconcile()
    assert world.status.current_step == 1
    assert any(h.event == "WeightChanged" for h in world.status.history)


def test_a_retried_gate_holds_from_its_own_end() -> None:
    spec = spec_dict(rollback={"automatic": False})
    world = ScrapedWorld(spec=spec, gate_verdicts=[verdict(Outcome.INCONCLUSIVE, "accuracy", "too few samples")])
    world.reconcile()
    assert world.status.phase is Phase.PAUSED and gate_completed(world) == T0
    world.advance(timedelta(minutes=10))  # long past the first gate's settling
    world.gate_verdicts = [verdict(Outcome.PASS, "accuracy", "0.98")]
    world.send(CommandAction.RETRY)
    sent: list[tuple[datetime, int]] = []
    weights_at(world, sent)
    world.reconcile()
    retried = gate_completed(world)
    assert retried == T0 + timedelta(minutes=10) and world.status.gate is not None
    assert world.status.gate.outcome is Outcome.PASS and sent == []
    world.run_until(lambda w: bool(sent), step=timedelta(seconds=1))
    assert sent == [(gate_predictions_scraped_by(retried, SCRAPE), 1)]


def test_promoted_past_a_failed_gate_the_first_weight_still_waits() -> None:
    spec = spec_dict(rollback={"automatic": False})
    world = ScrapedWorld(spec=spec, gate_verdicts=[verdict(Outcome.FAIL, "accuracy", "0.80 < 0.97")])
    world.reconcile()
    assert world.status.phase is Phase.PAUSED
    world.advance(timedelta(seconds=20))
    world.send(CommandAction.PROMOTE)
    sent: list[tuple[datetime, int]] = []
    weights_at(world, sent)
    world.reconcile()
    assert world.status.gate is not None and world.status.gate.overridden_by == "alice"
    assert sent == [] and world.status.message.startswith("Holding step 1/6 until")
    world.run_until(lambda w: bool(sent), step=timedelta(seconds=1))
    assert sent == [(gate_predictions_scraped_by(T0, SCRAPE), 1)]


def test_a_hold_leaves_the_progress_deadline_whole() -> None:
    """A target that refuses weights fails the step progressDeadline after the hold, not counting the hold."""
    world = ScrapedWorld(spec=spec_dict(progressDeadline="2m"))
    refused: list[str] = []
    execute = world.execute

    def refusing(action: Any) -> Any:
        if isinstance(action, SetCanaryWeight) and action.weight > 0:
            refused.append(action.id)
            return None, None, ActionFailure(action.id, AdapterError(AdapterErrorKind.UNAVAILABLE, "503"))
        return execute(action)

    world.execute = refusing  # type: ignore[method-assign]
    settled = gate_predictions_scraped_by(T0, SCRAPE)
    world.run_until(lambda w: w.status.phase is not Phase.PROGRESSING, step=timedelta(seconds=5))
    assert refused and world.now >= settled + timedelta(minutes=2)
    assert world.status.rollback is not None and "progressDeadline 2m" in world.status.rollback.reason


def test_no_scrape_interval_told_no_hold() -> None:
    world = ScrapedWorld(scrape_interval=None)
    sent: list[tuple[datetime, int]] = []
    weights_at(world, sent)
    world.reconcile()
    assert sent == [(T0, 1)]


@pytest.mark.parametrize("case", ["holding", "gate_failed"])
def test_a_full_promote_right_after_the_gate_opens_the_bake_once_its_predictions_are_scraped(case: str) -> None:
    """promote --full skips the steps, so the weight step's hold never runs: the bake's window must not open on the
    gate's own predictions either (a golden set rich in positives, counted as the promoted version's)."""
    if case == "holding":
        world = ScrapedWorld()
    else:
        world = ScrapedWorld(spec=spec_dict(rollback={"automatic": False}),
                             gate_verdicts=[verdict(Outcome.FAIL, "accuracy", "0.80 < 0.97")])
    world.reconcile()
    world.advance(timedelta(seconds=10))
    world.send(CommandAction.PROMOTE, full=True)
    world.reconcile()
    world.run_until(lambda w: any(isinstance(a, RunAnalysis) for a in w.executed), step=timedelta(seconds=5))
    bake = next(a for a in world.executed if isinstance(a, RunAnalysis))
    assert bake.mode == "bake" and bake.window_start >= gate_predictions_scraped_by(gate_completed(world), SCRAPE)


@pytest.mark.parametrize("steps", [
    [{"analysis": {"duration": "10m"}}, {"setWeight": 10}, {"pause": {}}],
    [{"setWeight": 0}, {"analysis": {"duration": "10m"}}, {"setWeight": 10}, {"pause": {}}],
], ids=["analysis-first", "after-a-0%-step"])
def test_an_analysis_with_no_weight_step_before_it_still_opens_after_the_gates_predictions_are_scraped(
        steps: list[dict[str, Any]]) -> None:
    """Review s32crdfix: the hold was on a weight step above 0 only, so a window opened at once counted the gate's
    golden set (rich in positives) as the canary's live traffic."""
    world = ScrapedWorld(spec=spec_dict(canary={"steps": steps}))
    world.reconcile()  # staged, gated and passed at T0
    world.advance(timedelta(seconds=1))
    world.reconcile()
    assert world.status.analysis is None, world.status.analysis
    assert "the gate's own predictions must be scraped before live traffic is judged" in world.status.message
    world.run_until(lambda w: w.status.analysis is not None, step=timedelta(seconds=5))
    analysis = world.status.analysis
    assert analysis is not None and analysis.window_start >= gate_completed(world) + 2 * SCRAPE + GATE_SETTLE_MARGIN
