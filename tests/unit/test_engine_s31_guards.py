"""Mutation review s31mut: its three defects on HEAD, and the rules its surviving mutants broke unseen.

- a metric's queries edited mid-window: the new query's counts are not compared with the old one's (DataLost);
- a withdrawal owed only for the router's record that keeps failing ends at progressDeadline, said in
  TrafficRestored, instead of holding the rollback open for ever;
- a rollout being deleted without revertOnDeletion follows no steps edit, runs no gate, ends no timed pause, and
  still finishes a rollback under way (the guards are no early return);
- a proportion that reads a fixed range in one count is not "grows from the window's start" (W1); an abort leaves a
  canary share the candidate was never seen on alone (O5); a stuck rollback is looked at every tenth of its lateness
  (T3)."""

from __future__ import annotations

import copy
from datetime import timedelta

from test_engine_data_lost_s30 import counted, to_the_last_run_of_step_one, window_spec
from test_engine_final_run import STEP, rollback_spec
from test_engine_support import World, spec_dict, verdict
from test_engine_withdraw_record_s30 import _FailingWorld, _paused_at, _steps, _synced_away, withdrawals

from controller.api import CommandAction, Phase
from controller.engine import AdapterError, AdapterErrorKind, RunAnalysis, RunGate, TagRejected
from controller.verdict import DATA_LOST, Outcome, Verdict


def _events(world: World, since: int = 0) -> list[str]:
    return [entry.event for entry in world.status.history[since:]]


# --- DataLost across a spec edit ----------------------------------------------------------------------------------


def test_a_total_query_narrowed_mid_step_is_not_data_lost() -> None:
    """On-call fixes the total a minute before the step ends (it also counted another model's predictions): the new
    query counts a sixth of the old one's. Nothing was lost from Prometheus: the step is judged on the new query."""
    world = World(spec=window_spec())
    share = {"k": 1.0}

    def judge(request: RunAnalysis) -> list[Verdict]:
        seconds = (world.now - request.window_start).total_seconds()
        return [counted(Outcome.PASS, 10 * seconds * share["k"], 40 * seconds * share["k"])]

    world.judge = judge
    world.run_until(lambda w: w.status.analysis is not None and w.status.analysis.step_index == 1
                    and w.status.analysis.runs >= 1)
    assert world.status.analysis is not None and world.status.analysis.ends_at is not None
    ends = world.status.analysis.ends_at
    while world.now + timedelta(minutes=1) < ends:
        world.advance(timedelta(seconds=30))
        world.reconcile()
    spec = copy.deepcopy(world.spec)
    spec["analysis"]["metrics"][0]["proportion"]["total"] = 'sum(increase(t{{selector}}[{{window}}]))  # model only'
    world.spec, share["k"] = spec, 0.15
    world.generation += 1
    start = world.now
    while world.now - start < timedelta(minutes=5):
        world.advance(timedelta(seconds=30))
        world.reconcile()
        assert DATA_LOST not in world.status.message, world.status.message
    assert world.status.phase is Phase.PROGRESSING and (world.status.current_step or 0) >= 2, world.status.message
    assert "RollbackStarted" not in _events(world)


def test_counts_are_compared_only_between_runs_that_asked_the_same_queries() -> None:
    from controller.engine.decide import QUERIES_SIGNATURE, _data_lost  # here: the other tests run on older code

    def _signed(item: Verdict, signature: str | None) -> Verdict:
        return item if signature is None else Verdict(item.name, item.outcome, item.reason,
                                                      {**item.evidence, QUERIES_SIGNATURE: signature})

    now = counted(Outcome.PASS, 100, 400)
    for earlier_signature, lost in (("a", True), ("b", False), (None, True)):  # None: an older operator's status
        before = (_signed(counted(Outcome.PASS, 1000, 4000), earlier_signature),)
        (item,) = _data_lost((now,), before, bake=False, asked={"nsfw-rate": "a"})
        assert (item.evidence.get("problem") == DATA_LOST) is lost, (earlier_signature, item)
        assert item.evidence[QUERIES_SIGNATURE] == "a"  # what the next run compares with


# --- a withdrawal owed for the router's record only -----------------------------------------------------------------


def test_a_withdrawal_kept_failing_for_the_routers_record_ends_the_rollback_at_the_deadline_saying_so() -> None:
    world = _FailingWorld(spec=_steps())  # progressDeadline 10m
    world.errors = [AdapterErrorKind.NOT_FOUND] * 1000
    _paused_at(world, 10)
    _synced_away(world)  # no user is on the candidate
    sent = len(world.executed)
    world.send(CommandAction.ABORT, command_id="abort-forever")
    start = world.now
    world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK
    while world.status.phase is Phase.ROLLING_BACK and world.now - start < timedelta(hours=1):
        decision = world.reconcile()
        world.advance(max(decision.requeue_after or timedelta(seconds=30), timedelta(seconds=30)))
    assert world.status.phase is Phase.ROLLED_BACK, world.status.message
    assert world.now - start < timedelta(minutes=12)  # soon after progressDeadline
    assert 1 < len(withdrawals(world, sent)) < 20
    restored = [entry.detail for entry in world.status.history if entry.event == "TrafficRestored"]
    assert len(restored) == 1 and "router's record of candidate 7 could not be cleared" in restored[0], restored
    assert "NotFound: no" in restored[0], restored


