"""OpenTelemetry tracing, optional (``pip install corral[otel]``, and a ``TracerProvider`` set up by
the app, e.g. in its worker's ``start()``): without it, or with no provider configured, every
function here is a no-op that costs one check.

- Producers (``enqueue``, ``publish``) called inside a span carry its context: a job's envelope
  gets ``"trace": {"traceparent": ...}``, a stream entry the field ``_traceparent`` (W3C trace
  context, whatever propagator the app configured).
- Each handler call runs in a span ``corral.handle <queue or stream>``, a child of the producer's,
  with the queue or stream, the job or entry id, the attempt and the worker id as attributes; a
  failure is recorded on it. A retry re-encodes the job with its trace, and a dead letter keeps the
  job's bytes, so every attempt (and a retry from the dead letters) joins the same trace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import ProxyTracerProvider, SpanKind, Status, StatusCode
except ImportError:  # the extra is not installed: tracing is off
    trace = None  # type: ignore[assignment]

TRACEPARENT_FIELD = "_traceparent"


def provider() -> Any:
    """The tracer provider corral's spans come from: the app's global one."""
    return trace.get_tracer_provider()


def enabled() -> bool:
    """An OpenTelemetry SDK provider is configured (not the API's default no-op proxy)."""
    return trace is not None and not isinstance(provider(), ProxyTracerProvider)


def carrier() -> dict[str, str] | None:
    """The current span's context to put in a job or entry, or None (no span, or tracing off)."""
    if not enabled() or not trace.get_current_span().get_span_context().is_valid:
        return None
    found: dict[str, str] = {}
    propagate.inject(found)
    return found or None


def entry_carrier() -> dict[str, str]:
    """For a stream entry: ``{"_traceparent": ...}`` or nothing."""
    found = carrier()
    return {f"_{name}": value for name, value in found.items()} if found else {}


def job_context(raw_trace: Any) -> Any:
    """The producer's context from a job's ``"trace"``; None for none, or one that does not parse
    (a foreign producer's garbage must never fail the job)."""
    if not isinstance(raw_trace, dict):
        return None
    try:
        return propagate.extract({str(k): str(v) for k, v in raw_trace.items()})
    except Exception:
        return None


def entry_context(fields: dict[bytes, bytes]) -> Any:
    found = {
        key.decode()[1:]: value.decode("utf-8", "replace")
        for key, value in fields.items()
        if key in (b"_traceparent", b"_tracestate")
    }
    return job_context(found) if found else None


@contextlib.contextmanager
def handling(item: Any, worker_id: str) -> Iterator[None]:
    """A span around one handler call (a ``Job`` or a ``Message``), child of its producer's."""
    if not enabled():
        yield
        return
    is_job = hasattr(item, "queue")
    source = item.queue if is_job else item.stream
    parent = job_context(item.trace) if is_job else entry_context(item.raw_fields)
    attributes = {
        "messaging.system": "redis",
        "messaging.destination.name": source,
        "messaging.message.id": item.id,
        "corral.attempt": item.attempt,
        "corral.worker_id": worker_id,
    }
    tracer = provider().get_tracer("corral")
    with tracer.start_as_current_span(
        f"corral.handle {source}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        try:
            yield
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
