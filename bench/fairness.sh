#!/bin/sh
# bench/fairness.sh: how evenly N corral-hello workers sharing ONE listening
# socket split wrk's keep-alive connections ("shared" balance, SPEC §5), and
# how many requests/s they serve together.
#
# No corrald involved: a small Python launcher binds 127.0.0.1:<free port>,
# starts each worker the way systemd or corrald would (the socket as fd 3,
# LISTEN_FDS=1, LISTEN_PID = the worker's own pid, NOTIFY_SOCKET), waits for
# every READY=1, runs wrk, then stops the workers with SIGTERM. Each worker
# runs with CORRAL_HELLO_STATS=1 and prints how many connections it accepted
# and requests it served; the launcher reports the max/min ratio of accepted
# connections. Loopback only, bounded in time, and it kills what it started.
#
# Usage: bench/fairness.sh [-n WORKERS] [-c CONNECTIONS] [-t WRK_THREADS]
#                          [-d SECONDS] [-r RUNS] [-b] [BINARY]
#   -b  also measure one worker alone, for a req/s baseline
#   BINARY defaults to $CORRAL_HELLO, then build/src/hello/corral-hello.
# Exit status: 0 if every run's ratio is <= $MAX_RATIO (default 1.3), else 1.
# The environment reaches the workers: CORRAL_HELLO_PEERS=0 shows what the
# one-accept-per-wakeup rule achieves without the sibling load table.
set -eu

workers=2 conns=50 threads=2 secs=5 runs=3 baseline=0
while getopts n:c:t:d:r:bh opt; do
        case $opt in
        n) workers=$OPTARG ;;
        c) conns=$OPTARG ;;
        t) threads=$OPTARG ;;
        d) secs=$OPTARG ;;
        r) runs=$OPTARG ;;
        b) baseline=1 ;;
        *) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
        esac
done
shift $((OPTIND - 1))
bin=${1:-${CORRAL_HELLO:-build/src/hello/corral-hello}}

[ -x "$bin" ] || { echo "fairness.sh: $bin is not an executable; build it or pass its path" >&2; exit 2; }
command -v wrk >/dev/null || { echo "fairness.sh: wrk is not installed" >&2; exit 2; }

exec /usr/bin/python3 - "$bin" "$workers" "$conns" "$threads" "$secs" "$runs" "$baseline" "${MAX_RATIO:-1.3}" <<'EOF'
import fcntl, os, re, signal, socket, subprocess, sys, tempfile, time

binary, workers, conns, threads, secs, runs, baseline, max_ratio = sys.argv[1:]
workers, conns, threads, secs, runs = map(int, (workers, conns, threads, secs, runs))
baseline, max_ratio = baseline == "1", float(max_ratio)
binary = os.path.abspath(binary)
STATS = re.compile(rb"stats: pid (\d+) accepted (\d+) connections, served (\d+) requests")


def spawn(lsock, notify_path, logdir, i):
    """Start one worker as a socket-activated service would be started."""
    log = open(os.path.join(logdir, "worker-%d.log" % i), "wb")
    pid = os.fork()
    if pid == 0:
        try:
            # Move both out of the way first: either may sit on 0..3. The
            # dup2()ed targets are inheritable, everything else is not.
            lfd = fcntl.fcntl(lsock.fileno(), fcntl.F_DUPFD_CLOEXEC, 100)
            ofd = fcntl.fcntl(log.fileno(), fcntl.F_DUPFD_CLOEXEC, 100)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(ofd, 1)
            os.dup2(ofd, 2)
            os.dup2(lfd, 3)
            env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID=str(os.getpid()),
                       LISTEN_FDNAMES="web", NOTIFY_SOCKET=notify_path,
                       CORRAL_HELLO_STATS="1")
            os.execve(binary, [binary], env)
        finally:
            os._exit(127)
    log.close()
    return pid


