#!/usr/bin/python3
"""Bounded randomized/structured fuzz driver for corrald (the corral master).

Requirement under test: "Bad input of every kind (config, CLI, control
requests, worker messages, notify datagrams) gets a clear error naming what
is wrong, and never crashes, blocks or leaks in the master."

Runs the ASan+UBSan build of corrald (build-sanitize by default) with two
workers and throws at it, phase by phase, for a bounded time:

  control  the control socket: random bytes, truncated/deep/huge JSON, odd
           argument types, > 64 connections, clients that never read,
           clients that hang up mid-request, rollouts interleaved with scale
  notify   the notify socket from a non-worker: garbage, empty, NUL, > 4096
           bytes, up to 250 SCM_RIGHTS fds, 10k floods, valid READY/STATUS/
           STOPPING/WATCHDOG=trigger
  ipc      a second corrald whose python workers write garbage, huge lines,
           endless lines without newline, invalid UTF-8, non-objects, floods
           to CORRAL_IPC_FD (driven by `send` messages), and stall reading
  config   `corrald --check-config FILE` on mutated configs, huge files,
           directories, /dev/zero, fifos, symlinks; reloads of a live master
           with broken configs (and with the config replaced by a fifo)
  cli      random flags for corrald and corralctl

After each phase: corrald alive, `corralctl status --json` answers within 2 s
with ok:true and 2 ready workers, no sanitizer text in its log; fd count and
RSS before/after. At the end SIGTERM -> exit 0 without a LeakSanitizer report.

Usage: fuzz_corrald.py [--seconds N] [--seed S] [--build DIR] [--keep] [--tap]
Exit status: 0 no finding, 1 findings (listed in the summary), 2 setup error.
--tap (meson test, tests/fuzz/meson.build): the log becomes TAP comments,
and each phase, plus the final SIGTERM, is one TAP case that fails on a
finding of its own.
Only the standard library is used; run with /usr/bin/python3.
"""
import argparse
import array
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SANITIZER_RE = re.compile(r"AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|runtime error:|"
                          r"SUMMARY: \w+Sanitizer|ERROR: \w+Sanitizer")
SAN_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
}

# --------------------------------------------------------------------------
# bookkeeping


class Findings:
    def __init__(self, outdir):
        self.items = []
        self.lock = threading.Lock()
        self.outdir = outdir
        self.seen = set()

    def add(self, phase, what, inp=None, dedup=None):
        key = (phase, dedup or what)
        with self.lock:
            if key in self.seen:
                return
            self.seen.add(key)
            n = len(self.items) + 1
            shown = None
            if inp is not None:
                raw = inp if isinstance(inp, (bytes, bytearray)) else repr(inp).encode()
                with open(os.path.join(self.outdir, "finding-%d.input" % n), "wb") as f:
                    f.write(raw)
                shown = repr(inp)
                if len(shown) > 300:
                    shown = shown[:300] + "...(%d bytes, full input in finding-%d.input)" % (len(raw), n)
            self.items.append((phase, what, shown))
            print("  FINDING [%s] %s%s" % (phase, what, ("\n      input: " + shown) if shown else ""),
                  flush=True)


def log(msg):
    print("[%7.2f] %s" % (time.monotonic() - T0, msg), flush=True)


T0 = time.monotonic()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def proc_environ(pid):
    with open("/proc/%d/environ" % pid, "rb") as f:
        items = f.read().split(b"\0")
    return dict(i.decode(errors="replace").split("=", 1) for i in items if b"=" in i)


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return -1


def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for l in f:
                if l.startswith("VmRSS:"):
                    return int(l.split()[1])
    except OSError:
        pass
    return -1


def clean_env(extra=None):
    e = dict(os.environ)
    for k in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID",
              "JOURNAL_STREAM", "RUNTIME_DIRECTORY", "INVOCATION_ID"):
        e.pop(k, None)
    e.update(SAN_ENV)
    if extra:
        e.update(extra)
    return e


# --------------------------------------------------------------------------
# a corrald under test


