"""
The channel reads a request that arrives whole in one pass
(C{CCServerChannel._whole_request}), and answers it in one write
(C{BoundedRequest.write_whole}); anything else goes through twisted.web's
line-by-line reader and its C{Request.write}, as before.  Each request
here is sent twice, whole and one byte at a time (which the one-pass
reader never reads), and both must give the same request to the resource
and the same answer to the client.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.web import http, server
from twisted.web.resource import Resource

from ccserver.httpchannel import HTTPLimits
from ccserver.web import BoundedRequest, CCServerSite, write_answer
from tests.test_http_channel import PIPELINED, ChannelTestCase, Connection

#: What twisted.web writes differently from one second to the next.
_DATE = re.compile(rb"\r\nDate: [^\r]*")


class Recorder(Resource):
    """
    Keeps what each request looked like to the application, and answers
    with its body (C{/slow}: only when the test says so; C{/plain}:
    through twisted.web's own C{write}, without a C{Content-Type};
    C{/nobody}: 204).
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Any, ...]] = []
        self.slow: list[server.Request] = []

    def render(self, request: server.Request) -> Any:
        body = request.content.read()
        self.seen.append(
            (
                request.method,
                request.uri,
                request.clientproto,
                sorted(request.requestHeaders.getAllRawHeaders()),
                body,
                request.received_cookies,
                request.getClientAddress(),
                request.getHeader(b"host"),
            )
        )
        if request.path == b"/slow":
            self.slow.append(request)
            return server.NOT_DONE_YET
        if request.path == b"/plain":
            return b"plain " + body
        if request.path == b"/nobody":
            request.setResponseCode(http.NO_CONTENT)
        request.setHeader(b"Content-Type", b"text/plain")
        request.setHeader(b"X-Echo", b"yes")
        write_answer(b"%s %s %d" % (request.method, request.path, len(body)), request)
        return server.NOT_DONE_YET


class Counted(Connection):
    """
    A connection that counts the requests read in one pass, the lines
    twisted.web's line-by-line reader handed to the channel, and the
    writes of answers.
    """

    def __init__(self, site: CCServerSite) -> None:
        super().__init__(site)
        self.one_pass = self.lines = self.writes = 0
        channel = self.protocol
        read_whole, read_line, write, write_sequence = (
            channel._whole_request, channel.lineReceived,
            self.transport.write, self.transport.writeSequence,
        )

        def counted_whole(data: bytes) -> int:
            used: int = read_whole(data)
            self.one_pass += used > 0
            return used

        def counted_line(line: bytes) -> None:
            self.lines += 1
            read_line(line)

        def counted_write(data: bytes) -> None:
            self.writes += 1
            write(data)

        def counted_sequence(data: Any) -> None:
            self.writes += 1
            write_sequence(data)

        channel._whole_request = counted_whole
        channel.lineReceived = counted_line
        self.transport.write = counted_write  # type: ignore[method-assign]
        self.transport.writeSequence = counted_sequence  # type: ignore[method-assign]


def _head_of_size(size: int) -> bytes:
    """
    A request whose head is C{size} bytes, its last CRLF included.
    """
    start = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-%d: " % i + b"v" * 4000 + b"\r\n" for i in range(3)
    )
    head = start + b"X-Pad: " + b"v" * (size - len(start) - 11) + b"\r\n\r\n"
    assert len(head) == size
    return head


#: Requests the one-pass reader takes: what they show the application and
#: what they are answered must not depend on how they are read.
WHOLE = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /a/b?c=d&e=%20f HTTP/1.1\r\nHost: example.com:8080\r\n\r\n",
    b"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic YTpi\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 40\r\n\r\n"
    b"grant_type=client_credentials&scope=read",
    b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHOST: x\r\nCONTENT-LENGTH: 3\r\n\r\nabc",
    # whitespace around values, empty values, tabs inside, obs-text
    b"GET / HTTP/1.1\r\nHost:x\r\nX-A:   spaced \t \r\nX-B:\r\nX-C: a\tb\r\nX-D: caf\xc3\xa9 \xff\r\n\r\n",
    # repeated fields, in their order
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2, 10.0.0.3\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nCookie: a=1; b=2\r\n\r\n",
    # trailing whitespace on the last field and on the Host
    b"GET / HTTP/1.1\r\nHost: x \r\n\r\n",
    b"GET / HTTP/1.1\r\nX-A: a\r\nHost:\tx\t\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: \t \r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: [::1]:443\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
    b"DELETE /client-reg/abc HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"PATCH / HTTP/1.1\r\nHost: x\r\nContent-Length: 005\r\n\r\nhello",
    b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /plain HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
    # at each limit, not over it (HTTPLimits() below)
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(99)) + b"\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"v" * (8192 - 8) + b"\r\n\r\n",
    _head_of_size(16384),
]

