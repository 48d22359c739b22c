"""Rules added in session 22 that no other unit test could fail on: each test here fails on a single mutation of
the rule it names (the bake's start after a gate, the old candidate taken off before a new attempt, never acting
blind on a rollback, the watch's stop on a stuck rollout, ...)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest
from test_cli_commands import FakeApi, command, engine_rollout, rollout
from test_engine import baked_into_an_outage, finished, reach_final_pause
from test_engine_gate_settle import SCRAPE, ScrapedWorld, gate_completed
from test_engine_support import Target, World, spec_dict, verdict
from test_mlflow_garbage import API, FakeMlflow
from test_runner_windows import METRIC, provider

from controller.analysis.runner import AnalysisRequest, run_analysis
from controller.api import CommandAction, RollbackCause
from controller.api.status import ActionState, AnalysisMode, Phase
from controller.cli import oncall as oncall_module
from controller.cli.main import main
from controller.engine import (
    REJECTED_TAG,
    ActionFailure,
    AdapterError,
    AdapterErrorKind,
    SetAlias,
    TagRejected,
    UnstageCandidate,
)
from controller.engine.decide import gate_predictions_scraped_by
from controller.operator.runtime import fill_storage_uri
from controller.registry.mlflow_rest import MlflowRegistry, RegistryRequestError, RequestPolicy
from controller.verdict import Outcome
from tests.http_stub import serving
from tests.unit.test_prometheus_provider import EMPTY_VECTOR, FRESHNESS, NOW, Garbage, matrix, vector


def staging_slowly() -> World:
    """Candidate 7 staging at 0% and on the target, its pods taking minutes: Pending."""
    world = World()
    world.target.ready_delay = timedelta(minutes=5)
    world.reconcile()
    world.advance(timedelta(seconds=30))
    world.reconcile()
    return world


def name_version(world: World, version: str) -> None:
    world.spec = {**world.spec, "model": {**world.spec["model"], "version": version}}
    world.generation += 1


def tick(world: World, times: int, step: timedelta) -> None:
    for _ in range(times):
        world.advance(step)
        world.reconcile()


def test_a_full_promote_long_after_the_gate_bakes_from_the_promotion_for_the_whole_duration() -> None:
    """The bake's start moves later only while the gate's predictions are not yet scraped; a promotion long after
    the gate bakes from the promotion, its full bake.duration (never from the gate's settling, which would cut
    the bake short by the time spent in the canary)."""
    world = ScrapedWorld()
    world.run_until(lambda w: (w.status.current_step or 0) >= 2, step=timedelta(seconds=30))
    world.advance(timedelta(minutes=5))
    assert world.now > gate_predictions_scraped_by(gate_completed(world), SCRAPE)
    world.send(CommandAction.PROMOTE, full=True)
    world.run_until(lambda w: w.status.phase is Phase.BAKING, step=timedelta(seconds=5))
    analysis = world.status.analysis
    promoted = world.status.promotion
    assert analysis is not None and analysis.mode is AnalysisMode.BAKE and promoted is not None
    assert analysis.window_start >= promoted.started_at
    assert analysis.ends_at == analysis.window_start + timedelta(hours=1)
    assert analysis.window_start > gate_predictions_scraped_by(gate_completed(world), SCRAPE)


def test_steps_shortened_by_one_once_they_are_over_end_at_the_new_list_s_end() -> None:
    """The clamp's boundary: a list one step shorter than the index already past it (3 steps over, 2 left)."""

    steps = [{"setWeight": 10}, {"analysis": {"duration": "1m"}}, {"setWeight": 20}]
    world = World(spec=spec_dict(bake=None, canary={"steps": steps}))
    world.run_until(lambda w: w.status.phase is Phase.SUCCEEDED)
    assert world.status.current_step == 3
    world.spec = spec_dict(bake=None, canary={"steps": steps[:2]})
    world.generation += 1
    world.advance(timedelta(seconds=5))
    world.reconcile()
    assert world.status.phase is Phase.SUCCEEDED and world.status.current_step == 2


def test_rollback_after_success_goes_ahead_when_the_target_already_serves_the_previous_version() -> None:
    """The previous version serving (traffic put back by hand) is this rollout's to roll back: @stable is restored."""

    world = World(spec=spec_dict(bake=None))
    reach_final_pause(world)
    world.send(CommandAction.PROMOTE)
    world.run_until(finished)
    assert world.status.phase is Phase.SUCCEEDED and world.registry.aliases["production"] == "7"
    world.target.stable_version = "6"  # on-call put the previous version back on the target by hand
    world.advance(timedelta(hours=1))
    world.send(CommandAction.ROLLBACK, actor="bob")
    world.run_until(finished, step=timedelta(seconds=10))
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.registry.aliases["production"] == "6"
    assert world.status.history[-1].event != "CommandIgnored"


