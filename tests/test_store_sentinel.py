"""
The Redis store through Redis Sentinel (C{redis+sentinel://}) and its
writes that wait for replicas (C{WAIT}): the URL, the primary found and
followed through a failover, no primary answered as unavailable in time,
and a write answered only once a replica has it.

The store contract (L{tests.test_store_contract.SentinelRedisStoreTests})
runs through Sentinel too; the failover of a running C{twist ccserver}
under load is L{tests.test_failover}.
"""

from __future__ import annotations

import time
from typing import Any

import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, fail, gatherResults, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ccserver.errors import ConfigError, StoreUnavailable
from ccserver.model import AttemptKeys
from ccserver.stores import check_url
from ccserver.stores.redis import RedisStore, client_key
from ccserver.stores.sentinel import ASK_AGAIN, NoPrimary, SentinelEndpoint, Sentinels
from ccserver.stores.urls import redis_address
from ccserver.testing.polling import eventually, wait_until
from ccserver.testing.servers import RedisSentinelGroup, RedisServer, redis_sentinel_group
from tests.process import DEADLINE
from tests.test_store_contract import (
    TIMEOUT,
    make_client,
    make_initial_access_token,
    make_token,
)


class URLTests(SynchronousTestCase):
    def test_sentinels_and_service(self) -> None:
        address = redis_address("redis+sentinel://10.0.0.1:26380,10.0.0.2,[::1]:26381/cache?db=4")
        self.assertEqual(
            address.sentinels, (("10.0.0.1", 26380), ("10.0.0.2", 26379), ("::1", 26381))
        )
        self.assertEqual((address.service, address.dbid), ("cache", 4))
        self.assertIsNone(address.password)
        self.assertTrue(address.sentinel)

    def test_passwords_masked(self) -> None:
        url = "redis+sentinel://app:s%40cret@h1:1,h2:2/svc?db=1&sentinel_password=other%2F1"
        address = redis_address(url)
        self.assertEqual((address.username, address.password), ("app", "s@cret"))
        self.assertEqual(address.sentinel_password, "other/1")
        self.assertEqual(
            address.url, "redis+sentinel://app:***@h1:1,h2:2/svc?db=1&sentinel_password=***"
        )
        store = RedisStore.from_url(url, reactor, timeout=1)
        self.assertNotIn("cret", repr(store) + store.url)
        self.assertNotIn("other", repr(store) + store.url)

    def test_refused(self) -> None:
        for url, message in [
            ("redis+sentinel://h1:1,h2:2/", "the path is the service name"),
            ("redis+sentinel://h1:1/a/b", "the path is the service name"),
            ("redis+sentinel:///svc", "names no sentinel"),
            ("redis+sentinel://h1:port/svc", "bad host or port"),
            ("redis+sentinel://h1:70000/svc", "bad port"),
            ("redis+sentinel://h1/svc?db=x", "must be a number"),
            ("redis+sentinel://h1/svc?database=1", "unknown parameter 'database'"),
            ("redis://h1:6379/0?db=1", "takes no query"),
        ]:
            with self.assertRaises(ConfigError) as raised:
                check_url(url)
            self.assertIn(message, str(raised.exception), url)

    def test_unknown_scheme_masks_password(self) -> None:
        with self.assertRaises(ConfigError) as raised:
            check_url("rediss://:hunter2@h:1/0")
        self.assertNotIn("hunter2", str(raised.exception))

    def test_waits_for_a_replica_by_default_with_sentinel_only(self) -> None:
        sentinel = RedisStore.from_url("redis+sentinel://h:1/svc", reactor, timeout=4)
        self.assertEqual((sentinel.wait_replicas, sentinel.wait_timeout), (1, 2.0))
        plain = RedisStore.from_url("redis://h:1/0", reactor, timeout=4)
        self.assertEqual(plain.wait_replicas, 0)
        chosen = RedisStore.from_url(
            "redis://h:1/0", reactor, timeout=4, wait_replicas=2, wait_timeout=0.5
        )
        self.assertEqual((chosen.wait_replicas, chosen.wait_timeout), (2, 0.5))


class _Connections:
    def __init__(self) -> None:
        self.demoted_count = 0

    def demoted(self) -> None:
        self.demoted_count += 1


