"""
C{twist ccserver}: command-line options, and the service they make.

L{Options} reads and checks the command line and the configuration file;
L{makeService} is the composition root: it makes the first-start files,
the store, the grant handler and the web site, and returns the tree of
services (L{ccserver.services}) that opens the store, then listens.
Configuration mistakes are found before anything listens, and end the
process with one line on stderr.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.server import Site

from ccserver import firststart
from ccserver.config import Config, load_config
from ccserver.errors import ConfigError
from ccserver.handlers import available, make_handler
from ccserver.health import Readiness
from ccserver.interfaces import IClientCredentialsGrantHandler, IStore
from ccserver.keys import KeyEncryptor, Keyring
from ccserver.metrics import (
    NO_METRICS,
    Metrics,
    MultiprocessDirectory,
    NoMetrics,
    install,
    metrics_root,
    scrape_registry,
    use_multiprocess_directory,
)
from ccserver.oauth.assertions import AssertionVerifier, HTTPGetter, JWKSFetcher
from ccserver.oauth.clientauth import ClientAuthenticator
from ccserver.oauth.discovery import metadata
from ccserver.oauth.dpop import DPOP_NONCE_KEY_PURPOSE, DPoPVerifier, NonceIssuer
from ccserver.oauth.grants import ClientCredentialsGrant
from ccserver.oauth.introspection import TokenIntrospection
from ccserver.oauth.limits import AuthLimits, IssuanceLimit
from ccserver.oauth.registration import ClientRegistry
from ccserver.oauth.tokens import (
    Signer,
    TokenMinter,
    rsa_in_threads,
    rsa_signing_in_threads,
    sign_inline,
)
from ccserver.proxies import trusted_networks
from ccserver.services import (
    CloseOnStop,
    ListenerService,
    RequestsService,
    StoreService,
    handler_service,
    purge_expired,
    refresh_keys,
    run_async,
)
from ccserver.stores import store_from_url
from ccserver.stores.cache import CachingClientStore
from ccserver.tls import (
    ChainVerifier,
    ClientCertificateReader,
    ClientCertificateRequesting,
    load_pem_certificates,
    server_context,
    tls_factory,
)
from ccserver.web import ROUTES, CCServerApp, CCServerSite, route_template
from ccserver.workers import ParentWatch, WorkerPool, inherited_endpoint, listen_addresses

#: How often, at most, each process reloads the signing keys to follow
#: rotations made elsewhere (more often when the activation delay is short).
KEY_REFRESH_SECONDS = 60.0
#: How often expired opaque tokens and deny-list entries are dropped.
PURGE_SECONDS = 300.0
#: How long a stop waits for requests in flight.
STOP_GRACE_SECONDS = 30.0

_log = Logger()


def _fail(message: str) -> SystemExit:
    sys.stderr.write(f"ccserver: {message}\n")
    sys.stderr.flush()
    return SystemExit(2)


class Options(usage.Options):
    synopsis = "[options]"
    optParameters = [
        ["config", "c", None, "A TOML configuration file (see etc/ccserver.toml)."],
        ["issuer", None, None, "The issuer URL [default: http://localhost:<port>]."],
        [
            "store",
            None,
            None,
            "The store URL: memory://, sqlite:///relative.db, sqlite:////absolute.db, "
            "redis://host:port/db, redis+sentinel://host:port,host:port/service?db=N, "
            "postgresql://user@host/db [default: sqlite:///ccserver.db].",
        ],
        [
            "master-token",
            None,
            None,
            "The bearer token that authorises registration; made and kept in a file "
            "beside the database if none is given.  Every local user can read a "
            "command line (ps, /proc): prefer $CCSERVER_MASTER_TOKEN or that file.",
        ],
        ["grant-handler", None, None, "The grant handler plugin [default: registered-scope]."],
        [
            "metrics",
            None,
            None,
            "An endpoint string for a listener of its own serving Prometheus metrics at "
            "/metrics, e.g. tcp:9108:interface=127.0.0.1 [default: none].",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["inherit-fd"] = []

    def opt_workers(self, count: str) -> None:
        # usage.Options prints an opt_ docstring as written: one line, plain text.
        """Processes serving the sockets together (tcp/tcp6 only; a shared store) [default: 1]."""
        try:
            self["workers"] = int(count)
        except ValueError:
            raise _fail(f"--workers: {count!r} is not a whole number") from None

    def opt_inherit_fd(self, fd: str) -> None:
        """(internal) A listening socket handed down by the main process."""
        self["inherit-fd"].append(int(fd))

    def opt_listen(self, endpoint: str) -> None:
        """A Twisted endpoint string to listen on; repeatable [default: tcp:8080]."""
        self["listen"].append(endpoint)

    def opt_version(self) -> None:
        """Print the version and exit."""
        from ccserver import __version__

        print(f"ccserver {__version__}")
        sys.exit(0)

    longdesc = "An OAuth 2.0 authorization server for machine-to-machine clients."

    def getUsage(self, width: int | None = None) -> str:
        # usage.Options word-wraps longdesc: the handler table goes after it.
        handlers = "\n".join(
            f"  {name:20} {factory.description}" for name, factory in sorted(available().items())
        )
        return (
            f"{super().getUsage(width)}\n"
            f"Grant handlers (--grant-handler, or [grant_handler] name):\n{handlers}\n"
        )

    def postOptions(self) -> None:
        """
        Read and check the configuration; nothing else (no file is made, no
        store opened, nothing listens): that is L{makeService}'s work.
        """
        command_line = {
            "config": self["config"],
            "listen": self["listen"],
            "issuer": self["issuer"],
            "store": self["store"],
            "master_token": self["master-token"],
            "grant_handler": self["grant-handler"],
            "workers": self.get("workers"),
            "metrics": self["metrics"],
        }
        try:
            self.config = load_config(command_line, os.environ)
        except ConfigError as e:
            raise _fail(str(e)) from None
        except OSError as e:
            raise _fail(f"{e.filename}: {e.strerror}") from None


def make_site(
    reactor: Any,
    config: Config,
    store: IStore,
    handler: IClientCredentialsGrantHandler,
    master_token_digest: str,
    encryptor: KeyEncryptor,
    sign: Signer,
    jwks_fetcher: JWKSFetcher,
    metrics: NoMetrics = NO_METRICS,
    certificates: ClientCertificateReader | None = None,
) -> tuple[CCServerSite, Keyring]:
    """
    The web site over the protocol objects, and the keyring they sign with.
    Nothing is opened or loaded here: the store is opened, and the keys
    loaded, by the services.
    """
    now = reactor.seconds
    keyring = Keyring(store, encryptor, config.tokens.signing_alg, config.tokens.max_lifetime, now)
    clients = CachingClientStore(store, now, config.store.client_cache_seconds)
    # every refusal by a limit is counted: ccserver_rate_limited_total{what}
    on_limited = metrics.rate_limited
    budget = config.limits.failed_auth_per_minute
    limits = AuthLimits(store if budget else None, now, budget, 60.0, on_limited)
    rate = config.limits.tokens_per_client_per_second
    issuance = None if rate is None else IssuanceLimit(rate, now, on_limited)
    trusted_proxies = trusted_networks(config.limits.trusted_proxies)
    minter = TokenMinter(
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
    authenticator = ClientAuthenticator(
        clients,
        AssertionVerifier(
            tokens=store,
            issuer=config.issuer,
            now=now,
            max_lifetime=config.client_auth.max_assertion_lifetime,
            leeway=config.client_auth.leeway,
            jwks_fetcher=jwks_fetcher,
            secret_encryptor=encryptor,
        ),
        limits,
        now=now,
        jwks_fetcher=jwks_fetcher,
    )
    app = CCServerApp(
        grant=ClientCredentialsGrant(
            clients,
            handler,
            minter,
            config.issuer,
            dpop=_dpop_verifier(config, store, encryptor, now),
            authenticator=authenticator,
            issuance=issuance,
        ),
        introspection=TokenIntrospection(
            clients,
            store,
            keyring,
            config.issuer,
            config.tokens.introspection,
            now,
            master_token_digest=master_token_digest,
            authenticator=authenticator,
            limits=limits,
        ),
        registry=ClientRegistry(
            clients,
            master_token_digest,
            now,
            token_max_lifetime=config.tokens.max_lifetime,
            client_cache_seconds=config.store.client_cache_seconds,
            authoritative=store,
            secret_encryptor=encryptor,
            limits=limits,
            secret_rotation_grace=config.clients.secret_rotation_grace,
        ),
        keyring=keyring,
        issuer=config.issuer,
        discovery_json=_discovery_json(config),
        jwks_max_age=config.keys.activation_delay // 2,
        readiness=Readiness(store, keyring, reactor, config.store.timeout),
        metrics=metrics,
        certificates=certificates,
        trusted_proxies=trusted_proxies,
    )
    site = CCServerSite(
        app.resource(), reactor, config.access_log, config.http, metrics, trusted_proxies
    )
    return site, keyring


def make_jwks_fetcher(
    reactor: Any, config: Config, http: HTTPGetter | None = None
) -> JWKSFetcher:
    """
    The fetcher of clients' C{jwks_uri}, over its own persistent connection
    pool (released by L{JWKSFetcher.close}) unless C{http} is given.
    """
    from ccserver.handlers.webhook import pooled_http_client

    close = None
    getter: HTTPGetter
    if http is None:
        getter, pool = pooled_http_client(reactor, config.client_auth.jwks_uri_timeout)
        close = pool.closeCachedConnections
    else:
        getter = http
    auth = config.client_auth
    return JWKSFetcher(
        getter,
        reactor,
        timeout=auth.jwks_uri_timeout,
        default_cache=auth.jwks_uri_cache_seconds,
        min_cache=auth.jwks_uri_min_cache_seconds,
        max_cache=auth.jwks_uri_max_cache_seconds,
        refetch_interval=auth.jwks_uri_refetch_seconds,
        close=close,
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


def _discovery_json(config: Config) -> bytes:
    return json.dumps(
        metadata(
            config.issuer,
            config.tokens.signing_alg,
            dpop_signing_algs=config.dpop.signing_algs,
            mtls=config.mtls_enabled,
            mtls_base_url=config.tls.base_url,
        ),
        separators=(",", ":"),
    ).encode()


def certificate_reader(reactor: Any, config: Config) -> ClientCertificateReader | None:
    """
    Where requests' client certificates come from (RFC 8705), or None when
    no listener or proxy can bring one.

    @raise ConfigError: for an unreadable C{[tls] client_ca}.
    """
    if not config.mtls_enabled:
        return None
    chains = None
    if config.tls.client_ca:
        roots = load_pem_certificates("client_ca", config.tls.client_ca)
        chains = ChainVerifier(roots, reactor.seconds)
    header = config.mtls.proxy_header
    return ClientCertificateReader(
        now=reactor.seconds,
        chains=chains,
        proxy_header=header.lower().encode("ascii") if header else None,
        trusted_proxies=trusted_networks(config.mtls.trusted_proxies),
    )


def exit_on_fatal(reactor: Any) -> Callable[[Failure], None]:
    """
    What a failure to start does: one line on the real stderr, then stop
    the reactor and end the process with status 1.
    """

    def fatal(failure: Failure) -> None:
        reason = failure.getErrorMessage()
        _log.critical("ccserver could not start: {reason}", reason=reason)
        # twist sends sys.stderr to the log once it runs: write to the real one.
        os.write(2, f"ccserver: could not start: {reason}\n".encode())
        # twist has no way to set the exit status: after the reactor has
        # stopped (and every service with it) its runner returns and the
        # process would end with 0.  This is the one place that ends it.
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        reactor.stop()

    return fatal


def default_signer(reactor: Any, config: Config) -> Signer:
    """
    Where signatures are computed, by C{[tokens] rsa_signing}
    (L{rsa_signing_in_threads}): each worker decides the same, from the
    same configuration.
    """
    if rsa_signing_in_threads(config.tokens.rsa_signing, config.workers, os.cpu_count()):
        return rsa_in_threads(reactor)
    return sign_inline


def makeService(
    options: Options, reactor: Any = None, sign: Signer | None = None
) -> MultiService:
    """
    Make every part of the server and the services that run them.

    @param reactor: the reactor [default: the global one; only here, the
        daemon's composition root, is it imported].
    @param sign: how tokens are signed [default: by C{[tokens]
        rsa_signing}: RSA in the reactor's thread pool while the workers
        leave a core idle (L{rsa_in_threads}), else everything inline].
    """
    if reactor is None:
        from twisted.internet import reactor
    config: Config = options.config
    try:
        handler = make_handler(config.grant_handler, config.grant_handler_config, reactor)
        store = store_from_url(
            config.store.url,
            reactor,
            timeout=config.store.timeout,
            redis_wait_replicas=config.store.redis_wait_replicas,
            redis_wait_timeout=config.store.redis_wait_timeout,
        )
        endpoints = []
        tls_context: ClientCertificateRequesting | None = None
        if config.tls.listen:
            assert config.tls.certificate and config.tls.private_key  # checked by config
            tls_context = server_context(config.tls.certificate, config.tls.private_key)
        certificates = certificate_reader(reactor, config)
        all_listen = (*config.listen, *config.tls.listen)
        for description in all_listen:
            try:
                endpoints.append(serverFromString(reactor, description))
            except (ValueError, TypeError, KeyError) as e:
                raise ConfigError(
                    f"listen: {description!r} is not an endpoint string: {e}"
                ) from None
        inherited = options["inherit-fd"]
        shared = config.workers > 1 and not inherited
        addresses = listen_addresses(all_listen) if config.workers > 1 else []
        metrics_endpoint = None
        if config.metrics.listen is not None and not inherited:
            try:
                metrics_endpoint = serverFromString(reactor, config.metrics.listen)
            except (ValueError, TypeError, KeyError) as e:
                raise ConfigError(
                    f"metrics: {config.metrics.listen!r} is not an endpoint string: {e}"
                ) from None
        first = firststart.prepare(config)
    except ConfigError as e:
        raise _fail(str(e)) from None
    except OSError as e:
        raise _fail(f"{e.filename}: {e.strerror}") from None

    if not inherited:
        # Workers (inherited sockets) share the main process's files.
        firststart.warn_about_exposed_secrets(
            _log, config, first.master_token_file, options["master-token"] is not None
        )
    on_fatal = exit_on_fatal(reactor)
    jwks_fetcher = make_jwks_fetcher(reactor, config)
    handler_as_service = handler_service(handler)
    metrics: NoMetrics = NO_METRICS
    multiprocess_directory = None
    if config.metrics.listen is not None:
        if shared:
            # Before any metric is made, and before the workers start: they
            # inherit the directory through the environment.
            multiprocess_directory = MultiprocessDirectory(use_multiprocess_directory())
        registry = CollectorRegistry()
        metrics = Metrics(registry, route_template, ROUTES)
        install(metrics)
        if config.grant_handler == "webhook":
            handler = metrics.observe_handler(handler)
    site, keyring = make_site(
        reactor,
        config,
        store,
        handler,
        first.master_token_digest,
        first.encryptor,
        sign if sign is not None else default_signer(reactor, config),
        jwks_fetcher,
        metrics,
        certificates,
    )
    root = MultiService()
    store_service = StoreService(
        store,
        keyring,
        on_fatal,
        first.master_token_file,
        fresh_key_file=first.fresh_key_file,
        key_mismatch=lambda: firststart.key_mismatch(config, store.url, first.fresh_key_file),
    )
    store_service.setServiceParent(root)
    if multiprocess_directory is not None:
        # First, so that it stops last, once the workers have ended.
        multiprocess_directory.setServiceParent(store_service)
    if metrics_endpoint is not None and isinstance(metrics, Metrics):
        # Only the main process serves metrics (the workers' are summed in).
        metrics_site = Site(metrics_root(scrape_registry(metrics.registry)), reactor=reactor)
        metrics_site.displayTracebacks = False
        metrics_site.noisy = False
        ListenerService(
            f"{config.metrics.listen} (metrics)", _given(metrics_endpoint), metrics_site
        ).setServiceParent(root)

    if handler_as_service is not None:
        handler_as_service.setServiceParent(store_service)
    # Stops after the last request, as the handler does.
    CloseOnStop(jwks_fetcher.close).setServiceParent(store_service)
    refresh_every = min(KEY_REFRESH_SECONDS, max(1.0, config.keys.activation_delay / 4))
    for interval, work, args in [
        (refresh_every, refresh_keys, (keyring,)),
        (PURGE_SECONDS, purge_expired, (store, reactor.seconds)),
    ]:
        timer = TimerService(interval, run_async, work, *args)
        timer.clock = reactor
        timer.setServiceParent(store_service)

    requests = RequestsService(site, reactor, STOP_GRACE_SECONDS, on_fatal, config.issuer)
    requests.setServiceParent(store_service)
    listeners: list[tuple[str, Callable[[], IStreamServerEndpoint]]]
    if inherited:
        # The main process hands down the plain listeners' sockets, then the
        # TLS ones, in the order of the (same) configuration.
        listeners = [(f"fd:{fd}", _inherited(reactor, fd)) for fd in inherited]
        # A worker ends with the main process, even one killed outright.
        ParentWatch(reactor).setServiceParent(root)
    elif shared:
        pool = WorkerPool(
            reactor,
            sys.argv[1:],
            addresses,
            config.workers,
            on_exit=None if multiprocess_directory is None else multiprocess_directory.worker_ended,
        )
        listeners = [(d, _shared(pool, i)) for i, d in enumerate(all_listen)]
    else:
        listeners = [(d, _given(e)) for d, e in zip(all_listen, endpoints, strict=True)]
    for index, (description, endpoint) in enumerate(listeners):
        factory: Any = site
        if tls_context is not None and index >= len(config.listen):
            factory = tls_factory(tls_context, site)
            description = f"{description} (TLS)"
        ListenerService(description, endpoint, factory).setServiceParent(requests)
    if shared:
        # Last, so that it stops first: the workers end before this process
        # stops listening.
        pool.setServiceParent(store_service)
    return root


def _given(endpoint: IStreamServerEndpoint) -> Callable[[], IStreamServerEndpoint]:
    return lambda: endpoint


def _inherited(reactor: Any, fd: int) -> Callable[[], IStreamServerEndpoint]:
    return lambda: inherited_endpoint(reactor, fd)


def _shared(pool: WorkerPool, index: int) -> Callable[[], IStreamServerEndpoint]:
    return lambda: pool.endpoint(index)


def main(argv: Sequence[str] | None = None) -> None:
    """
    Run as C{python -m ccserver.tap}: the same as C{twist ccserver}, through
    C{python -m twisted}, Twisted's public way to run C{twist}.
    """
    import runpy

    sys.argv = ["twist", "ccserver", *(argv if argv is not None else sys.argv[1:])]
    runpy.run_module("twisted", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