class Master:
    def __init__(self, name, tmp, corrald, corralctl, exec_, workers=2, extra_cfg=None, env=None):
        self.name = name
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir)
        self.sock = os.path.join(self.dir, "c.sock")
        self.cfg_path = os.path.join(self.dir, name + ".json")
        self.corralctl = corralctl
        self.port = free_port()
        self.cfg = {
            "exec": exec_, "workers": workers, "listen": ["127.0.0.1:%d" % self.port],
            "ready": {"timeout_ms": 8000}, "stop": {"timeout_ms": 3000},
            "restart": {"on_giveup": "stay", "limit": 1000, "backoff_ms": [50, 500]},
        }
        if extra_cfg:
            self.cfg.update(extra_cfg)
        self.write_config()
        self.logpath = os.path.join(self.dir, "corrald.log")
        self.logf = open(self.logpath, "wb")
        self.proc = subprocess.Popen(
            [corrald, "--log", "stderr", "--config", self.cfg_path, "--control", self.sock],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT,
            env=clean_env(dict(env or {}, XDG_RUNTIME_DIR=self.dir)), start_new_session=True, cwd=self.dir)
        self.pid = self.proc.pid
        self.log_offset = 0

    def write_config(self, text=None):
        tmp = self.cfg_path + ".tmp"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        with open(tmp, "w") as f:
            f.write(text if text is not None else json.dumps(self.cfg))
        os.replace(tmp, self.cfg_path)

    def alive(self):
        return self.proc.poll() is None

    def log_text(self):
        if not self.logf.closed:
            self.logf.flush()
        with open(self.logpath, "rb") as f:
            return f.read().decode(errors="replace")

    def new_log(self):
        """Log text since the last call."""
        t = self.log_text()
        new, self.log_offset = t[self.log_offset:], len(t)
        return new

    def ctl(self, *args, timeout=2.0):
        t = time.monotonic()
        try:
            p = subprocess.run([self.corralctl, "-s", self.sock] + list(args), capture_output=True,
                               timeout=timeout, env=clean_env(), stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return None, "", "timeout after %.1fs" % timeout, timeout
        return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"), \
            time.monotonic() - t

    def status(self, timeout=2.0):
        rc, out, err, dt = self.ctl("status", "--json", timeout=timeout)
        if rc is None:
            return None, err
        try:
            return json.loads(out), None
        except ValueError:
            return None, "rc=%s out=%r err=%r" % (rc, out[:200], err[:200])

    def wait_healthy(self, n=2, within=20):
        """Wait until n workers are ready and the master is `running`.
        Every status call itself must answer within 2 s."""
        deadline = time.monotonic() + within
        last = None
        while time.monotonic() < deadline:
            if not self.alive():
                return False, "corrald exited with %s" % self.proc.returncode
            st, err = self.status()
            if st is None:
                if "timeout" in (err or ""):
                    return False, "status did not answer within 2 s (%s)" % err
                last = err
            else:
                last = "ready=%s workers=%s state=%s" % (st.get("ready"), st.get("workers"), st.get("state"))
                if st.get("ok") and st.get("ready") == n and st.get("workers") == n and \
                        st.get("state") == "running" and not st.get("incoming") and not st.get("leaving"):
                    return True, st
            time.sleep(0.2)
        return False, "not healthy within %ss: %s" % (within, last)

    def worker_pids(self):
        return sorted(children(self.pid))

    def stop(self, timeout=30):
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait(10)
            rc = "hung (killed after %ss)" % timeout
        self.logf.close()
        return rc


# --------------------------------------------------------------------------
# control socket client helpers


def ctl_connect(path, timeout=5.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def read_until_result(s, buf=b"", timeout=5.0):
    """Returns (result_obj or None, lines, rest, why)."""
    deadline = time.monotonic() + timeout
    lines = []
    while True:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            non_utf8 = False
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                non_utf8 = True
                line = line.decode("utf-8", "replace").encode()
            try:
                o = json.loads(line)
            except ValueError:
                return None, lines, buf, "reply line is not JSON: %r" % line[:200]
            if non_utf8 and isinstance(o, dict):
                o["_non_utf8"] = True
            lines.append(o)
            if isinstance(o, dict) and o.get("type") == "result":
                return o, lines, buf, None
        left = deadline - time.monotonic()
        if left <= 0:
            return None, lines, buf, "no result within %.0fs" % timeout
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return None, lines, buf, "no result within %.0fs" % timeout
        except OSError as e:
            return None, lines, buf, "connection error %s" % e
        if not chunk:
            return None, lines, buf, "EOF before a result"
        buf += chunk


# --------------------------------------------------------------------------
# value generators

ODD_VALUES = [0, -1, 1, 2, 65, -65, 4097, 4096, 1e300, -1e300, 1.5, -0.0, 0.5, 2 ** 31, 2 ** 32, 2 ** 32 + 1,
              2 ** 63, 2 ** 64 + 1, 9007199254740993, "1", "0", "-1", "all", "ALL", "All ", "", " all", "1e300",
              "NaN", "Infinity", "nan", [], {}, None, True, False, [0], {"all": 1}, "\u00e9", "\ud7ff",
              "x" * 300]
RAW_NUMBERS = ["1e400", "-1e400", "1e-400", "-0", "0.0000001", "123456789012345678901234567890", "1E+2",
               "4096.0000000000001", "2.0", "1.9999999999999999", "4294967296.0", "-4294967295"]
# For scale only: no raw number that parses to a valid large count (4096.0000000000001 == 4096.0 and 1E+2
# would really start thousands/hundreds of workers, which the first run of this driver did).
RAW_NUMBERS_SCALE = ["1e400", "-1e400", "1e-400", "-0", "0.0000001", "123456789012345678901234567890",
                     "4096.5", "4097.0", "2.0", "1.9999999999999999", "1e4", "-2.0"]


def rand_json(rng, depth=0):
    r = rng.random()
    if depth > 4 or r < 0.4:
        return rng.choice(ODD_VALUES)
    if r < 0.7:
        return [rand_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["a", "b", "type", "data", "command", "", "\u0000k", "\u2028"]): rand_json(rng, depth + 1)
            for _ in range(rng.randint(0, 4))}


def dumps(o):
    return json.dumps(o, allow_nan=True).encode()


SAFE_SIGNALS = ["CONT", "SIGCONT", "WINCH", "SIGWINCH", "URG", "SIGURG", 18, 28, 23, "18"]
BAD_SIGNALS = [0, 65, -1, 64.5, 1e300, -1e300, "", "SIG", "SIGFOO", "FOO", "0", "65", "-1", "sigterm", "SIGRTMAX+1",
               "RTMIN-1", "SIGRTMIN+100", "15 ", " 15", "0x0f", "1e1", None, [], {}, True, "x" * 5000, "\u00ff"]
BAD_TARGETS = [-1, 2 ** 32, 2 ** 31, 99, 4096, 1.5, 1e300, -1e300, "0", "1", "ALL", "", " all", "all\u0000",
               None, [], {}, True, False, [0], {"id": 0}, 0.0000001, -0.0]


def gen_control_request(rng):
    """One request line (bytes, without the newline) and a label. Valid
    destructive requests are steered away from: only harmless signals reach
    real workers and scale stays within 1..3 workers."""
    k = rng.randrange(16)
    if k == 0:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))).replace(b"\n", b" "), "random-bytes"
    if k == 1:
        full = dumps({"command": rng.choice(["status", "scale", "send", "signal", "restart"]),
                      "target": "all", "data": rand_json(rng), "workers": 2})
        return full[:rng.randint(1, len(full) - 1)], "truncated-json"
    if k == 2:
        d = rng.choice([100, 999, 1000, 1001, 5000, 30000])
        op, cl = rng.choice([("[", "]"), ('{"a":', "}")])
        body = (op * d + "1" + cl * d).encode()
        if rng.random() < 0.5:
            return b'{"command":"send","target":"all","data":' + body + b"}", "deep-send-data-%d" % d
        return body, "deep-json-%d" % d
    if k == 3:
        return rng.choice([b"1", b'"status"', b"null", b"[]", b"true", b"[{\"command\":\"status\"}]", b"{}",
                           b'{"command":1}', b'{"command":null}', b'{"command":["status"]}',
                           b'{"command":"STATUS"}', b'{"command":"status\\u0000x"}', b'{"command":""}',
                           b'{"command":"' + b"z" * 60000 + b'"}', b'{"command":"status","command":"reload"}',
                           b'{"command":"\xff\xfe"}', b"\xef\xbb\xbf{\"command\":\"status\"}",
                           b'{"command":"status"} trailing', b'{"command":"status"}{"command":"status"}',
                           b'{"command":"status",}', b"\x00", b" \t\r", b"\r"]), "non-object/odd-command"
    if k in (4, 5):
        sig = rng.choice(SAFE_SIGNALS + BAD_SIGNALS)
        tgt = rng.choice([0, 1, "all"] + BAD_TARGETS)
        req = {"command": "signal"}
        if rng.random() < 0.9:
            req["signal"] = sig
        if rng.random() < 0.9:
            req["target"] = tgt
        return dumps(req), "signal"
    if k in (6, 7):
        req = {"command": "scale"}
        c = rng.randrange(4)
        bad = [0, -1, 4097, 1e300, -1e300, 1.5, "2", None, [], {}, True, 2 ** 32 + 2, 2 ** 64 + 2, -2 ** 63,
               4096.5, 0.999]
        if c == 0:
            req["workers"] = rng.choice(bad + [1, 2, 3])
        elif c == 1:
            req["delta"] = rng.choice([v for v in bad if v not in (0, True)] + [-1, 0, -100, 4097, "+1"])
        elif c == 2:
            req["workers"] = 2
            req["delta"] = rng.choice([0, 1, "x"])
        line = dumps(req)
        if rng.random() < 0.3:   # raw JSON numbers python cannot express
            line = ('{"command":"scale","%s":%s}' % (rng.choice(["workers", "delta"]),
                                                     rng.choice(RAW_NUMBERS_SCALE))).encode()
        return line, "scale"
    if k == 8:
        req = {"command": "restart"}
        if rng.random() < 0.8:
            req["target"] = rng.choice([0, 1, "all"] + BAD_TARGETS)
        return dumps(req), "restart"
    if k == 9:
        return dumps({"command": "reload", "extra": rand_json(rng)}), "reload"
    if k in (10, 11):
        req = {"command": "send"}
        c = rng.randrange(5)
        if c == 0:
            req["data"] = "x" * rng.choice([1000, 30000, 65000])
        elif c == 1:
            req["data"] = rand_json(rng)
        elif c == 2:
            req["data"] = [[["\u00e9\ud83d\ude00"] * 50] * 20] * 5
        elif c == 3:
            pass  # no data
        else:
            req["data"] = None
        req["target"] = rng.choice([0, 1, "all", "all"] + BAD_TARGETS)
        line = dumps(req)
        if len(line) > 65536:
            line = line[:65536]
        return line, "send"
    if k == 12:
        return dumps({"command": "status", "junk": rand_json(rng)}), "status+junk"
    if k == 13:
        return ('{"command":"signal","target":%s,"signal":%s}' % (
            rng.choice(RAW_NUMBERS + ["0", "1", '"all"']), rng.choice(RAW_NUMBERS + ['"CONT"']))).encode(), \
            "signal-rawnum"
    if k == 14:
        return ('{"command":"restart","target":%s}' % rng.choice(RAW_NUMBERS)).encode(), "restart-rawnum"
    return dumps({"command": rng.choice(["", "x", "status ", "rm -rf", "list", "top", "logs", "\u00e9",
                                         "a" * 1000])}), "unknown-command"


def check_result(findings, phase, req, res, lines, why):
    for o in lines:
        if isinstance(o, dict) and o.get("_non_utf8"):
            findings.add(phase, "reply line is not valid UTF-8 (request bytes echoed raw): %r" % o, req,
                         dedup="nonutf8")
    if res is None:
        findings.add(phase, "control request got no result: %s" % why, req, dedup="noresult:" + why[:30])
        return
    if res.get("ok") is False:
        err = res.get("error")
        if not isinstance(err, str) or not err.strip():
            findings.add(phase, "ok:false without an error message: %r" % res, req, dedup="noerr")
        elif "\n" in err:
            findings.add(phase, "multi-line error message: %r" % err[:200], req, dedup="multiline")


