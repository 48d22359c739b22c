"""hack/demo.sh on signals: the demo is stopped (and waited for) before `dev down`, a second Ctrl-C cannot cut
`dev down` short, and the exit code says what happened. Run against a stand-in `modelrollout` whose `dev demo`
handles signals with the real interrupt_on_termination, as the real one does."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FAKE_CLI = """#!{python}
import os, sys, time
from controller.devstack.processes import interrupt_on_termination

log = open(os.environ["FAKE_LOG"], "a", buffering=1)
command = sys.argv[2]
if command == "up":
    print("export FAKE_STACK=up")
elif command == "demo":
    try:
        with interrupt_on_termination():
            log.write("demo running\\n")
            time.sleep(float(os.environ.get("FAKE_DEMO_SECONDS", "60")))
            sys.exit(int(os.environ.get("FAKE_DEMO_EXIT", "0")))
    except KeyboardInterrupt:
        log.write("demo stopping\\n")
        time.sleep(1)  # stopping its operator and model servers
        log.write("demo stopped\\n")
        sys.exit(130)
elif command == "down":
    log.write("down started\\n")
    time.sleep(1.5)
    log.write("down done\\n")
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """hack/demo.sh as shipped, in a tree whose setup is a no-op and whose .venv/bin/modelrollout is the stand-in."""
    (tmp_path / "hack").mkdir()
    shutil.copy(REPO / "hack" / "demo.sh", tmp_path / "hack" / "demo.sh")
    (tmp_path / "hack" / "setup.sh").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "modelrollout").write_text(FAKE_CLI.format(python=sys.executable))
    for script in ("hack/setup.sh", "hack/demo.sh", ".venv/bin/modelrollout"):
        (tmp_path / script).chmod(0o755)
    return tmp_path


def run_demo_script(checkout: Path, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = checkout / "fake.log"
    log.touch()
    # Its own process group, as a terminal's foreground job: Ctrl-C is SIGINT to the whole group.
    script = subprocess.Popen(["bash", str(checkout / "hack" / "demo.sh")], start_new_session=True,
                              stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO),
                                                              "FAKE_LOG": str(log), **env})
    return script, log


def wait_line(log: Path, line: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while line not in log.read_text().splitlines():
        assert time.monotonic() < deadline, f"never logged {line!r}: {log.read_text()!r}"
        time.sleep(0.05)


def finish(script: subprocess.Popen[bytes]) -> int:
    try:
        return script.wait(timeout=60)
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
            script.wait(timeout=15)


def test_kill_of_the_script_stops_the_demo_before_the_stack(checkout: Path) -> None:
    script, log = run_demo_script(checkout)
    wait_line(log, "demo running")
    script.send_signal(signal.SIGTERM)  # `kill <pid of demo.sh>`: the script alone
    code = finish(script)
    # Was: `dev down` at once, under the still running demo (and its operator), which crashed.
    assert log.read_text().splitlines() == ["demo running", "demo stopping", "demo stopped", "down started",
                                            "down done"]
    assert code == 143


def test_a_second_ctrl_c_cannot_cut_dev_down_short(checkout: Path) -> None:
    script, log = run_demo_script(checkout)
    wait_line(log, "demo running")
    os.killpg(script.pid, signal.SIGINT)  # Ctrl-C
    wait_line(log, "down started")
    os.killpg(script.pid, signal.SIGINT)  # the impatient second one, during `dev down`
    code = finish(script)
    # Was: the second one interrupted `dev down`, and kube-apiserver stayed up.
    assert log.read_text().splitlines() == ["demo running", "demo stopping", "demo stopped", "down started",
                                            "down done"]
    assert code == 130


@pytest.mark.parametrize("code", ["0", "1"])
def test_the_demo_s_exit_code_is_the_script_s(checkout: Path, code: str) -> None:
    script, log = run_demo_script(checkout, FAKE_DEMO_SECONDS="0.2", FAKE_DEMO_EXIT=code)
    assert finish(script) == int(code)
    assert log.read_text().splitlines() == ["demo running", "down started", "down done"]


def test_a_kill_9_of_the_script_leaves_no_temporary_file(checkout: Path, tmp_path: Path) -> None:
    """Review s31demo: `dev up`'s exports were in a mktemp file only the EXIT trap removed, which SIGKILL skips."""
    temporary = tmp_path / "tmpdir"
    temporary.mkdir()
    script, log = run_demo_script(checkout, TMPDIR=str(temporary))
    wait_line(log, "demo running")  # past `dev up`, whose output it has read
    os.killpg(script.pid, signal.SIGKILL)  # the script and the demo, with no trap run
    script.wait(timeout=15)
    assert list(temporary.iterdir()) == []
