"""
Strings from the outside, held to one notion of printable: what may become
part of a store key (L{identifier_problem}), and how text is escaped before
it reaches an operator's terminal or a log line (L{escape}).

Printable is Python's C{str.isprintable}: no control character (C0, DEL,
C1), no format character (the bidi controls U+061C, U+200E, U+200F,
U+202A-U+202E, U+2066-U+2069, zero-width ones, soft hyphen), no lone
surrogate, no line or paragraph separator, no private-use or unassigned
code point, and no space but U+0020.

Both rules are here, once, because the two failures they prevent come from
the same characters: a NUL that PostgreSQL refuses in a string (a 500 with
a critical traceback, where the client should have had a 400), a lone
surrogate that SQLite, Redis and PostgreSQL cannot encode as UTF-8, and an
ESC, C1 CSI (U+009B), carriage return or right-to-left override that
rewrites what an operator's terminal shows.
"""

from __future__ import annotations

import re

#: The longest identifier accepted as part of a store key (a client id, an
#: assertion's C{jti}, a C{kid}): server-made client ids take 22
#: characters, a UUID 36, a key ARN or URL well under this.
MAX_IDENTIFIER = 256

_ASCII_PRINTABLE = re.compile(r"[\x20-\x7e]*")


def is_printable(text: str) -> bool:
    """
    Whether every character of C{text} prints (see the module docstring).
    """
    # Identifiers are ASCII nearly always; the regular expression is the
    # faster test for them, str.isprintable the one rule for the rest.
    if text.isascii():
        return _ASCII_PRINTABLE.fullmatch(text) is not None
    return text.isprintable()


def identifier_problem(value: object, max_length: int = MAX_IDENTIFIER) -> str | None:
    """
    None when C{value} may become part of a store key: a string of 1 to
    C{max_length} printable characters.  Otherwise what is wrong, for an
    error description that begins with the value's name
    (C{f"client_id {problem}"}); the description never repeats the value.

    The one rule for every string from a request that a store is asked
    about or keeps: client ids (form, Basic credentials, an assertion's
    C{sub}, the client configuration URL), C{jti}s of assertions and DPoP
    proofs, an assertion's C{kid}, token values to introspect or revoke.
    Each caller raises the error its endpoint answers with
    (C{invalid_request}, C{invalid_client}, C{invalid_dpop_proof}).
    """
    if not isinstance(value, str):
        return "must be a string"
    if not value:
        return "must not be empty"
    if len(value) > max_length:
        return f"must be at most {max_length} characters"
    if not is_printable(value):
        return (
            "must be printable characters only (no control or format character, "
            "no lone surrogate)"
        )
    return None


def _escaped(match: re.Match[str]) -> str:
    character = match.group()
    code = ord(character)
    if code > 0xFFFF:
        # as a UTF-16 surrogate pair, as JSON spells it
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def _not_printable(match: re.Match[str]) -> str:
    character = match.group()
    return character if character.isprintable() else _escaped(match)


# Every character that may not print: all but printable ASCII.  Each match
# is then asked str.isprintable, so that "é" or "名" stays as it is.
_MAYBE_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def escape(text: str) -> str:
    """
    C{text} with every character that does not print (see the module
    docstring) written as C{\\uXXXX} (a character beyond U+FFFF as its
    UTF-16 surrogate pair): ESC is C{\\u001b}, a new line C{\\u000a},
    U+202E C{\\u202e}.  Printable text, non-ASCII letters included, is left
    as it is.

    The one escaping of text someone else chose (a client's name or URIs, a
    header) before it reaches an operator's terminal (every output of the
    C{ccserver} command) or a log line.  The escapes are JSON's, so that
    each line of a JSON document, escaped, still says what it said (JSON
    holds a new line only between values, never inside a string).
    """
    if text.isascii() and _ASCII_PRINTABLE.fullmatch(text):
        return text
    return _MAYBE_UNPRINTABLE.sub(_not_printable, text)
