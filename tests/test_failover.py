"""
A store's primary SIGKILLed under load, with real `twist ccserver`
processes in front (one with `--workers 2`, or two instances), and a real
failover behind: Redis Sentinel promoting a replica, or a PostgreSQL
standby promoted (`pg_ctl promote`, as Patroni or a cloud would).

Several clients register, get opaque tokens, revoke some and delete some
clients, without pause, before, during and after the failover.  The Redis
primary dies when its replicas lack its last writes (the moment at which
asynchronous replication loses acknowledged writes; without C{WAIT} this
test fails); the PostgreSQL standby is synchronous.  Then:

  - every answer was a 2xx, or a 503 temporarily_unavailable (never a 500,
    a 4xx for a client or token answered before, nor a dropped
    connection), and no process logged a traceback;
  - every write answered 2xx is on the new primary: each client
    registered, each opaque token issued (unless revoked or its client
    deleted), each revocation (the token gone), each deletion (the client
    gone, its revocation mark there);
  - a deletion answered 503 was applied whole or not at all;
  - the time from the kill to the first write answered 2xx is measured
    and printed (L{tests.process.print_figure}), never asserted.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import unittest
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from attrs import define, field

from ccserver.credentials import opaque_token_key
from ccserver.stores.redis import client_key, revoked_client_key, token_key
from ccserver.testing.servers import PostgresStandbyPair, RedisSentinelGroup, RedisServer
from tests.process import CCServerProcess, print_figure, wait_until

pytestmark = pytest.mark.process

MASTER_TOKEN = "failover-master-token-0123456789abcdef"
ISSUER = "https://as.example.com"

CONFIG = """
[store]
timeout = 2
client_cache_seconds = 0
[tokens]
format = "opaque"
"""

#: The load's clients, each a thread doing one thing after another.
CLIENTS = 4

#: Writes answered before the kill, and after the failover, before the
#: test goes on: enough to show it works on each side.
BEFORE = 30
AFTER = 30

#: The Redis database the store uses (not 0, so that SELECT is followed
#: through the failover too).
REDIS_DB = 5


@define
class Answer:
    kind: str  # register, token, revoke, delete
    key: str  # the client id or the opaque token
    status: int  # 0: no HTTP answer
    error: str
    sent: float
    answered: float
    #: for a token: its client
    client_id: str = ""


@define
class Load:
    """
    The clients' requests, spread over the servers' URLs, and every answer.
    """

    urls: list[str]
    answers: list[Answer] = field(factory=list)
    stop: threading.Event = field(factory=threading.Event)
    lock: threading.Lock = field(factory=threading.Lock)
    threads: list[threading.Thread] = field(factory=list)

    def start(self) -> None:
        for index in range(CLIENTS):
            thread = threading.Thread(target=self.run, args=(index,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def successes(self, after: float = 0.0) -> int:
        with self.lock:
            return sum(1 for a in self.answers if 200 <= a.status < 300 and a.sent > after)

    def run(self, index: int) -> None:
        cycle = 0
        with requests.Session() as session:
            while not self.stop.is_set():
                cycle += 1
                url = self.urls[cycle % len(self.urls)]
                self.cycle(session, url, f"{index}-{cycle}", cycle)

    def call(
        self, session: requests.Session, kind: str, method: str, url: str, **kwargs: Any
    ) -> tuple[Answer, Any]:
        sent = time.monotonic()
        try:
            response = session.request(method, url, timeout=30, **kwargs)
        except requests.RequestException as e:
            answer = Answer(kind, "", 0, type(e).__name__, sent, time.monotonic())
            return answer, None
        answered = time.monotonic()
        body: Any = None
        if response.content:
            try:
                body = response.json()
            except ValueError:
                body = None
        error = body.get("error", "") if isinstance(body, dict) and response.status_code >= 400 else ""
        return Answer(kind, "", response.status_code, error, sent, answered), body

    def record(self, answer: Answer) -> None:
        with self.lock:
            self.answers.append(answer)

    def cycle(self, session: requests.Session, url: str, name: str, cycle: int) -> None:
        """
        Register a client, get it a token, revoke every other token, delete
        every third client: each step only after the one before succeeded.
        """
        answer, client = self.call(
            session,
            "register",
            "POST",
            url + "/client-reg",
            json={"client_name": f"load {name}", "scope": "read"},
            headers={"Authorization": f"Bearer {MASTER_TOKEN}"},
        )
        answer.key = client["client_id"] if answer.status == 201 else ""
        self.record(answer)
        if answer.status != 201:
            return
        auth = (client["client_id"], client["client_secret"])
        answer, token = self.call(
            session,
            "token",
            "POST",
            url + "/token",
            data={"grant_type": "client_credentials"},
            auth=auth,
        )
        answer.client_id = client["client_id"]
        answer.key = token["access_token"] if answer.status == 200 else ""
        self.record(answer)
        if answer.status != 200:
            return
        if cycle % 2 == 0:
            answer, _ = self.call(
                session,
                "revoke",
                "POST",
                url + "/token/revoke",
                data={"token": token["access_token"]},
                auth=auth,
            )
            answer.key = token["access_token"]
            self.record(answer)
        if cycle % 3 == 0:
            answer, _ = self.call(
                session,
                "delete",
                "DELETE",
                f"{url}/client-reg/{client['client_id']}",
                headers={"Authorization": f"Bearer {client['registration_access_token']}"},
            )
            answer.key = client["client_id"]
            self.record(answer)


@define
class Stored:
    """
    What the new primary holds, as the checks need it.
    """

    clients: set[str]
    tokens: set[str]  # their storage keys
    marks: set[str]  # deleted clients' revocation marks


class FailoverMixin:
    """
    One failover under load; a subclass gives the store, and the servers
    in front of it.
    """

    #: "workers": one instance with --workers 2; "instances": two instances
    setup = "workers"
    store_name = ""

    def start_store(self) -> str:
        """
        Start the store's servers; return the URL ccserver is given.
        """
        raise NotImplementedError

    def fail_over(self, load: Load, killing: float, killed: float) -> tuple[str, float]:
        """
        Wait for the new primary (the old one was sent SIGKILL at
        C{killing}, and was dead at C{killed}); return what the figure says
        of the failover, and the time from which a success counts as
        "after".
        """
        raise NotImplementedError

    def kill_primary(self, load: Load) -> None:
        """
        SIGKILL the primary, and return once it is dead.
        """
        raise NotImplementedError

    def stored(self) -> Stored:
        raise NotImplementedError

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ccserver-failover-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)  # type: ignore[attr-defined]
        (self.tmp / "ccserver.toml").write_text(CONFIG)
        url = self.start_store()
        self.servers: list[CCServerProcess] = []
        if self.setup == "workers":
            self.servers.append(self.start_ccserver(url, "--workers", "2"))
        else:
            self.servers += [self.start_ccserver(url), self.start_ccserver(url)]

    def start_ccserver(self, url: str, *args: str) -> CCServerProcess:
        server = CCServerProcess(
            self.tmp,
            "--config", str(self.tmp / "ccserver.toml"),
            "--master-token", MASTER_TOKEN,
            "--issuer", ISSUER,
            *args,
            store=url,
        )
        self.addCleanup(server.kill)  # type: ignore[attr-defined]
        server.start()
        if "--workers" in args:
            # the worker too, so that both processes take connections
            wait_until(
                lambda: server.read_log().count("ccserver is ready") >= 2,
                what="the worker ready",
            )
        return server

    def test_primary_killed_under_load(self) -> None:
        load = Load([server.url for server in self.servers])
        load.start()
        try:
            wait_until(lambda: load.successes() >= BEFORE, what="writes before the kill")
            killing = time.monotonic()
            self.kill_primary(load)
            # Once it is dead: a write sent while it was dying may have
            # been answered, and kept, by it.  Only writes sent after this
            # count as "after the kill"; their time is counted from the
            # signal.
            killed = time.monotonic()
            failover, after = self.fail_over(load, killing, killed)
            wait_until(lambda: load.successes(after) >= AFTER, what="writes after the failover")
        finally:
            load.finish()
        answers = list(load.answers)
        # first, so that a 500's traceback is what a failure shows
        for server in self.servers:
            log = server.read_log()
            if "Traceback" in log:
                self.fail(log[max(0, log.index("Traceback") - 2000) :][:6000])  # type: ignore[attr-defined]
        self.check_answers(answers, killing)
        self.check_stored(answers, self.stored())
        first = min(
            a.answered for a in answers if 200 <= a.status < 300 and a.sent > killed
        )
        unavailable = sum(1 for a in answers if a.status == 503)
        print_figure(
            f"failover, {self.store_name}, {self.describe()}: first write answered "
            f"{first - killing:.2f} s after the kill ({failover}); {unavailable} answers 503, "
            f"{len(answers)} in all"
        )

    def describe(self) -> str:
        return "one instance --workers 2" if self.setup == "workers" else "two instances"

    def check_answers(self, answers: list[Answer], killing: float) -> None:
        expected = {
            "register": 201,
            "token": 200,
            "revoke": 200,
            "delete": 204,
        }
        unexpected = Counter(
            (a.kind, a.status, a.error)
            for a in answers
            if a.status != expected[a.kind]
            and (a.status, a.error) != (503, "temporarily_unavailable")
        )
        self.assertEqual(unexpected, Counter())  # type: ignore[attr-defined]
        before = [a for a in answers if a.answered < killing]
        self.assertTrue(all(a.status == expected[a.kind] for a in before))  # type: ignore[attr-defined]

    def check_stored(self, answers: list[Answer], stored: Stored) -> None:
        ok = {a.kind for a in answers}
        self.assertEqual(ok, {"register", "token", "revoke", "delete"})  # type: ignore[attr-defined]
        deleted = {a.key for a in answers if a.kind == "delete" and a.status == 204}
        deletion_unknown = {a.key for a in answers if a.kind == "delete" and a.status == 503}
        revoked = {a.key for a in answers if a.kind == "revoke" and a.status == 200}
        revocation_tried = {a.key for a in answers if a.kind == "revoke"}
        lost: list[str] = []
        for a in answers:
            if a.kind == "register" and a.status == 201:
                if a.key not in deleted | deletion_unknown and a.key not in stored.clients:
                    lost.append(f"registered client {a.key}")
            elif a.kind == "token" and a.status == 200:
                digest = opaque_token_key(a.key)
                gone = a.client_id in deleted | deletion_unknown or a.key in revocation_tried
                if not gone and digest not in stored.tokens:
                    lost.append(f"token of client {a.client_id}")
            elif a.kind == "revoke" and a.status == 200:
                if opaque_token_key(a.key) in stored.tokens:
                    lost.append(f"revocation of a token of {a.key[:8]}...")
            elif a.kind == "delete" and a.status == 204:
                if a.key in stored.clients or a.key not in stored.marks:
                    lost.append(f"deletion of client {a.key}")
        self.assertEqual(lost, [])  # type: ignore[attr-defined]
        self.assertTrue(revoked)  # type: ignore[attr-defined]
        # a deletion cut off by the failover was applied whole, or not at all
        for client_id in deletion_unknown:
            self.assertNotEqual(  # type: ignore[attr-defined]
                client_id in stored.clients, client_id in stored.marks, client_id
            )


class RedisFailoverMixin(FailoverMixin):
    """
    Redis: a primary, two replicas and three sentinels (down-after 500 ms);
    ccserver waits for one replica's acknowledgement of each write (the
    default with a redis+sentinel:// URL).
    """

    store_name = "Redis Sentinel"

    def start_store(self) -> str:
        self.group = RedisSentinelGroup(down_after_ms=500, failover_timeout_ms=2000)
        self.addCleanup(self.group.remove)  # type: ignore[attr-defined]
        self.group.start()
        return self.group.url(REDIS_DB)

    def kill_primary(self, load: Load) -> None:
        """
        Kill the primary when its replicas lack its last writes, the moment
        at which asynchronous replication loses acknowledged writes: the
        replicas are stopped (SIGSTOP) and their connections closed by the
        primary, the load writes on, and only once the primary holds a
        write that no replica has is it killed (and the replicas resumed).
        Those writes are lost with the primary; they must not have been
        answered as done.
        """
        self.old = self.group.primary
        replicas = [server for server in self.group.servers if server is not self.old]
        for replica in replicas:
            replica.pause()
        try:
            self.old.query("CLIENT", "KILL", "TYPE", "replica")
            offset = replication_offset(self.old)
            wait_until(
                lambda: replication_offset(self.old) > offset,
                interval=0.001,
                what="a write the replicas lack",
            )
            self.old.kill()
        finally:
            for replica in replicas:
                replica.resume()

    def fail_over(self, load: Load, killing: float, killed: float) -> tuple[str, float]:
        self.new = self.group.wait_for_failover(self.old)
        seen = time.monotonic()
        return (
            f"the sentinels named the new primary {seen - killing:.2f} s after it, "
            f"down-after-milliseconds {self.group.down_after_ms}",
            killed,
        )

    def stored(self) -> Stored:
        def keys(pattern: str) -> set[str]:
            found: set[str] = set()
            cursor = "0"
            while True:
                cursor, batch = self.new.query("SCAN", cursor, "MATCH", pattern, "COUNT", "1000", db=REDIS_DB)
                found.update(batch)
                if cursor == "0":
                    return found

        prefixes = (client_key(""), token_key(""), revoked_client_key(""))
        clients, tokens, marks = (
            {key[len(prefix) :] for key in keys(prefix + "*")} for prefix in prefixes
        )
        return Stored(clients, tokens, marks)


def replication_offset(server: RedisServer) -> int:
    """
    How far the primary's replication stream has gone: it grows with each
    write.
    """
    for line in str(server.query("INFO", "replication")).splitlines():
        if line.startswith("master_repl_offset:"):
            return int(line.split(":")[1])
    raise AssertionError("no master_repl_offset in INFO replication")


class PostgreSQLFailoverMixin(FailoverMixin):
    """
    PostgreSQL: a primary and a synchronous streaming standby, named in one
    multi-host URL (target_session_attrs=read-write); the standby promoted
    once the primary is dead, as a failover manager would.
    """

    store_name = "PostgreSQL"

    def start_store(self) -> str:
        self.pair = PostgresStandbyPair()
        self.addCleanup(self.pair.remove)  # type: ignore[attr-defined]
        self.pair.start()
        return self.pair.url

    def kill_primary(self, load: Load) -> None:
        self.pair.primary.kill()

    def fail_over(self, load: Load, killing: float, killed: float) -> tuple[str, float]:
        # as a failover manager would: once the primary is found dead
        wait_until(
            lambda: any(a.status == 503 and a.sent > killed for a in list(load.answers)),
            what="a 503 after the kill",
        )
        started = time.monotonic()
        self.pair.standby.promote()
        promoted = time.monotonic()
        first = wait_until(
            lambda: min(
                (a.answered for a in list(load.answers) if 200 <= a.status < 300 and a.sent > promoted),
                default=None,
            ),
            what="a write after the promotion",
        )
        return (
            f"promoted {started - killing:.2f} s after it, in {promoted - started:.2f} s; "
            f"first write {first - promoted:.2f} s after the promotion",
            promoted,
        )

    def stored(self) -> Stored:
        def column(statement: str) -> set[str]:
            return {row[0] for row in self.pair.standby.query(statement, self.pair.database)}

        return Stored(
            column("SELECT client_id FROM clients"),
            column("SELECT token_digest FROM access_tokens"),
            column("SELECT client_id FROM revoked_clients"),
        )


class RedisFailoverWorkers(RedisFailoverMixin, unittest.TestCase):
    setup = "workers"


class RedisFailoverInstances(RedisFailoverMixin, unittest.TestCase):
    setup = "instances"


class PostgreSQLFailoverWorkers(PostgreSQLFailoverMixin, unittest.TestCase):
    setup = "workers"


class PostgreSQLFailoverInstances(PostgreSQLFailoverMixin, unittest.TestCase):
    setup = "instances"
