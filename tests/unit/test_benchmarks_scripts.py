"""The benchmark scripts other than the detection grid: gate_throughput.py and mttr.py stop their servers when
terminated (a timeout, a cancelled CI job) and measure the gate as the operator runs it; mttr.py counts a
recovery only when stable serves all traffic; detection_first_look.py never reports an alpha it did not check."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from test_devstack_processes import running, wait_gone

from controller.devstack.kserve_standin import REVISIONS_KEY
from controller.devstack.processes import ManagedProcess, StackError, pid_alive, start, stop_pid
from controller.gate import GateOptions

REPO = Path(__file__).resolve().parents[2]


def load(name: str) -> ModuleType:
    path = REPO / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gate_throughput() -> ModuleType:
    return load("gate_throughput")


@pytest.fixture(scope="module")
def mttr() -> ModuleType:
    return load("mttr")


@pytest.fixture(scope="module")
def first_look() -> ModuleType:
    return load("detection_first_look")


def still_running_after(pid: int, timeout: float = 15.0) -> bool:
    return not wait_gone(pid, timeout)


def children(parent: int, marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            if int(stat[stat.rfind(")") + 2:].split()[1]) == parent \
                    and marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                found.append(int(entry.name))
    return found


# --- gate_throughput.py ----------------------------------------------------------------------------------


def test_gate_throughput_stops_its_model_server_on_sigterm() -> None:
    bench = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "gate_throughput.py"), "--samples", "20000",
                              "--rounds", "50"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    server, scratch = 0, None
    try:
        deadline = time.monotonic() + 60
        while not server and time.monotonic() < deadline and bench.poll() is None:
            server = next(iter(children(bench.pid, "--serve")), 0)
            time.sleep(0.02)
        assert server, "the benchmark never started its model server"
        scratch = Path(os.readlink(f"/proc/{server}/fd/1")).parent  # its log is in the benchmark's scratch dir
        # Signalled once the run proper has begun (its datasets written): the server is up and in use. A signal
        # during start-up is test_gate_throughput_stops_a_server_that_never_gets_ready's case.
        while not any(scratch.glob("*.npz")) and time.monotonic() < deadline and bench.poll() is None:
            time.sleep(0.02)
        assert any(scratch.glob("*.npz")), "the benchmark never began its run"
        bench.send_signal(signal.SIGTERM)
        bench.wait(timeout=60)
        assert not still_running_after(server), f"the benchmark left its model server {server} running"
        assert not scratch.exists()
    finally:
        bench.kill()
        bench.wait(timeout=15)
        if server and running(server):
            stop_pid(server, grace_seconds=1.0)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def test_gate_throughput_stops_a_server_that_never_gets_ready(gate_throughput: ModuleType, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[ManagedProcess] = []

    def fake_start(name: str, argv: list[str], log: Path, cwd: Path | None = None) -> ManagedProcess:
        started.append(start(name, ["sleep", "60"], log))
        return started[-1]

    def not_ready(url: str, process: ManagedProcess, timeout: float) -> float:
        raise StackError(f"{process.name} not ready at {url}")

    monkeypatch.setattr(gate_throughput, "start", fake_start)
    monkeypatch.setattr(gate_throughput, "wait_http_ok", not_ready)
    try:
        with pytest.raises(StackError, match="not ready"):
            gate_throughput.start_server(tmp_path)
        assert not pid_alive(started[0].pid)
    finally:
        stop_pid(started[0].pid, grace_seconds=1.0)


def test_gate_throughput_measures_with_the_operators_gate_options_by_default(
        gate_throughput: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    class Server:
        def stop(self) -> None:
            seen["stopped"] = True

    def throughput(url: str, work: Path, samples: int, batch_size: int, concurrency: int,
                   rounds: int) -> dict[str, Any]:
        seen["throughput"] = (batch_size, concurrency)
        return {}

    def memory(url: str, work: Path, sizes: list[int], batch_size: int, concurrency: int) -> dict[str, Any]:
        seen["memory"] = (batch_size, concurrency)
        raise gate_throughput.Refused("enough")

    monkeypatch.setattr(gate_throughput, "start_server", lambda work: (Server(), "http://127.0.0.1:1"))
    monkeypatch.setattr(gate_throughput, "throughput", throughput)
    monkeypatch.setattr(gate_throughput, "memory", memory)
    monkeypatch.setattr(sys, "argv", ["gate_throughput.py"])
    assert gate_throughput.main() == 1
    operator = GateOptions()
    assert seen == {"throughput": (operator.batch_size, operator.concurrency),
                    "memory": (operator.batch_size, operator.concurrency), "stopped": True}
    # Still adjustable, for both sides at once.
    monkeypatch.setattr(sys, "argv", ["gate_throughput.py", "--batch-size", "1000", "--concurrency", "8"])
    assert gate_throughput.main() == 1
    assert seen["throughput"] == (1000, 8)


# --- mttr.py ---------------------------------------------------------------------------------------------

# The child runs mttr.py with its control plane replaced by a server (sleep) started the way the stack starts
# etcd, prints that server's PID and blocks inside the run.
MTTR_CHILD = textwrap.dedent("""
    import importlib.util, sys, time
    from controller.devstack.controlplane import ControlPlane
    from controller.devstack.processes import start
    from controller.devstack.stack import Stack

    def fake_control_plane(self):
        self.control_plane = ControlPlane(self.root / "controlplane")
        self.control_plane.processes.append(start("etcd", ["sleep", "120"], self.root / "etcd.log"))
        self._save()
        print(self.control_plane.processes[0].pid, flush=True)
        time.sleep(60)

    Stack.start_control_plane = fake_control_plane
    spec = importlib.util.spec_from_file_location("mttr", sys.argv[1])
    mttr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mttr)
    sys.argv = ["mttr.py", "--runs", "1", "--keep-dir", sys.argv[2]]
    sys.exit(mttr.main())
