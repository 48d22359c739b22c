"""The typed API: durations, spec parsing (the DESIGN.md section 3 contract), status round trip, commands."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.api import (
    COMMAND_ANNOTATION,
    AnalysisStep,
    Command,
    CommandAction,
    CommandError,
    Condition,
    ConditionStatus,
    GateStatus,
    HistoryEntry,
    ModelRolloutStatus,
    OnInconclusive,
    PauseStep,
    Phase,
    RollbackCause,
    RollbackStatus,
    SetWeightStep,
    SpecError,
    TargetKind,
    VersionRef,
    format_duration,
    parse_command,
    parse_duration,
    parse_spec,
)
from controller.api.serialization import format_time, parse_time
from controller.gate.judge import JudgeSettings, judge
from controller.gate.runner import golden_dataset_from
from controller.verdict import Outcome, Verdict
from tests.unit.test_gate_judge import SHA, tally

DESIGN_EXAMPLE = """
model:
  name: nsfw-classifier
  version: "7"
  stableAlias: production
registry:
  trackingUri: http://mlflow.mlops:5000
  credentialsSecretRef: {name: mlflow-token}
target:
  kserve: {inferenceService: nsfw-classifier}
goldenDataset:
  uri: mlflow-artifacts:/golden/nsfw-v3.jsonl
  sha256: 3f7c000000000000000000000000000000000000000000000000000000000000
  thresholds:
    minAccuracy: 0.97
    maxAccuracyDrop: 0.005
    maxDisagreement: 0.01
    classes:
      nsfw: {maxFalsePositiveRate: 0.01, minRecall: 0.95}
canary:
  steps:
    - setWeight: 1
    - analysis: {duration: 10m}
    - setWeight: 10
    - analysis: {duration: 10m}
    - setWeight: 50
    - pause: {}
analysis:
  prometheus: {address: http://prometheus.monitoring:9090}
  interval: 30s
  metrics:
    - name: nsfw-rate
      proportion:
        events: sum(increase(modelrollout_predictions_total{class="nsfw", {{selector}}}[{{window}}]))
        total:  sum(increase(modelrollout_predictions_total{{{selector}}}[{{window}}]))
      maxRelativeIncrease: 0.5
      maxRate: 0.05
      confidence: 0.99
      minSamples: 200
    - name: error-rate
      threshold: {query: "...", max: 0.01}
  onInconclusive: pause
rollback: {automatic: true}
bake:
  duration: 24h
  baseline: 7d
progressDeadline: 30m
"""


def example() -> dict[str, Any]:
    """DESIGN.md's example, with the proportion limits inside `proportion` where the CRD has them."""
    spec: dict[str, Any] = yaml.safe_load(DESIGN_EXAMPLE)
    metric = spec["analysis"]["metrics"][0]
    for key in ("maxRelativeIncrease", "maxRate", "confidence", "minSamples"):
        metric["proportion"][key] = metric.pop(key)
    return spec


def test_reads_proportion_limits_where_design_md_writes_them() -> None:
    spec = parse_spec(yaml.safe_load(DESIGN_EXAMPLE))  # limits beside `proportion`, as in DESIGN.md
    proportion = spec.analysis.metrics[0].proportion
    assert proportion is not None
    assert (proportion.max_relative_increase, proportion.max_rate, proportion.min_samples) == (0.5, 0.05, 200)


# --- durations ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("30s", timedelta(seconds=30)), ("10m", timedelta(minutes=10)), ("24h", timedelta(hours=24)),
    ("7d", timedelta(days=7)), ("1h30m", timedelta(minutes=90)), ("500ms", timedelta(milliseconds=500)),
    ("0s", timedelta(0)), ("1d2h3m4s5ms", timedelta(days=1, hours=2, minutes=3, seconds=4, milliseconds=5)),
])
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "10", "m", "1.5h", "-5m", "10 m", "5w", "10M", "1h 30m"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_parse_duration_refuses_non_strings() -> None:
    with pytest.raises(ValueError):
        parse_duration(30)  # type: ignore[arg-type]


@settings(deadline=None)  # a loaded CI machine may pause one example past 200 ms
@given(st.integers(min_value=0, max_value=10**11))
def test_format_duration_round_trips(milliseconds: int) -> None:
    duration = timedelta(milliseconds=milliseconds)
    assert parse_duration(format_duration(duration)) == duration


