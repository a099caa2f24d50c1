"""
The HTTP/1.1 connection: twisted.web's L{HTTPChannel} with an answer for
every request head it refuses, and deadlines for slow clients.

twisted.web, left alone, closes the connection without a word on one request
or header line longer than its limit, answers a bare C{400} without a body
for too many headers, accepts obsolete line folding (so that a folded
C{Content-Length} is read differently by a proxy in front and by us: request
smuggling), and knows only an idle timeout that every byte resets (a client
sending one byte every 20 seconds holds a connection forever).
L{CCServerChannel} answers each of these with a JSON error in the OAuth
style (C{{"error": "invalid_request", "error_description": ...}}) and closes
the connection:

  - a line over L{HTTPLimits.max_line_length}, more than
    L{HTTPLimits.max_headers} header fields, or a head over
    L{HTTPLimits.max_head_size} bytes: 431 (RFC 6585 §5);
  - obsolete line folding: 400 (RFC 9112 §5.2);
  - C{Transfer-Encoding} in an HTTP/1.0 request: 400 (RFC 9112 §6.1: the
    framing is faulty, whatever C{Content-Length} says);
  - an HTTP/1.1 request without C{Host}, any request with more than one
    C{Host} header or one that is not a host: 400 (RFC 9112 §3.2);
  - a head not complete within L{HTTPLimits.head_timeout} seconds, or a body
    not complete within L{HTTPLimits.body_timeout} seconds: 408 (RFC 9110
    §15.5.9);
  - every other request twisted.web finds malformed: 400 (see
    L{CCServerChannel._respondToBadRequestAndDisconnect}).

These answers are written here, not by web.py's error renderer, because no
request object exists yet (and none should: the head is not trusted).

A request that arrives whole (its head and body in the bytes at hand, the
usual keep-alive request) is read in one pass (L{CCServerChannel.
_whole_request}) rather than a line at a time, when it is plainly
well-formed and within every limit; everything else, and everything
refused, goes through twisted.web's line-by-line reader, whose behaviour
the one pass must match (tests/test_http_whole_requests.py).

No answer carries a C{Server} header: twisted.web's names it and its
version (C{TwistedWeb/26.10.0}), which tells a scanner which advisories to
try and tells a client nothing it needs (RFC 9110 §10.2.4 makes the header
optional).
"""

from __future__ import annotations

import json
import re
from typing import Any

from attrs import frozen
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web import http
from twisted.web.http_headers import Headers


@frozen
class HTTPLimits:
    """
    The limits on one HTTP request, from the C{[http]} table of the
    configuration.
    """

    #: Bytes in the request line or in one header line (without its CRLF).
    max_line_length: int = 8192
    #: Header fields in one request.
    max_headers: int = 100
    #: Bytes in the whole head: the request line and every header line,
    #: each with its CRLF.
    max_head_size: int = 16384
    #: Seconds from the first byte of a request (from the connection, for
    #: the first) to the end of its head.
    head_timeout: float = 10.0
    #: Seconds from the end of the head to the end of the body.
    body_timeout: float = 30.0


#: The reason phrases of the answers written here (twisted.web's table has
#: no 431, and an old spelling of 408).
_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
}

#: RFC 9110 §7.2: Host = uri-host [ ":" port ], uri-host (RFC 3986 §3.2.2)
#: an IP-literal in brackets, an IPv4 address or a reg-name (which may be
#: empty); nothing else, no userinfo.
_HOST = re.compile(rb"(?:\[[0-9A-Za-z._~!$&'()*+,;=:%-]+\]|[0-9A-Za-z._~!$&'()*+,;=%-]*)(?::[0-9]*)?")

#: RFC 9110 §5.6.2: a token (a field name, a method).
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
#: RFC 9110 §5.1, §5.5: a field line as the one-pass reader takes it,
#: after the CRLF that ends the line before: a token, a colon, optional
#: whitespace, a value without NUL, CR or LF (twisted.web refuses those;
#: its trailing whitespace is stripped apart).  Each match starts at a
#: CRLF, so a head whose CRLFs are as many as its matches has no other
#: line.
_FIELDS = re.compile(rb"\r\n(" + _TOKEN + rb"):[ \t]*([^\x00\r\n]*)")
#: RFC 9112 §3: method SP request-target SP HTTP-version, as the one-pass
#: reader takes it (HTTP/1.1 only; a target of visible ASCII).
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.1")

