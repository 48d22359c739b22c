"""Helpers for the gate's unit tests: small datasets, real loopback HTTP servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from controller.devstack.model_server import InProcessModelServer, LinearModel, ModelApp
from controller.gate.clients import InferenceEndpoint, InferenceProtocol

CLASSES = ("safe", "suggestive", "nsfw")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def jsonl(path: Path, lines: list[Any], classes: tuple[str, ...] | None = CLASSES) -> Path:
    """Write lines (dicts are JSON-encoded, strings written as they are) after a classes header."""
    with open(path, "w") as out:
        if classes is not None:
            out.write(json.dumps({"classes": list(classes)}) + "\n")
        for line in lines:
            out.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


@asynccontextmanager
async def http_server(handler: Handler, method: str = "POST") -> AsyncIterator[str]:
    """A real HTTP server on 127.0.0.1 answering every request of `method` with handler; yields its base URL."""
    app = web.Application()
    app.router.add_route(method, "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def model_server(model: LinearModel, **app_options: Any) -> AsyncIterator[InProcessModelServer]:
    server = InProcessModelServer(ModelApp(model, "m", **app_options))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def endpoint(url: str, protocol: str = "v2", **options: Any) -> InferenceEndpoint:
    return InferenceEndpoint(url, "m", InferenceProtocol(protocol), **options)


def identity_model() -> LinearModel:
    """Predicts the class whose feature (0, 1 or 2) is largest; feature 3 is ignored."""
    import numpy as np

    weights = np.zeros((3, 4))
    weights[:, :3] = np.eye(3)
    return LinearModel(weights, np.zeros(3), CLASSES)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]
