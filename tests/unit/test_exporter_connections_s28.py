"""Review s28exporter: past the connection cap a scrape that has just connected (its GET still on the way) was closed
for the next newcomer when every older connection was in a request; a request event's body trickling a byte a
second was drained with no deadline; and SIGTERM waited aiohttp's 60 s for it, past Kubernetes' 30 s grace.
An exporter served in this loop on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from controller.devstack.processes import LOOPBACK
from controller.exporter.connections import REQUEST_GRACE_SECONDS, ConnectionCap, serve
from controller.exporter.events import DecodeOptions
from controller.exporter.server import PredictionExporter

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
# A binary-mode request event: its payload is drained unread. 100 MiB declared, a byte sent: it never ends.
REQUEST_EVENT = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\nCe-Specversion: 1.0\r\nCe-Id: r1\r\n"
                 b"Ce-Type: org.kubeflow.serving.inference.request\r\nCe-Source: http://localhost:9081/\r\n"
                 b"Ce-Namespace: team-a\r\nCe-Inferenceservicename: clf\r\n\r\nx")


@contextlib.asynccontextmanager
async def exporter(max_connections: int, body_read_seconds: float,
                   stop: asyncio.Event | None = None) -> AsyncIterator[tuple[ConnectionCap, int, asyncio.Task[None]]]:
    """The cap, the port and the serving task of an exporter served in this loop."""
    stop = stop or asyncio.Event()
    ready = asyncio.get_running_loop().create_future()
    app = PredictionExporter(DecodeOptions(class_names=("safe", "nsfw")), body_read_seconds=body_read_seconds).app()
    server = asyncio.create_task(serve(app, LOOPBACK, 0, max_connections=max_connections, header_seconds=30,
                                       stop=stop, started=lambda cap, listening: ready.set_result((cap, listening))))
    cap, listening = await ready
    try:
        yield cap, listening.sockets[0].getsockname()[1], server
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)


async def closed(connection: Connection, seconds: float = 0.2) -> bool:
    """Whether the exporter closed it (at its end with no answer); False when it is still open."""
    try:
        return await asyncio.wait_for(connection[0].read(100), seconds) == b""
    except TimeoutError:
        return False


def test_a_scrape_that_has_just_connected_is_not_closed_for_the_next_newcomer() -> None:
    # The review's t06_evict_newcomer: every older connection is in a request (stalled), a scrape connects and, one
    # round trip later, sends its GET; meanwhile one more sender connects. It closed the scrape, the only connection
    # without a request: now the one whose request began longest ago makes room.
    async def scenario() -> None:
        async with exporter(max_connections=4, body_read_seconds=30) as (cap, port, _):
            opened: list[Connection] = []
            try:
                for _ in range(4):
                    reader, writer = await asyncio.open_connection(LOOPBACK, port)
                    writer.write(REQUEST_EVENT)
                    await writer.drain()
                    opened.append((reader, writer))
                    await asyncio.sleep(0.05)
                await asyncio.sleep(REQUEST_GRACE_SECONDS + 0.2)  # stalled past the grace an honest request gets
                scrape = await asyncio.open_connection(LOOPBACK, port)  # Prometheus
                opened.append(scrape)
                await asyncio.sleep(0.005)
                opened.append(await asyncio.open_connection(LOOPBACK, port))  # one more sender
                await asyncio.sleep(0.02)
                scrape[1].write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                await scrape[1].drain()
                status_line = await asyncio.wait_for(scrape[0].readline(), 5)
                assert status_line.startswith(b"HTTP/1.1 200"), status_line
                assert cap.closed_for_room == 2
                # The stalled request that began first made room, then the next; the newer ones are still open.
                assert [await closed(c) for c in opened[:4]] == [True, True, False, False]
            finally:
                for _, writer in opened:
                    writer.close()

    asyncio.run(scenario())


class _Transport:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_a_connection_without_a_request_makes_room_once_it_is_no_longer_fresh() -> None:
    now = [0.0]
    cap = ConnectionCap(2, fresh_seconds=1.0, clock=lambda: now[0])
    stalled, idle, newcomer = _Transport(), _Transport(), _Transport()

    async def in_request(transport: _Transport) -> None:
        request = type("Request", (), {"transport": transport})()
        await cap.middleware(request, lambda _: asyncio.sleep(3600))  # type: ignore[arg-type]

    async def scenario() -> None:
        cap.opened(stalled)  # type: ignore[arg-type]
        task = asyncio.create_task(in_request(stalled))
        await asyncio.sleep(0)
        now[0] = 5.0
        cap.opened(idle)  # type: ignore[arg-type]
        now[0] = 5.9  # `idle` is still fresh: the stalled request makes room
        cap.opened(newcomer)  # type: ignore[arg-type]
        assert (stalled.closed, idle.closed) == (True, False)
        task.cancel()
        now[0] = 6.0  # now it is not: it makes room before any in a request, and before the newer one
        cap.opened(_Transport())  # type: ignore[arg-type]
        assert (idle.closed, newcomer.closed) == (True, False)

    asyncio.run(scenario())


def test_a_request_event_s_trickling_body_is_answered_408_at_the_body_deadline() -> None:
    async def scenario() -> None:
        async with exporter(max_connections=8, body_read_seconds=1) as (_, port, _):
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            try:
                started = time.monotonic()
                writer.write(REQUEST_EVENT)
                await writer.drain()

                async def trickle() -> None:
                    while True:
                        await asyncio.sleep(0.2)
                        writer.write(b"x")
                        await writer.drain()

                trickling = asyncio.create_task(trickle())
                try:
                    status_line = await asyncio.wait_for(reader.readline(), 8)
                finally:
                    trickling.cancel()
                assert status_line.startswith(b"HTTP/1.1 408"), status_line
                assert time.monotonic() - started < 5
            finally:
                writer.close()

    asyncio.run(scenario())


def test_stopping_does_not_wait_past_kubernetes_grace_for_a_stalled_request() -> None:
    # A response event whose body never ends, allowed 60 s to arrive: stopping cuts it after a few seconds, not
    # after aiohttp's default 60 s (the kubelet SIGKILLs at 30 s).
    async def scenario() -> None:
        stop = asyncio.Event()
        async with exporter(max_connections=8, body_read_seconds=60, stop=stop) as (_, port, server):
            _, writer = await asyncio.open_connection(LOOPBACK, port)
            try:
                writer.write(REQUEST_EVENT.replace(b"inference.request", b"inference.response"))
                await writer.drain()
                await asyncio.sleep(0.3)
                started = time.monotonic()
                stop.set()
                await asyncio.wait({server}, timeout=15)
                assert server.done(), "still waiting for the stalled request after 15 s"
                assert time.monotonic() - started < 10
            finally:
                writer.close()

    asyncio.run(scenario())


def test_connecting_and_closing_fast_does_not_get_an_honest_request_under_way_closed() -> None:
    """Connections kept fresh (reconnecting every 0.2 s, sending nothing) are closed before an honest request under
    way that is younger than the request grace; an idle one goes longest-idle first (review s28r6)."""
    now = [0.0]
    cap = ConnectionCap(3, fresh_seconds=0.3, request_grace_seconds=2.0, clock=lambda: now[0])
    honest, fresh, newcomer = _Transport(), _Transport(), _Transport()

    async def in_request(transport: _Transport) -> None:
        request = type("Request", (), {"transport": transport})()
        await cap.middleware(request, lambda _: asyncio.sleep(3600))  # type: ignore[arg-type]

    async def scenario() -> None:
        cap.opened(honest)  # type: ignore[arg-type]
        task = asyncio.create_task(in_request(honest))
        await asyncio.sleep(0)
        now[0] = 1.0  # the honest request has run 1 s: past FRESH, within the grace
        cap.opened(fresh)  # type: ignore[arg-type]
        now[0] = 1.1
        other = _Transport()
        cap.opened(other)  # type: ignore[arg-type]
        cap.opened(newcomer)  # type: ignore[arg-type]
        assert not honest.closed and fresh.closed  # the oldest of the fresh ones without a request
        now[0] = 2.5  # past the grace it reads as a stall, but a connection idle past FRESH still goes first
        cap.opened(_Transport())  # type: ignore[arg-type]
        assert not honest.closed and other.closed
        task.cancel()

    asyncio.run(scenario())


def test_the_idle_connection_that_makes_room_is_the_one_idle_longest() -> None:
    """Not the one whose last request began first: A answered at 9.5 after a long request, B never sent one (s28r6)."""
    now = [0.0]
    cap = ConnectionCap(2, fresh_seconds=0.3, clock=lambda: now[0])
    a, b = _Transport(), _Transport()

    async def scenario() -> None:
        cap.opened(a)  # type: ignore[arg-type]
        request = type("Request", (), {"transport": a})()

        release = asyncio.Event()

        async def answered_at_9_5(_: object) -> None:
            await release.wait()
            now[0] = 9.5

        now[0] = 0.5
        middleware = asyncio.create_task(cap.middleware(request, answered_at_9_5))  # type: ignore[arg-type]
        await asyncio.sleep(0)  # A's request has begun (at 0.5) before B connects
        now[0] = 1.0
        cap.opened(b)  # type: ignore[arg-type]
        release.set()
        await middleware
        now[0] = 10.0
        cap.opened(_Transport())  # type: ignore[arg-type]
        assert (a.closed, b.closed) == (False, True)

    asyncio.run(scenario())
