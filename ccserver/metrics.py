"""
Prometheus metrics: what the server counts, and the C{/metrics} resource
that a separate listener (C{--metrics ENDPOINT}, C{[metrics] listen}) serves.

The web layer reports to a L{Metrics} object handed in by the composition
root (L{ccserver.assembly.assemble}); without C{--metrics} it gets
L{NO_METRICS}, whose methods do nothing, so an unmonitored server pays
nothing.  Label values are bounded: routes are route templates (an unknown
path is C{"other"}), errors are RFC 6749 error codes.

With C{--workers N} every process counts into files of its own in one
directory (prometheus_client's multiprocess mode, chosen by
C{PROMETHEUS_MULTIPROC_DIR}, which the main process sets before it starts the
workers: L{use_multiprocess_directory}), and a scrape of the main process
sums them (L{MultiProcessCollector}).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from time import perf_counter
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.web.iweb import IRequest
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from zope.interface import directlyProvides, providedBy

from ccserver.errors import ERROR_CODES
from ccserver.model import GrantAuthorization, GrantRequest, IssuedToken, TokenExchangeRequest

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: The label of a request whose path no route serves.
OTHER_ROUTE = "other"

#: The label values of ccserver_token_errors_total: every error code the
#: server sends (L{ERROR_CODES}, the one list).  A grant handler may answer
#: with a code of its own: it is counted as "other", so that labels stay a
#: small set.
TOKEN_ERRORS = ERROR_CODES
OTHER_ERROR = "other"

#: The most clients ccserver_token_rate_limited_total names, in each
#: process: the first ones refused; those refused after them are counted
#: together as L{OTHER_CLIENT}.  Client ids are bounded by the clients the
#: operator registered, not by what callers send (only an authenticated
#: client is refused by its rate limit), but there may be 100,000 of them;
#: a Prometheus series costs a few KB in the server and in every scrape.
MAX_CLIENT_LABELS = 100
OTHER_CLIENT = "other"

#: Request durations: from a token's CPU alone (a fraction of a
#: millisecond), through a store round trip or a webhook, to the store's
#: default timeout.
_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def multiprocess() -> bool:
    """
    Whether metrics are counted in files shared by several processes.
    """
    return MULTIPROC_ENV in os.environ


def use_multiprocess_directory() -> str:
    """
    Count every metric made from now on in files of a new private directory,
    and have the processes started from now on (the workers, which inherit
    the environment) count in it too.

    prometheus_client chooses its value class when it is first imported,
    from the environment; the main process has imported it already, so the
    choice is made again here (C{values.ValueClass} is read by each metric
    as it is made).  Call this before any L{Metrics} is made.
    """
    directory = tempfile.mkdtemp(prefix="ccserver-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    values.ValueClass = values.get_value_class()
    return directory


class MultiprocessDirectory(Service):
    """
    Owns the multiprocess directory of the main process: marks workers that
    ended as dead (L{worker_ended}), and removes the directory on stop.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def worker_ended(self, pid: int) -> None:
        # Counters of a dead worker stay (they are sums of what happened);
        # only its live gauges go.
        mark_process_dead(pid, self.directory)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        shutil.rmtree(self.directory, ignore_errors=True)
        return None


class NoMetrics:
    """
    The observer of a server without metrics: every report is dropped.
    """

    def token_issued(self, token: IssuedToken) -> None:
        pass

    def token_failed(self, error: str) -> None:
        pass

    def request_finished(self, path: bytes, code: int, seconds: float) -> None:
        pass

    def registration(self, action: str) -> None:
        pass

    def store_error(self) -> None:
        pass

    def rate_limited(self, what: str) -> None:
        pass

    def client_rate_limited(self, client_id: str) -> None:
        pass

    def observe_handler(self, handler: Any) -> Any:
        return handler


NO_METRICS = NoMetrics()