class ReadOnlyTests(SynchronousTestCase):
    def test_readonly_reconnects_and_is_unavailable(self) -> None:
        """
        A C{READONLY} reply (the server became a replica under a live
        connection) is L{StoreUnavailable}, and drops the connections so
        that they are made again where the primary is; another error reply
        is left as it is.
        """
        store = RedisStore.from_url("redis://127.0.0.1:1/0", reactor, timeout=1)
        connections = store._connections = _Connections()  # type: ignore[assignment]
        readonly = Failure(txredisapi.ResponseError("READONLY You can't write against a replica."))
        self.assertRaises(StoreUnavailable, store._transient_reply, readonly)
        self.assertEqual(connections.demoted_count, 1)
        other = Failure(txredisapi.ResponseError("ERR wrong number of arguments"))
        self.assertIs(store._transient_reply(other), other)
        self.assertEqual(connections.demoted_count, 1)


class AnnouncementTests(SynchronousTestCase):
    """
    L{Sentinels.announcement}: fires at the sentinels' announcement of a new
    primary of the service, or after its time.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.switched: list[tuple[str, int]] = []
        self.sentinels = Sentinels(
            self.clock, (("127.0.0.1", 1),), "svc", 5.0, None, on_switch=self.switched.append
        )

    def test_announced(self) -> None:
        waiting = [self.sentinels.announcement(0.25), self.sentinels.announcement(0.25)]
        self.sentinels._announced("other 10.0.0.1 6379 10.0.0.2 6379")
        for d in waiting:
            self.assertNoResult(d)
        self.sentinels._announced("svc 10.0.0.1 6379 10.0.0.2 6380")
        for d in waiting:
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.switched, [("10.0.0.2", 6380)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_not_announced(self) -> None:
        d = self.sentinels.announcement(0.25)
        self.clock.advance(0.2)
        self.assertNoResult(d)
        self.clock.advance(0.05)
        self.assertIsNone(self.successResultOf(d))
        self.sentinels._announced("svc 10.0.0.1 6379 10.0.0.2 6380")
        self.assertEqual(self.switched, [("10.0.0.2", 6380)])


class _Asker:
    """
    A connection to one sentinel, as L{Sentinels.primary} asks it: each
    question is kept, for the test to answer.
    """

    def __init__(self) -> None:
        self.handler = self
        self.questions: list[Deferred[Any]] = []

    def execute_command(self, *command: str) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.questions.append(d)
        return d

    def disconnect(self) -> Deferred[None]:
        return succeed(None)


class PrimaryQuestionTests(SynchronousTestCase):
    """
    L{Sentinels.primary}: the first answer wins, and no question outlives
    the answer, a cancelled attempt or the store.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.sentinels = Sentinels(
            self.clock, (("10.0.0.1", 1), ("10.0.0.2", 2)), "svc", 5.0, None, on_switch=print
        )
        self.askers = [_Asker(), _Asker()]
        self.sentinels._askers = self.askers  # type: ignore[assignment]

    def test_first_answer(self) -> None:
        d = self.sentinels.primary()
        self.askers[1].questions[0].callback(["10.0.0.9", "6380"])
        self.assertEqual(self.successResultOf(d), ("10.0.0.9", 6380))
        self.assertTrue(self.askers[0].questions[0].called)  # withdrawn
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_primary(self) -> None:
        d = self.sentinels.primary()
        self.askers[0].questions[0].callback(None)
        self.assertNoResult(d)
        self.clock.advance(1.0)
        failure = self.failureResultOf(d, NoPrimary)
        self.assertIn("10.0.0.1:1 knows no service 'svc'", str(failure.value))
        self.assertIn("10.0.0.2:2 did not answer", str(failure.value))

    def test_cancelled(self) -> None:
        d = self.sentinels.primary()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        for asker in self.askers:
            self.assertTrue(asker.questions[0].called)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closed(self) -> None:
        d = self.sentinels.primary()
        self.sentinels.close()
        self.failureResultOf(d, NoPrimary)
        self.assertTrue(self.sentinels.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class _FakeSentinels:
    """
    The sentinels as L{SentinelEndpoint} asks them: each C{primary()} is
    the next of C{answers}; each C{announcement} is waited for on C{clock}.
    """

    def __init__(self, clock: MemoryReactorClock, answers: list[Any]) -> None:
        self.clock = clock
        self.answers = answers
        self.timeout = 1.0
        self.waited: list[float] = []
        self.closed = False

    def primary(self) -> Deferred[tuple[str, int]]:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return fail(answer) if isinstance(answer, Exception) else succeed(answer)

    def announcement(self, within: float) -> Deferred[None]:
        self.waited.append(within)
        return deferLater(self.clock, within, lambda: None)


class SentinelEndpointTests(SynchronousTestCase):
    def test_asks_again_until_a_primary(self) -> None:
        """
        While the sentinels name no primary, or one that refuses, the
        attempt waits (for an announcement, or L{ASK_AGAIN}) and asks again;
        then it connects where they say.
        """
        clock = MemoryReactorClock()
        refused = ConnectionRefusedError()
        sentinels = _FakeSentinels(clock, [NoPrimary("none"), refused, ("127.0.0.1", 6380)])
        endpoint = SentinelEndpoint(clock, sentinels)  # type: ignore[arg-type]
        attempt = endpoint.connect(Factory.forProtocol(Protocol))
        self.assertEqual(sentinels.waited, [ASK_AGAIN])
        clock.advance(ASK_AGAIN)
        self.assertEqual(sentinels.waited, [ASK_AGAIN] * 2)
        clock.advance(ASK_AGAIN)
        [(host, port, *_)] = clock.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 6380))
        self.assertNoResult(attempt)
        attempt.cancel()
        self.failureResultOf(attempt)

    def test_gives_up_at_the_timeout(self) -> None:
        clock = MemoryReactorClock()
        sentinels = _FakeSentinels(clock, [NoPrimary("none")])
        attempt = SentinelEndpoint(clock, sentinels).connect(  # type: ignore[arg-type]
            Factory.forProtocol(Protocol)
        )
        clock.pump([ASK_AGAIN] * 3)
        self.assertNoResult(attempt)
        clock.advance(ASK_AGAIN)
        self.failureResultOf(attempt, NoPrimary)
        self.assertEqual(clock.tcpClients, [])


