"""
The configuration: a TOML file, the environment and the command line, merged
into one frozen L{Config}.  The command line wins over the environment, which
wins over the file.

Every default is written once, in the field of the frozen attrs class that
holds it (L{Config} and its sections); the keys a TOML file may have and
their types are derived from those classes (L{toml_schema}), so a new field
is a new key.  L{load_config} reads the file, checks it against the schema,
merges the sources, builds the classes from what was given (the rest keeps
its default) and checks the values.

Every mistake raises L{ConfigError} with one line that names the key and what
is wrong with it.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from attrs import AttrsInstance, Factory, evolve, field, fields, frozen, has

from ccserver.auditlog import FACILITIES, STDOUT, token_issued_rate
from ccserver.errors import ConfigError
from ccserver.httpchannel import HTTPLimits
from ccserver.keys import SIGNING_ALGORITHMS
from ccserver.model import MAX_TOKEN_RATE, is_lifetime, is_scope_token
from ccserver.outbound import AddressPolicy
from ccserver.stores import check_url
from ccserver.tracing import INSTALL_HINT, available

_C = TypeVar("_C", bound=AttrsInstance)

DEFAULT_LISTEN = ("tcp:8080",)
DEFAULT_STORE = "sqlite:///ccserver.db"
#: The DPoP proof algorithms: asymmetric, and all of them by default.
DPOP_SIGNING_ALGORITHMS = ("ES256", "EdDSA", "RS256", "PS256")
TOKEN_FORMATS = ("jwt", "opaque")
#: Where RSA signatures are computed ([tokens] rsa_signing): "threads" (the
#: reactor's pool, on another core), "inline", or "auto" (threads only while
#: the workers leave two cores idle).
RSA_SIGNING = ("auto", "threads", "inline")
INTROSPECTION_RULES = ("audience", "any")
MASTER_TOKEN_ENV = "CCSERVER_MASTER_TOKEN"
KEY_ENCRYPTION_KEY_ENV = "CCSERVER_KEY_ENCRYPTION_KEY"

# Field metadata.  The TOML layout of a file is derived from the classes
# below: a field is a key of that type, a field holding a config class is a
# table.  These say what the annotation alone cannot.
#: The types a file may give for the field, where not its annotation's.
FILE_TYPES = "ccserver.config.file_types"
#: The field is not a key of the file.
NOT_IN_FILE = "ccserver.config.not_in_file"
#: An empty string or list in the file (or on the command line) means the
#: field's default.
EMPTY_IS_DEFAULT = "ccserver.config.empty_is_default"
#: In a schema, a table whose keys are not ours to check (a grant handler's).
ANY_TABLE = None


def _port_of(endpoint: object) -> int | None:
    """
    The port of a C{tcp:}/C{ssl:} endpoint string, for the default issuer.
    """
    if not isinstance(endpoint, str):
        return None
    parts = endpoint.split(":")
    if parts[0] not in ("tcp", "tcp6", "ssl"):
        return None
    for part in parts[1:]:
        value = part.split("=", 1)[1] if part.startswith("port=") else part
        if value.isdigit():
            return int(value)
    return None


@frozen
class TokenConfig:
    format: str = "jwt"
    lifetime: int = 3600
    #: No token lives longer, whatever a client or grant handler asks.
    max_lifetime: int = 86400
    signing_alg: str = "RS256"
    #: The C{aud} of a token whose grant names no audience; empty for the
    #: issuer.  A file may give one string or a list.
    audience: tuple[str, ...] = field(default=(), metadata={FILE_TYPES: (str, list)})
    #: Who may introspect a token: "audience" (the client it was issued to,
    #: and the resource servers its audience names) or "any" (any
    #: authenticated client).
    introspection: str = "audience"
    #: Where RSA signatures are computed: one of L{RSA_SIGNING}.
    rsa_signing: str = "auto"


#: The units of a duration ([keys] rotate_every = "30d", registration-tokens
#: create --expires 7d), in seconds.
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: The longest duration: 100 years.
MAX_DURATION = 100 * 365 * 86400
_DURATION = re.compile(r"(?:[0-9]+[smhdw])+|[0-9]+")
_DURATION_PART = re.compile(r"([0-9]+)([smhdw]?)")


def parse_duration(value: object) -> int:
    """
    A duration in whole seconds: an integer (seconds), or a string of
    one or more numbers each with its unit, C{s}, C{m}, C{h}, C{d} or C{w}
    (C{"30d"}, C{"12h"}, C{"1h30m"}), or of one number alone (seconds).
    Greater than 0, at most L{MAX_DURATION}.

    @raise ValueError: anything else; the message says what is expected.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and value.isascii() and _DURATION.fullmatch(value.strip()):
        seconds = sum(
            int(number) * DURATION_UNITS[unit or "s"]
            for number, unit in _DURATION_PART.findall(value.strip())
        )
    else:
        raise ValueError(
            f"{value!r} is not a duration: a whole number with its unit, s, m, h, d or w "
            '(e.g. "30d", "12h", "1h30m"), or whole seconds'
        )
    if seconds <= 0:
        raise ValueError(f"{value!r} is not a duration: it must be longer than 0")
    if seconds > MAX_DURATION:
        raise ValueError(f"{value!r} is longer than 100 years")
    return seconds


