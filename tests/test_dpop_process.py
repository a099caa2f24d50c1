"""
DPoP end to end: a proof built with PyJWT, sent with requests to a running
`twist ccserver`, gets a DPoP-bound token whose cnf.jkt is the key's
RFC 7638 thumbprint, as a resource server would check it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tempfile
import time
import unittest
import uuid
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from tests.process import CCServerProcess

pytestmark = pytest.mark.process


class DPoPEndToEnd(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ccserver-dpop-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.server = CCServerProcess(self.tmp, store=f"sqlite:///{self.tmp}/ccserver.db")
        self.addCleanup(self.server.kill)
        self.server.start()

    def test_pyjwt_proof_gets_a_bound_token(self) -> None:
        client = self.server.register(scope="read")
        key = ec.generate_private_key(ec.SECP256R1())
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        proof = jwt.encode(
            {
                "jti": str(uuid.uuid4()),
                "htm": "POST",
                "htu": self.server.url + "/token",
                "iat": int(time.time()),
            },
            key,
            algorithm="ES256",
            headers={"typ": "dpop+jwt", "jwk": jwk},
        )
        response = requests.post(
            self.server.url + "/token",
            data={"grant_type": "client_credentials"},
            auth=(client["client_id"], client["client_secret"]),
            headers={"DPoP": proof},
            timeout=10,
        )
        self.assertEqual(response.status_code, 200, response.text)
        self.assertEqual(response.json()["token_type"], "DPoP")
        access_token = response.json()["access_token"]
        # the resource server's side: verify, then compare cnf.jkt with the
        # thumbprint of the key of the proof it is shown
        jwks = jwt.PyJWKClient(self.server.url + "/jwks.json")
        claims = jwt.decode(
            access_token,
            jwks.get_signing_key_from_jwt(access_token).key,
            algorithms=["RS256"],
            audience=self.server.url,
        )
        # RFC 7638: the required members, sorted, no whitespace; SHA-256
        members = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"))
        expected = base64.urlsafe_b64encode(hashlib.sha256(members.encode()).digest())
        self.assertEqual(claims["cnf"]["jkt"], expected.rstrip(b"=").decode())
        # the same proof again is a replay
        again = requests.post(
            self.server.url + "/token",
            data={"grant_type": "client_credentials"},
            auth=(client["client_id"], client["client_secret"]),
            headers={"DPoP": proof},
            timeout=10,
        )
        self.assertEqual(again.status_code, 400)
        self.assertEqual(again.json()["error"], "invalid_dpop_proof")
