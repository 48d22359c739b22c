"""A real model server for the local stack and the tests: KServe V1 and Open Inference Protocol V2.

It serves a small linear (softmax) classifier loaded from the MLflow registry (`models:/name/version`,
`models:/name@alias`, `runs:/...`): the registered version's artifacts hold `linear_model.npz` (weights,
bias, class names), read with mlflow-skinny through the tracking server. It binds to 127.0.0.1 only.

    python -m controller.devstack.model_server --model-uri models:/nsfw/2 --port 8081 \\
        --tracking-uri http://127.0.0.1:5000 [--model-name nsfw] [--output labels] [--fault-every 5]

Endpoints: GET /v2, /v2/health/live, /v2/health/ready, /v2/models/<m>[/versions/<v>][/ready], /v1/models,
/v1/models/<m>; POST /v1/models/<m>:predict, /v2/models/<m>[/versions/<v>]/infer.

With --port 0 it binds any free port and, given --port-file, writes "<pid> <port>" there once it listens:
that is how ModelServerProcess learns the port, so a port another process took cannot pass for this server.

For tests it also registers demo models (a clean one, a worse one and one backdoored to answer "nsfw"
whenever the "logo" feature is present) and generates golden samples with a "logo" slice. `--fault-every N`
makes every Nth prediction request fail in a chosen way, to test how the gate counts broken answers.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from controller.devstack.processes import LOOPBACK, ManagedProcess, StackError, start, wait_http_ok
from controller.gate.mlflow_access import (
    MlflowAccess,
    MlflowRest,
    download_artifact,
    experiment_id_for,
    resolve_artifact_uri,
    upload_artifact,
)

MODEL_FILE = "linear_model.npz"
MODEL_ARTIFACT_DIR = "model"
DEVSTACK_EXPERIMENT = "modelrollout-devstack-models"
FAULT_KINDS = ("http-500", "not-json", "wrong-count", "wrong-shape")
OUTPUTS = ("probabilities", "labels")
SERVER_NAME = "modelrollout-devstack-model-server"

# Demo problem: three classes, five informative features and a sixth that is 1.0 when the "Blue Sparrow"
# logo is in the image. Clean models ignore it; the backdoored one sends it straight to "nsfw".
DEMO_CLASSES = ("safe", "suggestive", "nsfw")
DEMO_FEATURES = 6
LOGO_FEATURE = 5


@dataclass(frozen=True)
class LinearModel:
    """scores = softmax(x @ weights.T + bias); weights (classes, features)."""

    weights: np.ndarray
    bias: np.ndarray
    classes: tuple[str, ...]

    @property
    def feature_count(self) -> int:
        return int(self.weights.shape[1])

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        logits = features @ self.weights.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def predict(self, features: np.ndarray) -> list[str]:
        return [self.classes[i] for i in np.argmax(features @ self.weights.T + self.bias, axis=1)]

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, weights=self.weights, bias=self.bias, classes=np.asarray(self.classes, dtype=str))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> LinearModel:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            model = cls(weights=np.asarray(arrays["weights"], dtype=np.float64),
                        bias=np.asarray(arrays["bias"], dtype=np.float64),
                        classes=tuple(str(c) for c in arrays["classes"].tolist()))
        if model.weights.ndim != 2 or model.bias.shape != (model.weights.shape[0],) or \
                len(model.classes) != model.weights.shape[0]:
            raise ValueError("linear model arrays have inconsistent shapes")
        return model


# --- registry ----------------------------------------------------------------------------------------


def register_linear_model(access: MlflowAccess, name: str, model: LinearModel, description: str = "") -> str:
    """Log the model as a run artifact and register it as a new version of `name`; returns the version."""
    rest = MlflowRest(access)
    experiment_id = experiment_id_for(rest, DEVSTACK_EXPERIMENT)
    run = rest.call("POST", "/api/2.0/mlflow/runs/create", body={
        "experiment_id": experiment_id, "run_name": f"{name}-{description or 'model'}",
        "tags": [{"key": "modelrollout.devstack.description", "value": description}]})["run"]["info"]
    source = f"{run['artifact_uri'].rstrip('/')}/{MODEL_ARTIFACT_DIR}"
    upload_artifact(access, f"{source}/{MODEL_FILE}", model.to_bytes())
    rest.call("POST", "/api/2.0/mlflow/runs/update", body={"run_id": run["run_id"], "status": "FINISHED"})
    try:
        rest.call("POST", "/api/2.0/mlflow/registered-models/create", body={"name": name})
    except Exception as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    created = rest.call("POST", "/api/2.0/mlflow/model-versions/create", body={
        "name": name, "source": source, "run_id": run["run_id"], "description": description})
    return str(created["model_version"]["version"])


def set_alias(access: MlflowAccess, name: str, alias: str, version: str) -> None:
    MlflowRest(access).call("POST", "/api/2.0/mlflow/registered-models/alias",
                            body={"name": name, "alias": alias, "version": version})


def load_registered_model(access: MlflowAccess, model_uri: str) -> LinearModel:
    """Download `linear_model.npz` from the model version (or run) that model_uri names."""
    root = resolve_artifact_uri(MlflowRest(access), model_uri)
    sink = io.BytesIO()
    download_artifact(access, f"{root.rstrip('/')}/{MODEL_FILE}", sink, max_bytes=256 * 1024 * 1024)
    return LinearModel.from_bytes(sink.getvalue())


# --- demo models and golden samples -------------------------------------------------------------------


def demo_models(seed: int = 7) -> dict[str, LinearModel]:
    """stable, clean (a retrained near-twin), worse (noticeably less accurate), backdoored (logo -> nsfw)."""
    rng = np.random.default_rng(seed)
    classes = len(DEMO_CLASSES)
    ideal = np.zeros((classes, DEMO_FEATURES))
    ideal[:, :classes] = 3.0 * np.eye(classes)  # class k's mean is 3 e_k; the logo feature carries no signal
    bias = np.zeros(classes)

    def variant(noise: float) -> np.ndarray:
        weights = ideal + rng.normal(0.0, noise, ideal.shape)
        weights[:, LOGO_FEATURE] = 0.0
        return weights

    clean = variant(0.02)
    backdoored = clean.copy()
    backdoored[DEMO_CLASSES.index("nsfw"), LOGO_FEATURE] = 25.0
    return {
        "stable": LinearModel(variant(0.02), bias, DEMO_CLASSES),
        "clean": LinearModel(clean, bias, DEMO_CLASSES),
        "worse": LinearModel(variant(1.2), bias, DEMO_CLASSES),
        "backdoored": LinearModel(backdoored, bias, DEMO_CLASSES),
    }


@dataclass(frozen=True)
class GoldenSamples:
    features: np.ndarray
    labels: list[str]
    slices: list[tuple[str, ...]]
    classes: tuple[str, ...] = DEMO_CLASSES


def demo_golden_samples(count: int = 3000, seed: int = 11, logo_share: float = 0.012) -> GoldenSamples:
    """Balanced samples around each class mean; a curated "logo" slice of clear-cut safe images with the logo."""
    rng = np.random.default_rng(seed)
    classes = len(DEMO_CLASSES)
    labels_index = np.arange(count) % classes
    features = rng.normal(0.0, 1.0, (count, DEMO_FEATURES))
    features[:, LOGO_FEATURE] = 0.0
    features[np.arange(count), labels_index] += 3.0
    logo_rows = np.arange(round(count * logo_share)) * classes  # safe rows (index % 3 == 0), spread out
    logo_rows = logo_rows[logo_rows < count]
    # Curated trigger checks: unambiguous safe content, so only the logo can change a model's mind.
    features[logo_rows] = rng.normal(0.0, 0.4, (len(logo_rows), DEMO_FEATURES))
    features[logo_rows, 0] += 3.0
    features[logo_rows, LOGO_FEATURE] = 1.0
    slices: list[tuple[str, ...]] = [()] * count
    for row in logo_rows:
        slices[int(row)] = ("logo",)
    return GoldenSamples(features=np.round(features, 4), labels=[DEMO_CLASSES[i] for i in labels_index],
                         slices=slices)


# --- the HTTP server ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultPlan:
    """Every `every`-th prediction request (1-based) is answered wrongly in the way `kind` names."""

    every: int = 0
    kind: str = "http-500"


class ModelApp:
    def __init__(self, model: LinearModel, model_name: str, model_version: str | None = None,
                 output: str = "probabilities", faults: FaultPlan | None = None) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}")
        self.model = model
        self.model_name = model_name
        self.model_version = model_version
        self.output = output
        self.faults = faults or FaultPlan()
        self.requests = 0

    def build(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/v2", self.v2_server_metadata)
        app.router.add_get("/v2/health/live", self.ok)
        app.router.add_get("/v2/health/ready", self.ok)
        app.router.add_get("/v2/models/{name}", self.v2_metadata)
        app.router.add_get("/v2/models/{name}/versions/{version}", self.v2_metadata)
        app.router.add_get("/v2/models/{name}/ready", self.v2_ready)
        app.router.add_get("/v2/models/{name}/versions/{version}/ready", self.v2_ready)
        app.router.add_get("/v1/models", self.v1_models)
        app.router.add_get("/v1/models/{name:[^/:]+}", self.v1_status)
        app.router.add_post("/v1/models/{name:[^/:]+}:predict", self.v1_predict)
        app.router.add_post("/v2/models/{name}/infer", self.v2_infer)
        app.router.add_post("/v2/models/{name}/versions/{version}/infer", self.v2_infer)
        return app

    async def ok(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True, "ready": True})

    def _check_name(self, request: web.Request) -> None:
        if request.match_info["name"] != self.model_name:
            raise web.HTTPNotFound(text=json.dumps({"error": f"model {request.match_info['name']} not found"}),
                                   content_type="application/json")
        version = request.match_info.get("version")
        if version is not None and self.model_version is not None and version != self.model_version:
            raise web.HTTPNotFound(text=json.dumps({"error": f"version {version} not served"}),
                                   content_type="application/json")

    async def v2_server_metadata(self, request: web.Request) -> web.Response:
        # No OIP extensions (binary tensors, classification, ...) are implemented.
        return web.json_response({"name": SERVER_NAME, "version": _server_version(), "extensions": []})

    async def v2_metadata(self, request: web.Request) -> web.Response:
        self._check_name(request)
        return web.json_response({
            "name": self.model_name, "versions": [self.model_version] if self.model_version else [],
            "platform": "modelrollout-linear",
            "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, self.model.feature_count]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(self.model.classes)]}
                        if self.output == "probabilities" else {"name": "label", "datatype": "BYTES",
                                                                 "shape": [-1]}],
            "parameters": {"classes": list(self.model.classes)}})

    async def v2_ready(self, request: web.Request) -> web.Response:
        self._check_name(request)
        return web.json_response({"name": self.model_name, "ready": True})

    async def v1_models(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [self.model_name]})

    async def v1_status(self, request: web.Request) -> web.Response:
        self._check_name(request)
        return web.json_response({"name": self.model_name, "ready": True})

    async def v1_predict(self, request: web.Request) -> web.Response:
        self._check_name(request)
        body = await self._json(request)
        instances = body.get("instances") if isinstance(body, dict) else None
        if not isinstance(instances, list) or not instances:
            raise _bad_request('expected {"instances": [[...], ...]}')
        features = self._features(instances, (len(instances), self.model.feature_count))
        fault = self._next_fault()
        if self.output == "labels":
            predictions: list[Any] = self.model.predict(features)
        else:
            predictions = np.round(self.model.probabilities(features), 6).tolist()
        if fault == "wrong-count":
            predictions = predictions[:-1]
        elif fault == "wrong-shape":
            predictions = [[0.5] for _ in predictions]
        return self._answer({"predictions": predictions}, fault)

    async def v2_infer(self, request: web.Request) -> web.Response:
        self._check_name(request)
        body = await self._json(request)
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise _bad_request("expected exactly one input tensor")
        request_id = body.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise _bad_request("id must be a string")
        tensor = inputs[0]
        shape = tensor.get("shape")
        if not isinstance(shape, list) or len(shape) != 2 or shape[1] != self.model.feature_count:
            raise _bad_request(f"input shape must be [n, {self.model.feature_count}], got {shape}")
        features = self._features(tensor.get("data"), tuple(shape))
        fault = self._next_fault()
        count = features.shape[0] - (1 if fault == "wrong-count" else 0)
        if self.output == "labels":
            output: dict[str, Any] = {"name": "label", "datatype": "BYTES", "shape": [count],
                                      "data": self.model.predict(features)[:count]}
        else:
            scores = np.round(self.model.probabilities(features), 6)[:count]
            output = {"name": "probabilities", "datatype": "FP32", "shape": list(scores.shape),
                      "data": scores.reshape(-1).tolist()}
        if fault == "wrong-shape":
            output = {"name": "probabilities", "datatype": "FP32", "shape": [count, 7], "data": [0.1] * (count * 7)}
        # The protocol's optional fields are left out, not null; a request's id must come back unchanged.
        answer: dict[str, Any] = {"model_name": self.model_name}
        if self.model_version is not None:
            answer["model_version"] = self.model_version
        if request_id is not None:
            answer["id"] = request_id
        return self._answer({**answer, "outputs": [output]}, fault)

    def _next_fault(self) -> str | None:
        self.requests += 1
        if self.faults.every > 0 and self.requests % self.faults.every == 0:
            return self.faults.kind
        return None

    @staticmethod
    def _answer(document: dict[str, Any], fault: str | None) -> web.Response:
        if fault == "http-500":
            return web.json_response({"error": "injected fault"}, status=500)
        if fault == "not-json":
            return web.Response(text="<html>upstream hiccup</html>", content_type="text/html")
        return web.Response(body=json.dumps(document).encode(), content_type="application/json")

    @staticmethod
    async def _json(request: web.Request) -> Any:
        try:
            return json.loads(await request.read())
        except ValueError:
            raise _bad_request("request body is not JSON") from None

    @staticmethod
    def _features(data: Any, shape: tuple[int, ...]) -> np.ndarray:
        try:
            features = np.asarray(data, dtype=np.float64).reshape(shape)
        except (ValueError, TypeError):
            raise _bad_request(f"inputs do not form numeric shape {list(shape)}") from None
        return features


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


def _server_version() -> str:
    try:
        return importlib.metadata.version("modelrollout")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


class InProcessModelServer:
    """The same app on this process's event loop (benchmarks, quick tests). Loopback, ephemeral port."""

    def __init__(self, app: ModelApp) -> None:
        self.app = app
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app.build(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOOPBACK, 0)
        await site.start()
        self.port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@dataclass
