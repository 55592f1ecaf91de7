"""
A terminal for the documentation's shell blocks.

A :class:`Session` runs the commands of a page's ``sh`` and ``console``
blocks as a reader would type them, one after the other in one shell, in a
temporary directory, against real processes:

- the ports the documentation uses (``3000``, ``8080``, ``6379``, ...) are
  replaced by free ones wherever they follow a ``:``, ``--port`` or ``-p``,
  in the commands, in the files copied in and in the expected output;
  nothing else in a command is changed;
- ``export`` and ``cd`` (and a virtualenv's ``activate``) carry over to the
  next command, as in a shell;
- ``twistd`` and ``python program.py`` are servers: they run beside the
  terminal (as in a second terminal), and the session waits until they
  listen; a server started in the foreground is stopped, as with Ctrl-C,
  when the next server starts; ``twistd`` without ``-n`` daemonises and is
  stopped through its pid file;
- a command ending in ``&`` runs in the background and its output joins the
  terminal's, as in a shell;
- ``curl -N`` and ``twisted-sse listen`` read streams that never end: they
  are interrupted (SIGINT) once they have shown what the page shows, or
  their first event in an ``sh`` block;
- commands run on a pseudo-terminal, so that programs behave as in a
  terminal (curl prints no progress meter); colours are removed.

In a ``console`` block the output shown under each ``$`` command must
match what the command printed, line by line, where any word that holds a
digit (an id, a time, a count, a port) matches any word, runs of spaces
match any run of spaces, and a line ``...`` matches any lines.  Lines
printed by background jobs may come between the command's lines, as in a
terminal.  In an ``sh`` block each command must exit with status 0, and
curl must not print a hub's JSON error.

``TWISTED_SSE_DOCS_VERBOSE=1`` prints each page's terminal and server logs
when the page is done (``pytest -s``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from pathlib import Path

from ._tools import require

ROOT = Path(__file__).resolve().parent.parent

#: The ports the documentation uses; each is replaced by a free one.
DOC_PORTS = (3000, 3001, 3002, 3003, 6379, 8000, 8001, 8080, 8443)
_PORT = re.compile(
    r"(?:(?<=:)|(?<=--port )|(?<=--port=)|(?<=-p )|(?<=port=)|(?<=listenTCP\())("
    + "|".join(str(port) for port in DOC_PORTS)
    + r")(?!\d)"
)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

#: The outside programs the pages run, and how to get them.
_TOOLS = {
    "curl": "apt-get install curl",
    "jq": "apt-get install jq",
    "openssl": "apt-get install openssl",
    "redis-cli": "apt-get install redis-tools",
    "git": "apt-get install git",
}

#: How long one command may take (a pip install included).
COMMAND_TIMEOUT = 600.0
#: How long a server may take to listen (after an install in the same line).
LISTEN_TIMEOUT = 600.0
#: How long output that a page shows may take to come.
OUTPUT_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def clean(raw: bytes) -> str:
    """What a terminal shows of ``raw``: no colours, no carriage returns."""
    text = _ANSI.sub("", raw.decode("utf-8", "replace")).replace("\r\n", "\n")
    # A pseudo-terminal writes a program's CRLF as CR CR LF: the CRs that
    # end a line are dropped, then what a CR inside it overwrote.
    return "\n".join(line.rstrip("\r").rpartition("\r")[2] for line in text.split("\n"))


class Job:
    """A process on a pseudo-terminal of its own, its output collected."""

    def __init__(self, argv: Sequence[str], cwd: str, env: dict[str, str]) -> None:
        primary, secondary = os.openpty()
        # No echo, no line discipline surprises: the program only writes.
        attributes = termios.tcgetattr(secondary)
        attributes[3] &= ~termios.ECHO
        termios.tcsetattr(secondary, termios.TCSANOW, attributes)
        # 50 rows of 200 columns: wide enough that nothing wraps.
        fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
            start_new_session=True,
        )
        os.close(secondary)
        self._primary = primary
        self._output = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        self.taken = 0

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self._primary, 65536)
            except OSError:  # EIO: every writer has gone
                break
            if not chunk:
                break
            with self._lock:
                self._output += chunk
        os.close(self._primary)

    @property
    def raw(self) -> bytes:
        """Everything printed so far."""
        with self._lock:
            return bytes(self._output)

    @property
    def text(self) -> str:
        """Everything printed so far, as a terminal shows it."""
        return clean(self.raw)

    def running(self) -> bool:
        """Whether the process still runs."""
        return self.process.poll() is None

    def wait(self, timeout: float) -> int | None:
        """The exit status, once the process exits within ``timeout``."""
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(5)
        return status

    def send(self, number: int) -> None:
        """Send ``number`` to the job's process group, as a terminal does."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, number)

    def stop(self, number: int = signal.SIGINT, timeout: float = 15.0) -> None:
        """Interrupt the job (Ctrl-C), and kill it if it does not exit."""
        self.send(number)
        if self.wait(timeout) is None:
            self.send(signal.SIGKILL)
            self.wait(timeout)
        # Whatever the group left behind (a shell's children) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


