"""
Traces: OpenTelemetry spans for each request, and for what it spends its
time on (client authentication, the store, the grant handler and its
webhook call, signing), exported with OTLP (C{[tracing]}).

Off unless configured, and then free: nothing on a request's way knows of
tracing.  With C{[tracing] endpoint} set, the composition root
(L{ccserver.assembly}) builds the server with traced parts instead: a
request class whose C{process} opens the request's span
(L{Tracing.request_started}), and wrappers around the client
authenticator, the store, the grant handler and the signer, made here.
Without it, none of them exists, and no span, context or OpenTelemetry
call is made on a request's way; the OpenTelemetry packages need not even
be installed (C{pip install 'ccserver[otel]'}).

A request's span is the current span while its code runs: Twisted runs a
coroutine (C{Deferred.fromCoroutine}, Klein's async routes) in a copy of
the context it was started in, so the spans opened below it have it as
their parent however long they wait.  The one outbound HTTP module
(L{ccserver.outbound}) asks L{active} whether a request is traced, to
give the webhook's request a span of its own and to send its W3C trace
context (C{traceparent}, C{tracestate}) with it.

This module imports nothing else of ccserver.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer
    from twisted.internet.defer import Deferred
    from twisted.web.http_headers import Headers

T = TypeVar("T")

#: The instrumentation scope of ccserver's spans.
SCOPE = "ccserver"

#: Whether the OpenTelemetry SDK can be imported (C{ccserver[otel]}).
INSTALL_HINT = "pip install 'ccserver[otel]' (opentelemetry-sdk, opentelemetry-exporter-otlp-proto-http)"

#: The tracing of the request whose code runs now, if it is traced: set
#: while a traced request is processed, and so in the context every
#: coroutine it starts runs in.
_ACTIVE: ContextVar[Tracing | None] = ContextVar("ccserver_tracing", default=None)


def active() -> Tracing | None:
    """
    The tracing of the request being handled, when it is traced (for
    L{ccserver.outbound}); None otherwise: one context variable read.
    """
    return _ACTIVE.get()


def available() -> bool:
    """
    Whether the OpenTelemetry SDK and its OTLP exporter are installed.
    """
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return False
    return True


def display_url(url: str) -> str:
    """
    A URL as a span says it: no user, password or query (a secret may be
    in any of them).
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class _HeadersSetter:
    """
    Where the propagator writes the trace context: Twisted's headers.
    """

    def set(self, carrier: Headers, key: str, value: str) -> None:
        carrier.setRawHeaders(key.encode("ascii"), [value.encode("ascii")])


class _HeadersGetter:
    """
    Where the propagator reads a request's trace context from: Twisted's
    headers.
    """

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        values = carrier.getRawHeaders(key.encode("ascii"))
        if values is None:
            return None
        return [value.decode("latin-1") for value in values]

    def keys(self, carrier: Headers) -> list[str]:
        return [name.decode("latin-1") for name, _ in carrier.getAllRawHeaders()]


