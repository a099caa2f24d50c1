"""
Several `twist ccserver` processes on one store, as ops teams run them
behind a load balancer: clients, keys and revocations are shared; a key
rotation made with the `ccserver` command while they run never makes a
valid token fail verification.
"""

from __future__ import annotations

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
from jwt.algorithms import ECAlgorithm

from ccserver.testing.servers import postgres_server, redis_server
from tests.process import CCServerProcess, run_admin, wait_until

pytestmark = pytest.mark.process

CONFIG = """
[store]
client_cache_seconds = 1
[keys]
activation_delay = 4
"""


#: The issuer both instances of a pair announce (the load balancer's URL).
ISSUER = "https://as.example.com"

#: The bound on "within the client cache time" ([store] client_cache_seconds
#: is 1): generous, for a loaded machine.
CACHE_BOUND = 1 + 10.0


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

    def start(self, config: str = "ccserver.toml") -> CCServerProcess:
        """
        One instance of the pair.  They share one issuer, as instances
        behind one load balancer do: otherwise neither accepts the other's
        JWTs, and a revocation or an introspection through one would not
        even find a token issued by the other.
        """
        server = CCServerProcess(
            self.tmp,
            "--config", str(self.tmp / config),
            "--master-token", "shared-master-token-0123456789",
            "--issuer", ISSUER,
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
            token, jwt.PyJWK(matching[0]), algorithms=["RS256"], issuer=ISSUER,
            options={"verify_aud": False},
        )

    def jwks(self, server: CCServerProcess) -> dict[str, Any]:
        return requests.get(server.url + "/jwks.json", timeout=10).json()  # type: ignore[no-any-return]

    def test_assertion_replay_refused_by_the_other(self) -> None:
        """
        A client assertion's jti is recorded in the shared store: accepted
        by one instance, it is refused by the other (RFC 7523 §3 item 7).
        """
        import uuid

        from cryptography.hazmat.primitives.asymmetric import ec

        from ccserver.keys import public_jwk

        key = ec.generate_private_key(ec.SECP256R1())
        client = self.a.register(
            token_endpoint_auth_method="private_key_jwt", jwks={"keys": [public_jwk(key)]}
        )
        now = int(time.time())
        assertion = jwt.encode(
            {
                "iss": client["client_id"],
                "sub": client["client_id"],
                # instances behind one load balancer share an issuer
                "aud": ISSUER,
                "iat": now,
                "exp": now + 60,
                "jti": str(uuid.uuid4()),
            },
            key,
            algorithm="ES256",
        )

        def post(server: CCServerProcess) -> requests.Response:
            return requests.post(
                server.url + "/token",
                data={
                    "grant_type": "client_credentials",
                    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    "client_assertion": assertion,
                },
                timeout=10,
            )

        first = post(self.a)
        self.assertEqual(first.status_code, 200, first.text)  # type: ignore[attr-defined]
        second = post(self.b)
        self.assertEqual(second.status_code, 401, second.text)  # type: ignore[attr-defined]
        self.assertIn("used already", second.json()["error_description"])  # type: ignore[attr-defined]

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
        wait_until(
            lambda: self.token(self.b, client).json()["scope"] == "read write",
            CACHE_BOUND,
            0.1,
            what="the update seen by the other instance",
        )
        response = requests.delete(self.a.url + f"/client-reg/{client['client_id']}", headers=headers, timeout=10)
        self.assertEqual(response.status_code, 204)  # type: ignore[attr-defined]
        wait_until(
            lambda: self.token(self.b, client).status_code == 401,
            CACHE_BOUND,
            0.1,
            what="the deletion seen by the other instance",
        )

    def test_revocation_shared(self) -> None:
        """
        A JWT revoked by its client through one instance is inactive at once
        when introspected through the other, where it was active before.
        """
        client = self.a.register(scope="read")
        token = self.token(self.a, client).json()["access_token"]
        auth = (client["client_id"], client["client_secret"])

        def introspect(at: CCServerProcess) -> dict[str, Any]:
            answer = requests.post(at.url + "/token/introspect", data={"token": token}, auth=auth, timeout=10)
            return answer.json()  # type: ignore[no-any-return]

        self.assertIs(introspect(self.b)["active"], True)  # type: ignore[attr-defined]
        response = requests.post(self.a.url + "/token/revoke", data={"token": token}, auth=auth, timeout=10)
        self.assertEqual(response.status_code, 200)  # type: ignore[attr-defined]
        self.assertEqual(introspect(self.b), {"active": False})  # type: ignore[attr-defined]
        self.assertEqual(introspect(self.a), {"active": False})  # type: ignore[attr-defined]

    def test_deletion_on_one_ends_tokens_on_the_other(self) -> None:
        """
        A client deleted through one instance: its JWT, issued and
        introspected by the other, is inactive there at once (the mark is in
        the store, not in the deleting process); and the master token
        revokes any client's token through either.
        """
        a, b = self.a, self.b
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
        answer = requests.post(a.url + "/token/introspect", data={"token": token}, auth=auth, timeout=10)
        self.assertEqual(answer.json()["active"], True)  # type: ignore[attr-defined]
        response = requests.post(b.url + "/token/revoke", data={"token": token}, auth=auth, timeout=10)
        self.assertEqual(response.status_code, 200)  # type: ignore[attr-defined]
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

        kids: set[str] = set()
        rotated = False

        def every_token_verifies() -> bool:
            """
            One round of tokens from each instance, each verified by both;
            the key rotated after the first.  True once the rotated key
            signs.
            """
            nonlocal rotated
            for issuer in (self.a, self.b):
                token = self.token(issuer, client).json()["access_token"]
                kids.add(jwt.get_unverified_header(token)["kid"])
                for verifier in (self.a, self.b):
                    self.verify(token, verifier, resource_server_jwks(verifier))
            if not rotated:
                done = run_admin(
                    "--config", str(self.tmp / "ccserver.toml"), "--store", self.url,
                    "keys", "rotate", cwd=self.tmp,
                )
                self.assertEqual(done.returncode, 0, done.stderr)
                rotated = True
            return len(kids) == 2

        wait_until(every_token_verifies, interval=0.05, what="tokens signed with the rotated key")
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


