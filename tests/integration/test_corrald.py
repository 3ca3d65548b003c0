#!/usr/bin/python3
"""corrald core, outside systemd: embedded mode and systemd-socket-activate,
with a test-owned NOTIFY_SOCKET standing in for systemd's. The master as a
process: its command line and exit statuses, what a worker inherits (the
environment, fds, the fd limit), reaping, stopping, signals, give-up,
watchdogs, recycling, config checks."""
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tap import case, diag, main, wait_for, eq, Skip  # noqa: E402
from corral import (Corrald, NotifySocket, CORRALD, HELLO, TWORKER, exec_done, finish, free_port,  # noqa: E402
                    http_get, listening, pid_alive, proc_environ, slot, status, wait_status)

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


@case
def hello_embedded_ready_status_stop_order():
    port = free_port()
    c, n = run(["--listen", "127.0.0.1:%d" % port, "-w", "2"], [HELLO])
    try:
        _, f = n.wait("READY", "1")
        eq(f.get("STATUS"), "2/2 workers ready, generation 1", "STATUS sent with READY=1")
        code, headers, body = http_get(port)
        eq(code, 200, "HTTP status")
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
            eq(env["NOTIFY_SOCKET"], c.control[:-len(".sock")] + ".notify", "NOTIFY_SOCKET: a file beside the control socket")
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
def socket_activated_names_and_first_connection():
    p1, p2 = free_port(), free_port()
    out = os.path.join(TMP, "act")
    n = NotifySocket()
    c = Corrald(["-w", "1"], TWORKER + ["dump", out], notify=n,
                activate={"listen": ["127.0.0.1:%d" % p1, "127.0.0.1:%d" % p2], "fdnames": ["web", "admin"]})
    try:
        # systemd-socket-activate starts corrald on the first connection.
        wait_for(lambda: listening(p1) and listening(p2), 10, "socket-activate listening")
        s = socket.create_connection(("127.0.0.1", p1), timeout=5)
        n.wait("READY", "1")
        eq([(x["name"], x["address"]) for x in status(c)["listeners"]],
           [("web", "127.0.0.1:%d" % p1), ("admin", "127.0.0.1:%d" % p2)], "listeners and their names")
        # Where a socket came from is only in the log.
        c.assert_logged(r"127\.0\.0\.1:%d \(web\), from systemd" % p1)
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
        wait_for(lambda: listening(port), 10, "socket-activate listening")
        code, _, body = http_get(port)      # this connection starts corrald
        eq(code, 200, "first request")
        n.wait("READY", "1")
    finally:
        finish(c, n)


@case
def inherited_socket_that_is_not_listening_is_refused():
    n = NotifySocket()
    port = free_port()
    c = Corrald(["-w", "1"], [HELLO], notify=n, activate={"listen": ["127.0.0.1:%d" % port], "datagram": True})
    try:
        wait_for(lambda: listening(port, udp=True), 10, "socket-activate listening")
        # A datagram wakes systemd-socket-activate, which execs corrald.
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"x", ("127.0.0.1", port))
        s.close()
        eq(c.wait_exit(20), 1, "corrald exit status")
        # The refusal and its reason are the point: they are logged.
        c.assert_logged(r"inherited fd 3 \(unknown\) is not a listening socket; use ListenStream= with Accept=no")
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
        wait_status(c, lambda s: s["state"] == "reloading" and s["incoming"], 10, "the first reload's new worker")
        r = subprocess.run([CORRALCTL, "-s", c.control, "reload"], capture_output=True, text=True, timeout=20)
        eq(r.returncode, 1, "second reload exit status")
        assert "another reload or restart is in progress" in r.stderr, r.stderr
        out, err = first.communicate(timeout=30)
        eq(first.returncode, 0, "first reload exit status (%s)" % err)
        s = status(c)
        eq((s["state"], s["generation"], slot(s, 0)["generation"], s["incoming"]), ("running", 2, 2, []),
           "state, generation after the first reload")
    finally:
        finish(c, n)