def format_duration(seconds: int) -> str:
    """
    Seconds as L{parse_duration} reads them, in the largest unit that
    divides them (C{30d}, C{12h}, C{90s}).
    """
    for unit, size in sorted(DURATION_UNITS.items(), key=lambda item: -item[1]):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _rotate_every(value: object) -> int | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise ConfigError(f"[keys] rotate_every: {e}") from None


@frozen
class KeysConfig:
    #: Where the key-encryption key is kept; None for the default, beside
    #: the database.
    encryption_key_file: str | None = None
    #: The key-encryption key itself, from $CCSERVER_KEY_ENCRYPTION_KEY
    #: (for containers); it wins over the file, and is never in a file.
    encryption_key: str | None = field(default=None, repr=False, metadata={NOT_IN_FILE: True})
    #: Seconds between publishing a new signing key and signing with it, so
    #: that resource servers' caches of the JWK set have it first.
    activation_delay: int = 600
    #: Seconds between scheduled rotations of the signing key (a duration in
    #: the file: "30d"), counted from the newest key's creation; None (the
    #: default, so that an upgrade changes nothing) for rotation by hand only.
    rotate_every: int | None = field(
        default=None, converter=_rotate_every, metadata={FILE_TYPES: (str, int)}
    )


@frozen
class StoreConfig:
    url: str = field(default=DEFAULT_STORE, metadata={EMPTY_IS_DEFAULT: True})
    #: Seconds a store operation may take before the request gets a 503.
    timeout: float = 5.0
    #: Seconds a process may serve a client record from its own cache.
    client_cache_seconds: float = 5.0
    #: Seconds between two purges of expired opaque tokens and deny-list
    #: entries, in each process; 0: this process never purges (another
    #: instance on the same store does).
    purge_interval_seconds: float = 300.0
    #: Redis: how many replicas must have acknowledged a write (a client, a
    #: key, an opaque token, a revocation) before it is answered (WAIT), so
    #: that a failover cannot lose it; None: 1 with a redis+sentinel:// URL,
    #: else 0.
    redis_wait_replicas: int | None = None
    #: Redis: seconds a write waits for those replicas before its request
    #: gets a 503; None: half of timeout.
    redis_wait_timeout: float | None = None


@frozen
class ClientAuthConfig:
    """
    Client authentication with JWT assertions (RFC 7523 §2.2): what an
    assertion may claim, and how a client's C{jwks_uri} is fetched.
    """

    #: Seconds an assertion is accepted after its C{iat}, whatever its
    #: C{exp}; without C{iat}, how far its C{exp} may lie ahead.  Its
    #: C{jti} is remembered as long (and the leeway), no longer.
    max_assertion_lifetime: int = 300
    #: Seconds of clock skew allowed for C{exp}, C{nbf} and C{iat}.
    leeway: int = 30
    #: Seconds a fetch of a C{jwks_uri} may take.
    jwks_uri_timeout: float = 5.0
    #: How long a fetched JWK set is kept when its answer says nothing
    #: (C{Cache-Control: max-age}); what it says is held between the
    #: minimum and the maximum.
    jwks_uri_cache_seconds: int = 300
    jwks_uri_min_cache_seconds: int = 60
    jwks_uri_max_cache_seconds: int = 86400
    #: An assertion whose C{kid} is unknown fetches the client's
    #: C{jwks_uri} again (key rotation), at most once per this many seconds
    #: per client.
    jwks_uri_refetch_seconds: int = 30
    #: Networks (CIDR, or single addresses) that a client's C{jwks_uri}
    #: may reach although they are not public (loopback, private,
    #: link-local...), over https or plain http: for private deployments
    #: and tests.  Empty: public addresses only, over https.
    jwks_uri_private_networks: tuple[str, ...] = ()

    @property
    def jwks_uri_policy(self) -> AddressPolicy:
        """
        Where clients' C{jwks_uri} may point: public addresses over https,
        and the L{jwks_uri_private_networks}.
        """
        return AddressPolicy.public(self.jwks_uri_private_networks)


@frozen
class DPoPConfig:
    """
    DPoP (RFC 9449) at the token endpoint.
    """

    #: The proof C{alg}s accepted (asymmetric only, RFC 9449 §4.3 5.), as
    #: discovery's C{dpop_signing_alg_values_supported} lists them.
    signing_algs: tuple[str, ...] = field(
        default=DPOP_SIGNING_ALGORITHMS, metadata={EMPTY_IS_DEFAULT: True}
    )
    #: Seconds a proof is accepted after its C{iat} (RFC 9449 §11.1); its
    #: C{jti} is remembered as long.
    max_age: int = 300
    #: Seconds a proof's C{iat} may be ahead of this server's clock.
    leeway: int = 5
    #: Whether proofs must carry a server nonce (RFC 9449 §8).
    require_nonce: bool = False
    #: Seconds a server nonce is good for, at least (at most twice that).
    nonce_lifetime: int = 300


@frozen
class MetricsConfig:
    #: The endpoint string of the listener that serves Prometheus metrics
    #: at /metrics, and nothing else; None: no metrics.
    listen: str | None = field(default=None, metadata={EMPTY_IS_DEFAULT: True})


