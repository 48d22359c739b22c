"""The on-call trail's wording (review s32oncall F1-F3, F5, F6): a refused promote's hold advice only while the hold
holds, the HTML Rollback line as confirmed, a stuck rollback's missing steps said as missing with the target to
check, a pause step's command, and chart labels to 3 significant figures.

The statuses come from the real engine (the engine tests' World); explain reads them offline."""

from __future__ import annotations

import io
import time
import types
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from test_cli_commands import FakeApi, engine_rollout, rollout
from test_cli_oncall_hold_s29 import held
from test_engine import fail_from, finished
from test_engine_support import T0, World, spec_dict

from controller.api.commands import CommandAction
from controller.api.status import Phase
from controller.cli import oncall as oncall_module
from controller.cli.main import main
from controller.cli.oncall import OnCall
from controller.cli.report import _facts, _rate, render_html
from tests.http_stub import serving

ADVICE = "point @production back at version 6 to promote candidate 7, or roll back"


@pytest.fixture()
def oncall(offline_kubeconfig: Path) -> OnCall:
    return OnCall(str(offline_kubeconfig), None, out=io.StringIO())


def refused_during_hold() -> World:
    """Held on @production moved to 5 by hand, and a second promote refused meanwhile."""
    world = held()
    world.send(CommandAction.PROMOTE, command_id="second")
    world.reconcile()
    return world


# --- F1: a refused promote's advice only while the hold holds -------------------------------------------------


def test_a_promote_refused_during_a_hold_keeps_the_holds_advice_apart() -> None:
    world = refused_during_hold()
    (entry,) = [e for e in world.status.history if e.event == "CommandIgnored"]
    assert entry.detail.endswith(f": {ADVICE}") and entry.advice == ADVICE


@pytest.mark.parametrize("end", ["deadline", "rollback"])
def test_a_promote_refused_during_a_hold_that_ended_is_told_without_the_advice(oncall: OnCall, end: str) -> None:
    world = refused_during_hold()
    holding = [line for line in oncall.explain(engine_rollout(world)).splitlines() if "CommandIgnored" in line]
    assert len(holding) == 1 and holding[0].endswith(f": {ADVICE}"), holding  # told whole while it holds
    if end == "rollback":
        world.send(CommandAction.ROLLBACK, command_id="back")
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK
    text = oncall.explain(engine_rollout(world))
    assert ADVICE not in text and "or roll back" not in text, text
    assert ("promote: the promotion is held: @production names version 5, set outside this rollout (it named version "
            "6 when the rollout started) (that hold has ended)") in text
    # The HTML page's decision table and chart tooltips too (review s32r3: they printed the raw detail).
    obj = engine_rollout(world)
    page = render_html(obj, text)
    assert ADVICE not in page and "(that hold has ended)" in page.split("<h2>Decision points</h2>")[1]


# --- F2: the HTML Rollback line says "rolled back" only when both are back ------------------------------------


def test_the_html_rollback_line_says_where_the_alias_was_left() -> None:
    world = held()
    world.run_until(finished)  # the hold's deadline: rolled back, @production left on 5
    obj = engine_rollout(world)
    assert obj["status"]["rollback"]["aliasLeftOn"] == "5"
    rollback = dict(_facts(obj, obj["status"]))["Rollback"]
    assert "rolled back" not in rollback
    assert "stopped, traffic back on stable, alias left on version 5 (moved outside this rollout)" in rollback


def test_the_html_rollback_line_says_rolled_back_only_with_stable_reported_serving() -> None:
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]}, bake=None))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.target.stable_version = None  # traffic off the candidate, no version reported serving
    world.send(CommandAction.ABORT, command_id="a")
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=5))
    obj = engine_rollout(world)
    rollback = dict(_facts(obj, obj["status"]))["Rollback"]
    assert "rolled back" not in rollback and "traffic off the candidate" in rollback, rollback
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]}, bake=None))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.ABORT, command_id="a")
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=5))
    obj = engine_rollout(world)
    assert dict(_facts(obj, obj["status"]))["Rollback"].startswith("Aborted by alice, rolled back, recovered in ")


