#!/bin/sh
# bench/fairness.sh: how evenly corrald's workers split wrk's keep-alive
# load, per balance mode, and how many requests/s they serve together.
#
# Each run starts `corrald -w WORKERS -b MODE --listen 127.0.0.1:<free port>`
# with the worker command (default: corral-hello), waits until corrald says
# every worker is ready, runs `wrk -tT -cC -dDs` with a Lua script that
# tallies the X-Worker-Pid header of every response, and stops corrald. The
# share of a worker is the number of responses it sent; a run's figure is
# max/min of the shares (a worker that served nothing makes it "inf").
# Halfway through, ss(8) also counts the connections open per worker.
# Any worker that sets X-Worker-Pid can be measured, in any language.
#
# Usage: bench/fairness.sh [-m MODE] [-n WORKERS] [-c CONNECTIONS]
#                          [-t WRK_THREADS] [-d SECONDS] [-r RUNS] [-- COMMAND...]
#   -m  shared (default), round-robin or least-conn
#   COMMAND defaults to $CORRAL_HELLO, then build/src/hello/corral-hello;
#   corrald is $CORRALD, then build/src/corrald/corrald.
# The environment reaches the workers. Exit status: 0 if every run's
# max/min is <= $MAX_RATIO (default 1.3), else 1.
#
# Example, the numbers of the README's note on shared balance:
#   bench/fairness.sh -r 5 -m shared
#   bench/fairness.sh -r 5 -m round-robin
set -eu

mode=shared workers=2 conns=50 threads=2 secs=5 runs=3
while getopts m:n:c:t:d:r:h opt; do
        case $opt in
        m) mode=$OPTARG ;;
        n) workers=$OPTARG ;;
        c) conns=$OPTARG ;;
        t) threads=$OPTARG ;;
        d) secs=$OPTARG ;;
        r) runs=$OPTARG ;;
        *) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
        esac
done
shift $((OPTIND - 1))
[ "${1:-}" = -- ] && shift
[ $# -gt 0 ] || set -- "${CORRAL_HELLO:-build/src/hello/corral-hello}"
corrald=${CORRALD:-build/src/corrald/corrald}
max_ratio=${MAX_RATIO:-1.3}

[ -x "$corrald" ] || { echo "fairness.sh: $corrald is not an executable; build it or set CORRALD" >&2; exit 2; }
command -v wrk >/dev/null || { echo "fairness.sh: wrk is not installed" >&2; exit 2; }

tmp=$(mktemp -d /tmp/corral-fairness.XXXXXX)
pid=
cleanup() {
        [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
        rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

cat >"$tmp/tally.lua" <<'EOF'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) tally = {} end
function response(status, headers, body)
        local pid = headers["X-Worker-Pid"] or "none"
        tally[pid] = (tally[pid] or 0) + 1
end
function done(summary, latency, requests)
        local total = {}
        for _, t in ipairs(threads) do
                for pid, n in pairs(t:get("tally")) do total[pid] = (total[pid] or 0) + n end
        end
        for pid, n in pairs(total) do io.write("share ", pid, " ", n, "\n") end
end
EOF

free_port() {
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Wait up to 20 s for a line matching $2 in file $1.
wait_line() {
        i=0
        while ! grep -q "$2" "$1"; do
                i=$((i + 1))
                [ $i -le 200 ] || { echo "fairness.sh: timed out waiting for '$2'; log:" >&2; cat "$1" >&2; exit 1; }
                sleep 0.1
        done
}

echo "fairness: $mode, $workers workers, wrk -t$threads -c$conns -d${secs}s, $*"
worst=0 fail=0
for run in $(seq "$runs"); do
        port=$(free_port)
        "$corrald" --log stderr -n "fairness$$" --control "$tmp/ctl.sock" -w "$workers" -b "$mode" \
                --listen "127.0.0.1:$port" -- "$@" >"$tmp/corrald.log" 2>&1 &
        pid=$!
        wait_line "$tmp/corrald.log" "workers\{0,1\} ready\|the worker is ready"
        wrk "-t$threads" "-c$conns" "-d${secs}s" -s "$tmp/tally.lua" "http://127.0.0.1:$port/" >"$tmp/wrk.out" &
        wrk=$!
        # Halfway: open connections per worker, from ss(8).
        sleep "$(awk -v s="$secs" 'BEGIN { print s / 2 }')"
        open=$(ss -tnpH state established "( sport = :$port )" 2>/dev/null |
                grep -o 'pid=[0-9]*' | sort | uniq -c | awk '{ printf "%s%s", sep, $1; sep = " " }')
        if ! wait "$wrk"; then
                echo "fairness.sh: wrk failed:" >&2
                cat "$tmp/wrk.out" "$tmp/corrald.log" >&2
                exit 1
        fi
        kill "$pid"
        wait "$pid" || true
        pid=
        line=$(awk -v n="$workers" -v open="$open" '
                /^share / { s[++k] = $3 }
                /Requests\/sec/ { rps = $2 }
                /Socket errors|Non-2xx/ { err = err " [" $0 "]" }
                END {
                        max = 0; min = -1
                        for (i = 1; i <= k; i++) { if (s[i] > max) max = s[i]; if (min < 0 || s[i] < min) min = s[i] }
                        ratio = (k == n && min > 0) ? sprintf("%.2f", max / min) : "inf"
                        list = ""
                        for (i = 1; i <= k; i++) list = list (i > 1 ? " " : "") s[i]
                        printf "%s|shares %s  max/min %s  (open mid-run: %s)  %.0f req/s%s\n", ratio, list, ratio, open, rps, err
                }' "$tmp/wrk.out")
        ratio=${line%%|*}
        echo "run $run: ${line#*|}"
        if [ "$ratio" = inf ] || awk -v r="$ratio" -v m="$max_ratio" 'BEGIN { exit !(r > m) }'; then
                fail=1
        fi
        worst=$(awk -v r="$ratio" -v w="$worst" 'BEGIN { print (r == "inf" || w == "inf") ? "inf" : (r > w ? r : w) }')
done
echo "worst max/min $worst (limit $max_ratio): $([ $fail = 0 ] && echo ok || echo FAIL)"
exit $fail
