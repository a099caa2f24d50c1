"""
Client authentication with JWT assertions (RFC 7523 §2.2, OpenID Connect
Core §9): private_key_jwt and client_secret_jwt, in memory (the whole app
over a MemoryStore and a Clock; a client's jwks_uri is a twisted.web
resource reached through StubTreq).  One test per check, good and bad.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from treq.testing import StubTreq
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ccserver.errors import OAuthError
from ccserver.keys import public_jwk
from ccserver.keysets import cache_seconds
from ccserver.oauth.assertions import acceptable_until
from ccserver.oauth.clientauth import JWT_BEARER
from tests.helpers import ISSUER, MASTER_TOKEN, Response, ServerTestCase, basic

TOKEN_ENDPOINT = ISSUER + "/token"
JWKS_URI = "https://client.example/jwks.json"


def jwk_of(private_key: Any, kid: str | None) -> dict[str, Any]:
    jwk = public_jwk(private_key)
    if kid is not None:
        jwk["kid"] = kid
    return jwk


class JWKSResource(Resource):
    """
    A client's jwks_uri: serves C{self.jwks}, counts fetches; C{code},
    C{cache_control}, C{hang} and C{body} change its answer.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.jwks: dict[str, Any] = {"keys": []}
        self.fetches = 0
        self.code = 200
        self.cache_control: str | None = None
        self.hang = False
        self.body: bytes | None = None

    def render_GET(self, request: Any) -> Any:
        self.fetches += 1
        if self.hang:
            return NOT_DONE_YET
        request.setResponseCode(self.code)
        request.setHeader(b"Content-Type", b"application/jwk-set+json")
        if self.cache_control is not None:
            request.setHeader(b"Cache-Control", self.cache_control.encode())
        return self.body if self.body is not None else json.dumps(self.jwks).encode()


