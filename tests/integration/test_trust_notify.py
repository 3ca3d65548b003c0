#!/usr/bin/python3
"""The notify socket and the IPC channel against everyone else (SPEC §3,
issue 19 item 2): the notify socket is a private file beside the control
socket that nobody can squat in advance, reach as another user, or find in
`corralctl list`; it survives an upgrade; and nothing from outside can
freeze the master through it or through the IPC channel.

The weapon: a TCP socket with unsent data, a zero window (the peer, a
listener of this test, never reads) and SO_LINGER {1, 20}. Whoever drops
the last reference to it waits in close() for up to 20 s (tcp_close()
lingers until the FIN is acknowledged). Sent in SCM_RIGHTS and closed by
the sender at once, the last reference is the master's. corrald used to
close such fds on its event loop: `status` then took 20 s.

The attack comes from a stranger (user nobody, who must not even reach
the notify socket: EACCES) and from a worker (its own notify datagrams and
IPC channel, which it may use, so the fds must be closed off the loop).
While it runs, `corralctl status` answers within 1.5 s and requests
through corrald (balance round-robin) within 2 s."""
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tap import case, main, wait_for, eq, diag  # noqa: E402
from corral import (Corrald, NotifySocket, CORRALCTL, HELLO, PY, TWORKER, finish, free_port,  # noqa: E402
                    http_get, proc_environ, run, slot, wait_status)

TMP = tempfile.mkdtemp(prefix="corral-trust-")
os.chmod(TMP, 0o755)            # nobody runs the attacker from here
NOBODY = 65534
STATUS_LIMIT = 1.5
REQUEST_LIMIT = 2.0
# How long the attack is watched: status and requests in a loop.
WATCH_SECONDS = 4.0

# Makes lingering sockets and sends them. Used as a stranger's program and
# inside a worker (imported through exec). Every socket is verified to have
# unsent bytes (SIOCOUTQ) before it is sent, so that the test cannot pass
# because the weapon was blunt.
WEAPON = r'''
import array, fcntl, os, socket, struct, termios

def lingering(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    try:
        while True:
            s.send(b"x" * 65536)
    except BlockingIOError:
        pass
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 20))
    q = array.array("i", [0])
    fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, q)
    assert q[0] > 0, "no unsent data"
    return s

kept = []

def send_with(sock, data, socks, addr=None, close=True):
    """sendmsg data with socks attached, then (close=True) drop our copies
    at once, so that the receiver most likely holds the last reference
    (if it was quicker, our own close lingers instead). Returns 0 or the
    errno. Sockets that could not be sent are kept: closing them here
    would linger; os._exit() at the end drops them without lingering (the
    kernel does not linger for an exiting task, inet_release())."""
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [s.fileno() for s in socks]))]
    try:
        if addr is None:
            sock.sendmsg([data], anc)
        else:
            sock.sendmsg([data], anc, 0, addr)
    except OSError as e:
        kept.extend(socks)
        return e.errno
    if close:
        for s in socks:
            s.close()
    else:
        kept.extend(socks)
    return 0
'''

STRANGER = WEAPON + r'''
import json, sys
path, port = sys.argv[1], int(sys.argv[2])
addr = "\0" + path[1:] if path.startswith("@") else path
out = {"uid": os.getuid(), "plain": 0, "with_fds": []}
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
try:
    d.sendto(b"STATUS=stranger", addr)
except OSError as e:
    out["plain"] = e.errno
for i in range(3):
    out["with_fds"].append(send_with(d, b"STATUS=stranger", [lingering(port), lingering(port)], addr))
print(json.dumps(out), flush=True)
os._exit(0)
'''

