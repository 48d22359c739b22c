"""`dev down` stops only the processes its state file recorded, by PID and start time: a PID reused by another
process after a reboot or an exit is never signalled (and does not count as a stack already running)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from controller.devstack.processes import pid_alive, process_start
from controller.devstack.stack import Stack


def record(root: Path, pid: int, started: str | None) -> Stack:
    root.mkdir(parents=True, exist_ok=True)
    (root / "state.json").write_text(json.dumps({"env": {}, "processes": [
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
        stack = record(tmp_path / "ours", other.pid, started)
        assert stack.down() == [other.pid]
        other.wait(timeout=15)
        assert not pid_alive(other.pid)
    finally:
        other.kill()
        other.wait(timeout=15)
