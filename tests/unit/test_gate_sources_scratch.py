"""The gate's scratch disk: golden datasets stay within --max-dataset-bytes together (the pod's /tmp emptyDir is
sized for it; the kubelet evicts a pod whose emptyDir outgrows its sizeLimit), a disk without room is an
explained, retried gate error rather than an exception, and what a killed operator left is cleaned up."""

from __future__ import annotations

import collections
import fcntl
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from test_gate_support import run

from controller.gate import GateOptions, InferenceEndpoint, run_gate
from controller.gate import sources as sources_module
from controller.gate.errors import ErrorKind, SourceError, SourcePolicyError
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
