"""`modelrollout explain NAME --html FILE`: the rollout's story as one self-contained page.

Everything comes from the rollout's status, the controller's only memory: the weight over time is rebuilt
from the history (each step, promotion and rollback is an entry), the class rates of canary and stable from
the judges' evidence (the last verdict of each metric, the verdicts a rollback was decided on) and from the
decisions' own words ("canary 6.2% (31/500) ... stable 0.2% (98/49000)"). The page has no scripts and loads
nothing: inline CSS and SVG only, so it can be attached to an incident, mailed, or opened offline.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.api.status import TERMINAL_PHASES
from controller.cli.shape import mapping, objects, printable, well_formed
from controller.operator.events import is_warning

CONTROLLER = "modelrollout-controller"
# Chart geometry (SVG user units; the SVG scales to the page width).
WIDTH, HEIGHT = 1000, 440
LEFT, RIGHT, TOP, BOTTOM = 60, 70, 104, 46
LANES, LANE_HEIGHT, MARKER_GAP = 4, 19, 19  # decision markers close in time are stacked in up to 4 rows
PHASE_COLOURS = {"Succeeded": "#1a7f37", "Promoting": "#1a7f37", "Baking": "#0969da", "Progressing": "#0969da",
                 "Gating": "#0969da", "Paused": "#9a6700", "Pending": "#6e7781", "RollingBack": "#cf222e",
                 "RolledBack": "#cf222e", "Failed": "#cf222e"}
KIND_COLOURS = {"fail": "#cf222e", "warn": "#bf8700", "pass": "#1a7f37", "command": "#8250df", "info": "#57606a"}
WEIGHT_COLOUR, CANARY_COLOUR, STABLE_COLOUR = "#0969da", "#d1242f", "#2da44e"
DAY, YEAR = 86400, 365 * 86400  # seconds: the time axis's longer tick steps

_NUMBER = r"\d+(?:\.\d+)?(?:e[+-]?\d+)?"
_COUNTS = rf"\((?P<{{p}}n>{_NUMBER})/(?P<{{p}}t>{_NUMBER})\)"
# The analysis judges' wording (controller/analysis/judges.py): "<metric> [no credible increase: |not enough
# samples yet: ]canary 6.2% (31/500) ... stable 0.2% (98/49000)" (or "its 7-day history" in bake).
# The metric name starts where no name character precedes it: unanchored, a long run of name characters is retried
# from each of its positions (quadratic). Only a detail's first RATES_SEARCHED characters are searched: the lazy gap
# between the two rates is quadratic too, and the judges' words come first.
RATES_SEARCHED = 4096
RATES_IN_TEXT = re.compile(
    rf"(?<![\w.-])(?P<metric>[A-Za-z0-9][\w.-]*) (?:no credible increase: |not enough samples yet: )?"
    rf"(?:canary|new version) (?P<c>{_NUMBER})% {_COUNTS.format(p='c')}[^;]*?"
    rf"(?:stable|its \d+-day history) (?P<s>{_NUMBER})% {_COUNTS.format(p='s')}")
WEIGHT_IN_TEXT = re.compile(r"\bat (\d{1,3})%")


@dataclass(frozen=True)
class Decision:
    number: int
    time: dt.datetime
    event: str
    actor: str
    detail: str
    kind: str  # fail | warn | pass | command | info


@dataclass(frozen=True)
class RatePoint:
    time: dt.datetime
    metric: str
    canary: float | None  # percent
    stable: float | None
    canary_counts: str
    stable_counts: str
    outcome: str
    source: str


def _time(text: Any) -> dt.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC)
    except (ValueError, OverflowError):  # not a time, or one whose UTC falls outside years 1-9999
        return None


def _kind(event: str, actor: str) -> str:
    if actor and actor != CONTROLLER:
        return "command"
    if any(word in event for word in ("Fail", "Rollback", "RolledBack", "Rejected", "Abort", "Deadline",
                                      "InvalidSpec", "NotRestored")):
        return "fail"
    if is_warning(event) or any(word in event for word in ("Paused", "Overridden")):
        return "warn"  # the same Warning Events as the cluster's (StatusReset, CommandIgnored ...)
    if any(word in event for word in ("Passed", "Succeeded", "Promoted", "Recovered", "Restored", "AliasMoved")):
        return "pass"
    return "info"


def decisions(status: Mapping[str, Any]) -> list[Decision]:
    from controller.cli.oncall import told_detail  # here: oncall imports this module

    found = []
    for entry in objects(status.get("history")):
        moment = _time(entry.get("time"))
        if moment is None:
            continue
        actor = str(entry.get("actor") or CONTROLLER)
        event = str(entry.get("event") or "")
        # As explain tells it: an ended hold's way out is not offered (review s32r3).
        detail = told_detail({**entry, "event": event, "detail": str(entry.get("detail") or "")}, status)
        found.append(Decision(len(found) + 1, moment, event, actor, detail, _kind(event, actor)))
    return found


def weight_series(status: Mapping[str, Any], end: dt.datetime) -> list[tuple[dt.datetime, float]]:
    """The candidate's share of traffic after each decision that changed it; held until the next one."""
    points: list[tuple[dt.datetime, float]] = []
    kept = bool(mapping(status.get("rollback")).get("trafficKept"))
    for decision in decisions(status):
        weight: float | None = None
        if decision.event in ("CandidateStaged", "WeightChanged"):
            match = WEIGHT_IN_TEXT.search(decision.detail)
            weight = float(match.group(1)) if match else (0.0 if decision.event == "CandidateStaged" else None)
        elif decision.event in ("Promoted", "Succeeded"):
            weight = 100.0
        elif decision.event in ("TrafficRestored", "Recovered", "RolledBack", "Failed", "RolledBackForNewCandidate",
                                "RolledBackToGateAgain"):
            weight = None if kept else 0.0  # a first rollout's candidate kept all traffic: nothing went back
        if weight is not None:
            points.append((decision.time, weight))
    if points:
        current = status.get("canaryWeight")
        last = float(current) if isinstance(current, int | float) else points[-1][1]
        points.append((max(end, points[-1][0]), last))
    return points


