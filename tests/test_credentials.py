"""
ccserver.credentials: opaque access tokens and the keys they are stored
under.
"""

from __future__ import annotations

import base64

from twisted.trial.unittest import SynchronousTestCase

from ccserver import credentials


class OpaqueTokenTests(SynchronousTestCase):
    def test_format(self) -> None:
        """
        The milliseconds of its making (6 bytes), then 256 random bits,
        URL-safe base64 without padding: 51 characters.
        """
        token = credentials.new_opaque_token(1_800_000_000.1234)
        self.assertEqual(len(token), 51)
        self.assertRegex(token, r"\A[A-Za-z0-9_-]{51}\Z")
        raw = base64.urlsafe_b64decode(token + "=")
        self.assertEqual(int.from_bytes(raw[:6], "big"), 1_800_000_000_123)
        self.assertEqual(len(raw), 38)
        self.assertNotEqual(token, credentials.new_opaque_token(1_800_000_000.1234))

    def test_key_is_time_then_digest(self) -> None:
        token = credentials.new_opaque_token(1_800_000_000.5)
        key = credentials.opaque_token_key(token)
        self.assertEqual(key, f"{1_800_000_000_500:012x}" + credentials.digest(token))
        self.assertNotIn(token, key)

    def test_keys_sort_by_time(self) -> None:
        """
        Keys of later tokens sort after those of earlier ones, whatever
        their random parts.
        """
        times = [1_700_000_000 + i * 0.001 for i in range(300)]
        keys = [credentials.opaque_token_key(credentials.new_opaque_token(t)) for t in times]
        self.assertEqual(keys, sorted(keys))

    def test_other_strings_are_their_digest(self) -> None:
        """
        Tokens made before the time was added (43 characters), and anything
        else a client sends, are looked up under their plain digest: never
        an error.
        """
        for text in [
            credentials.new_secret(),
            "",
            "x" * 50,
            "x" * 52,
            "!" * 51,
            "é" * 51,
            "a" * 50 + "\n",
            "a.b.c",
        ]:
            self.assertEqual(credentials.opaque_token_key(text), credentials.digest(text))


class SecretCheckTests(SynchronousTestCase):
    """
    L{credentials.check} and L{credentials.matches}: a secret against
    expected digests, in constant time.
    """

    def test_check(self) -> None:
        secret = credentials.new_secret()
        self.assertTrue(credentials.check(secret, credentials.digest(secret)))
        self.assertFalse(credentials.check(secret, credentials.digest(secret + "x")))
        self.assertFalse(credentials.check(secret, None))

    def test_matches_each(self) -> None:
        secret = credentials.new_secret()
        right, wrong = credentials.digest(secret), credentials.digest("other")
        self.assertEqual(
            credentials.matches(secret, (right, wrong, None)), (True, False, False)
        )
        self.assertEqual(credentials.matches(secret, (None, right)), (False, True))

    def test_stand_in_matches_nothing(self) -> None:
        """
        None (no digest expected) never matches: the secret is compared
        with a stand-in digest, for the same work, and the answer is false
        whatever that comparison says.
        """
        self.assertEqual(credentials.matches("", (None,)), (False,))

    def test_digested_once(self) -> None:
        """
        The secret is digested once however many digests it is compared
        with (a client after a rotation has two; the registration endpoint
        compares a token with the client's and the master's).
        """
        calls: list[str] = []
        digest = credentials.digest

        def counting(secret: str) -> str:
            calls.append(secret)
            return digest(secret)

        self.patch(credentials, "digest", counting)
        credentials.matches("s3cret", (None, "a" * 64, "b" * 64))
        self.assertEqual(calls, ["s3cret"])