class Metrics(NoMetrics):
    """
    The server's Prometheus metrics, in C{registry} (or, in multiprocess
    mode, in the shared files: the registry then only names them).

    @param route_of: the route template of a request path, or L{None} when
        no route serves it (L{ccserver.web.route_template}).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        route_of: Callable[[bytes], str | None],
        routes: Iterable[str],
    ) -> None:
        self.registry = registry
        self._route_of = route_of
        self.tokens_issued = Counter(
            "ccserver_tokens_issued",
            "Access tokens issued.",
            ["format", "alg", "auth_method"],
            registry=registry,
        )
        self.token_errors = Counter(
            "ccserver_token_errors",
            "Token requests refused, by RFC 6749 error code.",
            ["error"],
            registry=registry,
        )
        self.http_requests = Counter(
            "ccserver_http_requests",
            "HTTP requests answered, by route template and status code.",
            ["route", "code"],
            registry=registry,
        )
        self.http_duration = Histogram(
            "ccserver_http_request_duration_seconds",
            "Time from the routing of an HTTP request to its answer.",
            ["route"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.registrations = Counter(
            "ccserver_registrations",
            "Client registration operations (RFC 7591/7592) that succeeded.",
            ["action"],
            registry=registry,
        )
        self.store_errors = Counter(
            "ccserver_store_errors",
            "Requests answered 503 because the store did not answer.",
            registry=registry,
        )
        self.webhook_duration = Histogram(
            "ccserver_webhook_request_duration_seconds",
            "Time the webhook grant handler took to decide (its HTTP request).",
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.rate_limited_total = Counter(
            "ccserver_rate_limited",
            "Requests refused by a limit (429).",
            ["what"],
            registry=registry,
        )
        self.token_rate_limited = Counter(
            "ccserver_token_rate_limited",
            "Token requests refused (429) by the client's token rate limit, by client: the "
            f"first {MAX_CLIENT_LABELS} clients refused in each process by their client_id, "
            f"the others as {OTHER_CLIENT!r}.",
            ["client_id"],
            registry=registry,
        )
        self._limited_clients: dict[str, Any] = {}
        # Label children bound once: the hot path looks them up in a dict.
        self._issued: dict[tuple[str, str, str], Any] = {}
        self._errors = {error: self.token_errors.labels(error) for error in TOKEN_ERRORS}
        self._other_error = self.token_errors.labels(OTHER_ERROR)
        self._routes: dict[str, tuple[Any, dict[int, Any]]] = {}
        for route in (*routes, OTHER_ROUTE):
            self._route(route)

    def _route(self, route: str) -> tuple[Any, dict[int, Any]]:
        bound = self._routes.get(route)
        if bound is None:
            bound = self._routes[route] = (self.http_duration.labels(route), {})
        return bound

    def token_issued(self, token: IssuedToken) -> None:
        key = (token.token_format, token.alg, token.auth_method)
        child = self._issued.get(key)
        if child is None:
            child = self._issued[key] = self.tokens_issued.labels(*key)
        child.inc()

    def token_failed(self, error: str) -> None:
        self._errors.get(error, self._other_error).inc()

    def request_finished(self, path: bytes, code: int, seconds: float) -> None:
        route = self._route_of(path) or OTHER_ROUTE
        duration, codes = self._routes.get(route) or self._route(OTHER_ROUTE)
        counter = codes.get(code)
        if counter is None:
            counter = codes[code] = self.http_requests.labels(route, str(code))
        counter.inc()
        duration.observe(seconds)

    def registration(self, action: str) -> None:
        self.registrations.labels(action).inc()

    def store_error(self) -> None:
        self.store_errors.inc()

    def rate_limited(self, what: str) -> None:
        self.rate_limited_total.labels(what).inc()

    def client_rate_limited(self, client_id: str) -> None:
        child = self._limited_clients.get(client_id)
        if child is None:
            label = client_id if len(self._limited_clients) < MAX_CLIENT_LABELS else OTHER_CLIENT
            child = self.token_rate_limited.labels(label)
            if label != OTHER_CLIENT:
                self._limited_clients[client_id] = child
        child.inc()

    def observe_handler(self, handler: Any) -> Any:
        """
        The webhook grant handler, timed: its decision is its HTTP request.
        """
        timed = _TimedHandler(handler, self.webhook_duration)
        # what it decides (client credentials, token exchanges) is what
        # the handler it times decides
        directlyProvides(timed, providedBy(handler))
        return timed


class _TimedHandler:
    """
    A grant handler that reports how long each decision took (the webhook
    handler's C{authorize}: one HTTP request to the web service).
    """

    def __init__(self, handler: Any, histogram: Histogram) -> None:
        self._handler = handler
        self._histogram = histogram

    def __repr__(self) -> str:
        return repr(self._handler)

    def authorize(self, grant: GrantRequest) -> Deferred[GrantAuthorization]:
        return self._timed(self._handler.authorize, grant)

    def authorize_exchange(self, exchange: TokenExchangeRequest) -> Deferred[GrantAuthorization]:
        return self._timed(self._handler.authorize_exchange, exchange)

    def _timed(self, decide: Callable[[Any], Any], request: Any) -> Deferred[GrantAuthorization]:
        started = perf_counter()

        def observed(result: Any) -> Any:
            self._histogram.observe(perf_counter() - started)
            return result

        return maybeDeferred(decide, request).addBoth(observed)


def scrape_registry(registry: CollectorRegistry) -> CollectorRegistry:
    """
    What a scrape reads: in multiprocess mode, a registry that sums every
    process's files (and this process's own CPU and memory); otherwise the
    registry the metrics live in, with the process collector.
    """
    if multiprocess():
        scraped = CollectorRegistry()
        MultiProcessCollector(scraped)
        ProcessCollector(registry=scraped)
        return scraped
    ProcessCollector(registry=registry)
    return registry


class MetricsResource(Resource):
    """
    C{/metrics}: the Prometheus text exposition of C{registry}.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"Cache-Control", b"no-store")
        return generate_latest(self._registry)


def metrics_root(registry: CollectorRegistry) -> Resource:
    """
    The metrics listener's resources: C{/metrics}, and nothing else.
    """
    root = _MetricsRoot()
    root.putChild(b"metrics", MetricsResource(registry))
    return root


class _MetricsRoot(Resource):
    def getChild(self, path: bytes, request: IRequest) -> Any:
        return notFound()
