"""Golden dataset formats, read in batches so memory stays bounded whatever the dataset's size.

JSON Lines (optionally gzip-compressed), one JSON object per line:

    {"classes": ["safe", "suggestive", "nsfw"], "featureShape": [6]}      <- header, first line
    {"inputs": [0.1, 2.3, 0.0, 1.2, 0.4, 1.0], "label": "safe", "slices": ["logo"]}
    {"inputs": [1.4, 0.2, 0.9, 0.3, 0.1, 0.0], "label": "nsfw"}

The header declares the class list (the label space the thresholds and confusion matrices use) and may
declare the feature shape; without `featureShape` the first sample's shape is the expected one. `slices`
is an optional list of tags (`"slice": "logo"` is accepted too). Labels are class names.

The class list is also the models' output order, in both formats: a score vector's (or an integer answer's)
position i is read as class i, as the prediction exporter reads it as its --class-names[i], so the list must equal
the exporter's --class-names, in that order. A list in another order (sorted, as np.unique or LabelEncoder write
it) reads every model's scores into the wrong classes: with a stable version failing the same limits the judge
calls it a setup problem (inconclusive); on a first rollout the candidate fails. Class-name answers are read by name.

NumPy .npz (np.savez / np.savez_compressed, no pickles): `X` (n, *feature_shape) numbers, `y` (n,) class
names or integer class indices, `classes` (k,) names, optional `slices` (n,) strings of comma-separated
tags ("" for none). Members are streamed row block by row block, never loaded whole.

A batch holds the usable samples of up to `batch_size` lines (or rows), fewer when they would hold more than
MAX_LINE_VALUES (JSON Lines) or MAX_BATCH_VALUES (.npz) values, so memory depends on neither the dataset's length
nor what its headers declare; a larger sample is skipped (a line) or refused (an .npz row).

An empty batch means "still reading": a reader that has produced nothing for PAUSE_SECONDS yields one, so that
its caller can hand the event loop back (see runner._cooperative).

A sample that cannot be used (bad JSON, missing inputs, wrong shape, non-numeric or non-finite inputs,
missing or unknown label) is skipped and counted by reason in `DatasetProblems`; a file that cannot be read
at all raises `DatasetFormatError`.

JSON Lines are parsed with orjson where that is certain to give what the standard library's parser gives
(the careful, line-by-line path, which defines the semantics); see `JsonLinesReader._clean_chunk`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import math
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import orjson

MAX_PROBLEM_EXAMPLES = 10
_NUMERIC_KINDS = frozenset("fiu")
_ZIP_MAGIC = b"PK\x03\x04"
_GZIP_MAGIC = b"\x1f\x8b"
_NOT_CLEAN = object()  # _clean_chunk's "read this chunk line by line instead"
# Integers of 2**63 and beyond may be read differently by orjson (a float) and the standard library (an int,
# which numpy then takes as non-numeric); the fast path leaves chunks with inputs that large to the careful one.
_INT64_LIMIT = float(2**63)


class DatasetFormatError(ValueError):
    """The dataset as a whole cannot be read (not a known format, header broken, arrays missing)."""


@dataclass
class Batch:
    """Valid samples only: every row has a known label and features of the expected shape."""

    features: np.ndarray  # float64, (n, *feature_shape)
    labels: np.ndarray  # int64 indices into the dataset's class list, (n,)
    slices: dict[str, np.ndarray] = field(default_factory=dict)  # slice tag -> row positions in this batch

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class DatasetProblems:
    """Unusable samples, counted by reason, with a few examples that say where."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, reason: str, where: str, detail: str = "", count: int = 1) -> None:
        self.counts[reason] += count
        if len(self.examples) < MAX_PROBLEM_EXAMPLES:
            self.examples.append(f"{where}: {reason}" + (f" ({detail})" if detail else ""))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        return ", ".join(f"{reason} x{count}" for reason, count in self.counts.most_common())


class DatasetReader(Protocol):
    format: str
    classes: tuple[str, ...]
    feature_shape: tuple[int, ...] | None
    records: int  # samples seen so far, valid or not
    problems: DatasetProblems

    def batches(self) -> Iterator[Batch]: ...


