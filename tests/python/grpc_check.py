"""A real gRPC server and client (grpcio, raw bytes as messages: no protobuf needed) for the
end-to-end tests of gRPC through ringmesh.

    grpc_check.py server PORT_FILE   serve on 127.0.0.1:0, write the port to PORT_FILE
    grpc_check.py client HOST:PORT   run the calls and print one JSON result per line
"""

import json
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "ringmesh.test.Echo"
calls = {}
lock = threading.Lock()


def count(name):
    with lock:
        calls[name] = calls.get(name, 0) + 1
        return calls[name]


def unary(request, context):
    count("Unary")
    return b"echo:" + request


def stream(request, context):
    count("Stream")
    for i in range(5):
        yield b"part-%d" % i


def collect(request_iterator, context):
    count("Collect")
    return b"+".join(request_iterator)


def fail(request, context):
    count("Fail")
    context.abort(grpc.StatusCode.NOT_FOUND, "missing thing")


def slow(request, context):
    count("Slow")
    time.sleep(2)
    return b"late"


def remaining(request, context):
    left = context.time_remaining()
    return b"none" if left is None else b"%.3f" % left


def flaky(request, context):
    # Unavailable on every odd call: a retry on UNAVAILABLE makes every call succeed.
    if count("Flaky") % 2 == 1:
        context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
    return b"ok"


def counts(request, context):
    with lock:
        return json.dumps(calls).encode()


def serve(port_file):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    h = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Collect": grpc.stream_unary_rpc_method_handler(collect),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Slow": grpc.unary_unary_rpc_method_handler(slow),
            "Remaining": grpc.unary_unary_rpc_method_handler(remaining),
            "Flaky": grpc.unary_unary_rpc_method_handler(flaky),
            "Counts": grpc.unary_unary_rpc_method_handler(counts),
        },
    )
    server.add_generic_rpc_handlers((h,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    import os

    os.rename(port_file + ".tmp", port_file)
    server.wait_for_termination()


def result(name, fn):
    try:
        value = fn()
        if isinstance(value, list):
            value = [v.decode() for v in value]
        elif isinstance(value, bytes):
            value = value.decode()
        out = {"call": name, "code": "OK", "value": value}
    except grpc.RpcError as e:
        out = {"call": name, "code": e.code().name, "details": e.details()}
    print(json.dumps(out), flush=True)


def client(target):
    ch = grpc.insecure_channel(target)
    m = lambda name: "/%s/%s" % (SERVICE, name)
    result("Unary", lambda: ch.unary_unary(m("Unary"))(b"hello", timeout=10))
    result("Stream", lambda: list(ch.unary_stream(m("Stream"))(b"", timeout=10)))
    result(
        "Collect",
        lambda: ch.stream_unary(m("Collect"))(iter([b"a", b"b", b"c"]), timeout=10),
    )
    result("Fail", lambda: ch.unary_unary(m("Fail"))(b"", timeout=10))
    result("Remaining", lambda: ch.unary_unary(m("Remaining"))(b"", timeout=5))
    result("Slow", lambda: ch.unary_unary(m("Slow"))(b"", timeout=10))
    result("Flaky", lambda: [ch.unary_unary(m("Flaky"))(b"", timeout=10) for _ in range(4)])
    result("Missing", lambda: ch.unary_unary("/other.Service/Nope")(b"", timeout=10))
    result("Counts", lambda: ch.unary_unary(m("Counts"))(b"", timeout=10))


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(sys.argv[2])
    else:
        client(sys.argv[2])
