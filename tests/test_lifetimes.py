"""
The one rule for a token lifetime (ccserver.model.is_lifetime), and the
places that raise their own error with it.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ccserver.model import GrantAuthorization, is_lifetime


class IsLifetimeTests(SynchronousTestCase):
    def test_whole_positive_seconds(self) -> None:
        for value in (1, 60, 86400):
            self.assertTrue(is_lifetime(value), value)

    def test_not_lifetimes(self) -> None:
        for value in (0, -1, True, False, 1.5, 60.0, "60", None, [60]):
            self.assertFalse(is_lifetime(value), repr(value))


class GrantAuthorizationLifetimeTests(SynchronousTestCase):
    def test_none_is_the_default(self) -> None:
        self.assertIsNone(GrantAuthorization(scope=()).lifetime)

    def test_refused(self) -> None:
        for value in (0, -1, True, 1.5, "60"):
            with self.assertRaises(ValueError) as caught:
                GrantAuthorization(scope=(), lifetime=value)  # type: ignore[arg-type]
            self.assertEqual(
                str(caught.exception),
                f"GrantAuthorization.lifetime must be a positive int, not {value!r}",
            )
