#!/usr/bin/env python3
"""examples/python-worker.py against a fake master written here from
docs/protocol.md: READY=1 over NOTIFY_SOCKET, connections handed off as one
byte with SCM_RIGHTS between message lines, answers over HTTP, close
reports and messages back. No corrald involved.

Usage: test-python-worker.py EXAMPLE
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import tap  # noqa: E402
from tap import case, eq  # noqa: E402
from fakemaster import TIMEOUT, FakeMaster, tcp_pair  # noqa: E402

EXAMPLE = sys.argv[1]


def http_get(client):
    client.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    reply = b""
    while True:
        chunk = client.recv(4096)
        if not chunk:
            return reply.decode()
        reply += chunk


@case
def ready_handoffs_messages_and_reports():
    m = FakeMaster([sys.executable, EXAMPLE])
    try:
        eq(m.wait_notify("READY"), "1", "READY=1")
        eq(m.line(), {"type": "message", "to": "others", "data": {"hello": "3"}}, "greeting")

        # A message line, then a hand-off glued right behind it, then another line.
        m.ipc.sendall(b'{"type":"message","from":"ctl","data":"ping"}\n')
        client, server = tcp_pair()
        m.handoff(server, 0)
        m.ipc.sendall(b'{"type":"message","from":1,"data":{"x":[1,2]}}\n')
        eq(m.line(), {"type": "message", "to": "master", "data": {"pong": "3"}}, "reply to ping")
        reply = http_get(client)
        client.close()
        assert reply.startswith("HTTP/1.1 200 OK\r\n"), reply
        assert "X-Worker: 3\r\n" in reply, reply
        assert reply.endswith("hello from worker 3\n"), reply
        eq(m.line(), {"type": "closed", "n": 1}, "close report")

        # Two hand-offs in a row, from listener 1: both served and reported.
        pairs = [tcp_pair() for _ in range(2)]
        for _, server in pairs:
            m.handoff(server, 1)
        for client, _ in pairs:
            assert http_get(client).startswith("HTTP/1.1 200 OK"), "second batch"
            client.close()
        eq(m.line(), {"type": "closed", "n": 1}, "close report 2")
        eq(m.line(), {"type": "closed", "n": 1}, "close report 3")

        # The master going away ends the worker cleanly.
        m.ipc.close()
        eq(m.proc.wait(TIMEOUT), 0, "exit status")
        err = m.proc.stderr.read().decode()
        assert "message from ctl: ping" in err, err
        assert "message from 1: {'x': [1, 2]}" in err, err
    finally:
        m.close()


tap.main()
