#!/usr/bin/python3
"""corrald core, outside systemd: embedded mode and systemd-socket-activate,
with a test-owned NOTIFY_SOCKET standing in for systemd's."""
import glob
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tap import case, main, wait_for, eq, Skip  # noqa: E402
from corral import (Corrald, NotifySocket, HELLO, TWORKER, free_port, http_get, pid_alive,  # noqa: E402
                    proc_environ)

TMP = tempfile.mkdtemp(prefix="corral-test-")


def config(name, **keys):
    path = os.path.join(TMP, name + ".json")
    with open(path, "w") as f:
        json.dump(keys, f)
    return path


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


@case
def hello_embedded_ready_status_stop_order():
    port = free_port()
    c, n = run(["--listen", "127.0.0.1:%d" % port, "-w", "2"], [HELLO])
    try:
        _, f = n.wait("READY", "1")
        eq(f.get("STATUS"), "2/2 workers ready, generation 1", "STATUS sent with READY=1")
        status, headers, body = http_get(port)
        eq(status, 200, "HTTP status")
        eq(body, b"Hello World\n", "body")
        assert int(headers["x-worker-pid"]) in c.workers(), "answered by one of corrald's workers"
        eq(c.stop(), 0, "exit status")
        n.wait("STOPPING", "1")
        keys = n.keys_in_order()
        assert keys.index("READY") < keys.index("STOPPING"), "READY=1 before STOPPING=1: %r" % keys
    finally:
        c.kill()
        n.close()


@case
def worker_contract_env_and_fds():
    out = os.path.join(TMP, "dump")
    p1, p2 = free_port(), free_port()
    path = config("contract", workers=2, env={"FOO": "bar"},
                  listen=["web=127.0.0.1:%d" % p1, "127.0.0.1:%d" % p2],
                  exec=TWORKER + ["dump", out])
    # Values of corrald's own systemd relation that must never reach a worker.
    bogus = {"WATCHDOG_USEC": "999", "WATCHDOG_PID": "1", "LISTEN_FDS": "7", "LISTEN_PID": "1",
             "LISTEN_FDNAMES": "bogus", "CORRAL_WORKER_ID": "99"}
    c, n = run(["-c", path], env=bogus)
    try:
        n.wait("READY", "1")
        files = wait_for(lambda: (lambda g: g if len(g) == 2 else None)(glob.glob(out + ".*")), 10, "2 dumps")
        ids = set()
        for fpath in files:
            d = json.load(open(fpath))
            env, pid = d["env"], d["pid"]
            eq(env["LISTEN_FDS"], "2", "LISTEN_FDS")
            eq(env["LISTEN_PID"], str(pid), "LISTEN_PID is the worker's own pid")
            eq(env["LISTEN_FDNAMES"], "web:listen1", "LISTEN_FDNAMES")
            assert re.fullmatch(r"@[0-9a-f]{5}", env["NOTIFY_SOCKET"]), "autobound: %s" % env["NOTIFY_SOCKET"]
            eq(env["CORRAL_INSTANCE"], "contract", "CORRAL_INSTANCE")
            eq(env["CORRAL_GENERATION"], "1", "CORRAL_GENERATION")
            eq(env["CORRAL_IPC_FD"], "5", "CORRAL_IPC_FD")
            eq(env["FOO"], "bar", "env from config")
            assert "WATCHDOG_USEC" not in env and "WATCHDOG_PID" not in env, "watchdog vars leaked"
            ids.add(env["CORRAL_WORKER_ID"])
            fds = {int(k): v for k, v in d["fds"].items()}
            eq(sorted(fds), [0, 1, 2, 3, 4, 5], "worker fds: %r" % fds)
            eq(fds[0], "/dev/null", "stdin")
            for fd in (3, 4, 5):
                assert fds[fd].startswith("socket:"), "fd %d is %s" % (fd, fds[fd])
            eq(d["pgid"], pid, "worker leads its own process group")
            m = re.search(r"SigBlk:\s*([0-9a-f]+)", d["sigmask"])
            eq(int(m.group(1), 16), 0, "signal mask is empty")
        eq(ids, {"0", "1"}, "CORRAL_WORKER_ID per slot")
    finally:
        finish(c, n)