#: Requests it leaves to the line-by-line reader (most of them refused
#: there): their answers must be what that reader gives.
LEFT = [
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n 3\r\n\r\nabc",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\nb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A : a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX\x01: a\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n",
    b"G\xc3\x89T / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -3\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3 3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 19 + b"\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(100)) + b"\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"v" * 8192 + b"\r\n\r\n",
    b"GET /" + b"a" * 8200 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    _head_of_size(16385),
    b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
]


class OnePassTestCase(ChannelTestCase):
    def make_resource(self) -> Recorder:
        return Recorder()

    def connect(self) -> Counted:
        return Counted(self.site)

    def read_both_ways(self, data: bytes) -> tuple[Counted, Counted, list[Any], list[Any]]:
        """
        C{data} sent whole on one connection and a byte at a time on
        another: the two connections and what the resource saw of each.
        """
        whole = self.connect()
        whole.send(data)
        seen_whole, self.resource.seen = self.resource.seen, []
        trickled = self.connect()
        for i in range(len(data)):
            trickled.send(data[i : i + 1])
        seen_trickled, self.resource.seen = self.resource.seen, []
        return whole, trickled, seen_whole, seen_trickled

    def assert_same(self, whole: Counted, trickled: Counted) -> None:
        self.assertEqual(
            _DATE.sub(b"", whole.transport.value()), _DATE.sub(b"", trickled.transport.value())
        )
        self.assertEqual(whole.closing, trickled.closing)


