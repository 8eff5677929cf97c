#!/usr/bin/env python3
"""Sends commands to a QEMU HMP monitor on a unix socket and prints each reply.

    monitor.py SOCKET CMD...

SOCKET may be a glob (the first match is used). Each command is sent after the monitor's
prompt, and the reply is read up to the next prompt before the next command or the hang-up:
a client that sends and hangs up at once can lose its command.
"""
import glob
import re
import socket
import sys
import time

paths = glob.glob(sys.argv[1])
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(paths[0] if paths else sys.argv[1])


def drain():
    out, end = b"", time.time() + 3
    while time.time() < end and not out.endswith(b"(qemu) "):
        try:
            b = s.recv(65536)
        except socket.timeout:
            break
        if not b:
            break
        out += b
    return out.decode(errors="replace").replace("\r", "")


drain()
for c in sys.argv[2:]:
    s.sendall(c.encode() + b"\n")
    print("# " + c)
    reply = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", drain()).replace("(qemu) ", "")
    print(reply.split("\n", 1)[-1].strip())  # without the echoed command line
