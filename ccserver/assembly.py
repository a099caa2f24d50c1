"""
The object graph of one configuration: the protocol objects over the store
and the grant handler, the web site over them, and the metrics.

Nothing here reads a file, opens a connection, listens, or looks at the
process (its arguments, environment, CPU count): what comes from outside is
passed in, already read and checked (L{ccserver.tap.prepare}), so a test
builds the whole server with a L{twisted.internet.testing.MemoryReactorClock}
or a L{twisted.internet.task.Clock}.  L{ccserver.services.service_tree}
then puts the result into services.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from attrs import frozen
from cryptography import x509
from prometheus_client import CollectorRegistry
from twisted.logger import Logger
from twisted.web.server import Site

from ccserver import audit
from ccserver.accesslog import AccessLog
from ccserver.auditlog import AuditWriter
from ccserver.config import Config, TrustedIssuerConfig
from ccserver.firststart import FirstStart
from ccserver.grants import builtin_grant_types
from ccserver.health import Readiness
from ccserver.interfaces import IClientCredentialsGrantHandler, IStore
from ccserver.keys import KeyEncryptor, Keyring, audit_key_events
from ccserver.keysets import (
    DiscoveredKeys,
    FetchedKeys,
    FileKeys,
    HTTPGetter,
    KeySetFile,
    KeySetSource,
    TrustedKeys,
)
from ccserver.listening import Listening
from ccserver.logfiles import Destination
from ccserver.metrics import (
    NO_METRICS,
    Metrics,
    MultiprocessDirectory,
    NoMetrics,
    metrics_root,
    scrape_registry,
)
from ccserver.model import TokenRateLimit
from ccserver.oauth.assertions import MAX_CLIENT_KEYS, AssertionVerifier
from ccserver.oauth.clientauth import ClientAuthenticator
from ccserver.oauth.discovery import metadata
from ccserver.oauth.dpop import DPOP_NONCE_KEY_PURPOSE, DPoPVerifier, NonceIssuer
from ccserver.oauth.federation import (
    MAX_ISSUER_KEYS,
    Federation,
    TrustedIssuer,
    WorkloadTokenValidator,
)
from ccserver.oauth.grants import OfferedGrants
from ccserver.oauth.introspection import AccessTokenValidator, TokenIntrospection
from ccserver.oauth.limits import AuthLimits, IssuanceLimit, audit_rate_limited
from ccserver.oauth.registration import ClientRegistry
from ccserver.oauth.tokens import (
    Signer,
    TokenMinter,
    rsa_in_threads,
    rsa_signing_in_threads,
    sign_inline,
)
from ccserver.outbound import AddressPolicy, http_client, operator_url_warning
from ccserver.proxies import trusted_networks
from ccserver.stores.cache import CachingClientStore
from ccserver.stores.memory import MemoryStore
from ccserver.tls import ChainVerifier, ClientCertificateReader
from ccserver.tracing import TracedStore, Tracing, traced_handler, traced_signer
from ccserver.web import ROUTES, CCServerApp, CCServerSite, route_template

_log = Logger()


@frozen
class Prepared:
    """
    What a configuration needs from outside the process's memory, read or
    made by L{ccserver.tap.prepare} once the configuration is checked.

    @ivar store: made, not opened.
    @ivar handler: the grant handler, as its plugin made it.
    @ivar grants: the grant types offered, made by their plugins over the
        token endpoint, which L{assemble} connects.
    @ivar first: what the first-start files hold.
    @ivar listening: the endpoints, parsed and checked.
    @ivar client_ca: the certificates of C{[tls] client_ca}, if set.
    @ivar metrics_directory: the main process's multiprocess metrics
        directory, with C{--metrics} and C{--workers N}.
    @ivar audit: the writer of the audit trail, its destination open
        (None only where a test builds a tree without one).
    @ivar tracing: the spans' exporter, with C{[tracing] endpoint}.
    @ivar access_log: where the access log goes, opened; None when it is
        off.
    """

    store: IStore
    handler: IClientCredentialsGrantHandler
    first: FirstStart
    listening: Listening
    client_ca: tuple[x509.Certificate, ...] | None = None
    metrics_directory: MultiprocessDirectory | None = None
    grants: OfferedGrants | None = None
    audit: AuditWriter | None = None
    tracing: Tracing | None = None
    access_log: Destination | None = None


@frozen
class Server:
    """
    What the services run: the parts one configuration makes.

    @ivar prepared: what they were made from (the store, the grant handler
        as its plugin made it, the first-start files, the endpoints).
    @ivar metrics_site: the C{/metrics} site, when C{--metrics} is given.
    @ivar issuer_keys: the fetcher of the trusted issuers' keys, when there
        are trusted issuers.
    @ivar access_log: the access log's lines waiting to be written, when it
        is on.
    """

    config: Config
    prepared: Prepared
    site: CCServerSite
    keyring: Keyring
    jwks_fetcher: KeySetSource
    metrics_site: Site | None
    issuer_keys: KeySetSource | None = None
    access_log: AccessLog | None = None


def assemble(config: Config, prepared: Prepared, reactor: Any, cpu_count: int | None) -> Server:
    """
    Make every part of the server from a checked configuration and what
    was prepared for it.

    @param cpu_count: the machine's cores, for C{[tokens] rsa_signing}.
    """
    metrics = make_metrics(config)
    jwks_fetcher = make_jwks_fetcher(reactor, config)
    issuer_keys = make_issuer_keys(reactor, config) if config.trusted_issuers else None
    warn_about_issuer_urls(config)
    access_log = None if prepared.access_log is None else AccessLog(prepared.access_log)
    site, keyring = make_site(
        reactor,
        config,
        prepared.store,
        _observed(prepared.handler, config, metrics),
        prepared.first.master_token_digest,
        prepared.first.encryptor,
        default_signer(reactor, config, cpu_count),
        jwks_fetcher,
        metrics,
        certificate_reader(reactor, config, prepared.client_ca),
        prepared.grants,
        issuer_keys,
        prepared.tracing,
        access_log,
    )
    return Server(
        config,
        prepared,
        site,
        keyring,
        jwks_fetcher,
        _metrics_site(metrics, reactor),
        issuer_keys,
        access_log,
    )


def make_metrics(config: Config) -> NoMetrics:
    """
    The Prometheus metrics with C{--metrics}, else the observer that drops
    every report.  In a process whose workers share metrics, the
    multiprocess directory must be chosen first (L{ccserver.tap.prepare}).
    """
    if config.metrics.listen is None:
        return NO_METRICS
    return Metrics(CollectorRegistry(), route_template, ROUTES)


def _observed(
    handler: IClientCredentialsGrantHandler, config: Config, metrics: NoMetrics
) -> IClientCredentialsGrantHandler:
    # ccserver_webhook_request_duration_seconds times the webhook's decision,
    # which is its HTTP request: no other handler's.
    if config.grant_handler == "webhook":
        observed: IClientCredentialsGrantHandler = metrics.observe_handler(handler)
        return observed
    return handler


def _metrics_site(metrics: NoMetrics, reactor: Any) -> Site | None:
    if not isinstance(metrics, Metrics):
        return None
    site = Site(metrics_root(scrape_registry(metrics.registry)), reactor=reactor)
    site.displayTracebacks = False
    site.noisy = False
    return site


def make_site(
    reactor: Any,
    config: Config,
    store: IStore,
    handler: IClientCredentialsGrantHandler,
    master_token_digest: str,
    encryptor: KeyEncryptor,
    sign: Signer,
    jwks_fetcher: KeySetSource,
    metrics: NoMetrics = NO_METRICS,
    certificates: ClientCertificateReader | None = None,
    offered: OfferedGrants | None = None,
    issuer_keys: KeySetSource | None = None,
    tracing: Tracing | None = None,
    access_log: AccessLog | None = None,
) -> tuple[CCServerSite, Keyring]:
    """
    The web site over the protocol objects, and the keyring they sign with.
    Nothing is opened or loaded here: the store is opened, and the keys
    loaded, by the services.

    @param offered: the grant types to offer, made over their endpoint
        [default: the built-in ones, made here].
    @param issuer_keys: fetches the trusted issuers' keys (by default, for
        a configuration with trusted issuers, a fetcher of its own).
    @param tracing: the spans' tracer, when C{[tracing]} is on: the parts
        on a request's way are then made traced (L{_traced}); when it is
        off, none of them knows of tracing.
    @param access_log: where each request's line goes (None: nowhere; the
        configuration's C{access_log} says whether the daemon makes one).
    """
    now = reactor.seconds
    keys_store = store
    if tracing is not None:
        store, handler, sign = _traced(tracing, store, handler, sign)
    keyring = Keyring(
        keys_store,
        encryptor,
        config.tokens.signing_alg,
        config.tokens.max_lifetime,
        now,
        # the first key, scheduled rotations, activations: the server's own
        audit_key_events(audit.SERVER),
    )
    clients = CachingClientStore(store, now, config.store.client_cache_seconds)
    limits = _auth_limits(config, store, reactor, metrics)
    federation = None
    if config.trusted_issuers:
        federation = make_federation(
            config, clients, issuer_keys or make_issuer_keys(reactor, config), now
        )
    authenticator = _authenticator(
        config, clients, store, encryptor, limits, jwks_fetcher, now, federation
    )
    if tracing is not None:
        _trace_authentication(authenticator, tracing)
    trusted_proxies = trusted_networks(config.limits.trusted_proxies)
    introspection = TokenIntrospection(
        clients,
        store,
        keyring,
        config.issuer,
        config.tokens.introspection,
        now,
        master_token_digest=master_token_digest,
        authenticator=authenticator,
        limits=limits,
    )
    if offered is None:
        offered = OfferedGrants.made(
            builtin_grant_types(), config.issuer, handler, reactor, federation is not None
        )
    access_tokens = AccessTokenValidator(introspection, clients)
    offered.endpoint.connect(
        clients,
        _minter(config, keyring, store, sign, now),
        _dpop_verifier(config, store, encryptor, now),
        authenticator,
        _issuance_limit(config, store, now, metrics),
        # RFC 8693 subject and actor tokens, by type: this server's own
        # access tokens, and JWTs (this server's, and the trusted issuers')
        validators=[
            access_tokens,
            *(
                []
                if federation is None
                else [WorkloadTokenValidator(federation, access_tokens, config.issuer)]
            ),
        ],
        handler=handler,
    )
    grants = offered.grants
    app = CCServerApp(
        grants=grants,
        introspection=introspection,
        registry=_registry(
            config, clients, store, master_token_digest, encryptor, limits, now, grants.grant_types
        ),
        keyring=keyring,
        issuer=config.issuer,
        discovery_json=_discovery_json(config, grants.grant_types),
        jwks_max_age=config.keys.activation_delay // 2,
        readiness=Readiness(store, keyring, reactor, config.store.timeout),
        metrics=metrics,
        certificates=certificates,
        trusted_proxies=trusted_proxies,
        tracing=tracing,
    )
    site = CCServerSite(
        app.resource(),
        reactor,
        access_log,
        config.http,
        metrics,
        trusted_proxies,
    )
    return site, keyring


#: The store's operations, each a span when tracing is on.
STORE_OPERATIONS = frozenset(IStore.names(all=True)) - {"open", "close", "url"}


def _traced(
    tracing: Tracing, store: IStore, handler: IClientCredentialsGrantHandler, sign: Signer
) -> tuple[IStore, IClientCredentialsGrantHandler, Signer]:
    """
    The store (under the client cache: a cached client costs no span), the
    grant handler and the signer, each of whose operations is a span.  The
    keyring keeps the plain store: its reloads, every minute, are no
    request's.
    """
    traced_store: IStore = TracedStore(store, tracing, STORE_OPERATIONS)  # type: ignore[assignment]
    return traced_store, traced_handler(handler, tracing), traced_signer(sign, tracing)


def _trace_authentication(authenticator: ClientAuthenticator, tracing: Tracing) -> None:
    """
    Client authentication as a span (C{client authentication}) that says
    which client it found: the caller of a request (its credentials), and
    a workload token's client (the JWT bearer grant).
    """

    def found(span: Any, caller: Any) -> None:
        span.set_attribute("oauth.client_id", caller.client.client_id)

    # the instance's methods, replaced: the token and introspection
    # endpoints, which share the authenticator, all see the traced ones
    for name in ("caller", "workload"):
        traced = tracing.coroutine("client authentication", getattr(authenticator, name), found)
        setattr(authenticator, name, traced)


def _auth_limits(config: Config, store: IStore, reactor: Any, metrics: NoMetrics) -> AuthLimits:
    # every refusal by a limit is counted: ccserver_rate_limited_total{what}
    budget = config.limits.failed_auth_per_minute
    return AuthLimits(
        store if budget else None,
        reactor.seconds,
        budget,
        60.0,
        metrics.rate_limited,
        cap=config.limits.failed_auth_per_client_per_minute,
        known_for=config.limits.known_source_seconds,
        # while the store is unreachable, each process counts on its own
        fallback=MemoryStore(),
        # the audit trail's limits.block_ended
        clock=reactor,
    )


def _issuance_limit(
    config: Config, store: IStore, now: Callable[[], float], metrics: NoMetrics
) -> IssuanceLimit:
    """
    The limits on each client's tokens: its own C{token_rate_limit}, else
    C{[limits] tokens_per_client_per_second}; counted in the store, and
    refusals counted in the metrics and told to the audit trail.
    """
    limits = config.limits
    rate = limits.tokens_per_client_per_second
    return IssuanceLimit(
        store,
        None if rate is None else TokenRateLimit.of(rate, limits.tokens_per_client_burst),
        now,
        on_limited=metrics.rate_limited,
        on_client_limited=metrics.client_rate_limited,
        on_blocked=audit_rate_limited,
        # while the store is unreachable, each process counts on its own
        fallback=MemoryStore(),
    )


def _minter(
    config: Config, keyring: Keyring, store: IStore, sign: Signer, now: Callable[[], float]
) -> TokenMinter:
    return TokenMinter(
        keyring=keyring,
        tokens=store,
        issuer=config.issuer,
        lifetime=config.tokens.lifetime,
        max_lifetime=config.tokens.max_lifetime,
        audience=config.tokens.audience,
        token_format=config.tokens.format,
        now=now,
        sign=sign,
    )


def _authenticator(
    config: Config,
    clients: CachingClientStore,
    store: IStore,
    encryptor: KeyEncryptor,
    limits: AuthLimits,
    jwks_fetcher: KeySetSource,
    now: Callable[[], float],
    federation: Federation | None,
) -> ClientAuthenticator:
    assertions = AssertionVerifier(
        tokens=store,
        issuer=config.issuer,
        now=now,
        max_lifetime=config.client_auth.max_assertion_lifetime,
        leeway=config.client_auth.leeway,
        key_sets=jwks_fetcher,
        secret_encryptor=encryptor,
    )
    return ClientAuthenticator(
        clients, assertions, limits, now=now, key_sets=jwks_fetcher, federation=federation
    )


def _registry(
    config: Config,
    clients: CachingClientStore,
    store: IStore,
    master_token_digest: str,
    encryptor: KeyEncryptor,
    limits: AuthLimits,
    now: Callable[[], float],
    grant_types: Sequence[str],
) -> ClientRegistry:
    return ClientRegistry(
        clients,
        master_token_digest,
        now,
        token_max_lifetime=config.tokens.max_lifetime,
        client_cache_seconds=config.store.client_cache_seconds,
        authoritative=store,
        secret_encryptor=encryptor,
        limits=limits,
        secret_rotation_grace=config.clients.secret_rotation_grace,
        jwks_uri_policy=config.client_auth.jwks_uri_policy,
        grant_types=grant_types,
        trusted_issuers=[trusted.issuer for trusted in config.trusted_issuers],
        initial_access_tokens=store,
    )


def make_jwks_fetcher(
    reactor: Any, config: Config, http: HTTPGetter | None = None
) -> KeySetSource:
    """
    The fetcher of clients' C{jwks_uri}, over its own persistent connection
    pool (released by L{KeySetSource.close}) unless C{http} is given.
    """
    return _key_set_source(
        reactor, config, config.client_auth.jwks_uri_policy, MAX_CLIENT_KEYS, http
    )


def make_issuer_keys(
    reactor: Any, config: Config, http: HTTPGetter | None = None
) -> KeySetSource:
    """
    The fetcher of the trusted issuers' keys (their OpenID configuration,
    C{jwks_uri} or SPIFFE bundle endpoint), over its own persistent
    connection pool unless C{http} is given: URLs the operator wrote, so
    any address may be reached, over http too.  Its timeouts and caching
    are those of clients' C{jwks_uri} (C{[client_auth] jwks_uri_*}); a
    token with an unknown C{kid} fetches its issuer's keys again at most
    once per C{jwks_uri_refetch_seconds} for each issuer.
    """
    return _key_set_source(reactor, config, AddressPolicy.any_address(), MAX_ISSUER_KEYS, http)


def _key_set_source(
    reactor: Any,
    config: Config,
    policy: AddressPolicy,
    max_keys: int,
    http: HTTPGetter | None,
) -> KeySetSource:
    """
    A key-set source with C{[client_auth]}'s timeout and caching, under
    C{policy}, over a connection pool of its own unless C{http} is given.
    """
    auth = config.client_auth
    close = None
    getter: HTTPGetter
    if http is None:
        getter, pool = http_client(reactor, connect_timeout=auth.jwks_uri_timeout, policy=policy)
        close = pool.closeCachedConnections
    else:
        getter = http
    return KeySetSource(
        getter,
        reactor,
        policy=policy,
        timeout=auth.jwks_uri_timeout,
        default_cache=auth.jwks_uri_cache_seconds,
        min_cache=auth.jwks_uri_min_cache_seconds,
        max_cache=auth.jwks_uri_max_cache_seconds,
        refetch_interval=auth.jwks_uri_refetch_seconds,
        max_keys=max_keys,
        close=close,
    )


def make_federation(
    config: Config, clients: CachingClientStore, issuer_keys: KeySetSource, now: Callable[[], float]
) -> Federation:
    """
    The checker of workload tokens, over the C{[[trusted_issuers]]}.
    """
    return Federation(
        [
            TrustedIssuer(
                trusted.issuer,
                frozenset(trusted.audiences),
                trusted.max_token_lifetime,
                _trusted_keys(trusted, issuer_keys),
            )
            for trusted in config.trusted_issuers
        ],
        clients,
        now=now,
        leeway=config.client_auth.leeway,
    )


def _trusted_keys(trusted: TrustedIssuerConfig, issuer_keys: KeySetSource) -> TrustedKeys:
    if trusted.jwks_file is not None:
        return FileKeys(KeySetFile(trusted.jwks_file, MAX_ISSUER_KEYS))
    if trusted.jwks_uri is not None:
        return FetchedKeys(issuer_keys, trusted.jwks_uri, trusted.issuer)
    return DiscoveredKeys(issuer_keys, trusted.issuer)


def warn_about_issuer_urls(config: Config) -> None:
    """
    Log a warning for each trusted issuer's URL that is plain http or
    names a private address, but for the loopback's: allowed, as the
    operator wrote them, but worth a second look.
    """
    for trusted in config.trusted_issuers:
        urls = [trusted.jwks_uri] if trusted.jwks_uri else []
        if not trusted.spiffe and trusted.jwks_file is None:
            urls.append(trusted.issuer)
        for url in urls:
            warning = operator_url_warning(url)
            if warning is not None:
                _log.warn(
                    "Trusted issuer {issuer}: its keys are fetched from {url}: {warning}",
                    issuer=trusted.issuer,
                    url=url,
                    warning=warning,
                )


def _dpop_verifier(
    config: Config, store: IStore, encryptor: KeyEncryptor, now: Callable[[], float]
) -> DPoPVerifier:
    dpop = config.dpop
    nonces = (
        NonceIssuer(encryptor.derive(DPOP_NONCE_KEY_PURPOSE), dpop.nonce_lifetime, now)
        if dpop.require_nonce
        else None
    )
    return DPoPVerifier(store, dpop.signing_algs, dpop.max_age, dpop.leeway, now, nonces)


def _discovery_json(config: Config, grant_types: Sequence[str]) -> bytes:
    return json.dumps(
        metadata(
            config.issuer,
            config.tokens.signing_alg,
            scopes=config.discovery.scopes_supported,
            dpop_signing_algs=config.dpop.signing_algs,
            mtls=config.mtls_enabled,
            mtls_base_url=config.tls.base_url,
            federation=bool(config.trusted_issuers),
            grant_types=grant_types,
        ),
        separators=(",", ":"),
    ).encode()


def certificate_reader(
    reactor: Any, config: Config, client_ca: Sequence[x509.Certificate] | None
) -> ClientCertificateReader | None:
    """
    Where requests' client certificates come from (RFC 8705), or None when
    no listener or proxy can bring one.

    @param client_ca: the certificates of C{[tls] client_ca}, if it is set.
    """
    if not config.mtls_enabled:
        return None
    header = config.mtls.proxy_header
    return ClientCertificateReader(
        now=reactor.seconds,
        chains=ChainVerifier(client_ca, reactor.seconds) if client_ca else None,
        proxy_header=header.lower().encode("ascii") if header else None,
        trusted_proxies=trusted_networks(config.mtls.trusted_proxies),
    )


def default_signer(reactor: Any, config: Config, cpu_count: int | None) -> Signer:
    """
    Where signatures are computed, by C{[tokens] rsa_signing}
    (L{rsa_signing_in_threads}): each worker decides the same, from the
    same configuration and machine.
    """
    if rsa_signing_in_threads(config.tokens.rsa_signing, config.workers, cpu_count):
        return rsa_in_threads(reactor)
    return sign_inline
