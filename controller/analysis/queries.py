"""PromQL templates filled only with escaped values: user data never reaches a query raw."""

from __future__ import annotations

import re
from dataclasses import dataclass

TEMPLATE_VARIABLE = re.compile(r"\{\{([^{}]*)\}\}")
KNOWN_VARIABLES = ("selector", "window", "namespace", "target", "variant")
# Prometheus' own duration syntax; anything else is refused rather than pasted.
PROMQL_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# The exporter's counter as Prometheus names it (controller.exporter.server.PREDICTIONS_METRIC) and its class label:
# the runner's own checks read it, whatever the templates count.
PREDICTIONS_SERIES = "modelrollout_predictions_total"
CLASS_LABEL = "class"


class TemplateError(ValueError):
    """A query template or a value that cannot be rendered safely."""


# Besides the quote and the backslash: control characters, and U+FFFD, which Prometheus' lexer refuses raw in
# a string ("invalid UTF-8 rune": it cannot tell it from a decoding error) but takes as \ufffd.
_ESCAPED = re.compile(r'[\\"\x00-\x1f\x7f-\x9f\ufffd]')
_SHORT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def promql_string(value: str) -> str:
    """A double-quoted PromQL string literal (Go escaping) that always holds exactly `value`."""
    escaped = _ESCAPED.sub(lambda m: _SHORT_ESCAPES.get(m.group(), f"\\u{ord(m.group()):04x}"), value)
    return f'"{escaped}"'


def re2_literal(value: str) -> str:
    """`value` as a regular expression (RE2, which Prometheus uses) matching exactly itself."""
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", value)


def promql_duration(seconds: float) -> str:
    """A PromQL range from seconds, rounded up to whole seconds (at least 1s)."""
    return f"{max(1, int(-(-seconds // 1)))}s"


@dataclass(frozen=True)
class QueryScope:
    """What a query is about: one variant of one served model, over one window.

    With `versions`, {{selector}} picks predictions by the model version that made them instead of by the
    variant label: those versions' own (the candidate; the bake's baseline), or with `other_versions` every
    other one (whoever served beside the candidate). The version is what the serving revision itself reports,
    so it stays right when the candidate's revision is promoted and when no variant label can be had.
    """

    namespace: str
    target: str
    variant: str
    window: str
    versions: tuple[str, ...] = ()
    other_versions: bool = False
    # Label names of the series being queried (the exporter's by default).
    namespace_label: str = "namespace"
    target_label: str = "inference_service"
    variant_label: str = "variant"
    version_label: str = "model_version"
    extra_matchers: tuple[tuple[str, str], ...] = ()

    def selector(self) -> str:
        matchers = [(self.namespace_label, "=", self.namespace), (self.target_label, "=", self.target)]
        if not self.versions:
            matchers.append((self.variant_label, "=", self.variant))
        elif len(self.versions) == 1:
            matchers.append((self.version_label, "!=" if self.other_versions else "=", self.versions[0]))
        else:
            alternatives = "|".join(re2_literal(version) for version in self.versions)
            matchers.append((self.version_label, "!~" if self.other_versions else "=~", alternatives))
        matchers += [(name, "=", value) for name, value in self.extra_matchers]
        for name, _, _ in matchers:
            if not LABEL_NAME.fullmatch(name):
                raise TemplateError(f"invalid label name {name!r}")
        return ", ".join(f"{name}{op}{promql_string(value)}" for name, op, value in matchers)


# Series a rule writes, not a scrape: recording rules (named level:metric:operations, Prometheus's convention) and
# alerts. Evaluated from the range they read, they go on for minutes (a day, for an avg_over_time[1d]) after the
# series they aggregate stop, so they never tell that an arm is still reported (review s33judges).
RULE_SERIES = "ALERTS|ALERTS_FOR_STATE|.*:.*"


def recent_samples_query(scope: QueryScope, seconds: float, *, rules_count: bool = False) -> str:
    """How many of the scope's series have a sample within `seconds` of the evaluation time: whether an arm is
    still reported, apart from its counts. Built from the escaped selector alone, so no template text reaches
    it; last_over_time keeps the metric name, so a counter and its _created sibling stay apart. Rules' series
    (RULE_SERIES) are left out unless `rules_count` (a threshold may judge a recording rule's value: its own
    series is then its source), and an arm named by the versions it is not must carry a version: a negated
    matcher also matches a series with no version label (the shipped rules aggregate it away)."""
    matchers = [scope.selector()] if rules_count else [scope.selector(), f"__name__!~{promql_string(RULE_SERIES)}"]
    if scope.versions and scope.other_versions:
        matchers.append(f'{scope.version_label}!=""')
    return f"count(last_over_time({{{', '.join(matchers)}}}[{promql_duration(seconds)}]))"


