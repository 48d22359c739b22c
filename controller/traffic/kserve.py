"""KServe InferenceService: Knative (Serverless) canaries by canaryTrafficPercent, Standard ones by spec.canary[].

The deployment mode is read from the InferenceService on every call, as KServe resolves it:
status.deploymentMode first, then the serving.kserve.io/deploymentMode annotation (legacy values
Serverless / RawDeployment mean Knative / Standard), then the operator's configured default.

Knative mode (KServe's documented canary rollout):
  stage     spec.predictor.<model>.storageUri = candidate, canaryTrafficPercent = 0. KServe creates a new
            revision; the latest ready revision gets N%, latestRolledoutRevision the rest. The
            enable-tag-routing annotation is set in the same write so the candidate has its own
            `latest-` URL while it takes no traffic; its value before (none: "") is recorded beside it.
  set_weight  canaryTrafficPercent = N.
  promote   canaryTrafficPercent removed: the latest revision takes 100% and becomes
            latestRolledoutRevision (the old one moves to previousRolledoutRevision). One another manager
            also set (an on-call's `kubectl patch`) is removed by a merge patch: an apply cannot remove it.
  rollback  (before promotion) first canaryTrafficPercent = 0 alone, at once: all traffic goes to
            latestRolledoutRevision (stable). Once KServe reports it, the stable storageUri is written
            back (with canaryTrafficPercent 0 kept), so the spec no longer names the rejected model; that
            makes a new revision, a copy of stable, which stays at 0% while it starts ("pinned").
  restore   (after promotion) the same two writes: canaryTrafficPercent = 0 on the rolled-out candidate is
            KServe's documented "pin the previous model" (traffic to previousRolledoutRevision), then the
            stable storageUri. Writing the URI first would leave the rejected revision rolled out at 100%:
            KServe only moves latestRolledoutRevision back when the latest revision is the rolled-out one.
            Taken only while previousRolledoutRevision is stable's recorded revision: a revision rolled out
            since the promotion (a model synced in, a resources edit) makes the candidate's the previous one,
            so the pin would send all traffic to the rejected model (checked again on the object the pin is
            applied to); then stable is written as a new revision at once, the template's storageUri (the
            spec's model serves until it is ready). Stable is known by its recorded storageUri, or by its
            recorded version where that was checked against the URI (the object's own record, not the engine's
            hint: the template's form changed since); the pin's write puts the recorded storageUri, which
            served, back. A third model in the spec is written over, unlike rollback()'s refusal: the rollout
            is past promotion, with no stable share to fall back on.
  unpin     after either, a third write, by later rollback()/restore() calls (the operator keeps calling while
            observe() says `pinned`): once KServe has processed the spec and the copy of stable is the latest
            ready revision, canaryTrafficPercent is removed, so that revision (the same model) takes 100% and
            is rolled out. Left in place, the pin would hold every later revision made outside ModelRollout
            (resources, image, a Git sync) at 0%, silently. Until the copy is ready the pin stays: without it
            KServe would send all traffic to the latest *ready* revision, the rejected one. Only a pin this
            router's field manager applied is removed (a canaryTrafficPercent someone else also sets stays).
  release   the write that puts stable's storageUri back (rollback, restore) gives enable-tag-routing back:
            left out, so server-side apply drops our ownership (the value stays if someone else also owns it,
            else it goes, as before staging), or, where staging replaced someone's value, that value put
            back (ours until they apply it again: the same value, so no conflict). That write makes a
            revision anyway; on its own the change would make one more. A promotion keeps it: a revision made
            then would move previousRolledoutRevision off stable and close restore()'s instant way back.
            Where the candidate left the spec another way (a GitOps self-heal put stable's storageUri back), no
            such write comes: rollback() then gives it back, and records stable's version as that write would
            have, in a write of its own (one more copy of stable); the spec stays as it is. A third model in the
            spec (neither the candidate recorded nor stable) is someone else's: rollback() refuses, writing
            nothing, rather than put stable over it.

Standard mode (KServe after v0.20, spec.canary[]):
  stage     spec.canary = [{trafficPercent: 0, predictor: <copy of spec.predictor with the candidate's
            storageUri, named v<version>>}]; KServe runs it as Deployment <isvc>-<name>-predictor.
  set_weight  spec.canary[0].trafficPercent = N.
  promote   spec.predictor takes the canary's name and storageUri and spec.canary = []: KServe keeps
            the canary's Deployment, so promotion restarts no pod.
  rollback  spec.canary = []; stable was never touched. (The empty list is written, not the field left out:
            that would not remove a list someone else also owns after editing the canary.)
  restore   (after promotion) the previous predictor name and storageUri back, which needs a new
            Deployment to become ready: not instant.

What the router must remember (the stable version and its storage URI, for rollback) is written on the
object in the same write that changes the model, never on its own: in Knative mode every annotation
change makes a new revision, and in Standard mode it would restart pods.

Predictions are counted per model version: with a logger configured (`spec.predictor.logger.url`), every
write that names a model also sets `model_version=<its version>` in the logger URL's query, so each revision
(Knative) or predictor (Standard) reports which version it serves, through promotion and rollback alike.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote_plus, urlsplit, urlunsplit

from kubernetes import client

from controller.api.naming import dns_label
from controller.redaction import redacted_url
from controller.traffic.base import (
    ANNOTATION_PREFIX,
    CandidateModel,
    DeploymentMode,
    TargetState,
    TargetStateError,
    check_candidate_version,
    check_percent,
)
from controller.traffic.kube import (
    FIELD_MANAGER,
    INFERENCE_SERVICE,
    Obj,
    ObjectClient,
    annotations_of,
    condition,
    condition_true,
    observed_generation,
    retry_on_conflict,
)

log = logging.getLogger(__name__)

ANN_VERSION = ANNOTATION_PREFIX + "model-version"  # registry version of the model the spec points at
# The storageUri ANN_VERSION was written for: a spec edited outside the router keeps the version annotation
# but not the model, so a version whose URI differs from the spec's is unknown (absent: written before this).
ANN_VERSION_URI = ANNOTATION_PREFIX + "model-storage-uri"
ANN_STABLE_VERSION = ANNOTATION_PREFIX + "stable-version"  # what served all traffic when staging began
ANN_STABLE_URI = ANNOTATION_PREFIX + "stable-storage-uri"
# Knative: "true" when stable-version is known to be the version at stable-storage-uri (the object's own record for it,
# or the engine's version for exactly that URI), not the engine's hint alone, never checked against the URI: the object
# may have served another registered model's version of that number.
ANN_STABLE_VERSION_CHECKED = ANNOTATION_PREFIX + "stable-version-checked"
ANN_STABLE_REVISION = ANNOTATION_PREFIX + "stable-revision"  # Knative: latestRolledoutRevision at staging
ANN_STABLE_PREDICTOR = ANNOTATION_PREFIX + "stable-predictor-name"  # Standard: spec.predictor.name at staging
# Knative: the candidate's revision (latestCreatedRevision) when a rollback or restore wrote stable's storageUri
# back, or the revision latest when staging wrote the candidate's (a rollback's copy of stable): never the revision of
# the spec's model. KServe's status.observedGeneration is its Knative Service's counter, not the InferenceService's
# generation (kserve/kserve#6081), so it can read as caught up while latestCreated/Ready still name that revision.
ANN_WITHDRAWN_REVISION = ANNOTATION_PREFIX + "withdrawn-revision"
# Knative: serving.kserve.io/enable-tag-routing before staging set it to "true" ("": absent), to give it back.
ANN_TAG_ROUTING_BEFORE = ANNOTATION_PREFIX + "tag-routing-before"
OWNED_ANNOTATIONS = (ANN_VERSION, ANN_VERSION_URI, ANN_STABLE_VERSION, ANN_STABLE_URI, ANN_STABLE_REVISION,
                     ANN_STABLE_PREDICTOR, ANN_WITHDRAWN_REVISION, ANN_TAG_ROUTING_BEFORE, ANN_STABLE_VERSION_CHECKED)

TAG_ROUTING = "serving.kserve.io/enable-tag-routing"
TAG_ROUTING_PATH = ("metadata", "annotations", TAG_ROUTING)
KSERVE_CONTAINER = "kserve-container"  # KServe's default model container name
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"

# Keys of spec.predictor that carry a storageUri: the new `model` schema first, then the old per-framework one.
MODEL_KEYS = ("model", "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "pmml", "lightgbm",
              "paddle", "huggingface")

_MODES = {"knative": DeploymentMode.KNATIVE, "serverless": DeploymentMode.KNATIVE,
          "standard": DeploymentMode.STANDARD, "rawdeployment": DeploymentMode.STANDARD}


def parse_mode(value: str | DeploymentMode | None) -> DeploymentMode | None:
    if not value:
        return None
    if str(value).lower() == "modelmesh":
        raise TargetStateError("ModelMesh InferenceServices have no canary support in KServe")
    return _MODES.get(str(value).lower())


def deployment_mode(obj: Obj, default: DeploymentMode | None = None) -> DeploymentMode:
    """KServe's own precedence: status, then annotation, then the configured default."""
    status = obj.get("status") or {}
    reported = status.get("deploymentMode")
    mode = parse_mode(reported)
    if reported and mode is None:
        # KServe reports the mode it runs: a value this router does not know (a newer KServe's) is not guessed at
        # from the annotation or the default, which could write the other mode's canary shape.
        raise TargetStateError(f"InferenceService {obj['metadata']['name']} reports status.deploymentMode "
                               f"{str(reported)[:64]!r}, which ModelRollout cannot drive (it drives "
                               "Knative/Serverless and Standard/RawDeployment)")
    mode = mode or parse_mode(annotations_of(obj).get(DEPLOYMENT_MODE_ANNOTATION))
    if mode is None:
        mode = default
    if mode is None and (status.get("components") or {}).get("predictor", {}).get("latestCreatedRevision"):
        mode = DeploymentMode.KNATIVE  # only Knative mode has revisions
    if mode is None:
        name = obj["metadata"]["name"]
        raise TargetStateError(
            f"cannot tell the deployment mode of InferenceService {name}: KServe has not reported "
            f"status.deploymentMode yet and it has no {DEPLOYMENT_MODE_ANNOTATION} annotation", reason="Unavailable")
    return mode


