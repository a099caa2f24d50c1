"""
Workload identity federation end to end: real C{twist ccserver} processes
over each of the four stores (two instances sharing it, for the three that
can be shared), trusting the platforms of L{tests.workloads} served on the
loopback by this test (L{PlatformServer}):

  - a Kubernetes-shaped cluster, by OpenID discovery (its issuer
    C{http://127.0.0.1:<port>/k8s}, its keys at C{/k8s/openid/v1/jwks}),
    RS256 projected service-account tokens, and a key rotation;
  - GitHub Actions, its issuer C{https://token.actions.githubusercontent.com}
    as the tokens carry it, its JWK set fetched from the loopback
    (C{jwks_uri}), with claim conditions on the repository and the ref;
  - a SPIFFE trust domain by its bundle endpoint, and another by its
    bundle file: ES256 JWT-SVIDs without C{iss}.

A workload gets an access token with nothing but its platform's token, at
either instance; every refusal the issue lists is answered as such; a
binding registered through both instances at once is taken once; a burst
of bad tokens for one workload identity is stopped at the budget, across
both instances (the second with C{--workers 2}); and C{ccserver clients create --federated-identity} binds a
client from the command line.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from tests.process import CCServerProcess, run_admin
from tests.workloads import (
    AUDIENCE,
    GITHUB_ISSUER,
    GITHUB_JWKS_PATH,
    SPIFFE_BUNDLE_PATH,
    PlatformServer,
    SigningKey,
    SpiffeTrustDomain,
    kubernetes_key,
    unsigned,
)

pytestmark = pytest.mark.process

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_SPIFFE = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: The issuer both instances announce (the load balancer's URL): the
#: audience the workloads ask their platforms for.
ISSUER = AUDIENCE
ACCOUNT = "system:serviceaccount:billing:api"
CI_SUBJECT = "repo:octo-org/octo-repo:environment:production"


def config_text(platforms: PlatformServer, bundle_file: Path, file_domain: str) -> str:
    return f"""
[store]
client_cache_seconds = 1

[[trusted_issuers]]
issuer = "{platforms.cluster.issuer}"

[[trusted_issuers]]
issuer = "{GITHUB_ISSUER}"
jwks_uri = "{platforms.url}{GITHUB_JWKS_PATH}"
max_token_lifetime = 3600

[[trusted_issuers]]
issuer = "{platforms.spiffe.id}"
jwks_uri = "{platforms.url}{SPIFFE_BUNDLE_PATH}"
max_token_lifetime = 3600