def _rate(part: Any) -> tuple[float | None, str]:
    if not isinstance(part, Mapping):
        return None, ""
    rate = part.get("rate")
    counts = f"{_num(part.get('events'))}/{_num(part.get('total'))}" if "events" in part else ""
    return (_percent(100.0 * rate) if isinstance(rate, int | float) and math.isfinite(rate) else None), counts


def _percent(value: float) -> float | None:
    """A class rate in percent, or None when it is not one (garbage evidence stays off the chart)."""
    return value if math.isfinite(value) and 0.0 <= value <= 100.0 else None


def _num(value: Any) -> str:
    """A count for a chart label: a float (a count scaled by traffic share) to 3 significant figures."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float) and math.isfinite(value):
        if abs(value) >= 999.5:  # .3g would round it to 1e+03
            return f"{value:.0f}"
        return f"{float(f'{value:.3g}'):f}".rstrip("0").rstrip(".")  # 3 significant figures, no exponent
    return str(value) if value is not None else "?"


def _from_verdict(verdict: Mapping[str, Any], moment: dt.datetime, source: str) -> RatePoint | None:
    evidence = mapping(verdict.get("evidence"))
    canary, canary_counts = _rate(evidence.get("canary"))
    stable, stable_counts = _rate(evidence.get("stable"))
    if canary is None and stable is None:
        return None
    return RatePoint(moment, str(verdict.get("name") or "?"), canary, stable, canary_counts, stable_counts,
                     str(verdict.get("outcome") or ""), source)


def rate_points(status: Mapping[str, Any]) -> list[RatePoint]:
    """Canary and stable class rates, from structured evidence first, then from the decisions' words."""
    points: dict[tuple[dt.datetime, str], RatePoint] = {}
    analysis = mapping(status.get("analysis"))
    at = _time(analysis.get("lastRunAt"))
    if at is not None:
        for verdict in objects(analysis.get("metrics") or analysis.get("verdicts")):
            point = _from_verdict(verdict, at, "analysis")
            if point:
                points[(at, point.metric)] = point
    rollback = mapping(status.get("rollback"))
    at = _time(rollback.get("verdictAt"))
    if at is not None:
        for verdict in objects(mapping(rollback.get("evidence")).get("verdicts")):
            point = _from_verdict(verdict, at, "rollback")
            if point:
                points.setdefault((at, point.metric), point)
    seen = {(p.metric, p.canary_counts, p.stable_counts) for p in points.values()}
    for decision in decisions(status):
        for match in RATES_IN_TEXT.finditer(decision.detail[:RATES_SEARCHED]):
            key = (decision.time, match.group("metric"))
            counts = (match.group("metric"), f"{match.group('cn')}/{match.group('ct')}",
                      f"{match.group('sn')}/{match.group('st')}")
            if counts in seen:
                continue  # the same judgement, quoted again by a later decision
            seen.add(counts)
            canary, stable = _percent(float(match.group("c"))), _percent(float(match.group("s")))
            if canary is None or stable is None:
                continue
            points.setdefault(key, RatePoint(
                decision.time, match.group("metric"), canary, stable,
                f"{match.group('cn')}/{match.group('ct')}", f"{match.group('sn')}/{match.group('st')}",
                "fail" if decision.kind == "fail" else "", decision.event))
    return sorted(points.values(), key=lambda p: (p.time, p.metric))


