"""
The soak: ccserver C{--workers 2} under a steady mixed load for a long
time (an hour by default) on SQLite, PostgreSQL or Redis, watching what
must not drift: errors, latency, each process's memory and open files,
and the store's size against the tokens alive.  See bench/README.md, "Soak".

    python3 bench/soak [--store sqlite|postgresql|redis] [--duration 1h] ...
    python3 -m bench.soak ...

A script, never a test; the tests cover its pure parts
(tests/test_bench_soak.py).  The modules, each using only those listed
before it (and the token benchmark's servers, stores, /proc readers):

    options.py   the command line: durations ("90s", "10m", "1h"), the knobs
    stats.py     percentiles, the figures of one interval, the growth verdict
    traffic.py   the load's state: clients, live tokens, the mix of requests
    procs.py     the server's processes from /proc: RSS and open files
    sizes.py     the store's size: SQLite's files, PostgreSQL's, Redis's INFO
    serverlog.py what the server's JSON log says: purges, errors
    http.py      the HTTP client (treq): one kept-alive connection per slot
    load.py      the load generator (Twisted): a fixed number of requests in
                 flight at a paced rate, the timers that rotate secrets and
                 keys, the sampler
    report.py    the lines printed as it runs, the summary, the JSON
    cli.py       main(): the store, the server, the run, the verdicts
"""
