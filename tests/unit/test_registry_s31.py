"""Review s31registry, on the in-memory registry (the same base.py rules as MLflow's adapter) and the engine:

1. With --storage-uri-template not set, a version whose source only MLflow resolves (MLflow 3's models:/m-<id>,
   runs:/, mlflow-artifacts:) is refused at resolve time for KServe and SeldonDeployment targets, saying what to set;
   {download_uri} is filled from the registry's get-download-uri, read only when the template names it.
2. A promotion whose stable-alias write fails leaves no `<alias>-previous` on production and no promoted.* tags; a
   kill after the move is completed by sending the promotion again, which the engine does until promoted.time reads
   as its own.
4. promote() is a compare-and-set on the stable version the rollout found: moved since, StableAliasMoved (Conflict),
   nothing written, and the engine holds the promotion (StableMismatch).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from test_engine import events, finished
from test_engine_support import World

from controller.api.commands import CommandAction
from controller.api.spec import parse_spec
from controller.api.status import ModelRolloutStatus, Phase, PromotionStatus, VersionRef
from controller.engine import (
    Action,
    ActionFailure,
    ActionType,
    AdapterError,
    AdapterErrorKind,
    JudgeResult,
    Observations,
    SetAlias,
    StageCandidate,
    decide,
)
from controller.operator.runtime import OperatorConfig, RolloutRuntime, _kind, fill_storage_uri
from controller.registry import (
    PREVIOUS_VERSION_TAG,
    PROMOTED_ROLLOUT_TAG,
    PROMOTED_TIME_TAG,
    InMemoryRegistry,
    RegistryUnavailable,
)
from controller.registry import errors as registry_errors

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nsfw-classifier.yaml"
MODEL, STABLE, ROLLOUT = "m", "production", "ns/r"
AT = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
MLFLOW3_SOURCE = "models:/m-0123456789abcdef0123456789abcdef"


# --- 2: the promotion's record only once the alias moved -------------------------------------------------


class FailingStableAlias(InMemoryRegistry):
    """MLflow answering 503 to the one write that moves the stable alias."""

    def _set_alias(self, model_name: str, alias: str, version: str) -> None:
        if alias == STABLE:
            raise RegistryUnavailable("MLflow answered HTTP 503 to POST registered-models/alias")
        super()._set_alias(model_name, alias, version)


def three_versions(registry: InMemoryRegistry, stable: str = "1", previous: str | None = None) -> None:
    for _ in range(3):
        registry.add_version(MODEL)
    registry._models[MODEL].aliases[STABLE] = stable
    if previous is not None:
        registry._models[MODEL].aliases[f"{STABLE}-previous"] = previous


def state(registry: InMemoryRegistry) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    model = registry._models[MODEL]
    return dict(model.aliases), {v: dict(record.tags) for v, record in model.versions.items()}


@pytest.mark.parametrize("previous", [None, "3"])
def test_a_promotion_whose_alias_write_fails_claims_no_promotion(previous: str | None) -> None:
    registry = FailingStableAlias()
    three_versions(registry, previous=previous)
    with pytest.raises(RegistryUnavailable):
        registry.promote(MODEL, STABLE, "2", ROLLOUT, promoted_at=AT)
    aliases, tags = state(registry)
    # The way back is not production itself, and the version carries no claim it was promoted.
    assert aliases == {STABLE: "1", **({f"{STABLE}-previous": previous} if previous else {})}
    assert PROMOTED_ROLLOUT_TAG not in tags["2"] and PROMOTED_TIME_TAG not in tags["2"], tags["2"]


class KilledAfter(InMemoryRegistry):
    """Dies (as a SIGKILLed operator) after `budget` primitive writes."""

    budget: int | None = None

    def _spend(self) -> None:
        if self.budget is not None:
            if self.budget == 0:
                raise SystemExit("killed")
            self.budget -= 1

    def _set_alias(self, model_name: str, alias: str, version: str) -> None:
        self._spend()
        super()._set_alias(model_name, alias, version)

    def _delete_alias(self, model_name: str, alias: str) -> None:
        self._spend()
        super()._delete_alias(model_name, alias)

    def _set_version_tags(self, model_name: str, version: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():  # one request per tag, as MLflow's adapter sends them
            self._spend()
            super()._set_version_tags(model_name, version, {key: value})


@pytest.mark.parametrize(("stable", "previous", "rejected"), [
    ("1", None, False), ("1", "3", False), ("1", "2", True), (None, "3", False)])
def test_a_kill_at_any_write_of_a_promotion_is_completed_by_sending_it_again(
        stable: str | None, previous: str | None, rejected: bool) -> None:
    def fresh() -> KilledAfter:
        registry = KilledAfter()
        three_versions(registry, stable or "1", previous)
        if stable is None:
            del registry._models[MODEL].aliases[STABLE]
        if rejected:
            registry.tag_rejected(MODEL, "2", "worse", {}, "ns/earlier", rejected_at=AT - timedelta(days=1))
        return registry

    clean = fresh()
    clean.promote(MODEL, STABLE, "2", ROLLOUT, promoted_at=AT)
    expected = state(clean)
    assert expected[0][STABLE] == "2" and expected[1]["2"][PROMOTED_TIME_TAG] == "2026-01-05T09:00:00Z"
    assert expected[0].get(f"{STABLE}-previous") == stable
    kills = 0
    for budget in range(12):
        registry = fresh()
        registry.budget = budget
        try:
            registry.promote(MODEL, STABLE, "2", ROLLOUT, promoted_at=AT)
        except SystemExit:
            kills += 1
        registry.budget = None
        registry.promote(MODEL, STABLE, "2", ROLLOUT, promoted_at=AT)  # the engine sends it again
        assert state(registry) == expected, budget
    assert kills >= 4


def test_a_kill_before_the_alias_moved_leaves_only_the_crash_record() -> None:
    registry = KilledAfter()
    three_versions(registry, previous="3")
    registry.budget = 1  # the previous-version tag, then killed before the alias write
    with pytest.raises(SystemExit):
        registry.promote(MODEL, STABLE, "2", ROLLOUT, promoted_at=AT)
    aliases, tags = state(registry)
    assert aliases == {STABLE: "1", f"{STABLE}-previous": "3"}
    assert tags["2"] == {PREVIOUS_VERSION_TAG: "1"}


def test_an_alias_moved_onto_the_candidate_by_hand_is_recorded_and_its_way_back_left_alone() -> None:
    registry = InMemoryRegistry()
    three_versions(registry, stable="2", previous="3")  # no previous-version record on 2: set by hand
    result = registry.promote(MODEL, STABLE, "2", ROLLOUT, promoted_at=AT)
    aliases, tags = state(registry)
    assert not result.alias_moved and aliases == {STABLE: "2", f"{STABLE}-previous": "3"}
    assert tags["2"] == {PROMOTED_ROLLOUT_TAG: ROLLOUT, PROMOTED_TIME_TAG: "2026-01-05T09:00:00Z"}
    writes = registry.writes
    registry.promote(MODEL, STABLE, "2", ROLLOUT, promoted_at=AT)
    assert registry.writes == writes


def test_the_engine_sends_the_promotion_again_until_promoted_time_reads_as_its_own() -> None:
    world = World()
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.PROMOTE)
    killed: list[str] = []
    execute = world.execute

    def kill_after_the_alias(action: Action) -> tuple[JudgeResult | None, JudgeResult | None, ActionFailure | None]:
        answer = execute(action)
        if isinstance(action, SetAlias) and action.promotion and not killed:
            # The operator died after MLflow moved the alias, before the promotion's tags.
            killed.append(world.registry.versions[action.version].pop(PROMOTED_TIME_TAG))
        return answer

    world.execute = kill_after_the_alias  # type: ignore[method-assign]
    world.run_until(finished)
    sent = [a for a in world.executed if isinstance(a, SetAlias) and a.promotion]
    assert killed and len(sent) == 2, sent  # not confirmed by the alias alone
    assert world.status.phase is Phase.SUCCEEDED and world.registry.aliases["production"] == "7"
    assert world.registry.versions["7"][PROMOTED_TIME_TAG] == killed[0]
    assert "AliasMoved" in events(world)


# --- 4: compare-and-set ---------------------------------------------------------------------------------


def test_promote_refuses_an_alias_moved_since_the_rollout_read_it_and_writes_nothing() -> None:
    registry = InMemoryRegistry()
    three_versions(registry, stable="3", previous="1")  # the rollout saw 1; a human set 3 meanwhile
    before = state(registry)
    with pytest.raises(registry_errors.StableAliasMoved) as caught:
        registry.promote(MODEL, STABLE, "2", ROLLOUT, promoted_at=AT, expected="1")
    assert caught.value.kind == "Conflict" and _kind(caught.value) is AdapterErrorKind.CONFLICT
    assert "names version 3, not version 1" in caught.value.message and caught.value.found == "3"
    assert state(registry) == before
    with pytest.raises(registry_errors.StableAliasMoved, match="names version 3, not no version"):  # a first rollout's
        registry.promote(MODEL, STABLE, "2", ROLLOUT, promoted_at=AT, expected=None)
    assert registry.promote(MODEL, STABLE, "2", ROLLOUT, promoted_at=AT, expected="3").alias_moved


def runtime(registry: InMemoryRegistry, *, template: str | None = None, target: dict[str, Any] | None = None,
            version: str = "2") -> RolloutRuntime:
    obj = yaml.safe_load(EXAMPLE.read_text())
    obj["metadata"]["namespace"] = "ns"
    obj["spec"]["model"] = {"name": MODEL, "version": version, "stableAlias": STABLE}
    if target is not None:
        obj["spec"]["target"] = target
    made = RolloutRuntime(obj, parse_spec(obj["spec"]), client.ApiClient(),
                          OperatorConfig(storage_uri_template=template))
    made._registry = registry
    return made


def test_the_runtime_promotes_against_the_stable_version_in_status() -> None:
    registry = InMemoryRegistry()
    three_versions(registry, stable="3")
    status = ModelRolloutStatus(phase=Phase.PROMOTING, candidate=VersionRef("2"), stable=VersionRef("1"),
                                promotion=PromotionStatus(started_at=AT))
    with pytest.raises(registry_errors.StableAliasMoved):
        runtime(registry).act(SetAlias(id="1:promote:alias", alias=STABLE, version="2", promotion=True), status)
    assert state(registry)[0] == {STABLE: "3"} and state(registry)[1]["2"] == {}


def test_a_conflict_from_the_promotion_holds_it_on_the_fresh_read() -> None:
    world = World()
    world.registry.versions["5"] = {}
    world.run_until(lambda w: w.status.phase is Phase.PAUSED)
    world.send(CommandAction.PROMOTE)
    execute = world.execute

    def moved_meanwhile(action: Action) -> tuple[JudgeResult | None, JudgeResult | None, ActionFailure | None]:
        if isinstance(action, SetAlias) and action.promotion:
            world.executed.append(action)
            world.registry.aliases["production"] = "5"  # a human, between the engine's read and promote()
            return None, None, ActionFailure(action.id, AdapterError(AdapterErrorKind.CONFLICT, "moved"))
        return execute(action)

    world.execute = moved_meanwhile  # type: ignore[method-assign]
    for _ in range(6):
        world.advance(timedelta(minutes=1))
        world.reconcile()
    assert world.status.phase is Phase.PROMOTING and (world.status.message or "").startswith(
        "Holding the promotion: @production names version 5, set outside this rollout"), world.status.message
    assert world.registry.aliases["production"] == "5" and "StableMismatch" in events(world)
    assert len([a for a in world.executed if a.type is ActionType.SET_ALIAS]) == 1


# --- 1: storage URIs only MLflow resolves, and {download_uri} -------------------------------------------------


def mlflow3_registry(stable_source: str = "s3://models/m/1") -> InMemoryRegistry:
    registry = InMemoryRegistry()
    registry.add_version(MODEL, source=stable_source)
    registry.add_version(MODEL, source=MLFLOW3_SOURCE)
    registry._models[MODEL].aliases[STABLE] = "1"
    return registry


@pytest.mark.parametrize("source", [MLFLOW3_SOURCE, "runs:/0123/model", "mlflow-artifacts:/3/0123/artifacts/model",
                                    "Models:/m-0123"])
def test_a_source_only_mlflow_resolves_is_refused_at_resolve_time_saying_what_to_set(source: str) -> None:
    registry = mlflow3_registry()
    registry._models[MODEL].versions["2"] = registry._models[MODEL].versions["2"].__class__(
        name=MODEL, version="2", source=source)
    observed = runtime(registry).observe_registry(ModelRolloutStatus())
    assert observed.error is None and observed.unloadable is not None  # refused by the engine, at resolution
    message = observed.unloadable
    assert message.startswith(f"candidate version 2's source is a {source.split(':')[0].lower()}: URI"), message
    assert "--storage-uri-template (chart value controller.storageUriTemplate) is not set" in message
    assert "{download_uri}" in message and "0123" not in message
    spec = runtime(registry).spec
    decided = decide(spec, ModelRolloutStatus(), Observations(generation=1, registry=observed), AT)
    status = decided.status
    assert status.phase is Phase.PENDING and status.candidate is None and not decided.actions
    assert (status.message or "").startswith("Waiting for the registry to resolve")
    condition = next(c for c in status.conditions if c.type == "RegistryAvailable")
    assert (condition.status, condition.reason) == ("False", "RegistryInvalid")
    assert "{download_uri}" in condition.message


def test_a_stable_source_only_mlflow_resolves_is_refused_too_a_rollback_would_restore_it() -> None:
    registry = mlflow3_registry(stable_source="mlflow-artifacts:/1/abc/artifacts/model")
    registry._models[MODEL].versions["2"] = registry._models[MODEL].versions["2"].__class__(
        name=MODEL, version="2", source="s3://models/m/2")
    observed = runtime(registry).observe_registry(None)
    assert observed.unloadable is not None and "stable version 1's source is a mlflow-artifacts: URI" in \
        observed.unloadable


@pytest.mark.parametrize("case", ["template set", "seldon v2", "already stable", "s3 source"])
def test_the_refusal_is_only_for_the_default_template_on_targets_given_a_uri_before_resolving(case: str) -> None:
    registry = mlflow3_registry()
    made = {
        "template set": lambda: runtime(registry, template="{source}"),  # the admin's word: their server loads it
        "seldon v2": lambda: runtime(registry, target={"seldonExperiment": {"name": "nsfw"}}),
        "already stable": lambda: runtime(registry),
        "s3 source": lambda: runtime(registry),
    }[case]()
    status = ModelRolloutStatus()
    if case == "already stable":
        registry._models[MODEL].aliases[STABLE] = "2"
    if case == "s3 source":
        registry._models[MODEL].versions["2"] = registry._models[MODEL].versions["2"].__class__(
            name=MODEL, version="2", source="s3://models/m/2")
    observed = made.observe_registry(status)
    assert observed.error is None and observed.unloadable is None
    assert observed.candidate is not None and observed.candidate.version == "2"


def test_download_uri_fills_the_template_read_only_when_named() -> None:
    registry = mlflow3_registry()
    registry._models[MODEL].download_uris["2"] = "s3://artifacts/1/models/m-0123/artifacts"  # get-download-uri's
    assert fill_storage_uri("{download_uri}", name=MODEL, version="2", source=MLFLOW3_SOURCE, run_id="",
                            download_uri="s3://a/b") == "s3://a/b"
    candidate = VersionRef("2", source=MLFLOW3_SOURCE)
    with_download = runtime(registry, template="{download_uri}")
    calls = registry.calls
    assert with_download.storage_uri(candidate) == "s3://artifacts/1/models/m-0123/artifacts"
    assert registry.calls > calls
    calls = registry.calls
    assert runtime(registry, template="s3://b/{name}/{version}").storage_uri(candidate) == "s3://b/m/2"
    assert registry.calls == calls  # not named: not read
    assert RolloutRuntime.calls_registry(StageCandidate(id="1:stage:2", candidate=candidate), "{download_uri}")
    assert not RolloutRuntime.calls_registry(StageCandidate(id="1:stage:2", candidate=candidate), "{source}")
    registry.unavailable = True
    with pytest.raises(RegistryUnavailable, match=r"version 2's download URI \(\{download_uri\} in the operator's "):
        with_download.storage_uri(candidate)


def test_the_default_template_still_gives_the_source_unchanged() -> None:
    registry = mlflow3_registry()
    source = VersionRef("1", source="s3://models/m/1")
    assert runtime(copy.copy(registry)).storage_uri(source) == "s3://models/m/1"


def test_the_chart_passes_the_template_only_when_set() -> None:
    from test_deploy_render import controller_pod, helm_template

    args = controller_pod(helm_template())["containers"][0]["args"]
    assert "--storage-uri-template" not in args  # not set: the default, with its refusal
    # (--set would read {download_uri} as a list: a values file, or --set-json)
    args = controller_pod(helm_template("--set-json", 'controller.storageUriTemplate="{download_uri}"'))[
        "containers"][0]["args"]
    assert args[args.index("--storage-uri-template") + 1] == "{download_uri}"


# --- review s31r3reg ----------------------------------------------------------------------------------------------


def test_an_alias_removed_since_the_rollout_read_it_is_no_move_to_respect() -> None:
    """@production removed by hand (or its version deleted, which drops its aliases) mid-rollout: nobody's choice to
    overrule, and the engine goes ahead; refusing it every time rolled a healthy promotion back at its deadline."""
    registry = InMemoryRegistry()
    three_versions(registry, stable="1")
    del registry._models[MODEL].aliases[STABLE]
    result = registry.promote(MODEL, STABLE, "2", ROLLOUT, promoted_at=AT, expected="1")
    assert result.alias_moved and registry._models[MODEL].aliases[STABLE] == "2"


def test_a_hand_move_onto_the_candidate_trusts_only_this_promotions_own_record() -> None:
    """History 1 -> 2, then 2 -> 3; in a new rollout (stable 3) a human sets @production back on 2: version 2's
    previous_version tag (1) is an older promotion's record, not the way back now, so -previous is left alone."""
    registry = InMemoryRegistry()
    three_versions(registry, stable="2", previous="1")
    registry._set_version_tags(MODEL, "2", {PREVIOUS_VERSION_TAG: "1"})  # from the 1 -> 2 promotion
    registry._models[MODEL].aliases[f"{STABLE}-previous"] = "2"  # from the 2 -> 3 promotion
    registry._models[MODEL].aliases[STABLE] = "2"  # the human, mid-rollout (the rollout found 3)
    registry.promote(MODEL, STABLE, "2", ROLLOUT, promoted_at=AT, expected="3")
    assert registry._models[MODEL].aliases[f"{STABLE}-previous"] == "2"  # not rebuilt from the stale record
    # This promotion's own crash record (written before its alias write failed) is still completed.
    own = InMemoryRegistry()
    three_versions(own, stable="1")
    own._set_version_tags(MODEL, "2", {PREVIOUS_VERSION_TAG: "1"})
    own._models[MODEL].aliases[STABLE] = "2"
    own.promote(MODEL, STABLE, "2", ROLLOUT, promoted_at=AT, expected="1")
    assert own._models[MODEL].aliases[f"{STABLE}-previous"] == "1"


