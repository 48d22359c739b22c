"""`modelrollout dev up` / `dev down` from the command line, and its clear one-line failures."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from controller.devstack.controlplane import ControlPlane
from controller.devstack.processes import LOOPBACK, StackError, pid_alive

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "controller.cli.main"]


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline[:200]}")
    return found


@pytest.mark.integration
def test_dev_up_then_kubectl_get_mro_then_dev_down_leaves_nothing(tmp_path: Path) -> None:
    state_dir = tmp_path / "stack"
    up = subprocess.run([*CLI, "dev", "up", "--state-dir", str(state_dir)], capture_output=True, text=True,
                        timeout=600, check=False)
    try:
        assert up.returncode == 0, up.stderr
        exports = dict(line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines())
        assert set(exports) == {"KUBECONFIG", "MLFLOW_TRACKING_URI", "PROMETHEUS_URL"}
        kubeconfig = shlex.split(exports["KUBECONFIG"])[0]
        for url in (exports["MLFLOW_TRACKING_URI"], exports["PROMETHEUS_URL"]):
            assert url.startswith(f"http://{LOOPBACK}:")

        get = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "get", "mro", "-A"], capture_output=True,
                             text=True, check=False, timeout=60)
        assert get.returncode == 0, get.stderr
        assert "No resources found" in get.stderr

        state = json.loads((state_dir / "state.json").read_text())
        pids = [p["pid"] for p in state["processes"]]
        assert {p["name"] for p in state["processes"]} == {"etcd", "kube-apiserver", "mlflow", "prometheus"}
        assert all(pid_alive(pid) for pid in pids)
    finally:
        down = subprocess.run([*CLI, "dev", "down", "--state-dir", str(state_dir)], capture_output=True, text=True,
                              timeout=120, check=False)
    assert down.returncode == 0, down.stderr
    assert not any(pid_alive(pid) for pid in pids)
    assert processes_mentioning(str(state_dir)) == []
    assert not (state_dir / "state.json").exists()


@pytest.mark.integration
def test_every_server_listens_on_loopback_only(control_plane: ControlPlane) -> None:
    listening = Path("/proc/net/tcp").read_text().splitlines()[1:] + Path("/proc/net/tcp6").read_text().splitlines()[1:]
    ports = {control_plane.api_port, control_plane.etcd_port}
    for line in listening:
        fields = line.split()
        local, state = fields[1], fields[3]
        address, port = local.rsplit(":", 1)
        if state == "0A" and int(port, 16) in ports:  # 0A = LISTEN
            assert address in ("0100007F", "00000000000000000000000001000000"), f"port {int(port, 16)} on {address}"


def test_port_clash_gives_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        plane = ControlPlane(tmp_path / "cp", api_port=port)
        with pytest.raises(StackError) as caught:
            plane.check_ports()
    message = str(caught.value)
    assert "\n" not in message and str(port) in message and "already in use" in message


def test_missing_go_toolchain_gives_one_clear_line(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "awk", "cat", "dirname", "mkdir", "python3", "grep", "tail", "date", "rm", "mv"):
        if (found := shutil.which(tool)):
            (bin_dir / tool).symlink_to(found)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "MODELROLLOUT_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(["bash", str(REPO / "hack" / "controlplane" / "build.sh")], env=env,
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Go toolchain" in lines[0], result.stderr


def test_failed_build_gives_one_clear_line(tmp_path: Path) -> None:
    module = tmp_path / "controlplane"
    shutil.copytree(REPO / "hack" / "controlplane", module)
    (module / "KUBERNETES_VERSION").write_text("v1.34.4\n")
    with open(module / "go.mod", "a") as gomod:
        gomod.write("this line is not go.mod syntax\n")
    env = {**os.environ, "MODELROLLOUT_CACHE": str(tmp_path / "cache")}
    env.pop("KUBEBUILDER_ASSETS", None)
    result = subprocess.run(["bash", str(module / "build.sh")], env=env, capture_output=True, text=True,
                            check=False, timeout=600)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: building kube-apiserver"), result.stderr
