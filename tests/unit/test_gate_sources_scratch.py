"""The gate's scratch disk: golden datasets stay within --max-dataset-bytes together (the pod's /tmp emptyDir is
sized for it; the kubelet evicts a pod whose emptyDir outgrows its sizeLimit), a disk without room is an
explained, retried gate error rather than an exception, and what a killed operator left is cleaned up."""

from __future__ import annotations

import collections
import fcntl
import hashlib
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import test_gate_sources
from aiohttp import web
from test_gate_support import run

from controller.gate import GateOptions, InferenceEndpoint, run_gate
from controller.gate import sources as sources_module
from controller.gate.errors import ErrorKind, SourceError, SourcePolicyError
from controller.gate.mlflow_access import MlflowAccess
from controller.gate.sources import ConfigMapContent, DatasetSources, ScratchLedger, fetch_dataset

PAYLOAD = b'{"classes": ["safe", "nsfw"]}\n' + b'{"features": [0.0, 1.0], "label": "nsfw"}\n' * 14  # 624 bytes


class ConfigMaps:
    def __init__(self) -> None:
        self.reads = 0

    def read_config_map(self, namespace: str, name: str) -> ConfigMapContent | None:
        self.reads += 1
        return ConfigMapContent(data={"golden.jsonl": PAYLOAD.decode()})


def fetch(sources: DatasetSources, destination: Path) -> Any:
    destination.parent.mkdir(parents=True, exist_ok=True)
    return run(fetch_dataset("configmap://golden/golden.jsonl", "team-a", sources, destination))


def free_space(monkeypatch: pytest.MonkeyPatch, *free: int) -> list[Path]:
    """shutil.disk_usage as the gate sees it: these free byte counts, one per call (the last one repeats)."""
    left, asked = collections.deque(free), []

    def disk_usage(path: Any) -> Any:
        asked.append(Path(path))
        value = left.popleft() if len(left) > 1 else left[0]
        return collections.namedtuple("usage", "total used free")(10 * 1024**3, 0, value)
    monkeypatch.setattr(sources_module.shutil, "disk_usage", disk_usage)
    return asked


def test_datasets_of_gates_in_flight_share_the_budget(tmp_path: Path) -> None:
    ledger = ScratchLedger()
    sources = DatasetSources(config_maps=ConfigMaps(), max_bytes=1000, scratch=ledger)
    first = fetch(sources, tmp_path / "gate-1" / "dataset")  # still on disk: its gate is evaluating
    assert first.size_bytes == len(PAYLOAD) < 1000
    with pytest.raises(SourceError) as crowded:
        fetch(sources, tmp_path / "gate-2" / "dataset")
    # Not a refusal of this dataset (it fits alone): retried once the other gate's scratch directory is gone.
    assert crowded.value.kind is ErrorKind.UNAVAILABLE and not isinstance(crowded.value, SourcePolicyError)
    assert "other gates in flight hold 0.0 MiB of the 0.0 MiB" in crowded.value.message
    assert "--max-dataset-bytes" in crowded.value.message
    first.path.unlink()
    second = fetch(sources, tmp_path / "gate-2" / "dataset")
    assert second.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    # The same file fetched again counts once (it is rewritten, not added to).
    assert fetch(sources, tmp_path / "gate-2" / "dataset").size_bytes == len(PAYLOAD)


def test_one_dataset_past_the_limit_is_refused_by_policy(tmp_path: Path) -> None:
    sources = DatasetSources(config_maps=ConfigMaps(), max_bytes=600, scratch=ScratchLedger())
    with pytest.raises(SourcePolicyError, match="larger than the 600-byte limit"):
        fetch(sources, tmp_path / "gate" / "dataset")


def test_a_full_disk_is_refused_before_anything_is_fetched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = free_space(monkeypatch, 1024**2)
    reader = ConfigMaps()
    with pytest.raises(SourceError) as full:
        fetch(DatasetSources(config_maps=reader), tmp_path / "gate" / "dataset")
    assert full.value.kind is ErrorKind.UNAVAILABLE
    assert "has 1.0 MiB free after 0.0 MiB of the dataset" in full.value.message
    assert "leaves 16.0 MiB free" in full.value.message
    assert reader.reads == 0 and asked == [tmp_path / "gate"]


