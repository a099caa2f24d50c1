"""
The HTTP floor: a server that answers the token and introspection requests
of the benchmark through ccserver's own HTTP layer (its site, channel and
requests: C{CCServerSite}, C{CCServerChannel}, C{BoundedRequest}, the one
write of C{write_answer}) and twisted.web, with no OAuth work at all: no
client authentication, no lookup, no access log.  Each answer is a
constant of the size of ccserver's own.

What it costs a request per CPU-second, measured beside ccserver in the
same alternation, is where ccserver's floor is on twisted.web: the part of
each request that no change to ccserver's own work can take away
(bench/README.md, "The floor, measured").

  python3 -m bench.floor --port 8080
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ccserver.web import CCServerSite, write_answer

#: An opaque token of ccserver's length, and the answers ccserver gives
#: for it (the introspection's claims as ccserver's, of the same lengths).
TOKEN = "A" * 51
TOKEN_ANSWER = json.dumps(
    {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600, "scope": "read"},
    separators=(",", ":"),
).encode()
INTROSPECTION_ANSWER = json.dumps(
    {
        "iss": "http://127.0.0.1:65535",
        "sub": "c" * 22,
        "client_id": "c" * 22,
        "aud": "http://127.0.0.1:65535",
        "iat": 1796429556,
        "exp": 1796433156,
        "jti": "j" * 22,
        "scope": "read",
        "active": True,
        "token_type": "Bearer",
    },
    separators=(",", ":"),
).encode()
DISCOVERY = b'{"issuer":"http://127.0.0.1"}'


class Constant(Resource):
    """
    One path's constant JSON answer, to the method it is for, with the
    headers ccserver's token and introspection answers carry.
    """

    isLeaf = True

    def __init__(self, method: bytes, body: bytes) -> None:
        super().__init__()
        self._method = method
        self._body = body

    def render(self, request: IRequest) -> int:
        if request.method != self._method:
            request.setResponseCode(405)
            write_answer(b'{"error":"invalid_request"}', request)
            return NOT_DONE_YET
        request.content.read()
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Pragma", b"no-cache")
        request.setHeader(b"Content-Type", b"application/json")
        write_answer(self._body, request)
        return NOT_DONE_YET


def floor_resource() -> Resource:
    """
    The floor's paths: C{/token}, C{/token/introspect}, and the discovery
    document the benchmark waits for at start.
    """
    root = Resource()
    token = Constant(b"POST", TOKEN_ANSWER)
    # /token answers, and has a child
    token.isLeaf = False
    token.putChild(b"introspect", Constant(b"POST", INTROSPECTION_ANSWER))
    root.putChild(b"token", token)
    well_known = Resource()
    well_known.putChild(b"openid-configuration", Constant(b"GET", DISCOVERY))
    root.putChild(b".well-known", well_known)
    return root


def main(argv: list[str] | None = None, reactor: Any = None) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m bench.floor", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    site = CCServerSite(floor_resource(), reactor=reactor)
    reactor.listenTCP(args.port, site, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