# --- F3: a stuck rollback says what is not confirmed, and where to look ---------------------------------------


def test_a_stuck_rollback_says_not_confirmed_and_names_the_target_to_check(oncall: OnCall) -> None:
    world = World()
    fail_from(world, step_index=1)
    world.run_until(lambda w: w.status.current_step == 1)
    world.target.frozen = True  # the weight-0 write never takes effect
    world.run_until(lambda w: w.status.phase is Phase.ROLLING_BACK)
    world.advance(timedelta(minutes=31))
    world.reconcile()
    message = world.status.condition("Progressing").message  # type: ignore[union-attr]
    assert message.startswith("rollback unconfirmed for more than progressDeadline 30m (not confirmed: traffic back "
                              "on stable"), message
    (entry,) = [e for e in world.status.history if e.event == "ProgressDeadlineExceeded"]
    assert entry.detail == message
    text = oncall.explain(engine_rollout(world))
    assert "(not confirmed: traffic back on stable" in text
    assert "Next: check what the target serves: `kubectl get inferenceservice -n ns nsfw-classifier -o yaml`." in text


def test_a_rollback_stuck_on_the_registry_only_is_not_told_to_check_the_target(oncall: OnCall) -> None:
    """Review s32r3: traffic was confirmed back, yet explain said to check what the target serves."""
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and bool(w.target.canary_weight))
    world.registry.down = True
    world.send(CommandAction.ABORT)
    for _ in range(15):
        world.advance(timedelta(minutes=3))
        world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK
    assert world.status.rollback is not None and world.status.rollback.traffic_confirmed_at is not None
    text = oncall.explain(engine_rollout(world))
    assert "Next: check what the target serves" not in text, text
    assert "Next: check the registry: the RegistryAvailable condition (`kubectl get modelrollout -n ns r -o yaml`)" \
        in text, text


# --- F5: a pause step names the command that ends it ------------------------------------------------------------


def test_a_pause_step_names_the_command_to_run(oncall: OnCall) -> None:
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]}, bake=None))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    assert world.status.pause is not None and str(world.status.pause.reason) == "PauseStep"
    text = oncall.explain(engine_rollout(world))
    assert "Next: `modelrollout promote -n ns r` to go on (or `modelrollout abort -n ns r`)." in text
    timed = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {"duration": "1h"}}]}, bake=None))
    timed.run_until(lambda w: w.status.phase is Phase.PAUSED)
    assert "Next: `modelrollout promote" not in oncall.explain(engine_rollout(timed))  # it resumes by itself


# --- F6: chart labels to 3 significant figures ------------------------------------------------------------------


def test_chart_labels_round_scaled_counts_to_3_significant_figures() -> None:
    rate, counts = _rate({"rate": 0.147, "events": 20.82352380952381, "total": 141.9785714285714})
    assert counts == "20.8/142" and rate == pytest.approx(14.7)
    assert _rate({"rate": 0.0378, "events": 68, "total": 1800.0})[1] == "68/1800"
    assert _rate({"rate": 0.5, "events": 0.123456, "total": 12345.678})[1] == "0.123/12346"
    # No exponent either side of the cut (review s32final: 999.5 read 1e+03, 4e-05 stayed 4e-05).
    assert _rate({"rate": 0.1, "events": 0.00004, "total": 999.5})[1] == "0.00004/1000"
    assert _rate({"rate": 0.1, "events": 99.96, "total": 999.4})[1] == "100/999"


