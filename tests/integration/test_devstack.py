"""`modelrollout dev up` / `dev down` from the command line, and its clear one-line failures."""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from controller.devstack.controlplane import ControlPlane
from controller.devstack.dataplane import start_exporter
from controller.devstack.mlflow_server import MlflowServer
from controller.devstack.model_server import ModelServerProcess, demo_models, register_linear_model
from controller.devstack.processes import LOOPBACK, StackError, pid_alive
from controller.devstack.prometheus_server import PrometheusServer
from controller.devstack.stack import Stack
from controller.gate.mlflow_access import MlflowAccess
from tests.integration.operator_process import OperatorProcess

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
        # The stop command it prints is the one below: without --state-dir it would find no stack to stop.
        # (Named as it was run: `python -m controller.cli.main` here, see controller/cli/program.py.)
        ran = f"{shlex.quote(sys.executable)} -m controller.cli.main"
        assert f"stop it with: {ran} dev down --state-dir {shlex.quote(str(state_dir))}\n" in up.stderr
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


# The only addresses a server of the stack or of the tests may listen on (the project's loopback rule).
LOOPBACK_ADDRESSES = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
TCP_LISTEN = "0A"


def proc_net_address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp{,6} prints it: each 32-bit word in the host's byte order."""
    raw = bytes.fromhex(hex_address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw)


def parse_listeners(table: str) -> dict[int, tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """Socket inode -> (address, port) of every LISTEN row of a /proc/net/tcp{,6} table."""
    found = {}
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 9 and fields[3] == TCP_LISTEN:
            address, port = fields[1].rsplit(":", 1)
            found[int(fields[9])] = (proc_net_address(address), int(port, 16))
    return found


def listening_sockets() -> dict[int, tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    return {**parse_listeners(Path("/proc/net/tcp").read_text()), **parse_listeners(Path("/proc/net/tcp6").read_text())}


def process_tree(leader: int) -> set[int]:
    """The leader, its descendants and anything left in its session (every server is started in its own)."""
    parent_of, session_of = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
            parent_of[int(entry.name)], session_of[int(entry.name)] = int(fields[1]), int(fields[3])
    tree = {leader} | {pid for pid, session in session_of.items() if session == leader}
    grown = True
    while grown:
        children = {pid for pid, parent in parent_of.items() if parent in tree} - tree
        tree |= children
        grown = bool(children)
    return tree


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # gone meanwhile
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:["):-1]))
    return inodes


def listeners_of(leader: int) -> set[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """Every TCP (v4 and v6) address:port that the leader's process tree is LISTENing on."""
    sockets = listening_sockets()
    return {sockets[inode] for pid in process_tree(leader) for inode in socket_inodes(pid) if inode in sockets}


def host_port(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def flag_value(pid: int, flag: str) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return argv[argv.index(flag) + 1]


def test_proc_net_rows_decode_to_the_addresses_a_server_bound() -> None:
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    rows = {
        "0100007F:1F90": ("127.0.0.1", 8080),
        "00000000:0050": ("0.0.0.0", 80),  # noqa: S104 - a row to decode, nothing binds here
        "00000000000000000000000001000000:01BB": ("::1", 443),
        "00000000000000000000000000000000:0016": ("::", 22),
    }
    table = header + "".join(
        f"   {n}: {local} 00000000:0000 {TCP_LISTEN} 00000000:00000000 00:00000000 00000000  1000  0 {100 + n} 1\n"
        for n, local in enumerate(rows))
    table += "   9: 0100007F:9999 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000  0 999 1\n"
    found = parse_listeners(table)
    assert {inode: (str(address), port) for inode, (address, port) in found.items()} == {
        100 + n: expected for n, expected in enumerate(rows.values())}  # the ESTABLISHED row is no listener
    assert [address in LOOPBACK_ADDRESSES for address, _ in found.values()] == [True, False, True, False]


@pytest.mark.integration
def test_every_server_listens_on_loopback_only(stack: Stack, control_plane: ControlPlane, mlflow_server: MlflowServer,
                                               prometheus: PrometheusServer, tmp_path: Path) -> None:
    """Every TCP listener of every server process the stack and the tests start, found by PID, is on loopback."""
    assert prometheus is stack.prometheus and mlflow_server is stack.mlflow and control_plane is stack.control_plane
    # name -> (leader PID, the ports it was told to serve; each must be among what it is found listening on)
    servers: dict[str, tuple[int, set[int]]] = {}
    known_ports = {"kube-apiserver": {control_plane.api_port}, "mlflow": {mlflow_server.port},
                   "prometheus": {prometheus.port}}
    for process in stack.processes():
        if process.name == "etcd":
            peer_port = int(flag_value(process.pid, "--listen-peer-urls").rsplit(":", 1)[1])
            known_ports["etcd"] = {control_plane.etcd_port, peer_port}
        servers[process.name] = (process.pid, known_ports.get(process.name, set()))
    assert set(servers) == {"etcd", "kube-apiserver", "mlflow", "prometheus"}

    # The servers the tests start beside the stack: the prediction exporter, a model server, the operator's /metrics.
    exporter, exporter_url = start_exporter(tmp_path / "exporter.log")
    model_name = f"loopback-{uuid.uuid4().hex[:6]}"
    version = register_linear_model(MlflowAccess(mlflow_server.url), model_name, demo_models()["stable"])
    model_server = ModelServerProcess.start(f"models:/{model_name}/{version}", mlflow_server.url,
                                            tmp_path / "model-server.log")
    operator = OperatorProcess(control_plane.admin_kubeconfig, tmp_path / "operator.log").start()
    try:
        assert operator.proc is not None
        servers["exporter"] = (exporter.pid, {int(exporter_url.rsplit(":", 1)[1])})
        servers["model-server"] = (model_server.process.pid, {model_server.port})
        servers["operator"] = (operator.proc.pid, set())  # --metrics-port 0: any free port
        deadline = time.monotonic() + 60
        while not listeners_of(operator.proc.pid) and time.monotonic() < deadline:
            assert operator.proc.poll() is None, (tmp_path / "operator.log").read_text()[-2000:]
            time.sleep(0.2)

        found = {name: listeners_of(pid) for name, (pid, _) in servers.items()}
    finally:
        operator.stop()
        model_server.stop()
        exporter.stop()

    problems = []
    for name, (pid, ports) in servers.items():
        listening = found[name]
        shown = sorted(host_port(address, port) for address, port in listening)
        if not listening:
            problems.append(f"{name} (pid {pid}) is not listening on any TCP port")
        if missing := ports - {port for _, port in listening}:
            problems.append(f"{name} (pid {pid}) is not listening on its port(s) {sorted(missing)}; found {shown}")
        if off := sorted(host_port(a, p) for a, p in listening if a not in LOOPBACK_ADDRESSES):
            problems.append(f"{name} (pid {pid}) listens off loopback on {off}")
    assert not problems, "\n".join(problems)


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
