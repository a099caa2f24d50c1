"""
Workload identity federation, in memory: the whole server over a
MemoryStore and a Clock, the trusted issuers' documents served through
treq's StubTreq by the platforms of L{tests.workloads}, whose tokens are
real (signed by PyJWT with the platforms' own keys).

One class per feature, each with its happy path and every refusal:
Kubernetes (discovery, RS256, key rotation), SPIFFE (a bundle endpoint,
ES256 JWT-SVIDs without iss, the draft's assertion type), CI (claim
conditions), the refusals the issue lists, the JWT bearer grant, the
registration of bindings, the limits, what a grant handler sees, and
discovery.  Real processes, every store and two instances:
tests/test_federation_process.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from treq.testing import StubTreq
from twisted.internet.defer import ensureDeferred
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from ccserver.config import Config, load_config
from ccserver.interfaces import IClientCredentialsGrantHandler
from ccserver.keysets import KeySetFile, KeySetUnavailable
from ccserver.model import GrantAuthorization, GrantRequest
from ccserver.oauth.federation import spiffe_trust_domain
from tests.helpers import ISSUER, MASTER_TOKEN, Response, ServerTestCase, basic, temp_dir
from tests.workloads import (
    GITHUB_ISSUER,
    GITHUB_JWKS_PATH,
    KUBERNETES_PATH,
    SPIFFE_BUNDLE_PATH,
    PlatformResource,
    Platforms,
    SigningKey,
    kubernetes_key,
    unsigned,
)

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_SPIFFE = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: Where the platforms are, as the server's configuration names them.
BASE = "https://platform.example"
CLUSTER = BASE + KUBERNETES_PATH
SPIFFE = "spiffe://prod.example"
ACCOUNT = "system:serviceaccount:billing:api"
CI_SUBJECT = "repo:octo-org/octo-repo:environment:production"

CONFIG = f"""
issuer = "{ISSUER}"
[store]
url = "memory://"
[[trusted_issuers]]
issuer = "{CLUSTER}"
[[trusted_issuers]]
issuer = "{GITHUB_ISSUER}"
jwks_uri = "{BASE}{GITHUB_JWKS_PATH}"
max_token_lifetime = 3600
[[trusted_issuers]]
issuer = "{SPIFFE}"
jwks_uri = "{BASE}{SPIFFE_BUNDLE_PATH}"
max_token_lifetime = 3600
"""


class FederationTestCase(ServerTestCase):
    """
    A server trusting a Kubernetes cluster (by discovery), GitHub Actions
    (by its JWK set) and a SPIFFE trust domain (by its bundle endpoint).
    """

    extra_config = ""

    def make_config(self, **tokens: Any) -> Config:
        path = temp_dir(self) / "ccserver.toml"
        path.write_text(CONFIG + self.extra_config)
        return load_config({"config": str(path)}, {})

    def make_issuer_http(self) -> Any:
        self.platforms = Platforms(BASE)
        return StubTreq(PlatformResource(self.platforms))

    def setUp(self) -> None:
        super().setUp()
        self.cluster = self.platforms.cluster
        self.github = self.platforms.github
        self.spiffe = self.platforms.spiffe
        self.logged: list[Mapping[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    @property
    def now(self) -> float:
        return self.clock.seconds()

    def bind(self, *identities: dict[str, Any], **metadata: Any) -> dict[str, Any]:
        """
        A client bound to these identities (by default the cluster's
        service account L{ACCOUNT}), registered with the master token.
        """
        return self.register(
            federated_identities=list(identities) or [{"issuer": CLUSTER, "subject": ACCOUNT}],
            scope="read write",
            **metadata,
        )

    def with_assertion(
        self,
        token: str,
        client_id: str | None = None,
        assertion_type: str = JWT_BEARER,
        **form: str,
    ) -> Response:
        body = {
            "grant_type": "client_credentials",
            "client_assertion_type": assertion_type,
            "client_assertion": token,
            **form,
        }
        if client_id is not None:
            body["client_id"] = client_id
        return self.token(body)

    def with_grant(self, token: str, client_id: str | None = None, **form: str) -> Response:
        body = {"grant_type": JWT_BEARER_GRANT, "assertion": token, **form}
        if client_id is not None:
            body["client_id"] = client_id
        return self.token(body)

    def issued_to(self, response: Response, client: dict[str, Any]) -> dict[str, Any]:
        self.assertEqual(response.code, 200, response.body)
        claims = self.verify(response.json()["access_token"])
        self.assertEqual(claims["client_id"], client["client_id"])
        return claims

    def refused(self, response: Response, description: str, status: int = 401) -> None:
        self.assertEqual(response.code, status, response.body)
        error = "invalid_client" if status == 401 else "invalid_grant"
        self.assertEqual(response.json()["error"], error, response.body)
        self.assertIn(description, response.json()["error_description"])
        if status == 401:
            self.assertTrue(response.headers["www-authenticate"].startswith("Basic"))

    def k8s(self, **claims: Any) -> str:
        claims.setdefault("now", self.now)
        return self.cluster.token(**claims)


class KubernetesTests(FederationTestCase):
    """
    A pod's projected service-account token, from a cluster whose issuer
    is found by OpenID discovery.
    """

    def test_token_with_nothing_but_the_pods_token(self) -> None:
        client = self.bind()
        self.assertNotIn("client_secret", client)
        self.assertEqual(client["token_endpoint_auth_method"], "federated_jwt")
        self.assertEqual(client["grant_types"], ["client_credentials", JWT_BEARER_GRANT])
        claims = self.issued_to(self.with_assertion(self.k8s()), client)
        self.assertEqual(claims["scope"], "read write")

    def test_client_id_may_be_sent(self) -> None:
        client = self.bind()
        self.issued_to(self.with_assertion(self.k8s(), client["client_id"]), client)

    def test_the_token_is_reused(self) -> None:
        """
        A workload token is a bearer token the pod presents again and again
        until the kubelet refreshes it: no jti is remembered.
        """
        client = self.bind()
        token = self.k8s()
        for _ in range(3):
            self.issued_to(self.with_assertion(token), client)
            self.clock.advance(600)

    def test_discovery_and_keys_fetched_once(self) -> None:
        self.bind()
        for _ in range(5):
            self.assertEqual(self.with_assertion(self.k8s()).code, 200)
        self.assertEqual(self.platforms.hits[KUBERNETES_PATH + "/.well-known/openid-configuration"], 1)
        self.assertEqual(self.platforms.hits[KUBERNETES_PATH + "/openid/v1/jwks"], 1)

    def test_key_rotation_followed_at_once(self) -> None:
        """
        The cluster signs with a new key: its first token fetches the keys
        again (once per 30 s per issuer at most); tokens of the old key,
        still published, keep working.
        """
        client = self.bind()
        old = self.k8s()
        self.issued_to(self.with_assertion(old), client)
        self.cluster.rotate()
        self.issued_to(self.with_assertion(self.k8s()), client)
        self.issued_to(self.with_assertion(old), client)
        self.assertEqual(self.platforms.hits[KUBERNETES_PATH + "/openid/v1/jwks"], 2)
        # a second rotation within the interval: not fetched yet
        self.cluster.rotate()
        self.refused(self.with_assertion(self.k8s()), "no key of its issuer has this kid")
        self.clock.advance(30)
        self.issued_to(self.with_assertion(self.k8s()), client)
        self.assertEqual(self.platforms.hits[KUBERNETES_PATH + "/openid/v1/jwks"], 3)

    def test_retired_key_refused_once_refetched(self) -> None:
        client = self.bind()
        old_key = self.cluster.signing
        self.cluster.rotate()
        self.cluster.retire()
        self.clock.advance(301)  # the cached set expires
        self.issued_to(self.with_assertion(self.k8s()), client)
        self.refused(
            self.with_assertion(self.cluster.token(old_key, now=self.now)),
            "no key of its issuer has this kid",
        )

    def test_introspection_and_revocation(self) -> None:
        """
        The workload's token authenticates it at the introspection and
        revocation endpoints too.
        """
        client = self.bind()
        access_token = self.with_assertion(self.k8s()).json()["access_token"]
        form = {
            "token": access_token,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": self.k8s(),
        }
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        answer = self.request(
            "POST", "/token/introspect", headers=headers, data=urlencode(form).encode()
        )
        self.assertEqual(answer.code, 200, answer.body)
        self.assertIs(answer.json()["active"], True)
        self.assertEqual(answer.json()["client_id"], client["client_id"])
        revoked = self.request(
            "POST", "/token/revoke", headers=headers, data=urlencode(form).encode()
        )
        self.assertEqual(revoked.code, 200, revoked.body)
        answer = self.request(
            "POST", "/token/introspect", headers=headers, data=urlencode(form).encode()
        )
        self.assertEqual(answer.json(), {"active": False})

    def test_discovery_naming_another_issuer(self) -> None:
        """
        OpenID Connect Discovery §4.3: a configuration whose issuer is not
        the one asked about is not believed; the workload is told to try
        again (the issuer's trouble, not its own).
        """
        self.bind()
        token = self.k8s()
        self.cluster.issuer = "https://elsewhere.example"
        response = self.answer_after_timeout(token)
        self.assertEqual(response.code, 503, response.body)
        self.assertEqual(response.json()["error"], "temporarily_unavailable")
        self.assertEqual(response.headers["retry-after"], "1")
        logged = " ".join(formatEvent(e) for e in self.logged)
        self.assertIn("its issuer is not the one it was fetched for", logged)

    def test_issuer_unreachable(self) -> None:
        """
        The keys cannot be had (here the issuer answers 404): 503 once the
        fetch timeout has passed, as every failure of a fetch is answered.
        """
        self.bind()
        self.platforms.documents = lambda: {}  # type: ignore[method-assign]
        response = self.answer_after_timeout(self.k8s())
        self.assertEqual(response.code, 503, response.body)
        self.assertEqual(
            response.json()["error_description"],
            "the keys of the token's issuer could not be had; try again shortly",
        )

    def answer_after_timeout(self, token: str) -> Response:
        body = urlencode(
            {
                "grant_type": "client_credentials",
                "client_assertion_type": JWT_BEARER,
                "client_assertion": token,
            }
        ).encode()
        pending = self.treq.post(
            ISSUER + "/token",
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        self.assertNoResult(pending)
        self.clock.advance(5)  # [client_auth] jwks_uri_timeout
        self.treq.flush()
        response = self.successResultOf(pending)
        return Response(
            response.code,
            {k.decode().lower(): b", ".join(v).decode() for k, v in response.headers.getAllRawHeaders()},
            self.successResultOf(response.content()),
        )

    def test_ec_cluster_key(self) -> None:
        """
        A cluster whose service-account key is EC signs ES256 (or ES384
        with P-384): both accepted.
        """
        client = self.bind()
        for curve, alg in ((ec.SECP256R1(), "ES256"), (ec.SECP384R1(), "ES384")):
            self.cluster.keys.insert(0, SigningKey(ec.generate_private_key(curve), alg, alg))
            self.clock.advance(31)
            self.issued_to(self.with_assertion(self.k8s()), client)


class SpiffeTests(FederationTestCase):
    """
    SPIFFE JWT-SVIDs (draft-ietf-oauth-spiffe-client-auth): no iss, the
    trust domain of sub selects the bundle, fetched from the bundle
    endpoint.
    """

    def setUp(self) -> None:
        super().setUp()
        self.client = self.bind({"issuer": SPIFFE, "subject": SPIFFE + "/ns/billing/sa/api"})

    def svid(self, **claims: Any) -> str:
        claims.setdefault("now", self.now)
        return self.spiffe.svid(**claims)

    def test_svid_with_the_drafts_assertion_type(self) -> None:
        self.assertNotIn("iss", jwt.decode(self.svid(), options={"verify_signature": False}))
        self.issued_to(self.with_assertion(self.svid(), assertion_type=JWT_SPIFFE), self.client)

    def test_svid_as_a_jwt_bearer_assertion(self) -> None:
        self.issued_to(self.with_assertion(self.svid()), self.client)

    def test_svid_as_the_grants_assertion(self) -> None:
        self.issued_to(self.with_grant(self.svid()), self.client)

    def test_svid_with_an_iss_of_its_own(self) -> None:
        """
        SPIRE may set an iss (jwt_issuer): the trust domain still selects
        the bundle.
        """
        claims = self.spiffe.claims(now=self.now)
        token = self.spiffe.key.sign({**claims, "iss": "https://oidc.spire.example"}, typ="JWT")
        self.issued_to(self.with_assertion(token, assertion_type=JWT_SPIFFE), self.client)

    def test_untrusted_trust_domain(self) -> None:
        other = self.spiffe.key.sign(
            {**self.spiffe.claims(now=self.now), "sub": "spiffe://other.example/ns/billing/sa/api"}
        )
        self.refused(
            self.with_assertion(other, assertion_type=JWT_SPIFFE),
            "the trust domain of its sub is not trusted here",
        )

    def test_not_a_spiffe_id(self) -> None:
        token = self.spiffe.key.sign({**self.spiffe.claims(now=self.now), "sub": "api"})
        self.refused(
            self.with_assertion(token, assertion_type=JWT_SPIFFE),
            "a JWT-SVID's sub must be a SPIFFE ID",
        )
        self.refused(
            self.with_assertion("not.a.jws", assertion_type=JWT_SPIFFE), "malformed JWS"
        )

    def test_sole_audience(self) -> None:
        """
        The draft: aud names this server as its sole value.
        """
        self.refused(
            self.with_assertion(self.svid(audience=[ISSUER, "https://other.example"])),
            "the aud claim must name this server, and nothing else",
        )

    def test_x509_keys_of_the_bundle_never_verify(self) -> None:
        """
        The bundle's x509-svid key signs certificates, not JWT-SVIDs.
        """
        ca = SigningKey(self.spiffe.ca.key, "ES256", None)
        self.refused(
            self.with_assertion(ca.sign(self.spiffe.claims(now=self.now))),
            "the signature does not verify with its issuer's keys",
        )

    def test_bundle_refresh_hint(self) -> None:
        """
        The bundle is kept for its spiffe_refresh_hint (SPIFFE Federation):
        here 120 s, not the default 300.
        """
        self.spiffe.refresh_hint = 120
        self.clock.advance(301)
        self.issued_to(self.with_assertion(self.svid()), self.client)
        hits = self.platforms.hits[SPIFFE_BUNDLE_PATH]
        self.clock.advance(119)
        self.issued_to(self.with_assertion(self.svid()), self.client)
        self.assertEqual(self.platforms.hits[SPIFFE_BUNDLE_PATH], hits)
        self.clock.advance(2)
        self.issued_to(self.with_assertion(self.svid()), self.client)
        self.assertEqual(self.platforms.hits[SPIFFE_BUNDLE_PATH], hits + 1)

    def test_trust_domain_rotation(self) -> None:
        self.issued_to(self.with_assertion(self.svid()), self.client)
        self.spiffe.rotate()
        self.issued_to(self.with_assertion(self.svid()), self.client)

    def test_trust_domain_of(self) -> None:
        self.assertEqual(spiffe_trust_domain("spiffe://a.example/x/y"), "spiffe://a.example")
        for value in ("spiffe://a.example", "spiffe://a.example/", "spiffe:///x", "https://a/x", 7):
            self.assertIsNone(spiffe_trust_domain(value), value)


class CITests(FederationTestCase):
    """
    A CI job's token (GitHub Actions), bound with claim conditions: the
    repository and the environment must be exactly these.
    """

    def setUp(self) -> None:
        super().setUp()
        self.client = self.bind(
            {
                "issuer": GITHUB_ISSUER,
                "subject": CI_SUBJECT,
                "claims": {"repository": "octo-org/octo-repo", "ref": "refs/heads/main"},
            }
        )

    def ci(self, **claims: Any) -> str:
        claims.setdefault("now", self.now)
        return self.github.token(**claims)

    def test_conditions_met(self) -> None:
        self.issued_to(self.with_assertion(self.ci()), self.client)
        self.issued_to(self.with_grant(self.ci()), self.client)

    def test_condition_not_met(self) -> None:
        self.refused(
            self.with_assertion(self.ci(ref="refs/heads/feature")),
            "no client is bound to this workload identity with conditions its claims meet",
        )

    def test_condition_claim_missing_or_not_a_string(self) -> None:
        claims = self.github.claims(now=self.now)
        for changed in ({"ref": None}, {"ref": ["refs/heads/main"]}, {"repository": 7}):
            token = self.github.key.sign({**claims, **changed})
            self.refused(self.with_assertion(token), "with conditions its claims meet")

    def test_other_subject(self) -> None:
        """
        Another repository's job (any GitHub repository can get a token for
        this audience): its subject is bound to nothing.
        """
        self.refused(
            self.with_assertion(self.ci(repository="evil/fork")),
            "no client is bound to this workload identity",
        )
        logged = " ".join(formatEvent(e) for e in self.logged)
        self.assertIn("repo:evil/fork:environment:production", logged)

    def test_one_subject_two_clients_by_conditions(self) -> None:
        """
        One subject bound to two clients with different conditions: each
        token finds the one whose conditions it meets.
        """
        feature = self.bind(
            {
                "issuer": GITHUB_ISSUER,
                "subject": CI_SUBJECT,
                "claims": {"repository": "octo-org/octo-repo", "ref": "refs/heads/feature"},
            }
        )
        self.issued_to(self.with_assertion(self.ci()), self.client)
        self.issued_to(self.with_assertion(self.ci(ref="refs/heads/feature")), feature)

    def test_bound_to_several_clients(self) -> None:
        """
        A token that meets the conditions of two clients' bindings names
        the one it wants with client_id; without, it is told to.
        """
        other = self.bind({"issuer": GITHUB_ISSUER, "subject": CI_SUBJECT})
        self.refused(self.with_assertion(self.ci()), "send client_id to name one")
        self.issued_to(self.with_assertion(self.ci(), self.client["client_id"]), self.client)
        self.issued_to(self.with_assertion(self.ci(), other["client_id"]), other)


class RefusalTests(FederationTestCase):
    """
    Every way a workload token is refused (issue 21 item 6): each a 401
    invalid_client that says what is wrong, and no token.
    """

    def setUp(self) -> None:
        super().setUp()
        self.client = self.bind()
        self.claims = self.cluster.claims(now=self.now)

    def signed(self, key: SigningKey | None = None, **changes: Any) -> str:
        claims = {**self.claims, **changes}
        return (key or self.cluster.signing).sign({k: v for k, v in claims.items() if v is not None})

    def test_wrong_issuer(self) -> None:
        self.refused(
            self.with_assertion(self.signed(iss="https://attacker.example")),
            "its issuer is not trusted here",
        )

    def test_untrusted_issuer_with_a_trusted_issuers_kid(self) -> None:
        """
        An untrusted issuer's token is refused before any key is looked at.
        """
        self.refused(
            self.with_assertion(self.signed(kubernetes_key(), iss=CLUSTER + "/")),
            "its issuer is not trusted here",
        )

    def test_issuer_of_another_trusted_issuer(self) -> None:
        """
        A token signed by the cluster but claiming GitHub's iss is checked
        against GitHub's keys, and fails there.
        """
        self.refused(
            self.with_assertion(self.signed(iss=GITHUB_ISSUER)),
            "no key of its issuer has this kid",
        )

    def test_wrong_audience(self) -> None:
        self.refused(
            self.with_assertion(self.signed(aud=["https://other.example"])),
            "the aud claim must name this server",
        )

    def test_audience_shared_with_another_service(self) -> None:
        """
        A token also meant for another service could be replayed here by
        that service: every aud must be this server's.
        """
        self.refused(
            self.with_assertion(self.signed(aud=[ISSUER, "https://other.example"])),
            "and nothing else",
        )

    def test_token_endpoint_as_audience(self) -> None:
        self.issued_to(self.with_assertion(self.signed(aud=ISSUER + "/token")), self.client)

    def test_wrong_subject(self) -> None:
        self.refused(
            self.with_assertion(self.signed(sub="system:serviceaccount:billing:other")),
            "no client is bound to this workload identity",
        )

    def test_wrong_key(self) -> None:
        """
        Signed by another key under the cluster's kid.
        """
        forged = SigningKey(kubernetes_key().key, "RS256", self.cluster.signing.kid)
        self.refused(
            self.with_assertion(self.signed(forged)),
            "the signature does not verify with its issuer's keys",
        )

    def test_unknown_kid(self) -> None:
        self.refused(self.with_assertion(self.signed(kubernetes_key())), "no key of its issuer has this kid")

    def test_expired(self) -> None:
        self.clock.advance(3600 + 31)
        self.refused(self.with_assertion(self.signed()), "the JWT has expired")

    def test_expired_within_leeway(self) -> None:
        self.clock.advance(3600 + 29)
        self.issued_to(self.with_assertion(self.signed()), self.client)

    def test_not_yet_valid(self) -> None:
        self.refused(self.with_assertion(self.signed(nbf=self.now + 120)), "not valid yet")

    def test_issued_in_the_future(self) -> None:
        self.refused(
            self.with_assertion(self.signed(iat=self.now + 120, nbf=None)), "iat is in the future"
        )

    def test_too_long_lived(self) -> None:
        """
        A token valid for longer than max_token_lifetime (a day by default)
        is refused, however fresh: a year-long legacy token, for one.
        """
        self.refused(
            self.with_assertion(self.signed(exp=self.now + 86401)),
            "valid for 86401 seconds (exp - iat), more than the 86400",
        )
        self.issued_to(self.with_assertion(self.signed(exp=self.now + 86400)), self.client)

    def test_too_long_lived_without_iat(self) -> None:
        self.refused(
            self.with_assertion(self.signed(iat=None, exp=self.now + 90000)),
            "it has no iat, and its exp is more than 86400 seconds ahead",
        )
        self.issued_to(self.with_assertion(self.signed(iat=None)), self.client)

    def test_alg_none(self) -> None:
        header = {"alg": "none", "kid": self.cluster.signing.kid}
        for token in (unsigned(header, self.claims), unsigned(header, self.claims, b"x")):
            self.refused(self.with_assertion(token), "must be signed with one of RS256")

    def test_hs256_with_the_public_key(self) -> None:
        """
        The classic confusion: an HMAC keyed with the issuer's public key,
        which anyone can read.
        """
        public = self.cluster.signing.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = {"alg": "HS256", "kid": self.cluster.signing.kid, "typ": "JWT"}
        signing_input = unsigned(header, self.claims).rsplit(".", 1)[0]
        signature = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
        token = unsigned(header, self.claims, signature)
        self.refused(self.with_assertion(token), "must be signed with one of RS256")

    def test_required_claims(self) -> None:
        for name in ("exp", "aud", "sub"):
            self.refused(
                self.with_assertion(self.signed(**{name: None})), f"the {name} claim is missing"
            )

    def test_malformed_claims(self) -> None:
        for changes, description in (
            ({"exp": "soon"}, "the exp claim is not a NumericDate"),
            ({"iat": True}, "the iat claim is not a NumericDate"),
            ({"aud": [ISSUER, 7]}, "the aud claim must be a string or strings"),
            ({"sub": 7}, "the sub claim must be a string"),
            ({"sub": "x" * 2049}, "the sub claim must be at most 2048 characters"),
            ({"sub": "a\u202eb"}, "the sub claim must be printable characters only"),
        ):
            self.refused(self.with_assertion(self.signed(**changes)), description)

    def test_critical_header(self) -> None:
        token = self.cluster.signing.sign(self.claims, crit=["exp"])
        self.refused(self.with_assertion(token), "critical extensions")

    def test_too_long(self) -> None:
        self.refused(
            self.with_assertion(self.signed(padding="x" * 9000)), "longer than 8192 bytes"
        )

    def test_client_id_of_another_client(self) -> None:
        other = self.register(scope="read")
        self.refused(
            self.with_assertion(self.signed(), other["client_id"]),
            "client_id names no client bound to this workload identity",
        )
        self.refused(
            self.with_assertion(self.signed(), "no-such-client"),
            "client_id names no client bound to this workload identity",
        )

    def test_with_another_method_too(self) -> None:
        response = self.token(
            {
                "grant_type": "client_credentials",
                "client_assertion_type": JWT_BEARER,
                "client_assertion": self.signed(),
            },
            basic("x", "y"),
        )
        self.assertEqual(response.code, 400, response.body)
        self.assertIn("more than one method", response.json()["error_description"])

    def test_deleted_client(self) -> None:
        self.issued_to(self.with_assertion(self.signed()), self.client)
        deleted = self.request(
            "DELETE",
            f"/client-reg/{self.client['client_id']}",
            headers={"Authorization": f"Bearer {MASTER_TOKEN}"},
        )
        self.assertEqual(deleted.code, 204)
        self.refused(self.with_assertion(self.signed()), "no client is bound")

    def test_no_access_token_in_any_refusal(self) -> None:
        response = self.with_assertion(self.signed(aud="https://other.example"))
        self.assertNotIn("access_token", response.json())
        self.assertEqual(response.headers["cache-control"], "no-store")


class JWTBearerGrantTests(FederationTestCase):
    """
    RFC 7523 §2.1: the workload's token as the grant's assertion.
    """

    def test_grant(self) -> None:
        client = self.bind()
        response = self.with_grant(self.k8s(), scope="read")
        claims = self.issued_to(response, client)
        self.assertEqual(claims["scope"], "read")
        self.assertEqual(response.json()["token_type"], "Bearer")

    def test_refusals_are_invalid_grant(self) -> None:
        """
        RFC 7521 §4.1.1: an assertion that is not valid is 400
        invalid_grant, saying what is wrong as the client assertion would.
        """
        self.bind()
        for token, description in (
            (self.k8s(audience="https://other.example"), "assertion: the aud claim must name"),
            (self.k8s(account="other"), "assertion: no client is bound"),
            (self.k8s(lifetime=90000), "assertion: it is valid for 90000 seconds"),
            ("not-a-jwt", "assertion: not a token of an issuer this server trusts"),
            (
                self.cluster.signing.sign({**self.cluster.claims(now=self.now), "iss": "https://x.example"}),
                "assertion: its issuer is not trusted here",
            ),
        ):
            self.refused(self.with_grant(token), description, status=400)

    def test_assertion_missing(self) -> None:
        response = self.token({"grant_type": JWT_BEARER_GRANT})
        self.assertEqual(response.code, 400)
        self.assertEqual(response.json()["error"], "invalid_request")
        self.assertEqual(response.json()["error_description"], "assertion: missing")

    def test_no_other_credentials(self) -> None:
        client = self.register(scope="read")
        response = self.token(
            {"grant_type": JWT_BEARER_GRANT, "assertion": self.k8s()},
            basic(client["client_id"], client["client_secret"]),
        )
        self.assertEqual(response.code, 400, response.body)
        self.assertIn("send no other client credentials", response.json()["error_description"])
        response = self.token(
            {"grant_type": JWT_BEARER_GRANT, "assertion": self.k8s(), "client_secret": "s"}
        )
        self.assertIn("client_secret", response.json()["error_description"])

    def test_client_not_registered_for_the_grant(self) -> None:
        client = self.bind(grant_types=["client_credentials"])
        response = self.with_grant(self.k8s())
        self.assertEqual(response.code, 400, response.body)
        self.assertEqual(response.json()["error"], "unauthorized_client")
        self.issued_to(self.with_assertion(self.k8s()), client)

    def test_client_credentials_only_if_registered(self) -> None:
        self.bind(grant_types=[JWT_BEARER_GRANT])
        response = self.with_assertion(self.k8s())
        self.assertEqual(response.json()["error"], "unauthorized_client")

    def test_not_offered_without_trusted_issuers(self) -> None:
        """
        The grant exists only with trusted issuers (ServerTestCase has none).
        """

        class Plain(ServerTestCase):
            def runTest(self) -> None:
                pass

        plain = Plain()
        plain.setUp()
        response = plain.token({"grant_type": JWT_BEARER_GRANT, "assertion": "x"})
        self.assertEqual(response.json()["error"], "unsupported_grant_type")
        response = plain.token(
            {
                "grant_type": "client_credentials",
                "client_assertion_type": JWT_SPIFFE,
                "client_assertion": "x",
            }
        )
        self.assertEqual(response.json()["error"], "invalid_client")
        self.assertIn("client_assertion_type", response.json()["error_description"])


class EverythingElseTests(FederationTestCase):
    """
    Issue 21 item 5: a federated client keeps every other rule.
    """

    def test_scope_whitelist(self) -> None:
        self.bind()
        response = self.with_assertion(self.k8s(), scope="read admin")
        self.assertEqual(response.code, 400)
        self.assertEqual(response.json()["error"], "invalid_scope")

    def test_audience_and_resources(self) -> None:
        api = "https://api.example.com"
        client = self.bind(audience=[api])
        response = self.with_assertion(self.k8s(), resource=api)
        claims = self.verify(response.json()["access_token"], audience=api)
        self.assertEqual(claims["client_id"], client["client_id"])
        refused = self.with_assertion(self.k8s(), resource="https://other.example")
        self.assertEqual(refused.json()["error"], "invalid_target")

    def test_dpop_bound(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        from jwt.algorithms import ECAlgorithm

        self.bind(dpop_bound_access_tokens=True)
        self.assertEqual(self.with_assertion(self.k8s()).code, 400)
        proof = jwt.encode(
            {"jti": "p1", "htm": "POST", "htu": ISSUER + "/token", "iat": int(self.now)},
            key,
            algorithm="ES256",
            headers={"typ": "dpop+jwt", "jwk": ECAlgorithm.to_jwk(key.public_key(), as_dict=True)},
        )
        body = urlencode(
            {
                "grant_type": "client_credentials",
                "client_assertion_type": JWT_BEARER,
                "client_assertion": self.k8s(),
            }
        ).encode()
        response = self.request(
            "POST",
            "/token",
            headers={"Content-Type": "application/x-www-form-urlencoded", "DPoP": proof},
            data=body,
        )
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json()["token_type"], "DPoP")
        self.assertIn("jkt", self.verify(response.json()["access_token"])["cnf"])


class MetricsTests(FederationTestCase):
    def make_metrics(self) -> Any:
        from prometheus_client import CollectorRegistry

        from ccserver.metrics import Metrics
        from ccserver.web import ROUTES, route_template

        self.metrics = Metrics(CollectorRegistry(), route_template, ROUTES)
        return self.metrics

    def test_counted_by_method_and_error(self) -> None:
        self.bind()
        self.assertEqual(self.with_assertion(self.k8s()).code, 200)
        self.assertEqual(self.with_grant(self.k8s()).code, 200)
        self.with_grant(self.k8s(audience="https://other.example"))
        self.with_assertion(self.k8s(audience="https://other.example"))
        registry = self.metrics.registry
        issued = registry.get_sample_value(
            "ccserver_tokens_issued_total",
            {"format": "jwt", "alg": "RS256", "auth_method": "federated_jwt"},
        )
        self.assertEqual(issued, 2)
        for error in ("invalid_grant", "invalid_client"):
            self.assertEqual(
                registry.get_sample_value("ccserver_token_errors_total", {"error": error}), 1
            )


class IssuanceLimitTests(FederationTestCase):
    extra_config = """
