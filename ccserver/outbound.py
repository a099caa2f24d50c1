"""
Outbound HTTP: the one way ccserver talks to other servers.

Every request ccserver makes goes through an HTTP client made here
(L{http_client}): the grant webhook's, the fetcher of clients' C{jwks_uri}
(L{ccserver.keysets}), and next the fetchers of trusted issuers' metadata
and key sets.  What they share lives here once:

  - a persistent connection pool and a connection timeout;
  - reading a response body up to a limit (L{read_body});
  - which failures mean the request may not have reached the server, and
    may be sent again (L{NOT_ANSWERED}), and how any failure is described
    for the log (L{describe_failure});
  - where a request may go (L{AddressPolicy}), chosen per use: a URL the
    operator configured may reach any address; a URL a client registered
    (its C{jwks_uri}) is attacker input, and may reach only public
    addresses, over https, unless the operator allows private networks
    (C{[client_auth] jwks_uri_private_networks}).

The address check is made where the connection is made, not before: the
client's endpoint resolves the host name through a resolver that drops
every answer when one of its addresses is refused (as Synapse's
C{IPBlacklistingResolver} does), and connects to the addresses it checked,
so a name that resolves to a public address when checked and to a private
one a moment later (DNS rebinding) gains nothing.  TLS still checks the
certificate against the host name of the URL.  Redirects are never
followed: the callers pass C{allow_redirects=False}.

The reactor is passed in; nothing here imports it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from attrs import frozen
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IProtocol,
    IProtocolFactory,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from zope.interface import implementer

from ccserver import __version__, tracing
from ccserver.model import split_uri

#: The C{User-Agent} of every outbound request.
USER_AGENT = f"ccserver/{__version__}"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _request_not_sent() -> type[Exception]:
    """
    The adapter to a private Twisted module, outbound HTTP's one reach
    (the others are listed in docs/architecture.md, "Private APIs").  A
    request on a pooled connection that the server closed just before it
    went out fails with C{twisted.web._newclient.RequestNotSent}: safe to
    send again, as it never left.  Twisted exports the class from no public module
    (C{twisted.web.client} imports it without listing it in C{__all__}).
    tests/test_outbound.py checks that it is still what Twisted raises in
    that case, so a change in Twisted fails a test, not a retry.
    """
    from twisted.web import _newclient

    found: type[Exception] = _newclient.RequestNotSent
    return found


RequestNotSent = _request_not_sent()

#: Failures after which a request may not have reached the server (a
#: kept-alive connection it had just closed): sending it again is safe for
#: a request that changes nothing, or that the server treats as a question.
NOT_ANSWERED: tuple[type[Exception], ...] = (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseNeverReceived,
)


class BodyTooLarge(Exception):
    """
    A response body is longer than the caller's limit.
    """


class RefusedURL(ValueError):
    """
    A URL that an L{AddressPolicy} refuses before any connection; the
    message says why, for the one who gave the URL.
    """


class RefusedAddress(Exception):
    """
    The host name resolved to an address that the L{AddressPolicy} refuses;
    no connection was made.
    """


# Special-purpose address blocks (the IANA IPv4 and IPv6 Special-Purpose
# Address Registries, RFC 6890) that a client-supplied URL may not reach:
# written out here, rather than taken from ipaddress's is_global alone,
# whose tables differ between Python versions.
_REFUSED_NETWORKS: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared address space (CGNAT, RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata)"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
    ("100::/64", "discard-only"),
    ("2001::/23", "IETF protocol assignments"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "unique local (RFC 4193)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)
_REFUSED = tuple((ipaddress.ip_network(net), name) for net, name in _REFUSED_NETWORKS)
_IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIXTOFOUR = ipaddress.ip_network("2002::/16")
#: Host names that are loopback by definition (RFC 6761 §6.3).
_LOCALHOST = re.compile(r"(?:.+\.)?localhost\.?", re.IGNORECASE)
#: A last label of digits, or 0x and hex digits, makes a host an IPv4
#: address in one of inet_aton's forms (C{127.1}, C{2130706433},
#: C{0x7f.0.0.1}): never a DNS name (RFC 3696 §2), and resolved as an
#: address by the system.
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)", re.IGNORECASE)
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """
    The IPv4 address an IPv6 address stands for, if it is one of the forms
    that carry one: IPv4-mapped (C{::ffff:a.b.c.d}), IPv4-compatible
    (C{::a.b.c.d}, deprecated), NAT64 (C{64:ff9b::a.b.c.d}, RFC 6052) or
    6to4 (C{2002:aabb:ccdd::}, RFC 3056).
    """
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refused_range(address: IPAddress) -> str | None:
    """
    The name of the special-purpose range C{address} is in, if a
    client-supplied URL may not reach it; None for a public unicast
    address.  An IPv6 address that carries an IPv4 one is judged by that.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            inner = refused_range(embedded)
            return None if inner is None else f"{inner}, in an IPv6 form"
    for network, name in _REFUSED:
        if address.version == network.version and address in network:
            return name
    if address.is_multicast:
        return "multicast"
    if not address.is_global:
        return "reserved"
    return None


