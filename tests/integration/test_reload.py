#!/usr/bin/python3
"""Rolling reload under systemd (SPEC §4 Reload, §7): `systemctl reload`
runs `corralctl reload`, which waits for the rollout and fails when it
fails. Load runs on loopback inside the sandbox and counts every failure."""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tap import case, main, wait_for, eq, Skip, diag  # noqa: E402
from sandbox import Sandbox  # noqa: E402
from corral import CORRALCTL, HELLO, TWORKER, WORKERS, shipped_unit  # noqa: E402

SANITIZED = os.environ.get("CORRAL_SANITIZED") == "1"
CONF = "/etc/corral/rl.json"
UNIT = "corral@rl.service"


def conf(workers=2, exec_=None, **extra):
    d = {"exec": exec_ or [HELLO], "workers": workers}
    d.update(extra)
    return json.dumps(d)


# Load generator (tests/integration/workers/loadgen.py): counts every
# failed request until its stop file appears.
LOADGEN = os.path.join(WORKERS, "loadgen.py")


def setup():
    reason = Sandbox.usable()
    if reason:
        raise Skip(reason)
    units = {
        "corral@.socket": shipped_unit("corral@.socket"),
        "corral@.service": shipped_unit("corral@.service"),
        "corral@rl.socket.d/port.conf": "[Socket]\nListenStream=\nListenStream=127.0.0.1:8080\n",
    }
    if SANITIZED:
        units["corral@.service.d/sanitize.conf"] = "[Service]\nEnvironment=ASAN_OPTIONS=detect_leaks=0\n"
    sb = Sandbox(units=units, files={CONF: conf()}, timeout=60)
    sb.start()
    sb.systemctl("start", "corral@rl.socket")
    sb.systemctl("start", UNIT)
    wait_ready(sb, 2)
    return sb


def teardown(sb):
    if sb:
        sb.stop()


def status(sb):
    r = sb.run([CORRALCTL, "-i", "rl", "status", "--json"])
    return json.loads(r.stdout)


def wait_ready(sb, n, generation=None):
    def ok():
        try:
            s = status(sb)
        except Exception:  # noqa: BLE001
            return None
        if s["ready"] == n and s["workers"] == n and s["state"] == "running" and not s.get("incoming") and \
                (generation is None or s["generation"] == generation):
            return s
        return None
    return wait_for(ok, 30, "%d ready workers%s" % (n, " in generation %s" % generation if generation else ""))


def worker_env(sb, pid):
    with open("/proc/%d/environ" % sb.host_pid(pid), "rb") as f:
        return dict(x.decode().split("=", 1) for x in f.read().split(b"\0") if b"=" in x)


def start_load(sb, mode):
    stop = "/run/stop-load-%s-%d" % (mode, time.monotonic_ns())
    p = sb.spawn(["/usr/bin/python3", LOADGEN, mode, stop], stdout=subprocess.PIPE, text=True)
    return p, stop


def end_load(sb, p, stop):
    sb.run(["touch", stop])
    out, _ = p.communicate(timeout=30)
    ok, bad = (int(x) for x in out.split()[:2])
    return ok, bad, out.strip()


def reload_many(sb, mode, n):
    sb.write_file(CONF, conf(2))
    sb.systemctl("reload", UNIT)
    s = wait_ready(sb, 2)
    p, stop = start_load(sb, mode)
    try:
        for i in range(n):
            before = {w["pid"] for w in s["slots"]}
            gen = s["generation"]
            t0 = time.monotonic()
            sb.systemctl("reload", UNIT)
            dt = time.monotonic() - t0
            s = status(sb)
            eq(s["generation"], gen + 1, "generation after reload %d" % (i + 1))
            pids = [w["pid"] for w in s["slots"]]
            assert not before & set(pids), "reload %d: old pids %s still serve" % (i + 1, before & set(pids))
            for pid in pids:
                eq(worker_env(sb, pid)["CORRAL_GENERATION"], str(gen + 1), "CORRAL_GENERATION of %d" % pid)
            if i == 0:
                diag("systemctl reload took %.0f ms" % (dt * 1000))
    finally:
        ok, bad, out = end_load(sb, p, stop)
    diag("%s load during %d reloads: %s" % (mode, n, out))
    assert ok > 200, "too little load to mean anything: %s" % out
    eq(bad, 0, "failed requests (%s)" % out)


@case
def twenty_reloads_under_load_lose_nothing(sb):
    reload_many(sb, "close", 20)


@case
def keepalive_clients_reconnect_across_reloads(sb):
    reload_many(sb, "keepalive", 10)


@case
def invalid_config_fails_reload_and_keeps_workers(sb):
    s = wait_ready(sb, 2)
    pids = sorted(w["pid"] for w in s["slots"])
    gen = s["generation"]
    cursor = sb.journal_cursor()
    sb.write_file(CONF, '{"exec": ["%s"],\n  "workers": 2,,\n}' % HELLO)
    r = sb.systemctl("reload", UNIT, check=False)
    assert r.returncode != 0, "systemctl reload succeeded with invalid JSON"
    e = sb.wait_journal({"CORRAL_EVENT": "reload_failed"}, 10, unit=UNIT, since_cursor=cursor)
    assert "JSON syntax error at line 2" in e["MESSAGE"], e["MESSAGE"]
    eq(e.get("PRIORITY"), "3", "reload_failed priority")
    s = status(sb)
    eq(sorted(w["pid"] for w in s["slots"]), pids, "old workers still serve")
    eq((s["generation"], s["state"]), (gen, "running"), "generation and state after a refused reload")
    eq(sb.run(["curl", "-sS", "http://127.0.0.1:8080/"]).stdout, "Hello World\n", "serving")
    sb.write_file(CONF, conf(2))


