"""
The configuration: a TOML file, the environment and the command line, merged
into one frozen L{Config}.  The command line wins over the environment, which
wins over the file.

Every mistake raises L{ConfigError} with one line that names the key and what
is wrong with it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from attrs import field, frozen

from ccserver.errors import ConfigError
from ccserver.httpchannel import HTTPLimits
from ccserver.stores import check_url

DEFAULT_LISTEN = ("tcp:8080",)
DEFAULT_STORE = "sqlite:///ccserver.db"
SIGNING_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
TOKEN_FORMATS = ("jwt", "opaque")
INTROSPECTION_RULES = ("audience", "any")
MASTER_TOKEN_ENV = "CCSERVER_MASTER_TOKEN"


@frozen
class TokenConfig:
    format: str = "jwt"
    lifetime: int = 3600
    #: No token lives longer, whatever a client or grant handler asks.
    max_lifetime: int = 86400
    signing_alg: str = "RS256"
    #: The C{aud} of a token whose grant names no audience; empty for the
    #: issuer.
    audience: tuple[str, ...] = ()
    #: Who may introspect a token: "audience" (the client it was issued to,
    #: and the resource servers its audience names) or "any" (any
    #: authenticated client).
    introspection: str = "audience"


@frozen
class KeysConfig:
    #: Where the key-encryption key is kept; None for the default, beside
    #: the database.
    encryption_key_file: str | None = None
    #: Seconds between publishing a new signing key and signing with it, so
    #: that resource servers' caches of the JWK set have it first.
    activation_delay: int = 600


@frozen
class StoreConfig:
    url: str = DEFAULT_STORE
    #: Seconds a store operation may take before the request gets a 503.
    timeout: float = 5.0
    #: Seconds a process may serve a client record from its own cache.
    client_cache_seconds: float = 5.0


_STORE_DEFAULTS = StoreConfig()


@frozen
class Config:
    listen: tuple[str, ...] = DEFAULT_LISTEN
    issuer: str = "http://localhost:8080"
    master_token: str | None = field(default=None, repr=False)
    store: StoreConfig = StoreConfig()
    tokens: TokenConfig = TokenConfig()
    keys: KeysConfig = KeysConfig()
    grant_handler: str = "registered-scope"
    grant_handler_config: Mapping[str, Any] = field(factory=dict)
    #: Processes serving the listening sockets together.
    workers: int = 1
    #: Whether every request is logged (combined log format, no query).
    access_log: bool = True
    #: Limits and deadlines of each HTTP request ([http]).
    http: HTTPLimits = HTTPLimits()


# The keys a TOML file may have: a type, or a table of its own.
_SCHEMA: dict[str, Any] = {
    "listen": list,
    "issuer": str,
    "master_token": str,
    "workers": int,
    "access_log": bool,
    "store": {"url": str, "timeout": float, "client_cache_seconds": float},
    "tokens": {
        "format": str,
        "lifetime": int,
        "max_lifetime": int,
        "signing_alg": str,
        "audience": (str, list),
        "introspection": str,
    },
    "keys": {"encryption_key_file": str, "activation_delay": int},
    "grant_handler": None,  # the handler's own table: checked by its factory
    "http": {
        "max_line_length": int,
        "max_headers": int,
        "max_head_size": int,
        "head_timeout": float,
        "body_timeout": float,
    },
}

_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    list: "a list",
    bool: "true or false",
}


def _check_types(table: Mapping[str, Any], schema: Mapping[str, Any], prefix: str) -> None:
    for key, value in table.items():
        name = f"{prefix}{key}"
        if key not in schema:
            raise ConfigError(f"{name}: unknown key")
        expected = schema[key]
        if expected is None:
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: must be a table")
            continue
        if isinstance(expected, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: must be a table")
            _check_types(value, expected, f"{name}.")
            continue
        declared = expected if isinstance(expected, tuple) else (expected,)
        accepted = declared + (int,) if float in declared else declared
        if isinstance(value, bool) != (bool in declared) or not isinstance(value, accepted):
            wanted = " or ".join(_TYPE_NAMES[t] for t in declared)
            raise ConfigError(f"{name}: must be {wanted}, not {value!r}")


def read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"--config: cannot read {path!r}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config: {path!r} is not valid TOML: {e}") from e


def _port_of(endpoint: str) -> int | None:
    """
    The port of a C{tcp:}/C{ssl:} endpoint string, for the default issuer.
    """
    parts = endpoint.split(":")
    if parts[0] not in ("tcp", "tcp6", "ssl"):
        return None
    for part in parts[1:]:
        value = part.split("=", 1)[1] if part.startswith("port=") else part
        if value.isdigit():
            return int(value)
    return None


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


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{name}: must be greater than 0, not {value!r}")


def load_config(
    command_line: Mapping[str, Any], environ: Mapping[str, str]
) -> Config:
    """
    Merge the TOML file named by C{command_line["config"]} (if any), the
    environment and the command line into a checked L{Config}.

    @param command_line: the options given on the command line, L{None}
        or absent where not given: C{config}, C{listen} (a list),
        C{issuer}, C{store}, C{master_token}, C{grant_handler}.
    """
    toml: dict[str, Any] = {}
    if command_line.get("config"):
        toml = read_toml(command_line["config"])
    _check_types(toml, _SCHEMA, "")
    store_table = toml.get("store", {})
    tokens_table = toml.get("tokens", {})
    handler_table = dict(toml.get("grant_handler", {}))

    listen = tuple(command_line.get("listen") or toml.get("listen") or DEFAULT_LISTEN)
    for endpoint in listen:
        if not isinstance(endpoint, str) or not endpoint:
            raise ConfigError(f"listen: {endpoint!r} is not an endpoint string")

    port = _port_of(listen[0])
    default_issuer = "http://localhost" + (f":{port}" if port else "")
    issuer = check_issuer(command_line.get("issuer") or toml.get("issuer") or default_issuer)

    store_url = command_line.get("store") or store_table.get("url") or DEFAULT_STORE
    try:
        check_url(store_url)
    except ConfigError as e:
        if command_line.get("store"):
            raise ConfigError(str(e).replace("[store] url", "--store", 1)) from None
        raise
    store = StoreConfig(
        url=store_url,
        timeout=float(store_table.get("timeout", _STORE_DEFAULTS.timeout)),
        client_cache_seconds=float(
            store_table.get("client_cache_seconds", _STORE_DEFAULTS.client_cache_seconds)
        ),
    )
    _positive("[store] timeout", store.timeout)
    if store.client_cache_seconds < 0:
        raise ConfigError("[store] client_cache_seconds: must be 0 or more")

    tokens = TokenConfig(
        format=tokens_table.get("format", "jwt"),
        lifetime=tokens_table.get("lifetime", 3600),
        signing_alg=tokens_table.get("signing_alg", "RS256"),
        audience=_audience(tokens_table.get("audience", [])),
        max_lifetime=tokens_table.get("max_lifetime", 86400),
        introspection=tokens_table.get("introspection", "audience"),
    )
    if tokens.format not in TOKEN_FORMATS:
        raise ConfigError(
            f"[tokens] format: {tokens.format!r} is not one of " + ", ".join(TOKEN_FORMATS)
        )
    _positive("[tokens] lifetime", tokens.lifetime)
    _positive("[tokens] max_lifetime", tokens.max_lifetime)
    if tokens.lifetime > tokens.max_lifetime:
        raise ConfigError(
            f"[tokens] lifetime: {tokens.lifetime} is more than max_lifetime {tokens.max_lifetime}"
        )
    if tokens.introspection not in INTROSPECTION_RULES:
        raise ConfigError(
            f"[tokens] introspection: {tokens.introspection!r} is not one of "
            + ", ".join(INTROSPECTION_RULES)
        )
    keys_table = toml.get("keys", {})
    keys = KeysConfig(
        encryption_key_file=keys_table.get("encryption_key_file"),
        activation_delay=keys_table.get("activation_delay", 600),
    )
    if keys.activation_delay < 0:
        raise ConfigError("[keys] activation_delay: must be 0 or more")
    if tokens.signing_alg not in SIGNING_ALGORITHMS:
        raise ConfigError(
            f"[tokens] signing_alg: {tokens.signing_alg!r} is not one of "
            + ", ".join(SIGNING_ALGORITHMS)
        )

    master_token = (
        command_line.get("master_token")
        or environ.get(MASTER_TOKEN_ENV)
        or toml.get("master_token")
    )
    if master_token is not None and len(master_token) < 16:
        raise ConfigError("master_token: must be at least 16 characters long")

    grant_handler = command_line.get("grant_handler") or handler_table.pop("name", None)
    handler_table.pop("name", None)
    if grant_handler is not None and not isinstance(grant_handler, str):
        raise ConfigError("[grant_handler] name: must be a string")

    workers = command_line.get("workers") or toml.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers: must be a whole number of 1 or more, not {workers!r}")
    if workers > 1 and store.url.startswith("memory:"):
        raise ConfigError(
            "workers: processes share clients and keys through the store; "
            "memory:// cannot be shared (use sqlite, redis or postgresql)"
        )

    return Config(
        access_log=toml.get("access_log", True),
        workers=workers,
        listen=listen,
        issuer=issuer,
        master_token=master_token,
        store=store,
        tokens=tokens,
        keys=keys,
        grant_handler=grant_handler or "registered-scope",
        grant_handler_config=handler_table,
        http=_http_limits(toml.get("http", {})),
    )


def _http_limits(table: Mapping[str, Any]) -> HTTPLimits:
    """
    The C{[http]} table: every key optional, every value above 0.
    """
    defaults = HTTPLimits()
    limits = HTTPLimits(
        max_line_length=table.get("max_line_length", defaults.max_line_length),
        max_headers=table.get("max_headers", defaults.max_headers),
        max_head_size=table.get("max_head_size", defaults.max_head_size),
        head_timeout=float(table.get("head_timeout", defaults.head_timeout)),
        body_timeout=float(table.get("body_timeout", defaults.body_timeout)),
    )
    for key in ("max_line_length", "max_headers", "max_head_size", "head_timeout", "body_timeout"):
        _positive(f"[http] {key}", getattr(limits, key))
    return limits


def _audience(value: str | list[Any]) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    for v in values:
        if not isinstance(v, str) or not v:
            raise ConfigError(f"[tokens] audience: {v!r} is not a non-empty string")
    return tuple(values)


def resolve(path: str, base: Path) -> Path:
    """
    A path from the configuration, relative to C{base} unless absolute.
    """
    p = Path(path)
    return p if p.is_absolute() else base / p
