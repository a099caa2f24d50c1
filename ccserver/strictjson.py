"""
JSON as ccserver accepts it from the outside (registration bodies, webhook
answers): UTF-8, no member named twice, no NaN or Infinity, and a nesting
deep enough to exhaust the parser is an error like any other.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for name, value in pairs:
        if name in document:
            raise ValueError(f"{name!r} appears more than once")
        document[name] = value
    return document


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def loads(data: bytes) -> Any:
    """
    Parse C{data} strictly.

    @raise ValueError: it is not strict JSON; the message says why.
    """
    try:
        return json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_no_constant,
        )
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8: {e.reason}") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
