"""The command line's entry point: flags the manifests pass exist, and the kubernetes library loads late."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from controller.cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]


def test_entry_point_does_not_import_the_kubernetes_library() -> None:
    """`operator run --kubeconfig` exports $KUBECONFIG, which the library reads once, when first imported."""
    probe = "import sys, controller.cli.main; print('kubernetes' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"


def test_operator_run_defaults_to_loopback_metrics() -> None:
    args = build_parser().parse_args(["operator", "run"])
    assert (args.metrics_address, args.metrics_port, args.liveness) == ("127.0.0.1", 9100, None)


def test_the_deployments_arguments_are_flags_of_operator_run() -> None:
    deployment = next(doc for doc in yaml.safe_load_all((REPO / "deploy" / "base" / "controller.yaml").read_text())
                      if doc and doc["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(container["args"])
    assert (args.metrics_address, args.metrics_port) == ("0.0.0.0", 9100)  # noqa: S104 - the pod address
    assert args.liveness == "http://0.0.0.0:8080/healthz"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["metrics"] == args.metrics_port


def test_get_takes_watch_or_an_output_format_not_both(capsys: pytest.CaptureFixture[str]) -> None:
    assert build_parser().parse_args(["get", "r", "--watch"]).watch
    assert build_parser().parse_args(["get", "r", "-o", "yaml"]).output == "yaml"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["get", "r", "--watch", "-o", "json"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_explain_takes_an_html_file(tmp_path: Path) -> None:
    args = build_parser().parse_args(["explain", "nsfw-classifier", "--html", str(tmp_path / "page.html")])
    assert args.html == tmp_path / "page.html"
    assert build_parser().parse_args(["explain", "nsfw-classifier"]).html is None


def test_colour_only_on_a_terminal_that_can_show_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from controller.cli.oncall import Style

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert Style(Terminal()).phase("RolledBack") == "\033[31mRolledBack\033[0m"
    assert Style(io.StringIO()).phase("RolledBack") == "RolledBack"  # piped
    monkeypatch.setenv("TERM", "dumb")
    assert Style(Terminal()).phase("RolledBack") == "RolledBack"
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("NO_COLOR", "1")
    assert Style(Terminal()).phase("RolledBack") == "RolledBack"
