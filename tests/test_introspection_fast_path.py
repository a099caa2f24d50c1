"""
C{POST /token/introspect} as the plain twisted.web resource
(L{ccserver.web.IntrospectionResource}): what it answers, byte for byte and
header by header, for every kind of request, and the JWT signatures it
remembers (L{ccserver.oauth.introspection.VerifiedSignatures}) and the
answers it keeps of opaque tokens (L{RememberedAnswers}), which must
never make a revoked token, a deleted client's token, an expired one or
one whose key is gone look active.
"""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from ccserver import jose
from ccserver.config import Config
from ccserver.model import TokenRecord
from ccserver.oauth import introspection as introspection_module
from ccserver.oauth.introspection import RememberedAnswers, TokenInfo, VerifiedSignatures
from ccserver.web import MAX_BODY
from tests.helpers import Response, ServerTestCase, TokenLifecycle, basic

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
API = "https://api.example.com"


class IntrospectionMixin(TokenLifecycle):
    token_format = "opaque"

    def make_config(self, **tokens: Any) -> Config:
        return super().make_config(format=self.token_format, **tokens)  # type: ignore[misc, no-any-return]

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.alice = self.register(client_name="alice", scope="read write")  # type: ignore[attr-defined]
        self.bob = self.register(client_name="bob", scope="read")  # type: ignore[attr-defined]

    def post(
        self, body: bytes, caller: dict[str, Any] | None = None, **headers: str
    ) -> Response:
        sent = dict(FORM)
        if caller is not None:
            sent["Authorization"] = self.auth(caller)
        sent.update(headers)
        return self.request("POST", "/token/introspect", headers=sent, data=body)  # type: ignore[attr-defined, no-any-return]

    def raw(self, body: bytes, caller: dict[str, Any] | None = None, path: bytes = b"/token/introspect") -> bytes:
        """
        A POST fed to the site's real HTTP channel; what it wrote back.
        """
        if not self.site.numPorts:  # type: ignore[attr-defined]
            self.site.doStart()  # type: ignore[attr-defined]
            self.addCleanup(self.site.doStop)  # type: ignore[attr-defined]
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 12345))  # type: ignore[attr-defined]
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 12345))
        channel.makeConnection(transport)
        authorization = b"" if caller is None else b"Authorization: " + self.auth(caller).encode() + b"\r\n"
        channel.dataReceived(
            b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + authorization
            + b"Content-Type: application/x-www-form-urlencoded\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        return transport.value()  # type: ignore[no-any-return]

    def assert_json(self, response: Response, status: int) -> Any:
        """
        The headers every answer has: JSON kept by no cache (RFC 7662 §2.2, RFC 6749 §5.1).
        """
        self.assertEqual(response.code, status, response.body)  # type: ignore[attr-defined]
        self.assertEqual(response.headers["content-type"], "application/json")  # type: ignore[attr-defined]
        self.assertEqual(response.headers["cache-control"], "no-store")  # type: ignore[attr-defined]
        self.assertEqual(response.headers["pragma"], "no-cache")  # type: ignore[attr-defined]
        return response.json()

    def delete(self, client: dict[str, Any]) -> None:
        response = self.request(  # type: ignore[attr-defined]
            "DELETE",
            f"/client-reg/{client['client_id']}",
            headers={"Authorization": f"Bearer {client['registration_access_token']}"},
        )
        self.assertEqual(response.code, 204, response.body)  # type: ignore[attr-defined]

    def revoke(self, token: str, caller: dict[str, Any]) -> None:
        response = self.request(  # type: ignore[attr-defined]
            "POST",
            "/token/revoke",
            headers={"Authorization": self.auth(caller), **FORM},
            data=f"token={token}".encode(),
        )
        self.assertEqual(response.code, 200, response.body)  # type: ignore[attr-defined]

    # the answers

    def test_active_body(self) -> None:
        """
        An active token's answer is the compact JSON of its members, the
        server's own last, as json.dumps writes them.
        """
        token = self.issue(self.alice, scope="read")
        response = self.post(f"token={token}".encode(), self.alice)
        info = self.assert_json(response, 200)
        self.assertIs(info["active"], True)  # type: ignore[attr-defined]
        self.assertEqual(info["client_id"], self.alice["client_id"])  # type: ignore[attr-defined]
        self.assertEqual(info["scope"], "read")  # type: ignore[attr-defined]
        self.assertEqual(response.body, json.dumps(info, separators=(",", ":")).encode())  # type: ignore[attr-defined]
        self.assertEqual(list(info)[-2:], ["active", "token_type"])  # type: ignore[attr-defined]

    def test_answer_with_its_length(self) -> None:
        """
        Through a real HTTP channel: the whole answer, head and body, with
        its length (not in chunks), and the connection kept for the next.
        """
        token = self.issue(self.alice)
        answer = self.raw(f"token={token}".encode(), self.alice)
        head, _, body = answer.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK\r\n"), head)  # type: ignore[attr-defined]
        self.assertIn(b"\r\nContent-Length: %d" % len(body), head)  # type: ignore[attr-defined]
        self.assertIn(b"\r\nCache-Control: no-store", head)  # type: ignore[attr-defined]
        self.assertNotIn(b"chunked", head.lower())  # type: ignore[attr-defined]
        self.assertNotIn(b"connection: close", head.lower())  # type: ignore[attr-defined]
        self.assertIs(json.loads(body)["active"], True)  # type: ignore[attr-defined]

    def test_body_too_large(self) -> None:
        answer = self.raw(b"token=" + b"a" * MAX_BODY, self.alice)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:200])  # type: ignore[attr-defined]
        self.assertIn(b'"error":"invalid_request"', answer)  # type: ignore[attr-defined]

    def test_client_gone_before_the_answer(self) -> None:
        """
        A client that goes away while its introspection waits for the
        store gets nothing written, and nothing fails.
        """
        token = self.issue(self.alice)
        pending: Deferred[Any] = Deferred()
        # the store's answer about the token waits (an opaque token's
        # record, a JWT's deny-list entry)
        for name in ("get_token", "is_revoked"):
            method = getattr(self.store, name)  # type: ignore[attr-defined]
            self.patch(self.store, name, lambda key, method=method: pending.addCallback(lambda _: method(key)))  # type: ignore[attr-defined]
        transport = StringTransport()
        channel = self.site.buildProtocol(None)  # type: ignore[attr-defined]
        channel.makeConnection(transport)
        body = f"token={token}".encode()
        channel.dataReceived(
            b"POST /token/introspect HTTP/1.1\r\nHost: x\r\nAuthorization: "
            + self.auth(self.alice).encode()
            + b"\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body
        )
        self.assertEqual(transport.value(), b"")  # type: ignore[attr-defined]
        channel.connectionLost(Failure(ConnectionDone()))
        transport.clear()
        pending.callback(None)
        self.assertEqual(transport.value(), b"")  # type: ignore[attr-defined]
        self.assertEqual(self.flushLoggedErrors(), [])  # type: ignore[attr-defined]

    def test_inactive_is_exactly_active_false(self) -> None:
        for token in ("unknown", "a.b.c", "x" * 51, "%E2%80%AE", "%00"):
            with self.subTest(token=token):  # type: ignore[attr-defined]
                response = self.post(("token=" + token).encode(), self.alice)
                self.assert_json(response, 200)
                self.assertEqual(response.body, b'{"active":false}')  # type: ignore[attr-defined]

    def test_other_client(self) -> None:
        """
        Another client (not named in the audience) learns nothing.
        """
        token = self.issue(self.alice)
        response = self.post(f"token={token}".encode(), self.bob)
        self.assertEqual(response.body, b'{"active":false}')  # type: ignore[attr-defined]

    def test_revoked(self) -> None:
        token = self.issue(self.alice)
        self.assertIs(self.introspect(token, self.alice)["active"], True)  # type: ignore[attr-defined]
        self.revoke(token, self.alice)
        self.assertEqual(self.introspect(token, self.alice), {"active": False})  # type: ignore[attr-defined]

    def test_deleted_client(self) -> None:
        """
        A deleted client's token is inactive at once to a resource server
        its audience names; the deleted client itself can no longer ask.
        """
        api = self.register(client_name="api", resource_server_uris=[API])  # type: ignore[attr-defined]
        carol = self.register(client_name="carol", scope="read", audience=[API])  # type: ignore[attr-defined]
        token = self.issue(carol, resource=API)
        self.assertIs(self.introspect(token, api)["active"], True)  # type: ignore[attr-defined]
        self.delete(carol)
        self.assertEqual(self.introspect(token, api), {"active": False})  # type: ignore[attr-defined]
        response = self.post(f"token={token}".encode(), carol)
        self.assertEqual(response.code, 401, response.body)  # type: ignore[attr-defined]

    def test_expired_after_remembered(self) -> None:
        token = self.issue(self.alice)
        info = self.introspect(token, self.alice)  # type: ignore[attr-defined]
        self.clock.advance(info["exp"] - self.clock.seconds() - 1)  # type: ignore[attr-defined]
        self.assertIs(self.introspect(token, self.alice)["active"], True)  # type: ignore[attr-defined]
        self.clock.advance(1)  # type: ignore[attr-defined]
        self.assertEqual(self.introspect(token, self.alice), {"active": False})  # type: ignore[attr-defined]

    def test_other_client_after_remembered(self) -> None:
        """
        What is remembered of a token is its answer, not who may see it.
        """
        token = self.issue(self.alice)
        self.assertIs(self.introspect(token, self.alice)["active"], True)  # type: ignore[attr-defined]
        self.assertEqual(self.introspect(token, self.bob), {"active": False})  # type: ignore[attr-defined]

    # bad requests: an OAuth error, never a 500

    def test_not_post(self) -> None:
        for method in ("GET", "PUT", "DELETE"):
            with self.subTest(method=method):  # type: ignore[attr-defined]
                response = self.request(method, "/token/introspect", headers={"Authorization": self.auth(self.alice)})  # type: ignore[attr-defined]
                self.assertEqual(response.code, 405, response.body)  # type: ignore[attr-defined]
                self.assertEqual(response.headers["allow"], "POST")  # type: ignore[attr-defined]

    def test_bad_requests(self) -> None:
        token = self.issue(self.alice)
        cases: list[tuple[str, Response, int, str]] = [
            ("no token", self.post(b"", self.alice), 400, "invalid_request"),
            ("empty token", self.post(b"token=", self.alice), 400, "invalid_request"),
            ("twice", self.post(f"token={token}&token={token}".encode(), self.alice), 400, "invalid_request"),
            ("json body", self.post(json.dumps({"token": token}).encode(), self.alice,
                                    **{"Content-Type": "application/json"}), 400, "invalid_request"),
            ("not utf-8", self.post(b"token=%ff%fe", self.alice), 400, "invalid_request"),
            ("no client", self.post(f"token={token}".encode()), 401, "invalid_client"),
            ("wrong secret", self.post(f"token={token}".encode(), None,
                                       Authorization=basic(self.alice["client_id"], "wrong")), 401,
             "invalid_client"),
            ("bad basic", self.post(f"token={token}".encode(), None, Authorization="Basic !!!"), 401,
             "invalid_client"),
        ]
        for name, response, status, error in cases:
            with self.subTest(name):  # type: ignore[attr-defined]
                self.assertEqual(self.assert_json(response, status)["error"], error)  # type: ignore[attr-defined]
                self.assertNotIn(token.encode(), response.body)  # type: ignore[attr-defined]

    def test_query_string(self) -> None:
        token = self.issue(self.alice)
        response = self.request(  # type: ignore[attr-defined]
            "POST", f"/token/introspect?token={token}",
            headers={"Authorization": self.auth(self.alice), **FORM}, data=b"",
        )
        self.assertEqual(self.assert_json(response, 400)["error"], "invalid_request")  # type: ignore[attr-defined]

    def test_only_its_own_path(self) -> None:
        """
        The resource answers at /token/introspect exactly; a longer path
        is Klein's, which serves nothing there.
        """
        token = self.issue(self.alice)
        for path in ("/token/introspect/", "/token/introspect/x", "/token/introspectx"):
            with self.subTest(path=path):  # type: ignore[attr-defined]
                response = self.request("POST", path, headers={"Authorization": self.auth(self.alice), **FORM},  # type: ignore[attr-defined]
                                        data=f"token={token}".encode())
                self.assertEqual(response.code, 404, response.body)  # type: ignore[attr-defined]

    def test_access_log_line(self) -> None:
        """
        An introspection is logged like any request: its path, never the
        token, which is in the body.
        """
        token = self.issue(self.alice)
        self.raw(f"token={token}".encode(), self.alice)
        (line,) = [line for line in self.access_lines() if b"/token/introspect" in line]  # type: ignore[attr-defined]
        self.assertIn(b'"POST /token/introspect HTTP/1.1" 200 ', line)  # type: ignore[attr-defined]
        self.assertNotIn(token.encode(), line)  # type: ignore[attr-defined]


