"""Registry rules (resolve, promote, roll back, idempotency) on the in-memory registry.

`RegistryContract` is the behaviour every registry must have; tests/integration/test_registry.py runs the
same class against a real `mlflow server`. A harness fixture gives each test the registry under test and an
independent way to set up and observe the registry's state.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import pytest
import yaml
from kubernetes import client

from controller.api.spec import parse_spec
from controller.api.status import ModelRolloutStatus
from controller.engine import SetAlias, TagRejected
from controller.operator.runtime import OperatorConfig, RolloutRuntime
from controller.registry import (
    PREVIOUS_VERSION_TAG,
    PROMOTED_ROLLOUT_TAG,
    REJECTED_BY_TAG,
    REJECTED_EVIDENCE_TAG,
    REJECTED_REASON_TAG,
    REJECTED_ROLLOUT_TAG,
    REJECTED_TAG,
    REJECTED_TIME_TAG,
    Credentials,
    InMemoryRegistry,
    ModelRegistry,
    RegistryAccessDenied,
    RegistryConfigError,
    RegistryUnavailable,
    VersionNotFound,
)
from controller.registry.base import MAX_EVIDENCE_CHARS, DatasetInput

ROLLOUT = "moderation/nsfw-classifier"
STABLE = "production"


class RegistryHarness(Protocol):
    registry: ModelRegistry

    def new_model(self, versions: int, *, version_tags: Mapping[str, str] | None = None) -> str:
        """A fresh registered model with versions 1..versions; returns its name."""
        ...

    def point_alias(self, model: str, alias: str, version: str) -> None: ...

    def alias_target(self, model: str, alias: str) -> str | None: ...

    def version_tags(self, model: str, version: str) -> dict[str, str]: ...


class RegistryContract:
    """Behaviour shared by every ModelRegistry; subclasses provide the `harness` fixture."""

    # --- resolve -----------------------------------------------------------------------------------

    def test_resolve_by_version(self, harness: RegistryHarness) -> None:
        model = harness.new_model(2, version_tags={"dataset.sha256": "abc123", "owner": "moderation"})
        resolved = harness.registry.resolve(model, version="2")
        assert (resolved.name, resolved.version, resolved.status, resolved.ready) == (model, "2", "READY", True)
        assert resolved.source
        assert resolved.tags["owner"] == "moderation"
        assert resolved.lineage["dataset.sha256"] == "abc123"
        assert "owner" not in resolved.lineage
        assert not resolved.rejected

    def test_resolve_by_alias(self, harness: RegistryHarness) -> None:
        model = harness.new_model(3)
        harness.point_alias(model, "challenger", "3")
        resolved = harness.registry.resolve(model, alias="challenger")
        assert resolved.version == "3"
        assert "challenger" in resolved.aliases

    @pytest.mark.parametrize("version", ["9", "abc", "0"])
    def test_missing_version_is_version_not_found(self, harness: RegistryHarness, version: str) -> None:
        model = harness.new_model(1)
        with pytest.raises(VersionNotFound) as caught:
            harness.registry.resolve(model, version=version)
        assert model in str(caught.value) and version in str(caught.value)
        assert caught.value.kind == "NotFound" and not caught.value.retryable

    def test_missing_model_and_alias_are_version_not_found(self, harness: RegistryHarness) -> None:
        model = harness.new_model(1)
        with pytest.raises(VersionNotFound, match="no alias @nope"):
            harness.registry.resolve(model, alias="nope")
        missing = f"missing-{uuid.uuid4().hex[:8]}"
        with pytest.raises(VersionNotFound, match=f"{missing}.*does not exist"):
            harness.registry.resolve(missing, version="1")
        with pytest.raises(VersionNotFound, match=f"{missing}.*does not exist"):
            harness.registry.resolve(missing, alias=STABLE)

    def test_resolve_needs_exactly_one_reference(self, harness: RegistryHarness) -> None:
        model = harness.new_model(1)
        with pytest.raises(RegistryConfigError):
            harness.registry.resolve(model)
        with pytest.raises(RegistryConfigError):
            harness.registry.resolve(model, version="1", alias=STABLE)

    def test_resolve_stable_is_none_before_the_first_rollout(self, harness: RegistryHarness) -> None:
        model = harness.new_model(2)
        assert harness.registry.resolve_stable(model, STABLE) is None
        assert harness.registry.verify_alias(model, STABLE) is None
        harness.point_alias(model, STABLE, "1")
        stable = harness.registry.resolve_stable(model, STABLE)
        assert stable is not None and stable.version == "1"
        assert harness.registry.verify_alias(model, STABLE) == "1"

    # --- promote -----------------------------------------------------------------------------------

    def test_promote_moves_alias_and_records_previous(self, harness: RegistryHarness) -> None:
        model = harness.new_model(2)
        harness.point_alias(model, STABLE, "1")
        result = harness.registry.promote(model, STABLE, "2", ROLLOUT)
        assert (result.version, result.previous_version, result.alias_moved) == ("2", "1", True)
        assert harness.alias_target(model, STABLE) == "2"
        assert harness.alias_target(model, f"{STABLE}-previous") == "1"
        tags = harness.version_tags(model, "2")
        assert tags[PREVIOUS_VERSION_TAG] == "1"
        assert tags[PROMOTED_ROLLOUT_TAG] == ROLLOUT

    def test_promote_twice_is_idempotent(self, harness: RegistryHarness) -> None:
        model = harness.new_model(2)
        harness.point_alias(model, STABLE, "1")
        first = harness.registry.promote(model, STABLE, "2", ROLLOUT)
        tags_after_first = harness.version_tags(model, "2")
        second = harness.registry.promote(model, STABLE, "2", ROLLOUT)
        assert second.previous_version == first.previous_version == "1"
        assert not second.alias_moved
        assert harness.version_tags(model, "2") == tags_after_first
        assert harness.alias_target(model, STABLE) == "2"
        assert harness.alias_target(model, f"{STABLE}-previous") == "1"

    def test_promoting_a_version_rejected_earlier_clears_the_flag_and_keeps_its_history(
            self, harness: RegistryHarness) -> None:
        """A bake rollback, then a retry that promotes the same version: production must not stay flagged rejected."""
        model = harness.new_model(2)
        harness.point_alias(model, STABLE, "1")
        harness.registry.promote(model, STABLE, "2", ROLLOUT)
        when = datetime(2026, 3, 1, 12, 20, tzinfo=UTC)
        harness.registry.rollback(model, STABLE, "2", "1", "bake failed", "nsfw-rate 4x", ROLLOUT, rejected_at=when)
        assert harness.registry.resolve(model, version="2").rejected
        harness.registry.promote(model, STABLE, "2", ROLLOUT)
        tags = harness.version_tags(model, "2")
        assert harness.alias_target(model, STABLE) == "2"
        assert tags[REJECTED_TAG] == "false" and not harness.registry.resolve(model, version="2").rejected
        assert (tags[REJECTED_REASON_TAG], tags[REJECTED_TIME_TAG]) == ("bake failed", "2026-03-01T12:20:00Z")
        # Rejected again later: the flag is set again, with the new time.
        again = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
        harness.registry.rollback(model, STABLE, "2", "1", "bake failed again", "nsfw-rate 5x", ROLLOUT,
                                  rejected_at=again)
        assert harness.version_tags(model, "2")[REJECTED_TAG] == "true"

    def test_first_promotion_has_no_previous(self, harness: RegistryHarness) -> None:
        model = harness.new_model(1)
        result = harness.registry.promote(model, STABLE, "1", ROLLOUT)
        assert result.previous_version is None and result.alias_moved
        assert harness.alias_target(model, STABLE) == "1"
        assert harness.alias_target(model, f"{STABLE}-previous") is None
        assert harness.registry.promote(model, STABLE, "1", ROLLOUT).previous_version is None

    def test_promote_missing_candidate_changes_nothing(self, harness: RegistryHarness) -> None:
        model = harness.new_model(1)
        harness.point_alias(model, STABLE, "1")
        with pytest.raises(VersionNotFound):
            harness.registry.promote(model, STABLE, "5", ROLLOUT)
        assert harness.alias_target(model, STABLE) == "1"

    def test_bad_alias_is_refused_before_any_write(self, harness: RegistryHarness) -> None:
        model = harness.new_model(2)
        for alias in ("prod/main", "latest", "v2", ""):
            with pytest.raises(RegistryConfigError):
                harness.registry.promote(model, alias, "2", ROLLOUT)
        assert PREVIOUS_VERSION_TAG not in harness.version_tags(model, "2")

    # --- rollback ----------------------------------------------------------------------------------

    def test_rollback_before_promotion_keeps_alias_and_tags_candidate(self, harness: RegistryHarness) -> None:
        model = harness.new_model(2)
        harness.point_alias(model, STABLE, "1")
        when = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
        result = harness.registry.rollback(model, STABLE, "2", "1", "nsfw-rate 6.2% vs 0.2%",
                                           {"canary": {"events": 31, "total": 500}}, ROLLOUT,
                                           rejected_at=when, actor="controller")
        assert (result.alias_version, result.alias_restored, result.tagged) == ("1", False, True)
        assert harness.alias_target(model, STABLE) == "1"
        tags = harness.version_tags(model, "2")
        assert tags[REJECTED_TAG] == "true"
        assert tags[REJECTED_REASON_TAG] == "nsfw-rate 6.2% vs 0.2%"
        assert json.loads(tags[REJECTED_EVIDENCE_TAG]) == {"canary": {"events": 31, "total": 500}}
        assert tags[REJECTED_ROLLOUT_TAG] == ROLLOUT
        assert tags[REJECTED_TIME_TAG] == "2026-03-04T05:06:07Z"
        assert tags[REJECTED_BY_TAG] == "controller"
        assert harness.registry.resolve(model, version="2").rejected

    def test_rollback_after_promotion_restores_alias(self, harness: RegistryHarness) -> None:
        model = harness.new_model(2)
        harness.point_alias(model, STABLE, "1")
        harness.registry.promote(model, STABLE, "2", ROLLOUT)
        result = harness.registry.rollback(model, STABLE, "2", "1", "bake failed", "nsfw-rate 4x", ROLLOUT)
        assert (result.alias_version, result.alias_restored) == ("1", True)
        assert harness.alias_target(model, STABLE) == "1"
        assert harness.registry.verify_alias(model, STABLE) == "1"

    def test_rollback_twice_is_idempotent(self, harness: RegistryHarness) -> None:
        model = harness.new_model(2)
        harness.point_alias(model, STABLE, "1")
        harness.registry.promote(model, STABLE, "2", ROLLOUT)
        harness.registry.rollback(model, STABLE, "2", "1", "bake failed", "first evidence", ROLLOUT)
        tags_after_first = harness.version_tags(model, "2")
        again = harness.registry.rollback(model, STABLE, "2", "1", "bake failed", "later evidence", ROLLOUT)
        assert (again.alias_version, again.alias_restored, again.tagged) == ("1", False, False)
        assert harness.version_tags(model, "2") == tags_after_first
        assert harness.alias_target(model, STABLE) == "1"

    def test_rollback_after_promotion_puts_the_previous_alias_back(self, harness: RegistryHarness) -> None:
        """@production-previous named the version restored, so production's recorded way back was itself."""
        model = harness.new_model(3)
        harness.point_alias(model, STABLE, "1")
        harness.registry.promote(model, STABLE, "2", ROLLOUT)
        harness.registry.promote(model, STABLE, "3", ROLLOUT)
        for _ in range(2):  # the engine may send it again
            harness.registry.rollback(model, STABLE, "3", "2", "bake failed", "", ROLLOUT)
            assert (harness.alias_target(model, STABLE), harness.alias_target(model, f"{STABLE}-previous")) == (
                "2", "1")
        # The operator's SetAlias, also after a kill between its two writes (-previous already put back).
        harness.registry.promote(model, STABLE, "3", ROLLOUT)
        harness.point_alias(model, f"{STABLE}-previous", "1")
        assert harness.registry.restore_stable_alias(model, STABLE, "2")
        assert not harness.registry.restore_stable_alias(model, STABLE, "2")
        assert (harness.alias_target(model, STABLE), harness.alias_target(model, f"{STABLE}-previous")) == ("2", "1")

    def test_rollback_never_records_a_way_back_to_a_rejected_version(self, harness: RegistryHarness) -> None:
        """Production back and forth (3 over 2, 2 over 3, 3 again): version 2 records 3 as what it replaced, and 3
        is the version rolled back; a version an earlier rollback rejected is no way back either."""
        model = harness.new_model(4)
        harness.point_alias(model, STABLE, "2")
        for version in ("3", "2", "3"):
            harness.registry.promote(model, STABLE, version, ROLLOUT)
        harness.registry.rollback(model, STABLE, "3", "2", "bake failed", "", ROLLOUT)
        assert (harness.alias_target(model, STABLE), harness.alias_target(model, f"{STABLE}-previous")) == ("2", None)
        # The operator's own call names the version it rolls back too.
        harness.registry.promote(model, STABLE, "3", ROLLOUT)
        assert harness.registry.restore_stable_alias(model, STABLE, "2", rolled_back="3")
        assert harness.alias_target(model, f"{STABLE}-previous") is None
        harness.registry.tag_rejected(model, "3", "bake failed", "", ROLLOUT)  # the rollback's next action
        # 4 replaced 3 (moved back by hand), which a rollback rejected: rolling 4's successor back to 4 records no
        # way back to 3.
        harness.point_alias(model, STABLE, "3")
        harness.registry.promote(model, STABLE, "4", ROLLOUT)
        harness.registry.promote(model, STABLE, "1", ROLLOUT)
        harness.registry.rollback(model, STABLE, "1", "4", "bake failed", "", ROLLOUT)
        assert (harness.alias_target(model, STABLE), harness.alias_target(model, f"{STABLE}-previous")) == ("4", None)

    def test_rollback_leaves_a_previous_alias_moved_by_hand(self, harness: RegistryHarness) -> None:
        model = harness.new_model(5)
        harness.point_alias(model, STABLE, "1")
        harness.registry.promote(model, STABLE, "2", ROLLOUT)
        harness.registry.promote(model, STABLE, "3", ROLLOUT)
        harness.point_alias(model, f"{STABLE}-previous", "5")
        harness.registry.rollback(model, STABLE, "3", "2", "bake failed", "", ROLLOUT)
        assert (harness.alias_target(model, STABLE), harness.alias_target(model, f"{STABLE}-previous")) == ("2", "5")

    def test_rollback_to_a_version_with_no_recorded_previous_removes_the_previous_alias(
            self, harness: RegistryHarness) -> None:
        model = harness.new_model(2)
        harness.point_alias(model, STABLE, "1")  # set by hand: version 1 records nothing it replaced
        harness.registry.promote(model, STABLE, "2", ROLLOUT)
        harness.registry.restore_stable_alias(model, STABLE, "1")
        assert (harness.alias_target(model, STABLE), harness.alias_target(model, f"{STABLE}-previous")) == ("1", None)

    def test_rollback_of_a_first_rollout_removes_alias_from_the_candidate(self, harness: RegistryHarness) -> None:
        model = harness.new_model(1)
        harness.registry.promote(model, STABLE, "1", ROLLOUT)
        result = harness.registry.rollback(model, STABLE, "1", None, "aborted", "", ROLLOUT)
        assert (result.alias_version, result.alias_restored) == (None, True)
        assert harness.alias_target(model, STABLE) is None

    def test_rollback_without_stable_leaves_someone_elses_alias(self, harness: RegistryHarness) -> None:
        model = harness.new_model(2)
        harness.point_alias(model, STABLE, "1")
        result = harness.registry.rollback(model, STABLE, "2", None, "aborted", "", ROLLOUT)
        assert (result.alias_version, result.alias_restored) == ("1", False)

    def test_evidence_is_bounded(self, harness: RegistryHarness) -> None:
        model = harness.new_model(2)
        harness.registry.rollback(model, STABLE, "2", None, "r" * 5000, "e" * 50_000, ROLLOUT)
        tags = harness.version_tags(model, "2")
        assert len(tags[REJECTED_EVIDENCE_TAG]) == MAX_EVIDENCE_CHARS
        assert tags[REJECTED_EVIDENCE_TAG].endswith("(truncated)")
        assert len(tags[REJECTED_REASON_TAG]) <= 1000

    def test_a_later_rollout_records_its_own_rejection(self, harness: RegistryHarness) -> None:
        model = harness.new_model(2)
        harness.registry.tag_rejected(model, "2", "first", "", ROLLOUT)
        assert harness.registry.tag_rejected(model, "2", "second", "", "moderation/other")
        tags = harness.version_tags(model, "2")
        assert (tags[REJECTED_REASON_TAG], tags[REJECTED_ROLLOUT_TAG]) == ("second", "moderation/other")

    def test_a_resent_rejection_keeps_what_it_wrote(self, harness: RegistryHarness) -> None:
        model = harness.new_model(2)
        at = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
        assert harness.registry.tag_rejected(model, "2", "first", "", ROLLOUT, rejected_at=at)
        assert not harness.registry.tag_rejected(model, "2", "first, sent again", "", ROLLOUT, rejected_at=at)
        assert harness.version_tags(model, "2")[REJECTED_REASON_TAG] == "first"

    def test_a_rejection_without_a_verdict_time_is_not_told_apart_by_the_clock(self, harness: RegistryHarness) -> None:
        model = harness.new_model(2)
        assert harness.registry.tag_rejected(model, "2", "first", "", ROLLOUT)
        written = harness.version_tags(model, "2")
        time.sleep(1.1 - datetime.now(UTC).microsecond / 1e6)  # into the next second: a different "now"
        assert not harness.registry.tag_rejected(model, "2", "first, sent again", "", ROLLOUT)
        assert harness.version_tags(model, "2") == written

    def test_the_same_rollout_rejecting_again_later_records_the_new_rejection(self, harness: RegistryHarness) -> None:
        model = harness.new_model(2)  # e.g. a retry that failed again
        harness.registry.tag_rejected(model, "2", "first", "", ROLLOUT, rejected_at=datetime(2026, 3, 4, 5, tzinfo=UTC))
        assert harness.registry.tag_rejected(model, "2", "second", "", ROLLOUT,
                                             rejected_at=datetime(2026, 3, 4, 6, tzinfo=UTC))
        tags = harness.version_tags(model, "2")
        assert (tags[REJECTED_REASON_TAG], tags[REJECTED_TIME_TAG]) == ("second", "2026-03-04T06:00:00Z")


