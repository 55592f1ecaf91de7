"""
Tests for L{twisted_sse._url}: the strict check of a URL, the parsed L{URL}
and its origin, the URL of a hub's C{/subscribe} for a list of channels, the
caller's extra headers, and the essence of a Content-Type.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit

from twisted.trial.unittest import SynchronousTestCase

import twisted_sse
from twisted_sse._url import (
    URL,
    check_headers,
    mime_essence,
    strict_url,
    subscribe_url,
)


class StrictURLTests(SynchronousTestCase):
    """L{strict_url} takes only URLs that can be connected to as they are."""

    def test_accepted(self) -> None:
        """Names, IP literals, IDNA, ports and queries are returned as given."""
        for url in [
            "http://example.com/events",
            "HTTPS://Example.COM:8443/a/b?c=d&e#f",
            "http://127.0.0.1:1/",
            "http://[::1]:65535/x",
            "http://bücher.example/",
            "http://my_service:8080/",
            "http://localhost.",
            "http://example.com/a path?q=a b",
        ]:
            self.assertEqual(strict_url(url), url)

    def test_refused_naming_the_problem(self) -> None:
        """Each unusable URL is a ValueError that names what is wrong with it."""
        for url, problem in [
            ("http://exa mple/", "a space or control character"),
            ("http://a\tb/", "a space or control character"),
            ("http://[::1/", "an unclosed '['"),
            ("http://[zz]/", "'zz' is not an IPv6 address"),
            ("http://[::1]x/", "'x' after the IPv6 address"),
            ("http://example.com:99999/", "not between 1 and 65535"),
            ("http://example.com:0/", "not between 1 and 65535"),
            ("http://example.com:8o/", "the port '8o' is not a number"),
            ("ftp://example.com/", "is not http or https"),
            ("example.com/events", "not an absolute URL"),
            ("http://user:pw@example.com/", "credentials"),
            ("http:///events", "no host"),
            ("http://exa_mple!.com/", "not a valid host name"),
            ("http://" + "a" * 64 + ".com/", "a label longer than 63 characters"),
            ("http://256.1.1.1/", "not a valid IPv4 address"),
            ("http://1.2.3/", "not a valid IPv4 address"),
        ]:
            with self.assertRaises(ValueError, msg=url) as caught:
                strict_url(url)
            self.assertIn(problem, str(caught.exception), url)


class URLTests(SynchronousTestCase):
    """L{URL.parse}, and the origin and text of a parsed URL."""

    def test_defaults(self) -> None:
        """Scheme and host are lower-cased; the port and path have defaults."""
        self.assertEqual(
            URL.parse("HTTP://Example.COM"), URL("http", "example.com", 80, "/")
        )
        self.assertEqual(URL.parse("https://example.com").port, 443)

    def test_encoded_for_the_wire(self) -> None:
        """A non-ASCII host is IDNA-encoded; path and query are percent-encoded."""
        url = URL.parse("http://bücher.example/é?q=ü v")
        self.assertEqual(url.host, "xn--bcher-kva.example")
        self.assertEqual(url.target, "/%C3%A9?q=%C3%BC%20v")

    def test_ipv6(self) -> None:
        """An IPv6 literal keeps its brackets, and its port."""
        url = URL.parse("https://[::1]:8443/s")
        self.assertEqual((url.host, url.port), ("[::1]", 8443))
        self.assertEqual(url.text, "https://[::1]:8443/s")

    def test_fragment_dropped(self) -> None:
        """The fragment is not part of what is sent."""
        self.assertEqual(URL.parse("http://h/p?q=1#frag").target, "/p?q=1")

    def test_relative_to_base(self) -> None:
        """A relative reference is resolved against the base, as a Location is."""
        base = URL.parse("http://example.com/a/b")
        self.assertEqual(URL.parse("c?d=1", base).text, "http://example.com/a/c?d=1")
        self.assertEqual(
            URL.parse("//other.example/x", base).text, "http://other.example/x"
        )
        self.assertEqual(URL.parse("https://x/", base).text, "https://x/")

    def test_refused(self) -> None:
        """Another scheme, no host, credentials or a bad port is a ValueError."""
        for text, problem in [
            ("ftp://h/", "not an http or https URL"),
            ("http:///x", "no host"),
            ("http://u:p@h/", "credentials"),
            ("http://h:99999/", "bad URL"),
        ]:
            with self.assertRaises(ValueError, msg=text) as caught:
                URL.parse(text)
            self.assertIn(problem, str(caught.exception))

    def test_origin(self) -> None:
        """The origin names the port only when it is not the scheme's default."""
        for text, origin in [
            ("http://example.com:80/x", "http://example.com"),
            ("https://example.com:443/x", "https://example.com"),
            ("http://example.com:443/x", "http://example.com:443"),
            ("https://Example.com:8443/x", "https://example.com:8443"),
            ("http://[::1]:8080/", "http://[::1]:8080"),
        ]:
            self.assertEqual(URL.parse(text).origin, origin)

    def test_text(self) -> None:
        """The text is the origin and the target."""
        self.assertEqual(
            URL.parse("http://example.com:80/a?b").text, "http://example.com/a?b"
        )


