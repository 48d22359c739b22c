"""`dev up` on a terminal says what it starts, one line per step on stderr (the start takes 20-40 s); piped, as
`eval "$(dev up)"` reads its stdout, or logged, stderr keeps only its last line and stdout only the exports."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "controller.cli.main"]
STEPS = ("# starting the control plane (etcd, kube-apiserver) ...\r\n", "# installing the CRDs ...\r\n")


def dev(state_dir: Path, *args: str, stderr: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*CLI, "dev", *args, "--state-dir", str(state_dir)], stdout=subprocess.PIPE,
                            stderr=stderr, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)


def dev_down(state_dir: Path) -> None:
    subprocess.run([*CLI, "dev", "down", "--state-dir", str(state_dir)], capture_output=True, timeout=120,
                   env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, check=False)


def test_dev_up_prints_a_line_per_start_step_on_a_terminal_only(tmp_path: Path) -> None:
    state_dir = tmp_path / "stack"
    leader, follower = pty.openpty()
    try:
        up = dev(state_dir, "up", "--no-mlflow", "--no-prometheus", stderr=follower)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: `dev up` ended and closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        stdout = up.stdout.read().decode() if up.stdout else ""
        assert up.wait(timeout=300) == 0, chunks
    finally:
        os.close(leader)
        dev_down(state_dir)
    terminal = b"".join(chunks).decode()
    positions = [terminal.find(step) for step in STEPS]
    assert -1 not in positions and positions == sorted(positions), terminal
    assert positions[-1] < terminal.index("# local stack up")  # said as it starts, not after
    assert all(line.startswith("export ") for line in stdout.splitlines()), stdout  # `eval` reads only these

    piped = dev(state_dir, "up", "--no-mlflow", "--no-prometheus", stderr=subprocess.PIPE)
    try:
        _, stderr = piped.communicate(timeout=300)
        assert piped.returncode == 0, stderr
    finally:
        dev_down(state_dir)
    assert stderr.decode().splitlines()[-1].startswith("# local stack up"), stderr
    assert "# starting" not in stderr.decode() and "# installing" not in stderr.decode(), stderr
