#!/usr/bin/python3
"""Worker output and corrald's events (SPEC §8): into the journal under a
real systemd (tests/lib/sandbox.py), and as prefixed lines on stderr in
embedded mode. Also: a frozen or stuck journald, or a stderr pipe nobody
reads, never stalls the master; JOURNAL_STREAM names the worker's own
stream; control characters from workers are escaped on stderr; an
unreachable journald is said once; and the line rate through corral
against the same program run directly by systemd. The embedded-mode cases
run corrald on the host, not in the sandbox, some with a stand-in for
journald's stdout socket (FakeJournal in tests/lib/corral.py)."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tap import case, main, wait_for, eq, Skip, diag  # noqa: E402
from sandbox import Sandbox  # noqa: E402
from corral import (CORRALD, PY, Corrald, FakeJournal, ctl, exec_done, finish, proc_environ, run,  # noqa: E402
                    timed_status, workers_of)

SANITIZED = os.environ.get("CORRAL_SANITIZED") == "1"
TMP = tempfile.mkdtemp(prefix="corral-journal-test-")

# The test worker. Modes:
#   prio          "<3>boom" and a plain line on stdout, a plain line on stderr
#   idle          "idle slot N pid P" on stdout, wait; SIGUSR2 exits 3
#   flood N [TAG] N lines "TAG i" as fast as possible, then "TAG END"
#   freeze N M    on SIGUSR1: N lines as flood does; slot 0 also sends M
#                 ERRNO=i notifications and then creates /run/jfreeze.errno-done
#   long N L      N lines of L times its slot's letter, written in big chunks,
#                 one 10000-char line, one of 100000 "Y", "<3>kept", then "tail-SLOT"
#                 without newline
# Every mode sends READY=1 first and exits 0 on SIGTERM.
JW = r'''
import os, signal, socket, sys, time
slot = os.environ.get("CORRAL_WORKER_ID", "0")

def notify(msg, s=[]):
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if not s:
        s.append(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
    s[0].sendto(msg.encode(), "\0" + path[1:] if path.startswith("@") else path)

def write_all(data):
    while data:
        data = data[os.write(1, data):]

def flood(n, tag):
    buf = []
    for i in range(n):
        buf.append("%s %d\n" % (tag, i))
        if len(buf) == 4000:
            write_all("".join(buf).encode())
            buf = []
    buf.append("%s END\n" % tag)
    write_all("".join(buf).encode())

signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
signal.signal(signal.SIGUSR2, lambda *_: os._exit(3))
mode = sys.argv[1]
notify("READY=1")
if mode == "idle":
    print("idle slot %s pid %d" % (slot, os.getpid()), flush=True)
elif mode == "prio":
    sys.stdout.write("<3>boom\nplain-stdout\n")
    sys.stdout.flush()
    sys.stderr.write("plain-stderr\n")
    sys.stderr.flush()
elif mode == "flood":
    flood(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "w" + slot)
elif mode == "freeze":
    go = []
    signal.signal(signal.SIGUSR1, lambda *_: go.append(1))
    while not go:
        signal.pause()
    if slot == "0":
        for i in range(1, int(sys.argv[3]) + 1):
            notify("ERRNO=%d" % i)
        open("/run/jfreeze.errno-done", "w").close()
    flood(int(sys.argv[2]), "w" + slot)
elif mode == "long":
    letter = "ab"[int(slot)]
    line = (letter * int(sys.argv[3]) + "\n").encode()
    for _ in range(int(sys.argv[2]) // 20):
        write_all(line * 20)
    write_all(b"X" * 10000 + b"\n" + b"Y" * 100000 + b"\n<3>kept\ntail-" + slot.encode())
while True:
    signal.pause()
'''

PLAIN = "[Service]\nLogRateLimitIntervalSec=0\nKillMode=mixed\n"
NOTIFY = "[Service]\nType=notify\nNotifyAccess=main\nLogRateLimitIntervalSec=0\nKillMode=mixed\n"


def unit(exec_, extra=""):
    env = "Environment=ASAN_OPTIONS=detect_leaks=0\n" if SANITIZED else ""
    return NOTIFY + env + extra + "ExecStart=%s\n" % exec_


def jw(*args):
    return "%s /srv/jw.py %s" % (PY, " ".join(str(a) for a in args))


RATE_N = 100000


def setup():
    reason = Sandbox.usable()
    if reason:
        raise Skip(reason)
    units = {
        "jprio.service": unit("%s --name jprio -w 1 -- %s" % (CORRALD, jw("prio"))),
        "jev.service": unit("%s --name jev -w 1 -- %s" % (CORRALD, jw("idle"))),
        "jgu.service": unit("%s --config /etc/corral/jgu.json --name jgu" % CORRALD),
        "jfreeze.service": unit("%s --name jfreeze -w 2 -- %s" % (CORRALD, jw("freeze", 20000, 1000)),
                                "WatchdogSec=1\n"),
        "jrate.service": unit("%s --name jrate -w 2 -- %s" % (CORRALD, jw("flood", RATE_N))),
        "jdirect@.service": PLAIN + "ExecStart=%s\n" % jw("flood", RATE_N, "d%i"),
    }
    files = {
        "/srv/jw.py": JW,
        "/etc/corral/jgu.json": json.dumps({"exec": [PY, "/srv/jw.py", "idle"], "workers": 1,
                                            "watchdog_ms": 300,
                                            "restart": {"limit": 2, "backoff_ms": [10, 20]}}),
    }
    sb = Sandbox(units=units, files=files, timeout=60)
    sb.start()
    return sb


def teardown(sb):
    if sb:
        sb.stop()
    shutil.rmtree(TMP, ignore_errors=True)


# journalctl 252 returns nothing for --after-cursor combined with a field
# match when the cursor's own entry does not match; so cursors go with
# -u only, and field matches only without a cursor.
def one(sb, u, fields, cursor=None, timeout=20):
    """Wait for the journal entry of unit u with all these fields."""
    return sb.wait_journal(fields, timeout, unit=u, since_cursor=cursor)


def events(sb, u, cursor, **fields):
    """Every entry of unit u after cursor with these fields."""
    return [e for e in sb.journal(u, since_cursor=cursor) if all(e.get(k) == str(v) for k, v in fields.items())]


def messages(sb, pid):
    """MESSAGE of every journal entry of that pid, in journal order."""
    out = sb.run(["journalctl", "--no-pager", "-q", "-o", "cat", "_PID=%d" % pid], timeout=120).stdout
    return out.splitlines()


def check_event(e, prio, **fields):
    eq(e.get("PRIORITY"), str(prio), "PRIORITY of %s" % e.get("MESSAGE"))
    eq(e.get("SYSLOG_IDENTIFIER"), "corrald", "SYSLOG_IDENTIFIER")
    for k, v in fields.items():
        eq(e.get(k), None if v is None else str(v), "%s of %r" % (k, e.get("MESSAGE")))


@case
def prefix_priority_pid_identifier_unit(sb):
    sb.systemctl("start", "jprio.service")
    wait_for(lambda: sb.prop("jprio.service", "StatusText").startswith("1/1 workers ready"), 20, "ready")
    (pid,) = workers_of(sb, "jprio.service")
    boom = sb.wait_journal({"MESSAGE": "boom"}, 20, matches=["_PID=%d" % pid])
    eq(boom.get("PRIORITY"), "3", "PRIORITY from the <3> prefix")
    eq(boom.get("_PID"), str(pid), "_PID is the worker's")
    eq(boom.get("SYSLOG_IDENTIFIER"), "jprio", "SYSLOG_IDENTIFIER is the instance name")
    eq(boom.get("_SYSTEMD_UNIT"), "jprio.service", "_SYSTEMD_UNIT")
    out = sb.wait_journal({"MESSAGE": "plain-stdout"}, 20, matches=["_PID=%d" % pid])
    eq(out.get("PRIORITY"), "6", "stdout default priority (info)")
    err = sb.wait_journal({"MESSAGE": "plain-stderr"}, 20, matches=["_PID=%d" % pid])
    eq(err.get("PRIORITY"), "4", "stderr default priority (warning)")
    eq(err.get("_SYSTEMD_UNIT"), "jprio.service", "_SYSTEMD_UNIT of stderr")
    sb.systemctl("stop", "jprio.service")


@case
def every_event_with_its_fields(sb):
    u = "jev.service"
    c0 = sb.journal_cursor()
    sb.systemctl("start", u)
    wait_for(lambda: sb.prop(u, "StatusText").startswith("1/1 workers ready"), 20, "ready")
    master = sb.main_pid(u)
    (w0,) = workers_of(sb, u)
    base = dict(CORRAL_INSTANCE="jev", _PID=master, CORRAL_GENERATION=1)
    check_event(one(sb, u, {"CORRAL_EVENT": "spawn", "CORRAL_WORKER_ID": "0"}, c0), 6, CORRAL_WORKER_PID=w0,
                **base)
    check_event(one(sb, u, {"CORRAL_EVENT": "ready", "CORRAL_WORKER_ID": "0"}, c0), 6, CORRAL_WORKER_PID=w0,
                **base)

    c1 = sb.journal_cursor()
    sb.run(["kill", "-TTIN", str(master)])
    check_event(one(sb, u, {"CORRAL_EVENT": "scale"}, c1), 6, CORRAL_WORKER_ID=None, **base)
    e = one(sb, u, {"CORRAL_EVENT": "spawn", "CORRAL_WORKER_ID": "1"}, c1)
    check_event(e, 6, **base)

    # A crash is a warning: exit status, then a signal.
    c2 = sb.journal_cursor()
    sb.run(["kill", "-USR2", str(w0)])
    check_event(one(sb, u, {"CORRAL_EVENT": "exit", "CORRAL_WORKER_PID": str(w0)}, c2), 4, CORRAL_WORKER_ID=0,
                CORRAL_EXIT_STATUS=3, CORRAL_SIGNAL=None, **base)
    w0b = int(one(sb, u, {"CORRAL_EVENT": "spawn", "CORRAL_WORKER_ID": "0"}, c2)["CORRAL_WORKER_PID"])
    one(sb, u, {"CORRAL_EVENT": "ready", "CORRAL_WORKER_PID": str(w0b)}, c2)
    sb.run(["kill", "-KILL", str(w0b)])
    check_event(one(sb, u, {"CORRAL_EVENT": "exit", "CORRAL_WORKER_PID": str(w0b)}, c2), 4, CORRAL_WORKER_ID=0,
                CORRAL_SIGNAL="SIGKILL", CORRAL_EXIT_STATUS=None, **base)
    spawns = wait_for(lambda: (lambda e: e if len(e) >= 2 else None)(
        events(sb, u, c2, CORRAL_EVENT="spawn", CORRAL_WORKER_ID=0)), 20, "slot 0's third worker")
    w0c = int(spawns[-1]["CORRAL_WORKER_PID"])

    # Per-slot filtering across restarts: the expression from the README.
    sb.wait_journal({"MESSAGE": "idle slot 0 pid %d" % w0c}, 20, matches=["_PID=%d" % w0c])
    out = sb.run(["sh", "-c", "pids=$(journalctl -u jev CORRAL_EVENT=spawn CORRAL_WORKER_ID=0 -o cat "
                  "--output-fields=CORRAL_WORKER_PID)\n"
                  "echo $pids\n"
                  "journalctl -q -u jev -o cat $(printf '_PID=%s ' $pids)"]).stdout.splitlines()
    eq(sorted(int(p) for p in out[0].split()), sorted([w0, w0b, w0c]), "README: pids of slot 0")
    eq(out[1:], ["idle slot 0 pid %d" % p for p in (w0, w0b, w0c)], "README: slot 0's output across restarts")

    c3 = sb.journal_cursor()
    sb.systemctl("stop", u)
    stops = events(sb, u, c3, CORRAL_EVENT="stop")
    whole = [e for e in stops if "CORRAL_WORKER_ID" not in e]
    eq(len(whole), 1, "one instance-wide stop event")
    check_event(whole[0], 6, **base)
    per = sorted(e["CORRAL_WORKER_ID"] for e in stops if "CORRAL_WORKER_ID" in e)
    eq(per, ["0", "1"], "a stop event per worker")
    for e in stops:
        check_event(e, 6, **base)
    exits = events(sb, u, c3, CORRAL_EVENT="exit")
    eq(sorted(e["PRIORITY"] for e in exits), ["6", "6"], "expected exits are info")


@case
def watchdog_and_giveup_events(sb):
    u = "jgu.service"
    c0 = sb.journal_cursor()
    sb.systemctl("start", u, check=False)
    wd = one(sb, u, {"CORRAL_EVENT": "watchdog"}, c0)
    check_event(wd, 4, CORRAL_INSTANCE="jgu", CORRAL_WORKER_ID=0, CORRAL_GENERATION=1)
    assert int(wd["CORRAL_WORKER_PID"]) > 0, wd
    ex = one(sb, u, {"CORRAL_EVENT": "exit", "CORRAL_WORKER_PID": wd["CORRAL_WORKER_PID"]}, c0)
    check_event(ex, 4, CORRAL_SIGNAL="SIGABRT", CORRAL_WORKER_ID=0)
    gu = one(sb, u, {"CORRAL_EVENT": "giveup"}, c0, timeout=30)
    check_event(gu, 2, CORRAL_INSTANCE="jgu", CORRAL_WORKER_ID=0, CORRAL_GENERATION=1)
    sb.wait_active(u, state="failed", timeout=30)


@case
def frozen_journald_never_stalls_the_master(sb):
    u = "jfreeze.service"
    sb.systemctl("start", u)
    wait_for(lambda: sb.prop(u, "StatusText").startswith("2/2 workers ready"), 20, "ready")
    master = sb.main_pid(u)
    workers = workers_of(sb, u)
    jpid = sb.main_pid("systemd-journald.service")
    c0 = sb.journal_cursor()
    sb.run(["kill", "-STOP", str(jpid)])
    t0 = time.monotonic()
    try:
        # 1000 ERRNO= notifications make 1000 master events (the most one
        # worker may cause per 10 s), twice journald's receive queue
        # (net.unix.max_dgram_qlen = 512): a blocking send would stall the
        # master here.
        sb.run(["kill", "-USR1"] + [str(w) for w in workers])
        wait_for(lambda: sb.run(["test", "-e", "/run/jfreeze.errno-done"], check=False).returncode == 0, 1.8,
                 "the master to read 1000 notifications while journald is stopped")
        sb.run(["kill", "-TTIN", str(master)])
        wait_for(lambda: sb.prop(u, "StatusText").startswith("3/3 workers ready"), 1.8,
                 "STATUS=3/3 after SIGTTIN while journald is stopped")
        frozen_for = time.monotonic() - t0
        assert frozen_for < 2.0, "took %.2fs" % frozen_for
        time.sleep(2.0 - frozen_for)    # the measurement window: journald stays stopped for 2 s
        p = sb.show(u, "MainPID", "ActiveState", "NRestarts")
        eq((p["MainPID"], p["ActiveState"], p["NRestarts"]), (str(master), "active", "0"),
           "corrald through 2 s of stopped journald with WatchdogSec=1")
    finally:
        sb.run(["kill", "-CONT", str(jpid)])
    diag("master answered while journald was stopped; journald stopped for %.2fs" % (time.monotonic() - t0))
    for tag in ("w0", "w1"):
        sb.wait_journal({"MESSAGE": tag + " END"}, 60, unit=u, matches=["MESSAGE=%s END" % tag])
    for w in workers:
        msgs = messages(sb, w)
        tag = msgs[0].split()[0]
        eq(msgs, ["%s %d" % (tag, k) for k in range(20000)] + [tag + " END"], "worker %d's lines" % w)
    def errno_events():
        out = sb.run(["journalctl", "--no-pager", "-q", "-o", "cat", "-u", u, "--after-cursor", c0]).stdout
        return [int(m.group(1)) for m in (re.search(r"reports ERRNO=(\d+)", l) for l in out.splitlines()) if m]
    errnos = wait_for(lambda: (lambda e: e if len(e) >= 1000 else None)(errno_events()), 30,
                      "1000 ERRNO events")
    eq(errnos, list(range(1, 1001)), "master events kept, in order")
    text = sb.journal_text(unit=u, since_cursor=c0)
    bad = [l for l in text.splitlines() if "Watchdog timeout" in l or re.search(r"log messages? dropped", l)]
    eq(bad, [], "watchdog timeouts or dropped messages")
    eq(sb.main_pid(u), master, "same corrald")
    sb.systemctl("stop", u)


def rate(sb, pid, n):
    """Lines/s of one writer as journald received them, and its lines."""
    out = sb.run(["journalctl", "--no-pager", "-q", "-o", "short-unix", "_PID=%d" % pid], timeout=120).stdout
    lines = out.splitlines()
    first, last = float(lines[0].split()[0]), float(lines[-1].split()[0])
    return n / max(last - first, 1e-6), [l.split(": ", 1)[1] for l in lines]


def corral_round(sb):
    """Both workers of jrate: per-worker lines/s; checks every line, in order."""
    sb.systemctl("start", "jrate.service")
    wait_for(lambda: sb.prop("jrate.service", "StatusText").startswith("2/2 workers ready"), 20, "ready")
    workers = workers_of(sb, "jrate.service")
    eq(len(workers), 2, "workers")
    rates = []
    for w in workers:
        # Same-field matches are OR-ed, different fields AND-ed (journalctl(1)).
        sb.wait_journal(lambda e: True, 120, what="END of worker %d" % w,
                        matches=["_PID=%d" % w, "MESSAGE=w0 END", "MESSAGE=w1 END"])
        r, msgs = rate(sb, w, RATE_N)
        tag = msgs[0].split()[0]
        eq(msgs == ["%s %d" % (tag, k) for k in range(RATE_N)] + [tag + " END"], True,
           "worker %d: all %d lines, in order (got %d)" % (w, RATE_N, len(msgs)))
        rates.append(r)
    sb.systemctl("stop", "jrate.service")
    return rates


def direct_round(sb):
    """The same program as two plain services, run by systemd itself."""
    units = ["jdirect@0.service", "jdirect@1.service"]
    sb.systemctl("start", *units)
    rates = []
    for i, u in enumerate(units):
        pid = sb.main_pid(u)
        sb.wait_journal({"MESSAGE": "d%d END" % i}, 120, matches=["_PID=%d" % pid])
        r, msgs = rate(sb, pid, RATE_N)
        eq(len(msgs), RATE_N + 1, "direct lines")
        rates.append(r)
    sb.systemctl("stop", *units)
    return rates


@case
def hundred_thousand_lines_each_in_order_and_rate(sb):
    # ABBA, so that a trend (the journal file growing) does not favour one.
    c = corral_round(sb)
    d = direct_round(sb) + direct_round(sb)
    c += corral_round(sb)
    mc, md = sum(c) / len(c), sum(d) / len(d)
    diag("lines/s per worker into journald: through corral %.0f (%s), run directly by systemd %.0f (%s), "
         "ratio %.2f" % (mc, " ".join("%.0f" % r for r in c), md, " ".join("%.0f" % r for r in d), mc / md))


@case
def journal_has_no_sanitizer_report(sb):
    # corrald's own stdout/stderr, where a sanitizer reports, is a stream
    # systemd names after the binary.
    out = sb.run(["sh", "-c", "journalctl --no-pager -q -o cat SYSLOG_IDENTIFIER=corrald _TRANSPORT=stdout | "
                  "grep -E -A 30 'ERROR: (Address|Leak)Sanitizer|runtime error:' | head -100"], timeout=60).stdout
    eq(out, "", "sanitizer report in the journal")


# ---- embedded mode: no sandbox -------------------------------------------

def host_worker():
    d = tempfile.mkdtemp(prefix="corral-journal-test-")
    path = os.path.join(d, "jw.py")
    with open(path, "w") as f:
        f.write(JW)
    return path


@case
def stderr_mode_whole_prefixed_lines(_sb):
    c = Corrald(["--name", "jl", "-w", "2"], [PY, host_worker(), "long", "2000", "3000"])
    try:
        c.wait_line(r"^jl\[1/\d+\]: kept$", timeout=60)
        c.wait_line(r"^jl\[0/\d+\]: kept$", timeout=60)
        eq(c.stop(), 0, "exit status")
        lines = c.output().splitlines()
        body = {0: [], 1: []}
        pids = {0: set(), 1: set()}
        for l in lines:
            m = re.match(r"^jl\[(\d)/(\d+)\]: (.*)$", l)
            if m:
                body[int(m.group(1))].append(m.group(3))
                pids[int(m.group(1))].add(int(m.group(2)))
            else:
                assert l.startswith("corrald[jl]: "), "neither an event nor a worker line: %r" % l[:200]
        for slot, letter in ((0, "a"), (1, "b")):
            b = body[slot]
            eq(len(pids[slot]), 1, "slot %d: one pid in its prefixes" % slot)
            eq(b[:2000], [letter * 3000] * 2000, "slot %d: 2000 whole uniform lines" % slot)
            eq(b[2000], "X" * 10000, "slot %d: a 10000-byte line stays whole" % slot)
            chunks = b[2001:-2]
            eq([len(x) for x in chunks], [49152, 49152, 100000 - 2 * 49152],
               "slot %d: a 100000-byte line in parts of 48 KiB" % slot)
            eq("".join(chunks), "Y" * 100000, "slot %d: the parts make the line" % slot)
            eq(b[-2:], ["kept", "tail-%d" % slot], "slot %d: <N> consumed, partial last line flushed" % slot)
        assert re.search(r"^corrald\[jl\]: worker 0 \(pid \d+\) started, generation 1$", c.output(), re.M)
    finally:
        c.kill()


@case
def journal_mode_without_journald_inherits(_sb):
    if os.path.exists("/run/systemd/journal/stdout"):
        raise Skip("a journald runs here")
    c = Corrald(["--name", "jn", "-w", "1"], [PY, host_worker(), "prio"], log="journal")
    try:
        c.wait_line(r"^plain-stderr$", timeout=20)
        c.wait_line(r"^<3>boom$", timeout=20)
        eq(c.stop(), 0, "exit status")
    finally:
        c.kill()


def config(name, **keys):
    path = os.path.join(TMP, name + ".json")
    with open(path, "w") as f:
        json.dump(keys, f)
    return path


@case
def stuck_journald_does_not_freeze_spawning(_sb):
    """#11.3: a journald that never accepts used to block the child in
    connect(2) and the master in its read of the exec status."""
    j = FakeJournal(stuck=True)
    c, n = run(["-w", "3"], ["/bin/sh", "-c", "exec sleep 3600"], log="journal",
               env={"CORRAL_TEST_JOURNAL_STDOUT": j.path})
    try:
        st, _ = timed_status(c)
        wait_for(lambda: len(c.workers()) == 3, 5, "3 workers spawned")
        ctl(c, "scale", "6")
        st, dt = timed_status(c)
        wait_for(lambda: len(c.workers()) == 6, 5, "6 workers spawned")
        timed_status(c)
    finally:
        finish(c, n)
        j.close()


@case
def journal_stream_names_the_workers_own_stream(_sb):
    """#12.2: JOURNAL_STREAM is the worker's own stderr stream in journal
    mode, and unset in stderr mode; never corrald's."""
    j = FakeJournal(stuck=False)
    sh = 'echo "js=$JOURNAL_STREAM" >&2; echo "st=$(stat -L -c %d:%i /proc/self/fd/2)" >&2; exec sleep 3600'
    path = config("jstream", workers=1, ready={"mode": "spawn"}, exec=["/bin/sh", "-c", sh])
    c, n = run(["-c", path], log="journal",
               env={"CORRAL_TEST_JOURNAL_STDOUT": j.path, "JOURNAL_STREAM": "1:2"})
    try:
        def both():
            for t in j.texts():
                m1, m2 = re.search(r"js=(\S*)\n", t), re.search(r"st=(\S*)\n", t)
                if m1 and m2:
                    return t, m1.group(1), m2.group(1)
            return None
        t, js, st = wait_for(both, 10, "the worker's lines on its stderr stream")
        assert t.startswith("jstream\n\n4\n1\n0\n0\n0\n"), "stream header: %r" % t[:40]
        eq(js, st, "JOURNAL_STREAM is DEVICE:INODE of the worker's stderr")
    finally:
        finish(c, n)
        j.close()
    c, n = run(["-w", "1", "-n", "jstream2"], ["/bin/sh", "-c", "exec sleep 3600"],
               env={"JOURNAL_STREAM": "1:2"})
    try:
        w = exec_done(c, 1)[0]
        assert "JOURNAL_STREAM" not in proc_environ(w), "JOURNAL_STREAM leaked in stderr mode"
    finally:
        finish(c, n)


