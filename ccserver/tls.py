"""
TLS at the edge (RFC 8705): the server's TLS context for C{[tls] listen},
and where a request's client certificate comes from: the TLS connection
itself, or the header a trusted TLS-terminating proxy puts it in.

This module reads request objects, as L{ccserver.web} does, and hands
L{ccserver.oauth.mtls} only a L{PresentedCertificate}: DER bytes, and
whether their chain was found good (by us against C{[tls] client_ca}, or by
the trusted proxy that forwarded them).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLContextFactory, ISSLTransport
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.iweb import IRequest
from zope.interface import implementer

from ccserver.errors import ConfigError
from ccserver.oauth.mtls import PresentedCertificate
from ccserver.proxies import Network, peer_is_trusted

#: The C{Cert} of Envoy's C{x-forwarded-client-cert} (URL-encoded PEM, in
#: quotes): with C{forward_client_cert_details: SANITIZE_SET} the header
#: has one element, the client's.
_XFCC_CERT = re.compile(r'(?:^|[;,])\s*Cert="([^"]*)"', re.IGNORECASE)


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"[tls] {key}: cannot read {path!r}: {e.strerror}") from None


def check_private_key_mode(path: str) -> None:
    """
    Refuse a private key file that its group or others may read: a key
    anyone on the machine can copy is no key.

    @raise ConfigError: naming the file and the fix.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise ConfigError(f"[tls] private_key: cannot read {path!r}: {e.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"[tls] private_key: {path!r} is readable by its group or others "
            f"(mode {stat.S_IMODE(mode):04o}); run chmod 600 on it"
        )


def load_pem_certificates(key: str, path: str) -> list[x509.Certificate]:
    """
    The certificates of a PEM file, at least one.

    @raise ConfigError: naming the key when the file holds none.
    """
    try:
        certificates = x509.load_pem_x509_certificates(_read(key, path))
    except ValueError:
        certificates = []
    if not certificates:
        raise ConfigError(f"[tls] {key}: {path!r} holds no PEM certificate")
    return certificates


def _accept_any(
    connection: SSL.Connection, certificate: Any, error: int, depth: int, ok: int
) -> bool:
    """
    Accept every client certificate at the TLS layer, self-signed or
    expired: the client's registration judges it (RFC 8705 §2.2 needs
    self-signed certificates through; §2.1 chains are checked by
    L{ClientCertificateReader} against C{client_ca}).
    """
    return True


@implementer(IOpenSSLContextFactory)
class ClientCertificateRequesting:
    """
    A server TLS context that asks every client for a certificate but does
    not require one (C{VERIFY_PEER} without C{VERIFY_FAIL_IF_NO_PEER_CERT}):
    clients without one still authenticate with secrets.  TLS 1.2 at least,
    with Twisted's cipher defaults.
    """

    def __init__(self, options: CertificateOptions) -> None:
        self._context = options.getContext()
        self._context.set_verify(SSL.VERIFY_PEER, _accept_any)

    def getContext(self) -> SSL.Context:
        return self._context


def server_context(certificate: str, private_key: str) -> ClientCertificateRequesting:
    """
    The TLS context of C{[tls] listen} from the server's PEM chain (leaf
    first) and private key.

    @raise ConfigError: for an unreadable, malformed or exposed file, or a
        key that is not the certificate's.
    """
    check_private_key_mode(private_key)
    chain = load_pem_certificates("certificate", certificate)
    from OpenSSL import crypto

    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, _read("private_key", private_key))
    except crypto.Error:
        raise ConfigError(f"[tls] private_key: {private_key!r} is not a PEM private key") from None
    try:
        options = CertificateOptions(
            privateKey=key,
            certificate=crypto.X509.from_cryptography(chain[0]),
            extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]],
            raiseMinimumTo=TLSVersion.TLSv1_2,
        )
        return ClientCertificateRequesting(options)
    except SSL.Error:
        raise ConfigError(
            f"[tls] private_key: {private_key!r} is not the key of {certificate!r}"
        ) from None


def tls_factory(context: IOpenSSLContextFactory, factory: Any) -> TLSMemoryBIOFactory:
    """
    C{factory} (the site) served over TLS with C{context}.
    """
    return TLSMemoryBIOFactory(context, False, factory)


