"""Shared HTTP plumbing. A whole exchange cut at its deadline, wherever it is: requests' timeout bounds each wait
for bytes only, so a server sending its headers (or a body that decodes to nothing) a byte at a time is never cut
off by it.

Shared by the Prometheus provider and both MLflow clients (the registry adapter and the gate's): each runs its
exchange inside `Exchange(seconds)` over a session whose adapters are watched (`WatchedAdapter`, `watch_session`).
`transport_cause` names why an exchange failed without quoting it (the CLI uses it for the API server too).
`only_explicit_auth` keeps the operator host's ~/.netrc out of their requests.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import http.client
import socket
import threading
from collections.abc import Iterator
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3 import PoolManager


class AnswerTooSlow(Exception):
    """An exchange, or a body, still under way at its deadline."""


# The exchange under way in this thread: its connections are the ones its timer may cut.
_EXCHANGE: contextvars.ContextVar[Exchange | None] = contextvars.ContextVar("http_exchange", default=None)


class Exchange:
    """One exchange (all its tries), from sending to its body read and decoded, cut when `seconds` are up: a timer
    shuts its connections' sockets down, wherever the reading is (headers trickled a byte at a time, a decompressor
    fed bytes that decode to nothing), which requests' timeout (each wait for bytes only) never does. Leaving the
    block once cut raises AnswerTooSlow, whatever the cut connection raised or returned; a connection made or used
    once cut raises it at once (urllib3 would try again, sleeping its backoff first, only to be cut again)."""

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        # The sockets, not their connections: http.client hands a closing answer's socket to the response.
        self._sockets: list[socket.socket] = []
        self._expired = self._done = False
        self._timer = threading.Timer(max(0.0, seconds), self._expire)
        self._timer.daemon = True
        self._token: contextvars.Token[Exchange | None] | None = None

    def __enter__(self) -> Exchange:
        self._token = _EXCHANGE.set(self)
        self._timer.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._timer.cancel()
        with self._lock:
            self._done = True  # a timer firing now cuts nothing
        if self._token is not None:
            _EXCHANGE.reset(self._token)
        if self._expired:
            raise AnswerTooSlow

    def watch(self, connection: Any) -> None:
        self.watch_socket(getattr(connection, "sock", None))

    def watch_socket(self, sock: Any) -> None:
        if sock is None:  # not connected yet: watched again once it is
            return
        with self._lock:
            if sock not in self._sockets:
                self._sockets.append(sock)
            if self._expired:  # its time ran out while it connected, or before a retry
                shut(sock)
                raise AnswerTooSlow

    def forget(self, sock: Any) -> None:
        """`sock` went back to its pool: another exchange (another thread) may take it, and this one's deadline
        must not cut that one's answer."""
        with self._lock:
            if sock in self._sockets:
                self._sockets.remove(sock)

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self._expired = True
            for sock in self._sockets:
                shut(sock)