def test_a_refused_withdrawal_for_the_routers_record_is_said_in_traffic_restored() -> None:
    world = _FailingWorld(spec=_steps())
    world.errors = [AdapterErrorKind.INVALID]
    _paused_at(world, 10)
    _synced_away(world)
    world.send(CommandAction.ABORT, command_id="abort-refused")
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=20))
    restored = [entry.detail for entry in world.status.history if entry.event == "TrafficRestored"]
    assert len(restored) == 1 and "could not be cleared" in restored[0] and "Invalid: no" in restored[0], restored


def test_a_withdrawal_that_went_through_says_nothing_of_the_routers_record() -> None:
    world = World(spec=_steps())
    _paused_at(world, 10)
    _synced_away(world)
    world.send(CommandAction.ABORT, command_id="abort-clean")
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=5))
    restored = [entry.detail for entry in world.status.history if entry.event == "TrafficRestored"]
    assert len(restored) == 1 and "could not be cleared" not in restored[0], restored


# --- being deleted without revertOnDeletion -------------------------------------------------------------------------


def test_a_steps_edit_while_being_deleted_is_not_followed() -> None:
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]}, bake=None))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.deleting = True
    world.generation += 1
    world.reconcile()
    before = len(world.status.history)
    spec = copy.deepcopy(world.spec)
    spec["canary"] = {"steps": [{"setWeight": 20}, {"pause": {}}]}
    world.spec = spec
    world.generation += 1
    world.advance(timedelta(seconds=5))
    world.reconcile()
    assert "StepsChanged" not in _events(world, before)
    assert world.status.phase is Phase.PAUSED and world.status.current_step == 1 and world.status.pause is not None
    assert world.target.canary_weight == 10


def test_a_gate_pending_while_being_deleted_is_not_run_and_tags_nothing() -> None:
    """G1c: a gate that would fail, not answered yet when the delete comes."""
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]}, bake=None))
    world.gate_verdicts = [verdict(Outcome.FAIL, "accuracy", "0.90 < 0.97")]
    world.gate_error = AdapterError(AdapterErrorKind.UNAVAILABLE, "gate job pending")
    world.run_until(lambda w: w.status.phase is Phase.GATING, step=timedelta(seconds=5))
    world.reconcile()
    world.deleting = True
    world.generation += 1
    sent = len(world.executed)
    world.gate_error = None
    for _ in range(30):
        world.advance(timedelta(seconds=20))
        world.reconcile()
    assert not [a for a in world.executed[sent:] if isinstance(a, RunGate | TagRejected)], world.executed[sent:]
    assert world.status.phase is Phase.GATING and "being deleted" in world.status.message, world.status.message


def test_a_timed_pause_running_out_while_being_deleted_moves_on_to_nothing() -> None:
    """G1b: the pause ends during the delete; the rollout stays as it was, not Progressing at a step it never sets."""
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {"duration": "2m"}},
                                                   {"setWeight": 50}, {"pause": {}}]}, bake=None))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED, step=timedelta(seconds=5))
    world.deleting = True
    world.generation += 1
    before = len(world.status.history)
    for _ in range(13):
        world.reconcile()
        world.advance(timedelta(seconds=30))
    assert "PauseEnded" not in _events(world, before)
    assert world.status.phase is Phase.PAUSED and world.status.current_step == 1
    assert world.target.canary_weight == 10


def test_a_rollback_under_way_when_deleted_without_revert_still_finishes() -> None:
    """ONE: the deletion guards are no early return; else the candidate keeps its share with nothing to own it."""
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]}, bake=None))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.target.frozen = True  # the abort's withdrawal does not take effect at once
    world.send(CommandAction.ABORT, command_id="abort-g")
    world.reconcile()
    assert world.status.phase is Phase.ROLLING_BACK and world.target.canary_weight == 10
    world.target.frozen = False
    world.deleting = True
    world.generation += 1
    for _ in range(30):
        world.advance(timedelta(seconds=10))
        world.reconcile()
    assert world.status.phase is Phase.ROLLED_BACK, world.status.message
    assert not world.target.canary_weight


def test_a_pending_rollout_being_deleted_says_it_is_left_as_it_is() -> None:
    world = World()
    world.deleting = True
    world.reconcile()
    assert world.executed == [] and world.status.phase is Phase.PENDING
    assert world.status.message.startswith("The ModelRollout is being deleted: left as it is in Pending")


# --- surviving mutants ----------------------------------------------------------------------------------------------