def test_the_html_rollback_line_of_a_first_rollout_does_not_say_rolled_back() -> None:
    """No earlier version (oc-first in the review): the candidate is off, nothing is confirmed back."""
    status = {"phase": "RolledBack", "rollback": {"cause": "GateFailed", "recoveredAt": "2026-12-06T18:14:25Z",
                                                  "trafficConfirmedAt": "2026-12-06T18:14:25Z",
                                                  "aliasConfirmedAt": "2026-12-06T18:14:25Z",
                                                  "timeToRecoverSeconds": 0.0}}
    rollback = dict(_facts({"metadata": {}, "spec": {}}, status))["Rollback"]
    assert rollback == ("GateFailed by modelrollout-controller, stopped, traffic off the candidate, alias confirmed, "
                        "recovered in 0.00 s"), rollback


# --- F4: a rollout deleted while watched ends the watch with where its end is -----------------------------------


@pytest.fixture()
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    with serving(fake.server):
        yield fake


@pytest.fixture()
def no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """`get --watch` polls every second: not in a unit test (as test_cli_commands)."""
    monkeypatch.setattr(oncall_module, "time", types.SimpleNamespace(
        sleep=lambda _s: None, monotonic=time.monotonic, strftime=time.strftime))


EVENTS = "kubectl get events -n ns --field-selector involvedObject.kind=ModelRollout,involvedObject.name=r"


def test_a_watch_of_a_rollout_deleted_while_rolling_back_says_where_its_end_is(
        api: FakeApi, tmp_path: Path, no_wait: None, capsys: pytest.CaptureFixture[str]) -> None:
    deleting = rollout("RollingBack")
    deleting["status"].update(message="Rolling back: the ModelRollout was deleted (spec.rollback.revertOnDeletion); "
                                      "returning traffic to stable.", rollback={"cause": "Deleted"})
    api.script = [rollout("Paused"), deleting, None]
    assert main(["get", "r", "--watch", "--kubeconfig", api.kubeconfig(tmp_path)]) == 2  # cannot be read (README)
    err = capsys.readouterr().err
    assert err.strip() == ("error: ModelRollout ns/r: not found any more: it was deleted while rolling back "
                           f"(spec.rollback.revertOnDeletion) while watched; its end is in its Events: `{EVENTS}`"), err


