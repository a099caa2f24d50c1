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

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from ccserver import firststart
from ccserver.config import Config, load_config
from ccserver.errors import ConfigError
from ccserver.handlers import available, make_handler
from ccserver.interfaces import IClientCredentialsGrantHandler, IStore
from ccserver.keys import KeyEncryptor, Keyring
from ccserver.oauth.discovery import metadata
from ccserver.oauth.grants import ClientCredentialsGrant
from ccserver.oauth.introspection import TokenIntrospection
from ccserver.oauth.registration import ClientRegistry
from ccserver.oauth.tokens import Signer, TokenMinter, rsa_in_threads
from ccserver.services import (
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
from ccserver.web import CCServerApp, CCServerSite
from ccserver.workers import WorkerPool, inherited_endpoint, listen_addresses

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
            "redis://host:port/db, postgresql://user@host/db [default: sqlite:///ccserver.db].",
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
) -> tuple[CCServerSite, Keyring]:
    """
    The web site over the protocol objects, and the keyring they sign with.
    Nothing is opened or loaded here: the store is opened, and the keys
    loaded, by the services.
    """
    now = reactor.seconds
    keyring = Keyring(store, encryptor, config.tokens.signing_alg, config.tokens.max_lifetime, now)
    clients = CachingClientStore(store, now, config.store.client_cache_seconds)
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
    app = CCServerApp(
        grant=ClientCredentialsGrant(clients, handler, minter, config.issuer),
        introspection=TokenIntrospection(
            clients,
            store,
            keyring,
            config.issuer,
            config.tokens.introspection,
            now,
            master_token_digest=master_token_digest,
        ),
        registry=ClientRegistry(
            clients,
            master_token_digest,
            now,
            token_max_lifetime=config.tokens.max_lifetime,
            client_cache_seconds=config.store.client_cache_seconds,
            authoritative=store,
            secret_rotation_grace=config.clients.secret_rotation_grace,
        ),
        keyring=keyring,
        issuer=config.issuer,
        discovery_json=_discovery_json(config),
        jwks_max_age=config.keys.activation_delay // 2,
    )
    return CCServerSite(app.resource(), reactor, config.access_log, config.http), keyring


def _discovery_json(config: Config) -> bytes:
    return json.dumps(
        metadata(config.issuer, config.tokens.signing_alg), separators=(",", ":")
    ).encode()


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


def makeService(
    options: Options, reactor: Any = None, sign: Signer | None = None
) -> MultiService:
    """
    Make every part of the server and the services that run them.

    @param reactor: the reactor [default: the global one; only here, the
        daemon's composition root, is it imported].
    @param sign: how tokens are signed [default: RSA in the reactor's
        thread pool, the others inline (L{rsa_in_threads})].
    """
    if reactor is None:
        from twisted.internet import reactor
    config: Config = options.config
    try:
        handler = make_handler(config.grant_handler, config.grant_handler_config, reactor)
        store = store_from_url(config.store.url, reactor, timeout=config.store.timeout)
        endpoints = []
        for description in config.listen:
            try:
                endpoints.append(serverFromString(reactor, description))
            except (ValueError, TypeError, KeyError) as e:
                raise ConfigError(
                    f"listen: {description!r} is not an endpoint string: {e}"
                ) from None
        inherited = options["inherit-fd"]
        shared = config.workers > 1 and not inherited
        addresses = listen_addresses(config.listen) if config.workers > 1 else []
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
    site, keyring = make_site(
        reactor,
        config,
        store,
        handler,
        first.master_token_digest,
        first.encryptor,
        sign if sign is not None else rsa_in_threads(reactor),
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

    handler_as_service = handler_service(handler)
    if handler_as_service is not None:
        handler_as_service.setServiceParent(store_service)
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
        listeners = [(f"fd:{fd}", _inherited(reactor, fd)) for fd in inherited]
    elif shared:
        pool = WorkerPool(reactor, sys.argv[1:], addresses, config.workers)
        listeners = [(d, _shared(pool, i)) for i, d in enumerate(config.listen)]
    else:
        listeners = [(d, _given(e)) for d, e in zip(config.listen, endpoints, strict=True)]
    for description, endpoint in listeners:
        ListenerService(description, endpoint, site).setServiceParent(requests)
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
