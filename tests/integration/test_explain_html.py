"""`modelrollout explain NAME --html FILE` against the real API server, rendered by headless Chromium.

Chromium is Debian's package (hack/setup.sh installs it). It opens the file with the network off and draws
it: the screenshot must not be blank (a small PNG decoder counts its colours, and finds the chart's own
colours), and the DOM Chromium built must hold the SVG timeline with one marker per decision.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import run_kubectl

pytestmark = pytest.mark.integration
SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nsfw-classifier.yaml"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")


def at(minute: int, second: int = 0) -> str:
    return f"2026-11-27T03:{minute:02d}:{second:02d}Z"


def verdict(outcome: str, canary: tuple[int, int], stable: tuple[int, int], reason: str) -> dict[str, Any]:
    return {"name": "nsfw-rate", "outcome": outcome, "reason": reason, "evidence": {
        "canary": {"events": canary[0], "total": canary[1], "rate": canary[0] / canary[1]},
        "stable": {"events": stable[0], "total": stable[1], "rate": stable[0] / stable[1]},
        "statistic": 20.7, "threshold": 4.6}}


FAILED = verdict("fail", (31, 500), (98, 49000), "canary 6.2% (31/500) is credibly above 1.5x stable 0.2% (98/49000)")
HISTORY = [
    (0, 0, "Resolved", "attempt 1: candidate 7 (stable 6)"),
    (0, 20, "CandidateStaged", "candidate 7 ready on InferenceService nsfw-classifier at 0%"),
    (1, 0, "GatePassed", "9 checks passed on dataset abababababab"),
    (1, 1, "WeightChanged", "step 1/6: candidate 7 at 1%"),
    (1, 2, "AnalysisStarted", "step 2/6: judging for 10m at 1%"),
    (11, 2, "AnalysisPassed", "step 2/6: 20 runs, last pass (nsfw-rate no credible increase: canary 0.21% "
                              "(3/1400) vs stable 0.2% (280/140000), e-value 0.3 < boundary 82.3)"),
    (11, 3, "WeightChanged", "step 3/6: candidate 7 at 10%"),
    (11, 4, "AnalysisStarted", "step 4/6: judging for 10m at 10%"),
    (14, 0, "AnalysisFailed", "nsfw-rate " + FAILED["reason"] + ", at step 4/6 (10%)"),
    (14, 0, "RollbackStarted", "AnalysisFailed: nsfw-rate " + FAILED["reason"]),
    (14, 1, "TrafficRestored", "weight 0 observed on InferenceService nsfw-classifier"),
    (14, 1, "Recovered", "traffic back on stable 6 and alias verified 0.41s after the decision"),
    (14, 2, "CandidateRejected", "version 7 tagged modelrollout.rejected"),
    (14, 2, "RolledBack", "nsfw-rate failed at 10%"),
]
STATUS = {
    "phase": "RolledBack", "observedGeneration": 1, "currentStep": 3, "canaryWeight": 0, "attempt": 1,
    "message": "Rolled back: nsfw-rate canary 6.2% (31/500) vs stable 0.2% (98/49000) at step 4/6 (10%).",
    "startedAt": at(0), "completedAt": at(14, 2), "candidate": {"version": "7"}, "stable": {"version": "6"},
    "gate": {"outcome": "pass", "datasetSha256": "ab" * 32, "reason": "9 checks passed", "completedAt": at(1),
             "verdicts": [{"name": "accuracy", "outcome": "pass", "reason": "0.981 >= 0.97", "evidence": {}}]},
    "analysis": {"mode": "canary", "windowStart": at(11, 4), "stepIndex": 3, "runs": 6, "lastRunAt": at(14),
                 "outcome": "fail", "metrics": [FAILED]},
    "rollback": {"cause": "AnalysisFailed", "reason": "nsfw-rate failed", "verdictAt": at(14),
                 "actor": "modelrollout-controller", "timeToRecoverSeconds": 0.41,
                 "evidence": {"cause": "AnalysisFailed", "verdicts": [FAILED]}},
    "history": [{"time": at(m, s), "event": e, "detail": d, "actor": "modelrollout-controller"}
                for m, s, e, d in HISTORY],
}


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: hack/setup.sh installs Debian's package "
                    "(apt-get install -y --no-install-recommends chromium)")
    return path


def run_chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)


def decode_png(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """8-bit RGB or RGBA PNG (what Chromium writes) to (width, height, RGB pixels): zlib plus the five filters."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    offset, idat, header = 8, b"", b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind, body = data[offset + 4:offset + 8], data[offset + 8:offset + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        offset += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    previous = bytearray(stride)
    pixels: list[tuple[int, int, int]] = []
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up = previous[i]
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + ((left + up) >> 1)) & 0xFF
            elif kind == 4:
                corner = previous[i - bpp] if i >= bpp else 0
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        pixels += [(line[i], line[i + 1], line[i + 2]) for i in range(0, stride, bpp)]
        previous = line
    return width, height, pixels


def near(colour: str, pixels: Counter[tuple[int, int, int]], tolerance: int = 1) -> int:
    """Pixels within `tolerance` of `colour`: 1, because the badge's red is only 2 away from the canary's."""
    target = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return sum(count for pixel, count in pixels.items()
               if all(abs(a - b) <= tolerance for a, b in zip(pixel, target, strict=True)))


def test_explain_html_renders_in_headless_chromium(kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    browser = chromium()
    manifest = yaml.safe_load(SAMPLE.read_text())
    assert run_kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", input_text=json.dumps(manifest)).returncode == 0
    patched = run_kubectl(kubeconfig, "patch", "mro", "nsfw-classifier", "-n", namespace, "--subresource=status",
                          "--type=merge", "-p", json.dumps({"status": STATUS}))
    assert patched.returncode == 0, patched.stderr

    page = tmp_path / "explain.html"
    result = subprocess.run([sys.executable, "-m", "controller.cli.main", "explain", "nsfw-classifier", "-n", namespace,
                             "--kubeconfig", str(kubeconfig), "--html", str(page)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert f"wrote {page}" in result.stdout and "It rolls out version 7" in result.stdout
    assert "<svg" in page.read_text()

    shot = tmp_path / "explain.png"
    # Tall enough for the whole chart and legend: at 800 px the stable squares on the 0% line sat on the bottom
    # edge, and a font one pixel taller pushed them out of the shot.
    drawn = run_chromium(page, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,1600")
    assert drawn.returncode == 0 and shot.is_file(), f"{browser}: {drawn.stderr[-2000:]}"
    width, height, pixels = decode_png(shot.read_bytes())
    assert (width, height) == (1200, 1600)
    colours = Counter(pixels)
    white = colours[(255, 255, 255)]
    assert len(colours) > 100, f"only {len(colours)} colours: a blank page?"
    assert white < 0.95 * len(pixels), f"{white / len(pixels):.1%} of the page is white"
    # The chart is drawn, not just the text: the phase badge, the weight line, a canary rate point.
    for what, colour in (("RolledBack badge", "#cf222e"), ("weight line", "#0969da"), ("canary rate", "#d1242f"),
                         ("stable rate", "#2da44e")):
        assert near(colour, colours) >= 20, f"no {what} ({colour}) in the screenshot"

    dom = run_chromium(page, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('<g class="decision ') == len(HISTORY)
    assert 'class="weight-line"' in dom.stdout and dom.stdout.count('class="rate-point canary"') >= 2
    assert dom.stdout.count('class="rate-point stable"') >= 2
    assert "<svg" in dom.stdout and "What happened" in dom.stdout
