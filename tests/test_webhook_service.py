"""
The webhook handler's place in the server: the reactor it is given, its
connection pool closed when it stops, and the one private Twisted name it
needs.
"""

from __future__ import annotations

from twisted.application.service import IService
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import _newclient
from twisted.web.http_headers import Headers

from ccserver.handlers import make_handler, webhook
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


class TwistedNamesTests(SynchronousTestCase):
    def test_request_not_sent_is_what_twisted_raises(self) -> None:
        """
        L{webhook.RequestNotSent} (imported from where Twisted does not
        export it) is what a request on a connection already lost fails
        with, the case the handler retries.  This fails if Twisted moves or
        renames it.
        """
        protocol = _newclient.HTTP11ClientProtocol()
        protocol.makeConnection(StringTransport())
        protocol.connectionLost(Failure(ConnectionDone()))
        sent = protocol.request(_newclient.Request(b"GET", b"/", Headers(), None))
        self.failureResultOf(sent, webhook.RequestNotSent)
