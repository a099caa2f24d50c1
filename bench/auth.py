"""
The client authentication section (C{--auth-cases}, issue 11): tokens/s
and CPU per token of one ccserver (memory store, one process, ES256 access
tokens) for three ways of asking for a token, in alternating rounds:

  - C{basic}: C{client_secret_basic}, as every other section;
  - C{private_key_jwt}: an ES256 client assertion (RFC 7523 §2.2) from a
    client registered with its public key in C{jwks};
  - C{dpop}: C{client_secret_basic} plus an ES256 DPoP proof (RFC 9449), so
    the answer is a DPoP-bound token (C{cnf.jkt}).

Assertions and proofs are one-time: the server records each C{jti} and
refuses a replay.  So every wrk run gets a fresh file of distinct ones
(auth.lua sends each line once), made just before the run, which also keeps
their C{iat}/C{exp} well inside C{[client_auth] max_assertion_lifetime} and
C{[dpop] max_age} (300 s).  The number made is the case's fastest rate so
far times the run's seconds plus one, times SAFETY; a run that still goes
past the end of its file is an error (its replays are refused as 401/400,
and auth.lua counts them as "exhausted").
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import secrets
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.cases import CASES, REGISTRATION
from bench.cpu import loadavg
from bench.errors import MEASUREMENT_ERRORS, BenchError, NotAvailable
from bench.output import say
from bench.paths import BENCH
from bench.report import Row
from bench.rounds import Round
from bench.servers import CCServer, _b64json, http
from bench.wrk import THREADS, Load

AUTH_LUA = BENCH / "auth.lua"
AUTH_CASES = ("basic", "private_key_jwt", "dpop")
SECTION = "client authentication: ccserver ES256 JWT, memory store, 1 process"
#: Files hold this many times the requests the case's best rate so far
#: could send.
SAFETY = 1.5
#: The rate assumed before anything was measured.
FIRST_RATE = 8000.0
#: Seconds an assertion is valid for (below the default 300 s maximum).
ASSERTION_LIFETIME = 240
FORM = "grant_type=client_credentials&scope=read"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def requests_needed(rate: float, seconds: int, safety: float = SAFETY) -> int:
    """
    How many one-time requests to make for a wrk run of C{seconds} at up to
    C{rate} per second: wrk may run a little past its C{-d}, hence the
    extra second.
    """
    return max(1000, math.ceil(rate * (seconds + 1) * safety))


def request_line(authorization: str | None, dpop: str | None, body: str) -> str:
    """
    One line of auth.lua's file: the Authorization and DPoP header values
    ("-" for none) and the form body, tab-separated.
    """
    for value in (authorization, dpop, body):
        if value is not None and ("\t" in value or "\n" in value or value in ("", "-")):
            raise ValueError(f"not a field of auth.lua's file: {value!r}")
    return f"{authorization or '-'}\t{dpop or '-'}\t{body}"


def assertion_claims(client_id: str, audience: str, now: int, jti: str) -> dict[str, Any]:
    """
    RFC 7523 §3: iss = sub = the client, aud = the token endpoint, a jti,
    an exp ASSERTION_LIFETIME ahead.
    """
    return {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME,
        "jti": jti,
    }


def assertion_body(assertion: str) -> str:
    # base64url and dots only: nothing to form-encode
    return f"{FORM}&client_assertion_type={ASSERTION_TYPE.replace(':', '%3A')}&client_assertion={assertion}"


def dpop_claims(htu: str, now: int, jti: str) -> dict[str, Any]:
    """
    RFC 9449 §4.2: the proof of one POST to the token endpoint.
    """
    return {"jti": jti, "htm": "POST", "htu": htu, "iat": now}


def _lines(job: tuple[str, bytes, dict[str, Any], int]) -> list[str]:
    """
    A pool worker's share: C{count} request lines of one kind, each with
    its own jti.
    """
    import jwt  # noqa: PLC0415  (after ensure_python_dependencies)
    from cryptography.hazmat.primitives.serialization import load_pem_private_key  # noqa: PLC0415

    kind, pem, params, count = job
    key = load_pem_private_key(pem, None)
    now = int(time.time())
    out = []
    for _ in range(count):
        jti = secrets.token_urlsafe(16)
        if kind == "private_key_jwt":
            claims = assertion_claims(params["client_id"], params["audience"], now, jti)
            token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": params["kid"]})  # type: ignore[arg-type]
            out.append(request_line(None, None, assertion_body(token)))
        else:
            claims = dpop_claims(params["htu"], now, jti)
            proof = jwt.encode(
                claims, key, algorithm="ES256",  # type: ignore[arg-type]
                headers={"typ": "dpop+jwt", "jwk": params["jwk"]},
            )
            out.append(request_line("Basic " + params["basic"], proof, FORM))
    return out


class AuthServer(CCServer):
    """
    One ccserver with a client_secret_basic client (the base class's) and a
    private_key_jwt client whose ES256 public key is in its C{jwks}; and the
    DPoP proof key.
    """

    def __init__(self, label: str, workdir: Path, access_log: bool) -> None:
        super().__init__(label, workdir, CASES["es256"], "memory://", access_log=access_log)
        from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
        from cryptography.hazmat.primitives.serialization import (  # noqa: PLC0415
            Encoding,
            NoEncryption,
            PrivateFormat,
        )

        def pem(key: ec.EllipticCurvePrivateKey) -> bytes:
            return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())

        self._client_key = ec.generate_private_key(ec.SECP256R1())
        self._dpop_key = ec.generate_private_key(ec.SECP256R1())
        self.client_pem, self.dpop_pem = pem(self._client_key), pem(self._dpop_key)
        self.kid = "bench-" + secrets.token_hex(4)
        self.jwt_client_id = ""

    def public_jwk(self, key: Any, **extra: str) -> dict[str, Any]:
        from jwt.algorithms import ECAlgorithm  # noqa: PLC0415

        jwk: dict[str, Any] = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        return {**jwk, **extra}

    def start(self) -> None:
        super().start()
        status, body = http(
            "POST",
            self.base + "/client-reg",
            json.dumps({
                **REGISTRATION,
                "token_endpoint_auth_method": "private_key_jwt",
                "token_endpoint_auth_signing_alg": "ES256",
                "jwks": {"keys": [self.public_jwk(self._client_key, kid=self.kid, alg="ES256", use="sig")]},
            }).encode(),
            {"Authorization": "Bearer " + self.master_token, "Content-Type": "application/json"},
        )
        if status != 201:
            self.stop()
            raise NotAvailable(f"private_key_jwt registration answered {status}: {body[:300]!r}")
        self.jwt_client_id = json.loads(body)["client_id"]

    def job(self, kind: str, count: int) -> tuple[str, bytes, dict[str, Any], int]:
        endpoint = self.base + "/token"
        params: dict[str, Any]
        if kind == "private_key_jwt":
            params = {"client_id": self.jwt_client_id, "audience": endpoint, "kid": self.kid}
            return kind, self.client_pem, params, count
        params = {"htu": endpoint, "basic": self.basic, "jwk": self.public_jwk(self._dpop_key)}
        return kind, self.dpop_pem, params, count


def write_requests(
    pool: Any, server: AuthServer, kind: str, count: int, path: Path
) -> float:
    """
    Write C{count} fresh request lines of C{kind} to C{path}, signed in
    the pool's processes; the seconds it took.
    """
    started = time.monotonic()
    workers = os.cpu_count() or 1
    shares = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
    with open(path, "w") as out:
        for lines in pool.imap_unordered(_lines, [server.job(kind, n) for n in shares if n]):
            out.write("\n".join(lines) + "\n")
    return time.monotonic() - started


def check_sample(server: AuthServer, pool: Any, kind: str, tmp: Path) -> str:
    """
    One request of C{kind} through urllib before timing: 200, an ES256
    JWT, and for DPoP a DPoP token bound by C{cnf.jkt}.
    """
    path = tmp / f"sample-{kind}.txt"
    write_requests(pool, server, kind, 1, path)
    auth, dpop, body = path.read_text().splitlines()[0].split("\t")
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if auth != "-":
        headers["Authorization"] = auth
    if dpop != "-":
        headers["DPoP"] = dpop
    status, answer = http("POST", server.base + "/token", body.encode(), headers)
    if status != 200:
        raise BenchError(f"{kind}: POST /token answered {status}: {answer[:300]!r}")
    document = json.loads(answer)
    header, claims = (_b64json(part) for part in document["access_token"].split(".")[:2])
    want_type = "DPoP" if kind == "dpop" else "Bearer"
    if document.get("token_type") != want_type or header.get("alg") != "ES256":
        raise BenchError(f"{kind}: expected an ES256 {want_type} token, got {document.get('token_type')} {header}")
    if kind == "dpop" and "jkt" not in claims.get("cnf", {}):
        raise BenchError(f"dpop: the token carries no cnf.jkt: {claims}")
    return f"{want_type}, alg {header['alg']}" + (", cnf.jkt" if kind == "dpop" else "")


def cpu_per_token_us(rounds: Sequence[Round]) -> float:
    """
    The median over the rounds of the server's CPU-microseconds per token:
    cores used / tokens a second.
    """
    return float(statistics.median(r.cpu_cores / r.tokens_per_s * 1e6 for r in rounds if r.tokens_per_s))


def run_section(bench: Any) -> None:
    """
    Start one AuthServer, warm each case up, then alternate the cases for
    --rounds rounds, a fresh file of one-time requests per wrk run; add a
    row per case to C{bench.rows} (every case against basic).
    """
    kinds: list[str] = list(bench.args.auth_cases)
    if not kinds:
        return
    if "basic" not in kinds:
        kinds.insert(0, "basic")
    runner = bench.runner
    say(f"\n== {SECTION}: {', '.join(kinds)}  (load {loadavg()})")
    rows = {
        kind: Row(SECTION, kind, ours_label=kind, theirs_label="basic", ours_column="auth",
                  theirs_column="basic", check_p99=False, single=(kind == "basic"))
        for kind in kinds
    }
    bench.rows.extend(rows.values())
    server = AuthServer("ccserver auth", bench.workdir("auth"), bench.args.access_log != "off")
    files = bench.workdir("auth-requests")
    best: dict[str, float] = {}
    results: dict[str, list[Round]] = {kind: [] for kind in kinds}
    serial = 0
    # fork: the workers only sign; nothing of the bench's state matters there
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        try:
            try:
                bench.start(server, CASES["es256"])
            except NotAvailable as e:
                for row in rows.values():
                    row.status, row.note = "not available", str(e)
                say(f"  not available: {e}")
                return
            for kind in kinds:
                if kind != "basic":
                    say(f"    sample {kind}: {check_sample(server, pool, kind, files)}")

            def run(kind: str, seconds: int) -> Round:
                nonlocal serial
                if kind == "basic":
                    load = None
                else:
                    serial += 1
                    count = requests_needed(best.get(kind, best.get("basic", FIRST_RATE)), seconds)
                    path = files / f"{serial:03d}-{kind}.txt"
                    took = write_requests(pool, server, kind, count, path)
                    say(f"    {count:,} one-time {kind} requests made in {took:.1f} s")
                    load = Load(AUTH_LUA, "/token", [str(path), str(THREADS)])
                r: Round = runner.wrk_once(server, seconds, [server], load)
                if r.raw.get("exhausted"):
                    raise BenchError(f"{kind}: wrk sent {r.raw['exhausted']} requests past the end of its file")
                best[kind] = max(best.get(kind, 0.0), r.tokens_per_s)
                if load is not None:
                    Path(load.args[0]).unlink()
                return r

            for kind in kinds:
                run(kind, runner.warmup)
            for n in range(1, bench.args.rounds + 1):
                for kind in kinds:
                    r = run(kind, runner.seconds)
                    results[kind].append(r)
                    say(
                        f"  round {n}/{bench.args.rounds}  {kind:<16} {r.tokens_per_s:>8,.0f} tokens/s"
                        f"  p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms  server cpu {r.cpu_cores:4.2f}"
                        f"  {r.cpu_cores / r.tokens_per_s * 1e6:5.0f} cpu-us/token"
                        f"  other load {r.other_cores:4.2f} cores"
                    )
            basic_cpu = cpu_per_token_us(results["basic"])
            for kind, row in rows.items():
                row.ours = results[kind]
                row.theirs = None if kind == "basic" else results["basic"]
                per_token = cpu_per_token_us(results[kind])
                row.note = f"server {per_token:.0f} cpu-us/token" + (
                    "" if kind == "basic" else f", {per_token - basic_cpu:+.0f} over basic"
                )
        except MEASUREMENT_ERRORS as e:
            for row in rows.values():
                if row.status != "ERROR":
                    bench.error(row, e)
        finally:
            bench.stop_all()
