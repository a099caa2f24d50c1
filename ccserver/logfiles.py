"""
Where log lines go, for the access log and the audit trail alike: an
inherited stream (standard output) written in pieces a pipe keeps whole, or
a file opened for appending that follows logrotate.  Writes block: the
writers call them from a timer, in batches, off the request path.
"""

from __future__ import annotations

import errno
import os
import select
import stat
from collections.abc import Sequence
from typing import Protocol

from twisted.logger import Logger

_log = Logger()


class Destination(Protocol):
    """
    Where lines go.  C{write} raises L{OSError} when they cannot go (the
    writer keeps them and tries again); it writes every line whole or not
    at all, and says how many of them went.
    """

    description: str

    def write(self, lines: Sequence[bytes]) -> int: ...

    def close(self) -> None: ...


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class StreamDestination:
    """
    An inherited stream (standard output), written in pieces of whole lines
    of at most C{PIPE_BUF} bytes, which a pipe keeps whole among other
    writers' (the workers', twist's own log).
    """

    def __init__(self, fd: int = 1, description: str = "standard output") -> None:
        self._fd = fd
        self.description = description

    def write(self, lines: Sequence[bytes]) -> int:
        done = 0
        piece: list[bytes] = []
        size = 0
        try:
            for line in lines:
                if piece and size + len(line) > select.PIPE_BUF:
                    _write_all(self._fd, b"".join(piece))
                    done += len(piece)
                    piece, size = [], 0
                piece.append(line)
                size += len(line)
            if piece:
                _write_all(self._fd, b"".join(piece))
                done += len(piece)
        except OSError:
            if not done:
                raise
        # the lines of a piece that failed wait for the next flush
        return done

    def close(self) -> None:
        pass  # not ours


class FileDestination:
    """
    A file, opened for appending (made with mode 0640 if it does not exist).
    If the path comes to name another file (logrotate moved it away), the
    next write opens the new one: no restart and no C{copytruncate} needed.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.description = path
        self._fd = self._open()

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file", self.path)
        return fd

    def _follow(self) -> None:
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            named = None
        current = os.fstat(self._fd)
        if named is None or (named.st_ino, named.st_dev) != (current.st_ino, current.st_dev):
            fd = self._open()
            os.close(self._fd)
            self._fd = fd

    def write(self, lines: Sequence[bytes]) -> int:
        self._follow()
        # O_APPEND: one write lands whole at the end, whatever other
        # processes append meanwhile
        _write_all(self._fd, b"".join(lines))
        return len(lines)

    def close(self) -> None:
        os.close(self._fd)


class Writes:
    """
    Batches of lines written to one destination, with word in the main log,
    once, when it cannot be written to, and once when it can again: the
    access log's and the audit trail's flushes both go through one.
    """

    def __init__(self, destination: Destination, what: str, waiting: str) -> None:
        """
        @param what: what is written, as in "Cannot write C{what} to ...".
        @param waiting: what happens to the lines meanwhile.
        """
        self.destination = destination
        self._cannot = f"Cannot write {what} to {{destination}}: {{problem}}; {waiting}"
        self._again = f"{what[0].upper()}{what[1:]} is written to {{destination}} again"
        self._failing: str | None = None

    def write(self, lines: Sequence[bytes]) -> int:
        """
        Write C{lines}, and say how many went (none when the destination
        failed outright: the caller keeps them for the next time).
        """
        try:
            written = self.destination.write(lines)
        except OSError as e:
            problem = f"{e.strerror or e}"
            if self._failing != problem:
                self._failing = problem
                _log.error(self._cannot, destination=self.destination.description, problem=problem)
            return 0
        if self._failing is not None and written == len(lines):
            self._failing = None
            _log.info(self._again, destination=self.destination.description)
        return written
