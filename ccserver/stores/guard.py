"""
What the network stores (SQL over adbapi, Redis) share: every operation
bounded in time, the ways a store can be unreachable turned into
L{StoreUnavailable}, and passwords kept out of URLs, messages and logs.
"""

from __future__ import annotations

from typing import TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ccserver.errors import StoreUnavailable

T = TypeVar("T")


#: The query parameters of a store URL that hold a password.
PASSWORD_PARAMETERS = ("password", "sentinel_password")


def mask_password(url: str) -> str:
    """
    C{url} with its passwords, if any, replaced by C{***}: in the netloc
    (C{scheme://user:password@host}) and in the query parameters of
    L{PASSWORD_PARAMETERS}.

    A store's C{url} attribute is this, so that it can be logged.
    """
    parts = urlsplit(url)
    masked = url
    if parts.password is not None:
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        masked = masked.replace(parts.netloc, f"{user}:***@{hostinfo}", 1)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(name in PASSWORD_PARAMETERS for name, _ in pairs):
            query = urlencode(
                [(name, "***" if name in PASSWORD_PARAMETERS else value) for name, value in pairs],
                safe="*",
            )
            masked = masked.replace("?" + parts.query, "?" + query, 1)
    return masked


def url_secrets(url: str) -> tuple[str, ...]:
    """
    The passwords in C{url}, as written and decoded, to scrub from messages.
    """
    parts = urlsplit(url)
    found: list[str] = []
    if parts.password:
        found += [parts.password, unquote(parts.password)]
    found += [
        value for name, value in parse_qsl(parts.query) if name in PASSWORD_PARAMETERS and value
    ]
    return tuple(sorted({s for s in found if s}, key=len, reverse=True))


@define
class OperationGuard:
    """
    Bounds a store operation in time and turns the ways a store can be
    unreachable into L{StoreUnavailable}, for the SQL and the Redis stores.

    It logs when the store becomes unavailable and when it is back, once
    each, not at every failed operation: a server down for a minute under
    load would otherwise flood the log.

    @ivar unavailable: the driver exceptions that mean "cannot be reached".
    @ivar secrets: strings (passwords) scrubbed from every message.
    """

    reactor: IReactorTime
    timeout: float
    url: str
    unavailable: tuple[type[BaseException], ...]
    # never in a repr: the guard is the log_source of what it logs
    secrets: tuple[str, ...] = field(default=(), repr=False)
    available: bool = field(default=True, init=False)

    _log = Logger()

    def __call__(self, d: Deferred[T], timeout: float | None = None) -> Deferred[T]:
        """
        C{d}, bounded to C{timeout} (by default the store's) seconds, with
        unavailability turned into L{StoreUnavailable}.
        """
        limit = self.timeout if timeout is None else timeout
        d.addTimeout(limit, self.reactor)
        d.addCallbacks(self._succeeded, self._failed, errbackArgs=(limit,))
        return d

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def _succeeded(self, result: T) -> T:
        self._answered()
        return result

    def _answered(self) -> None:
        if not self.available:
            self.available = True
            self._log.info("Store {url} is available again", url=self.url)

    def _failed(self, failure: Failure, limit: float) -> Failure:
        error = failure.value
        if isinstance(error, (TimeoutError, CancelledError)):
            reason = f"no answer within {limit:g} s"
        elif isinstance(error, StoreUnavailable):
            reason = str(error)
        elif isinstance(error, self.unavailable):
            reason = self.scrub(f"{type(error).__name__}: {error}".strip())
        else:
            # the store answered, with an error of its own (a taken client_id...)
            self._answered()
            return failure
        if self.available:
            self.available = False
            self._log.warn("Store {url} is unavailable: {reason}", url=self.url, reason=reason)
        raise StoreUnavailable(f"{self.url}: {reason}") from None
