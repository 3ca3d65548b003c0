#!/usr/bin/python3
"""Regression tests for the security review (issue 11) and the stderr/log
items of issue 12: what a local user, a worker, a stuck journald or a slow
stderr reader can do to corrald. Each case names the finding it covers."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tap import case, main, wait_for, eq, Skip  # noqa: E402
from corral import (Corrald, NotifySocket, CORRALD, CORRALCTL, HELLO, TWORKER, free_port,  # noqa: E402
                    pid_alive, proc_environ)

TMP = tempfile.mkdtemp(prefix="corral-hard-")


def run(args, exec_=None, **kw):
    n = NotifySocket()
    c = Corrald(args, exec_, notify=n, env=dict(kw.pop("env", {}), CORRAL_TEST_DIR=TMP), **kw)
    return c, n


def finish(c, n, expect=0):
    try:
        rc = c.stop()
        eq(rc, expect, "corrald exit status\n" + c.output())
    finally:
        c.kill()
        n.close()


def ctl(c, *args, timeout=10):
    return subprocess.run([CORRALCTL, "-s", c.control] + list(args), capture_output=True, text=True,
                          timeout=timeout)


def timed_status(c, limit=2.0):
    """`corralctl status --json` must answer, and within `limit` seconds."""
    t0 = time.monotonic()
    p = ctl(c, "--json", "status", timeout=limit + 10)
    dt = time.monotonic() - t0
    eq(p.returncode, 0, "corralctl status: %s%s" % (p.stdout, p.stderr))
    assert dt < limit, "corralctl status took %.2fs (limit %.1fs)" % (dt, limit)
    return json.loads(p.stdout), dt


@case
def notify_socket_name_cannot_be_squatted():
    """#11.1: the notify socket used to be @corral/NAME/PID/notify; a user
    who bound it for the next pids kept corrald from starting."""
    held = []
    nxt = int(open("/proc/sys/kernel/ns_last_pid").read()) if os.path.exists("/proc/sys/kernel/ns_last_pid") else os.getpid()
    for pid in range(nxt + 1, nxt + 300):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind("\0corral/squat/%d/notify" % pid)
        held.append(s)
    try:
        c, n = run(["-n", "squat", "-w", "1"], TWORKER + ["pysystemd"])
        try:
            n.wait("READY", "1")
            assert c.master_pid() in range(nxt + 1, nxt + 300), "corrald's pid %d was squatted" % c.master_pid()
            env = proc_environ(c.workers()[0])
            assert re.fullmatch(r"@[0-9a-f]{5}", env["NOTIFY_SOCKET"]), env["NOTIFY_SOCKET"]
        finally:
            finish(c, n)
    finally:
        for s in held:
            s.close()


def teardown(_):
    shutil.rmtree(TMP, ignore_errors=True)


main(teardown=teardown)