# --- the chart -------------------------------------------------------------------------------------------


class _Scale:
    def __init__(self, start: dt.datetime, end: dt.datetime, rate_max: float) -> None:
        if end <= start:
            end = start + dt.timedelta(seconds=60)
        pad = (end - start) * 0.03
        try:
            self.start, self.end = start - pad, end + pad
        except OverflowError:  # times at the ends of the calendar: no padding
            self.start, self.end = start, end
        self.rate_max = rate_max

    def x(self, moment: dt.datetime) -> float:
        span = (self.end - self.start).total_seconds()
        return LEFT + (moment - self.start).total_seconds() / span * (WIDTH - LEFT - RIGHT)

    @staticmethod
    def y_weight(weight: float) -> float:
        return TOP + (1 - weight / 100.0) * (HEIGHT - TOP - BOTTOM)

    def y_rate(self, rate: float) -> float:
        return TOP + (1 - rate / self.rate_max) * (HEIGHT - TOP - BOTTOM)


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        candidate = step * 10**exponent
        if candidate >= value:
            return float(candidate)
    return float(10 ** (exponent + 1))


def _time_ticks(scale: _Scale, count: int = 6) -> list[dt.datetime]:
    """At most `count` + 1 ticks, whatever the span (history times are free strings: one may read year 1)."""
    span = (scale.end - scale.start).total_seconds()
    steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, DAY, 2 * DAY,
             7 * DAY, 14 * DAY, 30 * DAY, 91 * DAY, 182 * DAY, YEAR]
    # Past `count` years: whole years.
    step = next((s for s in steps if span / s <= count), math.ceil(span / count / YEAR) * YEAR)
    first = math.ceil(scale.start.timestamp() / step) * step
    ticks = []
    moment = first
    while moment <= scale.end.timestamp():
        try:
            ticks.append(dt.datetime.fromtimestamp(moment, dt.UTC))
        except (OverflowError, ValueError, OSError):
            break
        moment += step
    return ticks


def _e(text: Any) -> str:
    """Escaped for HTML, with control and bidi characters shown as escapes, as on the terminal."""
    return html.escape(printable(str(text)), quote=True)


