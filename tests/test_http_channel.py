"""
The HTTP layer answers every bad request head (ccserver.httpchannel): 431
for a head over a limit, 400 for obsolete line folding and malformed heads,
408 for a head or body slower than its deadline; normal requests, keep-alive
and pipelining unaffected.  Unit tests on a clock and a StringTransport, and
a few against a running C{twist ccserver} over a real socket.
"""

from __future__ import annotations

import json
import select
import socket
import time
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import http, server
from twisted.web.resource import Resource

from ccserver.config import load_config
from ccserver.errors import ConfigError
from ccserver.httpchannel import CCServerChannel, HTTPLimits
from ccserver.web import CCServerSite
from tests.helpers import temp_dir
from tests.process import CCServerProcess

PEER = IPv4Address("TCP", "127.0.0.1", 12345)


class Echo(Resource):
    """
    Answers the method and the length of the body; C{/slow} is answered
    only when the test says so.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bytes] = []
        self.slow: list[server.Request] = []

    def render(self, request: server.Request) -> Any:
        body = request.content.read()
        self.seen.append(request.path)
        if request.path == b"/slow":
            self.slow.append(request)
            return server.NOT_DONE_YET
        return b"%s %s %d" % (request.method, request.path, len(body))


class Connection:
    """
    One connection to a L{CCServerSite} on a clock.
    """

    def __init__(self, site: CCServerSite) -> None:
        self.protocol = site.buildProtocol(PEER)
        self.transport = StringTransport(peerAddress=PEER)
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> bytes:
        self.protocol.dataReceived(data)
        return self.transport.value()

    @property
    def closing(self) -> bool:
        return bool(self.transport.disconnecting)


def parse_error(answer: bytes) -> tuple[int, dict[str, Any], bytes]:
    """
    The status, the JSON body and the head of a refusal.
    """
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body), head


#: Three requests in one chunk, the second with a body.
PIPELINED = (
    b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
    b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n"
)


class ChannelTestCase(SynchronousTestCase):
    limits = HTTPLimits()

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.resource = self.make_resource()
        self.site = CCServerSite(self.resource, self.clock, limits=self.limits)

    def make_resource(self) -> Any:
        return Echo()

    def connect(self) -> Connection:
        return Connection(self.site)

    def assert_refused(self, answer: bytes, status: int, words: str, connection: Connection) -> None:
        code, body, head = parse_error(answer)
        self.assertEqual(code, status, answer[:300])
        self.assertEqual(body["error"], "invalid_request")
        self.assertIn(words, body["error_description"])
        self.assertIn(b"Content-Type: application/json", head)
        self.assertIn(b"Connection: close", head)
        self.assertTrue(connection.closing)
        self.assertEqual(self.resource.seen, [])


class HeadLimitTests(ChannelTestCase):
    """
    431 (RFC 6585 §5) with an OAuth JSON error, then close, for a head
    over a limit; twisted.web alone drops the connection without a word
    for one long line.
    """

    def test_long_request_line(self) -> None:
        c = self.connect()
        answer = c.send(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assert_refused(answer, 431, "request line is longer than 8192 bytes", c)

    def test_long_request_line_never_ended(self) -> None:
        """
        A line with no end yet is refused as soon as it is too long.
        """
        c = self.connect()
        for _ in range(9):
            answer = c.send(b"a" * 1000)
        self.assert_refused(answer, 431, "request line is longer", c)

    def test_long_header_line(self) -> None:
        c = self.connect()
        answer = c.send(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
        self.assert_refused(answer, 431, "header line is longer than 8192 bytes", c)

    def test_too_many_headers(self) -> None:
        c = self.connect()
        answer = c.send(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n")
        self.assert_refused(answer, 431, "more than 100 header fields", c)

    def test_as_many_headers_as_allowed(self) -> None:
        c = self.connect()
        answer = c.send(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 99 + b"\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:200])
        self.assertTrue(answer.endswith(b"GET / 0"))

    def test_head_over_total_size(self) -> None:
        c = self.connect()
        answer = c.send(b"GET / HTTP/1.1\r\n" + (b"X: " + b"a" * 6000 + b"\r\n") * 3 + b"\r\n")
        self.assert_refused(answer, 431, "request head is larger than 16384 bytes", c)

    def test_nothing_read_after_refusal(self) -> None:
        c = self.connect()
        c.send(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101)
        before = c.transport.value()
        self.assertEqual(c.send(b"\r\nGET / HTTP/1.1\r\n\r\n"), before)
        self.assertEqual(self.resource.seen, [])


class ConfiguredLimitTests(ChannelTestCase):
    """
    The limits come from the site (from [http] in the configuration).
    """

    limits = HTTPLimits(max_line_length=100, max_headers=2, max_head_size=200)

    def test_line(self) -> None:
        c = self.connect()
        answer = c.send(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n\r\n")
        self.assert_refused(answer, 431, "longer than 100 bytes", c)

    def test_headers(self) -> None:
        c = self.connect()
        answer = c.send(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n")
        self.assert_refused(answer, 431, "more than 2 header fields", c)

    def test_head_size(self) -> None:
        c = self.connect()
        answer = c.send(b"GET / HTTP/1.1\r\nA: " + b"a" * 90 + b"\r\nB: " + b"b" * 90 + b"\r\n\r\n")
        self.assert_refused(answer, 431, "larger than 200 bytes", c)


class MalformedHeadTests(ChannelTestCase):
    """
    RFC 9112 §5.2: obsolete line folding is refused with 400, not joined
    (as twisted.web does) into a value that a proxy in front reads
    differently.
    """

    def test_folded_header(self) -> None:
        c = self.connect()
        answer = c.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n")
        self.assert_refused(answer, 400, "obsolete line folding", c)

    def test_folded_content_length(self) -> None:
        c = self.connect()
        answer = c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n 5\r\n\r\nhello")
        self.assert_refused(answer, 400, "obsolete line folding", c)

    def test_folded_with_tab(self) -> None:
        c = self.connect()
        answer = c.send(b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\t0\r\n\r\nhello")
        self.assert_refused(answer, 400, "obsolete line folding", c)

    def test_whitespace_before_first_header(self) -> None:
        """
        RFC 9112 §2.2: whitespace between the request line and the first
        header field.
        """
        c = self.connect()
        answer = c.send(b"GET / HTTP/1.1\r\n Host: x\r\n\r\n")
        self.assert_refused(answer, 400, "obsolete line folding", c)

    def test_twisted_alone_takes_the_folded_length(self) -> None:
        """
        Why: plain twisted.web reads C{Content-Length:} folded onto the next
        line as a length of 5.  Should this test fail, twisted.web refuses
        obs-fold itself, and ccserver's check is a second line of defence.
        """
        plain = server.Site(self.resource, reactor=self.clock)
        c = Connection(plain)  # type: ignore[arg-type]
        answer = c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n 5\r\n\r\nhello")
        self.assertTrue(answer.endswith(b"POST / 5"), answer)

    def test_bad_request_line(self) -> None:
        c = self.connect()
        answer = c.send(b"NONSENSE\r\n\r\n")
        self.assert_refused(answer, 400, "not valid HTTP/1.1", c)

    def test_two_content_lengths(self) -> None:
        c = self.connect()
        answer = c.send(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 5\r\n\r\nhello")
        self.assert_refused(answer, 400, "not valid HTTP/1.1", c)


class RequestFramingTests(ChannelTestCase):
    """
    RFC 9112 §6.1: C{Transfer-Encoding} in an HTTP/1.0 request means the
    framing is faulty (a proxy in front may have read the body by
    C{Content-Length}, or to the end of the connection): 400, then close.
    RFC 9112 §3.2: an HTTP/1.1 request without C{Host}, any request with
    more than one or with an invalid one: 400.
    """

    def test_chunked_in_http_1_0(self) -> None:
        for head, words in (
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.0"),
            (b"POST / HTTP/1.0\r\nHost: x\r\ntransfer-encoding: chunked\r\n\r\n", "HTTP/1.0"),
            # twisted.web refuses these already, in any version
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", ""),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", ""),
        ):
            c = self.connect()
            answer = c.send(head + b"3\r\nabc\r\n0\r\n\r\n")
            self.assert_refused(answer, 400, words, c)
            self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer)
            self.assertEqual(answer.count(b"\r\n\r\n"), 1, answer)
        c = self.connect()
        answer = c.send(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.assert_refused(answer, 400, "Transfer-Encoding in an HTTP/1.0 request", c)

    def test_content_length_too_long(self) -> None:
        """
        RFC 9112 §6.3: a Content-Length this server cannot read is invalid
        framing: 400, then close (twisted.web alone raises out of
        dataReceived on thousands of digits, and drops the connection).
        """
        for value in (b"9" * 19, b"1" + b"0" * 4999, b"9" * 30 + b"x"):
            for whole in (True, False):
                with self.subTest(value=value[:20], whole=whole):
                    c = self.connect()
                    data = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + value + b"\r\n\r\nabc"
                    if whole:
                        c.send(data)
                    else:
                        for i in range(len(data)):
                            c.send(data[i : i + 1])
                    self.assert_refused(
                        c.transport.value(), 400, "not a length of at most 18 digits", c
                    )

    def test_content_length_of_eighteen_digits(self) -> None:
        """
        Eighteen digits are read as a length (too large a body, which the
        site refuses in its turn).
        """
        c = self.connect()
        answer = c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 18 + b"\r\n\r\nabc")
        self.assertEqual(answer, b"")
        self.assertFalse(c.closing)

    def test_http_1_1_without_host(self) -> None:
        c = self.connect()
        answer = c.send(b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n")
        self.assert_refused(answer, 400, "an HTTP/1.1 request needs a Host header", c)

    def test_two_hosts(self) -> None:
        for version in (b"HTTP/1.1", b"HTTP/1.0"):
            for hosts in (b"Host: a\r\nHost: b\r\n", b"Host: a\r\nhost: a\r\n", b"HOST: a\r\nHost:\r\n"):
                c = self.connect()
                answer = c.send(b"GET / " + version + b"\r\n" + hosts + b"\r\n")
                self.assert_refused(answer, 400, "more than one Host header", c)

    def test_invalid_host(self) -> None:
        for host in (b"a b", b"a@b", b"user:pw@a", b"a/b", b"a:b", b"a, b", b"[::1", b"\xff", b"a\x1b"):
            c = self.connect()
            answer = c.send(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            self.assert_refused(answer, 400, "the Host header is not a host", c)

    def test_good_hosts(self) -> None:
        for host in (b"x", b"as.example.com", b"AS.Example.COM:8443", b"127.0.0.1:80",
                     b"[::1]:8080", b"[fe80::1%25eth0]", b"xn--bcher-kva.example", b""):
            c = self.connect()
            answer = c.send(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), (host, answer))

    def test_http_1_0_without_host(self) -> None:
        c = self.connect()
        answer = c.send(b"POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc")
        self.assertTrue(answer.startswith(b"HTTP/1.0 200 "), answer)
        self.assertTrue(answer.endswith(b"POST / 3"), answer)

    def test_pipelined_request_without_host(self) -> None:
        """
        Each request of a connection is held to the rule: the first is
        answered, the second refused and the connection closed.
        """
        c = self.connect()
        answer = c.send(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\n\r\n")
        self.assertIn(b"GET /one 0", answer)
        self.assertIn(b"an HTTP/1.1 request needs a Host header", answer)
        self.assertEqual(self.resource.seen, [b"/one"])
        self.assertTrue(c.closing)


class PrivateAPITests(ChannelTestCase):
    """
    The channel's one private API of twisted.web (every reach is listed
    in tests/test_layers.py, C{PRIVATE_REACHES}):
    C{HTTPChannel._respondToBadRequestAndDisconnect}, which
    L{CCServerChannel} overrides to give twisted.web's malformed-request
    400 a JSON body.  These fail if twisted.web renames it or stops
    calling it.
    """

    def test_still_there(self) -> None:
        self.assertTrue(callable(getattr(http.HTTPChannel, "_respondToBadRequestAndDisconnect", None)))
        self.assertIn("_respondToBadRequestAndDisconnect", vars(CCServerChannel))

    def test_header_without_colon(self) -> None:
        c = self.connect()
        answer = c.send(b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
        self.assert_refused(answer, 400, "not valid HTTP/1.1", c)

    def test_bad_content_length(self) -> None:
        c = self.connect()
        answer = c.send(b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n")
        self.assert_refused(answer, 400, "not valid HTTP/1.1", c)

    def test_broken_chunk(self) -> None:
        c = self.connect()
        answer = c.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        self.assert_refused(answer, 400, "not valid HTTP/1.1", c)


class DeadlineTests(ChannelTestCase):
    """
    A deadline for the whole head and one for the body, which no trickle
    of bytes extends (the idle timeout, 60 s, is reset by every byte).
    """

    def trickle(self, c: Connection, data: bytes, every: float) -> bytes:
        for i in range(len(data)):
            c.send(data[i : i + 1])
            self.clock.advance(every)
            if c.closing:
                break
        return c.transport.value()

    def test_head_trickle(self) -> None:
        c = self.connect()
        c.send(b"G")
        for _ in range(4):
            self.clock.advance(2.4)
            c.send(b"E")
        self.assertEqual(c.transport.value(), b"")
        self.clock.advance(0.5)
        self.assert_refused(c.transport.value(), 408, "request head did not arrive within 10 seconds", c)

    def test_head_trickle_slower_than_the_idle_timeout_resets(self) -> None:
        """
        One byte every 20 s, which twisted.web's idle timeout alone lets
        through forever.
        """
        c = self.connect()
        answer = self.trickle(c, b"GET / HTTP/1.1\r\n", every=20)
        self.assert_refused(answer, 408, "request head", c)

    def test_silent_connection(self) -> None:
        c = self.connect()
        self.clock.advance(10)
        self.assert_refused(c.transport.value(), 408, "request head", c)

    def test_body_trickle(self) -> None:
        c = self.connect()
        c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        for _ in range(29):
            self.clock.advance(1)
            c.send(b"a")
        self.assertEqual(c.transport.value(), b"")
        self.clock.advance(1)
        self.assert_refused(c.transport.value(), 408, "request body did not arrive within 30 seconds", c)

    def test_body_deadline_from_the_end_of_the_head(self) -> None:
        """
        The head's time does not count against the body's.
        """
        c = self.connect()
        c.send(b"POST / HTTP/1.1\r\nHost: x\r\n")
        self.clock.advance(9)
        c.send(b"Content-Length: 5\r\n\r\nhel")
        self.clock.advance(29)
        answer = c.send(b"lo")
        self.assertTrue(answer.endswith(b"POST / 5"), answer)

    def test_configured(self) -> None:
        self.site.limits = HTTPLimits(head_timeout=1, body_timeout=2)
        c = self.connect()
        c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        self.clock.advance(1.9)
        self.assertEqual(c.transport.value(), b"")
        self.clock.advance(0.1)
        self.assert_refused(c.transport.value(), 408, "within 2 seconds", c)

    def test_no_deadline_while_answering(self) -> None:
        """
        A request the application is still answering gets its answer, not
        a 408, however long it takes.
        """
        c = self.connect()
        c.send(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        self.clock.advance(100)
        self.assertEqual(c.transport.value(), b"")
        [request] = self.resource.slow
        request.write(b"done")
        request.finish()
        self.assertTrue(c.transport.value().startswith(b"HTTP/1.1 200 "))
        self.assertFalse(c.closing)

    def test_deadlines_cancelled_on_close(self) -> None:
        c = self.connect()
        c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        self.assertEqual(len(self.deadlines(c)), 1)
        c.protocol.connectionLost(None)
        self.assertEqual(self.deadlines(c), [])

    def deadlines(self, c: Connection) -> list[Any]:
        """
        The connection's head and body deadline timers scheduled.
        """
        return [
            call
            for call in self.clock.getDelayedCalls()
            if call.func in (c.protocol._timed_out, c.protocol._deadline_passed)
        ]

    def test_one_timer_per_connection(self) -> None:
        """
        The head and body deadlines of request after request reset one
        timer: none is left behind, and each still holds (the third
        request's head, trickled, gets its 408 at its own deadline).
        """
        c = self.connect()
        for n in range(5):
            c.send(b"POST /%d HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi" % n)
            self.assertEqual(len(self.deadlines(c)), 1)
            self.clock.advance(1)
        self.assertEqual(c.transport.value().count(b"HTTP/1.1 200 "), 5)
        c.send(b"GET /last HTTP/1.1\r\n")
        self.clock.advance(9.5)
        self.assertNotIn(b"408", c.transport.value())
        self.clock.advance(0.5)
        self.assertIn(b"HTTP/1.1 408 ", c.transport.value())
        self.assertEqual(self.deadlines(c), [])


class IdleTimeoutTests(ChannelTestCase):
    """
    twisted.web's idle timeout (the site's C{timeOut}, 60 s without a byte
    between requests, none while a request is with the application), kept
    on one timer a connection that is reset, not cancelled and made anew
    for every request (L{CCServerChannel.setTimeout}).
    """

    def idle_timers(self, c: Connection) -> list[Any]:
        return [call for call in self.clock.getDelayedCalls() if call.func == c.protocol._idle_passed]

    def test_idle_connection_closed(self) -> None:
        c = self.connect()
        c.send(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(59)
        self.assertFalse(c.closing)
        self.clock.advance(1)
        self.assertTrue(c.closing)

    def test_one_timer_for_every_request(self) -> None:
        """
        Request after request, the connection's idle timer is the same
        one, and the only one.
        """
        c = self.connect()
        c.send(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        [timer] = self.idle_timers(c)
        for n in range(5):
            c.send(b"POST /%d HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi" % n)
            self.assertEqual(self.idle_timers(c), [timer])
            self.clock.advance(1)
        self.assertEqual(c.transport.value().count(b"HTTP/1.1 200 "), 6)
        self.assertFalse(c.closing)

    def test_none_while_answering(self) -> None:
        """
        A request longer with the application than the idle timeout is
        answered; the idle time counts again from its answer.
        """
        c = self.connect()
        c.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(100)
        self.assertFalse(c.closing)
        [request] = self.resource.slow
        request.write(b"done")
        request.finish()
        self.assertTrue(c.transport.value().startswith(b"HTTP/1.1 200 "))
        self.clock.advance(59)
        self.assertFalse(c.closing)
        self.clock.advance(1)
        self.assertTrue(c.closing)

    def test_a_byte_resets_it(self) -> None:
        """
        A byte of the next request starts the idle time again (and its
        head's own deadline).
        """
        c = self.connect()
        c.send(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(55)
        c.send(b"G")
        self.clock.advance(9)
        self.assertFalse(c.closing)
        c.send(b"ET /two HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(c.transport.value().count(b"HTTP/1.1 200 "), 2)

    def test_cancelled_on_close(self) -> None:
        c = self.connect()
        c.send(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(len(self.idle_timers(c)), 1)
        c.protocol.connectionLost(None)
        self.assertEqual(self.idle_timers(c), [])


class DateHeaderTests(ChannelTestCase):
    """
    Every answer has a C{Date} (RFC 9110 §6.6.1) of the site's reactor's
    time, its text made once a second (L{ccserver.web.http_date}).
    """

    def date(self, c: Connection, path: bytes) -> bytes:
        c.transport.clear()
        answer = c.send(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        [value] = [line[6:] for line in answer.split(b"\r\n") if line.lower().startswith(b"date: ")]
        return value

    def test_the_clock_time(self) -> None:
        self.clock.advance(1796420925.75)
        c = self.connect()
        self.assertEqual(self.date(c, b"/one"), b"Fri, 04 Dec 2026 21:48:45 GMT")
        self.assertEqual(self.date(c, b"/two"), b"Fri, 04 Dec 2026 21:48:45 GMT")
        self.clock.advance(0.25)
        self.assertEqual(self.date(c, b"/three"), b"Fri, 04 Dec 2026 21:48:46 GMT")

    def test_made_once_a_second(self) -> None:
        from ccserver import web  # noqa: PLC0415

        web.http_date.cache_clear()
        self.clock.advance(1796420925)
        c = self.connect()
        for n in range(3):
            self.date(c, b"/%d" % n)
        self.assertEqual(web.http_date.cache_info().misses, 1)


class NormalRequestTests(ChannelTestCase):
    """
    Requests within the limits are served as before: keep-alive,
    pipelining, bodies, chunks.
    """

    def test_pipelined(self) -> None:
        c = self.connect()
        answer = c.send(PIPELINED)
        self.assertEqual(answer.count(b"HTTP/1.1 200 "), 3, answer)
        self.assertIn(b"GET /one 0", answer)
        self.assertIn(b"POST /two 3", answer)
        self.assertTrue(answer.endswith(b"GET /three 0"))
        self.assertFalse(c.closing)

    def test_pipelined_behind_a_slow_answer(self) -> None:
        """
        A request read while another is answered gets its head deadline
        only when its turn comes.
        """
        c = self.connect()
        c.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n")
        self.clock.advance(50)
        [request] = self.resource.slow
        request.finish()
        self.clock.advance(9)
        answer = c.send(b"\r\n")
        self.assertEqual(answer.count(b"HTTP/1.1 200 "), 2, answer)
        self.assertTrue(answer.endswith(b"GET /next 0"))

    def test_keep_alive_idle_is_not_a_slow_head(self) -> None:
        """
        Between requests only the idle timeout applies; the next head's
        deadline starts at its first byte.
        """
        c = self.connect()
        c.send(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(50)
        c.send(b"GET /two HTTP/1.1\r\nHost: x\r\n")
        self.clock.advance(9)
        answer = c.send(b"\r\n")
        self.assertEqual(answer.count(b"HTTP/1.1 200 "), 2, answer)
        self.clock.advance(10)
        self.assertNotIn(b"408", c.transport.value())

    def test_second_request_has_its_own_deadline(self) -> None:
        c = self.connect()
        c.send(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n")
        self.clock.advance(10)
        answer = c.transport.value()
        self.assertIn(b"GET /one 0", answer)
        self.assertIn(b"HTTP/1.1 408 ", answer)
        self.assertTrue(c.closing)

    def test_chunked_body(self) -> None:
        c = self.connect()
        answer = c.send(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        self.assertTrue(answer.endswith(b"POST / 5"), answer)

    def test_no_server_header(self) -> None:
        """
        No C{Server} header (twisted.web would announce C{TwistedWeb/}
        and its version): not on an answer, not on an C{OPTIONS *}, not on
        a refusal.
        """
        c = self.connect()
        answer = c.send(
            b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /three HTTP/1.1\r\n\r\n"
        )
        self.assertEqual(answer.count(b"HTTP/1.1 200 "), 2, answer)
        self.assertIn(b"HTTP/1.1 400 ", answer)
        self.assertNotIn(b"server:", answer.lower())
        self.assertNotIn(b"twisted", answer.lower())

    def test_the_empty_line_before_a_request(self) -> None:
        """
        The empty line some clients send after a body is still skipped.
        """
        c = self.connect()
        answer = c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\na\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(answer.count(b"HTTP/1.1 200 "), 2, answer)


class HTTPConfigTests(SynchronousTestCase):
    """
    [http] in the configuration.
    """

    def load(self, toml: str) -> Any:
        path = temp_dir(self) / "ccserver.toml"
        path.write_text(toml)
        return load_config({"config": str(path)}, {})

    def test_defaults(self) -> None:
        self.assertEqual(self.load("").http, HTTPLimits())
        self.assertEqual(HTTPLimits().head_timeout, 10)
        self.assertEqual(HTTPLimits().body_timeout, 30)

    def test_keys(self) -> None:
        config = self.load(
            "[http]\nmax_line_length = 1000\nmax_headers = 20\nmax_head_size = 4000\n"
            "head_timeout = 2.5\nbody_timeout = 5\n"
        )
        self.assertEqual(config.http, HTTPLimits(1000, 20, 4000, 2.5, 5.0))

    def test_refused(self) -> None:
        for toml, message in [
            ("[http]\nhead_timeout = 0\n", "[http] head_timeout: must be greater than 0"),
            ("[http]\nmax_headers = -1\n", "[http] max_headers: must be greater than 0"),
            ('[http]\nbody_timeout = "soon"\n', "http.body_timeout: must be a number"),
            ("[http]\nmax_line_length = 1.5\n", "http.max_line_length: must be an integer"),
            ("[http]\nidle = 1\n", "http.idle: unknown key"),
        ]:
            with self.assertRaises(ConfigError) as e:
                self.load(toml)
            self.assertIn(message, str(e.exception))


@pytest.mark.process
class RealSocketTests(TestCase):
    """
    The answers over a real socket from a running C{twist ccserver}, with
    short deadlines from its configuration.
    """

    def setUp(self) -> None:
        tmp = temp_dir(self)
        config = tmp / "ccserver.toml"
        config.write_text("[http]\nhead_timeout = 1\nbody_timeout = 1\n")
        self.server = CCServerProcess(tmp, "--config", str(config), store="memory://")
        self.addCleanup(self.server.kill)
        self.server.start()

    def exchange(self, data: bytes, trickle: bytes = b"", timeout: float = 10) -> bytes:
        """
        Send C{data}, then C{trickle} a byte every 0.2 s, and read until
        the server closes.
        """
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=timeout) as s:
            s.sendall(data)
            deadline = time.monotonic() + timeout
            for byte in trickle:
                if select.select([s], [], [], 0.2)[0]:
                    break
                s.sendall(bytes([byte]))
            chunks = []
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)

    def assert_answer(self, answer: bytes, status: int, words: str) -> None:
        code, body, _ = parse_error(answer)
        self.assertEqual(code, status, answer)
        self.assertEqual(body["error"], "invalid_request")
        self.assertIn(words, body["error_description"])

    def test_long_request_line(self) -> None:
        answer = self.exchange(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assert_answer(answer, 431, "request line is longer")

    def test_too_many_headers(self) -> None:
        answer = self.exchange(b"GET /jwks.json HTTP/1.1\r\n" + b"X: y\r\n" * 600 + b"\r\n")
        self.assert_answer(answer, 431, "header fields")

    def test_folded_content_length(self) -> None:
        answer = self.exchange(
            b"POST /token HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length:\r\n 29\r\n\r\ngrant_type=client_credentials"
        )
        self.assert_answer(answer, 400, "obsolete line folding")

    def test_content_length_of_thousands_of_digits(self) -> None:
        """
        Answered, not dropped: Python's int() raises on so many digits,
        which twisted.web alone would raise out of dataReceived.
        """
        answer = self.exchange(
            b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\nx"
        )
        self.assert_answer(answer, 400, "Content-Length is not a length of at most 18 digits")

    def test_head_trickle(self) -> None:
        started = time.monotonic()
        answer = self.exchange(b"GET /jwks.json HTTP/1.1\r\n", trickle=b"X-Slow: " + b"a" * 100)
        self.assert_answer(answer, 408, "request head did not arrive within 1 seconds")
        self.assertLess(time.monotonic() - started, 5)

    def test_body_deadline(self) -> None:
        answer = self.exchange(
            b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\ngrant",
        )
        self.assert_answer(answer, 408, "request body did not arrive within 1 seconds")

    def test_chunked_in_http_1_0(self) -> None:
        answer = self.exchange(
            b"POST /token HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
            b"1d\r\ngrant_type=client_credentials\r\n0\r\n\r\n"
        )
        self.assert_answer(answer, 400, "Transfer-Encoding in an HTTP/1.0 request")

    def test_host_headers(self) -> None:
        for head, words in (
            (b"GET /jwks.json HTTP/1.1\r\n\r\n", "needs a Host header"),
            (b"GET /jwks.json HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "more than one Host"),
            (b"GET /jwks.json HTTP/1.1\r\nHost: a b\r\n\r\n", "not a host"),
        ):
            self.assert_answer(self.exchange(head), 400, words)

    def test_no_server_header(self) -> None:
        answer = self.exchange(b"GET /jwks.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = answer.partition(b"\r\n\r\n")[0].lower()
        self.assertTrue(head.startswith(b"http/1.1 200 "), answer[:200])
        self.assertNotIn(b"\r\nserver:", head)
        self.assertNotIn(b"twisted", head)

    def test_still_serving(self) -> None:
        self.exchange(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 600 + b"\r\n")
        answer = self.exchange(b"GET /jwks.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:200])