@frozen
class TLSConfig:
    """
    C{[tls]}: listeners served with TLS, which ask clients for certificates
    (RFC 8705).
    """

    #: Endpoint strings (tcp:/tcp6:) served with TLS.
    listen: tuple[str, ...] = ()
    #: The server's certificate chain, PEM, leaf first.
    certificate: str | None = None
    #: The server's private key, PEM; refused if its group or others may read it.
    private_key: str | None = None
    #: CAs (PEM) whose certificates tls_client_auth accepts on these listeners.
    client_ca: str | None = None
    #: The https address of these listeners, for mtls_endpoint_aliases.
    base_url: str | None = None


@frozen
class MTLSConfig:
    """
    C{[mtls]}: client certificates forwarded by a TLS-terminating proxy.
    """

    #: The header holding the client's certificate (URL-encoded PEM, or
    #: Envoy's x-forwarded-client-cert); None to believe no header.
    proxy_header: str | None = None
    #: Addresses or networks whose header is believed.
    trusted_proxies: tuple[str, ...] = ()


@frozen
class LimitsConfig:
    """
    The brute-force limits (L{ccserver.oauth.limits}).
    """

    #: Credential checks a source may make in a minute, per credential (a
    #: client's authentication, a client's registration access token, the
    #: master token), counting failed ones and those under way; past it,
    #: 429 until the minute is over.  0 turns every limit here off.
    failed_auth_per_minute: int = 10
    #: The same across every source not known for the credential (one that
    #: used it successfully within known_source_seconds): a cap on
    #: distributed guessing.  0 turns the cap off.
    failed_auth_per_client_per_minute: int = 30
    #: How long a source that used a credential successfully stays known
    #: for it, exempt from the cap.
    known_source_seconds: int = 86400
    #: Addresses or CIDR networks of the proxies whose X-Forwarded-For names
    #: a request's source (the rightmost hop that is not one of them).
    trusted_proxies: tuple[str, ...] = ()
    #: Tokens one client may be issued a second, on average, counted in the
    #: store for every process and instance together, unless the client has
    #: a token_rate_limit of its own; None for no limit.
    tokens_per_client_per_second: float | None = None
    #: The most tokens one client may be issued at once under that limit;
    #: None for a second's worth (at least one).
    tokens_per_client_burst: int | None = None


@frozen
class AuditConfig:
    """
    C{[audit]}: the audit trail (docs/audit.md), which cannot be turned off.
    """

    #: Where it goes: "-" (standard output), a file path (appended to;
    #: relative to the working directory), or "syslog".
    log: str = field(default=STDOUT, metadata={EMPTY_IS_DEFAULT: True})
    #: How many token.issued events are written: "all", "off", or
    #: "sampled:F" (a fraction F of them, e.g. "sampled:0.01").  Every other
    #: event is always written.
    token_issued: str = "all"
    #: With log = "syslog": the facility, and the daemon's socket.
    syslog_facility: str = "auth"
    syslog_socket: str = "/dev/log"

    @property
    def token_issued_rate(self) -> float:
        return token_issued_rate(self.token_issued)


@frozen
class TracingConfig:
    """
    C{[tracing]}: OpenTelemetry spans of each request, exported with OTLP
    (C{pip install 'ccserver[otel]'}).  Off unless C{endpoint} is set.
    """

    #: The OTLP/HTTP traces endpoint of a collector
    #: ("http://localhost:4318/v1/traces"); None: no tracing.
    endpoint: str | None = field(default=None, metadata={EMPTY_IS_DEFAULT: True})
    #: The service.name of the spans.
    service_name: str = "ccserver"
    #: The fraction of traces kept, 0 to 1.
    sampling: float = 1.0
    #: Whether a request's W3C traceparent (from a proxy or a client) makes
    #: its span part of that trace, whose sampled flag then decides.
    trust_incoming: bool = True
    #: Seconds an export to the collector may take.
    timeout: float = 10.0

    @property
    def enabled(self) -> bool:
        return self.endpoint is not None


@frozen
class ClientsConfig:
    #: Seconds a client's previous secret still works after a rotation
    #: (ccserver clients rotate-secret); 0 ends it at once.
    secret_rotation_grace: int = 1800


#: A SPIFFE trust domain's identifier: spiffe:// and the trust domain name
#: (SPIFFE-ID §2.1: lowercase letters, digits, dots, dashes, underscores).
SPIFFE_TRUST_DOMAIN = re.compile(r"spiffe://[a-z0-9._-]+")