class SentinelFailoverTests(TestCase):
    """
    A real failover: a primary, two replicas and three sentinels of their
    own, the primary SIGKILLed or handed over by the sentinels.
    """

    timeout = 120

    def setUp(self) -> None:
        self.group = RedisSentinelGroup()
        self.addCleanup(self.group.remove)
        self.group.start()

    async def opened(self) -> RedisStore:
        store = RedisStore.from_url(self.group.url(2), reactor, timeout=TIMEOUT)
        self.addCleanup(store.close)
        await store.open()
        return store

    async def test_primary_killed(self) -> None:
        """
        The primary SIGKILLed: the store reaches the promoted replica by
        itself, and everything it answered before is there.
        """
        store = await self.opened()
        await gatherResults([store.add_client(make_client(f"before-{i}")) for i in range(20)])
        old = self.group.primary
        old.kill()
        await eventually(
            lambda: store.add_client(make_client("after")).addCallback(lambda _: True),
            reactor,
            what="a write accepted",
            tolerate=(StoreUnavailable,),
        )
        new = self.group.wait_for_failover(old)
        for client_id in ["after", *(f"before-{i}" for i in range(20))]:
            self.assertEqual(await store.get_client(client_id), make_client(client_id))
            self.assertTrue(self.stored_on(new, client_id), client_id)

    def stored_on(self, server: RedisServer, client_id: str) -> bool:
        return bool(server.query("EXISTS", client_key(client_id), db=2))

    async def test_handover_followed_at_the_announcement(self) -> None:
        """
        The sentinels hand the primary over (C{SENTINEL FAILOVER}): the old
        one becomes a replica while the store's connections to it stay
        open.  At the sentinels' C{+switch-master} the store drops them and
        connects to the new primary: its next write succeeds there, where
        it would otherwise have met C{READONLY} on the old one.
        """
        store = await self.opened()
        await store.add_client(make_client("before"))
        old = self.group.primary
        # Only one replica had to acknowledge it, and a forced failover
        # promotes one at once: which one has it is not the point here
        # (docs/failover.md says what this guarantees).
        replicas = [server for server in self.group.servers if server is not old]
        await eventually(
            lambda: all(self.stored_on(replica, "before") for replica in replicas),
            reactor,
            what="the write on every replica",
        )
        self.assertEqual(
            self.group.sentinels[0].query("SENTINEL", "FAILOVER", self.group.service), "OK"
        )
        new = self.group.wait_for_failover(old)
        pool = store._connections._pool
        assert pool is not None

        def moved() -> bool:
            peers = {c.transport.getPeer().port for c in pool.pool}
            return len(pool.pool) > 0 and peers == {new.port}

        await eventually(moved, reactor, what="connections moved to the new primary")
        await store.add_client(make_client("after"))
        self.assertTrue(self.stored_on(new, "after"))
        self.assertTrue(self.stored_on(new, "before"))


