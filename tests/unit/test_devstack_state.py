"""`dev down` stops only the processes its state file recorded, by PID and start time: a PID reused by another
process after a reboot or an exit, or a zombie, is never signalled (and does not count as a stack already running).
Every process is recorded as it starts (the stack's servers, and the demo's), and stopped in reverse order."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.devstack import stack as devstack
from controller.devstack.controlplane import ControlPlane
from controller.devstack.processes import (
    StackError,
    boot_id,
    group_alive,
    pid_alive,
    proc_stat,
    process_start,
    start,
)
from controller.devstack.stack import Stack, load_state

REPO = Path(__file__).resolve().parents[2]


def record(root: Path, pid: int, started: str | None, boot: str | None = None) -> Stack:
    root.mkdir(parents=True, exist_ok=True)
    (root / "state.json").write_text(json.dumps({"env": {}, "bootId": boot or boot_id(), "processes": [
        {"name": "etcd", "pid": pid, "started": started, "log": str(root / "etcd.log")}]}))
    return Stack(root=root)


def test_a_reused_pid_is_left_alone_and_a_recorded_one_is_stopped(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        started = process_start(other.pid)
        assert started is not None and started.isdigit()
        for stale in (str(int(started) - 1), None):  # another process's start, or none recorded (older file)
            stack = record(tmp_path / f"stale-{stale}", other.pid, stale)
            assert stack.down() == [] and pid_alive(other.pid)
        stack = record(tmp_path / "another-boot", other.pid, started, boot="0" * 36)
        assert stack.down() == [] and pid_alive(other.pid)
        stack = record(tmp_path / "ours", other.pid, started)
        assert stack.down() == [other.pid]
        other.wait(timeout=15)
        assert not pid_alive(other.pid)
    finally:
        other.kill()
        other.wait(timeout=15)


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever adopts it to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


def test_the_group_of_a_recorded_leader_that_exited_is_still_stopped(tmp_path: Path) -> None:
    """MLflow's CLI starts its server in its own group and may die first: its server must not outlive `dev down`."""
    leader = subprocess.Popen(["sh", "-c", "sleep 300 & echo $!"], start_new_session=True, stdout=subprocess.PIPE,
                              text=True)
    assert leader.stdout is not None
    child = int(leader.stdout.readline())
    started = process_start(leader.pid)
    leader.wait(timeout=15)  # the leader is gone, its child runs on in the group
    try:
        assert group_alive(leader.pid) and pid_alive(child)
        stack = record(tmp_path / "orphans", leader.pid, started)
        assert stack.down() == [leader.pid]
        deadline = time.monotonic() + 10
        while running(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(child)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def wait_for(check: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def test_a_dev_up_killed_mid_start_leaves_a_record_that_dev_down_stops(tmp_path: Path) -> None:
    """Each server is recorded as it starts, not when its step ends: after a `kill -9` of `dev up`, a new `dev up`
    refuses (it would delete the running etcd's data dir) and `dev down` stops it."""
    fakes = tmp_path / "bin"
    fakes.mkdir()
    for name in ("etcd", "kube-apiserver"):  # an etcd that never gets ready: `dev up` waits for it
        (fakes / name).write_text(f'#!/bin/sh\necho $$ > "{tmp_path}/{name}.pid"\nexec sleep 120\n')
        (fakes / name).chmod(0o755)
    root = tmp_path / "state"
    up = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; from controller.devstack.stack "
                           "import Stack; Stack(root=Path(sys.argv[1])).up(with_mlflow=False, with_prometheus=False)",
                           str(root)], env={**os.environ, "KUBEBUILDER_ASSETS": str(fakes), "PYTHONPATH": str(REPO)})
    etcd = 0
    try:
        wait_for(lambda: (tmp_path / "etcd.pid").is_file() and (tmp_path / "etcd.pid").read_text().strip())
        etcd = int((tmp_path / "etcd.pid").read_text())
        time.sleep(0.5)  # still waiting for the etcd to answer
        assert up.poll() is None
        up.kill()  # kill -9: no cleanup runs
        up.wait(timeout=15)
        assert pid_alive(etcd)
        recorded = json.loads((root / "state.json").read_text())["processes"]
        assert [(p["name"], p["pid"]) for p in recorded] == [("etcd", etcd)]

        with pytest.raises(StackError, match="already running"):
            Stack(root=root).up(with_mlflow=False, with_prometheus=False)
        assert (root / "controlplane" / "etcd.log").exists() and pid_alive(etcd)  # its data dir left alone
        assert Stack(root=root).down() == [etcd]
        wait_for(lambda: not pid_alive(etcd))
        assert not (root / "state.json").exists()
    finally:
        up.kill()
        up.wait(timeout=15)
        if etcd:
            kill_quietly(etcd)


