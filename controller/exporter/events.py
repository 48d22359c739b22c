"""Read the predicted classes out of one logged inference event. Pure: no I/O.

KServe's logger agent posts each request and response as a binary-mode CloudEvent (`ce-*` headers,
the payload as body); Seldon Core's request logger does the same with its own event types. Structured
mode (`application/cloudevents+json`, its data as `data` or `data_base64`) is accepted too; an event with a
`ce-specversion` header is binary whatever its Content-Type (KServe's agent copies the client's, which may be
`application/cloudevents+json`).

KServe's agent logs the bytes the model server wrote: gzip or zlib when the client asked for it (Triton compresses on
Accept-Encoding), or a V2 response in the binary tensor data extension (a JSON header, then each binary output's
little-endian bytes). Both are read; a body is inflated to at most the exporter's event size.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from itertools import chain
from typing import Any
from urllib.parse import parse_qs

from controller.single_score import SCORE_DATATYPES, single_score_position

# Seldon Core v1's Python wrapper names the columns of a model that gives no class_names t:0, t:1, ...
_SELDON_PLACEHOLDER = re.compile(r"t:[0-9]+")
RESPONSE_TYPES = frozenset({"org.kubeflow.serving.inference.response", "io.seldon.serving.inference.response"})
REQUEST_TYPES = frozenset({"org.kubeflow.serving.inference.request", "io.seldon.serving.inference.request"})
# Seldon's executor logs each feedback call (a reward for an earlier prediction): no prediction, answered and ignored.
IGNORED_TYPES = frozenset({"io.seldon.serving.feedback"})
TOO_LARGE_REASON = "TooLarge"  # a body past the exporter's event size, as sent or once inflated
# Bounds on one response, checked before it is built into Python objects: a few KiB of gzip inflate to 4 MiB of
# one-byte values or nested arrays, which would be hundreds of MiB. A logged batch is far smaller.
MAX_PREDICTIONS_PER_EVENT = 1 << 19
MAX_TENSOR_ELEMENTS = 1 << 20
MAX_JSON_CONTAINERS = 1 << 19
# The binary tensor data extension's header: how long the JSON part of the body is (else read up to its end).
HEADER_LENGTH = "inference-header-content-length"
# Little-endian struct codes of the binary extension's fixed-size datatypes (BYTES is length-prefixed).
BINARY_FORMATS = {"BOOL": "?", "INT8": "b", "UINT8": "B", "INT16": "h", "UINT16": "H", "INT32": "i", "UINT32": "I",
                  "INT64": "q", "UINT64": "Q", "FP16": "e", "FP32": "f", "FP64": "d"}
# "": not said. The operator's judges select by model_version, which the router writes into each serving
# revision's logger URL; the variant label is for dashboards and for whoever sets it.
VARIANTS = frozenset({"stable", "canary", ""})
ENDPOINT_VARIANTS = {"default": "stable", "stable": "stable", "canary": "canary"}
UNLABELLED_VERSION = "unknown"  # the model_version of predictions whose logger URL names none
# Attributes a request is remembered by, for its response to borrow: everything else it carried is dropped.
IDENTITY_ATTRIBUTES = ("namespace", "inferenceservicename", "modelid", "endpoint", "component", "modelversion")
# A score is a JSON number: "0.7" or true in a row of scores is no score, for the exporter as for the golden gate.
_NUMBER_TYPES = frozenset({int, float})
# Longest label value counted (a Kubernetes object name is at most 253): a longer one, or one that is not
# valid text, would grow memory and /metrics without bound or make /metrics unencodable for every namespace.
MAX_LABEL_LENGTH = 253
# Drop reasons that are the model's answer's fault, not the sender's or the exporter's set-up: a row (or a whole body
# of a known model identity) dropped for one of them is counted against its model version as unreadable, so a
# candidate whose answers to some inputs alone cannot be read is seen by the judges. BadLabel here is a row's class
# (a label that is no label text): an identity's BadLabel is raised before any row is read. BadV2Output: the
# response's outputs are not a list of objects, or lack the output the exporter reads. Not among them: no class
# names (NoClassNames), a body too large or not JSON (TooLarge, NotJSON), one with no predictions at all
# (UnknownPayload: an error answer, a client's 400 as much as the model's failure).
# EmptyPredictions: a response with no row at all (`{"predictions": []}`, a V2 output of shape [0, n]).
EMPTY_PREDICTIONS_REASON = "EmptyPredictions"
UNREADABLE_REASONS = frozenset({"BadPredictions", "UnknownClass", "ScoreWidth", "AmbiguousScore", "BadTensor",
                                "ClassNamesMismatch", "UnsupportedDatatype", "BadV2Output", "BadLabel",
                                EMPTY_PREDICTIONS_REASON})


class MalformedEvent(ValueError):
    """The event cannot be counted; `reason` is a stable label value for the malformed-events counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class DecodeOptions:
    """How to read a prediction: class names for index or probability outputs, and which V2 output."""

    class_names: tuple[str, ...] = ()
    v2_output: str | None = None  # default: the first output
    # A Seldon response's one column, named neither the second class nor a placeholder: a score in it may be either
    # class's probability, so only its labels and class indexes are read (see _with_names).
    ambiguous_column: str | None = None