def chart_svg(status: Mapping[str, Any], now: dt.datetime) -> str:
    marks = decisions(status)
    rates = rate_points(status)
    end = _time(_completed(status)) or (marks[-1].time if marks else now)
    weights = weight_series(status, end)
    moments = [d.time for d in marks] + [p.time for p in rates] + [t for t, _ in weights]
    start = _time(status.get("startedAt"))
    moments += [start] if start else []
    if not moments:
        moments = [now]
    highest = max([v for p in rates for v in (p.canary, p.stable) if v is not None] or [0.0])
    scale = _Scale(min(moments), max([*moments, end]), _nice_max(highest * 1.15) if rates else 1.0)
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="chart-title"><title id="chart-title">Canary weight over time, class rates canary vs '
        f'stable, and the decision points</title>',
        f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" height="{HEIGHT - TOP - BOTTOM}" '
        f'class="plot"/>']
    # Grid and axes: weight on the left, class rate on the right, time below.
    for weight in (0, 25, 50, 75, 100):
        y = scale.y_weight(weight)
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{LEFT - 8}" y="{y + 4:.1f}" class="axis" text-anchor="end">{weight}%</text>')
        if rates:
            rate = scale.rate_max * weight / 100
            out.append(f'<text x="{WIDTH - RIGHT + 8}" y="{y + 4:.1f}" class="axis rate-axis">{rate:.3g}%</text>')
    ticks = _time_ticks(scale)
    # A day apart or more, a tick's time of day says nothing: its date (isoformat: a 4-digit year, as %Y is not).
    dated = len(ticks) > 1 and (ticks[1] - ticks[0]).total_seconds() >= DAY
    for tick in ticks:
        x = scale.x(tick)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{HEIGHT - BOTTOM}" y2="{HEIGHT - BOTTOM + 5}" '
                   f'class="tick"/><text x="{x:.1f}" y="{HEIGHT - BOTTOM + 19}" class="axis" '
                   f'text-anchor="middle">{tick.date().isoformat() if dated else tick.strftime("%H:%M:%S")}</text>')
    out.append(f'<text x="{LEFT - 44}" y="{TOP - LANES * LANE_HEIGHT - 8}" class="axis-title">canary weight'
               f'</text>')
    if rates:
        out.append(f'<text x="{WIDTH - RIGHT + 70}" y="{TOP - LANES * LANE_HEIGHT - 8}" class="axis-title" '
                   f'text-anchor="end">class rate</text>')
    out.append(f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 6}" class="axis-title" '
               f'text-anchor="middle">time (UTC, {scale.start.date().isoformat()})</text>')
    # Decision points: a line and a numbered marker per history entry, in its colour.
    lanes: list[float] = [-math.inf] * LANES
    for index, mark in enumerate(marks):
        x = scale.x(mark.time)
        colour = KIND_COLOURS[mark.kind]
        lane = next((i for i, last in enumerate(lanes) if x - last >= MARKER_GAP), index % LANES)
        lanes[lane] = x
        top = TOP - 12 - lane * LANE_HEIGHT
        tip = _e(f"#{mark.number} {mark.time.strftime('%H:%M:%S')} {mark.event} ({mark.actor}): {mark.detail}")
        out.append(f'<g class="decision {mark.kind}" data-event="{_e(mark.event)}"><title>{tip}</title>'
                   f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{HEIGHT - BOTTOM}" stroke="{colour}" '
                   f'class="decision-line"/><circle cx="{x:.1f}" cy="{top}" r="8.5" fill="{colour}"/>'
                   f'<text x="{x:.1f}" y="{top + 3.5}" class="marker-number" text-anchor="middle">'
                   f'{mark.number}</text></g>')
    # The weight: a step line held from one change to the next, with the area under it.
    if weights:
        path = f"M{scale.x(weights[0][0]):.1f},{scale.y_weight(weights[0][1]):.1f}"
        for moment, weight in weights[1:]:
            path += f" H{scale.x(moment):.1f} V{scale.y_weight(weight):.1f}"
        base = scale.y_weight(0)
        area = f"{path} V{base:.1f} H{scale.x(weights[0][0]):.1f} Z"
        out.append(f'<path d="{area}" class="weight-area"/><path d="{path}" class="weight-line"/>')
        labels: list[tuple[float, float]] = []  # each new weight, unless the next one follows too closely
        for moment, weight in weights[:-1]:
            if labels and labels[-1][1] == weight:
                continue
            if labels and scale.x(moment) - labels[-1][0] < 28:
                labels.pop()
            labels.append((scale.x(moment), weight))
        out += [f'<text x="{x + 4:.1f}" y="{scale.y_weight(weight) - 6:.1f}" class="weight-label">{weight:g}%</text>'
                for x, weight in labels]
    # Class rates: one line per metric and arm; a dot per judgement with its counts as the tooltip.
    for arm, colour in (("canary", CANARY_COLOUR), ("stable", STABLE_COLOUR)):
        for metric in sorted({p.metric for p in rates}):
            series = [(p, getattr(p, arm)) for p in rates if p.metric == metric and getattr(p, arm) is not None]
            if len(series) > 1:
                coords = " ".join(f"{scale.x(p.time):.1f},{scale.y_rate(v):.1f}" for p, v in series)
                out.append(f'<polyline points="{coords}" class="rate-line {arm}" stroke="{colour}"/>')
            for point, value in series:
                counts = point.canary_counts if arm == "canary" else point.stable_counts
                tip = _e(f"{metric} {arm}: {value:.3g}% ({counts}) at {point.time.strftime('%H:%M:%S')}"
                         + (f", verdict {point.outcome}" if point.outcome else "") + f" [{point.source}]")
                shape = (f'<circle cx="{scale.x(point.time):.1f}" cy="{scale.y_rate(value):.1f}" r="5" '
                         f'fill="{colour}"/>' if arm == "canary" else
                         f'<rect x="{scale.x(point.time) - 4.5:.1f}" y="{scale.y_rate(value) - 4.5:.1f}" '
                         f'width="9" height="9" fill="{colour}"/>')
                out.append(f'<g class="rate-point {arm}" data-metric="{_e(metric)}"><title>{tip}</title>'
                           f'{shape}</g>')
    out.append("</svg>")
    return "".join(out)


