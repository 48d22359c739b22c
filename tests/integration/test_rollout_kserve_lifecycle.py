"""The rest of a rollout's life on the KServe target, on the local stack (real API server, real MLflow,
real model servers, the KServe stand-in, the operator as a real process):

- on-call commands through the `modelrollout.io/command` annotation: abort, retry, promote past a
  `pause: {}`, promote --full, rollback after promotion; each command id applied once;
- the operator SIGKILLed at every step boundary: same end state, no action's effect repeated;
- a new candidate applied mid-rollout: the current one is rolled back and the rollout starts over;
- faults: target missing, a candidate revision that never becomes ready, MLflow unreachable, a version
  that does not exist;
- time to recover (failing decision -> target at 0% canary and stable alias verified), from the
  timestamps the operator writes in status.rollback and measured from outside.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.api.status import HISTORY_LIMIT
from controller.devstack.controlplane import ControlPlane
from controller.devstack.kserve_standin import REVISIONS_KEY, KServeStandIn
from controller.devstack.mlflow_server import MlflowServer
from controller.devstack.model_server import ModelServerProcess, demo_models, register_linear_model
from controller.devstack.processes import LOOPBACK, free_port
from controller.devstack.scenario import STABLE_ALIAS, STORAGE_URI_TEMPLATE, Scenario
from controller.operator.events import unposted
from controller.operator.kubeapi import FIELD_MANAGER, FINALIZER, load_client_config
from controller.registry import MlflowRegistry
from tests.conftest import run_kubectl
from tests.integration.operator_process import OperatorProcess, send_command

pytestmark = pytest.mark.integration

TERMINAL = ("Succeeded", "RolledBack", "Failed")
ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")
MRO = ("modelrollout.io", "v1alpha1", "modelrollouts")
MTTR_TARGET_SECONDS = 2.0


# --- a recording proxy in front of MLflow or a model server ----------------------------------------------


class RecordingProxy:
    """Forwards the operator's registry calls to MLflow and records every write (alias moves, tags).

    Bound to a port chosen up front, so a rollout can name it before it listens (MLflow unreachable).
    While `open` is cleared, requests wait in the proxy (a slow upstream); `waiting` counts them.
    """

    def __init__(self, upstream: str, port: int | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = port or free_port()
        self.writes: list[tuple[str, str, dict[str, Any]]] = []
        self.open = threading.Event()
        self.open.set()
        self.waiting = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> RecordingProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")}
                with proxy._lock:
                    proxy.waiting += 1
                proxy.open.wait(timeout=120)
                with proxy._lock:
                    proxy.waiting -= 1
                try:
                    answer = requests.request(self.command, proxy.upstream + self.path, data=body,
                                              headers=headers, timeout=30)
                except requests.RequestException:
                    self.send_error(502)
                    return
                if self.command != "GET":
                    try:
                        payload = json.loads(body or b"{}")
                    except ValueError:
                        payload = {}
                    with proxy._lock:
                        proxy.writes.append((self.command, self.path.split("?")[0], payload))
                try:
                    self.send_response(answer.status_code)
                    self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
                    self.send_header("Content-Length", str(len(answer.content)))
                    self.end_headers()
                    self.wfile.write(answer.content)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the operator was killed while waiting for the answer

            # PUT: the gate's evidence uploads its report (a 501 here left every gate's evidence run unfinished).
            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        threading.Thread(target=self._server.serve_forever, name="mlflow-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def recorded(self, endpoint: str) -> list[dict[str, Any]]:
        with self._lock:
            return [payload for _, path, payload in self.writes if path.endswith(endpoint)]


def gate_evidence_runs(mlflow_url: str, model: str) -> list[dict[str, Any]]:
    """Every gate evidence run for the model in MLflow: run id, status, request id and outcome tags."""
    experiment = requests.get(f"{mlflow_url}/api/2.0/mlflow/experiments/get-by-name",
                              params={"experiment_name": "modelrollout-golden-gate"}, timeout=10)
    experiment.raise_for_status()
    found = requests.post(f"{mlflow_url}/api/2.0/mlflow/runs/search", json={
        "experiment_ids": [experiment.json()["experiment"]["experiment_id"]], "max_results": 1000,
        "filter": f"tags.`modelrollout.gate.model` = '{model}'"}, timeout=10)
    found.raise_for_status()
    runs = []
    for run in found.json().get("runs") or []:
        tags = {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}
        runs.append({"run_id": run["info"]["run_id"], "status": run["info"]["status"],
                     "request_id": tags.get("modelrollout.gate.request_id", ""),
                     "outcome": tags.get("modelrollout.gate.outcome")})
    return runs


# --- the rig: one namespace, one operator, fast reads through the Python client --------------------------


@dataclass
class Rig:
    kubeconfig: Path
    namespace: str
    api: client.ApiClient
    tmp_path: Path
    operators: list[OperatorProcess] = field(default_factory=list)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def log(self) -> Path:
        return self.tmp_path / "operator.log"

    def start_operator(self, storage_uri_template: str = STORAGE_URI_TEMPLATE) -> OperatorProcess:
        operator = OperatorProcess(self.kubeconfig, self.log,
                                   extra_env={"MODELROLLOUT_STORAGE_URI_TEMPLATE": storage_uri_template}).start()
        self.operators.append(operator)
        return operator

    def stop_operators(self) -> None:
        for operator in self.operators:
            operator.stop()

    def apply(self, manifest: dict[str, Any]) -> None:
        result = run_kubectl(self.kubeconfig, "apply", "-f", "-", input_text=json.dumps(manifest))
        assert result.returncode == 0, result.stderr

    def rollout(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(MRO[0], MRO[1], self.namespace, MRO[2], name)
        return obj

    def status(self, name: str) -> dict[str, Any]:
        return self.rollout(name).get("status") or {}

    def posted_events(self, name: str) -> Counter[tuple[str, str]]:
        """(reason, message) of each Kubernetes Event about the rollout."""
        found = client.CoreV1Api(self.api).list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}")
        return Counter((e.reason, e.message) for e in found.items)

    def isvc(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(ISVC[0], ISVC[1], self.namespace, ISVC[2],
                                                                       name)
        return obj

    def wait(self, name: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 120.0,
             what: str = "") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                status = self.status(name)
            except ApiException:
                status = {}
            if predicate(status):
                return status
            time.sleep(0.1)
        tail = self.log.read_text()[-3000:] if self.log.exists() else ""
        raise AssertionError(f"timed out waiting for {what or 'the rollout'}; last status: "
                             f"{json.dumps(status, indent=1)[-6000:]}\n{tail}")

    def wait_isvc(self, name: str, predicate: Callable[[dict[str, Any]], bool],
                  timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] = {}
        while time.monotonic() < deadline:
            obj = self.isvc(name)
            if predicate(obj):
                return obj
            time.sleep(0.1)
        raise AssertionError(f"timed out; InferenceService: {json.dumps(obj, indent=1)[-4000:]}")

    def command(self, name: str, action: str, actor: str, command_id: str, full: bool = False) -> str:
        return send_command(self.kubeconfig, self.namespace, name, action, actor, command_id, full=full)

    def annotate(self, name: str, value: str, poke: str) -> None:
        """Write the command annotation with exactly `value` (and touch another annotation, so the
        operator sees a change and reconciles)."""
        result = run_kubectl(self.kubeconfig, "annotate", "--overwrite", "mro", name, "-n", self.namespace,
                             f"modelrollout.io/command={value}", f"test.modelrollout.io/poke={poke}")
        assert result.returncode == 0, result.stderr


@pytest.fixture
def rig(kubeconfig: Path, namespace: str, control_plane: ControlPlane, tmp_path: Path) -> Iterator[Rig]:
    made = Rig(kubeconfig, namespace, load_client_config(str(control_plane.admin_kubeconfig)), tmp_path)
    try:
        yield made
    finally:
        made.stop_operators()


@pytest.fixture
def scenario_factory(rig: Rig, mlflow_server: MlflowServer) -> Iterator[Callable[..., Scenario]]:
    made: list[Scenario] = []

    def make(candidate_kind: str = "clean", light: bool = False) -> Scenario:
        """light: models in MLflow and the stand-in only (no model servers, no golden data, no InferenceService)."""
        scenario = Scenario(rig.api, mlflow_server.url, rig.namespace, rig.tmp_path / "scenario",
                            model_name=f"nsfw-{uuid.uuid4().hex[:6]}", candidate_kind=candidate_kind)
        made.append(scenario)
        if not light:
            return scenario.setup()
        scenario.workdir.mkdir(parents=True, exist_ok=True)
        scenario.register()
        scenario.standin = KServeStandIn(rig.api, namespace=rig.namespace).start()
        return scenario

    yield make
    for scenario in made:
        scenario.stop()


# --- small readers -----------------------------------------------------------------------------------------


def phase_in(*phases: str) -> Callable[[dict[str, Any]], bool]:
    return lambda status: status.get("phase") in phases


def paused_at(step: int, weight: int, attempt: int | None = None) -> Callable[[dict[str, Any]], bool]:
    def check(status: dict[str, Any]) -> bool:
        return (status.get("phase") == "Paused" and status.get("currentStep") == step
                and status.get("canaryWeight") == weight and (attempt is None or status.get("attempt") == attempt))
    return check


def events(status: dict[str, Any]) -> list[str]:
    return [entry["event"] for entry in status.get("history") or []]


def by_command(status: dict[str, Any], command_id: str) -> list[dict[str, Any]]:
    return [entry for entry in status.get("history") or [] if entry.get("commandId") == command_id]


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def predictor_status(isvc: dict[str, Any]) -> dict[str, Any]:
    return ((isvc.get("status") or {}).get("components") or {}).get("predictor") or {}


def share_off(isvc: dict[str, Any], revision: str) -> int:
    """Percent of traffic that KServe reports going anywhere but `revision`."""
    return sum(int(t.get("percent") or 0) for t in predictor_status(isvc).get("traffic") or []
               if t.get("revisionName") != revision)


def revisions(isvc: dict[str, Any]) -> list[dict[str, Any]]:
    table: list[dict[str, Any]] = json.loads(((isvc.get("status") or {}).get("annotations") or {})
                                             .get(REVISIONS_KEY, "[]"))
    return table


def serves_only(isvc: dict[str, Any], storage_uri: str) -> bool:
    """Every share of traffic goes to revisions that load `storage_uri`, and KServe has caught up."""
    uri_of = {r["name"]: r["storage_uri"] for r in revisions(isvc)}
    traffic = [t for t in predictor_status(isvc).get("traffic") or [] if int(t.get("percent") or 0) > 0]
    synced = (isvc.get("status") or {}).get("observedGeneration") == isvc["metadata"]["generation"]
    return synced and bool(traffic) and all(uri_of.get(t["revisionName"]) == storage_uri for t in traffic)


def make_isvc(rig: Rig, name: str, storage_uri: str) -> None:
    rig.custom.create_namespaced_custom_object(ISVC[0], ISVC[1], rig.namespace, ISVC[2], {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": name, "namespace": rig.namespace},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "mlflow"}, "protocolVersion": "v2",
                                         "storageUri": storage_uri}}}})


def traffic_only_on(isvc: dict[str, Any], storage_uri: str) -> bool:
    """Every share of traffic KServe reports goes to revisions that load `storage_uri` (the revision that
    served before, or, once a rollback's pin is off, its copy)."""
    uri_of = {r["name"]: r["storage_uri"] for r in revisions(isvc)}
    traffic = [t for t in predictor_status(isvc).get("traffic") or [] if int(t.get("percent") or 0) > 0]
    return bool(traffic) and all(uri_of.get(t["revisionName"]) == storage_uri for t in traffic)


def measure_recovery(rig: Rig, isvc_name: str, stable_uri: str, registry: MlflowRegistry, model: str,
                     stable_version: str, started: float, timeout: float = 30.0) -> float:
    """From outside: seconds from `started` until KServe reports all traffic on revisions loading the stable
    model AND the stable alias reads back as the stable version from MLflow."""
    deadline = started + timeout
    while time.monotonic() < deadline:
        if traffic_only_on(rig.isvc(isvc_name), stable_uri) \
                and registry.verify_alias(model, STABLE_ALIAS) == stable_version:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"not recovered within {timeout}s")


