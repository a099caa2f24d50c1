"""
The pure parts of the benchmark's client authentication section
(bench/auth.py, C{--auth-cases}): the option, the file auth.lua reads, the
claims of the one-time assertions and proofs, and how many are made.
Nothing here starts a server or wrk.
"""

from __future__ import annotations

import io
import time
from contextlib import redirect_stderr
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from jwt.algorithms import ECAlgorithm
from twisted.trial.unittest import SynchronousTestCase

from bench import auth
from bench.cli import parse_args
from bench.rounds import Round


def pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


class OptionTests(SynchronousTestCase):
    def test_off_unless_asked(self) -> None:
        self.assertEqual(parse_args([]).auth_cases, [])

    def test_cases(self) -> None:
        args = parse_args(["--auth-cases", "basic, Private_Key_JWT,dpop"])
        self.assertEqual(args.auth_cases, ["basic", "private_key_jwt", "dpop"])

    def test_unknown_case_refused(self) -> None:
        err = io.StringIO()
        with redirect_stderr(err), self.assertRaises(SystemExit):
            parse_args(["--auth-cases", "client_secret_post"])
        self.assertIn("one of basic, private_key_jwt, dpop", err.getvalue())


class RequestsNeededTests(SynchronousTestCase):
    def test_rate_times_seconds_plus_one_times_safety(self) -> None:
        self.assertEqual(auth.requests_needed(5000, 8, 1.5), 67_500)

    def test_at_least_a_thousand(self) -> None:
        self.assertEqual(auth.requests_needed(10, 1), 1000)


class RequestLineTests(SynchronousTestCase):
    def test_missing_headers_are_dashes(self) -> None:
        self.assertEqual(auth.request_line(None, None, "a=b"), "-\t-\ta=b")
        self.assertEqual(auth.request_line("Basic eA==", "p.r.f", "a=b"), "Basic eA==\tp.r.f\ta=b")

    def test_separators_refused(self) -> None:
        for bad in ("a\tb", "a\nb", "", "-"):
            self.assertRaises(ValueError, auth.request_line, None, None, bad)
            self.assertRaises(ValueError, auth.request_line, bad, None, "a=b")


class ClaimsTests(SynchronousTestCase):
    def test_assertion(self) -> None:
        claims = auth.assertion_claims("c1", "http://h/token", 1000, "j")
        self.assertEqual(
            claims,
            {"iss": "c1", "sub": "c1", "aud": "http://h/token", "iat": 1000,
             "exp": 1000 + auth.ASSERTION_LIFETIME, "jti": "j"},
        )
        # within ccserver's default [client_auth] max_assertion_lifetime
        self.assertLess(auth.ASSERTION_LIFETIME, 300)

    def test_assertion_body(self) -> None:
        self.assertEqual(
            auth.assertion_body("x.y.z"),
            "grant_type=client_credentials&scope=read"
            "&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
            "&client_assertion=x.y.z",
        )

    def test_dpop(self) -> None:
        self.assertEqual(
            auth.dpop_claims("http://h/token", 7, "j"),
            {"jti": "j", "htm": "POST", "htu": "http://h/token", "iat": 7},
        )


class LinesTests(SynchronousTestCase):
    """
    What a pool worker writes: distinct jtis, signatures that verify.
    """

    def setUp(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())

    def fields(self, line: str) -> list[str]:
        parts = line.split("\t")
        self.assertEqual(len(parts), 3)
        return parts

    def test_private_key_jwt(self) -> None:
        params = {"client_id": "c1", "audience": "http://h/token", "kid": "k1"}
        lines = auth._lines(("private_key_jwt", pem(self.key), params, 3))
        self.assertEqual(len(lines), 3)
        jtis = set()
        for line in lines:
            authorization, dpop, body = self.fields(line)
            self.assertEqual((authorization, dpop), ("-", "-"))
            assertion = body.rsplit("client_assertion=", 1)[1]
            self.assertEqual(jwt.get_unverified_header(assertion)["kid"], "k1")
            claims = jwt.decode(assertion, self.key.public_key(), algorithms=["ES256"], audience="http://h/token")
            self.assertEqual((claims["iss"], claims["sub"]), ("c1", "c1"))
            self.assertLess(abs(claims["iat"] - time.time()), 5)
            jtis.add(claims["jti"])
        self.assertEqual(len(jtis), 3)

    def test_dpop(self) -> None:
        jwk: dict[str, Any] = ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        params = {"htu": "http://h/token", "basic": "YTpi", "jwk": jwk}
        lines = auth._lines(("dpop", pem(self.key), params, 2))
        jtis = set()
        for line in lines:
            authorization, proof, body = self.fields(line)
            self.assertEqual((authorization, body), ("Basic YTpi", auth.FORM))
            header = jwt.get_unverified_header(proof)
            self.assertEqual((header["typ"], header["jwk"]), ("dpop+jwt", jwk))
            claims = jwt.decode(proof, self.key.public_key(), algorithms=["ES256"])
            self.assertEqual((claims["htm"], claims["htu"]), ("POST", "http://h/token"))
            jtis.add(claims["jti"])
        self.assertEqual(len(jtis), 2)


class CpuPerTokenTests(SynchronousTestCase):
    def test_median_of_cores_over_rate(self) -> None:
        rounds = [
            Round("s", tokens_per_s=tps, p50_ms=1, p99_ms=2, requests=1, cpu_cores=cores, other_cores=0)
            for tps, cores in ((5000, 1.0), (4000, 1.0), (2000, 0.8))
        ]
        # 200, 250 and 400 us
        self.assertEqual(auth.cpu_per_token_us(rounds), 250)

