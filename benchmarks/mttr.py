"""Time to recover after an on-call abort or rollback command, side by side with the same recovery done directly.

    .venv/bin/python benchmarks/mttr.py [--runs 5] [--json] [--keep-dir DIR]

Recovery here means: the target at 0% canary (all traffic routed, none of it off the stable model) AND the
stable alias verified.
Only the two on-call commands are measured (abort at the canary, rollback after promotion), not automatic
rollbacks on a failing gate or analysis verdict.

What runs, all on 127.0.0.1: a fresh local stack (kube-apiserver + etcd, MLflow), the content-moderation
scenario (stable and a clean candidate registered in MLflow, served by real model servers, the KServe
stand-in playing KServe's part on a Knative-mode InferenceService, a golden dataset in a ConfigMap) and
the operator as its own process. One ModelRollout with steps [setWeight 10, pause {}] goes round:

  attempt -> paused at 10%  -> abort     (recovery A: canary 10% -> 0%, @production kept)
  retry   -> paused at 10%  -> promote   -> Succeeded
          -> rollback       (recovery B: previous version back on 100% and @production moved back)
  retry   -> ...

Each recovery is measured twice:
- status: the operator's own figure, status.rollback.timeToRecoverSeconds = recoveredAt - verdictAt,
  where verdictAt is when the engine saw the command and recoveredAt when it observed both the target's
  traffic (from the InferenceService's status) and the alias (read back from MLflow);
- outside: from just before the command annotation is written until this script itself reads, from the
  InferenceService's status, all traffic on the stable revision, and from MLflow the alias on stable
  (so it also counts the watch delivering the annotation change to the operator).

The baseline, in the same run: right before each operator recovery, a plain client does the same recovery
directly on a second InferenceService beside the rollout's (same models, same KServe stand-in, no
ModelRollout), brought first (untimed) to the state the operator's recovery starts from: the candidate at a
10% canary, or rolled out to 100% with the alias on it. Timed as `outside` is: from just before the client's
merge patch canaryTrafficPercent 0 (the operator's KServe router's first rollback write, KServe's documented
rollback) and its MLflow alias write (alias `mttr-direct` on the same registered model, so the rollout's
@production is left alone; not written for an abort, which finds it on stable, as the operator does), until the same
readers see all traffic on the stable revision and the alias on stable. Reported: operator outside / direct
per recovery (above 1: the operator takes longer), median and min-max.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubernetes import client  # noqa: E402

from controller.devstack.kserve_standin import REVISIONS_KEY  # noqa: E402
from controller.devstack.processes import interrupt_on_termination, start, stop_pid  # noqa: E402
from controller.devstack.scenario import STABLE_ALIAS, STORAGE_URI_TEMPLATE, Scenario  # noqa: E402
from controller.devstack.stack import Stack  # noqa: E402
from controller.operator.kubeapi import load_client_config  # noqa: E402
from controller.registry import MlflowRegistry  # noqa: E402

TARGET_SECONDS = 2.0  # the project's design target, reported for information only: nothing here judges a time
DIRECT_ALIAS = "mttr-direct"  # the baseline's alias: the same registered model, not the rollout's @production
MRO = ("modelrollout.io", "v1alpha1", "modelrollouts")
ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")


class Bench:
    def __init__(self, api: client.ApiClient, namespace: str, scenario: Scenario, registry: MlflowRegistry) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.scenario = scenario
        self.name = scenario.model_name
        self.registry = registry

    def status(self) -> dict[str, Any]:
        obj = self.custom.get_namespaced_custom_object(MRO[0], MRO[1], self.namespace, MRO[2], self.name)
        return obj.get("status") or {}

    @property
    def direct_name(self) -> str:
        """The baseline's InferenceService: beside the rollout's, on the same models, targeted by no rollout."""
        return f"{self.name}-direct"

    def isvc(self, name: str | None = None) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(ISVC[0], ISVC[1], self.namespace, ISVC[2],
                                                                       name or self.name)
        return obj

    def wait(self, predicate: Any, what: str, timeout: float = 180.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}: {status.get('phase')}: {status.get('message')}")

    def command(self, action: str) -> float:
        """Write the command annotation; returns the monotonic time just before the write."""
        body = json.dumps({"action": action, "id": f"{action}-{uuid.uuid4().hex[:8]}", "actor": "mttr-bench"})
        started = time.monotonic()
        self.custom.patch_namespaced_custom_object(MRO[0], MRO[1], self.namespace, MRO[2], self.name,
                                                   {"metadata": {"annotations": {"modelrollout.io/command": body}}})
        return started

    def split(self, name: str | None = None) -> tuple[int, int]:
        """Percent of traffic KServe reports on revisions that do not load the stable model, and in all."""
        status = self.isvc(name).get("status") or {}
        table = json.loads((status.get("annotations") or {}).get(REVISIONS_KEY, "[]"))
        uri_of = {revision["name"]: revision["storage_uri"] for revision in table}
        stable_uri = self.scenario.storage_uri(self.scenario.stable_version)
        traffic = ((status.get("components") or {}).get("predictor") or {}).get("traffic") or []
        off = sum(int(t.get("percent") or 0) for t in traffic if uri_of.get(t.get("revisionName")) != stable_uri)
        return off, sum(int(t.get("percent") or 0) for t in traffic)

    def off_stable(self, name: str | None = None) -> int:
        """Percent of traffic KServe reports on revisions that do not load the stable model."""
        return self.split(name)[0]

    def recovered_from_outside(self, started: float, timeout: float = 60.0, name: str | None = None,
                               alias: str = STABLE_ALIAS) -> float:
        deadline = started + timeout
        while time.monotonic() < deadline:
            # All of it on stable: a status routing nothing (or part) has no traffic off stable, yet serves none.
            if self.split(name) == (0, 100) \
                    and self.registry.verify_alias(self.name, alias) == self.scenario.stable_version:
                return time.monotonic() - started
            time.sleep(0.02)
        raise RuntimeError(f"{name or self.name} and @{alias} did not recover within {timeout:g} s")

    # --- the baseline: the same recovery, done directly by a plain client ----------------------------

    def create_direct_target(self) -> None:
        """A copy of the rollout's InferenceService as the scenario made it (stable on all traffic)."""
        spec = self.isvc()["spec"]
        self.custom.create_namespaced_custom_object(ISVC[0], ISVC[1], self.namespace, ISVC[2], {
            "apiVersion": f"{ISVC[0]}/{ISVC[1]}", "kind": "InferenceService",
            "metadata": {"name": self.direct_name, "namespace": self.namespace}, "spec": spec})
        self.wait_off_stable(0)

    def patch_direct(self, predictor: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(ISVC[0], ISVC[1], self.namespace, ISVC[2], self.direct_name,
                                                   {"spec": {"predictor": predictor}},
                                                   _content_type="application/merge-patch+json")

    def wait_off_stable(self, percent: int, timeout: float = 60.0) -> None:
        """Until the stand-in reports all traffic routed, `percent` of it off stable (untimed set-up)."""
        deadline = time.monotonic() + timeout
        while self.split(self.direct_name) != (percent, 100):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.direct_name} did not reach {percent}% off stable within {timeout:g} s")
            time.sleep(0.05)

    def direct(self, kind: str) -> float:
        """The recovery the operator does for `kind`, done directly: seconds, timed as measure()'s outside."""
        candidate_uri = self.scenario.storage_uri(self.scenario.candidate_version)
        # Untimed: the state the operator's recovery starts from.
        if kind == "abort":  # candidate at a 10% canary, the alias still on stable
            self.patch_direct({"canaryTrafficPercent": 10, "model": {"storageUri": candidate_uri}})
            self.registry.set_alias(self.name, DIRECT_ALIAS, self.scenario.stable_version)
            self.wait_off_stable(10)
        else:  # promoted: no canaryTrafficPercent, the candidate rolled out to 100%, the alias on it
            self.patch_direct({"canaryTrafficPercent": None, "model": {"storageUri": candidate_uri}})
            self.registry.set_alias(self.name, DIRECT_ALIAS, self.scenario.candidate_version)
            self.wait_off_stable(100)
        started = time.monotonic()
        # canaryTrafficPercent 0: traffic back to the previous rolled-out revision (stable), as the router does.
        self.patch_direct({"canaryTrafficPercent": 0})
        if kind != "abort":  # an abort finds the alias on stable: the operator only reads it, and so does this
            self.registry.set_alias(self.name, DIRECT_ALIAS, self.scenario.stable_version)
        return round(self.recovered_from_outside(started, name=self.direct_name, alias=DIRECT_ALIAS), 3)

    def measure(self, action: str) -> dict[str, Any]:
        before = (self.status().get("rollback") or {}).get("verdictAt")
        assert self.off_stable() > 0, "nothing to recover from"
        started = self.command(action)
        outside = self.recovered_from_outside(started)
        status = self.wait(lambda s: s.get("phase") == "RolledBack"
                           and (s.get("rollback") or {}).get("verdictAt") != before, f"RolledBack after {action}")
        rollback = status["rollback"]
        verdict = _time(rollback["verdictAt"])
        return {"kind": action, "statusSeconds": rollback["timeToRecoverSeconds"],
                "trafficSeconds": round((_time(rollback["trafficConfirmedAt"]) - verdict).total_seconds(), 3),
                "aliasSeconds": round((_time(rollback["aliasConfirmedAt"]) - verdict).total_seconds(), 3),
                "outsideSeconds": round(outside, 3), "fromWeight": rollback.get("fromWeight")}


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 3), "median": round(statistics.median(values), 3),
            "max": round(max(values), 3), "min": round(min(values), 3)}


