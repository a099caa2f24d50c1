"""
The soak's pure parts (bench/soak/), exercised without running a soak:
its durations and scaled defaults, percentiles, the growth verdict and the
checks built on it, the pacing, the load's record of live tokens, and
what it reads from the server's log and from Redis's INFO.
"""

from __future__ import annotations

import argparse
import io
import json
import random
from contextlib import redirect_stderr

from twisted.trial.unittest import SynchronousTestCase

from bench.cpu import ProcessTicks
from bench.soak import report, serverlog, sizes
from bench.soak.load import Observation, Pacer, SoakRun
from bench.soak.options import parse_args, seconds
from bench.soak.procs import ProcessSample, server_processes
from bench.soak.serverlog import LogNews
from bench.soak.stats import Growth, Interval, growth, merge, percentile
from bench.soak.traffic import LiveTokens, Traffic


class OptionsTests(SynchronousTestCase):
    def test_durations(self) -> None:
        self.assertEqual(seconds("90"), 90)
        self.assertEqual(seconds("90s"), 90)
        self.assertEqual(seconds("10m"), 600)
        self.assertEqual(seconds("1h30m"), 5400)
        self.assertEqual(seconds("1.5h"), 5400)
        for bad in ("", "h", "1x", "10 m s", "0s", "-5m", "1m2d"):
            with self.assertRaises(argparse.ArgumentTypeError, msg=bad):
                seconds(bad)

    def test_an_hour(self) -> None:
        """
        An hour by default, at a modest rate, a line every 5 minutes, the
        growth judged after a tenth of the run.
        """
        args = parse_args([])
        self.assertEqual((args.store, args.duration, args.workers), ("sqlite", 3600, 2))
        self.assertEqual((args.rate, args.interval, args.warmup), (40, 300, 360))
        self.assertEqual((args.secret_rotation, args.key_rotation), (60, 300))

    def test_self_test(self) -> None:
        """
        A one-minute run gets six lines and each rotation at least twice.
        """
        args = parse_args(["--duration", "60s"])
        self.assertEqual((args.interval, args.warmup), (10, 10))
        self.assertEqual((args.secret_rotation, args.key_rotation), (15, 24))

    def test_warmup_within_the_run(self) -> None:
        err = io.StringIO()
        with redirect_stderr(err), self.assertRaises(SystemExit):
            parse_args(["--duration", "10m", "--warmup", "10m"])
        self.assertIn("--warmup must be shorter than --duration", err.getvalue())


class PercentileTests(SynchronousTestCase):
    def test_nearest_rank(self) -> None:
        values = [float(v) for v in range(100, 0, -1)]
        self.assertEqual(percentile(values, 0.5), 50)
        self.assertEqual(percentile(values, 0.99), 99)
        self.assertEqual(percentile(values, 1.0), 100)
        self.assertEqual(percentile([7.0], 0.99), 7)
        self.assertIsNone(percentile([], 0.5))

    def test_one_slow_in_a_hundred(self) -> None:
        """
        p99 of 100 answers is the 99th: one outlier does not make it.
        """
        self.assertEqual(percentile([1.0] * 99 + [500.0], 0.99), 1)
        self.assertEqual(percentile([1.0] * 98 + [500.0] * 2, 0.99), 500)


