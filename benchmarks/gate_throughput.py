"""Golden gate throughput against a local V2 model server, side by side with a plain load client.

    .venv/bin/python benchmarks/gate_throughput.py [--json] [--samples 200000] [--rounds 3] [--big 1000000]
                                                   [--small 10000] [--batch-size N] [--concurrency N]

What runs, all on 127.0.0.1:
- one model server process (controller.devstack.model_server's app, demo linear model) speaking V2;
- throughput: the same dataset, as JSON Lines and as .npz, evaluated by the gate (verify sha256, parse,
  send each batch to candidate and stable, validate answers, count metrics, judge) and pushed by a plain
  aiohttp loop that posts the same batches to the same two endpoints with the same concurrency, checks
  each answer's HTTP status and output shape, and does nothing else (its batches are already in memory:
  no file, no validation beyond that, no metrics). The plain loop runs twice:
    plain         the baseline of the ratios: the gate's exact request bytes (the gate's own
                  InferenceClient.encode), encoded before the clock starts, answers decoded with the
                  gate's own decode_json: HTTP and decoding only;
    naive client  a simple client's way, for reference: json.dumps per batch as it goes, json.loads answers.
  Rounds alternate, so machine noise hits every client alike. Reported: medians with the min-max of the
  rounds, and gate / plain throughput (above 1: the gate is faster) per round, median and min-max.
  Rates count samples answered by both endpoints; no ratio is reported (exit status 1) unless every
  gate verdict is pass and every sample sent was answered by both endpoints, on both sides.
  Batch size and concurrency default to the operator's own (GateOptions()'s, the options every gate the
  operator runs uses), for the gate and the plain loops alike; --batch-size and --concurrency change them
  for both, --memory-batch-size for the memory run.
- memory: the gate evaluating a 1,000,000-sample and a small dataset, each in a fresh subprocess, with the
  peak RSS (VmHWM in /proc/self/status) and the RSS just before evaluation started (VmRSS): memory must
  not grow with the dataset's size.
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
from collections import Counter
from collections.abc import Callable
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
from controller.devstack.processes import (  # noqa: E402
    LOOPBACK,
    free_port,
    interrupt_on_termination,
    start,
    wait_http_ok,
)
from controller.gate import GateOptions, InferenceEndpoint, evaluate_dataset_file  # noqa: E402
from controller.gate.clients import InferenceClient, decode_json  # noqa: E402
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
    try:
        wait_http_ok(f"{url}/v2/health/ready", process, 60)
    except BaseException:  # never ready, or interrupted while waiting: it runs in its own session, stop it here
        process.stop()
        raise
    return process, url


def endpoints(url: str) -> tuple[InferenceEndpoint, InferenceEndpoint]:
    return InferenceEndpoint(url, "candidate"), InferenceEndpoint(url, "stable")


# --- the two clients ---------------------------------------------------------------------------------


class Refused(RuntimeError):
    """A run whose requests were not all answered, or whose gate verdict is not pass: no rate means anything."""


async def gate_run(path: Path, sha256: str, url: str, batch_size: int, concurrency: int) -> dict[str, Any]:
    candidate, stable = endpoints(url)
    started = time.perf_counter()
    report = await evaluate_dataset_file(path, {"uri": str(path), "sha256": sha256, "thresholds": THRESHOLDS},
                                         candidate, stable, options=GateOptions(batch_size=batch_size,
                                                                                concurrency=concurrency))
    seconds = time.perf_counter() - started
    status = report.status
    arms = {arm: (status.get(arm) or {}).get("responses") or {} for arm in ("candidate", "stable")}
    return {"seconds": seconds,
            # samples both endpoints answered with a usable prediction: the rate's numerator, as the plain loop's
            "samples": int((status.get("comparison") or {}).get("pairedSamples") or 0),
            "sent": {arm: int(responses.get("samples") or 0) for arm, responses in arms.items()},
            "answered": {arm: int(responses.get("answered") or 0) for arm, responses in arms.items()},
            "outcome": str(report.outcome), "reason": report.reason}


async def gate_bodies(batches: list[np.ndarray], url: str) -> list[bytes]:
    """The exact request bodies the gate sends for these batches: its own client's encoder, one body per
    batch for both endpoints (as the gate's runner shares it between clients of equal encoding)."""
    async with aiohttp.ClientSession() as session:
        clients = [InferenceClient(endpoint, session, DEMO_CLASSES) for endpoint in endpoints(url)]
        if clients[0].encoding != clients[1].encoding:
            raise RuntimeError("candidate and stable clients encode differently; the gate would send two bodies")
        return [clients[0].encode(batch) for batch in batches]


def naive_body(batch: np.ndarray) -> bytes:
    """What a simple client writes: the standard library's json.dumps of the batch as Python floats."""
    return json.dumps({"inputs": [{"name": "input-0", "shape": list(batch.shape), "datatype": "FP32",
                                   "data": batch.reshape(-1).tolist()}]}).encode()


def encode_bodies(batches: list[np.ndarray]) -> list[bytes]:
    """The naive client's bodies for all batches at once (for scripts that compare encoders)."""
    return [naive_body(batch) for batch in batches]


def answered_rows(payload: bytes, rows: int, decode: Callable[[bytes], Any]) -> str | None:
    """None when the answer is a V2 output of one score vector per sample; else what is wrong with it."""
    try:
        document = decode(payload)
    except ValueError:
        return "not JSON"
    outputs = document.get("outputs") if isinstance(document, dict) else None
    if not isinstance(outputs, list) or not outputs or not isinstance(outputs[0], dict):
        return "no outputs"
    data = outputs[0].get("data")
    width = len(DEMO_CLASSES)
    if outputs[0].get("shape") != [rows, width] or not isinstance(data, list) or len(data) != rows * width:
        return "wrong output shape"
    return None


async def plain_run(batches: list[np.ndarray], url: str, concurrency: int, bodies: list[bytes] | None = None,
                    decode: Callable[[bytes], Any] = decode_json) -> dict[str, Any]:
    """The baseline: the same batches to the same two endpoints with the same concurrency; only HTTP 200
    answers of the right output shape count. No file, no metrics. With `bodies` the requests were encoded
    before the clock started; without, each batch is encoded as it goes (naive_body)."""
    arms = ("candidate", "stable")
    targets = {arm: f"{url}/v2/models/{arm}/infer" for arm in arms}
    sent = dict.fromkeys(arms, 0)
    answered = dict.fromkeys(arms, 0)
    both = 0
    problems: Counter[str] = Counter()
    work = iter(range(len(batches)))

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal both
        for index in work:
            batch = batches[index]
            rows = int(batch.shape[0])
            body = bodies[index] if bodies is not None else naive_body(batch)

            async def post(arm: str, body: bytes = body, rows: int = rows) -> bool:
                sent[arm] += rows
                try:
                    async with session.post(targets[arm], data=body,
                                            headers={"Content-Type": "application/json"}) as response:
                        payload = await response.read()
                        status = response.status
                except aiohttp.ClientError as exc:
                    status, payload = 0, type(exc).__name__.encode()
                problem = (f"HTTP {status}" if status else payload.decode()) if status != 200 else \
                    answered_rows(payload, rows, decode)
                if problem is not None:
                    problems[f"{arm}: {problem}"] += rows
                    return False
                answered[arm] += rows
                return True

            if all(await asyncio.gather(*(post(arm) for arm in arms))):
                both += rows

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2 * concurrency + 2)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return {"seconds": time.perf_counter() - started, "samples": both, "sent": sent, "answered": answered,
            "problems": dict(problems)}