# --------------------------------------------------------------------------
# phase 1: control socket


def phase_control(m, rng, seconds, findings):
    P = "control"
    deadline = time.monotonic() + seconds
    stats = {"requests": 0, "ok": 0, "errors": 0, "closed": 0}
    statlock = threading.Lock()

    def one_conn(r):
        """A connection with a few pipelined or sequential requests."""
        try:
            s = ctl_connect(m.sock)
        except OSError as e:
            return "connect: %s" % e
        try:
            n = r.randint(1, 6)
            reqs = [gen_control_request(r) for _ in range(n)]
            mode = r.randrange(5)
            if mode == 0:        # pipelined
                s.sendall(b"".join(q + b"\n" for q, _ in reqs))
                buf = b""
                for q, lab in reqs:
                    res, lines, buf, why = read_until_result(s, buf, timeout=15)
                    with statlock:
                        stats["requests"] += 1
                    if res is None and any(len(x) > 65536 for x, _ in reqs):
                        break    # an over-long line later in the batch closes the connection (documented)
                    check_result(findings, P, q, res, lines, why or "")
                    if res is None:
                        break
            elif mode == 1:      # close mid-request
                q, _ = reqs[0]
                s.sendall(q[:r.randint(0, max(0, len(q) - 1))])
            elif mode == 2:      # send and never read, then close
                s.sendall(b"".join(q + b"\n" for q, _ in reqs))
            else:                # sequential
                buf = b""
                for q, lab in reqs:
                    s.sendall(q + b"\n")
                    res, lines, buf, why = read_until_result(s, buf, timeout=15)
                    with statlock:
                        stats["requests"] += 1
                        if res is not None:
                            stats["ok" if res.get("ok") else "errors"] += 1
                    check_result(findings, P, q, res, lines, why or "")
                    if res is None:
                        break
        except OSError:
            with statlock:
                stats["closed"] += 1
        finally:
            s.close()
        return None

    # -- structured cases first (each once) --
    # huge line > 64 KiB: error + close
    for size in (65536, 65537, 70000, 1 << 20):
        s = ctl_connect(m.sock)
        q = b'{"command":"status","pad":"' + b"p" * size + b'"}'
        try:
            s.sendall(q + b"\n")
        except OSError:
            pass
        res, lines, _, why = read_until_result(s, timeout=5)
        if res is None or res.get("ok") is not False or "longer" not in str(res.get("error")):
            findings.add(P, "over-long request line: expected an ok:false 'longer than' error, got %r (%s)"
                         % (res, why), "status line padded to %d bytes" % size, dedup="huge")
        s.close()
    # exactly at the limit: 65536 bytes must be accepted
    s = ctl_connect(m.sock)
    q = b'{"command":"status","pad":"'
    q += b"p" * (65536 - len(q) - 2) + b'"}'
    s.sendall(q + b"\n")
    res, lines, _, why = read_until_result(s, timeout=5)
    if res is None or res.get("ok") is not True:
        findings.add(P, "a 65536-byte request line (the documented maximum) was refused: %r %s" % (res, why),
                     "status padded to exactly 65536 bytes")
    s.close()
    # the connection stays usable after a malformed request
    s = ctl_connect(m.sock)
    s.sendall(b"garbage\n{\"command\":\"status\"}\n")
    r1, _, buf, w1 = read_until_result(s)
    r2, _, _, w2 = read_until_result(s, buf)
    if not (r1 and r1.get("ok") is False and r2 and r2.get("ok") is True):
        findings.add(P, "connection not usable after a malformed request: %r / %r (%s %s)" % (r1, r2, w1, w2),
                     b"garbage\n{\"command\":\"status\"}\n")
    s.close()

    # many concurrent connections (> 64)
    conns = []
    refused = 0
    for i in range(100):
        try:
            conns.append(ctl_connect(m.sock, timeout=3))
        except OSError:
            refused += 1
    time.sleep(0.3)
    rc, out, err, dt = m.ctl("status", "--json")
    got_too_many = 0
    for c in conns:
        c.settimeout(0.05)
        try:
            d = c.recv(4096)
            if b"too many" in d:
                got_too_many += 1
        except OSError:
            pass
    log("  100 concurrent connections: %d refused at connect, %d got 'too many control connections'; "
        "status meanwhile rc=%s in %.2fs" % (refused, got_too_many, rc, dt))
    # When the table is full corrald evicts the longest idle client rather
    # than refuse the newest: status must still answer, quickly.
    if rc != 0 or dt > 2.0:
        findings.add(P, "status rc=%s in %.2fs with 100 open control connections" % (rc, dt), "100 connections")
    # a 101st client must still eventually get through when others close; and status with 64 idle conns
    for c in conns:
        c.close()
    fdc = fd_count(m.pid)

    # clients that pipeline many requests and never read: must be cut off, not block
    hogs = []
    for i in range(3):
        s = ctl_connect(m.sock)
        s.setblocking(False)
        payload = b'{"command":"status"}\n' * 20000
        sent = 0
        t = time.monotonic()
        while sent < len(payload) and time.monotonic() - t < 5:
            try:
                sent += s.send(payload[sent:sent + 65536])
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                break
        hogs.append(s)
    t = time.monotonic()
    rc, out, err, dt = m.ctl("status", "--json")
    if rc != 0:
        findings.add(P, "status failed (rc=%s, %s) while 3 clients pipelined 20000 requests without reading" %
                     (rc, err.strip()), b'{"command":"status"}\n' * 20000)
    time.sleep(1.0)
    cut = 0
    for s in hogs:
        # drain: the master must have closed the connection at CONTROL_WRITE_MAX (4 MiB)
        s.setblocking(True)
        s.settimeout(3)
        total = 0
        try:
            while True:
                d = s.recv(1 << 20)
                if not d:
                    cut += 1
                    break
                total += len(d)
        except ConnectionResetError:
            cut += 1         # closed with our unread requests still queued
        except OSError:
            pass
        s.close()
    log("  non-reading clients: %d/3 cut off; status meanwhile %.2fs; rss now %d kB" % (cut, dt, rss_kb(m.pid)))
    # corrald stops reading a client whose replies are not read (it is not
    # cut off, but costs at most its bounded output): status must answer.
    if dt > 2.0:
        findings.add(P, "status took %.2fs while 3 clients pipelined without reading" % dt,
                     b'{"command":"status"}\n' * 20000)

    # randomized rest, with some concurrency and rapid rollouts interleaved with scale
    def rollout_storm(r, until):
        while time.monotonic() < until:
            q = r.choice([b'{"command":"reload"}', b'{"command":"restart","target":"all"}',
                          b'{"command":"restart","target":0}', b'{"command":"scale","workers":3}',
                          b'{"command":"scale","workers":2}', b'{"command":"scale","delta":-1}',
                          b'{"command":"scale","workers":1}'])
            try:
                s = ctl_connect(m.sock)
                s.sendall(q + b"\n")
                if r.random() < 0.3:
                    s.close()        # hang up while the rollout runs
                    continue
                res, lines, _, why = read_until_result(s, timeout=30)
                check_result(findings, P, q, res, lines, why or "")
                s.close()
            except OSError:
                pass
            time.sleep(r.random() * 0.2)

    storm_until = time.monotonic() + max(2.0, (deadline - time.monotonic()) * 0.4)
    threads = [threading.Thread(target=rollout_storm, args=(random.Random(rng.random()), storm_until))
               for _ in range(2)]
    for t in threads:
        t.start()
    n_conn = 0
    while time.monotonic() < deadline:
        batch = [threading.Thread(target=one_conn, args=(random.Random(rng.random()),)) for _ in range(8)]
        for t in batch:
            t.start()
        for t in batch:
            t.join(60)
        n_conn += len(batch)
        if not m.alive():
            break
        rc, out, err, dt = m.ctl("status", "--json")
        if rc is None:
            findings.add(P, "status did not answer within 2 s during the control fuzz", None, dedup="block")
    for t in threads:
        t.join(60)
    log("  control fuzz: %d connections, %s" % (n_conn, stats))
    # restore two workers
    rc, out, err, dt = m.ctl("scale", "2", timeout=5)
    return fdc


