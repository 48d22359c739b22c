"""The on-call CLI against the real API server on a status nested past Python's recursion limit: the API server
stores it (the open `gate` section) and kubectl reads it; the CLI says so in one line, and a watch exits 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_kubectl

pytestmark = pytest.mark.integration
SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nsfw-classifier.yaml"
DEPTH = 1500


def cli(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli.main", *args, "--kubeconfig", str(kubeconfig)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_a_status_nested_too_deep_is_one_clear_line_and_a_watch_exit_2(kubeconfig: Path, namespace: str,
                                                                       tmp_path: Path) -> None:
    manifest = yaml.safe_load(SAMPLE.read_text())
    assert run_kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", input_text=json.dumps(manifest)).returncode == 0
    deep = '{"a":' * DEPTH + '"x"' + "}" * DEPTH  # as text: Python's json cannot write it
    patch = tmp_path / "patch.json"
    patch.write_text('{"status":{"phase":"Progressing","message":"m","observedGeneration":1,'
                     f'"gate":{{"outcome":"pass","deep":{deep}}}}}}}')
    try:
        patched = run_kubectl(kubeconfig, "patch", "mro", "nsfw-classifier", "-n", namespace, "--subresource=status",
                              "--type=merge", "--patch-file", str(patch))
        assert patched.returncode == 0, patched.stderr
        said = (f"error: ModelRollout {namespace}/nsfw-classifier: an object in the answer nests too deep to be read "
                "here; `kubectl get modelrollouts -o json` shows it as stored\n")
        for args, code in ((["get"], 1), (["get", "-o", "json"], 1), (["explain"], 1), (["get", "--watch"], 2)):
            result = cli(kubeconfig, *args, "nsfw-classifier", "-n", namespace)
            assert (result.returncode, result.stderr) == (code, said), (args, result)
        # The list is one JSON document: one such rollout makes it unreadable here, said in one line.
        listed = cli(kubeconfig, "list", "-n", namespace)
        assert listed.returncode == 1 and "nests too deep" in listed.stderr and "unexpected" not in listed.stderr
    finally:  # `list -A` of the other tests on this API server would fail on it too
        run_kubectl(kubeconfig, "delete", "mro", "nsfw-classifier", "-n", namespace, "--wait=false")
