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

from typing import Protocol
from urllib.parse import urlsplit

from twisted.internet.interfaces import IReactorCore, IReactorThreads, IReactorTime

from ccserver.interfaces import IStore
from ccserver.stores.urls import SCHEMES, check_url, data_dir, sqlite_path

__all__ = [
    "SCHEMES",
    "StoreSettings",
    "check_url",
    "data_dir",
    "sqlite_path",
    "store_from_settings",
    "store_from_url",
]

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