""")


def test_mttr_stops_its_stack_on_sigterm(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(MTTR_CHILD)
    child = subprocess.Popen([sys.executable, str(script), str(REPO / "benchmarks" / "mttr.py"), str(tmp_path / "k")],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert child.stdout is not None
    server = 0
    try:
        for line in child.stdout:
            if line.strip().isdigit():
                server = int(line)
                break
        assert server, "the child never started its server"
        time.sleep(0.3)  # inside the blocking call
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) != 0
        assert not still_running_after(server), f"mttr.py left its stack's server {server} running"
    finally:
        child.kill()
        child.wait(timeout=15)
        if server and running(server):
            stop_pid(server, grace_seconds=1.0)


class FakeIsvc:
    """An InferenceService status: revision 1 loads the stable model, revision 2 the candidate."""

    def __init__(self, traffic: list[dict[str, Any]]) -> None:
        self.traffic = traffic

    def get_namespaced_custom_object(self, *args: Any) -> dict[str, Any]:
        table = [{"name": "r1", "storage_uri": "models:/m/1"}, {"name": "r2", "storage_uri": "models:/m/2"}]
        return {"status": {"annotations": {REVISIONS_KEY: json.dumps(table)},
                           "components": {"predictor": {"traffic": self.traffic}}}}


class FakeScenario:
    stable_version = "1"

    def storage_uri(self, version: str) -> str:
        return f"models:/m/{version}"


class FakeRegistry:
    def verify_alias(self, name: str, alias: str) -> str:
        return "1"


@pytest.mark.parametrize("traffic", [[], [{"revisionName": "r1", "percent": 50}]], ids=["nothing", "half"])
def test_mttr_is_not_recovered_while_stable_does_not_serve_all_traffic(mttr: ModuleType,
                                                                       traffic: list[dict[str, Any]]) -> None:
    bench = mttr.Bench.__new__(mttr.Bench)
    bench.custom, bench.scenario, bench.registry, bench.name, bench.namespace = (
        FakeIsvc(traffic), FakeScenario(), FakeRegistry(), "m", "ns")
    with pytest.raises(RuntimeError, match="did not recover"):  # no traffic off stable, yet not all of it on it
        bench.recovered_from_outside(time.monotonic(), timeout=0.3)
    bench.custom = FakeIsvc([{"revisionName": "r1", "percent": 100}, {"revisionName": "r2", "percent": 0}])
    assert bench.recovered_from_outside(time.monotonic(), timeout=5.0) < 5.0


# --- detection_first_look.py --------------------------------------------------------------------------------


def fake_power(monkeypatch: pytest.MonkeyPatch, first_look: ModuleType, needed: float) -> None:
    """A first-look power that reaches one half exactly at alpha `needed` (and grows with alpha, as the LP's)."""
    monkeypatch.setattr(first_look, "first_look_power", lambda rate, ratio, alpha: min(1.0, alpha / (2 * needed)))


@pytest.mark.parametrize("needed", [0.004, 0.015, 0.2])
def test_first_look_alpha_is_found_above_the_first_bracket_too(monkeypatch: pytest.MonkeyPatch,
                                                               first_look: ModuleType, needed: float) -> None:
    fake_power(monkeypatch, first_look, needed)
    found = first_look.alpha_for(0.02, 5.0)
    assert found is not None
    assert needed <= found <= needed * 1.1  # never below the answer, and within the bisection's resolution


def test_first_look_alpha_is_null_when_even_the_largest_alpha_searched_is_not_enough(
        monkeypatch: pytest.MonkeyPatch, first_look: ModuleType) -> None:
    fake_power(monkeypatch, first_look, 0.6)
    assert first_look.alpha_for(0.02, 5.0) is None
    assert first_look.ALPHA_SEARCH_MAX < 0.6
