"""Senders that never end their headers cannot take the exporter past its memory limit: headers are bounded in size
and count, connections in number (the one longest without a request makes room), and a request's headers in time.
Against a real `modelrollout exporter run` process (its RSS) and real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from controller.devstack.dataplane import start_exporter
from controller.devstack.processes import LOOPBACK
from controller.exporter.connections import HEADER_SECONDS, MAX_CONNECTIONS, ConnectionCap, serve
from controller.exporter.events import DecodeOptions
from controller.exporter.server import PredictionExporter

MiB = 1024 * 1024
# What the exporter may grow by while senders hold connections: each of MAX_CONNECTIONS holds at most ~128 KiB of
# header text (~256 KiB as Python objects), or one 256 KiB socket read an aiohttp parse error keeps until its 400.
GROWTH_BOUND = MAX_CONNECTIONS * 384 * 1024


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """The exporter's pid and port."""
    process, url = start_exporter(tmp_path / "exporter.log", class_names="safe,suggestive,nsfw")
    try:
        yield process.pid, int(url.rsplit(":", 1)[1])
    finally:
        process.stop()


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))


def post_event(port: int, event_id: str) -> tuple[int, str]:
    headers = {"Ce-Id": event_id, "Ce-Type": "org.kubeflow.serving.inference.response", "Ce-Specversion": "1.0",
               "Ce-Source": "http://localhost:9081/", "Ce-Namespace": "team-s", "Ce-Inferenceservicename": "s",
               "Content-Type": "application/json"}
    request = urllib.request.Request(f"http://{LOOPBACK}:{port}/?model_version=1", method="POST", headers=headers,
                                     data=json.dumps({"predictions": [[0, 0, 1]]}).encode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            return response.status, json.loads(response.read())["outcome"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def slow_senders(port: int, count: int) -> list[socket.socket]:
    """Connections that have sent a request line and nothing more."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection((LOOPBACK, port), timeout=10)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
        socks.append(sock)
    return socks


def send_headers(socks: list[socket.socket], lines: int, value_bytes: int) -> None:
    """Header lines to each, never the blank line that ends them; one the exporter closed is skipped."""
    live = list(socks)
    for n in range(lines):
        for sock in list(live):
            try:
                sock.sendall(b"X-Pad-%03d: %s\r\n" % (n, b"a" * value_bytes))
            except OSError:  # answered 400 (or closed) and reset
                live.remove(sock)


def closed_by_server(socks: list[socket.socket]) -> int:
    """How many the exporter has closed: readable, and at their end (after any 400 it answered)."""
    closed = 0
    for sock in socks:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            continue
        try:
            sock.setblocking(False)
            while chunk := sock.recv(65536):
                del chunk
            closed += 1  # b"": the end
        except BlockingIOError:
            pass  # an answer, not yet the end
        except OSError:
            closed += 1  # reset
    return closed


def test_header_only_senders_do_not_grow_memory_past_the_bound(exporter: tuple[int, int]) -> None:
    # The review's slowloris: each ~1 MB of header lines (120 x 8000 B), 1.9 MiB of the exporter's memory apiece
    # at aiohttp's defaults (150 took it from 37 to 320 MiB; its limit is 256Mi).
    pid, port = exporter
    before = rss(pid)
    socks = slow_senders(port, 150)
    try:
        send_headers(socks, lines=120, value_bytes=8000)
        time.sleep(1)
        grown = rss(pid) - before
        assert grown < GROWTH_BOUND, f"RSS grew {grown / MiB:.0f} MiB"
        assert post_event(port, "normal-1") == (202, "counted")  # an ordinary sender is served meanwhile
    finally:
        for sock in socks:
            sock.close()


def test_connections_are_capped_and_a_request_s_headers_have_a_deadline(exporter: tuple[int, int]) -> None:
    # Headers just within every limit (31 of 4000 B), from more connections than the cap.
    pid, port = exporter
    before = rss(pid)
    started = time.monotonic()
    extra = 40
    socks = slow_senders(port, MAX_CONNECTIONS + extra)
    try:
        send_headers(socks, lines=31, value_bytes=4000)
        grown = rss(pid) - before
        assert post_event(port, "normal-2") == (202, "counted")
        assert grown < GROWTH_BOUND, f"RSS grew {grown / MiB:.0f} MiB"
        time.sleep(0.5)
        # The cap: the oldest made room for the newer (and for the ordinary sender), so at least `extra` are closed.
        assert closed_by_server(socks) >= extra
        # The deadline: none has sent a whole request's headers, so each is closed HEADER_SECONDS after it opened.
        time.sleep(max(0.0, started + HEADER_SECONDS + 3 - time.monotonic()))
        assert closed_by_server(socks) == len(socks)
        assert post_event(port, "normal-3") == (202, "counted")
    finally:
        for sock in socks:
            sock.close()


@contextlib.asynccontextmanager
async def capped_at_three() -> AsyncIterator[tuple[ConnectionCap, int]]:
    """An exporter served in this loop with at most 3 connections, and its port."""
    stop, ready = asyncio.Event(), asyncio.get_running_loop().create_future()
    app = PredictionExporter(DecodeOptions(class_names=("safe", "nsfw")), body_read_seconds=30).app()
    server = asyncio.create_task(serve(app, LOOPBACK, 0, max_connections=3, header_seconds=30, stop=stop,
                                       started=lambda cap, listening: ready.set_result((cap, listening))))
    cap, listening = await ready
    try:
        yield cap, listening.sockets[0].getsockname()[1]
    finally:
        stop.set()
        await server


def test_past_the_cap_the_connection_longest_without_a_request_is_closed_before_any_in_a_request() -> None:
    async def scenario() -> None:
        async with capped_at_three() as (cap, port):
            opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

            async def connect(first_bytes: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
                reader, writer = await asyncio.open_connection(LOOPBACK, port)
                writer.write(first_bytes)
                await writer.drain()
                await asyncio.sleep(0.2)
                opened.append((reader, writer))
                return reader, writer

            try:
                # In a request: its headers whole, half its body sent (a large body: it is read in the handler).
                in_request = await connect(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n"
                                           b"Ce-Specversion: 1.0\r\n\r\n" + b"{" * 1000)
                slow = await connect(b"POST / HTTP/1.1\r\nX-A: 1\r\n")  # headers unfinished
                idle = await connect(b"")  # opened, nothing sent yet
                assert len(cap) == 3 and cap.closed_for_room == 0
                await connect(b"POST / HTTP/1.1\r\n")  # one past the cap: `slow` has gone longest without a request
                assert await asyncio.wait_for(slow[0].read(), 5) == b""  # closed, no answer
                assert len(cap) == 3 and cap.closed_for_room == 1
                await connect(b"")  # then `idle`
                assert await asyncio.wait_for(idle[0].read(), 5) == b""
                assert cap.closed_for_room == 2
                # The request still goes on, and is answered.
                in_request[1].write(b"0" * 199000)
                await in_request[1].drain()
                status_line = await asyncio.wait_for(in_request[0].readline(), 10)
                assert status_line.startswith(b"HTTP/1.1 400"), status_line  # not a CloudEvent: answered, not cut
            finally:
                for _, writer in opened:
                    writer.close()

    asyncio.run(scenario())


def test_a_new_connection_gets_in_when_every_other_is_stalled_in_a_request() -> None:
    """Reviews s26r3 and s26final: a sender that keeps its connections in a request (whole headers, a small body
    never finished) had every newcomer closed, kubelet's probes and Prometheus' scrapes included; a bound per source
    address instead would not hold behind a mesh sidecar or SNAT, where every sender has one. All from one address
    here: the connection whose request began longest ago makes room."""
    async def scenario() -> None:
        async with capped_at_three() as (cap, port):
            held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
            try:
                for _ in range(4):  # one past the bound
                    reader, writer = await asyncio.open_connection(LOOPBACK, port)
                    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nCe-Specversion: 1.0\r\n\r\n{")
                    await writer.drain()
                    await asyncio.sleep(0.2)
                    held.append((reader, writer))
                assert len(cap) == 3 and cap.closed_for_room == 1
                assert await asyncio.wait_for(held[0][0].read(), 5) == b""  # the stalled request that began first
                # The probe (or a scrape, or another logger) is answered all the same.
                reader, writer = await asyncio.open_connection(LOOPBACK, port)
                held.append((reader, writer))
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                await writer.drain()
                status_line = await asyncio.wait_for(reader.readline(), 5)
                assert status_line.startswith(b"HTTP/1.1 200"), status_line
                assert cap.closed_for_room == 2 and await asyncio.wait_for(held[1][0].read(), 5) == b""
            finally:
                for _, writer in held:
                    writer.close()

    asyncio.run(scenario())


def test_a_header_past_the_limits_is_refused_before_it_is_kept(exporter: tuple[int, int]) -> None:
    _, port = exporter
    for head in (b"X-Big: " + b"a" * 5000 + b"\r\n", b"".join(b"X-%d: 1\r\n" % n for n in range(40))):
        with contextlib.closing(socket.create_connection((LOOPBACK, port), timeout=10)) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n" + head)
            assert sock.recv(100).startswith(b"HTTP/1.0 400"), head[:20]
