"""Review s35cli: `explain` and `get` on rollbacks and failed-check pauses, with statuses from the real engine (the
engine tests' World).

- A rollback that left the stable alias on a version moved by hand never says traffic is on a version the target
  did not report serving.
- A rollout paused after a failed or inconclusive check (automatic rollback off) gets a `Next:` with the commands
  a human may run, as `get --watch` names them.
- `get` credits no step with a rollback's weight.
- A rollback whose withdrawal is held because the target does not report stable ready (weight 0) says the candidate
  is off, stable is not reported serving, and what to check, before progressDeadline."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from test_engine_support import World, spec_dict, verdict

from controller.api import CommandAction, Phase
from controller.cli.oncall import OnCall
from controller.verdict import Outcome


@pytest.fixture()
def oncall(offline_kubeconfig: Path) -> OnCall:
    return OnCall(str(offline_kubeconfig), None, out=io.StringIO())


def _obj(world: World) -> dict[str, Any]:
    return {"metadata": {"name": "nsfw-classifier", "namespace": "moderation", "resourceVersion": "7", "generation": 1},
            "spec": world.spec, "status": world.status.to_dict()}


def _get(oncall: OnCall, obj: dict[str, Any]) -> str:
    oncall.print_rollout(obj)
    out = oncall.out
    assert isinstance(out, io.StringIO)
    return out.getvalue()


def aborted_with_alias_moved(served: str | None) -> dict[str, Any]:
    """Paused at 10% (stable 6, candidate 7), @production moved to 5 by hand, the target reporting `served` as
    stable; aborted."""
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]}, bake=None))
    world.registry.versions["5"] = {}
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.registry.aliases["production"] = "5"
    world.target.stable_version = served
    world.send(CommandAction.ABORT, command_id="a")
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=5))
    return _obj(world)


def test_alias_left_beside_another_version_serving_names_the_version_the_target_reported(oncall: OnCall) -> None:
    obj = aborted_with_alias_moved("9")
    rollback = obj["status"]["rollback"]
    assert (rollback["aliasLeftOn"], rollback["servingWhenConfirmed"]) == ("5", "9")
    text = oncall.explain(obj)
    assert "traffic is on version 6" not in text
    assert ("Next: the registry names version 5 while the target reported version 9 serving: point @production at "
            "the version you mean before a retry.") in text


def test_alias_left_with_no_version_reported_claims_no_version_for_traffic(oncall: OnCall) -> None:
    obj = aborted_with_alias_moved(None)
    assert obj["status"]["rollback"]["aliasLeftOn"] == "5"
    assert not obj["status"]["rollback"].get("servingWhenConfirmed")
    text = oncall.explain(obj)
    assert "traffic is on version" not in text
    assert "Next: the registry names version 5 and no version is confirmed serving: check the target" in text


def test_alias_left_with_stable_reported_serving_still_says_traffic_is_on_stable(oncall: OnCall) -> None:
    obj = aborted_with_alias_moved("6")
    assert obj["status"]["rollback"]["servingWhenConfirmed"] == "6"
    assert ("Next: the registry names version 5 while traffic is on version 6: point @production at the version "
            "you mean before a retry.") in oncall.explain(obj)


def paused_on(outcome: Outcome) -> dict[str, Any]:
    """Paused for a human at 1% after a failed (automatic rollback off) or inconclusive analysis."""
    world = World(spec=spec_dict(rollback={"automatic": False}), judge=lambda _r: [verdict(outcome)])
    world.run_until(lambda w: w.status.phase is Phase.PAUSED, step=timedelta(minutes=1))
    return _obj(world)


def test_a_pause_after_a_failed_check_names_each_command_and_what_it_does(oncall: OnCall) -> None:
    obj = paused_on(Outcome.FAIL)
    assert obj["status"]["pause"]["reason"] == "AnalysisFailed"
    text = oncall.explain(obj)
    where = "-n moderation nsfw-classifier"
    next_line = next(line for line in text.splitlines() if line.startswith("Next:"))
    assert "paused for a human after the AnalysisFailed check" in next_line
    assert f"`modelrollout promote {where}`" in next_line and "skips this check" in next_line
    assert f"`modelrollout retry {where}`" in next_line and f"`modelrollout rollback {where}`" in next_line
    assert "version 6" in next_line


def test_a_pause_on_an_inconclusive_check_names_the_commands_and_that_it_is_still_judged(oncall: OnCall) -> None:
    obj = paused_on(Outcome.INCONCLUSIVE)
    assert obj["status"]["pause"]["reason"] == "AnalysisInconclusive"
    text = oncall.explain(obj)
    next_line = next(line for line in text.splitlines() if line.startswith("Next:"))
    assert "`modelrollout promote -n moderation nsfw-classifier`" in next_line
    assert "`modelrollout rollback -n moderation nsfw-classifier`" in next_line


def test_a_pause_past_progress_deadline_offers_no_promote(oncall: OnCall) -> None:
    obj = paused_on(Outcome.FAIL)
    obj["status"]["pause"]["reason"] = "ProgressDeadlineExceeded"
    next_line = next(line for line in oncall.explain(obj).splitlines() if line.startswith("Next:"))
    assert "promote" not in next_line
    assert "`modelrollout retry -n moderation nsfw-classifier`" in next_line


def rolled_back() -> dict[str, Any]:
    world = World(judge=lambda _r: [verdict(Outcome.FAIL)])
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK)
    return _obj(world)


def test_get_credits_no_step_with_a_rollbacks_weight(oncall: OnCall) -> None:
    obj = rolled_back()
    assert obj["status"]["canaryWeight"] == 0
    assert "Weight:     0%\n" in _get(oncall, obj)


def withdrawal_held(deadline_passed: bool = False, weight: int | None = 0) -> dict[str, Any]:
    """A failed analysis rolls back while the target reports 0% and no canary but is not ready: the engine holds the
    confirmation until stable is reported serving and ready. `weight`: the canaryWeight recorded (0: the observed
    weight, as an engine that records a not-ready target's weight writes it; None: as the engine wrote it)."""
    world = World(judge=lambda _r: [verdict(Outcome.FAIL)])
    world.run_until(lambda w: bool(w.status.canary_weight))
    world.target.ready = False
    world.target.canary_weight = 0
    world.target.canary_version = None
    world.run_until(lambda w: w.status.phase is Phase.ROLLING_BACK)
    for _ in range(70 if deadline_passed else 3):
        world.advance(timedelta(seconds=30))
        world.reconcile()
    obj = _obj(world)
    if weight is not None:
        obj["status"]["canaryWeight"] = weight
    return obj


NEXT = ("Next: check the target: `kubectl get inferenceservice -n moderation nsfw-classifier -o yaml`; the rollback is "
        "confirmed once it reports version 6 serving and ready.")


def test_a_withdrawal_held_on_stable_not_ready_says_the_candidate_is_off_and_stable_not_serving(
        oncall: OnCall) -> None:
    obj = withdrawal_held()
    status = obj["status"]
    assert status["phase"] == "RollingBack" and status["canaryWeight"] == 0
    assert not status["rollback"].get("trafficConfirmedAt")
    text = oncall.explain(obj)
    assert "the candidate may still serve" not in text
    assert ("The target shows version 7 at 0% but does not report version 6 serving and ready: users may be "
            "getting errors, or may still be on the split it last put in effect. TargetReady says: InferenceService "
            "nsfw-classifier is not ready.") in text
    assert NEXT in text
    assert "Weight:     0%\n" in _get(oncall, obj)


def test_a_withdrawal_held_with_a_weight_not_read_ready_points_at_the_target(oncall: OnCall) -> None:
    obj = withdrawal_held(weight=None)
    if obj["status"]["canaryWeight"] == 0:  # an engine that records a not-ready target's weight
        obj["status"]["canaryWeight"] = 1
    text = oncall.explain(obj)
    assert ("Traffic is NOT yet confirmed back on version 6: the candidate may still serve some of it. The target "
            "does not report itself ready, so users may be getting errors. TargetReady says: InferenceService "
            "nsfw-classifier is not ready.") in text
    assert NEXT in text


def test_a_withdrawal_held_past_progress_deadline_has_one_next_line(oncall: OnCall) -> None:
    text = oncall.explain(withdrawal_held(deadline_passed=True))
    assert "ProgressDeadlineExceeded" in text
    assert sum(line.startswith("Next:") for line in text.splitlines()) == 1
    assert "does not report version 6 serving and ready: users may be getting errors" in text