@dataclass(frozen=True)
class Prediction:
    namespace: str
    inference_service: str
    variant: str
    model_version: str
    classes: tuple[str, ...] = field(default_factory=tuple)
    unread: tuple[str, ...] = ()  # the drop reason of each row no class was read from, as the gate loses a sample
    unreadable: int = 0  # rows (or a whole body: 1) dropped for one of UNREADABLE_REASONS, the model's fault

    @property
    def identity(self) -> tuple[str, str, str, str]:
        return self.namespace, self.inference_service, self.variant, self.model_version


@dataclass(frozen=True)
class RowClasses:
    """A response's rows: the class of each readable one, and why each other one is not read."""

    read: tuple[str, ...]
    unread: tuple[MalformedEvent, ...] = ()


@dataclass(frozen=True)
class BinaryData:
    """An output's tensor in the binary tensor data extension, read only if it is the output the exporter counts."""

    datatype: str
    raw: memoryview

    def values(self) -> list[Any]:
        """Row-major values, as the JSON `data` of the same output would list them."""
        if self.datatype == "BYTES":  # (upper case: see _with_binary_outputs)
            return _length_prefixed(self.raw)
        code = BINARY_FORMATS.get(self.datatype)
        if code is None:
            raise MalformedEvent("UnsupportedDatatype", f"a binary output of datatype {self.datatype[:16]!r}")
        count, rest = divmod(len(self.raw), struct.calcsize(code))
        if rest:
            raise MalformedEvent("BadTensor", f"{len(self.raw)} bytes are not whole {self.datatype} values")
        if count > MAX_TENSOR_ELEMENTS:
            raise MalformedEvent(TOO_LARGE_REASON, f"{count} values in one output, over {MAX_TENSOR_ELEMENTS}")
        return list(struct.unpack(f"<{count}{code}", self.raw))


def _length_prefixed(raw: memoryview) -> list[str]:
    """BYTES elements: each a 4-byte little-endian length, then that many bytes."""
    values, at = [], 0
    while at < len(raw):
        size = int.from_bytes(raw[at:at + 4], "little")
        if at + 4 + size > len(raw):
            raise MalformedEvent("BadTensor", "a BYTES element runs past the output's binary data")
        # Not valid UTF-8: kept as surrogates, which check_label refuses as a class.
        values.append(bytes(raw[at + 4:at + 4 + size]).decode("utf-8", "surrogateescape"))
        at += 4 + size
    return values


@dataclass(frozen=True)
class CloudEvent:
    id: str
    type: str
    attributes: Mapping[str, str]
    data: Any


def _structured(lowered: Mapping[str, str]) -> bool:
    """Structured mode: the CloudEvent is the body. Unlike the HTTP binding's rule (Content-Type first), a
    `ce-specversion` header makes it binary mode: KServe's agent sends binary events with the client's Content-Type."""
    return ("ce-specversion" not in lowered
            and lowered.get("content-type", "").startswith("application/cloudevents+json"))


def payload_unused(headers: Mapping[str, str]) -> bool:
    """A request event in binary mode: kept for its attributes (headers) only, its payload (images, V2 tensors,
    often binary and large) never read."""
    lowered = {k.lower(): v for k, v in headers.items()}
    return not _structured(lowered) and lowered.get("ce-type") in REQUEST_TYPES | IGNORED_TYPES


