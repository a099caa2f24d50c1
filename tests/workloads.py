"""
Platforms that give workloads their identity, as the federation tests play
them: each makes real tokens, signed by PyJWT (not by ccserver's own JOSE
code) with keys of its own, in the shape its platform gives them, and
publishes its keys the way its platform does.

  - L{KubernetesCluster}: a cluster's service-account issuer.  Projected
    service-account tokens (RS256, a C{kid} that is the SHA-256 of the key's
    DER, C{kubernetes.io} claims, C{sub}
    C{system:serviceaccount:<namespace>:<name>}), OpenID discovery at
    C{<issuer>/.well-known/openid-configuration} and the JWK set at
    C{<issuer>/openid/v1/jwks}, as the API server serves them; key
    rotation (a new signing key, the old one still published, then
    dropped).
  - L{GitHubActions}: the CI's OIDC tokens (RS256, C{x5t} and C{kid},
    C{sub} C{repo:<owner>/<repo>:environment:<env>}, C{repository},
    C{environment}, C{ref}, C{job_workflow_ref} ...), its issuer
    C{https://token.actions.githubusercontent.com} and a JWK set.
  - L{SpiffeTrustDomain}: a SPIRE-like trust domain.  JWT-SVIDs (ES256,
    C{typ: JWT}, no C{iss}, C{sub} a SPIFFE ID, a short lifetime) and its
    SPIFFE bundle: a JWK set with a C{jwt-svid} key and an C{x509-svid} CA
    certificate, C{spiffe_sequence} and C{spiffe_refresh_hint}, as
    C{spire-server bundle show -format spiffe} prints it and a bundle
    endpoint serves it.

L{PlatformServer} serves all three on the loopback for the process tests;
L{platform_resource} does for the in-memory ones (through treq's StubTreq).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.web.resource import Resource
from twisted.web.server import Request

from ccserver.jose import public_jwk
from tests.certs import make_ca

#: The audience a workload asks its platform for: the server's issuer.
AUDIENCE = "https://as.example.com"
GITHUB_ISSUER = "https://token.actions.githubusercontent.com"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """
    A compact JWS put together by hand, for the forgeries (C{alg: none}).
    """
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)]
    )


class SigningKey:
    """
    A platform's signing key, and its public JWK as the platform publishes it.
    """

    def __init__(
        self, key: Any, alg: str, kid: str | None, members: dict[str, str] | None = None
    ) -> None:
        self.key = key
        self.alg = alg
        self.kid = kid
        self.members = members or {}

    @property
    def jwk(self) -> dict[str, Any]:
        jwk = {**public_jwk(self.key), **self.members}
        if self.kid is not None:
            jwk["kid"] = self.kid
        return jwk

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        headers = {"kid": self.kid, **header} if self.kid is not None else header
        return jwt.encode(claims, self.key, algorithm=self.alg, headers=headers)


#: RSA keys made so far, handed out in turn (making one costs tens of
#: milliseconds): the 16 in turn are distinct, more than one test needs.
_RSA_KEYS: list[rsa.RSAPrivateKey] = []
_next_rsa = itertools.count()


def rsa_key() -> rsa.RSAPrivateKey:
    index = next(_next_rsa) % 16
    if index == len(_RSA_KEYS):
        _RSA_KEYS.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _RSA_KEYS[index]


def kubernetes_key() -> SigningKey:
    """
    An RSA-2048 key with the kid the API server gives it: the base64url
    SHA-256 of its public key's DER (k8s.io/kubernetes serviceaccount
    keyIDFromPublicKey).
    """
    key = rsa_key()
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return SigningKey(
        key, "RS256", b64(hashlib.sha256(der).digest()), {"use": "sig", "alg": "RS256"}
    )


class KubernetesCluster:
    """
    A Kubernetes cluster's service-account token issuer.
    """

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self.keys = [kubernetes_key()]

    @property
    def signing(self) -> SigningKey:
        return self.keys[0]

    def rotate(self) -> SigningKey:
        """
        A new signing key, published beside the old one (whose tokens stay
        valid until they expire), as the API server's
        C{--service-account-key-file} lists both during a rotation.
        """
        self.keys.insert(0, kubernetes_key())
        return self.keys[0]

    def retire(self) -> None:
        """
        Drop every key but the signing one.
        """
        del self.keys[1:]

    def discovery(self) -> dict[str, Any]:
        """
        What C{kubectl get --raw /.well-known/openid-configuration} shows.
        """
        return {
            "issuer": self.issuer,
            "jwks_uri": self.issuer.rstrip("/") + "/openid/v1/jwks",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def jwks(self) -> dict[str, Any]:
        """
        What C{kubectl get --raw /openid/v1/jwks} shows.
        """
        return {"keys": [key.jwk for key in self.keys]}

    def claims(
        self,
        namespace: str = "billing",
        account: str = "api",
        audience: str | list[str] = AUDIENCE,
        now: float | None = None,
        lifetime: int = 3600,
    ) -> dict[str, Any]:
        """
        The claims of a projected service-account token (a pod's
        C{serviceAccountToken} volume with this C{audience} and
        C{expirationSeconds}).
        """
        issued = int(time.time() if now is None else now)
        return {
            "aud": [audience] if isinstance(audience, str) else audience,
            "exp": issued + lifetime,
            "iat": issued,
            "iss": self.issuer,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": namespace,
                "node": {"name": "node-1", "uid": str(uuid.uuid4())},
                "pod": {"name": f"{account}-7d9f8b6c5-x2x9z", "uid": str(uuid.uuid4())},
                "serviceaccount": {"name": account, "uid": str(uuid.uuid4())},
            },
            "nbf": issued,
            "sub": f"system:serviceaccount:{namespace}:{account}",
        }

    def token(self, key: SigningKey | None = None, **claims: Any) -> str:
        return (key or self.signing).sign(self.claims(**claims))


class GitHubActions:
    """
    GitHub Actions' OIDC issuer, for the workflow runs of one repository.
    """

    issuer = GITHUB_ISSUER

    def __init__(self) -> None:
        key = rsa_key()
        thumbprint = b64(hashlib.sha1(str(key.public_key().public_numbers().n).encode()).digest())
        self.key = SigningKey(key, "RS256", thumbprint, {"use": "sig", "alg": "RS256"})

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.jwk]}

    def claims(
        self,
        repository: str = "octo-org/octo-repo",
        environment: str = "production",
        ref: str = "refs/heads/main",
        audience: str = AUDIENCE,
        now: float | None = None,
        lifetime: int = 300,
    ) -> dict[str, Any]:
        """
        The claims of a job's token, as C{actions/core getIDToken(audience)}
        gets it for a job in C{environment}.
        """
        issued = int(time.time() if now is None else now)
        owner = repository.split("/")[0]
        return {
            "jti": str(uuid.uuid4()),
            "sub": f"repo:{repository}:environment:{environment}",
            "environment": environment,
            "aud": audience,
            "ref": ref,
            "sha": "d6cd1e2bd19e03a81132a23b2025920577f84e37",
            "repository": repository,
            "repository_owner": owner,
            "repository_owner_id": "65",
            "repository_id": "74",
            "repository_visibility": "private",
            "actor_id": "12",
            "actor": "octocat",
            "workflow": "deploy",
            "head_ref": "",
            "base_ref": "",
            "event_name": "push",
            "ref_type": "branch",
            "run_id": "5",
            "run_number": "3",
            "run_attempt": "1",
            "runner_environment": "github-hosted",
            "job_workflow_ref": f"{repository}/.github/workflows/deploy.yml@{ref}",
            "iss": self.issuer,
            "nbf": issued - 5,
            "exp": issued + lifetime,
            "iat": issued,
        }

    def token(self, **claims: Any) -> str:
        return self.key.sign(self.claims(**claims), typ="JWT", x5t=self.key.kid)


class SpiffeTrustDomain:
    """
    A SPIFFE trust domain, as SPIRE runs one: its JWT-SVID signing key
    (ES256) and its X.509 CA, published together in its bundle.
    """

    def __init__(self, name: str) -> None:
        self.id = f"spiffe://{name}"
        self.sequence = 1
        self.refresh_hint = 300
        self.key = self._new_key()
        self.ca = make_ca(f"SPIFFE {name}")

    @staticmethod
    def _new_key() -> SigningKey:
        return SigningKey(ec.generate_private_key(ec.SECP256R1()), "ES256", uuid.uuid4().hex)

    def rotate(self) -> None:
        self.key = self._new_key()
        self.sequence += 1

    def bundle(self) -> dict[str, Any]:
        """
        The trust domain's SPIFFE bundle (SPIFFE Trust Domain and Bundle §4).
        """
        return {
            "keys": [
                {**self.ca.jwk, "use": "x509-svid"},
                {**self.key.jwk, "use": "jwt-svid"},
            ],
            "spiffe_sequence": self.sequence,
            "spiffe_refresh_hint": self.refresh_hint,
        }

    def claims(
        self,
        path: str = "/ns/billing/sa/api",
        audience: str | list[str] = AUDIENCE,
        now: float | None = None,
        lifetime: int = 300,
    ) -> dict[str, Any]:
        """
        A JWT-SVID's claims, as the Workload API's C{FetchJWTSVID} gives
        them: no C{iss}.
        """
        issued = int(time.time() if now is None else now)
        return {
            "aud": [audience] if isinstance(audience, str) else audience,
            "exp": issued + lifetime,
            "iat": issued,
            "sub": self.id + path,
        }

    def svid(self, **claims: Any) -> str:
        return self.key.sign(self.claims(**claims), typ="JWT")


#: Paths of the loopback platform server, under which each platform's
#: documents are served.
KUBERNETES_PATH = "/k8s"
GITHUB_JWKS_PATH = "/github/.well-known/jwks"
SPIFFE_BUNDLE_PATH = "/spiffe/bundle"


class Platforms:
    """
    One of each platform, and the documents each serves, by path.
    """

    def __init__(self, base: str) -> None:
        self.cluster = KubernetesCluster(base + KUBERNETES_PATH)
        self.github = GitHubActions()
        self.spiffe = SpiffeTrustDomain("prod.example")
        #: path -> how many times it was asked for
        self.hits: dict[str, int] = {}

    def documents(self) -> dict[str, Callable[[], Any]]:
        return {
            KUBERNETES_PATH + "/.well-known/openid-configuration": self.cluster.discovery,
            KUBERNETES_PATH + "/openid/v1/jwks": self.cluster.jwks,
            GITHUB_JWKS_PATH: self.github.jwks,
            SPIFFE_BUNDLE_PATH: self.spiffe.bundle,
        }

    def answer(self, path: str) -> tuple[int, bytes]:
        self.hits[path] = self.hits.get(path, 0) + 1
        document = self.documents().get(path)
        if document is None:
            return 404, b"{}"
        return 200, json.dumps(document()).encode()


class PlatformServer(Platforms):
    """
    L{Platforms} served over plain http on the loopback, in a thread.
    """

    def __init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code, body = outer.answer(self.path)
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        super().__init__(self.url)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class PlatformResource(Resource):
    """
    L{Platforms} as a twisted.web resource, for treq's StubTreq: the host
    of a URL is ignored there, so every platform answers by its path.
    """

    isLeaf = True

    def __init__(self, platforms: Platforms) -> None:
        super().__init__()
        self.platforms = platforms

    def render_GET(self, request: Request) -> bytes:
        code, body = self.platforms.answer(request.path.decode())
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        return body
