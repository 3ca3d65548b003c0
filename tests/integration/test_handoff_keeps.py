#!/usr/bin/python3
"""The hand-off keeps every connection it accepted (SPEC §5, issue 18): a
worker has at most IPC_INFLIGHT_MAX hand-offs unread, what it leaves
unread comes back when it dies or stalls, and a crash after serving is
replaced at once. Real corrald, corral-hello workers, real clients."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tap import case, main, wait_for, eq, diag  # noqa: E402
from corral import (Corrald, Ctl, NotifySocket, HELLO, TWORKER, finish, free_port, http_get,  # noqa: E402
                    status)

TMP = tempfile.mkdtemp(prefix="corral-keeps-")
INFLIGHT_MAX = 16   # IPC_INFLIGHT_MAX


def start(exec_, workers=2, balance="round-robin", extra=None, ready_timeout=20):
    port = free_port()
    n = NotifySocket()
    path = os.path.join(TMP, "c%d.json" % port)
    with open(path, "w") as f:
        json.dump(dict(extra or {}, exec=exec_, workers=workers, balance=balance,
                       listen=["127.0.0.1:%d" % port]), f)
    c = Corrald(["-c", path], notify=n)
    n.wait("READY", "1", timeout=ready_timeout)
    return c, n, port


def per_slot(exec_zero, exec_rest):
    """A worker command that runs exec_zero in slot 0 and exec_rest in the others."""
    script = os.path.join(TMP, "per-slot-%d.sh" % free_port())
    with open(script, "w") as f:
        f.write('#!/bin/sh\nif [ "$CORRAL_WORKER_ID" = 0 ]; then exec %s; else exec %s; fi\n'
                % (" ".join(exec_zero), " ".join(exec_rest)))
    os.chmod(script, 0o755)
    return [script]


def requests_in_parallel(port, n, timeout=20):
    """n requests at once, each on its own connection; returns their statuses (None: failed)."""
    out = [None] * n

    def one(i):
        try:
            out[i] = http_get(port, timeout=timeout)[0]
        except OSError as e:
            out[i] = repr(e)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads, out


def join(threads):
    for t in threads:
        t.join(60)


def wrk(port, seconds, conns=16):
    r = subprocess.run(["wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, "http://127.0.0.1:%d/" % port],
                       capture_output=True, text=True, timeout=seconds + 30)
    m = re.search(r"(\d+) requests in", r.stdout)
    assert m, "wrk output: %s%s" % (r.stdout, r.stderr)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", r.stdout)
    return int(m.group(1)), (sum(int(x) for x in errors.groups()) if errors else 0)


@case
def a_stopped_worker_does_not_stall_the_pool():
    # One of two workers stopped (SIGSTOP: a GC pause, a blocked loop): it
    # takes at most IPC_INFLIGHT_MAX connections, and after the stall limit
    # those go to the other one. Before, every connection queued on it.
    c, n, port = start([HELLO])
    try:
        base, _ = wrk(port, 3)
        stopped = status(c)["slots"][0]["pid"]
        os.kill(stopped, signal.SIGSTOP)
        try:
            stalled, errors = wrk(port, 3)
            s = status(c)
        finally:
            os.kill(stopped, signal.SIGCONT)
        diag("wrk -c16 3 s: %d requests with both workers, %d with one stopped (%.0f%%), %d socket errors"
             % (base, stalled, 100.0 * stalled / max(base, 1), errors))
        assert stalled >= 0.4 * base, "a stopped worker stalls the pool: %d against %d" % (stalled, base)
        assert s["slots"][0]["unread"] <= INFLIGHT_MAX, "unread hand-offs bounded: %r" % s["slots"][0]
    finally:
        finish(c, n)


@case
def a_stopped_worker_killed_with_unread_hand_offs_loses_nothing():
    c, n, port = start([HELLO])
    try:
        victim = status(c)["slots"][0]["pid"]
        os.kill(victim, signal.SIGSTOP)
        threads, out = requests_in_parallel(port, 8)
        wait_for(lambda: status(c)["slots"][0]["unread"] >= 1, 10, "hand-offs unread by the stopped worker")
        unread = status(c)["slots"][0]["unread"]
        os.kill(victim, signal.SIGKILL)
        join(threads)
        diag("the killed worker had %d unread; results %r" % (unread, out))
        eq(out, [200] * 8, "every request served")
        c.wait_line(r"had not read \d+ connections?: they go to another worker")
    finally:
        finish(c, n)


@case
def a_worker_that_never_reads_its_channel_loses_nothing():
    # Slot 0 says READY=1 and never reads CORRAL_IPC_FD (as a worker that
    # closed it, or one stuck before its loop): what it is handed comes
    # back after the stall limit, and then it gets nothing for a while.
    c, n, port = start(per_slot(TWORKER + ["no-watchdog"], [HELLO]))
    try:
        threads, out = requests_in_parallel(port, 30, timeout=20)
        join(threads)
        eq(out, [200] * 30, "every request served")
        s = status(c)
        eq(s["slots"][0]["stalled"], True, "slot 0 is marked stalled")
        eq(s["slots"][0]["unread"], 0, "nothing left unread with it")
        # A while later, still none lost: it gets none while stalled.
        threads, out = requests_in_parallel(port, 10, timeout=20)
        join(threads)
        eq(out, [200] * 10, "every later request served")
    finally:
        finish(c, n)


@case
def twenty_workers_leaving_under_load_lose_nothing():
    # A worker that says STOPPING=1 (corral-hello does on SIGTERM, sent
    # here to the worker itself: the "suicide" of the seed) gets no more
    # connections; those it had not read when it exits come back. Each
    # request on its own connection, so every one is a hand-off. Before,
    # 29 requests in 279k failed over 20 leaves.
    c, n, port = start([HELLO], extra={"restart": {"limit": 10, "window_ms": 1000}})
    try:
        load = subprocess.Popen(["wrk", "-t1", "-c50", "-d15s", "-H", "Connection: close",
                                 "http://127.0.0.1:%d/" % port], stdout=subprocess.PIPE, text=True)
        wait_for(lambda: sum(s["handed"] or 0 for s in status(c)["slots"]) > 100, 10, "load")
        leaves = 0
        t_end = time.monotonic() + 11
        while leaves < 20 and time.monotonic() < t_end:
            s = status(c)
            pid = s["slots"][leaves % 2]["pid"]
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: (lambda s: s["ready"] == 2 and s["slots"][leaves % 2]["pid"] not in (pid, None))(
                status(c)), 10, "the replacement of %d" % pid)
            leaves += 1
        stdout, _ = load.communicate(timeout=60)
        m = re.search(r"(\d+) requests in", stdout)
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", stdout)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", stdout)
        lost = (sum(int(x) for x in errors.groups()) if errors else 0) + (int(non2xx.group(1)) if non2xx else 0)
        diag("%d leaves under wrk -c50 (Connection: close): %s requests, %d failed" % (leaves, m and m.group(1), lost))
        assert leaves >= 10, "only %d leaves in the time" % leaves
        eq(lost, 0, "requests failed across %d leaves\n%s" % (leaves, stdout))
    finally:
        finish(c, n)


@case
def a_close_report_cannot_exceed_what_was_handed():
    # {"type":"closed","n":2147483647} made a least-conn worker look idle
    # forever. Here slot 0 says it, once, after its first request.
    liar = os.path.join(TMP, "liar.py")
    with open(liar, "w") as f:
        f.write(r'''
import os, socket, sys
sys.path.insert(0, %r)
exec(open(%r).read().split("\nmain()")[0])
ch = socket.socket(fileno=int(os.environ["CORRAL_IPC_FD"]))
notify("READY=1")
lied = False
while True:
    data, fds, flags, addr = socket.recv_fds(ch, 1, 1)
    if not data:
        break
    for fd in fds:
        conn = socket.socket(fileno=fd)
        conn.recv(65536)
        conn.sendall(b"HTTP/1.0 200 OK\r\nX-Worker: 0\r\nContent-Length: 3\r\n\r\nok\n")
        conn.close()
        ch.sendall(b'{"type":"closed","n":1}\n' if lied else b'{"type":"closed","n":2147483647}\n')
        lied = True
''' % (os.path.dirname(TWORKER[-1]), TWORKER[-1]))
    c, n, port = start(per_slot([sys.executable, liar], [HELLO]), balance="least-conn")
    try:
        for _ in range(6):
            eq(http_get(port)[0], 200, "served")
        s = wait_for(lambda: (lambda s: s if s["slots"][0]["messages_malformed"] >= 1 else None)(status(c)), 10,
                     "the lie counted")
        w0 = s["slots"][0]
        assert w0["connections"] is not None and w0["connections"] >= 0, "open connections: %r" % w0
        assert w0["handed"] >= 1, w0
        c.wait_line(r"reported 2147483647 connections closed, with \d+ open: ignored")
        # least-conn still shares: the liar does not take everything.
        seen = [http_get(port)[1].get("x-worker") for _ in range(20)]
        assert seen.count("0") <= 14, "least-conn after the lie: %r" % seen
    finally:
        finish(c, n)


@case
def two_thousand_closed_channels_keep_status_fast():
    # 2,000 least-conn workers that closed their channel (the master keeps
    # its own reference to their end, so for it they simply never read)
    # and one connection nobody reads: each loop iteration used to cost
    # O(n^2) slot checks and n sendmsg() calls while it was held, and
    # status took 1.09 s (p50). Now it goes to one worker at a time, comes
    # back after the stall limit, and the retry runs only when a worker may
    # have become able to take it.
    c, n, port = start(["/bin/sh", "-c", "exec 3<&-; exec sleep 3600"], workers=2000, balance="least-conn",
                       extra={"ready": {"mode": "spawn"}}, ready_timeout=120)
    held = None
    try:
        held = socket.create_connection(("127.0.0.1", port), timeout=5)
        wait_for(lambda: status(c, 30)["counters"]["handed"] >= 1, 20, "the connection to be handed")
        # The master's time: from the request to the first byte of the
        # answer, which it writes only once the whole status is built (the
        # round trip adds this client's parsing of 0.6 MB of JSON).
        times, trips = [], []
        for _ in range(11):
            k = Ctl(c.control, 30)
            try:
                k.s.settimeout(30)
                t0 = time.monotonic()
                k.send({"command": "status"})
                k.buf = k.s.recv(65536)
                times.append(time.monotonic() - t0)
                eq(k.result(30)["ok"], True, "status answered")
                trips.append(time.monotonic() - t0)
            finally:
                k.close()
        times.sort()
        trips.sort()
        diag("status with 2,000 stalled channels and a connection in play: master p50 %.1f ms, max %.1f ms; "
             "round trip p50 %.1f ms" % (times[5] * 1000, times[-1] * 1000, trips[5] * 1000))
        limit = 0.1 if os.environ.get("CORRAL_SANITIZED") != "1" else 0.4
        assert times[5] < limit, "status p50 %.0f ms (limit %.0f ms)" % (times[5] * 1000, limit * 1000)
    finally:
        if held:
            held.close()
        finish(c, n)


if __name__ == "__main__":
    main()
