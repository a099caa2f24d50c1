"""
The files made on first start (L{ccserver.firststart}).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ccserver.config import Config, StoreConfig
from ccserver.errors import ConfigError
from ccserver.firststart import MASTER_TOKEN_FILE, encryptor_from_file, prepare
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
