"""`explain` says traffic is back on stable only when the target reported stable serving as traffic was confirmed
back (rollback.servingWhenConfirmed); a withdrawal confirmed at 0% while the target reported another version, or
none, is told as the candidate taken off, and an older operator's status (no such field) says no more than that.

The statuses come from the real engine (the engine tests' World)."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from test_engine_support import World, spec_dict

from controller.api import CommandAction, Phase
from controller.cli.oncall import OnCall
from controller.cli.report import render_html


@pytest.fixture()
def oncall(offline_kubeconfig: Path) -> OnCall:
    return OnCall(str(offline_kubeconfig), None, out=io.StringIO())


def aborted(served: str | None = "6", stable: bool = True) -> dict[str, Any]:
    """Paused at 10% (stable 6, candidate 7), aborted while the target reports `served` serving as stable."""
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]}, bake=None))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.target.stable_version = served
    world.send(CommandAction.ABORT, command_id="a")
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=5))
    status = world.status.to_dict()
    if not stable:  # as a first rollout's: no earlier version on record
        status.pop("stable", None)
    return {"metadata": {"name": "nsfw-classifier", "namespace": "moderation", "resourceVersion": "7"},
            "spec": world.spec, "status": status}


def test_back_on_stable_only_when_the_target_reported_stable_serving(oncall: OnCall) -> None:
    obj = aborted("6")
    assert obj["status"]["rollback"]["servingWhenConfirmed"] == "6"
    assert "Traffic is back on version 6 (confirmed at " in oncall.explain(obj)


@pytest.mark.parametrize(("served", "said"), [
    ("9", "the target reported version 9 serving"),
    (None, "the status records no version serving then (the target named none, or an older operator wrote it)")])
def test_a_withdrawal_confirmed_beside_another_version_is_told_as_the_candidate_off(
        oncall: OnCall, served: str | None, said: str) -> None:
    obj = aborted(served)
    assert obj["status"]["rollback"].get("servingWhenConfirmed") == served
    text = oncall.explain(obj)
    assert "Traffic is back" not in text
    assert "Traffic is off version 7 (confirmed at " in text
    assert f"{said}, so version 6 is not confirmed serving: check it" in text


def test_an_older_operators_status_claims_no_more_than_the_candidate_off(oncall: OnCall) -> None:
    obj = aborted("6")
    obj["status"]["rollback"].pop("servingWhenConfirmed")
    text = oncall.explain(obj)
    assert "Traffic is back" not in text
    assert "Traffic is off version 7 (confirmed at " in text and "or an older operator wrote it" in text


def test_a_first_rollout_taken_off_says_there_is_no_earlier_version(oncall: OnCall) -> None:
    text = oncall.explain(aborted("5", stable=False))
    assert "Traffic is back" not in text
    assert "the target reported version 5 serving, and no earlier version is on record" in text


def test_the_pages_rollback_fact_says_back_on_stable_only_as_the_target_reported_it() -> None:
    """A rollback confirmed for traffic but not yet recovered (the alias still to be confirmed): the HTML page's
    Rollback fact."""
    for served, said in (("6", "traffic back on stable"), ("9", "traffic off the candidate")):
        obj = aborted(served)
        rollback = obj["status"]["rollback"]
        rollback.pop("recoveredAt")
        rollback.pop("aliasConfirmedAt")
        obj["status"]["phase"] = "RollingBack"
        page = render_html(obj)
        assert f"{said}, alias not yet confirmed" in page, said
