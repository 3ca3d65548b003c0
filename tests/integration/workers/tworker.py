#!/usr/bin/python3
"""A configurable test worker for corral's integration tests.

Usage: tworker.py MODE [ARGS]; behaviour by mode:
  serve          HTTP server on fd 3 (LISTEN_FDS), READY=1, graceful on SIGTERM; with
                 CORRAL_TEST_LIFELOG=FILE it appends "spawn PID SLOT" when it starts and
                 "ready PID SLOT" just before READY=1, so a test can tell which workers
                 were starting at the same time
  dump FILE      write env + /proc/self/fd listing as JSON to FILE.<pid>, READY=1, wait
  exit CODE      exit with CODE right away (after an optional READY=1 if READY_FIRST=1)
  never-ready    run forever without READY=1
  no-watchdog    READY=1, then never ping the watchdog
  watchdog       READY=1, ping WATCHDOG=1 every WATCHDOG_USEC/3
  leave          READY=1, wait LEAVE_MS, STOPPING=1, wait LEAVE_GRACE_MS, exit 0 (once per slot: a
                 marker file in CORRAL_TEST_DIR keeps the replacement from leaving too)
  hog MB         READY=1, then hold MB megabytes of touched memory
  pysystemd      READY=1 and STATUS= through python3-systemd's systemd.daemon.notify
  late-reader GO OUT  READY=1, leave CORRAL_IPC_FD unread until the file GO exists, then read
                 message lines until one whose data is "end" and write {"lines", "bad"} to OUT
The raw sd_notify client below is deliberately tiny; pysystemd mode uses the
real third-party library."""
import http.server
import json
import os
import signal
import socket
import sys
import threading
import time


def notify(msg):
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(msg.encode(), path)
    s.close()


def lifelog(what):
    path = os.environ.get("CORRAL_TEST_LIFELOG")
    if path:
        # One O_APPEND write per line: lines of concurrent workers never mix.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, ("%s %d %s\n" % (what, os.getpid(), os.environ.get("CORRAL_WORKER_ID"))).encode())
        os.close(fd)


def serve():
    lifelog("spawn")
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self):
            if self.path.startswith("/delay/"):
                time.sleep(int(self.path.split("/")[2]) / 1000.0)
            body = b"Hello World\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Worker-Pid", str(os.getpid()))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    sock = socket.socket(fileno=3)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H, bind_and_activate=False)
    srv.socket = sock
    srv.daemon_threads = False
    srv.block_on_close = True

    def stop(*_):
        threading.Thread(target=srv.shutdown).start()
    signal.signal(signal.SIGTERM, stop)
    lifelog("ready")
    notify("READY=1\nSTATUS=serving")
    srv.serve_forever(poll_interval=0.05)
    srv.server_close()      # joins request threads: in-flight requests finish
    sys.exit(0)


def wait_forever():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(3600)


def main():
    mode = sys.argv[1]
    if mode == "serve":
        serve()
    elif mode == "dump":
        fds = sorted(int(x) for x in os.listdir("/proc/self/fd"))
        info = {"env": dict(os.environ), "pid": os.getpid(), "fds": {}, "pgid": os.getpgid(0),
                "sigmask": open("/proc/self/status").read()}
        for fd in fds:
            try:
                info["fds"][fd] = os.readlink("/proc/self/fd/%d" % fd)
            except OSError:
                pass
        with open("%s.%d" % (sys.argv[2], os.getpid()), "w") as f:
            json.dump(info, f)
        notify("READY=1")
        wait_forever()
    elif mode == "exit":
        if os.environ.get("READY_FIRST"):
            notify("READY=1")
        sys.exit(int(sys.argv[2]))
    elif mode == "never-ready":
        wait_forever()
    elif mode == "no-watchdog":
        notify("READY=1")
        wait_forever()
    elif mode == "watchdog":
        notify("READY=1")
        interval = int(os.environ["WATCHDOG_USEC"]) / 3e6
        while True:
            time.sleep(interval)
            notify("WATCHDOG=1")
    elif mode == "leave":
        notify("READY=1")
        marker = os.path.join(os.environ["CORRAL_TEST_DIR"], "left.%s" % os.environ["CORRAL_WORKER_ID"])
        if os.path.exists(marker):
            wait_forever()
        time.sleep(int(os.environ.get("LEAVE_MS", "200")) / 1000.0)
        open(marker, "w").close()
        notify("STOPPING=1")
        time.sleep(int(os.environ.get("LEAVE_GRACE_MS", "500")) / 1000.0)
        sys.exit(0)
    elif mode == "hog":
        notify("READY=1")
        hold = bytearray(int(sys.argv[2]) * 1024 * 1024)
        for i in range(0, len(hold), 4096):
            hold[i] = 1
        wait_forever()
    elif mode == "pysystemd":
        from systemd import daemon
        daemon.notify("READY=1")
        daemon.notify("STATUS=python3-systemd says hi")
        wait_forever()
    elif mode == "late-reader":
        notify("READY=1")
        go, out = sys.argv[2], sys.argv[3]
        while not os.path.exists(go):
            time.sleep(0.02)   # this worker's whole point is not reading for a while
        lines = bad = 0
        ch = os.fdopen(int(os.environ["CORRAL_IPC_FD"]), "rb")
        for line in ch:
            try:
                data = json.loads(line)["data"]
                lines += 1
            except (ValueError, KeyError):
                bad += 1
                continue
            if data == "end":
                break
        with open(out + ".tmp", "w") as f:
            json.dump({"lines": lines, "bad": bad}, f)
        os.rename(out + ".tmp", out)
        wait_forever()
    else:
        sys.exit("unknown mode " + mode)


main()
