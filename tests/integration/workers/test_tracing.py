"""Tracing with the OpenTelemetry SDK's in-memory exporter: one trace from the producer's span to
every handler call, across a retry, for a queue job and a stream entry."""

from __future__ import annotations

import json
from typing import Any

import pytest

from corral.contract import StreamSpec, WorkSpec
from corral.workers import tracing
from corral.workers.producer import aenqueue, apublish
from tests.integration.conftest import H, client, equals, queue_work, redis_spec, wait_for

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
export = pytest.importorskip("opentelemetry.sdk.trace.export")
memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Any:
    exporter = memory.InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "provider", lambda: provider)
    return provider.get_tracer("test"), exporter


def test_one_trace_from_enqueue_to_the_handler_across_a_retry(
    redis_clean: Any, local_worker: Any, run: Any, spans: Any
) -> None:
    tracer, exporter = spans

    async def body() -> str:
        r = client(redis_clean.url)
        with tracer.start_as_current_span("produce"):
            job = await aenqueue(r, "tq", {"n": 1})
        raw = json.loads((await r.lrange("tq", 0, 0))[0])
        assert raw["trace"]["traceparent"].startswith("00-")  # W3C trace context in the envelope
        work = queue_work(redis_clean.url, names=("tq",), handler=f"{H}:fail_first", backoff_initial_s=0.1)
        worker = await local_worker(work)
        try:
            await wait_for(lambda: equals(r.hget("test:handled", job), b"1"), what="the job's second attempt")
        finally:
            await worker.stop()
        await r.aclose()
        return job

    job = run(body())
    [produce] = [s for s in exporter.get_finished_spans() if s.name == "produce"]
    handled = sorted(
        (s for s in exporter.get_finished_spans() if s.name == "corral.handle tq"),
        key=lambda s: s.attributes["corral.attempt"],
    )
    assert [s.attributes["corral.attempt"] for s in handled] == [1, 2]
    assert all(s.context.trace_id == produce.context.trace_id for s in handled), "one trace"
    assert all(s.parent.span_id == produce.context.span_id for s in handled)
    assert handled[0].status.status_code.name == "ERROR" and handled[1].status.status_code.name == "UNSET"
    assert handled[0].attributes["messaging.message.id"] == job
    assert handled[0].attributes["corral.worker_id"].startswith("testhost:")


def test_a_stream_entry_carries_its_trace_to_the_handler(
    redis_clean: Any, local_worker: Any, run: Any, spans: Any
) -> None:
    tracer, exporter = spans

    async def body() -> None:
        r = client(redis_clean.url)
        with tracer.start_as_current_span("publish"):
            await apublish(r, "ts", {"n": "1"})
        spec = StreamSpec(stream="ts", handler=f"{H}:count_entry", group="g", block_ms=200)
        worker = await local_worker(WorkSpec(redis=redis_spec(redis_clean.url), streams=(spec,)))
        try:
            await wait_for(lambda: equals(r.hlen("test:handled_entries"), 1), what="the entry")
        finally:
            await worker.stop()
        await r.aclose()

    run(body())
    [publish] = [s for s in exporter.get_finished_spans() if s.name == "publish"]
    [handled] = [s for s in exporter.get_finished_spans() if s.name == "corral.handle ts"]
    assert handled.context.trace_id == publish.context.trace_id
    assert handled.parent.span_id == publish.context.span_id


def test_without_a_provider_nothing_is_added(redis_clean: Any, run: Any) -> None:
    async def body() -> dict[str, Any]:
        r = client(redis_clean.url)
        await aenqueue(r, "plain", {"n": 1})
        raw = json.loads((await r.lrange("plain", 0, 0))[0])
        await r.aclose()
        return raw

    assert "trace" not in run(body()) and not tracing.enabled()