def check_status_mttr(rollback: dict[str, Any]) -> float:
    """The operator's own figure, checked against its own timestamps."""
    verdict = parse_time(rollback["verdictAt"])
    recovered = parse_time(rollback["recoveredAt"])
    assert parse_time(rollback["trafficConfirmedAt"]) <= recovered
    assert parse_time(rollback["aliasConfirmedAt"]) <= recovered
    seconds = float(rollback["timeToRecoverSeconds"])
    assert abs(seconds - (recovered - verdict).total_seconds()) < 0.01
    return seconds


def paused_at_ten_percent(rig: Rig, scenario: Scenario, **spec_overrides: Any) -> str:
    """Start the operator and a rollout that waits at 10% for a human; the stable revision's name."""
    name = scenario.model_name
    stable_revision = rig.wait_isvc(name, lambda o: bool(predictor_status(o).get("latestRolledoutRevision")))
    rig.start_operator()
    rig.apply(scenario.rollout(steps=[{"setWeight": 10}, {"pause": {}}], **spec_overrides))
    rig.wait(name, paused_at(1, 10), 180, "the pause step at 10%")
    return str(predictor_status(stable_revision)["latestRolledoutRevision"])


# --- 1. on-call commands -------------------------------------------------------------------------------------


def test_abort_retry_promote_and_rollback_commands(rig: Rig, scenario_factory: Callable[..., Scenario],
                                                    mlflow_server: MlflowServer) -> None:
    scenario = scenario_factory("clean")
    name, stable, candidate = scenario.model_name, scenario.stable_version, scenario.candidate_version
    registry = MlflowRegistry(mlflow_server.url)
    stable_revision_name = paused_at_ten_percent(rig, scenario)
    assert share_off(rig.isvc(name), stable_revision_name) == 10

    # abort at 10%: traffic back on stable, alias kept, candidate tagged rejected, actor recorded.
    started = time.monotonic()
    abort = rig.command(name, "abort", "alice", "abort-1")
    outside = measure_recovery(rig, name, scenario.storage_uri(stable), registry, name, stable, started)
    status = rig.wait(name, phase_in("RolledBack"), 60)
    assert status["message"].startswith("Rolled back: aborted by alice"), status["message"]
    rollback = status["rollback"]
    assert (rollback["cause"], rollback["actor"], rollback["fromWeight"]) == ("Aborted", "alice", 10)
    abort_mttr = check_status_mttr(rollback)
    assert abort_mttr < MTTR_TARGET_SECONDS, rollback
    applied = by_command(status, "abort-1")
    assert [(e["event"], e["actor"]) for e in applied] == [("CommandApplied", "alice")], applied
    assert any(e["event"] == "RollbackStarted" and e["actor"] == "alice" for e in status["history"])
    assert registry.verify_alias(name, STABLE_ALIAS) == stable
    tags = registry.resolve(name, version=candidate).tags
    assert tags["modelrollout.rejected"] == "true" and tags["modelrollout.rejected.by"] == "alice"
    assert "aborted by alice" in tags["modelrollout.rejected.reason"]
    obj = rig.wait_isvc(name, lambda o: o["spec"]["predictor"]["model"]["storageUri"] == scenario.storage_uri(stable)
                        and serves_only(o, scenario.storage_uri(stable)))
    # The pin on the revision that served before comes off once its copy (the same model) is ready.
    rig.wait_isvc(name, lambda o: "canaryTrafficPercent" not in o["spec"]["predictor"] and serves_only(
        o, scenario.storage_uri(stable)))

    # The same command again (same annotation value, another annotation touched): nothing happens.
    history_length = len(status["history"])
    rig.annotate(name, abort, poke="1")
    time.sleep(3)
    status = rig.status(name)
    assert status["phase"] == "RolledBack" and len(status["history"]) == history_length, events(status)

    # retry: a new attempt (new action ids) that stages, gates and steps the candidate again.
    rig.command(name, "retry", "bob", "retry-1")
    status = rig.wait(name, paused_at(1, 10, attempt=2), 180, "the retried attempt's pause step")
    assert [(e["event"], e["actor"]) for e in by_command(status, "retry-1")] == [("CommandApplied", "bob")]
    assert "PreviouslyRejected" in events(status)
    assert all(a["id"].startswith("2:") for a in status["actions"] if a["state"] == "Pending")

    # The old abort written again mid-attempt must not abort it: each id is applied once.
    rig.annotate(name, abort, poke="2")
    time.sleep(3)
    status = rig.status(name)
    assert paused_at(1, 10, attempt=2)(status), status["message"]
    assert len(by_command(status, "abort-1")) == 1

    # promote past the `pause: {}` step.
    rig.command(name, "promote", "carol", "promote-1")
    status = rig.wait(name, phase_in(*TERMINAL), 60)
    assert status["phase"] == "Succeeded", status["message"]
    assert [(e["event"], e["actor"], e["detail"]) for e in by_command(status, "promote-1")] == \
        [("CommandApplied", "carol", "promote: step 2/2 skipped")]
    assert status["promotion"]["previousVersion"] == stable
    assert registry.verify_alias(name, STABLE_ALIAS) == candidate
    obj = rig.wait_isvc(name, lambda o: serves_only(o, scenario.storage_uri(candidate)))
    assert "canaryTrafficPercent" not in obj["spec"]["predictor"]
    promoted_revision = predictor_status(obj)["latestRolledoutRevision"]

    # rollback after success: the previous version back on all traffic and back behind the alias.
    started = time.monotonic()
    rig.command(name, "rollback", "dave", "rollback-1")
    outside_after_promotion = measure_recovery(rig, name, scenario.storage_uri(stable), registry, name, stable,
                                               started)
    status = rig.wait(name, phase_in("RolledBack"), 60)
    rollback = status["rollback"]
    assert (rollback["cause"], rollback["actor"], rollback["afterPromotion"]) == ("RollbackRequested", "dave", True)
    rollback_mttr = check_status_mttr(rollback)
    assert rollback_mttr < MTTR_TARGET_SECONDS, rollback
    assert [(e["event"], e["actor"]) for e in by_command(status, "rollback-1")] == [("CommandApplied", "dave")]
    assert registry.verify_alias(name, STABLE_ALIAS) == stable
    # -previous named stable since the promotion; stable (set by hand) records nothing it replaced: removed.
    assert registry.verify_alias(name, f"{STABLE_ALIAS}-previous") is None
    obj = rig.wait_isvc(name, lambda o: serves_only(o, scenario.storage_uri(stable))
                        and o["spec"]["predictor"]["model"]["storageUri"] == scenario.storage_uri(stable))
    assert share_off(obj, promoted_revision) == 100
    print(f"\nMTTR abort at 10%: status {abort_mttr:.3f}s, outside {outside:.3f}s; "
          f"rollback after promotion: status {rollback_mttr:.3f}s, outside {outside_after_promotion:.3f}s")
    assert "Traceback" not in rig.log.read_text()


