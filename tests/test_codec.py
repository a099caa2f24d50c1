"""
The record codec (L{ccserver.stores.codec}): every stored model class round
trips through both shapes of record, the records are byte for byte what the
stores wrote before the codec existed (the C{LEGACY_*} values, which the
store tests also write by hand and read back), and a model field without a
codec entry is refused.
"""

from __future__ import annotations

import gc
import json
from typing import Any

import attrs
from attrs import evolve
from twisted.trial.unittest import SynchronousTestCase

from ccserver.model import (
    EMPTY,
    Client,
    InitialAccessToken,
    StoredKey,
    TokenRateLimit,
    TokenRecord,
)
from ccserver.stores import codec as codec_module
from ccserver.stores.codec import (
    CLIENTS,
    CODECS,
    INT,
    KEYS,
    SCOPE_CACHE_TEXT,
    TEXT,
    TOKENS,
    Codec,
    Field,
)
from ccserver.stores.memory import MemoryStore

# Records as the stores wrote them before the codec, and what they hold.

LEGACY_TOKEN = TokenRecord(
    token_digest="f" * 64,
    client_id="client-ü",
    scope=frozenset({"write", "read", "zoë"}),
    audience=("https://api.example", "https://ü.example"),
    issued_at=1_700_000_000,
    expires_at=1_700_003_600,
    jti="jti-1",
    claims={"tenant": "Zoë 🐍", "nested": {"a": [1, 2.5, None, True]}, "n": 1},
)
LEGACY_TOKEN_ROW = (
    "f" * 64,
    "client-ü",
    "read write zoë",
    '["https://api.example","https://ü.example"]',
    1700000000,
    1700003600,
    "jti-1",
    '{"tenant":"Zoë 🐍","nested":{"a":[1,2.5,null,true]},"n":1}',
    None,  # jkt: schema version 5 added the column, NULL in every earlier row
    None,  # x5t_s256: version 6, likewise
    None,  # delegation: version 11, likewise
)
LEGACY_TOKEN_JSON = (
    '{"token_digest":"' + "f" * 64 + '","client_id":"client-ü",'
    '"scope":["read","write","zoë"],'
    '"audience":["https://api.example","https://ü.example"],'
    '"issued_at":1700000000,"expires_at":1700003600,"jti":"jti-1",'
    '"claims":{"tenant":"Zoë 🐍","nested":{"a":[1,2.5,null,true]},"n":1}}'
)

LEGACY_CLIENT = Client(
    client_id="client-ü",
    client_id_issued_at=1_700_000_000,
    metadata={
        "client_name": "Zoë's 🐍",
        "scope": "read write",
        "grant_types": ["client_credentials"],
        "jwks": {"keys": [{"kty": "EC"}]},
    },
    client_secret_digest="a" * 64,
    registration_access_token_digest="b" * 64,
)
_METADATA_JSON = (
    '{"client_name":"Zoë\'s 🐍","scope":"read write",'
    '"grant_types":["client_credentials"],"jwks":{"keys":[{"kty":"EC"}]}}'
)
# encrypted_secret: schema version 4 added the column, NULL in earlier rows
# previous_secret_digest, _expires_at: version 8 added them, likewise
# auth_method_named: version 9 added it, 1 (its column default) in earlier rows
# token_rate_limit: version 15 added it, NULL in earlier rows
LEGACY_CLIENT_ROW = (
    "client-ü", 1700000000, _METADATA_JSON, "a" * 64, "b" * 64, None, None, None, 1, None
)
LEGACY_CLIENT_JSON = (
    '{"client_id":"client-ü","client_id_issued_at":1700000000,"metadata":'
    + _METADATA_JSON
    + ',"client_secret_digest":"'
    + "a" * 64
    + '","registration_access_token_digest":"'
    + "b" * 64
    + '"}'
)