def may_inflate(headers: Mapping[str, str], body: bytes) -> bool:
    """Whether the body may decode to more than its own size: compressed, or a structured event with a data_base64
    (which may be; a key may be spelt with JSON escapes). A small body that is neither decodes in milliseconds."""
    if _compressed(body):
        return True
    if not _structured({k.lower(): v for k, v in headers.items()}):
        return False
    if b"data_base64" in body:
        return True
    if b"\\u" not in body:
        return False
    try:  # an escape (a source URI's "\u0026", a class's "\u00e9") may spell the key too: a small body parses fast
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return False  # refused on the event loop as fast
    return isinstance(parsed, dict) and "data_base64" in parsed


def parse_cloudevent(headers: Mapping[str, str], body: bytes, *, max_bytes: int) -> CloudEvent:
    """max_bytes: the most a compressed body is inflated to (a zip bomb is dropped as TooLarge)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    structured = _structured(lowered)
    if payload_unused(headers):
        body = b""
    if structured:
        payload = _json(inflated(body, max_bytes))
        if not isinstance(payload, dict):
            raise MalformedEvent("NotCloudEvent", "structured event is not a JSON object")
        # A null attribute is an absent one (str(None) would make "None" an id).
        attributes = {k.lower(): str(v) for k, v in payload.items()
                      if k not in ("data", "data_base64") and v is not None}
        data = payload.get("data")
        if "data" not in payload and attributes.get("type") in RESPONSE_TYPES:  # a request's payload is never read
            data = _base64_data(payload.get("data_base64"), max_bytes, attributes["type"])
    else:
        attributes = {k[3:]: v for k, v in lowered.items() if k.startswith("ce-")}
        data = payload = _answer(body, max_bytes, lowered.get(HEADER_LENGTH), attributes.get("type"))
        if isinstance(payload, dict) and "specversion" in payload and "data" in payload:
            data = payload["data"]  # the model answered a CloudEvent of its own: the logger's headers say who
    for required in ("id", "type", "specversion"):
        if not attributes.get(required):
            raise MalformedEvent("NotCloudEvent", f"missing CloudEvent attribute {required!r}")
    return CloudEvent(attributes["id"], attributes["type"], attributes, data)


def _json(body: bytes) -> Any:
    # Each "[" or "{" becomes a Python list or dict of 60-200 bytes: 4 MiB of nested ones (a few KiB gzipped) would be
    # ~200 MiB before anything could be refused. Counted in C first; a batch of score rows has one a row.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_CONTAINERS:
        raise MalformedEvent(TOO_LARGE_REASON, f"more than {MAX_JSON_CONTAINERS} JSON arrays and objects")
    try:
        return json.loads(body) if body else None
    except (ValueError, RecursionError) as exc:  # also bad UTF-8, absurd nesting, integers past Python's limit
        raise MalformedEvent("NotJSON", f"body is not JSON ({exc.__class__.__name__})") from None


def _base64_data(encoded: Any, max_bytes: int, event_type: str) -> Any:
    """A structured event's data_base64: the body a binary event would carry (within the event, so within its size)."""
    if encoded is None:
        return None
    try:
        body = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else None
    except (binascii.Error, ValueError):  # ValueError: not ASCII
        body = None
    if body is None:
        raise MalformedEvent("NotCloudEvent", "data_base64 is not a base64 string")
    return _answer(body, max_bytes, None, event_type)


def _answer(body: bytes, max_bytes: int, header_length: str | None, event_type: str | None) -> Any:
    """_payload, except that a response whose binary tensor framing is wrong is the model server's unreadable answer:
    its error is kept as its data (read_classes raises it), so that it is counted against its model version, which
    is known only later (from the query, the event or its request), as a BadTensor read from the JSON is."""
    try:
        return _payload(body, max_bytes, header_length)
    except MalformedEvent as exc:
        if exc.reason != "BadTensor" or event_type not in RESPONSE_TYPES:
            raise
        return exc


_JSON_WHITESPACE = b" \t\n\r"  # RFC 8259's, and all json.loads skips


