"""
Redis Sentinel: where the primary of a service is now, and word of a
failover as soon as the sentinels make one.

  - L{SentinelEndpoint} connects to the primary the sentinels name: before
    every connection attempt it asks them all at once (C{SENTINEL
    GET-MASTER-ADDR-BY-NAME}) and takes the first answer; the connection
    then checks the server's C{ROLE} (L{ccserver.stores.redisprotocol}),
    since a sentinel cut off from the others may name an old primary.
  - L{Sentinels} keeps a connection to each sentinel for those questions,
    and one more subscribed to C{+switch-master}, on which the sentinels
    announce a new primary: the store then drops its connections to the
    old one at once, rather than at its next error.

txredisapi 1.6 has a Sentinel client (C{Sentinel.master_for}); this module
does not use it, because (as read in its source, and met in a failover
experiment):

  - its protocol sends C{AUTH} without waiting for the answer, and a wrong
    password then leaves a connection that is never usable nor closed: the
    pool hangs; and a failed C{SELECT} stops the pool for good;
  - its discovery waits, at every connection attempt, for a sentinel that
    reports a healthy master, for up to C{discovery_timeout} (10 s): all
    through a failover the attempts hang that long, and the promoted
    replica is reached up to that late;
  - it learns of a failover only when a connection is lost: a primary
    demoted while its clients stay connected (a manual C{SENTINEL
    FAILOVER}, a healed partition) keeps being written to, and every
    write fails with C{READONLY}, until something closes the connections;
  - its connections to the sentinels give up for good after one failed
    C{AUTH}, back off up to 10 s, and it calls the global reactor.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, cast

import txredisapi
from attrs import define, field
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
    gatherResults,
    inlineCallbacks,
)
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ccserver.stores.redisprotocol import RedisFactory, RedisProtocol, make_pool

#: The announcement of a new primary, on each sentinel's Pub/Sub:
#: C{<service> <old ip> <old port> <new ip> <new port>}.
SWITCH_CHANNEL = "+switch-master"

#: Seconds between two questions to the sentinels while no primary can be
#: reached and none is announced.
ASK_AGAIN = 0.25

#: Seconds a connection to the primary may take to be made: a LAN or a
#: region answers far sooner, and an address that does not answer at all
#: (an old primary's host that is gone) must not hold up the next attempt,
#: which may find the new one.
PRIMARY_CONNECT_TIMEOUT = 1.0


class NoPrimary(Exception):
    """
    No sentinel names a primary for the service (none answered, or none
    knows it).
    """


@define
class Sentinels:
    """
    The sentinels of a C{redis+sentinel://} URL: a connection to each for
    questions, and one to each subscribed to C{+switch-master}.

    @ivar on_switch: called with the new primary's host and port when a
        sentinel announces a failover of C{service}.
    """

    reactor: IReactorTime
    addresses: tuple[tuple[str, int], ...]
    service: str
    timeout: float
    password: str | None = field(repr=False)
    on_switch: Callable[[tuple[str, int]], None]
    _askers: list[RedisFactory] = field(factory=list, init=False)
    _watchers: list[RedisFactory] = field(factory=list, init=False)
    #: why no primary was found last, logged once until one is
    _no_primary: str | None = field(default=None, init=False)
    #: L{announcement}s waited for
    _waiting: list[Deferred[None]] = field(factory=list, init=False)
    #: what withdraws the questions of each L{primary} under way
    _questions: list[Callable[[], None]] = field(factory=list, init=False)
    closed: bool = field(default=False, init=False)

    _log = Logger()

    def start(self) -> None:
        for host, port in self.addresses:
            endpoint = HostnameEndpoint(self.reactor, host, port, timeout=self.timeout)
            self._askers.append(self._pool(endpoint, RedisFactory))
            watcher = cast(_SwitchFactory, self._pool(endpoint, _SwitchFactory))
            watcher.on_message = self._announced
            self._watchers.append(watcher)

    def _pool(self, endpoint: HostnameEndpoint, factory_class: type[RedisFactory]) -> RedisFactory:
        return make_pool(
            endpoint,
            size=1,
            timeout=self.timeout,
            dbid=None,
            username=None,
            password=self.password,
            factory_class=factory_class,
        )

    def primary(self) -> Deferred[tuple[str, int]]:
        """
        The primary's host and port, as the first sentinel to answer names
        it; fails with L{NoPrimary} once every sentinel has answered
        without one, or none has within the timeout.
        """
        questions: list[Deferred[Any]] = []

        def withdraw(_: object = None) -> None:
            # the questions still unanswered once it is decided (or the
            # attempt given up), so that none outlives it
            for question in questions:
                if not question.called:
                    question.cancel()

        cancelled = False

        def cancel(_: object) -> None:
            nonlocal cancelled
            cancelled = True
            withdraw()

        # cancelled, it fails with CancelledError, not NoPrimary
        result: Deferred[tuple[str, int]] = Deferred(cancel)
        waiting = len(self._askers)
        reasons: list[str] = []

        def answered(reply: Any, address: tuple[str, int]) -> None:
            if result.called:
                return
            if isinstance(reply, (list, tuple)) and len(reply) == 2 and str(reply[1]).isdigit():
                result.callback((str(reply[0]), int(reply[1])))
            else:
                failed(f"knows no service {self.service!r}", address)

        def failed(reason: str, address: tuple[str, int]) -> None:
            nonlocal waiting
            waiting -= 1
            reasons.append(f"{address[0]}:{address[1]} {reason}")
            if waiting == 0 and not (result.called or cancelled):
                result.errback(NoPrimary("no primary from the sentinels: " + "; ".join(reasons)))

        def error(failure: Failure, address: tuple[str, int]) -> None:
            if failure.check(txredisapi.ConnectionError, TimeoutError, CancelledError):
                reason = "did not answer"
            else:
                reason = f"{type(failure.value).__name__}: {failure.value}".rstrip(": ")
            failed(reason, address)

        for asker, address in zip(self._askers, self.addresses, strict=True):
            d = asker.handler.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
            d.addTimeout(min(self.timeout, PRIMARY_CONNECT_TIMEOUT), self.reactor)
            d.addCallbacks(answered, error, callbackArgs=(address,), errbackArgs=(address,))
            questions.append(d)
        self._questions.append(withdraw)

        def settled(outcome: object) -> object:
            self._questions.remove(withdraw)
            withdraw()
            return outcome

        result.addBoth(settled)
        return result.addCallbacks(self._found, self._not_found)

    def _found(self, primary: tuple[str, int]) -> tuple[str, int]:
        if self._no_primary is not None:
            self._no_primary = None
            self._log.info(
                "Sentinel: the primary of {service} is {host}:{port}",
                service=self.service,
                host=primary[0],
                port=primary[1],
            )
        return primary

    def _not_found(self, failure: Failure) -> Failure:
        reason = failure.getErrorMessage()
        if reason != self._no_primary:
            self._no_primary = reason
            self._log.warn("Sentinel: {reason}", reason=reason)
        return failure

    def announcement(self, within: float) -> Deferred[None]:
        """
        A Deferred that fires at the sentinels' next announcement of a new
        primary, or after C{within} seconds, whichever comes first.
        """
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        timer = self.reactor.callLater(within, _fire, d)

        def done(result: object) -> object:
            if timer.active():
                timer.cancel()
            if d in self._waiting:
                self._waiting.remove(d)
            return result

        return d.addBoth(done)

    def _announced(self, message: str) -> None:
        fields = str(message).split()
        if len(fields) == 5 and fields[0] == self.service and fields[4].isdigit():
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                _fire(d)
            self.on_switch((fields[3], int(fields[4])))

    def close(self) -> Deferred[None]:
        self.closed = True
        for withdraw in list(self._questions):
            withdraw()
        pools, self._askers, self._watchers = [*self._askers, *self._watchers], [], []
        d: Deferred[Any] = gatherResults([p.disconnect() for p in pools], consumeErrors=True)
        return d.addBoth(lambda _: None)


@implementer(IStreamClientEndpoint)
@define
class SentinelEndpoint:
    """
    Connects to the primary the sentinels name at the moment of each
    attempt.

    While there is none to reach (the sentinels name none, or one that does
    not accept connections: the dead primary, before they agree that it
    is), an attempt asks again at the sentinels' next announcement of a new
    primary, or L{ASK_AGAIN} seconds later, for up to the store's timeout
    before it fails: the promoted replica is reached within milliseconds of
    the announcement, not at the pool's next backoff.
    """

    reactor: Any
    sentinels: Sentinels

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, protocolFactory: IProtocolFactory) -> IProtocol:
        sentinels = self.sentinels
        deadline = self.reactor.seconds() + sentinels.timeout
        while True:
            try:
                host, port = await sentinels.primary()
                endpoint = HostnameEndpoint(
                    self.reactor, host, port, timeout=min(sentinels.timeout, PRIMARY_CONNECT_TIMEOUT)
                )
                protocol: IProtocol = await endpoint.connect(protocolFactory)
                return protocol
            except (NoPrimary, ConnectError, DNSLookupError):
                left = deadline - self.reactor.seconds()
                if left <= 0 or sentinels.closed:
                    raise
            await sentinels.announcement(min(left, ASK_AGAIN))

    def __str__(self) -> str:
        return f"sentinel:{self.sentinels.service}"


def _fire(d: Deferred[None]) -> None:
    if not d.called:
        d.callback(None)


class _SwitchWatcher(RedisProtocol, txredisapi.SubscriberProtocol):  # type: ignore[misc]
    """
    A connection to a sentinel, subscribed to C{+switch-master} once set up.
    """

    @inlineCallbacks
    def connectionMade(self) -> Generator[Deferred[Any], Any, None]:
        yield super().connectionMade()
        if not (self.connected and self._ready):
            return
        try:
            yield self.subscribe(SWITCH_CHANNEL)
        except txredisapi.ConnectionError:
            pass  # lost meanwhile: made again, and subscribed then
        except Exception as e:
            self.factory.set_up_failed(f"SUBSCRIBE {SWITCH_CHANNEL}: {e}")
            self.transport.abortConnection()

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        on_message = self.factory.on_message
        if str(channel) == SWITCH_CHANNEL and on_message is not None:
            on_message(str(message))


class _SwitchFactory(RedisFactory):
    protocol = _SwitchWatcher
    #: called with each C{+switch-master} message
    on_message: Callable[[str], None] | None = None
