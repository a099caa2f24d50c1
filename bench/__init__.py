"""
The token benchmark of ccserver: ccserver against node-oidc-provider, side
by side on loopback, under the same wrk load.  See bench/README.md.

One entry point, C{python3 bench/run}; the modules, each using only those
listed before it:

    paths.py      where the bench's files are (Lua scripts, the peer's script)
    output.py     say, loud; errors.py: NotAvailable, BenchError
    cases.py      the cases, stores and targets
    cpu.py        CPU accounting from /proc (machine, process groups, trees)
    install.py    what the bench needs, installed if missing (wrk, npm peer)
    servers.py    the servers under test: ccserver and the node peer
    stores.py     throwaway Redis and PostgreSQL servers (ccserver.testing.servers')
    wrk.py        what wrk sends (a Load) and what its result line says
    rounds.py     one wrk run measured (a Round); warm-up and A B rounds
    report.py     the rows, the table, the JSON
    sections.py   the sections: cases, stores, workers, population
    profiling.py  py-spy on ccserver, and its summary
    auth.py       --auth-cases: basic vs private_key_jwt vs DPoP
    memory.py     --memory: RSS per process after N tokens, and with many clients
    cli.py        the options and main()
"""
