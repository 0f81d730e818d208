#!/usr/bin/env python3
"""Write an authors'-style resampled file (RESAMPLED_*_PERCENT_…, model.md §8.4) from a SpliceVI .h5mu, for
tests/cli_e2e.rs: every junction read kept with probability 0.5 (numpy, seed 7), the usual layers holding the
down-sampled counts, PSI and mask, plus junc_ratio_original and cell_by_cluster_matrix_original; a second
file without the latter; and the numbers of truths evaluate must score, computed here with numpy.

Usage: make_resampled_file.py SRC.h5mu OUT.h5mu OUT_WITHOUT_ORIGINAL_COUNTS.h5mu EXPECTED.json
"""

import json, sys, warnings
warnings.filterwarnings("ignore")
import numpy as np, scipy.sparse as sp, mudata as md
try:
    md.set_options(pull_on_update=False)
except Exception:
    pass
src, out, out_nocounts, expected = sys.argv[1:5]
m = md.read_h5mu(src)
s = m.mod["splicing"]
dense = lambda x: np.asarray(x.todense() if sp.issparse(x) else x, dtype=np.float64)
K, N, R = dense(s.layers["cell_by_junction_matrix"]), dense(s.layers["cell_by_cluster_matrix"]), dense(s.layers["junc_ratio"])
ev = np.asarray(s.var["event_id"].astype(str))
# (the toy's ATSE totals are the sums of their junctions' counts, so thinning the junction counts is
# thinning every read)
for a in np.unique(ev):
    assert np.array_equal(K[:, ev == a].sum(1), N[:, np.flatnonzero(ev == a)[0]])
rng = np.random.default_rng(7)
K2 = rng.binomial(K.astype(np.int64), 0.5).astype(np.float64)
N2 = np.zeros_like(N)
for a in np.unique(ev):
    N2[:, ev == a] = K2[:, ev == a].sum(1, keepdims=True)
R2 = np.divide(K2, N2, out=np.zeros_like(K2), where=N2 > 0)
csr = lambda x, t=np.float32: sp.csr_matrix(x.astype(t))
s.layers["cell_by_junction_matrix"] = csr(K2)
s.layers["cell_by_cluster_matrix"] = csr(N2)
s.layers["junc_ratio"] = R2.astype(np.float32)
s.layers["psi_mask"] = csr((N2 > 0).astype(np.uint8), np.uint8)
s.layers["junc_ratio_original"] = csr(R)
s.layers["cell_by_cluster_matrix_original"] = csr(N)
m.write_h5mu(out)
del s.layers["cell_by_cluster_matrix_original"]
m.write_h5mu(out_nocounts)
# The truths the resampled block scores with PSI in (0, 1) and an original ATSE count ≥ 3, per subset;
# and among the junctions of largest population variance of PSI over the cells where PSI > 0, N chosen
# at a gap of the ranking (so no near-tie decides the set).
R32 = R.astype(np.float32).astype(np.float64)
truth = (R32 > 0) & (R32 < 1) & (N >= 3)
still = N2 > 0
var = np.zeros(R.shape[1])
for j in range(R.shape[1]):
    x = R32[R32[:, j] > 0, j]
    if len(x) >= 2:
        var[j] = ((x - x.mean()) ** 2).mean()
order = np.lexsort((np.arange(len(var)), -var))
top = next(t for t in range(20, 60) if var[order[t - 1]] - var[order[t]] > 1e-6 and var[order[t]] > 0)
keep = np.zeros(R.shape[1], bool)
keep[order[:top]] = True
e = {
    "dropped": int((truth & ~still).sum()),
    "observed": int((truth & still).sum()),
    "top": int(top),
    "top_dropped": int((truth & ~still & keep).sum()),
    "top_observed": int((truth & still & keep).sum()),
    # the truths of PSI = 1 the default leaves out (with the count filter)
    "psi_one": int(((R32 == 1) & (N >= 3)).sum()),
    # test_impute on the source file: its observed entries with PSI > 0
    "test_impute": int((R32 > 0).sum()),
}
json.dump(e, open(expected, "w"))
print("ok", e)