@case
def a_script_without_its_interpreter_is_refused_with_a_hint():
    # issue 21.4: ["./app.js"] for an executable file without a #! line
    # was run by /bin/sh (execvp's fallback) and crash-looped on a shell
    # syntax error. Refused at start and at reload, saying what to write.
    import subprocess
    from corral import CORRALCTL, CORRALD
    app = os.path.join(TMP, "app.js")
    with open(app, "w") as f:
        f.write("console.log('hello')\n")
    os.chmod(app, 0o755)
    hint = 'app.js has no #! line and is no binary, so it would be run by /bin/sh; add a #! line, ' \
           'or name its interpreter: ["node", "%s"]' % app
    r = subprocess.run([CORRALD, "-w", "1", "--control", os.path.join(TMP, "nojs.sock"), "--", app],
                       capture_output=True, text=True, timeout=20)
    eq(r.returncode, 1, "start refused\n" + r.stderr)
    assert hint in r.stderr, r.stderr
    path = config("nojs", workers=1, exec=TWORKER + ["no-watchdog"])
    c, n = run(["-c", path])
    try:
        n.wait("READY", "1")
        before = status(c)
        config("nojs", workers=1, exec=[app])
        r = subprocess.run([CORRALCTL, "-s", c.control, "reload"], capture_output=True, text=True, timeout=20)
        eq(r.returncode, 1, "reload refused\n" + r.stderr)
        assert hint in r.stderr, r.stderr
        after = status(c)
        eq((after["generation"], slot(after, 0)["pid"]), (before["generation"], slot(before, 0)["pid"]),
           "nothing changed")
        # With a #! line it is a program like any other.
        with open(app, "w") as f:
            f.write("#!/bin/sh\nexec %s\n" % " ".join(TWORKER + ["no-watchdog"]))
        r = subprocess.run([CORRALCTL, "-s", c.control, "reload"], capture_output=True, text=True, timeout=30)
        eq(r.returncode, 0, "reload with a #! line\n" + r.stderr)
    finally:
        finish(c, n)


def zombies_of(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == pid:
                out.append(int(d))
    return out


@case
def subreaper_and_pid_1_reap_the_orphans_of_workers():
    # SPEC §2 --subreaper (implied as PID 1, a container's init): a worker
    # whose child leaves a grandchild behind (a daemonising helper) must
    # not fill the process table with zombies of corrald.
    import subprocess
    from corral import CORRALCTL, CORRALD
    leave_orphan = ["/bin/sh", "-c", '(sleep 0.2 &); exec "$0" "$@"'] + TWORKER + ["no-watchdog"]
    c, n = run(["--subreaper", "-w", "2"], leave_orphan)
    try:
        n.wait("READY", "1")
        s = wait_status(c, lambda s: s["orphans_reaped"] >= 2, 10, "the two orphans reaped")
        eq(s["ready"], 2, "workers unaffected")
        eq(zombies_of(c.pid), [], "no zombie left with corrald")
    finally:
        finish(c, n)
    # As PID 1 of a PID namespace, without the flag.
    if os.geteuid() != 0:
        return
    # As PID 1, each worker's child double-forks 1,000 short-lived daemons.
    many = ["/bin/sh", "-c", 'i=0; while [ $i -lt 1000 ]; do (sleep 0.05 &); i=$((i+1)); done; exec "$0" "$@"'] \
        + TWORKER + ["no-watchdog"]
    ctl = os.path.join(TMP, "pid1.sock")
    p = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", CORRALD, "-w", "2", "--control", ctl,
                          "--log", "stderr", "--"] + many,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def st():
            r = subprocess.run([CORRALCTL, "-s", ctl, "--json", "status"], capture_output=True, text=True, timeout=10)
            return json.loads(r.stdout) if r.returncode == 0 else None
        s = wait_for(lambda: (lambda s: s if s and s["ready"] == 2 and s["orphans_reaped"] >= 2000 else None)(st()),
                     60, "PID 1 reaps the 2,000 orphans")
        eq(s["pid"], 1, "corrald is PID 1 in its namespace")
        inner = [int(x) for x in open("/proc/%d/task/%d/children" % (p.pid, p.pid)).read().split()]
        eq([z for pid in inner for z in zombies_of(pid)], [], "no zombie left with corrald")
    finally:
        # SIGTERM to the namespace's init (unshare's child): a graceful
        # stop, and its exit status is unshare's.
        try:
            inner = [int(x) for x in open("/proc/%d/task/%d/children" % (p.pid, p.pid)).read().split()]
        except OSError:
            inner = []
        for pid in inner:
            os.kill(pid, signal.SIGTERM)
        eq(p.wait(30), 0, "exit status after SIGTERM\n" + p.stderr.read()[-2000:])
    # A give-up as PID 1: the exit status says so.
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", CORRALD, "-w", "1", "--control",
                        os.path.join(TMP, "pid1-giveup.sock"), "--log", "stderr", "-c",
                        config("pid1giveup", restart={"limit": 1, "backoff_ms": [10, 10]}), "--", "/bin/false"],
                       capture_output=True, text=True, timeout=60)
    eq(r.returncode, 1, "a give-up as PID 1 exits 1\n" + r.stderr[-1500:])


