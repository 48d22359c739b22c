"""The whole local stack: control plane, CRDs, MLflow and Prometheus, with its state in one JSON file."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from controller.cli.program import program
from controller.devstack.controlplane import REPO_ROOT, ControlPlane
from controller.devstack.mlflow_server import MlflowServer
from controller.devstack.processes import (
    ManagedProcess,
    StackError,
    boot_id,
    group_alive,
    pid_alive,
    process_start,
    stop_pid,
)
from controller.devstack.prometheus_server import PrometheusServer

PROJECT_CRDS = REPO_ROOT / "crds"
# The real serving-system CRDs, read from the shared folder beside the checkout (never copied in).
UPSTREAM_CRDS = Path(os.environ.get("MODELROLLOUT_UPSTREAM_CRDS", REPO_ROOT.parent / "shared" / "upstream-crds"))


# What each start step of `dev up` does, in the words of its progress line.
STEP_WORDS = {"controlPlane": "starting the control plane (etcd, kube-apiserver)", "crds": "installing the CRDs",
              "mlflow": "starting MLflow", "prometheus": "starting Prometheus"}
# In the state dir: the subdirectories `dev up` created, each named before it is created. Only those are emptied at
# a start: `--state-dir ~` must never remove a user's own ~/mlflow.
OWNED_MARK = ".modelrollout-devstack"
# What each server writes in its subdirectory: one the mark does not name (a state dir from before the mark, or one
# started with --no-mlflow then) is adopted only where it holds nothing else and holds the log dev up writes there,
# and only in a state dir whose control plane dev up ran (`mlflow.db` with `artifacts/` and `mlflow.log`, or
# `prometheus.yml` with `data/`, is also the layout of a user's own server).
WRITTEN_BY_DEV_UP = {
    "controlplane": {"certs", "etcd-data", "etcd.log", "kube-apiserver.log", "kubeconfig", "sa.key", "tokens.csv"},
    "mlflow": {"artifacts", "mlflow.db", "mlflow.db-journal", "mlflow.log", "basic_auth.ini", "basic_auth.db",
               "basic_auth.db-journal"},
    "prometheus": {"backfill.om", "data", "prometheus.log", "prometheus.yml", "targets"},
}
LOG_BY_DEV_UP = {"controlplane": "kube-apiserver.log", "mlflow": "mlflow.log", "prometheus": "prometheus.log"}


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    # Absolute: the exports and hints that name it are used from other directories.
    return Path(os.path.abspath(os.environ.get("MODELROLLOUT_STATE_DIR", Path(base) / "modelrollout" / "devstack")))


def crd_files(upstream_dir: Path = UPSTREAM_CRDS) -> list[Path]:
    """The project's CRD, then the real KServe and Seldon CRDs: every patch is checked by their schemas."""
    upstream = sorted(upstream_dir.glob("*.yaml")) if upstream_dir.is_dir() else []
    if not upstream:
        raise StackError(f"no KServe/Seldon CRDs in {upstream_dir}: the repository is checked out beside shared/ "
                         "(its upstream-crds/), or MODELROLLOUT_UPSTREAM_CRDS names a directory of them")
    return sorted(PROJECT_CRDS.glob("*.yaml")) + upstream


def kubectl(kubeconfig: Path, *args: str, input_text: str | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["kubectl", f"--kubeconfig={kubeconfig}", *args], input=input_text,
                            capture_output=True, text=True, check=False, timeout=timeout)
    if check and result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip())[:500]
        raise StackError(f"kubectl {args[0]} failed: {detail}")
    return result


