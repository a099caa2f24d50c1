"""
Signing keys: encryption at rest, the JWK set, rotation and retirement.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
from twisted.internet.defer import ensureDeferred

from tests.helpers import ServerTestCase, basic


class KeyEncryptorTests(ServerTestCase):
    def test_stored_encrypted(self) -> None:
        stored = self.successResultOf(self.store.list_keys())[0]
        self.assertNotIn("PRIVATE KEY", stored.encrypted_private_key)


class RotationTests(ServerTestCase):
    max_lifetime = 86400

    def setUp(self) -> None:
        super().setUp()
        self.client = self.register(scope="read")

    def jwks(self) -> list[str]:
        return [k["kid"] for k in self.request("GET", "/jwks.json").json()["keys"]]

    def issue(self) -> str:
        response = self.token(
            {"grant_type": "client_credentials"},
            basic(self.client["client_id"], self.client["client_secret"]),
        )
        return str(response.json()["access_token"])

    def kid(self, token: str) -> str:
        return str(jwt.get_unverified_header(token)["kid"])

    def rotate(self, delay: int) -> Any:
        return self.successResultOf(ensureDeferred(self.keyring.rotate(delay)))

    def test_jwks_cache_fits_activation_delay(self) -> None:
        response = self.request("GET", "/jwks.json")
        self.assertEqual(response.headers["cache-control"], "public, max-age=300")

    def test_new_key_published_before_it_signs(self) -> None:
        old = self.keyring.current.kid
        new = self.rotate(600)
        self.assertCountEqual(self.jwks(), [old, new.kid])
        self.assertEqual(self.kid(self.issue()), old)
        self.clock.advance(599)
        self.assertEqual(self.kid(self.issue()), old)
        self.clock.advance(1)
        self.assertEqual(self.kid(self.issue()), new.kid)

    def test_old_key_published_until_its_tokens_expire(self) -> None:
        old = self.keyring.current.kid
        last_old_token = self.issue()
        self.clock.advance(3000)
        new = self.rotate(500)
        self.clock.advance(500)
        self.verify(last_old_token)
        self.clock.advance(self.max_lifetime - 1)
        self.assertIn(old, self.jwks())
        self.clock.advance(1)
        self.assertEqual(self.jwks(), [new.kid])

    def test_every_token_verifies_across_rotation(self) -> None:
        tokens = []
        for _ in range(3):
            self.rotate(600)
            for _ in range(7):
                tokens.append(self.issue())
                self.clock.advance(100)
        for token in tokens:
            self.verify(token)

    def test_retire_deletes_only_expired(self) -> None:
        old = self.keyring.current.kid
        self.rotate(0)
        self.assertEqual(self.successResultOf(ensureDeferred(self.keyring.retire())), [])
        self.clock.advance(self.max_lifetime)
        deleted = self.successResultOf(ensureDeferred(self.keyring.retire()))
        self.assertEqual([k.kid for k in deleted], [old])
        self.assertEqual(len(self.successResultOf(self.store.list_keys())), 1)

    def test_retire_named_key(self) -> None:
        old = self.keyring.current.kid
        failure = self.failureResultOf(ensureDeferred(self.keyring.retire(old)), ValueError)
        self.assertIn("only active", str(failure.value))
        self.rotate(600)
        self.failureResultOf(ensureDeferred(self.keyring.retire(old)), ValueError)
        # A second active key (two instances that both made one at their
        # first start, say) can be retired at once.
        self.clock.advance(1)
        second = self.successResultOf(
            ensureDeferred(self.keyring.add_key("RS256", int(self.clock.seconds())))
        )
        self.successResultOf(ensureDeferred(self.keyring.refresh()))
        self.assertEqual(self.kid(self.issue()), second.kid)
        retired = self.successResultOf(ensureDeferred(self.keyring.retire(second.kid)))
        self.assertEqual([k.kid for k in retired], [second.kid])
        self.assertEqual(self.kid(self.issue()), old)
        self.assertIn(second.kid, self.jwks())

    def test_other_instance_follows(self) -> None:
        """
        A rotation made elsewhere (another instance, the ccserver command)
        reaches this process at its next key refresh.
        """
        from ccserver.keys import Keyring

        elsewhere = Keyring(self.store, self.encryptor, "RS256", self.max_lifetime, self.clock.seconds)
        new = self.successResultOf(ensureDeferred(elsewhere.rotate(600)))
        self.assertNotIn(new.kid, self.jwks())
        self.successResultOf(ensureDeferred(self.keyring.refresh()))
        self.assertIn(new.kid, self.jwks())
        self.clock.advance(600)
        self.assertEqual(self.kid(self.issue()), new.kid)

    def test_jwks_is_public_json(self) -> None:
        self.rotate(600)
        for key in json.loads(self.keyring.jwks_json)["keys"]:
            self.assertNotIn("d", key)


class _InlinePool:
    """
    A thread pool stand-in that runs the work at once, and counts it.
    """

    def __init__(self) -> None:
        self.calls = 0

    def callInThreadWithCallback(self, on_result: Any, f: Any, *args: Any) -> None:
        self.calls += 1
        on_result(True, f(*args))


class _Reactor:
    def __init__(self) -> None:
        self.pool = _InlinePool()

    def getThreadPool(self) -> _InlinePool:
        return self.pool

    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)


class SignerTests(ServerTestCase):
    def test_rsa_signing_choice(self) -> None:
        """
        "auto" hands RSA signatures to threads only while the workers
        leave two cores idle (one process on two cores signs inline: it
        measured faster); "threads" and "inline" are what they say.
        """
        from ccserver.oauth.tokens import rsa_signing_in_threads

        self.assertFalse(rsa_signing_in_threads("auto", 1, 2))
        self.assertTrue(rsa_signing_in_threads("auto", 1, 3))
        self.assertTrue(rsa_signing_in_threads("auto", 2, 4))
        self.assertFalse(rsa_signing_in_threads("auto", 3, 4))
        self.assertFalse(rsa_signing_in_threads("auto", 2, 2))
        self.assertFalse(rsa_signing_in_threads("auto", 4, 2))
        self.assertFalse(rsa_signing_in_threads("auto", 1, None))
        self.assertTrue(rsa_signing_in_threads("threads", 8, 2))
        self.assertFalse(rsa_signing_in_threads("inline", 1, 8))

    def test_default_signer(self) -> None:
        """
        The composition root picks the signer from the configuration and
        the machine's cores, which it is given.
        """
        from ccserver.assembly import default_signer
        from ccserver.config import Config, TokenConfig
        from ccserver.oauth.tokens import sign_inline

        reactor = _Reactor()
        self.assertIs(default_signer(reactor, Config(workers=2), 2), sign_inline)
        self.assertIs(default_signer(reactor, Config(workers=1), 2), sign_inline)
        threads = Config(workers=1, tokens=TokenConfig(rsa_signing="threads"))
        self.assertIsNot(default_signer(reactor, threads, 2), sign_inline)
        self.assertIsNot(default_signer(reactor, Config(workers=2), 4), sign_inline)
        inline = Config(workers=1, tokens=TokenConfig(rsa_signing="inline"))
        self.assertIs(default_signer(reactor, inline, 4), sign_inline)

    def test_rsa_in_threads_ec_inline(self) -> None:
        from ccserver.keys import SigningKey, generate_private_key
        from ccserver.model import StoredKey
        from ccserver.oauth.tokens import rsa_in_threads

        reactor = _Reactor()
        sign = rsa_in_threads(reactor)
        claims = {"sub": "x"}
        for alg, threaded in (("RS256", True), ("PS256", True), ("ES256", False), ("EdDSA", False)):
            stored = StoredKey(kid=alg, alg=alg, encrypted_private_key="", created_at=0, active_from=0)
            key = SigningKey.from_private_key(stored, generate_private_key(alg))
            before = reactor.pool.calls
            signed = sign(key, claims)
            token = signed if isinstance(signed, str) else self.successResultOf(signed)
            self.assertEqual(reactor.pool.calls - before, 1 if threaded else 0, alg)
            public = jwt.PyJWK(key.jwk)
            self.assertEqual(jwt.decode(token, public, algorithms=[alg]), claims)
