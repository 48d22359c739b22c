"""Prometheus losing its data mid-window (restarted on an emptyDir, or another HA replica answering): the window's
counts fall from one run to the next, and the run after is judged on what is left (review s30judges finding 1).

A proportion's totals count from the window's start, so they only grow: a run whose totals fell below an earlier
run's of the same window (beyond increase()'s extrapolation), or came back empty after it counted, is DataLost: a
measurement outage (retried at the step's or bake's end, like a Prometheus restart), never a pass.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from test_engine_final_run import STEP, bake_until_its_end, outage, rollback_spec
from test_engine_support import World

from controller.api import Phase
from controller.engine import RunAnalysis
from controller.verdict import MEASUREMENT_OUTAGES, Outcome, Verdict

# The module (controller.engine exports its decide() function under the same name): the rules are read late, so
# that code without them fails on what it decides, not on an import.
rules = importlib.import_module("controller.engine.decide")

PER_SECOND = 10.0  # the canary's predictions a second; stable serves 4 times as many


def counted(outcome: Outcome, canary: float, stable: float, share: float = 0.95, name: str = "nsfw-rate") -> Verdict:
    """A proportion verdict as the runner gives it (runner._canary_proportion, judges._proportion_verdict)."""
    return Verdict(name, outcome, f"no credible increase: canary 2% ({canary * 0.02:g}/{canary:g}) vs stable 2% "
                   f"({stable * 0.02:g}/{stable:g})",
                   {"canary": {"events": canary * 0.02, "total": canary, "rate": 0.02},
                    "stable": {"events": stable * 0.02, "total": stable, "rate": 0.02},
                    "window": {"start": "2026-01-01T00:00:00+00:00", "countsScaledBy": share}})


def counting(world: World, mode: str) -> dict[str, datetime | None]:
    """The world's judges count from the window's start, or from when Prometheus lost its data (`since`) once set:
    a verdict that passes on whatever it counts, as the runner's does on a clean canary."""
    lost: dict[str, datetime | None] = {"since": None}

    def judge(request: RunAnalysis) -> list[Verdict]:
        since = request.window_start
        if str(request.mode) == mode and lost["since"] is not None:
            since = max(since, lost["since"])
        seconds = (world.now - since).total_seconds()
        return [counted(Outcome.PASS, PER_SECOND * seconds, 4 * PER_SECOND * seconds)]
    world.judge = judge
    return lost


def window_spec(fixed_range: bool = False) -> dict[str, Any]:
    """rollback_spec with counts that read the window from its start, as real templates do ({{window}})."""
    spec = rollback_spec()
    window = "10s" if fixed_range else "{{window}}"
    spec["analysis"]["metrics"][0]["proportion"].update(events=f"sum(increase(e{{{{selector}}}}[{window}]))",
                                                         total=f"sum(increase(t{{{{selector}}}}[{window}]))")
    return spec


def test_a_fixed_ranges_counts_falling_are_traffic_not_data_lost() -> None:
    """Counts over a fixed range rise and fall with the traffic (review s30r3 2): only {{window}} counts only grow."""
    world = World(spec=window_spec(fixed_range=True))
    lost = counting(world, "canary")
    to_the_last_run_of_step_one(world)
    lost["since"] = world.now - timedelta(minutes=1) + STEP
    world.advance(STEP)
    world.reconcile()
    assert "DataLost" not in world.status.message, world.status.message
    assert world.status.current_step is not None and world.status.current_step >= 2, world.status.message


def to_the_last_run_of_step_one(world: World) -> datetime:
    world.run_until(lambda w: w.status.analysis is not None and w.status.analysis.step_index == 1
                    and w.status.analysis.runs >= 1)
    analysis = world.status.analysis
    assert analysis is not None and analysis.ends_at is not None
    while world.now + STEP < analysis.ends_at:
        world.advance(STEP)
        world.reconcile()
    return analysis.ends_at


