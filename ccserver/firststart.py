"""
The files the server makes on its first start, beside its database: the
master token, the key-encryption key, and the SQLite file itself (so that
it is made readable only by its owner).

The daemon layer (L{ccserver.tap}, L{ccserver.admin}) calls these before
anything listens; nothing below it touches the file system for secrets.
"""

from __future__ import annotations

import os
from pathlib import Path

from attrs import frozen
from cryptography.fernet import Fernet

from ccserver import credentials
from ccserver.config import Config, resolve
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
    """

    master_token_digest: str
    master_token_file: Path | None
    encryptor: KeyEncryptor


def prepare(config: Config) -> FirstStart:
    """
    Make (or read) every first-start file for C{config}.

    @raise ConfigError: a file holds something unusable.
    @raise OSError: a file cannot be read or made.
    """
    private_sqlite_file(config.store.url)
    digest, path = master_token(config)
    return FirstStart(digest, path, key_encryptor(config))


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
            return KeyEncryptor(Fernet(f.read().strip())), False
    except FileNotFoundError:
        pass
    key = Fernet.generate_key()
    _make_private_file(path, key + b"\n")
    return KeyEncryptor(Fernet(key)), True


def key_encryptor(config: Config) -> KeyEncryptor:
    """
    The encryptor of the configured key-encryption key file (made if
    missing); an ephemeral one for a memory store with no file configured.
    """
    if config.store.url.startswith("memory:") and config.keys.encryption_key_file is None:
        return KeyEncryptor.ephemeral()
    base = data_dir(config.store.url)
    path = resolve(config.keys.encryption_key_file or KEY_ENCRYPTION_KEY_FILE, base)
    try:
        return encryptor_from_file(path)[0]
    except ValueError:
        raise ConfigError(f"[keys] encryption_key_file: {str(path)!r} holds no Fernet key") from None