def test_a_rollout_deleted_mid_flight_with_revert_on_deletion_rolls_back_before_the_delete_completes(
        rig: Rig, scenario_factory: Callable[..., Scenario], mlflow_server: MlflowServer) -> None:
    scenario = scenario_factory("clean")
    name, stable, candidate = scenario.model_name, scenario.stable_version, scenario.candidate_version
    registry = MlflowRegistry(mlflow_server.url)
    stable_revision_name = paused_at_ten_percent(rig, scenario, rollback={"automatic": True,
                                                                          "revertOnDeletion": True})
    assert share_off(rig.isvc(name), stable_revision_name) == 10
    meta = rig.rollout(name)["metadata"]
    assert meta["finalizers"] == [FINALIZER]
    # The controller's field manager owns that one entry of the object itself, and nothing else of it.
    owned = [m["fieldsV1"] for m in meta["managedFields"] if m["manager"] == FIELD_MANAGER and not m.get("subresource")]
    assert owned == [{"f:metadata": {"f:finalizers": {f'v:"{FINALIZER}"': {}}}}], owned

    deleted = run_kubectl(rig.kubeconfig, "delete", "mro", name, "-n", rig.namespace, "--wait=false")
    assert deleted.returncode == 0, deleted.stderr
    outside = measure_recovery(rig, name, scenario.storage_uri(stable), registry, name, stable, time.monotonic())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            rig.rollout(name)
        except ApiException as exc:
            assert exc.status == 404, exc
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the rollout was not deleted after its rollback\n{rig.log.read_text()[-3000:]}")
    rig.wait_isvc(name, lambda o: o["spec"]["predictor"]["model"]["storageUri"] == scenario.storage_uri(stable)
                  and serves_only(o, scenario.storage_uri(stable)))
    assert registry.verify_alias(name, STABLE_ALIAS) == stable
    assert "modelrollout.rejected" not in registry.resolve(name, version=candidate).tags  # deleted, not judged
    posted = rig.posted_events(name)
    started = [message for (reason, message) in posted if reason == "RollbackStarted"]
    assert len(started) == 1 and started[0].startswith("Deleted: the ModelRollout was deleted"), posted
    assert any(reason == "RolledBack" for reason, _ in posted), posted
    print(f"\nrevert on deletion: traffic and alias back on stable {outside:.3f}s after the delete")
    assert "Traceback" not in rig.log.read_text()


