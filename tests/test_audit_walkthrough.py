"""
A full walk-through of every action the audit trail hears of, on every
store, with every event collected and searched for every secret the run
made: the master token, initial access tokens, client secrets (rotated
ones too), registration access tokens, access tokens (JWT, opaque, DPoP
bound, made by exchange), a token exchange's subject and actor tokens,
client assertions, workload tokens (a Kubernetes cluster's, as a
C{federated_jwt} assertion and as the JWT bearer grant's) and DPoP proofs,
and private keys (the clients', the DPoP key's, the workload issuer's, the
server's key-encryption key).

On SQLite, Redis and PostgreSQL a real C{twist ccserver} writes the trail
to a file, which the C{ccserver} command's events join, and is stopped
cleanly before the file is read: the events of the last requests are in
it.  The memory store runs in this process (the command cannot reach its
store).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import unittest
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ccserver import audit
from ccserver.config import Config, StoreConfig, TokenConfig, TrustedIssuerConfig
from ccserver.keys import public_jwk
from ccserver.model import ACCESS_TOKEN_TYPE, CLIENT_CREDENTIALS, JWT_BEARER_GRANT, TOKEN_EXCHANGE
from ccserver.oauth.registration import new_initial_access_token
from ccserver.testing.servers import clean_store_url
from tests.helpers import ISSUER, MASTER_TOKEN, AuditEvents, ServerTestCase, basic, temp_dir
from tests.process import CCServerProcess
from tests.test_clients_command import ccserver
from tests.test_dpop import Key
from tests.workloads import KubernetesCluster

#: Answer: status and JSON body (or None).
Call = Callable[[str, str, dict[str, str], bytes], tuple[int, Any]]

#: The trusted issuer of the walk-through's workload tokens: a Kubernetes
#: cluster whose keys the server reads from a file.
CLUSTER = "https://cluster.example"
#: The service account the workload runs as.
ACCOUNT = "system:serviceaccount:billing:api"
#: The resource servers of the token exchange: the gateway's API, which
#: callers' tokens are for, and the orders API it calls on their behalf.
GATEWAY_API = "https://gateway.example/api"
ORDERS_API = "https://orders.example/api"

#: Every event type a walk-through must produce; the rest need the clock
#: to pass (limits.block_ended, tests/test_audit_events.py), a key to
#: activate by itself (key.activated) or to expire (key.deleted).
HTTP_EVENTS = {
    "client.registered",
    "client.read",
    "client.updated",
    "client.deleted",
    "client.secret_rotated",
    "registration.refused",
    "token.issued",
    "token.refused",
    "token.revoked",
    "revocation.refused",
    "introspection.refused",
    "limits.block_started",
    "limits.rate_limited",
    "initial_access_token.used",
}
COMMAND_EVENTS = {
    "key.created",
    "key.retired",
    "initial_access_token.created",
    "initial_access_token.revoked",
}


class WalkThrough:
    """
    The walk-through, over HTTP (C{call}), remembering every secret it
    sees.
    """

    def __init__(
        self,
        call: Call,
        issuer: str,
        master_token: str,
        cluster: KubernetesCluster,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.call = call
        self.issuer = issuer
        self.master = master_token
        self.cluster = cluster
        self.now = now
        self.secrets: list[str] = [master_token]
        self.keep(
            cluster.signing.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode()
        )

    def keep(self, *values: Any) -> None:
        for value in values:
            if isinstance(value, str) and value:
                self.secrets.append(value)
                # a JWT's signature alone is a secret too
                if value.count(".") == 2:
                    self.secrets.append(value.rsplit(".", 1)[1])

    def json(self, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        data = b""
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        return self.call(method, path, headers, data)

    def form(self, path: str, form: dict[str, str], auth: str | None = None, **headers: str) -> tuple[int, Any]:
        all_headers = {"Content-Type": "application/x-www-form-urlencoded", **headers}
        if auth is not None:
            all_headers["Authorization"] = auth
        return self.call("POST", path, all_headers, urlencode(form).encode())

    def register(self, token: str, **metadata: Any) -> dict[str, Any]:
        status, client = self.json("POST", "/client-reg", token, metadata)
        assert status == 201, client
        self.keep(client.get("client_secret"), client["registration_access_token"])
        return dict(client)

    def token(self, form: dict[str, str], auth: str | None = None, **headers: str) -> str:
        status, answer = self.form("/token", {"grant_type": "client_credentials", **form}, auth, **headers)
        assert status == 200, answer
        self.keep(answer["access_token"])
        return str(answer["access_token"])

    def workload_token(self, **claims: Any) -> str:
        """
        A token of the cluster's service account L{ACCOUNT}, for this
        server.
        """
        claims.setdefault("audience", self.issuer)
        token = self.cluster.token(now=self.now(), **claims)
        self.keep(token)
        return token

    def assertion(self, client_id: str, key: Any, alg: str) -> str:
        now = int(time.time())
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": f"{self.issuer}/token",
            "jti": str(uuid.uuid4()),
            "iat": now,
            "exp": now + 60,
        }
        assertion = jwt.encode(claims, key, algorithm=alg)
        self.keep(assertion)
        return assertion

    def run(self, initial_access_token: str) -> None:
        self.keep(initial_access_token)
        # registration: with the initial access token, and the master token
        payments = self.register(initial_access_token, client_name="payments", scope="read")
        self.json("POST", "/client-reg", initial_access_token, {"scope": "admin"})
        private = ec.generate_private_key(ec.SECP256R1())
        jwk = dict(public_jwk(private.public_key()), kid="k1", alg="ES256", use="sig")
        self.keep(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode()
        )
        keyed = self.register(
            initial_access_token, scope="read", token_endpoint_auth_method="private_key_jwt",
            jwks={"keys": [jwk]},
        )
        hashed = self.register(self.master, scope="read", token_endpoint_auth_method="client_secret_jwt")
        auth = basic(payments["client_id"], payments["client_secret"])

        # tokens: each method, and bound to a DPoP key
        first = self.token({}, auth)
        self.token({"client_id": payments["client_id"], "client_secret": payments["client_secret"]})
        assertion = {
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        }
        keyed_token = self.token(
            {**assertion, "client_assertion": self.assertion(keyed["client_id"], private, "ES256")}
        )
        self.token(
            {
                **assertion,
                "client_assertion": self.assertion(
                    hashed["client_id"], hashed["client_secret"].encode(), "HS256"
                ),
            }
        )
        dpop = Key()
        self.keep(json.dumps(dpop.private.private_numbers().private_value))
        proof = dpop.proof(time.time(), htu=f"{self.issuer}/token")
        self.keep(proof)
        self.token({}, auth, DPoP=proof)

        # refusals
        self.form("/token", {"grant_type": "client_credentials"}, basic(payments["client_id"], "x" * 43))
        self.form("/token", {"grant_type": "client_credentials", "scope": "admin"}, auth)

        # introspection and revocation
        keyed_auth = {**assertion, "client_assertion": self.assertion(keyed["client_id"], private, "ES256")}
        status, seen = self.form("/token/introspect", {"token": first, **keyed_auth})
        assert status == 200 and seen == {"active": False}, seen
        keyed_auth = {**assertion, "client_assertion": self.assertion(keyed["client_id"], private, "ES256")}
        self.form("/token/revoke", {"token": first, **keyed_auth})
        self.form("/token/revoke", {"token": first}, auth)
        self.form("/token/revoke", {"token": keyed_token}, f"Bearer {self.master}")

        # the client's registration
        uri = f"/client-reg/{payments['client_id']}"
        own = payments["registration_access_token"]
        status, read = self.json("GET", uri, own)
        assert status == 200, read
        read.update(client_name="payments-v2")
        for member in ("registration_client_uri", "client_secret_expires_at", "client_id_issued_at"):
            read.pop(member)
        status, _ = self.json("PUT", uri, own, read)
        assert status == 200
        status, rotation = self.json("POST", uri + "/rotate-secret", self.master)
        assert status == 200, rotation
        self.keep(rotation["client_secret"])
        self.json("DELETE", f"/client-reg/{hashed['client_id']}", self.master)

        self.exchange()
        self.workload()
        self.rate_limited()

        # a brute-force block
        for n in range(11):
            self.form("/token", {"grant_type": "client_credentials"}, basic(payments["client_id"], f"guess-{n}"))

    def rate_limited(self) -> None:
        """
        A client the operator limited to one token (a burst of 1, refilled
        in 1000 s): its second request is answered with 429.
        """
        limited = self.register(
            self.master, scope="read", token_rate_limit={"tokens_per_second": 0.001, "burst": 1}
        )
        auth = basic(limited["client_id"], limited["client_secret"])
        self.token({}, auth)
        status, answer = self.form("/token", {"grant_type": "client_credentials"}, auth)
        assert status == 429, answer

    def exchange(self) -> None:
        """
        RFC 8693: the gateway exchanges a caller's token (with an actor
        token of its own) for one for the orders API; then one it may not.
        """
        caller = self.register(self.master, client_name="caller", scope="read", audience=[GATEWAY_API])
        gateway = self.register(
            self.master,
            client_name="gateway",
            scope="read",
            grant_types=[CLIENT_CREDENTIALS, TOKEN_EXCHANGE],
            resource_server_uris=[GATEWAY_API],
            audience=[ORDERS_API],
        )
        gateway_auth = basic(gateway["client_id"], gateway["client_secret"])
        subject = self.token({}, basic(caller["client_id"], caller["client_secret"]))
        actor = self.token({}, gateway_auth)
        exchange = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "audience": ORDERS_API,
        }
        status, answer = self.form(
            "/token", {**exchange, "actor_token": actor, "actor_token_type": ACCESS_TOKEN_TYPE}, gateway_auth
        )
        assert status == 200, answer
        self.keep(answer["access_token"])
        # the orders API may not exchange a token that is not for it
        orders = self.register(
            self.master, scope="read", grant_types=[TOKEN_EXCHANGE], audience=[GATEWAY_API]
        )
        status, answer = self.form("/token", exchange, basic(orders["client_id"], orders["client_secret"]))
        assert status == 400, answer

    def workload(self) -> None:
        """
        A workload's token: as a C{federated_jwt} client assertion, as the
        JWT bearer grant's assertion, and one the server refuses.
        """
        bound = self.register(
            self.master,
            client_name="billing workload",
            scope="read",
            federated_identities=[{"issuer": CLUSTER, "subject": ACCOUNT}],
        )
        assert bound["token_endpoint_auth_method"] == "federated_jwt", bound
        self.token(
            {
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": self.workload_token(),
            }
        )
        status, answer = self.form(
            "/token", {"grant_type": JWT_BEARER_GRANT, "assertion": self.workload_token()}
        )
        assert status == 200, answer
        self.keep(answer["access_token"])
        status, answer = self.form(
            "/token",
            {
                "grant_type": JWT_BEARER_GRANT,
                "assertion": self.workload_token(audience="https://elsewhere.example"),
            },
        )
        assert status == 400, answer


class Searched:
    """
    A TestCase mixin: the checks of the events a walk-through made.
    """

    def assert_clean(self, lines: list[str], secrets: list[str]) -> None:
        t: Any = self
        t.assertGreater(len(lines), 20)
        text = "\n".join(lines)
        for secret in secrets:
            t.assertGreater(len(secret), 15)
            t.assertNotIn(secret, text)

    def assert_schema(self, events: list[dict[str, Any]]) -> None:
        t: Any = self
        for event in events:
            kind = audit.EVENTS[event["type"]]
            t.assertLessEqual(set(kind.required), set(event), event)
            t.assertIn(event["actor"]["type"], audit.ACTOR_TYPES)

    def assert_grants(self, events: list[dict[str, Any]]) -> None:
        """
        The exchange and the workload's tokens were told: every grant
        type, the exchange's tokens named, the workload verified and
        claimed.
        """
        t: Any = self
        issued = [e for e in events if e["type"] == "token.issued"]
        refused = [e for e in events if e["type"] == "token.refused"]
        t.assertLessEqual(
            {CLIENT_CREDENTIALS, TOKEN_EXCHANGE, JWT_BEARER_GRANT}, {e["grant_type"] for e in issued}
        )
        [exchanged] = [e for e in issued if e["grant_type"] == TOKEN_EXCHANGE]
        t.assertEqual(exchanged["subject_token"]["type"], ACCESS_TOKEN_TYPE)
        t.assertEqual(
            set(exchanged["actor_token"]), {"type", "id", "subject", "issuer", "client_id"}
        )
        t.assertTrue(
            any(e.get("grant_type") == TOKEN_EXCHANGE and "subject_token" in e for e in refused)
        )
        workload = {"issuer": CLUSTER, "subject": ACCOUNT}
        t.assertEqual(
            sorted((e["grant_type"], e["auth_method"]) for e in issued if e.get("workload") == workload),
            [(CLIENT_CREDENTIALS, "federated_jwt"), (JWT_BEARER_GRANT, "federated_jwt")],
        )
        t.assertTrue(any(e.get("claimed_workload") == workload for e in refused))


class MemoryWalkThroughTests(ServerTestCase, Searched):
    def make_config(self, **tokens: Any) -> Config:
        self.cluster = KubernetesCluster(CLUSTER)
        jwks = temp_dir(self) / "cluster-jwks.json"
        jwks.write_text(json.dumps(self.cluster.jwks()))
        return Config(
            issuer=ISSUER,
            store=StoreConfig(url="memory://", client_cache_seconds=5),
            tokens=TokenConfig(signing_alg=self.signing_alg, format="opaque"),
            trusted_issuers=(
                TrustedIssuerConfig(
                    issuer=CLUSTER, jwks_file=str(jwks), audiences=(ISSUER, f"{ISSUER}/token")
                ),
            ),
        )

    def test_walk_through(self) -> None:
        collected = AuditEvents(self)

        def call(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
            response = self.request(method, path, headers=headers, data=body or None)
            return response.code, json.loads(response.body) if response.body else None

        token, record = new_initial_access_token(
            int(self.clock.seconds()), expires_in=3600, max_uses=5, scope_limit=["read"]
        )
        self.successResultOf(self.store.add_initial_access_token(record))
        walk = WalkThrough(call, ISSUER, MASTER_TOKEN, self.cluster, self.clock.seconds)
        walk.keep(
            self.encryptor._key.decode(),
            self.keyring.current.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
        )
        walk.run(token)
        self.assertLessEqual(HTTP_EVENTS, {e["type"] for e in collected.events})
        self.assert_schema(collected.events)
        self.assert_grants(collected.events)
        # the lines as the writer writes them
        from ccserver.auditlog import AuditWriter

        class Lines:
            description = "lines"

            def __init__(self) -> None:
                self.lines: list[bytes] = []

            def write(self, lines: list[bytes]) -> int:
                self.lines.extend(lines)
                return len(lines)

            def close(self) -> None:
                pass

        destination = Lines()
        writer = AuditWriter(destination, ISSUER)
        for event in collected.raw:
            writer(event)
        writer.flush()
        self.assert_clean([line.decode() for line in destination.lines], walk.secrets)


@pytest.mark.process
class ProcessWalkThroughMixin(Searched):
    kind: str
    token_format = "jwt"

    def test_walk_through(self) -> None:
        t: Any = self
        tmp = Path(tempfile.mkdtemp(prefix="ccserver-walk-"))
        t.addCleanup(shutil.rmtree, tmp, True)
        log = tmp / "audit.log"
        url = clean_store_url(self.kind, t.addCleanup)
        server = CCServerProcess(tmp, "--master-token", f"master-{uuid.uuid4()}", store=url)
        config = tmp / "ccserver.toml"
        key_file = tmp / "ccserver.key-encryption-key"
        cluster = KubernetesCluster(CLUSTER)
        jwks = tmp / "cluster-jwks.json"
        jwks.write_text(json.dumps(cluster.jwks()))
        config.write_text(
            f'issuer = "{server.url}"\n[store]\nurl = "{url}"\n'
            f'[tokens]\nformat = "{self.token_format}"\n'
            f'[keys]\nencryption_key_file = "{key_file}"\n[audit]\nlog = "{log}"\n'
            f'[[trusted_issuers]]\nissuer = "{CLUSTER}"\njwks_file = "{jwks}"\n'
        )
        server.args += ["--config", str(config)]
        t.addCleanup(server.kill)
        server.start()

        def command(*args: str) -> Any:
            done = ccserver("--config", str(config), *args, cwd=tmp)
            t.assertEqual(done.returncode, 0, done.stderr)
            return done

        created = json.loads(
            command(
                "registration-tokens", "create", "--scope-limit", "read", "--uses", "5",
                "--note", "payments team", "--json",
            ).stdout
        )

        def call(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
            response = requests.request(method, server.url + path, headers=headers, data=body, timeout=10)
            return response.status_code, response.json() if response.content else None

        walk = WalkThrough(call, server.url, server.master_token, cluster)
        walk.run(created["initial_access_token"])
        made = json.loads(command("clients", "create", "--name", "by the operator").stdout)
        walk.keep(made["client_secret"], made["registration_access_token"])
        command("keys", "rotate", "--delay", "0")
        command("registration-tokens", "revoke", created["id"])
        walk.keep(key_file.read_text().strip())
        # a last request, answered just before the stop: its event is
        # written at the clean stop, not lost
        last = walk.form("/token", {"grant_type": "client_credentials"}, basic("the-last-one", "x"))
        t.assertEqual(last[0], 401)
        server.stop()

        lines = log.read_text().splitlines()
        events = [json.loads(line) for line in lines]
        types = {e["type"] for e in events}
        t.assertLessEqual(HTTP_EVENTS | COMMAND_EVENTS, types, sorted(types))
        self.assert_schema(events)
        self.assert_grants(events)
        self.assert_clean(lines, walk.secrets)
        t.assertEqual(
            (events[-1]["type"], events[-1].get("claimed_client_id")),
            ("token.refused", "the-last-one"),
        )



class SQLiteWalkThroughTests(ProcessWalkThroughMixin, unittest.TestCase):
    kind = "sqlite"


class RedisWalkThroughTests(ProcessWalkThroughMixin, unittest.TestCase):
    kind = "redis"
    token_format = "opaque"


class PostgreSQLWalkThroughTests(ProcessWalkThroughMixin, unittest.TestCase):
    kind = "postgresql"
