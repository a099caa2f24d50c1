"""
ccserver.stores.writer: one connection in one thread of its own.
"""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase

from ccserver.errors import StoreUnavailable
from ccserver.stores.writer import ConnectionThread


class Lost(Exception):
    pass


class FakeConnection:
    def __init__(self, number: int) -> None:
        self.number = number
        self.closed = False
        self.stale = False

    def close(self) -> None:
        self.closed = True


class ConnectionThreadTests(TestCase):
    def setUp(self) -> None:
        self.made: list[FakeConnection] = []
        self.writer: ConnectionThread[FakeConnection] = ConnectionThread(
            reactor,
            self.connect,
            name="test-writer",
            is_stale=lambda connection: connection.stale,
            lost_errors=(Lost,),
        )
        self.addCleanup(self.writer.close, 5)

    def connect(self) -> FakeConnection:
        connection = FakeConnection(len(self.made) + 1)
        self.made.append(connection)
        return connection

    async def test_in_order_in_its_thread(self) -> None:
        """
        Work runs in the writer's thread, not the caller's, in the order
        given, all of it with the one connection; results come back in the
        reactor's thread.
        """
        seen: list[tuple[int, str, int]] = []
        here = threading.current_thread().name

        def work(i: int) -> Any:
            def run(connection: FakeConnection) -> int:
                seen.append((i, threading.current_thread().name, connection.number))
                return i * 10

            return run

        results = await gatherResults([self.writer.run(work(i)) for i in range(20)])
        self.assertEqual(results, [i * 10 for i in range(20)])
        self.assertEqual(seen, [(i, "test-writer", 1) for i in range(20)])
        self.assertNotEqual(here, "test-writer")
        self.assertEqual(len(self.made), 1)

    async def test_failure(self) -> None:
        """
        What the work raises fails its Deferred; the connection is kept,
        unless the error says it is lost: then the next work gets a new one.
        """

        def fails(connection: FakeConnection) -> None:
            raise ValueError("no")

        with self.assertRaises(ValueError):
            await self.writer.run(fails)
        self.assertEqual(await self.writer.run(lambda c: c.number), 1)

        def lost(connection: FakeConnection) -> None:
            raise Lost()

        with self.assertRaises(Lost):
            await self.writer.run(lost)
        self.assertTrue(self.made[0].closed)
        self.assertEqual(await self.writer.run(lambda c: c.number), 2)

    async def test_stale_connection_replaced(self) -> None:
        """
        A connection found dead before use is replaced, so the work does
        not fail on it.
        """
        self.assertEqual(await self.writer.run(lambda c: c.number), 1)
        self.made[0].stale = True
        self.assertEqual(await self.writer.run(lambda c: c.number), 2)
        self.assertTrue(self.made[0].closed)

    async def test_connect_fails(self) -> None:
        """
        A connection that cannot be made fails the work; the next tries
        again.
        """
        attempts: list[int] = []

        def connect() -> FakeConnection:
            attempts.append(1)
            if len(attempts) == 1:
                raise Lost("refused")
            return FakeConnection(7)

        writer: ConnectionThread[FakeConnection] = ConnectionThread(
            reactor, connect, name="w", is_stale=lambda c: False, lost_errors=(Lost,)
        )
        self.addCleanup(writer.close, 5)
        with self.assertRaises(Lost):
            await writer.run(lambda c: c.number)
        self.assertEqual(await writer.run(lambda c: c.number), 7)

    async def test_close(self) -> None:
        """
        Closing lets the thread finish, closes its connection, and later
        work fails with StoreUnavailable.
        """
        self.assertEqual(await self.writer.run(lambda c: c.number), 1)
        self.writer.close(5)
        self.assertTrue(self.made[0].closed)
        with self.assertRaises(StoreUnavailable):
            await self.writer.run(lambda c: c.number)
