"""Async inference clients for KServe V1 and the Open Inference Protocol (V2), batched and bounded.

V1: POST {base}/v1/models/<m>:predict  {"instances": [...]}  ->  {"predictions": [...]}
V2: POST {base}/v2/models/<m>/infer   {"inputs": [{name, shape, datatype, data}]}  ->  {"outputs": [...]}

A prediction may be a class name (also as {"label": name}), an integer class index, a vector of scores (argmax
over the model's output classes) or one score (a sigmoid: the probability of the second of exactly two classes),
read as the prediction exporter reads them. Whatever a server sends back, `predict` returns a `BatchAnswer`: a
class index per sample (-1 where there is no usable prediction) and the reason for what was unusable. It never
raises for a server's behaviour, so a partly broken server is counted and reported, not a crash.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiohttp
import numpy as np
import orjson

from controller.exporter.events import is_score_row, rectangular_values
from controller.gate.bodies import is_framed
from controller.single_score import SCORE_DATATYPES, single_score_position

# Transient statuses: retried, and reported as "unavailable" when retries run out.
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Statuses that say the request never reached the model (a wrong URL, model name or protocol, the gateway's
# auth, a model still loading): nothing about its answers, so treated like the transient ones, never as the
# model's answer. 400, 422 and 500 stay the model's answer: its server refused or failed on the golden input.
_SETUP_STATUSES = {
    401: "not authorized: check the endpoint's credentials",
    403: "forbidden: check the endpoint's credentials",
    404: "not found: check the model name and protocol, or the model is not loaded yet",
    405: "method not allowed: check the protocol",
    407: "proxy authentication required",
    408: "the server timed the request out",
    410: "gone: check the model name",
    413: "request too large for the server: raise the model server's or its proxy's request body limit",
    415: "media type refused: check the protocol",
    421: "misdirected: check the URL",
    426: "upgrade required: check the URL's scheme",
    501: "not implemented: check the protocol",
    511: "network authentication required",
}
# An inference server answers JSON; an HTML page comes from whatever stands in front of it.
_HTML_PAGE = "an HTML page, not a model's answer: a sign-in gateway or proxy? check the URL"
# An answer without Content-Length or chunking ends where the connection closes, so one cut short (a server or proxy
# dying mid-answer) looks whole: one that does not decode is the transport's failure, never the model's answer.
CUT_ANSWER = "unavailable: answer cut short (only the connection's close ended it, and it is not JSON)"
_V1_PATH = re.compile(r"^(?P<base>.*)/v1/models/(?P<model>[^/:]+):predict/?$")
_V2_PATH = re.compile(r"^(?P<base>.*)/v2/models/(?P<model>[^/]+)(/versions/(?P<version>[^/]+))?/infer/?$")
# Digits to "0", "." kept, every other byte to " ": " " + 19 zeros marks 19 digits in a row that are not a
# fraction's (which follow a "."), the only way to write an integer beyond 64 bits.
_DIGIT_MASK = bytes(0x30 if 0x30 <= byte <= 0x39 else byte if byte == 0x2E else 0x20 for byte in range(256))
_LONG_INTEGER = b" " + b"0" * 19
# An answer may be no larger than its batch can need, so a server cannot make the operator decode tens of MiB of
# numbers. Measured: a 1000-class probability vector per sample is ~23 KB in V1 or V2 (json.dumps, full-precision
# floats), probabilities and logits together ~43 KB (float32 as MLServer prints it); the longest float is 24
# characters, 26 with ", ". Each sample gets 64 KiB, or 64 bytes a class for models with more outputs, and each
# answer 64 KiB more for its envelope (V2's names, ids, parameters). Past it the batch is not judged (the gate's
# own limit, not the model's answer): the gate ends inconclusive, never failing a model for a legal answer.
SAMPLE_RESPONSE_BYTES = 64 * 1024
_CLASS_RESPONSE_BYTES = 64
_ENVELOPE_RESPONSE_BYTES = 64 * 1024
TOO_LARGE = "response too large"
# Decoding holds the GIL, and an empty list costs it ~0.5 us: 8 MiB of "[]," stalled the event loop for 1.9 s, thread
# or not. A usable answer needs a few lists or objects a sample (a row, a {"label"} dict), or one a value for a score
# vector written as [[p], ...], and room for extras (per-row explanations, a second output of [n, 80, 2]): more is
# refused unread, like an answer over its size. At 1024 a sample a batch of 128 decodes in well under 0.1 s.
_SAMPLE_CONTAINERS = 1024
_ENVELOPE_CONTAINERS = 1024
# Numbers cost the GIL too (~0.1 us each): 4M one-digit values fit the byte cap of a 128-sample batch and four such
# answers lagged the loop 0.9 s. A sample needs its scores, perhaps logits beside them, and a few extras: 4096 values
# plus 4 a class (counted as "," bytes, never fewer than the values) keeps a batch's decoding to tens of ms.
_SAMPLE_VALUES = 4096
_CLASS_VALUES = 4
_ENVELOPE_VALUES = 4096


class InferenceProtocol(StrEnum):
    V1 = "v1"
    V2 = "v2"


@dataclass(frozen=True)
class InferenceEndpoint:
    """One model behind one URL.

    output_classes: the model's output order, used to read integer indices and score vectors; defaults
        to the dataset's class list. Class names map onto the dataset's classes by name.
    headers: extra request headers (e.g. an Authorization for the serving gateway); never reported.
    """

    base_url: str
    model_name: str
    protocol: InferenceProtocol = InferenceProtocol.V2
    model_version: str | None = None  # V2 only: /versions/<v>/infer
    output_classes: tuple[str, ...] | None = None
    input_name: str = "input-0"
    datatype: str = "FP32"
    output_name: str | None = None  # V2: which output holds the prediction; default: the first
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_url(cls, url: str, model_name: str, protocol: InferenceProtocol | str = InferenceProtocol.V2,
                 **options: Any) -> InferenceEndpoint:
        """Accept a base URL (e.g. KServe's status URL) or a full :predict / /infer URL, which wins."""
        url = url.rstrip("/")
        if match := _V1_PATH.match(url):
            return cls(base_url=match["base"], model_name=match["model"], protocol=InferenceProtocol.V1, **options)
        if match := _V2_PATH.match(url):
            return cls(base_url=match["base"], model_name=match["model"], protocol=InferenceProtocol.V2,
                       model_version=match["version"], **options)
        return cls(base_url=url, model_name=model_name, protocol=InferenceProtocol(protocol), **options)

    @property
    def predict_url(self) -> str:
        base = self.base_url.rstrip("/")
        if self.protocol is InferenceProtocol.V1:
            return f"{base}/v1/models/{self.model_name}:predict"
        version = f"/versions/{self.model_version}" if self.model_version else ""
        return f"{base}/v2/models/{self.model_name}{version}/infer"

    def describe(self) -> dict[str, Any]:
        return {"url": self.predict_url, "protocol": str(self.protocol), "model": self.model_name}


@dataclass
class BatchAnswer:
    """Predictions for one batch: dataset class index per sample, -1 where unusable."""

    predicted: np.ndarray
    failure: str | None = None  # the whole batch is unusable: why (e.g. "HTTP 500", "not JSON")
    unavailable: bool = False  # the model was not reached (down, overloaded, misconfigured): not its answer
    sample_problems: Counter[str] = field(default_factory=Counter)  # per-sample unusable predictions
    detail: str = ""

    @property
    def answered(self) -> int:
        return int((self.predicted >= 0).sum())


class InvalidResponse(ValueError):
    """The server answered, but not with predictions for this batch."""


class InferenceClient:
    def __init__(self, endpoint: InferenceEndpoint, session: aiohttp.ClientSession, classes: Sequence[str], *,
                 concurrency: int = 4, timeout_seconds: float = 30.0, retries: int = 2,
                 max_response_bytes: int = 64 * 1024 * 1024,
                 max_response_bytes_per_sample: int = SAMPLE_RESPONSE_BYTES) -> None:
        self.endpoint = endpoint
        self.session = session
        self.url = endpoint.predict_url
        self.classes = tuple(classes)
        self.output_classes = endpoint.output_classes or self.classes
        dataset_index = {name: index for index, name in enumerate(self.classes)}
        self._label_index = dataset_index
        # The model's output position -> dataset class index (-1: a class the dataset does not know).
        self._output_to_dataset = np.asarray([dataset_index.get(name, -1) for name in self.output_classes],
                                             dtype=np.int64)
        self._limit = asyncio.Semaphore(max(1, concurrency))
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._retries = max(0, retries)
        self._max_bytes = max_response_bytes  # the ceiling, whatever the batch
        self._sample_bytes = max(max_response_bytes_per_sample, _CLASS_RESPONSE_BYTES * len(self.output_classes))
        self._headers = {"Content-Type": "application/json", **endpoint.headers}

    def encode(self, features: np.ndarray) -> bytes:
        """The request body. orjson writes the numpy array directly, each float in its shortest round-trip
        form (the values the dataset holds), without a Python float object per number."""
        values = np.ascontiguousarray(features, dtype=np.float64)
        if self.endpoint.protocol is InferenceProtocol.V1:
            return orjson.dumps({"instances": values}, option=orjson.OPT_SERIALIZE_NUMPY)
        header = {"name": self.endpoint.input_name, "shape": list(values.shape),
                  "datatype": self.endpoint.datatype}
        return orjson.dumps({"inputs": [{**header, "data": values.reshape(-1)}]}, option=orjson.OPT_SERIALIZE_NUMPY)

    @property
    def encoding(self) -> tuple[Any, ...]:
        """Clients with equal encodings send identical bodies for a batch, so it is encoded once."""
        endpoint = self.endpoint
        return endpoint.protocol, endpoint.input_name, endpoint.datatype

    def response_cap(self, count: int) -> int:
        """The most bytes an answer for `count` samples may have: refused beyond, before it is decoded."""
        return min(self._max_bytes, _ENVELOPE_RESPONSE_BYTES + count * self._sample_bytes)

    def container_cap(self, count: int) -> int:
        """The most lists and objects (counting "[" and "{" bytes) an answer for `count` samples may hold."""
        return _ENVELOPE_CONTAINERS + count * (_SAMPLE_CONTAINERS + len(self.output_classes))

    def value_cap(self, count: int) -> int:
        """The most values (counting "," bytes) an answer for `count` samples may hold."""
        return _ENVELOPE_VALUES + count * (_SAMPLE_VALUES + _CLASS_VALUES * len(self.output_classes))

    async def predict(self, features: np.ndarray, body: bytes | None = None) -> BatchAnswer:
        count = int(features.shape[0])
        if body is None:
            body = self.encode(features)
        cap = self.response_cap(count)
        async with self._limit:
            failure, unavailable, payload = await self._post(body, cap, count)
        if failure is not None:
            too_large = failure == TOO_LARGE
            detail = f"over the {cap:,} bytes allowed for {count} samples: not judged" if too_large else ""
            return BatchAnswer(predicted=np.full(count, -1, dtype=np.int64), failure=failure,
                               unavailable=unavailable or too_large, detail=detail)
        # Off the event loop: what is left of decoding and reading an answer can still take a few hundred ms.
        return await asyncio.to_thread(self.read_answer, payload, count)

    def _html_page(self, payload: bytes, count: int) -> bool:
        """A text/html answer is a web page unless its body is JSON: a model server may label its JSON so (Flask's
        `return json.dumps(...)`)."""
        return payload.lstrip()[:1] not in (b"{", b"[") or not self._decodes(payload, count)

    def _decodes(self, payload: bytes, count: int) -> bool:
        """The answer is whole as far as its JSON tells: it decodes, or is over the answer's caps (read_answer refuses
        it for that, unread), or nests deeper than the parser goes (no model answer does, cut or not: garbage)."""
        if (payload.count(b"[") + payload.count(b"{") > self.container_cap(count)
                or payload.count(b",") > self.value_cap(count)):
            return True
        try:
            decode_json(payload)
        except RecursionError:
            return True
        except ValueError:
            return False
        return True

    def read_answer(self, payload: bytes, count: int) -> BatchAnswer:
        containers, allowed = payload.count(b"[") + payload.count(b"{"), self.container_cap(count)
        if containers > allowed:
            return self._too_many(count, f"{containers:,} lists or objects, over the {allowed:,}")
        values, allowed = payload.count(b","), self.value_cap(count)
        if values > allowed:
            return self._too_many(count, f"{values:,} values, over the {allowed:,}")
        try:
            document = decode_json(payload)
        except (ValueError, RecursionError):  # RecursionError: nested too deep for the standard library
            # Its size only: the URL may be any server, whose answer must not be read back into a status.
            return self._failed(count, "not JSON", f"{len(payload)} bytes")
        try:
            if self.endpoint.protocol is InferenceProtocol.V1:
                return self._read_v1(document, count)
            return self._read_v2(document, count)
        except InvalidResponse as exc:
            reason, _, detail = str(exc).partition(": ")
            return self._failed(count, reason, detail)
        except (ArithmeticError, ValueError, TypeError, MemoryError) as exc:  # an answer no check above foresaw
            return self._failed(count, "unreadable response", type(exc).__name__)

    @staticmethod
    def _too_many(count: int, what: str) -> BatchAnswer:
        """Refused unread, as an answer over its size: the gate's limit, not the model's fault."""
        return BatchAnswer(predicted=np.full(count, -1, dtype=np.int64), failure=TOO_LARGE, unavailable=True,
                           detail=f"{what} allowed for {count} samples: not judged")

    @staticmethod
    def _failed(count: int, reason: str, detail: str = "") -> BatchAnswer:
        return BatchAnswer(predicted=np.full(count, -1, dtype=np.int64), failure=reason, detail=detail)

    async def _post(self, body: bytes, cap: int, count: int) -> tuple[str | None, bool, bytes]:
        """POST with limited retries on transient trouble; (failure reason, unavailable?, response body).
        An answer over cap bytes is refused unread, or as soon as its stream passes cap."""
        failure = "unavailable"
        for attempt in range(self._retries + 1):
            if attempt:
                await asyncio.sleep(0.2 * 2 ** (attempt - 1) * (1 + random.random()))
            try:
                async with self.session.post(self.url, data=body, headers=self._headers, timeout=self._timeout,
                                             allow_redirects=False) as response:
                    if response.status in _RETRY_STATUSES:
                        failure = f"unavailable: HTTP {response.status}"
                        await response.release()
                        continue
                    if setup := _setup_problem(response.status):
                        failure = f"unavailable: HTTP {response.status} ({setup})"  # the status only, never the body
                        await response.release()
                        continue
                    if response.status != 200:
                        await response.release()
                        return f"HTTP {response.status}", False, b""
                    if response.content_length is not None and response.content_length > cap:
                        return TOO_LARGE, False, b""
                    payload = await self._read_capped(response, cap)
                    if payload is None:
                        return TOO_LARGE, False, b""
                    if response.content_type == "text/html" and await asyncio.to_thread(
                            self._html_page, payload, count):
                        # A web page (a sign-in gateway's, as its 302 or 401 would be): the model was not reached.
                        failure = f"unavailable: HTTP 200 ({_HTML_PAGE})"
                        continue
                    if not is_framed(response.headers) and not await asyncio.to_thread(self._decodes, payload, count):
                        failure = CUT_ANSWER  # retried like a connection reset
                        continue
                    return None, False, payload
            except TimeoutError:
                failure = "unavailable: timeout"
            except aiohttp.ClientConnectionError as exc:
                failure = f"unavailable: {type(exc).__name__}"
            except aiohttp.ClientError as exc:
                failure = f"unavailable: {type(exc).__name__}"
            except (ValueError, UnicodeError) as exc:  # a URL aiohttp or IDNA cannot use: no retry helps
                return f"unusable URL ({type(exc).__name__})", False, b""
        return failure, True, b""

    @staticmethod
    async def _read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes | None:
        chunks = []
        size = 0
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > cap:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    # --- reading answers -----------------------------------------------------------------------------

    def _read_v1(self, document: Any, count: int) -> BatchAnswer:
        if not isinstance(document, dict) or not isinstance(document.get("predictions"), list):
            raise InvalidResponse('no predictions: response has no "predictions" list')
        predictions = document["predictions"]
        if len(predictions) != count:
            raise InvalidResponse(f"wrong prediction count: got {len(predictions)} for {count} samples")
        return self._interpret(predictions, count)

    def _read_v2(self, document: Any, count: int) -> BatchAnswer:
        outputs = document.get("outputs") if isinstance(document, dict) else None
        if not isinstance(outputs, list) or not outputs or not all(isinstance(o, dict) for o in outputs):
            raise InvalidResponse('no predictions: response has no "outputs" list')
        wanted = self.endpoint.output_name
        output = next((o for o in outputs if o.get("name") == wanted), None) if wanted else outputs[0]
        if output is None:
            raise InvalidResponse(f"no predictions: no output named {wanted!r}")
        shape, data = output.get("shape"), output.get("data")
        if (not isinstance(shape, list) or not shape or not all(type(n) is int and n >= 0 for n in shape)
                or not isinstance(data, list)):
            raise InvalidResponse("bad output: output needs an integer shape list and a data list")
        if shape[0] != count:
            raise InvalidResponse(f"wrong prediction count: got {shape[0]} for {count} samples")
        flat = rectangular_values(data)  # the exporter's rule: ragged data is refused, whatever its total
        if flat is None:
            raise InvalidResponse("bad output: output data is ragged")
        if len(flat) != math.prod(shape):  # Python ints: np.prod wraps at 64 bits
            raise InvalidResponse(f"bad output: {len(flat)} values do not fill shape {shape[:8]}")
        if flat and set(map(type, flat)) == {bool}:
            raise InvalidResponse("bad output: booleans are not classes")
        fp_scores = str(output.get("datatype") or "").upper() in SCORE_DATATYPES  # never class indexes
        if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):  # a one-column row is its one value
            return self._interpret(flat, count, fp_scores=fp_scores)
        if len(shape) == 2:  # rows as V1 writes them: one reading for both protocols
            width = shape[1]
            return self._interpret([flat[i * width:(i + 1) * width] for i in range(count)], count,
                                   fp_scores=fp_scores)
        raise InvalidResponse(f"bad output: shape {shape} is neither one label per sample nor one score vector")

    def _interpret(self, predictions: Any, count: int, *, fp_scores: bool = False) -> BatchAnswer:
        """Map labels, indices or score vectors to dataset class indices, sample by sample if mixed."""
        problems: Counter[str] = Counter()
        try:
            array = predictions if isinstance(predictions, np.ndarray) else np.asarray(predictions)
        except (ValueError, TypeError):
            array = np.asarray([None])  # ragged: handled one by one below
        # numpy reads a boolean among numbers as 0 or 1: such an answer is read sample by sample, where it is no score.
        if (array.shape[:1] == (count,) and array.dtype.kind in "fiu" and array.ndim in (1, 2)
                and not _holds_booleans(predictions)):
            return BatchAnswer(predicted=self._numeric(array, problems, fp_scores=fp_scores), sample_problems=+problems)
        if array.shape == (count,) and array.dtype.kind == "U":
            return BatchAnswer(predicted=self._labels(array.tolist(), problems), sample_problems=+problems)
        predicted = np.full(count, -1, dtype=np.int64)
        for position, item in enumerate(list(predictions)):
            predicted[position] = self._one(item, problems, fp_scores=fp_scores)
        return BatchAnswer(predicted=predicted, sample_problems=+problems)  # unary +: drop zero counts

    def _numeric(self, array: np.ndarray, problems: Counter[str], *, fp_scores: bool = False) -> np.ndarray:
        width = len(self.output_classes)
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]  # a one-column answer ([n, 1]: MLServer's NumpyCodec, a sigmoid) is its one value
        if array.ndim == 2:
            if array.shape[1] != width:
                problems["wrong score vector length"] += array.shape[0]
                return np.full(array.shape[0], -1, dtype=np.int64)
            scores = array.astype(np.float64)
            finite = np.isfinite(scores).all(axis=1)
            positions = np.where(finite, np.argmax(np.where(np.isfinite(scores), scores, -np.inf), axis=1), -1)
            problems["non-finite scores"] += int((~finite).sum())
        else:
            values = array.astype(np.float64)
            # As the exporter reads a value: an integral number is a class index, any other a sigmoid's score (for
            # two classes, 0.0 and 1.0 read either way pick the same class); a V2 FP* output's values are all scores.
            integral = np.isfinite(values) & (values == np.round(values)) & (not fp_scores)
            positions = np.where(integral, values, -1).astype(np.int64)
            scored = np.flatnonzero(~integral)
            positions[scored] = [-1 if (position := single_score_position(score, width)) is None else position
                                 for score in values[scored].tolist()]
            out_of_range = integral & ((positions < 0) | (positions >= width))
            problems["ambiguous score"] += int((positions[scored] < 0).sum())
            problems["class index out of range"] += int(out_of_range.sum())
            positions[out_of_range] = -1
        predicted = np.where(positions >= 0, self._output_to_dataset[np.clip(positions, 0, width - 1)], -1)
        problems["label not in dataset classes"] += int(((positions >= 0) & (predicted < 0)).sum())
        return predicted.astype(np.int64)

    def _labels(self, labels: list[str], problems: Counter[str]) -> np.ndarray:
        predicted = np.fromiter((self._label_index.get(label, -1) for label in labels), dtype=np.int64,
                                count=len(labels))
        problems["unknown label"] += int((predicted < 0).sum())
        return predicted

    def _one(self, item: Any, problems: Counter[str], *, fp_scores: bool = False) -> int:
        if isinstance(item, list) and len(item) == 1:
            item = item[0]  # a one-column row is its one value, as in _numeric
        if isinstance(item, list) and not is_score_row(item):  # "0.7" or true among scores: as the exporter reads it
            problems["unreadable prediction"] += 1
            return -1
        if isinstance(item, dict) and isinstance(item.get("label"), str):
            item = item["label"]
        if isinstance(item, bytes):
            item = item.decode("utf-8", "replace")
        if isinstance(item, str):
            return int(self._labels([item], problems)[0])
        if isinstance(item, bool) or item is None or isinstance(item, dict):
            problems["unreadable prediction"] += 1
            return -1
        try:
            array = np.asarray(item, dtype=np.float64)
        except (ValueError, TypeError, OverflowError):  # OverflowError: an integer past any float
            problems["unreadable prediction"] += 1
            return -1
        if array.ndim > 1:
            problems["unreadable prediction"] += 1
            return -1
        return int(self._numeric(array.reshape(1, -1) if array.ndim == 1 else array.reshape(1), problems,
                                 fp_scores=fp_scores)[0])