MAX_CLASSES = 1000
# One sample's line; a longer one is read through in pieces, counted and skipped, never held whole (a gzip
# stream can unpack one line into gigabytes). A batch stops early past MAX_BATCH_CHARS of lines (held twice while
# parsed: as read and stripped) or MAX_LINE_VALUES values.
MAX_LINE_CHARS = 16 << 20
MAX_BATCH_CHARS = 32 << 20
# JSON values (commas + 1, counted before parsing) in one line and in one batch of lines: the parser's Python
# objects and the arrays made of them take ~70 bytes a value, so a batch of lines peaks near 100 MiB. A line of real
# features (floats of 10-20 characters) reaches MAX_LINE_CHARS first; a 224x224x3 image goes 6 to a batch.
MAX_LINE_VALUES = 1 << 20
TOO_LONG = "\x00 line too long"  # stands for a skipped line; never valid JSON
TOO_MANY_VALUES = "\x00 too many values"  # stands for a line of more than MAX_LINE_VALUES values, never parsed
_READING = "\x00 reading"  # _bounded_lines is reading through a long line: not a line, a chance to pause
# The header must come first: blank lines before it are tolerated, but only this many (open_dataset runs
# before the gate's time limit starts).
MAX_HEADER_SCAN_LINES = 1000
# An .npz row and block, in values of its features (float64 once read). A block of 8 MiB as float64 peaks near
# 20 MiB while read (raw block, float64 conversion, the copy without the bad rows), and its JSON request body
# near 25 MB: with the gate's 4 batches in flight, well within the operator's 1 GiB beside other gates. A
# 224x224x3 image (150,528 values) goes 6 to a batch; one sample may be larger (up to 4M values, one a batch),
# a larger one is refused.
MAX_SAMPLE_VALUES = 4 << 20
MAX_BATCH_VALUES = 1 << 20
# The longest a reader parses without yielding anything: then it yields an empty batch, so that the gate's time
# limit and everything else on the event loop get their turn even while lines or rows are all unusable.
PAUSE_SECONDS = 0.05
MAX_CLASS_ARRAY_BYTES = 1 << 20  # a class list is names; a compressed member must not unpack into gigabytes
# An .npz holds one member per array (np.savez writes 2-4 here). zipfile builds an object per central-directory
# entry before anything can be checked: a 150 MiB file of entries took 1 GiB and blocked for 15 s. Refused first.
MAX_NPZ_MEMBERS = 64
MAX_NPZ_DIRECTORY_BYTES = 64 << 10
# What zipfile and numpy raise for an .npz or member they cannot read: a bad CRC or header (BadZipFile, ValueError),
# a corrupt deflate stream (zlib.error), a cut (EOFError, OSError), an encrypted member (RuntimeError), a zip feature
# zipfile lacks (NotImplementedError, a RuntimeError too). Each becomes a DatasetFormatError: a verdict, not a crash.
# lzma.LZMAError derives from Exception alone (7-Zip writes LZMA zips); bz2's are OSError.
_NPZ_READ_ERRORS = (zipfile.BadZipFile, OSError, EOFError, zlib.error, lzma.LZMAError, RuntimeError, ValueError)
_NPZ_ARRAYS = ("X.npy", "y.npy", "classes.npy", "slices.npy")
_ZIP_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})


def _small_array(member: IO[bytes], what: str) -> np.ndarray:
    """np.load of an .npy member, refused from its header when it would hold too many items or bytes."""
    version = np.lib.format.read_magic(member)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = reader(member)
    items = int(np.prod(shape)) if shape else 1
    if items > MAX_CLASSES or items * dtype.itemsize > MAX_CLASS_ARRAY_BYTES:
        raise DatasetFormatError(f"{what}: {items} entries of {dtype.itemsize} bytes, at most {MAX_CLASSES} "
                                 f"entries and {MAX_CLASS_ARRAY_BYTES} bytes are supported")
    if dtype.hasobject:
        raise DatasetFormatError(f"{what}: object arrays are not supported")
    data = np.frombuffer(member.read(items * dtype.itemsize), dtype=dtype, count=items)
    return data.reshape(shape, order="F" if fortran else "C")


def open_dataset(path: Path, batch_size: int, class_names: Sequence[str] | None = None) -> DatasetReader:
    """Pick the reader by content (zip -> .npz, otherwise JSON Lines, gzip allowed)."""
    with open(path, "rb") as probe:
        magic = probe.read(4)
    if magic.startswith(_ZIP_MAGIC):
        return NpzReader(path, batch_size, class_names)
    return JsonLinesReader(path, batch_size, class_names, gzipped=magic.startswith(_GZIP_MAGIC))


