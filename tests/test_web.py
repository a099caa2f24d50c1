"""
The HTTP layer against the real site and protocol: body limits, malformed
requests, the access log.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher

from ccserver.config import Config
from tests.helpers import MASTER_TOKEN, ServerTestCase, basic


class SiteTests(ServerTestCase):
    def raw(self, data: bytes) -> bytes:
        """
        Feed raw bytes to the real HTTP protocol of the site and return
        what it wrote back.
        """
        if not self.site.numPorts:
            self.site.doStart()
            self.addCleanup(self.site.doStop)
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 12345))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 12345))
        protocol.makeConnection(transport)
        protocol.dataReceived(data)
        return transport.value()

    def post_token(self, body: bytes, content_type: bytes = b"application/x-www-form-urlencoded", extra: bytes = b"") -> bytes:
        return self.raw(
            b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: " + content_type + b"\r\n"
            + extra
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )

    def test_oversized_body_is_413(self) -> None:
        answer = self.post_token(b"grant_type=client_credentials&x=" + b"a" * 70_000)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:200])
        self.assertIn(b'"error":"invalid_request"', answer)

    def test_oversized_chunked_body_is_413(self) -> None:
        chunk = b"a" * 40_000
        body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
        answer = self.raw(
            b"POST /client-reg HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + MASTER_TOKEN.encode() + b"\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + body
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:200])

    def test_malformed_multipart_is_an_oauth_error(self) -> None:
        """
        twisted.web drops the connection on a malformed multipart body when
        it parses forms itself; ccserver answers with an OAuth error.
        """
        answer = self.post_token(b"--x\r\nnonsense", content_type=b"multipart/form-data; boundary=x")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer[:200])
        self.assertIn(b'"error":"invalid_request"', answer)

    def test_access_log_has_no_query_or_secret(self) -> None:
        client = self.register(scope="read")
        events: list[dict] = []  # type: ignore[type-arg]
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.post_token(
            b"grant_type=client_credentials",
            extra=f"Authorization: {basic(client['client_id'], client['client_secret'])}\r\n".encode(),
        )
        self.raw(b"GET /jwks.json?client_secret=" + client["client_secret"].encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        logged = b"".join(self.access_lines()).decode() + repr(events)
        self.assertIn('"GET /jwks.json HTTP/1.1" 200 ', logged)
        self.assertNotIn(client["client_secret"], logged)
        self.assertNotIn("client_secret=", logged)


class OddURLTests(ServerTestCase):
    """
    A URL no route can match is the client's mistake: a JSON 400 or 404,
    and nothing above the info level in the log (critical is for our own
    bugs; Klein logs a critical traceback for a URL that is not UTF-8).
    """

    raw = SiteTests.raw

    def setUp(self) -> None:
        super().setUp()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def get(self, path: bytes, host: bytes = b"x") -> tuple[int, dict[str, Any], bytes]:
        answer = self.raw(
            b"GET " + path + b" HTTP/1.0\r\nHost: " + host + b"\r\n"
            b"Authorization: Bearer " + MASTER_TOKEN.encode() + b"\r\n\r\n"
        )
        head, _, body = answer.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        self.assertIn(b"\r\nContent-Type: application/json", head, answer)
        return status, json.loads(body), answer

    def assert_logged_nothing_above_info(self) -> None:
        loud = [e for e in self.events if e.get("log_level", LogLevel.info) > LogLevel.info]
        self.assertEqual(loud, [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_path_not_utf8(self) -> None:
        for path in (
            b"/%FF",
            b"/%ff/anything",
            b"/client-reg/%FF",
            b"/token/%FF",
            b"/token/introspect/%C3",
            # the UTF-8 form of a surrogate, which strict UTF-8 refuses
            b"/client-reg/%ED%A0%80",
        ):
            status, body, answer = self.get(path)
            self.assertEqual(status, 400, answer)
            self.assertEqual(body["error"], "invalid_request")
            self.assertIn("the URL path is not UTF-8", body["error_description"])
        self.assert_logged_nothing_above_info()

    def test_host_not_utf8(self) -> None:
        """
        Refused by the channel (RFC 9112 §3.2: not a host), before Klein
        could fail to decode it.
        """
        for host in (b"\xff", b"\xc3\xa9.example"):
            status, body, answer = self.get(b"/jwks.json", host=host)
            self.assertEqual(status, 400, answer)
            self.assertIn("the Host header is not a host", body["error_description"])
        self.assert_logged_nothing_above_info()

    def test_other_odd_paths(self) -> None:
        for path in (b"/%00", b"//", b"///token", b"/client-reg/%00", b"/client-reg//x",
                     b"/" + b"x/" * 4000, b"/token/", b"/%2F%2E%2E"):
            status, body, answer = self.get(path)
            self.assertIn(status, (400, 401, 404, 405), answer)
            self.assertIsInstance(body["error_description"], str)
        self.assert_logged_nothing_above_info()


class NoAccessLogTests(ServerTestCase):
    raw = SiteTests.raw

    def make_config(self, **tokens: object) -> Config:
        return attrs.evolve(super().make_config(**tokens), access_log=False)  # type: ignore[arg-type]

    def test_access_log_off(self) -> None:
        events: list[dict] = []  # type: ignore[type-arg]
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        answer = self.raw(b"GET /jwks.json HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "))
        self.assertNotIn("/jwks.json", repr(events))
        self.assertEqual(self.access_lines(), [])
