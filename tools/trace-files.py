#!/usr/bin/python3
"""Which of corrald's files one event goes through, in order (issue 20).

Runs corrald (2 corral-hello workers, balance shared) from BUILD_DIR,
attaches gdb with a breakpoint on every function of src/corrald/*.c that
records it and continues, then causes one event and records the function
entries until corrald reports it done:

  crash    kill -9 worker 0; done 0.5 s after its replacement was forked
           (corral-hello is ready within milliseconds; asking status
           would put the control path into the trace)
  reload   corralctl reload; done when the reload answered

A visit is a run of consecutive entries in the same file; the report gives
the sequence of visits and, per file, how many there were. The issue's
measure: each file visited at most twice per event. Entries from before
the event (timers, the loop's own turns) are not recorded.

Build with -Dbuildtype=debug for a faithful trace: at -O2 the compiler
inlines static functions, and an inlined call is not an entry.

Usage: trace-files.py BUILD_DIR {crash,reload} [--max N] [--sequence]
Exit status: 0 if no file was visited more than --max times (default 2).
Needs gdb; as root or with ptrace allowed (kernel.yama.ptrace_scope).
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "lib"))
from corral import children  # noqa: E402  (the master's children, from /proc)

SERVICES = {"log.c", "closer.c", "util.h", "fd-util.h", "macros.h", "worker.h", "-"}

GDB_SCRIPT = r'''
import gdb
entries = []
def file_of(frame):
    sal = frame.find_sal() if frame is not None else None
    if sal is None or sal.symtab is None:
        return "-"
    fn = sal.symtab.filename
    # corrald's own sources (and src/basic's headers); libuv and libc are "-"
    return fn.rsplit("/", 1)[-1] if "/src/" in fn or not fn.startswith("/") else "-"
class Rec(gdb.Breakpoint):
    def stop(self):
        if recording[0]:
            f = gdb.selected_frame()
            g = f.older()
            below, h = [], g
            while h is not None:
                below.append(file_of(h))
                h = h.older()
            outer = ",".join(sorted(set(x for x in below[1:] if x != "-"))) or "-"
            entries.append((file_of(f), f.name(), file_of(g), g.name() if g is not None and g.name() else "-",
                            outer))
        return False
recording = [False]
for name in open(%(names)r).read().split():
    Rec(name, internal=True)
gdb.execute("handle SIGCHLD SIGTERM SIGHUP SIGUSR1 SIGUSR2 SIGPIPE SIGALRM nostop noprint pass")
'''


def wait_for(cond, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    sys.exit("trace-files: timed out waiting for " + what)


def status(ctl, sock):
    r = subprocess.run([ctl, "-s", sock, "status", "--json"], capture_output=True, text=True, timeout=10)
    return json.loads(r.stdout) if r.returncode == 0 else None


def functions(build):
    """Function symbols of corrald's own objects, as gdb location specs."""
    objdir = os.path.join(build, "src", "corrald", "corrald.p")
    names = set()
    for o in sorted(os.listdir(objdir)):
        if not o.endswith(".c.o"):
            continue
        out = subprocess.run(["nm", "--defined-only", os.path.join(objdir, o)], capture_output=True,
                             text=True, check=True).stdout
        src = o[:-2]
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in "tT" and not parts[2].startswith((".", "__")):
                names.add("%s:%s" % (src, parts[2].split(".", 1)[0]))
    return sorted(names)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("build")
    ap.add_argument("event", choices=["crash", "reload"])
    ap.add_argument("--max", type=int, default=2)
    ap.add_argument("--sequence", action="store_true", help="print every entry, not only the visits")
    a = ap.parse_args()
    if not shutil.which("gdb"):
        sys.exit("trace-files: needs gdb (apt-get install gdb)")
    corrald = os.path.join(a.build, "src", "corrald", "corrald")
    ctl = os.path.join(a.build, "src", "corralctl", "corralctl")
    hello = os.path.join(a.build, "src", "hello", "corral-hello")
    tmp = tempfile.mkdtemp(prefix="trace-files.")
    sock = os.path.join(tmp, "control.sock")
    names = os.path.join(tmp, "functions")
    with open(names, "w") as f:
        f.write("\n".join(functions(a.build)))
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    log = open(os.path.join(tmp, "corrald.log"), "w")
    d = subprocess.Popen([corrald, "--listen", "127.0.0.1:%d" % port, "-w", "2", "--control", sock,
                          "--log", "stderr", "--", hello], stdout=log, stderr=log)
    gdb = None
    try:
        wait_for(lambda: (status(ctl, sock) or {}).get("ready") == 2 if os.path.exists(sock) else None,
                 15, "2 ready workers")
        before = status_retry(ctl, sock)
        with open(os.path.join(tmp, "rec.py"), "w") as f:
            f.write(GDB_SCRIPT % {"names": names})
        gdb = subprocess.Popen(["gdb", "-q", "-nx", "-p", str(d.pid), "-ex", "set pagination off",
                                "-ex", "source " + os.path.join(tmp, "rec.py")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def gdb_cmd(cmd, marker):
            """Run cmd at the gdb prompt (corrald stopped) and read until marker."""
            gdb.stdin.write(cmd + "\necho " + marker + "\\n\n")
            gdb.stdin.flush()
            out = []
            for line in gdb.stdout:
                if marker in line:
                    return "".join(out)
                out.append(line)
            sys.exit("trace-files: gdb ended:\n" + "".join(out[-20:]))

        gdb_cmd("python recording[0] = True", "@@armed")
        gdb.stdin.write("continue &\n")
        gdb.stdin.flush()
        if a.event == "crash":
            w0 = next(w for w in before["slots"] if w["id"] == 0)
            os.kill(w0["pid"], 9)
            old = {w["pid"] for w in before["slots"]}
            wait_for(lambda: set(children(d.pid)) - old, 30, "the replacement of worker 0")
            # Its readiness comes within milliseconds; a status request
            # would put the control path into the trace, so wait a window.
            time.sleep(0.5)
        else:
            r = subprocess.run([ctl, "-s", sock, "reload"], capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                sys.exit("trace-files: reload failed: " + r.stdout + r.stderr)
        gdb.stdin.write("interrupt\n")
        gdb.stdin.flush()
        out = gdb_cmd("python recording[0] = False\npython print('@@N', len(entries))\n"
                      "python [print('@@E', *e) for e in entries]", "@@done")
    finally:
        if gdb:
            try:
                gdb.stdin.write("detach\nquit\n")
                gdb.stdin.flush()
                gdb.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                gdb.kill()
        d.terminate()
        try:
            d.wait(timeout=20)
        except subprocess.TimeoutExpired:
            d.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    entries = re.findall(r"^@@E (\S+) (\S+) (\S+) (\S+) (\S+)$", out, re.M)
    # What one callback from the loop (a caller outside corrald) runs is a
    # turn. Reading a turn as a call tree, a file is visited when the path
    # first enters it, and again each time a call comes back into it while
    # it is still on the stack (A -> B -> A: a callback or a call up the
    # layers). Calls out and their returns are one visit. The helpers
    # everything calls (logging, the fd closer, src/basic, worker.h's
    # accessors) are not counted.
    turns = []
    for fn, func, caller, caller_func, outer in entries:
        if caller == "-":
            turns.append({"root": "%s (%s)" % (func, fn), "visits": {}, "seq": [], "back": []})
        elif not turns:
            continue
        t = turns[-1]
        t["seq"].append("%s:%s" % (fn, func))
        if fn in SERVICES or caller == fn:
            continue
        if fn not in t["visits"]:
            t["visits"][fn] = 1
        elif fn in outer.split(","):
            t["visits"][fn] += 1
            t["back"].append("%s <- %s" % (func, caller_func))
    print("%s: %d function entries in %d loop callbacks" % (a.event, len(entries), len(turns)))
    worst = 0
    for t in turns:
        print("  %s: %s" % (t["root"], ", ".join("%s %d" % kv for kv in t["visits"].items())))
        if t["back"]:
            print("      came back: " + ", ".join(t["back"]))
        if a.sequence:
            print("      " + " ".join(t["seq"]))
        worst = max([worst] + list(t["visits"].values()))
    print("most visits of one file in one callback: %d (limit %d): %s" % (worst, a.max,
                                                                           "ok" if worst <= a.max else "MORE"))
    return 0 if worst <= a.max else 1

def status_retry(ctl, sock):
    for _ in range(50):
        st = status(ctl, sock)
        if st:
            return st
        time.sleep(0.05)
    sys.exit("trace-files: no status from corrald")


if __name__ == "__main__":
    sys.exit(main())
