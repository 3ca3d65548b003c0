#!/usr/bin/python3
"""The documentation agrees with the code (issue 21, item 3).

The truth is the source: corrald's getopt table, corralctl's option and
command tables, the balance names and config keys of config.c, the signals
of manager.c. Every flag and command the code accepts must be in `--help`
and in the man page (corrald(8), corralctl(1), corral.json(5)), and in the
README for corrald's flags and corralctl's commands; every flag and command
that `--help` or a man page names must exist, both in the table and in the
binary (run with it, it must not say "unrecognized option" or "unknown
command"). So adding a flag without documenting it, or documenting one that
does not exist, fails here."""
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tap import case, main  # noqa: E402
from corral import BUILD  # noqa: E402
from source_tables import (balance_names, config_keys, corrald_source_options, corralctl_source_commands,  # noqa: E402
                           corralctl_source_options, handled_signals, read)

CORRALD = os.environ.get("CORRALD", os.path.join(BUILD, "src/corrald/corrald"))
CORRALCTL = os.environ.get("CORRALCTL", os.path.join(BUILD, "src/corralctl/corralctl"))
TMP = tempfile.mkdtemp(prefix="corral-docs-")


def run(argv, **kw):
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20, **kw)


def section(scd, title):
    """The text of the man page section `# TITLE` up to the next one."""
    m = re.search(r"^# %s\n(.*?)(?=^# |\Z)" % re.escape(title), scd, re.S | re.M)
    assert m, "no section %s" % title
    return m.group(1)


# ---- what the documentation says ---------------------------------------------

OPT_LINE = re.compile(r"^\s+(?:-(\w), )?--([\w-]+)")


def help_options(text):
    return {("-" + s if s else None, "--" + l) for s, l in
            (m.groups() for m in map(OPT_LINE.match, text.splitlines()) if m)}


def help_commands(text):
    """The command names of corralctl --help's "Commands:" block."""
    block = text.split("Commands:\n", 1)[1].split("\n\n", 1)[0]
    names = set()
    for line in block.splitlines():
        m = re.match(r"^  ([a-z][\w-]*(?:, [a-z][\w-]*)*)", line)
        if m:
            names.update(m.group(1).split(", "))
    return names


def man_options(scd):
    """{(short or None, --long)} of a man page's OPTIONS section: lines
    "*-c*, *--config* _FILE_" or "*--log* _TARGET_"."""
    opts = set()
    for line in section(scd, "OPTIONS").splitlines():
        if not line.startswith("*-"):
            continue
        flags = re.findall(r"\*(--?[\w-]+)\*", line)
        short = next((f for f in flags if not f.startswith("--")), None)
        for f in flags:
            if f.startswith("--"):
                opts.add((short, f))
    return opts


def man_commands(scd):
    names = set()
    for line in section(scd, "COMMANDS").splitlines():
        m = re.match(r"\*([a-z][\w-]*)\*((?:, \*[a-z][\w-]*\*)*)", line)
        if m:
            names.add(m.group(1))
            names.update(re.findall(r"\*([a-z][\w-]*)\*", m.group(2)))
    return names


def flags(opts):
    return sorted({f for pair in opts for f in pair if f})


def same(doc, code, what):
    missing, extra = sorted(code - doc, key=str), sorted(doc - code, key=str)
    assert not missing and not extra, "%s: undocumented %r, documented but not in the code %r" % (what, missing,
                                                                                                  extra)


# ---- cases ------------------------------------------------------------------

@case
def the_source_tables_parse():
    # The parsers above must see the tables, or every other case is vacuous.
    code = corrald_source_options()
    assert {("-c", "--config"), (None, "--check-config"), ("-h", "--help")} <= code, code
    assert {("-i", "--instance"), (None, "--json")} <= corralctl_source_options()
    assert {"status", "ls", "reload", "list", "serve-http"} <= corralctl_source_commands()
    assert {"shared", "round-robin", "least-conn"} <= set(balance_names())
    assert {"exec", "ready.mode", "restart.backoff_ms", "recycle.max_rss_mb"} <= config_keys()
    assert {"TERM", "HUP", "USR2"} <= handled_signals()


@case
def corrald_help_and_man_list_every_option():
    code = corrald_source_options()
    same(help_options(run([CORRALD, "--help"]).stdout), code, "corrald --help")
    same(man_options(read("man", "corrald.8.scd")), code, "corrald(8) OPTIONS")


