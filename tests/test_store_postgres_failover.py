"""
The PostgreSQL store through a failover: a multi-host URL that reaches
the promoted standby by itself, every connection (the pool's and the token
writer's) made anew; a server that cannot write answered as unavailable,
never as an error of the server.

The failover of running C{twist ccserver} processes under load is
L{tests.test_failover}.
"""

from __future__ import annotations

from itertools import count
from typing import Any

import psycopg
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase

from ccserver.errors import StoreUnavailable
from ccserver.stores.sql import SQLStore
from ccserver.stores.sqldialects import socket_stale
from ccserver.testing.polling import eventually
from ccserver.testing.servers import PostgresStandbyPair
from tests.test_store_contract import MARK, TIMEOUT, make_client, make_token


class PostgreSQLFailoverTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.pair = PostgresStandbyPair()
        self.addCleanup(self.pair.remove)
        self.pair.start()

    async def opened(self, url: str) -> SQLStore:
        store = SQLStore.from_url(url, reactor, timeout=TIMEOUT)
        self.addCleanup(store.close)
        await store.open()
        return store

    def rows(self, statement: str) -> list[tuple[Any, ...]]:
        return self.pair.standby.query(statement, self.pair.database)

    async def test_multi_host_url_follows_the_promotion(self) -> None:
        """
        The primary SIGKILLed: until the standby is promoted every
        operation fails with L{StoreUnavailable}, at once; then the same
        store (its pool, and its token writer's own connection) works on
        the new primary, which has everything answered before.
        """
        store = await self.opened(self.pair.url)
        await gatherResults(
            [store.add_client(make_client(f"before-{i}")) for i in range(10)]
            + [store.add_token(make_token(f"{i:064x}")) for i in range(1, 11)]
        )
        self.pair.primary.kill()
        for operation in (
            lambda: store.add_client(make_client("during")),
            lambda: store.add_token(make_token("e" * 64)),
            lambda: store.get_client("before-1"),
        ):
            with self.assertRaises(StoreUnavailable):
                await operation()
        self.pair.standby.promote()
        await eventually(
            lambda: store.add_client(make_client("after")).addCallback(lambda _: True),
            reactor,
            what="a write accepted",
            tolerate=(StoreUnavailable,),
        )
        await store.add_token(make_token("f" * 64))
        self.assertEqual(
            sorted(row[0] for row in self.rows("SELECT client_id FROM clients")),
            ["after", *(f"before-{i}" for i in range(10))],
        )
        self.assertEqual(self.rows("SELECT COUNT(*) FROM access_tokens"), [(11,)])

    async def test_a_server_that_cannot_write(self) -> None:
        """
        A write on a server that is read-only (the standby, reached through
        a single-host URL; a primary fenced with
        C{default_transaction_read_only}) fails with L{StoreUnavailable},
        a 503, for the pool and the token writer alike; reads still work.
        A pooled connection is made anew once its server has said it is
        read-only: behind a virtual IP, that is how the new primary is
        reached.
        """
        primary = self.pair.primary
        store = await self.opened(primary.url_for(self.pair.database))
        await store.add_client(make_client("before"))
        # the standby has the commits on disk, and applies them a moment later
        await eventually(
            lambda: self.rows("SELECT 1 FROM clients WHERE client_id = 'before'"),
            reactor,
            what="the migrations on the standby",
        )
        standby = await self.opened(self.pair.standby.url_for(self.pair.database))
        with self.assertRaises(StoreUnavailable):
            await standby.add_client(make_client("on the standby"))
        with self.assertRaises(StoreUnavailable):
            await standby.add_token(make_token())
        with self.assertRaises(StoreUnavailable):
            await standby.delete_client("nobody", *MARK)
        self.assertEqual(await standby.get_client("before"), make_client("before"))

        fenced = psycopg.connect(primary.url_for(self.pair.database), autocommit=True)
        self.addCleanup(fenced.close)
        self.assertFalse(socket_stale(fenced))
        primary.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        primary.execute("SELECT pg_reload_conf()")
        attempts = count()

        async def refused() -> bool:
            # each connection learns of it at its first statement after the reload
            try:
                await store.add_client(make_client(f"fenced-{next(attempts)}"))
            except StoreUnavailable:
                return True
            return False

        await eventually(refused, reactor, interval=0.05, what="the fence in force")
        self.assertEqual(await store.get_client("before"), make_client("before"))
        # a pooled connection is made anew once its server said so
        fenced.execute("SELECT 1")
        self.assertTrue(socket_stale(fenced))
        primary.execute("ALTER SYSTEM RESET default_transaction_read_only")
        primary.execute("SELECT pg_reload_conf()")
        await eventually(
            lambda: store.add_client(make_client("unfenced")).addCallback(lambda _: True),
            reactor,
            what="a write accepted",
            tolerate=(StoreUnavailable,),
        )
