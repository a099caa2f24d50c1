"""
The benchmark's pure parts (bench/), exercised without running a
benchmark: the options, the CPU accounting from /proc text, what wrk's
result line says, the medians, verdicts and table.
"""

from __future__ import annotations

import io
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from bench import cpu, growth, latency, memory, stores, wrk
from bench.cases import CASES
from bench.cli import parse_args
from bench.profiling import profile_area
from bench.report import Row, med, print_table
from bench.rounds import Round
from bench.servers import CCServer


class ParseArgsTests(SynchronousTestCase):
    def fails(self, *argv: str) -> str:
        """
        The parser's complaint about C{argv} (it exits with status 2).
        """
        err = io.StringIO()
        with redirect_stderr(err), self.assertRaises(SystemExit) as raised:
            parse_args(list(argv))
        self.assertEqual(raised.exception.code, 2)
        return err.getvalue()

    def test_defaults(self) -> None:
        args = parse_args([])
        self.assertEqual(args.cases, ["es256", "eddsa", "rs256", "opaque"])
        self.assertEqual((args.rounds, args.seconds, args.warmup), (3, 8, 2))
        self.assertEqual(args.stores, ["memory", "sqlite", "redis", "postgresql"])
        self.assertEqual(args.workers, [1, 2])
        self.assertEqual(args.workers_store, "sqlite")
        self.assertEqual(args.population, 100_000)
        self.assertTrue(args.population_cache_off)
        self.assertFalse(args.no_population or args.keep)
        # the headline is ccserver as configured by default, access log on,
        # with the figures of the access log off beside it
        self.assertEqual(args.access_log, "both")
        self.assertTrue(args.introspection and args.latency)
        self.assertEqual(args.introspection_stores, ["sqlite", "postgresql", "redis"])
        self.assertEqual((args.introspection_workers, args.growth_workers), (2, 2))
        self.assertEqual(args.latency_cases, ["issue", "introspect"])
        self.assertEqual((args.population_tokens, args.sqlite_population_tokens), (0, 1_000_000))
        self.assertEqual(args.profile_load, "token")
        self.assertIsNone(args.profile)
        self.assertEqual(args.machine_workers, os.cpu_count())
        self.assertEqual(args.durable_stores, ["sqlite", "postgresql", "redis"])
        self.assertEqual(args.durable_workers, 2)

    def test_lists(self) -> None:
        """
        Lists are comma-separated and case-insensitive; '' is none at all,
        which is how a section is switched off.
        """
        args = parse_args(["--cases", " ES256,,rs256 ", "--stores", "", "--workers", "1,4"])
        self.assertEqual(args.cases, ["es256", "rs256"])
        self.assertEqual(args.stores, [])
        self.assertEqual(args.workers, [1, 4])

    def test_files_and_switches(self) -> None:
        args = parse_args(
            ["--json", "out.json", "--profile", "p.txt", "--no-population-cache-off", "--access-log", "off",
             "--no-introspection", "--no-latency", "--profile-load", "introspect"]
        )
        self.assertEqual((args.json, args.profile), (Path("out.json"), Path("p.txt")))
        self.assertFalse(args.population_cache_off)
        self.assertEqual(args.access_log, "off")
        self.assertFalse(args.introspection or args.latency)
        self.assertEqual(args.profile_load, "introspect")
        self.assertIn("invalid choice", self.fails("--access-log", "sometimes"))

    def test_memory(self) -> None:
        """
        The memory section is off unless asked; its tokens are 1,000,000
        by default, and positive.
        """
        self.assertFalse(parse_args([]).memory)
        args = parse_args(["--memory", "--memory-tokens", "4000"])
        self.assertEqual((args.memory, args.memory_tokens), (True, 4000))
        self.assertEqual(parse_args([]).memory_tokens, 1_000_000)
        self.assertIn("--memory-tokens must be positive", self.fails("--memory-tokens", "0"))

    def test_unknown_case(self) -> None:
        self.assertIn("'hs256': one of es256, eddsa, rs256, opaque", self.fails("--cases", "es256,hs256"))

    def test_bad_workers(self) -> None:
        self.assertIn("worker counts are 1 or more", self.fails("--workers", "0,2"))
        self.assertIn("a list of whole numbers", self.fails("--workers", "1,two"))

    def test_bounds(self) -> None:
        self.assertIn("must be positive", self.fails("--rounds", "0"))
        self.assertIn("must be positive", self.fails("--seconds", "0"))
        self.assertIn("--population must be more than 100", self.fails("--population", "100"))
        self.assertIn("--population-budget must be positive", self.fails("--population-budget", "0"))
        self.assertIn("must be positive", self.fails("--machine-workers", "0"))
        self.assertIn("must be positive", self.fails("--durable-workers", "0"))
        self.assertIn("'memory': one of sqlite", self.fails("--durable-stores", "memory"))
        self.assertIn("must be positive", self.fails("--introspection-workers", "0"))
        self.assertIn("must be positive", self.fails("--growth-workers", "0"))
        self.assertIn("must be 0 or more", self.fails("--population-tokens", "-1"))
        self.assertIn("'memory': one of sqlite", self.fails("--growth-stores", "memory"))