def model_key(predictor: Obj, what: str) -> str:
    for key in MODEL_KEYS:
        if isinstance(predictor.get(key), dict):
            return key
    raise TargetStateError(f"{what}: spec.predictor has no model with a storageUri "
                           f"(one of {', '.join(MODEL_KEYS)}); custom containers are not supported")


def _check_stable_uri(target: str, stable_uri: str | None, candidate: CandidateModel) -> None:
    """Staging needs the stable model's storageUri: it is how the router tells its candidate from stable later
    (a model given by `storage` alone would leave a candidate no later call could find or withdraw)."""
    if not stable_uri:
        raise TargetStateError(f"{target}: the stable model has no storageUri (models given by `storage` or "
                               "`storageUris` are not supported)")
    if candidate.storage_uri == stable_uri:
        raise TargetStateError(f"candidate {candidate.version} has the stable model's storage URI "
                               f"{redacted_url(stable_uri)}")


def _another_models_version(version: str | None, uri: str | None, candidate_version: str | None,
                            candidate_uri: str | None) -> bool:
    """A version with the candidate's number but another storageUri: MLflow numbers versions per registered
    model, so it is another model's (the target last promoted by a rollout of another model). Taken for the
    candidate's, it would read as the candidate serving as stable, and a rollback would put this model's stable
    over what served."""
    return version is not None and version == candidate_version and uri != candidate_uri


def _stable_record(found: str | None, hint: str | None, stable_uri: str | None,
                   candidate: CandidateModel) -> str | None:
    """The stable version staging records: the object's, else the engine's hint; none when it is another
    model's version of the candidate's number."""
    version = found or hint
    clash = _another_models_version(version, stable_uri, candidate.version, candidate.storage_uri)
    return None if clash else version


def _canary_predictor_name(isvc: str, version: str, stable_name: str) -> str:
    """The canary predictor's name: its Deployment, <isvc>-<name>-predictor, must fit 63 characters, and it
    must never be the stable predictor's name once cut to fit (the canary would take over stable's Deployment)."""
    budget = 63 - len(isvc) - len("--predictor")
    if budget < 3:
        raise TargetStateError(f"InferenceService {isvc} has too long a name for a canary predictor: its "
                               "Deployment name would pass 63 characters")
    base = ("v" + dns_label(version))[:budget].rstrip("-")
    short = base[:budget - 2].rstrip("-")
    return next(name for name in (base, f"{short}-c", f"{short}-d") if name != stable_name)


def logger_url_for(url: str, version: str | None) -> str:
    """The logger URL with `model_version=<version>` in its query (None: the version is not known, so none),
    every other parameter kept exactly as written.

    A `variant` parameter is dropped: a revision's logger URL outlives its role (the canary's revision is
    the one promoted), so a variant written there would turn false; the version stays true.
    """
    parts = urlsplit(url)
    segments = [s for s in parts.query.split("&") if s] if parts.query else []
    kept = [s for s in segments if unquote_plus(s.split("=", 1)[0]) not in ("model_version", "variant")]
    if version is None and kept == segments:
        return url  # nothing to say and nothing to take back: not a character changed
    if version is not None:
        kept.append(f"model_version={quote(version, safe='')}")
    return urlunsplit(parts._replace(query="&".join(kept)))


def _relabelled(url: str | None, version: str | None) -> str | None:
    """logger_url_for, for a logger that may not be configured (None stays None)."""
    return logger_url_for(url, version) if url else None


def _logger_url(predictor: Obj) -> str | None:
    logger = predictor.get("logger")
    url = logger.get("url") if isinstance(logger, dict) else None
    return url if isinstance(url, str) and url else None


def _none_if_empty(value: str | None) -> str | None:
    return value or None


def _version_for(annotations: Mapping[str, str], uri: str | None, where: str, version_key: str = ANN_VERSION,
                 uri_key: str = ANN_VERSION_URI) -> tuple[str | None, str | None]:
    """The version annotation as the version of the model at `uri`, and what is wrong with it: a version
    recorded for another storageUri is unknown (None), for the model was replaced outside ModelRollout.
    Annotations written before the URI was recorded are trusted as before."""
    version = _none_if_empty(annotations.get(version_key))
    recorded = _none_if_empty(annotations.get(uri_key))
    if version is None or recorded is None or recorded == uri:
        return version, None
    return None, (f"storageUri changed outside ModelRollout: {where} names {redacted_url(uri or '')}, not "
                  f"{redacted_url(recorded)} (version {version}), so the version it serves is unknown")


def _condition_said(found: Obj) -> str:
    """A condition as KServe wrote it: type, status, reason and message (for a message of ours)."""
    said = f"{found.get('type')} {found.get('status')}"
    if found.get("reason"):
        said += f" ({found['reason']})"
    return said + (f": {found['message']}" if found.get("message") else "")


# --- Knative mode ------------------------------------------------------------------------------------


@dataclass
class KnativeView:
    """The facts every Knative decision needs, read from one copy of the object."""

    obj: Obj
    key: str
    spec_uri: str | None
    canary_percent: int | None
    annotations: dict[str, str]
    synced: bool
    rolled_out: str  # status.components.predictor.latestRolledoutRevision
    latest_created: str
    latest_ready: str
    traffic: list[Obj] = field(default_factory=list)
    logger_url: str | None = None  # spec.predictor.logger.url
    previous_rolled_out: str = ""  # status.components.predictor.previousRolledoutRevision

    @property
    def stable_uri(self) -> str | None:
        return _none_if_empty(self.annotations.get(ANN_STABLE_URI))

    @property
    def candidate_in_spec(self) -> bool:
        """The spec names a model other than the stable one recorded at staging."""
        return self.stable_uri is not None and self.spec_uri != self.stable_uri

    @property
    def pinned(self) -> bool:
        """canaryTrafficPercent applied by this router on a spec naming the recorded stable: what a rollback or
        restore leaves while the copy of stable it made starts."""
        return (self.canary_percent is not None and self.stable_uri is not None and self.spec_uri == self.stable_uri
                and _applied_by_us(self.obj, PERCENT_PATH))

    @property
    def unpin_ready(self) -> bool:
        """Pinned, and the latest revision (the copy of stable) ready to take all traffic once unpinned. Known by
        its name: neither the withdrawn candidate's revision nor stable's, for a status that only looks caught up
        (observedGeneration, above) still names the candidate's, which would then take all traffic."""
        not_the_copy = {self.annotations.get(ANN_WITHDRAWN_REVISION), self.annotations.get(ANN_STABLE_REVISION)}
        return (self.pinned and self.synced and _configured(self.obj) and bool(self.latest_created)
                and self.latest_created not in not_the_copy and self.latest_ready == self.latest_created)

    @property
    def promoted(self) -> bool:
        """The spec's model is the rolled-out revision and it is not the recorded stable."""
        return (self.candidate_in_spec and bool(self.rolled_out) and self.synced
                and self.rolled_out == self.latest_created)


