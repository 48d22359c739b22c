"""Properties of the manifests and the Dockerfile that need no cluster and no build.

RBAC is least privilege by construction (no wildcard, no Secrets in the ClusterRole, Secrets only by name
in the per-namespace example); pods meet the "restricted" Pod Security Standard; the Dockerfile is
multi-stage, pinned and non-root. There is no Docker engine here, so the Dockerfile is parsed, not built.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.unit.test_deploy_render import ALL_ON, DEPLOY, helm_template, kustomize_build

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "deploy" / "base"
EXAMPLE_ROLE = REPO / "deploy" / "examples" / "registry-credentials-role.yaml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
CONTROLLER_ROLE = "modelrollout-controller"

Obj = dict[str, Any]


def load_all(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def base_objects() -> list[Obj]:
    """deploy/base without the CRD (the kustomization lists the files; the CRD is checked elsewhere)."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return [obj for name in kustomization["resources"] if name.endswith(".yaml") for obj in load_all(BASE / name)]


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [obj for obj in objs if obj["kind"] == kind]


# --- RBAC ------------------------------------------------------------------------------------------------


def test_no_wildcard_anywhere_in_rbac() -> None:
    rules = [rule for obj in [*base_objects(), *load_all(EXAMPLE_ROLE)] if obj["kind"] in ("ClusterRole", "Role")
             for rule in obj["rules"]]
    assert rules
    for rule in rules:
        assert "nonResourceURLs" not in rule, rule
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert not any("*" in value for value in rule.get(field, [])), rule


def test_controller_cluster_role_grants_no_secrets_and_only_what_it_uses() -> None:
    role = next(obj for obj in of_kind(base_objects(), "ClusterRole") if obj["metadata"]["name"] == CONTROLLER_ROLE)
    granted = {(group, resource): set(rule["verbs"]) for rule in role["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"]}
    assert not [resource for _, resource in granted if resource.startswith("secrets")]
    # The whole grant, spelled out: a new permission has to be added here on purpose, with its reason
    # in deploy/base/rbac.yaml (and survive the live RBAC proof).
    assert granted == {
        ("modelrollout.io", "modelrollouts"): {"get", "list", "watch", "patch"},
        ("modelrollout.io", "modelrollouts/status"): {"patch"},
        ("", "events"): {"create"},
        ("serving.kserve.io", "inferenceservices"): {"get", "patch"},
        ("machinelearning.seldon.io", "seldondeployments"): {"get", "patch"},
        ("mlops.seldon.io", "experiments"): {"get", "patch"},
        ("", "configmaps"): {"get"},
    }
    binding = next(obj for obj in of_kind(base_objects(), "ClusterRoleBinding")
                   if obj["roleRef"]["name"] == CONTROLLER_ROLE)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": CONTROLLER_ROLE,
                                    "namespace": "modelrollout-system"}]


def names_account(binding: Obj, subject: Obj, namespace: str, account: str) -> bool:
    """Whether a binding's subject grants to the ServiceAccount: by itself, as the user its token authenticates as,
    or through a group its token carries (the authorizer's own rules, a RoleBinding's namespace by default)."""
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "ServiceAccount":
        return name == account and subject.get("namespace", binding["metadata"].get("namespace")) == namespace
    if kind == "User":
        return name == f"system:serviceaccount:{namespace}:{account}"
    return kind == "Group" and name in ("system:serviceaccounts", f"system:serviceaccounts:{namespace}",
                                        "system:authenticated")


def controller_bindings(objs: list[Obj], default: tuple[str, str]) -> tuple[str, list[Obj]]:
    """The controller's ServiceAccount (the one its Deployment runs as) and every rendered binding naming it."""
    namespace, account = default
    for deployment in of_kind(objs, "Deployment"):
        if deployment["metadata"]["labels"].get("app.kubernetes.io/component") == "controller":
            namespace = deployment["metadata"]["namespace"]
            account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    bindings = [obj for obj in objs if obj["kind"] in ("RoleBinding", "ClusterRoleBinding")
                and any(names_account(obj, subject, namespace, account) for subject in obj.get("subjects") or [])]
    return account, bindings


