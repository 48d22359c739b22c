"""A character past U+FFFF (an emoji class label or model name) in a server-side apply: the Kubernetes client's own
json.dumps writes it as a surrogate pair escape, which the API server's YAML reader refuses, so one emoji made every
status write of that rollout fail as "unreadable" (review s29crd). The operator's RolloutStore and the routers'
ObjectClient against the real kube-apiserver."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from controller.operator.kubeapi import (
    FIELD_MANAGER,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    ObjectRef,
    RolloutStore,
    load_client_config,
)
from controller.traffic.kube import ObjectClient, Resource

pytestmark = pytest.mark.integration
SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nsfw-classifier.yaml"
EMOJI = "nsfw 😀 \u2028 é"


def test_status_and_a_routers_apply_with_an_emoji_are_stored(kubeconfig: Path, namespace: str) -> None:
    api = load_client_config(str(kubeconfig), bounded=True)
    store = RolloutStore(api)
    manifest = yaml.safe_load(SAMPLE.read_text())
    name = f"emoji-{uuid.uuid4().hex[:6]}"
    manifest["metadata"] = {"name": name, "namespace": namespace}
    created = store.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    status = {"observedGeneration": 1, "phase": "Pending", "message": f"class {EMOJI} failed",
              "history": [{"time": "2026-01-05T09:00:00Z", "event": "Resolved", "detail": EMOJI, "seq": 1}]}
    stored = store.apply_status(created, status)
    assert stored["status"]["message"] == f"class {EMOJI} failed"
    assert stored["status"]["history"][0]["detail"] == EMOJI
    held = store.apply_finalizer(stored, hold=True)
    assert held is not None and held["metadata"]["finalizers"]

    # The routers' apply (here on the rollout itself: any custom object goes through the same path).
    router = ObjectClient(api, Resource(GROUP, VERSION, PLURAL, KIND), namespace, name, FIELD_MANAGER)
    applied = router.apply({"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {
        "name": name, "namespace": namespace, "annotations": {"example.com/class": EMOJI}}})
    assert applied["metadata"]["annotations"]["example.com/class"] == EMOJI
    again = store.get(ObjectRef(namespace, name))
    assert again is not None and again["status"]["message"] == f"class {EMOJI} failed"
    # A lone surrogate (Python's json decodes a server's "\ud83d" to one) is stored as U+FFFD (review s29r6).
    lone = store.apply_status(again, {**status, "message": "backend \ud83d unavailable"})
    assert lone["status"]["message"] == "backend \ufffd unavailable"
