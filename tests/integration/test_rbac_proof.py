"""RBAC proven, not assumed: the operator runs as a real process on the real API server under the exact
ServiceAccount, ClusterRole and ClusterRoleBinding that `kustomize build deploy/base` renders, with a token
from the TokenRequest API, and

- completes a rollout (the content-moderation scenario: gate, steps, promotion) with the registry
  credentials Secret it is granted by name (deploy/examples/registry-credentials-role.yaml);
- cannot do without any verb of its ClusterRole: each one is taken away in turn and the operator is seen
  failing for it, with the API server's "forbidden" in its log or in the rollout's status, and going on
  once it is back (list and watch with a fresh process, the others on the running one: the API server's
  authorizer follows a ClusterRole change at once, which `kubectl auth can-i` under the same token confirms
  before each observation);
- gets 403 on any Secret but the one granted: an unreferenced one in the same namespace, one in another
  namespace, and listing; a rollout that names an ungranted Secret reports RegistryForbidden.
- can do exactly that and no more: every RBAC object deploy/base renders is applied (a second binding of the
  account, to cluster-admin or anything else, is in force here too), and the API server's own account of what the
  ServiceAccount may do (SelfSubjectRulesReview, as `kubectl auth can-i --list` asks it) is the checked verbs, the
  one Secret, and what every account gets, before the rollout and after it.

One full rollout carries most checks: each rule is removed just before the point where the rollout first
needs it, and put back (while the next one is removed, in the same update) once the failure is seen.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from controller.devstack.controlplane import ControlPlane
from controller.devstack.mlflow_server import MlflowServer
from controller.devstack.processes import free_port
from controller.devstack.scenario import STORAGE_URI_TEMPLATE, Scenario
from controller.operator.kubeapi import FIELD_MANAGER, FINALIZER, load_client_config
from controller.traffic.kube import SELDON_DEPLOYMENT, SELDON_EXPERIMENT
from tests.conftest import run_kubectl
from tests.integration.operator_process import OperatorProcess, get_rollout
from tests.integration.test_traffic_seldon import PREDICTOR, create, seldon_v1_reports, seldon_v2_reports
from tests.unit.test_deploy_render import DEPLOY, kustomize_build

pytestmark = pytest.mark.integration

SA_NAMESPACE = "modelrollout-system"
SA_NAME = "modelrollout-controller"
SA_USER = f"system:serviceaccount:{SA_NAMESPACE}:{SA_NAME}"
SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nsfw-classifier.yaml"
EXAMPLE_ROLE = DEPLOY / "examples" / "registry-credentials-role.yaml"
GRANTED_SECRET = "mlflow-token"

Obj = dict[str, Any]
Verb = tuple[str, str, str]  # apiGroup, resource, verb
Grant = tuple[str, str, str, str]  # apiGroup, resource, verb, resourceName ("": any)

# Every verb of the controller's ClusterRole and where its absence shows. The test fails if the rendered
# ClusterRole grants a verb that is not here: a new permission needs its own proof.
CHECKED: tuple[Verb, ...] = (
    ("modelrollout.io", "modelrollouts", "list"),
    ("modelrollout.io", "modelrollouts", "watch"),
    ("modelrollout.io", "modelrollouts", "get"),
    ("modelrollout.io", "modelrollouts", "patch"),
    ("modelrollout.io", "modelrollouts/status", "patch"),
    ("serving.kserve.io", "inferenceservices", "get"),
    ("serving.kserve.io", "inferenceservices", "patch"),
    ("", "configmaps", "get"),
    ("", "events", "create"),
    ("machinelearning.seldon.io", "seldondeployments", "get"),
    ("machinelearning.seldon.io", "seldondeployments", "patch"),
    ("mlops.seldon.io", "experiments", "get"),
    ("mlops.seldon.io", "experiments", "patch"),
)


# What any authenticated account may do (system:basic-user): ask what it may do. The baseline account, bound to
# nothing, is checked to get exactly these, so a grant to all ServiceAccounts cannot hide in the baseline either.
SELF_REVIEWS: frozenset[Grant] = frozenset({
    ("authorization.k8s.io", "selfsubjectaccessreviews", "create", ""),
    ("authorization.k8s.io", "selfsubjectrulesreviews", "create", ""),
    ("authentication.k8s.io", "selfsubjectreviews", "create", ""),
})
RBAC_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")


def kubectl(kubeconfig: Path, *args: str, input_text: str | None = None) -> str:
    result = run_kubectl(kubeconfig, *args, input_text=input_text)
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


def apply(kubeconfig: Path, *objs: Obj) -> None:
    kubectl(kubeconfig, "apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                   "items": list(objs)}))


def eventually(what: str, probe: Callable[[], Any], timeout: float = 60.0, interval: float = 0.25,
               context: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{context()}")


# --- the controller's identity, as deploy/ renders it ----------------------------------------------------


@dataclass
class ControllerIdentity:
    """The rendered RBAC objects on the API server, and a kubeconfig holding the ServiceAccount's token."""

    admin: Path
    objects: list[Obj]
    kubeconfig: Path = Path()
    removed: Verb | None = None

    @property
    def cluster_role(self) -> Obj:
        return next(o for o in self.objects if o["kind"] == "ClusterRole" and o["metadata"]["name"] == SA_NAME)

    def verbs(self) -> list[Verb]:
        found = []
        for rule in self.cluster_role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    found += [(group, resource, verb) for verb in rule["verbs"]]
        return found

    def install(self, control_plane: ControlPlane, directory: Path) -> None:
        apply(self.admin, *self.objects)
        token = kubectl(self.admin, "create", "token", SA_NAME, "-n", SA_NAMESPACE, "--duration=2h").strip()
        self.kubeconfig = control_plane.write_kubeconfig(directory / "controller.kubeconfig", SA_USER, token)
        assert json.loads(kubectl(self.kubeconfig, "auth", "whoami", "-o", "json"))["status"]["userInfo"][
            "username"] == SA_USER

    def grant(self, without: Verb | None = None) -> None:
        """The ClusterRole as rendered, minus one verb; returns once the authorizer says so."""
        role = copy.deepcopy(self.cluster_role)
        rules = []
        for rule in role["rules"]:
            if without and without[0] in rule["apiGroups"] and without[1] in rule["resources"]:
                assert len(rule["apiGroups"]) == 1 and len(rule["resources"]) == 1, rule
                rule["verbs"] = [verb for verb in rule["verbs"] if verb != without[2]]
            if rule["verbs"]:
                rules.append(rule)
        role["rules"] = rules
        apply(self.admin, role)
        if self.removed and self.removed != without:
            eventually(f"{self.removed} granted again", lambda: self.can(self.removed))  # type: ignore[arg-type]
        if without:
            eventually(f"{without} revoked", lambda: not self.can(without))
        self.removed = without

    def can(self, verb: Verb, namespace: str = "default", name: str = "") -> bool:
        group, resource, action = verb
        resource, _, subresource = resource.partition("/")
        target = f"{resource}.{group}" if group else resource
        if name:
            target += f"/{name}"
        args = ["auth", "can-i", action, target, "-n", namespace]
        if subresource:
            args.append(f"--subresource={subresource}")
        result = run_kubectl(self.kubeconfig, *args)
        return result.stdout.strip() == "yes"


