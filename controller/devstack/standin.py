"""The watch loop the serving-system stand-ins share: list, then watch; reconcile each object that changes,
and revisit the ones waiting on time (`_pending`). Subclasses implement `reconcile(namespace, name)`."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from controller.operator.kubeapi import APPLY_PATCH

log = logging.getLogger(__name__)

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str


class WatchingStandIn:
    """Run with `start()` / `stop()` (or as a context manager); `reconcile()` does one pass synchronously."""

    kind: Kind
    thread_name = "standin"

    def __init__(self, api_client: client.ApiClient, namespace: str | None, field_manager: str,
                 watch_timeout: int) -> None:
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.namespace = namespace
        self.field_manager = field_manager
        self.watch_timeout = watch_timeout
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: set[tuple[str, str]] = set()

    def start(self) -> Any:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.watch_timeout + 10)
            self._thread = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reconcile(self, namespace: str, name: str) -> Obj | None:
        raise NotImplementedError

    def _list(self, **kwargs: Any) -> Obj:
        k = self.kind
        if self.namespace:
            return self.custom.list_namespaced_custom_object(k.group, k.version, self.namespace, k.plural, **kwargs)
        return self.custom.list_cluster_custom_object(k.group, k.version, k.plural, **kwargs)

    def _get(self, namespace: str, name: str) -> Obj | None:
        k = self.kind
        try:
            obj: Obj = self.custom.get_namespaced_custom_object(k.group, k.version, namespace, k.plural, name)
        except ApiException as exc:
            if exc.status == 404:
                self._pending.discard((namespace, name))
                return None
            raise
        return None if obj["metadata"].get("deletionTimestamp") else obj

    def _write_status(self, obj: Obj, status: Obj) -> None:
        """The whole status, as the serving controllers' Status().Update does: what this manager wrote
        before and does not write now is removed."""
        k, meta = self.kind, obj["metadata"]
        body = {"apiVersion": f"{k.group}/{k.version}", "kind": k.kind,
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]}, "status": status}
        self.custom.patch_namespaced_custom_object_status(
            k.group, k.version, meta["namespace"], k.plural, meta["name"], body, field_manager=self.field_manager,
            force=True, _content_type=APPLY_PATCH)

    def _run(self) -> None:
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    listing = self._list()
                    for item in listing.get("items", []):
                        self._reconcile_quietly(item["metadata"]["namespace"], item["metadata"]["name"])
                    resource_version = listing["metadata"]["resourceVersion"]
                stream = watch.Watch().stream(self._list, resource_version=resource_version,
                                              timeout_seconds=self.watch_timeout)
                for event in stream:
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        resource_version = None  # e.g. 410 Gone: list again
                        break
                    resource_version = obj["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._reconcile_quietly(obj["metadata"]["namespace"], obj["metadata"]["name"])
                    if self._stop.is_set():
                        break
                for namespace, name in list(self._pending):
                    self._reconcile_quietly(namespace, name)
            except ApiException as exc:
                if exc.status != 410:
                    log.warning("%s stand-in watch failed: HTTP %s", self.kind.kind, exc.status)
                    self._stop.wait(0.5)
                resource_version = None
            except Exception:  # the stand-in must outlive one bad object or a dropped connection
                log.exception("%s stand-in loop failed; listing again", self.kind.kind)
                self._stop.wait(0.5)
                resource_version = None

    def _reconcile_quietly(self, namespace: str, name: str) -> None:
        try:
            self.reconcile(namespace, name)
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("%s stand-in could not reconcile %s/%s: HTTP %s", self.kind.kind, namespace, name,
                            exc.status)
