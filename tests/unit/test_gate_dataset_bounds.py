"""What a dataset's headers and lines cannot do: hold the operator's memory or its event loop."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from test_gate_support import CLASSES, endpoint, http_server, jsonl, run

from controller.gate import GateOptions, GateReport, evaluate_dataset_file, formats
from controller.gate.formats import DatasetFormatError, open_dataset, sha256_file
from controller.verdict import Outcome


def _npz_declaring(path: Path, shape: tuple[int, ...]) -> Path:
    """An .npz whose X.npy header declares `shape` (float64) and holds no data: only the header is read."""
    header, labels, classes = io.BytesIO(), io.BytesIO(), io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": shape})
    np.lib.format.write_array(labels, np.zeros(shape[0], dtype=np.int64))
    np.lib.format.write_array(classes, np.asarray(CLASSES))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("X.npy", header.getvalue())
        archive.writestr("y.npy", labels.getvalue())
        archive.writestr("classes.npy", classes.getvalue())
    return path


def test_an_npz_row_past_the_per_sample_cap_is_refused_from_its_header(tmp_path: Path) -> None:
    # One row of 200 MiB of float64 (a 199 KiB file when the zeros are deflated): refused before any is read.
    path = _npz_declaring(tmp_path / "bomb.npz", (1, (200 << 20) // 8))
    with pytest.raises(DatasetFormatError, match=r"X.npy: one row .* 26214400 values \(200 MiB as float64\); at most "
                                                 r"4194304 values \(32 MiB\) per sample"):
        list(open_dataset(path, 128).batches())


def test_npz_blocks_are_sized_to_the_value_budget_at_least_one_row(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "MAX_BATCH_VALUES", 1000)
    monkeypatch.setattr(formats, "MAX_SAMPLE_VALUES", 2000)
    features = np.arange(50 * 300, dtype=np.float32).reshape(50, 300)
    path = tmp_path / "d.npz"
    np.savez(path, X=features, y=np.zeros(50, dtype=np.int64), classes=np.asarray(CLASSES))
    batches = [b for b in open_dataset(path, 128).batches() if len(b)]
    assert [len(b) for b in batches] == [3] * 16 + [2]  # 1000 // 300 rows a block
    np.testing.assert_array_equal(np.concatenate([b.features for b in batches]), features)
    wide = tmp_path / "wide.npz"  # a row past the budget but within the cap: one row a batch
    np.savez(wide, X=np.ones((3, 1500)), y=np.zeros(3, dtype=np.int64), classes=np.asarray(CLASSES))
    assert [b.features.shape for b in open_dataset(wide, 128).batches() if len(b)] == [(1, 1500)] * 3
    labels = tmp_path / "labels.npz"  # long string labels count their bytes: 4,000 bytes are 500 values
    name = "x" * 1000
    np.savez(labels, X=np.ones((4, 2)), y=np.asarray([name] * 4), classes=np.asarray([name, "y"]))
    assert [len(b) for b in open_dataset(labels, 128).batches()] == [2, 2]
    np.savez(wide, X=np.ones((2, 2001)), y=np.zeros(2, dtype=np.int64), classes=np.asarray(CLASSES))
    with pytest.raises(DatasetFormatError, match="2001 values"):
        list(open_dataset(wide, 128).batches())


def test_an_image_dataset_with_the_default_batch_size_goes_in_smaller_batches(tmp_path: Path) -> None:
    batch_size = GateOptions().batch_size
    images = np.random.default_rng(0).integers(0, 256, size=(60, 224, 224, 3), dtype=np.uint8)
    path = tmp_path / "images.npz"
    np.savez(path, X=images, y=np.zeros(60, dtype=np.int64), classes=np.asarray(CLASSES))
    batches = [b for b in open_dataset(path, batch_size).batches() if len(b)]
    assert [len(b) for b in batches] == [6] * 10  # 1M values // 150,528 a block
    assert all(b.features.size <= formats.MAX_BATCH_VALUES for b in batches)
    np.testing.assert_array_equal(np.concatenate([b.features for b in batches]), images)
    flat = images[:7].reshape(7, -1)  # flattened: the same values, and much quicker to write and parse
    lines = jsonl(tmp_path / "images.jsonl", [{"inputs": image.tolist(), "label": "safe"} for image in flat])
    batches = [b for b in open_dataset(lines, batch_size).batches() if len(b)]
    assert [len(b) for b in batches] == [6, 1]  # 1M JSON values a batch of lines
    np.testing.assert_array_equal(np.concatenate([b.features for b in batches]), flat)


def test_jsonl_batches_stop_at_the_value_budget_and_larger_lines_are_skipped(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "MAX_LINE_VALUES", 100)
    rows = [{"inputs": [float(i)] * 30, "label": "safe"} for i in range(10)]  # 31 values with the label's comma
    rows[4] = {"inputs": [1.0] * 150, "label": "nsfw"}
    reader = open_dataset(jsonl(tmp_path / "d.jsonl", rows), 128)
    batches = [b for b in reader.batches() if len(b)]
    assert [len(b) for b in batches] == [3, 3, 3]  # the skipped line counts as one value
    assert all(b.features.size <= 100 for b in batches)
    assert np.concatenate([b.features[:, 0] for b in batches]).tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert dict(reader.problems.counts) == {"too many values": 1} and reader.records == 10
    assert "line 6: too many values (over 100 comma-separated values)" in reader.problems.examples
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps({"classes": list(CLASSES), "featureShape": [10, 11]}) + "\n")
    with pytest.raises(DatasetFormatError, match=r"featureShape \[10, 11\] declares 110 values per sample; at most "
                                                 r"100"):
        open_dataset(path, 128)


def test_a_wide_jsonl_line_is_never_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The reviewer's lines of "0,0,..." within MAX_LINE_CHARS, at the real limits: counted, not parsed.
    wide = '{"inputs": [' + ",".join(["0"] * formats.MAX_LINE_VALUES) + '], "label": "safe"}'
    path = tmp_path / "wide.jsonl.gz"
    path.write_bytes(gzip.compress((json.dumps({"classes": list(CLASSES)}) + "\n" + (wide + "\n") * 4 +
                                    '{"inputs": [1, 2], "label": "nsfw"}\n').encode(), compresslevel=1))
    loads = formats.orjson.loads
    monkeypatch.setattr(formats.orjson, "loads",
                        lambda line: pytest.fail("a wide line was parsed") if len(line) > 1000 else loads(line))
    reader = open_dataset(path, 128)
    batches = [b for b in reader.batches() if len(b)]
    assert [b.features.tolist() for b in batches] == [[[1.0, 2.0]]]
    assert dict(reader.problems.counts) == {"too many values": 4}


def test_readers_pause_while_nothing_usable_turns_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "PAUSE_SECONDS", 0.0)
    good = {"inputs": [1.0, 0.0], "label": "safe"}
    path = jsonl(tmp_path / "blank.jsonl", [good, *[""] * 1000, good])
    got = [len(b) for b in open_dataset(path, 10).batches()]
    assert sum(got) == 2 and got.count(0) >= 99  # a pause for each chunk of blank lines
    monkeypatch.setattr(formats, "MAX_LINE_CHARS", 100)  # a long line is read through with pauses
    path = jsonl(tmp_path / "long.jsonl", [good, {"inputs": [1.0] * 2000, "label": "safe"}, good])
    reader = open_dataset(path, 10)
    got = [len(b) for b in reader.batches()]
    assert sum(got) == 2 and got.count(0) >= 50 and dict(reader.problems.counts) == {"line too long": 1}
    npz = tmp_path / "d.npz"  # rows whose labels are all unknown
    np.savez(npz, X=np.ones((100, 2)), y=np.asarray(["cat"] * 99 + ["safe"]), classes=np.asarray(CLASSES))
    reader = open_dataset(npz, 5)
    got = [len(b) for b in reader.batches()]
    assert got == [0] * 19 + [1] and reader.problems.counts["unknown label"] == 99


def test_the_header_is_looked_for_near_the_top_only(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"  # open_dataset runs on the event loop, outside the gate's time limit
    path.write_text("\n" * formats.MAX_HEADER_SCAN_LINES + json.dumps({"classes": list(CLASSES)}) + "\n")
    with pytest.raises(DatasetFormatError, match="no class list"):
        open_dataset(path, 10)
    path.write_text("\n" * (formats.MAX_HEADER_SCAN_LINES - 1) + json.dumps({"classes": list(CLASSES)}) + "\n")
    assert open_dataset(path, 10).classes == CLASSES


def test_the_gate_time_limit_fires_while_only_blank_lines_are_read(tmp_path: Path) -> None:
    """A small gzip of one sample, 16 MiB of newlines and one sample: the gate stops at its time limit, and the
    event loop keeps running while the lines are read."""
    path = tmp_path / "blank.jsonl.gz"
    sample = b'{"inputs": [1.0, 0.0], "label": "safe"}\n'
    path.write_bytes(gzip.compress(b'{"classes": ["safe", "nsfw"]}\n' + sample + b"\n" * (16 << 20) + sample))
    spec = {"uri": "configmap://g/d", "sha256": sha256_file(path), "thresholds": {"minAccuracy": 0.5}}

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"predictions": ["safe"] * len((await request.json())["instances"])})

    async def scenario() -> tuple[GateReport, float, float]:
        worst = 0.0

        async def heartbeat() -> None:
            nonlocal worst
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.02)
                now = time.monotonic()
                worst, last = max(worst, now - last), now

        async with http_server(answer) as url:
            beating = asyncio.create_task(heartbeat())
            started = time.monotonic()
            report = await evaluate_dataset_file(path, spec, endpoint(url, "v1"), None,
                                                 options=GateOptions(gate_timeout_seconds=0.5, retries=0))
            took = time.monotonic() - started
            beating.cancel()
        return report, took, worst

    report, took, worst = run(scenario())
    assert took < 3.0 and worst < 1.0
    assert report.outcome is Outcome.INCONCLUSIVE and "time limit" in report.status["stoppedEarly"]
