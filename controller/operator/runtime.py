"""One reconcile of one rollout: observe through the adapters, decide with the engine, act, repeat.

The engine is pure; this module is the only place that turns its actions into calls on the router, the
registry, the gate and the Prometheus judges, and their answers back into observations. Nothing here is
remembered between reconciles: what must survive a restart is in the status the engine returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import datetime as dt
import hashlib
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from string import Formatter
from typing import Any, TypeVar

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.analysis.prometheus import SCRAPE_INTERVAL, PrometheusProvider
from controller.analysis.runner import AnalysisRequest, run_analysis
from controller.api.commands import (
    COMMAND_ANNOTATION,
    Command,
    CommandAction,
    CommandError,
    parse_command,
    unreadable_key,
)
from controller.api.reach import check_gate_hosts, short_service_refusal
from controller.api.serialization import from_json, parse_time, to_json
from controller.api.spec import ModelRolloutSpec, SpecError, parse_spec
from controller.api.status import (
    CONTROLLER_ACTOR,
    FINALIZER_REFUSED,
    HISTORY_LIMIT,
    STATUS_REJECTED,
    STATUS_UNREADABLE,
    TERMINAL_PHASES,
    Condition,
    ConditionStatus,
    ConditionType,
    HistoryEntry,
    ModelRolloutStatus,
    Phase,
    VersionRef,
    same_owned_status,
)
from controller.engine import (
    Action,
    ActionFailure,
    AdapterError,
    AdapterErrorKind,
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
    holds_deletion,
    ignore_command,
    reject_spec,
)
from controller.engine.claims import in_flight, target_claim, target_holder
from controller.engine.decide import COMMAND_REFUSAL_MAX, TARGET_CONFLICT_RECHECK, wait_for_target
from controller.gate import (
    DatasetSources,
    GateReport,
    InferenceEndpoint,
    KubernetesConfigMapReader,
    MlflowAccess,
    SourceError,
    record_gate_evidence,
    run_gate,
)
from controller.gate.sources import DEFAULT_MAX_DATASET_BYTES, GATE_SCRATCH, check_https_uri
from controller.operator.event_poster import EventPoster, Posted
from controller.operator.events import POSTED_THROUGH, unposted
from controller.operator.kubeapi import (
    FINALIZER,
    ObjectRef,
    RolloutStore,
    StatusWriteRefused,
    apply_decided_status,
    owns_finalizer,
    what_decisions_read,
)
from controller.operator.scheduler import ChangedFn, changes_watched, reconcile_slot_lent
from controller.registry import (
    Credentials,
    MlflowRegistry,
    ModelRegistry,
    RegistryError,
    RegistryUnavailable,
    VersionNotFound,
)
from controller.traffic import CandidateModel, TargetState, TargetStateError, TrafficError, TrafficRouter, router_for

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Bounds how many decide -> act rounds one reconcile runs before writing status.
MAX_ROUNDS = 8
# Gates run beside the reconcile workers (which they lend out while they wait), at most this many at once.
MAX_CONCURRENT_GATES = 4
# Analyses too (a stalling Prometheus holds one for minutes), in threads of their own: in the default pool,
# min(32, CPUs + 4) threads, as few as 5, they would hold up every store call and traffic change, rollbacks included.
MAX_CONCURRENT_ANALYSES = 8
# One namespace's share of each: one tenant's slow model servers or Prometheus cannot take every slot.
MAX_GATES_PER_NAMESPACE = MAX_CONCURRENT_GATES // 2
MAX_ANALYSES_PER_NAMESPACE = MAX_CONCURRENT_ANALYSES // 2
# Registry calls (an MLflow that accepts and never answers holds each for 10 s, RequestPolicy) lend out the reconcile's
# worker while they wait, at most this many per namespace, in that namespace's own threads: a shared pool would let
# two namespaces' unanswering registries fill it ahead of a third's healthy one.
MAX_REGISTRY_CALLS_PER_NAMESPACE = 4
# While a rollback has traffic still to move (which needs no registry), the registry's answer is waited for this long
# at most: then the decision is taken as if it were unavailable, and the read goes on in its thread.
ROLLBACK_REGISTRY_WAIT_SECONDS = 2.0
# Phases after which the candidate must not be left in the target's spec.
WITHDRAWN_PHASES = ("RolledBack", "Failed")
# How long a deleted rollout that has ended waits for that withdrawal before the delete may complete.
WITHDRAWAL_GRACE = dt.timedelta(minutes=2)
# How soon finish_withdrawal is called again: a second write follows the first within seconds; a pin waits for
# a new revision's pods, which may take minutes or never come, so it is looked at less often.
WITHDRAWAL_RECHECK_SECONDS = 1.0
PIN_RECHECK_SECONDS = 15.0
# How soon a finalizer the API server refused is asked for (or let go) again while the rollout goes on without it.
FINALIZER_RETRY_SECONDS = 60.0


# A rollout's gate URL overrides, spec.target.kserve candidateUrl and stableUrl (None: the router's URL).
GateUrls = tuple[str | None, str | None]
# What a gate verdict was measured for: the object's uid and its spec's gate URLs.
_MeasuredFor = tuple[str, GateUrls]


@dataclass(frozen=True)
class OperatorConfig:
    """Operator-wide settings; a rollout's spec may override the registry and Prometheus addresses."""

    default_tracking_uri: str | None = None
    default_prometheus_url: str | None = None
    # What the serving system loads for a version: {name}, {version}, {source}, {run_id}, {download_uri}. None:
    # not set, so DEFAULT_STORAGE_URI_TEMPLATE, refused where the source is a URI no model server loads (a template
    # set, even to {source}, is the admin's word that their serving system loads what it gives).
    storage_uri_template: str | None = None
    gate_protocol: str = "v2"
    https_allowed_hosts: tuple[str, ...] = ()
    # Host patterns a gate URL override may name besides the rollout's own namespace's Services (api.reach).
    gate_hosts: tuple[str, ...] = ()
    kserve_default_mode: str | None = None
    # Golden-dataset bytes on the scratch disk, one dataset and all gates in flight together (--max-dataset-bytes).
    max_dataset_bytes: int = DEFAULT_MAX_DATASET_BYTES
    # How often Prometheus scrapes the exporter: an arm with no sample within twice this is StaleSeries.
    scrape_interval: dt.timedelta = SCRAPE_INTERVAL


@dataclass
class ReconcileOutcome:
    status: dict[str, Any]
    requeue_after: float | None = None
    actions_taken: list[str] = field(default_factory=list)
    stored_status: dict[str, Any] | None = None  # the status this step last wrote, as the API server stored it
    # Called when `status` is not stored after all (a 409): the action answers its decision read are read again.
    put_back: Callable[[], None] | None = None
    # A status this step decided that the API server refused for what it holds: `status` is then what was stored
    # before it, and the caller stores that saying why (refused_status). Or the finalizer refused: the same, with
    # finalizer_refused_status.
    refused: StatusWriteRefused | FinalizerRefused | None = None


class FinalizerRefused(ApiException):
    """The API server refused to add (`hold`) or remove the revertOnDeletion finalizer on the rollout still there
    (an admission policy, a tightened CRD rule): it answers the same next time. `problem` gives the HTTP status and
    reason only, never the body (it may quote the object)."""

    def __init__(self, status: int, reason: str | None, hold: bool) -> None:
        super().__init__(status=status, reason=reason)
        self.hold = hold
        self.problem = f"HTTP {status} {reason or ''}".rstrip()


def _kind(error: Exception) -> AdapterErrorKind:
    reason = getattr(error, "kind", None) or getattr(error, "reason", None) or "Error"
    try:
        return AdapterErrorKind(str(reason))
    except ValueError:
        return AdapterErrorKind.ERROR


# Characters of a model name that change how a models:/ URI parses: MLflow reads models:/fraud?v2/7 as the
# logged model "fraud", another object (MLflow itself refuses only '/' and ':' in a name).
# ('#' does not: MLflow parses models:/ URIs without fragments.)
_MODELS_URI_BREAKERS = {"?": "starts the URI's query", "/": "splits the URI's path"}
# In a URI the storage initializer reads with a URL parser: KServe's s3:// reader, an http(s) download. gs://,
# pvc:// and file:// are split as strings, so '?' and '#' are only text there. ('/' is refused at apply.)
_URI_BREAKERS = {"?": "starts the URI's query", "#": "starts the URI's fragment"}
_URL_PARSED = re.compile(r"(s3|https?)://", re.IGNORECASE)


DEFAULT_STORAGE_URI_TEMPLATE = "{source}"
# URI schemes only MLflow's own client resolves: no KServe or Seldon storage initializer loads them. MLflow 3 registers
# a logged model's version with source models:/m-<id>; mlflow-artifacts: is MLflow's artifact proxy.
MLFLOW_ONLY_SCHEMES = ("models", "runs", "mlflow-artifacts")


def template_fields(template: str) -> set[str]:
    """The placeholders a storage URI template names ({download_uri} costs a registry request: read only if named)."""
    try:
        return {field for _, field, _, _ in Formatter().parse(template) if field}
    except ValueError:  # a stray brace: fill_storage_uri says so
        return set()


STORAGE_URI_FIELDS = frozenset({"name", "version", "source", "run_id", "download_uri"})