def _configured(obj: Obj) -> bool:
    """KServe's PredictorConfigurationReady: Unknown while Knative has not made (or readied) the revision of the
    current spec, when latestCreated/Ready may still name the previous one."""
    return condition_true(obj.get("status") or {}, "PredictorConfigurationReady") is True  # absent: no evidence


PERCENT_PATH = ("spec", "predictor", "canaryTrafficPercent")


def _owners(obj: Obj, path: tuple[str, ...]) -> list[Obj]:
    """The managedFields entries (of the object, not a subresource) that own the field at `path`."""
    found = []
    for entry in obj["metadata"].get("managedFields") or []:
        fields: Any = entry.get("fieldsV1") or {}
        for key in path:
            fields = fields.get(f"f:{key}") if isinstance(fields, dict) else None
        if fields is not None and not entry.get("subresource"):
            found.append(entry)
    return found


def _ours(entry: Obj) -> bool:
    return entry.get("manager") == FIELD_MANAGER and entry.get("operation") == "Apply"


def _applied_by_us(obj: Obj, path: tuple[str, ...]) -> bool:
    """Whether this operator's apply owns the field at `path` (an object without managedFields, never one
    read from the API server, counts as ours)."""
    return not obj["metadata"].get("managedFields") or any(_ours(e) for e in _owners(obj, path))


def knative_view(obj: Obj, what: str) -> KnativeView:
    predictor = obj["spec"]["predictor"]
    key = model_key(predictor, what)
    component = ((obj.get("status") or {}).get("components") or {}).get("predictor") or {}
    generation, observed = observed_generation(obj)
    percent = predictor.get("canaryTrafficPercent")
    return KnativeView(
        obj=obj, key=key, spec_uri=predictor[key].get("storageUri"),
        canary_percent=None if percent is None else int(percent), annotations=annotations_of(obj),
        synced=observed is not None and observed >= generation,
        rolled_out=component.get("latestRolledoutRevision") or "",
        latest_created=component.get("latestCreatedRevision") or "",
        latest_ready=component.get("latestReadyRevision") or "",
        traffic=list(component.get("traffic") or []), logger_url=_logger_url(predictor),
        previous_rolled_out=component.get("previousRolledoutRevision") or "")


def knative_state(target: str, view: KnativeView) -> TargetState:
    status = view.obj.get("status") or {}
    ann = view.annotations
    problems: list[str] = []
    generation, observed = observed_generation(view.obj)
    if not view.synced:
        problems.append(f"KServe has not processed generation {generation} yet (observed {observed})")
    latest_version, changed = _version_for(ann, view.spec_uri, "spec.predictor")
    if changed:
        problems.append(changed)

    def version_of(revision: str) -> str | None:
        if revision and revision == ann.get(ANN_STABLE_REVISION):
            recorded = _none_if_empty(ann.get(ANN_STABLE_VERSION))
            clash = _another_models_version(recorded, ann.get(ANN_STABLE_URI), ann.get(ANN_VERSION),
                                            ann.get(ANN_VERSION_URI))
            return None if clash else recorded
        if revision and view.synced and revision == view.latest_created:
            return latest_version
        return None

    def percent_on(revision: str) -> int:
        return sum(int(t.get("percent") or 0) for t in view.traffic if t.get("revisionName") == revision)

    def url_of(revision: str, tag: str) -> str | None:
        urls = {t.get("tag"): t["url"] for t in view.traffic if t.get("revisionName") == revision and t.get("url")}
        return urls.get(tag) or next(iter(urls.values()), None)

    stable = view.rolled_out
    recorded = ann.get(ANN_STABLE_REVISION) or ""
    if (view.canary_percent is not None and view.candidate_in_spec and recorded and stable
            and stable != recorded and stable == view.latest_created):
        # KServe rolls a latest revision at 100% out (PropagateStatus), but while canaryTrafficPercent is set
        # our candidate is still a canary at that weight: the stable recorded at staging stays stable (at 0%),
        # so a weight of 100 is not a promotion and a rollback from it is seen as traffic really moves.
        stable = recorded
    if not stable:
        problems.append("no revision has been rolled out yet")
    canary = view.latest_created if view.latest_created and view.latest_created != stable else ""
    stable_copy = ""
    if canary and view.stable_uri is not None and view.spec_uri == view.stable_uri and view.synced:
        # The latest revision is a copy of stable made by a rollback or a restore: not a candidate.
        canary, stable_copy = "", canary
    if canary and canary == ann.get(ANN_WITHDRAWN_REVISION):
        # Latest before the write that put this model in the spec (a staging over a rollback's copy of stable): a
        # status that only looks caught up (kserve#6081) still names it, but it is never the candidate's.
        canary = ""
    # observedGeneration comes from the Knative Service, which moves before its Configuration has made the new
    # revision: until then latestCreated/Ready still name the previous one (after a rollback, a copy of stable)
    # and KServe says PredictorConfigurationReady Unknown. That revision is not the candidate.
    canary_ready = bool(canary) and view.synced and _configured(view.obj) and canary == view.latest_ready
    canary_weight: int | None = percent_on(canary) if canary else None
    # No traffic in status says nothing about the split: not a 0% canary, nor all of it on stable (either would
    # confirm a withdrawal), with or without a candidate in the spec. Knative's route always splits 100%: a split
    # summing to anything else (0% everywhere) is not one to read stable's share from.
    total = sum(int(t.get("percent") or 0) for t in view.traffic)
    synced = view.synced and bool(view.traffic) and total == 100
    if view.synced and not view.traffic:
        problems.append("KServe reports no traffic for the predictor (status.components.predictor.traffic)")
    elif view.synced and not synced:
        problems.append(f"KServe's traffic split for the predictor sums to {total}%, not 100% "
                        f"(stable {stable or 'none'} has {percent_on(stable) if stable else 0}%)")
    elsewhere = sum(int(t.get("percent") or 0) for t in view.traffic
                    if t.get("revisionName") not in (stable, canary))
    if elsewhere:
        problems.append(f"{elsewhere}% of traffic goes to revisions that are neither stable nor the candidate")
        canary_weight = (canary_weight or 0) + elsewhere  # never let stray traffic read as "back on stable"
    if canary and not canary_ready and view.synced:
        found = condition(status, "PredictorConfigurationReady") or condition(status, "PredictorReady") or {}
        problems.append(f"candidate revision {canary} is not ready"
                        + (f": {found['message']}" if found.get("message") else ""))
    if (stable_copy and stable and stable != ann.get(ANN_STABLE_REVISION)
            and not (_configured(view.obj) and view.latest_ready == stable_copy)):
        # A restore's new revision of stable (no pin reached stable's old one), or stable put back after a promotion
        # another way: until it is ready the revision rolled out, the rejected model's, keeps the traffic. (A
        # rollback's copy of stable starting beside the recorded stable revision, which serves, is no problem.)
        found = condition(status, "PredictorConfigurationReady") or condition(status, "PredictorReady") or {}
        version = f" (version {latest_version})" if latest_version else ""
        problems.append(f"revision {stable_copy} of the spec's model{version} is not ready, so {stable} keeps "
                        f"{percent_on(stable)}% of traffic" + (f": {found['message']}" if found.get("message") else ""))
    # Ready means stable serves: a failing candidate turns KServe's Ready False while stable still serves.
    # An absent condition is no evidence that the route serves: only Unknown (a route being updated) is let pass.
    missing = [kind for kind in ("PredictorRouteReady", "IngressReady") if condition(status, kind) is None]
    ready = bool(stable) and not missing and all(condition_true(status, kind) is not False
                                                 for kind in ("PredictorRouteReady", "IngressReady"))
    if stable and missing:
        problems.append(f"KServe reports no {' or '.join(missing)} condition")
    problems += [f"KServe's route is not ready: {_condition_said(found)}"
                 for kind in ("PredictorRouteReady", "IngressReady")
                 if (found := condition(status, kind)) is not None and condition_true(status, kind) is False]
    # With a candidate beside it, stable is reached alone through its `prev` tag URL; otherwise the
    # predictor's own URL sends everything to stable.
    stable_url = url_of(stable, "prev") if canary else \
        ((status.get("components") or {}).get("predictor") or {}).get("url") or status.get("url")
    canary_url = url_of(canary, "latest") if canary else None
    if canary_ready and canary_url is None:
        problems.append(_no_candidate_url(canary, ann))
    return TargetState(
        target=target, exists=True, mode=DeploymentMode.KNATIVE, synced=synced, ready=ready,
        stable_version=version_of(stable), stable_name=stable or None, stable_url=stable_url,
        canary_version=version_of(canary) if canary else None, canary_name=canary or None,
        canary_ready=canary_ready, canary_weight=canary_weight, canary_url=canary_url,
        pinned=view.pinned, message="; ".join(problems))