# A worker: slot 0 attacks once (both channels, from a child), writes a
# marker, then becomes corral-hello like the others. CORRAL_IPC_FD stays open across
# the exec (it is not CLOEXEC).
WORKER = WEAPON + r'''
import sys
marker, port, hello = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if os.environ.get("CORRAL_WORKER_ID") == "0" and not os.path.exists(marker):
    # A child of the worker (its notify datagrams count as the worker's)
    # sends and drops its copies at once, with nothing in between that
    # could let the master run first, so that the master most likely holds
    # the last reference. Should the master have been quicker, the child's
    # own close lingers, which delays only the child and its report (the
    # marker); the worker itself goes on at once.
    if os.fork() == 0:
        try:
            ipc = socket.socket(fileno=int(os.environ["CORRAL_IPC_FD"]))
            path = os.environ["NOTIFY_SOCKET"]
            addr = "\0" + path[1:] if path.startswith("@") else path
            d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            a, b, c, e = lingering(port), lingering(port), lingering(port), lingering(port)
            r1 = send_with(ipc, b'{"type":"message","data":"linger"}\n', [a, b])
            r2 = send_with(d, b"STATUS=linger attack", [c, e], addr)
            with open(marker + ".tmp", "w") as f:
                f.write("%d %d" % (r1, r2))
            os.rename(marker + ".tmp", marker)
        finally:
            os._exit(0)
os.execv(hello, [hello])
'''