@case
def socket_activated_names_and_first_connection():
    p1, p2 = free_port(), free_port()
    out = os.path.join(TMP, "act")
    n = NotifySocket()
    c = Corrald(["-w", "1"], TWORKER + ["dump", out], notify=n,
                activate={"listen": ["127.0.0.1:%d" % p1, "127.0.0.1:%d" % p2], "fdnames": ["web", "admin"]})
    try:
        # systemd-socket-activate starts corrald on the first connection.
        wait_for(lambda: "Listening on" in c.output(), 10, "socket-activate listening")
        s = socket.create_connection(("127.0.0.1", p1), timeout=5)
        n.wait("READY", "1")
        c.wait_line(r"listening on 127\.0\.0\.1:%d \(web\), from systemd" % p1)
        d = json.load(open(wait_for(lambda: glob.glob(out + ".*"), 10, "dump")[0]))
        eq(d["env"]["LISTEN_FDNAMES"], "web:admin", "names from systemd reach the worker")
        eq(d["env"]["LISTEN_FDS"], "2", "LISTEN_FDS")
        s.close()
    finally:
        finish(c, n)


@case
def socket_activated_hello_answers_the_waking_connection():
    port = free_port()
    n = NotifySocket()
    c = Corrald(["-w", "2"], [HELLO], notify=n, activate={"listen": ["127.0.0.1:%d" % port]})
    try:
        wait_for(lambda: "Listening on" in c.output(), 10, "socket-activate listening")
        status, _, body = http_get(port)      # this connection starts corrald
        eq(status, 200, "first request")
        n.wait("READY", "1")
    finally:
        finish(c, n)


@case
def inherited_socket_that_is_not_listening_is_refused():
    n = NotifySocket()
    port = free_port()
    c = Corrald(["-w", "1"], [HELLO], notify=n, activate={"listen": ["127.0.0.1:%d" % port], "datagram": True})
    try:
        wait_for(lambda: "Listening on" in c.output(), 10, "socket-activate listening")
        # A datagram wakes systemd-socket-activate, which execs corrald.
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"x", ("127.0.0.1", port))
        s.close()
        eq(c.wait_exit(20), 1, "corrald exit status")
        c.wait_line(r"inherited fd 3 \(unknown\) is not a listening socket; use ListenStream= with Accept=no")
        eq(c.count("started"), 0, "no worker was started")
    finally:
        c.kill()
        n.close()