def _payload(body: bytes, max_bytes: int, header_length: str | None = None) -> Any:
    """What a logged body holds: JSON, after inflating it if compressed, with the binary tensor data extension's
    outputs placed in its header's outputs as BinaryData."""
    body = inflated(body, max_bytes)
    if header_length is None:
        try:
            whole = _json(body)
        except MalformedEvent as exc:
            if exc.reason != "NotJSON" or not body.startswith(b"{"):  # (TooLarge: not parsed again below)
                raise
        else:
            # Binary data of JSON whitespace bytes alone (a UINT8 class 10) is JSON whole, as trailing whitespace:
            # outputs of binary_data_size say it is theirs. A JSON value never ends in whitespace: it ends there.
            if not _declares_binary_data(whole):
                return whole
            end = len(body.rstrip(_JSON_WHITESPACE))
            return _with_binary_outputs(whole, memoryview(body)[end:])
        try:  # the JSON header's end: Latin-1 maps each byte to one character, so its index is the byte's
            end = json.JSONDecoder().raw_decode(body.decode("latin-1"))[1]
        except (ValueError, RecursionError):
            raise MalformedEvent("NotJSON", "body is not JSON, nor a JSON header and binary data") from None
    elif header_length.isascii() and header_length.isdigit() and 0 < int(header_length) <= len(body):
        end = int(header_length)
    else:  # (isascii: "²" is a digit that int() refuses)
        raise MalformedEvent("BadTensor", f"{HEADER_LENGTH} is not a length within the body")
    return _with_binary_outputs(_json(body[:end]), memoryview(body)[end:])


def _binary_data_sizes(header: Any) -> Iterator[Any]:
    """Each output's binary_data_size, in the outputs' order, for those that have one."""
    outputs = header.get("outputs") if isinstance(header, dict) else None
    for output in outputs if isinstance(outputs, list) else ():
        parameters = output.get("parameters") if isinstance(output, dict) else None
        if isinstance(parameters, dict) and parameters.get("binary_data_size") is not None:
            yield output, parameters["binary_data_size"]


def _declares_binary_data(header: Any) -> bool:
    return next(_binary_data_sizes(header), None) is not None


def _with_binary_outputs(header: Any, raw: memoryview) -> Any:
    """Each output with a binary_data_size takes that many bytes of the binary part, in the outputs' order."""
    at = 0
    for output, size in _binary_data_sizes(header):
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(raw) - at:
            raise MalformedEvent("BadTensor", "an output's binary_data_size is not a size within the binary data")
        output["data"] = BinaryData(_datatype(output), raw[at:at + size])
        at += size
    if at != len(raw):
        raise MalformedEvent("NotJSON" if not at else "BadTensor",
                             f"{len(raw)} bytes after the JSON, of which the outputs' binary_data_size name {at}")
    return header


_GZIP_MAGIC = b"\x1f\x8b"
# A compressor writing as it goes makes a few members; each further one costs a copy of the rest of the body
# (unused_data), so 4 MiB of empty members would take seconds and hold the decoding worker from everyone else.
MAX_GZIP_MEMBERS = 64


def _compressed(body: bytes) -> bool:
    """gzip, or zlib (RFC 1950: deflate with a 32K window); JSON starts with neither."""
    return body[:2] == _GZIP_MAGIC or (body[:1] == b"\x78" and int.from_bytes(body[:2], "big") % 31 == 0)


def inflated(body: bytes, max_bytes: int) -> bytes:
    """A body as it is, or inflated to at most max_bytes if compressed: a few KiB must not become gigabytes. A gzip
    body of several members (RFC 1952; a compressor writing as it goes makes one) is inflated whole, up to
    MAX_GZIP_MEMBERS."""
    if not _compressed(body):
        return body
    parts: list[bytes] = []
    size, rest = 0, body
    while len(parts) < MAX_GZIP_MEMBERS:
        inflater = zlib.decompressobj(wbits=32 + zlib.MAX_WBITS)  # either header
        try:
            part = inflater.decompress(rest, max_bytes + 1 - size)
        except zlib.error:
            raise MalformedEvent("NotJSON", "body is neither JSON nor valid gzip or zlib data") from None
        size += len(part)
        parts.append(part)
        if size > max_bytes:
            raise MalformedEvent(TOO_LARGE_REASON, f"body inflates past {max_bytes} bytes")
        rest = inflater.unused_data
        if not inflater.eof or (rest and not rest.startswith(_GZIP_MAGIC)):
            raise MalformedEvent("NotJSON", "compressed body is cut short or has data after its end")
        if not rest:
            return b"".join(parts)
    raise MalformedEvent("NotJSON", f"compressed body has more than {MAX_GZIP_MEMBERS} gzip members")