@case
def a_runtime_scale_holds_across_reload_and_upgrade_until_the_file_changes():
    # issue 21.1, SPEC §4: scale 3, then a reload went back to the file's 2.
    import subprocess
    from corral import CORRALCTL
    path = config("scaled", workers=2, exec=TWORKER + ["no-watchdog"])
    c, n = run(["-c", path])
    try:
        n.wait("READY", "1")
        def ctl(*args):
            r = subprocess.run([CORRALCTL, "-s", c.control] + list(args), capture_output=True, text=True, timeout=30)
            eq(r.returncode, 0, "corralctl %s: %s" % (" ".join(args), r.stderr))
            return r.stdout
        ctl("scale", "3")
        s = wait_status(c, lambda s: s["ready"] == 3, 10, "3 ready")
        eq(s.get("workers_config"), 2, "the file's count beside it")
        assert "3/3 ready (scaled; config: 2)" in ctl("status"), ctl("status")
        ctl("reload")
        s = wait_status(c, lambda s: s["state"] == "running" and s["generation"] == 2, 20, "the reload done")
        eq((s["workers"], s.get("workers_config")), (3, 2), "the scale holds across a reload")
        ctl("upgrade")
        eq(status(c)["workers"], 3, "and across an upgrade")
        # The file's workers changes: it wins.
        config("scaled", workers=4, exec=TWORKER + ["no-watchdog"])
        ctl("reload")
        s = wait_status(c, lambda s: s["state"] == "running" and s["ready"] == 4, 20, "4 ready")
        eq((s["workers"], "workers_config" in s), (4, False), "the file's new count, no scale held")
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
        slot_id = proc_environ(victim)["CORRAL_WORKER_ID"]
        mark = n.mark()
        os.kill(victim, signal.SIGKILL)
        # A ready worker has exec'd, so its environ is the worker's. The
        # victim died unexpectedly: the slot counts one restart.
        s = wait_status(c, lambda s: not pid_alive(victim) and s["ready"] == 2 and
                        victim not in [x["pid"] for x in s["slots"]], 10, "the victim's replacement to be ready")
        new = [x for x in s["slots"] if x["pid"] not in pids]
        eq([(x["id"], x["restarts"]) for x in new], [(int(slot_id), 1)],
           "replacement takes the same slot, one restart")
        others = [x for x in s["slots"] if x["id"] != int(slot_id)]
        eq([(x["pid"], x["restarts"]) for x in others], [(p, 0) for p in pids if p != victim], "other slot untouched")
        eq(proc_environ(new[0]["pid"])["CORRAL_WORKER_ID"], slot_id, "replacement's CORRAL_WORKER_ID")
        c.assert_logged(r"\(pid %d\) was killed by SIGKILL unexpectedly" % victim)
        # corrald tells systemd again once the slot is refilled.
        n.wait("STATUS", "2/2 workers ready, generation 1", after=mark)
        eq(http_get(port)[0], 200, "still serving")
    finally:
        finish(c, n)


