"""The reproduction rows of the source documents (issue #20), with their run time.

Runs :func:`rtlab.reproduce.run` for the given seeds (default all) and prints exactly one JSON
line::

    {"rows": [...], "seeds": [...], "reduced": false, "elapsed_s": ..., "row_s": {...},
     "n_held": ..., "n_rows": ..., "cpu_count": ..., "python": ...}

``rows`` has the schema of ``rtlab reproduce --json`` (docs/reproduction.md); ``row_s`` is the
wall time of each row (rows computed together share one time). The issue asks each seed's rows
to finish in under 15 minutes on the 2-core development machine.

Usage::

    python benchmarks/reproduce.py [--seed 000] [--seed 001] [--reduced] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", action="append", metavar="NNN", help="000, 001, 002, 003, 004 (repeat; default all)")
    ap.add_argument("--reduced", action="store_true", help="fewer and coarser cases (the tests' rows)")
    ap.add_argument("--markdown", action="store_true", help="also print the markdown table to stderr")
    a = ap.parse_args(argv)
    from rtlab import reproduce

    t0 = time.perf_counter()
    rows = reproduce.run(a.seed, reduced=a.reduced, progress=sys.stderr.isatty())
    elapsed = time.perf_counter() - t0
    out = {"rows": rows, "seeds": a.seed or list(reproduce.SEEDS), "reduced": a.reduced,
           "elapsed_s": round(elapsed, 1),
           "row_s": {f"{r['seed']}: {r['claim']}": r["rtlab_figure"].get("run_s") for r in rows},
           "n_held": sum(r["held"] for r in rows), "n_rows": len(rows), "cpu_count": os.cpu_count(),
           "python": platform.python_version()}
    if a.markdown:
        print(reproduce.rows_table(rows), file=sys.stderr)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