WRITES_POLICY = "modelrollout-controller-writes"  # what the controller may change on a ModelRollout itself


def rendered_controller_rbac() -> list[Obj]:
    """Every RBAC object deploy/base renders (ServiceAccounts, roles and bindings, whoever they name: a binding that
    gives the controller's account more must be in force where its grant is proven), its Namespace, and the
    admission policy that narrows its patch on ModelRollouts to its finalizer (the proof runs under it)."""
    objs = kustomize_build(DEPLOY / "base")
    wanted = [o for o in objs if (o["kind"] == "Namespace" and o["metadata"]["name"] == SA_NAMESPACE)
              or o["kind"] in RBAC_KINDS
              or (o["kind"].startswith("ValidatingAdmissionPolicy") and o["metadata"]["name"] == WRITES_POLICY)]
    named = {(o["kind"], o["metadata"]["name"]) for o in wanted}
    assert {(kind, SA_NAME) for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")} <= named, named
    assert wanted[0]["kind"] == "Namespace"  # applied first: the ServiceAccounts are in it
    assert len([o for o in objs if o["kind"] in RBAC_KINDS]) == len([o for o in wanted if o["kind"] in RBAC_KINDS])
    return wanted


def granted(kubeconfig: Path, namespace: str) -> tuple[set[Grant], set[tuple[str, str]]]:
    """What the API server says the kubeconfig's account may do in `namespace` (its cluster-wide grants included):
    SelfSubjectRulesReview, the request behind `kubectl auth can-i --list`. Resource and non-resource rules."""
    # --validate=false: kubectl's own schema check lists CRDs, which the account may not.
    ask = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": namespace}}
    review = json.loads(kubectl(kubeconfig, "create", "--validate=false", "-o", "json", "-f", "-",
                                input_text=json.dumps(ask)))
    status = review["status"]
    assert not status.get("incomplete"), status.get("evaluationError")
    resources = {(group, resource, verb, name) for rule in status.get("resourceRules") or []
                 for group in rule.get("apiGroups") or ["<none>"] for resource in rule.get("resources") or ["<none>"]
                 for verb in rule.get("verbs") or ["<none>"] for name in rule.get("resourceNames") or [""]}
    urls = {(url, verb) for rule in status.get("nonResourceRules") or []
            for url in rule.get("nonResourceURLs") or [] for verb in rule.get("verbs") or []}
    return resources, urls


def baseline_grant(control_plane: ControlPlane, admin: Path, directory: Path) -> set[tuple[str, str]]:
    """The non-resource rules of an account bound to nothing (discovery, health), after checking that its resource
    rules are SELF_REVIEWS alone."""
    namespace = new_namespace(admin, "rbac-baseline")
    kubectl(admin, "create", "serviceaccount", "nobody", "-n", namespace)
    token = kubectl(admin, "create", "token", "nobody", "-n", namespace, "--duration=1h").strip()
    nobody = control_plane.write_kubeconfig(directory / "nobody.kubeconfig",
                                            f"system:serviceaccount:{namespace}:nobody", token)
    resources, urls = granted(nobody, namespace)
    assert resources == SELF_REVIEWS, sorted(resources)
    return urls


def assert_grant_is_exactly(identity: ControllerIdentity, baseline: set[tuple[str, str]],
                            expected: dict[str, set[Grant]]) -> None:
    """The controller's account may do, per namespace, the checked verbs, the Secrets named, and nothing more."""
    role = {(group, resource, verb, "") for group, resource, verb in CHECKED}
    for namespace, secrets in expected.items():
        resources, urls = granted(identity.kubeconfig, namespace)
        assert resources == role | SELF_REVIEWS | secrets, (
            namespace, "more:", sorted(resources - role - SELF_REVIEWS - secrets),
            "missing:", sorted((role | SELF_REVIEWS | secrets) - resources))
        assert urls == baseline, (namespace, sorted(urls ^ baseline))


# --- the operator under that identity --------------------------------------------------------------------


class ControllerProcess(OperatorProcess):
    """`modelrollout operator run` with the controller's kubeconfig, metrics on a free port, kopf's liveness."""

    def __init__(self, kubeconfig: Path, log: Path) -> None:
        super().__init__(kubeconfig, log, extra_env={"MODELROLLOUT_STORAGE_URI_TEMPLATE": STORAGE_URI_TEMPLATE})
        self.liveness = f"http://127.0.0.1:{free_port()}/healthz"

    def start(self) -> ControllerProcess:
        with open(self.log, "ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller.cli.main", "operator", "run", "--kubeconfig", str(self.kubeconfig),
                 "--metrics-port", "0", "--liveness", self.liveness, "--scrape-interval", "1s"],
                stdout=log_file, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def mark(self) -> int:
        return len(self.text())

    def wait_log(self, pattern: str, since: int = 0, timeout: float = 60.0) -> str:
        def probe() -> str | None:
            match = re.search(pattern, self.text()[since:])
            return match.group(0) if match else None

        assert self.proc is not None
        return str(eventually(f"{pattern!r} in the operator's log", probe, timeout,
                              context=lambda: self.text()[-4000:]))

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        url = self.wait_log(r"serving metrics on (http://\S+/metrics)").split(" on ")[1]
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
            text = response.read().decode()
        return {(sample.name, frozenset(sample.labels.items())): sample.value
                for family in text_string_to_metric_families(text) for sample in family.samples}


def status_of(kubeconfig: Path, namespace: str, name: str) -> Obj:
    return get_rollout(kubeconfig, namespace, name).get("status") or {}


def finalizers(kubeconfig: Path, namespace: str, name: str) -> list[str]:
    return list(get_rollout(kubeconfig, namespace, name)["metadata"].get("finalizers") or [])


def condition(status: Obj, kind: str) -> Obj:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def touch(kubeconfig: Path, namespace: str, name: str) -> None:
    """A metadata change: a watch event, so the operator looks again now rather than at its next requeue."""
    kubectl(kubeconfig, "annotate", "--overwrite", "mro", name, "-n", namespace, f"test/touched={uuid.uuid4().hex}")


def events_of(kubeconfig: Path, namespace: str, name: str) -> list[str]:
    found = json.loads(kubectl(kubeconfig, "get", "events", "-n", namespace, "-o", "json",
                               f"--field-selector=involvedObject.name={name}"))
    return [e["reason"] for e in found["items"] if e.get("reportingComponent") == FIELD_MANAGER]


def sample_rollout(namespace: str, name: str) -> Obj:
    manifest = yaml.safe_load(SAMPLE.read_text())
    manifest["metadata"] = {"name": name, "namespace": namespace}
    return manifest


def secret(namespace: str, name: str, tracking_uri: str) -> Obj:
    data = {"token": "local-mlflow-needs-no-token", "trackingUri": tracking_uri}  # credentials go only there
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
            "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}}


def new_namespace(kubeconfig: Path, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    kubectl(kubeconfig, "create", "namespace", name)
    return name


# --- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture
def identity(control_plane: ControlPlane, kubeconfig: Path, tmp_path: Path) -> Iterator[ControllerIdentity]:
    ident = ControllerIdentity(kubeconfig, rendered_controller_rbac())
    ident.install(control_plane, tmp_path)
    yield ident
    ident.grant()
    for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
        run_kubectl(kubeconfig, "delete", kind, WRITES_POLICY, "--ignore-not-found")


@pytest.fixture
def scenario(control_plane: ControlPlane, mlflow_server: MlflowServer, namespace: str,
             tmp_path: Path) -> Iterator[Scenario]:
    made = Scenario(load_client_config(str(control_plane.admin_kubeconfig)), mlflow_server.url, namespace,
                    tmp_path / "scenario", model_name=f"nsfw-{uuid.uuid4().hex[:6]}", candidate_kind="clean")
    try:
        yield made.setup()
    finally:
        made.stop()


@dataclass
class Proof:
    """What each removed verb did to the operator, for the final report and assertions."""

    seen: dict[Verb, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def record(self, verb: Verb, evidence: str) -> None:
        print(f"[{time.monotonic() - self.started:5.1f}s] without {verb[2]} {verb[1]}"
              f"{'.' + verb[0] if verb[0] else ''}: {evidence}")
        self.seen[verb] = evidence


# --- the proof -------------------------------------------------------------------------------------------


def test_controller_rbac_is_sufficient_and_every_verb_is_needed(
        identity: ControllerIdentity, scenario: Scenario, control_plane: ControlPlane, kubeconfig: Path,
        tmp_path: Path) -> None:
    admin = kubeconfig
    assert sorted(identity.verbs()) == sorted(CHECKED), "a verb of the ClusterRole has no check here (or vice versa)"
    proof = Proof()
    ns = scenario.namespace
    scratch = new_namespace(admin, "rbac-scratch")
    other = new_namespace(admin, "rbac-other")

    # Registry credentials: granted by name in the rollout's namespace, with the team's Role from deploy/.
    uri = scenario.tracking_uri
    apply(admin, secret(ns, GRANTED_SECRET, uri), secret(ns, "unrelated", uri), secret(other, GRANTED_SECRET, uri))
    team_role = [doc for doc in yaml.safe_load_all(EXAMPLE_ROLE.read_text()) if doc]
    for obj in team_role:
        obj["metadata"]["namespace"] = ns
    apply(admin, *team_role)
    secret_get: Verb = ("", "secrets", "get")
    eventually("the team's Role to take effect", lambda: identity.can(secret_get, ns, GRANTED_SECRET))
    assert not identity.can(secret_get, ns, "unrelated")
    assert not identity.can(secret_get, other, GRANTED_SECRET)
    assert not identity.can(("", "secrets", "list"), ns)
    for namespace, name in ((ns, "unrelated"), (other, GRANTED_SECRET)):
        denied = run_kubectl(identity.kubeconfig, "get", "secret", name, "-n", namespace)
        assert denied.returncode != 0 and "Forbidden" in denied.stderr, denied.stderr
    assert kubectl(identity.kubeconfig, "get", "secret", GRANTED_SECRET, "-n", ns, "-o", "name").strip() \
        == f"secret/{GRANTED_SECRET}"
    # And nothing else, whatever else deploy/base binds the account to: as the API server sums it up.
    baseline = baseline_grant(control_plane, admin, tmp_path)
    exactly = {ns: {("", "secrets", "get", GRANTED_SECRET)}, scratch: set(), other: set()}
    assert_grant_is_exactly(identity, baseline, exactly)

    # 1. list: kopf cannot list the resource, so a rollout that exists gets no status.
    verb = ("modelrollout.io", "modelrollouts", "list")
    identity.grant(without=verb)
    apply(admin, sample_rollout(scratch, "listed"))
    operator = ControllerProcess(identity.kubeconfig, tmp_path / "operator-no-list.log").start()
    try:
        line = operator.wait_log(r'cannot list resource \\?"modelrollouts\\?"')
        time.sleep(5)  # with list granted, the first status is written within a second of this
        assert not status_of(admin, scratch, "listed")
    finally:
        operator.kill()
    proof.record(verb, f"no status within 5 s; log: {line}")

    # 2. watch: what the initial list found is reconciled, but nothing created afterwards is ever seen.
    verb = ("modelrollout.io", "modelrollouts", "watch")
    identity.grant(without=verb)
    operator = ControllerProcess(identity.kubeconfig, tmp_path / "operator-no-watch.log").start()
    try:
        line = operator.wait_log(r'cannot watch resource \\?"modelrollouts\\?"')
        eventually("the listed rollout's status", lambda: status_of(admin, scratch, "listed").get("phase"))
        apply(admin, sample_rollout(scratch, "unseen"))
        time.sleep(5)
        assert not status_of(admin, scratch, "unseen")
    finally:
        operator.kill()
    proof.record(verb, f"listed rollout reconciled, new one no status within 5 s; log: {line}")

    # From here on one operator process runs; its ClusterRole changes under it.
    verb = ("modelrollout.io", "modelrollouts", "get")
    identity.grant(without=verb)
    operator = ControllerProcess(identity.kubeconfig, tmp_path / "operator.log").start()
    try:
        # 3. get: the reconciler reads each rollout fresh before deciding; without get it cannot.
        line = operator.wait_log(r'cannot get resource \\?"modelrollouts\\?"')
        assert not status_of(admin, scratch, "unseen")
        assert operator.metrics()[("modelrollout_reconcile_errors_total", frozenset())] >= 1
        proof.record(verb, f"no status, reconcile errors; log: {line}")

        # 4. status patch: it decides, and cannot write the decision down.
        verb = ("modelrollout.io", "modelrollouts/status", "patch")
        since = operator.mark()
        identity.grant(without=verb)
        touch(admin, scratch, "unseen")
        line = operator.wait_log(r'cannot patch resource \\?"modelrollouts/status\\?"', since)
        assert not status_of(admin, scratch, "unseen")
        proof.record(verb, f"no status; log: {line}")

        # 5. InferenceService get: the status is written, and says the target is forbidden.
        verb = ("serving.kserve.io", "inferenceservices", "get")
        identity.grant(without=verb)
        touch(admin, scratch, "unseen")
        target = eventually("TargetReady=False/TargetForbidden",
                            lambda: condition(status_of(admin, scratch, "unseen"), "TargetReady").get("reason")
                            == "TargetForbidden" and condition(status_of(admin, scratch, "unseen"), "TargetReady"))
        assert "forbidden" in target["message"].lower()
        proof.record(verb, f"TargetReady {target['reason']}: {target['message'][:160]}")

        # 6. InferenceService patch: the real rollout resolves its candidate and cannot stage it.
        verb = ("serving.kserve.io", "inferenceservices", "patch")
        identity.grant(without=verb)
        touch(admin, scratch, "unseen")
        eventually("the target simply missing once get is back", lambda: condition(
            status_of(admin, scratch, "unseen"), "TargetReady").get("reason") == "TargetNotFound")
        name = scenario.model_name
        apply(admin, scenario.rollout(registry={"trackingUri": scenario.tracking_uri,
                                                "credentialsSecretRef": {"name": GRANTED_SECRET}}))
        stage = eventually("StageCandidate forbidden", lambda: next(
            (a for a in status_of(admin, ns, name).get("actions", [])
             if a["type"] == "StageCandidate" and "forbidden" in (a.get("lastError") or "").lower()), None))
        isvc = json.loads(kubectl(admin, "get", "inferenceservice", name, "-n", ns, "-o", "json"))
        assert isvc["spec"]["predictor"]["model"]["storageUri"] == scenario.storage_uri(scenario.stable_version)
        assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
        assert condition(status_of(admin, ns, name), "RegistryAvailable")["status"] == "True"  # its Secret: granted
        proof.record(verb, f"StageCandidate: {stage['lastError'][:160]}")

        # 7. ConfigMap get: staged, but the golden gate cannot read its dataset.
        verb = ("", "configmaps", "get")
        identity.grant(without=verb)
        touch(admin, ns, name)
        gate = eventually("the gate unable to read its ConfigMap", lambda: (lambda c: c if c.get("reason") ==
                          "GateError" and "403" in c.get("message", "") else None)(
            condition(status_of(admin, ns, name), "GatePassed")), timeout=90)
        assert status_of(admin, ns, name)["phase"] == "Gating"
        proof.record(verb, f"GatePassed {gate['reason']}: {gate['message'][:160]}")

        # 8. Event create: the rollout goes on (Events are best effort) but every Event is refused.
        verb = ("", "events", "create")
        posted_before = events_of(admin, ns, name)
        assert "CandidateStaged" in posted_before, posted_before
        since = operator.mark()
        identity.grant(without=verb)
        touch(admin, ns, name)
        final = eventually("the rollout to finish", lambda: (lambda s: s if s.get("phase") in
                           ("Succeeded", "RolledBack", "Failed") else None)(status_of(admin, ns, name)), timeout=180,
                           context=lambda: operator.text()[-4000:])
        line = operator.wait_log(r"could not post Event GatePassed for \S+: HTTP 403", since)
        assert final["phase"] == "Succeeded", final.get("message")
        assert final["gate"]["outcome"] == "pass" and final["gate"]["datasetSha256"] == scenario.dataset_sha256
        posted = events_of(admin, ns, name)
        assert "GatePassed" not in posted and "Succeeded" not in posted, posted
        proof.record(verb, f"no Events while revoked (had {len(posted_before)} before); log: {line}")
        identity.grant()

        # The whole grant suffices: the rollout completed under it (and its Events flow again).
        predictor = json.loads(kubectl(admin, "get", "inferenceservice", name, "-n", ns, "-o",
                                       "json"))["spec"]["predictor"]
        assert predictor["model"]["storageUri"] == scenario.storage_uri(scenario.candidate_version)
        assert_grant_is_exactly(identity, baseline, exactly)  # what the rollout completed under, and no more
        touch(admin, scratch, "unseen")

        # A rollout that names a Secret it was not granted cannot read it.
        apply(admin, scenario.rollout(registry={"trackingUri": scenario.tracking_uri,
                                                "credentialsSecretRef": {"name": "unrelated"}},
                                      target={"kserve": {"inferenceService": "elsewhere"}})
              | {"metadata": {"name": "names-another-secret", "namespace": ns}})
        registry = eventually("RegistryForbidden", lambda: (lambda c: c if c.get("reason") == "RegistryForbidden"
                              else None)(condition(status_of(admin, ns, "names-another-secret"), "RegistryAvailable")))
        assert "403" in registry["message"]

        # 9. patch: a rollout with revertOnDeletion is held by the finalizer before anything is done for it;
        # without patch the finalizer cannot be put on, so nothing is done (not even a status).
        verb = ("modelrollout.io", "modelrollouts", "patch")
        since = operator.mark()
        identity.grant(without=verb)
        held = sample_rollout(scratch, "held")
        held["spec"]["rollback"] = {"automatic": True, "revertOnDeletion": True}
        apply(admin, held)
        line = operator.wait_log(r'cannot patch resource \\?"modelrollouts\\?"', since)
        assert not status_of(admin, scratch, "held") and not finalizers(admin, scratch, "held")
        proof.record(verb, f"no finalizer, no status; log: {line}")
        identity.grant()
        touch(admin, scratch, "held")
        eventually("the held rollout's finalizer and status", lambda: FINALIZER in finalizers(admin, scratch, "held")
                   and status_of(admin, scratch, "held").get("phase"))
        # Deleted, it ends (never resolved: its registry is not reachable from here) and the controller lets
        # the delete complete under the same grant.
        kubectl(admin, "delete", "mro", "held", "-n", scratch, "--wait=false")
        eventually("the held rollout gone", lambda: run_kubectl(admin, "get", "mro", "held", "-n", scratch)
                   .returncode != 0, context=lambda: operator.text()[-4000:])

        # 10-13. The Seldon routers, on a SeldonDeployment and an Experiment (their controllers played here).
        api = load_client_config(str(admin))
        for kind, resource, make, target in (
                ("seldondeployments", SELDON_DEPLOYMENT,
                 lambda n: (create(api, SELDON_DEPLOYMENT, n, {"protocol": "v2", "predictors": [PREDICTOR]}),
                            seldon_v1_reports(api, n)),
                 {"seldonDeployment": {"name": "nsfw", "stablePredictor": "main", "canaryPredictor": "canary"}}),
                ("experiments", SELDON_EXPERIMENT,
                 lambda n: (create(api, SELDON_EXPERIMENT, n, {"default": "nsfw",
                                                               "candidates": [{"name": "nsfw", "weight": 100}]}),
                            seldon_v2_reports(api, n)),
                 {"seldonExperiment": {"name": "nsfw"}})):
            seldon_ns = new_namespace(admin, "rbac-seldon")
            make(seldon_ns)
            rollout = {"apiVersion": "modelrollout.io/v1alpha1", "kind": "ModelRollout",
                       "metadata": {"name": "seldon", "namespace": seldon_ns},
                       "spec": {"model": {"name": name, "version": scenario.stable_version,
                                          "stableAlias": "production"},
                                "registry": {"trackingUri": scenario.tracking_uri}, "target": target,
                                "goldenDataset": scenario.rollout()["spec"]["goldenDataset"],
                                "canary": {"steps": [{"setWeight": 10}]}, "progressDeadline": "5m"}}
            verb = (resource.group, kind, "get")
            identity.grant(without=verb)
            apply(admin, rollout)
            found = eventually(f"{kind} get forbidden", lambda n=seldon_ns: (lambda c: c if c.get("reason") ==
                               "TargetForbidden" else None)(condition(status_of(admin, n, "seldon"), "TargetReady")))
            proof.record(verb, f"TargetReady {found['reason']}: {found['message'][:160]}")

            verb = (resource.group, kind, "patch")
            identity.grant(without=verb)
            touch(admin, seldon_ns, "seldon")
            stage = eventually(f"{kind} patch forbidden", lambda n=seldon_ns: next(
                (a for a in status_of(admin, n, "seldon").get("actions", [])
                 if a["type"] == "StageCandidate" and "forbidden" in (a.get("lastError") or "").lower()), None))
            proof.record(verb, f"StageCandidate: {stage['lastError'][:160]}")

            identity.grant()
            touch(admin, seldon_ns, "seldon")

            def managers(n: str = seldon_ns, r: Any = resource) -> set[str]:
                obj = json.loads(kubectl(admin, "get", f"{r.plural}.{r.group}", "nsfw", "-n", n, "-o", "json",
                                         "--show-managed-fields"))
                return {m["manager"] for m in obj["metadata"]["managedFields"]}

            eventually(f"the {resource.kind} staged by the controller once patch is back",
                       lambda m=managers: FIELD_MANAGER in m(), timeout=60)
            kubectl(admin, "delete", "mro", "seldon", "-n", seldon_ns)

        # The operator's own endpoints while it ran: kopf's liveness probe and /metrics.
        with urllib.request.urlopen(operator.liveness, timeout=10) as response:  # noqa: S310 - loopback
            assert response.status == 200
        metrics = operator.metrics()
        assert metrics[("modelrollout_rollouts", frozenset({("phase", "Succeeded")}))] >= 1
        assert metrics[("modelrollout_verdicts_total", frozenset({("namespace", ns), ("rollout", name),
                                                                  ("metric", "golden-gate"), ("result", "pass")}))] == 1
        assert metrics[("modelrollout_steps_total", frozenset({("namespace", ns), ("rollout", name)}))] == 4
        assert metrics[("modelrollout_rollbacks_total", frozenset({("namespace", ns), ("rollout", name)}))] == 0
        assert metrics[("modelrollout_canary_weight", frozenset({("namespace", ns), ("rollout", name)}))] == 100
    finally:
        operator.stop()
    assert sorted(proof.seen) == sorted(CHECKED)