@pytest.mark.parametrize("phase", [Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED, Phase.PENDING])
def test_the_refusal_covers_the_next_rollout_of_a_finished_one(phase: Phase) -> None:
    """spec.model.version edited on a finished rollout (status.candidate the last one's): the new candidate is
    checked as a first rollout's is, and so is the candidate already taken on, which a retry resolves again (review
    s32r2b). (s32: a rollout in flight carries it too, never as an error: its rollback goes on, and the engine
    refuses a candidate only when it resolves one.)"""
    registry = mlflow3_registry()
    finished_status = ModelRolloutStatus(phase=phase, candidate=VersionRef("1"), stable=VersionRef("1"))
    observed = runtime(registry).observe_registry(finished_status)
    assert observed.error is None and observed.unloadable is not None
    taken_on = ModelRolloutStatus(phase=phase, candidate=VersionRef("2"), stable=VersionRef("1"))
    observed = runtime(registry).observe_registry(taken_on)
    assert observed.error is None and observed.unloadable is not None
    in_flight = ModelRolloutStatus(phase=Phase.ROLLING_BACK, candidate=VersionRef("1"), stable=VersionRef("1"))
    observed = runtime(registry).observe_registry(in_flight)
    assert observed.error is None and observed.unloadable is not None and observed.candidate is not None
