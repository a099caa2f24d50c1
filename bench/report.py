"""
The results: one Row per comparison (A's rounds against B's), its ratio
and verdict, the table printed at the end, and the rows as JSON.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench.cases import QUIET_SPREAD_LIMIT
from bench.histogram import pooled_p99_ms
from bench.output import say
from bench.rounds import Round


@dataclass
class Row:
    section: str
    case: str
    ours: list[Round] | None = None
    theirs: list[Round] | None = None
    ours_label: str = "ccserver"
    theirs_label: str = "node-oidc-provider"
    #: the names of A and B in the table's header
    ours_column: str = "ccserver"
    theirs_column: str = "peer"
    target: float | None = None
    check_p99: bool = True
    note: str = ""
    status: str = ""  # "", "not available", "ERROR"
    #: what the rates count, in the table's header
    unit: str = "tok/s"
    #: a row of one server alone (no B): B's columns show "-"
    single: bool = False
    #: added to the verdict: why it does not quite say what the target asks
    caveat: str = ""
    #: the ratio the target is held to: "rate" (tokens/s, the machine's
    #: throughput), "per core" (tokens per CPU-second, what a token costs),
    #: or "p99" (no ratio: ccserver's p99 no worse than the peer's), or
    #: "purge p99" (A: the windows during a purge, B: the quiet ones; the
    #: ratio: the p99 of all of A's answers over that of all of B's, at
    #: most the target; A's largest p99 over B's median p99 for rounds
    #: without histograms)
    judge: str = "rate"

    def ratio(self) -> float | None:
        if not self.ours or not self.theirs:
            return None
        if self.judge == "purge p99":
            during, quiet = pooled_p99_ms(r.raw for r in self.ours), pooled_p99_ms(
                r.raw for r in self.theirs
            )
            if during is not None and quiet is not None:
                return during / quiet if quiet > 0 else None
            quiet = med(self.theirs, "p99_ms")
            return max(r.p99_ms for r in self.ours) / quiet if quiet > 0 else None
        return statistics.median(
            a.tokens_per_s / b.tokens_per_s for a, b in zip(self.ours, self.theirs, strict=True)
        )

    def per_core_ratio(self) -> float | None:
        """
        The median of the rounds' ratios of tokens per CPU-second (None
        when a round counted no CPU time for either server).
        """
        if not self.ours or not self.theirs or self.judge == "purge p99":
            return None
        pairs = list(zip(self.ours, self.theirs, strict=True))
        if any(a.per_core <= 0 or b.per_core <= 0 for a, b in pairs):
            return None
        return statistics.median(a.per_core / b.per_core for a, b in pairs)

    def quiet_spread(self) -> float | None:
        """
        A purge row's control: the quiet windows' largest p99 over their
        median (None for other rows, or without quiet windows).
        """
        if self.judge != "purge p99" or not self.theirs:
            return None
        median = med(self.theirs, "p99_ms")
        return max(r.p99_ms for r in self.theirs) / median if median > 0 else None

    def judged_ratio(self) -> float | None:
        return self.per_core_ratio() if self.judge == "per core" else self.ratio()

    def verdict(self) -> str:
        if self.status:
            return self.status
        if self.judge == "p99":
            if not self.ours or not self.theirs:
                return "info"
            worse = med(self.ours, "p99_ms") > med(self.theirs, "p99_ms")
            return "FAIL (p99)" if worse else "PASS"
        ratio = self.judged_ratio()
        if ratio is None or self.target is None:
            return "info"
        reasons = []
        if self.judge == "purge p99":
            spread = self.quiet_spread()
            if ratio > self.target:
                reasons.append("p99")
            elif spread is not None and spread > QUIET_SPREAD_LIMIT:
                return (f"VOID (the quiet windows disturbed: their largest p99 "
                        f"{spread:.1f}x their median)")
        elif ratio < self.target:
            reasons.append("ratio")
        if self.check_p99 and self.judge != "purge p99" and self.ours and self.theirs:
            if med(self.ours, "p99_ms") > med(self.theirs, "p99_ms"):
                reasons.append("p99")
        verdict = "PASS" if not reasons else "FAIL (" + ", ".join(reasons) + ")"
        return f"{verdict} {self.caveat}" if self.caveat else verdict

    def as_json(self) -> dict[str, Any]:
        def rounds(rs: list[Round] | None) -> Any:
            return [
                {**{k: v for k, v in r.__dict__.items() if k != "raw"}, "per_core": r.per_core}
                for r in rs
            ] if rs else None

        return {
            "section": self.section,
            "case": self.case,
            "ours_label": self.ours_label,
            "theirs_label": self.theirs_label,
            "ours": rounds(self.ours),
            "theirs": rounds(self.theirs),
            "unit": self.unit,
            "ratio": self.ratio(),
            "per_core_ratio": self.per_core_ratio(),
            "judge": self.judge,
            "target": self.target,
            "verdict": self.verdict(),
            "note": self.note,
        }


def med(rounds: list[Round], attribute: str) -> float:
    return float(statistics.median(getattr(r, attribute) for r in rounds))


def print_table(rows: list[Row]) -> None:
    """
    One block per section; A and B are named in each block's header
    (tokens/s and p50/p99 are medians over the rounds; "other" is the most
    CPU, in cores, that processes other than the bench's used in any of the
    row's rounds).
    """
    width = 150
    section = None
    say("=" * width)
    for row in rows:
        if row.section != section:
            section = row.section
            if section != rows[0].section:
                say("-" * width)
            say(f"[{section}]")
            a, b = row.ours_column, row.theirs_column
            unit = " " + row.unit
            say(
                f"{'case':<22} {a + unit:>15} {b + unit:>15} {'ratio':>6}"
                f" {a + ' /cpu-s':>15} {b + ' /cpu-s':>12} {'/core':>6}"
                f" {a + ' p50/p99':>17} {b + ' p50/p99':>17} {'other':>5} {'target':>14}  result"
            )
        if row.status or not row.ours or not (row.theirs or row.single):
            verdict = row.status or ("ERROR" if row.judge != "purge p99" else row.verdict())
            say(f"{row.case:<22} {verdict}: {row.note}")
            continue
        ratio = row.ratio()
        per_core = row.per_core_ratio()
        if row.judge == "p99":
            target = "p99 <= peer"
        elif row.judge == "purge p99":
            target = f"p99 x<={row.target:.2f}"
        else:
            target = f"{row.judge} >={row.target:.2f}" if row.target is not None else "-"
        ours = f"{med(row.ours, 'p50_ms'):.1f}/{med(row.ours, 'p99_ms'):.1f} ms"
        if row.theirs:
            theirs = f"{med(row.theirs, 'p50_ms'):.1f}/{med(row.theirs, 'p99_ms'):.1f} ms"
            theirs_rate = f"{med(row.theirs, 'tokens_per_s'):>15,.0f}"
            ratio_text = f"{ratio:>6.2f}"
            theirs_core = f"{med(row.theirs, 'per_core'):>12,.0f}"
            core_ratio = f"{per_core:>6.2f}" if per_core is not None else f"{'-':>6}"
        else:
            theirs, theirs_rate, ratio_text = "-", f"{'-':>15}", f"{'-':>6}"
            theirs_core, core_ratio = f"{'-':>12}", f"{'-':>6}"
        other = max(r.other_cores for r in row.ours + (row.theirs or []))
        say(
            f"{row.case:<22} {med(row.ours, 'tokens_per_s'):>15,.0f}"
            f" {theirs_rate} {ratio_text} {med(row.ours, 'per_core'):>15,.0f} {theirs_core} {core_ratio}"
            f" {ours:>17} {theirs:>17} {other:>5.2f} {target:>14}  {row.verdict()}"
        )
        if row.note:
            say(f"{'':<22} ({row.note})")
    say("=" * width)
    say(
        "tok/s (reg/s) and p50/p99: medians over the rounds; ratio: median of the per-round ratios; "
        "/cpu-s: tokens per CPU-second of the\nserver's processes (what a token costs; robust-ish "
        "to a shared machine), /core: median of the per-round ratios of those; other: the most CPU\n"
        "(cores) used by processes outside the bench in any of the row's rounds (above ~0.3 the "
        "machine was shared).\n"
        "PASS: the ratio the target names (rate or per core) at or above it and, against the peer, "
        "ccserver's p99 no worse."
    )
    if any(row.judge == "purge p99" for row in rows):
        say("purge rows: purge = the windows during the purge, quiet = those before it; ratio: the p99 of "
            "every answer during the purge over that of every\nquiet answer (the windows pooled); "
            "PASS at or below the target.")

