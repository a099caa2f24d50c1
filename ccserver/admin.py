"""
C{ccserver}: the administration command, for what an operator does to a
server's store while it runs.

    ccserver --version
    ccserver [--config FILE] [--store URL] keys list
    ccserver [--config FILE] [--store URL] keys rotate [--delay SECONDS]
    ccserver [--config FILE] [--store URL] keys retire [KID]
    ccserver [--config FILE] [--store URL] clients list [--json]
    ccserver [--config FILE] [--store URL] clients show CLIENT_ID
    ccserver [--config FILE] [--store URL] clients create [--metadata FILE] [--name NAME] ...
    ccserver [--config FILE] [--store URL] clients create --federated-identity ISS SUB ...
    ccserver [--config FILE] [--store URL] clients delete CLIENT_ID
    ccserver [--config FILE] [--store URL] clients rotate-secret CLIENT_ID [--grace SECONDS]
    ccserver [--config FILE] [--store URL] clients set-rate-limit CLIENT_ID
        (--token-rate-limit RATE[:BURST] | --off)
    ccserver [--config FILE] [--store URL] registration-tokens create [--expires 7d] [--uses N] ...
    ccserver [--config FILE] [--store URL] registration-tokens list [--json]
    ccserver [--config FILE] [--store URL] registration-tokens revoke ID

It reads the same configuration as C{twist ccserver} and works on the same
store; running servers follow its changes without a restart.  Each action
that changes or reads the store is told to the audit trail (C{[audit]
log}; standard error when that is standard output, where the command
writes what it prints), as done by the operating system user who ran it;
a command that cannot write the audit trail does nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import secrets
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from attrs import evolve, frozen
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react

from ccserver import __version__, audit, firststart, strictjson
from ccserver.auditlog import AuditWriter, open_writer
from ccserver.clients import all_clients, public_view, rotate_secret
from ccserver.config import Config, format_duration, load_config, parse_duration
from ccserver.errors import ConfigError, OAuthError, StoreUnavailable
from ccserver.firststart import key_encryption, key_mismatch
from ccserver.grants import find_grant_types
from ccserver.interfaces import IStore
from ccserver.keys import KeyDecryptionError, Keyring, RotationUnderWay, audit_key_events
from ccserver.model import Client, InitialAccessToken, is_resource_uri, is_scope_token
from ccserver.oauth.registration import (
    AUTH_METHODS,
    ClientRegistry,
    initial_access_token_limits,
    new_initial_access_token,
    register_client,
    registered_fields,
    registration_response,
    requested_token_rate_limit,
)
from ccserver.pluginloader import scan_plugins
from ccserver.stores import store_from_settings
from ccserver.text import escape, identifier_problem

#: What C{ccserver --help} says it is: plain text, for people (argparse
#: prints it as written, so no epytext markup here or in any help string).
DESCRIPTION = (
    "ccserver: the administration command, for what an operator does to a "
    "server's store while it runs."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccserver", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"ccserver {__version__}")
    parser.add_argument("--config", "-c", help="the TOML configuration file of the server")
    parser.add_argument("--store", help="the store URL (overrides the configuration)")
    commands = parser.add_subparsers(dest="command", required=True)
    keys = commands.add_parser("keys", help="signing keys").add_subparsers(
        dest="action", required=True
    )
    keys.add_parser(
        "list", help="list the signing keys and their states, and when the next rotation is due"
    )
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
    _registration_tokens_parser(commands)
    return parser


def _registration_tokens_parser(commands: Any) -> None:
    tokens = commands.add_parser(
        "registration-tokens",
        help="initial access tokens: let a team register its own clients at POST /client-reg, "
        "within limits, without the master token",
    ).add_subparsers(dest="action", required=True)
    create = tokens.add_parser(
        "create",
        help="make an initial access token; prints it, this once",
        description="Make an initial access token (RFC 7591 section 3): its holder registers "
        "clients at POST /client-reg with it as a bearer token, until it expires or has "
        "registered --uses clients, each within the limits given here (none given: no limit). "
        "Prints the token this once; the server keeps only its digest.",
    )
    create.add_argument(
        "--expires",
        default=DEFAULT_INITIAL_ACCESS_TOKEN_EXPIRY,
        metavar="DURATION",
        help="how long it registers: a number and s, m, h, d or w, e.g. 7d [default: "
        f"{DEFAULT_INITIAL_ACCESS_TOKEN_EXPIRY}]",
    )
    create.add_argument(
        "--uses",
        type=int,
        default=1,
        metavar="N",
        help="how many clients it may register [default: 1]",
    )
    create.add_argument(
        "--note", default="", help="who or what it is for, shown by list and in the audit trail"
    )
    create.add_argument(
        "--scope-limit",
        metavar="SCOPE",
        help='the scope values its clients may register, e.g. "read write" [default: any]',
    )
    create.add_argument(
        "--audience-limit",
        action="append",
        metavar="URI",
        help="an audience (or resource server URI) its clients may register; repeatable "
        "[default: any]",
    )
    create.add_argument(
        "--auth-method-limit",
        action="append",
        metavar="METHOD",
        help="an authentication method its clients may register; repeatable [default: any]",
    )
    create.add_argument(
        "--grant-type-limit",
        action="append",
        metavar="GRANT",
        help="a grant type its clients may register (client_credentials, "
        "urn:ietf:params:oauth:grant-type:token-exchange, or a grant type plugin's); "
        "repeatable [default: any]",
    )
    create.add_argument("--json", action="store_true", help="print it as JSON")
    listing = tokens.add_parser(
        "list", help="list the initial access tokens (never the tokens themselves)"
    )
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    revoke = tokens.add_parser(
        "revoke", help="revoke an initial access token: it registers no more clients"
    )
    revoke.add_argument("id", help="its identifier (iat_...), as create and list print it")


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
        help="register a client, as POST /client-reg does; prints its registration "
        "with the secret, this once",
        description="Register a client of any kind the server supports, with the same "
        "rules as POST /client-reg: each registration field from an option, or any of "
        "them from a JSON file (--metadata), the options winning. Prints what "
        "POST /client-reg answers, secrets included, this once.",
    )
    create.add_argument(
        "--metadata",
        metavar="FILE",
        help="a JSON object of registration metadata (RFC 7591), as POST /client-reg "
        "takes it; - reads it from standard input",
    )
    for option in CREATE_OPTIONS:
        option.add_to(create)
    create.add_argument(
        "--json",
        action="store_true",
        help="print the registration as JSON, exactly as POST /client-reg answers "
        "(also what is printed without it)",
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
    limit = clients.add_parser(
        "set-rate-limit",
        help="set how many tokens a client may be issued (its token_rate_limit), or --off "
        "for the server's default ([limits] tokens_per_client_per_second)",
    )
    limit.add_argument("client_id")
    chosen = limit.add_mutually_exclusive_group(required=True)
    chosen.add_argument(
        "--token-rate-limit",
        metavar="RATE[:BURST]",
        help="tokens a second, on average, and the most at once [default burst: a "
        "second's worth], e.g. 50 or 50:200 or 0.5:5",
    )
    chosen.add_argument(
        "--off", action="store_true", help="no limit of its own: the server's default applies"
    )


def rate_limit_option(text: str) -> dict[str, Any]:
    """
    C{--token-rate-limit RATE[:BURST]} as a C{token_rate_limit} object;
    its values are checked by the registration rules.

    @raise CommandError: it is not one or two numbers.
    """
    rate, _, burst = text.partition(":")
    try:
        value: dict[str, Any] = {"tokens_per_second": _number(rate)}
        if burst:
            value["burst"] = _number(burst)
    except ValueError:
        raise CommandError(
            f"--token-rate-limit: {text!r} is not RATE or RATE:BURST (e.g. 50 or 50:200)"
        ) from None
    return value


def _number(text: str) -> int | float:
    return int(text) if text.strip().isdigit() else float(text)


@frozen
class MetadataOption:
    """
    A registration field as an option of C{clients create}.

    @ivar field: the RFC 7591 (or this server's) metadata name.
    @ivar kind: C{"text"}; C{"list"} (the option repeats, one value each);
        C{"int"}; C{"flag"} (true when given); C{"json-file"} (a file
        holding the field's JSON value); C{"rate"} (RATE[:BURST], a
        C{token_rate_limit}).
    @ivar flags: the option's names, the first C{--field-name} unless given.
    """

    field: str
    kind: str
    help: str
    flags: tuple[str, ...] = ()
    metavar: str | tuple[str, ...] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return self.flags or ("--" + self.field.replace("_", "-"),)

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        options: dict[str, Any] = {"dest": self.field, "help": self.help, "default": None}
        if self.kind == "list":
            options["action"] = "append"
        elif self.kind == "binding":
            options["action"] = _Binding
            options["nargs"] = 2
        elif self.kind == "condition":
            options["action"] = _Condition
        elif self.kind == "int":
            options["type"] = int
        elif self.kind == "flag":
            options["action"] = "store_const"
            options["const"] = True
        if self.metavar is not None:
            options["metavar"] = self.metavar
        parser.add_argument(*self.names, **options)

    def value(self, given: Any) -> Any:
        if self.kind == "json-file":
            return _read_json(self.names[0], given)
        if self.kind == "rate":
            return rate_limit_option(given)
        return given


class _Binding(argparse.Action):
    """
    C{--federated-identity ISS SUB}: one more binding of the client to a
    workload identity (C{federated_identities}).
    """

    def __call__(
        self, parser: Any, namespace: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        bindings = getattr(namespace, self.dest) or []
        issuer, subject = values
        bindings.append({"issuer": issuer, "subject": subject})
        setattr(namespace, self.dest, bindings)


class _Condition(argparse.Action):
    """
    C{--federated-claim NAME=VALUE}: a claim the workload's token must
    carry with exactly this value, a condition of the C{--federated-identity}
    given before it.
    """

    def __call__(
        self, parser: Any, namespace: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        bindings = getattr(namespace, self.dest)
        name, equals, value = str(values).partition("=")
        if not bindings:
            parser.error(f"{option}: give it after the --federated-identity it is a condition of")
        if not equals or not name:
            parser.error(f"{option}: {values!r} is not NAME=VALUE")
        bindings[-1].setdefault("claims", {})[name] = value


#: Every registration field the server understands (RFC 7591 §2, RFC 8705
#: §2.1.2, RFC 9449 §5.2 and this server's own, C{federated_identities}
#: among them), as options of C{clients create}, so that it can make every kind of client: what they mean, and
#: which values are allowed, is checked by the registration rules.
CREATE_OPTIONS = (
    MetadataOption("client_name", "text", "the client's name", ("--name", "--client-name"), "NAME"),
    MetadataOption("scope", "text", 'its scope values, e.g. "read write"'),
    MetadataOption(
        "token_endpoint_auth_method",
        "text",
        "how it authenticates: " + ", ".join(AUTH_METHODS) + " [default: "
        "client_secret_basic, and client_secret_post works too while none is named]",
        ("--auth-method", "--token-endpoint-auth-method"),
        "METHOD",
    ),
    MetadataOption(
        "federated_identities",
        "binding",
        "bind it to a workload identity: the tokens of the trusted issuer ISS whose sub is "
        "SUB authenticate it (federated_jwt, the default with this option); repeatable",
        ("--federated-identity",),
        ("ISS", "SUB"),
    ),
    MetadataOption(
        "federated_identities",
        "condition",
        "a claim the token must also carry with exactly this value, e.g. "
        "environment=production: a condition of the --federated-identity before it; "
        "repeatable",
        ("--federated-claim",),
        "NAME=VALUE",
    ),
    MetadataOption(
        "token_endpoint_auth_signing_alg",
        "text",
        "the one algorithm its assertions may be signed with "
        "(private_key_jwt, client_secret_jwt)",
        metavar="ALG",
    ),
    MetadataOption(
        "jwks",
        "json-file",
        "a file holding its public keys, a JWK set (private_key_jwt; "
        "self_signed_tls_client_auth, with each certificate in x5c)",
        metavar="FILE",
    ),
    MetadataOption(
        "jwks_uri",
        "text",
        "where the server fetches its public keys instead (https)",
        metavar="URL",
    ),
    MetadataOption(
        "tls_client_auth_subject_dn",
        "text",
        "tls_client_auth: the subject DN of its certificate, e.g. "
        '"CN=billing,O=Example,C=GB"',
        metavar="DN",
    ),
    MetadataOption(
        "tls_client_auth_san_dns", "text", "tls_client_auth: a DNS name of its certificate",
        metavar="NAME",
    ),
    MetadataOption(
        "tls_client_auth_san_uri", "text", "tls_client_auth: a URI of its certificate",
        metavar="URI",
    ),
    MetadataOption(
        "tls_client_auth_san_ip", "text", "tls_client_auth: an IP address of its certificate",
        metavar="IP",
    ),
    MetadataOption(
        "tls_client_auth_san_email", "text",
        "tls_client_auth: an email address of its certificate", metavar="EMAIL",
    ),
    MetadataOption(
        "tls_client_certificate_bound_access_tokens",
        "flag",
        "its tokens are bound to its TLS certificate (RFC 8705)",
    ),
    MetadataOption(
        "dpop_bound_access_tokens", "flag", "it must send a DPoP proof (RFC 9449)"
    ),
    MetadataOption(
        "audience",
        "list",
        "a resource server (absolute URI) its tokens are for; repeatable",
        metavar="URI",
    ),
    MetadataOption(
        "resource_server_uris",
        "list",
        "a resource server it acts as, whose tokens it may introspect; repeatable",
        ("--resource-server-uri",),
        "URI",
    ),
    MetadataOption(
        "access_token_lifetime", "int", "seconds its tokens live", metavar="SECONDS"
    ),
    MetadataOption(
        "grant_types",
        "list",
        "a grant type it may use: client_credentials (the default), "
        "urn:ietf:params:oauth:grant-type:token-exchange, or a grant type plugin's; "
        "repeatable",
        ("--grant-type",), "GRANT",
    ),
    MetadataOption("application_type", "text", "web or native", metavar="TYPE"),
    MetadataOption("contacts", "list", "a contact address; repeatable", ("--contact",), "EMAIL"),
    MetadataOption("client_uri", "text", "its home page", metavar="URL"),
    MetadataOption("logo_uri", "text", "its logo", metavar="URL"),
    MetadataOption("tos_uri", "text", "its terms of service", metavar="URL"),
    MetadataOption("policy_uri", "text", "its privacy policy", metavar="URL"),
    MetadataOption("software_id", "text", "its software's identifier", metavar="ID"),
    MetadataOption("software_version", "text", "its software's version", metavar="VERSION"),
    MetadataOption(
        "token_rate_limit",
        "rate",
        "tokens it may be issued a second, and the most at once [default burst: a second's "
        "worth], e.g. 50 or 50:200 (this server's own field, for the operator only)",
        metavar="RATE[:BURST]",
    ),
)


def grant_types() -> tuple[str, ...]:
    """
    The grant types of the plugins a server started here would load (its
    grant handler may still leave token exchange out).
    """
    return tuple(find_grant_types(scan_plugins()).plugins)


def _read_json(option: str, path: str) -> Any:
    """
    The JSON in the file at C{path} (C{-}: standard input).

    @raise CommandError: it cannot be read, or is not JSON.
    """
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as e:
        raise CommandError(f"{option}: cannot read {path!r}: {e.strerror}") from None
    try:
        # the strict parser of POST /client-reg: no repeated names, no NaN
        return strictjson.loads(data)
    except ValueError as e:
        raise CommandError(f"{option}: {path!r} is not JSON: {e}") from None


def registration_body(arguments: argparse.Namespace) -> dict[str, Any]:
    """
    The registration request C{clients create} makes: the C{--metadata}
    file's object, then each option given, which wins over it.  Nothing
    is checked here: L{register_client} checks it as the endpoint does.
    """
    body: dict[str, Any] = {}
    if arguments.metadata is not None:
        document = _read_json("--metadata", arguments.metadata)
        if not isinstance(document, dict):
            raise CommandError("--metadata: must hold a JSON object of registration metadata")
        body.update(document)
    for option in CREATE_OPTIONS:
        given = getattr(arguments, option.field)
        if given is not None and option.kind != "condition":
            body[option.field] = option.value(given)
    return body


class CommandError(Exception):
    """
    A command that cannot be done as asked: one line for the operator.
    """


def _print(text: str, file: Any = None) -> None:
    """
    Print C{text}, every line escaped (L{escape}): the one way the command
    writes to the operator's terminal, since what it prints (a client's
    name, URIs, ids; an error naming them) may hold control or bidi
    characters someone else chose.
    """
    print("\n".join(escape(line) for line in text.split("\n")), file=file or sys.stdout)


def _print_json(document: Any) -> None:
    # JSON escapes what it must; escape() the rest (C1 controls, bidi,
    # lone surrogates) with JSON's own escapes, so it stays the same JSON.
    _print(json.dumps(document, indent=2, ensure_ascii=False))


def _client_id(client_id: str) -> str:
    """
    A client id from the command line, if some client could have it.
    """
    problem = identifier_problem(client_id)
    if problem is not None:
        raise CommandError(f"client_id {problem}")
    return client_id


def _store(reactor: Any, config: Config) -> IStore:
    """
    The configured store, not yet open; a new SQLite file is made readable
    by its owner only first, as the server makes it.
    """
    firststart.private_sqlite_file(config.store.url)
    return store_from_settings(config.store, reactor)


async def run_clients(
    reactor: Any, config: Config, arguments: argparse.Namespace, actor: audit.Actor
) -> None:
    """
    C{ccserver clients ...}, on an open store.  The operator is trusted: no
    token is asked for.  Nothing here caches a client, and running servers
    follow every change within their C{[store] client_cache_seconds}.
    """
    store = _store(reactor, config)
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
        trusted_issuers = [trusted.issuer for trusted in config.trusted_issuers]
        action = arguments.action
        if action == "list":
            await _list_clients(store, reactor.seconds(), arguments.json)
        elif action == "show":
            client = await store.get_client(_client_id(arguments.client_id))
            if client is None:
                raise CommandError(f"no client {arguments.client_id!r}")
            audit.emit(audit.CLIENT_READ, actor, client_id=client.client_id)
            _print_json(public_view(client, reactor.seconds()))
        elif action == "create":
            body = registration_body(arguments)
            encryptor = (
                # the secret is kept encrypted: the HMAC needs it itself
                firststart.key_encryptor(config)
                if body.get("token_endpoint_auth_method") == "client_secret_jwt"
                else None
            )
            registration = await register_client(
                store,
                body,
                reactor.seconds,
                encryptor,
                config.client_auth.jwks_uri_policy,
                grant_types(),
                trusted_issuers,
            )
            audit.emit(audit.CLIENT_REGISTERED, actor, **registered_fields(registration.client))
            _print_json(registration_response(registration, config.issuer))
        elif action == "delete":
            if not await registry.remove(_client_id(arguments.client_id)):
                raise CommandError(f"no client {arguments.client_id!r}")
            audit.emit(audit.CLIENT_DELETED, actor, client_id=arguments.client_id)
            _print(f"deleted {arguments.client_id}; its tokens are revoked")
        elif action == "rotate-secret":
            grace = (
                config.clients.secret_rotation_grace
                if arguments.grace is None
                else arguments.grace
            )
            if grace < 0:
                raise CommandError("--grace: must be 0 or more")
            rotation = await rotate_secret(
                store, _client_id(arguments.client_id), grace, reactor.seconds
            )
            if rotation is None:
                raise CommandError(f"no client {arguments.client_id!r}")
            audit.emit(
                audit.CLIENT_SECRET_ROTATED,
                actor,
                client_id=rotation.client_id,
                previous_secret_expires_at=rotation.previous_secret_expires_at,
            )
            _print_json(rotation.as_json())
        elif action == "set-rate-limit":
            client = await set_rate_limit(store, arguments, actor)
            _print_json(public_view(client, reactor.seconds()))
    finally:
        await store.close()


async def set_rate_limit(
    store: IStore, arguments: argparse.Namespace, actor: audit.Actor
) -> Client:
    """
    C{clients set-rate-limit}: the client's own token rate limit, or none
    (C{--off}); told to the audit trail as the command user's update.
    """
    value = None if arguments.off else rate_limit_option(arguments.token_rate_limit)
    try:
        limit = requested_token_rate_limit({"token_rate_limit": value})
    except OAuthError as e:
        raise CommandError(f"--token-rate-limit: {e.description.split(': ', 1)[1]}") from None
    client = await store.get_client(_client_id(arguments.client_id))
    if client is None:
        raise CommandError(f"no client {arguments.client_id!r}")
    changed = evolve(client, token_rate_limit=limit)
    if not await store.replace_client(changed):
        raise CommandError(f"no client {arguments.client_id!r}")
    if limit != client.token_rate_limit:
        audit.emit(
            audit.CLIENT_UPDATED,
            actor,
            None,
            client_id=client.client_id,
            changed_fields=["token_rate_limit"],
        )
    return changed


#: How long an initial access token registers unless --expires says.
DEFAULT_INITIAL_ACCESS_TOKEN_EXPIRY = "1d"
#: The longest --note.
MAX_NOTE = 200


async def run_registration_tokens(
    reactor: Any, config: Config, arguments: argparse.Namespace, actor: audit.Actor
) -> None:
    """
    C{ccserver registration-tokens ...}: make, list and revoke initial
    access tokens (RFC 7591 §3), on an open store.
    """
    if arguments.action == "create":
        # checked before the store is opened: a mistake changes nothing
        limits = initial_access_token_options(arguments)
    store = _store(reactor, config)
    await store.open()
    try:
        now = int(reactor.seconds())
        if arguments.action == "create":
            token, record = new_initial_access_token(now, **limits)
            await store.add_initial_access_token(record)
            audit.emit(
                audit.INITIAL_ACCESS_TOKEN_CREATED,
                actor,
                initial_access_token_id=record.token_id,
                expires_at=record.expires_at,
                max_uses=record.max_uses,
                note=record.note or None,
                **initial_access_token_limits(record),
            )
            _print_created(token, record, arguments.json)
        elif arguments.action == "list":
            tokens = await store.list_initial_access_tokens()
            _print_initial_access_tokens(tokens, now, arguments.json)
        elif arguments.action == "revoke":
            problem = identifier_problem(arguments.id)
            if problem is not None:
                raise CommandError(f"id {problem}")
            if not await store.revoke_initial_access_token(arguments.id, now):
                raise CommandError(f"no initial access token {arguments.id!r}")
            audit.emit(audit.INITIAL_ACCESS_TOKEN_REVOKED, actor, initial_access_token_id=arguments.id)
            _print(f"revoked {arguments.id}; it registers no more clients")
    finally:
        await store.close()


def initial_access_token_options(arguments: argparse.Namespace) -> dict[str, Any]:
    """
    The options of C{registration-tokens create}, checked, as
    L{new_initial_access_token} takes them.

    @raise CommandError: naming the option that is wrong.
    """
    try:
        expires_in = parse_duration(arguments.expires)
    except ValueError as e:
        raise CommandError(f"--expires: {e}") from None
    if not 1 <= arguments.uses <= MAX_INITIAL_ACCESS_TOKEN_USES:
        raise CommandError(f"--uses: must be 1 to {MAX_INITIAL_ACCESS_TOKEN_USES}")
    note = arguments.note
    if len(note) > MAX_NOTE or not note.isprintable():
        raise CommandError(f"--note: must be printable text of at most {MAX_NOTE} characters")
    scope = None
    if arguments.scope_limit is not None:
        values = arguments.scope_limit.split()
        if not all(is_scope_token(value) for value in values):
            raise CommandError(
                "--scope-limit: must be scope values separated by spaces (RFC 6749 §3.3)"
            )
        scope = values
    for uri in arguments.audience_limit or ():
        if not is_resource_uri(uri):
            raise CommandError(f"--audience-limit: {uri!r} is not an absolute URI without fragment")
    for option, given, known in (
        ("--auth-method-limit", arguments.auth_method_limit, AUTH_METHODS),
        ("--grant-type-limit", arguments.grant_type_limit, grant_types()),
    ):
        for value in given or ():
            if value not in known:
                raise CommandError(f"{option}: {value!r} is not one of " + ", ".join(known))
    return {
        "expires_in": expires_in,
        "max_uses": arguments.uses,
        "note": note,
        "scope_limit": scope,
        "audience_limit": arguments.audience_limit,
        "auth_method_limit": arguments.auth_method_limit,
        "grant_type_limit": arguments.grant_type_limit,
    }


#: The most clients one initial access token may register.
MAX_INITIAL_ACCESS_TOKEN_USES = 1_000_000


def initial_access_token_view(token: InitialAccessToken, now: float) -> dict[str, Any]:
    """
    What C{registration-tokens list --json} prints of one: never the token
    or its digest.
    """
    return {
        "id": token.token_id,
        "state": token.unusable(now) or "active",
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "uses": token.uses,
        "max_uses": token.max_uses,
        "note": token.note,
        "revoked_at": token.revoked_at,
        **initial_access_token_limits(token),
    }


def _print_created(token: str, record: InitialAccessToken, as_json: bool) -> None:
    if as_json:
        _print_json({"initial_access_token": token, **initial_access_token_view(record, 0)})
        return
    _print(token)
    _print(
        f"{record.token_id}: registers {record.max_uses} "
        f"client{'s' if record.max_uses != 1 else ''} until {_when(record.expires_at)} UTC "
        "(POST /client-reg, with it as a bearer token); the token above is shown this once",
        file=sys.stderr,
    )


def _limits_text(token: InitialAccessToken) -> str:
    named = [
        f"{name}: {' '.join(value)}"
        for name, value in (
            ("scope", token.scope_limit),
            ("audience", token.audience_limit),
            ("auth", token.auth_method_limit),
            ("grant", token.grant_type_limit),
        )
        if value is not None
    ]
    return "; ".join(named) or "-"


def _print_initial_access_tokens(
    tokens: list[InitialAccessToken], now: float, as_json: bool
) -> None:
    if as_json:
        _print_json([initial_access_token_view(token, now) for token in tokens])
        return
    _print(f"{'id':16} {'state':8} {'expires (UTC)':19}  {'uses':>11}  note / limits")
    for token in tokens:
        uses = f"{token.uses}/{token.max_uses}"
        _print(
            f"{token.token_id:16} {token.unusable(now) or 'active':8} "
            f"{_when(token.expires_at):19}  {uses:>11}  {token.note or '-'} / {_limits_text(token)}"
        )


async def _list_clients(store: IStore, now: float, as_json: bool) -> None:
    """
    Print the clients a page at a time as they come (100,000 of them are
    never held at once): a table, or a JSON array written element by element.
    """
    if as_json:
        sys.stdout.write("[")
        first = True
        async for client in all_clients(store):
            # ensure_ascii: nothing left for escape() to do, but no harm
            element = escape(json.dumps(public_view(client, now)))
            sys.stdout.write(("\n" if first else ",\n") + element)
            first = False
        sys.stdout.write("\n]\n" if not first else "]\n")
        return
    _print(f"{'client_id':24} {'issued (UTC)':19}  {'auth method':19}  name / scope")
    async for client in all_clients(store):
        name = str(client.metadata.get("client_name", ""))
        scope = str(client.metadata.get("scope", ""))
        _print(
            f"{client.client_id:24} {_when(client.client_id_issued_at):19}  "
            f"{client.token_endpoint_auth_method:19}  {name} / {scope}"
        )


def _when(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def cli_actor(environ: Mapping[str, str]) -> audit.Actor:
    """
    The audit trail's actor for this command: the operating system user
    running it (by its effective uid), and the one who ran it through sudo.
    """
    uid = os.geteuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return audit.cli(user, environ.get("SUDO_USER"))


async def run(
    reactor: Any, config: Config, arguments: argparse.Namespace, actor: audit.Actor | None = None
) -> None:
    """
    The command C{arguments} name, told to the audit trail as done by
    C{actor} (by default L{cli_actor}).
    """
    actor = actor or cli_actor(os.environ)
    if arguments.command == "clients":
        await run_clients(reactor, config, arguments, actor)
        return
    if arguments.command == "registration-tokens":
        await run_registration_tokens(reactor, config, arguments, actor)
        return
    store = _store(reactor, config)
    encryptor, fresh_key_file = key_encryption(config)
    try:
        await store.open()
        keyring = Keyring(
            store,
            encryptor,
            config.tokens.signing_alg,
            config.tokens.max_lifetime,
            reactor.seconds,
            audit_key_events(actor),
        )
        try:
            await keyring.refresh()
        except KeyDecryptionError:
            raise key_mismatch(config, store.url, fresh_key_file) from None
        if arguments.action == "rotate":
            delay = config.keys.activation_delay if arguments.delay is None else arguments.delay
            if delay < 0:
                raise ConfigError("--delay: must be 0 or more")
            # under the rotation's lease: never at once with a scheduled one
            new = await keyring.rotate_exclusively(delay, store, f"cli:{secrets.token_hex(8)}")
            _print(f"published {new.kid} ({new.alg}); it signs from {_when(new.active_from)} UTC")
        elif arguments.action == "retire":
            # the keyring tells the audit trail of each key it retires or deletes
            for retired in await keyring.retire(arguments.kid):
                verb = "stopped signing with" if arguments.kid else "deleted"
                _print(f"{verb} {retired.kid}")
        await keyring.refresh()
        _print(f"{'kid':44} {'alg':6} {'state':9} {'created (UTC)':19}  {'signs from':19}  retired")
        for key in keyring.keys():
            stored = key.stored
            _print(
                f"{stored.kid:44} {stored.alg:6} {keyring.state(stored):9} "
                f"{_when(stored.created_at):19}  {_when(stored.active_from):19}  "
                f"{_when(stored.retired_at)}"
            )
        _print(rotation_schedule(keyring, config.keys.rotate_every, reactor.seconds()))
    finally:
        await store.close()


def rotation_schedule(keyring: Keyring, rotate_every: int | None, now: float) -> str:
    """
    The line of C{keys list} that says when the keys are next rotated on
    their schedule ([keys] rotate_every), or that they are not.
    """
    if rotate_every is None:
        return "scheduled rotation: off ([keys] rotate_every is not set)"
    due = keyring.next_rotation(rotate_every)
    when = "now (at the next check of a running server)" if due <= now else f"{_when(int(due))} UTC"
    return f"scheduled rotation: every {format_duration(rotate_every)}; next {when}"


#: The actions that take an identifier argparse could take for an option:
#: a client id (C{clients show|delete|rotate-secret|set-rate-limit}) and a
#: key id (C{keys retire}).
_ON_ONE = {
    "clients": ("show", "delete", "rotate-secret", "set-rate-limit"),
    "keys": ("retire",),
}
#: Their options that take a value (the next argument, or after "=").
_VALUE_OPTIONS = ("--grace", "--token-rate-limit")


def protect_identifier(argv: Sequence[str]) -> list[str]:
    """
    C{argv} with the identifier of an action of L{_ON_ONE} put after a
    C{--}: a client id is URL-safe base64, a key id an RFC 7638 thumbprint
    in URL-safe base64, and one in sixty-four starts with C{-}, which
    argparse would take for an option.
    """
    args = list(argv)
    commands = [args.index(command) for command in _ON_ONE if command in args]
    if not commands:
        return args
    at = min(commands) + 1
    if at >= len(args) or args[at] not in _ON_ONE[args[at - 1]]:
        return args
    rest, options, identifier = args[at + 1 :], [], None
    index = 0
    while index < len(rest):
        arg = rest[index]
        if arg == "--":
            options += rest[index:]
            break
        if arg in _VALUE_OPTIONS and index + 1 < len(rest):
            options += rest[index : index + 2]
            index += 1
        elif (
            arg in ("-h", "--help", "--off")
            or arg.startswith(tuple(f"{option}=" for option in _VALUE_OPTIONS))
            or identifier is not None
        ):
            options.append(arg)
        else:
            identifier = arg
        index += 1
    protected = args[: at + 1] + options
    return protected if identifier is None else [*protected, "--", identifier]


def _closing(result: object, writer: AuditWriter) -> object:
    audit.publisher.removeObserver(writer)
    writer.close()
    return result


def main(argv: Sequence[str] | None = None) -> None:
    arguments = _parser().parse_args(
        protect_identifier(sys.argv[1:] if argv is None else argv)
    )
    try:
        config = load_config(
            {"config": arguments.config, "store": arguments.store}, os.environ
        )
    except ConfigError as e:
        _print(f"ccserver: {e}", file=sys.stderr)
        sys.exit(1)
    if config.store.url.startswith("memory:"):
        sys.exit("ccserver: --store: a memory:// store lives inside its server; nothing to manage")

    try:
        # "-" is standard error here: standard output is what the command prints
        writer = open_writer(config.audit, config.issuer, stdout=2, write_through=True)
    except OSError as e:
        sys.exit(f"ccserver: [audit] log: cannot write the audit trail: {e.strerror or e}")
    audit.publisher.addObserver(writer)

    def start(reactor: Any) -> Any:
        d = ensureDeferred(run(reactor, config, arguments))
        d.addBoth(_closing, writer)

        def failed(failure: Any) -> None:
            if failure.check(BrokenPipeError):
                # the reader went away (ccserver clients list | head): done
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise SystemExit(0)
            failure.trap(
                ConfigError, ValueError, StoreUnavailable, CommandError, OAuthError, RotationUnderWay
            )
            _print(f"ccserver: {failure.getErrorMessage()}", file=sys.stderr)
            raise SystemExit(1)

        return d.addErrback(failed)

    react(start)


if __name__ == "__main__":
    main()
