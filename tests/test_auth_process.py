"""
Authorization in a real ``twistd sse`` process, over real sockets: the
options (``--jwt-secret`` from the environment, ``--jwt-key`` files made by
``openssl``, ``--public``, ``--allow-origin``, ``--auth-url`` to a real
application), tokens in every carrier and of every size, a stream that
ends when its token expires, and the start-up errors of bad options.
"""

from __future__ import annotations

import atexit
import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from twisted.trial.unittest import SynchronousTestCase

from ._http import SocketClient, http_request
from ._keys import KeyPair, hs256_by_hand, keys, openssl_es256, openssl_rs256, unsigned
from ._process import USAGE_EXITS_NONZERO, Twistd, run_twistd, start_healthy

pytestmark = pytest.mark.slow

SECRET = "process-test-secret-of-32-bytes-and-more"
PUBLISH = "process-publish-token"


#: Servers shared by the tests of a class, by their options: started by the
#: first test that asks, stopped when the tests' process exits.
_SERVERS: dict[tuple[str, ...], Twistd] = {}


def shared(*options: str, env: dict[str, str] | None = None) -> Twistd:
    """A running ``twistd sse`` with ``options`` and ``env``, shared."""
    key = (*options, *sorted((env or {}).items()))
    server = _SERVERS.get(key)  # type: ignore[arg-type]
    if server is None or server.process is None or server.process.poll() is not None:
        server = _SERVERS[key] = Twistd(*options, env=env).start()  # type: ignore[index]
        atexit.register(server.stop)
    return server


def token(**claims: Any) -> str:
    claims.setdefault("sub", "alice")
    return jwt.encode(claims, SECRET, algorithm="HS256")


def get(server: Twistd, path: str, *headers: str) -> SocketClient:
    return SocketClient(server.port, http_request(path, *headers))


def error_of(response: SocketClient) -> str:
    response.wait_for(lambda r: r.complete)
    reason: str = json.loads(response.body)["error"]
    return reason


