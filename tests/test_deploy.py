"""
The deployment recipes of docs/howto/deploy.rst work as written: the
systemd unit (``docs/examples/twisted-sse.service``), the container file
(``docs/examples/Containerfile``) and the nginx configuration
(``docs/examples/nginx.conf``), each run against real processes.

The pages include these files rather than repeat them, so what is tested
here is what readers copy.
"""

from __future__ import annotations

import configparser
import http.client
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import SkipTest

import pytest
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._tap import Options

from ._docs_session import free_port, listening
from ._http import SocketClient, http_request
from ._nginx import Nginx, nginx_binary, nginx_version
from ._process import Twistd
from ._tools import require_module, require_program

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
UNIT = EXAMPLES / "twisted-sse.service"
CONTAINERFILE = EXAMPLES / "Containerfile"
NGINX = EXAMPLES / "nginx.conf"
TOKEN = "deploy-token"
#: The installed twistd (the test's own virtualenv).
TWISTD = str(Path(sys.executable).with_name("twistd"))


def _default(name: str) -> Any:
    (default,) = [entry[2] for entry in Options.optParameters if entry[0] == name]
    return default


def _option(argv: list[str], name: str) -> str | None:
    """The value of ``--name value`` or ``--name=value`` in ``argv``."""
    for index, word in enumerate(argv):
        if word == f"--{name}" and index + 1 < len(argv):
            return argv[index + 1]
        if word.startswith(f"--{name}="):
            return word.split("=", 1)[1]
    return None


