"""
Stores, chosen by URL:

  - C{memory://}: in memory, gone at restart;
  - C{sqlite:///relative/path.db}, C{sqlite:////absolute/path.db}: embedded,
    durable, the default;
  - C{redis://[:password@]host:port/db}: Redis, for several instances;
  - C{postgresql://user:password@host:port/dbname}: PostgreSQL, likewise.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from twisted.internet.interfaces import IReactorCore, IReactorThreads, IReactorTime

from ccserver.interfaces import IStore
from ccserver.stores.urls import SCHEMES, check_url, data_dir, sqlite_path

__all__ = ["SCHEMES", "check_url", "data_dir", "sqlite_path", "store_from_url"]

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
