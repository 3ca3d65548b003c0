"""What the code accepts, read from its tables in the source tree: the
truth that tests/integration/test_docs.py holds the documentation to and
test_completion.py the shell completion. Each parser asserts that it found
its table, so a renamed table fails loudly instead of checking nothing."""
import os
import re

SRC = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def read(*path):
    with open(os.path.join(SRC, *path)) as f:
        return f.read()


def table(text, name):
    """The body of the C array `name[...] = { ... };`."""
    m = re.search(r"\b%s\[[^\]]*\]\s*=\s*\{(.*?)\n\s*\};" % re.escape(name), text, re.S)
    assert m, "no table %s in the source" % name
    return m.group(1)


def corrald_source_options():
    """{(short or None, --long)} from corrald's getopt_long table, checked
    against its short-option string."""
    src = read("src", "corrald", "main.c")
    opts = set()
    for long_, short in re.findall(r'\{\s*"([\w-]+)",\s*\w+,\s*NULL,\s*([^}\s]+)\s*\}', table(src, "options")):
        opts.add(("-" + short[1] if short.startswith("'") else None, "--" + long_))
    shorts = re.search(r'getopt_long\(argc, argv, "\+?([^"]*)"', src).group(1).replace(":", "")
    want = sorted(s[1] for s, _ in opts if s)
    assert sorted(shorts) == want, "short options: getopt has %r, the long table %r" % (shorts, want)
    return opts


def corralctl_source_options():
    src = read("src", "corralctl", "main.c")
    opts = set()
    for short, long_ in re.findall(r"\{\s*([^,{}]+),\s*\"([\w-]+)\",\s*(?:true|false)\s*\}", table(src, "options")):
        opts.add(("-" + short.strip()[1] if short.strip().startswith("'") else None, "--" + long_))
    return opts


def corralctl_source_commands():
    return set(re.findall(r'\{\s*"([\w-]+)",\s*cmd_\w+\s*\}', table(read("src", "corralctl", "main.c"), "commands")))


def balance_names():
    return re.findall(r'\[BALANCE_\w+\]\s*=\s*"([\w-]+)"', table(read("src", "corrald", "config.c"), "balance_table"))


def config_keys():
    """Every key path of config.c's schema: "name", "ready.mode", ..."""
    src = read("src", "corrald", "config.c")
    tables = {name: body for name, body in re.findall(r"static const Key (\w+)\[\] = \{(.*?)\n\};", src, re.S)}
    assert "top_keys" in tables, "config.c has no top_keys table"

    def walk(name, prefix):
        for key, fn, sub in re.findall(r'\{\s*"(\w+)",\s*(\w+),\s*(\w+)\s*\}', tables[name]):
            if sub != "NULL":
                yield from walk(sub, prefix + key + ".")
            else:
                yield prefix + key
    return set(walk("top_keys", ""))


def handled_signals():
    """The signals corrald acts on, without SIGCHLD (its own business)."""
    src = read("src", "corrald", "manager.c")
    return set(re.findall(r"\{\s*SIG(\w+),\s*on_\w+\s*\}", table(src, "signal_table"))) - {"CHLD"}
