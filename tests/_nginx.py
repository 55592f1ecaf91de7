"""
A private nginx for the tests of the documentation's proxy configuration:
the configuration's ``http`` block contents go in as written, inside the
few lines of a main configuration that a distribution's
``/etc/nginx/nginx.conf`` would hold, with every file in a temporary
directory.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ._docs_session import listening
from ._tools import require

#: The ports of an ``http`` block's ``listen`` directives.
_LISTEN = re.compile(r"^\s*listen\s+(?:[\w.\[\]:]+:)?(\d+)\b", re.M)


def nginx_binary() -> str:
    """nginx's path, or skip (fail under CI) when it is not installed."""
    binary = shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx",) if os.access(path, os.X_OK)), None
    )
    require(binary is not None, "nginx is not installed (apt-get install nginx-light)")
    assert binary is not None
    return binary


def nginx_version(binary: str) -> tuple[int, ...]:
    """The version of the nginx at ``binary``, such as ``(1, 22, 1)``."""
    result = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=30)
    match = re.search(r"nginx/(\d+(?:\.\d+)*)", result.stderr + result.stdout)
    assert match is not None, result.stderr
    return tuple(int(part) for part in match.group(1).split("."))


class Nginx:
    """nginx in the foreground, serving ``http`` (the ``http`` block's contents)."""

    def __init__(self, binary: str, http: str) -> None:
        self.binary = binary
        self.directory = Path(tempfile.mkdtemp(prefix="twisted-sse-nginx-"))
        self.ports = [int(port) for port in _LISTEN.findall(http)]
        assert self.ports, "the configuration listens nowhere"
        self.config = self.directory / "nginx.conf"
        temporary = "\n".join(
            f"    {kind}_temp_path {self.directory}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        self.config.write_text(
            f"daemon off;\n"
            f"master_process off;\n"
            f"pid {self.directory}/nginx.pid;\n"
            f"error_log {self.directory}/error.log info;\n"
            f"events {{ worker_connections 256; }}\n"
            f"http {{\n"
            f"    access_log off;\n"
            f"{temporary}\n"
            f"{http}\n"
            f"}}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def test(self) -> subprocess.CompletedProcess[str]:
        """``nginx -t`` on the configuration."""
        return subprocess.run(
            [self.binary, "-t", "-p", str(self.directory), "-c", str(self.config)],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def log(self) -> str:
        """nginx's error log."""
        path = self.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> Nginx:
        """Start nginx and wait until it listens on every port."""
        self.process = subprocess.Popen(
            [self.binary, "-p", str(self.directory), "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if all(listening(port) for port in self.ports):
                return self
            time.sleep(0.05)
        errors = b""
        if self.process.poll() is not None and self.process.stderr is not None:
            errors = self.process.stderr.read()
        log = self.log()
        self.stop()
        raise AssertionError(f"nginx did not start: {errors.decode()} {log}")

    def stop(self) -> None:
        """Stop nginx and remove its files."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        shutil.rmtree(self.directory, True)
