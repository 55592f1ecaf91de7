"""
What checking a token costs when a stream opens, against a real
``twistd -n sse`` on 127.0.0.1, every configuration in one run:

    python bench/auth.py                      # ~2 min
    python bench/auth.py --n 5000 --repeat 7 --parts cpu
    python bench/auth.py --quick              # a few hundred connections

cpu
    The server's CPU time (user + system, all its threads, from
    ``/proc/<pid>/task/*/schedstat``) over N connection set-ups (``--n``,
    3000): open ``GET /channels/news.eu``, read the response head and the
    first frame, close.  A client in another process (this script with
    ``--drive``) keeps ``--in-flight`` (32) set-ups going at once, and
    checks that every answer is a 200.  Configurations:

    1. no auth;
    2. ``--subscribe-token`` (a static bearer token);
    3. HS256 JWT, every connection the same token (verified tokens are
       cached until their exp: the reconnect case);
    4. HS256, a distinct token per connection (a cold verify each time);
    5. RS256 (a 2048-bit key made by ``openssl``), the same token;
    6. RS256, distinct tokens;
    7. ES256 (P-256, ``openssl``), distinct tokens;
    8. HS256 in the ``sse_token`` cookie, the same token (against 3, the
       ``Authorization`` header).

    The bar: a set-up with a JWT costs at most 1.25x one without (1).
    Every token has ``exp`` (an hour ahead) and
    ``sse.subscribe = ["user.<sub>", "news.*"]``.

memory
    The server's RSS after M distinct HS256 tokens have each opened a
    stream (``--memory-steps``: 5000, 10000, 15000 and 20000 in turn, on
    one server), beside a server that saw the same number of connections
    with one token.  The verifier remembers at most 10,000 tokens, so the
    difference should stop growing past 10,000.

Each server is a new ``twistd`` pinned to ``--server-cpu`` (0), the client
to ``--client-cpu`` (1).  Before each measurement ``--warm`` (200)
set-ups pay for first use (imports, the channel, the allocator's pools);
a same-token configuration warms up with its own token, so the measured
set-ups are all cache hits, and a distinct-token one with other tokens.
The CPU is read once the server has gone idle, so closing the
connections is counted.  Runs are interleaved over ``--repeat`` (5)
rounds and the table shows medians.  One JSON line per run on stdout, then
the tables; both also go to ``<out>/<stamp>-auth.{jsonl,md}``.  The exit
status is 1 if a run failed or a set-up did not get its 200; missing the
bar is reported, not an error.  Needs ``openssl``; ``taskset`` to pin.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import secrets
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import machine_facts, raise_nofile, taskset  # noqa: E402
from subscriptions import server  # noqa: E402

#: The channel every set-up opens; the tokens cover it through ``news.*``.
CHANNEL = "news.eu"
PATH = f"/channels/{CHANNEL}"
#: The bar: CPU per set-up with a JWT against none.
BAR = 1.25
#: What the verifier remembers (twisted_sse._jwt.DEFAULT_CACHE_SIZE).
CACHE_SIZE = 10_000


@dataclass(frozen=True)
class Config:
    """One way of opening a stream, measured on a fresh server."""

    name: str
    label: str
    #: ``None``, ``"static"`` or a JWT algorithm.
    auth: str | None = None
    #: ``"header"`` (Authorization: Bearer) or ``"cookie"`` (sse_token).
    carrier: str = "header"
    #: A distinct token per connection (cache misses), or one for all.
    distinct: bool = False

    @property
    def cached(self) -> bool:
        """Whether the measured set-ups find their JWT verified already."""
        return self.auth not in (None, "static") and not self.distinct


CONFIGS = (
    Config("none", "1 no auth"),
    Config("static", "2 --subscribe-token", "static"),
    Config("hs256-same", "3 HS256, same token", "HS256"),
    Config("hs256-distinct", "4 HS256, distinct tokens", "HS256", distinct=True),
    Config("rs256-same", "5 RS256, same token", "RS256"),
    Config("rs256-distinct", "6 RS256, distinct tokens", "RS256", distinct=True),
    Config("es256-distinct", "7 ES256, distinct tokens", "ES256", distinct=True),
    Config("hs256-cookie", "8 HS256 in the cookie, same token", "HS256", "cookie"),
)


@dataclass(frozen=True)
class Keys:
    """The credentials of one run: made afresh, never written to the results."""

    folder: Path
    secret: str
    static: str
    rsa_private: bytes
    ec_private: bytes

    @property
    def rsa_public(self) -> Path:
        """The RSA public key the server is given (``--jwt-key``)."""
        return self.folder / "rsa.pub.pem"

    @property
    def ec_public(self) -> Path:
        """The P-256 public key the server is given (``--jwt-key``)."""
        return self.folder / "ec.pub.pem"


def make_keys(folder: Path) -> Keys:
    """An HMAC secret, a static token, and RSA-2048 and P-256 key pairs."""

    def openssl(*words: str) -> None:
        subprocess.run(["openssl", *words], check=True, capture_output=True, timeout=60)

    rsa, ec = folder / "rsa.pem", folder / "ec.pem"
    openssl(
        "genpkey",
        *("-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(rsa)),
    )
    openssl("pkey", "-in", str(rsa), "-pubout", "-out", str(folder / "rsa.pub.pem"))
    openssl(
        "genpkey",
        *("-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(ec)),
    )
    openssl("pkey", "-in", str(ec), "-pubout", "-out", str(folder / "ec.pub.pem"))
    return Keys(
        folder=folder,
        secret=secrets.token_hex(32),
        static=secrets.token_hex(16),
        rsa_private=rsa.read_bytes(),
        ec_private=ec.read_bytes(),
    )


def sign(keys: Keys, algorithm: str, subjects: Sequence[str]) -> list[str]:
    """A token per subject, valid for an hour, covering :data:`CHANNEL`."""
    import jwt
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key: Any
    if algorithm == "HS256":
        key = keys.secret
    else:
        pem = keys.rsa_private if algorithm == "RS256" else keys.ec_private
        # Loaded once: PyJWT would parse a PEM again for every token.
        key = load_pem_private_key(pem, password=None)
    now = int(time.time())
    return [
        jwt.encode(
            {
                "sub": subject,
                "iat": now,
                "exp": now + 3600,
                "sse": {"subscribe": [f"user.{subject}", "news.*"]},
            },
            key,
            algorithm=algorithm,
        )
        for subject in subjects
    ]


def write_tokens(
    keys: Keys, configs: Sequence[Config], n: int, warm: int, folder: Path
) -> dict[tuple[str, str], Path]:
    """
    Sign every token the runs need before any server starts: distinct
    configurations share their algorithm's set (each run has a fresh
    server, so an empty cache), same-token ones one token for all.

    :returns: The file of tokens the client reads, by configuration name
        and use (``warm`` or ``measured``).
    """
    made: dict[tuple[str, str], Path] = {}
    distinct: dict[str, tuple[list[str], list[str]]] = {}
    for config in configs:
        if config.auth is None:
            sets = ([""], [""])
        elif config.auth == "static":
            sets = ([keys.static], [keys.static])
        elif config.distinct:
            if config.auth not in distinct:
                everyone = sign(
                    keys, config.auth, [f"u{i:05d}" for i in range(warm + n)]
                )
                distinct[config.auth] = (everyone[:warm], everyone[warm:])
            sets = distinct[config.auth]
        else:
            one = sign(keys, config.auth, ["alice"])
            sets = (one, one)
        for use, tokens in zip(("warm", "measured"), sets, strict=True):
            path = folder / f"{config.name}-{use}.txt"
            path.write_text("\n".join(tokens) + "\n")
            made[config.name, use] = path
    return made


def server_env(keys: Keys, config: Config) -> dict[str, str]:
    """The server's environment: secrets go there, not on its command line."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TWISTED_SSE_")
    }
    env["PYTHONUNBUFFERED"] = "1"
    if config.auth == "static":
        env["TWISTED_SSE_SUBSCRIBE_TOKEN"] = keys.static
    elif config.auth is not None and config.auth.startswith("HS"):
        env["TWISTED_SSE_JWT_SECRET"] = keys.secret
    return env


