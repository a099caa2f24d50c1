"""
Where the Redis store's connections go: the pool of connections to the
primary (L{PrimaryConnections}), at the one address of a C{redis://} URL,
or wherever the sentinels of a C{redis+sentinel://} URL say the primary is
now (what the URL says: L{ccserver.stores.urls.redis_address}).

A failover is followed three ways, whichever comes first:

  - a lost connection is made again (L{ccserver.stores.redisprotocol}):
    with Sentinel at once, each attempt asking the sentinels anew, and
    waiting for their announcement of a new primary while none can be
    reached (L{ccserver.stores.sentinel.SentinelEndpoint});
  - a sentinel's C{+switch-master} announcement drops every connection to
    another server than the new primary;
  - a C{READONLY} error reply (the server was demoted under a live
    connection: behind a virtual IP, or before the announcement came)
    drops every connection, to be made again where the primary now is.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ccserver.stores.redisprotocol import RedisFactory, make_pool
from ccserver.stores.sentinel import SentinelEndpoint, Sentinels
from ccserver.stores.urls import RedisAddress


class PrimaryConnections:
    """
    A pool of C{size} connections to the primary that C{address} names,
    made again by themselves whenever lost, each reply bounded by
    C{timeout} seconds.  L{open} starts it and returns txredisapi's handler,
    which takes commands at once (they wait for a connection).
    """

    _log = Logger()

    def __init__(
        self, address: RedisAddress, reactor: IReactorTime, *, size: int, timeout: float
    ) -> None:
        self.address = address
        self._reactor = reactor
        self._size = size
        self._timeout = timeout
        self._pool: RedisFactory | None = None
        self._sentinels: Sentinels | None = None
        #: the primary the sentinels last announced
        self._announced: tuple[str, int] | None = None

    def open(self) -> Any:
        address = self.address
        endpoint: Any
        if address.sentinel:
            assert address.service is not None
            self._sentinels = Sentinels(
                self._reactor,
                address.sentinels,
                address.service,
                self._timeout,
                address.sentinel_password,
                on_switch=self.switched,
            )
            self._sentinels.start()
            endpoint = SentinelEndpoint(self._reactor, self._sentinels)
        else:
            assert address.host is not None
            endpoint = HostnameEndpoint(
                self._reactor, address.host, address.port, timeout=self._timeout
            )
        self._pool = make_pool(
            endpoint,
            size=self._size,
            timeout=self._timeout,
            dbid=address.dbid,
            username=address.username,
            password=address.password,
            primary_only=address.sentinel,
        )
        return self._pool.handler

    def switched(self, primary: tuple[str, int]) -> None:
        """
        The sentinels made C{primary} (a host and port) the primary: drop
        the connections to any other server.
        """
        # every sentinel announces it: act (and log) once
        dropped = self._pool.drop_connections(keep=primary) if self._pool else 0
        if primary == self._announced:
            return
        self._announced = primary
        self._log.warn(
            "Sentinel: the primary of {service} is now {host}:{port}; "
            "{dropped} connections to the old one closed",
            service=self.address.service,
            host=primary[0],
            port=primary[1],
            dropped=dropped,
        )

    def demoted(self) -> None:
        """
        The server answered C{READONLY}: it is a replica now.  Drop every
        connection; each is made again where the primary is.
        """
        if self._pool is not None and self._pool.drop_connections():
            self._log.warn(
                "Store {url}: the server is read-only (a replica); reconnecting to the primary",
                url=self.address.url,
            )

    def close(self) -> Deferred[None]:
        """
        Stop reconnecting and close every connection (to the sentinels too).
        """
        pool, self._pool = self._pool, None
        sentinels, self._sentinels = self._sentinels, None
        closing: list[Deferred[Any]] = []
        if pool is not None:
            closing.append(pool.disconnect())
        if sentinels is not None:
            closing.append(sentinels.close())
        if not closing:
            return succeed(None)
        d = gatherResults(closing, consumeErrors=True)
        d.addTimeout(self._timeout, self._reactor)

        def closed(result: object) -> None:
            if isinstance(result, Failure):
                self._log.warn(
                    "Closing {url}: {reason}",
                    url=self.address.url,
                    reason=result.getErrorMessage(),
                )

        return d.addBoth(closed)

