"""
A connection to Redis, and a pool of them that makes each lost one again by
itself: txredisapi's pool (L{txredisapi.RedisFactory}, a C{ClientService}
per connection, with a backoff), with this module's protocol, which

  - sends C{AUTH} and C{SELECT} itself and drops a connection on which
    either fails, to be made again later: txredisapi's own stops the pool
    for good at such a failure, and a Redis that answers late while it
    starts, or C{LOADING} while it reads its append-only file, would then
    never be used again;
  - with Sentinel, asks the server its C{ROLE} and drops the connection
    unless it is the primary: a sentinel's answer may be out of date;
  - offers L{RedisProtocol.replicated}: a command, then C{WAIT} on the same
    connection, so that a write is answered only once replicas have it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

import txredisapi
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from ccserver.errors import StoreUnavailable

#: The longest wait between two attempts to reconnect, in seconds: a Redis
#: back from a restart is used again within this.
RECONNECT_MAX_DELAY = 2.0

#: The same with Sentinel, where an attempt lasts until a primary is
#: reached or the store's timeout (L{ccserver.stores.sentinel.SentinelEndpoint}):
#: the next one goes soon.
SENTINEL_RECONNECT_MAX_DELAY = 0.5

F = TypeVar("F", bound=Callable[..., Any])


def _own_connection(method: F) -> F:
    """
    Mark a protocol method as txredisapi marks its "blocking" commands
    (C{BLPOP}, C{MULTI}): its L{txredisapi.ConnectionHandler} then gives it
    a connection to itself, off the pool's queue until it answers, so that
    the other commands do not queue behind it (nor run between a write and
    its C{WAIT}).

    The adapter to a private API of txredisapi (1.4), the Redis store's
    one reach (docs/architecture.md, "Private APIs"): the mark is what txredisapi's private
    C{_blocking_command} decorator sets, used here as it is, so the mark
    stays whatever txredisapi calls it.  tests/test_store_redis.py
    (C{OwnConnectionTests}) fails if its handler stops honouring it.
    """
    marked: F = txredisapi._blocking_command(release_on_callback=True)(method)
    return marked


class RedisProtocol(txredisapi.RedisProtocol):  # type: ignore[misc]
    """
    txredisapi's protocol, but a connection whose set-up fails (C{AUTH},
    C{SELECT}, or with L{RedisFactory.primary_only} a C{ROLE} other than
    master) is dropped and made again later, instead of stopping the pool
    for good.

    txredisapi calls C{factory.stopTrying()} when AUTH or SELECT fails, for
    any reason: a reply that comes late while Redis starts, a C{LOADING}
    reply while it reads its append-only file.  The store would then never
    recover from a restart.  So this protocol does both itself, with the
    factory's password and database, and on failure aborts the connection,
    which the pool's C{ClientService} makes anew after its backoff.
    """

    _log = Logger()

    def __init__(
        self, *args: Any, password: str | None = None, dbid: int | None = None, **kwargs: Any
    ) -> None:
        # Kept from the base class, whose connectionMade() then has neither
        # to send.
        super().__init__(*args, password=None, dbid=None, **kwargs)
        self._setup_password = password
        self._setup_dbid = dbid

    @inlineCallbacks
    def connectionMade(self) -> Generator[Deferred[Any], Any, None]:
        try:
            if self._setup_password is not None:
                reply = yield self.auth(self._setup_password, self.username)
                if isinstance(reply, Exception):
                    raise reply
            if self._setup_dbid is not None:
                reply = yield self.select(self._setup_dbid)
                if isinstance(reply, Exception):
                    raise reply
            if self.factory.primary_only:
                role = yield self.execute_command("ROLE")
                if not role or role[0] != "master":
                    peer = self.transport.getPeer()
                    raise NotPrimary(
                        f"{peer.host}:{peer.port} is a {role[0] if role else 'server'}, "
                        "not the primary"
                    )
        except Exception as e:
            # AUTH's error reply never repeats the password.
            self.factory.set_up_failed(str(e))
            self.transport.abortConnection()
            return
        self.factory.set_up()
        yield super().connectionMade()

    @_own_connection
    def replicated(
        self, command: str, *args: Any, replicas: int, timeout: float, **kwargs: Any
    ) -> Deferred[Any]:
        """
        Run C{command} (the name of one of this protocol's methods), then
        C{WAIT} on this same connection until C{replicas} replicas have
        acknowledged every write it made, or C{timeout} seconds.  WAIT
        answers how many did; fewer than C{replicas} is
        L{StoreUnavailable}: the write is on the primary, but a failover
        now could lose it, so it is not to be answered as done.

        WAIT goes only once the command has answered: a script the server
        had not cached (C{NOSCRIPT}) is sent again by C{eval}, and that
        second command is the write.
        """
        d: Deferred[Any] = getattr(self, command)(*args, **kwargs)

        def wait(result: Any) -> Deferred[Any]:
            waited: Deferred[Any] = self.execute_command(
                "WAIT", str(replicas), str(max(1, round(timeout * 1000)))
            )

            def acknowledged(count: Any) -> Any:
                if int(count) < replicas:
                    raise StoreUnavailable(
                        f"a write was acknowledged by {int(count)} of {replicas} "
                        f"replicas within {timeout:g} s"
                    )
                return result

            return waited.addCallback(acknowledged)

        return d.addCallback(wait)


class _ConnectionQueue(txredisapi.PeekableQueue):  # type: ignore[misc]
    """
    The pool's idle connections, into which a connection that died while a
    command had it to itself is not put back.

    txredisapi's queue hands it to every command waiting for a connection,
    and each of them then removes it from the queue: all but the first
    raised C{ValueError}, and when a server died under load some requests
    got a 500 instead of a 503 (a C{WAIT} has its connection to itself).
    """

    def put(self, connection: Any) -> None:
        if connection.connected:
            super().put(connection)


class NotPrimary(Exception):
    """
    A server reached through the sentinels is not (or no longer) the primary.
    """


class RedisFactory(txredisapi.RedisFactory):  # type: ignore[misc]
    """
    A pool of L{RedisProtocol} connections, made again after a backoff of
    at most C{maxDelay} seconds whenever one is lost.

    @ivar primary_only: keep a connection only to a server whose C{ROLE}
        is master.
    """

    protocol = RedisProtocol
    initialDelay = 0.1
    maxDelay = RECONNECT_MAX_DELAY
    primary_only = False
    #: the last connection set-up error logged
    setup_error: str | None = None

    _log = Logger()

    def retryDelay(self, attempt: int) -> float:
        if self.primary_only and attempt <= 1:
            # at once: each attempt asks the sentinels again, and a
            # failover is the likely reason the connection went
            return 0.0
        delay: float = super().retryDelay(attempt)
        return delay

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connectionQueue = _ConnectionQueue()

    @inlineCallbacks
    def getConnection(self, peek: bool = False) -> Generator[Deferred[Any], Any, Any]:
        """
        A live connection of the pool, as txredisapi's own, but a dead one
        found in the queue is dropped only if it is still there (and
        without a log line each time).
        """
        if not self.size and (self.stopped or not self.reconnect):
            raise txredisapi.ConnectionError("Not connected")
        queue = self.connectionQueue
        while True:
            connection = yield (queue.peek() if peek else queue.get())
            if connection.connected:
                return connection
            if peek and connection in queue.pending:
                queue.remove(connection)

    def set_up_failed(self, error: str) -> None:
        """
        Log a failed set-up once, until it changes or a set-up succeeds: a
        wrong password would otherwise log a line per connection every few
        seconds.
        """
        if self.setup_error != error:
            self.setup_error = error
            self._log.warn("Redis connection set-up failed, will retry: {error}", error=error)

    def set_up(self) -> None:
        self.setup_error = None

    def drop_connections(self, keep: tuple[str, int] | None = None) -> int:
        """
        Close every connection (but those to C{keep}, a host and port): each
        is made again at once, where the endpoint now points.  Returns how
        many were closed.
        """
        dropped = 0
        for connection in list(self.pool):
            peer = connection.transport.getPeer()
            if keep is None or (peer.host, peer.port) != keep:
                connection.transport.loseConnection()
                dropped += 1
        return dropped


def make_pool(
    endpoint: Any,
    *,
    size: int,
    timeout: float,
    dbid: int | None,
    username: str | None,
    password: str | None,
    primary_only: bool = False,
    factory_class: type[RedisFactory] = RedisFactory,
) -> RedisFactory:
    """
    Start a lazy pool of C{size} connections made through C{endpoint};
    its C{handler} takes commands at once (they wait for a connection).
    """
    factory = factory_class(
        str(endpoint),
        dbid,
        size,
        isLazy=True,
        handler=txredisapi.ConnectionHandler,
        charset="utf-8",
        password=password,
        # abort a connection on which a reply does not come: it is then
        # made anew instead of holding up every later command
        replyTimeout=timeout,
        # otherwise txredisapi turns numeric-looking strings into numbers
        convertNumbers=False,
        username=username,
    )
    if primary_only:
        factory.primary_only = True
        factory.maxDelay = SENTINEL_RECONNECT_MAX_DELAY
    factory.startConnecting(endpoint)
    return factory
