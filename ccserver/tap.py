"""
C{twist ccserver}: command-line options, and the service they make.

Configuration mistakes are found in L{Options.postOptions}, before anything
listens, and end the process with one line on stderr.
"""

from __future__ import annotations

import gc
import os
import socket
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python import usage

from ccserver import credentials
from ccserver.config import Config, load_config
from ccserver.errors import ConfigError
from ccserver.handlers import available, make_handler
from ccserver.interfaces import IClientCredentialsGrantHandler, IStore
from ccserver.keys import KeyEncryptor, Keyring, key_encryption_key_path, key_encryptor
from ccserver.oauth.discovery import metadata
from ccserver.oauth.dpop import DPOP_NONCE_KEY_PURPOSE, DPoPVerifier, NonceIssuer
from ccserver.oauth.grants import ClientCredentialsGrant
from ccserver.oauth.introspection import TokenIntrospection
from ccserver.oauth.registration import ClientRegistry
from ccserver.oauth.tokens import TokenMinter, rsa_in_threads, sign_inline
from ccserver.stores import data_dir, sqlite_path, store_from_url
from ccserver.stores.cache import CachingClientStore
from ccserver.web import CCServerApp, CCServerSite
from ccserver.workers import WorkerPool, bind, listen_addresses

MASTER_TOKEN_FILE = "ccserver.master-token"
#: How often, at most, each process reloads the signing keys to follow
#: rotations made elsewhere (more often when the activation delay is short).
KEY_REFRESH_SECONDS = 60.0
#: How often expired opaque tokens and deny-list entries are dropped.
PURGE_SECONDS = 300.0
#: How long a stop waits for requests in flight.
STOP_GRACE_SECONDS = 30.0


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
            self.handler = make_handler(
                self.config.grant_handler, self.config.grant_handler_config
            )
            self.store = store_from_url(
                self.config.store.url, _reactor(), timeout=self.config.store.timeout
            )
            for endpoint in self.config.listen:
                try:
                    serverFromString(_reactor(), endpoint)
                except (ValueError, TypeError, KeyError) as e:
                    raise ConfigError(
                        f"listen: {endpoint!r} is not an endpoint string: {e}"
                    ) from None
            _private_sqlite_file(self.config.store.url)
            self.master_token_digest, self.master_token_file = _master_token(self.config)
            self.listen_addresses = (
                listen_addresses(_reactor(), self.config.listen) if self.config.workers > 1 else []
            )
            self.encryptor = key_encryptor(self.config)
        except ConfigError as e:
            raise _fail(str(e)) from None
        except OSError as e:
            raise _fail(f"{e.filename}: {e.strerror}") from None


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _private_sqlite_file(url: str) -> None:
    """
    Make a new SQLite database file readable only by its owner: it holds
    digests and encrypted keys.  (SQLite gives its -wal and -shm files the
    same mode.)
    """
    if not url.startswith("sqlite:"):
        return
    try:
        os.close(os.open(sqlite_path(url), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def _master_token(config: Config) -> tuple[str, Path | None]:
    """
    The digest of the master token: the configured one, or the one kept in
    a file (mode 0600) beside the database, made on first start.

    @return: the digest, and the file it came from (None if configured).
    """
    if config.master_token is not None:
        return credentials.digest(config.master_token), None
    path = data_dir(config.store.url) / MASTER_TOKEN_FILE
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = credentials.new_secret()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
    if len(token) < 16:
        raise ConfigError(f"master token file {str(path)!r}: holds fewer than 16 characters")
    return credentials.digest(token), path


def loose_mode(path: Path) -> int | None:
    """
    The permission bits of C{path} when its group or others have any, else
    None (also when there is no such file).
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    return mode if mode & (stat.S_IRWXG | stat.S_IRWXO) else None


def warn_if_not_private(log: Logger, what: str, path: Path) -> None:
    """
    One warning line when a file of secrets lets its group or others in.

    The server makes its files 0600, but leaves alone one that already
    exists (copied in, restored from a backup, made by hand): it says so
    and what to run, and never changes the mode behind the operator's back
    nor logs what the file holds.
    """
    mode = loose_mode(path)
    if mode is not None:
        log.warn(
            "The {what} {path} is open to its group or others (mode {mode}): "
            "run chmod 600 {path}",
            what=what,
            path=str(path.resolve()),
            mode=f"{mode:04o}",
        )


class CCServerService(Service):
    """
    Opens the store, loads the signing keys, then listens; on stop, stops
    listening, lets requests in flight finish, and closes the store.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        config: Config,
        store: IStore,
        handler: IClientCredentialsGrantHandler,
        master_token_digest: str,
        encryptor: KeyEncryptor,
        master_token_file: Path | None = None,
        inherited_fds: Sequence[int] = (),
        master_token_on_command_line: bool = False,
    ) -> None:
        self.reactor = reactor
        self.config = config
        self.store = store
        self.handler = handler
        self.master_token_digest = master_token_digest
        self.encryptor = encryptor
        self.master_token_file = master_token_file
        self.master_token_on_command_line = master_token_on_command_line
        self.ports: list[IListeningPort] = []
        self.site: CCServerSite | None = None
        self._loops: list[LoopingCall] = []
        self.inherited_fds = list(inherited_fds)
        self.workers: WorkerPool | None = None
        #: Tests on a Clock sign inline; a real reactor has a thread pool.
        self.sign_in_threads = hasattr(reactor, "getThreadPool")

    def build(self) -> CCServerSite:
        now = self.reactor.seconds
        config = self.config
        self.keyring = Keyring(
            self.store, self.encryptor, config.tokens.signing_alg, config.tokens.max_lifetime, now
        )
        clients = CachingClientStore(self.store, now, config.store.client_cache_seconds)
        minter = TokenMinter(
            keyring=self.keyring,
            tokens=self.store,
            issuer=config.issuer,
            lifetime=config.tokens.lifetime,
            max_lifetime=config.tokens.max_lifetime,
            audience=config.tokens.audience,
            token_format=config.tokens.format,
            now=now,
            sign=rsa_in_threads(self.reactor) if self.sign_in_threads else sign_inline,
        )
        app = CCServerApp(
            grant=ClientCredentialsGrant(
                clients, self.handler, minter, config.issuer, self._dpop_verifier()
            ),
            introspection=TokenIntrospection(
                clients,
                self.store,
                self.keyring,
                config.issuer,
                config.tokens.introspection,
                now,
                master_token_digest=self.master_token_digest,
            ),
            registry=ClientRegistry(
                clients,
                self.master_token_digest,
                now,
                token_max_lifetime=config.tokens.max_lifetime,
                client_cache_seconds=config.store.client_cache_seconds,
                authoritative=self.store,
            ),
            keyring=self.keyring,
            issuer=config.issuer,
            discovery_json=_discovery_json(config),
            jwks_max_age=config.keys.activation_delay // 2,
        )
        return CCServerSite(app.resource(), self.reactor, config.access_log)

    def _dpop_verifier(self) -> DPoPVerifier:
        dpop = self.config.dpop
        nonces = (
            NonceIssuer(
                self.encryptor.derive(DPOP_NONCE_KEY_PURPOSE),
                dpop.nonce_lifetime,
                self.reactor.seconds,
            )
            if dpop.require_nonce
            else None
        )
        return DPoPVerifier(
            self.store, dpop.signing_algs, dpop.max_age, dpop.leeway, self.reactor.seconds, nonces
        )

    def startService(self) -> None:
        super().startService()
        ensureDeferred(self._start()).addErrback(self._fatal)

    def private_files(self) -> list[tuple[str, Path]]:
        """
        The files of secrets this server reads: the SQLite database, the
        key-encryption key and the master-token file, those in use.
        """
        files = []
        if self.config.store.url.startswith("sqlite:"):
            files.append(("database", sqlite_path(self.config.store.url)))
        key_file = key_encryption_key_path(self.config)
        if key_file is not None:
            files.append(("key-encryption key", key_file))
        if self.master_token_file is not None:
            files.append(("master-token file", self.master_token_file))
        return files

    def warn_about_exposed_secrets(self) -> None:
        """
        Start-up warnings about secrets others may read; never the secrets.
        """
        if self.master_token_on_command_line:
            self._log.warn(
                "--master-token on the command line can be read by every local user "
                "(ps, /proc): use CCSERVER_MASTER_TOKEN or the master-token file instead"
            )
        for what, path in self.private_files():
            warn_if_not_private(self._log, what, path)

    async def _start(self) -> None:
        if not self.inherited_fds:
            # Workers (inherited sockets) share the main process's files.
            self.warn_about_exposed_secrets()
        self._log.info("Opening store {url}", url=self.store.url)
        await self.store.open()
        self.site = self.build()
        if await self.keyring.ensure_signing_key():
            self._log.info(
                "Made a new {alg} signing key {kid}",
                alg=self.config.tokens.signing_alg,
                kid=self.keyring.current.kid,
            )
        if self.master_token_file is not None:
            self._log.info(
                "The master token for registration is in {path}",
                path=str(self.master_token_file.resolve()),
            )
        refresh_every = min(KEY_REFRESH_SECONDS, max(1.0, self.config.keys.activation_delay / 4))
        self._loops = [
            self._loop(self._refresh_keys, refresh_every),
            self._loop(self._purge, PURGE_SECONDS),
        ]
        if self.inherited_fds:
            self._adopt(self.inherited_fds)
            for fd in self.inherited_fds:
                os.close(fd)
        elif self.config.workers > 1:
            sockets = [
                [bind(address) for address in listen_addresses(self.reactor, self.config.listen)]
                for _ in range(self.config.workers)
            ]
            self._adopt([s.fileno() for s in sockets[0]])
            for sock in sockets[0]:
                sock.close()
            self.workers = WorkerPool(self.reactor, sys.argv[1:], sockets[1:])
            self.workers.start()
        else:
            for description in self.config.listen:
                endpoint = serverFromString(self.reactor, description)
                port = await endpoint.listen(self.site)
                self.ports.append(port)
                self._log.info("Listening on {endpoint}", endpoint=description)
        # What start-up made lives as long as the process: keep it out of the
        # garbage collector's way.
        gc.freeze()
        self._log.info("ccserver is ready; issuer {issuer}", issuer=self.config.issuer)

    def _adopt(self, fds: list[int]) -> None:
        """
        Serve listening sockets made by the main process.  The reactor
        serves a copy of each descriptor; the caller closes the originals.
        """
        for fd in fds:
            with socket.socket(fileno=os.dup(fd)) as sock:
                family = sock.family
            port = self.reactor.adoptStreamPort(fd, family, self.site)
            self.ports.append(port)
            self._log.info("Serving {address}", address=str(port.getHost()))

    def _loop(self, work: Any, interval: float) -> LoopingCall:
        loop = LoopingCall(lambda: ensureDeferred(work()))
        loop.clock = self.reactor
        loop.start(interval, now=False).addErrback(
            lambda f: self._log.failure("Periodic {work} stopped", f, work=work.__name__)
        )
        return loop

    async def _purge(self) -> None:
        try:
            purged = await self.store.purge_expired(int(self.reactor.seconds()))
        except Exception as e:
            self._log.warn("Could not purge expired tokens: {error}", error=str(e))
        else:
            if purged:
                self._log.info("Purged {n} expired token records", n=purged)

    async def _refresh_keys(self) -> None:
        try:
            await self.keyring.refresh()
        except Exception as e:
            self._log.warn("Could not reload signing keys: {error}", error=str(e))

    def _fatal(self, failure: Any) -> None:
        reason = failure.getErrorMessage()
        self._log.critical("ccserver could not start: {reason}", reason=reason)
        # twist sends sys.stderr to the log once it runs: write to the real one.
        os.write(2, f"ccserver: could not start: {reason}\n".encode())
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self.reactor.stop()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.workers is not None:
            await self.workers.stop()
        for port in self.ports:
            stopped = port.stopListening()
            if stopped is not None:
                await stopped
        self.ports.clear()
        deadline = self.reactor.seconds() + STOP_GRACE_SECONDS
        while self.site is not None and self.site.in_flight and self.reactor.seconds() < deadline:
            await deferLater(self.reactor, 0.05, lambda: None)
        for loop in self._loops:
            if loop.running:
                loop.stop()
        await self.store.close()
        self._log.info("ccserver stopped")


def _discovery_json(config: Config) -> bytes:
    import json

    return json.dumps(
        metadata(
            config.issuer, config.tokens.signing_alg, dpop_signing_algs=config.dpop.signing_algs
        ),
        separators=(",", ":"),
    ).encode()


def makeService(options: Options) -> CCServerService:
    return CCServerService(
        reactor=_reactor(),
        config=options.config,
        store=options.store,
        handler=options.handler,
        master_token_digest=options.master_token_digest,
        encryptor=options.encryptor,
        master_token_file=options.master_token_file,
        inherited_fds=options["inherit-fd"],
        master_token_on_command_line=options["master-token"] is not None,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """
    Run as C{python -m ccserver.tap}: the same as C{twist ccserver}.
    """
    from twisted.application.twist._twist import Twist

    Twist.main(["twist", "ccserver", *(argv if argv is not None else sys.argv[1:])])
