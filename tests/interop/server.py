"""
The server the interoperability tests drive client libraries against: a
real C{twist ccserver} as a new user runs it (the default SQLite store,
JWT access tokens, client_secret_jwt available), whose issuer is its TLS
listener, so that every library runs at its defaults: openid-client,
oauth4webapi and oauthlib refuse plain http unless told otherwise, and
mutual TLS needs TLS anyway.  The server's certificate is issued by a CA
of the tests; the libraries trust it the way their platform does
(C{REQUESTS_CA_BUNDLE} for requests, C{NODE_EXTRA_CA_CERTS} for node),
not through any option of theirs.

Clients are registered with the master token, one per test, with the
credentials each method needs (L{Credentials}).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from attrs import field, frozen
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ccserver.keys import public_jwk
from tests.certs import Issued, issue, make_ca
from tests.process import CCServerProcess, free_port

CLIENT_CA = make_ca("Interop Clients CA")
SERVER_CA = make_ca("Interop Server CA")
SERVER = issue(SERVER_CA, "localhost", dns=("localhost",), ips=("127.0.0.1",), server=True)
#: The subject of the CA-issued client certificate (RFC 8705 §2.1.2, RFC 4514).
SUBJECT_DN = "CN=interop-client,O=Example,C=GB"

#: The methods whose client gets a secret.
SECRET_METHODS = ("client_secret_basic", "client_secret_post", "client_secret_jwt")
#: The methods whose client presents a TLS client certificate.
CERTIFICATE_METHODS = ("tls_client_auth", "self_signed_tls_client_auth")
#: Every method the discovery document advertises, in its order.
ALL_METHODS = (*SECRET_METHODS, "private_key_jwt", *CERTIFICATE_METHODS)


@frozen
class Credentials:
    """
    A registered client and what it proves itself with.

    @ivar registration: the registration answer.
    @ivar private_key: the key of a private_key_jwt client.
    @ivar certificate: the TLS client certificate of a certificate client.
    @ivar cert_files: that certificate and its key as PEM files.
    """

    registration: dict[str, Any]
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None
    certificate: Issued | None = None
    cert_files: tuple[str, str] | None = None
    kid: str = field(default="interop-key")

    @property
    def client_id(self) -> str:
        return str(self.registration["client_id"])

    @property
    def client_secret(self) -> str:
        return str(self.registration["client_secret"])

    @property
    def private_key_pem(self) -> str:
        assert self.private_key is not None
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    @property
    def private_jwk(self) -> dict[str, Any]:
        """
        The private key as a JWK (RFC 7517), with its C{kid} and C{alg}.
        """
        from jwt.algorithms import ECAlgorithm, RSAAlgorithm

        assert self.private_key is not None
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            jwk = json.loads(RSAAlgorithm.to_jwk(self.private_key))
            alg = "RS256"
        else:
            jwk = json.loads(ECAlgorithm.to_jwk(self.private_key))
            alg = "ES256"
        return {**jwk, "kid": self.kid, "alg": alg}

    def node_input(self) -> dict[str, Any]:
        """
        What the node script (node/client.mjs) needs of these credentials.
        """
        method = self.registration["token_endpoint_auth_method"]
        document: dict[str, Any] = {"method": method, "client_id": self.client_id}
        if "client_secret" in self.registration:
            document["client_secret"] = self.client_secret
        if self.private_key is not None:
            document["private_jwk"] = self.private_jwk
        if self.certificate is not None:
            document["cert_pem"] = self.certificate.pem.decode()
            document["key_pem"] = self.certificate.key_pem.decode()
        return document


class InteropServer:
    """
    A C{twist ccserver} with a TLS listener as its issuer: the CA-issued
    and self-signed client certificates of RFC 8705 are accepted there.
    """

    def __init__(self, extra_config: str = "") -> None:
        """
        @param extra_config: TOML added to the configuration (the server's,
            never the libraries').
        """
        self.folder = Path(tempfile.mkdtemp(prefix="ccserver-interop-"))
        self.tls_port = free_port()
        self.issuer = f"https://127.0.0.1:{self.tls_port}"
        cert, key = SERVER.write(self.folder, "server")
        client_ca = self.folder / "clients-ca.pem"
        client_ca.write_bytes(CLIENT_CA.pem)
        #: The CA file the clients trust the server with.
        self.ca_file = self.folder / "server-ca.pem"
        self.ca_file.write_bytes(SERVER_CA.pem)
        config = self.folder / "ccserver.toml"
        config.write_text(
            f"""
[tls]
listen = ["tcp:{self.tls_port}:interface=127.0.0.1"]
certificate = "{cert}"
private_key = "{key}"
client_ca = "{client_ca}"
base_url = "{self.issuer}"
{extra_config}
"""
        )
        self.process = CCServerProcess(self.folder, "--config", str(config), issuer=self.issuer)

    def start(self) -> InteropServer:
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.kill()

    def register(
        self, method: str | None, *, key_type: str = "EC", **metadata: Any
    ) -> Credentials:
        """
        Register a client of C{method} (None: the registration names no
        method) with scope C{read}, and make the key or certificate it
        proves itself with.

        @param key_type: C{"EC"} (P-256) or C{"RSA"} (2048 bits), the key
            of a private_key_jwt client.
        """
        body: dict[str, Any] = {"client_name": "interop", "scope": "read", **metadata}
        if method is not None:
            body["token_endpoint_auth_method"] = method
        private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None
        certificate = None
        kid = "interop-key"
        if method == "private_key_jwt":
            private_key = (
                rsa.generate_private_key(65537, 2048)
                if key_type == "RSA"
                else ec.generate_private_key(ec.SECP256R1())
            )
            body["jwks"] = {"keys": [{**public_jwk(private_key), "kid": kid}]}
        elif method == "tls_client_auth":
            certificate = issue(CLIENT_CA, "interop-client")
            body["tls_client_auth_subject_dn"] = SUBJECT_DN
        elif method == "self_signed_tls_client_auth":
            certificate = issue(None, "interop-self-signed")
            body["jwks"] = {"keys": [certificate.jwk]}
        registration = self.process.register(**body)
        cert_files = None
        if certificate is not None:
            folder = Path(tempfile.mkdtemp(dir=self.folder, prefix="client-"))
            cert_files = certificate.write(folder, "client")
        return Credentials(registration, private_key, certificate, cert_files, kid)
