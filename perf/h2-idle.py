#!/usr/bin/env python3
"""Memory per idle HTTP/2 connection of a running proxy: RSS growth over N cleartext HTTP/2
connections (prior knowledge) that each made one GET and then went quiet, after a warm-up
batch, divided by N.

usage: perf/h2-idle.py PORT PID [N]   (PID: the proxy's process; raise `ulimit -n` past N)
"""
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise SystemExit("no such process")


def main():
    port, pid = int(sys.argv[1]), int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 3000
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
    # GET http://a.test/ on stream 1: static :method, :scheme, :path; a literal :authority.
    block = bytes([0x82, 0x86, 0x84, 0x01, 6]) + b"a.test"
    get = len(block).to_bytes(3, "big") + bytes([1, 5]) + (1).to_bytes(4, "big") + block

    def batch(count):
        socks = []
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(preface + get)
            socks.append(s)
        return socks

    warm = batch(200)
    time.sleep(1)
    for s in warm:
        s.recv(65536)
    before = rss_kib(pid)
    socks = batch(n)
    time.sleep(2)
    for s in socks:
        s.settimeout(2)
        try:
            s.recv(65536)
        except OSError:
            pass
    # Past a couple of the connections' one-second ticks: idle, as they would stay.
    time.sleep(3)
    after = rss_kib(pid)
    print(f"{(after - before) * 1024 / n:.0f} bytes per idle HTTP/2 connection ({n} connections)")


if __name__ == "__main__":
    main()
