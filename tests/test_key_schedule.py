"""
Signing keys on a schedule ([keys] rotate_every): when a rotation is due,
that one process of all those sharing the store makes it (under the
rotation's lease, the schedule asked again under it), the delayed
activation and the retirement after the longest token lifetime, the events
told of each key, the command's view of the schedule; and the JWK set's
entity tag with C{If-None-Match} (RFC 9110 §13.1.2).  In memory, on a
Clock; the lease and a rotation raced by two processes on every store are
in tests/test_store_contract.py, real processes in
tests/test_key_schedule_process.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attrs import evolve
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ccserver import audit
from ccserver.admin import rotation_schedule
from ccserver.config import Config, KeysConfig, load_config, parse_duration
from ccserver.errors import ConfigError
from ccserver.keys import (
    ANNOUNCE_WINDOW,
    ROTATION_LEASE,
    ROTATION_LEASE_SECONDS,
    KeyEncryptor,
    Keyring,
    RotationUnderWay,
    audit_key_events,
    entity_tag,
)
from ccserver.model import StoredKey
from ccserver.services import rotate_on_schedule, rotation_check_interval
from ccserver.stores.memory import MemoryStore
from tests.helpers import ServerTestCase, config_of, temp_dir
from tests.test_limits import RecordingStore

DAY = 86400
EVERY = 30 * DAY
DELAY = 600
MAX_LIFETIME = DAY

REPO = Path(__file__).resolve().parent.parent


class ScheduleTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.store = RecordingStore()
        self.encryptor = KeyEncryptor.ephemeral()
        self.events: list[tuple[str, str]] = []
        self.keyring = self.make_keyring()
        self.first = self.wait(self.keyring.add_key("ES256", active_from=int(self.clock.seconds())))

    def make_keyring(self) -> Keyring:
        return Keyring(
            self.store,
            self.encryptor,
            "ES256",
            MAX_LIFETIME,
            self.clock.seconds,
            lambda event, key: self.events.append((event, key.kid)),
        )

    def wait(self, coroutine: Any) -> Any:
        return self.successResultOf(ensureDeferred(coroutine))

    def scheduled(self, keyring: Keyring | None = None, holder: str = "process-1") -> StoredKey | None:
        result: StoredKey | None = self.wait(
            (keyring or self.keyring).rotate_on_schedule(EVERY, DELAY, self.store, holder)
        )
        return result

    def kids(self) -> list[str]:
        return [key.kid for key in self.successResultOf(self.store.list_keys())]


class RotationScheduleTests(ScheduleTestCase):
    def test_next_rotation_counts_from_the_newest_key(self) -> None:
        """
        Due C{rotate_every} after the newest key of the configured
        algorithm was made; a rotation by hand starts the schedule anew.
        """
        made = self.first.created_at
        self.assertEqual(self.keyring.next_rotation(EVERY), made + EVERY)
        self.clock.advance(10 * DAY)
        new = self.wait(self.keyring.rotate(DELAY))
        self.assertEqual(self.keyring.next_rotation(EVERY), new.created_at + EVERY)
        # a key of another algorithm does not count
        self.clock.advance(DAY)
        self.wait(self.keyring.add_key("EdDSA", active_from=int(self.clock.seconds())))
        self.assertEqual(self.keyring.next_rotation(EVERY), new.created_at + EVERY)

    def test_not_due_costs_no_round_trip(self) -> None:
        self.clock.advance(EVERY - 1)
        del self.store.calls[:]
        self.assertIsNone(self.scheduled())
        self.assertEqual(self.store.calls, [])
        self.assertEqual(self.kids(), [self.first.kid])

    def test_due_rotates_with_the_activation_delay(self) -> None:
        """
        Once due: a new key, published at once and signing after the
        activation delay; the old one signs until then, and stays published
        until the longest token it may have signed has expired; then the
        next scheduled run deletes it.  The schedule goes on from the new key.
        """
        self.clock.advance(EVERY)
        new = self.scheduled()
        assert new is not None
        self.assertEqual(new.active_from, self.clock.seconds() + DELAY)
        self.assertEqual(self.kids(), [self.first.kid, new.kid])
        self.assertEqual(self.keyring.current.kid, self.first.kid)
        self.clock.advance(DELAY)
        self.assertEqual(self.keyring.current.kid, new.kid)
        old = self.successResultOf(self.store.list_keys())[0]
        self.assertEqual(old.retired_at, new.active_from)
        self.assertEqual(self.keyring.state(old), "retiring")
        self.clock.advance(MAX_LIFETIME - 1)
        self.assertIsNone(self.scheduled())
        self.assertEqual(self.kids(), [self.first.kid, new.kid])
        self.clock.advance(1)
        self.assertIsNone(self.scheduled())
        self.assertEqual(self.kids(), [new.kid])
        self.assertEqual(
            self.events,
            [
                ("created", self.first.kid),
                ("created", new.kid),
                ("retired", self.first.kid),
                ("deleted", self.first.kid),
            ],
        )
        self.assertEqual(self.keyring.next_rotation(EVERY), new.created_at + EVERY)

    def test_lease_held_elsewhere(self) -> None:
        """
        While another process holds the rotation's lease, this one leaves
        the rotation to it; once that lease has run out (a process that
        died while rotating), this one rotates.
        """
        self.clock.advance(EVERY)
        self.successResultOf(
            self.store.take_lease(
                ROTATION_LEASE, "elsewhere", self.clock.seconds(), ROTATION_LEASE_SECONDS
            )
        )
        self.assertIsNone(self.scheduled())
        self.assertEqual(len(self.kids()), 1)
        self.clock.advance(ROTATION_LEASE_SECONDS)
        self.assertIsNotNone(self.scheduled())
        self.assertEqual(len(self.kids()), 2)
        # given up after the rotation: the other may take it at once
        self.assertTrue(
            self.successResultOf(
                self.store.take_lease(ROTATION_LEASE, "elsewhere", self.clock.seconds(), 60)
            )
        )

    def test_rotated_elsewhere_meanwhile(self) -> None:
        """
        A process whose keys are out of date finds the rotation due, takes
        the lease after another has rotated, reads the keys again under it
        and makes none.
        """
        behind = self.make_keyring()
        self.wait(behind.refresh())
        self.clock.advance(EVERY)
        made = self.scheduled(holder="process-1")
        self.assertIsNotNone(made)
        self.assertIsNone(self.scheduled(behind, holder="process-2"))
        self.assertEqual(len(self.kids()), 2)

    def test_lease_given_up_when_the_rotation_fails(self) -> None:
        class BrokenStore(RecordingStore):
            def add_key(self, key: StoredKey) -> Deferred[None]:
                raise RuntimeError("disk full")

        self.store = BrokenStore()
        self.keyring = self.make_keyring()
        self.clock.advance(EVERY)
        self.failureResultOf(
            ensureDeferred(self.keyring.rotate_on_schedule(EVERY, DELAY, self.store, "p1")),
            RuntimeError,
        )
        self.assertTrue(
            self.successResultOf(self.store.take_lease(ROTATION_LEASE, "p2", self.clock.seconds(), 60))
        )

    def test_rotation_by_hand_takes_the_lease(self) -> None:
        """
        C{ccserver keys rotate} never runs at once with a scheduled
        rotation: it holds the lease, and is refused while another does.
        """
        new = self.wait(self.keyring.rotate_exclusively(0, self.store, "cli"))
        self.assertEqual(self.keyring.current.kid, new.kid)
        self.successResultOf(
            self.store.take_lease(ROTATION_LEASE, "scheduler", self.clock.seconds(), 60)
        )
        failure = self.failureResultOf(
            ensureDeferred(self.keyring.rotate_exclusively(0, self.store, "cli")), RotationUnderWay
        )
        self.assertIn("try again", failure.getErrorMessage())

    def test_the_job_logs_a_failure(self) -> None:
        class Unreachable(RecordingStore):
            def take_lease(self, *args: Any) -> Deferred[bool]:
                raise ConnectionError("store down")

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.clock.advance(EVERY)
        self.wait(rotate_on_schedule(self.keyring, Unreachable(), EVERY, DELAY, "p1"))
        warnings = [e for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertIn("store down", warnings[0]["error"])

    def test_check_interval(self) -> None:
        self.assertEqual(rotation_check_interval(EVERY), 60.0)
        self.assertEqual(rotation_check_interval(400), 20.0)
        self.assertEqual(rotation_check_interval(5), 1.0)


class ActivationEventTests(ScheduleTestCase):
    def test_told_once_across_processes(self) -> None:
        """
        A key activates by the clock: the first process to see it records
        it in the store and tells of it; the others do not.
        """
        other = self.make_keyring()
        new = self.wait(self.keyring.rotate(DELAY))
        self.wait(other.refresh())
        for keyring in (self.keyring, other):
            self.wait(keyring.announce_activations(self.store))
        self.assertEqual([e for e in self.events if e[0] == "activated"], [("activated", self.first.kid)])
        self.clock.advance(DELAY)
        for keyring in (other, self.keyring, other):
            self.wait(keyring.announce_activations(self.store))
        self.assertEqual(
            [e for e in self.events if e[0] == "activated"],
            [("activated", self.first.kid), ("activated", new.kid)],
        )

    def test_not_told_long_after(self) -> None:
        """
        A process that starts long after a key became active does not tell
        of it, nor ask the store.
        """
        self.clock.advance(ANNOUNCE_WINDOW)
        keyring = self.make_keyring()
        self.wait(keyring.refresh())
        del self.store.calls[:]
        self.wait(keyring.announce_activations(self.store))
        self.assertEqual(self.store.calls, [])
        self.assertNotIn("activated", [event for event, _ in self.events])

    def test_asked_once_per_key(self) -> None:
        self.wait(self.keyring.announce_activations(self.store))
        del self.store.calls[:]
        self.wait(self.keyring.announce_activations(self.store))
        self.assertEqual(self.store.calls, [])


class ScheduleCommandTests(ScheduleTestCase):
    def test_keys_list_says_when(self) -> None:
        now = self.clock.seconds()
        self.assertEqual(
            rotation_schedule(self.keyring, None, now),
            "scheduled rotation: off ([keys] rotate_every is not set)",
        )
        self.assertEqual(
            rotation_schedule(self.keyring, EVERY, now),
            "scheduled rotation: every 30d; next 2027-02-14 08:00:00 UTC",
        )
        self.assertIn(
            "next now", rotation_schedule(self.keyring, EVERY, now + EVERY)
        )


class RotateEveryConfigTests(SynchronousTestCase):
    def load(self, text: str) -> Config:
        return config_of(self, text)

    def test_off_by_default(self) -> None:
        self.assertIsNone(Config().keys.rotate_every)
        self.assertIsNone(self.load("").keys.rotate_every)

    def test_durations(self) -> None:
        for text, seconds in [
            ('"30d"', 30 * DAY),
            ('"12h"', 12 * 3600),
            ('"1h30m"', 5400),
            ('"2w"', 14 * DAY),
            ('"3600s"', 3600),
            ("7200", 7200),
        ]:
            config = self.load(f"[keys]\nrotate_every = {text}\n")
            self.assertEqual(config.keys.rotate_every, seconds, text)

    def test_mistakes_name_the_key(self) -> None:
        for text in ['"30 days"', '"d"', '"-1d"', '"0s"', "0", "-5", '"1000000000d"']:
            with self.assertRaises(ConfigError) as caught:
                self.load(f"[keys]\nrotate_every = {text}\n")
            self.assertTrue(str(caught.exception).startswith("[keys] rotate_every: "), caught.exception)
        with self.assertRaises(ConfigError) as caught:
            self.load("[keys]\nrotate_every = true\n")
        self.assertEqual(
            str(caught.exception), "keys.rotate_every: must be a string or an integer, not True"
        )

    def test_longer_than_the_activation_delay(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            self.load('[keys]\nrotate_every = "10m"\nactivation_delay = 600\n')
        self.assertIn("activation_delay", str(caught.exception))
        self.assertEqual(
            self.load('[keys]\nrotate_every = "11m"\nactivation_delay = 600\n').keys,
            KeysConfig(rotate_every=660, activation_delay=600),
        )

    def test_parse_duration(self) -> None:
        self.assertEqual(parse_duration("30d"), 30 * DAY)
        self.assertEqual(parse_duration("90"), 90)
        self.assertEqual(parse_duration(" 1h30m "), 5400)
        for wrong in (1.5, "", "d", "1h 30m", "٣d", "0", "0d", -3, True, "5y"):
            with self.assertRaises(ValueError):
                parse_duration(wrong)

    def test_on_in_the_example_configuration(self) -> None:
        config = load_config({"config": str(REPO / "etc" / "ccserver.toml")}, {})
        self.assertEqual(config.keys.rotate_every, 30 * DAY)


class JWKSEntityTagTests(ServerTestCase):
    """
    RFC 9110 §13.1.2: a GET or HEAD whose C{If-None-Match} matches the
    current JWK set gets 304 with its C{ETag} and C{Cache-Control} and no
    body; the weak comparison decides.
    """

    def jwks(self, *if_none_match: str, method: str = "GET") -> Any:
        headers = {"If-None-Match": ", ".join(if_none_match)} if if_none_match else {}
        return self.request(method, "/jwks.json", headers=headers)

    def test_etag(self) -> None:
        response = self.jwks()
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers["etag"], entity_tag(response.body))
        self.assertEqual(response.headers["etag"], self.keyring.jwks_etag)
        self.assertTrue(response.headers["etag"].startswith('"'))

    def test_not_modified(self) -> None:
        etag = self.jwks().headers["etag"]
        for header in (etag, "W/" + etag, f'"other", {etag}', "*", f' , {etag} ,'):
            response = self.jwks(header)
            self.assertEqual(response.code, 304, header)
            self.assertEqual(response.body, b"")
            self.assertEqual(response.headers["etag"], etag)
            self.assertEqual(response.headers["cache-control"], "public, max-age=300")
        self.assertEqual(self.jwks(etag, method="HEAD").code, 304)

    def test_several_field_lines(self) -> None:
        etag = self.jwks().headers["etag"]
        response = self.successResultOf(
            self.treq.request(
                "GET",
                "http://ccserver.example/jwks.json",
                headers={"If-None-Match": ['"one"', etag]},
            )
        )
        self.assertEqual(response.code, 304)

    def test_modified(self) -> None:
        """
        Another tag, a malformed field, or a set changed by a rotation: the
        whole set, with its new tag.
        """
        etag = self.jwks().headers["etag"]
        for header in ('"other"', etag[1:], 'W/ ' + etag, etag + etag, '"a", *', "", etag.upper()):
            response = self.jwks(header)
            self.assertEqual(response.code, 200, header)
            self.assertEqual(response.headers["etag"], etag)
        self.successResultOf(ensureDeferred(self.keyring.rotate(600)))
        response = self.jwks(etag)
        self.assertEqual(response.code, 200)
        self.assertNotEqual(response.headers["etag"], etag)
        self.assertEqual(len(response.json()["keys"]), 2)

    def test_changes_by_the_clock(self) -> None:
        """
        A retired key leaves the set when its last token has expired, with
        no write: the tag changes then too.
        """
        self.successResultOf(ensureDeferred(self.keyring.rotate(0)))
        etag = self.jwks().headers["etag"]
        self.clock.advance(self.config.tokens.max_lifetime)
        response = self.jwks(etag)
        self.assertEqual(response.code, 200)
        self.assertEqual(len(response.json()["keys"]), 1)

    def test_same_keys_same_tag_everywhere(self) -> None:
        """
        Another process on the same store gives the same tag, so that a
        cache behind a load balancer revalidates with any instance.
        """
        other = Keyring(
            self.store, self.encryptor, self.signing_alg, self.config.tokens.max_lifetime,
            self.clock.seconds,
        )
        self.successResultOf(ensureDeferred(other.refresh()))
        self.assertEqual(other.jwks_etag, self.jwks().headers["etag"])

    def test_long_field(self) -> None:
        """
        A field of thousands of commas and tags is read in linear time and
        answered as itself.
        """
        etag = self.jwks().headers["etag"]
        self.assertEqual(self.jwks("," * 6000).code, 200)
        self.assertEqual(self.jwks(", ".join(['"x"'] * 1500 + [etag])).code, 304)


del evolve


def start_tree(test: SynchronousTestCase, config: str) -> tuple[Any, Any, MemoryStore]:
    """
    The daemon's service tree on a memory store and a MemoryReactorClock,
    started with this configuration: its reactor, its root, its store.
    """
    from twisted.internet.testing import MemoryReactorClock

    from ccserver.tap import Options, Process, makeService
    from tests.helpers import MASTER_TOKEN
    from tests.test_service import RecordingStartUp

    path = Path(temp_dir(test)) / "ccserver.toml"
    path.write_text(config)
    reactor = MemoryReactorClock()
    reactor.advance(1_800_000_000)
    options = Options()
    options.parseOptions(
        ["--store", "memory://", "--master-token", MASTER_TOKEN, "--config", str(path),
         "--listen", "tcp:8080"]
    )
    service = makeService(options, Process(reactor, [], {}, 1, RecordingStartUp()))
    service.startService()
    test.addCleanup(service.stopService)
    store = next(child for child in service).store
    return reactor, service, store


class ScheduledServiceTests(SynchronousTestCase):
    """
    The daemon's tree runs the schedule: with [keys] rotate_every, a
    timer asks every so often, and rotates once it is due; without, none.
    """

    def test_rotates_when_due(self) -> None:
        reactor, _, store = start_tree(self, '[keys]\nrotate_every = "2h"\nactivation_delay = 60\n')
        self.assertEqual(len(self.successResultOf(store.list_keys())), 1)
        for _ in range(2 * 360 - 1):
            reactor.advance(10)
        self.assertEqual(len(self.successResultOf(store.list_keys())), 1)
        reactor.advance(10)
        keys = self.successResultOf(store.list_keys())
        self.assertEqual(len(keys), 2)
        self.assertEqual(keys[1].active_from, keys[1].created_at + 60)

    def test_off(self) -> None:
        reactor, _, store = start_tree(self, "[keys]\nactivation_delay = 60\n")
        for _ in range(100):
            reactor.advance(3600)
        self.assertEqual(len(self.successResultOf(store.list_keys())), 1)


class KeyAuditTests(SynchronousTestCase):
    """
    The audit trail tells of every key the server makes, activates, retires
    and deletes, as the server's own acts; the command's, as its user's.
    """

    def test_scheduled_rotation_audited(self) -> None:
        from tests.helpers import AuditEvents

        audit_events = AuditEvents(self)
        reactor, _, store = start_tree(self, '[keys]\nrotate_every = "2h"\nactivation_delay = 60\n')
        first = self.successResultOf(store.list_keys())[0]
        for _ in range(2 * 60 + 3):
            reactor.advance(60)
        new = self.successResultOf(store.list_keys())[1]
        server = {"type": "server"}
        self.assertEqual(
            [e for e in audit_events.events if e["type"].startswith("key.")],
            [
                {"type": "key.created", "actor": server, "kid": first.kid, "alg": "RS256",
                 "active_from": first.active_from},
                {"type": "key.activated", "actor": server, "kid": first.kid, "alg": "RS256"},
                {"type": "key.created", "actor": server, "kid": new.kid, "alg": "RS256",
                 "active_from": new.active_from},
                {"type": "key.retired", "actor": server, "kid": first.kid, "alg": "RS256",
                 "retired_at": new.active_from},
                {"type": "key.activated", "actor": server, "kid": new.kid, "alg": "RS256"},
            ],
        )

    def test_command_keys_audited(self) -> None:
        """
        C{ccserver keys rotate}: the key made and the one retired, told as
        the command user's.
        """
        from tests.helpers import AuditEvents

        audit_events = AuditEvents(self)
        store = MemoryStore()
        clock = Clock()
        clock.advance(1_800_000_000)
        keyring = Keyring(
            store, KeyEncryptor.ephemeral(), "ES256", DAY, clock.seconds,
            audit_key_events(audit.cli("alice")),
        )
        first = self.successResultOf(ensureDeferred(keyring.add_key("ES256", 1_800_000_000)))
        new = self.successResultOf(ensureDeferred(keyring.rotate_exclusively(60, store, "cli")))
        alice = {"type": "cli", "user": "alice"}
        self.assertEqual(
            [(e["type"], e["actor"], e["kid"]) for e in audit_events.events],
            [
                ("key.created", alice, first.kid),
                ("key.created", alice, new.kid),
                ("key.retired", alice, first.kid),
            ],
        )