def shut(sock: Any) -> None:
    """Ends a socket's reads and writes at once, from another thread (closing would not wake a read)."""
    # TLS inside TLS (an https proxy to an https server): urllib3's SSLTransport wraps the outer socket.
    while not isinstance(sock, socket.socket) and hasattr(sock, "socket"):
        sock = sock.socket
    # The plain socket's: SSLSocket.shutdown would first drop its TLS object under the reading thread. Nothing
    # may escape: the timer thread must go on to cut the exchange's other sockets.
    with contextlib.suppress(Exception):  # already closed, or no socket at all
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watched:
    """Mixed into urllib3's connection classes: the current Exchange learns each connection it uses."""

    def _new_conn(self) -> Any:
        # The plain socket, as soon as it is connected: a TLS handshake (or a proxy's CONNECT) after it is cut too.
        # The name lookup before it is bounded only by the resolver's own timeouts.
        sock = super()._new_conn()  # type: ignore[misc]
        if (exchange := _EXCHANGE.get()) is not None:
            try:
                exchange.watch_socket(sock)
            except AnswerTooSlow:
                sock.close()  # never handed to the connection, which would close it
                raise
        return sock

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        if (exchange := _EXCHANGE.get()) is not None:
            exchange.watch(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        if (exchange := _EXCHANGE.get()) is not None:  # a kept-alive connection is not connected again
            exchange.watch(self)
        super().request(*args, **kwargs)  # type: ignore[misc]


@functools.cache
def _watched_pool(pool: type) -> type:
    """`pool` (a urllib3 connection pool class), its connections _Watched, each watched only while checked out."""
    connection = type(f"Watched{pool.ConnectionCls.__name__}", (_Watched, pool.ConnectionCls), {})

    class Watched(pool):  # type: ignore[valid-type,misc]
        ConnectionCls = connection

        def _put_conn(self, conn: Any) -> None:
            # Back in the pool, another exchange (another thread) may take it: this one's deadline must not cut it.
            if conn is not None and (exchange := _EXCHANGE.get()) is not None:
                exchange.forget(getattr(conn, "sock", None))
            super()._put_conn(conn)

    Watched.__name__ = Watched.__qualname__ = f"Watched{pool.__name__}"
    return Watched


class WatchedAdapter(HTTPAdapter):
    """requests' adapter whose connections, direct or through a proxy, an Exchange can cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        _watch_pools(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> PoolManager:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        _watch_pools(manager)
        return manager


def _watch_pools(manager: PoolManager) -> None:
    manager.pool_classes_by_scheme = {  # requests hands back the proxy manager it made before: watched already
        scheme: pool if issubclass(pool.ConnectionCls, _Watched) else _watched_pool(pool)
        for scheme, pool in manager.pool_classes_by_scheme.items()}


@functools.cache
def _watched_adapter(adapter: type) -> type:
    """`adapter` (an HTTPAdapter subclass), made a WatchedAdapter with all it does besides."""
    return type(f"Watched{adapter.__name__}", (WatchedAdapter, adapter), {})


def watch_session(session: requests.Session) -> None:
    """Makes the adapters of a session built elsewhere (mlflow's http_request takes none: it keeps one per retry
    policy) WatchedAdapters, keeping their own settings (retries, pool sizes, socket options)."""
    for adapter in list(session.adapters.values()):
        if isinstance(adapter, HTTPAdapter) and not isinstance(adapter, WatchedAdapter):
            adapter.__class__ = _watched_adapter(type(adapter))
            _watch_pools(adapter.poolmanager)  # made already; a proxy's is watched as proxy_manager_for hands it


class _ExplicitAuthOnly(requests.auth.AuthBase):
    """A session's auth that adds nothing from the environment: a request's own auth or Authorization header stands,
    and a URL's user:password@ is sent as basic auth, as requests does without a session auth."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        username, password = requests.utils.get_auth_from_url(request.url or "")
        if username or password:
            return requests.auth.HTTPBasicAuth(username, password)(request)
        return request


def only_explicit_auth(session: requests.Session) -> None:
    """Sends a rollout's own credentials only. A session without auth takes ~/.netrc's (or $NETRC's) for the host,
    replacing the Authorization header a rollout's Secret gave, and a `default` entry goes to any host a spec names.
    Not trust_env=False: proxies and CA bundles from the environment still apply. Redirects, where requests would
    look in netrc again, are never followed by these clients."""
    session.auth = _ExplicitAuthOnly()


def transport_cause(error: BaseException, timeout_seconds: float | None = None) -> str:
    """A short, secret-free reason for a failed HTTP exchange: the exception chain's most specific failure (never
    its message, which may quote the URL)."""
    timeout = f"{timeout_seconds:g}s" if timeout_seconds is not None else "its time"
    chain = list(_exception_chain(error))

    def found(*kinds: type[BaseException]) -> bool:
        return any(isinstance(link, kinds) for link in chain)

    # requests reports urllib3's exhausted retries as a plain ConnectionError: look at the reasons.
    # Order matters: urllib3's NewConnectionError is also a ConnectTimeoutError.
    if found(requests.exceptions.SSLError, urllib3.exceptions.SSLError):
        return "TLS handshake failed"
    if found(ConnectionRefusedError) or any("Connection refused" in str(link) for link in chain):
        return "connection refused"
    if found(urllib3.exceptions.NameResolutionError):
        return "host name does not resolve"
    if found(urllib3.exceptions.NewConnectionError):
        return "connection failed"
    if found(requests.exceptions.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError):
        return f"no connection within {timeout}"
    if found(requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError, TimeoutError):
        return f"no answer within {timeout}"
    if found(requests.exceptions.ChunkedEncodingError, http.client.IncompleteRead):
        return "the connection closed before the answer was complete"
    if found(requests.exceptions.ConnectionError, urllib3.exceptions.HTTPError, ConnectionError):
        return "connection failed"
    return f"request failed ({type(chain[-1]).__name__})"


def _exception_chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        # urllib3's MaxRetryError keeps the real failure in `.reason`, requests' errors in args.
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        pending.extend(link for link in linked if isinstance(link, BaseException))