def fill_storage_uri(template: str, **fields: str) -> str:
    """What the serving system loads, from --storage-uri-template ({name} {version} {source} {run_id}
    {download_uri})."""
    try:
        # Plain placeholders only, as the chart's schema admits: "{name.real}", "{name[x]}" or a format spec
        # ("{version:>9999999999}" fills gigabytes) would fail, or worse, at every version instead of at start-up.
        odd = next((f"{{{field}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
                    for _, field, spec, conversion in Formatter().parse(template)
                    if field is not None and (field not in STORAGE_URI_FIELDS or spec or conversion)), None)
        if odd is not None:
            raise KeyError(odd)
        filled = template.format(**{"download_uri": "", **fields})
    except (KeyError, IndexError, ValueError) as exc:  # an unknown placeholder, "{0}", a stray brace
        raise ValueError(f"the operator's --storage-uri-template {template!r} cannot be filled "
                         f"({type(exc).__name__}: {exc}); it may use {{name}} {{version}} {{source}} "
                         "{run_id} {download_uri}") from None
    name = fields.get("name", "")
    # Only where the template puts the name in: a version's source may be a URI of its own.
    if name and any(field == "name" for _, field, _, _ in Formatter().parse(template)):
        models = filled.lower().startswith("models:")
        # MLflow reads models:/ URIs without fragments, so '#' is only text there; a storage initializer's URL
        # parser cuts the path at '?' or '#' and would load another object.
        breakers = _MODELS_URI_BREAKERS if models else _URI_BREAKERS if _URL_PARSED.match(filled) else {}
        breaker = next((char for char in breakers if char in name), None)
        if breaker:
            where = "models:/ URI" if models else "URI"
            raise ValueError(f"spec.model.name {name!r} cannot go into the {where} of the operator's "
                             f"--storage-uri-template {template!r}: its {breaker!r} {breakers[breaker]}, so the "
                             f"serving system would load another model; register the model under a name without "
                             f"{' or '.join(map(repr, breakers))}")
    return filled


# What reading the credentials Secret can raise: the API server's answer, the Secret's content, or no answer at all.
_CREDENTIALS_ERRORS = (ApiException, RegistryError, urllib3.exceptions.HTTPError, OSError)


def _credentials_error(exc: ApiException | RegistryError | urllib3.exceptions.HTTPError | OSError,
                       secret: str) -> AdapterError:
    """`secret`: namespace/name of the Secret spec.registry.credentialsSecretRef names (a name, never its data)."""
    if isinstance(exc, RegistryError):
        return AdapterError(_kind(exc), str(exc))
    where = f"registry credentials Secret {secret} (spec.registry.credentialsSecretRef)"
    if not isinstance(exc, ApiException):
        # A timeout or dropped connection: the type only, the message may carry a URL with a token.
        return AdapterError(AdapterErrorKind.UNAVAILABLE, f"{where} could not be read: {type(exc).__name__}")
    if exc.status == 404:
        return AdapterError(AdapterErrorKind.NOT_FOUND, f"{where} not found (HTTP 404): create it with 'trackingUri' "
                                                        "and 'token' (or 'username' and 'password'), or fix the name")
    if exc.status == 403:
        return AdapterError(AdapterErrorKind.FORBIDDEN, f"{where} may not be read by the operator (HTTP 403): grant "
                                                        "it get on this Secret in this namespace")
    return AdapterError(AdapterErrorKind.ERROR, f"{where} could not be read: HTTP {exc.status}")


