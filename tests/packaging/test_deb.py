#!/usr/bin/python3
"""The Debian package, end to end (SPEC §10), as TAP.

Builds the .deb from a copy of the source tree exactly as the README says
(`dpkg-buildpackage -us -uc -b`), runs lintian on it and on the source,
checks its file list and maintainer scripts, then installs it with dpkg in
a systemd sandbox (tests/lib/sandbox.py, with /usr as a writable overlay
too, so dpkg can unpack into it), serves the example units, upgrades it
under load (corrald re-executes in place: the .socket, the MainPID and every
worker stay), and purges it, checking that nothing is left behind.

Needs root, debhelper, lintian and the build dependencies (tools/
install-deps.sh --test installs them). CORRAL_PACKAGING_KEEP=1 keeps the
build directory. Runs in about a minute."""
import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SRC, "tests", "lib"))
from tap import case, main, wait_for, eq, Skip, diag  # noqa: E402
from sandbox import Sandbox, OVERLAYS  # noqa: E402

DEB_DIR_IN_SANDBOX = "/srv/corral-deb"
UNITDIR = "/lib/systemd/system"   # systemd.pc's systemdsystemunitdir on Debian 12

# Always in the package. corralctl is added when the tree builds it.
EXPECTED = [
    "/usr/bin/corrald",
    "/usr/libexec/corral/corral-hello",
    UNITDIR + "/corral@.socket",
    UNITDIR + "/corral@.service",
    "/usr/share/man/man8/corrald.8.gz",
    "/usr/share/man/man1/corralctl.1.gz",
    "/usr/share/man/man5/corral.json.5.gz",
    "/usr/share/bash-completion/completions/corrald",
    "/usr/share/bash-completion/completions/corralctl",
    "/usr/share/doc/corral/examples/app.socket",
    "/usr/share/doc/corral/examples/app.service",
    "/usr/share/doc/corral/examples/app.json",
    "/usr/share/doc/corral/examples/corral-metrics.socket",
    "/usr/share/doc/corral/examples/corral-metrics@.service",
    "/usr/share/doc/corral/examples/node-worker.js",
    "/usr/share/doc/corral/node.md.gz",   # dh_compress: over 4 KiB
    "/usr/share/doc/corral/copyright",
    "/usr/share/doc/corral/changelog.gz",
]
HAS_CORRALCTL = os.path.exists(os.path.join(SRC, "src", "corralctl", "meson.build"))
if HAS_CORRALCTL:
    EXPECTED.append("/usr/bin/corralctl")

# Connection-per-request HTTP client on a unix socket, until STOP exists.
LOAD = r'''
import os, socket, sys, time
path, stop = sys.argv[1], sys.argv[2]
ok = bad = 0
errors = {}
while not os.path.exists(stop):
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(20)
        s.connect(path)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            c = s.recv(4096)
            if not c:
                break
            data += c
        s.close()
        if data.startswith(b"HTTP/1.1 200") and b"Hello World" in data:
            ok += 1
        else:
            bad += 1
            errors[repr(data[:40])] = errors.get(repr(data[:40]), 0) + 1
    except OSError as e:
        bad += 1
        errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
        time.sleep(0.01)
print(ok, bad, errors, flush=True)
'''

# Where the purge check looks, and what may legitimately differ there: the
# dpkg database and logs, and the caches that triggers regenerate.
SNAPSHOT_DIRS = ("/etc", "/usr", "/var", "/opt", "/srv")
SNAPSHOT_IGNORE = re.compile(r"^(/var/lib/dpkg/|/var/log/|/var/cache/(man|debconf|ldconfig)/|/etc/ld\.so\.cache$)")


def run(cmd, cwd=None, timeout=300, env=None, check=True):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, **(env or {})))
    if check and r.returncode != 0:
        raise AssertionError("%s exited %d\n--- stdout:\n%s\n--- stderr:\n%s"
                             % (shlex.join(cmd), r.returncode, r.stdout[-4000:], r.stderr[-4000:]))
    return r


BUILD_LEFTOVER = re.compile(r"^(obj-[^/]*/|build[^/]*/|\.build[^/]*/|debian/(\.debhelper/|corral/|tmp/|files$|.*\.substvars$|"
                            r".*\.debhelper(\.log)?$|debhelper-build-stamp$))|(^|/)(__pycache__/|\.git/)|\.pyc$")


