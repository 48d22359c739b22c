"""An .npz whose zip directory lists far more entries than an .npz has arrays is refused from its end record, before
zipfile builds an object per entry (3 million entries in a 150 MiB file took 1 GiB and stalled the event loop for
26 s); and the dataset is opened off the event loop."""

from __future__ import annotations

import io
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from test_gate_support import endpoint, run

from controller.gate import GateOptions, evaluate_dataset_file, formats
from controller.gate.formats import DatasetFormatError, NpzReader, open_dataset, sha256_file, write_npz_dataset
from controller.verdict import Outcome

EXTRA = 3000  # past the bound by far, yet a file of ~150 KiB
_CENTRAL = "<4s6H3L5H2L"


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npz_with_extra_entries(path: Path, extra: int, end: str) -> Path:
    """A valid X/y/classes .npz plus `extra` central-directory entries, all pointing at X.npy's local header.

    end: "plain" (the end record tells the truth), "small-count" (it claims 3 entries, but the directory's size is
    what zipfile reads), or "zip64" (the plain record claims 3 entries and their size; a zip64 record, which zipfile
    trusts instead, tells the truth)."""
    members = {"X.npy": _npy(np.eye(3)[np.arange(30) % 3]), "y.npy": _npy(np.asarray(["a", "b", "c"] * 10)),
               "classes.npy": _npy(np.asarray(["a", "b", "c"]))}
    local, central = bytearray(), bytearray()
    for name, data in members.items():
        crc, encoded, offset = zlib.crc32(data), name.encode(), len(local)
        local += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, len(data), len(data), len(encoded), 0)
        local += encoded + data
        central += struct.pack(_CENTRAL, b"PK\x01\x02", 20, 20, 0, 0, 0, 0, crc, len(data), len(data), len(encoded),
                               0, 0, 0, 0, 0, offset) + encoded
    honest_size = len(central)
    data = members["X.npy"]
    for index in range(extra):
        name = b"%x" % index
        central += struct.pack(_CENTRAL, b"PK\x01\x02", 20, 20, 0, 0, 0, 0, zlib.crc32(data), len(data), len(data),
                               len(name), 0, 0, 0, 0, 0, 0) + name
    total, offset = len(members) + extra, len(local)
    if end == "plain":
        tail = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, total, total, len(central), offset, 0)
    elif end == "small-count":
        tail = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 3, 3, len(central), offset, 0)
    else:
        zip64 = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, total, total, len(central), offset)
        locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, offset + len(central), 1)
        tail = zip64 + locator + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 3, 3, honest_size, offset, 0)
    path.write_bytes(bytes(local + central + tail))
    return path


@pytest.mark.parametrize("end", ["plain", "small-count", "zip64"])
def test_an_npz_listing_thousands_of_entries_is_refused_saying_why(tmp_path: Path, end: str) -> None:
    path = _npz_with_extra_entries(tmp_path / "many.npz", EXTRA, end)
    assert path.stat().st_size < 256 * 1024
    with pytest.raises(DatasetFormatError, match=r"\.npz zip directory lists \d+ entries in \d+ bytes; an \.npz "
                                                 r"holds one entry per array, at most 64 entries") as caught:
        open_dataset(path, 16)
    if end != "small-count":
        assert f"lists {3 + EXTRA} entries" in str(caught.value)


def test_an_npz_refused_for_its_directory_is_an_inconclusive_dataset_unreadable(tmp_path: Path) -> None:
    path = _npz_with_extra_entries(tmp_path / "many.npz", EXTRA, "zip64")
    spec = {"uri": "configmap://golden/data", "sha256": sha256_file(path), "thresholds": {"minAccuracy": 0.9}}
    report = run(evaluate_dataset_file(path, spec, endpoint("http://127.0.0.1:9"), None,
                                       options=GateOptions(retries=0)))
    assert report.outcome is Outcome.INCONCLUSIVE
    assert "dataset unreadable: .npz zip directory lists 3003 entries" in report.reason, report.reason


def test_an_npz_within_the_bounds_is_read_as_before(tmp_path: Path) -> None:
    # The same construction with a few extra entries (unused names) and every array np.savez writes.
    path = _npz_with_extra_entries(tmp_path / "few.npz", formats.MAX_NPZ_MEMBERS - 3, "plain")
    reader = open_dataset(path, 16)
    assert isinstance(reader, NpzReader) and reader.classes == ("a", "b", "c")
    assert sum(len(batch) for batch in reader.batches()) == 30
    saved = tmp_path / "saved.npz"
    write_npz_dataset(saved, ("a", "b"), np.zeros((4, 2)), ["a", "b", "a", "b"], [["x"], [], ["y"], []])
    assert sum(len(batch) for batch in open_dataset(saved, 16).batches()) == 4


def test_the_dataset_is_opened_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    monkeypatch.setattr("controller.gate.runner.open_dataset",
                        lambda *args: threads.append(threading.get_ident()) or open_dataset(*args))
    path = _npz_with_extra_entries(tmp_path / "few.npz", 0, "plain")
    spec = {"uri": "configmap://golden/data", "sha256": sha256_file(path), "thresholds": {"minAccuracy": 0.9}}
    run(evaluate_dataset_file(path, spec, endpoint("http://127.0.0.1:9"), None,
                              options=GateOptions(retries=0, max_consecutive_unavailable=1)))
    assert threads and threading.get_ident() not in threads
