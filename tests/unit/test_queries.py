"""Query templates: values are escaped, so names and labels cannot inject PromQL."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.analysis.queries import (
    QueryScope,
    TemplateError,
    promql_duration,
    promql_string,
    re2_literal,
    render,
)

SCOPE = QueryScope(namespace="moderation", target="nsfw", variant="canary", window="300s")


def test_selector_and_window_are_filled() -> None:
    query = render('sum(increase(m{class="nsfw", {{selector}}}[{{window}}]))', SCOPE)
    assert query == ('sum(increase(m{class="nsfw", namespace="moderation", inference_service="nsfw", '
                     'variant="canary"}[300s]))')


def test_plain_variables_become_quoted_literals() -> None:
    assert render("x{ns={{namespace}}, t={{ target }}, v={{variant}}}", SCOPE) == \
        'x{ns="moderation", t="nsfw", v="canary"}'


def test_injection_through_a_value_stays_inside_the_string() -> None:
    evil = QueryScope(namespace='a"} or vector(1) #', target="t\\", variant="v\nx", window="5m")
    query = render("sum(m{{{selector}}})", evil)
    assert query == 'sum(m{namespace="a\\"} or vector(1) #", inference_service="t\\\\", variant="v\\nx"})'


@given(st.text())
def test_any_string_round_trips_through_the_literal(value: str) -> None:
    literal = promql_string(value)
    assert literal.startswith('"') and literal.endswith('"')
    inner = literal[1:-1]
    # No unescaped quote can end the literal early.
    index = 0
    while index < len(inner):
        if inner[index] == "\\":
            index += 2
            continue
        assert inner[index] not in '"\n'
        index += 1
    decoded = inner.encode().decode("unicode_escape").encode("latin-1").decode("utf-8") if value.isascii() else None
    if decoded is not None:
        assert decoded == value


@pytest.mark.parametrize("window", ["5 m", "1m) or vector(1", "", "-5m", "5m\n"])
def test_bad_window_is_refused(window: str) -> None:
    with pytest.raises(TemplateError, match="not a PromQL duration"):
        render("m[{{window}}]", QueryScope("n", "t", "canary", window))


def test_unknown_variable_is_refused() -> None:
    with pytest.raises(TemplateError, match="unknown template variable"):
        render("m{{{evil}}}", SCOPE)


def test_bad_label_name_is_refused() -> None:
    scope = QueryScope("n", "t", "canary", "5m", extra_matchers=(('x"', "y"),))
    with pytest.raises(TemplateError, match="invalid label name"):
        render("m{{{selector}}}", scope)


def test_duration_rounds_up_to_whole_seconds() -> None:
    assert promql_duration(0.2) == "1s"
    assert promql_duration(299.1) == "300s"


def test_a_version_selects_its_own_predictions_or_every_other_versions() -> None:
    candidate = QueryScope("moderation", "nsfw", "canary", "5m", versions=('7"} or vector(1) #',))
    assert candidate.selector() == ('namespace="moderation", inference_service="nsfw", '
                                    'model_version="7\\"} or vector(1) #"')
    others = QueryScope("moderation", "nsfw", "stable", "5m", versions=("7",), other_versions=True)
    assert others.selector() == 'namespace="moderation", inference_service="nsfw", model_version!="7"'
    assert render("{{variant}}", others) == '"stable"'  # the variant stays available to templates
    baseline = QueryScope("moderation", "nsfw", "stable", "5m", versions=("6", "un.known|x"))
    assert baseline.selector().endswith(r'model_version=~"6|un\\.known\\|x"')  # RE2-escaped, then quoted
    assert re.fullmatch(re2_literal("a.b|c(d)"), "a.b|c(d)") and not re.fullmatch(re2_literal("a.b"), "axb")
