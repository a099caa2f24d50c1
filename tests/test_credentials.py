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
