"""The rollback a failing verdict decides is stored by a real kube-apiserver and etcd at the worst evidence the spec
allows (review s27prom, finding 1): 20 metrics with 4096-character templates, a bake against 999 days of history.

Kept whole, that status was several MiB: etcd (1.5 MiB by default) or the API server (3 MiB) refused it, and with it
the rollback. The status is the real engine's (tests/unit/test_evidence_size_s27.py), written with the operator's own
RolloutStore.apply_status on a rollout created with the same spec (the CRD admits it).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.operator.kubeapi import GROUP, KIND, PLURAL, VERSION, ObjectRef, RolloutStore, load_client_config
from tests.unit.test_engine_support import World
from tests.unit.test_evidence_size_s27 import STATUS_BYTES, worst_bake, worst_canary

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("decide", [lambda: worst_bake(999), worst_canary], ids=["bake-999d", "canary"])
def test_the_worst_failing_verdicts_rollback_is_stored(kubeconfig: Path, namespace: str,
                                                        decide: Callable[[], World]) -> None:
    world = decide()
    status = world.status.to_dict()
    assert status["phase"] == "RolledBack"
    store = RolloutStore(load_client_config(str(kubeconfig), bounded=True))
    name = f"evsize-{uuid.uuid4().hex[:6]}"
    created = store.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL,
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": name, "namespace": namespace},
         "spec": world.spec})
    store.apply_status(created, status)  # raises StatusWriteRefused when the API server or etcd refuses it
    stored = store.get(ObjectRef(namespace, name))
    assert stored is not None
    assert stored["status"]["phase"] == "RolledBack"
    assert stored["status"]["rollback"] == status["rollback"]
    assert stored["status"]["analysis"]["metrics"] == status["analysis"]["metrics"]
    assert len(json.dumps(status)) <= STATUS_BYTES  # room to spare under etcd's limit: the worst case at a third
