"""
Compact JWS signing and verification (ccserver.jose).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.trial.unittest import SynchronousTestCase

from ccserver import jose
from ccserver.keys import SigningKey, generate_private_key
from ccserver.model import StoredKey

NOW = 1_700_000_000
CLAIMS = {"iss": "https://as.example", "sub": "c1", "aud": "https://rs.example", "exp": NOW + 60}
_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_KEYS: dict[str, Any] = {
    "RS256": _RSA,
    "RS384": _RSA,
    "RS512": _RSA,
    "PS256": _RSA,
    "PS384": _RSA,
    "PS512": _RSA,
    "ES256": ec.generate_private_key(ec.SECP256R1()),
    "ES384": ec.generate_private_key(ec.SECP384R1()),
    "ES512": ec.generate_private_key(ec.SECP521R1()),
    "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    "HS256": b"k" * 32,
    "HS384": b"k" * 48,
    "HS512": b"k" * 64,
}


def public(alg: str) -> Any:
    key = _KEYS[alg]
    return key if isinstance(key, bytes) else key.public_key()


def sign(alg: str, claims: dict[str, Any] | None = None, **header: Any) -> str:
    return jose.JWSSigner.create(alg, _KEYS[alg], header).sign(CLAIMS if claims is None else claims)


def b64(document: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()


def with_header(token: str, header: dict[str, Any]) -> str:
    return ".".join([b64(header), *token.split(".")[1:]])


class SignVerifyTests(SynchronousTestCase):
    def verify(self, token: str, alg: str = "ES256", **kwargs: Any) -> jose.Verified:
        kwargs.setdefault("algorithms", (alg,))
        return jose.verify(token, public(alg), **kwargs)

    def fails(self, token: str, alg: str = "ES256", **kwargs: Any) -> str:
        with self.assertRaises(jose.JOSEError) as caught:
            self.verify(token, alg, **kwargs)
        return str(caught.exception)

    def test_round_trip_every_algorithm(self) -> None:
        for alg in jose.ALGORITHMS:
            token = sign(alg, kid="k1", typ="at+jwt")
            verified = self.verify(token, alg, typ="at+jwt", now=NOW)
            self.assertEqual(verified.claims, CLAIMS, alg)
            self.assertEqual(verified.header, {"alg": alg, "kid": "k1", "typ": "at+jwt"}, alg)

    def test_pyjwt_agrees(self) -> None:
        """
        Both ways interoperate with another implementation: PyJWT verifies
        what jose signs, and jose verifies what PyJWT signs.
        """
        for alg in jose.ALGORITHMS:
            ours = sign(alg)
            self.assertEqual(
                jwt.decode(
                    ours,
                    public(alg),
                    algorithms=[alg],
                    options={"verify_exp": False, "verify_aud": False},
                ),
                CLAIMS,
            )
            theirs = jwt.encode(CLAIMS, _KEYS[alg], algorithm=alg)
            self.assertEqual(self.verify(theirs, alg).claims, CLAIMS, alg)

    def test_access_token_header_bytes(self) -> None:
        """
        An access token's protected header is serialised once, in the
        order alg, kid, typ, as it always was.
        """
        stored = StoredKey(
            kid="abc", alg="ES256", encrypted_private_key="", created_at=0, active_from=0
        )
        key = SigningKey.from_private_key(stored, generate_private_key("ES256"))
        header = base64.urlsafe_b64decode(key.sign(CLAIMS).split(".")[0] + "==")
        self.assertEqual(header, b'{"alg":"ES256","kid":"abc","typ":"at+jwt"}')
        jose.verify(key.sign(CLAIMS), key.public_key, algorithms=("ES256",), typ="at+jwt")

    def test_tampered(self) -> None:
        token = sign("ES256")
        header, payload, signature = token.split(".")
        flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
        self.assertIn("signature", self.fails(f"{header}.{payload}.{flipped}"))
        other = b64(dict(CLAIMS, sub="c2"))
        self.assertIn("signature", self.fails(f"{header}.{other}.{signature}"))
        self.assertIn("signature", self.fails(with_header(token, {"alg": "ES256", "kid": "x"})))

    def test_wrong_alg(self) -> None:
        token = sign("ES256")
        self.assertIn("alg", self.fails(token, algorithms=("RS256",)))
        self.assertIn("alg", self.fails(with_header(token, {})))
        self.assertIn("alg", self.fails(with_header(token, {"alg": ["ES256"]})))

    def test_key_bound_to_its_algorithm(self) -> None:
        """
        RFC 8725 §2.1: an HS256 token "signed" with the server's public RSA
        key as the secret is refused, even with HS256 allowed.
        """
        pem = _RSA.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        signing_input = f"{b64({'alg': 'HS256'})}.{b64(CLAIMS)}"
        mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
        forged = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
        with self.assertRaises(jose.JOSEError) as caught:
            jose.verify(forged, _RSA.public_key(), algorithms=("RS256", "HS256"))
        self.assertIn("does not fit", str(caught.exception))
        p384 = ec.generate_private_key(ec.SECP384R1())
        with self.assertRaises(jose.JOSEError):
            jose.verify(sign("ES256"), p384.public_key(), algorithms=("ES256",))

    def test_alg_none_never(self) -> None:
        unsigned = f"{b64({'alg': 'none'})}.{b64(CLAIMS)}."
        self.assertIn("alg", self.fails(unsigned, algorithms=("ES256", "RS256", "HS256")))
        with self.assertRaises(ValueError):
            jose.verify(unsigned, b"", algorithms=("none",))
        with self.assertRaises(ValueError):
            jose.JWSSigner.create("none", b"")

    def test_typ(self) -> None:
        self.assertIn("typ", self.fails(sign("ES256"), typ="dpop+jwt"))
        self.assertIn("typ", self.fails(sign("ES256", typ="JWT"), typ="dpop+jwt"))
        self.assertIn("typ", self.fails(sign("ES256", typ=7), typ="dpop+jwt"))
        # RFC 7515 §4.1.9: the application/ prefix may be left out, and
        # media types compare case-insensitively.
        self.verify(sign("ES256", typ="application/DPoP+jwt"), typ="dpop+jwt")
        # No typ asked for: any is fine.
        self.verify(sign("ES256", typ="JWT"))

    def test_header_rules(self) -> None:
        self.assertIn("critical", self.fails(sign("ES256", crit=["exp"], exp=1)))
        self.assertIn("kid", self.fails(sign("ES256", kid=7)))

    def test_key_resolver(self) -> None:
        seen: list[Any] = []

        def resolve(header: Any) -> Any:
            seen.append(dict(header))
            return public("ES256") if header.get("kid") == "k1" else None

        jose.verify(sign("ES256", kid="k1"), resolve, algorithms=("ES256",))
        self.assertEqual(seen, [{"alg": "ES256", "kid": "k1"}])
        with self.assertRaises(jose.JOSEError) as caught:
            jose.verify(sign("ES256", kid="k2"), resolve, algorithms=("ES256",))
        self.assertIn("no key", str(caught.exception))
        # Not asked for a key when the alg is not allowed.
        seen.clear()
        with self.assertRaises(jose.JOSEError):
            jose.verify(sign("ES256", kid="k1"), resolve, algorithms=("RS256",))
        self.assertEqual(seen, [])

    def test_malformed(self) -> None:
        token = sign("ES256")
        header, payload, signature = token.split(".")
        for bad in (
            "",
            f"{header}.{payload}",
            f"{token}.{signature}",
            f"{header}!.{payload}.{signature}",
            f"{header}.{payload}.{signature}===",
            f"{header}.{payload}.{signature}é",
            f"{b64([1])}.{payload}.{signature}",
            f"e30x.{payload}.{signature}",
            f"{header[:-1]}.{payload}.{signature}",
        ):
            self.assertIn("malformed", self.fails(bad), bad)
        with self.assertRaises(jose.JOSEError):
            self.verify(sign("ES256", claims=[1]))  # type: ignore[arg-type]

    def test_padded_signature_accepted(self) -> None:
        """
        Canonical padding is tolerated as PyJWT tolerated it, so that a
        token introspects as it did.
        """
        token = sign("ES256")
        self.assertEqual(self.verify(token + "==").claims, CLAIMS)

    def test_required_claims(self) -> None:
        self.verify(sign("ES256"), required=("iss", "exp"))
        self.assertIn("jti claim", self.fails(sign("ES256"), required=("jti",)))
        self.assertIn(
            "jti claim", self.fails(sign("ES256", dict(CLAIMS, jti=None)), required=("jti",))
        )

    def test_issuer(self) -> None:
        self.verify(sign("ES256"), issuer="https://as.example")
        self.assertIn("iss", self.fails(sign("ES256"), issuer="https://other.example"))
        no_iss = {k: v for k, v in CLAIMS.items() if k != "iss"}
        self.assertIn("iss", self.fails(sign("ES256", no_iss), issuer="https://as.example"))

    def test_audience(self) -> None:
        self.verify(sign("ES256"), audience={"https://rs.example"})
        both = dict(CLAIMS, aud=["https://x.example", "https://rs.example"])
        self.verify(sign("ES256", both), audience={"https://rs.example"})
        self.assertIn("aud", self.fails(sign("ES256"), audience={"https://x.example"}))
        for aud in (None, 7, {"a": 1}, [7]):
            self.fails(sign("ES256", dict(CLAIMS, aud=aud)), audience={"https://rs.example"})

    def test_time(self) -> None:
        token = sign("ES256")
        self.verify(token, now=NOW + 59)
        self.assertIn("expired", self.fails(token, now=NOW + 60))
        self.verify(token, now=NOW + 60, leeway=1)
        self.verify(token)  # no clock given: not checked
        later = sign("ES256", dict(CLAIMS, nbf=NOW + 10))
        self.assertIn("not valid yet", self.fails(later, now=NOW))
        self.verify(later, now=NOW + 10)
        self.verify(later, now=NOW, leeway=10)
        # iat is informational: a clock behind the issuer's is no error.
        self.verify(sign("ES256", dict(CLAIMS, iat=NOW + 5)), now=NOW)
        for exp in ("soon", True, float("nan"), float("inf")):
            self.assertIn("NumericDate", self.fails(sign("ES256", dict(CLAIMS, exp=exp)), now=NOW))

    def test_messages_echo_nothing_from_the_token(self) -> None:
        secret = "s3cr3t-value"
        for token in (
            with_header(sign("ES256"), {"alg": secret}),
            with_header(sign("ES256"), {"alg": "ES256", "typ": secret}),
            sign("ES256", dict(CLAIMS, iss=secret), typ="at+jwt"),
            sign("ES256", dict(CLAIMS, exp=secret), typ="at+jwt"),
        ):
            message = self.fails(token, typ="at+jwt", issuer="https://as.example", now=NOW)
            self.assertNotIn(secret, message)


class SignerTests(SynchronousTestCase):
    def test_key_must_fit(self) -> None:
        for alg, key in (
            ("ES256", ec.generate_private_key(ec.SECP384R1())),
            ("ES256", _RSA),
            ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=1024)),
            ("EdDSA", _KEYS["ES256"]),
            ("HS256", b"k" * 31),
            ("HS512", b"k" * 63),
            ("HS256", _RSA),
            ("ES384", _KEYS["ES256"]),
            ("ES512", _KEYS["ES384"]),
            ("PS512", _KEYS["ES512"]),
            ("none", _RSA),
        ):
            with self.assertRaises(ValueError, msg=alg):
                jose.JWSSigner.create(alg, key)

    def test_header_once(self) -> None:
        signer = jose.JWSSigner.create("HS256", _KEYS["HS256"], {"kid": "k", "typ": "at+jwt"})
        first, second = signer.sign({"n": 1}), signer.sign({"n": 2})
        self.assertEqual(first.split(".")[0], second.split(".")[0])
        self.assertEqual(first.split(".")[0].encode(), signer.header_segment)
        self.assertNotIn("k" * 32, repr(signer))


class ES256SignatureTests(SynchronousTestCase):
    def test_raw_signature_is_padded(self) -> None:
        """
        RFC 7518 §3.4: R and S are 32 bytes each, whatever their value: a
        small one is padded with leading zeros (a DER integer is not).
        """
        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

        from ccserver.jose import _ecdsa_p256

        class Key:
            def sign(self, data: bytes, algorithm: object) -> bytes:
                return encode_dss_signature(1, 2**255 + 7)

        self.assertEqual(
            _ecdsa_p256(b"x", Key()),
            b"\0" * 31 + b"\1" + (2**255 + 7).to_bytes(32, "big"),
        )


class JWKTests(SynchronousTestCase):
    """
    JWKs read and written once (L{jose.import_jwk}, L{jose.public_jwk}),
    and the rule for which public keys are accepted from outside.
    """

    def test_round_trip(self) -> None:
        for alg in ("RS256", "ES256", "EdDSA"):
            private = _KEYS[alg]
            jwk = dict(jose.public_jwk(private), kid="k", use="sig")
            self.assertEqual(jose.public_jwk(private.public_key()), jose.public_jwk(private))
            self.assertNotIn("key_ops", jwk)
            imported = jose.import_jwk(jwk)
            self.assertEqual((imported.kid, imported.use, imported.certificate), ("k", "sig", None))
            self.assertEqual(jose.public_jwk(imported.key), jose.public_jwk(private))

    def test_private_and_symmetric_refused(self) -> None:
        private = jwt.algorithms.ECAlgorithm.to_jwk(_KEYS["ES256"], as_dict=True)
        with self.assertRaises(jose.UnusableKey) as refused:
            jose.import_jwk(private)
        self.assertIn("private members (d)", str(refused.exception))
        self.assertNotIn(private["d"], str(refused.exception))
        with self.assertRaises(jose.UnusableKey) as refused:
            jose.import_jwk({"kty": "oct", "k": "c2VjcmV0"})
        self.assertIn("symmetric", str(refused.exception))

    def test_rsa_rules(self) -> None:
        def rsa_jwk(n_bits: int, e: int) -> dict[str, Any]:
            n = (1 << (n_bits - 1)) | 1
            return {"kty": "RSA", "n": _uint(n), "e": _uint(e)}

        jose.import_jwk(rsa_jwk(2048, 65537))
        jose.import_jwk(rsa_jwk(8192, 65537))
        for bits, e, words in (
            (2048, 3, "public exponent is not 65537"),
            (4096, (1 << 3069) + 1, "public exponent is not 65537"),
            (2047, 65537, "2048 to 8192 bits"),
            (8193, 65537, "2048 to 8192 bits"),
        ):
            with self.assertRaises(jose.UnusableKey) as refused:
                jose.import_jwk(rsa_jwk(bits, e))
            self.assertIn(words, str(refused.exception))

    def test_ec_rules(self) -> None:
        for curve in (ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()):
            jose.import_jwk(jose.public_jwk(ec.generate_private_key(curve)))
        with self.assertRaises(jose.UnusableKey):
            jose.import_jwk(jose.public_jwk(ec.generate_private_key(ec.SECP256K1())))
        off_curve = jose.public_jwk(_KEYS["ES256"])
        off_curve["y"] = off_curve["x"]
        with self.assertRaises(jose.UnusableKey):
            jose.import_jwk(off_curve)

    def test_certificate_key_rules(self) -> None:
        from tests.certs import issue

        issued = issue(None, "client")
        self.assertEqual(jose.import_jwk(issued.jwk).certificate, issued.der)
        odd = issue(None, "odd", curve=ec.SECP256K1())
        with self.assertRaises(jose.UnusableKey) as refused:
            jose.import_jwk({**issued.jwk, "x5c": [odd.x5c]})
        self.assertIn("has a certificate whose key", str(refused.exception))
        for x5c in ("x", [], ["not base64!"], [base64.b64encode(b"not a certificate").decode()]):
            self.assertRaises(jose.UnusableKey, jose.import_jwk, {**issued.jwk, "x5c": x5c})

    def test_certificate_rsa_key_rules(self) -> None:
        """
        A certificate's RSA key is held to the rules of an RSA JWK: a
        public exponent other than 65537 is refused in C{x5c} as in C{e}.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID

        from tests.certs import issue

        issued = issue(None, "client")
        key = rsa.generate_private_key(public_exponent=3, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa-e3")])
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        x5c = base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()
        with self.assertRaises(jose.UnusableKey) as refused:
            jose.import_jwk({**issued.jwk, "x5c": [x5c]})
        self.assertIn("has a certificate whose key", str(refused.exception))
        self.assertIn("65537", str(refused.exception))

    def test_jwk_set(self) -> None:
        good = dict(jose.public_jwk(_KEYS["ES256"]), kid="a")
        keys = jose.import_jwk_set({"keys": [good, {"kty": "oct", "k": "eA"}, "x", good]}, 4)
        self.assertEqual([k.kid for k in keys], ["a", "a"])
        for document in ({"keys": [good] * 5}, {"keys": {}}, [], None):
            self.assertRaises(ValueError, jose.import_jwk_set, document, 4)

    def test_numeric_date(self) -> None:
        self.assertEqual(jose.numeric_date({"exp": 5}, "exp"), 5.0)
        self.assertIsNone(jose.numeric_date({}, "exp"))
        for value in (True, "5", float("inf"), float("nan"), [5]):
            with self.assertRaises(jose.JOSEError):
                jose.numeric_date({"iat": value}, "iat")


def _uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