class RolloutRuntime:
    """The adapters of one rollout, built fresh for each reconcile (credentials are read each time)."""

    def __init__(self, obj: dict[str, Any], spec: ModelRolloutSpec, api_client: client.ApiClient,
                 config: OperatorConfig) -> None:
        self.obj = obj
        self.spec = spec
        self.namespace: str = obj["metadata"]["namespace"]
        self.name: str = obj["metadata"]["name"]
        self.api_client = api_client
        self.config = config
        self.router: TrafficRouter = router_for(obj["spec"]["target"], self.namespace, api_client,
                                                kserve_default_mode=config.kserve_default_mode,
                                                gate_hosts=config.gate_hosts)
        self._credentials: Credentials | None = None
        self._registry: ModelRegistry | None = None
        self.withdrawal_recheck = WITHDRAWAL_RECHECK_SECONDS  # set by finish_withdrawal

    # --- adapters ------------------------------------------------------------------------------------

    @property
    def target_name(self) -> str:
        target = self.spec.target
        if target.kserve is not None:
            return target.kserve.inference_service
        if target.seldon_deployment is not None:
            return target.seldon_deployment.name
        assert target.seldon_experiment is not None
        return target.seldon_experiment.name

    @property
    def gate_urls(self) -> GateUrls:
        kserve = self.spec.target.kserve
        return (kserve.candidate_url, kserve.stable_url) if kserve else (None, None)

    @property
    def tracking_uri(self) -> str | None:
        return self.spec.registry.tracking_uri or self.config.default_tracking_uri

    @property
    def credentials_secret(self) -> str:
        ref = self.spec.registry.credentials_secret_ref
        return f"{self.namespace}/{ref.name if ref else ''}"

    def credentials(self) -> Credentials | None:
        ref = self.spec.registry.credentials_secret_ref
        if ref is None:
            return None
        if self._credentials is None:
            # Only the rollout's own namespace, only the Secret it names, only for the registry it names.
            secret = client.CoreV1Api(self.api_client).read_namespaced_secret(ref.name, self.namespace)
            self._credentials = Credentials.from_secret_data(secret.data or {}, tracking_uri=self.tracking_uri or "")
        return self._credentials

    def registry(self) -> ModelRegistry:
        if self._registry is None:
            uri = self.tracking_uri
            if not uri:
                raise RegistryError("no registry: set spec.registry.trackingUri or the operator's default")
            self._registry = MlflowRegistry(uri, self.credentials())
        return self._registry

    def _acting_registry(self) -> ModelRegistry:
        """registry() for an action: a credentials Secret that cannot be read is a RegistryError, recorded as the
        action's failure and retried, not a reconcile that raises (observe_registry words it with its kind)."""
        try:
            return self.registry()
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            error = _credentials_error(exc, self.credentials_secret)
            raised = RegistryUnavailable if error.kind is AdapterErrorKind.UNAVAILABLE else RegistryError
            raise raised(error.message) from None

    @property
    def storage_uri_template(self) -> str:
        return self.config.storage_uri_template or DEFAULT_STORAGE_URI_TEMPLATE

    def storage_uri(self, version: VersionRef) -> str:
        template = self.storage_uri_template
        download_uri = ""
        if "download_uri" in template_fields(template):
            try:
                download_uri = self._acting_registry().download_uri(self.spec.model.name, version.version)
            except RegistryError as exc:
                raised = RegistryUnavailable if exc.retryable else RegistryError
                raise raised(f"version {version.version}'s download URI ({{download_uri}} in the operator's "
                             f"--storage-uri-template) cannot be read from the registry now: {exc.message}") from None
        source = version.source or ""
        if version.source_redacted:
            # Status holds it without its secret; the registry has it whole. So serving such a version, even
            # restoring it after promotion, needs the registry to answer (a source without secrets needs none).
            try:
                source = self._acting_registry().resolve(self.spec.model.name, version=version.version).source or ""
            except RegistryError as exc:
                raised = RegistryUnavailable if exc.retryable else RegistryError
                raise raised(f"version {version.version}'s source holds credentials, recorded redacted, and cannot "
                             f"be read whole from the registry now: {exc.message}") from None
        return fill_storage_uri(template, name=self.spec.model.name, version=version.version, source=source,
                                run_id=version.run_id or "", download_uri=download_uri)

    def _unloadable_source(self, candidate: ResolvedVersion | None, stable: ResolvedVersion | None) -> str | None:
        """Why the rollout about to be resolved cannot start: with the template not set, the default {source} would
        give KServe or a SeldonDeployment a URI that only MLflow resolves, and the candidate would never get ready
        (only failing at progressDeadline, blaming the target), or a rollback would restore stable as one. An
        explicit template is used as it is; Seldon v2 Experiments load no URI from the operator."""
        target = self.spec.target
        # In any phase, for the candidate already taken on too: the engine refuses it only when it comes to resolve
        # one (a new rollout, the one a rollback in flight makes way for, a retry: review s32r2b), never in flight.
        if self.config.storage_uri_template \
                or (target.kserve is None and target.seldon_deployment is None) \
                or candidate is None or not candidate.source or candidate.status != "READY" \
                or (stable is not None and stable.version == candidate.version):  # already stable: nothing staged
            return None
        for role, found in (("candidate", candidate), ("stable", stable)):
            scheme = (found.source or "").split(":", 1)[0].lower() if found is not None else ""
            if found is not None and ":" in (found.source or "") and scheme in MLFLOW_ONLY_SCHEMES:
                return (f"{role} version {found.version}'s source is a {scheme}: URI, which no built-in KServe or "
                        f"Seldon storage initializer loads (MLflow 3 registers models:/m-<id>), and the operator's "
                        f"--storage-uri-template (chart value controller.storageUriTemplate) is not set, so "
                        f"{DEFAULT_STORAGE_URI_TEMPLATE} would give it to {target.description} as it is: set it to "
                        "where the model's files are, e.g. {download_uri} (MLflow's get-download-uri: s3://... when "
                        "the artifact root is an object store) or s3://<bucket>/{name}/{version} ({source} set "
                        "explicitly, if your cluster registers a storage container for the scheme)")
        return None

    # --- observing -----------------------------------------------------------------------------------

    def observe_registry(self, status: ModelRolloutStatus | None = None) -> RegistryObservation:
        model = self.spec.model
        rolled_back, rolled_back_gone, candidate_gone = None, False, False
        try:
            registry = self.registry()
            try:
                candidate = _engine_version(registry.resolve(model.name, version=model.version, alias=model.alias))
            except VersionNotFound:
                candidate = None
            try:
                stable = registry.resolve_stable(model.name, model.stable_alias)
            except VersionNotFound as exc:
                pending = status is None or (str(status.phase) == "Pending" and status.candidate is None)
                if exc.reference is not None or candidate is not None or not pending:
                    raise
                # No such registered model (a typo?): nothing resolves, which fails the rollout with that
                # reason, instead of waiting in Pending for a registry that answers the same way for ever.
                return RegistryObservation(candidate=None)
            own = status.candidate.version if status and status.candidate and \
                str(status.phase) in ("RollingBack", "Promoting", "Paused") else None
            if own and (candidate is None or candidate.version != own):
                # The spec (or the alias it names) moved on: the rollout's own candidate is still to be seen, its
                # rejection tags while rolling back, and whether it still exists at all before (a promote command
                # reaches a Paused rollout) and while it is promoted.
                try:
                    seen = _engine_version(registry.resolve(model.name, version=own))
                except VersionNotFound:
                    seen, candidate_gone = None, True
                if str(status.phase) == "RollingBack":
                    rolled_back, rolled_back_gone = seen, candidate_gone
        except _CREDENTIALS_ERRORS as exc:
            return RegistryObservation(error=_credentials_error(exc, self.credentials_secret))
        # Not an error: a rollback under way (the old candidate's, which the new one supersedes) still needs the
        # registry's answer; the engine refuses the candidate only when resolving it (Pending, RegistryInvalid).
        return RegistryObservation(candidate=candidate,
                                   stable_alias_version=_engine_version(stable) if stable else None,
                                   rolled_back=rolled_back, rolled_back_gone=rolled_back_gone,
                                   candidate_gone=candidate_gone,
                                   unloadable=self._unloadable_source(candidate,
                                                                      _engine_version(stable) if stable else None))

    def observe_target(self) -> tuple[TargetObservation | None, TargetState | None]:
        try:
            state = self.router.observe()
        except TrafficError as exc:
            return TargetObservation(error=AdapterError(_kind(exc), str(exc))), None
        if not state.exists:
            return TargetObservation(error=AdapterError(AdapterErrorKind.NOT_FOUND,
                                                        state.message or f"{state.target} not found")), state
        if not state.synced:
            return None, state  # the serving controller has not caught up: nothing can be confirmed yet
        return TargetObservation(ready=state.ready, stable_version=state.stable_version,
                                 canary_version=state.canary_version, canary_ready=state.canary_ready,
                                 canary_weight=state.canary_weight, detail=state.message,
                                 pinned=state.pinned), state

    def commands(self) -> tuple[Command, ...]:
        command = read_command(self.obj)
        return (command,) if isinstance(command, Command) else ()  # a refusal is recorded by refuse_command

    # --- acting --------------------------------------------------------------------------------------

    def act(self, action: Action, status: ModelRolloutStatus) -> None:
        model = self.spec.model
        rollout = f"{self.namespace}/{self.name}"
        match action:
            case StageCandidate(candidate=candidate):
                self.router.stage(CandidateModel(model.name, candidate.version, self.storage_uri(candidate)),
                                  stable_version=status.stable.version if status.stable else None)
            case SetCanaryWeight() if action.withdraw:
                self.router.rollback()
            case UnstageCandidate():
                self.router.rollback()
            case SetCanaryWeight(weight=weight, candidate_version=version):
                # A step, 0% included: only this rollout's candidate takes it (the router checks the version).
                self.router.set_weight(weight, version)
            case PromoteCandidate():
                self.router.promote()
            case RestoreStable(stable=stable):
                self.router.restore(CandidateModel(model.name, stable.version, self.storage_uri(stable)))
            case SetAlias(alias=alias, version=version, promotion=True):
                # Compare-and-set on what the rollout found: moved since, StableAliasMoved (Conflict) and nothing
                # written; the next reconcile's read holds the promotion (StableMismatch).
                self._acting_registry().promote(model.name, alias, version, rollout,
                                        promoted_at=status.promotion.started_at if status.promotion else None,
                                        expected=status.stable.version if status.stable else None)
            case SetAlias(alias=alias, version=version):  # a rollback's: the stable version back, and its -previous
                self._acting_registry().restore_stable_alias(
                    model.name, alias, version, rolled_back=status.candidate.version if status.candidate else None)
            case RemoveAlias(alias=alias, version=version):
                self._acting_registry().restore_alias(model.name, alias, None, version)
            case TagRejected(version=version, reason=reason, evidence=evidence, rejected_at=at, actor=actor):
                self._acting_registry().tag_rejected(model.name, version, reason, dict(evidence), rollout,
                                             rejected_at=at, actor=actor, stable_alias=model.stable_alias)
            case _:
                raise TypeError(f"not an effect action: {action!r}")

    @staticmethod
    def calls_registry(action: Action, template: str | None = None) -> bool:
        """Whether act(action) calls the registry: an alias or a tag, or serving a version whose source status holds
        redacted (storage_uri reads it whole) or through a `template` naming {download_uri}."""
        match action:
            case SetAlias() | RemoveAlias() | TagRejected():
                return True
            case StageCandidate(candidate=version) | RestoreStable(stable=version):
                return bool(version.source_redacted) or "download_uri" in template_fields(template or "")
        return False

    def finish_withdrawal(self, status: ModelRolloutStatus,
                          still_current: Callable[[], bool | None] = lambda: True) -> bool:
        """After a rollback, keep calling the router until the spec no longer names the rejected candidate.

        Traffic leaves the candidate with the first call (that is what the engine confirms); some serving
        systems need a second write once their controller has moved the traffic (KServe Knative: the stable
        storageUri goes back only after canaryTrafficPercent 0 took effect, and that pin comes off once the copy
        of stable it made is ready: `pinned`, whatever version was withdrawn). True while that is unfinished.
        `still_current` is asked right before a write: status may be an old read (a second operator during a
        rolling update), and a retry since may have staged the same version again. None (it cannot tell now):
        unfinished, asked again after withdrawal_recheck.
        """
        if str(status.phase) not in WITHDRAWN_PHASES or status.candidate is None:
            return False
        try:
            state = self.router.observe()
            if state.exists and state.pinned:
                if (current := still_current()) is not True:
                    return current is None
                self.router.rollback()  # unpins once the serving system is ready for it, else nothing
                self.withdrawal_recheck = PIN_RECHECK_SECONDS
                return self.router.observe().pinned
            if not state.exists or not state.canary_staged:
                return False
            if not state.synced:
                return True  # the serving controller has not caught up: whose canary it is shows after
            # Only this rollout's own candidate: a canary of another version belongs to another rollout.
            if state.canary_version != status.candidate.version:
                return False
            if (current := still_current()) is not True:
                return current is None
            self.router.rollback()
            return self.router.observe().canary_staged
        except TrafficError as exc:
            log.warning("%s/%s: finishing the rollback: %s", self.namespace, self.name, exc)
            # A target this router can never drive (e.g. ModelMesh) is not retried every second.
            return not (isinstance(exc, TargetStateError) and exc.reason == "Invalid")

    async def measure_gate(self, action: RunGate, state: TargetState | None) -> JudgeResult:
        try:
            # Checked where the gate runs, too: the step that checked the settings may have started this attempt
            # (a new version past the last gate), after check_operator_settings skipped the hosts.
            check_gate_hosts(self.spec, self.namespace, self.config.gate_hosts)
        except SpecError as exc:
            return JudgeResult(action.id, error=AdapterError(AdapterErrorKind.INVALID, str(exc)))
        candidate_override, stable_override = self.gate_urls
        candidate_url = candidate_override or (state.canary_url if state else None)
        stable_url = stable_override or (state.stable_url if state else None)
        # Why not, when the router says (a Seldon endpoint it refuses to call): on-call sees it in the gate's error.
        why = f": {state.message}" if state and state.message else ""
        if not candidate_url:
            return JudgeResult(action.id, error=AdapterError(AdapterErrorKind.UNAVAILABLE,
                                                             f"the staged candidate has no inference URL yet{why}"))
        thresholds = action.dataset.thresholds
        compares = thresholds.max_accuracy_drop is not None or thresholds.max_disagreement is not None
        if action.stable and compares and not stable_url:  # judged alone, the comparisons would be skipped
            return JudgeResult(action.id, error=AdapterError(
                AdapterErrorKind.UNAVAILABLE, f"stable version {action.stable.version} has no inference URL yet: "
                "maxAccuracyDrop and maxDisagreement compare the candidate with it" + why))
        protocol = self.config.gate_protocol
        candidate = InferenceEndpoint.from_url(candidate_url, self.target_name, protocol)
        stable = InferenceEndpoint.from_url(stable_url, self.target_name, protocol) \
            if stable_url and action.stable else None
        uri = self.tracking_uri
        try:
            credentials = self.credentials() if uri else None
        except _CREDENTIALS_ERRORS as exc:  # the Secret is missing, forbidden, incomplete or unreachable
            return JudgeResult(action.id, error=_credentials_error(exc, self.credentials_secret))
        sources = DatasetSources(
            mlflow=MlflowAccess.with_credentials(uri, credentials) if uri else None,
            config_maps=KubernetesConfigMapReader(self.api_client),
            https_allowed_hosts=self.config.https_allowed_hosts, max_bytes=self.config.max_dataset_bytes,
            scratch=GATE_SCRATCH)
        report = await run_gate(action.dataset, candidate, stable, namespace=self.namespace, sources=sources)
        if sources.mlflow is not None and report.error is None:
            # Cancelling this task (a URL fixed mid-run) cannot stop the thread: it checks before each write.
            dropped = threading.Event()
            urls = hashlib.sha256(f"{candidate_url} {stable_url or ''}".encode()).hexdigest()[:12]
            try:
                await asyncio.to_thread(self.record_gate_evidence, sources.mlflow, report, action, urls,
                                        dropped.is_set)
            except asyncio.CancelledError:
                dropped.set()
                raise
        return report.to_judge_result(action.id)

    def record_gate_evidence(self, access: MlflowAccess, report: GateReport, action: RunGate, urls: str = "",
                             dropped: Callable[[], bool] = lambda: False) -> None:
        """The full gate report as an MLflow run linked to the candidate version: it outlives the resource.
        urls: a digest of the gate's URLs: a rerun at fixed URLs keeps the judge id, but is a run of its own."""
        try:
            record_gate_evidence(access, report, model_name=self.spec.model.name,
                                 candidate_version=action.candidate.version,
                                 stable_version=action.stable.version if action.stable else None,
                                 rollout=f"{self.namespace}/{self.name}",
                                 # Judge ids are unique within one rollout only; the run must be this one's.
                                 request_id=f"{self.obj['metadata'].get('uid', '')}/{action.id}"
                                            + (f"/{urls}" if urls else ""), dropped=dropped)
        except SourceError as exc:
            # The verdict stands on its own; a lost evidence run must not block or flip it.
            log.warning("%s/%s: could not record gate evidence in MLflow: %s", self.namespace, self.name,
                        access.redacted(exc.message))
        except Exception as exc:
            # Whatever MLflow answered, the verdict must still reach the engine. No traceback in the log:
            # chained HTTP-library exceptions can carry the request, Authorization header and all.
            log.warning("%s/%s: could not record gate evidence in MLflow (%s): %s", self.namespace, self.name,
                        type(exc).__name__, access.redacted(str(exc))[:500])

    def measure_analysis(self, action: RunAnalysis, now: dt.datetime) -> JudgeResult:
        prometheus = self.spec.analysis.prometheus
        address = prometheus.address if prometheus else self.config.default_prometheus_url
        if not address:
            return JudgeResult(action.id, error=AdapterError(AdapterErrorKind.INVALID,
                                                             "no Prometheus: set spec.analysis.prometheus.address"))
        metrics = [m for m in self.spec.analysis.metrics if not action.metrics or m.name in action.metrics]
        request = AnalysisRequest(namespace=self.namespace, target=self.target_name, mode=str(action.mode),
                                  window_start=action.window_start, now=now, baseline_window=action.baseline_window,
                                  candidate_version=action.candidate_version,
                                  baseline_version=action.baseline_version, promoted_at=action.promoted_at)
        verdicts = run_analysis(metrics, request,
                                PrometheusProvider(address, scrape_interval=self.config.scrape_interval))
        return JudgeResult(action.id, verdicts=verdicts, measured_at=now)


