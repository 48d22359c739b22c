"""A fake world for the engine tests: a registry, a serving target and judges, all in memory.

`World.reconcile()` plays the operator's part the way the operator is meant to: observe, decide, carry
out the actions, observe again (so judge results and confirmed effects reach the engine at once), and
write the final status. Faults (unreachable registry, missing target, 409s, crashes) are switches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from controller.api import Command, CommandAction, ModelRolloutSpec, ModelRolloutStatus, parse_spec
from controller.api.status import Phase
from controller.engine import (
    REJECTED_TAG,
    REJECTED_TIME_TAG,
    Action,
    ActionFailure,
    AdapterError,
    AdapterErrorKind,
    Decision,
    JudgeResult,
    Observations,
    PromoteCandidate,
    RegistryObservation,
    RemoveAlias,
    ResolvedVersion,
    RestoreStable,
    RunAnalysis,
    RunGate,
    SetAlias,
    SetCanaryWeight,
    StageCandidate,
    TagRejected,
    TargetObservation,
    UnstageCandidate,
    decide,
    rejection_time,
)
from controller.registry.types import PROMOTED_TIME_TAG, REJECTED_REASON_TAG
from controller.verdict import Outcome, Verdict

T0 = datetime(2026, 1, 5, 9, 0, 0, tzinfo=UTC)
SHA = "3f7c" + "0" * 60
# What a real gate reports for status.gate.report (controller/gate/runner.py), trimmed.
GATE_REPORT = {"dataset": {"sha256": SHA, "records": 1000, "classes": ["safe", "nsfw"]},
               "candidate": {"metrics": {"accuracy": 0.98, "perClass": {"nsfw": {"recall": 0.97, "fpr": 0.004}}}},
               "stable": {"metrics": {"accuracy": 0.975, "perClass": {"nsfw": {"recall": 0.96, "fpr": 0.005}}}},
               "comparison": {"disagreement": 0.012}}


def spec_dict(**overrides: Any) -> dict[str, Any]:
    """The DESIGN.md example spec, shortened durations; top-level keys can be replaced."""
    spec: dict[str, Any] = {
        "model": {"name": "nsfw-classifier", "version": "7", "stableAlias": "production"},
        "target": {"kserve": {"inferenceService": "nsfw-classifier"}},
        "goldenDataset": {"uri": "mlflow-artifacts:/golden/nsfw-v3.jsonl", "sha256": SHA,
                          "thresholds": {"minAccuracy": 0.97, "classes": {"nsfw": {"minRecall": 0.95}}}},
        "canary": {"steps": [
            {"setWeight": 1}, {"analysis": {"duration": "10m"}},
            {"setWeight": 10}, {"analysis": {"duration": "10m"}},
            {"setWeight": 50}, {"pause": {}},
        ]},
        "analysis": {
            "prometheus": {"address": "http://prometheus.monitoring:9090"},
            "interval": "30s",
            "metrics": [{"name": "nsfw-rate",
                         "proportion": {"events": "e{{selector}}", "total": "t{{selector}}", "maxRate": 0.05}}],
            "onInconclusive": "pause",
        },
        "rollback": {"automatic": True},
        "bake": {"duration": "1h", "baseline": "7d"},
        "progressDeadline": "30m",
    }
    spec.update(overrides)
    return spec


def verdict(outcome: Outcome, name: str = "nsfw-rate", reason: str = "") -> Verdict:
    reason = reason or {
        Outcome.PASS: "canary 0.2% (1/500) vs stable 0.2% (98/49k)",
        Outcome.FAIL: "canary 6.2% (31/500) vs stable 0.2% (98/49k), p<1e-9",
        Outcome.INCONCLUSIVE: "only 40 canary samples, need 200",
    }[outcome]
    return Verdict(name=name, outcome=outcome, reason=reason, evidence={"canary": [31, 500], "stable": [98, 49000]})


@dataclass
class Registry:
    versions: dict[str, dict[str, str]] = field(default_factory=lambda: {"6": {}, "7": {}, "8": {}})
    aliases: dict[str, str] = field(default_factory=lambda: {"production": "6"})
    down: bool = False
    statuses: dict[str, str] = field(default_factory=dict)  # MLflow registration status, READY if not given
    sourceless: set[str] = field(default_factory=set)
    sources: dict[str, str] = field(default_factory=dict)  # registered sources; default models:/nsfw/<v>
    slow_promotion: bool = False  # a promotion's alias move is accepted but does not show (yet)

    def resolve(self, version: str | None) -> ResolvedVersion | None:
        if version is None or version not in self.versions:
            return None
        return ResolvedVersion(version=version, run_id=f"run-{version}",
                               source=None if version in self.sourceless else self.sources.get(
                                   version, f"models:/nsfw/{version}"),
                               lineage={"dataset": "nsfw-v3"}, tags=dict(self.versions[version]),
                               status=self.statuses.get(version, "READY"))


@dataclass
class Target:
    exists: bool = True
    ready: bool = True
    stable_version: str | None = "6"
    canary_version: str | None = None
    canary_weight: int | None = None
    canary_ready_at: datetime | None = None
    never_ready: bool = False  # a staged revision that never becomes ready
    unreachable: bool = False
    ignore_weights: bool = False  # raising the weight or promoting is accepted but never takes effect
    frozen: bool = False  # no traffic change takes effect (a stuck controller)
    ready_delay: timedelta = timedelta(0)
    detail: str = ""  # what the router says is wrong or pending

    def observe(self, now: datetime) -> TargetObservation:
        if self.unreachable:
            return TargetObservation(error=AdapterError(AdapterErrorKind.UNAVAILABLE, "connection refused"))
        if not self.exists:
            return TargetObservation(error=AdapterError(AdapterErrorKind.NOT_FOUND,
                                                        'inferenceservices "nsfw-classifier" not found'))
        canary_ready = (self.canary_version is not None and not self.never_ready
                        and self.canary_ready_at is not None and now >= self.canary_ready_at)
        return TargetObservation(ready=self.ready, stable_version=self.stable_version,
                                 canary_version=self.canary_version, canary_ready=canary_ready,
                                 canary_weight=self.canary_weight,
                                 detail="RevisionMissing: revision failed" if self.never_ready else self.detail)


Judge = Callable[[RunAnalysis], list[Verdict]]
_PARSED: dict[str, ModelRolloutSpec] = {}


def _parse_cached(key: str, raw: dict[str, Any]) -> ModelRolloutSpec:
    if key not in _PARSED:
        _PARSED[key] = parse_spec(raw)
    return _PARSED[key]


@dataclass
class World:
    spec: dict[str, Any] = field(default_factory=spec_dict)
    registry: Registry = field(default_factory=Registry)
    target: Target = field(default_factory=Target)
    now: datetime = T0
    generation: int = 1
    status: ModelRolloutStatus = field(default_factory=ModelRolloutStatus)
    gate_verdicts: list[Verdict] = field(default_factory=lambda: [verdict(Outcome.PASS, "accuracy", "0.98")])
    judge: Judge = field(default_factory=lambda: (lambda _request: [verdict(Outcome.PASS)]))
    gate_error: AdapterError | None = None
    analysis_error: AdapterError | None = None
    conflict_ids: set[str] = field(default_factory=set)  # actions answered with 409, once each
    command: Command | None = None  # the annotation: stays until replaced, like the real one
    executed: list[Action] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    # Called with every decide call's status, observations and decision (the property test's checks).
    on_decision: Callable[[ModelRolloutStatus, Observations, Decision], None] | None = None
    crash_after: int | None = None  # kill the operator mid-reconcile (see reconcile)
    restarted: bool = False  # the operator process started anew since the last reconcile
    deleting: bool = False  # metadata.deletionTimestamp is set (to the time deleting was first seen)
    deleted_at: datetime | None = None

    @property
    def parsed_spec(self) -> ModelRolloutSpec:
        return _parse_cached(repr(self.spec), self.spec)

    def send(self, action: CommandAction, actor: str = "alice", full: bool = False, command_id: str = "") -> Command:
        self.command = Command(id=command_id or f"cmd-{len(self.executed)}-{action}-{self.now.timestamp()}",
                               action=action, actor=actor, full=full)
        return self.command

    def observe(self, gate: JudgeResult | None = None, analysis: JudgeResult | None = None,
                failures: tuple[ActionFailure, ...] = (), done: tuple[str, ...] = ()) -> Observations:
        spec = self.parsed_spec
        if self.registry.down:
            down = AdapterError(AdapterErrorKind.UNAVAILABLE, "mlflow: connection refused")
            registry = RegistryObservation(error=down)
        else:
            wanted = spec.model.version if spec.model.version else self.registry.aliases.get(spec.model.alias or "")
            candidate = self.registry.resolve(wanted)
            # As the operator does: while rolling back or promoting a version the spec no longer names, that one too.
            own = self.status.candidate.version if self.status.candidate and \
                self.status.phase in (Phase.ROLLING_BACK, Phase.PROMOTING, Phase.PAUSED) else None
            moved_on = own is not None and (candidate is None or candidate.version != own)
            seen = self.registry.resolve(own) if moved_on else None
            rolling_back = self.status.phase is Phase.ROLLING_BACK
            registry = RegistryObservation(
                candidate=candidate,
                stable_alias_version=self.registry.resolve(self.registry.aliases.get(spec.model.stable_alias)),
                rolled_back=seen if rolling_back else None,
                rolled_back_gone=rolling_back and moved_on and seen is None,
                candidate_gone=moved_on and seen is None)
        return Observations(generation=self.generation, registry=registry, target=self.target.observe(self.now),
                            gate=gate, analysis=analysis,
                            commands=(self.command,) if self.command else (), action_failures=failures,
                            actions_done=done,
                            resend_pending=self.restarted, deleted_at=self._deleted_at())

    def _deleted_at(self) -> datetime | None:
        if self.deleting and self.deleted_at is None:
            self.deleted_at = self.now
        return self.deleted_at if self.deleting else None

    def execute(self, action: Action) -> tuple[JudgeResult | None, JudgeResult | None, ActionFailure | None]:
        """Carry out one action the way an idempotent adapter would."""
        self.executed.append(action)
        if action.id in self.conflict_ids:
            self.conflict_ids.discard(action.id)
            return None, None, ActionFailure(action.id, AdapterError(AdapterErrorKind.CONFLICT, "409 conflict"))
        target = self.target
        traffic = StageCandidate | SetCanaryWeight | PromoteCandidate | RestoreStable | UnstageCandidate
        if isinstance(action, traffic) and (target.unreachable or not target.exists):
            return None, None, ActionFailure(action.id, AdapterError(AdapterErrorKind.NOT_FOUND, "no target"))
        if isinstance(action, traffic) and target.frozen:
            return None, None, None
        if isinstance(action, SetAlias | RemoveAlias | TagRejected) and self.registry.down:
            return None, None, ActionFailure(action.id, AdapterError(AdapterErrorKind.UNAVAILABLE, "mlflow down"))
        if isinstance(action, StageCandidate):
            if target.canary_version != action.candidate.version:
                target.canary_version = action.candidate.version
                target.canary_ready_at = self.now + target.ready_delay
            target.canary_weight = 0
        elif isinstance(action, SetCanaryWeight):
            if not (target.ignore_weights and action.weight > (target.canary_weight or 0)):
                target.canary_weight = action.weight if target.canary_version or action.weight else None
        elif isinstance(action, PromoteCandidate):
            if not target.ignore_weights:
                target.stable_version = action.candidate.version
                target.canary_version, target.canary_weight = None, None
        elif isinstance(action, RestoreStable):
            target.stable_version, target.canary_version, target.canary_weight = action.stable.version, None, None
        elif isinstance(action, UnstageCandidate):
            target.canary_version, target.canary_weight, target.canary_ready_at = None, None, None
        elif isinstance(action, SetAlias):
            if not (action.promotion and self.registry.slow_promotion):
                self.registry.aliases[action.alias] = action.version
                promotion = self.status.promotion
                if action.promotion and promotion is not None:  # as promote() does once the alias moved
                    self.registry.versions[action.version][PROMOTED_TIME_TAG] = rejection_time(promotion.started_at)
        elif isinstance(action, RemoveAlias):
            if self.registry.aliases.get(action.alias) == action.version:
                del self.registry.aliases[action.alias]
        elif isinstance(action, TagRejected):
            self.registry.versions[action.version][REJECTED_REASON_TAG] = action.reason
            self.registry.versions[action.version][REJECTED_TAG] = "true"
            self.registry.versions[action.version][REJECTED_TIME_TAG] = rejection_time(action.rejected_at)
        elif isinstance(action, RunGate):
            if self.gate_error:
                return JudgeResult(action.id, error=self.gate_error), None, None
            # The data it was asked for: a real gate reports the hash it read, and fails a mismatch itself.
            return JudgeResult(action.id, tuple(self.gate_verdicts), dataset_sha256=action.dataset.sha256,
                               report=GATE_REPORT), None, None
        elif isinstance(action, RunAnalysis):
            if self.analysis_error:
                return None, JudgeResult(action.id, error=self.analysis_error), None
            return None, JudgeResult(action.id, tuple(self.judge(action))), None
        return None, None, None

    def reconcile(self, rounds: int = 6) -> Decision:
        """One operator reconcile: decide, write status, act, observe again, until nothing new to do.

        Status is written before the actions run, so a crash between the two leaves the actions recorded
        as pending and the next reconcile sends them once; a crash after acting leaves their effects to be
        observed. `crash_after` stops the reconcile after that many writes and action batches.
        """
        spec = self.parsed_spec
        decision = self._decide(spec, self.observe())
        self.restarted = False
        budget = self.crash_after  # writes and action batches left before the crash; None: no crash
        for round_number in range(rounds):
            self.decisions.append(decision)
            if budget == 0:
                break
            # The real operator writes JSON; go through it so the round trip is exercised every time.
            self.status = ModelRolloutStatus.from_dict(decision.status.to_dict())
            budget = None if budget is None else budget - 1
            if not decision.actions or budget == 0 or round_number == rounds - 1:
                break
            gate = analysis = None
            failures: list[ActionFailure] = []
            done: list[str] = []
            for action in decision.actions:
                gate_result, analysis_result, failure = self.execute(action)
                gate = gate_result or gate
                analysis = analysis_result or analysis
                if failure:
                    failures.append(failure)
                elif not isinstance(action, RunGate | RunAnalysis):
                    done.append(action.id)
            budget = None if budget is None else budget - 1
            decision = self._decide(spec, self.observe(gate, analysis, tuple(failures), tuple(done)))
            if failures:
                # Record the failures; the requeue backoff paces the retry.
                self.decisions.append(decision)
                if budget != 0:
                    self.status = ModelRolloutStatus.from_dict(decision.status.to_dict())
                break
        if self.crash_after is not None:
            self.restarted = True
        self.crash_after = None
        return decision

    def _decide(self, spec: ModelRolloutSpec, observations: Observations) -> Decision:
        decision = decide(spec, self.status, observations, self.now)
        if self.on_decision is not None:
            self.on_decision(self.status, observations, decision)
        return decision

    def advance(self, by: timedelta) -> None:
        self.now += by

    def run_until(self, done: Callable[[World], bool], step: timedelta = timedelta(seconds=30),
                  limit: int = 2000) -> Decision:
        decision = self.reconcile()
        for _ in range(limit):
            if done(self):
                return decision
            self.advance(step)
            decision = self.reconcile()
        raise AssertionError(f"not done after {limit} reconciles; phase {self.status.phase}: {self.status.message}")


def promotion_sent_to_a_frozen_target() -> World:
    """A rollout paused before promotion, `promote` sent to a target frozen so that it has not taken it yet."""
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.target.frozen = True
    world.send(CommandAction.PROMOTE)
    sent = len(world.executed)
    world.advance(timedelta(seconds=30))
    world.reconcile()
    assert [a for a in world.executed[sent:] if isinstance(a, PromoteCandidate)]
    return world
