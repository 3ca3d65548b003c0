#!/usr/bin/python3
"""Rollouts racing the rest of the lifecycle: the plans of rollout.c
(reload, restart, recycle; docs/internals/lifecycle.md, "Generations and
plans") meeting scale, crashing workers, STOPPING=1, give-up and a release
that cannot be executed, and what a plan reports meanwhile. Two neighbours
share the harness: a worker that leaves before it is ready (backoff, no
tight loop) and a scale beyond the fd limit (refused up front). Each case
drives the real binary with small inline Python workers; run it against
the ASan+UBSan build to see the memory errors
(CORRALD=build-sanitize/src/corrald/corrald)."""
import json
import re
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tap import case, main, wait_for, eq  # noqa: E402
from corral import (Corrald, Ctl, NotifySocket, PY, assert_clean, finish, pid_alive, slot, status,  # noqa: E402
                    try_status, wait_status)

TMP = tempfile.mkdtemp(prefix="corral-rollout-")

PRELUDE = r'''
import os, socket, sys, time, signal
def notify(msg):
    path = os.environ["NOTIFY_SOCKET"]
    if path.startswith("@"):
        path = "\0" + path[1:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(msg.encode(), path)
    s.close()
GEN = int(os.environ["CORRAL_GENERATION"])
ID = int(os.environ["CORRAL_WORKER_ID"])
DIR = os.environ["CORRAL_TEST_DIR"]
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
def forever():
    while True:
        time.sleep(3600)
def nth(tag):
    """How many workers of this slot ran this code before (0 for the first)."""
    m = os.path.join(DIR, "%s.%d" % (tag, ID))
    k = int(open(m).read()) if os.path.exists(m) else 0
    open(m, "w").write(str(k + 1))
    return k
'''


def spawned(tag, slot_id):
    """How many workers of slot_id ran nth(tag) so far."""
    try:
        with open(os.path.join(TMP, "%s.%d" % (tag, slot_id))) as f:
            return int(f.read() or 0)
    except FileNotFoundError:
        return 0


def worker(name, code):
    path = os.path.join(TMP, name + ".py")
    with open(path, "w") as f:
        f.write(PRELUDE + code)
    return [PY, path]


def config(name, **keys):
    path = os.path.join(TMP, name + ".json")
    with open(path, "w") as f:
        json.dump(keys, f)
    return path


def run(args):
    n = NotifySocket()
    c = Corrald(args, notify=n, env={"CORRAL_TEST_DIR": TMP})
    return c, n


@case
def replacement_that_announces_stopping_does_not_hang_the_reload():
    # The new generation sends STOPPING=1 before READY=1 and exits 0. The
    # rollout must end (fail, or go on with a replacement), not wait forever
    # with in_flight stuck at 1 and every later reload refused.
    w = worker("stopping_incoming", r'''
if GEN >= 2:
    time.sleep(0.3); notify("STOPPING=1"); time.sleep(0.3); sys.exit(0)
notify("READY=1"); forever()
''')
    c, n = run(["-c", config("stopping_incoming", workers=1, exec=w)])
    try:
        n.wait("READY", "1")
        k = Ctl(c.control)
        k.req({"command": "reload"}, timeout=15)
        k.close()
        wait_status(c, lambda s: s["state"] != "reloading", 10, "the rollout to end")
    finally:
        finish(c, n)


@case
def stopping_before_ready_respawns_through_backoff():
    # A worker that sends STOPPING=1 at once and exits 0 must not be
    # replaced in a tight loop (it was respawned 124 times in 3 s): leaving
    # before it served restart.window_ms / restart.limit counts as a
    # failure (issue 11.2) and goes through the slot's backoff. Its exit 0
    # itself is expected, not a second failure.
    w = worker("leave_at_once", r'''
nth("leave_at_once")
notify("STOPPING=1"); sys.exit(0)
''')
    c, n = run(["-c", config("leave_at_once", workers=1, exec=w, restart={"backoff_ms": [200, 1000]})])
    try:
        # Each worker counts itself in leave_at_once.0 when it starts.
        wait_for(lambda: spawned("leave_at_once", 0) >= 2, 10, "a first respawn")
        time.sleep(2.0)     # the measured thing: a bounded window in which to count respawns
        spawns = spawned("leave_at_once", 0)
        assert spawns <= 6, "respawned %d times in about 2 s" % spawns
        eq(c.count("unexpectedly"), 0, "the exit 0 after STOPPING=1 is expected")
        assert status(c)["slots"][0]["restarts"] >= 2, "each early leave counts as a restart"
    finally:
        finish(c, n)


