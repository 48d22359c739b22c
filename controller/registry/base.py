"""The registry interface and the rules of promotion and rollback, written once over a few primitives.

Concrete registries (MLflow over REST, an in-memory fake for tests) implement only the primitives:
read a model's aliases, read a version, read a run's lineage, set/delete an alias, set a version tag.
Everything the operator relies on (idempotency, write order, bounded tag values) lives here, so the
fake behaves exactly as the real adapter does.

Write order makes every operation safe to repeat after a crash at any point:
- promote records the previous version on the candidate *before* moving the alias, so "alias points at the
  candidate" always comes with the record of what it pointed at before; only once the alias has moved does it
  point `<stableAlias>-previous` at that version, write `promoted.rollout` / `promoted.time` and set an earlier
  rejection's `modelrollout.rejected` to "false": a promotion that fails leaves no claim it happened (the engine
  sends it again until `promoted.time` reads as its own, which completes the rest);
- rollback restores the alias first (safety first), then writes the rejection tags with
  `modelrollout.rejected` last, so that tag set to "true" means all the others are there; restoring the stable
  alias puts `<stableAlias>-previous` back just before it, as the engine confirms by the stable alias alone, and
  tagging a rejection first removes a `<stableAlias>-previous` that names the rejected version. That upkeep of
  `-previous` is best effort: a refusal is logged and never holds back the writes the engine confirms by.
"""

from __future__ import annotations

import json
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from controller.api.spec import PREVIOUS_ALIAS_SUFFIX, RESERVED_ALIAS
from controller.engine.observations import rejection_time
from controller.redaction import redact_urls
from controller.registry.errors import RegistryConfigError, RegistryError, StableAliasMoved, VersionNotFound
from controller.registry.types import (
    PREVIOUS_VERSION_TAG,
    PROMOTED_ROLLOUT_TAG,
    PROMOTED_TIME_TAG,
    REJECTED_BY_TAG,
    REJECTED_EVIDENCE_TAG,
    REJECTED_REASON_TAG,
    REJECTED_ROLLOUT_TAG,
    REJECTED_TAG,
    REJECTED_TIME_TAG,
    PromotionResult,
    ResolvedVersion,
    RollbackResult,
)

log = logging.getLogger(__name__)

# Older MLflow servers cap version tag values at 5000 characters; stay below that everywhere.
MAX_REASON_CHARS = 1000
MAX_EVIDENCE_CHARS = 4000
MAX_LINEAGE_ENTRIES = 64
MAX_LINEAGE_VALUE_CHARS = 512
TRUNCATION_MARK = "...(truncated)"

LINEAGE_TAG_PREFIXES = ("lineage.", "dataset.", "data.")
LINEAGE_TAG_KEYS = frozenset({"mlflow.source.name", "mlflow.source.git.commit", "mlflow.source.git.repoURL",
                              "mlflow.source.git.branch"})

# MLflow's own rules, checked before any write so a bad name fails with a clear message and no side effect.
_ALIAS_PATTERN = re.compile(r"[\w\-]{1,255}")
# Versions are numbered 1, 2, ... and sent as strings: ASCII digits, no leading zero (fullmatch: no newline).
VERSION_NUMBER = re.compile(r"[1-9][0-9]*")


class _Unchecked(Enum):
    """promote() without an expected stable version: the alias is moved from whatever it names."""

    UNCHECKED = "unchecked"


UNCHECKED = _Unchecked.UNCHECKED


@dataclass(frozen=True)
class VersionRecord:
    """A model version as a primitive read returns it."""

    name: str
    version: str
    run_id: str | None = None
    source: str | None = None
    status: str = "READY"
    tags: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetInput:
    name: str = ""
    digest: str = ""
    source_type: str = ""
    source: str = ""
    context: str = ""  # MLflow's mlflow.data.context input tag: training, validation, ...


@dataclass(frozen=True)
class RunRecord:
    """The parts of the version's run that say where its data came from."""

    tags: Mapping[str, str] = field(default_factory=dict)
    dataset_inputs: tuple[DatasetInput, ...] = ()