[limits]
tokens_per_client_per_second = 1
"""

    def test_issuance_limit(self) -> None:
        self.bind()
        self.assertEqual(self.with_assertion(self.k8s()).code, 200)
        self.assertEqual(self.with_grant(self.k8s()).code, 429)
        self.clock.advance(1)
        self.assertEqual(self.with_grant(self.k8s()).code, 200)


class BruteForceTests(FederationTestCase):
    """
    Failed workload tokens count against the workload identity they name,
    from their source: past the budget (10 a minute) that identity gets
    429 from that source, whichever client it aims at; another identity
    does not.
    """

    def test_counted_by_the_binding(self) -> None:
        client = self.bind()
        other = self.bind({"issuer": CLUSTER, "subject": "system:serviceaccount:billing:other"})
        wrong = self.k8s(audience="https://elsewhere.example")
        for _ in range(10):
            self.assertEqual(self.with_assertion(wrong).code, 401)
        refused = self.with_assertion(self.k8s())
        self.assertEqual(refused.code, 429, refused.body)
        self.assertTrue(refused.headers["retry-after"].isdigit())
        # the same identity through the grant, or naming its client: the same count
        self.assertEqual(self.with_grant(self.k8s()).code, 429)
        self.assertEqual(self.with_assertion(self.k8s(), client["client_id"]).code, 429)
        # another identity is not affected
        self.issued_to(self.with_assertion(self.k8s(account="other")), other)
        self.clock.advance(61)
        self.issued_to(self.with_assertion(self.k8s()), client)

    def test_grant_failures_counted_too(self) -> None:
        self.bind()
        wrong = self.k8s(audience="https://elsewhere.example")
        for _ in range(10):
            self.assertEqual(self.with_grant(wrong).code, 400)
        self.assertEqual(self.with_assertion(self.k8s()).code, 429)

    def test_burst_in_flight(self) -> None:
        """
        Twenty bad tokens at once: the first ten are answered as refused,
        the rest (and the good token after them) with 429.
        """
        self.bind()
        wrong = self.k8s(audience="https://elsewhere.example")
        body = urlencode(
            {"grant_type": "client_credentials", "client_assertion_type": JWT_BEARER, "client_assertion": wrong}
        ).encode()
        pending = [
            self.treq.post(
                ISSUER + "/token",
                data=body,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            for _ in range(20)
        ]
        codes = sorted(self.successResultOf(p).code for p in pending)
        self.assertEqual(codes, [401] * 10 + [429] * 10)
        self.assertEqual(self.with_assertion(self.k8s()).code, 429)


@implementer(IClientCredentialsGrantHandler)
class RecordingHandler:
    """
    A grant handler that decides on the workload's claims: only pods of
    the billing namespace get "write".
    """

    def __init__(self) -> None:
        self.grants: list[GrantRequest] = []

    def authorize(self, grant: GrantRequest) -> GrantAuthorization:
        self.grants.append(grant)
        workload = grant.workload
        scope = {"read"}
        if workload is not None and workload.claims["kubernetes.io"]["namespace"] == "billing":
            scope.add("write")
        return GrantAuthorization(scope=scope)


class HandlerTests(FederationTestCase):
    def make_handler(self) -> IClientCredentialsGrantHandler:
        self.handler = RecordingHandler()
        return self.handler

    def test_handler_sees_the_workload(self) -> None:
        client = self.bind(
            {"issuer": CLUSTER, "subject": ACCOUNT},
            {"issuer": CLUSTER, "subject": "system:serviceaccount:batch:api"},
        )
        self.assertEqual(self.with_assertion(self.k8s()).json()["scope"], "read write")
        self.assertEqual(self.with_grant(self.k8s(namespace="batch")).json()["scope"], "read")
        first, second = self.handler.grants
        assert first.workload is not None and second.workload is not None
        self.assertEqual(first.client.client_id, client["client_id"])
        self.assertEqual(first.workload.issuer, CLUSTER)
        self.assertEqual(first.workload.subject, ACCOUNT)
        self.assertEqual(first.workload.claims["kubernetes.io"]["serviceaccount"]["name"], "api")
        self.assertEqual(second.workload.subject, "system:serviceaccount:batch:api")
        self.assertEqual((first.grant_type, second.grant_type), ("client_credentials", JWT_BEARER_GRANT))
        # credentials never reach the handler as parameters
        self.assertEqual(dict(second.params), {})

    def test_no_workload_for_other_clients(self) -> None:
        client = self.register(scope="read")
        self.token(
            {"grant_type": "client_credentials"}, basic(client["client_id"], client["client_secret"])
        )
        self.assertIsNone(self.handler.grants[0].workload)

    def test_webhook_document(self) -> None:
        from ccserver.handlers.webhook import request_document
        from ccserver.model import Client, WorkloadIdentity

        client = Client("c", 0, {}, "", "")
        grant = GrantRequest(
            client, None, workload=WorkloadIdentity(CLUSTER, ACCOUNT, {"sub": ACCOUNT})
        )
        self.assertEqual(
            request_document(grant)["workload"],
            {"issuer": CLUSTER, "subject": ACCOUNT, "claims": {"sub": ACCOUNT}},
        )
        self.assertNotIn("workload", request_document(GrantRequest(client, None)))


class RegistrationTests(FederationTestCase):
    """
    Binding a client to a workload (issue 21 item 2): privileged metadata,
    trusted issuers only, one client per binding.
    """

    def register_response(self, token: str = MASTER_TOKEN, **metadata: Any) -> Response:
        return self.request(
            "POST",
            "/client-reg",
            headers={"Authorization": f"Bearer {token}"},
            json_body=metadata,
        )

    def refused_metadata(self, response: Response, *words: str) -> None:
        self.assertEqual(response.code, 400, response.body)
        self.assertEqual(response.json()["error"], "invalid_client_metadata")
        for word in words:
            self.assertIn(word, response.json()["error_description"])

    def test_stored_as_given(self) -> None:
        client = self.bind(
            {"issuer": GITHUB_ISSUER, "subject": CI_SUBJECT, "claims": {"ref": "r", "a": "b"}}
        )
        self.assertEqual(
            client["federated_identities"],
            [{"issuer": GITHUB_ISSUER, "subject": CI_SUBJECT, "claims": {"a": "b", "ref": "r"}}],
        )
        read = self.request(
            "GET",
            f"/client-reg/{client['client_id']}",
            headers={"Authorization": f"Bearer {client['registration_access_token']}"},
        )
        self.assertEqual(read.json()["federated_identities"], client["federated_identities"])

    def test_untrusted_issuer(self) -> None:
        self.refused_metadata(
            self.register_response(
                federated_identities=[{"issuer": "https://attacker.example", "subject": "x"}]
            ),
            "federated_identities[0].issuer",
            "is not a trusted issuer of this server",
        )

    def test_taken_binding(self) -> None:
        self.bind()
        self.refused_metadata(
            self.register_response(
                federated_identities=[{"issuer": CLUSTER, "subject": ACCOUNT}]
            ),
            "federated_identities",
            "bound to another client already",
        )
        # with conditions, the same subject is another binding
        self.bind(
            {"issuer": CLUSTER, "subject": ACCOUNT, "claims": {"kubernetes.io": "never a string"}}
        )

    def test_malformed_bindings(self) -> None:
        for value, words in (
            ([], "non-empty array"),
            ({}, "non-empty array"),
            ([CLUSTER], "must be an object"),
            ([{"issuer": CLUSTER}], "federated_identities[0].subject must be a string"),
            ([{"issuer": CLUSTER, "subject": ""}], "subject must not be empty"),
            ([{"issuer": CLUSTER, "subject": "a\nb"}], "must be printable characters only"),
            ([{"issuer": CLUSTER, "subject": "x" * 2049}], "must be at most 2048 characters"),
            ([{"issuer": CLUSTER, "subject": "s", "claim": {"a": "b"}}], "unknown member 'claim'"),
            ([{"issuer": CLUSTER, "subject": "s", "claims": {"a": 1}}], "claims.a must be a string"),
            ([{"issuer": CLUSTER, "subject": "s", "claims": ["a"]}], "at most 16 claims"),
            ([{"issuer": CLUSTER, "subject": "s", "claims": {"aud": "x"}}], "checked on its own"),
            (
                [{"issuer": CLUSTER, "subject": "s", "claims": {str(i): "v" for i in range(17)}}],
                "at most 16 claims",
            ),
            ([{"issuer": CLUSTER, "subject": "s"}] * 2, "the same binding is given twice"),
            ([{"issuer": CLUSTER, "subject": str(i)} for i in range(21)], "more than 20"),
            ([{"issuer": SPIFFE, "subject": "spiffe://other.example/x"}], "a SPIFFE ID of the trust domain"),
            ([{"issuer": 7, "subject": "s"}], "issuer must be a string"),
        ):
            self.refused_metadata(
                self.register_response(federated_identities=value), *words.split("|")
            )

    def test_method_and_bindings_go_together(self) -> None:
        self.refused_metadata(
            self.register_response(token_endpoint_auth_method="federated_jwt"),
            "federated_identities: federated_jwt needs",
        )
        self.refused_metadata(
            self.register_response(
                token_endpoint_auth_method="client_secret_basic",
                federated_identities=[{"issuer": CLUSTER, "subject": ACCOUNT}],
            ),
            "federated_identities: only for token_endpoint_auth_method federated_jwt",
        )
        self.refused_metadata(
            self.register_response(grant_types=[JWT_BEARER_GRANT]),
            f"grant_types: {JWT_BEARER_GRANT} is for federated_jwt clients",
        )

    def replace(self, client: dict[str, Any], token: str, **metadata: Any) -> Response:
        """
        PUT the client's configuration with this token (RFC 7592 §2.2).
        """
        return self.request(
            "PUT",
            f"/client-reg/{client['client_id']}",
            headers={"Authorization": f"Bearer {token}"},
            json_body={"client_id": client["client_id"], **metadata},
        )

    @staticmethod
    def as_registered(client: dict[str, Any]) -> dict[str, Any]:
        """
        The client's metadata as registered, to send back unchanged.
        """
        server_set = ("registration_access_token", "registration_client_uri", "client_id_issued_at")
        return {k: v for k, v in client.items() if k not in server_set}

    def test_not_with_the_clients_own_token(self) -> None:
        """
        A binding set with the client's own registration access token is
        refused, naming the fields: a client that could bind itself to a
        workload could take that workload's identity.
        """
        client = self.register(scope="read")
        response = self.replace(
            client,
            client["registration_access_token"],
            scope="read",
            token_endpoint_auth_method="federated_jwt",
            federated_identities=[{"issuer": CLUSTER, "subject": ACCOUNT}],
        )
        self.refused_metadata(
            response, "token_endpoint_auth_method", "federated_identities", "only the master token"
        )
        self.refused(self.with_assertion(self.k8s()), "no client is bound")

    def test_not_changed_with_the_clients_own_token(self) -> None:
        client = self.bind()
        token = client["registration_access_token"]
        body = self.as_registered(client)
        same = self.replace(client, token, **{**body, "client_name": "n"})
        self.assertEqual(same.code, 200, same.body)
        self.refused_metadata(
            self.replace(
                client, token, **{**body, "federated_identities": [{"issuer": CLUSTER, "subject": "x"}]}
            ),
            "federated_identities: only the master token",
        )
        # in another order, the same bindings are no change
        twice = self.bind({"issuer": CLUSTER, "subject": "a"}, {"issuer": CLUSTER, "subject": "b"})
        body = self.as_registered(twice)
        body["federated_identities"] = list(reversed(body["federated_identities"]))
        response = self.replace(twice, twice["registration_access_token"], **body)
        self.assertEqual(response.code, 200, response.body)

    def test_master_token_changes_them(self) -> None:
        client = self.bind()
        taken = self.bind({"issuer": CLUSTER, "subject": "system:serviceaccount:billing:taken"})
        new = [{"issuer": CLUSTER, "subject": "system:serviceaccount:billing:new"}]
        moved = self.replace(client, MASTER_TOKEN, scope="read", federated_identities=new)
        self.assertEqual(moved.code, 200, moved.body)
        self.refused(self.with_assertion(self.k8s()), "no client is bound")
        self.issued_to(self.with_assertion(self.k8s(account="new")), client)
        conflict = self.replace(
            client, MASTER_TOKEN, scope="read", federated_identities=taken["federated_identities"]
        )
        self.refused_metadata(conflict, "bound to another client already")
        self.issued_to(self.with_assertion(self.k8s(account="new")), client)

    def test_no_trusted_issuers(self) -> None:
        from ccserver.oauth.registration import validate_metadata

        with self.assertRaises(Exception) as caught:
            validate_metadata({"federated_identities": [{"issuer": CLUSTER, "subject": "s"}]})
        self.assertIn("this server has none", str(caught.exception))


class DiscoveryTests(FederationTestCase):
    def test_advertised(self) -> None:
        document = self.request("GET", "/.well-known/oauth-authorization-server").json()
        self.assertIn("federated_jwt", document["token_endpoint_auth_methods_supported"])
        self.assertIn("federated_jwt", document["introspection_endpoint_auth_methods_supported"])
        self.assertEqual(document["grant_types_supported"][:2], ["client_credentials", JWT_BEARER_GRANT])

    def test_not_advertised_without_trusted_issuers(self) -> None:
        from ccserver.oauth.discovery import metadata

        document = metadata(ISSUER, "RS256")
        self.assertNotIn("federated_jwt", document["token_endpoint_auth_methods_supported"])
        self.assertNotIn(JWT_BEARER_GRANT, document["grant_types_supported"])


class KeySetFileTests(SynchronousTestCase):
    """
    A trusted issuer's keys in a file (kubectl get --raw /openid/v1/jwks
    saved; a SPIFFE bundle): read again whenever it changes.
    """

    def setUp(self) -> None:
        self.path = temp_dir(self) / "jwks.json"
        self.first, self.second = kubernetes_key(), kubernetes_key()
        self.write({"keys": [self.first.jwk]})
        self.file = KeySetFile(str(self.path), 100)

    def write(self, document: Any) -> None:
        # a new file put in place, as a ConfigMap's update or mv does
        new = self.path.with_suffix(".new")
        new.write_text(json.dumps(document) if not isinstance(document, str) else document)
        new.replace(self.path)

    def kids(self) -> list[str | None]:
        return [key.kid for key in self.file.key_set().keys]

    def test_read_again_when_changed(self) -> None:
        self.assertEqual(self.kids(), [self.first.kid])
        self.write({"keys": [self.second.jwk, self.first.jwk]})
        self.assertEqual(self.kids(), [self.second.kid, self.first.kid])

    def test_broken_file_keeps_the_last_keys(self) -> None:
        logged: list[Mapping[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        self.assertEqual(self.kids(), [self.first.kid])
        self.write("{not json")
        self.assertEqual(self.kids(), [self.first.kid])
        self.assertEqual(self.kids(), [self.first.kid])
        self.path.unlink()
        self.assertEqual(self.kids(), [self.first.kid])
        warnings = [formatEvent(e) for e in logged if "Could not read the JWK set" in formatEvent(e)]
        self.assertEqual(len(warnings), 2, warnings)
        self.assertIn("the keys read before stay in use", warnings[0])
        self.write({"keys": [self.second.jwk]})
        self.assertEqual(self.kids(), [self.second.kid])

    def test_never_read(self) -> None:
        self.path.unlink()
        with self.assertRaises(KeySetUnavailable):
            KeySetFile(str(self.path), 100).key_set()

    def test_too_large(self) -> None:
        self.write({"keys": [], "pad": "x" * 70_000})
        with self.assertRaises(KeySetUnavailable):
            KeySetFile(str(self.path), 100).key_set()


class KeyFileServerTests(FederationTestCase):
    """
    A cluster trusted through a file of its keys, and a SPIFFE trust
    domain through its bundle file.
    """

    def make_config(self, **tokens: Any) -> Config:
        self.folder = temp_dir(self)
        self.platforms_for_files = Platforms("https://files.example")
        self.file_cluster = self.platforms_for_files.cluster
        self.file_domain = self.platforms_for_files.spiffe
        (self.folder / "cluster.json").write_text(json.dumps(self.file_cluster.jwks()))
        (self.folder / "bundle.json").write_text(json.dumps(self.file_domain.bundle()))
        path = self.folder / "ccserver.toml"
        path.write_text(
            f"""