def test_a_proportion_whose_total_reads_a_fixed_range_is_not_data_lost_when_traffic_halves() -> None:
    """W1: only counts that both read the window from its start only grow."""
    spec = rollback_spec()
    spec["analysis"]["metrics"][0]["proportion"].update(events="sum(increase(e{{selector}}[{{window}}]))",
                                                         total="sum(increase(t{{selector}}[1m]))")
    world = World(spec=spec)
    traffic = {"now": 1000.0}
    world.judge = lambda request: [counted(Outcome.PASS, traffic["now"], 4 * traffic["now"])]
    to_the_last_run_of_step_one(world)
    traffic["now"] = 500.0  # the 1m total halves with the traffic
    world.advance(STEP)
    world.reconcile()
    assert DATA_LOST not in world.status.message, world.status.message
    assert (world.status.current_step or 0) > 1, world.status.message


def test_an_abort_leaves_a_canary_share_the_candidate_was_never_seen_on_alone() -> None:
    """O5: someone else's canary (no version of ours on it), our staging never seen: nothing of ours to withdraw."""
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]}, bake=None))
    world.target.canary_version, world.target.canary_weight = None, 10
    world.target.frozen = True  # our staging has not taken effect
    world.reconcile()
    sent = len(world.executed)
    world.send(CommandAction.ABORT, command_id="abort-o5")
    world.target.frozen = False
    for _ in range(20):
        world.advance(timedelta(seconds=5))
        world.reconcile()
    assert world.status.phase is Phase.ROLLED_BACK, world.status.message
    assert withdrawals(world, sent) == [] and world.target.canary_weight == 10


def test_a_stuck_rollback_is_looked_at_every_tenth_of_its_lateness() -> None:
    """T3: 2 and 4 minutes past the deadline, the target not ready: every 12 and 24 seconds."""
    world = World(spec=spec_dict(canary={"steps": [{"setWeight": 10}, {"pause": {}}]}, bake=None,
                                 progressDeadline="10m"))
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.target.ready = False
    world.send(CommandAction.ABORT, command_id="a")
    world.reconcile()
    world.advance(timedelta(minutes=12))
    world.reconcile()
    assert world.reconcile().requeue_after == timedelta(seconds=12)
    world.advance(timedelta(minutes=2))
    world.reconcile()
    assert world.reconcile().requeue_after == timedelta(seconds=24)


# --- review s31r3eng ------------------------------------------------------------------------------------------------


def test_whitespace_is_no_query_edit_for_data_lost() -> None:
    """A query rewritten as a YAML block gains a newline: the same question, so a loss in that run is still seen."""
    from controller.api.spec import parse_spec
    from controller.engine.decide import metric_signature

    def signature(total: str) -> str:
        spec = parse_spec(spec_dict(analysis={"metrics": [{"name": "nsfw-rate", "proportion": {
            "events": 'sum(increase(m{class="nsfw", {{selector}}}[{{window}}]))', "total": total}}]}))
        return metric_signature(spec.analysis.metrics[0])

    plain = signature("sum(increase(m{{{selector}}}[{{window}}]))")
    assert signature("sum(increase(m{{{selector}}}[{{window}}]))\n") == plain
    assert signature("sum(increase(m{{{selector}}}[{{window}}]))  ") == plain
    assert signature("sum(increase(m{{{selector}}}[5m]))") != plain


class _OutageWorld(World):
    """The router refuses connections to the withdrawal while `unreachable` (an outage, not a refusal)."""

    def execute(self, action):  # type: ignore[no-untyped-def]
        from controller.engine import ActionFailure, SetCanaryWeight
        if isinstance(action, SetCanaryWeight) and action.withdraw and self.target.unreachable:
            self.executed.append(action)
            refused = AdapterError(AdapterErrorKind.UNAVAILABLE, "connection refused")
            return None, None, ActionFailure(action.id, refused)
        return super().execute(action)


def test_a_withdrawal_kept_out_by_an_outage_past_the_deadline_is_still_sent_once_the_router_answers() -> None:
    """The router unreachable for 15 minutes (progressDeadline 10m) while the abort's withdrawal is retried, and an
    Argo CD sync took the candidate off meanwhile: once the router answers, the withdrawal is sent to it (and the
    record cleared), not given up at once as if the router had turned it down."""
    world = _OutageWorld(spec=_steps())
    _paused_at(world, 10)
    world.target.unreachable = True
    sent = len(world.executed)
    world.send(CommandAction.ABORT, command_id="abort-outage")
    start = world.now
    while world.now - start < timedelta(minutes=15):
        decision = world.reconcile()
        world.advance(max(decision.requeue_after or timedelta(seconds=30), timedelta(seconds=30)))
    assert world.status.phase is Phase.ROLLING_BACK
    world.target.unreachable = False
    world.target.canary_version, world.target.canary_weight = None, None
    during = len(withdrawals(world, sent))
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(seconds=5), limit=40)
    assert len(withdrawals(world, sent)) - during == 1
    restored = [entry.detail for entry in world.status.history if entry.event == "TrafficRestored"]
    assert restored and "could not be cleared" not in restored[-1], restored