def source_files():
    """The files a clean clone would have: tracked plus new, not ignored,
    minus what a package build in the tree would leave behind. Outside a
    git checkout (an unpacked tarball): every file but build directories."""
    if os.path.isdir(os.path.join(SRC, ".git")) and shutil.which("git"):
        r = run(["git", "-C", SRC, "ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        files = r.stdout.split("\0")
    else:
        files = [os.path.relpath(os.path.join(d, f), SRC) for d, _, fs in os.walk(SRC) for f in fs]
    return sorted(f for f in files if f and not BUILD_LEFTOVER.search(f)
                  and os.path.lexists(os.path.join(SRC, f)))


def setup():
    if os.environ.get("CORRAL_PACKAGING_TEST"):
        raise Skip("already inside a package build")
    if os.geteuid() != 0:
        raise Skip("needs root")
    for tool in ("dpkg-buildpackage", "dh", "lintian"):
        if not shutil.which(tool):
            raise Skip("%s not installed (tools/install-deps.sh --test)" % tool)
    ctx = {"tmp": tempfile.mkdtemp(prefix="corral-deb-"), "sb": None}
    version = run(["dpkg-parsechangelog", "-l", os.path.join(SRC, "debian/changelog"), "-S", "Version"]).stdout.strip()
    ctx["version"] = version
    ctx["src"] = os.path.join(ctx["tmp"], "corral-" + version)
    return ctx


def teardown(ctx):
    if not ctx:
        return
    if ctx.get("sb"):
        ctx["sb"].stop()
    if os.environ.get("CORRAL_PACKAGING_KEEP"):
        diag("kept " + ctx["tmp"])
    else:
        shutil.rmtree(ctx["tmp"], ignore_errors=True)


def need(ctx, key):
    if not ctx.get(key):
        raise Skip("an earlier step failed")
    return ctx[key]


def copy_source(dest):
    for f in source_files():
        dst = os.path.join(dest, f)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(os.path.join(SRC, f), dst, follow_symlinks=False)


@case
def dpkg_buildpackage_builds_the_deb(ctx):
    copy_source(ctx["src"])
    # The build dependencies are what debian/control says, and installed.
    run(["dpkg-checkbuilddeps"], cwd=ctx["src"])
    t0 = time.monotonic()
    r = run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=ctx["src"], timeout=600,
            env={"CORRAL_PACKAGING_TEST": "1", "DEB_BUILD_OPTIONS": "parallel=%d" % (os.cpu_count() or 1)})
    diag("dpkg-buildpackage -us -uc -b: %.1fs" % (time.monotonic() - t0))
    assert "dh_auto_test" in r.stdout + r.stderr, "the unit tests did not run"
    debs = [f for f in os.listdir(ctx["tmp"]) if f.endswith(".deb") and "-dbgsym_" not in f]
    eq(sorted(re.sub(r"_.*", "", d) for d in debs), ["corral", "libcorral-dev", "libcorral0"], "binary packages built")
    ctx["deb"] = os.path.join(ctx["tmp"], [d for d in debs if d.startswith("corral_")][0])
    ctx["changes"] = os.path.join(ctx["tmp"], [f for f in os.listdir(ctx["tmp"]) if f.endswith(".changes")][0])


def lintian(*args):
    r = run(["lintian", "--fail-on", "error,warning", "--display-info", "--show-overrides"] + list(args),
            check=False, timeout=300)
    text = r.stdout.strip()
    diag("lintian %s:\n%s" % (" ".join(os.path.basename(a) for a in args), text or "(nothing)"))
    err = "\n".join(l for l in r.stderr.splitlines() if "running with root privileges" not in l).strip()
    assert not err, "lintian: " + err
    bad = [l for l in text.splitlines() if re.match(r"^[EW]: ", l)]
    eq((r.returncode, bad), (0, []), "lintian errors and warnings")
    # An override must say why: a comment line right above it.
    for f in ("debian/corral.lintian-overrides", "debian/source/lintian-overrides"):
        p = os.path.join(SRC, f)
        if os.path.exists(p):
            prev = ""
            for line in open(p):
                if line.strip() and not line.startswith("#"):
                    assert prev.startswith("#"), "%s: override without a reason: %s" % (f, line.strip())
                prev = line


@case
def lintian_binary_is_clean(ctx):
    lintian(need(ctx, "changes"))


@case
def lintian_source_is_clean(ctx):
    # From a fresh copy: the build tree holds the build's leftovers.
    d = os.path.join(ctx["tmp"], "source")
    copy_source(os.path.join(d, os.path.basename(ctx["src"])))
    run(["dpkg-source", "--build", os.path.basename(ctx["src"])], cwd=d, timeout=120)
    dsc = [f for f in os.listdir(d) if f.endswith(".dsc")][0]
    lintian(os.path.join(d, dsc))


@case
def deb_holds_the_expected_files(ctx):
    deb = need(ctx, "deb")
    listing = run(["dpkg-deb", "-c", deb]).stdout
    files = {}
    for line in listing.splitlines():
        parts = line.split(None, 5)
        name = parts[5].split(" -> ")[0].lstrip(".").rstrip("/")
        files[name] = parts[0]
    missing = [f for f in EXPECTED if f not in files]
    assert not missing, "missing from the .deb: %s\n%s" % (missing, listing)
    for f in ("/usr/bin/corrald", "/usr/libexec/corral/corral-hello") + (("/usr/bin/corralctl",) if HAS_CORRALCTL else ()):
        assert files[f].startswith("-rwxr-xr-x"), "%s: mode %s" % (f, files[f])
    stray = [f for f in files if f.startswith(("/usr/local", "/usr/lib/systemd", "/etc"))
             or "/test" in f or f.startswith("/usr/include")]
    assert not stray, "unexpected files in the .deb: %s" % stray
    if not HAS_CORRALCTL:
        diag("src/corralctl is not in this tree yet: /usr/bin/corralctl not checked")


@case
def binaries_have_help_and_man_pages_render(ctx):
    deb = need(ctx, "deb")
    root = os.path.join(ctx["tmp"], "x")
    run(["dpkg-deb", "-x", deb, root])
    bins = ["usr/bin/corrald"] + (["usr/bin/corralctl"] if HAS_CORRALCTL else [])
    for b in bins:
        r = run([os.path.join(root, b), "--help"])
        assert r.stdout.startswith("Usage: " + os.path.basename(b)), r.stdout
        r = run([os.path.join(root, b), "--version"])
        assert ctx["version"].split("-")[0] in r.stdout, r.stdout
    for page in ("man8/corrald.8.gz", "man1/corralctl.1.gz", "man5/corral.json.5.gz"):
        r = run(["man", "--warnings", "-E", "UTF-8", "-l", os.path.join(root, "usr/share/man", page)],
                env={"MANWIDTH": "80", "LC_ALL": "C.UTF-8", "MANPAGER": "cat", "PAGER": "cat"})
        assert not r.stderr.strip(), "%s: %s" % (page, r.stderr)
        assert "SYNOPSIS" in r.stdout, page


@case
def maintainer_scripts_never_restart_a_socket(ctx):
    deb = need(ctx, "deb")
    ctrl = os.path.join(ctx["tmp"], "ctrl")
    run(["dpkg-deb", "-e", deb, ctrl])
    for script in ("preinst", "postinst", "prerm", "postrm"):
        p = os.path.join(ctrl, script)
        if not os.path.exists(p):
            continue
        text = open(p).read()
        run(["sh", "-n", p])
        for line in text.splitlines():
            if re.search(r"(deb-systemd-invoke|systemctl).*\b(restart|try-restart|reload-or-restart|stop|start)\b", line) \
                    and not line.lstrip().startswith("#"):
                # Sockets only stop on removal (prerm remove), never restart.
                assert ".socket" not in line or script == "prerm", "%s: %s" % (script, line)
                assert "enable" not in line, "%s enables a unit: %s" % (script, line)
    # Templates are not enabled: no deb-systemd-helper enable anywhere.
    assert "deb-systemd-helper enable" not in open(os.path.join(ctrl, "postinst")).read()


def snapshot(sb):
    out = sb.run(["find"] + list(SNAPSHOT_DIRS) + ["-xdev", "-path", DEB_DIR_IN_SANDBOX, "-prune", "-o", "-print"],
                 timeout=120).stdout
    return {p for p in out.splitlines() if not SNAPSHOT_IGNORE.match(p + "/") and not SNAPSHOT_IGNORE.match(p)}


@case
def installs_in_a_systemd_sandbox(ctx):
    deb = need(ctx, "deb")
    if Sandbox.usable():
        raise Skip(Sandbox.usable())
    demo = '{"exec": ["/usr/libexec/corral/corral-hello"], "workers": 2}\n'
    sb = Sandbox(overlays=OVERLAYS + ("/usr",),
                 binds={os.path.dirname(deb): (DEB_DIR_IN_SANDBOX, "ro")},
                 files={"/etc/corral/demo.json": demo}, timeout=60)
    sb.start()
    ctx["sb"] = sb
    sb.run(["test", "!", "-e", "/usr/bin/corrald"])
    # A host (a container, a build chroot) may forbid maintainer scripts to
    # touch services with policy-rc.d; that policy is not the sandbox's.
    sb.run(["rm", "-f", "/usr/sbin/policy-rc.d"])
    ctx["before"] = snapshot(sb)
    ctx["units_before"] = sb.run(["ls", "-A", "/etc/systemd/system"]).stdout
    r = sb.run(["dpkg", "-i", DEB_DIR_IN_SANDBOX + "/" + os.path.basename(deb)], timeout=120,
               env={"DEBIAN_FRONTEND": "noninteractive"})
    diag(r.stdout.strip())
    eq(sb.run(["dpkg-query", "-W", "-f", "${Status}", "corral"]).stdout, "install ok installed", "dpkg status")
    # Nothing enabled, nothing started.
    eq(sb.run(["ls", "-A", "/etc/systemd/system"]).stdout, ctx["units_before"], "/etc/systemd/system after install")
    active = sb.run("systemctl list-units --all --plain --no-legend 'corral@*' 'app.*' | grep -v ' inactive ' || true").stdout
    eq(active.strip(), "", "corral units active after install")
    installed = snapshot(sb) - ctx["before"]
    # (/lib is /usr/lib on a merged-/usr system.)
    assert "/usr/bin/corrald" in installed and {UNITDIR + "/corral@.service", "/usr" + UNITDIR + "/corral@.service"} & installed, \
        "the file list does not see the installed files: %s" % sorted(installed)
    # bash-completion loads /usr/share/bash-completion/completions/NAME for
    # NAME on first use; the installed file must work there as it is.
    r = sb.run(["bash", "-c", "source /usr/share/bash-completion/completions/corralctl && "
                "COMP_WORDS=(corralctl st) COMP_CWORD=1 && _corralctl && echo \"${COMPREPLY[*]}\""])
    eq(r.stdout.strip(), "status", "installed corralctl completion")
    ctx["installed"] = True


@case
def units_verify_clean_with_man_pages(ctx):
    need(ctx, "installed")
    sb = ctx["sb"]
    # As test_systemd.py does, but against the installed files and with the
    # Documentation= man pages checked (--man=yes, the default).
    r = sb.run("d=$(mktemp -d) && cd $d && "
               "ln -s %s/corral@.socket corral@x.socket && ln -s %s/corral@.service corral@x.service && "
               "cp /usr/share/doc/corral/examples/app.socket /usr/share/doc/corral/examples/app.service . && "
               "SYSTEMD_UNIT_PATH=$d: systemd-analyze verify corral@x.socket corral@x.service app.socket app.service"
               % (UNITDIR, UNITDIR), check=False)
    eq((r.returncode, (r.stdout + r.stderr).strip()), (0, ""), "systemd-analyze verify")


@case
def example_units_serve_and_log(ctx):
    need(ctx, "installed")
    sb = ctx["sb"]
    # SPEC's "Typical use", as an admin types it: the unit runs
    # corrald --config /etc/corral/app.json.
    sb.run(["bash", "-c", "cp /usr/share/doc/corral/examples/app.{socket,service} /etc/systemd/system/ && "
            "mkdir -p /etc/corral && cp /usr/share/doc/corral/examples/app.json /etc/corral/"])
    sb.daemon_reload()
    sb.systemctl("start", "app.socket")
    r = sb.run(["curl", "-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}",
                "http://127.0.0.1:8080/"])
    eq(r.stdout, "200", "HTTP status from app.socket")
    sb.wait_active("app.service")
    n = int(sb.run(["nproc"]).stdout)

    def all_ready():
        ev = [e for e in sb.journal("app.service", ["CORRAL_EVENT=ready"]) if e.get("CORRAL_INSTANCE") == "app"]
        return ev if len(ev) >= n else None
    ready = wait_for(all_ready, 20, "%d workers ready in the journal" % n, interval=0.2)
    text = sb.run(["journalctl", "--no-pager", "-u", "app"]).stdout
    pids = {e["CORRAL_WORKER_PID"] for e in ready}
    diag("journalctl -u app: %d workers ready, pids %s" % (len(ready), " ".join(sorted(pids))))
    for pid in pids:
        assert pid in text, "worker %s not in journalctl -u app:\n%s" % (pid, text)
    main = sb.main_pid("app.service")
    workers = [p for p in sb.cgroup_pids("app.service") if p != main]
    eq(len(workers), n, "workers in app.service's cgroup")
    # systemctl reload re-reads /etc/corral/app.json: a good file reloads,
    # and corralctl reaches the instance as root.
    sb.systemctl("reload", "app.service")
    r = sb.run(["corralctl", "-i", "app", "status"])
    assert re.search(r"^Generation: +2$", r.stdout, re.M), r.stdout
    sb.systemctl("stop", "app.socket", "app.service")
    eq(sb.is_active("app.service"), "inactive", "app.service after stop")
    eq(sb.cgroup_pids("app.service"), [], "processes left of app.service")
    sb.run(["rm", "/etc/systemd/system/app.socket", "/etc/systemd/system/app.service", "/etc/corral/app.json"])
    sb.daemon_reload()


@case
def upgrade_keeps_every_worker_and_never_restarts_sockets(ctx):
    need(ctx, "installed")
    sb = ctx["sb"]
    sb.systemctl("start", "corral@demo.socket")
    path = "/run/corral/demo.http.sock"
    r = sb.run(["curl", "-sS", "--max-time", "20", "--unix-socket", path, "-o", "/dev/null", "-w", "%{http_code}",
                "http://x/"])
    eq(r.stdout, "200", "HTTP status from corral@demo.socket")
    sb.wait_active("corral@demo.service")
    sock_before = sb.show("corral@demo.socket", "ActiveEnterTimestampMonotonic", "NAccepted")
    pid_before = sb.main_pid("corral@demo.service")
    workers_before = sorted(p for p in sb.cgroup_pids("corral@demo.service") if p != pid_before)
    stop = "/run/load-stop"
    load = sb.spawn(["python3", "-c", LOAD, path, stop], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        # Reinstalling the same version runs the upgrade path of the
        # maintainer scripts (prerm upgrade, postinst configure OLD).
        r = sb.run(["dpkg", "-i", DEB_DIR_IN_SANDBOX + "/" + os.path.basename(ctx["deb"])], timeout=120,
                   env={"DEBIAN_FRONTEND": "noninteractive"})
        diag("upgrade took %.1fs" % (time.monotonic() - t0))
        time.sleep(0.5)
    finally:
        sb.run(["touch", stop])
        out, err = load.communicate(timeout=60)
    ok, bad = [int(x) for x in out.split()[:2]]
    errors = ast.literal_eval(out.split(None, 2)[2].strip())
    diag("requests during the upgrade: %d ok, %d failed %s" % (ok, bad, errors))
    assert ok > 0, "no request succeeded during the upgrade: %s %s" % (out, err)
    # The socket stays open across the upgrade and the old workers finish
    # what they accepted (a fresh connection gets its first request
    # answered even during a stop), so nothing fails at all.
    refused = {k: v for k, v in errors.items() if k in ("ConnectionRefusedError", "FileNotFoundError")}
    eq(refused, {}, "connections refused during the upgrade")
    eq(bad, 0, "failed requests during the upgrade (%s)" % errors)
    sock_after = sb.show("corral@demo.socket", "ActiveEnterTimestampMonotonic", "NAccepted")
    eq(sock_after["ActiveEnterTimestampMonotonic"], sock_before["ActiveEnterTimestampMonotonic"],
       "corral@demo.socket must not be restarted")
    sb.wait_active("corral@demo.service")
    # postinst re-executed corrald in place (corralctl upgrade): same
    # MainPID, the same workers, and no restart of the unit.
    eq(sb.main_pid("corral@demo.service"), pid_before, "MainPID across the upgrade:\n" + r.stdout + r.stderr)
    eq(sorted(p for p in sb.cgroup_pids("corral@demo.service") if p != pid_before), workers_before,
       "worker pids across the upgrade")
    eq(sb.show("corral@demo.service", "NRestarts")["NRestarts"], "0", "restarts of corral@demo.service")
    st = json.loads(sb.run(["corralctl", "-i", "demo", "--json", "status"]).stdout)
    eq(st.get("upgrades"), 1, "upgrades counted in status")


@case
def purge_leaves_nothing_behind(ctx):
    need(ctx, "installed")
    sb = ctx["sb"]
    sb.run(["dpkg", "--purge", "corral"], timeout=120, env={"DEBIAN_FRONTEND": "noninteractive"})
    # prerm stopped the instance that was still running.
    for u in ("corral@demo.socket", "corral@demo.service"):
        eq(sb.is_active(u), "inactive", u + " after purge")
    eq(sb.run(["dpkg-query", "-W", "-f", "${Status}", "corral"], check=False).stdout.strip() in
       ("", "unknown ok not-installed"), True, "dpkg status after purge")
    left = sb.run("ls /var/lib/dpkg/info/ | grep '^corral\\.' || true").stdout.strip()
    eq(left, "", "dpkg info files left")
    after = snapshot(sb)
    eq(sorted(after - ctx["before"]), [], "files left after purge")
    eq(sorted(ctx["before"] - after), [], "files removed by install+purge")
    eq(sb.run(["ls", "-A", "/etc/systemd/system"]).stdout, ctx["units_before"], "/etc/systemd/system after purge")


main(setup=setup, teardown=teardown)
