#!/usr/bin/python3
"""HTTP load for corral's tests, run inside the systemd sandbox.

Usage: loadgen.py close|keepalive STOPFILE [PORT]
Requests GET / on 127.0.0.1:PORT (default 8080) until STOPFILE exists, and
counts an answer good when it is a 200 whose body ends with $LOADGEN_EXPECT
(default "Hello World\n", corral-hello's), then
prints "ok bad {errors}". close: a new connection per request.
keepalive: one connection reused; a request whose reused connection the
server closed before any byte of the answer is retried once on a new
connection, as HTTP clients do. Every other failure counts."""
import os, socket, sys
mode, stop = sys.argv[1], sys.argv[2]
port = int(sys.argv[3]) if len(sys.argv) > 3 else 8080
expect = os.environ.get("LOADGEN_EXPECT", "Hello World\n").encode()
ok = bad = 0
errors = {}
def err(k):
    global bad
    bad += 1
    errors[k] = errors.get(k, 0) + 1
def read_response(s):
    data = b""
    while b"\r\n\r\n" not in data:
        c = s.recv(4096)
        if not c:
            return data, True
        data += c
    head, _, body = data.partition(b"\r\n\r\n")
    n = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
    while len(body) < n:
        c = s.recv(4096)
        if not c:
            return data, True
        body += c
    return head + b"\r\n\r\n" + body, b"connection: close" in head.lower()
s = None
while not os.path.exists(stop):
    if mode == "close":
        try:
            c = socket.create_connection(("127.0.0.1", port), timeout=10)
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                b = c.recv(4096)
                if not b:
                    break
                data += b
            c.close()
            if data.startswith(b"HTTP/1.1 200") and data.endswith(expect):
                ok += 1
            else:
                err("bad response %r" % data[:30])
        except OSError as e:
            err(type(e).__name__)
    else:
        for attempt in (0, 1):
            fresh = s is None
            try:
                if s is None:
                    s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                data, closed = read_response(s)
            except OSError:
                data, closed = b"", True
            if data.startswith(b"HTTP/1.1 200") and data.endswith(expect):
                ok += 1
                if closed:
                    s.close(); s = None
                break
            if s:
                s.close(); s = None
            # Closed before any byte of the answer on a reused connection:
            # the server was closing it idle; retry once on a new one.
            if data or fresh or attempt == 1:
                err("keepalive %r fresh=%s" % (data[:30], fresh))
                break
print(ok, bad, errors, flush=True)