def test_a_steps_last_run_on_counts_that_fell_is_retried_not_passed() -> None:
    """Prometheus restarted without its data a minute before the step's end: the last run counts one minute of
    ten. It is not passed on that; the step waits, and ends only on a run that counts the window whole (an HA
    replica that kept its data)."""
    world = World(spec=window_spec())
    lost = counting(world, "canary")
    ends_at = to_the_last_run_of_step_one(world)
    lost["since"] = world.now - timedelta(minutes=1) + STEP
    world.advance(STEP)
    world.reconcile()
    analysis = world.status.analysis
    assert world.status.phase is Phase.PROGRESSING and world.status.current_step == 1, world.status.message
    assert analysis is not None and analysis.errors == 1 and world.now >= ends_at
    assert "AnalysisPassed" not in [e.event for e in world.status.history]
    message = world.status.message
    assert "DataLost" in message and "fell from canary 5700/stable 22800" in message, message
    assert "to canary 600/stable 2400" in message and "persistent storage" in message, message
    lost["since"] = None  # the next try reads a Prometheus that holds the whole window
    world.advance(STEP)
    world.reconcile()
    assert world.status.current_step is not None and world.status.current_step >= 2, world.status.message
    assert "AnalysisPassed" in [e.event for e in world.status.history]


def test_a_bakes_last_run_finding_nothing_after_counts_is_retried_not_rolled_back() -> None:
    """Right after a restart without its data Prometheus holds no sample: NoData. After runs that counted in the
    same window that is data lost, not a verdict: with onInconclusive: rollback it rolled a good version back."""
    world = World(spec=window_spec())
    counting(world, "bake")
    bake_until_its_end(world)
    passing = world.judge
    world.judge = lambda request: [outage("NoData")]
    world.advance(STEP)
    world.reconcile()
    assert world.status.phase is Phase.BAKING, world.status.message
    assert world.status.analysis is not None and world.status.analysis.errors == 1
    assert "DataLost" in world.status.message and "to nothing" in world.status.message, world.status.message
    world.judge = passing
    world.advance(STEP)
    world.reconcile()
    assert world.status.phase is Phase.SUCCEEDED, world.status.message
    assert world.target.stable_version == "7"


def test_counts_that_fell_are_never_a_pass_and_the_counts_seen_survive_an_outage_between() -> None:
    before = (counted(Outcome.PASS, 1000, 4000),)
    (lost,) = rules._data_lost((counted(Outcome.PASS, 300, 4100),), before, bake=False)
    assert lost.outcome is Outcome.INCONCLUSIVE and lost.evidence["problem"] == "DataLost" in MEASUREMENT_OUTAGES
    assert lost.evidence["onWhatIsLeft"].startswith("pass: no credible increase")
    assert lost.evidence["countsSeen"] == {"canary": 1000.0, "stable": 4000.0, "countsScaledBy": 0.95}
    assert lost.evidence["canary"]["total"] == 300  # what it did count, beside what was seen before
    # Stable's fall alone is enough; a bake's history ("stable") moves by whole days and is not compared.
    (stable_fell,) = rules._data_lost((counted(Outcome.PASS, 1100, 2000),), before, bake=False)
    assert stable_fell.evidence["problem"] == "DataLost"
    (bake,) = rules._data_lost((counted(Outcome.PASS, 1100, 2000),), before, bake=True)
    assert bake.outcome is Outcome.PASS and "problem" not in bake.evidence
    # An outage between carries what was seen, so the run after it is still compared with it.
    (carried,) = rules._data_lost((outage("PrometheusUnreachable"),), before, bake=False)
    assert carried.evidence["problem"] == "PrometheusUnreachable"
    assert carried.evidence["countsSeen"]["canary"] == 1000
    (after,) = rules._data_lost((counted(Outcome.PASS, 400, 1600),), (carried,), bake=False)
    assert after.evidence["problem"] == "DataLost", after
    # And a DataLost run keeps the higher counts: the runs after it stay DataLost until they count past them.
    (still,) = rules._data_lost((counted(Outcome.PASS, 500, 2000),), (lost,), bake=False)
    assert still.evidence["problem"] == "DataLost" and still.evidence["countsSeen"]["canary"] == 1000
    (whole,) = rules._data_lost((counted(Outcome.PASS, 1050, 4200),), (lost,), bake=False)
    assert whole.outcome is Outcome.PASS and "problem" not in whole.evidence
    # A DataLost metric counts as measured: the step's last run meeting it again is retried.
    assert rules._outage((still,), (lost,)) is still


