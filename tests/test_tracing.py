"""OpenTelemetry tracing across two instances (server/tracing.py): a request's
span, its store and publish children, and the delivery on the other instance
in the sender's trace, through the Redis envelope.

Two in-process servers (so the SDK's in-memory exporter sees both) on this
session's PostgreSQL and the machine's Redis under a prefix of their own;
real WebSocket clients.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from hubbub.protocol import frames
from hubbub.protocol.client import ServerError
from hubbub.server import tracing
from tests.cluster import CLUSTER_SETTINGS, SHARED_REDIS, WAIT
from tests.conftest import RunningServer, ServerFactory, unique_name

pytest_plugins = ["tests.cluster"]  # its fixture stores: both stores on PostgreSQL


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory, for this test only (the provider is the process's)."""
    provider = TracerProvider(shutdown_on_exit=False)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.uninstall()
        provider.shutdown()


@pytest.fixture
async def two_instances(
    make_server: ServerFactory, stores: dict[str, Any], spans: InMemorySpanExporter, tmp_path: Path
) -> tuple[RunningServer, RunningServer]:
    prefix = f"hubbub-test-trace-{uuid.uuid4().hex[:12]}"
    overrides = {**stores, **CLUSTER_SETTINGS, "redis_url": SHARED_REDIS, "redis_prefix": prefix}
    a = await make_server(data_dir=tmp_path / "a", **overrides)
    b = await make_server(data_dir=tmp_path / "b", **overrides)
    return a, b


async def until(condition: Any, what: str) -> None:
    """Wait (bounded) for ``condition()``: a state the servers reach on their own."""
    end = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < end, f"no {what} within {WAIT}s"
        await asyncio.sleep(0.01)


def named(finished: Sequence[ReadableSpan], name: str, **attributes: Any) -> list[ReadableSpan]:
    return [
        s for s in finished if s.name == name and all((s.attributes or {}).get(k) == v for k, v in attributes.items())
    ]


async def test_a_message_is_one_trace_from_the_request_to_the_delivery_on_another_instance(
    two_instances: tuple[RunningServer, RunningServer], spans: InMemorySpanExporter
) -> None:
    a, b = two_instances
    assert a.app.services is not None and b.app.services is not None
    alice = await a.user()
    bob = await b.user()
    assert alice.user is not None and bob.user is not None
    channel = (await alice.call("channel.create", name=unique_name("ch"))).conversation
    await bob.call("channel.join", channel_id=channel.id)
    broker_b = b.app.services.broker
    await until(lambda: channel.id in broker_b.topics()["conversations"], "B subscribes to the channel")

    ack = await alice.call("message.send", conversation_id=channel.id, text="traced", client_msg_id="t1")
    event = await bob.next_event(frames.MessageNew)
    assert event.message.id == ack.message.id

    a_id, b_id = a.app.instance_id, b.app.instance_id
    finished = spans.get_finished_spans()
    (send,) = named(finished, "message.send", **{"hubbub.instance": a_id})
    assert send.kind == SpanKind.SERVER
    attributes = send.attributes or {}
    assert attributes["hubbub.user_id"] == alice.user.id
    assert attributes["hubbub.conversation_id"] == channel.id
    assert attributes["hubbub.outcome"] == "ok"
    assert "hubbub.error_code" not in attributes
    assert send.status.status_code != StatusCode.ERROR
    trace_id = send.context.trace_id

    appends = [s for s in named(finished, "store.append") if s.context.trace_id == trace_id]
    assert appends, "no store.append span in the send's trace"
    assert all(s.kind == SpanKind.CLIENT and s.parent is not None for s in appends)
    assert {s.parent.span_id for s in appends if s.parent is not None} == {send.context.span_id}
    assert (appends[0].attributes or {})["hubbub.store"] == "postgres"

    publishes = [s for s in named(finished, "publish message.new") if s.context.trace_id == trace_id]
    (publish,) = publishes
    assert publish.kind == SpanKind.PRODUCER
    assert publish.parent is not None and publish.parent.span_id == send.context.span_id
    assert (publish.attributes or {})["hubbub.seq"] == ack.message.seq

    deliveries = named(finished, "deliver message.new", **{"hubbub.instance": b_id})
    (delivery,) = [s for s in deliveries if s.context.trace_id == trace_id]
    assert delivery.kind == SpanKind.CONSUMER
    assert delivery.parent is not None and delivery.parent.span_id == publish.context.span_id
    assert delivery.parent.is_remote, "the delivery's parent came through Redis, not from this process"
    # The sender's own instance delivers in the publish span: it has no delivery span of its own.
    assert not named(finished, "deliver message.new", **{"hubbub.instance": a_id})


async def test_an_error_reply_is_the_outcome_of_its_span(
    two_instances: tuple[RunningServer, RunningServer], spans: InMemorySpanExporter
) -> None:
    a, _ = two_instances
    alice = await a.user()
    assert alice.user is not None
    with pytest.raises(ServerError) as refused:
        await alice.call("message.send", conversation_id=987654321, text="nowhere", client_msg_id="t2")
    (failed,) = named(spans.get_finished_spans(), "message.send", **{"hubbub.conversation_id": 987654321})
    attributes = failed.attributes or {}
    assert attributes["hubbub.outcome"] == refused.value.code == attributes["hubbub.error_code"]
    assert attributes["hubbub.user_id"] == alice.user.id
    assert failed.status.status_code == StatusCode.ERROR


async def test_a_login_span_names_the_user_it_authenticated(
    two_instances: tuple[RunningServer, RunningServer], spans: InMemorySpanExporter
) -> None:
    a, _ = two_instances
    name = unique_name()
    registered = await a.user(name)
    assert registered.user is not None
    client = await a.client()
    await client.call("login", username=name, password="correct horse")
    (login,) = named(spans.get_finished_spans(), "login", **{"hubbub.instance": a.app.instance_id})
    assert (login.attributes or {})["hubbub.user_id"] == registered.user.id
    assert (login.attributes or {})["hubbub.outcome"] == "ok"
    # Its store calls are its children, and only traced calls exist: none without a parent.
    assert all(s.parent is not None for s in spans.get_finished_spans() if s.name.startswith("store."))