# --- the in-memory registry --------------------------------------------------------------------------


@dataclass
class MemoryHarness:
    registry: InMemoryRegistry

    def new_model(self, versions: int, *, version_tags: Mapping[str, str] | None = None) -> str:
        model = f"model-{uuid.uuid4().hex[:8]}"
        for _ in range(versions):
            self.registry.add_version(model, tags=version_tags)
        return model

    def point_alias(self, model: str, alias: str, version: str) -> None:
        self.registry.set_alias(model, alias, version)

    def alias_target(self, model: str, alias: str) -> str | None:
        return self.registry.verify_alias(model, alias)

    def version_tags(self, model: str, version: str) -> dict[str, str]:
        return dict(self.registry.resolve(model, version=version).tags)


class TestInMemoryRegistry(RegistryContract):
    @pytest.fixture
    def harness(self) -> MemoryHarness:
        return MemoryHarness(InMemoryRegistry())

    def test_repeated_promotion_and_rollback_write_nothing(self, harness: MemoryHarness) -> None:
        model = harness.new_model(2)
        harness.point_alias(model, STABLE, "1")
        harness.registry.promote(model, STABLE, "2", ROLLOUT)
        harness.registry.rollback(model, STABLE, "2", "1", "bake failed", "", ROLLOUT)
        # The alias already there, set by hand: the promotion's tags are written, once (the engine sends it until
        # they read as its own), and nothing else.
        harness.registry.promote(model, STABLE, "1", ROLLOUT)
        writes = harness.registry.writes
        harness.registry.promote(model, STABLE, "1", ROLLOUT)  # alias already there, recorded: nothing to do
        harness.registry.rollback(model, STABLE, "2", "1", "bake failed", "", ROLLOUT)
        assert harness.registry.writes == writes

    def test_a_promotion_that_fails_to_move_the_alias_leaves_an_earlier_rejection_standing(
            self, harness: MemoryHarness, monkeypatch: pytest.MonkeyPatch) -> None:
        model = harness.new_model(2)
        harness.point_alias(model, STABLE, "1")
        harness.registry.rollback(model, STABLE, "2", "1", "nsfw-rate 4x", "", ROLLOUT)
        real_set_alias = harness.registry._set_alias

        def refused(*_args: object) -> None:
            raise RegistryUnavailable("mlflow: 503 on set-alias")
        monkeypatch.setattr(harness.registry, "_set_alias", refused)
        with pytest.raises(RegistryUnavailable):
            harness.registry.promote(model, STABLE, "2", ROLLOUT)
        assert harness.version_tags(model, "2")[REJECTED_TAG] == "true"  # never promoted: still rejected
        # The alias moved, then the operator was killed before the flag: promote again clears it.
        monkeypatch.setattr(harness.registry, "_set_alias", real_set_alias)
        real_set_alias(model, STABLE, "2")
        assert not harness.registry.promote(model, STABLE, "2", ROLLOUT).alias_moved
        assert harness.version_tags(model, "2")[REJECTED_TAG] == "false"

    def test_the_operators_rollback_alias_action_puts_the_previous_alias_back(self, harness: MemoryHarness) -> None:
        """The runtime carries out a rollback's SetAlias with restore_stable_alias, not a bare set_alias."""
        obj = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "nsfw-classifier.yaml").read_text())
        obj["metadata"]["namespace"] = "ns"
        runtime = RolloutRuntime(obj, parse_spec(obj["spec"]), client.ApiClient(), OperatorConfig())
        runtime._registry = harness.registry
        model = "nsfw-classifier"
        for _ in range(3):
            harness.registry.add_version(model)
        harness.point_alias(model, STABLE, "1")
        harness.registry.promote(model, STABLE, "2", ROLLOUT)
        harness.registry.promote(model, STABLE, "3", ROLLOUT)
        runtime.act(SetAlias(id="4:rollback:alias", alias=STABLE, version="2"), ModelRolloutStatus())
        assert (harness.alias_target(model, STABLE), harness.alias_target(model, f"{STABLE}-previous")) == ("2", "1")
        # Version 1, the way back, rejected since (a retry of it failed its gate): no way back any more.
        runtime.act(TagRejected(id="5:rollback:tag", version="1", reason="gate failed", evidence={}, rejected_at=None,
                                actor="alice"),
                    ModelRolloutStatus())
        assert harness.alias_target(model, f"{STABLE}-previous") is None

    def test_a_version_rejected_later_is_no_way_back(self, harness: RegistryHarness) -> None:
        model = harness.new_model(3)
        harness.point_alias(model, STABLE, "1")
        harness.registry.promote(model, STABLE, "2", ROLLOUT)
        harness.registry.tag_rejected(model, "3", "gate failed", "", ROLLOUT, stable_alias=STABLE)  # another version
        assert harness.alias_target(model, f"{STABLE}-previous") == "1"
        harness.registry.tag_rejected(model, "1", "gate failed", "", ROLLOUT)  # told no alias: none touched
        assert harness.alias_target(model, f"{STABLE}-previous") == "1"
        for _ in range(2):  # sent again after a kill
            harness.registry.tag_rejected(model, "1", "gate failed", "", ROLLOUT, stable_alias=STABLE)
            assert harness.alias_target(model, f"{STABLE}-previous") is None

    def test_an_alias_delete_refused_never_holds_back_the_rollbacks_own_writes(
            self, harness: MemoryHarness, monkeypatch: pytest.MonkeyPatch) -> None:
        """MLflow's auth lets an EDIT user set aliases and tags, but deleting an alias needs MANAGE: the -previous
        upkeep is best effort, the stable alias and the rejection are written all the same."""
        def refused(*_: str) -> None:
            raise RegistryAccessDenied("MLflow refused DELETE registered-models/alias with HTTP 403")

        model = harness.new_model(3)
        harness.point_alias(model, STABLE, "1")  # set by hand: version 1 records nothing it replaced
        harness.registry.promote(model, STABLE, "2", ROLLOUT)
        monkeypatch.setattr(harness.registry, "_delete_alias", refused)
        assert harness.registry.restore_stable_alias(model, STABLE, "1", rolled_back="2")
        assert (harness.alias_target(model, STABLE), harness.alias_target(model, f"{STABLE}-previous")) == ("1", "1")
        harness.point_alias(model, STABLE, "3")
        harness.point_alias(model, f"{STABLE}-previous", "2")
        assert harness.registry.tag_rejected(model, "2", "gate failed", "", ROLLOUT, stable_alias=STABLE)
        assert harness.registry.resolve(model, version="2").tags[REJECTED_TAG] == "true"

    def test_unavailable(self, harness: MemoryHarness) -> None:
        model = harness.new_model(1)
        harness.registry.unavailable = True
        with pytest.raises(RegistryUnavailable) as caught:
            harness.registry.resolve(model, version="1")
        assert caught.value.retryable and caught.value.kind == "Unavailable"

    def test_lineage_from_run_inputs_and_tags(self, harness: MemoryHarness) -> None:
        registry = harness.registry
        registry.add_run("run-1", tags={"mlflow.source.git.commit": "deadbeef", "dataset.version": "v3", "x": "y"},
                         dataset_inputs=(DatasetInput(name="train", digest="300830b9", source_type="s3",
                                                      source="s3://bucket/train.csv", context="training"),))
        model = "lineage-model"
        registry.add_version(model, run_id="run-1", tags={"dataset.version": "v4"})
        lineage = registry.resolve(model, version="1").lineage
        assert lineage == {"input.0.name": "train", "input.0.digest": "300830b9", "input.0.source_type": "s3",
                           "input.0.source": "s3://bucket/train.csv", "input.0.context": "training",
                           "mlflow.source.git.commit": "deadbeef", "dataset.version": "v4"}