def check_complete(name: str, result: dict[str, Any], expected: int) -> None:
    """Refuse a run unless both endpoints answered every one of the `expected` samples (and the gate passed)."""
    faults = []
    if "outcome" in result and result["outcome"] != "pass":
        faults.append(f"gate verdict {result['outcome']}: {result['reason'][:300]}")
    for arm in ("candidate", "stable"):
        sent, answered = result["sent"][arm], result["answered"][arm]
        if not sent == answered == expected:
            faults.append(f"{arm}: {answered} answered of {sent} sent, of {expected} samples")
    if result["samples"] != expected:
        faults.append(f"{result['samples']} of {expected} samples answered by both endpoints")
    if result.get("problems"):
        faults.append(f"unanswered: {result['problems']}")
    if faults:
        raise Refused(f"{name}: " + "; ".join(faults))


def load_batches(path: Path, batch_size: int) -> list[np.ndarray]:
    # An empty batch is a reader's pause (nothing usable read for a while), never a request.
    return [batch.features for batch in open_dataset(path, batch_size).batches() if len(batch)]


def spread(values: list[float], digits: int) -> dict[str, float]:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def throughput(url: str, work: Path, samples: int, batch_size: int, concurrency: int,
               rounds: int) -> dict[str, Any]:
    data = demo_golden_samples(samples, seed=5)
    files = {data_format: write_demo_dataset(work, data, data_format) for data_format in ("jsonl", "npz")}
    batches = load_batches(files["npz"][0], batch_size)
    bodies = asyncio.run(gate_bodies(batches, url))
    warm = batches[:20]  # warm up connections and the server; a server that does not answer stops here
    check_complete("warm-up", asyncio.run(plain_run(warm, url, concurrency, bodies[:20])),
                   sum(int(batch.shape[0]) for batch in warm))
    rates: dict[str, list[float]] = {"plain": [], "naiveClient": [], "gateJsonl": [], "gateNpz": []}
    outcomes = set()
    for _ in range(rounds):  # alternate, so machine noise hits every client alike
        for name in rates:
            if name == "plain":
                result = asyncio.run(plain_run(batches, url, concurrency, bodies, decode_json))
            elif name == "naiveClient":
                result = asyncio.run(plain_run(batches, url, concurrency, None, json.loads))
            else:
                path, sha256 = files["jsonl" if name == "gateJsonl" else "npz"]
                result = asyncio.run(gate_run(path, sha256, url, batch_size, concurrency))
                outcomes.add(result["outcome"])
            check_complete(name, result, samples)
            rates[name].append(result["samples"] / result["seconds"])

    def per_round(gate: str, baseline: str) -> dict[str, float]:  # rounds alternate: round i against round i
        return spread([g / p for g, p in zip(rates[gate], rates[baseline], strict=True)], 3)

    return {"samples": samples, "batchSize": batch_size, "concurrency": concurrency, "rounds": rounds,
            "endpointsPerBatch": 2, "gateOutcomes": sorted(outcomes), "allAnswered": True,
            "samplesPerSecond": {name: spread(values, 0) for name, values in rates.items()},
            # gate / plain throughput, above 1 the gate is faster; plain sends the gate's exact bytes
            "gateOverPlain": {"jsonl": per_round("gateJsonl", "plain"), "npz": per_round("gateNpz", "plain")},
            # gate / naive client throughput (json.dumps per batch, json.loads answers), for reference
            "gateOverNaiveClient": {"jsonl": per_round("gateJsonl", "naiveClient"),
                                    "npz": per_round("gateNpz", "naiveClient")},
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
        check_complete(f"memory run on {samples} samples", measured, samples)
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
    operator = GateOptions()  # measured as the operator runs the gate
    parser.add_argument("--batch-size", type=int, default=operator.batch_size,
                        help="samples per request, gate and plain loops (default: the operator's, %(default)s)")
    parser.add_argument("--concurrency", type=int, default=operator.concurrency,
                        help="requests in flight per endpoint, gate and plain loops (default: the operator's, "
                             "%(default)s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--big", type=int, default=1_000_000, help="large dataset for the memory run")
    parser.add_argument("--small", type=int, default=10_000, help="small dataset for the memory run")
    parser.add_argument("--memory-batch-size", type=int, default=operator.batch_size,
                        help="samples per request in the memory run (default: the operator's, %(default)s)")
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
    try:
        # SIGTERM (a timeout, a cancelled CI job) unwinds as Ctrl-C does: the finally below stops the server.
        with interrupt_on_termination(), tempfile.TemporaryDirectory(prefix="gate-bench-") as scratch:
            work = Path(scratch)
            process, url = start_server(work)
            try:
                result: dict[str, Any] = {
                    "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                    "throughput": throughput(url, work, args.samples, args.batch_size, args.concurrency,
                                             args.rounds),
                    "memory": memory(url, work, [args.small, args.big], args.memory_batch_size, args.concurrency),
                }
            finally:
                process.stop()
    except Refused as exc:
        print(f"gate_throughput: no rate or ratio reported, a run was not fully answered or did not pass: {exc}",
              file=sys.stderr)
        return 1
    result["wallSeconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(result))
        return 0
    t = result["throughput"]
    rates = t["samplesPerSecond"]

    def rate(name: str) -> str:
        return f"{rates[name]['median']:.0f}/s [{rates[name]['min']:.0f}-{rates[name]['max']:.0f}]"

    def ratio(block: dict[str, float]) -> str:
        return f"{block['median']:.3f} [{block['min']:.3f}-{block['max']:.3f}]"

    print(f"throughput ({t['samples']} samples, batch {t['batchSize']}, concurrency {t['concurrency']}, each batch to "
          f"candidate and stable, every sample answered by both, gate verdicts {t['gateOutcomes']}; "
          f"median [min-max] of {t['rounds']} alternating rounds):")
    print(f"  plain client, the gate's own request bytes encoded before the clock, gate's decode_json: {rate('plain')}")
    print(f"  naive client, json.dumps per batch and json.loads (reference only): {rate('naiveClient')}")
    for data_format, label in (("jsonl", "JSON Lines"), ("npz", ".npz")):
        name = "gateJsonl" if data_format == "jsonl" else "gateNpz"
        print(f"  gate on {label}: {rate(name)}; gate/plain throughput {ratio(t['gateOverPlain'][data_format])}, "
              f"gate/naive client {ratio(t['gateOverNaiveClient'][data_format])}")
    print("  (ratios are gate throughput / baseline throughput per round: above 1 the gate is faster)")
    for size, m in result["memory"].items():
        print(f"memory {int(size):>9} samples ({m['datasetMiB']} MiB file): peak RSS {m['peakRssMiB']} MiB "
              f"(+{m['growthMiB']} MiB over {m['baselineRssMiB']} MiB before evaluating), {m['seconds']}s, "
              f"{m['samplesPerSecond']}/s, verdict {m['outcome']}")
    print(f"wall time {result['wallSeconds']}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