def test_free_space_is_checked_before_each_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Room when the fetch starts, none left once the dataset arrives (another writer filled the disk meanwhile).
    free_space(monkeypatch, 1024**3, 16 * 1024**2 + len(PAYLOAD) - 1)
    with pytest.raises(SourceError, match=r"scratch disk .* has 16\.0 MiB free") as full:
        fetch(DatasetSources(config_maps=ConfigMaps()), tmp_path / "gate" / "dataset")
    assert full.value.kind is ErrorKind.UNAVAILABLE
    assert (tmp_path / "gate" / "dataset").read_bytes() == b""  # nothing was written past the check


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_write_that_finds_the_disk_full_is_an_explained_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """/dev/full fails every write with ENOSPC, as a filled volume does."""
    free_space(monkeypatch, 1024**3)
    with pytest.raises(SourceError) as full:
        run(fetch_dataset("configmap://golden/golden.jsonl", "team-a", DatasetSources(config_maps=ConfigMaps()),
                          Path("/dev/full")))
    assert full.value.kind is ErrorKind.UNAVAILABLE and "scratch disk is full" in full.value.message


def gate(tmp_path: Path, sources: DatasetSources) -> Any:
    candidate = InferenceEndpoint.from_url("http://127.0.0.1:9/v2/models/m/infer", "m")
    dataset = {"uri": "configmap://golden/golden.jsonl", "sha256": hashlib.sha256(PAYLOAD).hexdigest(),
               "thresholds": {"minAccuracy": 0.9}}
    return run(run_gate(dataset, candidate, None, namespace="team-a", sources=sources,
                        options=GateOptions(work_dir=str(tmp_path))))


def test_the_gate_reports_a_disk_without_room_as_an_error_to_retry(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    free_space(monkeypatch, 1024)
    report = gate(tmp_path, DatasetSources(config_maps=ConfigMaps()))
    assert report.error is not None and report.error.kind == "Unavailable" and not report.verdicts
    assert "scratch disk" in report.error.message and "scratch disk" in report.status["error"]["message"]
    assert not list(tmp_path.iterdir())  # its scratch directory is gone with it


def test_the_gate_cleans_up_after_dead_gates_and_leaves_live_ones(tmp_path: Path) -> None:
    dead = tmp_path / "modelrollout-gate-dead"
    dead.mkdir()
    (dead / ".in-use").write_bytes(b"")  # its process is gone: nobody holds the lock
    (dead / "dataset").write_bytes(b"x" * 600)
    live = tmp_path / "modelrollout-gate-live"
    live.mkdir()
    (live / "dataset").write_bytes(b"y" * 10)
    other = tmp_path / "modelrollout-gate-unlocked-and-unknown"  # no lock file: not known to be dead
    other.mkdir()
    planted = tmp_path / "modelrollout-gate-fifo"  # a FIFO as the lock (a shared /tmp): opening it would block
    planted.mkdir()
    os.mkfifo(planted / ".in-use")
    with open(live / ".in-use", "wb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # what a gate in flight holds
        report = gate(tmp_path, DatasetSources(config_maps=ConfigMaps()))
    assert report.dataset_sha256 == hashlib.sha256(PAYLOAD).hexdigest()  # fetched beside the live one
    assert not dead.exists() and (live / "dataset").exists() and other.exists() and planted.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, planted.name])


MIB = 1024**2
tls_files = test_gate_sources.tls_files  # the fixture: a self-signed certificate for 127.0.0.1


@asynccontextmanager
async def artifact_server(size: int, *, declared: bool = True,
                          tls: tuple[Path, Path] | None = None) -> AsyncIterator[str]:
    """Serves `size` bytes at every GET path, with a Content-Length or (declared=False) chunked, in 256 KiB
    pieces; plain HTTP as an MLflow tracking server, or https with tls=(cert, key). Yields its base URL."""
    body = b"x" * size

    async def serve(request: web.Request) -> web.StreamResponse:
        if declared:
            return web.Response(body=body)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, size, 256 * 1024):
            await response.write(body[start:start + 256 * 1024])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = None
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*tls)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


def crowded_fetch(tmp_path: Path, size: int, *, declared: bool = True, tls: tuple[Path, Path] | None = None,
                  alone: bool = False) -> Any:
    """Fetch a dataset of `size` bytes with a 2 MiB budget, of which another gate in flight holds 1 MiB
    (unless alone); returns the exception raised, or the FetchedDataset."""
    ledger = ScratchLedger()
    if not alone:
        other = tmp_path / "gate-1" / "dataset"
        other.parent.mkdir(parents=True)
        other.write_bytes(b"y" * MIB)
        assert ledger.claim(other, MIB, 2 * MIB) is None
    destination = tmp_path / "gate-2" / "dataset"
    destination.parent.mkdir(parents=True)

    async def scenario() -> Any:
        async with artifact_server(size, declared=declared, tls=tls) as base:
            if tls is None:
                uri = "mlflow-artifacts:/golden/big.jsonl"
                wanted = DatasetSources(mlflow=MlflowAccess(base, max_retries=0, timeout_seconds=30),
                                        max_bytes=2 * MIB, scratch=ledger)
            else:
                uri = f"{base}/big.jsonl"
                wanted = DatasetSources(https_allowed_hosts=["127.0.0.1"], https_ca_file=str(tls[0]),
                                        max_bytes=2 * MIB, scratch=ledger)
            try:
                return await fetch_dataset(uri, "team-a", wanted, destination)
            except SourceError as exc:
                return exc

    outcome = run(scenario())
    # Whatever happened, what this gate left on the disk is what the ledger counts for it.
    assert ledger.claim(destination, 0, 2 * MIB) is None
    return outcome