class WholeRequestTests(OnePassTestCase):
    """
    A request whose head and body come in one chunk is read in one pass:
    twisted.web's line-by-line reader is handed no line of it.
    """

    def test_read_in_one_pass(self) -> None:
        for data in WHOLE:
            with self.subTest(data=data[:80]):
                whole, trickled, seen_whole, seen_trickled = self.read_both_ways(data)
                self.assertEqual((whole.one_pass, whole.lines), (1, 0))
                self.assertEqual(trickled.one_pass, 0)
                self.assertGreater(trickled.lines, 0)
                self.assertEqual(len(seen_whole), 1)
                self.assertEqual(seen_whole, seen_trickled)
                self.assert_same(whole, trickled)
                self.assertIn(b"HTTP/1.1 200 ", whole.transport.value())

    def test_left_to_the_line_reader(self) -> None:
        for data in LEFT:
            with self.subTest(data=data[:80]):
                whole, trickled, seen_whole, seen_trickled = self.read_both_ways(data)
                self.assertEqual(whole.one_pass, 0)
                self.assertEqual(seen_whole, seen_trickled)
                self.assert_same(whole, trickled)

    def test_body_in_a_later_chunk(self) -> None:
        c = self.connect()
        c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nabc")
        self.assertEqual(self.resource.seen, [])
        answer = c.send(b"def")
        self.assertTrue(answer.endswith(b"POST / 6"), answer)
        self.assertEqual(c.one_pass, 0)

    def test_start_of_the_request_line_in_an_earlier_chunk(self) -> None:
        """
        The part of a first line the line reader holds is read with the
        rest, in one pass.
        """
        c = self.connect()
        c.send(b"PO")
        answer = c.send(b"ST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        self.assertTrue(answer.endswith(b"POST /x 2"), answer)
        self.assertEqual((c.one_pass, c.lines), (1, 0))

    def test_pipelined(self) -> None:
        c = self.connect()
        answer = c.send(PIPELINED)
        self.assertEqual(answer.count(b"HTTP/1.1 200 "), 3, answer)
        self.assertLess(answer.index(b"GET /one 0"), answer.index(b"POST /two 3"))
        self.assertTrue(answer.endswith(b"GET /three 0"))
        self.assertEqual((c.one_pass, c.lines), (3, 0))
        self.assertFalse(c.closing)

    def test_many_pipelined(self) -> None:
        """
        Thousands of requests in one chunk, each answered at once, are
        read in a loop, not one call deeper each.
        """
        c = self.connect()
        answer = c.send(b"GET /n HTTP/1.1\r\nHost: x\r\n\r\n" * 5000)
        self.assertEqual(answer.count(b"HTTP/1.1 200 "), 5000)
        self.assertEqual((c.one_pass, c.lines), (5000, 0))

    def test_pipelined_behind_a_slow_answer(self) -> None:
        """
        What follows a request still with the application waits in
        twisted.web's buffer, and is answered after it, in order.
        """
        c = self.connect()
        c.send(
            b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        self.assertEqual(len(self.resource.seen), 1)
        self.assertNotIn(b"HTTP/1.1", c.transport.value())
        [request] = self.resource.slow
        request.write(b"slow")
        request.finish()
        answer = c.transport.value()
        self.assertEqual(answer.count(b"HTTP/1.1 200 "), 3, answer)
        self.assertLess(answer.index(b"slow"), answer.index(b"POST /two 3"))
        self.assertTrue(answer.endswith(b"GET /three 0"))

    def test_connection_close(self) -> None:
        """
        A request asking to close is answered, with C{Connection: close};
        nothing after it is read.
        """
        c = self.connect()
        answer = c.send(
            b"GET /one HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        self.assertEqual(answer.count(b"HTTP/1.1 200 "), 1, answer)
        self.assertIn(b"Connection: close", answer)
        self.assertTrue(c.closing)
        self.assertEqual([seen[1] for seen in self.resource.seen], [b"/one"])

    def test_no_head_deadline_while_answering(self) -> None:
        """
        The connection's head deadline, armed when it opened, does not
        fire on a request read in one pass and still being answered.
        """
        c = self.connect()
        c.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(self.limits.head_timeout + self.limits.body_timeout + 1)
        self.assertFalse(c.closing)
        [request] = self.resource.slow
        request.finish()
        self.assertIn(b"HTTP/1.1 200 ", c.transport.value())

    def test_body_over_the_limit(self) -> None:
        """
        A whole body over L{MAX_BODY} is refused as when it is read in
        parts.
        """
        from ccserver.web import MAX_BODY

        big = b"a" * (MAX_BODY + 1)
        c = self.connect()
        c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(big) + big)
        [seen] = self.resource.seen
        self.assertEqual(seen[4], b"")
        self.assertEqual(c.one_pass, 1)


class SmallLimitsTests(OnePassTestCase):
    """
    The configured limits hold in one pass as well.
    """

    limits = HTTPLimits(max_line_length=100, max_headers=3, max_head_size=200)

    def test_limits(self) -> None:
        for data, read in [
            (b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\n\r\n", True),
            (b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", False),
            (b"GET / HTTP/1.1\r\nHost: x\r\nA: " + b"v" * 97 + b"\r\n\r\n", True),
            (b"GET / HTTP/1.1\r\nHost: x\r\nA: " + b"v" * 98 + b"\r\n\r\n", False),
            (b"GET / HTTP/1.1\r\nHost: x\r\nA: " + b"v" * 90 + b"\r\nB: " + b"v" * 73 + b"\r\n\r\n", True),
            (b"GET / HTTP/1.1\r\nHost: x\r\nA: " + b"v" * 90 + b"\r\nB: " + b"v" * 74 + b"\r\n\r\n", False),
        ]:
            with self.subTest(data=data):
                whole, trickled, seen_whole, seen_trickled = self.read_both_ways(data)
                self.assertEqual(whole.one_pass, int(read))
                self.assertEqual(seen_whole, seen_trickled)
                self.assertEqual(len(seen_whole), int(read))
                self.assert_same(whole, trickled)


class WriteWholeTests(OnePassTestCase):
    """
    An answer with its length and type is written in one write, byte for
    byte as twisted.web's C{Request.write} writes it in two.
    """

    def test_one_write(self) -> None:
        c = self.connect()
        answer = c.send(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        self.assertEqual(c.writes, 1)
        head, _, body = answer.partition(b"\r\n\r\n")
        self.assertEqual(body, b"POST /x 2")
        lines = head.split(b"\r\n")
        self.assertEqual(lines[0], b"HTTP/1.1 200 OK")
        self.assertIn(b"Content-Length: 9", lines)
        self.assertIn(b"Content-Type: text/plain", lines)
        self.assertIn(b"X-Echo: yes", lines)
        self.assertNotIn(b"server", head.lower())

    def test_as_twisted_writes_it(self) -> None:
        """
        The same answer through twisted.web's C{write}, its head and body
        written apart.
        """
        answers = []
        for whole in (True, False):
            c = self.connect()
            if not whole:
                self.patch(BoundedRequest, "write_whole", BoundedRequest.write)
            answers.append(
                _DATE.sub(b"", c.send(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"))
            )
            self.assertEqual(c.writes, 1 if whole else 2)
        self.assertEqual(answers[0], answers[1])

    def test_through_twisted_write(self) -> None:
        """
        HEAD (no body), and an answer without a C{Content-Type} (which
        twisted.web's C{write} adds), go through twisted.web's C{write}.
        """
        c = self.connect()
        head = c.send(b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(head.endswith(b"\r\n\r\n"), head)
        self.assertIn(b"Content-Length: 9\r\n", head)
        c = self.connect()
        plain = c.send(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"Content-Type: text/html", plain)
        self.assertTrue(plain.endswith(b"plain "), plain)

    def test_no_body_status(self) -> None:
        """
        A status that has no body (204) goes through twisted.web's
        C{write}, which writes none.
        """
        c = self.connect()
        answer = c.send(b"GET /nobody HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 204 "), answer)
        self.assertTrue(answer.endswith(b"\r\n\r\n"), answer)