class JWTClientAuthTestCase(ServerTestCase):
    def make_jwks_http(self) -> Any:
        self.jwks_server = JWKSResource()
        return StubTreq(self.jwks_server)

    def setUp(self) -> None:
        super().setUp()
        self.ec_key = ec.generate_private_key(ec.SECP256R1())
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    # helpers

    def register_keys(self, *keys: tuple[Any, str | None], **metadata: Any) -> str:
        metadata.setdefault("jwks", {"keys": [jwk_of(key, kid) for key, kid in keys]})
        registered = self.register(
            token_endpoint_auth_method="private_key_jwt", scope="read", **metadata
        )
        return str(registered["client_id"])

    def claims(self, client_id: str, **changes: Any) -> dict[str, Any]:
        now = int(self.clock.seconds())
        claims: dict[str, Any] = {
            "iss": client_id,
            "sub": client_id,
            "aud": TOKEN_ENDPOINT,
            "exp": now + 60,
            "iat": now,
            "jti": str(uuid.uuid4()),
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def assertion(
        self, client_id: str, key: Any = None, alg: str = "ES256", kid: str | None = "k1",
        **changes: Any,
    ) -> str:
        headers = {"kid": kid} if kid is not None else {}
        return jwt.encode(
            self.claims(client_id, **changes),
            self.ec_key if key is None else key,
            algorithm=alg,
            headers=headers,
        )

    def with_assertion(
        self, assertion: str, path: str = "/token", **form: str
    ) -> Response:
        body = {"client_assertion_type": JWT_BEARER, "client_assertion": assertion, **form}
        if path == "/token":
            body.setdefault("grant_type", "client_credentials")
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return self.request("POST", path, headers=headers, data=urlencode(body).encode())

    def assert_invalid_client(self, response: Response, *words: str) -> str:
        self.assertEqual(response.code, 401, response.body)
        body = response.json()
        self.assertEqual(body["error"], "invalid_client")
        self.assertIn("www-authenticate", response.headers)
        for word in words:
            self.assertIn(word, body["error_description"])
        return str(body["error_description"])

    def assert_token(self, response: Response) -> dict[str, Any]:
        self.assertEqual(response.code, 200, response.body)
        return self.verify(response.json()["access_token"])

    def assert_refused(self, response: Response, *words: str) -> None:
        """
        Refused as an unknown client is: C{client authentication failed},
        nothing more; the log (info) has the reason, with C{words} in it.
        """
        self.assertEqual(self.assert_invalid_client(response), "client authentication failed")
        reasons = [e["reason"] for e in self.logged if "Refused a client assertion" in e.get("log_format", "")]
        self.assertTrue(reasons, "no reason logged")
        for word in words:
            self.assertIn(word, reasons[-1])


class RegistrationTests(JWTClientAuthTestCase):
    def post(self, **metadata: Any) -> Response:
        return self.request(
            "POST",
            "/client-reg",
            headers={"Authorization": f"Bearer {MASTER_TOKEN}"},
            json_body=metadata,
        )

    def assert_metadata_error(self, response: Response, field: str) -> None:
        self.assertEqual(response.code, 400, response.body)
        self.assertEqual(response.json()["error"], "invalid_client_metadata")
        self.assertTrue(response.json()["error_description"].startswith(field + ":"), response.body)

    def test_private_key_jwt_gets_no_secret(self) -> None:
        registered = self.register(
            token_endpoint_auth_method="private_key_jwt",
            jwks={"keys": [jwk_of(self.ec_key, "k1")]},
        )
        self.assertNotIn("client_secret", registered)
        self.assertNotIn("client_secret_expires_at", registered)
        self.assertEqual(registered["token_endpoint_auth_method"], "private_key_jwt")
        stored = self.successResultOf(self.store.get_client(registered["client_id"]))
        self.assertEqual(stored.client_secret_digest, "")
        self.assertIsNone(stored.encrypted_secret)

    def test_private_key_jwt_with_jwks_uri(self) -> None:
        for uri in (JWKS_URI, "https://[2606:4700::1111]:8443/jwks", "https://8.8.8.8/j"):
            response = self.post(token_endpoint_auth_method="private_key_jwt", jwks_uri=uri)
            self.assertEqual(response.code, 201, response.body)

    def test_jwks_uri_http_refused(self) -> None:
        for uri in ("http://c.example/j", "http://8.8.8.8/j"):
            response = self.post(token_endpoint_auth_method="private_key_jwt", jwks_uri=uri)
            self.assert_metadata_error(response, "jwks_uri")
            self.assertIn("https", response.json()["error_description"])

    def test_jwks_uri_inward_refused(self) -> None:
        """
        A literal address (or localhost) in a range that is not public is
        refused at registration, and so is one written so as to hide it,
        and a URI with a space or a control character.
        """
        for uri in (
            "https://169.254.169.254/latest/meta-data/",
            "https://10.0.0.1:6379/",
            "http://127.0.0.1:5432/",
            "https://127.0.0.1:8443/jwks",
            "https://localhost:5432/",
            "https://LocalHost./j",
            "https://api.localhost/j",
            "https://[::1]/jwks",
            "https://[::ffff:127.0.0.1]/jwks",
            "https://[::ffff:a9fe:a9fe]/jwks",
            "https://[64:ff9b::a00:1]/jwks",
            "https://[2002:a9fe:a9fe::]/jwks",
            "https://[fe80::1]/jwks",
            "https://[fd00:ec2::254]/jwks",
            "https://100.64.0.1/jwks",
            "https://100.100.100.200/jwks",
            "https://192.0.0.192/jwks",
            "https://0.0.0.0/jwks",
            "https://[::]/jwks",
            "https://224.0.0.1/jwks",
            "https://240.0.0.1/jwks",
            "https://127.1/jwks",
            "https://2130706433/jwks",
            "https://0x7f000001/jwks",
            "https://client.example/ jwks",
            "https://client.example/\tjwks",
            "https://client.example/\x00",
            "https://user:pw@client.example/jwks",
            "https://client.example\\@127.0.0.1/jwks",
        ):
            self.assert_metadata_error(
                self.post(token_endpoint_auth_method="private_key_jwt", jwks_uri=uri), "jwks_uri"
            )

    def test_private_key_jwt_without_keys(self) -> None:
        self.assert_metadata_error(self.post(token_endpoint_auth_method="private_key_jwt"), "jwks")

    def test_both_jwks_and_jwks_uri(self) -> None:
        self.assert_metadata_error(
            self.post(
                token_endpoint_auth_method="private_key_jwt",
                jwks={"keys": [jwk_of(self.ec_key, "k1")]},
                jwks_uri=JWKS_URI,
            ),
            "jwks_uri",
        )

    def test_private_members_refused_and_not_echoed(self) -> None:
        private = jwt.algorithms.ECAlgorithm.to_jwk(self.ec_key, as_dict=True)
        response = self.post(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [private]})
        self.assert_metadata_error(response, "jwks")
        self.assertIn("private members (d)", response.json()["error_description"])
        self.assertNotIn(private["d"].encode(), response.body)
        for member in ("p", "q", "dp", "dq", "qi"):
            jwk = dict(jwk_of(rsa.generate_private_key(65537, 2048), "r"), **{member: "AQAB"})
            self.assert_metadata_error(
                self.post(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [jwk]}),
                "jwks",
            )

    def test_symmetric_key_refused(self) -> None:
        response = self.post(
            token_endpoint_auth_method="private_key_jwt",
            jwks={"keys": [{"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0"}]},
        )
        self.assert_metadata_error(response, "jwks")
        self.assertIn("symmetric", response.json()["error_description"])

    def test_unusable_keys_refused(self) -> None:
        for key in (
            rsa.generate_private_key(65537, 1024),
            ec.generate_private_key(ec.SECP384R1()),
            ec.generate_private_key(ec.SECP256K1()),
        ):
            self.assert_metadata_error(
                self.post(
                    token_endpoint_auth_method="private_key_jwt",
                    jwks={"keys": [jwk_of(key, "k")]},
                ),
                "jwks",
            )
        self.assert_metadata_error(
            self.post(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [{"kty": "EC"}]}),
            "jwks",
        )

    def test_signing_alg(self) -> None:
        good = self.post(
            token_endpoint_auth_method="private_key_jwt",
            jwks={"keys": [jwk_of(self.ec_key, "k1")]},
            token_endpoint_auth_signing_alg="ES256",
        )
        self.assertEqual(good.code, 201, good.body)
        self.assertEqual(good.json()["token_endpoint_auth_signing_alg"], "ES256")
        for method, alg in (
            ("private_key_jwt", "HS256"),
            ("private_key_jwt", "none"),
            ("private_key_jwt", "RS256"),  # no RSA key in the set
            ("client_secret_jwt", "ES256"),
            ("client_secret_basic", "HS256"),
        ):
            field = "jwks" if alg == "RS256" else "token_endpoint_auth_signing_alg"
            self.assert_metadata_error(
                self.post(
                    token_endpoint_auth_method=method,
                    jwks={"keys": [jwk_of(self.ec_key, "k1")]},
                    token_endpoint_auth_signing_alg=alg,
                ),
                field,
            )

    def test_client_secret_jwt_secret_kept_encrypted(self) -> None:
        registered = self.register(token_endpoint_auth_method="client_secret_jwt")
        secret = registered["client_secret"]
        self.assertGreaterEqual(len(secret), 86)  # 512 bits: an HS512 key
        stored = self.successResultOf(self.store.get_client(registered["client_id"]))
        self.assertIsNotNone(stored.encrypted_secret)
        self.assertNotIn(secret, stored.encrypted_secret)
        self.assertNotIn(secret, repr(stored))
        self.assertEqual(self.encryptor.decrypt_secret(stored.encrypted_secret), secret)
        plain = self.register()
        stored = self.successResultOf(self.store.get_client(plain["client_id"]))
        self.assertIsNone(stored.encrypted_secret)

    def put(self, client_id: str, token: str, **metadata: Any) -> Response:
        return self.request(
            "PUT",
            f"/client-reg/{client_id}",
            headers={"Authorization": f"Bearer {token}"},
            json_body={"client_id": client_id, **metadata},
        )

    def test_client_rotates_its_own_keys(self) -> None:
        registered = self.register(
            token_endpoint_auth_method="private_key_jwt",
            jwks={"keys": [jwk_of(self.ec_key, "k1")]},
            token_endpoint_auth_signing_alg="ES256",
        )
        new_key = ed25519.Ed25519PrivateKey.generate()
        response = self.put(
            registered["client_id"],
            registered["registration_access_token"],
            token_endpoint_auth_method="private_key_jwt",
            jwks={"keys": [jwk_of(new_key, "k2")]},
            token_endpoint_auth_signing_alg="EdDSA",
        )
        self.assertEqual(response.code, 200, response.body)
        self.assert_token(
            self.with_assertion(
                self.assertion(registered["client_id"], new_key, "EdDSA", "k2")
            )
        )

    def test_client_cannot_change_its_method(self) -> None:
        registered = self.register(
            token_endpoint_auth_method="private_key_jwt",
            jwks={"keys": [jwk_of(self.ec_key, "k1")]},
        )
        response = self.put(
            registered["client_id"],
            registered["registration_access_token"],
            token_endpoint_auth_method="client_secret_basic",
        )
        self.assert_metadata_error(response, "token_endpoint_auth_method")
        self.assertIn("only the master token", response.json()["error_description"])

    def test_master_cannot_conjure_a_secret(self) -> None:
        keyed = self.register(
            token_endpoint_auth_method="private_key_jwt",
            jwks={"keys": [jwk_of(self.ec_key, "k1")]},
        )
        self.assert_metadata_error(
            self.put(keyed["client_id"], MASTER_TOKEN, token_endpoint_auth_method="client_secret_post"),
            "token_endpoint_auth_method",
        )
        plain = self.register()
        self.assert_metadata_error(
            self.put(plain["client_id"], MASTER_TOKEN, token_endpoint_auth_method="client_secret_jwt"),
            "token_endpoint_auth_method",
        )

    def test_master_moves_a_secret_client_to_keys(self) -> None:
        plain = self.register(scope="read")
        response = self.put(
            plain["client_id"],
            MASTER_TOKEN,
            token_endpoint_auth_method="private_key_jwt",
            jwks={"keys": [jwk_of(self.ec_key, "k1")]},
            scope="read",
        )
        self.assertEqual(response.code, 200, response.body)
        self.clock.advance(10)  # past the client cache
        self.assert_invalid_client(
            self.token({"grant_type": "client_credentials"}, basic(plain["client_id"], plain["client_secret"]))
        )
        self.assert_token(self.with_assertion(self.assertion(plain["client_id"])))