@frozen
class TrustedIssuerConfig:
    """
    One C{[[trusted_issuers]]} table: an issuer of workload tokens (a
    Kubernetes cluster, a CI service, a cloud, a SPIFFE trust domain) whose
    tokens authenticate the clients bound to their subjects.
    """

    #: The tokens' C{iss}, exactly (an https URL; http for tests); or
    #: C{spiffe://<trust domain>} for a SPIFFE trust domain, whose JWT-SVIDs
    #: (which may carry no C{iss}) are told by the trust domain of their
    #: C{sub}.
    issuer: str = ""
    #: Where its keys are fetched: a JWK set's URL (a trust domain's SPIFFE
    #: bundle endpoint) ...
    jwks_uri: str | None = None
    #: ... or a file holding them (C{kubectl get --raw /openid/v1/jwks}; a
    #: SPIFFE bundle), read again when it changes.  With neither, the
    #: C{jwks_uri} of the issuer's OpenID configuration, at C{issuer} +
    #: C{/.well-known/openid-configuration}.
    jwks_file: str | None = None
    #: The C{aud} values accepted: every value of a token's C{aud} must be
    #: one of them.  Empty: this server's issuer and token endpoint.
    audiences: tuple[str, ...] = field(default=(), metadata={FILE_TYPES: (str, list)})
    #: Seconds a token may be valid for (C{exp} - C{iat}); a longer-lived one
    #: is refused.
    max_token_lifetime: int = 86400

    @property
    def spiffe(self) -> bool:
        """
        Whether this is a SPIFFE trust domain.
        """
        return self.issuer.startswith("spiffe://")


@frozen
class DiscoveryConfig:
    #: The scope values the metadata document lists as scopes_supported
    #: (RFC 8414 §2, recommended); none (the default) leaves it out.  It
    #: advertises, and refuses nothing: which scope a client may have is its
    #: registration's and the grant handler's to say.
    scopes_supported: tuple[str, ...] = ()


def _default_issuer(config: Config) -> str:
    """
    http://localhost and the port of the first endpoint listened on.
    """
    port = _port_of(config.listen[0]) if config.listen else None
    return "http://localhost" + (f":{port}" if port else "")


@frozen
class Config:
    """
    The whole configuration, and every default of it: L{load_config} fills
    in only what the file, the environment or the command line give.
    """

    listen: tuple[str, ...] = field(default=DEFAULT_LISTEN, metadata={EMPTY_IS_DEFAULT: True})
    issuer: str = field(
        default=Factory(_default_issuer, takes_self=True), metadata={EMPTY_IS_DEFAULT: True}
    )
    master_token: str | None = field(default=None, repr=False)
    store: StoreConfig = StoreConfig()
    tokens: TokenConfig = TokenConfig()
    keys: KeysConfig = KeysConfig()
    client_auth: ClientAuthConfig = ClientAuthConfig()
    dpop: DPoPConfig = DPoPConfig()
    clients: ClientsConfig = ClientsConfig()
    #: What the metadata document says beyond what the server knows ([discovery]).
    discovery: DiscoveryConfig = DiscoveryConfig()
    #: The grant handler plugin's name: in a file, the C{name} of the
    #: C{[grant_handler]} table, whose other keys are the handler's own.
    grant_handler: str = field(
        default="registered-scope", metadata={FILE_TYPES: ANY_TABLE, EMPTY_IS_DEFAULT: True}
    )
    grant_handler_config: Mapping[str, Any] = field(factory=dict, metadata={NOT_IN_FILE: True})
    #: Processes serving the listening sockets together.
    workers: int = 1
    #: Whether every request is logged (combined log format, no query).
    access_log: bool = True
    #: Where the access log goes: "-" (standard output) or a file path
    #: (appended to; relative to the working directory).
    access_log_file: str = field(default="-", metadata={EMPTY_IS_DEFAULT: True})
    #: Limits and deadlines of each HTTP request ([http]).
    http: HTTPLimits = HTTPLimits()
    #: The Prometheus metrics listener ([metrics]).
    metrics: MetricsConfig = MetricsConfig()
    #: TLS listeners ([tls]) and client certificates from a proxy ([mtls]).
    tls: TLSConfig = TLSConfig()
    mtls: MTLSConfig = MTLSConfig()

    @property
    def mtls_enabled(self) -> bool:
        """
        Whether a request can come with a client certificate.
        """
        return bool(self.tls.listen or self.mtls.proxy_header or self.tls.base_url)
    #: Brute-force and issuance limits ([limits]).
    limits: LimitsConfig = LimitsConfig()
    #: The issuers of workload tokens ([[trusted_issuers]]): workload
    #: identity federation.
    trusted_issuers: tuple[TrustedIssuerConfig, ...] = ()
    #: The audit trail ([audit]).
    audit: AuditConfig = AuditConfig()
    #: OpenTelemetry traces ([tracing]).
    tracing: TracingConfig = TracingConfig()


#: Where the environment and the command line reach into the file's layout.
_ENVIRONMENT: dict[str, tuple[str, ...]] = {
    MASTER_TOKEN_ENV: ("master_token",),
    KEY_ENCRYPTION_KEY_ENV: ("keys", "encryption_key"),
}
_COMMAND_LINE: dict[str, tuple[str, ...]] = {
    "listen": ("listen",),
    "issuer": ("issuer",),
    "store": ("store", "url"),
    "master_token": ("master_token",),
    "grant_handler": ("grant_handler", "name"),
    "workers": ("workers",),
    "metrics": ("metrics", "listen"),
}

_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    list: "a list",
    bool: "true or false",
}


