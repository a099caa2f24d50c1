"""
Compact JWS (RFC 7515) as ccserver signs and verifies it: the one place that
reads or writes a signed token.

Signing is on the hot path of every JWT access token, so a L{JWSSigner}
serialises its protected header once and only encodes the claims and signs
per token.  Verification takes its policy from the caller, never from the
token (RFC 8725 §2.1, §3.1): the algorithms allowed, the key (or a function
choosing it from the header, e.g. by C{kid} from a client's JWK set, or the
C{jwk} header of a DPoP proof), the expected C{typ} (RFC 8725 §3.11), and
the claims required.  C{alg: none} is never accepted, whatever the caller
allows.  The signature math is PyJWT's algorithm objects, for both ways.

JWKs (RFC 7517) are read and written here too, once for every caller (a
client's registered or fetched key set, a DPoP proof's C{jwk} header, the
server's own published keys), and so is the rule for which public keys are
accepted at all (L{check_public_key}): whatever a key is, the work of one
signature check with it stays small.

A leaf module: PyJWT, cryptography, attrs and the standard library only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Callable, Collection, Mapping
from typing import Any

from attrs import field, frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt.algorithms import (
    Algorithm,
    ECAlgorithm,
    OKPAlgorithm,
    RSAAlgorithm,
    get_default_algorithms,
)

PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)
#: What signs: a private key, or for C{HS*} the shared secret.
SigningKeyMaterial = PrivateKey | bytes
#: What verifies: a public key, or for C{HS*} the shared secret.
VerificationKey = PublicKey | bytes
#: Chooses the verification key from the (not yet verified) protected
#: header, or None when there is none for it.  It is called only once the
#: header's C{alg} is known to be allowed.
KeyResolver = Callable[[Mapping[str, Any]], "VerificationKey | None"]

_PYJWT = get_default_algorithms()
#: The algorithms this module signs and verifies with.  Never C{none}.
ALGORITHMS: Mapping[str, Algorithm] = {
    name: _PYJWT[name]
    for name in (
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
        "ES256", "ES384", "ES512", "EdDSA",
        "HS256", "HS384", "HS512",
    )
}
#: RFC 7518 §3.4: each ECDSA algorithm's one curve.
_ALG_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
#: RFC 7518 §3.3, §3.5: the RSA algorithms (PKCS #1 v1.5 and PSS).
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
#: RFC 7518 §3.2: an HMAC key at least as long as the hash output.
_HMAC_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
#: RFC 7518 §3.3, §3.5: RSA keys of 2048 bits or more.
_RSA_MIN_BITS = 2048
#: The largest RSA modulus accepted from outside: checking a signature
#: costs about the square of the modulus length, so this bounds it at 16
#: times that of a 2048-bit key.
_RSA_MAX_BITS = 8192
#: The one RSA public exponent accepted from outside.  Checking a signature
#: costs about the exponent's length in bits: a huge exponent makes one
#: check cost as much as hundreds (bench/README.md, "Measurements behind
#: design choices").  Every common key generator (OpenSSL,
#: cryptography, Go, Java, .NET, cloud KMSs and HSMs) uses 65537 (RFC 7518
#: §6.3.1.2 encodes it C{AQAB}), and small ones such as 3 have a history of
#: attacks on careless padding; so exactly this one, rather than a range.
RSA_PUBLIC_EXPONENT = 65537
#: The named curves of the EC keys accepted from outside: those of JOSE
#: (RFC 7518 §3.4) and TLS 1.3 (RFC 8446 §4.2.3).  Which curve signs
#: with which C{alg} is L{key_fits}'s to say (ES256: P-256 only).
EC_CURVES: tuple[type[ec.EllipticCurve], ...] = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
#: RFC 7517 §4, RFC 7518 §6.2.2, §6.3.2, §6.4: the members of a JWK that
#: only a private or a symmetric key has.
PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_JWK_READERS: Mapping[str, Callable[[Any], Any]] = {
    "RSA": RSAAlgorithm.from_jwk,
    "EC": ECAlgorithm.from_jwk,
    "OKP": OKPAlgorithm.from_jwk,
}
_PRIVATE_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)
_PUBLIC_KEY_TYPES = (
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
)
_BASE64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class JOSEError(Exception):
    """
    A JWS that does not verify, or whose claims do not hold.  The message
    is safe to show its sender: it names what failed, never a key, the
    token, or a value taken from it.
    """


class BadSignature(JOSEError):
    """
    The signature does not verify with the key given: a caller with several
    candidate keys and no C{kid} (RFC 7515 §4.1.4 makes it optional) tries
    the next one.
    """


def b64encode(data: bytes) -> bytes:
    """
    base64url without padding (RFC 7515 §2).
    """
    return base64.urlsafe_b64encode(data).rstrip(b"=")


#: RFC 7638 §3.2: the members of a public JWK its thumbprint covers.
_THUMBPRINT_MEMBERS = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """
    The RFC 7638 JWK SHA-256 thumbprint, base64url: a signing key's C{kid},
    and the C{jkt} a DPoP-bound token is confirmed with (RFC 9449 §6.1).
    Only the required members count, in lexicographic order, without
    whitespace (§3.2, §3.3), so that the same public key has one
    thumbprint whatever else its JWK carries.

    @raise KeyError: C{kty} is not one of RSA, EC, OKP, or a member is missing.
    """
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64encode(hashlib.sha256(canonical).digest()).decode("ascii")


class UnusableKey(ValueError):
    """
    A JWK or a certificate's key that is refused: malformed, private, of a
    kind or size this server does not accept.  The message completes
    "the key ..." and names no member's value.
    """


@frozen
class JWK:
    """
    A public key read from a JWK, with the members that say what it is for.

    @ivar kid: its C{kid} (RFC 7517 §4.5), or None.
    @ivar use: its C{use} (§4.2), or None.
    @ivar certificate: the DER of the first certificate of its C{x5c}
        (§4.7: the one holding the key), or None.
    """

    key: PublicKey = field(repr=False)
    kid: str | None = None
    use: str | None = None
    certificate: bytes | None = field(default=None, repr=False)


def check_public_key(key: object) -> PublicKey:
    """
    C{key}, if it is a public key this server accepts from outside: RSA
    with the public exponent L{RSA_PUBLIC_EXPONENT} and a modulus of 2048
    to 8192 bits; EC on one of the L{EC_CURVES} (the point is checked to
    be on its curve when the key is loaded, by C{cryptography}); Ed25519
    or Ed448.

    @raise UnusableKey: it is not.
    """
    if isinstance(key, rsa.RSAPublicKey):
        if key.public_numbers().e != RSA_PUBLIC_EXPONENT:
            raise UnusableKey(
                f"is an RSA key whose public exponent is not {RSA_PUBLIC_EXPONENT}"
            )
        if not _RSA_MIN_BITS <= key.key_size <= _RSA_MAX_BITS:
            raise UnusableKey(
                f"is an RSA key of {key.key_size} bits; "
                f"RSA keys need {_RSA_MIN_BITS} to {_RSA_MAX_BITS} bits"
            )
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, EC_CURVES):
            raise UnusableKey("is an EC key on a curve other than P-256, P-384 or P-521")
        return key
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return key
    raise UnusableKey("is not an RSA, EC, Ed25519 or Ed448 public key")


def import_jwk(jwk: object) -> JWK:
    """
    Read one JWK (RFC 7517) holding a public key that L{check_public_key}
    accepts, and its first C{x5c} certificate, if any (L{x5c_certificate}).

    @raise UnusableKey: it is not one; a private or symmetric key is
        refused before anything is read from it.
    """
    if not isinstance(jwk, Mapping):
        raise UnusableKey("is not a JSON object")
    kty = jwk.get("kty")
    if kty == "oct" or "k" in jwk:
        raise UnusableKey("is a symmetric (oct) key; only public keys are accepted")
    private = [name for name in PRIVATE_JWK_MEMBERS if name in jwk]
    if private:
        raise UnusableKey(
            f"holds private members ({', '.join(private)}): publish the public key only, "
            "and make a new key pair, as this one is no longer private"
        )
    if not isinstance(kty, str) or kty not in _JWK_READERS:
        raise UnusableKey("has no kty RSA, EC or OKP")
    for name in ("kid", "use"):
        if name in jwk and not isinstance(jwk[name], str):
            raise UnusableKey(f"has a {name} that is not a string")
    try:
        key = _JWK_READERS[kty](dict(jwk))
    except Exception:
        raise UnusableKey(f"is not a valid {kty} public key") from None
    if not isinstance(key, _PUBLIC_KEY_TYPES):
        raise UnusableKey("is not a public key")
    return JWK(check_public_key(key), jwk.get("kid"), jwk.get("use"), x5c_certificate(jwk))


def import_jwk_set(document: object, max_keys: int) -> tuple[JWK, ...]:
    """
    The keys of a JWK set (RFC 7517 §5) that L{import_jwk} accepts; the
    others are left out (§5: "ignore JWKs ... that it does not understand").

    @param max_keys: more keys than this, usable or not, and the whole set
        is refused, before any is read.
    @raise ValueError: it is not a JWK set, or holds too many keys.
    """
    keys = document.get("keys") if isinstance(document, Mapping) else None
    if not isinstance(keys, list):
        raise ValueError("not a JWK set (an object with a list of keys)")
    if len(keys) > max_keys:
        raise ValueError(f"holds more than {max_keys} keys")
    found = []
    for jwk in keys:
        try:
            found.append(import_jwk(jwk))
        except UnusableKey:
            continue
    return tuple(found)


def x5c_certificate(jwk: Mapping[str, Any]) -> bytes | None:
    """
    The DER of the first certificate of a JWK's C{x5c} (RFC 7517 §4.7: the
    one holding the key; standard base64, not base64url), whose key
    L{check_public_key} accepts; None when the JWK has no C{x5c}.

    @raise UnusableKey: the C{x5c} is malformed, or its certificate's key
        is refused.
    """
    chain = jwk.get("x5c")
    if chain is None:
        return None
    if not isinstance(chain, list) or not chain or not isinstance(chain[0], str):
        raise UnusableKey("has an x5c that is not a list of certificates")
    try:
        der = base64.b64decode(chain[0], validate=True)
        certificate = x509.load_der_x509_certificate(der)
    except ValueError:
        raise UnusableKey("has an x5c entry that is not a base64 DER certificate") from None
    check_certificate_key(certificate)
    return der


def check_certificate_key(certificate: x509.Certificate) -> None:
    """
    A certificate's public key is one L{check_public_key} accepts.

    @raise UnusableKey: it is not (the message starts "has a certificate
        whose key ...").
    """
    try:
        key = certificate.public_key()
        check_public_key(key)
    except UnusableKey as e:
        raise UnusableKey(f"has a certificate whose key {e}") from None
    except ValueError:
        raise UnusableKey("has a certificate whose key cannot be read") from None


def public_jwk(key: PrivateKey | PublicKey) -> dict[str, Any]:
    """
    The public half of a key as a JWK (RFC 7517), without C{kid}.

    PyJWT adds C{key_ops: ["verify"]} to RSA keys; it is left out, because
    the JWK set says C{use: "sig"} and RFC 7517 §4.3 says the two SHOULD
    NOT be used together.
    """
    public = key.public_key() if isinstance(key, _PRIVATE_KEY_TYPES) else key
    writer: Any
    if isinstance(public, rsa.RSAPublicKey):
        writer = RSAAlgorithm
    elif isinstance(public, ec.EllipticCurvePublicKey):
        writer = ECAlgorithm
    else:
        writer = OKPAlgorithm
    jwk: dict[str, Any] = writer.to_jwk(public, as_dict=True)
    jwk.pop("key_ops", None)
    return jwk


def numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    """
    The claim C{name} as a NumericDate (RFC 7519 §2: a JSON number of
    seconds, finite; never a boolean), or None when it is absent.

    @raise JOSEError: it is present and not one.
    """
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise JOSEError(f"the {name} claim is not a NumericDate")
    return float(value)


def _b64decode(segment: bytes, name: str) -> bytes:
    """
    Decode one segment: the base64url alphabet, in its canonical encoding.
    Trailing C{=} padding, which RFC 7515 §2 omits, is tolerated as PyJWT
    2.x tolerates it (some issuers pad), so that no token verifies
    differently than it did through PyJWT.
    """
    stripped = segment.rstrip(b"=")
    padding = len(segment) - len(stripped)
    if (
        padding > 2
        or (padding and len(segment) % 4)
        or len(stripped) % 4 == 1
        or not _BASE64URL.issuperset(stripped)
    ):
        raise JOSEError(f"malformed JWS: the {name} is not base64url")
    data = base64.urlsafe_b64decode(stripped + b"=" * (-len(stripped) % 4))
    if b64encode(data) != stripped:
        raise JOSEError(f"malformed JWS: the {name} is not base64url")
    return data


def _json_object(data: bytes, name: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise JOSEError(f"malformed JWS: the {name} is not JSON") from None
    if not isinstance(document, dict):
        raise JOSEError(f"malformed JWS: the {name} is not a JSON object")
    return document


def key_fits(alg: str, key: SigningKeyMaterial | VerificationKey) -> bool:
    """
    Whether C{key} is of the type and size that C{alg} needs, so that a key
    is only ever used with its own kind of algorithm (RFC 8725 §3.1): an RSA
    public key is never an HMAC secret, a P-384 key never signs ES256.
    """
    if alg in _RSA_ALGORITHMS:
        return (
            isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)) and key.key_size >= _RSA_MIN_BITS
        )
    if alg in _ALG_CURVES:
        return isinstance(
            key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)
        ) and isinstance(key.curve, _ALG_CURVES[alg])
    if alg == "EdDSA":
        return isinstance(
            key,
            (
                ed25519.Ed25519PrivateKey,
                ed25519.Ed25519PublicKey,
                ed448.Ed448PrivateKey,
                ed448.Ed448PublicKey,
            ),
        )
    if alg in _HMAC_KEY_BYTES:
        return isinstance(key, bytes) and len(key) >= _HMAC_KEY_BYTES[alg]
    return False


def _ecdsa_p256(data: bytes, key: Any) -> bytes:
    """
    An ES256 signature as RFC 7518 §3.4 has it: R and S, 32 bytes each,
    big-endian.  The same as PyJWT's C{ECAlgorithm.sign}, whose DER to
    R || S conversion in Python (C{der_to_raw_signature}) costs a good share
    of the signature (bench/README.md, "Measurements behind design
    choices"): here the DER is read by C{cryptography}.
    """
    r, s = decode_dss_signature(key.sign(data, _ECDSA_SHA256))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def _signing_function(alg: str) -> Callable[[bytes, Any], bytes]:
    """
    How C{alg} signs: PyJWT's algorithm, but for ES256 (L{_ecdsa_p256}),
    the hot path's signature.
    """
    if alg == "ES256":
        return _ecdsa_p256
    return ALGORITHMS[alg].sign


@frozen
class JWSSigner:
    """
    Signs claims as compact JWSs with one key and one constant protected
    header, serialised once here rather than once per token.
    """

    alg: str
    header_segment: bytes
    key: SigningKeyMaterial = field(repr=False)
    _sign: Callable[[bytes, Any], bytes] = field(repr=False)

    @classmethod
    def create(
        cls, alg: str, key: SigningKeyMaterial, header: Mapping[str, Any] | None = None
    ) -> JWSSigner:
        """
        @param header: protected header members beside C{alg} (C{kid},
            C{typ}, ...), in the order they are to be serialised.
        @raise ValueError: C{alg} is not one of L{ALGORITHMS}, or C{key}
            does not fit it.
        """
        if alg not in ALGORITHMS:
            raise ValueError(f"no JWS algorithm {alg!r}")
        if not key_fits(alg, key):
            raise ValueError(f"the key does not fit {alg}")
        protected = {"alg": alg, **(header or {})}
        segment = b64encode(json.dumps(protected, separators=(",", ":")).encode())
        return cls(alg, segment, key, _signing_function(alg))

    def sign(self, claims: Mapping[str, Any]) -> str:
        payload = b64encode(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = self.header_segment + b"." + payload
        signature = self._sign(signing_input, self.key)
        return (signing_input + b"." + b64encode(signature)).decode("ascii")


@frozen
class Verified:
    """
    A JWS whose signature and claims were found good.
    """

    header: Mapping[str, Any]
    claims: dict[str, Any]


def _typ_matches(typ: object, expected: str) -> bool:
    """
    RFC 7515 §4.1.9: C{typ} is a media type, compared case-insensitively,
    whose C{application/} prefix may be left out.
    """
    if not isinstance(typ, str):
        return False
    media_type = typ.lower()
    if media_type.startswith("application/"):
        media_type = media_type[len("application/") :]
    return media_type == expected.lower()


def _check_claims(
    claims: Mapping[str, Any],
    issuer: str | None,
    audience: Collection[str] | None,
    required: Collection[str],
    now: float | None,
    leeway: float,
) -> None:
    for name in required:
        if claims.get(name) is None:
            raise JOSEError(f"the {name} claim is missing")
    if issuer is not None and claims.get("iss") != issuer:
        raise JOSEError("the iss claim is not the expected issuer")
    if audience is not None:
        # RFC 7519 §4.1.3: a string or an array of strings, one of which
        # must name this recipient.
        aud = claims.get("aud")
        named = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not any(isinstance(name, str) and name in audience for name in named):
            raise JOSEError("the aud claim does not name this recipient")
    if now is not None:
        check_times(claims, now, leeway)


def check_times(claims: Mapping[str, Any], now: float, leeway: float = 0) -> None:
    """
    The time claims of L{verify}'s check: C{exp} (RFC 7519 §4.1.4) after
    C{now}, C{nbf} (§4.1.5) not after it, each by C{leeway} seconds; for a
    claims set already verified, whose time is checked again later.

    @raise JOSEError: the JWT has expired, or is not valid yet.
    """
    exp = numeric_date(claims, "exp")
    if exp is not None and exp <= now - leeway:
        raise JOSEError("the JWT has expired")
    nbf = numeric_date(claims, "nbf")
    if nbf is not None and nbf > now + leeway:
        raise JOSEError("the JWT is not valid yet")


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """
    The protected header and the claims of a compact JWS, B{not verified}:
    only to find whose keys verify it (a client assertion names its client
    in C{sub}, RFC 7523 §3).  Nothing read here may be trusted until
    L{verify} has checked it.

    @raise JOSEError: it is not three base64url segments of JSON objects.
    """
    try:
        header_segment, payload_segment, _ = token.encode("ascii").split(b".")
    except (UnicodeEncodeError, ValueError):
        raise JOSEError("malformed JWS: not three base64url segments") from None
    header = _json_object(_b64decode(header_segment, "header"), "header")
    claims = _json_object(_b64decode(payload_segment, "payload"), "payload")
    return header, claims


def verify(
    token: str,
    key: VerificationKey | KeyResolver,
    *,
    algorithms: Collection[str],
    typ: str | None = None,
    issuer: str | None = None,
    audience: Collection[str] | None = None,
    required: Collection[str] = (),
    now: float | None = None,
    leeway: float = 0,
) -> Verified:
    """
    Verify a compact JWS whose payload is a JWT claims set.

    @param key: the key, or a L{KeyResolver} choosing it from the header.
    @param algorithms: the C{alg}s accepted, chosen by the caller (RFC 8725
        §3.1), all of L{ALGORITHMS}.
    @param typ: when given, the header's C{typ} must be this media type.
    @param issuer: when given, the C{iss} claim must equal it.
    @param audience: when given, the C{aud} claim must name one of these.
    @param required: claims that must be present (and not null).
    @param now: when given, C{exp} (RFC 7519 §4.1.4) must be after it and
        C{nbf} (§4.1.5) not after it, each by C{leeway} seconds; C{iat} is
        informational and not checked.
    @raise JOSEError: the token does not verify; its message is safe to
        return to the sender.
    @raise ValueError: C{algorithms} names one this module does not know
        (a programming error, never the token's).
    """
    if not algorithms or not all(alg in ALGORITHMS for alg in algorithms):
        raise ValueError(f"algorithms must be some of {sorted(ALGORITHMS)}")
    try:
        header_segment, payload_segment, signature_segment = token.encode("ascii").split(b".")
    except (UnicodeEncodeError, ValueError):
        raise JOSEError("malformed JWS: not three base64url segments") from None
    header = _json_object(_b64decode(header_segment, "header"), "header")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        raise JOSEError("the JWS alg is not allowed")
    if "crit" in header:
        # RFC 7515 §4.1.11: extensions the recipient does not understand
        # make the JWS invalid, and this module understands none.
        raise JOSEError("the JWS names critical extensions")
    if "kid" in header and not isinstance(header["kid"], str):
        raise JOSEError("the JWS kid is not a string")
    if typ is not None and not _typ_matches(header.get("typ"), typ):
        raise JOSEError("the JWS typ is not the expected one")
    verification_key = key(header) if callable(key) else key
    if verification_key is None:
        raise JOSEError("no key verifies this JWS")
    if not key_fits(alg, verification_key):
        raise JOSEError("the key does not fit the JWS alg")
    signature = _b64decode(signature_segment, "signature")
    signing_input = header_segment + b"." + payload_segment
    if not ALGORITHMS[alg].verify(signing_input, verification_key, signature):
        raise BadSignature("the JWS signature does not verify")
    claims = _json_object(_b64decode(payload_segment, "payload"), "payload")
    _check_claims(claims, issuer, audience, required, now, leeway)
    return Verified(header, claims)