class GrowthTests(SynchronousTestCase):
    def test_limit(self) -> None:
        self.assertTrue(Growth("rss", 100, 110).passed)
        self.assertFalse(Growth("rss", 100, 110.5).passed)
        self.assertTrue(Growth("rss", 100, 50).passed)
        self.assertTrue(Growth("files", 0, 0).passed)
        self.assertFalse(Growth("files", 0, 1).passed)

    def test_medians_of_the_windows(self) -> None:
        """
        The median of the samples in the interval after the warm-up against
        that of the last interval: the warm-up itself, and one spike in a
        window, do not count.
        """
        samples = [(0.0, 10.0), (5.0, 50.0)]  # the warm-up
        samples += [(10.0, 100.0), (12.0, 300.0), (14.0, 100.0)]  # after it, one spike
        samples += [(30.0, 105.0)]
        samples += [(50.0, 109.0), (55.0, 109.0), (60.0, 400.0)]  # the last interval
        figure = growth("rss", samples, warmup=10, window=10, end=60)
        assert figure is not None
        self.assertEqual((figure.warm, figure.last), (100, 109))
        self.assertTrue(figure.passed)

    def test_steady_climb_fails(self) -> None:
        samples = [(float(t), 100.0 + t) for t in range(0, 61)]
        figure = growth("rss", samples, warmup=10, window=10, end=60)
        assert figure is not None
        self.assertAlmostEqual(figure.change, 155 / 114.5 - 1)
        self.assertFalse(figure.passed)

    def test_too_short(self) -> None:
        """
        Not judged when the window after the warm-up reaches the last.
        """
        samples = [(float(t), 100.0) for t in range(0, 30)]
        self.assertIsNone(growth("rss", samples, warmup=10, window=10, end=29))
        self.assertIsNone(growth("rss", [], warmup=10, window=10, end=60))


def observation(start: float, end: float, answers: dict[str, int], rss: int = 60_000) -> Observation:
    interval = Interval(start, end)
    for answer, n in answers.items():
        for _ in range(n):
            interval.record("token", answer, 0.005)
    processes = [ProcessSample("main", 10, rss, 20), ProcessSample("worker", 11, rss, 16)]
    return Observation(interval, processes, None, "", 0, 0, None, LogNews(), {})


def run_of(*observations: Observation, rss_end: int = 60_000) -> SoakRun:
    run = SoakRun(observations=list(observations), ran=observations[-1].interval.end)
    for at in range(0, int(run.ran) + 1, 5):
        rss = 60_000 if at < run.ran - 10 else rss_end
        run.process_samples.append((float(at), [ProcessSample("main", 10, rss, 20)]))
    return run


class CheckTests(SynchronousTestCase):
    def verdicts(self, run: SoakRun) -> dict[str, bool | None]:
        totals = merge(o.interval for o in run.observations)
        return {c.name: c.passed for c in report.checks(run, totals, warmup=10, window=10)}

    def test_clean_run(self) -> None:
        run = run_of(*(observation(t, t + 10, {"200": 5}) for t in range(0, 60, 10)))
        verdicts = self.verdicts(run)
        self.assertEqual(set(verdicts.values()), {True})

    def test_a_server_error_fails(self) -> None:
        run = run_of(observation(0, 30, {"200": 5}), observation(30, 60, {"200": 5, "503": 1}))
        verdicts = self.verdicts(run)
        self.assertFalse(verdicts["no 5xx answers"])
        self.assertFalse(verdicts["every answer the one expected"])

    def test_a_timeout_is_no_5xx_but_fails(self) -> None:
        run = run_of(observation(0, 60, {"200": 5, "timeout": 1}))
        verdicts = self.verdicts(run)
        self.assertTrue(verdicts["no 5xx answers"])
        self.assertFalse(verdicts["every answer the one expected"])

    def test_growth_fails(self) -> None:
        run = run_of(*(observation(t, t + 10, {"200": 5}) for t in range(0, 60, 10)), rss_end=67_000)
        self.assertFalse(self.verdicts(run)["no growth after the warm-up beyond 10%"])


class PacerTests(SynchronousTestCase):
    def test_spaced(self) -> None:
        pacer = Pacer(rate=4)
        self.assertEqual([pacer.delay(0.0) for _ in range(3)], [0.0, 0.25, 0.5])

    def test_late_sends_at_once_without_a_burst(self) -> None:
        pacer = Pacer(rate=4)
        pacer.delay(0.0)
        self.assertEqual(pacer.delay(10.0), 0.0)
        self.assertEqual(pacer.delay(10.0), 0.25)

    def test_unpaced(self) -> None:
        self.assertEqual(Pacer(rate=0).delay(5.0), 0.0)


