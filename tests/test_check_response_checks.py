"""
Tests for L{twisted_sse._check._response_checks}: the judgements of the
stream's response head, on made-up observations.
"""

from __future__ import annotations

from twisted_sse._check._response_checks import (
    check_cache_control,
    check_content_encoding,
    check_content_length,
    check_content_type,
    check_framing,
    check_status,
)

from ._check_fakes import SSE, URL, JudgementTests, head, observed, stream


class StatusTests(JudgementTests):
    """check_status: the request must answer 200."""

    def test_200(self) -> None:
        """200 passes."""
        self.judged(check_status, observed(), "pass", "200")

    def test_redirects_named(self) -> None:
        """Redirects followed are counted, with the final URL."""
        obs = observed(
            stream=stream(redirects=((301, "/a"), (302, "/b")), final_url=URL + "/b")
        )
        self.judged(check_status, obs, "pass", "after 2 redirects", URL + "/b")

    def test_204(self) -> None:
        """204 fails: clients stop for good."""
        obs = observed(stream=stream(head=head(204)))
        self.judged(check_status, obs, "fail", "204", "never reconnect")

    def test_404(self) -> None:
        """Any other status fails, named."""
        obs = observed(stream=stream(head=head(404, reason="Not Found")))
        self.judged(check_status, obs, "fail", "HTTP 404 Not Found")

    def test_no_response(self) -> None:
        """No head in the watch fails, naming a buffering proxy as a cause."""
        obs = observed(
            stream=stream(head=None, error="no response in 3.0 s"), head_request=None
        )
        self.judged(check_status, obs, "fail", "no response in 3.0 s", "buffering")

    def test_no_response_but_head(self) -> None:
        """No head for the GET while HEAD was answered: buffering, plainly."""
        obs = observed(stream=stream(head=None, error="no response in 3.0 s"))
        self.judged(
            check_status, obs, "fail", "HEAD was answered in 10 ms", "buffering proxy"
        )

    def test_error(self) -> None:
        """A connection error is the reason."""
        obs = observed(stream=stream(head=None, error="more than 20 redirects"))
        self.judged(check_status, obs, "fail", "more than 20 redirects")


class HeaderTests(JudgementTests):
    """The stream's headers: type, caching, length, encoding, framing."""

    def test_content_type(self) -> None:
        """text/event-stream passes, in any case, with or without UTF-8."""
        for value in ["text/event-stream", "Text/Event-Stream; charset=UTF-8"]:
            obs = observed(stream=stream(head=head(headers=[("content-type", value)])))
            self.judged(check_content_type, obs, "pass")

    def test_wrong_content_type(self) -> None:
        """Another type fails, named."""
        obs = observed(
            stream=stream(head=head(headers=[("content-type", "text/plain")]))
        )
        self.judged(check_content_type, obs, "fail", "text/plain", "EventSource fails")

    def test_missing_content_type(self) -> None:
        """No Content-Type fails."""
        obs = observed(stream=stream(head=head(headers=[])))
        self.judged(check_content_type, obs, "fail", "missing")

    def test_other_charset(self) -> None:
        """Another charset warns: the stream is UTF-8 whatever it says."""
        value = "text/event-stream; charset=iso-8859-1"
        obs = observed(stream=stream(head=head(headers=[("content-type", value)])))
        self.judged(check_content_type, obs, "warn", "UTF-8")

    def test_cache_control(self) -> None:
        """no-cache or no-store pass; none warns; max-age or public fails."""
        cases = {
            "no-cache": "pass",
            "no-store, no-transform": "pass",
            "private": "warn",
            "max-age=60": "fail",
            "public": "fail",
        }
        for value, status in cases.items():
            headers = [("content-type", "text/event-stream"), ("cache-control", value)]
            obs = observed(stream=stream(head=head(headers=headers)))
            self.judged(check_cache_control, obs, status)
        obs = observed(stream=stream(head=head(headers=SSE[:1])))
        self.judged(check_cache_control, obs, "warn", "no Cache-Control")

    def test_content_length(self) -> None:
        """A Content-Length fails, naming the length; none passes."""
        self.judged(check_content_length, observed(), "pass")
        obs = observed(stream=stream(head=head(200, ("content-length", "40"))))
        self.judged(check_content_length, obs, "fail", "Content-Length: 40")

    def test_content_encoding(self) -> None:
        """gzip or br fails, named; identity passes."""
        self.judged(check_content_encoding, observed(), "pass")
        for coding in ["gzip", "br"]:
            obs = observed(stream=stream(head=head(200, ("content-encoding", coding))))
            self.judged(check_content_encoding, obs, "fail", coding, "compress")
        obs = observed(stream=stream(head=head(200, ("content-encoding", "identity"))))
        self.judged(check_content_encoding, obs, "pass")

    def test_framing(self) -> None:
        """Chunked and HTTP/2 pass; a length fails; the close warns."""
        cases = {"chunked": "pass", "h2": "pass", "length": "fail", "close": "warn"}
        for framing, status in cases.items():
            obs = observed(stream=stream(head=head(framing=framing)))
            self.judged(check_framing, obs, status)

    def test_skipped_without_a_stream(self) -> None:
        """Without a stream, the header checks are skipped."""
        obs = observed(stream=stream(head=head(404)))
        for check in [check_content_type, check_content_length, check_framing]:
            self.judged(check, obs, "skip")
