#!/usr/bin/python3
"""Sum TAP results over meson test logs and print the closing line
"N passed, N failed, N skipped". A test that failed without reporting a
failing case (crash, timeout) counts as one failure. Exit 1 on failures."""
import json
import re
import sys

passed = failed = skipped = 0
for path in sys.argv[1:]:
    with open(path) as f:
        for line in f:
            t = json.loads(line)
            out = t.get("stdout") or ""
            p = f_ = s = 0
            for l in out.splitlines():
                if re.match(r"^ok\b", l):
                    if re.search(r"#\s*SKIP", l, re.I):
                        s += 1
                    else:
                        p += 1
                elif re.match(r"^not ok\b", l):
                    f_ += 1
            if t.get("result") not in ("OK", "SKIP", "EXPECTEDFAIL") and f_ == 0:
                f_ = 1
                print("%s: %s without a failing TAP case" % (t.get("name"), t.get("result")))
            passed += p
            failed += f_
            skipped += s
print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
sys.exit(1 if failed else 0)
