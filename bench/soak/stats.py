"""
The soak's figures: what one interval saw (requests by kind and answer,
latencies), percentiles, and the verdict on growth after the warm-up.
Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Growth past this share of the warm value fails the verdict.
GROWTH_LIMIT = 0.10


def percentile(values: Sequence[float], share: float) -> float | None:
    """
    The nearest-rank percentile of C{values} (any order): the smallest
    value at or below which at least C{share} (0 to 1) of them lie; None
    for no values.
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def is_server_error(answer: str) -> bool:
    """
    Whether an answer (an HTTP status, or what went wrong instead) is a 5xx.
    """
    return len(answer) == 3 and answer.startswith("5") and answer.isdigit()


@dataclass
class KindFigures:
    """
    The requests of one kind in one interval (or the whole run).
    """

    #: answer -> count: the status ("200", "503"), or what happened instead
    #: ("timeout", "connection lost: ..."), or "unexpected 401"
    answers: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.answers.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "answers": dict(sorted(self.answers.items())),
            "p50_ms": milliseconds(percentile(self.latencies, 0.50)),
            "p99_ms": milliseconds(percentile(self.latencies, 0.99)),
        }


def milliseconds(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


@dataclass
class Interval:
    """
    What the load saw from C{start} to C{end} (seconds since it began).
    """

    start: float
    end: float
    kinds: dict[str, KindFigures] = field(default_factory=dict)

    def record(self, kind: str, answer: str, latency: float | None) -> None:
        """
        One request of C{kind}, answered C{answer} after C{latency} seconds
        (None: no answer to time).
        """
        figures = self.kinds.setdefault(kind, KindFigures())
        figures.answers[answer] += 1
        if latency is not None:
            figures.latencies.append(latency)

    @property
    def requests(self) -> int:
        return sum(k.requests for k in self.kinds.values())

    @property
    def rate(self) -> float:
        length = self.end - self.start
        return self.requests / length if length > 0 else 0.0

    def latencies(self) -> list[float]:
        return [value for figures in self.kinds.values() for value in figures.latencies]

    def server_errors(self) -> int:
        return sum(n for k in self.kinds.values() for answer, n in k.answers.items() if is_server_error(answer))


def failures(kinds: dict[str, KindFigures], expected: dict[str, str]) -> Counter[str]:
    """
    The answers that were not the kind's C{expected} one, as C{"kind
    answer"}: 5xx, other statuses, timeouts, lost connections.
    """
    wrong: Counter[str] = Counter()
    for kind, figures in kinds.items():
        for answer, n in figures.answers.items():
            if answer != expected.get(kind):
                wrong[f"{kind} {answer}"] += n
    return wrong


def merge(intervals: Iterable[Interval]) -> dict[str, KindFigures]:
    """
    The figures of every kind over C{intervals} together.
    """
    total: dict[str, KindFigures] = {}
    for interval in intervals:
        for kind, figures in interval.kinds.items():
            into = total.setdefault(kind, KindFigures())
            into.answers.update(figures.answers)
            into.latencies.extend(figures.latencies)
    return total


@dataclass(frozen=True)
class Growth:
    """
    How much a measure (one process's RSS, or its open files) grew from
    the first interval after the warm-up to the last interval: the median
    of each one's samples, so that a single busy moment does not decide.
    """

    name: str
    warm: float
    last: float
    limit: float = GROWTH_LIMIT

    @property
    def change(self) -> float:
        """
        The growth as a share of the warm value (-0.05: 5% smaller).
        """
        if self.warm == 0:
            return 0.0 if self.last == 0 else math.inf
        return self.last / self.warm - 1

    @property
    def passed(self) -> bool:
        # not change <= limit: 110 / 100 - 1 is a hair above 0.1 in floats
        return self.last <= self.warm * (1 + self.limit)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "warm": self.warm, "last": self.last,
                "change": None if math.isinf(self.change) else round(self.change, 4),
                "limit": self.limit, "passed": self.passed}


def growth(
    name: str, samples: Sequence[tuple[float, float]], warmup: float, window: float, end: float,
    limit: float = GROWTH_LIMIT,
) -> Growth | None:
    """
    The L{Growth} of C{samples} ((seconds since the start, value) pairs):
    the median from C{warmup} to C{warmup + window} against the median of
    the last C{window} before C{end}.  None when the run is too short for
    the two windows to be apart, or one of them has no sample.
    """
    last_from = end - window
    if last_from < warmup + window:
        return None
    warm = [value for at, value in samples if warmup <= at < warmup + window]
    last = [value for at, value in samples if last_from <= at <= end]
    if not warm or not last:
        return None
    return Growth(name, float(statistics.median(warm)), float(statistics.median(last)), limit)
