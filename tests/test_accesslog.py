"""
The access log (L{ccserver.accesslog}): its lines, the buffered writer
that writes them every L{FLUSH_SECONDS} and at a clean stop (nothing
lost), its destinations (standard output in whole lines, a file that
follows a rotation), a destination that fails, and C{access_log_file} in
a real C{twist ccserver} process.
"""

from __future__ import annotations

import os
import select
import signal
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
import requests
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ccserver.accesslog import (
    FLUSH_BYTES,
    FLUSH_SECONDS,
    MAX_WAITING_BYTES,
    AccessLog,
    AccessLogService,
    FileDestination,
    StreamDestination,
    access_line,
    open_destination,
)
from tests.helpers import ListDestination, basic
from tests.process import CCServerProcess, run_ccserver, wait_until

LINE = (
    b'"192.0.2.1" - - [03/Dec/2026:13:00:00 +0000] "POST /token HTTP/1.1" 200 120 "-" '
    b'"curl/8.0"\n'
)


def line(n: int = 0) -> bytes:
    return access_line("192.0.2.1", "[ts]", b"GET", b"/x/%d" % n, b"HTTP/1.1", 200, 5, None)


class LineTests(SynchronousTestCase):
    def test_plain(self) -> None:
        self.assertEqual(
            access_line(
                "192.0.2.1", "[03/Dec/2026:13:00:00 +0000]", b"POST", b"/token", b"HTTP/1.1",
                200, 120, b"curl/8.0",
            ),
            LINE,
        )

    def test_no_query_no_length_no_agent(self) -> None:
        """
        The query is never written (a secret sent in the URL stays out of
        the log); no body and no agent are C{-}.
        """
        self.assertEqual(
            access_line("::1", "[ts]", b"GET", b"/jwks.json?client_secret=s3cret", b"HTTP/1.1", 304, 0, None),
            b'"::1" - - [ts] "GET /jwks.json HTTP/1.1" 304 - "-" "-"\n',
        )

    def test_client_text_escaped(self) -> None:
        """
        The path and the agent are the client's: control and bidi
        characters are escaped, a double quote cannot end the field, and
        the line stays one line.
        """
        written = access_line(
            "192.0.2.1", "[ts]", b"GET", b"/a\x1b[31m\r\n\"b", b"HTTP/1.1", 404, 9,
            b'agent" \x07' + "\u202e".encode(),
        )
        self.assertEqual(written.count(b"\n"), 1)
        self.assertTrue(written.endswith(b"\n"))
        text = written.decode("ascii")
        self.assertIn("\\u001b[31m", text)
        self.assertIn("\\u0007", text)
        self.assertNotIn("\x1b", text)
        self.assertEqual(text.count('"'), 8, text)


class Failing:
    """
    A destination that fails until it is told to work, then keeps lines.
    """

    description = "a failing destination"

    def __init__(self) -> None:
        self.working = False
        self.lines: list[bytes] = []

    def write(self, lines: Sequence[bytes]) -> int:
        if not self.working:
            raise OSError(28, "No space left on device")
        self.lines.extend(lines)
        return len(lines)

    def close(self) -> None:
        pass


class WriterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.destination = ListDestination()
        self.log = AccessLog(self.destination)
        self.clock = Clock()
        self.service = AccessLogService(self.log, self.clock)

    def test_buffered_until_the_timer(self) -> None:
        self.service.startService()
        self.log.append(line(1))
        self.log.append(line(2))
        self.assertEqual(self.destination.lines, [])
        self.clock.advance(FLUSH_SECONDS)
        self.assertEqual(self.destination.lines, [line(1), line(2)])
        self.assertEqual(self.log.waiting, 0)
        self.service.stopService()

    def test_written_at_once_past_flush_bytes(self) -> None:
        big = line(0)
        count = FLUSH_BYTES // len(big) + 1
        for _ in range(count):
            self.log.append(big)
        self.assertEqual(len(self.destination.lines), count)

    def test_stop_writes_everything_and_closes(self) -> None:
        """
        A clean stop loses nothing: every line appended is written, in
        order, and the destination is closed.
        """
        self.service.startService()
        lines = [line(n) for n in range(1000)]
        for written in lines:
            self.log.append(written)
        self.service.stopService()
        self.assertEqual(self.destination.lines, lines)
        self.assertTrue(self.destination.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failing_destination_keeps_the_lines(self) -> None:
        """
        Lines that cannot be written wait (the failure logged once, and its
        end), and are written in order once they can be.
        """
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        failing = Failing()
        log = AccessLog(failing)
        log.append(line(1))
        log.flush()
        log.append(line(2))
        log.flush()
        self.assertEqual(log.waiting, 2)
        failing.working = True
        log.flush()
        self.assertEqual(failing.lines, [line(1), line(2)])
        texts = [e["log_format"] for e in events if "log_format" in e]
        self.assertEqual(sum("Cannot write the access log" in t for t in texts), 1, texts)
        self.assertEqual(sum("written to {destination} again" in t for t in texts), 1, texts)

    def test_waiting_bounded(self) -> None:
        """
        A destination that never comes back does not take the memory: past
        L{MAX_WAITING_BYTES} the oldest lines go, and how many is logged.
        """
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        log = AccessLog(Failing())
        big = b"x" * 1023 + b"\n"
        for _ in range(MAX_WAITING_BYTES // len(big) + 10):
            log.append(big)
        log.flush()
        self.assertLessEqual(log.waiting * len(big), MAX_WAITING_BYTES)
        self.assertTrue(any("Dropped" in e.get("log_format", "") for e in events))


class DestinationTests(SynchronousTestCase):
    def test_file_appends_and_follows_rotation(self) -> None:
        folder = Path(self.mktemp())
        folder.mkdir()
        path = folder / "access.log"
        path.write_bytes(b"before\n")
        destination = FileDestination(str(path))
        self.addCleanup(destination.close)
        self.assertEqual(destination.write([line(1)]), 1)
        os.rename(path, folder / "access.log.1")
        self.assertEqual(destination.write([line(2), line(3)]), 2)
        self.assertEqual((folder / "access.log.1").read_bytes(), b"before\n" + line(1))
        self.assertEqual(path.read_bytes(), line(2) + line(3))
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o640 & ~_umask())

    def test_directory_refused(self) -> None:
        with self.assertRaises(OSError):
            open_destination(self.mktemp() + "/missing/access.log")
        folder = self.mktemp()
        os.mkdir(folder)
        with self.assertRaises(OSError):
            open_destination(folder)

    def test_stream_whole_lines(self) -> None:
        """
        Standard output gets whole lines, in writes of at most PIPE_BUF
        bytes (which a pipe keeps whole among other writers').
        """
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        received: list[bytes] = []
        reader = threading.Thread(target=lambda: received.append(_read_all(read)))
        reader.start()
        lines = [b"%05d" % n + b"y" * (n % 300) + b"\n" for n in range(2000)]
        sizes: list[int] = []
        real_write = os.write

        def counted(fd: int, data: bytes) -> int:
            sizes.append(len(data))
            return real_write(fd, data)

        self.patch(os, "write", counted)
        try:
            self.assertEqual(StreamDestination(write).write(lines), len(lines))
        finally:
            os.close(write)
        reader.join(30)
        self.assertEqual(received, [b"".join(lines)])
        self.assertLessEqual(max(sizes), select.PIPE_BUF)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


@pytest.mark.process
@pytest.mark.parametrize("workers", [1, 2])
def test_access_log_file_nothing_lost_at_stop(tmp_path: Path, workers: int) -> None:
    """
    A real server with C{access_log_file}: every request answered before a
    clean stop (SIGTERM) has its line in the file, whole, none is on
    standard output; with C{--workers 2} too, both processes appending.
    """
    log = tmp_path / "access.log"
    (tmp_path / "ccserver.toml").write_text(f'access_log_file = "{log}"\nworkers = {workers}\n')
    server = CCServerProcess(tmp_path, "--config", str(tmp_path / "ccserver.toml"), "--master-token", "m" * 32)
    with server:
        client = server.register(scope="read")
        auth = basic(client["client_id"], client["client_secret"])
        session = requests.Session()
        count = 200
        for _ in range(count):
            response = session.post(
                server.url + "/token",
                data={"grant_type": "client_credentials"},
                headers={"Authorization": auth},
                timeout=10,
            )
            assert response.status_code == 200, response.text
        assert server.stop() == -signal.SIGTERM  # twist ends by the signal
    lines = log.read_bytes().splitlines()
    tokens = [entry for entry in lines if b'"POST /token HTTP/1.1" 200 ' in entry]
    assert len(tokens) == count, lines[-5:]
    assert all(entry.startswith(b'"127.0.0.1" - - [') for entry in lines), lines
    assert sum(b'"POST /client-reg HTTP/1.1" 201 ' in entry for entry in lines) == 1
    assert b"/token HTTP/1.1" not in server.log_path.read_bytes()


@pytest.mark.process
def test_access_log_file_written_while_running(tmp_path: Path) -> None:
    """
    The lines reach the file within the flush interval, without a stop.
    """
    log = tmp_path / "access.log"
    (tmp_path / "ccserver.toml").write_text(f'access_log_file = "{log}"\n')
    with CCServerProcess(tmp_path, "--config", str(tmp_path / "ccserver.toml"), "--master-token", "m" * 32) as server:
        requests.get(server.url + "/jwks.json", timeout=10)
        wait_until(lambda: log.exists() and b"GET /jwks.json" in log.read_bytes(), what="the line written")


@pytest.mark.process
def test_access_log_file_unwritable(tmp_path: Path) -> None:
    """
    A file that cannot be opened stops the start with one line.
    """
    (tmp_path / "ccserver.toml").write_text(f'access_log_file = "{tmp_path}/missing/access.log"\n')
    result = run_ccserver(
        "--config", str(tmp_path / "ccserver.toml"), "--master-token", "m" * 32,
        "--listen", "tcp:0:interface=127.0.0.1", cwd=tmp_path,
    )
    assert result.returncode == 2, result
    assert result.stderr.startswith("ccserver: ") and result.stderr.count("\n") == 1, result.stderr
    assert "missing/access.log" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
