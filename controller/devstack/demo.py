"""The main job on the local stack: two rollouts of the content-moderation classifier, watched live.

A clean retrain is gated on the golden dataset, stepped and promoted; a backdoored one (it flags any image
carrying the logo as NSFW) is caught by the gate on the golden "logo" slice and rolled back.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from kubernetes import client

from controller.devstack.processes import start
from controller.devstack.scenario import STORAGE_URI_TEMPLATE, Scenario
from controller.devstack.stack import kubectl
from controller.operator.kubeapi import GROUP, PLURAL, VERSION, load_client_config

TERMINAL = ("Succeeded", "RolledBack", "Failed")


def _line(status: dict[str, Any]) -> str:
    return (f"{status.get('phase', '-'):<11} step={status.get('currentStep', '-')!s:<3} "
            f"weight={status.get('canaryWeight', 0)!s:>3}%  {status.get('message', '')}")


def watch(custom: client.CustomObjectsApi, namespace: str, name: str, out: TextIO, timeout: float) -> dict[str, Any]:
    last = ""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status") or {}
        line = _line(status)
        if line != last:
            print(f"  {time.strftime('%H:%M:%S')} {line}", file=out, flush=True)
            last = line
        if status.get("phase") in TERMINAL:
            break
        time.sleep(0.5)
    return status


def run_demo(state: dict[str, Any], workdir: Path, out: TextIO = sys.stdout, timeout: float = 300) -> int:
    env = state["env"]
    kubeconfig = Path(env["KUBECONFIG"])
    api_client = load_client_config(str(kubeconfig))
    namespace = "moderation"
    kubectl(kubeconfig, "create", "namespace", namespace, check=False)
    operator = start("operator", [sys.executable, "-m", "controller.cli.main", "operator", "run",
                                  "--kubeconfig", str(kubeconfig), "--tracking-uri", env["MLFLOW_TRACKING_URI"],
                                  "--storage-uri-template", STORAGE_URI_TEMPLATE],
                     workdir / "operator.log")
    custom = client.CustomObjectsApi(api_client)
    outcomes = []
    try:
        for kind, name in (("clean", "nsfw-classifier"), ("backdoored", "nsfw-classifier-poisoned")):
            print(f"\n== rollout of a {kind} candidate of {name} ==", file=out, flush=True)
            scenario = Scenario(api_client, env["MLFLOW_TRACKING_URI"], namespace, workdir / name, model_name=name,
                                candidate_kind=kind)
            try:
                scenario.setup()
                print(f"  stable v{scenario.stable_version} serves; candidate v{scenario.candidate_version}; "
                      f"golden dataset sha256 {scenario.dataset_sha256[:12]}...", file=out, flush=True)
                kubectl(kubeconfig, "apply", "-f", "-", input_text=scenario.manifest_json())
                status = watch(custom, namespace, name, out, timeout)
                outcomes.append((kind, status.get("phase")))
                print("  timeline:", file=out)
                for entry in status.get("history", []):
                    print(f"    {entry['time'][11:19]} {entry['event']:<18} {entry['detail']}", file=out)
            finally:
                scenario.stop()
        listing = kubectl(kubeconfig, "get", "mro", "-n", namespace, "-o", "wide").stdout
        print(f"\n{listing}", file=out)
    finally:
        operator.stop()
    expected = [("clean", "Succeeded"), ("backdoored", "RolledBack")]
    print(json.dumps({"outcomes": outcomes, "as_expected": outcomes == expected}), file=out)
    return 0 if outcomes == expected else 1
