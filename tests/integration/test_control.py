#!/usr/bin/python3
"""corrald's control socket (docs/internals/control-protocol.md), from the
server's side: where corrald agrees to create it (not over a file that is
not a socket, not in a directory others could have prepared), and what its
clients cannot do to the master: flood it with requests whose answers they
never read, hold its connections idle, leave requests half-sent. The last
case does all of that at once, with stderr blocked, journald stuck, a
notify flood and a scale, and `corralctl status` still answers within 2 s.
corralctl's side (its output, exit codes, which servers it trusts) is
test_corralctl.py."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tap import case, main, wait_for, eq, Skip  # noqa: E402
from corral import (Corrald, FakeJournal, CORRALD, HELLO, children, ctl, finish, free_port,  # noqa: E402
                    proc_environ, rss_kb, run, timed_status, wait_control)

TMP = tempfile.mkdtemp(prefix="corral-control-")


def connect_control(c, n):
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(c.control)
        socks.append(s)
    return socks


@case
def control_clients_that_never_read_are_not_read_either():
    """#11.6: 63 clients sending requests and never reading took the master
    to 100 % CPU and 350 MB. Now their input stays in the kernel."""
    c, n = run(["-w", "1", "-n", "flood"], ["/bin/sh", "-c", "exec sleep 3600"])
    socks = []
    try:
        wait_control(c)
        before = rss_kb(c.master_pid())
        socks = connect_control(c, 60)
        req = b'{"command":"status"}\n' * 3000
        for s in socks:
            s.setblocking(False)
            try:
                s.send(req)
            except BlockingIOError:
                pass
        st, dt = timed_status(c)
        time.sleep(0.5)   # let the master chew on what it took in
        st, dt2 = timed_status(c)
        after = rss_kb(c.master_pid())
        assert after - before < 60 * 1024, "master RSS grew from %d to %d KiB" % (before, after)
        print("# status in %.3fs and %.3fs with 60 flooding clients; RSS %d -> %d KiB" % (dt, dt2, before, after))
    finally:
        for s in socks:
            s.close()
        finish(c, n)


def closed_by_peer(s, timeout=10):
    """Whether the master closed s within timeout. An evicted client gets a
    "busy" result first (corralctl then tries again), nothing else."""
    s.settimeout(timeout)
    got = b""
    try:
        while True:
            d = s.recv(4096)
            if not d:
                break
            got += d
    except ConnectionResetError:
        pass
    except socket.timeout:
        return False
    for line in got.splitlines():
        assert json.loads(line).get("code") == "busy", "before the close: %r" % got
    return True


@case
def idle_control_connections_time_out_and_are_evicted():
    """#11.7: 64 idle connections locked corralctl out. Now the longest idle
    is evicted for a new client, and half-sent requests time out (5 s)."""
    c, n = run(["-w", "1", "-n", "idle"], ["/bin/sh", "-c", "exec sleep 3600"], env={"CORRAL_DEBUG": "1"})
    try:
        wait_control(c)
        partial = connect_control(c, 1)[0]
        partial.send(b'{"command":')
        socks = connect_control(c, 200)
        st, dt = timed_status(c)
        print("# status in %.3fs with 200 idle connections" % dt)
        c.wait_line(r"closed the longest idle one")
        # Evicted (the oldest) or timed out: either way closed by the master.
        assert closed_by_peer(partial), "the half-sent request's connection closed"
        for s in socks:
            s.close()
        socks = []
        # A fresh half-sent request is closed by its own time-out (5 s),
        # before the idle one (10 s) would.
        p2 = connect_control(c, 1)[0]
        p2.send(b'{"comm')
        t1 = time.monotonic()
        assert closed_by_peer(p2, timeout=20), "a half-sent request times out"
        took = time.monotonic() - t1
        c.wait_line(r"sent part of a request and no more; closing")
        assert 4 <= took, "half-sent request closed after %.1fs (expected ~5 s)" % took
        print("# half-sent request closed after %.1fs" % took)
        timed_status(c)
    finally:
        for s in socks:
            s.close()
        finish(c, n)


@case
def control_path_that_is_not_a_socket_is_never_removed():
    """#11.10: --control FILE deleted that regular file."""
    d = tempfile.mkdtemp(dir=TMP)
    f = os.path.join(d, "precious.txt")
    with open(f, "w") as fh:
        fh.write("keep me\n")
    c = Corrald(["-w", "1", "-n", "nsock", "--control", f], ["/bin/sh", "-c", "exec sleep 3600"])
    try:
        c.wait_exit(20)
        eq(c.stop(), 1, "corrald refuses\n" + c.output())
        assert "not a socket" in c.output(), c.output()
        eq(open(f).read(), "keep me\n", "the file is untouched")
    finally:
        c.kill()


