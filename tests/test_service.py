"""
The service tree L{ccserver.tap.makeService} builds: start-up order and a
clean stop, on a L{MemoryReactorClock}.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ccserver.keys import KeyEncryptor, Keyring
from ccserver.oauth.tokens import sign_inline
from ccserver.services import RequestsService, StoreService
from ccserver.stores.memory import MemoryStore
from ccserver.tap import Options, makeService
from ccserver.web import CCServerSite
from tests.helpers import MASTER_TOKEN


def options(*args: str) -> Options:
    parsed = Options()
    parsed.parseOptions(["--store", "memory://", "--master-token", MASTER_TOKEN, *args])
    return parsed


def http_get(factory: Any, path: bytes) -> bytes:
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: as.example.com\r\n\r\n")
    return bytes(transport.value())


class MakeServiceTests(SynchronousTestCase):
    def test_serves_after_start_and_stops(self) -> None:
        """
        The tree listens on each --listen endpoint once started, serves
        the JWK set with a key in it, and stops listening on stop.
        """
        reactor = MemoryReactorClock()
        service = makeService(options("--listen", "tcp:8080", "--listen", "tcp:8081"), reactor, sign_inline)
        self.assertEqual(reactor.tcpServers, [])
        service.startService()
        self.assertEqual([port for port, *_ in reactor.tcpServers], [8080, 8081])
        factory = reactor.tcpServers[0][1]
        self.assertIn(b'"kid"', http_get(factory, b"/jwks.json"))
        self.successResultOf(service.stopService())

    def test_bad_endpoint_refused_before_start(self) -> None:
        with self.assertRaises(SystemExit):
            makeService(options("--listen", "tcp:notaport"), MemoryReactorClock(), sign_inline)


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
        self.site = CCServerSite(self.resource, self.reactor, access_log=False)
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


class MainTests(SynchronousTestCase):
    def test_python_m_ccserver_tap(self) -> None:
        """
        C{python -m ccserver.tap} runs C{twist ccserver} through Twisted's
        public C{python -m twisted}.
        """
        import os
        import subprocess
        import sys

        from tests.process import REPO

        result = subprocess.run(
            [sys.executable, "-m", "ccserver.tap", "--version"],
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.startswith("ccserver "), result.stdout)