class SubscribeURLTests(SynchronousTestCase):
    """L{subscribe_url} names the channels of a hub's C{/subscribe}."""

    def test_public(self) -> None:
        """It is part of the package's API."""
        self.assertIs(twisted_sse.subscribe_url, subscribe_url)
        self.assertIn("subscribe_url", twisted_sse.__all__)

    def test_one_parameter_per_name(self) -> None:
        """Each name is one C{channel} parameter, in the order given."""
        self.assertEqual(
            subscribe_url("https://hub.example/subscribe", ["a", "b", "news.*"]),
            "https://hub.example/subscribe?channel=a&channel=b&channel=news.*",
        )

    def test_path_defaulted(self) -> None:
        """An empty path or C{/} becomes C{/subscribe}; any other is kept."""
        for base, url in [
            ("http://hub.example", "http://hub.example/subscribe?channel=a"),
            ("http://hub.example/", "http://hub.example/subscribe?channel=a"),
            ("http://hub.example:8080", "http://hub.example:8080/subscribe?channel=a"),
            ("http://[::1]:8080/", "http://[::1]:8080/subscribe?channel=a"),
            ("http://h/sse/subscribe", "http://h/sse/subscribe?channel=a"),
            ("http://h/events/", "http://h/events/?channel=a"),
        ]:
            self.assertEqual(subscribe_url(base, ["a"]), url)

    def test_own_query_kept(self) -> None:
        """The URL's own parameters come first, as they were; a fragment stays."""
        for base, url in [
            ("http://h/?token=x%20y", "http://h/subscribe?token=x%20y&channel=a"),
            ("http://h/s?a=1&b=2", "http://h/s?a=1&b=2&channel=a"),
            ("http://h/s?a=1&", "http://h/s?a=1&channel=a"),
            ("http://h/s?", "http://h/s?channel=a"),
            ("http://h?envelope=1#top", "http://h/subscribe?envelope=1&channel=a#top"),
        ]:
            self.assertEqual(subscribe_url(base, ["a"]), url)

    def test_percent_encoded(self) -> None:
        """
        C{:} and C{@} are percent-encoded as a form would; C{.}, C{-}, C{_}
        and the C{*} of a pattern stay readable; a server decoding the query
        finds every name as given.
        """
        names = ["a:b@c", "x-y_z.w", "orders@eu.*", "A" * 128, "B" * 128 + ".*"]
        url = subscribe_url("http://h/", names)
        self.assertTrue(
            url.startswith(
                "http://h/subscribe?channel=a%3Ab%40c&channel=x-y_z.w"
                "&channel=orders%40eu.*&"
            ),
            url,
        )
        self.assertEqual(
            parse_qsl(urlsplit(url).query), [("channel", name) for name in names]
        )
        self.assertEqual(strict_url(url), url)

    def test_duplicates_once(self) -> None:
        """A name given twice is asked for once, where it first came."""
        self.assertEqual(
            subscribe_url("http://h/", ["b", "a", "b", "a"]),
            "http://h/subscribe?channel=b&channel=a",
        )

    def test_any_iterable(self) -> None:
        """A tuple or a generator does as well as a list."""
        expected = "http://h/subscribe?channel=a&channel=b"
        self.assertEqual(subscribe_url("http://h/", ("a", "b")), expected)
        self.assertEqual(subscribe_url("http://h/", (n for n in "ab")), expected)

    def test_bad_names_refused(self) -> None:
        """Each invalid name or pattern is a ValueError naming it."""
        for name, words in [
            ("*", "invalid channel pattern '*'"),
            (".*", "invalid channel pattern '.*'"),
            ("news.**", "invalid channel name 'news.**'"),
            ("news*", "invalid channel name 'news*'"),
            ("*.news", "invalid channel name '*.news'"),
            ("-news.*", "invalid channel pattern '-news.*'"),
            ("a b", "invalid channel name 'a b'"),
            ("", "invalid channel name ''"),
            ("-a", "invalid channel name '-a'"),
            ("é", "invalid channel name 'é'"),
            ("a&channel=b", "invalid channel name 'a&channel=b'"),
            ("a" * 129, "invalid channel name 'aaaa"),
            ("a" * 129 + ".*", "invalid channel pattern 'aaaa"),
        ]:
            with self.assertRaises(ValueError, msg=name) as caught:
                subscribe_url("http://h/", ["ok", name])
            self.assertIn(words, str(caught.exception))

    def test_not_a_string(self) -> None:
        """A name that is not a string is refused, naming it."""
        with self.assertRaises(ValueError) as caught:
            subscribe_url("http://h/", ["a", 3])  # type: ignore[list-item]
        self.assertIn("a channel name must be a string, not 3", str(caught.exception))

    def test_empty_refused(self) -> None:
        """No channel at all is refused, naming C{channels}."""
        empties: list[Iterable[str]] = [[], (), iter([])]
        for channels in empties:
            with self.assertRaises(ValueError) as caught:
                subscribe_url("http://h/", channels)
            self.assertIn("channels is empty", str(caught.exception))

    def test_one_string_refused(self) -> None:
        """One string is not taken for the list of its letters."""
        with self.assertRaises(ValueError) as caught:
            subscribe_url("http://h/", "news")
        self.assertIn(
            "channels must be a list of channel names, not the string 'news'",
            str(caught.exception),
        )

    def test_bad_url_refused(self) -> None:
        """The base URL is checked as L{strict_url} checks it."""
        for base, problem in [
            ("ftp://h/", "not http or https"),
            ("h/subscribe", "not an absolute URL"),
            ("http://exa mple/", "a space or control character"),
        ]:
            with self.assertRaises(ValueError, msg=base) as caught:
                subscribe_url(base, ["a"])
            self.assertIn(problem, str(caught.exception))