def _knative_body(oc: ObjectClient, view: KnativeView, *, uri: str | None,
                  annotations: Mapping[str, str | None], canary_percent: int | None,
                  logger_url: str | None = None) -> Obj:
    """Every field the router owns, with the values wanted: a field left out would be removed.

    logger_url: the logger URL for a write that names another model (its version in the query); other
    writes keep the URL as it is, so that they make no revision of their own."""
    body = oc.skeleton(view.obj["metadata"]["resourceVersion"])
    body["metadata"]["annotations"] = {k: v for k, v in annotations.items() if v is not None}
    predictor: Obj = {view.key: {"storageUri": uri}}
    if canary_percent is not None:
        predictor["canaryTrafficPercent"] = canary_percent
    if view.logger_url:
        # Written with every body, even unchanged: a field this manager stops applying would be removed.
        predictor["logger"] = {"url": logger_url or view.logger_url}
    body["spec"] = {"predictor": predictor}
    return body


def _owned_annotations(view: KnativeView) -> dict[str, str | None]:
    owned: dict[str, str | None] = {k: view.annotations[k] for k in OWNED_ANNOTATIONS if k in view.annotations}
    if TAG_ROUTING in view.annotations and _applied_by_us(view.obj, TAG_ROUTING_PATH):
        owned[TAG_ROUTING] = view.annotations[TAG_ROUTING]  # never claim a value only someone else set
    return owned


def _tag_routing_shared(view: KnativeView) -> bool:
    """enable-tag-routing is owned by another manager too (with the same value: ownership is per value)."""
    return not all(_ours(e) for e in _owners(view.obj, TAG_ROUTING_PATH))


def _tag_routing_before(view: KnativeView) -> str:
    """What staging records to give back: the value recorded earlier while the field is still ours alone (a
    restage, or a rollout after a promotion, which keeps it), else the value found now ("": absent)."""
    recorded = view.annotations.get(ANN_TAG_ROUTING_BEFORE)
    if recorded is not None and TAG_ROUTING in _owned_annotations(view) and not _tag_routing_shared(view):
        return recorded
    return view.annotations.get(TAG_ROUTING, "")


def _released_annotations(view: KnativeView, *, may_change: bool = True) -> dict[str, str | None]:
    """Our annotations once the rollout has ended: enable-tag-routing given back (see `release` above).
    may_change=False: a write that makes no revision otherwise keeps the value, for changing it would make one."""
    owned = _owned_annotations(view)
    current = owned.pop(TAG_ROUTING, None)
    if current is None or _tag_routing_shared(view):
        return owned  # not ours, or someone else's too: left out, the value stays
    before = view.annotations.get(ANN_TAG_ROUTING_BEFORE)
    wanted = before if before not in (None, "", "true") else None  # None: removed, as before staging
    owned[TAG_ROUTING] = current if (wanted != current and not may_change) else wanted
    return owned


def _withdrawn_annotations(view: KnativeView, version: str | None, uri: str | None) -> dict[str, str | None]:
    """Our annotations once the spec names stable again: released (above), the model recorded as stable's version
    (None: the one recorded at staging; none at all when that is not known), and the revision that was latest
    before this write, which unpin_ready must never take for the copy of stable the write makes."""
    annotations = _released_annotations(view)
    annotations[ANN_VERSION] = version if version else view.annotations.get(ANN_STABLE_VERSION)
    annotations[ANN_WITHDRAWN_REVISION] = view.latest_created or None
    annotations[ANN_VERSION_URI] = uri if annotations[ANN_VERSION] else None
    return annotations


def _record_stale(view: KnativeView) -> bool:
    """The spec names the recorded stable again while our version record still names another model (the
    candidate): it left the spec another way (a GitOps self-heal put stable's storageUri back), so no rollback
    write of ours recorded stable. Left so, observe() would read the version served as unknown."""
    recorded = _none_if_empty(view.annotations.get(ANN_VERSION_URI))
    return (view.stable_uri is not None and view.spec_uri == view.stable_uri and recorded is not None
            and recorded != view.spec_uri)


def _release_due(view: KnativeView) -> bool:
    """Staging's enable-tag-routing is still ours to give back though the spec no longer names the candidate: it
    left another way (a GitOps self-heal put stable's storageUri back), so no rollback write of ours released it."""
    if view.candidate_in_spec or view.stable_uri is None or ANN_TAG_ROUTING_BEFORE not in view.annotations:
        return False
    owned = _owned_annotations(view)
    return TAG_ROUTING in owned and _released_annotations(view).get(TAG_ROUTING) != owned[TAG_ROUTING]


def _recorded_as(view: KnativeView, stable: CandidateModel) -> bool:
    """The stable recorded at staging is `stable`: its storageUri as asked, or its version where that is the
    object's own record for the URI (the operator's storage-URI template changed since). A version taken from the
    engine's hint was never checked against the URI: another registered model's version of that number may have
    served there, and the restore would put it back as this model's."""
    ann = view.annotations
    return view.stable_uri is not None and (
        view.stable_uri == stable.storage_uri
        or (ann.get(ANN_STABLE_VERSION) == stable.version and ann.get(ANN_STABLE_VERSION_CHECKED) == "true"))


def _names_stable(view: KnativeView, stable: CandidateModel) -> bool:
    """The spec names `stable`: its storageUri as asked, or the URI a restore wrote back for that version."""
    ann = view.annotations
    return view.spec_uri == stable.storage_uri or (view.spec_uri is not None and ann.get(ANN_VERSION) == stable.version
                                                   and ann.get(ANN_VERSION_URI) == view.spec_uri)


def _pin_reaches_stable(view: KnativeView) -> bool:
    """canaryTrafficPercent 0 sends all traffic to the stable revision recorded at staging. It goes to
    latestRolledoutRevision, or, when that is the latest revision, to previousRolledoutRevision: after a
    promotion, stable's only while no revision was rolled out since (a model synced in, a resources edit)."""
    recorded = view.annotations.get(ANN_STABLE_REVISION)
    if not (recorded and view.synced):
        return False
    if view.rolled_out == view.latest_created:
        # PredictorConfigurationReady Unknown: a revision of a newer spec may still be coming (a status that only
        # looks caught up, see ANN_WITHDRAWN_REVISION); once made, the pin would hold the rejected one rolled out.
        return view.previous_rolled_out == recorded and _configured(view.obj)
    return view.rolled_out == recorded


def _no_candidate_url(canary: str, annotations: Mapping[str, str]) -> str:
    """Why a ready candidate revision has no URL of its own: a gate waits for one."""
    if annotations.get(TAG_ROUTING) != "true":
        return (f"candidate revision {canary} has no URL of its own: {TAG_ROUTING} is not 'true' (removed "
                "outside ModelRollout?), so KServe gives it no latest- tag URL; annotate the InferenceService "
                f"{TAG_ROUTING}=true again")
    return f"KServe reports no URL for candidate revision {canary} yet"


# --- Standard mode -----------------------------------------------------------------------------------


@dataclass
class StandardView:
    obj: Obj
    key: str
    predictor: Obj
    ours: Obj | None  # the spec.canary entry this router staged
    foreign: list[Obj]  # spec.canary entries someone else made
    synced: bool

    @property
    def stable_annotations(self) -> dict[str, str]:
        return dict(self.predictor.get("annotations") or {})

    @property
    def canary_annotations(self) -> dict[str, str]:
        return dict(((self.ours or {}).get("predictor") or {}).get("annotations") or {})


