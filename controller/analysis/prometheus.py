"""Prometheus metric provider: instant and range queries with timeouts and retries, each result explained."""

from __future__ import annotations

import ast
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import unquote, urlsplit

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.exceptions import HTTPError, LocationValueError
from urllib3.util.retry import Retry

from controller.http_deadline import AnswerTooSlow, Exchange, WatchedAdapter, only_explicit_auth
from controller.redaction import redact_credentials, without_userinfo
from controller.registry.mlflow_rest import AnswerTooLarge, bounded_text
from controller.verdict import DATA_LOST

# An instant query that finds nothing is asked again over this much history: data there means the series
# went stale (its source stopped reporting), none means nothing was ever counted.
STALE_LOOKBACK = timedelta(hours=1)
STALE_STEP = "60s"
# How often Prometheus scrapes is not in the spec: assumed, as kube-prometheus-stack's default (the shipped
# ServiceMonitor scrapes the exporter every 30s). A series with no sample within twice that of the evaluation
# time has stopped being scraped, whatever a count over the window still says.
SCRAPE_INTERVAL = timedelta(seconds=30)
# How far an instant answer's sample time may be from the evaluation time asked for: Prometheus stamps its answer
# with that time, which is sent to the millisecond.
SAMPLE_TIME_TOLERANCE_SECONDS = 1.0
LATEST_TIME = datetime(9999, 12, 31, tzinfo=UTC).timestamp()  # a sample time beyond is none (datetime ends there)
UNAVAILABLE = (429, 502, 503, 504)  # retried (429: a proxy's rate limit), as is a failed connection
# Prometheus' errorTypes for a query it could not run in time ("timeout": its --query.timeout, its queue) or at all
# ("unavailable": not ready, a store away), which it answers with 503: the moment, not the query, is at fault.
BUSY_ERROR_TYPES = frozenset({"timeout", "unavailable"})
RETRY_BACKOFF_SECONDS = 0.2  # before the first retry; doubled before each next one
# The result types each endpoint may answer with: anything else is not the number or samples asked for.
RESULT_TYPES = {"/api/v1/query": frozenset({"vector", "scalar"}), "/api/v1/query_range": frozenset({"matrix"})}
# Before Prometheus 2.50, and in Thanos, PromQL's info annotations came in `warnings` too: hints about the
# query (e.g. a counter not named *_total), not missing data.
PROMQL_INFO = "PromQL info:"
WARNING_TEXT_LIMIT = 300
# An answer here is a number or an hour of samples of a few series: a body past this is not one (and would be
# held in memory whole).
MAX_ANSWER_BYTES = 4 * 1024 * 1024


class QueryProblem(StrEnum):
    """Why a query gave no usable number. Each maps to its own explained verdict."""

    UNREACHABLE = "PrometheusUnreachable"
    REJECTED = "QueryRejected"  # Prometheus refused the query itself: bad syntax, too many samples (400, 422)
    EMPTY = "NoData"  # no series matched, now or in the hour before: nothing was counted
    STALE = "StaleSeries"  # no value now, but there was within the hour: the source stopped reporting
    NOT_A_NUMBER = "NotANumber"  # NaN or infinite, e.g. 0/0
    AMBIGUOUS = "MultipleSeries"  # more than one series where one number was expected
    # The runner's: an arm's exporter series held more than once (scraped twice), so every count would be doubled.
    DUPLICATE = "DuplicateSeries"
    MALFORMED = "MalformedResponse"
    PARTIAL = "PartialData"  # an answer that warns its data may be incomplete (a store or remote read failed)
    # No whole answer by the query's deadline, the metric's budget ran out, or Prometheus' own query timeout.
    SLOW = "PrometheusTooSlow"
    # The runner's name for NoData in a window shorter than two scrapes: it may hold one sample of a counter, and
    # increase() needs two. Not an outage (verdict.MEASUREMENT_OUTAGES): a longer window can count.
    TOO_FEW_SCRAPES = "TooFewScrapes"
    # The engine's (it compares runs): a window's counts fell from one run to the next (verdict.DATA_LOST).
    DATA_LOST = DATA_LOST