def _engine_version(version: Any) -> ResolvedVersion:
    return ResolvedVersion(version=version.version, run_id=version.run_id, source=version.source,
                           lineage=dict(version.lineage), tags=dict(version.tags), status=version.status)


def check_operator_settings(spec: ModelRolloutSpec, namespace: str, config: OperatorConfig,
                            gate_ahead: bool = True) -> None:
    """What the spec needs from this operator's settings, refused with the field named (SpecError).

    gate_ahead: the attempt's gate has not finished. Only then do the gate's URLs and the golden dataset's source
    matter: a rollout past its gate is not frozen (its canary kept, its analysis and bake stopped) because a host
    left an allow-list since (an operator upgrade, a changed --gate-hosts)."""
    if gate_ahead:
        check_gate_hosts(spec, namespace, config.gate_hosts)
    if spec.analysis.metrics and spec.analysis.prometheus is None and not config.default_prometheus_url:
        raise SpecError("spec.analysis.prometheus.address",
                        "is required: the metrics need a Prometheus and the operator has no default (--prometheus-url)")
    # The registry gets the credentials and names what is served, Prometheus judges the canary: neither may be a
    # short Service name, the spec's or the operator's default (api.reach), at any phase.
    prometheus = spec.analysis.prometheus
    for path, own, default, setting in (
            ("spec.registry.trackingUri", spec.registry.tracking_uri, config.default_tracking_uri,
             "operator run --tracking-uri, $MLFLOW_TRACKING_URI"),
            ("spec.analysis.prometheus.address", prometheus.address if prometheus else None,
             config.default_prometheus_url if spec.analysis.metrics else None,
             "operator run --prometheus-url, $PROMETHEUS_URL")):
        short = short_service_refusal(own or default or "")
        if short:
            raise SpecError(path, short if own else f"is unset, and the operator's default ({setting}) is refused: "
                            f"{short}")
    # The gate's own check, now: else the refusal comes only at gate time, after the candidate is staged.
    dataset = spec.golden_dataset
    if gate_ahead and dataset is not None and dataset.uri.startswith("https://"):
        try:
            check_https_uri(dataset.uri, config.https_allowed_hosts)
        except SourceError as exc:  # a SourcePolicyError: the allow-list, credentials, an unusable URL
            raise SpecError("spec.goldenDataset.uri", f"{exc.message} (hosts allowed: operator run "
                            "--dataset-https-hosts, chart value controller.datasetHttpsHosts)") from None


# While the operator's settings refuse the spec, decisions are carried out only in these phases: a rollback's.
_ROLLBACK_PHASES = frozenset({Phase.ROLLING_BACK, Phase.ROLLED_BACK, Phase.FAILED})
# What reading a status back can raise on a value it does not expect.
_STATUS_ERRORS = (ValueError, TypeError, AttributeError)


def read_command(obj: Mapping[str, Any]) -> Command | CommandError | None:
    """The command annotation: the command, why it is none, or None when there is no annotation."""
    text = (obj["metadata"].get("annotations") or {}).get(COMMAND_ANNOTATION)
    if not text:
        return None
    try:
        return parse_command(text)
    except CommandError as exc:
        return exc


def refuse_command(obj: Mapping[str, Any], status: ModelRolloutStatus, now: dt.datetime,
                   why: str | None = None) -> ModelRolloutStatus:
    """`status` with the command annotation recorded as CommandIgnored once (its key kept in handledCommands, as
    the engine does) when it cannot be carried out: a text that is no command (keyed by the text's digest, with
    the parse error) or, given `why`, any command: one kept for a fixed spec could act hours after it was meant."""
    command = read_command(obj)
    meta = obj["metadata"]
    if isinstance(command, CommandError):
        text = meta["annotations"][COMMAND_ANNOTATION]
        key, detail, actor, command_id = unreadable_key(text), str(command), CONTROLLER_ACTOR, None
    elif isinstance(command, Command) and why is not None:
        key, detail, actor, command_id = command.id, f"{command.label}: {why}", command.actor, command.id
    else:
        return status
    if key in status.handled_commands:
        return status
    log.warning("%s/%s: command not carried out: %s", meta["namespace"], meta["name"],
                detail[:COMMAND_REFUSAL_MAX])
    return ignore_command(status, key, detail, now, actor=actor, command_id=command_id)


def _rollback_asked(obj: Mapping[str, Any], status: ModelRolloutStatus) -> bool:
    """A rollback under way, or an abort or rollback command not handled yet: decisions that run no gate."""
    command = read_command(obj)
    return status.phase is Phase.ROLLING_BACK or (
        isinstance(command, Command) and command.id not in status.handled_commands
        and command.action in (CommandAction.ABORT, CommandAction.ROLLBACK))


def _start_held(status: ModelRolloutStatus) -> bool:
    """Whether the attempt in flight is a start stored and then held unacted, its finalizer refused (Ready says so
    until a decision is taken), not one running when revertOnDeletion was turned on."""
    ready = status.condition(ConditionType.READY)
    return ready is not None and ready.reason == FINALIZER_REFUSED


def _nothing_new(obj: Mapping[str, Any], status: ModelRolloutStatus) -> bool:
    """Ended, its spec seen and no command waiting: nothing asked of it that waiting would hold back."""
    command = read_command(obj)
    return (status.phase in TERMINAL_PHASES
            and status.observed_generation == int(obj["metadata"].get("generation") or 0)
            and not (isinstance(command, Command) and command.id not in status.handled_commands))


def _status_problem(raw: Any, error: Exception) -> str:
    """Which top-level status field does not read, and the innermost error (a union's says only "matches none")."""
    where, problem = "status", error
    for key, value in raw.items() if isinstance(raw, Mapping) else ():
        try:
            from_json(ModelRolloutStatus, {key: value})
        except _STATUS_ERRORS as exc:
            where, problem = f"status.{key}", exc
            break
    while isinstance(problem.__cause__, Exception):
        problem = problem.__cause__
    return f"{where}: {str(problem)[:200]}"


def _unreadable_status(raw: Any, problem: str, generation: int, now: dt.datetime) -> dict[str, Any]:
    """`raw` with only its Ready condition changed, to say it cannot be read: the rest is kept as it is for an
    operator that can read it (the newer one that wrote it)."""
    message = (f"This operator cannot read the status ({problem}); it does nothing until the status is fixed or "
               "an operator that can read it runs.")
    return _not_ready(raw, STATUS_UNREADABLE, message, generation, now)


def refused_status(raw: Any, problem: str, generation: int, now: dt.datetime) -> dict[str, Any]:
    """The stored status `raw`, kept as it is but for saying that the status decided on it was refused by the API
    server: Ready False (StatusRejected) and a history entry, posted as a Warning Event. `problem` is the API server's
    reason, never the decided status's contents. Said once per generation: a refusal that repeats changes nothing
    (so it writes nothing and wakes nothing); one after a spec edit says the edit did not help. A restart's write
    (the gate handed out again) replaces Ready but records nothing: the newest history entry still says it for this
    generation (matched on that, not on the words: the byte count differs each time), so only Ready says it again."""
    hint = (" Names from the golden dataset and the thresholds (classes, slice tags) are repeated in status: very long "
            "ones make it this large." if problem.startswith("too large") else "")
    said = f"The API server refused to store the status decided for generation {generation} of this rollout:"
    message = (f"{said} {problem}.{hint} The status stored before is kept and the rollout does not move on; it is "
               "decided again after a while, and at once when its spec changes or a command comes.")
    return _say_refused_once(raw, STATUS_REJECTED, said, message, generation, now)


def finalizer_refused_status(raw: Any, refused: FinalizerRefused, generation: int, now: dt.datetime,
                             going_on: bool = False) -> dict[str, Any]:
    """The status `raw`, kept as it is but for saying that the API server refused the finalizer. Added before a
    start, nothing starts: Ready False, as refused_status. Otherwise (a rollout running goes on, `going_on`; an ended
    one keeps its outcome, and follows a new spec held by the finalizer left on) a history entry (a Warning Event)
    only, once, since Ready is the decisions' own."""
    verb = "add" if refused.hold else "remove"
    said = f"The API server refused to {verb} the controller's finalizer {FINALIZER} ({refused.problem}):"
    starting = refused.hold and not going_on
    if starting:
        message = (f"{said} spec.rollback.revertOnDeletion cannot be honoured, so the rollout does not start. Allow "
                   "the finalizer (an admission policy or webhook refusing it), or set revertOnDeletion to false.")
    elif refused.hold:
        message = (f"{said} a delete of this rollout would not roll it back (revertOnDeletion). It goes on, and the "
                   "finalizer is asked for again.")
    else:
        message = (f"{said} a delete of this rollout waits until the finalizer is removed. It is tried again; or allow "
                   "the change, or remove it by hand.")
    return _say_refused_once(raw, FINALIZER_REFUSED, said, message, generation, now, ready=starting)