# --------------------------------------------------------------------------
# phase 2: notify socket


def send_dgram(sock, addr, data, fds=None):
    anc = []
    if fds:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
    return sock.sendmsg([data], anc, 0, addr)


def phase_notify(m, rng, seconds, findings):
    P = "notify"
    deadline = time.monotonic() + seconds
    pids = m.worker_pids()
    env = proc_environ(pids[0])
    path = env["NOTIFY_SOCKET"]
    addr = ("\0" + path[1:]) if path.startswith("@") else path
    st0, _ = m.status()
    slots0 = [(s["pid"], s["status"]) for s in st0["slots"]]
    fds0 = fd_count(m.pid)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    devnull = [os.open("/dev/null", os.O_RDONLY) for _ in range(250)]
    sent = 0
    fixed = [b"", b"\0", b"READY=1\0", b"\0READY=1", b"READY=1", b"STATUS=fuzzed by a stranger",
             b"STOPPING=1", b"WATCHDOG=trigger", b"WATCHDOG=1", b"ERRNO=5", b"ERRNO=-1", b"ERRNO=99999999999",
             b"ERRNO=abc", b"MAINPID=1", b"FDSTORE=1", b"BARRIER=1", b"=", b"==", b"\n\n\n", b"READY=1\nSTOPPING=1",
             b"STATUS=" + b"s" * 4089, b"STATUS=" + b"s" * 4090, b"x" * 4096, b"x" * 4097, b"y" * 65000,
             b"STATUS=\xff\xfe\n", b"EXTEND_TIMEOUT_USEC=1", b"READY=1" * 600]
    for d in fixed:
        for nf in (0, 1, 16, 17, 250):
            try:
                send_dgram(s, addr, d, devnull[:nf] if nf else None)
                sent += 1
            except OSError as e:
                if len(d) < 60000:
                    log("  sendmsg %r with %d fds: %s" % (d[:30], nf, e))
    # floods
    s.setblocking(False)
    for flood in range(2):
        n = 0
        t = time.monotonic()
        while n < 10000 and time.monotonic() - t < 10:
            d = rng.choice([b"READY=1", b"WATCHDOG=1", bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))),
                            b"STATUS=%d" % n])
            try:
                send_dgram(s, addr, d, devnull[:rng.choice([0, 0, 0, 3])] or None)
                n += 1
            except BlockingIOError:
                time.sleep(0.001)
            except OSError:
                n += 1
        sent += n
        rc, out, err, dt = m.ctl("status", "--json")
        log("  notify flood %d: %d datagrams in %.2fs; status during flood rc=%s in %.2fs" %
            (flood, n, time.monotonic() - t, rc, dt))
        if rc != 0:
            findings.add(P, "status did not answer during a notify flood (rc=%s, %s)" % (rc, err.strip()),
                         "10000 datagrams")
    s.setblocking(True)
    s.settimeout(1)
    # random rest
    while time.monotonic() < deadline:
        k = rng.randrange(4)
        if k == 0:
            d = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 5000)))
        elif k == 1:
            d = b"\n".join(rng.choice([b"READY=1", b"STATUS=" + bytes(rng.getrandbits(8) for _ in range(20)),
                                       b"STOPPING=1", b"WATCHDOG=trigger", b"ERRNO=" + str(rng.randint(-5, 1 << 40)).encode(),
                                       b"A=B", b"noeq", b"", b"=x"]) for _ in range(rng.randint(1, 20)))
        elif k == 2:
            d = b"STATUS=" + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200))).replace(b"\0", b"")
        else:
            d = b"READY=1\n" * rng.randint(1, 600)
        try:
            send_dgram(s, addr, d, devnull[:rng.choice([0, 0, 1, 20, 250])] or None)
            sent += 1
        except OSError:
            pass
    for fd in devnull:
        os.close(fd)
    s.close()
    time.sleep(0.5)
    st1, err = m.status()
    log("  notify: %d datagrams sent" % sent)
    if st1:
        slots1 = [(x["pid"], x["status"]) for x in st1["slots"]]
        if slots1 != slots0:
            findings.add(P, "a non-worker's datagrams changed the workers: %r -> %r" % (slots0, slots1),
                         b"READY=1 / STATUS= / STOPPING=1 / WATCHDOG=trigger from a non-worker")
    fds1 = fd_count(m.pid)
    if fds1 > fds0:
        findings.add(P, "master fd count grew from %d to %d after datagrams carrying SCM_RIGHTS" % (fds0, fds1),
                     "datagrams with 1..250 fds")
    newlog = m.new_log()
    if "dropped a datagram" not in newlog:
        findings.add(P, "no 'dropped a datagram' log line for garbage datagrams", None)


# --------------------------------------------------------------------------
# phase 3: worker IPC (second instance with a python worker)

IPC_WORKER = r'''
import json, os, random, socket, sys, threading, time
fd = int(os.environ["CORRAL_IPC_FD"])
ipc = socket.socket(fileno=fd)
ipc.setblocking(True)
out = os.environ["FUZZ_DIR"]
wlock = threading.Lock()
stall_until = [0.0]

def notify(msg):
    p = os.environ.get("NOTIFY_SOCKET")
    if not p:
        return
    if p.startswith("@"):
        p = "\0" + p[1:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(msg.encode(), p)
    s.close()

def w(b):
    with wlock:
        ipc.sendall(b)

def run(mode, arg, marker):
    rng = random.Random(arg.get("seed", 0))
    if mode == "garbage":
        for _ in range(200):
            w(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))) + b"\n")
    elif mode == "huge":
        w(b'{"type":"message","pad":"' + b"h" * arg.get("n", 70000) + b'"}\n')
    elif mode == "exact":
        body = b'{"type":"message","pad":"'
        body += b"e" * (65536 - len(body) - 2) + b'"}'
        w(body + b"\n")
    elif mode == "nonewline":
        t = time.monotonic()
        total = 0
        while time.monotonic() - t < arg.get("secs", 2):
            w(b"n" * 65536)
            total += 65536
        w(b"\n")
    elif mode == "badutf8":
        for b in (b'{"type":"message","x":"\xff\xfe\xc0\xaf"}', b'\xff\xff\xff', b'{"x":"\xed\xa0\x80"}',
                  b'{"type":"message","x":"\\ud800"}', b'{"x":"\x1b[31mred\x1b[0m\r\x07"}', b'{"a":"\x00b"}',
                  b'{"type":"message","data":"\\u0000"}', b"\x00\x00\x00"):
            w(b + b"\n")
    elif mode == "nonobject":
        for b in (b"1", b'"s"', b"null", b"[]", b"[1,2]", b"true", b"{", b"}", b"{}", b'{"type":1}',
                  b'{"type":"message"} x', b"\r", b" ", b"\t{}", b"[" * 5000, b"{\"a\":" * 2000 + b"1" + b"}" * 2000):
            w(b + b"\n")
    elif mode == "flood":
        line = b'{"type":"message","flood":1}\n'
        w(line * arg.get("n", 10000))
    elif mode == "stall":
        stall_until[0] = time.monotonic() + arg.get("secs", 3)
    elif mode == "exit-midline":
        w(b'{"type":"message","partial":')
        os._exit(0)
    w(('{"type":"message","data":{"marker":"%s"}}\n' % marker).encode())

def reader():
    buf = b""
    bad = 0
    got = 0
    while True:
        now = time.monotonic()
        if now < stall_until[0]:
            time.sleep(stall_until[0] - now)
            continue
        d = ipc.recv(1 << 20)
        if not d:
            os._exit(0)
        buf += d
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            got += 1
            try:
                o = json.loads(line)
            except ValueError:
                bad += 1
                with open(os.path.join(out, "ipc-torn.%d" % os.getpid()), "ab") as f:
                    f.write(b"%d bytes: %r\n" % (len(line), line[:120]))
                continue
            data = o.get("data") if isinstance(o, dict) else None
            if isinstance(data, dict) and "fuzz" in data:
                threading.Thread(target=run, args=(data["fuzz"], data, data.get("marker", "")), daemon=True).start()
            with open(os.path.join(out, "ipc-count.%d" % os.getpid()), "w") as f:
                f.write("%d %d\n" % (got, bad))

notify("READY=1")
threading.Thread(target=reader, daemon=True).start()
import signal
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
while True:
    time.sleep(3600)
'''


