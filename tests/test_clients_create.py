"""
C{ccserver clients create} makes every kind of client the server supports,
from options or from a JSON file, through the registration rules of
C{POST /client-reg}, and prints what that endpoint answers; C{ccserver
--version}.  Run as processes on a SQLite store, with a real C{twist
ccserver} on it that the created clients authenticate to.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import unittest
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from ccserver import __version__
from ccserver.keys import public_jwk
from ccserver.oauth.clientauth import JWT_BEARER
from tests.certs import issue
from tests.process import CCServerProcess
from tests.test_clients_command import ccserver

pytestmark = pytest.mark.process

DN = "CN=billing,O=Example,C=GB"


class ClientsCreateTests(unittest.TestCase):
    folder: Path
    server: CCServerProcess

    @classmethod
    def setUpClass(cls) -> None:
        cls.folder = Path(tempfile.mkdtemp(prefix="ccserver-create-"))
        cls.store = f"sqlite:///{cls.folder / 'ccserver.db'}"
        cls.config = cls.folder / "ccserver.toml"
        # the same configuration for the server and the command: issuer,
        # store, and a client cache that shows changes at once
        cls.server = CCServerProcess(cls.folder, "--master-token", "m" * 32, store=cls.store)
        cls.config.write_text(
            f'issuer = "{cls.server.url}"\n[store]\nurl = "{cls.store}"\n'
            "client_cache_seconds = 0\n"
        )
        cls.server.args += ["--config", str(cls.config)]
        cls.server.start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.kill()
        shutil.rmtree(cls.folder, True)

    def run_create(self, *args: str, stdin: str | None = None) -> Any:
        return ccserver(
            "--config", str(self.config), "clients", "create", *args, cwd=self.folder, stdin=stdin
        )

    def create(self, *args: str, stdin: str | None = None) -> dict[str, Any]:
        done = self.run_create(*args, stdin=stdin)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stderr, "")
        document: dict[str, Any] = json.loads(done.stdout)
        return document

    def write(self, name: str, document: Any) -> str:
        path = Path(tempfile.mkdtemp(dir=self.folder)) / name
        path.write_text(json.dumps(document))
        return str(path)

    def token(self, **form: str) -> requests.Response:
        return requests.post(
            self.server.url + "/token",
            data={"grant_type": "client_credentials", **form},
            timeout=10,
        )

    def test_version(self) -> None:
        done = ccserver("--version", cwd=self.folder)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout, f"ccserver {__version__}\n")

    def test_json_is_what_the_api_answers(self) -> None:
        """
        --json prints the registration answer of POST /client-reg: the
        same members, the same values but for the new client's own.
        """
        created = self.create("--name", "billing", "--scope", "read write", "--json")
        api = self.server.register(client_name="billing", scope="read write")
        self.assertEqual(sorted(created), sorted(api))
        own = {"client_id", "client_secret", "registration_access_token",
               "registration_client_uri", "client_id_issued_at"}
        self.assertEqual(
            {k: v for k, v in created.items() if k not in own},
            {k: v for k, v in api.items() if k not in own},
        )
        self.assertEqual(
            created["registration_client_uri"],
            f"{self.server.url}/client-reg/{created['client_id']}",
        )
        self.assertEqual(self.create("--name", "plain", "--scope", "read").keys(), created.keys())

    def test_private_key_jwt_with_a_jwks_file(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        jwks = self.write("jwks.json", {"keys": [{**public_jwk(key), "kid": "k1"}]})
        created = self.create(
            "--name", "signer", "--scope", "read", "--auth-method", "private_key_jwt",
            "--jwks", jwks, "--token-endpoint-auth-signing-alg", "ES256",
        )
        self.assertNotIn("client_secret", created)
        self.assertEqual(created["jwks"]["keys"][0]["kid"], "k1")
        self.assertEqual(created["token_endpoint_auth_signing_alg"], "ES256")
        client_id = created["client_id"]
        now = int(time.time())
        assertion = jwt.encode(
            {"iss": client_id, "sub": client_id, "aud": self.server.url + "/token",
             "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())},
            key,
            algorithm="ES256",
            headers={"kid": "k1"},
        )
        response = self.token(client_assertion_type=JWT_BEARER, client_assertion=assertion)
        self.assertEqual(response.status_code, 200, response.text)

    def test_certificate_clients(self) -> None:
        tls = self.create(
            "--name", "tls", "--scope", "read", "--auth-method", "tls_client_auth",
            "--tls-client-auth-subject-dn", DN, "--tls-client-certificate-bound-access-tokens",
        )
        self.assertEqual(tls["tls_client_auth_subject_dn"], DN)
        self.assertIs(tls["tls_client_certificate_bound_access_tokens"], True)
        self.assertNotIn("client_secret", tls)
        self_signed = issue(None, "self-signed")
        jwks = self.write("certs.json", {"keys": [self_signed.jwk]})
        created = self.create(
            "--name", "self", "--auth-method", "self_signed_tls_client_auth", "--jwks", jwks
        )
        self.assertEqual(created["jwks"], {"keys": [self_signed.jwk]})
        self.assertNotIn("client_secret", created)
        uri = self.create(
            "--name", "fetched", "--auth-method", "self_signed_tls_client_auth",
            "--jwks-uri", "https://app.example.com/certs.json",
        )
        self.assertEqual(uri["jwks_uri"], "https://app.example.com/certs.json")

    def test_client_secret_jwt_and_every_other_field(self) -> None:
        created = self.create(
            "--name", "all", "--scope", "read", "--auth-method", "client_secret_jwt",
            "--token-endpoint-auth-signing-alg", "HS512", "--dpop-bound-access-tokens",
            "--audience", "https://api.example.com", "--audience", "https://two.example.com",
            "--resource-server-uri", "https://api.example.com",
            "--access-token-lifetime", "600", "--grant-type", "client_credentials",
            "--application-type", "native", "--contact", "ops@example.com",
            "--client-uri", "https://app.example.com", "--logo-uri", "https://app.example.com/l.png",
            "--tos-uri", "https://app.example.com/tos", "--policy-uri", "https://app.example.com/p",
            "--software-id", "billing-app", "--software-version", "2.1",
        )
        expected = {
            "client_name": "all",
            "token_endpoint_auth_method": "client_secret_jwt",
            "token_endpoint_auth_signing_alg": "HS512",
            "dpop_bound_access_tokens": True,
            "audience": ["https://api.example.com", "https://two.example.com"],
            "resource_server_uris": ["https://api.example.com"],
            "access_token_lifetime": 600,
            "grant_types": ["client_credentials"],
            "application_type": "native",
            "contacts": ["ops@example.com"],
            "client_uri": "https://app.example.com",
            "logo_uri": "https://app.example.com/l.png",
            "tos_uri": "https://app.example.com/tos",
            "policy_uri": "https://app.example.com/p",
            "software_id": "billing-app",
            "software_version": "2.1",
        }
        self.assertEqual({k: created[k] for k in expected}, expected)
        self.assertGreaterEqual(len(created["client_secret"]), 64)

    def test_metadata_file_and_options_win(self) -> None:
        metadata = {
            "client_name": "from the file",
            "scope": "read",
            "token_endpoint_auth_method": "client_secret_post",
            "client_name#fr": "du fichier",
        }
        created = self.create("--metadata", self.write("m.json", metadata), "--scope", "write")
        self.assertEqual(created["client_name"], "from the file")
        self.assertEqual(created["client_name#fr"], "du fichier")
        self.assertEqual(created["scope"], "write")
        self.assertEqual(created["token_endpoint_auth_method"], "client_secret_post")
        from_stdin = self.create("--metadata", "-", stdin=json.dumps(metadata))
        self.assertEqual(from_stdin["client_name"], "from the file")

    def test_unnamed_method_takes_either_secret_method(self) -> None:
        """
        Without --auth-method the registration names none: the client may
        post its secret too; with it, it is held to it.
        """
        unnamed = self.create("--name", "a", "--scope", "read")
        named = self.create("--name", "b", "--scope", "read", "--auth-method", "client_secret_basic")
        for client, status in ((unnamed, 200), (named, 401)):
            self.assertEqual(client["token_endpoint_auth_method"], "client_secret_basic")
            response = self.token(client_id=client["client_id"], client_secret=client["client_secret"])
            self.assertEqual(response.status_code, status, response.text)

    def test_refused_as_the_api_refuses(self) -> None:
        """
        The registration rules of the endpoint, in one line each.
        """
        cases = [
            (("--auth-method", "private_key_jwt"), "invalid_client_metadata: jwks: private_key_jwt needs"),
            (("--auth-method", "tls_client_auth"), "invalid_client_metadata: tls_client_auth"),
            (("--auth-method", "nonsense"), "token_endpoint_auth_method: 'nonsense' is not supported"),
            (("--jwks", self.write("private.json", {"keys": [{"kty": "oct", "k": "AAAA"}]}),
              "--auth-method", "private_key_jwt"), "symmetric (oct) key"),
            (("--jwks", str(self.folder / "missing.json")), "--jwks: cannot read"),
            (("--metadata", self.write("list.json", [1])), "--metadata: must hold a JSON object"),
            (("--metadata", self.write("bad.json", 0) + "x"), "--metadata: cannot read"),
        ]
        for args, message in cases:
            done = self.run_create("--name", "x", *args)
            self.assertEqual(done.returncode, 1, (args, done.stdout))
            self.assertEqual(len(done.stderr.splitlines()), 1, done.stderr)
            self.assertIn(message, done.stderr, args)
        bad = Path(tempfile.mkdtemp(dir=self.folder)) / "dup.json"
        bad.write_text('{"scope": "a", "scope": "b"}')
        done = self.run_create("--metadata", str(bad))
        self.assertEqual(done.returncode, 1)
        self.assertIn("is not JSON", done.stderr)
