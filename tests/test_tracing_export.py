"""`hubbub serve` configured by OTEL_* alone exports its spans over OTLP/HTTP:
a real process, a real collector endpoint (an HTTP server of this test's own
on a loopback port, decoding the protobuf the exporter sends), and a real
client. Also: an exporter the server lacks stops start-up with one line.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from hubbub.protocol.client import open_client
from tests.processes import FAST_HASHING, parse_log, run_to_exit, running_server, server_env


class Collector:
    """The OTLP/HTTP traces endpoint: every export request, decoded."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/v1/traces":
                    request = ExportTraceServiceRequest()
                    request.ParseFromString(body)
                    collector.requests.append(request)
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def spans(self) -> list[tuple[str, dict[str, str], dict[str, str]]]:
        """(name, span attributes, resource attributes) of every span received."""
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        attributes = {a.key: a.value.string_value or str(a.value.int_value) for a in span.attributes}
                        found.append((span.name, attributes, resource))
        return found


@pytest.fixture
def collector() -> Iterator[Collector]:
    endpoint = Collector()
    thread = threading.Thread(target=endpoint.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield endpoint
    finally:
        endpoint.server.shutdown()
        endpoint.server.server_close()
        thread.join(10)


async def test_spans_reach_the_otlp_endpoint_the_environment_names(tmp_path: Path, collector: Collector) -> None:
    data_dir = tmp_path / "data"
    env = server_env(data_dir, {**FAST_HASHING, "HUBBUB_JWT_SECRET": "x" * 40})
    env.update(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OTEL_SERVICE_NAME": "hubbub-under-test",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
    )
    async with running_server(data_dir, env) as server:
        async with open_client(await server.url()) as client:
            await client.next_event()  # hello
            await client.register("tracy", "correct horse")
            await client.call("ping")
        os.kill(server.proc.pid, signal.SIGTERM)
        assert await server.wait() == 0  # shutting down exports what is still queued
        assert any(e.get("event") == "tracing" and e.get("exporter") == "otlp" for e in server.events)
    spans = collector.spans()
    names = {name for name, _, _ in spans}
    assert {"register", "ping"} <= names, names
    assert any(name.startswith("store.") for name in names), names
    ping = next(attributes for name, attributes, _ in spans if name == "ping")
    assert ping["hubbub.outcome"] == "ok" and ping["hubbub.op"] == "ping"
    assert all(resource["service.name"] == "hubbub-under-test" for _, _, resource in spans)


@pytest.mark.parametrize(
    "otel",
    [{}, {"OTEL_TRACES_EXPORTER": "none"}, {"OTEL_SDK_DISABLED": "true"}],
    ids=["nothing set", "exporter none", "sdk disabled"],
)
async def test_tracing_stays_off_unless_asked(tmp_path: Path, collector: Collector, otel: dict[str, str]) -> None:
    data_dir = tmp_path / "data"
    env = {k: v for k, v in server_env(data_dir).items() if not k.startswith("OTEL_")}
    env["HUBBUB_JWT_SECRET"] = "x" * 40
    if otel:  # an endpoint too: only the switch keeps the spans from it
        env.update(otel, OTEL_EXPORTER_OTLP_ENDPOINT=collector.url, OTEL_BSP_SCHEDULE_DELAY="100")
    async with running_server(data_dir, env) as server:
        async with open_client(await server.url()) as client:
            await client.next_event()
            await client.call("ping")
        os.kill(server.proc.pid, signal.SIGTERM)
        assert await server.wait() == 0
        assert not any(e.get("event") == "tracing" for e in server.events)
    assert collector.requests == []


@pytest.mark.parametrize("exporter", ["jaeger", "otlp,console"])
async def test_an_exporter_the_server_lacks_stops_start_up(tmp_path: Path, exporter: str) -> None:
    data_dir = tmp_path / "data"
    env = server_env(data_dir, {**FAST_HASHING, "HUBBUB_JWT_SECRET": "x" * 40, "OTEL_TRACES_EXPORTER": exporter})
    code, stderr = await run_to_exit(data_dir, env)
    assert code == 2
    (line,) = stderr.strip().splitlines()
    entry = parse_log(line)
    assert entry is not None and entry["event"] == "invalid_settings"
    assert "OTEL_TRACES_EXPORTER" in entry["error"]
