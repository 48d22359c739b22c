"""The exporter's memory bounds are settable: `exporter run` flags, and the chart's exporter values that render them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_deploy_render import CHART, RELEASE, helm_template, run_tool

from controller.cli.main import build_parser, main
from controller.exporter import server
from controller.exporter.connections import MAX_CONNECTIONS
from controller.exporter.events import DecodeOptions
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
    # The least that holds two back-to-back rollouts' 5 model versions of the 2 classes and their unreadable answers
    # in one namespace (see the refusal below).
    (["--max-series", "60"], (60, 15, MAX_PENDING_BYTES, BODY_READ_SLOTS, MAX_CONNECTIONS)),
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


def many_classes(count: int) -> str:
    return ",".join(f"c{i}" for i in range(count))


@pytest.mark.parametrize(("classes", "flags", "needed"), [
    # 1000 classes: a namespace's default share (1536) held one model version, so every canary was TooManySeries.
    # Each version's classes and its unreadable answers (s31): 1001 series.
    (1000, [], ("5005 in one namespace", "--max-series to at least 20020", "--max-namespace-series to at least 5005")),
    # 600: stable and canary fit (1202), the promoted version (1803) did not.
    (600, [], ("3005 in one namespace", "--max-series to at least 12020", "--max-namespace-series to at least 3005")),
    # 512: one rollout fits the default share (1536); the next one within a day's canary did not (s30r2b).
    (512, [], ("2565 in one namespace", "--max-series to at least 10260", "--max-namespace-series to at least 2565")),
    (1000, ["--max-series", "20020", "--max-namespace-series", "5004"],
     ("5005 in one namespace", "--max-namespace-series is 5004: set it to at least 5005")),
    # Two classes and the unreadable series, 5 times: 15, over a quarter of 56 (s31: 10 was enough before).
    (2, ["--max-series", "56"], ("15 in one namespace", "--max-series to at least 60")),
])
def test_exporter_run_refuses_classes_a_rollout_cannot_be_counted_in(
        classes: int, flags: list[str], needed: tuple[str, ...], built: list[dict[str, Any]],
        capsys: pytest.CaptureFixture[str]) -> None:
    """Review s30inference: each model version takes a series per configured class, so a class list its namespace's
    share cannot hold three times over left a rollout's canary or promoted version uncounted for good (TooManySeries,
    never freed after 24 h idle); review s30r2b: five times, or the next rollout within a day of a promotion finds
    the first's three versions still in place and its canary uncounted. Refused at startup, naming the flags and the
    numbers that would hold it."""
    with pytest.raises(SystemExit) as exited:
        main(["exporter", "run", "--port", "0", "--class-names", many_classes(classes), *flags])
    said = " ".join(str(exited.value.code).split())
    assert said.startswith(f"error: --class-names lists {classes} classes: two back-to-back rollouts' 5 model "
                           "versions (stable, each canary and each promoted one, kept until idle for 24 h) need a "
                           "series per class and one for unreadable answers"), said
    for words in needed:
        assert words in said, said
    assert "memory limit" in said
    assert built == []  # nothing listens


def test_exporter_run_counts_many_classes_with_bounds_that_hold_them(built: list[dict[str, Any]]) -> None:
    assert main(["exporter", "run", "--port", "0", "--class-names", many_classes(1000), "--max-series", "20020"]) == 0
    assert main(["exporter", "run", "--port", "0", "--class-names", many_classes(1000),
                 "--max-series", "5005", "--max-namespace-series", "5005"]) == 0
    assert [(call["max_total_series"], call["max_namespace_series"]) for call in built] == [(20020, 5005), (5005, 5005)]
    # At the bound, a second rollout the same day is counted (review s30r2b LOW 3): stable, canary, the canary
    # promoted, then the next canary and its promotion, while the first's versions keep their places (idle < 24 h).
    exporter = server.PredictionExporter(DecodeOptions(tuple(f"c{i}" for i in range(1000))),
                                         max_total_series=5005, max_namespace_series=5005)
    row = [0.0] * 1000
    row[3] = 1.0
    headers = {"Ce-Id": "e", "Ce-Type": "org.kubeflow.serving.inference.response", "Ce-Specversion": "1.0",
               "Ce-Source": "s", "Ce-Namespace": "team-a", "Ce-Inferenceservicename": "isvc"}
    versions = (("1", "stable"), ("2", "canary"), ("2", "stable"), ("3", "canary"), ("3", "stable"), ("4", "canary"))
    outcomes = []
    for number, (version, variant) in enumerate(versions):
        body = json.dumps({"predictions": [row]}).encode()
        outcomes.append(exporter.handle({**headers, "Ce-Id": f"e{number}"}, body,
                                        f"model_version={version}&variant={variant}"))
    # A third rollout the same day waits for the first's versions to idle: the bound is exactly two.
    assert outcomes == ["counted"] * 5 + ["malformed"], outcomes


def test_the_chart_refuses_classes_a_namespace_share_cannot_hold() -> None:
    names = "{" + many_classes(1000) + "}"
    result = run_tool("helm", "template", RELEASE, str(CHART), "--set", f"exporter.classNames={names}")
    assert result.returncode != 0
    assert ("exporter.classNames lists 1000 classes: two back-to-back rollouts' 5 model versions need a series per "
            "class and one for unreadable answers, 5005 series in one namespace, over the namespace share of 1536"
            ) in result.stderr, result.stderr
    # 512 classes fill the default share with one rollout's 3 versions: the next rollout's would not fit.
    result = run_tool("helm", "template", RELEASE, str(CHART), "--set", f"exporter.classNames={{{many_classes(512)}}}")
    assert result.returncode != 0 and "2565 series in one namespace" in result.stderr, result.stderr
    # 307 classes held before the unreadable series (5 x 307 = 1535); 5 x 308 = 1540 no longer does (s31).
    result = run_tool("helm", "template", RELEASE, str(CHART), "--set", f"exporter.classNames={{{many_classes(307)}}}")
    assert result.returncode != 0 and "1540 series in one namespace" in result.stderr, result.stderr
    args = exporter_args("--set", f"exporter.classNames={names}", "--set", "exporter.maxSeries=20020")
    assert args[args.index("--max-series") + 1] == "20020"
    args = exporter_args("--set", f"exporter.classNames={names}", "--set", "exporter.maxSeries=5005",
                         "--set", "exporter.maxNamespaceSeries=5005")
    assert args[args.index("--max-namespace-series") + 1] == "5005"
    args = exporter_args("--set", f"exporter.classNames={{{many_classes(306)}}}")  # 5 x 307 = 1535: the default holds
    assert args[args.index("--class-names") + 1].startswith("c0,c1,")
