"""
The HTTP surface: routes that parse a request once, call one function of
L{ccserver.oauth}, and write its answer.  C{/token}, the hot path, is a plain
twisted.web resource (L{TokenResource}); every other route is a Klein route
of L{CCServerApp}.  Every error is rendered here, in L{render_failure}, and
nowhere else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine, Mapping, Sequence
from functools import lru_cache
from io import BytesIO
from time import perf_counter
from typing import Any, cast
from urllib.parse import parse_qsl, unquote_to_bytes

from attrs import Factory, define, field
from klein import Klein
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http import datetimeToLogString, datetimeToString
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException, NotFound

from ccserver import strictjson
from ccserver.accesslog import AccessLog, access_line
from ccserver.coroutines import settle
from ccserver.errors import (
    OAuthError,
    StoreUnavailable,
    answered_with,
    invalid_client_metadata,
    invalid_request,
    temporarily_unavailable,
)
from ccserver.health import Readiness
from ccserver.httpchannel import CCServerChannel, HTTPLimits
from ccserver.keys import Keyring
from ccserver.metrics import NO_METRICS, OTHER_ROUTE, NoMetrics
from ccserver.model import IssuedToken, TokenRequest
from ccserver.oauth.clientauth import split_authorization
from ccserver.oauth.grants import TokenGrants
from ccserver.oauth.introspection import TokenIntrospection
from ccserver.oauth.mtls import PresentedCertificate
from ccserver.oauth.registration import (
    ClientRegistry,
    client_information,
    registration_response,
)
from ccserver.proxies import Address, Network, hop_address, is_trusted
from ccserver.text import escape
from ccserver.tls import ClientCertificateReader
from ccserver.tokenjson import RenderedAnswers, token_answer_json
from ccserver.tracing import Tracing

#: The largest request body accepted, in bytes; larger ones get 413.
MAX_BODY = 64 * 1024

#: twisted.web's statuses without a body, read once (an attribute of
#: twisted.web.http costs a lookup through its deprecation proxy).
_NO_BODY_CODES = http.NO_BODY_CODES

_FORM = b"application/x-www-form-urlencoded"
_JSON = b"application/json"


@lru_cache(maxsize=2)
def http_date(second: int) -> bytes:
    """
    The C{Date} header's text (RFC 9110 §5.6.7) of a second: made once for
    all the requests of that second.
    """
    text: bytes = datetimeToString(second)
    return text


class BoundedRequest(server.Request):
    """
    A request that keeps at most L{MAX_BODY} bytes of its body in memory,
    and leaves form parsing to the routes (so that a malformed multipart
    body gets an OAuth error, not a dropped connection).
    """

    body_too_large = False
    #: Called once when the request is done: finished, or its connection
    #: lost first (the site's count of requests in flight; a hook, where
    #: C{notifyFinish} would cost a Deferred and its callbacks a request).
    on_done: Callable[[BoundedRequest], None] | None = None
    #: When the site began to answer it (C{perf_counter}).
    started = 0.0

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(channel, *args, **kwargs)

    def process(self) -> None:
        """
        L{server.Request.process}, less two of its costs for every request:
        the C{Date} header's text is made once a second (L{http_date}), not
        for each request, and no C{Server} header is set (the channel would
        only remove it: L{ccserver.httpchannel}).  No resource of this site
        encodes its answers (twisted.web's C{EncodingResourceWrapper}), so
        none is asked for an encoder.  C{OPTIONS *} is twisted.web's own.
        """
        if self.path == b"*":
            super().process()
            return
        self.site = site = cast(CCServerChannel, self.channel).site
        self.setHeader(b"Date", http_date(int(site.reactor.seconds())))
        self.prepath = []
        self.postpath = [unquote_to_bytes(part) for part in self.path[1:].split(b"/")]
        try:
            self.render(site.getResourceFor(self))
        except BaseException:
            self.processingFailed(Failure())

    content: BytesIO

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()
        self._received = 0
        if length is not None and length > MAX_BODY:
            self.body_too_large = True

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > MAX_BODY:
            self.body_too_large = True
        if not self.body_too_large:
            self.content.write(data)

    def finish(self) -> None:
        super().finish()
        self._done()

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self._done()

    def _done(self) -> None:
        done, self.on_done = self.on_done, None
        if done is not None:
            done(self)

    def write_whole(self, body: bytes) -> None:
        """
        Write the whole answer: its head and C{body} in one write to the
        connection, as L{server.Request.write} writes them in two, for an
        answer with its C{Content-Type} and C{Content-Length} set.  Anything
        twisted.web's C{write} would add or hold back (a HEAD request, a
        status without a body, cookies, an C{ETag} or C{Last-Modified} it
        writes, a content encoding, a missing header) goes through it.
        (A content encoding names itself in the C{Content-Encoding} header
        its encoder sets.)
        """
        headers = self.responseHeaders
        if (
            self.startedWriting
            or self.method == b"HEAD"
            or self.code in _NO_BODY_CODES
            or self.cookies
            or self.etag is not None
            or self.lastModified is not None
            or headers.hasHeader(b"content-encoding")
            or not headers.hasHeader(b"content-type")
            or not headers.hasHeader(b"content-length")
        ):
            self.write(body)
            return
        self.startedWriting = 1
        head = [self.clientproto, b" %d " % self.code, self.code_message, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            if name != b"Server":
                for value in values:
                    head += (name, b": ", value, b"\r\n")
        head += (b"\r\n", body)
        self.sentLength = len(body)
        self.channel.write(b"".join(head))


def source_address(request: IRequest, trusted: Sequence[Network] = ()) -> str:
    """
    The address a request comes from, as the limits count it and the access
    log writes it: the peer's, unless the peer is a trusted proxy; then the
    rightmost C{X-Forwarded-For} hop that is not a trusted proxy (every
    entry left of it was written by the client, and may be made up).  Hops
    are walked from the right while they are trusted; a hop that is not an
    address stops the walk at the last one that was.  No one else's
    C{X-Forwarded-For} is believed.
    """
    peer = getattr(request.getClientAddress(), "host", None)
    if not isinstance(peer, str):
        return "-"  # a UNIX socket: no address
    if not trusted:
        return peer
    peer_address = hop_address(peer)
    if peer_address is None or not is_trusted(peer_address, trusted):
        return peer
    source: Address = peer_address
    headers = request.requestHeaders.getRawHeaders(b"x-forwarded-for") or []
    hops = [hop for header in headers for hop in header.decode("latin-1").split(",")]
    for hop in reversed(hops):
        address = hop_address(hop)
        if address is None:
            break
        source = address
        if not is_trusted(address, trusted):
            break
    return str(source)


class RequestSources:
    """
    Requests' source addresses for the limits (L{source_address}), and a
    warning, once per process, when a peer that is not a trusted proxy
    sends C{X-Forwarded-For} or C{Forwarded} (RFC 7239).

    Such a peer is most likely a proxy the operator has not named in
    C{[limits] trusted_proxies}: every request it forwards then comes from
    its address, and a few failed attempts through it lock every client
    behind it out.  The header itself is ignored either way: believing it
    from anyone would let a client choose its own source.
    """

    _log = Logger()

    def __init__(self, trusted: Sequence[Network] = ()) -> None:
        self.trusted = tuple(trusted)
        self._warned = False

    def __call__(self, request: IRequest) -> str:
        source = source_address(request, self.trusted)
        if not self._warned:
            self._check_forwarding(request)
        return source

    def _check_forwarding(self, request: IRequest) -> None:
        headers = request.requestHeaders
        if not (headers.hasHeader(b"x-forwarded-for") or headers.hasHeader(b"forwarded")):
            return
        peer = getattr(request.getClientAddress(), "host", None)
        if not isinstance(peer, str):
            return
        address = hop_address(peer)
        if address is not None and is_trusted(address, self.trusted):
            return
        self._warned = True
        self._log.warn(
            "A request from {peer} carries X-Forwarded-For or Forwarded, but {peer} is not in "
            "[limits] trusted_proxies: the brute-force limits count every request it forwards "
            "as its own, so a few failed attempts through it lock out every client behind it. "
            "If ccserver runs behind that proxy, add its address to [limits] trusted_proxies. "
            "(Logged once.)",
            peer=peer,
        )


def access_line_of(request: server.Request, timestamp: str) -> bytes:
    """
    The request's access log line (L{ccserver.accesslog.access_line}): its
    source as the limits count it (L{source_address}, the client's behind a
    trusted proxy), its path without the query string.
    """
    site = getattr(request, "site", None)
    return access_line(
        source_address(request, getattr(site, "trusted_proxies", ())),
        timestamp,
        request.method,
        request.uri,
        request.clientproto,
        request.code,
        request.sentLength,
        request.getHeader(b"user-agent"),
    )


class CCServerSite(server.Site):
    """
    The site: bounded requests, an access log without query strings
    (L{ccserver.accesslog}), and a count of the requests in flight so that
    a stop can wait for them.
    """

    requestFactory = BoundedRequest
    # HTTP/1.1 answers to bad heads, and deadlines (ccserver.httpchannel);
    # replaces twisted.web's HTTP/2-negotiating wrapper (h2 is not installed).
    protocol = CCServerChannel  # type: ignore[assignment]
    displayTracebacks = False

    def __init__(
        self,
        resource: Any,
        reactor: Any = None,
        access_log: AccessLog | None = None,
        limits: HTTPLimits | None = None,
        metrics: NoMetrics = NO_METRICS,
        trusted_proxies: Sequence[Network] = (),
    ) -> None:
        super().__init__(resource, parsePOSTFormSubmission=False, reactor=reactor)
        #: How many requests have started and not yet finished.
        self.in_flight = 0
        #: where each request's line goes (None: not logged)
        self.access_log = access_log
        self._idle_waiters: list[Deferred[None]] = []
        self.limits = limits or HTTPLimits()
        self.metrics = metrics
        #: whose X-Forwarded-For names a request's source (the access log's)
        self.trusted_proxies = tuple(trusted_proxies)

    def log(self, request: http.Request) -> None:
        access_log = self.access_log
        if access_log is not None:
            # twisted.web keeps the time's text, made once a second
            timestamp = self._logDateTime or datetimeToLogString(self.reactor.seconds())
            access_log.append(access_line_of(cast(server.Request, request), timestamp))

    def getResourceFor(self, request: server.Request) -> Any:
        # every request of this site is one (requestFactory)
        bounded = cast(BoundedRequest, request)
        self.in_flight += 1
        bounded.started = perf_counter()
        bounded.on_done = self._finished
        return super().getResourceFor(request)

    def _finished(self, request: BoundedRequest) -> None:
        self.in_flight -= 1
        self.metrics.request_finished(request.path, request.code, perf_counter() - request.started)
        if self.in_flight == 0 and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def when_idle(self) -> Deferred[None]:
        """
        A Deferred that fires once no request is in flight (at once if none
        is), so that a stop can wait for them without polling.  Cancelling
        it (a timeout) stops the wait.
        """
        if self.in_flight == 0:
            return succeed(None)
        waiter: Deferred[None] = Deferred(lambda d: self._idle_waiters.remove(d))
        self._idle_waiters.append(waiter)
        return waiter


def _no_store(request: IRequest, status: int) -> None:
    """
    An answer that no cache keeps (RFC 6749 §5.1: tokens and errors; the
    same for registrations, which carry secrets): the one place these
    headers are set.
    """
    request.setResponseCode(status)
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"Pragma", b"no-cache")


def _json(request: IRequest, status: int, document: Any) -> bytes:
    """
    A JSON answer that no cache keeps (L{_no_store}).
    """
    _no_store(request, status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(document, separators=(",", ":")).encode()


def _media_type(request: IRequest) -> bytes:
    content_type = request.getHeader(b"content-type") or b""
    return content_type.split(b";", 1)[0].strip().lower()


def _body(request: IRequest) -> bytes:
    if getattr(request, "body_too_large", False):
        raise OAuthError(
            "invalid_request", f"the request body is larger than {MAX_BODY} bytes", status=413
        )
    return request.content.read()  # type: ignore[no-any-return]


#: Parameters that may be given more than once (RFC 8707 §2, RFC 8693 §2.1).
REPEATABLE = frozenset({"resource", "audience"})


def _single(pairs: list[tuple[str, str]]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """
    RFC 6749 §3.2: parameters sent without a value are treated as omitted,
    and request parameters must not be included more than once (but for
    the L{REPEATABLE} ones).
    """
    form: dict[str, str] = {}
    repeated: dict[str, list[str]] = {}
    for name, value in pairs:
        if name in REPEATABLE:
            if value != "":
                repeated.setdefault(name, []).append(value)
            continue
        if name in form:
            raise invalid_request(f"{name}: given more than once")
        form[name] = value
    return {name: value for name, value in form.items() if value != ""}, repeated


def parse_form(request: IRequest) -> tuple[dict[str, str], dict[str, list[str]]]:
    if request.uri.partition(b"?")[2]:
        raise invalid_request("token request parameters must be sent in the body, not the URL")
    if _media_type(request) != _FORM:
        raise invalid_request("the body must be application/x-www-form-urlencoded")
    body = _body(request)
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise invalid_request("the body is not valid UTF-8 form data") from None
    return _single(pairs)


def parse_json(request: IRequest) -> Any:
    if _media_type(request) != _JSON:
        raise invalid_request("the body must be application/json")
    body = _body(request)
    try:
        return strictjson.loads(body)
    except ValueError as e:
        raise invalid_client_metadata(f"the body is not valid JSON: {e}") from None


def _authorization(request: IRequest) -> str | None:
    header = request.getHeader(b"authorization")
    return None if header is None else bytes(header).decode("latin-1")


def bearer_token(request: IRequest) -> str | None:
    header = request.getHeader(b"authorization")
    if header is None:
        return None
    parts = split_authorization(bytes(header).decode("latin-1"))
    if parts is None or parts[0].lower() != "bearer" or not parts[1].strip():
        return ""
    return parts[1].strip()


def client_certificate(
    certificates: ClientCertificateReader | None, request: IRequest
) -> PresentedCertificate | None:
    """
    The TLS client certificate the request came with (RFC 8705), read only
    where a request can have one.
    """
    return None if certificates is None else certificates.read(request)


# RFC 9110 §8.8.3: entity-tag = [ weak ] opaque-tag; weak = %s"W/";
# opaque-tag = DQUOTE *etagc DQUOTE; etagc = %x21 / %x23-7E / obs-text (a
# comma among them: the list is read tag by tag, never split at commas).
# Between list members, OWS and commas (§5.6.1: empty elements are ignored).
_TAG = rb'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"'
_ENTITY_TAG_LIST = re.compile(rb"[ \t,]*" + _TAG + rb"(?:[ \t]*,[ \t,]*" + _TAG + rb")*[ \t,]*")
_OPAQUE_TAG = re.compile(rb'"[\x21\x23-\x7e\x80-\xff]*"')


def none_match(headers: Sequence[bytes] | None, etag: str) -> bool:
    """
    Whether C{If-None-Match} (its field lines, if any) matches the current
    representation, whose strong entity tag is C{etag}: then a GET or HEAD
    is answered 304 (RFC 9110 §13.1.2).

    C{*} matches any representation.  Otherwise the field is a list of
    entity tags compared by the weak comparison (§8.8.3.2: the opaque tags
    are equal, whether either is weak or not), which §13.1.2 asks for.  A
    field that is neither is ignored (no match): the request is answered as
    if it had none, with the whole set.
    """
    if not headers:
        return False
    value = b", ".join(headers)
    if value.strip(b" \t") == b"*":
        return True
    if _ENTITY_TAG_LIST.fullmatch(value) is None:
        return False
    return etag.encode("ascii") in _OPAQUE_TAG.findall(value)


def _allow(request: IRequest, *methods: bytes) -> None:
    if request.method not in methods:
        raise OAuthError(
            "invalid_request",
            f"{request.method.decode('ascii', 'replace')} is not allowed here",
            status=405,
            headers={"Allow": ", ".join(m.decode() for m in methods)},
        )


@define
class CCServerApp:
    """
    The routes.  Every collaborator comes in through the constructor.
    """

    grants: TokenGrants
    introspection: TokenIntrospection
    registry: ClientRegistry
    keyring: Keyring
    issuer: str
    discovery_json: bytes
    #: How long resource servers may cache the JWK set: less than the delay
    #: between publishing a key and signing with it.
    jwks_max_age: int = 300
    #: Whether the store answers and a key is loaded (C{/health/ready}).
    readiness: Readiness | None = None
    metrics: NoMetrics = NO_METRICS
    #: Where a request's TLS client certificate comes from (RFC 8705); None
    #: when no request can have one.
    certificates: ClientCertificateReader | None = None
    #: Whose X-Forwarded-For names a request's source ([limits] trusted_proxies).
    trusted_proxies: tuple[Network, ...] = ()
    #: With [tracing] on: each request a span (L{TracedRoot}).
    tracing: Tracing | None = None
    #: Requests' sources, for every route (one warning per process).
    sources: RequestSources = field(
        default=Factory(lambda app: RequestSources(app.trusted_proxies), takes_self=True),
        init=False,
    )

    app = Klein()
    # werkzeug would answer /client-reg//x with a 308 to /client-reg/x (and
    # no Location, once rendered as an OAuth error): an API has no use for
    # redirects, so such a path is simply not found.  Set before the routes,
    # which take the map's setting when they are added.
    app.url_map.merge_slashes = False
    _log = Logger()

    def resource(self) -> Resource:
        """
        The whole HTTP surface: L{TokenResource} at C{/token},
        L{IntrospectionResource} at C{/token/introspect}, the Klein routes
        everywhere else; with tracing on, each request a span
        (L{TracedRoot}).
        """
        root = RootResource(
            {
                b"token": TokenResource(self.grants, self.metrics, self.certificates, self.sources),
                b"token/introspect": IntrospectionResource(
                    self.introspection, self.metrics, self.certificates, self.sources
                ),
            },
            self.app.resource(),
        )
        return root if self.tracing is None else TracedRoot(root, self.tracing, self.sources)

    def _source(self, request: IRequest) -> str:
        return self.sources(request)

    @app.route("/health/live", methods=None)
    def live(self, request: IRequest) -> bytes:
        _allow(request, b"GET", b"HEAD")
        return _json(request, 200, {"status": "ok"})

    @app.route("/health/ready", methods=None)
    async def ready(self, request: IRequest) -> bytes:
        _allow(request, b"GET", b"HEAD")
        not_ready = None if self.readiness is None else await self.readiness.check()
        if not_ready is not None:
            # the reason alone: the detail (the store's address) is logged
            return _json(request, 503, {"status": "unavailable", "reason": not_ready.reason})
        return _json(request, 200, {"status": "ok"})

    @app.route("/token/revoke", methods=None)
    async def revoke(self, request: IRequest) -> bytes:
        _allow(request, b"POST")
        form, _ = parse_form(request)
        await self.introspection.revoke(
            form,
            _authorization(request),
            client_certificate(self.certificates, request),
            self._source(request),
        )
        return _json(request, 200, {})

    @app.route("/.well-known/openid-configuration", methods=None)
    @app.route("/.well-known/oauth-authorization-server", methods=None)
    def discovery(self, request: IRequest) -> bytes:
        _allow(request, b"GET", b"HEAD")
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"public, max-age=3600")
        return self.discovery_json

    @app.route("/jwks.json", methods=None)
    def jwks(self, request: IRequest) -> bytes:
        """
        The JWK set, with its entity tag: a cache that has it already asks
        with C{If-None-Match} and gets 304 and no body while it is the same
        (RFC 9110 §13.1.2, §15.4.5: the 304 carries the C{ETag} and
        C{Cache-Control} the 200 would).
        """
        _allow(request, b"GET", b"HEAD")
        body, etag = self.keyring.jwks_json, self.keyring.jwks_etag
        request.setHeader(b"ETag", etag.encode("ascii"))
        request.setHeader(b"Cache-Control", f"public, max-age={self.jwks_max_age}".encode())
        if none_match(request.requestHeaders.getRawHeaders(b"if-none-match"), etag):
            request.setResponseCode(304)
            return b""
        request.setHeader(b"Content-Type", b"application/jwk-set+json")
        return body

    @app.route("/client-reg", methods=None)
    async def register(self, request: IRequest) -> bytes:
        _allow(request, b"POST")
        registration = await self.registry.register(
            bearer_token(request), lambda: parse_json(request), self._source(request)
        )
        document = registration_response(registration, self.issuer)
        request.setHeader(b"Location", document["registration_client_uri"].encode())
        self.metrics.registration("create")
        self._log.info(
            "Registered client {client_id} ({client_name})",
            client_id=registration.client.client_id,
            client_name=escape(str(registration.client.metadata.get("client_name", ""))),
        )
        return _json(request, 201, document)

    @app.route("/client-reg/<client_id>", methods=None)
    async def configuration(self, request: IRequest, client_id: str) -> bytes:
        _allow(request, b"GET", b"PUT", b"DELETE")
        token = bearer_token(request)
        source = self._source(request)
        if request.method == b"GET":
            client = await self.registry.read(client_id, token, source)
            self.metrics.registration("read")
        elif request.method == b"PUT":
            client = await self.registry.replace(
                client_id, token, lambda: parse_json(request), source
            )
            self._log.info("Updated client {client_id}", client_id=client_id)
            self.metrics.registration("update")
        else:
            await self.registry.delete(client_id, token, source)
            self._log.info("Deleted client {client_id}", client_id=client_id)
            self.metrics.registration("delete")
            _no_store(request, 204)
            return b""
        return _json(request, 200, client_information(client, self.issuer))

    @app.route("/client-reg/<client_id>/rotate-secret", methods=None)
    async def rotate_secret(self, request: IRequest, client_id: str) -> bytes:
        """
        A new secret for the client, for the master token's holder; the old
        one works until the grace period ends ([clients] secret_rotation_grace).
        """
        _allow(request, b"POST")
        rotation = await self.registry.rotate_secret(
            client_id, bearer_token(request), self._source(request)
        )
        self._log.info("Rotated the secret of client {client_id}", client_id=client_id)
        return _json(request, 200, rotation.as_json())

    @app.handle_errors(Exception)
    def error(self, request: IRequest, failure: Failure) -> bytes:
        if failure.check(StoreUnavailable):
            self.metrics.store_error()
        return render_failure(request, failure)


_log = Logger()


def render_failure(request: IRequest, failure: Failure) -> bytes:
    """
    The one place errors become responses: an L{OAuthError} as itself
    (RFC 6749 §5.2), an unreachable store as 503 C{temporarily_unavailable},
    a routing error as its status, anything else as a logged 500.
    """
    error = failure.value
    if isinstance(error, StoreUnavailable):
        _log.warn("Store unavailable: {reason}", reason=str(error))
        error = temporarily_unavailable("the store is unavailable; try again shortly")
    if isinstance(error, OAuthError):
        for name, value in error.headers.items():
            request.setHeader(name.encode(), value.encode("latin-1"))
        return _json(request, error.status, error.as_json())
    # Every route takes every method (methods=None) and answers a wrong one
    # itself (_allow), so werkzeug never raises MethodNotAllowed.
    if isinstance(error, NotFound):
        return _json(request, 404, {"error": "not_found", "error_description": "no such endpoint"})
    if isinstance(error, HTTPException):
        return _json(
            request,
            error.code or 400,
            {"error": "invalid_request", "error_description": error.description or "bad request"},
        )
    _log.failure(
        "Unexpected error answering {method} {path}",
        failure,
        method=request.method,
        path=request.path,
    )
    return _json(request, 500, {"error": "server_error", "error_description": "internal error"})


def dpop_headers(request: IRequest) -> list[str]:
    """
    Every C{DPoP} header value (RFC 9449 §4.3 1.: more than one is refused,
    so none is dropped here).
    """
    values = request.requestHeaders.getRawHeaders(b"dpop") or []
    return [bytes(value).decode("latin-1") for value in values]


def _token_answer(request: IRequest, token: IssuedToken) -> bytes:
    if token.dpop_nonce is not None:
        # RFC 9449 §8.2: the next nonce, with the 200 (no-store, as ever).
        request.setHeader(b"DPoP-Nonce", token.dpop_nonce.encode("ascii"))
    _no_store(request, 200)
    request.setHeader(b"Content-Type", b"application/json")
    return token_answer_json(token)


def write_answer(body: bytes, request: IRequest) -> None:
    """
    Write a plain resource's whole answer and finish: in one go, with its
    length, unless the client went away meanwhile.
    """
    # A request whose connection was lost has no channel any more
    # (twisted.web.http.Request.connectionLost sets its documented
    # channel attribute to None): a public check that costs no Deferred
    # per request, unlike notifyFinish.
    answerable = cast("http.Request", request)
    if not answerable.finished and answerable.channel is not None:
        # With its length known, twisted.web writes the head and the
        # body in one go, not as chunks with a last one at finish.
        request.setHeader(b"Content-Length", b"%d" % len(body))
        if isinstance(request, BoundedRequest):
            request.write_whole(body)
        else:
            request.write(body)
        request.finish()


def error_code(failure: Failure) -> str:
    """
    The RFC 6749 §5.2 error code a failure is answered with (for the
    metrics, whose labels must be a small set).
    """
    error = failure.value
    assert error is not None  # a failure has its exception
    return answered_with(error)[0]


class FormResource(Resource):
    """
    A POST endpoint with a form body as a plain twisted.web resource, with
    no routing on the way (Klein's routing and response handling are a
    large share of a hot request's cost: bench/README.md, "Measurements
    behind design choices"): one call (L{_call}), its answer (L{_answer})
    or its error (L{render_failure}) written once, with its length
    (L{write_answer}).
    """

    isLeaf = True

    def __init__(
        self,
        metrics: NoMetrics = NO_METRICS,
        certificates: ClientCertificateReader | None = None,
        sources: RequestSources | None = None,
    ) -> None:
        super().__init__()
        self._metrics = metrics
        self._certificates = certificates
        self._sources = sources or RequestSources()

    def render(self, request: IRequest) -> int:
        try:
            _allow(request, b"POST")
            call = self._call(request)
        except Exception:
            self._settled(Failure(), request)
        else:
            settle(call, self._settled, request)
        return NOT_DONE_YET

    def _call(self, request: IRequest) -> Coroutine[Any, Any, Any]:
        """
        The endpoint's one call for C{request}: a coroutine, run by
        L{settle} (at once when it never waits, as on the memory store).
        """
        raise NotImplementedError

    def _settled(self, outcome: Any, request: IRequest) -> None:
        """
        Write the answer to what the call returned, or the error it raised
        (a L{Failure}).  A bug in making the answer is answered as one
        (500), not left without an answer.
        """
        try:
            if isinstance(outcome, Failure):
                body = self._failed(outcome, request)
            else:
                body = self._answer(outcome, request)
        except Exception:
            body = render_failure(request, Failure())
        write_answer(body, request)

    def _answer(self, result: Any, request: IRequest) -> bytes:
        """
        The body of the answer to C{result}, with its headers set.
        """
        raise NotImplementedError

    def _failed(self, failure: Failure, request: IRequest) -> bytes:
        if failure.check(StoreUnavailable):
            self._metrics.store_error()
        return render_failure(request, failure)


class TokenResource(FormResource):
    """
    C{/token}, the hot path: one request in, one call to the C{token} of
    the grant its C{grant_type} selects (L{TokenGrants.token}), its
    answer or error out.
    """

    def __init__(
        self,
        grants: TokenGrants,
        metrics: NoMetrics = NO_METRICS,
        certificates: ClientCertificateReader | None = None,
        sources: RequestSources | None = None,
    ) -> None:
        super().__init__(metrics, certificates, sources)
        self._grants = grants

    def _call(self, request: IRequest) -> Coroutine[Any, Any, IssuedToken]:
        form, repeated = parse_form(request)
        return self._grants.token(
            TokenRequest(
                form,
                _authorization(request),
                repeated.get("resource", ()),
                repeated.get("audience", ()),
                dpop_headers(request),
                client_certificate(self._certificates, request),
                self._sources(request),
            )
        )

    def _answer(self, token: IssuedToken, request: IRequest) -> bytes:
        self._metrics.token_issued(token)
        return _token_answer(request, token)

    def _failed(self, failure: Failure, request: IRequest) -> bytes:
        self._metrics.token_failed(error_code(failure))
        return super()._failed(failure, request)


class IntrospectionResource(FormResource):
    """
    C{/token/introspect} (RFC 7662), the hot path of a deployment with
    opaque tokens (a resource server may introspect on every call it
    serves): one call to L{TokenIntrospection.introspect}, its answer
    written as JSON made once for a read-only answer (L{RenderedAnswers}).
    What it answers is what the Klein route it replaced answered, case by
    case (tests/test_introspection_fast_path.py).
    """

    def __init__(
        self,
        introspection: TokenIntrospection,
        metrics: NoMetrics = NO_METRICS,
        certificates: ClientCertificateReader | None = None,
        sources: RequestSources | None = None,
    ) -> None:
        super().__init__(metrics, certificates, sources)
        self._introspection = introspection
        self._rendered = RenderedAnswers()

    def _call(self, request: IRequest) -> Coroutine[Any, Any, Mapping[str, Any]]:
        form, _ = parse_form(request)
        return self._introspection.introspect(
            form,
            _authorization(request),
            client_certificate(self._certificates, request),
            self._sources(request),
        )

    def _answer(self, answer: Mapping[str, Any], request: IRequest) -> bytes:
        _no_store(request, 200)
        request.setHeader(b"Content-Type", b"application/json")
        return self._rendered.json(answer)


class ErrorResource(Resource):
    """
    A resource that answers every request with one L{OAuthError}, rendered
    like any other (L{render_failure}).
    """

    isLeaf = True

    def __init__(self, error: OAuthError) -> None:
        super().__init__()
        self._error = error

    def render(self, request: IRequest) -> bytes:
        return render_failure(request, Failure(self._error))


def undecodable_url_part(request: IRequest) -> str | None:
    """
    The part of the request's URL that is not UTF-8 once percent-decoded
    (C{GET /%FF}), if any: the path.  (The host of the C{Host} header is
    ASCII: the channel refuses any other, L{ccserver.httpchannel}.)

    Klein decodes it as UTF-8 and, when it cannot, answers a text/html 400
    and logs a critical traceback: a client's mistake written as our bug, in
    kilobytes of log per request.  L{RootResource} asks this first.
    """
    path = b"/".join(request.prepath + request.postpath)
    try:
        path.decode("utf-8")
    except UnicodeDecodeError:
        return "the URL path"
    return None


class RootResource(Resource):
    """
    The site's root: C{/token} goes straight to L{TokenResource} and
    C{/token/introspect} to L{IntrospectionResource}, every other path to
    the Klein app, but for URLs no route could match because they are not
    UTF-8 (see L{undecodable_url_part}).
    """

    def __init__(self, leaves: Mapping[bytes, Resource], app: Resource) -> None:
        super().__init__()
        #: The plain resources served outside Klein, by their whole path
        #: without its leading slash (C{b"token/introspect"}), each at that
        #: path exactly; the OpenAPI drift test reads the routes from here.
        self.leaves: dict[bytes, Resource] = dict(leaves)
        self._app = app

    def getChildWithDefault(self, name: bytes, request: IRequest) -> Resource:
        postpath = request.postpath
        leaf = self.leaves.get(b"/".join((name, *postpath)) if postpath else name)
        if leaf is not None:
            request.prepath.extend(postpath)
            del postpath[:]
            return leaf
        undecodable = undecodable_url_part(request)
        if undecodable is not None:
            return ErrorResource(
                invalid_request(f"{undecodable} is not UTF-8 once percent-decoded")
            )
        # Hand Klein the whole path, as if it were the root.
        request.postpath.insert(0, request.prepath.pop())
        return self._app


class TracedRoot(Resource):
    """
    The root of a site whose requests are traced ([tracing] on): every
    resource the root finds is rendered in the request's span
    (L{TracedResource}).  Only a traced site has one: a site without
    tracing pays nothing for it.
    """

    def __init__(self, root: RootResource, tracing: Tracing, sources: RequestSources) -> None:
        super().__init__()
        self.root = root
        self.leaves = root.leaves
        self._tracing = tracing
        self._sources = sources

    def getChildWithDefault(self, name: bytes, request: IRequest) -> Resource:
        return TracedResource(self.root.getChildWithDefault(name, request), self._tracing, self._sources)


class TracedResource(Resource):
    """
    A resource rendered in its request's span: opened before it renders,
    current while it runs (and in every coroutine it starts), ended when
    the request is answered, with its status and source.
    """

    isLeaf = True

    def __init__(self, resource: Resource, tracing: Tracing, sources: RequestSources) -> None:
        super().__init__()
        self._resource = resource
        self._tracing = tracing
        self._sources = sources

    def render(self, request: IRequest) -> Any:
        answerable = cast("server.Request", request)
        path = answerable.path
        span, leave = self._tracing.request_started(
            request.method.decode("ascii", "replace"),
            route_template(path) or OTHER_ROUTE,
            path.decode("ascii", "replace"),
            request.requestHeaders,
        )
        answerable.notifyFinish().addBoth(self._answered, answerable, span)
        try:
            return self._resource.render(request)
        finally:
            leave()

    def _answered(self, _: object, request: server.Request, span: Any) -> None:
        self._tracing.request_finished(span, request.code, self._sources(request))


def _template(rule: str) -> str:
    """
    A werkzeug rule (C{/client-reg/<client_id>}) as an OpenAPI path
    template (C{/client-reg/{client_id}}).
    """
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


#: The paths of the plain resources (L{RootResource}'s leaves).
LEAF_ROUTES = ("/token", "/token/introspect")
#: Every route template the site serves: the metrics' route labels.
ROUTES: tuple[str, ...] = (
    *LEAF_ROUTES,
    *sorted({_template(rule.rule) for rule in CCServerApp.app.url_map.iter_rules()}),
)
_STATIC_ROUTES = {route.encode(): route for route in ROUTES if "{" not in route}
_ROUTE_MATCHER = CCServerApp.app.url_map.bind("localhost")


def route_template(path: bytes) -> str | None:
    """
    The route template that serves C{path} (C{/client-reg/{client_id}}),
    or L{None} when none does: a bounded label for the metrics, never the
    path itself.
    """
    route = _STATIC_ROUTES.get(path)
    if route is not None:
        return route
    try:
        rule, _ = _ROUTE_MATCHER.match(path.decode("utf-8"), return_rule=True)
    except (HTTPException, UnicodeDecodeError):
        return None
    return _template(rule.rule)