def parse_address(text: str) -> IPAddress | None:
    """
    An IP address in its standard notation (IPv6 with or without
    brackets, and without a zone), or None.
    """
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "%" in text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@frozen
class AddressPolicy:
    """
    Where requests to URLs of one origin may go.

    @ivar public_only: whether only public addresses may be reached, over
        https (a URL a client supplied); if not, any address and http too
        (a URL the operator configured).
    @ivar private_networks: with C{public_only}, the networks that may be
        reached all the same, over https or http: the operator's
        allow-list for private deployments and tests.
    """

    public_only: bool
    private_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def any_address(cls) -> AddressPolicy:
        """
        For URLs the operator wrote: anywhere.
        """
        return cls(public_only=False)

    @classmethod
    def public(cls, private_networks: Iterable[str] = ()) -> AddressPolicy:
        """
        For URLs a client supplied: public addresses over https, and the
        networks named (CIDR, or single addresses) over https or http.

        @raise ValueError: a network is malformed.
        """
        return cls(
            public_only=True,
            private_networks=tuple(
                ipaddress.ip_network(network, strict=False) for network in private_networks
            ),
        )

    def _allowed(self, address: IPAddress) -> bool:
        candidates: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address):
            embedded = _embedded_ipv4(address)
            if embedded is not None:
                candidates.append(embedded)
        return any(
            candidate.version == network.version and candidate in network
            for candidate in candidates
            for network in self.private_networks
        )

    def refusal(self, address: IPAddress, scheme: str) -> str | None:
        """
        Why a connection to C{address} for a C{scheme} URL is refused, or
        None when it is allowed.
        """
        if not self.public_only or self._allowed(address):
            return None
        reason = refused_range(address)
        if reason is not None:
            return f"{address} is {reason}"
        if scheme != "https":
            return (
                f"{address} is not in a network the operator allows plain {scheme} to "
                "([client_auth] jwks_uri_private_networks)"
            )
        return None

    def check_url(self, url: str) -> str:
        """
        Refuse a URL before any connection is tried: for C{public_only},
        one that is not https (or http to an allowed network), holds
        anything but visible ASCII (a control character, a space), carries
        credentials, or names as its host an address (or C{localhost})
        that L{refusal} refuses, or an IPv4 address in a form other than
        dotted decimal.  A host name is checked again, address by address,
        when it is resolved.

        @return: C{url}.
        @raise RefusedURL: saying why.
        """
        if not _VISIBLE_ASCII.fullmatch(url):
            raise RefusedURL("must be an absolute URL of visible ASCII characters, no spaces")
        scheme, host = _scheme_and_host(url)
        if not self.public_only:
            return url
        if _LOCALHOST.fullmatch(host):
            addresses = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
            if not any(self._allowed(a) for a in addresses):
                raise RefusedURL(
                    f"{host} is loopback; this server fetches only public addresses, over https"
                )
            return url
        address = parse_address(host)
        if address is None:
            if _NUMERIC_LABEL.fullmatch(host.rstrip(".").rpartition(".")[2]):
                raise RefusedURL(
                    f"{host!r} is an IP address in a non-standard form; write it in dotted decimal"
                )
            if scheme != "https" and not self.private_networks:
                raise RefusedURL(
                    "must be https (http only to networks the operator allows: "
                    "[client_auth] jwks_uri_private_networks)"
                )
            return url
        refused = self.refusal(address, scheme)
        if refused is not None:
            raise RefusedURL(f"{refused}; this server fetches only public addresses, over https")
        return url


def operator_url_warning(url: str) -> str | None:
    """
    Why an operator's URL (a trusted issuer's, which may point anywhere)
    deserves a warning in the log, or None: it is plain http, or names a
    private (or otherwise special) address, and is not the loopback's.  A
    host name is not resolved: only what the URL says is judged.
    """
    try:
        scheme, host = _scheme_and_host(url)
    except RefusedURL:
        return None
    address = parse_address(host)
    if _LOCALHOST.fullmatch(host) or (address is not None and address.is_loopback):
        return None
    if scheme == "http":
        return "it is plain http: anyone on the way can read and change what it answers"
    reason = None if address is None else refused_range(address)
    if reason is not None:
        return f"{address} is {reason}"
    return None


