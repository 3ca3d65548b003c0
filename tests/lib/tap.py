"""Minimal TAP producer for corral's integration tests.

Each test script declares cases with @case and calls main(). Every case runs
in order; an exception fails the case and is reported as a TAP diagnostic.
`raise Skip("why")` reports the case as skipped with its reason. The script
exits non-zero when any case failed, so meson sees the failure both ways.
"""
import os
import sys
import time
import traceback

_cases = []


class Skip(Exception):
    pass


def case(fn):
    _cases.append(fn)
    return fn


def wait_for(pred, timeout, what, interval=0.02):
    """Poll pred() until it returns a truthy value; raise after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def eq(a, b, what=""):
    if a != b:
        raise AssertionError("%s: expected %r, got %r" % (what or "value", b, a))


def diag(msg):
    for line in str(msg).splitlines():
        print("# " + line, flush=True)


class Unavailable:
    """What cases get when setup() raised Skip: a case that uses it is
    skipped with setup's reason, a case that does not use it still runs."""

    def __init__(self, reason):
        self._reason = reason

    def __getattr__(self, name):
        raise Skip(self._reason)

    def __bool__(self):
        return False


def main(setup=None, teardown=None):
    print("1..%d" % len(_cases), flush=True)
    failed = 0
    ctx = None
    try:
        if setup:
            ctx = setup()
    except Skip as e:
        ctx = Unavailable(str(e))
        diag("setup skipped: %s (cases that need it are skipped)" % e)
    except Exception:
        for i, fn in enumerate(_cases, 1):
            print("not ok %d - %s" % (i, fn.__name__), flush=True)
        diag(traceback.format_exc())
        sys.exit(1)
    try:
        only = os.environ.get("TAP_ONLY")   # a developer's filter: cases whose name contains it
        for i, fn in enumerate(_cases, 1):
            t0 = time.monotonic()
            if only and only not in fn.__name__:
                print("ok %d - %s # SKIP not in TAP_ONLY" % (i, fn.__name__), flush=True)
                continue
            try:
                fn(ctx) if setup else fn()
                print("ok %d - %s (%.2fs)" % (i, fn.__name__, time.monotonic() - t0), flush=True)
            except Skip as e:
                print("ok %d - %s # SKIP %s" % (i, fn.__name__, e), flush=True)
            except Exception:
                failed += 1
                print("not ok %d - %s" % (i, fn.__name__), flush=True)
                diag(traceback.format_exc())
    finally:
        if teardown:
            teardown(ctx)
    sys.exit(1 if failed else 0)
