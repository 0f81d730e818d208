#!/usr/bin/env python3
"""Write small SpliceVI inputs with the real anndata / mudata packages, for tests/data_io.rs and
tests/invariants.rs.

Usage: make_anndata_files.py OUTDIR [--large]

Writes into OUTDIR:
  * valid files that must all load to the same data (different storage: CSR, CSC, dense, chunked + gzip,
    fixed-length strings), a splicing-only .h5ad, a PSI-only .h5ad, Matrix Market directories;
  * one broken file (or flag set) per invariant of model.md §14.4;
  * expected.json: the dense matrices, names and covariates the valid files hold, and for every broken case
    the field / cell / junction / message the error must name.
With --large also large.h5mu: 20k cells × 20k junctions, sparse (for the no-densify test).
"""

import gzip
import json
import os
import shutil
import sys
import warnings

import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

warnings.filterwarnings("ignore")
import anndata as ad  # noqa: E402
import mudata as md  # noqa: E402

try:
    md.set_options(pull_on_update=False)
except Exception:
    pass

OUT = sys.argv[1]
LARGE = "--large" in sys.argv[2:]
os.makedirs(OUT, exist_ok=True)

rng = np.random.default_rng(20240607)

# ---------------------------------------------------------------------------------------------------
# The base data set.
C, G = 7, 5
cells = [f"CELL{i:02d}-{'ACGTACGTAC'[i]}{'TTGCAAGCTA'[i]}" for i in range(C)]
genes = [f"Gene_{c}" for c in "abcde"]
# Junctions of an ATSE are not adjacent, and the file order of the ids is not their sorted order.
event_of = ["chr2:ev9", "chr1:ev3", "chr2:ev9", "chr10:ev1", "chr1:ev3", "chr10:ev1", "chrX:ev2", "chr10:ev1"]
J = len(event_of)
junction_ids = [f"{e.split(':')[0]}:{100 + 37 * j}-{400 + 53 * j}:+" for j, e in enumerate(event_of)]
junction_genes = [f"G{e[-1]}" for e in event_of]
atses = sorted(set(event_of))
members = {a: [j for j in range(J) if event_of[j] == a] for a in atses}

NO_JUNCTION_CELL = 5
ZERO_EXPRESSION_CELL = 2
K = np.zeros((C, J))
N = np.zeros((C, J))
for i in range(C):
    if i == NO_JUNCTION_CELL:
        continue
    for a in atses:
        if rng.random() < 0.6:
            tot = int(rng.integers(1, 15))
            m = members[a]
            k = rng.multinomial(tot, rng.dirichlet(np.ones(len(m))))
            K[i, m] = k
            N[i, m] = tot
# every multi-junction ATSE observed somewhere, so each broken case below has a place to break
for a in atses:
    if len(members[a]) > 1 and not (N[:, members[a]] > 0).any():
        N[0, members[a]] = 4
        K[0, members[a][0]] = 4
PSI = np.divide(K, N, out=np.zeros_like(K), where=N > 0)
MASK = (N > 0).astype(np.uint8)

Xraw = rng.poisson(3.0, size=(C, G)).astype(np.float32)
Xraw[ZERO_EXPRESSION_CELL] = 0
LN = np.floor(Xraw * 1.7).astype(np.float32)
LIB = LN.sum(1, keepdims=True).astype(np.float64)

batch = pd.Categorical(["b1", "b2", "b1", "b1", "b2", "b2", "b1"], categories=["b2", "b1", "unused"])
age = np.array([1.5, 3.0, 2.25, 10.0, 0.5, 7.0, 4.0])
qc = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
cell_type = ["T", "B", "T", "NK", "B", "T", "NK"]
note = [f"note {i}" for i in range(C)]  # unique strings stay a string-array column
donor = np.array([3, 1, 2, 3, 1, 2, 3], dtype=np.int64)


