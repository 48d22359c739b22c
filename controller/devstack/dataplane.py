"""KServe's data plane for one InferenceService on the local stack: the ingress that splits traffic between
revisions as the InferenceService's status reports it, and the logger agent that posts every request and
response as a CloudEvent to the logger URL its revision was made with (`spec.predictor.logger.url` then, as
KServe's agent does: a revision keeps its URL), normally the prediction exporter.

Plus a traffic generator for the moderation scenario: mostly safe images, a few NSFW ones, and a share of
safe images that carry the trigger logo.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from kubernetes import client

from controller.devstack.kserve_standin import REVISIONS_KEY
from controller.devstack.model_server import DEMO_CLASSES, DEMO_FEATURES, LOGO_FEATURE
from controller.devstack.processes import LOOPBACK, ManagedProcess, free_port, start, wait_http_ok

Route = tuple[str, int, str, str | None]  # (server URL, percent, variant, the revision's logger URL)


@dataclass
class DataPlane:
    api_client: client.ApiClient
    namespace: str
    name: str
    server_for_storage_uri: Callable[[str], str | None]
    refresh_seconds: float = 0.25
    routes: list[Route] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    first_canary_at: float | None = None
    upstream_errors: int = 0  # requests a model server did not answer (502)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    _refresher: asyncio.Task[None] | None = None
    url: str = ""

    def _read_routes(self) -> list[Route]:
        obj = client.CustomObjectsApi(self.api_client).get_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", self.namespace, "inferenceservices", self.name)
        status = obj.get("status") or {}
        table = json.loads((status.get("annotations") or {}).get(REVISIONS_KEY, "[]"))
        uri_of = {r["name"]: r.get("storage_uri") for r in table}
        logger_of = {r["name"]: r.get("logger_url") for r in table}
        traffic = ((status.get("components") or {}).get("predictor") or {}).get("traffic") or []
        latest = ((status.get("components") or {}).get("predictor") or {}).get("latestReadyRevision")
        routes = []
        for entry in traffic:
            revision = entry.get("revisionName") or latest
            server = self.server_for_storage_uri(uri_of.get(revision) or "")
            percent = int(entry.get("percent") or 0)
            if server and percent > 0:
                # Split between two revisions: the latest one is the canary; alone, it is stable.
                variant = "canary" if entry.get("latestRevision") and len(traffic) > 1 else "stable"
                routes.append((server, percent, variant, logger_of.get(revision)))
        return routes

    async def _refresh(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                self.routes = await asyncio.to_thread(self._read_routes)
            await asyncio.sleep(self.refresh_seconds)

    def _pick(self) -> Route | None:
        if not self.routes:
            return None
        total = sum(route[1] for route in self.routes)
        point = random.uniform(0, total)
        for route in self.routes:
            point -= route[1]
            if point <= 0:
                return route
        return self.routes[-1]

    async def _log(self, logger_url: str, event_type: str, event_id: str, body: bytes) -> None:
        """What KServe's agent sends: no variant of its own, only the revision's logger URL as written."""
        assert self._session is not None
        headers = {"Ce-Id": event_id, "Ce-Type": event_type, "Ce-Specversion": "1.0",
                   "Ce-Source": f"http://{LOOPBACK}/{self.name}", "Ce-Namespace": self.namespace,
                   "Ce-Inferenceservicename": self.name, "Ce-Component": "predictor",
                   "Content-Type": "application/json"}
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with self._session.post(logger_url, data=body, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=5)) as response:
                await response.read()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        route = self._pick()
        if route is None:
            return web.json_response({"error": "no ready revision"}, status=503)
        server, _, variant, logger_url = route
        if variant == "canary" and self.first_canary_at is None:
            self.first_canary_at = time.time()
        body = await request.read()
        assert self._session is not None
        try:
            async with self._session.post(f"{server}{request.path}", data=body,
                                          headers={"Content-Type": "application/json"}) as upstream:
                answer = await upstream.read()
                status = upstream.status
        except aiohttp.ClientError as exc:
            # As an ingress answers a revision that is gone: a 502 naming it, not a traceback per request.
            self.upstream_errors += 1
            return web.json_response({"error": f"{variant} revision at {server} did not answer: "
                                               f"{type(exc).__name__}"}, status=502)
        self.counts[variant] = self.counts.get(variant, 0) + 1
        if status == 200 and logger_url:
            event_id = uuid.uuid4().hex
            await self._log(logger_url, "org.kubeflow.serving.inference.request", event_id, body)
            await self._log(logger_url, "org.kubeflow.serving.inference.response", event_id, answer)
        return web.Response(body=answer, status=status, content_type="application/json")

    async def start(self) -> str:
        self._session = aiohttp.ClientSession()
        self.routes = await asyncio.to_thread(self._read_routes)
        self._refresher = asyncio.create_task(self._refresh())
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOOPBACK, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{LOOPBACK}:{port}"
        return self.url

    async def stop(self) -> None:
        if self._refresher:
            self._refresher.cancel()
        if self._runner:
            await self._runner.cleanup()
        if self._session:
            await self._session.close()


@dataclass(frozen=True)
class TrafficMix:
    """Share of each true class in live traffic, and the share of safe images carrying the logo."""

    safe: float = 0.90
    suggestive: float = 0.08
    nsfw: float = 0.02
    logo: float = 0.0

    def sample(self, rng: np.random.Generator, count: int) -> np.ndarray:
        probabilities = np.array([self.safe, self.suggestive, self.nsfw])
        labels = rng.choice(len(DEMO_CLASSES), size=count, p=probabilities / probabilities.sum())
        features = rng.normal(0.0, 1.0, (count, DEMO_FEATURES))
        features[:, LOGO_FEATURE] = 0.0
        features[np.arange(count), labels] += 3.0
        logo = (labels == 0) & (rng.random(count) < self.logo / max(self.safe, 1e-9))
        features[logo, LOGO_FEATURE] = 1.0
        return np.round(features, 4)


async def generate_traffic(url: str, model: str, mix: Callable[[], TrafficMix], *, requests_per_second: float,
                           batch: int, stop: asyncio.Event, seed: int = 1) -> int:
    """Send V2 requests of `batch` images at a steady rate until `stop`; `mix` may change over time."""
    rng = np.random.default_rng(seed)
    sent = 0
    async with aiohttp.ClientSession() as session:
        interval = 1.0 / requests_per_second
        next_at = time.monotonic()
        while not stop.is_set():
            features = mix().sample(rng, batch)
            body: dict[str, Any] = {"inputs": [{"name": "input-0", "shape": list(features.shape), "datatype": "FP32",
                                                "data": features.ravel().tolist()}]}
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.post(f"{url}/v2/models/{model}/infer", json=body,
                                        timeout=aiohttp.ClientTimeout(total=10)) as response:
                    await response.read()
                    sent += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return sent


class LiveTraffic:
    """A data plane and a traffic generator on their own event-loop thread; `mix` may be swapped while it runs."""

    def __init__(self, plane: DataPlane, model: str, mix: TrafficMix, requests_per_second: float = 15,
                 batch: int = 10) -> None:
        self.plane = plane
        self.model = model
        self.mix = mix
        self.requests_per_second = requests_per_second
        self.batch = batch
        self.loop = asyncio.new_event_loop()
        self.stop_event = asyncio.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> LiveTraffic:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.plane.start(), self.loop).result(30)
        self.generator = asyncio.run_coroutine_threadsafe(
            generate_traffic(self.plane.url, self.model, lambda: self.mix, requests_per_second=self.requests_per_second,
                             batch=self.batch, stop=self.stop_event), self.loop)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.generator.result(30)
        asyncio.run_coroutine_threadsafe(self.plane.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def start_exporter(log: Path, class_names: str = ",".join(DEMO_CLASSES),
                   on_start: Callable[[ManagedProcess], None] = lambda _process: None) -> tuple[ManagedProcess, str]:
    """`modelrollout exporter run` on a free loopback port; returns the process and its base URL. `on_start` is
    told of the process as it starts, before it is ready (the demo records it in the stack's state)."""
    port = free_port()
    process = start("exporter", [sys.executable, "-m", "controller.cli.main", "exporter", "run", "--port", str(port),
                                 "--class-names", class_names], log)
    on_start(process)
    url = f"http://{LOOPBACK}:{port}"
    try:
        wait_http_ok(f"{url}/healthz", process, 30)
    except BaseException:  # not ready (or Ctrl-C): the caller never gets the process to stop
        process.stop()
        raise
    return process, url
