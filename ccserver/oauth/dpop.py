"""
DPoP (RFC 9449): checking the proof a token request carries in its C{DPoP}
header, and the server nonces of §8.

No HTTP objects here: web.py hands over every C{DPoP} header value it got
(so that more than one can be refused), the request's method and the token
endpoint's URL.  What comes back is the proof's key thumbprint (RFC 7638),
which the token is then bound to (C{cnf.jkt}, §6.1).

The checks, RFC 9449 §4.3 ("these checks may be performed in any order"),
cheapest first and the one store write last:

  1. exactly one C{DPoP} header;
  2. a single well-formed JWT, no larger than L{MAX_PROOF};
  4./5. C{typ} C{dpop+jwt}, an asymmetric C{alg} of the configured ones;
  7. a C{jwk} header that is a public key (no private member, not C{oct});
  6. the signature, with that key, through L{ccserver.jose.verify};
  3. the claims C{jti}, C{htm}, C{htu}, C{iat};
  8. C{htm} is the request's method;
  9. C{htu} is the endpoint's URL, without query and fragment, after
     syntax- and scheme-based normalisation (RFC 3986 §6.2.2, §6.2.3);
  10. the nonce, when the server asks for one (§8);
  11. C{iat} within the window: at most C{max_age} old, at most C{leeway}
      ahead;
  and (§11.1) the C{jti} seen once only while the proof could be accepted,
  across every instance sharing the store (L{ITokenStore.use_once}).

Every failure is 400 C{invalid_dpop_proof} (§5), but a missing or stale
nonce, which is 400 C{use_dpop_nonce} with the nonce to use (§8).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from attrs import frozen

from ccserver import jose
from ccserver.errors import invalid_dpop_proof, use_dpop_nonce
from ccserver.interfaces import ITokenStore
from ccserver.text import identifier_problem

#: What the nonce key is derived for, from the key-encryption key.
DPOP_NONCE_KEY_PURPOSE = b"ccserver dpop nonce key v1"
#: RFC 9449 §4.2: the proof's C{typ}.
DPOP_TYP = "dpop+jwt"
#: The largest proof accepted, in characters: an RSA-4096 C{jwk} and its
#: signature fit in a fifth of it.
MAX_PROOF = 8192
#: RFC 9449 §11.1: "reject DPoP proof JWTs with unnecessarily large jti
#: values"; 96 random bits take 16 characters, a UUID 36.
MAX_JTI = 128
_KEY_TYPES = {"ES256": "EC", "EdDSA": "OKP", "RS256": "RSA", "PS256": "RSA"}
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: RFC 9449 §8.1, RFC 6749 Appendix A: nonce = 1*NQCHAR.
_NQCHAR = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


@frozen
class Proof:
    """
    A DPoP proof found good: the thumbprint of its key.
    """

    jkt: str


def normalise_uri(uri: str) -> str | None:
    """
    C{uri} without query and fragment, its scheme and host in lower case,
    the scheme's default port left out and an empty path made C{/} (RFC
    3986 §6.2.2.1, §6.2.3); None when it is not an absolute http(s) URI.
    """
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    return f"{scheme}://{host}{parts.path or '/'}"


@frozen
class NonceIssuer:
    """
    Stateless server nonces (RFC 9449 §8): an HMAC of the current time slot
    under a key every instance shares, so that a nonce made by one instance
    is good at all of them with no store round trip.  A nonce is accepted
    during its own slot and the next, so it lives between C{lifetime} and
    twice that; a new one is offered with every answer.

    @ivar key: the HMAC key, derived from the key-encryption key (see
        L{ccserver.keys.KeyEncryptor.derive}).
    """

    key: bytes
    lifetime: int
    now: Callable[[], float]

    def _nonce(self, slot: int) -> str:
        mac = hmac.new(self.key, b"ccserver dpop nonce %d" % slot, hashlib.sha256)
        return jose.b64encode(mac.digest()).decode("ascii")

    def _slot(self) -> int:
        return int(self.now() // self.lifetime)

    def current(self) -> str:
        return self._nonce(self._slot())

    def is_valid(self, nonce: str) -> bool:
        slot = self._slot()
        # both compared, so that the time taken says nothing of which matched
        matches = [hmac.compare_digest(nonce, self._nonce(s)) for s in (slot, slot - 1)]
        return any(matches)


def _public_key(jwk: object, alg: str) -> jose.VerificationKey:
    """
    RFC 9449 §4.3 7.: the C{jwk} header as a public key of C{alg}'s type,
    one L{jose.import_jwk} accepts (so that no proof costs more than a
    signature check with an ordinary key).
    """
    if not isinstance(jwk, dict):
        raise invalid_dpop_proof("the DPoP proof has no jwk header holding a JWK")
    if any(name in jwk for name in jose.PRIVATE_JWK_MEMBERS):
        raise invalid_dpop_proof("the DPoP proof's jwk header must hold a public key only")
    if jwk.get("kty") != _KEY_TYPES[alg]:
        raise invalid_dpop_proof(f"the DPoP proof's jwk is not a {_KEY_TYPES[alg]} key for {alg}")
    try:
        return jose.import_jwk(jwk).key
    except jose.UnusableKey as e:
        raise invalid_dpop_proof(f"the DPoP proof's jwk {e}") from None


@frozen
class DPoPVerifier:
    """
    Checks the DPoP proofs of token requests.

    @ivar tokens: where the C{jti}s seen are kept, shared by every instance.
    @ivar algorithms: the C{alg}s accepted (C{[dpop] signing_algs}).
    @ivar max_age: seconds a proof is accepted after its C{iat}.
    @ivar leeway: seconds a proof's C{iat} may be ahead of this server's
        clock (RFC 9449 §11.1: clocks differ).
    @ivar nonces: the nonce issuer when C{[dpop] require_nonce}, else None.
    """

    tokens: ITokenStore
    algorithms: tuple[str, ...]
    max_age: int
    leeway: int
    now: Callable[[], float]
    nonces: NonceIssuer | None = None

    def fresh_nonce(self) -> str | None:
        """
        The nonce to send with an answer (RFC 9449 §8.2), or None when the
        server asks for none.
        """
        return None if self.nonces is None else self.nonces.current()

    async def check(self, headers: Sequence[str], method: str, url: str) -> Proof | None:
        """
        Check the request's proof.

        @param headers: every C{DPoP} header value of the request.
        @param method: its HTTP method.
        @param url: the URL it was sent to: the endpoint's public URL.
        @return: the proof, or None when the request has none.
        @raise OAuthError: C{invalid_dpop_proof}, or C{use_dpop_nonce}.
        """
        if not headers:
            return None
        if len(headers) > 1:
            raise invalid_dpop_proof("more than one DPoP header")
        (proof,) = headers
        if not proof or len(proof) > MAX_PROOF:
            raise invalid_dpop_proof(
                f"the DPoP header must hold one JWT of at most {MAX_PROOF} characters"
            )
        found: dict[str, str] = {}

        def key_from_header(header: Mapping[str, Any]) -> jose.VerificationKey:
            key = _public_key(header.get("jwk"), header["alg"])
            found["jkt"] = jose.thumbprint(header["jwk"])
            return key

        try:
            verified = jose.verify(
                proof,
                key_from_header,
                algorithms=self.algorithms,
                typ=DPOP_TYP,
                required=("jti", "htm", "htu", "iat"),
            )
        except jose.JOSEError as e:
            raise invalid_dpop_proof(f"DPoP proof: {e}") from None
        claims = verified.claims
        jti, htm, htu = claims["jti"], claims["htm"], claims["htu"]
        problem = identifier_problem(jti, MAX_JTI)
        if problem is not None:
            raise invalid_dpop_proof(f"the DPoP proof's jti {problem}")
        if htm != method:
            raise invalid_dpop_proof(f"the DPoP proof's htm is not {method}")
        if not isinstance(htu, str) or normalise_uri(htu) != normalise_uri(url):
            raise invalid_dpop_proof(f"the DPoP proof's htu is not {url}")
        self._check_nonce(claims)
        try:
            iat = jose.numeric_date(claims, "iat")
        except jose.JOSEError as e:
            raise invalid_dpop_proof(f"DPoP proof: {e}") from None
        assert iat is not None  # a required claim
        now = self.now()
        if iat > now + self.leeway:
            raise invalid_dpop_proof("the DPoP proof's iat is in the future")
        if iat < now - self.max_age:
            raise invalid_dpop_proof(f"the DPoP proof is more than {self.max_age} seconds old")
        jkt = found["jkt"]
        # Kept until the proof could no longer be accepted anyway.
        if not await self.tokens.use_once(f"dpop:{jkt}:{jti}", math.ceil(iat) + self.max_age):
            raise invalid_dpop_proof("the DPoP proof was used before (jti seen)")
        return Proof(jkt)

    def _check_nonce(self, claims: Mapping[str, Any]) -> None:
        if self.nonces is None:
            return
        nonce = claims.get("nonce")
        if nonce is None:
            raise use_dpop_nonce(
                "the authorization server requires a nonce in the DPoP proof",
                self.nonces.current(),
            )
        if not isinstance(nonce, str) or not _NQCHAR.fullmatch(nonce):
            raise invalid_dpop_proof("the DPoP proof's nonce is malformed")
        if not self.nonces.is_valid(nonce):
            raise use_dpop_nonce(
                "the DPoP proof's nonce is unknown or stale; use the one given",
                self.nonces.current(),
            )
