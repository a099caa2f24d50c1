"""
Where the Redis store's connections go: what a C{redis://} or
C{redis+sentinel://} URL says (L{parse_url}), and the pool of connections
to the primary (L{PrimaryConnections}): at the one address of a
C{redis://} URL, or wherever the sentinels say the primary is now.

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
from urllib.parse import parse_qsl, unquote, urlsplit

from attrs import field, frozen
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ccserver.errors import ConfigError
from ccserver.stores.guard import mask_password
from ccserver.stores.redisprotocol import RedisFactory, make_pool
from ccserver.stores.sentinel import SentinelEndpoint, Sentinels

#: Where the sentinels listen unless the URL says otherwise.
SENTINEL_PORT = 26379


@frozen
class RedisAddress:
    """
    Where a store URL says Redis is, and how to log in.

    @ivar url: the URL, password masked.
    @ivar host: the server of a C{redis://} URL; None with Sentinel.
    @ivar sentinels: the sentinels of a C{redis+sentinel://} URL, in order.
    @ivar service: the name the sentinels know the primary by.
    """

    url: str
    dbid: int
    username: str | None
    password: str | None = field(repr=False)
    host: str | None = None
    port: int = 6379
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def sentinel(self) -> bool:
        return bool(self.sentinels)


def parse_url(url: str) -> RedisAddress:
    """
    The address of a C{redis://[[user]:password@]host[:port][/db]} or
    C{redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[?db=N]}
    URL (the sentinels' own password, if they ask for one, as
    C{sentinel_password=} in the query).

    @raise ConfigError: naming what is wrong, with the password masked.
    """
    masked = mask_password(url)
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "redis+sentinel"):
        raise ConfigError(f"[store] url: {masked!r} is not a redis:// URL")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) if user else None
        password = unquote(secret) if colon else None
    if parts.scheme == "redis":
        host, port = _host_and_port(hosts or "localhost", 6379, masked)
        db_text = parts.path.lstrip("/") or "0"
        if not db_text.isdigit():
            raise ConfigError(f"[store] url: the database of {masked!r} must be a number")
        if parts.query:
            raise ConfigError(f"[store] url: {masked!r}: a redis:// URL takes no query")
        return RedisAddress(
            masked, int(db_text), username, password, host=host or "localhost", port=port
        )
    sentinels = tuple(
        _host_and_port(one, SENTINEL_PORT, masked) for one in hosts.split(",") if one
    )
    if not sentinels:
        raise ConfigError(f"[store] url: {masked!r} names no sentinel")
    service = unquote(parts.path.lstrip("/"))
    if not service or "/" in service:
        raise ConfigError(
            f"[store] url: {masked!r}: the path is the service name the sentinels "
            "monitor: redis+sentinel://host:26379,host:26379/SERVICE?db=0"
        )
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - {"db", "sentinel_password"})
    if unknown:
        raise ConfigError(
            f"[store] url: {masked!r}: unknown parameter {unknown[0]!r} "
            "(a redis+sentinel:// URL takes db and sentinel_password)"
        )
    db_text = query.get("db", "0")
    if not db_text.isdigit():
        raise ConfigError(f"[store] url: the database of {masked!r} must be a number")
    return RedisAddress(
        masked,
        int(db_text),
        username,
        password,
        sentinels=sentinels,
        service=service,
        sentinel_password=query.get("sentinel_password") or None,
    )


def _host_and_port(text: str, default_port: int, masked: str) -> tuple[str, int]:
    """
    C{host}, C{host:port}, C{[v6]} or C{[v6]:port}.
    """
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
    if port_text and not port_text.isdigit() or not host:
        raise ConfigError(f"[store] url: bad host or port {text!r} in {masked!r}")
    port = int(port_text) if port_text else default_port
    if not 0 < port < 65536:
        raise ConfigError(f"[store] url: bad port in {masked!r}")
    return host, port




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