class CheckHeadersTests(SynchronousTestCase):
    """L{check_headers} takes the caller's extra headers, or refuses them."""

    def test_mapping_or_pairs(self) -> None:
        """A mapping or pairs give pairs, in order, repeated names kept."""
        self.assertEqual(check_headers({"A": "1", "B": ""}), (("A", "1"), ("B", "")))
        pairs = [("X-A", "1"), ("X-A", "2")]
        self.assertEqual(check_headers(pairs), tuple(pairs))

    def test_bad_name(self) -> None:
        """A name that is not an HTTP token is refused, named in the error."""
        for name in ["", "Bad Name", "A:b", "é"]:
            with self.assertRaises(ValueError) as caught:
                check_headers({name: "x"})
            self.assertIn(f"bad header name: {name!r}", str(caught.exception))

    def test_bad_value(self) -> None:
        """A value with CR, LF or NUL, which could inject headers, is refused."""
        for value in ["a\r\nInjected: 1", "a\nb", "a\rb", "a\0b"]:
            with self.assertRaises(ValueError) as caught:
                check_headers([("X", value)])
            self.assertIn("header X has a CR, LF or NUL", str(caught.exception))


class MimeEssenceTests(SynchronousTestCase):
    """L{mime_essence} finds the type a Content-Type names, as Fetch does."""

    def test_parameters_case_whitespace(self) -> None:
        """Parameters are dropped, case folded and surrounding whitespace ignored."""
        for value in [
            b"text/event-stream",
            b"TEXT/Event-Stream; charset=UTF-8",
            b" text/event-stream ;charset=utf-8",
        ]:
            self.assertEqual(mime_essence([value]), "text/event-stream", value)

    def test_last_valid_wins(self) -> None:
        """Of several types, in one value or several, the last valid one wins."""
        self.assertEqual(
            mime_essence([b"text/html, text/event-stream"]), "text/event-stream"
        )
        self.assertEqual(
            mime_essence([b"text/event-stream", b"text/html"]), "text/html"
        )
        self.assertEqual(
            mime_essence([b"text/event-stream, nonsense"]), "text/event-stream"
        )

    def test_quoted_comma(self) -> None:
        """A comma inside a quoted parameter does not start another type."""
        self.assertEqual(
            mime_essence([b'text/event-stream; x="a,text/html"']), "text/event-stream"
        )

    def test_none(self) -> None:
        """No value, or none that is a valid type (*/* included), gives None."""
        for values in [[], [b""], [b"text"], [b"*/*"], [b"text/event-stream/x"]]:
            self.assertIsNone(mime_essence(values), values)