@case
def corralctl_help_and_man_list_every_option_and_command():
    helptext = run([CORRALCTL, "--help"]).stdout
    scd = read("man", "corralctl.1.scd")
    same(help_options(helptext), corralctl_source_options(), "corralctl --help options")
    same(man_options(scd), corralctl_source_options(), "corralctl(1) OPTIONS")
    same(help_commands(helptext), corralctl_source_commands(), "corralctl --help commands")
    same(man_commands(scd), corralctl_source_commands(), "corralctl(1) COMMANDS")


@case
def every_documented_flag_is_accepted():
    """Run with each flag named anywhere: getopt's "unrecognized option"
    (corrald) or "unknown option" (corralctl) means the docs lie. With
    --check-config first, corrald only validates, whatever else it gets."""
    good = os.path.join(TMP, "good.json")
    with open(good, "w") as f:
        f.write('{"exec": ["/bin/true"], "workers": 1}')
    documented = help_options(run([CORRALD, "--help"]).stdout) | man_options(read("man", "corrald.8.scd"))
    for flag in flags(documented):
        p = run([CORRALD, "--check-config", good, flag, "x"])
        assert "unrecognized option" not in p.stderr and "invalid option" not in p.stderr, \
            "corrald %s: %s" % (flag, p.stderr)
    documented = help_options(run([CORRALCTL, "--help"]).stdout) | man_options(read("man", "corralctl.1.scd"))
    for flag in flags(documented):
        p = run([CORRALCTL, flag, "x"])
        assert "unknown option" not in p.stderr, "corralctl %s: %s" % (flag, p.stderr)
    # The check can fail: a flag nobody has.
    p = run([CORRALD, "--check-config", good, "--no-such-flag"])
    assert "unrecognized option" in p.stderr, p.stderr
    p = run([CORRALCTL, "--no-such-flag"])
    assert "unknown option" in p.stderr, p.stderr


@case
def every_documented_command_is_accepted():
    nowhere = os.path.join(TMP, "nowhere.sock")
    documented = help_commands(run([CORRALCTL, "--help"]).stdout) | man_commands(read("man", "corralctl.1.scd"))
    assert len(documented) >= 15, documented
    for cmd in sorted(documented):
        p = run([CORRALCTL, "-s", nowhere, cmd])
        assert "unknown command" not in p.stderr, "corralctl %s: %s" % (cmd, p.stderr)
    p = run([CORRALCTL, "-s", nowhere, "no-such-command"])
    assert "unknown command" in p.stderr, p.stderr


@case
def balance_modes_signals_and_config_keys_are_documented():
    helptext = run([CORRALD, "--help"]).stdout
    corrald8, json5 = read("man", "corrald.8.scd"), read("man", "corral.json.5.scd")
    balance_help = "".join(l for l in helptext.splitlines() if "--balance" in l)
    for b in balance_names():
        assert b in balance_help, "corrald --help, --balance: %r missing:\n%s" % (b, balance_help)
        assert "*%s*" % b in section(corrald8, "BALANCING"), "corrald(8) BALANCING: %r missing" % b
        assert '*"%s"*' % b in json5 or "*%s*" % b in json5, "corral.json(5): %r missing" % b
    # The help's "Signals:" paragraph and corrald(8)'s SIGNALS.
    sig_help = helptext.split("Signals:", 1)[1]
    sig_man = set(re.findall(r"\*SIG(\w+)\*", section(corrald8, "SIGNALS")))
    for s in handled_signals():
        assert re.search(r"\b%s\b" % s, sig_help), "corrald --help Signals: %s missing" % s
    same(sig_man, handled_signals(), "corrald(8) SIGNALS")
    # corral.json(5): one "*key.path* (type)" paragraph per key.
    doc = set(re.findall(r"^\*([a-z_][\w.]*)\* \(", json5, re.M))
    same(doc, config_keys(), "corral.json(5) keys")


@case
def readme_names_every_corrald_flag_and_corralctl_command():
    readme = read("README.md")
    for short, long_ in corrald_source_options():
        if long_ in ("--help", "--version"):
            continue
        assert long_ in readme or (short and re.search(r"\[%s " % short, readme)), \
            "README does not mention corrald %s" % long_
    ctl = readme.split("## Controlling a running instance", 1)[1].split("\n## ", 1)[0]
    for cmd in corralctl_source_commands():
        assert re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(cmd), ctl), \
            "README's \"Controlling a running instance\" does not name corralctl %s" % cmd


main(teardown=lambda _: shutil.rmtree(TMP, ignore_errors=True))
