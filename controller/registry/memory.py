"""An in-memory registry with the same behaviour as MlflowRegistry, for engine and operator tests.

Only the primitives differ; the promotion and rollback rules are the shared ones in base.py. Set
`unavailable` to make every call fail the way an unreachable MLflow does.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.api.spec import PREVIOUS_ALIAS_SUFFIX
from controller.registry.base import DatasetInput, ModelRegistry, RunRecord, VersionRecord
from controller.registry.errors import RegistryUnavailable, VersionNotFound


@dataclass
class _Model:
    versions: dict[str, VersionRecord] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    download_uris: dict[str, str] = field(default_factory=dict)


class InMemoryRegistry(ModelRegistry):
    def __init__(self, *, previous_alias_suffix: str | None = PREVIOUS_ALIAS_SUFFIX) -> None:
        self.previous_alias_suffix = previous_alias_suffix
        self.unavailable = False
        self.calls = 0  # primitive calls made, to check that an idempotent repeat writes nothing new
        self.writes = 0
        self._models: dict[str, _Model] = {}
        self._runs: dict[str, RunRecord] = {}
        self._lock = threading.Lock()  # the operator calls adapters from worker threads

    def __repr__(self) -> str:
        return f"InMemoryRegistry(models={sorted(self._models)!r})"

    # --- setting up a test -------------------------------------------------------------------------

    def add_version(self, model_name: str, *, source: str | None = None, run_id: str | None = None,
                    tags: Mapping[str, str] | None = None, status: str = "READY",
                    download_uri: str | None = None) -> str:
        """Register a new version (creating the model if needed) and return its number. `download_uri`: what
        get-download-uri answers (default: the source, as MLflow does for a source that is no models:/ URI)."""
        with self._lock:
            model = self._models.setdefault(model_name, _Model())
            version = str(len(model.versions) + 1)
            if download_uri is not None:
                model.download_uris[version] = download_uri
            model.versions[version] = VersionRecord(
                name=model_name, version=version, run_id=run_id,
                source=source or f"memory://{model_name}/{version}", status=status, tags=dict(tags or {}))
            return version

    def add_run(self, run_id: str, *, tags: Mapping[str, str] | None = None,
                dataset_inputs: tuple[DatasetInput, ...] = ()) -> None:
        with self._lock:
            self._runs[run_id] = RunRecord(tags=dict(tags or {}), dataset_inputs=dataset_inputs)

    # --- primitives --------------------------------------------------------------------------------

    def _model(self, model_name: str) -> _Model:
        self.calls += 1
        if self.unavailable:
            raise RegistryUnavailable("in-memory registry is set unavailable")
        model = self._models.get(model_name)
        if model is None:
            raise VersionNotFound(f"registered model {model_name!r} does not exist", model_name=model_name)
        return model

    def _aliases(self, model_name: str) -> dict[str, str]:
        with self._lock:
            return dict(self._model(model_name).aliases)

    def _stored(self, model_name: str, version: str) -> tuple[_Model, VersionRecord] | None:
        """The model and its stored version, or None for either missing (the caller holds the lock)."""
        try:
            model = self._model(model_name)
        except VersionNotFound:
            return None
        record = model.versions.get(version)
        return None if record is None else (model, record)

    def _version(self, model_name: str, version: str) -> VersionRecord | None:
        with self._lock:
            found = self._stored(model_name, version)
            if found is None:
                return None
            model, record = found
            aliases = tuple(sorted(alias for alias, target in model.aliases.items() if target == version))
            return VersionRecord(name=record.name, version=record.version, run_id=record.run_id,
                                 source=record.source, status=record.status, tags=dict(record.tags),
                                 aliases=aliases)

    def _download_uri(self, model_name: str, version: str) -> str | None:
        with self._lock:
            found = self._stored(model_name, version)
            return None if found is None else found[0].download_uris.get(version, found[1].source)

    def _run(self, run_id: str) -> RunRecord | None:
        with self._lock:
            self.calls += 1
            if self.unavailable:
                raise RegistryUnavailable("in-memory registry is set unavailable")
            return self._runs.get(run_id)

    def _set_alias(self, model_name: str, alias: str, version: str) -> None:
        with self._lock:
            model = self._model(model_name)
            if version not in model.versions:
                raise VersionNotFound(f"registered model {model_name!r} has no version {version}",
                                      model_name=model_name, reference=f"version {version}")
            model.aliases[alias] = version
            self.writes += 1

    def _delete_alias(self, model_name: str, alias: str) -> None:
        with self._lock:
            if self._model(model_name).aliases.pop(alias, None) is not None:
                self.writes += 1

    def _set_version_tags(self, model_name: str, version: str, tags: Mapping[str, str]) -> None:
        with self._lock:
            model = self._model(model_name)
            record = model.versions.get(version)
            if record is None:
                raise VersionNotFound(f"registered model {model_name!r} has no version {version}",
                                      model_name=model_name, reference=f"version {version}")
            model.versions[version] = VersionRecord(
                name=record.name, version=record.version, run_id=record.run_id, source=record.source,
                status=record.status, tags={**record.tags, **tags}, aliases=record.aliases)
            self.writes += len(tags)
