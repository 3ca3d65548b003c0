#!/usr/bin/python3
"""Self-test of tests/lib/sandbox.py: boot systemd in namespaces and exercise
socket activation, Type=notify, journald, stop, WatchdogSec and teardown with
a plain python service (no corral involved)."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tap import case, main, wait_for, eq, diag  # noqa: E402
import sandbox  # noqa: E402
from sandbox import Sandbox, SandboxError, CommandError  # noqa: E402

SERVER = r'''
import os, socket
from http.server import HTTPServer, BaseHTTPRequestHandler
from systemd import daemon

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello from %s\n" % os.environ.get("APP_NAME", "?")).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, fmt, *args):
        print("app request: " + fmt % args, flush=True)

fds = daemon.listen_fds()
assert fds == [3], fds
srv = HTTPServer(("127.0.0.1", 8080), H, bind_and_activate=False)
srv.socket = socket.socket(fileno=fds[0])
# Trees bound back in by the sandbox (a checkout under /tmp) do not count.
binds = os.environ.get("SANDBOX_BOUND", "").split()
tmp = [d for d in os.listdir("/tmp") if "/tmp/" + d not in binds]
print("app: serving on inherited fd %d, tmp=%s" % (fds[0], tmp), flush=True)
daemon.notify("READY=1")
srv.serve_forever()
'''

UNITS = {
    "app.socket": """\
[Unit]
Description=sandbox self-test socket

[Socket]
ListenStream=127.0.0.1:8080
""",
    "app.service": """\
[Unit]
Description=sandbox self-test http server

[Service]
Type=notify
NotifyAccess=main
Environment=APP_NAME=sandbox-app
ExecStart=/usr/bin/python3 -u /opt/selftest/server.py
PrivateTmp=yes
""",
    "dog.service": """\
[Unit]
Description=never pings its watchdog