#: The most digits of a C{Content-Length} read: no body this server
#: takes is nearly that long, and Python's C{int()} raises on a string of
#: digits past C{sys.get_int_max_str_digits()}, which twisted.web would
#: raise out of C{dataReceived}, dropping the connection without an
#: answer.  A longer one is refused with 400 (RFC 9112 §6.3: a length the
#: recipient cannot read is invalid framing).
MAX_LENGTH_DIGITS = 18

# Where the connection is in the request it is reading.
# Between requests only the idle timeout applies (also to the unfinished
# start of a pipelined request that came in the chunk of the one answered,
# until its next byte or line).
_IDLE = "idle"
_HEAD = "head"  # reading a request line and headers, under head_timeout
_BODY = "body"  # reading a body, under body_timeout
_ANSWERING = "answering"  # the request is with the application


class CCServerChannel(http.HTTPChannel):
    """
    An L{http.HTTPChannel} that answers the requests it refuses and puts
    deadlines on the head and the body of each request.  Its site gives
    the limits (C{site.limits}, an L{HTTPLimits}) and the reactor.

    Everything is done through the overridable methods of
    L{twisted.protocols.basic.LineReceiver} and L{http.HTTPChannel}
    (C{connectionMade}, C{dataReceived}, C{lineReceived},
    C{lineLengthExceeded}, C{allHeadersReceived}, C{allContentReceived},
    C{requestDone}, C{connectionLost}) and their public attributes
    (C{clearLineBuffer}, C{line_mode}, C{paused}, C{persistent},
    C{requests}, C{length}), but one private method: see
    L{_respondToBadRequestAndDisconnect}.
    """

    #: not C{_log}, which would replace twisted.web's own logger of the
    #: channel (a private name), moving its messages to this namespace
    _channel_log = Logger()

    site: Any
    limits: HTTPLimits = HTTPLimits()
    _phase = _IDLE
    #: The connection's one timer for its head and body deadlines: reset
    #: for each, not cancelled and made anew (a callLater and a
    #: cancellation per deadline were a share of a request's cost).
    _deadline: IDelayedCall | None = None
    #: What the timer times ("head", "body") and its length, or None while
    #: it times nothing (a request with the application, or none begun):
    #: it then does nothing when it fires.
    _deadline_part: str | None = None
    _deadline_seconds = 0.0
    _refused = False
    #: Lines and bytes of the head read so far (ours: twisted.web's own
    #: counters are private).
    _head_lines = 0
    _head_size = 0
    #: The connection's local address, asked of the socket once.
    _host: Any = None
    #: The idle timer (L{setTimeout}), made once for the connection, and
    #: whether it is on: off, it does nothing when it fires.
    _idle: IDelayedCall | None = None
    _idle_on = False
    #: What the head being read says of its framing: the request line's
    #: HTTP version, its Host values, whether it has Transfer-Encoding.
    _request_version = b""
    _hosts: tuple[bytes, ...] = ()
    _transfer_encoding = False

    def getHost(self) -> Any:
        """
        twisted.web asks every request for it (C{Request.__init__}), and
        each time the transport calls C{getsockname()}: a system call per
        request for an address that never changes while the connection
        lives.
        """
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def connectionMade(self) -> None:
        self.limits = getattr(self.site, "limits", self.limits)
        # twisted.web's own checks stay as a backstop at the same limits;
        # ours (in lineReceived) come first and answer 431.
        self.MAX_LENGTH = self.limits.max_line_length
        self.maxHeaders = self.limits.max_headers
        self.totalHeadersSize = self.limits.max_head_size
        super().connectionMade()
        self._start_head()

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            # The answer is written and the connection closing: whatever
            # else the client sends is not read.
            return
        if (
            self._phase != _ANSWERING
            and self._head_size == 0
            and self.line_mode
            and self.persistent
            and not self.paused
        ):
            # At the start of a request (but for a part of its first line
            # LineReceiver may hold): whole requests are read in one pass.
            data = self._whole_requests(self.clearLineBuffer() + data)
        if not data:
            return
        if self._phase == _IDLE and data:
            self._start_head()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if self._phase == _IDLE:
            # A pipelined request read in the same chunk as the one just
            # answered: its bytes never came back through dataReceived.
            self._start_head()
        if self._head_lines == 0 and not line:
            # The one empty line some clients send after a body, before the
            # next request line: twisted.web skips it (and refuses a second).
            super().lineReceived(line)
            return
        if self._head_lines and line and line[:1] in b" \t":
            # RFC 9112 §5.2: a server MUST either reject obs-fold with 400
            # or replace it with spaces.  twisted.web does the latter, so
            # "Content-Length:\r\n 5" is a length of 5 here and none for a
            # proxy that reads it differently: a request smuggled past it.
            self.refuse(400, "obsolete line folding is not accepted (RFC 9112 section 5.2)")
            return
        self._head_size += len(line) + len(self.delimiter)
        if line:
            self._head_lines += 1
            self._framing_line(line)
            if self._refused:
                return
        if self._head_size > self.limits.max_head_size:
            self.refuse(
                431, f"the request head is larger than {self.limits.max_head_size} bytes"
            )
            return
        if self._head_lines - 1 > self.limits.max_headers:
            self.refuse(
                431, f"the request has more than {self.limits.max_headers} header fields"
            )
            return
        super().lineReceived(line)

    def _whole_requests(self, data: bytes) -> bytes:
        """
        Hand on every whole request at the start of C{data}, each read in
        one pass (L{_whole_request}); what is left, for the line-by-line
        reader.
        """
        while data:
            used = self._whole_request(data)
            if used == 0:
                break
            data = data[used:]
            if self._refused or self._phase == _ANSWERING or not self.persistent:
                # refused, or the request is with the application (what
                # follows waits in twisted.web's buffer), or the connection
                # is to close after its answer
                break
        return data

    def _whole_request(self, data: bytes) -> int:
        """
        Read one whole request at the start of C{data} in one pass, as the
        line-by-line reader (L{lineReceived}) would read it, and hand it
        on: how many bytes it took, or 0 for anything this does not read
        (a head or body not complete in C{data}, a limit reached, anything
        unusual or refused), which the line-by-line reader then reads and
        answers as ever.

        It takes HTTP/1.1 with exactly one valid C{Host}, at most one
        C{Content-Length} (digits), no C{Transfer-Encoding}, no C{Expect},
        no folded line, no NUL, bare CR or LF, each line and the head
        within their limits.  The request line still goes through
        twisted.web's C{lineReceived}, which makes the request; the fields
        go straight into its headers; the rest is twisted.web's own
        C{allHeadersReceived} and C{allContentReceived}, as after the last
        line.
        """
        end = data.find(b"\r\n\r\n")
        limits = self.limits
        if end < 0 or end + 4 > limits.max_head_size:
            return 0
        head = data[:end]
        fields_count = head.count(b"\r\n")
        if (
            fields_count > limits.max_headers
            # no NUL, no CR or LF but in CRLFs
            or b"\x00" in head
            or head.count(b"\r") != fields_count
            or head.count(b"\n") != fields_count
        ):
            return 0
        if end > limits.max_line_length and any(
            len(line) > limits.max_line_length for line in head.split(b"\r\n")
        ):
            return 0
        first_end = head.find(b"\r\n") if fields_count else end
        first = head[:first_end]
        if _REQUEST_LINE.fullmatch(first) is None:
            return 0
        fields = _FIELDS.findall(head, first_end)
        if len(fields) != fields_count:
            return 0  # a line that is no field: folded, no colon, a bad name
        if b" \r\n" in head or b"\t\r\n" in head or head.endswith((b" ", b"\t")):
            fields = [(name, value.rstrip(b" \t")) for name, value in fields]
        host = None
        length = -1
        for name, value in fields:
            size = len(name)
            if size == 4 and name.lower() == b"host":
                if host is not None or _HOST.fullmatch(value) is None:
                    return 0
                host = value
            elif size == 14 and name.lower() == b"content-length":
                if length >= 0 or len(value) > MAX_LENGTH_DIGITS or not value.isdigit():
                    return 0
                length = int(value)
            elif (size == 17 and name.lower() == b"transfer-encoding") or (
                size == 6 and name.lower() == b"expect"
            ):
                return 0
        body_start = end + 4
        if host is None or len(data) - body_start < length:
            return 0
        length = max(length, 0)
        super().lineReceived(first)
        if self._refused:
            return len(data)
        headers = self.requests[-1].requestHeaders
        for name, value in fields:
            headers.addRawHeader(name, value)
        self.length = length
        self._deadline_part = None
        self._phase = _BODY
        super().allHeadersReceived()
        if length:
            self.requests[-1].handleContentChunk(data[body_start : body_start + length])
        self.allContentReceived()
        return body_start + length

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        L{LineReceiver} calls this for a line over C{MAX_LENGTH}, where it
        would close the connection without an answer.
        """
        what = "request line" if self._head_lines == 0 else "header line"
        self.refuse(
            431, f"a {what} is longer than {self.limits.max_line_length} bytes"
        )

    def _framing_line(self, line: bytes) -> None:
        """
        Note what a line of the head says of the request's framing: the
        request line's version, a C{Host} or C{Transfer-Encoding} field;
        refuse a C{Content-Length} longer than L{MAX_LENGTH_DIGITS}.
        (No field is folded: folding is refused before this is asked.)
        """
        if self._head_lines == 1:
            self._request_version = line.rpartition(b" ")[2]
            return
        # the name's length first: lower-casing every name costs more
        colon = line.find(b":")
        if colon == 4 and line[:4].lower() == b"host":
            self._hosts += (line[5:].strip(b" \t"),)
        elif colon == 17 and line[:17].lower() == b"transfer-encoding":
            self._transfer_encoding = True
        elif (
            colon == 14
            and len(line) - 15 > MAX_LENGTH_DIGITS
            and line[:14].lower() == b"content-length"
            and len(line[15:].strip(b" \t")) > MAX_LENGTH_DIGITS
        ):
            self.refuse(
                400,
                f"the Content-Length is not a length of at most {MAX_LENGTH_DIGITS} digits "
                "(RFC 9112 section 6.3)",
            )

    def _framing_problem(self) -> str | None:
        """
        Why the head just read cannot be answered (RFC 9112 §3.2, §6.1), or
        None.
        """
        if self._transfer_encoding and self._request_version != b"HTTP/1.1":
            # §6.1: "MUST treat the message as if the framing is faulty,
            # even if a Content-Length is present, and close the connection"
            return "Transfer-Encoding in an HTTP/1.0 request (RFC 9112 section 6.1)"
        if len(self._hosts) > 1:
            return "the request has more than one Host header (RFC 9112 section 3.2)"
        if not self._hosts:
            if self._request_version == b"HTTP/1.1":
                return "an HTTP/1.1 request needs a Host header (RFC 9112 section 3.2)"
            return None
        if _HOST.fullmatch(self._hosts[0]) is None:
            return "the Host header is not a host[:port] (RFC 9112 section 3.2)"
        return None

    def allHeadersReceived(self) -> None:
        problem = self._framing_problem()
        self._head_lines = self._head_size = 0
        self._request_version, self._hosts, self._transfer_encoding = b"", (), False
        if problem is not None:
            # twisted.web's lineReceived calls allContentReceived next when
            # there is no body: it finds the request refused.
            self.refuse(400, problem)
            return
        self._deadline_part = None
        self._phase = _BODY
        super().allHeadersReceived()
        if self.length != 0 and not self._refused:
            self._arm("body", self.limits.body_timeout)

    def allContentReceived(self) -> None:
        if self._refused:
            return
        self._deadline_part = None
        self._phase = _ANSWERING
        super().allContentReceived()

    def requestDone(self, request: http.Request) -> None:
        # Before super(): it hands the pipelined bytes read meanwhile back
        # to dataReceived, which starts the next request's head deadline.
        self._phase = _IDLE
        super().requestDone(request)

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        """
        Every answer's head, without the C{Server} header twisted.web sets
        on every request (see the module docstring).
        """
        if isinstance(headers, Headers):
            headers.removeHeader(b"server")
        super().writeHeaders(version, code, reason, headers)

    def connectionLost(self, reason: Any = None) -> None:
        self._cancel_deadline()
        super().connectionLost(reason)
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def setTimeout(self, period: int | None) -> int | None:
        """
        L{TimeoutMixin.setTimeout}: the idle timeout becomes C{period}
        seconds from now, or with None is off; answers the period it had.

        twisted.web turns it off for each request, once its body is in,
        and on again once its answer is done.  L{TimeoutMixin} cancels its
        timer and makes a new one each time: a cancellation and a
        C{callLater} for every request, a share of a small request's cost
        (bench/README.md, run M).  Here the connection has one timer,
        reset; off, it does nothing when it fires.
        """
        previous, self.timeOut = self.timeOut, period
        self._idle_on = period is not None
        if period is not None:
            call = self._idle
            if call is not None and call.active():
                call.reset(period)
            else:
                self._idle = self.callLater(period, self._idle_passed)
        return previous

    def resetTimeout(self) -> None:
        """
        L{TimeoutMixin.resetTimeout}: a byte came; the idle timeout, if on,
        starts again.
        """
        call, period = self._idle, self.timeOut
        if self._idle_on and call is not None and period is not None and call.active():
            call.reset(period)

    def _idle_passed(self) -> None:
        self._idle = None
        if self._idle_on:
            self.timeoutConnection()

    def refuse(self, code: int, description: str) -> None:
        """
        Answer C{code} with an OAuth-style JSON error and close the
        connection, reading nothing more from it.  Only for a request that
        has no answer yet (one being read).
        """
        if self._refused:
            return
        self._refused = True
        self._cancel_deadline()
        body = json.dumps(
            {"error": "invalid_request", "error_description": description},
            separators=(",", ":"),
        ).encode()
        assert self.transport is not None
        self.transport.writeSequence(
            [
                b"HTTP/1.1 %d %s\r\n" % (code, _REASONS[code]),
                b"Content-Type: application/json\r\n",
                b"Cache-Control: no-store\r\n",
                b"Content-Length: %d\r\n" % len(body),
                b"Connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        # The idle timeout (not reset any more: dataReceived reads nothing)
        # aborts the connection should the client never read the answer.
        self.loseConnection()

    def _respondToBadRequestAndDisconnect(self) -> None:
        """
        The adapter to a private API of twisted.web (26.x), the channel's
        one reach (the others are listed in docs/architecture.md, "Private
        APIs"): L{http.HTTPChannel} calls this method for
        every malformed request it finds (bad request line, header without
        a colon, bad name, NUL/CR/LF in a value, bad or repeated
        C{Content-Length}, unknown C{Transfer-Encoding}, broken chunks) and
        writes a bare C{400} without a body.  Here it is the same 400 with
        an OAuth error body.  tests/test_http_channel.py
        (C{PrivateAPITests}) fails if twisted.web stops calling it.
        """
        self.refuse(400, "the request is not valid HTTP/1.1 (RFC 9112)")

    def _start_head(self) -> None:
        self._phase = _HEAD
        self._arm("head", self.limits.head_timeout)

    def _arm(self, part: str, seconds: float) -> None:
        """
        Time C{part}: the connection's timer set C{seconds} from now (made
        once, then reset: a later time costs the reactor nothing until it
        comes).
        """
        self._deadline_part, self._deadline_seconds = part, seconds
        call = self._deadline
        if call is not None and call.active():
            call.reset(seconds)
        else:
            self._deadline = self.site.reactor.callLater(seconds, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._deadline = None
        part, self._deadline_part = self._deadline_part, None
        if part is not None:
            self._timed_out(part, self._deadline_seconds)

    def _cancel_deadline(self) -> None:
        self._deadline_part = None
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _timed_out(self, part: str, seconds: float) -> None:
        self._cancel_deadline()
        peer = self.transport.getPeer() if self.transport is not None else None
        self._channel_log.info(
            "Request {part} from {peer} not complete within {seconds}s: 408",
            part=part,
            peer=str(peer),
            seconds=seconds,
        )
        self.refuse(408, f"the request {part} did not arrive within {seconds:g} seconds")
