#!/usr/bin/python3
"""Run one libFuzzer harness the way CI does, as a meson test speaking TAP.

  run-fuzzer.py HARNESS CORPUS_DIR ARTIFACT_DIR [--seconds N]

1. replay: every input of tests/fuzz/corpus/NAME (seeds and regression
   inputs) runs once, each its own TAP case, so that a failure names the
   input (reproduce: HARNESS FILE).
2. fuzz: N seconds (default 10, or $CORRAL_FUZZ_SECONDS) of fuzzing,
   starting from the inputs that passed: a regression input that still
   fails (a known bug whose fix has not landed) fails its own case above
   without stopping the fuzzer from looking for anything else. New inputs
   go to a temporary directory, never into the source tree. A crash, leak,
   timeout or out-of-memory fails; its input is kept as
   ARTIFACT_DIR/NAME-crash-<sha1>.

Only the standard library; run with /usr/bin/python3.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile


def diag(text, n=50):
    for line in text.splitlines()[-n:]:
        print("# " + line)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("harness")
    ap.add_argument("corpus")
    ap.add_argument("artifacts")
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("CORRAL_FUZZ_SECONDS", "10")))
    a = ap.parse_args()
    name = os.path.basename(a.harness)
    os.makedirs(a.artifacts, exist_ok=True)
    prefix = os.path.join(a.artifacts, name + "-")
    # A finding must fail whatever the environment says (run-all.sh sets
    # these for the other tests too): libFuzzer, not a core dump, reports
    # a crash, and a leak is a finding.
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "abort_on_error=0:detect_leaks=1"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"

    inputs = sorted(f for f in os.listdir(a.corpus) if os.path.isfile(os.path.join(a.corpus, f))) \
        if os.path.isdir(a.corpus) else []
    print("1..%d" % (len(inputs) + 1), flush=True)
    failed = 0
    passing = []
    report = {}
    todo = list(inputs)
    # One harness process runs the inputs in order and stops at the first
    # that fails; go on after it.
    while todo:
        p = subprocess.run([a.harness, "-artifact_prefix=" + prefix] + [os.path.join(a.corpus, f) for f in todo],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        ran = [os.path.basename(f) for f in re.findall(r"^Running: (.*)$", p.stdout, re.M)]
        if p.returncode == 0:
            passing += todo
            todo = []
            continue
        bad = ran[-1] if ran else todo[0]
        i = todo.index(bad)
        passing += todo[:i]
        report[bad] = ("not ok %%d - %s: corpus input %s fails (exit %d; reproduce: %s %s)"
                       % (name, bad, p.returncode, a.harness, os.path.join(a.corpus, bad)), p.stdout)
        failed += 1
        todo = todo[i + 1:]
    # TAP wants the cases in order.
    for k, f in enumerate(inputs, 1):
        line, out = report.get(f, ("ok %%d - %s: corpus input %s" % (name, f), ""))
        print(line % k)
        diag(out)
    if not inputs:
        print("# no corpus in %s: fuzzing from nothing" % a.corpus)
    sys.stdout.flush()

    work = tempfile.mkdtemp(prefix="corral-%s-" % name)
    try:
        for f in passing:
            shutil.copy(os.path.join(a.corpus, f), work)
        # -timeout: an input that takes 10 s is a hang, a finding.
        cmd = [a.harness, "-max_total_time=%d" % a.seconds, "-timeout=10", "-rss_limit_mb=2048",
               "-print_final_stats=1", "-artifact_prefix=" + prefix, work]
        p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           errors="replace")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", p.stdout)
    rate = re.search(r"stat::average_exec_per_sec:\s*(\d+)", p.stdout)
    seed = re.search(r"INFO: Seed: (\d+)", p.stdout)
    what = "%s: fuzzing %d s from %d inputs: %s runs, %s/s, -seed=%s" % (
        name, a.seconds, len(passing), runs.group(1) if runs else "?", rate.group(1) if rate else "?",
        seed.group(1) if seed else "?")
    n = len(inputs) + 1
    if p.returncode == 0 and runs:
        print("ok %d - %s, no finding" % (n, what))
    else:
        art = re.findall(r"Test unit written to (\S+)", p.stdout)
        print("not ok %d - %s: finding (exit %d)%s" % (n, what, p.returncode,
                                                       "; input kept as " + art[-1] if art else ""))
        diag(p.stdout)
        failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