def test_format_duration_is_short() -> None:
    assert format_duration(timedelta(minutes=90)) == "1h30m"
    assert format_duration(timedelta(days=7)) == "7d"
    assert format_duration(timedelta(0)) == "0s"


# --- spec --------------------------------------------------------------------------------------------


def test_parses_the_design_example() -> None:
    spec = parse_spec(example())
    assert spec.model.name == "nsfw-classifier"
    assert spec.model.version == "7" and spec.model.alias is None
    assert spec.model.stable_alias == "production"
    assert spec.model.candidate_ref == "version 7"
    assert spec.registry.tracking_uri == "http://mlflow.mlops:5000"
    assert spec.registry.credentials_secret_ref is not None
    assert spec.registry.credentials_secret_ref.name == "mlflow-token"
    assert spec.target.kind is TargetKind.KSERVE
    assert spec.target.name == "nsfw-classifier"
    assert spec.target.description == "InferenceService nsfw-classifier"
    golden = spec.golden_dataset
    assert golden is not None and golden.sha256.startswith("3f7c")
    assert golden.thresholds.min_accuracy == 0.97
    assert golden.thresholds.max_accuracy_drop == 0.005
    assert golden.thresholds.max_disagreement == 0.01
    assert golden.thresholds.classes["nsfw"].max_false_positive_rate == 0.01
    assert golden.thresholds.classes["nsfw"].min_recall == 0.95
    assert spec.canary.steps == (
        SetWeightStep(1), AnalysisStep(timedelta(minutes=10)), SetWeightStep(10),
        AnalysisStep(timedelta(minutes=10)), SetWeightStep(50), PauseStep(None))
    assert spec.analysis.prometheus is not None
    assert spec.analysis.prometheus.address == "http://prometheus.monitoring:9090"
    assert spec.analysis.interval == timedelta(seconds=30)
    assert spec.analysis.on_inconclusive is OnInconclusive.PAUSE
    nsfw, errors = spec.analysis.metrics
    assert nsfw.name == "nsfw-rate" and nsfw.proportion is not None and nsfw.threshold is None
    assert nsfw.proportion.max_relative_increase == 0.5
    assert nsfw.proportion.max_rate == 0.05
    assert nsfw.proportion.confidence == 0.99
    assert nsfw.proportion.min_samples == 200
    assert "{{selector}}" in nsfw.proportion.events
    assert errors.threshold is not None and errors.threshold.max == 0.01 and errors.threshold.min is None
    assert spec.rollback.automatic is True
    assert spec.bake is not None
    assert spec.bake.duration == timedelta(hours=24) and spec.bake.baseline == timedelta(days=7)
    assert spec.progress_deadline == timedelta(minutes=30)


def test_defaults_for_optional_fields() -> None:
    spec = parse_spec({
        "model": {"name": "m", "alias": "challenger"},
        "target": {"seldonExperiment": {"name": "exp"}},
        "canary": {"steps": [{"setWeight": 5}, {"pause": {"duration": "5m"}}]},
        "goldenDataset": {"uri": "configmap://golden/set.jsonl", "sha256": "ab" * 32},
    })
    assert spec.model.alias == "challenger" and spec.model.candidate_ref == "alias @challenger"
    assert spec.model.stable_alias == "production"
    assert spec.target.kind is TargetKind.SELDON_EXPERIMENT and spec.target.name == "exp"
    assert spec.golden_dataset is not None and spec.golden_dataset.thresholds.min_accuracy is None
    assert spec.canary.steps[1] == PauseStep(timedelta(minutes=5))
    assert spec.analysis.interval == timedelta(seconds=30)
    assert spec.analysis.on_inconclusive is OnInconclusive.PAUSE
    assert spec.rollback.automatic is True and spec.rollback.revert_on_deletion is False
    assert spec.bake is None
    assert spec.progress_deadline == timedelta(minutes=30)


def test_seldon_deployment_target() -> None:
    raw = example()
    raw["target"] = {"seldonDeployment": {"name": "nsfw", "stablePredictor": "main", "canaryPredictor": "canary"}}
    spec = parse_spec(raw)
    assert spec.target.kind is TargetKind.SELDON_DEPLOYMENT
    assert spec.target.seldon_deployment is not None
    assert spec.target.seldon_deployment.canary_predictor == "canary"
    assert spec.target.description == "SeldonDeployment nsfw"