@case
def sigttou_while_the_last_slot_is_being_replaced():
    # Scaling down would free the slot whose `incoming` worker is still
    # starting (its READY=1 then read the freed Slot: heap-use-after-free).
    # Scaling is refused while a rollout runs, as the control socket's
    # scale already was; the rollout completes with both workers.
    w = worker("ttou_rollout", r'''
if GEN >= 2: time.sleep(1.5)
notify("READY=1"); forever()
''')
    c, n = run(["-c", config("ttou_rollout", workers=2, exec=w, reload={"max_surge": 2})])
    try:
        n.wait("READY", "1")
        c.signal(signal.SIGHUP)
        # Both new workers are starting (max_surge 2): slot 1 is being replaced.
        wait_status(c, lambda s: s["state"] == "reloading" and sorted(w["id"] for w in s["incoming"]) == [0, 1],
                    10, "both replacements starting")
        c.signal(signal.SIGTTOU)
        # Refusing it changes nothing that status shows: the log line is the
        # only sign that corrald has handled the signal.
        c.wait_line(r"\bSIGTTOU ignored\b", timeout=10)
        s = wait_status(c, lambda s: s["state"] == "running", 15, "the rollout to end")
        assert_clean(c)
        eq((s["workers"], s["ready"], s["generation"]), (2, 2, 2), "workers, ready, generation")
    finally:
        finish(c, n)


@case
def scale_down_while_a_recycle_replacement_starts():
    # recycle.max_rss_mb starts a replacement (slot->incoming) outside any
    # rollout, so `scale` is not refused; the removed slot is freed under it.
    w = worker("scale_recycle", r'''
if nth("scale_recycle") > 0: time.sleep(2)
notify("READY=1"); forever()
''')
    c, n = run(["-c", config("scale_recycle", workers=2, exec=w, recycle={"max_rss_mb": 1})])
    try:
        n.wait("READY", "1")
        # Slot 0 is recycled first, then slot 1: wait for slot 1's replacement.
        s = wait_status(c, lambda s: any(w["id"] == 1 for w in s["incoming"]), 15, "slot 1's recycle replacement")
        orphan = next(w["pid"] for w in s["incoming"] if w["id"] == 1)
        k = Ctl(c.control)
        eq(k.req({"command": "scale", "workers": 1})["ok"], True, "scale accepted")
        k.close()
        # The orphaned replacement would send READY=1 after 2 s: wait until
        # it is gone, whatever it managed to say before.
        wait_for(lambda: c.proc.poll() is not None or not pid_alive(orphan), 10, "the orphaned replacement to end")
        assert c.proc.poll() is None, "corrald died:\n" + c.output()
        wait_status(c, lambda s: orphan not in [w["pid"] for w in s["leaving"] + s["incoming"]], 10,
                    "corrald to have reaped the orphan")
        assert_clean(c)
        eq(status(c)["workers"], 1, "worker count")
    finally:
        finish(c, n)


@case
def giveup_while_a_reload_spawns_new_slots():
    # The reload adds slots whose exec cannot even start; the spawn failures
    # reach give-up (exit) inside rollout_reload(), which then keeps using
    # the Rollout that manager_stop() -> rollout_abort() just freed.
    w = worker("giveup_in_reload", r'''
notify("READY=1"); forever()
''')
    path = config("giveup_in_reload", workers=1, exec=w)
    c, n = run(["-c", path])
    try:
        n.wait("READY", "1")
        config("giveup_in_reload", workers=3, exec=["/nonexistent/corral-test-prog"], restart={"limit": 1})
        k = Ctl(c.control)
        r = k.req({"command": "reload"}, timeout=15)
        k.close()
        eq(r["ok"], False, "a release that cannot start fails the reload")
        # Whatever follows the failed reload (give-up and exit, or staying
        # up) has run once corrald exited or answered one more request.
        wait_for(lambda: c.proc.poll() is not None or try_status(c) is not None, 10,
                 "corrald to exit or answer")
        if c.proc.poll() is not None:
            c.drain()
        assert_clean(c)
    finally:
        c.kill()
        n.close()


