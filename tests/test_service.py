"""
The service's lifetime: start-up order and a clean stop.
"""

from __future__ import annotations

from twisted.internet.defer import succeed

from tests.helpers import ServerTestCase


class StopTests(ServerTestCase):
    def test_stop_waits_for_requests_in_flight(self) -> None:
        """
        A stop closes the store only once the requests in flight are done.
        """
        closed: list[bool] = []
        self.store.close = lambda: closed.append(True) or succeed(None)  # type: ignore[method-assign]
        assert self.service.site is None
        self.service.site = self.site
        self.site.in_flight = 1
        self.service.running = 1
        stopping = self.service.stopService()
        self.clock.advance(1)
        self.assertNoResult(stopping)
        self.assertEqual(closed, [])
        self.site.in_flight = 0
        self.clock.advance(0.1)
        self.successResultOf(stopping)
        self.assertEqual(closed, [True])

    def test_stop_gives_up_after_grace(self) -> None:
        self.service.site = self.site
        self.site.in_flight = 1
        self.service.running = 1
        stopping = self.service.stopService()
        self.clock.pump([1.0] * 29)
        self.assertNoResult(stopping)
        self.clock.pump([0.05] * 100)
        self.successResultOf(stopping)
