#!/usr/bin/env python3
"""Node-side measurements of the network benchmark (tests/net/bench.sh).

    bench.py send HOST PORT MIB      connect, send MIB MiB, wait for the peer to close;
                                     prints `seconds`
    bench.py recv ADDR PORT TIMEOUT  accept one connection, read to EOF; prints `bytes seconds`
                                     (from the first byte to EOF)
    bench.py latency HOST PORT N     N sequential HTTP/1.0 GETs (connect, request, read to
                                     close); prints `median_ms p90_ms`
Every loop is bounded in count and time.
"""
import socket
import statistics
import sys
import time

CHUNK = 1 << 16


def send(host, port, mib):
    data = b"\0" * CHUNK
    total = mib << 20
    s = socket.create_connection((host, port), timeout=60)
    start = time.monotonic()
    sent = 0
    while sent < total:
        sent += s.send(data[: min(CHUNK, total - sent)])
    s.shutdown(socket.SHUT_WR)
    s.settimeout(120)
    while s.recv(CHUNK):
        pass
    print(f"{time.monotonic() - start:.6f}")


def recv(addr, port, timeout):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(1)
    # The caller starts the sender once this is said (python starts slowly under emulation).
    print("listening", file=sys.stderr, flush=True)
    ls.settimeout(timeout)
    c, _ = ls.accept()
    c.settimeout(timeout)
    first = c.recv(CHUNK)
    start = time.monotonic()
    n = len(first)
    while True:
        b = c.recv(CHUNK)
        if not b:
            break
        n += len(b)
    print(f"{n} {time.monotonic() - start:.6f}")


def latency(host, port, n):
    times = []
    deadline = time.monotonic() + 600
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        t = time.monotonic()
        s = socket.create_connection((host, port), timeout=30)
        s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
        while s.recv(CHUNK):
            pass
        s.close()
        times.append((time.monotonic() - t) * 1000)
    times.sort()
    p90 = times[min(len(times) - 1, int(len(times) * 0.9))]
    print(f"{statistics.median(times):.3f} {p90:.3f}")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "send":
        send(args[0], int(args[1]), int(args[2]))
    elif cmd == "recv":
        recv(args[0], int(args[1]), float(args[2]))
    elif cmd == "latency":
        latency(args[0], int(args[1]), int(args[2]))
    else:
        sys.exit(f"bench.py: unknown command {cmd}")


if __name__ == "__main__":
    main()
