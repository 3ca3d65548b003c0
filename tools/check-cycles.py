#!/usr/bin/python3
"""Dependency cycles between corrald's modules (issue 20, STYLE.md "Layout").

A module is a file name without its extension (manager.c + manager.h).
Two graphs, printed as TAP:

- calls: module A depends on B when A's object file references a symbol
  that B's object file defines (nm on the build's objects). Taking a
  function's address counts, which is how a callback ties two modules.
- includes: A depends on B when A.c or A.h includes B.h.

Every cycle fails, except an include cycle listed in KNOWN (empty: keep it
so); a cycle of KNOWN that is gone fails too, so that the list stays true.

Usage: check-cycles.py SOURCE_ROOT BUILD_DIR
"""
import os
import re
import subprocess
import sys

# Include cycles still allowed, each a sorted tuple of modules: none since
# issue 20 broke the last (manager <-> upgrade). Keep it empty.
KNOWN = set()


def sccs(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(tuple(sorted(comp)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return set(out)


def include_graph(src):
    mods = {f.rsplit(".", 1)[0] for f in os.listdir(src) if f.endswith((".c", ".h"))}
    graph = {}
    for f in os.listdir(src):
        if not f.endswith((".c", ".h")):
            continue
        m = f.rsplit(".", 1)[0]
        with open(os.path.join(src, f)) as fh:
            for inc in re.findall(r'^#include "([^"]+)\.h"', fh.read(), re.M):
                if inc in mods and inc != m:
                    graph.setdefault(m, set()).add(inc)
    return graph


def nm(path, flag):
    r = subprocess.run(["nm", flag, path], capture_output=True, text=True, check=True)
    for line in r.stdout.splitlines():
        parts = line.split()
        yield parts[-2] if flag == "--defined-only" else None, parts[-1]


def call_graph(build):
    objs = []
    for d in ("corrald.p", "libcorrald-pure.a.p"):
        path = os.path.join(build, "src", "corrald", d)
        if os.path.isdir(path):
            objs += [os.path.join(path, f) for f in os.listdir(path) if f.endswith(".c.o")]
    if not objs:
        raise SystemExit("no corrald objects under %s: build it first" % build)
    module = {o: os.path.basename(o)[:-len(".c.o")] for o in objs}
    defined = {}
    for o in objs:
        for kind, sym in nm(o, "--defined-only"):
            if kind in ("T", "D", "B", "R"):
                defined[sym] = module[o]
    graph = {}
    for o in objs:
        for _, sym in nm(o, "--undefined-only"):
            dst = defined.get(sym)
            if dst and dst != module[o]:
                graph.setdefault(module[o], set()).add(dst)
    return graph


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    root, build = sys.argv[1], sys.argv[2]
    failed = 0
    print("1..2")

    calls = sccs(call_graph(build))
    if calls:
        failed += 1
        print("not ok 1 - no call cycle between corrald's modules")
        for c in sorted(calls):
            print("# call cycle: " + " <-> ".join(c))
    else:
        print("ok 1 - no call cycle between corrald's modules")

    includes = sccs(include_graph(os.path.join(root, "src", "corrald")))
    new, gone = includes - KNOWN, KNOWN - includes
    if new or gone:
        failed += 1
        print("not ok 2 - no include cycle between corrald's modules")
        for c in sorted(new):
            print("# new include cycle: " + " <-> ".join(c))
        for c in sorted(gone):
            print("# known include cycle no longer there (remove it from KNOWN): " + " <-> ".join(c))
    else:
        print("ok 2 - no include cycle between corrald's modules")
        for c in sorted(includes):
            print("# known include cycle, still to break (issue 20): " + " <-> ".join(c))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
