"""Unmodified applications for the sidecar tests, run inside a network namespace.

    python3 apps.py http:8080 banner:2525 ...

http:PORT    an HTTP/1.1 server on every address (IPv4 and IPv6) answering
             `port=PORT xff=<X-Forwarded-For> id=<ringmesh-client-identity>`;
             `GET /bytes/N` answers N bytes (the pattern of `pattern(N)`), and a POST
             answers `sha256=<hex of the body> len=<its length>`
banner:PORT  a server that speaks first (`220 banner PORT`), then echoes lines
Prints `ready` once every socket listens.
"""
import hashlib
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/bytes/"):
            return self.answer(pattern(int(self.path[len("/bytes/"):])))
        body = "port={} xff={} id={}\n".format(
            self.server.server_address[1],
            self.headers.get("x-forwarded-for", "-"),
            self.headers.get("ringmesh-client-identity", "-"),
        ).encode()
        self.answer(body)

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        digest, left = hashlib.sha256(), length
        while left:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
        self.answer("sha256={} len={}\n".format(digest.hexdigest(), length - left).encode())

    def answer(self, body):
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def pattern(n):
    """n bytes that a lost, repeated or reordered block would change."""
    block = b"".join(i.to_bytes(4, "big") for i in range(16384))
    return (block * (n // len(block) + 1))[:n]


class DualStack(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True


def banner(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(64)

    def serve(c):
        with c:
            c.sendall("220 banner {}\r\n".format(port).encode())
            f = c.makefile("rb")
            for line in f:
                c.sendall(line)

    def loop():
        while True:
            c, _ = s.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def main():
    for spec in sys.argv[1:]:
        kind, port = spec.split(":")
        if kind == "http":
            srv = DualStack(("::", int(port)), Handler)
            threading.Thread(target=srv.serve_forever, daemon=True).start()
        else:
            banner(int(port))
    print("ready", flush=True)
    threading.Event().wait()


main()
