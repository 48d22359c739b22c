"""The on-call and failure lifecycle on both Seldon targets: the operator SIGKILLed at every step boundary
(but the abort's, whose time to recover is bounded), abort, retry, promote past a `pause: {}`, and a new
candidate applied mid-rollout, against the real API server with the upstream Seldon CRDs, real MLflow and real
model servers (Seldon's controllers played by stand-ins)."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch

from controller.devstack.scenario import STABLE_ALIAS, Scenario
from controller.operator.kubeapi import GROUP, PLURAL, VERSION, load_client_config
from controller.registry import MlflowRegistry
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
)
from tests.integration.operator_process import OperatorProcess, get_rollout, send_command
from tests.integration.test_rollout_kserve import apply, start_operator
from tests.integration.test_rollout_kserve_lifecycle import RecordingProxy
from tests.integration.test_rollout_seldon import TARGETS, assert_serving, events, settled, target_object

pytestmark = pytest.mark.integration
STEPS = [{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}, {"pause": {"duration": "1s"}}]
# Spec writes the flow below needs, from the routers in controller/traffic/seldon.py: stage, set_weight and
# rollback each rewrite the predictor list (v1) or the candidates (v2) once, promote once. Annotations are
# metadata and the stand-ins write status only (a status subresource), so neither moves metadata.generation,
# nor does a resend after a kill (the same spec again). Attempt 1: stage, 10%; abort: rollback; retry: stage,
# 10%; newer candidate: rollback, stage, 10%; promote: 50%, promote. 10 writes after the creation (generation 1).
SPEC_WRITES = 10


def status_of(kubeconfig: Path, scenario: Scenario) -> dict[str, Any]:
    return get_rollout(kubeconfig, scenario.namespace, scenario.model_name).get("status") or {}


def paused_on_promote(attempt: int) -> Any:
    return lambda s: s.get("phase") == "Paused" and s.get("currentStep") == 1 and s.get("attempt") == attempt


class StatusWatch:
    """Every status the API server stores for one rollout, in order (a watch, so no write is missed)."""

    def __init__(self, kubeconfig: Path, scenario: Scenario) -> None:
        self.custom = client.CustomObjectsApi(load_client_config(str(kubeconfig)))
        self.scenario = scenario
        self.statuses: queue.Queue[dict[str, Any]] = queue.Queue()
        self.watch = watch.Watch()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        with contextlib.suppress(Exception):  # ended by stop(), or by the API server going away at teardown
            for event in self.watch.stream(self.custom.list_namespaced_custom_object, GROUP, VERSION,
                                           self.scenario.namespace, PLURAL,
                                           field_selector=f"metadata.name={self.scenario.model_name}"):
                self.statuses.put(event["object"].get("status") or {})

    def next(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self.statuses.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop(self) -> None:
        self.watch.stop()


def drive(kubeconfig: Path, tmp_path: Path, scenario: Scenario, operator: OperatorProcess, until: Any,
          kill_at_boundaries: bool = False, timeout: float = 150) -> tuple[OperatorProcess, dict[str, Any], int]:
    """Wait for `until`; optionally SIGKILL and restart the operator at every status write that changes the
    phase, the step or an action's state (seen through a watch, so even fast steps are caught)."""
    deadline = time.monotonic() + timeout
    seen: set[tuple[Any, ...]] = set()
    kills = 0
    statuses = StatusWatch(kubeconfig, scenario)
    status = status_of(kubeconfig, scenario)
    try:
        while time.monotonic() < deadline:
            if until(status):
                return operator, status, kills
            boundary = (status.get("phase"), status.get("currentStep"), status.get("attempt"),
                        tuple((a["id"], a["state"]) for a in status.get("actions") or []))
            if kill_at_boundaries and status and boundary not in seen:
                seen.add(boundary)
                operator.kill()
                kills += 1
                operator = start_operator(kubeconfig, tmp_path)
            status = statuses.next(timeout=1.0) or status_of(kubeconfig, scenario)
    finally:
        statuses.stop()
    raise AssertionError(f"timed out; last status: {status}\n{operator.log.read_text()[-3000:]}")


