#!/usr/bin/python3
"""Node.js workers without a module (issue 16): "ipc": "node" makes
CORRAL_IPC_FD Node's own IPC channel (NODE_CHANNEL_FD), so plain JavaScript
gets hand-offs (process.on('message', (msg, socket))), messages and
readiness over the channel ({"type":"notify"}). Real `node`, no addon: the
example (examples/node-worker.js) and a test worker (workers/tnode.js)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tap import case, main, wait_for, eq, Skip, diag  # noqa: E402
from sandbox import Sandbox  # noqa: E402
from corral import (CORRALCTL, Corrald, NotifySocket, PY, SRC, WORKERS, finish, free_port, http_get,  # noqa: E402
                    pid_alive, proc_environ, request, shipped_unit, slot, status, wait_status)

NODE = os.environ.get("CORRAL_TEST_NODE") or shutil.which("node")   # CORRAL_TEST_NODE: try another version
TMP = tempfile.mkdtemp(prefix="corral-node-")
EXAMPLE = os.path.join(SRC, "examples", "node-worker.js")
TNODE = os.path.join(WORKERS, "tnode.js")
LISTEN_APP = os.path.join(WORKERS, "listen-app.js")


def start(balance, script=TNODE, workers=2, env=None, extra=None, port=None, ready=True):
    if not NODE:
        raise Skip("node is not installed")
    port = port or free_port()
    path = os.path.join(TMP, "n%d.json" % port)
    with open(path, "w") as f:
        json.dump(dict(extra or {}, exec=[NODE, script], workers=workers, balance=balance, ipc="node",
                       listen=["127.0.0.1:%d" % port]), f)
    n = NotifySocket()
    c = Corrald(["-c", path], notify=n, env=env)
    if ready:
        n.wait("READY", "1")
    return c, n, port


def messages(c):
    return [m for m in request(c, {"command": "messages"})["messages"] if isinstance(m["data"], dict)]


@case
def round_robin_example_in_strict_turns():
    c, n, port = start("round-robin", script=EXAMPLE)
    try:
        pid = status(c)["slots"][0]["pid"]
        env = proc_environ(pid)
        eq((env.get("NODE_CHANNEL_FD"), env.get("NODE_CHANNEL_SERIALIZATION_MODE"), "LISTEN_FDS" in env),
           (env["CORRAL_IPC_FD"], "json", False), "NODE_CHANNEL_FD is CORRAL_IPC_FD, no listening fds")
        bodies = [http_get(port)[2].decode() for _ in range(10)]
        seen = [b.split()[3] for b in bodies]
        eq(sorted(seen), ["0"] * 5 + ["1"] * 5, "strict turns over 10 requests: %r" % bodies)
        eq(all(seen[i] != seen[i + 1] for i in range(9)), True, "alternating: %r" % seen)
        s = status(c)
        eq((s["balance"], s["ipc"]), ("round-robin", "node"), "balance and ipc in status")
        eq(sum(x["handed"] for x in s["slots"]), 10, "connections handed off")
        # The example reports closes with process.send(): nothing open.
        wait_for(lambda: all(x["connections"] == 0 for x in status(c)["slots"]), 10, "close reports")
        eq(sum(x["messages_malformed"] for x in status(c)["slots"]), 0, "Node's ACKs are not malformed lines")
        r = subprocess.run([CORRALCTL, "-s", c.control, "status"], capture_output=True, text=True, timeout=10)
        assert "round-robin (ipc node)" in r.stdout, r.stdout
    finally:
        finish(c, n)


@case
def shared_example_listens_on_fd_3_and_says_ready_over_the_channel():
    c, n, port = start("shared", script=EXAMPLE)
    try:
        s = status(c)
        eq(s["ready"], 2, "both ready: READY=1 came as a notify line")
        eq(sorted(x["status"] for x in s["slots"]), ["serving as worker 0", "serving as worker 1"],
           "STATUS= from the notify line")
        env = proc_environ(s["slots"][0]["pid"])
        eq((env["LISTEN_FDS"], env["NODE_CHANNEL_FD"]), ("1", "4"), "fd 3 listens, fd 4 is the channel")
        eq(all(http_get(port)[0] == 200 for _ in range(6)), True, "served from fd 3")
    finally:
        finish(c, n)


@case
def least_conn_avoids_a_worker_stuck_on_a_slow_request():
    c, n, port = start("least-conn")
    try:
        # Until a worker has reported a close, least-conn cannot count its
        # connections: a first request to each.
        eq(sorted(http_get(port)[1]["x-worker"] for _ in range(2)), ["0", "1"], "one request each")
        wait_for(lambda: all(x["connections"] == 0 for x in status(c)["slots"]), 10, "their close reports")
        result = {}

        def slow():
            result["r"] = http_get(port, "/slow", timeout=30)
        t = threading.Thread(target=slow)
        t.start()
        busy = wait_for(lambda: next(([x["id"]] for x in status(c)["slots"] if x["connections"] == 1), None), 10,
                        "the slow request to be open on a worker")[0]
        seen = []
        for _ in range(8):
            seen.append(http_get(port)[1]["x-worker"])
            # Its close report follows the response: wait for it, or the
            # next request may find both at one open connection.
            wait_for(lambda: slot(status(c), 1 - busy)["connections"] == 0, 10, "the close report")
        eq(seen, [str(1 - busy)] * 8, "every quick request avoids worker %d" % busy)
        eq(request(c, {"command": "send", "target": busy, "data": "release"})["delivered"], 1, "release sent")
        t.join(30)
        eq(result["r"][0], 200, "the slow request was answered")
        wait_for(lambda: all(x["connections"] == 0 for x in status(c)["slots"]), 10, "all closed")
    finally:
        finish(c, n)


@case
def messages_reach_process_on_message_and_go_between_workers():
    c, n, port = start("round-robin")
    try:
        r = request(c, {"command": "send", "target": "all", "data": {"echo": "hi"}})
        eq((r["ok"], r["delivered"]), (True, 2), "send all reaches both Node workers")
        got = wait_for(lambda: (lambda m: m if len(m) == 2 else None)(messages(c)), 10, "an echo from each")
        eq(sorted((m["from"], m["data"]["slot"], m["data"]["from"], m["data"]["echo"]) for m in got),
           [(0, 0, "ctl", "hi"), (1, 1, "ctl", "hi")], "process.send() back to the master, from set")
        # Worker 0 tells the others, then slot 1 by number, then all.
        request(c, {"command": "send", "target": 0, "data": {"tell": "others", "echo": "o"}})
        request(c, {"command": "send", "target": 0, "data": {"tell": 1, "echo": "s"}})
        request(c, {"command": "send", "target": 1, "data": {"tell": "all", "echo": "a"}})
        got = wait_for(lambda: (lambda m: m if len(m) == 6 else None)(messages(c)), 10, "six echoes")
        eq(sorted((m["data"]["slot"], m["data"]["from"], m["data"]["echo"]) for m in got[2:]),
           [(0, 1, "a"), (1, 0, "o"), (1, 0, "s"), (1, 1, "a")], "worker to others, to a slot, to all")
    finally:
        finish(c, n)


@case
def ip_hash_keeps_each_client_on_one_node_worker():
    c, n, port = start("ip-hash", workers=3)
    try:
        homes = {}
        for i in range(2, 8):
            client = "127.0.0.%d" % i
            seen = {http_get(port, source=client)[1]["x-worker"] for _ in range(10)}
            eq(len(seen), 1, "all 10 requests of %s on one slot: %r" % (client, seen))
            homes[client] = seen.pop()
        diag("slots of 6 clients: %r" % homes)
        eq(sum(x["handed"] for x in status(c)["slots"]), 60, "every connection handed over the Node channel")
    finally:
        finish(c, n)


@case
def notify_line_readiness_gates_a_rolling_reload():
    c, n, port = start("round-robin", env={"READY_DELAY_MS": "1500"})
    try:
        old = sorted(x["pid"] for x in status(c)["slots"])
        c.signal(signal.SIGHUP)
        s = wait_status(c, lambda s: s["incoming"], 10, "a new worker to start")
        eq(s["incoming"][0]["state"], "starting", "the new worker is not ready before its notify line")
        eq(sorted(x["pid"] for x in s["slots"]), old, "the old workers still serve")
        eq(all(http_get(port)[0] == 200 for _ in range(4)), True, "served meanwhile")
        s = wait_status(c, lambda s: s["generation"] == 2 and s["ready"] == 2 and not s["incoming"]
                        and not s["leaving"], 30, "the reload to finish")
        eq(set(x["pid"] for x in s["slots"]) & set(old), set(), "every worker replaced")
    finally:
        finish(c, n)


@case
def stopping_over_the_channel_starts_the_replacement_first():
    # Leaving sooner than window_ms / limit after READY counts as a
    # failure (SPEC §4): 10 µs here, less than any round trip.
    c, n, port = start("round-robin", workers=1, extra={"restart": {"window_ms": 100, "limit": 10000}})
    try:
        old = status(c)["slots"][0]["pid"]
        request(c, {"command": "send", "target": 0, "data": "leave"})
        s = wait_status(c, lambda s: s["leaving"], 10, "the worker to say STOPPING=1 over the channel")
        eq(s["leaving"][0]["pid"], old, "it is leaving")
        s = wait_status(c, lambda s: slot(s, 0)["state"] == "ready" and slot(s, 0)["pid"] != old, 10,
                        "the replacement to be ready")
        assert pid_alive(old), "the replacement was ready only after the old worker exited"
        eq(http_get(port)[0], 200, "the replacement serves")
        s = wait_status(c, lambda s: not s["leaving"] and not pid_alive(old), 10, "the old worker to exit")
        eq(slot(s, 0)["restarts"], 0, "leaving is not a failure")
    finally:
        finish(c, n)


@case
def kill_9_respawns_a_node_worker():
    c, n, port = start("round-robin")
    try:
        victim = slot(status(c), 1)["pid"]
        os.kill(victim, signal.SIGKILL)
        s = wait_status(c, lambda s: slot(s, 1)["pid"] not in (None, victim) and slot(s, 1)["state"] == "ready",
                        10, "slot 1 to be replaced")
        eq(slot(s, 1)["restarts"], 1, "counted")
        eq(sorted(http_get(port)[1]["x-worker"] for _ in range(4)), ["0", "0", "1", "1"], "both serve")
    finally:
        finish(c, n)


@case
def unchanged_listen_app_serves_through_the_cluster_protocol():
    for balance in ("shared", "round-robin"):
        port = free_port()
        c, n, _ = start(balance, script=LISTEN_APP, env={"PORT": str(port)}, port=port)
        try:
            # READY=1 came from Node's cluster "listening": no corral code.
            s = status(c)
            eq((s["ready"], s["ipc"]), (2, "node"), "%s: both ready" % balance)
            env = proc_environ(slot(s, 1)["pid"])
            eq(env.get("NODE_UNIQUE_ID"), "2", "cluster.worker.id is slot + 1")
            seen = [http_get(port)[1]["x-worker"] for _ in range(8)]
            if balance == "round-robin":
                eq(seen, ["0", "1"] * 4, "round-robin: newconn in strict turns")
            else:
                eq(set(seen) <= {"0", "1"}, True, "shared: served on the socket corral holds")
        finally:
            finish(c, n)


@case
def a_connection_a_full_cluster_worker_refuses_goes_to_another():
    # Node's cluster answers a newconn with accepted: false when the server
    # is at server.maxConnections; the master kept its copy until then.
    port = free_port()
    c, n, _ = start("round-robin", script=LISTEN_APP, env={"PORT": str(port), "FULL_SLOT": "0"}, port=port)
    held = []
    try:
        # Fill slot 0: keep-alive connections until one is served there.
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            held.append(s)
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            if b"X-Worker: 0" in s.recv(4096):
                break
        else:
            raise AssertionError("no keep-alive connection reached slot 0")
        seen = []
        for _ in range(10):
            try:
                seen.append(http_get(port, timeout=5)[1]["x-worker"])
            except (OSError, IndexError, ValueError) as e:
                seen.append("failed: %s" % e)
        eq(seen, ["1"] * 10, "every request served, by the worker with room")
        c.assert_logged(r"worker 0 \(pid \d+\) refused a connection: it goes to another worker")
        k = status(c)["counters"]
        eq(k["handoffs_lost"], 0, "none lost")
        eq(k["handoffs_taken_back"] >= 1, True, "the refused ones were taken back (%d)" % k["handoffs_taken_back"])
    finally:
        for s in held:
            s.close()
        finish(c, n)


@case
def unchanged_app_on_another_port_is_refused_with_the_reason():
    port, other = free_port(), free_port()
    c, n, _ = start("round-robin", script=LISTEN_APP, env={"PORT": str(other)}, port=port, ready=False,
                    workers=1, extra={"restart": {"backoff_ms": [1000, 1000]}})
    try:
        # The app gets EADDRNOTAVAIL, exits 1, and corral says why.
        wait_status(c, lambda s: slot(s, 0)["restarts"] >= 1, 20, "the refused worker to fail")
        c.assert_logged(r"listen\(\) on port %d refused: this instance serves 127\.0\.0\.1:%d" % (other, port))
        eq(status(c)["ready"], 0, "not ready")
    finally:
        finish(c, n)


@case
def unchanged_app_reloads_under_load_without_a_failed_request():
    port = free_port()
    c, n, _ = start("round-robin", script=LISTEN_APP, env={"PORT": str(port)}, port=port)
    counts = {"ok": 0, "bad": 0}
    stop = threading.Event()

    def load():
        while not stop.is_set():
            try:
                ok = http_get(port, timeout=5)[0] == 200
            except OSError:
                ok = False
            counts["ok" if ok else "bad"] += 1
    t = threading.Thread(target=load)
    t.start()
    try:
        for gen in (2, 3, 4):
            c.signal(signal.SIGHUP)
            wait_status(c, lambda s: s["generation"] == gen and s["ready"] == 2 and not s["incoming"]
                        and not s["leaving"], 30, "reload to generation %d" % gen)
        c.assert_logged(r"stopping worker \d \(pid \d+\) with Node's cluster disconnect")
    finally:
        stop.set()
        t.join(30)
        finish(c, n)
    diag("requests during 3 reloads: %(ok)d ok, %(bad)d failed" % counts)
    assert counts["ok"] > 50, "too little load to mean anything: %r" % counts
    eq(counts["bad"], 0, "failed requests")


@case
def example_under_the_shipped_unit_reloads_without_a_failed_request():
    """examples/node-worker.js as a user deploys it: corral@.socket and
    corral@.service as shipped, systemd 252 as PID 1, `systemctl reload`
    under load (tests/integration/workers/loadgen.py)."""
    if not NODE:
        raise Skip("node is not installed")
    reason = Sandbox.usable()
    if reason:
        raise Skip(reason)
    if NODE.startswith("/tmp/"):
        raise Skip("%s is not visible under the unit's PrivateTmp=" % NODE)
    conf = json.dumps({"exec": [NODE, EXAMPLE], "workers": 2, "balance": "round-robin", "ipc": "node"})
    units = {
        "corral@.socket": shipped_unit("corral@.socket"),
        "corral@.service": shipped_unit("corral@.service"),
        "corral@nd.socket.d/port.conf": "[Socket]\nListenStream=\nListenStream=127.0.0.1:8080\n",
    }
    if os.environ.get("CORRAL_SANITIZED") == "1":
        units["corral@.service.d/sanitize.conf"] = "[Service]\nEnvironment=ASAN_OPTIONS=detect_leaks=0\n"
    sb = Sandbox(units=units, files={"/etc/corral/nd.json": conf}, timeout=60)
    sb.start()
    try:
        sb.systemctl("start", "corral@nd.socket")
        sb.systemctl("start", "corral@nd.service")

        def st():
            r = sb.run([CORRALCTL, "-i", "nd", "status", "--json"], check=False)
            return json.loads(r.stdout) if r.returncode == 0 else None

        def ready(gen):
            return wait_for(lambda: (lambda s: s if s and s["ready"] == 2 and s["generation"] == gen and
                                     not s["incoming"] and not s["leaving"] else None)(st()),
                            30, "2 ready workers in generation %d" % gen)
        s = ready(1)
        eq(s["ipc"], "node", "the node dialect")
        stop = "/run/stop-load-node"
        p = sb.spawn(["/usr/bin/python3", os.path.join(WORKERS, "loadgen.py"), "close", stop],
                     env={"LOADGEN_EXPECT": ")\n"}, stdout=subprocess.PIPE, text=True)
        try:
            for gen in (2, 3, 4, 5, 6):
                sb.systemctl("reload", "corral@nd.service")
                ready(gen)
        finally:
            sb.run(["touch", stop])
            out, _ = p.communicate(timeout=30)
        ok, bad = (int(x) for x in out.split()[:2])
        diag("load during 5 reloads: %s" % out.strip())
        assert ok > 100, "too little load to mean anything: %s" % out
        eq(bad, 0, "failed requests (%s)" % out.strip())
    finally:
        sb.stop()


NACK_STORM = r'''
import os, socket, time
ipc = socket.socket(fileno=int(os.environ["NODE_CHANNEL_FD"]))
ipc.sendall(b'{"type":"notify","text":"READY=1"}\n')
ipc.sendall(b'{"cmd":"NODE_HANDLE_NACK"}\n' * 2000 + b'{"cmd":"NODE_FOO"}\n' + b'not json\n')
# Cluster messages of every odd shape: each answered or ignored, none fatal.
odd = [b'{"cmd":"NODE_CLUSTER","act":"queryServer","seq":1,"port":"80","address":7,"addressType":"x"}',
       b'{"cmd":"NODE_CLUSTER","act":"queryServer","seq":2,"fd":1e300,"port":-5}',
       b'{"cmd":"NODE_CLUSTER","act":"queryServer","seq":3,"port":0,"data":{"ticketKeys":"00"}}',
       b'{"cmd":"NODE_CLUSTER","act":"queryServer","seq":4,"port":0}',
       b'{"cmd":"NODE_CLUSTER","act":"close","key":["corral:0"],"seq":5}',
       b'{"cmd":"NODE_CLUSTER","act":"close","key":"corral:0","seq":6}',
       b'{"cmd":"NODE_CLUSTER","act":"queryServer"}',
       b'{"cmd":"NODE_CLUSTER","ack":3,"accepted":"yes"}',
       b'{"cmd":"NODE_CLUSTER","act":7,"seq":8}',
       b'{"cmd":"NODE_CLUSTER","act":"listening","seq":"nine"}',
       b'{"cmd":"NODE_CLUSTER","act":"newconn","seq":10}',
       b'{"cmd":"NODE_HANDLE","type":"net.Socket","msg":{}}']
ipc.sendall(b"\n".join(odd) + b"\n")
got = b""
while b'"act":"disconnect"' not in got:   # how corrald stops a cluster worker
    r = ipc.recv(65536)
    if not r:
        break
    got += r
'''


@case
def junk_and_a_nack_storm_are_bounded_and_counted():
    if not NODE:
        raise Skip("node is not installed")
    path = os.path.join(TMP, "storm.py")
    with open(path, "w") as f:
        f.write(NACK_STORM)
    port = free_port()
    n = NotifySocket()
    c = Corrald(["-b", "round-robin", "--ipc", "node", "-w", "1", "-l", "127.0.0.1:%d" % port],
                exec_=[PY, path], notify=n)
    try:
        n.wait("READY", "1")
        s = wait_status(c, lambda s: slot(s, 0)["messages_malformed"] >= 4, 10, "the junk to be counted")
        eq(slot(s, 0)["fd_limit_lost"], 2000, "each NACK is a lost hand-off")
        eq(slot(s, 0)["state"], "ready", "the worker stays")
        assert c.count(r"fd limit|lost") < 20, "logged at a bounded rate:\n" + c.output()
    finally:
        finish(c, n)


if __name__ == "__main__":
    main()