def _datatype(output: Mapping[str, Any]) -> str:
    """A V2 output's datatype in upper case, as the golden gate compares it: "fp32" is FP32, never indexes."""
    return str(output.get("datatype") or "").upper()


def predicted_classes(data: Any, options: DecodeOptions) -> tuple[str, ...]:
    """Classes predicted in a V1, V2 (Open Inference Protocol) or Seldon v1 response body; a row no class is read
    from drops the whole body (see read_classes for the rows that can be read)."""
    rows = read_classes(data, options)
    if rows.unread:
        raise rows.unread[0]
    return rows.read


def read_classes(data: Any, options: DecodeOptions) -> RowClasses:
    """Classes predicted in a V1, V2 (Open Inference Protocol) or Seldon v1 response body, row by row: a bad row
    (NaN, an unknown label, a short score row) is that row's loss, as the golden gate loses only that sample. A body
    that is not a readable tensor or list of rows raises."""
    if isinstance(data, MalformedEvent):  # a body parse_cloudevent could not frame (see _answer)
        raise data
    if not isinstance(data, dict):
        raise MalformedEvent("UnknownPayload", "response body is not a JSON object")
    if "predictions" in data:
        classes = _rows_to_classes(data["predictions"], options)
    elif "outputs" in data:
        classes = _v2_classes(data["outputs"], options)
    elif isinstance(data.get("data"), dict) and "ndarray" in data["data"]:
        seldon = data["data"]
        classes = _rows_to_classes(seldon["ndarray"], _with_names(options, seldon.get("names")))
    elif isinstance(data.get("data"), dict) and isinstance(data["data"].get("tensor"), dict):
        seldon, tensor = data["data"], data["data"]["tensor"]
        classes = _tensor_classes(tensor.get("values"), tensor.get("shape"), _with_names(options, seldon.get("names")))
    else:
        raise MalformedEvent("UnknownPayload", "no predictions, outputs or data in the response")
    verdicts = {name: _class_refusal(name, options) for name in {c for c in classes if isinstance(c, str)}}
    read: list[str] = []
    unread: list[MalformedEvent] = []
    for row in classes:
        if isinstance(row, MalformedEvent):
            unread.append(row)
        elif (refusal := verdicts[row]) is not None:
            unread.append(refusal)
        else:
            read.append(row)
    return RowClasses(tuple(read), tuple(unread))


def _class_refusal(name: str, options: DecodeOptions) -> MalformedEvent | None:
    """Why a row's class cannot be counted, or None."""
    try:
        check_label("class", name)  # text that is no label at all stays BadLabel, whatever the class names
    except MalformedEvent as exc:
        return exc
    # Indexes and scores only ever name configured classes: what is left is a label. One not among --class-names
    # ("NSFW" beside "nsfw") would be a class of its own, its predictions hidden from the judges' rate.
    if options.class_names and name not in options.class_names:
        return MalformedEvent("UnknownClass", f"a label of {len(name)} characters that is not among the "
                                              f"{len(options.class_names)} class names")
    return None


def _ambiguous_score(column: str) -> MalformedEvent:
    return MalformedEvent("AmbiguousScore", f"one score per row named {column[:32]!r}, not the second class name: it "
                                            "is read as the second's probability")


def _refuse_scores_in_an_ambiguous_column(options: DecodeOptions, values: Any) -> None:
    """An ambiguous column holding any score is refused whole, its whole numbers too (a p_safe of 1 read as index 1
    would count inverted; review s34r3)."""
    if options.ambiguous_column is None:
        return
    pending = [values]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, float):
            raise _ambiguous_score(options.ambiguous_column)


