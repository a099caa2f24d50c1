"""
Stores, chosen by URL:

  - C{memory://}: in memory, gone at restart;
  - C{sqlite:///relative/path.db}, C{sqlite:////absolute/path.db}: embedded,
    durable, the default;
  - C{redis://[:password@]host:port/db}: Redis, for several instances;
  - C{postgresql://user:password@host:port/dbname}: PostgreSQL, likewise.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from twisted.internet.interfaces import IReactorCore, IReactorThreads, IReactorTime

from ccserver.errors import ConfigError
from ccserver.interfaces import IStore

SCHEMES = ("memory", "sqlite", "redis", "postgresql")


def sqlite_path(url: str) -> Path:
    """
    The file of a C{sqlite:///...} URL: three slashes and a relative path,
    or four and an absolute one.
    """
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or rest == "/":
        raise ConfigError(
            f"[store] url: {url!r} is not sqlite:///relative.db or sqlite:////absolute.db"
        )
    return Path(rest[1:])


def data_dir(url: str) -> Path:
    """
    The folder for the files the server makes beside its database (the
    generated master token, the key-encryption key): the SQLite file's
    folder, otherwise the working folder.
    """
    if url.startswith("sqlite:"):
        return sqlite_path(url).parent
    return Path(".")


def check_url(url: str) -> None:
    """
    Raise L{ConfigError} unless C{url} names a store this server can open.
    """
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ConfigError(
            f"[store] url: unknown scheme in {url!r}; use one of "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    if scheme == "sqlite":
        folder = sqlite_path(url).parent
        if not folder.is_dir():
            raise ConfigError(f"[store] url: the folder {str(folder)!r} does not exist")


def store_from_url(
    url: str, reactor: IReactorCore | IReactorTime | IReactorThreads, *, timeout: float = 5.0
) -> IStore:
    """
    Make (but do not open) the store that C{url} names.

    @param timeout: how long, in seconds, a store operation may take before
        it fails with L{ccserver.errors.StoreUnavailable}.
    """
    check_url(url)
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from ccserver.stores.memory import MemoryStore

        return MemoryStore()
    if scheme == "redis":
        from ccserver.stores.redis import RedisStore

        return RedisStore.from_url(url, reactor, timeout=timeout)
    from ccserver.stores.sql import SQLStore

    return SQLStore.from_url(url, reactor, timeout=timeout)
