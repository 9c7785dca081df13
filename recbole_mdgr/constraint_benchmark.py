"""Cost of the valid-SID constraint query as the catalogue grows (printed, not a test).

    python -m recbole_mdgr.constraint_benchmark [--items 12000,100000,1000000] [--rows 5000]

Random 3 x 256 codes plus TIGER's dedup token for each catalogue size; 5,000 query rows per
fixed-slot pattern; ms for one ``SIDTable.allowed_at`` call over all rows (median of 5,
after the pattern's index is built once, whose time is shown apart) and the index's size.
Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import statistics
from time import perf_counter

import numpy as np
import torch

from recbole_mdgr.tokenizer.sid_table import build_table

PATTERNS = {  # name -> (fixed positions, queried position)
    "prefix of 1 -> position 1": ((0,), 1),
    "prefix of 3 -> dedup token": ((0, 1, 2), 3),
    "dedup token only -> position 0": ((3,), 0),
    "positions 1, 3 -> position 2": ((1, 3), 2),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", default="12000,100000,1000000")
    parser.add_argument("--rows", type=int, default=5000)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"| items | pattern | index build s | query ms ({args.rows:,} rows) | index MB |")
    print("|---|---|---|---|---|")
    for n in (int(x) for x in args.items.split(",")):
        rng = np.random.default_rng(0)
        table = build_table(rng.integers(0, 256, (n, 3)), [256] * 3, dedup="always")
        rows = table.codes[1 + rng.integers(0, n, args.rows)]  # query rows taken from items
        for name, (fixed_at, j) in PATTERNS.items():
            fixed = torch.zeros(args.rows, table.m, dtype=torch.bool)
            fixed[:, list(fixed_at)] = True
            start = perf_counter()
            table.allowed_at(rows, fixed, j)  # builds this pattern's groups and bits
            build = perf_counter() - start
            times = []
            for _ in range(5):
                start = perf_counter()
                table.allowed_at(rows, fixed, j)
                times.append(perf_counter() - start)
            pattern = sum(1 << p for p in fixed_at)
            size = table._groups[pattern].nbytes()
            print(f"| {n:,} | {name} | {build:.2f} | {1000 * statistics.median(times):.1f} "
                  f"| {size / 2**20:.1f} |")


if __name__ == "__main__":
    main()