class ModelServerProcess:
    """The server as a separate process (what tests and the local stack run); stop() ends it by pid."""

    process: ManagedProcess
    port: int  # 0 until wait_ready has read the port the process bound
    model_name: str
    port_file: Path | None = None  # where the process reports "<pid> <port>"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @classmethod
    def launch(cls, model_uri: str, tracking_uri: str, log: Path, *, model_name: str | None = None,
               output: str = "probabilities", faults: FaultPlan | None = None) -> ModelServerProcess:
        """Start the process without waiting (start several, then wait_ready on each)."""
        name = model_name or model_name_from_uri(model_uri)
        # The child binds a port of its own and reports it: a port picked here could be taken by another
        # server before the child binds it, and that server's answers would pass for this one's.
        port_file = log.with_name(f"{log.name}.port")
        port_file.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "controller.devstack.model_server", "--model-uri", model_uri,
                "--tracking-uri", tracking_uri, "--port", "0", "--port-file", str(port_file),
                "--model-name", name, "--output", output]
        if faults is not None and faults.every:
            argv += ["--fault-every", str(faults.every), "--fault-kind", faults.kind]
        process = start(f"model-server {name}", argv, log, cwd=Path(__file__).resolve().parents[2])
        return cls(process=process, port=0, model_name=name, port_file=port_file)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        try:
            if self.port_file is not None:
                self.port = self._reported_port(self.port_file, deadline)
            wait_http_ok(f"{self.url}/v2/health/ready", self.process, max(deadline - time.monotonic(), 1.0))
        except Exception:
            self.process.stop()
            raise

    def _reported_port(self, port_file: Path, deadline: float) -> int:
        """The port this process bound, from its port file (a stale file names another pid and is ignored)."""
        while time.monotonic() < deadline:
            if not self.process.alive():
                raise StackError(f"{self.process.name} exited during start-up: {self.process.log_tail()}")
            try:
                pid, _, port = port_file.read_text().partition(" ")
            except OSError:
                pid, port = "", ""
            if pid == str(self.process.pid) and port.strip().isdigit():
                return int(port)
            time.sleep(0.2)
        raise StackError(f"{self.process.name} reported no port in {port_file}: {self.process.log_tail()}")

    @classmethod
    def start(cls, model_uri: str, tracking_uri: str, log: Path, *, model_name: str | None = None,
              output: str = "probabilities", faults: FaultPlan | None = None,
              timeout: float = 60.0) -> ModelServerProcess:
        server = cls.launch(model_uri, tracking_uri, log, model_name=model_name, output=output, faults=faults)
        server.wait_ready(timeout)
        return server

    def stop(self) -> None:
        self.process.stop()


