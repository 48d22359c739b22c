"""The exporter's memory bounds are settable: `exporter run` flags, and the chart's exporter values that render them."""

from __future__ import annotations

from typing import Any

import pytest
from test_deploy_render import CHART, RELEASE, helm_template, run_tool

from controller.cli.main import build_parser, main
from controller.exporter import server
from controller.exporter.connections import MAX_CONNECTIONS
from controller.exporter.server import BODY_READ_SLOTS, MAX_NAMESPACE_SERIES, MAX_PENDING_BYTES, MAX_TOTAL_SERIES

BOUNDS = ("max_total_series", "max_namespace_series", "max_pending_bytes", "body_read_slots", "max_connections")


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The keyword arguments each PredictionExporter was built with, and the server's connection cap beside them
    (`max_connections`); nothing listens."""
    calls: list[dict[str, Any]] = []
    real = server.PredictionExporter

    def record(*args: Any, **kwargs: Any) -> server.PredictionExporter:
        calls.append(kwargs)
        return real(*args, **kwargs)

    def listen(*args: Any, max_connections: int, drain: Any) -> None:
        calls[-1]["max_connections"] = max_connections
        calls[-1]["drain_seconds"] = drain.seconds

    monkeypatch.setattr(server, "PredictionExporter", record)
    monkeypatch.setattr(server, "run_server", listen)
    return calls


@pytest.mark.parametrize(("flags", "bounds"), [
    ([], (MAX_TOTAL_SERIES, MAX_NAMESPACE_SERIES, MAX_PENDING_BYTES, BODY_READ_SLOTS, MAX_CONNECTIONS)),
    (["--max-series", "20000", "--max-namespace-series", "9000", "--max-pending-bytes", "32Mi",
      "--body-read-slots", "16", "--max-connections", "1024"], (20000, 9000, 32 * 1024 * 1024, 16, 1024)),
    # A small cluster: the namespace share follows --max-series down, a quarter of it.
    (["--max-series", "1000", "--max-pending-bytes", "2097152", "--body-read-slots", "2", "--max-connections", "8"],
     (1000, 250, 2 << 20, 2, 8)),
    (["--max-series", "2"], (2, 1, MAX_PENDING_BYTES, BODY_READ_SLOTS, MAX_CONNECTIONS)),
])
def test_exporter_run_passes_its_bounds_to_the_exporter(flags: list[str], bounds: tuple[int, ...],
                                                        built: list[dict[str, Any]]) -> None:
    assert main(["exporter", "run", "--port", "0", "--class-names", "safe,nsfw", *flags]) == 0
    assert len(built) == 1
    assert tuple(built[0][name] for name in BOUNDS) == bounds


def test_exporter_run_passes_its_drain(built: list[dict[str, Any]]) -> None:
    assert main(["exporter", "run", "--port", "0", "--class-names", "safe,nsfw"]) == 0
    assert main(["exporter", "run", "--port", "0", "--class-names", "safe,nsfw", "--drain", "40s"]) == 0
    assert [call["drain_seconds"] for call in built] == [0.0, 40.0]


@pytest.mark.parametrize(("flags", "said"), [
    (["--max-series", "0"], "argument --max-series: '0' is not a positive whole number"),
    (["--max-series", "-5"], "argument --max-series: '-5' is not a positive whole number"),
    (["--max-series", "lots"], "argument --max-series: 'lots' is not a positive whole number"),
    (["--max-namespace-series", "1.5"], "argument --max-namespace-series: '1.5' is not a positive whole number"),
    (["--body-read-slots", "0"], "argument --body-read-slots: '0' is not a positive whole number"),
    (["--max-connections", "0"], "argument --max-connections: '0' is not a positive whole number"),
    (["--max-pending-bytes", "8MB"], "argument --max-pending-bytes: '8MB' is not a positive size"),
    (["--max-pending-bytes", "0Mi"], "argument --max-pending-bytes: '0Mi' is not a positive size"),
    (["--max-series", "100", "--max-namespace-series", "101"],
     "argument --max-namespace-series: 101 is more than --max-series (100)"),
    (["--max-namespace-series", str(MAX_TOTAL_SERIES + 1)],
     f"argument --max-namespace-series: {MAX_TOTAL_SERIES + 1} is more than --max-series ({MAX_TOTAL_SERIES})"),
])
def test_a_bad_bound_is_a_usage_error_naming_the_flag(flags: list[str], said: str, built: list[dict[str, Any]],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["exporter", "run", "--port", "0", *flags])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and said in err and "Traceback" not in err, err
    assert err.startswith("usage: modelrollout exporter run"), err
    assert built == []


def test_the_help_states_the_exporters_own_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["exporter", "run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default {MAX_TOTAL_SERIES}," in text
    assert f"(default {MAX_PENDING_BYTES >> 20}Mi;" in text
    assert f"(default {BODY_READ_SLOTS})" in text
    assert f"(default {MAX_CONNECTIONS})" in text


def exporter_args(*values: str) -> list[str]:
    deployment = next(obj for obj in helm_template(*values)
                      if obj["kind"] == "Deployment" and obj["metadata"]["name"].endswith("-exporter"))
    return deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def test_the_chart_renders_the_bounds_as_exporter_flags() -> None:
    args = exporter_args("--set", "exporter.maxSeries=1000000", "--set", "exporter.maxNamespaceSeries=250000",
                         "--set", "exporter.maxPendingBytes=64Mi", "--set", "exporter.bodyReadSlots=32",
                         "--set", "exporter.maxConnections=2048")
    assert args[-10:] == ["--max-series", "1000000", "--max-namespace-series", "250000",
                          "--max-pending-bytes", "64Mi", "--body-read-slots", "32", "--max-connections", "2048"]
    parsed = build_parser().parse_args(args)
    assert (parsed.max_series, parsed.max_namespace_series, parsed.max_pending_bytes, parsed.body_read_slots,
            parsed.max_connections) == (1_000_000, 250_000, 64 << 20, 32, 2048)
    # Unset (the defaults), or an empty namespace share: no flag, the exporter's own defaults.
    for unset in ((), ("--set", "exporter.maxNamespaceSeries=")):
        assert not [arg for arg in exporter_args(*unset) if arg.startswith("--max-") or arg == "--body-read-slots"]


@pytest.mark.parametrize(("value", "complaint"), [
    ("exporter.maxSeries=-1", "/exporter/maxSeries"),
    ("exporter.maxSeries=0", "/exporter/maxSeries"),
    ("exporter.maxSeries=many", "/exporter/maxSeries"),
    ("exporter.maxNamespaceSeries=0", "/exporter/maxNamespaceSeries"),
    ("exporter.maxNamespaceSeries=quarter", "/exporter/maxNamespaceSeries"),
    ("exporter.maxPendingBytes=8MB", "/exporter/maxPendingBytes"),
    ("exporter.maxPendingBytes=0Mi", "/exporter/maxPendingBytes"),
    ("exporter.maxPendingBytes=-8Mi", "/exporter/maxPendingBytes"),
    ("exporter.bodyReadSlots=0", "/exporter/bodyReadSlots"),
    ("exporter.bodyReadSlots=1.5", "/exporter/bodyReadSlots"),
    ("exporter.maxConnections=0", "/exporter/maxConnections"),
    ("exporter.maxConnections=many", "/exporter/maxConnections"),
])
def test_the_schema_refuses_a_bad_bound(value: str, complaint: str) -> None:
    result = run_tool("helm", "template", RELEASE, str(CHART), "--set", value)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert f"at '{complaint}'" in result.stderr, result.stderr


def test_the_chart_refuses_a_namespace_share_above_the_total() -> None:
    result = run_tool("helm", "template", RELEASE, str(CHART), "--set", "exporter.maxSeries=100",
                      "--set", "exporter.maxNamespaceSeries=101")
    assert result.returncode != 0
    assert "exporter.maxNamespaceSeries (101) must not exceed exporter.maxSeries (100)" in result.stderr, result.stderr
    # Alone, above the exporter's own default: refused here too (the exporter would exit 2 and crash-loop).
    result = run_tool("helm", "template", RELEASE, str(CHART), "--set", "exporter.maxNamespaceSeries=6145")
    assert result.returncode != 0
    assert "exporter.maxNamespaceSeries (6145) must not exceed exporter.maxSeries (6144)" in result.stderr
    for value in ("exporter.maxSeries=1000000000000000", "exporter.bodyReadSlots=1000000000000000"):
        result = run_tool("helm", "template", RELEASE, str(CHART), "--set", value)
        assert result.returncode != 0 and "maximum" in result.stderr, (value, result.stderr)