class OpaqueIntrospectionTests(IntrospectionMixin, ServerTestCase):
    def test_claims_made_once(self) -> None:
        """
        An opaque token's claims and answer are made the first time it is
        introspected, not again while the store gives the same record; the
        answer is the same, byte for byte.
        """
        made = []
        claims = introspection_module.access_token_claims

        def counted(**kwargs: Any) -> dict[str, Any]:
            made.append(kwargs["jti"])
            return claims(**kwargs)

        self.patch(introspection_module, "access_token_claims", counted)
        token = self.issue(self.alice)
        bodies = {self.post(f"token={token}".encode(), self.alice).body for _ in range(3)}
        self.assertEqual(len(made), 1)
        self.assertEqual(len(bodies), 1)
        self.assertIs(json.loads(bodies.pop())["active"], True)



class RememberedAnswersTests(ServerTestCase):
    def record(self, digest: str = "d1", **changes: Any) -> TokenRecord:
        fields: dict[str, Any] = {
            "token_digest": digest,
            "client_id": "c",
            "scope": ["read"],
            "audience": ["https://as"],
            "issued_at": 1,
            "expires_at": 2,
            "jti": "j",
        }
        fields.update(changes)
        return TokenRecord(**fields)

    def test_only_for_the_same_record(self) -> None:
        """
        What was made of a record is given back for an equal record (as a
        store that decodes each time gives it), never for a record that
        differs in anything, under the same key.
        """
        remembered = RememberedAnswers()
        info = TokenInfo(MappingProxyType({"jti": "j"}), None, "d1")
        remembered.add(self.record(), info)
        self.assertIs(remembered.get(self.record()), info)
        for changes in ({"scope": ["write"]}, {"expires_at": 3}, {"claims": {"x": 1}}, {"jkt": "k"}):
            with self.subTest(changes=changes):
                self.assertIsNone(remembered.get(self.record(**changes)))

    def test_bounded(self) -> None:
        remembered = RememberedAnswers(size=2)
        for digest in ("d1", "d2", "d3"):
            remembered.add(self.record(digest), TokenInfo(MappingProxyType({}), None, digest))
        self.assertEqual(len(remembered), 2)
        self.assertIsNone(remembered.get(self.record("d1")))
        self.assertIsNotNone(remembered.get(self.record("d3")))

    def test_off(self) -> None:
        remembered = RememberedAnswers(size=0)
        remembered.add(self.record(), TokenInfo(MappingProxyType({}), None, "d1"))
        self.assertEqual(len(remembered), 0)

    def test_the_answer_is_read_only(self) -> None:
        info = TokenInfo(MappingProxyType({"jti": "j", "active": False}), None, "d1")
        self.assertEqual(dict(info.answer), {"jti": "j", "active": True, "token_type": "Bearer"})
        with self.assertRaises(TypeError):
            info.answer["active"] = False  # type: ignore[index]