class ModelRegistry(ABC):
    """What the operator needs from a model registry. Synchronous; the operator calls it in a thread.

    Every method is idempotent. Failures raise controller.registry.errors: VersionNotFound (the model,
    version or alias does not exist), RegistryUnavailable (retry later), RegistryAccessDenied,
    RegistryRequestError, RegistryConfigError.
    """

    # promote() also points `<stableAlias><suffix>` at the previous version, for one-command rollback.
    previous_alias_suffix: str | None = PREVIOUS_ALIAS_SUFFIX

    # --- the interface -----------------------------------------------------------------------------

    def resolve(self, model_name: str, version: str | None = None, alias: str | None = None) -> ResolvedVersion:
        """The version named by exactly one of `version` or `alias`, with its run, source and lineage."""
        if (version is None) == (alias is None):
            raise RegistryConfigError("resolve needs exactly one of version or alias")
        if alias is not None:
            _check_alias(alias)
            target = self._aliases(model_name).get(alias)
            if target is None:
                raise VersionNotFound(f"registered model {model_name!r} has no alias @{alias}",
                                      model_name=model_name, reference=f"alias @{alias}")
            return self._resolved(self._existing_version(model_name, target))
        assert version is not None  # narrowed by the exactly-one check above
        _check_version_format(model_name, version)
        return self._resolved(self._existing_version(model_name, version))

    def resolve_stable(self, model_name: str, stable_alias: str) -> ResolvedVersion | None:
        """The version the stable alias names, or None when the alias is not set (a first rollout)."""
        _check_alias(stable_alias)
        target = self._aliases(model_name).get(stable_alias)
        return None if target is None else self._resolved(self._existing_version(model_name, target))

    def verify_alias(self, model_name: str, alias: str) -> str | None:
        """The version the alias points at now, read from the registry (None: not set)."""
        _check_alias(alias)
        return self._aliases(model_name).get(alias)

    def download_uri(self, model_name: str, version: str) -> str:
        """Where the version's files are in the artifact store (MLflow's get-download-uri): with MLflow 3's
        `models:/m-<id>` sources, the location a storage initializer can load when the artifact root is an object
        store (s3://..., gs://...); behind MLflow's artifact proxy it is an mlflow-artifacts: URI."""
        _check_version_format(model_name, version)
        uri = self._download_uri(model_name, version)
        if uri is None:
            self._existing_version(model_name, version)  # raises VersionNotFound, naming the model or the version
            raise VersionNotFound(f"registered model {model_name!r} version {version} has no download URI",
                                  model_name=model_name, reference=f"version {version}")
        return uri

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        """Point an alias at a version, touching nothing else (a rollback uses restore_stable_alias)."""
        _check_alias(alias)
        _check_version_format(model_name, version)
        self._set_alias(model_name, alias, version)

    def promote(self, model_name: str, stable_alias: str, candidate_version: str, rollout: str, *,
                promoted_at: datetime | None = None,
                expected: str | _Unchecked | None = UNCHECKED) -> PromotionResult:
        """Move the stable alias to the candidate, recording the version it named before.

        The record is the candidate's `modelrollout.previous_version` tag (empty when there was none) and
        the `<stableAlias>-previous` alias. Calling again once the alias points at the candidate completes what a
        failure or kill after the move left undone, then changes nothing and returns the same previous version.

        `expected`: the version the caller saw on the alias (None: not set). Found on another version (nor on the
        candidate), nothing is written and StableAliasMoved is raised: someone moved it since that read, and moving
        it again would overrule them unseen (MLflow has no compare-and-set: the window left is one request).
        """
        _check_alias(stable_alias)
        _check_version_format(model_name, candidate_version)
        candidate = self._existing_version(model_name, candidate_version)
        aliases = self._aliases(model_name)
        current = aliases.get(stable_alias)
        if current == candidate_version:
            recorded = candidate.tags.get(PREVIOUS_VERSION_TAG) or None
            if not self._promotion_recorded(candidate, rollout, promoted_at):
                # The way back is this promotion's own crash record only when it names what the caller saw on the
                # alias: none at all (the alias moved there by hand), or an older promotion's of this version, is
                # no way back known now, and -previous is left as it is.
                own = PREVIOUS_VERSION_TAG in candidate.tags and (
                    isinstance(expected, _Unchecked) or (recorded or None) == (expected or None))
                self._record_promotion(model_name, stable_alias, candidate, recorded, aliases, rollout, promoted_at,
                                       way_back_known=own)
            self._overrule_rejection(model_name, candidate)  # a kill after the alias moved, before the flag
            return PromotionResult(alias=stable_alias, version=candidate_version, previous_version=recorded,
                                   alias_moved=False)
        if promoted_at is not None and self._promotion_recorded(candidate, rollout, promoted_at):
            # This promotion's tags are written only after its move: the alias was pointed back since (the caller may
            # not have seen the move, killed in between), and moving it again would overrule that unseen.
            raise StableAliasMoved(
                f"@{stable_alias} of {model_name!r} names {f'version {current}' if current else 'no version'} again "
                f"after this promotion moved it to {candidate_version}: pointed back outside this rollout, so it is "
                "not moved again", found=current)
        # An alias naming no version (removed, or its version deleted) has no one's choice to overrule: moved.
        if not isinstance(expected, _Unchecked) and current is not None and current != expected:
            raise StableAliasMoved(
                f"@{stable_alias} of {model_name!r} names {f'version {current}' if current else 'no version'}, not "
                f"{f'version {expected}' if expected else 'no version'} as when the promotion was decided: moved "
                f"outside this rollout, so it is not moved to {candidate_version}", found=current)
        # The crash record: what the alias named before, on the candidate before the alias moves.
        self._set_version_tags(model_name, candidate_version, {PREVIOUS_VERSION_TAG: current or ""})
        previous_alias = self.previous_alias(stable_alias)
        if current is None and previous_alias is not None and previous_alias in aliases:
            # A stale way back, removed before the move (safe whatever follows): an EDIT user, whom MLflow refuses
            # the delete (MANAGE), is refused before the alias moved, not after.
            self._delete_alias(model_name, previous_alias)
            aliases = {alias: version for alias, version in aliases.items() if alias != previous_alias}
        self._set_alias(model_name, stable_alias, candidate_version)
        self._record_promotion(model_name, stable_alias, candidate, current, aliases, rollout, promoted_at)
        self._overrule_rejection(model_name, candidate)
        return PromotionResult(alias=stable_alias, version=candidate_version, previous_version=current,
                               alias_moved=True)

    @staticmethod
    def _promotion_recorded(candidate: VersionRecord, rollout: str, promoted_at: datetime | None) -> bool:
        tags = candidate.tags
        return tags.get(PROMOTED_ROLLOUT_TAG) == rollout and (
            promoted_at is None or tags.get(PROMOTED_TIME_TAG) == _timestamp(promoted_at))

    def _record_promotion(self, model_name: str, stable_alias: str, candidate: VersionRecord, previous: str | None,
                          aliases: Mapping[str, str], rollout: str, promoted_at: datetime | None, *,
                          way_back_known: bool = True) -> None:
        """Once the alias names the candidate: the way back, then the promotion's own tags (promoted.time last, the
        engine's proof that all of it is written). Never before the move: a promotion whose alias write fails must
        leave neither `-previous` naming production nor a claim that the version was promoted."""
        previous_alias = self.previous_alias(stable_alias)
        if previous_alias is not None and way_back_known:
            if previous is None or not VERSION_NUMBER.fullmatch(previous):
                # A stale one would name a wrong way back. Only when set: MLflow checks MANAGE before it looks,
                # so deleting an absent alias fails every first promotion by an EDIT user.
                if previous_alias in aliases:
                    self._delete_alias(model_name, previous_alias)
            elif aliases.get(previous_alias) != previous:
                self._set_alias(model_name, previous_alias, previous)
        self._set_version_tags(model_name, candidate.version, {
            PROMOTED_ROLLOUT_TAG: rollout,
            PROMOTED_TIME_TAG: _timestamp(promoted_at),
        })

    def _overrule_rejection(self, model_name: str, version: VersionRecord) -> None:
        """Rejected once, promoted since (a retry, a human's promote): the flag says what holds now, or a guard
        filtering on it would treat production as bad. Only once the alias has moved: a promotion that fails before
        must leave the rejection standing. The rejected.* tags stay as its history."""
        if version.tags.get(REJECTED_TAG) == "true":
            self._set_version_tags(model_name, version.version, {REJECTED_TAG: "false"})

    def rollback(self, model_name: str, stable_alias: str, candidate_version: str, stable_version: str | None,
                 reason: str, evidence_summary: str | Mapping[str, Any], rollout: str, *,
                 rejected_at: datetime | None = None, actor: str | None = None) -> RollbackResult:
        """Keep or restore the stable alias on `stable_version`, then tag the candidate rejected."""
        alias_version, restored = self.restore_alias(model_name, stable_alias, stable_version, candidate_version)
        tagged = self.tag_rejected(model_name, candidate_version, reason, evidence_summary, rollout,
                                   rejected_at=rejected_at, actor=actor, stable_alias=stable_alias)
        return RollbackResult(alias=stable_alias, alias_version=alias_version, alias_restored=restored,
                              tagged=tagged)

    def restore_alias(self, model_name: str, stable_alias: str, stable_version: str | None,
                      candidate_version: str) -> tuple[str | None, bool]:
        """Make the stable alias name `stable_version` again; returns (where it points, whether it changed).

        With no stable version (a first rollout) the alias is removed only if it names the candidate:
        a rejected version must not stay stable, and an alias someone set elsewhere is not ours to touch.
        """
        if stable_version is not None:
            return stable_version, self.restore_stable_alias(model_name, stable_alias, stable_version,
                                                             rolled_back=candidate_version)
        _check_alias(stable_alias)
        current = self._aliases(model_name).get(stable_alias)
        if current is not None and current == candidate_version:
            self._delete_alias(model_name, stable_alias)
            return None, True
        return current, False

    def restore_stable_alias(self, model_name: str, stable_alias: str, stable_version: str, *,
                             rolled_back: str | None = None) -> bool:
        """Point the stable alias at `stable_version` again (a rollback's SetAlias, of `rolled_back`); True when it
        moved.

        promote() pointed `<stableAlias>-previous` at the version it replaced: once that version is stable again,
        the alias goes back to what it replaced in turn (its previous-version tag; removed when it has none, or
        when that is the version rolled back or one rejected), or the way back recorded for the next incident
        would be production itself. Only while it names that version: one moved by hand, or already put back, is
        left alone, so repeating this changes nothing. Written before the stable alias: the engine confirms by
        seeing the stable alias, so that write must come last.
        """
        _check_alias(stable_alias)
        _check_version_format(model_name, stable_version)
        aliases = self._aliases(model_name)
        previous_alias = self.previous_alias(stable_alias)
        if previous_alias is not None and aliases.get(previous_alias) == stable_version:
            self._keep_up_way_back(model_name, previous_alias, lambda: self._unwind_previous_alias(
                model_name, previous_alias, stable_version, rolled_back))
        if aliases.get(stable_alias) == stable_version:
            return False
        self._set_alias(model_name, stable_alias, stable_version)
        return True

    def _keep_up_way_back(self, model_name: str, previous_alias: str, write: Callable[[], None]) -> None:
        """Best effort: the `-previous` upkeep must never hold back the rollback's own writes. MLflow's auth lets an
        EDIT user set aliases and tags but deleting an alias needs MANAGE; a failure is logged, the alias left."""
        try:
            write()
        except RegistryError as exc:
            log.warning("%s: @%s not kept up to date (%s); the rollback goes on", model_name, previous_alias, exc)

    def _unwind_previous_alias(self, model_name: str, previous_alias: str, version: str,
                               rolled_back: str | None) -> None:
        record = self._version(model_name, version)
        if record is None:
            return  # moving the stable alias reports the missing version
        before = record.tags.get(PREVIOUS_VERSION_TAG) or ""
        # Production gone back and forth (3 over 2, 2 over 3, 3 again) records the version being rolled back: a way
        # back to it, or to any rejected version, would put a rejected model in production at the next incident.
        earlier = self._version(model_name, before) if VERSION_NUMBER.fullmatch(before) and before not in (
            version, rolled_back) else None
        if earlier is not None and earlier.tags.get(REJECTED_TAG) != "true":
            self._set_alias(model_name, previous_alias, before)
        else:
            self._delete_alias(model_name, previous_alias)  # no recorded way back that is safe to take: none

    def tag_rejected(self, model_name: str, version: str, reason: str, evidence_summary: str | Mapping[str, Any],
                     rollout: str, *, rejected_at: datetime | None = None, actor: str | None = None,
                     stable_alias: str | None = None) -> bool:
        """Tag the version rejected with bounded reason and evidence; False when this rejection is already
        recorded (same rollout, same verdict time). A later rejection of the same version (a retry that failed
        again) replaces the tags: they describe the newest one. Without `rejected_at` there is no verdict time
        to tell rejections apart, so one already recorded for the rollout counts as this one.

        With `stable_alias`, a `<stableAlias>-previous` naming the version is removed first (a rejected version is
        no way back), before the flag the engine confirms by, so that a kill in between leaves it to be done."""
        _check_version_format(model_name, version)
        record = self._existing_version(model_name, version)
        previous_alias = self.previous_alias(stable_alias) if stable_alias is not None else None
        if previous_alias is not None and self._aliases(model_name).get(previous_alias) == version:
            self._keep_up_way_back(model_name, previous_alias, lambda: self._delete_alias(model_name, previous_alias))
        when = _timestamp(rejected_at)
        if (record.tags.get(REJECTED_TAG) == "true" and record.tags.get(REJECTED_ROLLOUT_TAG) == rollout
                and (rejected_at is None or record.tags.get(REJECTED_TIME_TAG) == when)):
            return False  # a re-sent action: keep what it wrote
        tags = {
            REJECTED_REASON_TAG: bounded(reason, MAX_REASON_CHARS),
            REJECTED_EVIDENCE_TAG: bounded(_evidence_text(evidence_summary), MAX_EVIDENCE_CHARS),
            REJECTED_ROLLOUT_TAG: rollout,
            # Never left over from an earlier rejection of the same version.
            REJECTED_BY_TAG: actor or "unknown",
        }
        # The time, then the flag, last: after an earlier rejection the flag is already there, and the engine
        # takes this rejection's time as proof that all of its tags are written.
        tags[REJECTED_TIME_TAG] = when
        tags[REJECTED_TAG] = "true"
        self._set_version_tags(model_name, version, tags)
        return True

    def previous_alias(self, stable_alias: str) -> str | None:
        """The alias promote() points at the previous stable version, or None when disabled or too long."""
        if not self.previous_alias_suffix:
            return None
        name = f"{stable_alias}{self.previous_alias_suffix}"
        return name if _ALIAS_PATTERN.fullmatch(name) else None

    # --- primitives --------------------------------------------------------------------------------

    @abstractmethod
    def _aliases(self, model_name: str) -> dict[str, str]:
        """alias -> version of the registered model; VersionNotFound when the model does not exist."""

    @abstractmethod
    def _version(self, model_name: str, version: str) -> VersionRecord | None:
        """The version, or None when it (or the model) does not exist."""

    @abstractmethod
    def _run(self, run_id: str) -> RunRecord | None:
        """The version's run, or None when it is gone."""

    @abstractmethod
    def _download_uri(self, model_name: str, version: str) -> str | None:
        """The version's artifact location, or None when it (or the model) does not exist or names none."""

    @abstractmethod
    def _set_alias(self, model_name: str, alias: str, version: str) -> None:
        """Point the alias at the version; VersionNotFound when the version does not exist."""

    @abstractmethod
    def _delete_alias(self, model_name: str, alias: str) -> None:
        """Remove the alias; no error when it is not set."""

    @abstractmethod
    def _set_version_tags(self, model_name: str, version: str, tags: Mapping[str, str]) -> None:
        """Set the tags in the given order; VersionNotFound when the version does not exist."""

    # --- shared helpers ----------------------------------------------------------------------------

    def _existing_version(self, model_name: str, version: str) -> VersionRecord:
        record = self._version(model_name, version)
        if record is None:
            self._aliases(model_name)  # raises the clearer "model does not exist" when that is the cause
            raise VersionNotFound(f"registered model {model_name!r} has no version {version}",
                                  model_name=model_name, reference=f"version {version}")
        return record

    def _resolved(self, record: VersionRecord) -> ResolvedVersion:
        run = self._run(record.run_id) if record.run_id else None
        # The source is kept whole: it is what the target is given to serve (the engine records it redacted).
        return ResolvedVersion(
            name=record.name, version=record.version, run_id=record.run_id or None, source=record.source or None,
            status=record.status,
            tags=dict(record.tags), lineage=lineage_of(record, run), aliases=tuple(record.aliases))


