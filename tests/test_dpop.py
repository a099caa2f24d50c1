"""
DPoP (RFC 9449) at the token endpoint: every check of §4.3 good and bad,
the bound tokens (§5, §6), the server nonces (§8), and the client metadata
dpop_bound_access_tokens (§5.2).  Proofs are built with PyJWT, as a client
would build them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from typing import Any
from urllib.parse import urlencode

import jwt
from attrs import evolve
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from ccserver.config import Config, DPoPConfig
from ccserver.jose import thumbprint
from ccserver.oauth.dpop import NonceIssuer, normalise_uri
from tests.helpers import ISSUER, MASTER_TOKEN, Response, ServerTestCase, basic

TOKEN_ENDPOINT = ISSUER + "/token"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Key:
    """
    A client's DPoP key pair, and proofs made with it.
    """

    def __init__(self, alg: str = "ES256") -> None:
        self.alg = alg
        if alg == "ES256":
            self.private: Any = ec.generate_private_key(ec.SECP256R1())
            self.jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        elif alg == "EdDSA":
            self.private = ed25519.Ed25519PrivateKey.generate()
            self.jwk = OKPAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)

    @property
    def jkt(self) -> str:
        """
        RFC 7638 computed here independently: required members, sorted.
        """
        required = {
            "EC": ("crv", "kty", "x", "y"),
            "OKP": ("crv", "kty", "x"),
            "RSA": ("e", "kty", "n"),
        }
        members = {k: self.jwk[k] for k in required[self.jwk["kty"]]}
        return b64(
            hashlib.sha256(
                json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
            ).digest()
        )

    def proof(self, now: float, header: dict[str, Any] | None = None, **claims: Any) -> str:
        payload = {"jti": str(uuid.uuid4()), "htm": "POST", "htu": TOKEN_ENDPOINT, "iat": int(now)}
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        headers = {"typ": "dpop+jwt", "jwk": self.jwk, **(header or {})}
        return jwt.encode(payload, self.private, algorithm=self.alg, headers=headers)


class DPoPTestCase(ServerTestCase):
    token_format = "jwt"

    def make_config(self, **tokens: Any) -> Config:
        return super().make_config(format=self.token_format, **tokens)

    def setUp(self) -> None:
        super().setUp()
        self.client = self.register(client_name="DPoP App", scope="read")
        self.auth = basic(self.client["client_id"], self.client["client_secret"])
        self.key = Key()

    def dpop_token(self, *proofs: str, auth: str | None = None) -> Response:
        headers: dict[str, Any] = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": auth or self.auth,
        }
        if proofs:
            headers["DPoP"] = list(proofs)
        return self.request(
            "POST",
            "/token",
            headers=headers,
            data=urlencode({"grant_type": "client_credentials"}).encode(),
        )

    def assert_refused(self, response: Response, error: str = "invalid_dpop_proof") -> str:
        self.assertEqual(response.code, 400, response.body)
        self.assertEqual(response.json()["error"], error, response.body)
        self.assertEqual(response.headers["cache-control"], "no-store")
        return str(response.json()["error_description"])

    def now(self) -> float:
        return self.clock.seconds()


class ProofCheckTests(DPoPTestCase):
    """
    RFC 9449 §4.3, one check at a time.
    """

    def test_good_proof_binds_the_jwt(self) -> None:
        """
        §5: token_type DPoP; §6.1: cnf.jkt is the key's RFC 7638 thumbprint.
        """
        response = self.dpop_token(self.key.proof(self.now()))
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json()["token_type"], "DPoP")
        claims = self.verify(response.json()["access_token"])
        self.assertEqual(claims["cnf"], {"jkt": self.key.jkt})
        self.assertNotIn("dpop-nonce", response.headers)

    def test_every_algorithm(self) -> None:
        for alg in ("ES256", "EdDSA", "RS256", "PS256"):
            key = Key(alg)
            response = self.dpop_token(key.proof(self.now()))
            self.assertEqual(response.code, 200, (alg, response.body))
            self.assertEqual(self.verify(response.json()["access_token"])["cnf"]["jkt"], key.jkt)

    def test_without_proof_a_bearer_token(self) -> None:
        response = self.dpop_token()
        self.assertEqual(response.json()["token_type"], "Bearer")
        self.assertNotIn("cnf", self.verify(response.json()["access_token"]))

    def test_wrong_typ(self) -> None:
        for typ in ("JWT", "at+jwt", None):
            proof = self.key.proof(self.now(), header={"typ": typ})
            self.assertIn("typ", self.assert_refused(self.dpop_token(proof)))

    def test_alg_none(self) -> None:
        header = b64(json.dumps({"typ": "dpop+jwt", "alg": "none", "jwk": self.key.jwk}).encode())
        claims = {"jti": "x" * 16, "htm": "POST", "htu": TOKEN_ENDPOINT, "iat": int(self.now())}
        proof = f"{header}.{b64(json.dumps(claims).encode())}."
        self.assertIn("alg", self.assert_refused(self.dpop_token(proof)))

    def test_hs256(self) -> None:
        secret = b"s" * 32
        proof = jwt.encode(
            {
                "jti": "abcdefghijklmnop",
                "htm": "POST",
                "htu": TOKEN_ENDPOINT,
                "iat": int(self.now()),
            },
            secret,
            algorithm="HS256",
            headers={"typ": "dpop+jwt", "jwk": {"kty": "oct", "k": b64(secret)}},
        )
        self.assertIn("alg", self.assert_refused(self.dpop_token(proof)))

    def test_alg_not_configured(self) -> None:
        """
        ES384 is asymmetric, but not one this server accepts.
        """
        private = ec.generate_private_key(ec.SECP384R1())
        proof = jwt.encode(
            {
                "jti": "abcdefghijklmnop",
                "htm": "POST",
                "htu": TOKEN_ENDPOINT,
                "iat": int(self.now()),
            },
            private,
            algorithm="ES384",
            headers={
                "typ": "dpop+jwt",
                "jwk": ECAlgorithm.to_jwk(private.public_key(), as_dict=True),
            },
        )
        self.assertIn("alg", self.assert_refused(self.dpop_token(proof)))

    def test_private_key_in_jwk(self) -> None:
        private_jwk = ECAlgorithm.to_jwk(self.key.private, as_dict=True)
        self.assertIn("d", private_jwk)
        proof = self.key.proof(self.now(), header={"jwk": private_jwk})
        self.assertIn("public key only", self.assert_refused(self.dpop_token(proof)))

    def test_jwk_key_rules(self) -> None:
        """
        The jwk header is held to the rules of every key from outside: a
        proof signed with an RSA key whose public exponent is 3 (which would
        verify) is refused, as are an RSA modulus over 8192 bits and an EC
        point off its curve, before any signature is checked.
        """
        key = Key("RS256")
        key.private = rsa.generate_private_key(public_exponent=3, key_size=2048)
        key.jwk = RSAAlgorithm.to_jwk(key.private.public_key(), as_dict=True)
        self.assertIn(
            "public exponent is not 65537",
            self.assert_refused(self.dpop_token(key.proof(self.now()))),
        )
        big = {"kty": "RSA", "e": "AQAB", "n": b64(b"\xff" * 1025)}
        proof = Key("RS256").proof(self.now(), header={"jwk": big})
        self.assertIn("2048 to 8192 bits", self.assert_refused(self.dpop_token(proof)))
        off_curve = dict(self.key.jwk, y=self.key.jwk["x"])
        proof = self.key.proof(self.now(), header={"jwk": off_curve})
        self.assertIn("not a valid EC public key", self.assert_refused(self.dpop_token(proof)))

    def test_jwk_missing_or_not_a_key(self) -> None:
        for jwk in (None, "key", {"kty": "EC"}, {"kty": "RSA", "n": "AQAB", "e": "AQAB"}):
            proof = self.key.proof(self.now(), header={"jwk": jwk})
            self.assert_refused(self.dpop_token(proof))

    def test_jwk_of_another_key(self) -> None:
        """
        §4.3 6.: the signature verifies with the key in the jwk header.
        """
        proof = self.key.proof(self.now(), header={"jwk": Key().jwk})
        self.assertIn("signature", self.assert_refused(self.dpop_token(proof)))

    def test_bad_signature(self) -> None:
        head, payload, signature = self.key.proof(self.now()).split(".")
        tampered = json.loads(base64.urlsafe_b64decode(payload + "=="))
        tampered["htu"] = "https://evil.example/token"
        proof = f"{head}.{b64(json.dumps(tampered).encode())}.{signature}"
        self.assertIn("signature", self.assert_refused(self.dpop_token(proof)))

    def test_wrong_htm(self) -> None:
        proof = self.key.proof(self.now(), htm="GET")
        self.assertIn("htm", self.assert_refused(self.dpop_token(proof)))

    def test_wrong_htu(self) -> None:
        for htu in (
            "https://as.example.com/token/introspect",
            "https://other.example.com/token",
            "http://as.example.com/token",
            "https://as.example.com:8443/token",
            "not a uri",
            17,
        ):
            proof = self.key.proof(self.now(), htu=htu)
            self.assertIn("htu", self.assert_refused(self.dpop_token(proof)), htu)

    def test_htu_normalised_query_and_fragment_ignored(self) -> None:
        """
        §4.3 9.: query and fragment ignored; scheme and host case, and the
        default port, normalised (RFC 3986 §6.2.2, §6.2.3).
        """
        for htu in (
            TOKEN_ENDPOINT + "?x=1",
            TOKEN_ENDPOINT + "#frag",
            "HTTPS://AS.Example.COM/token",
            "https://as.example.com:443/token",
        ):
            response = self.dpop_token(self.key.proof(self.now(), htu=htu))
            self.assertEqual(response.code, 200, (htu, response.body))

    def test_normalise_uri(self) -> None:
        self.assertEqual(normalise_uri("HTTP://H:80"), "http://h/")
        self.assertEqual(normalise_uri("http://[::1]:8080/t?q"), "http://[::1]:8080/t")
        self.assertIsNone(normalise_uri("ftp://h/"))
        self.assertIsNone(normalise_uri("http://h:99999/"))

    def test_missing_claims(self) -> None:
        for name in ("jti", "htm", "htu", "iat"):
            proof = self.key.proof(self.now(), **{name: None})
            self.assertIn(name, self.assert_refused(self.dpop_token(proof)))

    def test_iat_too_old(self) -> None:
        good = self.key.proof(self.now() - 300)
        self.assertEqual(self.dpop_token(good).code, 200)
        proof = self.key.proof(self.now() - 301)
        self.assertIn("old", self.assert_refused(self.dpop_token(proof)))

    def test_iat_in_the_future(self) -> None:
        self.assertEqual(self.dpop_token(self.key.proof(self.now() + 5)).code, 200)
        proof = self.key.proof(self.now() + 6)
        self.assertIn("future", self.assert_refused(self.dpop_token(proof)))

    def test_iat_not_a_number(self) -> None:
        for iat in ("now", True):
            proof = self.key.proof(self.now(), iat=iat)
            self.assertIn("iat", self.assert_refused(self.dpop_token(proof)))

    def test_replay(self) -> None:
        """
        §11.1: a jti is used once while the proof could be accepted.
        """
        proof = self.key.proof(self.now())
        self.assertEqual(self.dpop_token(proof).code, 200)
        self.assertIn("used before", self.assert_refused(self.dpop_token(proof)))
        # the same jti from another key is another proof
        other = Key().proof(
            self.now(), jti=json.loads(base64.urlsafe_b64decode(proof.split(".")[1] + "=="))["jti"]
        )
        self.assertEqual(self.dpop_token(other).code, 200)

    def test_replay_record_expires_with_the_window(self) -> None:
        self.dpop_token(self.key.proof(self.now(), jti="once-only-jti"))
        self.clock.advance(301)
        self.successResultOf(self.store.purge_expired(int(self.now())))
        # the old proof is too old now; a new one may reuse the jti
        self.assertEqual(self.dpop_token(self.key.proof(self.now(), jti="once-only-jti")).code, 200)

    def test_oversized_jti(self) -> None:
        proof = self.key.proof(self.now(), jti="j" * 129)
        self.assertIn("jti", self.assert_refused(self.dpop_token(proof)))

    def test_two_dpop_headers(self) -> None:
        response = self.dpop_token(self.key.proof(self.now()), self.key.proof(self.now()))
        self.assertIn("more than one", self.assert_refused(response))

    def test_garbage(self) -> None:
        for proof in ("", "garbage", "a.b.c", "a.b", "é.é.é", "x" * 9000, "e30.e30.!!"):
            self.assert_refused(self.dpop_token(proof))

    def test_no_www_authenticate(self) -> None:
        """
        §5: an error "per Section 5.2 of [RFC6749]", a 400: the DPoP
        challenge of §7.1 is a resource server's 401.
        """
        response = self.dpop_token("garbage")
        self.assertNotIn("www-authenticate", response.headers)

    def test_client_authentication_comes_first(self) -> None:
        response = self.dpop_token(
            self.key.proof(self.now()), auth=basic(self.client["client_id"], "wrong")
        )
        self.assertEqual(response.code, 401)
        self.assertEqual(response.json()["error"], "invalid_client")


class OpaqueTokenTests(DPoPTestCase):
    token_format = "opaque"

    def introspect(self, token: str) -> dict[str, Any]:
        response = self.request(
            "POST",
            "/token/introspect",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Authorization": self.auth,
            },
            data=urlencode({"token": token}).encode(),
        )
        self.assertEqual(response.code, 200, response.body)
        return response.json()  # type: ignore[no-any-return]

    def test_binding_stored_and_introspected(self) -> None:
        """
        §6.2: introspection returns cnf.jkt, and token_type DPoP.
        """
        response = self.dpop_token(self.key.proof(self.now()))
        self.assertEqual(response.json()["token_type"], "DPoP")
        answer = self.introspect(response.json()["access_token"])
        self.assertTrue(answer["active"])
        self.assertEqual(answer["cnf"], {"jkt": self.key.jkt})
        self.assertEqual(answer["token_type"], "DPoP")

    def test_bearer_opaque_token(self) -> None:
        answer = self.introspect(self.dpop_token().json()["access_token"])
        self.assertEqual(answer["token_type"], "Bearer")
        self.assertNotIn("cnf", answer)


class JWTIntrospectionTests(OpaqueTokenTests):
    token_format = "jwt"


class NonceTests(DPoPTestCase):
    """
    §8: with [dpop] require_nonce, proofs carry a server nonce.
    """

    def make_config(self, **tokens: Any) -> Config:
        config = super().make_config(**tokens)
        return evolve(config, dpop=DPoPConfig(require_nonce=True, nonce_lifetime=60))

    def test_nonce_required(self) -> None:
        response = self.dpop_token(self.key.proof(self.now()))
        self.assert_refused(response, "use_dpop_nonce")
        nonce = response.headers["dpop-nonce"]
        self.assertRegex(nonce, r"^[A-Za-z0-9_-]{43}$")
        # the proof was not consumed: the client retries with a new one
        response = self.dpop_token(self.key.proof(self.now(), nonce=nonce))
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json()["token_type"], "DPoP")
        # §8.2: the next nonce comes with the 200
        self.assertIn("dpop-nonce", response.headers)

    def test_nonce_from_another_instance(self) -> None:
        """
        Stateless: another instance with the same key-encryption key made it.
        """
        other = NonceIssuer(
            self.encryptor.derive(b"ccserver dpop nonce key v1"), 60, self.clock.seconds
        )
        response = self.dpop_token(self.key.proof(self.now(), nonce=other.current()))
        self.assertEqual(response.code, 200, response.body)

    def test_nonce_of_another_key_refused(self) -> None:
        other = NonceIssuer(b"k" * 32, 60, self.clock.seconds)
        response = self.dpop_token(self.key.proof(self.now(), nonce=other.current()))
        self.assert_refused(response, "use_dpop_nonce")
        self.assertIn("dpop-nonce", response.headers)

    def test_nonce_stale(self) -> None:
        nonce = self.dpop_token(self.key.proof(self.now())).headers["dpop-nonce"]
        self.clock.advance(60)
        self.assertEqual(self.dpop_token(self.key.proof(self.now(), nonce=nonce)).code, 200)
        self.clock.advance(60)
        response = self.dpop_token(self.key.proof(self.now(), nonce=nonce))
        self.assert_refused(response, "use_dpop_nonce")
        self.assertNotEqual(response.headers["dpop-nonce"], nonce)

    def test_nonce_malformed(self) -> None:
        for nonce in (17, "", "a b"):
            self.assert_refused(self.dpop_token(self.key.proof(self.now(), nonce=nonce)))

    def test_bearer_requests_unaffected(self) -> None:
        response = self.dpop_token()
        self.assertEqual(response.code, 200)
        self.assertNotIn("dpop-nonce", response.headers)


class BoundClientTests(DPoPTestCase):
    """
    §5.2: dpop_bound_access_tokens.
    """

    def setUp(self) -> None:
        super().setUp()
        self.bound = self.register(client_name="Bound", scope="read", dpop_bound_access_tokens=True)
        self.bound_auth = basic(self.bound["client_id"], self.bound["client_secret"])

    def test_without_proof_refused(self) -> None:
        """
        "the authorization server MUST reject token requests from the client
        that do not contain the DPoP header": no code is named; a missing
        required header is RFC 6749 §5.2 invalid_request.
        """
        description = self.assert_refused(self.dpop_token(auth=self.bound_auth), "invalid_request")
        self.assertIn("DPoP", description)

    def test_with_proof(self) -> None:
        response = self.dpop_token(self.key.proof(self.now()), auth=self.bound_auth)
        self.assertEqual(response.json()["token_type"], "DPoP")

    def test_registration_shows_it(self) -> None:
        self.assertIs(self.bound["dpop_bound_access_tokens"], True)

    def test_must_be_boolean(self) -> None:
        for value in ("true", 1, None):
            response = self.request(
                "POST",
                "/client-reg",
                headers={"Authorization": f"Bearer {MASTER_TOKEN}"},
                json_body={"dpop_bound_access_tokens": value},
            )
            self.assertEqual(response.code, 400, response.body)
            self.assertEqual(response.json()["error"], "invalid_client_metadata")
            self.assertIn("dpop_bound_access_tokens", response.json()["error_description"])

    def test_own_token_cannot_turn_it_off(self) -> None:
        uri = f"/client-reg/{self.bound['client_id']}"
        rat = self.bound["registration_access_token"]
        for metadata in ({"scope": "read"}, {"scope": "read", "dpop_bound_access_tokens": False}):
            response = self.request(
                "PUT",
                uri,
                headers={"Authorization": f"Bearer {rat}"},
                json_body={
                    "client_id": self.bound["client_id"],
                    "client_name": "Bound",
                    **metadata,
                },
            )
            self.assertEqual(response.code, 400, response.body)
            self.assertEqual(response.json()["error"], "invalid_client_metadata")
            self.assertIn("dpop_bound_access_tokens", response.json()["error_description"])
        self.assert_refused(self.dpop_token(auth=self.bound_auth), "invalid_request")

    def test_master_token_can(self) -> None:
        uri = f"/client-reg/{self.bound['client_id']}"
        response = self.request(
            "PUT",
            uri,
            headers={"Authorization": f"Bearer {MASTER_TOKEN}"},
            json_body={
                "client_id": self.bound["client_id"],
                "scope": "read",
                "dpop_bound_access_tokens": False,
            },
        )
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(self.dpop_token(auth=self.bound_auth).code, 200)


class DiscoveryTests(ServerTestCase):
    def test_algorithms_advertised(self) -> None:
        document = self.request("GET", "/.well-known/oauth-authorization-server").json()
        self.assertEqual(
            document["dpop_signing_alg_values_supported"], ["ES256", "EdDSA", "RS256", "PS256"]
        )


class ThumbprintTests(ServerTestCase):
    def test_rfc7638_example(self) -> None:
        """
        RFC 7638 §3.1's example key and thumbprint.
        """
        jwk = {
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29",
        }
        self.assertEqual(thumbprint(jwk), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
