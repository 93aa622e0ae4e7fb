#!/usr/bin/env python3
"""Summarizes bench/gemm_choice/results/{raw,membw}.csv as markdown.

Each iteration gives, per (case, library, threads), the median of its timed
samples. Here: "med" = median over iterations of those; "best" = the fastest
iteration's median (closest to a quiet machine). Aggregates over the five
shapes are total work / total time, i.e. what a training step or a decode step
sees. Usage: summarize.py RESULTS_DIR
"""
import csv
import statistics
import sys
from collections import defaultdict

res = sys.argv[1] if len(sys.argv) > 1 else "results"
rows = [r for r in csv.DictReader(open(f"{res}/raw.csv")) if r.get("note") is not None]  # skip partial lines
ORDER = ["openblas", "blis", "onednn", "eigen", "libxsmm"]
LIBS = [l for l in ORDER if any(r["lib"] == l for r in rows)]
SHAPES = [(512, 512), (512, 1408), (1408, 512), (512, 8192), (512, 256)]

ms = defaultdict(list)
notes = defaultdict(set)
for r in rows:
    k = (r["lib"], int(r["threads"]), r["op"], int(r["n"]), int(r["in"]), int(r["out"]))
    ms[k].append(float(r["ms_median"]))
    if r["note"]:
        notes[(r["lib"], r["op"])].add(r["note"])
iters = len({r["iter"] for r in rows})
loads = sorted({(int(r["iter"]), float(r["load1"])) for r in rows})


def pick(k, stat):
    v = ms.get(k)
    if not v:
        return None
    return statistics.median(v) if stat == "med" else min(v)


def agg(lib, t, op, n, stat, metric):
    """metric 'gflops': 2*n*in*out summed / time summed; 'gbs': weight bytes / time."""
    work = tot = 0.0
    for i, o in SHAPES:
        m = pick((lib, t, op, n, i, o), stat)
        if m is None:
            return None
        work += 2.0 * n * i * o if metric == "gflops" else 4.0 * i * o
        tot += m * 1e-3
    return work / tot * 1e-9


def cell(lib, t, op, n, metric="gflops"):
    a, b = agg(lib, t, op, n, "med", metric), agg(lib, t, op, n, "best", metric)
    if a is None:
        return "-"
    return f"{a:.0f} [{b:.0f}]"


def table(hdr, body):
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in body:
        print("| " + " | ".join(r) + " |")
    print()


print(f"{iters} iteration(s); load average at each start: "
      + ", ".join(f"{l:.1f}" for _, l in loads) + ".")
print("Cells: median over iterations [fastest iteration]. Aggregate over the 5 shapes = "
      "total work / total time.\n")
for t in (2, 1):
    print(f"### Training products, {t} thread(s), aggregate GFLOP/s\n")
    table(["lib"] + [f"n={n} {op}" for n in (4096, 512) for op in ("fwd", "bwd_dx", "bwd_dw")],
          [[lib] + [cell(lib, t, op, n) for n in (4096, 512) for op in ("fwd", "bwd_dx", "bwd_dw")]
           for lib in LIBS])
for t in (2, 1):
    print(f"### Decode, {t} thread(s): weight GB/s (n=8 also GFLOP/s). hot = W cache-resident, "
          "cold = W streamed from DRAM\n")
    table(["lib", "n=1 hot", "n=1 cold", "n=1 cold via sgemm", "n=8 hot", "n=8 cold",
           "n=8 cold GFLOP/s"],
          [[lib, cell(lib, t, "dec1_hot", 1, "gbs"), cell(lib, t, "dec1_cold", 1, "gbs"),
            cell(lib, t, "dec1_cold_via_gemm", 1, "gbs"), cell(lib, t, "dec8_hot", 8, "gbs"),
            cell(lib, t, "dec8_cold", 8, "gbs"), cell(lib, t, "dec8_cold", 8)] for lib in LIBS])

# Relative speed vs OpenBLAS, computed within each iteration (the libraries were
# sampled round-robin, so they shared that iteration's load), median over iterations.
by_iter = defaultdict(dict)
for r in rows:
    by_iter[int(r["iter"])][(r["lib"], int(r["threads"]), r["op"], int(r["n"]), int(r["in"]),
                             int(r["out"]))] = float(r["ms_median"])


def rel(lib, t, ops, n, base="openblas"):
    v = []
    for d in by_iter.values():
        keys = [(op, i, o) for op in ops for i, o in SHAPES]
        try:
            tb = sum(d[(base, t, op, n, i, o)] for op, i, o in keys)
            tl = sum(d[(lib, t, op, n, i, o)] for op, i, o in keys)
        except KeyError:
            continue
        v.append(tb / tl)
    return f"{statistics.median(v):.2f}" if v else "-"


print("### Speed relative to OpenBLAS, same iteration (median over iterations; >1 = faster)\n")
cols = [(t, n) for t in (2, 1) for n in (4096, 512)]
table(["lib"] + [f"train n={n}, {t} thr" for t, n in cols]
      + [f"dec n=1 cold, {t} thr" for t in (2, 1)] + [f"dec n=8 cold, {t} thr" for t in (2, 1)],
      [[lib] + [rel(lib, t, ("fwd", "bwd_dx", "bwd_dw"), n) for t, n in cols]
       + [rel(lib, t, ("dec1_cold",), 1) for t in (2, 1)]
       + [rel(lib, t, ("dec8_cold",), 8) for t in (2, 1)] for lib in LIBS])

try:
    mem = list(csv.DictReader(open(f"{res}/membw.csv")))
    print("### Streaming read bandwidth (sum over a 1 GiB float array), GB/s\n")
    for t in (1, 2):
        v = [float(r["gbs_median"]) for r in mem if int(r["threads"]) == t]
        if v:
            print(f"- {t} thread(s): median {statistics.median(v):.1f}, best {max(v):.1f} "
                  f"(per iteration: {', '.join(f'{x:.0f}' for x in v)})")
    print()
except FileNotFoundError:
    pass

for (lib, op), ns in sorted(notes.items()):
    print(f"- {lib} {op}: {', '.join(sorted(ns))}")
print()

for t in (2, 1):
    print(f"### Per shape, {t} thread(s): GFLOP/s median [fastest iteration]\n")
    body = []
    for n in (4096, 512):
        for op in ("fwd", "bwd_dx", "bwd_dw"):
            for i, o in SHAPES:
                r = [str(n), op, f"{i}x{o}"]
                for lib in LIBS:
                    k = (lib, t, op, n, i, o)
                    if k not in ms:
                        r.append("-")
                        continue
                    fl = 2.0 * n * i * o * 1e-9
                    r.append(f"{fl / (pick(k, 'med') * 1e-3):.0f} [{fl / (pick(k, 'best') * 1e-3):.0f}]")
                body.append(r)
    table(["n", "op", "in x out"] + LIBS, body)