class JWTIntrospectionTests(IntrospectionMixin, ServerTestCase):
    token_format = "jwt"
    signing_alg = "ES256"

    def setUp(self) -> None:
        super().setUp()
        self.verifications = 0
        verify = jose.verify

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.verifications += 1
            return verify(*args, **kwargs)

        self.patch(jose, "verify", counted)

    def test_verified_once(self) -> None:
        """
        A JWT's signature is verified the first time it is introspected,
        not again.
        """
        token = self.issue(self.alice)
        for _ in range(3):
            self.assertIs(self.introspect(token, self.alice)["active"], True)
        self.assertEqual(self.verifications, 1)

    def test_revoked_after_remembered(self) -> None:
        token = self.issue(self.alice)
        self.assertIs(self.introspect(token, self.alice)["active"], True)
        self.revoke(token, self.alice)
        self.assertEqual(self.introspect(token, self.alice), {"active": False})

    def test_deleted_client_after_remembered(self) -> None:
        api = self.register(client_name="api", resource_server_uris=[API])
        carol = self.register(client_name="carol", scope="read", audience=[API])
        token = self.issue(carol, resource=API)
        self.assertIs(self.introspect(token, api)["active"], True)
        self.delete(carol)
        self.assertEqual(self.introspect(token, api), {"active": False})
        self.assertEqual(self.verifications, 1)

    def test_key_gone_after_remembered(self) -> None:
        """
        A token whose key was deleted from the store is inactive once this
        process has refreshed its keys, remembered or not.
        """
        token = self.issue(self.alice)
        self.assertIs(self.introspect(token, self.alice)["active"], True)
        kid = jose.unverified(token)[0]["kid"]
        self.assertTrue(self.successResultOf(self.store.delete_key(kid)))
        self.successResultOf(ensureDeferred(self.keyring.refresh()))
        self.assertEqual(self.introspect(token, self.alice), {"active": False})

    def test_key_refreshed_still_remembered(self) -> None:
        """
        A refresh that keeps the key keeps what was verified with it.
        """
        token = self.issue(self.alice)
        self.introspect(token, self.alice)
        self.successResultOf(ensureDeferred(self.keyring.refresh()))
        self.assertIs(self.introspect(token, self.alice)["active"], True)
        self.assertEqual(self.verifications, 1)


class VerifiedSignaturesTests(ServerTestCase):
    signing_alg = "ES256"

    def test_bounded(self) -> None:
        """
        At most C{size} tokens are remembered, the oldest forgotten first.
        """
        remembered = VerifiedSignatures(size=2)
        key = self.keyring.current
        infos = {token: TokenInfo(MappingProxyType({"jti": token}), token, None) for token in ("t1", "t2", "t3")}
        for token, info in infos.items():
            remembered.add(token, key, info)
        self.assertEqual(len(remembered), 2)
        self.assertIsNone(remembered.get("t1", self.keyring))
        self.assertIs(remembered.get("t3", self.keyring), infos["t3"])

    def test_off(self) -> None:
        remembered = VerifiedSignatures(size=0)
        remembered.add("t", self.keyring.current, TokenInfo(MappingProxyType({}), "t", None))
        self.assertEqual(len(remembered), 0)