@case
def second_reload_while_one_runs_is_refused():
    import subprocess
    from corral import CORRALCTL
    path = config("twice", workers=1, exec=TWORKER + ["no-watchdog"])
    c, n = run(["-c", path])
    try:
        n.wait("READY", "1")
        # The next generation takes a while to become ready.
        with open(path, "w") as f:
            json.dump({"workers": 1, "exec": ["/bin/sh", "-c", "sleep 1; exec \"$0\" \"$@\"", *TWORKER,
                                              "no-watchdog"]}, f)
        first = subprocess.Popen([CORRALCTL, "-s", c.control, "reload"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        c.wait_line(r"reload: started 1/1")
        r = subprocess.run([CORRALCTL, "-s", c.control, "reload"], capture_output=True, text=True, timeout=20)
        eq(r.returncode, 1, "second reload exit status")
        assert "another reload or restart is in progress" in r.stderr, r.stderr
        out, err = first.communicate(timeout=30)
        eq(first.returncode, 0, "first reload exit status (%s)" % err)
        c.wait_line(r"reload done: generation 2")
    finally:
        finish(c, n)


@case
def kill9_worker_is_replaced_in_same_slot():
    port = free_port()
    c, n = run(["--listen", "127.0.0.1:%d" % port, "-w", "2"], [HELLO])
    try:
        n.wait("READY", "1")
        pids = c.wait_workers(2)
        victim = pids[0]
        slot = proc_environ(victim)["CORRAL_WORKER_ID"]
        os.kill(victim, signal.SIGKILL)
        c.wait_line(r"worker %s \(pid %d\) was killed by SIGKILL unexpectedly" % (slot, victim))
        # "started" is logged once exec succeeded, so the environ is the worker's.
        m = c.wait_line(r"worker (\d+) \(pid (\d+)\) started", count=3)
        eq(m.group(1), slot, "replacement takes the same slot")
        eq(proc_environ(int(m.group(2)))["CORRAL_WORKER_ID"], slot, "replacement's CORRAL_WORKER_ID")
        idx = len(n.all())
        n.wait("STATUS", "2/2 workers ready, generation 1", after=idx - 1)
        eq(http_get(port)[0], 200, "still serving")
    finally:
        finish(c, n)


@case
def stopping_announced_spawns_replacement_before_exit():
    c, n = run(["-w", "1"], TWORKER + ["leave"], env={"LEAVE_MS": "100", "LEAVE_GRACE_MS": "1500"})
    try:
        n.wait("READY", "1")
        m = c.wait_line(r"worker 0 \(pid (\d+)\) announced STOPPING=1")
        old = int(m.group(1))
        c.wait_line(r"worker 0 \(pid \d+\) is ready", count=2)
        assert pid_alive(old), "replacement was ready while the leaving worker still ran"
        c.wait_line(r"worker 0 \(pid %d\) exited with status 0$" % old)
        eq(c.count("unexpectedly"), 0, "a STOPPING=1 exit with status 0 is not a failure")
    finally:
        finish(c, n)


@case
def giveup_exits_1_with_crit_event():
    path = config("giveup", workers=2, exec=TWORKER + ["exit", "3"],
                  restart={"limit": 3, "window_ms": 60000, "backoff_ms": [10, 20]})
    c, n = run(["-c", path])
    try:
        rc = c.wait_exit(30)
        eq(rc, 1, "exit status after giving up")
        c.wait_line(r"giving up: more than 3 failures within 60000 ms")
        eq(c.count(r"exited with status 3 unexpectedly"), 4, "failures before giving up")
        assert not c.workers(), "no worker left"
    finally:
        c.kill()
        n.close()


@case
def giveup_stay_keeps_master_up():
    port = free_port()
    path = config("stay", workers=1, exec=TWORKER + ["exit", "3"], listen=["127.0.0.1:%d" % port],
                  restart={"limit": 1, "backoff_ms": [10, 10], "on_giveup": "stay"})
    c, n = run(["-c", path])
    try:
        c.wait_line(r"giving up")
        n.wait("STATUS", re.compile(r"^Gave up: more than 1 failure within"))
        assert c.proc.poll() is None, "master stays up with on_giveup=stay"
    finally:
        finish(c, n)


@case
def ready_timeout_kills_and_counts_as_failure():
    path = config("rt", workers=1, exec=TWORKER + ["never-ready"],
                  ready={"timeout_ms": 300}, restart={"limit": 1, "backoff_ms": [10, 10]})
    c, n = run(["-c", path])
    try:
        m = c.wait_line(r"worker 0 \(pid (\d+)\) did not send READY=1 within 300 ms")
        c.wait_line(r"worker 0 \(pid %s\) was killed by SIGKILL after it did not become ready" % m.group(1))
        eq(c.wait_exit(20), 1, "gave up after repeated ready timeouts")
        c.wait_line("giving up")
    finally:
        c.kill()
        n.close()


@case
def worker_watchdog_timeout_replaces_worker():
    path = config("wd", workers=1, exec=TWORKER + ["no-watchdog"], watchdog_ms=300,
                  restart={"backoff_ms": [10, 10]})
    c, n = run(["-c", path])
    try:
        n.wait("READY", "1")
        pid = c.wait_workers(1)[0]
        env = proc_environ(pid)
        eq(env.get("WATCHDOG_USEC"), "300000", "WATCHDOG_USEC")
        eq(env.get("WATCHDOG_PID"), str(pid), "WATCHDOG_PID")
        c.wait_line(r"worker 0 \(pid %d\) sent no WATCHDOG=1 within watchdog_ms; sending SIGABRT" % pid)
        c.wait_line(r"worker 0 \(pid %d\) was killed by SIGABRT" % pid)
        c.wait_line(r"worker 0 \(pid \d+\) is ready", count=2)
    finally:
        finish(c, n)


@case
def worker_that_pings_watchdog_survives():
    path = config("wdok", workers=1, exec=TWORKER + ["watchdog"], watchdog_ms=200)
    c, n = run(["-c", path])
    try:
        n.wait("READY", "1")
        pid = c.wait_workers(1)[0]
        # Five watchdog intervals: a worker that pings must not be touched.
        time.sleep(1.0)
        eq(c.workers(), [pid], "same worker after 5 watchdog intervals")
        eq(c.count("WATCHDOG"), 0, "no watchdog event")
    finally:
        finish(c, n)


@case
def graceful_stop_finishes_inflight_request():
    port = free_port()
    c, n = run(["--listen", "127.0.0.1:%d" % port, "-w", "1"], [HELLO])
    try:
        n.wait("READY", "1")
        worker = c.wait_workers(1)[0]
        base = len(os.listdir("/proc/%d/fd" % worker))
        result = {}

        def req():
            try:
                result["r"] = http_get(port, "/delay/1000", timeout=15)
            except Exception as e:  # noqa: BLE001
                result["e"] = e
        t = threading.Thread(target=req)
        t.start()
        # The worker holds one more fd once it has accepted our connection.
        wait_for(lambda: len(os.listdir("/proc/%d/fd" % worker)) > base, 10, "request accepted")
        c.signal(signal.SIGTERM)
        t.join(15)
        assert "e" not in result, "in-flight request failed: %r" % result.get("e")
        eq(result["r"][0], 200, "in-flight request status")
        eq(result["r"][2], b"Hello World\n", "in-flight request body")
        eq(c.wait_exit(20), 0, "exit status")
        assert not pid_alive(worker), "worker exited"
    finally:
        c.kill()
        n.close()


@case
def sigkill_master_leaves_no_worker():
    port = free_port()
    c, n = run(["--listen", "127.0.0.1:%d" % port, "-w", "3"], [HELLO])
    try:
        n.wait("READY", "1")
        pids = c.wait_workers(3)
        os.kill(c.pid, signal.SIGKILL)
        c.proc.wait(10)
        wait_for(lambda: not any(pid_alive(p) for p in pids), 10, "workers to die with the master")
    finally:
        c.kill()
        n.close()


def send_dgram(path, data, fds=()):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    addr = "\0" + path[1:] if path.startswith("@") else path
    try:
        if fds:
            s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes(memoryview(
                __import__("array").array("i", fds))))], 0, addr)
        else:
            s.sendto(data, addr)
    finally:
        s.close()


