"""Local-stack processes are never orphaned or left half-stopped, and their secrets and records are written safely:
SIGTERM/SIGHUP stop what `dev up`, `dev demo` and the test session started, a process group is waited for as a
whole, a failed exporter start stops the exporter, a binary that cannot run is named."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import controller.devstack.dataplane as dataplane
from controller.devstack.controlplane import ADMIN_USER, ControlPlane, control_plane_binaries
from controller.devstack.processes import (
    ManagedProcess,
    StackError,
    boot_id,
    group_alive,
    interrupt_on_termination,
    pid_alive,
    process_start,
    start,
    stop_pid,
)
from controller.devstack.stack import Stack, load_state

REPO = Path(__file__).resolve().parents[2]
CONFTEST = REPO / "tests" / "conftest.py"


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever adopts it to reap it)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rfind(")") + 2:].split()[0] != "Z"


def wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not running(pid)


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_termination_signal_interrupts_as_ctrl_c_and_a_repeat_cannot_cut_cleanup_short(signum: int) -> None:
    before = signal.getsignal(signum)
    cleaned = False
    with pytest.raises(KeyboardInterrupt), interrupt_on_termination():
        try:
            os.kill(os.getpid(), signum)
            time.sleep(5)  # interrupted long before
        finally:
            os.kill(os.getpid(), signum)  # a second `kill` during cleanup: ignored
            time.sleep(0.05)
            cleaned = True
    assert cleaned
    assert signal.getsignal(signum) == before


# The child starts a server (sleep) the way `dev up` / `dev demo` do, prints its PID, then blocks.
CLI_CHILD = textwrap.dedent("""
    import sys, time
    from controller.cli import main as cli
    import controller.devstack.demo as demo
    import controller.devstack.stack as stack
    from controller.devstack.controlplane import ControlPlane
    from controller.devstack.processes import start

    def fake_control_plane(self):
        self.control_plane = ControlPlane(self.root / "controlplane")
        self.control_plane.processes.append(start("etcd", ["sleep", "120"], self.root / "etcd.log"))
        self._save()
        print(self.control_plane.processes[0].pid, flush=True)
        time.sleep(60)

    def fake_demo(state, workdir):
        operator = start("operator", ["sleep", "120"], workdir / "operator.log")
        try:
            print(operator.pid, flush=True)
            time.sleep(60)
        finally:
            operator.stop()

    stack.Stack.start_control_plane = fake_control_plane
    stack.load_state = lambda root=None: {}
    demo.run_demo = fake_demo
    args = ["--no-mlflow", "--no-prometheus"] if sys.argv[1] == "up" else []
    sys.exit(cli.main(["dev", sys.argv[1], "--state-dir", sys.argv[2], *args]))
""")


def signal_child_after_pid(argv: list[str], signum: int, cwd: Path | None = None) -> tuple[int, int]:
    """Run argv, read the server PID it prints, send it signum; returns (its exit code, the server PID)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, cwd=cwd)
    assert child.stdout is not None
    server = 0
    try:
        for line in child.stdout:
            if line.strip().isdigit():
                server = int(line)
                break
        assert server, "the child never started its server"
        time.sleep(0.3)  # inside the blocking call
        child.send_signal(signum)
        return child.wait(timeout=60), server
    finally:
        child.kill()
        child.wait(timeout=15)
        if server and running(server):
            kill_quietly(server)


@pytest.mark.parametrize(("command", "signum"),
                         [("up", signal.SIGTERM), ("up", signal.SIGHUP), ("demo", signal.SIGTERM)])
def test_dev_up_and_demo_stop_their_servers_on_sigterm_and_sighup(tmp_path: Path, command: str,
                                                                    signum: int) -> None:
    (tmp_path / "demo").mkdir()
    script = tmp_path / "child.py"
    script.write_text(CLI_CHILD)
    code, server = signal_child_after_pid([sys.executable, str(script), command, str(tmp_path)], signum)
    assert code == 130
    assert wait_gone(server), f"`dev {command}` left its server {server} running"
    if command == "up":
        assert not (tmp_path / "state.json").exists()  # stopped, and so forgotten