def test_a_new_version_named_while_the_target_is_unreadable_still_takes_the_staged_candidate_off() -> None:
    """Staging was sent (and took) but the target cannot be read when another version is named: the candidate may be
    staged, so it is rolled back (unstaged), not forgotten at 0% on the target."""

    world = staging_slowly()
    assert world.status.phase is Phase.PENDING and world.target.canary_version == "7"
    world.target.unreachable = True
    name_version(world, "6")
    world.advance(timedelta(seconds=30))
    world.reconcile()
    world.target.unreachable = False
    tick(world, 30, timedelta(minutes=1))
    assert world.status.phase is Phase.SUCCEEDED
    assert world.target.canary_version is None and not world.target.canary_weight


def test_a_new_version_named_before_staging_is_recorded_still_takes_the_candidate_seen_staged_off() -> None:
    """The candidate shows staged on the target before this attempt recorded any staging (the target not ready yet):
    naming another version rolls it back (unstages it), not forgotten at 0% on the target."""

    world = World(target=Target(canary_version="7", canary_weight=0, ready=False))
    world.reconcile()
    assert world.status.phase is Phase.PENDING and world.status.candidate is not None
    assert not any(r.id.startswith("1:stage:") for r in world.status.actions)
    name_version(world, "6")
    world.advance(timedelta(seconds=30))
    world.reconcile()
    world.target.ready = True
    tick(world, 30, timedelta(minutes=1))
    assert world.status.phase is Phase.SUCCEEDED
    assert world.target.canary_version is None and not world.target.canary_weight


def test_an_unstage_not_confirmed_while_the_target_is_unreadable_is_sent_again_before_starting_over() -> None:
    """The rollback making way for a new version has put traffic back; the target then cannot be read: what is
    staged is unknown, so the rollout does not start over (forgetting the candidate at 0%) until it reads so."""
    world = staging_slowly()
    assert world.status.phase is Phase.PENDING and world.target.canary_version == "7"
    execute = world.execute
    away: list[str] = []

    def target_away_at_unstage(action: Any) -> Any:
        if isinstance(action, UnstageCandidate) and not away:
            away.append(action.id)
            world.target.unreachable = True
            world.executed.append(action)
            return None, None, ActionFailure(action.id, AdapterError(AdapterErrorKind.UNAVAILABLE, "refused"))
        return execute(action)

    world.execute = target_away_at_unstage  # type: ignore[method-assign]
    name_version(world, "6")
    tick(world, 3, timedelta(seconds=30))
    assert world.target.unreachable
    world.target.unreachable = False
    tick(world, 30, timedelta(minutes=1))
    assert world.status.phase is Phase.SUCCEEDED
    assert world.target.canary_version is None and not world.target.canary_weight


def test_a_target_deleted_while_a_rollback_makes_way_for_a_new_version_starts_the_new_attempt() -> None:
    """Nothing is left on a target that is gone: the new attempt starts (and waits for the target), rather than the
    old rollback asking to unstage from nothing for good."""

    world = staging_slowly()
    assert world.status.phase is Phase.PENDING and world.target.canary_version == "7"
    name_version(world, "8")
    world.target.exists = False
    tick(world, 10, timedelta(seconds=30))
    assert "RolledBackForNewCandidate" in [h.event for h in world.status.history]
    assert world.status.phase is Phase.PENDING and world.status.rollback is None and world.status.candidate is None
    assert world.status.message.startswith("Waiting to read InferenceService nsfw-classifier before starting version 8")


@pytest.mark.parametrize("case", ["ends_exactly_at_the_outage_run", "status_without_measured_at"])
def test_a_bake_shortened_onto_an_outage_run_is_decided_by_a_fresh_run(case: str) -> None:
    """As test_a_bake_shortened_below_a_run_that_met_an_outage_is_decided_by_a_fresh_run, at the boundary (the new
    end exactly when the outage run was measured) and for a status written before measured_at (only last_run_at)."""
    world = baked_into_an_outage()
    analysis = world.status.analysis
    assert analysis is not None and analysis.measured_at is not None
    if case == "ends_exactly_at_the_outage_run":
        duration = f"{int((analysis.measured_at - analysis.window_start).total_seconds())}s"
    else:
        duration = "20m"
        world.status = dataclasses.replace(world.status, analysis=dataclasses.replace(analysis, measured_at=None))
    world.judge = lambda _request: [verdict(Outcome.PASS)]  # Prometheus is back
    world.spec = {**world.spec, "bake": {"duration": duration, "baseline": "7d"}}
    world.generation += 1
    world.run_until(finished, step=timedelta(seconds=30))
    assert world.status.phase is Phase.SUCCEEDED and world.status.rollback is None