@case
def notify_from_stranger_and_garbage_are_dropped():
    path = config("strange", workers=1, exec=TWORKER + ["never-ready"], ready={"timeout_ms": 0})
    c, n = run(["-c", path], env={"CORRAL_DEBUG": "1"})
    try:
        pid = c.wait_workers(1)[0]
        c.wait_line(r"worker 0 \(pid %d\) started" % pid)
        sock = proc_environ(pid)["NOTIFY_SOCKET"]
        send_dgram(sock, b"READY=1")                       # we are not a worker
        c.wait_line(r"ignored a message from pid %d, which is not a current worker" % os.getpid())
        r, w = os.pipe()
        for bad in (b"", b"READY=1\0junk", b"x" * 5000, b"no assignment here"):
            send_dgram(sock, bad)
        send_dgram(sock, b"READY=1", fds=[w])               # fds must be closed by corrald
        os.close(w)
        # The pipe's read end sees EOF only once corrald closed its copy.
        wait_for(lambda: os.read(r, 1) == b"", 10, "corrald to close the passed fd")
        os.close(r)
        c.wait_line(r"dropped a datagram")
        eq(c.count(r"is ready"), 0, "no stranger made the worker ready")
        eq(c.count(r"the worker is ready|all \d+ workers ready"), 0, "no READY=1 to systemd")
    finally:
        finish(c, n)


@case
def python3_systemd_worker():
    c, n = run(["-w", "1"], TWORKER + ["pysystemd"])
    try:
        _, f = n.wait("READY", "1")
        c.wait_line(r"worker 0 \(pid \d+\) is ready")
    finally:
        finish(c, n)


@case
def systemd_notify_from_shell_worker():
    if os.geteuid() != 0:
        raise Skip("systemd-notify speaks for its parent only with privileges")
    c, n = run(["-w", "2"], ["/bin/sh", "-c", "systemd-notify --ready && exec sleep 3600"])
    try:
        n.wait("READY", "1", timeout=20)
        eq(c.count(r"is ready"), 2, "both shell workers ready through systemd-notify")
    finally:
        finish(c, n)


