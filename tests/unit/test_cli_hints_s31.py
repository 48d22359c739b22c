"""Review s31demo: what the CLI prints can be acted on as printed. Its hints name the program as it was run (README's
`.venv/bin/modelrollout` is not on PATH), a kubeconfig that is not there is named, `history`'s columns align
whatever a time's length, and a state dir that is a file is named as one."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from controller.cli.oncall import OnCall
from controller.devstack.processes import StackError, boot_id, process_start, start
from controller.devstack.stack import Stack

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).with_name("modelrollout")  # the venv's entry point, as README's set-up leaves it
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"  # without the venv's bin


def run(argv: list[str], *, path: str = SYSTEM_PATH, cwd: Path | None = None, timeout: float = 60,
        **env: str) -> subprocess.CompletedProcess[str]:
    # Only the kubeconfig a test names: not this shell's.
    environment = {**{k: v for k, v in os.environ.items() if k != "KUBECONFIG"}, "PATH": path,
                   "PYTHONPATH": str(REPO), **env}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=environment,
                          cwd=cwd)


# --- 1. the program, as it was run -------------------------------------------------------------------------------

def test_the_script_names_match_pyproject() -> None:
    from controller.cli.program import SCRIPT_NAMES  # here: each test of this file fails on its own without it

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(SCRIPT_NAMES) == {name for name, target in scripts.items() if target == "controller.cli.main:main"}


def test_run_from_anything_else_the_hint_is_the_installed_name() -> None:
    from controller.cli.program import program

    assert program() == "modelrollout"  # here, pytest runs


def test_a_hint_names_the_entry_point_by_its_path_when_path_does_not_find_it(tmp_path: Path) -> None:
    result = run([str(SCRIPT), "dev", "env", "--state-dir", str(tmp_path / "none")])
    assert result.returncode == 1
    # Was: "run `modelrollout dev up`", and that is "command not found" in README's shell.
    assert result.stderr.strip().endswith(f"run `{SCRIPT} dev up --state-dir {tmp_path / 'none'}`"), result.stderr


def test_a_relative_path_is_made_absolute(tmp_path: Path) -> None:
    """hack/demo.sh changes directory to the checkout before it runs `.venv/bin/modelrollout`."""
    relative = os.path.relpath(SCRIPT, SCRIPT.parent.parent)
    result = run([relative, "dev", "env", "--state-dir", str(tmp_path / "none")], cwd=SCRIPT.parent.parent)
    assert result.stderr.strip().endswith(f"run `{SCRIPT} dev up --state-dir {tmp_path / 'none'}`"), result.stderr


def test_on_path_the_hint_is_the_bare_name(tmp_path: Path) -> None:
    result = run(["modelrollout", "dev", "env", "--state-dir", str(tmp_path / "none")],
                 path=f"{SCRIPT.parent}:{SYSTEM_PATH}")
    assert result.stderr.strip().endswith(f"run `modelrollout dev up --state-dir {tmp_path / 'none'}`"), result.stderr


def test_run_as_a_module_the_hint_is_the_module(tmp_path: Path) -> None:
    result = run([sys.executable, "-m", "controller.cli.main", "dev", "env", "--state-dir", str(tmp_path / "none")])
    assert result.stderr.strip().endswith(
        f"run `{sys.executable} -m controller.cli.main dev up --state-dir {tmp_path / 'none'}`"), result.stderr


def test_the_demo_s_refusals_name_the_program_as_run(tmp_path: Path) -> None:
    root = tmp_path / "stack"
    root.mkdir()
    (root / "state.json").write_text(json.dumps({"env": {}, "processes": []}))
    result = run([str(SCRIPT), "dev", "demo", "--state-dir", str(root)])
    assert result.stderr.strip() == (f"error: the demo needs the stack's MLflow: run `{SCRIPT} dev up` without "
                                     "--no-mlflow"), result.stderr
    (root / "state.json").write_text(json.dumps({"env": {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"},
                                                 "processes": []}))
    result = run([str(SCRIPT), "dev", "demo", "--state-dir", str(root)])
    assert result.stderr.strip() == (f"error: the demo needs the stack's Prometheus: run `{SCRIPT} dev up` without "
                                     "--no-prometheus"), result.stderr


def test_the_refusal_of_a_second_dev_up_names_the_program_as_run(tmp_path: Path) -> None:
    server = start("etcd", ["sleep", "120"], tmp_path / "etcd.log")
    try:
        root = tmp_path / "stack"
        root.mkdir()
        (root / "state.json").write_text(json.dumps({"env": {}, "bootId": boot_id(), "processes": [
            {"name": "etcd", "pid": server.pid, "started": process_start(server.pid), "log": str(server.log)}]}))
        result = run([str(SCRIPT), "dev", "up", "--state-dir", str(root)])
        assert result.returncode == 1
        assert result.stderr.strip().endswith(f"`{SCRIPT} dev down --state-dir {root}`"), result.stderr
        assert server.alive()
    finally:
        server.stop()


def test_dev_up_names_the_dev_down_to_run_as_the_program_was_run(tmp_path: Path) -> None:
    root = tmp_path / "stack"
    try:
        result = run([str(SCRIPT), "dev", "up", "--no-mlflow", "--no-prometheus", "--state-dir", str(root)],
                     timeout=180)
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip().endswith(f"stop it with: {SCRIPT} dev down --state-dir {root}"), result.stderr
    finally:
        assert run([str(SCRIPT), "dev", "down", "--state-dir", str(root)], timeout=120).returncode == 0


def test_the_on_call_views_hints_name_the_program_as_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """`explain`, `get --watch` and the commands print hints too (session 32: they still named the bare program)."""
    from controller.cli import oncall

    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "explain"])
    monkeypatch.setenv("PATH", SYSTEM_PATH)
    older = oncall._ended_hold_detail({"event": "StableMismatch", "detail": "held"})  # no number: an older operator
    assert f"`{SCRIPT} history` shows its detail" in older, older
    history = [{"event": "RolloutStarted", "time": "t0", "detail": "", "attempt": 1, "number": 1}]
    history += [{"event": "AnalysisInconclusive", "time": f"t{i}", "detail": "d", "attempt": 1, "number": i}
                for i in range(2, 3 + oncall.WARNINGS_SHOWN + 2)]
    lines = oncall._warnings({"history": history, "attempt": 1})
    assert any(f"(`{SCRIPT} history` shows them)" in line for line in lines), lines


# --- 3. a kubeconfig that is not there ----------------------------------------------------------------------------

def test_a_kubeconfig_flag_naming_no_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "kc"
    for args in (["list"], ["get", "x", "-n", "y"], ["operator", "run", "--metrics-port", "-1"]):
        result = run([str(SCRIPT), *args, "--kubeconfig", str(missing)])
        assert result.returncode == 1, (args, result.stderr)
        # Was: "cannot load a kubeconfig (Invalid kube-config file. No configuration found.)".
        assert result.stderr == f"error: no cluster: no kubeconfig: {missing} does not exist\n", (args, result.stderr)


def test_each_missing_kubeconfig_entry_is_named(tmp_path: Path, offline_kubeconfig: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    result = run([str(SCRIPT), "list"], KUBECONFIG=f"{first}:{second}")
    assert result.stderr == f"error: no cluster: no kubeconfig: {first}, {second} (in $KUBECONFIG) do not exist\n", \
        result.stderr
    # An entry that is there is read, as kubectl reads it: no refusal for the one missing beside it.
    result = run([str(SCRIPT), "list"], KUBECONFIG=f"{offline_kubeconfig}:{first}")
    assert "cannot reach the API server at 127.0.0.1:1" in result.stderr, result.stderr
    # Beside one that cannot be loaded, the missing one is named with the library's reason.
    broken = tmp_path / "broken"
    broken.write_text("apiVersion: v1\ncurrent-context: nowhere\n")
    result = run([str(SCRIPT), "list"], KUBECONFIG=f"{broken}:{first}")
    assert result.stderr.startswith("error: no cluster: cannot load a kubeconfig ("), result.stderr
    assert result.stderr.endswith(f"; {first} (in $KUBECONFIG) does not exist)\n"), result.stderr


# --- 4. history's columns -----------------------------------------------------------------------------------------

def test_history_columns_align_whatever_the_length_of_a_time(offline_kubeconfig: Path) -> None:
    out = io.StringIO()
    oncall = OnCall(str(offline_kubeconfig), None, out=out)
    # format_time drops a fraction's trailing zeros: 27, 26, 24 and 20 characters.
    times = ("2026-12-06T15:37:29.265437Z", "2026-12-06T15:37:29.61088Z", "2026-12-06T15:37:30.5Z",
             "2026-12-06T15:37:31Z")
    events = ("Resolved", "GateFailed", "RollbackStarted", "RolledBack")
    oncall.print_history({"apiVersion": "modelrollout.io/v1alpha1", "kind": "ModelRollout",
                          "metadata": {"name": "x", "namespace": "n"}, "spec": {},
                          "status": {"phase": "RolledBack", "history": [
                              {"time": t, "event": e, "actor": "modelrollout-controller", "detail": "d"}
                              for t, e in zip(times, events, strict=True)]}})
    lines = out.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert {line.index(event) for line, event in zip(lines, events, strict=True)} == {29}, lines
    assert {line.index("modelrollout-controller") for line in lines} == {lines[0].index("modelrollout-controller")}
    assert all(line.startswith(f"{time}  ") for line, time in zip(lines, times, strict=True)), lines


# --- 5. a state dir that is a file --------------------------------------------------------------------------------

def test_a_state_dir_that_is_a_file_is_named_as_one(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    with pytest.raises(StackError) as refused:
        Stack(root=afile).up(with_mlflow=False, with_prometheus=False)
    assert str(refused.value) == (f"the state dir {afile} is a file, not a directory: choose another --state-dir "
                                  "(or $MODELROLLOUT_STATE_DIR)")
    result = run([str(SCRIPT), "dev", "up", "--state-dir", str(afile)])
    # Was: "error: File exists (FileExistsError)".
    assert (result.returncode, result.stderr) == (1, f"error: {refused.value}\n")
    assert afile.read_text() == "mine\n"


def test_a_state_dir_under_a_file_is_named(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    with pytest.raises(StackError) as refused:
        Stack(root=afile / "devstack").up(with_mlflow=False, with_prometheus=False)
    # Was: "Not a directory (NotADirectoryError)", naming no path.
    assert str(refused.value) == f"cannot create the state dir {afile / 'devstack'}: Not a directory"
