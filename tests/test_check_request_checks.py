"""
Tests for L{twisted_sse._check._request_checks}: the judgements of the
requests beside the stream (HEAD, CORS, publish), on made-up observations.
"""

from __future__ import annotations

from twisted_sse._check._observations import ExchangeObservation, PublishObservation
from twisted_sse._check._request_checks import (
    check_cors,
    check_cors_preflight,
    check_head,
    check_publish,
)

from ._check_fakes import JudgementTests, head, observed, stream


class BesideTests(JudgementTests):
    """HEAD, CORS and publishing."""

    def test_head(self) -> None:
        """HEAD: prompt and empty passes; hung, with a body or 5xx fails."""
        self.judged(check_head, observed(), "pass", "no body")
        hung = ExchangeObservation("HEAD", error="no answer in 3.0 s")
        self.judged(check_head, observed(head_request=hung), "fail", "as a GET")
        body = ExchangeObservation("HEAD", head(), 0.01, body_bytes=12)
        self.judged(check_head, observed(head_request=body), "fail", "12 bytes")
        slow = ExchangeObservation("HEAD", head(), 1.5)
        self.judged(check_head, observed(head_request=slow), "warn", "1.5 s")
        refused = ExchangeObservation("HEAD", head(405), 0.01)
        self.judged(check_head, observed(head_request=refused), "warn", "405")
        broken = ExchangeObservation("HEAD", head(502), 0.01)
        self.judged(check_head, observed(head_request=broken), "fail", "502")

    def test_cors_skipped(self) -> None:
        """Without --origin, CORS is not judged."""
        self.judged(check_cors, observed(), "skip", "--origin")
        self.judged(check_cors_preflight, observed(), "skip", "--origin")

    def test_cors(self) -> None:
        """The stream must allow the origin, or any."""
        origin = "https://app.example"
        for value, status in [("*", "pass"), (origin, "pass"), ("https://x", "fail")]:
            obs = observed(
                origin=origin,
                stream=stream(head=head(200, ("access-control-allow-origin", value))),
            )
            self.judged(check_cors, obs, status)
        self.judged(check_cors, observed(origin=origin), "fail", "no Access-Control")

    def test_preflight(self) -> None:
        """The preflight must answer 2xx allowing the origin; Last-Event-ID too."""
        origin = "https://app.example"
        allow = ("access-control-allow-origin", "*")
        good = head(204, allow, ("access-control-allow-headers", "Last-Event-ID, X"))
        cases = [
            (ExchangeObservation("OPTIONS", good), "pass"),
            (ExchangeObservation("OPTIONS", head(204, allow)), "warn"),
            (ExchangeObservation("OPTIONS", head(405)), "fail"),
            (ExchangeObservation("OPTIONS", head(204)), "fail"),
            (ExchangeObservation("OPTIONS", error="no answer in 3.0 s"), "fail"),
        ]
        for preflight, status in cases:
            obs = observed(origin=origin, preflight=preflight)
            self.judged(check_cors_preflight, obs, status)

    def test_publish(self) -> None:
        """Test events: refused or lost fail; arrived pass with their latency."""
        self.judged(check_publish, observed(), "skip", "--publish")
        ok = ExchangeObservation("POST", head())
        refused = ExchangeObservation("POST", head(401), body=b'{"error": "token"}')
        cases = [
            ((PublishObservation(1, 0.6, refused),), "fail", "answered 401"),
            ((PublishObservation(1, 0.6, ok),), "fail", "never arrived"),
            ((PublishObservation(1, 0.6, ok, 0.605),), "pass", "5 ms"),
            ((PublishObservation(1, 0.6, ok, 2.0),), "warn", "1.4 s"),
        ]
        for publishes, status, word in cases:
            obs = observed(publishing=True, publishes=publishes)
            check = self.judged(check_publish, obs, status, word)
            self.assertIsInstance(check.details.get("latencies", []), list)
