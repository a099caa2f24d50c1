"""
A client's jwks_uri never reaches inward, end to end: real C{twist
ccserver} processes, and a key-set server on this machine (https, with a
certificate from a test CA the servers are told to trust through
C{SSL_CERT_FILE}, and plain http) that records every request it gets.

Without C{[client_auth] jwks_uri_private_networks}, a URL naming a loopback,
private or link-local address (or C{localhost}) is refused at registration,
and a host name that resolves to one (this machine's own name, which
resolves to a loopback or private address of it) is accepted there but
never connected to: the key-set server sees nothing.  With the machine's
address in the list, the same URLs are fetched, over https (the
certificate checked against the host name) and plain http.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import ssl
import tempfile
import time
import unittest
import uuid
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from ccserver.jose import public_jwk
from tests.certs import issue, make_ca
from tests.process import CCServerProcess, wait_until
from tests.test_client_auth_jwt_process import JWKSServer

pytestmark = pytest.mark.process

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
KEY = ec.generate_private_key(ec.SECP256R1())


def own_address() -> tuple[str, str]:
    """
    This machine's name and the IPv4 address it resolves to, which is not
    a public one (a loopback address, or a private one of a container).
    """
    name = socket.gethostname()
    address = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    if ipaddress.ip_address(address).is_global:
        raise AssertionError(
            f"this test needs the machine's name {name!r} to resolve to a non-public "
            f"address; it resolves to {address}"
        )
    return name, str(address)


class JWKSURIProcessTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = Path(tempfile.mkdtemp(prefix="ccserver-ssrf-"))
        cls.name, cls.address = own_address()
        ca = make_ca("Test Key Sets CA")
        (cls.tmp / "ca.pem").write_bytes(ca.pem)
        certificate, key = issue(
            ca, cls.name, dns=(cls.name,), ips=(cls.address,), server=True
        ).write(cls.tmp, "keys")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, key)
        cls.https = JWKSServer(cls.address, context)
        cls.http = JWKSServer("127.0.0.1")
        for server in (cls.https, cls.http):
            server.jwks = {"keys": [dict(public_jwk(KEY), kid="k1")]}
        trust = {"SSL_CERT_FILE": str(cls.tmp / "ca.pem")}
        cls.strict = cls._server(cls.tmp / "strict", "", trust)
        cls.allowing = cls._server(
            cls.tmp / "allowing",
            f'jwks_uri_private_networks = ["{cls.address}/32", "127.0.0.0/8"]\n',
            trust,
        )

    @classmethod
    def _server(cls, folder: Path, extra: str, env: dict[str, str]) -> CCServerProcess:
        folder.mkdir()
        config = folder / "ccserver.toml"
        config.write_text("[client_auth]\njwks_uri_timeout = 1\n" + extra)
        server = CCServerProcess(folder, "--config", str(config), store="memory://", env=env)
        try:
            server.start()
        except BaseException:
            cls.tearDownClass()
            raise
        return server

    @classmethod
    def tearDownClass(cls) -> None:
        for name in ("strict", "allowing"):
            server = getattr(cls, name, None)
            if server is not None:
                server.kill()
        for name in ("https", "http"):
            keys = getattr(cls, name, None)
            if keys is not None:
                keys.close()
        shutil.rmtree(cls.tmp, True)

    def path(self) -> str:
        return f"/jwks/{uuid.uuid4()}.json"

    def register(self, server: CCServerProcess, jwks_uri: str) -> requests.Response:
        return requests.post(
            server.url + "/client-reg",
            json={"token_endpoint_auth_method": "private_key_jwt", "jwks_uri": jwks_uri},
            headers={"Authorization": f"Bearer {server.master_token}"},
            timeout=10,
        )

    def token(self, server: CCServerProcess, client_id: str) -> requests.Response:
        now = int(time.time())
        assertion = jwt.encode(
            {
                "iss": client_id,
                "sub": client_id,
                "aud": server.url + "/token",
                "iat": now,
                "exp": now + 60,
                "jti": str(uuid.uuid4()),
            },
            KEY,
            algorithm="ES256",
            headers={"kid": "k1"},
        )
        return requests.post(
            server.url + "/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": JWT_BEARER,
                "client_assertion": assertion,
            },
            timeout=10,
        )

    def test_inward_addresses_refused_at_registration(self) -> None:
        path = self.path()
        https, http = self.https.port, self.http.port
        for uri in (
            f"https://{self.address}:{https}{path}",
            f"https://localhost:{https}{path}",
            f"http://127.0.0.1:{http}{path}",
            f"http://localhost:{http}{path}",
            f"https://[::ffff:{self.address}]:{https}{path}",
            f"https://127.1:{https}{path}",
            f"https://{self.name}:{https}/ {path}",
            "https://169.254.169.254/latest/meta-data/",
            "https://10.0.0.1:6379/",
        ):
            response = self.register(self.strict, uri)
            self.assertEqual(response.status_code, 400, (uri, response.text))
            self.assertEqual(response.json()["error"], "invalid_client_metadata")
        self.assertEqual((self.https.seen(path), self.http.seen(path)), (0, 0))

    def test_name_resolving_inward_never_connected_to(self) -> None:
        """
        This machine's name passes registration (it is a name), but the
        address it resolves to is refused where the connection would be
        made: the key-set server is never reached, however often asked,
        and the client is told only that the key set could not be fetched.
        """
        path = self.path()
        response = self.register(self.strict, f"https://{self.name}:{self.https.port}{path}")
        self.assertEqual(response.status_code, 201, response.text)
        client_id = response.json()["client_id"]
        for _ in range(3):
            refused = self.token(self.strict, client_id)
            self.assertEqual(refused.status_code, 401, refused.text)
            self.assertEqual(
                refused.json()["error_description"],
                "the client's jwks_uri could not be fetched; try again shortly",
            )
        self.assertEqual(self.https.seen(path), 0)
        wait_until(
            lambda: f"resolves to {self.address}" in self.strict.read_log(),
            what="the refusal logged",
        )

    def test_allowed_network_fetched(self) -> None:
        """
        With the machine's address allowed, the same URL is fetched over
        https (the certificate checked against the name in the URL), once
        for several tokens; and plain http to 127.0.0.1.
        """
        for uri in (
            f"https://{self.name}:{self.https.port}",
            f"http://127.0.0.1:{self.http.port}",
        ):
            path = self.path()
            response = self.register(self.allowing, uri + path)
            self.assertEqual(response.status_code, 201, response.text)
            for _ in range(2):
                token = self.token(self.allowing, response.json()["client_id"])
                self.assertEqual(token.status_code, 200, token.text)
            server = self.https if uri.startswith("https") else self.http
            self.assertEqual(server.seen(path), 1)

    def test_redirect_not_followed(self) -> None:
        path = self.path()
        response = self.register(
            self.allowing, f"http://127.0.0.1:{self.http.port}/redirect{path}"
        )
        client_id = response.json()["client_id"]
        refused = self.token(self.allowing, client_id)
        self.assertEqual(refused.status_code, 401, refused.text)
        self.assertEqual(self.http.seen(f"/redirect{path}"), 1)
        self.assertEqual(self.http.seen(f"/target{path}"), 0)