def stat_state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):     # ESRCH: reaped after the open
        return None


@case
def blocked_stderr_never_blocks_the_master(_sb):
    """#11.8: with stderr on a pipe nobody reads, the master used to hang in
    write(2): the control socket went silent, a killed worker stayed a
    zombie. Two workers flood their stdout; nobody reads corrald's."""
    d = tempfile.mkdtemp(dir=TMP)
    ctl_path = os.path.join(d, "ctl.sock")
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "LISTEN_FDS")}
    flood = "while :; do echo flood-line-of-some-length-$$-0123456789abcdef; done"
    p = subprocess.Popen([CORRALD, "--log", "stderr", "-n", "blk", "-w", "2", "--control", ctl_path, "--",
                          "/bin/sh", "-c", flood], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, env=env, start_new_session=True)

    class C:
        control = ctl_path
    try:
        wait_for(lambda: os.path.exists(ctl_path), 10, "control socket")
        # The pipe holds 64 KiB by default (pipe(7)); the floods fill it at once.
        wait_for(lambda: _pipe_full(p.stdout.fileno()), 10, "corrald's stderr pipe full")
        st, _ = timed_status(C)
        victim = [s["pid"] for s in st["slots"] if s["pid"]][0]
        os.kill(victim, signal.SIGKILL)

        def respawned():
            st, _ = timed_status(C)
            pids = [s["pid"] for s in st["slots"] if s["pid"]]
            return len(pids) == 2 and victim not in pids and stat_state(victim) is None
        wait_for(respawned, 10, "the killed worker reaped (no zombie) and replaced")
        timed_status(C)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(10)


