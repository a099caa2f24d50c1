"""
The service tree L{ccserver.tap.makeService} builds: start-up order and a
clean stop, on a L{MemoryReactorClock}; the object graph made without I/O;
the daemon's own start-up steps.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ccserver import credentials
from ccserver.assembly import Prepared, assemble
from ccserver.config import Config, StoreConfig
from ccserver.firststart import FirstStart
from ccserver.handlers.registered_scope import RegisteredScopeHandler
from ccserver.keys import KeyEncryptor, Keyring
from ccserver.listening import listening
from ccserver.services import RequestsService, StoreService
from ccserver.stores.memory import MemoryStore
from ccserver.tap import DaemonStartUp, Options, Process, makeService
from ccserver.web import CCServerSite
from tests.helpers import MASTER_TOKEN, temp_dir


def options(*args: str) -> Options:
    parsed = Options()
    parsed.parseOptions(["--store", "memory://", "--master-token", MASTER_TOKEN, *args])
    return parsed


class RecordingStartUp:
    """
    A test's start-up steps: it records what happened, and neither freezes
    the collector nor ends the process as the daemon's do.
    """

    def __init__(self) -> None:
        self.ready_count = 0
        self.failures: list[Failure] = []

    def ready(self) -> None:
        self.ready_count += 1

    def failed(self, failure: Failure) -> None:
        self.failures.append(failure)


def in_memory(reactor: Any, startup: RecordingStartUp | None = None, **environ: str) -> Process:
    """
    A process of the test's own: no argv, the given environment, one core
    (so RSA signs inline, not in a thread pool the reactor lacks).
    """
    return Process(reactor, [], environ, 1, startup or RecordingStartUp())


def http_get(factory: Any, path: bytes) -> bytes:
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: as.example.com\r\n\r\n")
    return bytes(transport.value())


def register_over(factory: Any, master_token: str = MASTER_TOKEN) -> None:
    """
    Register a client over a connection to C{factory}, with the master
    token given: it must be answered 201.
    """
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    body = b'{"client_name": "x"}'
    protocol.dataReceived(
        b"POST /client-reg HTTP/1.1\r\nHost: as.example.com\r\n"
        b"Authorization: Bearer " + master_token.encode() + b"\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    assert transport.value().startswith(b"HTTP/1.1 201 "), transport.value()


class MakeServiceTests(SynchronousTestCase):
    def test_serves_after_start_and_stops(self) -> None:
        """
        The tree listens on each --listen endpoint once started, serves
        the JWK set with a key in it, tells its start-up steps it is
        ready, and stops listening on stop.
        """
        reactor = MemoryReactorClock()
        startup = RecordingStartUp()
        service = makeService(
            options("--listen", "tcp:8080", "--listen", "tcp:8081"), in_memory(reactor, startup)
        )
        self.assertEqual(reactor.tcpServers, [])
        service.startService()
        self.assertEqual([port for port, *_ in reactor.tcpServers], [8080, 8081])
        self.assertEqual((startup.ready_count, startup.failures), (1, []))
        factory = reactor.tcpServers[0][1]
        self.assertIn(b'"kid"', http_get(factory, b"/jwks.json"))
        self.successResultOf(service.stopService())

    def test_in_process_start_leaves_the_collector_alone(self) -> None:
        """
        Freezing the garbage collector is the daemon's start-up step, not
        the service tree's: a test that starts the tree in its own process
        (the test runner's) does not freeze the runner's collector.
        """
        frozen = gc.get_freeze_count()
        service = makeService(options("--listen", "tcp:8080"), in_memory(MemoryReactorClock()))
        service.startService()
        self.assertEqual(gc.get_freeze_count(), frozen)
        self.successResultOf(service.stopService())

    def test_environment_given(self) -> None:
        """
        The environment is the process's, given: CCSERVER_MASTER_TOKEN from
        it authorises registration.
        """
        reactor = MemoryReactorClock()
        parsed = Options()
        parsed.parseOptions(["--store", "memory://", "--listen", "tcp:8080"])
        token = "a-master-token-from-the-environment"
        service = makeService(parsed, in_memory(reactor, CCSERVER_MASTER_TOKEN=token))
        service.startService()
        register_over(reactor.tcpServers[0][1], token)
        self.successResultOf(service.stopService())

    def test_busy_port_told_to_start_up(self) -> None:
        """
        A listener that cannot listen is a failure to start, told to the
        start-up steps (which, in the daemon, end the process).
        """
        reactor = MemoryReactorClock()
        startup = RecordingStartUp()

        def busy(port: int, *args: Any, **kwargs: Any) -> Any:
            raise CannotListenError("", port, OSError("busy"))

        reactor.listenTCP = busy  # type: ignore[method-assign]
        service = makeService(options("--listen", "tcp:8080"), in_memory(reactor, startup))
        service.startService()
        [failure] = startup.failures
        self.assertTrue(failure.check(CannotListenError))
        self.assertEqual(startup.ready_count, 0)
        self.successResultOf(service.stopService())

    def test_bad_endpoint_refused_before_start(self) -> None:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as raised:
            makeService(options("--listen", "tcp:notaport"), in_memory(MemoryReactorClock()))
        self.assertEqual(raised.exception.code, 2)
        self.assertEqual(err.getvalue().count("\n"), 1, err.getvalue())
        self.assertIn("listen: 'tcp:notaport' is not an endpoint string", err.getvalue())


class OptionsTests(SynchronousTestCase):
    def test_command_line_only(self) -> None:
        """
        Parsing reads no file and no environment: a configuration file
        that is not there is found missing by makeService, in one line.
        """
        folder = temp_dir(self)
        parsed = Options()
        parsed.parseOptions(["--config", str(folder / "missing.toml"), "--store", "memory://"])
        self.assertEqual(parsed.command_line()["config"], str(folder / "missing.toml"))
        err = io.StringIO()
        with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as raised:
            makeService(parsed, in_memory(MemoryReactorClock()))
        self.assertEqual(raised.exception.code, 2)
        missing = str(folder / "missing.toml")
        self.assertEqual(
            err.getvalue(), f"ccserver: --config: cannot read {missing!r}: No such file or directory\n"
        )

    def test_usage_error_one_line(self) -> None:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as raised:
            Options().parseOptions(["--workers", "two"])
        self.assertEqual(raised.exception.code, 2)
        self.assertEqual(
            err.getvalue(),
            "ccserver: --workers: 'two' is not a whole number; "
            "twist ccserver --help lists the options\n",
        )


class AssembleTests(SynchronousTestCase):
    """
    The object graph is made without I/O and without a running reactor:
    from a checked configuration and what was prepared for it.
    """

    def test_pure(self) -> None:
        clock = Clock()
        config = Config(issuer="https://as.example.com", store=StoreConfig(url="memory://"))
        store = MemoryStore()
        prepared = Prepared(
            store=store,
            handler=RegisteredScopeHandler(),
            first=FirstStart(credentials.digest(MASTER_TOKEN), None, KeyEncryptor.ephemeral()),
            listening=listening(config, clock, (), None),
        )
        server = assemble(config, prepared, clock, cpu_count=1)
        self.assertIs(server.prepared.store, store)
        self.assertIsNone(server.metrics_site)
        # nothing was opened, nothing scheduled
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(self.successResultOf(store.list_keys()), [])
        self.successResultOf(ensureDeferred(server.keyring.ensure_signing_key()))
        treq = StubTreq(server.site.resource)
        response = self.successResultOf(treq.get("https://as.example.com/jwks.json"))
        self.assertEqual(response.code, 200)


class DaemonStartUpTests(SynchronousTestCase):
    def test_failure_before_the_reactor_runs(self) -> None:
        """
        A failure found before the reactor runs (a memory store opens at
        once, so a busy port is found inside startService) stops the
        reactor once it runs, and the process then ends with status 1;
        stopping it before it runs would be refused, and the process would
        run on, listening on nothing.
        """
        reactor = MemoryReactor()
        startup = DaemonStartUp(reactor)
        startup.failed(Failure(CannotListenError("127.0.0.1", 8080, OSError("busy"))))
        self.assertFalse(reactor.hasStopped)
        self.assertEqual(reactor.triggers["after"]["shutdown"], [(os._exit, (1,), {})])
        reactor.run()  # runs the hooks, then stops as MemoryReactor does
        [(hook, _, _)] = reactor.whenRunningHooks
        self.assertEqual(hook.__name__, "_stop")

    def test_failure_while_running(self) -> None:
        reactor = MemoryReactor()
        reactor.running = True
        startup = DaemonStartUp(reactor)
        startup.failed(Failure(OSError("no store")))
        startup.failed(Failure(OSError("and then the listener")))  # told once
        self.assertTrue(reactor.hasStopped)
        self.assertEqual(len(reactor.triggers["after"]["shutdown"]), 1)


class Child(Service):
    def __init__(self, log: list[str], name: str) -> None:
        self.log = log
        self.setName(name)

    def startService(self) -> None:
        super().startService()
        self.log.append(f"start {self.name}")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.log.append(f"stop {self.name}")
        self.stopped: Deferred[None] = Deferred()
        return self.stopped


class StoreServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.store = MemoryStore()
        self.opened: Deferred[None] = Deferred()
        self.store.open = lambda: self.opened  # type: ignore[method-assign]
        self.log: list[str] = []
        self.store.close = lambda: self.log.append("close") or succeed(None)  # type: ignore[method-assign]
        keyring = Keyring(self.store, KeyEncryptor.ephemeral(), "ES256", 3600, self.reactor.seconds)
        self.fatal: list[Failure] = []
        self.service = StoreService(self.store, keyring, self.fatal.append)
        for name in ("first", "last"):
            Child(self.log, name).setServiceParent(self.service)

    def test_children_start_once_store_open(self) -> None:
        self.service.startService()
        self.assertEqual(self.log, [])
        self.opened.callback(None)
        self.assertEqual(self.log, ["start first", "start last"])
        self.assertEqual(len(self.successResultOf(self.store.list_keys())), 1)

    def test_children_stop_last_first_then_store_closes(self) -> None:
        self.service.startService()
        self.opened.callback(None)
        stopping = self.service.stopService()
        self.assertEqual(self.log[2:], ["stop last"])
        self.service.getServiceNamed("last").stopped.callback(None)  # type: ignore[attr-defined]
        self.assertEqual(self.log[2:], ["stop last", "stop first"])
        self.assertNoResult(stopping)
        self.service.getServiceNamed("first").stopped.callback(None)  # type: ignore[attr-defined]
        self.successResultOf(stopping)
        self.assertEqual(self.log[-1], "close")

    def test_open_failure_is_fatal(self) -> None:
        self.service.startService()
        self.opened.errback(OSError("no store"))
        [failure] = self.fatal
        self.assertEqual(failure.getErrorMessage(), "no store")
        self.assertEqual(self.log, [])


class PurgeTimerTests(SynchronousTestCase):
    """
    The tree purges expired token records every C{[store]
    purge_interval_seconds} (first as it starts), or never with 0.
    """

    def start(self, config: str, *argv: str) -> tuple[MemoryReactorClock, MemoryStore]:
        """
        The tree on a memory store with this configuration, started on a
        reactor at a fixed time, one opaque token in its store expiring 1
        s later: the reactor and the store.
        """
        from ccserver.model import TokenRecord

        path = os.path.join(temp_dir(self), "ccserver.toml")
        with open(path, "w") as f:
            f.write(config)
        reactor = MemoryReactorClock()
        reactor.advance(1_800_000_000)
        service = makeService(
            options("--listen", "tcp:8080", "--config", path, *argv), in_memory(reactor)
        )
        service.startService()
        self.addCleanup(service.stopService)
        store = next(iter(service)).store  # type: ignore[call-overload]
        now = int(reactor.seconds())
        token = TokenRecord(token_digest="d" * 64, client_id="client-1", scope=frozenset({"read"}),
                            audience=("https://api.example",), issued_at=now, expires_at=now + 1,
                            jti="jti-1", claims={})
        self.successResultOf(store.add_token(token))
        return reactor, store

    def stored(self, store: MemoryStore) -> bool:
        return self.successResultOf(store.get_token("d" * 64)) is not None

    def assert_purged_at(self, config: str, interval: float) -> None:
        """
        The expired token is still stored just before the second purge
        (the first, at the start, found it live), gone at it.
        """
        reactor, store = self.start(config)
        reactor.advance(interval - 0.1)
        self.assertTrue(self.stored(store))
        reactor.advance(0.1)
        self.assertFalse(self.stored(store))

    def test_interval(self) -> None:
        self.assert_purged_at("[store]\npurge_interval_seconds = 5\n", 5)

    def test_default_five_minutes(self) -> None:
        self.assert_purged_at("", 300)

    def test_workers_never(self) -> None:
        """
        A worker of C{--workers N} (its sockets handed down) never purges:
        its main process does, and the workers' purges would only delete
        the same rows beside it.
        """
        reactor, store = self.start("[store]\npurge_interval_seconds = 5\n", "--inherit-fd", "3")
        for _ in range(10):
            reactor.advance(5)
        self.assertTrue(self.stored(store))

    def test_never(self) -> None:
        reactor, store = self.start("[store]\npurge_interval_seconds = 0\n")
        for _ in range(48):
            reactor.advance(3600)
        self.assertTrue(self.stored(store))


class Hanging(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def render_GET(self, request: Any) -> int:
        self.requests.append(request)
        return NOT_DONE_YET


class StopTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.resource = Hanging()
        self.site = CCServerSite(self.resource, self.reactor)
        self.service = RequestsService(self.site, self.reactor, 30.0, lambda f: None, "issuer")
        self.service.startService()
        http_get(self.site, b"/")
        self.assertEqual(self.site.in_flight, 1)

    def test_stop_waits_for_requests_in_flight(self) -> None:
        """
        A stop ends only once the requests in flight are done: the site
        fires a Deferred when the last one finishes, no polling.
        """
        stopping = self.service.stopService()
        self.reactor.advance(29)
        self.assertNoResult(stopping)
        [request] = self.resource.requests
        request.finish()
        self.successResultOf(stopping)

    def test_stop_gives_up_after_grace(self) -> None:
        stopping = self.service.stopService()
        self.reactor.advance(29.9)
        self.assertNoResult(stopping)
        self.reactor.advance(0.1)
        self.successResultOf(stopping)

    def test_idle_site_stops_at_once(self) -> None:
        self.resource.requests[0].finish()
        self.successResultOf(self.service.stopService())

    def test_lost_connection_ends_a_request(self) -> None:
        """
        A request whose client went away is no longer in flight, and is
        counted once: not again when the application finishes it late.
        """
        [request] = self.resource.requests
        request.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.site.in_flight, 0)
        self.successResultOf(self.service.stopService())
        self.assertRaises(RuntimeError, request.finish)
        self.assertEqual(self.site.in_flight, 0)

    def test_counted_once(self) -> None:
        [request] = self.resource.requests
        request.finish()
        request.finish()  # twisted.web warns and does nothing
        self.assertEqual(self.site.in_flight, 0)
        http_get(self.site, b"/")
        self.assertEqual(self.site.in_flight, 1)


@pytest.mark.process
class MainTests(SynchronousTestCase):
    def test_python_m_ccserver_tap(self) -> None:
        """
        C{python -m ccserver.tap} runs C{twist ccserver} through Twisted's
        public C{python -m twisted}.
        """
        from tests.process import REPO, run_python

        result = run_python("-m", "ccserver.tap", "--version", cwd=REPO)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.startswith("ccserver "), result.stdout)