DPOP_CONFIG = """
[store]
client_cache_seconds = 1
[dpop]
require_nonce = true
"""
#: Both instances behind one name, as behind a load balancer: a proof's
#: htu is the same URL at each.
SHARED_ISSUER = "https://as.example.com"


class DPoPInstancesMixin:
    """
    RFC 9449 across two instances sharing a store (issue 11): a proof
    accepted by one is a replay at the other, and a nonce made by one is
    good at the other.  The store's use_once comes with the client-assertion
    work (auth-jwt); these pass with every store's.
    """

    def store_url(self) -> str:
        raise NotImplementedError

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ccserver-dpop-pair-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)  # type: ignore[attr-defined]
        (self.tmp / "ccserver.toml").write_text(DPOP_CONFIG)
        self.url = self.store_url()
        self.a, self.b = self.start(), self.start()
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.jwk = ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)

    def start(self) -> CCServerProcess:
        server = CCServerProcess(
            self.tmp,
            "--config", str(self.tmp / "ccserver.toml"),
            "--master-token", "shared-master-token-0123456789",
            "--issuer", SHARED_ISSUER,
            store=self.url,
        )
        self.addCleanup(server.kill)  # type: ignore[attr-defined]
        return server.start()

    def proof(self, nonce: str | None = None, jti: str | None = None) -> str:
        claims: dict[str, Any] = {
            "jti": jti or str(uuid.uuid4()),
            "htm": "POST",
            "htu": SHARED_ISSUER + "/token",
            "iat": int(time.time()),
        }
        if nonce is not None:
            claims["nonce"] = nonce
        return jwt.encode(
            claims, self.key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": self.jwk}
        )

    def token(self, server: CCServerProcess, client: dict[str, Any], proof: str) -> requests.Response:
        return requests.post(
            server.url + "/token",
            data={"grant_type": "client_credentials"},
            auth=(client["client_id"], client["client_secret"]),
            headers={"DPoP": proof},
            timeout=10,
        )

    def test_nonce_and_replay_shared(self) -> None:
        client = self.a.register(scope="read")
        first = self.token(self.a, client, self.proof())
        self.assertEqual(first.status_code, 400)  # type: ignore[attr-defined]
        self.assertEqual(first.json()["error"], "use_dpop_nonce")  # type: ignore[attr-defined]
        nonce = first.headers["DPoP-Nonce"]
        # a's nonce is good at b
        proof = self.proof(nonce)
        accepted = self.token(self.b, client, proof)
        self.assertEqual(accepted.status_code, 200, accepted.text)  # type: ignore[attr-defined]
        self.assertEqual(accepted.json()["token_type"], "DPoP")  # type: ignore[attr-defined]
        # the proof b accepted is a replay at a
        replayed = self.token(self.a, client, proof)
        self.assertEqual(replayed.status_code, 400)  # type: ignore[attr-defined]
        self.assertEqual(replayed.json()["error"], "invalid_dpop_proof")  # type: ignore[attr-defined]
        self.assertIn("used before", replayed.json()["error_description"])  # type: ignore[attr-defined]


class SQLiteDPoPInstances(DPoPInstancesMixin, unittest.TestCase):
    def store_url(self) -> str:
        return f"sqlite:///{self.tmp}/ccserver.db"


class RedisDPoPInstances(DPoPInstancesMixin, unittest.TestCase):
    def store_url(self) -> str:
        server = redis_server()
        server.flushall()
        return server.url_for(0)


class PostgreSQLDPoPInstances(DPoPInstancesMixin, unittest.TestCase):
    def store_url(self) -> str:
        server = postgres_server()
        return server.url_for(server.create_database())
