"""
JWK sets from elsewhere: fetched from a URL someone gave (a client's
C{jwks_uri}; a trusted issuer's C{jwks_uri}, found by OpenID discovery or
configured, or a SPIFFE trust domain's bundle endpoint), cached, and
fetched again when a key is asked for that the cached set lacks; or read
from a file, again whenever it changes (L{KeySetFile}).

A L{KeySetSource} fetches through an HTTP client made by
L{ccserver.outbound} under the L{AddressPolicy} its owner chose, and:

  - checks each URL against that policy before anything is sent, and each
    address it resolves to when connecting;
  - never follows a redirect; bounds the fetch in time (C{timeout}) and
    size (L{MAX_KEY_SET_BYTES}), and the set in keys (C{max_keys});
  - shares one fetch among every request for the same URL;
  - keeps a set for its answer's C{Cache-Control: max-age} (or, without
    one, a SPIFFE bundle's C{spiffe_refresh_hint}), held between a minimum
    and a maximum;
  - keeps a failure as long as the minimum too, and delivers it no sooner
    than C{timeout} after the fetch began, whatever the cause: a refused
    address, a closed port and a silent one all answer alike, so that the
    time taken says nothing of what is behind the URL, and a burst of
    requests makes one fetch, not one each;
  - fetches a set again before it expires only for a caller who asks for a
    key the cached set lacks (key rotation), at most once per
    C{refetch_interval} for each caller.

The same machinery fetches an issuer's OpenID configuration (OpenID
Connect Discovery 1.0 §4) for its C{jwks_uri}
(L{KeySetSource.discovered_jwks_uri}).  What a trusted issuer's keys are,
wherever they come from, is one L{TrustedKeys}.

Keys are read with L{ccserver.jose.import_jwk_set}; verification stays in
L{ccserver.jose}.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any, Protocol

from attrs import frozen
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from ccserver import jose, strictjson
from ccserver.outbound import (
    USER_AGENT,
    AddressPolicy,
    RefusedURL,
    describe_failure,
    read_body,
    was_cancelled,
)
from ccserver.text import escape

#: The largest JWK set (or OpenID configuration) read, in bytes.
MAX_KEY_SET_BYTES = 64 * 1024
#: OpenID Connect Discovery 1.0 §4: where an issuer's configuration is.
DISCOVERY_PATH = "/.well-known/openid-configuration"
#: How many URLs (and callers' refetch times) are remembered, at most.
MAX_ENTRIES = 10_000
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)


class KeySetUnavailable(Exception):
    """
    A key set could not be fetched, or was not a JWK set.  The message is
    for the operator's log; whoever asked is told only that.
    """


@frozen
class KeySet:
    """
    A JWK set's usable keys (L{jose.import_jwk}), in its order.
    """

    keys: tuple[jose.JWK, ...]

    @property
    def certificates(self) -> tuple[bytes, ...]:
        """
        The DER certificates its keys carry (the first of each C{x5c}).
        """
        return tuple(key.certificate for key in self.keys if key.certificate is not None)


class HTTPGetter(Protocol):
    """
    What a source needs of an HTTP client: treq's C{get} (a
    L{treq.client.HTTPClient} from L{ccserver.outbound.http_client}, or a
    L{treq.testing.StubTreq} in tests).
    """

    def get(
        self,
        url: str,
        /,
        *,
        headers: Headers,
        allow_redirects: bool,
        unbuffered: bool,
        reactor: Any,
    ) -> Deferred[Any]: ...


def cache_seconds(cache_control: str | None, default: int, low: int, high: int) -> int:
    """
    How long to keep a fetched set: the answer's C{Cache-Control}
    C{max-age} (RFC 9111 §5.2.2.1), or C{default} without one, held between
    C{low} and C{high}.  C{no-store} or C{no-cache} mean as short as allowed:
    refetching on every request would let the URL's server set our pace.
    """
    seconds = default
    if cache_control:
        lowered = cache_control.lower()
        match = _MAX_AGE.search(lowered)
        if "no-store" in lowered or "no-cache" in lowered:
            seconds = low
        elif match:
            seconds = int(match.group(1))
    return max(low, min(high, seconds))


def refresh_hint(document: object) -> int | None:
    """
    A SPIFFE bundle's C{spiffe_refresh_hint} (SPIFFE Trust Domain and
    Bundle §4.1.2: seconds between checks for a new bundle), or None.
    """
    hint = document.get("spiffe_refresh_hint") if isinstance(document, dict) else None
    if isinstance(hint, int) and not isinstance(hint, bool) and hint > 0:
        return hint
    return None


def read_key_set(document: object, max_keys: int) -> KeySet:
    """
    A JWK set (or SPIFFE bundle, a JWK set with members of its own) read.

    @raise ValueError: it is not one, or holds more than C{max_keys} keys.
    """
    return KeySet(jose.import_jwk_set(document, max_keys))


def read_discovery(document: object, issuer: str) -> str:
    """
    The C{jwks_uri} of an issuer's OpenID configuration, which must name
    that issuer (OpenID Connect Discovery 1.0 §4.3: "the issuer value
    returned MUST be identical to the Issuer URL that was used as the
    prefix to /.well-known/openid-configuration").

    @raise ValueError: it does not.
    """
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    if document.get("issuer") != issuer:
        raise ValueError("its issuer is not the one it was fetched for")
    uri = document.get("jwks_uri")
    if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
        raise ValueError("it has no http(s) jwks_uri")
    return uri


#: Reads a fetched JSON document: the value to cache (or ValueError), and
#: the document's own hint of how long to keep it.
Reader = Callable[[object], "tuple[Any, int | None]"]


@frozen
class _Entry:
    result: Any
    expires_at: float


def _remember(entries: dict[str, Any], key: str, value: Any, now: float) -> None:
    """
    Put C{value} in C{entries} (at most L{MAX_ENTRIES}): when full, the
    expired go first, then the oldest.
    """
    entries.pop(key, None)
    if len(entries) >= MAX_ENTRIES:
        for old in [k for k, v in entries.items() if _expiry(v) <= now]:
            del entries[old]
        while len(entries) >= MAX_ENTRIES:
            del entries[next(iter(entries))]
    entries[key] = value


def _expiry(value: Any) -> float:
    return value.expires_at if isinstance(value, _Entry) else float(value)


class KeySetSource:
    """
    Fetches and caches JWK sets; see the module docstring.
    """

    _log = Logger()

    def __init__(
        self,
        http: HTTPGetter,
        clock: IReactorTime,
        *,
        policy: AddressPolicy,
        timeout: float,
        default_cache: int,
        min_cache: int,
        max_cache: int,
        refetch_interval: float,
        max_keys: int,
        close: Callable[[], Deferred[None] | None] | None = None,
    ) -> None:
        """
        @param http: the HTTP client (over the connection pool that
            C{close} releases), made with the same C{policy}.
        @param policy: where the URLs may point; checked before a fetch
            (the client checks each address as it connects).
        @param timeout: seconds a fetch may take; a failed one answers
            after that long.
        @param min_cache: the least time a set, or a failure, is kept.
        @param max_keys: a set with more keys is refused whole.
        """
        self._http = http
        self._clock = clock
        self._policy = policy
        self._timeout = timeout
        self._default_cache = default_cache
        self._min_cache = min_cache
        self._max_cache = max_cache
        self._refetch_interval = refetch_interval
        self._max_keys = max_keys
        self._close = close
        self._entries: dict[str, _Entry] = {}
        self._in_flight: dict[str, list[Deferred[Any]]] = {}
        #: caller -> until when a key it lacks makes no refetch
        self._refetched: dict[str, float] = {}

    async def key_set(self, uri: str, *, refetch_for: str | None = None) -> KeySet:
        """
        The JWK set at C{uri}, from the cache while it is fresh.

        @param refetch_for: who asks, when they asked for a key the cached
            set lacks: fetch again, unless they did so less than
            C{refetch_interval} seconds ago.  A cached failure is not
            fetched again before it expires.
        @raise KeySetUnavailable: it could not be fetched (now, or within
            the time a failure is kept).
        """
        key_set: KeySet = await self._get(uri, self._read_key_set, refetch_for, "JWK set")
        return key_set

    async def discovered_jwks_uri(self, issuer: str) -> str:
        """
        The C{jwks_uri} of C{issuer}'s OpenID configuration (at C{issuer},
        less a trailing C{/}, + L{DISCOVERY_PATH}), fetched and cached as a
        key set is.

        @raise KeySetUnavailable: it could not be fetched, or does not name
            the issuer and a C{jwks_uri}.
        """

        def read(document: object) -> tuple[str, int | None]:
            return read_discovery(document, issuer), None

        # §4: a terminating / of the issuer is removed before the path is
        # appended; the configuration's issuer must still be the issuer itself
        location = issuer.rstrip("/") + DISCOVERY_PATH
        uri: str = await self._get(location, read, None, "OpenID configuration")
        return uri

    def _read_key_set(self, document: object) -> tuple[KeySet, int | None]:
        return read_key_set(document, self._max_keys), refresh_hint(document)

    async def _get(self, uri: str, read: Reader, refetch_for: str | None, what: str) -> Any:
        now = self._clock.seconds()
        entry = self._entries.get(uri)
        if entry is not None and entry.expires_at > now:
            if isinstance(entry.result, KeySetUnavailable):
                raise entry.result
            if refetch_for is None or not self._may_refetch(refetch_for, now):
                return entry.result
        try:
            return await self._shared_fetch(uri, read, what)
        except KeySetUnavailable:
            fresh = self._fresh(uri)
            if fresh is None:
                raise
            # a refetch that failed leaves the fresh set as it was
            return fresh

    def _fresh(self, uri: str) -> Any:
        entry = self._entries.get(uri)
        if entry is None or entry.expires_at <= self._clock.seconds():
            return None
        return None if isinstance(entry.result, KeySetUnavailable) else entry.result

    def _may_refetch(self, caller: str, now: float) -> bool:
        until = self._refetched.get(caller)
        if until is not None and now < until:
            return False
        _remember(self._refetched, caller, now + self._refetch_interval, now)
        return True

    def _shared_fetch(self, uri: str, read: Reader, what: str) -> Deferred[Any]:
        waiter: Deferred[Any] = Deferred()
        waiters = self._in_flight.get(uri)
        if waiters is not None:
            waiters.append(waiter)
            return waiter
        self._in_flight[uri] = [waiter]
        began = self._clock.seconds()

        def done(result: object) -> None:
            now = self._clock.seconds()
            if not isinstance(result, KeySetUnavailable):
                # _fetch has cached it, for as long as the answer said
                deliver(result)
                return
            if self._fresh(uri) is None:
                _remember(self._entries, uri, _Entry(result, now + self._min_cache), now)
            # Every failure answers when the timeout would have: a closed
            # port like a silent one.
            later = deferLater(self._clock, max(0.0, began + self._timeout - now), lambda: None)
            later.addCallback(lambda _: deliver(result))

        def deliver(result: object) -> None:
            for each in self._in_flight.pop(uri, []):
                if isinstance(result, KeySetUnavailable):
                    each.errback(result)
                else:
                    each.callback(result)

        fetch = Deferred.fromCoroutine(self._fetch(uri, read, what))
        fetch.addTimeout(self._timeout, self._clock)
        fetch.addErrback(self._unavailable, uri, what)
        fetch.addCallback(done)
        return waiter

    async def _fetch(self, uri: str, read: Reader, what: str) -> Any:
        self._policy.check_url(uri)
        response: IResponse = await self._http.get(
            uri,
            headers=Headers(
                {
                    b"Accept": [b"application/jwk-set+json, application/json"],
                    b"User-Agent": [USER_AGENT.encode("ascii")],
                }
            ),
            allow_redirects=False,
            unbuffered=True,
            # treq would otherwise import the global reactor
            reactor=self._clock,
        )
        body = await read_body(response, MAX_KEY_SET_BYTES)
        if response.code != 200:
            raise KeySetUnavailable(f"it answered {response.code}")
        try:
            value, hint = read(strictjson.loads(body))
        except ValueError as e:
            raise KeySetUnavailable(f"the answer is not a usable {what}: {e}") from None
        control = response.headers.getRawHeaders(b"cache-control")
        seconds = cache_seconds(
            b", ".join(control).decode("latin-1") if control else None,
            self._default_cache if hint is None else hint,
            self._min_cache,
            self._max_cache,
        )
        now = self._clock.seconds()
        _remember(self._entries, uri, _Entry(value, now + seconds), now)
        return value

    def _unavailable(self, failure: Failure, uri: str, what: str) -> KeySetUnavailable:
        reason: str | None
        if failure.check(KeySetUnavailable):
            reason = failure.getErrorMessage()
        elif failure.check(TimeoutError, CancelledError) or was_cancelled(failure.value):
            reason = f"no answer within {self._timeout:g}s"
        elif failure.check(RefusedURL):
            reason = f"refused: {failure.getErrorMessage()}"
        else:
            reason = describe_failure(failure)
            if reason is None:
                self._log.failure(
                    "Unexpected error fetching the {what} at {uri}",
                    failure,
                    uri=escape(uri),
                    what=what,
                )
                reason = "an unexpected error (logged above)"
        self._log.warn(
            "Could not fetch the {what} at {uri}, so whoever authenticates with the keys "
            "or certificates it leads to fails: {reason}",
            # a client's text, and what its server answered: escaped
            uri=escape(uri),
            what=what,
            reason=escape(reason),
        )
        return KeySetUnavailable(reason)

    def close(self) -> Deferred[None]:
        """
        Release the HTTP connection pool (at shutdown).
        """
        closed = self._close() if self._close is not None else None
        return closed if closed is not None else succeed(None)



def read_key_set_file(path: str, max_keys: int) -> KeySet:
    """
    The JWK set (or SPIFFE bundle) in the file at C{path}, read now.

    @raise OSError: it cannot be read.
    @raise ValueError: it is larger than L{MAX_KEY_SET_BYTES}, not JSON,
        or not a JWK set of at most C{max_keys} keys.
    """
    with open(path, "rb") as f:
        data = f.read(MAX_KEY_SET_BYTES + 1)
    if len(data) > MAX_KEY_SET_BYTES:
        raise ValueError(f"larger than {MAX_KEY_SET_BYTES} bytes")
    return read_key_set(strictjson.loads(data), max_keys)


class KeySetFile:
    """
    A JWK set in a file the operator keeps (C{kubectl get --raw
    /openid/v1/jwks} saved; a SPIFFE bundle), read again whenever the file
    changes: each use looks at the file's modification time, size and
    inode (one C{stat}, no read), so a file replaced by a new one (a
    ConfigMap's update, C{mv}) is seen at the next use.

    A file that cannot be read, or no longer holds a JWK set, leaves the
    last set read in use, and is logged once for each change; one never
    read is L{KeySetUnavailable}.
    """

    _log = Logger()

    def __init__(self, path: str, max_keys: int) -> None:
        self.path = path
        self._max_keys = max_keys
        self._seen: tuple[int, int, int, int] | None = None
        self._key_set: KeySet | None = None

    def key_set(self) -> KeySet:
        """
        @raise KeySetUnavailable: the file was never read as a JWK set.
        """
        try:
            status = os.stat(self.path)
            seen = (status.st_mtime_ns, status.st_size, status.st_ino, status.st_dev)
        except OSError as e:
            self._failed((0, 0, 0, 0), e.strerror or str(e))
        else:
            if seen != self._seen:
                try:
                    key_set = read_key_set_file(self.path, self._max_keys)
                except OSError as e:
                    self._failed(seen, e.strerror or str(e))
                except ValueError as e:
                    self._failed(seen, str(e))
                else:
                    self._seen, self._key_set = seen, key_set
        if self._key_set is None:
            raise KeySetUnavailable(f"{self.path} holds no JWK set")
        return self._key_set

    def _failed(self, seen: tuple[int, int, int, int], reason: str) -> None:
        if seen == self._seen:
            return
        self._seen = seen
        self._log.warn(
            "Could not read the JWK set in {path} ({reason}); "
            + ("the keys read before stay in use" if self._key_set else "its issuer's tokens fail"),
            path=self.path,
            reason=reason,
        )


class TrustedKeys(Protocol):
    """
    Where a trusted issuer's keys come from.
    """

    async def key_set(self, *, refetch: bool = False) -> KeySet:
        """
        The issuer's keys; with C{refetch}, fetched again if allowed (a
        token named a key the set lacks: the issuer may have rotated).

        @raise KeySetUnavailable: there are none to be had.
        """


@frozen
class FetchedKeys:
    """
    The keys at a configured C{jwks_uri} (or SPIFFE bundle endpoint),
    refetched at most once per interval for their issuer.
    """

    source: KeySetSource
    uri: str
    issuer: str

    async def key_set(self, *, refetch: bool = False) -> KeySet:
        return await self.source.key_set(self.uri, refetch_for=self.issuer if refetch else None)


@frozen
class DiscoveredKeys:
    """
    The keys at the C{jwks_uri} of an issuer's OpenID configuration.
    """

    source: KeySetSource
    issuer: str

    async def key_set(self, *, refetch: bool = False) -> KeySet:
        uri = await self.source.discovered_jwks_uri(self.issuer)
        return await self.source.key_set(uri, refetch_for=self.issuer if refetch else None)


@frozen
class FileKeys:
    """
    The keys in a file (L{KeySetFile}): always as the file is now.
    """

    file: KeySetFile

    async def key_set(self, *, refetch: bool = False) -> KeySet:
        return self.file.key_set()
