"""A minimal OTLP/HTTP trace receiver for tests: decodes each protobuf export and keeps the spans."""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.support.redis_servers import free_port


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@dataclass
class Span:
    name: str
    kind: int  # opentelemetry.proto SpanKind: 2 SERVER, 3 CLIENT, 1 INTERNAL
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status: int  # 0 UNSET, 1 OK, 2 ERROR
    links: list[tuple[str, str]]
    resource: dict[str, Any] = field(default_factory=dict)
    start_ns: int = 0
    end_ns: int = 0


class OtlpReceiver:
    SERVER, CLIENT, INTERNAL = 2, 3, 1

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bodies: list[bytes] = []  # raw (decompressed) export requests, for secret scans
        self.headers: list[dict[str, str]] = []
        self.spans: list[Span] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver._record(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)

    def _record(self, path: str, headers: dict[str, str], body: bytes) -> None:
        assert path == "/v1/traces", path
        req = ExportTraceServiceRequest.FromString(body)
        spans = []
        for rs in req.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans.append(
                        Span(
                            s.name,
                            s.kind,
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            {a.key: _value(a.value) for a in s.attributes},
                            s.status.code,
                            [(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                            resource,
                            s.start_time_unix_nano,
                            s.end_time_unix_nano,
                        )
                    )
        with self._lock:
            self.bodies.append(body)
            self.headers.append(headers)
            self.spans.extend(spans)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def snapshot(self) -> list[Span]:
        with self._lock:
            return list(self.spans)