@case
def release_that_never_gets_ready_is_refused(sb):
    s = wait_ready(sb, 2)
    gen = s["generation"]
    old = sorted(w["pid"] for w in s["slots"])
    p, stop = start_load(sb, "close")
    try:
        sb.write_file(CONF, conf(2, TWORKER + ["never-ready"], ready={"timeout_ms": 500}))
        r = sb.systemctl("reload", UNIT, check=False)
        assert r.returncode != 0, "reload of a never-ready release succeeded"
        s = status(sb)
        eq(s["generation"], gen, "generation unchanged after a failed rollout")
        eq(sorted(w["pid"] for w in s["slots"]), old, "old workers serve")
        wait_for(lambda: sorted(p for p in sb.cgroup_pids(UNIT) if p != sb.main_pid(UNIT)) == old, 15,
                 "no new-generation process left")
    finally:
        ok, bad, out = end_load(sb, p, stop)
    diag("load during the failed reload: %s" % out)
    eq(bad, 0, "failed requests during a refused release (%s)" % out)
    sb.write_file(CONF, conf(2))


@case
def worker_count_follows_config_on_reload(sb):
    for n in (4, 1, 2):
        sb.write_file(CONF, conf(n))
        sb.systemctl("reload", UNIT)
        s = wait_ready(sb, n)
        eq(len(s["slots"]), n, "slots after reload to %d" % n)
        wait_for(lambda: len(sb.cgroup_pids(UNIT)) == n + 1, 15, "%d workers in the cgroup" % n)


@case
def corralctl_logs_follow_a_slot_across_restarts(sb):
    s = wait_ready(sb, 2)
    sb.systemctl("reload", UNIT)
    wait_ready(sb, 2, s["generation"] + 1)
    spawns = sb.journal(unit=UNIT, matches=["CORRAL_EVENT=spawn", "CORRAL_WORKER_ID=0"])
    pids = {e["CORRAL_WORKER_PID"] for e in spawns}
    assert len(pids) >= 2, "slot 0 had several workers: %r" % pids
    r = sb.run([CORRALCTL, "-i", "rl", "--json", "logs", "-w", "0", "-n", "all"])
    entries = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
    got = {e.get("_PID") for e in entries} | {e.get("CORRAL_WORKER_PID") for e in entries}
    assert pids <= got, "slot 0's workers %r not all in corralctl logs -w 0 (%r)" % (pids, got)
    others = [e for e in entries if e.get("CORRAL_WORKER_ID") not in (None, "0")]
    eq(others, [], "entries of other slots")
    r = sb.run([CORRALCTL, "-i", "rl", "logs", "-n", "5"])
    assert r.stdout.strip(), "corralctl logs shows the instance's journal"


@case
def corralctl_errors_and_bad_requests(sb):
    r = sb.run([CORRALCTL, "-i", "nosuch", "status"], check=False)
    eq(r.returncode, 3, "missing instance exit status")
    assert "nosuch" in r.stderr, r.stderr
    r = sb.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", CORRALCTL, "-i", "rl",
                "status"], check=False)
    eq(r.returncode, 3, "non-root exit status")
    assert r.stderr.strip(), "non-root gets a message"
    garbage = ("not json\n{\"command\": 7}\n{\"command\": \"nope\"}\n[1,2]\n"
               "{\"command\": \"scale\", \"workers\": -3}\n{\"command\": \"signal\", \"signal\": \"BOGUS\", "
               "\"target\": \"all\"}\n{\"command\": \"restart\", \"target\": 99}\n")
    # corrald may close on us mid-send (an oversize line): keep what it said.
    script = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect('/run/corral/rl.sock')\n"
              "try:\n    s.sendall(sys.stdin.buffer.read())\n    s.shutdown(socket.SHUT_WR)\n"
              "except OSError:\n    pass\nd=b''\n"
              "while True:\n    try:\n        c=s.recv(65536)\n    except OSError:\n        break\n"
              "    if not c: break\n    d+=c\nsys.stdout.write(d.decode())\n")
    r = sb.run(["/usr/bin/python3", "-c", script], input=garbage)
    replies = [json.loads(l) for l in r.stdout.splitlines()]
    eq(len(replies), 7, "one reply per bad line")
    for rep in replies:
        eq((rep["type"], rep["ok"]), ("result", False), "error reply %r" % rep)
        assert rep["error"], rep
    big = "x" * (70 * 1024) + "\n"
    r = sb.run(["/usr/bin/python3", "-c", script], input=big)
    assert '"ok":false' in r.stdout.replace(" ", ""), r.stdout[:200]
    s = wait_ready(sb, 2)
    eq(s["state"], "running", "corrald unharmed")


main(setup=setup, teardown=teardown)
