"""
Where the audit trail goes: the observer of L{ccserver.audit.publisher}
that writes each event as one JSON object a line to C{[audit] log}
(standard output, a file, or syslog), and the root service that keeps it
for as long as anything may emit.

The hot path pays for an event's emission and an append to a list: the
events are encoded and written by L{AuditWriter.flush}, every
L{FLUSH_SECONDS} (or at once when L{FLUSH_EVENTS} are waiting), and at a
clean stop, after the last request has been answered
(L{AuditTrailService}).  A process killed outright loses at most the
events of its last L{FLUSH_SECONDS}.

Lines are written whole, so that the processes of C{--workers} may share
one destination: a file is opened with C{O_APPEND} (each write lands at
its end, whole); standard output is written in pieces of at most
C{PIPE_BUF} bytes that each end a line (a pipe keeps such a write whole);
syslog gets one datagram a line.  Text is ASCII-escaped JSON: no control
or bidi character reaches a terminal or a log viewer raw.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from json import JSONEncoder
from json.encoder import encode_basestring_ascii
from typing import Any, Protocol

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, Logger, LogPublisher
from zope.interface import implementer

from ccserver import audit
from ccserver.errors import ConfigError
from ccserver.logfiles import Destination, FileDestination, StreamDestination, Writes

#: How often buffered events are written, at most.
FLUSH_SECONDS = 0.5
#: Buffered events that are written at once, without waiting for the timer.
#: Small, because a flush encodes and writes on the reactor's thread, and
#: every request waits behind it: at a full rate, half a second of events
#: in one flush was a stall that doubled the 99th percentile of issuance
#: (bench/README.md, "Run K").  The same work in small pieces costs the
#: same and delays nothing noticeably.
FLUSH_EVENTS = 128
#: The most lines kept while the destination cannot be written to; the
#: oldest go first beyond it (and how many went is logged).
MAX_BUFFERED = 100_000
#: A string field longer than this is cut (client-chosen text: a name, a
#: claimed client id); a list longer than L{MAX_ITEMS} too.
MAX_TEXT = 256
MAX_ITEMS = 100
#: What C{[audit] log} takes besides a file path.
STDOUT = "-"
SYSLOG = "syslog"

#: syslog facilities by name (RFC 5424 §6.2.1).
FACILITIES: Mapping[str, int] = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    **{f"local{n}": 16 + n for n in range(8)},
}
#: syslog's "informational" severity.
_INFO = 6

_log = Logger()


def token_issued_rate(setting: str) -> float:
    """
    The share of C{token.issued} events written, from C{[audit]
    token_issued}: C{"all"} (1), C{"off"} (0), or C{"sampled:F"}, F a
    fraction greater than 0 and at most 1.

    @raise ConfigError: anything else, naming the key.
    """
    if setting == "all":
        return 1.0
    if setting == "off":
        return 0.0
    kind, _, fraction = setting.partition(":")
    try:
        rate = float(fraction)
    except ValueError:
        rate = -1.0
    if kind != "sampled" or not 0 < rate <= 1:
        raise ConfigError(
            f'[audit] token_issued: {setting!r} is not "all", "off" or "sampled:F" '
            "(F a fraction of the events, greater than 0 and at most 1, e.g. sampled:0.01)"
        )
    return rate


# encoding


def _text(value: str) -> str:
    if len(value) > MAX_TEXT:
        return f"{value[:MAX_TEXT]}...({len(value) - MAX_TEXT} more characters)"
    return value


def _bounded(value: Any) -> Any:
    """
    A field's value as JSON takes it: a set as a sorted list, a tuple as a
    list, a mapping as a dict; long text and long lists cut.
    """
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else _text(value)
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _bounded(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        value = sorted(value)
    if len(value) > MAX_ITEMS:
        items = [_bounded(v) for v in list(value)[:MAX_ITEMS]]
        items.append(f"...({len(value) - MAX_ITEMS} more)")
        return items
    return [v if type(v) is str and len(v) <= MAX_TEXT else _bounded(v) for v in value]


# One encoder, made once (json.dumps with arguments makes one per call);
# ensure_ascii: every character beyond ASCII, control ones included, escaped.
_encode = JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode
#: a string as JSON, ASCII, as the encoder writes it (its C function)
_quoted: Callable[[str], str] = encode_basestring_ascii


class _Clock:
    """
    The start of each line, its RFC 3339 time, the second's text made once
    per second.
    """

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            self._text = time.strftime(
                f'{{"audit_version":{audit.SCHEMA_VERSION},"time":"%Y-%m-%dT%H:%M:%S',
                time.gmtime(second),
            )
        return f'{self._text}.{int((when - second) * 1000):03d}Z"'


def envelope_end(issuer: str, pid: int) -> str:
    """
    The members of every line of this process after C{source}.
    """
    return f',"issuer":{_encode(issuer)},"pid":{pid}'


def _strings(values: Sequence[Any]) -> str:
    """
    A list's JSON: short strings joined by hand, anything else through
    the encoder (L{_bounded}).
    """
    if len(values) <= MAX_ITEMS and all(type(v) is str and len(v) <= MAX_TEXT for v in values):
        return "[" + ",".join(map(_quoted, values)) + "]"
    return _encode(_bounded(values))


def encode(event: Mapping[str, Any], end: str, clock: Callable[[float], str]) -> bytes:
    """
    An audit event (as L{ccserver.audit.emit} made it) as its line: the
    envelope, then its fields (L{envelope_end} made C{end}).

    Strings, integers, sets and lists of strings, the most of every event,
    are written by hand with the C{json} module's own string quoting (a
    third less time than the encoder, byte for byte the same line);
    anything else goes through the encoder.
    """
    parts = [
        clock(event["log_time"]),
        ',"type":"',
        event["audit_type"],
        '","actor":',
        event["audit_actor"].json_text,
    ]
    source = event["audit_source"]
    if source is not None:
        parts += (',"source":', _quoted(_text(source)))
    parts.append(end)
    for name, value in event["audit_fields"].items():
        kind = type(value)
        if value is None:
            continue
        if kind is str:
            text = _quoted(value if len(value) <= MAX_TEXT else _text(value))
        elif kind is int:
            text = str(value)
        elif kind is frozenset or kind is set:
            text = _strings(sorted(value))
        elif kind is tuple or kind is list:
            text = _strings(value)
        else:
            text = _encode(_bounded(value))
        parts += (',"', name, '":', text)
    parts.append("}\n")
    return "".join(parts).encode("ascii")


# destinations


class SyslogDestination:
    """
    The local syslog daemon, one datagram a line (RFC 3164's format, as the
    C library's syslog() writes it), never waiting: when the daemon's queue
    is full, the rest waits for the next flush.
    """

    def __init__(self, address: str, facility: int, pid: int) -> None:
        self.description = f"syslog ({address})"
        self._address = address
        self._priority = facility * 8 + _INFO
        self._tag = f"ccserver-audit[{pid}]: ".encode("ascii")
        self._socket: socket.socket | None = None
        self._connect()

    def _connect(self) -> socket.socket:
        if self._socket is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.connect(self._address)
            except OSError:
                sock.close()
                raise
            sock.setblocking(False)
            self._socket = sock
        return self._socket

    def write(self, lines: Sequence[bytes]) -> int:
        sock = self._connect()
        stamp = time.strftime("%b %e %H:%M:%S").encode("ascii")
        head = b"<%d>%s %s" % (self._priority, stamp, self._tag)
        done = 0
        for line in lines:
            try:
                sock.send(head + line.rstrip(b"\n"))
            except BlockingIOError:
                break
            except OSError:
                # the daemon restarted: connect anew at the next flush
                self._socket = None
                sock.close()
                if done:
                    return done
                raise
            done += 1
        return done

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class Settings(Protocol):
    """
    C{[audit]}, as L{ccserver.config.AuditConfig} holds it.
    """

    @property
    def log(self) -> str: ...

    @property
    def syslog_facility(self) -> str: ...

    @property
    def syslog_socket(self) -> str: ...

    @property
    def token_issued_rate(self) -> float: ...


def open_writer(
    settings: Settings, issuer: str, *, stdout: int = 1, write_through: bool = False
) -> AuditWriter:
    """
    The writer of the audit trail to C{[audit] log}, its destination open
    (L{open_destination}); for the daemon, buffered; for the command,
    C{write_through}.

    @raise OSError: the file or syslog socket cannot be opened.
    """
    destination = open_destination(
        settings.log,
        facility=settings.syslog_facility,
        syslog_socket=settings.syslog_socket,
        stdout=stdout,
    )
    return AuditWriter(
        destination,
        issuer,
        token_issued_rate=settings.token_issued_rate,
        write_through=write_through,
    )


def open_destination(
    log: str, *, facility: str = "auth", syslog_socket: str = "/dev/log", stdout: int = 1
) -> Destination:
    """
    The destination C{[audit] log} names, opened now, so that a path that
    cannot be written to stops the start with one line.

    @param stdout: the stream C{"-"} means (the command writes its output
        to standard output, and its events to standard error).
    @raise OSError: the file or the syslog socket cannot be opened.
    """
    if log == STDOUT:
        return StreamDestination(stdout, "standard output" if stdout == 1 else "standard error")
    if log == SYSLOG:
        return SyslogDestination(syslog_socket, FACILITIES[facility], os.getpid())
    return FileDestination(log)


# the writer


@implementer(ILogObserver)
class AuditWriter:
    """
    Writes audit events (observed on L{ccserver.audit.publisher}) to a
    L{Destination}, one JSON object a line.

    Buffered (the events wait for L{flush}) until L{write_through} is set:
    then each is written at once (the command, which makes a few).
    C{token.issued} events are written at C{token_issued_rate} (1: all, 0:
    none, else a random share); every other event is always written.
    """

    def __init__(
        self,
        destination: Destination,
        issuer: str,
        *,
        token_issued_rate: float = 1.0,
        write_through: bool = False,
        chance: Callable[[], float] = random.random,
        pid: int | None = None,
    ) -> None:
        self.destination = destination
        self.issuer = issuer
        self.token_issued_rate = token_issued_rate
        self.write_through = write_through
        self._chance = chance
        self._pid = os.getpid() if pid is None else pid
        self._clock = _Clock()
        self._end = envelope_end(issuer, self._pid)
        #: events not yet encoded
        self._events: list[Mapping[str, Any]] = []
        #: lines that could not be written yet
        self._lines: deque[bytes] = deque()
        self._dropped = 0
        self._writes = Writes(
            destination,
            "the audit trail",
            f"its events wait in memory (at most {MAX_BUFFERED})",
        )

    def __call__(self, event: Mapping[str, Any]) -> None:
        if event["audit_type"] == audit.TOKEN_ISSUED and self.token_issued_rate < 1.0:
            rate = self.token_issued_rate
            if rate <= 0.0 or self._chance() >= rate:
                return
        self._events.append(event)
        if self.write_through:
            self.flush()
        elif len(self._events) >= FLUSH_EVENTS:
            self.flush()

    def flush(self) -> None:
        """
        Encode the events waiting, and write every line waiting.  A
        destination that cannot be written to keeps them waiting (up to
        L{MAX_BUFFERED} lines), and is logged once in the main log until it
        can again.
        """
        if self._events:
            events, self._events = self._events, []
            end, clock = self._end, self._clock
            self._lines.extend(encode(event, end, clock) for event in events)
        if not self._lines:
            return
        lines = list(self._lines)
        written = self._writes.write(lines)
        for _ in range(written):
            self._lines.popleft()
        overflow = len(self._lines) - MAX_BUFFERED
        if overflow > 0:
            for _ in range(overflow):
                self._lines.popleft()
            self._dropped += overflow
            _log.error(
                "Dropped {n} audit events that could not be written to {destination} "
                "({total} so far)",
                n=overflow,
                destination=self.destination.description,
                total=self._dropped,
            )

    @property
    def waiting(self) -> int:
        """
        Events and lines not yet written.
        """
        return len(self._events) + len(self._lines)

    def close(self) -> None:
        """
        Write what waits (for the last time) and close the destination.
        """
        self.flush()
        if self._lines:
            _log.error(
                "{n} audit events could not be written to {destination} before it closed",
                n=len(self._lines),
                destination=self.destination.description,
            )
        self.destination.close()


class AuditTrailService(MultiService):
    """
    The root of the daemon's service tree: it observes the audit events
    while its children run, writes them every L{FLUSH_SECONDS}, and once
    every child has stopped (the last request answered), writes the rest
    and closes the destination.
    """

    def __init__(
        self,
        writer: AuditWriter,
        clock: IReactorTime,
        publisher: LogPublisher = audit.publisher,
        interval: float = FLUSH_SECONDS,
    ) -> None:
        super().__init__()
        self.writer = writer
        self._publisher = publisher
        self._timer = LoopingCall(writer.flush)
        self._timer.clock = clock
        self._interval = interval

    def startService(self) -> None:
        self._publisher.addObserver(self.writer)
        self._timer.start(self._interval, now=False)
        super().startService()

    def stopService(self) -> Deferred[None]:
        stopped: Deferred[None] = super().stopService()

        def finished(result: object) -> object:
            if self._timer.running:
                self._timer.stop()
            self._publisher.removeObserver(self.writer)
            self.writer.close()
            return result

        stopped.addBoth(finished)
        return stopped