def test_down_stops_the_api_server_before_its_etcd(tmp_path: Path) -> None:
    """kube-apiserver keeps calling a stopping etcd, which then takes 7 s to exit: the API server goes first."""
    etcd = start("etcd", ["sleep", "120"], tmp_path / "etcd.log")
    apiserver = start("kube-apiserver", ["sleep", "120"], tmp_path / "kube-apiserver.log")
    try:
        stack = Stack(root=tmp_path)
        stack.control_plane = ControlPlane(tmp_path / "controlplane", processes=[etcd, apiserver])
        stack._save()
        assert Stack(root=tmp_path).down() == [apiserver.pid, etcd.pid]  # from the record: `dev down`
        assert stack.down() == [apiserver.pid, etcd.pid]  # in memory: a failed `dev up`, the test session
    finally:
        for process in (etcd, apiserver):
            kill_quietly(process.pid)


ZOMBIE_PARENT = """
import os, signal, subprocess, time
child = subprocess.Popen(["sleep", "120"], start_new_session=True)
print(child.pid, flush=True)
os.kill(child.pid, signal.SIGKILL)  # and never reaped, as by a PID 1 that does not reap
time.sleep(120)
"""


def test_a_zombie_is_not_a_running_stack(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", ZOMBIE_PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        zombie = int(parent.stdout.readline())
        started = process_start(zombie)
        wait_for(lambda: (proc_stat(zombie) or ["?"])[0] == "Z")
        assert process_start(zombie) == started  # same PID, same start: only its state says it has exited
        stack = record(tmp_path, zombie, started)
        assert stack.down() == []  # was "stopped 1 process(es)", and `dev up` refused: "already running"
    finally:
        parent.kill()
        parent.wait(timeout=15)


def test_processes_started_on_the_stack_join_its_record_and_dev_down_stops_them_first(tmp_path: Path) -> None:
    """The demo's operator, exporter and model servers: `dev down` stops them even after a `kill -9` of the demo."""
    etcd = start("etcd", ["sleep", "120"], tmp_path / "etcd.log")
    operator = start("operator", ["sleep", "120"], tmp_path / "operator.log")
    gone = start("model-server", ["true"], tmp_path / "gone.log")
    try:
        devstack.record_process(tmp_path, operator)  # no record yet (no `dev up` here): none is made
        assert not (tmp_path / "state.json").exists()
        stack = Stack(root=tmp_path)
        stack.control_plane = ControlPlane(tmp_path / "controlplane", processes=[etcd])
        stack._save()
        assert load_state(tmp_path)["stateDir"] == str(tmp_path)  # where the demo finds the record
        devstack.record_process(tmp_path, gone)
        wait_for(lambda: not pid_alive(gone.pid))
        devstack.record_process(tmp_path, operator)  # and the exited one is dropped
        assert [p["name"] for p in load_state(tmp_path)["processes"]] == ["operator", "etcd"]
        assert Stack(root=tmp_path).down() == [operator.pid, etcd.pid]
        assert not pid_alive(operator.pid) and not pid_alive(etcd.pid)
    finally:
        for process in (etcd, operator, gone):
            kill_quietly(process.pid)


def test_the_refusal_names_the_dev_down_that_stops_that_stack(tmp_path: Path) -> None:
    """The demo keeps its stack in <checkout>/.devstack: a bare `dev down` looks elsewhere and stops nothing."""
    server = start("etcd", ["sleep", "120"], tmp_path / "etcd.log")
    try:
        root = tmp_path / "a checkout" / ".devstack"
        record(root, server.pid, process_start(server.pid))
        with pytest.raises(StackError, match="already running") as refused:
            Stack(root=root).up(with_mlflow=False, with_prometheus=False)
        command = re.search(r"`modelrollout (dev down [^`]*)`", str(refused.value))
        assert command is not None, str(refused.value)
        down = subprocess.run([sys.executable, "-m", "controller.cli.main", *shlex.split(command.group(1))],
                              capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ,
                              "PYTHONPATH": str(REPO), "MODELROLLOUT_STATE_DIR": str(tmp_path / "elsewhere")})
        assert down.returncode == 0 and "stopped 1 process(es)" in down.stderr, down.stderr
        assert not pid_alive(server.pid)
    finally:
        kill_quietly(server.pid)
