"""
Each protocol rule lives once, in ccserver.model (scope syntax, resource
URIs; lifetimes in test_lifetimes.py), and each place that applies it
raises its own error.  And one 503: ccserver.errors.temporarily_unavailable.
"""

from __future__ import annotations

import json

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from ccserver.errors import OAuthError, StoreUnavailable, temporarily_unavailable
from ccserver.grants.parameters import requested_resources, requested_scope
from ccserver.handlers.webhook import MalformedAnswer, authorization_from_answer
from ccserver.model import is_resource_uri, is_scope_token
from ccserver.oauth.registration import validate_metadata
from ccserver.web import render_failure

#: Not scope values (RFC 6749 §3.3): empty, a space, a quote, a backslash,
#: a control character, non-ASCII, not a string.
NOT_SCOPE_TOKENS: tuple[object, ...] = ("", "a b", 'a"b', "a\\b", "a\x7fb", "é", 1, None)


class ScopeTokenTests(SynchronousTestCase):
    def test_scope_tokens(self) -> None:
        for value in ("read", "a:b/c", "!", "~#[]"):
            self.assertTrue(is_scope_token(value), value)

    def test_not_scope_tokens(self) -> None:
        for value in NOT_SCOPE_TOKENS:
            self.assertFalse(is_scope_token(value), repr(value))

    def test_one_rule_three_errors(self) -> None:
        """
        A malformed value is refused by registration, by a token request and
        in a webhook's answer, each with its own error.
        """
        with self.assertRaises(OAuthError) as registered:
            validate_metadata({"scope": 'a"b'})
        self.assertEqual(
            (registered.exception.error, registered.exception.description),
            (
                "invalid_client_metadata",
                "scope: must be scope values separated by single spaces (RFC 6749 §3.3)",
            ),
        )
        with self.assertRaises(OAuthError) as requested:
            requested_scope({"scope": 'read a"b'})
        self.assertEqual(
            (requested.exception.error, requested.exception.description),
            ("invalid_scope", "scope: malformed; scope values are separated by spaces"),
        )
        with self.assertRaises(MalformedAnswer) as answered:
            authorization_from_answer({"scope": ['a"b']})
        self.assertEqual(
            str(answered.exception),
            "scope: must be a list of scope values (strings without spaces)",
        )


class ResourceURITests(SynchronousTestCase):
    def test_resource_uris(self) -> None:
        for uri in ("https://api.example", "urn:example:api", "https://a.example/p?q=1"):
            self.assertTrue(is_resource_uri(uri), uri)

    def test_not_resource_uris(self) -> None:
        for uri in ("", "api", "/relative", "https://a.example/#f", "http://[x"):
            self.assertFalse(is_resource_uri(uri), uri)

    def test_one_rule_two_errors(self) -> None:
        with self.assertRaises(OAuthError) as registered:
            validate_metadata({"audience": ["http://[x"]})
        self.assertEqual(registered.exception.error, "invalid_client_metadata")
        with self.assertRaises(OAuthError) as requested:
            requested_resources(["http://[x"])
        self.assertEqual(requested.exception.error, "invalid_target")


class LifetimeErrorsTests(SynchronousTestCase):
    """
    C{True} is no lifetime (ccserver.model.is_lifetime), at registration and
    in a webhook's answer alike.
    """

    def test_registration(self) -> None:
        with self.assertRaises(OAuthError) as caught:
            validate_metadata({"access_token_lifetime": True})
        self.assertEqual(
            caught.exception.description, "access_token_lifetime: must be a positive integer"
        )

    def test_webhook(self) -> None:
        with self.assertRaises(MalformedAnswer) as caught:
            authorization_from_answer({"scope": [], "access_token": {"lifetime": True}})
        self.assertEqual(
            str(caught.exception), "access_token.lifetime: must be a positive integer (seconds)"
        )


class TemporarilyUnavailableTests(SynchronousTestCase):
    def test_error(self) -> None:
        error = temporarily_unavailable("try later")
        self.assertEqual(
            (error.status, error.as_json(), dict(error.headers)),
            (
                503,
                {"error": "temporarily_unavailable", "error_description": "try later"},
                {"Retry-After": "1"},
            ),
        )

    def test_store_unavailable(self) -> None:
        """
        An unreachable store is rendered as that error: 503, Retry-After,
        not cached.
        """
        request = DummyRequest([b"token"])
        body = render_failure(request, Failure(StoreUnavailable("down")))
        self.assertEqual(request.responseCode, 503)
        self.assertEqual(
            json.loads(body),
            {
                "error": "temporarily_unavailable",
                "error_description": "the store is unavailable; try again shortly",
            },
        )
        headers = request.responseHeaders
        self.assertEqual(headers.getRawHeaders(b"retry-after"), [b"1"])
        self.assertEqual(headers.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertEqual(headers.getRawHeaders(b"pragma"), [b"no-cache"])
        self.flushLoggedErrors()