@case
def stopping_announced_spawns_replacement_before_exit():
    # It leaves after serving 300 ms, more than restart.window_ms /
    # restart.limit = 100 ms: a healthy "suicide", replaced at once and not
    # counted (SPEC §4; sooner would count as a failure, issue 11.2).
    path = config("leave", workers=1, exec=TWORKER + ["leave"], restart={"window_ms": 1000, "limit": 10})
    c, n = run(["-c", path], env={"LEAVE_MS": "300", "LEAVE_GRACE_MS": "1500"})
    try:
        n.wait("READY", "1")
        # After STOPPING=1 the worker leaves its slot (LEAVE_GRACE_MS=1500
        # before it exits) and a replacement takes it.
        s = wait_status(c, lambda s: s["leaving"], 10, "the worker to announce STOPPING=1")
        eq([x["id"] for x in s["leaving"]], [0], "slot 0's worker is leaving")
        old = s["leaving"][0]["pid"]
        s = wait_status(c, lambda s: slot(s, 0)["state"] == "ready" and slot(s, 0)["pid"] != old, 10,
                        "the replacement to be ready")
        assert pid_alive(old), "replacement was ready while the leaving worker still ran"
        eq([x["pid"] for x in s["leaving"]], [old], "the old worker is still leaving")
        s = wait_status(c, lambda s: not s["leaving"] and not pid_alive(old), 10, "the old worker to exit")
        eq(slot(s, 0)["restarts"], 0, "a STOPPING=1 exit with status 0 is not a failure")
        c.assert_logged(r"\(pid %d\) exited with status 0$" % old)
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
        c.drain()
        c.assert_logged(r"giving up: more than 3 failures within 60000 ms")
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
        s = wait_status(c, lambda s: s["state"] == "gave-up", 20, "give-up")
        eq(s["ready"], 0, "no worker ready")
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
        eq(c.wait_exit(20), 1, "gave up after repeated ready timeouts")
        c.drain()
        # What killed the workers is only in the log: the timeout, then SIGKILL, for the same pid.
        m = c.assert_logged(r"worker 0 \(pid (\d+)\) did not send READY=1 within 300 ms")
        c.assert_logged(r"worker 0 \(pid %s\) was killed by SIGKILL after it did not become ready" % m.group(1))
        c.assert_logged("giving up")
        # What to do about it, said once per instance (issue 21.6).
        eq(c.count(r"a worker says it is ready by sending READY=1 .*NOTIFY_SOCKET.*ready.mode \"spawn\""), 1,
           "the hint, once, after two timeouts")
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
        s = wait_status(c, lambda s: slot(s, 0)["state"] == "ready" and slot(s, 0)["pid"] != pid, 10,
                        "a replacement to be ready")
        assert not pid_alive(pid), "the silent worker is gone"
        eq(slot(s, 0)["restarts"], 1, "a watchdog kill is a failure")
        # Why it was killed, and with what, is only in the log.
        c.assert_logged(r"worker 0 \(pid %d\) sent no WATCHDOG=1 within watchdog_ms; sending SIGABRT" % pid)
        c.assert_logged(r"worker 0 \(pid %d\) was killed by SIGABRT" % pid)
    finally:
        finish(c, n)


