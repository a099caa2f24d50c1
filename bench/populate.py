"""
Fill a store with live opaque tokens for the growth section, fast and never
through HTTP: rows and keys shaped exactly as ccserver writes them
(L{ccserver.stores.codec.TOKENS}), keyed as its tokens are (the
millisecond they were made, then a digest: L{ccserver.credentials.opaque_token_key}).

  - PostgreSQL: C{INSERT ... SELECT} over C{generate_series}, a million
    rows a statement (each its own transaction): the server makes the rows,
    nothing crosses the socket;
  - SQLite: C{executemany} of generated rows, 100,000 a transaction;
  - Redis: a Lua script that makes 50,000 tokens a call (C{SET ... EXAT},
    and each client's sorted set, as the store's own script does).

The tokens' times spread over the hour before the fill, all expire at
C{expires_at} (so that the purge meets all of them at once), and belong
to C{clients} made-up clients but for every C{own_share}-th, which belongs
to C{own_client} (the bench's client, so that its own set of tokens is
large too).  Each fill says how long it took and what a token costs: disk
(SQLite, PostgreSQL) or memory (Redis).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

#: The columns the fill writes (the others are NULL: no binding, no exchange).
COLUMNS = ("token_digest", "client_id", "scope", "audience", "issued_at", "expires_at", "jti", "claims")
#: Tokens spread over the hour before the fill.
SPAN_MS = 3600 * 1000
#: Made-up clients the tokens belong to.
CLIENTS = 1000
#: Every OWN_SHARE-th token is the bench client's.
OWN_SHARE = 10
POSTGRESQL_CHUNK = 1_000_000
SQLITE_CHUNK = 100_000
REDIS_CHUNK = 50_000


@dataclass
class Fill:
    """
    What a fill did: how many tokens, in how long, and the store's size
    (bytes of disk or of memory) before and after.
    """

    store: str
    count: int
    seconds: float
    size_before: int
    size_after: int
    #: "disk" or "memory"
    measure: str

    @property
    def per_token(self) -> float:
        return (self.size_after - self.size_before) / self.count if self.count else 0.0

    def describe(self) -> str:
        return (
            f"{self.count:,} tokens in {self.seconds:.0f} s ({self.count / max(self.seconds, 1e-9):,.0f}/s); "
            f"{self.measure} {self.per_token:,.0f} bytes a token "
            f"({self.size_before / 2**20:,.0f} -> {self.size_after / 2**20:,.0f} MiB)"
        )


@dataclass(frozen=True)
class Shape:
    """
    What every token of a fill shares.
    """

    count: int
    expires_at: int
    audience: str
    own_client: str
    #: the millisecond the first token was made at
    first_ms: int

    @classmethod
    def of(cls, count: int, expires_at: int, issuer: str, own_client: str, now: float) -> Shape:
        return cls(count, expires_at, json.dumps([issuer], separators=(",", ":")), own_client,
                   int(now * 1000) - SPAN_MS)

    def made_ms(self, index: int) -> int:
        return self.first_ms + index * SPAN_MS // max(1, self.count)

    def client(self, index: int) -> str:
        return self.own_client if index % OWN_SHARE == 0 else f"bulk-{index % CLIENTS}"


def sqlite_rows(shape: Shape, start: int, stop: int) -> Iterator[tuple[Any, ...]]:
    """
    The rows of tokens C{start} to C{stop - 1}, in C{COLUMNS}' order.
    """
    for index in range(start, stop):
        made = shape.made_ms(index)
        yield (
            f"{made:012x}{secrets.token_hex(32)}",
            shape.client(index),
            "read",
            shape.audience,
            made // 1000,
            shape.expires_at,
            secrets.token_urlsafe(16),
            "{}",
        )


def _sqlite_size(connection: sqlite3.Connection) -> int:
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    size = connection.execute("PRAGMA page_size").fetchone()[0]
    return int(pages) * int(size)


def fill_sqlite(path: str, shape: Shape, progress: Callable[[int], None] = lambda n: None) -> Fill:
    connection = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        before = _sqlite_size(connection)
        statement = (f"INSERT INTO access_tokens ({', '.join(COLUMNS)}) "
                     f"VALUES ({', '.join('?' for _ in COLUMNS)})")
        started = time.monotonic()
        for start in range(0, shape.count, SQLITE_CHUNK):
            stop = min(shape.count, start + SQLITE_CHUNK)
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(statement, sqlite_rows(shape, start, stop))
            connection.execute("COMMIT")
            progress(stop)
        seconds = time.monotonic() - started
        return Fill("sqlite", shape.count, seconds, before, _sqlite_size(connection), "disk")
    finally:
        connection.close()


#: The rows of tokens %(start)s to %(stop)s, made by PostgreSQL itself.
POSTGRESQL_FILL = f"""
INSERT INTO access_tokens ({', '.join(COLUMNS)})
SELECT lpad(to_hex(%(first_ms)s + i * %(span)s / %(count)s), 12, '0')
           || encode(sha256(int8send(i) || %(salt)s::bytea), 'hex'),
       CASE WHEN i %% %(own_share)s = 0 THEN %(own_client)s ELSE 'bulk-' || (i %% %(clients)s) END,
       'read',
       %(audience)s,
       (%(first_ms)s + i * %(span)s / %(count)s) / 1000,
       %(expires_at)s,
       translate(encode(substr(sha256(int8send(i) || %(salt)s::bytea || 'jti'::bytea), 1, 16), 'base64'),
                 '+/=', '-_'),
       '{{}}'