class Tracing:
    """
    The spans of one process: a tracer over its own provider (never the
    process-global one, so that tests and several servers in one process
    keep theirs apart), the W3C trace context propagator, and what ends
    the provider at a stop (its last spans exported).

    Make one with L{Tracing.exporting} (the OTLP exporter) or
    L{Tracing.to} (an exporter of the caller's: the SDK's in-memory one in
    tests).
    """

    def __init__(self, provider: TracerProvider, trust_incoming: bool) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer: Tracer = provider.get_tracer(SCOPE)
        self.trust_incoming = trust_incoming
        self._propagator = TraceContextTextMapPropagator()
        # duck-typed as the propagator's Setter and Getter, whose module is
        # not imported while tracing is off
        self._setter: Any = _HeadersSetter()
        self._getter: Any = _HeadersGetter()

    @classmethod
    def to(
        cls,
        exporter: SpanExporter,
        *,
        service_name: str = "ccserver",
        service_version: str = "",
        sampling: float = 1.0,
        trust_incoming: bool = True,
        batch: bool = True,
    ) -> Tracing:
        """
        Spans exported by C{exporter}: in batches from a thread of the SDK's
        (C{batch}), or each as it ends (the tests').

        @param sampling: the fraction of traces kept (C{TraceIdRatioBased});
            of a request that came with a trace context, what its
            C{sampled} flag says when C{trust_incoming}.
        """
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        ratio = TraceIdRatioBased(sampling)
        resource = {"service.name": service_name}
        if service_version:
            resource["service.version"] = service_version
        provider = TracerProvider(
            resource=Resource.create(resource),
            sampler=ParentBased(ratio) if trust_incoming else ratio,
        )
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        provider.add_span_processor(processor)
        return cls(provider, trust_incoming)

    @classmethod
    def exporting(
        cls,
        endpoint: str,
        *,
        service_name: str,
        service_version: str,
        sampling: float,
        trust_incoming: bool,
        timeout: float,
    ) -> Tracing:
        """
        Spans exported with OTLP over HTTP (protobuf) to C{endpoint} (a
        collector's C{/v1/traces}), in batches, from the SDK's own thread:
        never on a request's way.  The exporter reads
        C{OTEL_EXPORTER_OTLP_HEADERS} (a collector's credentials) and
        C{OTEL_EXPORTER_OTLP_CERTIFICATE} from the environment itself.
        """
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint, timeout=timeout)
        return cls.to(
            exporter,
            service_name=service_name,
            service_version=service_version,
            sampling=sampling,
            trust_incoming=trust_incoming,
        )

    def shutdown(self) -> None:
        """
        Export what is left and stop the exporter's thread (blocks: run it
        in a thread).
        """
        self.provider.shutdown()

    # the request's span

    def request_started(
        self, method: str, route: str, path: str, headers: Headers
    ) -> tuple[Span, Callable[[], None]]:
        """
        Open a request's span (C{SERVER}, named C{"{method} {route}"}) and
        make it the current span, with this tracing L{active}; the
        incoming trace context continues if C{trust_incoming}.

        @return: the span, and what makes it no longer current (called
            once the request's code has run; the span ends later, with the
            request: L{request_finished}).
        """
        from opentelemetry import context, trace

        parent = self._propagator.extract(headers, getter=self._getter) if self.trust_incoming else None
        span = self.tracer.start_span(
            f"{method} {route}",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route, "url.path": path},
        )
        attached = context.attach(trace.set_span_in_context(span, parent))
        activated = _ACTIVE.set(self)

        def leave() -> None:
            _ACTIVE.reset(activated)
            context.detach(attached)

        return span, leave

    def request_finished(self, span: Span, status: int, source: str | None = None) -> None:
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("http.response.status_code", status)
        if source:
            span.set_attribute("client.address", source)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    # the parts' spans

    def coroutine(
        self,
        name: str,
        function: Callable[..., Coroutine[Any, Any, T]],
        describe: Callable[[Span, T], None] | None = None,
    ) -> Callable[..., Coroutine[Any, Any, T]]:
        """
        C{function}, an async function, run in a span of its own (the
        current one while it runs); C{describe} adds what its result says.
        """
        tracer = self.tracer

        async def traced(*args: Any, **kwargs: Any) -> T:
            with tracer.start_as_current_span(
                name, record_exception=False, set_status_on_exception=False
            ) as span:
                try:
                    result = await function(*args, **kwargs)
                except BaseException as error:
                    failed(span, error)
                    raise
                if describe is not None:
                    describe(span, result)
                return result

        return traced

    def deferred(
        self, name: str, function: Callable[..., Any], attributes: Mapping[str, Any] | None = None
    ) -> Callable[..., Deferred[Any]]:
        """
        C{function}, which returns a value or a Deferred, in a span that is
        current while it is called (what it starts is the span's child) and
        ends when its result comes.
        """
        from opentelemetry import context, trace
        from twisted.internet.defer import maybeDeferred

        tracer = self.tracer

        def traced(*args: Any, **kwargs: Any) -> Deferred[Any]:
            span = tracer.start_span(name, attributes=attributes)
            attached = context.attach(trace.set_span_in_context(span))
            try:
                result = maybeDeferred(function, *args, **kwargs)
            finally:
                context.detach(attached)
            return result.addBoth(_ended, span)

        return traced

    def child(self, name: str, attributes: Mapping[str, Any] | None = None) -> Span:
        """
        A span under the current one, not made current: for work that
        starts nothing under it (a store operation).  The caller ends it.
        """
        return self.tracer.start_span(name, attributes=attributes)

    def outgoing(self, method: str, url: str, headers: Headers) -> Callable[[T], T]:
        """
        A C{CLIENT} span for an outgoing HTTP request under the current
        span, its W3C trace context put into C{headers}; what ends it, to
        add to the answer's Deferred with C{addBoth}.
        """
        from opentelemetry import trace

        span = self.tracer.start_span(
            method,
            kind=trace.SpanKind.CLIENT,
            attributes={"http.request.method": method, "url.full": display_url(url)},
        )
        self._propagator.inject(headers, context=trace.set_span_in_context(span), setter=self._setter)

        def answered(result: T) -> T:
            code = getattr(result, "code", None)
            if isinstance(code, int):
                span.set_attribute("http.response.status_code", code)
            return _ended(result, span)

        return answered