class Tarpit:
    """A TCP listener that never accepts: connections to it sit in its
    accept queue with a tiny receive buffer, so their peers see a zero
    window. Closing it resets them (and ends any lingering close)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


def ctl(c, *args, timeout=30):
    return subprocess.run([CORRALCTL, "-s", c.control] + list(args), capture_output=True, text=True,
                          timeout=timeout)


def timed_status(c):
    t0 = time.monotonic()
    try:
        p = ctl(c, "--json", "status", timeout=STATUS_LIMIT + 25)
        ok = p.returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    return ok, time.monotonic() - t0


def timed_get(port):
    t0 = time.monotonic()
    try:
        code = http_get(port, timeout=REQUEST_LIMIT + 25)[0]
    except OSError:
        code = None
    return code, time.monotonic() - t0


def watch(c, port):
    """Status and a request, in turn, for WATCH_SECONDS: the worst of each."""
    worst_status = worst_get = 0.0
    failures = []
    deadline = time.monotonic() + WATCH_SECONDS
    while time.monotonic() < deadline:
        ok, dt = timed_status(c)
        worst_status = max(worst_status, dt)
        if not ok:
            failures.append("status failed")
        code, dt = timed_get(port)
        worst_get = max(worst_get, dt)
        if code != 200:
            failures.append("request: %r" % code)
    return worst_status, worst_get, failures


def start(name, workers, exec_):
    n = NotifySocket()
    port = free_port()
    c = Corrald(["-n", name, "-b", "round-robin", "-w", str(workers), "-l", "127.0.0.1:%d" % port],
                exec_, notify=n)
    n.wait("READY", "1")
    wait_status(c, lambda s: s["ready"] == workers, 20, "%d workers ready" % workers)
    return c, n, port


def worker_notify_socket(c):
    return proc_environ(c.workers()[0])["NOTIFY_SOCKET"]


@case
def notify_socket_is_a_private_file_next_to_the_control_socket():
    c, n, _ = start("trust-file", 1, [HELLO])
    try:
        path = worker_notify_socket(c)
        eq(path, c.control[:-len(".sock")] + ".notify", "NOTIFY_SOCKET next to the control socket")
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode), "not a socket: %o" % st.st_mode
        eq(stat.S_IMODE(st.st_mode), 0o600, "mode of the notify socket")
        eq(st.st_uid, os.geteuid(), "owner of the notify socket")
        with open("/proc/net/unix") as f:
            assert not any(l.split()[-1].startswith("@") and str(c.pid) in l for l in f), "abstract socket"
    finally:
        finish(c, n)
    assert not os.path.lexists(path), "the notify socket is left behind after a clean exit"


@case
def notify_socket_name_cannot_be_squatted():
    """#11.1: the notify socket used to be @corral/NAME/PID/notify; a user
    who bound it for the next pids kept corrald from starting."""
    held = []
    nxt = int(open("/proc/sys/kernel/ns_last_pid").read()) if os.path.exists("/proc/sys/kernel/ns_last_pid") else os.getpid()
    for pid in range(nxt + 1, nxt + 300):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind("\0corral/squat/%d/notify" % pid)
        held.append(s)
    try:
        c, n = run(["-n", "squat", "-w", "1"], TWORKER + ["pysystemd"])
        try:
            n.wait("READY", "1")
            assert c.master_pid() in range(nxt + 1, nxt + 300), "corrald's pid %d was squatted" % c.master_pid()
            env = proc_environ(c.workers()[0])
            # Not an abstract name at all any more: a socket file beside
            # the control socket (issue 19, item 2).
            eq(env["NOTIFY_SOCKET"], c.control[:-len(".sock")] + ".notify", "NOTIFY_SOCKET")
        finally:
            finish(c, n)
    finally:
        for s in held:
            s.close()


@case
def stranger_cannot_reach_the_notify_socket_and_cannot_freeze_the_master():
    pit = Tarpit()
    c, n, port = start("trust-stranger", 2, [HELLO])
    try:
        path = worker_notify_socket(c)
        p = subprocess.run(["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups",
                            PY, "-c", STRANGER, path, str(pit.port)],
                           capture_output=True, text=True, timeout=60, cwd=TMP)
        eq(p.returncode, 0, "the stranger's program: %s" % p.stderr)
        out = json.loads(p.stdout)
        eq(out["uid"], NOBODY, "the stranger's uid")
        worst_status, worst_get, failures = watch(c, port)
        diag("stranger: sends %r, worst status %.3fs, worst request %.3fs" % (out, worst_status, worst_get))
        eq(failures, [], "status and requests during the attack")
        assert worst_status < STATUS_LIMIT, "status took %.2fs during the attack" % worst_status
        assert worst_get < REQUEST_LIMIT, "a request took %.2fs during the attack" % worst_get
        import errno
        eq(out["plain"], errno.EACCES, "a stranger's plain datagram")
        eq(out["with_fds"], [errno.EACCES] * 3, "a stranger's datagrams with fds")
    finally:
        pit.close()
        finish(c, n)


@case
def worker_lingering_fds_are_closed_off_the_loop():
    pit = Tarpit()
    marker = os.path.join(TMP, "attacked")
    n = NotifySocket()
    port = free_port()
    c = Corrald(["-n", "trust-worker", "-b", "round-robin", "-w", "2", "-l", "127.0.0.1:%d" % port],
                [PY, "-c", WORKER, marker, str(pit.port), HELLO], notify=n, env={"CORRAL_DEBUG": "1"})
    try:
        # Slot 0 attacks before it becomes corral-hello; the watch starts
        # as soon as its fds are on their way.
        # Up to 2 x 20 s if the attacker's own closes came last and lingered.
        wait_for(lambda: os.path.exists(marker), 60, "the worker's attack")
        eq(open(marker).read(), "0 0", "the worker's sends (IPC, notify)")
        worst_status, worst_get, failures = watch(c, port)
        diag("worker: worst status %.3fs, worst request %.3fs" % (worst_status, worst_get))
        eq(failures, [], "status and requests during the attack")
        assert worst_status < STATUS_LIMIT, "status took %.2fs during the attack" % worst_status
        assert worst_get < REQUEST_LIMIT, "a request took %.2fs during the attack" % worst_get
        # The master did take both: the fds on the IPC line and those of
        # the notify datagram.
        c.wait_line(r"sent file descriptors on its IPC channel", timeout=10)
        c.wait_line(r"notify socket: .*file descriptors sent by pid", timeout=10)
    finally:
        pit.close()
        finish(c, n)


@case
def list_does_not_show_the_notify_socket():
    rd = tempfile.mkdtemp(prefix="corral-trust-rd-")
    n = NotifySocket()
    c = Corrald(["-n", "trust-list", "-w", "1"], [HELLO], notify=n, env={"RUNTIME_DIRECTORY": rd},
                own_control=False)
    c.control = os.path.join(rd, "trust-list.sock")
    try:
        n.wait("READY", "1")
        wait_for(lambda: os.path.exists(os.path.join(rd, "trust-list.notify")), 10, "the notify socket")
        p = subprocess.run([CORRALCTL, "--json", "list"], capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, RUNTIME_DIRECTORY=rd))
        eq(p.returncode, 0, "corralctl list: %s" % p.stderr)
        mine = [e for e in json.loads(p.stdout) if e["socket"].startswith(rd + "/")]
        eq([(e["name"], e["socket"]) for e in mine], [("trust-list", c.control)], "instances in %s" % rd)
    finally:
        finish(c, n)
        os.rmdir(rd)


@case
def the_notify_socket_survives_an_upgrade():
    """The upgrade carries the socket across execve(): the file stays (not
    unlinked), the new corrald reads its path back, and a worker started
    after the upgrade gets the same NOTIFY_SOCKET and becomes ready."""
    c, n, _ = start("trust-upgrade", 1, [HELLO])
    try:
        path = worker_notify_socket(c)
        old = slot(wait_status(c, lambda s: slot(s, 0)["state"] == "ready", 10, "slot 0 ready"), 0)["pid"]
        p = ctl(c, "upgrade")
        eq(p.returncode, 0, "corralctl upgrade: %s%s" % (p.stdout, p.stderr))
        assert stat.S_ISSOCK(os.lstat(path).st_mode), "the notify socket is gone after the upgrade"
        p = ctl(c, "restart", "0")
        eq(p.returncode, 0, "corralctl restart 0: %s%s" % (p.stdout, p.stderr))
        s = wait_status(c, lambda s: slot(s, 0)["pid"] != old and slot(s, 0)["state"] == "ready", 20,
                        "a new slot 0 ready")
        eq(proc_environ(slot(s, 0)["pid"])["NOTIFY_SOCKET"], path, "NOTIFY_SOCKET after the upgrade")
    finally:
        finish(c, n)
    assert not os.path.lexists(path), "the notify socket is left behind after a clean exit"


@case
def unprivileged_without_a_runtime_directory_uses_a_private_directory():
    """Embedded mode as a normal user with no XDG_RUNTIME_DIR: no control
    socket, so the notify socket goes in a mkdtemp() directory of its own
    (0700), and both go away on exit."""
    w = ("import os, socket, time; p = os.environ['NOTIFY_SOCKET']; print('NOTIFY_SOCKET=' + p, flush=True);"
         "socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'READY=1', p); time.sleep(600)")
    c = Corrald(["-n", "trust-fallback", "-w", "1"], [PY, "-c", w], user=NOBODY, own_control=False,
                env={"XDG_RUNTIME_DIR": "", "RUNTIME_DIRECTORY": "", "TMPDIR": ""})
    try:
        path = c.wait_line(r"NOTIFY_SOCKET=(/tmp/corral-notify\.[A-Za-z0-9]{6}/notify)$").group(1)
        c.wait_line(r"worker 0 \(pid \d+\) is ready")
        st, dst = os.lstat(path), os.lstat(os.path.dirname(path))
        eq((stat.S_ISSOCK(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid), (True, 0o600, NOBODY), "the socket")
        eq((stat.S_IMODE(dst.st_mode), dst.st_uid), (0o700, NOBODY), "its directory")
        eq(c.stop(), 0, "corrald's exit status\n" + c.output())
        assert not os.path.lexists(os.path.dirname(path)), "%s is left behind" % os.path.dirname(path)
    finally:
        c.kill()


if __name__ == "__main__":
    main()
