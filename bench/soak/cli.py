"""
The soak's main(): start the store (a throwaway PostgreSQL or Redis on
loopback, or a SQLite file), ccserver C{--workers 2} on it with short
token lifetimes, register the clients, run the load for C{--duration}
while printing a line per interval, stop everything, print the summary
and the checks.

Exit status: 0 when every check passed; 1 when one failed (a 5xx, any
other unexpected answer, a server process that exited or was replaced,
an error in the server's log, growth past 10% after the warm-up), or the
soak could not run; 130 when interrupted (the figures so far are printed).
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import signal
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import stores
from bench.cases import CASES
from bench.cli import git_revision
from bench.cpu import busiest_processes, loadavg, machine_busy
from bench.errors import BenchError, NotAvailable
from bench.install import ensure_python_dependencies
from bench.output import loud, say
from bench.servers import CCServer, http
from bench.soak import report, sizes
from bench.soak.load import Settings, Soak, SoakRun
from bench.soak.options import describe, parse_args
from bench.soak.serverlog import LogFollower
from bench.soak.traffic import BASIC, PRIVATE_KEY_JWT, SCOPE, AssertionSigner, Client, Traffic

#: Seconds between `ccserver keys rotate` and the new key signing, at most
#: ([keys] activation_delay): short, so that each rotation completes
#: (published, signing, the old key retired then deleted) within the run.
ACTIVATION_DELAY = 30


class SoakServer(CCServer):
    """
    ccserver with opaque tokens living C{lifetime} seconds (no longer than
    twice that), its signing keys encrypted with a key file of its folder
    (which `ccserver keys` is given too), and the credentials of the
    client the base class registers kept.
    """

    def __init__(self, workdir: Path, store_url: str, workers: int, lifetime: int, activation_delay: int,
                 access_log: bool) -> None:
        super().__init__(
            f"ccserver x{workers}", workdir, CASES["opaque"], store_url, workers=workers,
            encryption_key_file=workdir / "ccserver.key-encryption-key", access_log=access_log,
            settings={"tokens": {"lifetime": lifetime, "max_lifetime": 2 * lifetime},
                      "keys": {"activation_delay": activation_delay}},
        )
        self.first_client: tuple[str, str] | None = None

    def register_client(self) -> tuple[str, str]:
        pair = super().register_client()
        if self.first_client is None:
            self.first_client = pair
        return pair

    def register_jwt_client(self, signer: AssertionSigner) -> str:
        status, body = http(
            "POST",
            self.base + "/client-reg",
            json.dumps({
                "client_name": "soak private_key_jwt",
                "scope": SCOPE,
                "token_endpoint_auth_method": PRIVATE_KEY_JWT,
                "token_endpoint_auth_signing_alg": "ES256",
                "jwks": {"keys": [signer.public_jwk()]},
            }).encode(),
            {"Authorization": "Bearer " + self.master_token, "Content-Type": "application/json"},
        )
        if status != 201:
            raise BenchError(f"private_key_jwt registration answered {status}: {body[:300]!r}")
        return str(json.loads(body)["client_id"])


def client_cache_seconds() -> float:
    """
    ccserver's default [store] client_cache_seconds, as the checkout has it.
    """
    from ccserver.config import StoreConfig  # noqa: PLC0415

    return float(StoreConfig().client_cache_seconds)


def run_reactor(reactor: Any, soak: Soak) -> SoakRun:
    """
    Run the reactor for C{soak}; SIGINT or SIGTERM stops the load early.
    """
    outcome: list[Any] = []

    def interrupted(signum: int, frame: Any) -> None:
        reactor.callFromThread(soak.stop_early)

    def start() -> None:
        # after the reactor's own handlers (SIGCHLD stays Twisted's)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, interrupted)
        from twisted.internet.defer import ensureDeferred  # noqa: PLC0415

        d = ensureDeferred(soak.run())
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    from twisted.python.failure import Failure  # noqa: PLC0415

    if not outcome:
        raise BenchError("the reactor stopped before the soak ended")
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    result: SoakRun = outcome[0]
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_python_dependencies()
    tmp = Path(tempfile.mkdtemp(prefix="ccserver-soak-"))
    support: list[Any] = []
    groups: dict[str, int] = {}
    server: SoakServer | None = None

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    activation_delay = max(1, min(ACTIVATION_DELAY, int(args.key_rotation / 2)))
    about: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(),
        "revision": git_revision(),
        "store": args.store,
        "workers": args.workers,
        "options": {
            "duration_s": args.duration, "interval_s": args.interval, "warmup_s": args.warmup,
            "concurrency": args.concurrency, "rate": args.rate, "mix": args.mix, "clients": args.clients,
            "dynamic_clients": args.dynamic_clients, "token_lifetime_s": args.token_lifetime,
            "secret_rotation_s": args.secret_rotation, "key_rotation_s": args.key_rotation,
            "activation_delay_s": activation_delay, "access_log": args.access_log, "seed": args.seed,
        },
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "load_before": loadavg()},
    }
    try:
        busy = machine_busy()
        say("")
        say(f"ccserver soak  {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}  ccserver {about['revision']} "
            f"(Python {platform.python_version()})")
        say(f"  {os.cpu_count()} cores; load average {loadavg()}; {busy:.2f} cores busy before the run; "
            f"busiest: {busiest_processes()}")
        say(f"  store {args.store}, --workers {args.workers}; {describe(args.duration)} of load, a line every "
            f"{describe(args.interval)}, warm-up {describe(args.warmup)}")
        say(f"  {args.concurrency} requests in flight, at most "
            + (f"{args.rate:g}/s" if args.rate else "as fast as they are answered")
            + "; mix " + ", ".join(f"{k} {v:g}" for k, v in args.mix.items() if v))
        say(f"  opaque tokens living {args.token_lifetime} s (max_lifetime {2 * args.token_lifetime} s); "
            f"a secret rotated every {describe(args.secret_rotation)}, the signing keys every "
            f"{describe(args.key_rotation)} (activation delay {activation_delay} s)")
        if args.store == "sqlite":
            (tmp / "store").mkdir()
            url = f"sqlite:///{tmp / 'store' / 'ccserver.db'}"
        else:
            url = stores.start(args.store, support, groups)
        server = SoakServer(tmp / "server", url, args.workers, args.token_lifetime, activation_delay,
                            args.access_log)
        say(f"  starting {server.label} on {server.base} ({url})")
        server.start()
        signer = AssertionSigner()
        clients = [server.first_client or server.register_client()]
        while len(clients) < args.clients:
            clients.append(server.register_client())
        jwt_client = server.register_jwt_client(signer)
        traffic = Traffic(
            server.base, server.master_token, args.mix, random.Random(args.seed),
            max_dynamic=args.dynamic_clients, switch_after=client_cache_seconds() + 1, signer=signer,
        )
        traffic.clients = [Client(client_id, BASIC, secret) for client_id, secret in clients]
        traffic.clients.append(Client(jwt_client, PRIVATE_KEY_JWT))
        say(f"  {len(clients)} client_secret_basic clients and 1 private_key_jwt client registered")
        settings = Settings(
            base=server.base, duration=args.duration, interval=args.interval, concurrency=args.concurrency,
            rate=args.rate, secret_rotation=args.secret_rotation, key_rotation=args.key_rotation,
            config=str(server.config_path), store_url=url, workdir=str(server.workdir),
        )
        from twisted.internet import reactor  # noqa: PLC0415 (the composition root)

        say("")
        say(report.header())
        soak = Soak(reactor, settings, traffic, server.pgid, server.alive, sizes.reader(args.store, url),
                    LogFollower(server.log_path), lambda o: say(report.interval_line(o)), set(groups.values()))
        run = run_reactor(reactor, soak)
    except KeyboardInterrupt:
        say("\ninterrupted before the load ran")
        return 130
    except (BenchError, NotAvailable) as e:
        loud(str(e))
        return 1
    finally:
        if server is not None:
            server.stop()
        stores.remove(support, groups)
        if args.keep:
            say(f"(logs kept in {tmp})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    checks = report.print_summary(run, args.warmup, args.interval, say)
    if args.json:
        args.json.write_text(json.dumps(report.as_json(run, args.warmup, args.interval, checks, about), indent=1))
        say(f"\n(figures written to {args.json})")
    if run.interrupted:
        say(f"\ninterrupted after {describe(run.ran)}")
        return 130
    return 0 if all(c.passed is not False for c in checks) else 1
