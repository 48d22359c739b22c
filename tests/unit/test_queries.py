"""Query templates: values are escaped, so names and labels cannot inject PromQL."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.analysis.queries import (
    QueryScope,
    TemplateError,
    promql_duration,
    promql_string,
    re2_literal,
    recent_samples_query,
    render,
    without_comments,
)

SCOPE = QueryScope(namespace="moderation", target="nsfw", variant="canary", window="300s")


def test_selector_and_window_are_filled() -> None:
    query = render('sum(increase(m{class="nsfw", {{selector}}}[{{window}}]))', SCOPE)
    assert query == ('sum(increase(m{class="nsfw", namespace="moderation", inference_service="nsfw", '
                     'variant="canary"}[300s]))')


def test_plain_variables_become_quoted_literals() -> None:
    assert render("x{ns={{namespace}}, t={{ target }}, v={{variant}}}", SCOPE) == \
        'x{ns="moderation", t="nsfw", v="canary"}'


def test_what_prometheus_refuses_raw_is_escaped() -> None:
    # Prometheus' lexer refuses U+FFFD inside a string ("invalid UTF-8 rune"), and controls are unreadable.
    assert promql_string("a\ufffdb") == '"a\\ufffdb"'
    assert promql_string("\x00\x1b\x7f\x85") == '"\\u0000\\u001b\\u007f\\u0085"'
    assert promql_string("é 😀") == '"é 😀"'


def test_injection_through_a_value_stays_inside_the_string() -> None:
    evil = QueryScope(namespace='a"} or vector(1) #', target="t\\", variant="v\nx", window="5m")
    query = render("sum(m{{{selector}}})", evil)
    assert query == 'sum(m{namespace="a\\"} or vector(1) #", inference_service="t\\\\", variant="v\\nx"})'


GO_SIMPLE_ESCAPES = {"a": b"\a", "b": b"\b", "f": b"\f", "n": b"\n", "r": b"\r", "t": b"\t", "v": b"\v",
                     "\\": b"\\", '"': b'"'}


def go_unquote(literal: str) -> str:
    r"""Decode a double-quoted Go/PromQL string literal the way strconv.Unquote does; ValueError if invalid.

    \xNN and \NNN (octal) give raw bytes, \uNNNN and \UNNNNNNNN give code points (no surrogates), \' is
    refused in a double-quoted literal, and a raw quote or newline cannot appear inside. The bytes must be UTF-8.
    """
    if len(literal) < 2 or literal[0] != '"' or literal[-1] != '"':
        raise ValueError(f"not a double-quoted literal: {literal!r}")
    inner, out, index = literal[1:-1], bytearray(), 0
    while index < len(inner):
        char = inner[index]
        if char in '"\n':
            raise ValueError(f"raw {char!r} inside the literal at {index}")
        if char != "\\":
            out += char.encode("utf-8")
            index += 1
            continue
        if index + 1 >= len(inner):
            raise ValueError("escape sequence not terminated")
        kind = inner[index + 1]
        if kind in GO_SIMPLE_ESCAPES:
            out += GO_SIMPLE_ESCAPES[kind]
            index += 2
        elif kind in "01234567":
            digits = inner[index + 1:index + 4]
            if not re.fullmatch(r"[0-7]{3}", digits) or int(digits, 8) > 255:
                raise ValueError(f"bad octal escape {digits!r}")
            out.append(int(digits, 8))
            index += 4
        elif kind in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[kind]
            digits = inner[index + 2:index + 2 + width]
            if not re.fullmatch(rf"[0-9a-fA-F]{{{width}}}", digits):
                raise ValueError(f"bad \\{kind} escape {digits!r}")
            code = int(digits, 16)
            if kind == "x":
                out.append(code)
            elif code > 0x10FFFF or 0xD800 <= code < 0xE000:
                raise ValueError(f"escape {digits!r} is not a valid code point")
            else:
                out += chr(code).encode("utf-8")
            index += 2 + width
        else:
            raise ValueError(f"unknown escape sequence \\{kind}")
    return out.decode("utf-8")  # strict: a literal spelling invalid UTF-8 does not hold a string


@pytest.mark.parametrize(("literal", "value"), [
    (r'"a\"b\\c"', 'a"b\\c'), (r'"\a\b\f\n\r\t\v"', "\a\b\f\n\r\t\v"), (r'"\x41\101\u00e9\U0001F600"', "AAé😀"),
    (r'"\xc3\xa9"', "é"), ('"ü\x01"', "ü\x01"),
])
def test_the_go_literal_decoder_follows_strconv_unquote(literal: str, value: str) -> None:
    assert go_unquote(literal) == value


@pytest.mark.parametrize("literal", ['"a"b"', '"a\nb"', r'"\q"', r'"\'"', r'"\x4"', r'"\400"', r'"\ud800"',
                                     r'"\xff"', '"a\\"', "'a'"])
def test_the_go_literal_decoder_refuses_what_strconv_unquote_refuses(literal: str) -> None:
    with pytest.raises(ValueError):
        go_unquote(literal)


@settings(deadline=None)  # a loaded CI machine may pause one example past 200 ms
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"])) | st.text(alphabet='"\\\n\r\t\x00\x07\x0b\x7fé\'x'))
def test_any_string_round_trips_through_the_literal(value: str) -> None:
    assert go_unquote(promql_string(value)) == value


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


def test_the_freshness_query_is_built_from_the_escaped_selector_alone() -> None:
    evil = QueryScope(namespace='a"} or vector(1) #', target="t", variant="v", window="5m", versions=('7"})',))
    assert recent_samples_query(evil, 59.5) == ('count(last_over_time({namespace="a\\"} or vector(1) #", '
                                                'inference_service="t", model_version="7\\"})", '
                                                '__name__!~"ALERTS|ALERTS_FOR_STATE|.*:.*"}[60s]))')
    # An arm named by the versions it is not must carry one: `!=` also matches a series without the label.
    others = QueryScope("moderation", "nsfw", "stable", "5m", versions=("7",), other_versions=True)
    assert recent_samples_query(others, 2).endswith('model_version!="7", '
                                                    '__name__!~"ALERTS|ALERTS_FOR_STATE|.*:.*", '
                                                    'model_version!=""}[2s]))')


@pytest.mark.parametrize(("query", "code"), [
    ("up # {{selector}}", "up "),
    ("up # one\n+ down # two", "up \n+ down "),
    ("up # a\r+ b", "up \r+ b"),
    ('up{a="#"} # c', 'up{a="#"} '),
    ("up{a='#\\'#'} # c", "up{a='#\\'#'} "),  # an escaped quote does not end the string
    ('up{a="\\\\"} # c', 'up{a="\\\\"} '),  # an escaped backslash does
    ("up{a=`#\\`} # c", "up{a=`#\\`} "),  # a raw string has no escapes
    ('up{a="#', 'up{a="#'),  # unterminated: kept as it is (Prometheus refuses it)
    ("#", ""),
])
def test_comments_are_cut_out_outside_string_literals(query: str, code: str) -> None:
    assert without_comments(query) == code
