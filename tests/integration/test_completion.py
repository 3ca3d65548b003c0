#!/usr/bin/python3
"""Bash completion for corralctl and corrald (issue 21, item 8).

Each case sources shell-completion/bash/FILE in a fresh bash, sets
COMP_WORDS/COMP_CWORD as readline would, calls the completion function and
reads COMPREPLY: the real function, the real binaries (first on PATH), and
for instance names and slot numbers a real corrald. What it must offer is
taken from the source tables (tests/lib/source_tables.py), not written out
here, so a command or option added to the code must complete too."""
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tap import case, main, eq, Skip  # noqa: E402
from corral import BUILD, Corrald, NotifySocket, HELLO, free_port, finish  # noqa: E402
from source_tables import (SRC, balance_names, corrald_source_options, corralctl_source_commands,  # noqa: E402
                           corralctl_source_options)

CORRALD = os.environ.get("CORRALD", os.path.join(BUILD, "src/corrald/corrald"))
CORRALCTL = os.environ.get("CORRALCTL", os.path.join(BUILD, "src/corralctl/corralctl"))
COMPLETIONS = os.path.join(SRC, "shell-completion", "bash")
TMP = tempfile.mkdtemp(prefix="corral-completion-")

# The binaries under test, as the user's PATH would have them.
BIN = os.path.join(TMP, "bin")
os.makedirs(BIN)
os.symlink(CORRALD, os.path.join(BIN, "corrald"))
os.symlink(CORRALCTL, os.path.join(BIN, "corralctl"))

_isolation = None


def isolated():
    """A prefix giving bash a private, empty /run, so the host's
    /run/corral (other instances) cannot leak into the names offered."""
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


def complete(line, env=None, prefix=()):
    """COMPREPLY for the command line `line` (a list of words, the last one
    being completed), as a list."""
    cmd = line[0]
    script = ("source %s || exit 9\n"
              "COMP_WORDS=(%s); COMP_CWORD=%d\n"
              "[[ $(complete -p %s) == *' -F _%s '* ]] || exit 8\n"
              "_%s\n"
              "printf '%%s\\n' \"${COMPREPLY[@]}\"\n") % (
        shlex.quote(os.path.join(COMPLETIONS, cmd)), " ".join(shlex.quote(w) for w in line), len(line) - 1,
        cmd, cmd, cmd)
    e = {"PATH": BIN + ":/usr/bin:/bin", "HOME": TMP, "LC_ALL": "C"}
    e.update(env or {})
    p = subprocess.run(list(prefix) + ["bash", "--norc", "--noprofile", "-c", script], capture_output=True,
                       text=True, env=e, timeout=30)
    assert p.returncode == 0, "bash exited %d for %r: %s" % (p.returncode, line, p.stderr)
    assert not p.stderr, "completion of %r wrote to stderr: %s" % (line, p.stderr)
    return [w for w in p.stdout.split("\n") if w]


def flags(opts):
    return sorted({f for pair in opts for f in pair if f})


@case
def corralctl_commands_and_options():
    eq(sorted(complete(["corralctl", ""])), sorted(corralctl_source_commands()), "every command")
    eq(complete(["corralctl", "st"]), ["status"], "a prefix")
    eq(sorted(complete(["corralctl", "-i", "app", "un"])), ["undrain"], "after an option and its value")
    eq(sorted(complete(["corralctl", "-"])), flags(corralctl_source_options()), "every option")
    eq(complete(["corralctl", "--j"]), ["--json"], "a long option")
    eq(complete(["corralctl", "status", "--ins"]), ["--instance"], "options after the command")
    eq(complete(["corralctl", "logs", "-n", ""]), ["all"], "logs -n")
    eq(complete(["corralctl", "scale", "-1"]), [], "scale -1 is a number, not an option")


@case
def corralctl_signal_names():
    eq(complete(["corralctl", "signal", "US"]), ["USR1", "USR2"], "names without SIG")
    eq(complete(["corralctl", "signal", "SIGHU"]), ["SIGHUP"], "names with SIG")


