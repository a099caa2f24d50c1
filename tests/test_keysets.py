"""
L{ccserver.keysets.KeySetSource} on its own: a JWK set's URL is a
twisted.web resource reached through StubTreq, time is a Clock.  How
clients authenticate with what it fetches is in test_client_auth_jwt.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ccserver import keysets
from ccserver.jose import public_jwk
from ccserver.keysets import KeySet, KeySetSource, KeySetUnavailable
from ccserver.outbound import AddressPolicy

URL = "https://keys.example/jwks.json"


class KeySetResource(Resource):
    """
    Serves C{jwks}; counts fetches; C{code} and C{hang} change its answer.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.jwks: dict[str, Any] = {
            "keys": [dict(public_jwk(ec.generate_private_key(ec.SECP256R1())), kid="k1")]
        }
        self.fetches = 0
        self.code = 200
        self.hang = False

    def render_GET(self, request: Any) -> Any:
        self.fetches += 1
        if self.hang:
            return NOT_DONE_YET
        request.setResponseCode(self.code)
        return json.dumps(self.jwks).encode()


class KeySetSourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = KeySetResource()
        self.source = self.make_source()

    def make_source(self, policy: AddressPolicy | None = None) -> KeySetSource:
        return KeySetSource(
            StubTreq(self.server),
            self.clock,
            policy=policy or AddressPolicy.public(),
            timeout=5,
            default_cache=300,
            min_cache=60,
            max_cache=86400,
            refetch_interval=30,
            max_keys=20,
        )

    def key_set(self, url: str = URL, refetch_for: str | None = None) -> Deferred[KeySet]:
        return ensureDeferred(self.source.key_set(url, refetch_for=refetch_for))

    def test_fetched_once_for_many(self) -> None:
        """
        Requests that come while a fetch is under way share it.
        """
        self.server.hang = True
        waiting = [self.key_set() for _ in range(10)]
        self.assertEqual(self.server.fetches, 1)
        self.clock.advance(5)
        for each in waiting:
            self.failureResultOf(each, KeySetUnavailable)

    def test_every_failure_answers_at_the_timeout(self) -> None:
        """
        A refusal (500), a silent server, a URL the policy refuses and an
        answer that is no JWK set are all answered 5 s after the fetch
        began, not before: the time says nothing of the cause.
        """
        causes = {
            "answered 500": lambda: setattr(self.server, "code", 500),
            "hang": lambda: setattr(self.server, "hang", True),
            "refused": lambda: None,
            "not a set": lambda: setattr(self.server, "jwks", {"keys": "none"}),
        }
        for name, cause in causes.items():
            self.server = KeySetResource()
            self.source = self.make_source()
            cause()
            url = "https://127.0.0.1/jwks.json" if name == "refused" else URL
            pending = self.key_set(url)
            self.clock.advance(4.99)
            self.assertNoResult(pending)
            self.clock.advance(0.01)
            self.failureResultOf(pending, KeySetUnavailable)

    def test_refused_url_never_fetched(self) -> None:
        self.server.jwks = {"keys": []}
        pending = self.key_set("https://169.254.169.254/latest/meta-data/")
        self.clock.advance(5)
        failure = self.failureResultOf(pending, KeySetUnavailable)
        self.assertIn("link-local", str(failure.value))
        self.assertEqual(self.server.fetches, 0)

    def test_failure_kept_like_a_set(self) -> None:
        self.server.code = 503
        first = self.key_set()
        self.clock.advance(5)
        self.failureResultOf(first, KeySetUnavailable)
        for _ in range(100):
            # at once: the cached failure
            self.failureResultOf(self.key_set(), KeySetUnavailable)
            self.failureResultOf(self.key_set(refetch_for="client"), KeySetUnavailable)
        self.assertEqual(self.server.fetches, 1)
        self.clock.advance(55)  # 60 s after the failure
        self.server.code = 200
        self.assertEqual(len(self.successResultOf(self.key_set()).keys), 1)
        self.assertEqual(self.server.fetches, 2)

    def test_refetch_for_a_caller(self) -> None:
        """
        A caller lacking a key makes one refetch of a fresh set per 30 s;
        another caller makes its own.
        """
        self.successResultOf(self.key_set())
        for _ in range(5):
            self.successResultOf(self.key_set(refetch_for="one"))
        self.successResultOf(self.key_set(refetch_for="two"))
        self.assertEqual(self.server.fetches, 3)
        self.clock.advance(30)
        self.successResultOf(self.key_set(refetch_for="one"))
        self.assertEqual(self.server.fetches, 4)

    def test_failed_refetch_keeps_the_fresh_set(self) -> None:
        fresh = self.successResultOf(self.key_set())
        self.server.code = 500
        pending = self.key_set(refetch_for="one")
        self.assertNoResult(pending)
        self.clock.advance(5)
        self.assertEqual(self.successResultOf(pending), fresh)
        self.assertEqual(self.successResultOf(self.key_set()), fresh)

    def test_too_many_keys(self) -> None:
        self.server.jwks = {"keys": self.server.jwks["keys"] * 21}
        pending = self.key_set()
        self.clock.advance(5)
        self.assertIn("more than 20 keys", str(self.failureResultOf(pending).value))

    def test_remembers_a_bounded_number_of_urls(self) -> None:
        """
        Past the bound, the oldest set is forgotten (and fetched again when
        asked for); the newest are kept.
        """
        self.patch(keysets, "MAX_ENTRIES", 3)
        for index in range(10):
            self.successResultOf(self.key_set(f"https://keys.example/{index}"))
        self.successResultOf(self.key_set("https://keys.example/9"))
        self.assertEqual(self.server.fetches, 10)
        self.successResultOf(self.key_set("https://keys.example/0"))
        self.assertEqual(self.server.fetches, 11)

    def test_certificates(self) -> None:
        from tests.certs import issue

        issued = issue(None, "client")
        self.server.jwks = {"keys": [issued.jwk, self.server.jwks["keys"][0]]}
        self.assertEqual(self.successResultOf(self.key_set()).certificates, (issued.der,))
