"""
The webhook handler's place in the server: the reactor it is given, and its
connection pool closed when it stops.  (The private Twisted name its retry
needs is checked in tests/test_outbound.py.)
"""

from __future__ import annotations

from twisted.application.service import IService
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from ccserver.handlers import make_handler
from tests.test_webhook import make_grant


class ReactorTests(SynchronousTestCase):
    def test_uses_given_reactor_and_is_a_service(self) -> None:
        """
        The handler connects with the reactor C{makeHandler} was given
        (never the global one), and is a service whose stop closes its
        connection pool.
        """
        reactor = MemoryReactorClock()
        handler = make_handler("webhook", {"url": "http://127.0.0.1:9/grant"}, reactor)
        deciding = handler.authorize(make_grant())
        [(host, port, *_)] = reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 9))
        service = IService(handler)
        service.startService()
        self.successResultOf(service.stopService())
        self.assertFalse(service.running)
        reactor.advance(10)  # the exchange times out: 503, no token
        self.failureResultOf(deciding)
