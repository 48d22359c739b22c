"""The on-call CLI in the promotion-hold states (review s29oncall F1, F3, F4, F5): the hold's advice only while it
holds, its deadline, a pending command shown with how to withdraw it, and a retry's attempt told as its own.

The statuses come from the real engine (the engine tests' World); the API server is a local stand-in (127.0.0.1)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from test_cli_commands import FakeApi, command, engine_rollout
from test_engine import finished
from test_engine_support import World, verdict

from controller.api.commands import COMMAND_ANNOTATION, CommandAction
from controller.api.status import Phase
from controller.cli.main import main
from controller.cli.oncall import OnCall
from controller.verdict import Outcome
from tests.http_stub import serving

ADVICE = "point @production back at version 6"
WITHDRAW = f"kubectl annotate modelrollout -n ns r {COMMAND_ANNOTATION}-"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture()
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    with serving(fake.server):
        yield fake


@pytest.fixture()
def oncall(offline_kubeconfig: Path) -> OnCall:
    return OnCall(str(offline_kubeconfig), None, out=io.StringIO())


def held() -> World:
    """Promoting, held: @production moved to 5 by hand while the rollout paused at 50% (stable 6, candidate 7)."""
    world = World()
    world.registry.versions["5"] = {}
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.registry.aliases["production"] = "5"
    world.send(CommandAction.PROMOTE, command_id="first")
    for _ in range(3):
        world.advance(timedelta(minutes=1))
        world.reconcile()
    assert world.status.phase is Phase.PROMOTING and world.status.message.startswith("Holding the promotion: ")
    return world


def obj(world: World, annotation: str | None = None) -> dict[str, Any]:
    return engine_rollout(world, annotation)


# --- F1: the hold's advice only while it holds --------------------------------------------------------------------


def test_a_hold_that_ended_in_success_is_told_without_its_advice(oncall: OnCall) -> None:
    world = held()
    world.registry.aliases["production"] = "6"  # put back: the promotion goes on
    world.run_until(finished)
    assert world.status.phase is Phase.SUCCEEDED and world.registry.aliases["production"] == "7"
    text = oncall.explain(obj(world))
    assert ADVICE not in text and "or roll back" not in text
    assert ("StableMismatch at 2026-01-05T09:21:00Z: @production names version 5, set outside this rollout (it named "
            "version 6 when the rollout started) (the promotion was held; that hold has ended)") in text


def test_a_hold_past_its_deadline_is_told_without_its_advice(oncall: OnCall) -> None:
    world = held()
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK
    text = oncall.explain(obj(world))
    assert "@production was left on version 5" in text
    assert ADVICE not in text and "StableMismatch at" in text


def test_a_hold_that_still_holds_keeps_its_advice_and_says_when_it_ends(oncall: OnCall) -> None:
    world = held()
    world.advance(timedelta(minutes=1))
    world.registry.aliases["production"] = "4"  # moved again: a new hold, the first one is now a warning
    world.registry.versions["4"] = {}
    world.reconcile()
    text = oncall.explain(obj(world))
    warnings = text.split("Warnings in this attempt:")[1].split("Last event:")[0]
    assert ADVICE in warnings and "hold has ended" not in warnings
    # F5: when it is rolled back if the hold does not end: progressDeadline (30m) from the promotion's start.
    assert ("The promotion is held since 2026-01-05T09:21:00Z: unless the hold ends first, it is rolled back "
            "untagged (not tagged rejected) at progressDeadline (2026-01-05T09:51:00Z).") in text


# --- F5: a hold is coloured as a pause, not as a promotion moving ---------------------------------------------


def test_a_held_promotion_is_coloured_as_paused(offline_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    out = Terminal()
    oncall = OnCall(str(offline_kubeconfig), None, out=out)
    oncall.print_rollout(obj(held()))
    assert "Phase:      \033[33mPromoting\033[0m" in out.getvalue()
    assert oncall.style.phase("Promoting", "Promoting candidate 7 to all traffic") == "\033[32mPromoting\033[0m"


# --- F4: a pending command is shown, with how to withdraw it ----------------------------------------------------


def test_a_pending_command_is_shown_by_get_and_explain_with_how_to_withdraw_it(
        api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api.obj = obj(held(), command("promote", "p1", actor="alice"))
    assert main(["get", "r", "--kubeconfig", api.kubeconfig(tmp_path)]) == 0
    got = capsys.readouterr().out
    assert (f"Pending:    promote by alice (id p1) is not handled by the operator yet (is it running?); withdraw it: "
            f"`{WITHDRAW}`") in got
    assert main(["explain", "r", "--kubeconfig", api.kubeconfig(tmp_path)]) == 0
    assert "Pending: promote by alice (id p1) is not handled by the operator yet" in capsys.readouterr().out
    api.obj = obj(held(), command("promote", "first", actor="alice"))  # handled already: nothing pending
    assert main(["get", "r", "--kubeconfig", api.kubeconfig(tmp_path)]) == 0
    assert "Pending:" not in capsys.readouterr().out


def test_a_second_command_refused_names_how_to_withdraw_the_first(
        api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api.obj = obj(held(), command("promote", "p1", actor="alice"))
    assert main(["abort", "r", "--kubeconfig", api.kubeconfig(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "command promote by alice (id p1) is still pending on ns/r" in err and f"`{WITHDRAW}`" in err
    assert api.patches == []


# --- F3: a retry's attempt begins at the retry ---------------------------------------------------------------


def test_a_retry_that_failed_at_once_does_not_take_the_last_attempts_warnings(oncall: OnCall) -> None:
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    del world.registry.versions["7"]
    world.send(CommandAction.PROMOTE, command_id="first")
    world.run_until(finished)
    assert world.status.phase is Phase.FAILED
    assert "Warnings in this attempt:" in oncall.explain(obj(world))
    # As a retry left it before the engine refused one with the candidate gone (it failed before resolving).
    stored = obj(world)
    status = stored["status"]
    seq = max(int(e.get("seq", 0)) for e in status["history"])
    status["history"] += [
        {"time": "2026-01-05T10:00:00Z", "event": "CommandApplied", "detail": "retry: starting a new attempt",
         "actor": "alice", "commandId": "r1", "seq": seq + 1},
        {"time": "2026-01-05T10:00:00Z", "event": "Failed", "actor": "modelrollout-controller",
         "detail": "nsfw-classifier version 7 does not exist in the registry", "seq": seq + 2}]
    for key in ("candidate", "stable", "rollback"):
        status.pop(key, None)
    assert "Warnings in this attempt:" not in oncall.explain(stored)


# --- F6, F7: what still serves, and the next step after the alias was left -----------------------------------


def test_a_hold_left_on_the_hand_moved_alias_says_what_to_do_before_a_retry(oncall: OnCall) -> None:
    world = held()
    world.run_until(finished)
    assert world.status.phase is Phase.ROLLED_BACK and world.target.stable_version == "6"
    assert ("Next: the registry names version 5 while traffic is on version 6: point @production at the version you "
            "mean before a retry.") in oncall.explain(obj(world))


def test_a_rollback_after_promotion_not_confirmed_says_the_candidate_may_serve_all_traffic(oncall: OnCall) -> None:
    worlds: list[World] = []
    world = World(judge=lambda _r: [verdict(Outcome.FAIL if worlds[0].status.phase is Phase.BAKING
                                            else Outcome.PASS)])
    worlds.append(world)
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.PROMOTE, command_id="first")
    world.run_until(lambda w: w.status.phase is Phase.BAKING)
    world.target.frozen = True  # the target takes no patch: the previous version is not back yet
    world.run_until(lambda w: w.status.phase is Phase.ROLLING_BACK)
    text = oncall.explain(obj(world))
    assert "Traffic is NOT yet confirmed back on version 6: the candidate may still serve all of it." in text
