"""
The files the server makes on its first start, beside its database: the
master token, the key-encryption key, and the SQLite file itself (so that
it is made readable only by its owner).

The daemon layer (L{ccserver.tap}, L{ccserver.admin}) calls these before
anything listens; nothing below it touches the file system for secrets.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from attrs import frozen
from cryptography.fernet import Fernet
from twisted.logger import Logger

from ccserver import credentials
from ccserver.config import KEY_ENCRYPTION_KEY_ENV, Config, resolve
from ccserver.errors import ConfigError
from ccserver.keys import KeyEncryptor
from ccserver.stores import data_dir, sqlite_path

MASTER_TOKEN_FILE = "ccserver.master-token"
KEY_ENCRYPTION_KEY_FILE = "ccserver.key-encryption-key"


@frozen
class FirstStart:
    """
    What the first-start files hold, ready for the server.

    @ivar master_token_digest: the digest of the master token.
    @ivar master_token_file: the file it came from (None if configured).
    @ivar encryptor: encrypts private signing keys at rest.
    @ivar fresh_key_file: the key-encryption key file if it was made now
        (removed again if the store's keys turn out to need another key).
    """

    master_token_digest: str
    master_token_file: Path | None
    encryptor: KeyEncryptor
    fresh_key_file: Path | None = None


def prepare(config: Config) -> FirstStart:
    """
    Make (or read) every first-start file for C{config}.

    @raise ConfigError: a file holds something unusable.
    @raise OSError: a file cannot be read or made.
    """
    private_sqlite_file(config.store.url)
    digest, path = master_token(config)
    encryptor, fresh = key_encryption(config)
    return FirstStart(digest, path, encryptor, fresh)


def private_sqlite_file(url: str) -> None:
    """
    Make a new SQLite database file readable only by its owner: it holds
    digests and encrypted keys.  (SQLite gives its -wal and -shm files the
    same mode.)
    """
    if not url.startswith("sqlite:"):
        return
    try:
        os.close(os.open(sqlite_path(url), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def _make_private_file(path: Path, content: bytes) -> None:
    """
    Write C{content} to a new file (mode 0600); fail if it exists, so that
    two processes starting together never overwrite each other's secret.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content)


def master_token(config: Config) -> tuple[str, Path | None]:
    """
    The digest of the master token: the configured one, or the one kept in
    a file (mode 0600) beside the database, made on first start.

    @return: the digest, and the file it came from (None if configured).
    """
    if config.master_token is not None:
        return credentials.digest(config.master_token), None
    path = data_dir(config.store.url) / MASTER_TOKEN_FILE
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = credentials.new_secret()
        _make_private_file(path, (token + "\n").encode())
    if len(token) < 16:
        raise ConfigError(f"master token file {str(path)!r}: holds fewer than 16 characters")
    return credentials.digest(token), path


def encryptor_from_file(path: Path) -> tuple[KeyEncryptor, bool]:
    """
    Read the key-encryption key from C{path}, or make it there (mode 0600)
    if there is none.

    @return: the encryptor, and whether the file was made now.
    @raise ValueError: the file holds no Fernet key.
    """
    try:
        with open(path, "rb") as f:
            return KeyEncryptor.from_key(f.read().strip()), False
    except FileNotFoundError:
        pass
    key = Fernet.generate_key()
    _make_private_file(path, key + b"\n")
    return KeyEncryptor.from_key(key), True


def key_encryption_key_path(config: Config) -> Path | None:
    """
    The configured key-encryption key file, or None for a memory store with
    no file configured (its keys die with it: an ephemeral key will do).
    """
    if config.store.url.startswith("memory:") and config.keys.encryption_key_file is None:
        return None
    base = data_dir(config.store.url)
    return resolve(config.keys.encryption_key_file or KEY_ENCRYPTION_KEY_FILE, base)


def key_encryptor(config: Config) -> KeyEncryptor:
    """
    The encryptor of the configured key-encryption key (see
    L{key_encryption}).
    """
    return key_encryption(config)[0]


def key_encryption(config: Config) -> tuple[KeyEncryptor, Path | None]:
    """
    The encryptor of the key-encryption key: C{$CCSERVER_KEY_ENCRYPTION_KEY}
    if set (containers, where a file of its own would die with the
    container), else the configured file (made if missing); an ephemeral
    one for a memory store with neither.

    @return: the encryptor, and the file if it was made now (which the
        caller removes again if the store's keys need another key: see
        L{key_mismatch}).
    """
    if config.keys.encryption_key is not None:
        try:
            return KeyEncryptor.from_key(config.keys.encryption_key.strip().encode()), None
        except ValueError:
            # never the value itself: it is a secret
            raise ConfigError(
                f"{KEY_ENCRYPTION_KEY_ENV}: is not a Fernet key (32 bytes, URL-safe base64)"
            ) from None
    path = key_encryption_key_path(config)
    if path is None:
        return KeyEncryptor.ephemeral(), None
    try:
        encryptor, made = encryptor_from_file(path)
    except ValueError:
        raise ConfigError(f"[keys] encryption_key_file: {str(path)!r} holds no Fernet key") from None
    return encryptor, path if made else None


def key_mismatch(config: Config, store_url: str, fresh_key_file: Path | None) -> ConfigError:
    """
    The one line for a server whose key-encryption key cannot decrypt the
    signing keys already in its store: a second instance started against a
    shared store with a key of its own.  A key file made by this start is
    removed first, so that the next start, once the right key is in place,
    does not meet it.
    """
    if fresh_key_file is not None:
        try:
            fresh_key_file.unlink()
        except FileNotFoundError:
            pass
    path = key_encryption_key_path(config)
    where = f"{str(path)!r}" if path is not None else "[keys] encryption_key_file"
    given = "the key in " + KEY_ENCRYPTION_KEY_ENV if config.keys.encryption_key else where
    return ConfigError(
        f"the signing keys in {store_url} were encrypted with another key-encryption key "
        f"than {given}: copy the key file from an instance that uses this store to {where}, "
        f"or set {KEY_ENCRYPTION_KEY_ENV} to its content"
    )


def loose_mode(path: Path) -> int | None:
    """
    The permission bits of C{path} when its group or others have any, else
    None (also when there is no such file).
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    return mode if mode & (stat.S_IRWXG | stat.S_IRWXO) else None


def warn_if_not_private(log: Logger, what: str, path: Path) -> None:
    """
    One warning line when a file of secrets lets its group or others in.

    The server makes its files 0600, but leaves alone one that already
    exists (copied in, restored from a backup, made by hand): it says so
    and what to run, and never changes the mode behind the operator's back
    nor logs what the file holds.
    """
    mode = loose_mode(path)
    if mode is not None:
        log.warn(
            "The {what} {path} is open to its group or others (mode {mode}): "
            "run chmod 600 {path}",
            what=what,
            path=str(path.resolve()),
            mode=f"{mode:04o}",
        )


def private_files(config: Config, master_token_file: Path | None) -> list[tuple[str, Path]]:
    """
    The files of secrets this server reads: the SQLite database, the
    key-encryption key and the master-token file, those in use.
    """
    files = []
    if config.store.url.startswith("sqlite:"):
        files.append(("database", sqlite_path(config.store.url)))
    key_file = key_encryption_key_path(config)
    if key_file is not None and config.keys.encryption_key is None:
        files.append(("key-encryption key", key_file))
    if master_token_file is not None:
        files.append(("master-token file", master_token_file))
    return files


def warn_about_exposed_secrets(
    log: Logger, config: Config, master_token_file: Path | None, on_command_line: bool
) -> None:
    """
    Start-up warnings about secrets others may read; never the secrets.

    @param on_command_line: whether the master token came from
        C{--master-token}, which C{ps} shows every local user.
    """
    if on_command_line:
        log.warn(
            "--master-token on the command line can be read by every local user "
            "(ps, /proc): use CCSERVER_MASTER_TOKEN or the master-token file instead"
        )
    for what, path in private_files(config, master_token_file):
        warn_if_not_private(log, what, path)
