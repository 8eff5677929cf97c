#!/usr/bin/env python3
"""Host side of the husk vsock end-to-end tests (hybrid unix-socket convention).

  vsock_host.py send TARGET PORT BYTES [N]  N parallel streams (default 1) to the guest's
                                          `vsock-tool serve PORT` (or `tcp-serve`); checks its
                                          "<bytes> <crc>" reply; TARGET as for blast
  vsock_host.py fetch UDS PORT BYTES [S]  asks the guest's `vsock-tool source PORT` for BYTES,
                                          checks length and CRC; S: seconds to wait before
                                          reading (the guest closes while data is in flight)
  vsock_host.py refused UDS PORT          CONNECT to a port nobody listens on: expects no OK line
  vsock_host.py listen PATH COUNT         serves COUNT guest-initiated connections on PATH
                                          (`<uds>_<port>`, or tcp:IP:PORT): drain, reply
                                          "<bytes> <crc>"
  vsock_host.py poke TARGET PORT          one connection to PORT (e.g. to end the guest's wait);
                                          TARGET as for blast
  vsock_host.py blast TARGET PORT BYTES   benchmarks: send BYTES (unchecked) to a guest
                                          `vsock-tool sink`/`tcp-sink`; TARGET is a hybrid UDS
                                          path, vsock:CID (AF_VSOCK, e.g. QEMU vhost-vsock) or
                                          tcp:IP; prints MiB/s from connect to the byte-count reply
  vsock_host.py pull TARGET PORT BYTES    benchmarks: ask a guest `vsock-tool spout` for BYTES
                                          (unchecked); prints MiB/s from the request to EOF
  (blast and pull print "(<x> MiB/s)" only when every byte arrived, and exit 1 otherwise)
Pattern and checksum match vsock-tool: T[i mod 65521], CRC-32.
"""
import socket
import sys
import threading
import time
import zlib

P = 65521
T = bytes((((k * k * 31 + k * 7 + 13) >> 3) & 0xFF) for k in range(P))
BIG = T * 17  # > 1 MiB, so any 1 MiB window starting below P is a slice


def pattern_chunks(n, size=1 << 20):
    off = 0
    while off < n:
        k = min(size, n - off)
        start = off % P
        yield BIG[start:start + k]
        off += k


def expected(n):
    crc = 0
    for c in pattern_chunks(n):
        crc = zlib.crc32(c, crc)
    return "%d %08x" % (n, crc)


def host_connect(uds, port, deadline, require_ok=True):
    """Connects and does the CONNECT handshake, retrying until the guest listens."""
    last = "no attempt"
    while time.time() < deadline:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(uds)
            s.sendall(b"CONNECT %d\n" % port)
            line = b""
            while not line.endswith(b"\n"):
                b = s.recv(1)
                if not b:
                    break
                line += b
            if line.startswith(b"OK "):
                return s
            last = "closed without OK (%r)" % line
        except OSError as e:
            last = str(e)
        s.close()
        if not require_ok:
            return None
        time.sleep(0.5)
    raise RuntimeError("CONNECT %d via %s: %s" % (port, uds, last))


def read_all(s):
    out = []
    while True:
        b = s.recv(1 << 16)
        if not b:
            return b"".join(out)
        out.append(b)


def cmd_send(uds, port, n, streams=1):
    results = [None] * streams
    deadline = time.time() + 300

    def one(i):
        try:
            s = connect_target(uds, port, deadline)
            for c in pattern_chunks(n):
                s.sendall(c)
            s.shutdown(socket.SHUT_WR)
            results[i] = read_all(s).decode().strip()
            s.close()
        except Exception as e:  # reported below
            results[i] = "error: %s" % e

    th = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    t0 = time.time()
    for t in th:
        t.start()
    for t in th:
        t.join()
    dt = time.time() - t0
    want = expected(n)
    bad = [r for r in results if r != want]
    print("send: %d stream(s) x %d bytes in %.1f s (%.2f MiB/s); want '%s'; bad: %s"
          % (streams, n, dt, streams * n / dt / 2**20, want, bad[:3]))
    return 0 if not bad else 1


