"""Reading a dataset's HTTP body so that a download cut short is retried, never hashed as a changed dataset.

Shared by the https source and the MLflow artifact proxy (sources.py, mlflow_access.py). Two cuts the framing does
not show: a compressed stream broken off mid-way (`BodyDecoder.finish` refuses it), and a body that only the
connection's close ended (`BodyRead.unframed`): one that is not the pinned data is read once more, and only the
same bytes twice are taken as what the server holds (`needs_second_read`, `settled`).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from controller.gate.errors import ErrorKind, SourceError

# What a body may be encoded with: decoded here (neither aiohttp's nor urllib3's decoder checks that a stream ended).
ACCEPTED_ENCODINGS = "gzip, deflate"
DECODED_PIECE_BYTES = 1024 * 1024  # the most a decoder yields at once: a small compressed chunk may expand a lot


@dataclass(frozen=True)
class BodyRead:
    sha256: str
    size: int
    # No Content-Length and no chunked framing, nor a compressed stream's own end: only the server closing the
    # connection ended the body, so a connection cut mid-way reads as a whole, shorter body.
    unframed: bool


def content_encoding(headers: Mapping[str, str]) -> str:
    """The response's Content-Encoding as one name ("identity" for none). A list of codings is allowed (RFC 9110);
    identity changes nothing, and more than one is refused by BodyDecoder."""
    codings = [c for c in headers.get("Content-Encoding", "").lower().replace(" ", "").split(",")
               if c not in ("", "identity")]
    return ", ".join(codings) or "identity"


def is_framed(headers: Mapping[str, str]) -> bool:
    """A Content-Length or chunked framing says where the body ends (the client checks it); otherwise only the
    close does. A compressed stream's end is no proof either: gzip members may follow one another, and a cut at a
    member's end reads as a whole body."""
    return "Content-Length" in headers or "chunked" in headers.get("Transfer-Encoding", "").lower()


def needs_second_read(first: BodyRead, expected_sha256: str | None, crowded: bool) -> bool:
    """Not the pinned data, and nothing but the close said the body was whole: a cut connection, or the data
    changed; a second read decides. Not when the sink kept nothing (crowded: retried anyway)."""
    return first.unframed and expected_sha256 not in (None, first.sha256) and not crowded


def settled(first: BodyRead, second: BodyRead, expected_sha256: str | None, what: str) -> tuple[str, int]:
    """(sha256, size) of the second read, unless two unframed reads disagree and neither is the pinned data: a
    connection cut short, retried (SourceError UNAVAILABLE) rather than judged a changed dataset."""
    if not second.unframed or second.sha256 == expected_sha256 or \
            (second.sha256, second.size) == (first.sha256, first.size):
        return second.sha256, second.size
    raise SourceError(ErrorKind.UNAVAILABLE, f"{what}: two reads of a body whose end only the server's closing the "
                      f"connection marked gave different data ({first.size} and {second.size} bytes), neither the "
                      "pinned one: a connection cut short; retrying")


class BodyDecoder:
    """Decodes a Content-Encoding (gzip, deflate or none) and checks that a compressed stream reached its end:
    one cut mid-way is a download broken off (retried), never a shorter dataset (an integrity failure).
    `what` starts its messages ("GET <url>")."""

    def __init__(self, encoding: str, what: str) -> None:
        if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
            raise SourceError(ErrorKind.ERROR, f"{what}: Content-Encoding {encoding[:40]!r} is not one the gate "
                                               f"reads ({ACCEPTED_ENCODINGS}, or none)")
        self._encoding, self._what = encoding, what
        self._zlib: Any = None  # made on the first bytes: deflate's wrapper is known only then

    def _decompressor(self, first: bytes) -> Any:
        if self._encoding == "deflate":  # zlib-wrapped as HTTP says, or raw as some servers send it
            return zlib.decompressobj(zlib.MAX_WBITS if first[:1] and first[0] & 0x0F == 8 else -zlib.MAX_WBITS)
        return zlib.decompressobj(16 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded bytes of data, a bounded piece at a time (a small compressed chunk may expand a lot)."""
        if self._encoding == "identity":
            yield data
            return
        try:
            while data:
                if self._zlib is None or (self._zlib.eof and self._encoding != "deflate"):
                    if self._zlib is not None:
                        data = data.lstrip(b"\0")  # NUL padding after a member, which gzip(1) skips too
                        if not data:
                            return
                    self._zlib = self._decompressor(data)  # gzip: members may follow one another
                elif self._zlib.eof:
                    raise SourceError(ErrorKind.UNAVAILABLE, f"{self._what}: bytes after the end of the "
                                                             "deflate stream; retrying")
                out = self._zlib.decompress(data, DECODED_PIECE_BYTES)
                if out:
                    yield out
                # A full piece may leave output inside zlib with all its input taken (raw deflate has no trailer
                # to hold back): drained now, or the body's last chunk would never reach the stream's end.
                while len(out) == DECODED_PIECE_BYTES and not self._zlib.eof and not self._zlib.unconsumed_tail:
                    if out := self._zlib.decompress(b"", DECODED_PIECE_BYTES):
                        yield out
                data = self._zlib.unconsumed_tail or (self._zlib.unused_data if self._zlib.eof else b"")
        except zlib.error as exc:
            raise SourceError(ErrorKind.UNAVAILABLE, f"{self._what}: the {self._encoding} body is corrupt "
                                                     f"({exc}); retrying") from None

    def finish(self) -> None:
        """Raises unless a compressed body ended where its stream says it ends."""
        if self._encoding != "identity" and (self._zlib is None or not self._zlib.eof):
            raise SourceError(ErrorKind.UNAVAILABLE, f"{self._what}: the {self._encoding} body ended before its "
                                                     "compressed stream did: the download broke off; retrying")