def phase_ipc(m, rng, seconds, findings, tmp):
    P = "ipc"
    deadline = time.monotonic() + seconds
    m.new_log()
    modes = [("garbage", {}), ("huge", {"n": 70000}), ("huge", {"n": 1 << 20}), ("exact", {}),
             ("nonewline", {"secs": 2}), ("badutf8", {}), ("nonobject", {}), ("flood", {"n": 10000})]
    rng.shuffle(modes)
    k = 0

    def drive(mode, arg, target):
        nonlocal k
        k += 1
        marker = "mk-%s-%d" % (mode, k)
        arg = dict(arg, fuzz=mode, marker=marker, seed=rng.randrange(1 << 30))
        q = dumps({"command": "send", "target": target, "data": arg})
        s = ctl_connect(m.sock)
        s.sendall(q + b"\n")
        res, lines, _, why = read_until_result(s)
        s.close()
        if not res or not res.get("ok"):
            findings.add(P, "send to the IPC worker failed: %r %s" % (res, why), q, dedup="sendfail")
            return
        t = time.monotonic()
        n_targets = len(res.get("pids", []))
        if mode == "exit-midline":
            return
        if mode == "flood":
            # What a worker makes the master log is rate-limited (1000 lines
            # per 10 s): its marker may be suppressed. The master must answer.
            rc, _, err, dt = m.ctl("status", "--json")
            if rc != 0 or dt > 2.0:
                findings.add(P, "status rc=%s in %.2fs after an IPC flood" % (rc, dt), arg, dedup="flood")
            # Let the flooding worker's log budget refill (10 s interval),
            # or the next mode's marker is suppressed too.
            time.sleep(10.5)
            return
        while time.monotonic() - t < 8:
            if m.log_text().count('"marker":"%s"' % marker) >= n_targets:
                break
            time.sleep(0.1)
        else:
            findings.add(P, "after IPC mode %r the worker's next valid message was not logged within 8 s "
                         "(IPC stream desynchronised or master blocked)" % mode, arg, dedup="marker:" + mode)
        rc, out, err, dt = m.ctl("status", "--json")
        if rc != 0:
            findings.add(P, "status failed after IPC mode %r: rc=%s %s" % (mode, rc, err.strip()), arg)

    for mode, arg in modes:
        if time.monotonic() > deadline:
            break
        drive(mode, arg, rng.choice([0, 1, "all"]))
    # master -> worker while the worker does not read: sends must not block, lines must not tear
    drive("stall", {"secs": 3}, 0)
    t = time.monotonic()
    results = []
    errors = set()
    for i in range(60):
        s = ctl_connect(m.sock)
        s.sendall(dumps({"command": "send", "target": 0, "data": {"i": i, "pad": "B" * rng.randint(100, 60000)}})
                  + b"\n")
        res, lines, _, why = read_until_result(s)
        s.close()
        results.append(bool(res and res.get("ok")))
        if res and not res.get("ok"):
            errors.add(res.get("error"))
    if any("no running process" in (e or "") for e in errors):
        findings.add(P, "send to a live worker whose IPC buffer is full fails with a misleading error: %r "
                     "(the worker is running; the real cause is EAGAIN / not reading)" % sorted(errors),
                     '`send 0 {"pad":...60 KB}` x60 while worker 0 does not read')
    dt = time.monotonic() - t
    log("  60 x 60 KB sends to a stalled worker: %d ok, %d refused, %.2fs" %
        (sum(results), len(results) - sum(results), dt))
    if dt > 20:
        findings.add(P, "60 sends to a worker that does not read took %.1fs (master blocked?)" % dt, None)
    time.sleep(4)
    torn = [f for f in os.listdir(os.path.join(tmp, "ipcfuzz")) if f.startswith("ipc-torn.")]
    if torn:
        with open(os.path.join(tmp, "ipcfuzz", torn[0]), "rb") as f:
            sample = f.read(400)
        findings.add(P, "a worker that stops reading CORRAL_IPC_FD receives torn/partial JSON lines once it "
                     "resumes (master's short sendmsg leaves half a line; next message is glued to it): %r"
                     % sample, '60 x `send 0 {"i":N,"pad":"B"*60000}` while worker 0 does not read for 3 s')
    # random garbage mixes until the deadline
    while time.monotonic() < deadline - 1:
        mode, arg = rng.choice(modes)
        drive(mode, arg, rng.choice([0, 1]))
    # a worker that exits in the middle of a line is replaced
    drive("exit-midline", {}, 1)
    newlog = m.log_text()
    # Bad input is logged at a bounded rate: a kind may be behind a
    # "suppressed" summary.
    for want in ("malformed IPC line", "longer than 65536 bytes dropped"):
        if want not in newlog and "suppressed" not in newlog:
            findings.add(P, "no log line containing %r for bad IPC input" % want, None)


# --------------------------------------------------------------------------
# phase 4: config files


def mutate_config(rng, base):
    text = json.dumps(base, indent=rng.choice([None, 1, 2]))
    k = rng.randrange(14)
    if k == 0:
        b = bytearray(text.encode())
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b), "bitflip"
    if k == 1:
        return text.encode()[:rng.randrange(len(text))], "truncate"
    if k == 2:
        key = rng.choice(list(base.keys()))
        return (text[:-1] + ', "%s": %s}' % (key, json.dumps(base[key]))).encode(), "duplicate-key " + key
    if k == 3:
        c = json.loads(text)
        path = rng.choice([("workers",), ("exec",), ("listen",), ("name",), ("env",), ("balance",),
                           ("ready", "mode"), ("ready", "timeout_ms"), ("stop", "signal"), ("stop", "timeout_ms"),
                           ("restart", "limit"), ("restart", "window_ms"), ("restart", "backoff_ms"),
                           ("restart", "on_giveup"), ("watchdog_ms",), ("recycle", "max_requests"),
                           ("recycle", "max_rss_mb"), ("reload", "max_surge"), ("control",), ("cwd",),
                           ("ready",), ("restart",), ("nope",), ("ready", "nope")])
        o = c
        for p in path[:-1]:
            if not isinstance(o.get(p), dict):
                o[p] = {}
            o = o[p]
        o[path[-1]] = rand_json(rng) if rng.random() < 0.7 else rng.choice(
            [10 ** 30, -1, 0, 2 ** 53 + 1, 1.0, 4096, 4097, "auto", "SIGKILL", "SIGFOO", "9", "RTMIN+3",
             [1, 2, 3], [10, 1], [-1, 5], ["a"], {"x": "y"}, {"K": 1}, "\u00e9\u4e2d\ud83d\ude00",
             "unix:/" + "u" * 200, "[::1]:80", "x=127.0.0.1:1", "=1", "0", "65535", "65536", "a" * 65])
        return json.dumps(c).encode(), "wrong-type " + ".".join(path)
    if k == 4:
        i = rng.randrange(len(text))
        return (text[:i] + rng.choice(["\u00e9", "\ud83d\ude00", "\u2028", "\ufeff", "\\u0000", "\\ud800",
                                       "\\", "\"", "\x00", "\x7f"]) + text[i:]).encode("utf-8", "surrogatepass"), \
            "unicode-insert"
    if k == 5:
        return text.replace('"exec": [', '"exec": ["a\\u0000b", ', 1).encode(), "escaped-nul"
    if k == 6:
        return (text[:-1] + ', "workers": 1' + "0" * rng.choice([5, 20, 400]) + "}").encode(), "huge-number"
    if k == 7:
        d = rng.choice([500, 1000, 1001, 100000])
        return ('{"env": ' + '{"a": ' * d + '"x"' + "}" * d + "}").encode(), "deep-%d" % d
    if k == 8:
        return rng.choice([b"", b" ", b"null", b"[]", b"1", b'"x"', b"{}", b"{", b"}", b"\xef\xbb\xbf{}",
                           b'{"exec":["x"]}garbage', b'{"exec":["x"]}\n\n{"exec":["y"]}', b"\xff\xfe{\x00}",
                           b'{"exec":["x"],}', b"{'exec':['x']}", b'{"exec":["x"] /* c */}',
                           b'{"exec":["x"],"workers":NaN}', b'{"exec":["x"],"workers":Infinity}',
                           b'{"exec":["x"],"workers":-0}', b'{"exec":["x"],"workers":1e0}',
                           b'{"exec":["x"],"workers":0x10}', b'{"exec":["x"],"\\n\\u001b[31mkey":1}',
                           b'{"exec":["x"],"' + b"k" * 5000 + b'":1}', b'{"exec":["x"],"env":{"' + b"k" * 5000 + b'":1}}']), \
            "fixed-odd"
    if k == 9:
        return (text[:-1] + ',' + '"pad":"' + "p" * (1 << 20) + '"}').encode(), "over-1MiB"
    if k == 10:
        t = text.encode()
        return t + b" " * ((1 << 20) - len(t)), "exactly-1MiB-valid"
    if k == 11:
        return (text[:-1] + ', "env": {' + ",".join('"K%d":"v"' % i for i in range(20000)) + "}}").encode(), \
            "many-env"
    if k == 12:
        return (text[:-1] + ', "listen": [' + ",".join('"127.0.0.1:%d"' % (1000 + i) for i in range(3000)) +
                "]}").encode(), "many-listen"
    return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 2000))), "random-bytes"