@pytest.mark.parametrize("declared", [True, False])
def test_an_mlflow_dataset_larger_than_the_whole_budget_is_refused_even_while_other_gates_hold_part(
        tmp_path: Path, declared: bool) -> None:
    # Declared (Content-Length) or not (chunked), the dataset (3 MiB) would not fit a budget of 2 MiB however
    # long it waited, though only 1 MiB is taken by another gate: refused, not retried.
    refused = crowded_fetch(tmp_path, 3 * MIB, declared=declared)
    alone = crowded_fetch(tmp_path / "alone", 3 * MIB, declared=declared, alone=True)
    assert isinstance(refused, SourcePolicyError) and isinstance(alone, SourcePolicyError)
    assert refused.kind is alone.kind is ErrorKind.INVALID
    assert refused.message == alone.message
    assert "is larger than the 2097152-byte limit for golden datasets" in refused.message
    assert (tmp_path / "gate-2" / "dataset").stat().st_size == 0  # what it had written no longer holds budget


def test_an_mlflow_dataset_declared_larger_than_the_budget_is_refused_before_it_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = free_space(monkeypatch, 1024**3)
    refused = crowded_fetch(tmp_path, 3 * MIB, declared=True)
    assert isinstance(refused, SourcePolicyError) and "is larger than the 2097152-byte limit" in refused.message
    assert asked.count(tmp_path / "gate-2") == 1  # the check before the fetch; no write was attempted


def test_an_mlflow_dataset_that_fits_the_budget_but_not_what_is_free_is_retried(tmp_path: Path) -> None:
    crowded = crowded_fetch(tmp_path, 2 * MIB, declared=False)
    assert isinstance(crowded, SourceError) and not isinstance(crowded, SourcePolicyError)
    assert crowded.kind is ErrorKind.UNAVAILABLE
    assert "other gates in flight hold 1.0 MiB of the 2.0 MiB" in crowded.message
    assert "retrying once they end" in crowded.message
    assert (tmp_path / "gate-2" / "dataset").stat().st_size == 0
    fetched = crowded_fetch(tmp_path / "alone", 2 * MIB, declared=False, alone=True)
    assert fetched.size_bytes == 2 * MIB and fetched.path.stat().st_size == 2 * MIB


def test_an_https_dataset_declared_larger_than_the_budget_is_refused_before_it_is_read(
        tls_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = free_space(monkeypatch, 1024**3)
    refused = crowded_fetch(tmp_path, 3 * MIB, tls=tls_files)
    assert asked.count(tmp_path / "gate-2") == 1  # the check before the fetch; no write was attempted
    alone = crowded_fetch(tmp_path / "alone", 3 * MIB, tls=tls_files, alone=True)
    assert isinstance(refused, SourcePolicyError) and isinstance(alone, SourcePolicyError)
    for error in (refused, alone):  # the same words, from servers on different ports
        assert error.message.endswith("/big.jsonl is larger than the 2097152-byte limit for golden datasets")
    assert (tmp_path / "gate-2" / "dataset").stat().st_size == 0  # refused on its Content-Length: nothing kept


@pytest.mark.parametrize("declared", [True, False])
def test_an_https_dataset_that_fits_the_budget_but_not_what_is_free_is_retried(
        tls_files: tuple[Path, Path], tmp_path: Path, declared: bool) -> None:
    crowded = crowded_fetch(tmp_path, 2 * MIB, declared=declared, tls=tls_files)
    assert isinstance(crowded, SourceError) and not isinstance(crowded, SourcePolicyError)
    assert crowded.kind is ErrorKind.UNAVAILABLE and "other gates in flight hold" in crowded.message
    refused = crowded_fetch(tmp_path / "chunked", 3 * MIB, declared=False, tls=tls_files)
    assert isinstance(refused, SourcePolicyError) and "is larger than the 2097152-byte limit" in refused.message
