"""A test OpenTelemetry collector: takes OTLP/HTTP protobuf posts, decodes them with the
official `opentelemetry-proto` package, and prints one JSON line per span on stdout.

    python3 otlp_collector.py [--delay SECONDS] [--status CODE]

The first line printed is `{"port": N}` (it listens on 127.0.0.1, port chosen by the system).
`--delay` holds every answer that long (a slow collector); `--status` answers with that status.
A post that is not a valid ExportTraceServiceRequest is answered 400 and printed as
`{"invalid": "..."}`, so a test sees an encoding mistake instead of missing spans.
"""

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

LOCK = threading.Lock()


def emit(obj):
    with LOCK:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def unknown(msg):
    """The first message (by field path) holding a field its schema does not have."""
    if len(unknown_fields.UnknownFieldSet(msg)):
        return msg.DESCRIPTOR.full_name
    for field, v in msg.ListFields():
        if field.message_type is None:
            continue
        for m in v if field.is_repeated else [v]:
            found = unknown(m)
            if found:
                return found
    return None


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def spans(req):
    for rs in req.resource_spans:
        resource = {a.key: value(a.value) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield {
                    "resource": resource,
                    "scope": ss.scope.name,
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "name": s.name,
                    "kind": s.kind,
                    "start": s.start_time_unix_nano,
                    "end": s.end_time_unix_nano,
                    "flags": s.flags,
                    "status": s.status.code,
                    "attributes": {a.key: value(a.value) for a in s.attributes},
                }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--status", type=int, default=200)
    args = ap.parse_args()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = args.status
            if self.headers.get("Content-Type") != "application/x-protobuf":
                emit({"invalid": "content-type " + str(self.headers.get("Content-Type"))})
                status = 415
            else:
                req = trace_service_pb2.ExportTraceServiceRequest()
                try:
                    req.ParseFromString(body)
                    # An unknown field is a field number or wire type the schema lacks.
                    where = unknown(req)
                    if where:
                        raise DecodeError("unknown field in " + where)
                    for s in spans(req):
                        emit(s)
                    emit({"post": len(body)})
                except DecodeError as e:
                    emit({"invalid": str(e)})
                    status = 400
            if args.delay:
                time.sleep(args.delay)
            out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)
            except (BrokenPipeError, ConnectionResetError):
                # A slow collector's client gave up waiting: as a real one would see it.
                self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    emit({"port": server.server_address[1]})
    server.serve_forever()


if __name__ == "__main__":
    main()