@case
def untrusted_control_directories_are_refused():
    """#11.10: a control directory others may write to, or own, or reach
    through their symlink, was accepted."""
    if os.geteuid() != 0:
        raise Skip("needs root to make files owned by another user")
    base = tempfile.mkdtemp(dir=TMP)
    os.chmod(base, 0o755)
    ww = os.path.join(base, "ww")
    os.mkdir(ww)
    os.chmod(ww, 0o777)
    other = os.path.join(base, "other")
    os.mkdir(other, 0o755)
    os.chown(other, 65534, 65534)
    mine = os.path.join(base, "mine")
    os.mkdir(mine, 0o755)
    link = os.path.join(base, "link")
    os.symlink(mine, link)
    os.lchown(link, 65534, 65534)
    for d, why in ((ww, "writable by group or others"), (other, "owned by uid 65534"),
                   (link, "symlink owned by uid 65534")):
        c = Corrald(["-w", "1", "-n", "dirs", "--control", os.path.join(d, "x.sock")],
                    ["/bin/sh", "-c", "exec sleep 3600"])
        try:
            c.wait_exit(20)
            eq(c.stop(), 1, "corrald refuses %s\n%s" % (d, c.output()))
            assert why in c.output(), c.output()
        finally:
            c.kill()
    # The trusted directory behind that symlink is fine when named directly.
    c, n = run(["-w", "1", "-n", "dirs", "--control", os.path.join(mine, "x.sock")],
               ["/bin/sh", "-c", "exec sleep 3600"])
    try:
        c.control = os.path.join(mine, "x.sock")
        timed_status(c)
    finally:
        finish(c, n)
    # A directory root handed to another user (RuntimeDirectory= of a
    # DynamicUser= instance, shared /run/corral) is fine for root too: only
    # root could have made it. Under /tmp (above: "other") it is not.
    if os.access("/run", os.W_OK):
        handed = tempfile.mkdtemp(prefix="corral-handed-", dir="/run")
        try:
            os.chmod(handed, 0o755)
            os.chown(handed, 65534, 65534)
            c, n = run(["-w", "1", "-n", "dirs", "--control", os.path.join(handed, "x.sock")],
                       ["/bin/sh", "-c", "exec sleep 3600"])
            try:
                c.control = os.path.join(handed, "x.sock")
                timed_status(c)
            finally:
                finish(c, n)
        finally:
            shutil.rmtree(handed, ignore_errors=True)


@case
def everything_at_once_status_answers_and_workers_serve():
    """#11 "Done when": stderr blocked, journald stuck, 200 idle and 60
    flooding control clients, a notify flood and a scale, all at once:
    `corralctl status` answers within 2 s and the workers keep serving."""
    from corral import http_get
    import fcntl
    j = FakeJournal(stuck=True)
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETFL, os.O_NONBLOCK)
    try:
        while True:
            os.write(w, b"x" * 4096)
    except BlockingIOError:
        pass
    fcntl.fcntl(w, fcntl.F_SETFL, 0)
    d = tempfile.mkdtemp(dir=TMP)
    ctl_path = os.path.join(d, "ctl.sock")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "LISTEN_FDS")}
    env["CORRAL_TEST_JOURNAL_STDOUT"] = j.path
    p = subprocess.Popen([CORRALD, "--log", "journal", "-n", "all", "-w", "2", "--listen", "127.0.0.1:%d" % port,
                          "--control", ctl_path, "--", HELLO], stdin=subprocess.DEVNULL, stdout=w, stderr=w,
                         env=env, start_new_session=True)
    os.close(w)

    class C:
        control = ctl_path
    socks = []
    try:
        wait_for(lambda: os.path.exists(ctl_path), 10, "control socket")
        wait_for(lambda: (lambda st: st["ready"] == 2)(timed_status(C)[0]), 20, "2 workers ready")
        socks += connect_control(C, 200)
        flood = connect_control(C, 60)
        socks += flood
        req = b'{"command":"status"}\n' * 3000
        for s in flood:
            s.setblocking(False)
            try:
                s.send(req)
            except BlockingIOError:
                pass
        notify = proc_environ(children(p.pid)[0])["NOTIFY_SOCKET"]
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.setblocking(False)
        for i in range(20000):
            try:
                ns.sendto(b"STATUS=flood %d" % i, notify)
            except BlockingIOError:
                pass
        ns.close()
        _, worst = timed_status(C)
        t0 = time.monotonic()
        t = ctl(C, "scale", "8", timeout=10)
        eq(t.returncode, 0, "scale 8: %s%s" % (t.stdout, t.stderr))
        worst = max(worst, time.monotonic() - t0)
        assert worst < 2, "scale took %.2fs" % worst
        deadline = time.monotonic() + 20
        while True:
            st, dt = timed_status(C)
            worst = max(worst, dt)
            eq(http_get(port, timeout=5)[0], 200, "a worker answers")
            if st["ready"] == 8:
                break
            assert time.monotonic() < deadline, "8 workers ready: %r" % st
        print("# worst status %.3fs; master RSS %d KiB" % (worst, rss_kb(p.pid)))
    finally:
        for s in socks:
            s.close()
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(10)
        os.close(r)
        j.close()


def teardown(_):
    shutil.rmtree(TMP, ignore_errors=True)


main(teardown=teardown)