def standard_view(obj: Obj, what: str) -> StandardView:
    predictor = obj["spec"]["predictor"]
    entries = list(obj["spec"].get("canary") or [])
    key = model_key(predictor, what)

    def annotations(entry: Obj) -> dict[str, str]:
        return (entry.get("predictor") or {}).get("annotations") or {}

    annotated = [e for e in entries if ANN_VERSION in annotations(e)]
    # Several entries carrying our annotations: the others are copies someone made of ours (a shadow canary added by
    # editing a copy), so ours is the one loading the model recorded on it (review s35r3); one alone stays ours.
    loading = [e for e in annotated
               if ((e.get("predictor") or {}).get(key) or {}).get("storageUri") == annotations(e).get(ANN_VERSION_URI)]
    ours = (loading or annotated)[0] if annotated else None
    generation, observed = observed_generation(obj)
    return StandardView(obj=obj, key=key, predictor=predictor, ours=ours,
                        foreign=[e for e in entries if e is not ours],
                        synced=observed is not None and observed >= generation)


def standard_state(target: str, view: StandardView) -> TargetState:
    status = view.obj.get("status") or {}
    meta = view.obj["metadata"]
    generation, observed = observed_generation(view.obj)
    problems: list[str] = []
    synced = view.synced
    if not view.synced:
        problems.append(f"KServe has not processed generation {generation} yet (observed {observed})")
    ready = condition_true(status, "PredictorReady") is True
    if not ready:
        found = condition(status, "PredictorReady") or {}
        problems.append("stable predictor is not ready" + (f": {found['message']}" if found.get("message") else ""))
    # KServe's raw-deployment controller reports the Ingress/HTTPRoute that carries the split as IngressReady: True,
    # also where it makes none (ingress creation disabled, cluster-local), else False with its reason. Until it is
    # True the split programmed before (a rollback's `canary: []` not yet applied) may still serve. A status without
    # it (written by hand, or by a controller that reports none) is read on PredictorReady alone, as before.
    ingress = condition(status, "IngressReady")
    if ingress is not None and condition_true(status, "IngressReady") is not True:
        ready = False
        problems.append(f"KServe's ingress is not ready: {_condition_said(ingress)}")
    stable_uri = view.predictor[view.key].get("storageUri")
    stable_version, changed = _version_for(view.stable_annotations, stable_uri, "spec.predictor")
    if stable_version is None and changed is None:  # none on stable (a first rollout): the one recorded at staging
        stable_version, changed = _version_for(view.canary_annotations, stable_uri, "spec.predictor",
                                               ANN_STABLE_VERSION, ANN_STABLE_URI)
    if _hand_promoted(view):
        # The candidate's storageUri written into spec.predictor, our canary left: the candidate serves as stable,
        # so reported as such (a rollback must put stable back, not just drop the canary).
        stable_version = view.canary_annotations[ANN_VERSION]
        changed = (f"spec.predictor names canary predictor {view.ours['predictor'].get('name')}'s model "
                   f"(version {stable_version}): promoted outside ModelRollout?")
    elif _number_clash(view, stable_version, stable_uri):
        stable_version = None
    if changed:
        problems.append(changed)
    canary_name = canary_version = canary_url = None
    canary_ready = False
    canary_weight: int | None = None
    if view.ours is not None:
        canary_name = view.ours["predictor"]["name"]
        canary_version, changed = _version_for(view.canary_annotations,
                                               (view.ours["predictor"].get(view.key) or {}).get("storageUri"),
                                               f"canary predictor {canary_name}")
        if changed:
            problems.append(changed)
        reported = next((c for c in status.get("canaryStatuses") or [] if c.get("name") == canary_name), None)
        canary_ready = bool(view.synced and reported and reported.get("ready"))
        # No entry says nothing about the split: not a 0% canary (that would confirm a withdrawal).
        canary_weight = int(reported.get("trafficPercent") or 0) if reported else None
        if reported is None and view.synced:
            synced = False
            problems.append(f"KServe reports no traffic for canary predictor {canary_name} (status.canaryStatuses)")
        canary_url = f"http://{_deployment_name(meta['name'], canary_name)}.{meta['namespace']}.svc.cluster.local"
        if not canary_ready and view.synced:
            found = condition(status, "CanaryPredictorReady") or {}
            problems.append(f"canary predictor {canary_name} is not ready"
                            + (f": {found['message']}" if found.get("message") else ""))
    if view.foreign:
        problems.append(f"spec.canary holds {len(view.foreign)} entries ModelRollout did not create")
    # Traffic KServe reports for any canary but ours and stable's is not stable's: someone else's entry, or one the
    # spec no longer holds (a status not yet caught up with a rollback's `canary: []`, though observedGeneration
    # says so). Never let it read as "back on stable".
    in_spec = {(e.get("predictor") or {}).get("name") for e in view.foreign}
    stray_names: dict[str, int] = {}
    for entry in status.get("canaryStatuses") or []:
        name = entry.get("name")
        if name not in (canary_name, view.predictor.get("name")) and int(entry.get("trafficPercent") or 0):
            stray_names[str(name)] = stray_names.get(str(name), 0) + int(entry["trafficPercent"])
    if stray_names:
        canary_weight = (canary_weight or 0) + sum(stray_names.values())
        gone = sorted(n for n in stray_names if n not in in_spec)
        if gone:
            problems.append("KServe still reports traffic for canary predictors spec.canary no longer holds: "
                            + ", ".join(f"{n} ({stray_names[n]}%)" for n in gone))
    component = (status.get("components") or {}).get("predictor") or {}
    return TargetState(
        target=target, exists=True, mode=DeploymentMode.STANDARD, synced=synced, ready=ready,
        stable_version=stable_version, stable_name=_deployment_name(meta["name"], view.predictor.get("name")),
        stable_url=component.get("url") or status.get("url"), canary_version=canary_version,
        canary_name=_deployment_name(meta["name"], canary_name) if canary_name else None, canary_ready=canary_ready,
        canary_weight=canary_weight, canary_url=canary_url, message="; ".join(problems))


def _hand_promoted(view: StandardView) -> bool:
    """spec.predictor names the model of our canary entry (its storageUri written there outside ModelRollout, the
    entry left): unlike our own promotion, which empties spec.canary in the same write."""
    ann = view.canary_annotations
    uri = view.predictor[view.key].get("storageUri")
    return view.ours is not None and bool(ann.get(ANN_VERSION)) and uri is not None and uri == ann.get(ANN_VERSION_URI)


def _number_clash(view: StandardView, stable_version: str | None, stable_uri: str | None) -> bool:
    """spec.predictor's version is another model's of our canary's number (_another_models_version)."""
    ann = view.canary_annotations
    return _another_models_version(stable_version, stable_uri, ann.get(ANN_VERSION), ann.get(ANN_VERSION_URI))


def _deployment_name(isvc: str, predictor_name: str | None) -> str:
    """KServe Standard mode runs a predictor named n as Deployment <isvc>-<n>-predictor."""
    return f"{isvc}-{predictor_name}-predictor" if predictor_name else f"{isvc}-predictor"


def _foreign_names(view: StandardView) -> str:
    return ", ".join(str((e.get("predictor") or {}).get("name") or "(unnamed)") for e in view.foreign)


def _refuse_foreign(target: str, view: StandardView, outcome: str) -> None:
    """spec.canary is one atomic list: a write of ours replaces it whole, so entries someone else added after staging
    (an on-call's shadow canary) would go with their Deployments. Refused, naming them, as staging refuses; a
    rollback alone removes them (see _standard_body)."""
    if view.foreign:
        raise TargetStateError(f"{target}: spec.canary holds entries ModelRollout did not create "
                               f"({_foreign_names(view)}), so {outcome}: writing spec.canary would delete them; "
                               "remove them, or roll back (which removes them with the candidate)")


def _standard_body(oc: ObjectClient, view: StandardView, *, predictor_name: str | None, uri: str | None,
                   annotations: dict[str, str], canary: list[Obj], logger_url: str | None = None) -> Obj:
    """Every field the router owns: the stable predictor's name, storageUri and logger URL (shared with whoever
    set them until a promotion changes them), our annotations on it, and the whole atomic spec.canary.

    canary=[] removes the canary: written, never left out, for leaving out the list only removes it while this
    manager alone owns it, and an Update (`kubectl edit` of the canary) makes its manager an owner too."""
    if not canary and view.foreign:
        # Only a rollback or restore gets here (staging, a weight and a promotion refuse): all traffic goes back to
        # stable, so every canary goes, as the engine confirms a withdrawal only with no canary share left.
        log.warning("%s: removing spec.canary entries ModelRollout did not create with the candidate: %s",
                    oc.description, _foreign_names(view))
    body = oc.skeleton(view.obj["metadata"]["resourceVersion"])
    predictor: Obj = {view.key: {"storageUri": uri}}
    if predictor_name:
        predictor["name"] = predictor_name
    if logger_url:
        predictor["logger"] = {"url": logger_url}
    if annotations:
        predictor["annotations"] = annotations
    body["spec"] = {"predictor": predictor, "canary": canary}
    return body


