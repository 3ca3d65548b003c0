#!/usr/bin/env python3
"""examples/python-worker.py against a fake master written here from
docs/protocol.md: READY=1 over NOTIFY_SOCKET, connections handed off as one
byte with SCM_RIGHTS between message lines, answers over HTTP, close
reports and messages back. No corrald involved.

Usage: test-python-worker.py EXAMPLE
"""
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import tap  # noqa: E402
from tap import case, eq  # noqa: E402

EXAMPLE = sys.argv[1]
TIMEOUT = 10


class FakeMaster:
    def __init__(self):
        self.dir = tempfile.TemporaryDirectory()
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(os.path.join(self.dir.name, "notify"))
        self.ipc, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ, CORRAL_IPC_FD=str(child.fileno()), CORRAL_WORKER_ID="3",
                   NOTIFY_SOCKET=os.path.join(self.dir.name, "notify"))
        env.pop("LISTEN_FDS", None)
        self.proc = subprocess.Popen([sys.executable, EXAMPLE], env=env, pass_fds=[child.fileno()],
                                     stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        child.close()
        self.buf = b""

    def wait_notify(self, what):
        ready, _, _ = select.select([self.notify], [], [], TIMEOUT)
        if not ready:
            raise AssertionError("no notify datagram within %ds" % TIMEOUT)
        msg = self.notify.recv(4096).decode()
        if what not in msg.split("\n"):
            raise AssertionError("expected %s in %r" % (what, msg))

    def line(self):
        """The next line the worker wrote, parsed."""
        deadline = time.monotonic() + TIMEOUT
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.ipc], [], [], left)[0]:
                raise AssertionError("no line from the worker within %ds" % TIMEOUT)
            chunk = self.ipc.recv(65536)
            if not chunk:
                raise AssertionError("the worker closed its channel")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        assert line.startswith(b"{"), line
        return json.loads(line)

    def handoff(self, conn, index):
        socket.send_fds(self.ipc, [bytes([index])], [conn.fileno()])
        conn.close()  # the master closes its copy once the kernel took it

    def close(self):
        self.ipc.close()
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()
        self.dir.cleanup()


def tcp_pair():
    """A client socket and the accepted server end, as the master has it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        server, _ = listener.accept()
    return client, server


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
    m = FakeMaster()
    try:
        m.wait_notify("READY=1")
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