def test_promote_steps_past_a_pause_and_promote_full_skips_the_rest(rig: Rig,
                                                                   scenario_factory: Callable[..., Scenario],
                                                                   mlflow_server: MlflowServer) -> None:
    scenario = scenario_factory("clean")
    name, candidate = scenario.model_name, scenario.candidate_version
    rig.start_operator()
    rig.apply(scenario.rollout(steps=[{"setWeight": 10}, {"pause": {}}, {"setWeight": 30}, {"pause": {}},
                                      {"setWeight": 50}, {"pause": {}}]))
    rig.wait(name, paused_at(1, 10), 180, "the first pause")
    rig.command(name, "promote", "erin", "p-1")
    status = rig.wait(name, paused_at(3, 30), 60, "the second pause")
    assert [(e["event"], e["detail"]) for e in by_command(status, "p-1")] == \
        [("CommandApplied", "promote: step 2/6 skipped")]
    rig.command(name, "promote", "frank", "f-1", full=True)
    status = rig.wait(name, phase_in(*TERMINAL), 60)
    assert status["phase"] == "Succeeded", status["message"]
    assert [(e["event"], e["actor"], e["detail"]) for e in by_command(status, "f-1")] == \
        [("CommandApplied", "frank", "promote --full: skipping the remaining steps")]
    weights = [e["detail"] for e in status["history"] if e["event"] == "WeightChanged"]
    assert len(weights) == 2 and "10%" in weights[0] and "30%" in weights[1], weights
    started = [e for e in status["history"] if e["event"] == "PromotionStarted"]
    assert len(started) == 1 and started[0]["actor"] == "frank"
    assert status["promotion"]["actor"] == "frank"
    assert MlflowRegistry(mlflow_server.url).verify_alias(name, STABLE_ALIAS) == candidate
    obj = rig.wait_isvc(name, lambda o: serves_only(o, scenario.storage_uri(candidate)))
    assert "canaryTrafficPercent" not in obj["spec"]["predictor"]


