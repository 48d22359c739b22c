"""The on-call CLI against the real API server: reading, commands with the caller's identity, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.api.commands import COMMAND_ANNOTATION, parse_command
from controller.devstack.controlplane import ControlPlane
from controller.devstack.processes import free_port
from controller.operator.kubeapi import FINALIZER
from tests.conftest import run_kubectl

pytestmark = pytest.mark.integration
SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nsfw-classifier.yaml"
STATUS = {
    "phase": "RolledBack", "observedGeneration": 1, "currentStep": 2, "canaryWeight": 0,
    "message": "Rolled back: nsfw-rate canary 6.2% (31/500) vs stable 0.2% (98/49000) at step 3/6 (10%).",
    "candidate": {"version": "7"}, "stable": {"version": "6"},
    "gate": {"outcome": "pass", "datasetSha256": "ab" * 32, "reason": "9 checks passed",
             "verdicts": [{"name": "accuracy", "outcome": "pass", "reason": "0.981 >= 0.97", "evidence": {}}]},
    "analysis": {"verdicts": [{"name": "nsfw-rate", "outcome": "fail", "reason": "canary 6.2% vs stable 0.2%",
                               "evidence": {"canary": {"events": 31, "total": 500}, "statistic": 23.1}}]},
    "rollback": {"actor": "modelrollout-controller", "reason": "nsfw-rate failed", "timeToRecoverSeconds": 0.41},
    "history": [{"time": "2026-11-27T03:00:00Z", "event": "WeightChanged", "detail": "step 3/6: candidate 7 at 10%",
                 "actor": "modelrollout-controller"},
                {"time": "2026-11-27T03:02:00Z", "event": "RolledBack", "detail": "nsfw-rate failed",
                 "actor": "modelrollout-controller"}],
}


def cli(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli.main", *args, "--kubeconfig", str(kubeconfig)],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def rollout(kubeconfig: Path, namespace: str) -> str:
    manifest = yaml.safe_load(SAMPLE.read_text())
    assert run_kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", input_text=json.dumps(manifest)).returncode == 0
    patched = run_kubectl(kubeconfig, "patch", "mro", "nsfw-classifier", "-n", namespace, "--subresource=status",
                          "--type=merge", "-p", json.dumps({"status": STATUS}))
    assert patched.returncode == 0, patched.stderr
    return "nsfw-classifier"


def annotation(kubeconfig: Path, namespace: str, name: str) -> Any:
    obj = json.loads(run_kubectl(kubeconfig, "get", "mro", name, "-n", namespace, "-o", "json").stdout)
    return obj["metadata"].get("annotations", {}).get(COMMAND_ANNOTATION)


def test_list_get_history_explain_are_plain_when_piped(kubeconfig: Path, namespace: str, rollout: str) -> None:
    listed = cli(kubeconfig, "list", "-n", namespace)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split("\n")[1].split()[:6] == ["nsfw-classifier", "RolledBack", "3/6", "0%", "7", "6"]
    got = cli(kubeconfig, "get", rollout, "-n", namespace)
    assert "Phase:      RolledBack" in got.stdout and "\033[" not in got.stdout
    assert "fail" in got.stdout and "nsfw-rate" in got.stdout and "ab" * 32 in got.stdout
    history = cli(kubeconfig, "history", rollout, "-n", namespace).stdout.splitlines()
    assert [line.split()[1] for line in history] == ["WeightChanged", "RolledBack"]
    explained = cli(kubeconfig, "explain", rollout, "-n", namespace).stdout
    assert "rolls out version 7" in explained and "in place of version 6" in explained
    assert "Recovery took 0.41 s" in explained and '"events": 31' in explained


def test_get_says_a_rollout_is_being_deleted_and_whether_the_controller_holds_it(kubeconfig: Path, namespace: str,
                                                                                 rollout: str) -> None:
    def set_finalizers(finalizers: list[str] | None) -> None:
        patched = run_kubectl(kubeconfig, "patch", "mro", rollout, "-n", namespace, "--type=merge", "-p",
                              json.dumps({"metadata": {"finalizers": finalizers}}))
        assert patched.returncode == 0, patched.stderr

    # No operator runs here: the finalizers alone keep the deleted object readable (and none can be added
    # once it is deleted, so both go on first).
    set_finalizers(["test.modelrollout.io/hold", FINALIZER])
    assert "Deleting:" not in cli(kubeconfig, "get", rollout, "-n", namespace).stdout
    deleted = run_kubectl(kubeconfig, "delete", "mro", rollout, "-n", namespace, "--wait=false")
    assert deleted.returncode == 0, deleted.stderr
    got = cli(kubeconfig, "get", rollout, "-n", namespace).stdout
    assert "Deleting:   since 20" in got and "held by the controller until it has rolled back" in got, got
    set_finalizers(["test.modelrollout.io/hold"])
    got = cli(kubeconfig, "get", rollout, "-n", namespace).stdout
    assert "Deleting:   since 20" in got and "held by the controller" not in got, got
    set_finalizers(None)


def test_watch_ends_with_the_outcome_in_the_exit_code(kubeconfig: Path, namespace: str, rollout: str) -> None:
    watched = cli(kubeconfig, "get", rollout, "--watch", "-n", namespace)
    assert watched.returncode == 1 and "RolledBack" in watched.stdout  # like `kubectl rollout status`
    patched = run_kubectl(kubeconfig, "patch", "mro", rollout, "-n", namespace, "--subresource=status",
                          "--type=merge", "-p", json.dumps({"status": {"phase": "Succeeded"}}))
    assert patched.returncode == 0, patched.stderr
    assert cli(kubeconfig, "get", rollout, "--watch", "-n", namespace).returncode == 0


def test_watch_waits_past_a_finished_earlier_spec(kubeconfig: Path, namespace: str, rollout: str) -> None:
    """`kubectl apply` of a new version, then `get --watch`: the old RolledBack is not this rollout's end."""
    manifest = yaml.safe_load(SAMPLE.read_text())
    manifest["spec"]["model"]["version"] = "8"
    assert run_kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", input_text=json.dumps(manifest)).returncode == 0
    watcher = subprocess.Popen([sys.executable, "-m", "controller.cli.main", "get", rollout, "--watch", "-n",
                                namespace, "--kubeconfig", str(kubeconfig)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        assert watcher.poll() is None, "the watch ended on the previous spec's phase"
        patched = run_kubectl(kubeconfig, "patch", "mro", rollout, "-n", namespace, "--subresource=status",
                              "--type=merge", "-p", json.dumps({"status": {"phase": "Succeeded",
                                                                           "observedGeneration": 2}}))
        assert patched.returncode == 0, patched.stderr
        assert watcher.wait(timeout=30) == 0
    finally:
        watcher.kill()


def test_the_command_annotation_is_owned_by_the_cli_in_managed_fields(kubeconfig: Path, namespace: str,
                                                                       rollout: str) -> None:
    assert cli(kubeconfig, "abort", rollout, "-n", namespace, "--wait", "0").returncode == 0  # no operator here
    obj = json.loads(run_kubectl(kubeconfig, "get", "mro", rollout, "-n", namespace, "-o", "json",
                                 "--show-managed-fields").stdout)
    owners = [m["manager"] for m in obj["metadata"]["managedFields"]
              if COMMAND_ANNOTATION in json.dumps(m.get("fieldsV1", {}))]
    assert owners == ["kubectl-modelrollout"]


def test_machine_readable_output(kubeconfig: Path, namespace: str, rollout: str) -> None:
    as_json = json.loads(cli(kubeconfig, "get", rollout, "-n", namespace, "-o", "json").stdout)
    assert as_json["status"]["phase"] == "RolledBack"
    as_yaml = yaml.safe_load(cli(kubeconfig, "list", "-A", "-o", "yaml").stdout)
    assert any(item["metadata"]["namespace"] == namespace for item in as_yaml["items"])


@pytest.mark.parametrize(("args", "action", "full"), [
    (("abort",), "abort", False), (("promote",), "promote", False), (("promote", "--full"), "promote", True),
    (("retry",), "retry", False), (("rollback",), "rollback", False)])
def test_commands_set_the_annotation_with_the_callers_identity(kubeconfig: Path, namespace: str, rollout: str,
                                                               args: tuple[str, ...], action: str,
                                                               full: bool) -> None:
    before = json.loads(run_kubectl(kubeconfig, "get", "mro", rollout, "-n", namespace, "-o", "json").stdout)
    sent = cli(kubeconfig, args[0], rollout, *args[1:], "-n", namespace, "--wait", "0")  # no operator here
    assert sent.returncode == 0, sent.stderr
    command = parse_command(annotation(kubeconfig, namespace, rollout))
    assert (str(command.action), command.full, command.actor) == (action, full, "modelrollout-admin")
    after = json.loads(run_kubectl(kubeconfig, "get", "mro", rollout, "-n", namespace, "-o", "json").stdout)
    assert after["spec"] == before["spec"] and after["metadata"]["generation"] == before["metadata"]["generation"]


def test_clear_errors(kubeconfig: Path, namespace: str, control_plane: ControlPlane, tmp_path: Path) -> None:
    missing = cli(kubeconfig, "get", "nothing-here", "-n", namespace)
    assert missing.returncode == 1
    events = (f"kubectl get events -n {namespace} --field-selector involvedObject.kind=ModelRollout,"
              "involvedObject.name=nothing-here")
    assert missing.stderr.strip() == (f"error: ModelRollout {namespace}/nothing-here: not found; if it was deleted, "
                                      f"its Events tell how it ended (while the API server keeps them): `{events}`")
    listed = run_kubectl(kubeconfig, *events.split()[1:])  # the hint as printed: the API server takes its selector
    assert listed.returncode == 0, listed.stderr
    alice = control_plane.write_kubeconfig(tmp_path / "alice", "alice", control_plane.tokens["alice"], namespace)
    denied = cli(alice, "abort", "nsfw-classifier", "-n", namespace)
    assert denied.returncode == 1 and "no permission" in denied.stderr and "Traceback" not in denied.stderr
    nowhere = tmp_path / "nowhere"
    nowhere.write_text(alice.read_text().replace(control_plane.url, f"https://127.0.0.1:{free_port()}"))
    unreachable = cli(nowhere, "list", "-n", namespace)
    assert unreachable.returncode == 1 and unreachable.stderr.startswith("error: no cluster")


def test_an_unwritable_html_path_and_a_closed_pipe_are_plain_errors(kubeconfig: Path, namespace: str, rollout: str,
                                                                      tmp_path: Path) -> None:
    for target, reason in ((tmp_path / "no-such-dir" / "page.html", "No such file or directory"),
                           (tmp_path, "Is a directory")):
        result = cli(kubeconfig, "explain", rollout, "-n", namespace, "--html", str(target))
        assert result.returncode == 1 and result.stderr.strip() == f"error: cannot write {target}: {reason}"
    # The reader has gone before the first byte (`| head -c0`): no traceback, the shell's SIGPIPE status.
    read_end, write_end = os.pipe()
    os.close(read_end)
    closed = subprocess.run([sys.executable, "-m", "controller.cli.main", "get", rollout, "-n", namespace, "-o", "json",
                             "--kubeconfig", str(kubeconfig)], stdout=write_end, stderr=subprocess.PIPE, text=True,
                            timeout=60, check=False)
    os.close(write_end)
    assert closed.returncode == 141 and closed.stderr == "", closed.stderr
