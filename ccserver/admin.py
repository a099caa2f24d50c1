"""
C{ccserver}: the administration command, for what an operator does to a
server's store while it runs.

    ccserver [--config FILE] [--store URL] keys list
    ccserver [--config FILE] [--store URL] keys rotate [--delay SECONDS]
    ccserver [--config FILE] [--store URL] keys retire [KID]

It reads the same configuration as C{twist ccserver} and works on the same
store; running servers follow its changes without a restart.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react

from ccserver.config import Config, load_config
from ccserver.errors import ConfigError, StoreUnavailable
from ccserver.firststart import key_encryptor
from ccserver.keys import Keyring
from ccserver.stores import store_from_url

#: What C{ccserver --help} says it is: plain text, for people (argparse
#: prints it as written, so no epytext markup here or in any help string).
DESCRIPTION = (
    "ccserver: the administration command, for what an operator does to a "
    "server's store while it runs."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccserver", description=DESCRIPTION)
    parser.add_argument("--config", "-c", help="the TOML configuration file of the server")
    parser.add_argument("--store", help="the store URL (overrides the configuration)")
    commands = parser.add_subparsers(dest="command", required=True)
    keys = commands.add_parser("keys", help="signing keys").add_subparsers(
        dest="action", required=True
    )
    keys.add_parser("list", help="list the signing keys and their states")
    rotate = keys.add_parser(
        "rotate",
        help="publish a new signing key now; sign with it after the activation delay",
    )
    rotate.add_argument(
        "--delay",
        type=int,
        help="seconds before the new key signs [default: [keys] activation_delay]",
    )
    retire = keys.add_parser(
        "retire",
        help="without KID: delete the keys no live token needs; "
        "with KID: stop signing with that key now",
    )
    retire.add_argument("kid", nargs="?")
    return parser


def _when(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


async def run(reactor: Any, config: Config, arguments: argparse.Namespace) -> None:
    store = store_from_url(config.store.url, reactor, timeout=config.store.timeout)
    await store.open()
    try:
        keyring = Keyring(
            store,
            key_encryptor(config),
            config.tokens.signing_alg,
            config.tokens.max_lifetime,
            reactor.seconds,
        )
        if arguments.action == "rotate":
            delay = config.keys.activation_delay if arguments.delay is None else arguments.delay
            if delay < 0:
                raise ConfigError("--delay: must be 0 or more")
            new = await keyring.rotate(delay)
            print(f"published {new.kid} ({new.alg}); it signs from {_when(new.active_from)} UTC")
        elif arguments.action == "retire":
            for retired in await keyring.retire(arguments.kid):
                verb = "stopped signing with" if arguments.kid else "deleted"
                print(f"{verb} {retired.kid}")
        await keyring.refresh()
        print(f"{'kid':44} {'alg':6} {'state':9} {'created (UTC)':19}  {'signs from':19}  retired")
        for key in keyring.keys():
            stored = key.stored
            print(
                f"{stored.kid:44} {stored.alg:6} {keyring.state(stored):9} "
                f"{_when(stored.created_at):19}  {_when(stored.active_from):19}  "
                f"{_when(stored.retired_at)}"
            )
    finally:
        await store.close()


def main(argv: Sequence[str] | None = None) -> None:
    arguments = _parser().parse_args(argv)
    try:
        config = load_config(
            {"config": arguments.config, "store": arguments.store}, os.environ
        )
    except ConfigError as e:
        sys.exit(f"ccserver: {e}")
    if config.store.url.startswith("memory:"):
        sys.exit("ccserver: --store: a memory:// store lives inside its server; nothing to manage")

    def start(reactor: Any) -> Any:
        d = ensureDeferred(run(reactor, config, arguments))

        def failed(failure: Any) -> None:
            failure.trap(ConfigError, ValueError, StoreUnavailable)
            print(f"ccserver: {failure.getErrorMessage()}", file=sys.stderr)
            raise SystemExit(1)

        return d.addErrback(failed)

    react(start)


if __name__ == "__main__":
    main()
