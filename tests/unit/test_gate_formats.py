"""Golden dataset parsing: JSON Lines and .npz, in batches, with every unusable sample counted by reason."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_gate_support import CLASSES, jsonl

from controller.gate import formats
from controller.gate.formats import (
    DatasetFormatError,
    JsonLinesReader,
    NpzReader,
    open_dataset,
    sha256_file,
    write_jsonl_dataset,
    write_npz_dataset,
)


def collect(reader):  # type: ignore[no-untyped-def]
    batches = [batch for batch in reader.batches() if len(batch)]  # an empty batch is only a pause
    features = np.concatenate([b.features for b in batches]) if batches else np.zeros((0,))
    labels = np.concatenate([b.labels for b in batches]) if batches else np.zeros((0,), dtype=np.int64)
    slices: dict[str, list[int]] = {}
    offset = 0
    for batch in batches:
        for tag, rows in batch.slices.items():
            slices.setdefault(tag, []).extend(int(r) + offset for r in rows)
        offset += len(batch)
    return batches, features, labels, slices


def test_jsonl_reads_header_samples_and_slices_in_bounded_batches(tmp_path: Path) -> None:
    lines = [{"inputs": [i, 0, 0.5], "label": CLASSES[i % 3],
              **({"slices": ["logo", "edge-case"]} if i % 4 == 0 else {}), **({"slice": "night"} if i == 5 else {})}
             for i in range(10)]
    reader = open_dataset(jsonl(tmp_path / "d.jsonl", lines), batch_size=4)
    assert isinstance(reader, JsonLinesReader) and reader.classes == CLASSES
    batches, features, labels, slices = collect(reader)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert features.shape == (10, 3) and features.dtype == np.float64
    assert labels.tolist() == [i % 3 for i in range(10)]
    assert slices == {"logo": [0, 4, 8], "edge-case": [0, 4, 8], "night": [5]}
    assert reader.records == 10 and reader.problems.total == 0 and reader.feature_shape == (3,)


def test_jsonl_counts_every_kind_of_bad_line_and_keeps_the_good_ones(tmp_path: Path) -> None:
    good = {"inputs": [1.0, 2.0], "label": "safe"}
    lines = [
        good,
        "{not json",
        "[1, 2]",
        {"label": "safe"},  # missing inputs
        {"inputs": [1, 2]},  # missing label
        {"inputs": [1, 2], "label": "porn"},  # unknown label
        {"inputs": [1, 2], "label": 3},  # label must be a class name
        {"inputs": [1, 2, 3], "label": "nsfw"},  # wrong shape
        {"inputs": [1, "x"], "label": "nsfw"},  # non-numeric
        {"inputs": [[1], [2]], "label": "nsfw"},  # wrong shape (nested)
        '{"inputs": [NaN, 1], "label": "nsfw"}',  # non-finite
        {"inputs": [1, 2], "label": "nsfw", "slices": [1]},  # bad slices
        "",  # blank lines are skipped, not counted
        good,
    ]
    reader = open_dataset(jsonl(tmp_path / "d.jsonl", lines), batch_size=3)
    _, features, labels, _ = collect(reader)
    assert features.shape == (2, 2) and labels.tolist() == [0, 0]
    assert dict(reader.problems.counts) == {
        "invalid JSON": 1, "not a JSON object": 1, "missing inputs": 1, "missing label": 1, "unknown label": 2,
        "wrong feature shape": 2, "non-numeric inputs": 1, "non-finite inputs": 1, "bad slices": 1}
    assert reader.records == 13
    assert reader.problems.total == 11
    assert any("line 3: invalid JSON" in example for example in reader.problems.examples)
    assert any("'porn'" in example for example in reader.problems.examples)


def test_jsonl_feature_shape_comes_from_the_header_when_declared(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"classes": ["a", "b"], "featureShape": [3]}) + "\n"
                    + json.dumps({"inputs": [1, 2], "label": "a"}) + "\n"
                    + json.dumps({"inputs": [1, 2, 3], "label": "b"}) + "\n")
    reader = open_dataset(path, batch_size=10)
    _, features, labels, _ = collect(reader)
    assert features.shape == (1, 3) and labels.tolist() == [1]
    assert reader.problems.counts == {"wrong feature shape": 1}
    assert "header's featureShape" in reader.problems.examples[0]


def test_jsonl_without_a_class_list_is_refused_unless_the_operator_names_the_classes(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [{"inputs": [1], "label": "a"}], classes=None)
    with pytest.raises(DatasetFormatError, match="no class list"):
        open_dataset(path, batch_size=2)
    reader = open_dataset(path, batch_size=2, class_names=("a", "b"))
    assert collect(reader)[2].tolist() == [0]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DatasetFormatError, match="no class list"):
        open_dataset(empty, 2)


def test_jsonl_header_with_duplicate_or_conflicting_classes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match="duplicates"):
        open_dataset(jsonl(tmp_path / "a.jsonl", [], classes=("a", "a")), 2)
    with pytest.raises(DatasetFormatError, match="differ"):
        open_dataset(jsonl(tmp_path / "b.jsonl", [], classes=("a", "b")), 2, class_names=("b", "a"))


def test_a_dataset_with_more_classes_than_the_operator_can_count_is_refused(tmp_path: Path) -> None:
    # Every scope keeps class x class matrices: a 35 KB header of 4,000 names took over a GiB.
    many = tuple(f"c{i}" for i in range(formats.MAX_CLASSES + 1))
    with pytest.raises(DatasetFormatError, match=f"{formats.MAX_CLASSES + 1} classes, at most"):
        open_dataset(jsonl(tmp_path / "d.jsonl", [{"inputs": [1], "label": "c0", "slice": "logo"}], classes=many), 2)
    reader = open_dataset(jsonl(tmp_path / "ok.jsonl", [], classes=many[:-1]), 2)
    assert len(reader.classes) == formats.MAX_CLASSES


def test_an_npz_class_list_is_checked_from_its_header_before_it_is_read(tmp_path: Path) -> None:
    # Compressed, a list of long names is tiny on disk and huge in memory: refused before it is unpacked.
    path = tmp_path / "big.npz"
    np.savez_compressed(path, X=np.ones((1, 2)), y=np.asarray([0]), classes=np.asarray(["x" * 4000] * 300))
    with pytest.raises(DatasetFormatError, match="classes array: 300 entries of 16000 bytes"):
        open_dataset(path, 2)
    many = tmp_path / "many.npz"
    np.savez_compressed(many, X=np.ones((1, 2)), y=np.asarray([0]),
                        classes=np.asarray([f"c{i}" for i in range(formats.MAX_CLASSES + 1)]))
    with pytest.raises(DatasetFormatError, match=f"{formats.MAX_CLASSES + 1} entries"):
        open_dataset(many, 2)
    assert path.stat().st_size < 50_000


def test_header_only_dataset_has_no_samples(tmp_path: Path) -> None:
    reader = open_dataset(jsonl(tmp_path / "d.jsonl", []), batch_size=2)
    assert list(reader.batches()) == [] and reader.records == 0


def test_gzipped_jsonl_is_read_by_content(tmp_path: Path) -> None:
    plain = jsonl(tmp_path / "d.jsonl", [{"inputs": [1, 2], "label": "nsfw"}])
    packed = tmp_path / "d.bin"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert collect(open_dataset(packed, batch_size=2))[2].tolist() == [2]


def test_npz_streams_rows_with_names_or_indices_and_slice_tags(tmp_path: Path) -> None:
    features = np.arange(14, dtype=np.float32).reshape(7, 2)
    labels = ["safe", "nsfw", "suggestive", "safe", "nsfw", "nsfw", "safe"]
    slices = [("logo",), (), ("logo", "edge-case"), (), (), ("edge-case",), ()]
    path = tmp_path / "d.npz"
    write_npz_dataset(path, CLASSES, features, labels, slices)
    reader = open_dataset(path, batch_size=3)
    assert isinstance(reader, NpzReader)
    batches, got, got_labels, got_slices = collect(reader)
    assert [len(b) for b in batches] == [3, 3, 1]
    np.testing.assert_array_equal(got, features.astype(np.float64))
    assert got_labels.tolist() == [0, 2, 1, 0, 2, 2, 0]
    assert got_slices == {"logo": [0, 2], "edge-case": [2, 5]}

    indices = tmp_path / "i.npz"
    np.savez_compressed(indices, X=features, y=np.asarray([0, 2, 1, 0, 9, -1, 0]), classes=np.asarray(CLASSES))
    reader = open_dataset(indices, batch_size=4)
    assert collect(reader)[2].tolist() == [0, 2, 1, 0, 0]
    assert reader.problems.counts == {"unknown label": 2}


def test_npz_bad_rows_are_counted_and_bad_files_refused(tmp_path: Path) -> None:
    features = np.ones((4, 2))
    features[1, 0] = np.nan
    path = tmp_path / "d.npz"
    np.savez(path, X=features, y=np.asarray(["safe", "safe", "porn", "nsfw"]), classes=np.asarray(CLASSES))
    reader = open_dataset(path, batch_size=10)
    assert collect(reader)[2].tolist() == [0, 2]
    assert reader.problems.counts == {"non-finite inputs": 1, "unknown label": 1}

    np.savez(path, X=np.ones((3, 2)), y=np.asarray(["safe"] * 2), classes=np.asarray(CLASSES))
    with pytest.raises(DatasetFormatError, match="expected \\(3,\\)"):
        list(open_dataset(path, 2).batches())
    np.savez(path, X=np.ones((3, 2)), classes=np.asarray(CLASSES))
    with pytest.raises(DatasetFormatError, match="no 'y' array"):
        open_dataset(path, 2)
    np.savez(path, X=np.ones((2, 2)), y=np.asarray(["safe", "nsfw"]))
    with pytest.raises(DatasetFormatError, match="no class list"):
        open_dataset(path, 2)
    np.savez(path, X=np.asarray([{"a": 1}, None], dtype=object), y=np.asarray(["safe", "nsfw"]),
             classes=np.asarray(CLASSES))
    with pytest.raises(DatasetFormatError, match="pickles"):
        list(open_dataset(path, 2).batches())
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DatasetFormatError, match=r"not a readable \.npz"):
        open_dataset(path, 2)


def test_npz_member_cut_short_is_a_format_error(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ones((100, 2)))
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("X.npy", buffer.getvalue()[:-80])
        labels = io.BytesIO()
        np.lib.format.write_array(labels, np.zeros(100, dtype=np.int64))
        archive.writestr("y.npy", labels.getvalue())
        classes = io.BytesIO()
        np.lib.format.write_array(classes, np.asarray(CLASSES))
        archive.writestr("classes.npy", classes.getvalue())
    with pytest.raises(DatasetFormatError, match="ends early"):
        list(open_dataset(path, 30).batches())


def test_writers_round_trip_and_report_the_file_sha256(tmp_path: Path) -> None:
    features = np.random.default_rng(1).normal(size=(5, 3)).round(3)
    labels = ["safe", "nsfw", "nsfw", "suggestive", "safe"]
    slices = [("logo",), (), (), (), ("logo",)]
    for writer, name in ((write_jsonl_dataset, "d.jsonl"), (write_npz_dataset, "d.npz")):
        path = tmp_path / name
        sha = writer(path, CLASSES, features, labels, slices)
        assert sha == hashlib.sha256(path.read_bytes()).hexdigest() == sha256_file(path)
        _, got, got_labels, got_slices = collect(open_dataset(path, batch_size=2))
        np.testing.assert_allclose(got, features)
        assert [CLASSES[i] for i in got_labels] == labels
        assert got_slices == {"logo": [0, 4]}


SAMPLE_LINES = st.one_of(
    st.builds(lambda xs, label, tags: json.dumps({"inputs": xs, "label": label, **({"slices": tags} if tags else {})}),
              st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=3, max_size=3),
              st.sampled_from(CLASSES), st.lists(st.sampled_from(["logo", "edge-case"]), max_size=2, unique=True)),
    st.sampled_from([
        "", "{oops", "[1, 2, 3]", '{"inputs": [1, 2], "label": "safe"}', '{"inputs": [1, 2, 3], "label": "porn"}',
        '{"inputs": [1, 2, 3], "label": "nsfw", "slice": "logo"}', '{"label": "nsfw", "inputs": [0.5, 1, 2]}',
        '{"inputs": [1, 2, 1e999], "label": "nsfw"}', '{"inputs": [1, 2, 3], "label": ["nsfw"]}',
        '{"inputs": [1, 2, 3], "label": "safe", "slices": [1]}', '{"inputs": [1, "2", 3], "label": "safe"}',
        '{"inputs": [1, 2, 3], "label": "s\\u0061fe"}', '{"inputs": [1, 2, 3]} {"x": 1}',
        # the features must come from the real top-level inputs, whatever else mentions "inputs"
        '{"meta": {"inputs": [9, 9, 9]}, "inputs": [1, 2, 3], "label": "safe"}',
        '{"\\u0069nputs": [1, 2, 3], "x": {"inputs": [7, 8, 9]}, "label": "nsfw"}',
        '{"inputs": [1, 2, 3], "label": "safe", "note": "inputs: [4, 5, 6]"}',
        # where orjson (the fast path) and the standard library (the careful path) differ
        '{"inputs": [1, 2, NaN], "label": "safe"}', '{"inputs": [1, 2, -Infinity], "label": "safe"}',
        '{"inputs": [1, 2, 123456789012345678901234567890], "label": "safe"}',
        '{"inputs": [1, 2, -9223372036854775809], "label": "nsfw"}',
        '{"inputs": [1, 2, 18446744073709551615], "label": "nsfw"}',
        '{"inputs": [1, 2, 0.12345678901234567890123], "label": "nsfw"}',
        '{"inputs": [1, 2, 3], "label": "safe", "slices": ["\\ud800"]}',
        '{"inputs": [1, 2, 3], "label": "\\udfff"}', '\ufeff{"inputs": [1, 2, 3], "label": "safe"}',
        '{"inputs": [9, 9], "inputs": [1, 2, 3], "label": "safe"}', '{"inputs": [1, 2, 3], "label": "safe",}',
        '{"inputs": [1, 2, 3], "label": "safe", "deep": ' + "[" * 3000 + "]" * 3000 + "}",
        '{"inputs": [1, 2, 3], "label": "nsfw", "slices": ["é", "logo"]}']),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(SAMPLE_LINES, max_size=30), st.integers(1, 8))
def test_fast_chunk_reading_matches_line_by_line_reading(tmp_path: Path, lines: list[str], batch_size: int) -> None:
    """Clean chunks are read with C-level loops; the result must be what the careful path gives."""
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"classes": list(CLASSES), "featureShape": [3]}) + "\n" + "\n".join(lines) + "\n")
    fast = open_dataset(path, batch_size)
    careful = open_dataset(path, batch_size)
    careful._clean_chunk = lambda chunk, first: formats._NOT_CLEAN  # type: ignore[attr-defined]
    results = []
    for reader in (fast, careful):
        _, features, labels, slices = collect(reader)
        results.append((features.tolist(), labels.tolist(), slices, dict(reader.problems.counts), reader.records,
                        sorted(reader.problems.examples)))
    assert results[0] == results[1]


def test_clean_datasets_take_the_fast_path_and_read_exactly_the_written_numbers(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    features = rng.normal(size=(50, 4)) * 10.0 ** rng.integers(-300, 18, size=(50, 4))
    features[0] = [5e-324, -0.0, 9.2e18, -1.7976931348623157e-308]  # below 2**63: no doubt about integers
    path = tmp_path / "d.jsonl"
    write_jsonl_dataset(path, CLASSES, features, [CLASSES[i % 3] for i in range(50)],
                        [("logo",) if i % 7 == 0 else () for i in range(50)])
    monkeypatch.setattr(JsonLinesReader, "_chunk", lambda *_: pytest.fail("a clean chunk took the careful path"))
    reader = open_dataset(path, batch_size=16)
    _, got, labels, slices = collect(reader)
    np.testing.assert_array_equal(got, features)
    assert labels.tolist() == [i % 3 for i in range(50)] and slices == {"logo": list(range(0, 50, 7))}
    assert reader.records == 50 and reader.problems.total == 0


def test_lines_orjson_cannot_read_are_judged_by_the_standard_library(tmp_path: Path) -> None:
    """NaN, 1e999, huge integers, lone surrogates, deep nesting: counted as the careful path counts them."""
    lines = [
        '{"inputs": [1, 2, NaN], "label": "safe"}',  # non-finite (stdlib reads NaN; orjson refuses)
        '{"inputs": [1, 2, 1e999], "label": "safe"}',  # non-finite
        '{"inputs": [1, 2, 123456789012345678901234567890], "label": "safe"}',  # beyond int64: non-numeric
        '{"inputs": [1, 2, 3], "label": "\\ud800"}',  # a lone surrogate: an unknown label, not a crash
        '{"inputs": [1, 2, 3], "label": "safe", "deep": ' + "[" * 100_000 + "]" * 100_000 + "}",  # too deep
        '{"inputs": [1, 2, 3], "label": "nsfw"}',
        '{"inputs": [1e300, -9223372036854775808, 3], "label": "safe"}',  # usable, read by the careful path
    ]
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"classes": list(CLASSES), "featureShape": [3]}) + "\n" + "\n".join(lines) + "\n")
    reader = open_dataset(path, batch_size=100)
    _, features, labels, _ = collect(reader)
    assert features.tolist() == [[1.0, 2.0, 3.0], [1e300, -2.0**63, 3.0]] and labels.tolist() == [2, 0]
    assert dict(reader.problems.counts) == {"non-finite inputs": 2, "non-numeric inputs": 1, "unknown label": 1,
                                            "invalid JSON": 1}
    assert reader.records == 7


def test_truncated_compressed_files_are_format_errors_not_crashes(tmp_path: Path) -> None:
    plain = write_jsonl_dataset(tmp_path / "d.jsonl", CLASSES, np.ones((2000, 3)), ["safe"] * 2000)
    assert plain
    packed = gzip.compress((tmp_path / "d.jsonl").read_bytes())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DatasetFormatError, match=r"^after \d+ samples: read as gzip \(it starts with 1f 8b\): "):
        list(open_dataset(cut, 100).batches())
    npz = tmp_path / "d.npz"
    np.savez_compressed(npz, X=np.random.default_rng(0).normal(size=(5000, 3)), y=np.zeros(5000, dtype=np.int64),
                        classes=np.asarray(CLASSES))
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF  # corrupt the compressed X member
    npz.write_bytes(bytes(data))
    with pytest.raises(DatasetFormatError):
        list(open_dataset(npz, 100).batches())


def test_a_line_longer_than_the_limit_is_counted_and_never_held_whole(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "MAX_LINE_CHARS", 200)
    monkeypatch.setattr(formats, "MAX_BATCH_CHARS", 50)
    good = {"inputs": [1.0, 2.0], "label": "safe"}
    huge = {"inputs": [1.0] * 300, "label": "nsfw"}  # about 1,500 characters: read through 200 at a time
    path = tmp_path / "d.jsonl.gz"
    text = json.dumps({"classes": list(CLASSES)}) + "\n" + "".join(json.dumps(x) + "\n" for x in (good, huge, good))
    path.write_bytes(gzip.compress(text.encode()))
    reader = open_dataset(path, batch_size=10)
    batches, features, labels, _ = collect(reader)
    assert features.shape == (2, 2) and labels.tolist() == [0, 0]
    assert dict(reader.problems.counts) == {"line too long": 1} and reader.records == 3
    assert "line 3: line too long" in reader.problems.examples[0]
    assert len(batches) == 2  # a batch stops once its lines hold MAX_BATCH_CHARS


def _npz_with_x_header(path: Path, header: bytes) -> Path:
    labels, classes = io.BytesIO(), io.BytesIO()
    np.lib.format.write_array(labels, np.zeros(2, dtype=np.int64))
    np.lib.format.write_array(classes, np.asarray(CLASSES))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("X.npy", header)
        archive.writestr("y.npy", labels.getvalue())
        archive.writestr("classes.npy", classes.getvalue())
    return path


def test_npz_headers_that_cannot_describe_rows_are_format_errors(tmp_path: Path) -> None:
    huge = io.BytesIO()  # rows of 2**62 x 4 doubles: 64-bit arithmetic would make them 0 bytes long
    np.lib.format.write_array_header_1_0(huge, {"descr": "<f8", "fortran_order": False, "shape": (2, 2**62, 4)})
    with pytest.raises(DatasetFormatError):
        list(open_dataset(_npz_with_x_header(tmp_path / "a.npz", huge.getvalue()), 2).batches())
    text = b"{'descr': '<f8'}".ljust(117) + b"\n"  # no shape, no fortran_order
    broken = b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text
    with pytest.raises(DatasetFormatError, match="unreadable"):
        list(open_dataset(_npz_with_x_header(tmp_path / "b.npz", broken), 2).batches())