def test_the_test_session_stops_its_servers_when_pytest_is_terminated(tmp_path: Path) -> None:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_killed.py").write_text(textwrap.dedent("""
        import time
        from controller.devstack.controlplane import ControlPlane
        from controller.devstack.processes import start

        def test_long(stack):
            stack.control_plane = ControlPlane(stack.root / "controlplane")
            stack.control_plane.processes.append(start("etcd", ["sleep", "120"], stack.root / "etcd.log"))
            print(stack.control_plane.processes[0].pid, flush=True)
            time.sleep(60)
    """))
    code, server = signal_child_after_pid(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         "test_killed.py"], signal.SIGTERM, cwd=tmp_path)
    assert code == 2  # pytest's "interrupted"
    assert wait_gone(server), "the killed test session left its server running"


def test_stop_pid_waits_for_the_group_when_its_leader_exits_first(tmp_path: Path) -> None:
    # The leader exits on SIGTERM; its child ignores SIGTERM, as a worker still draining connections.
    leader = start("grp", ["bash", "-c", "bash -c 'trap \"\" TERM; exec sleep 60' & echo $!; wait"],
                   tmp_path / "grp.log")
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "grp.log").read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        worker = int((tmp_path / "grp.log").read_text().split()[0])
        time.sleep(0.2)  # the worker's trap is set
        stop_pid(leader.pid, grace_seconds=1.0)
        assert not running(worker)  # escalated to SIGKILL, not left behind
        assert not group_alive(leader.pid)  # its zombie, if nobody reaps it, does not count
    finally:
        kill_quietly(leader.pid)


def test_a_failed_exporter_start_stops_the_exporter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[ManagedProcess] = []

    def fake_start(name: str, argv: list[str], log: Path) -> ManagedProcess:
        started.append(start(name, ["sleep", "60"], log))
        return started[-1]

    def not_ready(url: str, process: ManagedProcess, timeout: float) -> float:
        raise StackError(f"{process.name} not ready at {url}")

    monkeypatch.setattr(dataplane, "start", fake_start)
    monkeypatch.setattr(dataplane, "wait_http_ok", not_ready)
    try:
        with pytest.raises(StackError, match="not ready"):
            dataplane.start_exporter(tmp_path / "exporter.log")
        assert not pid_alive(started[0].pid)
    finally:
        kill_quietly(started[0].pid)


def test_a_binary_that_cannot_run_is_named_not_a_traceback(tmp_path: Path) -> None:
    binary = tmp_path / "kube-apiserver"
    binary.write_text("")
    binary.chmod(0o644)
    with pytest.raises(StackError, match=r"kube-apiserver: cannot run .*kube-apiserver: Permission denied"):
        start("kube-apiserver", [str(binary)], tmp_path / "log")


def test_kubebuilder_assets_that_cannot_run_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kube-apiserver").write_text("")
    (tmp_path / "kube-apiserver").chmod(0o644)
    (tmp_path / "etcd").write_text("")
    (tmp_path / "etcd").chmod(0o755)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    with pytest.raises(StackError, match=r"kube-apiserver is not executable"):
        control_plane_binaries()


def test_no_openssl_is_said_plainly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(StackError, match="cannot run openssl"):
        ControlPlane(tmp_path)._write_credentials()


def test_the_token_file_and_kubeconfig_are_never_readable_by_others(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "apiserver.crt").write_text("dummy")
    (tmp_path / "kubeconfig").write_text("an older one")
    (tmp_path / "kubeconfig").chmod(0o644)
    seen: list[tuple[str, int, int]] = []  # (file, mode, size) whenever its mode or content is about to change
    real_chmod, real_write_text = Path.chmod, Path.write_text

    def spy_chmod(self: Path, mode: int, **kwargs: object) -> None:
        seen.append((self.name, stat.S_IMODE(self.stat().st_mode), self.stat().st_size))
        real_chmod(self, mode, **kwargs)  # type: ignore[arg-type]

    def spy_write_text(self: Path, data: str, *args: object, **kwargs: object) -> int:
        if self.exists():
            seen.append((self.name, stat.S_IMODE(self.stat().st_mode), self.stat().st_size))
        return real_write_text(self, data, *args, **kwargs)  # type: ignore[arg-type]

    old_umask = os.umask(0o022)
    try:
        monkeypatch.setattr(Path, "chmod", spy_chmod)
        monkeypatch.setattr(Path, "write_text", spy_write_text)
        plane = ControlPlane(tmp_path)
        plane._write_credentials()
        plane.write_kubeconfig(tmp_path / "kubeconfig", ADMIN_USER, plane.tokens[ADMIN_USER])
    finally:
        os.umask(old_umask)
        monkeypatch.undo()
    for name in ("tokens.csv", "kubeconfig"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
        assert plane.tokens[ADMIN_USER] in (tmp_path / name).read_text()
    exposed = [(name, oct(mode)) for name, mode, size in seen if mode & 0o077 and size > 0]
    assert not exposed, f"written readable by others, then chmod-ed: {exposed}"


def record(root: Path, pid: int) -> str:
    root.mkdir(parents=True, exist_ok=True)
    return json.dumps({"env": {}, "timings": {}, "bootId": boot_id(), "prometheusRoot": None, "processes": [
        {"name": "etcd", "pid": pid, "started": process_start(pid), "log": str(root / "etcd.log")}]}, indent=2)


def test_a_state_write_cut_short_leaves_the_last_good_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = start("etcd", ["sleep", "120"], tmp_path / "etcd.log")
    try:
        stack = Stack(root=tmp_path)
        stack.control_plane = ControlPlane(tmp_path / "controlplane", processes=[server])
        stack._save()
        good = stack.state_file.read_text()
        # A write that fails half-way (here: text that cannot be encoded, as a full disk fails mid-write).
        real_dumps = json.dumps
        monkeypatch.setattr(json, "dumps", lambda *a, **k: real_dumps(*a, **k)[:40] + "\udc80")
        with pytest.raises(UnicodeEncodeError):
            stack._save()
        monkeypatch.undo()
        assert stack.state_file.read_text() == good
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    finally:
        stop_pid(server.pid, grace_seconds=2)


def test_down_and_up_refuse_a_state_file_they_cannot_read(tmp_path: Path) -> None:
    server = start("etcd", ["sleep", "120"], tmp_path / "etcd.log")
    try:
        full = record(tmp_path, server.pid)
        (tmp_path / "state.json").write_text(full[: len(full) // 2])  # what a cut-short in-place write leaves
        with pytest.raises(StackError, match=r"state\.json cannot be read .* left alone"):
            Stack(root=tmp_path).down()
        with pytest.raises(StackError, match=r"state\.json cannot be read"):
            Stack(root=tmp_path).up(with_mlflow=False, with_prometheus=False)
        with pytest.raises(StackError, match=r"state\.json cannot be read"):
            load_state(tmp_path)
        assert (tmp_path / "state.json").read_text() == full[: len(full) // 2]
        assert pid_alive(server.pid)
        (tmp_path / "state.json").write_text(full)
        assert Stack(root=tmp_path).down() == [server.pid]
        assert not (tmp_path / "state.json").exists()
    finally:
        stop_pid(server.pid, grace_seconds=2)
