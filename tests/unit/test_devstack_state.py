"""`dev down` stops only the processes its state file recorded, by PID and start time: a PID reused by another
process after a reboot or an exit is never signalled (and does not count as a stack already running)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from controller.devstack.processes import boot_id, group_alive, pid_alive, process_start
from controller.devstack.stack import Stack


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
