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
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tap import case, main, wait_for, eq, diag  # noqa: E402
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


def with_fd_limit(nofile, slot, args):
    """A worker command: corral-hello with args, under `ulimit -n nofile` in
    the given slot (every slot when None)."""
    script = os.path.join(TMP, "nofile-%d.sh" % free_port())
    hello = " ".join([HELLO] + list(args))
    with open(script, "w") as f:
        if slot is None:
            f.write("#!/bin/sh\nulimit -n %d || exit 1\nexec %s\n" % (nofile, hello))
        else:
            f.write('#!/bin/sh\nif [ "$CORRAL_WORKER_ID" = %d ]; then ulimit -n %d || exit 1; fi\nexec %s\n'
                    % (slot, nofile, hello))
    os.chmod(script, 0o755)
    return [script]


def try_get(port, timeout=5):
    """X-Worker of a request's answer, or None when the connection was
    closed without one (a hand-off lost at the worker's fd limit)."""
    try:
        status_, headers, _ = http_get(port, timeout=timeout)
    except (OSError, IndexError, ValueError):
        return None
    return headers.get("x-worker") if status_ == 200 else None


@case
def a_hello_at_its_fd_limit_is_noticed_and_skipped():
    # Slot 0 runs with 24 fds, and 60 clients connect and send nothing
    # (header timeout 60 s: they stay): slot 0's table fills, the kernel
    # drops the fds of the next hand-offs (MSG_CTRUNC), and corral-hello
    # tells the master, which pauses it and counts the report. Before,
    # round-robin kept handing it every other connection, all lost.
    port = free_port()
    n = NotifySocket()
    c = Corrald(["-b", "round-robin", "-w", "2", "-l", "127.0.0.1:%d" % port],
                exec_=with_fd_limit(24, 0, ["--header-timeout", "60"]), notify=n)
    hogs = []
    try:
        n.wait("READY", "1")
        for _ in range(60):
            hogs.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        s0 = wait_for(lambda: (lambda s: s if s.get("fd_limit_reports", 0) >= 1 else None)(slots(c)[0]), 10,
                      "slot 0's fd-limit report")
        assert s0["fd_limit_lost"] >= 1, s0
        c.wait_line(r"worker 0 \(pid %d\) is at its fd limit \(\d+ connections? lost\): no connections for it "
                    r"for 1000 ms" % s0["pid"])
        # A measured window of sequential requests: slot 1 serves them; slot
        # 0 is tried about once a second (once per pause) and loses that one.
        reports = s0["fd_limit_reports"]
        seen, t_end = [], time.monotonic() + 3
        while time.monotonic() < t_end:
            seen.append(try_get(port))
        new_reports = slots(c)[0]["fd_limit_reports"] - reports
        failed = seen.count(None)
        diag("3 s with slot 0 full: %d requests, %d served by slot 1, %d lost, %d new reports"
             % (len(seen), seen.count("1"), failed, new_reports))
        eq(seen.count("0"), 0, "slot 0 served nothing while full")
        assert failed <= 3 + 2, "lost %d of %d requests in 3 s" % (failed, len(seen))
        assert failed <= 0.1 * len(seen), "lost %d of %d requests" % (failed, len(seen))
        # The clients leave: slot 0 has fds again and gets connections again.
        for h in hogs:
            h.close()
        hogs = []
        wait_for(lambda: try_get(port) == "0", 10, "slot 0 serving again")
        eq(slots(c)[0]["restarts"], 0, "slot 0 was never restarted")
    finally:
        for h in hogs:
            h.close()
        finish(c, n)


def closed_by_peer(sock):
    """True when the server has closed sock (EOF or a reset)."""
    try:
        return sock.recv(4096, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


@case
def slow_loris_clients_are_closed_after_the_header_timeout():
    # One corral-hello with 64 fds (shared balance: it accepts itself) and
    # 100 clients that send a request head a line at a time, one every
    # 0.5 s, never finishing it. Each is closed HEADER s after the worker
    # took it (the trickle does not restart the clock); a normal request
    # sent behind them is served once the first ones are gone, and one
    # sent after the attack at once. Before, they held the worker's fds
    # for good and nothing else was ever served.
    header = 2.0
    port = free_port()
    n = NotifySocket()
    c = Corrald(["-w", "1", "-l", "127.0.0.1:%d" % port],
                exec_=with_fd_limit(64, None, ["--header-timeout", str(header), "--idle-timeout", str(header)]),
                notify=n)
    loris = []
    try:
        n.wait("READY", "1")
        started = {}
        for _ in range(100):
            k = socket.create_connection(("127.0.0.1", port), timeout=10)
            k.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")
            k.setblocking(False)
            started[k] = time.monotonic()
            loris.append(k)
        result = {}

        def normal():
            t0 = time.monotonic()
            result["r"] = try_get(port, timeout=4 * header + 5)
            result["t"] = time.monotonic() - t0
        t = threading.Thread(target=normal)
        t.start()
        closed_at, next_trickle = {}, time.monotonic()
        deadline = time.monotonic() + 4 * header + 5
        while len(closed_at) < len(loris) and time.monotonic() < deadline:
            now = time.monotonic()
            for k in loris:
                if k not in closed_at and closed_by_peer(k):
                    closed_at[k] = now
            if now >= next_trickle:
                for k in loris:
                    if k not in closed_at:
                        try:
                            k.sendall(b"X-Slow: 1\r\n")
                        except OSError:
                            closed_at[k] = now
                next_trickle = now + 0.5
            time.sleep(0.02)    # polling interval of the measurement, not a synchronisation
        t.join(4 * header + 10)
        eq(len(closed_at), len(loris), "slow-loris connections closed by the worker")
        early = [closed_at[k] - started[k] for k in loris if closed_at[k] - started[k] < header - 0.2]
        eq(early, [], "closed before the header timeout")
        diag("100 slow-loris clients closed %.1f..%.1f s after they connected; a request sent behind them "
             "took %.1f s" % (min(closed_at[k] - started[k] for k in loris),
                              max(closed_at[k] - started[k] for k in loris), result.get("t", -1)))
        eq(result.get("r"), "0", "the request sent during the attack was served")
        eq(try_get(port), "0", "a request after the attack")
    finally:
        for k in loris:
            k.close()
        finish(c, n)


@case
def an_idle_keep_alive_connection_is_closed_after_the_idle_timeout():
    idle = 1.0
    port = free_port()
    n = NotifySocket()
    c = Corrald(["-w", "1", "-l", "127.0.0.1:%d" % port],
                exec_=[HELLO, "--idle-timeout", str(idle), "--header-timeout", "30"], notify=n)
    try:
        n.wait("READY", "1")
        k = socket.create_connection(("127.0.0.1", port), timeout=10)
        # A keep-alive client that keeps asking, every half timeout, keeps
        # its connection for longer than the timeout.
        for i in range(6):
            if i:
                time.sleep(idle / 2)    # the client's think time, part of what is measured
            k.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            data = b""
            while not data.endswith(b"Hello World\n"):
                d = k.recv(4096)
                assert d, "closed while in use, after %d requests" % i
                data += d
        t_idle = time.monotonic()
        k.settimeout(idle + 5)
        eq(k.recv(4096), b"", "closed when idle")
        waited = time.monotonic() - t_idle
        diag("idle keep-alive connection closed after %.2f s (timeout %.1f s)" % (waited, idle))
        assert idle - 0.1 <= waited <= idle + 1, "closed after %.2f s" % waited
        k.close()
    finally:
        finish(c, n)


main()
