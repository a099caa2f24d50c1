"""
The files made on first start (L{ccserver.firststart}).
"""

from __future__ import annotations

import stat

from twisted.logger import Logger, LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from ccserver.config import Config, StoreConfig
from ccserver.errors import ConfigError
from ccserver.firststart import (
    MASTER_TOKEN_FILE,
    encryptor_from_file,
    loose_mode,
    prepare,
    warn_about_exposed_secrets,
    warn_if_not_private,
)
from ccserver.keys import KeyDecryptionError, KeyEncryptor, generate_private_key
from tests.helpers import temp_dir


class FirstStartTests(SynchronousTestCase):
    def test_key_file_made_once_mode_0600(self) -> None:
        folder = temp_dir(self)
        first, made = encryptor_from_file(folder / "kek")
        self.assertTrue(made)
        second, made_again = encryptor_from_file(folder / "kek")
        self.assertFalse(made_again)
        self.assertEqual((folder / "kek").stat().st_mode & 0o777, 0o600)
        key = generate_private_key("ES256")
        from ccserver.model import StoredKey

        stored = StoredKey("k", "ES256", first.encrypt(key), 0, 0)
        self.assertEqual(second.decrypt(stored).private_numbers(), key.private_numbers())  # type: ignore[union-attr]
        with self.assertRaises(KeyDecryptionError):
            KeyEncryptor.ephemeral().decrypt(stored)

    def test_sqlite_files_private_and_kept(self) -> None:
        folder = temp_dir(self)
        config = Config(store=StoreConfig(url=f"sqlite:///{folder}/ccserver.db"))
        made = prepare(config)
        self.assertEqual(made.master_token_file, folder / MASTER_TOKEN_FILE)
        for name in ("ccserver.db", MASTER_TOKEN_FILE, "ccserver.key-encryption-key"):
            self.assertEqual((folder / name).stat().st_mode & 0o777, 0o600, name)
        again = prepare(config)
        self.assertEqual(again.master_token_digest, made.master_token_digest)

    def test_short_master_token_file_refused(self) -> None:
        folder = temp_dir(self)
        (folder / MASTER_TOKEN_FILE).write_text("short\n")
        with self.assertRaises(ConfigError):
            prepare(Config(store=StoreConfig(url=f"sqlite:///{folder}/ccserver.db")))

#: What the secret files hold in these tests: never in a log line.
SECRET = "not-to-be-logged-7f3a"


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

    def warnings(self, master_token_on_command_line: bool = False) -> list[str]:
        config = Config(store=StoreConfig(url=f"sqlite:///{self.database}"))
        with capturedLogs() as events:
            warn_about_exposed_secrets(
                Logger(), config, self.token_file, master_token_on_command_line
            )
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
        lines = self.warnings()
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
        self.assertEqual(self.warnings(), [])

    def test_only_the_loose_one(self) -> None:
        for path in (self.database, self.key_file, self.token_file):
            path.chmod(0o600)
        self.key_file.chmod(0o604)
        lines = self.warnings()
        self.assertEqual(len(lines), 1)
        self.assertIn(str(self.key_file.resolve()), lines[0])

    def test_master_token_on_command_line(self) -> None:
        for path in (self.database, self.key_file, self.token_file):
            path.chmod(0o600)
        lines = self.warnings(master_token_on_command_line=True)
        self.assertEqual(len(lines), 1)
        self.assertIn("--master-token on the command line", lines[0])
        self.assertIn("CCSERVER_MASTER_TOKEN", lines[0])
