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
from corral import (Corrald, FakeJournal, CORRALD, CORRALCTL, HELLO, TWORKER, children, ctl,  # noqa: E402
                    exec_done, finish, free_port, proc_environ, request, rss_kb, run, timed_status,
                    wait_control)

TMP = tempfile.mkdtemp(prefix="corral-hard-")


def nofile(pid):
    with open("/proc/%d/limits" % pid) as f:
        for l in f:
            if l.startswith("Max open files"):
                soft, hard = l.split()[3:5]
                return int(soft), int(hard)


@case
def master_raises_its_fd_limit_workers_get_the_original():
    """#11.4: the master uses the whole hard fd limit; workers see the soft
    limit corrald was started with, as under systemd."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2048 or hard == resource.RLIM_INFINITY:
        raise Skip("hard fd limit %s too low to tell apart" % hard)
    old = (soft, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    try:
        c, n = run(["-w", "1", "-n", "nofile"], ["/bin/sh", "-c", "exec sleep 3600"])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)
    try:
        w = exec_done(c, 1)[0]
        eq(nofile(c.master_pid()), (hard, hard), "master's soft limit raised to the hard one")
        eq(nofile(w), (512, hard), "worker's soft limit is the original")
    finally:
        finish(c, n)


@case
def usage_errors_exit_2_and_early_errors_use_the_name():
    """#12.14: a bad --listen exited 1 (usage errors are 2, SPEC §7), and
    early errors said corrald[corral]: although -n NAME was given."""
    def rc(*args):
        r = subprocess.run([CORRALD] + list(args), capture_output=True, text=True, timeout=20)
        return r.returncode, r.stderr
    for args in (["--listen", "foo"], ["-n", "bad name!"], ["-w", "0"], ["--control", "relative.sock"]):
        code, err = rc(*(args + ["--", "/bin/true"]))
        eq(code, 2, "%r is a usage error: %s" % (args, err))
        assert "Try 'corrald --help'." in err, err
    code, err = rc("--log", "stderr", "-n", "myname", "-c", os.path.join(TMP, "missing.json"))
    eq(code, 1, "a missing config file is not a usage error")
    assert err.startswith("corrald[myname]: "), err


FLOODER = r'''
import os, socket
ipc = socket.socket(fileno=int(os.environ["CORRAL_IPC_FD"]))
addr = os.environ["NOTIFY_SOCKET"]
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
n.sendto(b"READY=1", "\0" + addr[1:] if addr.startswith("@") else addr)
ipc.sendall(b"".join(b'{"type":"message","data":%d}\n' % i for i in range(int(os.environ["FLOOD"]))))
ipc.recv(1)   # until the master goes
'''


@case
def message_log_budget_is_the_instances_not_each_workers():
    """#19.8: messages to the master were logged up to 1000 per 10 s per
    worker, so 2 flooding workers wrote 2000 lines in 10 s. The count stays
    exact; only the log is bounded, for the instance as a whole."""
    path = os.path.join(TMP, "flood.py")
    with open(path, "w") as f:
        f.write(FLOODER)
    workers, each, budget = 3, 1500, 1000
    t0 = time.monotonic()
    c, n = run(["-w", str(workers), "-l", "127.0.0.1:%d" % free_port()], [sys.executable, path],
               env={"FLOOD": str(each)})
    try:
        wait_control(c)
        # The count is exact; wait for every message on it, not on time.
        wait_for(lambda: request(c, {"command": "messages"})["total"] == workers * each, 30,
                 "all %d messages counted" % (workers * each), interval=0.1)
        elapsed = time.monotonic() - t0
        logged = c.count(r"^corrald\[.*\]: worker \d+ \(pid \d+\) message: \d+$")
        notices = c.count(r"suppressed \d+ messages")
        # The budget is per 10 s interval: a window that (on a very slow
        # machine) spans more of them may use each one's budget.
        intervals = 1 + int(elapsed // 10)
        print("# %d messages in %.2fs: %d logged, %d suppression notices" % (workers * each, elapsed, logged,
                                                                           notices))
        assert logged <= budget * intervals + notices, \
            "%d message lines logged in %.1fs (budget %d per 10 s for the instance)" % (logged, elapsed, budget)
        assert logged >= budget, "only %d lines logged: the budget goes unused" % logged
    finally:
        finish(c, n)


def teardown(_):
    shutil.rmtree(TMP, ignore_errors=True)


main(teardown=teardown)
