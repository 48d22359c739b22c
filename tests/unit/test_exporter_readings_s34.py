"""Review s34exporter: readings the exporter refused although the answer was readable, and class names it merged.

1. A Seldon response whose one column is named (`class_names = ["label"]`) and holds labels or integer class indexes
   was refused as AmbiguousScore from the column's name alone: only a score in it is ambiguous (the first class's
   probability or the second's), so only a score row is refused; labels and indexes are read as under `t:0`.
2. A V2 binary tensor body (no Inference-Header-Content-Length) whose binary part is all JSON whitespace bytes (a
   UINT8 class index 9, 10, 13 or 32) parsed as JSON whole: the binary part was never attached (BadTensor).
3. Repeated `--class-names` entries were accepted, merging two classes: refused at start, naming the entry, by the
   CLI and by server.run alike; the chart's values schema refuses them too.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_deploy_render import CHART, RELEASE, run_tool
from test_exporter_flags import built  # noqa: F401 (the fixture: nothing listens)

from controller.cli.main import main
from controller.exporter import server
from controller.exporter.events import (
    MAX_PREDICTIONS_PER_EVENT,
    DecodeOptions,
    MalformedEvent,
    parse_cloudevent,
    predicted_classes,
    read_classes,
)
from controller.exporter.server import PredictionExporter

TWO = DecodeOptions(("safe", "nsfw"))
RESPONSE = "org.kubeflow.serving.inference.response"
UNREADABLE = "modelrollout_unreadable_predictions_total"
PREDICTIONS = "modelrollout_predictions_total"
CANARY = {"namespace": "moderation", "inference_service": "nsfw", "variant": "canary", "model_version": "7"}


def seldon(name: str, rows: list[Any]) -> dict[str, Any]:
    return {"data": {"names": [name], "ndarray": rows}}


def reasons(body: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    rows = read_classes(body, TWO)
    return rows.read, tuple(refusal.reason for refusal in rows.unread)


@pytest.mark.parametrize("name", ["label", "class_id", "safe", "prediction"])
@pytest.mark.parametrize("rows", [["nsfw", "safe"], [["nsfw"], ["safe"]], [1, 0], [[1], [0]]])
def test_one_named_column_of_labels_or_indexes_is_read_as_an_unnamed_one(name: str, rows: list[Any]) -> None:
    assert reasons(seldon(name, rows)) == (("nsfw", "safe"), ())
    assert reasons(seldon(name, rows)) == reasons(seldon("t:0", rows))


def test_one_named_tensor_column_of_indexes_is_read() -> None:
    body = {"data": {"names": ["class_id"], "tensor": {"shape": [2, 1], "values": [1, 0]}}}
    assert reasons(body) == (("nsfw", "safe"), ())


@pytest.mark.parametrize("rows", [[[0.9]], [0.9], [[1.0]], [[0.0]], [[0.1, 0.9]]])
def test_a_score_in_one_column_named_other_than_the_second_class_is_still_ambiguous(rows: list[Any]) -> None:
    """A score named "safe" (or anything but the second class) may be the first class's probability: read as the
    second's it would count inverted, and 1.0 read as index 1 would too."""
    with pytest.raises(MalformedEvent, match="not the second class name") as caught:
        predicted_classes(seldon("safe", rows), TWO)
    assert caught.value.reason == "AmbiguousScore"


@pytest.mark.parametrize("rows", [["nsfw", [0.9], 0], [[0.02], [1], [0.97], [0.01]], [[1], [0.5]]],
                         ids=["labels-beside-a-score", "whole-p-safe", "index-then-score"])
def test_a_named_column_holding_any_score_is_refused_whole(rows: list[Any]) -> None:
    """Any score in the column makes its whole numbers scores too: p_safe's 1 read as index 1 counted nsfw
    (review s34r3)."""
    with pytest.raises(MalformedEvent, match="not the second class name") as caught:
        read_classes(seldon("p_safe", rows), TWO)  # the whole event: no row of it read as a class
    assert caught.value.reason == "AmbiguousScore"


@pytest.mark.parametrize(("body", "reason"), [
    (seldon("p_safe", [1] * MAX_PREDICTIONS_PER_EVENT + [0.5]), "TooLarge"),
    ({"data": {"names": ["p_safe"], "tensor": {"shape": [2, 1], "values": [[0.5], [[1]]]}}}, "BadTensor"),
    ({"data": {"names": ["p_safe"], "tensor": {"shape": [3, 1], "values": [0.5]}}}, "BadTensor"),
], ids=["too-many-rows", "ragged", "shape-mismatch"])
def test_size_and_shape_are_refused_before_a_score_in_a_named_column(body: dict[str, Any], reason: str) -> None:
    # A set-up fault (TooLarge) never counts against the model version, as AmbiguousScore would (review s34r4).
    with pytest.raises(MalformedEvent) as caught:
        read_classes(body, TWO)
    assert caught.value.reason == reason


