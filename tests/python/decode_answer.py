"""Fetches one answer over HTTP/1.1 and decodes it with Python's own decoders.

Usage: decode_answer.py HOST:PORT PATH ACCEPT_ENCODING

Sends `Accept-Encoding: ACCEPT_ENCODING`, reads the answer (http.client undoes the chunked
framing, nothing else), decodes its Content-Encoding with the `brotli`, `zstandard` or `gzip`
module, and prints one JSON line: status, content-encoding, coded length, decoded length and the
decoded body's SHA-256. Exits 2 when the body cannot be decoded.
"""

import gzip
import hashlib
import http.client
import json
import sys

import brotli
import zstandard


def main() -> int:
    addr, path, accept = sys.argv[1], sys.argv[2], sys.argv[3]
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", path, headers={"Accept-Encoding": accept})
    resp = conn.getresponse()
    coded = resp.read()
    coding = resp.getheader("content-encoding")
    try:
        if coding == "br":
            body = brotli.decompress(coded)
        elif coding == "zstd":
            # A streamed answer's frame does not declare its size: decode as a stream.
            reader = zstandard.ZstdDecompressor().stream_reader(coded)
            body = reader.read()
            while True:
                more = reader.read()
                if not more:
                    break
                body += more
        elif coding == "gzip":
            body = gzip.decompress(coded)
        else:
            body = coded
    except Exception as e:  # noqa: BLE001 - any decoder's refusal is the answer
        print(json.dumps({"error": f"{coding}: {e}"}))
        return 2
    print(
        json.dumps(
            {
                "status": resp.status,
                "coding": coding,
                "coded": len(coded),
                "decoded": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
                "content_length": resp.getheader("content-length"),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
