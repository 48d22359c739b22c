"""`kill <pid>` of hack/demo.sh while its `dev up` starts the stack: the demo stops with 143 and leaves nothing.

Was: `dev up` ran inside `$(...)` before any trap, so the script died at once and the stack went on starting."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.devstack.processes import pid_alive
from tests.integration.test_devstack import processes_mentioning

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def checkout_with_real_demo_script(root: Path) -> Path:
    """The real hack/demo.sh in a checkout of its own (its stack in <root>/.devstack); setup.sh, already done for
    this tree, is skipped, and .venv/bin/modelrollout runs this tree's CLI."""
    (root / "hack").mkdir(parents=True)
    shutil.copy(REPO / "hack" / "demo.sh", root / "hack" / "demo.sh")
    (root / "hack" / "setup.sh").write_text("#!/bin/sh\nexit 0\n")
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "modelrollout").write_text(
        f'#!/bin/sh\nexec {sys.executable} -m controller.cli.main "$@"\n')
    for script in ("hack/setup.sh", ".venv/bin/modelrollout"):
        (root / script).chmod(0o755)
    return root / ".devstack"


def recorded(state_dir: Path) -> list[dict[str, object]]:
    try:
        return list(json.loads((state_dir / "state.json").read_text())["processes"])
    except (OSError, ValueError, KeyError):
        return []


def test_kill_of_the_demo_while_the_stack_starts_stops_it_with_143_and_leaves_nothing(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    state_dir = checkout_with_real_demo_script(checkout)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MODELROLLOUT_STATE_DIR", None)
    with open(tmp_path / "demo.out", "w") as out:
        demo = subprocess.Popen(["hack/demo.sh"], cwd=checkout, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not any(p["name"] == "kube-apiserver" for p in recorded(state_dir)):  # well inside `dev up`
            assert demo.poll() is None, (tmp_path / "demo.out").read_text()
            assert time.monotonic() < deadline, "the stack never started its kube-apiserver"
            time.sleep(0.1)
        started = [int(p["pid"]) for p in recorded(state_dir)]  # type: ignore[call-overload]
        demo.send_signal(signal.SIGTERM)  # the script's PID only, as `kill <pid>` does
        code = demo.wait(timeout=120)
        time.sleep(5)  # time for a `dev up` that went on to start its next server
        left = processes_mentioning(str(state_dir))
        assert code == 143, (code, (tmp_path / "demo.out").read_text())
        assert not any(pid_alive(pid) for pid in started), started
        assert left == [], left
        assert not (state_dir / "state.json").exists()
    finally:
        # Whatever a failed run left: the script's group (its `dev up`), then the stack by its record.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(demo.pid, signal.SIGTERM)
        demo.wait(timeout=120)
        subprocess.run([sys.executable, "-m", "controller.cli.main", "dev", "down", "--state-dir", str(state_dir)],
                       env=env, capture_output=True, timeout=120, check=False)