LEGACY_KEY = StoredKey(
    kid="kid-é",
    alg="ES256",
    encrypted_private_key="gAAAAA-x",
    created_at=1_700_000_000,
    active_from=1_700_000_060,
    retired_at=None,
)
LEGACY_KEY_ROW = ("kid-é", "ES256", "gAAAAA-x", 1700000000, 1700000060, None)
# the Redis store escaped non-ASCII in keys, and only there
LEGACY_KEY_JSON = (
    '{"kid":"kid-\\u00e9","alg":"ES256","encrypted_private_key":"gAAAAA-x",'
    '"created_at":1700000000,"active_from":1700000060,"retired_at":null}'
)
RETIRED_KEY = evolve(LEGACY_KEY, kid="kid-2", retired_at=1_700_100_000)
RETIRED_KEY_ROW = ("kid-2", "ES256", "gAAAAA-x", 1700000000, 1700000060, 1700100000)
RETIRED_KEY_JSON = (
    '{"kid":"kid-2","alg":"ES256","encrypted_private_key":"gAAAAA-x",'
    '"created_at":1700000000,"active_from":1700000060,"retired_at":1700100000}'
)

def current_json(legacy: str) -> str:
    """
    A legacy JSON record as it is written now: with the members added
    since (null where they do not apply), which a legacy reader ignores.
    """
    if legacy.startswith('{"token_digest"'):
        return legacy[:-1] + ',"jkt":null,"x5t_s256":null,"delegation":null}'
    if legacy.startswith('{"client_id"'):
        return legacy[:-1] + (
            ',"encrypted_secret":null,"previous_secret_digest":null,'
            '"previous_secret_expires_at":null,"auth_method_named":true,'
            '"token_rate_limit":null}'
        )
    return legacy


LEGACY: list[tuple[Codec[Any], Any, tuple[Any, ...], str]] = [
    (TOKENS, LEGACY_TOKEN, LEGACY_TOKEN_ROW, LEGACY_TOKEN_JSON),
    (CLIENTS, LEGACY_CLIENT, LEGACY_CLIENT_ROW, LEGACY_CLIENT_JSON),
    (KEYS, LEGACY_KEY, LEGACY_KEY_ROW, LEGACY_KEY_JSON),
    (KEYS, RETIRED_KEY, RETIRED_KEY_ROW, RETIRED_KEY_JSON),
]


def edge_cases() -> list[Any]:
    """
    Records with the edge values of each field.
    """
    large_claims = {f"claim-{i}": ["x" * 100, i, {"deep": [None, 1.5]}] for i in range(2000)}
    return [
        evolve(LEGACY_TOKEN, scope=frozenset(), audience=(), claims={}),
        evolve(LEGACY_TOKEN, scope="a", audience=("only",), claims={"s": "\u0000\n\"'\\"}),
        evolve(LEGACY_TOKEN, claims=large_claims),
        evolve(LEGACY_TOKEN, client_id="12345", jti="", issued_at=0, expires_at=2**53),
        evolve(
            LEGACY_TOKEN,
            delegation={
                "sub": "client-ü",
                "act": {"sub": "b", "act": {"sub": "a"}},
                "may_act": {"sub": "c"},
                "exchanged_from": [{"client_id": "a", "jti": "j"}],
            },
        ),
        evolve(LEGACY_CLIENT, metadata={}),
        evolve(LEGACY_CLIENT, metadata={"unicode": "日本語 🐍 \u2028", "n": -1, "x": None}),
        evolve(LEGACY_CLIENT, client_id="12345", metadata={"big": large_claims}),
        evolve(LEGACY_CLIENT, auth_method_named=False),
        evolve(LEGACY_CLIENT, token_rate_limit=TokenRateLimit.of(0.5, 7)),
        evolve(LEGACY_CLIENT, token_rate_limit=TokenRateLimit.of(1_000_000)),
        LEGACY_KEY,
        RETIRED_KEY,
        evolve(LEGACY_KEY, encrypted_private_key="g" * 10_000, retired_at=0),
    ]