def failed(span: Span, error: BaseException) -> None:
    """
    Say on C{span} how it failed: an OAuth error's code (the caller's
    mistake, not the server's), or the exception's type as an error.
    """
    from opentelemetry.trace import Status, StatusCode

    code = getattr(error, "error", None)
    if isinstance(code, str):
        span.set_attribute("oauth.error", code)
    else:
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))


def _ended(result: T, span: Span) -> T:
    from twisted.python.failure import Failure

    if isinstance(result, Failure) and result.value is not None:
        failed(span, result.value)
    span.end()
    return result


def around(span: Span, call: Callable[..., Any], *args: Any) -> Any:
    """
    C{call(*args)} in C{span}, which ends when its result comes (at once,
    or when the Deferred it returns fires), having said how it failed.
    """
    try:
        result = call(*args)
    except BaseException as error:
        failed(span, error)
        span.end()
        raise
    if hasattr(result, "addBoth"):
        return result.addBoth(_ended, span)
    span.end()
    return result


class TracedStore:
    """
    A store whose every operation is a span (C{store <operation>}) under
    the current one: the store wrapped when tracing is on, under the
    client cache (a cached client costs no span).
    """

    def __init__(self, store: Any, tracing: Tracing, operations: Iterable[str]) -> None:
        self._store = store
        self._tracing = tracing
        self._operations = frozenset(operations)
        self.url = store.url

    def __repr__(self) -> str:
        return f"<TracedStore {self._store!r}>"

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._store, name)
        if name not in self._operations:
            return value
        tracing = self._tracing

        def operation(*args: Any, **kwargs: Any) -> Any:
            span = tracing.child(f"store {name}", {"db.operation.name": name})
            return around(span, lambda: value(*args, **kwargs))

        return operation


def traced_handler(handler: Any, tracing: Tracing) -> Any:
    """
    A grant handler whose decisions (C{authorize}, and C{authorize_exchange}
    if it has one) are spans (C{grant handler}), current while it is asked:
    the webhook's request is their child.  Everything else is the handler's.
    """
    return _TracedHandler(handler, tracing)


class _TracedHandler:
    def __init__(self, handler: Any, tracing: Tracing) -> None:
        self._handler = handler
        self.authorize = tracing.deferred("grant handler", handler.authorize)
        if hasattr(handler, "authorize_exchange"):
            self.authorize_exchange = tracing.deferred(
                "grant handler", handler.authorize_exchange, {"oauth.grant": "token_exchange"}
            )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handler, name)

    def __repr__(self) -> str:
        return repr(self._handler)


def traced_signer(sign: Callable[[Any, dict[str, Any]], T], tracing: Tracing) -> Callable[[Any, dict[str, Any]], T]:
    """
    A signer whose signatures are spans (C{sign}, with the key's C{alg}
    and C{kid}), until the signature is made: inline, or in a thread.
    """

    def signed(key: Any, claims: dict[str, Any]) -> T:
        span = tracing.child("sign", {"jws.alg": key.alg, "jws.kid": key.kid})
        result: T = around(span, sign, key, claims)
        return result

    return signed
