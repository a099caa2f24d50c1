"""
The one mapping of model objects to stored records, for every store.

Each stored model class (L{Client}, L{TokenRecord}, L{StoredKey},
L{InitialAccessToken}) has one
L{Codec} here, which lists its fields once, in the model's order, each with
its L{Kind}: how its value is written.  A codec has two shapes of record:

  - a I{row}, a tuple of C{str}, C{int} and C{None}: the columns of the SQL
    tables, in the order of L{Codec.names} (which is where the SQL stores
    take their column lists from), and the tuple L{MemoryStore} keeps of a
    token (a tuple of strings and numbers, which the garbage collector stops
    tracking: a million tokens held as objects would make every full
    collection walk them);
  - a I{JSON object}, one text: what the Redis store keeps under one key,
    the field names as its members.

And a third, for L{MemoryStore}'s tokens, which are never written out: a
I{tuple}, the row but with the values the garbage collector does not track
kept as they are (a tuple of strings stays one; no JSON to write and read
back), so that the memory store costs no more than before.

Adding a field to a stored model class is then one line in its codec
(building the codec fails, at import, while a field has none), and for SQL a
migration adding the column.  A field given a C{missing} value reads Redis
records written before it existed.

The formats are exactly those written before this module existed, byte
for byte, so existing SQLite, PostgreSQL and Redis data loads unchanged (the
tests write records as the earlier code did and read them here).

The encoders and decoders are generated as Python source when a codec is
made (as attrs makes C{__init__}): a generic loop over the fields costs
several microseconds more per record, and the token path reads and writes
one record per opaque token.  L{Codec.source} shows the code.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Generic, TypeVar

import attrs
from attrs import AttrsInstance, frozen

from ccserver.model import (
    EMPTY,
    Client,
    InitialAccessToken,
    StoredKey,
    TokenRateLimit,
    TokenRecord,
    scope_values,
    token_rate_limit,
)

T = TypeVar("T", bound=AttrsInstance)

#: Primitive values: what a row holds.
Primitive = str | int | None


def _jsonable(o: Any) -> Any:
    # the model keeps mappings read-only (MappingProxyType), which json does
    # not know
    if isinstance(o, Mapping):
        return dict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _json_encoder(*, ascii: bool) -> Callable[[Any], str]:
    # Made once: json.dumps with any non-default argument builds a new
    # JSONEncoder per call, which costs more than the encoding itself.
    return json.JSONEncoder(ensure_ascii=ascii, separators=(",", ":"), default=_jsonable).encode


_json_text = _json_encoder(ascii=False)
_json_value = json.loads


def _scope_text(scope: frozenset[str]) -> str:
    # RFC 6749 §3.3: space-delimited; sorted, so that equal scopes are
    # equal text
    return " ".join(sorted(scope))


#: The longest stored scope text whose set is kept for the next record
#: (L{_scope_of_text}).
SCOPE_CACHE_TEXT = 512


@lru_cache(maxsize=1024)
def _cached_scope(text: str) -> frozenset[str]:
    return scope_values(text)


def _scope_of_text(text: str) -> frozenset[str]:
    # Every token of a client, and mostly of a deployment, has one of a
    # few scopes: the set of each (immutable, so shared) is made once, not
    # split again for every record read.  Bounded in count and length.
    return _cached_scope(text) if len(text) <= SCOPE_CACHE_TEXT else scope_values(text)


def _object_of_text(text: str) -> Any:
    # most records' claims are "{}": the shared empty mapping, unparsed
    return EMPTY if text == "{}" else _json_value(text)


def _object_text(mapping: Mapping[str, Any]) -> str:
    # a dict first: through the encoder's default hook it costs more
    return _json_text(dict(mapping))


def _object_or_null(mapping: Mapping[str, Any]) -> str | None:
    # most records have none: NULL, not '{}', so a memory store of a
    # million tokens holds no million strings
    return _json_text(dict(mapping)) if mapping else None


def _object_or_empty(value: Any) -> Any:
    return EMPTY if value is None else _json_value(value)


def _json_object_or_null(mapping: Mapping[str, Any]) -> dict[str, Any] | None:
    return dict(mapping) if mapping else None


def _object_from_json(value: Any) -> Any:
    return EMPTY if value is None else value


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _optional_json_text(value: Any) -> str | None:
    return None if value is None else _json_text(list(value))


def _optional_json_value(value: Any) -> Any:
    return None if value is None else _json_value(value)


def _optional_list(value: Any) -> list[Any] | None:
    return None if value is None else list(value)


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


@frozen
class Kind:
    """
    How a field's value is stored.  Each function is L{None} where the value
    is stored as it is (no call made).

    @ivar to_row: model value -> the row's primitive (an SQL column).
    @ivar from_row: the row's primitive -> what the model class takes.
    @ivar to_json: model value -> a JSON value, in a JSON object record.
    @ivar from_json: that JSON value -> what the model class takes.
    @ivar kept: whether the value goes into the memory tuple as it is (an
        untracked immutable value: str, int, None, a tuple of str), or as in
        a row.
    """

    name: str
    to_row: Callable[[Any], Primitive] | None
    from_row: Callable[[Any], Any] | None
    to_json: Callable[[Any], Any] | None
    from_json: Callable[[Any], Any] | None
    kept: bool


#: A string.
TEXT = Kind("text", None, str, None, str, kept=True)
#: An integer (seconds since the epoch, mostly).
INT = Kind("int", None, int, None, int, kept=True)
#: An integer or None (SQL NULL, JSON null).
OPTIONAL_INT = Kind("optional int", None, _optional_int, None, _optional_int, kept=True)
#: A string or None (SQL NULL, JSON null).
OPTIONAL_TEXT = Kind("optional text", None, _optional_text, None, _optional_text, kept=True)
#: True or false: 1 or 0 in a row (SQLite has no boolean type; the column
#: is an INTEGER in PostgreSQL too), a JSON boolean in a JSON object.
BOOL = Kind("bool", int, bool, None, bool, kept=True)
#: A set of scope values: space-separated text in a row (the model splits
#: it), a sorted JSON array in a JSON object.
SCOPE = Kind("scope", _scope_text, _scope_of_text, sorted, None, kept=False)
#: A tuple of strings: JSON array text in a row, a JSON array in a JSON
#: object, itself in the memory tuple.
STRINGS = Kind("strings", _json_text, _json_value, list, None, kept=True)
#: A tuple of strings or None: JSON array text or NULL in a row, a JSON
#: array or null in a JSON object.
OPTIONAL_STRINGS = Kind(
    "optional strings", _optional_json_text, _optional_json_value, _optional_list, None, kept=True
)
#: A JSON object (metadata, claims): its text in a row, itself in a JSON object.
OBJECT = Kind("object", _object_text, _object_of_text, dict, None, kept=False)
#: A JSON object that is mostly empty: NULL (JSON null) when it is.
OPTIONAL_OBJECT = Kind(
    "optional object",
    _object_or_null,
    _object_or_empty,
    _json_object_or_null,
    _object_from_json,
    kept=False,
)

def _rate_limit_row(limit: TokenRateLimit | None) -> str | None:
    return None if limit is None else _json_text(limit.as_json())


def _rate_limit_of_row(text: str | None) -> TokenRateLimit | None:
    return None if text is None else token_rate_limit(_json_value(text))


def _rate_limit_json(limit: TokenRateLimit | None) -> dict[str, Any] | None:
    return None if limit is None else limit.as_json()


def _rate_limit_of_json(value: Mapping[str, Any] | None) -> TokenRateLimit | None:
    return None if value is None else token_rate_limit(value)


#: A client's token rate limit, or None: its JSON object's text in a row
#: (NULL for none), the object in a JSON object, itself in the memory tuple.
RATE_LIMIT = Kind(
    "token rate limit",
    _rate_limit_row,
    _rate_limit_of_row,
    _rate_limit_json,
    _rate_limit_of_json,
    kept=True,
)

_NO_VALUE = object()


@frozen
class Field:
    """
    One stored field.

    @ivar name: the model's attribute, the SQL column and the JSON member.
    @ivar missing: the value to read when a JSON object record lacks the
        member (written before the field existed); by default, it must be
        there.
    """

    name: str
    kind: Kind
    missing: Any = _NO_VALUE


class Codec(Generic[T]):
    """
    The stored form of one model class.

    @ivar model: the class.
    @ivar fields: its stored fields, in the order of the class' attributes;
        the first is the record's key (a client's id, a key's kid, a token's
        digest).
    @ivar names: the field names, in that order: the SQL columns.
    @ivar source: the generated Python source of the six functions.
    """

    def __init__(
        self, model: type[T], fields: Sequence[Field], *, ascii_json: bool = False
    ) -> None:
        """
        @param ascii_json: whether the JSON object record escapes non-ASCII
            characters (C{\\u00e9}); its JSON values in a row never do.
        """
        declared = [f.name for f in fields]
        attributes = [a.name for a in attrs.fields(model)]
        if declared != attributes:
            raise TypeError(
                f"the codec of {model.__name__} must list its fields in order: "
                f"{attributes}, not {declared}"
            )
        self.model = model
        self.fields = tuple(fields)
        self.names = tuple(declared)
        self.source = self._source()
        namespace: dict[str, Any] = {
            "_model": model,
            "_record_text": _json_encoder(ascii=ascii_json),
            "_json_value": _json_value,
        }
        for i, f in enumerate(self.fields):
            namespace.update(
                {
                    f"_to_row_{i}": f.kind.to_row,
                    f"_from_row_{i}": f.kind.from_row,
                    f"_to_json_{i}": f.kind.to_json,
                    f"_from_json_{i}": f.kind.from_json,
                    f"_missing_{i}": f.missing,
                }
            )
        exec(compile(self.source, f"<codec of {model.__name__}>", "exec"), namespace)
        self.to_row: Callable[[T], tuple[Primitive, ...]] = namespace["to_row"]
        self.from_row: Callable[[Sequence[Any]], T] = namespace["from_row"]
        self.to_json: Callable[[T], str] = namespace["to_json"]
        self.from_json: Callable[[str | bytes], T] = namespace["from_json"]
        self.to_tuple: Callable[[T], tuple[Any, ...]] = namespace["to_tuple"]
        self.from_tuple: Callable[[tuple[Any, ...]], T] = namespace["from_tuple"]

    def __repr__(self) -> str:
        return f"<Codec of {self.model.__name__}: {', '.join(self.names)}>"

    def position(self, name: str) -> int:
        """
        Where the field C{name} is in a row and in a tuple.
        """
        return self.names.index(name)

    def _source(self) -> str:
        def call(function: object, prefix: str, i: int, value: str) -> str:
            return value if function is None else f"{prefix}_{i}({value})"

        to_row, from_row, to_json, from_json, to_tuple, from_tuple = [], [], [], [], [], []
        for i, f in enumerate(self.fields):
            if not f.name.isidentifier():
                raise TypeError(f"not a field name: {f.name!r}")
            attribute = f"obj.{f.name}"
            to_row.append(call(f.kind.to_row, "_to_row", i, attribute) + ",")
            if f.kind.kept:
                to_tuple.append(attribute + ",")
                from_tuple.append(f"{f.name}=row[{i}]")
            else:
                to_tuple.append(to_row[-1])
                from_tuple.append(f"{f.name}=" + call(f.kind.from_row, "_from_row", i, f"row[{i}]"))
            from_row.append(f"{f.name}=" + call(f.kind.from_row, "_from_row", i, f"row[{i}]"))
            to_json.append(f"{f.name!r}: " + call(f.kind.to_json, "_to_json", i, attribute))
            member = (
                f"record[{f.name!r}]"
                if f.missing is _NO_VALUE
                else f"record.get({f.name!r}, _missing_{i})"
            )
            from_json.append(f"{f.name}=" + call(f.kind.from_json, "_from_json", i, member))
        lines = [
            "def to_row(obj):",
            f"    return ({' '.join(to_row)})",
            "def from_row(row):",
            f"    return _model({', '.join(from_row)})",
            "def to_tuple(obj):",
            f"    return ({' '.join(to_tuple)})",
            "def from_tuple(row):",
            f"    return _model({', '.join(from_tuple)})",
            "def to_json(obj):",
            f"    return _record_text({{{', '.join(to_json)}}})",
            "def from_json(text):",
            "    record = _json_value(text)",
            f"    return _model({', '.join(from_json)})",
        ]
        return "\n".join(lines) + "\n"


CLIENTS: Codec[Client] = Codec(
    Client,
    [
        Field("client_id", TEXT),
        Field("client_id_issued_at", INT),
        Field("metadata", OBJECT),
        Field("client_secret_digest", TEXT),
        Field("registration_access_token_digest", TEXT),
        # client_secret_jwt clients only (schema version 4)
        Field("encrypted_secret", OPTIONAL_TEXT, missing=None),
        # after a secret rotation, until its grace ends (schema version 8)
        Field("previous_secret_digest", OPTIONAL_TEXT, missing=None),
        Field("previous_secret_expires_at", OPTIONAL_INT, missing=None),
        # whether the registration named its method (schema version 9); a
        # client stored before is held to its method, as it was then
        Field("auth_method_named", BOOL, missing=True),
        # the operator's limit on its tokens (schema version 15)
        Field("token_rate_limit", RATE_LIMIT, missing=None),
    ],
)

TOKENS: Codec[TokenRecord] = Codec(
    TokenRecord,
    [
        Field("token_digest", TEXT),
        Field("client_id", TEXT),
        Field("scope", SCOPE),
        Field("audience", STRINGS),
        Field("issued_at", INT),
        Field("expires_at", INT),
        Field("jti", TEXT),
        Field("claims", OBJECT),
        # the DPoP key a token is bound to, RFC 9449 §6 (schema version 5)
        Field("jkt", OPTIONAL_TEXT, missing=None),
        # the TLS client certificate it is bound to, RFC 8705 §3 (version 6)
        Field("x5t_s256", OPTIONAL_TEXT, missing=None),
        # what a token exchange (RFC 8693) set: sub, act, may_act, the
        # tokens it dies with (version 11)
        Field("delegation", OPTIONAL_OBJECT, missing=None),
    ],
)

KEYS: Codec[StoredKey] = Codec(
    StoredKey,
    [
        Field("kid", TEXT),
        Field("alg", TEXT),
        Field("encrypted_private_key", TEXT),
        Field("created_at", INT),
        Field("active_from", INT),
        Field("retired_at", OPTIONAL_INT),
    ],
    # as the Redis store has always written a key
    ascii_json=True,
)

INITIAL_ACCESS_TOKENS: Codec[InitialAccessToken] = Codec(
    InitialAccessToken,
    [
        Field("token_id", TEXT),
        Field("token_digest", TEXT),
        Field("created_at", INT),
        Field("expires_at", INT),
        Field("max_uses", INT),
        Field("uses", INT),
        Field("note", TEXT),
        Field("scope_limit", OPTIONAL_STRINGS),
        Field("audience_limit", OPTIONAL_STRINGS),
        Field("auth_method_limit", OPTIONAL_STRINGS),
        Field("grant_type_limit", OPTIONAL_STRINGS),
        Field("revoked_at", OPTIONAL_INT),
    ],
)

#: Every stored model class' codec.
CODECS: Mapping[type, Codec[Any]] = {
    Client: CLIENTS,
    TokenRecord: TOKENS,
    StoredKey: KEYS,
    InitialAccessToken: INITIAL_ACCESS_TOKENS,
}
