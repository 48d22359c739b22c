"""Property test: random specs and random sequences of time, verdicts, commands, faults and crashes.

After every decide call the invariants below must hold; at the end, with the faults cleared, the rollout
must settle (terminal, or paused waiting for a human).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine_support import SHA, World, spec_dict, verdict

from controller.api import (
    ACTION_LOG_LIMIT,
    HANDLED_COMMANDS_LIMIT,
    HISTORY_LIMIT,
    TERMINAL_PHASES,
    ActionState,
    AnalysisStep,
    CommandAction,
    GoldenDatasetSpec,
    ModelRolloutStatus,
    Phase,
    parse_spec,
)
from controller.engine import (
    ActionType,
    Decision,
    Observations,
    PromoteCandidate,
    RunAnalysis,
    SetCanaryWeight,
    StageCandidate,
    TagRejected,
)
from controller.verdict import Outcome, combine

OUTCOMES = [Outcome.PASS, Outcome.PASS, Outcome.PASS, Outcome.FAIL, Outcome.INCONCLUSIVE]
FAILURE_EVENTS = {"AnalysisFailed", "BakeFailed", "GateFailed"}


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    weight = 0
    for _ in range(draw(st.integers(1, 4))):
        weight = draw(st.integers(weight, 100))
        steps.append({"setWeight": weight})
        follow = draw(st.sampled_from(["analysis", "analysis", "pause", "timed-pause", "none"]))
        if follow == "analysis":
            steps.append({"analysis": {"duration": f"{draw(st.integers(1, 4))}m"}})
        elif follow == "pause":
            steps.append({"pause": {}})
        elif follow == "timed-pause":
            steps.append({"pause": {"duration": f"{draw(st.integers(1, 3))}m"}})
    if weight == 0:  # the CRD and the parser refuse steps that never send the candidate any traffic
        steps.append({"setWeight": draw(st.integers(1, 100))})
    spec = spec_dict(
        canary={"steps": steps},
        rollback={"automatic": draw(st.booleans())},
        bake={"duration": "10m", "baseline": "3d"} if draw(st.booleans()) else None,
        progressDeadline=f"{draw(st.integers(2, 8))}m",
    )
    spec["analysis"]["onInconclusive"] = draw(st.sampled_from(["pause", "rollback"]))
    spec["analysis"]["interval"] = draw(st.sampled_from(["20s", "30s", "1m"]))
    return spec


ticks = st.tuples(st.just("tick"), st.sampled_from([1, 5, 20, 30, 60, 120, 300, 900]))
operations = st.one_of(
    ticks, ticks, ticks,
    st.tuples(st.just("judges"), st.sampled_from(OUTCOMES)),
    st.tuples(st.just("gate"), st.sampled_from(OUTCOMES)),
    st.tuples(st.just("command"), st.sampled_from(["abort", "promote", "promote-full", "retry", "rollback",
                                                   "repeat"])),
    st.tuples(st.just("registry"), st.booleans()),
    st.tuples(st.just("target"), st.sampled_from(["ok", "ok", "unreachable", "missing", "never-ready", "frozen",
                                                  "ignore", "slow"])),
    st.tuples(st.just("conflict"), st.booleans()),
    st.tuples(st.just("crash"), st.integers(0, 4)),
    st.tuples(st.just("new-candidate"), st.booleans()),
    st.tuples(st.just("re-pin"), st.booleans()),
    st.tuples(st.just("thresholds"), st.booleans()),
    st.tuples(st.just("delete"), st.booleans()),
    st.tuples(st.just("steps"), st.booleans()),
)
OTHER_SHA = "9a1e" + "0" * 60


@dataclass
class Checker:
    """Invariants over every decide call of one run."""

    world: World
    confirmed: set[str] = field(default_factory=set)
    actions_by_id: dict[str, Any] = field(default_factory=dict)
    failed_since: bool = False  # a failing verdict was acted on and no human has overridden it since
    overridden_attempts: set[int] = field(default_factory=set)
    last_step_outcome: dict[tuple[int, int | None], Outcome] = field(default_factory=dict)
    last_gate_outcome: dict[int, Outcome] = field(default_factory=dict)
    last_gate_dataset: dict[int, str] = field(default_factory=dict)
    last_gate_thresholds: dict[int, Any] = field(default_factory=dict)
    judged_attempts: set[int] = field(default_factory=set)  # a check failed them, or a human rolled them back
    decisions: int = 0
    # Steps edited: they start again from the first, so their weights are sent again (README) and an analysis
    # step of the list now may not be the one promotion followed.
    steps_edited: bool = False
    previous: Decision | None = None  # its actions count as handed out once its status was written

    def __call__(self, before: ModelRolloutStatus, observations: Observations, decision: Decision) -> None:
        self.decisions += 1
        after = decision.status
        self._status_is_well_formed(after)
        self._confirmed_actions_are_never_repeated(before, decision)
        self._commands_are_applied_at_most_once(before, decision)
        self._failing_verdicts_are_never_ignored(before, observations, decision)
        self._weight_never_rises_after_a_failure(before, decision)
        self._promotion_only_after_every_step_passed(before, decision)
        self._traffic_only_after_a_gate_on_the_pinned_data(decision)
        self._terminal_states_are_true(before, decision)
        self._rejected_only_when_judged(decision)

    # -- invariants --

    def _status_is_well_formed(self, status: ModelRolloutStatus) -> None:
        assert isinstance(status.phase, Phase)
        assert status.to_dict()["phase"] in {item.value for item in Phase}
        assert len(status.history) <= HISTORY_LIMIT
        assert len(status.actions) <= ACTION_LOG_LIMIT
        assert len(status.handled_commands) <= HANDLED_COMMANDS_LIMIT
        assert status.message and "\n" not in status.message and status.message.endswith(".")
        assert status.canary_weight is None or 0 <= status.canary_weight <= 100
        steps = len(parse_spec(self.world.spec).canary.steps)
        assert status.current_step is None or 0 <= status.current_step <= steps
        assert ModelRolloutStatus.from_dict(copy.deepcopy(status.to_dict())) == status
        types = [condition.type for condition in status.conditions]
        assert len(types) == len(set(types))
        for condition in status.conditions:
            assert condition.status in ("True", "False", "Unknown")
            assert condition.reason and condition.reason[0].isupper() and " " not in condition.reason

    def _confirmed_actions_are_never_repeated(self, before: ModelRolloutStatus, decision: Decision) -> None:
        self.confirmed |= {record.id for record in before.actions if record.state is ActionState.CONFIRMED}
        if self.previous is not None and self.previous.status == before:
            # Written, so its actions may have run: from now on one id must always mean the same action.
            for action in self.previous.actions:
                self.actions_by_id.setdefault(action.id, action)
        for action in decision.actions:
            if not (self.steps_edited and ":step-" in action.id):
                assert action.id not in self.confirmed, f"{action.id} sent again after it was confirmed"
            known = self.actions_by_id.get(action.id, action)
            assert known == action, f"{action.id} changed meaning: {known} -> {action}"
        self.previous = decision
        assert decision.requeue_after is None or decision.requeue_after > timedelta(0)

    def _commands_are_applied_at_most_once(self, before: ModelRolloutStatus, decision: Decision) -> None:
        for entry in decision.events:
            if entry.command_id is not None:
                assert entry.command_id not in before.handled_commands, f"command {entry.command_id} applied twice"

    def _failing_verdicts_are_never_ignored(self, before: ModelRolloutStatus, observations: Observations,
                                            decision: Decision) -> None:
        result = observations.analysis
        analysis = before.analysis
        commanded = any(entry.command_id for entry in decision.events)
        if (result is not None and result.error is None and analysis is not None and not commanded
                and result.request_id == analysis.request_id and before.phase in (Phase.PROGRESSING, Phase.PAUSED,
                                                                                Phase.BAKING)
                and combine(list(result.verdicts)) is Outcome.FAIL
                and before.candidate == decision.status.candidate):
            assert FAILURE_EVENTS & {entry.event for entry in decision.events}, "failing verdict ignored"

    def _weight_never_rises_after_a_failure(self, before: ModelRolloutStatus, decision: Decision) -> None:
        events = {entry.event for entry in decision.events}
        human = any(entry.event in ("CommandApplied", "GateOverridden") and
                    entry.detail.startswith(("promote", "retry")) for entry in decision.events)
        new_attempt = decision.status.attempt != before.attempt or decision.status.candidate != before.candidate
        if human or new_attempt:
            self.failed_since = False
        failing_now = bool(FAILURE_EVENTS & events)
        if self.failed_since or failing_now:
            for action in decision.actions:
                assert not isinstance(action, StageCandidate | PromoteCandidate), f"{action} after a failure"
                if isinstance(action, SetCanaryWeight):
                    assert action.weight == 0, f"weight raised to {action.weight} after a failing verdict"
        self.failed_since = self.failed_since or failing_now

    def _promotion_only_after_every_step_passed(self, before: ModelRolloutStatus, decision: Decision) -> None:
        status = decision.status
        if any(entry.command_id and entry.event in ("CommandApplied", "GateOverridden")
               and entry.detail.startswith("promote") for entry in decision.events):
            self.overridden_attempts.add(status.attempt)
        for action in decision.actions:
            if not isinstance(action, PromoteCandidate) or status.attempt in self.overridden_attempts:
                continue
            if status.stable is None:
                continue  # first rollout: no canary possible
            spec = parse_spec(self.world.spec)
            if spec.golden_dataset is not None:
                assert self.last_gate_outcome.get(status.attempt) is Outcome.PASS, "promoted past a gate"
            for index, step in enumerate(() if self.steps_edited else spec.canary.steps):
                if isinstance(step, AnalysisStep):
                    outcome = self.last_step_outcome.get((status.attempt, index))
                    assert outcome is Outcome.PASS, f"promoted with step {index} at {outcome}"
            assert self.world.target.canary_version == action.candidate.version or \
                self.world.target.stable_version == action.candidate.version

    def _traffic_only_after_a_gate_on_the_pinned_data(self, decision: Decision) -> None:
        status = decision.status
        if status.attempt in self.overridden_attempts or status.stable is None:
            return  # a human went past the gate; a first rollout has no canary
        pinned = parse_spec(self.world.spec).golden_dataset
        for action in decision.actions:
            if isinstance(action, SetCanaryWeight) and action.weight > 0 and pinned is not None:
                gated_on = self.last_gate_dataset.get(status.attempt)
                assert gated_on == pinned.sha256, f"weight {action.weight} on a gate of {gated_on}, not {pinned.sha256}"
                assert self.last_gate_thresholds.get(status.attempt) == pinned.thresholds, "gated by other thresholds"

    def _rejected_only_when_judged(self, decision: Decision) -> None:
        attempt = decision.status.attempt
        if any(entry.event == "GateOverridden" or (entry.event == "CommandApplied" and entry.detail.startswith(
                ("retry", "promote"))) for entry in decision.events):
            self.judged_attempts.discard(attempt)  # a human went on past the failure: it no longer stands
        if any(entry.event in FAILURE_EVENTS or (entry.event == "CommandApplied" and entry.detail.startswith(
                ("abort", "rollback"))) or (entry.event == "RollbackStarted" and entry.detail.startswith(
                "ProgressDeadline")) for entry in decision.events):
            self.judged_attempts.add(attempt)
        for action in decision.actions:
            if isinstance(action, TagRejected):
                assert attempt in self.judged_attempts, f"{action.version} tagged rejected, nothing judged it"

    def _terminal_states_are_true(self, before: ModelRolloutStatus, decision: Decision) -> None:
        status = decision.status
        if status.phase is before.phase:
            return
        target, registry = self.world.target, self.world.registry
        if (status.phase is Phase.ROLLED_BACK and status.rollback is not None and status.stable is not None
                and target.exists):
            assert not target.canary_weight
            assert registry.aliases.get("production") == status.stable.version
        if status.phase is Phase.SUCCEEDED and status.candidate is not None:
            assert registry.aliases.get("production") == status.candidate.version
            assert target.stable_version == status.candidate.version or status.promotion is None
            if status.promotion is None:  # AlreadyStable: only what a readable, ready target does not contradict
                assert target.exists and not target.unreachable and target.ready
                assert target.stable_version in (status.candidate.version, None)

    # -- what the judges answered, for the promotion check --

    def record_judge(self, request: RunAnalysis, outcome: Outcome) -> None:
        attempt = int(request.id.split(":")[0])
        if str(request.mode) == "canary" and request.step_index is not None:
            self.last_step_outcome[(attempt, request.step_index)] = outcome

    def record_gate(self, request_id: str, outcome: Outcome, dataset: GoldenDatasetSpec) -> None:
        attempt = int(request_id.split(":")[0])
        self.last_gate_outcome[attempt] = outcome
        self.last_gate_dataset[attempt] = dataset.sha256
        self.last_gate_thresholds[attempt] = dataset.thresholds


def apply(world: World, checker: Checker, operation: tuple[str, Any], state: dict[str, Any]) -> None:
    kind, value = operation
    target = world.target
    if kind == "tick":
        world.advance(timedelta(seconds=value))
    elif kind == "judges":
        state["judges"] = value
    elif kind == "gate":
        world.gate_verdicts = [verdict(value, "accuracy")]
    elif kind == "command":
        if value == "repeat":
            if world.command is not None:
                world.command = copy.copy(world.command)  # same id again, like a stale annotation
        else:
            action = CommandAction.PROMOTE if value == "promote-full" else CommandAction(value)
            state["commands"] += 1
            world.send(action, actor="oncall", full=value == "promote-full", command_id=f"c{state['commands']}")
    elif kind == "registry":
        world.registry.down = value
    elif kind == "target":
        target.unreachable = value == "unreachable"
        target.exists = value != "missing"
        if not target.exists:  # deleting the object drops its canary; it comes back as it was created
            target.canary_version, target.canary_weight, target.canary_ready_at = None, None, None
        target.never_ready = value == "never-ready"
        target.frozen = value == "frozen"
        target.ignore_weights = value == "ignore"
        target.ready_delay = timedelta(minutes=2) if value == "slow" else timedelta(0)
    elif kind == "conflict":
        if value:
            world.conflict_ids = {record.id for record in world.status.actions
                                  if record.state is ActionState.PENDING}
    elif kind == "crash":
        world.crash_after = value
    elif kind == "new-candidate" and value:
        current = world.spec["model"]["version"]
        world.spec["model"] = {**world.spec["model"], "version": "8" if current == "7" else "7"}
        world.generation += 1
    elif kind == "re-pin" and value:
        dataset = world.spec["goldenDataset"]
        world.spec["goldenDataset"] = {**dataset, "sha256": OTHER_SHA if dataset["sha256"] == SHA else SHA}
        world.generation += 1
    elif kind == "thresholds" and value:
        dataset = world.spec["goldenDataset"]
        minimum = 0.96 if dataset["thresholds"].get("minAccuracy") == 0.97 else 0.97
        world.spec["goldenDataset"] = {**dataset, "thresholds": {**dataset["thresholds"], "minAccuracy": minimum}}
        world.generation += 1
    elif kind == "steps" and value:
        # Edited at any time, also once the steps are over: shortened to its last weight, or back as it was.
        steps = world.spec["canary"]["steps"]
        original = state.setdefault("steps", steps)
        last = [step for step in original if "setWeight" in step][-1]
        world.spec["canary"] = {**world.spec["canary"], "steps": [last] if steps == original else original}
        world.generation += 1
        checker.steps_edited = True
    elif kind == "delete" and value:
        world.spec["rollback"] = {**world.spec["rollback"], "revertOnDeletion": True}
        world.generation += 1
        world.deleting = True
    world.reconcile()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs(), first_outcome=st.sampled_from(OUTCOMES), script=st.lists(operations, min_size=1, max_size=40))
def test_invariants_hold_for_any_sequence(spec: dict[str, Any], first_outcome: Outcome,
                                          script: list[tuple[str, Any]]) -> None:
    """first_outcome: what the judges say until a "judges" operation changes it."""
    world = World(spec=spec)
    checker = Checker(world)
    world.on_decision = checker
    state: dict[str, Any] = {"judges": first_outcome, "commands": 0}

    def judge(request: RunAnalysis) -> list:
        outcome = state["judges"]
        checker.record_judge(request, outcome)
        return [verdict(outcome)]

    world.judge = judge
    gate_execute = world.execute

    def execute(action: Any) -> Any:
        result = gate_execute(action)
        if action.type is ActionType.RUN_GATE and result[0] is not None and result[0].error is None:
            checker.record_gate(action.id, combine(list(result[0].verdicts)), action.dataset)
        return result

    world.execute = execute  # type: ignore[method-assign]
    for operation in script:
        apply(world, checker, operation, state)

    # Faults clear, time goes on, nobody types anything: the rollout must settle by itself.
    world.registry.down = False
    world.target.unreachable = world.target.frozen = world.target.ignore_weights = world.target.never_ready = False
    world.target.exists = True
    world.conflict_ids = set()
    for _ in range(400):
        if world.status.phase in TERMINAL_PHASES or (world.status.phase is Phase.PAUSED and not world.deleting and (
                world.status.pause is None or world.status.pause.until is None)):
            break
        world.advance(timedelta(minutes=1))
        world.reconcile()
    status = world.status
    assert status.phase in TERMINAL_PHASES or (status.phase is Phase.PAUSED and not world.deleting), \
        (status.phase, status.message)
    if status.phase is Phase.ROLLED_BACK and status.rollback is not None:
        assert status.rollback.recovered_at is not None
        assert status.rollback.time_to_recover_seconds is not None and status.rollback.time_to_recover_seconds >= 0
