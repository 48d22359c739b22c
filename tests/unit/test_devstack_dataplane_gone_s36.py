"""The local stack's ingress answers a request for a model server that is gone with one 502 naming the revision,
as an ingress does, not an aiohttp traceback per request (review s36devstack: 90 tracebacks, 4773 lines of stderr,
in 10 s of the demo's live traffic once a model server died)."""

from __future__ import annotations

import asyncio
import logging
import socket

import aiohttp
import pytest
from test_gate_support import http_server

from controller.devstack.dataplane import DataPlane


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_model_server_that_is_gone_gets_a_502_naming_it_and_no_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    gone = f"http://127.0.0.1:{_closed_port()}"

    async def main() -> tuple[list[int], list[dict[str, str]]]:
        plane = DataPlane(None, "ns", "nsfw", lambda _uri: None)  # type: ignore[arg-type]
        plane.routes = [(gone, 100, "canary", None)]
        plane._session = aiohttp.ClientSession()
        try:
            async with http_server(plane._handle) as ingress, aiohttp.ClientSession() as users:
                statuses, bodies = [], []
                for _ in range(3):
                    async with users.post(f"{ingress}/v1/models/nsfw:predict",
                                          json={"instances": [[0.0]]}) as answer:
                        statuses.append(answer.status)
                        bodies.append(await answer.json())
            assert plane.upstream_errors == 3 and plane.counts == {}
            return statuses, bodies
        finally:
            await plane._session.close()

    with caplog.at_level(logging.DEBUG):
        statuses, bodies = asyncio.run(main())
    assert statuses == [502, 502, 502]
    assert bodies[0]["error"].startswith(f"canary revision at {gone} did not answer: ClientConnectorError")
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
