"""The Prometheus probe: one PromQL instant query, judged against `unhealthy_when`.

A breach, a query that fails while running (HTTP 422/503, `status: error`), an unreachable
Prometheus or an answer not shaped like Prometheus's is an unhealthy result. A query Prometheus
rejects as malformed (HTTP 400 `bad_data`) or one returning a range vector or a string is bad
configuration: a non-retryable `ProbeConfigError`, since asking again cannot help; so is HTTP
401/403/404 (a wrong url).
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from temporalio.exceptions import ApplicationError

from models.probes import ProbeResult, PrometheusProbe
from models.urls import redact_url

Observed = dict[str, float | int | str | None]

MALFORMED = (KeyError, IndexError, TypeError, ValueError, AttributeError)
"""What judging an answer that is not shaped like Prometheus's raises. Such an answer is this
probe's failure: escaping, it failed the whole probe round (every probe of the service counted
unhealthy, a healthy one too) after a retry that gets the same answer; as a ValueError it was
also reported as a URL that cannot be requested."""


def _result(spec: PrometheusProbe, **fields: object) -> ProbeResult:
    return ProbeResult.model_validate(
        {"probe": spec.name, "kind": spec.kind, "at": datetime.now(UTC), **fields}
    )


def _config_error(spec: PrometheusProbe, why: str) -> ApplicationError:
    return ApplicationError(f"prometheus probe {spec.name!r}: {why}", type="ProbeConfigError",
                            non_retryable=True)


def _labels(metric: dict[str, str]) -> str:
    name = metric.get("__name__", "")
    pairs = ",".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
    return f"{name}{{{pairs}}}"


def _samples(spec: PrometheusProbe, data: dict[str, Any]) -> list[tuple[str, float]]:
    """The (series labels, value) pairs of an instant vector or scalar, sorted by labels."""
    kind = data.get("resultType")
    result = data.get("result")
    if kind == "scalar" and isinstance(result, list):
        return [("scalar", float(result[1]))]
    if kind == "vector" and isinstance(result, list):
        return sorted((_labels(s.get("metric", {})), float(s["value"][1])) for s in result)
    raise _config_error(spec, f"the query returns a {kind}; use an instant vector or a scalar")


def _headline(spec: PrometheusProbe, samples: list[tuple[str, float]]) -> tuple[str, float]:
    """The series to report: the one furthest towards unhealthy (max for > >=, min for < <=)."""
    op = spec.unhealthy_when.op
    ordered = [s for s in samples if not math.isnan(s[1])] or samples
    if op in (">", ">="):
        return max(ordered, key=lambda s: s[1])
    if op in ("<", "<="):
        return min(ordered, key=lambda s: s[1])
    breaching = [s for s in samples if spec.unhealthy_when.holds(s[1])]
    return (breaching or samples)[0]


def _number(value: float) -> float | None:
    """Finite values as they are; NaN and ±Inf as None, which JSON payloads can carry."""
    return value if math.isfinite(value) else None


def judge(spec: PrometheusProbe, data: dict[str, Any], latency_ms: float) -> ProbeResult:
    """Decide health from a successful query's `data`."""
    samples = _samples(spec, data)
    condition = spec.unhealthy_when
    if not samples:
        healthy = spec.empty == "healthy"
        return _result(spec, healthy=healthy, failure=None if healthy else "threshold",
                       latency_ms=latency_ms, observed={"series": 0, "value": None},
                       detail=f"no series for {spec.query!r} (empty counts as {spec.empty})")
    breaching = [s for s in samples if condition.holds(s[1])]
    unhealthy = len(breaching) == len(samples) if spec.match == "all" else bool(breaching)
    labels, value = _headline(spec, samples)
    observed: Observed = {"value": _number(value), "series": len(samples),
                          "breaching": len(breaching), "labels": labels}
    summary = f"{labels} = {value:g}"
    if len(samples) > 1:
        summary += f" ({len(breaching)} of {len(samples)} series {condition})"
    if unhealthy:
        return _result(spec, healthy=False, failure="threshold", latency_ms=latency_ms,
                       observed=observed, detail=f"{summary}; unhealthy when {condition}")
    return _result(spec, healthy=True, latency_ms=latency_ms, observed=observed,
                   detail=f"{summary}; not {condition}")


async def check_prometheus(http: httpx.AsyncClient, spec: PrometheusProbe) -> ProbeResult:
    """Run the instant query (`GET /api/v1/query`) and judge it."""
    timeout = spec.timeout.total_seconds()
    url = spec.url.rstrip("/") + "/api/v1/query"
    shown = redact_url(spec.url)  # details go into the history: never a URL's credentials
    started = time.perf_counter()
    try:
        response = await http.get(url, params={"query": spec.query, "timeout": f"{timeout:g}"},
                                  timeout=timeout)
    except httpx.TimeoutException:
        return _result(spec, healthy=False, failure="error",
                       detail=f"prometheus at {shown} did not answer within {timeout:g}s")
    except httpx.HTTPError as err:
        return _result(spec, healthy=False, failure="error",
                       detail=f"prometheus at {shown} unreachable: {type(err).__name__}")
    latency_ms = (time.perf_counter() - started) * 1000
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code in (401, 403, 404):
        raise _config_error(spec, f"{redact_url(url)} answered HTTP {response.status_code}; "
                            "check the probe's url")
    if not isinstance(body, dict):
        return _result(spec, healthy=False, failure="error", latency_ms=latency_ms,
                       observed={"status": response.status_code},
                       detail=f"{redact_url(url)} answered HTTP {response.status_code} without a "
                              "Prometheus body")
    if response.status_code == 400:
        raise _config_error(spec, f"Prometheus rejected the query: {body.get('error', 'bad request')}")
    if body.get("status") != "success":
        return _result(spec, healthy=False, failure="error", latency_ms=latency_ms,
                       observed={"status": response.status_code},
                       detail=f"query failed ({body.get('errorType', 'error')}): "
                              f"{body.get('error', 'no error text')}")
    try:
        return judge(spec, body.get("data") or {}, latency_ms)
    except MALFORMED as err:  # a sample without a value, a value that is no number, ...
        return _result(spec, healthy=False, failure="error", latency_ms=latency_ms,
                       observed={"status": response.status_code},
                       detail=f"{redact_url(url)} answered a malformed result ({type(err).__name__})")
