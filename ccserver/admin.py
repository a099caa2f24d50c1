"""
C{ccserver}: the administration command, for what an operator does to a
server's store while it runs.

    ccserver [--config FILE] [--store URL] keys list
    ccserver [--config FILE] [--store URL] keys rotate [--delay SECONDS]
    ccserver [--config FILE] [--store URL] keys retire [KID]
    ccserver [--config FILE] [--store URL] clients list [--json]
    ccserver [--config FILE] [--store URL] clients show CLIENT_ID
    ccserver [--config FILE] [--store URL] clients create --name NAME --scope "a b"
    ccserver [--config FILE] [--store URL] clients delete CLIENT_ID
    ccserver [--config FILE] [--store URL] clients rotate-secret CLIENT_ID [--grace SECONDS]

It reads the same configuration as C{twist ccserver} and works on the same
store; running servers follow its changes without a restart.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react

from ccserver import firststart
from ccserver.clients import all_clients, public_view, rotate_secret
from ccserver.config import Config, load_config
from ccserver.errors import ConfigError, OAuthError, StoreUnavailable
from ccserver.firststart import key_encryption, key_mismatch
from ccserver.interfaces import IStore
from ccserver.keys import KeyDecryptionError, Keyring
from ccserver.oauth.registration import (
    AUTH_METHODS,
    ClientRegistry,
    register_client,
    registration_response,
    validate_metadata,
)
from ccserver.stores import store_from_settings

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
    _clients_parser(commands)
    return parser


def _clients_parser(commands: Any) -> None:
    clients = commands.add_parser("clients", help="registered clients").add_subparsers(
        dest="action", required=True
    )
    listing = clients.add_parser("list", help="list the registered clients")
    listing.add_argument(
        "--json", action="store_true", help="print a JSON array (never a secret or digest)"
    )
    show = clients.add_parser("show", help="print one client as JSON, without its secrets")
    show.add_argument("client_id")
    create = clients.add_parser(
        "create",
        help="register a client; prints its registration with the secret, this once",
    )
    create.add_argument("--name", required=True, help="the client's client_name")
    create.add_argument("--scope", required=True, help='its scope values, e.g. "read write"')
    create.add_argument(
        "--auth-method",
        choices=AUTH_METHODS,
        default=AUTH_METHODS[0],
        # a metavar, not argparse's {a,b}: the help names the choices in words
        metavar="METHOD",
        help="how it authenticates at the token endpoint: "
        + " or ".join(AUTH_METHODS)
        + " [default: %(default)s]",
    )
    create.add_argument(
        "--audience",
        action="append",
        default=None,
        help="a resource server (absolute URI) its tokens are for; repeatable",
    )
    delete = clients.add_parser(
        "delete", help="deregister a client and end its tokens, as DELETE /client-reg does"
    )
    delete.add_argument("client_id")
    rotate = clients.add_parser(
        "rotate-secret",
        help="give a client a new secret; the old one works until the grace period ends",
    )
    rotate.add_argument("client_id")
    rotate.add_argument(
        "--grace",
        type=int,
        help="seconds the old secret still works [default: [clients] secret_rotation_grace]",
    )


class CommandError(Exception):
    """
    A command that cannot be done as asked: one line for the operator.
    """


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False))


async def run_clients(reactor: Any, config: Config, arguments: argparse.Namespace) -> None:
    """
    C{ccserver clients ...}, on an open store.  The operator is trusted: no
    token is asked for.  Nothing here caches a client, and running servers
    follow every change within their C{[store] client_cache_seconds}.
    """
    store = store_from_settings(config.store, reactor)
    await store.open()
    try:
        registry = ClientRegistry(
            store,
            # no bearer token is checked on the operator's own command
            "",
            reactor.seconds,
            token_max_lifetime=config.tokens.max_lifetime,
            client_cache_seconds=config.store.client_cache_seconds,
            jwks_uri_policy=config.client_auth.jwks_uri_policy,
        )
        action = arguments.action
        if action == "list":
            await _list_clients(store, reactor.seconds(), arguments.json)
        elif action == "show":
            client = await store.get_client(arguments.client_id)
            if client is None:
                raise CommandError(f"no client {arguments.client_id!r}")
            _print_json(public_view(client, reactor.seconds()))
        elif action == "create":
            body: dict[str, Any] = {
                "client_name": arguments.name,
                "scope": arguments.scope,
                "token_endpoint_auth_method": arguments.auth_method,
            }
            if arguments.audience:
                body["audience"] = arguments.audience
            encryptor = (
                # the secret is kept encrypted: the HMAC needs it itself
                firststart.key_encryptor(config)
                if arguments.auth_method == "client_secret_jwt"
                else None
            )
            registration = await register_client(
                store,
                validate_metadata(body, config.client_auth.jwks_uri_policy),
                reactor.seconds,
                encryptor,
            )
            _print_json(registration_response(registration, config.issuer))
        elif action == "delete":
            if not await registry.remove(arguments.client_id):
                raise CommandError(f"no client {arguments.client_id!r}")
            print(f"deleted {arguments.client_id}; its tokens are revoked")
        elif action == "rotate-secret":
            grace = (
                config.clients.secret_rotation_grace
                if arguments.grace is None
                else arguments.grace
            )
            if grace < 0:
                raise CommandError("--grace: must be 0 or more")
            rotation = await rotate_secret(store, arguments.client_id, grace, reactor.seconds)
            if rotation is None:
                raise CommandError(f"no client {arguments.client_id!r}")
            _print_json(rotation.as_json())
    finally:
        await store.close()


async def _list_clients(store: IStore, now: float, as_json: bool) -> None:
    """
    Print the clients a page at a time as they come (100,000 of them are
    never held at once): a table, or a JSON array written element by element.
    """
    if as_json:
        sys.stdout.write("[")
        first = True
        async for client in all_clients(store):
            sys.stdout.write(("\n" if first else ",\n") + json.dumps(public_view(client, now)))
            first = False
        sys.stdout.write("\n]\n" if not first else "]\n")
        return
    print(f"{'client_id':24} {'issued (UTC)':19}  {'auth method':19}  name / scope")
    async for client in all_clients(store):
        name = str(client.metadata.get("client_name", ""))
        scope = str(client.metadata.get("scope", ""))
        print(
            f"{client.client_id:24} {_when(client.client_id_issued_at):19}  "
            f"{client.token_endpoint_auth_method:19}  {name} / {scope}"
        )


def _when(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


async def run(reactor: Any, config: Config, arguments: argparse.Namespace) -> None:
    if arguments.command == "clients":
        await run_clients(reactor, config, arguments)
        return
    store = store_from_settings(config.store, reactor)
    encryptor, fresh_key_file = key_encryption(config)
    try:
        await store.open()
        keyring = Keyring(
            store,
            encryptor,
            config.tokens.signing_alg,
            config.tokens.max_lifetime,
            reactor.seconds,
        )
        try:
            await keyring.refresh()
        except KeyDecryptionError:
            raise key_mismatch(config, store.url, fresh_key_file) from None
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


#: The clients actions that take a client id.
_ON_ONE_CLIENT = ("show", "delete", "rotate-secret")


def protect_client_id(argv: Sequence[str]) -> list[str]:
    """
    C{argv} with the client id of C{clients show|delete|rotate-secret} put
    after a C{--}: a client id is URL-safe base64 and one in sixty-four
    starts with C{-}, which argparse would take for an option.
    """
    args = list(argv)
    if "clients" not in args:
        return args
    at = args.index("clients") + 1
    if at >= len(args) or args[at] not in _ON_ONE_CLIENT:
        return args
    rest, options, client_id = args[at + 1 :], [], None
    index = 0
    while index < len(rest):
        arg = rest[index]
        if arg == "--":
            options += rest[index:]
            break
        if arg == "--grace" and index + 1 < len(rest):
            options += rest[index : index + 2]
            index += 1
        elif arg in ("-h", "--help") or arg.startswith("--grace=") or client_id is not None:
            options.append(arg)
        else:
            client_id = arg
        index += 1
    protected = args[: at + 1] + options
    return protected if client_id is None else [*protected, "--", client_id]


def main(argv: Sequence[str] | None = None) -> None:
    arguments = _parser().parse_args(
        protect_client_id(sys.argv[1:] if argv is None else argv)
    )
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
            if failure.check(BrokenPipeError):
                # the reader went away (ccserver clients list | head): done
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise SystemExit(0)
            failure.trap(ConfigError, ValueError, StoreUnavailable, CommandError, OAuthError)
            print(f"ccserver: {failure.getErrorMessage()}", file=sys.stderr)
            raise SystemExit(1)

        return d.addErrback(failed)

    react(start)


if __name__ == "__main__":
    main()
