#!/usr/bin/python3
"""balance round-robin and least-conn (SPEC §5) and worker messages (§6):
corrald accepts and hands each connection over CORRAL_IPC_FD, and counts,
keeps and logs (within one budget for the instance) what workers send it.
The worker is examples/python-worker.py, which speaks the protocol without
libcorral; hostile workers are inline Python."""
import json
import os
import signal
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tap import case, main, wait_for, eq  # noqa: E402
from corral import (Corrald, NotifySocket, PY, SRC, finish, free_port, http_get, proc_environ,  # noqa: E402
                    request, run, status, wait_control)

TMP = tempfile.mkdtemp(prefix="corral-handoff-")
EXAMPLE = [PY, os.path.join(SRC, "examples", "python-worker.py")]


def start(balance, workers=2, listen=None, exec_=None, extra=None):
    n = NotifySocket()
    args = ["-b", balance, "-w", str(workers)]
    for l in listen or []:
        args += ["-l", l]
    if extra:
        path = os.path.join(TMP, "c%d.json" % free_port())
        with open(path, "w") as f:
            json.dump(dict(extra, exec=exec_ or EXAMPLE), f)
        args += ["-c", path]
        c = Corrald(args, notify=n)
    else:
        c = Corrald(args, exec_=exec_ or EXAMPLE, notify=n)
    n.wait("READY", "1")
    return c, n


@case
def a_reload_does_not_change_the_balance_mode():
    # corrald(8): a balance change takes effect when corrald restarts. The
    # hand-off used to switch modes at once while status said the new one.
    port = free_port()
    path = os.path.join(TMP, "bal%d.json" % port)

    def conf(balance):
        with open(path, "w") as f:
            json.dump({"exec": EXAMPLE, "workers": 2, "balance": balance, "listen": ["127.0.0.1:%d" % port]}, f)
    conf("round-robin")
    n = NotifySocket()
    c = Corrald(["-c", path], notify=n)
    try:
        n.wait("READY", "1")
        conf("least-conn")
        c.signal(signal.SIGHUP)
        s = wait_for(lambda: (lambda s: s if s["generation"] == 2 and s["ready"] == 2 and not s["incoming"]
                              and not s["leaving"] else None)(status(c)), 30, "the reload")
        eq(s["balance"], "round-robin", "the mode corrald started with")
        c.assert_logged(r"balance changes take effect only when corrald restarts")
        seen = [http_get(port)[1]["x-worker"] for _ in range(6)]
        eq(all(seen[i] != seen[i + 1] for i in range(5)), True, "still strict turns: %r" % seen)
    finally:
        finish(c, n)


@case
def round_robin_over_tcp_unix_and_ipv6_listeners():
    p4, p6 = free_port(), free_port()
    sock = os.path.join(TMP, "rr.sock")
    c, n = start("round-robin", listen=["web=127.0.0.1:%d" % p4, "local=unix:" + sock, "v6=[::1]:%d" % p6])
    try:
        # Workers get no listening fds: the master accepts.
        env = proc_environ(c.workers()[0])
        eq(("LISTEN_FDS" in env, "CORRAL_IPC_FD" in env), (False, True), "LISTEN_FDS unset, CORRAL_IPC_FD set")
        seen = [http_get(p4)[1]["x-worker"] for _ in range(10)]
        eq(sorted(seen), ["0"] * 5 + ["1"] * 5, "strict turns over 10 requests")
        eq(all(seen[i] != seen[i + 1] for i in range(9)), True, "alternating: %r" % seen)
        eq((http_get(0, unix=sock)[0], http_get(p6, host="::1")[0]), (200, 200), "unix and IPv6 listeners serve")
        st = status(c)
        eq(st["balance"], "round-robin", "balance in status")
        eq(sum(s["handed"] for s in st["slots"]), 12, "connections handed off")
        # The example reports every close: nothing is open any more.
        wait_for(lambda: all(s["connections"] == 0 for s in status(c)["slots"]), 10, "close reports")
    finally:
        finish(c, n)


