"""The shipped admission policies on the real API server: a new or changed command annotation must name the
requester as its actor (deploy/base/command-policy.yaml), and the controller may change only its own finalizer
on a ModelRollout (deploy/base/controller-policy.yaml).

The requester is set by impersonation (`kubectl --as=bob --as-group=system:masters`, from the admin
kubeconfig): the API server's request.userInfo.username is then bob. The policy and its binding are
cluster-scoped and other tests in the session annotate rollouts as the admin with made-up actors, so the
binding here is the shipped one narrowed to this test's namespace (a namespaceSelector on a label put on
it), under names of its own, and both are deleted at the end.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.api.commands import COMMAND_ANNOTATION, Command, CommandAction, parse_command
from controller.operator.kubeapi import FIELD_MANAGER, FINALIZER
from tests.conftest import run_kubectl

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "deploy" / "base" / "command-policy.yaml"
CONTROLLER_POLICY = REPO / "deploy" / "base" / "controller-policy.yaml"
CONTROLLER = "system:serviceaccount:modelrollout-system:modelrollout-controller"  # as deploy/base names it
SAMPLE = REPO / "examples" / "nsfw-classifier.yaml"
SCOPE_LABEL = "test.modelrollout.io/command-policy"
ACTIVE_WITHIN = 30.0  # seconds: a new policy reaches the admission chain after a short delay

Obj = dict[str, Any]


def as_user(user: str) -> tuple[str, ...]:
    """Impersonate `user`, with the admin's group so RBAC lets it do anything: only the policy can refuse."""
    return (f"--as={user}", "--as-group=system:masters")


def annotate(kubeconfig: Path, namespace: str, name: str, user: str, value: str) -> tuple[int, str]:
    result = run_kubectl(kubeconfig, *as_user(user), "annotate", "--overwrite", "mro", name, "-n", namespace,
                         f"{COMMAND_ANNOTATION}={value}")
    return result.returncode, result.stderr


