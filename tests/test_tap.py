"""
Tests for L{twisted_sse._tap}: the options of C{twistd sse} (its site is
L{tests.test_site}'s).

The app it serves is L{tests.test_app}'s; C{twistd -n sse} as a real
process is in test_twistd.py.
"""

from __future__ import annotations

import os
import re

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from twisted_sse._redis._address import RedisAddress
from twisted_sse._stream import SlowClientPolicy
from twisted_sse._tap import Options

# twistd options


class TwistdOptionsTests(SynchronousTestCase):
    """twistd sse has an option for each hub setting."""

    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_help_folded(self) -> None:
        """--help shows every description as text, without runs of spaces."""
        text = Options().getUsage(width=80)
        self.assertIn("--jwt-key=", text)
        for line in text.splitlines():
            description = line[33:]
            self.assertIsNone(re.search(r"\S {2,}\S", description), line)

    def test_defaults(self) -> None:
        """Publishing is off, history is 1000, drain 5 s, no limits."""
        self.patch(os, "environ", {})
        options = self.parse()
        self.assertIsNone(options["publish-token"])
        self.assertEqual(options["history"], 1000)
        self.assertEqual(options["drain"], 5.0)
        self.assertEqual(options["max-connections"], 0)
        self.assertEqual(options["max-connections-per-ip"], 0)
        self.assertEqual(options["slow-client"], SlowClientPolicy.DISCONNECT)
        self.assertIsNone(options["subscribe-token"])
        self.assertEqual(options["busy-retry"], 5000)

    def test_all(self) -> None:
        """Every hub option is parsed into its value."""
        options = self.parse(
            "--publish-token",
            "T",
            "--history",
            "5",
            "--history-bytes",
            "1000",
            "--max-event-bytes",
            "2048",
            "--queue-events",
            "7",
            "--queue-bytes",
            "9000",
            "--slow-client",
            "drop-oldest",
            "--slow-client",
            "ticker=latest",
            "--max-connections",
            "100",
            "--max-connections-per-ip",
            "4",
            "--drain",
            "1.5",
        )
        self.assertEqual(options["publish-token"], "T")
        self.assertEqual(options["history"], 5)
        self.assertEqual(options["history-bytes"], 1000)
        self.assertEqual(options["max-event-bytes"], 2048)
        self.assertEqual(options["queue-events"], 7)
        self.assertEqual(options["queue-bytes"], 9000)
        self.assertEqual(options["slow-client"], SlowClientPolicy.DROP_OLDEST)
        self.assertEqual(
            options["channel-policies"], {"ticker": SlowClientPolicy.LATEST}
        )
        self.assertEqual(options["max-connections"], 100)
        self.assertEqual(options["max-connections-per-ip"], 4)
        self.assertEqual(options["drain"], 1.5)

    def test_bad_policy(self) -> None:
        """An unknown policy or channel is a usage error."""
        self.assertRaises(usage.UsageError, self.parse, "--slow-client", "ignore")
        self.assertRaises(usage.UsageError, self.parse, "--slow-client", "a b=latest")

    def test_bad_numbers(self) -> None:
        """Negative or non-numeric limits are usage errors."""
        for args in (
            ("--history", "-1"),
            ("--max-connections", "x"),
            ("--max-event-bytes", "0"),
            ("--drain", "-2"),
        ):
            self.assertRaises(usage.UsageError, self.parse, *args)


class TwistdSubscribeOptionsTests(SynchronousTestCase):
    """--subscribe-token and --busy-retry."""

    def test_subscribe_token(self) -> None:
        """--subscribe-token and --busy-retry are parsed into their values."""
        self.patch(os, "environ", {})
        options = Options()
        options.parseOptions(["--subscribe-token", "R", "--busy-retry", "250"])
        self.assertEqual(options["subscribe-token"], "R")
        self.assertEqual(options["busy-retry"], 250)

    def test_subscribe_token_from_environment(self) -> None:
        """TWISTED_SSE_SUBSCRIBE_TOKEN is the default subscribe token."""
        self.patch(os, "environ", {"TWISTED_SSE_SUBSCRIBE_TOKEN": "E"})
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["subscribe-token"], "E")

    def test_busy_retry_refused(self) -> None:
        """A negative --busy-retry is a usage error naming the option."""
        with self.assertRaises(usage.UsageError) as raised:
            Options().parseOptions(["--busy-retry", "-1"])
        self.assertIn("busy-retry", str(raised.exception))


class TwistdBrokerOptionsTests(SynchronousTestCase):
    """--broker: the memory broker, or Redis at a URL."""

    def test_option_broker(self) -> None:
        """--broker takes a Redis URL; memory stays the default."""
        self.patch(os, "environ", {})
        options = Options()
        options.parseOptions(["--broker", "redis://:pw@10.0.0.5:6380/2"])
        self.assertEqual(
            options["redis"], RedisAddress("10.0.0.5", 6380, 2, password="pw")
        )
        default = Options()
        default.parseOptions([])
        self.assertIsNone(default["redis"])
        memory = Options()
        memory.parseOptions(["--broker", "memory"])
        self.assertIsNone(memory["redis"])

    def test_option_broker_environment(self) -> None:
        """TWISTED_SSE_BROKER keeps the URL (and its password) off the command line."""
        self.patch(os, "environ", {"TWISTED_SSE_BROKER": "redis://:pw@h/4"})
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["redis"], RedisAddress("h", 6379, 4, password="pw"))

    def test_option_broker_refused(self) -> None:
        """A bad --broker is a usage error that does not repeat the password."""
        options = Options()
        with self.assertRaises(usage.UsageError) as raised:
            options.parseOptions(["--broker", "amqp://user:topsecret@h/"])
        self.assertNotIn("topsecret", str(raised.exception))
        self.assertIn("redis://", str(raised.exception))
