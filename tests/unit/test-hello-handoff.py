#!/usr/bin/env python3
"""corral-hello in round-robin/least-conn mode against a fake master written
from docs/protocol.md: no LISTEN_FDS, connections handed off over
CORRAL_IPC_FD (one byte, the fd in SCM_RIGHTS), a close report per closed
connection, X-Worker and X-Worker-Pid headers, messages logged, and a
graceful stop that still serves what was handed off before SIGTERM.
No corrald involved.

Usage: test-hello-handoff.py CORRAL_HELLO
"""
import os
import signal
import socket
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import tap  # noqa: E402
from tap import case, eq  # noqa: E402
from fakemaster import TIMEOUT, FakeMaster, tcp_pair  # noqa: E402

HELLO = sys.argv[1]


def closed_reports(m, n):
    """Wait until the worker's close reports add up to n connections."""
    total = 0
    while total < n:
        msg = m.line()
        eq(msg.get("type"), "closed", "a close report: %r" % msg)
        total += msg["n"]
    eq(total, n, "connections reported closed")


def response(sock):
    """Read one whole response (head and Content-Length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError("connection closed before a response: %r" % data)
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(4096)
    return lines[0], headers, body


@case
def handoffs_are_served_and_reported():
    m = FakeMaster([HELLO], slot=3)
    try:
        eq(m.wait_notify("READY"), "1", "READY=1")
        eq(m.wait_notify("STATUS"), "serving connections handed off by corrald", "STATUS=")

        client, server = tcp_pair()
        m.handoff(server, 0)
        for i in range(2):  # keep-alive: two requests on one connection
            client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, body = response(client)
            eq(status, "HTTP/1.1 200 OK", "status %d" % i)
            eq(body, b"Hello World\n", "body %d" % i)
            eq(headers["x-worker"], "3", "X-Worker is the slot")
            eq(headers["x-worker-pid"], str(m.proc.pid), "X-Worker-Pid")
            assert "connection" not in headers, headers
        client.close()
        closed_reports(m, 1)

        # A unix connection from listener 1, between two message lines.
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        m.ipc.sendall(b'{"type":"message","from":"ctl","data":{"ping":1}}\n')
        m.handoff(b, 1)
        m.ipc.sendall(b'{"type":"message","from":2,"data":"hi"}\n')
        a.settimeout(TIMEOUT)
        a.sendall(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        status, headers, body = response(a)
        eq(status, "HTTP/1.1 200 OK", "unix status")
        eq(headers.get("connection"), "close", "Connection: close honoured")
        eq(a.recv(10), b"", "closed after the response")
        a.close()
        closed_reports(m, 1)

        # A connection the worker closes itself (400) is reported too.
        client, server = tcp_pair()
        m.handoff(server, 0)
        client.sendall(b"BAD\r\n\r\n")
        status, _, _ = response(client)
        eq(status, "HTTP/1.1 400 Bad Request", "malformed request")
        client.close()
        closed_reports(m, 1)

        m.proc.send_signal(signal.SIGTERM)
        eq(m.wait_notify("STOPPING"), "1", "STOPPING=1")
        eq(m.proc.wait(TIMEOUT), 0, "exit status after SIGTERM")
        err = m.proc.stderr.read().decode()
        assert 'message from corralctl: {"ping":1}' in err, err
        assert 'message from worker 2: "hi"' in err, err
    finally:
        m.close()


@case
def stop_serves_what_was_handed_off_before_sigterm():
    m = FakeMaster([HELLO], slot=0)
    try:
        m.wait_notify("READY")
        # In flight: answered after the stop began, then closed.
        slow, server = tcp_pair()
        m.handoff(server)
        slow.sendall(b"GET /delay/700 HTTP/1.1\r\n\r\n")
        # Idle keep-alive: closed at once by the stop.
        idle, server = tcp_pair()
        m.handoff(server)
        idle.sendall(b"GET / HTTP/1.1\r\n\r\n")
        eq(response(idle)[0], "HTTP/1.1 200 OK", "idle connection's first request")
        # Sent (maybe still unread in the channel) just before SIGTERM, its
        # request only afterwards: it gets the grace period.
        late, server = tcp_pair()
        m.handoff(server)
        m.proc.send_signal(signal.SIGTERM)
        m.wait_notify("STOPPING")
        eq(idle.recv(10), b"", "idle keep-alive connection closed by the stop")
        late.sendall(b"GET / HTTP/1.1\r\n\r\n")
        status, headers, body = response(late)
        eq((status, body), ("HTTP/1.1 200 OK", b"Hello World\n"), "late connection served")
        eq(headers.get("connection"), "close", "during a stop every response closes")
        status, headers, body = response(slow)
        eq((status, body), ("HTTP/1.1 200 OK", b"Hello World\n"), "in-flight request finished")
        eq(headers.get("connection"), "close", "in-flight response closes")
        for s in (slow, idle, late):
            s.close()
        eq(m.proc.wait(TIMEOUT), 0, "exit status")
        closed_reports(m, 3)
    finally:
        m.close()


@case
def message_without_data_is_null_and_the_worker_survives():
    # docs/protocol.md: no "data" means data = null. libcorral and
    # <corral-uv.h> used to write a NUL into the string literal "null"
    # for such a line, and corral-hello died of SIGSEGV.
    m = FakeMaster([HELLO], slot=0)
    try:
        m.wait_notify("READY")
        m.ipc.sendall(b'{"type":"message","from":"ctl"}\n{"type":"message","from":1}\n')
        client, server = tcp_pair()
        m.handoff(server, 0)
        client.sendall(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        status, headers, _ = response(client)
        eq((status, headers["x-worker-pid"]), ("HTTP/1.1 200 OK", str(m.proc.pid)), "still serving after the messages")
        client.close()
        closed_reports(m, 1)
        eq(m.proc.poll(), None, "the worker is alive")
        m.proc.send_signal(signal.SIGTERM)
        eq(m.proc.wait(TIMEOUT), 0, "exit status after SIGTERM")
        err = m.proc.stderr.read().decode()
        assert "message from corralctl: null" in err, err
        assert "message from worker 1: null" in err, err
    finally:
        m.close()


@case
def master_gone_ends_the_worker():
    m = FakeMaster([HELLO])
    try:
        m.wait_notify("READY")
        m.ipc.shutdown(socket.SHUT_WR)
        eq(m.proc.wait(TIMEOUT), 1, "exit status when no connection can come any more")
        assert "Nothing left to serve" in m.proc.stderr.read().decode()
    finally:
        m.close()


tap.main()