def prediction_series_queries(scope: QueryScope) -> tuple[str, str]:
    """How many of the scope's prediction series Prometheus holds now, and how many of the exporter's label sets
    (namespace, service, variant, version, class) among them. More series than label sets: the exporter is read
    twice (two scrape jobs, or an HA pair read without deduplication), the copies apart only in a label the scrape
    added, and sum() counts every prediction twice. An instant selector, not a range: it honours staleness markers,
    so a replaced exporter pod's series are gone with its target, not counted beside its successor's."""
    series, by_label_set = _by_label_set(scope)
    return f"count({series})", f"count({by_label_set})"


def fewest_copies_query(scope: QueryScope, step_seconds: float | None = None) -> str:
    """The fewest copies of any one of the scope's label sets: when it times the label sets equals the series,
    every label set is read that many times, so the counts can be divided by it. With a step: the fewest at any step
    of the scope's window, since a copy whose scrape started mid-window holds only part of it (dividing then weights
    that part twice: a class mix that changes over the window would read as a different rate). There, a copy counts
    only with a sample within two steps: a copy that stopped without a staleness marker (an HA replica down, a
    Prometheus restart) would otherwise look present for the 5-minute lookback."""
    series, by_label_set = _by_label_set(scope)
    if step_seconds is None:
        return f"min({by_label_set})"
    if not PROMQL_DURATION.fullmatch(scope.window):
        raise TemplateError(f"window {scope.window!r} is not a PromQL duration")
    fresh = by_label_set.replace(f"({series})", f"(last_over_time({series}[{promql_duration(2 * step_seconds)}]))")
    return f"min_over_time((min({fresh}))[{scope.window}:{promql_duration(step_seconds)}])"


def _by_label_set(scope: QueryScope) -> tuple[str, str]:
    """The scope's prediction series, and their copies counted per exporter label set."""
    labels = (scope.namespace_label, scope.target_label, scope.variant_label, scope.version_label, CLASS_LABEL)
    if bad := next((name for name in labels if not LABEL_NAME.fullmatch(name)), None):
        raise TemplateError(f"invalid label name {bad!r}")
    series = f"{PREDICTIONS_SERIES}{{{scope.selector()}}}"
    return series, f"count by ({', '.join(labels)}) ({series})"


def predictions_query(scope: QueryScope) -> str:
    """The scope's predictions counted over its window: whether that arm served at all."""
    if not PROMQL_DURATION.fullmatch(scope.window):
        raise TemplateError(f"window {scope.window!r} is not a PromQL duration")
    return f"sum(increase({PREDICTIONS_SERIES}{{{scope.selector()}}}[{scope.window}]))"


def without_comments(query: str) -> str:
    """The query with its `#` comments cut out; a `#` inside a string literal ("...", '...' with backslash
    escapes, or `...` raw) is kept, as PromQL's lexer reads it."""
    kept: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(query):
        char = query[i]
        if quote is not None:
            kept.append(char)
            if char == "\\" and quote != "`" and i + 1 < len(query):
                kept.append(query[i + 1])
                i += 1
            elif char == quote:
                quote = None
        elif char in "\"'`":
            quote = char
            kept.append(char)
        elif char == "#":  # to the end of the line, which Prometheus' lexer ends at "\r" too
            ends = [at for at in (query.find("\n", i), query.find("\r", i)) if at >= 0]
            if not ends:
                break
            i = min(ends)
            continue
        else:
            kept.append(char)
        i += 1
    return "".join(kept)


def template_variables(template: str) -> list[str]:
    return [match.strip() for match in TEMPLATE_VARIABLE.findall(template)]


def render(template: str, scope: QueryScope) -> str:
    """Fill {{selector}}, {{window}}, {{namespace}}, {{target}} and {{variant}}.

    {{selector}} becomes label matchers, {{window}} a validated duration, the others quoted string
    literals. Unknown variables are refused (the CRD refuses them too; this guards other callers).
    """
    if not PROMQL_DURATION.fullmatch(scope.window):
        raise TemplateError(f"window {scope.window!r} is not a PromQL duration")
    values = {
        "selector": scope.selector(),
        "window": scope.window,
        "namespace": promql_string(scope.namespace),
        "target": promql_string(scope.target),
        "variant": promql_string(scope.variant),
    }

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1).strip()
        if name not in values:
            raise TemplateError(f"unknown template variable {{{{{name}}}}}; allowed: "
                                + ", ".join(f"{{{{{v}}}}}" for v in KNOWN_VARIABLES))
        return values[name]

    return TEMPLATE_VARIABLE.sub(substitute, template)