def test_one_named_label_column_is_counted_not_unreadable() -> None:
    exporter = PredictionExporter(TWO)
    headers = {"Ce-Id": "e1", "Ce-Type": "io.seldon.serving.inference.response", "Ce-Specversion": "1.0",
               "Ce-Source": "test", "Ce-Namespace": "moderation", "Ce-Inferenceservicename": "nsfw",
               "Content-Type": "application/json"}
    body = json.dumps(seldon("label", ["nsfw", "safe"])).encode()
    assert exporter.handle(headers, body, "variant=canary&model_version=7") == "counted"
    registry = exporter.metrics.registry
    assert registry.get_sample_value(PREDICTIONS, {**CANARY, "class": "nsfw"}) == 1
    assert registry.get_sample_value(PREDICTIONS, {**CANARY, "class": "safe"}) == 1
    assert registry.get_sample_value(UNREADABLE, CANARY) == 0


def binary_v2(raw: bytes, datatype: str = "UINT8") -> bytes:
    header = {"model_name": "m", "outputs": [{"name": "class", "datatype": datatype, "shape": [len(raw)],
                                              "parameters": {"binary_data_size": len(raw)}}]}
    return json.dumps(header).encode() + raw


def binary_event(body: bytes) -> Any:
    headers = {"ce-id": "e1", "ce-type": RESPONSE, "ce-specversion": "1.0", "ce-source": "test",
               "ce-namespace": "moderation", "ce-inferenceservicename": "nsfw",
               "content-type": "application/octet-stream"}
    return parse_cloudevent(headers, body, max_bytes=1 << 20)


NAMES_40 = DecodeOptions(tuple(f"c{i}" for i in range(40)))


@pytest.mark.parametrize("index", [9, 10, 11, 13, 32, 33])
def test_a_binary_class_index_that_is_a_json_whitespace_byte_is_read(index: int) -> None:
    assert read_classes(binary_event(binary_v2(bytes([index]))).data, NAMES_40).read == (f"c{index}",)


def test_a_binary_part_all_whitespace_bytes_is_read_whole() -> None:
    raw = bytes([10, 32, 9, 13, 10])
    assert read_classes(binary_event(binary_v2(raw)).data, NAMES_40).read == ("c10", "c32", "c9", "c13", "c10")


def test_a_json_body_with_trailing_whitespace_and_no_binary_output_is_still_json() -> None:
    body = json.dumps({"outputs": [{"name": "class", "datatype": "INT64", "shape": [1], "data": [1]}]}).encode()
    assert read_classes(binary_event(body + b"\n \r\t").data, NAMES_40).read == ("c1",)


def test_declared_binary_bytes_that_are_missing_are_still_bad_tensor() -> None:
    header = {"outputs": [{"name": "class", "datatype": "UINT8", "shape": [2],
                           "parameters": {"binary_data_size": 2}}]}
    with pytest.raises(MalformedEvent) as caught:
        read_classes(binary_event(json.dumps(header).encode() + b"\n").data, NAMES_40)
    assert caught.value.reason == "BadTensor"


def refusal(listed: str, by_cli: bool, capsys: pytest.CaptureFixture[str]) -> str:
    """What `exporter run --class-names <listed>` (or server.run with the names the CLI splits) exits with."""
    with pytest.raises(SystemExit) as exited:
        if by_cli:
            main(["exporter", "run", "--port", "0", "--class-names", listed])
        else:
            server.run("127.0.0.1", 0, DecodeOptions(tuple(n.strip() for n in listed.split(","))))
    if by_cli:
        assert exited.value.code == 2  # argparse's usage error
        return " ".join(capsys.readouterr().err.split())
    assert str(exited.value).startswith("error: ")  # as run() refuses a class budget the series bounds cannot hold
    return str(exited.value)


@pytest.mark.parametrize("by_cli", [True, False])
@pytest.mark.parametrize(("listed", "complaint"), [
    ("safe,nsfw,nsfw", "entry 3 ('nsfw') repeats entry 2"), ("safe, nsfw ,suggestive,nsfw", "entry 4 ('nsfw') "
                                                                                             "repeats entry 2"),
    ("a,a", "entry 2 ('a') repeats entry 1"), ("safe,,nsfw", "entry 2 is empty (or only whitespace)")])
def test_a_repeated_class_name_is_refused_naming_it_by_the_cli_and_by_run(
        listed: str, complaint: str, by_cli: bool, built: list,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    said = refusal(listed, by_cli, capsys)
    assert f"--class-names: {complaint}: list each class once, in the model's output order" in said, said
    assert built == []  # no exporter was made


def test_the_values_schema_refuses_a_repeated_class_name() -> None:
    result = run_tool("helm", "template", RELEASE, str(CHART), "--set-json",
                      'exporter.classNames=["safe","nsfw","nsfw"]')
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert "/exporter/classNames" in result.stderr, result.stderr
    assert run_tool("helm", "template", RELEASE, str(CHART), "--set-json",
                    'exporter.classNames=["safe","suggestive","nsfw"]').returncode == 0