def run_check_config(corrald, path, findings, label, inp, timeout=2.0):
    t = time.monotonic()
    try:
        p = subprocess.run([corrald, "--check-config", path], capture_output=True, timeout=timeout,
                           env=clean_env(), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        findings.add("config", "`corrald --check-config %s` hung (> %.0fs; killed)" % (label, timeout), inp,
                     dedup="hang:" + label.split()[0])
        return None
    dt = time.monotonic() - t
    out = (p.stdout + p.stderr).decode(errors="replace")
    lines = [l for l in out.split("\n") if l.strip()]
    if SANITIZER_RE.search(out) or p.returncode < 0:
        findings.add("config", "check-config %s: crash/sanitizer (rc=%s): %s" % (label, p.returncode, out[:600]),
                     inp, dedup="crash:" + out[:80])
    elif p.returncode not in (0, 1):
        findings.add("config", "check-config %s: exit %s (expected 0/1): %r" % (label, p.returncode, out[:200]),
                     inp, dedup="rc%s" % p.returncode)
    elif len(lines) != 1:
        findings.add("config", "check-config %s: %d-line message (expected one line): %r" %
                     (label, len(lines), out[:300]), inp, dedup="lines:" + label.split()[0])
    elif p.returncode == 1 and path not in lines[0]:
        findings.add("config", "check-config %s: message does not name the file: %r" % (label, lines[0][:200]),
                     inp, dedup="noname")
    if dt > 2:
        findings.add("config", "check-config %s took %.1fs" % (label, dt), inp, dedup="slow")
    return p.returncode, (lines[0] if lines else "")


def phase_config(m, rng, seconds, findings, corrald, tmp):
    P = "config"
    deadline = time.monotonic() + seconds
    d = os.path.join(tmp, "configs")
    os.makedirs(d)
    base = {"name": "fz", "exec": ["/bin/true", "a"], "workers": 2, "listen": ["web=127.0.0.1:18080"],
            "balance": "shared", "env": {"A": "b"}, "ready": {"mode": "notify", "timeout_ms": 1000},
            "stop": {"signal": "SIGTERM", "timeout_ms": 1000},
            "restart": {"limit": 3, "window_ms": 1000, "backoff_ms": [10, 100], "on_giveup": "stay"},
            "watchdog_ms": 0, "recycle": {"max_requests": 0, "max_rss_mb": 0}, "reload": {"max_surge": 1},
            "control": "/tmp/x.sock", "cwd": "/"}
    good = os.path.join(d, "good.json")
    with open(good, "w") as f:
        json.dump(base, f)
    r = run_check_config(corrald, good, findings, "good.json", None)
    if r and r[0] != 0:
        findings.add(P, "the base config was rejected: %r" % (r,), base)
    # special files
    fifo = os.path.join(d, "fifo.json")
    os.mkfifo(fifo)
    os.symlink(good, os.path.join(d, "link.json"))
    os.symlink("loop.json", os.path.join(d, "loop.json"))
    os.symlink("/nonexistent/x.json", os.path.join(d, "dangling.json"))
    os.mkdir(os.path.join(d, "dir.json"))
    specials = [(os.path.join(d, "dir.json"), "directory"), ("/dev/zero", "/dev/zero"), ("/dev/null", "/dev/null"),
                (fifo, "fifo (nobody writes)"), (os.path.join(d, "link.json"), "symlink to a valid file"),
                (os.path.join(d, "loop.json"), "symlink loop"), (os.path.join(d, "dangling.json"), "dangling symlink"),
                ("", "empty path"), ("/proc/self/status", "/proc file"), ("/dev/stdin", "/dev/stdin"),
                (d + "/" + "n" * 5000, "5000-char path")]
    for path, label in specials:
        run_check_config(corrald, path, findings, label, "corrald --check-config " + path[:100])
    n = 0
    statlock = threading.Lock()
    counts = {"valid": 0, "invalid": 0}

    def worker(r, wid):
        nonlocal n
        i = 0
        while time.monotonic() < deadline - 4:
            data, label = mutate_config(r, base)
            path = os.path.join(d, "m%d-%d.json" % (wid, i))
            i += 1
            with open(path, "wb") as f:
                f.write(data)
            res = run_check_config(corrald, path, findings, label, data)
            with statlock:
                n += 1
                if res:
                    counts["valid" if res[0] == 0 else "invalid"] += 1
            os.unlink(path)

    ths = [threading.Thread(target=worker, args=(random.Random(rng.random()), i)) for i in range(4)]
    for t in ths:
        t.start()
    # meanwhile: reload the live master with broken configs; each must fail and change nothing
    live = 0
    while time.monotonic() < deadline - 4:
        data, label = mutate_config(rng, m.cfg)
        probe = os.path.join(d, "live-probe.json")
        with open(probe, "wb") as f:
            f.write(data)
        pr = run_check_config(corrald, probe, findings, label, data)
        if not pr or pr[0] != 1:
            continue     # only invalid configs reach the live master (a valid one might ask for 4096 workers)
        with open(m.cfg_path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(m.cfg_path + ".tmp", m.cfg_path)
        s = ctl_connect(m.sock)
        s.sendall(b'{"command":"reload"}\n')
        res, lines, _, why = read_until_result(s, timeout=30)
        s.close()
        live += 1
        if res is None:
            findings.add(P, "reload with a mutated config got no result: %s" % why, data, dedup="reload-nores")
        elif res.get("ok") is False and ("\n" in res.get("error", "") or not res.get("error")):
            findings.add(P, "reload error not one clear line: %r" % res.get("error"), data, dedup="reload-msg")
        m.write_config()
        ok, info = m.wait_healthy(within=25)
        if not ok:
            findings.add(P, "master unhealthy after reload with mutated config (%s): %s" % (label, info), data,
                         dedup="reload-unhealthy")
            break
    for t in ths:
        t.join(60)
    log("  config: %d mutated files (%s), %d live reloads with mutated configs" % (n, counts, live))
    # a config whose env object has many keys: the duplicate-key check must not block a live master
    nkeys = 25000
    big = json.dumps(m.cfg)[:-1] + ', "env": {' + ",".join('"K%d":"v"' % i for i in range(nkeys)) + \
        '}, "zz-invalid": 1}'
    m.write_config(big)
    s = ctl_connect(m.sock)
    s.sendall(b'{"command":"reload"}\n')
    time.sleep(0.2)
    t = time.monotonic()
    st, err = m.status(timeout=30)
    lat = time.monotonic() - t
    res, lines, _, why = read_until_result(s, timeout=120)
    s.close()
    log("  reload with a %d-key env (%d bytes): status latency %.2fs, result %r" % (nkeys, len(big), lat,
                                                                                   res and res.get("error")))
    if lat > 2:
        findings.add(P, "reload of a %d-byte config with %d env keys blocks the master for %.1fs (status "
                     "latency; quadratic duplicate-key check in p_env)" % (len(big), nkeys, lat),
                     '{"exec":[...],"env":{"K0":"v",...,"K24999":"v"},"zz-invalid":1} + corralctl reload')
    m.write_config()
    # the live master's config replaced by a fifo, then reload: must not block the master
    os.unlink(m.cfg_path)
    os.mkfifo(m.cfg_path)
    s = ctl_connect(m.sock)
    s.sendall(b'{"command":"reload"}\n')
    time.sleep(0.3)
    st, err = m.status(timeout=2)
    blocked = st is None
    unblock = None
    if blocked:
        findings.add(P, "reload while the config file is a fifo blocks the whole master: status does not answer "
                     "(%s)" % err, "mkfifo CONFIG; corralctl reload")

        def feed():
            try:
                fdw = os.open(m.cfg_path, os.O_WRONLY)
                os.write(fdw, json.dumps(m.cfg).encode())
                os.close(fdw)
            except OSError:
                pass
        unblock = threading.Thread(target=feed, daemon=True)
        unblock.start()
        unblock.join(5)
    res, lines, _, why = read_until_result(s, timeout=30)
    s.close()
    log("  reload with a fifo config: blocked=%s, result %r" % (blocked, res))
    os.unlink(m.cfg_path)
    m.write_config()


# --------------------------------------------------------------------------
# phase 5: CLI


CORRALD_FLAGS = ["-w", "--workers", "-l", "--listen", "-b", "--balance", "-n", "--name", "--control", "--log",
                 "-c", "--config", "--check-config", "--version", "--help", "-h", "--bogus", "-x", "--", "-",
                 "--workers=", "--listen=", "-w0", "-wauto", "--log=", "--name=", "-", "-vvv", "--conf", "--wor"]
CLI_VALUES = ["0", "-1", "auto", "AUTO", "4096", "4097", "1e3", "2.5", "", " ", "x" * 5000, "127.0.0.1:99999",
              "127.0.0.1:0", "[::1]:80", "[::1", "unix:", "unix:/" + "u" * 200, "a=b=c", "=127.0.0.1:1",
              "\xff", "\u00e9", "shared", "round-robin", "least-conn", "ip-hash", "journal", "stderr", "auto", "file",
              "/nonexistent", "/dev/zero", "-", "--", "99999999999999999999", "-0", "+1", "0x10", "1 ", "name/x",
              ".hidden", "a" * 65, "web=1.2.3.4:80", "localhost:80", "*:80", "0.0.0.0:-1", ":80", "80"]
CORRALCTL_CMDS = ["status", "ls", "reload", "restart", "scale", "signal", "send", "logs", "list", "bogus", "",
                  "STATUS", "--json", "-i", "-s", "-h", "--help", "--version", "-n", "-w", "-f", "--bogus"]


def run_cli(cmd, env, findings, label, timeout=3.0, kill_ok=False):
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             env=env, start_new_session=True)
    except (ValueError, OSError):
        return None
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            out, err = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
        text = (out + err).decode(errors="replace")
        if SANITIZER_RE.search(text):
            findings.add("cli", "%s: sanitizer output after it ran and was stopped: %s" % (label, text[-600:]), cmd,
                         dedup="san:" + text[-80:])
        elif not kill_ok:
            findings.add("cli", "%s: still running after %.0fs" % (label, timeout), cmd, dedup="hang:" + label)
        return "running"
    text = (out + err).decode(errors="replace")
    rc = p.returncode
    if SANITIZER_RE.search(text) or rc < 0:
        findings.add("cli", "%s: crash/sanitizer rc=%s: %s" % (label, rc, text[-600:]), cmd,
                     dedup="crash:%s:%s" % (label, text[-60:]))
    elif rc not in (0, 1, 2, 3):
        findings.add("cli", "%s: unexpected exit %s: %r" % (label, rc, text[:200]), cmd, dedup="rc:%s" % rc)
    elif rc in (1, 2, 3) and not err.strip():
        findings.add("cli", "%s: exit %d without any message on stderr" % (label, rc), cmd,
                     dedup="nomsg:%s:%d" % (label, rc))
    return rc


def phase_cli(m, rng, seconds, findings, corrald, corralctl, tmp):
    deadline = time.monotonic() + seconds
    d = os.path.join(tmp, "cli")
    os.makedirs(d)
    hist = {"corrald": {}, "corralctl": {}}
    i = 0
    while time.monotonic() < deadline:
        i += 1
        if rng.random() < 0.5:
            args = []
            for _ in range(rng.randint(0, 6)):
                f = rng.choice(CORRALD_FLAGS)
                args.append(f)
                if rng.random() < 0.7:
                    args.append(rng.choice(CLI_VALUES))
            args = [a for a in args if "\0" not in a]
            # a master that does start must not touch anything outside tmp
            ctlp = os.path.join(d, "c%d.sock" % i)
            if "--" in args:
                # a master that really starts gets few workers
                args = [("3" if a in ("4096", "auto", "AUTO", "1e3") else a) for a in args]
                j = args.index("--")
                args = args[:j] + ["--control", ctlp] + args[j:] + ["/bin/sleep", "30"]
            else:
                args += ["--control", ctlp]
            env = clean_env({"XDG_RUNTIME_DIR": d, "RUNTIME_DIRECTORY": d})
            try:
                rc = run_cli([corrald, "--log", "stderr"] + args, env, findings, "corrald", timeout=2.0,
                             kill_ok=True)
            except ValueError:
                continue
            hist["corrald"][rc] = hist["corrald"].get(rc, 0) + 1
        else:
            live = rng.random() < 0.5
            args = []
            for _ in range(rng.randint(0, 5)):
                a = rng.choice(CORRALCTL_CMDS + CLI_VALUES + ['{"a":1}', "[" * 3000, '"x"', "all", "0", "1"])
                args.append(a)
            if live:
                # keep the live instance alive: only harmless valid commands can reach it
                bad = {"reload", "restart", "scale", "signal", "send", "-i", "-s", "logs", "-f"}
                args = [a for a in args if a not in bad]
                if rng.random() < 0.5:
                    args = [rng.choice(["scale", "signal", "restart", "send"])] + rng.choice(
                        [["0"], ["4097"], ["-5000"], ["+4097"], ["1e300"], ["x"], ["CONT", "99"], ["FOO", "all"],
                         ["0", "all"], ["65", "0"], ["99"], ["-1"], ["all", "[" * 3000], ["all", "{bad"],
                         ["9", "{}"], [], ["a", "b", "c", "d"], ["CONT", "0", "extra"], ["--", "-5000"]])
                cmd = [corralctl, "-s", m.sock] + args
            else:
                cmd = [corralctl, "-s", os.path.join(d, "none.sock")] + args
            env = clean_env({"XDG_RUNTIME_DIR": d})
            try:
                rc = run_cli(cmd, env, findings, "corralctl", timeout=3.0, kill_ok=("logs" in args or "top" in args))
            except ValueError:
                continue
            hist["corralctl"][rc] = hist["corralctl"].get(rc, 0) + 1
    m.ctl("scale", "2", timeout=5)
    log("  cli: %d runs, exit codes %s" % (i, hist))


# --------------------------------------------------------------------------


def check_master(m, findings, phase, n=2):
    ok, info = m.wait_healthy(n=n, within=25)
    text = m.log_text()
    if SANITIZER_RE.search(text):
        idx = SANITIZER_RE.search(text).start()
        findings.add(phase, "sanitizer output in %s's log: %s" % (m.name, text[max(0, idx - 200):idx + 1500]), None,
                     dedup="san:" + m.name)
    if not m.alive():
        findings.add(phase, "%s died (rc=%s); log tail: %s" % (m.name, m.proc.returncode, text[-1500:]), None,
                     dedup="died:" + m.name)
        return False
    if not ok:
        findings.add(phase, "%s not healthy after the phase: %s" % (m.name, info), None, dedup="unhealthy")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=80, help="total fuzzing time (default 80)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--build", default=os.path.join(SRC, "build-sanitize"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--phases", default="control,notify,ipc,config,cli")
    ap.add_argument("--tap", action="store_true", help="TAP output: one case per phase and one for the exit")
    a = ap.parse_args()
    a.build = os.path.abspath(a.build)
    if a.tap:
        return tap_main(a)
    return run(a)


class _TapComments:
    """stdout for --tap: every line the driver prints becomes a TAP comment,
    so that only tap_main() writes test lines."""

    def __init__(self, out):
        self.out = out
        self.bol = True

    def write(self, text):
        lines = text.split("\n")
        for i, line in enumerate(lines):
            if self.bol and (line or i < len(lines) - 1):
                self.out.write("# " if line else "#")
            self.out.write(line)
            if i < len(lines) - 1:
                self.out.write("\n")
                self.bol = True
            elif line:
                self.bol = False
        return len(text)

    def flush(self):
        self.out.flush()


def tap_main(a):
    real = sys.stdout
    sys.stdout = _TapComments(real)
    try:
        rc, findings = run(a, return_findings=True)
    finally:
        sys.stdout.flush()
        sys.stdout = real
    if rc == 2:
        print("1..1\nnot ok 1 - fuzz_corrald: setup failed (see the comments above)")
        return 1
    cases = a.phases.split(",") + ["exit"]
    print("1..%d" % len(cases))
    for i, ph in enumerate(cases, 1):
        mine = [what for p, what, _ in findings if p == ph]
        if mine:
            print("not ok %d - fuzz_corrald: phase %s: %d finding(s)" % (i, ph, len(mine)))
            for what in mine:
                for line in what.splitlines():
                    print("# " + line)
        else:
            print("ok %d - fuzz_corrald: phase %s, no finding" % (i, ph))
    other = [f for f in findings if f[0] not in cases]
    for p, what, _ in other:
        print("# finding outside a phase [%s] %s" % (p, what))
    return 1 if rc != 0 else 0


def run(a, return_findings=False):
    global T0
    seed = a.seed if a.seed is not None else random.randrange(1 << 31)
    rng = random.Random(seed)
    corrald = os.path.join(a.build, "src/corrald/corrald")
    corralctl = os.path.join(a.build, "src/corralctl/corralctl")
    hello = os.path.join(a.build, "src/hello/corral-hello")
    for b in (corrald, corralctl, hello):
        if not os.access(b, os.X_OK):
            print("missing binary %s" % b)
            return (2, []) if return_findings else 2
    tmp = tempfile.mkdtemp(prefix="corral-fuzz-")
    os.chmod(tmp, 0o755)
    findings = Findings(tmp)
    phases = a.phases.split(",")
    weights = {"control": 0.30, "notify": 0.12, "ipc": 0.18, "config": 0.22, "cli": 0.18}
    total_w = sum(weights[p] for p in phases)
    budget = {p: max(4.0, a.seconds * weights[p] / total_w) for p in phases}
    T0 = time.monotonic()
    print("fuzz_corrald: seed=%d seconds=%s build=%s tmp=%s" % (seed, a.seconds, a.build, tmp), flush=True)

    main_m = Master("fuzz", tmp, corrald, corralctl, [hello])
    ipcdir = os.path.join(tmp, "ipcfuzz")
    os.makedirs(ipcdir)
    wpath = os.path.join(tmp, "ipc-worker.py")
    with open(wpath, "w") as f:
        f.write(IPC_WORKER)
    ipc_m = None
    if "ipc" in phases:
        ipc_m = Master("ipc", tmp, corrald, corralctl, ["/usr/bin/python3", wpath], env={"FUZZ_DIR": ipcdir})
    growth = []
    try:
        for m in [main_m] + ([ipc_m] if ipc_m else []):
            ok, info = m.wait_healthy(within=30)
            if not ok:
                print("setup: %s not healthy: %s\n%s" % (m.name, info, m.log_text()[-2000:]))
                return (2, []) if return_findings else 2
        for ph in phases:
            m = ipc_m if ph == "ipc" else main_m
            f0, r0 = fd_count(m.pid), rss_kb(m.pid)
            log("phase %s (%.0fs) on %s: fds=%d rss=%d kB" % (ph, budget[ph], m.name, f0, r0))
            prng = random.Random(rng.random())
            try:
                if ph == "control":
                    phase_control(m, prng, budget[ph], findings)
                elif ph == "notify":
                    phase_notify(m, prng, budget[ph], findings)
                elif ph == "ipc":
                    phase_ipc(m, prng, budget[ph], findings, tmp)
                elif ph == "config":
                    phase_config(m, prng, budget[ph], findings, corrald, tmp)
                elif ph == "cli":
                    phase_cli(m, prng, budget[ph], findings, corrald, corralctl, tmp)
            except Exception as e:   # a driver error is reported, not hidden
                import traceback
                traceback.print_exc()
                findings.add(ph, "driver exception %r (master alive=%s)" % (e, m.alive()), None)
            check_master(m, findings, ph)
            time.sleep(0.5)
            f1, r1 = fd_count(m.pid), rss_kb(m.pid)
            growth.append((ph, m.name, f0, f1, r0, r1))
            log("phase %s done: fds %d -> %d, rss %d -> %d kB (%+d)" % (ph, f0, f1, r0, r1, r1 - r0))
            if f1 > f0:
                findings.add(ph, "fd count of %s grew %d -> %d over the phase" % (m.name, f0, f1), None)
            if not m.alive():
                break
    finally:
        for m in [main_m] + ([ipc_m] if ipc_m else []):
            if m is None:
                continue
            alive = m.alive()
            rc = m.stop()
            text = m.log_text()
            if alive and rc != 0:
                findings.add("exit", "%s: SIGTERM -> exit %s (expected 0); tail: %s" % (m.name, rc, text[-800:]),
                             None)
            if "LeakSanitizer" in text or "detected memory leaks" in text:
                i = text.find("LeakSanitizer")
                findings.add("exit", "%s: LeakSanitizer report: %s" % (m.name, text[i:i + 2500]), None)
            elif SANITIZER_RE.search(text):
                i = SANITIZER_RE.search(text).start()
                findings.add("exit", "%s: sanitizer output: %s" % (m.name, text[max(0, i - 200):i + 1500]), None,
                             dedup="san:" + m.name)
            log("%s: SIGTERM -> %s" % (m.name, rc))

    print("\n==== summary (seed=%d) ====" % seed)
    for ph, name, f0, f1, r0, r1 in growth:
        print("  %-8s %-5s fds %3d -> %3d (%+d)   rss %6d -> %6d kB (%+d)" % (ph, name, f0, f1, f1 - f0, r0, r1,
                                                                          r1 - r0))
    if findings.items:
        print("%d finding(s):" % len(findings.items))
        for i, (ph, what, inp) in enumerate(findings.items, 1):
            print("  %d. [%s] %s" % (i, ph, what))
            if inp:
                print("     input: %s" % inp)
    else:
        print("no findings")
    print("reproduce: %s %s --seconds %s --seed %d" % (sys.executable, os.path.abspath(__file__), a.seconds, seed))
    if a.keep or findings.items:
        print("artifacts (logs, inputs): %s" % tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    rc = 1 if findings.items else 0
    return (rc, findings.items) if return_findings else rc


if __name__ == "__main__":
    sys.exit(main())