[Service]
Type=notify
WatchdogSec=1
ExecStart=/usr/bin/python3 -u -c 'import time; from systemd import daemon; daemon.notify("READY=1"); print("dog: ready, not pinging", flush=True); time.sleep(600)'
""",
}

state = {}


def setup():
    sb = Sandbox(units=UNITS,
                 files={"/opt/selftest/server.py": SERVER,
                        "/etc/corral/selftest.json": '{"hello": 1}\n'},
                 timeout=30)
    sb.start()
    diag("sandbox %s booted in %.2fs (pid %d)" % (sb.name, sb.boot_time, sb.pid))
    return sb


def teardown(sb):
    sb.stop()


@case
def booted_target_and_journald(sb):
    eq(sb.is_active(sandbox.TARGET), "active", sandbox.TARGET)
    eq(sb.is_active("systemd-journald.service"), "active", "journald")
    eq(sb.run(["systemctl", "list-units", "--failed", "--no-legend"]).stdout.strip(),
       "", "failed units")
    eq(sb.prop("systemd-udevd.service", "LoadState") in ("masked", "not-found"), True,
       "udevd masked")


@case
def isolation(sb):
    eq(sb.read_file("/etc/corral/selftest.json"), '{"hello": 1}\n', "files= content")
    assert not os.path.exists("/etc/corral/selftest.json"), "sandbox file leaked to host"
    # / is read-only, /etc is a private overlay, lo is up, private hostname.
    r = sb.run(["touch", os.path.abspath(__file__) + ".x"], check=False)
    assert r.returncode != 0 and "Read-only" in r.stderr, r
    sb.write_file("/etc/corral/new.conf", "x=1\n", mode=0o600)
    eq(sb.run(["stat", "-c", "%a", "/etc/corral/new.conf"]).stdout.strip(), "600", "mode")
    assert not os.path.exists("/etc/corral/new.conf")
    eq(sb.run("hostname").stdout.strip(), sb.hostname, "hostname")
    assert ",UP," in sb.run(["ip", "link", "show", "lo"]).stdout, "lo is not up"
    eq(sb.run(["cat"], input="echo").stdout, "echo", "stdin input")
    eq(sb.run("echo $FOO", env={"FOO": "bar"}).stdout, "bar\n", "env")
    try:
        sb.run(["false"])
        raise AssertionError("CommandError expected")
    except CommandError:
        pass


@case
def socket_listens_service_inactive(sb):
    sb.systemctl("start", "app.socket")
    eq(sb.is_active("app.socket"), "active", "app.socket")
    eq(sb.is_active("app.service"), "inactive", "app.service before first connection")
    eq(sb.main_pid("app.service"), 0, "MainPID before first connection")


@case
def curl_activates_service(sb):
    state["cursor"] = sb.journal_cursor()
    r = sb.run(["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}",
                "http://127.0.0.1:8080/"])
    body, code = r.stdout.rsplit("\n", 1)
    eq(code, "200", "HTTP status")
    eq(body, "hello from sandbox-app\n", "HTTP body")
    p = sb.wait_active("app.service", timeout=10)
    eq(p["SubState"], "running", "SubState")
    pid = sb.main_pid("app.service")
    assert pid > 1, pid
    assert pid in sb.cgroup_pids("app.service"), (pid, sb.cgroup_pids("app.service"))
    hp = sb.host_pid(pid)
    assert hp and hp != pid, hp
    state["app_host_pid"] = hp


@case
def journal_has_service_output(sb):
    e = sb.wait_journal(lambda e: e.get("MESSAGE", "").startswith("app: serving"),
                        timeout=10, what="app start message",
                        matches=["_SYSTEMD_UNIT=app.service"])
    eq(e["_SYSTEMD_UNIT"], "app.service", "_SYSTEMD_UNIT")
    assert "tmp=[]" in e["MESSAGE"], e["MESSAGE"]      # PrivateTmp worked
    e = sb.wait_journal("app request:", timeout=10, unit="app.service",
                        since_cursor=state["cursor"])
    assert '"GET / HTTP/1.1" 200' in e["MESSAGE"], e["MESSAGE"]
    started = sb.journal(unit="app.service", matches=["_PID=1"])
    assert any("Started app.service" in x.get("MESSAGE", "") for x in started), \
        [x.get("MESSAGE") for x in started]


@case
def stop_service(sb):
    sb.systemctl("stop", "app.service")
    eq(sb.is_active("app.service"), "inactive", "app.service after stop")
    eq(sb.cgroup_pids("app.service"), [], "cgroup after stop")
    wait_for(lambda: not os.path.exists("/proc/%d" % state["app_host_pid"]), 5,
             "app process to be gone on the host")
    # the socket stays and re-activates the service
    eq(sb.is_active("app.socket"), "active", "app.socket after service stop")
    eq(sb.run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
               "http://127.0.0.1:8080/"]).stdout, "200", "re-activation")
    sb.wait_active("app.service", timeout=10)


@case
def unit_added_at_runtime(sb):
    sb.write_unit("late.service", "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
                  "ExecStart=/bin/echo late-unit-ran\n")
    sb.systemctl("start", "late.service")
    sb.wait_journal({"_SYSTEMD_UNIT": "late.service", "MESSAGE": "late-unit-ran"},
                    timeout=10)
    eq(sb.is_active("late.service"), "active", "late.service")


@case
def watchdog_kills_silent_service(sb):
    t0 = time.monotonic()
    sb.systemctl("start", "dog.service")
    sb.wait_active("dog.service", state="failed", timeout=20)
    eq(sb.prop("dog.service", "Result"), "watchdog", "Result")
    dt = time.monotonic() - t0
    assert 0.8 < dt < 20, dt
    sb.wait_journal(lambda e: "Watchdog timeout" in e.get("MESSAGE", ""), timeout=10,
                    unit="dog.service")


@case
def teardown_leaves_nothing(sb):
    pidns = sb.pidns
    cg = sb.cgroup
    pids = sb.host_pids()
    assert sb.pid in pids and len(pids) >= 3, pids   # systemd, journald, app
    sb.stop()
    sb.stop()   # idempotent
    eq(sandbox.pids_in_pidns(pidns), [], "processes left in the sandbox pid namespace")
    assert not any(os.path.exists("/proc/%d" % p) for p in pids), pids
    assert not os.path.exists(cg), cg
    assert not os.path.exists(sb.state_dir) or os.environ.get("CORRAL_SANDBOX_KEEP")
    try:
        sb.run(["true"])
        raise AssertionError("run() after stop() should fail")
    except SandboxError:
        pass


if __name__ == "__main__":
    why = Sandbox.usable()
    if why:
        print("1..0 # SKIP systemd sandbox unusable: %s" % why, flush=True)
        sys.exit(0)
    main(setup, teardown)
