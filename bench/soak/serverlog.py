"""
What the server's log says while the soak runs: its purges of expired
token records (the timer every process runs), and every event logged at
the error or critical level, or as a warning.

C{twist} writes one JSON event per line (each after an ASCII record
separator, RFC 7464) when its output is not a terminal, as here; the
soak reads what was appended since it last looked.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

#: ccserver.services.purge_expired's line.
PURGED = "Purged {n} expired token records"
RECORD_SEPARATOR = "\x1e"


@dataclass
class LogNews:
    #: purges that dropped something, and the records they dropped
    purges: int = 0
    purged: int = 0
    #: error and critical events, each as one line
    errors: list[str] = field(default_factory=list)
    #: warnings, by their format
    warnings: Counter[str] = field(default_factory=Counter)

    def add(self, other: LogNews) -> None:
        self.purges += other.purges
        self.purged += other.purged
        self.errors.extend(other.errors)
        self.warnings.update(other.warnings)


def describe(event: dict[str, object]) -> str:
    """
    One line for an event: its namespace, its message (the format with its
    fields, as Twisted writes it), and the type of its failure, if any.
    """
    from twisted.logger import formatEvent  # noqa: PLC0415

    message = formatEvent(event).splitlines()[0] if event.get("log_format") else ""
    failure = event.get("log_failure")
    kind = ""
    if isinstance(failure, dict):
        failure_type = failure.get("type")
        if isinstance(failure_type, dict):
            kind = f" ({failure_type.get('__module__')}.{failure_type.get('__name__')})"
    return f"{event.get('log_namespace', '?')}: {message}{kind}"


def read_events(text: str) -> LogNews:
    """
    What C{text}, whole lines of the log, says.  A line that is not JSON
    (something printed outside the logger) counts as an error.
    """
    news = LogNews()
    for line in text.splitlines():
        line = line.strip(RECORD_SEPARATOR + " \t")
        if not line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            news.errors.append(f"(not a log event) {line[:200]}")
            continue
        if not isinstance(event, dict):
            continue
        level = event.get("log_level")
        name = level.get("name") if isinstance(level, dict) else None
        if event.get("log_format") == PURGED and isinstance(event.get("n"), int):
            news.purges += 1
            news.purged += event["n"]
        if name in ("error", "critical"):
            news.errors.append(describe(event))
        elif name == "warn":
            news.warnings[str(event.get("log_format", "?"))] += 1
    return news


class LogFollower:
    """
    The lines appended to a log file since the last read (a last line not
    yet ended is left for the next).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def skip_to_end(self) -> None:
        try:
            self.offset = self.path.stat().st_size
        except FileNotFoundError:
            self.offset = 0

    def read(self) -> LogNews:
        try:
            with open(self.path, "rb") as log:
                log.seek(self.offset)
                data = log.read()
        except FileNotFoundError:
            return LogNews()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return read_events(data[:end].decode("utf-8", errors="replace"))
