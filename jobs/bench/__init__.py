"""`vip2scan bench`: the scan pipeline measured against the bare model, on one machine.

    command.py  the typer command: flags -> BenchParams, table or JSON out
    runner.py   the measurement plan: bare model, full scan + unchanged rescan per source,
                memory at several lake sizes
    probes.py   what measures: bare-model throughput, the process sampler, the environment
    lakes.py    what is measured on: the synthetic lake, the moto S3 endpoint, the checkpoint
    report.py   the result dict, its targets and the printed table

Importing this package is cheap (typer and the standard library only), so `vip2scan --help`
stays instant; torch, Ray and moto are imported when the command runs.
"""

from .command import main, register

__all__ = ["main", "register"]