def store(a, kind, dtype=np.float32):
    a = np.asarray(a, dtype=dtype)
    if kind == "csr":
        return sp.csr_matrix(a)
    if kind == "csc":
        return sp.csc_matrix(a)
    return a


def make_mudata(
    kind="csr",
    X=None,
    k=None,
    n=None,
    ratio="auto",
    mask="auto",
    kinds=None,
    var_extra=True,
    event_ids="default",
    spl_cells=None,
    lib=True,
    batch_col=None,
):
    """The SpliceVI layout. `kinds` overrides the storage of single matrices."""
    kinds = dict(kinds or {})
    kk = lambda name: kinds.get(name, kind)  # noqa: E731
    X = LN if X is None else X
    k = K if k is None else k
    n = N if n is None else n
    rna = ad.AnnData(
        X=store(Xraw, kk("X")),
        obs=pd.DataFrame({"cell_type": cell_type, "note": note}, index=cells),
        var=pd.DataFrame({"gene_id": [f"ENSG{g:05d}" for g in range(G)]}, index=genes),
    )
    rna.layers["length_norm"] = store(X, kk("length_norm"))
    rna.obsm["X_library_size"] = LIB
    var = pd.DataFrame(index=[f"junction_{j}" for j in range(J)])
    if isinstance(event_ids, str) and event_ids == "default":
        var["event_id"] = pd.Categorical(event_of)
    elif event_ids is not None:
        var["event_id"] = event_ids
    if var_extra:
        var["junction_id"] = junction_ids
        var["gene_name"] = junction_genes
    spl = ad.AnnData(
        X=store(k, kk("X_spl")),
        obs=pd.DataFrame({"donor": donor}, index=spl_cells or cells),
        var=var,
    )
    spl.layers["cell_by_junction_matrix"] = store(k, kk("k"))
    spl.layers["cell_by_cluster_matrix"] = store(n, kk("n"))
    if ratio is not None:
        spl.layers["junc_ratio"] = store(PSI if isinstance(ratio, str) else ratio, kinds.get("ratio", "dense"))
    if mask is not None:
        spl.layers["psi_mask"] = store(MASK if isinstance(mask, str) else mask, kinds.get("mask", "csr"), np.uint8)
    m = md.MuData({"rna": rna, "splicing": spl})
    m.obs["batch"] = batch if batch_col is None else batch_col
    m.obs["age"] = age
    m.obs["rna:qc"] = qc
    if lib:
        m.obsm["X_library_size"] = LIB
    return m


def write(m, name):
    path = os.path.join(OUT, name)
    m.write(path)
    return path


VALID_OPTS = {
    "rna_layer": "length_norm",
    "batch_key": "batch",
    "labels_key": "cell_type",
    "categorical_covariate_keys": ["donor"],
    "continuous_covariate_keys": ["age", "qc"],
}

expected = {
    "cells": cells,
    "genes": genes,
    "junction_ids": junction_ids,
    "junction_genes": junction_genes,
    "atse_ids": atses,
    "junc2atse": [atses.index(e) for e in event_of],
    "k": K.tolist(),
    "n": N.tolist(),
    "psi": PSI.astype(np.float32).astype(float).tolist(),
    "expression": LN.astype(float).tolist(),
    "library_size": LIB[:, 0].tolist(),
    "batch_levels": list(batch.categories),
    "batch": [str(b) for b in batch],
    "labels_levels": sorted(set(cell_type)),
    "labels": cell_type,
    "donor_levels": [str(d) for d in sorted(set(donor.tolist()))],
    "donor": [str(d) for d in donor],
    "continuous": np.stack([age, qc], 1).tolist(),
    "obs_columns": ["batch", "age", "rna:qc", "cell_type", "note"],
    "no_junction_cell": NO_JUNCTION_CELL,
    "zero_expression_cell": ZERO_EXPRESSION_CELL,
    "valid_files": [],
    "broken": {},
}