def _pipe_full(fd):
    import fcntl
    import termios
    buf = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return int.from_bytes(buf, sys.byteorder) >= 60000


@case
def control_characters_from_workers_are_escaped_on_stderr(_sb):
    """#11.9: STATUS= text with ESC/BEL/CR reached the terminal raw."""
    w = ("import os,socket; s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM); p=os.environ['NOTIFY_SOCKET'];"
         "os.write(int(os.environ['CORRAL_IPC_FD']), b'{\"type\":\"message\",\"data\":\"evil\\x1b[2J\\x07\\rX\"}\\n');"
         "s.sendto(b'READY=1\\nSTATUS=evil\\x1b[2J\\x07\\rX', p);"
         "import time; time.sleep(3600)")
    c, n = run(["-w", "1", "-n", "esc"], [sys.executable, "-c", w], env={"CORRAL_DEBUG": "1"})
    try:
        n.wait("READY", "1")
        c.wait_line(r"evil")  # logged as a message, or as a malformed line
        out = c.output()
        assert "\x1b" not in out and "\x07" not in out and "\r" not in out, "raw control bytes on stderr: %r" % out
    finally:
        finish(c, n)


@case
def journal_unreachable_is_said_once_and_falls_back(_sb):
    """#12.15: with --log journal and no journald, our events vanished."""
    if os.path.exists("/run/systemd/journal/socket"):
        raise Skip("a journald runs here")
    c, n = run(["-w", "1", "-n", "nojd"], ["/bin/sh", "-c", "exec sleep 3600"], log="journal")
    try:
        c.wait_line(r"^corrald\[nojd\]: worker 0 \(pid \d+\) started")
        eq(c.count(r"the journal is not reachable"), 1, "said once\n" + c.output())
    finally:
        finish(c, n)


main(setup=setup, teardown=teardown)
