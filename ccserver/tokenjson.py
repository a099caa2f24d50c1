"""
The bodies of the hot paths' answers as bytes: a successful token answer
(RFC 6749 §5.1), written without the general encoder, and an
introspection answer (RFC 7662 §2.2).

C{json.dumps} sets up an encoder and walks a dict on every call, a share of
a token's cost worth saving (bench/README.md, "Measurements behind design
choices"); the answer always has the same four members (a fifth after a
token exchange), so only its strings need encoding, each with the C
function C{json.dumps} itself uses.  The output is byte for byte C{json.dumps(token.as_json(),
separators=(",", ":"))} (tests/test_hot_path.py compares them).
"""

from __future__ import annotations

from collections.abc import Mapping
from json.encoder import JSONEncoder
from json.encoder import encode_basestring_ascii as _string
from types import MappingProxyType
from typing import Any

from ccserver.model import IssuedToken


def token_answer_json(token: IssuedToken) -> bytes:
    scope = " ".join(sorted(token.scope))
    # RFC 8693 §2.2.1: a token exchange's answer says what was issued
    end = (
        "}"
        if token.issued_token_type is None
        else f',"issued_token_type":{_string(token.issued_token_type)}}}'
    )
    return (
        f'{{"access_token":{_string(token.access_token)},"token_type":{_string(token.token_type)},'
        f'"expires_in":{int(token.expires_in)},"scope":{_string(scope)}{end}'
    ).encode("ascii")


# One encoder, made once: json.dumps with arguments makes one per call.
_encode = JSONEncoder(separators=(",", ":")).encode
#: RFC 7662 §2.2: what every token that is not active gets, and nothing more.
INACTIVE_JSON = b'{"active":false}'


def introspection_json(answer: Mapping[str, Any]) -> bytes:
    """
    An introspection answer (RFC 7662 §2.2) as bytes, byte for byte
    C{json.dumps(answer, separators=(",", ":"))}: the inactive one (the
    most frequent answer to a scan or a stale token) made once.
    """
    if len(answer) == 1 and answer.get("active") is False:
        return INACTIVE_JSON
    # the encoder takes a dict, not a read-only view of one
    return _encode(answer if type(answer) is dict else dict(answer)).encode("ascii")


#: The most introspection answers whose JSON is kept (L{RenderedAnswers}).
RENDERED_ANSWERS = 1024


class RenderedAnswers:
    """
    The JSON of the read-only introspection answers written last, by the
    answer itself, at most C{size} of them (the oldest go first).

    Introspection gives the same read-only answer for an opaque token for
    as long as the store gives the same record of it
    (L{ccserver.oauth.introspection.RememberedAnswers}), and a resource
    server asks about the same token on every call it serves: its JSON is
    made once.  Only a read-only answer (a C{MappingProxyType}, which
    nothing can change) is kept, and with it the answer itself, so that
    the identity it is found by is never another's.
    """

    def __init__(self, size: int = RENDERED_ANSWERS) -> None:
        self._size = size
        self._rendered: dict[int, tuple[Mapping[str, Any], bytes]] = {}

    def __len__(self) -> int:
        return len(self._rendered)

    def json(self, answer: Mapping[str, Any]) -> bytes:
        """
        L{introspection_json} of C{answer}, made once for a read-only one.
        """
        found = self._rendered.get(id(answer))
        if found is not None and found[0] is answer:
            return found[1]
        body = introspection_json(answer)
        if type(answer) is MappingProxyType and self._size > 0:
            rendered = self._rendered
            rendered[id(answer)] = (answer, body)
            while len(rendered) > self._size:
                del rendered[next(iter(rendered))]
        return body