# --- the page --------------------------------------------------------------------------------------------

CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1f2328;
       background: #ffffff; margin: 0; padding: 24px 32px; }
h1 { font-size: 22px; margin: 0 0 6px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.phase { display: inline-block; color: #fff; border-radius: 12px; padding: 2px 12px; font-weight: 600;
         font-size: 13px; vertical-align: middle; margin-left: 8px; }
.message { font-size: 15px; margin: 4px 0 16px; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 8px 24px;
         margin: 0 0 8px; }
.facts div { border-left: 3px solid #d0d7de; padding-left: 8px; } .facts b { display: block; color: #57606a;
         font-weight: 500; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
figure { margin: 0; } svg.timeline { width: 100%; height: auto; max-width: 1100px; display: block; }
svg .plot { fill: #f6f8fa; stroke: #d0d7de; } svg .grid { stroke: #d8dee4; stroke-width: 1; }
svg .tick { stroke: #57606a; } svg .axis { font-size: 12px; fill: #57606a; }
svg .axis-title { font-size: 12px; fill: #24292f; font-weight: 600; }
svg .decision-line { stroke-width: 1.5; stroke-dasharray: 4 3; opacity: .75; }
svg .marker-number { font-size: 10px; fill: #fff; font-weight: 700; }
svg .weight-area { fill: #0969da; opacity: .14; }
svg .weight-label { font-size: 11px; fill: #0969da; font-weight: 700; }
svg .weight-line { fill: none; stroke: #0969da; stroke-width: 3; }
svg .rate-line { fill: none; stroke-width: 2; } svg .rate-line.stable { stroke-dasharray: 6 4; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 18px; margin: 8px 0 0; font-size: 13px; color: #57606a; }
.legend span::before { content: ""; display: inline-block; width: 14px; height: 10px; margin-right: 6px;
                        vertical-align: middle; background: var(--c); border-radius: 2px; }
table { border-collapse: collapse; width: 100%; max-width: 1100px; font-size: 13px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #d8dee4; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; } td.num { text-align: right; white-space: nowrap; }
.badge { display: inline-block; min-width: 20px; text-align: center; color: #fff; border-radius: 10px;
         font-weight: 700; font-size: 11px; padding: 1px 6px; }
.outcome-pass { color: #1a7f37; font-weight: 600; } .outcome-fail { color: #cf222e; font-weight: 600; }
.outcome-inconclusive { color: #9a6700; font-weight: 600; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; word-break: break-all; }
footer { margin-top: 32px; color: #6e7781; font-size: 12px; }
"""


def _facts(obj: Mapping[str, Any], status: Mapping[str, Any]) -> list[tuple[str, str]]:
    spec = obj.get("spec") or {}
    steps = (spec.get("canary") or {}).get("steps") or []
    current = status.get("currentStep")
    step = f"{min(current + 1, len(steps))}/{len(steps)}" if isinstance(current, int) else f"-/{len(steps)}"
    weight = status.get("canaryWeight")
    facts = [("Model", str((spec.get("model") or {}).get("name", "?"))),
             ("Candidate version", str((status.get("candidate") or {}).get("version", "-"))),
             ("Stable version", str((status.get("stable") or {}).get("version", "-"))),
             ("Step", step), ("Canary weight now", f"{weight}%" if isinstance(weight, int | float) else "-"),
             ("Started", str(status.get("startedAt", "-"))), ("Completed", str(_completed(status) or "-"))]
    gate = status.get("gate") or {}
    if gate.get("outcome"):
        facts.append(("Golden gate", f"{gate['outcome']} (dataset sha256 {str(gate.get('datasetSha256', '?'))[:12]}…)"))
    rollback = mapping(status.get("rollback"))
    if rollback.get("trafficKept"):
        facts.append(("Stopped", f"{rollback.get('cause', '?')} by {rollback.get('actor', CONTROLLER)}; the "
                                 "candidate kept all traffic (no earlier version to put back)"))
    elif rollback:
        seconds = rollback.get("timeToRecoverSeconds")
        state = _rollback_state(rollback, status.get("phase"), mapping(status.get("stable")).get("version"))
        facts.append(("Rollback", f"{rollback.get('cause', '?')} by {rollback.get('actor', CONTROLLER)}, {state}"
                      + (f", recovered in {seconds:.2f} s" if isinstance(seconds, int | float) else "")))
    return facts


def _completed(status: Mapping[str, Any]) -> Any:
    """completedAt of an ended phase: a rollback of a success keeps the success's until it ends itself."""
    return status.get("completedAt") if status.get("phase") in TERMINAL_PHASES else None


def _rollback_state(rollback: Mapping[str, Any], phase: Any, stable: Any) -> str:
    """Each step as confirmed: the alias may be back while traffic is not, or the other way round. "Rolled back"
    only when both are back: traffic reported on stable, the alias not left elsewhere (explain says the same)."""
    if rollback.get("recoveredAt") and not rollback.get("aliasLeftOn") and stable \
            and rollback.get("servingWhenConfirmed") == stable:
        return "rolled back"
    unconfirmed = "not confirmed" if phase in TERMINAL_PHASES else "not yet confirmed"
    # Back on stable only as the target reported it; a withdrawal at 0% beside another version is the candidate off.
    back = "traffic back on stable" if stable and rollback.get("servingWhenConfirmed") == stable \
        else "traffic off the candidate"
    traffic = back if rollback.get("trafficConfirmedAt") else f"traffic {unconfirmed} back"
    if rollback.get("aliasLeftOn"):
        alias = f"alias left on version {rollback['aliasLeftOn']} (moved outside this rollout)"
    else:
        alias = "alias confirmed" if rollback.get("aliasConfirmedAt") else f"alias {unconfirmed}"
    return f"{'rolling back' if phase not in TERMINAL_PHASES else 'stopped'}, {traffic}, {alias}"


def _outcome(value: Any) -> str:
    text = str(value or "")
    return f'<span class="outcome-{_e(text)}">{_e(text)}</span>' if text else ""


def _verdict_rows(verdicts: Iterable[Mapping[str, Any]]) -> str:
    rows = []
    for verdict in verdicts:
        evidence = verdict.get("evidence") or {}
        canary, canary_counts = _rate(evidence.get("canary"))
        stable, stable_counts = _rate(evidence.get("stable"))
        rows.append(
            f"<tr><td>{_e(verdict.get('name', '?'))}</td><td>{_outcome(verdict.get('outcome'))}</td>"
            f"<td class=num>{'' if canary is None else f'{canary:.3g}% ({_e(canary_counts)})'}</td>"
            f"<td class=num>{'' if stable is None else f'{stable:.3g}% ({_e(stable_counts)})'}</td>"
            f"<td class=num>{_e(_statistic(evidence))}</td>"
            f"<td>{_e(verdict.get('reason', ''))}{_queries(evidence)}</td></tr>")
    return "".join(rows)


def _statistic(evidence: Mapping[str, Any]) -> str:
    """The test's own numbers: the e-value against its boundary, or a value against its limits."""
    test = deciding_test(evidence)
    if test:
        return f"{test['test']}: e-value {test['e_value']:.4g} vs boundary {test['boundary']:.4g}"
    value = evidence.get("value")
    if _is_number(value):
        limits = [f"{name} {evidence[name]:.4g}" for name in ("min", "max") if _is_number(evidence.get(name))]
        return f"value {value:.4g}" + (f" ({', '.join(limits)})" if limits else "")
    return ""


def deciding_test(evidence: Mapping[str, Any]) -> dict[str, Any]:
    """The proportion judge's test behind the verdict, named under "test": the first that crossed its boundary,
    the relative test before the maxRate one as the reason tells them; when none crossed, the relative test, which
    the reason of a pass quotes (an empty dict when neither has numbers)."""
    tests = [{**mapping(evidence.get(key)), "test": name}
             for key, name in (("relative", "relative test"), ("max_rate_test", "maxRate test"))]
    usable = [t for t in tests if _is_number(t.get("e_value")) and _is_number(t.get("boundary"))]
    crossed = [t for t in usable if t["e_value"] >= t["boundary"]]
    return (crossed or usable or [{}])[0]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _queries(evidence: Mapping[str, Any]) -> str:
    """The window and the PromQL behind a verdict, so that it can be run again by hand."""
    window = mapping(evidence.get("window"))
    out = ""
    if window:
        out += (f"<br><small>window {_e(window.get('start', '?'))} to {_e(window.get('end', '?'))}"
                + (f" (range {_e(window['range'])})" if window.get("range") else "") + "</small>")
    for role, query in mapping(evidence.get("queries")).items():
        out += f"<br><small>{_e(role)}:</small> <code>{_e(query)}</code>"
    return out


def _verdict_table(title: str, verdicts: Sequence[Mapping[str, Any]], note: str = "") -> str:
    if not verdicts:
        return ""
    return (f"<h2>{_e(title)}</h2>" + (f"<p>{note}</p>" if note else "")
            + "<table><thead><tr><th>check / metric</th><th>verdict</th><th>canary</th><th>stable</th>"
              "<th>statistic</th><th>why (window, queries)</th></tr></thead><tbody>"
            + _verdict_rows(verdicts) + "</tbody></table>")


def render_html(obj: Mapping[str, Any], explanation: str = "", now: dt.datetime | None = None) -> str:
    """The page for one ModelRollout as read from the API server (`explanation`: the plain-text account)."""
    now = now or dt.datetime.now(dt.UTC)
    obj = well_formed(obj)
    meta = obj["metadata"]
    status = obj["status"]
    name = f"{meta.get('namespace', '?')}/{meta.get('name', '?')}"
    phase = str(status.get("phase") or "Pending")
    marks = decisions(status)
    rates = rate_points(status)
    legend = [("canary weight", WEIGHT_COLOUR)]
    if rates:
        legend += [("canary class rate (dots)", CANARY_COLOUR), ("stable class rate (squares, dashed)", STABLE_COLOUR)]
    legend += [(f"decision: {label}", KIND_COLOURS[kind]) for kind, label in
               (("pass", "passed / promoted / recovered"), ("fail", "failed / rollback"),
                ("warn", "paused / inconclusive"), ("command", "on-call command"), ("info", "other"))
               if any(m.kind == kind for m in marks)]
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        '<meta name=viewport content="width=device-width, initial-scale=1">',
        f"<title>ModelRollout {_e(name)}: {_e(phase)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>ModelRollout {_e(name)}<span class=phase style=\"background:"
        f"{PHASE_COLOURS.get(phase, '#57606a')}\">{_e(phase)}</span></h1>",
        f"<p class=message>{_e(status.get('message', ''))}</p></header>",
        '<section class="facts">' + "".join(f"<div><b>{_e(k)}</b>{_e(v)}</div>" for k, v in _facts(obj, status))
        + "</section>",
        "<h2>Timeline</h2><figure>", chart_svg(status, now),
        '<figcaption class="legend">' + "".join(f'<span style="--c:{c}">{_e(t)}</span>' for t, c in legend)
        + "</figcaption></figure>",
    ]
    if not rates:
        # A threshold metric (or a proportion one that measured nothing) has no class rates: analysis may have run.
        judged = mapping(status.get("analysis")).get("metrics")
        parts.append("<p>No class rates in this rollout's evidence ("
                     + ("no analysis verdict measured one" if judged else "no canary analysis has run") + ").</p>")
    if explanation:
        parts.append("<h2>What happened</h2><p>" + "<br>".join(_e(line) for line in explanation.splitlines())
                     + "</p>")
    parts.append("<h2>Decision points</h2><table><thead><tr><th>#</th><th>time (UTC)</th><th>event</th>"
                 "<th>actor</th><th>detail</th></tr></thead><tbody>")
    for mark in marks:
        parts.append(f'<tr class="decision-row {mark.kind}"><td><span class=badge style="background:'
                     f'{KIND_COLOURS[mark.kind]}">{mark.number}</span></td>'
                     f"<td>{mark.time.strftime('%Y-%m-%d %H:%M:%S')}</td><td>{_e(mark.event)}</td>"
                     f"<td>{_e(mark.actor)}</td><td>{_e(mark.detail)}</td></tr>")
    parts.append("</tbody></table>")
    gate = status.get("gate") or {}
    if gate.get("verdicts"):
        sha = _e(gate.get("datasetSha256", "?"))
        parts.append(_verdict_table("Golden gate", gate["verdicts"],
                                    f"Outcome {_outcome(gate.get('outcome'))} on the dataset with sha256 "
                                    f"<code>{sha}</code>: {_e(gate.get('reason', ''))}"))
    analysis = status.get("analysis") or {}
    parts.append(_verdict_table(
        "Analysis (last verdict of each metric)", analysis.get("metrics") or analysis.get("verdicts") or [],
        f"Mode {_e(analysis.get('mode', '?'))}, {_e(analysis.get('runs', 0))} runs, last at "
        f"{_e(analysis.get('lastRunAt', '?'))}." if analysis else ""))
    rollback = status.get("rollback") or {}
    parts.append(_verdict_table("The verdicts the rollback was decided on",
                                (rollback.get("evidence") or {}).get("verdicts") or [],
                                f"{_e(rollback.get('cause', ''))}: {_e(rollback.get('reason', ''))}"))
    parts.append(f"<footer>Generated {now.strftime('%Y-%m-%d %H:%M:%S')} UTC by <code>modelrollout explain "
                 f"{_e(meta.get('name', ''))} --html</code> from the rollout's status (resourceVersion "
                 f"{_e(meta.get('resourceVersion', '?'))}). Self-contained: no scripts, nothing loaded.</footer>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(obj: Mapping[str, Any], path: Path, explanation: str = "") -> Path:
    path.write_text(render_html(obj, explanation), encoding="utf-8")
    return path