@case
def worker_that_pings_watchdog_survives():
    path = config("wdok", workers=1, exec=TWORKER + ["watchdog"], watchdog_ms=200)
    c, n = run(["-c", path])
    try:
        n.wait("READY", "1")
        pid = c.wait_workers(1)[0]
        # The measured thing: five watchdog intervals in which a worker that
        # pings must not be touched.
        time.sleep(1.0)
        eq(c.workers(), [pid], "same worker after 5 watchdog intervals")
        s = status(c)
        eq((slot(s, 0)["pid"], slot(s, 0)["state"], slot(s, 0)["restarts"]), (pid, "ready", 0), "slot 0 untouched")
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
        # Until it has exec'd, the child's environ is corrald's (whose
        # NOTIFY_SOCKET is ours); CORRAL_WORKER_ID appears with the exec.
        env = wait_for(lambda: (lambda e: e if "CORRAL_WORKER_ID" in e else None)(proc_environ(pid)), 10,
                       "the worker to exec")
        sock = env["NOTIFY_SOCKET"]
        assert sock != n.path, "the worker has its own notify socket"
        send_dgram(sock, b"READY=1")                       # we are not a worker
        r, w = os.pipe()
        for bad in (b"", b"READY=1\0junk", b"x" * 5000, b"no assignment here"):
            send_dgram(sock, bad)
        send_dgram(sock, b"READY=1", fds=[w])               # fds must be closed by corrald
        os.close(w)
        # The pipe's read end sees EOF only once corrald closed its copy.
        wait_for(lambda: os.read(r, 1) == b"", 10, "corrald to close the passed fd")
        os.close(r)
        # corrald has read every datagram we sent, in order. That it dropped
        # them, and why, is only in the log (CORRAL_DEBUG).
        c.assert_logged(r"ignored a message from pid %d, which is not a current worker" % os.getpid())
        c.assert_logged(r"dropped a datagram")
        s = status(c)
        eq((s["ready"], slot(s, 0)["state"], slot(s, 0)["pid"]), (0, "starting", pid),
           "no stranger made the worker ready")
        eq([f for _, f, _ in n.all() if "READY" in f], [], "no READY=1 to systemd")
    finally:
        finish(c, n)


@case
def python3_systemd_worker():
    c, n = run(["-w", "1"], TWORKER + ["pysystemd"])
    try:
        n.wait("READY", "1")
        s = wait_status(c, lambda s: slot(s, 0)["status"] == "python3-systemd says hi", 10,
                        "the worker's STATUS= to reach its slot")
        eq(slot(s, 0)["state"], "ready", "worker ready through python3-systemd")
    finally:
        finish(c, n)


@case
def systemd_notify_from_shell_worker():
    if os.geteuid() != 0:
        raise Skip("systemd-notify speaks for its parent only with privileges")
    c, n = run(["-w", "2"], ["/bin/sh", "-c", "systemd-notify --ready && exec sleep 3600"])
    try:
        n.wait("READY", "1", timeout=20)
        s = status(c)
        eq((s["ready"], [x["state"] for x in s["slots"]]), (2, ["ready", "ready"]),
           "both shell workers ready through systemd-notify")
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
        c.wait_workers(2)
        code, _, body = wait_for(lambda: _try_get(port), 20, "node answering")
        eq(code, 200, "node status")
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
        mark = n.mark()
        c.signal(signal.SIGTTIN)
        n.wait("STATUS", "2/2 workers ready, generation 1", after=mark)
        c.wait_workers(2)
        mark = n.mark()
        c.signal(signal.SIGTTOU)
        n.wait("STATUS", "1/1 workers ready, generation 1", after=mark)
        c.wait_workers(1)
        s = status(c)
        eq((s["workers"], s["ready"], [x["id"] for x in s["slots"]]), (1, 1, [0]), "scaled from 2 to 1 worker")
    finally:
        finish(c, n)


@case
def recycle_max_rss_replaces_a_bloated_worker():
    path = config("hog", workers=1, exec=TWORKER + ["hog", "60"], recycle={"max_rss_mb": 40},
                  restart={"limit": 100})
    c, n = run(["-c", path])
    try:
        # RSS is checked every second: the first worker is still in its slot.
        n.wait("READY", "1")
        first = slot(status(c), 0)["pid"]
        s = wait_status(c, lambda s: slot(s, 0)["state"] == "ready" and slot(s, 0)["pid"] != first and
                        not pid_alive(first), 15, "the recycled worker to be replaced and gone")
        eq(slot(s, 0)["restarts"], 0, "recycling is not a failure")
        # Why it was replaced is only in the log.
        c.assert_logged(r"recycling worker 0 \(pid %d\): RSS \d+ MiB exceeds recycle.max_rss_mb=40" % first)
        c.assert_logged(r"worker 0 \(pid %d\) exited" % first)
        eq(c.count("unexpectedly"), 0, "recycling is not a failure")
    finally:
        finish(c, n)


