"""Session 33 (review s33cli): `get`'s weight note after a promotion, and the "no local stack" hint's state dir."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from test_engine_support import World, verdict

from controller.api import CommandAction
from controller.api.status import Phase
from controller.cli.oncall import OnCall
from controller.devstack.processes import StackError
from controller.devstack.stack import load_state
from controller.verdict import Outcome


@pytest.fixture()
def oncall(offline_kubeconfig: Path) -> OnCall:
    return OnCall(str(offline_kubeconfig), None, out=io.StringIO())


def weight_line(oncall: OnCall, world: World) -> str:
    oncall.out = io.StringIO()
    oncall.print_rollout({"metadata": {"name": "nsfw-classifier", "namespace": "moderation"},
                          "spec": world.spec, "status": world.status.to_dict()})
    return next(line for line in oncall.out.getvalue().splitlines() if line.startswith("Weight:"))


def test_get_credits_the_promotion_not_the_last_step_with_all_traffic(oncall: OnCall) -> None:
    world = World(judge=lambda _r: [verdict(Outcome.PASS)])
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)  # the last step, `pause: {}`, at 50%
    assert weight_line(oncall, world) == "Weight:     50% (set by the last step: 50%)"  # as before
    world.target.frozen = True  # the promotion is sent but not yet confirmed: the step's weight still holds
    world.send(CommandAction.PROMOTE)
    world.run_until(lambda w: w.status.phase is Phase.PROMOTING)
    assert weight_line(oncall, world) == "Weight:     50% (set by the last step: 50%)"
    world.target.frozen = False
    world.run_until(lambda w: w.status.phase is Phase.BAKING)
    assert world.status.canary_weight == 100
    assert weight_line(oncall, world) == "Weight:     100% (promoted)"
    world.run_until(lambda w: w.status.phase is Phase.SUCCEEDED)
    assert weight_line(oncall, world) == "Weight:     100% (promoted)"


def test_get_claims_no_step_set_the_weight_of_a_rollback_after_a_promotion(oncall: OnCall) -> None:
    world = World(judge=lambda _r: [verdict(Outcome.PASS)])
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.PROMOTE)
    world.run_until(lambda w: w.status.phase is Phase.BAKING)
    world.judge = lambda _r: [verdict(Outcome.FAIL)]  # the bake fails: back to the previous version
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK)
    line = weight_line(oncall, world)
    assert line == f"Weight:     {world.status.canary_weight}%", line


def no_stack_message(root: Path | None) -> str:
    with pytest.raises(StackError, match="no local stack is running") as caught:
        load_state(root)
    return str(caught.value)


def test_the_no_stack_hint_names_the_state_dir_it_was_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELROLLOUT_STATE_DIR", str(tmp_path / "default"))
    given = tmp_path / "my stack"
    # The `dev up` it suggests starts the stack where the failed command looks (quoted for the shell).
    assert no_stack_message(given).endswith(f"dev up --state-dir '{given}'`")
    # The default state dir, named or not, needs no flag.
    assert no_stack_message(None).endswith(" dev up`")
    assert no_stack_message(tmp_path / "default").endswith(" dev up`")
