"""
JWT client authentication end to end: a real C{twist ccserver}, and client
libraries nobody here wrote (Authlib's C{PrivateKeyJWT} and
C{ClientSecretJWT}); a client whose keys sit behind a C{jwks_uri} served by
a local HTTP server, rotated while the server runs.
"""

from __future__ import annotations

import json
import shutil
import ssl
import tempfile
import threading
import time
import unittest
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc7523 import ClientSecretJWT, PrivateKeyJWT
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

from ccserver.keys import public_jwk
from tests.process import CCServerProcess

pytestmark = pytest.mark.process

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: The clients' jwks_uri are served on the loopback here.  (Authlib signs
#: assertions that expire in an hour, and offers no setting for it: the
#: default max_assertion_lifetime accepts them for their recent iat.)
CONFIG = """
[client_auth]
jwks_uri_refetch_seconds = 0
jwks_uri_private_networks = ["127.0.0.0/8"]
"""


def pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class JWKSServer:
    """
    A client's jwks_uri: serves whatever C{jwks} holds now, at any path, on
    C{address} (127.0.0.1), over https when given an SSL C{context}; records
    the paths asked for in C{hits}.  A path under C{/redirect/} answers 302
    to the same path under C{/target/}.
    """

    def __init__(self, address: str = "127.0.0.1", context: ssl.SSLContext | None = None) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.hits: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits.append(self.path)
                if self.path.startswith("/redirect/"):
                    self.send_response(302)
                    self.send_header("Location", self.path.replace("/redirect/", "/target/", 1))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps(outer.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/jwk-set+json")
                self.send_header("Cache-Control", "max-age=3600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((address, 0), Handler)
        if context is not None:
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def seen(self, path: str) -> int:
        return self.hits.count(path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class JWTClientAuthProcessTests(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ccserver-jwt-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        (self.tmp / "ccserver.toml").write_text(CONFIG)
        self.server = CCServerProcess(
            self.tmp, "--config", str(self.tmp / "ccserver.toml"), store="sqlite:///ccserver.db"
        )
        self.addCleanup(self.server.kill)
        self.server.start()
        self.token_endpoint = self.server.url + "/token"

    def verify(self, token: str) -> dict[str, Any]:
        jwks = requests.get(self.server.url + "/jwks.json", timeout=10).json()
        return jwt.decode(
            token, jwt.PyJWK(jwks["keys"][0]), algorithms=["RS256"], audience=self.server.url
        )

    def test_authlib_private_key_jwt(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        client = self.server.register(
            token_endpoint_auth_method="private_key_jwt",
            jwks={"keys": [public_jwk(key)]},
            scope="read",
        )
        self.assertNotIn("client_secret", client)
        session = OAuth2Session(
            client["client_id"],
            # Authlib reads a PEM as an RSA key; an EC key goes in as a JWK object
            ECKey.import_key(pem(key)),
            token_endpoint_auth_method="private_key_jwt",
        )
        session.register_client_auth_method(PrivateKeyJWT(self.token_endpoint, alg="ES256"))
        for _ in range(2):  # a new assertion (jti) each time
            token = session.fetch_token(self.token_endpoint, grant_type="client_credentials")
            self.assertEqual(self.verify(token["access_token"])["client_id"], client["client_id"])

    def test_authlib_client_secret_jwt(self) -> None:
        client = self.server.register(token_endpoint_auth_method="client_secret_jwt", scope="read")
        for alg in ("HS256", "HS512"):
            session = OAuth2Session(
                client["client_id"],
                client["client_secret"],
                token_endpoint_auth_method="client_secret_jwt",
            )
            session.register_client_auth_method(ClientSecretJWT(self.token_endpoint, alg=alg))
            token = session.fetch_token(self.token_endpoint, grant_type="client_credentials")
            self.assertEqual(self.verify(token["access_token"])["scope"], "read")

    def test_jwks_uri_rotated_while_running(self) -> None:
        jwks_server = JWKSServer()
        self.addCleanup(jwks_server.close)
        old = ec.generate_private_key(ec.SECP256R1())
        jwks_server.jwks = {"keys": [dict(public_jwk(old), kid="old")]}
        client = self.server.register(
            token_endpoint_auth_method="private_key_jwt", jwks_uri=jwks_server.url, scope="read"
        )

        def token(key: ec.EllipticCurvePrivateKey, kid: str) -> requests.Response:
            now = int(time.time())
            assertion = jwt.encode(
                {
                    "iss": client["client_id"],
                    "sub": client["client_id"],
                    "aud": self.token_endpoint,
                    "iat": now,
                    "exp": now + 60,
                    "jti": str(uuid.uuid4()),
                },
                key,
                algorithm="ES256",
                headers={"kid": kid},
            )
            return requests.post(
                self.token_endpoint,
                data={
                    "grant_type": "client_credentials",
                    "client_assertion_type": JWT_BEARER,
                    "client_assertion": assertion,
                },
                timeout=10,
            )

        self.assertEqual(token(old, "old").status_code, 200)
        new = ec.generate_private_key(ec.SECP256R1())
        jwks_server.jwks = {"keys": [dict(public_jwk(new), kid="new")]}
        # cached for an hour, but the unknown kid fetches it again at once
        response = token(new, "new")
        self.assertEqual(response.status_code, 200, response.text)
        # the old key is gone from the set: refused
        self.assertEqual(token(old, "old").status_code, 401)

    def test_default_config_accepts_authlib_hour_long_assertions(self) -> None:
        """
        Authlib makes every assertion with exp an hour after iat (and no
        setting changes it): a server with no configuration accepts it,
        for its recent iat, and refuses it replayed.
        """
        folder = self.tmp / "default"
        server = CCServerProcess(folder, store="memory://")
        self.addCleanup(server.kill)
        server.start()
        key = ec.generate_private_key(ec.SECP256R1())
        client = server.register(
            token_endpoint_auth_method="private_key_jwt", jwks={"keys": [public_jwk(key)]}
        )
        endpoint = server.url + "/token"
        auth = PrivateKeyJWT(endpoint, alg="ES256")
        session = OAuth2Session(
            client["client_id"],
            # Authlib reads a PEM as an RSA key; an EC key goes in as a JWK object
            ECKey.import_key(pem(key)),
            token_endpoint_auth_method="private_key_jwt",
        )
        session.register_client_auth_method(auth)
        for _ in range(2):
            token = session.fetch_token(endpoint, grant_type="client_credentials")
            self.assertIn("access_token", token)
        assertion = auth.sign(ClientAuth(client["client_id"], ECKey.import_key(pem(key))), endpoint)
        claims = jwt.decode(assertion, options={"verify_signature": False})
        self.assertEqual(claims["exp"] - claims["iat"], 3600)
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion,
        }
        self.assertEqual(requests.post(endpoint, data=form, timeout=10).status_code, 200)
        replayed = requests.post(endpoint, data=form, timeout=10)
        self.assertEqual(replayed.status_code, 401)
        self.assertIn("used already", replayed.json()["error_description"])