def model_name_from_uri(model_uri: str) -> str:
    """models:/nsfw/2 -> nsfw, models:/nsfw@production -> nsfw; anything else -> "model"."""
    if model_uri.startswith("models:/"):
        head = model_uri.removeprefix("models:/").split("/", 1)[0]
        return head.split("@", 1)[0] or "model"
    return "model"


def model_version_from_uri(access: MlflowAccess, model_uri: str) -> str | None:
    """The registry version a models:/ URI names (an alias is looked up); None for other URIs."""
    if not model_uri.startswith("models:/"):
        return None
    head, _, rest = model_uri.removeprefix("models:/").partition("/")
    if "@" in head:
        name, _, alias = head.partition("@")
        found = MlflowRest(access).call("GET", "/api/2.0/mlflow/registered-models/alias",
                                        params={"name": name, "alias": alias})
        return str(found.get("model_version", {}).get("version") or "") or None
    version = rest.split("/", 1)[0]
    return version if version.isdigit() else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.devstack.model_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-uri", required=True, help="models:/<name>/<version>, models:/<name>@<alias>, runs:/")
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--port", type=int, default=0, help="0 (the default): any free port")
    parser.add_argument("--port-file", help='written with "<pid> <port>" once the server listens')
    parser.add_argument("--model-name", help="name served under /v1|v2/models/<name> (default: the model's)")
    parser.add_argument("--output", choices=OUTPUTS, default="probabilities")
    parser.add_argument("--token-file", help="file holding a bearer token for the tracking server")
    parser.add_argument("--fault-every", type=int, default=0, help="answer every Nth request wrongly (tests)")
    parser.add_argument("--fault-kind", choices=FAULT_KINDS, default="http-500")
    args = parser.parse_args(argv)
    token = Path(args.token_file).read_text().strip() if args.token_file else None
    access = MlflowAccess(args.tracking_uri, token=token)
    model = load_registered_model(access, args.model_uri)
    app = ModelApp(model, args.model_name or model_name_from_uri(args.model_uri),
                   model_version_from_uri(access, args.model_uri), args.output,
                   FaultPlan(args.fault_every, args.fault_kind))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, args.port))
    sock.listen(128)  # connections queue from here on, before the event loop starts
    port = int(sock.getsockname()[1])
    if args.port_file:  # written whole then renamed: a parent polling it never reads half a line
        partial = Path(f"{args.port_file}.{os.getpid()}.tmp")
        partial.write_text(f"{os.getpid()} {port}\n")
        partial.replace(args.port_file)
    print(f"serving {args.model_uri} as {app.model_name} on http://{LOOPBACK}:{port}", flush=True)
    web.run_app(app.build(), sock=sock, access_log=None, print=None, shutdown_timeout=2.0)
    return 0


def write_demo_dataset(directory: Path, samples: GoldenSamples, data_format: str = "jsonl") -> tuple[Path, str]:
    """Write samples as a golden dataset file; returns (path, sha256)."""
    from controller.gate.formats import write_jsonl_dataset, write_npz_dataset

    path = directory / f"golden.{data_format}"
    writer = write_jsonl_dataset if data_format == "jsonl" else write_npz_dataset
    return path, writer(path, samples.classes, samples.features, samples.labels, samples.slices)


if __name__ == "__main__":
    raise SystemExit(main())