def _holds_booleans(predictions: Any) -> bool:
    """Whether a list of predictions (or of rows) holds a JSON true or false, which numpy would read as 1 or 0."""
    if isinstance(predictions, np.ndarray):
        return predictions.dtype.kind == "b"
    rows = [item for item in predictions if isinstance(item, list)]
    return bool in set(map(type, predictions)) or bool in set(map(type, itertools.chain.from_iterable(rows)))


def _setup_problem(status: int) -> str | None:
    """Why a status means the model was not reached (see _SETUP_STATUSES); None when it is the model's answer."""
    if 300 <= status < 400:
        return "redirected, not followed: check the URL"
    return _SETUP_STATUSES.get(status)


def decode_json(payload: bytes) -> Any:
    """json.loads(payload), to the same result, mostly by orjson (several times faster on arrays of numbers).

    orjson reads a subset of what the standard library reads (no NaN/Infinity, no lone surrogates, no BOM,
    no numbers that overflow a double, no nesting beyond 1024) to the same values, except integers beyond
    64 bits, which it makes floats: a payload with an integer part of 19 digits or more, or one orjson
    refuses, is left to the standard library, whose answer (or error) stands.
    """
    if _LONG_INTEGER not in b" " + payload.translate(_DIGIT_MASK):
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:
            pass
    return json.loads(payload)