@case
def socket_activated_round_robin_serves_the_waking_connection():
    # systemd-socket-activate starts corrald on the first connection, as a
    # .socket unit does; that connection waits in the backlog and is handed
    # off like any other, on the listener systemd named.
    p1, p2 = free_port(), free_port()
    n = NotifySocket()
    c = Corrald(["-b", "round-robin", "-w", "2"], EXAMPLE, notify=n,
                activate={"listen": ["127.0.0.1:%d" % p1, "127.0.0.1:%d" % p2], "fdnames": ["web", "admin"]})
    try:
        wait_for(lambda: "Listening on" in c.output(), 10, "socket-activate listening")
        st, hdrs, body = http_get(p2, timeout=20)   # this connection starts corrald
        eq((st, body.startswith(b"hello")), (200, True), "the waking connection is served")
        n.wait("READY", "1")
        eq([l["name"] for l in status(c)["listeners"]], ["web", "admin"], "systemd's names")
        seen = sorted(http_get(p1)[1]["x-worker"] for _ in range(4))
        eq(seen, ["0", "0", "1", "1"], "turns on the other listener")
    finally:
        finish(c, n)


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])   # utime + stime


@case
def emfile_on_accept_pauses_instead_of_spinning():
    import subprocess
    import threading
    port = free_port()
    c, n = start("round-robin", workers=1, listen=["127.0.0.1:%d" % port])
    try:
        http_get(port)
        # No fd left for accept(2): the limit is the lowest free fd number,
        # so every number below it is taken. The listener stays readable.
        used = {int(f) for f in os.listdir("/proc/%d/fd" % c.pid)}
        low = next(k for k in range(len(used) + 1) if k not in used)
        subprocess.run(["prlimit", "--pid", str(c.pid), "--nofile=%d:" % low], check=True)   # the soft limit
        results = []
        t = threading.Thread(target=lambda: results.append(http_get(port, timeout=20)[0]), daemon=True)
        t0 = cpu_ticks(c.pid)
        t.start()
        time.sleep(1.0)   # the measured interval: corrald must not spin on the readable listener
        spent = cpu_ticks(c.pid) - t0
        assert spent < 20, "corrald used %d ticks of CPU in 1 s with EMFILE" % spent
        eq(results, [], "not served while no fd is free")
        subprocess.run(["prlimit", "--pid", str(c.pid), "--nofile=4096:"], check=True)
        t.join(15)
        eq(results, [200], "served once fds are free again")
    finally:
        finish(c, n)


@case
def least_conn_avoids_a_stuck_worker():
    port = free_port()
    c, n = start("least-conn", listen=["127.0.0.1:%d" % port])
    idle = None
    try:
        for _ in range(2):   # both workers report a close: least-conn can weigh them
            http_get(port)
        wait_for(lambda: all(s["connections"] == 0 for s in status(c)["slots"]), 10, "close reports")
        # A connection that never sends its request keeps one worker busy
        # (the example serves one connection at a time).
        idle = socket.create_connection(("127.0.0.1", port), timeout=10)
        stuck = int(wait_for(lambda: next((str(s["id"]) for s in status(c)["slots"] if s["connections"] == 1),
                                          None), 10, "a worker with the idle connection"))
        served = []
        for _ in range(6):
            served.append(http_get(port, timeout=5)[1]["x-worker"])
            # Its close report travels after the response: with both at one
            # open connection the tie would be broken in turn.
            wait_for(lambda: status(c)["slots"][1 - stuck]["connections"] == 0, 10, "the close report")
        eq(served, [str(1 - stuck)] * 6, "every request went to the worker that is not stuck")
    finally:
        if idle:
            idle.close()
        finish(c, n)


@case
def connection_accepted_while_no_worker_is_ready_is_served_later():
    port = free_port()
    c, n = start("round-robin", workers=1, listen=["127.0.0.1:%d" % port],
                 extra={"restart": {"backoff_ms": [600, 1000]}})
    try:
        # The first crash after READY=1 is replaced at once (SPEC §2); the
        # second within restart.window_ms waits out the backoff.
        pid = c.workers()[0]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: (lambda s: s["ready"] == 1 and s["slots"][0]["pid"] != pid)(status(c)), 10,
                 "the replacement ready")
        os.kill(status(c)["slots"][0]["pid"], signal.SIGKILL)
        wait_for(lambda: status(c)["slots"][0]["state"] == "backoff", 10, "the slot in backoff")
        # The master holds what it accepts until the respawned worker is
        # ready: no connection is lost while no worker can take it.
        t0 = time.monotonic()
        st, hdrs, body = http_get(port, timeout=10)
        waited = time.monotonic() - t0
        eq((st, body.startswith(b"hello")), (200, True), "served after the respawn")
        assert 0.2 < waited < 5, "served after %.2fs" % waited
        eq(status(c)["slots"][0]["restarts"], 2, "the slot was respawned twice")
    finally:
        finish(c, n)


