"""Which OTEL_* environments turn tracing on (server/tracing.py): off unless asked."""

from __future__ import annotations

import pytest

from hubbub.server import tracing


@pytest.mark.parametrize(
    ("environ", "exporter"),
    [
        ({}, None),
        ({"OTEL_SERVICE_NAME": "chat"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": " Console "}, "console"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, None),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, None),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "otlp"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, None),
    ],
)
def test_the_environment_chooses_the_exporter(environ: dict[str, str], exporter: str | None) -> None:
    assert tracing.exporter_from_environment(environ) == exporter


@pytest.mark.parametrize("value", ["jaeger", "otlp,console", "zipkin,none"])
def test_an_exporter_this_server_lacks_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER"):
        tracing.exporter_from_environment({"OTEL_TRACES_EXPORTER": value})


def test_off_by_default_with_no_tracer() -> None:
    assert tracing.configure({}) is None
    assert not tracing.enabled
    with (
        pytest.raises(RuntimeError, match="tracing is off"),
        tracing.request_span("ping", instance="i", conn_id=1, user_id=0, conversation_id=None),
    ):
        pass