@case
def recycle_max_age_replaces_every_slot_one_at_a_time():
    """recycle.max_age_ms: each slot's worker is replaced once it is that
    old (plus jitter), gracefully, never two replacements starting at
    once, and no request fails."""
    port, n_slots = free_port(), 3
    life = os.path.join(TMP, "age.life")
    path = config("age", workers=n_slots, listen=["127.0.0.1:%d" % port], exec=TWORKER + ["serve"],
                  recycle={"max_age_ms": 1500}, restart={"limit": 100})
    c, n = run(["-c", path], env={"CORRAL_TEST_LIFELOG": life})
    stop, counts, errors = threading.Event(), {"ok": 0, "bad": 0}, []

    def load():
        while not stop.is_set():
            try:
                code = http_get(port, timeout=10)[0]
                counts["ok" if code == 200 else "bad"] += 1
            except OSError as e:
                counts["bad"] += 1
                errors.append(repr(e))
    t = threading.Thread(target=load, daemon=True)
    try:
        n.wait("READY", "1")
        first = {x["id"]: x["pid"] for x in status(c)["slots"]}
        t.start()
        seen = {i: {p} for i, p in first.items()}
        most_incoming = [0]

        def replaced_twice(s):
            most_incoming[0] = max(most_incoming[0], len(s.get("incoming") or []))
            for x in s["slots"]:
                if x["pid"] is not None and x["state"] == "ready":
                    seen[x["id"]].add(x["pid"])
            return all(len(p) >= 3 for p in seen.values())
        s = wait_status(c, replaced_twice, 40, "every slot's worker replaced twice")
        stop.set()
        t.join(30)
        assert most_incoming[0] <= 1, "at most one replacement starting at a time, saw %d" % most_incoming[0]
        eq([x["restarts"] for x in s["slots"]], [0] * n_slots, "recycling is not a failure")
        eq(s["generation"], 1, "no reload happened")
        eq(counts["bad"], 0, "failed requests (%d served): %s" % (counts["ok"], errors[:5]))
        assert counts["ok"] > 0, "requests were served"
        # The workers' own account: a worker's start up to its READY=1 never
        # overlaps another's, once the first generation is up.
        starting, initial, replacements = set(), set(first.values()), 0
        with open(life) as f:
            for line in f:
                what, pid, _ = line.split()
                if what == "spawn" and int(pid) not in initial:
                    assert not starting, "pid %s started while %s was starting" % (pid, sorted(starting))
                    starting.add(pid)
                    replacements += 1
                elif what == "ready":
                    starting.discard(pid)
        assert replacements >= 2 * n_slots, "the workers saw %d replacements" % replacements
        diag("%d requests served while %d workers were replaced" % (counts["ok"], replacements))
        assert not c.count("unexpectedly"), "no failure logged\n" + c.output()
    finally:
        stop.set()
        finish(c, n)


@case
def recycle_turned_on_by_a_reload():
    """The recycle timer was armed at start only: a reload that set a
    recycle key did nothing until corrald restarted."""
    keys = dict(workers=1, exec=[HELLO], listen=["127.0.0.1:%d" % free_port()])
    path = config("agereload", **keys)
    c, n = run(["-c", path])
    try:
        n.wait("READY", "1")
        config("agereload", recycle={"max_age_ms": 1000}, **keys)
        c.signal(signal.SIGHUP)
        s = wait_status(c, lambda s: s["generation"] == 2 and slot(s, 0)["state"] == "ready" and
                        not s.get("incoming") and not s.get("leaving"), 20, "the reload done")
        reloaded = slot(s, 0)["pid"]
        s = wait_status(c, lambda s: slot(s, 0)["state"] == "ready" and slot(s, 0)["pid"] != reloaded, 20,
                        "the reloaded worker recycled by age")
        eq((s["generation"], slot(s, 0)["restarts"]), (2, 0), "a recycle, not a reload or a failure")
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
