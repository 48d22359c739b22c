"""The exporter's listening side: connections are bounded in number, in header size and in the time they take to
send a request's headers, so that the memory a sender holds before its request reaches the app has a ceiling too,
and a new connection (kubelet's probes, Prometheus, a logger) always gets in.

aiohttp's defaults (128 headers of up to 8190 bytes, unbounded connections, no deadline on the headers) let one
sender hold ~1.9 MiB per connection that never ends its headers: 150 of them took the exporter from 37 to 320 MiB.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)
# A KServe or Seldon logger event has ~15 headers (a Knative broker adds a few), each far below these.
HEADER_LIMITS = {"max_headers": 32, "max_field_size": 4096, "max_line_size": 8190}
# A connection that has not sent a whole request's headers this long after it opened or was last answered is closed:
# aiohttp's keep-alive timer, which it arms at both, closes a connection still waiting for a request when it fires.
# As long as a body has (BODY_READ_SECONDS); an idle keep-alive connection is closed after it too.
HEADER_SECONDS = 10.0
# Open connections. Past it, one is closed for the newcomer (never the newcomer): see ConnectionCap.victim. Not per
# source address: behind a mesh sidecar, SNAT or a broker every sender has one, and a probe or scrape must still get in.
MAX_CONNECTIONS = 256
# A connection without a request this new has not had its first round trip yet (a scrape or probe that has connected,
# its GET still on the way): far above a round trip in a cluster, with room for an event loop a flood keeps busy.
FRESH_SECONDS = 0.3
# A request this new is taken for an honest one under way, not a stall: a logger's takes milliseconds, but one may
# wait up to 5 s for a read slot or its turn to be decoded under load. Below BODY_READ_SECONDS (10 s), which ends a
# stall anyway; a stall younger than this can still close a scrape that has only just connected.
REQUEST_GRACE_SECONDS = 2.0
WARNING_SECONDS = 600.0
# How long SIGTERM waits for requests in progress before cutting them: a logger's event takes milliseconds, a /metrics
# render at the bounds up to ~2 s, and a body is read for at most BODY_READ_SECONDS (10 s) anyway. Well under the 30 s
# Kubernetes waits before SIGKILL (terminationGracePeriodSeconds' default), with room for the interpreter's exit.
SHUTDOWN_SECONDS = 5.0
# A drain ends early at a scrape rendered this long after SIGTERM: by then the Service's endpoints no longer list the
# pod (its readiness failed at once), so no event is counted after that scrape read the counts.
DRAIN_SETTLE_SECONDS = 2.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Drain:
    """SIGTERM's drain (`--drain`, 0: none): readiness fails at once, so the Service stops sending events, and
    serving goes on until a scrape has read the last counts, the drain's time is up, or a second signal comes.
    Without it the predictions counted since the last scrape die with the pod: up to a scrape interval of each arm's.

    A scrape reads the last counts when it was rendered at least the settle time after the signal, held no series'
    counts back (a series is first shown at 0), and no event was being counted at its render or has been since.
    From then on events are refused (503): one counted after it would die with the pod, answered 202. Meanwhile each
    event's connection is closed after its answer, so a sender keeping its connection open reconnects through the
    Service, to a ready pod."""

    def __init__(self, seconds: float = 0.0, *, settle_seconds: float = DRAIN_SETTLE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._settle_seconds = settle_seconds
        self._clock = clock
        self._since: float | None = None
        self._done = asyncio.Event()
        self._why = ""
        self._events_in_flight = 0
        self._last_event_at: float | None = None

    @property
    def draining(self) -> bool:
        return self._since is not None

    @property
    def drained(self) -> bool:
        """The last counts have been read: no more events are counted."""
        return self._done.is_set()

    def now(self) -> float:
        return self._clock()

    def event_started(self) -> None:
        self._events_in_flight += 1

    def event_ended(self) -> None:
        self._events_in_flight -= 1
        self._last_event_at = self._clock()

    def quiet(self) -> bool:
        """No event is being counted now (asked at a render)."""
        return self._events_in_flight == 0

    def scrape_answered(self, rendered_at: float, complete: bool) -> None:
        """A /metrics answer rendered at `rendered_at` (now()) has been written whole; `complete`: it held no
        series' counts back and no event was being counted at its render."""
        if self._since is None or not complete or self._events_in_flight \
                or rendered_at - self._since < self._settle_seconds \
                or (self._last_event_at is not None and self._last_event_at > rendered_at):
            return
        self._end("a scrape read the last counts")

    def cut(self) -> None:
        """A second signal: the drain ends at once."""
        self._end("a second signal")

    def _end(self, why: str) -> None:
        if not self._done.is_set():
            self._why = why
            self._done.set()

    async def wait(self) -> None:
        """Called on the first signal; returns when serving may stop."""
        if self.seconds <= 0:
            return
        self._since = self._clock()
        log.info("draining for at most %g s: /readyz fails, events and scrapes are still served", self.seconds)
        try:
            async with asyncio.timeout(self.seconds):
                await self._done.wait()
        except TimeoutError:
            self._end("the drain's time is up")
        log.info("drained: %s", self._why)