@dataclass
class Budget:
    """One metric's time for all its queries (set by the runner): once `ends` (time.monotonic()) passes, no query
    is sent and the one in flight is cut."""

    seconds: float
    ends: float
    sent: int = 0  # the queries asked within it

    @classmethod
    def starting(cls, seconds: float) -> Budget:
        return cls(seconds, time.monotonic() + seconds)

    def spent(self) -> str:
        return f"this metric's measurement budget of {self.seconds:g} s ran out after {self.sent} queries"


@dataclass(frozen=True)
class Measurement:
    query: str
    value: float | None
    problem: QueryProblem | None = None
    detail: str = ""
    at: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def explain(self) -> str:
        if self.ok:
            return f"{self.value:g}"
        return f"{self.problem}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "value": self.value, "problem": str(self.problem) if self.problem else None,
                "detail": self.detail, "at": self.at.isoformat() if self.at else None}


class PrometheusProvider:
    def __init__(self, address: str, timeout_seconds: float = 5.0, retries: int = 2,
                 headers: dict[str, str] | None = None, scrape_interval: timedelta = SCRAPE_INTERVAL) -> None:
        # _ask retries, within the query's deadline: urllib3 would drain a retried answer's body unbounded (and
        # sleep what a Retry-After asks). Retry-After is not honoured.
        no_retry = Retry(total=0, read=False, redirect=False)
        self.address = without_userinfo(address.rstrip("/"))  # what messages show
        # What a server or proxy echoing the request could send back of the credentials: never quoted.
        parts = urlsplit(address)
        self._username, self._password = unquote(parts.username or "") or None, unquote(parts.password or "") or None
        # A header's whole value and its credentials alone ("Bearer abc" and "abc").
        self._tokens = [token for key, value in (headers or {}).items()
                        if key.lower() in ("authorization", "proxy-authorization")
                        for token in (value, value.partition(" ")[2]) if token]
        self.timeout_seconds, self.retries = timeout_seconds, retries
        # requests' timeout bounds each wait for bytes only: a query's tries, from sending to the body read and
        # decoded, are cut at this in all (Exchange).
        self.query_seconds = timeout_seconds * (1 + retries)
        self.budget: Budget | None = None  # the current metric's (the runner's)
        self._read_by = math.inf  # the current query's deadline, for the body reader
        self.scrape_interval = scrape_interval
        # POST keeps long queries out of proxies' access logs (the library still puts the query in the URL).
        # The library reads data.result from any 200 and drops its status: an answer that says it failed
        # must not be read as data.
        # stream=True: the body is read by _read_body, within the query's deadline and MAX_ANSWER_BYTES.
        # Prometheus' API never redirects: _refuse_redirect says so before requests would follow one.
        session = requests.Session()
        session.stream, session.max_redirects = True, 0
        only_explicit_auth(session)
        session.hooks["response"].extend([_refuse_redirect, self._read_body, _require_success])
        self._client = PrometheusConnect(url=address.rstrip("/"), headers=headers, retry=no_retry,
                                         timeout=timeout_seconds, method="POST", session=session)
        adapter = WatchedAdapter(max_retries=no_retry)
        for prefix in list(session.adapters):  # the library's, for its URL, and requests' own
            session.mount(prefix, adapter)

    def __repr__(self) -> str:
        return f"PrometheusProvider({self.address!r})"

    def _redacted(self, text: str) -> str:
        text = redact_credentials(text, username=self._username, password=self._password)
        for token in sorted(self._tokens, key=len, reverse=True):  # the whole header value first
            text = redact_credentials(text, token=token)
        return text

    def _quoted(self, value: Any, limit: int = 40) -> str:
        """A server's value for a message: redacted before it is cut (a cut token would not be found)."""
        return self._redacted(repr(value))[:limit]

    def _read_body(self, response: requests.Response, *_: Any, **__: Any) -> requests.Response:
        """Reads the streamed body whole, within the query's deadline and MAX_ANSWER_BYTES, where the library and
        _require_success read it (AnswerTooSlow, AnswerTooLarge otherwise)."""
        text = bounded_text(response, self._read_by, MAX_ANSWER_BYTES)
        response._content = text.encode("utf-8")  # what response.content and .json() read
        response._content_consumed = True
        response.encoding = "utf-8"
        return response

    def scalar(self, query: str, at: datetime | None = None, *, check_stale: bool = True) -> Measurement:
        """Evaluate `query` at `at` (default: now) and expect exactly one number.

        An empty answer is told apart from a stale one by a range query over the hour before, unless
        `check_stale` is false (e.g. for history, where a gap just means no traffic then).
        """
        params = {"time": f"{at.timestamp():.3f}"} if at else None
        answer = self._ask(query, at, lambda: self._client.custom_query(query, params=params))
        if isinstance(answer, Measurement):
            return answer
        measured = _one_number(query, answer, at, self._redacted)
        if measured.problem is QueryProblem.EMPTY and check_stale:
            return self._empty_or_stale(measured)
        return measured

    @property
    def fresh_seconds(self) -> float:
        """How recent a sample must be for its series to count as still reported: twice the scrape interval."""
        return 2 * self.scrape_interval.total_seconds()

    @property
    def fresh_within(self) -> str:
        """The freshness rule, for evidence."""
        return (f"{self.fresh_seconds:g}s (twice the assumed scrape interval of "
                f"{self.scrape_interval.total_seconds():g}s)")

    def freshness(self, query: str, at: datetime) -> Measurement:
        """Evaluate `query`, which counts an arm's series sampled within `fresh_seconds` before `at`
        (queries.recent_samples_query): STALE when none was, with when one last was.

        increase() over a window keeps answering from old samples long after the source stopped reporting,
        so a count cannot tell a whole window from its first minutes.
        """
        fresh = self.scalar(query, at, check_stale=False)
        count = fresh.value if fresh.ok else None
        if count is not None and (count < 0 or not count.is_integer()):  # a count of series is neither
            return Measurement(query, None, QueryProblem.MALFORMED,
                               f"{self.address} answered the count of fresh series with {count:g}, not a whole "
                               "number of at least 0", at)
        # count() answers nothing rather than 0, but a proxy or an `or vector(0)` may: no series is fresh either way.
        if fresh.problem is not QueryProblem.EMPTY and count != 0:
            return fresh
        step = f"{max(1, int(self.fresh_seconds // 2))}s"
        seen = self.last_seen(query, at - STALE_LOOKBACK, at, step)
        if isinstance(seen, Measurement) and seen.problem is not QueryProblem.EMPTY:
            return seen
        last = (f"none in the {STALE_LOOKBACK.total_seconds():.0f} s before" if isinstance(seen, Measurement) else
                f"the last one between {(seen - timedelta(seconds=self.fresh_seconds)).isoformat()} and "
                f"{seen.isoformat()}, {(at - seen).total_seconds():.0f} s or more earlier")
        return Measurement(query, None, QueryProblem.STALE,
                           f"no sample within {self.fresh_within} of {at.isoformat()}, {last}: its source stopped "
                           "reporting (exporter down or no longer scraped)", at)

    def last_seen(self, query: str, start: datetime, end: datetime, step: str = STALE_STEP) -> datetime | Measurement:
        """Range query: the newest time in [start, end] at which `query` had a value (a Measurement saying
        why when there was none, or the query failed)."""
        answer = self._ask(query, end, lambda: self._client.custom_query_range(query, start, end, step))
        if isinstance(answer, Measurement):
            return answer
        if not _is_matrix(answer):
            return Measurement(query, None, QueryProblem.MALFORMED,
                               f"{self.address} answered a range query without a matrix of samples", end)
        try:
            newest = _newest_time(answer)
        except (ValueError, OverflowError, OSError):
            return Measurement(query, None, QueryProblem.MALFORMED,
                               f"{self.address} answered a range query with a sample time that is not a time", end)
        if newest is None:
            return Measurement(query, None, QueryProblem.EMPTY,
                               f"no series matched between {start.isoformat()} and {end.isoformat()}", end)
        return newest

    def _empty_or_stale(self, empty: Measurement) -> Measurement:
        end = empty.at or datetime.now(UTC)
        seen = self.last_seen(empty.query, end - STALE_LOOKBACK, end)
        if isinstance(seen, Measurement):
            return seen if seen.problem is not QueryProblem.EMPTY else empty
        return Measurement(empty.query, None, QueryProblem.STALE,
                           f"no value now, but there was one until {seen.isoformat()} "
                           f"({(end - seen).total_seconds():.0f} s earlier): its source stopped reporting "
                           "(exporter down or no longer scraped)", empty.at)

    def _ask(self, query: str, at: datetime | None, send: Callable[[], Any]) -> Any:
        """The library's answer, or a Measurement that explains why there is none. Tries again after a failed
        connection or a 429/502/503/504 while the query's deadline (and the metric's budget) allows."""
        def problem(kind: QueryProblem, detail: str) -> Measurement:
            return Measurement(query, None, kind, detail, at)

        started = time.monotonic()
        budget = self.budget
        if budget is not None and started >= budget.ends:
            return problem(QueryProblem.SLOW, f"{self.address} was too slow: {budget.spent()}, so this query was "
                                              "not sent")
        by_budget = budget is not None and budget.ends < started + self.query_seconds
        self._read_by = budget.ends if budget is not None and by_budget else started + self.query_seconds
        if budget is not None:
            budget.sent += 1
        failed: Measurement | None = None  # the last try's problem, when it may be tried again
        for attempt in range(1 + self.retries):
            if attempt:
                pause = RETRY_BACKOFF_SECONDS * 2 ** (attempt - 1)
                if time.monotonic() + pause >= self._read_by:
                    break  # no time for another try: the last one's problem stands
                time.sleep(pause)
            try:
                with Exchange(self._read_by - time.monotonic()):
                    return send()
            except AnswerTooSlow:
                elapsed = time.monotonic() - started
                if budget is not None and by_budget:
                    return problem(QueryProblem.SLOW, f"{self.address} was too slow: {budget.spent()}, the last "
                                                      f"still unanswered {elapsed:.1f} s after it was sent")
                return problem(QueryProblem.SLOW, f"{self.address} was too slow: no whole answer {elapsed:.1f} s "
                                                  f"after the query was sent (its limit is {self.query_seconds:g} s)")
            except AnswerTooLarge:
                return problem(QueryProblem.MALFORMED, f"{self.address} answered with over "
                                                       f"{MAX_ANSWER_BYTES // (1024 * 1024)} MiB: not a query's answer")
            except Redirected as exc:
                return problem(QueryProblem.UNREACHABLE, f"{self.address} answered with a redirect (HTTP {exc.status}),"
                                                         " which Prometheus' API never sends: not followed (set the "
                                                         "address Prometheus itself serves)")
            except requests.exceptions.JSONDecodeError:  # also a RequestException: must come first
                return problem(QueryProblem.MALFORMED, f"{self.address} answered, but not with JSON")
            except (requests.ConnectionError, requests.Timeout) as exc:
                failed = problem(QueryProblem.UNREACHABLE, f"{self.address} did not answer ({type(exc).__name__})")
            except requests.RequestException as exc:
                return problem(QueryProblem.UNREACHABLE, f"{self.address}: {type(exc).__name__}")
            except PrometheusApiClientException as exc:
                status, text, kind = _prometheus_error(exc, self._redacted, self.address)
                if status not in UNAVAILABLE and kind not in BUSY_ERROR_TYPES:
                    return problem(QueryProblem.REJECTED, text)  # the query itself: its syntax, its sample limit
                # Prometheus busy (its own query timeout, a full query queue) or not ready: a moment's outage as a
                # timeout of ours is, whichever timer fired first. Prometheus' own words are kept.
                if kind is None:  # not Prometheus' own words: a proxy without a backend, say
                    failed = problem(QueryProblem.UNREACHABLE,
                                     f"{self.address} answered HTTP {status} on every attempt")
                else:
                    slow = kind == "timeout" or status == 504
                    failed = problem(QueryProblem.SLOW if slow else QueryProblem.UNREACHABLE,
                                     f"{self.address} is busy or not ready: {text} (on every attempt)")
            except LocationValueError as exc:  # e.g. an empty label in the host name: nothing was asked
                return problem(QueryProblem.UNREACHABLE, f"{self.address} is not a usable address "
                                                         f"({type(exc).__name__})")
            except (HTTPError, OSError) as exc:  # the streamed body broke off (urllib3's own, not requests')
                return problem(QueryProblem.UNREACHABLE, f"{self.address} did not answer ({type(exc).__name__})")
            except Incomplete as exc:  # redacted before it is cut (a cut token would not be found)
                warnings = _cut(self._redacted(str(exc)), WARNING_TEXT_LIMIT)
                return problem(QueryProblem.PARTIAL, f"{self.address} answered, but warns that the data may be "
                                                     f"incomplete: {warnings}")
            except WrongResultType as exc:
                return problem(QueryProblem.MALFORMED, f"{self.address} answered with result type "
                                                       f"{self._quoted(exc.result_type)} where {exc.expected} was "
                                                       "asked for")
            except NotSuccess as exc:
                if exc.status is None:
                    return problem(QueryProblem.MALFORMED, f"{self.address} answered JSON without Prometheus' "
                                                           "status (not an answer of its HTTP API)")
                return problem(QueryProblem.REJECTED, f"{self.address} answered HTTP 200 with status "
                                                      f"{self._quoted(exc.status)}, not success")
            except RecursionError:  # JSON nested deeper than the parser recurses
                return problem(QueryProblem.MALFORMED, f"{self.address} answered JSON nested too deep to read")
            except (KeyError, TypeError, ValueError) as exc:  # JSON, but not Prometheus' {"data": {"result": ...}}
                return problem(QueryProblem.MALFORMED, f"{self.address} answered JSON without data.result "
                                                       f"({type(exc).__name__})")
        return failed


