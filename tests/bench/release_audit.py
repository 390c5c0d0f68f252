"""Cost of the release audit's linear system on a synthetic county, table after table.

Enterprises have a town, an industry and a size band and 36 monthly rows; an honest
department asks every one- and two-way table of them by month, quarter and year (cells of at
least five enterprises), in random order. For each table the script prints how long the audit
took per cell and in all, what it published and withheld, the rank and the number of classes
of the published system, and the process's peak memory. No data values are involved: the
audit sees only which rows each cell covers.

    .venv/bin/python -m tests.bench.release_audit --enterprises 1000
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import time

from broker.disclosure.linked import OWNER_SHIFT, LinkedSystem

MONTHS = 36
LEVELS = {
    "month": [[m] for m in range(MONTHS)],
    "quarter": [list(range(q * 3, q * 3 + 3)) for q in range(MONTHS // 3)],
    "year": [list(range(y * 12, y * 12 + 12)) for y in range(MONTHS // 12)],
}
TABLES = [("town",), ("industry",), ("size",), ("town", "industry"), ("town", "size"),
          ("industry", "size")]


def _county(enterprises: int, rng: random.Random) -> dict[str, list[int]]:
    return {
        "town": [rng.randrange(20) for _ in range(enterprises)],
        "industry": [min(29, int(rng.paretovariate(1.2))) for _ in range(enterprises)],
        "size": [rng.randrange(5) for _ in range(enterprises)],
    }


def main() -> None:
    """Run the tables and print one line each, then a summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--enterprises", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    attrs = _county(args.enterprises, rng)
    tables = [(dims, level) for dims in TABLES for level in LEVELS]
    rng.shuffle(tables)
    system = LinkedSystem()
    published = withheld = 0
    per_cell: list[float] = []
    for dims, level in tables:
        groups: dict[tuple[int, ...], list[int]] = {}
        for e in range(args.enterprises):
            groups.setdefault(tuple(attrs[d][e] for d in dims), []).append(e)
        forms = [[e << OWNER_SHIFT | m for e in members for m in months]
                 for _, members in sorted(groups.items()) if len(members) >= 5
                 for months in LEVELS[level]]
        started = time.perf_counter()
        for form in forms:
            t0 = time.perf_counter()
            if system.add(form):
                published += 1
            else:
                withheld += 1
            system.commit()
            per_cell.append(time.perf_counter() - t0)
        took = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{' x '.join(dims):>18} by {level:<7} {len(forms):6d} cells "
              f"{took * 1000:8.0f} ms ({took * 1000 / max(1, len(forms)):.2f} ms/cell); "
              f"published {published}, withheld {withheld}; rank {system.rank}, "
              f"classes {system.classes}; peak RSS {peak:.0f} MiB", flush=True)
    cuts = statistics.quantiles(per_cell, n=100)
    print(f"per cell: p50 {cuts[49] * 1000:.2f} ms, p99 {cuts[98] * 1000:.2f} ms, "
          f"max {max(per_cell) * 1000:.1f} ms over {len(per_cell)} cells")


if __name__ == "__main__":
    main()