# --- credentials -------------------------------------------------------------------------------------


def test_credentials_from_secret_data_never_show_values() -> None:
    import base64

    encoded = {"token": base64.b64encode(b"s3cr3t-token\n").decode()}
    credentials = Credentials.from_secret_data(encoded)
    assert credentials.token == "s3cr3t-token"
    assert "s3cr3t" not in repr(credentials) and "s3cr3t" not in str(credentials)
    basic = Credentials.from_secret_data({"MLFLOW_TRACKING_USERNAME": "ops", "MLFLOW_TRACKING_PASSWORD": "pw-123"},
                                         base64_encoded=False)
    assert (basic.kind, basic.username, basic.password) == ("basic", "ops", "pw-123")
    assert "pw-123" not in repr(basic)
    with pytest.raises(RegistryConfigError) as caught:
        Credentials.from_secret_data({"tokn": "dmFsdWU="})
    assert "tokn" in str(caught.value) and "dmFsdWU=" not in str(caught.value)
    with pytest.raises(RegistryConfigError) as caught:
        Credentials.from_secret_data({"token": "not base64 !!"})
    assert "not base64" not in str(caught.value)
    with pytest.raises(RegistryConfigError):
        Credentials(username="ops")
    # A control character would make the HTTP client refuse the header, quoting it secret and all.
    with pytest.raises(RegistryConfigError) as caught:
        Credentials.from_secret_data({"token": "SECRETTOKEN\r\nX-Injected: 1"}, base64_encoded=False)
    assert "token" in str(caught.value) and "SECRETTOKEN" not in str(caught.value)