def server_args(keys: Keys, config: Config) -> list[str]:
    """The ``twistd sse`` options of ``config`` beyond the port."""
    if config.auth == "RS256":
        return ["--jwt-key", str(keys.rsa_public)]
    if config.auth == "ES256":
        return ["--jwt-key", str(keys.ec_public)]
    return []


def cpu_ns(pid: int) -> int:
    """
    Nanoseconds of CPU ``pid``'s threads have used: schedstat counts
    them exactly, where ``/proc/<pid>/stat`` counts 10 ms ticks.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # A thread that ended meanwhile.
    return total


def rss_kb(pid: int) -> int:
    """The resident set size of ``pid``, in KB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def settle(pid: int, quiet_ns: int = 1_000_000, timeout: float = 30.0) -> int:
    """
    Wait until ``pid`` has been idle (under ``quiet_ns`` a tenth of a
    second, three times in a row); its CPU nanoseconds then.
    """
    deadline = time.monotonic() + timeout
    last, quiet = cpu_ns(pid), 0
    while quiet < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
        now = cpu_ns(pid)
        quiet = quiet + 1 if now - last < quiet_ns else 0
        last = now
    return last


def drive_client(
    client_cpu: str, port: int, tokens: Path, carrier: str, count: int, in_flight: int
) -> dict[str, Any]:
    """Run ``count`` set-ups from another process; its report."""
    done = subprocess.run(
        [
            *taskset(client_cpu),
            sys.executable,
            str(Path(__file__).resolve()),
            *("--drive", str(tokens), "--port", str(port), "--carrier", carrier),
            *("--n", str(count), "--in-flight", str(in_flight)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError("client: " + (done.stderr.strip() or done.stdout)[-300:])
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def request(port: int, token: str, carrier: str) -> bytes:
    """The GET of one set-up, with ``token`` in ``carrier`` (none if empty)."""
    lines = [
        f"GET {PATH} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Accept: text/event-stream",
    ]
    if token and carrier == "cookie":
        lines.append(f"Cookie: sse_token={token}")
    elif token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def drive(
    port: int, tokens: Sequence[str], carrier: str, count: int, in_flight: int
) -> dict[str, Any]:
    """
    ``count`` set-ups, ``in_flight`` at a time: connect, send the GET with
    the next token (cycling through ``tokens``), read up to the end of the
    first frame (a 200) or the head (anything else), close.
    """
    requests = [request(port, token, carrier) for token in tokens]
    selector = selectors.DefaultSelector()
    statuses: dict[str, int] = {}
    failures: dict[str, int] = {}
    received: dict[socket.socket, bytearray] = {}
    started = 0
    begun = time.monotonic()
    deadline = begun + 240

    def finish(sock: socket.socket, failure: str | None = None) -> None:
        if failure is not None:
            failures[failure] = failures.get(failure, 0) + 1
        selector.unregister(sock)
        del received[sock]
        sock.close()

    while started < count or received:
        while started < count and len(received) < in_flight:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            code = sock.connect_ex(("127.0.0.1", port))
            if code not in (0, errno.EINPROGRESS):
                failures[errno.errorcode.get(code, str(code))] = (
                    failures.get(errno.errorcode.get(code, str(code)), 0) + 1
                )
                sock.close()
            else:
                received[sock] = bytearray()
                selector.register(
                    sock, selectors.EVENT_WRITE, requests[started % len(requests)]
                )
            started += 1
        if time.monotonic() > deadline:
            for sock in list(received):
                finish(sock, "timeout")
            break
        for key, events in selector.select(1.0):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            sock = ready
            if events & selectors.EVENT_WRITE:
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    finish(sock, errno.errorcode.get(code, str(code)))
                    continue
                try:
                    sock.sendall(key.data)
                except OSError as error:
                    finish(sock, errno.errorcode.get(error.errno or 0, str(error)))
                    continue
                selector.modify(sock, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(65536)
            except OSError as error:
                finish(sock, errno.errorcode.get(error.errno or 0, str(error)))
                continue
            if not data:
                finish(sock, "closed early")
                continue
            buffer = received[sock]
            buffer += data
            head, found, body = bytes(buffer).partition(b"\r\n\r\n")
            if not found:
                continue
            status = head[9:12].decode("ascii", "replace")
            if status == "200" and b"\n\n" not in body:
                continue  # The first frame is not all here yet.
            statuses[status] = statuses.get(status, 0) + 1
            finish(sock)
    selector.close()
    return {
        "n": count,
        "ok": statuses.get("200", 0),
        "statuses": statuses,
        "failures": failures,
        "client_s": round(time.monotonic() - begun, 3),
    }


def run_config(
    config: Config,
    args: argparse.Namespace,
    keys: Keys,
    tokens: dict[tuple[str, str], Path],
    logdir: Path,
    round_: int,
) -> dict[str, Any]:
    """One fresh server, warmed up, then N set-ups: CPU per set-up and RSS."""
    base: dict[str, Any] = {
        "part": "cpu",
        "config": config.name,
        "round": round_,
        "n": args.n,
    }
    carrier = config.carrier if config.auth is not None else "none"
    try:
        with server(
            args.server_cpu,
            logdir / f"{config.name}-{round_}.log",
            server_args(keys, config),
            server_env(keys, config),
        ) as (proc, port):
            settle(proc.pid)
            warm = drive_client(
                args.client_cpu,
                port,
                tokens[config.name, "warm"],
                carrier,
                args.warm,
                args.in_flight,
            )
            before = settle(proc.pid)
            rss_before = rss_kb(proc.pid)
            measured = drive_client(
                args.client_cpu,
                port,
                tokens[config.name, "measured"],
                carrier,
                args.n,
                args.in_flight,
            )
            after = settle(proc.pid)
            rss_after = rss_kb(proc.pid)
            alive = proc.poll() is None
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        return {**base, "error": str(error)[-300:]}
    return {
        **base,
        "cpu_us_per_setup": round((after - before) / 1000 / args.n, 2),
        "rss_before_kb": rss_before,
        "rss_after_kb": rss_after,
        "ok": measured["ok"],
        "warm_ok": warm["ok"],
        "statuses": measured["statuses"],
        "failures": measured["failures"],
        "client_s": measured["client_s"],
        "server_alive": alive,
    }


def run_memory(
    distinct: bool,
    args: argparse.Namespace,
    keys: Keys,
    logdir: Path,
) -> dict[str, Any]:
    """
    One HS256 server: its RSS after a warm-up, then after each of
    ``--memory-steps`` connections in all, each with its own token
    (``distinct``) or all with one.
    """
    config = CONFIGS[3] if distinct else CONFIGS[2]
    steps = args.memory_steps
    base: dict[str, Any] = {"part": "memory", "distinct": distinct, "steps": steps}
    subjects = [f"m{i:05d}" for i in range(args.warm + steps[-1])] if distinct else []
    signed = sign(keys, "HS256", subjects or ["alice"])
    try:
        with server(
            args.server_cpu,
            logdir / f"memory-{'distinct' if distinct else 'same'}.log",
            [],
            server_env(keys, config),
        ) as (proc, port):
            settle(proc.pid)
            folder = keys.folder
            warm_file = folder / f"memory-{distinct}-warm.txt"
            warm_file.write_text("\n".join(signed[: args.warm]) + "\n")
            drive_client(
                args.client_cpu, port, warm_file, "header", args.warm, args.in_flight
            )
            settle(proc.pid)
            rss = [rss_kb(proc.pid)]
            done, ok = 0, 0
            rest = signed[args.warm :] if distinct else signed
            for step in steps:
                batch = folder / f"memory-{distinct}-{step}.txt"
                batch.write_text("\n".join(rest[done:step] if distinct else rest))
                answer = drive_client(
                    args.client_cpu, port, batch, "header", step - done, args.in_flight
                )
                ok += answer["ok"]
                done = step
                settle(proc.pid)
                rss.append(rss_kb(proc.pid))
            alive = proc.poll() is None
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        return {**base, "error": str(error)[-300:]}
    return {
        **base,
        "rss_kb": rss,
        "ok": ok,
        "n": steps[-1],
        "server_alive": alive,
    }


def _verdict(ratio: float) -> str:
    return "met" if ratio <= BAR else "**missed**"


def report(
    results: list[dict[str, Any]], configs: Sequence[Config], args: argparse.Namespace
) -> str:
    """Markdown tables of medians, with the bar for each JWT configuration."""
    out: list[str] = []
    for r in results:
        if "error" in r:
            out.append(f"error in {r.get('config', 'memory')}: {r['error']}")
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        if r["part"] == "cpu" and "error" not in r:
            runs.setdefault(r["config"], []).append(r)
    measured = [c for c in configs if c.name in runs]
    if measured:
        cost = {
            c.name: statistics.median(r["cpu_us_per_setup"] for r in runs[c.name])
            for c in measured
        }
        plain = cost.get("none")
        out += [
            "",
            f"cpu: {args.n} set-ups of GET {PATH} (head + first frame, then "
            f"close), {args.in_flight} in flight, after {args.warm} to warm up; "
            f"server CPU (user + system) per set-up, medians of {args.repeat}",
            "",
            "| configuration | carrier | µs CPU / set-up (runs) | median "
            "| x no auth | bar <= 1.25x | RSS after, MB | not 200 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in measured:
            each = " / ".join(f"{r['cpu_us_per_setup']:.0f}" for r in runs[c.name])
            ratio = cost[c.name] / plain if plain else None
            shown = f"{ratio:.2f}x" if ratio is not None else "-"
            verdict = "-"
            if ratio is not None and c.auth not in (None, "static"):
                verdict = ("cached: " if c.cached else "cold: ") + _verdict(ratio)
            rss = statistics.median(r["rss_after_kb"] for r in runs[c.name]) / 1024
            bad = sum(r["n"] - r["ok"] for r in runs[c.name])
            carrier = "-" if c.auth is None else c.carrier
            out.append(
                f"| {c.label} | {carrier} | {each} | {cost[c.name]:.0f} | {shown} "
                f"| {verdict} | {rss:.1f} | {bad} |"
            )
        if plain:
            out.append("")
            for c in measured:
                if c.auth in (None, "static"):
                    continue
                ratio = cost[c.name] / plain
                kind = "cached" if c.cached else "cold"
                out.append(
                    f"bar, {c.label} ({kind}) <= {BAR}x no auth: {ratio:.2f}x, "
                    f"{_verdict(ratio)} (+{cost[c.name] - plain:.0f} µs)"
                )
    memory = {
        r["distinct"]: r for r in results if r["part"] == "memory" and "error" not in r
    }
    if memory:
        steps = next(iter(memory.values()))["steps"]
        out += [
            "",
            f"memory: server RSS after N set-ups on one HS256 server (after "
            f"{args.warm} to warm up); the verifier keeps at most "
            f"{CACHE_SIZE:,} tokens",
            "",
            "| N | RSS, one token for all (MB) | RSS, a token each (MB) "
            "| difference (MB) | difference / min(N, 10,000), KB |",
            "|---|---|---|---|---|",
        ]
        same, apart = memory.get(False), memory.get(True)
        for index, step in enumerate([0, *steps]):
            one = same["rss_kb"][index] / 1024 if same else None
            many = apart["rss_kb"][index] / 1024 if apart else None
            diff = per = "-"
            if one is not None and many is not None:
                diff = f"{many - one:+.1f}"
                if step:
                    per = f"{(many - one) * 1024 / min(step, CACHE_SIZE):.2f}"
            out.append(
                f"| {step:,} | {'-' if one is None else f'{one:.1f}'} "
                f"| {'-' if many is None else f'{many:.1f}'} | {diff} | {per} |"
            )
    return "\n".join(out).lstrip("\n")


def _steps(text: str) -> list[int]:
    steps = [int(word) for word in text.split(",") if word]
    if not steps or steps != sorted(set(steps)) or steps[0] < 1:
        raise argparse.ArgumentTypeError("increasing positive connection counts")
    return steps


def main(argv: list[str] | None = None) -> int:
    """Measure the configurations asked for; print JSON lines and tables."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default="cpu,memory", help="cpu, memory or both")
    parser.add_argument(
        "--configs",
        default=",".join(c.name for c in CONFIGS),
        help="comma-separated, of: " + ", ".join(c.name for c in CONFIGS),
    )
    parser.add_argument("--n", type=int, default=3000, help="measured set-ups")
    parser.add_argument("--warm", type=int, default=200, help="set-ups to warm up")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds")
    parser.add_argument(
        "--in-flight", type=int, default=32, help="set-ups the client keeps going"
    )
    parser.add_argument(
        "--memory-steps",
        type=_steps,
        default=[5000, 10000, 15000, 20000],
        help="connection counts at which the memory part reads the RSS",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: --n 300 --warm 50 --repeat 1 --memory-steps 150,300",
    )
    two_cores = (os.cpu_count() or 1) >= 2
    parser.add_argument(
        "--server-cpu", default="0" if two_cores else "", help="'' = no pinning"
    )
    parser.add_argument(
        "--client-cpu", default="1" if two_cores else "", help="'' = no pinning"
    )
    parser.add_argument("--out", default=str(HERE / "results"))
    # The client side, run by this script in another process.
    parser.add_argument("--drive", metavar="TOKENS", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--carrier", default="header", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.drive is not None:
        given = Path(args.drive).read_text().splitlines() or [""]
        raise_nofile(args.in_flight + 64)
        done = drive(args.port, given, args.carrier, args.n, args.in_flight)
        print(json.dumps(done))
        return 0

    if args.quick:
        args.n, args.warm, args.repeat = 300, 50, 1
        args.memory_steps = [150, 300]
    args.parts = [p for p in args.parts.split(",") if p]
    if set(args.parts) - {"cpu", "memory"}:
        parser.error("--parts: use cpu, memory or both")
    by_name = {c.name: c for c in CONFIGS}
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        parser.error(f"unknown configuration {unknown[0]!r}")
    configs = [by_name[n] for n in names] if "cpu" in args.parts else []
    raise_nofile(args.in_flight + 200)

    out = Path(args.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logdir = out / f"{stamp}-auth-logs"
    logdir.mkdir(parents=True, exist_ok=True)
    facts: dict[str, Any] = machine_facts(args.client_cpu, args.server_cpu)
    facts["loadavg"] = Path("/proc/loadavg").read_text().split()[0]
    print("# machine: " + json.dumps(facts), flush=True)
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="sse-bench-auth-") as scratch,
        open(out / f"{stamp}-auth.jsonl", "w") as jsonl,
    ):
        jsonl.write(json.dumps({"facts": facts, "argv": sys.argv[1:]}) + "\n")

        def record(result: dict[str, Any]) -> None:
            line = json.dumps(result)
            print(line, flush=True)
            jsonl.write(line + "\n")
            results.append(result)

        keys = make_keys(Path(scratch))
        tokens = write_tokens(keys, configs, args.n, args.warm, Path(scratch))
        for round_ in range(args.repeat):
            for config in configs:
                record(run_config(config, args, keys, tokens, logdir, round_))
        if "memory" in args.parts:
            for distinct in (False, True):
                record(run_memory(distinct, args, keys, logdir))
    text = report(results, configs, args)
    text += (
        f"\n\nserver cpu {args.server_cpu or '-'}, client cpu "
        f"{args.client_cpu or '-'}; {time.monotonic() - started:.0f} s"
    )
    print("\n" + text)
    (out / f"{stamp}-auth.md").write_text(f"{json.dumps(facts)}\n\n{text}\n")
    bad = [
        r
        for r in results
        if "error" in r
        or r["ok"] != r["n"]
        or r.get("warm_ok", args.warm) != args.warm
        or not r["server_alive"]
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
