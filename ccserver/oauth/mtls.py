"""
Mutual-TLS client authentication and certificate-bound access tokens
(RFC 8705): which registrations a presented certificate matches, and the
C{cnf} member that binds a token to it.  No HTTP here: L{ccserver.tls}
finds the certificate and hands over a L{PresentedCertificate}.

  - C{tls_client_auth} (§2.1): the certificate chains to a CA the server
    trusts (C{[tls] client_ca}, or the trusted proxy's), and its subject DN
    or one subject alternative name equals the one value the client
    registered (§2.1.2).
  - C{self_signed_tls_client_auth} (§2.2): the certificate is one the client
    registered in its C{jwks}, or serves from its C{jwks_uri} (the first of
    a key's C{x5c}).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import string
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from attrs import frozen
from cryptography import x509

from ccserver import jose
from ccserver.errors import invalid_client_metadata

TLS_CLIENT_AUTH = "tls_client_auth"
SELF_SIGNED_TLS_CLIENT_AUTH = "self_signed_tls_client_auth"
#: The token endpoint authentication methods of RFC 8705 §2.
MTLS_METHODS = (TLS_CLIENT_AUTH, SELF_SIGNED_TLS_CLIENT_AUTH)
#: How a request that names only its C{client_id} presents itself: with the
#: certificate of its connection, if any (RFC 8705 §2).
CERTIFICATE = "tls_certificate"
#: The client metadata of RFC 8705 §3.4.
BOUND_TOKENS = "tls_client_certificate_bound_access_tokens"
#: RFC 8705 §2.1.2: the registration names exactly one of these.
SUBJECT_FIELDS = (
    "tls_client_auth_subject_dn",
    "tls_client_auth_san_dns",
    "tls_client_auth_san_uri",
    "tls_client_auth_san_ip",
    "tls_client_auth_san_email",
)
#: The RFC 7800 / RFC 8705 §3.1 confirmation member.
X5T_S256 = "x5t#S256"


class CertificateRefused(Exception):
    """
    The certificate does not authenticate the client; the message says why
    (it names no secret: certificates are public).
    """


@frozen
class PresentedCertificate:
    """
    The client certificate a request came with.

    @ivar der: the certificate, DER-encoded.
    @ivar chain_verified: whether its chain was found good: by us against
        C{[tls] client_ca} (on a TLS listener), or by the trusted proxy that
        forwarded it.
    @ivar presented_at: when (seconds since the epoch), to judge its validity.
    """

    der: bytes
    chain_verified: bool
    presented_at: float

    @property
    def thumbprint(self) -> str:
        """
        RFC 8705 §3.1: the base64url SHA-256 of the DER certificate, no padding.
        """
        return base64.urlsafe_b64encode(hashlib.sha256(self.der).digest()).rstrip(b"=").decode()


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _text(value: str) -> str:
    """
    A name's value as it is compared: ASCII letters in lower case, runs of
    U+0020 spaces taken for one and none at either end; every other
    character as it is.

    RFC 4517 §4.2.15 (distinguishedNameMatch) compares the values of most
    attributes with caseIgnoreMatch, after RFC 4518's string preparation:
    Unicode case folding and NFKC.  Those make look-alikes equal: U+017F
    LATIN SMALL LETTER LONG S is "s", U+212A KELVIN SIGN is "k", fullwidth
    "ｏｒｄｅｒｓ" is "orders", a no-break space a space.  A CA that checks
    names for uniqueness by their characters may issue CN=orderſ to one
    party and CN=orders to another, and under RFC 4518 the first would
    authenticate as the client registered with the second.  So this
    server folds only what every CA, directory and operator already takes
    for the same name: the case of ASCII letters, and insignificant spaces
    (RFC 4518 §2.6.1, for U+0020 alone).  A name with other characters
    must be registered exactly as the certificate has it (RFC 4514 escapes,
    such as C{\\C3\\AB} for "ë", are read as the characters they spell).
    """
    return " ".join(part for part in value.split(" ") if part).translate(_ASCII_LOWER)


def _name_key(name: x509.Name) -> tuple[tuple[tuple[str, str], ...], ...]:
    return tuple(
        tuple(
            sorted(
                (attribute.oid.dotted_string, _text(str(attribute.value))) for attribute in rdn
            )
        )
        for rdn in name.rdns
    )


_TYPE_NAME = re.compile(r"(^|(?<!\\)[,+])\s*([A-Za-z][A-Za-z0-9-]*)\s*=")


def parse_dn(dn: str) -> x509.Name:
    """
    An RFC 4514 string (C{CN=client,O=Example,C=GB}, most specific first).

    @raise ValueError: when it is not one.
    """
    # RFC 4514 §3: attribute type names are case-insensitive (cryptography
    # knows them in upper case); spaces around separators are forgiven.
    dn = _TYPE_NAME.sub(lambda m: m.group(1) + m.group(2).upper() + "=", dn.strip())
    name = x509.Name.from_rfc4514_string(dn)
    if not name.rdns:
        raise ValueError("empty")
    return name


def same_dn(registered: str, subject: x509.Name) -> bool:
    """
    RFC 8705 §2.1.2: the registered DN (an RFC 4514 string) and the
    certificate's subject, compared as RFC 4517 §4.2.15 says but for the
    values' rule: the same attribute types in the same order, the order
    within a multi-valued RDN ignored, and values equal but for the case
    of ASCII letters and insignificant spaces (L{_text}: no Unicode case
    folding or normalisation, which would make look-alikes the same name).
    """
    try:
        return _name_key(parse_dn(registered)) == _name_key(subject)
    except ValueError:
        return False


def _sans(certificate: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def _san_matches(field: str, registered: str, certificate: x509.Certificate) -> bool:
    sans = _sans(certificate)
    if sans is None:
        return False
    # DNS names and email addresses as subject DN values are (L{_text}):
    # ASCII case folded, no other character.
    if field == "tls_client_auth_san_dns":
        return _text(registered).rstrip(".") in {
            _text(v).rstrip(".") for v in sans.get_values_for_type(x509.DNSName)
        }
    if field == "tls_client_auth_san_uri":
        return registered in sans.get_values_for_type(x509.UniformResourceIdentifier)
    if field == "tls_client_auth_san_email":
        return _text(registered) in {
            _text(v) for v in sans.get_values_for_type(x509.RFC822Name)
        }
    try:
        wanted = ipaddress.ip_address(registered)
    except ValueError:
        return False
    return wanted in sans.get_values_for_type(x509.IPAddress)


def registered_certificates(metadata: Mapping[str, Any]) -> list[bytes]:
    """
    RFC 8705 §2.2.2: the DER certificates a C{self_signed_tls_client_auth}
    client registered in its C{jwks}: the first C{x5c} entry of each key
    (RFC 7517 §4.7: the one holding the key); unreadable ones, and those
    whose key L{jose.check_public_key} refuses, left out.  One behind a
    C{jwks_uri} is fetched: L{ccserver.keysets.KeySet.certificates}.
    """
    jwks = metadata.get("jwks")
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    found = []
    for key in keys if isinstance(keys, list) else ():
        try:
            certificate = jose.x5c_certificate(key) if isinstance(key, dict) else None
        except jose.UnusableKey:
            continue
        if certificate is not None:
            found.append(certificate)
    return found


def _within_validity(certificate: x509.Certificate, at: float) -> bool:
    now = datetime.fromtimestamp(at, UTC)
    return certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc


def check_certificate(
    metadata: Mapping[str, Any],
    presented: PresentedCertificate | None,
    served: Sequence[bytes] | None = None,
) -> None:
    """
    Whether C{presented} authenticates a client registered with C{metadata}
    (whose C{token_endpoint_auth_method} is one of L{MTLS_METHODS}).

    @param served: for C{self_signed_tls_client_auth}, the certificates
        fetched from the client's C{jwks_uri}; None to take those of its
        C{jwks}.
    @raise CertificateRefused: saying why not.
    """
    method = metadata.get("token_endpoint_auth_method")
    if presented is None:
        raise CertificateRefused(f"{method} needs a TLS client certificate; none was presented")
    try:
        certificate = x509.load_der_x509_certificate(presented.der)
    except ValueError:
        raise CertificateRefused("the client certificate cannot be read") from None
    if not _within_validity(certificate, presented.presented_at):
        raise CertificateRefused("the client certificate has expired or is not yet valid")
    if method == SELF_SIGNED_TLS_CLIENT_AUTH:
        if served is None:
            served = registered_certificates(metadata)
        if presented.der not in served:
            raise CertificateRefused("the client certificate is not one this client registered")
        return
    if method != TLS_CLIENT_AUTH:
        raise CertificateRefused(f"this client must authenticate with {method}")
    if not presented.chain_verified:
        raise CertificateRefused("the client certificate does not chain to a trusted CA")
    field = next((f for f in SUBJECT_FIELDS if f in metadata), None)
    if field is None:
        raise CertificateRefused("this client registered no certificate subject")
    registered = str(metadata[field])
    if field == "tls_client_auth_subject_dn":
        matched = same_dn(registered, certificate.subject)
    else:
        matched = _san_matches(field, registered, certificate)
    if not matched:
        raise CertificateRefused(f"the client certificate does not match {field}")


def bound_thumbprint(
    metadata: Mapping[str, Any], presented: PresentedCertificate | None
) -> str | None:
    """
    RFC 8705 §3: the C{x5t#S256} a token issued to this client on this
    request is bound to: the certificate's, when the client uses an mTLS
    method or registered C{tls_client_certificate_bound_access_tokens}, and
    a certificate came; else None (a bearer token).
    """
    if presented is None:
        return None
    if metadata.get(BOUND_TOKENS) is True or metadata.get("token_endpoint_auth_method") in (
        MTLS_METHODS
    ):
        return presented.thumbprint
    return None


_B64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def _x5c_certificates(jwks: Mapping[str, Any]) -> int:
    """
    How many keys of C{jwks} carry a readable certificate in C{x5c}.

    @raise OAuthError: C{invalid_client_metadata} for a malformed C{x5c}.
    """
    count = 0
    for key in jwks.get("keys", []):
        if not isinstance(key, dict) or "x5c" not in key:
            continue
        chain = key["x5c"]
        if not isinstance(chain, list) or not chain:
            raise invalid_client_metadata("jwks: x5c must be a non-empty array of certificates")
        for entry in chain:
            if not isinstance(entry, str) or not _B64.fullmatch(entry):
                raise invalid_client_metadata("jwks: x5c entries must be base64 DER certificates")
            try:
                x509.load_der_x509_certificate(base64.b64decode(entry))
            except ValueError:
                raise invalid_client_metadata(
                    "jwks: an x5c entry is not a DER certificate"
                ) from None
        try:
            jose.x5c_certificate(key)
        except jose.UnusableKey as e:
            raise invalid_client_metadata(f"jwks: a key {e}") from None
        count += 1
    return count


def validate_mtls_metadata(body: Mapping[str, Any], method: str) -> dict[str, Any]:
    """
    The RFC 8705 metadata of a registration, checked: what to add to the
    validated metadata.  C{jwks} is checked as a JWK set already.

    @raise OAuthError: C{invalid_client_metadata}, naming the field.
    """
    found: dict[str, Any] = {}
    if BOUND_TOKENS in body:
        if not isinstance(body[BOUND_TOKENS], bool):
            raise invalid_client_metadata(f"{BOUND_TOKENS}: must be true or false")
        found[BOUND_TOKENS] = body[BOUND_TOKENS]
    given = [f for f in SUBJECT_FIELDS if f in body]
    for field in given:
        value = body[field]
        if not isinstance(value, str) or not value:
            raise invalid_client_metadata(f"{field}: must be a non-empty string")
        found[field] = value
    if method == TLS_CLIENT_AUTH:
        if len(given) != 1:
            raise invalid_client_metadata(
                "tls_client_auth_subject_dn: tls_client_auth needs exactly one of "
                + ", ".join(SUBJECT_FIELDS)
            )
        _check_subject(given[0], found[given[0]])
    elif given:
        raise invalid_client_metadata(
            f"{given[0]}: only for token_endpoint_auth_method tls_client_auth"
        )
    if method == SELF_SIGNED_TLS_CLIENT_AUTH:
        jwks = body.get("jwks")
        # RFC 8705 §2.2.2: in jwks, or behind jwks_uri (checked like any
        # jwks_uri by registration; what it serves is read at authentication)
        if "jwks_uri" in body and jwks is None:
            return found
        if not isinstance(jwks, dict) or not _x5c_certificates(jwks):
            raise invalid_client_metadata(
                "jwks: self_signed_tls_client_auth needs a key with the client's "
                "certificate in x5c, or a jwks_uri that serves one"
            )
    elif isinstance(body.get("jwks"), dict):
        _x5c_certificates(body["jwks"])
    return found


def _check_subject(field: str, value: str) -> None:
    if field == "tls_client_auth_subject_dn":
        try:
            parse_dn(value)
        except ValueError:
            raise invalid_client_metadata(f"{field}: {value!r} is not an RFC 4514 DN") from None
    elif field == "tls_client_auth_san_ip":
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise invalid_client_metadata(f"{field}: {value!r} is not an IP address") from None
    elif field == "tls_client_auth_san_email" and "@" not in value:
        raise invalid_client_metadata(f"{field}: {value!r} is not an email address")
    elif field == "tls_client_auth_san_uri" and ":" not in value:
        raise invalid_client_metadata(f"{field}: {value!r} is not an absolute URI")