def _check_classes(classes: Any, where: str) -> tuple[str, ...]:
    if not isinstance(classes, list | tuple) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise DatasetFormatError(f"{where}: classes must be a non-empty list of class names")
    if len(classes) > MAX_CLASSES:
        # Every scope keeps class x class matrices: a small file must not be able to exhaust the operator.
        raise DatasetFormatError(f"{where}: {len(classes)} classes, at most {MAX_CLASSES} are supported")
    if len(set(classes)) != len(classes):
        raise DatasetFormatError(f"{where}: classes contains duplicates")
    return tuple(classes)


def _slice_tags(value: Any) -> tuple[str, ...] | None:
    """Normalised slice tags, or None when the value is not a tag or a list of tags."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list) and all(isinstance(tag, str) and tag for tag in value):
        return tuple(dict.fromkeys(value))
    return None


def _group_slices(tags_per_row: Sequence[tuple[str, ...]]) -> dict[str, np.ndarray]:
    rows_by_tag: dict[str, list[int]] = {}
    for row, tags in enumerate(tags_per_row):
        for tag in tags:
            rows_by_tag.setdefault(tag, []).append(row)
    return {tag: np.asarray(rows, dtype=np.int64) for tag, rows in rows_by_tag.items()}


class JsonLinesReader:
    format = "jsonl"

    def __init__(self, path: Path, batch_size: int, class_names: Sequence[str] | None = None,
                 gzipped: bool = False) -> None:
        self.path = path
        self.batch_size = max(1, batch_size)
        self.gzipped = gzipped
        self.classes: tuple[str, ...] = tuple(class_names) if class_names else ()
        self.feature_shape: tuple[int, ...] | None = None
        self.shape_origin = ""
        self.records = 0
        self.problems = DatasetProblems()
        self._header_line = self._scan_header()
        if not self.classes:
            raise DatasetFormatError('no class list: the first line must be a header {"classes": [...]} in the '
                                     "models' output order (or the operator must configure the class names)")
        self._class_index = {name: index for index, name in enumerate(self.classes)}
        # The careful path's parser: the C scanner behind json.loads, called directly.
        self._scan = json.JSONDecoder().scan_once

    def _scan_header(self) -> int:
        """Read the header (classes, feature shape) up front; returns its line number, 0 when there is none."""
        try:
            with self._open_text() as stream:
                scanned = 0
                for line_number, raw in enumerate(_bounded_lines(stream), start=1):
                    scanned += len(raw)
                    if raw is _READING or line_number > MAX_HEADER_SCAN_LINES or scanned > MAX_LINE_CHARS:
                        return 0  # a line too long for a header, or too far down: read as samples, cooperatively
                    if not raw.strip():
                        continue
                    try:
                        first = json.loads(raw)
                    except (ValueError, RecursionError):
                        return 0
                    return line_number if self._read_header(first) else 0
        except (OSError, EOFError, zlib.error) as exc:  # e.g. a truncated gzip stream
            raise DatasetFormatError(self._read_failed(exc)) from None
        return 0

    def _read_failed(self, exc: BaseException, where: str = "") -> str:
        """Why reading failed (the gate says "dataset unreadable: " before it). A file is read as gzip by its first
        bytes only: one that merely starts like gzip gets zlib's words, so which way it was read is said."""
        how = f"read as gzip (it starts with {_GZIP_MAGIC.hex(' ')}): " if self.gzipped else ""
        return f"{where}{how}{exc}"

    def _open(self) -> IO[bytes]:
        return gzip.open(self.path, "rb") if self.gzipped else open(self.path, "rb")

    def _open_text(self) -> IO[str]:
        # errors="replace": a line with invalid UTF-8 becomes a counted bad line, not a crash.
        return io.TextIOWrapper(self._open(), encoding="utf-8", errors="replace")

    def _read_header(self, first: Any) -> bool:
        """Take the header line if this is one; True when it was."""
        if not isinstance(first, dict) or "classes" not in first or "inputs" in first or "label" in first:
            return False
        classes = _check_classes(first["classes"], f"{self.path.name} line 1 (header)")
        if self.classes and self.classes != classes:
            raise DatasetFormatError(f"header classes {list(classes)} differ from the configured class list "
                                     f"{list(self.classes)}")
        self.classes = classes
        shape = first.get("featureShape")
        if shape is not None:
            if not isinstance(shape, list) or not all(isinstance(n, int) and n > 0 for n in shape):
                raise DatasetFormatError("header featureShape must be a list of positive integers")
            if math.prod(shape) > MAX_LINE_VALUES:
                raise DatasetFormatError(f"header featureShape {shape} declares {math.prod(shape)} values per "
                                         f"sample; at most {MAX_LINE_VALUES} are supported in JSON Lines")
            self.feature_shape = tuple(shape)
            self.shape_origin = "the header's featureShape"
        return True

    def batches(self) -> Iterator[Batch]:
        try:
            with self._open_text() as stream:
                for _ in range(self._header_line):  # the header (and blank lines before it) was read already
                    next(stream, None)
                line_number = self._header_line
                paused = time.monotonic()
                for chunk in _chunks(_bounded_lines(stream), self.batch_size):
                    batch = None
                    if chunk:
                        first = line_number + 1
                        line_number += len(chunk)
                        batch = self._clean_chunk(chunk, first)
                        if batch is _NOT_CLEAN:
                            batch = self._chunk(chunk, first)
                    if batch is not None:
                        yield batch  # type: ignore[misc]
                    elif time.monotonic() - paused < PAUSE_SECONDS:
                        continue
                    else:
                        yield _pause()
                    paused = time.monotonic()
        except (OSError, EOFError, zlib.error) as exc:  # e.g. a gzip stream cut short
            raise DatasetFormatError(self._read_failed(exc, f"after {self.records} samples: ")) from None

    def _clean_chunk(self, chunk: list[str], first: int) -> Batch | object | None:
        """A chunk whose every line is a well-formed sample, parsed by orjson and checked with C-level loops.

        Most golden datasets are clean, and per-line Python code costs more than the parsing itself. orjson
        accepts a subset of what the standard library does (no NaN/Infinity, no lone surrogates, no numbers
        that overflow a double, no BOM) and reads it to the same values, except integers beyond 64 bits
        (floats for orjson, exact ints for the standard library): inputs of 2**63 or more in magnitude send the
        chunk away, and such numbers elsewhere in a sample are never used or already send it away (a label or
        slice tag that is not a string). Any doubt returns _NOT_CLEAN and the chunk is read line by line with
        the standard library, which defines the semantics, problems and their line numbers.
        """
        lines = list(map(str.strip, chunk))
        if not all(lines):
            return _NOT_CLEAN  # blank lines: let the careful path keep exact line numbers
        try:
            samples = list(map(orjson.loads, lines))  # one JSON document per line, or JSONDecodeError
        except orjson.JSONDecodeError:
            return _NOT_CLEAN
        try:
            label_index = list(map(self._class_index.get, map(dict.get, samples, repeat("label"))))
            inputs = list(map(dict.get, samples, repeat("inputs")))
            slice_values = list(map(dict.get, samples, repeat("slices")))
            if any(map(dict.__contains__, samples, repeat("slice"))):
                return _NOT_CLEAN
        except TypeError:  # a line that is not an object, or an unhashable label
            return _NOT_CLEAN
        if None in label_index or None in inputs:
            return _NOT_CLEAN
        tags: list[tuple[str, ...]] = [()] * len(lines)
        for position in [p for p, value in enumerate(slice_values) if value is not None]:
            sample_tags = _slice_tags(slice_values[position])
            if sample_tags is None:
                return _NOT_CLEAN
            tags[position] = sample_tags
        try:
            features = np.asarray(inputs)
        except (ValueError, TypeError):  # ragged
            return _NOT_CLEAN
        if features.dtype.kind not in _NUMERIC_KINDS or not features.size:
            return _NOT_CLEAN
        features = features.astype(np.float64, copy=False)
        if not (np.abs(features) < _INT64_LIMIT).all():  # also false for NaN and infinities
            return _NOT_CLEAN
        if self.feature_shape is None:  # the inputs are as the standard library reads them: infer as it would
            self._infer_feature_shape(inputs, list(range(first, first + len(lines))))
        if features.shape[1:] != self.feature_shape:
            return _NOT_CLEAN
        self.records += len(lines)
        return Batch(features=features, labels=np.asarray(label_index, dtype=np.int64),
                     slices=_group_slices(tags) if any(tags) else {})

    def _chunk(self, chunk: list[str], first: int) -> Batch | None:
        """Line by line, counting every unusable sample by reason."""
        rows: list[Any] = []
        labels: list[int] = []
        tags: list[tuple[str, ...]] = []
        lines: list[int] = []
        for line_number, raw in enumerate(chunk, start=first):
            line = raw.strip()
            if not line:
                continue
            self.records += 1
            if raw is TOO_LONG:
                self.problems.add("line too long", f"line {line_number}", f"over {MAX_LINE_CHARS} characters")
                continue
            if raw is TOO_MANY_VALUES:
                self.problems.add("too many values", f"line {line_number}",
                                  f"over {MAX_LINE_VALUES} comma-separated values")
                continue
            try:
                sample, end = self._scan(line, 0)
            except (StopIteration, ValueError, RecursionError):  # RecursionError: nested too deep
                sample, end = None, -1
            if end != len(line):
                self.problems.add("invalid JSON", f"line {line_number}")
                continue
            if type(sample) is not dict:
                self.problems.add("not a JSON object", f"line {line_number}")
                continue
            label = sample.get("label")
            label_index = self._class_index.get(label) if type(label) is str else None
            if label_index is None:
                self._label_problem(label, line_number)
                continue
            inputs = sample.get("inputs")
            if inputs is None:
                self.problems.add("missing inputs", f"line {line_number}")
                continue
            sample_tags = _slice_tags(sample.get("slices", sample.get("slice")))
            if sample_tags is None:
                self.problems.add("bad slices", f"line {line_number}", "expected a tag or a list of tags")
                continue
            rows.append(inputs)
            labels.append(label_index)
            tags.append(sample_tags)
            lines.append(line_number)
        return self._make_batch(rows, labels, tags, lines) if rows else None

    def _label_problem(self, label: Any, line_number: int) -> None:
        if label is None:
            self.problems.add("missing label", f"line {line_number}")
        else:
            self.problems.add("unknown label", f"line {line_number}", f"{str(label)[:40]!r} is not one of the classes")

    def _infer_feature_shape(self, rows: list[Any], lines: list[int]) -> None:
        """Without a declared shape, the first sample with numeric inputs sets the shape all must have."""
        for position, row in enumerate(rows):
            array = _row_array(row)
            if array is not None and array.size and array.dtype.kind in _NUMERIC_KINDS:
                self.feature_shape = tuple(array.shape)
                self.shape_origin = f"the first valid sample (line {lines[position]})"
                return

    def _make_batch(self, rows: list[Any], labels: list[int], tags: list[tuple[str, ...]],
                    lines: list[int]) -> Batch | None:
        if self.feature_shape is None:
            self._infer_feature_shape(rows, lines)
        features: np.ndarray | None = None
        try:
            candidate = np.asarray(rows)
            if (candidate.dtype.kind in _NUMERIC_KINDS and self.feature_shape is not None
                    and candidate.shape[1:] == self.feature_shape):
                features = candidate.astype(np.float64, copy=False)
        except (ValueError, TypeError):
            features = None  # ragged or mixed rows: sort them out one by one below
        keep = np.ones(len(rows), dtype=bool)
        if features is None:
            good_rows = []
            for position, row in enumerate(rows):
                array = _row_array(row)
                if array is None or array.dtype.kind not in _NUMERIC_KINDS:
                    self.problems.add("non-numeric inputs", f"line {lines[position]}")
                    keep[position] = False
                elif self.feature_shape is None or array.shape != self.feature_shape:
                    expected = self.feature_shape
                    self.problems.add("wrong feature shape", f"line {lines[position]}",
                                      f"got {list(array.shape)}, expected {list(expected or ())} from "
                                      f"{self.shape_origin or 'no valid sample'}")
                    keep[position] = False
                else:
                    good_rows.append(array)
            if not good_rows:
                return None
            features = np.stack(good_rows).astype(np.float64, copy=False)
        finite = np.isfinite(features.reshape(features.shape[0], -1)).all(axis=1)
        kept_positions = np.flatnonzero(keep)
        if not finite.all():
            for bad in np.flatnonzero(~finite):
                self.problems.add("non-finite inputs", f"line {lines[kept_positions[bad]]}")
            features = features[finite]
            kept_positions = kept_positions[finite]
        if features.shape[0] == 0:
            return None
        label_array = np.asarray(labels, dtype=np.int64)[kept_positions]
        kept_tags = [tags[position] for position in kept_positions] if any(tags) else []
        return Batch(features=features, labels=label_array, slices=_group_slices(kept_tags))


