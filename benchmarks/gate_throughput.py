"""Golden gate throughput against a local V2 model server, side by side with a plain load client.

    .venv/bin/python benchmarks/gate_throughput.py [--json] [--samples 100000] [--big 1000000] [--small 10000]

What runs, all on 127.0.0.1:
- one model server process (controller.devstack.model_server's app, demo linear model) speaking V2;
- throughput: the same dataset, as JSON Lines and as .npz, evaluated by the gate (verify sha256, parse,
  send each batch to candidate and stable, validate answers, count metrics, judge) and pushed by a plain
  aiohttp loop that posts the same batches to the same two endpoints with the same concurrency and only
  decodes the answers (its batches are already in memory: no file, no validation, no metrics). The loop
  runs twice: encoding each batch as it goes (the ratio), and with bodies encoded before the clock starts
  (the stricter ratioVsPreEncoded). Rounds alternate, so machine noise hits every client alike; medians.
- memory: the gate evaluating a 1,000,000-sample and a small dataset, each in a fresh subprocess, with the
  peak RSS (getrusage ru_maxrss) and the RSS just before evaluation started: memory must not grow with
  the dataset's size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from controller.devstack.model_server import (  # noqa: E402
    DEMO_CLASSES,
    ModelApp,
    demo_golden_samples,
    demo_models,
    write_demo_dataset,
)
from controller.devstack.processes import LOOPBACK, free_port, start, wait_http_ok  # noqa: E402
from controller.gate import GateOptions, InferenceEndpoint, evaluate_dataset_file  # noqa: E402
from controller.gate.formats import open_dataset  # noqa: E402

THRESHOLDS = {"minAccuracy": 0.93, "maxAccuracyDrop": 0.02, "maxDisagreement": 0.01,
              "classes": {"nsfw": {"maxFalsePositiveRate": 0.025, "minRecall": 0.9}}}


# --- the server process ------------------------------------------------------------------------------


def serve(port: int) -> None:
    """Child mode: the model server app with the demo models, candidate and stable under two names."""
    from aiohttp import web

    models = demo_models()
    served = {"candidate": ModelApp(models["clean"], "candidate"), "stable": ModelApp(models["stable"], "stable")}

    async def infer(request: web.Request) -> web.StreamResponse:
        model = served.get(request.match_info["name"])
        if model is None:
            raise web.HTTPNotFound()
        return await model.v2_infer(request)

    async def ready(request: web.Request) -> web.StreamResponse:
        return web.json_response({"ready": True})

    # Two models on one server process (candidate and stable), the model server's own V2 handler for each.
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_post("/v2/models/{name}/infer", infer)
    web.run_app(app, host=LOOPBACK, port=port, access_log=None, print=None, shutdown_timeout=1.0)


def start_server(log_dir: Path) -> tuple[Any, str]:
    port = free_port()
    process = start("bench-model-server", [sys.executable, __file__, "--serve", str(port)], log_dir / "server.log",
                    cwd=REPO)
    url = f"http://{LOOPBACK}:{port}"
    wait_http_ok(f"{url}/v2/health/ready", process, 60)
    return process, url


def endpoints(url: str) -> tuple[InferenceEndpoint, InferenceEndpoint]:
    return InferenceEndpoint(url, "candidate"), InferenceEndpoint(url, "stable")


# --- the two clients ---------------------------------------------------------------------------------


async def gate_run(path: Path, sha256: str, url: str, batch_size: int, concurrency: int) -> dict[str, Any]:
    candidate, stable = endpoints(url)
    started = time.perf_counter()
    report = await evaluate_dataset_file(path, {"uri": str(path), "sha256": sha256, "thresholds": THRESHOLDS},
                                         candidate, stable, options=GateOptions(batch_size=batch_size,
                                                                                concurrency=concurrency))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "samples": report.status["dataset"]["usable"], "outcome": str(report.outcome),
            "reason": report.reason}


def encode_bodies(batches: list[np.ndarray]) -> list[bytes]:
    return [json.dumps({"inputs": [{"name": "input-0", "shape": list(batch.shape), "datatype": "FP32",
                                    "data": batch.reshape(-1).tolist()}]}).encode() for batch in batches]


async def plain_run(batches: list[np.ndarray], url: str, concurrency: int,
                    bodies: list[bytes] | None = None) -> dict[str, Any]:
    """The baseline: the same batches to the same two endpoints with the same concurrency, answers decoded;
    no file, no checks, no metrics. With `bodies` the requests are encoded before the clock starts."""
    targets = [f"{url}/v2/models/candidate/infer", f"{url}/v2/models/stable/infer"]
    answered = 0
    work = iter(range(len(batches)))

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal answered
        for index in work:
            batch = batches[index]
            body = bodies[index] if bodies is not None else json.dumps({"inputs": [{
                "name": "input-0", "shape": list(batch.shape), "datatype": "FP32",
                "data": batch.reshape(-1).tolist()}]}).encode()

            async def post(target: str, body: bytes = body) -> None:
                async with session.post(target, data=body, headers={"Content-Type": "application/json"}) as response:
                    json.loads(await response.read())

            await asyncio.gather(*(post(target) for target in targets))
            answered += batch.shape[0]

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2 * concurrency + 2)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return {"seconds": time.perf_counter() - started, "samples": answered}


def load_batches(path: Path, batch_size: int) -> list[np.ndarray]:
    return [batch.features for batch in open_dataset(path, batch_size).batches()]


def throughput(url: str, work: Path, samples: int, batch_size: int, concurrency: int,
               rounds: int) -> dict[str, Any]:
    data = demo_golden_samples(samples, seed=5)
    files = {data_format: write_demo_dataset(work, data, data_format) for data_format in ("jsonl", "npz")}
    batches = load_batches(files["npz"][0], batch_size)
    bodies = encode_bodies(batches)
    asyncio.run(plain_run(batches[:20], url, concurrency))  # warm up connections and the server
    rates: dict[str, list[float]] = {"plainPreEncoded": [], "plainEncoding": [], "gateJsonl": [], "gateNpz": []}
    outcomes = set()
    for _ in range(rounds):  # alternate, so machine noise hits every client alike
        for name in rates:
            if name == "plainPreEncoded":
                result = asyncio.run(plain_run(batches, url, concurrency, bodies))
            elif name == "plainEncoding":
                result = asyncio.run(plain_run(batches, url, concurrency))
            else:
                path, sha256 = files["jsonl" if name == "gateJsonl" else "npz"]
                result = asyncio.run(gate_run(path, sha256, url, batch_size, concurrency))
                outcomes.add(result["outcome"])
            rates[name].append(result["samples"] / result["seconds"])
    median = {name: statistics.median(values) for name, values in rates.items()}
    return {"samples": samples, "batchSize": batch_size, "concurrency": concurrency, "rounds": rounds,
            "endpointsPerBatch": 2, "gateOutcomes": sorted(outcomes),
            "samplesPerSecond": {name: round(value) for name, value in median.items()},
            # gate / plain loop (which encodes each batch, as a simple client does)
            "ratio": {"jsonl": round(median["gateJsonl"] / median["plainEncoding"], 3),
                      "npz": round(median["gateNpz"] / median["plainEncoding"], 3)},
            # gate / plain loop posting bodies encoded before the clock started: HTTP and decoding only
            "ratioVsPreEncoded": {"jsonl": round(median["gateJsonl"] / median["plainPreEncoded"], 3),
                                  "npz": round(median["gateNpz"] / median["plainPreEncoded"], 3)},
            "allRates": {name: [round(value) for value in values] for name, values in rates.items()}}


# --- memory, one fresh process per dataset size --------------------------------------------------------


def write_big_dataset(path: Path, samples: int) -> str:
    """Written in chunks so the benchmark itself stays small too."""
    chunk = 100_000
    with open(path, "w") as out:
        out.write(json.dumps({"classes": list(DEMO_CLASSES), "featureShape": [6]}) + "\n")
        for start_row in range(0, samples, chunk):
            data = demo_golden_samples(min(chunk, samples - start_row), seed=start_row + 1)
            rows = data.features.tolist()
            out.writelines(json.dumps({"inputs": rows[i], "label": data.labels[i],
                                       **({"slices": list(data.slices[i])} if data.slices[i] else {})}) + "\n"
                           for i in range(len(rows)))
    from controller.gate.formats import sha256_file

    return sha256_file(path)


def measure(path: Path, sha256: str, url: str, batch_size: int, concurrency: int) -> dict[str, Any]:
    """Child mode: evaluate once and report peak RSS against the RSS before evaluation."""
    baseline_kib = _proc_status_kib("VmRSS")
    result = asyncio.run(gate_run(path, sha256, url, batch_size, concurrency))
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec from the forking parent,
    # so a child of a big parent would report the parent's peak.
    peak_kib = _proc_status_kib("VmHWM")
    return {**result, "baselineRssMiB": round(baseline_kib / 1024, 1), "peakRssMiB": round(peak_kib / 1024, 1),
            "growthMiB": round((peak_kib - baseline_kib) / 1024, 1)}


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory(url: str, work: Path, sizes: list[int], batch_size: int, concurrency: int) -> dict[str, Any]:
    results = {}
    for samples in sizes:
        path = work / f"memory-{samples}.jsonl"
        sha256 = write_big_dataset(path, samples)
        child = subprocess.run([sys.executable, __file__, "--measure", str(path), "--sha256", sha256, "--url", url,
                                "--batch-size", str(batch_size), "--concurrency", str(concurrency)],
                               capture_output=True, text=True, check=True, cwd=REPO, timeout=1200)
        measured = json.loads(child.stdout.strip().splitlines()[-1])
        measured["datasetMiB"] = round(path.stat().st_size / 2**20, 1)
        measured["samplesPerSecond"] = round(measured["samples"] / measured["seconds"])
        measured["seconds"] = round(measured["seconds"], 2)
        results[str(samples)] = measured
        path.unlink()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--samples", type=int, default=200_000, help="dataset size for the throughput comparison")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--big", type=int, default=1_000_000, help="large dataset for the memory run")
    parser.add_argument("--small", type=int, default=10_000, help="small dataset for the memory run")
    parser.add_argument("--memory-batch-size", type=int, default=2000)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sha256", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    if args.measure:
        print(json.dumps(measure(args.measure, args.sha256, args.url, args.batch_size, args.concurrency)))
        return 0

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gate-bench-") as scratch:
        work = Path(scratch)
        process, url = start_server(work)
        try:
            result: dict[str, Any] = {
                "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                "throughput": throughput(url, work, args.samples, args.batch_size, args.concurrency, args.rounds),
                "memory": memory(url, work, [args.small, args.big], args.memory_batch_size, args.concurrency),
            }
        finally:
            process.stop()
    result["wallSeconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(result))
        return 0
    t = result["throughput"]
    rates = t["samplesPerSecond"]
    print(f"throughput ({t['samples']} samples, batch {t['batchSize']}, concurrency {t['concurrency']}, each batch to "
          f"candidate and stable, median of {t['rounds']} alternating rounds, gate verdicts {t['gateOutcomes']}):")
    print(f"  plain loop encoding each batch {rates['plainEncoding']}/s; posting pre-encoded bodies "
          f"{rates['plainPreEncoded']}/s")
    print(f"  gate on JSON Lines {rates['gateJsonl']}/s: ratio {t['ratio']['jsonl']} "
          f"({t['ratioVsPreEncoded']['jsonl']} against pre-encoded bodies)")
    print(f"  gate on .npz {rates['gateNpz']}/s: ratio {t['ratio']['npz']} "
          f"({t['ratioVsPreEncoded']['npz']} against pre-encoded bodies)")
    for size, m in result["memory"].items():
        print(f"memory {int(size):>9} samples ({m['datasetMiB']} MiB file): peak RSS {m['peakRssMiB']} MiB "
              f"(+{m['growthMiB']} MiB over {m['baselineRssMiB']} MiB before evaluating), {m['seconds']}s, "
              f"{m['samplesPerSecond']}/s, verdict {m['outcome']}")
    print(f"wall time {result['wallSeconds']}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