def _scheme_and_host(url: str) -> tuple[str, str]:
    """
    The scheme and host of an absolute http(s) URL, as both the standard
    library and Twisted's agent read it (they must agree: a URL read two
    ways is refused), without credentials.

    @raise RefusedURL: it is not one.
    """
    parts = split_uri(url)
    try:
        valid = (
            parts is not None
            and parts.scheme in ("https", "http")
            and bool(parts.hostname)
            and parts.port != 0
        )
    except ValueError:  # the port is not a number, or out of range
        valid = False
    if not valid or parts is None or parts.hostname is None:
        raise RefusedURL(f"{url!r} is not an absolute http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise RefusedURL("must not hold credentials (user:password@)")
    agents = URI.fromBytes(url.encode("ascii")).host.decode("ascii").lower()
    if agents != parts.hostname:
        raise RefusedURL(f"{url!r} is not an absolute http(s) URL")
    if ":" in parts.hostname and parse_address(parts.hostname) is None:
        raise RefusedURL(f"{parts.hostname!r} is not an IPv6 address without a zone")
    return parts.scheme, parts.hostname


@implementer(IHostnameResolver)
class _CheckingResolver:
    """
    Resolves through another resolver, and passes on the addresses only
    when every one is allowed: a name with one refused address is refused
    whole, so that a connection attempt never reaches it.  One per
    connection attempt, to remember why it refused (L{refused}).
    """

    def __init__(
        self, resolver: IHostnameResolver, refusal: Callable[[IPAddress], str | None]
    ) -> None:
        self._resolver = resolver
        self._refusal = refusal
        self.refused: str | None = None

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        resolved: list[IAddress] = []
        outer = self

        @implementer(IResolutionReceiver)
        class Collector:
            def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
                resolutionReceiver.resolutionBegan(resolutionInProgress)

            def addressResolved(self, address: IAddress) -> None:
                resolved.append(address)

            def resolutionComplete(self) -> None:
                for address in resolved:
                    parsed = parse_address(getattr(address, "host", ""))
                    why = "not an IP address" if parsed is None else outer._refusal(parsed)
                    if why is not None:
                        outer.refused = f"{hostName} resolves to {why}"
                        break
                else:
                    for address in resolved:
                        resolutionReceiver.addressResolved(address)
                resolutionReceiver.resolutionComplete()

        return self._resolver.resolveHostName(
            Collector(), hostName, portNumber, addressTypes, transportSemantics
        )


@implementer(IReactorPluggableNameResolver)
class _ResolvingReactor:
    """
    A reactor whose name resolver is a L{_CheckingResolver}: what
    L{HostnameEndpoint} resolves through and connects with (every other
    attribute is the real reactor's).
    """

    def __init__(self, reactor: Any, resolver: IHostnameResolver) -> None:
        self._reactor = reactor
        self.nameResolver = resolver

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        raise NotImplementedError("the checking resolver is fixed")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


@implementer(IStreamClientEndpoint)
class _CheckedEndpoint:
    """
    A L{HostnameEndpoint} over a L{_CheckingResolver}: a name refused by
    the policy fails as L{RefusedAddress}, not as an unknown name.
    """

    def __init__(self, endpoint: HostnameEndpoint, resolver: _CheckingResolver) -> None:
        self._endpoint = endpoint
        self._resolver = resolver

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        def refused(failure: Failure) -> Failure:
            if failure.check(DNSLookupError) and self._resolver.refused is not None:
                return Failure(RefusedAddress(self._resolver.refused))
            return failure

        connecting: Deferred[IProtocol] = self._endpoint.connect(protocolFactory)
        return connecting.addErrback(refused)


@implementer(IAgentEndpointFactory)
class _CheckedEndpointFactory:
    """
    Endpoints that connect only where an L{AddressPolicy} allows: TCP for
    http, TLS over TCP for https (the certificate checked against the URL's
    host name, as L{Agent} does).
    """

    def __init__(
        self,
        reactor: Any,
        policy: AddressPolicy,
        connect_timeout: float,
        resolver: IHostnameResolver | None = None,
    ) -> None:
        self._reactor = reactor
        self._policy = policy
        self._connect_timeout = connect_timeout
        self._resolver = resolver
        self._tls = BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        scheme = uri.scheme.decode("ascii")
        # the reactor's resolver, looked up when it is needed: a test may
        # build the object graph with a bare Clock and never connect
        underlying = self._resolver if self._resolver is not None else self._reactor.nameResolver
        resolver = _CheckingResolver(
            underlying, lambda address: self._policy.refusal(address, scheme)
        )
        endpoint: IStreamClientEndpoint = _CheckedEndpoint(
            HostnameEndpoint(
                _ResolvingReactor(self._reactor, resolver),
                uri.host.decode("ascii"),
                uri.port,
                timeout=self._connect_timeout,
            ),
            resolver,
        )
        if scheme == "https":
            return wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        if scheme == "http":
            return endpoint
        raise ValueError(f"no endpoint for the scheme {scheme!r}")


_T = TypeVar("_T")


def traced_request(method: str, url: str, headers: Headers) -> Callable[[_T], _T] | None:
    """
    For a request made while a traced request is handled (C{[tracing]}
    on): a span of its own (C{CLIENT}, under the current span) whose W3C
    trace context (C{traceparent}, C{tracestate}) is put into C{headers},
    so that the service it goes to continues the trace; and what ends the
    span, to add to the answer's Deferred with C{addBoth}.  None when
    tracing is off: a context variable read, nothing more.
    """
    active = tracing.active()
    return None if active is None else active.outgoing(method, url, headers)


def http_client(
    reactor: Any,
    *,
    connect_timeout: float,
    policy: AddressPolicy,
    resolver: IHostnameResolver | None = None,
) -> tuple[HTTPClient, HTTPConnectionPool]:
    """
    A treq L{HTTPClient} over a persistent connection pool, and the pool
    (which its owner closes at shutdown: C{closeCachedConnections}).

    @param reactor: the reactor; the caller is given it.
    @param connect_timeout: seconds a connection may take to open.
    @param policy: where requests may go; with C{public_only}, every host
        name is resolved through C{resolver} (the reactor's by default) and
        checked, address by address, before a connection is made.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 16
    pool.cachedConnectionTimeout = 120
    if not policy.public_only:
        agent = Agent(reactor, connectTimeout=connect_timeout, pool=pool)
    else:
        agent = Agent.usingEndpointFactory(
            reactor, _CheckedEndpointFactory(reactor, policy, connect_timeout, resolver), pool
        )
    return HTTPClient(agent), pool


class _BoundedBody(Protocol):
    """
    Collects a response body of at most C{limit} bytes.
    """

    def __init__(self, limit: int, finished: Deferred[bytes]) -> None:
        self.limit = limit
        self.finished = finished
        self.received = 0
        self.chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self.received += len(data)
        if self.received > self.limit:
            self.finished.errback(BodyTooLarge(f"the answer is longer than {self.limit} bytes"))
            self.stop()
            return
        self.chunks.append(data)

    def stop(self) -> None:
        # The body's transport is a producer (IResponse.deliverBody); stopping
        # it drops the connection, which then never goes back to the pool.
        producer: Any = self.transport
        if producer is not None:
            producer.stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished.called:
            return
        # An answer without a length ends when the server closes the
        # connection (PotentialDataLoss); a cut-off one then fails to parse.
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.chunks))
        else:
            self.finished.errback(reason)


def read_body(response: IResponse, limit: int) -> Deferred[bytes]:
    """
    The body of C{response}, up to C{limit} bytes.  Cancelling the result
    drops the connection.

    @raise BodyTooLarge: (in the Deferred) the body is longer than that.
    """
    if response.length == 0:
        return succeed(b"")
    reader: _BoundedBody

    def cancel(_: Deferred[bytes]) -> None:
        reader.stop()

    finished: Deferred[bytes] = Deferred(cancel)
    reader = _BoundedBody(limit, finished)
    response.deliverBody(reader)
    return finished


def _reasons(failure: Failure) -> str:
    nested = getattr(failure.value, "reasons", None)
    if nested:
        return "; ".join(reason.getErrorMessage() for reason in nested)
    return failure.getErrorMessage()


def was_cancelled(error: BaseException | None) -> bool:
    """
    Whether a failed exchange was cancelled (the HTTP client wraps the
    cancellation, e.g. in L{ResponseNeverReceived}).
    """
    if isinstance(error, CancelledError):
        return True
    return any(reason.check(CancelledError) for reason in getattr(error, "reasons", ()))


def describe_failure(failure: Failure) -> str | None:
    """
    What went wrong with an exchange, for the log: a refused address, a
    failed connection, a broken exchange, an oversized body; None for a
    failure that is none of these (a bug, to be logged with its traceback).
    """
    if failure.check(RefusedAddress):
        return f"refused: {failure.getErrorMessage()}"
    if failure.check(BodyTooLarge):
        return failure.getErrorMessage()
    if failure.check(ConnectError, ConnectTimeout, DNSLookupError, OSError):
        return f"could not connect: {_reasons(failure)}"
    if failure.check(ResponseFailed, RequestNotSent, RequestTransmissionFailed):
        return f"the exchange failed: {_reasons(failure)}"
    return None