def test_the_controllers_account_is_bound_to_its_own_role_only() -> None:
    """Every rendered install (kustomize's base and overlays, the chart with its defaults, everything on, another
    release name and namespace): any binding that names the controller's ServiceAccount refers to the controller's
    own ClusterRole, whose grant the tests above and the live proof pin. A second binding (cluster-admin, a
    namespace's admin) would pass every check of the role itself (review s30tenancy)."""
    base_role = next(o for o in of_kind(base_objects(), "ClusterRole") if o["metadata"]["name"] == CONTROLLER_ROLE)
    renders = [(f"kustomize {path.relative_to(REPO)}", kustomize_build(path))
               for path in (DEPLOY / "base", DEPLOY, DEPLOY / "network-policy", DEPLOY / "monitoring")]
    renders += [(f"helm template {' '.join(args)}", helm_template(*args, **where)) for args, where in (
        ((), {}), (ALL_ON, {}), (("--set", "fullnameOverride=mr"), {}),
        (ALL_ON, {"release": "team-ml", "namespace": "ml-platform"}))]
    bound = 0
    for name, objs in renders:
        account, bindings = controller_bindings(objs, ("modelrollout-system", CONTROLLER_ROLE))
        for binding in bindings:
            assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                          "name": account}, (name, binding["metadata"]["name"], binding["roleRef"])
            role = next(o for o in of_kind(objs, "ClusterRole") if o["metadata"]["name"] == account)
            assert role["rules"] == base_role["rules"], name
            # The whole grant, not only its rules: kube-controller-manager replaces an aggregated role's rules with
            # every role its selector matches (aggregate-to-admin: Secrets, pods/exec, RoleBindings), and no API
            # server without it (the live proof's) shows that (review s30r2b).
            assert set(role) == {"apiVersion", "kind", "metadata", "rules"}, (name, sorted(role))
            aggregated = [o["metadata"]["name"] for o in of_kind(objs, "ClusterRole")
                          if any(key.startswith("rbac.authorization.k8s.io/aggregate-to-") and key.endswith(account)
                                 for key in (o["metadata"].get("labels") or {}))]
            assert aggregated == [], (name, aggregated)
        bound += len(bindings)
        if any(o["kind"] == "Deployment" for o in objs):
            assert len(bindings) == 1, (name, [b["metadata"]["name"] for b in bindings])
    assert bound == 6  # base, deploy/ and the four charts: the check above ran on each
    # With rbac.create=false the chart binds nothing: the cluster admin does, and answers for it.
    assert controller_bindings(helm_template("--set", "rbac.create=false"), ("", ""))[1] == []


def test_people_roles_aggregate_into_the_builtin_roles_without_escalation() -> None:
    roles = {obj["metadata"]["name"]: obj for obj in of_kind(base_objects(), "ClusterRole")}
    view, edit = roles["modelrollout-view"], roles["modelrollout-edit"]
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    # Only the resource itself: nobody gets status writes (the controller's alone) through these roles.
    assert {r for rule in edit["rules"] for r in rule["resources"]} == {"modelrollouts"}
    assert {v for rule in view["rules"] for v in rule["verbs"]} == {"get", "list", "watch"}