def fill_untyped_array_items(schema: Any) -> Any:
    """Give `items: {}` an explicit open object type.

    Seldon Core v1's generated CRD leaves the recursive `graph.children.items` empty, which the API server
    refuses as non-structural; Seldon's own release build expands that recursion the same way before
    installing. Everything else in the upstream schema is applied untouched.
    """
    if isinstance(schema, dict):
        if schema.get("type") == "array" and schema.get("items") == {}:
            schema["items"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        for value in schema.values():
            fill_untyped_array_items(value)
    elif isinstance(schema, list):
        for value in schema:
            fill_untyped_array_items(value)
    return schema


def install_crds(kubeconfig: Path) -> list[str]:
    names = []
    for path in crd_files():
        crd = fill_untyped_array_items(yaml.safe_load(path.read_text()))
        kubectl(kubeconfig, "apply", "--server-side", "--field-manager=modelrollout-devstack", "-f", "-",
                input_text=json.dumps(crd))
        names.append(f"customresourcedefinition.apiextensions.k8s.io/{crd['metadata']['name']}")
    wait_established(kubeconfig, names)
    return names


def wait_established(kubeconfig: Path, names: list[str], timeout: float = 60.0) -> None:
    # Polled: `kubectl wait` fails outright while a new CRD has no conditions yet.
    deadline = time.monotonic() + timeout
    pending = names
    while time.monotonic() < deadline:
        listing = json.loads(kubectl(kubeconfig, "get", *names, "-o", "json").stdout)
        items = listing.get("items", [listing])  # one name gives the object itself, not a List
        established = {item["metadata"]["name"] for item in items
                       if any(c["type"] == "Established" and c["status"] == "True"
                              for c in (item.get("status") or {}).get("conditions") or [])}
        pending = [n for n in names if n.rsplit("/", 1)[-1] not in established]
        if not pending:
            return
        time.sleep(0.2)
    raise StackError(f"CRDs not established after {timeout:.0f}s: {', '.join(pending)}")


@dataclass
class Stack:
    root: Path = field(default_factory=default_state_dir)
    control_plane: ControlPlane | None = None
    mlflow: MlflowServer | None = None
    prometheus: PrometheusServer | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(os.path.abspath(self.root))  # named in exports and hints used from other directories

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    def up(self, with_mlflow: bool = True, with_prometheus: bool = True) -> None:
        # Raises for a record it cannot read: never overwritten, the processes it names may be running.
        if self.state_file.exists() and self._recorded_pids():  # the recorded processes still running
            # The exact command: a bare `dev down` looks in the default state dir, not in this one.
            # Most often another demo or `dev up` still using it: `dev down` would stop that run, so only if stale.
            raise StackError(f"a stack is already running from {self.root}: another demo or `dev up` is using it; "
                             "wait for it to end, or, if it is stale, stop it with "
                             f"`{program()} dev down --state-dir {shlex.quote(str(self.root))}`")
        # Every directory it will empty, checked before anything starts: a refusal leaves nothing half started.
        _claim(self.root, "controlplane", *(["mlflow"] * with_mlflow), *(["prometheus"] * with_prometheus))
        try:
            self.start_control_plane()
            if with_mlflow:
                self.start_mlflow()
            if with_prometheus:
                self.start_prometheus()
        except BaseException:
            self.down()
            raise

    def start_control_plane(self) -> ControlPlane:
        if self.control_plane is None:
            _claim(self.root, "controlplane")  # ControlPlane.start empties it: only one `dev up` created
            self.control_plane = ControlPlane(self.root / "controlplane", on_start=self._save)
            self._timed("controlPlane", self.control_plane.start)
            self._timed("crds", lambda: install_crds(self.control_plane.admin_kubeconfig))
        return self.control_plane

    def start_mlflow(self) -> MlflowServer:
        if self.mlflow is None:
            # Empty at every start, as the control plane: a previous run's models would shift every version number.
            _claim(self.root, "mlflow")
            self.mlflow = MlflowServer(_wipe(self.root / "mlflow"), on_start=self._save)
            self._timed("mlflow", self.mlflow.start)
        return self.mlflow

    def start_prometheus(self) -> PrometheusServer:
        if self.prometheus is None:
            # Empty too: old series, and a previous demo's scrape targets (an address something else may hold now).
            _claim(self.root, "prometheus")
            self.prometheus = PrometheusServer(_wipe(self.root / "prometheus"), on_start=self._save)
            self._timed("prometheus", self.prometheus.start)
        return self.prometheus

    def _timed(self, name: str, step: Any) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # One line per step on a terminal, where the 20-40 s start would otherwise be silent; none when logged.
        if sys.stderr.isatty():
            print(f"# {STEP_WORDS.get(name, name)} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            step()
        finally:
            # Saved after every step too (each process is saved as it starts, see on_start), so `dev down` can stop
            # whatever did start even if a later step failed or `dev up` was killed outright.
            self.timings[name] = round(time.monotonic() - started, 2)
            self._save()

    def processes(self) -> list[ManagedProcess]:
        """In stopping order: the last started first (kube-apiserver before its etcd, which otherwise takes 7 s to
        stop while the API server keeps calling it)."""
        servers = [s for s in (self.prometheus, self.mlflow, self.control_plane) if s is not None]
        return [p for server in servers for p in reversed(server.processes)]

    def environment(self) -> dict[str, str]:
        env = {}
        if self.control_plane:
            env["KUBECONFIG"] = str(self.control_plane.admin_kubeconfig)
        if self.mlflow:
            env["MLFLOW_TRACKING_URI"] = self.mlflow.url
        if self.prometheus:
            env["PROMETHEUS_URL"] = self.prometheus.url
        return env

    def _save(self) -> None:
        # stateDir: where the demo, a later process, adds the processes it starts (see record_process).
        state = {"env": self.environment(), "timings": self.timings, "bootId": boot_id(), "stateDir": str(self.root),
                 "prometheusRoot": str(self.prometheus.root) if self.prometheus else None,
                 "processes": [_entry(p) for p in self.processes()]}
        _write_state(self.state_file, state)

    def _recorded_pids(self) -> list[int]:
        """The recorded processes still running: a PID whose process started at another time is not ours (after
        a reboot or an exit the number is reused) and is never signalled."""
        try:
            state = json.loads(self.state_file.read_text())
            recorded = [(int(p["pid"]), p.get("started")) for p in state["processes"]]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # Refused rather than read as "nothing recorded": deleting or overwriting it would orphan its servers.
            raise StackError(f"{self.state_file} cannot be read ({type(exc).__name__}: {exc}); it was left alone: "
                             "stop the processes it lists (see their logs beside it), then remove it") from None
        if state.get("bootId") is None or state.get("bootId") != boot_id():
            return []  # another boot: every number may name another process now
        return [pid for pid, started in recorded if _still_running(pid, started)]

    def down(self) -> list[int]:
        """Stop what this object started and what the state file records, by PID. Returns the PIDs stopped."""
        stopped = []
        for process in self.processes():
            process.stop()
            stopped.append(process.pid)
        for pid in self._recorded_pids():
            if pid not in stopped:
                stop_pid(pid)
                stopped.append(pid)
        self.state_file.unlink(missing_ok=True)
        return stopped


def _claim(root: Path, *names: str) -> None:
    """Make sure `dev up` may empty each <root>/<name>: one it created (named in the mark, written before it is
    created), an empty one, or, in a state dir from before the mark, one holding only what dev up writes there.

    Anything else is refused, naming it, before any is claimed: a directory of the user's that has the same name,
    or a link (emptying it would follow the link, or fail with no useful message)."""
    # mkdir below would fail with only "File exists", naming nothing.
    if root.exists() and not root.is_dir():
        kind = "a file, not a directory" if root.is_file() else "not a directory"
        raise StackError(f"the state dir {root} is {kind}: choose another --state-dir (or $MODELROLLOUT_STATE_DIR)")
    mark = root / OWNED_MARK
    # None: no mark (new, or an earlier version). Not text: its names are not ours, so nothing is owned by it.
    owned = set(mark.read_text(errors="replace").split()) if mark.exists() else None
    # A state dir dev up used before the mark: its control plane's own files are there (a user's directory named
    # mlflow/ may well hold mlflow.log, but not beside a controlplane/ with the API server's token file and key).
    legacy = all((root / "controlplane" / kept).is_file() for kept in ("sa.key", "tokens.csv", "kube-apiserver.log"))
    for name in names:
        directory = root / name
        if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
            kind = "a symbolic link" if directory.is_symlink() else "not a directory"
            raise StackError(f"{directory} is {kind}: `dev up` empties this directory at every start, so it must be "
                             "a plain directory it created; it was left alone: remove it, or choose another "
                             "--state-dir")
        entries = {entry.name for entry in directory.iterdir()} if directory.exists() else set()
        ours = legacy and entries <= WRITTEN_BY_DEV_UP[name] and LOG_BY_DEV_UP[name] in entries
        if entries and name not in (owned or ()) and not ours:
            raise StackError(f"{directory} holds files `dev up` did not create (it empties this directory at every "
                             "start); it was left alone: choose another --state-dir, or move it away")
    if owned is None or not owned.issuperset(names):
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file where a parent directory should be, no permission
            raise StackError(f"cannot create the state dir {root}: {exc.strerror or type(exc).__name__}") from None
        _write_atomic(mark, "\n".join(sorted((owned or set()) | set(names))) + "\n")


def _wipe(directory: Path) -> Path:
    if directory.exists():
        shutil.rmtree(directory)
    return directory


def _entry(process: ManagedProcess) -> dict[str, Any]:
    return {"name": process.name, "pid": process.pid, "started": process_start(process.pid), "log": str(process.log)}


def _still_running(pid: int, started: str | None) -> bool:
    """The recorded process (same PID and start) still runs, or, when it has exited, the group it led (its
    children, e.g. MLflow's server). A zombie has exited: a PID 1 that never reaps keeps it, start time and all."""
    if started is None or process_start(pid) not in (started, None):
        return False
    return pid_alive(pid) or group_alive(pid)


def _write_state(state_file: Path, state: dict[str, Any]) -> None:
    _write_atomic(state_file, json.dumps(state, indent=2))


def _write_atomic(path: Path, text: str) -> None:
    # Atomic: a write cut short (Ctrl-C, a full disk) must never leave a truncated record of running servers.
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(partial, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def record_process(state_dir: Path, process: ManagedProcess) -> None:
    """Add a process started on a running stack (the demo's operator, exporter, model servers) to its record, first:
    `dev down` then stops it even if whatever started it was killed outright, and before the servers it uses.

    Entries no longer running are dropped. No record (the stack is gone, or was never `dev up`'s): nothing to add to.
    """
    state_file = state_dir / "state.json"
    try:
        state = json.loads(state_file.read_text())
        kept = [p for p in state["processes"] if _still_running(int(p["pid"]), p.get("started"))]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # unreadable records are refused by `dev up`/`dev down` themselves, never rewritten here
    state["processes"] = [_entry(process), *kept]
    _write_state(state_file, state)


def state_dir_option(root: Path | str | None) -> str:
    """` --state-dir <root>` for a printed `dev up`/`dev down` hint, empty for the default one: without it the hint
    would act on the default state dir, not the one the user named."""
    if root is None or Path(root).resolve() == default_state_dir().resolve():
        return ""
    return f" --state-dir {shlex.quote(str(root))}"


def load_state(root: Path | None = None) -> dict[str, Any]:
    state_file = (root or default_state_dir()) / "state.json"
    if not state_file.exists():
        raise StackError(f"no local stack is running (no {state_file}): "
                         f"run `{program()} dev up{state_dir_option(root)}`")
    try:
        state: dict[str, Any] = json.loads(state_file.read_text())
    except (OSError, ValueError) as exc:
        raise StackError(f"{state_file} cannot be read ({exc}): stop the processes it lists (see their logs "
                         "beside it), then remove it") from None
    return state