@case
def node_worker_on_inherited_fd():
    if not shutil.which("node"):
        raise Skip("node is not installed")
    port = free_port()
    js = ("require('http').createServer((q,s)=>s.end('node '+process.pid+'\\n'))"
          ".listen({fd:3},()=>{})")
    c, n = run(["--listen", "127.0.0.1:%d" % port, "-w", "2"], ["node", "-e", js])
    try:
        # Node has no sd_notify: the worker never says READY=1, so wait for
        # it to answer instead.
        c.wait_line(r"worker 1 \(pid \d+\) started")
        status, _, body = wait_for(lambda: _try_get(port), 20, "node answering")
        eq(status, 200, "node status")
        assert body.startswith(b"node "), body
        pid = int(body.split()[1])
        assert pid in c.workers(), "answered by a worker"
    finally:
        finish(c, n)


def _try_get(port):
    try:
        return http_get(port, timeout=5)
    except OSError:
        return None


@case
def scale_with_sigttin_sigttou():
    c, n = run(["-w", "1"], TWORKER + ["no-watchdog"])
    try:
        n.wait("READY", "1")
        c.signal(signal.SIGTTIN)
        n.wait("STATUS", "2/2 workers ready, generation 1")
        c.wait_workers(2)
        c.signal(signal.SIGTTOU)
        n.wait("STATUS", "1/1 workers ready, generation 1", after=2)
        c.wait_workers(1)
        c.wait_line(r"scaling from 2 to 1 worker\b")
    finally:
        finish(c, n)


@case
def recycle_max_rss_replaces_a_bloated_worker():
    path = config("hog", workers=1, exec=TWORKER + ["hog", "60"], recycle={"max_rss_mb": 40},
                  restart={"limit": 100})
    c, n = run(["-c", path])
    try:
        m = c.wait_line(r"worker 0 \(pid (\d+)\) started")
        first = int(m.group(1))
        c.wait_line(r"recycling worker 0 \(pid %d\): RSS \d+ MiB exceeds recycle.max_rss_mb=40" % first)
        c.wait_line(r"worker 0 \(pid \d+\) is ready", count=2)
        c.wait_line(r"worker 0 \(pid %d\) exited" % first)
        eq(c.count("unexpectedly"), 0, "recycling is not a failure")
    finally:
        finish(c, n)


@case
def bad_config_and_check_config():
    import subprocess
    from corral import CORRALD
    bad = os.path.join(TMP, "bad.json")
    with open(bad, "w") as f:
        f.write('{"exec": ["x"],\n "restart": {"limit": "ten"}}')
    r = subprocess.run([CORRALD, "--check-config", bad], capture_output=True, text=True)
    eq(r.returncode, 1, "check-config exit status")
    eq(r.stderr.strip(), 'corrald: %s: restart.limit: expected an integer >= 1, got "ten"' % bad, "message")
    with open(bad, "w") as f:
        f.write('{"exec": ["x"],\n  "workers" 2\n}')
    r = subprocess.run([CORRALD, "--check-config", bad], capture_output=True, text=True)
    eq(r.returncode, 1, "syntax error exit status")
    assert "JSON syntax error at line 2, column 13" in r.stderr, r.stderr
    good = config("good", exec=["x"], workers=3)
    r = subprocess.run([CORRALD, "--check-config", good], capture_output=True, text=True)
    eq(r.returncode, 0, "valid config")
    r = subprocess.run([CORRALD, "-c", bad], capture_output=True, text=True, timeout=10)
    eq(r.returncode, 1, "corrald refuses to start on a bad config")
    r = subprocess.run([CORRALD, "--workers", "zero"], capture_output=True, text=True)
    eq(r.returncode, 2, "usage error")
    assert "--workers" in r.stderr, r.stderr
    r = subprocess.run([CORRALD, "--log", "stderr"], capture_output=True, text=True, timeout=10)
    eq(r.returncode, 1, "no command")
    assert "no worker command" in r.stderr, r.stderr
    # cJSON caps nesting (1000): a hostile file is an error that says so, not a crash.
    with open(bad, "w") as f:
        f.write('{"exec": ["x"], "env": ' + "[" * 5000 + "]" * 5000 + "}")
    r = subprocess.run([CORRALD, "--check-config", bad], capture_output=True, text=True)
    eq(r.returncode, 1, "deeply nested config")
    assert "JSON nested too deeply" in r.stderr, r.stderr
    # A FIFO must not block (a reload would hang the master): refused at once.
    fifo = os.path.join(TMP, "fifo.json")
    os.mkfifo(fifo)
    r = subprocess.run([CORRALD, "--check-config", fifo], capture_output=True, text=True, timeout=10)
    eq((r.returncode, r.stderr.strip()), (1, "corrald: %s: not a regular file" % fifo), "fifo config")
    # Key names from the file are escaped: one plain line, no terminal codes.
    with open(bad, "w") as f:
        f.write('{"exec": ["x"], "\\n\\u001b[31mkey": 1}')
    r = subprocess.run([CORRALD, "--check-config", bad], capture_output=True, text=True)
    eq(r.stderr, "corrald: %s: \\x0a\\x1b[31mkey: unknown key\n" % bad, "escaped key name")
    # Bounded work: a huge env is refused, not checked quadratically.
    big = config("bigenv", exec=["x"], env={"V%d" % i: "x" for i in range(5000)})
    r = subprocess.run([CORRALD, "--check-config", big], capture_output=True, text=True, timeout=10)
    eq(r.returncode, 1, "huge env")
    assert "env: more than 4096 variables" in r.stderr, r.stderr
    for mode in ("round-robin", "least-conn"):
        ok_ = config("b-" + mode, exec=["x"], balance=mode)
        r = subprocess.run([CORRALD, "--check-config", ok_], capture_output=True, text=True)
        eq((r.returncode, r.stderr), (0, ""), "balance %s is valid" % mode)
    bad = config("b-bad", exec=["x"], balance="random")
    r = subprocess.run([CORRALD, "--check-config", bad], capture_output=True, text=True)
    eq(r.returncode, 1, "an unknown balance")
    assert "balance" in r.stderr, r.stderr


