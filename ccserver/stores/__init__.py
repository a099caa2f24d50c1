"""
Stores, chosen by URL:

  - C{memory://}: in memory, gone at restart;
  - C{sqlite:///relative/path.db}, C{sqlite:////absolute/path.db}: embedded,
    durable, the default;
  - C{redis://[:password@]host:port/db}: Redis, for several instances;
  - C{redis+sentinel://[:password@]host:port[,host:port...]/service[?db=N]}:
    the same, its primary found (and followed through a failover) by Redis
    Sentinel;
  - C{postgresql://user:password@host:port/dbname}: PostgreSQL, likewise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from twisted.internet.interfaces import IReactorCore, IReactorThreads, IReactorTime

from ccserver.errors import ConfigError
from ccserver.interfaces import IStore
from ccserver.stores.guard import mask_password

SCHEMES = ("memory", "sqlite", "redis", "redis+sentinel", "postgresql")


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
            f"[store] url: unknown scheme in {mask_password(url)!r}; use one of "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    if scheme.startswith("redis"):
        from ccserver.stores.redisconnection import parse_url

        parse_url(url)
    if scheme == "sqlite":
        folder = sqlite_path(url).parent
        if not folder.is_dir():
            raise ConfigError(f"[store] url: the folder {str(folder)!r} does not exist")


class StoreSettings(Protocol):
    """
    What makes a store: the C{[store]} settings (L{ccserver.config.StoreConfig}).
    """

    @property
    def url(self) -> str: ...

    @property
    def timeout(self) -> float: ...

    @property
    def redis_wait_replicas(self) -> int | None: ...

    @property
    def redis_wait_timeout(self) -> float | None: ...


def store_from_settings(
    settings: StoreSettings, reactor: IReactorCore | IReactorTime | IReactorThreads
) -> IStore:
    """
    Make (but do not open) the store that C{settings} name.
    """
    return store_from_url(
        settings.url,
        reactor,
        timeout=settings.timeout,
        redis_wait_replicas=settings.redis_wait_replicas,
        redis_wait_timeout=settings.redis_wait_timeout,
    )


def store_from_url(
    url: str,
    reactor: IReactorCore | IReactorTime | IReactorThreads,
    *,
    timeout: float = 5.0,
    redis_wait_replicas: int | None = None,
    redis_wait_timeout: float | None = None,
) -> IStore:
    """
    Make (but do not open) the store that C{url} names.

    @param timeout: how long, in seconds, a store operation may take before
        it fails with L{ccserver.errors.StoreUnavailable}.
    @param redis_wait_replicas: Redis only: how many replicas must have a
        write before it is answered (L{ccserver.stores.redis.RedisStore}).
    @param redis_wait_timeout: Redis only: how long a write waits for them.
    """
    check_url(url)
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from ccserver.stores.memory import MemoryStore

        return MemoryStore()
    if scheme in ("redis", "redis+sentinel"):
        from ccserver.stores.redis import RedisStore

        return RedisStore.from_url(
            url,
            reactor,
            timeout=timeout,
            wait_replicas=redis_wait_replicas,
            wait_timeout=redis_wait_timeout,
        )
    from ccserver.stores.sql import SQLStore

    return SQLStore.from_url(url, reactor, timeout=timeout)
