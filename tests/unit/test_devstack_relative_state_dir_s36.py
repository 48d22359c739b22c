"""A relative --state-dir (or $MODELROLLOUT_STATE_DIR) is made absolute: the exports, `state.json` and the printed
`dev down --state-dir` hint are used from other directories (review s36devstack: from another directory kubectl fell
back to localhost:8080, and the printed `dev down` said "no local stack was running" while etcd and kube-apiserver
kept running)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from test_devstack_state import kill_quietly, record

from controller.devstack.processes import StackError, pid_alive, process_start, start
from controller.devstack.stack import Stack, default_state_dir

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli.main", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def test_the_dev_down_a_refusal_names_stops_the_stack_from_another_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = start("etcd", ["sleep", "120"], tmp_path / "etcd.log")
    try:
        checkout = tmp_path / "checkout"
        record(checkout / "relst", server.pid, process_start(server.pid))
        monkeypatch.chdir(checkout)
        with pytest.raises(StackError, match="already running") as refused:
            Stack(root=Path("relst")).up(with_mlflow=False, with_prometheus=False)
        command = re.search(r"`modelrollout (dev down [^`]*)`", str(refused.value))
        assert command is not None, str(refused.value)
        down = cli(*shlex.split(command.group(1)), cwd=tmp_path)  # another directory
        assert down.returncode == 0 and "stopped 1 process(es)" in down.stderr, down.stderr
        assert not pid_alive(server.pid)
    finally:
        kill_quietly(server.pid)


def test_the_hints_name_the_state_dir_absolutely(tmp_path: Path) -> None:
    (tmp_path / "here").mkdir()
    missing = cli("dev", "env", "--state-dir", "relst", cwd=tmp_path / "here")
    assert missing.returncode != 0
    assert f"dev up --state-dir {tmp_path / 'here' / 'relst'}`" in missing.stderr, missing.stderr


def test_a_relative_state_dir_from_the_environment_is_made_absolute(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODELROLLOUT_STATE_DIR", "relst")
    assert default_state_dir() == tmp_path / "relst"
