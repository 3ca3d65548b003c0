#!/usr/bin/python3
"""corralctl, the control CLI (SPEC §7).

Two halves. The first runs corralctl against a fake control server (a unix
socket in this process speaking docs/internals/control-protocol.md with
canned replies) to pin down output, exit codes, argument handling, the
requests sent, robustness against a broken server and which servers it
trusts (one case runs its fake servers as another user). The second runs it
end to end against a real corrald and skips, with the reason, when that
corrald does not create its control socket."""
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tap import case, main, wait_for, eq, Skip  # noqa: E402
from corral import BUILD, Corrald, NotifySocket, HELLO, free_port, pid_alive  # noqa: E402

CORRALCTL = os.environ.get("CORRALCTL", os.path.join(BUILD, "src/corralctl/corralctl"))
SANITIZED = os.environ.get("CORRAL_SANITIZED", "0") == "1"
TMP = tempfile.mkdtemp(prefix="corralctl-test-")
os.chmod(TMP, 0o755)    # the non-root cases must reach sockets below it
NOBODY = 65534
PRIV_DROP = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]


# ---- running corralctl ------------------------------------------------------

def base_env(**extra):
    """A predictable environment: no runtime directory of the caller's."""
    e = dict(os.environ)
    for k in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        e.pop(k, None)
    e.update({k: v for k, v in extra.items() if v is not None})
    return e


def ctl(*args, env=None, timeout=30, prefix=()):
    p = subprocess.run(list(prefix) + [CORRALCTL] + list(args), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or base_env(),
                       timeout=timeout)
    p.out = p.stdout.decode(errors="replace")
    p.err = p.stderr.decode(errors="replace")
    return p


def expect(p, rc, what=""):
    if p.returncode != rc:
        raise AssertionError("%s: exit status %r, expected %d\n--- stdout:\n%s--- stderr:\n%s" %
                             (what or " ".join(p.args), p.returncode, rc, p.out, p.err))
    if "ERROR: AddressSanitizer" in p.err or "runtime error:" in p.err:
        raise AssertionError("sanitizer report:\n" + p.err)
    return p


_isolation = None


def isolated():
    """A command prefix that gives corralctl a private, empty /run, so the
    host's /run/corral (other tests' instances) cannot leak into discovery.
    Runs `unshare -m`; raises Skip where that is not allowed."""
    global _isolation
    if _isolation is None:
        pre = ["unshare", "-m", "--propagation", "private", "sh", "-c",
               'mount -t tmpfs tmpfs /run && exec "$@"', "sh"]
        try:
            ok = subprocess.run(pre + ["true"], stderr=subprocess.DEVNULL, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        _isolation = pre if ok else False
    if not _isolation:
        raise Skip("cannot make a private mount namespace (unshare -m) to hide the host's /run/corral")
    return list(_isolation)


def rows(out, header="SLOT"):
    """The table rows under the first header line starting with `header`,
    split on whitespace, up to the next blank line."""
    lines = out.splitlines()
    start = next(i for i, l in enumerate(lines) if l.split()[:1] == [header])
    res = []
    for l in lines[start + 1:]:
        if not l.strip():
            break
        res.append(l.split())
    return res


# ---- the fake control server ------------------------------------------------

STATUS = {
    "type": "result", "ok": True, "instance": "app", "pid": 1234, "version": "0.1.0",
    "balance": "shared", "generation": 3, "ready": 1, "workers": 2, "state": "running",
    "status": "1/2 workers ready, generation 3",
    "listeners": [{"name": "web", "address": "127.0.0.1:8080"}, {"name": "admin", "address": "unix:/run/a"}],
    "uptime_ms": 7500000,
    "slots": [
        {"id": 0, "state": "ready", "pid": 4242, "generation": 3, "uptime_ms": 187000, "restarts": 0,
         "cpu_ms": 1870, "rss_kb": 5120, "connections": None, "status": "serving"},
        {"id": 1, "state": "backoff", "pid": None, "generation": None, "uptime_ms": None, "restarts": 2,
         "cpu_ms": None, "rss_kb": None, "connections": None, "status": None},
    ],
    "leaving": [
        {"id": 1, "state": "stopping", "pid": 4100, "generation": 2, "uptime_ms": 5000, "restarts": 0,
         "cpu_ms": 50, "rss_kb": 2048000, "connections": 3, "status": "draining"},
    ],
}


def ok(**fields):
    return dict({"type": "result", "ok": True}, **fields)


def fail(error):
    return {"type": "result", "ok": False, "error": error}


DEFAULT_REPLIES = {
    "status": [STATUS],
    "reload": [{"type": "progress", "message": "started 1/2 (slot 0, pid 10)"},
               {"type": "progress", "message": "started 2/2 (slot 1, pid 11)"}, ok(generation=4)],
    "restart": [ok(generation=4)],
    "scale": lambda req: [ok(workers=req.get("workers", 2 + req.get("delta", 0)))],
    "signal": [ok(pids=[4242])],
    "send": [ok(pids=[4242, 4243])],
}


class FakeServer:
    """A control socket answering each request line with the reply items
    listed for its command: a dict is sent as one JSON line, bytes raw, a
    number sleeps, an Event is waited for, "close" shuts the connection.
    Every request is recorded."""

    def __init__(self, replies=None, path=None, mode=0o600, notify=True):
        if path is None:
            d = tempfile.mkdtemp(dir=TMP)
            os.chmod(d, 0o755)
            path = os.path.join(d, "fake.sock")
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, mode)
        self.notify = notify_sibling(path) if notify else None
        self.accepted = 0
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.replies = dict(DEFAULT_REPLIES)
        self.replies.update(replies or {})
        self.requests = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self.lock:
                self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        f = conn.makefile("rb")
        try:
            for raw in f:
                req = json.loads(raw)
                with self.lock:
                    self.requests.append(req)
                r = self.replies.get(req.get("command"))
                items = r(req) if callable(r) else r
                if items is None:
                    items = [fail("unknown command")]
                for it in items:
                    if isinstance(it, str) and it == "close":
                        conn.shutdown(socket.SHUT_RDWR)
                        return
                    elif isinstance(it, bytes):
                        conn.sendall(it)
                    elif isinstance(it, threading.Event):
                        it.wait(20)
                    elif isinstance(it, (int, float)):
                        time.sleep(it)
                    else:
                        conn.sendall((json.dumps(it) + "\n").encode())
        except (OSError, ValueError):
            pass
        finally:
            f.close()
            conn.close()

    def reqs(self):
        with self.lock:
            return list(self.requests)

    def close(self):
        self.closed = True
        self.sock.close()
        for p in (self.path, self.notify):
            try:
                if p:
                    os.unlink(p)
            except OSError:
                pass