@pytest.mark.parametrize("target_kind", TARGETS)
def test_restarts_abort_retry_new_candidate_and_promote(target_kind: str, kubeconfig: Path, tmp_path: Path,
                                                        seldon_scenario: Any, mlflow_server: Any) -> None:
    scenario: Scenario = seldon_scenario(target_kind, "clean")
    stable, candidate = scenario.stable_version, scenario.candidate_version
    registry = MlflowRegistry(mlflow_server.url)
    # The operator reaches MLflow through the proxy, which records every alias move and tag write.
    proxy = RecordingProxy(mlflow_server.url).start()
    via_proxy = {"trackingUri": proxy.url}
    operator = start_operator(kubeconfig, tmp_path)
    try:
        apply(kubeconfig, scenario.rollout(steps=STEPS, registry=via_proxy))
        operator, status, kills = drive(kubeconfig, tmp_path, scenario, operator, paused_on_promote(1),
                                        kill_at_boundaries=True)
        assert kills >= 3, kills  # each status change before the pause: a SIGKILL and a fresh operator
        assert status["canaryWeight"] == 10
        # Every action confirmed and one event per step; the target's generation and the proxy's record (at the
        # end) show that no effect was repeated across the restarts.
        assert all(a["state"] == "Confirmed" for a in status["actions"]), status
        assert Counter(events(status))["WeightChanged"] == 1 and Counter(events(status))["GatePassed"] == 1

        abort_id = uuid.uuid4().hex
        send_command(kubeconfig, scenario.namespace, scenario.model_name, "abort", "alice", abort_id)
        # The abort alone runs without kills: its time to recover is bounded (a kill between the decision and the
        # traffic move would put an operator start inside it). Every other part of the flow is killed.
        operator, status, _ = drive(kubeconfig, tmp_path, scenario, operator, lambda s: s.get("phase") == "RolledBack")
        assert status["rollback"]["actor"] == "alice" and status["rollback"]["timeToRecoverSeconds"] < 2
        settled(kubeconfig, scenario)
        assert_serving(kubeconfig, scenario, scenario.stable_version)
        assert registry.verify_alias(scenario.model_name, STABLE_ALIAS) == scenario.stable_version
        assert registry.resolve(scenario.model_name, version=scenario.candidate_version).tags[
            "modelrollout.rejected"] == "true"

        send_command(kubeconfig, scenario.namespace, scenario.model_name, "retry", "bob", uuid.uuid4().hex)
        operator, status, _ = drive(kubeconfig, tmp_path, scenario, operator, paused_on_promote(2),
                                    kill_at_boundaries=True)

        # A newer candidate applied while attempt 2 waits at 10%: rolled back, started over with it.
        newer = scenario.add_version("clean")
        manifest = scenario.rollout(steps=STEPS, registry=via_proxy)
        manifest["spec"]["model"]["version"] = newer
        apply(kubeconfig, manifest)
        def on_newer(s: dict[str, Any]) -> bool:
            return paused_on_promote(s.get("attempt") or 0)(s) and (s.get("candidate") or {}).get("version") == newer

        operator, status, _ = drive(kubeconfig, tmp_path, scenario, operator, on_newer, kill_at_boundaries=True)
        assert {"SpecChanged", "NewCandidate", "RolledBackForNewCandidate"} <= set(events(status))

        promote_id = uuid.uuid4().hex
        send_command(kubeconfig, scenario.namespace, scenario.model_name, "promote", "carol", promote_id)
        operator, status, _ = drive(kubeconfig, tmp_path, scenario, operator, lambda s: s.get("phase") == "Succeeded",
                                    kill_at_boundaries=True)
    finally:
        operator.stop()
        proxy.stop()
    applied = [h for h in status["history"] if h.get("commandId") in (abort_id, promote_id)]
    assert [(h["event"], h["actor"]) for h in applied if h["event"] == "CommandApplied"] == [
        ("CommandApplied", "alice"), ("CommandApplied", "carol")]
    settled(kubeconfig, scenario)
    assert_serving(kubeconfig, scenario, newer)
    assert registry.verify_alias(scenario.model_name, STABLE_ALIAS) == newer

    # The target took each change once (see SPEC_WRITES).
    generation = target_object(kubeconfig, scenario)["metadata"]["generation"]
    assert generation == 1 + SPEC_WRITES, generation
    # The registry: no alias touched before the promotion (both rollbacks found @stable where it was), then
    # the stable alias moved once, to the newer version, its previous version recorded beside it.
    alias_writes = [(method, payload) for method, path, payload in proxy.writes
                    if path.endswith("registered-models/alias")]
    assert {(method, w["alias"], w.get("version")) for method, w in alias_writes} == {
        ("POST", registry.previous_alias(STABLE_ALIAS), stable), ("POST", STABLE_ALIAS, newer)}, alias_writes
    assert len([w for _, w in alias_writes if w["alias"] == STABLE_ALIAS]) <= 2, alias_writes  # a resend at most
    # Tags: attempt 1's rejection on the candidate (attempt 2 was superseded, not judged) and the promotion's
    # record on the newer version; each written with one value only (a resend writes the same again, a
    # second rejection or promotion would write its own time), and the rejected flag, written last and
    # checked before a resend, exactly once.
    tags = proxy.recorded("model-versions/set-tag")
    values: dict[tuple[str, str], set[str]] = {}
    # The gate's evidence links (modelrollout.gate.*) are each gate run's own: left to the evidence tests.
    for tag in (t for t in tags if not t["key"].startswith("modelrollout.gate.")):
        values.setdefault((tag["version"], tag["key"]), set()).add(tag["value"])
    rejected = {REJECTED_REASON_TAG, REJECTED_EVIDENCE_TAG, REJECTED_ROLLOUT_TAG, REJECTED_BY_TAG, REJECTED_TIME_TAG,
                REJECTED_TAG}
    promoted = {PREVIOUS_VERSION_TAG, PROMOTED_ROLLOUT_TAG, PROMOTED_TIME_TAG}
    assert set(values) == {(candidate, key) for key in rejected} | {(newer, key) for key in promoted}, tags
    assert all(len(v) == 1 for v in values.values()), values
    assert values[(newer, PREVIOUS_VERSION_TAG)] == {stable}, values
    assert len([t for t in tags if t["key"] == REJECTED_TAG]) == 1, tags
    print(f"\n{target_kind}: generation {generation}; {len(alias_writes)} alias writes, {len(tags)} tag writes")