def cmd_fetch(uds, port, n, delay=0.0):
    s = host_connect(uds, port, time.time() + 120)
    s.sendall(b"%d\n" % n)
    # A slow reader: the guest finishes (and closes) while the device still holds its data.
    time.sleep(delay)
    t0 = time.time()
    crc, total = 0, 0
    while True:
        b = s.recv(1 << 16)
        if not b:
            break
        crc = zlib.crc32(b, crc)
        total += len(b)
    dt = time.time() - t0
    got = "%d %08x" % (total, crc)
    want = expected(n)
    print("fetch: %d bytes in %.1f s (%.2f MiB/s); got '%s' want '%s'" % (total, dt, total / dt / 2**20, got, want))
    return 0 if got == want else 1


def cmd_refused(uds, port):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(uds)
    s.settimeout(60)
    s.sendall(b"CONNECT %d\n" % port)
    try:
        data = s.recv(64)
    except ConnectionResetError:
        data = b""
    print("refused: port %d answered %r" % (port, data))
    return 0 if not data.startswith(b"OK") else 1


def cmd_listen(path, count):
    if path.startswith("tcp:"):
        _, ip, port = path.split(":")
        l = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        l.bind((ip, int(port)))
    else:
        l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        l.bind(path)
    l.listen(64)
    print("listening on %s" % path, flush=True)
    for _ in range(count):
        c, _ = l.accept()
        crc, total = 0, 0
        while True:
            b = c.recv(1 << 16)
            if not b:
                break
            crc = zlib.crc32(b, crc)
            total += len(b)
        c.sendall(b"%d %08x\n" % (total, crc))
        c.close()
    l.close()
    return 0


def connect_target(target, port, deadline):
    """A connected stream to PORT of TARGET (see blast), retrying until the guest listens."""
    if not (target.startswith("vsock:") or target.startswith("tcp:")):
        return host_connect(target, port, deadline)
    kind, addr = target.split(":", 1)
    while True:
        if kind == "vsock":
            s, where = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM), (int(addr), port)
        else:
            s, where = socket.socket(socket.AF_INET, socket.SOCK_STREAM), (addr, port)
        try:
            s.connect(where)
            return s
        except OSError as e:
            s.close()
            if time.time() > deadline:
                raise RuntimeError("connect %s port %d: %s" % (target, port, e))
            time.sleep(0.5)


def report(what, n, dt, complete, detail):
    if complete:
        print("%s: %d bytes in %.2f s (%.2f MiB/s) %s" % (what, n, dt, n / dt / 2**20, detail))
        return 0
    print("%s: incomplete after %.2f s: %s" % (what, dt, detail))
    return 1


def cmd_blast(target, port, n):
    s = connect_target(target, port, time.time() + 120)
    buf = memoryview(b"\x5a" * (1 << 20))
    t0 = time.time()
    left = n
    while left:
        k = min(len(buf), left)
        s.sendall(buf[:k])
        left -= k
    s.shutdown(socket.SHUT_WR)
    reply = read_all(s).decode(errors="replace").strip()
    dt = time.time() - t0
    s.close()
    return report("blast", n, dt, reply == str(n), "reply %r" % reply)


def cmd_pull(target, port, n):
    s = connect_target(target, port, time.time() + 120)
    buf = bytearray(1 << 20)
    t0 = time.time()
    s.sendall(b"%d\n" % n)
    total = 0
    while True:
        k = s.recv_into(buf)
        if not k:
            break
        total += k
    dt = time.time() - t0
    s.close()
    return report("pull", n, dt, total == n, "got %d of %d bytes" % (total, n))


def cmd_poke(target, port):
    s = connect_target(target, port, time.time() + 60)
    s.close()
    return 0


def main(a):
    if a[:1] == ["send"]:
        return cmd_send(a[1], int(a[2]), int(a[3]), int(a[4]) if len(a) > 4 else 1)
    if a[:1] == ["fetch"]:
        return cmd_fetch(a[1], int(a[2]), int(a[3]), float(a[4]) if len(a) > 4 else 0.0)
    if a[:1] == ["refused"]:
        return cmd_refused(a[1], int(a[2]))
    if a[:1] == ["listen"]:
        return cmd_listen(a[1], int(a[2]))
    if a[:1] == ["blast"]:
        return cmd_blast(a[1], int(a[2]), int(a[3]))
    if a[:1] == ["pull"]:
        return cmd_pull(a[1], int(a[2]), int(a[3]))
    if a[:1] == ["poke"]:
        return cmd_poke(a[1], int(a[2]))
    if a[:1] == ["expected"]:
        print(expected(int(a[1])))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
