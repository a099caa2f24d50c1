"""
Traces from a real `twist ccserver`: its spans exported with OTLP over
HTTP (protobuf) to a collector (here, a recording HTTP server on
loopback), the grant webhook's request carrying the trace context, and the
last spans exported when the server stops.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.process import CCServerProcess, wait_until

pytestmark = pytest.mark.process


class Collector:
    """
    An OTLP/HTTP collector that records what it is sent, and a grant
    webhook that grants "read" and records each request's traceparent.
    """

    def __init__(self) -> None:
        self.exports: list[ExportTraceServiceRequest] = []
        self.traceparents: list[str | None] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path == "/v1/traces":
                    export = ExportTraceServiceRequest()
                    export.ParseFromString(body)
                    collector.exports.append(export)
                    answer, kind = b"", "application/x-protobuf"
                else:
                    collector.traceparents.append(self.headers.get("traceparent"))
                    answer, kind = json.dumps({"scope": ["read"]}).encode(), "application/json"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def spans(self) -> list[tuple[str, Any]]:
        """
        Every span exported so far: its service's name, and the span.
        """
        found = []
        for export in list(self.exports):
            for resource_spans in export.resource_spans:
                service = next(
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                )
                for scope_spans in resource_spans.scope_spans:
                    found += [(service, span) for span in scope_spans.spans]
        return found


class TracingProcessTests(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ccserver-tracing-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.collector = Collector()
        self.addCleanup(self.collector.close)
        (self.tmp / "ccserver.toml").write_text(
            f"""
[tracing]
endpoint = "http://127.0.0.1:{self.collector.port}/v1/traces"
service_name = "auth-under-test"

[grant_handler]
name = "webhook"
url = "http://127.0.0.1:{self.collector.port}/grant"
"""
        )
        self.server = CCServerProcess(
            self.tmp,
            "--config", str(self.tmp / "ccserver.toml"),
            "--master-token", "tracing-master-token-0123456789",
            store=f"sqlite:///{self.tmp}/ccserver.db",
        )
        self.addCleanup(self.server.kill)
        self.server.start()

    def test_spans_exported_and_the_context_sent(self) -> None:
        client = self.server.register(scope="read")
        response = requests.post(
            self.server.url + "/token",
            data={"grant_type": "client_credentials"},
            auth=(client["client_id"], client["client_secret"]),
            timeout=10,
        )
        self.assertEqual(response.status_code, 200, response.text)
        # the last spans go at the stop, if the batch has not gone before
        self.assertEqual(self.server.stop(), -15)  # twist ends by the signal, after its stop

        def token_traced() -> list[tuple[str, Any]]:
            return [s for s in self.collector.spans() if s[1].name == "POST /token"]

        [(service, request)] = wait_until(token_traced, what="the token request's span exported")
        self.assertEqual(service, "auth-under-test")
        trace = [span for _, span in self.collector.spans() if span.trace_id == request.trace_id]
        names = {span.name for span in trace}
        self.assertLessEqual(
            {"POST /token", "client authentication", "store get_client", "grant handler", "POST",
             "sign"},
            names,
        )
        [webhook] = [span for span in trace if span.name == "POST"]
        [traceparent] = self.collector.traceparents
        assert traceparent is not None
        _, trace_id, parent_id, _ = traceparent.split("-")
        self.assertEqual(trace_id, request.trace_id.hex())
        self.assertEqual(parent_id, webhook.span_id.hex())
        # no secret in any span
        secrets = (client["client_secret"], client["registration_access_token"],
                   response.json()["access_token"])
        text = b"".join(export.SerializeToString() for export in self.collector.exports)
        for secret in secrets:
            self.assertNotIn(secret.encode(), text)
            self.assertNotIn(base64.b64encode(secret.encode()), text)
