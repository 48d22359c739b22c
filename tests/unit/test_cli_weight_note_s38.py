"""Session 38 (review s38oncall): `get`'s weight note at a setWeight step the target has not taken yet, and the
`get --watch` line stamped in UTC as `history` prints its times."""

from __future__ import annotations

import dataclasses
import io
import re
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from test_devstack_cli_s33 import weight_line
from test_engine_support import World, spec_dict

from controller.api.status import PauseReason, Phase
from controller.cli import oncall as oncall_module
from controller.cli.oncall import OnCall
from controller.engine.observations import Observations


@pytest.fixture()
def oncall(offline_kubeconfig: Path) -> OnCall:
    return OnCall(str(offline_kubeconfig), None, out=io.StringIO())


def at_analysis_after_first_step(world: World) -> None:
    """Run to step 2/6 (the analysis after step 1/6's 1%), then freeze the target: step 3/6's 10% never takes."""
    world.run_until(lambda w: w.status.current_step == 1)
    world.target.frozen = True


def test_get_says_a_set_weight_step_the_target_has_not_taken_waits_while_progressing(oncall: OnCall) -> None:
    world = World()
    at_analysis_after_first_step(world)
    assert weight_line(oncall, world) == "Weight:     1% (set by the last step: 1%)"  # confirmed: as before
    world.run_until(lambda w: w.status.current_step == 2)
    world.advance(timedelta(seconds=30))
    world.reconcile()
    assert world.status.phase is Phase.PROGRESSING and world.status.current_step == 2, world.status.message
    assert world.status.canary_weight == 1
    assert weight_line(oncall, world) == "Weight:     1% (step 3/6 waits for 10%; the steps before it set 1%)"


def test_get_says_the_step_past_its_progress_deadline_never_set_its_weight(oncall: OnCall) -> None:
    world = World(spec=spec_dict(rollback={"automatic": False}))
    at_analysis_after_first_step(world)
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    assert world.status.pause is not None and world.status.pause.reason is PauseReason.PROGRESS_DEADLINE_EXCEEDED
    assert world.status.current_step == 2 and world.status.canary_weight == 1, world.status.message
    assert weight_line(oncall, world) == "Weight:     1% (step 3/6 waits for 10%; the steps before it set 1%)"


@dataclasses.dataclass
class ScrapedWorld(World):
    """An operator told Prometheus's scrape interval: the first weight step is held until the gate's predictions
    are scraped."""

    def observe(self, *args: Any, **kwargs: Any) -> Observations:
        return dataclasses.replace(super().observe(*args, **kwargs), scrape_interval=timedelta(minutes=5))


def test_get_claims_no_weight_for_the_first_step_held_for_the_gate_predictions(oncall: OnCall) -> None:
    world = ScrapedWorld()
    world.run_until(lambda w: w.status.current_step == 0)
    assert world.status.message.startswith("Holding step 1/6 until"), world.status.message
    assert weight_line(oncall, world) == "Weight:     0% (step 1/6 waits for 1%; no step before it set a weight)"


# --- get --watch ------------------------------------------------------------------------------------------------


@pytest.fixture()
def tokyo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI run on a machine whose local time is Tokyo's (UTC+9)."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def watched_line(oncall: OnCall, monkeypatch: pytest.MonkeyPatch) -> str:
    """The line `get --watch` prints for a rollout already Succeeded (read once, then it exits)."""
    world = World()
    obj = {"metadata": {"name": "r", "namespace": "ns", "generation": 1, "uid": "u"},
           "spec": world.spec, "status": {"phase": "Succeeded", "observedGeneration": 1, "message": "done"}}
    monkeypatch.setattr(oncall, "get", lambda _name, _deadline: obj)
    oncall.out = io.StringIO()
    assert oncall.watch("r") == "Succeeded"
    return oncall.out.getvalue().splitlines()[0]


def test_watch_stamps_its_lines_in_utc_as_history_does(
        oncall: OnCall, monkeypatch: pytest.MonkeyPatch, tokyo: None) -> None:
    read_at = datetime(2026, 12, 7, 12, 0, 7, 250000, tzinfo=ZoneInfo("Asia/Tokyo"))  # 03:00:07.25 UTC
    monkeypatch.setattr(oncall_module, "_utc_now", lambda: read_at, raising=False)
    assert watched_line(oncall, monkeypatch).startswith("2026-12-07T03:00:07Z  Succeeded  step "), \
        watched_line(oncall, monkeypatch)


def test_watch_stamp_carries_the_date_and_the_utc_zone_on_a_machine_in_another_zone(
        oncall: OnCall, monkeypatch: pytest.MonkeyPatch, tokyo: None) -> None:
    line = watched_line(oncall, monkeypatch)
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  Succeeded  ", line), line