def notify_sibling(control, mode=0o600, uid=None):
    """What marks a control socket NAME.sock as corrald's: its notify
    socket NAME.notify beside it, a 0600 datagram socket file."""
    path = control[:-len(".sock")] + ".notify" if control.endswith(".sock") else control + ".notify"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.close()
    os.chmod(path, mode)
    if uid is not None:
        os.chown(path, uid, -1)
    return path


def stale_socket(path, notify=True):
    """A socket file nobody listens on, as a killed corrald leaves it (with
    its notify socket beside it)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    if notify:
        notify_sibling(path)
    return path


# ---- fake-server cases ------------------------------------------------------

@case
def help_and_version():
    p = expect(ctl("--help"), 0)
    for word in ("status", "top", "reload", "restart ID|all", "scale N|+N|-N", "signal SIG ID|all",
                 "send ID|all JSON", "logs [-f] [-w ID] [-n N]", "list", "--json", "-i, --instance",
                 "-s, --socket", "known at start"):
        assert word in p.out, "--help mentions %r:\n%s" % (word, p.out)
    p = expect(ctl("--version"), 0)
    assert re.fullmatch(r"corralctl \d+\.\d+\.\d+\n", p.out), p.out


@case
def status_header_and_table():
    s = FakeServer()
    try:
        p = expect(ctl("-s", s.path, "status"), 0)
        head = dict(re.match(r"(\w+):\s+(.*)", l).groups() for l in p.out.split("\n\n")[0].splitlines())
        eq(head["Instance"], "app", "instance")
        eq(head["PID"], "1234 (corrald 0.1.0, up 2h05m)", "pid line")
        eq(head["Balance"], "shared", "balance")
        eq(head["Listeners"], "web=127.0.0.1:8080, admin=unix:/run/a", "listeners")
        eq(head["Generation"], "3", "generation")
        eq(head["State"], "running", "state")
        eq(head["Status"], "1/2 workers ready, generation 3", "status text")
        hdr = next(l for l in p.out.splitlines() if l.lstrip().startswith("SLOT"))
        eq(hdr.split(), ["SLOT", "PID", "GEN", "STATE", "UPTIME", "RESTARTS", "CPU%", "RSS", "CONNS", "STATUS"],
           "columns")
        eq(rows(p.out), [["0", "4242", "3", "ready", "3m07s", "0", "1.0", "5.0M", "-", "serving"],
                         ["1", "-", "-", "backoff", "-", "2", "-", "-", "-", "-"]], "slot rows")
        assert "\nLeaving:\n" in p.out, p.out
        eq(rows(p.out.split("Leaving:")[1]),
           [["1", "4100", "2", "stopping", "5s", "0", "1.0", "2.0G", "3", "draining"]], "leaving rows")
        # Columns line up: the worker's STATUS= text, last, starts under
        # its header in every row.
        tbl = p.out.split("\n\n")[1].splitlines()
        off = tbl[0].index("STATUS")
        eq([l[off:] for l in tbl], ["STATUS", "serving", "-"], "STATUS column, aligned: %r" % tbl)
        eq(s.reqs(), [{"command": "status"}], "one status request")
        expect(ctl("-s", s.path, "ls"), 0)
    finally:
        s.close()


@case
def status_json_is_the_raw_result_on_one_line():
    s = FakeServer()
    try:
        p = expect(ctl("-s", s.path, "--json", "status"), 0)
        eq(p.out.count("\n"), 1, "one line")
        eq(json.loads(p.out), STATUS, "the result object, unchanged")
    finally:
        s.close()


@case
def global_options_after_the_command():
    s = FakeServer()
    try:
        for args in (["status", "-s", s.path, "--json"], ["status", "--socket=" + s.path, "--json"],
                     ["--json", "status", "-s" + s.path], ["status", "--json", "--socket", s.path]):
            p = expect(ctl(*args), 0)
            eq(json.loads(p.out)["instance"], "app", " ".join(args))
    finally:
        s.close()


@case
def ok_false_exits_1_with_the_reason():
    s = FakeServer({"scale": [fail("cannot scale while a rollout runs")],
                    "status": [{"type": "result", "ok": False}]})
    try:
        p = expect(ctl("-s", s.path, "scale", "+1"), 1)
        eq(p.err, "corralctl: cannot scale while a rollout runs\n", "stderr")
        eq(p.out, "", "stdout")
        p = expect(ctl("-s", s.path, "status"), 1)
        assert p.err.startswith("corralctl: "), p.err
        p = expect(ctl("-s", s.path, "--json", "scale", "3"), 1)
        eq(json.loads(p.out)["error"], "cannot scale while a rollout runs", "--json shows the result too")
    finally:
        s.close()


@case
def missing_or_stale_socket_exits_3_naming_it():
    rd = tempfile.mkdtemp(dir=TMP)
    p = expect(ctl("-i", "nosuch", "status", env=base_env(RUNTIME_DIRECTORY=rd)), 3)
    want = os.path.join(rd, "nosuch.sock")
    assert want in p.err and '"nosuch"' in p.err, "names the instance and its socket: %r" % p.err
    p = expect(ctl("-s", os.path.join(rd, "x.sock"), "reload"), 3)
    assert os.path.join(rd, "x.sock") in p.err and "no such socket" in p.err, p.err
    stale = stale_socket(os.path.join(rd, "stale.sock"))
    p = expect(ctl("-i", "stale", "status", env=base_env(RUNTIME_DIRECTORY=rd)), 3)
    assert stale in p.err and "refused" in p.err, p.err
    # A path that is not a socket at all.
    p = expect(ctl("-s", "/etc/hostname", "status"), 3)
    assert "/etc/hostname" in p.err, p.err


@case
def usage_errors_exit_2_and_send_nothing():
    s = FakeServer()
    try:
        bad = [
            [], ["bogus"], ["status", "extra"], ["scale"], ["scale", "abc"], ["scale", "+"], ["scale", "0"],
            ["scale", "-0"], ["scale", "1.5"], ["scale", "99999"], ["scale", "1", "2"],
            ["signal"], ["signal", "TERM"], ["signal", "TERM", "x"], ["signal", "TERM", "-1"],
            ["signal", "TERM", "1", "2"], ["signal", "", "1"],
            ["send", "all"], ["send", "all", "{a:1}"], ["send", "all", "{\"a\":1} trailing"],
            ["send", "x", "{}"], ["send", "all", ""], ["send", "0", "1", "2"],
            ["restart"], ["restart", "first"], ["reload", "now"], ["top", "x"],
            ["status", "--bogus"], ["status", "-x"], ["status", "-f"], ["reload", "-n", "5"],
            ["status", "--json=1"], ["logs", "-w", "x"], ["logs", "-n", "many"], ["logs", "extra"],
            ["status", "-s"], ["list", "-i", "app"],
        ]
        for args in bad:
            full = args if "-s" in args or args[:1] == ["list"] or not args else args + ["-s", s.path]
            if args == ["status", "-s"]:
                full = args
            p = expect(ctl(*full), 2, "corralctl %s" % " ".join(full))
            assert p.err.startswith("corralctl: ") and "--help" in p.err, "usage message %r: %r" % (full, p.err)
            eq(p.out, "", "stdout of %r" % full)
        eq(s.reqs(), [], "no request reached the server")
        expect(ctl("-s", s.path, "send", "all", json.dumps("x" * 70000)), 2, "oversize send")
        expect(ctl("-i", "a/b", "status"), 2, "instance name with a slash")
    finally:
        s.close()


@case
def requests_match_the_protocol():
    s = FakeServer()
    try:
        cases = [
            (["scale", "3"], {"command": "scale", "workers": 3}, "Scaled to 3 workers."),
            (["scale", "+1"], {"command": "scale", "delta": 1}, "Scaled to 3 workers."),
            (["scale", "-1"], {"command": "scale", "delta": -1}, "Scaled to 1 worker."),
            (["signal", "TERM", "0"], {"command": "signal", "signal": "TERM", "target": 0},
             "Sent TERM to 1 worker: 4242"),
            (["signal", "SIGKILL", "all"], {"command": "signal", "signal": "SIGKILL", "target": "all"}, None),
            (["signal", "15", "1"], {"command": "signal", "signal": 15, "target": 1}, None),
            (["signal", "NOPE", "1"], {"command": "signal", "signal": "NOPE", "target": 1}, None),
            (["send", "all", '{"a": 1}'], {"command": "send", "target": "all", "data": {"a": 1}},
             "Delivered to 2 workers: 4242 4243"),
            (["send", "1", '[1, "x\\ny", null]'], {"command": "send", "target": 1, "data": [1, "x\ny", None]}, None),
            (["send", "0", "-5"], {"command": "send", "target": 0, "data": -5}, None),
            (["restart", "all"], {"command": "restart", "target": "all"}, "Restart done, generation 4."),
            (["restart", "2"], {"command": "restart", "target": 2}, None),
            (["reload"], {"command": "reload"}, "Reload done, generation 4."),
        ]
        for args, req, out in cases:
            n = len(s.reqs())
            p = expect(ctl(*(["-s", s.path] + args)), 0)
            eq(s.reqs()[n:], [req], "request for %r" % args)
            if out:
                eq(p.out.splitlines()[-1], out, "output of %r" % args)
        p = expect(ctl("-s", s.path, "--json", "signal", "HUP", "all"), 0)
        eq(json.loads(p.out), ok(pids=[4242]), "--json result")
    finally:
        s.close()


@case
def reload_prints_progress_as_it_arrives():
    gate = threading.Event()
    s = FakeServer({"reload": [{"type": "progress", "message": "started 1/2: slot 0, pid 10"}, gate,
                               {"type": "progress", "message": "started 2/2: slot 1, pid 11"},
                               {"type": "something-new", "x": 1}, ok(generation=7)]})
    try:
        proc = subprocess.Popen([CORRALCTL, "-s", s.path, "reload"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=base_env())
        # The first line must be out while the server still holds the rest.
        r, _, _ = select.select([proc.stdout], [], [], 10)
        assert r, "no progress line within 10s"
        eq(proc.stdout.readline().decode(), "started 1/2: slot 0, pid 10\n", "first progress line, streamed")
        assert proc.poll() is None, "corralctl waits for the result"
        gate.set()
        out, err = proc.communicate(timeout=20)
        eq(proc.returncode, 0, "exit status (stderr %r)" % err)
        eq(out.decode(), "started 2/2: slot 1, pid 11\nReload done, generation 7.\n", "rest of stdout")
    finally:
        gate.set()
        s.close()


@case
def failed_reload_exits_1_with_the_reason():
    s = FakeServer({"reload": [{"type": "progress", "message": "started 1/2: slot 0, pid 10"},
                               fail("worker 0 (pid 10) exited with status 3 before it was ready; "
                                    "rollout stopped, old workers kept")]})
    try:
        p = expect(ctl("-s", s.path, "reload"), 1)
        eq(p.out, "started 1/2: slot 0, pid 10\n", "progress")
        assert p.err == "corralctl: worker 0 (pid 10) exited with status 3 before it was ready; " \
                        "rollout stopped, old workers kept\n", p.err
        # --json keeps stdout for the result; progress goes to stderr.
        p = expect(ctl("-s", s.path, "--json", "reload"), 1)
        eq(json.loads(p.out)["ok"], False, "result on stdout")
        assert "started 1/2" in p.err, p.err
    finally:
        s.close()


@case
def malformed_replies_exit_3_without_crashing():
    variants = {
        "not json": [b"hello\n"],
        "json array": [b"[1,2]\n"],
        "no type": [b'{"ok":true}\n'],
        "ok not bool": [{"type": "result", "ok": "yes"}],
        "nul byte": [b'{"type":"result","ok":true}\x00\n'],
        # Reply lines may be long (status of thousands of workers), up to 8 MiB.
        "oversize line": [b'{"type":"progress","message":"' + b"x" * (9 << 20) + b'"}\n', ok()],
        "endless line": [b"x" * (9 << 20)],
        "truncated": [b'{"type":"result","ok":tr', "close"],
        "closed": ["close"],
        "progress then close": [{"type": "progress", "message": "started"}, "close"],
    }
    for name, items in variants.items():
        s = FakeServer({"status": items, "reload": items})
        try:
            for cmd in ("status", "reload"):
                p = expect(ctl("-s", s.path, cmd, timeout=20), 3, "%s: %s" % (name, cmd))
                assert s.path in p.err, "%s: names the socket: %r" % (name, p.err)
                if name in ("not json", "json array", "no type", "ok not bool", "oversize line"):
                    assert "malformed reply from " + s.path in p.err, "%s: %r" % (name, p.err)
                if name in ("closed", "progress then close"):
                    assert "closed" in p.err, "%s: %r" % (name, p.err)
        finally:
            s.close()
    # A well-formed line split across writes, with a blank line before it.
    s = FakeServer({"status": [b"\n", b'{"type":"res', 0.2, b'ult","ok":true,"instance":"x"}\n']})
    try:
        p = expect(ctl("-s", s.path, "--json", "status"), 0)
        eq(json.loads(p.out)["instance"], "x", "reassembled line")
    finally:
        s.close()


@case
def odd_status_shapes_do_not_crash():
    shapes = [
        ok(),
        ok(slots="many", leaving={}, listeners=7, pid="1", uptime_ms=-5, instance=None),
        ok(slots=[1, None, "x", {}, {"id": "0", "pid": 1e300, "uptime_ms": -1, "rss_kb": -3, "cpu_ms": 5,
                                     "state": "a\x1b[2Jb"}], listeners=[{}, 3]),
        ok(slots=[{"id": 0, "pid": 5, "uptime_ms": 0, "cpu_ms": 10, "rss_kb": 10 ** 12}]),
    ]
    for sh in shapes:
        s = FakeServer({"status": [sh]})
        try:
            p = expect(ctl("-s", s.path, "status"), 0, "status %r" % sh)
            assert "\x1b" not in p.out, "control characters from the server are not passed through"
        finally:
            s.close()


def status_sampler():
    """status replies whose worker burns 500 ms of CPU per 1000 ms of uptime."""
    n = [0]

    def reply(req):
        n[0] += 1
        st = json.loads(json.dumps(STATUS))
        st["slots"][0].update(uptime_ms=1000 * n[0], cpu_ms=10 + 500 * n[0])
        return [st]
    return reply


@case
def top_without_a_tty_prints_n_frames():
    s = FakeServer({"status": status_sampler()})
    try:
        proc = subprocess.Popen([CORRALCTL, "-s", s.path, "top", "-n", "3"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=base_env())
        out, err = proc.communicate(timeout=20)
        eq(proc.returncode, 0, "exit status after -n 3 frames (stderr %r)" % err)
        frames = [f for f in out.decode().split("Instance:")[1:]]
        eq(len(frames), 3, "frames printed with -n 3")
        eq(len(s.reqs()), 3, "status requests for 3 frames")
        eq(rows(frames[0])[0][6], "51.0", "first frame: CPU% over the lifetime (510/1000)")
        eq(rows(frames[1])[0][6], "50.0", "second frame: CPU% from the delta")
        assert "\x1b" not in out.decode(), "no escape sequences when stdout is not a terminal"
        # One connection for all samples.
        eq(s.reqs(), [{"command": "status"}] * len(s.reqs()), "status requests")
    finally:
        s.close()


@case
def top_into_a_pipe_prints_one_frame():
    s = FakeServer({"status": status_sampler()})
    try:
        p = expect(ctl("-s", s.path, "top", timeout=10), 0)
        eq(p.out.count("Instance:"), 1, "one frame on a pipe")
        eq(rows(p.out)[0][-1], "serving", "STATUS= text, last column")
        eq(len(s.reqs()), 1, "one status request")
        p = expect(ctl("-s", s.path, "top", "--json", timeout=10), 0)
        eq(len(p.out.splitlines()), 1, "one JSON frame on a pipe")
        expect(ctl("-s", s.path, "top", "-n", "0"), 2, "top -n 0")
        expect(ctl("-s", s.path, "status", "-n", "2"), 2, "status -n 2")
    finally:
        s.close()


@case
def top_stops_when_the_reader_goes():
    s = FakeServer({"status": status_sampler()})
    try:
        # What a user types; before, it never returned.
        t0 = time.monotonic()
        r = subprocess.run(["sh", "-c", '"$1" -s "$2" top | head -3', "sh", CORRALCTL, s.path],
                           capture_output=True, text=True, timeout=20, env=base_env())
        eq((r.returncode, len(r.stdout.splitlines())), (0, 3), "corralctl top | head -3 (%r)" % r.stderr)
        assert time.monotonic() - t0 < 10, "took %.1fs" % (time.monotonic() - t0)
        # Frame after frame until the pipe closes: then SIGPIPE, like cat.
        proc = subprocess.Popen([CORRALCTL, "-s", s.path, "top", "-n", "1000"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=base_env())
        proc.stdout.readline()
        proc.stdout.close()
        proc.wait(timeout=10)
        eq(proc.returncode, -signal.SIGPIPE, "exit of top -n 1000 after its reader left")
    finally:
        s.close()


def run_on_pty(argv, columns, timeout=10):
    """Run argv with its stdout (and stdin) on a terminal of this width;
    returns (exit code, output with CRs removed)."""
    import fcntl
    import struct
    import termios
    pid, fd = pty.fork()
    if pid == 0:
        fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        os.execve(argv[0], argv, base_env(TERM="xterm"))
    buf = b""
    deadline = time.monotonic() + timeout
    while True:
        r, _, _ = select.select([fd], [], [], max(0, deadline - time.monotonic()))
        if not r:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError("timed out; output %r" % buf[-500:])
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            break
        buf += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), buf.decode(errors="replace").replace("\r", "")


@case
def worker_status_text_is_cut_to_the_terminal():
    st = json.loads(json.dumps(STATUS))
    long = "busy: " + "é" * 100 + " end"
    st["slots"][0]["status"] = long
    s = FakeServer({"status": [st]})
    try:
        # Not a terminal: the whole text.
        p = expect(ctl("-s", s.path, "status"), 0)
        assert long in p.out, p.out
        # A terminal of 80 columns: no line of the table is wider.
        rc, out = run_on_pty([CORRALCTL, "-s", s.path, "status"], 80)
        eq(rc, 0, "status on a terminal")
        tbl = out.split("\n\n")[1].splitlines()
        eq(max(len(l) for l in tbl), 80, "widest table line on 80 columns %r" % tbl)
        row = next(l for l in tbl if l.split()[:1] == ["0"])
        assert row.endswith("busy: " + "é" * (80 - row.index("busy: ") - 6)), row
        # top's frame too (one, with -n 1), on a terminal of 90 columns.
        rc, out = run_on_pty([CORRALCTL, "-s", s.path, "top", "-n", "1"], 90)
        eq(rc, 0, "top -n 1 on a terminal")
        lines = [l for l in re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out).splitlines() if "busy: " in l]
        eq([len(l) for l in lines], [90], "top's row with the status text, cut to 90 columns")
        # Narrower than the other columns: STATUS is left out, nothing else.
        rc, out = run_on_pty([CORRALCTL, "-s", s.path, "status"], 30)
        tbl = out.split("\n\n")[1].splitlines()
        eq(tbl[0].split()[-1], "CONNS", "header on 30 columns")
        eq([l.rstrip() for l in tbl], tbl, "no trailing blanks")
    finally:
        s.close()


@case
def top_on_a_terminal_quits_on_q_and_restores_it():
    s = FakeServer({"status": status_sampler()})
    try:
        pid, fd = pty.fork()
        if pid == 0:
            os.execve(CORRALCTL, [CORRALCTL, "-s", s.path, "top"], base_env(TERM="xterm"))
        buf = b""

        def read_until(pat, timeout=10):
            nonlocal buf
            deadline = time.monotonic() + timeout
            while pat not in buf:
                r, _, _ = select.select([fd], [], [], max(0, deadline - time.monotonic()))
                if not r:
                    raise AssertionError("timed out waiting for %r in %r" % (pat, buf[-500:]))
                try:
                    buf += os.read(fd, 65536)
                except OSError:
                    raise AssertionError("pty closed before %r: %r" % (pat, buf[-500:]))
        read_until(b"\x1b[?1049h")          # alternate screen
        read_until(b"Press q to quit.")
        wait_for(lambda: len(s.reqs()) >= 2, 10, "a second refresh")
        read_until(b"50.0")
        os.write(fd, b"q")
        read_until(b"\x1b[?1049l")          # back to the normal screen
        _, status = os.waitpid(pid, 0)
        eq(os.waitstatus_to_exitcode(status), 0, "exit status after q")
        os.close(fd)
    finally:
        s.close()


@case
def list_shows_live_and_stale_instances():
    pre = isolated()
    rd = tempfile.mkdtemp(dir=TMP)
    s = FakeServer(path=os.path.join(rd, "alpha.sock"))
    stale_socket(os.path.join(rd, "beta.sock"))
    open(os.path.join(rd, "gamma.sock"), "w").close()     # not a socket: ignored
    xdg = tempfile.mkdtemp(dir=TMP)
    try:
        p = expect(ctl("list", env=base_env(RUNTIME_DIRECTORY=rd, XDG_RUNTIME_DIR=xdg), prefix=pre), 0)
        eq(rows(p.out, "NAME"), [["alpha", "1234", "3", "1/2", "running", os.path.join(rd, "alpha.sock")],
                                 ["beta", "-", "-", "-", "unreachable", os.path.join(rd, "beta.sock")]], "list")
        p = expect(ctl("list", "--json", env=base_env(RUNTIME_DIRECTORY=rd), prefix=pre), 0)
        j = json.loads(p.out)
        eq([(e["name"], e.get("state"), "status" in e) for e in j],
           [("alpha", None, True), ("beta", "unreachable", False)], "list --json")
        # Nothing anywhere: still exit 0.
        empty = tempfile.mkdtemp(dir=TMP)
        expect(ctl("list", env=base_env(RUNTIME_DIRECTORY=empty), prefix=pre), 0)
    finally:
        s.close()


@case
def list_skips_sockets_that_are_not_corrals():
    """A runtime directory holds other sockets too: the template unit's own
    listening socket /run/corral/NAME.http.sock, a worker's. Only a
    NAME.sock with corrald's NAME.notify beside it (same owner, 0600) is
    an instance; the others are neither listed nor connected to."""
    pre = isolated()
    rd = tempfile.mkdtemp(dir=TMP)
    env = base_env(RUNTIME_DIRECTORY=rd)
    app = FakeServer(path=os.path.join(rd, "app.sock"))
    strays = [
        FakeServer(path=os.path.join(rd, "app.http.sock"), mode=0o660, notify=False),   # a worker's listener
        FakeServer(path=os.path.join(rd, "foreign.sock"), notify=False),
        FakeServer(path=os.path.join(rd, "other.sock"), notify=False),
        FakeServer(path=os.path.join(rd, "open.sock"), notify=False),
    ]
    notify_sibling(strays[2].path, uid=NOBODY)     # someone else's .notify
    notify_sibling(strays[3].path, mode=0o666)      # open to all: not corrald's
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # a lone .notify names nothing
    s.bind(os.path.join(rd, "lone.notify"))
    s.close()
    try:
        p = expect(ctl("list", env=env, prefix=pre), 0)
        eq(rows(p.out, "NAME"), [["app", "1234", "3", "1/2", "running", app.path]], "list")
        p = expect(ctl("list", "--json", env=env, prefix=pre), 0)
        eq([e["name"] for e in json.loads(p.out)], ["app"], "list --json")
        # The only instance is found without -i despite the strays.
        p = expect(ctl("status", env=env, prefix=pre), 0, "the one instance among strays")
        assert "Instance:   app" in p.out, p.out
        eq([x.accepted for x in strays], [0] * len(strays), "connections made to strangers' sockets")
    finally:
        for x in [app] + strays:
            x.close()


@case
def list_does_not_hang_on_a_silent_instance():
    pre = isolated()
    rd = tempfile.mkdtemp(dir=TMP)
    s = FakeServer({"status": [30]}, path=os.path.join(rd, "mute.sock"))
    try:
        t0 = time.monotonic()
        p = expect(ctl("list", env=base_env(RUNTIME_DIRECTORY=rd), prefix=pre), 0)
        assert time.monotonic() - t0 < 10, "list took %.1fs" % (time.monotonic() - t0)
        eq(rows(p.out, "NAME")[0][4], "no-reply", "state of a silent instance")
    finally:
        s.close()


@case
def without_i_the_only_instance_is_used():
    pre = isolated()
    rd = tempfile.mkdtemp(dir=TMP)
    env = base_env(RUNTIME_DIRECTORY=rd)
    p = expect(ctl("status", env=env, prefix=pre), 3, "no instance at all")
    assert "no corral instance found" in p.err and rd in p.err, p.err
    a = FakeServer(path=os.path.join(rd, "a.sock"))
    try:
        expect(ctl("status", env=env, prefix=pre), 0, "one instance")
        eq(len(a.reqs()), 1, "it was asked")
        stale_socket(os.path.join(rd, "dead.sock"))
        expect(ctl("status", env=env, prefix=pre), 0, "one live instance and a stale socket")
        b = FakeServer(path=os.path.join(rd, "b.sock"))
        try:
            p = expect(ctl("status", env=env, prefix=pre), 2, "two instances")
            assert "a (%s/a.sock)" % rd in p.err and "b (%s/b.sock)" % rd in p.err and "-i NAME" in p.err, p.err
            expect(ctl("-i", "b", "status", env=env, prefix=pre), 0, "-i picks one")
            eq(len(b.reqs()), 1, "b was asked")
        finally:
            b.close()
    finally:
        a.close()


@case
def socket_path_resolution():
    rd = tempfile.mkdtemp(dir=TMP)
    os.chmod(rd, 0o755)
    s = FakeServer(path=os.path.join(rd, "app.sock"), mode=0o666)
    try:
        # $RUNTIME_DIRECTORY, as under the units; the first of several.
        expect(ctl("-i", "app", "status", env=base_env(RUNTIME_DIRECTORY=rd + ":/nonexistent")), 0)
        # A non-root user: $XDG_RUNTIME_DIR/corral/NAME.sock.
        xdg = tempfile.mkdtemp(dir=TMP)
        os.makedirs(os.path.join(xdg, "corral"))
        os.chown(xdg, NOBODY, NOBODY)
        os.symlink(s.path, os.path.join(xdg, "corral", "app.sock"))
        n = len(s.reqs())
        expect(ctl("-i", "app", "status", env=base_env(XDG_RUNTIME_DIR=xdg), prefix=PRIV_DROP), 0, "XDG path")
        eq(len(s.reqs()), n + 1, "reached through $XDG_RUNTIME_DIR/corral")
        # ... falling back to root's /run/corral when the user path is absent.
        pre = isolated()
        empty = tempfile.mkdtemp(dir=TMP)
        os.chown(empty, NOBODY, NOBODY)
        fall = pre[:-2] + ['mount -t tmpfs tmpfs /run && mkdir /run/corral && ln -s "$0" /run/corral/app.sock'
                           ' && exec "$@"', s.path]
        expect(ctl("-i", "app", "status", env=base_env(XDG_RUNTIME_DIR=empty), prefix=fall + PRIV_DROP), 0,
               "fallback to /run/corral")
        eq(len(s.reqs()), n + 2, "reached through /run/corral")
        p = expect(ctl("-i", "nope", "status", env=base_env(XDG_RUNTIME_DIR=empty), prefix=PRIV_DROP), 3)
        assert os.path.join(empty, "corral", "nope.sock") in p.err, "names the user's path: %r" % p.err
    finally:
        s.close()


# Unlike FakeServer, a control server of another user (nobody) in a process
# of its own: for what root's corralctl trusts.
FAKE_SERVER = r'''
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(8)
print("listening", flush=True)
while True:
    conn, _ = s.accept()
    try:
        conn.recv(65536)
        conn.sendall(b'{"type":"result","ok":true}\n')
    except OSError:
        pass
    conn.close()
'''


def _fake_server(path):
    p = subprocess.Popen(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", sys.executable,
                          "-c", FAKE_SERVER, path], stdout=subprocess.PIPE, text=True)
    eq(p.stdout.readline().strip(), "listening", "fake server up")
    return p


@case
def corralctl_does_not_trust_another_users_server():
    """#11.10: a fake socket of another user made root's corralctl print
    success. Root trusts another user's server (an instance with
    DynamicUser= or User=) only where nobody but root and that user could
    have put the socket."""
    if os.geteuid() != 0:
        raise Skip("needs root to run a server as another user")
    if not os.access("/run", os.W_OK):
        raise Skip("needs a root-owned place to write to")
    base = tempfile.mkdtemp(prefix="corral-fake-", dir="/run")
    os.chmod(base, 0o755)
    shared = os.path.join(base, "shared")      # like /tmp: anyone may create a socket there
    os.mkdir(shared)
    os.chmod(shared, 0o1777)
    own = os.path.join(base, "own")            # like RuntimeDirectory= of a DynamicUser= instance
    os.mkdir(own, 0o755)
    os.chown(own, 65534, 65534)
    nested = os.path.join(own, "sub")          # below a directory of another user: not root's
    os.mkdir(nested, 0o755)
    os.chown(nested, 65534, 65534)
    link = os.path.join(base, "link")          # the other user's symlink to that place
    os.symlink(own, link)
    os.lchown(link, 65534, 65534)
    procs = []
    try:
        procs.append(_fake_server(os.path.join(shared, "fake.sock")))
        procs.append(_fake_server(os.path.join(own, "app.sock")))
        procs.append(_fake_server(os.path.join(nested, "app.sock")))
        for path in (os.path.join(shared, "fake.sock"), os.path.join(link, "app.sock"),
                     os.path.join(nested, "app.sock")):
            r = subprocess.run([CORRALCTL, "-s", path, "reload"], capture_output=True, text=True, timeout=20)
            eq(r.returncode, 3, "corralctl refuses %s: %s%s" % (path, r.stdout, r.stderr))
            assert "not trusting" in r.stderr, r.stderr
        r = subprocess.run([CORRALCTL, "-s", os.path.join(own, "app.sock"), "reload"], capture_output=True,
                           text=True, timeout=20)
        eq(r.returncode, 0, "root trusts the user's own place: %s%s" % (r.stdout, r.stderr))
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(base, ignore_errors=True)


def fake_journalctl(spawn_lines):
    d = tempfile.mkdtemp(dir=TMP)
    log = os.path.join(d, "argv.log")
    spawn = os.path.join(d, "spawn.json")
    with open(spawn, "w") as f:
        f.write("".join(l + "\n" for l in spawn_lines))
    with open(os.path.join(d, "journalctl"), "w") as f:
        f.write("#!/usr/bin/python3\nimport json, sys\n"
                "open(%r, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                "if 'CORRAL_EVENT=spawn' in sys.argv:\n"
                "    sys.stdout.write(open(%r).read())\n" % (log, spawn))
    os.chmod(os.path.join(d, "journalctl"), 0o755)
    env = base_env(PATH=d + ":" + os.environ.get("PATH", "/usr/bin:/bin"))

    def calls():
        with open(log) as f:
            return [json.loads(l) for l in f]
    return env, calls


@case
def logs_builds_the_journalctl_command_line():
    env, calls = fake_journalctl([
        '{"CORRAL_WORKER_PID":"100","__CURSOR":"a"}', '{"CORRAL_WORKER_PID":"200"}',
        '{"CORRAL_WORKER_PID":"100"}', '{"CORRAL_WORKER_PID":["300","300"]}', 'garbage',
        '{"CORRAL_WORKER_PID":"x1"}', '{"OTHER":"1"}'])
    expect(ctl("-i", "app", "logs", env=env), 0)
    eq(calls()[-1], ["-n", "50", "CORRAL_INSTANCE=app", "+", "SYSLOG_IDENTIFIER=app"], "logs")
    expect(ctl("logs", "-f", "-n", "10", "-i", "app", env=env), 0)
    eq(calls()[-1], ["-n", "10", "-f", "CORRAL_INSTANCE=app", "+", "SYSLOG_IDENTIFIER=app"], "logs -f -n 10")
    expect(ctl("logs", "-fn", "all", "--json", "-i", "app", env=env), 0)
    eq(calls()[-1], ["-n", "all", "-f", "-o", "json", "CORRAL_INSTANCE=app", "+", "SYSLOG_IDENTIFIER=app"],
       "logs -fn all --json")
    n = len(calls())
    expect(ctl("-i", "app", "logs", "-w", "1", env=env), 0)
    query, final = calls()[n:]
    for m in ("-o", "json", "CORRAL_INSTANCE=app", "CORRAL_WORKER_ID=1", "CORRAL_EVENT=spawn"):
        assert m in query, "spawn query %r lacks %r" % (query, m)
    eq(final, ["-n", "50", "CORRAL_INSTANCE=app", "CORRAL_WORKER_ID=1",
               "+", "_PID=100", "SYSLOG_IDENTIFIER=app",
               "+", "_PID=200", "SYSLOG_IDENTIFIER=app",
               "+", "_PID=300", "SYSLOG_IDENTIFIER=app"], "logs -w 1")
    # With -s, the name comes from the instance itself.
    s = FakeServer()
    try:
        expect(ctl("-s", s.path, "logs", env=env), 0)
        eq(calls()[-1][-3:], ["CORRAL_INSTANCE=app", "+", "SYSLOG_IDENTIFIER=app"], "name from status")
    finally:
        s.close()
    # No journalctl at all.
    p = expect(ctl("-i", "app", "logs", env=base_env(PATH=tempfile.mkdtemp(dir=TMP))), 1)
    assert "journalctl" in p.err, p.err


@case
def logs_of_an_instance_logging_to_stderr_fails_and_says_where():
    env, calls = fake_journalctl([])
    rd = tempfile.mkdtemp(dir=TMP)
    os.chmod(rd, 0o755)
    s = FakeServer({"status": [dict(STATUS, log="stderr")]}, path=os.path.join(rd, "app.sock"))
    try:
        for args in (["-s", s.path, "logs"], ["-i", "app", "logs", "-f"], ["logs", "-w", "0"]):
            p = expect(ctl(*args, env=dict(env, RUNTIME_DIRECTORY=rd)), 1, " ".join(args))
            assert "logs to corrald's standard error" in p.err and '"app"' in p.err, p.err
        try:
            ran = calls()
        except FileNotFoundError:   # the fake journalctl logs each call it gets
            ran = []
        eq(ran, [], "journalctl is not run")
    finally:
        s.close()
    # The same instance logging to the journal: journalctl as before.
    s = FakeServer({"status": [dict(STATUS, log="journal")]}, path=os.path.join(rd, "app.sock"))
    try:
        expect(ctl("-i", "app", "logs", env=dict(env, RUNTIME_DIRECTORY=rd)), 0)
        eq(calls()[-1], ["-n", "50", "CORRAL_INSTANCE=app", "+", "SYSLOG_IDENTIFIER=app"], "journal instance")
    finally:
        s.close()


@case
def valgrind_clean():
    if SANITIZED:
        raise Skip("sanitizer build: ASan/UBSan check these paths in every other case")
    vg = shutil.which("valgrind")
    if not vg:
        raise Skip("valgrind not installed")
    s = FakeServer({"status": [STATUS], "restart": [b"junk\n"]})
    env, _ = fake_journalctl(['{"CORRAL_WORKER_PID":"5"}'])
    try:
        pre = [vg, "-q", "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
               "--show-leak-kinds=definite,indirect"]
        for args, rc in ((["status"], 0), (["--json", "status"], 0), (["reload"], 0), (["send", "all", '{"a":[1]}'], 0),
                         (["scale", "x"], 2), (["restart", "all"], 3), (["signal", "TERM", "all"], 0)):
            p = ctl(*(["-s", s.path] + args), prefix=pre, timeout=60)
            eq(p.returncode, rc, "valgrind %r: %s" % (args, p.err))
        p = ctl("-i", "app", "logs", "-w", "0", env=env, prefix=pre, timeout=60)
        eq(p.returncode, 0, "valgrind logs -w: %s" % p.err)
    finally:
        s.close()


# ---- end to end, against corrald --------------------------------------------

class Instance:
    """corrald with N corral-hello workers, its config file under TMP and
    its control socket at <dir>/<name>.sock."""

    def __init__(self, name="ctltest", workers=2, **keys):
        self.dir = tempfile.mkdtemp(dir=TMP)
        os.chmod(self.dir, 0o755)
        self.name = name
        self.sock = os.path.join(self.dir, name + ".sock")
        self.port = free_port()
        self.config = os.path.join(self.dir, name + ".json")
        self.keys = dict({"name": name, "workers": workers, "listen": ["web=127.0.0.1:%d" % self.port],
                          "exec": [HELLO]}, **keys)
        self.write_config()
        self.notify = NotifySocket()
        self.c = Corrald(["-c", self.config, "--control", self.sock], notify=self.notify,
                         env={"CORRAL_TEST_DIR": TMP})
        try:
            self.notify.wait("READY", "1")
        except Exception:
            self.close()
            raise
        if not os.path.exists(self.sock):
            self.close()
            raise Skip("corrald does not create its control socket (--control) yet")

    def write_config(self, text=None):
        with open(self.config, "w") as f:
            f.write(text if text is not None else json.dumps(self.keys))

    def ctl(self, *args, **kw):
        return ctl(*(["-s", self.sock] + list(args)), **kw)

    def status(self):
        return json.loads(expect(self.ctl("--json", "status"), 0).out)

    def pids(self):
        return sorted(s["pid"] for s in self.status()["slots"])

    def wait_ready(self, n, timeout=20):
        def check():
            st = self.status()
            return st if st["ready"] == n and st["workers"] == n and not st.get("leaving") and \
                all(s["state"] == "ready" for s in st["slots"]) else None
        return wait_for(check, timeout, "%d ready workers" % n)

    def close(self):
        try:
            self.c.stop()
        finally:
            self.c.kill()
            self.notify.close()


def e2e(fn):
    """A case that gets an Instance and always stops it."""
    def run():
        inst = Instance()
        try:
            fn(inst)
        except AssertionError as e:
            raise AssertionError("%s\n--- corrald output:\n%s" % (e, inst.c.output()))
        finally:
            inst.close()
    run.__name__ = fn.__name__
    return case(run)


@e2e
def e2e_status_shows_ready_workers(inst):
    p = expect(inst.ctl("status"), 0)
    r = rows(p.out)
    eq(len(r), 2, "rows\n" + p.out)
    eq([x[3] for x in r], ["ready", "ready"], "states")
    eq(sorted(int(x[1]) for x in r), inst.c.workers(), "pids are corrald's children")
    assert "Instance:   ctltest" in p.out and "web=127.0.0.1:%d" % inst.port in p.out, p.out
    st = inst.status()
    eq((st["instance"], st["pid"], st["ready"], st["generation"]), ("ctltest", inst.c.pid, 2, 1), "status --json")


@e2e
def e2e_reload_prints_progress_and_replaces_every_worker(inst):
    old, gen = inst.pids(), inst.status()["generation"]
    p = expect(inst.ctl("reload", timeout=120), 0)
    lines = p.out.splitlines()
    assert len(lines) >= 2, "progress lines then the summary: %r" % p.out
    eq(lines[-1], "Reload done, generation %d." % (gen + 1), "summary")
    st = inst.wait_ready(2)
    eq(st["generation"], gen + 1, "generation advanced")
    new = sorted(s["pid"] for s in st["slots"])
    assert not set(new) & set(old), "all pids new: %r -> %r" % (old, new)
    wait_for(lambda: not any(pid_alive(x) for x in old), 20, "old workers gone")


@e2e
def e2e_reload_with_a_broken_config_fails_and_keeps_workers(inst):
    old = inst.pids()
    inst.write_config('{"name": "ctltest", "workers": 2,\n  "exec": [')
    p = expect(inst.ctl("reload", timeout=60), 1)
    assert p.err.startswith("corralctl: ") and inst.config in p.err, "names the config file: %r" % p.err
    assert re.search(r"line \d+", p.err), "names the line: %r" % p.err
    eq(inst.pids(), old, "old workers kept")
    eq(inst.status()["generation"], 1, "generation unchanged")


@e2e
def e2e_scale_up_down_absolute(inst):
    for arg, n in (("+1", 3), ("-1", 2), ("3", 3)):
        p = expect(inst.ctl("scale", arg), 0)
        eq(p.out, "Scaled to %d workers.\n" % n, "scale %s" % arg)
        inst.wait_ready(n)
        inst.c.wait_workers(n)


@e2e
def e2e_signal_term_replaces_slot_0(inst):
    slot0 = next(s for s in inst.status()["slots"] if s["id"] == 0)["pid"]
    p = expect(inst.ctl("--json", "signal", "TERM", "0"), 0)
    eq(json.loads(p.out)["pids"], [slot0], "signalled pid")

    def replaced():
        s = next(s for s in inst.status()["slots"] if s["id"] == 0)
        return s if s["pid"] not in (None, slot0) and s["state"] == "ready" else None
    wait_for(replaced, 20, "slot 0 replaced")
    wait_for(lambda: not pid_alive(slot0), 10, "old worker gone")
    p = expect(inst.ctl("signal", "NOSUCHSIG", "all"), 1)
    assert p.err.startswith("corralctl: "), p.err


@e2e
def e2e_send_all(inst):
    p = expect(inst.ctl("--json", "send", "all", '{"a":1}'), 0)
    eq(sorted(json.loads(p.out)["pids"]), inst.pids(), "delivered to every worker")
    p = expect(inst.ctl("send", "all", '{"a":1}'), 0)
    assert p.out.startswith("Delivered to 2 workers:"), p.out
    expect(inst.ctl("send", "7", "1"), 1, "no such slot")


@e2e
def e2e_restart_one_slot(inst):
    before = {s["id"]: s["pid"] for s in inst.status()["slots"]}
    expect(inst.ctl("restart", "1", timeout=60), 0)
    after = {s["id"]: s["pid"] for s in inst.wait_ready(2)["slots"]}
    eq(after[0], before[0], "slot 0 untouched")
    assert after[1] != before[1], "slot 1 replaced"


@e2e
def e2e_non_root_is_refused_with_exit_3(inst):
    eq(stat.S_IMODE(os.stat(inst.sock).st_mode), 0o600, "socket mode")
    p = expect(inst.ctl("status", prefix=PRIV_DROP), 3)
    assert inst.sock in p.err and "permission denied" in p.err, p.err


@e2e
def e2e_list_and_default_instance(inst):
    pre = isolated()
    env = base_env(RUNTIME_DIRECTORY=inst.dir)
    p = expect(ctl("list", env=env, prefix=pre), 0)
    eq(rows(p.out, "NAME"), [["ctltest", str(inst.c.pid), "1", "2/2", "running", inst.sock]], "list")
    p = expect(ctl("status", env=env, prefix=pre), 0)
    assert "Instance:   ctltest" in p.out, p.out
    p = expect(ctl("-i", "ctltest", "--json", "status", env=env), 0)
    eq(json.loads(p.out)["pid"], inst.c.pid, "-i NAME under $RUNTIME_DIRECTORY")


@e2e
def e2e_logs_in_embedded_mode_points_to_stderr(inst):
    # corrald's stderr is a pipe here, so --log auto chose stderr.
    eq(inst.status().get("log"), "stderr", "status --json: log target")
    p = expect(ctl("-s", inst.sock, "logs"), 1)
    assert "logs to corrald's standard error" in p.err, p.err


@e2e
def e2e_top_without_a_tty(inst):
    p = expect(ctl("-s", inst.sock, "top", timeout=10), 0)
    eq(p.out.count("Instance:"), 1, "one frame")
    # corral-hello's STATUS= text ("serving on ..."), last column.
    eq([r[9:10] for r in rows(p.out)], [["serving"]] * 2, "STATUS column\n" + p.out)


@case
def e2e_missing_instance_exits_3():
    rd = tempfile.mkdtemp(dir=TMP)
    p = expect(ctl("-i", "ctltest-none", "reload", env=base_env(RUNTIME_DIRECTORY=rd)), 3)
    assert "ctltest-none" in p.err and os.path.join(rd, "ctltest-none.sock") in p.err, p.err


def teardown(_):
    shutil.rmtree(TMP, ignore_errors=True)


main(teardown=teardown)
