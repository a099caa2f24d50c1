"""
The audit trail's schema (L{ccserver.audit}) and its writer
(L{ccserver.auditlog}): events checked against the schema, encoded one
JSON object a line, buffered and written on a timer and at a clean stop,
thinned out for token.issued only, to standard output, a file or syslog.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import shutil
import socket
import tempfile
import time
import unittest
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ccserver import audit, auditlog
from ccserver.auditlog import (
    FLUSH_EVENTS,
    FLUSH_SECONDS,
    MAX_ITEMS,
    MAX_TEXT,
    AuditTrailService,
    AuditWriter,
    FileDestination,
    StreamDestination,
    SyslogDestination,
    open_destination,
    token_issued_rate,
)
from ccserver.config import load_config
from ccserver.errors import ConfigError
from ccserver.tap import Options, Process, makeService
from tests.helpers import MASTER_TOKEN, AuditEvents, temp_dir
from tests.process import CCServerProcess
from tests.test_service import register_over


class MemoryDestination:
    """
    A destination that keeps its lines; it can be made to fail.
    """

    description = "memory"

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.failing: OSError | None = None
        self.closed = False

    def write(self, lines: Sequence[bytes]) -> int:
        if self.failing is not None:
            raise self.failing
        self.lines.extend(lines)
        return len(lines)

    def close(self) -> None:
        self.closed = True

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


def issued(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "client_id": "c1",
        "grant_type": "client_credentials",
        "scope": frozenset({"write", "read"}),
        "audience": ("https://api.example",),
        "token_id": "jti-1",
        "token_format": "jwt",
        "expires_at": 1_700_003_600,
        "binding": "bearer",
        "auth_method": "client_secret_basic",
    }
    fields.update(changes)
    return fields


class SchemaTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.collected = AuditEvents(self)

    def test_emit(self) -> None:
        audit.emit(audit.CLIENT_DELETED, audit.MASTER_TOKEN, "192.0.2.1", client_id="c1")
        self.assertEqual(
            self.collected.events,
            [
                {
                    "type": "client.deleted",
                    "actor": {"type": "master_token"},
                    "source": "192.0.2.1",
                    "client_id": "c1",
                }
            ],
        )
        [event] = self.collected.raw
        self.assertEqual(event["log_namespace"], "ccserver.audit")

    def test_unknown_type(self) -> None:
        with self.assertRaises(audit.AuditSchemaError):
            audit.emit("client.frobbed", audit.SERVER)

    def test_unknown_field(self) -> None:
        with self.assertRaises(audit.AuditSchemaError) as caught:
            audit.emit(audit.CLIENT_DELETED, audit.SERVER, client_id="c1", secret="x")
        self.assertIn("secret", str(caught.exception))
        self.assertEqual(self.collected.raw, [])

    def test_required_field(self) -> None:
        with self.assertRaises(audit.AuditSchemaError):
            audit.emit(audit.CLIENT_DELETED, audit.SERVER)
        with self.assertRaises(audit.AuditSchemaError):
            audit.emit(audit.CLIENT_DELETED, audit.SERVER, client_id=None)

    def test_none_is_left_out(self) -> None:
        audit.emit(
            audit.CLIENT_SECRET_ROTATED, audit.SERVER, client_id="c1",
            previous_secret_expires_at=None,
        )
        self.assertNotIn("previous_secret_expires_at", self.collected.events[0])

    def test_unknown_actor(self) -> None:
        with self.assertRaises(audit.AuditSchemaError):
            audit.Actor("intruder")

    def test_actors(self) -> None:
        self.assertEqual(
            [
                audit.client("c1").as_json(),
                audit.registration_access_token("c1").as_json(),
                audit.initial_access_token("iat-1").as_json(),
                audit.cli("ops", "alice").as_json(),
                audit.cli("ops").as_json(),
            ],
            [
                {"type": "client", "client_id": "c1"},
                {"type": "registration_access_token", "client_id": "c1"},
                {"type": "initial_access_token", "id": "iat-1"},
                {"type": "cli", "user": "ops", "sudo_user": "alice"},
                {"type": "cli", "user": "ops"},
            ],
        )

    def test_only_token_issued_is_sampled(self) -> None:
        self.assertEqual(
            [name for name, event in audit.EVENTS.items() if event.sampled], [audit.TOKEN_ISSUED]
        )


class EncodingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.destination = MemoryDestination()
        self.writer = AuditWriter(
            self.destination, "https://as.example", write_through=True, pid=4242
        )
        publisher = LogPublisher(self.writer)
        audit.publisher.addObserver(publisher)
        self.addCleanup(audit.publisher.removeObserver, publisher)

    def test_line(self) -> None:
        """
        One JSON object a line: the envelope (version, RFC 3339 time, type,
        actor, source, issuer, pid), then the fields; a set as a sorted
        list, a tuple as a list.
        """
        before = time.time()
        audit.emit(audit.TOKEN_ISSUED, audit.client("c1"), "198.51.100.7", **issued())
        [line] = self.destination.lines
        self.assertTrue(line.endswith(b"\n"))
        self.assertEqual(line.count(b"\n"), 1)
        event = json.loads(line)
        self.assertEqual(
            list(event)[:7],
            ["audit_version", "time", "type", "actor", "source", "issuer", "pid"],
        )
        self.assertEqual(event["audit_version"], 1)
        self.assertRegex(event["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        written = time.mktime(time.strptime(event["time"][:19], "%Y-%m-%dT%H:%M:%S"))
        self.assertLess(abs(written - time.timezone - before), 2)
        self.assertEqual(event["actor"], {"type": "client", "client_id": "c1"})
        self.assertEqual(event["source"], "198.51.100.7")
        self.assertEqual((event["issuer"], event["pid"]), ("https://as.example", 4242))
        self.assertEqual(event["scope"], ["read", "write"])
        self.assertEqual(event["audience"], ["https://api.example"])

    def test_no_source(self) -> None:
        audit.emit(audit.CLIENT_DELETED, audit.cli("ops"), client_id="c1")
        self.assertNotIn("source", self.destination.events()[0])

    def test_text_is_escaped(self) -> None:
        """
        A client-chosen name with a newline, an escape sequence and a
        right-to-left override stays on its line, escaped.
        """
        name = "evil\n\x1b[2J\u202eemag"
        audit.emit(
            audit.CLIENT_REGISTERED, audit.MASTER_TOKEN, client_id="c1",
            client_name=name, privileged={},
        )
        [line] = self.destination.lines
        self.assertTrue(line.isascii())
        self.assertNotIn(b"\x1b", line)
        self.assertEqual(line.count(b"\n"), 1)
        self.assertEqual(json.loads(line)["client_name"], name)

    def test_long_text_and_lists_are_cut(self) -> None:
        audit.emit(
            audit.TOKEN_REFUSED, audit.UNAUTHENTICATED, error="invalid_client", status=401,
            claimed_client_id="x" * 10_000,
        )
        audit.emit(
            audit.CLIENT_UPDATED, audit.MASTER_TOKEN, client_id="c1",
            changed_fields=[f"f{n}" for n in range(1000)],
        )
        refused, updated = self.destination.events()
        self.assertEqual(
            refused["claimed_client_id"], "x" * MAX_TEXT + f"...({10_000 - MAX_TEXT} more characters)"
        )
        self.assertEqual(len(updated["changed_fields"]), MAX_ITEMS + 1)
        self.assertEqual(updated["changed_fields"][-1], f"...({1000 - MAX_ITEMS} more)")


class SamplingTests(SynchronousTestCase):
    def writer(self, rate: float, chances: list[float] | None = None) -> MemoryDestination:
        destination = MemoryDestination()
        draws = iter(chances or [])
        writer = AuditWriter(
            destination, "https://as.example", token_issued_rate=rate, write_through=True,
            chance=lambda: next(draws),
        )
        audit.publisher.addObserver(writer)
        self.addCleanup(audit.publisher.removeObserver, writer)
        return destination

    def emit_both(self) -> None:
        audit.emit(audit.TOKEN_ISSUED, audit.client("c1"), **issued())
        audit.emit(
            audit.TOKEN_REFUSED, audit.UNAUTHENTICATED, error="invalid_client", status=401
        )

    def test_off(self) -> None:
        """
        token_issued = "off" drops every token.issued event, and no other.
        """
        destination = self.writer(0.0)
        for _ in range(3):
            self.emit_both()
        self.assertEqual([e["type"] for e in destination.events()], ["token.refused"] * 3)

    def test_sampled(self) -> None:
        destination = self.writer(0.25, [0.1, 0.3, 0.2499, 0.25])
        for _ in range(4):
            self.emit_both()
        types = [e["type"] for e in destination.events()]
        self.assertEqual(types.count("token.issued"), 2)
        self.assertEqual(types.count("token.refused"), 4)

    def test_all(self) -> None:
        destination = self.writer(1.0)
        for _ in range(3):
            self.emit_both()
        self.assertEqual(len(destination.lines), 6)

    def test_settings(self) -> None:
        self.assertEqual(token_issued_rate("all"), 1.0)
        self.assertEqual(token_issued_rate("off"), 0.0)
        self.assertEqual(token_issued_rate("sampled:0.01"), 0.01)
        self.assertEqual(token_issued_rate("sampled:1"), 1.0)
        for wrong in ("none", "sampled", "sampled:0", "sampled:2", "sampled:x", "0.5", ""):
            with self.assertRaises(ConfigError) as caught:
                token_issued_rate(wrong)
            self.assertTrue(str(caught.exception).startswith("[audit] token_issued:"))


class BufferTests(SynchronousTestCase):
    """
    The writer's buffer: written on the timer, at a size, at a clean stop
    after every child service, and kept while the destination fails.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.destination = MemoryDestination()
        self.writer = AuditWriter(self.destination, "https://as.example")

    def emit(self, n: int = 1) -> None:
        for i in range(n):
            audit.emit(audit.CLIENT_READ, audit.MASTER_TOKEN, client_id=f"c{i}")

    def test_timer(self) -> None:
        service = AuditTrailService(self.writer, self.clock)
        service.startService()
        self.addCleanup(service.stopService)
        self.emit(3)
        self.assertEqual(self.destination.lines, [])
        self.clock.advance(FLUSH_SECONDS)
        self.assertEqual(len(self.destination.lines), 3)

    def test_full_buffer_is_written_at_once(self) -> None:
        service = AuditTrailService(self.writer, self.clock)
        service.startService()
        self.addCleanup(service.stopService)
        self.emit(FLUSH_EVENTS - 1)
        self.assertEqual(self.destination.lines, [])
        self.emit()
        self.assertEqual(len(self.destination.lines), FLUSH_EVENTS)

    def test_work_of_one_flush_is_bounded(self) -> None:
        """
        At a full rate the events are encoded and written a small batch at
        a time, as they come, not half a second of them in one go between
        two requests (a stall every request behind it waited for).
        """
        sizes: list[int] = []
        write = self.destination.write

        def counted(lines: Sequence[bytes]) -> int:
            sizes.append(len(lines))
            return write(lines)

        self.destination.write = counted  # type: ignore[method-assign]
        service = AuditTrailService(self.writer, self.clock)
        service.startService()
        self.addCleanup(service.stopService)
        self.emit(2500)
        self.assertEqual(len(self.destination.lines), 2500 - 2500 % FLUSH_EVENTS)
        self.assertLessEqual(max(sizes), 256)
        self.clock.advance(FLUSH_SECONDS)
        self.assertEqual(len(self.destination.lines), 2500)

    def test_clean_stop_loses_nothing(self) -> None:
        """
        The events of a child that stops slowly (requests in flight still
        answered) are written once it has stopped; then the writer stops
        observing and the destination is closed.
        """
        service = AuditTrailService(self.writer, self.clock)
        stopping: Deferred[None] = Deferred()

        class Slow(Service):
            def stopService(self) -> Deferred[None]:
                super().stopService()
                return stopping

        Slow().setServiceParent(service)
        service.startService()
        self.emit()
        stopped = service.stopService()
        self.emit()  # a request answered during the stop
        self.assertNoResult(stopped)
        self.assertEqual(self.destination.lines, [])
        stopping.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(len(self.destination.lines), 2)
        self.assertTrue(self.destination.closed)
        self.emit()
        self.assertEqual(len(self.destination.lines), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failing_destination_keeps_lines(self) -> None:
        audit.publisher.addObserver(self.writer)
        self.addCleanup(audit.publisher.removeObserver, self.writer)
        self.destination.failing = OSError(28, "No space left on device")
        self.emit(3)
        self.writer.flush()
        self.assertEqual(self.writer.waiting, 3)
        self.destination.failing = None
        self.emit()
        self.writer.flush()
        self.assertEqual([e["client_id"] for e in self.destination.events()], ["c0", "c1", "c2", "c0"])
        self.assertEqual(self.writer.waiting, 0)

    def test_failing_destination_is_bounded(self) -> None:
        self.patch(auditlog, "MAX_BUFFERED", 100)
        audit.publisher.addObserver(self.writer)
        self.addCleanup(audit.publisher.removeObserver, self.writer)
        self.destination.failing = OSError(28, "No space left on device")
        for _ in range(3):
            self.emit(50)
            self.writer.flush()
        self.assertEqual(self.writer.waiting, 100)


class DestinationTests(SynchronousTestCase):
    def test_file_appends(self) -> None:
        path = temp_dir(self) / "audit.log"
        path.write_bytes(b'{"old":1}\n')
        destination = open_destination(str(path))
        self.addCleanup(destination.close)
        self.assertIsInstance(destination, FileDestination)
        destination.write([b'{"a":1}\n', b'{"b":2}\n'])
        self.assertEqual(path.read_bytes(), b'{"old":1}\n{"a":1}\n{"b":2}\n')

    def test_new_file_mode(self) -> None:
        path = temp_dir(self) / "audit.log"
        old = os.umask(0o022)
        try:
            open_destination(str(path)).close()
        finally:
            os.umask(old)
        self.assertEqual(path.stat().st_mode & 0o777, 0o640)

    def test_file_moved_away_is_opened_anew(self) -> None:
        """
        logrotate moves the file away: the next write goes to a new file
        at the configured path.
        """
        folder = temp_dir(self)
        path = folder / "audit.log"
        destination = FileDestination(str(path))
        self.addCleanup(destination.close)
        destination.write([b"1\n"])
        path.rename(folder / "audit.log.1")
        destination.write([b"2\n"])
        self.assertEqual((folder / "audit.log.1").read_bytes(), b"1\n")
        self.assertEqual(path.read_bytes(), b"2\n")

    def test_unwritable_file(self) -> None:
        with self.assertRaises(OSError):
            open_destination(str(temp_dir(self) / "missing" / "audit.log"))

    def test_stream_keeps_lines_whole(self) -> None:
        """
        Standard output is written in pieces of whole lines of at most
        PIPE_BUF bytes, so that a pipe shared by the workers keeps them
        whole.
        """
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        lines = [b'{"n":"' + b"x" * (300 + n) + b'"}\n' for n in range(40)]
        writes: list[int] = []
        real_write = os.write

        def counting(fd: int, data: Any) -> int:
            writes.append(len(data))
            return real_write(fd, data)

        self.patch(os, "write", counting)
        destination = StreamDestination(write)
        self.assertEqual(destination.write(lines), 40)
        received = b""
        while len(received) < sum(map(len, lines)):
            received += os.read(read, 65536)
        self.assertEqual(received, b"".join(lines))
        self.assertTrue(all(size <= select.PIPE_BUF for size in writes))
        self.assertGreater(len(writes), 1)

    def test_syslog(self) -> None:
        folder = temp_dir(self)
        address = str(folder / "log")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(server.close)
        server.bind(address)
        destination = open_destination(
            "syslog", facility="authpriv", syslog_socket=address
        )
        self.addCleanup(destination.close)
        self.assertIsInstance(destination, SyslogDestination)
        self.assertEqual(destination.write([b'{"a":1}\n', b'{"b":2}\n']), 2)
        first, second = server.recv(4096), server.recv(4096)
        # authpriv (10) * 8 + info (6)
        self.assertTrue(first.startswith(b"<86>"))
        self.assertRegex(first, rb"^<86>\w{3} [ \d]\d \d\d:\d\d:\d\d ccserver-audit\[\d+\]: ")
        self.assertTrue(first.endswith(b': {"a":1}'))
        self.assertTrue(second.endswith(b': {"b":2}'))

    def test_syslog_full_queue_waits(self) -> None:
        """
        A daemon that does not read: the lines that do not fit wait for the
        next flush, and the reactor's thread never blocks.
        """
        folder = temp_dir(self)
        address = str(folder / "log")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(server.close)
        server.bind(address)
        destination = SyslogDestination(address, 4, 1)
        self.addCleanup(destination.close)
        writer = AuditWriter(destination, "https://as.example")
        audit.publisher.addObserver(writer)
        self.addCleanup(audit.publisher.removeObserver, writer)
        for n in range(5000):
            audit.emit(audit.CLIENT_READ, audit.SERVER, client_id=f"c{n}")
        writer.flush()
        self.assertGreater(writer.waiting, 0)
        server.setblocking(False)

        def drain() -> int:
            received = 0
            try:
                while True:
                    server.recv(65536)
                    received += 1
            except BlockingIOError:
                return received

        received = 0
        while writer.waiting:
            received += drain()
            writer.flush()
        self.assertEqual(received + drain(), 5000)

    def test_syslog_unreachable(self) -> None:
        with self.assertRaises(OSError):
            open_destination("syslog", syslog_socket=str(temp_dir(self) / "nobody"))


class ConfigTests(SynchronousTestCase):
    def load(self, text: str) -> Any:
        path = temp_dir(self) / "c.toml"
        path.write_text(text)
        return load_config({"config": str(path)}, {})

    def test_defaults(self) -> None:
        config = load_config({}, {})
        self.assertEqual(config.audit.log, "-")
        self.assertEqual(config.audit.token_issued_rate, 1.0)

    def test_settings(self) -> None:
        config = self.load(
            '[audit]\nlog = "syslog"\ntoken_issued = "sampled:0.5"\nsyslog_facility = "local3"\n'
        )
        self.assertEqual(
            (config.audit.log, config.audit.token_issued_rate, config.audit.syslog_facility),
            ("syslog", 0.5, "local3"),
        )

    def test_wrong(self) -> None:
        for text, message in [
            ('[audit]\ntoken_issued = "some"\n', "[audit] token_issued:"),
            ('[audit]\nsyslog_facility = "nope"\n', "[audit] syslog_facility:"),
            ("[audit]\nlog = 1\n", "audit.log: must be a string"),
            ('[audit]\nenabled = false\n', "audit.enabled: unknown key"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                self.load(text)
            self.assertIn(message, str(caught.exception))


def schema_tables() -> str:
    """
    The schema's part of docs/audit.md, as the schema in ccserver/audit.py
    says it: the envelope, the actors, each event type, each field.
    """
    out = ["#### The envelope\n", "| member | type | meaning |", "| --- | --- | --- |"]
    out += [f"| `{f.name}` | {f.kind} | {f.description} |" for f in audit.ENVELOPE]
    out += ["", "#### Actors\n", "| `actor.type` | who acted |", "| --- | --- |"]
    out += [f"| `{name}` | {text} |" for name, text in audit.ACTOR_TYPES.items()]
    out += ["", "#### Event types\n"]
    for event in audit.EVENTS.values():
        out += [f"`{event.name}`: {event.description}.", ""]
        line = "Required: " + (", ".join(f"`{n}`" for n in event.required) or "none")
        if event.optional:
            line += "; optional: " + ", ".join(f"`{n}`" for n in event.optional)
        out += [line + ".", ""]
    out += ["#### Fields\n", "| field | type | meaning |", "| --- | --- | --- |"]
    out += [f"| `{f.name}` | {f.kind} | {f.description} |" for f in audit.FIELDS.values()]
    return "\n".join(out) + "\n"


class DocsTests(SynchronousTestCase):
    def test_schema_documented(self) -> None:
        """
        docs/audit.md holds the schema exactly as ccserver/audit.py says
        it (regenerate the part with tests.test_audit.schema_tables()).
        """
        docs = (Path(__file__).parent.parent / "docs" / "audit.md").read_text()
        self.assertIn(schema_tables(), docs)


class DaemonTests(SynchronousTestCase):
    """
    The daemon's audit trail: opened before the start (a path that cannot
    be written to stops it in one line), observed while the tree runs,
    written at its stop.
    """

    def config(self, text: str) -> str:
        path = temp_dir(self) / "ccserver.toml"
        path.write_text(text)
        return str(path)

    def test_unwritable_file_stops_the_start(self) -> None:
        missing = temp_dir(self) / "missing" / "audit.log"
        parsed = Options()
        parsed.parseOptions(
            ["--config", self.config(f'[audit]\nlog = "{missing}"\n'), "--store", "memory://"]
        )
        err = io.StringIO()
        with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as raised:
            makeService(parsed, Process(MemoryReactorClock(), [], {}, 1, _StartUp()))
        self.assertEqual(raised.exception.code, 2)
        self.assertEqual(err.getvalue(), f"ccserver: {missing}: No such file or directory\n")

    def test_tree_writes_to_its_destination(self) -> None:
        """
        The tree's root observes the events while it runs (a registration,
        written on the timer), and writes the rest when it stops.
        """
        log = temp_dir(self) / "audit.log"
        reactor = MemoryReactorClock()
        parsed = Options()
        parsed.parseOptions(
            [
                "--config", self.config(f'[audit]\nlog = "{log}"\n'),
                "--store", "memory://", "--master-token", MASTER_TOKEN, "--listen", "tcp:8080",
            ]
        )
        service = makeService(parsed, Process(reactor, [], {}, 1, _StartUp()))
        self.assertIsInstance(service, AuditTrailService)
        service.startService()
        site = reactor.tcpServers[0][1]
        register_over(site)
        self.assertEqual(log.read_text(), "")
        reactor.advance(FLUSH_SECONDS)
        lines = log.read_text().splitlines()
        self.assertEqual(
            [json.loads(line)["type"] for line in lines],
            # the first key, its activation (told by the keys' reload at
            # the start), the registration
            ["key.created", "key.activated", "client.registered"],
        )
        register_over(site)
        self.successResultOf(service.stopService())
        self.assertEqual(len(log.read_text().splitlines()), 4)
        # stopped: no longer observed
        audit.emit(audit.CLIENT_READ, audit.SERVER, client_id="c1")
        self.assertEqual(len(log.read_text().splitlines()), 4)


class _StartUp:
    def ready(self) -> None:
        pass

    def failed(self, failure: object) -> None:
        raise AssertionError(failure)


@pytest.mark.process
class StandardOutputProcessTests(unittest.TestCase):
    def test_default_is_standard_output(self) -> None:
        """
        By default a real server writes its events to standard output,
        beside its own log, one JSON line each.
        """
        folder = Path(tempfile.mkdtemp(prefix="ccserver-audit-"))
        self.addCleanup(shutil.rmtree, folder, True)
        with CCServerProcess(folder, "--store", "memory://") as server:
            client = server.register(client_name="stdout")
            server.stop()
        lines = [line for line in server.read_log().splitlines() if line.startswith("{")]
        [registered] = [json.loads(line) for line in lines if '"client.registered"' in line]
        self.assertEqual(registered["client_id"], client["client_id"])