class SecretServerTests(SynchronousTestCase):
    """A server with --jwt-secret (from the environment) and public channels."""

    server: Twistd

    def setUp(self) -> None:
        self.server = shared(
            "--public",
            "lobby",
            "--public",
            "news.*",
            "--allow-origin",
            "http://app.example",
            "--publish-token",
            PUBLISH,
            "--retry",
            "700",
            env={"TWISTED_SSE_JWT_SECRET": SECRET},
        )

    def open(self, path: str, *headers: str) -> SocketClient:
        response = get(self.server, path, *headers)
        self.addCleanup(response.close)
        return response

    def test_no_token(self) -> None:
        """No token on a private channel: 401 with the realm's challenge."""
        response = self.open("/channels/user.alice")
        self.assertEqual(response.code, 401)
        self.assertEqual(
            response.header("WWW-Authenticate"), 'Bearer realm="twisted_sse"'
        )
        self.assertIn("token", error_of(response))

    def test_public(self) -> None:
        """A public channel streams without a token."""
        response = self.open("/subscribe?channel=lobby&channel=news.eu")
        self.assertEqual(response.code, 200)
        self.assertIn(b"retry: 700", response.read_frame())

    def test_token_and_publish_by_claim(self) -> None:
        """A subscriber's token reads its channel; a publisher's claim publishes."""
        reader = token(sse={"subscribe": ["user.alice"]})
        response = self.open("/channels/user.alice", f"Authorization: Bearer {reader}")
        self.assertEqual(response.code, 200)
        response.read_frame()
        writer = token(sub="backend", sse={"publish": ["user.*"]})
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.server.port}/channels/user.alice",
            data=b'{"data": "for alice"}',
            headers={
                "Authorization": f"Bearer {writer}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            self.assertIn("id", json.load(answer))
        self.assertIn(b"data: for alice", response.read_frame())

    def test_publish_refused(self) -> None:
        """A subscribe-only token cannot publish (403); a forged one gets 401."""
        for bearer, status in [
            (token(sse={"subscribe": ["*"]}), 403),
            (jwt.encode({"sse": {"publish": ["*"]}}, "f" * 40, "HS256"), 401),
        ]:
            response = SocketClient(
                self.server.port,
                http_request(
                    "/channels/user.alice",
                    f"Authorization: Bearer {bearer}",
                    "Content-Type: application/json",
                    method="POST",
                    body=b'{"data": "x"}',
                ),
            )
            self.addCleanup(response.close)
            self.assertEqual(response.code, status)

    def test_cookie_and_cors(self) -> None:
        """The sse_token cookie works; a listed origin gets credentials."""
        cookie = token(sse={"subscribe": ["user.alice"]})
        response = self.open(
            "/subscribe?channel=user.alice",
            f"Cookie: theme=dark; sse_token={cookie}",
            "Origin: http://app.example",
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.header("Access-Control-Allow-Origin"), "http://app.example"
        )
        self.assertEqual(response.header("Access-Control-Allow-Credentials"), "true")

    def test_not_covered(self) -> None:
        """A list with a name the token does not cover: 403 naming it."""
        bearer = token(sse={"subscribe": ["user.alice"]})
        response = self.open(
            "/subscribe?channel=user.alice&channel=user.bob",
            f"Authorization: Bearer {bearer}",
        )
        self.assertEqual(response.code, 403)
        self.assertIn("user.bob", error_of(response))

    def test_expiry_ends_the_stream(self) -> None:
        """A stream opened with an expiring token ends at exp, with a retry."""
        expires = int(time.time()) + 2
        bearer = token(exp=expires, sse={"subscribe": ["user.alice"]})
        response = self.open("/channels/user.alice", f"Authorization: Bearer {bearer}")
        self.assertEqual(response.code, 200)
        response.wait_for(lambda r: r.complete, timeout=15)
        # Not before the token's expiry (the end itself may come a little later).
        self.assertGreaterEqual(time.time(), expires - 0.05)
        self.assertTrue(response.body.endswith(b"retry: 700\n\n"))
        again = self.open("/channels/user.alice", f"Authorization: Bearer {bearer}")
        self.assertEqual(again.code, 401)

    def test_oversized_tokens_answered(self) -> None:
        """A 16 KiB token in the header, a cookie or the query gets a 4xx answer."""
        big = "a." + "b" * 16 * 1024 + ".c"
        for headers, path in [
            ([f"Authorization: Bearer {big}"], "/channels/user.alice"),
            ([f"Cookie: sse_token={big}"], "/channels/user.alice"),
            ([], f"/channels/user.alice?access_token={big}"),
            ([f"Authorization: Bearer {big[:9000]}"], "/channels/user.alice"),
        ]:
            response = self.open(path, *headers)
            status = response.code
            assert status is not None
            self.assertTrue(400 <= status < 500, (status, path[:30], headers[:1]))

    def test_token_over_the_limit(self) -> None:
        """A token just over 8 KiB that Twisted reads gets our 401 and reason."""
        big = "a." + "b" * 8300 + ".c"
        response = self.open("/channels/user.alice", f"Authorization: Bearer {big}")
        self.assertEqual(response.code, 401)
        self.assertIn("8192", error_of(response))

    def test_logs_keep_no_token(self) -> None:
        """The server's output never holds a token, refused or granted."""
        granted = token(sse={"subscribe": ["user.alice"]})
        forged = jwt.encode({"sse": {"subscribe": ["*"]}}, "g" * 40, "HS256")
        for bearer in (granted, forged):
            self.open(f"/channels/user.alice?access_token={bearer}").close()
            self.open("/channels/user.alice", f"Authorization: Bearer {bearer}").close()
        output = self.server.log(wait=0.5)
        for bearer in (granted, forged):
            for part in bearer.split("."):
                self.assertNotIn(part.encode(), output)
        self.assertNotIn(b"Traceback", output)


class KeyFileServerTests(SynchronousTestCase):
    """A server with two --jwt-key files (RSA and EC) made by openssl."""

    server: Twistd
    rsa: KeyPair
    ec: KeyPair

    def setUp(self) -> None:
        made = keys()
        self.rsa = made.rsa
        self.ec = made.ec256
        self.server = shared(
            "--jwt-key",
            str(self.rsa.public_path),
            "--jwt-key",
            str(self.ec.public_path),
            "--jwt-audience",
            "hub",
        )

    def status(self, bearer: bytes | str) -> int | None:
        text = bearer.decode() if isinstance(bearer, bytes) else bearer
        response = get(self.server, "/channels/a", f"Authorization: Bearer {text}")
        self.addCleanup(response.close)
        return response.code

    def claims(self, **more: Any) -> dict[str, Any]:
        return {"aud": "hub", "sse": {"subscribe": ["a"]}, **more}

    def test_both_keys(self) -> None:
        """Tokens signed by openssl with either key are accepted (rotation)."""
        self.assertEqual(
            self.status(openssl_rs256(self.claims(), self.rsa.private_path)), 200
        )
        self.assertEqual(
            self.status(openssl_es256(self.claims(), self.ec.private_path)), 200
        )

    def test_pyjwt_tokens(self) -> None:
        """Tokens from PyJWT with the private keys are accepted too."""
        for pair, algorithm in [(self.rsa, "RS512"), (self.ec, "ES256")]:
            bearer = jwt.encode(self.claims(), pair.private_pem, algorithm=algorithm)
            self.assertEqual(self.status(bearer), 200, algorithm)

    def test_attacks(self) -> None:
        """alg none, key confusion, a wrong audience: each refused with 401."""
        self.assertEqual(self.status(unsigned(self.claims())), 401)
        confused = hs256_by_hand(self.claims(), self.rsa.public_pem)
        self.assertEqual(self.status(confused), 401)
        wrong = jwt.encode(self.claims(aud="other"), self.rsa.private_pem, "RS256")
        self.assertEqual(self.status(wrong), 401)
        missing = jwt.encode(
            {"sse": {"subscribe": ["a"]}}, self.rsa.private_pem, "RS256"
        )
        self.assertEqual(self.status(missing), 401)


class _Application(BaseHTTPRequestHandler):
    """An application's authorization hook: session "s1" may read room.*."""

    asked: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.asked.append({"body": body, "cookie": self.headers.get("Cookie")})
        if "session=s1" in (self.headers.get("Cookie") or ""):
            answer = json.dumps({"sub": "carol", "channels": ["room.*"]}).encode()
            self.send_response(200)
        else:
            answer = b'{"error": "log in first"}'
            self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class HookServerTests(SynchronousTestCase):
    """A server that asks the application (--auth-url)."""

    def setUp(self) -> None:
        _Application.asked = []
        self.application = ThreadingHTTPServer(("127.0.0.1", 0), _Application)
        thread = threading.Thread(target=self.application.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 5)
        self.addCleanup(self.application.server_close)
        self.addCleanup(self.application.shutdown)

    def test_session_cookie(self) -> None:
        """The application's session cookie decides; its reason is passed on."""
        port = self.application.server_address[1]
        server = start_healthy(self, "--auth-url", f"http://127.0.0.1:{port}/auth")
        allowed = get(server, "/subscribe?channel=room.1", "Cookie: session=s1")
        self.addCleanup(allowed.close)
        self.assertEqual(allowed.code, 200)
        refused = get(server, "/subscribe?channel=room.1", "Cookie: session=zz")
        self.addCleanup(refused.close)
        self.assertEqual(refused.code, 401)
        self.assertEqual(error_of(refused), "log in first")
        self.assertEqual(_Application.asked[0]["body"]["channels"], ["room.1"])

    def test_application_down(self) -> None:
        """An application that is down: 503 with Retry-After, never a stream."""
        port = self.application.server_address[1]
        self.application.shutdown()
        self.application.server_close()
        server = start_healthy(self, "--auth-url", f"http://127.0.0.1:{port}/auth")
        response = get(server, "/channels/room.1", "Cookie: session=s1")
        self.addCleanup(response.close)
        self.assertEqual(response.code, 503)
        self.assertIsNotNone(response.header("Retry-After"))


class OptionErrorTests(SynchronousTestCase):
    """Bad options: one clear line and a failing exit, never the secret."""

    def refused(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = run_twistd(*args, env=env)
        if USAGE_EXITS_NONZERO:
            self.assertNotEqual(result.returncode, 0)
        output = (result.stdout + result.stderr).decode(errors="replace")
        self.assertNotIn("Traceback", output)
        return output

    def test_short_secret(self) -> None:
        """A secret under 32 bytes is refused, without being repeated."""
        output = self.refused("--jwt-secret", "tooshort-secret-xyz")
        self.assertIn("32", output)
        self.assertNotIn("tooshort-secret-xyz", output)

    def test_private_key(self) -> None:
        """A private key given as --jwt-key is refused."""
        output = self.refused("--jwt-key", str(keys().rsa.private_path))
        self.assertIn("private", output)

    def test_missing_key_file(self) -> None:
        """A --jwt-key that cannot be read is named."""
        self.assertIn("nowhere.pem", self.refused("--jwt-key", "/nowhere.pem"))

    def test_public_without_guard(self) -> None:
        """--public without anything guarding the rest is refused."""
        self.assertIn("--public", self.refused("--public", "lobby"))

    def test_bad_public(self) -> None:
        """An invalid --public name is refused."""
        self.assertIn("--public", self.refused("--public", "bad name"))

    def test_bad_origin(self) -> None:
        """An origin with a path is refused."""
        self.assertIn(
            "--allow-origin", self.refused("--allow-origin", "https://a.example/x")
        )

    def test_bad_auth_url(self) -> None:
        """--auth-url must be http(s)."""
        self.assertIn("--auth-url", self.refused("--auth-url", "ftp://app/auth"))

    def test_audience_without_key(self) -> None:
        """--jwt-audience alone is refused."""
        self.assertIn("--jwt-audience", self.refused("--jwt-audience", "hub"))