def _with_names(options: DecodeOptions, names: Any) -> DecodeOptions:
    """Seldon's `names` say which column is which: the row is read in their order, never --class-names' order.
    Not so for Seldon's placeholders (t:0, t:1, ... for a model that names no classes) or one column (a sigmoid's
    score, read against the configured classes): those name no class."""
    if not names or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return options
    if options.class_names and len(names) == 1 and names[0] not in options.class_names[1:2] \
            and not _SELDON_PLACEHOLDER.fullmatch(names[0]):
        # One score is read as the second class's probability: a column named anything else (the first class,
        # "p_safe") could be the other one's and would count inverted. Its labels and indexes ("label",
        # "class_id") name their class whatever the column is called: read row by row (_row_to_class).
        return replace(options, ambiguous_column=names[0])
    if len(names) == 1 or all(_SELDON_PLACEHOLDER.fullmatch(n) for n in names):
        return options  # without --class-names, dropped as NoClassNames: "t:1" would be an index as a class
    unknown = [name for name in names if name not in options.class_names]
    if options.class_names and unknown:
        # Another model's classes (the names are one list for every namespace): counting them would mislabel.
        raise MalformedEvent("ClassNamesMismatch", f"the response names a column {unknown[0][:32]!r} that is not "
                                                   f"among the {len(options.class_names)} class names")
    return DecodeOptions(tuple(names), options.v2_output)


def _v2_classes(outputs: Any, options: DecodeOptions) -> list[str | MalformedEvent]:
    if not isinstance(outputs, list) or not outputs:
        raise MalformedEvent("BadV2Output", "outputs is not a non-empty list")
    chosen = outputs[0]
    if options.v2_output is not None:
        chosen = next((o for o in outputs if isinstance(o, dict) and o.get("name") == options.v2_output), None)
        if chosen is None:
            raise MalformedEvent("BadV2Output", f"no output named {options.v2_output!r}")
    if not isinstance(chosen, dict):
        raise MalformedEvent("BadV2Output", "output is not an object")
    data = chosen.get("data")
    if isinstance(data, BinaryData):
        data = data.values()
    datatype = _datatype(chosen)
    return _tensor_classes(data, chosen.get("shape"), options, labels=datatype == "BYTES",
                           scores=datatype in SCORE_DATATYPES)


