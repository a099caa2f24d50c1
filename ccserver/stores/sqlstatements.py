"""
The SQL the stores run, written once for both databases with C{?}
placeholders (L{ccserver.stores.sqldialects.Dialect.translate} gives each
driver its own), over the columns of L{ccserver.stores.codec}.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ccserver.stores.codec import CLIENTS, INITIAL_ACCESS_TOKENS, KEYS, TOKENS, Codec
from ccserver.stores.sqldialects import Dialect


def columns(codec: Codec[Any]) -> str:
    return ", ".join(codec.names)


def insert(table: str, codec: Codec[Any]) -> str:
    """
    C{INSERT} of a row (L{Codec.to_row}).
    """
    placeholders = ", ".join("?" for _ in codec.names)
    return f"INSERT INTO {table} ({columns(codec)}) VALUES ({placeholders})"


def _replacing(codec: Codec[Any]) -> str:
    """
    The clause that makes an C{INSERT} replace the row stored with its key
    (the first column).
    """
    key, *rest = codec.names
    return f" ON CONFLICT ({key}) DO UPDATE SET " + ", ".join(
        f"{name} = excluded.{name}" for name in rest
    )


def upsert(table: str, codec: Codec[Any]) -> str:
    """
    C{INSERT} of a row, replacing the one stored with its key (the first
    column), as L{MemoryStore} does.
    """
    return insert(table, codec) + _replacing(codec)


def upsert_many(table: str, codec: Codec[Any], count: int) -> str:
    """
    L{upsert} of C{count} rows in one statement (their values one after
    the other).  The rows of one batch have distinct keys (random tokens'
    digests): PostgreSQL refuses to update one row twice in a statement.
    """
    row = "(" + ", ".join("?" for _ in codec.names) + ")"
    return (
        f"INSERT INTO {table} ({columns(codec)}) VALUES "
        + ", ".join(row for _ in range(count))
        + _replacing(codec)
    )


def upsert_json(table: str, codec: Codec[Any]) -> str:
    """
    L{upsert} of every row of one parameter, a JSON array of objects
    (L{json_rows}), each typed as the table's columns are (PostgreSQL's
    C{jsonb_populate_recordset}): one statement for any number of rows.
    Its rows have distinct keys, as L{upsert_many}'s.
    """
    return (
        f"INSERT INTO {table} ({columns(codec)}) SELECT {columns(codec)}"
        f" FROM jsonb_populate_recordset(NULL::{table}, CAST(? AS jsonb))"
        + _replacing(codec)
    )


#: Made once: json.dumps with any non-default argument makes an encoder a
#: call.  The text goes to the driver as UTF-8.
_json_text = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def json_rows(codec: Codec[Any], rows: Sequence[Sequence[Any]]) -> str:
    """
    L{upsert_json}'s parameter: the rows (L{Codec.to_row}) as a JSON array
    of objects, each value under its column's name.
    """
    names = codec.names
    return _json_text([dict(zip(names, row, strict=True)) for row in rows])


def update(table: str, codec: Codec[Any]) -> str:
    """
    C{UPDATE} of every column but the key, whose value comes last: the
    parameters are L{key_last} of the row.
    """
    key, *rest = codec.names
    return f"UPDATE {table} SET {', '.join(f'{name} = ?' for name in rest)} WHERE {key} = ?"


def key_last(row: Sequence[Any]) -> tuple[Any, ...]:
    return (*row[1:], row[0])


def purge_batch(dialect: str, table: str, key: str) -> str:
    """
    A batch of a purge: at most a given number of the rows of C{table}
    that expired before a given time, the earliest first, found along the
    expiry index and deleted by their primary key C{key} (SQLite) or
    where they lie (PostgreSQL).

    PostgreSQL is given the batch's rows as an array of their C{ctid}s:
    one walk of the expiry index, then a TID scan that goes straight to
    each row, where an array of primary keys took a probe of the primary
    key's index a row (about half of the batch's CPU: bench/README.md,
    run I), and C{IN (SELECT ...)} planned a hash join over the whole
    table, a full scan for every batch.  The C{ctid}s are read and used
    in one statement, under one snapshot: no vacuum can free or reuse
    those places meanwhile, and a row another transaction changes between
    the batch's reading and its deleting (a deny-list entry whose expiry a
    second revocation puts off) is a new version at a new C{ctid}, which
    the batch leaves alone (with an array of primary keys, PostgreSQL
    deleted the new version: the subquery is not run again when a row it
    chose has changed).  SQLite runs no other writer meanwhile: its write
    lock is the whole database's.
    """
    batch = f"SELECT {{}} FROM {table} WHERE expires_at < ? ORDER BY expires_at LIMIT ?"
    if dialect == "postgresql":
        return f"DELETE FROM {table} WHERE ctid = ANY(ARRAY({batch.format('ctid')}))"
    return f"DELETE FROM {table} WHERE {key} IN ({batch.format(key)})"


#: The sizes of the lookups' statements (L{lookups}): a batch of keys is
#: padded to the next (the statements are few, so each is prepared once
#: and its plan kept), and the largest is well under SQLite's oldest limit
#: of 999 variables a statement.
LOOKUP_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


def lookup_size(count: int) -> int:
    """
    The size of the statement a batch of C{count} keys goes in (C{count}
    is at most the largest of L{LOOKUP_SIZES}).
    """
    return next(size for size in LOOKUP_SIZES if size >= count)


def _lookup_sql(count: int) -> dict[str, str]:
    """
    The lookups by key, C{count} keys a statement, each row led by its key.
    """
    keys = ", ".join("?" for _ in range(count))
    return {
        # A token its client's revocation mark covers is not answered.
        "tokens": (
            f"SELECT {columns(TOKENS)} FROM access_tokens WHERE token_digest IN ({keys})"
            " AND NOT EXISTS (SELECT 1 FROM revoked_clients"
            " WHERE revoked_clients.client_id = access_tokens.client_id"
            " AND access_tokens.issued_at <= revoked_clients.issued_before)"
        ),
        "revoked_jtis": f"SELECT jti FROM revoked_jtis WHERE jti IN ({keys})",
        "revoked_clients": (
            f"SELECT client_id, issued_before FROM revoked_clients WHERE client_id IN ({keys})"
        ),
    }


def lookups(dialect: Dialect) -> dict[tuple[str, int], str]:
    """
    The statements of the lookups that L{ccserver.stores.grouplookup}
    groups, by name and size (L{LOOKUP_SIZES}), in the dialect's own form:
    C{IN} over the primary key, which both databases answer with one
    probe of its index per key.
    """
    return {
        (name, size): dialect.translate(statement)
        for size in LOOKUP_SIZES
        for name, statement in _lookup_sql(size).items()
    }


def statements(dialect: Dialect) -> dict[str, str]:
    """
    Every statement of the store, by name, in the dialect's own form.
    """
    t = dialect.translate
    return {
        "add_client": t(insert("clients", CLIENTS)),
        "get_client": t(f"SELECT {columns(CLIENTS)} FROM clients WHERE client_id = ?"),
        "replace_client": t(update("clients", CLIENTS)),
        # Keyset paging: an index walk from the cursor, whatever the table's size.
        "list_clients": t(
            f"SELECT {columns(CLIENTS)} FROM clients WHERE client_id > ?"
            " ORDER BY client_id LIMIT ?"
        ),
        "delete_client": t("DELETE FROM clients WHERE client_id = ?"),
        # a client's bindings to workload identities: their index
        "bind": t(
            "INSERT INTO federated_identities (binding_key, conditions_key, client_id)"
            " VALUES (?, ?, ?)"
        ),
        "unbind": t("DELETE FROM federated_identities WHERE client_id = ?"),
        "clients_bound_to": t(
            "SELECT client_id FROM federated_identities WHERE binding_key = ?"
        ),
        # A mark already there is kept with the later of each time.
        "revoke_client": t(
            "INSERT INTO revoked_clients (client_id, issued_before, expires_at)"
            " VALUES (?, ?, ?) ON CONFLICT (client_id) DO UPDATE SET"
            " issued_before = CASE WHEN excluded.issued_before > revoked_clients.issued_before"
            " THEN excluded.issued_before ELSE revoked_clients.issued_before END,"
            " expires_at = CASE WHEN excluded.expires_at > revoked_clients.expires_at"
            " THEN excluded.expires_at ELSE revoked_clients.expires_at END"
        ),
        "delete_client_tokens": t("DELETE FROM access_tokens WHERE client_id = ?"),
        "purge_revoked_clients": t("DELETE FROM revoked_clients WHERE expires_at < ?"),
        "list_keys": t(f"SELECT {columns(KEYS)} FROM signing_keys ORDER BY created_at, kid"),
        # One slot more in a counter's window; a window that has ended
        # starts again at 1 (both SET expressions read the row as it
        # was).  The row stays locked to the end of the transaction, so
        # that a reservation over budget can be rolled back unseen.
        "reserve_attempt": t(
            "INSERT INTO auth_attempts (attempt_key, attempts, window_ends_ms) VALUES (?, 1, ?)"
            " ON CONFLICT (attempt_key) DO UPDATE SET"
            " attempts = CASE WHEN auth_attempts.window_ends_ms <= ? THEN 1"
            " ELSE auth_attempts.attempts + 1 END,"
            " window_ends_ms = CASE WHEN auth_attempts.window_ends_ms <= ?"
            " THEN excluded.window_ends_ms ELSE auth_attempts.window_ends_ms END"
            " RETURNING attempts, window_ends_ms"
        ),
        "is_known": t(
            "SELECT 1 FROM auth_known_sources WHERE known_key = ? AND known_until_ms > ?"
        ),
        # given back only in the window it was taken in
        "release_attempt": t(
            "UPDATE auth_attempts SET attempts = attempts - 1"
            " WHERE attempt_key = ? AND window_ends_ms = ? AND attempts > 0"
        ),
        "mark_known": t(
            "INSERT INTO auth_known_sources (known_key, known_until_ms) VALUES (?, ?)"
            " ON CONFLICT (known_key) DO UPDATE SET known_until_ms = CASE"
            " WHEN excluded.known_until_ms > auth_known_sources.known_until_ms"
            " THEN excluded.known_until_ms ELSE auth_known_sources.known_until_ms END"
        ),
        "purge_auth_attempts": t("DELETE FROM auth_attempts WHERE window_ends_ms < ?"),
        "add_initial_access_token": t(
            insert("initial_access_tokens", INITIAL_ACCESS_TOKENS)
        ),
        "get_initial_access_token": t(
            f"SELECT {columns(INITIAL_ACCESS_TOKENS)} FROM initial_access_tokens"
            " WHERE token_digest = ?"
        ),
        "list_initial_access_tokens": t(
            f"SELECT {columns(INITIAL_ACCESS_TOKENS)} FROM initial_access_tokens"
            " ORDER BY created_at, token_id"
        ),
        # the first revocation's time is kept
        "revoke_initial_access_token": t(
            "UPDATE initial_access_tokens SET revoked_at = COALESCE(revoked_at, ?)"
            " WHERE token_id = ?"
        ),
        # One use more, only while it may register: the row stays locked
        # to the end of the transaction, in which the client is added.
        "use_initial_access_token": t(
            "UPDATE initial_access_tokens SET uses = uses + 1"
            " WHERE token_digest = ? AND revoked_at IS NULL AND expires_at > ?"
            f" AND uses < max_uses RETURNING {columns(INITIAL_ACCESS_TOKENS)}"
        ),
        "purge_initial_access_tokens": t(
            "DELETE FROM initial_access_tokens WHERE expires_at < ?"
        ),
        "purge_known_sources": t("DELETE FROM auth_known_sources WHERE known_until_ms < ?"),
        # Taken when nobody holds it, its time has ended, or the holder
        # takes it again: one statement, so one row lock decides.
        "take_lease": t(
            "INSERT INTO leases (name, holder, expires_ms) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
            " expires_ms = excluded.expires_ms"
            " WHERE leases.expires_ms <= ? OR leases.holder = excluded.holder"
        ),
        "end_lease": t("DELETE FROM leases WHERE name = ? AND holder = ?"),
        # A new bucket is full; an existing one is left as it is, but
        # its row is locked (PostgreSQL) until the transaction ends, and
        # returned as it is now.
        "load_bucket": t(
            "INSERT INTO token_buckets (bucket_key, tokens, counted_ms, full_ms)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (bucket_key) DO UPDATE SET"
            " bucket_key = excluded.bucket_key RETURNING tokens, counted_ms"
        ),
        "store_bucket": t(
            "UPDATE token_buckets SET tokens = ?, counted_ms = ?, full_ms = ?"
            " WHERE bucket_key = ?"
        ),
        "purge_buckets": t("DELETE FROM token_buckets WHERE full_ms < ?"),
        # A kid taken already is replaced, as MemoryStore does.
        "add_key": t(upsert("signing_keys", KEYS)),
        "replace_key": t(update("signing_keys", KEYS)),
        "delete_key": t("DELETE FROM signing_keys WHERE kid = ?"),
        # A digest stored already is replaced, as MemoryStore does.
        "add_token": t(upsert("access_tokens", TOKENS)),
        "delete_token": t("DELETE FROM access_tokens WHERE token_digest = ?"),
        # An entry is kept until the later of the two expiries.
        "revoke_jti": t(
            "INSERT INTO revoked_jtis (jti, expires_at) VALUES (?, ?)"
            " ON CONFLICT (jti) DO UPDATE SET expires_at = CASE"
            " WHEN excluded.expires_at > revoked_jtis.expires_at"
            " THEN excluded.expires_at ELSE revoked_jtis.expires_at END"
        ),
        # A key recorded already is left as it is: rowcount 0, a replay.
        "use_once": t(
            "INSERT INTO used_once (record_key, expires_at) VALUES (?, ?)"
            " ON CONFLICT (record_key) DO NOTHING"
        ),
        "purge_used_once": t("DELETE FROM used_once WHERE expires_at < ?"),
        "purge_tokens": t(purge_batch(dialect.name, "access_tokens", "token_digest")),
        "purge_revoked": t(purge_batch(dialect.name, "revoked_jtis", "jti")),
    }
