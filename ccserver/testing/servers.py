"""
Throwaway Redis and PostgreSQL servers: real servers, on free loopback
ports, in temporary folders, started once per test process and stopped at
its exit (or, for the benchmark, removed when its section ends).

A missing server binary is an error, not a reason to skip: the stores that
need these servers would otherwise ship untested.  The Debian packages are
listed in C{.ci/apt-packages}.

Under pytest-xdist every worker is its own process and so starts its own
servers; the kernel hands each a different free port, and every server
lives in its own C{mkdtemp} folder, so workers never meet.

The fault tests stop, kill and restart these servers: a server keeps its
port and its data folder across C{restart()}, so the URL a store was made
with stays valid.

The benchmark (bench/stores.py) starts its throwaway servers with
C{RedisServer} and C{PostgresServer} too: the same servers, so that the
benchmark and the store tests measure and test the same thing.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable
from itertools import count
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote

from ccserver.testing.polling import NotYet, wait_until

#: How long a server may take to accept connections after it is started.
START_TIMEOUT = 30.0

#: Where Debian's postgresql-15 package puts its binaries when no
#: C{postgresql-common} wrapper or symbolic link puts them on PATH.
POSTGRES_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin")


class ServerBinaryMissing(RuntimeError):
    """
    A server binary the tests need is not installed.
    """


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def find_binary(name: str, *, package: str, extra_dirs: tuple[str, ...] = ()) -> str:
    """
    The path of an executable, looked for on PATH then in C{extra_dirs}.

    @raise ServerBinaryMissing: naming the Debian package to install.
    """
    found = shutil.which(name)
    if found:
        return found
    for folder in extra_dirs:
        candidate = Path(folder, name)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise ServerBinaryMissing(
        f"{name} is not installed: the store tests need a real server. "
        f"Install the Debian package {package} (apt-get install {package}; "
        f"it is listed in .ci/apt-packages)."
    )


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(unreadable: {e})"


class ThrowawayServer:
    """
    The life every throwaway server shares: a folder of its own, a free
    port, one process (the leader of its own process group) writing to a
    log in the folder; started and waited for, stopped, killed, restarted
    (keeping its port and data), removed.

    A kind of server says how it is run (L{arguments}), when it is ready
    (L{ready}), and how a signal reaches it (L{_signal}).
    """

    #: its name in messages
    label = "server"

    def __init__(self, prefix: str) -> None:
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix=prefix))
        self.log_path = self.directory / f"{self.label}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """
        The id of its first process once started, until stopped: the
        benchmark counts the CPU of it and its descendants as its own.
        """
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def arguments(self) -> list[str]:
        """
        Its command line.
        """
        raise NotImplementedError

    def ready(self) -> bool:
        """
        Whether it accepts connections (an C{OSError} or L{NotYet}: not yet).
        """
        raise NotImplementedError

    def _prepare(self) -> None:
        """
        What its first start needs first (a PostgreSQL cluster's C{initdb}).
        """

    def _spawn_options(self) -> dict[str, Any]:
        """
        More keyword arguments of L{subprocess.Popen}.
        """
        return {}

    def start(self) -> None:
        """
        Start it, and return once it accepts connections.

        @raise RuntimeError: it ended, or did not accept connections
            within L{START_TIMEOUT}, with the end of its log.
        """
        if self.running:
            return
        self._prepare()
        # closed in _end(), when the server is stopped
        self._log = open(self.log_path, "ab")
        process = self._process = subprocess.Popen(
            self.arguments(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # its own process group, so that a signal reaches its children too
            start_new_session=True,
            **self._spawn_options(),
        )
        what = f"{Path(self.arguments()[0]).name} on port {self.port}"

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{what} exited with status {process.returncode} while starting; "
                    f"its log ({self.log_path}):\n{_tail(self.log_path)}"
                )
            return self.ready()

        try:
            wait_until(ready, START_TIMEOUT, what=f"{what} accepting connections", tolerate=(OSError,))
        except AssertionError as e:
            raise RuntimeError(f"{e}; its log ({self.log_path}):\n{_tail(self.log_path)}") from None

    def stop(self) -> None:
        """
        Stop it cleanly, and wait until it has exited.
        """
        raise NotImplementedError

    def kill(self) -> None:
        """
        Kill it (SIGKILL): a crash, as far as its clients can tell.
        """
        raise NotImplementedError

    def restart(self) -> None:
        self.stop()
        self.start()

    def _signal(self, process: subprocess.Popen[bytes], signum: signal.Signals) -> list[int]:
        """
        Send C{signum} to it; return the processes of its own to wait for
        once it has exited.
        """
        os.killpg(process.pid, signum)
        return []

    def _end(self, signum: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            others = self._signal(process, signum)
            process.wait(timeout=60)
            _wait_for_exit(others)
        if self._log is not None:
            self._log.close()
            self._log = None

    def remove(self) -> None:
        """
        Kill it and remove its folder.
        """
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


class RedisReplyError(Exception):
    """
    An error reply of Redis, as L{RedisServer.query} returns it.
    """


def _encode_command(args: tuple[str, ...]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(encoded), encoded) for encoded in (arg.encode() for arg in args)
    )


def _read_reply(replies: IO[bytes]) -> Any:
    """
    One RESP2 reply, read from C{replies}.
    """
    line = replies.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError(f"Redis closed the connection (read {line!r})")
    kind, rest = line[:1], line[1:-2].decode()
    if kind == b"+":
        return rest
    if kind == b"-":
        return RedisReplyError(rest)
    if kind == b":":
        return int(rest)
    if kind == b"$":
        if int(rest) < 0:
            return None
        data = replies.read(int(rest) + 2)
        return data[:-2].decode()
    if kind == b"*":
        if int(rest) < 0:
            return None
        return [_read_reply(replies) for _ in range(int(rest))]
    raise ValueError(f"not a Redis reply: {line!r}")


class RedisServer(ThrowawayServer):
    """
    A C{redis-server} on 127.0.0.1.

    @ivar persistent: whether it keeps its data across a stop, a kill and a
        restart, with an append-only file synced at every write (C{appendfsync
        always}): what the fault tests need, and what production should use.
        Otherwise it saves nothing, which is faster.
    """

    label = "redis"

    def __init__(
        self,
        *,
        persistent: bool = False,
        password: str | None = None,
        replica_of: RedisServer | None = None,
    ) -> None:
        self.persistent = persistent
        self.password = password
        self.replica_of = replica_of
        self.binary = find_binary("redis-server", package="redis-server")
        super().__init__("ccserver-redis-")

    @property
    def url(self) -> str:
        return self.url_for(0)

    def url_for(self, db: int, password: str | None = None) -> str:
        """
        A URL of one of its databases, with C{password} (by default its own).
        """
        password = self.password if password is None else password
        auth = f":{quote(password, safe='')}@" if password is not None else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def arguments(self) -> list[str]:
        durability = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        # a replica's first sync at once, not after the default 5 s that a
        # primary waits for more replicas to share it
        replication = ["--repl-diskless-sync-delay", "0"]
        if self.replica_of is not None:
            replication += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
            if self.replica_of.password is not None:
                replication += ["--masterauth", self.replica_of.password]
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            *durability,
            "--dir",
            str(self.directory),
            "--daemonize",
            "no",
            *(["--requirepass", self.password] if self.password is not None else []),
            *replication,
        ]

    def ready(self) -> bool:
        return self.command("PING") == b"+PONG"

    def stop(self) -> None:
        """
        Stop it cleanly (SIGTERM) and wait until it has exited.
        """
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def pause(self) -> None:
        """
        Stop it (SIGSTOP) without ending it: its connections stay open and
        nothing it is sent is answered (or, for a replica, acknowledged).
        """
        assert self._process is not None
        os.killpg(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        os.killpg(self._process.pid, signal.SIGCONT)

    def command(self, *args: str) -> bytes:
        """
        Send one command (after AUTH, if it has a password) and return the
        first line of the reply, raw.

        Enough for the harness and the layout tests, with no client library.
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as connection:
            if self.password is not None:
                reply = self._send(connection, ("AUTH", self.password))
                if reply != b"+OK":
                    return reply
            return self._send(connection, args)

    @staticmethod
    def _send(connection: socket.socket, args: tuple[str, ...]) -> bytes:
        connection.sendall(_encode_command(args))
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = connection.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply.split(b"\r\n", 1)[0]

    def query(self, *args: str, db: int | None = None) -> Any:
        """
        Send one command (after AUTH, if it has a password, and C{SELECT db})
        and return its whole reply, decoded: strings, integers, lists,
        None; an error reply as a L{RedisReplyError}.
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as connection:
            replies = connection.makefile("rb")
            if self.password is not None:
                connection.sendall(_encode_command(("AUTH", self.password)))
                _read_reply(replies)
            if db is not None:
                connection.sendall(_encode_command(("SELECT", str(db))))
                _read_reply(replies)
            connection.sendall(_encode_command(args))
            return _read_reply(replies)

    def flushall(self) -> None:
        reply = self.command("FLUSHALL")
        if reply != b"+OK":
            raise RuntimeError(f"FLUSHALL answered {reply!r}")


class PostgresServer(ThrowawayServer):
    """
    A PostgreSQL cluster on 127.0.0.1, trusting every local connection.

    C{initdb} and C{postgres} refuse to run as root, so when the tests run
    as root (CI does) the cluster belongs to the C{postgres} user that the
    Debian package makes, and its processes run as that user.

    C{fsync=off} makes it fast and loses nothing when only its processes
    die (the operating system still has the data); it would lose data at a
    power cut, which no test makes.  C{synchronous_commit} stays on: off,
    a commit is acknowledged before its WAL leaves the server's memory, and
    the kill tests rightly lose data.
    """

    label = "postgres"

    def __init__(self, *, standby_of: PostgresServer | None = None) -> None:
        """
        @param standby_of: a running primary this server is a streaming
            standby of: made with C{pg_basebackup} from it, instead of
            C{initdb}, at the first start.
        """
        self.standby_of = standby_of
        self.initdb = self._binary("initdb")
        self.postgres = self._binary("postgres")
        self._user = self._run_as()
        super().__init__("ccserver-pg-")
        self.data = self.directory / "data"
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        self._databases = count(1)
        self._initialised = False

    @staticmethod
    def _binary(name: str) -> str:
        return find_binary(name, package="postgresql-15", extra_dirs=POSTGRES_BIN_DIRS)

    @staticmethod
    def _run_as() -> str | None:
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise ServerBinaryMissing(
                "the tests run as root, and PostgreSQL will not: they need the "
                "'postgres' user that the Debian package postgresql-15 makes"
            ) from None
        return "postgres"

    def _user_kwargs(self) -> dict[str, Any]:
        if self._user is None:
            return {}
        return {"user": self._user, "group": pwd.getpwnam(self._user).pw_gid}

    def url_for(self, dbname: str, password: str | None = None) -> str:
        auth = "postgres" if password is None else f"postgres:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    @property
    def url(self) -> str:
        """
        The URL of the C{postgres} maintenance database.
        """
        return self.url_for("postgres")

    def _prepare(self) -> None:
        if self._initialised:
            return
        if self.standby_of is not None:
            # -R: standby.signal and primary_conninfo; a fast checkpoint, or
            # the copy waits for the next scheduled one
            self._run(
                self._binary("pg_basebackup"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.standby_of.port),
                "-U",
                "postgres",
                "-D",
                str(self.data),
                "-X",
                "stream",
                "-R",
                "--checkpoint=fast",
                "--no-sync",
            )
        else:
            self._run(
                self.initdb,
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
        self._initialised = True

    def _run(self, *command: str) -> None:
        """
        Run one of PostgreSQL's programs as the cluster's owner; raise if it fails.
        """
        result = subprocess.run(  # the status is checked below
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.directory,
            **self._user_kwargs(),
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{Path(command[0]).name} failed ({result.returncode}):\n"
                + result.stdout.decode(errors="replace")
            )

    def promote(self) -> None:
        """
        Make this standby the primary (C{pg_ctl promote}), and return once
        it accepts writes.
        """
        self._run(self._binary("pg_ctl"), "promote", "-D", str(self.data), "-w", "-t", "60")

    def query(self, statement: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """
        The rows of one statement.
        """
        import psycopg

        with psycopg.connect(self.url_for(dbname), autocommit=True, connect_timeout=5) as c:
            return c.execute(statement.encode()).fetchall()

    def arguments(self) -> list[str]:
        return [
            self.postgres,
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-k",
            str(self.directory),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ]

    def _spawn_options(self) -> dict[str, Any]:
        return {"cwd": self.directory, **self._user_kwargs()}

    def ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=2):
                return True
        except psycopg.OperationalError as e:
            raise NotYet(str(e)) from None

    def stop(self) -> None:
        """
        A fast shutdown (SIGINT): clients are disconnected, nothing is lost.
        """
        self._end(signal.SIGINT)

    def kill(self) -> None:
        """
        SIGKILL to the postmaster and every backend at once: a crash.  The
        next start recovers from the write-ahead log.
        """
        self._end(signal.SIGKILL)

    def _signal(self, process: subprocess.Popen[bytes], signum: signal.Signals) -> list[int]:
        # Backends are not in the postmaster's process group (each calls
        # setsid()), so they are found by their parent; a backend that
        # outlived a killed postmaster for a moment would still answer
        # its client, and one that outlived a stopped postmaster would
        # keep a new one from starting.
        children = _children(process.pid)
        os.kill(process.pid, signum)
        if signum == signal.SIGKILL:
            for pid in children:
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass
        return children

    def execute(self, statement: str, dbname: str = "postgres") -> None:
        """
        Run one statement outside a transaction (C{CREATE DATABASE} needs that).
        """
        import psycopg

        with psycopg.connect(self.url_for(dbname), autocommit=True, connect_timeout=5) as c:
            c.execute(statement.encode())

    def create_database(self) -> str:
        """
        Make a new, empty database and return its name.
        """
        name = f"ccserver_{os.getpid()}_{next(self._databases)}"
        self.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _children(pid: int) -> list[int]:
    """
    The processes whose parent is C{pid}, from /proc.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # after the command name, which is in parentheses and may hold
        # spaces: the state, then the parent's pid
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _wait_for_exit(pids: list[int]) -> None:
    """
    Wait until none of C{pids} runs any more (gone, or a zombie).
    """

    def ended(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        return state == "Z"

    wait_until(lambda: all(map(ended, pids)), what=f"processes {pids} ending")


class RedisSentinel(RedisServer):
    """
    A Redis Sentinel (C{redis-server} in sentinel mode) on 127.0.0.1,
    watching one primary under a service name.

    Sentinel rewrites its configuration file as it learns (the replicas,
    the other sentinels, a failover), so the file lives in its folder and
    is written only before the first start.
    """

    def __init__(
        self,
        service: str,
        primary: RedisServer,
        *,
        quorum: int,
        down_after_ms: int,
        failover_timeout_ms: int,
        password: str | None = None,
    ) -> None:
        super().__init__(password=password)
        self.service = service
        self.primary = primary
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.config_path = self.directory / "sentinel.conf"
        #: its id, known in advance, so that the others can be told of it
        self.myid = os.urandom(20).hex()
        #: the other sentinels and the replicas it is told of at its first
        #: start, instead of learning of them through the primary (its
        #: hello messages every 2 s, its INFO every 10 s)
        self.known: list[RedisServer] = []

    def arguments(self) -> list[str]:
        if not self.config_path.exists():
            auth = ""
            if self.primary.password is not None:
                auth += f"sentinel auth-pass {self.service} {self.primary.password}\n"
            if self.password is not None:
                # its own password, which the other sentinels use too
                auth += f"requirepass {self.password}\nsentinel sentinel-pass {self.password}\n"
            self.config_path.write_text(
                f"port {self.port}\n"
                "bind 127.0.0.1\n"
                f"dir {self.directory}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} {self.quorum}\n"
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {self.service} 1\n"
                f"sentinel myid {self.myid}\n" + auth + "".join(
                    f"sentinel known-sentinel {self.service} 127.0.0.1 {known.port} {known.myid}\n"
                    if isinstance(known, RedisSentinel)
                    else f"sentinel known-replica {self.service} 127.0.0.1 {known.port}\n"
                    for known in self.known
                )
            )
        return [self.binary, str(self.config_path), "--sentinel"]

    def primary_port(self) -> int | None:
        """
        The port of the primary this sentinel names now.
        """
        reply = self.query("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(reply[1]) if isinstance(reply, list) else None

    def state(self) -> dict[str, str]:
        """
        What this sentinel knows of the primary (C{SENTINEL MASTER}).
        """
        reply = self.query("SENTINEL", "MASTER", self.service)
        if not isinstance(reply, list):
            return {}
        return dict(zip(reply[::2], reply[1::2], strict=True))


class RedisSentinelGroup:
    """
    A Redis primary, its replicas and three sentinels watching them (quorum
    two): Redis Sentinel as production runs it, on loopback ports, with
    short timings (C{down_after_ms}, C{failover_timeout_ms}) so that a
    failover takes seconds.

    Two replicas by default: a write waits for one replica (C{WAIT}), and
    after a failover with one replica the new primary has none until the
    old one is back.
    """

    service = "ccserver"

    def __init__(
        self,
        *,
        replicas: int = 2,
        down_after_ms: int = 500,
        failover_timeout_ms: int = 2000,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        """
        @param password: the Redis servers' (C{requirepass}).
        @param sentinel_password: the sentinels' own.
        """
        self.down_after_ms = down_after_ms
        self.password = password
        self.sentinel_password = sentinel_password
        first = RedisServer(password=password)
        self.servers = [first] + [
            RedisServer(password=password, replica_of=first) for _ in range(replicas)
        ]
        self.sentinels = [
            RedisSentinel(
                self.service,
                first,
                quorum=2,
                down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms,
                password=sentinel_password,
            )
            for _ in range(3)
        ]
        for sentinel in self.sentinels:
            sentinel.known = [*self.servers[1:], *(s for s in self.sentinels if s is not sentinel)]
        _groups.append(self)

    def start(self) -> None:
        """
        Start every server, and return once the replica is in sync and
        each sentinel knows the replica and the two other sentinels (which
        they learn from each other through the primary, every two seconds):
        only then can they agree on a failover.
        """
        for server in self.servers:
            server.start()
        _agreed(
            lambda: all(
                "master_link_status:up" in replica.query("INFO", "replication")
                for replica in self.servers[1:]
            ),
            "the replicas in sync",
        )
        for sentinel in self.sentinels:
            sentinel.start()
        replicas = str(len(self.servers) - 1)

        def sentinels_ready() -> bool:
            for sentinel in self.sentinels:
                state = sentinel.state()
                if state.get("num-slaves") != replicas or state.get("num-other-sentinels") != "2":
                    return False
            return True

        _agreed(sentinels_ready, "the sentinels knowing the replica and each other")

    def url(self, db: int = 0) -> str:
        """
        The C{redis+sentinel://} URL of one of its databases.
        """
        auth = f":{quote(self.password, safe='')}@" if self.password is not None else ""
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        query = f"db={db}"
        if self.sentinel_password is not None:
            query += f"&sentinel_password={quote(self.sentinel_password, safe='')}"
        return f"redis+sentinel://{auth}{hosts}/{self.service}?{query}"

    @property
    def primary(self) -> RedisServer:
        """
        The server that every running sentinel names as the primary.
        """
        ports = {s.primary_port() for s in self.sentinels if s.running}
        [server] = [s for s in self.servers if s.port in ports and len(ports) == 1]
        return server

    def wait_for_failover(self, old: RedisServer) -> RedisServer:
        """
        Wait until every running sentinel names another server than C{old}
        as the primary and that server says it is one; return it.
        """

        def promoted() -> RedisServer | None:
            ports = {s.primary_port() for s in self.sentinels if s.running}
            if len(ports) != 1 or old.port in ports:
                return None
            [server] = [s for s in self.servers if s.port in ports]
            role = server.query("ROLE")
            return server if role[0] == "master" else None

        return _agreed(promoted, "the sentinels' failover")

    def remove(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            server.remove()


class PostgresStandbyPair:
    """
    A PostgreSQL primary and a streaming standby of it, made with
    C{pg_basebackup}, with synchronous replication (C{synchronous_standby_names
    = '*'}, C{synchronous_commit} on): a commit is answered once the
    standby has it on disk.
    """

    def __init__(self) -> None:
        self.primary = PostgresServer()
        self.standby = PostgresServer(standby_of=self.primary)
        self.database = ""
        _groups.append(self)

    def start(self) -> None:
        """
        Start the primary, make the database, copy it all to the standby,
        start the standby, then make replication synchronous; return once
        the standby is the synchronous one.
        """
        self.primary.start()
        self.database = self.primary.create_database()
        self.standby.start()
        # Only now: with a synchronous standby named but none connected,
        # every commit (CREATE DATABASE too) would wait for one.
        self.primary.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
        self.primary.execute("SELECT pg_reload_conf()")
        _agreed(
            lambda: self.primary.query(
                "SELECT 1 FROM pg_stat_replication WHERE state = 'streaming' AND sync_state = 'sync'"
            ),
            "the standby streaming synchronously",
        )

    @property
    def url(self) -> str:
        """
        The multi-host URL of the database: libpq tries each host and keeps
        the one that accepts writes.
        """
        return (
            f"postgresql://postgres@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
            f"/{self.database}?target_session_attrs=read-write"
        )

    def remove(self) -> None:
        self.standby.remove()
        self.primary.remove()


T = TypeVar("T")


def _agreed(ready: Callable[[], T | None], what: str) -> T:
    """
    C{ready()}'s first true value, within L{START_TIMEOUT}: how a group
    waits for its servers to agree.  Anything a server answers meanwhile
    (an error reply, a connection refused) is "not yet".
    """
    result = wait_until(ready, START_TIMEOUT, what=what, tolerate=(Exception,))
    assert result is not None
    return result


#: The failover groups made (and not yet removed), removed at exit too.
_groups: list[RedisSentinelGroup | PostgresStandbyPair] = []


class SilentServer:
    """
    A TCP port that accepts connections (the kernel completes the handshake
    for its backlog) and never answers: a server that hangs, which is worse
    for a client than one that is down.
    """

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        self.port: int = self._socket.getsockname()[1]

    def close(self) -> None:
        self._socket.close()


_servers: dict[str, RedisServer | PostgresServer] = {}


def redis_server(
    name: str = "shared", *, persistent: bool = False, password: str | None = None
) -> RedisServer:
    """
    This process' Redis server of that name, started at first use (and
    again if a test left it stopped).

    The fault tests use their own, persistent, one (C{name="faults"}), so
    that a test that stops or kills it cannot harm the others.
    """
    server = _servers.get(f"redis:{name}")
    if server is None:
        server = _servers[f"redis:{name}"] = RedisServer(persistent=persistent, password=password)
    assert isinstance(server, RedisServer)
    server.start()
    return server


def postgres_server(name: str = "shared") -> PostgresServer:
    """
    This process' PostgreSQL server of that name, started at first use
    (and again if a test left it stopped).
    """
    server = _servers.get(f"postgres:{name}")
    if server is None:
        server = _servers[f"postgres:{name}"] = PostgresServer()
    assert isinstance(server, PostgresServer)
    server.start()
    return server


def redis_sentinel_group(name: str = "shared") -> RedisSentinelGroup:
    """
    This process' Redis Sentinel group of that name (a primary, two
    replicas, three sentinels), started at first use.  The tests that kill
    a primary make their own.
    """
    group = _shared_groups.get(name)
    if group is None:
        group = _shared_groups[name] = RedisSentinelGroup()
        group.start()
    return group


_shared_groups: dict[str, RedisSentinelGroup] = {}


#: Every kind of store: the tests that must hold for all of them (the store
#: contract, the hostile input) run once for each.
STORE_KINDS = ("memory", "sqlite", "postgresql", "redis")


def clean_store_url(
    kind: str,
    cleanup: Callable[..., object],
    *,
    redis_name: str = "shared",
    redis_db: int = 3,
) -> str:
    """
    The URL of a clean, empty store of that kind: a new SQLite file, a new
    PostgreSQL database, a flushed Redis server (its database C{redis_db},
    not 0, so that selecting the database is tested too).

    @param cleanup: called as C{cleanup(function, *args)} with what removes
        it afterwards (C{TestCase.addCleanup}, or a fixture's list).
    """
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        folder = tempfile.mkdtemp(prefix="ccserver-sqlite-")
        cleanup(shutil.rmtree, folder, True)
        # an absolute path: sqlite:////tmp/...
        return f"sqlite:///{folder}/store.db"
    if kind == "postgresql":
        server = postgres_server()
        name = server.create_database()
        cleanup(server.drop_database, name)
        return server.url_for(name)
    if kind == "redis":
        redis = redis_server(redis_name)
        redis.flushall()
        return redis.url_for(redis_db)
    raise ValueError(f"no such store: {kind!r}")


def stop_all() -> None:
    """
    Stop and remove every shared server; called at the end of the session
    (and at exit, should the session end some other way).
    """
    while _servers:
        _, server = _servers.popitem()
        server.remove()
    _shared_groups.clear()
    while _groups:
        _groups.pop().remove()


atexit.register(stop_all)