#: /proc/stat's first line: user nice system idle iowait irq softirq steal guest guest_nice
PROC_STAT = "cpu  100 5 50 1000 20 3 2 7 0 0\ncpu0 50 2 25 500 10 1 1 3 0 0\n"


def stat_line(pid: int, name: str, parent: int, group: int, utime: int, stime: int) -> str:
    """
    A /proc/<pid>/stat line: pid (comm) state ppid pgrp session tty_nr
    tpgid flags minflt cminflt majflt cmajflt utime stime ...
    """
    return f"{pid} ({name}) S {parent} {group} {group} 0 -1 4194304 1 0 0 0 {utime} {stime} 0 0 20 0 1 0\n"


class CPUTests(SynchronousTestCase):
    def test_pressure_total(self) -> None:
        """
        The microseconds of the "some" line: some task waited for a CPU.
        """
        text = ("some avg10=12.50 avg60=9.40 avg300=3.10 total=248620194\n"
                "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
        self.assertEqual(cpu.pressure_total(text), 248620194)
        self.assertRaises(ValueError, cpu.pressure_total, "full avg10=0.00 total=3\n")

    def test_machine_ticks(self) -> None:
        """
        Busy: user, nice, system, irq, softirq and steal; idle and I/O wait
        only count towards the total.
        """
        self.assertEqual(cpu.machine_ticks(PROC_STAT), (167, 1187))

    def test_process_ticks(self) -> None:
        """
        A command name may hold spaces and parentheses: fields are counted
        from the last ")".
        """
        line = stat_line(42, "python3 (bench) x", parent=7, group=40, utime=11, stime=4)
        self.assertEqual(cpu.process_ticks(line), cpu.ProcessTicks(parent=7, group=40, ticks=15))

    def processes(self) -> dict[int, cpu.ProcessTicks]:
        # 10 leads group 10 with its worker 11; 20 is a postmaster whose
        # backend 21 leads a session of its own and has a child 22; 30 is
        # someone else's.
        lines = {
            10: stat_line(10, "twist", 1, 10, 100, 10),
            11: stat_line(11, "twist", 10, 10, 50, 5),
            20: stat_line(20, "postgres", 1, 20, 7, 3),
            21: stat_line(21, "postgres", 20, 21, 30, 10),
            22: stat_line(22, "postgres", 21, 21, 1, 1),
            30: stat_line(30, "other", 1, 30, 999, 999),
        }
        return {pid: cpu.process_ticks(line) for pid, line in lines.items()}

    def test_rss(self) -> None:
        status = "Name:\tpython3\nVmPeak:\t  99999 kB\nVmRSS:\t   51234 kB\nThreads:\t3\n"
        self.assertEqual(cpu.rss_kib(status), 51234)
        self.assertEqual(cpu.rss_kib("Name:\tzombie\n"), 0)

    def test_group_rss(self) -> None:
        """
        The RSS of each process of a group, by pid: this test's own group
        holds this process.
        """
        sizes = cpu.group_rss(cpu.read_processes(), os.getpgrp())
        self.assertGreater(sizes[os.getpid()], 0)
        self.assertEqual(cpu.group_rss({}, os.getpgrp()), {})

    def test_group_total(self) -> None:
        self.assertEqual(cpu.group_total(self.processes(), 10), 165)
        self.assertEqual(cpu.group_total(self.processes(), 20), 10)
        self.assertEqual(cpu.group_total(self.processes(), 99), 0)

    def test_tree_total(self) -> None:
        """
        A tree counts every descendant, whatever its group.
        """
        self.assertEqual(cpu.tree_total(self.processes(), {20}), 52)
        self.assertEqual(cpu.tree_total(self.processes(), {10, 20}), 217)
        self.assertEqual(cpu.tree_total(self.processes(), set()), 0)

    def test_tree_total_orphan(self) -> None:
        """
        A process whose parent is gone (exited while /proc was read) ends
        the walk: it is nobody's.
        """
        processes = self.processes()
        del processes[21]
        self.assertEqual(cpu.tree_total(processes, {20}), 10)


def raw_result(**changes: object) -> dict[str, object]:
    raw: dict[str, object] = {
        "requests": 5000,
        "duration_us": 1_000_000,
        "p50_us": 2500,
        "p99_us": 9000,
        "non200": 0,
        "errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0},
    }
    raw.update(changes)
    return raw


class WrkTests(SynchronousTestCase):
    def test_argv(self) -> None:
        load = wrk.Load(Path("/b/token.lua"), "/token", ["@clients.txt"])
        self.assertEqual(
            wrk.wrk_argv("/usr/bin/wrk", "http://127.0.0.1:8080", 8, load),
            ["/usr/bin/wrk", "-t1", "-c32", "-d8s", "--timeout", "5s", "-s", "/b/token.lua",
             "http://127.0.0.1:8080/token", "--", "@clients.txt"],
        )

    def test_result(self) -> None:
        lines = ["Running 8s test", 'BENCH_RESULT {"requests": 3}\n', "done"]
        self.assertEqual(wrk.result(lines), {"requests": 3})
        self.assertIsNone(wrk.result(["Running 8s test", "unable to connect"]))

    def test_no_problems(self) -> None:
        self.assertEqual(wrk.problems(raw_result(), True, Path("err.log")), [])

    def test_problems(self) -> None:
        raw = raw_result(
            requests=0,
            unexpected=3,
            expected=201,
            first_bad_status=400,
            first_bad_body='{"error":"invalid_client_metadata"}',
            errors={"connect": 0, "read": 2, "status": 3},
        )
        self.assertEqual(
            wrk.problems(raw, False, Path("err.log")),
            [
                "3 answers were not 201 (the first: 400 '{\"error\":\"invalid_client_metadata\"}')",
                "socket errors {'read': 2}",
                "no request was answered",
                "the server died; see err.log",
            ],
        )


class CredentialFileTests(SynchronousTestCase):
    def test_kept_clients(self) -> None:
        """
        register.lua's kept clients: id TAB secret a line; a line cut
        short (wrk stopped mid-write) is left out, no file is none.
        """
        kept = Path(self.mktemp())
        self.assertEqual(wrk.kept_clients(kept), [])
        kept.write_text("c1\ts1\nc2\ts-2\nc3\n")
        self.assertEqual(wrk.kept_clients(kept), [("c1", "s1"), ("c2", "s-2")])

    def test_clients_load(self) -> None:
        path = Path(self.mktemp())
        load = wrk.clients_load(path, ["YTpi", "Yzpk"])
        self.assertEqual(path.read_text(), "YTpi\nYzpk\n")
        self.assertEqual((load.path, load.args), ("/token", ["@" + str(path)]))

    def test_register_load(self) -> None:
        server = CCServer("cc", Path("w"), CASES["es256"], "memory://")
        load = wrk.register_load(server, 0.003, Path("kept.tsv"))
        self.assertEqual(load.args, [server.master_token, "0.003", "kept.tsv"])
        self.assertEqual((load.path, load.unit), ("/client-reg", "registrations/s"))


class LoadTests(SynchronousTestCase):
    def test_introspect_load(self) -> None:
        """
        Each server is introspected at its own endpoint (node-oidc-provider
        at /token/introspection), by its own client, of the given token.
        """
        server = CCServer("cc", Path("w"), CASES["opaque"], "memory://")
        server.basic = "YTpi"
        load = wrk.introspect_load(server, "tok")
        self.assertEqual((load.path, load.args, load.unit), ("/token/introspect", ["YTpi", "tok"], "introspections/s"))
        self.assertEqual(load.environment(), {})

    def test_paced(self) -> None:
        """
        A paced load is the same requests at a constant rate, which wrk's
        scripts read from the environment.
        """
        load = wrk.Load(Path("/b/token.lua"), "/token", ["YTpi"]).paced(1234.5)
        self.assertEqual((load.path, load.args, load.rate), ("/token", ["YTpi"], 1234.5))
        self.assertEqual(load.environment(), {"BENCH_RATE": "1234.500", "BENCH_THREADS": "1"})

    def test_latency_helpers(self) -> None:
        closed = rounds("a", (1000, 1, 2), (3000, 1, 2), (2000, 1, 2))
        self.assertEqual(latency.peak(closed), 2000)
        self.assertAlmostEqual(latency.rate_kept(closed, 2000), 0.5)
        self.assertEqual(latency.rate_kept([], 2000), 0.0)
        self.assertIn("kept only 50%", latency.describe("a", closed, 2000, 4000))
        self.assertNotIn("kept only", latency.describe("a", closed, 900, 4000))

    def test_growth_counts(self) -> None:
        args = parse_args(["--population-tokens", "10000000", "--sqlite-population-tokens", "1000000"])
        self.assertEqual(growth.count_for("postgresql", args), 10_000_000)
        self.assertEqual(growth.count_for("sqlite", args), 1_000_000)


class MemoryTests(SynchronousTestCase):
    def test_counts(self) -> None:
        self.assertEqual(memory.counts(1_000_000), [250_000, 500_000, 1_000_000])
        self.assertEqual(memory.counts(2), [1, 2])

    def test_chunk_seconds(self) -> None:
        """
        Enough whole seconds for what remains at the last rate, 1 at least
        (also before any rate is known), the cap at most.
        """
        self.assertEqual(memory.chunk_seconds(25_000, 10_000.0), 3)
        self.assertEqual(memory.chunk_seconds(10, 10_000.0), 1)
        self.assertEqual(memory.chunk_seconds(10_000_000, 10_000.0), memory.CHUNK_CAP)
        self.assertEqual(memory.chunk_seconds(500, 0.0), 1)

    def test_split_rss(self) -> None:
        self.assertEqual(memory.split_rss({12: 300, 10: 100, 11: 200}, 10), (100, (200, 300)))
        self.assertEqual(memory.split_rss({11: 200}, 10), (0, (200,)))
        point = memory.Point(0, 5, 1.0, 100, ())
        self.assertEqual(point.max_kib, 100)
        self.assertEqual(memory.Point(0, 5, 1.0, 100, (300, 200)).max_kib, 300)

    def test_table(self) -> None:
        rows = [
            memory.MemoryRow("ccserver ES256 JWT", "1 client", [
                memory.Point(0, 20_000, 10_000.0, 64_512, (64_000,)),
                memory.Point(250_000, 251_000, 9_500.4, 65_536, (66_560,)),
            ]),
            memory.MemoryRow("node ES256 JWT", status="ERROR: wrk failed"),
        ]
        out = io.StringIO()
        with redirect_stdout(out):
            memory.print_memory_table(rows)
        lines = out.getvalue().splitlines()
        self.assertEqual(lines[0], "=" * 150)
        self.assertEqual(lines[1], f"[{memory.SECTION}]")
        self.assertEqual(lines[3].split(), ["ccserver", "ES256", "JWT", "warm-up", "20,000", "10,000", "63.0",
                                            "62.5", "63.0"])
        self.assertEqual(lines[4].split(), ["250,000", "251,000", "9,500", "64.0", "65.0", "65.0"])
        self.assertEqual(lines[5].strip(), "(1 client)")
        self.assertEqual(lines[6].split(), ["node", "ES256", "JWT", "ERROR:", "wrk", "failed"])
        self.assertEqual(lines[7], "=" * 150)
        self.assertEqual(memory.MemoryRow("x", points=rows[0].points).as_json()["points"][1]["max_kib"], 66_560)

    def test_no_rows(self) -> None:
        out = io.StringIO()
        with redirect_stdout(out):
            memory.print_memory_table([])
        self.assertEqual(out.getvalue(), "")


def rounds(label: str, *figures: tuple[float, float, float], cpu: float = 1.0) -> list[Round]:
    """
    Rounds of (tokens/s, p50 ms, p99 ms).
    """
    return [
        Round(label, rate, p50, p99, requests=int(rate), cpu_cores=1.0, other_cores=0.05, cpu_seconds=cpu)
        for rate, p50, p99 in figures
    ]


def busy(label: str, *figures: tuple[float, float]) -> list[Round]:
    """
    Rounds of (tokens/s, CPU seconds) over 1 s: tokens per CPU-second differ
    from tokens/s as soon as the server used more or less than a core.
    """
    return [
        Round(label, rate, 1, 1, requests=int(rate), cpu_cores=cpu, other_cores=0.0, cpu_seconds=cpu)
        for rate, cpu in figures
    ]


class ReportTests(SynchronousTestCase):
    def test_med(self) -> None:
        rs = rounds("a", (100, 1, 9), (300, 2, 8), (200, 3, 7))
        self.assertEqual(med(rs, "tokens_per_s"), 200.0)
        self.assertEqual(med(rs[:2], "p50_ms"), 1.5)

    def test_ratio_is_median_of_round_ratios(self) -> None:
        """
        The ratio of each round's pair, then their median: not the ratio
        of the medians, so that a round disturbed for both servers counts once.
        """
        row = Row("s", "c", ours=rounds("a", (100, 1, 1), (400, 1, 1), (300, 1, 1)),
                  theirs=rounds("b", (100, 1, 1), (100, 1, 1), (200, 1, 1)))
        self.assertEqual(row.ratio(), 1.5)
        self.assertIsNone(Row("s", "c", ours=row.ours).ratio())

    def test_verdicts(self) -> None:
        fast, slow = rounds("a", (150, 1, 5)), rounds("b", (100, 1, 6))
        self.assertEqual(Row("s", "c", ours=fast, theirs=slow, target=1.25).verdict(), "PASS")
        self.assertEqual(Row("s", "c", ours=fast, theirs=slow, target=1.6).verdict(), "FAIL (ratio)")
        late = rounds("a", (150, 1, 7))
        self.assertEqual(Row("s", "c", ours=late, theirs=slow, target=1.6).verdict(), "FAIL (ratio, p99)")
        self.assertEqual(
            Row("s", "c", ours=late, theirs=slow, target=1.0, check_p99=False).verdict(), "PASS"
        )
        self.assertEqual(Row("s", "c", ours=fast, theirs=slow).verdict(), "info")
        self.assertEqual(
            Row("s", "c", ours=fast, theirs=slow, target=1.0, caveat="(at 5 clients only)").verdict(),
            "PASS (at 5 clients only)",
        )
        self.assertEqual(Row("s", "c", status="not available").verdict(), "not available")

    def test_p99_verdict(self) -> None:
        """
        A latency row has no ratio target: PASS when ccserver's p99 is no
        worse than the peer's.
        """
        fast, slow = rounds("a", (100, 1, 5)), rounds("b", (100, 1, 6))
        self.assertEqual(Row("s", "c", ours=fast, theirs=slow, judge="p99").verdict(), "PASS")
        self.assertEqual(Row("s", "c", ours=slow, theirs=fast, judge="p99").verdict(), "FAIL (p99)")
        self.assertEqual(Row("s", "c", ours=fast, judge="p99").verdict(), "info")

    def test_per_core(self) -> None:
        """
        Tokens per CPU-second: requests over the CPU seconds of the
        server's processes; none counted is 0, not a division by zero.
        """
        self.assertEqual(busy("a", (3000, 1.5))[0].per_core, 2000)
        self.assertEqual(busy("a", (3000, 0.0))[0].per_core, 0.0)

    def test_per_core_ratio_is_median_of_round_ratios(self) -> None:
        """
        A peer that uses 1.35 cores for 8,000 tokens/s costs more per token
        than a server using 1.0 core for 7,000: the rate ratio and the per
        core ratio tell different stories, and the row has both.
        """
        row = Row("s", "c", ours=busy("a", (7000, 1.0), (7000, 1.0), (6000, 1.0)),
                  theirs=busy("b", (8000, 1.35), (8000, 1.6), (8000, 1.35)))
        self.assertAlmostEqual(row.ratio() or 0, 0.875)
        self.assertAlmostEqual(row.per_core_ratio() or 0, 7000 / (8000 / 1.35))
        self.assertIsNone(Row("s", "c", ours=row.ours).per_core_ratio())
        unmeasured = Row("s", "c", ours=busy("a", (7000, 0.0)), theirs=busy("b", (8000, 1.0)))
        self.assertIsNone(unmeasured.per_core_ratio())

    def test_judge(self) -> None:
        """
        The target is held to the ratio the row names: per core for one
        process each, the rate for every core used.
        """
        ours, theirs = busy("a", (7000, 1.0)), busy("b", (8000, 1.6))
        self.assertEqual(Row("s", "c", ours=ours, theirs=theirs, target=1.25, judge="per core",
                             check_p99=False).verdict(), "PASS")
        self.assertEqual(Row("s", "c", ours=ours, theirs=theirs, target=1.25,
                             check_p99=False).verdict(), "FAIL (ratio)")
        self.assertEqual(Row("s", "c", ours=ours, theirs=theirs, target=1.25, judge="per core",
                             check_p99=False).as_json()["per_core_ratio"], 1.4)

    def test_as_json(self) -> None:
        row = Row("s", "c", ours=rounds("a", (150, 1, 5)), theirs=rounds("b", (100, 1, 6)), target=1.25)
        document = row.as_json()
        self.assertEqual(document["ratio"], 1.5)
        self.assertEqual(document["verdict"], "PASS")
        self.assertNotIn("raw", document["ours"][0])
        self.assertEqual(document["ours"][0]["tokens_per_s"], 150)

    def test_table(self) -> None:
        rows = [
            Row("cases", "ES256 JWT", ours=rounds("a", (7772.4, 3.96, 6.1), cpu=2.0),
                theirs=rounds("b", (3806.0, 8.2, 12.0)), target=1.25, judge="per core"),
            Row("cases", "EdDSA JWT", status="not available", note="ccserver refused to start: no"),
            Row("registration", "sqlite", ours=rounds("a", (2400, 10, 30), cpu=2.0), single=True,
                ours_column="store", theirs_column="memory", unit="reg/s", note="2,401 clients"),
            Row("registration", "redis", status="ERROR", note="wrk failed"),
        ]
        out = io.StringIO()
        with redirect_stdout(out):
            print_table(rows)
        lines = out.getvalue().splitlines()
        self.assertEqual(lines[0], "=" * 150)
        self.assertEqual(lines[1], "[cases]")
        self.assertEqual(
            lines[2],
            "case                    ccserver tok/s      peer tok/s  ratio ccserver /cpu-s  peer /cpu-s"
            "  /core  ccserver p50/p99      peer p50/p99 other         target  result",
        )
        self.assertEqual(
            lines[3],
            "ES256 JWT                        7,772           3,806   2.04           3,886        3,806"
            "   1.02        4.0/6.1 ms       8.2/12.0 ms  0.05 per core >=1.25  FAIL (ratio)",
        )
        self.assertEqual(lines[4], "EdDSA JWT              not available: ccserver refused to start: no")
        self.assertEqual(lines[5], "-" * 150)
        self.assertEqual(lines[6], "[registration]")
        self.assertEqual(
            lines[8],
            "sqlite                           2,400               -      -           1,200            -"
            "      -      10.0/30.0 ms                 -  0.05              -  info",
        )
        self.assertEqual(lines[9], f"{'':<22} (2,401 clients)")
        self.assertEqual(lines[10], "redis                  ERROR: wrk failed")
        self.assertEqual(lines[11], "=" * 150)
        self.assertTrue(lines[12].startswith("tok/s (reg/s) and p50/p99: medians over the rounds"))


class ProfileTests(SynchronousTestCase):
    def test_areas(self) -> None:
        """
        Logging and signing take a sample wherever they are on its stack;
        the other areas by the innermost frame.
        """
        handler = "_serve (ccserver/web.py)"
        self.assertEqual(
            profile_area(["run (twisted/internet/base.py)", handler, "emit (twisted/logger/_observer.py)"]),
            "logging: access log line, its buffered write; twisted.logger events",
        )
        self.assertEqual(
            profile_area(["run (twisted/internet/base.py)", "flush (ccserver/accesslog.py)"]),
            "logging: access log line, its buffered write; twisted.logger events",
        )
        self.assertEqual(
            profile_area([handler, "sign (jwt/api_jws.py)", "dumps (json/__init__.py)"]),
            "signature: PyJWT algorithm + cryptography",
        )
        self.assertEqual(
            profile_area(["run (twisted/internet/base.py)", handler, "loads (json/decoder.py)"]),
            "ccserver: form, client auth, grant, claims, JSON answer",
        )
        self.assertEqual(profile_area(["<module> (runpy.py)"]), "other: Python stdlib, interpreter")


class ThrowawayStoreTests(SynchronousTestCase):
    def test_redis(self) -> None:
        """
        A throwaway Redis for the store sections: a URL of a database on it;
        its first process counted as the bench's own until it is removed.
        """
        support: list[stores.Throwaway] = []
        groups: dict[str, int] = {}
        try:
            url = stores.start("redis", support, groups)
            [server] = support
            self.assertEqual(url, f"redis://127.0.0.1:{server.port}/0")
            self.assertEqual(groups, {f"redis {server.port}": server.pid})
            self.assertIn(server.pid, cpu.read_processes())
        finally:
            stores.remove(support, groups)
        self.assertEqual(groups, {})
        self.assertIsNone(server.pid)
        self.assertFalse(server.directory.exists())