@case
def messages_between_workers_and_to_the_master():
    port = free_port()
    c, n = start("round-robin", listen=["127.0.0.1:%d" % port])
    try:
        # Each example worker greets the others at start; each prints what it got.
        c.wait_line(r"worker 0: message from 1: \{'hello': '1'\}")
        c.wait_line(r"worker 1: message from 0: \{'hello': '0'\}")
        r = request(c, {"command": "send", "target": "all", "data": "ping"})
        eq((r["ok"], r["delivered"]), (True, 2), "send all reaches both workers")
        pongs = wait_for(lambda: (lambda m: m if len(m) == 2 else None)(
            [m for m in request(c, {"command": "messages"})["messages"] if isinstance(m["data"], dict)]), 10,
            "a pong from each worker")
        eq(sorted((m["from"], m["data"]["pong"]) for m in pongs), [(0, "0"), (1, "1")], "pongs with from set")
        r = request(c, {"command": "send", "target": 1, "data": {"x": [1, 2]}})
        eq(r["delivered"], 1, "send to one slot")
        c.wait_line(r"worker 1: message from ctl: \{'x': \[1, 2\]\}")
    finally:
        finish(c, n)


LONE_SURROGATE = r'''
import os, socket, time
ipc = socket.socket(fileno=int(os.environ["CORRAL_IPC_FD"]))
addr = os.environ["NOTIFY_SOCKET"]
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
n.sendto(b"READY=1", "\0" + addr[1:] if addr.startswith("@") else addr)
ipc.sendall(b'{"type":"message","data":"\\uDFFF"}\n{"type":"message","data":["\\ud83d\\ude00"]}\n')
while True:
    time.sleep(3600)
'''


@case
def a_lone_surrogate_is_refused_and_counted_not_lost():
    # Found by libFuzzer: the scanner took "\uDFFF", cJSON does not, and
    # the message vanished from `messages` without a count or a word.
    path = os.path.join(TMP, "lone.py")
    with open(path, "w") as f:
        f.write(LONE_SURROGATE)
    c, n = start("round-robin", workers=1, listen=["127.0.0.1:%d" % free_port()], exec_=[PY, path])
    try:
        # The surrogate pair after it is read, so the line before it was too.
        r = wait_for(lambda: (lambda r: r if r["total"] >= 1 else None)(request(c, {"command": "messages"})), 10,
                     "the valid message")
        eq([m["data"] for m in r["messages"]], [["\U0001f600"]], "only the valid message is kept")
        eq(r["total"], 1, "messages counted")
        eq(status(c)["slots"][0]["messages_malformed"], 1, "the lone surrogate counted as malformed")
        c.assert_logged(r"malformed IPC line dropped \(lone surrogate")
    finally:
        finish(c, n)


@case
def message_flood_drops_and_counts_but_hand_offs_keep_flowing():
    port = free_port()
    c, n = start("round-robin", listen=["127.0.0.1:%d" % port])
    try:
        big = {"blob": "z" * 60000}
        w0 = status(c)["slots"][0]["pid"]
        os.kill(w0, signal.SIGSTOP)   # it stops reading its channel
        try:
            results = [request(c, {"command": "send", "target": 0, "data": big}) for _ in range(40)]
        finally:
            os.kill(w0, signal.SIGCONT)
        dropped = [r for r in results if not r["ok"]]
        assert dropped, "some sends must find the queue full"
        assert "not delivered" in dropped[0]["error"], dropped[0]
        wait_for(lambda: status(c)["slots"][0]["messages_dropped"] >= len(dropped), 10, "drops counted")
        # The channel stays open. Once worker 0 has read its backlog (its
        # pong to a ping queued behind the flood comes back), both workers
        # take connections again; until then hand-offs go to worker 1.
        wait_for(lambda: request(c, {"command": "send", "target": 0, "data": "ping"})["ok"], 20,
                 "a ping that fits in worker 0's queue")
        wait_for(lambda: any(m["from"] == 0 and isinstance(m["data"], dict) and "pong" in m["data"]
                             for m in request(c, {"command": "messages"})["messages"]), 20, "worker 0's pong")
        seen = sorted(http_get(port, timeout=20)[1]["x-worker"] for _ in range(6))
        eq(seen, ["0", "0", "0", "1", "1", "1"], "hand-offs to both workers")
    finally:
        finish(c, n)