@case
def broken_release_that_adds_workers_does_not_take_the_instance_down():
    # SPEC §4 / lifecycle.md: a failed reload keeps the old workers serving;
    # a broken release must not count towards giving up. Here the new slots
    # of the broken release crash-loop and give-up (exit 1) stops everything.
    good = worker("broken_grow_good", r'''
notify("READY=1"); forever()
''')
    bad = worker("broken_grow_bad", r'''
if ID == 0: time.sleep(3)
sys.exit(1)
''')
    path = config("broken_grow", workers=1, exec=good)
    c, n = run(["-c", path])
    try:
        n.wait("READY", "1")
        old = status(c)["slots"][0]["pid"]
        config("broken_grow", workers=3, exec=bad, restart={"limit": 2})
        k = Ctl(c.control)
        r = k.req({"command": "reload"}, timeout=20)
        k.close()
        eq(r["ok"], False, "reload result")
        assert "aborted" not in r["error"], "reload was aborted by a give-up: %r\n%s" % (r, c.output())
        # The broken release's workers are all gone (wait_status fails if
        # corrald exits meanwhile).
        s = wait_status(c, lambda s: not s["incoming"] and not s["leaving"], 10, "the new workers to be gone")
        eq((s["state"], s["workers"], [x["pid"] for x in s["slots"]]), ("running", 1, [old]),
           "state, workers, the old worker in its slot")
        assert c.proc.poll() is None, "corrald exited:\n" + c.output()
        assert pid_alive(old), "the old worker was stopped"
    finally:
        finish(c, n)


@case
def recycle_replacement_failing_after_its_worker_crashed_refills_the_slot():
    # Slot 0's worker crashes while its recycle replacement is starting (the
    # backoff respawn yields to the replacement); then the replacement dies
    # too. Nothing respawns the slot: it stays "backoff" with no timer.
    w = worker("recycle_empty", r'''
k = nth("recycle_empty")
if k == 0:
    notify("READY=1"); time.sleep(1.6); sys.exit(1)
if k == 1:
    time.sleep(2.5); sys.exit(1)
notify("READY=1"); forever()
''')
    c, n = run(["-c", config("recycle_empty", workers=1, exec=w, recycle={"max_rss_mb": 1})])
    try:
        n.wait("READY", "1")
        first = slot(status(c), 0)["pid"]
        s = wait_status(c, lambda s: any(w["id"] == 0 for w in s["incoming"]), 10, "slot 0's recycle replacement")
        repl = next(w["pid"] for w in s["incoming"] if w["id"] == 0)
        # The worker crashes (after 1.6 s), then its replacement (2.5 s).
        wait_for(lambda: not pid_alive(first) and not pid_alive(repl), 10, "both workers to exit")
        wait_status(c, lambda s: slot(s, 0)["state"] == "ready" and slot(s, 0)["pid"] not in (first, repl), 10,
                    "slot 0 to be refilled")
    finally:
        finish(c, n)


@case
def failing_recycle_replacement_is_not_blamed_on_a_reload():
    # A recycle replacement of the old generation, started before the
    # reload, is taken for one of the rollout's own: its failure fails the
    # reload (and its READY=1 would decrement the rollout's in_flight).
    w = worker("recycle_vs_reload", r'''
if GEN >= 2:
    time.sleep(4); notify("READY=1"); forever()
if nth("recycle_vs_reload") == 1:
    time.sleep(2.5); sys.exit(1)
notify("READY=1"); forever()
''')
    c, n = run(["-c", config("recycle_vs_reload", workers=2, exec=w, recycle={"max_rss_mb": 1})])
    try:
        n.wait("READY", "1")
        # Recycles go one slot at a time, slot 0 first; the reload preempts it.
        wait_status(c, lambda s: any(w["id"] == 0 for w in s["incoming"]), 10, "slot 0's recycle replacement")
        k = Ctl(c.control)
        r = k.req({"command": "reload"}, timeout=30)
        k.close()
        eq(r["ok"], True, "reload result (%r)" % r)
    finally:
        finish(c, n)


@case
def scale_past_the_fd_limit_is_refused_not_attempted():
    # Issue 11.4: `scale 1500` under LimitNOFILE=1024 was accepted, spawns
    # failed with EMFILE, counted as failures and gave up.
    w = worker("fdlimit", r'''
notify("READY=1"); forever()
''')
    c = Corrald(["-w", "2", "--name", "fdlimit"], exec_=w, env={"CORRAL_TEST_DIR": TMP})
    try:
        wait_status(c, lambda s: s["ready"] == 2, 20, "2 workers ready")
        # Lower the master's limit as LimitNOFILE=256 would.
        subprocess.run(["prlimit", "--pid", str(c.pid), "--nofile=256:256"], check=True)
        k = Ctl(c.control)
        r = k.req({"command": "scale", "workers": 1500})
        eq(r["ok"], False, "scale 1500 refused")
        assert "open-file limit is 256" in r["error"], r["error"]
        r = k.req({"command": "scale", "workers": 20})
        k.close()
        eq(r["ok"], True, "a scale that fits")
        st = wait_status(c, lambda s: s["ready"] == 20, 30, "20 workers ready")
        eq((st["state"], st["workers"]), ("running", 20), "no failure, no give-up")
        assert c.count(r"cannot start") == 0, c.output()
    finally:
        rc = c.stop()
        c.kill()
        eq(rc, 0, "corrald exit status")


