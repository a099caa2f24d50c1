"""
The audit trail: one structured event for every security-relevant action,
said where it happens and written somewhere else.

The code that acts says what happened with L{emit}: the event's type (one
of L{EVENTS}), who acted (an L{Actor}), the request's source address where
there is one, and the type's fields::

    audit.emit(audit.KEY_CREATED, audit.SERVER, kid=key.kid, alg=key.alg,
               active_from=key.active_from)

An event is a Twisted log event under the namespace C{ccserver.audit},
emitted to this module's own L{publisher}, not to the global one: the main
log never sees it (twist would format every token's event into it), and an
observer, L{ccserver.auditlog.AuditWriter}, writes it, one JSON object a
line, to the audit trail's own destination (C{[audit] log}).  Without an
observer (a library user, most unit tests) an event costs its emission and
goes nowhere.

The schema is this module, and only this module: every event type with its
fields (L{EVENTS}), every field with its meaning (L{FIELDS}), every kind of
actor (L{ACTOR_TYPES}).  L{emit} refuses an event that does not fit it
(L{AuditSchemaError}: a programming error, which the tests find), and
docs/audit.md documents exactly these (a test compares them).  A change
that removes or renames anything is a new L{SCHEMA_VERSION}; a new event
type or optional field is not.

No field ever holds a secret: no client secret, registration or initial
access token, master token, access token, assertion or private key.  Only
what names them (a client id, an initial access token's id, a token's
C{jti}, a key's C{kid}) and what they grant.  A test runs a full
walk-through and searches every event for every secret it made.

This module imports nothing else of ccserver: every layer may emit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from time import time
from types import MappingProxyType

from attrs import field, frozen
from twisted.logger import Logger, LogLevel, LogPublisher

#: The C{audit_version} of every line: the schema's version.
SCHEMA_VERSION = 1

#: The log namespace of every audit event.
NAMESPACE = "ccserver.audit"

#: Where audit events are emitted: the audit trail's own publisher, which
#: L{ccserver.auditlog.AuditWriter} observes.
publisher = LogPublisher()

_log = Logger(namespace=NAMESPACE, observer=publisher)


class AuditSchemaError(Exception):
    """
    An event that does not fit the schema: an unknown type, a field its
    type does not have, or a required field left out.
    """


# who acted

#: What each kind of actor is, and the member that names it (if any).
ACTOR_TYPES: Mapping[str, str] = MappingProxyType(
    {
        "master_token": "the holder of the master token (the operator, over HTTP)",
        "initial_access_token": "the holder of an initial access token; `id` names it",
        "registration_access_token": "a client's registration access token; "
        "`client_id` names the client",
        "client": "a client, authenticated as `client_id`",
        "unauthenticated": "a caller that did not prove who it is (a failed or missing "
        "credential); what it claimed is in the event's fields",
        "cli": "the `ccserver` command; `user` is the operating system user who ran it, "
        "`sudo_user` the one who ran it through sudo",
        "server": "the server itself (a brute-force block that ended, a key made at the "
        "first start, a scheduled rotation)",
    }
)


def _readonly(names: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(names))


@frozen
class Actor:
    """
    Who acted: a kind (one of L{ACTOR_TYPES}) and the members that name it.
    """

    type: str = field()
    names: Mapping[str, str] = field(factory=dict, converter=_readonly)
    #: its JSON object's text, made once (ASCII, as the lines are)
    json_text: str = field(init=False, repr=False, eq=False)

    @type.validator
    def _known(self, attribute: object, value: str) -> None:
        if value not in ACTOR_TYPES:
            raise AuditSchemaError(f"unknown actor type {value!r}")

    def __attrs_post_init__(self) -> None:
        text = json.dumps(self.as_json(), separators=(",", ":"), ensure_ascii=True)
        object.__setattr__(self, "json_text", text)

    def as_json(self) -> dict[str, str]:
        return {"type": self.type, **self.names}


MASTER_TOKEN = Actor("master_token")
UNAUTHENTICATED = Actor("unauthenticated")
SERVER = Actor("server")


@lru_cache(maxsize=10_000)
def client(client_id: str) -> Actor:
    """
    The client C{client_id}, authenticated (made once per client, for as
    long as it is among the last 10,000 named: every token names one).
    """
    return Actor("client", {"client_id": client_id})


def registration_access_token(client_id: str) -> Actor:
    return Actor("registration_access_token", {"client_id": client_id})


def initial_access_token(token_id: str) -> Actor:
    return Actor("initial_access_token", {"id": token_id})


def cli(user: str, sudo_user: str | None = None) -> Actor:
    """
    The C{ccserver} command, run by the operating system user C{user}
    (through sudo by C{sudo_user}).
    """
    names = {"user": user}
    if sudo_user:
        names["sudo_user"] = sudo_user
    return Actor("cli", names)


def workload(issuer: str, subject: object) -> dict[str, str]:
    """
    A workload identity as the C{workload} and C{claimed_workload} fields
    say it: its trusted issuer, and its subject if it names one.
    """
    named = {"issuer": issuer}
    if isinstance(subject, str):
        named["subject"] = subject
    return named


# the schema


@frozen
class Field:
    """
    A field an event may carry: its JSON type and its meaning.
    """

    name: str
    kind: str
    description: str


@frozen
class EventType:
    """
    An event type: what it records, its fields, and whether C{[audit]
    token_issued} may thin it out (only C{token.issued}: every other event
    is always written).
    """

    name: str
    description: str
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    sampled: bool = False
    #: every field it may carry
    allowed: frozenset[str] = field(init=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "allowed", frozenset(self.required + self.optional))


#: The members every line has (or may have, for C{source}), before the
#: event's own fields; no field of an event type may have one of these names.
ENVELOPE: tuple[Field, ...] = (
    Field("audit_version", "integer", f"the schema's version: {SCHEMA_VERSION}"),
    Field("time", "string", "when it happened: RFC 3339, UTC, milliseconds"),
    Field("type", "string", "the event type"),
    Field("actor", "object", "who acted: `type` (see the actor types) and what names it"),
    Field(
        "source",
        "string",
        "the address the request came from (behind `[limits] trusted_proxies`, the "
        "client's); absent for the command and the server's own actions",
    ),
    Field("issuer", "string", "the server's issuer identifier"),
    Field("pid", "integer", "the process that wrote it (one per worker)"),
)

_FIELDS = (
    Field("client_id", "string", "the client the event is about"),
    Field(
        "claimed_client_id",
        "string",
        "the client a request said it was, when it did not prove it (at most 256 "
        "characters)",
    ),
    Field("client_name", "string", "the client's registered name"),
    Field(
        "privileged",
        "object",
        "the client's privileged metadata as registered (scope, audience, grant types, "
        "authentication method, token binding...): what only the master token may change",
    ),
    Field(
        "changed_fields",
        "string list",
        "the names of the metadata fields whose value changed (never a value)",
    ),
    Field(
        "previous_secret_expires_at",
        "integer",
        "when the secret rotated out stops working (seconds since the epoch); absent "
        "when it stopped at once",
    ),
    Field("grant_type", "string", "the grant type of the token request"),
    Field("scope", "string list", "the scope values granted, sorted"),
    Field("audience", "string list", "the token's audience"),
    Field("token_id", "string", "the access token's `jti` (never the token)"),
    Field("token_format", "string", "`jwt` or `opaque`"),
    Field("token_client_id", "string", "the client an introspected token was issued to"),
    Field("expires_at", "integer", "when it expires (seconds since the epoch)"),
    Field(
        "binding",
        "string",
        "what the token is bound to: `bearer` (nothing), `dpop`, `mtls`, or `dpop+mtls`",
    ),
    Field("jkt", "string", "the thumbprint of the DPoP key the token is bound to"),
    Field("x5t_s256", "string", "the thumbprint of the TLS certificate the token is bound to"),
    Field("auth_method", "string", "how the client authenticated"),
    Field(
        "workload",
        "object",
        "the workload identity whose token authenticated the client (`federated_jwt`, or "
        "the JWT bearer grant's assertion), verified: `issuer` (the trusted issuer) and "
        "`subject` (the token's `sub`); never the token",
    ),
    Field(
        "claimed_workload",
        "object",
        "the workload identity a refused request's workload token claimed, unverified: "
        "`issuer` (a trusted issuer) and `subject` (its `sub`, at most 256 characters)",
    ),
    Field(
        "subject_token",
        "object",
        "a token exchange's subject token (RFC 8693), once verified: `type` (its token "
        "type URI), and those of `id` (its `jti`), `subject` (`sub`), `issuer` (`iss`) and "
        "`client_id` (the client it was issued to) it has; never the token",
    ),
    Field(
        "actor_token",
        "object",
        "a token exchange's actor token, once verified, named as `subject_token` is",
    ),
    Field("error", "string", "the OAuth error code the request was answered with"),
    Field("status", "integer", "the HTTP status it was answered with"),
    Field(
        "reason",
        "string",
        "why, where the error code does not say: `not_permitted` (the token is not the "
        "caller's to see), `not_owner` (not the caller's to revoke), `expired`, "
        "`used_up`, `revoked` (an initial access token that no longer registers)",
    ),
    Field(
        "action",
        "string",
        "what a refused registration request asked: `register`, `read`, `update`, "
        "`delete` or `rotate_secret`",
    ),
    Field(
        "credential",
        "string",
        "the credential a brute-force limit counts: `client`, "
        "`registration_access_token`, `master_token` or `initial_access_token`",
    ),
    Field(
        "limit",
        "string",
        "which limit: `per_source` (too many attempts from this address) or `cap` (too "
        "many from addresses not known for the credential)",
    ),
    Field("until", "integer", "when the block ends (seconds since the epoch)"),
    Field("tokens_per_second", "number", "a token rate limit: tokens a second, on average"),
    Field("burst", "integer", "a token rate limit: the most tokens at once"),
    Field("kid", "string", "the signing key's identifier"),
    Field("alg", "string", "the signing key's algorithm"),
    Field("active_from", "integer", "when the key signs from (seconds since the epoch)"),
    Field("retired_at", "integer", "when the key stops signing (seconds since the epoch)"),
    Field("initial_access_token_id", "string", "the initial access token's identifier"),
    Field("note", "string", "the operator's note on the initial access token"),
    Field("max_uses", "integer", "how many clients the initial access token may register"),
    Field("uses", "integer", "how many it has registered, this one included"),
    Field(
        "scope_limit",
        "string list",
        "the scope values its clients may have (absent: any)",
    ),
    Field(
        "audience_limit",
        "string list",
        "the audiences (and resource server URIs) its clients may have (absent: any)",
    ),
    Field(
        "auth_method_limit",
        "string list",
        "the authentication methods its clients may use (absent: any)",
    ),
    Field(
        "grant_type_limit",
        "string list",
        "the grant types its clients may use (absent: any)",
    ),
)

#: Every field an event type may carry, by name.
FIELDS: Mapping[str, Field] = MappingProxyType({f.name: f for f in _FIELDS})

# The event types' names, for the code that emits them.
CLIENT_REGISTERED = "client.registered"
CLIENT_READ = "client.read"
CLIENT_UPDATED = "client.updated"
CLIENT_DELETED = "client.deleted"
CLIENT_SECRET_ROTATED = "client.secret_rotated"
REGISTRATION_REFUSED = "registration.refused"
TOKEN_ISSUED = "token.issued"
TOKEN_REFUSED = "token.refused"
TOKEN_REVOKED = "token.revoked"
REVOCATION_REFUSED = "revocation.refused"
INTROSPECTION_REFUSED = "introspection.refused"
BLOCK_STARTED = "limits.block_started"
BLOCK_ENDED = "limits.block_ended"
RATE_LIMITED = "limits.rate_limited"
KEY_CREATED = "key.created"
KEY_ACTIVATED = "key.activated"
KEY_RETIRED = "key.retired"
KEY_DELETED = "key.deleted"
INITIAL_ACCESS_TOKEN_CREATED = "initial_access_token.created"
INITIAL_ACCESS_TOKEN_USED = "initial_access_token.used"
INITIAL_ACCESS_TOKEN_REVOKED = "initial_access_token.revoked"

_REFUSAL = ("error", "status", "reason", "client_id", "claimed_client_id")
_BLOCK = ("credential", "limit", "until")
_LIMITS = ("scope_limit", "audience_limit", "auth_method_limit", "grant_type_limit")

_EVENTS = (
    EventType(
        CLIENT_REGISTERED,
        "a client was registered (POST /client-reg, or `ccserver clients create`); "
        "an initial access token's registration names it in `actor`",
        ("client_id", "privileged"),
        ("client_name",),
    ),
    EventType(CLIENT_READ, "a client's registration was read", ("client_id",)),
    EventType(
        CLIENT_UPDATED,
        "a client's registration was replaced (PUT /client-reg/{id})",
        ("client_id", "changed_fields"),
    ),
    EventType(
        CLIENT_DELETED,
        "a client was deleted, and its tokens with it",
        ("client_id",),
    ),
    EventType(
        CLIENT_SECRET_ROTATED,
        "a client was given a new secret",
        ("client_id",),
        ("previous_secret_expires_at",),
    ),
    EventType(
        REGISTRATION_REFUSED,
        "a request to the registration endpoints was refused: a wrong, expired or used "
        "up token, metadata beyond what the credential allows, or bad metadata",
        ("action", "status"),
        ("error", "reason", "client_id", "initial_access_token_id"),
    ),
    EventType(
        TOKEN_ISSUED,
        "an access token was issued, by any grant type (a plugin's included; thinned "
        "out by `[audit] token_issued`)",
        (
            "client_id",
            "grant_type",
            "scope",
            "audience",
            "token_id",
            "token_format",
            "expires_at",
            "binding",
            "auth_method",
        ),
        ("jkt", "x5t_s256", "workload", "subject_token", "actor_token"),
        sampled=True,
    ),
    EventType(
        TOKEN_REFUSED,
        "a token request was refused (`client_id` once the client authenticated, else "
        "`claimed_client_id` if it named one, and `claimed_workload` for a workload's "
        "token); any grant type, a plugin's included",
        ("error", "status"),
        (
            "client_id",
            "claimed_client_id",
            "grant_type",
            "workload",
            "claimed_workload",
            "subject_token",
            "actor_token",
        ),
    ),
    EventType(
        TOKEN_REVOKED,
        "an access token was revoked (by its client, or with the master token)",
        ("token_id", "client_id", "token_format"),
        ("workload",),
    ),
    EventType(
        REVOCATION_REFUSED,
        "a revocation request was refused, or named another client's token",
        ("status",),
        _REFUSAL[2:] + ("error", "token_id", "workload", "claimed_workload"),
    ),
    EventType(
        INTROSPECTION_REFUSED,
        "an introspection request was refused, or asked about a token not the "
        "caller's to see (answered `active: false`)",
        ("status",),
        _REFUSAL[2:] + ("error", "token_id", "token_client_id", "workload", "claimed_workload"),
    ),
    EventType(
        BLOCK_STARTED,
        "a brute-force limit began refusing a credential's checks (each process "
        "reports the blocks it refuses)",
        _BLOCK,
        ("client_id", "workload"),
    ),
    EventType(
        BLOCK_ENDED, "the window of a block has ended", _BLOCK, ("client_id", "workload")
    ),
    EventType(
        RATE_LIMITED,
        "a client's token requests began to be refused (429) by its token rate limit (its "
        "own `token_rate_limit`, or `[limits] tokens_per_client_per_second`); each process "
        "tells it once when they begin, and again only after one of its requests got through",
        ("client_id", "tokens_per_second", "burst", "until"),
    ),
    EventType(
        KEY_CREATED,
        "a signing key was made and published",
        ("kid", "alg", "active_from"),
    ),
    EventType(KEY_ACTIVATED, "a signing key began to sign", ("kid", "alg")),
    EventType(
        KEY_RETIRED,
        "a signing key was set to stop signing (it stays published until its tokens "
        "have expired)",
        ("kid", "alg", "retired_at"),
    ),
    EventType(KEY_DELETED, "a key no live token needs was deleted", ("kid", "alg")),
    EventType(
        INITIAL_ACCESS_TOKEN_CREATED,
        "an initial access token was made",
        ("initial_access_token_id", "expires_at", "max_uses"),
        ("note",) + _LIMITS,
    ),
    EventType(
        INITIAL_ACCESS_TOKEN_USED,
        "an initial access token registered a client",
        ("initial_access_token_id", "client_id", "uses", "max_uses"),
    ),
    EventType(
        INITIAL_ACCESS_TOKEN_REVOKED,
        "an initial access token was revoked",
        ("initial_access_token_id",),
    ),
)

#: Every event type, by name.
EVENTS: Mapping[str, EventType] = MappingProxyType({e.name: e for e in _EVENTS})


def _check_schema() -> None:
    envelope = {f.name for f in ENVELOPE}
    for event in _EVENTS:
        unknown = event.allowed - FIELDS.keys()
        if unknown or event.allowed & envelope:
            raise AuditSchemaError(f"{event.name}: fields not in FIELDS: {sorted(unknown)}")


_check_schema()


def emit(event_type: str, actor: Actor, source: str | None = None, **fields: object) -> None:
    """
    Say that something happened: an event of C{event_type} by C{actor},
    from C{source} (a request's address) where there is one, with its
    type's C{fields}.  A field given as None is left out.

    Values are JSON values, or a set, tuple or mapping of them (written
    as a sorted list, a list, an object).  Nothing is encoded here: the
    writer does that, away from the request.

    @raise AuditSchemaError: the event does not fit its type.
    """
    kind = EVENTS.get(event_type)
    if kind is None:
        raise AuditSchemaError(f"unknown audit event type {event_type!r}")
    if not fields.keys() <= kind.allowed:
        raise AuditSchemaError(
            f"{event_type}: no field {sorted(fields.keys() - kind.allowed)}"
        )
    for name in kind.required:
        if fields.get(name) is None:
            raise AuditSchemaError(f"{event_type}: {name} is required")
    # The event Logger.emit would make, made here: Logger.emit first checks
    # its level against every LogLevel constant, which cost more than the
    # rest of an event together.
    publisher(
        {
            "log_logger": _log,
            "log_level": LogLevel.info,
            "log_namespace": NAMESPACE,
            "log_source": None,
            "log_format": "{audit_type}",
            "log_time": time(),
            "audit_type": event_type,
            "audit_actor": actor,
            "audit_source": source,
            "audit_fields": fields,
        }
    )
