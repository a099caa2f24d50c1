"""
The Twisted services the daemon is made of, and L{service_tree}, which puts
the parts L{ccserver.assembly.assemble} made into them.  The tree is drawn
in docs/architecture.md ("The service tree").
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    FirstError,
    ensureDeferred,
    gatherResults,
    maybeDeferred,
)
from twisted.internet.defer import (
    TimeoutError as DeferredTimeout,
)
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from ccserver import firststart
from ccserver.accesslog import AccessLogService
from ccserver.assembly import Server
from ccserver.auditlog import AuditTrailService
from ccserver.interfaces import IStore
from ccserver.keys import KeyDecryptionError, Keyring
from ccserver.tls import tls_factory
from ccserver.tracing import Tracing
from ccserver.web import CCServerSite
from ccserver.workers import ParentWatch, WorkerPool

#: How often, at most, each process reloads the signing keys to follow
#: rotations made elsewhere (more often when the activation delay is short).
KEY_REFRESH_SECONDS = 60.0
#: How often, at most, each process asks whether a scheduled key rotation
#: is due ([keys] rotate_every): a question to its own memory, no round trip.
ROTATION_CHECK_SECONDS = 60.0
#: How long a stop waits for requests in flight.
STOP_GRACE_SECONDS = 30.0

#: What is told when the service cannot start: the failure.
OnFatal = Callable[[Failure], None]


class StartUp(Protocol):
    """
    What happens when the tree has started, or cannot: the daemon's own
    steps (L{ccserver.tap.DaemonStartUp}); a test gives its own.
    """

    def ready(self) -> None:
        """
        Every listener listens.
        """

    def failed(self, failure: Failure) -> None:
        """
        The store could not be opened, or a listener could not listen.
        """


def service_tree(server: Server, reactor: Any, argv: Sequence[str], startup: StartUp) -> MultiService:
    """
    The services that run C{server}: the tree of docs/architecture.md.

    The store's service starts its children once the store is open and a
    signing key exists, and stops them last first: so the metrics directory
    comes first (it goes once the workers have ended), the worker pool last
    (the workers end before this process stops listening).

    @param argv: the command line of C{twist} after its name, which the
        workers run again.
    """
    prepared = server.prepared
    # the audit trail's writer observes as long as anything under it runs
    root = (
        MultiService()
        if prepared.audit is None
        else AuditTrailService(prepared.audit, reactor)
    )
    store_service = _store_service(server, startup)
    store_service.setServiceParent(root)
    directory = prepared.metrics_directory
    on_worker_exit = None if directory is None else directory.worker_ended
    pool = prepared.listening.worker_pool(reactor, argv, on_worker_exit)
    for child in (
        # the spans' exporter ends last: the last requests' spans go too
        None if prepared.tracing is None else _tracing_stop(prepared.tracing, reactor),
        directory,
        # stopped after the last request: its line is written
        None if server.access_log is None else AccessLogService(server.access_log, reactor),
        IService(prepared.handler, None),
        # after the last request, as the handler
        CloseOnStop(server.jwks_fetcher.close),
        None if server.issuer_keys is None else CloseOnStop(server.issuer_keys.close),
        *_timers(server, reactor),
        _requests_service(server, reactor, pool, startup),
        pool,
    ):
        if child is not None:
            child.setServiceParent(store_service)
    if prepared.listening.metrics is not None and server.metrics_site is not None:
        description, endpoint = prepared.listening.metrics
        ListenerService(description, lambda: endpoint, server.metrics_site).setServiceParent(root)
    if prepared.listening.inherited:
        # A worker ends with the main process, even one killed outright.
        ParentWatch(reactor).setServiceParent(root)
    return root


def _tracing_stop(tracing: Tracing, reactor: Any) -> CloseOnStop:
    """
    What exports the last spans and ends the exporter's thread at a stop:
    in a thread, since it waits for the collector (at most [tracing]
    timeout).
    """
    return CloseOnStop(
        lambda: deferToThreadPool(reactor, reactor.getThreadPool(), tracing.shutdown)
    )


def _store_service(server: Server, startup: StartUp) -> StoreService:
    config, first, store = server.config, server.prepared.first, server.prepared.store
    return StoreService(
        store,
        server.keyring,
        startup.failed,
        first.master_token_file,
        fresh_key_file=first.fresh_key_file,
        key_mismatch=lambda: firststart.key_mismatch(config, store.url, first.fresh_key_file),
    )


def _timers(server: Server, reactor: Any) -> list[TimerService]:
    """
    Reload the signing keys (to follow rotations made elsewhere), purge
    expired token records (every C{[store] purge_interval_seconds}, unless
    0), and rotate the keys on their schedule, every so often.

    Every process has these timers, each worker of C{--workers N} too, but
    for the purge: only the main process purges (the first time as it
    starts), since workers purging on timers of their own would only
    delete the same rows side by side, each batch another writer the
    requests wait for.
    """
    keys, store = server.config.keys, server.prepared.store
    refresh_every = min(KEY_REFRESH_SECONDS, max(1.0, keys.activation_delay / 4))
    jobs: list[tuple[float, Callable[..., Coroutine[Any, Any, None]], tuple[Any, ...]]] = [
        (refresh_every, refresh_keys, (server.keyring, store)),
    ]
    purge_every = server.config.store.purge_interval_seconds
    if purge_every > 0 and not server.prepared.listening.inherited:
        jobs.append((purge_every, purge_expired, (store, reactor.seconds)))
    if keys.rotate_every is not None:
        jobs.append(
            (
                rotation_check_interval(keys.rotate_every),
                rotate_on_schedule,
                # who this process is, for the rotation's lease
                (server.keyring, store, keys.rotate_every, keys.activation_delay,
                 secrets.token_hex(16)),
            )
        )
    timers = []
    for interval, work, args in jobs:
        timer = TimerService(interval, run_async, work, *args)
        timer.clock = reactor
        timers.append(timer)
    return timers


def _requests_service(
    server: Server, reactor: Any, pool: WorkerPool | None, startup: StartUp
) -> RequestsService:
    site, listening = server.site, server.prepared.listening
    requests = RequestsService(
        site,
        reactor,
        STOP_GRACE_SECONDS,
        startup.failed,
        server.config.issuer,
        on_ready=startup.ready,
    )
    for listener in listening.listeners(reactor, pool):
        factory: Any = site
        if listener.tls:
            assert listening.tls_context is not None  # a TLS listener has one
            factory = tls_factory(listening.tls_context, site)
        ListenerService(listener.description, listener.endpoint, factory).setServiceParent(requests)
    return requests


class StoreService(MultiService):
    """
    The store and what needs it: its children start only once the store is
    open and a signing key exists, and the store closes only once they have
    all stopped.
    """

    _log = Logger()

    def __init__(
        self,
        store: IStore,
        keyring: Keyring,
        on_fatal: OnFatal,
        master_token_file: Path | None = None,
        *,
        fresh_key_file: Path | None = None,
        key_mismatch: Callable[[], Exception] | None = None,
    ) -> None:
        """
        @param fresh_key_file: the key-encryption key file this start made,
            if any: removed again when the start fails before the store's
            keys are known to decrypt with it, so that it cannot stand in
            the way of the right key at the next start.
        @param key_mismatch: the error to stop with when the store's
            signing keys were encrypted with another key-encryption key.
        """
        super().__init__()
        self.store = store
        self.keyring = keyring
        self.on_fatal = on_fatal
        self.master_token_file = master_token_file
        self.fresh_key_file = fresh_key_file
        self.key_mismatch = key_mismatch

    def startService(self) -> None:
        Service.startService(self)
        ensureDeferred(self._start()).addErrback(self.on_fatal)

    async def _start(self) -> None:
        self._log.info("Opening store {url}", url=self.store.url)
        try:
            await self.store.open()
            made = await self.keyring.ensure_signing_key()
        except BaseException as e:
            if self.fresh_key_file is not None:
                self.fresh_key_file.unlink(missing_ok=True)
            if isinstance(e, KeyDecryptionError) and self.key_mismatch is not None:
                raise self.key_mismatch() from None
            raise
        if made:
            # the keyring tells the audit trail (as the server's)
            current = self.keyring.current.stored
            self._log.info("Made a new {alg} signing key {kid}", alg=current.alg, kid=current.kid)
        if self.master_token_file is not None:
            self._log.info(
                "The master token for registration is in {path}",
                path=str(self.master_token_file.resolve()),
            )
        if self.running:
            for child in self:
                child.startService()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        # One after another, last first: the workers end, then this process
        # stops listening and finishes its requests, then the timers and the
        # handler stop; the store closes last.
        for child in reversed(list(self)):
            if child.running:
                await maybeDeferred(child.stopService)
        await self.store.close()
        self._log.info("ccserver stopped")


def run_async(work: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> Deferred[None]:
    """
    Call C{work} and wrap its coroutine in a Deferred, as a
    L{TimerService}'s callable must return one to be waited for.
    """
    return ensureDeferred(work(*args))


async def refresh_keys(keyring: Keyring, store: IStore | None = None) -> None:
    """
    Reload the signing keys, to follow rotations made elsewhere; and tell
    of the keys that have begun to sign (once across every process
    sharing C{store}).
    """
    try:
        await keyring.refresh()
        if store is not None:
            await keyring.announce_activations(store)
    except Exception as e:
        StoreService._log.warn("Could not reload signing keys: {error}", error=str(e))


def rotation_check_interval(rotate_every: int) -> float:
    """
    How often a process asks whether a scheduled rotation is due: a
    twentieth of the schedule, between 1 s and L{ROTATION_CHECK_SECONDS};
    a rotation then comes at most that late.
    """
    return min(ROTATION_CHECK_SECONDS, max(1.0, rotate_every / 20))


async def rotate_on_schedule(
    keyring: Keyring, store: IStore, every: int, delay: int, holder: str
) -> None:
    """
    Rotate the signing keys when their schedule says so, in one process of
    all those sharing the store (L{Keyring.rotate_on_schedule}).
    """
    try:
        new = await keyring.rotate_on_schedule(every, delay, store, holder)
    except Exception as e:
        StoreService._log.warn("Could not rotate the signing keys: {error}", error=str(e))
        return
    if new is not None:
        StoreService._log.info(
            "Rotated the signing keys on schedule: {kid} ({alg}) published, signing from "
            "{active_from} UTC",
            kid=new.kid,
            alg=new.alg,
            active_from=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(new.active_from)),
        )


async def purge_expired(store: IStore, now: Callable[[], float]) -> None:
    """
    Drop the expired opaque tokens and deny-list entries.
    """
    try:
        purged = await store.purge_expired(int(now()))
    except Exception as e:
        StoreService._log.warn("Could not purge expired tokens: {error}", error=str(e))
    else:
        if purged:
            StoreService._log.info("Purged {n} expired token records", n=purged)


class ListenerService(Service):
    """
    Listens on one endpoint while running.

    @param endpoint: called at start for the endpoint, so that a socket
        handed down or bound by another service is taken only then.
    @ivar listening: once started, fires with the port, or fails.
    """

    _log = Logger()

    def __init__(
        self,
        description: str,
        endpoint: Callable[[], IStreamServerEndpoint],
        factory: IProtocolFactory,
    ) -> None:
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.listening: Deferred[IListeningPort] | None = None
        self._port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        self.listening = maybeDeferred(lambda: self.endpoint().listen(self.factory))
        self.listening.addCallback(self._listening)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self._port = port
        self._log.info(
            "Listening on {endpoint} ({address})",
            endpoint=self.description,
            address=str(port.getHost()),
        )
        return port

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self._port = self._port, None
        if port is None:
            return None
        stopped = port.stopListening()
        return stopped if isinstance(stopped, Deferred) else None


class RequestsService(MultiService):
    """
    The site and its listeners (the children): once every listener listens
    the server is ready; a stop stops listening, then waits up to
    C{grace} seconds for the requests in flight.
    """

    _log = Logger()

    def __init__(
        self,
        site: CCServerSite,
        reactor: Any,
        grace: float,
        on_fatal: OnFatal,
        issuer: str,
        *,
        on_ready: Callable[[], None] = lambda: None,
    ) -> None:
        """
        @param on_fatal: told when a listener cannot listen.
        @param on_ready: called once every listener listens.
        """
        super().__init__()
        self.site = site
        self.reactor = reactor
        self.grace = grace
        self.on_fatal = on_fatal
        self.on_ready = on_ready
        self.issuer = issuer

    def startService(self) -> None:
        super().startService()
        listening = [c.listening for c in self if isinstance(c, ListenerService) and c.listening]
        gatherResults(listening, consumeErrors=True).addCallbacks(self._ready, self._failed)

    def _ready(self, _: object) -> None:
        self._log.info("ccserver is ready; issuer {issuer}", issuer=self.issuer)
        self.on_ready()

    def _failed(self, failure: Failure) -> None:
        if isinstance(failure.value, FirstError):
            failure = failure.value.subFailure
        self.on_fatal(failure)

    def stopService(self) -> Deferred[None]:
        stopped = super().stopService()
        return ensureDeferred(self._stop(stopped))

    async def _stop(self, listeners_stopped: Deferred[None]) -> None:
        await listeners_stopped
        idle = self.site.when_idle()
        idle.addTimeout(self.grace, self.reactor)
        try:
            await idle
        except (CancelledError, DeferredTimeout):
            self._log.warn(
                "Stopping with {n} requests still in flight after {grace} s",
                n=self.site.in_flight,
                grace=self.grace,
            )


class CloseOnStop(Service):
    """
    Releases something (an HTTP connection pool) when the server stops:
    made a child before the requests service, it stops after the last
    request.
    """

    def __init__(self, close: Callable[[], Deferred[None]]) -> None:
        self._close = close

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self._close()
