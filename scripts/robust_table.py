#!/usr/bin/env python3
"""Markdown ablation table (mean ± sd over seeds) from the TSVs of scripts/robust_ablation.sh.
Usage: scripts/robust_table.py OUTDIR/*.tsv"""
import math, sys

COLS = [("joint_celltype", "joint ct"), ("joint_subtype", "joint sub"), ("spl_subtype", "spl sub"),
        ("spl_celltype", "spl ct"), ("imp_pearson", "imp r"), ("imp_rmse", "imp RMSE"),
        ("mb_pearson", "MB r"), ("mb_rmse", "MB RMSE"), ("ds_precision", "DS prec"), ("ds_recall", "DS rec"),
        ("halves_called", "halves"), ("dsmo_precision", "DS≥10 prec"), ("dsmo_recall", "DS≥10 rec"),
        ("halvesmo_called", "halves≥10"), ("dsdec_precision", "DSdec prec"), ("dsdec_recall", "DSdec rec"),
        ("dsrb_precision", "DSrb prec"), ("dsrb_recall", "DSrb rec"), ("halvesrb_called", "halves rb"),
        ("batch_entropy", "batch ent"), ("kl_per_cell", "KL/cell"), ("train_s", "train s")]

def fmt(vals):
    vals = [v for v in vals if not math.isnan(v)]
    if not vals:
        return "–"
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{m:.3f}"
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    return f"{m:.3f} ± {sd:.3f}"

print("| config | seeds | " + " | ".join(c[1] for c in COLS) + " |")
print("|---|---|" + "---|" * len(COLS))
for path in sys.argv[1:]:
    rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
    if len(rows) < 2:
        continue
    head = rows[0]
    data = [r for r in rows[1:] if r[1] != "mean" and r[0] != "name"]
    if not data:
        continue
    idx = {c: head.index(c) for c, _ in COLS if c in head}
    cells = [fmt([float(r[idx[c]]) for r in data]) if c in idx else "–" for c, _ in COLS]
    print(f"| {data[0][0]} | {len(data)} | " + " | ".join(cells) + " |")