def test_unknown_fields_are_ignored() -> None:
    raw = example()
    raw["futureField"] = {"x": 1}
    raw["model"]["somethingNew"] = True
    assert parse_spec(raw).model.name == "nsfw-classifier"


def _broken(path: list[str | int], value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(example())
    node: Any = raw
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return raw


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "field"), [
    (["model", "alias"], "challenger", "spec.model"),
    (["model", "version"], _DELETE, "spec.model"),
    (["model", "name"], _DELETE, "spec.model.name"),
    (["model", "version"], 7, "spec.model.version"),
    (["target"], {}, "spec.target"),
    (["target"], {"kserve": {"inferenceService": "a"}, "seldonExperiment": {"name": "b"}}, "spec.target"),
    (["target", "kserve"], {}, "spec.target.kserve.inferenceService"),
    (["target"], {"seldonDeployment": {"name": "s", "stablePredictor": "a", "canaryPredictor": "a"}},
     "spec.target.seldonDeployment.canaryPredictor"),
    (["goldenDataset", "sha256"], "latest", "spec.goldenDataset.sha256"),
    (["goldenDataset", "thresholds", "minAccuracy"], 1.5, "spec.goldenDataset.thresholds.minAccuracy"),
    (["goldenDataset", "thresholds", "classes", "nsfw", "minRecall"], "high",
     "spec.goldenDataset.thresholds.classes[nsfw].minRecall"),
    # Written, thresholds must judge something: else the gate can never pass (the CRD refuses these too).
    (["goldenDataset", "thresholds"], {}, "spec.goldenDataset.thresholds"),
    (["goldenDataset", "thresholds"], {"classes": {}}, "spec.goldenDataset.thresholds"),
    (["goldenDataset", "thresholds", "classes", "nsfw"], {}, "spec.goldenDataset.thresholds.classes[nsfw]"),
    # A bare `pause:` is null, which the API server drops: refused as a step that sets nothing, as there.
    (["canary", "steps", 5], {"pause": None}, "spec.canary.steps[5]"),
    (["canary", "steps", 2, "setWeight"], 101, "spec.canary.steps[2].setWeight"),
    (["canary", "steps", 2, "setWeight"], True, "spec.canary.steps[2].setWeight"),
    (["canary", "steps", 4, "setWeight"], 5, "spec.canary.steps[4].setWeight"),
    (["canary", "steps", 1], {"analysis": {"duration": "ten minutes"}}, "spec.canary.steps[1].analysis.duration"),
    (["canary", "steps", 1], {"analysis": {}}, "spec.canary.steps[1].analysis.duration"),
    (["canary", "steps", 1], {"setWeight": 1, "pause": {}}, "spec.canary.steps[1]"),
    (["canary", "steps", 5], {"pause": {"duration": "soon"}}, "spec.canary.steps[5].pause.duration"),
    (["canary", "steps"], "all at once", "spec.canary.steps"),
    (["analysis", "interval"], "0s", "spec.analysis.interval"),
    (["analysis", "onInconclusive"], "ignore", "spec.analysis.onInconclusive"),
    (["analysis", "metrics", 1], {"name": "x"}, "spec.analysis.metrics[1]"),
    (["analysis", "metrics", 1], {"name": "nsfw-rate", "threshold": {"query": "q", "max": 1}},
     "spec.analysis.metrics"),
    (["analysis", "metrics", 1, "threshold"], {"query": "q"}, "spec.analysis.metrics[1].threshold"),
    (["analysis", "metrics", 1, "threshold"], {"query": "q", "min": 2, "max": 1},
     "spec.analysis.metrics[1].threshold.min"),
    (["analysis", "metrics", 1, "threshold"], {"query": "q", "max": 1, "failureLimit": -1},
     "spec.analysis.metrics[1].threshold.failureLimit"),
    (["analysis", "metrics", 1, "threshold"], {"query": "q", "max": 1, "failureLimit": 1.5},
     "spec.analysis.metrics[1].threshold.failureLimit"),
    (["analysis", "metrics", 0, "proportion", "confidence"], 1.0,
     "spec.analysis.metrics[0].proportion.confidence"),
    (["analysis", "metrics", 0, "proportion", "minSamples"], 0, "spec.analysis.metrics[0].proportion.minSamples"),
    (["analysis", "metrics"], [], "spec.analysis.metrics"),
    (["rollback", "automatic"], "yes", "spec.rollback.automatic"),
    (["rollback", "revertOnDeletion"], "true", "spec.rollback.revertOnDeletion"),
    (["rollback"], "on", "spec.rollback"),
    (["bake", "duration"], "a day", "spec.bake.duration"),
    (["bake", "duration"], "0s", "spec.bake.duration"),
    (["bake", "duration"], "9999999999d", "spec.bake.duration"),  # overflowed the clock arithmetic
    (["progressDeadline"], "3651d", "spec.progressDeadline"),
    (["analysis", "metrics", 0, "proportion", "maxRelativeIncrease"], 101,
     "spec.analysis.metrics[0].proportion.maxRelativeIncrease"),
    (["target", "kserve", "stableUrl"], "http://u:p@stable.example", "spec.target.kserve.stableUrl"),
    (["canary", "steps", 1], {"analysis": {"duration": "0m"}}, "spec.canary.steps[1].analysis.duration"),
    (["analysis", "metrics", 0, "proportion", "maxRate"], 0, "spec.analysis.metrics[0].proportion.maxRate"),
    (["analysis", "metrics", 0, "proportion", "maxRate"], 1, "spec.analysis.metrics[0].proportion.maxRate"),
    (["bake", "baseline"], "2d", "spec.bake.baseline"),
    (["bake", "baseline"], "3d12h", "spec.bake.baseline"),
    (["progressDeadline"], "0s", "spec.progressDeadline"),
    (["progressDeadline"], "forever", "spec.progressDeadline"),
    (["analysis", "metrics", 0, "proportion", "total"], "sum(x)", "spec.analysis.metrics[0].proportion.total"),
    (["analysis", "interval"], "999ms", "spec.analysis.interval"),
    (["registry"], {"trackingUri": "http://[::1"}, "spec.registry.trackingUri"),
    (["registry"], {"trackingUri": "http://u:p@mlflow:5000"}, "spec.registry.trackingUri"),
    (["analysis", "prometheus", "address"], "http://prom:9090/?token=t", "spec.analysis.prometheus.address"),
    (["analysis", "prometheus", "address"], "http://prom:99999", "spec.analysis.prometheus.address"),
    (["target", "kserve", "candidateUrl"], "http://gate:abc/v2", "spec.target.kserve.candidateUrl"),
    (["goldenDataset", "uri"], "https://b.example/g.jsonl?X-Amz-Signature=s", "spec.goldenDataset.uri"),
    (["goldenDataset", "uri"], "mlflow-artifacts://[::1/x", "spec.goldenDataset.uri"),
    (["model", "stableAlias"], "LATEST", "spec.model.stableAlias"),  # MLflow reserves it in any case
    (["model", "stableAlias"], "V3", "spec.model.stableAlias"),
])
def test_bad_specs_name_the_field(path: list[str | int], value: Any, field: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(_broken(path, value))
    assert caught.value.path == field
    assert str(caught.value).startswith(field + ": ")


def test_candidate_alias_must_differ_from_stable_alias() -> None:
    raw = example()
    raw["model"] = {"name": "m", "alias": "production"}
    with pytest.raises(SpecError, match=r"spec\.model\.alias"):
        parse_spec(raw)


def test_bake_without_duration_is_refused_not_silently_skipped() -> None:
    raw = example()
    raw["bake"] = {"baseline": "7d"}
    with pytest.raises(SpecError, match=r"^spec\.bake\.duration: is required"):
        parse_spec(raw)


def test_proportion_limits_are_written_in_one_place_and_only_for_a_proportion() -> None:
    both = yaml.safe_load(DESIGN_EXAMPLE)
    both["analysis"]["metrics"][0]["proportion"]["maxRate"] = 0.1  # and beside it: 0.05
    with pytest.raises(SpecError) as caught:
        parse_spec(both)
    assert caught.value.path == "spec.analysis.metrics[0].maxRate"
    on_threshold = example()
    on_threshold["analysis"]["metrics"][1]["minSamples"] = 50
    with pytest.raises(SpecError) as caught:
        parse_spec(on_threshold)
    assert caught.value.path == "spec.analysis.metrics[1].minSamples"


def test_spec_is_frozen() -> None:
    spec = parse_spec(example())
    with pytest.raises(AttributeError):
        spec.model = spec.model  # type: ignore[misc]


# --- status ------------------------------------------------------------------------------------------


def _rich_status() -> ModelRolloutStatus:
    moment = datetime(2026, 1, 5, 9, 12, 0, 250000, tzinfo=UTC)
    failing = Verdict("nsfw-rate", Outcome.FAIL, "canary 6.2% (31/500) vs stable 0.2% (98/49k), p<1e-9",
                      {"canary": {"events": 31, "total": 500}, "p": 1e-10})
    return ModelRolloutStatus(
        phase=Phase.ROLLED_BACK, observed_generation=3,
        message="Rolled back: nsfw-rate canary 6.2% (31/500) vs stable 0.2% (98/49k), p<1e-9, at step 4/6 (10%).",
        attempt=2, started_at=moment, completed_at=moment,
        candidate=VersionRef("7", run_id="abc", source="mlflow-artifacts:/1/abc", lineage={"dataset": "v3"}),
        stable=VersionRef("6"), current_step=3, canary_weight=0,
        gate=GateStatus(request_id="2:gate-1", outcome=Outcome.PASS, verdicts=(
            Verdict("accuracy", Outcome.PASS, "0.98 >= 0.97", {"accuracy": 0.98}),), dataset_sha256="ab" * 32),
        rollback=RollbackStatus(cause=RollbackCause.ANALYSIS_FAILED, reason="nsfw-rate ...", verdict_at=moment,
                                from_step=3, from_weight=10, evidence={"verdicts": [failing.to_dict()]},
                                traffic_confirmed_at=moment, recovered_at=moment, time_to_recover_seconds=0.84),
        conditions=(Condition("Ready", ConditionStatus.FALSE, "RolledBack", "Rolled back.",
                              datetime(2026, 1, 5, 9, 12, tzinfo=UTC), 3),),
        history=(HistoryEntry(moment, "RolledBack", "nsfw-rate ..."),
                 HistoryEntry(moment, "CommandApplied", "abort", actor="alice", command_id="c1")),
        handled_commands=("c1",), judge_requests=41)


def test_status_round_trip() -> None:
    status = _rich_status()
    raw = status.to_dict()
    assert json.loads(json.dumps(raw)) == raw  # plain JSON
    assert ModelRolloutStatus.from_dict(raw) == status


def test_status_dict_uses_the_contract_names() -> None:
    raw = _rich_status().to_dict()
    assert {"phase", "observedGeneration", "message", "candidate", "stable", "currentStep", "canaryWeight",
            "gate", "conditions", "history"} <= raw.keys()
    assert raw["phase"] == "RolledBack"
    assert raw["candidate"] == {"version": "7", "runId": "abc", "source": "mlflow-artifacts:/1/abc",
                                "lineage": {"dataset": "v3"}}
    assert raw["stable"] == {"version": "6", "lineage": {}}
    condition = raw["conditions"][0]
    assert condition == {"type": "Ready", "status": "False", "reason": "RolledBack", "message": "Rolled back.",
                         "lastTransitionTime": "2026-01-05T09:12:00Z", "observedGeneration": 3}
    assert raw["history"][1] == {"time": "2026-01-05T09:12:00.25Z", "event": "CommandApplied", "detail": "abort",
                                 "actor": "alice", "commandId": "c1"}
    assert raw["rollback"]["timeToRecoverSeconds"] == 0.84
    assert "analysis" not in raw  # None fields are left out


def test_empty_status_is_a_fresh_pending_rollout() -> None:
    assert ModelRolloutStatus.from_dict(None) == ModelRolloutStatus()
    assert ModelRolloutStatus.from_dict({}).phase is Phase.PENDING


def test_reads_the_skeleton_operators_status() -> None:
    skeleton = {"phase": "Pending", "observedGeneration": 1, "message": "Waiting.",
                "conditions": [{"type": "Ready", "status": "False", "reason": "Pending", "message": "Waiting.",
                                "lastTransitionTime": "2026-01-05T09:00:00Z", "observedGeneration": 1}],
                "history": [{"time": "2026-01-05T09:00:00Z", "event": "Observed", "detail": "generation 1",
                             "actor": "modelrollout-controller"}]}
    status = ModelRolloutStatus.from_dict(skeleton)
    assert status.history[0].event == "Observed"
    assert status.to_dict()["conditions"] == skeleton["conditions"]


def test_status_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        ModelRolloutStatus.from_dict({"phase": "Exploded"})
    with pytest.raises(ValueError):
        ModelRolloutStatus.from_dict({"currentStep": "two"})


def test_times_are_rfc3339_utc() -> None:
    moment = datetime(2026, 1, 5, 9, 0, 0, tzinfo=UTC)
    assert format_time(moment) == "2026-01-05T09:00:00Z"
    assert parse_time("2026-01-05T10:00:00+01:00") == moment
    with pytest.raises(ValueError):
        format_time(datetime(2026, 1, 5))


# --- commands ----------------------------------------------------------------------------------------


def test_parse_command() -> None:
    command = parse_command('{"action":"promote","id":"u-1","actor":"alice"}')
    assert command == Command(id="u-1", action=CommandAction.PROMOTE, actor="alice")
    full = parse_command('{"action":"promote","id":"u-2","actor":"bob","full":true}')
    assert full.full and full.label == "promote --full"
    assert parse_command('{"action":"promote-full","id":"u-3","actor":"bob"}').full
    assert parse_command(full.to_annotation()) == full
    assert COMMAND_ANNOTATION == "modelrollout.io/command"


@pytest.mark.parametrize(("text", "problem"), [
    ("not json", "not JSON"),
    ("[1]", "JSON object"),
    ('{"action":"explode","id":"a","actor":"b"}', "action must be one of"),
    ('{"action":"abort","actor":"b"}', "id"),
    ('{"action":"abort","id":"a"}', "actor"),
    ('{"action":"abort","id":"a","actor":"b","full":true}', "only to promote"),
    ('{"action":"promote","id":"a","actor":"b","full":"yes"}', "full"),
    ('{"action":"abort","id":"a","actor":"b","id":"c"}', "'id' appears more than once"),
    ('{"action":"abort","action":"abort","id":"a","actor":"b"}', "'action' appears more than once"),
    ('{"action":"abort","id":"a","actor":"b","reason":"x"}', r"unknown key\(s\) 'reason'"),
    ('{"action":"abort","id":"a","actor":"b","Actor":"c"}', r"unknown key\(s\) 'Actor'"),
    ('{"action":"abort","id":"a","actor":{"name":"b"}}', "'actor' must be a string or boolean, not an object"),
    ('{"action":"abort","id":["a"],"actor":"b"}', "'id' must be a string or boolean, not an object or array"),
    ('{"action":"promote","id":"a","actor":"b","full":[true]}', "'full' must be a string or boolean"),
    # Recorded in status.history and shown in a terminal: no escape sequences, no bidi overrides.
    ('{"action":"abort","id":"a","actor":"\\u001b[2Jmallory"}', "actor must be printable text"),
    ('{"action":"abort","id":"a","actor":"alice\\u202e"}', "actor must be printable text"),
    ('{"action":"abort","id":"a\\nb","actor":"alice"}', "id must be printable text"),
    ('{"action":"abort","id":"a","actor":"' + "x" * 513 + '"}', "at most 512"),
])
def test_parse_command_refuses(text: str, problem: str) -> None:
    with pytest.raises(CommandError, match=problem):
        parse_command(text)


@pytest.mark.parametrize(("text", "problem"), [
    # json.loads alone keeps the last one, alice, while the text holds `"actor": "bob"` for the policy to find.
    ('{"actor": "bob", "actor": "alice"}', "'actor' appears more than once"),
    ('{"action": "abort", "id": "a", "actor": "bob", "actor": "alice"}', "'actor' appears more than once"),
    # The policy would find bob's `"actor": "bob"` in the nested object; the command's actor would be alice.
    ('{"actor": "alice", "x": {"actor": "bob"}}', "unknown key"),
    ('{"action": "abort", "id": "a", "actor": "alice", "x": {"actor": "bob"}}', "unknown key"),
    ('{"action": "abort", "id": {"actor": "bob"}, "actor": "alice"}', "'id' must be a string or boolean"),
    # A key that merely ends in actor: its text holds `"actor": "bob"` too (the escaped quote starts it).
    ('{"action": "abort", "id": "a", "actor": "alice", "x\\"actor": "bob"}', "unknown key"),
])
def test_parse_command_refuses_a_second_actor_the_admission_policy_could_match(text: str, problem: str) -> None:
    """The admission policy checks the text for `"actor": "<requester>"`: bob must not be able to pass it while
    the controller records alice."""
    assert '"actor": "bob"' in text
    with pytest.raises(CommandError, match=problem):
        parse_command(text)


def test_command_annotation_is_what_the_admission_policy_looks_for() -> None:
    """json.dumps' separator, and a non-ASCII name written as itself (not \\u-escaped), as the API server has it."""
    for actor in ("alice", "system:serviceaccount:ops:pager", "zoë", "渡辺"):
        command = Command(id="u-1", action=CommandAction.ABORT, actor=actor)
        text = command.to_annotation()
        assert f'"actor": "{actor}"' in text
        assert parse_command(text) == command
    assert parse_command('{"action":"abort","id":"u-1","actor":"zo\\u00eb"}').actor == "zoë"  # still read


ALICE_ABORTS = '{"action": "abort", "id": "a", "actor": "alice", '


@pytest.mark.parametrize("text", [ALICE_ABORTS + '"x": ' + "[" * 100_000 + "]" * 100_000 + "}",  # past recursion
                                  ALICE_ABORTS + '"n": ' + "9" * 5_000 + "}"])  # past Python's digit limit
def test_a_command_the_parser_cannot_read_is_a_command_error_not_an_exception(text: str) -> None:
    with pytest.raises(CommandError, match="cannot be read"):
        parse_command(text)



def _with_model(**model: str) -> dict[str, Any]:
    raw = example()
    raw["model"] = {"name": "nsfw", **model}
    return raw


def test_a_candidate_alias_that_promotion_would_move_is_refused() -> None:
    with pytest.raises(SpecError, match="undo the promotion") as refused:
        parse_spec(_with_model(alias="production-previous"))
    assert refused.value.path == "spec.model.alias"
    with pytest.raises(SpecError, match="undo the promotion"):
        parse_spec(_with_model(alias="gold-previous", stableAlias="gold"))
    assert parse_spec(_with_model(alias="gold-previous")).model.alias == "gold-previous"


def test_a_selector_only_in_a_promql_comment_is_no_selector() -> None:
    """The canary would be compared with itself: refused naming the field (the CRD's rule reads the comment the
    same way: test_spec_crd_parity)."""
    raw = example()
    proportion = raw["analysis"]["metrics"][0]["proportion"]
    proportion["events"] = 'sum(increase(modelrollout_predictions_total{class="nsfw"}[{{window}}])) # {{selector}}'
    with pytest.raises(SpecError, match=r"must use \{\{selector\}\}") as caught:
        parse_spec(raw)
    assert caught.value.path == "spec.analysis.metrics[0].proportion.events"
    # A `#` inside a label value is no comment: the selector after it is real.
    proportion["events"] = 'sum(increase(modelrollout_predictions_total{class="#nsfw", {{selector}}}[{{window}}]))'
    assert parse_spec(raw).analysis.metrics[0].proportion is not None


def test_a_bare_pause_says_how_to_write_a_pause_and_a_null_beside_a_step_is_ignored() -> None:
    raw = example()
    raw["canary"]["steps"][5] = {"pause": None}
    with pytest.raises(SpecError, match=r"write `pause: \{\}` for a pause until promoted"):
        parse_spec(raw)
    # What the API server stores for {setWeight: 60, pause: null}: the null is dropped, the weight is the step.
    raw["canary"]["steps"][5] = {"setWeight": 60, "pause": None}
    assert parse_spec(raw).canary.steps[5] == SetWeightStep(60)
    raw["canary"]["steps"][5] = {"pause": {}}
    assert parse_spec(raw).canary.steps[5] == PauseStep(None)


def test_thresholds_left_out_parse_and_the_gate_says_no_threshold_is_set() -> None:
    """Left out, thresholds are allowed (the gate ends inconclusive); a class with no limit, which a gate run from
    the plain dict can still hold, is no threshold either: not "there is no stable version"."""
    raw = example()
    del raw["goldenDataset"]["thresholds"]
    assert parse_spec(raw).golden_dataset is not None
    labels = [0, 1] * 30
    for thresholds in ({}, {"classes": {"nsfw": {}}}):
        dataset = golden_dataset_from({"uri": "configmap://g/d", "sha256": SHA, "thresholds": thresholds})
        verdicts = judge(dataset.thresholds, tally(labels, labels, stable=labels), JudgeSettings(), SHA)
        assert verdicts[-1].outcome is Outcome.INCONCLUSIVE, verdicts[-1]
        assert "no threshold is set" in verdicts[-1].reason and "no stable" not in verdicts[-1].reason
