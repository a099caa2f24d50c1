"""
Text someone else chose never reaches an operator's terminal raw: the one
escaping (L{ccserver.text.escape}), and the log lines that carry a client's
name, a client's C{jwks_uri}, a request's path and C{User-Agent}, formatted
as twist's text log format writes them.  The C{ccserver} command's output:
tests/test_clients_command.py.
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import ensureDeferred
from twisted.internet.testing import StringTransport
from twisted.logger import formatEventAsClassicLogText, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.pages import notFound

from ccserver.assembly import make_jwks_fetcher
from ccserver.keysets import KeySetUnavailable
from ccserver.text import escape
from tests.helpers import ServerTestCase

#: What a hostile name holds: ESC sequences (clear the screen, a colour),
#: a carriage return (overwrite the line), BEL, the C1 CSI (U+009B, which
#: some terminals take for ESC [), bidi controls (U+202E, U+2066, U+200E,
#: U+061C), a line separator, a zero-width space.
HOSTILE = "Billing\x1b[2J\x1b[31m\rOK\x07\x9b2J\u202egnillib\u2066x\u2069\u200e\u061c\u2028\u200b"

#: Every character a terminal or a log reader may act on or hide.
UNPRINTABLE = {chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]} | set(
    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c\u2028\u2029\u200b"
)


def raw_characters(text: str) -> set[str]:
    return {c for c in text if c in UNPRINTABLE or 0xD800 <= ord(c) <= 0xDFFF}


class EscapeTests(SynchronousTestCase):
    def test_controls_and_bidi_escaped(self) -> None:
        escaped = escape(HOSTILE)
        self.assertEqual(raw_characters(escaped), set())
        for shown in ("\\u001b[2J", "\\u000d", "\\u0007", "\\u009b", "\\u202e", "\\u2066",
                      "\\u200e", "\\u061c", "\\u2028", "\\u200b"):
            self.assertIn(shown, escaped)

    def test_printable_text_unchanged(self) -> None:
        for text in ("billing", "Zoë's app", "請求", "café \\ back", "", "a b", "😀"):
            self.assertEqual(escape(text), text)

    def test_lone_surrogate_and_astral_format_character(self) -> None:
        self.assertEqual(escape("a\ud800b"), "a\\ud800b")
        # U+E0001 LANGUAGE TAG, as JSON spells it: a surrogate pair
        self.assertEqual(escape("\U000e0001"), "\\udb40\\udc01")

    def test_escaped_json_line_is_the_same_json(self) -> None:
        line = json.dumps({"client_name": HOSTILE, "x": "\ud800"}, ensure_ascii=False)
        self.assertEqual(json.loads(escape(line)), {"client_name": HOSTILE, "x": "\ud800"})


class LogLineTests(ServerTestCase):
    """
    The log lines that carry what a client or a request chose.
    """

    def setUp(self) -> None:
        super().setUp()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def text(self) -> str:
        """
        The events logged so far, as C{twist --log-format=text} writes them.
        """
        return "".join(formatEventAsClassicLogText(event) or "" for event in self.events)

    def assertEscaped(self, text: str, *shown: str) -> None:
        self.assertEqual(raw_characters(text.replace("\n", "")), set(), text)
        self.assertEqual(text.count("\n"), len(self.events), text)
        for each in shown:
            self.assertIn(each, text)

    def test_registered_client_name(self) -> None:
        self.register(client_name=HOSTILE, scope="read")
        self.assertEscaped(self.text(), "Billing\\u001b[2J\\u001b[31m\\u000dOK", "\\u202egnillib")

    def test_access_log(self) -> None:
        self.site.doStart()
        self.addCleanup(self.site.doStop)
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 12345))
        protocol.makeConnection(StringTransport())
        # twisted.web refuses control characters in the request line, not
        # in a header's value
        protocol.dataReceived(
            b"GET /jwks.json HTTP/1.1\r\nHost: x\r\n"
            b"User-Agent: agent\x1b[31m\x07 " + "\u202e".encode() + b"\r\n\r\n"
        )
        (line,) = self.access_lines()
        text = line.decode("ascii")
        self.assertEqual(raw_characters(text.rstrip("\n")), set(), text)
        self.assertIn("agent\\u001b[31m\\u0007", text)

    def test_jwks_uri_that_cannot_be_fetched(self) -> None:
        fetcher = make_jwks_fetcher(self.clock, self.config, StubTreq(notFound()))
        uri = "https://client.example/\x1b[2J\u202ekeys.json"
        fetched = ensureDeferred(fetcher.key_set(uri))
        # every failure is answered when the timeout would have been
        self.clock.advance(self.config.client_auth.jwks_uri_timeout)
        self.failureResultOf(fetched, KeySetUnavailable)
        self.assertEscaped(self.text(), "https://client.example/\\u001b[2J\\u202ekeys.json")