class PrivateKeyJWTTests(JWTClientAuthTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client_id = self.register_keys((self.ec_key, "k1"))

    def test_good(self) -> None:
        claims = self.assert_token(self.with_assertion(self.assertion(self.client_id)))
        self.assertEqual(claims["client_id"], self.client_id)
        self.assertEqual(claims["scope"], "read")

    def test_client_id_in_the_form(self) -> None:
        self.assert_token(
            self.with_assertion(self.assertion(self.client_id), client_id=self.client_id)
        )

    def test_client_id_mismatch(self) -> None:
        self.assert_invalid_client(
            self.with_assertion(self.assertion(self.client_id), client_id="someone-else"),
            "client_id differs",
        )

    def test_aud_issuer_or_endpoint(self) -> None:
        for aud in (ISSUER, [ISSUER + "/token", "https://other.example"], TOKEN_ENDPOINT):
            self.assert_token(self.with_assertion(self.assertion(self.client_id, aud=aud)))

    def test_wrong_aud(self) -> None:
        for aud in ("https://other.example/token", [], None):
            self.assert_invalid_client(
                self.with_assertion(self.assertion(self.client_id, aud=aud)), "aud"
            )

    def test_expired(self) -> None:
        now = int(self.clock.seconds())
        self.assert_invalid_client(
            self.with_assertion(self.assertion(self.client_id, exp=now - 31, iat=now - 90)),
            "expired",
        )

    def test_expired_within_leeway(self) -> None:
        now = int(self.clock.seconds())
        self.assert_token(
            self.with_assertion(self.assertion(self.client_id, exp=now - 10, iat=now - 60))
        )

    def test_exp_missing(self) -> None:
        self.assert_invalid_client(
            self.with_assertion(self.assertion(self.client_id, exp=None)), "exp claim is missing"
        )

    def test_exp_far_ahead_with_a_recent_iat(self) -> None:
        """
        An assertion whose exp lies far ahead is accepted when its iat is
        recent (Authlib's are made for an hour); without iat, exp may lie no
        more than max_assertion_lifetime (and the leeway) ahead.
        """
        now = int(self.clock.seconds())
        self.assert_token(self.with_assertion(self.assertion(self.client_id, exp=now + 3600)))
        self.assert_token(
            self.with_assertion(self.assertion(self.client_id, exp=now + 86400, iat=now - 200))
        )
        self.assert_invalid_client(
            self.with_assertion(self.assertion(self.client_id, exp=now + 3600, iat=None)),
            "more than 300 seconds ahead and there is no iat",
        )
        self.assert_token(
            self.with_assertion(self.assertion(self.client_id, exp=now + 330, iat=None))
        )

    def test_iat_too_old(self) -> None:
        now = int(self.clock.seconds())
        self.assert_invalid_client(
            self.with_assertion(self.assertion(self.client_id, exp=now + 3600, iat=now - 331)),
            "iat is more than 300 seconds ago",
        )
        # even when exp is near: with an iat, the iat bounds the assertion
        self.assert_invalid_client(
            self.with_assertion(self.assertion(self.client_id, exp=now + 10, iat=now - 400)),
            "iat is more than 300 seconds ago",
        )
        self.assert_token(
            self.with_assertion(self.assertion(self.client_id, exp=now + 3600, iat=now - 329))
        )

    def test_future_iat(self) -> None:
        now = int(self.clock.seconds())
        self.assert_invalid_client(
            self.with_assertion(self.assertion(self.client_id, iat=now + 120)), "iat"
        )
        self.assert_token(self.with_assertion(self.assertion(self.client_id, iat=now + 20)))

    def test_future_nbf(self) -> None:
        now = int(self.clock.seconds())
        self.assert_invalid_client(
            self.with_assertion(self.assertion(self.client_id, nbf=now + 120)), "not valid yet"
        )

    def test_bad_iat(self) -> None:
        self.assert_invalid_client(
            self.with_assertion(self.assertion(self.client_id, iat="yesterday")), "iat"
        )

    def test_wrong_iss(self) -> None:
        self.assert_invalid_client(
            self.with_assertion(self.assertion(self.client_id, iss="someone-else")), "iss"
        )

    def test_wrong_sub(self) -> None:
        # sub names the client; an unknown one fails like an unknown client
        self.assert_invalid_client(
            self.with_assertion(self.assertion(self.client_id, sub="nobody")),
            "client authentication failed",
        )
        self.assert_invalid_client(
            self.with_assertion(self.assertion(self.client_id, sub=None)), "sub claim"
        )
        other = self.register_keys((self.ec_key, "k1"))
        self.assert_invalid_client(
            self.with_assertion(self.assertion(self.client_id, sub=other)), "iss"
        )

    def test_jti_missing(self) -> None:
        self.assert_invalid_client(
            self.with_assertion(self.assertion(self.client_id, jti=None)), "jti"
        )

    def test_replay(self) -> None:
        assertion = self.assertion(self.client_id)
        self.assert_token(self.with_assertion(assertion))
        self.assert_invalid_client(self.with_assertion(assertion), "used already")
        # the record is kept until the assertion's exp, and purged after,
        # with the brute-force limits' ended windows: the client's counter
        # and cap, and the master token's and the initial access tokens'
        # (from the registration, where a bearer token may be either)
        self.clock.advance(120)
        self.assertEqual(self.successResultOf(self.store.purge_expired(int(self.clock.seconds()))), 7)

    def test_same_jti_for_two_clients(self) -> None:
        other = self.register_keys((self.ec_key, "k1"))
        self.assert_token(self.with_assertion(self.assertion(self.client_id, jti="same")))
        self.assert_token(self.with_assertion(self.assertion(other, jti="same")))

    def test_wrong_alg(self) -> None:
        rsa_key = rsa.generate_private_key(65537, 2048)
        client_id = self.register_keys(
            (rsa_key, "r1"), token_endpoint_auth_signing_alg="PS256"
        )
        self.assert_token(self.with_assertion(self.assertion(client_id, rsa_key, "PS256", "r1")))
        self.assert_refused(
            self.with_assertion(self.assertion(client_id, rsa_key, "RS256", "r1")),
            "alg is not one of PS256",
        )

    def test_none(self) -> None:
        unsigned = jwt.encode(self.claims(self.client_id), None, algorithm="none")
        self.assert_refused(self.with_assertion(unsigned), "alg")

    def test_hs_with_the_public_key(self) -> None:
        """
        The old confusion attack: an HMAC keyed with the client's public key.
        """
        public_pem = self.ec_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        forged = _hmac_jws(self.claims(self.client_id), public_pem, "k1")
        self.assert_refused(self.with_assertion(forged), "alg")

    def test_unknown_kid(self) -> None:
        self.assert_refused(self.with_assertion(self.assertion(self.client_id, kid="k9")), "kid")

    def test_without_kid_tries_each_key(self) -> None:
        old, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        client_id = self.register_keys((old, None), (new, None))
        self.assert_token(self.with_assertion(self.assertion(client_id, new, kid=None)))
        self.assert_token(self.with_assertion(self.assertion(client_id, old, kid=None)))
        stranger = ec.generate_private_key(ec.SECP256R1())
        self.assert_refused(
            self.with_assertion(self.assertion(client_id, stranger, kid=None)), "signature"
        )

    def test_other_key_types(self) -> None:
        rsa_key, ed_key = rsa.generate_private_key(65537, 2048), ed25519.Ed25519PrivateKey.generate()
        client_id = self.register_keys((rsa_key, "r"), (ed_key, "e"))
        for alg in ("RS256", "PS256"):
            self.assert_token(self.with_assertion(self.assertion(client_id, rsa_key, alg, "r")))
        self.assert_token(self.with_assertion(self.assertion(client_id, ed_key, "EdDSA", "e")))
        # a key is used only with its own kind of algorithm
        self.assert_refused(
            self.with_assertion(self.assertion(client_id, ed_key, "EdDSA", "r")), "kid"
        )

    def test_tampered_signature(self) -> None:
        header, payload, signature = self.assertion(self.client_id).split(".")
        claims = json.loads(jwt.utils.base64url_decode(payload))
        claims["sub"] = claims["iss"] = self.client_id
        claims["exp"] += 100
        forged_payload = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
        self.assert_refused(
            self.with_assertion(f"{header}.{forged_payload}.{signature}"), "signature"
        )
        flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BA")
        self.assert_refused(self.with_assertion(f"{header}.{payload}.{flipped}"), "signature")

    def test_signed_by_another_key(self) -> None:
        stranger = ec.generate_private_key(ec.SECP256R1())
        self.assert_refused(
            self.with_assertion(self.assertion(self.client_id, stranger)), "signature"
        )

    def test_oversized(self) -> None:
        big = self.assertion(self.client_id, padding="x" * 9000)
        self.assert_invalid_client(self.with_assertion(big), "longer than 8192 bytes")

    def test_garbage(self) -> None:
        for garbage in ("not-a-jwt", "a.b.c", "!!!.???.***", "eyJ.eyJ.", "é.é.é"):
            self.assert_invalid_client(self.with_assertion(garbage), "client_assertion")

    def test_wrong_assertion_type(self) -> None:
        response = self.with_assertion(
            self.assertion(self.client_id), client_assertion_type="urn:example:saml"
        )
        self.assert_invalid_client(response, "client_assertion_type")

    def test_assertion_type_alone(self) -> None:
        body = urlencode({"grant_type": "client_credentials", "client_assertion_type": JWT_BEARER})
        response = self.token(body.encode())
        self.assertEqual(response.code, 400, response.body)
        self.assertIn("client_assertion", response.json()["error_description"])

    def test_two_methods_at_once(self) -> None:
        secret_client = self.register(scope="read")
        response = self.token(
            {
                "grant_type": "client_credentials",
                "client_assertion_type": JWT_BEARER,
                "client_assertion": self.assertion(self.client_id),
            },
            basic(secret_client["client_id"], secret_client["client_secret"]),
        )
        self.assertEqual(response.code, 400, response.body)
        self.assertIn("more than one method", response.json()["error_description"])
        response = self.with_assertion(
            self.assertion(self.client_id), client_secret=secret_client["client_secret"]
        )
        self.assertEqual(response.code, 400, response.body)

    def test_method_not_registered(self) -> None:
        secret_client = self.register(scope="read")
        self.assert_refused(
            self.with_assertion(self.assertion(secret_client["client_id"])),
            "it authenticates with client_secret_basic",
        )
        # and a key client cannot use a secret (it has none)
        self.assert_invalid_client(
            self.token({"grant_type": "client_credentials"}, basic(self.client_id, ""))
        )

    def test_assertion_params_not_passed_to_the_handler(self) -> None:
        response = self.with_assertion(self.assertion(self.client_id))
        claims = self.assert_token(response)
        self.assertNotIn("client_assertion", claims)

    def test_introspect_and_revoke(self) -> None:
        token = self.with_assertion(self.assertion(self.client_id)).json()["access_token"]
        introspected = self.with_assertion(
            self.assertion(self.client_id, aud=ISSUER + "/token/introspect"),
            "/token/introspect",
            token=token,
        )
        self.assertEqual(introspected.code, 200, introspected.body)
        self.assertIs(introspected.json()["active"], True)
        revoked = self.with_assertion(
            self.assertion(self.client_id, aud=ISSUER), "/token/revoke", token=token
        )
        self.assertEqual(revoked.code, 200, revoked.body)
        again = self.with_assertion(self.assertion(self.client_id), "/token/introspect", token=token)
        self.assertIs(again.json()["active"], False)
        self.assert_invalid_client(self.with_assertion("x.y.z", "/token/introspect", token=token))


def _hmac_jws(claims: dict[str, Any], key: bytes, kid: str) -> str:
    """
    An HS256 JWS keyed with C{key}, made by hand: PyJWT refuses to use a
    PEM public key as an HMAC secret, as it should.
    """
    import hashlib
    import hmac

    from jwt.utils import base64url_encode

    header = base64url_encode(json.dumps({"alg": "HS256", "kid": kid}).encode())
    payload = base64url_encode(json.dumps(claims).encode())
    signature = hmac.new(key, header + b"." + payload, hashlib.sha256).digest()
    return (header + b"." + payload + b"." + base64url_encode(signature)).decode()


class ClientSecretJWTTests(JWTClientAuthTestCase):
    def setUp(self) -> None:
        super().setUp()
        registered = self.register(token_endpoint_auth_method="client_secret_jwt", scope="read")
        self.client_id = registered["client_id"]
        self.secret = registered["client_secret"].encode()

    def test_good(self) -> None:
        for alg in ("HS256", "HS384", "HS512"):
            self.assert_token(
                self.with_assertion(self.assertion(self.client_id, self.secret, alg, None))
            )

    def test_wrong_secret(self) -> None:
        self.assert_refused(
            self.with_assertion(self.assertion(self.client_id, b"x" * 64, "HS256", None)),
            "signature does not verify",
        )

    def test_asymmetric_alg_refused(self) -> None:
        self.assert_refused(
            self.with_assertion(self.assertion(self.client_id, self.ec_key, "ES256", None)),
            "alg is not one of HS256, HS384, HS512",
        )

    def test_replay(self) -> None:
        assertion = self.assertion(self.client_id, self.secret, "HS256", None)
        self.assert_token(self.with_assertion(assertion))
        self.assert_invalid_client(self.with_assertion(assertion), "used already")

    def test_secret_basic_refused(self) -> None:
        self.assert_invalid_client(
            self.token(
                {"grant_type": "client_credentials"}, basic(self.client_id, self.secret.decode())
            ),
            "client_secret_jwt",
        )

    def test_secret_not_logged(self) -> None:
        self.with_assertion(self.assertion(self.client_id, b"y" * 64, "HS256", None))
        self.assert_token(self.with_assertion(self.assertion(self.client_id, self.secret, "HS256", None)))
        self.assertNotIn(self.secret.decode(), repr(self.logged))


class JWKSURITests(JWTClientAuthTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.jwks_server.jwks = {"keys": [jwk_of(self.ec_key, "k1")]}
        self.client_id = str(
            self.register(
                token_endpoint_auth_method="private_key_jwt", jwks_uri=JWKS_URI, scope="read"
            )["client_id"]
        )

    def test_fetched_and_cached(self) -> None:
        self.assert_token(self.with_assertion(self.assertion(self.client_id)))
        self.assert_token(self.with_assertion(self.assertion(self.client_id)))
        self.assertEqual(self.jwks_server.fetches, 1)
        self.clock.advance(301)  # the default 300 s
        self.assert_token(self.with_assertion(self.assertion(self.client_id)))
        self.assertEqual(self.jwks_server.fetches, 2)

    def test_cache_control_honoured_within_bounds(self) -> None:
        self.jwks_server.cache_control = "public, max-age=100"
        self.assert_token(self.with_assertion(self.assertion(self.client_id)))
        self.clock.advance(101)
        self.assert_token(self.with_assertion(self.assertion(self.client_id)))
        self.assertEqual(self.jwks_server.fetches, 2)
        self.jwks_server.cache_control = "max-age=1"  # held at 60 s
        self.clock.advance(101)
        self.assert_token(self.with_assertion(self.assertion(self.client_id)))
        self.clock.advance(30)
        self.assert_token(self.with_assertion(self.assertion(self.client_id)))
        self.assertEqual(self.jwks_server.fetches, 3)

    def test_rotation_accepted_at_once(self) -> None:
        self.assert_token(self.with_assertion(self.assertion(self.client_id)))
        new_key = ec.generate_private_key(ec.SECP256R1())
        self.jwks_server.jwks = {"keys": [jwk_of(new_key, "k2")]}
        self.assert_token(self.with_assertion(self.assertion(self.client_id, new_key, kid="k2")))
        self.assertEqual(self.jwks_server.fetches, 2)

    def test_unknown_kid_refetch_rate_limited(self) -> None:
        self.assert_token(self.with_assertion(self.assertion(self.client_id)))
        for _ in range(3):
            self.assert_refused(
                self.with_assertion(self.assertion(self.client_id, kid="nope")), "kid"
            )
        self.assertEqual(self.jwks_server.fetches, 2)
        self.clock.advance(31)
        self.assert_refused(self.with_assertion(self.assertion(self.client_id, kid="nope")), "kid")
        self.assertEqual(self.jwks_server.fetches, 3)

    def pending(self, assertion: str) -> Any:
        """
        A token request with this assertion, sent and not yet answered.
        """
        body = urlencode(
            {
                "grant_type": "client_credentials",
                "client_assertion_type": JWT_BEARER,
                "client_assertion": assertion,
            }
        ).encode()
        return self.treq.post(
            TOKEN_ENDPOINT,
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

    def answer(self, pending: Any) -> Response:
        self.treq.flush()
        response = self.successResultOf(pending)
        headers = {
            k.decode().lower(): b", ".join(v).decode()
            for k, v in response.headers.getAllRawHeaders()
        }
        return Response(response.code, headers, self.successResultOf(response.content()))

    def assert_unavailable_after_timeout(self) -> None:
        """
        A token request whose jwks_uri fetch fails: answered once the fetch
        timeout (5 s) has passed since the fetch began, not before, with
        the one description of every cause.
        """
        pending = self.pending(self.assertion(self.client_id))
        self.clock.advance(4.9)
        self.treq.flush()
        self.assertNoResult(pending)
        self.clock.advance(0.1)
        self.assert_invalid_client(self.answer(pending), "jwks_uri could not be fetched")

    def fetch_failures(self) -> list[str]:
        return [
            e["reason"] for e in self.logged if "Could not fetch the JWK set" in formatEvent(e)
        ]

    def test_unreachable(self) -> None:
        self.jwks_server.code = 500
        self.assert_unavailable_after_timeout()
        self.assertEqual(self.fetch_failures(), ["it answered 500"])

    def test_failure_cached(self) -> None:
        """
        A failed fetch is kept like a fetched set (the minimum, 60 s): the
        requests after it are refused at once, without a fetch; one request
        then fetches again.  Requests sent while a fetch is under way wait
        for it: a burst makes one fetch.
        """
        self.jwks_server.code = 500
        burst = [self.pending(self.assertion(self.client_id)) for _ in range(5)]
        self.clock.advance(5)
        for pending in burst:
            self.assert_invalid_client(self.answer(pending), "jwks_uri could not be fetched")
        self.assertEqual(self.jwks_server.fetches, 1)
        for _ in range(3):
            self.assert_invalid_client(
                self.with_assertion(self.assertion(self.client_id)), "jwks_uri could not be fetched"
            )
        self.assertEqual(self.jwks_server.fetches, 1)
        self.clock.advance(56)
        self.jwks_server.code = 200
        self.assert_token(self.with_assertion(self.assertion(self.client_id)))
        self.assertEqual(self.jwks_server.fetches, 2)

    def test_not_a_jwk_set(self) -> None:
        for body in (b"<html>", b"[]", b'{"keys": 1}', b'{"keys": [], "keys": []}'):
            self.jwks_server.body = body
            self.assert_unavailable_after_timeout()
            self.clock.advance(60)  # past the failure's minimum cache time
        self.assertEqual(len(self.fetch_failures()), 4)

    def test_too_large(self) -> None:
        self.jwks_server.body = b'{"keys": [], "pad": "' + b"x" * 70_000 + b'"}'
        self.assert_unavailable_after_timeout()
        self.assertIn("longer than 65536 bytes", self.fetch_failures()[0])

    def test_too_many_keys(self) -> None:
        """
        A fetched set of more than 20 keys is refused whole, before any of
        its keys is read.
        """
        self.jwks_server.jwks = {"keys": [jwk_of(self.ec_key, "k1")] * 21}
        self.assert_unavailable_after_timeout()
        self.assertIn("holds more than 20 keys", self.fetch_failures()[0])

    def test_unusable_keys_left_out(self) -> None:
        """
        Keys that would not be accepted at registration are left out of a
        fetched set: an RSA key with another public exponent, a point off
        its curve.
        """
        numbers = rsa.generate_private_key(65537, 2048).public_key().public_numbers()
        odd_exponent = {"kty": "RSA", "kid": "e3", "n": _b64uint(numbers.n), "e": _b64uint(3)}
        off_curve = dict(jwk_of(self.ec_key, "k1"))
        off_curve["y"] = off_curve["x"]
        self.jwks_server.jwks = {"keys": [odd_exponent, off_curve]}
        self.assert_refused(self.with_assertion(self.assertion(self.client_id)), "kid")

    def test_hang_times_out(self) -> None:
        self.jwks_server.hang = True
        body = urlencode(
            {
                "grant_type": "client_credentials",
                "client_assertion_type": JWT_BEARER,
                "client_assertion": self.assertion(self.client_id),
            }
        ).encode()
        pending = self.treq.post(
            TOKEN_ENDPOINT,
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        self.assertNoResult(pending)
        self.clock.advance(5.1)
        self.treq.flush()
        response = self.successResultOf(pending)
        self.assertEqual(response.code, 401)
        body = json.loads(self.successResultOf(response.content()))
        self.assertIn("jwks_uri could not be fetched", body["error_description"])
        lines = [e for e in self.logged if "Could not fetch the JWK set" in formatEvent(e)]
        self.assertEqual(lines[0]["reason"], "no answer within 5s")


def _b64uint(value: int) -> str:
    """
    RFC 7518 §2: a Base64urlUInt.
    """
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return jwt.utils.base64url_encode(raw).decode()


class CacheSecondsTests(ServerTestCase):
    def test_cache_seconds(self) -> None:
        cases = [
            (None, 300),
            ("max-age=120", 120),
            ("public, max-age=\"90\"", 90),
            ("max-age=5", 60),
            ("max-age=999999", 86400),
            ("no-store", 60),
            ("no-cache, max-age=500", 60),
            ("s-maxage=10", 300),
        ]
        for header, expected in cases:
            self.assertEqual(cache_seconds(header, 300, 60, 86400), expected, header)


def fake_rsa_jwk(kid: str | None, bits: int = 2048, e: int = 65537) -> dict[str, Any]:
    """
    An RSA public JWK of C{bits} bits: no key pair is made (a modulus need
    not be a product of two primes to be read, nor to cost its check).
    """
    n = int.from_bytes(uuid.uuid4().bytes * (bits // 128 + 1), "big") >> (
        128 * (bits // 128 + 1) - bits
    )
    jwk = {"kty": "RSA", "n": _b64uint(n | (1 << (bits - 1)) | 1), "e": _b64uint(e)}
    if kid is not None:
        jwk["kid"] = kid
    return jwk


class KeyRulesTests(JWTClientAuthTestCase):
    """
    Which keys a client may register: whatever it registers, one signature
    check with one of its keys stays cheap.
    """

    def refused(self, *keys: dict[str, Any]) -> str:
        response = self.request(
            "POST",
            "/client-reg",
            headers={"Authorization": f"Bearer {MASTER_TOKEN}"},
            json_body={"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": list(keys)}},
        )
        self.assertEqual(response.code, 400, response.body)
        self.assertEqual(response.json()["error"], "invalid_client_metadata")
        description = str(response.json()["error_description"])
        self.assertTrue(description.startswith("jwks: "), description)
        return description

    def test_rsa_public_exponent_must_be_65537(self) -> None:
        """
        A 3,070-bit exponent made one check cost 168 ms; 3 is refused too.
        """
        for e in (3, 17, 65539, (1 << 3069) + 1):
            self.assertIn(
                "public exponent is not 65537", self.refused(fake_rsa_jwk("r", 3072, e))
            )
        self.register_keys(jwks={"keys": [fake_rsa_jwk("r", 3072)]})

    def test_rsa_modulus_2048_to_8192_bits(self) -> None:
        for bits in (1024, 2047, 8193, 16384):
            self.assertIn("RSA keys need 2048 to 8192 bits", self.refused(fake_rsa_jwk("r", bits)))
        for bits in (2048, 8192):
            self.register_keys(jwks={"keys": [fake_rsa_jwk("r", bits)]})

    def test_ec_point_must_be_on_its_curve(self) -> None:
        off_curve = jwk_of(self.ec_key, "k")
        off_curve["y"] = off_curve["x"]
        self.assertIn("not a valid EC public key", self.refused(off_curve))

    def test_ec_curve_must_be_supported(self) -> None:
        self.assertIn("cannot sign", self.refused(jwk_of(ec.generate_private_key(ec.SECP384R1()), "k")))
        secp256k1 = jwk_of(ec.generate_private_key(ec.SECP256K1()), "k")
        self.assertIn("on a curve other than P-256, P-384 or P-521", self.refused(secp256k1))

    def test_at_most_20_keys(self) -> None:
        keys = [jwk_of(ec.generate_private_key(ec.SECP256R1()), f"k{i}") for i in range(21)]
        self.assertIn("more than 20 keys", self.refused(*keys))
        self.register_keys(jwks={"keys": keys[:20]})

    def test_every_key_can_be_chosen(self) -> None:
        """
        An assertion is checked against two keys at most: a set where some
        key could only be found among three (no kid, or one kid on three
        keys of a type) could never be used, and is refused.
        """
        keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]
        self.assertIn("give each key its own kid", self.refused(*(jwk_of(k, None) for k in keys)))
        self.assertIn("share one kid", self.refused(*(jwk_of(k, "same") for k in keys)))
        self.assertIn(
            "give each key its own kid",
            self.refused(jwk_of(keys[0], "a"), jwk_of(keys[1], "b"), jwk_of(keys[2], None)),
        )
        self.register_keys((keys[0], None), (keys[1], None))
        self.register_keys((keys[0], "a"), (keys[1], "b"), (keys[2], "c"))
        # keys of different types are chosen apart
        rsa_key = fake_rsa_jwk(None)
        self.register_keys(
            jwks={"keys": [jwk_of(keys[0], None), jwk_of(keys[1], None), rsa_key]}
        )


class VerificationCountTests(JWTClientAuthTestCase):
    """
    No assertion, however junk, costs more than two signature checks: the
    checks are counted (the algorithms' verify, wrapped), not timed.
    """

    def setUp(self) -> None:
        super().setUp()
        from ccserver import jose

        self.verifications = 0
        for alg in ("RS256", "PS256", "ES256", "EdDSA"):
            algorithm = jose.ALGORITHMS[alg]
            self.patch(algorithm, "verify", self.counting(algorithm.verify))
        self.stranger = rsa.generate_private_key(65537, 2048)

    def counting(self, verify: Any) -> Any:
        def counted(*args: Any) -> Any:
            self.verifications += 1
            return verify(*args)

        return counted

    def junk(self, client_id: str, kid: str | None) -> Response:
        self.verifications = 0
        return self.with_assertion(self.assertion(client_id, self.stranger, "RS256", kid))

    def test_twenty_keys(self) -> None:
        keys = [fake_rsa_jwk(f"r{i}", 3072) for i in range(20)]
        client_id = self.register_keys(jwks={"keys": keys})
        self.assert_refused(self.junk(client_id, None), "20 of its keys fit RS256")
        self.assertEqual(self.verifications, 0)
        self.assert_refused(self.junk(client_id, "r7"), "signature")
        self.assertEqual(self.verifications, 1)
        self.assert_refused(self.junk(client_id, "r99"), "kid")
        self.assertEqual(self.verifications, 0)

    def test_twenty_keys_without_kid_stored_before(self) -> None:
        """
        A set registered before the rule (written to the store directly):
        still no more than two checks.
        """
        from ccserver.model import Client

        client = Client(
            client_id="old-client",
            client_id_issued_at=int(self.clock.seconds()),
            metadata={
                "token_endpoint_auth_method": "private_key_jwt",
                "grant_types": ["client_credentials"],
                "jwks": {"keys": [fake_rsa_jwk(None) for _ in range(20)]},
            },
            client_secret_digest="",
            registration_access_token_digest="00" * 32,
        )
        self.successResultOf(self.store.add_client(client))
        self.assert_refused(self.junk("old-client", None), "20 of its keys fit RS256")
        self.assertEqual(self.verifications, 0)

    def test_two_keys_without_kid(self) -> None:
        client_id = self.register_keys(jwks={"keys": [fake_rsa_jwk(None), fake_rsa_jwk(None)]})
        self.assert_refused(self.junk(client_id, None), "signature")
        self.assertEqual(self.verifications, 2)

    def test_rotated_jwks_uri(self) -> None:
        """
        An unknown kid fetches the set again: still one check.
        """
        self.jwks_server.jwks = {"keys": [fake_rsa_jwk(f"r{i}") for i in range(20)]}
        client_id = str(
            self.register(token_endpoint_auth_method="private_key_jwt", jwks_uri=JWKS_URI)[
                "client_id"
            ]
        )
        self.assert_refused(self.junk(client_id, None), "20 of its keys fit RS256")
        self.assertEqual(self.verifications, 0)
        self.jwks_server.jwks["keys"].append(fake_rsa_jwk("new"))
        self.jwks_server.jwks["keys"].pop(0)
        self.assert_refused(self.junk(client_id, "new"), "signature")
        self.assertEqual((self.verifications, self.jwks_server.fetches), (1, 2))


class ClientExistenceTests(JWTClientAuthTestCase):
    """
    Until an assertion's signature is found good, nothing in the answer
    tells whether its client exists, how it authenticates, or which keys
    it has.
    """

    def test_one_answer_before_the_signature(self) -> None:
        keyed = self.register_keys((self.ec_key, "k1"), token_endpoint_auth_signing_alg="ES256")
        secret = self.register(scope="read")["client_id"]
        hmac_client = self.register(token_endpoint_auth_method="client_secret_jwt")["client_id"]
        stranger = ec.generate_private_key(ec.SECP256R1())
        answers = [
            self.with_assertion(self.assertion("no-such-client", stranger)),
            self.with_assertion(self.assertion(secret, stranger)),
            self.with_assertion(self.assertion(hmac_client, stranger)),
            self.with_assertion(self.assertion(keyed, stranger, kid="k9")),
            self.with_assertion(self.assertion(keyed, stranger, kid="k1")),
            self.with_assertion(self.assertion(keyed, rsa.generate_private_key(65537, 2048), "RS256")),
            self.with_assertion(jwt.encode(self.claims(keyed), None, algorithm="none")),
        ]
        first = answers[0]
        self.assertEqual(first.json(), {"error": "invalid_client", "error_description": "client authentication failed"})
        for answer in answers[1:]:
            self.assertEqual((answer.code, answer.body), (first.code, first.body))
            self.assertEqual(answer.headers["www-authenticate"], first.headers["www-authenticate"])


class ClientLibraryDefaultsTests(JWTClientAuthTestCase):
    """
    Assertions as client libraries make them by default: Authlib's own
    classes (an hour between iat and exp), and the claims of
    requests-oauth2client (60 s), openid-client and oauth4webapi (60 s, with
    nbf) and Nimbus (5 minutes).
    """

    def authlib(self, method: Any, client_id: str, secret: Any) -> Response:
        from authlib.oauth2.auth import ClientAuth

        auth = ClientAuth(client_id, secret, method)
        _, headers, body = auth.prepare(
            "POST",
            TOKEN_ENDPOINT,
            {"Content-Type": "application/x-www-form-urlencoded"},
            "grant_type=client_credentials",
        )
        return self.request("POST", "/token", headers=dict(headers), data=body.encode())

    def test_authlib_private_key_jwt(self) -> None:
        from authlib.oauth2.rfc7523 import PrivateKeyJWT

        key = rsa.generate_private_key(65537, 2048)
        client_id = self.register_keys((key, None))
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for _ in range(2):
            self.assert_token(self.authlib(PrivateKeyJWT(TOKEN_ENDPOINT), client_id, pem))

    def test_authlib_client_secret_jwt(self) -> None:
        from authlib.oauth2.rfc7523 import ClientSecretJWT

        registered = self.register(token_endpoint_auth_method="client_secret_jwt", scope="read")
        for _ in range(2):
            self.assert_token(
                self.authlib(ClientSecretJWT(TOKEN_ENDPOINT), registered["client_id"], registered["client_secret"])
            )

    def test_other_libraries_claims(self) -> None:
        client_id = self.register_keys((self.ec_key, "k1"))
        now = int(self.clock.seconds())
        for claims in (
            {"iat": now, "exp": now + 60},  # requests-oauth2client
            {"iat": now, "nbf": now, "exp": now + 60},  # openid-client 6, oauth4webapi
            {"iat": now, "exp": now + 300},  # Nimbus
            {"iat": now, "exp": now + 3600},  # Authlib
        ):
            self.assert_token(self.with_assertion(self.assertion(client_id, **claims)))

    def test_jti_kept_only_while_acceptable(self) -> None:
        """
        Authlib's assertion (exp an hour ahead) is remembered until iat +
        300 s + the 30 s leeway, not until its exp: a replay before then
        is refused as one, after then as too old; the record is purged.
        """
        client_id = self.register_keys((self.ec_key, "k1"))
        now = int(self.clock.seconds())
        assertion = self.assertion(client_id, iat=now, exp=now + 3600)
        self.assert_token(self.with_assertion(assertion))
        self.clock.advance(329)
        self.assert_invalid_client(self.with_assertion(assertion), "used already")
        self.clock.advance(2)
        self.assert_invalid_client(self.with_assertion(assertion), "iat is more than 300 seconds ago")
        # the record is purged by then, though exp is 55 minutes ahead
        self.successResultOf(self.store.purge_expired(int(self.clock.seconds())))
        jti = jwt.decode(assertion, options={"verify_signature": False})["jti"]
        self.assertTrue(
            self.successResultOf(
                self.store.use_once(f"assertion:{client_id}:{jti}", now + 3600)
            )
        )


class AcceptableUntilTests(SynchronousTestCase):
    """
    The replay store's bound: whatever an accepted assertion claims, its
    jti is remembered for at most window + 2 * leeway seconds, and it is
    never acceptable again once that time has passed.
    """

    def test_bound(self) -> None:
        now, window, leeway = 1_000_000.0, 300, 30
        longest = 0.0
        for iat in [None, *range(-400, 60, 10)]:
            for exp in range(-60, 100_000, 97):
                issued = None if iat is None else now + iat
                try:
                    until = acceptable_until(now + exp, issued, now, window, leeway)
                except OAuthError:
                    continue
                longest = max(longest, until - now)
                for later in (until, until + 1, until + 10_000):
                    with self.assertRaises(OAuthError):
                        acceptable_until(now + exp, issued, later, window, leeway)
                        if now + exp <= later - leeway:  # jose refuses it as expired
                            raise OAuthError("invalid_client", "expired")
        self.assertLessEqual(longest, window + 2 * leeway)
        self.assertEqual(longest, window + 2 * leeway)