def test_a_rollback_waiting_to_unstage_says_so_not_that_it_waits_for_the_rejected_tag() -> None:
    """Superseded (never judged, nothing to tag): the status says the old candidate is being taken off the target."""
    world = staging_slowly()
    execute = world.execute

    def refused_unstage(action: Any) -> Any:
        if isinstance(action, UnstageCandidate):
            world.executed.append(action)
            return None, None, ActionFailure(action.id, AdapterError(AdapterErrorKind.UNAVAILABLE, "503"))
        return execute(action)

    world.execute = refused_unstage  # type: ignore[method-assign]
    name_version(world, "6")
    world.advance(timedelta(seconds=30))
    world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK
    assert ("taking version 7 off InferenceService nsfw-classifier before the new candidate starts"
            in world.status.message), world.status.message
    assert "tag the candidate rejected" not in world.status.message


def test_a_promotion_whose_rejected_flag_is_never_overruled_says_so_at_its_deadline() -> None:
    """The alias moved, the earlier rejection never cleared: the deadline's reason names the flag, not the alias."""
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"analysis": {"duration": "2m"}}]}, bake=None,
                                 progressDeadline="5m"))
    world.registry.versions["7"][REJECTED_TAG] = "true"  # an earlier attempt's verdict
    execute = world.execute

    def overrule_always_fails(action: Any) -> Any:
        out = execute(action)  # the alias moves; the overrule after it fails every time
        if isinstance(action, SetAlias) and action.promotion:
            return None, None, ActionFailure(action.id, AdapterError(AdapterErrorKind.UNAVAILABLE, "503"))
        return out

    world.execute = overrule_always_fails  # type: ignore[method-assign]
    world.run_until(lambda w: w.status.phase is not Phase.PROMOTING and w.status.promotion is not None,
                    step=timedelta(seconds=30), limit=200)
    assert world.status.rollback is not None, world.status.message
    assert f"the registry did not clear {REJECTED_TAG} on version 7 (@production moved)" in world.status.rollback.reason


def test_a_window_of_exactly_two_scrapes_that_counts_nothing_is_no_data() -> None:
    """Two scrapes fit a window of twice the interval: increase() can count it, so an empty answer is NoData (nothing
    counted), not TooFewScrapes (which would tell the user to lengthen a window that is long enough)."""
    prometheus = Garbage()
    prometheus.answer(200, EMPTY_VECTOR)
    prometheus.routes[("/api/v1/query", FRESHNESS)] = vector(2)
    prometheus.answer(200, EMPTY_VECTOR)
    prometheus.bodies["/api/v1/query_range"] = matrix()
    with serving(prometheus.server):
        request = AnalysisRequest("ns", "svc", "canary", NOW - 2 * SCRAPE, NOW, candidate_version="7")
        (verdict,) = run_analysis([METRIC], request, provider(prometheus))
    assert verdict.outcome is Outcome.INCONCLUSIVE, verdict
    assert "TooFewScrapes" not in verdict.reason, verdict.reason
    assert verdict.evidence.get("problem") == "NoData", verdict.evidence


def test_an_mlflow_alias_endpoint_404_names_mlflows_error_code() -> None:
    """A 404 that carries an MLflow error code (ENDPOINT_NOT_FOUND) says so, not 'without an MLflow error'."""
    mlflow = FakeMlflow()
    with serving(mlflow.server):
        registry = MlflowRegistry(mlflow.url, policy=RequestPolicy(timeout_seconds=3, max_retries=0))
        mlflow.answer(f"{API}/registered-models/get", 200, {"registered_model": {"name": "fraud"}})
        mlflow.answer(f"{API}/registered-models/alias", 404,
                      {"error_code": "ENDPOINT_NOT_FOUND", "message": "no such endpoint"})
        with pytest.raises(RegistryRequestError) as caught:
            registry.resolve_stable("fraud", "production")
    assert caught.value.message.endswith("GET registered-models/alias answered HTTP 404 ENDPOINT_NOT_FOUND"), \
        caught.value.message


def test_a_models_uri_template_is_recognised_whatever_the_schemes_case() -> None:
    """URI schemes are case-insensitive (RFC 3986): Models:/ is parsed as models:/ and the name must not break it."""

    with pytest.raises(ValueError, match="cannot go into the models:/ URI"):
        fill_storage_uri("Models:/{name}/{version}", name="fraud?v2", version="7", source="", run_id="")