# --- 2. the operator killed at every step boundary ------------------------------------------------------------


def test_operator_killed_at_every_step_boundary_repeats_nothing(rig: Rig, scenario_factory: Callable[..., Scenario],
                                                                mlflow_server: MlflowServer) -> None:
    scenario = scenario_factory("clean")
    name, stable, candidate = scenario.model_name, scenario.stable_version, scenario.candidate_version
    proxy = RecordingProxy(mlflow_server.url).start()
    try:
        operator = rig.start_operator()
        rig.apply(scenario.rollout(registry={"trackingUri": proxy.url}))
        boundaries: list[tuple[Any, ...]] = []
        seen: tuple[Any, ...] | None = None
        deadline = time.monotonic() + 300
        while True:
            assert time.monotonic() < deadline, f"no end after {len(boundaries)} kills: {rig.status(name)}"
            status = rig.status(name)
            if status.get("phase") in TERMINAL:
                break
            key = (status.get("phase"), status.get("currentStep"),
                   tuple((a["id"], a["state"]) for a in status.get("actions") or []))
            if status and key != seen:
                # A boundary was written: kill the operator right there and start a new one.
                operator.kill()
                boundaries.append((*key[:2], len(key[2])))
                seen = key
                operator = rig.start_operator()
            time.sleep(0.05)
        # Events follow the history: once the last is out, each entry has been posted exactly once, kills or not.
        status = rig.wait(name, lambda s: not unposted(s),
                          timeout=30, what="the last Events")
        operator.stop()
    finally:
        proxy.stop()

    (rig.tmp_path / "status.json").write_text(json.dumps(status, indent=1))
    assert len(status["history"]) < HISTORY_LIMIT  # so the history holds every entry the rollout recorded
    assert rig.posted_events(name) == Counter((e["event"], e["detail"][:1024]) for e in status["history"])
    phases = {b[0] for b in boundaries}
    assert {"Pending", "Gating", "Progressing", "Paused", "Promoting"} <= phases, boundaries
    assert len(boundaries) >= 8, boundaries
    assert status["phase"] == "Succeeded", status["message"]
    assert status["attempt"] == 1
    counts = Counter(events(status))
    for event in ("Resolved", "CandidateStaged", "GatePassed", "StepsCompleted", "PromotionStarted",
                  "Promoted", "AliasMoved", "Succeeded"):
        assert counts[event] == 1, (event, events(status))
    weights = [e["detail"] for e in status["history"] if e["event"] == "WeightChanged"]
    assert len(weights) == 2 and "10%" in weights[0] and "50%" in weights[1], weights
    assert counts["Paused"] == 2 and counts["PauseEnded"] == 2, events(status)
    assert not {"RollbackStarted", "Failed", "NewCandidate"} & set(counts)
    assert all(a["state"] == "Confirmed" for a in status["actions"]), status["actions"]

    # The InferenceService saw each change once: stage, 10%, 50%, promote (4 writes after its creation),
    # and the stand-in made exactly one revision for the candidate.
    obj = rig.wait_isvc(name, lambda o: serves_only(o, scenario.storage_uri(candidate)))
    assert obj["metadata"]["generation"] == 5, obj["metadata"]
    assert [r["storage_uri"] for r in revisions(obj)] == [scenario.storage_uri(stable),
                                                           scenario.storage_uri(candidate)]
    assert "canaryTrafficPercent" not in obj["spec"]["predictor"]
    # The registry: the alias moved once, to the candidate; the only tags are the promotion's record of the
    # way back (nothing rejected).
    alias_writes = [w for w in proxy.recorded("registered-models/alias") if w["alias"] == STABLE_ALIAS]
    moves = [w["version"] for i, w in enumerate(alias_writes) if i == 0 or w != alias_writes[i - 1]]
    assert moves == [candidate], alias_writes
    assert len(alias_writes) <= 2, alias_writes  # a resend after a kill at most, never a second move
    tags = proxy.recorded("model-versions/set-tag")
    gate_tags = {t["key"]: t["value"] for t in tags if t["key"].startswith("modelrollout.gate.")}
    assert tags and {t["key"] for t in tags} - set(gate_tags) <= {
        "modelrollout.previous_version", "modelrollout.promoted.rollout", "modelrollout.promoted.time"}, tags
    assert {t["version"] for t in tags} == {candidate}, tags
    assert MlflowRegistry(mlflow_server.url).verify_alias(name, STABLE_ALIAS) == candidate
    # The gate's evidence under kills: one run for the one gate request, FINISHED with its outcome (none left
    # RUNNING by a kill), and the candidate version points at it.
    runs = gate_evidence_runs(mlflow_server.url, name)
    assert [(run["status"], run["outcome"]) for run in runs] == [("FINISHED", "pass")], runs
    assert runs[0]["request_id"].startswith(f"{rig.rollout(name)['metadata']['uid']}/"), runs
    assert gate_tags["modelrollout.gate.run_id"] == runs[0]["run_id"] and gate_tags["modelrollout.gate.outcome"] \
        == "pass", gate_tags
    print(f"\n{len(boundaries)} kills at {boundaries}; alias writes {len(alias_writes)}")


