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
from twisted.logger import globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ccserver.keys import public_jwk
from ccserver.oauth.assertions import cache_seconds
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
        for uri in (JWKS_URI, "http://127.0.0.1:8000/jwks", "http://[::1]/jwks", "http://localhost/j"):
            response = self.post(token_endpoint_auth_method="private_key_jwt", jwks_uri=uri)
            self.assertEqual(response.code, 201, response.body)

    def test_jwks_uri_http_elsewhere_refused(self) -> None:
        self.assert_metadata_error(
            self.post(token_endpoint_auth_method="private_key_jwt", jwks_uri="http://c.example/j"),
            "jwks_uri",
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
        for key in (rsa.generate_private_key(65537, 1024), ec.generate_private_key(ec.SECP384R1())):
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

    def test_exp_too_far_ahead(self) -> None:
        now = int(self.clock.seconds())
        self.assert_invalid_client(
            self.with_assertion(self.assertion(self.client_id, exp=now + 3600)),
            "more than 300 seconds ahead",
        )
        self.assert_token(self.with_assertion(self.assertion(self.client_id, exp=now + 300)))

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
        # and cap, and the master token's (from the registration)
        self.clock.advance(120)
        self.assertEqual(self.successResultOf(self.store.purge_expired(int(self.clock.seconds()))), 5)

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
        description = self.assert_invalid_client(
            self.with_assertion(self.assertion(client_id, rsa_key, "RS256", "r1")),
            "alg is not allowed",
            "PS256",
        )
        self.assertNotIn("RS256", description)

    def test_none(self) -> None:
        unsigned = jwt.encode(self.claims(self.client_id), None, algorithm="none")
        self.assert_invalid_client(self.with_assertion(unsigned), "alg is not allowed")

    def test_hs_with_the_public_key(self) -> None:
        """
        The old confusion attack: an HMAC keyed with the client's public key.
        """
        public_pem = self.ec_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        forged = _hmac_jws(self.claims(self.client_id), public_pem, "k1")
        self.assert_invalid_client(self.with_assertion(forged), "alg is not allowed")

    def test_unknown_kid(self) -> None:
        self.assert_invalid_client(
            self.with_assertion(self.assertion(self.client_id, kid="k9")), "kid"
        )

    def test_without_kid_tries_each_key(self) -> None:
        old, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        client_id = self.register_keys((old, None), (new, None))
        self.assert_token(self.with_assertion(self.assertion(client_id, new, kid=None)))
        self.assert_token(self.with_assertion(self.assertion(client_id, old, kid=None)))
        stranger = ec.generate_private_key(ec.SECP256R1())
        self.assert_invalid_client(
            self.with_assertion(self.assertion(client_id, stranger, kid=None)), "signature"
        )

    def test_other_key_types(self) -> None:
        rsa_key, ed_key = rsa.generate_private_key(65537, 2048), ed25519.Ed25519PrivateKey.generate()
        client_id = self.register_keys((rsa_key, "r"), (ed_key, "e"))
        for alg in ("RS256", "PS256"):
            self.assert_token(self.with_assertion(self.assertion(client_id, rsa_key, alg, "r")))
        self.assert_token(self.with_assertion(self.assertion(client_id, ed_key, "EdDSA", "e")))
        # a key is used only with its own kind of algorithm
        self.assert_invalid_client(
            self.with_assertion(self.assertion(client_id, ed_key, "EdDSA", "r")), "kid"
        )

    def test_tampered_signature(self) -> None:
        header, payload, signature = self.assertion(self.client_id).split(".")
        claims = json.loads(jwt.utils.base64url_decode(payload))
        claims["sub"] = claims["iss"] = self.client_id
        claims["exp"] += 100
        forged_payload = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
        self.assert_invalid_client(
            self.with_assertion(f"{header}.{forged_payload}.{signature}"), "signature"
        )
        flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BA")
        self.assert_invalid_client(self.with_assertion(f"{header}.{payload}.{flipped}"))

    def test_signed_by_another_key(self) -> None:
        stranger = ec.generate_private_key(ec.SECP256R1())
        description = self.assert_invalid_client(
            self.with_assertion(self.assertion(self.client_id, stranger)), "signature"
        )
        self.assertNotIn("x", description.split("signature")[0][-3:])

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
        self.assert_invalid_client(
            self.with_assertion(self.assertion(secret_client["client_id"])),
            "not registered to authenticate with a client assertion",
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
        self.assert_invalid_client(
            self.with_assertion(self.assertion(self.client_id, b"x" * 64, "HS256", None)),
            "signature does not verify with the client's registered secret",
        )

    def test_asymmetric_alg_refused(self) -> None:
        self.assert_invalid_client(
            self.with_assertion(self.assertion(self.client_id, self.ec_key, "ES256", None)),
            "alg is not allowed",
            "HS256",
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
            self.assert_invalid_client(
                self.with_assertion(self.assertion(self.client_id, kid="nope")), "kid"
            )
        self.assertEqual(self.jwks_server.fetches, 2)
        self.clock.advance(31)
        self.assert_invalid_client(self.with_assertion(self.assertion(self.client_id, kid="nope")))
        self.assertEqual(self.jwks_server.fetches, 3)

    def test_unreachable(self) -> None:
        self.jwks_server.code = 500
        self.assert_invalid_client(
            self.with_assertion(self.assertion(self.client_id)), "jwks_uri could not be fetched"
        )
        lines = [e for e in self.logged if "Could not fetch the JWK set" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["reason"], "it answered 500")

    def test_not_a_jwk_set(self) -> None:
        for body in (b"<html>", b"[]", b'{"keys": 1}'):
            self.jwks_server.body = body
            self.assert_invalid_client(
                self.with_assertion(self.assertion(self.client_id)), "jwks_uri"
            )

    def test_too_large(self) -> None:
        self.jwks_server.body = b'{"keys": [], "pad": "' + b"x" * 70_000 + b'"}'
        self.assert_invalid_client(self.with_assertion(self.assertion(self.client_id)), "jwks_uri")

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
        lines = [e for e in self.logged if "Could not fetch the JWK set" in e.get("log_format", "")]
        self.assertEqual(lines[0]["reason"], "no answer within 5s")


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
