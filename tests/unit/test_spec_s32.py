"""A proportion whose events is the same query as its total can never fail: parse_spec refuses it, as the CRD does
(review s32crd)."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.api import SpecError, parse_spec
from controller.api.spec import PROMQL_TOKEN

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "modelrollout.io_modelrollouts.yaml"
SAMPLE = REPO / "examples" / "nsfw-classifier.yaml"
TOTAL = "sum(increase(modelrollout_predictions_total{ {{selector}} }[{{window}}]))"


def _with(events: str, total: str = TOTAL) -> dict[str, Any]:
    spec: dict[str, Any] = copy.deepcopy(yaml.safe_load(SAMPLE.read_text())["spec"])
    spec["analysis"]["metrics"][0]["proportion"].update(events=events, total=total)
    return spec


@pytest.mark.parametrize("events", [
    TOTAL,
    " " + TOTAL + "\n",
    "sum (increase (modelrollout_predictions_total{\t{{selector}}\r\n}[ {{window}} ]))",
    "sum(increase(modelrollout_predictions_total{{{selector}}}[{{window}}]))",
], ids=["verbatim", "padded", "spread-out", "packed"])
def test_events_the_same_query_as_total_is_refused_naming_events(events: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(_with(events))
    assert caught.value.path == "spec.analysis.metrics[0].proportion.events"
    assert "another query than total" in caught.value.problem and "never fail" in caught.value.problem


def test_the_limits_beside_proportion_do_not_hide_it() -> None:
    spec = _with(TOTAL)
    metric = spec["analysis"]["metrics"][0]
    metric["maxRate"] = metric["proportion"].pop("maxRate")
    with pytest.raises(SpecError, match=r"^spec\.analysis\.metrics\[0\]\.proportion\.events: must be another query"):
        parse_spec(spec)


@pytest.mark.parametrize(("events", "total"), [
    ('sum(x{class="nsfw", {{selector}}})', "sum(x{ {{selector}} })"),  # the sample's pair
    ('sum(x{a="b c", {{selector}}})', 'sum(x{a="bc", {{selector}}})'),  # whitespace inside a literal counts
    ("sum(x{a=`b\tc`, {{selector}}})", "sum(x{a=`bc`, {{selector}}})"),
    ("sum(x{ {{selector}} }) # events", "sum(x{ {{selector}} }) # total"),  # a comment stays a token (the CRD's cost)
    ("sum(x{ {{selector}} })", "sum(x{ {{variant}} })"),
    ("sum(x{ {{selector}} })", "count(x{ {{selector}} })"),
])
def test_two_different_queries_are_accepted(events: str, total: str) -> None:
    proportion = parse_spec(_with(events, total)).analysis.metrics[0].proportion
    assert proportion is not None and (proportion.events, proportion.total) == (events, total)


def _crd_rule() -> dict[str, str]:
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    proportion = spec["properties"]["analysis"]["properties"]["metrics"]["items"]["properties"]["proportion"]
    [rule] = proportion["x-kubernetes-validations"]
    return dict(rule)


def test_the_crd_rule_tokenizes_with_the_parsers_expression_and_names_events() -> None:
    rule = _crd_rule()
    tokens = f"findAll(r'{PROMQL_TOKEN.pattern}')"
    assert rule["rule"] == f"self.events.{tokens} != self.total.{tokens}"
    assert rule["fieldPath"] == ".events"
    assert rule["message"].startswith("spec.analysis.metrics[].proportion.events must be another query than total")


def _lexed(query: str) -> list[str]:
    """PromQL's lexer by hand: literals whole (a backslash escapes the next character, except in `...`), a comment
    to a line break, whitespace skipped, any other character a token of its own."""
    tokens: list[str] = []
    i = 0
    while i < len(query):
        char = query[i]
        if char in " \t\n\r":
            i += 1
        elif char in "\"'`":
            end = i + 1
            while end < len(query) and query[end] != char:
                if query[end] == "\\" and char != "`":
                    if end + 1 == len(query):
                        break  # a lone backslash at the end stays outside the unclosed literal
                    end += 1
                end += 1
            end = min(end + 1, len(query)) if end < len(query) and query[end] == char else end
            tokens.append(query[i:end])
            i = end
        elif char == "#":
            end = min([at for at in (query.find("\n", i), query.find("\r", i)) if at >= 0], default=len(query))
            tokens.append(query[i:end])
            i = end
        else:
            tokens.append(char)
            i += 1
    return tokens


def test_the_token_expression_reads_queries_as_the_lexer_does() -> None:
    parts = ["#", '"', "'", "`", "\\", "\n", "\r", " ", "\t", "a", "{", "}", "\f"]
    rng = random.Random(32)
    for _ in range(20000):
        query = "".join(rng.choice(parts) for _ in range(rng.randint(0, 10)))
        assert PROMQL_TOKEN.findall(query) == _lexed(query), repr(query)
