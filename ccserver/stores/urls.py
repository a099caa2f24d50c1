"""
What a store URL says: its scheme, for SQLite its file (and so the
folder of the files made beside it), for Redis its server or sentinels.
A leaf of the stores package, so that the package's factory and the
stores it makes share it without importing each other.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from attrs import field, frozen

from ccserver.errors import ConfigError
from ccserver.stores.guard import mask_password

SCHEMES = ("memory", "sqlite", "redis", "redis+sentinel", "postgresql")


def sqlite_path(url: str) -> Path:
    """
    The file of a C{sqlite:///...} URL: three slashes and a relative path,
    or four and an absolute one.
    """
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or rest == "/":
        raise ConfigError(
            f"[store] url: {url!r} is not sqlite:///relative.db or sqlite:////absolute.db"
        )
    return Path(rest[1:])


def data_dir(url: str) -> Path:
    """
    The folder for the files the server makes beside its database (the
    generated master token, the key-encryption key): the SQLite file's
    folder, otherwise the working folder.
    """
    if url.startswith("sqlite:"):
        return sqlite_path(url).parent
    return Path(".")


def check_url(url: str) -> None:
    """
    Raise L{ConfigError} unless C{url} names a store this server can open.
    """
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ConfigError(
            f"[store] url: unknown scheme in {mask_password(url)!r}; use one of "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    if scheme.startswith("redis"):
        redis_address(url)
    if scheme == "sqlite":
        folder = sqlite_path(url).parent
        if not folder.is_dir():
            raise ConfigError(f"[store] url: the folder {str(folder)!r} does not exist")


#: Where the sentinels listen unless the URL says otherwise.
SENTINEL_PORT = 26379


@frozen
class RedisAddress:
    """
    Where a store URL says Redis is, and how to log in.

    @ivar url: the URL, password masked.
    @ivar host: the server of a C{redis://} URL; None with Sentinel.
    @ivar sentinels: the sentinels of a C{redis+sentinel://} URL, in order.
    @ivar service: the name the sentinels know the primary by.
    """

    url: str
    dbid: int
    username: str | None
    password: str | None = field(repr=False)
    host: str | None = None
    port: int = 6379
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def sentinel(self) -> bool:
        return bool(self.sentinels)


def redis_address(url: str) -> RedisAddress:
    """
    The address of a C{redis://[[user]:password@]host[:port][/db]} or
    C{redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[?db=N]}
    URL (the sentinels' own password, if they ask for one, as
    C{sentinel_password=} in the query).

    @raise ConfigError: naming what is wrong, with the password masked.
    """
    masked = mask_password(url)
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "redis+sentinel"):
        raise ConfigError(f"[store] url: {masked!r} is not a redis:// URL")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) if user else None
        password = unquote(secret) if colon else None
    if parts.scheme == "redis":
        host, port = _host_and_port(hosts or "localhost", 6379, masked)
        db_text = parts.path.lstrip("/") or "0"
        if not db_text.isdigit():
            raise ConfigError(f"[store] url: the database of {masked!r} must be a number")
        if parts.query:
            raise ConfigError(f"[store] url: {masked!r}: a redis:// URL takes no query")
        return RedisAddress(
            masked, int(db_text), username, password, host=host or "localhost", port=port
        )
    sentinels = tuple(
        _host_and_port(one, SENTINEL_PORT, masked) for one in hosts.split(",") if one
    )
    if not sentinels:
        raise ConfigError(f"[store] url: {masked!r} names no sentinel")
    service = unquote(parts.path.lstrip("/"))
    if not service or "/" in service:
        raise ConfigError(
            f"[store] url: {masked!r}: the path is the service name the sentinels "
            "monitor: redis+sentinel://host:26379,host:26379/SERVICE?db=0"
        )
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - {"db", "sentinel_password"})
    if unknown:
        raise ConfigError(
            f"[store] url: {masked!r}: unknown parameter {unknown[0]!r} "
            "(a redis+sentinel:// URL takes db and sentinel_password)"
        )
    db_text = query.get("db", "0")
    if not db_text.isdigit():
        raise ConfigError(f"[store] url: the database of {masked!r} must be a number")
    return RedisAddress(
        masked,
        int(db_text),
        username,
        password,
        sentinels=sentinels,
        service=service,
        sentinel_password=query.get("sentinel_password") or None,
    )


def _host_and_port(text: str, default_port: int, masked: str) -> tuple[str, int]:
    """
    C{host}, C{host:port}, C{[v6]} or C{[v6]:port}.
    """
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
    if port_text and not port_text.isdigit() or not host:
        raise ConfigError(f"[store] url: bad host or port {text!r} in {masked!r}")
    port = int(port_text) if port_text else default_port
    if not 0 < port < 65536:
        raise ConfigError(f"[store] url: bad port in {masked!r}")
    return host, port