issuer = "{ISSUER}"
[store]
url = "memory://"
[[trusted_issuers]]
issuer = "{self.file_cluster.issuer}"
jwks_file = "{self.folder / 'cluster.json'}"
[[trusted_issuers]]
issuer = "{self.file_domain.id}"
jwks_file = "{self.folder / 'bundle.json'}"
"""
        )
        return load_config({"config": str(path)}, {})

    def test_cluster_keys_file_rotated(self) -> None:
        client = self.register(
            federated_identities=[{"issuer": self.file_cluster.issuer, "subject": ACCOUNT}]
        )
        self.issued_to(self.with_assertion(self.file_cluster.token(now=self.now)), client)
        self.file_cluster.rotate()
        self.refused(
            self.with_assertion(self.file_cluster.token(now=self.now)),
            "no key of its issuer has this kid",
        )
        new = self.folder / "new.json"
        new.write_text(json.dumps(self.file_cluster.jwks()))
        new.replace(self.folder / "cluster.json")
        self.issued_to(self.with_assertion(self.file_cluster.token(now=self.now)), client)
        self.assertEqual(self.platforms.hits, {})

    def test_spiffe_bundle_file(self) -> None:
        client = self.register(
            federated_identities=[
                {"issuer": self.file_domain.id, "subject": self.file_domain.id + "/web"}
            ]
        )
        svid = self.file_domain.svid(path="/web", now=self.now)
        self.issued_to(self.with_assertion(svid, assertion_type=JWT_SPIFFE), client)


class StartupTests(SynchronousTestCase):
    """
    What the daemon checks of [[trusted_issuers]] before it starts.
    """

    def load(self, text: str) -> Config:
        path = temp_dir(self) / "ccserver.toml"
        path.write_text(text)
        return load_config({"config": str(path)}, {})

    def test_key_file_checked_at_start(self) -> None:
        from ccserver.errors import ConfigError
        from ccserver.tap import check_key_files

        folder = temp_dir(self)
        missing = folder / "missing.json"
        config = self.load(
            f'[[trusted_issuers]]\nissuer = "https://i.example"\njwks_file = "{missing}"\n'
        )
        with self.assertRaises(OSError):
            check_key_files(config)
        missing.write_text("[]")
        with self.assertRaises(ConfigError) as caught:
            check_key_files(config)
        self.assertIn("is not a JWK set", str(caught.exception))
        missing.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
        with self.assertRaises(ConfigError) as caught:
            check_key_files(config)
        self.assertIn("holds no public key that signs tokens", str(caught.exception))
        bundle = folder / "bundle.json"
        domain = Platforms("https://x").spiffe
        only_x509 = {**domain.bundle(), "keys": domain.bundle()["keys"][:1]}
        bundle.write_text(json.dumps(only_x509))
        config = self.load(
            f'[[trusted_issuers]]\nissuer = "spiffe://x.example"\njwks_file = "{bundle}"\n'
        )
        with self.assertRaises(ConfigError) as caught:
            check_key_files(config)
        self.assertIn("JWT-SVIDs (use: jwt-svid)", str(caught.exception))
        bundle.write_text(json.dumps(domain.bundle()))
        check_key_files(config)

    def test_warnings_for_http_and_private_addresses(self) -> None:
        from ccserver.assembly import warn_about_issuer_urls

        logged: list[Mapping[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        config = self.load(
            """