def _file_types(annotation: Any) -> Any:
    """
    The TOML types a file may give for a field of this type: a tuple of
    types, or the schema of a table.
    """
    if has(annotation):
        return toml_schema(annotation)
    origin = get_origin(annotation)
    if origin in (Union, UnionType):
        (kind,) = [a for a in get_args(annotation) if a is not type(None)]
        return _file_types(kind)
    if origin is tuple:
        (element, *_) = get_args(annotation)
        if has(element):
            # an array of tables: [[name]]
            return [toml_schema(element)]
        return (list,)
    if annotation in _TYPE_NAMES:
        return (annotation,)
    raise TypeError(f"no TOML type for {annotation!r}")


def toml_schema(cls: type[Any] = Config) -> dict[str, Any]:
    """
    The keys a TOML file may have, derived from the fields of C{cls}: key
    -> a tuple of types, the schema of a table, or L{ANY_TABLE}.
    """
    types = get_type_hints(cls)
    schema: dict[str, Any] = {}
    for attribute in fields(cls):
        if attribute.metadata.get(NOT_IN_FILE):
            continue
        if FILE_TYPES in attribute.metadata:
            schema[attribute.name] = attribute.metadata[FILE_TYPES]
        else:
            schema[attribute.name] = _file_types(types[attribute.name])
    return schema


_SCHEMA = toml_schema()


def _check_types(table: Mapping[str, Any], schema: Mapping[str, Any], prefix: str) -> None:
    for key, value in table.items():
        name = f"{prefix}{key}"
        if key not in schema:
            raise ConfigError(f"{name}: unknown key")
        expected = schema[key]
        if expected is ANY_TABLE:
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: must be a table")
            continue
        if isinstance(expected, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: must be a table")
            _check_types(value, expected, f"{name}.")
            continue
        if isinstance(expected, list):
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ConfigError(f"{name}: must be an array of tables ([[{name}]])")
            for index, table in enumerate(value):
                _check_types(table, expected[0], f"{name}[{index}].")
            continue
        accepted = expected + (int,) if float in expected else expected
        if isinstance(value, bool) != (bool in expected) or not isinstance(value, accepted):
            wanted = " or ".join(_TYPE_NAMES[t] for t in expected)
            raise ConfigError(f"{name}: must be {wanted}, not {value!r}")


def read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"--config: cannot read {path!r}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config: {path!r} is not valid TOML: {e}") from e


def check_issuer(issuer: str) -> str:
    """
    RFC 8414 §2: the issuer is an https (or, for development, http) URL
    with no query or fragment.  A trailing slash is dropped.
    """
    parts = urlsplit(issuer)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"issuer: {issuer!r} is not an http or https URL")
    if parts.query or parts.fragment or "?" in issuer or "#" in issuer:
        raise ConfigError(f"issuer: {issuer!r} must have no query or fragment")
    return issuer.rstrip("/")


def load_config(
    command_line: Mapping[str, Any], environ: Mapping[str, str]
) -> Config:
    """
    Merge the TOML file named by C{command_line["config"]} (if any), the
    environment and the command line into a checked L{Config}.

    @param command_line: the options given on the command line, L{None}
        or absent where not given: C{config}, C{listen} (a list),
        C{issuer}, C{store}, C{master_token}, C{grant_handler}, C{workers},
        C{metrics}.
    """
    file = read_toml(command_line["config"]) if command_line.get("config") else {}
    _check_types(file, _SCHEMA, "")
    merged = _merge(file, environ, command_line)
    return _checked(_build(Config, merged), store_on_command_line=bool(command_line.get("store")))


def _merge(
    file: Mapping[str, Any], environ: Mapping[str, str], command_line: Mapping[str, Any]
) -> dict[str, Any]:
    """
    The file's tables with the environment over them and the command line
    over both, in the layout of L{Config}.  An empty option or variable is
    not given; an empty value in the file for a field marked
    L{EMPTY_IS_DEFAULT} neither.
    """
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in file.items()}
    for variable, path in _ENVIRONMENT.items():
        _put(merged, path, environ.get(variable))
    for option, path in _COMMAND_LINE.items():
        _put(merged, path, command_line.get(option))
    handler = merged.pop("grant_handler", {})
    if "name" in handler:
        merged["grant_handler"] = handler.pop("name")
    merged["grant_handler_config"] = handler
    _drop_empty(merged, Config)
    return merged