def wait_ready(nsock, pids, deadline):
    ready = set()
    while len(ready) < len(pids):
        left = deadline - time.monotonic()
        if left <= 0:
            raise SystemExit("fairness.sh: workers not ready in time (%d/%d)" % (len(ready), len(pids)))
        nsock.settimeout(left)
        try:
            msg, anc, _flags, _addr = nsock.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            continue
        sender = None
        for level, typ, data in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS:
                sender = int.from_bytes(data[0:4], sys.byteorder)
        if b"READY=1" in msg.split(b"\n") and sender in pids:
            ready.add(sender)


def stop(pids, deadline):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    left = set(pids)
    while left and time.monotonic() < deadline:
        for pid in list(left):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                left.discard(pid)
        time.sleep(0.02)
    for pid in left:                        # graceful stop failed: say so
        print("  worker %d did not exit after SIGTERM, killing it" % pid)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return not left


def open_conns(port):
    """Established connections per server pid right now, from ss(8): a
    cross-check of the workers' own counts, and works for any worker."""
    try:
        out = subprocess.run(["ss", "-tnpH", "state", "established", "( sport = :%d )" % port],
                             capture_output=True, timeout=10).stdout.decode()
    except (OSError, subprocess.TimeoutExpired):
        return {}
    live = {}
    for pid in re.findall(r"pid=(\d+)", out):
        live[int(pid)] = live.get(int(pid), 0) + 1
    return live


def one_run(n):
    tmp = tempfile.mkdtemp(prefix="corral-fairness.")
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4096)
    port = lsock.getsockname()[1]
    notify_path = os.path.join(tmp, "notify")
    nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    nsock.bind(notify_path)
    nsock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    pids = []
    try:
        for i in range(n):
            pids.append(spawn(lsock, notify_path, tmp, i))
        wait_ready(nsock, set(pids), time.monotonic() + 10)
        wrk = subprocess.Popen(["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % secs,
                                "http://127.0.0.1:%d/" % port],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            time.sleep(secs / 2)
            live = open_conns(port)
            out = wrk.communicate(timeout=secs + 30)[0].decode(errors="replace")
        finally:
            if wrk.poll() is None:
                wrk.kill()
                wrk.wait()
        m = re.search(r"Requests/sec:\s*([\d.]+)", out)
        rps = float(m.group(1)) if m else 0.0
        errs = re.search(r"Socket errors:.*|Non-2xx.*", out)
        clean = stop(pids, time.monotonic() + 10)
        pids = []
        acc, req = {}, {}
        for i in range(n):
            with open(os.path.join(tmp, "worker-%d.log" % i), "rb") as f:
                m = STATS.search(f.read())
            if m:
                acc[int(m.group(1))] = int(m.group(2))
                req[int(m.group(1))] = int(m.group(3))
        return rps, acc, req, live, (errs.group(0) if errs else ""), clean
    finally:
        if pids:
            stop(pids, time.monotonic() + 5)
        lsock.close()
        nsock.close()
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)


print("corral-hello fairness: %d workers, wrk -t%d -c%d -d%ds, %s"
      % (workers, threads, conns, secs, binary))
worst, all_ok = 0.0, True
for r in range(runs):
    rps, acc, req, live, errs, clean = one_run(workers)
    # The workers' own totals when they printed them, else what ss saw.
    counts = sorted((acc or live).values(), reverse=True)
    ok = len(counts) == workers and min(counts) > 0
    ratio = max(counts) / min(counts) if ok else float("inf")
    worst = max(worst, ratio)
    all_ok &= ok and ratio <= max_ratio and clean
    print("run %d: connections per worker %s (open mid-run: %s)  max/min %.2f  requests %s  %.0f req/s%s"
          % (r + 1, counts, sorted(live.values(), reverse=True), ratio,
             sorted(req.values(), reverse=True), rps,
             ("  [" + errs + "]") if errs else ""))
print("worst max/min ratio %.2f (limit %.2f): %s" % (worst, max_ratio, "ok" if all_ok else "FAIL"))
if baseline:
    rps, acc, req, live, errs, clean = one_run(1)
    print("baseline, 1 worker: %.0f req/s%s" % (rps, ("  [" + errs + "]") if errs else ""))
sys.exit(0 if all_ok else 1)
EOF