def _row_array(row: Any) -> np.ndarray | None:
    if not isinstance(row, list):
        return None
    try:
        return np.asarray(row)
    except (ValueError, TypeError):
        return None


def _bounded_lines(stream: IO[str]) -> Iterator[str]:
    """The stream's lines, each TOO_LONG instead when longer than MAX_LINE_CHARS. A long line is read through
    piece by piece, with _READING after each piece: a gzip stream can unpack one line into terabytes."""
    while line := stream.readline(MAX_LINE_CHARS + 1):
        if len(line) > MAX_LINE_CHARS and not line.endswith("\n"):
            del line
            yield _READING
            while (rest := stream.readline(MAX_LINE_CHARS)) and not rest.endswith("\n"):
                yield _READING
            yield TOO_LONG
        else:
            yield line


def _chunks(lines: Iterator[str], count: int) -> Iterator[list[str]]:
    """Chunks of up to `count` lines, fewer once they hold MAX_BATCH_CHARS or could hold more than
    MAX_LINE_VALUES values: a line holds at most its commas + 1 numbers (or other JSON values), a bound taken
    before parsing; a line past it is TOO_MANY_VALUES (like TOO_LONG: counted, never parsed). An empty chunk:
    nothing yet, a long line is being read through."""
    chunk: list[str] = []
    size = values = 0
    for line in lines:
        if line is _READING:
            yield []
            continue
        line_values = line.count(",") + 1
        if line_values > MAX_LINE_VALUES:
            line, line_values = TOO_MANY_VALUES, 1
        if chunk and values + line_values > MAX_LINE_VALUES:
            yield chunk
            chunk, size, values = [], 0, 0
        chunk.append(line)
        size += len(line)
        values += line_values
        if len(chunk) >= count or size >= MAX_BATCH_CHARS:
            yield chunk
            chunk, size, values = [], 0, 0
    if chunk:
        yield chunk


