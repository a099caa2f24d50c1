"""
C{twist ccserver}: the command line, and the server it describes.

L{Options} reads the command line and nothing else.  L{makeService}, the
composition root, makes the server in four steps, and its body is their
table of contents:

  1. L{load_config}: the TOML file, the environment and the command line,
     merged into one checked L{Config};
  2. L{prepare}: what that needs from outside the process's memory (the
     grant handler plugin, the store, certificates, endpoints), checked
     before the first-start files are made;
  3. L{assemble}: the object graph, without I/O;
  4. L{service_tree}: the services that open the store, then listen.

What the server takes from the process it runs in (the reactor, C{sys.argv},
the environment, the CPU count, and the daemon's own start-up steps) comes
in as one L{Process}: this one, or a test's.  A mistake on the command line
or in the configuration ends the process with one line on stderr and status
2, before anything is made; a failure to start once running (the store, a
busy port) with one line and status 1.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from attrs import frozen
from twisted.application.service import MultiService
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from ccserver import __version__, firststart
from ccserver.accesslog import open_destination
from ccserver.assembly import Prepared, assemble
from ccserver.auditlog import open_writer
from ccserver.config import Config, load_config
from ccserver.errors import ConfigError
from ccserver.grants import descriptions, find_grant_types
from ccserver.handlers import GRANT_HANDLERS, make_handler
from ccserver.keysets import read_key_set_file
from ccserver.listening import listening
from ccserver.metrics import MultiprocessDirectory, use_multiprocess_directory
from ccserver.oauth.federation import MAX_ISSUER_KEYS, signs_tokens
from ccserver.oauth.grants import OfferedGrants
from ccserver.pluginloader import PluginError, scan_plugins
from ccserver.services import StartUp, service_tree
from ccserver.stores import store_from_settings
from ccserver.text import escape
from ccserver.tls import ClientCertificateRequesting, load_pem_certificates, server_context
from ccserver.tracing import Tracing

_log = Logger()

#: Where a usage error points.
HELP = "twist ccserver --help lists the options"


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
            raise usage.UsageError(f"--workers: {count!r} is not a whole number") from None

    def opt_inherit_fd(self, fd: str) -> None:
        """(internal) A listening socket handed down by the main process."""
        if not fd.isdigit():
            raise usage.UsageError(f"--inherit-fd: {fd!r} is not a file descriptor number")
        self["inherit-fd"].append(int(fd))

    def opt_listen(self, endpoint: str) -> None:
        """A Twisted endpoint string to listen on; repeatable [default: tcp:8080]."""
        self["listen"].append(endpoint)

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"ccserver {__version__}")
        sys.exit(0)

    longdesc = "An OAuth 2.0 authorization server for machine-to-machine clients."

    def getUsage(self, width: int | None = None) -> str:
        # usage.Options word-wraps longdesc: the plugin tables go after it.
        scan = scan_plugins()
        found = scan.find(GRANT_HANDLERS)
        handlers = "".join(
            f"\n  {name:20} {getattr(plugin.factory, 'description', '')}"
            for name, plugin in sorted(found.plugins.items())
        )
        problems = "".join(f"\n  not loaded: {problem}" for problem in found.problems)
        try:
            grant_types = descriptions(find_grant_types(scan))
            broken = ""
        except PluginError as e:
            grant_types, broken = {}, f"\n  not loaded: {e}"
        grants = "".join(
            f"\n  {grant_type}\n      {description}"
            for grant_type, description in sorted(grant_types.items())
        )
        return (
            f"{super().getUsage(width)}\n"
            f"Grant handlers (--grant-handler, or [grant_handler] name):{handlers}{problems}\n"
            f"Grant types (every one found; a client uses those its grant_types name):"
            f"{grants}{broken}\n"
        )

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        Parse the command line; a usage error (an unknown option, a value
        that is not one) ends the process with one line and status 2.
        Left to C{twist}, it would come above twist's whole usage text.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise one_line_exit(f"{e}; {HELP}", 2) from None

    def command_line(self) -> dict[str, Any]:
        """
        What the command line gives for L{load_config}: L{None} where an
        option was not given.
        """
        return {
            "config": self["config"],
            "listen": self["listen"],
            "issuer": self["issuer"],
            "store": self["store"],
            "master_token": self["master-token"],
            "grant_handler": self["grant-handler"],
            "workers": self.get("workers"),
            "metrics": self["metrics"],
        }


@frozen
class Process:
    """
    What the server takes from the process it runs in, given rather than
    read where it is used: L{daemon} for C{twist}, a test's own otherwise.

    @ivar argv: the command line of C{twist} after its name, which the
        workers run again.
    @ivar environ: the environment, for C{CCSERVER_*} variables.
    @ivar cpu_count: the machine's cores (C{[tokens] rsa_signing = "auto"}).
    @ivar startup: what happens once the server is ready, or when it
        cannot start.
    """

    reactor: Any
    argv: Sequence[str]
    environ: Mapping[str, str]
    cpu_count: int | None
    startup: StartUp

    @classmethod
    def daemon(cls) -> Process:
        """
        This process, run by C{twist}: the global reactor (imported here, in
        the composition root, and nowhere else), its command line,
        environment and cores, and L{DaemonStartUp}.
        """
        from twisted.internet import reactor

        return cls(reactor, sys.argv[1:], os.environ, os.cpu_count(), DaemonStartUp(reactor))


def makeService(options: Options, process: Process | None = None) -> MultiService:
    """
    The server C{options} describe, as a tree of services: C{twist}'s call.

    @param process: what the server takes from the process it runs in
        [default: this one, L{Process.daemon}].
    """
    process = process if process is not None else Process.daemon()
    inherited = options["inherit-fd"]
    with one_line_on_error():
        config = load_config(options.command_line(), process.environ)
        prepared = prepare(config, inherited, process.reactor)
    if not inherited:
        # Workers (inherited sockets) share the main process's files.
        firststart.warn_about_exposed_secrets(
            _log, config, prepared.first.master_token_file, options["master-token"] is not None
        )
    server = assemble(config, prepared, process.reactor, process.cpu_count)
    return service_tree(server, process.reactor, process.argv, process.startup)


def prepare(config: Config, inherited: Sequence[int], reactor: Any) -> Prepared:
    """
    Read and make what C{config} needs from outside the process's memory.
    Everything that can be wrong is checked before the first-start files
    are made, so that a refused start leaves nothing behind.

    @param inherited: the sockets handed down, if this process is a worker.
    @raise ConfigError: naming what is wrong (a plugin's errors are
        L{ccserver.pluginloader.PluginError}s).
    @raise OSError: for a file that cannot be read or made.
    """
    plugins = scan_plugins()
    for problem in plugins.unimportable:
        _log.warn("A plugin was not loaded: {problem}", problem=problem)
    handler = make_handler(config.grant_handler, config.grant_handler_config, reactor, plugins)
    check_key_files(config)
    grants = OfferedGrants.made(
        find_grant_types(plugins), config.issuer, handler, reactor, bool(config.trusted_issuers)
    )
    store = store_from_settings(config.store, reactor)
    endpoints = listening(config, reactor, inherited, _tls_context(config))
    client_ca = None
    if config.mtls_enabled and config.tls.client_ca:
        client_ca = tuple(load_pem_certificates("client_ca", config.tls.client_ca))
    # before the first-start files: a path that cannot be written to stops
    # the start, leaving at most an empty audit file behind
    audit_writer = open_writer(config.audit, config.issuer)
    first = firststart.prepare(config)
    access_log = open_destination(config.access_log_file) if config.access_log else None
    directory = None
    if config.metrics.listen is not None and endpoints.shared:
        # Before any metric is made, and before the workers start: they
        # inherit the directory through the environment.
        directory = MultiprocessDirectory(use_multiprocess_directory())
    return Prepared(
        store, handler, first, endpoints, client_ca, directory, grants, audit_writer,
        make_tracing(config), access_log,
    )


def check_key_files(config: Config) -> None:
    """
    Each trusted issuer's C{jwks_file} can be read now and holds a JWK set
    with a key its tokens can be checked with: a mistake there is one line
    at start, not a refusal of every workload later.  (Later changes to the
    file are read as they come; one that breaks it leaves the last good
    keys in use.)

    @raise ConfigError: it does not.
    @raise OSError: it cannot be read.
    """
    for trusted in config.trusted_issuers:
        if trusted.jwks_file is None:
            continue
        where = f"[[trusted_issuers]] {trusted.issuer!r}: jwks_file"
        try:
            key_set = read_key_set_file(trusted.jwks_file, MAX_ISSUER_KEYS)
        except ValueError as e:
            raise ConfigError(f"{where}: {trusted.jwks_file} is not a JWK set: {e}") from None
        if not any(signs_tokens(key, spiffe=trusted.spiffe) for key in key_set.keys):
            raise ConfigError(
                f"{where}: {trusted.jwks_file} holds no public key that signs "
                + ("JWT-SVIDs (use: jwt-svid)" if trusted.spiffe else "tokens")
            )


def make_tracing(config: Config) -> Tracing | None:
    """
    The spans' exporter to C{[tracing] endpoint} (its thread started), or
    None when tracing is off.
    """
    settings = config.tracing
    if settings.endpoint is None:
        return None
    return Tracing.exporting(
        settings.endpoint,
        service_name=settings.service_name,
        service_version=__version__,
        sampling=settings.sampling,
        trust_incoming=settings.trust_incoming,
        timeout=settings.timeout,
    )


def _tls_context(config: Config) -> ClientCertificateRequesting | None:
    if not config.tls.listen:
        return None
    assert config.tls.certificate and config.tls.private_key  # checked by config
    return server_context(config.tls.certificate, config.tls.private_key)


class DaemonStartUp:
    """
    The daemon's own start-up steps, taken by C{twist ccserver} and never by
    a test that starts the service tree in its own process.
    """

    _log = Logger()

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._failed = False

    def ready(self) -> None:
        # What start-up made lives as long as the process: keep it out of the
        # garbage collector's way.
        gc.freeze()

    def failed(self, failure: Failure) -> None:
        """
        One line on the real stderr, then stop the reactor and end the
        process with status 1.

        A failure may come before the reactor runs: a memory store opens at
        once, so its listeners listen (or fail to) inside C{startService},
        before C{twist} starts the reactor, which cannot be stopped yet.
        So the stop waits until it runs.
        """
        if self._failed:
            return
        self._failed = True
        # a store's or a file's message: one line, nothing that does not print
        reason = escape(" ".join(failure.getErrorMessage().split()))
        # twist sends sys.stderr to the log once it runs: write to the real one.
        os.write(2, f"ccserver: could not start: {reason}\n".encode())
        # twist has no way to set the exit status: after the reactor has
        # stopped (and every service with it) its runner returns and the
        # process would end with 0.  This is the one place that ends it.
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self.reactor.callWhenRunning(self._stop, reason)

    def _stop(self, reason: str) -> None:
        # Logged once twist's logging has begun: before, a critical event
        # is also printed on stderr, a second line.
        self._log.critical("ccserver could not start: {reason}", reason=reason)
        try:
            self.reactor.stop()
        except ReactorNotRunning:  # already stopping
            pass


def one_line_exit(message: str, status: int) -> SystemExit:
    """
    Write C{ccserver: <message>} on stderr, on one line, and return the
    L{SystemExit} that ends the process with C{status}.
    """
    sys.stderr.write(f"ccserver: {escape(' '.join(message.split()))}\n")
    sys.stderr.flush()
    return SystemExit(status)


@contextmanager
def one_line_on_error() -> Iterator[None]:
    """
    End the process with one line and status 2 for a mistake in the
    configuration (L{ConfigError}) or a file that cannot be read or made.
    """
    try:
        yield
    except ConfigError as e:
        raise one_line_exit(str(e), 2) from None
    except OSError as e:
        where = f"{e.filename}: " if e.filename is not None else ""
        raise one_line_exit(f"{where}{e.strerror or e}", 2) from None


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