def _standard_put_back(oc: ObjectClient, view: StandardView, *, uri: str, version: str | None,
                       name: str | None) -> Obj:
    """spec.predictor set to a model that served before (restore, or a rollback after a hand promotion), the
    canary removed; its version recorded for that URI, or none recorded when unknown."""
    owned = _stable_owned(view)
    annotations = {k: v for k, v in owned["annotations"].items() if k not in (ANN_VERSION, ANN_VERSION_URI)}
    if version:
        annotations.update({ANN_VERSION: version, ANN_VERSION_URI: uri})
    return _standard_body(oc, view, predictor_name=name or None, uri=uri,
                          annotations=annotations, canary=[], logger_url=_relabelled(owned["logger_url"], version))


def _stable_owned(view: StandardView) -> dict[str, Any]:
    return {"predictor_name": view.predictor.get("name"), "uri": view.predictor[view.key].get("storageUri"),
            "annotations": {k: v for k, v in view.stable_annotations.items() if k in OWNED_ANNOTATIONS},
            "logger_url": _logger_url(view.predictor)}


# --- the router --------------------------------------------------------------------------------------


class KServeRouter:
    """One InferenceService. `default_mode` is the cluster's KServe default, used only when neither
    status.deploymentMode nor the annotation says (KServe's own fallback).

    settle_timeout bounds how long rollback()/restore() wait for KServe between the two writes of a
    Knative rollback after a rollout (the traffic is already safe after the first one).
    """

    def __init__(self, api_client: client.ApiClient, namespace: str, name: str, *,
                 default_mode: DeploymentMode | str | None = None, settle_timeout: float = 10.0,
                 poll_interval: float = 0.1) -> None:
        self.client = ObjectClient(api_client, INFERENCE_SERVICE, namespace, name)
        self.default_mode = parse_mode(default_mode)
        self.settle_timeout = settle_timeout
        self.poll_interval = poll_interval

    @property
    def target(self) -> str:
        return self.client.description

    def observe(self) -> TargetState:
        obj = self.client.get_or_none()
        if obj is None:
            return TargetState(target=self.target, exists=False, message=f"{self.target} not found")
        try:
            mode = deployment_mode(obj, self.default_mode)
            if mode is DeploymentMode.KNATIVE:
                return knative_state(self.target, knative_view(obj, self.target))
            return standard_state(self.target, standard_view(obj, self.target))
        except TargetStateError as exc:
            if exc.reason != "Unavailable":
                raise  # never drivable as it is (ModelMesh, a custom container): no catch-up will change that
            return TargetState(target=self.target, exists=True, message=str(exc))  # KServe has not said yet

    def stage(self, candidate: CandidateModel, stable_version: str | None = None) -> None:
        def build(obj: Obj, mode: DeploymentMode) -> Obj:
            if mode is DeploymentMode.KNATIVE:
                return self._knative_stage(knative_view(obj, self.target), candidate, stable_version)
            return self._standard_stage(standard_view(obj, self.target), candidate, stable_version)
        self._apply_with(build, "staging")

    def set_weight(self, percent: int, candidate_version: str | None = None) -> None:
        check_percent(percent)

        def build(obj: Obj, mode: DeploymentMode) -> Obj:
            if mode is DeploymentMode.KNATIVE:
                view = knative_view(obj, self.target)
                if not view.candidate_in_spec:
                    raise TargetStateError(f"no candidate is staged on {self.target}")
                staged, unknown_why = _version_for(view.annotations, view.spec_uri, "spec.predictor")
                check_candidate_version(self.target, staged, candidate_version, unknown_why or "")
                return _knative_body(self.client, view, uri=view.spec_uri, annotations=_owned_annotations(view),
                                     canary_percent=percent)
            sview = standard_view(obj, self.target)
            if sview.ours is None:
                raise TargetStateError(f"no candidate is staged on {self.target}")
            staged, unknown_why = _version_for(sview.canary_annotations,
                                               (sview.ours["predictor"].get(sview.key) or {}).get("storageUri"),
                                               f"canary predictor {sview.ours['predictor'].get('name')}")
            check_candidate_version(self.target, staged, candidate_version, unknown_why or "")
            _refuse_foreign(self.target, sview, "its weight is not changed")
            entry = copy.deepcopy(sview.ours)
            entry["trafficPercent"] = percent
            return _standard_body(self.client, sview, **_stable_owned(sview), canary=[entry])
        self._apply_with(build, "setting the weight")

    def promote(self) -> None:
        def build(obj: Obj, mode: DeploymentMode) -> Obj | None:
            if mode is DeploymentMode.KNATIVE:
                view = knative_view(obj, self.target)
                if not view.candidate_in_spec:
                    raise TargetStateError(f"cannot promote: no candidate is staged on {self.target}")
                # No canaryTrafficPercent: KServe rolls the latest revision out to 100%.
                return _knative_body(self.client, view, uri=view.spec_uri, annotations=_owned_annotations(view),
                                     canary_percent=None)
            return self._standard_promote(standard_view(obj, self.target))
        self._apply_with(build, "promoting")
        self._remove_foreign_percent()

    def rollback(self) -> None:
        """Before promotion: the candidate out, stable at 100%. Nothing staged: nothing to do. Knative: left
        pinned, the pin is removed once the copy of stable is ready (call again while observe() says pinned)."""
        obj = self.client.get()
        if deployment_mode(obj, self.default_mode) is DeploymentMode.STANDARD:
            self._apply_with(lambda o, _: self._standard_rollback(standard_view(o, self.target)), "rolling back")
            return
        view = knative_view(obj, self.target)
        if _release_due(view) or _record_stale(view):
            self._settle_left_candidate()
            view = knative_view(self.client.get(), self.target)
        if view.pinned:
            self._unpin()
            return
        if view.stable_uri is None and view.canary_percent is not None and (
                any(k in view.annotations for k in OWNED_ANNOTATIONS)
                or any(_ours(e) for e in _owners(view.obj, PERCENT_PATH))):
            # Our canary, its annotations removed mid-canary (a `kubectl edit`, a Replace sync): the pin needs none,
            # so traffic goes back to the rolled-out revision; the spec cannot be restored without them. (A percent
            # with none of ours around is someone else's canary: left alone.)
            self._pin_previous(wait=False)
            raise TargetStateError(f"{self.target}: the {ANN_STABLE_URI} annotation is missing (removed outside "
                                   "ModelRollout?), so only canaryTrafficPercent 0 was set: put the stable model's "
                                   "storageUri back in spec.predictor by hand")
        # Staged: canaryTrafficPercent set, or removed by hand while stable is still the rolled-out revision (KServe
        # rolls the candidate out at 100% once it is ready). A candidate rolled out already looks just like one
        # promoted: restore(), given the stable version, puts that back (the engine sends it when it sees so).
        if not view.candidate_in_spec or (view.canary_percent is None
                                          and view.rolled_out != view.annotations.get(ANN_STABLE_REVISION)):
            return  # nothing staged (after a promotion, restore() puts a given version back)
        recorded, changed = _version_for(view.annotations, view.spec_uri, "spec.predictor")
        if recorded is None and changed is not None:
            # A third model, neither the candidate recorded nor stable (an Argo CD sync of a newer manifest): someone
            # else's, not ours to overwrite with stable. Said, and the record kept: it still names what was staged.
            percent = f"; canaryTrafficPercent {view.canary_percent} still splits traffic with stable's revision" \
                if view.canary_percent is not None else ""
            raise TargetStateError(f"{self.target}: {changed}; it is neither the candidate nor stable "
                                   f"({redacted_url(view.stable_uri or '')}), so the spec is left as it is{percent}: "
                                   "roll it back by hand if it must go")
        # First write, at once and whatever KServe has processed so far: canaryTrafficPercent 0 sends all
        # traffic to latestRolledoutRevision (or, if a 100% weight rolled the candidate out, back to the
        # previous revision). Only then does the spec stop naming the candidate.
        if not self._pin_previous():
            return  # traffic moves as soon as KServe acts; the next rollback() restores the storageUri
        self._apply_with(lambda o, _: self._knative_restore(knative_view(o, self.target), None), "rolling back")

    def restore(self, stable: CandidateModel) -> None:
        """After promotion: put `stable` (the version that served before) back on all traffic."""
        obj = self.client.get()
        if deployment_mode(obj, self.default_mode) is DeploymentMode.STANDARD:
            self._apply_with(lambda o, _: self._standard_restore(standard_view(o, self.target), stable), "restoring")
            return
        view = knative_view(obj, self.target)
        if not view.synced:  # where a pin sends traffic is read from status: only a caught-up one says
            view = self._wait_for(lambda v: v.synced, "KServe to process the latest generation")
        def pin_goes_to_stable(v: KnativeView) -> bool:
            return v.candidate_in_spec and _recorded_as(v, stable) and _pin_reaches_stable(v)
        if pin_goes_to_stable(view):
            # The stable this candidate was staged against, its revision the one a pin goes back to: KServe's
            # documented rollback, canaryTrafficPercent 0, sends all traffic there at once. (Once another revision
            # was rolled out after the promotion, the pin would go to the rejected candidate's: not taken.) Checked
            # again on the object the pin is applied to: a sync landing since (the apply's 409) may have moved it.
            pinned = self._pin_previous(only_if=pin_goes_to_stable)
            if pinned is False:
                return  # traffic moves as soon as KServe acts; call again to restore the storageUri
            view = knative_view(self.client.get(), self.target)
            if pinned and view.rolled_out == view.annotations.get(ANN_STABLE_REVISION):
                self._apply_with(lambda o, _: self._knative_restore(knative_view(o, self.target), stable),
                                 "restoring")
                return
            view = self._wait_for(lambda v: v.synced, "KServe to process the latest generation")
        if _names_stable(view, stable) and view.rolled_out != view.latest_created:
            if view.pinned:
                self._unpin()  # once the copy of stable is ready
            return  # the spec names stable and the older stable revision serves: restored already
        if (_names_stable(view, stable) and view.canary_percent is None and view.rolled_out
                and _version_for(view.annotations, view.spec_uri, "spec.predictor")[0] == stable.version):
            return  # stable's model, recorded as that version, rolled out (e.g. a copy of stable, unpinned)
        changed = _version_for(view.annotations, view.spec_uri, "spec.predictor")[1]
        if changed and not _names_stable(view, stable) and view.spec_uri != view.stable_uri:
            # Not refused, as rollback() refuses a third model: after a promotion no stable share is left to fall
            # back on, and the bake that failed judged what served under the promoted version's label.
            log.warning("%s: restoring version %s over a model put there outside ModelRollout: %s", self.target,
                        stable.version, changed)
        # No revision known to hold this model (or none a pin reaches): roll it out as a new revision. Traffic
        # stays where it is until that revision is ready (no restore is instant without a revision to go back to).
        # The template's storageUri: a new revision gains nothing from the form recorded at staging, which may be
        # why the template changed (it no longer loads); only the pin's write needs that form (see _knative_restore).
        def build(o: Obj, _: DeploymentMode) -> Obj:
            v = knative_view(o, self.target)
            uri = stable.storage_uri
            annotations = _released_annotations(v)
            annotations.update({ANN_VERSION: stable.version, ANN_VERSION_URI: uri,
                                ANN_STABLE_VERSION: stable.version, ANN_STABLE_URI: uri,
                                ANN_STABLE_VERSION_CHECKED: "true",  # the engine's version for exactly this URI
                                ANN_STABLE_REVISION: None, ANN_WITHDRAWN_REVISION: None})
            return _knative_body(self.client, v, uri=uri, annotations=annotations, canary_percent=None,
                                 logger_url=_relabelled(v.logger_url, stable.version))
        self._apply_with(build, "restoring")
        self._remove_foreign_percent()  # else the new revision would get only the share someone set by hand

    # -- plumbing --

    def _apply_with(self, build: Callable[[Obj, DeploymentMode], Obj | None], what: str) -> bool:
        """Read, build the body from what was read (None: nothing to do), apply; again on a 409. Whether applied."""
        def once() -> bool:
            obj = self.client.get()
            body = build(obj, deployment_mode(obj, self.default_mode))
            if body is not None:
                self.client.apply(body)
            return body is not None
        return retry_on_conflict(once, f"{what} on {self.target}")

    def _wait_for(self, done: Callable[[KnativeView], bool], what: str) -> KnativeView:
        deadline = time.monotonic() + self.settle_timeout
        while True:
            view = knative_view(self.client.get(), self.target)
            if done(view):
                return view
            if time.monotonic() >= deadline:
                raise TargetStateError(f"{self.target}: timed out after {self.settle_timeout:g}s waiting for {what}",
                                       reason="Unavailable")
            time.sleep(self.poll_interval)

    def _pin_previous(self, wait: bool = True, only_if: Callable[[KnativeView], bool] | None = None) -> bool | None:
        """canaryTrafficPercent 0: all traffic to latestRolledoutRevision, or, when the latest revision is
        the rolled-out one, to previousRolledoutRevision. True once KServe reports the latest revision
        no longer rolled out (wait=False: not waited for, False). only_if: checked on the object the pin is
        applied to (read again on a 409); when it fails, nothing is written (None)."""
        def build(obj: Obj, _: DeploymentMode) -> Obj | None:
            view = knative_view(obj, self.target)
            if only_if is not None and not only_if(view):
                return None
            return _knative_body(self.client, view, uri=view.spec_uri, annotations=_owned_annotations(view),
                                 canary_percent=0)
        if not self._apply_with(build, "pinning the previous revision"):
            return None
        if not wait:
            return False
        try:
            self._wait_for(lambda v: v.synced and bool(v.rolled_out) and v.rolled_out != v.latest_created,
                           "KServe to route traffic back to the previous revision")
        except TargetStateError:
            return False
        return True

    def _remove_foreign_percent(self) -> None:
        """Knative promotion: a canaryTrafficPercent another manager also owns (an on-call's `kubectl patch`)
        outlives the apply that leaves it out and would hold the promoted revision at that share. A merge patch
        removes it for every manager; its resourceVersion makes it refused (409: read again) if the object
        changed since it was read. (A rollback's pin is another matter: see _unpin.)"""
        def once() -> None:
            obj = self.client.get()
            if (deployment_mode(obj, self.default_mode) is DeploymentMode.KNATIVE
                    and obj["spec"]["predictor"].get("canaryTrafficPercent") is not None
                    and not all(_ours(e) for e in _owners(obj, PERCENT_PATH))):
                self.client.merge_patch({"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                                         "spec": {"predictor": {"canaryTrafficPercent": None}}})
        retry_on_conflict(once, f"promoting on {self.target}")

    def _unpin(self) -> None:
        """canaryTrafficPercent removed (the rest of the body as last applied, so no revision is made) once the
        copy of stable is ready: it takes 100%. Until then, nothing."""
        def build(obj: Obj, mode: DeploymentMode) -> Obj | None:
            view = knative_view(obj, self.target) if mode is DeploymentMode.KNATIVE else None
            if view is None or not view.unpin_ready:
                return None
            return _knative_body(self.client, view, uri=view.spec_uri,
                                 annotations=_released_annotations(view, may_change=False), canary_percent=None)
        self._apply_with(build, "unpinning the copy of stable")

    def _settle_left_candidate(self) -> None:
        """The candidate left the spec another way (stable's storageUri put back): what our rollback's write of that
        URI would have done, in one write, the spec as it is (its logger URL too: the writer of stable's URI owns
        it now). enable-tag-routing given back and stable's version recorded (see _record_stale). The annotation
        change makes a revision, a copy of stable; a pin left on waits for it (see unpin_ready)."""
        def build(obj: Obj, mode: DeploymentMode) -> Obj | None:
            view = knative_view(obj, self.target) if mode is DeploymentMode.KNATIVE else None
            if view is None or not (_release_due(view) or _record_stale(view)):
                return None
            annotations = _withdrawn_annotations(view, None, view.stable_uri) if _record_stale(view) \
                else _released_annotations(view)
            return _knative_body(self.client, view, uri=view.spec_uri, annotations=annotations,
                                 canary_percent=view.canary_percent)
        self._apply_with(build, "settling the record of a candidate that left the spec")

    # -- Knative details --

    def _knative_stage(self, view: KnativeView, candidate: CandidateModel, stable_hint: str | None) -> Obj:
        if not view.synced:
            raise TargetStateError(f"{self.target}: KServe has not processed the latest generation yet",
                                   reason="Unavailable")
        if not view.rolled_out:
            # canaryTrafficPercent applies only once a revision is rolled out; the candidate would get 100%.
            raise TargetStateError(f"{self.target} has no rolled-out revision yet, so the candidate cannot be "
                                   f"held at 0%", reason="Unavailable")
        ann = view.annotations
        if view.rolled_out == view.latest_created:  # the spec's own model is what serves
            # A version recorded for another storageUri is unknown: the engine's hint is better than it.
            stable_uri, stable_version = view.spec_uri, _version_for(ann, view.spec_uri, "spec.predictor")[0]
            # Our write-back of an earlier staging's stable record (a rollback, a restore) is as checked as it was.
            written_back = ann.get(ANN_STABLE_URI) == stable_uri and ann.get(ANN_STABLE_VERSION) == stable_version
            checked = stable_version is not None and (
                not written_back or ann.get(ANN_STABLE_VERSION_CHECKED) == "true")
        elif view.rolled_out == ann.get(ANN_STABLE_REVISION):  # staged already, or rolled back: recorded stable
            stable_uri, stable_version = view.stable_uri, _none_if_empty(ann.get(ANN_STABLE_VERSION))
            checked = ann.get(ANN_STABLE_VERSION_CHECKED) == "true"
        else:
            raise TargetStateError(f"{self.target} is in the middle of a canary ModelRollout did not start "
                                   f"(revision {view.latest_created} beside {view.rolled_out})")
        _check_stable_uri(self.target, stable_uri, candidate)
        stable_record = _stable_record(stable_version, stable_hint, stable_uri, candidate)
        annotations = {ANN_VERSION: candidate.version, ANN_VERSION_URI: candidate.storage_uri,
                       ANN_STABLE_VERSION: stable_record, ANN_STABLE_URI: stable_uri,
                       ANN_STABLE_VERSION_CHECKED: "true" if checked and stable_record == stable_version else None,
                       ANN_STABLE_REVISION: view.rolled_out, ANN_TAG_ROUTING_BEFORE: _tag_routing_before(view),
                       # The revision latest before this write is never the candidate's (after a rollback: the copy
                       # of stable); a restage of the same model makes none, so its record stays.
                       ANN_WITHDRAWN_REVISION: (view.latest_created or None) if view.spec_uri != candidate.storage_uri
                       else ann.get(ANN_WITHDRAWN_REVISION),
                       TAG_ROUTING: "true"}
        return _knative_body(self.client, view, uri=candidate.storage_uri, annotations=annotations,
                             canary_percent=0,
                             logger_url=_relabelled(view.logger_url, candidate.version))

    def _knative_restore(self, view: KnativeView, stable: CandidateModel | None) -> Obj:
        """canaryTrafficPercent 0 with the stable storageUri: the spec stops naming the candidate while
        latestRolledoutRevision (stable) keeps all traffic; the copy of stable it creates stays at 0%.

        The storageUri written is the one recorded at staging (restore() comes here only when `stable` is that
        one, by URI or version): the form that served, and stable-storage-uri stays equal to the spec, which
        `pinned` and so the unpin need."""
        if not view.synced or view.rolled_out == view.latest_created:
            # KServe has not pinned the previous revision yet: changing the model now would leave the
            # candidate's revision rolled out with 100%. Keep it pinned; the next call restores the URI.
            return _knative_body(self.client, view, uri=view.spec_uri, annotations=_owned_annotations(view),
                                 canary_percent=0)
        uri = view.stable_uri
        # This write makes a revision anyway: the rollout has ended.
        annotations = _withdrawn_annotations(view, stable.version if stable else None, uri)
        if stable is not None and stable.storage_uri == uri:
            annotations[ANN_STABLE_VERSION_CHECKED] = "true"  # the engine's version for exactly this URI
        # The copy of stable reports stable's version, or none when it is not known (a first rollout): never
        # the rejected candidate's, which the URL still names.
        return _knative_body(self.client, view, uri=uri, annotations=annotations, canary_percent=0,
                             logger_url=_relabelled(view.logger_url, annotations[ANN_VERSION]))

    # -- Standard details --

    def _standard_stage(self, view: StandardView, candidate: CandidateModel, stable_hint: str | None) -> Obj:
        if view.foreign:
            raise TargetStateError(f"{self.target} already has canaries ModelRollout did not create")
        stable_uri = view.predictor[view.key].get("storageUri")
        _check_stable_uri(self.target, stable_uri, candidate)
        stable_name = view.predictor.get("name") or ""
        name = _canary_predictor_name(view.obj["metadata"]["name"], candidate.version, stable_name)
        stable_version = _stable_record(_version_for(view.stable_annotations, stable_uri, "spec.predictor")[0],
                                        stable_hint, stable_uri, candidate)
        canary_predictor = copy.deepcopy(view.predictor)
        canary_predictor.pop("canaryTrafficPercent", None)
        canary_predictor["name"] = name
        canary_predictor[view.key]["storageUri"] = candidate.storage_uri
        if logger_url := _logger_url(canary_predictor):
            canary_predictor["logger"]["url"] = logger_url_for(logger_url, candidate.version)
        # The canary schema requires the container name that KServe defaults on spec.predictor.
        canary_predictor[view.key].setdefault("name", KSERVE_CONTAINER)
        canary_predictor["annotations"] = {
            **{k: v for k, v in view.stable_annotations.items() if k not in OWNED_ANNOTATIONS},
            ANN_VERSION: candidate.version, ANN_VERSION_URI: candidate.storage_uri,
            ANN_STABLE_URI: stable_uri or "", ANN_STABLE_PREDICTOR: stable_name,
            **({ANN_STABLE_VERSION: stable_version} if stable_version else {})}
        entry = {"trafficPercent": 0, "predictor": canary_predictor}
        return _standard_body(self.client, view, **_stable_owned(view), canary=[entry])

    def _standard_promote(self, view: StandardView) -> Obj | None:
        if view.ours is None:
            if ANN_VERSION in view.stable_annotations:
                return None  # promoted already
            raise TargetStateError(f"cannot promote: no candidate is staged on {self.target}")
        _refuse_foreign(self.target, view, "the candidate is not promoted")
        promoted = view.ours["predictor"]
        annotations = {k: v for k, v in (promoted.get("annotations") or {}).items() if k in OWNED_ANNOTATIONS}
        return _standard_body(self.client, view, predictor_name=promoted["name"],
                              uri=promoted[view.key]["storageUri"], annotations=annotations, canary=[],
                              logger_url=_logger_url(promoted))

    def _standard_rollback(self, view: StandardView) -> Obj | None:
        if view.ours is None:
            return None  # nothing staged: stable has all traffic
        ann = view.canary_annotations
        if _hand_promoted(view) and ann.get(ANN_STABLE_URI):
            # The candidate written into spec.predictor by hand: dropping the canary alone would leave it serving
            # all traffic. Stable as recorded at staging goes back (a new Deployment: not instant).
            version = _none_if_empty(ann.get(ANN_STABLE_VERSION))
            return _standard_put_back(self.client, view, uri=ann[ANN_STABLE_URI], version=version,
                                      name=ann.get(ANN_STABLE_PREDICTOR, view.predictor.get("name")))
        owned = _stable_owned(view)
        if _number_clash(view, _version_for(view.stable_annotations, owned["uri"], "spec.predictor")[0],
                         owned["uri"]):
            # spec.predictor records another model's version of the candidate's number: once the canary is gone
            # it would read as the candidate serving as stable. Forgotten (the one write that restarts its pods).
            owned["annotations"] = {k: v for k, v in owned["annotations"].items()
                                    if k not in (ANN_VERSION, ANN_VERSION_URI)}
        return _standard_body(self.client, view, **owned, canary=[])  # stable was never touched

    def _standard_restore(self, view: StandardView, stable: CandidateModel) -> Obj | None:
        owned = _stable_owned(view)
        ann = view.stable_annotations
        if owned["uri"] == stable.storage_uri:
            return self._standard_rollback(view)
        # The previous predictor back under its old name when this is the model it had (recorded by our
        # promotion, or on the canary a hand promotion left); a new Deployment must become ready before it
        # takes the traffic.
        recorded = next((a for a in (ann, view.canary_annotations) if a.get(ANN_STABLE_URI) == stable.storage_uri),
                        None)
        name = recorded.get(ANN_STABLE_PREDICTOR) if recorded is not None else owned["predictor_name"]
        return _standard_put_back(self.client, view, uri=stable.storage_uri, version=stable.version, name=name)