def _say_refused_once(raw: Any, reason: str, said: str, message: str, generation: int, now: dt.datetime,
                      ready: bool = True) -> dict[str, Any]:
    """`raw` with Ready False (`reason`; unless not `ready`) and a history entry saying `message`, once per generation
    (without Ready: while the history holds it)."""
    status = dict(raw) if isinstance(raw, Mapping) else {}
    conditions = status.get("conditions") if isinstance(status.get("conditions"), list) else []
    if ready and any(isinstance(item, Mapping) and item.get("type") == ConditionType.READY and item.get("reason") ==
                     reason and item.get("observedGeneration") == generation for item in conditions):
        return status
    if ready:
        status = _not_ready(status, reason, message, generation, now)
    history = status.get("history") if isinstance(status.get("history"), list) else []
    newest = history[-1] if history and isinstance(history[-1], Mapping) else {}
    if newest.get("event") == reason and str(newest.get("detail") or "").startswith(said):
        return status
    if not ready and any(isinstance(item, Mapping) and item.get("detail") == message for item in history):
        return status  # a rollout going on: said once, however many entries its decisions add after it
    numbers = [item["seq"] for item in history if isinstance(item, Mapping) and isinstance(item.get("seq"), int)]
    floor = status.get(POSTED_THROUGH) if isinstance(status.get(POSTED_THROUGH), int) else 0
    entry = HistoryEntry(now.replace(microsecond=0), reason, message, seq=max([*numbers, floor]) + 1)
    status["history"] = [*history, to_json(entry)][-HISTORY_LIMIT:]  # numbered as append_history numbers
    return status


def _not_ready(raw: Any, reason: str, message: str, generation: int, now: dt.datetime) -> dict[str, Any]:
    """`raw` with only its Ready condition changed, to False with this reason and message."""
    status = dict(raw) if isinstance(raw, Mapping) else {}
    ready = to_json(Condition(type=ConditionType.READY, status=ConditionStatus.FALSE, reason=reason,
                              message=message, last_transition_time=now.replace(microsecond=0),
                              observed_generation=generation))
    conditions = list(status.get("conditions") or ()) if isinstance(status.get("conditions"), list) else []
    old = next((item for item in conditions if isinstance(item, Mapping) and item.get("type") == ready["type"]), None)
    if old is None:
        status["conditions"] = [ready, *conditions]
        return status
    if old.get("status") == ready["status"] and old.get("lastTransitionTime"):
        ready["lastTransitionTime"] = old["lastTransitionTime"]  # False already: no transition
    status["conditions"] = [ready if item is old else item for item in conditions]
    return status


TargetKey = tuple[str, str, str]  # namespace, kind, name


class _StartLocks:
    """One lock per target (or what `make` makes per key: a namespace's share of the judges), kept only while some
    rollout holds it or waits for it (targets and namespaces come and go)."""

    def __init__(self, make: Callable[[], asyncio.Lock | asyncio.Semaphore] = asyncio.Lock) -> None:
        self._make = make
        self._locks: dict[Hashable, asyncio.Lock | asyncio.Semaphore] = {}
        self._users: dict[Hashable, int] = {}

    def join(self, target: Hashable) -> asyncio.Lock | asyncio.Semaphore:
        self._users[target] = self._users.get(target, 0) + 1
        if target not in self._locks:
            self._locks[target] = self._make()
        return self._locks[target]

    def leave(self, target: Hashable) -> None:
        self._users[target] -= 1
        if not self._users[target]:
            del self._users[target], self._locks[target]

    def release(self, target: Hashable) -> None:
        self._locks[target].release()
        self.leave(target)

    def __len__(self) -> int:
        return len(self._locks)

    def __contains__(self, target: Hashable) -> bool:
        return target in self._locks


@contextlib.asynccontextmanager
async def _share(locks: _StartLocks, key: Hashable) -> AsyncIterator[None]:
    """Hold key's lock (a namespace's share) for the block; given back on every path, cancellation included."""
    lock = locks.join(key)
    try:
        await lock.acquire()
    except BaseException:
        locks.leave(key)
        raise
    try:
        yield
    finally:
        locks.release(key)


@dataclass
class _Measurement:
    """A gate or an analysis under way for a rollout, in a task of its own: a reconcile waiting for it stops for
    someone else's change to the rollout, and the next decision that asks for the same run picks it up."""

    uid: str
    generation: int
    gate_urls: GateUrls  # the spec's when it started
    action: RunGate | RunAnalysis
    task: asyncio.Task[JudgeResult]
    asked: bool = True  # by the current reconcile's last decision

    def answers(self, uid: str, generation: int, gate_urls: GateUrls, action: RunGate | RunAnalysis) -> bool:
        """Whether this run's answer is `action`'s on the rollout as it is now (its uid, generation, gate URLs)."""
        if self.uid != uid or self.action != action:
            return False
        if isinstance(action, RunGate):
            # A gate's inputs are in its action, but for where it sends them: a URL fixed since (it "may be fixed
            # at any time") is judged, not the one the run started with. Any other spec edit leaves it running.
            return self.gate_urls == gate_urls
        # An analysis reads queries from the spec: one measured before a spec edit is measured again (as its
        # verdict is never kept past a lost write).
        return self.generation == generation


def _asks_for(status: ModelRolloutStatus, action: RunGate | RunAnalysis) -> bool:
    """Whether `status` still has the request `action` answers open (the engine hands a run out again only after
    a while, and matches its answer by request id), in a phase that reads it."""
    if status.phase is Phase.ROLLING_BACK or status.phase in TERMINAL_PHASES:
        return False
    if isinstance(action, RunGate):
        return status.gate is not None and status.gate.request_id == action.id and status.gate.completed_at is None
    return status.analysis is not None and status.analysis.request_id == action.id


def _unread(task: asyncio.Task[JudgeResult]) -> None:
    """A dropped run's answer or error: read by nobody (and not logged as never retrieved)."""
    if not task.cancelled():
        task.exception()


def _changed_by_others(obj: Mapping[str, Any]) -> ChangedFn:
    """Whether a watch event's body (None: gone) shows obj changed in what a decision reads, apart from status: the
    spec, the command annotation, a deletion, another object under the name. The operator's own writes (status,
    its finalizer) change none of these, so they never stop a wait."""
    read = what_decisions_read({"metadata": obj["metadata"]})

    def changed(body: Mapping[str, Any] | None) -> bool:
        return body is None or what_decisions_read({"metadata": body.get("metadata") or {}}) != read

    return changed


class _StartGate:
    """A per-target lock held from a rollout's look at the others until its own start is stored (or the step ends,
    whichever is first): released once."""

    def __init__(self, locks: _StartLocks | None = None, target: TargetKey = ("", "", "")) -> None:
        self._locks = locks
        self._target = target
        self._held = False

    async def __aenter__(self) -> _StartGate:
        if self._locks is not None:
            lock = self._locks.join(self._target)
            acquired = False
            try:
                async with reconcile_slot_lent():  # waiting here must not keep other targets' rollouts from a worker
                    await lock.acquire()
                    acquired = True
            except BaseException:  # cancelled waiting, or taking the worker slot back once it had the lock
                if acquired:
                    lock.release()
                self._locks.leave(self._target)
                raise
            self._held = True
        return self

    @property
    def held(self) -> bool:
        return self._held

    async def __aexit__(self, *_: object) -> None:
        self.release()

    def release(self) -> None:
        if self._held and self._locks is not None:
            self._held = False
            self._locks.release(self._target)