def _put(table: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    if not value:
        return
    *tables, key = path
    for name in tables:
        table = table.setdefault(name, {})
    table[key] = value


def _drop_empty(table: dict[str, Any], cls: type[Any]) -> None:
    types = get_type_hints(cls)
    for attribute in fields(cls):
        value = table.get(attribute.name)
        if has(types[attribute.name]) and isinstance(value, dict):
            _drop_empty(value, types[attribute.name])
        elif attribute.metadata.get(EMPTY_IS_DEFAULT) and _is_empty(value, types[attribute.name]):
            del table[attribute.name]


def _is_empty(value: object, annotation: Any) -> bool:
    """
    Whether C{value} is the empty value of a field of this type: C{""} for
    a string, an empty list for a tuple.  Not 0, not false, and not an empty
    list where a string belongs (that is a wrong type, and an error).
    """
    empty_type = (list, tuple) if get_origin(annotation) is tuple else str
    return isinstance(value, empty_type) and not value


def _build(cls: type[_C], table: Mapping[str, Any]) -> _C:
    """
    An instance of the config class C{cls} from a merged table: what the
    table does not name keeps the class's default.  Values are type-checked
    already; a file's integer becomes a float where a number is asked for,
    its list or string a tuple.
    """
    types = get_type_hints(cls)
    values: dict[str, Any] = {}
    for attribute in fields(cls):
        if attribute.name not in table:
            continue
        value, kind = table[attribute.name], types[attribute.name]
        if has(kind):
            value = _build(kind, value)
        elif get_origin(kind) is tuple and has(get_args(kind)[0]):
            value = tuple(_build(get_args(kind)[0], table) for table in value)
        elif kind is float:
            value = float(value)
        elif get_origin(kind) is tuple:
            value = tuple([value] if isinstance(value, str) else value)
        values[attribute.name] = value
    return cls(**values)


def _checked(config: Config, store_on_command_line: bool) -> Config:
    """
    C{config}, checked; the issuer without a trailing slash.
    """
    for endpoint in config.listen:
        if not isinstance(endpoint, str) or not endpoint:
            raise ConfigError(f"listen: {endpoint!r} is not an endpoint string")
    config = evolve(config, issuer=check_issuer(config.issuer))
    _check_store(config.store, store_on_command_line)
    _check_tokens(config.tokens)
    _check_keys(config.keys)
    if config.clients.secret_rotation_grace < 0:
        raise ConfigError("[clients] secret_rotation_grace: must be 0 or more")
    _check_signing_alg(config.tokens.signing_alg)
    _check_client_auth(config.client_auth)
    _check_dpop(config.dpop)
    _check_discovery(config.discovery)
    if config.master_token is not None and len(config.master_token) < 16:
        raise ConfigError("master_token: must be at least 16 characters long")
    if not isinstance(config.grant_handler, str):
        raise ConfigError("[grant_handler] name: must be a string")
    _check_workers(config.workers, config.store.url)
    _check_http(config.http)
    _check_tls(config.tls)
    _check_mtls(config.mtls)
    if config.tls.base_url is not None:
        config = evolve(config, tls=evolve(config.tls, base_url=_check_base_url(config.tls.base_url)))
    _check_limits(config.limits)
    _check_audit(config.audit)
    _check_tracing(config.tracing)
    return evolve(config, trusted_issuers=_check_trusted_issuers(config))


def _check_trusted_issuers(config: Config) -> tuple[TrustedIssuerConfig, ...]:
    """
    Each C{[[trusted_issuers]]} table, checked, with its default audiences
    (this server's issuer and token endpoint) filled in.
    """
    checked = []
    seen: set[str] = set()
    for index, trusted in enumerate(config.trusted_issuers):
        issuer = trusted.issuer
        where = f"[[trusted_issuers]] {issuer!r}" if issuer else f"[[trusted_issuers]] {index + 1}"
        if not issuer:
            raise ConfigError(f"{where}: issuer: missing; give the tokens' iss")
        if issuer in seen:
            raise ConfigError(f"{where}: issuer: given twice")
        seen.add(issuer)
        if trusted.spiffe:
            if not SPIFFE_TRUST_DOMAIN.fullmatch(issuer):
                raise ConfigError(
                    f"{where}: issuer: a SPIFFE trust domain is spiffe:// and its name "
                    "(lowercase letters, digits, '.', '-', '_'), with no path"
                )
            if trusted.jwks_uri is None and trusted.jwks_file is None:
                raise ConfigError(
                    f"{where}: a SPIFFE trust domain needs its bundle: jwks_uri (its bundle "
                    "endpoint) or jwks_file (e.g. from spire-server bundle show -format spiffe)"
                )
        else:
            _check_http_url(f"{where}: issuer", issuer)
        if trusted.jwks_uri is not None and trusted.jwks_file is not None:
            raise ConfigError(f"{where}: jwks_uri and jwks_file: give one, not both")
        if trusted.jwks_uri is not None:
            _check_http_url(f"{where}: jwks_uri", trusted.jwks_uri)
        if trusted.jwks_file is not None and not trusted.jwks_file:
            raise ConfigError(f"{where}: jwks_file: must be a path")
        for audience in trusted.audiences:
            if not isinstance(audience, str) or not audience:
                raise ConfigError(f"{where}: audiences: {audience!r} is not a non-empty string")
        if not is_lifetime(trusted.max_token_lifetime):
            raise ConfigError(
                f"{where}: max_token_lifetime: must be greater than 0, "
                f"not {trusted.max_token_lifetime!r}"
            )
        audiences = trusted.audiences or (config.issuer, f"{config.issuer}/token")
        checked.append(evolve(trusted, audiences=tuple(dict.fromkeys(audiences))))
    return tuple(checked)


def _check_http_url(setting: str, url: str) -> None:
    """
    An absolute http(s) URL of visible ASCII with no query or fragment: an
    issuer identifier (RFC 8414 §2, OpenID Connect Discovery §2) or where
    its keys are.
    """
    parts = urlsplit(url)
    if (
        parts.scheme not in ("http", "https")
        or not parts.netloc
        or not re.fullmatch(r"[!-~]+", url)
    ):
        raise ConfigError(f"{setting}: {url!r} is not an http or https URL")
    if parts.fragment or "#" in url or (parts.query and "issuer" in setting):
        raise ConfigError(f"{setting}: {url!r} must have no query or fragment")


def _check_keys(keys: KeysConfig) -> None:
    if keys.activation_delay < 0:
        raise ConfigError("[keys] activation_delay: must be 0 or more")
    every = keys.rotate_every
    if every is not None and every <= keys.activation_delay:
        raise ConfigError(
            f"[keys] rotate_every: {every} s is not longer than activation_delay "
            f"({keys.activation_delay} s): each new key would be replaced before it signs"
        )


def _check_tracing(tracing: TracingConfig) -> None:
    if tracing.endpoint is not None:
        parts = urlsplit(tracing.endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"[tracing] endpoint: {tracing.endpoint!r} is not an http or https URL "
                "(a collector's OTLP/HTTP traces endpoint, e.g. http://localhost:4318/v1/traces)"
            )
    if not 0 <= tracing.sampling <= 1:
        raise ConfigError(f"[tracing] sampling: must be 0 to 1, not {tracing.sampling!r}")
    if tracing.timeout <= 0:
        raise ConfigError(f"[tracing] timeout: must be greater than 0, not {tracing.timeout!r}")
    if not tracing.service_name:
        raise ConfigError("[tracing] service_name: must not be empty")
    if tracing.enabled and not available():
        raise ConfigError(f"[tracing] endpoint: tracing needs the OpenTelemetry packages: {INSTALL_HINT}")


def _check_audit(audit: AuditConfig) -> None:
    token_issued_rate(audit.token_issued)
    if audit.syslog_facility not in FACILITIES:
        raise ConfigError(
            f"[audit] syslog_facility: {audit.syslog_facility!r} is not one of "
            + ", ".join(FACILITIES)
        )
    if not audit.syslog_socket:
        raise ConfigError("[audit] syslog_socket: must be the path of the syslog socket")


def _check_tls(tls: TLSConfig) -> None:
    for endpoint in tls.listen:
        if not isinstance(endpoint, str) or endpoint.split(":", 1)[0] not in ("tcp", "tcp6"):
            raise ConfigError(f"[tls] listen: {endpoint!r} is not a tcp: or tcp6: endpoint string")
    if tls.listen and not (tls.certificate and tls.private_key):
        raise ConfigError("[tls] listen: needs certificate and private_key")


def _check_base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"[tls] base_url: {url!r} is not an https URL without query")
    return url.rstrip("/")