@pytest.mark.parametrize(("now", "share", "lost"), [
    (920, 0.95, False),  # within a tenth: increase()'s extrapolation
    (880, 0.95, True),
    (880, 0.8, False),  # a window of 5 scrapes: two scrapes' worth (50%) is jitter
    (400, 0.8, True),
])
def test_what_counts_as_a_fall_allows_for_extrapolation(now: float, share: float, lost: bool) -> None:
    before = (counted(Outcome.PASS, 1000, 4000, share),)
    (item,) = rules._data_lost((counted(Outcome.PASS, now, 4 * now),), before, bake=False)
    assert (item.evidence.get("problem") == "DataLost") is lost, item


@pytest.mark.parametrize("make", [
    lambda: counted(Outcome.FAIL, 300, 1200),  # a failure on what is left stands: those predictions were made
    lambda: counted(Outcome.PASS, 1200, 4800),
    lambda: outage("QueryRejected"),
])
def test_what_is_not_data_lost(make: Callable[[], Verdict]) -> None:
    item = make()
    (kept,) = rules._data_lost((item,), (counted(Outcome.PASS, 1000, 4000),), bake=False)
    assert kept.outcome is item.outcome and kept.evidence.get("problem") == item.evidence.get("problem")
    # Nothing counted before (the window's first runs) is nothing to lose.
    (first,) = rules._data_lost((outage("NoData"),), (counted(Outcome.INCONCLUSIVE, 0, 0),), bake=False)
    assert first.evidence["problem"] == "NoData"
    assert rules._data_lost((outage("NoData"),), (), bake=False)[0].evidence["problem"] == "NoData"


def threshold(value: float | None, problem: str | None = None) -> Verdict:
    """A threshold verdict as the runner gives it (judges.threshold_judge), or its unmeasured one (`problem`)."""
    if problem:
        return outage(problem)
    return Verdict("nsfw-rate", Outcome.PASS, f"{value:g} is within max 5",
                   {"queries": {"value": "q"}, "value": value, "min": None, "max": 5})


def test_a_thresholds_query_that_answered_then_finds_nothing_is_data_lost() -> None:
    """NoData from a threshold's query is nothing in the hour before either (else StaleSeries): after a run of the
    same window that answered, Prometheus lost what it held."""
    (lost,) = rules._data_lost((threshold(None, "NoData"),), (threshold(2.5),), bake=False)
    assert lost.outcome is Outcome.INCONCLUSIVE and lost.evidence["problem"] == "DataLost", lost
    assert "answered 2.5 in an earlier run" in lost.reason and lost.evidence["valueSeen"] == 2.5
    (again,) = rules._data_lost((threshold(None, "NoData"),), (lost,), bake=False)
    assert again.evidence["problem"] == "DataLost" and rules._outage((again,), (lost,)) is again
    # Never answered in the window, or answering again: not data lost.
    assert rules._data_lost((threshold(None, "NoData"),), (threshold(None, "StaleSeries"),),
                            bake=False)[0].evidence["problem"] == "NoData"
    (back,) = rules._data_lost((threshold(3.0),), (lost,), bake=False)
    assert back.outcome is Outcome.PASS and "problem" not in back.evidence
