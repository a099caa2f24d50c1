"""
Strict JSON, the one parser of what comes from outside: registration
bodies (tested over HTTP on every store in test_bad_input) and grant
handler answers, here.
"""

from __future__ import annotations

import pytest

from ccserver import strictjson
from ccserver.handlers.webhook import MalformedAnswer, load_answer


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_nesting_up_to_the_limit() -> None:
    assert strictjson.loads(deep(strictjson.MAX_DEPTH)) is not None


@pytest.mark.parametrize("depth", [strictjson.MAX_DEPTH + 1, 955, 5000])
def test_nesting_beyond_the_limit(depth: int) -> None:
    with pytest.raises(ValueError, match=f"nested more than {strictjson.MAX_DEPTH} levels"):
        strictjson.loads(deep(depth))


def test_nesting_names_the_member() -> None:
    document = b'{"claims": {"a": ' + deep(strictjson.MAX_DEPTH) + b"}}"
    with pytest.raises(ValueError, match=r"^claims\.a(\[0\])+: nested more than"):
        strictjson.loads(document)


@pytest.mark.parametrize(
    ("document", "where"),
    [
        (b'"\\ud800"', "the document: holds"),
        (b'{"scope": "a\\udc00b"}', "scope: holds"),
        (b'{"claims": {"roles": ["x", "\\udfff"]}}', r"claims\.roles\[1\]: holds"),
        (b'{"claims": {"\\ud800": 1}}', "claims: has a member name with"),
    ],
)
def test_lone_surrogate(document: bytes, where: str) -> None:
    with pytest.raises(ValueError, match=f"^{where} a lone surrogate"):
        strictjson.loads(document)


def test_surrogate_pair_is_a_character() -> None:
    assert strictjson.loads(b'{"name": "\\ud83d\\ude00"}') == {"name": "\U0001f600"}


@pytest.mark.parametrize(
    "answer", [b'{"scope": "\\ud800"}', b'{"claims": ' + deep(strictjson.MAX_DEPTH) + b"}"]
)
def test_webhook_answers_are_strict_too(answer: bytes) -> None:
    with pytest.raises(MalformedAnswer):
        load_answer(answer)