def test_events_are_posted_as_their_entries_are_stored_not_when_the_reconcile_ends(
        rig: Rig, scenario_factory: Callable[..., Scenario]) -> None:
    """A golden gate can run for minutes inside one reconcile: on-call must see GateStarted meanwhile."""
    scenario = scenario_factory("clean")
    name, candidate = scenario.model_name, scenario.candidate_version
    slow_candidate = RecordingProxy(scenario.servers[scenario.storage_uri(candidate)].url)
    slow_candidate.open.clear()  # the gate's requests wait in the proxy until the test lets them through
    slow_candidate.start()
    try:
        rig.start_operator()
        manifest = scenario.rollout()
        manifest["spec"]["target"]["kserve"]["candidateUrl"] = slow_candidate.url
        rig.apply(manifest)
        rig.wait(name, lambda s: s.get("phase") == "Gating" and slow_candidate.waiting > 0, timeout=60,
                 what="the gate's requests held in the proxy")
        deadline = time.monotonic() + 15
        while True:
            status = rig.status(name)
            stored = Counter((e["event"], e["detail"][:1024]) for e in status["history"])
            if rig.posted_events(name) == stored or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert slow_candidate.waiting > 0 and status["phase"] == "Gating"  # the gate is still running
        assert rig.posted_events(name) == stored, status["history"]
        assert "GateStarted" in events(status), events(status)
    finally:
        slow_candidate.open.set()
    try:
        status = rig.wait(name, phase_in(*TERMINAL), what="the end of the rollout")
        assert status["phase"] == "Succeeded", status["message"]
        status = rig.wait(name, lambda s: not unposted(s), timeout=30, what="the last Events")
        # Posted early and again at the end of the reconcile: still once each (refused by name the second time).
        assert rig.posted_events(name) == Counter((e["event"], e["detail"][:1024]) for e in status["history"])
    finally:
        slow_candidate.stop()


def test_a_gate_url_outside_the_namespace_fails_the_rollout_before_anything_is_called(
        rig: Rig, scenario_factory: Callable[..., Scenario]) -> None:
    """The test operator allows 127.0.0.1 besides the namespace's Services; `localhost` reaches the same
    listener but is not allowed, so the URL is refused by name, and neither it nor the target is touched."""
    scenario = scenario_factory("clean", light=True)
    name = scenario.model_name
    make_isvc(rig, name, scenario.storage_uri(scenario.stable_version))
    generation = rig.wait_isvc(name, lambda o: bool(predictor_status(o).get("latestRolledoutRevision")))[
        "metadata"]["generation"]
    listener = RecordingProxy("http://127.0.0.1:9")  # records and holds every request that reaches it
    listener.open.clear()
    listener.start()
    try:
        rig.start_operator()
        manifest = scenario.rollout()
        manifest["spec"]["target"]["kserve"]["candidateUrl"] = f"http://localhost:{listener.port}/v2"
        manifest["spec"]["goldenDataset"]["sha256"] = "0" * 64  # never read: the refusal comes first
        rig.apply(manifest)
        status = rig.wait(name, phase_in(*TERMINAL), 60, "the refusal")
        assert status["phase"] == "Failed", status
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "InvalidSpec", ready
        assert "spec.target.kserve.candidateUrl" in ready["message"] and "'localhost'" in ready["message"], ready
        assert "InvalidSpec" in events(status) and "Resolved" not in events(status), events(status)
        time.sleep(2)  # anything started would have reached the listener or the InferenceService by now
        assert listener.waiting == 0 and not listener.writes
        assert rig.isvc(name)["metadata"]["generation"] == generation
    finally:
        listener.open.set()
        listener.stop()