FROM generate_series(%(start)s::bigint, %(stop)s::bigint) AS i
"""


def _postgresql_size(connection: Any) -> int:
    return int(connection.execute("SELECT pg_total_relation_size('access_tokens')").fetchone()[0])


def fill_postgresql(url: str, shape: Shape, progress: Callable[[int], None] = lambda n: None) -> Fill:
    import psycopg  # noqa: PLC0415 (the PostgreSQL extra)

    with psycopg.connect(url, autocommit=True) as connection:
        before = _postgresql_size(connection)
        salt = os.urandom(16)
        started = time.monotonic()
        for start in range(0, shape.count, POSTGRESQL_CHUNK):
            stop = min(shape.count, start + POSTGRESQL_CHUNK) - 1
            connection.execute(POSTGRESQL_FILL, {
                "first_ms": shape.first_ms, "span": SPAN_MS, "count": max(1, shape.count),
                "salt": salt, "own_share": OWN_SHARE, "own_client": shape.own_client,
                "clients": CLIENTS, "audience": shape.audience, "expires_at": shape.expires_at,
                "start": start, "stop": stop,
            })
            progress(stop + 1)
        connection.execute("ANALYZE access_tokens")
        seconds = time.monotonic() - started
        return Fill("postgresql", shape.count, seconds, before, _postgresql_size(connection), "disk")


#: Tokens ARGV[2] to ARGV[3] (see L{fill_redis}): each C{SET ... EXAT} as
#: the store's own script writes it (a lifetime and a part of the spread
#: after its expiry, L{ccserver.stores.redis.kept_until}), its digest in its client's sorted set,
#: which then goes as the last of its tokens' keys does, and its client
#: named in the set of clients with tokens (for the purge,
#: L{ccserver.stores.redis.TOKEN_CLIENTS_KEY}).
REDIS_FILL = """
local prefix, start, stop = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local first_ms, span, count = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local expires, own, share, clients = ARGV[7], ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10])
local audience, salt, expiry_spread, expiry_delay = ARGV[11], ARGV[12], tonumber(ARGV[13]), tonumber(ARGV[14])
local touched = {}
for i = start, stop do
    local ms = first_ms + math.floor(i * span / count)
    local digest = string.format('%012x', ms) .. redis.sha1hex(salt .. i) .. string.sub(redis.sha1hex(i .. salt), 1, 24)
    local client = own
    if i % share ~= 0 then
        client = 'bulk-' .. (i % clients)
    end
    local jti = string.sub(redis.sha1hex('jti' .. salt .. i), 1, 22)
    local text = '{"token_digest":"' .. digest .. '","client_id":"' .. client .. '","scope":["read"],'
        .. '"audience":' .. audience .. ',"issued_at":' .. math.floor(ms / 1000) .. ',"expires_at":'
        .. expires .. ',"jti":"' .. jti .. '","claims":{},"jkt":null,"x5t_s256":null,"delegation":null}'
    local lifetime = tonumber(expires) - math.floor(ms / 1000)
    local spread = math.floor(lifetime * expiry_spread)
    local kept = tonumber(expires)
    if lifetime > 0 then
        kept = kept + math.floor(lifetime * expiry_delay)
    end
    if spread > 0 then
        kept = kept + tonumber(string.sub(digest, -8), 16) % spread
    end
    redis.call('SET', prefix .. 'token:' .. digest, text, 'EXAT', string.format('%d', kept))
    redis.call('ZADD', prefix .. 'client_tokens:' .. client, expires, digest)
    if not touched[client] or touched[client] < kept then
        touched[client] = kept
    end