def blocks(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Summaries of the rows; the ratio is per recovery, each operator recovery over its own direct one."""
    return {"recoveries": len(rows), "status": summary([r["statusSeconds"] for r in rows]),
            "outside": summary([r["outsideSeconds"] for r in rows]),
            "direct": summary([r["directSeconds"] for r in rows]),
            "operatorOverDirect": summary([r["outsideSeconds"] / r["directSeconds"] for r in rows])}


def run(runs: int, root: Path) -> dict[str, Any]:
    stack = Stack(root=root / "stack")
    operator = None
    scenario = None
    try:
        control_plane = stack.start_control_plane()
        mlflow = stack.start_mlflow()
        api = load_client_config(str(control_plane.admin_kubeconfig))
        namespace = f"mttr-{uuid.uuid4().hex[:6]}"
        client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        scenario = Scenario(api, mlflow.url, namespace, root / "scenario", model_name="nsfw-mttr")
        scenario.setup()  # assigned first: a set-up cut short still stops the model servers it started
        bench = Bench(api, namespace, scenario, MlflowRegistry(mlflow.url))
        bench.create_direct_target()
        kubeconfig = str(control_plane.admin_kubeconfig)
        operator = start("operator", [sys.executable, "-m", "controller.cli.main", "operator", "run",
                                      "--kubeconfig", kubeconfig, "--scrape-interval", "1s"], root / "operator.log",
                         env={"KUBECONFIG": kubeconfig, "MODELROLLOUT_STORAGE_URI_TEMPLATE": STORAGE_URI_TEMPLATE},
                         cwd=REPO)
        manifest = scenario.rollout(steps=[{"setWeight": 10}, {"pause": {}}])
        bench.custom.create_namespaced_custom_object(MRO[0], MRO[1], namespace, MRO[2], manifest)
        results: list[dict[str, Any]] = []
        for _ in range(runs):
            attempt = int(bench.status().get("attempt") or 0) + 1
            bench.wait(lambda s, a=attempt: s.get("phase") == "Paused" and s.get("canaryWeight") == 10
                       and s.get("attempt") == a, "the pause at 10%")
            direct = bench.direct("abort")  # the baseline first, while the operator waits at the pause
            results.append({**bench.measure("abort"), "directSeconds": direct})
            bench.command("retry")
            bench.wait(lambda s, a=attempt + 1: s.get("phase") == "Paused" and s.get("canaryWeight") == 10
                       and s.get("attempt") == a, "the pause at 10% after retry")
            bench.command("promote")
            bench.wait(lambda s: s.get("phase") == "Succeeded", "the promotion")
            direct = bench.direct("rollback")
            results.append({**bench.measure("rollback"), "directSeconds": direct})
            bench.command("retry")
        kinds: dict[str, Any] = {}
        for kind, label in (("abort", "abortAtCanary"), ("rollback", "rollbackAfterPromotion")):
            rows = [r for r in results if r["kind"] == kind]
            kinds[label] = blocks(rows)
        return {
            "targetSecondsForInformation": TARGET_SECONDS,
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            **blocks(results), "byKind": kinds, "runs": results,
        }
    finally:
        if operator is not None:
            stop_pid(operator.pid)
        if scenario is not None:
            scenario.stop()
        stack.down()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="cycles; each gives one abort and one rollback")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--keep-dir", type=Path, default=None, help="keep the stack's files and logs here")
    args = parser.parse_args()
    started = time.perf_counter()
    # SIGTERM (a timeout, a cancelled CI job) unwinds as Ctrl-C does, so run()'s finally stops the stack: its
    # servers run in their own sessions and would outlive this process.
    with interrupt_on_termination():
        if args.keep_dir:
            args.keep_dir.mkdir(parents=True, exist_ok=True)
            result = run(args.runs, args.keep_dir)
        else:
            with tempfile.TemporaryDirectory(prefix="mttr-") as scratch:
                result = run(args.runs, Path(scratch))
    result["wallSeconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(result))
        return 0
    for label, block in (("all", result), *result["byKind"].items()):
        s, o, d, r = block["status"], block["outside"], block["direct"], block["operatorOverDirect"]
        print(f"{label:>24}: status mean {s['mean']}s median {s['median']}s max {s['max']}s | "
              f"outside mean {o['mean']}s median {o['median']}s max {o['max']}s | "
              f"direct median {d['median']}s [{d['min']}-{d['max']}]")
        print(f"{'':>24}  operator outside / direct: median {r['median']} [{r['min']}-{r['max']}] "
              f"(per recovery; above 1 the operator takes longer)")
    print(f"{len(result['runs'])} recoveries, wall time {result['wallSeconds']}s "
          f"(the project's design target is {TARGET_SECONDS}s, for information; nothing here judges a time)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
