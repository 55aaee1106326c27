"""OpenTelemetry tracing of requests, store calls, broker publishes and the
deliveries they cause on other instances: off unless the standard ``OTEL_*``
environment turns it on (docs/operations.md, "Tracing").

Off is the default and costs one module attribute read where a span would
start (``if tracing.enabled:`` in server/dispatch.py, server/guarded.py,
server/broker_redis.py): no SDK object is built, no context is attached.
The SDK itself is imported only by ``configure`` when tracing is asked for.

On, each request is a span named after its op (SERVER kind) with its user,
conversation and outcome; each store call made inside one is a CLIENT child;
each broker publish a PRODUCER child, whose W3C ``traceparent`` travels in the
Redis envelope, so that the delivery on another instance (a CONSUMER span)
joins the sender's trace.

The provider is this module's own, not OpenTelemetry's global one: the
global can be set once per process, and tests install a provider with an
in-memory exporter, then take it away again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from hubbub.server.broker import Broker, Event, MembershipChange

enabled = False
"""True while a tracer provider is installed; read before any other call of this module."""

EXPORTERS = ("otlp", "console", "none")
"""The values of ``OTEL_TRACES_EXPORTER`` this server understands."""
OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
SERVICE_NAME = "hubbub"
"""The ``service.name`` of the spans unless ``OTEL_SERVICE_NAME`` says otherwise."""
TRACER_NAME = "hubbub"

_tracer: Tracer | None = None
_provider: TracerProvider | None = None
_propagator = TraceContextTextMapPropagator()


def exporter_from_environment(environ: Mapping[str, str]) -> str | None:
    """Which exporter the environment asks for (``otlp`` or ``console``), or
    None: tracing stays off. ValueError for an exporter this server lacks.

    On when ``OTEL_TRACES_EXPORTER`` names one, or when an OTLP endpoint is
    set without it; off with ``OTEL_TRACES_EXPORTER=none``,
    ``OTEL_SDK_DISABLED=true``, or nothing set (the specification's default
    exporter is otlp, but a server must not start sending spans to
    localhost:4318 because nobody said anything).
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    named = [name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]
    unknown = [name for name in named if name not in EXPORTERS]
    if unknown:
        raise ValueError(f"OTEL_TRACES_EXPORTER: {', '.join(unknown)} not supported; use one of {', '.join(EXPORTERS)}")
    if "none" in named:
        return None
    if named:
        if len(named) > 1:
            raise ValueError("OTEL_TRACES_EXPORTER: name one exporter (otlp, console or none)")
        return named[0]
    if any(environ.get(name, "").strip() for name in OTLP_ENDPOINTS):
        return "otlp"
    return None


def configure(environ: Mapping[str, str]) -> str | None:
    """Install a provider exporting in batches as ``environ`` says (the SDK and
    the exporter read their other ``OTEL_*`` variables themselves: endpoint,
    headers, timeout, sampler, resource attributes, batch sizes); the exporter's
    name, or None when tracing stays off."""
    exporter_name = exporter_from_environment(environ)
    if exporter_name is None:
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME as SERVICE_NAME_KEY
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    # Resource.create merges OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME over this default.
    resource = Resource.create({SERVICE_NAME_KEY: environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME})
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    return exporter_name


def install(provider: TracerProvider) -> None:
    """Trace into ``provider`` from now on (``configure``, or a test's in-memory exporter)."""
    global enabled, _tracer, _provider
    _provider = provider
    _tracer = provider.get_tracer(TRACER_NAME)
    enabled = True


def uninstall() -> TracerProvider | None:
    """Tracing off again; the provider that was installed (not shut down)."""
    global enabled, _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    enabled = False
    return provider


def shutdown() -> None:
    """Off, after exporting the spans still queued (blocks up to the exporter's timeout)."""
    provider = uninstall()
    if provider is not None:
        provider.shutdown()