end
for client, kept in pairs(touched) do
    local key = prefix .. 'client_tokens:' .. client
    local ttl = redis.call('TTL', key)
    if ttl < 0 or tonumber(redis.call('TIME')[1]) + ttl < kept then
        redis.call('EXPIREAT', key, string.format('%d', kept))
    end
    redis.call('SADD', prefix .. 'token_clients', client)
end
return stop - start + 1
"""


class Redis:
    """
    Just enough of a Redis client for a fill: one connection, one command
    at a time, replies decoded (no client library needed).
    """

    def __init__(self, url: str) -> None:
        parsed = urlsplit(url)
        self._socket = socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379),
                                                timeout=120)
        self._replies = self._socket.makefile("rb")
        if parsed.password:
            self.call("AUTH", unquote(parsed.password))
        database = parsed.path.strip("/")
        if database:
            self.call("SELECT", database)

    def call(self, *args: object) -> Any:
        parts = [str(a).encode() if not isinstance(a, bytes) else a for a in args]
        self._socket.sendall(b"*%d\r\n" % len(parts) + b"".join(
            b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
        return self._reply()

    def _reply(self) -> Any:
        line = self._replies.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self._replies.read(size + 2)[:-2]
            return data.decode()
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._reply() for _ in range(size)]
        raise RuntimeError(f"not a Redis reply: {line!r}")

    def used_memory(self) -> int:
        info = str(self.call("INFO", "memory"))
        return int(next(line.split(":", 1)[1] for line in info.splitlines()
                        if line.startswith("used_memory:")))

    def close(self) -> None:
        self._replies.close()
        self._socket.close()


def fill_redis(url: str, shape: Shape, progress: Callable[[int], None] = lambda n: None) -> Fill:
    from ccserver.stores.redis import EXPIRY_DELAY, EXPIRY_SPREAD, PREFIX  # noqa: PLC0415

    client = Redis(url)
    try:
        before = client.used_memory()
        sha = client.call("SCRIPT", "LOAD", REDIS_FILL)
        salt = secrets.token_hex(8)
        started = time.monotonic()
        for start in range(0, shape.count, REDIS_CHUNK):
            stop = min(shape.count, start + REDIS_CHUNK) - 1
            client.call("EVALSHA", sha, 0, PREFIX, start, stop, shape.first_ms, SPAN_MS, max(1, shape.count),
                        shape.expires_at, shape.own_client, OWN_SHARE, CLIENTS, shape.audience, salt,
                        EXPIRY_SPREAD, EXPIRY_DELAY)
            progress(stop + 1)
        seconds = time.monotonic() - started
        return Fill("redis", shape.count, seconds, before, client.used_memory(), "memory")
    finally:
        client.close()


FILLS: dict[str, Callable[[str, Shape, Callable[[int], None]], Fill]] = {
    "postgresql": fill_postgresql,
    "redis": fill_redis,
}


def fill(store: str, url: str, shape: Shape, progress: Callable[[int], None] = lambda n: None) -> Fill:
    """
    Fill the store at C{url} (a ccserver store URL, its schema made) with
    C{shape.count} tokens.
    """
    if store == "sqlite":
        return fill_sqlite(url.removeprefix("sqlite:///"), shape, progress)
    return FILLS[store](url, shape, progress)
