"""
Several `twist ccserver` processes on one store, as ops teams run them
behind a load balancer: clients, keys and revocations are shared; a key
rotation made with the `ccserver` command while they run never makes a
valid token fail verification.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path
from typing import Any

import jwt
import requests

from tests.process import REPO, CCServerProcess
from tests.servers import postgres_server, redis_server

CONFIG = """
[store]
client_cache_seconds = 1
[keys]
activation_delay = 4
"""


class InstancesMixin:
    def store_url(self) -> str:
        raise NotImplementedError

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ccserver-pair-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)  # type: ignore[attr-defined]
        (self.tmp / "ccserver.toml").write_text(CONFIG)
        self.url = self.store_url()
        self.a = self.start()
        self.b = self.start()

    def start(self, config: str = "ccserver.toml", *extra: str) -> CCServerProcess:
        server = CCServerProcess(
            self.tmp,
            "--config", str(self.tmp / config),
            "--master-token", "shared-master-token-0123456789",
            *extra,
            store=self.url,
        )
        self.addCleanup(server.kill)  # type: ignore[attr-defined]
        return server.start()

    def token(self, server: CCServerProcess, client: dict[str, Any]) -> requests.Response:
        return requests.post(
            server.url + "/token",
            data={"grant_type": "client_credentials"},
            auth=(client["client_id"], client["client_secret"]),
            timeout=10,
        )

    def verify(self, token: str, server: CCServerProcess, jwks: dict[str, Any]) -> dict[str, Any]:
        kid = jwt.get_unverified_header(token)["kid"]
        matching = [k for k in jwks["keys"] if k["kid"] == kid]
        if not matching:
            raise AssertionError(f"kid {kid} not in the JWK set of {server.url}")
        return jwt.decode(
            token, jwt.PyJWK(matching[0]), algorithms=["RS256"], options={"verify_aud": False}
        )

    def jwks(self, server: CCServerProcess) -> dict[str, Any]:
        return requests.get(server.url + "/jwks.json", timeout=10).json()  # type: ignore[no-any-return]

    def test_client_shared(self) -> None:
        client = self.a.register(scope="read")
        self.assertEqual(self.token(self.b, client).status_code, 200)  # type: ignore[attr-defined]
        token = self.token(self.a, client).json()["access_token"]
        self.verify(token, self.b, self.jwks(self.b))

    def test_update_and_delete_reach_the_other_within_cache_time(self) -> None:
        client = self.a.register(scope="read")
        self.assertEqual(self.token(self.b, client).json()["scope"], "read")  # type: ignore[attr-defined]
        headers = {"Authorization": f"Bearer {client['registration_access_token']}"}
        update = {"client_id": client["client_id"], "scope": "read write"}
        response = requests.put(
            self.a.url + f"/client-reg/{client['client_id']}",
            json=update,
            headers={"Authorization": f"Bearer {self.a.master_token}"},
            timeout=10,
        )
        self.assertEqual(response.status_code, 200)  # type: ignore[attr-defined]
        time.sleep(1.2)
        self.assertEqual(self.token(self.b, client).json()["scope"], "read write")  # type: ignore[attr-defined]
        response = requests.delete(self.a.url + f"/client-reg/{client['client_id']}", headers=headers, timeout=10)
        self.assertEqual(response.status_code, 204)  # type: ignore[attr-defined]
        time.sleep(1.2)
        self.assertEqual(self.token(self.b, client).status_code, 401)  # type: ignore[attr-defined]

    def test_revocation_shared(self) -> None:
        client = self.a.register(scope="read")
        token = self.token(self.a, client).json()["access_token"]
        auth = (client["client_id"], client["client_secret"])
        requests.post(self.a.url + "/token/revoke", data={"token": token}, auth=auth, timeout=10)
        answer = requests.post(self.b.url + "/token/introspect", data={"token": token}, auth=auth, timeout=10)
        self.assertEqual(answer.json(), {"active": False})  # type: ignore[attr-defined]

    def test_deletion_on_one_ends_tokens_on_the_other(self) -> None:
        """
        A client deleted through one instance: its JWT, issued and
        introspected by the other, is inactive there at once (the mark is in
        the store, not in the deleting process); and the master token
        revokes any client's token through either.  The pair shares one
        issuer, as instances behind one load balancer do: otherwise neither
        accepts the other's JWTs, and a revocation through one would not
        even find the token.
        """
        issuer = ("--issuer", "https://as.example.com")
        a, b = self.start("ccserver.toml", *issuer), self.start("ccserver.toml", *issuer)
        api = "https://api.example.com"
        server = a.register(client_name="api", resource_server_uris=[api])
        client = a.register(scope="read", audience=[api])
        server_auth = (server["client_id"], server["client_secret"])

        def introspect(at: CCServerProcess, token: str) -> dict[str, Any]:
            answer = requests.post(at.url + "/token/introspect", data={"token": token}, auth=server_auth, timeout=10)
            return answer.json()  # type: ignore[no-any-return]

        token = self.token(b, client).json()["access_token"]
        self.assertIs(introspect(b, token)["active"], True)  # type: ignore[attr-defined]
        self.assertIs(introspect(a, token)["active"], True)  # type: ignore[attr-defined]
        headers = {"Authorization": f"Bearer {client['registration_access_token']}"}
        response = requests.delete(a.url + f"/client-reg/{client['client_id']}", headers=headers, timeout=10)
        self.assertEqual(response.status_code, 204)  # type: ignore[attr-defined]
        self.assertEqual(introspect(b, token), {"active": False})  # type: ignore[attr-defined]

        other = a.register(scope="read", audience=[api])
        token = self.token(a, other).json()["access_token"]
        self.assertIs(introspect(a, token)["active"], True)  # type: ignore[attr-defined]
        master = {"Authorization": "Bearer shared-master-token-0123456789"}
        response = requests.post(b.url + "/token/revoke", data={"token": token}, headers=master, timeout=10)
        self.assertEqual(response.status_code, 200)  # type: ignore[attr-defined]
        self.assertEqual(introspect(a, token), {"active": False})  # type: ignore[attr-defined]

    def test_opaque_tokens_shared(self) -> None:
        """
        An opaque token issued by one instance is introspected by the other,
        and a revocation through either takes effect at once on both.
        """
        (self.tmp / "opaque.toml").write_text(CONFIG + '[tokens]\nformat = "opaque"\n')
        a, b = self.start("opaque.toml"), self.start("opaque.toml")
        client = a.register(scope="read")
        auth = (client["client_id"], client["client_secret"])
        token = self.token(a, client).json()["access_token"]
        self.assertNotIn(".", token)  # type: ignore[attr-defined]
        answer = requests.post(b.url + "/token/introspect", data={"token": token}, auth=auth, timeout=10)
        self.assertEqual(answer.json()["active"], True)  # type: ignore[attr-defined]
        self.assertEqual(answer.json()["scope"], "read")  # type: ignore[attr-defined]
        requests.post(b.url + "/token/revoke", data={"token": token}, auth=auth, timeout=10)
        answer = requests.post(a.url + "/token/introspect", data={"token": token}, auth=auth, timeout=10)
        self.assertEqual(answer.json(), {"active": False})  # type: ignore[attr-defined]

    def test_rotation_on_a_running_pair(self) -> None:
        """
        Tokens from either instance, checked by a resource server that
        caches the JWK set for its max-age, all verify through a rotation.
        """
        client = self.a.register(scope="read")
        cached: dict[str, tuple[float, dict[str, Any]]] = {}

        def resource_server_jwks(server: CCServerProcess) -> dict[str, Any]:
            expires, jwks = cached.get(server.url, (0.0, {}))
            if time.monotonic() >= expires:
                response = requests.get(server.url + "/jwks.json", timeout=10)
                max_age = int(response.headers["Cache-Control"].split("max-age=")[1])
                jwks = response.json()
                cached[server.url] = (time.monotonic() + max_age, jwks)
            return jwks

        kids = set()
        rotated = None
        deadline = time.monotonic() + 9
        while time.monotonic() < deadline:
            if rotated is None and time.monotonic() > deadline - 8:
                rotated = subprocess.run(
                    [sys.executable, "-m", "ccserver.admin", "--config", str(self.tmp / "ccserver.toml"),
                     "--store", self.url, "keys", "rotate"],
                    cwd=self.tmp, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                    capture_output=True, text=True, check=True,
                )
            for issuer in (self.a, self.b):
                token = self.token(issuer, client).json()["access_token"]
                kids.add(jwt.get_unverified_header(token)["kid"])
                for verifier in (self.a, self.b):
                    self.verify(token, verifier, resource_server_jwks(verifier))
            time.sleep(0.05)
        self.assertEqual(len(kids), 2, kids)  # type: ignore[attr-defined]


    def test_failed_auth_counted_across_instances(self) -> None:
        """
        Failures on one instance count on the other (the store keeps the
        count): six on A and four on B reach the budget of ten; B, which
        saw the tenth, refuses at once, and A at its next failure.  Another
        client from the same address is not affected on either.
        """
        client = self.a.register(scope="read")
        other = self.a.register(scope="read")
        wrong = {**client, "client_secret": "wrong"}
        for server, times in ((self.a, 6), (self.b, 4)):
            for _ in range(times):
                self.assertEqual(self.token(server, wrong).status_code, 401)
        refused = self.token(self.b, client)
        self.assertEqual(refused.status_code, 429, refused.text)
        self.assertTrue(refused.headers["Retry-After"].isdigit())
        self.assertEqual(self.token(self.a, wrong).status_code, 429)
        self.assertEqual(self.token(self.a, client).status_code, 429)
        for server in (self.a, self.b):
            self.assertEqual(self.token(server, other).status_code, 200)


class SQLiteInstances(InstancesMixin, unittest.TestCase):
    def store_url(self) -> str:
        return f"sqlite:///{self.tmp}/ccserver.db"


class RedisInstances(InstancesMixin, unittest.TestCase):
    def store_url(self) -> str:
        server = redis_server()
        server.flushall()
        return server.url_for(0)


class PostgreSQLInstances(InstancesMixin, unittest.TestCase):
    def store_url(self) -> str:
        server = postgres_server()
        return server.url_for(server.create_database())