class RolloutStepper:
    """(observe, decide, act)* on a rollout just read; the caller writes the final status.

    The first step of each rollout since the operator started tells the engine to resend pending actions.

    Write-ahead: before carrying out a decision's actions (effects or a judge run), the status that decision
    returned is stored when it differs from what is stored. Every phase change, step, ledger entry and
    history entry is thus in the resource before the work it leads to starts: on-call sees Gating while the
    gate runs and RollingBack while traffic moves, and an operator killed mid-reconcile resumes from the
    last boundary, not from whatever was stored when the reconcile began. The history entries of each such
    write are posted as Events right after it (with `events`).
    """

    def __init__(self, api_client: client.ApiClient, config: OperatorConfig,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
                 write_ahead: bool = True, events: EventPoster | None = None) -> None:
        self.api_client = api_client
        self.config = config
        self.clock = clock
        self.store: RolloutStore | None = RolloutStore(api_client) if write_ahead else None
        self.events = events
        self._seen: set[tuple[str, str]] = set()
        self._gates = asyncio.Semaphore(MAX_CONCURRENT_GATES)
        self._analyses = concurrent.futures.ThreadPoolExecutor(MAX_CONCURRENT_ANALYSES, "analysis")
        self._start_locks = _StartLocks()  # per target: see _start_gate
        # Answers no stored decision has read yet, per rollout, with the uid of the object they belong to.
        self._unheard: dict[tuple[str, str], tuple[str, list[ActionFailure], list[str]]] = {}
        # Gate verdicts, per rollout, until a stored status no longer asks for them: ((uid, gate URLs), verdict), the
        # object and the URL overrides it was measured for. A gate runs for minutes: a lost status write must not run
        # it again.
        self._gate_verdicts: dict[tuple[str, str], tuple[_MeasuredFor, JudgeResult]] = {}
        self._gate_shares = _StartLocks(lambda: asyncio.Semaphore(MAX_GATES_PER_NAMESPACE))
        self._analysis_shares = _StartLocks(lambda: asyncio.Semaphore(MAX_ANALYSES_PER_NAMESPACE))
        self._registry_pools: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        self._registry_shares = _StartLocks(lambda: asyncio.Semaphore(MAX_REGISTRY_CALLS_PER_NAMESPACE))
        # Per rollout, the gate or analysis under way (see _measured).
        self._measuring: dict[tuple[str, str], _Measurement] = {}

    def forget(self, namespace: str, name: str) -> None:
        """The rollout is gone: a new one of the same name is a first sight again."""
        self._seen.discard((namespace, name))
        self._unheard.pop((namespace, name), None)
        self._gate_verdicts.pop((namespace, name), None)
        self._drop((namespace, name))

    async def step(self, obj: dict[str, Any]) -> ReconcileOutcome:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if (measuring := self._measuring.get(key)) is not None:
            measuring.asked = False
        outcome = await self._step(obj)
        if (measuring := self._measuring.get(key)) is not None and not measuring.asked:
            self._drop(key)  # no decision of this step asked for it (an abort, a rejected spec): its slot is freed
        return outcome

    async def _step(self, obj: dict[str, Any]) -> ReconcileOutcome:
        meta = obj["metadata"]
        deleted_at = parse_time(meta["deletionTimestamp"]) if meta.get("deletionTimestamp") else None
        deleting = deleted_at is not None
        held = FINALIZER in (meta.get("finalizers") or ())
        ours = held and owns_finalizer(meta)  # another manager's entry is not ours to take off
        try:
            status = ModelRolloutStatus.from_dict(obj.get("status"))
        except _STATUS_ERRORS as exc:
            return await self._unreadable(obj, exc, deleted_at, ours)
        spec: ModelRolloutSpec | None = None
        refused: SpecError | None = None  # the spec parses, the operator's settings refuse it: only rollbacks run
        try:
            spec = parse_spec(obj.get("spec") or {})
            if not deleting:  # the rollback a delete starts runs no gate and no analysis
                # An ended rollout may start a new attempt (a new version, retry) in this very decision.
                gate_ahead = status.gate is None or status.gate.completed_at is None or status.phase in TERMINAL_PHASES
                check_operator_settings(spec, meta["namespace"], self.config, gate_ahead=gate_ahead)
        except SpecError as exc:
            refused = exc
        if refused is not None and (spec is None or not _rollback_asked(obj, status)):
            # The API server refuses bad specs first; this covers what its schema cannot say.
            if ours and self.store is not None and status.phase in TERMINAL_PHASES:
                return await self._let_go(obj, status, None, deleting)  # an unreadable spec holds nothing
            now = self.clock()
            decision = reject_spec(status, refused, int(meta.get("generation") or 0), now)
            return ReconcileOutcome(status=refuse_command(obj, decision.status, now, f"spec invalid: {refused.path}")
                                    .to_dict())
        assert spec is not None
        runtime = RolloutRuntime(obj, spec, self.api_client, self.config)
        finalizer: FinalizerRefused | None = None
        unheld: int | None = None  # the attempt that goes on without the finalizer (no later one starts so)
        if self.store is not None and ours and not holds_deletion(spec, status):
            released = await self._let_go(obj, status, runtime, deleting)
            if deleting or not isinstance(released.refused, FinalizerRefused):
                return released
            finalizer = released.refused  # still on: a new spec or command is followed all the same, held by it
        elif self.store is not None and not held and not deleting and holds_deletion(spec, status):
            holding = await self._hold(obj)
            if not isinstance(holding.refused, FinalizerRefused) or not in_flight(obj) or (
                    _start_held(status) and not _rollback_asked(obj, status)):
                return holding  # nothing starts unheld
            finalizer = holding.refused  # a rollout running (its analysis, rollback, an abort) is never held back
            unheld = status.attempt
        # One start at a time per target (the operator runs as one replica): a rollout about to start looks at the
        # others only once any start before it is stored, and lets the next one look once its own start is.
        gate_keeper = self._start_gate(obj)
        async with gate_keeper:
            outcome = await self._go_on(obj, status, spec, refused, runtime, deleted_at, held, gate_keeper, unheld)
        if finalizer is not None and outcome.refused is None:
            # Said in the history (a Warning Event), not Ready: the rollout goes on. Asked again on the next reconcile.
            outcome.status = finalizer_refused_status(outcome.status, finalizer, int(meta.get("generation") or 0),
                                                      self.clock(), going_on=True)
            outcome.requeue_after = min(outcome.requeue_after or FINALIZER_RETRY_SECONDS, FINALIZER_RETRY_SECONDS)
        return outcome

    async def _go_on(self, obj: dict[str, Any], status: ModelRolloutStatus, spec: ModelRolloutSpec,
                     refused: SpecError | None, runtime: RolloutRuntime, deleted_at: dt.datetime | None, held: bool,
                     gate_keeper: _StartGate, unheld: int | None = None) -> ReconcileOutcome:
        """The step past its spec and finalizer checks: wait for the target, or (observe, decide, act)*. `unheld`: the
        attempt let go on without the finalizer (refused); any other one it decides to start is held first."""
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        deleting = deleted_at is not None
        # Another rollout in flight on the same target: wait. Never a deletion's rollback, nor a rollback (or an
        # abort) of one already in flight (taking its candidate off is never held back), nor the abort of one
        # queued with nothing resolved yet (it ends touching nothing).
        takes_off = _rollback_asked(obj, status) and (in_flight(obj) or status.candidate is None)
        if self.store is not None and not deleting and not takes_off:
            waiting = await self._wait_for_target(obj, status)
            if waiting is not None:
                return waiting
        # Only now: a reconcile that only changed the finalizer resent nothing.
        first_since_start = key not in self._seen
        self._seen.add(key)
        outcome = ReconcileOutcome(status=status.to_dict())
        uid = str(meta.get("uid") or "")
        gate = self._gate_verdict_asked_for(key, (uid, runtime.gate_urls), status)
        analysis: JudgeResult | None = None
        # Answers to the previous reconcile's last round (nothing decided on them yet), then each round's.
        unheard_uid, failures, done = self._unheard.pop(key, (uid, [], []))
        if unheard_uid != uid:  # deleted and made again under the same name: not this object's answers
            failures, done = [], []
        read: tuple[list[ActionFailure], list[str]] = ([], [])
        read_stored = True
        stored = outcome.status
        status = refuse_command(obj, status, self.clock())  # an annotation that is no command: said once
        started = in_flight(obj)
        generation = int(meta.get("generation") or 0)
        changed = _changed_by_others(obj)  # what stops a wait for a gate or an analysis
        interrupted = False
        for _ in range(MAX_ROUNDS):
            now = self.clock()
            registry = await self._observe_registry(runtime, status, deleting or _rollback_asked(obj, status))
            target, state = await asyncio.to_thread(runtime.observe_target)
            observations = Observations(
                generation=generation, registry=registry, target=target, gate=gate,
                analysis=analysis, commands=runtime.commands(), action_failures=tuple(failures),
                actions_done=tuple(done), resend_pending=first_since_start, deleted_at=deleted_at,
                scrape_interval=self.config.scrape_interval)
            decision = decide(spec, status, observations, now)
            status = decision.status
            outcome.status = status.to_dict()
            outcome.requeue_after = decision.requeue_after.total_seconds() if decision.requeue_after else None
            if target is None:
                outcome.requeue_after = min(outcome.requeue_after or 1.0, 1.0)
            resend = first_since_start
            first_since_start = False
            read = (failures, done)  # until a status holding this decision is stored, nobody has read them
            read_stored = False
            gate, analysis, failures, done = None, None, [], []
            posting: asyncio.Task[Posted] | None = None
            picked = self._left_running(key, uid, generation, runtime.gate_urls, status, decision.actions)
            work = [*decision.actions, *picked]
            if not work:
                break
            if refused is not None and (status.phase not in _ROLLBACK_PHASES or any(
                    isinstance(action, RunGate | RunAnalysis) for action in work)):
                # Past the rollback (a new attempt): held unacted, as for any refused spec, until it is fixed; the
                # first reconcile after that sends these actions at once.
                self._seen.discard(key)
                self._drop(key)
                break
            if self.store is not None and not held and not deleting and holds_deletion(spec, status) \
                    and status.attempt != unheld:
                # A new attempt after an ended one (which held nothing): held before it acts. This decision's
                # status is written (by the caller, on a fresh resourceVersion) but none of its actions are
                # carried out: the next reconcile sends them at once, on a fresh read.
                self._seen.discard(key)
                await self._store_start(obj, outcome, stored, gate_keeper)
                await self._finalizer(obj, outcome, hold=True)
                return outcome
            if self.store is not None and not same_owned_status(outcome.status, stored):
                decided_on = outcome.stored_status if outcome.stored_status is not None else obj.get("status") or {}
                try:
                    written = await asyncio.to_thread(apply_decided_status, self.store, obj, outcome.status,
                                                      decided_on)
                except ApiException as exc:
                    refused = exc if isinstance(exc, StatusWriteRefused) else None
                    if exc.status != 409 and refused is None:
                        raise
                    # Changed underneath (a command, a new spec): act on nothing, decide again on fresh state. Or
                    # refused for what it holds: act on nothing either; the caller says why.
                    if refused is None:
                        log.info("%s/%s: status changed underneath; deciding again on fresh state", *key)
                    if resend:
                        self._seen.discard(key)  # nothing was resent yet: the next step must still resend
                    if read[0] or read[1]:
                        self._unheard[key] = (uid, *read)  # the decision that read them is thrown away
                    outcome.status = stored  # not this decision: nothing of it was acted on
                    outcome.requeue_after = 0.0
                    outcome.refused = refused
                    return outcome
                meta["resourceVersion"] = written["metadata"]["resourceVersion"]  # for the caller's final write
                stored = outcome.status
                read_stored = True
                outcome.stored_status = written.get("status") or {}
                if not started and in_flight(written):
                    started = True
                    gate_keeper.release()  # its start is stored: the next rollout of this target may look now
                if self.events is not None:
                    # Now, not when the reconcile ends: a gate may run for minutes. Beside this round's actions,
                    # not before them: an Events endpoint that hangs must not hold back a rollback. The mark
                    # goes out with the next write; until then a re-post is refused by name.
                    posting = asyncio.create_task(self.events.post(written, outcome.status))
            try:
                for action in work:
                    if action not in picked:
                        outcome.actions_taken.append(f"{action.type}:{action.id}")
                    if isinstance(action, RunGate | RunAnalysis):
                        answer = await self._measured(key, uid, generation, action, runtime, state, changed)
                        if answer is None:  # changed by someone else: decided again at once, on the new object
                            interrupted = True
                            break
                        if isinstance(action, RunAnalysis):
                            analysis = answer
                        else:
                            gate = answer
                            if gate.error is None:  # an error is counted once (its request stays open)
                                # _measured answers only from a run on this spec's gate URLs.
                                self._gate_verdicts[key] = ((uid, runtime.gate_urls), gate)
                    else:
                        try:
                            if runtime.calls_registry(action, runtime.storage_uri_template):
                                await self._registry_call(runtime.namespace, runtime.act, action, status)
                            else:
                                await asyncio.to_thread(runtime.act, action, status)
                        except (TrafficError, RegistryError, ValueError) as exc:
                            log.warning("%s/%s: %s failed: %s", *key, action.type, exc)
                            failures.append(ActionFailure(action.id, AdapterError(_kind(exc), str(exc))))
                        else:
                            done.append(action.id)
            except BaseException:
                if posting is not None:
                    posting.cancel()  # the caller's next post sends them again, refused by name if they went out
                raise
            if posting is not None:
                # Before the next round: its Events follow these, and its write carries this mark.
                status = dataclasses.replace(status, events_posted_through=(await posting).mark)
                outcome.status = status.to_dict()
            if interrupted or (gate is None and analysis is None and not failures and all(
                    isinstance(a, RunGate | RunAnalysis) for a in work)):
                break
        if not read_stored and (read[0] or read[1]):
            def put_back(answers: tuple[list[ActionFailure], list[str]] = read) -> None:
                _, failures_later, done_later = self._unheard.get(key, (uid, [], []))
                self._unheard[key] = (uid, answers[0] + failures_later, answers[1] + done_later)

            outcome.put_back = put_back
        if failures or done:
            # The rounds ran out with answers no decision has read: the next reconcile reads them, soon. (Lost
            # on a restart, which resends whatever is pending anyway.)
            self._unheard[key] = (uid, failures, done)
            outcome.requeue_after = min(outcome.requeue_after or 1.0, 1.0)
        if await asyncio.to_thread(runtime.finish_withdrawal, status, lambda: self._still_withdrawn(meta, status)):
            recheck = runtime.withdrawal_recheck
            outcome.requeue_after = min(outcome.requeue_after or recheck, recheck)
        if interrupted:
            outcome.requeue_after = 0.0
        await self._store_start(obj, outcome, stored, gate_keeper)
        return outcome

    def _left_running(self, key: tuple[str, str], uid: str, generation: int, gate_urls: GateUrls,
                      status: ModelRolloutStatus, actions: Sequence[Action]) -> list[RunGate | RunAnalysis]:
        """The run under way that this decision asks for without handing it out again (it did moments ago, to a
        reconcile that someone's change interrupted): waited for as if it were. One it does not ask for is dropped."""
        measuring = self._measuring.get(key)
        if measuring is None:
            return []
        if any(isinstance(action, RunGate | RunAnalysis) and measuring.answers(uid, generation, gate_urls, action)
               for action in actions):
            measuring.asked = True
            return []
        if measuring.action in actions or not _asks_for(status, measuring.action):
            self._drop(key)
            return []
        if measuring.answers(uid, generation, gate_urls, measuring.action):
            measuring.asked = True
            return [measuring.action]
        if measuring.uid == uid and isinstance(measuring.action, RunGate):
            # Its gate URL was fixed since it started: the request is run again now, at the fixed URL (_measured
            # drops this run), not when the engine next hands it out.
            log.info("%s/%s: a gate URL was fixed while %s ran; running it again", *key, measuring.action.id)
            return [measuring.action]
        self._drop(key)
        return []

    async def _measured(self, key: tuple[str, str], uid: str, generation: int, action: RunGate | RunAnalysis,
                        runtime: RolloutRuntime, state: TargetState | None, changed: ChangedFn) -> JudgeResult | None:
        """The answer to a gate or an analysis: from the run under way for it, else from a new one. The wait lends
        out the reconcile's worker, and ends early, with None, once someone else changes the rollout (an abort, a
        spec edit, a deletion): the run goes on for the next decision, which may ask for it again."""
        measuring = self._measuring.get(key)
        if measuring is None or not measuring.answers(uid, generation, runtime.gate_urls, action):
            self._drop(key)
            run = self._gate(runtime, action, state) if isinstance(action, RunGate) else self._analyse(runtime, action)
            # A context of its own: the reconcile's worker slot is not the run's to lend.
            measuring = _Measurement(uid, generation, runtime.gate_urls, action,
                                     asyncio.create_task(run, context=contextvars.Context()))
            self._measuring[key] = measuring
        try:
            async with reconcile_slot_lent():
                with changes_watched(changed) as changed_event:
                    interrupt = asyncio.create_task(changed_event.wait())
                    try:
                        await asyncio.wait((measuring.task, interrupt), return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        interrupt.cancel()
        except BaseException:  # the reconcile is cancelled: its run with it
            self._drop(key)
            raise
        if not measuring.task.done():
            log.info("%s/%s: changed while waiting for %s %s; deciding again", *key, action.type, action.id)
            return None
        if self._measuring.get(key) is measuring:
            del self._measuring[key]
        return measuring.task.result()

    async def _gate(self, runtime: RolloutRuntime, action: RunGate, state: TargetState | None) -> JudgeResult:
        async with _share(self._gate_shares, runtime.namespace), self._gates:
            return await runtime.measure_gate(action, state)

    async def _analyse(self, runtime: RolloutRuntime, action: RunAnalysis) -> JudgeResult:
        async with _share(self._analysis_shares, runtime.namespace):
            # The window ends when it is measured, not when it was queued for a thread.
            running = self._analyses.submit(lambda: runtime.measure_analysis(action, self.clock()))
            try:
                return await asyncio.wrap_future(running)
            except asyncio.CancelledError:
                if not running.cancel():  # its thread cannot be stopped: the namespace's share is held till it ends
                    await asyncio.wait([asyncio.wrap_future(running)])
                raise

    async def _observe_registry(self, runtime: RolloutRuntime, status: ModelRolloutStatus,
                                rollback: bool) -> RegistryObservation:
        """The registry read a decision takes; cut short while a rollback's traffic is still to move: a registry that
        never answers (10 s a read) must not keep the candidate's traffic on it meanwhile."""
        # Not for an ended rollout: a rollback command to a Succeeded one may need the registry to know what serves.
        cut = rollback and status.phase not in TERMINAL_PHASES and (
            status.rollback is None or status.rollback.traffic_confirmed_at is None)
        try:
            return await self._registry_call(runtime.namespace, runtime.observe_registry, status,
                                             deadline=ROLLBACK_REGISTRY_WAIT_SECONDS if cut else None)
        except TimeoutError:
            log.warning("%s/%s: the registry did not answer within %gs; moving traffic back first", runtime.namespace,
                        runtime.name, ROLLBACK_REGISTRY_WAIT_SECONDS)
            return RegistryObservation(error=AdapterError(AdapterErrorKind.UNAVAILABLE, (
                f"no answer within {ROLLBACK_REGISTRY_WAIT_SECONDS:g}s while the rollback moves traffic back; "
                "read again after")))

    async def _registry_call(self, namespace: str, call: Callable[..., _T], *args: Any,
                             deadline: float | None = None) -> _T:
        """call(*args), which calls the registry, in the namespace's registry threads within its share, the
        reconcile's worker lent out meanwhile: another tenant's rollback is not held up by this tenant's registry.
        TimeoutError past `deadline` seconds (waiting for a share included; taking the worker back is not: a cut
        there would go on without one), the call left to end in its thread."""
        loop = asyncio.get_running_loop()
        ends = None if deadline is None else loop.time() + deadline
        async with reconcile_slot_lent():
            share = self._registry_shares.join(namespace)
            try:
                # Not asyncio.wait_for: on 3.11 it swallows a cancel that arrives as the share comes free.
                async with asyncio.timeout(None if ends is None else max(ends - loop.time(), 0.0)):
                    await share.acquire()
            except BaseException:
                self._registry_call_ended(namespace, released=False)
                raise
            try:
                pool = self._registry_pools.get(namespace)
                if pool is None:
                    pool = self._registry_pools[namespace] = concurrent.futures.ThreadPoolExecutor(
                        MAX_REGISTRY_CALLS_PER_NAMESPACE, f"registry-{namespace}")
                running = pool.submit(call, *args)
            except BaseException:
                self._registry_call_ended(namespace)
                raise

            def ended(_: concurrent.futures.Future[_T]) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to give back to
                    loop.call_soon_threadsafe(self._registry_call_ended, namespace)

            # Given back when the thread ends, not when the wait does: a cancelled reconcile cannot stop the call.
            running.add_done_callback(ended)
            answer = asyncio.wrap_future(running)
            if ends is None:
                return await answer
            done, _ = await asyncio.wait({answer}, timeout=max(ends - loop.time(), 0.0))
            if not done:
                answer.cancel()  # its result is never read; the thread ends by itself
                raise TimeoutError
            return answer.result()

    def _registry_call_ended(self, namespace: str, released: bool = True) -> None:
        """A registry call of the namespace ended (or never got a share: `released` False): its share given back, and
        its threads once it has no call left, so that namespaces come and go without threads piling up."""
        if released:
            self._registry_shares.release(namespace)
        else:
            self._registry_shares.leave(namespace)
        if namespace not in self._registry_shares and (pool := self._registry_pools.pop(namespace, None)):
            pool.shutdown(wait=False)

    def _drop(self, key: tuple[str, str]) -> None:
        """Nobody asks for the rollout's run any more: a gate is cancelled, and so is an analysis still queued (one
        running in its thread ends there, unread)."""
        measuring = self._measuring.pop(key, None)
        if measuring is not None:
            log.info("%s/%s: %s %s no longer asked for; dropped", *key, measuring.action.type, measuring.action.id)
            measuring.task.add_done_callback(_unread)
            measuring.task.cancel()

    def _still_withdrawn(self, meta: Mapping[str, Any], status: ModelRolloutStatus) -> bool | None:
        """Whether this step may act on `status` (read afresh, from a worker thread): nobody wrote the rollout since
        this step read or wrote it (its decision may be stored only after: the same reconcile withdraws at once), or
        what is stored still ends the attempt status ends. None when it cannot be read now."""
        if self.store is None:
            return True
        try:
            fresh = self.store.get(ObjectRef(meta["namespace"], meta["name"]))
            stored = ModelRolloutStatus.from_dict((fresh or {}).get("status") or {})
        except (ApiException, urllib3.exceptions.HTTPError, ValueError, TypeError, KeyError) as exc:
            log.info("%s/%s: not finishing the rollback on a status that cannot be read again now: %s",
                     meta["namespace"], meta["name"], type(exc).__name__)
            return None
        if fresh is None or fresh["metadata"].get("uid") != meta.get("uid"):
            return False
        if fresh["metadata"].get("resourceVersion") == meta.get("resourceVersion"):
            return True
        candidate = stored.candidate.version if stored.candidate else None
        return (stored.phase == status.phase and stored.attempt == status.attempt
                and candidate == (status.candidate and status.candidate.version))

    def _gate_verdict_asked_for(self, key: tuple[str, str], measured_for: _MeasuredFor,
                                status: ModelRolloutStatus) -> JudgeResult | None:
        """The kept gate verdict when the stored status still has its request open: the decision that read it was
        not stored (a 409 from a command or an edit, a 503). Otherwise it is dropped: the engine matches request ids,
        so a verdict a stored decision read is never read again (its gate is complete, and ids are not reused); a
        re-pin or a thresholds change opens a new request. An analysis verdict is not kept: it is cheap to measure
        again, and one read late would pass a step on a window that stopped short of its end.
        `measured_for`: the object's uid and its spec's gate URLs now."""
        kept_for, gate = self._gate_verdicts.pop(key, (measured_for, None))
        # Not this object's (deleted and made again under the same name), or measured at a gate URL fixed since
        # (the 409 was that edit): the engine hands the open request out again, and it runs at the fixed URL.
        if gate is None or kept_for != measured_for:
            return None
        if status.gate is None or status.gate.request_id != gate.request_id or status.gate.completed_at is not None:
            return None
        self._gate_verdicts[key] = (measured_for, gate)
        return gate

    async def _store_start(self, obj: dict[str, Any], outcome: ReconcileOutcome, stored: dict[str, Any],
                           gate_keeper: _StartGate) -> None:
        """A start decided but not stored (no action to write ahead of, or a finalizer first) is stored now, while
        the start gate is held: the caller's own write comes after the gate opens, when another rollout of the
        target could look, find no start and start too."""
        if self.store is None or not gate_keeper.held or same_owned_status(outcome.status, stored) or not in_flight(
                {"status": outcome.status}):
            return
        decided_on = outcome.stored_status if outcome.stored_status is not None else obj.get("status") or {}
        try:
            written = await asyncio.to_thread(apply_decided_status, self.store, obj, outcome.status, decided_on)
        except ApiException as exc:
            refused = exc if isinstance(exc, StatusWriteRefused) else None
            if exc.status != 409 and refused is None:
                raise
            # Changed underneath: decide again, nothing stored. Or refused: nothing stored, and the caller says why.
            outcome.status, outcome.requeue_after, outcome.refused = stored, 0.0, refused
            if outcome.put_back is not None:
                outcome.put_back()  # the answers that decision read: the next decision reads them
            return
        obj["metadata"]["resourceVersion"] = written["metadata"]["resourceVersion"]
        outcome.stored_status = written.get("status") or {}

    def _start_gate(self, obj: dict[str, Any]) -> _StartGate:
        """The gate a rollout not in flight passes on its way to a start; an open one for everyone else."""
        claim = target_claim(obj)
        if self.store is None or claim is None or in_flight(obj):
            return _StartGate()
        return _StartGate(self._start_locks, (obj["metadata"]["namespace"], claim.kind, claim.name))

    async def _wait_for_target(self, obj: dict[str, Any], status: ModelRolloutStatus) -> ReconcileOutcome | None:
        """The outcome of waiting while another rollout is in flight on obj's target (engine/claims.py), or None:
        go on."""
        claim = target_claim(obj)
        if claim is None or self.store is None:
            return None
        holder = target_holder(obj, await asyncio.to_thread(self.store.list_in, obj["metadata"]["namespace"]))
        if holder is None:
            return None
        if _nothing_new(obj, status):
            # Ended, and asked for nothing new: it waits all the same (a moved alias may start a new attempt, and
            # an ended one may still withdraw its candidate) but its status is left as it is, Ready and Healthy.
            return ReconcileOutcome(status=dict(obj.get("status") or {}),
                                    requeue_after=TARGET_CONFLICT_RECHECK.total_seconds())
        now = self.clock()
        decision = wait_for_target(status, claim, holder, int(obj["metadata"].get("generation") or 0), now)
        waiting = refuse_command(obj, decision.status, now, f"waiting for the target: {holder!r} is rolling out on it")
        return ReconcileOutcome(status=waiting.to_dict(), requeue_after=TARGET_CONFLICT_RECHECK.total_seconds())

    # --- the revertOnDeletion finalizer -------------------------------------------------------------------
    # Each change to it is the whole reconcile: the apply moves the resourceVersion past what was read, so
    # acting on in the same reconcile could act past a command or a spec change written meanwhile. The next
    # reconcile (the apply's own watch event) decides on a fresh read.

    async def _hold(self, obj: dict[str, Any]) -> ReconcileOutcome:
        """Put the finalizer on before anything is done (never on a rollout being deleted: the API server
        refuses a new finalizer then, and one deleted before the operator first saw it had nothing running)."""
        outcome = ReconcileOutcome(status=dict(obj.get("status") or {}))  # nothing to write, unless refused
        await self._finalizer(obj, outcome, hold=True)
        return outcome

    async def _unreadable(self, obj: dict[str, Any], error: Exception, deleted_at: dt.datetime | None,
                          ours: bool) -> ReconcileOutcome:
        """A status this operator cannot read (a newer operator's, or edited by hand): nothing is decided or done,
        and only its Ready condition says why. Deleted, it cannot be rolled back here: the finalizer is let go
        once WITHDRAWAL_GRACE has passed since the delete (time for an operator that can read it), instead of
        holding the delete until someone removes the finalizer by hand."""
        meta = obj["metadata"]
        problem = _status_problem(obj.get("status"), error)
        log.warning("%s/%s: cannot read the status: %s", meta["namespace"], meta["name"], problem)
        now = self.clock()
        outcome = ReconcileOutcome(status=_unreadable_status(obj.get("status"), problem,
                                                             int(meta.get("generation") or 0), now))
        if deleted_at is None or not ours or self.store is None:
            return outcome
        left = (deleted_at + WITHDRAWAL_GRACE - now).total_seconds()
        if left > 0:
            outcome.requeue_after = left
            return outcome
        log.warning("%s/%s: deleted with a status this operator cannot read; letting the delete complete without "
                    "a rollback", meta["namespace"], meta["name"])
        return await self._let_go(obj, ModelRolloutStatus(), None, deleting=True)

    async def _let_go(self, obj: dict[str, Any], status: ModelRolloutStatus, runtime: RolloutRuntime | None,
                      deleting: bool) -> ReconcileOutcome:
        """Take the finalizer off an ended rollout. A deleted one is gone after that, so first its Events are
        posted (the caller posts what is left, on its own retry schedule, and stores the mark; the Events
        outlive the object) and its candidate is withdrawn from the target's spec, for at most
        WITHDRAWAL_GRACE after it ended: no later reconcile would finish either."""
        outcome = ReconcileOutcome(status=dict(obj.get("status") or {}))  # nothing to write
        if deleting and unposted(outcome.status):
            return outcome
        if deleting and runtime is not None and await asyncio.to_thread(runtime.finish_withdrawal, status):
            ended = status.completed_at
            if ended is not None and self.clock() - ended < WITHDRAWAL_GRACE:
                outcome.requeue_after = 1.0
                return outcome
            log.warning("%s/%s: the candidate is still in the spec of %s after the rollback; letting the delete "
                        "complete", obj["metadata"]["namespace"], obj["metadata"]["name"],
                        runtime.spec.target.description)
        await self._finalizer(obj, outcome, hold=False)
        return outcome

    async def _finalizer(self, obj: dict[str, Any], outcome: ReconcileOutcome, hold: bool) -> None:
        """Apply, then look again at once, on a fresh read. Refused: the caller stores the status saying so (once
        per generation, with a Warning Event) and it is a reconcile error, retried on the queue's backoff."""
        try:
            outcome.requeue_after = await self._apply_finalizer(obj, hold)
        except FinalizerRefused as exc:
            if outcome.refused is None:  # a refused status write of this reconcile is said first
                outcome.refused = exc

    async def _apply_finalizer(self, obj: dict[str, Any], hold: bool) -> float:
        """Apply; look again at once, on a fresh read."""
        assert self.store is not None
        meta = obj["metadata"]
        try:
            written = await asyncio.to_thread(self.store.apply_finalizer, obj, hold)
        except ApiException as exc:
            if exc.status not in (409, 422):
                raise
            fresh = await asyncio.to_thread(self.store.get, ObjectRef(meta["namespace"], meta["name"]))
            current = fresh["metadata"] if fresh is not None else {}
            # Gone, another object under the name, or being deleted (no new finalizer then): read again.
            if fresh is None or current.get("uid") != meta.get("uid") or (hold and current.get("deletionTimestamp")):
                log.info("%s/%s: finalizer not %s (HTTP %s); looking again", meta["namespace"], meta["name"],
                         "added" if hold else "removed", exc.status)
                return 0.0
            # Anything else (an admission policy, a tightened CRD rule) answers the same next time: a reconcile
            # error, retried on the queue's backoff. Status and reason only: the body may quote the object.
            log.warning("%s/%s: finalizer not %s: HTTP %s %s", meta["namespace"], meta["name"],
                        "added" if hold else "removed", exc.status, exc.reason)
            raise FinalizerRefused(exc.status, exc.reason, hold) from None
        if not hold and written is not None and FINALIZER in (written["metadata"].get("finalizers") or ()):
            # Another field manager owns the entry too (a dumped object applied server-side, kubectl edit):
            # from now on it is theirs, and reconciles go on as if it were not there.
            log.warning("%s/%s: finalizer %s is also owned by another field manager; it stays until they "
                        "remove it", meta["namespace"], meta["name"], FINALIZER)
        return 0.0