# ---------------------------------------------------------------------------------------------------
# Valid files: same content, different storage.
write(make_mudata("csr", kinds={"n": "csc", "mask": "csr"}), "mixed.h5mu")
expected["valid_files"].append({"file": "mixed.h5mu", "storage": "X csr, k csr, n csc, junc_ratio dense, psi_mask csr"})
write(make_mudata("dense", kinds={"mask": "dense"}), "dense.h5mu")
expected["valid_files"].append({"file": "dense.h5mu", "storage": "all dense"})
write(make_mudata("csc", kinds={"ratio": "csc", "mask": "csc"}), "csc.h5mu")
expected["valid_files"].append({"file": "csc.h5mu", "storage": "all csc"})
write(make_mudata("csr", ratio=None, mask=None), "counts_only.h5mu")
expected["valid_files"].append({"file": "counts_only.h5mu", "storage": "csr, no junc_ratio / psi_mask"})


def rewrite_chunked(path, chunk_rows=2):
    """Re-store every matrix dataset chunked and gzip-compressed (as h5py / anndata do when asked)."""
    with h5py.File(path, "r+") as f:
        targets = []

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "fiub" and obj.size > 0 and (
                "layers" in name or name.endswith("/X") or "/X/" in name or "obsm" in name
            ):
                targets.append(name)

        f.visititems(visit)
        for name in targets:
            d = f[name]
            data, attrs = d[()], dict(d.attrs)
            del f[name]
            chunks = (min(3, data.shape[0]),) if data.ndim == 1 else (min(chunk_rows, data.shape[0]), min(3, data.shape[1]))
            nd = f.create_dataset(name, data=data, chunks=chunks, compression="gzip", compression_opts=6, shuffle=True)
            for a, v in attrs.items():
                nd.attrs[a] = v
    return path


write(make_mudata("csr", kinds={"length_norm": "dense", "n": "csc", "mask": "dense"}), "gzip.h5mu")
rewrite_chunked(os.path.join(OUT, "gzip.h5mu"))
expected["valid_files"].append({"file": "gzip.h5mu", "storage": "chunked + gzip datasets (dense, csr, csc)"})

# Fixed-length and ASCII strings (h5py 'S' arrays; older writers).
write(make_mudata("csr"), "fixedstr.h5mu")
with h5py.File(os.path.join(OUT, "fixedstr.h5mu"), "r+") as f:
    for name, dt in [("mod/rna/var/_index", "S"), ("mod/splicing/var/junction_id", "S"), ("mod/rna/obs/_index", "ascii")]:
        vals = [v.decode() if isinstance(v, bytes) else v for v in f[name][()]]
        attrs = dict(f[name].attrs)
        del f[name]
        if dt == "S":
            nd = f.create_dataset(name, data=np.array([v.encode() for v in vals], dtype=f"S{max(map(len, vals))}"))
        else:
            nd = f.create_dataset(name, data=vals, dtype=h5py.string_dtype("ascii"))
        for a, v in attrs.items():
            nd.attrs[a] = v
expected["valid_files"].append({"file": "fixedstr.h5mu", "storage": "fixed-length and ASCII strings"})

# Splicing-only .h5ad (anndata's own gzip compression).
spl_only = ad.AnnData(
    X=sp.csr_matrix(K.astype(np.float32)),
    obs=pd.DataFrame({"batch": pd.Categorical([str(b) for b in batch], categories=list(batch.categories))}, index=cells),
    var=pd.DataFrame({"event_id": event_of, "junction_id": junction_ids, "gene_name": junction_genes}, index=[f"junction_{j}" for j in range(J)]),
)
spl_only.layers["cell_by_junction_matrix"] = sp.csr_matrix(K.astype(np.float32))
spl_only.layers["cell_by_cluster_matrix"] = sp.csc_matrix(N.astype(np.float32))
spl_only.write_h5ad(os.path.join(OUT, "splicing_only.h5ad"), compression="gzip")