def _tensor_classes(values: Any, shape: Any, options: DecodeOptions, *, labels: bool = False,
                    scores: bool = False) -> list[str | MalformedEvent]:
    """labels: a label output, one per instance ([n] or [n, 1]); scores: a V2 FP* output, whose every value is a
    score (a sigmoid's exact 1.0 is no class index)."""
    if (not isinstance(values, list) or not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise MalformedEvent("BadTensor", "tensor needs a data list and a shape of non-negative integers")
    if shape:
        _check_predictions(shape[0])
    flat = rectangular_values(values)
    if flat is None:  # as the golden gate (numpy) refuses it, even when its total would fill the shape
        raise MalformedEvent("BadTensor", "the data is ragged: nested lists of unequal lengths or depths")
    if len(shape) == 2:
        rows, width = shape
        if width == 0 and rows:  # [n, 0] matches no data for any n: refused before n empty rows are built
            raise MalformedEvent("BadTensor", f"shape {shape[:2]} has rows but no values per row")
        if rows * width != len(flat):
            raise MalformedEvent("BadTensor", f"shape {shape} does not match {len(flat)} values")
        if width == 1:  # a one-column row is read as its value: no list a row
            return _rows_to_classes(flat, options, scores)
        if labels:  # e.g. each instance's top-k labels: counting them all would count k predictions per instance
            raise MalformedEvent("BadTensor", f"a label output of shape {shape}: one label per instance is [n] "
                                              "or [n, 1]")
        return _rows_to_classes([flat[i * width:(i + 1) * width] for i in range(rows)], options, scores)
    if len(shape) == 1 and shape[0] == len(flat):
        return _rows_to_classes(flat, options, scores)
    raise MalformedEvent("BadTensor", f"shape {shape[:8]} of {len(flat)} values is neither [n] nor [n, classes]")


def rectangular_values(values: list[Any]) -> list[Any] | None:
    """Row-major values of a nested list, or None when it is ragged (lists of one depth of unequal lengths, or values
    beside lists): the one rule of the exporter and the golden gate. Level by level, in time linear in its size
    however deep it nests."""
    level = values
    while True:
        types = set(map(type, level))  # in C: a batch's values are read at numpy's pace
        if list not in types:
            return level
        if len(types) > 1 or len(set(map(len, level))) > 1:
            return None
        level = list(chain.from_iterable(level))


def is_score_row(row: Any) -> bool:
    """A row of scores: a non-empty list of JSON numbers (a string or a boolean is none), for the exporter as for the
    golden gate."""
    return isinstance(row, list) and bool(row) and set(map(type, row)) <= _NUMBER_TYPES


def _check_predictions(count: int) -> None:
    if count > MAX_PREDICTIONS_PER_EVENT:
        raise MalformedEvent(TOO_LARGE_REASON, f"{count} predictions in one event, over {MAX_PREDICTIONS_PER_EVENT}")


def _rows_to_classes(rows: Any, options: DecodeOptions, scores: bool = False) -> list[str | MalformedEvent]:
    """Each row's class, or why it has none."""
    if not isinstance(rows, list):
        raise MalformedEvent("BadPredictions", "predictions is not a list")
    _check_predictions(len(rows))
    _refuse_scores_in_an_ambiguous_column(options, rows)  # after the size and shape checks: those are set-up faults
    return [_row_or_refusal(row, options, scores) for row in rows]


def _row_or_refusal(row: Any, options: DecodeOptions, scores: bool) -> str | MalformedEvent:
    try:
        return _row_to_class(row, options, scores)
    except MalformedEvent as exc:
        return exc


def _row_to_class(row: Any, options: DecodeOptions, scores: bool = False) -> str:
    """scores: the output's datatype says its values are scores, so a single number is never a class index."""
    if isinstance(row, list) and len(row) == 1:
        row = row[0]  # a one-column output ([n, 1]: MLServer's NumpyCodec, a sigmoid) is its one value
    if isinstance(row, str):
        return row
    if isinstance(row, bool):
        raise MalformedEvent("BadPredictions", "a boolean is not a class")
    if options.ambiguous_column is not None and (isinstance(row, float) or is_score_row(row)):
        # Any float, 1.0 too: a first class's probability of 1.0 read as index 1 would count inverted.
        raise _ambiguous_score(options.ambiguous_column)
    if scores and isinstance(row, int | float):  # an FP* value written as 1 by some JSON encoders is a score too
        try:
            return _single_score_class(float(row), options)
        except OverflowError:  # an integer past any float's range: no score either
            raise MalformedEvent("BadPredictions", "a score is out of range") from None
    if isinstance(row, int):
        return _class_at(row, options)
    if isinstance(row, float) and row.is_integer():
        return _class_at(int(row), options)
    if isinstance(row, float):
        return _single_score_class(row, options)
    if is_score_row(row):
        try:
            finite = all(math.isfinite(p) for p in row)  # NaN compares false with everything: argmax would guess
        except OverflowError:  # JSON allows integers past any float's range: no score either
            finite = False
        if not finite:
            raise MalformedEvent("BadPredictions", "a score is NaN, infinite or out of range")
        if options.class_names and len(row) != len(options.class_names):
            # Another model's scores (e.g. a binary [p_safe, p_nsfw] under three names): no column is known.
            raise MalformedEvent("ScoreWidth", f"{len(row)} scores in a row for {len(options.class_names)} class names")
        best = max(range(len(row)), key=lambda i: row[i])
        return _class_at(best, options)
    if isinstance(row, dict) and isinstance(row.get("label"), str):
        return str(row["label"])
    # Named by its shape, never quoted: a prediction row is payload, and payloads stay out of logs.
    raise MalformedEvent("BadPredictions", f"cannot read a class from {_shape_of(row)}")


def _shape_of(row: Any) -> str:
    if isinstance(row, dict):
        return "an object without a string label"
    if isinstance(row, list):
        return "an empty list" if not row else "a list that is not all numbers"
    return f"a JSON {'null' if row is None else type(row).__name__}"


def _single_score_class(score: float, options: DecodeOptions) -> str:
    """One probability per row is a binary classifier's score for its second class (a sigmoid)."""
    if not options.class_names:
        raise _no_class_names("one score per row")
    position = single_score_position(score, len(options.class_names))
    if position is None:
        where = "in" if 0.0 <= score <= 1.0 else "outside"
        raise MalformedEvent("AmbiguousScore", f"one score per row ({where} [0, 1]) needs exactly two class names "
                                               "and a probability (the score is the second's)")
    return options.class_names[position]


def _class_at(index: int, options: DecodeOptions) -> str:
    if not options.class_names:
        # Never str(index): "1" beside another version's labels ("nsfw") would hide its predictions from the judges.
        raise _no_class_names("a class index or a row of scores")
    if not 0 <= index < len(options.class_names):
        raise MalformedEvent("UnknownClass", f"class index {index} outside the {len(options.class_names)} names")
    return options.class_names[index]


def _no_class_names(what: str) -> MalformedEvent:
    return MalformedEvent("NoClassNames", f"{what} names no class: set the exporter's --class-names")


def prediction_from_event(event: CloudEvent, query: str, options: DecodeOptions,
                          request: CloudEvent | None = None) -> Prediction:
    """Who made the prediction: from the logger URL's query (?variant=&model_version=), then the event's
    extensions, then the paired request's.

    The namespace is the one exception: KServe's agent sets the `namespace` extension from its pod, while
    the logger URL is whatever the InferenceService's owner wrote. A query naming another namespace than
    the event comes from would let one team count predictions for another team's rollout: refused.
    """
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    extensions = {**(request.attributes if request else {}), **event.attributes}
    sent_from, claimed = extensions.get("namespace", ""), params.get("namespace", "")
    if sent_from and claimed and claimed != sent_from:
        raise MalformedEvent("NamespaceMismatch", f"the logger URL names namespace {claimed[:63]!r} but the event "
                                                  f"comes from {sent_from[:63]!r}")
    namespace = sent_from or claimed
    service = (params.get("inference_service") or extensions.get("inferenceservicename")
               or extensions.get("modelid", ""))
    # A transformer or explainer logs its own view of the same request: one user request, one prediction.
    component = extensions.get("component", "")
    if component and component != "predictor":
        raise MalformedEvent("NotPredictor", f"logged by the {component[:40]!r} component, not the predictor")
    # The query's variant is the InferenceService owner's word and must be one we know. The endpoint is
    # KServe's default/canary or, from Seldon, a predictor's own name, which says nothing about its role.
    variant = params.get("variant") or ENDPOINT_VARIANTS.get(extensions.get("endpoint", ""), "")
    # Not the response's own model_version: that is the model server's numbering (Triton says "1"), not the
    # registry's, and would put stable's predictions in a candidate's bucket.
    version = params.get("model_version") or extensions.get("modelversion") or ""
    if not namespace or not service:
        raise MalformedEvent("MissingIdentity", "the event names no namespace or inference service")
    if variant not in VARIANTS:
        raise MalformedEvent("UnknownVariant", f"variant {variant[:40]!r} is neither stable nor canary nor empty")
    for what, value in (("namespace", namespace), ("inference service", service), ("model version", version)):
        check_label(what, value)  # (each class is checked as its row is read)
    # The identity is known before the body is read: an answer that cannot be read is still this version's.
    try:
        rows = read_classes(event.data, options)
    except MalformedEvent as exc:
        if exc.reason not in UNREADABLE_REASONS:
            raise
        rows = RowClasses((), (exc,))  # no row can be read: one unreadable answer
    if not rows.read and not rows.unread:  # an answer with no prediction in it is no answer: else seen nowhere
        rows = RowClasses((), (MalformedEvent(EMPTY_PREDICTIONS_REASON, "the response holds no prediction"),))
    unreadable = sum(refusal.reason in UNREADABLE_REASONS for refusal in rows.unread)
    if rows.unread and not rows.read and not unreadable:  # nothing to count: dropped, for its first row's reason
        raise rows.unread[0]
    return Prediction(namespace, service, variant, version or UNLABELLED_VERSION, rows.read,
                      tuple(refusal.reason for refusal in rows.unread), unreadable)


def check_label(what: str, value: str) -> None:
    """A value that may become a label: valid text, and not longer than MAX_LABEL_LENGTH."""
    if len(value) > MAX_LABEL_LENGTH:
        raise MalformedEvent("BadLabel", f"the {what} is {len(value)} characters, more than {MAX_LABEL_LENGTH}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from JSON, or raw bytes in a header (surrogateescape)
        raise MalformedEvent("BadLabel", f"the {what} is not valid UTF-8 text") from None
