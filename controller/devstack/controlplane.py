"""A real kube-apiserver + etcd on loopback, built from the pinned Go module in hack/controlplane."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from controller.devstack.processes import (
    LOOPBACK,
    ManagedProcess,
    StackError,
    ensure_port_free,
    free_port,
    start,
    wait_http_ok,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "controlplane" / "build.sh"
ADMIN_USER = "modelrollout-admin"
# Ordinary identities with no rights until a test grants them a Role.
PLAIN_USERS = ("alice", "bob")


def control_plane_binaries() -> Path:
    """Directory holding kube-apiserver and etcd: KUBEBUILDER_ASSETS, the version-keyed cache, or a build."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and all((Path(assets) / name).is_file() for name in ("kube-apiserver", "etcd")):
        for name in ("kube-apiserver", "etcd"):
            if not os.access(Path(assets) / name, os.X_OK):
                raise StackError(f"KUBEBUILDER_ASSETS: {Path(assets) / name} is not executable: "
                                 "chmod +x it, or unset KUBEBUILDER_ASSETS to build the pinned one")
        return Path(assets)
    if not BUILD_SCRIPT.is_file():
        raise StackError("kube-apiserver and etcd not found: set KUBEBUILDER_ASSETS to a directory holding them "
                         "or run from a source checkout that has hack/controlplane")
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = (result.stderr.strip() or result.stdout.strip() or "build failed").splitlines()
        raise StackError(lines[-1])
    return Path(result.stdout.strip().splitlines()[-1])


def write_private(path: Path, text: str) -> None:
    """Write a file that holds a token owner-only from the start, never readable by others even for a moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(file.fileno(), 0o600)  # the mode given to os.open applies only to a file it creates
        file.write(text)


@dataclass
class ControlPlane:
    """etcd + kube-apiserver with RBAC on, an admin token and ordinary user tokens."""

    root: Path
    api_port: int = 0
    etcd_port: int = 0
    tokens: dict[str, str] = field(default_factory=dict)
    processes: list[ManagedProcess] = field(default_factory=list)
    # Called as each process starts, before it is ready: the stack records it at once (a `kill -9` may follow).
    on_start: Callable[[], None] = field(default=lambda: None, repr=False)

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.api_port}"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    def check_ports(self) -> None:
        for port, what in ((self.api_port, "kube-apiserver"), (self.etcd_port, "etcd")):
            if port:
                ensure_port_free(port, what)

    def start(self, timeout: float = 90.0) -> None:
        self.check_ports()
        binaries = control_plane_binaries()
        if self.root.exists():
            shutil.rmtree(self.root)
        (self.root / "certs").mkdir(parents=True)
        self.api_port = self.api_port or free_port()
        self.etcd_port = self.etcd_port or free_port()
        peer_port = free_port()
        self._write_credentials()

        etcd = start("etcd", [
            str(binaries / "etcd"), "--data-dir", str(self.root / "etcd-data"), "--name", "default",
            "--listen-client-urls", f"http://{LOOPBACK}:{self.etcd_port}",
            "--advertise-client-urls", f"http://{LOOPBACK}:{self.etcd_port}",
            "--listen-peer-urls", f"http://{LOOPBACK}:{peer_port}",
            "--initial-advertise-peer-urls", f"http://{LOOPBACK}:{peer_port}",
            "--initial-cluster", f"default=http://{LOOPBACK}:{peer_port}",
            "--unsafe-no-fsync", "--log-level", "warn", "--listen-metrics-urls", "",
        ], self.root / "etcd.log")
        self.processes.append(etcd)
        self.on_start()
        wait_http_ok(f"http://{LOOPBACK}:{self.etcd_port}/health", etcd, timeout)

        apiserver = start("kube-apiserver", [
            str(binaries / "kube-apiserver"),
            f"--etcd-servers=http://{LOOPBACK}:{self.etcd_port}",
            f"--bind-address={LOOPBACK}", f"--advertise-address={LOOPBACK}",
            f"--secure-port={self.api_port}", f"--cert-dir={self.root / 'certs'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            f"--service-account-issuer=https://{LOOPBACK}:{self.api_port}",
            f"--service-account-key-file={self.root / 'sa.key'}",
            f"--service-account-signing-key-file={self.root / 'sa.key'}",
            f"--token-auth-file={self.root / 'tokens.csv'}",
            "--authorization-mode=RBAC", "--anonymous-auth=false",
            "--disable-admission-plugins=ServiceAccount", "--allow-privileged=true",
            "--endpoint-reconciler-type=none", "--enable-priority-and-fairness=false",
            "--profiling=false", "--v=0",
        ], self.root / "kube-apiserver.log")
        self.processes.append(apiserver)
        self.on_start()
        wait_http_ok(f"{self.url}/readyz", apiserver, timeout, token=self.tokens[ADMIN_USER], insecure_tls=True)
        self.write_kubeconfig(self.admin_kubeconfig, ADMIN_USER, self.tokens[ADMIN_USER])

    def _write_credentials(self) -> None:
        try:
            result = subprocess.run(["openssl", "genrsa", "-out", str(self.root / "sa.key"), "2048"],
                                    check=False, capture_output=True, text=True)
        except OSError as exc:
            raise StackError(f"cannot run openssl (it makes the service-account key): {exc.strerror or exc}; "
                             "install it (hack/setup.sh does)") from None
        if result.returncode != 0:
            raise StackError(f"openssl genrsa failed: {(result.stderr.strip() or 'no output')[-300:]}")
        self.tokens = {user: secrets.token_urlsafe(32) for user in (ADMIN_USER, *PLAIN_USERS)}
        lines = [f'{self.tokens[ADMIN_USER]},{ADMIN_USER},uid-admin,"system:masters"']
        lines += [f"{self.tokens[user]},{user},uid-{user}" for user in PLAIN_USERS]
        write_private(self.root / "tokens.csv", "\n".join(lines) + "\n")

    def ca_data(self) -> str:
        # kube-apiserver writes its self-signed serving certificate together with the CA that signed it.
        return base64.b64encode((self.root / "certs" / "apiserver.crt").read_bytes()).decode()

    def write_kubeconfig(self, path: Path, user: str, token: str, namespace: str = "default") -> Path:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "modelrollout-dev",
            "clusters": [{"name": "modelrollout-dev",
                          "cluster": {"server": self.url, "certificate-authority-data": self.ca_data()}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "modelrollout-dev",
                          "context": {"cluster": "modelrollout-dev", "user": user, "namespace": namespace}}],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, yaml.safe_dump(config))
        return path

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