class LiveTokensTests(SynchronousTestCase):
    def test_expiry_revocation_deletion(self) -> None:
        tokens = LiveTokens()
        tokens.add("a", "c1", expires_at=10)
        tokens.add("b", "c1", expires_at=20)
        tokens.add("c", "c2", expires_at=30)
        self.assertEqual(tokens.count(0), 3)
        self.assertEqual(tokens.count(10), 2)
        self.assertTrue(tokens.discard("c"))
        self.assertFalse(tokens.discard("c"))
        self.assertEqual(tokens.discard_client("c1"), 1)
        self.assertEqual(tokens.count(10), 0)

    def test_busy_not_picked(self) -> None:
        tokens = LiveTokens()
        tokens.add("a", "c1", expires_at=10)
        tokens.add("b", "c1", expires_at=10)
        tokens.busy.add("a")
        rng = random.Random(1)
        self.assertEqual({tokens.pick(rng, 0) for _ in range(20)}, {("b", "c1")})
        tokens.busy.add("b")
        self.assertIsNone(tokens.pick(rng, 0))


class TrafficTests(SynchronousTestCase):
    def test_only_an_expected_answer_changes_the_state(self) -> None:
        """
        A registration counts against the limit while in flight; the client
        exists for the load only once its 201 is handed back.
        """
        traffic = Traffic("http://s", "m", {"register": 1.0}, random.Random(0), max_dynamic=4, switch_after=1)
        request = traffic.next_request(0)
        self.assertEqual((request.kind, traffic.registering), ("register", 1))
        traffic.finished(request)
        self.assertEqual((traffic.registering, traffic.dynamic), (0, []))
        request = traffic.next_request(0)
        assert request.on_answer is not None
        request.on_answer(json.dumps({"client_id": "x", "client_secret": "s",
                                      "registration_access_token": "r"}).encode(), 0, 0)
        traffic.finished(request)
        self.assertEqual([c.client_id for c in traffic.dynamic], ["x"])


class ProcessTests(SynchronousTestCase):
    def test_main_then_workers(self) -> None:
        processes = {
            30: ProcessTicks(parent=20, group=20, ticks=0),
            20: ProcessTicks(parent=1, group=20, ticks=0),
            25: ProcessTicks(parent=20, group=20, ticks=0),
            40: ProcessTicks(parent=1, group=40, ticks=0),
        }
        self.assertEqual(server_processes(processes, 20), [("main", 20), ("worker", 25), ("worker", 30)])
        del processes[20]
        self.assertEqual(server_processes(processes, 20), [("worker", 25), ("worker", 30)])


class ReadingTests(SynchronousTestCase):
    def test_purges_and_errors_in_the_log(self) -> None:
        events = [
            {"log_format": serverlog.PURGED, "n": 120, "log_level": {"name": "info"}, "log_namespace": "s"},
            {"log_format": serverlog.PURGED, "n": 30, "log_level": {"name": "info"}, "log_namespace": "s"},
            {"log_format": "Could not purge: {e}", "e": "x", "log_level": {"name": "warn"}, "log_namespace": "s"},
            {"log_format": "Boom {n}", "n": 1, "log_level": {"name": "critical"}, "log_namespace": "web"},
        ]
        text = "".join(serverlog.RECORD_SEPARATOR + json.dumps(e) + "\n" for e in events) + "printed\n"
        news = serverlog.read_events(text)
        self.assertEqual((news.purges, news.purged), (2, 150))
        self.assertEqual(news.errors, ["web: Boom 1", "(not a log event) printed"])
        self.assertEqual(dict(news.warnings), {"Could not purge: {e}": 1})

    def test_redis_size(self) -> None:
        answers = {
            "memory": "# Memory\r\nused_memory:2048\r\nused_memory_rss:8192\r\n",
            "keyspace": "# Keyspace\r\ndb3:keys=12,expires=10,avg_ttl=5000\r\n",
            "--scan": "ccserver:token:a\nccserver:token:b\n",
        }
        calls: list[list[str]] = []

        def run(arguments: list[str]) -> str:
            calls.append(arguments)
            return next(text for word, text in answers.items() if word in arguments)

        size = sizes.redis_size("redis://:pw@127.0.0.1:7000/3", run)
        self.assertEqual((size.size, size.tokens), (2048, 2))
        self.assertEqual((size.detail["keys"], size.detail["keys with expiry"]), (12, 10))
        self.assertEqual(calls[0][:6], ["-h", "127.0.0.1", "-p", "7000", "-n", "3"])
