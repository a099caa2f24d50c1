"""
JSON as ccserver accepts it from the outside (registration bodies, webhook
answers): UTF-8, no member named twice, no NaN or Infinity, at most
L{MAX_DEPTH} levels of nesting, and no string that is not Unicode text.

These are refused here, where the outside first reaches us, so that every
store sees the same strings: a lone surrogate (C{"\\ud800"} is valid JSON
escape syntax, but no character) is kept by the memory store and refused by
SQLite, Redis and PostgreSQL when they encode it as UTF-8; and a document
nested deep enough to reach Python's recursion limit would fail wherever it
is next walked (copied, encoded, compared), not where it came in.
"""

from __future__ import annotations

import json
import re
from typing import Any, NoReturn

#: The deepest nesting accepted: an object or array at the top is level 1.
#: Registration metadata needs 4 (a JWK set's C{x5c} array); claims from a
#: grant handler a few more.  Far below Python's recursion limit (1000),
#: so that nothing after parsing can meet it.
MAX_DEPTH = 32

# RFC 8259 §8.2: a string whose escapes name a lone surrogate is valid
# syntax with unpredictable results; RFC 7493 (I-JSON) §2.1 forbids it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for name, value in pairs:
        if name in document:
            raise ValueError(f"{name!r} appears more than once")
        document[name] = value
    return document


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _where(path: str) -> str:
    return path or "the document"


def _check_text(text: str, path: str, what: str = "holds") -> None:
    if not text.isascii() and _SURROGATE.search(text):
        raise ValueError(
            f"{_where(path)}: {what} a lone surrogate (an escape such as \\ud800 "
            "that names no character); strings must be Unicode text (RFC 7493 §2.1)"
        )


def _check(value: Any, path: str, depth: int) -> None:
    """
    Walk a parsed document: at most L{MAX_DEPTH} deep (so the walk's own
    recursion is bounded too), and every string and member name text.
    """
    if isinstance(value, str):
        _check_text(value, path)
        return
    if not isinstance(value, (dict, list)):
        return
    if depth >= MAX_DEPTH:
        raise ValueError(f"{_where(path)}: nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, dict):
        for name, member in value.items():
            _check_text(name, path, "has a member name with")
            inner = f"{path}.{name}" if path else name
            _check(member, inner, depth + 1)
    else:
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]", depth + 1)


def loads(data: bytes) -> Any:
    """
    Parse C{data} strictly.

    @raise ValueError: it is not strict JSON; the message says why, and
        names the member at fault (C{jwks.keys[0].kid}) where there is one.
    """
    try:
        document = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_no_constant,
        )
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8: {e.reason}") from None
    except RecursionError:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep") from None
    _check(document, "", 0)
    return document