def test_a_second_rollout_on_the_same_inference_service_waits_until_the_first_has_ended(
        rig: Rig, scenario_factory: Callable[..., Scenario]) -> None:
    """One rollout at a time per target: the later one touches nothing while the first is in flight, says which
    one it waits for, takes no command, and goes on once the first has ended (kept, not deleted)."""
    scenario = scenario_factory("clean")
    name = scenario.model_name
    stable_revision_name = paused_at_ten_percent(rig, scenario)
    predictor = rig.isvc(name)["spec"]["predictor"]
    second = f"{name}-again"
    manifest = scenario.rollout(steps=[{"setWeight": 10}, {"pause": {}}])
    manifest["metadata"]["name"] = second
    rig.apply(manifest)

    def conflicted(status: dict[str, Any]) -> bool:
        return any(c.get("reason") == "TargetConflict" for c in status.get("conditions") or ())

    status = rig.wait(second, conflicted, 60, "the conflict")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False", ready
    assert ready["message"] == (f"Waiting for the target: spec.target.kserve.inferenceService: ModelRollout "
                                f"'{name}' is rolling out on InferenceService '{name}' (one rollout at a time per "
                                "target); this one waits until it ends."), ready
    assert status["phase"] == "Pending" and events(status) == ["TargetConflict"], status
    # A command other than abort (which would end it: nothing is resolved yet) is refused while it waits.
    rig.command(second, "promote", "alice", "promote-while-waiting")
    status = rig.wait(second, lambda s: "CommandIgnored" in events(s), 30, "the refused command")
    ignored = by_command(status, "promote-while-waiting")
    assert [e["event"] for e in ignored] == ["CommandIgnored"], ignored
    assert "waiting for the target" in ignored[0]["detail"], ignored
    detail = next(e["detail"] for e in status["history"] if e["event"] == "TargetConflict")
    assert ready["message"].endswith(f"{detail}."), (ready, detail)
    assert ("TargetConflict", detail) in rig.posted_events(second)
    assert rig.isvc(name)["spec"]["predictor"] == predictor  # the first one's canary, untouched
    assert share_off(rig.isvc(name), stable_revision_name) == 10
    assert rig.status(name)["phase"] == "Paused"

    # The first one ends (rolled back by on-call) and stays: an ended rollout holds nothing. Within the second's
    # next look (30 s) it goes on from Pending, up to its own pause at 10%.
    rig.command(name, "abort", "alice", "abort-first")
    rig.wait(name, phase_in("RolledBack"), 60, "the first rollout's rollback")
    status = rig.wait(second, paused_at(1, 10), 180, "the second rollout's pause at 10%")
    assert not conflicted(status), status["conditions"]
    # (Stable is served by a new revision now: the first one's Knative rollback wrote the stable model back.)
    assert rig.isvc(name)["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert rig.status(name)["phase"] == "RolledBack"  # and it does not take the target back
    assert "Traceback" not in rig.log.read_text()


# --- 3. a new candidate mid-rollout -------------------------------------------------------------------------


def test_new_candidate_mid_rollout_rolls_back_and_starts_over(rig: Rig, scenario_factory: Callable[..., Scenario],
                                                              mlflow_server: MlflowServer) -> None:
    scenario = scenario_factory("clean")
    name, stable, first = scenario.model_name, scenario.stable_version, scenario.candidate_version
    second = register_linear_model(scenario.access, name, demo_models()["clean"], "clean-retrained")
    server = ModelServerProcess.launch(scenario.storage_uri(second), scenario.tracking_uri,
                                       scenario.workdir / f"model-server-{second}.log", model_name=name)
    scenario.servers[scenario.storage_uri(second)] = server
    registry = MlflowRegistry(mlflow_server.url)
    rig.start_operator()
    rig.apply(scenario.rollout(steps=[{"setWeight": 10}, {"pause": {}}]))
    server.wait_ready()
    rig.wait(name, paused_at(1, 10), 180, "candidate 1 at 10%")

    manifest = scenario.rollout(steps=[{"setWeight": 20}, {"pause": {"duration": "1s"}}])
    manifest["spec"]["model"]["version"] = second
    rig.apply(manifest)
    status = rig.wait(name, phase_in(*TERMINAL), 180)
    (rig.tmp_path / "status.json").write_text(json.dumps(status, indent=1))
    assert status["phase"] == "Succeeded", status["message"]
    assert status["candidate"]["version"] == second and status["attempt"] == 2
    timeline = events(status)
    order = [timeline.index(e) for e in ("SpecChanged", "NewCandidate", "RollbackStarted", "TrafficRestored",
                                         "RolledBackForNewCandidate")]
    assert order == sorted(order), timeline
    after = timeline[order[-1]:]
    assert after.index("Resolved") < after.index("GatePassed") < after.index("WeightChanged") < after.index("Succeeded")
    detail = status["history"][timeline.index("NewCandidate")]["detail"]
    assert f"candidate {second} replaces {first}" in detail
    started = status["history"][timeline.index("RollbackStarted")]["detail"]
    assert started.startswith("Superseded"), started
    # The first candidate was withdrawn, not judged: it carries no rejection.
    assert "modelrollout.rejected" not in registry.resolve(name, version=first).tags
    assert registry.verify_alias(name, STABLE_ALIAS) == second
    assert status["promotion"]["previousVersion"] == stable  # the way back is the original stable, not 2
    obj = rig.wait_isvc(name, lambda o: serves_only(o, scenario.storage_uri(second)))
    assert obj["spec"]["predictor"]["model"]["storageUri"] == scenario.storage_uri(second)
    assert "canaryTrafficPercent" not in obj["spec"]["predictor"]


# --- 4. faults ------------------------------------------------------------------------------------------------


def test_target_and_registry_faults(rig: Rig, scenario_factory: Callable[..., Scenario],
                                    mlflow_server: MlflowServer) -> None:
    """Four rollouts at once on one operator whose storage URIs the stand-in never readies."""
    scenario = scenario_factory("clean", light=True)
    model, stable, candidate = scenario.model_name, scenario.stable_version, scenario.candidate_version
    stable_uri = scenario.storage_uri(stable)
    registry = MlflowRegistry(mlflow_server.url)
    for isvc_name in ("never-ready", "no-registry"):
        make_isvc(rig, isvc_name, stable_uri)
    for isvc_name in ("never-ready", "no-registry"):
        rig.wait_isvc(isvc_name, lambda o: bool(predictor_status(o).get("latestRolledoutRevision")))
    offline = RecordingProxy(mlflow_server.url)  # its port is named now and listens later

    def rollout(name: str, isvc_name: str, version: str = candidate, tracking_uri: str = mlflow_server.url,
                deadline: str = "20s") -> dict[str, Any]:
        manifest = scenario.rollout(registry={"trackingUri": tracking_uri}, progressDeadline=deadline)
        manifest["metadata"]["name"] = name
        # Required by the CRD; none of these rollouts gets as far as the gate.
        manifest["spec"]["goldenDataset"]["sha256"] = "0" * 64
        manifest["spec"]["target"]["kserve"]["inferenceService"] = isvc_name
        manifest["spec"]["model"]["version"] = version
        return manifest

    rig.start_operator(storage_uri_template="never-ready://{name}/{version}")
    rig.apply(rollout("missing-target", "absent"))
    rig.apply(rollout("never-ready", "never-ready"))
    rig.apply(rollout("no-registry", "no-registry", tracking_uri=offline.url))
    # Its own InferenceService (absent too): one in flight on "never-ready" would hold it (one rollout per target).
    rig.apply(rollout("no-such-version", "no-such-version", version="999"))

    # A version that does not exist: Failed at resolve, at once, nothing asked of the target.
    status = rig.wait("no-such-version", phase_in(*TERMINAL), 30)
    assert status["phase"] == "Failed" and status["actions"] == [], status
    assert "version 999 does not exist in the registry" in status["message"], status["message"]
    assert "Failed" in events(status) and "Resolved" not in events(status)

    # Target missing (a typo): nothing resolved, nothing applied. Past progressDeadline it still waits, Progressing
    # False as a Deployment's (a candidate in status would put it in flight, and the CRD would refuse the fix).
    status = rig.wait("missing-target", lambda s: any(
        c["type"] == "Progressing" and c["reason"] == "ProgressDeadlineExceeded" for c in s.get("conditions") or []),
        60, "ProgressDeadlineExceeded while the target is missing")
    assert status["phase"] == "Pending" and status["actions"] == [] and "candidate" not in status, status
    assert "InferenceService absent" in status["message"], status["message"]
    conditions = {c["type"]: c for c in status["conditions"]}
    waited = (parse_time(conditions["Progressing"]["lastTransitionTime"])
              - parse_time(status["resolvingSince"])).total_seconds()
    assert waited >= 20, waited
    assert conditions["TargetReady"]["reason"] == "TargetNotFound"
    with pytest.raises(ApiException) as missing:
        rig.isvc("absent")
    assert missing.value.status == 404
    # ... and the typo can be corrected by an apply: the rollout resolves against the right target.
    make_isvc(rig, "typo-fixed", stable_uri)
    rig.wait_isvc("typo-fixed", lambda o: bool(predictor_status(o).get("latestRolledoutRevision")))
    rig.apply(rollout("missing-target", "typo-fixed"))
    status = rig.wait("missing-target", lambda s: (s.get("candidate") or {}).get("version") == candidate, 30,
                      "resolved once the target is right")
    assert "Resolved" in events(status)

    # A candidate revision that never becomes ready: Failed, the InferenceService back on stable only.
    status = rig.wait("never-ready", phase_in(*TERMINAL), 90)
    assert status["phase"] == "Failed", status
    assert "did not become ready" in status["message"] and "progressDeadline 20s" in status["message"], \
        status["message"]
    assert status["rollback"]["cause"] == "CandidateNotReady"
    assert "RollbackStarted" in events(status) and "TrafficRestored" in events(status)
    obj = rig.wait_isvc("never-ready", lambda o: o["spec"]["predictor"]["model"]["storageUri"] == stable_uri
                        and serves_only(o, stable_uri))
    assert share_off(obj, predictor_status(obj)["latestRolledoutRevision"]) == 0
    assert "modelrollout.rejected" not in registry.resolve(model, version=candidate).tags

    # MLflow unreachable: still Pending well past progressDeadline, the condition says why, the
    # InferenceService untouched, retries backing off.
    status = rig.status("no-registry")
    assert status["phase"] == "Pending" and status["actions"] == [], status
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["RegistryAvailable"]["status"] == "False", conditions
    assert conditions["RegistryAvailable"]["reason"] == "RegistryUnavailable", conditions
    assert "unreachable" in conditions["RegistryAvailable"]["message"]
    assert "Waiting for the registry" in status["message"], status["message"]
    assert status["retry"]["attempts"] >= 3, status["retry"]
    obj = rig.isvc("no-registry")
    assert obj["metadata"]["generation"] == 1 and "canaryTrafficPercent" not in obj["spec"]["predictor"]
    # ... and once the registry answers, the rollout moves on by itself.
    offline.start()
    try:
        status = rig.wait("no-registry", lambda s: any(a["type"] == "StageCandidate" for a in s.get("actions") or []),
                          60, "staging once the registry answers")
    finally:
        offline.stop()
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["RegistryAvailable"]["status"] == "True", conditions
    assert registry.verify_alias(model, STABLE_ALIAS) == stable
    assert "Traceback" not in rig.log.read_text()


# --- engine regressions found on the way (pure: no stack needed) ---------------------------------------------------


def test_engine_wakes_up_at_the_progress_deadline_while_backing_off() -> None:
    from datetime import UTC, timedelta

    from controller.api.spec import parse_spec
    from controller.api.status import ModelRolloutStatus, Phase, RetryState, VersionRef
    from controller.engine import (
        AdapterError,
        AdapterErrorKind,
        Observations,
        RegistryObservation,
        ResolvedVersion,
        TargetObservation,
        decide,
    )

    spec = parse_spec({
        "model": {"name": "nsfw", "version": "2", "stableAlias": STABLE_ALIAS},
        "registry": {"trackingUri": "http://127.0.0.1:5000"},
        "target": {"kserve": {"inferenceService": "absent"}},
        "goldenDataset": {"uri": "configmap://golden/golden.jsonl", "sha256": "0" * 64,
                          "thresholds": {"minAccuracy": 0.9}},
        "canary": {"steps": [{"setWeight": 10}]},
        "progressDeadline": "20s"})
    now = datetime(2026, 1, 1, tzinfo=UTC)
    started = now - timedelta(seconds=15)
    status = ModelRolloutStatus(
        phase=Phase.PENDING, observed_generation=1, attempt=1, started_at=started,
        candidate=VersionRef("2"), stable=VersionRef("1"),
        retry=RetryState(attempts=4, since=started, reason="target: not found", last_attempt_at=now))
    observations = Observations(
        generation=1,
        registry=RegistryObservation(candidate=ResolvedVersion("2"), stable_alias_version=ResolvedVersion("1")),
        target=TargetObservation(error=AdapterError(AdapterErrorKind.NOT_FOUND, "InferenceService absent not found")))
    decision = decide(spec, status, observations, now)
    assert decision.status.phase is Phase.PENDING
    # The deadline is 5 s away: the engine must look again just after it, not after the 16 s backoff.
    assert decision.requeue_after is not None and decision.requeue_after <= timedelta(seconds=6), \
        decision.requeue_after