@case
def corralctl_messages_follows_until_corrald_stops():
    import subprocess
    from corral import CORRALCTL
    port = free_port()
    c, n = start("least-conn", listen=["127.0.0.1:%d" % port])
    follow = None
    try:
        follow = subprocess.Popen([CORRALCTL, "-s", c.control, "--json", "messages", "-f"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        lines = []
        reader = __import__("threading").Thread(target=lambda: lines.extend(follow.stdout), daemon=True)
        reader.start()
        # Pongs that arrive before the follower is registered are kept and
        # streamed first, so the order of the two does not matter.
        eq(request(c, {"command": "send", "target": "all", "data": "ping"})["delivered"], 2, "ping sent")
        wait_for(lambda: len(lines) >= 2 or None, 10, "two messages streamed")
        got = sorted((json.loads(l)["from"], json.loads(l)["data"]["pong"]) for l in lines[:2])
        eq(got, [(0, "0"), (1, "1")], "each worker's pong, with from")
        eq(c.stop(), 0, "corrald exit status")
        eq(follow.wait(10), 0, "messages -f ends with exit 0 when corrald stops")
    finally:
        if follow and follow.poll() is None:
            follow.kill()
        c.kill()
        n.close()


@case
def max_requests_recycles_without_failed_requests():
    port = free_port()
    c, n = start("round-robin", listen=["127.0.0.1:%d" % port], extra={"recycle": {"max_requests": 4}})
    try:
        before = {s["id"]: s["pid"] for s in status(c)["slots"]}
        codes = [http_get(port, timeout=10)[0] for _ in range(24)]
        eq(codes, [200] * 24, "every request served")
        wait_for(lambda: all(s["pid"] not in before.values() and s["state"] == "ready"
                             for s in status(c)["slots"]), 20, "both slots recycled")
    finally:
        finish(c, n)


HOSTILE = r'''
import os, socket, array, time
fd = int(os.environ["CORRAL_IPC_FD"])
ipc = socket.socket(fileno=fd)
addr = os.environ["NOTIFY_SOCKET"]
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
n.sendto(b"READY=1", "\0" + addr[1:] if addr.startswith("@") else addr)
ipc.sendall(b"garbage\n[1,2]\n{\"type\":\"nope\"}\n" + b"x" * (10 << 20) + b"\n")
r, w = os.pipe()
for _ in range(20):
    ipc.sendmsg([b'{"type":"message","data":1}\n'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r, w]))])
open(os.path.join(os.environ["CORRAL_TEST_DIR"], "sent.%s" % os.environ["CORRAL_WORKER_ID"]), "w").close()
while True:
    time.sleep(3600)   # never reads its channel
'''


@case
def hostile_channel_leaves_the_master_responsive_with_flat_fds():
    port = free_port()
    path = os.path.join(TMP, "hostile.py")
    with open(path, "w") as f:
        f.write(HOSTILE)
    n = NotifySocket()
    c = Corrald(["-b", "round-robin", "-w", "1", "-l", "127.0.0.1:%d" % port], exec_=[PY, path], notify=n,
                env={"CORRAL_TEST_DIR": TMP})
    try:
        n.wait("READY", "1")
        fds_before = len(os.listdir("/proc/%d/fd" % c.pid))
        wait_for(lambda: os.path.exists(os.path.join(TMP, "sent.0")), 30, "the worker to send its garbage")
        # It never reads: messages to it queue, then drop and are counted;
        # the channel stays open.
        big = "y" * 60000
        for _ in range(10):
            request(c, {"command": "send", "target": 0, "data": big})
        t0 = time.monotonic()
        st = status(c)
        assert time.monotonic() - t0 < 2, "status took %.1fs" % (time.monotonic() - t0)
        assert st["slots"][0]["messages_dropped"] > 0, st["slots"][0]
        eq(st["slots"][0]["state"], "ready", "the worker keeps its channel and slot")
        # The control connections just used close asynchronously.
        wait_for(lambda: len(os.listdir("/proc/%d/fd" % c.pid)) == fds_before, 10,
                 "the master's fd count back to %d" % fds_before)
        eq(sum(1 for m in request(c, {"command": "messages"})["messages"] if m["data"] == 1), 20,
           "the 20 valid lines arrived, their fds refused")
    finally:
        finish(c, n)


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


def teardown():
    import shutil
    shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    finally:
        teardown()