[[trusted_issuers]]
issuer = "http://oidc.cluster.internal"
[[trusted_issuers]]
issuer = "https://10.0.0.1/issuer"
[[trusted_issuers]]
issuer = "http://127.0.0.1:8443/k8s"
[[trusted_issuers]]
issuer = "https://oidc.example"
jwks_uri = "http://localhost:9999/jwks"
[[trusted_issuers]]
issuer = "spiffe://example.org"
jwks_uri = "https://192.168.1.5:8443"
"""
        )
        warn_about_issuer_urls(config)
        warnings = [formatEvent(e) for e in logged if "Trusted issuer" in formatEvent(e)]
        self.assertEqual(len(warnings), 3, warnings)
        self.assertIn("http://oidc.cluster.internal: it is plain http", warnings[0])
        self.assertIn("10.0.0.1 is private", warnings[1])
        self.assertIn("192.168.1.5 is private", warnings[2])

    def test_config_checks(self) -> None:
        from ccserver.errors import ConfigError

        for text, words in (
            ('[[trusted_issuers]]\njwks_uri = "https://k"\n', "issuer: missing"),
            ('[[trusted_issuers]]\nissuer = "ftp://x"\n', "is not an http or https URL"),
            ('[[trusted_issuers]]\nissuer = "https://x?q=1"\n', "no query or fragment"),
            ('[[trusted_issuers]]\nissuer = "https://x#f"\n', "no query or fragment"),
            (
                '[[trusted_issuers]]\nissuer = "https://x"\njwks_uri = "https://k"\n'
                'jwks_file = "f"\n',
                "give one, not both",
            ),
            ('[[trusted_issuers]]\nissuer = "https://x"\njwks_uri = "k"\n', "jwks_uri: 'k'"),
            ('[[trusted_issuers]]\nissuer = "spiffe://Ex.org"\njwks_file = "f"\n', "SPIFFE trust domain is spiffe://"),
            ('[[trusted_issuers]]\nissuer = "spiffe://ex.org/x"\njwks_file = "f"\n', "with no path"),
            ('[[trusted_issuers]]\nissuer = "spiffe://ex.org"\n', "needs its bundle"),
            ('[[trusted_issuers]]\nissuer = "https://x"\nmax_token_lifetime = 0\n', "max_token_lifetime: must be greater than 0"),
            ('[[trusted_issuers]]\nissuer = "https://x"\naudiences = [""]\n', "audiences"),
            ('[[trusted_issuers]]\nissuer = "https://x"\n[[trusted_issuers]]\nissuer = "https://x"\n', "given twice"),
            ('[[trusted_issuers]]\nissuer = "https://x"\ncolour = "blue"\n', "trusted_issuers[0].colour: unknown key"),
            ('trusted_issuers = ["https://x"]\n', "must be an array of tables ([[trusted_issuers]])"),
            ('[[trusted_issuers]]\nissuer = "https://x"\nmax_token_lifetime = "1h"\n', "trusted_issuers[0].max_token_lifetime: must be an integer"),
        ):
            with self.assertRaises(ConfigError, msg=text) as caught:
                self.load(text)
            self.assertIn(words, str(caught.exception), text)

    def test_defaults(self) -> None:
        config = self.load(
            'issuer = "https://as.example"\n[[trusted_issuers]]\nissuer = "https://x/"\n'
            '[[trusted_issuers]]\nissuer = "https://y"\naudiences = "https://y-aud"\n'
        )
        first, second = config.trusted_issuers
        self.assertEqual(first.issuer, "https://x/")  # as the tokens' iss has it
        self.assertEqual(first.audiences, ("https://as.example", "https://as.example/token"))
        self.assertEqual(first.max_token_lifetime, 86400)
        self.assertEqual(second.audiences, ("https://y-aud",))



class TokenExchangeTests(FederationTestCase):
    """
    RFC 8693 with workload tokens: a trusted issuer's JWT is a subject
    token of type urn:ietf:params:oauth:token-type:jwt (issue 22 item 2).
    Service B, which a pod called with the pod's own token (its audience
    B's API), exchanges it for a token for C in the pod's name.
    """

    B_API = "https://b.example/api"
    C_API = "https://c.example/api"
    JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
    TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"

    def setUp(self) -> None:
        super().setUp()
        self.b = self.register(
            client_name="B",
            scope="orders:read",
            grant_types=[self.TOKEN_EXCHANGE],
            resource_server_uris=[self.B_API],
            audience=[self.C_API],
        )

    def exchange(self, subject_token: str) -> Response:
        form = {
            "grant_type": self.TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": self.JWT_TOKEN_TYPE,
            "resource": self.C_API,
        }
        return self.token(form, basic(self.b["client_id"], self.b["client_secret"]))

    def test_workload_token_exchanged(self) -> None:
        response = self.exchange(self.k8s(audience=self.B_API))
        self.assertEqual(response.code, 200, response.body)
        claims = self.verify(response.json()["access_token"], audience=self.C_API)
        self.assertEqual(claims["sub"], ACCOUNT)
        self.assertEqual(claims["act"], {"sub": self.b["client_id"]})
        self.assertEqual(
            response.json()["issued_token_type"], "urn:ietf:params:oauth:token-type:access_token"
        )

    def test_the_exchanging_client_must_be_its_audience(self) -> None:
        response = self.exchange(self.k8s())  # for this server, not for B
        self.assertEqual(response.code, 400, response.body)
        self.assertEqual(response.json()["error"], "invalid_request")
        self.assertIn("subject_token: is not for this client", response.json()["error_description"])

    def test_checked_as_a_workload_token(self) -> None:
        for token, description in (
            (self.k8s(audience=self.B_API, lifetime=90000), "subject_token: it is valid for 90000"),
            (
                self.cluster.signing.sign(
                    {**self.cluster.claims(now=self.now), "iss": "https://x.example"}
                ),
                "subject_token: its issuer is not trusted here",
            ),
            ("not.a.jwt", "subject_token: malformed JWS"),
            (
                SigningKey(kubernetes_key().key, "RS256", self.cluster.signing.kid).sign(
                    self.cluster.claims(now=self.now, audience=self.B_API)
                ),
                "subject_token: the signature does not verify",
            ),
        ):
            response = self.exchange(token)
            self.assertEqual(response.code, 400, response.body)
            self.assertEqual(response.json()["error"], "invalid_request")
            self.assertIn(description, response.json()["error_description"])

    def test_this_servers_own_jwt(self) -> None:
        """
        This server's own JWT access token is a JWT too, checked as an
        access token is.
        """
        a = self.register(scope="orders:read", audience=[self.B_API])
        own = self.token(
            {"grant_type": "client_credentials"}, basic(a["client_id"], a["client_secret"])
        ).json()["access_token"]
        response = self.exchange(own)
        self.assertEqual(response.code, 200, response.body)
        claims = self.verify(response.json()["access_token"], audience=self.C_API)
        self.assertEqual(claims["sub"], a["client_id"])


class GrantOfferedTests(SynchronousTestCase):
    def test_not_offered_without_trusted_issuers_quietly(self) -> None:
        """
        A server without trusted issuers does not offer the JWT bearer
        grant, and says so at the info level: the usual case is no warning.
        """
        from ccserver.grants import builtin_grant_types
        from ccserver.handlers.registered_scope import RegisteredScopeHandler
        from ccserver.oauth.grants import OfferedGrants

        logged: list[Mapping[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        plain = OfferedGrants.made(builtin_grant_types(), ISSUER, RegisteredScopeHandler(), None)
        self.assertNotIn(JWT_BEARER_GRANT, plain.grants.grant_types)
        [event] = [e for e in logged if JWT_BEARER_GRANT in formatEvent(e)]
        self.assertEqual(event["log_level"].name, "info")
        self.assertIn("add [[trusted_issuers]]", formatEvent(event))
        federated = OfferedGrants.made(
            builtin_grant_types(), ISSUER, RegisteredScopeHandler(), None, True
        )
        self.assertIn(JWT_BEARER_GRANT, federated.grants.grant_types)


class IdentifyTests(FederationTestCase):
    """
    ITokenEndpoint.identify, the way a third party's grant finds the
    client a token speaks for: a trusted issuer's JWT, verified as an RFC
    8693 jwt token, speaks for the client bound to it, if it is for this
    server.
    """

    def make_grant_types(self) -> Any:
        from ccserver.grants import builtin_grant_types

        return builtin_grant_types()

    def identify(self, token: str, grant_type: str = "client_credentials") -> Any:
        from ccserver.model import TokenRequest

        endpoint = self.offered.endpoint
        request = TokenRequest({"grant_type": grant_type}, None)

        async def identified() -> Any:
            verified = await endpoint.verify_token(token, "urn:ietf:params:oauth:token-type:jwt")
            return await endpoint.identify(request, verified)

        return ensureDeferred(identified())

    def test_speaks_for_its_bound_client(self) -> None:
        client = self.bind()
        found = self.successResultOf(self.identify(self.k8s()))
        self.assertEqual(found.client_id, client["client_id"])

    def test_not_for_this_server_or_no_client(self) -> None:
        from ccserver.errors import OAuthError

        self.bind()
        for token in (self.k8s(audience="https://other.example"), self.k8s(account="nobody")):
            failure = self.failureResultOf(self.identify(token), OAuthError)
            self.assertEqual(failure.value.error, "invalid_grant")

    def test_this_servers_own_token(self) -> None:
        client = self.register(scope="read")
        own = self.token(
            {"grant_type": "client_credentials"}, basic(client["client_id"], client["client_secret"])
        ).json()["access_token"]
        found = self.successResultOf(self.identify(own))
        self.assertEqual(found.client_id, client["client_id"])


class CertificateBindingTests(FederationTestCase):
    """
    RFC 8705 §3 for a federated client: registered with
    tls_client_certificate_bound_access_tokens, its tokens are bound to the
    TLS certificate it comes with (here from a trusted proxy's header),
    and refused without one.
    """

    def make_config(self, **tokens: Any) -> Config:
        from attrs import evolve

        from ccserver.config import MTLSConfig, TLSConfig

        return evolve(
            super().make_config(),
            tls=TLSConfig(base_url="https://mtls.example"),
            mtls=MTLSConfig(proxy_header="X-Client-Cert", trusted_proxies=("127.0.0.1",)),
        )

    def make_certificates(self) -> Any:
        from ccserver.assembly import certificate_reader

        return certificate_reader(self.clock, self.config, client_ca=None)

    def test_bound_to_the_certificate(self) -> None:
        from tests.certs import make_ca

        self.bind(tls_client_certificate_bound_access_tokens=True)
        body = urlencode(
            {"grant_type": JWT_BEARER_GRANT, "assertion": self.k8s()}
        ).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        refused = self.request("POST", "/token", headers=headers, data=body)
        self.assertEqual(refused.code, 400, refused.body)
        self.assertIn("tls_client_certificate_bound_access_tokens", refused.json()["error_description"])
        certificate = make_ca("workload")
        response = self.request(
            "POST", "/token", headers={**headers, "X-Client-Cert": certificate.escaped}, data=body
        )
        self.assertEqual(response.code, 200, response.body)
        claims = self.verify(response.json()["access_token"])
        self.assertIn("x5t#S256", claims["cnf"])