@case
def unprivileged_embedded_mode():
    """As a normal user: binds its own port, control socket under
    $XDG_RUNTIME_DIR/corral/NAME.sock with mode 0600."""
    uid = 65534 if os.geteuid() == 0 else os.getuid()
    port = free_port()
    d = tempfile.mkdtemp(prefix="corral-user-")
    os.chmod(d, 0o700)
    if os.geteuid() == 0:
        os.chown(d, uid, uid)
    n = NotifySocket()
    os.chmod(n.dir, 0o777)
    os.chmod(n.path, 0o777)
    c = Corrald(["--listen", "127.0.0.1:%d" % port, "-w", "2", "-n", "mine"], [HELLO], notify=n,
                env={"XDG_RUNTIME_DIR": d}, user=uid if os.geteuid() == 0 else None, own_control=False)
    try:
        n.wait("READY", "1")
        eq(http_get(port)[0], 200, "served as an unprivileged user")
        for p in c.workers():
            eq(os.stat("/proc/%d" % p).st_uid, uid, "worker uid")
        sock = os.path.join(d, "corral", "mine.sock")
        st = os.stat(sock)
        eq(oct(st.st_mode & 0o777), oct(0o600), "control socket mode")
        eq(st.st_uid, uid, "control socket owner")
    finally:
        finish(c, n)
    assert not os.path.exists(os.path.join(d, "corral", "mine.sock")), "control socket removed at exit"
    shutil.rmtree(d, ignore_errors=True)


@case
def valgrind_start_serve_stop_has_no_leaks():
    import subprocess
    if os.environ.get("CORRAL_SANITIZED") == "1":
        raise Skip("sanitizer build: valgrind does not run ASan binaries")
    if not shutil.which("valgrind"):
        raise Skip("valgrind is not installed")
    from corral import CORRALD
    port = free_port()
    log = os.path.join(TMP, "valgrind.log")
    n = NotifySocket()
    e = dict(os.environ, NOTIFY_SOCKET=n.path)
    p = subprocess.Popen(["valgrind", "--leak-check=full", "--errors-for-leak-kinds=definite",
                          "--error-exitcode=9", "--log-file=" + log, CORRALD, "--log", "stderr",
                          "--listen", "127.0.0.1:%d" % port, "-w", "2", "--", HELLO],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=e)
    try:
        n.wait("READY", "1", timeout=60)
        for _ in range(20):
            eq(http_get(port)[0], 200, "served under valgrind")
        p.send_signal(signal.SIGTERM)
        eq(p.wait(60), 0, "exit status under valgrind (9 = errors or definite leaks)")
        text = open(log).read()
        assert "ERROR SUMMARY: 0 errors" in text, text[-2000:]
        assert "definitely lost: 0" in text or "no leaks are possible" in text, text[-2000:]
    finally:
        if p.poll() is None:
            p.kill()
        n.close()


def teardown(_):
    shutil.rmtree(TMP, ignore_errors=True)


main(teardown=teardown)
