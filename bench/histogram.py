"""
Latency distributions pooled over rounds: each paced round's answers
counted in buckets (C{paced_hist} in its BENCH_RESULT line, made by
C{result.lua}: bucket C{floor(ln(us) * PER_E)}, about half a percent
wide), added together, and a percentile read from the sum, so that a phase
of several rounds has one p99 of all its requests rather than a p99 of
each round.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: Buckets per unit of ln(microseconds): as C{result.lua} counts them.
PER_E = 200


def pooled(raws: Iterable[Mapping[str, Any]]) -> Counter[int] | None:
    """
    The sum of the rounds' histograms, or None if any round has none (a
    closed-loop round, or one from before the histograms).
    """
    total: Counter[int] = Counter()
    for raw in raws:
        hist: Sequence[Sequence[int]] | None = raw.get("paced_hist")
        if hist is None:
            return None
        for bucket, count in hist:
            total[int(bucket)] += int(count)
    return total


def percentile_ms(counts: Mapping[int, int], q: float) -> float | None:
    """
    The C{q} quantile (0 < q <= 1) of C{counts}, in milliseconds: the upper
    edge of the bucket it falls in (so never below the true value, and at
    most half a percent above it); None for no counts.
    """
    total = sum(counts.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen >= rank:
            return math.exp((bucket + 1) / PER_E) / 1000
    return None  # unreachable: seen ends at total


def pooled_p99_ms(raws: Iterable[Mapping[str, Any]]) -> float | None:
    """
    The p99 of every answer of the rounds together, or None (L{pooled}).
    """
    counts = pooled(raws)
    return None if counts is None else percentile_ms(counts, 0.99)
