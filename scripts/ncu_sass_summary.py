"""Summarize an ncu source-page SASS CSV (ncu -i X.ncu-rep --page source --csv --print-source sass):
instructions executed and stall samples per opcode, and the hottest instructions.

Usage: python3 scripts/ncu_sass_summary.py sass.csv [top]"""
import csv
import sys
from collections import defaultdict


def num(x):
    try:
        return float(str(x).replace(",", ""))
    except ValueError:
        return 0.0


def main(path, top=40):
    allrows = list(csv.reader(open(path, newline="")))
    starts = [i for i, r in enumerate(allrows) if r and r[0] == "Kernel Name"] or [0]
    for a, b in zip(starts, starts[1:] + [len(allrows)]):
        if allrows[a] and allrows[a][0] == "Kernel Name":
            print(f"==== {allrows[a][1]}")
        summarize(allrows[a:b], top)


def summarize(rows, top):
    hdr_i = next(i for i, r in enumerate(rows) if any("Source" == c.strip() for c in r))
    hdr = [c.strip() for c in rows[hdr_i]]
    src = hdr.index("Source")
    stall = next((i for i, c in enumerate(hdr) if c.startswith("Warp Stall Sampling (All")), None)
    execd = next((i for i, c in enumerate(hdr) if c == "Instructions Executed"), None)
    print("columns:", hdr[:12])
    by_op = defaultdict(lambda: [0.0, 0.0, 0])
    lines = []
    for r in rows[hdr_i + 1:]:
        if len(r) < len(hdr):
            continue
        ins = r[src].strip()
        op = ins.split()[0] if ins else "?"
        if op.startswith("@"):
            op = ins.split()[1] if len(ins.split()) > 1 else op
        op = op.split(".")[0]
        s = num(r[stall]) if stall is not None else 0.0
        e = num(r[execd]) if execd is not None else 0.0
        by_op[op][0] += e
        by_op[op][1] += s
        by_op[op][2] += 1
        lines.append((s, e, ins))
    te = sum(v[0] for v in by_op.values()) or 1
    ts = sum(v[1] for v in by_op.values()) or 1
    print(f"total instructions executed {te:.3g}, stall samples {ts:.3g}, static {len(lines)}")
    for op, (e, s, c) in sorted(by_op.items(), key=lambda kv: -kv[1][1])[:30]:
        print(f"  {op:12s} static {c:5d} exec {100 * e / te:5.1f}% stall {100 * s / ts:5.1f}%")
    print("hottest instructions (stall samples):")
    for s, e, ins in sorted(lines, reverse=True)[:top]:
        print(f"  {100 * s / ts:5.2f}% exec {e:10.3g}  {ins[:110]}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40)
