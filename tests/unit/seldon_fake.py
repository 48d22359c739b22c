"""An in-memory stand-in for the Seldon routers' object client (controller/traffic/kube.py ObjectClient)."""

from __future__ import annotations

import copy
from typing import Any

from controller.traffic.base import ConflictError, TargetNotFound
from controller.traffic.kube import ObjectClient, Resource

Obj = dict[str, Any]


class FakeObjectClient(ObjectClient):
    """One object in memory; apply merges the spec's top-level fields and replaces the annotations it owns, as
    server-side apply does for one field manager, and refuses a stale resourceVersion with a 409."""

    def __init__(self, resource: Resource, obj: Obj, name: str = "nsfw") -> None:
        self.resource, self.namespace, self.name, self.field_manager = resource, "ns", name, "test"
        metadata = obj.setdefault("metadata", {})
        metadata.update({"name": name, "namespace": self.namespace})
        metadata.setdefault("resourceVersion", "1")
        metadata.setdefault("generation", 1)
        self.obj = obj
        self.owned: set[str] = set()
        self.applies: list[Obj] = []

    def get(self) -> Obj:
        if self.obj is None:
            raise TargetNotFound("not found")
        return copy.deepcopy(self.obj)

    def apply(self, body: Obj, force: bool = True) -> Obj:
        body = copy.deepcopy(body)
        self.applies.append(body)
        metadata = self.obj["metadata"]
        if body["metadata"].get("resourceVersion") not in (None, metadata["resourceVersion"]):
            raise ConflictError("409")
        annotations = metadata.setdefault("annotations", {})
        new = body["metadata"].get("annotations") or {}
        for key in self.owned - set(new):  # server-side apply drops what the manager no longer sends
            annotations.pop(key, None)
        annotations.update(new)
        self.owned = set(new)
        self.obj.setdefault("spec", {}).update(body.get("spec") or {})
        metadata["resourceVersion"] = str(int(metadata["resourceVersion"]) + 1)
        return copy.deepcopy(self.obj)
