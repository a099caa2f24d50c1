"""
The /token hot path's answers, as bytes on the wire: what the performance
work (issue 14) changed must not change what a client sees.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from ccserver import tokenjson
from ccserver.model import IssuedToken
from ccserver.tokenjson import RenderedAnswers, token_answer_json
from tests.helpers import ServerTestCase, basic


class CountingTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 50000),
        )
        self.writes = 0
        self.host_asked = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)

    def writeSequence(self, data: list[bytes]) -> None:  # type: ignore[override]
        self.writes += 1
        super().writeSequence(data)

    def getHost(self) -> IPv4Address:
        self.host_asked += 1
        return super().getHost()  # type: ignore[no-any-return]


class OnTheWire(ServerTestCase):
    """
    A registered client's token request, as bytes, and a channel to send
    it on.
    """

    signing_alg = "ES256"

    def setUp(self) -> None:
        super().setUp()
        client = self.register(scope="read")
        form = b"grant_type=client_credentials&scope=read"
        self.raw = (
            b"POST /token HTTP/1.1\r\nHost: localhost\r\nAuthorization: "
            + basic(client["client_id"], client["client_secret"]).encode()
            + b"\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(form)
            + form
        )
        self.transport = CountingTransport()
        self.channel = self.site.buildProtocol(self.transport.getPeer())
        self.channel.makeConnection(self.transport)

    def tearDown(self) -> None:
        self.channel.connectionLost(None)


class TokenOnTheWireTests(OnTheWire):
    def test_content_length_not_chunked(self) -> None:
        """
        The answer has a Content-Length and is not chunked: no last chunk
        written at finish; the head and the body go in one transport write
        (BoundedRequest.write_whole).
        """
        self.channel.dataReceived(self.raw)
        answer = self.transport.value()
        head, body = answer.split(b"\r\n\r\n", 1)
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK"), head)
        self.assertIn(b"\r\nContent-Length: %d" % len(body), head)
        self.assertNotIn(b"chunked", head.lower())
        self.assertTrue(body.startswith(b'{"access_token":"ey') and body.endswith(b"}"), body)
        self.assertEqual(self.transport.writes, 1)

    def test_local_address_asked_once(self) -> None:
        """
        Keep-alive requests on one connection ask the socket for its local
        address once (a getsockname() system call each time otherwise).
        """
        for _ in range(3):
            self.channel.dataReceived(self.raw)
        self.assertEqual(self.transport.value().count(b"HTTP/1.1 200 OK"), 3)
        self.assertEqual(self.transport.host_asked, 1)


class TokenAnswerJSONTests(SynchronousTestCase):
    def test_same_bytes_as_json_dumps(self) -> None:
        """
        The hand-written answer is exactly what the general encoder writes,
        whatever the strings hold.
        """
        exchanged = "urn:ietf:params:oauth:token-type:access_token"
        for access_token, scope, token_type, expires_in, issued_token_type in (
            ("eyJ.a-b_c.d", frozenset({"read", "write"}), "Bearer", 3600, None),
            ("opaque-Abc_123", frozenset(), "DPoP", 1, None),
            ('odd "quoted" \\ token\n', frozenset({"zoë", "b"}), "Bearer", 86400, None),
            # a token exchange's answer (RFC 8693 §2.2.1)
            ("eyJ.x.y", frozenset({"read"}), "DPoP", 60, exchanged),
            ("opaque", frozenset(), "Bearer", 1, 'odd "type" \\ ü'),
        ):
            token = IssuedToken(
                access_token=access_token,
                expires_in=expires_in,
                scope=scope,
                token_type=token_type,
                token_format="jwt",
                alg="ES256",
                auth_method="client_secret_basic",
                issued_token_type=issued_token_type,
            )
            self.assertEqual(
                token_answer_json(token),
                json.dumps(token.as_json(), separators=(",", ":")).encode(),
            )


class ClientGoneTests(ServerTestCase):
    """
    A client that goes away while its token is being made gets nothing
    written, and nothing fails: the answer is dropped.
    """

    def test_connection_lost_before_the_answer(self) -> None:
        from twisted.internet.defer import Deferred

        client = self.register(scope="read")
        form = b"grant_type=client_credentials"
        raw = (
            b"POST /token HTTP/1.1\r\nHost: localhost\r\nAuthorization: "
            + basic(client["client_id"], client["client_secret"]).encode()
            + b"\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(form)
            + form
        )
        # the client lookup waits until the test lets it go on
        waiting: list[Deferred[object]] = []
        real_get = self.store.get_client
        self.store.get_client = lambda client_id: (  # type: ignore[method-assign]
            waiting.append(Deferred()) or waiting[-1].addCallback(lambda _: real_get(client_id))
        )
        transport = CountingTransport()
        channel = self.site.buildProtocol(transport.getPeer())
        channel.makeConnection(transport)
        channel.dataReceived(raw)
        self.assertEqual(len(waiting), 1)
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        channel.connectionLost(Failure(ConnectionDone()))
        written = transport.value()
        waiting[0].callback(None)
        self.assertEqual(transport.value(), written)
        self.assertEqual(self.flushLoggedErrors(), [])


class AnswerBugTests(OnTheWire):
    """
    A bug in making the answer of a hot path (after the call succeeded)
    is answered as one, a 500 with an OAuth error body, not left without
    an answer until the connection times out.
    """

    def test_a_failing_answer_is_a_500(self) -> None:
        from ccserver import web

        def broken(request: object, token: object) -> bytes:
            raise RuntimeError("a bug")

        self.patch(web, "_token_answer", broken)
        self.channel.dataReceived(self.raw)
        head, body = self.transport.value().split(b"\r\n\r\n", 1)
        self.assertTrue(head.startswith(b"HTTP/1.1 500 "), head)
        self.assertEqual(json.loads(body)["error"], "server_error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class RenderedAnswersTests(SynchronousTestCase):
    """
    L{RenderedAnswers}: the JSON of a read-only introspection answer made
    once, of anything else every time.
    """

    def setUp(self) -> None:
        self.made = 0
        render = tokenjson.introspection_json

        def counted(answer: Mapping[str, Any]) -> bytes:
            self.made += 1
            return render(answer)

        self.patch(tokenjson, "introspection_json", counted)

    def test_read_only_answer_made_once(self) -> None:
        answer = MappingProxyType({"sub": "ü \"x\"", "exp": 2, "aud": ["a", "b"], "active": True})
        rendered = RenderedAnswers()
        bodies = {rendered.json(answer) for _ in range(3)}
        self.assertEqual(bodies, {json.dumps(dict(answer), separators=(",", ":")).encode()})
        self.assertEqual(self.made, 1)

    def test_a_dict_is_made_every_time(self) -> None:
        """
        A dict may change after it is written: it is never kept.
        """
        answer: dict[str, Any] = {"active": True, "scope": "read"}
        rendered = RenderedAnswers()
        self.assertEqual(rendered.json(answer), b'{"active":true,"scope":"read"}')
        answer["scope"] = "write"
        self.assertEqual(rendered.json(answer), b'{"active":true,"scope":"write"}')
        self.assertEqual((self.made, len(rendered)), (2, 0))

    def test_bounded(self) -> None:
        rendered = RenderedAnswers(size=2)
        answers = [MappingProxyType({"active": True, "jti": str(n)}) for n in range(3)]
        for answer in answers:
            rendered.json(answer)
        self.assertEqual(len(rendered), 2)
        rendered.json(answers[0])
        self.assertEqual(self.made, 4)