@pytest.mark.parametrize("key", ["token", "password", "username"])
@pytest.mark.parametrize("encoded", [True, False])
def test_a_non_ascii_credential_is_refused_naming_the_key_not_the_value(key: str, encoded: bool) -> None:
    """A Latin-1 letter fits in a header, but a proxy echoing the raw header bytes is read back as UTF-8 with a
    replacement character, which no longer matches the value redaction looks for."""
    import base64

    value = "séc-SECRET-0123"
    data = {"username": "ops", "password": "pw-123", key: value} if key != "token" else {"token": value}
    if encoded:
        data = {name: base64.b64encode(text.encode()).decode() for name, text in data.items()}
    with pytest.raises(RegistryConfigError, match=f"key '{key}' holds a character an HTTP header cannot carry "
                                                  r"reliably \(only ASCII") as caught:
        Credentials.from_secret_data(data, base64_encoded=encoded)
    assert "SECRET" not in str(caught.value) and "séc" not in str(caught.value)


def _requirements(distribution: str) -> set[str]:
    """Names of a distribution's unconditional requirements, normalised."""
    names = set()
    for requirement in importlib.metadata.requires(distribution) or []:
        if "extra ==" not in requirement:
            names.add(re.split(r"[ <>=!~;\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-"))
    return names


