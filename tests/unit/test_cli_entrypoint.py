"""The command line's entry point: flags the manifests pass exist, and the kubernetes library loads late."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from controller.cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]


def test_entry_point_does_not_import_the_kubernetes_library() -> None:
    """`dev` and `exporter` do not need it, and it is slow to import."""
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


@pytest.mark.parametrize("name", ["", "../other", "Upper", "a/b", "x-", "x" * 254])
def test_a_name_that_is_no_object_name_is_refused_before_any_call(name: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["get", name])
    assert exited.value.code == 2 and "is not a Kubernetes object name" in capsys.readouterr().err


@pytest.mark.parametrize("kubeconfig", [
    "garbage: [\n",  # not YAML
    "apiVersion: v1\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1', "
    "certificate-authority-data: '!!notb64'}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n"
    "current-context: c\nusers: [{name: u, user: {token: s3cret-token}}]\n",  # CA data that is not base64
])
def test_a_broken_kubeconfig_is_one_line_without_its_content(tmp_path: Path, kubeconfig: str) -> None:
    path = tmp_path / "config"
    path.write_text(kubeconfig)
    for args in (["list"], ["operator", "run", "--metrics-port", "-1"]):
        result = subprocess.run([sys.executable, "-m", "controller.cli.main", *args, "--kubeconfig", str(path)],
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.startswith("error: no cluster: cannot load a kubeconfig"), result.stderr
        assert "Traceback" not in result.stderr and "s3cret" not in result.stderr


def test_an_unreachable_api_server_is_named_with_the_cause(tmp_path: Path) -> None:
    """As kubectl says it: which server, and why (a type name such as MaxRetryError told neither)."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    path = tmp_path / "config"
    path.write_text(f"apiVersion: v1\nclusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
                    "contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n"
                    "users: [{name: u, user: {token: s3cret-token}}]\n")
    result = subprocess.run([sys.executable, "-m", "controller.cli.main", "list", "--kubeconfig", str(path)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (f"error: no cluster: cannot reach the API server at 127.0.0.1:{port} "
                                     "(connection refused)"), result.stderr


def test_operator_run_without_any_kubeconfig_exits_instead_of_retrying(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "controller.cli.main", "operator", "run", "--metrics-port", "-1",
                             "--kubeconfig", str(tmp_path / "nope")], capture_output=True, text=True, timeout=60,
                            check=False, env={**os.environ, "HOME": str(tmp_path)})
    assert result.returncode == 1 and result.stderr.startswith("error: no cluster"), result.stderr


def test_exporter_on_a_port_in_use_says_so() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "controller.cli.main", "exporter", "run", "--port", str(port)],
                                capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1 and f"error: cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_text_from_the_server_cannot_drive_the_terminal(offline_kubeconfig: Path) -> None:
    import io

    from controller.cli.oncall import OnCall

    out = io.StringIO()
    oncall = OnCall(str(offline_kubeconfig), None, out=out)
    hostile = "\x1b[2J\x1b]0;owned\x07mallory\u202e"
    obj = {"metadata": {"namespace": "ns", "name": "r"}, "spec": {"model": {"name": "m"}},
           "status": {"phase": "Paused", "message": hostile, "candidate": {"version": "7"},
                      "history": [{"time": "t", "event": "CommandReceived", "actor": hostile, "detail": hostile}]}}
    oncall.print_list([obj], all_namespaces=False)
    oncall.print_rollout(obj)
    oncall.print_history(obj)
    shown = out.getvalue() + oncall.explain(obj)
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "\\x1b[2J\\x1b]0;owned\\x07mallory\\u202e" in shown


def test_operator_run_refuses_a_storage_uri_template_it_cannot_fill(offline_kubeconfig: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "controller.cli.main", "operator", "run", "--metrics-port", "-1",
                             "--kubeconfig", str(offline_kubeconfig), "--storage-uri-template", "s3://m/{model}"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1 and "--storage-uri-template 's3://m/{model}' cannot be filled" in result.stderr
    assert "Traceback" not in result.stderr


def test_operator_run_takes_the_scrape_interval_the_freshness_check_assumes(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert build_parser().parse_args(["operator", "run"]).scrape_interval.total_seconds() == 30
    assert build_parser().parse_args(["operator", "run", "--scrape-interval", "2m"]).scrape_interval.seconds == 120
    for bad, said in (("0s", "not a scrape interval from 1s to 10m"), ("11m", "not a scrape interval"),
                      ("thirty", "not a duration")):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["operator", "run", "--scrape-interval", bad])
        assert said in capsys.readouterr().err


@pytest.mark.parametrize(("args", "said"), [
    (["exporter", "run", "--port", "99999"], "'99999' is not a port: a number from 0 to 65535"),
    (["exporter", "run", "--port", "-1"], "'-1' is not a port"),
    (["exporter", "run", "--port", "http"], "'http' is not a port"),
    (["operator", "run", "--metrics-port", "70000"], "'70000' is not a port: a number from 0 to 65535, or -1 for none"),
    (["operator", "run", "--metrics-port", "-2"], "'-2' is not a port"),
])
def test_a_port_bind_cannot_take_is_refused_with_the_usage(args: list[str], said: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(args)
    assert exited.value.code == 2 and said in capsys.readouterr().err


def test_the_ports_that_mean_something_are_kept() -> None:
    """0: any free port; -1: no metrics (operator run only)."""
    for port in ("0", "65535"):
        assert build_parser().parse_args(["exporter", "run", "--port", port]).port == int(port)
    for port in ("-1", "0", "65535"):
        assert build_parser().parse_args(["operator", "run", "--metrics-port", port]).metrics_port == int(port)


def test_the_on_call_commands_take_a_kubeconfig_context(tmp_path: Path) -> None:
    """prod and staging in one kubeconfig: `kubectl --context X modelrollout` is refused before the plugin name,
    so the plugin takes --context itself; the namespace is then that context's."""
    import io

    from controller.cli.errors import CliError
    from controller.cli.oncall import OnCall

    kubeconfig = {"apiVersion": "v1", "current-context": "staging",
                  "clusters": [{"name": name, "cluster": {"server": f"https://127.0.0.1:{port}"}}
                               for name, port in (("staging", 1), ("prod", 2))],
                  "contexts": [{"name": name, "context": {"cluster": name, "user": "u", "namespace": f"{name}-ns"}}
                               for name in ("staging", "prod")],
                  "users": [{"name": "u", "user": {"token": "t"}}]}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    prod = OnCall(str(path), None, out=io.StringIO(), context_name="prod")
    assert prod.namespace == "prod-ns" and prod.custom.api_client.configuration.host == "https://127.0.0.1:2"
    assert OnCall(str(path), None, out=io.StringIO()).namespace == "staging-ns"
    with pytest.raises(CliError, match="no cluster: cannot load a kubeconfig"):
        OnCall(str(path), None, out=io.StringIO(), context_name="nowhere")
    args = build_parser().parse_args(["get", "--context", "prod", "nsfw-classifier"])
    assert args.context == "prod"