def _pause() -> Batch:
    """The empty batch a reader yields to say it is still reading."""
    return Batch(features=np.zeros((0, 0)), labels=np.zeros(0, dtype=np.int64))


# --- .npz --------------------------------------------------------------------------------------------


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__  # EOFError says nothing of itself


class _NpyStream:
    """Rows of one .npy member of a zip, read a block at a time."""

    def __init__(self, archive: zipfile.ZipFile, member: str) -> None:
        self.member = member
        try:
            self.stream = archive.open(member)
            version = np.lib.format.read_magic(self.stream)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(self.stream)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(self.stream)
            else:
                raise DatasetFormatError(f"{member}: unsupported .npy version {version}")
        except DatasetFormatError:
            raise
        except _NPZ_READ_ERRORS as exc:
            raise DatasetFormatError(f"{member} unreadable: {_why(exc)}") from None
        if dtype.hasobject:
            raise DatasetFormatError(f"{member}: object arrays (pickles) are refused")
        if fortran_order and len(shape) > 1:
            raise DatasetFormatError(f"{member}: Fortran-ordered arrays cannot be streamed; save it C-ordered")
        if not shape:
            raise DatasetFormatError(f"{member}: expected an array with one row per sample, got a scalar")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype: np.dtype[Any] = dtype
        self.row_bytes = math.prod(shape[1:]) * dtype.itemsize  # Python ints: np.prod wraps at 64 bits
        # A row's size as the batch holds it, in float64 values; a string (a label, tags) counts its bytes.
        self.row_values = max(math.prod(shape[1:]), -(-self.row_bytes // 8))
        if self.row_values > MAX_SAMPLE_VALUES:
            raise DatasetFormatError(f"{member}: one row is declared {list(shape[1:])} {dtype}, "
                                     f"{self.row_values} values ({self.row_values * 8 >> 20} MiB as float64); at "
                                     f"most {MAX_SAMPLE_VALUES} values ({MAX_SAMPLE_VALUES * 8 >> 20} MiB) per "
                                     "sample are supported")
        self.rows_left = shape[0]

    def read(self, count: int) -> np.ndarray:
        count = min(count, self.rows_left)
        data = bytearray(count * self.row_bytes)  # filled in place: no second copy of the block
        view = memoryview(data)
        filled = 0
        while filled < len(data):
            try:
                got = self.stream.readinto(view[filled:filled + (1 << 20)])  # the zip reader copies via a temporary
            except _NPZ_READ_ERRORS as exc:
                raise DatasetFormatError(f"{self.member} unreadable after {self.shape[0] - self.rows_left} rows: "
                                         f"{_why(exc)}") from None
            if not got:
                raise DatasetFormatError(f"{self.member}: file ends early")
            filled += got
        self.rows_left -= count
        return np.frombuffer(data, dtype=self.dtype).reshape((count, *self.shape[1:]))

    def close(self) -> None:
        self.stream.close()


def _npz_archive(path: Path) -> zipfile.ZipFile:
    """The .npz as a ZipFile, refused from its end-of-central-directory record (read by zipfile's own function,
    zip64 included: the record ZipFile then trusts) when its directory is too large to be an .npz's."""
    try:
        with open(path, "rb") as stream:
            end = zipfile._EndRecData(stream)  # type: ignore[attr-defined]
    except OSError:
        end = None
    if end is not None:  # None: not a zip, which ZipFile says
        entries, size = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
        if entries > MAX_NPZ_MEMBERS or size > MAX_NPZ_DIRECTORY_BYTES:
            raise DatasetFormatError(f".npz zip directory lists {entries} entries in {size} bytes; an .npz holds "
                                     f"one entry per array, at most {MAX_NPZ_MEMBERS} entries and "
                                     f"{MAX_NPZ_DIRECTORY_BYTES} bytes are supported")
    return zipfile.ZipFile(path)


def _check_member(info: zipfile.ZipInfo) -> None:
    """Refuses a member zipfile could not read, naming why (its own words are "That compression method is not
    supported", or a password asked for)."""
    if info.flag_bits & 0x1:
        raise DatasetFormatError(f"{info.filename} is encrypted: write the .npz without a password (np.savez)")
    if info.compress_type not in _ZIP_METHODS:
        method = zipfile.compressor_names.get(info.compress_type, "unknown")
        raise DatasetFormatError(f"{info.filename} uses zip compression method {info.compress_type} ({method}), "
                                 "which the gate cannot read: write it with np.savez or np.savez_compressed")


class NpzReader:
    format = "npz"

    def __init__(self, path: Path, batch_size: int, class_names: Sequence[str] | None = None) -> None:
        self.path = path
        self.batch_size = max(1, batch_size)
        self.records = 0
        self.problems = DatasetProblems()
        try:
            with _npz_archive(path) as archive:
                members = set(archive.namelist())
                for required in ("X.npy", "y.npy"):
                    if required not in members:
                        raise DatasetFormatError(f".npz has no {required[:-4]!r} array (has: "
                                                 f"{', '.join(sorted(m[:-4] for m in members)) or 'nothing'})")
                for info in archive.infolist():
                    if info.filename in _NPZ_ARRAYS:
                        _check_member(info)
                declared = None
                if "classes.npy" in members:
                    try:
                        with archive.open("classes.npy") as member:
                            declared = [str(c) for c in _small_array(member, "classes array").tolist()]
                    except DatasetFormatError:
                        raise
                    except _NPZ_READ_ERRORS as exc:
                        raise DatasetFormatError(f"classes array (classes.npy) unreadable: {_why(exc)}") from None
                self.has_slices = "slices.npy" in members
        except DatasetFormatError:
            raise
        except _NPZ_READ_ERRORS as exc:
            raise DatasetFormatError(f"not a readable .npz: {_why(exc)}") from None
        if declared is not None:
            classes = _check_classes(declared, "classes array")
            if class_names and tuple(class_names) != classes:
                raise DatasetFormatError(f"classes array {list(classes)} differs from the configured class list "
                                         f"{list(class_names)}")
        elif class_names:
            classes = tuple(class_names)
        else:
            raise DatasetFormatError("no class list: add a 'classes' array in the models' output order (or "
                                     "configure the class names)")
        self.classes: tuple[str, ...] = classes
        self._class_index = {name: index for index, name in enumerate(classes)}
        self.feature_shape: tuple[int, ...] | None = None

    def batches(self) -> Iterator[Batch]:
        try:
            with _npz_archive(self.path) as archive:
                streams = [_NpyStream(archive, "X.npy"), _NpyStream(archive, "y.npy")]
                if self.has_slices:
                    streams.append(_NpyStream(archive, "slices.npy"))
                try:
                    yield from self._batches(*streams)
                finally:
                    for stream in streams:
                        stream.close()
        except DatasetFormatError:
            raise
        except _NPZ_READ_ERRORS as exc:  # a bad CRC, a bad header, ...
            raise DatasetFormatError(f".npz unreadable after {self.records} rows: {_why(exc)}") from None

    def _batches(self, features: _NpyStream, labels: _NpyStream,
                 slices: _NpyStream | None = None) -> Iterator[Batch]:
        rows = features.shape[0]
        if len(features.shape) < 2 or features.dtype.kind not in _NUMERIC_KINDS:
            raise DatasetFormatError(f"X must be numeric with shape (samples, features...), got "
                                     f"{features.dtype} {list(features.shape)}")
        self.feature_shape = features.shape[1:]
        for other in (labels, slices):
            if other is not None and (other.shape[0] != rows or len(other.shape) != 1):
                raise DatasetFormatError(f"{other.member[:-4]} has shape {list(other.shape)}; expected ({rows},) "
                                         f"to match X's {rows} rows")
        if labels.dtype.kind not in "iuUS":
            raise DatasetFormatError(f"y must hold class names or integer class indices, got {labels.dtype}")
        if slices is not None and slices.dtype.kind not in "US":
            raise DatasetFormatError(f"slices must hold strings of comma-separated tags, got {slices.dtype}")
        streams = [stream for stream in (features, labels, slices) if stream is not None]
        block = min(self.batch_size, *(max(1, MAX_BATCH_VALUES // max(1, s.row_values)) for s in streams))
        start = 0
        paused = time.monotonic()
        while start < rows:
            block_x = features.read(block)
            block_y = labels.read(block)
            block_s = slices.read(block) if slices is not None else None
            count = block_x.shape[0]
            self.records += count
            label_index = self._labels(block_y, start)
            keep = label_index >= 0
            block_features = block_x.astype(np.float64, copy=False)
            del block_x
            finite = np.isfinite(block_features.reshape(count, -1)).all(axis=1)
            for bad in np.flatnonzero(keep & ~finite):
                self.problems.add("non-finite inputs", f"row {start + int(bad)}")
            keep &= finite
            tags = _npz_tags(block_s[keep]) if block_s is not None else []
            start += count
            if keep.any():
                kept = block_features if keep.all() else block_features[keep]
                yield Batch(features=kept, labels=label_index[keep], slices=_group_slices(tags))
            elif time.monotonic() - paused < PAUSE_SECONDS:
                continue
            else:
                yield _pause()
            paused = time.monotonic()

    def _labels(self, block: np.ndarray, start: int) -> np.ndarray:
        if block.dtype.kind in "iu":
            index = block.astype(np.int64)
            bad = (index < 0) | (index >= len(self.classes))
        else:
            names, inverse = np.unique(block, return_inverse=True)
            lookup = np.asarray([self._class_index.get(_text(name), -1) for name in names], dtype=np.int64)
            index = lookup[inverse.reshape(-1)]
            bad = index < 0
        for row in np.flatnonzero(bad):
            self.problems.add("unknown label", f"row {start + int(row)}", f"{_text(block[row])[:40]!r}")
        index = index.copy()
        index[bad] = -1
        return index


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes | np.bytes_) else str(value)


def _npz_tags(block: np.ndarray) -> list[tuple[str, ...]]:
    names, inverse = np.unique(block, return_inverse=True)
    parsed = [tuple(tag for tag in (part.strip() for part in _text(name).split(",")) if tag) for name in names]
    return [parsed[i] for i in inverse.reshape(-1)]


# --- writers (for tests, the local stack and anyone building a golden set) ---------------------------


def write_jsonl_dataset(path: Path, classes: Sequence[str], features: np.ndarray, labels: Sequence[str],
                        slices: Sequence[Sequence[str]] | None = None) -> str:
    """Write a JSON Lines golden dataset with its header; returns its sha256."""
    with open(path, "w", encoding="utf-8") as out:
        out.write(json.dumps({"classes": list(classes), "featureShape": list(features.shape[1:])}) + "\n")
        for row in range(features.shape[0]):
            sample: dict[str, Any] = {"inputs": features[row].tolist(), "label": labels[row]}
            if slices is not None and slices[row]:
                sample["slices"] = list(slices[row])
            out.write(json.dumps(sample) + "\n")
    return sha256_file(path)


def write_npz_dataset(path: Path, classes: Sequence[str], features: np.ndarray, labels: Sequence[str],
                      slices: Sequence[Sequence[str]] | None = None) -> str:
    """Write a .npz golden dataset (X, y, classes, slices); returns its sha256."""
    arrays: dict[str, np.ndarray] = {"X": np.ascontiguousarray(features), "y": np.asarray(labels, dtype=str),
                                     "classes": np.asarray(classes, dtype=str)}
    if slices is not None:
        arrays["slices"] = np.asarray([",".join(tags) for tags in slices], dtype=str)
    with open(path, "wb") as out:
        np.savez(out, **arrays)  # type: ignore[arg-type]
    return sha256_file(path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()