@case
def corralctl_instances_and_slots_from_a_running_corrald():
    pre = isolated()
    rd = tempfile.mkdtemp(dir=TMP)
    # A socket that is no instance (a worker's own, say) is not offered.
    stray = subprocess.run(["python3", "-c", "import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])",
                            os.path.join(rd, "web.http.sock")])
    eq(stray.returncode, 0, "made a stray socket")
    n = NotifySocket()
    c = Corrald(["-w", "3", "-l", "127.0.0.1:%d" % free_port(), "-n", "comptest",
                 "--control", os.path.join(rd, "comptest.sock")], [HELLO], notify=n)
    try:
        n.wait("READY", "1")
        env = {"RUNTIME_DIRECTORY": rd}
        eq(complete(["corralctl", "-i", ""], env, pre), ["comptest"], "instance names")
        eq(complete(["corralctl", "--instance", "comp"], env, pre), ["comptest"], "a prefix of one")
        eq(complete(["corralctl", "-i", "x"], env, pre), [], "no such instance")
        slots = ["0", "1", "2"]
        eq(sorted(complete(["corralctl", "-i", "comptest", "restart", ""], env, pre)), slots + ["all"],
           "restart: slots and all")
        eq(sorted(complete(["corralctl", "-s", os.path.join(rd, "comptest.sock"), "send", ""], env, pre)),
           slots + ["all"], "send, with -s")
        eq(sorted(complete(["corralctl", "signal", "TERM", ""], env, pre)), slots + ["all"],
           "signal SIG: slots of the only instance")
        eq(sorted(complete(["corralctl", "logs", "-i", "comptest", "-w", ""], env, pre)), slots, "logs -w")
        eq(complete(["corralctl", "-i", "comptest", "restart", "a"], env, pre), ["all"], "a prefix of all")
    finally:
        finish(c, n)


@case
def corrald_options_and_values():
    eq(sorted(complete(["corrald", "-"])), sorted(flags(corrald_source_options()) + ["--"]), "every option")
    eq(complete(["corrald", "--bal"]), ["--balance"], "a prefix")
    eq(sorted(complete(["corrald", "-b", ""])), sorted(balance_names()), "balance names")
    eq(complete(["corrald", "--balance", "least"]), ["least-conn"], "a balance prefix")
    eq(sorted(complete(["corrald", "--log", ""])), ["auto", "journal", "stderr"], "log targets")
    eq(complete(["corrald", "-w", ""]), ["auto"], "workers")
    eq(complete(["corrald", "-l", ""]), [], "nothing to guess for an address")


@case
def corrald_files_and_the_worker_command():
    d = tempfile.mkdtemp(dir=TMP)
    for f in ("app.json", "notes.txt"):
        open(os.path.join(d, f), "w").close()
    os.mkdir(os.path.join(d, "sub"))
    eq(sorted(complete(["corrald", "-c", d + "/"])), [d + "/app.json", d + "/sub"], "-c: JSON files and directories")
    eq(sorted(complete(["corrald", "-w", "2", "--", "corral"])), ["corralctl", "corrald"], "after --: a command")
    eq(sorted(complete(["corrald", "-l", "8080", "corral"])), ["corralctl", "corrald"], "a bare word: a command")
    eq(complete(["corrald", "--", "corrald", "--bal"]), [], "the worker's own options are not ours")
    eq(complete(["corrald", "--", "cat", d + "/no"]), [d + "/notes.txt"], "the worker's arguments: files")


@case
def completion_files_are_installed():
    # The .deb takes what meson installs (debian/corral.install names the
    # directory); tests/packaging checks the package itself.
    build = os.environ.get("CORRAL_BUILD_DIR", BUILD)
    dest = tempfile.mkdtemp(dir=TMP)
    p = subprocess.run(["meson", "install", "-C", build, "--no-rebuild", "--destdir", dest],
                       capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise Skip("meson install failed: %s" % p.stderr[-500:])
    found = sorted(os.path.relpath(os.path.join(r, f), dest) for r, _, fs in os.walk(dest) for f in fs
                   if "bash-completion" in r)
    eq(sorted(os.path.basename(f) for f in found), ["corralctl", "corrald"], "installed: %r" % found)
    assert all("/share/bash-completion/completions/" in "/" + f for f in found), found
    with open(os.path.join(SRC, "debian", "corral.install")) as f:
        assert "usr/share/bash-completion/completions/" in f.read().split(), "debian/corral.install ships them"


main(teardown=lambda _: shutil.rmtree(TMP, ignore_errors=True))
