"""
Certificates for the mutual-TLS tests, made with C{cryptography} (none are
checked in): a CA, server and client certificates it issues, self-signed
client certificates, and the files a TLS listener reads.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ccserver.keys import public_jwk

DAY = datetime.timedelta(days=1)


@frozen
class Issued:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def x5c(self) -> str:
        return base64.b64encode(self.der).decode()

    @property
    def jwk(self) -> dict[str, Any]:
        """
        The certificate's public key as a JWK with the certificate in
        C{x5c}, as a self_signed_tls_client_auth client registers it.
        """
        return {**public_jwk(self.key), "x5c": [self.x5c]}

    @property
    def escaped(self) -> str:
        """
        As nginx's C{$ssl_client_escaped_cert} forwards it.
        """
        return quote(self.pem.decode(), safe="")

    def write(self, folder: Path, name: str) -> tuple[str, str]:
        """
        The certificate and key as PEM files (the key mode 0600).
        """
        cert, key = folder / f"{name}.pem", folder / f"{name}.key"
        cert.write_bytes(self.pem)
        key.write_bytes(self.key_pem)
        os.chmod(key, 0o600)
        return str(cert), str(key)


def _name(common_name: str, organization: str = "Example") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "GB"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_ca(common_name: str = "Test Clients CA") -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - DAY)
        .not_valid_after(_now() + 30 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(certificate, key)


def issue(
    ca: Issued | None,
    common_name: str,
    *,
    dns: tuple[str, ...] = (),
    uris: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    emails: tuple[str, ...] = (),
    server: bool = False,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    curve: ec.EllipticCurve | None = None,
) -> Issued:
    """
    A certificate issued by C{ca}, or self-signed when C{ca} is None, for
    a key on C{curve} (P-256 by default).
    """
    key = ec.generate_private_key(curve or ec.SECP256R1())
    subject = _name(common_name)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject if ca else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or _now() - DAY)
        .not_valid_after(not_after or _now() + 10 * DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    names: list[x509.GeneralName] = [
        *(x509.DNSName(d) for d in dns),
        *(x509.UniformResourceIdentifier(u) for u in uris),
        *(x509.IPAddress(ipaddress.ip_address(i)) for i in ips),
        *(x509.RFC822Name(e) for e in emails),
    ]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if ca is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    return Issued(builder.sign(ca.key if ca else key, hashes.SHA256()), key)


def expired(ca: Issued | None, common_name: str) -> Issued:
    return issue(ca, common_name, not_before=_now() - 10 * DAY, not_after=_now() - DAY)


def not_yet_valid(ca: Issued | None, common_name: str) -> Issued:
    return issue(ca, common_name, not_before=_now() + DAY, not_after=_now() + 10 * DAY)