# PSI-only .h5ad: no counts, only junc_ratio and psi_mask.
b = ad.AnnData(X=sp.csr_matrix((C, J), dtype=np.float32), obs=pd.DataFrame(index=cells), var=pd.DataFrame({"event_id": event_of}, index=junction_ids))
b.layers["junc_ratio"] = PSI.astype(np.float32)
b.layers["psi_mask"] = sp.csr_matrix(MASK)
b.write_h5ad(os.path.join(OUT, "psi_only.h5ad"))


# Matrix Market directories.
def write_mtx_dir(name, gz):
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)

    def out(fname, text=None, matrix=None):
        p = os.path.join(d, fname)
        if matrix is not None:
            scipy.io.mmwrite(p, matrix)  # writes p (adds .mtx if missing)
        else:
            with open(p, "w") as fh:
                fh.write(text)
        if gz:
            with open(p, "rb") as src, gzip.open(p + ".gz", "wb") as dst:
                dst.write(src.read())
            os.remove(p)

    out("junction_counts.mtx", matrix=sp.coo_matrix(K.astype(np.int64)))
    out("atse_counts.mtx", matrix=sp.coo_matrix(N.astype(np.int64)))
    out("expression.mtx", matrix=sp.coo_matrix(LN.astype(np.int64)))
    out("barcodes.tsv", "".join(c + "\n" for c in cells))
    out("genes.tsv", "".join(f"{g}\tENSG{i:05d}\n" for i, g in enumerate(genes)))
    out("junctions.tsv", "junction_id\tevent_id\tgene_name\n" + "".join(f"{junction_ids[j]}\t{event_of[j]}\t{junction_genes[j]}\n" for j in range(J)))
    rows = ["cell\tbatch\tcell_type\tdonor\tage\tqc\tX_library_size"]
    for i in range(C):
        rows.append(f"{cells[i]}\t{batch[i]}\t{cell_type[i]}\t{donor[i]}\t{float(age[i])!r}\t{float(qc[i])!r}\t{float(LIB[i, 0])!r}")
    out("obs.tsv", "\n".join(rows) + "\n")


write_mtx_dir("mtx_dir", gz=False)
write_mtx_dir("mtx_gz_dir", gz=True)

# ---------------------------------------------------------------------------------------------------
# Broken inputs: one per invariant. Each records what the error must name.
SPL = "mod/splicing/layers/"
KF, NF, RF, MF = SPL + "cell_by_junction_matrix", SPL + "cell_by_cluster_matrix", SPL + "junc_ratio", SPL + "psi_mask"


def broken(case, fname, field, contains, cell=None, feature=None, opts=None):
    expected["broken"][case] = {
        "file": fname,
        "field": field,
        "contains": contains,
        "cell": None if cell is None else [int(cell), cells[cell] if isinstance(cell, (int, np.integer)) else cell],
        "feature": feature,
        "opts": opts or {},
    }


def jfeat(j):
    return ["junction", int(j), junction_ids[j]]


def fmt(v):
    return str(int(v)) if float(v).is_integer() else repr(float(v))


obs_entries = [(i, j) for i in range(C) for j in range(J) if N[i, j] > 0]
unobs_entries = [(i, j) for i in range(C) for j in range(J) if N[i, j] == 0]
multi = [(i, a) for i in range(C) for a in atses if len(members[a]) > 1 and N[i, members[a][0]] > 0]

