"""A fake corrald for testing workers alone, written from docs/protocol.md:
it owns a NOTIFY_SOCKET and the master's end of CORRAL_IPC_FD, hands
connections off (one byte, the fd in SCM_RIGHTS) and reads the worker's
lines. No corrald involved.

    m = FakeMaster([worker, args...], slot=3)
    m.wait_notify("READY")            # -> "1"
    client, server = tcp_pair()
    m.handoff(server, 0)
    m.line()                          # -> {"type": "closed", "n": 1}
    m.close()

Every wait has a deadline (TIMEOUT)."""
import json
import os
import select
import socket
import subprocess
import tempfile
import time

TIMEOUT = 10


class FakeMaster:
    def __init__(self, argv, slot=3):
        self.dir = tempfile.TemporaryDirectory()
        self.notify_path = os.path.join(self.dir.name, "notify")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.ipc, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ, CORRAL_IPC_FD=str(child.fileno()), CORRAL_WORKER_ID=str(slot),
                   NOTIFY_SOCKET=self.notify_path)
        for k in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "CORRAL_INSTANCE"):
            env.pop(k, None)
        self.proc = subprocess.Popen(argv, env=env, pass_fds=[child.fileno()], stdin=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        child.close()
        self.buf = b""
        self.notes = []

    def wait_notify(self, key):
        """The value of key in the worker's next datagrams, waiting for it."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            for i, (k, v) in enumerate(self.notes):
                if k == key:
                    del self.notes[:i + 1]
                    return v
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.notify], [], [], left)[0]:
                raise AssertionError("no %s= from the worker within %ds" % (key, TIMEOUT))
            for line in self.notify.recv(4096).decode().split("\n"):
                if "=" in line:
                    self.notes.append(tuple(line.split("=", 1)))

    def line(self):
        """The next line the worker wrote on its channel, parsed."""
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

    def handoff(self, conn, index=0):
        socket.send_fds(self.ipc, [bytes([index])], [conn.fileno()])
        conn.close()    # the master closes its copy once the kernel took it

    def close(self):
        """Close the channel (the master is gone), give the worker TIMEOUT
        to exit, then kill it."""
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