def _healthz(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status
    finally:
        connection.close()


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def _wait_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 60
    while not listening(port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the server does not listen: {log.read_text()}")
        time.sleep(0.05)


# systemd


def _unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text("utf-8"))
    return parser


class SystemdTests(SynchronousTestCase):
    """docs/examples/twisted-sse.service."""

    def setUp(self) -> None:
        self.service = _unit()["Service"]
        self.argv = shlex.split(self.service["ExecStart"])

    def test_settings(self) -> None:
        """
        The unit runs twistd in the foreground without a pid file, as a user
        without privileges, restarts it on failure, raises the descriptor
        limit, and stops it with SIGTERM, waiting longer than the drain.
        """
        self.assertIn(self.service["Type"], ("simple", "exec", "notify"))
        self.assertNotIn(self.service.get("User", "root"), ("root", "0"))
        self.assertEqual(self.service["KillSignal"], "SIGTERM")
        self.assertIn(self.service["Restart"], ("on-failure", "always"))
        self.assertGreaterEqual(int(self.service["LimitNOFILE"]), 65536)
        self.assertTrue(self.argv[0].endswith("/twistd"), self.argv)
        twistd_options = self.argv[1 : self.argv.index("sse")]
        self.assertIn("--nodaemon", twistd_options)
        self.assertIn("--pidfile=", twistd_options)
        drain = float(_option(self.argv, "drain") or _default("drain"))
        # The drain, then the grace for the last connections to close.
        self.assertGreater(float(self.service["TimeoutStopSec"]), drain + 5)

    def test_systemd_analyze_verify(self) -> None:
        """systemd-analyze verify finds nothing to say about the unit."""
        analyze = require_program("systemd-analyze", "apt-get install systemd")
        directory = Path(tempfile.mkdtemp(prefix="twisted-sse-unit-"))
        self.addCleanup(shutil.rmtree, directory, True)
        # verify checks that ExecStart's program exists: point it at this
        # virtualenv's twistd, as /opt/twisted-sse/bin/twistd would be.
        unit = directory / UNIT.name
        unit.write_text(UNIT.read_text("utf-8").replace(self.argv[0], TWISTD))
        result = subprocess.run(
            [analyze, "verify", "--man=no", str(unit)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(
            (result.returncode, result.stdout + result.stderr), (0, ""), str(unit)
        )

    @pytest.mark.slow
    def test_exec_start(self) -> None:
        """
        ExecStart, run as systemd would (on a free port, from an empty
        directory), serves /healthz, writes no file, and on KillSignal ends
        an open stream cleanly and shuts down within TimeoutStopSec.
        """
        port = free_port()
        argv = [TWISTD, *self.argv[1:]]
        argv = [re.sub(r"(?<=tcp:)\d+", str(port), word) for word in argv]
        directory = Path(tempfile.mkdtemp(prefix="twisted-sse-unit-"))
        self.addCleanup(shutil.rmtree, directory, True)
        log = Path(tempfile.mkdtemp(prefix="twisted-sse-unit-log-")) / "log"
        self.addCleanup(shutil.rmtree, log.parent, True)
        with log.open("wb") as output:
            process = subprocess.Popen(
                argv, cwd=directory, stdout=output, stderr=subprocess.STDOUT
            )
        self.addCleanup(_kill, process)
        _wait_listening(process, port, log)
        self.assertEqual(_healthz(port), 200)
        stream = SocketClient(port, http_request("/events"))
        self.addCleanup(stream.sock.close)
        opening = stream.read_frame()

        process.send_signal(getattr(signal, self.service["KillSignal"]))
        status = process.wait(float(self.service["TimeoutStopSec"]))
        stream.wait_for(lambda response: response.complete, 20)

        # twistd exits by the signal it stopped on, once it has shut down
        # cleanly; systemd counts SIGTERM as a clean exit (SuccessExitStatus).
        self.assertIn(status, (0, -signal.SIGTERM), log.read_text())
        self.assertIn("Server Shut Down.", log.read_text())
        self.assertIn(b"retry: ", stream.body[len(opening) :])
        self.assertEqual(list(directory.iterdir()), [])


# The container file


def _instructions(text: str) -> list[tuple[str, str]]:
    """A Containerfile's instructions: keyword and arguments, lines joined."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    return instructions


def _healthcheck_command(arguments: str) -> str:
    match = re.search(r"\bCMD\s+(.*)$", arguments, re.S)
    assert match is not None, arguments
    return match.group(1)


def _for_everyone(path: Path) -> bool:
    """Whether any user may run ``path`` (every directory above it included)."""
    mode = path.stat().st_mode
    if not mode & stat.S_IXOTH:
        return False
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in path.parents)


def _python_for_everyone() -> str | None:
    """A Python 3.11+ with venv that any user may run, or None."""
    base = getattr(sys, "_base_executable", sys.executable)
    for candidate in (base, "/usr/local/bin/python3", "/usr/bin/python3"):
        found = shutil.which(candidate)
        if found is None:
            continue
        path = Path(found).resolve()
        if not _for_everyone(path):
            continue
        probe = subprocess.run(
            [str(path), "-c", "import sys, venv; sys.exit(sys.version_info < (3, 11))"],
            capture_output=True,
            timeout=60,
        )
        if probe.returncode == 0:
            return str(path)
    return None


def _engine() -> str | None:
    """A container engine that answers, or None."""
    for name in ("podman", "docker"):
        path = shutil.which(name)
        if path is None:
            continue
        try:
            result = subprocess.run([path, "info"], capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if result.returncode == 0:
            return path
    return None


class ContainerTests(SynchronousTestCase):
    """docs/examples/Containerfile."""

    def setUp(self) -> None:
        self.instructions = _instructions(CONTAINERFILE.read_text("utf-8"))
        self.final = self.instructions[
            max(i for i, (k, _) in enumerate(self.instructions) if k == "FROM") :
        ]

    def _last(self, keyword: str) -> str:
        values = [rest for key, rest in self.final if key == keyword]
        self.assertTrue(values, f"no {keyword} in the image")
        return values[-1]

    def test_settings(self) -> None:
        """
        A slim Python image, a user without privileges, a health check on
        /healthz, and twistd -n sse without a pid file on the port it
        exposes.
        """
        self.assertRegex(self._last("FROM"), r"^python:3\.1[1-9][\w.]*-slim\b")
        self.assertNotIn(self._last("USER"), ("root", "0"))
        self.assertIn("/healthz", self._last("HEALTHCHECK"))
        command = json.loads(self._last("CMD"))
        self.assertEqual(command[:2], ["twistd", "--nodaemon"])
        self.assertIn("--pidfile=", command[: command.index("sse")])
        port = self._last("EXPOSE")
        self.assertEqual(_option(command, "port"), f"tcp:{port}")
        self.assertIn(f", {port},", self._last("HEALTHCHECK"))
        self.assertEqual(self._last("STOPSIGNAL"), "SIGTERM")

    @pytest.mark.slow
    def test_instructions_in_a_virtualenv(self) -> None:
        """
        The Containerfile's instructions work, run here without a container
        engine (there is none that works on CI's machine): its COPY and RUN
        lines in a fresh virtualenv, with /opt/twisted-sse and /src moved
        under a temporary directory and this Python for the image's; then
        its CMD, with its ENV, from /, as an unprivileged user (nobody, when
        the test runs as root and a Python that nobody may run is found: the
        useradd line is not run, as it would change this machine); then its
        HEALTHCHECK command, which must pass;
        then its STOPSIGNAL, on which the server shuts down cleanly.
        """
        scratch = Path(tempfile.mkdtemp(prefix="twisted-sse-container-"))
        self.addCleanup(shutil.rmtree, scratch, True)
        scratch.chmod(0o755)
        moved = {"/opt/twisted-sse": str(scratch / "opt" / "twisted-sse")}
        moved["/src"] = str(scratch / "src")

        def move(text: str) -> str:
            for old, new in moved.items():
                text = re.sub(rf"(?<![\w/]){re.escape(old)}(?![\w-])", new, text)
            return text

        # "python" is a Python that the unprivileged user can run too (the
        # image's is /usr/local/bin/python).
        python = _python_for_everyone()
        bin_directory = scratch / "bin"
        bin_directory.mkdir()
        (bin_directory / "python").symlink_to(python or sys.executable)
        env = {**os.environ, "PATH": f"{bin_directory}{os.pathsep}{os.environ['PATH']}"}
        env.pop("VIRTUAL_ENV", None)
        for keyword, arguments in self.instructions:
            if keyword == "COPY" and not arguments.startswith("--from"):
                # As a container engine does: a directory's contents go
                # into the target; files into it when it ends with "/".
                *sources, target = shlex.split(arguments)
                destination = Path(move(target))
                for source in sources:
                    path = ROOT / source
                    if path.is_dir():
                        shutil.copytree(
                            path,
                            destination,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                            dirs_exist_ok=True,
                        )
                    elif target.endswith("/"):
                        destination.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(path, destination / path.name)
                    else:
                        destination.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(path, destination)
            elif keyword == "RUN" and not arguments.startswith("useradd"):
                result = subprocess.run(
                    ["sh", "-c", move(arguments)],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=900,
                )
                self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            elif keyword == "ENV":
                for assignment in shlex.split(arguments):
                    name, _, value = assignment.partition("=")
                    env[name] = move(value).replace("$PATH", env["PATH"])

        exposed = self._last("EXPOSE")
        port = str(free_port())
        command = [
            word.replace(exposed, port) for word in json.loads(self._last("CMD"))
        ]
        health = _healthcheck_command(self._last("HEALTHCHECK")).replace(exposed, port)
        user: dict[str, Any] = {}
        if os.geteuid() == 0 and python is not None:
            nobody = pwd.getpwnam("nobody")
            user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        log = scratch / "log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                command,
                cwd="/",
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                **user,
            )
        self.addCleanup(_kill, process)
        _wait_listening(process, int(port), log)
        checked = subprocess.run(
            ["sh", "-c", health],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            **user,
        )
        process.send_signal(getattr(signal, self._last("STOPSIGNAL")))
        status = process.wait(30)

        self.assertEqual(checked.returncode, 0, checked.stdout + checked.stderr)
        # As in test_exec_start: a clean shutdown, then death by the signal.
        self.assertIn(status, (0, -signal.SIGTERM), log.read_text())
        self.assertIn("Server Shut Down.", log.read_text())
        self.assertNotIn("Traceback", log.read_text())

    @pytest.mark.slow
    def test_image(self) -> None:
        """
        Where a container engine works, the image builds, becomes healthy,
        serves /healthz on the published port, and stops cleanly.
        """
        engine = _engine()
        if engine is None:
            raise SkipTest(
                "no container engine works here (podman info and docker info "
                "fail): test_instructions_in_a_virtualenv runs the file's "
                "instructions instead"
            )
        tag = f"twisted-sse-test:{os.getpid()}"
        name = f"twisted-sse-test-{os.getpid()}"
        built = subprocess.run(
            [engine, "build", "-f", str(CONTAINERFILE), "-t", tag, str(ROOT)],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        if built.returncode != 0 and re.search(
            r"pull|manifest|registry|resolve", built.stderr, re.I
        ):
            raise SkipTest(f"the base image cannot be fetched here: {built.stderr}")
        self.assertEqual(built.returncode, 0, built.stderr)
        self.addCleanup(subprocess.run, [engine, "rmi", "-f", tag], capture_output=True)
        port = free_port()
        exposed = self._last("EXPOSE")
        subprocess.run(
            [
                engine,
                "run",
                "-d",
                "--name",
                name,
                "-p",
                f"127.0.0.1:{port}:{exposed}",
                tag,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        self.addCleanup(subprocess.run, [engine, "rm", "-f", name], capture_output=True)

        def inspect(field: str) -> str:
            return subprocess.run(
                [engine, "inspect", "--format", field, name],
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout.strip()

        deadline = time.monotonic() + 180
        while inspect("{{.State.Health.Status}}") != "healthy":
            self.assertLess(time.monotonic(), deadline, inspect("{{json .State}}"))
            time.sleep(1)
        self.assertEqual(_healthz(port), 200)
        subprocess.run([engine, "stop", "-t", "30", name], check=True, timeout=60)
        # 143: the clean shutdown ends by the signal (128 + SIGTERM).
        self.assertIn(inspect("{{.State.ExitCode}}"), ("0", "143"))


# nginx


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.endswith(";"):
            name, _, value = line[:-1].partition(" ")
            found.setdefault(name, []).append(value.strip())
    return found


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    assert match is not None, value
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[match.group(2)]
    return int(match.group(1)) * scale


class NginxTests(SynchronousTestCase):
    """docs/examples/nginx.conf."""

    def test_settings(self) -> None:
        """
        The proxy passes each event at once, to HTTP/1.1 upstreams kept
        alive, and waits longer than a heartbeat before cutting a quiet
        stream.
        """
        directives = _directives(NGINX.read_text("utf-8"))
        self.assertEqual(directives["proxy_buffering"], ["off"])
        self.assertEqual(directives["proxy_cache"], ["off"])
        self.assertEqual(directives["gzip"], ["off"])
        self.assertEqual(directives["proxy_http_version"], ["1.1"])
        self.assertIn('Connection ""', directives["proxy_set_header"])
        self.assertIn("keepalive", directives)
        (timeout,) = directives["proxy_read_timeout"]
        self.assertGreater(_seconds(timeout), 2 * float(_default("heartbeat")))

    def test_pages_include_the_file(self) -> None:
        """The pages that show the configuration include the file itself."""
        for page in ("deployment.md", "howto/redis-nginx.rst", "howto/deploy.rst"):
            text = (ROOT / "docs" / page).read_text("utf-8")
            self.assertIn("examples/nginx.conf", text, page)
            self.assertNotIn("proxy_read_timeout 1h", text, page)

    @pytest.mark.slow
    def test_whole_file(self) -> None:
        """
        The whole file, in front of two twistd sse sharing a Redis: over
        TLS and HTTP/2, twisted-sse check passes on a hub channel (test
        events published through nginx, whichever process takes them) and
        on /events over HTTP/1.1.  Only ports and certificate paths are
        changed (and, before nginx 1.25.1, "http2 on;" becomes the listen
        parameter, as the file's comment says).
        """
        from . import _redis_tools as redis
        from ._certs import self_signed

        binary = nginx_binary()
        require_module("OpenSSL", "Twisted[tls] (the tls extra)")
        require_module("h2", "Twisted[http2] (the http2 extra)")
        redis.need(redis.server_unavailable_reason())
        directory = Path(tempfile.mkdtemp(prefix="twisted-sse-deploy-"))
        self.addCleanup(shutil.rmtree, directory, True)
        key, cert = self_signed(directory)
        store = redis.RedisServer()
        store.start()
        self.addCleanup(store.__exit__, None, None, None)
        broker = f"redis://127.0.0.1:{store.port}/0"
        servers = []
        for _ in range(2):
            server = Twistd("--broker", broker, "--publish-token", TOKEN)
            self.addCleanup(server.stop)
            servers.append(server.start())

        text = NGINX.read_text("utf-8")
        for old, server in zip(("3001", "3002"), servers, strict=True):
            text = text.replace(f"127.0.0.1:{old};", f"127.0.0.1:{server.port};")
        port = free_port()
        listen = f"listen 127.0.0.1:{port} ssl"
        if nginx_version(binary) < (1, 25, 1):
            text = text.replace("    http2 on;", "")
            listen += " http2"
        text = re.sub(r"listen 443 ssl", listen, text)
        text = re.sub(r"(ssl_certificate\s+)\S+;", rf"\g<1>{cert};", text)
        text = re.sub(r"(ssl_certificate_key\s+)\S+;", rf"\g<1>{key};", text)
        proxy = Nginx(binary, text)
        self.addCleanup(proxy.stop)
        proxy.start()

        base = f"https://localhost:{port}"
        common = ["--cacert", str(cert), "--duration", "3"]
        runs = {
            "channel": _check(
                f"{base}/channels/news",
                "--publish",
                f"{base}/channels/news",
                "--token",
                TOKEN,
                *common,
            ),
            "events": _check(f"{base}/events", "--http1.1", *common),
        }
        reports = {name: _report(process) for name, process in runs.items()}

        for name, (code, report) in reports.items():
            failed = [c for c in report["checks"] if c["status"] == "fail"]
            self.assertEqual((code, failed), (0, []), (name, proxy.log()))
        self.assertEqual(reports["channel"][1]["timings"]["protocol"], "HTTP/2")
        self.assertEqual(reports["events"][1]["timings"]["protocol"], "HTTP/1.1")
        statuses = {c["name"]: c["status"] for c in reports["channel"][1]["checks"]}
        self.assertEqual((statuses["publish"], statuses["resume"]), ("pass", "pass"))


def _check(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "twisted_sse", "check", "--json", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _report(process: subprocess.Popen[str]) -> tuple[int, dict[str, Any]]:
    out, err = process.communicate(timeout=120)
    assert out, err
    return process.returncode, json.loads(out)