def lineage_of(record: VersionRecord, run: RunRecord | None) -> dict[str, str]:
    """Dataset lineage, flat and bounded: the run's dataset inputs and lineage tags, then the version's.

    A version tag wins over a run tag of the same key: it was set on what is actually being rolled out.
    URLs in the values lose user:password@ and their query (a CI token in a git remote, a presigned dataset
    URL's signature): lineage is recorded in status. Redacted whole, then cut to its size: a cut first could split
    a secret from what marks it, or a JSON value from its closing brace.
    """
    entries: dict[str, str] = {}
    if run is not None:
        for index, dataset in enumerate(run.dataset_inputs):
            for key, value in (("name", dataset.name), ("digest", dataset.digest),
                               ("source_type", dataset.source_type), ("source", dataset.source),
                               ("context", dataset.context)):
                if value:
                    entries[f"input.{index}.{key}"] = value
        entries.update(_lineage_tags(run.tags))
    entries.update(_lineage_tags(record.tags))
    return {key: bounded(redact_urls(value), MAX_LINEAGE_VALUE_CHARS)
            for key, value in list(entries.items())[:MAX_LINEAGE_ENTRIES]}


def _lineage_tags(tags: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in sorted(tags.items())
            if key in LINEAGE_TAG_KEYS or key.startswith(LINEAGE_TAG_PREFIXES)}


def bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(TRUNCATION_MARK)] + TRUNCATION_MARK


def _evidence_text(evidence: str | Mapping[str, Any]) -> str:
    if isinstance(evidence, str):
        return evidence
    return json.dumps(evidence, sort_keys=True, separators=(",", ":"), default=str)


def _timestamp(moment: datetime | None) -> str:
    return rejection_time(moment or datetime.now(UTC))  # the engine compares it with its verdict's time


def _check_alias(alias: str) -> None:
    if not _ALIAS_PATTERN.fullmatch(alias or ""):
        raise RegistryConfigError(f"invalid alias name {alias!r}: MLflow allows 1-255 letters, digits, '_' and '-'")
    if RESERVED_ALIAS.match(alias):
        raise RegistryConfigError(f"alias name {alias!r} is reserved by MLflow ('latest' and v<number>)")


def _check_version_format(model_name: str, version: str) -> None:
    if not VERSION_NUMBER.fullmatch(version or ""):
        raise VersionNotFound(f"{version!r} is not an MLflow version number (1, 2, ...), so registered "
                              f"model {model_name!r} has no such version",
                              model_name=model_name, reference=f"version {version}")