def test_a_rollout_not_found_names_its_events(api: FakeApi, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    api.script = [None]
    assert main(["get", "r", "--kubeconfig", api.kubeconfig(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "ModelRollout ns/r: not found; if it was deleted, its Events tell how it ended" in err and EVENTS in err


@pytest.mark.parametrize("advice_chars", [180, 250])
def test_a_long_refusal_keeps_its_advice_whole_after_a_marked_cut(advice_chars: int) -> None:
    """Review s32r3: a long stableAlias glued the cut detail to the advice ("...it named verspoint @aaa..."), or, past
    half the limit, cut the advice itself and kept it nowhere apart."""
    from controller.api.status import ModelRolloutStatus
    from controller.engine.decide import COMMAND_REFUSAL_MAX, ignore_command

    advice = "point @" + "a" * advice_chars + " back at version 6 to promote candidate 7, or roll back"
    detail = "promote: the promotion is held: " + "x" * 600 + ": " + advice
    status = ignore_command(ModelRolloutStatus(), "cmd", detail, T0, advice=advice)
    entry = status.history[-1]
    assert entry.advice == advice
    assert len(entry.detail) == COMMAND_REFUSAL_MAX and entry.detail.endswith("…: " + advice), entry.detail


def test_a_rollback_stuck_on_unstaging_a_superseded_candidate_points_at_the_target(oncall: OnCall) -> None:
    """Review s32r4: traffic and alias confirmed, the old candidate still on the target (a sync puts it back): the
    registry was named, though the wait is the target's."""
    from controller.engine import UnstageCandidate

    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and bool(w.target.canary_weight))
    execute = world.execute

    def never_unstaged(action: Any) -> Any:
        if isinstance(action, UnstageCandidate):
            world.executed.append(action)
            return None, None, None
        return execute(action)

    world.execute = never_unstaged  # type: ignore[method-assign]
    world.registry.versions["8"] = {}
    world.spec = {**world.spec, "model": {**world.spec["model"], "version": "8"}}
    world.generation += 1
    for _ in range(20):
        world.advance(timedelta(minutes=3))
        world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK
    text = oncall.explain(engine_rollout(world))
    assert "Next: check the registry" not in text, text
    assert "Next: check what the target serves: `kubectl get inferenceservice -n ns nsfw-classifier -o yaml`." in text


def held_again_on_the_registry() -> World:
    """Attempt 1 held on the hand-moved alias and rolled back; attempt 2, retried, held on the registry."""
    world = held()
    world.send(CommandAction.ROLLBACK, command_id="back")
    world.run_until(finished)
    world.registry.aliases["production"] = "6"
    world.send(CommandAction.RETRY, command_id="retry")
    world.run_until(lambda w: w.status.phase is Phase.PAUSED, step=timedelta(minutes=3))
    world.send(CommandAction.PROMOTE, command_id="p2")
    world.registry.down = True
    for _ in range(3):
        world.advance(timedelta(minutes=1))
        world.reconcile()
    return world


def test_an_earlier_attempt_s_hold_advice_is_not_offered_during_a_later_hold() -> None:
    """Review s32r4: the HTML table told every attempt's entries with the current hold's "holding"."""
    world = held_again_on_the_registry()
    assert world.status.promotion is not None and world.status.promotion.hold is not None
    page = render_html(engine_rollout(world), "")
    assert ADVICE not in page.split("<h2>Decision points</h2>")[1]


def test_a_long_refusal_without_advice_marks_its_cut() -> None:
    """Review s32r4: a retry refused for an MLflow-only source ended mid-word ("... s3://<bucket>/{nam")."""
    from controller.api.status import ModelRolloutStatus
    from controller.engine.decide import COMMAND_REFUSAL_MAX, ignore_command

    entry = ignore_command(ModelRolloutStatus(), "cmd", "retry: " + "y" * 600, T0).history[-1]
    assert len(entry.detail) == COMMAND_REFUSAL_MAX and entry.detail.endswith("y…") and entry.advice is None
    short = ignore_command(ModelRolloutStatus(), "cmd", "retry: nothing to retry", T0).history[-1]
    assert short.detail == "retry: nothing to retry"


def test_an_older_operator_s_earlier_attempt_keeps_no_advice_in_the_html_table() -> None:
    """Review s32r5: attempt 1 recorded by an operator that numbered no entries (upgraded during attempt 2) was told
    with the current hold's "holding", its raw advice offered as live."""
    world = held_again_on_the_registry()
    obj = engine_rollout(world)
    for entry in obj["status"]["history"]:
        if entry.get("attempt") == 1:  # as an older operator wrote them
            entry.pop("attempt")
            entry.pop("advice", None)
    assert ADVICE not in render_html(obj, "").split("<h2>Decision points</h2>")[1]


def test_a_first_rollout_that_keeps_its_traffic_is_not_said_to_be_back_on_stable() -> None:
    """Review s32r5: a first rollout rolled back with the registry down said "traffic is back on stable, restoring
    @production": there is no stable, and the candidate keeps all traffic."""
    world = World()
    world.registry.aliases = {}
    world.target.stable_version = None
    world.registry.slow_promotion = True
    world.run_until(lambda w: w.status.phase is Phase.PROMOTING and w.target.stable_version == "7")
    world.registry.down = True
    world.send(CommandAction.ROLLBACK, command_id="b")
    for _ in range(5):
        world.advance(timedelta(minutes=3))
        world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK
    assert world.status.rollback is not None and world.status.rollback.traffic_kept
    message = world.status.message
    assert "back on stable" not in message, message
    assert "version 7 keeps all traffic (no earlier version to put back), taking @production off it" in message
