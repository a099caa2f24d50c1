"""
What the audit trail costs a token: a micro-benchmark that prints figures
and is never a test.

    PYTHONPATH=. python3 -m bench.audit_cost [--tokens N] [--rounds R]

It issues tokens in this process through the token endpoint's grant
(client authentication, the grant handler, an ES256 signature: everything
but HTTP, which costs about 90 µs more per token, bench/README.md) over a
memory store, with a cached client, and compares the CPU time per token:

  - with the event emitted, and no observer (where a library user is);
  - with the writer observing, C{[audit] token_issued = "all"}, its lines
    written to a file every FLUSH_EVENTS (encoding and writing included);
  - with C{token_issued = "sampled:0.01"} and C{"off"};
  - with no emission at all (C{audit.emit} replaced by a no-op): the
    baseline.

Each setting runs R rounds of N tokens, alternating; the fastest round
of each (the least disturbed by anything else on the machine) and the
median are printed, with the difference to the baseline.  Then the two
parts of the writer's cost alone, per event: the emission with the
writer observing (on the request's path), and the encoding and write
(on the writer's timer).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from ccserver import audit, auditlog, credentials
from ccserver.assembly import make_jwks_fetcher, make_site
from ccserver.auditlog import AuditWriter
from ccserver.config import Config, StoreConfig, TokenConfig
from ccserver.handlers.registered_scope import RegisteredScopeHandler
from ccserver.keys import KeyEncryptor
from ccserver.logfiles import FileDestination
from ccserver.model import TokenRequest
from ccserver.oauth.registration import register_client
from ccserver.oauth.tokens import sign_inline
from ccserver.stores.memory import MemoryStore


def _grant(clock: Clock) -> tuple[Any, str]:
    config = Config(
        issuer="https://as.example.com",
        store=StoreConfig(url="memory://", client_cache_seconds=3600),
        tokens=TokenConfig(signing_alg="ES256"),
    )
    store = MemoryStore()
    site, keyring = make_site(
        clock,
        config,
        store,
        RegisteredScopeHandler(),
        credentials.digest("m" * 32),
        KeyEncryptor.ephemeral(),
        sign_inline,
        make_jwks_fetcher(clock, config, http=None),
    )
    _done(ensureDeferred(keyring.ensure_signing_key()))
    registration = _done(ensureDeferred(register_client(store, {"scope": "read"}, clock.seconds)))
    basic = "Basic " + __import__("base64").b64encode(
        f"{registration.client.client_id}:{registration.client_secret}".encode()
    ).decode()
    # the token endpoint's grants (TokenGrants), as TokenResource calls them
    grants = site.resource.leaves[b"token"]._grants
    return grants, basic


def _done(d: Any) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    if not results:
        raise RuntimeError("did not finish synchronously")
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def _issue(grant: Any, basic: str, n: int) -> float:
    """
    CPU seconds per token for C{n} tokens.
    """
    form = {"grant_type": "client_credentials"}
    start = time.process_time()
    for _ in range(n):
        _done(ensureDeferred(grant.token(TokenRequest(form, basic, source="192.0.2.1"))))
    return (time.process_time() - start) / n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.audit_cost", description=__doc__.split("\n")[1])
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    clock = Clock()
    clock.advance(time.time())
    grant, basic = _grant(clock)
    folder = Path(tempfile.mkdtemp(prefix="ccserver-audit-cost-"))
    real_emit = audit.emit

    def writer(rate: float) -> Callable[[], Callable[[], None]]:
        def start() -> Callable[[], None]:
            observer = AuditWriter(
                FileDestination(str(folder / "audit.log")),
                "https://as.example.com",
                token_issued_rate=rate,
            )
            audit.publisher.addObserver(observer)

            def stop() -> None:
                audit.publisher.removeObserver(observer)
                observer.close()

            return stop

        return start

    def no_observer() -> Callable[[], None]:
        return lambda: None

    def no_emission() -> Callable[[], None]:
        audit.emit = lambda *args, **kwargs: None

        def stop() -> None:
            audit.emit = real_emit

        return stop

    settings: dict[str, Callable[[], Callable[[], None]]] = {
        "no emission (baseline)": no_emission,
        "emitted, no observer": no_observer,
        'writer, token_issued = "all"': writer(1.0),
        'writer, token_issued = "sampled:0.01"': writer(0.01),
        'writer, token_issued = "off"': writer(0.0),
    }
    figures: dict[str, list[float]] = {name: [] for name in settings}
    _issue(grant, basic, 2000)  # warm up
    for _ in range(args.rounds):
        for name, setting in settings.items():
            stop = setting()
            try:
                figures[name].append(_issue(grant, basic, args.tokens))
            finally:
                stop()
    baseline = min(figures["no emission (baseline)"])
    print(f"{args.rounds} rounds of {args.tokens} tokens, CPU time per token:")
    print(f"  {'':40} {'fastest':>9} {'vs baseline':>12} {'median':>9}")
    for name, values in figures.items():
        fastest = min(values)
        print(
            f"  {name:40} {fastest * 1e6:7.1f} µs {(fastest - baseline) * 1e6:+9.1f} µs "
            f"{statistics.median(values) * 1e6:7.1f} µs"
        )
    print("The writer's parts alone, per token.issued event (fastest of the rounds):")
    emit, write = _parts(folder, args.tokens, args.rounds)
    print(f"  {'emitted, the writer observing':40} {emit * 1e6:7.1f} µs")
    print(f"  {'encoded and written to a file':40} {write * 1e6:7.1f} µs")


def _parts(folder: Path, n: int, rounds: int) -> tuple[float, float]:
    """
    CPU seconds per event: emitting a token.issued event to a buffering
    writer, then encoding it and writing it (one flush of n events).
    """
    fields: dict[str, Any] = {
        "client_id": "D16EXSdlpEc-FlesNQz6oQ",
        "grant_type": "client_credentials",
        "scope": frozenset({"read", "write"}),
        "audience": ("https://api.example.com",),
        "token_id": "YZdksGfhpRumgrmFWZd9Lw",
        "token_format": "jwt",
        "expires_at": 1_748_859_667,
        "binding": "bearer",
        "auth_method": "client_secret_basic",
        "jkt": None,
        "x5t_s256": None,
    }
    actor = audit.client(fields["client_id"])
    emits, writes = [], []
    flush_events = auditlog.FLUSH_EVENTS
    # no flush while the emissions are timed: the timer's work is timed apart
    auditlog.FLUSH_EVENTS = n + 1
    try:
        for _ in range(rounds):
            writer = AuditWriter(FileDestination(str(folder / "parts.log")), "https://as.example.com")
            audit.publisher.addObserver(writer)
            start = time.process_time()
            for _ in range(n):
                audit.emit(audit.TOKEN_ISSUED, actor, "192.0.2.1", **fields)
            emits.append((time.process_time() - start) / n)
            audit.publisher.removeObserver(writer)
            start = time.process_time()
            writer.flush()
            writes.append((time.process_time() - start) / n)
            writer.close()
    finally:
        auditlog.FLUSH_EVENTS = flush_events
    return min(emits), min(writes)



if __name__ == "__main__":
    main()
