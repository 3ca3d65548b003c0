#!/usr/bin/python3
"""The README's first command, verbatim, on a machine without cmocka.

`tools/install-deps.sh` without --test installs only the build
dependencies, so `meson setup build` must succeed without cmocka (the unit
tests are an `auto` feature) and the example must then serve. The test
copies the source tree, hides cmocka from meson (a pkg-config directory
without cmocka.pc and a cmake that does not run, the two ways meson looks),
and runs the README's line as a user pastes it, in a network and mount
namespace of its own so that 127.0.0.1:8080 and /run/corral are private.
It waits for corrald's "all 4 workers ready", asks for / with curl, and
stops corrald with SIGINT (the README's Ctrl-C). Needs root for the
namespaces. Also checks that -Dtests=enabled (what tests/run-all.sh and
debian/rules pass) still fails without cmocka rather than skipping."""
import glob
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tap import Skip, case, diag, eq, main  # noqa: E402
from corral import SRC  # noqa: E402

README_PREFIX = "tools/install-deps.sh &&"


def readme_first_command():
    """The line of README.md that starts with the install-deps call."""
    with open(os.path.join(SRC, "README.md")) as f:
        for line in f:
            if line.strip().startswith(README_PREFIX):
                return line.strip()
    raise AssertionError("README.md has no line starting with %r" % README_PREFIX)


def no_cmocka_env(tmp):
    """The environment of a machine where cmocka is not installed, as far as
    meson can tell: its pkg-config search path without cmocka.pc, and a
    cmake on PATH that fails (meson's fallback finds cmocka's cmake files)."""
    pc = os.path.join(tmp, "pkgconfig")
    os.mkdir(pc)
    out = subprocess.run(["pkg-config", "--variable", "pc_path", "pkg-config"],
                         capture_output=True, text=True, check=True).stdout.strip()
    for d in out.split(":"):
        for f in glob.glob(os.path.join(d, "*.pc")):
            name = os.path.basename(f)
            if name != "cmocka.pc" and not os.path.exists(os.path.join(pc, name)):
                os.symlink(f, os.path.join(pc, name))
    stub = os.path.join(tmp, "stub")
    os.mkdir(stub)
    with open(os.path.join(stub, "cmake"), "w") as f:
        f.write("#!/bin/sh\nexit 127\n")
    os.chmod(os.path.join(stub, "cmake"), 0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MESON", "CORRAL", "JOURNAL_STREAM", "NOTIFY_SOCKET", "LISTEN_",
                                "RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR", "ASAN", "UBSAN"))}
    env["PKG_CONFIG_LIBDIR"] = pc
    env.pop("PKG_CONFIG_PATH", None)
    env["PATH"] = stub + ":" + os.environ.get("PATH", "/usr/bin:/bin")
    return env


def setup():
    if os.geteuid() != 0:
        return None
    tmp = tempfile.mkdtemp(prefix="corral-firstrun-")
    tree = os.path.join(tmp, "corral")
    shutil.copytree(SRC, tree, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", "build*", "__pycache__", "*.deb"))
    return {"tmp": tmp, "tree": tree, "env": no_cmocka_env(tmp)}


def teardown(ctx):
    if ctx:
        shutil.rmtree(ctx["tmp"], ignore_errors=True)


def need_root(ctx):
    if ctx is None:
        raise Skip("needs root for network and mount namespaces")


@case
def cmocka_is_hidden(ctx):
    need_root(ctx)
    r = subprocess.run(["pkg-config", "--exists", "cmocka"], env=ctx["env"])
    eq(r.returncode != 0, True, "pkg-config finds no cmocka")
    r = subprocess.run(["pkg-config", "--exists", "libsystemd", "libuv", "libcjson"], env=ctx["env"])
    eq(r.returncode, 0, "pkg-config still finds the build dependencies")


@case
def readme_first_command_serves(ctx):
    need_root(ctx)
    line = readme_first_command()
    diag("running: " + line)
    # A private loopback and /run: the README's fixed port and the default
    # control socket (/run/corral/corral.sock) cannot clash with anything.
    inner = "ip link set lo up && mount -t tmpfs tmpfs /run && exec sh -c \"$1\""
    p = subprocess.Popen(["unshare", "--net", "--mount", "--propagation", "private",
                          "sh", "-c", inner, "sh", line],
                         cwd=ctx["tree"], env=ctx["env"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    out = []
    try:
        # Build and start: the whole build of the copied tree, bounded.
        deadline = time.monotonic() + 240
        buf = b""
        while not any("all 4 workers ready" in l for l in out):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no \"all 4 workers ready\" within 240 s")
            if p.poll() is not None and not select.select([p.stdout], [], [], 0)[0]:
                raise AssertionError("the command exited with %d before serving" % p.returncode)
            if select.select([p.stdout], [], [], min(left, 1.0))[0]:
                chunk = os.read(p.stdout.fileno(), 65536)
                if not chunk:
                    p.wait(timeout=10)
                    continue
                buf += chunk
                *lines, buf = buf.split(b"\n")
                out += [l.decode(errors="replace") for l in lines]
        # meson set up without cmocka: the configure log says so.
        log = open(os.path.join(ctx["tree"], "build/meson-logs/meson-log.txt")).read()
        eq("Run-time dependency cmocka found: NO" in log, True, "meson looked for cmocka and went on without it")
        # corrald is the process the shell exec'd into, in the namespace of p.
        curl = subprocess.run(["nsenter", "-t", str(p.pid), "-n", "curl", "-sS", "--max-time", "10",
                               "http://127.0.0.1:8080/"], capture_output=True, text=True, timeout=20)
        eq(curl.returncode, 0, "curl exit status (%s)" % curl.stderr.strip())
        eq(curl.stdout.strip(), "Hello World", "curl http://127.0.0.1:8080/")
        # Ctrl-C, to corrald alone: the shell around it then exits with
        # corrald's status (a shell that got SIGINT too would die of it).
        with open("/proc/%d/task/%d/children" % (p.pid, p.pid)) as f:
            children = [int(c) for c in f.read().split()]
        eq(len(children), 1, "the shell runs one child, corrald: %r" % children)
        os.kill(children[0], signal.SIGINT)
        rest, _ = p.communicate(timeout=30)
        out += (buf + rest).decode(errors="replace").splitlines()
        eq(p.returncode, 0, "corrald's exit status after SIGINT")
    except Exception:
        diag("\n".join(out[-40:]))
        raise
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@case
def tests_registered_without_cmocka(ctx):
    need_root(ctx)
    r = subprocess.run(["meson", "test", "-C", "build", "--list"], cwd=ctx["tree"], env=ctx["env"],
                       capture_output=True, text=True, timeout=120)
    eq(r.returncode, 0, "meson test --list (%s)" % r.stderr.strip())
    names = r.stdout.split()
    eq([n for n in names if n.startswith("corral:unit")], [], "no unit test without cmocka")
    eq("corral:integration" in r.stdout, True, "integration tests are still registered:\n" + r.stdout)


@case
def tests_enabled_requires_cmocka(ctx):
    need_root(ctx)
    r = subprocess.run(["meson", "setup", "build-enabled", "-Dtests=enabled"], cwd=ctx["tree"], env=ctx["env"],
                       capture_output=True, text=True, timeout=120)
    eq(r.returncode != 0, True, "meson setup -Dtests=enabled without cmocka fails")
    eq("cmocka" in r.stdout + r.stderr, True, "the failure names cmocka:\n" + r.stdout[-500:])


if __name__ == "__main__":
    main(setup, teardown)
