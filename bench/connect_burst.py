"""
A reconnect burst: N clients connect at the same moment (as browsers do
after a restart) and each asks for ``/healthz``; how long each waits for its
response head shows what the listen backlog does.

    twistd -n --pidfile= sse --port 8000 > /tmp/sse.log &
    python bench/connect_burst.py --port 8000                # 2000 at once
    python bench/connect_burst.py --port 8000 -n 5000 --json

With too short a backlog the kernel drops the SYNs that do not fit, and
their clients wait for the retransmissions, 1, 3, 7 s after the first try;
so the table counts the response heads within 0.1, 0.5, 1, 3 and 7 s.  Each
connection is timed from its own ``connect()`` call.  One process, one
thread, non-blocking sockets on ``selectors``; it raises its own soft
``RLIMIT_NOFILE`` to the hard limit.  Loopback is what it is meant for.
"""

from __future__ import annotations

import argparse
import errno
import json
import resource
import selectors
import socket
import statistics
import sys
import time

#: The upper bounds of the table's rows, in seconds.
BUCKETS = (0.1, 0.5, 1.0, 3.0, 7.0)


def raise_nofile(needed: int) -> None:
    """Raise this process's soft descriptor limit to the hard one if needed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed + 32:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def burst(
    host: str, port: int, count: int, path: str, timeout: float
) -> tuple[list[float], dict[str, int]]:
    """
    Open ``count`` connections at once; return the seconds each waited for
    its response head, and how many failed, by reason.
    """
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
    ).encode()
    selector = selectors.DefaultSelector()
    started: dict[socket.socket, float] = {}
    received: dict[socket.socket, bytes] = {}
    waits: list[float] = []
    failures: dict[str, int] = {}

    def fail(sock: socket.socket, reason: str) -> None:
        failures[reason] = failures.get(reason, 0) + 1
        selector.unregister(sock)
        sock.close()

    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        started[sock] = time.monotonic()
        code = sock.connect_ex((host, port))
        if code not in (0, errno.EINPROGRESS):
            failures[errno.errorcode.get(code, str(code))] = (
                failures.get(errno.errorcode.get(code, str(code)), 0) + 1
            )
            sock.close()
            continue
        received[sock] = b""
        selector.register(sock, selectors.EVENT_WRITE)

    deadline = time.monotonic() + timeout
    while selector.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            for key in list(selector.get_map().values()):
                fail(key.fileobj, "timeout")  # type: ignore[arg-type]
            break
        for key, events in selector.select(min(left, 1.0)):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if events & selectors.EVENT_WRITE:
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    fail(sock, errno.errorcode.get(code, str(code)))
                    continue
                try:
                    sock.sendall(request)
                except OSError as error:
                    fail(sock, errno.errorcode.get(error.errno or 0, str(error)))
                    continue
                selector.modify(sock, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(65536)
            except OSError as error:
                fail(sock, errno.errorcode.get(error.errno or 0, str(error)))
                continue
            if not data:
                fail(sock, "closed before the head")
                continue
            received[sock] += data
            if b"\r\n\r\n" in received[sock]:
                waits.append(time.monotonic() - started[sock])
                if not received[sock].startswith(b"HTTP/1.1 200"):
                    failures["not 200"] = failures.get("not 200", 0) + 1
                selector.unregister(sock)
                sock.close()
    selector.close()
    return waits, failures


def main(argv: list[str] | None = None) -> int:
    """Run one burst; print a table (or one JSON line with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("-n", "--connections", type=int, default=2000)
    parser.add_argument("--path", default="/healthz")
    parser.add_argument(
        "--timeout", type=float, default=20.0, help="seconds to wait at most"
    )
    parser.add_argument("--json", action="store_true", help="one JSON line")
    args = parser.parse_args(argv)
    raise_nofile(args.connections)
    waits, failures = burst(
        args.host, args.port, args.connections, args.path, args.timeout
    )
    within = {f"{bound:g}s": sum(w <= bound for w in waits) for bound in BUCKETS}
    result = {
        "connections": args.connections,
        "answered": len(waits),
        "within": within,
        "p50_ms": round(statistics.median(waits) * 1000, 1) if waits else None,
        "p99_ms": (
            round(sorted(waits)[int(len(waits) * 0.99) - 1] * 1000, 1)
            if waits
            else None
        ),
        "max_ms": round(max(waits) * 1000, 1) if waits else None,
        "failures": failures,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.connections} connections to {args.host}:{args.port}{args.path}")
    print("| response head within | connections |")
    print("|---|---|")
    for bound, number in within.items():
        print(f"| {bound} | {number} |")
    print(f"| at all (<= {args.timeout:g}s) | {len(waits)} |")
    print(
        f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
        f"max {result['max_ms']} ms; failures: {failures or 'none'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
