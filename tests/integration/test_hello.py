#!/usr/bin/python3
"""corral-hello, the libuv worker on libcorral, under corrald in
round-robin and least-conn (SPEC §5): connections handed off by the
master, X-Worker per slot, close reports that least-conn weighs, messages,
and a graceful stop that finishes a request in flight."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tap import case, main, wait_for, eq  # noqa: E402
from corral import (CORRALCTL, PY, SRC, Corrald, NotifySocket, HELLO, free_port, http_get, proc_environ,  # noqa: E402
                    finish)

TMP = tempfile.mkdtemp(prefix="corral-hello-")


def start(balance, workers=2, listen=()):
    n = NotifySocket()
    args = ["-b", balance, "-w", str(workers)]
    for l in listen:
        args += ["-l", l]
    c = Corrald(args, exec_=[HELLO], notify=n)
    n.wait("READY", "1")
    return c, n


def ctl(c, *args):
    p = subprocess.run([CORRALCTL, "-s", c.control] + list(args), capture_output=True, text=True, timeout=20)
    eq(p.returncode, 0, "corralctl %s: %s" % (" ".join(args), p.stderr))
    return p.stdout


def slots(c):
    return {s["id"]: s for s in json.loads(ctl(c, "--json", "status"))["slots"]}


def open_connections(c):
    return {i: s["connections"] for i, s in slots(c).items()}


@case
def round_robin_hands_off_to_hello_in_turn():
    port = free_port()
    sock = os.path.join(TMP, "rr.sock")
    c, n = start("round-robin", listen=["web=127.0.0.1:%d" % port, "local=unix:" + sock])
    try:
        pids = c.wait_workers(2)
        env = proc_environ(pids[0])
        eq(("LISTEN_FDS" in env, "CORRAL_IPC_FD" in env), (False, True), "hand-off mode environment")
        answers = [http_get(port)[1] for _ in range(6)]
        seen = [h["x-worker"] for h in answers]
        eq(sorted(seen), ["0"] * 3 + ["1"] * 3, "X-Worker over 6 requests: %r" % seen)
        eq(all(seen[i] != seen[i + 1] for i in range(5)), True, "in turn: %r" % seen)
        for h in answers:
            assert int(h["x-worker-pid"]) in pids, "X-Worker-Pid %s is a worker: %r" % (h["x-worker-pid"], pids)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(sock)
        s.sendall(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            d = s.recv(4096)
            if not d:
                break
            data += d
        s.close()
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"Hello World\n"), data
        eq(sum(s["handed"] for s in slots(c).values()), 7, "connections handed off")
        # corral-hello reports every close: nothing is open any more.
        wait_for(lambda: open_connections(c) == {0: 0, 1: 0}, 10, "close reports")
        for s in slots(c).values():
            eq(s["status"], "serving connections handed off by corrald", "STATUS=")
        # Messages reach the worker, which logs them.
        ctl(c, "send", "all", '{"hello":"workers"}')
        c.wait_line(r'corral-hello: message from corralctl: \{"hello":"workers"\}', count=2)
    finally:
        finish(c, n)


@case
def message_without_data_reaches_hello_which_survives():
    # Slot 1 runs the protocol example after writing a message without
    # "data" (data = null, SPEC §6) for the others on its channel; slot 0
    # is corral-hello, which libcorral used to crash on such a message.
    port = free_port()
    wrapper = os.path.join(TMP, "no-data.sh")
    with open(wrapper, "w") as f:
        f.write('#!/bin/bash\n'
                'if [ "$CORRAL_WORKER_ID" = 0 ]; then exec "%s"; fi\n'
                'printf \'{"type":"message","to":"others"}\\n\' >&"$CORRAL_IPC_FD" || exit 1\n'
                'exec %s %s\n' % (HELLO, PY, os.path.join(SRC, "examples", "python-worker.py")))
    os.chmod(wrapper, 0o755)
    n = NotifySocket()
    c = Corrald(["-b", "round-robin", "-w", "2", "-l", "127.0.0.1:%d" % port], exec_=[wrapper], notify=n)
    try:
        n.wait("READY", "1")
        hello = slots(c)[0]["pid"]
        c.wait_line(r"corral-hello: message from worker 1: null")
        # The example's own greeting comes after it on the same channel:
        # once hello logged that too, it has read past the null one.
        c.wait_line(r'corral-hello: message from worker 1: \{"hello":"1"\}')
        seen = [http_get(port)[1]["x-worker"] for _ in range(2)]
        eq(sorted(seen), ["0", "1"], "both workers serve")
        s0 = slots(c)[0]
        eq((s0["pid"], s0["state"], s0["restarts"]), (hello, "ready", 0), "corral-hello kept its pid")
    finally:
        finish(c, n)


@case
def least_conn_routes_around_a_busy_hello():
    port = free_port()
    c, n = start("least-conn", listen=["127.0.0.1:%d" % port])
    busy = None
    try:
        # Each worker serves one request and reports its close, so
        # least-conn weighs both by their counts.
        eq(sorted(http_get(port)[1]["x-worker"] for _ in range(2)), ["0", "1"], "one request each")
        wait_for(lambda: open_connections(c) == {0: 0, 1: 0}, 10, "close reports")
        # A slow request keeps one connection open on one worker.
        busy = socket.create_connection(("127.0.0.1", port), timeout=10)
        busy.sendall(b"GET /delay/4000 HTTP/1.1\r\n\r\n")
        # (A tuple: slot 0 is falsy.)
        loaded, = wait_for(lambda: next(((i,) for i, k in open_connections(c).items() if k == 1), None),
                           10, "a worker holding the slow request")
        served = []
        for _ in range(4):
            served.append(http_get(port)[1]["x-worker"])
            wait_for(lambda: open_connections(c)[1 - loaded] == 0, 10, "the close report")
        eq(served, [str(1 - loaded)] * 4, "every request went to the other worker")
    finally:
        if busy:
            busy.close()
        finish(c, n)


@case
def stop_finishes_a_handed_off_request_in_flight():
    port = free_port()
    c, n = start("round-robin", workers=1, listen=["127.0.0.1:%d" % port])
    try:
        worker = c.wait_workers(1)[0]
        result = {}

        def get():
            try:
                result["r"] = http_get(port, "/delay/1000", timeout=15)
            except Exception as e:  # noqa: BLE001
                result["e"] = e
        t = threading.Thread(target=get)
        t.start()
        wait_for(lambda: slots(c)[0]["handed"] == 1, 10, "the request handed off")
        c.signal(signal.SIGTERM)
        t.join(15)
        assert "e" not in result, "in-flight request failed: %r" % result.get("e")
        status, headers, body = result["r"]
        eq((status, body), (200, b"Hello World\n"), "in-flight request answered")
        eq(headers.get("connection"), "close", "answered with Connection: close")
        eq(c.wait_exit(20), 0, "corrald exit status")
        c.wait_line(r"worker 0 \(pid %d\) exited with status 0" % worker)
    finally:
        c.kill()
        n.close()


main()
