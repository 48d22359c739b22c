"""Prometheus metric provider: instant queries with timeouts and retries, each result explained."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry


class QueryProblem(StrEnum):
    """Why a query gave no usable number. Each maps to its own explained verdict."""

    UNREACHABLE = "PrometheusUnreachable"
    REJECTED = "QueryRejected"  # Prometheus answered with an error: bad syntax, timeout, too many samples
    EMPTY = "NoData"  # no series matched: nothing was counted, or the series went stale
    NOT_A_NUMBER = "NotANumber"  # NaN or infinite, e.g. 0/0
    AMBIGUOUS = "MultipleSeries"  # more than one series where one number was expected
    MALFORMED = "MalformedResponse"


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
                 headers: dict[str, str] | None = None) -> None:
        retry = Retry(total=retries, backoff_factor=0.2, status_forcelist=(502, 503, 504),
                      allowed_methods=frozenset({"GET", "POST"}))
        self.address = address.rstrip("/")
        self.timeout_seconds = timeout_seconds
        # POST keeps long queries out of URLs (and out of proxies' access logs).
        self._client = PrometheusConnect(url=self.address, headers=headers, retry=retry,
                                         timeout=timeout_seconds, method="POST")

    def __repr__(self) -> str:
        return f"PrometheusProvider({self.address!r})"

    def scalar(self, query: str, at: datetime | None = None) -> Measurement:
        """Evaluate `query` at `at` (default: now) and expect exactly one number."""
        params = {"time": f"{at.timestamp():.3f}"} if at else None
        try:
            result = self._client.custom_query(query, params=params)
        except (requests.ConnectionError, requests.Timeout) as exc:
            return Measurement(query, None, QueryProblem.UNREACHABLE,
                               f"{self.address} did not answer ({type(exc).__name__})", at)
        except requests.RequestException as exc:
            return Measurement(query, None, QueryProblem.UNREACHABLE, f"{self.address}: {type(exc).__name__}", at)
        except PrometheusApiClientException as exc:
            return Measurement(query, None, QueryProblem.REJECTED, _prometheus_error(exc), at)
        except ValueError as exc:
            return Measurement(query, None, QueryProblem.MALFORMED, f"response is not JSON: {exc}", at)
        return _one_number(query, result, at)


def _prometheus_error(exc: PrometheusApiClientException) -> str:
    text = str(exc)
    return text[:300]


def _one_number(query: str, result: Any, at: datetime | None) -> Measurement:
    if isinstance(result, dict) and "value" in result:  # a scalar result
        samples = [result]
    elif isinstance(result, list):
        samples = result
    else:
        return Measurement(query, None, QueryProblem.MALFORMED, f"unexpected result type {type(result).__name__}", at)
    if not samples:
        return Measurement(query, None, QueryProblem.EMPTY, "no series matched (nothing counted yet, or stale)", at)
    if len(samples) > 1:
        labels = [s.get("metric", {}) for s in samples[:3] if isinstance(s, dict)]
        return Measurement(query, None, QueryProblem.AMBIGUOUS,
                           f"{len(samples)} series returned where one number was expected (wrap it in sum()); "
                           f"first: {labels}", at)
    try:
        value = float(samples[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return Measurement(query, None, QueryProblem.MALFORMED, f"unreadable sample {str(samples[0])[:200]}", at)
    if not math.isfinite(value):
        return Measurement(query, None, QueryProblem.NOT_A_NUMBER, f"value is {value}", at)
    return Measurement(query, value, None, "", at)
