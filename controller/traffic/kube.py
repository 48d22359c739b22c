"""One custom object in one namespace: read it, server-side apply a partial object to it, map errors."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.operator.kubeapi import APPLY_PATCH, FIELD_MANAGER, api_message
from controller.traffic.base import (
    AccessDenied,
    ConflictError,
    PatchRejected,
    TargetNotFound,
    TargetUnavailable,
    TrafficError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Obj = dict[str, Any]

CONFLICT_ATTEMPTS = 5


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


INFERENCE_SERVICE = Resource("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService")
SELDON_DEPLOYMENT = Resource("machinelearning.seldon.io", "v1", "seldondeployments", "SeldonDeployment")
SELDON_EXPERIMENT = Resource("mlops.seldon.io", "v1alpha1", "experiments", "Experiment")


class ObjectClient:
    """Bound to one object: every call names this namespace, so a router can never touch another one."""

    def __init__(self, api_client: client.ApiClient, resource: Resource, namespace: str, name: str,
                 field_manager: str = FIELD_MANAGER) -> None:
        if not namespace or not name:
            raise ValueError("a router needs both a namespace and an object name")
        self.custom = client.CustomObjectsApi(api_client)
        self.resource = resource
        self.namespace = namespace
        self.name = name
        self.field_manager = field_manager

    @property
    def description(self) -> str:
        return f"{self.resource.kind} {self.namespace}/{self.name}"

    def get(self) -> Obj:
        r = self.resource
        try:
            obj: Obj = self.custom.get_namespaced_custom_object(r.group, r.version, self.namespace, r.plural,
                                                                self.name)
        except ApiException as exc:
            raise self._error(exc, "read") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TargetUnavailable(f"cannot read {self.description}: {exc}") from exc
        return obj

    def get_or_none(self) -> Obj | None:
        try:
            return self.get()
        except TargetNotFound:
            return None

    def skeleton(self, resource_version: str | None = None) -> Obj:
        """The minimal partial object an apply starts from."""
        metadata: Obj = {"name": self.name, "namespace": self.namespace}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return {"apiVersion": self.resource.api_version, "kind": self.resource.kind, "metadata": metadata}

    def apply(self, body: Obj, force: bool = True) -> Obj:
        """Server-side apply `body` (a partial object) as this field manager.

        force=True takes ownership of fields another manager set to a different value. The routers
        use it for the fields they exist to move (storage URI, traffic percentages, the canary lists):
        those are theirs to own during a rollout, exactly as Flagger or Argo Rollouts own a Deployment's
        traffic. When body carries metadata.resourceVersion the write is refused (409) if the object
        changed since it was read, which protects read-modify-write of atomic lists.
        """
        body = copy.deepcopy(body)
        body["metadata"]["namespace"] = self.namespace  # never another namespace, whatever body says
        body["metadata"]["name"] = self.name
        return self._patch(body, APPLY_PATCH, "apply to", force=force)

    def merge_patch(self, patch: Obj) -> Obj:
        """A JSON merge patch (an Update by this field manager): a null removes a field whoever owns it, which an
        apply leaving the field out cannot do while another manager owns it. Carry metadata.resourceVersion in
        `patch` to be refused (409) if the object changed since it was read."""
        return self._patch(patch, "application/merge-patch+json", "patch")

    def _patch(self, body: Obj, content_type: str, verb: str, **kwargs: Any) -> Obj:
        r = self.resource
        try:
            obj: Obj = self.custom.patch_namespaced_custom_object(
                r.group, r.version, self.namespace, r.plural, self.name, body,
                field_manager=self.field_manager, _content_type=content_type, **kwargs)
        except ApiException as exc:
            raise self._error(exc, verb) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TargetUnavailable(f"cannot reach the API server to {verb} {self.description}: {exc}") from exc
        return obj

    def _error(self, exc: ApiException, verb: str) -> TrafficError:
        message = api_message(exc, self.custom.api_client.configuration)  # it reaches status and Events
        status = exc.status or 0
        if status == 404:
            return TargetNotFound(f"{self.description} not found")
        if status == 409:
            return ConflictError(f"conflict writing {self.description}: {message}")
        # Server-side apply reports a value of the wrong type as a 500 "failed to create typed patch
        # object": it is as final as a 422, not a passing fault.
        if status in (400, 422) or (status == 500 and "failed to create typed patch object" in message):
            return PatchRejected(f"the API server refused the change to {self.description}: {message}", message)
        if status in (401, 403):
            return AccessDenied(f"not allowed to {verb} {self.description}: {message}")
        if status == 0 or status >= 500 or status == 429:
            return TargetUnavailable(f"could not {verb} {self.description} (HTTP {status}): {message}")
        return TrafficError(f"could not {verb} {self.description} (HTTP {status}): {message}")


def retry_on_conflict(operation: Callable[[], T], what: str, attempts: int = CONFLICT_ATTEMPTS) -> T:
    """Run a read-decide-apply operation again on fresh state when its apply hit a 409."""
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except ConflictError:
            if attempt == attempts:
                raise
            log.info("conflict on %s, retrying on fresh state (%d/%d)", what, attempt, attempts)
    raise AssertionError("unreachable")


def annotations_of(obj: Obj) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def condition(status: Obj, kind: str) -> Obj | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def condition_true(status: Obj, kind: str) -> bool | None:
    """True / False, or None when the condition is absent or Unknown."""
    found = condition(status, kind)
    if found is None or found.get("status") not in ("True", "False"):
        return None
    return found["status"] == "True"


def observed_generation(obj: Obj) -> tuple[int, int | None]:
    generation = int((obj.get("metadata") or {}).get("generation") or 0)
    observed = (obj.get("status") or {}).get("observedGeneration")
    return generation, None if observed is None else int(observed)