class Redirected(Exception):
    """A redirect, which Prometheus' API never answers with: not followed."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def _refuse_redirect(response: requests.Response, *_: Any, **__: Any) -> requests.Response:
    if response.is_redirect:
        response.close()  # its body is not read
        raise Redirected(response.status_code)
    return response


class NotSuccess(Exception):
    """A 200 answer, a JSON object, whose status is not "success" (None: it has none). Quoted only redacted."""

    def __init__(self, status: Any) -> None:
        super().__init__("status is not success")
        self.status = status


class Incomplete(Exception):
    """A success answer whose warnings (or Thanos' partialResponse) say data may be missing: its text."""


class WrongResultType(Exception):
    """A success answer whose resultType is not one the endpoint asked answers with. Quoted only redacted."""

    def __init__(self, result_type: Any, expected: str) -> None:
        super().__init__("unexpected result type")
        self.result_type, self.expected = result_type, expected


def _require_success(response: requests.Response, *_: Any, **__: Any) -> requests.Response:
    """Refuses what the library would read as data but is not: it keeps only data.result of any 200."""
    if response.status_code == 200:
        try:
            answer = response.json()
        except (ValueError, RecursionError):
            return response  # not JSON: the library's own read reports it
        if not isinstance(answer, dict):
            return response  # the library's own read reports it
        if answer.get("status") != "success":
            raise NotSuccess(answer.get("status"))
        data = answer.get("data")
        expected = next((kinds for path, kinds in RESULT_TYPES.items() if urlsplit(response.url).path.endswith(path)),
                        None)
        if expected and isinstance(data, dict) and "resultType" in data and data["resultType"] not in expected:
            raise WrongResultType(str(data["resultType"]), "/".join(sorted(expected)))
        if warnings := _incompleteness(answer):
            raise Incomplete(warnings)
    return response


def _incompleteness(answer: dict[str, Any]) -> str:
    """The answer's first warnings, whole ("" when none says data may be missing): cut only once redacted (a cut
    token would not be found). `infos` is not read: PromQL info annotations are about the query, not the data."""
    warnings = answer.get("warnings")
    listed = warnings if isinstance(warnings, list) else [warnings] if warnings else []
    real = [str(w) for w in listed if not (isinstance(w, str) and w.startswith(PROMQL_INFO))]
    if not real and answer.get("partialResponse") is True:
        real = ["partialResponse is true"]
    return "; ".join(real[:5])


def _prometheus_error(exc: PrometheusApiClientException, redacted: Callable[[str], str],
                      address: str) -> tuple[int | None, str, str | None]:
    """(HTTP status, what went wrong, Prometheus' errorType: None when Prometheus did not say so, "error" when it
    gave none). Only an answer shaped like Prometheus' error is quoted, `redacted` before it is cut: the address is
    the user's, and another server's body must not be read back into a status. `address` is the one messages show
    (without credentials)."""
    text = str(exc)
    status = re.match(r"HTTP Status Code (\d+)", text)
    code = int(status.group(1)) if status else None
    body = re.search(r"\((b(?:'.*'|\".*\"))\)\s*$", text, re.DOTALL)
    try:
        answer = json.loads(ast.literal_eval(body.group(1))) if body else None
    except (ValueError, SyntaxError, RecursionError, MemoryError):
        answer = None
    if isinstance(answer, dict) and answer.get("status") == "error" and isinstance(answer.get("error"), str):
        kind = answer.get("errorType") if isinstance(answer.get("errorType"), str) else "error"
        return code, (f"HTTP {code}, Prometheus says {_cut(redacted(kind), 40)}: "
                      f"{_cut(redacted(answer['error']), WARNING_TEXT_LIMIT)}"), kind
    # Not Prometheus' own error (an HTML page, a proxy's "slow down"): say so, and which server answered.
    what = f"HTTP {code}" if code is not None else type(exc).__name__
    return code, f"{address} answered {what}, not a Prometheus error (a proxy or another server?)", None


def _newest_time(result: list[dict[str, Any]]) -> datetime | None:
    """Newest sample time in a range-query matrix (shape checked by _is_matrix), None when it holds none.
    ValueError when a time is NaN, infinite or outside datetime's range."""
    times = [float(sample[0]) for series in result for sample in series["values"]]
    if not all(0 <= t <= LATEST_TIME for t in times):  # false for NaN too, which max() skips or not by position
        raise ValueError("a sample time is not a time")
    return datetime.fromtimestamp(max(times), UTC) if times else None


def _one_number(query: str, result: Any, at: datetime | None, redacted: Callable[[str], str]) -> Measurement:
    """One number from an instant query's result; `redacted` takes secrets out of what is quoted from it."""
    if _is_sample(result):  # a scalar result: [time, "value"]
        samples = [{"value": result}]
    elif isinstance(result, list):
        samples = result
    else:
        return Measurement(query, None, QueryProblem.MALFORMED, f"unexpected result type {type(result).__name__}", at)
    if not samples:
        return Measurement(query, None, QueryProblem.EMPTY, "no series matched (nothing counted)", at)
    if len(samples) > 1:
        labels = [s.get("metric", {}) for s in samples[:3] if isinstance(s, dict)]
        return Measurement(query, None, QueryProblem.AMBIGUOUS,
                           f"{len(samples)} series returned where one number was expected (wrap it in sum()); "
                           f"first: {_cut(redacted(str(labels)), WARNING_TEXT_LIMIT)}", at)
    sample = samples[0].get("value") if isinstance(samples[0], dict) else None
    try:
        if not _is_sample(sample):  # Prometheus sends [time, "value"]: a bare number or true is not its answer
            raise ValueError
        value = float(sample[1])
    except ValueError:
        return Measurement(query, None, QueryProblem.MALFORMED,
                           f"unreadable sample {_cut(redacted(str(samples[0])), 200)}", at)
    if not math.isfinite(value):
        return Measurement(query, None, QueryProblem.NOT_A_NUMBER, f"value is {value}", at)
    # Prometheus stamps an instant answer with the evaluation time asked for: one stamped otherwise (a cache or a
    # proxy in between) is a number for another moment, not this window's. Compared only once it is a time (a NaN
    # is not; an int too large for a float would raise).
    stamp = sample[0]
    if at is not None and not (0 <= stamp <= LATEST_TIME
                               and abs(stamp - at.timestamp()) <= SAMPLE_TIME_TOLERANCE_SECONDS):
        return Measurement(query, None, QueryProblem.MALFORMED,
                           f"the answer's sample time {_stamp(stamp)} is not the evaluation time asked for, "
                           f"{_stamp(at.timestamp())}: a number for another moment (a cache or proxy in between?)",
                           at)
    return Measurement(query, value, None, "", at)


def _stamp(seconds: float) -> str:
    """A sample time as Prometheus sends it, and as a date when it is one."""
    if not 0 <= seconds <= LATEST_TIME:  # false for NaN too
        return f"{_cut(repr(seconds), 40)} (not a time)"
    return f"{seconds:.3f} ({datetime.fromtimestamp(seconds, UTC).isoformat()})"


def _cut(text: str, limit: int) -> str:
    """text on one line of at most `limit` characters: it reaches a status and an Event."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_matrix(result: Any) -> bool:
    return isinstance(result, list) and all(
        isinstance(series, dict) and isinstance(series.get("values"), list)
        and all(_is_sample(sample) for sample in series["values"]) for series in result)


def _is_sample(result: Any) -> bool:
    return (isinstance(result, list) and len(result) == 2 and isinstance(result[0], int | float)
            and not isinstance(result[0], bool) and isinstance(result[1], str))