[[trusted_issuers]]
issuer = "{file_domain}"
jwks_file = "{bundle_file}"
"""


class Federation:
    """
    The platforms, and the instances that trust them over one store.
    """

    def __init__(self, folder: Path, store_url: str) -> None:
        self.folder = folder
        self.platforms = PlatformServer()
        self.cluster = self.platforms.cluster
        self.github = self.platforms.github
        self.spiffe = self.platforms.spiffe
        self.file_domain = SpiffeTrustDomain("files.example")
        bundle = folder / "bundle.json"
        bundle.write_text(json.dumps(self.file_domain.bundle()))
        config = folder / "ccserver.toml"
        config.write_text(config_text(self.platforms, bundle, self.file_domain.id))
        self.master_token = secrets.token_urlsafe(32)
        self.servers: list[CCServerProcess] = []
        #: the serving processes, each of which fetches keys for itself
        self.processes = 0
        count = 1 if store_url.startswith("memory:") else 2
        for index in range(count):
            # the second instance runs two workers: a request may meet any
            # of three processes, whose only shared state is the store
            workers = ["--workers", "2"] if index == 1 else []
            server = CCServerProcess(
                folder,
                "--config", str(config),
                "--master-token", self.master_token,
                "--issuer", ISSUER,
                *workers,
                store=store_url,
            )
            self.servers.append(server)
            self.processes += 2 if workers else 1
            server.start()

    @property
    def a(self) -> CCServerProcess:
        return self.servers[0]

    @property
    def b(self) -> CCServerProcess:
        """
        The other instance (the same one, on a memory store).
        """
        return self.servers[-1]

    def close(self) -> None:
        for server in self.servers:
            server.kill()
        self.platforms.close()


@pytest.fixture(scope="module")
def federation(store_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    made = Federation(tmp_path_factory.mktemp("federation"), store_url)
    try:
        yield made
    finally:
        made.close()


def register(server: CCServerProcess, **metadata: Any) -> requests.Response:
    return requests.post(
        server.url + "/client-reg",
        json=metadata,
        headers={"Authorization": f"Bearer {server.master_token}"},
        timeout=10,
    )


def bind(server: CCServerProcess, *identities: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    response = register(server, federated_identities=list(identities), scope="read", **metadata)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def with_assertion(
    server: CCServerProcess, token: str, assertion_type: str = JWT_BEARER, **form: str
) -> requests.Response:
    return requests.post(
        server.url + "/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": assertion_type,
            "client_assertion": token,
            **form,
        },
        timeout=10,
    )


def with_grant(server: CCServerProcess, token: str) -> requests.Response:
    return requests.post(
        server.url + "/token",
        data={"grant_type": JWT_BEARER_GRANT, "assertion": token},
        timeout=10,
    )


def issued_to(response: requests.Response, client: dict[str, Any], server: CCServerProcess) -> None:
    assert response.status_code == 200, response.text
    jwks = requests.get(server.url + "/jwks.json", timeout=10).json()
    token = response.json()["access_token"]
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == kid))
    claims = jwt.decode(token, key, algorithms=["RS256"], issuer=ISSUER, audience=ISSUER)
    assert claims["client_id"] == client["client_id"]


def refused(response: requests.Response, description: str, status: int = 401) -> None:
    assert response.status_code == status, response.text
    assert description in response.json()["error_description"], response.text


def test_kubernetes_pod(federation: Federation) -> None:
    """
    A pod's projected service-account token gets its client a token at
    either instance, as a client assertion and as the JWT bearer grant;
    the cluster's discovery document and keys are fetched by each
    serving process, not for every token.
    """
    client = bind(federation.a, {"issuer": federation.cluster.issuer, "subject": ACCOUNT})
    assert "client_secret" not in client
    for server in federation.servers:
        for _ in range(2):
            issued_to(with_assertion(server, federation.cluster.token()), client, server)
        issued_to(with_grant(server, federation.cluster.token()), client, server)
    hits = federation.platforms.hits["/k8s/openid/v1/jwks"]
    assert 1 <= hits <= federation.processes, hits


def test_kubernetes_key_rotation(federation: Federation) -> None:
    client = bind(
        federation.a,
        {"issuer": federation.cluster.issuer, "subject": "system:serviceaccount:billing:rotated"},
    )
    old = federation.cluster.token(account="rotated")
    federation.cluster.rotate()
    new = federation.cluster.token(account="rotated")
    for server in federation.servers:
        issued_to(with_assertion(server, new), client, server)
        issued_to(with_assertion(server, old), client, server)


def test_spiffe(federation: Federation) -> None:
    """
    JWT-SVIDs without iss, of a trust domain whose bundle endpoint is
    fetched, and of one whose bundle is a file; the draft's assertion type
    and the JWT bearer one.
    """
    endpoint = bind(
        federation.a,
        {"issuer": federation.spiffe.id, "subject": federation.spiffe.id + "/ns/billing/sa/api"},
    )
    domain = federation.file_domain
    by_file = bind(federation.a, {"issuer": domain.id, "subject": domain.id + "/web"})
    for server in federation.servers:
        svid = federation.spiffe.svid()
        issued_to(with_assertion(server, svid, JWT_SPIFFE), endpoint, server)
        issued_to(with_assertion(server, svid), endpoint, server)
        issued_to(with_assertion(server, domain.svid(path="/web"), JWT_SPIFFE), by_file, server)


def test_ci_claim_conditions(federation: Federation) -> None:
    client = bind(
        federation.a,
        {
            "issuer": GITHUB_ISSUER,
            "subject": CI_SUBJECT,
            "claims": {"repository": "octo-org/octo-repo", "ref": "refs/heads/main"},
        },
    )
    github = federation.github
    for server in federation.servers:
        issued_to(with_assertion(server, github.token()), client, server)
        issued_to(with_grant(server, github.token()), client, server)
        refused(
            with_assertion(server, github.token(ref="refs/heads/feature")),
            "no client is bound to this workload identity with conditions its claims meet",
        )
        refused(
            with_grant(server, github.token(ref="refs/heads/feature")),
            "assertion: no client is bound",
            status=400,
        )


def test_refusals(federation: Federation) -> None:
    """
    Every refusal of issue 21 item 6, each for a workload identity of its
    own (the limits count by it), at the other instance.
    """
    cluster, server = federation.cluster, federation.b

    def claims(name: str, **changes: Any) -> dict[str, Any]:
        base = cluster.claims(account=name)
        base.update(changes)
        return {k: v for k, v in base.items() if v is not None}

    header = {"alg": "none", "kid": cluster.signing.kid}
    forged = SigningKey(kubernetes_key().key, "RS256", cluster.signing.kid)
    for token, description in (
        (cluster.signing.sign(claims("r1", iss="https://other.example")), "its issuer is not trusted here"),
        (cluster.token(account="r2", audience="https://other.example"), "the aud claim must name this server"),
        (cluster.token(account="r3"), "no client is bound to this workload identity"),
        (forged.sign(claims("r4")), "the signature does not verify with its issuer's keys"),
        (cluster.signing.sign(claims("r5", exp=1_700_000_000, iat=1_699_999_000, nbf=None)), "the JWT has expired"),
        (cluster.token(account="r6", lifetime=90000), "valid for 90000 seconds (exp - iat), more than the 86400"),
        (unsigned(header, claims("r7")), "must be signed with one of RS256"),
        (unsigned({**header, "alg": "HS256"}, claims("r8"), b"x" * 32), "must be signed with one of RS256"),
    ):
        refused(with_assertion(server, token), description)
    # a trust domain nobody trusts
    stranger = SpiffeTrustDomain("stranger.example")
    refused(
        with_assertion(server, stranger.svid(), JWT_SPIFFE),
        "the trust domain of its sub is not trusted here",
    )
    # an issuer nobody trusts, at registration
    response = register(
        server, federated_identities=[{"issuer": "https://attacker.example", "subject": "x"}]
    )
    refused(response, "federated_identities[0].issuer", status=400)
    # a binding set with the client's own registration access token
    plain = register(server, scope="read").json()
    response = requests.put(
        f"{server.url}/client-reg/{plain['client_id']}",
        json={
            "client_id": plain["client_id"],
            "scope": "read",
            "token_endpoint_auth_method": "federated_jwt",
            "federated_identities": [{"issuer": cluster.issuer, "subject": "r9"}],
        },
        headers={"Authorization": f"Bearer {plain['registration_access_token']}"},
        timeout=10,
    )
    refused(response, "only the master token", status=400)
    assert response.json()["error"] == "invalid_client_metadata"


def test_binding_taken_once_across_instances(federation: Federation) -> None:
    """
    The same binding registered through both instances at once: one
    client gets it, the others are refused, and the token finds that one.
    """
    identity = {"issuer": federation.cluster.issuer, "subject": "system:serviceaccount:race:api"}
    servers = [federation.servers[i % len(federation.servers)] for i in range(8)]
    with ThreadPoolExecutor(len(servers)) as pool:
        responses = list(
            pool.map(lambda s: register(s, federated_identities=[identity], scope="read"), servers)
        )
    created = [r for r in responses if r.status_code == 201]
    assert len(created) == 1, [r.text for r in responses]
    for response in responses:
        if response.status_code != 201:
            refused(response, "is bound to another client already", status=400)
    token = federation.cluster.token(namespace="race")
    for server in federation.servers:
        issued_to(with_assertion(server, token), created[0].json(), server)


def test_burst_of_bad_tokens_stopped_at_the_budget(federation: Federation) -> None:
    """
    Twenty bad tokens for one workload identity in flight at once, through
    both instances: ten are checked and refused, the rest get 429 (the
    counts are the store's); the identity is then refused from this
    source with its good token too, at both; another identity is not.
    """
    cluster = federation.cluster
    bind(federation.a, {"issuer": cluster.issuer, "subject": "system:serviceaccount:burst:api"})
    other = bind(federation.a, {"issuer": cluster.issuer, "subject": "system:serviceaccount:calm:api"})
    bad = cluster.token(namespace="burst", audience="https://elsewhere.example")
    servers = [federation.servers[i % len(federation.servers)] for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        codes = sorted(pool.map(lambda s: with_assertion(s, bad).status_code, servers))
    assert codes == [401] * 10 + [429] * 10, codes
    for server in federation.servers:
        refused(with_assertion(server, cluster.token(namespace="burst")), "", status=429)
        issued_to(with_assertion(server, cluster.token(namespace="calm")), other, server)


def test_clients_create_command(tmp_path: Path) -> None:
    """
    C{ccserver clients create --federated-identity ISS SUB --federated-claim
    NAME=VALUE}, on the store a running server uses: the workload gets a
    token from it at once.
    """
    platforms = PlatformServer()
    try:
        domain = SpiffeTrustDomain("files.example")
        bundle = tmp_path / "bundle.json"
        bundle.write_text(json.dumps(domain.bundle()))
        config = tmp_path / "ccserver.toml"
        config.write_text(config_text(platforms, bundle, domain.id))
        store = f"sqlite:///{tmp_path}/ccserver.db"
        with CCServerProcess(
            tmp_path, "--config", str(config), "--issuer", ISSUER, store=store
        ) as server:
            done = run_admin(
                "--config", str(config), "--store", store, "clients", "create",
                "--scope", "read", "--federated-identity", GITHUB_ISSUER, CI_SUBJECT,
                "--federated-claim", "ref=refs/heads/main",
                cwd=tmp_path,
            )
            assert done.returncode == 0, done.stderr
            client = json.loads(done.stdout)
            assert client["token_endpoint_auth_method"] == "federated_jwt"
            assert client["federated_identities"] == [
                {"issuer": GITHUB_ISSUER, "subject": CI_SUBJECT, "claims": {"ref": "refs/heads/main"}}
            ]
            assert "client_secret" not in client
            issued_to(with_assertion(server, platforms.github.token()), client, server)
            refused(
                with_assertion(server, platforms.github.token(ref="refs/heads/x")),
                "with conditions its claims meet",
            )
            refused_command = run_admin(
                "--config", str(config), "--store", store, "clients", "create",
                "--federated-identity", "https://attacker.example", "x",
                cwd=tmp_path,
            )
            assert refused_command.returncode == 1
            assert "is not a trusted issuer of this server" in refused_command.stderr
            assert refused_command.stderr.count("\n") == 1
    finally:
        platforms.close()
