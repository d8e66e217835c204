"""Print (or write into docs/models.md) the model compatibility matrix of
`topkattn.compat_matrix`: a tiny random-weight model of every architecture, checked on CPU.

Run: ``PYTHONPATH=src python scripts/model_matrix.py [--markdown] [--write docs/models.md]
[--only a,b] [--json rows.json]``. One line per architecture on stderr; ``--markdown`` prints
the table, ``--write`` replaces the table in that file. Exit code 1 if a model is accepted but
computes something else (or the matrix code fails). tests/test_models_matrix.py checks that
docs/models.md matches a fresh run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch


def main(argv=None) -> int:
    from topkattn.compat_matrix import markdown, replace_table, run_matrix

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated architecture names")
    ap.add_argument("--markdown", action="store_true", help="print the docs/models.md table")
    ap.add_argument("--write", default="", help="replace the table in this file")
    ap.add_argument("--json", default="", help="write the rows to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    def log(row):
        print(f"{row['arch']:28s} {row['status']:40s} check={row['check']} dense=[{row['dense']}] "
              f"sparse=[{row['sparse']}] {row['why'][:140]} ({row['seconds']:.1f}s)",
              file=sys.stderr, flush=True)

    rows = run_matrix([a for a in args.only.split(",") if a] or None, log=log)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.markdown:
        print(markdown(rows))
    if args.write:
        p = Path(args.write)
        p.write_text(replace_table(p.read_text(), rows))
    bad = [r for r in rows if r["status"].startswith(("WRONG", "script"))]
    return 1 if bad else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