def stored(kubeconfig: Path, namespace: str, name: str) -> Obj:
    result = run_kubectl(kubeconfig, "get", "mro", name, "-n", namespace, "-o", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def stored_command(kubeconfig: Path, namespace: str, name: str) -> str | None:
    return (stored(kubeconfig, namespace, name)["metadata"].get("annotations") or {}).get(COMMAND_ANNOTATION)


def command(actor: str, action: CommandAction = CommandAction.ABORT) -> str:
    """What the CLI writes: Command.to_annotation, with a fresh id."""
    return Command(id=uuid.uuid4().hex, action=action, actor=actor).to_annotation()


def rollout(name: str, annotations: dict[str, str] | None = None) -> Obj:
    obj = yaml.safe_load(SAMPLE.read_text())
    obj["metadata"]["name"] = name
    if annotations:
        obj["metadata"]["annotations"] = annotations
    return obj


def create(kubeconfig: Path, namespace: str, obj: Obj, user: str | None = None) -> tuple[int, str]:
    impersonation = as_user(user) if user else ()
    result = run_kubectl(kubeconfig, *impersonation, "create", "-n", namespace, "-f", "-", input_text=json.dumps(obj))
    return result.returncode, result.stderr


@pytest.fixture
def policy_in_namespace(kubeconfig: Path, namespace: str) -> Iterator[str]:
    with shipped_policy_in(kubeconfig, namespace, POLICY) as name:
        yield name


@contextlib.contextmanager
def shipped_policy_in(kubeconfig: Path, namespace: str, path: Path) -> Iterator[str]:
    """A shipped policy and binding, the binding limited to `namespace`; deleted afterwards, whatever happens."""
    shipped = {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text()) if doc}
    assert set(shipped) == {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    policy = copy.deepcopy(shipped["ValidatingAdmissionPolicy"])
    binding = copy.deepcopy(shipped["ValidatingAdmissionPolicyBinding"])
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert "matchResources" not in binding["spec"], "the shipped binding covers every namespace"
    name = f"{policy['metadata']['name']}-{namespace}"
    policy["metadata"]["name"] = binding["metadata"]["name"] = binding["spec"]["policyName"] = name
    binding["spec"]["matchResources"] = {"namespaceSelector": {"matchLabels": {SCOPE_LABEL: namespace}}}

    result = run_kubectl(kubeconfig, "label", "namespace", namespace, f"{SCOPE_LABEL}={namespace}")
    assert result.returncode == 0, result.stderr
    try:
        result = run_kubectl(kubeconfig, "create", "-f", "-",
                             input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": [policy, binding]}))
        assert result.returncode == 0, result.stderr
        yield name
    finally:
        for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
            run_kubectl(kubeconfig, "delete", kind, name, "--ignore-not-found")


def wait_until_refusing(kubeconfig: Path, namespace: str, name: str) -> str:
    """Forge bob writing alice's name until the policy refuses it; return the refusal. A forgery that got through
    before the policy was active is harmless here: each try writes a new id, so it is a change again."""
    deadline = time.monotonic() + ACTIVE_WITHIN
    while True:
        code, stderr = annotate(kubeconfig, namespace, name, "bob", command("alice"))
        if code != 0:
            return stderr
        assert time.monotonic() < deadline, f"the policy did not refuse a forged actor within {ACTIVE_WITHIN:.0f}s"
        time.sleep(0.5)


def test_the_actor_must_be_the_requester(kubeconfig: Path, namespace: str, policy_in_namespace: str) -> None:
    assert create(kubeconfig, namespace, rollout("nsfw"))[0] == 0  # no annotation: nothing to check

    refusal = wait_until_refusing(kubeconfig, namespace, "nsfw")
    # The refusal names the policy, the annotation and the actor the requester may write.
    assert policy_in_namespace in refusal, refusal
    assert f"the {COMMAND_ANNOTATION} annotation must name the requester as its actor" in refusal, refusal
    assert 'expected "actor": "bob"' in refusal, refusal

    # alice sends a command as herself: accepted, and stored as written.
    alices = command("alice", CommandAction.PROMOTE)
    assert annotate(kubeconfig, namespace, "nsfw", "alice", alices) == (0, "")
    assert stored_command(kubeconfig, namespace, "nsfw") == alices

    # bob, claiming to be alice, is refused and the stored command stays alice's own.
    code, refusal = annotate(kubeconfig, namespace, "nsfw", "bob", command("alice"))
    assert code != 0 and COMMAND_ANNOTATION in refusal and '"actor": "bob"' in refusal, refusal
    assert stored_command(kubeconfig, namespace, "nsfw") == alices

    # bob changes the spec and leaves alice's command as it is (an Argo CD sync, a spec edit): accepted.
    result = run_kubectl(kubeconfig, *as_user("bob"), "patch", "mro", "nsfw", "-n", namespace, "--type=merge",
                         "-p", json.dumps({"spec": {"progressDeadline": "45m"}}))
    assert result.returncode == 0, result.stderr
    after_edit = stored(kubeconfig, namespace, "nsfw")
    assert after_edit["spec"]["progressDeadline"] == "45m"
    assert after_edit["metadata"]["annotations"][COMMAND_ANNOTATION] == alices
    # So does writing the same value again (`kubectl annotate --overwrite` with what is there).
    assert annotate(kubeconfig, namespace, "nsfw", "bob", alices)[0] == 0

    # bob as himself: accepted, in the CLI's form and in the compact form (Argo CD's Lua writes that one).
    bobs = command("bob")
    assert annotate(kubeconfig, namespace, "nsfw", "bob", bobs) == (0, "")
    assert parse_command(stored_command(kubeconfig, namespace, "nsfw") or "").actor == "bob"
    compact = json.dumps({"action": "retry", "actor": "bob", "id": uuid.uuid4().hex}, separators=(",", ":"))
    assert annotate(kubeconfig, namespace, "nsfw", "bob", compact) == (0, "")

    # A name that only starts like bob's, or bob's name inside another value, is not bob as actor.
    for forged in (command("bobby"), json.dumps({"action": "abort", "actor": "alice", "id": '"actor": "bob"'})):
        code, refusal = annotate(kubeconfig, namespace, "nsfw", "bob", forged)
        assert code != 0 and COMMAND_ANNOTATION in refusal, (forged, refusal)

    # Argo CD's actions (deploy/argocd: the Lua writes this exact form) as a ServiceAccount of its namespace:
    # actor "argocd" is accepted, a person is not; and nobody else may write "argocd".
    argocd_sa = "system:serviceaccount:argocd:argocd-server"
    action = '{"action":"promote","actor":"argocd","id":"argocd-promote-' + uuid.uuid4().hex + '"}'
    assert annotate(kubeconfig, namespace, "nsfw", argocd_sa, action) == (0, "")
    assert parse_command(stored_command(kubeconfig, namespace, "nsfw") or "").actor == "argocd"
    code, refusal = annotate(kubeconfig, namespace, "nsfw", argocd_sa, command("alice"))
    assert code != 0 and COMMAND_ANNOTATION in refusal, refusal
    code, refusal = annotate(kubeconfig, namespace, "nsfw", "bob", action.replace("promote-", "promote-b"))
    assert code != 0 and COMMAND_ANNOTATION in refusal, refusal
    syncing = "system:serviceaccount:argocd:argocd-application-controller"  # a command committed to Git
    code, refusal = annotate(kubeconfig, namespace, "nsfw", syncing, action.replace("promote-", "promote-g"))
    assert code != 0 and COMMAND_ANNOTATION in refusal, refusal
    # Not even under its own name: the account that syncs from Git writes no command at all.
    code, refusal = annotate(kubeconfig, namespace, "nsfw", syncing, command(syncing))
    assert code != 0 and "Argo CD syncing from Git" in refusal, refusal

    # Creating a rollout that already carries a forged command is refused too; removing a command is not a command.
    code, refusal = create(kubeconfig, namespace, rollout("forged", {COMMAND_ANNOTATION: command("alice")}), "bob")
    assert code != 0 and COMMAND_ANNOTATION in refusal, refusal
    assert create(kubeconfig, namespace, rollout("honest", {COMMAND_ANNOTATION: command("bob")}), "bob")[0] == 0
    result = run_kubectl(kubeconfig, *as_user("bob"), "annotate", "mro", "nsfw", "-n", namespace,
                         f"{COMMAND_ANNOTATION}-")
    assert result.returncode == 0, result.stderr


def test_a_name_json_would_escape_is_refused(kubeconfig: Path, namespace: str, policy_in_namespace: str) -> None:
    """A backslash in the name could spell someone else's in JSON (`\\u0061lice` is alice): such names are refused,
    even for a command that names them exactly."""
    assert create(kubeconfig, namespace, rollout("nsfw"))[0] == 0
    wait_until_refusing(kubeconfig, namespace, "nsfw")
    escaped = "\\u0061lice"
    value = '{"action": "abort", "actor": "' + escaped + '", "id": "' + uuid.uuid4().hex + '"}'
    assert parse_command(value).actor == "alice"  # what the controller would have recorded
    code, refusal = annotate(kubeconfig, namespace, "nsfw", escaped, value)
    assert code != 0 and "quote or a backslash" in refusal, refusal


def test_the_controller_may_change_only_its_own_finalizer(kubeconfig: Path, namespace: str) -> None:
    """RBAC grants the controller `patch` on the whole ModelRollout; the policy narrows it to the finalizer."""
    def as_controller(*args: str, input_text: str | None = None) -> tuple[int, str]:
        result = run_kubectl(kubeconfig, *as_user(CONTROLLER), *args, input_text=input_text)
        return result.returncode, result.stderr

    def apply_finalizers(finalizers: list[str] | None) -> tuple[int, str]:
        """The controller's own write (RolloutStore.apply_finalizer): server-side apply of metadata.finalizers."""
        meta: Obj = {"name": "nsfw", "namespace": namespace, **({"finalizers": finalizers} if finalizers else {})}
        body = {"apiVersion": "modelrollout.io/v1alpha1", "kind": "ModelRollout", "metadata": meta}
        return as_controller("apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", "-",
                             input_text=json.dumps(body))

    with shipped_policy_in(kubeconfig, namespace, CONTROLLER_POLICY) as name:
        assert create(kubeconfig, namespace, rollout("nsfw"))[0] == 0
        deadline = time.monotonic() + ACTIVE_WITHIN
        for minutes in range(31, 10_000):  # a new value each time: a change until the policy refuses it
            code, refusal = as_controller("patch", "mro", "nsfw", "-n", namespace, "--type=merge", "-p",
                                          json.dumps({"spec": {"progressDeadline": f"{minutes}m"}}))
            if code != 0:
                break
            assert time.monotonic() < deadline, f"the policy did not refuse within {ACTIVE_WITHIN:.0f}s"
            time.sleep(0.5)
        assert name in refusal and "may change only its finalizer on a ModelRollout, not its spec" in refusal, refusal

        # Its own finalizer, put on and taken off by the apply the controller makes: accepted.
        assert apply_finalizers([FINALIZER]) == (0, "")
        assert stored(kubeconfig, namespace, "nsfw")["metadata"]["finalizers"] == [FINALIZER]
        assert apply_finalizers(None) == (0, "")
        assert not stored(kubeconfig, namespace, "nsfw")["metadata"].get("finalizers")

        # Anything else on the object: refused, whatever the verb.
        for args, why in (
                (("annotate", "mro", "nsfw", "-n", namespace, f"{COMMAND_ANNOTATION}={command(CONTROLLER)}"),
                 "not its labels or annotations"),
                (("label", "mro", "nsfw", "-n", namespace, "team=other"), "not its labels or annotations"),
                (("patch", "mro", "nsfw", "-n", namespace, "--type=merge", "-p",
                  json.dumps({"metadata": {"finalizers": ["example.com/other"]}})), "only its own finalizer"),
                # A made-up owner: the garbage collector would delete the rollout, its owner being missing.
                (("patch", "mro", "nsfw", "-n", namespace, "--type=merge", "-p", json.dumps({"metadata": {
                    "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "gone",
                                         "uid": "00000000-0000-0000-0000-000000000000"}]}})),
                 "not its owner references")):
            code, refusal = as_controller(*args)
            assert code != 0 and why in refusal, (args, refusal)
        code, refusal = apply_finalizers([FINALIZER, "example.com/other"])
        assert code != 0 and "only its own finalizer" in refusal, refusal

        # Its status is another resource, and anyone else is not the controller: neither is matched.
        assert as_controller("patch", "mro", "nsfw", "-n", namespace, "--subresource=status", "--type=merge",
                             "-p", json.dumps({"status": {"message": "written by the controller"}})) == (0, "")
        result = run_kubectl(kubeconfig, *as_user("bob"), "patch", "mro", "nsfw", "-n", namespace, "--type=merge",
                             "-p", json.dumps({"spec": {"progressDeadline": "45m"}}))
        assert result.returncode == 0, result.stderr
