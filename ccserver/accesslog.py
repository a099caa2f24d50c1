"""
The access log: one line a request, in the combined log format without the
query string, written to standard output or a file (C{access_log_file}).

A request pays for its line's text and an append to a list: the lines are
written together by L{AccessLog.flush}, every L{FLUSH_SECONDS} (or at once
when L{FLUSH_BYTES} are waiting), and at a clean stop, after the last
request has been answered (L{AccessLogService}).  So a clean stop loses
nothing, and a process killed outright loses at most its last
L{FLUSH_SECONDS} of lines.  Through twisted.logger, as before, each line
was a log event rendered as JSON and flushed on its own: about a seventh
of a token request's CPU (bench/README.md, "Measurements behind design
choices").

Lines are written whole, so that the processes of C{--workers} may share
one destination: a file is opened with C{O_APPEND} (each write lands at its
end, whole), standard output is written in pieces of whole lines of at most
C{PIPE_BUF} bytes (a pipe keeps such a write whole among other writers').

Text a client chose (the path, the C{User-Agent}) is escaped
(L{ccserver.text.escape}), so that no control or bidi character reaches a
terminal; the address is the request's source (L{ccserver.web.source_address}:
the client's, behind a trusted proxy).
"""

from __future__ import annotations

import re

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ccserver.logfiles import Destination, FileDestination, StreamDestination, Writes
from ccserver.text import escape

#: How often waiting lines are written, at most.
FLUSH_SECONDS = 0.5
#: Waiting bytes that are written at once, without waiting for the timer.
FLUSH_BYTES = 64 * 1024
#: The most bytes kept while the destination cannot be written to; the
#: oldest lines go first beyond it (and how many went is logged).
MAX_WAITING_BYTES = 16 * 1024 * 1024
#: What C{access_log_file} takes for standard output.
STDOUT = "-"

_log = Logger()

# A path or an agent of printable ASCII but the double quote (the field's
# end) is written as it is; anything else is decoded and escaped.
_PLAIN = re.compile(rb"[\x20\x21\x23-\x7e]*").fullmatch


def _field(raw: bytes) -> bytes:
    if _PLAIN(raw) is not None:
        return raw
    text = raw.decode("ascii", "replace").replace('"', "'")
    return escape(text).encode("ascii", "backslashreplace")


def access_line(
    source: str,
    timestamp: str,
    method: bytes,
    uri: bytes,
    protocol: bytes,
    code: int,
    length: int,
    agent: bytes | None,
) -> bytes:
    """
    One request's line, ending in a new line: C{"source" - - [timestamp]
    "METHOD path PROTOCOL" code length "-" "agent"}, the path without its
    query (a client that put a secret in the URL must not have it logged),
    C{-} for no body or no agent.
    """
    path = _field(uri.split(b"?", 1)[0])
    return b'"%s" - - %s "%s %s %s" %d %s "-" "%s"\n' % (
        source.encode("ascii", "backslashreplace"),
        timestamp.encode("ascii"),
        _field(method),
        path,
        _field(protocol),
        code,
        b"%d" % length if length else b"-",
        b"-" if agent is None else _field(agent),
    )


def open_destination(path: str) -> Destination:
    """
    The destination C{access_log_file} names, opened now, so that a path
    that cannot be written to stops the start with one line.

    @raise OSError: the file cannot be opened.
    """
    return StreamDestination() if path == STDOUT else FileDestination(path)


class AccessLog:
    """
    Lines waiting to be written to a L{Destination}, written by L{flush}.
    """

    def __init__(self, destination: Destination) -> None:
        self.destination = destination
        self._lines: list[bytes] = []
        self._size = 0
        self._dropped = 0
        self._writes = Writes(
            destination,
            "the access log",
            f"its lines wait in memory (at most {MAX_WAITING_BYTES} bytes)",
        )

    def append(self, line: bytes) -> None:
        self._lines.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()

    @property
    def waiting(self) -> int:
        """
        Lines not yet written.
        """
        return len(self._lines)

    def flush(self) -> None:
        """
        Write every line waiting.  A destination that cannot be written to
        keeps them waiting (up to L{MAX_WAITING_BYTES}), and is logged once
        in the main log until it can again.
        """
        if not self._lines:
            return
        lines = self._lines
        written = self._writes.write(lines)
        rest = lines[written:]
        size = sum(map(len, rest)) if rest else 0
        dropped = 0
        while size > MAX_WAITING_BYTES:
            size -= len(rest[dropped])
            dropped += 1
        if dropped:
            rest = rest[dropped:]
            self._dropped += dropped
            _log.error(
                "Dropped {n} access log lines that could not be written to {destination} "
                "({total} so far)",
                n=dropped,
                destination=self.destination.description,
                total=self._dropped,
            )
        self._lines, self._size = rest, size

    def close(self) -> None:
        """
        Write what waits (for the last time) and close the destination.
        """
        self.flush()
        if self._lines:
            _log.error(
                "{n} access log lines could not be written to {destination} before it closed",
                n=len(self._lines),
                destination=self.destination.description,
            )
        self.destination.close()


class AccessLogService(Service):
    """
    Writes the access log every L{FLUSH_SECONDS} while it runs; once
    stopped (made a child of the store's service before the requests
    service, it stops after the last request has been answered), writes
    the rest and closes the destination.
    """

    def __init__(
        self, log: AccessLog, clock: IReactorTime, interval: float = FLUSH_SECONDS
    ) -> None:
        self.log = log
        self._timer = LoopingCall(log.flush)
        self._timer.clock = clock
        self._interval = interval

    def startService(self) -> None:
        super().startService()
        self._timer.start(self._interval, now=False)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._timer.running:
            self._timer.stop()
        self.log.close()
        return succeed(None)
