"""The main job on the local stack: three rollouts of the content-moderation classifier, watched live.

A clean retrain is gated on the golden dataset, stepped and promoted; a backdoored one (it flags any image
carrying the logo as NSFW) is caught by the gate (the golden logo images raise its nsfw false-positive rate)
and rolled back. The third is the same backdoor against a golden set that never saw the logo: it passes the
gate, takes 10% of live traffic, and the class-rate judge (canary against stable, in Prometheus) rolls it back.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from kubernetes import client

from controller.api.serialization import parse_time
from controller.api.status import TERMINAL_PHASES
from controller.cli.oncall import Style
from controller.cli.program import program
from controller.devstack.dataplane import DataPlane, LiveTraffic, TrafficMix, start_exporter
from controller.devstack.processes import ManagedProcess, StackError, start
from controller.devstack.prometheus_server import PrometheusServer
from controller.devstack.scenario import STORAGE_URI_TEMPLATE, Scenario, golden_config_map_name
from controller.devstack.stack import kubectl, record_process, state_dir_option
from controller.operator.kubeapi import GROUP, PLURAL, VERSION, load_client_config


def _line(status: dict[str, Any], style: Style) -> str:
    # status.step ("2/4", 1-based) as kubectl's STEP column shows it, not the 0-based currentStep.
    phase = status.get("phase", "-")
    # Padded outside the colour codes, which take no room on the screen.
    return (f"{style.phase(phase)}{' ' * (11 - len(phase))} step={status.get('step') or '-'!s:<4} "
            f"weight={status.get('canaryWeight', 0)!s:>3}%  {status.get('message', '')}")


def watch(custom: client.CustomObjectsApi, namespace: str, name: str, out: TextIO, timeout: float,
          needed: Sequence[ManagedProcess] = ()) -> dict[str, Any]:
    """Print each change of the rollout's status until it ends; stop at once if a process in `needed` (the operator,
    the exporter) has exited: nothing would move any more, and the wait would only end at the timeout."""
    last = ""
    style = Style(out)  # the on-call CLI's colours on a terminal, plain text when piped
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status") or {}
        line = _line(status, style)
        if line != last:
            print(f"  {time.strftime('%H:%M:%S')} {line}", file=out, flush=True)
            last = line
        if status.get("phase") in TERMINAL_PHASES:
            break
        for process in needed:
            if not process.alive():
                raise StackError(f"the demo's {process.name} exited (pid {process.pid}); the end of its log "
                                 f"{process.log}: {process.log_tail() or '(empty)'}")
        time.sleep(0.5)
    return status


@dataclass(frozen=True)
class DemoRollout:
    title: str
    name: str
    kind: str
    golden_logo_share: float  # 0: the golden dataset never saw the trigger
    live: bool  # live traffic through the InferenceService, judged in Prometheus
    expected: str  # phase
    expected_cause: str | None = None


ROLLOUTS = (
    DemoRollout("a clean candidate", "nsfw-classifier", "clean", 0.012, False, "Succeeded"),
    DemoRollout("a backdoored candidate", "nsfw-classifier-poisoned", "backdoored", 0.012, False, "RolledBack",
                "GateFailed"),
    DemoRollout("a backdoored candidate, golden dataset without the logo, live traffic", "nsfw-classifier-live",
                "backdoored", 0.0, True, "RolledBack", "AnalysisFailed"),
)


def left_by_a_run(api_client: client.ApiClient, namespace: str) -> list[str]:
    """The objects an earlier demo run left in `namespace` (finished, or killed part way): its ModelRollouts,
    InferenceServices and golden-dataset ConfigMaps, as kind/name."""
    names = {rollout.name for rollout in ROLLOUTS}
    custom = client.CustomObjectsApi(api_client)
    rollouts = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    services = custom.list_namespaced_custom_object("serving.kserve.io", "v1beta1", namespace,
                                                    "inferenceservices")["items"]
    config_maps = client.CoreV1Api(api_client).list_namespaced_config_map(namespace).items
    return ([f"modelrollout/{o['metadata']['name']}" for o in rollouts if o["metadata"]["name"] in names]
            + [f"inferenceservice/{o['metadata']['name']}" for o in services if o["metadata"]["name"] in names]
            + [f"configmap/{o.metadata.name}" for o in config_maps
               if o.metadata.name in {golden_config_map_name(name) for name in names}])


def run_demo(state: dict[str, Any], workdir: Path, out: TextIO = sys.stdout, timeout: float = 300) -> int:
    env = state["env"]
    # Checked before anything starts: what the demo needs of the stack, said in words.
    if "MLFLOW_TRACKING_URI" not in env:
        raise StackError(f"the demo needs the stack's MLflow: run `{program()} dev up` without --no-mlflow")
    if not state.get("prometheusRoot"):
        raise StackError(f"the demo needs the stack's Prometheus: run `{program()} dev up` without "
                         "--no-prometheus")
    kubeconfig = Path(env["KUBECONFIG"])
    api_client = load_client_config(str(kubeconfig))
    namespace = "moderation"
    # Refused before anything starts: the demo creates its objects under fixed names, and a re-applied ModelRollout
    # would still show the earlier run's final phase, which the watch below would report as this run's outcome.
    if left := left_by_a_run(api_client, namespace):
        option = state_dir_option(state.get("stateDir"))
        raise StackError(f"the demo has already run on this stack (it left {', '.join(left)} in namespace "
                         f"{namespace}) and runs once per stack: start a fresh one with `{program()} dev down{option}` "
                         f"then `{program()} dev up{option}`, and run the demo again")
    kubectl(kubeconfig, "create", "namespace", namespace, check=False)
    custom = client.CustomObjectsApi(api_client)
    # Each process the demo starts joins the stack's record, so `dev down` stops it even after a `kill -9` of the demo.
    record: Callable[[ManagedProcess], None] = (partial(record_process, Path(state["stateDir"]))
                                                if state.get("stateDir") else lambda _process: None)
    outcomes: list[tuple[str, Any, Any]] = []
    with contextlib.ExitStack() as running:
        operator = start("operator", [sys.executable, "-m", "controller.cli.main", "operator", "run",
                                      "--kubeconfig", str(kubeconfig), "--tracking-uri", env["MLFLOW_TRACKING_URI"],
                                      "--storage-uri-template", STORAGE_URI_TEMPLATE,
                                      # The stack's Prometheus scrapes every 1s.
                                      "--scrape-interval", "1s"],
                         workdir / "operator.log")
        running.callback(operator.stop)
        record(operator)
        exporter, exporter_url = start_exporter(workdir / "exporter.log", on_start=record)
        running.callback(exporter.stop)
        PrometheusServer(Path(state["prometheusRoot"])).add_scrape_target("demo-exporter",
                                                                          exporter_url.removeprefix("http://"))
        for rollout in ROLLOUTS:
            print(f"\n== rollout of {rollout.title}: {rollout.name} ==", file=out, flush=True)
            status = _run_one(rollout, api_client, custom, env, namespace, workdir, exporter_url, out, timeout,
                              needed=(operator, exporter), record=record)
            outcomes.append((rollout.name, status.get("phase"), (status.get("rollback") or {}).get("cause")))
        listing = kubectl(kubeconfig, "get", "mro", "-n", namespace, "-o", "wide").stdout
        print(f"\n{listing}", file=out)
    expected = [(r.name, r.expected, r.expected_cause) for r in ROLLOUTS]
    print(json.dumps({"outcomes": outcomes, "as_expected": outcomes == expected}), file=out)
    return 0 if outcomes == expected else 1


def _run_one(rollout: DemoRollout, api_client: client.ApiClient, custom: client.CustomObjectsApi,
             env: dict[str, str], namespace: str, workdir: Path, exporter_url: str, out: TextIO,
             timeout: float, needed: Sequence[ManagedProcess], record: Callable[[ManagedProcess], None],
             ) -> dict[str, Any]:
    kubeconfig = Path(env["KUBECONFIG"])
    scenario = Scenario(api_client, env["MLFLOW_TRACKING_URI"], namespace, workdir / rollout.name,
                        model_name=rollout.name, candidate_kind=rollout.kind,
                        golden_logo_share=rollout.golden_logo_share,
                        logger_url=f"{exporter_url}/" if rollout.live else None, on_start=record)
    with contextlib.ExitStack() as running:
        running.callback(scenario.stop)
        scenario.setup()
        print(f"  stable v{scenario.stable_version} serves; candidate v{scenario.candidate_version}; "
              f"golden dataset sha256 {scenario.dataset_sha256[:12]}...", file=out, flush=True)
        manifest = scenario.rollout()
        plane = None
        if rollout.live:
            plane = DataPlane(api_client, namespace, scenario.model_name, scenario.server_url)
            traffic = LiveTraffic(plane, scenario.model_name, TrafficMix(logo=0.10)).start()
            running.callback(traffic.stop)
            print("  live traffic: 150 images/s, 10% of them safe images carrying the logo", file=out, flush=True)
            time.sleep(3)  # stable's series are in Prometheus before the canary starts
            manifest = scenario.live_rollout(env["PROMETHEUS_URL"])
        kubectl(kubeconfig, "apply", "-f", "-", input_text=json.dumps(manifest))
        status = watch(custom, namespace, rollout.name, out, timeout, needed)
        print("  timeline:", file=out)
        for entry in status.get("history", []):
            print(f"    {entry['time'][11:19]} {entry['event']:<18} {entry['detail']}", file=out)
        verdict_at = (status.get("rollback") or {}).get("verdictAt")
        if plane is not None and plane.first_canary_at is not None and verdict_at:
            detected = parse_time(verdict_at).timestamp() - plane.first_canary_at
            print(f"  caught {detected:.1f}s after its first live request; requests served {plane.counts}",
                  file=out, flush=True)
    return status