# k > n
i, j = obs_entries[len(obs_entries) // 2]
k2 = K.copy()
k2[i, j] = N[i, j] + 1
write(make_mudata(k=k2, ratio=None, mask=None), "k_gt_n.h5mu")
broken("k_gt_n", "k_gt_n.h5mu", KF, f"k = {fmt(N[i, j] + 1)} > n = {fmt(N[i, j])}", i, jfeat(j))

# k > 0 with n = 0
i, j = unobs_entries[len(unobs_entries) // 2]
k2 = K.copy()
k2[i, j] = 2
write(make_mudata(k=k2, ratio=None, mask=None), "k_without_n.h5mu")
broken("k_without_n", "k_without_n.h5mu", KF, "k = 2 > 0 but n = 0", i, jfeat(j))

# n differing within an ATSE in a cell (the later junction is the one found to differ)
i, a = multi[0]
n2 = N.copy()
jlast = members[a][-1]
n2[i, jlast] += 1
write(make_mudata(n=n2, ratio=None, mask=None), "n_differs_in_atse.h5mu")
broken("n_differs_in_atse", "n_differs_in_atse.h5mu", NF, f"n = {fmt(n2[i, jlast])} differs from n = {fmt(N[i, jlast])}", i, jfeat(jlast))

# a junction of an observed ATSE without n (n = 0 vs n > 0 in the same ATSE)
i, a = multi[-1]
n2, k2 = N.copy(), K.copy()
j0 = members[a][0]
n2[i, j0] = 0
k2[i, j0] = 0
write(make_mudata(k=k2, n=n2, ratio=None, mask=None), "n_missing_in_atse.h5mu")
broken("n_missing_in_atse", "n_missing_in_atse.h5mu", NF, f"has n = {fmt(N[i, j0])}", i, jfeat(j0))

# negative count
i, j = obs_entries[1]
k2 = K.copy()
k2[i, j] = -1
write(make_mudata(k=k2, ratio=None, mask=None), "negative_count.h5mu")
broken("negative_count", "negative_count.h5mu", KF, "count -1 is negative", i, jfeat(j))

# non-finite counts
i, j = obs_entries[2]
n2 = N.copy()
n2[i, j] = np.nan
write(make_mudata(n=n2, ratio=None, mask=None), "nan_count.h5mu")
broken("nan_count", "nan_count.h5mu", NF, "count NaN is not finite", i, jfeat(j))

x2 = LN.copy()
x2[4, 3] = np.inf
write(make_mudata(X=x2), "inf_expression.h5mu")
broken("inf_expression", "inf_expression.h5mu", "mod/rna/layers/length_norm", "expression count inf is not finite", 4, ["gene", 3, genes[3]], opts={"rna_layer": "length_norm"})

# non-integer counts
i, j = next((i, j) for (i, j) in obs_entries if N[i, j] >= 2)
k2, n2 = K.copy(), N.copy()
k2[i, j] = 0.5
write(make_mudata(k=k2, ratio=None, mask=None), "noninteger_count.h5mu")
broken("noninteger_count", "noninteger_count.h5mu", KF, "count 0.5 is not an integer", i, jfeat(j))

# non-integer expression: an error unless require_integer_expression = false
x2 = LN.copy()
x2[1, 2] = 2.5
write(make_mudata(X=x2), "noninteger_expression.h5mu")
broken("noninteger_expression", "noninteger_expression.h5mu", "mod/rna/layers/length_norm", "expression count 2.5 is not an integer", 1, ["gene", 2, genes[2]], opts={"rna_layer": "length_norm"})
expected["noninteger_expression_value"] = [1, 2, 2.5]

# missing event_id column / missing id of one junction
write(make_mudata(event_ids=None), "no_event_id.h5mu")
broken("no_event_id", "no_event_id.h5mu", "mod/splicing/var/event_id", 'no ATSE id column "event_id"')
ev = pd.Categorical([None if j == 3 else e for j, e in enumerate(event_of)])
write(make_mudata(event_ids=ev), "missing_event_id.h5mu")
broken("missing_event_id", "missing_event_id.h5mu", "mod/splicing/var/event_id", "missing ATSE id", None, jfeat(3))

# cells differing between modalities
swapped = list(cells)
swapped[3], swapped[4] = swapped[4], swapped[3]
write(make_mudata(spl_cells=swapped, lib=False), "cells_differ.h5mu")
expected["broken"]["cells_differ"] = {
    "file": "cells_differ.h5mu",
    "field": "mod/splicing/obs/_index",
    "contains": f"cell name {json.dumps(swapped[3])} differs from {json.dumps(cells[3])}",
    "cell": [3, swapped[3]],
    "feature": None,
    "opts": {},
}

# shape mismatches (tampered with h5py after anndata wrote a valid file)
p = write(make_mudata(ratio=None, mask=None), "shape_layer.h5mu")
with h5py.File(p, "r+") as f:
    f["mod/splicing/layers/cell_by_cluster_matrix"].attrs["shape"] = np.array([C, J - 1])
broken("shape_layer", "shape_layer.h5mu", NF, f"shape {C} × {J - 1} but there are {C} cells and {J} junctions")
p = write(make_mudata(kinds={"length_norm": "dense"}), "shape_expression.h5mu")
with h5py.File(p, "r+") as f:
    d = f["mod/rna/layers/length_norm"]
    data, attrs = d[()], dict(d.attrs)
    del f["mod/rna/layers/length_norm"]
    nd = f.create_dataset("mod/rna/layers/length_norm", data=data[:, :-1])
    for k_, v in attrs.items():
        nd.attrs[k_] = v
broken("shape_expression", "shape_expression.h5mu", "mod/rna/layers/length_norm", f"shape {C} × {G - 1} but there are {C} cells and {G} genes", opts={"rna_layer": "length_norm"})
p = write(make_mudata(), "shape_library_size.h5mu")
with h5py.File(p, "r+") as f:
    del f["obsm/X_library_size"]
    f.create_dataset("obsm/X_library_size", data=LIB[:-1])
broken("shape_library_size", "shape_library_size.h5mu", "obsm/X_library_size", f"{C - 1} size factors for {C} cells")

# missing layers / columns named by flags
broken("missing_rna_layer", "mixed.h5mu", "mod/rna/layers/spliced_norm", 'missing layer "spliced_norm"', opts={"rna_layer": "spliced_norm"})
broken("missing_counts_layer", "mixed.h5mu", SPL + "junction_reads", 'missing layer "junction_reads"', opts={"junc_counts_layer": "junction_reads"})
broken("missing_modality", "mixed.h5mu", "mod/atac", 'no modality "atac"', opts={"splicing_modality": "atac"})
broken("missing_batch_column", "mixed.h5mu", "obs", 'no obs column "mouse.id"', opts={"batch_key": "mouse.id"})
broken("missing_continuous_column", "mixed.h5mu", "obs", 'no obs column "age_numeric"', opts={"continuous_covariate_keys": ["age_numeric"]})
broken("text_continuous_column", "mixed.h5mu", "mod/rna/obs/note", "must be a numeric column", opts={"continuous_covariate_keys": ["note"]})
bc = pd.Categorical(["b1", None, "b1", "b1", "b2", "b2", "b1"], categories=["b2", "b1"])
write(make_mudata(batch_col=bc), "batch_nan.h5mu")
broken("batch_missing_value", "batch_nan.h5mu", "obs/batch", "missing value", 1, opts={"batch_key": "batch"})
p = write(make_mudata(), "library_nan.h5mu")
with h5py.File(p, "r+") as f:
    f["obsm/X_library_size"][6, 0] = np.nan
broken("library_size_nan", "library_nan.h5mu", "obsm/X_library_size", "size factor NaN is not finite", 6)

# junc_ratio / psi_mask disagreeing with the counts
i, j = obs_entries[3]
r2 = PSI.copy()
r2[i, j] += 0.01 if PSI[i, j] < 0.5 else -0.01
write(make_mudata(ratio=r2, mask=None), "junc_ratio_mismatch.h5mu")
broken("junc_ratio_mismatch", "junc_ratio_mismatch.h5mu", RF, "but k / n =", i, jfeat(j))
i, j = unobs_entries[1]
r2 = PSI.copy()
r2[i, j] = 0.5
write(make_mudata(ratio=r2, mask=None), "junc_ratio_unobserved.h5mu")
broken("junc_ratio_unobserved", "junc_ratio_unobserved.h5mu", RF, "junc_ratio = 0.5 but n = 0", i, jfeat(j))
i, j = obs_entries[4]
m2 = MASK.copy()
m2[i, j] = 0
write(make_mudata(ratio=None, mask=m2), "psi_mask_missing.h5mu")
broken("psi_mask_missing", "psi_mask_missing.h5mu", MF, f"psi_mask = 0 but n = {fmt(N[i, j])} > 0", i, jfeat(j))
i, j = unobs_entries[2]
m2 = MASK.copy()
m2[i, j] = 1
write(make_mudata(ratio=None, mask=m2), "psi_mask_extra.h5mu")
broken("psi_mask_extra", "psi_mask_extra.h5mu", MF, "psi_mask = 1 but n = 0", i, jfeat(j))

# anndata < 0.7: obs as one compound dataset
p = os.path.join(OUT, "compound_obs.h5ad")
spl_only.write_h5ad(p)
with h5py.File(p, "r+") as f:
    del f["obs"]
    rec = np.array([(c.encode(), 1.0) for c in cells], dtype=[("index", "S16"), ("x", "f8")])
    f.create_dataset("obs", data=rec)
broken("compound_obs", "compound_obs.h5ad", "obs", "compound dataset")

# Matrix Market: k > n
d = os.path.join(OUT, "mtx_k_gt_n")
shutil.copytree(os.path.join(OUT, "mtx_dir"), d, dirs_exist_ok=True)
i, j = obs_entries[0]
k2 = K.copy()
k2[i, j] = N[i, j] + 3
scipy.io.mmwrite(os.path.join(d, "junction_counts.mtx"), sp.coo_matrix(k2.astype(np.int64)))
broken("mtx_k_gt_n", "mtx_k_gt_n", "junction_counts.mtx", f"k = {fmt(N[i, j] + 3)} > n = {fmt(N[i, j])}", i, jfeat(j))

# ---------------------------------------------------------------------------------------------------
# Large sparse file (20k × 20k junctions): loading must not densify.
if LARGE:
    Cl, Al = 20000, 10000
    Jl = 2 * Al
    lr = np.random.default_rng(1)
    per_cell = 40  # observed ATSEs per cell → 80 observed junctions per cell, 1.6M entries
    rows = np.repeat(np.arange(Cl), per_cell)
    at = np.concatenate([lr.choice(Al, per_cell, replace=False) for _ in range(Cl)])
    tot = lr.integers(1, 30, size=rows.size)
    k0 = lr.binomial(tot, 0.4)
    r = np.concatenate([rows, rows])
    c = np.concatenate([2 * at, 2 * at + 1])
    kl = sp.csr_matrix((np.concatenate([k0, tot - k0]).astype(np.float32), (r, c)), shape=(Cl, Jl))
    nl = sp.csr_matrix((np.concatenate([tot, tot]).astype(np.float32), (r, c)), shape=(Cl, Jl))
    kl.eliminate_zeros()
    lc = [f"c{i}" for i in range(Cl)]
    rna = ad.AnnData(X=sp.random(Cl, 200, density=0.05, format="csr", dtype=np.float32, random_state=2, data_rvs=lambda s: lr.integers(1, 9, s)), obs=pd.DataFrame(index=lc))
    spl = ad.AnnData(X=kl, obs=pd.DataFrame(index=lc), var=pd.DataFrame({"event_id": [f"e{j // 2:05d}" for j in range(Jl)]}, index=[f"j{j}" for j in range(Jl)]))
    spl.layers["cell_by_junction_matrix"] = kl
    spl.layers["cell_by_cluster_matrix"] = nl
    md.MuData({"rna": rna, "splicing": spl}).write(os.path.join(OUT, "large.h5mu"))
    expected["large"] = {"file": "large.h5mu", "cells": Cl, "junctions": Jl, "atses": Al, "observed": int(nl.nnz)}

with open(os.path.join(OUT, "expected.json"), "w") as fh:
    json.dump(expected, fh, indent=1)
print(f"wrote {len(expected['valid_files'])} valid files and {len(expected['broken'])} broken cases to {OUT}")