class ChainVerifier:
    """
    Checks that a client certificate chains to C{[tls] client_ca} and is
    within its validity, as a TLS-terminating proxy would (RFC 8705 §2.1.1:
    the PKI method).  cryptography's verifier, with the Web PKI rules for
    the CAs but any extensions in the client's certificate: private CAs
    issue client certificates with a subject DN only, or no extended key
    usage.
    """

    #: Seconds a chain's verdict is remembered: verifying costs more than
    #: the rest of a token request (bench/README.md, "Measurements behind
    #: design choices"), and a client presents the same
    #: certificate on every request.  The leaf's own validity is checked on
    #: every request regardless (L{ccserver.oauth.mtls.check_certificate}).
    CACHE_SECONDS = 60.0
    CACHE_SIZE = 10_000

    def __init__(self, roots: Sequence[x509.Certificate], now: Callable[[], float]) -> None:
        self._store = Store(list(roots))
        self._now = now
        self._verdicts: dict[bytes, tuple[bool, float]] = {}

    def verify(self, leaf: x509.Certificate, intermediates: Sequence[x509.Certificate]) -> bool:
        now = self._now()
        key = b"".join(c.fingerprint(hashes.SHA256()) for c in (leaf, *intermediates))
        kept = self._verdicts.get(key)
        if kept is not None and kept[1] > now:
            return kept[0]
        verdict = self._verify(leaf, intermediates, now)
        if len(self._verdicts) >= self.CACHE_SIZE:
            self._verdicts.clear()
        self._verdicts[key] = (verdict, now + self.CACHE_SECONDS)
        return verdict

    def _verify(
        self, leaf: x509.Certificate, intermediates: Sequence[x509.Certificate], now: float
    ) -> bool:
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(datetime.fromtimestamp(now, UTC))
            .extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=ExtensionPolicy.permit_all(),
            )
            .build_client_verifier()
        )
        try:
            verifier.verify(leaf, list(intermediates))
        except VerificationError:
            return False
        return True


@frozen
class ClientCertificateReader:
    """
    Where a request's client certificate comes from.

    From a peer in C{trusted_proxies}, and only when C{proxy_header} is
    configured: that header (URL-encoded PEM, nginx's
    C{$ssl_client_escaped_cert}), which is then the only source.  From any
    other peer: the certificate of its own TLS connection, if any; the
    header is ignored, so a forged one authenticates nobody.

    @ivar now: the clock the certificate's validity is judged by.
    @ivar chains: checks chains against C{client_ca}; None when none is
        configured (no direct chain is then good; a proxy's is taken).
    """

    now: Callable[[], float]
    chains: ChainVerifier | None
    proxy_header: bytes | None
    trusted_proxies: tuple[Network, ...]

    def _trusted(self, request: IRequest) -> bool:
        host = getattr(request.getClientAddress(), "host", None)
        return peer_is_trusted(host, self.trusted_proxies)

    def read(self, request: IRequest) -> PresentedCertificate | None:
        if self.proxy_header is not None and self._trusted(request):
            return self._from_header(request.getHeader(self.proxy_header))
        transport: Any = getattr(request, "transport", None)
        if not ISSLTransport.providedBy(transport) or not hasattr(transport, "getHandle"):
            return None
        peer: Any = transport.getPeerCertificate()
        if peer is None:
            return None
        leaf = peer.to_cryptography()
        chain_verified = False
        if self.chains is not None:
            # getHandle: the connection's OpenSSL.SSL.Connection, for the
            # intermediates the client sent after its certificate.
            sent = transport.getHandle().get_peer_cert_chain() or []
            intermediates = [c.to_cryptography() for c in sent]
            chain_verified = self.chains.verify(
                leaf, [c for c in intermediates if c != leaf]
            )
        return PresentedCertificate(leaf.public_bytes(Encoding.DER), chain_verified, self.now())

    def _from_header(self, value: bytes | str | None) -> PresentedCertificate | None:
        """
        With C{client_ca} configured, the chain is checked against it here
        too: a proxy that lets self-signed certificates through (nginx's
        C{ssl_verify_client optional_no_ca}, for
        C{self_signed_tls_client_auth}) has vouched for no chain.  Without
        it, the trusted proxy's validation is taken.  A header that holds no
        certificate is no certificate.
        """
        if not value:
            return None
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        envoy = _XFCC_CERT.search(text)
        if envoy is not None:
            text = envoy.group(1)
        try:
            certificate = x509.load_pem_x509_certificate(unquote(text).encode("latin-1"))
        except (ValueError, UnicodeEncodeError):
            return None
        chain_verified = self.chains is None or self.chains.verify(certificate, [])
        return PresentedCertificate(
            certificate.public_bytes(Encoding.DER), chain_verified, self.now()
        )
