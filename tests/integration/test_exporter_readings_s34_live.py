"""Review s34exporter, over real HTTP to a real `modelrollout exporter run` process (see the unit file
tests/unit/test_exporter_readings_s34.py for the parsing itself).

1. A Seldon answer whose one column is named and holds labels or class indexes was counted unreadable
   (AmbiguousScore); it is counted by class, as the same answer under Seldon's placeholder `t:0` is.
2. A V2 binary tensor answer whose one UINT8 class index is a JSON whitespace byte (9, 10, 13, 32) was BadTensor.
3. `exporter run --class-names safe,nsfw,nsfw` started and merged two classes: it exits at start naming the entry.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.devstack.dataplane import start_exporter
from controller.devstack.processes import free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "moderation"
SELDON_RESPONSE = "io.seldon.serving.inference.response"
KSERVE_RESPONSE = "org.kubeflow.serving.inference.response"
CLASSES = [f"c{i}" for i in range(40)]
COUNTED = 202  # the exporter's answer to an event it counted (400: dropped)


def served(log: Path, class_names: str) -> Iterator[str]:
    process, url = start_exporter(log, class_names=class_names)
    try:
        yield url
    finally:
        process.stop()


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[str]:
    """A binary classifier's exporter."""
    yield from served(tmp_path / "exporter.log", "safe,nsfw")


@pytest.fixture
def exporter40(tmp_path: Path) -> Iterator[str]:
    """Classes c0..c39: index 9, 10, 13 and 32 among them."""
    yield from served(tmp_path / "exporter.log", ",".join(CLASSES))


def post(url: str, event_type: str, service: str, body: bytes, content_type: str = "application/json") -> int:
    headers = {"Ce-Id": uuid.uuid4().hex, "Ce-Type": event_type, "Ce-Specversion": "1.0", "Ce-Source": "test",
               "Ce-Namespace": NAMESPACE, "Ce-Inferenceservicename": service, "Content-Type": content_type}
    request = urllib.request.Request(f"{url}/?variant=canary&model_version=7", data=body,  # noqa: S310 - loopback
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def series(url: str, service: str) -> dict[str, float]:
    """This service's non-zero prediction counts by class, and its unreadable answers as "unreadable"."""
    for _ in range(2):  # a new series is first shown at 0 (see server.render): its count from the second scrape
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:  # noqa: S310 - loopback
            text = response.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or f'inference_service="{service}"' not in line:
            continue
        name, value = line.rsplit(" ", 1)
        if name.startswith("modelrollout_predictions_total{") and float(value):
            found[name.split('class="', 1)[1].split('"', 1)[0]] = float(value)
        elif name.startswith("modelrollout_unreadable_predictions_total{"):
            found["unreadable"] = float(value)
    return found


@pytest.mark.parametrize(("service", "names", "rows"), [
    ("labels", ["label"], ["nsfw", "safe"]), ("indexes", ["class_id"], [[1], [0]]),
    ("placeholder", ["t:0"], [[1], [0]])])
def test_one_named_seldon_column_of_labels_or_indexes_is_counted(exporter: str, service: str, names: list[str],
                                                                 rows: list[Any]) -> None:
    body = json.dumps({"data": {"names": names, "ndarray": rows}}).encode()
    assert post(exporter, SELDON_RESPONSE, service, body) == COUNTED
    assert series(exporter, service) == {"nsfw": 1, "safe": 1, "unreadable": 0}


def test_one_named_seldon_score_is_still_unreadable(exporter: str) -> None:
    body = json.dumps({"data": {"names": ["safe"], "ndarray": [[0.9]]}}).encode()
    assert post(exporter, SELDON_RESPONSE, "score", body) == 400
    assert series(exporter, "score") == {"unreadable": 1}


@pytest.mark.parametrize("index", [9, 10, 13, 32, 33])
def test_a_binary_class_index_that_is_a_json_whitespace_byte_is_counted(exporter40: str, index: int) -> None:
    header = {"model_name": "m", "outputs": [{"name": "class", "datatype": "UINT8", "shape": [1],
                                              "parameters": {"binary_data_size": 1}}]}
    body = json.dumps(header).encode() + bytes([index])  # as KServe's agent logs it: no header length
    service = f"index{index}"
    assert post(exporter40, KSERVE_RESPONSE, service, body, "application/octet-stream") == COUNTED
    assert series(exporter40, service) == {f"c{index}": 1, "unreadable": 0}


def test_repeated_class_names_stop_the_exporter_at_start() -> None:
    started = subprocess.run([sys.executable, "-m", "controller.cli.main", "exporter", "run", "--port",
                              str(free_port()), "--class-names", "safe,nsfw,nsfw"],
                             cwd=REPO, capture_output=True, text=True, timeout=30, check=False)
    assert started.returncode == 2, started.stderr
    said = " ".join(started.stderr.split())
    assert "--class-names: entry 3 ('nsfw') repeats entry 2: list each class once" in said, said