def test_registry_credentials_are_granted_per_namespace_by_name() -> None:
    role, binding = load_all(EXAMPLE_ROLE)
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == "moderation"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["mlflow-token"],
                              "verbs": ["get"]}]
    assert binding["kind"] == "RoleBinding" and binding["metadata"]["namespace"] == role["metadata"]["namespace"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": CONTROLLER_ROLE,
                                    "namespace": "modelrollout-system"}]
    # What it grants is what a rollout can name: spec.registry.credentialsSecretRef, a Secret in its namespace.
    crd = yaml.safe_load((REPO / "crds" / "modelrollout.io_modelrollouts.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "name" in spec["properties"]["registry"]["properties"]["credentialsSecretRef"]["properties"]


def test_exporter_has_no_api_token() -> None:
    objs = base_objects()
    account = next(o for o in of_kind(objs, "ServiceAccount") if o["metadata"]["name"] == "modelrollout-exporter")
    deployment = next(o for o in of_kind(objs, "Deployment") if o["metadata"]["name"] == "modelrollout-exporter")
    assert account["automountServiceAccountToken"] is False
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    bound = {s["name"] for o in objs if o["kind"] in ("RoleBinding", "ClusterRoleBinding") for s in o["subjects"]}
    assert "modelrollout-exporter" not in bound


# --- pods ------------------------------------------------------------------------------------------------


def test_pods_are_hardened_and_probed() -> None:
    deployments = of_kind(base_objects(), "Deployment")
    assert {d["metadata"]["name"] for d in deployments} == {"modelrollout-controller", "modelrollout-exporter"}
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0 and pod["securityContext"]["runAsGroup"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "hostNetwork" not in pod and "hostPID" not in pod
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert security.get("privileged", False) is False
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) == {"cpu", "memory"}, (container["name"], kind)
            ports = {port["name"] for port in container["ports"]}
            for probe in ("livenessProbe", "readinessProbe"):
                assert container[probe]["httpGet"]["port"] in ports
            # A read-only root needs somewhere to write: /tmp is an emptyDir and $HOME points there.
            assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
            assert {"name": "HOME", "value": "/tmp"} in container["env"]


def test_controller_runs_one_replica_with_the_liveness_endpoint() -> None:
    controller = next(d for d in of_kind(base_objects(), "Deployment")
                      if d["metadata"]["name"] == "modelrollout-controller")
    assert controller["spec"]["replicas"] == 1 and controller["spec"]["strategy"] == {"type": "Recreate"}
    container = controller["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["operator", "run", "--liveness", "http://0.0.0.0:8080/healthz",
                                 "--metrics-address", "0.0.0.0", "--metrics-port", "9100",  # noqa: S104
                                 "--scrape-interval", "30s", "--gate-protocol", "v2"]
    assert {"name": "metrics", "containerPort": 9100} in container["ports"]
    assert {"name": "healthz", "containerPort": 8080} in container["ports"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_services_select_their_pods() -> None:
    objs = base_objects()
    deployments = of_kind(objs, "Deployment")
    for service in of_kind(objs, "Service"):
        selector = service["spec"]["selector"]
        targets = [d for d in deployments
                   if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(targets) == 1, service["metadata"]["name"]
        ports = {p["name"] for c in targets[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


# --- Dockerfile ------------------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    value: str


def dockerfile() -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped (the parser directive too)."""
    instructions: list[Instruction] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, value = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip()))
    assert not pending, "dangling line continuation"
    return instructions


def stages() -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for instruction in dockerfile():
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def build_args() -> dict[str, str]:
    """ARGs declared before the first FROM (the only ones a FROM line can use)."""
    args: dict[str, str] = {}
    for instruction in dockerfile():
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, _, default = instruction.value.partition("=")
            args[name] = default
    return args


def test_dockerfile_is_multi_stage_from_a_pinned_base() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    names = []
    for stage in all_stages:
        image, *rest = stage[0].value.split()
        assert rest[:1] == ["AS"] or rest[:1] == ["as"], f"unnamed stage: {stage[0].value}"
        names.append(rest[1])
        resolved = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: build_args()[m.group(1) or m.group(2)], image)
        # An exact release (python:3.11.N-slim-<debian>) or a digest; never a floating tag.
        assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?|[^:@]+@sha256:[0-9a-f]{64}",
                            resolved), resolved
    final = all_stages[-1]
    copied_from = set(re.findall(r"--from=(\S+)", " ".join(i.value for i in final if i.keyword == "COPY")))
    assert copied_from and copied_from <= set(names[:-1]), "the runtime stage takes the build stage's output"
    assert not [i for i in dockerfile() if i.keyword == "ADD"], "COPY only: ADD fetches URLs and unpacks archives"


def test_dockerfile_runs_as_a_numeric_non_root_user_matching_the_pods() -> None:
    final = stages()[-1]
    users = [i.value for i in final if i.keyword == "USER"]
    assert users, "the runtime stage must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or (gid.isdigit() and int(gid) > 0))
    # Nothing after USER switches back to root.
    last_user = max(index for index, i in enumerate(final) if i.keyword == "USER")
    assert not [i for i in final[last_user:] if i.keyword == "RUN"]
    for deployment in of_kind(base_objects(), "Deployment"):
        pod = deployment["spec"]["template"]["spec"]["securityContext"]
        assert (pod["runAsUser"], pod["runAsGroup"]) == (int(uid), int(gid or uid))
    values = yaml.safe_load((REPO / "charts" / "modelrollout" / "values.yaml").read_text())
    assert (values["runAsUser"], values["runAsGroup"]) == (int(uid), int(gid or uid))


def test_dockerfile_entrypoint_is_the_package_script() -> None:
    final = stages()[-1]
    entrypoint = json.loads(next(i.value for i in reversed(final) if i.keyword == "ENTRYPOINT"))
    assert entrypoint == ["modelrollout"]  # exec form: signals reach the operator, no shell in between
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "modelrollout" in scripts
    command = json.loads(next(i.value for i in reversed(final) if i.keyword == "CMD"))
    controller = next(d for d in of_kind(base_objects(), "Deployment")
                      if d["metadata"]["name"] == "modelrollout-controller")
    assert command == controller["spec"]["template"]["spec"]["containers"][0]["args"]


def test_build_context_holds_what_the_build_copies() -> None:
    """.dockerignore allow-lists the context; every COPY source and the package's readme must be in it."""
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "allow-list: ignore everything, then re-include"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources = []
    for stage in stages():
        for instruction in stage:
            if instruction.keyword == "COPY" and "--from=" not in instruction.value:
                *srcs, _ = shlex.split(instruction.value)
                sources += srcs
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"]
    for source in [*sources, readme]:
        assert source.rstrip("/") in allowed, source
        assert (REPO / source).exists(), source


# --- admission policies ----------------------------------------------------------------------------------


def test_controller_writes_policy_compares_every_metadata_field_it_guards() -> None:
    """The controller may change only its own finalizer (tests/integration/test_command_policy.py shows the
    policy on the real API server). Each guarded metadata field is compared with its old value, and guarded by
    has() on both sides: a field that appears or disappears is a change too. ownerReferences among them: an
    owner the controller made up would have the garbage collector delete the rollout."""
    policy = next(obj for obj in of_kind(base_objects(), "ValidatingAdmissionPolicy")
                  if obj["metadata"]["name"] == "modelrollout-controller-writes")
    expressions = [" ".join(v["expression"].split()) for v in policy["spec"]["validations"]]
    assert "object.spec == oldObject.spec" in expressions
    for field in ("labels", "annotations", "ownerReferences"):
        guarded = [e for e in expressions
                   if f"has(object.metadata.{field}) == has(oldObject.metadata.{field})" in e
                   and f"object.metadata.{field} == oldObject.metadata.{field}" in e
                   and f"!has(object.metadata.{field}) ||" in e]
        assert len(guarded) == 1, field
    owners = next(v for v in policy["spec"]["validations"] if "ownerReferences" in v["expression"])
    assert owners["reason"] == "Forbidden" and "not its owner references" in owners["message"]


def test_command_policy_refuses_every_new_command_from_argo_cds_application_controller() -> None:
    """A command committed to Git and synced is not an on-call action, whatever actor it names: the account Argo CD
    syncs as may write no new command (the actor check alone admitted one naming that account itself). The
    validations are ANDed, so this one refuses it whatever the others say; tests/integration/test_command_policy.py
    runs the policy on the real API server."""
    policy = next(obj for obj in of_kind(base_objects(), "ValidatingAdmissionPolicy")
                  if obj["metadata"]["name"] == "modelrollout-command-actor")
    variables = {v["name"]: " ".join(v["expression"].split()) for v in policy["spec"]["variables"]}
    assert variables["argocdSync"] == \
        "variables.requester == 'system:serviceaccount:argocd:argocd-application-controller'"
    assert variables["isNewCommand"] == "variables.command != '' && variables.command != variables.previous"
    refusal = [v for v in policy["spec"]["validations"]
               if " ".join(v["expression"].split()) == "!variables.isNewCommand || !variables.argocdSync"]
    assert len(refusal) == 1 and refusal[0]["reason"] == "Forbidden"
    assert "committed to Git is refused" in refusal[0]["messageExpression"]
    # argocd-server's exception (Argo CD's actions) names argocd-server's account only.
    assert "argocd-application-controller" not in variables["argocdAction"]