def _check_mtls(mtls: MTLSConfig) -> None:
    if mtls.proxy_header is None:
        return
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", mtls.proxy_header):
        raise ConfigError(f"[mtls] proxy_header: {mtls.proxy_header!r} is not a header name")
    if not mtls.trusted_proxies:
        raise ConfigError(
            "[mtls] proxy_header: needs trusted_proxies, the addresses whose header is believed"
        )
    _check_networks("[mtls] trusted_proxies", mtls.trusted_proxies)


def _check_networks(setting: str, values: tuple[str, ...]) -> None:
    """
    Every one of C{values} is an IP address or a CIDR network (host bits
    may be set: C{10.1.2.3/8} is C{10.0.0.0/8}).
    """
    for value in values:
        if not isinstance(value, str):
            raise ConfigError(f"{setting}: {value!r} is not a string")
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ConfigError(f"{setting}: {value!r} is not an IP address or network") from None


def _check_limits(limits: LimitsConfig) -> None:
    for name in ("failed_auth_per_minute", "failed_auth_per_client_per_minute"):
        value = getattr(limits, name)
        if value < 0:
            raise ConfigError(f"[limits] {name}: must be 0 (no limit) or more, not {value!r}")
    if limits.known_source_seconds < 60:
        raise ConfigError(
            "[limits] known_source_seconds: must be 60 or more (a minute, the limits' window), "
            f"not {limits.known_source_seconds!r}"
        )
    rate = limits.tokens_per_client_per_second
    if rate is not None and not 0 < rate <= MAX_TOKEN_RATE:
        raise ConfigError(
            "[limits] tokens_per_client_per_second: must be greater than 0, at most "
            f"{MAX_TOKEN_RATE}, not {rate!r}"
        )
    burst = limits.tokens_per_client_burst
    if burst is not None and not 1 <= burst <= MAX_TOKEN_RATE:
        raise ConfigError(
            f"[limits] tokens_per_client_burst: must be 1 or more, at most {MAX_TOKEN_RATE}, "
            f"not {burst!r}"
        )
    if burst is not None and rate is None:
        raise ConfigError(
            "[limits] tokens_per_client_burst: needs tokens_per_client_per_second, the rate "
            "it is the burst of"
        )
    _check_networks("[limits] trusted_proxies", limits.trusted_proxies)