class Server:
    """A server a session started, and the ports it serves."""

    def __init__(self, command: str, job: Job | None, ports: Sequence[int]) -> None:
        self.command = command
        self.job = job
        self.ports = list(ports)
        self.pid_file: Path | None = None

    def log(self) -> str:
        """What the server printed (its log, for a daemon)."""
        return self.job.text if self.job is not None else ""

    def stop(self) -> None:
        """Stop it as its user would: Ctrl-C, or SIGTERM to a daemon."""
        if self.job is not None:
            self.job.stop()
        if self.pid_file is not None:
            _stop_daemon(self.pid_file)


def _stop_daemon(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    for number, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


# Output matching


@cache
def _line_pattern(expected: str) -> re.Pattern[str]:
    parts = []
    for token in re.split(r"(\s+)", expected.strip()):
        if not token:
            continue
        if token.isspace():
            parts.append(r"\s+")
        elif any(character.isdigit() for character in token):
            # A word with a digit: an id, a time, a count.  What it sits in
            # (quotes, a comma) stays literal.
            head = re.match(r"^[\"'(\[{]*", token)
            tail = re.search(r"[\"',;:)\]}]*$", token)
            assert head is not None and tail is not None
            start, end = head.end(), max(head.end(), tail.start())
            parts.append(re.escape(token[:start]) + r"\S+?" + re.escape(token[end:]))
        else:
            parts.append(re.escape(token))
    return re.compile("".join(parts))


def line_matches(expected: str, actual: str) -> bool:
    """Whether ``actual`` is ``expected`` up to numbers and spacing."""
    return _line_pattern(expected).fullmatch(actual.strip()) is not None


def match_output(
    expected: Sequence[str],
    foreground: Sequence[str],
    background: Sequence[str],
    whole: bool,
) -> int | None:
    """
    Match the lines a page shows against what a command printed.

    :param foreground: The command's own lines, all of which must be shown
        (or, if not ``whole``, a prefix of them: the command goes on).
    :param background: Lines of background jobs, any of which may come
        between them, in order.
    :returns: How many background lines were used, or ``None`` when the
        output does not match.
    """
    memo: dict[tuple[int, int, int], int | None] = {}

    def go(i: int, j: int, k: int) -> int | None:
        key = (i, j, k)
        if key in memo:
            return memo[key]
        memo[key] = None
        result: int | None = None
        if i == len(expected):
            result = k if (j == len(foreground) or not whole) else None
        elif expected[i].strip() == "...":
            result = go(i + 1, j, k)
            if result is None and j < len(foreground):
                result = go(i, j + 1, k)
        else:
            if j < len(foreground) and line_matches(expected[i], foreground[j]):
                result = go(i + 1, j + 1, k)
            if result is None and k < len(background):
                if line_matches(expected[i], background[k]):
                    result = go(i + 1, j, k + 1)
                if result is None:
                    result = go(i, j, k + 1)
        memo[key] = result
        return result

    return go(0, 0, 0)


def _lines(text: str) -> list[str]:
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


# Blocks


def sh_commands(source: str) -> list[tuple[str, list[str] | None]]:
    """The commands of an ``sh`` block (no output is shown)."""
    commands: list[tuple[str, list[str] | None]] = []
    current = ""
    for line in source.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line
        if current.endswith("\\"):
            current += "\n"
            continue
        commands.append((current, None))
        current = ""
    if current:
        commands.append((current, None))
    return commands


def console_commands(source: str) -> list[tuple[str, list[str] | None]]:
    """The ``$`` commands of a ``console`` block, each with the output shown."""
    commands: list[tuple[str, list[str] | None]] = []
    lines = source.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\") and index + 1 < len(lines):
                index += 1
                command += "\n" + lines[index]
            commands.append((command, []))
        elif commands:
            output = commands[-1][1]
            assert output is not None
            output.append(line)
        elif line.strip():
            raise AssertionError(f"output before the first $ command: {line!r}")
        index += 1
    for _, output in commands:
        assert output is not None
        while output and not output[-1].strip():
            output.pop()
    return commands


def _is_background(command: str) -> bool:
    stripped = command.rstrip()
    return stripped.endswith("&") and not stripped.endswith("&&")


def _words(command: str) -> list[str]:
    try:
        return shlex.split(command.replace("\\\n", " "))
    except ValueError:
        return command.split()


def _segments(command: str) -> list[list[str]]:
    """
    The words of each ``&&``-joined part of a command, without the
    variable assignments that may start it (``PYTHONPATH=. trial``).
    """
    segments: list[list[str]] = [[]]
    for word in _words(command):
        if word in ("&&", "&", ";"):
            segments.append([])
        elif segments[-1] or not re.fullmatch(r"[A-Za-z_]\w*=.*", word):
            segments[-1].append(word)
    return [segment for segment in segments if segment]


class Session:
    """
    One page's terminal: a directory, an environment, the servers started,
    and the free port standing for each port the page names.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.directory = Path(tempfile.mkdtemp(prefix="twisted-sse-docs-"))
        self.cwd = str(self.directory)
        bin_directory = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": bin_directory + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONUNBUFFERED": "1",
            "TERM": "dumb",
        }
        self.env.pop("NO_COLOR", None)
        self.ports: dict[int, int] = {}
        self.servers: list[Server] = []
        self.foreground: Server | None = None
        self.background: list[Job] = []
        self.status = 0
        self.transcript: list[str] = []
        self._cleanups: list[Callable[[], object]] = []

    # Ports

    def port(self, documented: int) -> int:
        """The free port that stands for ``documented`` in this session."""
        if documented not in self.ports:
            self.ports[documented] = free_port()
        return self.ports[documented]

    def substitute(self, text: str) -> str:
        """``text`` with the documentation's ports replaced."""
        return _PORT.sub(lambda match: str(self.port(int(match.group(1)))), text)

    def _ports_in(self, text: str) -> list[int]:
        """The free ports (standing for the page's) that ``text`` names."""
        given = set(self.ports.values())
        return sorted(
            {int(number) for number in re.findall(r"(?<!\d)\d+(?!\d)", text)} & given
        )

    # What a page assumes

    def copy(self, *paths: str, to: str = "") -> None:
        """Copy files of the repository into the current directory, ports replaced."""
        for name in paths:
            source = ROOT / name
            target = Path(self.cwd) / to / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(self.substitute(source.read_text("utf-8")), "utf-8")

    def checkout(self) -> None:
        """Copy the repository's files (as git lists them) into the directory."""
        self._need("git")
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.split(b"\0")
        for raw in listed:
            if not raw:
                continue
            name = raw.decode()
            source = ROOT / name
            if not source.is_file() or name.startswith("tests/js/node_modules"):
                continue
            target = Path(self.cwd) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)

    def virtualenv(self) -> None:
        """Make a fresh virtualenv in ``venv/`` and activate it, as a reader would."""
        self.run_sh(f"{shlex.quote(sys.executable)} -m venv venv")
        self.run_sh(". venv/bin/activate")

    def redis(self, password: str | None = None) -> None:
        """A private redis-server standing for the one on port 6379."""
        from . import _redis_tools as tools

        tools.need(tools.server_unavailable_reason())
        server = tools.RedisServer(port=self.port(6379)).start()
        if password is not None:
            tools.command(server.port, "CONFIG", "SET", "requirepass", password)
        self._cleanups.append(lambda: server.__exit__(None, None, None))

    def start(self, command: str) -> None:
        """Start a server the page assumes is running (in another terminal)."""
        self._server(self.substitute(command), foreground=False)

    def stop_servers(self) -> None:
        """Stop every server started so far (its reader stopped them)."""
        for server in reversed(self.servers):
            server.stop()
        self.servers = []
        self.foreground = None

    @staticmethod
    def nginx_location() -> str:
        """The ``location / { ... }`` block of docs/examples/nginx.conf."""
        text = (ROOT / "docs" / "examples" / "nginx.conf").read_text("utf-8")
        match = re.search(r"^    location / \{\n.*?^    \}", text, re.M | re.S)
        assert match is not None
        return match.group(0)

    def nginx(self, config: str) -> None:
        """An nginx with ``config`` (ports replaced) in its ``http`` block."""
        from ._nginx import Nginx, nginx_binary

        binary = nginx_binary()
        proxy = Nginx(binary, self.substitute(config)).start()
        self._cleanups.append(proxy.stop)

    # Running blocks

    def run_block(self, source: str, language: str) -> None:
        """Run an ``sh`` or ``console`` block; raise AssertionError if it fails."""
        if language == "console":
            commands = console_commands(source)
        else:
            commands = sh_commands(source)
        for command, output in commands:
            self.run(command, output)
        self._stop_background()

    def run_sh(self, command: str) -> None:
        """Run one command as in an ``sh`` block."""
        self.run(command, None)

    def program(self, source: str, name: str) -> None:
        """Save a page's program as ``name`` and run it, as a server."""
        (Path(self.cwd) / name).write_text(self.substitute(source), "utf-8")
        self.run(f"python {name}", None)

    def run(self, command: str, expected: list[str] | None) -> None:
        """Run one command; ``expected`` is the output shown (console only)."""
        command = self.substitute(command)
        self.transcript.append(f"$ {command}")
        segments = _segments(command)
        if not segments:  # variable assignments only
            self._foreground(command, expected)
            return
        for segment in segments:
            self._need(segment[0])
        words = segments[-1]
        first = words[0]
        if first == "twistd" or (
            first in ("python", "python3")
            and len(words) == 2
            and words[1].endswith(".py")
            and (Path(self.cwd) / words[1]).is_file()
        ):
            if expected:
                raise AssertionError(f"a page shows the output of a server: {command}")
            self._server(command, foreground=not _is_background(command))
        elif _is_background(command):
            job = Job(["bash", "-c", command.rstrip()[:-1]], self.cwd, self.env)
            self.background.append(job)
            # As a reader types the next line, the job starts; a stream
            # reader has connected once it printed something.
            if expected:
                self._expect(None, expected)
            else:
                self._wait_for_output(job)
        else:
            self._foreground(command, expected)

    # The pieces

    def _need(self, program: str) -> None:
        """Skip (fail under CI) when a tool the page uses is not installed."""
        if program in _TOOLS and shutil.which(program, path=self.env["PATH"]) is None:
            require(False, f"{program} is not installed ({_TOOLS[program]})")

    def _shell(self, command: str) -> tuple[Job, Path, Path]:
        state = Path(tempfile.mkdtemp(prefix="state-", dir=self.directory))
        env = {
            **self.env,
            "SESSION_CWD": self.cwd,
            "SESSION_STATUS": str(self.status),
            "SESSION_COMMAND": command,
            "SESSION_ENV": str(state / "env"),
            "SESSION_PWD": str(state / "pwd"),
        }
        # allexport: a variable set without export (URL=...) is kept for the
        # next command too, as in an interactive shell.
        script = (
            "set -a\n"
            'cd -- "$SESSION_CWD" || exit 97\n'
            '(exit "$SESSION_STATUS")\n'
            'eval "$SESSION_COMMAND"\n'
            "__status=$?\n"
            'env -0 > "$SESSION_ENV"\n'
            'pwd > "$SESSION_PWD"\n'
            'exit "$__status"\n'
        )
        return Job(["bash", "-c", script], self.cwd, env), state / "env", state / "pwd"

    def _keep_state(self, env_file: Path, pwd_file: Path) -> None:
        if env_file.exists():
            env = {}
            for entry in env_file.read_bytes().split(b"\0"):
                name, _, value = entry.decode("utf-8", "replace").partition("=")
                if name and not name.startswith("SESSION_"):
                    env[name] = value
            if env:
                self.env = env
        if pwd_file.exists():
            self.cwd = pwd_file.read_text().strip() or self.cwd

    def _foreground(self, command: str, expected: list[str] | None) -> None:
        job, env_file, pwd_file = self._shell(command)
        words = (_segments(command) or [[]])[-1]
        reader = bool(words) and (
            (words[0] == "curl" and ("-N" in words or "--no-buffer" in words))
            or words[:2] == ["twisted-sse", "listen"]
        )
        try:
            if reader:
                # A stream never ends: read what the page shows (or one
                # event), then Ctrl-C, unless it stopped by itself.
                if expected is not None:
                    self._expect(job, expected)
                else:
                    self._read_one_event(job, command)
                if job.running():
                    job.stop(signal.SIGINT)
                    self.status = 130
                    return
            status = job.wait(COMMAND_TIMEOUT)
            if status is None:
                raise AssertionError(
                    f"{command!r} still runs after {COMMAND_TIMEOUT} s"
                )
            self.status = status
            self._keep_state(env_file, pwd_file)
            if expected is not None:
                self._expect(job, expected)
                return
            if status != 0:
                raise AssertionError(
                    f"{command!r} exited with status {status}:\n{job.text}"
                )
            if re.search(r'^\{"error"', job.text, re.M):
                # What curl prints of a hub's error (401, 403, 415...).
                raise AssertionError(f"{command!r} was refused:\n{job.text}")
        finally:
            self.transcript.extend(_lines(job.text))
            job.stop(signal.SIGKILL, 5)

    def _read_one_event(self, job: Job, command: str) -> None:
        deadline = time.monotonic() + OUTPUT_TIMEOUT
        while time.monotonic() < deadline:
            if re.search(r"\S\n\n", job.text) or re.search(
                r'^\{"type"', job.text, re.M
            ):
                return
            if not job.running():
                raise AssertionError(f"{command!r} ended: {job.text}")
            time.sleep(0.05)
        raise AssertionError(f"{command!r} showed no event: {job.text!r}")

    def _background_lines(self) -> list[str]:
        lines: list[str] = []
        for job in self.background:
            lines.extend(_lines(job.text)[job.taken :])
        return lines

    def _take_background(self, count: int) -> None:
        # Mark the first ``count`` unread background lines as read, job by
        # job (their order between jobs does not matter to a reader).
        for job in self.background:
            available = len(_lines(job.text)) - job.taken
            used = min(available, count)
            job.taken += used
            count -= used

    def _expect(self, job: Job | None, expected: list[str]) -> None:
        expected = [self.substitute(line) for line in expected]
        deadline = time.monotonic() + (COMMAND_TIMEOUT if job else OUTPUT_TIMEOUT)
        shown_deadline = time.monotonic() + OUTPUT_TIMEOUT
        while True:
            finished = job is None or not job.running()
            own = _lines(job.text) if job is not None else []
            background = self._background_lines()
            used = match_output(expected, own, background, whole=finished)
            if used is not None:
                self._take_background(used)
                return
            now = time.monotonic()
            if now > deadline or (finished and now > shown_deadline):
                raise AssertionError(
                    "the output does not match the page.\n--- the page shows:\n"
                    + "\n".join(expected)
                    + "\n--- the command printed:\n"
                    + "\n".join(own)
                    + "\n--- background jobs printed:\n"
                    + "\n".join(background)
                )
            if not finished:
                shown_deadline = now + OUTPUT_TIMEOUT
            time.sleep(0.1)

    def _wait_for_output(self, job: Job) -> None:
        deadline = time.monotonic() + OUTPUT_TIMEOUT
        while time.monotonic() < deadline and job.running() and not job.raw:
            time.sleep(0.05)

    def _server(self, command: str, foreground: bool) -> None:
        words = _segments(command)[-1]
        options = words[: words.index("sse")] if "sse" in words else words
        daemon = words[0] == "twistd" and not any(
            word == "--nodaemon" or re.fullmatch(r"-[a-z]*n[a-z]*", word)
            for word in options
        )
        text = command
        if words[0] != "twistd":
            text = (Path(self.cwd) / words[1]).read_text("utf-8")
        else:
            for index, word in enumerate(words[:-1]):
                if re.fullmatch(r"-[a-z]*y", word):
                    tac = (Path(self.cwd) / words[index + 1]).read_text("utf-8")
                    text = command + tac
        ports = self._ports_in(text)
        if not ports:
            raise AssertionError(
                f"{command!r}: name the port (--port 3000), so that the test "
                "can give the server a free one"
            )
        if self.foreground is not None and set(self.foreground.ports) & set(ports):
            # The reader stops the server that holds the port (Ctrl-C).
            self.foreground.stop()
            self.servers.remove(self.foreground)
            self.foreground = None
        if daemon:
            job, _, _ = self._shell(command)
            status = job.wait(COMMAND_TIMEOUT)
            self.transcript.extend(_lines(job.text))
            if status != 0:
                raise AssertionError(f"{command!r} exited with {status}: {job.text}")
            server = Server(command, None, ports)
            pid_file = next(
                (w.split("=", 1)[1] for w in words if w.startswith("--pidfile=")),
                "twistd.pid",
            )
            server.pid_file = Path(self.cwd) / pid_file
        else:
            plain = command.rstrip()
            if _is_background(plain):
                plain = plain[:-1]
            job, _, _ = self._shell(plain)
            server = Server(command, job, ports)
        self.servers.append(server)
        if foreground and not daemon:
            self.foreground = server
        # An install may come first in the same line; a server alone is quick.
        wait = LISTEN_TIMEOUT if "install" in command else OUTPUT_TIMEOUT
        deadline = time.monotonic() + wait
        while not all(listening(port) for port in ports):
            if server.job is not None and not server.job.running():
                raise AssertionError(f"{command!r} exited:\n{server.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{command!r} does not listen:\n{server.log()}")
            time.sleep(0.1)

    def _stop_background(self) -> None:
        for job in self.background:
            job.stop(signal.SIGINT, 5)
            self.transcript.extend(f"[background] {line}" for line in _lines(job.text))
        self.background = []

    def logs(self) -> str:
        """The transcript and every server's log, for a failure message."""
        parts = ["--- terminal:", *self.transcript[-200:]]
        for server in self.servers:
            parts += [f"--- server {server.command!r}:", server.log()[-4000:]]
        return "\n".join(parts)

    def close(self) -> None:
        """Stop everything the session started and remove its directory."""
        if os.environ.get("TWISTED_SSE_DOCS_VERBOSE"):
            print(f"\n=== {self.name}\n{self.logs()}", file=sys.stderr)
        self._stop_background()
        for server in reversed(self.servers):
            server.stop()
        self.servers = []
        for cleanup in reversed(self._cleanups):
            cleanup()
        self._cleanups = []
        shutil.rmtree(self.directory, ignore_errors=True)


def documented_ports(text: str) -> Iterable[int]:
    """The documentation's ports named in ``text``."""
    return (int(match.group(1)) for match in _PORT.finditer(text))
