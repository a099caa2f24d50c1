"""
The soak's command line: C{python3 bench/soak [options]}.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

STORES = ("sqlite", "postgresql", "redis")
#: The requests of the mix and their default weights (shares of the
#: requests sent; see bench/README.md, "Soak").  Secret and key rotations
#: are not in the mix: they run on their own timers.
MIX = {
    "token": 50.0,
    "token_jwt": 10.0,
    "introspect": 22.0,
    "revoke": 6.0,
    "jwks": 2.0,
    "register": 3.0,
    "update": 4.0,
    "delete": 3.0,
}
_UNITS = {"s": 1, "m": 60, "h": 3600}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smh]?)")


def seconds(text: str) -> float:
    """
    An argparse type: a duration, C{"90"} or C{"90s"}, C{"10m"}, C{"1h"},
    C{"1h30m"}, C{"1.5h"}; more than 0.
    """
    compact = text.strip().lower().replace(" ", "")
    parts = _PART.findall(compact)
    if not compact or "".join(number + unit for number, unit in parts) != compact:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration such as 90s, 10m, 1h or 1h30m")
    if any(unit == "" for _, unit in parts[:-1]):
        raise argparse.ArgumentTypeError(f"{text!r}: only the last number may go without a unit")
    total = sum(float(number) * _UNITS[unit or "s"] for number, unit in parts)
    if total <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be more than 0")
    return total


def mix(text: str) -> dict[str, float]:
    """
    An argparse type: C{kind=weight,...}, changing the default weights of
    the kinds named (0 leaves a kind out); the others keep theirs.
    """
    weights = dict(MIX)
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        kind, equals, value = part.partition("=")
        kind = kind.strip().lower()
        if kind not in MIX or not equals:
            raise argparse.ArgumentTypeError(f"{part!r}: KIND=WEIGHT, KIND one of {', '.join(MIX)}")
        try:
            weight = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: the weight must be a number") from None
        if weight < 0:
            raise argparse.ArgumentTypeError(f"{part!r}: the weight must be 0 or more")
        weights[kind] = weight
    if weights["token"] <= 0:
        raise argparse.ArgumentTypeError("token: must keep a weight above 0 (every other kind falls back on it)")
    return weights


def describe(value: float) -> str:
    """
    A duration as the options take it: C{"1h"}, C{"10m"}, C{"1h30m"}, C{"45s"}.
    """
    total = round(value)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return text or "0s"


def scaled_defaults(duration: float) -> dict[str, float]:
    """
    The defaults that follow C{--duration}: an hour's soak prints a line
    every 5 minutes, rotates a secret every minute and the signing keys
    every 5; a short run (the one-minute self-test) gets six lines and
    sees each rotation at least twice.
    """
    return {
        "interval": 300.0 if duration >= 1800 else max(1.0, duration / 6),
        "secret_rotation": min(60.0, duration / 4),
        "key_rotation": min(300.0, duration * 0.4),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/soak",
        description="ccserver --workers 2 under a mixed load for a long time: errors, p50/p99, RSS and "
        "open files per process, store size against live tokens (see bench/README.md, \"Soak\").",
    )
    parser.add_argument("--store", choices=STORES, default="sqlite",
                        help="the store; PostgreSQL and Redis are throwaway servers on loopback [sqlite]")
    parser.add_argument("--duration", type=seconds, default=3600.0, metavar="TIME",
                        help="how long the load runs: 90s, 10m, 1h, 1h30m [1h]")
    parser.add_argument("--interval", type=seconds, default=None, metavar="TIME",
                        help="one line of figures (rate, p50/p99, RSS, open files, store) per interval "
                        "[5m; a sixth of --duration when it is under 30m]")
    parser.add_argument("--warmup", type=seconds, default=None, metavar="TIME",
                        help="the growth verdict compares the interval after this with the last one "
                        "[a tenth of --duration, at least one interval]")
    parser.add_argument("--workers", type=int, default=2, metavar="N", help="ccserver --workers N [2]")
    parser.add_argument("--concurrency", type=int, default=8, metavar="N",
                        help="requests in flight at most, each slot on a kept-alive connection of its own [8]")
    parser.add_argument("--rate", type=float, default=40.0, metavar="R",
                        help="requests a second, over the whole mix: a steady, modest load (a soak "
                        "looks for leaks, not for the ceiling); 0: as fast as the requests in flight "
                        "allow [40]")
    parser.add_argument("--mix", type=mix, default=dict(MIX), metavar="KIND=W,...",
                        help="weights of the requests (" + ", ".join(f"{k}={v:g}" for k, v in MIX.items())
                        + "); the kinds not named keep their default")
    parser.add_argument("--clients", type=int, default=8, metavar="N",
                        help="client_secret_basic clients registered at the start (their secrets are "
                        "rotated in turn); one private_key_jwt client besides [8]")
    parser.add_argument("--dynamic-clients", type=int, default=40, metavar="N",
                        help="at most this many clients registered by the load at once: register, "
                        "update (PUT) and delete keep between a quarter of it and it [40]")
    parser.add_argument("--token-lifetime", type=int, default=60, metavar="S",
                        help="[tokens] lifetime of the opaque tokens, in seconds; [tokens] max_lifetime "
                        "is twice it, so expired tokens, deny-list entries and retired keys come due "
                        "for the server's purge (every 5 minutes) [60]")
    parser.add_argument("--secret-rotation", type=seconds, default=None, metavar="TIME",
                        help="rotate one client's secret (POST /client-reg/ID/rotate-secret), the "
                        "clients in turn, this often [1m; a quarter of --duration when that is shorter]")
    parser.add_argument("--key-rotation", type=seconds, default=None, metavar="TIME",
                        help="run `ccserver keys rotate` then `ccserver keys retire` against the store "
                        "this often [5m; 40%% of --duration when that is shorter]")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the mix's random choices [random]")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (the server's logs)")
    parser.add_argument("--access-log", action="store_true",
                        help="run ccserver with its access log on (its default; off here by default, "
                        "as in bench/run)")
    args = parser.parse_args(argv)
    for name in ("workers", "concurrency", "clients", "dynamic_clients", "token_lifetime"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be 1 or more")
    if args.rate < 0:
        parser.error("--rate must be 0 or more")
    defaults = scaled_defaults(args.duration)
    for name in ("interval", "secret_rotation", "key_rotation"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    if args.interval > args.duration:
        parser.error("--interval must not be longer than --duration")
    if args.warmup is None:
        args.warmup = max(args.interval, args.duration / 10)
    if args.warmup >= args.duration:
        parser.error("--warmup must be shorter than --duration")
    return args