def _check_store(store: StoreConfig, on_command_line: bool) -> None:
    try:
        check_url(store.url)
    except ConfigError as e:
        if on_command_line:
            raise ConfigError(str(e).replace("[store] url", "--store", 1)) from None
        raise
    if store.timeout <= 0:
        raise ConfigError(f"[store] timeout: must be greater than 0, not {store.timeout!r}")
    if store.client_cache_seconds < 0:
        raise ConfigError("[store] client_cache_seconds: must be 0 or more")
    interval = store.purge_interval_seconds
    if not (interval >= 0 and math.isfinite(interval)):
        raise ConfigError(
            "[store] purge_interval_seconds: must be a number of seconds greater than 0, "
            f"or 0 for never, not {interval!r}"
        )
    if store.redis_wait_replicas is not None and store.redis_wait_replicas < 0:
        raise ConfigError(
            f"[store] redis_wait_replicas: must be 0 or more, not {store.redis_wait_replicas!r}"
        )
    wait = store.redis_wait_timeout
    if wait is not None and not 0 < wait < store.timeout:
        raise ConfigError(
            f"[store] redis_wait_timeout: must be greater than 0 and less than "
            f"[store] timeout ({store.timeout:g}), not {wait!r}"
        )


def _check_tokens(tokens: TokenConfig) -> None:
    for audience in tokens.audience:
        if not isinstance(audience, str) or not audience:
            raise ConfigError(f"[tokens] audience: {audience!r} is not a non-empty string")
    if tokens.format not in TOKEN_FORMATS:
        raise ConfigError(
            f"[tokens] format: {tokens.format!r} is not one of " + ", ".join(TOKEN_FORMATS)
        )
    if tokens.rsa_signing not in RSA_SIGNING:
        raise ConfigError(
            f"[tokens] rsa_signing: {tokens.rsa_signing!r} is not one of " + ", ".join(RSA_SIGNING)
        )
    for name in ("lifetime", "max_lifetime"):
        value = getattr(tokens, name)
        if not is_lifetime(value):
            raise ConfigError(f"[tokens] {name}: must be greater than 0, not {value!r}")
    if tokens.lifetime > tokens.max_lifetime:
        raise ConfigError(
            f"[tokens] lifetime: {tokens.lifetime} is more than max_lifetime {tokens.max_lifetime}"
        )
    if tokens.introspection not in INTROSPECTION_RULES:
        raise ConfigError(
            f"[tokens] introspection: {tokens.introspection!r} is not one of "
            + ", ".join(INTROSPECTION_RULES)
        )


def _check_client_auth(client_auth: ClientAuthConfig) -> None:
    for name in (
        "max_assertion_lifetime",
        "jwks_uri_timeout",
        "jwks_uri_cache_seconds",
        "jwks_uri_max_cache_seconds",
    ):
        value = getattr(client_auth, name)
        if value <= 0:
            raise ConfigError(f"[client_auth] {name}: must be greater than 0, not {value!r}")
    for name in ("leeway", "jwks_uri_min_cache_seconds", "jwks_uri_refetch_seconds"):
        value = getattr(client_auth, name)
        if value < 0:
            raise ConfigError(f"[client_auth] {name}: must be 0 or more, not {value!r}")
    if client_auth.jwks_uri_min_cache_seconds > client_auth.jwks_uri_max_cache_seconds:
        raise ConfigError(
            "[client_auth] jwks_uri_min_cache_seconds: is more than jwks_uri_max_cache_seconds"
        )
    _check_networks("[client_auth] jwks_uri_private_networks", client_auth.jwks_uri_private_networks)


def _check_signing_alg(alg: str) -> None:
    if alg not in SIGNING_ALGORITHMS:
        raise ConfigError(
            f"[tokens] signing_alg: {alg!r} is not one of " + ", ".join(SIGNING_ALGORITHMS)
        )


def _check_dpop(dpop: DPoPConfig) -> None:
    for alg in dpop.signing_algs:
        if alg not in DPOP_SIGNING_ALGORITHMS:
            raise ConfigError(
                f"[dpop] signing_algs: {alg!r} is not one of " + ", ".join(DPOP_SIGNING_ALGORITHMS)
            )
    for name in ("max_age", "nonce_lifetime"):
        value = getattr(dpop, name)
        if value <= 0:
            raise ConfigError(f"[dpop] {name}: must be greater than 0, not {value!r}")
    if dpop.leeway < 0:
        raise ConfigError(f"[dpop] leeway: must be 0 or more, not {dpop.leeway!r}")


def _check_discovery(discovery: DiscoveryConfig) -> None:
    for scope in discovery.scopes_supported:
        if not is_scope_token(scope):
            raise ConfigError(
                f"[discovery] scopes_supported: {scope!r} is not a scope value "
                "(RFC 6749 §3.3: visible ASCII but space, \" and \\)"
            )


def _check_workers(workers: object, store_url: str) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers: must be a whole number of 1 or more, not {workers!r}")
    if workers > 1 and store_url.startswith("memory:"):
        raise ConfigError(
            "workers: processes share clients and keys through the store; "
            "memory:// cannot be shared (use sqlite, redis or postgresql)"
        )


def _check_http(limits: HTTPLimits) -> None:
    for attribute in fields(HTTPLimits):
        value = getattr(limits, attribute.name)
        if value <= 0:
            raise ConfigError(f"[http] {attribute.name}: must be greater than 0, not {value!r}")


def resolve(path: str, base: Path) -> Path:
    """
    A path from the configuration, relative to C{base} unless absolute.
    """
    p = Path(path)
    return p if p.is_absolute() else base / p