_SKINNY_PROBE = """
import json, socket, sys
for module in json.loads(sys.argv[1]):
    sys.modules[module] = None  # as if not installed: import fails, importlib.util.find_spec returns None
import controller.registry as registry
with socket.socket() as probe_socket:
    probe_socket.bind(("127.0.0.1", 0))
    port = probe_socket.getsockname()[1]
adapter = registry.MlflowRegistry(f"http://127.0.0.1:{port}", registry.Credentials(token="t"))
try:
    adapter.resolve("model", version="1")
except registry.RegistryUnavailable as error:
    print(error)
"""


def test_registry_works_with_mlflow_skinny_alone() -> None:
    """The operator image has mlflow-skinny only: hide what full mlflow adds, then import and make a call."""
    full_only = _requirements("mlflow") - _requirements("mlflow-skinny") - {"mlflow-skinny", "mlflow-tracing"}
    hidden = sorted({module for module, owners in importlib.metadata.packages_distributions().items()
                     if any(owner.lower().replace("_", "-") in full_only for owner in owners)})
    assert {"flask", "sqlalchemy", "pandas"} <= set(hidden)
    result = subprocess.run([sys.executable, "-c", _SKINNY_PROBE, json.dumps(hidden)], capture_output=True,
                            text=True, check=False, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "unreachable: connection refused" in result.stdout


def test_a_second_rejection_killed_partway_is_not_taken_as_written() -> None:
    """The engine takes a rejection's time tag (with the flag) as proof that all its tags are written: a kill
    between the tag writes must never leave that proof beside an earlier rejection's tags."""
    from controller.engine import REJECTED_TIME_TAG, rejection_time
    from controller.registry.memory import InMemoryRegistry
    from controller.registry.types import REJECTED_BY_TAG, REJECTED_TAG

    class Killed(Exception):
        pass

    class KilledAfterEachTag(InMemoryRegistry):
        kill_after: int | None = None

        def _set_version_tags(self, model_name: str, version: str, tags: Mapping[str, str]) -> None:
            for written, (key, value) in enumerate(tags.items(), start=1):
                super()._set_version_tags(model_name, version, {key: value})
                if written == self.kill_after:
                    raise Killed

    first = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    second = first + timedelta(hours=1)
    for kill_after in range(1, 7):
        registry = KilledAfterEachTag()
        registry.add_version("nsfw", source="s")
        registry.tag_rejected("nsfw", "1", "aborted", {}, "ns/r", rejected_at=first, actor="alice")
        registry.kill_after = kill_after
        with contextlib.suppress(Killed):
            registry.tag_rejected("nsfw", "1", "nsfw-rate failed", {}, "ns/r", rejected_at=second,
                                  actor="modelrollout-controller")
        tags = registry.resolve("nsfw", version="1").tags
        if REJECTED_TAG in tags and tags.get(REJECTED_TIME_TAG) == rejection_time(second):
            assert tags[REJECTED_BY_TAG] == "modelrollout-controller", kill_after
            assert tags["modelrollout.rejected.reason"] == "nsfw-rate failed", kill_after


@pytest.mark.parametrize(("scope", "tracking_uri", "ok"), [
    ("https://mlflow.example.com", "https://MLflow.example.com:443/", True),  # same registry, spelled otherwise
    ("http://mlflow.team-a.svc.cluster.local:5000/mlflow", "http://mlflow.team-a.svc.cluster.local:5000/mlflow/",
     True),
    ("https://mlflow.example.com", "http://mlflow.example.com", False),  # another scheme: a cleartext token
    ("https://mlflow.example.com", "https://mlflow.example.com.evil.test", False),
    ("https://mlflow.example.com", "https://mlflow.example.com:8443", False),
    ("https://mlflow.example.com/a", "https://mlflow.example.com/b", False),
    ("http://mlflow.ml:5000", "http://mlflow.ml.:5000", False),  # absolute: public DNS, not the Service
    ("http://mlflow.ml.:5000", "http://mlflow.ml:5000", False),
    ("mlflow.example.com", "https://mlflow.example.com", False),  # not a URL: never matches
])
def test_credentials_are_for_the_registry_their_secret_names(scope: str, tracking_uri: str, ok: bool) -> None:
    data = {"token": "s3cr3t-token", "trackingUri": scope}
    if ok:
        assert Credentials.from_secret_data(data, base64_encoded=False, tracking_uri=tracking_uri).token
        return
    with pytest.raises(RegistryConfigError) as caught:
        Credentials.from_secret_data(data, base64_encoded=False, tracking_uri=tracking_uri)
    assert "s3cr3t" not in str(caught.value) and "evil" not in str(caught.value)


def test_credentials_without_a_registry_are_refused_when_one_is_in_use() -> None:
    with pytest.raises(RegistryConfigError, match="no 'trackingUri' key"):
        Credentials.from_secret_data({"token": "s3cr3t-token"}, base64_encoded=False, tracking_uri="https://m.x")
    assert Credentials.from_secret_data({"MLFLOW_TRACKING_TOKEN": "t", "MLFLOW_TRACKING_URI": "https://m.x"},
                                        base64_encoded=False, tracking_uri="https://m.x").token == "t"


@pytest.mark.parametrize("tracking_uri", [
    "http://evil.com\\@mlflow.ml:5000",  # urlsplit sees mlflow.ml, requests connects to evil.com
    "http://a@evil@mlflow.ml:5000",
    "http://ops@mlflow.ml:5000",
    "http://mlflow.ml:5000\\@evil.com",
])
def test_a_tracking_uri_with_user_info_or_a_backslash_gets_no_credentials(tracking_uri: str) -> None:
    data = {"token": "s3cr3t-token", "trackingUri": "http://mlflow.ml:5000"}
    with pytest.raises(RegistryConfigError, match="not an http\\(s\\) URL without user info") as caught:
        Credentials.from_secret_data(data, base64_encoded=False, tracking_uri=tracking_uri)
    assert "s3cr3t" not in str(caught.value) and "evil" not in str(caught.value)
    with pytest.raises(RegistryConfigError, match="'trackingUri' is not an http\\(s\\) URL") as caught:
        Credentials.from_secret_data({**data, "trackingUri": tracking_uri}, base64_encoded=False,
                                     tracking_uri="http://mlflow.ml:5000")
    assert "s3cr3t" not in str(caught.value)
