#!/usr/bin/env python3
"""A corral worker in plain Python, without libcorral (docs/protocol.md).

Serves "hello" over minimal HTTP on connections the master hands off
(balance round-robin/least-conn) or, in shared balance, accepts them itself
from the listening fds; answers messages; reports closed connections.

    corrald --listen 127.0.0.1:8080 --balance round-robin -- ./python-worker.py
"""
import json, os, selectors, socket, sys

SLOT = os.environ.get("CORRAL_WORKER_ID", "?")
sel = selectors.DefaultSelector()


def notify(state):  # sd_notify(3): one datagram to $NOTIFY_SOCKET
    addr = os.environ.get("NOTIFY_SOCKET")
    if addr:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect("\0" + addr[1:] if addr.startswith("@") else addr)
            s.send(state.encode())


def send(obj):  # one JSON object per line; ours are short, so blocking is fine
    ipc.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\n")


def serve(conn):  # one request, one answer, then close (Connection: close)
    conn.setblocking(True)
    request = b""
    while b"\r\n\r\n" not in request and len(request) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            break
        request += chunk
    body = f"hello from worker {SLOT}\n".encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Worker: " + SLOT.encode() +
                 b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    conn.close()


buf = b""  # bytes of the channel not yet parsed


def on_ipc():
    """Read the channel: message lines and hand-offs, told apart at each line
    boundary. The fds of a read belong to its LAST byte (the kernel ends a
    read right after the byte that carried them)."""
    global buf
    data, fds, _, _ = socket.recv_fds(ipc, 65536, 4)
    if not data:
        sys.exit(0)  # the master is gone
    handoff_at = len(buf) + len(data) - 1 if fds else -1
    buf += data
    pos = 0
    while pos < len(buf):
        if buf[pos:pos + 1] != b"{":  # a hand-off byte: the listener's index
            if pos == handoff_at:
                handoff_at = -1
                conn = socket.socket(fileno=fds.pop(0))  # family and type are read from the fd
                serve(conn)
                send({"type": "closed", "n": 1})
            pos += 1
            continue
        end = buf.find(b"\n", pos)
        if end < 0:
            break  # a partial line; the rest comes with the next read
        if handoff_at >= 0 and handoff_at <= end:  # an fd inside a line: not a hand-off
            handoff_at = -1
        msg = json.loads(buf[pos:end])
        print(f"worker {SLOT}: message from {msg.get('from')}: {msg.get('data')}", file=sys.stderr)
        if msg.get("data") == "ping":
            send({"type": "message", "to": "master", "data": {"pong": SLOT}})
        pos = end + 1
    buf = buf[pos:]
    for fd in fds:  # fds that were not hand-offs
        os.close(fd)


def on_listener(listener):  # shared balance: accept ourselves, one at a time (fair)
    try:
        serve(listener.accept()[0])
    except BlockingIOError:
        pass  # a sibling took it


ipc = socket.socket(fileno=int(os.environ["CORRAL_IPC_FD"]))
sel.register(ipc, selectors.EVENT_READ, on_ipc)
if os.environ.get("LISTEN_PID") == str(os.getpid()):
    for fd in range(3, 3 + int(os.environ.get("LISTEN_FDS", "0"))):
        listener = socket.socket(fileno=fd)
        listener.setblocking(False)
        sel.register(listener, selectors.EVENT_READ, lambda l=listener: on_listener(l))

notify("READY=1\nSTATUS=serving")
send({"type": "message", "to": "others", "data": {"hello": SLOT}})
while True:
    for key, _ in sel.select():
        key.data()