class NoPrimaryTests(TestCase):
    """
    While no primary can be found, every operation fails with
    L{StoreUnavailable} within the store's timeout.
    """

    timeout = 60

    async def unavailable(self, url: str, timeout: float = 0.5) -> str:
        store = RedisStore.from_url(url, reactor, timeout=timeout)
        self.addCleanup(store.close)
        d = store.open()
        # a hang would fail here, long after the store's own timeout
        d.addTimeout(timeout * 20, reactor)
        with self.assertRaises(StoreUnavailable) as raised:
            await d
        return str(raised.exception)

    async def test_unknown_service(self) -> None:
        group = redis_sentinel_group()
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in group.sentinels)
        await self.unavailable(f"redis+sentinel://{hosts}/no-such-service")

    async def test_no_sentinel_answers(self) -> None:
        stopped = RedisServer()  # never started: its port refuses connections
        self.addCleanup(stopped.remove)
        await self.unavailable(f"redis+sentinel://127.0.0.1:{stopped.port}/ccserver")

    async def test_stale_sentinel_naming_a_replica(self) -> None:
        """
        A sentinel that names a replica (cut off from the others, it missed
        a failover): the store checks the server's C{ROLE}, writes nothing
        there, and logs why.
        """
        group = redis_sentinel_group()
        replica = group.servers[1] if group.servers[1] is not group.primary else group.servers[2]
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        port = reactor.listenTCP(0, _StaleSentinelFactory(replica.port), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        await self.unavailable(f"redis+sentinel://127.0.0.1:{port.getHost().port}/ccserver")
        logged = " ".join(formatEvent(e) for e in events)
        self.assertIn(f"127.0.0.1:{replica.port} is a slave, not the primary", logged)


class _StaleSentinel(Protocol):
    """
    Answers every C{SENTINEL GET-MASTER-ADDR-BY-NAME} with one fixed
    address, and every other command (C{SUBSCRIBE}) as a sentinel would.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while (command := self._command()) is not None:
            if command[:1] == [b"SENTINEL"]:
                port = str(self.port).encode()
                self.transport.write(
                    b"*2\r\n$9\r\n127.0.0.1\r\n$%d\r\n%s\r\n" % (len(port), port)
                )
            elif command[:1] == [b"SUBSCRIBE"]:
                self.transport.write(b"*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n")
            else:
                self.transport.write(b"+OK\r\n")

    def _command(self) -> list[bytes] | None:
        lines = self.buffer.split(b"\r\n")
        if not lines[0].startswith(b"*") or len(lines) < 2:
            return None
        count = int(lines[0][1:])
        if len(lines) < 1 + 2 * count + 1:
            return None
        words = [lines[2 + 2 * i] for i in range(count)]
        consumed = sum(len(line) + 2 for line in lines[: 1 + 2 * count])
        self.buffer = self.buffer[consumed:]
        return [w.upper() if i == 0 else w for i, w in enumerate(words)]


class _StaleSentinelFactory(Factory):
    def __init__(self, port: int) -> None:
        self.port = port

    def buildProtocol(self, addr: Any) -> _StaleSentinel:
        return _StaleSentinel(self.port)


class WaitTests(TestCase):
    """
    C{WAIT}: a write is answered once a replica has it, or fails.
    """

    timeout = 60

    def setUp(self) -> None:
        self.primary = RedisServer()
        self.replica = RedisServer(replica_of=self.primary)
        for server in (self.replica, self.primary):
            self.addCleanup(server.remove)
        self.primary.start()
        self.replica.start()
        wait_until(
            lambda: "master_link_status:up" in self.replica.query("INFO", "replication")
            and "state=online" in self.primary.query("INFO", "replication"),
            what="the replica in sync",
        )
        # A replica's first acknowledgement after its sync can take up to a
        # second (its periodic REPLCONF ACK); the waits measured here start
        # once it has given one.
        self.primary.query("SET", "warm-up", "1")
        self.assertEqual(self.primary.query("WAIT", "1", str(int(DEADLINE * 1000))), 1)

    async def opened(self, wait_replicas: int, wait_timeout: float = 0.3) -> RedisStore:
        store = RedisStore.from_url(
            self.primary.url,
            reactor,
            timeout=TIMEOUT,
            wait_replicas=wait_replicas,
            wait_timeout=wait_timeout,
        )
        self.addCleanup(store.close)
        await store.open()
        return store

    async def test_no_replica_acknowledges(self) -> None:
        """
        With the replica stopped, a write fails with L{StoreUnavailable}
        after the wait, saying why; a read still works; once the replica is
        back, writes are answered again.  Without C{WAIT}, the same write
        would have been answered.  The writes the replica is there for wait
        longer (a loaded machine's replica may take more than 0.3 s to
        acknowledge).
        """
        patient = await self.opened(wait_replicas=1, wait_timeout=TIMEOUT)
        store = await self.opened(wait_replicas=1)
        await patient.add_client(make_client("before"))
        self.replica.pause()
        try:
            with self.assertRaises(StoreUnavailable) as raised:
                await store.add_client(make_client("unacknowledged"))
            self.assertIn("acknowledged by 0 of 1 replicas within 0.3 s", str(raised.exception))
            self.assertEqual(await store.get_client("before"), make_client("before"))
            unwaited = await self.opened(wait_replicas=0)
            await unwaited.add_client(make_client("not waited for"))
        finally:
            self.replica.resume()
        await patient.add_client(make_client("after"))

    async def test_every_kind_of_write_waits(self) -> None:
        """
        Each write that must survive a failover waits: C{WAIT} is called
        once per write (and once per batch of opaque tokens), initial
        access tokens' included.
        """
        store = await self.opened(wait_replicas=1, wait_timeout=TIMEOUT)
        self.primary.query("CONFIG", "RESETSTAT")
        writes: list[Deferred[Any]] = [
            store.add_client(make_client("c")),
            store.replace_client(make_client("c", client_secret_digest="f" * 64)),
            store.revoke_jti("jti-1", int(time.time()) + 60),
            store.use_once("once-1", int(time.time()) + 60),
        ]
        for d in writes:
            await d
        await store.delete_client("c", int(time.time()), int(time.time()) + 60)
        self.assertEqual(wait_calls(self.primary), 5)
        # an initial access token made, a registration with it (the client
        # and the use counted), a revocation
        self.primary.query("CONFIG", "RESETSTAT")
        token = make_initial_access_token()
        await store.add_initial_access_token(token)
        used = await store.register_with_initial_access_token(
            token.token_digest, make_client("registered"), int(time.time())
        )
        self.assertIsNotNone(used)
        self.assertTrue(await store.revoke_initial_access_token(token.token_id, int(time.time())))
        self.assertEqual(wait_calls(self.primary), 3)
        # one first token alone, then the others of the batch together
        self.primary.query("CONFIG", "RESETSTAT")
        tokens = [make_token(f"{i:064x}") for i in range(1, 30)]
        await gatherResults([store.add_token(t) for t in tokens])
        self.assertEqual(wait_calls(self.primary), 2)
        self.assertEqual(script_calls(self.primary), 2)
        self.assertIs(await store.delete_token(tokens[0].token_digest), True)
        self.assertEqual(wait_calls(self.primary), 3)
        # the brute-force limits' counts do not wait
        keys = AttemptKeys("counter", 10, None, 0, "known")
        reservation = await store.reserve_attempt(keys, time.time(), 60)
        self.assertTrue(reservation.granted)
        self.assertEqual(wait_calls(self.primary), 3)


def wait_calls(server: RedisServer) -> int:
    return _calls(server, "wait")


def script_calls(server: RedisServer) -> int:
    return _calls(server, "evalsha") + _calls(server, "eval")


def _calls(server: RedisServer, command: str) -> int:
    for line in str(server.query("INFO", "commandstats")).splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0