def _the_tracer() -> Tracer:
    if _tracer is None:
        raise RuntimeError("tracing is off: check tracing.enabled first")
    return _tracer


# -- requests -----------------------------------------------------------------


@contextlib.contextmanager
def request_span(op: str, *, instance: str, conn_id: int, user_id: int, conversation_id: int | None) -> Iterator[Span]:
    """The span of one request, current while it is served (its store calls
    and publishes are its children); ``request_outcome`` before it ends."""
    attributes: dict[str, Any] = {"hubbub.op": op, "hubbub.instance": instance, "hubbub.conn_id": conn_id}
    if user_id:
        attributes["hubbub.user_id"] = user_id
    if conversation_id:
        attributes["hubbub.conversation_id"] = conversation_id
    with _the_tracer().start_as_current_span(
        op, kind=SpanKind.SERVER, attributes=attributes, record_exception=True, set_status_on_exception=True
    ) as span:
        yield span


def request_outcome(span: Span, user_id: int, error_code: str | None) -> None:
    """How the request ended: ``ok`` or its error code (PROTOCOL.md), and the
    user it was served for (known only now for a login or register)."""
    if user_id:
        span.set_attribute("hubbub.user_id", user_id)
    span.set_attribute("hubbub.outcome", error_code or "ok")
    if error_code is not None:
        span.set_attribute("hubbub.error_code", error_code)
        span.set_status(StatusCode.ERROR, error_code)


# -- store calls --------------------------------------------------------------


def start_store_span(store: str, op: str) -> Span | None:
    """A store call's span, child of the current span; None outside any (a
    background task's own calls are not traced on their own)."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    return _the_tracer().start_span(
        f"store.{op}", kind=SpanKind.CLIENT, attributes={"db.system.name": store, "hubbub.store": store}
    )


def end_store_span(span: Span, error: str | None) -> None:
    if error is not None:
        span.set_status(StatusCode.ERROR, error)
    span.end()


# -- the broker ---------------------------------------------------------------


def traceparent() -> str | None:
    """The current span's W3C ``traceparent``, to carry in a Redis envelope."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def delivery_span(parent: str, frame_type: str, instance: str) -> Iterator[None]:
    """Delivering an event received from another instance, in the trace of the
    publish that sent it (``parent``, the envelope's ``traceparent``)."""
    parent_context = _propagator.extract({"traceparent": parent})
    token = otel_context.attach(parent_context)
    try:
        with _the_tracer().start_as_current_span(
            f"deliver {frame_type}",
            kind=SpanKind.CONSUMER,
            attributes={"hubbub.frame_type": frame_type, "hubbub.instance": instance},
        ):
            yield
    finally:
        otel_context.detach(token)


class TracedBroker:
    """A broker whose publishes are PRODUCER spans (children of the request
    that publishes, when there is one): the Redis broker, inside that span,
    puts its ``traceparent`` in the envelope. Everything else passes through."""

    def __init__(self, broker: Broker, instance: str) -> None:
        self._broker = broker
        self._instance = instance

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    def publish(self, event: Event) -> None:
        attributes: dict[str, Any] = {"hubbub.frame_type": event.frame_type, "hubbub.instance": self._instance}
        if event.conversations:
            attributes["hubbub.conversation_id"] = event.conversations[0]
        if event.seq:
            attributes["hubbub.seq"] = event.seq
        with _the_tracer().start_as_current_span(
            f"publish {event.frame_type}", kind=SpanKind.PRODUCER, attributes=attributes
        ):
            self._broker.publish(event)

    def publish_membership(self, change: MembershipChange) -> None:
        self._broker.publish_membership(change)


def traced(broker: Broker, instance: str) -> Broker:
    """``broker`` with its publishes traced when tracing is on, else itself."""
    if not enabled:
        return broker
    # A proxy, not a Broker subclass: it passes through whatever Broker grows.
    return cast("Broker", TracedBroker(broker, instance))
