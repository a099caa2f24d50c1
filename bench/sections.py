"""
The sections of a run, each a set of servers measured together in
alternating rounds and reported as rows: ccserver against
node-oidc-provider per case; each store against memory://; 1 and N
workers; registrations per store and tokens/s with a large population.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import subprocess
from pathlib import Path
from typing import Any

from bench import stores
from bench.cases import (
    CASES,
    DURABLE_TARGET,
    POPULATION_TARGET,
    ROTATED_CLIENTS,
    SMALL_POPULATION,
    STORE_TARGET,
    Case,
)
from bench.collector import Collector
from bench.cpu import loadavg
from bench.errors import MEASUREMENT_ERRORS, BenchError, NotAvailable
from bench.output import loud, say
from bench.report import Row
from bench.rounds import Round, Runner
from bench.servers import CCServer, Peer, Server, basic
from bench.wrk import Load, clients_load, kept_clients, register_load


def access_log_note(off: list[Round], theirs: list[Round], judge: str) -> str:
    """
    The figure beside a row measured with the access log on: the same
    comparison with ccserver's access log off, from the same rounds.
    """
    row = Row("", "", ours=off, theirs=theirs, judge=judge)
    ratio = row.judged_ratio()
    if ratio is None:
        return ""
    rate = statistics.median(r.tokens_per_s for r in off)
    core = statistics.median(r.per_core for r in off)
    return f"access log off: {rate:,.0f}/s, {core:,.0f}/cpu-s, {judge} ratio {ratio:.2f}"


def cache_default() -> str:
    """
    ccserver's default [store] client_cache_seconds, as the checkout has it.
    """
    try:
        from ccserver.config import StoreConfig  # noqa: PLC0415

        return f"default {StoreConfig().client_cache_seconds:g} s"
    except Exception:
        return "default"


class Bench:
    def __init__(self, args: argparse.Namespace, runner: Runner, tmp: Path, peer_dir: Path) -> None:
        self.args = args
        self.runner = runner
        self.tmp = tmp
        self.peer_dir = peer_dir
        self.rows: list[Row] = []
        self.running: list[Server] = []
        self._serial = 0
        #: with --tracing: the collector every ccserver exports its spans to
        self.collector = Collector() if getattr(args, "tracing", False) else None

    def workdir(self, name: str) -> Path:
        self._serial += 1
        path = self.tmp / f"{self._serial:02d}-{re.sub(r'[^A-Za-z0-9]+', '-', name)}"
        path.mkdir(parents=True)
        return path

    def start(self, server: Server, case: Case) -> None:
        say(f"  starting {server.label} on {server.base}")
        server.start()
        self.running.append(server)
        if not server.alive():
            raise BenchError(f"{server.label} exited after starting; see {server.err_path}")
        say(f"    sample token: {server.check_token(case)}")

    def stop_all(self) -> None:
        while self.running:
            self.running.pop().stop()

    def stop_some(self, servers: list[Server]) -> None:
        for server in servers:
            server.stop()
            if server in self.running:
                self.running.remove(server)

    def error(self, row: Row, e: Exception) -> None:
        loud(f"{row.section} / {row.case}: {e}")
        self.runner.errors.append(f"{row.section} / {row.case}: {e}")
        row.status = "ERROR"
        row.note = str(e).splitlines()[0][:200]
        row.ours = row.theirs = None

    def section_error(self, section: str, e: Exception) -> None:
        """
        Every row of a section that was to be measured is an error; a row
        of its own if none was made yet.
        """
        rows = [r for r in self.rows if r.section == section and r.status != "not available"]
        if not rows:
            rows = [Row(section, "(set-up)")]
            self.rows.extend(rows)
        for row in rows:
            self.error(row, e)

    # ccserver (memory://) against node-oidc-provider, one case at a time
    def cases(self) -> None:
        for name in self.args.cases:
            case = CASES[name]
            row = Row("ccserver vs node-oidc-provider, memory store, 1 process each", case.label,
                      target=case.target, judge="per core")
            self.rows.append(row)
            say(f"\n== {case.label}: ccserver vs node-oidc-provider  (load {loadavg()})")
            ours = self.ccserver(f"ccserver {case.label}", self.workdir(f"cc-{name}"), case, "memory://")
            theirs = Peer(f"node-oidc-provider {case.label}", self.workdir(f"peer-{name}"), self.peer_dir, case)
            # the headline is ccserver as configured by default (access log
            # on); beside it, the same with the access log off
            off = None
            if self.args.access_log == "both":
                off = self.ccserver(f"ccserver {case.label} (log off)", self.workdir(f"cc-{name}-off"), case,
                                    "memory://", access_log=False)
            try:
                self.head_to_head(row, ours, theirs, case, off)
            except MEASUREMENT_ERRORS as e:
                self.error(row, e)
            finally:
                self.stop_all()

    def head_to_head(
        self, row: Row, ours: CCServer, theirs: Peer, case: Case, off: CCServer | None = None
    ) -> None:
        """
        Start ccserver, then its peer, and measure them in alternating
        rounds into C{row}; a ccserver that refuses to start (its store or
        a dependency missing) marks the row not available.  C{off}, if
        given, is the same ccserver with its access log off, measured in
        the same alternation: its figures go in the row's note.
        """
        try:
            self.start(ours, case)
        except NotAvailable as e:
            row.status, row.note = "not available", f"ccserver refused to start: {e}"
            say(f"  not available: {e}")
            return
        self.start(theirs, case)
        servers: list[Server] = [ours, theirs]
        if off is not None:
            self.start(off, case)
            servers.append(off)
        results = self.runner.measure(servers, self.args.rounds)
        row.ours, row.theirs = results[ours.label], results[theirs.label]
        if off is not None:
            row.note = access_log_note(results[off.label], row.theirs, row.judge)

    # ccserver --workers N against a node:cluster of N, one JWT case at a time
    def machine(self) -> None:
        count = self.args.machine_workers
        names = [n for n in self.args.cases if CASES[n].format == "jwt"]
        if count < 2 or not names:
            return
        store = self.args.workers_store
        section = (f"machine: ccserver --workers {count} ({store} store) vs node:cluster of {count}, "
                   "every core used")
        for name in names:
            case = CASES[name]
            row = Row(section, case.label, ours_label=f"ccserver {case.label} x{count}",
                      theirs_label=f"node cluster {case.label} x{count}", target=case.target)
            self.rows.append(row)
            say(f"\n== {section}: {case.label}  (load {loadavg()})")
            support: list[Any] = []
            try:
                url = self.store_url(store, support)
                ours = self.ccserver(row.ours_label, self.workdir(f"machine-cc-{name}"), case, url,
                                     workers=count)
                theirs = Peer(row.theirs_label, self.workdir(f"machine-peer-{name}"), self.peer_dir,
                              case, workers=count)
                self.head_to_head(row, ours, theirs, case)
            except MEASUREMENT_ERRORS as e:
                self.error(row, e)
            finally:
                self.stop_all()
                self.remove_support(support)

    # opaque tokens on a durable store against JWT ES256 on the same store
    def durable(self) -> None:
        count = self.args.durable_workers
        section = (f"durable: ccserver --workers {count}, opaque vs JWT ES256 on the same store "
                   "(opaque answered only once committed)")
        for store in self.args.durable_stores:
            row = Row(section, store, ours_label=f"{store} opaque", theirs_label=f"{store} ES256 JWT",
                      ours_column="opaque", theirs_column="jwt", target=DURABLE_TARGET, check_p99=False)
            self.rows.append(row)
            say(f"\n== {section}: {store}  (load {loadavg()})")
            support: list[Any] = []
            try:
                servers: list[Server] = []
                for label, case in ((row.ours_label, CASES["opaque"]), (row.theirs_label, CASES["es256"])):
                    url = self.store_url(store, support)
                    server = self.ccserver(f"ccserver {label}", self.workdir(f"durable-{label}"), case, url,
                                           workers=count)
                    self.start(server, case)
                    servers.append(server)
                results = self.runner.measure(servers, self.args.rounds)
                row.ours, row.theirs = results[servers[0].label], results[servers[1].label]
            except NotAvailable as e:
                row.status, row.note = "not available", str(e)
                say(f"  {store}: not available: {e}")
            except (BenchError, subprocess.TimeoutExpired) as e:
                self.error(row, e)
            finally:
                self.stop_all()
                self.remove_support(support)

    # ccserver with each store, against ccserver with memory://
    def stores(self) -> None:
        wanted = [s for s in self.args.stores if s != "memory"]
        if not wanted:
            return
        case = CASES[self.args.store_case]
        section = f"stores: ccserver {case.label}, store vs memory:// (warm client cache)"
        say(f"\n== {section}  (load {loadavg()})")
        support: list[Any] = []
        servers: list[Server] = []
        rows: dict[str, Row] = {}
        try:
            baseline = self.ccserver("ccserver memory://", self.workdir("store-memory"), case, "memory://")
            self.start(baseline, case)
            servers.append(baseline)
            for store in wanted:
                row = Row(section, store, ours_label=store, theirs_label="memory",
                          ours_column="store", theirs_column="memory",
                          target=STORE_TARGET, check_p99=False)
                self.rows.append(row)
                try:
                    url = self.store_url(store, support)
                    server = self.ccserver(f"ccserver {store}", self.workdir(f"store-{store}"), case, url)
                    self.start(server, case)
                except NotAvailable as e:
                    row.status, row.note = "not available", str(e)
                    say(f"  {store}: not available: {e}")
                    continue
                servers.append(server)
                rows[server.label] = row
            if rows:
                results = self.runner.measure(servers, self.args.rounds)
                for label, row in rows.items():
                    row.ours, row.theirs = results[label], results[baseline.label]
        except MEASUREMENT_ERRORS as e:
            self.section_error(section, e)
        finally:
            self.stop_all()
            self.remove_support(support)

    def ccserver(
        self,
        label: str,
        workdir: Path,
        case: Case,
        store_url: str,
        workers: int = 1,
        client_cache_seconds: float | None = None,
        encryption_key_file: Path | None = None,
        access_log: bool | None = None,
        settings: dict[str, dict[str, Any]] | None = None,
    ) -> CCServer:
        """
        A ccserver with the run's --access-log choice (on, ccserver's
        default, unless --access-log off), or C{access_log}.
        """
        return CCServer(
            label,
            workdir,
            case,
            store_url,
            workers=workers,
            client_cache_seconds=client_cache_seconds,
            encryption_key_file=encryption_key_file,
            access_log=self.args.access_log != "off" if access_log is None else access_log,
            settings=settings,
            tracing_endpoint=None if self.collector is None else self.collector.endpoint,
        )

    def remove_support(self, support: list[Any]) -> None:
        stores.remove(support, self.runner.store_groups)

    def store_url(self, store: str, support: list[Any]) -> str:
        if store == "memory":
            return "memory://"
        if store == "sqlite":
            return f"sqlite:///{self.workdir('sqlite-db') / 'ccserver.db'}"
        return stores.start(store, support, self.runner.store_groups)
        raise SystemExit(f"bench: unknown store {store!r}")

    # ccserver with 1 and N worker processes, against node-oidc-provider
    def workers(self) -> None:
        counts = self.args.workers
        if not counts or counts == [1]:
            return
        case = CASES[self.args.store_case]
        store = self.args.workers_store
        section = f"workers: ccserver {case.label}, {store} store, N processes vs node-oidc-provider (1 process)"
        say(f"\n== {section}  (load {loadavg()})")
        support: list[Any] = []
        servers: list[Server] = []
        rows: dict[str, Row] = {}
        try:
            peer = Peer(f"node-oidc-provider {case.label}", self.workdir("workers-peer"), self.peer_dir, case)
            for count in counts:
                label = f"{count} worker" + ("s" if count != 1 else "")
                row = Row(section, label, ours_label=f"ccserver {label}", target=None, check_p99=False)
                self.rows.append(row)
                try:
                    url = self.store_url(store, support)
                    server = self.ccserver(f"ccserver {label}", self.workdir(f"workers-{count}"), case, url, workers=count)
                    self.start(server, case)
                except NotAvailable as e:
                    row.status, row.note = "not available", str(e)
                    say(f"  {label}: not available: {e}")
                    continue
                servers.append(server)
                rows[server.label] = row
            if rows:
                self.start(peer, case)
                servers.append(peer)
                results = self.runner.measure(servers, self.args.rounds)
                first = next(iter(rows))
                for label, row in rows.items():
                    row.ours, row.theirs = results[label], results[peer.label]
                    if label != first:
                        scale = statistics.median(
                            a.tokens_per_s / b.tokens_per_s for a, b in zip(results[label], results[first], strict=True)
                        )
                        row.note = f"x{scale:.2f} the tokens/s of {first.removeprefix('ccserver ')}"
        except MEASUREMENT_ERRORS as e:
            self.section_error(section, e)
        finally:
            self.stop_all()
            self.remove_support(support)

    # registrations/s per store; tokens/s with 100 and with N registered clients
    def population(self) -> None:
        stores = self.args.population_stores
        if self.args.no_population or not stores:
            return
        case = CASES[self.args.store_case]
        target = self.args.population
        # every registration is kept with this probability, so that about
        # 3 x ROTATED_CLIENTS clients spread over the whole population
        # have known secrets, to pick ROTATED_CLIENTS from at random
        keep_probability = min(1.0, 3 * ROTATED_CLIENTS / target)
        registration = "registration: ccserver, POST /client-reg, store vs memory:// (fresh stores)"
        population = (
            f"population: ccserver {case.label}, tokens/s with {target:,} vs {SMALL_POPULATION} "
            f"registered clients, {ROTATED_CLIENTS} of them rotated (client cache {cache_default()})"
        )
        say(f"\n== {registration}  (load {loadavg()})")
        support: dict[str, list[Any]] = {store: [] for store in stores}
        large: dict[str, CCServer] = {}
        loads: dict[str, Load] = {}
        try:
            rows: dict[str, Row] = {}
            for store in stores:
                row = Row(registration, store, ours_label=store, theirs_label="memory",
                          ours_column="store", theirs_column="memory", unit="reg/s",
                          target=None, check_p99=False)
                self.rows.append(row)
                try:
                    url = self.store_url(store, support[store])
                    server = self.ccserver(f"ccserver {store} (registering)",
                                      self.workdir(f"population-{store}-large"), case, url,
                                      encryption_key_file=self.tmp / f"population-{store}-large.key")
                    self.start(server, case)
                except NotAvailable as e:
                    row.status, row.note = "not available", str(e)
                    say(f"  {store}: not available: {e}")
                    continue
                kept = server.workdir / "kept-clients.tsv"
                probability = keep_probability if store != "memory" else 0.0
                loads[server.label] = register_load(server, probability, kept)
                large[store] = server
                rows[server.label] = row
            if large:
                results = self.runner.measure(list(large.values()), self.args.rounds, loads)
                memory = results.get(large["memory"].label) if "memory" in large else None
                for label, row in rows.items():
                    row.ours, row.theirs, row.single = results[label], memory, memory is None
                    row.note = f"{loads[label].sent + 1:,} clients registered by the end"
        except MEASUREMENT_ERRORS as e:
            self.section_error(registration, e)
            # the population comparison builds on these stores: none of it
            self.stop_some(list(large.values()))
            large = {}
        try:
            if "memory" in large:
                self.stop_some([large.pop("memory")])
            for store, server in large.items():
                self.population_store(population, store, server, loads[server.label], support[store])
        finally:
            self.stop_some(list(large.values()))
            for store_support in support.values():
                self.remove_support(store_support)

    def population_store(
        self, section: str, store: str, large: CCServer, registering: Load, support: list[Any]
    ) -> None:
        """
        One durable store: C{large} holds the clients that the registration
        rounds made; bring it to the target population, make a second store
        of the same kind with SMALL_POPULATION clients, and alternate wrk
        runs on both (and, with --population-cache-off, on two more servers
        with C{client_cache_seconds = 0} on the same two stores).
        """
        case = large.case
        target = self.args.population
        large.label = f"ccserver {store} {target:,} clients"  # was "(registering)"
        say(f"\n== {section}: {store}  (load {loadavg()})")
        rows = [Row(section, store, ours_label=f"{store} {target:,}", theirs_label=f"{store} {SMALL_POPULATION}",
                    ours_column=f"{target:,}", theirs_column=f"{SMALL_POPULATION}",
                    target=POPULATION_TARGET, check_p99=False)]
        if self.args.population_cache_off:
            rows.append(Row(section, f"{store}, cache off", ours_label=f"{store} {target:,} cache off",
                            theirs_label=f"{store} {SMALL_POPULATION} cache off",
                            ours_column=f"{target:,}", theirs_column=f"{SMALL_POPULATION}",
                            target=None, check_p99=False))
        self.rows.extend(rows)
        started: list[Server] = []
        try:
            small_url = self.store_url(store, support)
            small_key = self.tmp / f"population-{store}-small.key"
            small = self.ccserver(f"ccserver {store} {SMALL_POPULATION} clients",
                             self.workdir(f"population-{store}-small"), case, small_url,
                             encryption_key_file=small_key)
            pairs = [(small, large)]
            if self.args.population_cache_off:
                small_off = self.ccserver(f"ccserver {store} {SMALL_POPULATION} clients, cache off",
                                     self.workdir(f"population-{store}-small-off"), case, small_url,
                                     client_cache_seconds=0, encryption_key_file=small_key)
                large_off = self.ccserver(f"ccserver {store} {target:,} clients, cache off",
                                     self.workdir(f"population-{store}-large-off"), case, large.store_url,
                                     client_cache_seconds=0, encryption_key_file=large.encryption_key_file)
                pairs.append((small_off, large_off))
            for server in [s for pair in pairs for s in pair if s is not large]:
                self.start(server, case)
                started.append(server)
            # Every start registered one client ("bench", its own credentials).
            small_clients = [s.basic for s, _ in pairs]
            while len(small_clients) < SMALL_POPULATION:
                small_clients.append(basic(*small.register_client()))
            # the registrations of the timed rounds, and one per server start
            population = registering.sent + len(pairs)
            need = target - population
            fill_note = ""
            if need > 0:
                say(f"  filling {store}: {need:,} more registrations with wrk, to {target:,} clients"
                    f" (budget {self.args.population_budget} s)")
                made, seconds, why = self.runner.fill(large, need, self.args.population_budget, registering)
                population += made
                say(f"    {made:,} clients in {seconds:.1f} s ({made / seconds:,.0f} registrations/s): {why}")
                fill_note = f"; the last {made:,} registered in {seconds:.0f} s ({made / seconds:,.0f}/s)"
            # clients of known secret, sampled all along the registrations
            kept = kept_clients(Path(registering.args[2]))
            picked = random.sample(kept, min(len(kept), ROTATED_CLIENTS))
            late = ROTATED_CLIENTS - len(picked)
            for _ in range(late):
                picked.append(large.register_client())
                population += 1
            large_clients = [basic(client_id, secret) for client_id, secret in picked]
            say(f"  {store}: {population:,} clients in the large store ({len(kept)} sampled, "
                f"{ROTATED_CLIENTS} rotated), {SMALL_POPULATION} in the small one")
            files = {
                name: clients_load(large.workdir.parent / f"population-{store}-{name}-clients.txt", clients)
                for name, clients in (("small", small_clients), ("large", large_clients))
            }
            loads: dict[str, Load] = {}
            servers: list[Server] = []
            for few, many in pairs:
                loads[few.label] = files["small"]
                loads[many.label] = files["large"]
                servers += [few, many]
            results = self.runner.measure(servers, self.args.rounds, loads)
            for row, (few, many) in zip(rows, pairs, strict=True):
                row.ours, row.theirs = results[many.label], results[few.label]
                row.note = f"{population:,} clients{fill_note}"
                if late:
                    row.note += f"; {late} of the rotated clients registered after the fill"
                if population < target:
                    row.caveat = f"(at {population:,} clients only)"
        except MEASUREMENT_ERRORS as e:
            for row in rows:
                self.error(row, e)
        finally:
            self.stop_some([large, *started])

