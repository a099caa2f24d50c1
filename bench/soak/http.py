"""
The soak's HTTP client: treq over a pool of one kept-alive connection to
the server, a request at a time, each with a deadline.  At the soak's few
dozen requests a second it costs a few hundredths of a core (the "soak"
column of its lines).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import treq
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectingCancelledError
from twisted.web.client import HTTPConnectionPool, ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers

#: What a request cancelled by its deadline fails with, or with inside.
CANCELLED = (CancelledError, ConnectingCancelledError)


class RequestTimeout(Exception):
    """
    No whole answer came within the timeout.
    """


class ProtocolError(Exception):
    """
    The connection failed in the middle of an answer, or before one.
    """


@dataclass
class Answer:
    status: int
    body: bytes


class Client:
    """
    Requests to C{base} (C{http://host:port}), one at a time over one
    kept-alive connection (made again if the server closes it), each
    given C{timeout} seconds for its answer.

    @param persistent: False for a client that sends less often than the
        server's idle timeout (60 s): a connection kept that long may be
        closed by the server just as the next request goes out, and a POST
        is not sent again (no automatic retry here, so that nothing the
        server does is hidden).  Each request then has a new connection.
    """

    def __init__(self, reactor: Any, base: str, timeout: float, persistent: bool = True) -> None:
        self._reactor = reactor
        self._base = base
        self._timeout = timeout
        self._pool = HTTPConnectionPool(reactor, persistent=persistent)
        self._pool.maxPersistentPerHost = 1
        self._pool.retryAutomatically = False

    async def request(self, method: str, path: str, headers: Mapping[str, str], body: bytes | None) -> Answer:
        """
        @raise RequestTimeout: no whole answer within the timeout.
        @raise ProtocolError: the connection failed around the answer.
        @raise twisted.internet.error.ConnectError: and the like, from the
            connection.
        """
        try:
            response = await treq.request(
                method, self._base + path, headers=Headers({k: [v] for k, v in headers.items()}), data=body,
                pool=self._pool, reactor=self._reactor, timeout=self._timeout,
            )
            content = await treq.content(response)
        except CANCELLED:
            raise RequestTimeout() from None
        except (ResponseFailed, ResponseNeverReceived) as e:
            if any(reason.check(*CANCELLED) for reason in e.reasons):
                raise RequestTimeout() from None
            reasons = ", ".join(reason.getErrorMessage() for reason in e.reasons)
            raise ProtocolError(f"{type(e).__name__}: {reasons}"[:200]) from None
        return Answer(response.code, content)

    async def close(self) -> None:
        await self._pool.closeCachedConnections()
