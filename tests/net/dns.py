#!/usr/bin/env python3
"""A tiny DNS responder for the network tests: answers A queries for one name with one
address (NXDOMAIN for anything else) on UDP ADDR:53, and stops by itself after LIFETIME
seconds or MAX_QUERIES queries.

    dns.py ADDR NAME IPV4 [LIFETIME] [MAX_QUERIES]
"""
import socket
import struct
import sys
import time


def answer(query, name, ip):
    """The response to one query packet (None for one that cannot be parsed)."""
    if len(query) < 12:
        return None
    qid, flags, qdcount = struct.unpack("!HHH", query[:6])
    if qdcount != 1 or flags & 0x8000:
        return None
    labels, i = [], 12
    while i < len(query) and query[i] != 0:
        n = query[i]
        labels.append(query[i + 1 : i + 1 + n].decode("ascii", "replace").lower())
        i += 1 + n
    if i + 5 > len(query):
        return None
    qtype, _ = struct.unpack("!HH", query[i + 1 : i + 5])
    question = query[12 : i + 5]
    asked = ".".join(labels)
    if asked != name:
        return struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question
    if qtype != 1:
        return struct.pack("!HHHHHH", qid, 0x8180, 1, 0, 0, 0) + question
    rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(ip)
    return struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + rr


def main():
    addr, name, ip = sys.argv[1], sys.argv[2].lower().rstrip("."), sys.argv[3]
    lifetime = float(sys.argv[4]) if len(sys.argv) > 4 else 600
    max_queries = int(sys.argv[5]) if len(sys.argv) > 5 else 1000
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 53))
    print(f"dns: listening on {addr}:53", flush=True)
    deadline = time.monotonic() + lifetime
    served = 0
    while served < max_queries and time.monotonic() < deadline:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            query, peer = s.recvfrom(512)
        except socket.timeout:
            break
        reply = answer(query, name, ip)
        if reply is not None:
            s.sendto(reply, peer)
            served += 1
            print(f"dns: {peer[0]} asked, {served} answered", flush=True)


if __name__ == "__main__":
    main()