class ConnectionCap:
    """Open connections, least recently active first (a request's start counts), each with how many requests it has
    in progress and since when it has been as it is (opened, last answered, or its request begun)."""

    def __init__(self, limit: int, *, fresh_seconds: float = FRESH_SECONDS,
                 request_grace_seconds: float = REQUEST_GRACE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._fresh_seconds = fresh_seconds
        self._request_grace_seconds = request_grace_seconds
        self._clock = clock
        self._open: OrderedDict[asyncio.BaseTransport, _State] = OrderedDict()
        self.closed_for_room = 0
        self._warned_at: float | None = None

    def __len__(self) -> int:
        return len(self._open)

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Tracked(inner(), self)

    def opened(self, transport: asyncio.BaseTransport) -> None:
        now = self._clock()
        self._open[transport] = _State(0, now)
        if len(self._open) <= self.limit:
            return
        victim = self.victim(now, transport)
        self.closed_for_room += 1
        self.forget(victim)  # counted out now: its close completes later
        victim.close()
        if self._warned_at is None or now - self._warned_at >= WARNING_SECONDS:
            self._warned_at = now
            log.warning("%d connections open: closed the one longest without a request, or in its request longest "
                        "(slow or idle senders; not logged again for %d minutes)", self.limit, WARNING_SECONDS // 60)

    def victim(self, now: float, newcomer: asyncio.BaseTransport) -> asyncio.BaseTransport:
        """The connection to close for the newcomer, in this order: the one idle longest, of those idle FRESH_SECONDS
        (a slow header sender, an idle keep-alive one); the one whose request began longest ago, of those in a request
        REQUEST_GRACE_SECONDS (a stalled body); then, every other being fresh, one without a request before one in a
        request, the oldest first (connecting and closing fast must not get an honest request under way closed).
        One pass: it runs at every accept past the cap. Ties go to the least recently active."""
        picks: list[tuple[float, asyncio.BaseTransport] | None] = [None, None, None, None]
        for transport, state in self._open.items():
            if transport is newcomer:
                continue
            settled = now - state.since >= (self._request_grace_seconds if state.requests else self._fresh_seconds)
            rank = (0 if settled else 2) + (1 if state.requests else 0)
            best = picks[rank]
            if best is None or state.since < best[0]:
                picks[rank] = (state.since, transport)
        return next(pick[1] for pick in picks if pick is not None)

    def forget(self, transport: asyncio.BaseTransport) -> None:
        self._open.pop(transport, None)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        state = self._open.get(transport) if transport is not None else None
        if state is None:
            return await handler(request)
        state.requests += 1
        state.since = self._clock()
        self._open.move_to_end(transport)
        try:
            return await handler(request)
        finally:
            state.requests -= 1
            if not state.requests:
                state.since = self._clock()  # idle from its answer on


@dataclasses.dataclass
class _State:
    requests: int
    since: float


class _Tracked(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted in the cap while it is open."""

    def __init__(self, inner: asyncio.Protocol, cap: ConnectionCap) -> None:
        self._inner = inner
        self._cap = cap
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._inner.connection_made(transport)
        self._cap.opened(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._cap.forget(self._transport)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


async def serve(app: web.Application, host: str, port: int, *, max_connections: int = MAX_CONNECTIONS,
                header_seconds: float = HEADER_SECONDS, shutdown_seconds: float = SHUTDOWN_SECONDS,
                stop: asyncio.Event | None = None, drain: Drain | None = None,
                started: Callable[[ConnectionCap, asyncio.Server], None] | None = None) -> None:
    """Serves the app until `stop` is set (None: until SIGTERM or SIGINT), then for the app's `drain` (the one its
    /readyz and /metrics report to). `started` gets the cap and the listening server (its port, when 0 was asked
    for)."""
    cap = ConnectionCap(max_connections)
    app.middlewares.append(cap.middleware)
    # auto_decompress off: aiohttp inflated a Content-Encoding on the event loop, a request event's payload too while it
    # was drained unread (four senders of a 4 GiB gzip bomb made scrapes time out), and answered a body that does not
    # decode 500, with tracebacks and uncounted. The exporter inflates a gzip or zlib body itself, whether or not a
    # Content-Encoding says so (events.inflated: bounded, in a worker thread; one that does not inflate is NotJSON).
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=header_seconds,
                           shutdown_timeout=shutdown_seconds, auto_decompress=False, **HEADER_LIMITS)
    await runner.setup()
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        signalled = stop

        def on_signal() -> None:
            if signalled.is_set() and drain is not None:
                drain.cut()  # counted here, not where the drain waits: two signals at once are two
            signalled.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
    try:
        assert runner.server is not None  # set up
        server = await loop.create_server(cap.protocol_factory(runner.server), host, port)
        if started is not None:
            started(cap, server)
        try:
            await stop.wait()
            if drain is not None:
                await drain.wait()
        finally:
            server.close()
    finally:
        await runner.cleanup()


def run_server(app: web.Application, host: str, port: int, *, max_connections: int = MAX_CONNECTIONS,
               drain: Drain | None = None) -> None:
    """What web.run_app does for the exporter, with its connections bounded: serves until SIGTERM or SIGINT, then
    for the drain."""
    asyncio.run(serve(app, host, port, max_connections=max_connections, drain=drain))
