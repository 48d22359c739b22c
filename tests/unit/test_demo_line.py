"""The demo's progress line numbers steps as kubectl's STEP column and the status message do (1-based)."""

from __future__ import annotations

import io

from controller.cli.oncall import Style
from controller.devstack.demo import _line

PLAIN = Style(io.StringIO())  # piped: no colour codes


def test_the_demo_line_shows_the_step_as_kubectl_does() -> None:
    line = _line({"phase": "Paused", "currentStep": 1, "step": "2/4", "canaryWeight": 10,
                  "message": "Paused at step 2/4"}, PLAIN)
    assert line.startswith("Paused      step=2/4  weight= 10%") and "step=1" not in line
    assert "step=-" in _line({"phase": "Pending"}, PLAIN)  # nothing resolved yet