def test_watch_does_not_stop_on_a_stuck_rollout_with_a_command_pending(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A retry the operator has not taken yet may unstick it: watch waits for it, as for a failed pause."""
    import time
    import types



    monkeypatch.setattr(oncall_module, "time", types.SimpleNamespace(
        sleep=lambda _s: None, monotonic=time.monotonic, strftime=time.strftime))
    world = World(target=Target(exists=False))
    world.reconcile()
    world.advance(timedelta(minutes=31))
    world.reconcile()
    world.send(CommandAction.RETRY, command_id="rt")
    stuck_with_retry = engine_rollout(world, command("retry", "rt"))
    assert oncall_module._stuck(stuck_with_retry) is not None
    api = FakeApi()
    with serving(api.server):
        api.script = [stuck_with_retry, stuck_with_retry, rollout("Succeeded", command("retry", "rt"), handled=("rt",))]
        assert main(["get", "r", "--watch", "--kubeconfig", api.kubeconfig(tmp_path)]) == 0 and api.gets == 3


def test_watch_waits_through_a_pause_step_whose_progressing_condition_is_false(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A pause step (Progressing False, reason PauseStep) is no missed progressDeadline: watch waits for promote."""
    import time
    import types



    monkeypatch.setattr(oncall_module, "time", types.SimpleNamespace(
        sleep=lambda _s: None, monotonic=time.monotonic, strftime=time.strftime))
    world = World()
    reach_final_pause(world)
    paused = engine_rollout(world)
    progressing = next(c for c in paused["status"]["conditions"] if c["type"] == "Progressing")
    assert progressing["status"] == "False" and progressing["reason"] == "PauseStep", progressing
    api = FakeApi()
    with serving(api.server):
        api.script = [paused, paused, rollout("Succeeded")]
        assert main(["get", "r", "--watch", "--kubeconfig", api.kubeconfig(tmp_path)]) == 0 and api.gets == 3


def test_a_target_that_cannot_be_read_holds_the_resolution_whatever_the_error() -> None:
    """Not only a missing target: one the operator cannot read (refused, away) also leaves the candidate unresolved,
    so nothing is in flight and spec.target can still be corrected."""

    world = World(target=Target(unreachable=True))
    world.reconcile()
    assert world.status.phase is Phase.PENDING and world.status.candidate is None
    assert world.status.message.startswith("Waiting to read InferenceService nsfw-classifier before starting version 7")


def test_rollback_after_success_on_a_target_reporting_no_version_is_refused_while_the_registry_is_away() -> None:
    """Neither the target nor the registry can say what serves: never act blind."""

    world = World(spec=spec_dict(bake=None))
    reach_final_pause(world)
    world.send(CommandAction.PROMOTE)
    world.run_until(finished)
    assert world.status.phase is Phase.SUCCEEDED
    world.target.stable_version = None
    world.registry.down = True
    world.advance(timedelta(days=1))
    world.executed.clear()
    world.send(CommandAction.ROLLBACK, actor="bob")
    world.reconcile()
    assert world.status.phase is Phase.SUCCEEDED and world.executed == []
    assert world.status.history[-1].event == "CommandIgnored"
    assert "cannot tell which version serves" in world.status.history[-1].detail


def test_the_unstage_a_new_version_waited_for_is_confirmed_in_the_ledger() -> None:
    world = staging_slowly()
    name_version(world, "6")
    tick(world, 5, timedelta(minutes=1))
    assert world.status.phase is Phase.SUCCEEDED and world.target.canary_version is None
    record = next(r for r in world.status.actions if r.id == "1:rollback:unstage")
    assert record.state is ActionState.CONFIRMED, record


def test_a_promotion_whose_canary_was_replaced_by_another_version_does_not_reject_the_candidate() -> None:
    """Another version staged in its place (a sync applied someone else's canary): this candidate vanished, nothing
    judged it bad, so it is not tagged rejected (only its own staged-but-not-ready revision is)."""
    world = World()
    reach_final_pause(world)
    world.target.canary_version, world.target.canary_weight = "8", 0  # someone else's canary replaced it
    world.send(CommandAction.PROMOTE)
    world.run_until(finished, step=timedelta(minutes=5))
    assert world.status.phase is Phase.ROLLED_BACK and world.status.rollback is not None
    assert world.status.rollback.cause is RollbackCause.PROGRESS_DEADLINE_EXCEEDED
    assert not world.status.rollback.reject_candidate
    assert not any(isinstance(action, TagRejected) for action in world.executed)
    assert REJECTED_TAG not in world.registry.versions["7"]
