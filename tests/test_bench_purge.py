"""
The growth section's purge row (bench/purge.py, bench/growth.py): its
pure parts (the expiry it gives the fill, the phases of its windows, the
verdict, the row in the table) and its loop over a runner of our own.
"""

from __future__ import annotations

import io
import math
import os
import subprocess
import threading
import time
from contextlib import redirect_stdout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench import growth, histogram, purge, wrk
from bench.cases import PURGE_P99_TARGET
from bench.cli import parse_args
from bench.report import Row, print_table
from bench.rounds import Round
from bench.wrk import Load
from tests.test_bench import rounds


def window(started: float, ended: float, p99: float = 10.0) -> purge.Window:
    return purge.Window(started, ended, Round("s", 100.0, 1.0, p99, requests=100, cpu_cores=1.0,
                                               other_cores=0.0))


def with_histogram(item: Any, latencies_us: list[int]) -> Any:
    """
    C{item} (a window or a round) with its round's C{paced_hist} made from
    C{latencies_us} as result.lua makes it.
    """
    r = item.round if isinstance(item, purge.Window) else item
    r.raw["paced_hist"] = [list(pair) for pair in sorted(histogram_of(latencies_us).items())]
    return item


def histogram_of(latencies_us: list[int]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for us in latencies_us:
        bucket = math.floor(math.log(max(us, 1)) * histogram.PER_E)
        counts[bucket] = counts.get(bucket, 0) + 1
    return counts


class HistogramTests(SynchronousTestCase):
    def test_percentile(self) -> None:
        """
        A percentile is read from the pooled counts as the upper edge of
        its bucket: at or above the true value, within half a percent.
        """
        raws = [{"paced_hist": sorted(histogram_of([100, 200, 300]).items())},
                {"paced_hist": sorted(histogram_of([400] * 97).items())}]
        counts = histogram.pooled(raws)
        assert counts is not None
        self.assertEqual(sum(counts.values()), 100)
        for q, true_us in ((0.01, 100), (0.03, 300), (0.99, 400), (1.0, 400)):
            got = histogram.percentile_ms(counts, q)
            assert got is not None
            self.assertGreaterEqual(got * 1000, true_us)
            self.assertLessEqual(got * 1000, true_us * 1.006)

    def test_result_lua_histogram(self) -> None:
        """
        wrk with result.lua, paced (a real wrk against a small HTTP server
        here): its line's C{paced_hist} counts every paced answer, and the
        p99 read from it is its own C{paced_p99_us}, to within a bucket.
        """

        class Active(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # its head and body are two writes: without this, each waits
            # for the client's delayed acknowledgement
            disable_nagle_algorithm = True

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                self.rfile.read(int(self.headers["Content-Length"]))
                body = b'{"active":true}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Active)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        script = Path(purge.__file__).parent / "introspect.lua"
        done = subprocess.run(
            ["wrk", "-t1", "-c2", "-d2s", "-s", str(script),
             f"http://127.0.0.1:{server.server_address[1]}/token/introspect", "--", "YTpi", "tok"],
            capture_output=True, text=True, timeout=60, check=True,
            env={**os.environ, "BENCH_RATE": "300", "BENCH_THREADS": "1"},
        )
        raw = wrk.result(done.stdout.splitlines())
        assert raw is not None, done.stdout
        counts = histogram.pooled([raw])
        assert counts is not None
        self.assertGreater(sum(counts.values()), 200)
        self.assertLessEqual(sum(counts.values()), raw["requests"])
        p99 = histogram.percentile_ms(counts, 0.99)
        assert p99 is not None
        self.assertGreaterEqual(p99 * 1000, raw["paced_p99_us"])
        self.assertLessEqual(p99 * 1000, raw["paced_p99_us"] * 1.006 + 1)

    def test_no_histogram(self) -> None:
        self.assertIsNone(histogram.pooled([{"paced_hist": []}, {}]))
        self.assertIsNone(histogram.pooled_p99_ms([{}]))
        self.assertIsNone(histogram.percentile_ms({}, 0.99))


class ExpiryTests(SynchronousTestCase):
    def test_fill_estimate(self) -> None:
        """
        Three quarters of the rate each store's fill made on a shared
        machine, plus a fixed cost.
        """
        self.assertEqual(purge.fill_estimate("postgresql", 10_000_000), 15 + 10_000_000 / 33_750)
        self.assertEqual(purge.fill_estimate("sqlite", 1_000_000), 15 + 1_000_000 / 15_000)
        self.assertEqual(purge.fill_estimate("redis", 0), 15)

    def test_rows_estimate(self) -> None:
        """
        Two kinds x two servers x (a warm-up and the rounds, each with wrk's
        overhead).
        """
        self.assertEqual(purge.rows_estimate(3, 8, 2), 2 * 2 * (2 + 1.5 + 3 * 9.5))
        self.assertEqual(purge.rows_estimate(1, 4, 2, servers=1, kinds=1), 2 + 1.5 + 5.5)

    def test_expiry(self) -> None:
        """
        The fill's start, plus the fill, the rows and the quiet window: a
        fill at the measured rate leaves the rows done well before it.
        """
        args = SimpleNamespace(rounds=3, seconds=8, warmup=2, purge_quiet_seconds=60)
        expires = purge.expiry(1000.5, "redis", 10_000_000, args)
        self.assertEqual(expires, 1001 + 15 + 889 + 128 + 60)
        measured_fill = 10_000_000 / purge.FILL_RATES["redis"]
        self.assertLess(1000.5 + measured_fill + purge.rows_estimate(3, 8, 2), expires - 60)

    def test_time_limit(self) -> None:
        self.assertEqual(purge.time_limit(10_000_000), 5 + 120 + 2000)


class PhaseTests(SynchronousTestCase):
    def progress(self, *samples: tuple[float, int]) -> purge.Progress:
        return purge.Progress(100, list(samples))

    def test_begun_and_ended(self) -> None:
        """
        The purge began after the last sample with nothing gone, and ended
        at the first with everything gone.
        """
        progress = self.progress((10, 0), (11, 0), (12, 40), (13, 100), (14, 100))
        self.assertEqual((progress.begun, progress.ended, progress.deleted), (11, 13, 100))
        self.assertEqual((self.progress((10, 5)).begun, self.progress().begun), (10, None))
        self.assertIsNone(self.progress((10, 0), (11, 99)).ended)

    def test_a_few_keys_are_not_the_purge(self) -> None:
        """
        Up to a thousandth of the count gone (Redis expiring a key of its
        own) is not the purge yet.
        """
        progress = purge.Progress(10_000, [(10, 0), (11, 10), (12, 10), (13, 11), (14, 5000)])
        self.assertEqual(progress.begun, 12)

    def test_phases(self) -> None:
        progress = self.progress((10, 0), (20, 0), (21, 50), (30, 100))
        self.assertEqual(purge.phase(window(5, 20), progress), purge.QUIET)
        self.assertEqual(purge.phase(window(15, 20.5), progress), purge.DURING)
        self.assertEqual(purge.phase(window(25, 29), progress), purge.DURING)
        self.assertEqual(purge.phase(window(29, 31), progress), purge.DURING)
        self.assertEqual(purge.phase(window(30, 35), progress), purge.AFTER)

    def test_phases_before_and_without_an_end(self) -> None:
        """
        Nothing gone yet: every window is quiet; a purge that has not
        ended: every window since it began is during it.
        """
        self.assertEqual(purge.phase(window(50, 55), self.progress((10, 0), (60, 0))), purge.QUIET)
        self.assertEqual(purge.phase(window(500, 505), self.progress((10, 0), (20, 1))), purge.DURING)


class VerdictTests(SynchronousTestCase):
    def windows(self, *phased: tuple[str, float]) -> list[tuple[str, purge.Window]]:
        return [(p, window(0, 1, p99)) for p, p99 in phased]

    def test_figures(self) -> None:
        """
        The median quiet p99, the largest and median p99 during the purge,
        the largest after it; missing phases are None.
        """
        q, d, a = purge.QUIET, purge.DURING, purge.AFTER
        figures = purge.verdict(self.windows((q, 10), (q, 12), (q, 30), (d, 15), (d, 24), (a, 90), (a, 5)))
        self.assertEqual(figures, purge.Verdict(12, 24, 19.5, 90, quiet_max=30))
        self.assertEqual(purge.verdict(self.windows((d, 5))), purge.Verdict(None, 5, 5, None))

    def test_pooled_figures(self) -> None:
        """
        With the rounds' histograms, the p99 of every quiet answer and of
        every answer during the purge.
        """
        q, d = purge.QUIET, purge.DURING
        windows = [
            (q, with_histogram(window(0, 1, 10), [1_000] * 99 + [10_000])),
            (q, with_histogram(window(1, 2, 12), [1_000] * 100)),
            (d, with_histogram(window(2, 3, 50), [2_000] * 98 + [50_000] * 2)),
        ]
        figures = purge.verdict(windows)
        assert figures.quiet_pooled is not None and figures.during_pooled is not None
        self.assertLessEqual(abs(figures.quiet_pooled - 1.0), 0.006)
        self.assertLessEqual(abs(figures.during_pooled - 50.0), 0.3)

    def test_row_pools_the_windows(self) -> None:
        """
        With histograms, the row judges the p99 of all the answers during
        the purge over that of all the quiet ones: one window whose p99 is
        five times the quiet median, among many that are not, passes; a
        purge whose slow answers add up to more than a hundredth fails.
        """
        quiet = [with_histogram(r, [1_000] * 995 + [5_000] * 5)
                 for r in rounds("q", *[(1000, 1, 5)] * 4)]
        one_bad = [with_histogram(r, [1_000] * 995 + [5_000] * 5)
                   for r in rounds("d", *[(1000, 1, 5)] * 9)]
        one_bad.append(with_histogram(rounds("d", (1000, 1, 25))[0], [1_000] * 980 + [25_000] * 20))
        row = Row("g", "c", ours=one_bad, theirs=quiet, target=2.0, judge="purge p99")
        ratio = row.ratio()
        assert ratio is not None
        self.assertLessEqual(abs(ratio - 1.0), 0.01)
        self.assertEqual(row.verdict(), "PASS")
        many_bad = [with_histogram(r, [1_000] * 970 + [25_000] * 30)
                    for r in rounds("d", *[(1000, 1, 25)] * 3)]
        row = Row("g", "c", ours=many_bad, theirs=quiet, target=2.0, judge="purge p99")
        self.assertEqual(row.verdict(), "FAIL (p99)")
        # a round without a histogram: the windows' figures, as before
        row = Row("g", "c", ours=one_bad + rounds("d", (1000, 1, 25)), theirs=quiet, target=2.0,
                  judge="purge p99")
        self.assertEqual(row.ratio(), 25 / 5)

    def test_disturbed_quiet_windows_void_a_pass(self) -> None:
        """
        A quiet window far above the others (a stall with no purge at all)
        raises the baseline and so flatters the ratio: a row within its
        target is then void, not passed.  A row over its target still
        fails, and quiet windows that stray within the limit still pass.
        """
        calm = [with_histogram(r, [1_000] * 995 + [5_000] * 5)
                for r in rounds("q", *[(1000, 1, 5)] * 11)]
        stalled = with_histogram(rounds("q", (1000, 400, 1_600))[0], [400_000] * 500 + [1_600_000] * 500)
        during = [with_histogram(r, [1_000] * 995 + [9_000] * 5) for r in rounds("d", *[(1000, 1, 9)] * 5)]
        row = Row("g", "c", ours=during, theirs=[stalled, *calm], target=2.0, judge="purge p99")
        self.assertEqual(row.quiet_spread(), 1_600 / 5)
        self.assertEqual(row.verdict(), "VOID (the quiet windows disturbed: their largest p99 320.0x their median)")
        slow = [with_histogram(r, [1_000] * 900 + [5_000_000] * 100) for r in rounds("d", *[(1000, 1, 5_000)] * 5)]
        row = Row("g", "c", ours=slow, theirs=[stalled, *calm], target=2.0, judge="purge p99")
        self.assertEqual(row.verdict(), "FAIL (p99)")
        within = with_histogram(rounds("q", (1000, 1, 14))[0], [1_000] * 990 + [14_000] * 10)
        row = Row("g", "c", ours=during, theirs=[within, *calm], target=2.0, judge="purge p99")
        self.assertEqual(row.verdict(), "PASS")
        self.assertIsNone(Row("s", "c", ours=during, theirs=calm).quiet_spread())

    def test_describe(self) -> None:
        progress = purge.Progress(1000, [(10, 0), (12, 500), (14, 1000)])
        self.assertEqual(purge.describe(progress, False), "purge 1,000 in 4 s (250/s)")
        self.assertEqual(purge.describe(purge.Progress(1000, [(10, 0)]), False), "the purge had not begun")
        self.assertEqual(purge.describe(purge.Progress(1000, [(10, 0), (11, 300)]), True),
                         "the purge had not ended (300 of 1,000 gone at the time limit)")

    def test_row(self) -> None:
        """
        The row judges the largest p99 during the purge over the median
        quiet p99, at most the target (one bad window is enough to fail;
        no quiet window or none during the purge: info); in the table, the
        ratio column is that ratio, the target said as such.
        """
        quiet = rounds("q", (500, 2, 10), (500, 2, 12), (500, 2, 30))
        during = rounds("d", (500, 3, 15), (500, 3, 25))
        row = Row("growth", "sqlite purge", ours=during, theirs=quiet, ours_column="purge",
                  theirs_column="quiet", unit="req/s", target=PURGE_P99_TARGET, judge="purge p99")
        self.assertEqual((row.ratio(), row.per_core_ratio(), row.verdict()), (25 / 12, None, "FAIL (p99)"))
        self.assertEqual(Row("g", "c", ours=during[:1], theirs=quiet, target=2.0, judge="purge p99").verdict(),
                         "PASS")
        self.assertEqual(Row("g", "c", ours=rounds("d", (500, 3, 24)), theirs=quiet, target=2.0,
                             judge="purge p99").verdict(), "PASS")
        self.assertEqual(Row("g", "c", ours=during, target=2.0, judge="purge p99").verdict(), "info")
        self.assertEqual(Row("g", "c", theirs=quiet, target=2.0, judge="purge p99").verdict(), "info")
        out = io.StringIO()
        with redirect_stdout(out):
            print_table([row, Row("growth", "redis purge", ours=during, target=2.0, judge="purge p99",
                                  note="no quiet window")])
        lines = out.getvalue().splitlines()
        self.assertEqual(lines[3].split()[:4], ["sqlite", "purge", "500", "500"])
        self.assertIn("2.08", lines[3])
        self.assertTrue(lines[3].endswith("p99 x<=2.00  FAIL (p99)"), lines[3])
        self.assertEqual(lines[4], f"{'redis purge':<22} info: no quiet window")
        self.assertTrue(lines[-2].startswith("purge rows: purge = the windows during the purge"), lines[-2])


class InvalidTests(SynchronousTestCase):
    def test_invalid_rows_print_no_figures(self) -> None:
        """
        Tokens that expired under the growth rows make every row of the
        store invalid, said plainly, without the figures.
        """
        rows = {kind: Row("growth", f"redis {kind}", ours=rounds("a", (100, 1, 1)),
                          theirs=rounds("b", (100, 1, 1)), target=0.9) for kind in ("issue", "purge")}
        out = io.StringIO()
        with redirect_stdout(out):
            growth.invalid(rows, "the fill took too long")
            print_table(list(rows.values()))
        text = out.getvalue()
        self.assertIn("  INVALID: the fill took too long", text)
        self.assertIn(f"{'redis issue':<22} invalid: the fill took too long", text)
        self.assertIn(f"{'redis purge':<22} invalid: the fill took too long", text)
        self.assertEqual([r.verdict() for r in rows.values()], ["invalid", "invalid"])


class Runner:
    """
    A runner of our own: each window a Round at once, and the purge's
    progress as the watch would see it, a step a window.
    """

    def __init__(self, progress: purge.Progress, gone: list[int]) -> None:
        self.progress = progress
        self.gone = gone
        self.loads: list[Load] = []

    def wrk_once(self, server: Any, seconds: int, everyone: list[Any], load: Load) -> Round:
        self.loads.append(load)
        step = len(self.loads) - 1
        self.progress.samples.append((time.time(), self.gone[min(step, len(self.gone) - 1)]))
        return window(0, 0, p99=10.0 + step).round


class MeasureTests(SynchronousTestCase):
    def watch(self) -> purge.Watch:
        return purge.Watch(lambda: 0, 100)

    def test_until_two_windows_after_the_purge(self) -> None:
        watch = self.watch()
        runner = Runner(watch.progress, [0, 0, 0, 60, 100])
        load = Load(purge.__file__, "/token", []).paced(250)  # type: ignore[arg-type]
        said: list[str] = []
        phased, limit_hit = purge.measure(runner, object(), load, watch, int(time.time()), 10, 60, said.append)
        self.assertFalse(limit_hit)
        self.assertEqual([p for p, _ in phased],
                         [purge.QUIET, purge.DURING, purge.DURING, purge.DURING, purge.AFTER, purge.AFTER])
        self.assertEqual({id(load)}, {id(each) for each in runner.loads})
        self.assertEqual(len(runner.loads), 7)
        self.assertEqual(len(said), 7)
        self.assertIn("warm-up", said[0])
        self.assertIn("(due 250/s)", said[1])
        self.assertIn("gone 100 of 100", said[-1])
        # who used the CPU in each window, and how long tasks waited for one
        self.assertRegex(said[1], r"cpu: server 1\.00 store 0\.00 other 0\.00(, waiting \d+%)?$")

    def test_windows_after_the_purge(self) -> None:
        """
        C{after_windows} windows after the purge (C{--purge-after-seconds}),
        to see what the store does once it has ended.
        """
        watch = self.watch()
        runner = Runner(watch.progress, [0, 0, 0, 100])
        load = Load(purge.__file__, "/token", []).paced(250)  # type: ignore[arg-type]
        phased, limit_hit = purge.measure(runner, object(), load, watch, int(time.time()), 10, 60,
                                          lambda line: None, after_windows=5)
        self.assertFalse(limit_hit)
        self.assertEqual([p for p, _ in phased],
                         [purge.QUIET, purge.DURING, purge.DURING] + [purge.AFTER] * 5)

    def test_time_limit(self) -> None:
        """
        A purge that does not end stops the windows at the limit.
        """
        watch = self.watch()
        runner = Runner(watch.progress, [0, 0, 10])
        phased, limit_hit = purge.measure(runner, object(), Load(purge.__file__, "/token", []),  # type: ignore[arg-type]
                                          watch, int(time.time()) - 100, 10, 50, lambda line: None)
        self.assertTrue(limit_hit)
        self.assertEqual(len(phased), 1)

    def test_failing_probe_ends_the_watch(self) -> None:
        """
        A probe that fails ends the watch with its error, never the run.
        """

        def broken() -> int:
            raise OSError("the store went away")

        watch = purge.Watch(broken, 100)
        watch.start()
        watch.stop()
        self.assertEqual(watch.error, "the store went away")
        self.assertEqual(watch.progress.samples, [])


class CoresTests(SynchronousTestCase):
    def test_cores(self) -> None:
        """
        A window's cores by who used them, and the share of it some
        runnable task waited for a CPU, where the kernel says.
        """
        w = window(0, 5)
        w.round.store_cores, w.round.other_cores = 0.25, 0.125
        self.assertEqual(purge.cores(w), "cpu: server 1.00 store 0.25 other 0.12")
        w.waiting = 0.314
        self.assertEqual(purge.cores(w), "cpu: server 1.00 store 0.25 other 0.12, waiting 31%")

    def test_mean_cores(self) -> None:
        """
        The mean of a phase's windows; no figure for a phase with none, and
        no waiting share unless every window has one.
        """
        a, b = window(0, 5), window(5, 10)
        b.round.cpu_cores, b.round.store_cores = 1.5, 0.5
        a.waiting, b.waiting = 0.2, 0.4
        phased = [(purge.QUIET, a), (purge.QUIET, b)]
        self.assertEqual(purge.mean_cores(phased, purge.QUIET),
                         "cpu: server 1.25 store 0.25 other 0.00, waiting 30%")
        self.assertIsNone(purge.mean_cores(phased, purge.DURING))
        b.waiting = None
        self.assertEqual(purge.mean_cores(phased, purge.QUIET), "cpu: server 1.25 store 0.25 other 0.00")


class OptionsTests(SynchronousTestCase):
    def test_purge_options(self) -> None:
        args = parse_args([])
        self.assertEqual((args.purge, args.purge_load, args.purge_quiet_seconds), (True, "issue", 60))
        args = parse_args(["--no-purge", "--purge-load", "introspect", "--purge-quiet-seconds", "20"])
        self.assertEqual((args.purge, args.purge_load, args.purge_quiet_seconds), (False, "introspect", 20))
        with redirect_stdout(io.StringIO()), self.assertRaises(SystemExit):
            parse_args(["--purge-quiet-seconds", "4"])
        self.assertEqual(parse_args([]).purge_after_seconds, 10)
        self.assertEqual(parse_args(["--purge-after-seconds", "600"]).purge_after_seconds, 600)
        with redirect_stdout(io.StringIO()), self.assertRaises(SystemExit):
            parse_args(["--purge-after-seconds", "4"])
