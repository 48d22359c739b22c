"""The chart's values schema names the field at fault for a bad map key, and takes only real CIDRs (review s37deploy).

Helm 3.22 reports a `propertyNames` failure at an unrelated, changing field, so the label and annotation maps check
their keys with `patternProperties` and `additionalProperties: false`, which Helm reports at the map.
"""
from __future__ import annotations

import json

import pytest

from tests.unit.test_deploy_render import CHART, RELEASE, run_tool

SCHEMA_REFUSED = "values don't meet the specifications of the schema"
EGRESS_PEER = "networkPolicy.controllerEgress"
EGRESS_PEER_PATH = "/networkPolicy/controllerEgress/0/to/0"

# Every label or annotation map of the values: (the value's dotted path, whether it takes annotation names).
MAPS = [("controller.nodeSelector", False), ("controller.podAnnotations", True),
        ("exporter.nodeSelector", False), ("exporter.podAnnotations", True),
        ("monitoring.serviceMonitor.labels", False), ("monitoring.prometheusRule.labels", False),
        ("monitoring.dashboard.labels", False), ("networkPolicy.controllerEgress[0].namespaceSelector", False),
        ("networkPolicy.controllerEgress[0].podSelector", False)]


def set_map(dotted: str, value: dict[str, str]) -> tuple[tuple[str, str], str]:
    """The --set-json argument putting `value` at `dotted`, and the schema's JSON pointer to that map."""
    if dotted.startswith(EGRESS_PEER):
        selector = dotted.rsplit(".", 1)[1]
        peer = {"to": [{selector: {"matchLabels": value}}]}
        return ("--set-json", f"{EGRESS_PEER}={json.dumps([peer])}"), f"{EGRESS_PEER_PATH}/{selector}/matchLabels"
    return ("--set-json", f"{dotted}={json.dumps(value)}"), "/" + dotted.replace(".", "/")


def template(*args: str) -> tuple[int, str]:
    result = run_tool("helm", "template", RELEASE, str(CHART), *args)
    return result.returncode, result.stderr


@pytest.mark.parametrize("dotted", [dotted for dotted, _ in MAPS])
@pytest.mark.parametrize("bad", ["bad key", "-bad", "a/b/c", "example.com/", "x" * 64])
def test_a_bad_map_key_is_refused_at_that_map(dotted: str, bad: str) -> None:
    args, pointer = set_map(dotted, {bad: "v"})
    returncode, stderr = template(*args)
    assert returncode != 0
    assert SCHEMA_REFUSED in stderr
    assert f"at '{pointer}': additional properties '{bad}' not allowed" in stderr, stderr


@pytest.mark.parametrize(("dotted", "annotations"), MAPS)
def test_good_map_keys_are_accepted(dotted: str, annotations: bool) -> None:
    good = {"example.com/x": "a", "app.kubernetes.io/name": "b", "team": "c", "A_b-c.9": "d",
            "a-b.c-d/" + "n" * 63: "e", ("p" * 60 + ".") * 4 + "q/k": "f"}
    if annotations:
        good["Example.com/Owner"] = "g"
    args, _ = set_map(dotted, good)
    returncode, stderr = template(*args)
    assert returncode == 0, stderr


# Edges of the Kubernetes qualified-name rule, and whether Kubernetes takes the key: a map takes exactly what a
# matchExpressions key (labelName) takes.
KEY_CANDIDATES = [("a", True), ("A", True), ("_a", False), ("a_", False), ("a.b_c-D", True), ("a" * 63, True),
                  ("a" * 64, False), ("a..b/x", False), ("a.-b/x", False), ("-a/x", False), ("a-/x", False),
                  ("A.com/x", False), ("b" * 253 + "/x", True), ("b" * 254 + "/x", False), ("/x", False),
                  ("a/", False), ("a/b/c", False), ("a b", False)]


@pytest.mark.parametrize(("key", "kubernetes_takes"), KEY_CANDIDATES)
def test_a_label_map_takes_exactly_the_label_names_a_selector_key_takes(key: str, kubernetes_takes: bool) -> None:
    expression = {"key": key, "operator": "Exists"}
    peer = {"to": [{"podSelector": {"matchExpressions": [expression]}}]}
    by_key, key_stderr = template("--set-json", f"{EGRESS_PEER}={json.dumps([peer])}")
    map_args, _ = set_map("controller.nodeSelector", {key: "v"})
    by_map, map_stderr = template(*map_args)
    assert (by_key == 0) == kubernetes_takes, key_stderr
    assert (by_map == 0) == kubernetes_takes, map_stderr


def set_cidr(cidr: str) -> tuple[str, str]:
    return "--set-json", f"{EGRESS_PEER}={json.dumps([{'to': [{'ipBlock': {'cidr': cidr}}]}])}"


@pytest.mark.parametrize("cidr", ["10.0.0.0/99", "999.1.1.1/8", "::::/200", "10.0.0.0/33", "256.0.0.0/8",
                                  "10.0.0/8", "10.0.0.0", "010.0.0.0/8", "10.0.0.0/08", "fd00::/129",
                                  "1:2:3:4:5:6:7:8:9/64", "2001:db8:::/32", "2001::db8::1/64", "12345::/16",
                                  "g::/8", "::/"])
def test_an_out_of_range_or_malformed_cidr_is_refused_at_the_field(cidr: str) -> None:
    returncode, stderr = template(*set_cidr(cidr))
    assert returncode != 0
    assert SCHEMA_REFUSED in stderr
    assert f"at '{EGRESS_PEER_PATH}/ipBlock/cidr'" in stderr, stderr


@pytest.mark.parametrize("cidr", ["10.0.0.0/8", "0.0.0.0/0", "192.168.1.255/32", "255.255.255.255/32",
                                  "fd00::/8", "::/0", "2001:db8::/32", "::1/128", "fe80::1:2/64",
                                  "2001:0DB8:0:0:0:0:0:1/128", "1:2:3:4:5:6:7::/112", "::2:3:4:5:6:7:8/128"])
def test_common_cidrs_are_accepted(cidr: str) -> None:
    returncode, stderr = template(*set_cidr(cidr))
    assert returncode == 0, stderr
