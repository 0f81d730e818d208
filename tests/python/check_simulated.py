"""Check a `splicevi simulate` file with the Python ecosystem (mudata / anndata / scipy).

Usage: check_simulated.py FILE --cells N --genes G --junctions J
Exits non-zero with a message on the first failed check; prints a JSON summary on success.
Opens the file with mudata.read_h5mu (the way SpliceVI users do) and checks the layout of model.md §1.1,
the invariants between the layers, the ground-truth annotations, and that the planted structure is
really there: subtypes of one cell type have the same expression but different splicing at the planted
junctions.
"""

import argparse
import json
import sys
import warnings

import numpy as np
import scipy.sparse as sp


def fail(msg):
    print(f"check_simulated: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--cells", type=int, required=True)
    ap.add_argument("--genes", type=int, required=True)
    ap.add_argument("--junctions", type=int, required=True)
    a = ap.parse_args()

    try:
        import anndata  # noqa: F401
        import mudata
    except ImportError as e:
        fail(f"python packages missing ({e}); install numpy scipy h5py anndata mudata pandas")

    try:
        # The behaviour mudata will default to from 0.4 (and warns about otherwise, for any file).
        mudata.set_options(pull_on_update=False)
    except Exception:
        pass
    with warnings.catch_warnings():
        # Any warning while reading means the file is not quite what mudata writes itself.
        warnings.simplefilter("error")
        md = mudata.read_h5mu(a.file)
    N, G, J = a.cells, a.genes, a.junctions
    check(list(md.mod.keys()) == ["rna", "splicing"], f"modalities {list(md.mod.keys())}")
    rna, spl = md["rna"], md["splicing"]
    check(rna.shape == (N, G), f"rna shape {rna.shape}")
    check(spl.shape == (N, J), f"splicing shape {spl.shape}")
    check(md.shape == (N, G + J), f"mudata shape {md.shape}")
    check(list(rna.obs_names) == list(spl.obs_names) == list(md.obs_names), "obs names differ between modalities")

    # ---- obs
    for c in ["cell_type", "subtype", "batch"]:
        check(c in md.obs.columns, f"global obs lacks {c}: {list(md.obs.columns)}")
        check(str(md.obs[c].dtype) == "category", f"obs {c} is {md.obs[c].dtype}, not categorical")
    check("library_size" in md.obs.columns, "obs lacks library_size")
    subtype_names = list(md.uns["subtype_names"])
    check(list(md.obs["subtype"].cat.categories) == subtype_names, "uns/subtype_names differs from subtype categories")
    S = len(subtype_names)

    # ---- expression
    X = rna.X
    check(sp.issparse(X) and X.format == "csr", f"rna X is {type(X)}")
    L = rna.layers["length_norm"]
    check(sp.issparse(L) and (L != X).nnz == 0, "layers/length_norm differs from X")
    check(np.all(L.data == np.floor(L.data)) and L.data.min() > 0, "length_norm is not positive integers")
    lib = np.asarray(L.sum(axis=1)).ravel()
    for where, m in [("mudata", md.obsm["X_library_size"]), ("rna", rna.obsm["X_library_size"])]:
        m = np.asarray(m)
        check(m.shape == (N, 1), f"{where} obsm/X_library_size shape {m.shape}")
        check(np.allclose(m[:, 0], lib), f"{where} obsm/X_library_size != row sums of length_norm")
    check(np.allclose(md.obs["library_size"].to_numpy(), lib), "obs library_size != row sums")
    check((rna.var["modality"] == "Gene_Expression").all(), "rna var modality")
    for c in ["gene_id", "mean_transcript_length", "de_gene"]:
        check(c in rna.var.columns, f"rna var lacks {c}")

    # ---- splicing layers and their invariants
    k = spl.layers["cell_by_junction_matrix"].tocsr()
    n = spl.layers["cell_by_cluster_matrix"].tocsr()
    psi = spl.layers["junc_ratio"].tocsr()
    mask = spl.layers["psi_mask"].tocsr()
    check(mask.dtype == np.uint8, f"psi_mask dtype {mask.dtype}")
    check(n.data.min() > 0 and np.all(n.data == np.floor(n.data)), "cluster counts not positive integers")
    check(np.all(k.data == np.floor(k.data)) and k.data.min() > 0, "junction counts not positive integers")
    check((mask != (n > 0)).nnz == 0, "psi_mask != (n > 0)")
    check(((k > 0).astype(np.int8) - (k > 0).multiply(n > 0).astype(np.int8)).nnz == 0, "k > 0 where n == 0")
    check((k > n).nnz == 0, "k > n somewhere")
    ratio = k.multiply(n.power(-1)).tocsr()
    ratio.data = ratio.data.astype(np.float32)
    check(abs(psi - ratio).max() < 1e-6, "junc_ratio != k / n")
    check((spl.X != k).nnz == 0, "splicing X != cell_by_junction_matrix")
    for c in ["event_id", "junction_id", "gene_name", "modality", "planted_ds"]:
        check(c in spl.var.columns, f"splicing var lacks {c}")
    check((spl.var["modality"] == "Splicing").all(), "splicing var modality")
    event = spl.var["event_id"].astype(str).to_numpy()
    codes = np.unique(event, return_inverse=True)[1]
    A = codes.max() + 1
    sizes = np.bincount(codes)
    check(sizes.min() >= 1 and sizes.max() <= 7, f"ATSE sizes {sizes.min()}..{sizes.max()}, expected 1..7")
    # n constant within an ATSE in a cell: per (cell, ATSE) min == max over its junctions.
    ncoo = n.tocoo()
    key = ncoo.row.astype(np.int64) * A + codes[ncoo.col]
    order = np.argsort(key, kind="stable")
    ks, vs = key[order], ncoo.data[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ks)) + 1]
    mx = np.maximum.reduceat(vs, starts)
    mn = np.minimum.reduceat(vs, starts)
    check(np.all(mx == mn), "cluster counts differ within an ATSE")
    cnt = np.diff(np.r_[starts, len(ks)])
    check(np.all(cnt == sizes[codes[ncoo.col[order][starts]]]), "an ATSE is observed on only some of its junctions")
    frac_unobs = 1.0 - n.nnz / (N * J)
    check(0.70 <= frac_unobs <= 0.95, f"fraction unobserved {frac_unobs:.3f} outside [0.70, 0.95]")

    # ---- ground truth
    tp = np.asarray(spl.varm["true_psi"])
    check(tp.shape == (J, S), f"varm/true_psi shape {tp.shape}")
    atse_sum = np.zeros((A, S))
    np.add.at(atse_sum, codes, tp)
    check(np.allclose(atse_sum, 1.0, atol=1e-5), "true_psi does not sum to 1 within ATSEs")
    planted = spl.var["planted_ds"].to_numpy().astype(bool)
    check(planted.any(), "no planted junctions")

    # ---- the planted structure is visible in the data
    sub = md.obs["subtype"].cat.codes.to_numpy()
    ct = md.obs["cell_type"].cat.codes.to_numpy()
    norm = (sp.diags(1e4 / np.maximum(lib, 1)) @ L).tocsr()
    expressed = np.asarray(L.mean(axis=0)).ravel() >= 0.5

    de = rna.var["de_gene"].to_numpy().astype(bool)

    def expr_dist(rows_a, rows_b, genes=expressed):
        ma = np.log1p(np.asarray(norm[rows_a].mean(axis=0)).ravel())
        mb = np.log1p(np.asarray(norm[rows_b].mean(axis=0)).ravel())
        return float(np.mean(np.abs(ma - mb)[genes]))

    T = len(md.obs["cell_type"].cat.categories)
    rng = np.random.default_rng(0)
    within, null, between, null_de = [], [], [], []
    psi_gap_planted, psi_gap_null = [], []
    for t in range(T):
        a_, b_ = 2 * t, 2 * t + 1
        ia, ib = np.flatnonzero(sub == a_), np.flatnonzero(sub == b_)
        check(len(ia) > 10 and len(ib) > 10, f"too few cells in subtypes of T{t}")
        within.append(expr_dist(ia, ib))
        # Null: random halves of the same cell type, same group sizes (pure sampling noise).
        both = np.r_[ia, ib]
        reps = []
        for _ in range(5):
            p = rng.permutation(both)
            reps.append((expr_dist(p[: len(ia)], p[len(ia):]), expr_dist(p[: len(ia)], p[len(ia):], de & expressed)))
        null.append(float(np.mean([r[0] for r in reps])))
        null_de.append(float(np.mean([r[1] for r in reps])))
        for u in range(t + 1, T):
            between.append(expr_dist(ia, np.flatnonzero(sub == 2 * u), de & expressed))
        # mean observed psi per junction in each subtype (psi summed / times observed)
        def mean_psi(rows):
            obs_cnt = np.asarray(mask[rows].sum(axis=0)).ravel()
            ssum = np.asarray(psi[rows].sum(axis=0)).ravel()
            return ssum / np.maximum(obs_cnt, 1), obs_cnt
        pa, ca = mean_psi(sub == a_)
        pb, cb = mean_psi(sub == b_)
        pt = spl.var[f"planted_ds_T{t}"].to_numpy().astype(bool)
        ok = (ca >= 5) & (cb >= 5)
        if (pt & ok).any():
            psi_gap_planted.append(float(np.mean(np.abs(pa - pb)[pt & ok])))
        psi_gap_null.append(float(np.mean(np.abs(pa - pb)[~pt & ok])))
        # truth agrees with the planted columns
        d = np.abs(tp[:, a_] - tp[:, b_])
        check(np.all(d[pt] >= 0.3 - 1e-5) and np.all(d[~pt] < 1e-6), f"planted_ds_T{t} disagrees with true_psi")
    # Subtypes of one type: indistinguishable from random halves. Different types: clearly apart.
    check(all(w < 1.25 * n0 for w, n0 in zip(within, null)),
          f"subtype expression differs more than sampling noise: within {within}, null {null}")
    check(all(b > 2.0 * max(null_de) for b in between),
          f"cell types not separated in expression (DE genes): between {between}, null {null_de}")
    if psi_gap_planted:
        check(min(psi_gap_planted) > 2 * max(psi_gap_null),
              f"planted junctions not visible: planted gap {psi_gap_planted}, null {psi_gap_null}")

    print(json.dumps({
        "n_cells": N, "n_genes": G, "n_junctions": J, "n_atse": int(A),
        "expression_nnz": int(L.nnz), "splicing_observed": int(n.nnz),
        "fraction_unobserved": frac_unobs,
        "expr_within_type_mean_abs_lfc": [float(x) for x in within],
        "expr_between_type_mean_abs_lfc_de_genes": [float(x) for x in between],
        "expr_random_halves_mean_abs_lfc": null,
        "expr_random_halves_mean_abs_lfc_de_genes": null_de,
        "psi_gap_planted": psi_gap_planted, "psi_gap_null": psi_gap_null,
        "global_obs_columns": list(md.obs.columns),
    }))


if __name__ == "__main__":
    main()