class RoundTripTests(SynchronousTestCase):
    def test_rows(self) -> None:
        for record in edge_cases():
            codec = CODECS[type(record)]
            self.assertEqual(codec.from_row(codec.to_row(record)), record)

    def test_tuples(self) -> None:
        for record in edge_cases():
            codec = CODECS[type(record)]
            self.assertEqual(codec.from_tuple(codec.to_tuple(record)), record)

    def test_json(self) -> None:
        for record in edge_cases():
            codec = CODECS[type(record)]
            self.assertEqual(codec.from_json(codec.to_json(record)), record)
            self.assertEqual(codec.from_json(codec.to_json(record).encode()), record)

    def test_rows_are_primitives(self) -> None:
        """
        A row holds only strings, integers and None: what an SQL column
        takes, and what the garbage collector need not track.
        """
        for record in edge_cases():
            row = CODECS[type(record)].to_row(record)
            self.assertIsInstance(row, tuple)
            for value in row:
                self.assertIn(type(value), (str, int, type(None)))

    def test_token_row_and_tuple_untracked(self) -> None:
        row = TOKENS.to_row(LEGACY_TOKEN)
        kept = TOKENS.to_tuple(LEGACY_TOKEN)
        gc.collect()
        self.assertFalse(gc.is_tracked(row))
        self.assertFalse(gc.is_tracked(kept))

    def test_memory_store_tokens_untracked(self) -> None:
        """
        The memory store's token records add nothing the garbage collector
        walks: a million would otherwise slow every full collection.
        """
        store = MemoryStore()
        gc.collect()
        before = len(gc.get_objects())
        for i in range(5000):
            store.add_token(evolve(LEGACY_TOKEN, token_digest=f"{i:064x}", jti=f"jti-{i}"))
        gc.collect()
        # kept as objects, or as tuples of them, it would be 15,000 more
        self.assertLess(len(gc.get_objects()) - before, 50)
        got = self.successResultOf(store.get_token(f"{7:064x}"))
        self.assertEqual(got, evolve(LEGACY_TOKEN, token_digest=f"{7:064x}", jti="jti-7"))

    def test_unserialisable_value_refused(self) -> None:
        token = evolve(LEGACY_TOKEN, claims={"when": object()})
        self.assertRaises(TypeError, TOKENS.to_row, token)
        self.assertRaises(TypeError, TOKENS.to_json, token)