def progress_of(k, req):
    """Send req; return (its progress messages, its result)."""
    k.send(req)
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        while b"\n" in k.buf:
            line, k.buf = k.buf.split(b"\n", 1)
            o = json.loads(line)
            if o.get("type") == "result":
                return seen, o
            seen.append(o.get("message"))
        try:
            d = k.s.recv(65536)
        except socket.timeout:
            continue
        if not d:
            break
        k.buf += d
    raise AssertionError("no result; progress %r" % seen)


@case
def exec_failure_is_a_configuration_error_at_start_and_on_reload():
    # Issue 12.11: a missing binary was retried like a crash for ~43 s.
    t0 = time.monotonic()
    c, n = run(["-w", "2", "--", os.path.join(TMP, "no-such-worker")])
    try:
        eq(c.wait_exit(10), 1, "corrald exits 1")
        assert time.monotonic() - t0 < 5, "took %.1fs" % (time.monotonic() - t0)
        c.drain()
        assert c.count(r"cannot execute .*no-such-worker: No such file or directory") == 1, c.output()
    finally:
        c.kill()
        n.close()
    w = worker("exec_reload", r'''
notify("READY=1"); forever()
''')
    path = config("exec_reload", workers=2, exec=w)
    c, n = run(["-c", path])
    try:
        n.wait("READY", "1")
        before = sorted(s["pid"] for s in status(c)["slots"])
        with open(path, "w") as f:
            json.dump({"workers": 2, "exec": [os.path.join(TMP, "no-such-worker")]}, f)
        k = Ctl(c.control)
        t0 = time.monotonic()
        r = k.req({"command": "reload"})
        k.close()
        eq(r["ok"], False, "reload fails")
        assert "cannot start a new worker" in r["error"] or "cannot execute" in r["error"], r["error"]
        assert time.monotonic() - t0 < 5, "took %.1fs" % (time.monotonic() - t0)
        st = status(c)
        eq((sorted(s["pid"] for s in st["slots"]), st["generation"], st["ready"]), (before, 1, 2),
           "the old workers keep serving, generation 1")
    finally:
        finish(c, n)


@case
def progress_says_new_slot_and_giveup_stay_restart_says_no_old_workers():
    # Issue 12.7: "replaced 3/3: slot 2, pid 0 -> 25166" for a slot that had
    # no worker; 12.13: after give-up with on_giveup=stay, a failed
    # restart said "the old workers keep serving" when there were none.
    w = worker("newslot", r'''
if os.path.exists(os.path.join(DIR, "newslot.crash")): sys.exit(3)
notify("READY=1"); forever()
''')
    path = config("newslot", workers=1, exec=w, restart={"limit": 1, "on_giveup": "stay"})
    c, n = run(["-c", path])
    try:
        n.wait("READY", "1")
        with open(path, "w") as f:
            json.dump({"workers": 2, "exec": w, "restart": {"limit": 1, "on_giveup": "stay"}}, f)
        k = Ctl(c.control)
        msgs, r = progress_of(k, {"command": "reload"})
        eq(r["ok"], True, "reload to 2 workers")
        assert any(re.search(r"slot 1, new worker pid \d+", m) for m in msgs), msgs
        assert not any("pid 0" in m for m in msgs), msgs
        # Make every worker crash and never come back: give up, stay.
        open(os.path.join(TMP, "newslot.crash"), "w").close()
        for s in status(c)["slots"]:
            os.kill(s["pid"], signal.SIGKILL)
        wait_status(c, lambda s: s["state"] == "gave-up", 20, "give-up")
        wait_status(c, lambda s: s["ready"] == 0 and not s["leaving"], 20, "no worker left")
        r = k.req({"command": "restart", "target": "all"})
        k.close()
        eq(r["ok"], False, "restart fails")
        assert "old workers keep serving" not in r["error"], r["error"]
        assert c.count(r"old workers keep serving") == 0, c.output()
    finally:
        os.unlink(os.path.join(TMP, "newslot.crash"))
        finish(c, n)


def teardown(_=None):
    import shutil
    shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    finally:
        teardown()
