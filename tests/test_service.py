"""
The service's lifetime: start-up order and a clean stop.
"""

from __future__ import annotations

import stat

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from ccserver.config import Config, StoreConfig
from ccserver.handlers.registered_scope import RegisteredScopeHandler
from ccserver.keys import KeyEncryptor
from ccserver.stores.memory import MemoryStore
from ccserver.tap import CCServerService, loose_mode, warn_if_not_private
from tests.helpers import ServerTestCase, temp_dir

#: What the files hold in these tests: never logged.
SECRET = "file-contents-never-logged-0123456789"


class StopTests(ServerTestCase):
    def test_stop_waits_for_requests_in_flight(self) -> None:
        """
        A stop closes the store only once the requests in flight are done.
        """
        closed: list[bool] = []
        self.store.close = lambda: closed.append(True) or succeed(None)  # type: ignore[method-assign]
        assert self.service.site is None
        self.service.site = self.site
        self.site.in_flight = 1
        self.service.running = 1
        stopping = self.service.stopService()
        self.clock.advance(1)
        self.assertNoResult(stopping)
        self.assertEqual(closed, [])
        self.site.in_flight = 0
        self.clock.advance(0.1)
        self.successResultOf(stopping)
        self.assertEqual(closed, [True])

    def test_stop_gives_up_after_grace(self) -> None:
        self.service.site = self.site
        self.site.in_flight = 1
        self.service.running = 1
        stopping = self.service.stopService()
        self.clock.pump([1.0] * 29)
        self.assertNoResult(stopping)
        self.clock.pump([0.05] * 100)
        self.successResultOf(stopping)


class ExposedSecretsTests(SynchronousTestCase):
    """
    Files of secrets that already let their group or others in, and a
    master token on the command line: one warning line each at start,
    naming the file and what to run, never what the file holds.
    """

    def setUp(self) -> None:
        self.folder = temp_dir(self)
        self.database = self.folder / "ccserver.db"
        self.key_file = self.folder / "ccserver.key-encryption-key"
        self.token_file = self.folder / "ccserver.master-token"
        for path in (self.database, self.key_file, self.token_file):
            path.write_text(SECRET)

    def service(self, master_token_on_command_line: bool = False) -> CCServerService:
        return CCServerService(
            reactor=Clock(),
            config=Config(store=StoreConfig(url=f"sqlite:///{self.database}")),
            store=MemoryStore(),
            handler=RegisteredScopeHandler(),
            master_token_digest="0" * 64,
            encryptor=KeyEncryptor.ephemeral(),
            master_token_file=self.token_file,
            master_token_on_command_line=master_token_on_command_line,
        )

    def warnings(self, service: CCServerService) -> list[str]:
        with capturedLogs() as events:
            service.warn_about_exposed_secrets()
        self.assertTrue(all(event["log_level"] == LogLevel.warn for event in events))
        lines = [formatEvent(event) for event in events]
        for line in lines:
            self.assertNotIn(SECRET, line)
        return lines

    def test_loose_mode(self) -> None:
        path = self.folder / "file"
        path.write_text("x")
        for mode, expected in [
            (0o600, None),
            (0o400, None),
            (0o700, None),
            (0o644, 0o644),
            (0o640, 0o640),
            (0o620, 0o620),
            (0o604, 0o604),
            (0o601, 0o601),
        ]:
            path.chmod(mode)
            self.assertEqual(loose_mode(path), expected, oct(mode))
        self.assertIsNone(loose_mode(self.folder / "missing"))

    def test_warning_for_0644(self) -> None:
        self.database.chmod(0o644)
        with capturedLogs() as events:
            warn_if_not_private(Logger(), "database", self.database)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"], LogLevel.warn)
        self.assertEqual(
            formatEvent(events[0]),
            f"The database {self.database.resolve()} is open to its group or others "
            f"(mode 0644): run chmod 600 {self.database.resolve()}",
        )
        self.assertEqual(stat.S_IMODE(self.database.stat().st_mode), 0o644)

    def test_no_warning_for_0600(self) -> None:
        self.database.chmod(0o600)
        with capturedLogs() as events:
            warn_if_not_private(Logger(), "database", self.database)
        self.assertEqual(events, [])

    def test_each_file_named(self) -> None:
        for path in (self.database, self.key_file, self.token_file):
            path.chmod(0o640)
        lines = self.warnings(self.service())
        self.assertEqual(len(lines), 3)
        for what, path, line in zip(
            ("database", "key-encryption key", "master-token file"),
            (self.database, self.key_file, self.token_file),
            lines,
            strict=True,
        ):
            self.assertIn(f"The {what} {path.resolve()} ", line)
            self.assertIn(f"mode 0640): run chmod 600 {path.resolve()}", line)

    def test_private_files_quiet(self) -> None:
        for path in (self.database, self.key_file, self.token_file):
            path.chmod(0o600)
        self.assertEqual(self.warnings(self.service()), [])

    def test_only_the_loose_one(self) -> None:
        for path in (self.database, self.key_file, self.token_file):
            path.chmod(0o600)
        self.key_file.chmod(0o604)
        lines = self.warnings(self.service())
        self.assertEqual(len(lines), 1)
        self.assertIn(str(self.key_file.resolve()), lines[0])

    def test_master_token_on_command_line(self) -> None:
        for path in (self.database, self.key_file, self.token_file):
            path.chmod(0o600)
        lines = self.warnings(self.service(master_token_on_command_line=True))
        self.assertEqual(len(lines), 1)
        self.assertIn("--master-token on the command line", lines[0])
        self.assertIn("CCSERVER_MASTER_TOKEN", lines[0])