class SharedValueTests(SynchronousTestCase):
    """
    A token read back shares its immutable values with the tokens read
    before it, where it can: the set of a scope text, and the empty
    mapping of claims that are C{"{}"}.
    """

    def test_scope_set_shared(self) -> None:
        first = TOKENS.from_row(TOKENS.to_row(LEGACY_TOKEN))
        second = TOKENS.from_tuple(TOKENS.to_tuple(LEGACY_TOKEN))
        self.assertEqual(first.scope, LEGACY_TOKEN.scope)
        self.assertIs(first.scope, second.scope)

    def test_long_scope_not_kept(self) -> None:
        """
        A scope text longer than L{SCOPE_CACHE_TEXT} is split for each
        record: the cache holds short texts only, and at most 1,024 of
        them.
        """
        scope = frozenset(f"scope-{i}" for i in range(SCOPE_CACHE_TEXT // 8))
        token = evolve(LEGACY_TOKEN, scope=scope)
        self.assertGreater(len(TOKENS.to_row(token)[2]), SCOPE_CACHE_TEXT)
        first = TOKENS.from_row(TOKENS.to_row(token))
        second = TOKENS.from_row(TOKENS.to_row(token))
        self.assertEqual(first.scope, scope)
        self.assertEqual(second.scope, scope)
        self.assertIsNot(first.scope, second.scope)
        self.assertEqual(codec_module._cached_scope.cache_info().maxsize, 1024)

    def test_empty_claims_not_parsed(self) -> None:
        def refuse(text: str) -> Any:
            raise AssertionError(f"parsed {text!r}")

        token = evolve(LEGACY_TOKEN, claims={})
        row = TOKENS.to_row(token)
        self.assertEqual(row[TOKENS.position("claims")], "{}")
        self.patch(codec_module, "_json_value", refuse)
        got = TOKENS.from_row(row)
        self.assertIs(got.claims, EMPTY)
        self.assertIs(TOKENS.from_tuple(TOKENS.to_tuple(token)).claims, EMPTY)
        self.assertEqual(got, token)

    def test_claims_not_shared_with_their_source(self) -> None:
        """
        A record's claims are its own read-only copy: the mapping it was
        made from may change, and it does not.
        """
        source: dict[str, Any] = {}
        token = evolve(LEGACY_TOKEN, claims=source)
        source["later"] = 1
        self.assertEqual(dict(token.claims), {})
        source = {"tenant": "a"}
        token = evolve(LEGACY_TOKEN, claims=source)
        source["tenant"] = "b"
        self.assertEqual(token.claims["tenant"], "a")


class LegacyFormatTests(SynchronousTestCase):
    """
    The codec writes and reads exactly what the stores wrote before it.
    """

    def test_rows(self) -> None:
        # (MemoryStore's tuples are never written out: no format to keep)
        for codec, record, row, _ in LEGACY:
            self.assertEqual(codec.to_row(record), row)
            self.assertEqual(codec.from_row(row), record)

    def test_json(self) -> None:
        for codec, record, _, text in LEGACY:
            self.assertEqual(codec.to_json(record), current_json(text))
            self.assertEqual(codec.from_json(text), record)
            self.assertEqual(codec.from_json(current_json(text)), record)

    def test_json_read_whatever_its_escapes(self) -> None:
        """
        A reader takes any valid JSON of the record: escaped or not, spaced
        or not, members in any order.
        """
        for codec, record, _, text in LEGACY:
            document = json.loads(text)
            other = json.dumps(dict(reversed(document.items())), ensure_ascii=True, indent=1)
            self.assertEqual(codec.from_json(other), record)

    def test_sql_columns_are_the_fields(self) -> None:
        """
        The SQL tables' columns, in order, as the migrations made them.
        """
        self.assertEqual(
            TOKENS.names,
            (
                "token_digest",
                "client_id",
                "scope",
                "audience",
                "issued_at",
                "expires_at",
                "jti",
                "claims",
                "jkt",
                "x5t_s256",
                "delegation",
            ),
        )
        self.assertEqual(
            CLIENTS.names,
            (
                "client_id",
                "client_id_issued_at",
                "metadata",
                "client_secret_digest",
                "registration_access_token_digest",
                "encrypted_secret",
                "previous_secret_digest",
                "previous_secret_expires_at",
                "auth_method_named",
                "token_rate_limit",
            ),
        )
        self.assertEqual(
            KEYS.names,
            ("kid", "alg", "encrypted_private_key", "created_at", "active_from", "retired_at"),
        )


@attrs.frozen
class _Grown:
    """
    A model class that has grown a field since its codec was written.
    """

    name: str
    issued_at: int
    added: str = "new"


class CoverageTests(SynchronousTestCase):
    def test_every_field_of_every_stored_class(self) -> None:
        """
        Each stored model class has a codec naming each of its fields, in
        order: adding a field to the model without one fails here (and at
        import).
        """
        self.assertEqual(set(CODECS), {Client, TokenRecord, StoredKey, InitialAccessToken})
        for model, codec in CODECS.items():
            self.assertIs(codec.model, model)
            self.assertEqual(codec.names, tuple(a.name for a in attrs.fields(model)))

    def test_field_without_entry_refused(self) -> None:
        with self.assertRaises(TypeError) as e:
            Codec(_Grown, [Field("name", TEXT), Field("issued_at", INT)])
        self.assertIn("added", str(e.exception))

    def test_fields_out_of_order_refused(self) -> None:
        self.assertRaises(
            TypeError,
            Codec,
            _Grown,
            [Field("issued_at", INT), Field("name", TEXT), Field("added", TEXT)],
        )

    def test_missing_member_read_as_declared(self) -> None:
        """
        A field added later reads the JSON records written before it with
        its C{missing} value; without one, such a record is an error.
        """
        codec = Codec(
            _Grown,
            [Field("name", TEXT), Field("issued_at", INT), Field("added", TEXT, missing="old")],
        )
        self.assertEqual(codec.from_json('{"name":"n","issued_at":1}'), _Grown("n", 1, "old"))
        self.assertEqual(codec.to_json(_Grown("n", 1)), '{"name":"n","issued_at":1,"added":"new"}')
        strict = Codec(_Grown, [Field("name", TEXT), Field("issued_at", INT), Field("added", TEXT)])
        self.assertRaises(KeyError, strict.from_json, '{"name":"n","issued_at":1}')

    def test_position(self) -> None:
        self.assertEqual(TOKENS.position("expires_at"), 5)
        self.assertEqual(TOKENS.to_row(LEGACY_TOKEN)[TOKENS.position("jti")], "jti-1")
