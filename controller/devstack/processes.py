"""Start, probe and stop local server processes. Every server binds to 127.0.0.1 on a free port."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
_RANDOM = random.SystemRandom()


class StackError(RuntimeError):
    """A local-stack failure, stated in one line that says what to do."""


# Ports handed out by this process: two picks in a row must not name the same port before either server binds it.
_HANDED_OUT: set[int] = set()
_LOWEST_PICK = 10000


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range: a port the kernel handed out (bind to 0) is one it
    also gives outgoing connections, and one of those (etcd dialling itself, a probe) took a port picked for
    kube-apiserver before it started ("address already in use"; seen in CI)."""
    low = _ephemeral_low()
    for _ in range(200):
        port = _RANDOM.randrange(_LOWEST_PICK, low) if low > _LOWEST_PICK + 1000 else 0
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            chosen = int(sock.getsockname()[1])
        _HANDED_OUT.add(chosen)
        return chosen
    raise StackError(f"no free port on {LOOPBACK} below {low} after 200 tries")


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux's default when it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def ensure_port_free(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError as exc:
            raise StackError(f"{what}: port {LOOPBACK}:{port} is already in use ({exc.strerror})") from None


@dataclass
class ManagedProcess:
    """A server started in its own session, so that stopping it also stops its children."""

    name: str
    pid: int
    log: Path

    def alive(self) -> bool:
        return pid_alive(self.pid)

    def stop(self, grace_seconds: float = 10.0) -> None:
        stop_pid(self.pid, grace_seconds)

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start(name: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> ManagedProcess:
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    with open(log, "ab") as log_file:
        try:
            proc = subprocess.Popen(
                list(argv), stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=full_env, cwd=cwd, start_new_session=True)
        except FileNotFoundError:
            raise StackError(f"{name}: executable not found: {argv[0]}") from None
        except OSError as exc:  # e.g. not executable, or not a program this machine can run
            raise StackError(f"{name}: cannot run {argv[0]}: {exc.strerror or exc}") from None
    return ManagedProcess(name=name, pid=proc.pid, log=log)


@contextlib.contextmanager
def interrupt_on_termination() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt while servers are started or used, as Ctrl-C is.

    Every server runs in its own session, so a `kill`, a CI timeout or a closed terminal never reaches it: only
    the cleanup that a KeyboardInterrupt runs (finally, ExitStack) stops it. A repeated signal is ignored so that
    it cannot cut that cleanup short. Outside the main thread Python cannot set handlers: nothing is changed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGTERM, signal.SIGHUP)

    def interrupt(signum: int, _frame: object) -> None:
        for sig in signals:
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def process_start(pid: int) -> str | None:
    """When the process with this PID started (clock ticks since boot, /proc/<pid>/stat field 22), or None.

    A PID names a process only together with its start: after a reboot or an exit the number is reused.
    """
    fields = proc_stat(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def proc_stat(pid: int | str) -> list[str] | None:
    """/proc/<pid>/stat after the command name (state, ppid, pgrp, ...), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()  # the command name, in parentheses, may hold spaces


def boot_id() -> str | None:
    """This boot's id: recorded PIDs and start times mean something only within the boot that recorded them."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def group_alive(pgid: int) -> bool:
    """Whether a process group of this id still has running members (Linux does not reuse a PID while it names one).

    Zombies do not count: an orphan's zombie stays in the group until whoever adopted it reaps it, and a PID 1
    that never reaps (as in some containers) would keep the group "alive" for ever.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True  # no /proc: kill(0) is all we know
    for entry in entries:
        fields = proc_stat(entry) if entry.isdigit() else None  # None too when it exited meanwhile
        if fields is not None and len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    # Anyone else's zombie has exited all the same (a PID 1 that never reaps keeps it for ever).
    return (proc_stat(pid) or ["?"])[0] != "Z"


def stop_pid(pid: int, grace_seconds: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL it after the grace period.

    Waits for the whole group: a leader that exits first may leave members (a server's workers) still running.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline:
            if not pid_alive(pid) and not group_alive(pid):
                return
            time.sleep(0.05)


def wait_http_ok(url: str, process: ManagedProcess, timeout: float, token: str | None = None,
                 insecure_tls: bool = False) -> float:
    """Poll url until it answers 200; fail fast if the process died. Returns seconds waited."""
    start_time = time.monotonic()
    context = ssl._create_unverified_context() if insecure_tls else None  # noqa: S323 - loopback self-signed
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    last_error = "no answer"
    while time.monotonic() - start_time < timeout:
        if not process.alive():
            raise StackError(f"{process.name} exited during start-up: {process.log_tail()}")
        try:
            request = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback URL we built
            with urllib.request.urlopen(request, timeout=2, context=context) as response:  # noqa: S310
                if response.status == 200:
                    return time.monotonic() - start_time
        except urllib.error.HTTPError as exc:
            last_error = f"HTTP {exc.code}"
        except (OSError, urllib.error.URLError) as exc:
            last_error = str(getattr(exc, "reason", exc))
        time.sleep(0.2)
    raise StackError(f"{process.name} not ready at {url} after {timeout:.0f}s ({last_error}): {process.log_tail()}")
