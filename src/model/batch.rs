//! A minibatch as the model consumes it: expression rows (CSR), library sizes, covariates, and the
//! observed splicing entries (junction, k, n, psi) per cell in CSR order. Nothing is B × J dense.

use crate::data::{Csr, Dataset};
use anyhow::{bail, Result};

/// Observed splicing entries of the cells of a minibatch, CSR by cell, junctions ascending in a cell.
#[derive(Clone, Debug, Default)]
pub struct SplBatch {
    pub n_junctions: usize,
    pub indptr: Vec<usize>,
    pub junction: Vec<u32>,
    pub k: Vec<f32>,
    pub n: Vec<f32>,
    pub psi: Vec<f32>,
}

impl SplBatch {
    pub fn nnz(&self) -> usize {
        self.junction.len()
    }
    pub fn n_cells(&self) -> usize {
        self.indptr.len().saturating_sub(1)
    }
    pub fn cell_range(&self, c: usize) -> std::ops::Range<usize> {
        self.indptr[c]..self.indptr[c + 1]
    }
}

#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// Expression input (B × G), integer-valued counts.
    pub expr: Csr<f32>,
    /// Size factor s_i (library = log(s_i + 1e-6)).
    pub library: Vec<f32>,
    pub batch: Vec<u32>,
    pub labels: Vec<u32>,
    /// Extra categorical covariates: `cats[k][i]` is cell i's level of covariate k.
    pub cats: Vec<Vec<u32>>,
    /// Continuous covariates, B × n_cont row-major.
    pub cont: Vec<f32>,
    pub n_cont: usize,
    /// Row of the per-cell weight table (`modality_weights = cell`) of each cell; u32::MAX for a cell
    /// not seen in training, which reads the mean learned row (§14.2). None: no cell was seen.
    pub cell_idx: Option<Vec<u32>>,
    pub spl: SplBatch,
}

impl Batch {
    pub fn n_cells(&self) -> usize {
        self.expr.n_rows
    }

    /// Gather cells `cells` of a dataset. `with_cell_idx`: use dataset row numbers as `cell_idx`
    /// (training data); false for cells the per-cell weight table has never seen.
    pub fn from_dataset(ds: &Dataset, cells: &[usize], with_cell_idx: bool) -> Result<Batch> {
        let Some(x) = &ds.expression else {
            bail!("{}: the model needs an expression modality", ds.source);
        };
        let s = &ds.splicing;
        // Sized up front: growing them entry by entry would copy each several times.
        let x_nnz: usize = cells.iter().map(|&c| x.indptr[c + 1] - x.indptr[c]).sum();
        let s_nnz: usize = cells.iter().map(|&c| s.cell_range(c).len()).sum();
        let mut indptr = Vec::with_capacity(cells.len() + 1);
        indptr.push(0);
        let mut expr = Csr {
            n_rows: cells.len(),
            n_cols: x.n_cols,
            indptr: indptr.clone(),
            indices: Vec::with_capacity(x_nnz),
            values: Vec::with_capacity(x_nnz),
        };
        let mut spl = SplBatch {
            n_junctions: s.n_junctions,
            indptr,
            junction: Vec::with_capacity(s_nnz),
            k: Vec::with_capacity(s_nnz),
            n: Vec::with_capacity(s_nnz),
            psi: Vec::with_capacity(s_nnz),
        };
        for &c in cells {
            let (idx, val) = x.row(c);
            expr.indices.extend_from_slice(idx);
            expr.values.extend_from_slice(val);
            expr.indptr.push(expr.indices.len());
            let r = s.cell_range(c);
            spl.junction.extend_from_slice(&s.junction[r.clone()]);
            spl.k.extend_from_slice(&s.k[r.clone()]);
            spl.n.extend_from_slice(&s.n[r.clone()]);
            spl.psi.extend_from_slice(&s.psi[r]);
            spl.indptr.push(spl.junction.len());
        }
        Ok(Batch { expr, spl, ..Batch::cells_only(ds, cells, with_cell_idx)? })
    }

    /// Cells `cells` of a dataset without their counts: the covariates, library sizes and `cell_idx`,
    /// with empty expression and splicing rows (a minibatch whose entries are gathered on the device from
    /// the resident dataset, or one the decoders alone read).
    pub fn cells_only(ds: &Dataset, cells: &[usize], with_cell_idx: bool) -> Result<Batch> {
        let Some(x) = &ds.expression else {
            bail!("{}: the model needs an expression modality", ds.source);
        };
        let b = cells.len();
        let expr = Csr { n_rows: b, n_cols: x.n_cols, indptr: vec![0; b + 1], indices: Vec::new(), values: Vec::new() };
        let spl = SplBatch { n_junctions: ds.splicing.n_junctions, indptr: vec![0; b + 1], ..Default::default() };
        let cov = &ds.covariates;
        let pick = |codes: &[u32]| -> Vec<u32> {
            if codes.is_empty() {
                vec![0; cells.len()]
            } else {
                cells.iter().map(|&c| codes[c]).collect()
            }
        };
        let n_cont = cov.continuous_names.len();
        let mut cont = Vec::with_capacity(cells.len() * n_cont);
        for &c in cells {
            cont.extend_from_slice(&cov.continuous[c * n_cont..(c + 1) * n_cont]);
        }
        Ok(Batch {
            expr,
            library: cells.iter().map(|&c| ds.library_size[c]).collect(),
            batch: pick(&cov.batch.codes),
            labels: pick(&cov.labels.codes),
            cats: cov.categorical.iter().map(|k| pick(&k.codes)).collect(),
            cont,
            n_cont,
            cell_idx: with_cell_idx.then(|| cells.iter().map(|&c| c as u32).collect()),
            spl,
        })
    }

    /// Shape checks against the model's dimensions.
    pub fn check(&self, g: usize, j: usize) -> Result<()> {
        let b = self.n_cells();
        if self.expr.n_cols != g {
            bail!("batch: expression has {} genes, the model {g}", self.expr.n_cols);
        }
        if self.spl.n_junctions != j {
            bail!("batch: splicing has {} junctions, the model {j}", self.spl.n_junctions);
        }
        if self.library.len() != b || self.batch.len() != b || self.labels.len() != b || self.spl.n_cells() != b {
            bail!("batch: inconsistent number of cells across fields ({b} expression rows)");
        }
        if self.cont.len() != b * self.n_cont {
            bail!("batch: continuous covariates have {} values for {b} cells × {}", self.cont.len(), self.n_cont);
        }
        if let Some(ci) = &self.cell_idx {
            if ci.len() != b {
                bail!("batch: cell_idx has {} values for {b} cells", ci.len());
            }
        }
        for c in 0..b {
            let r = self.spl.cell_range(c);
            let js = &self.spl.junction[r.clone()];
            if js.windows(2).any(|w| w[0] >= w[1]) {
                bail!("batch: splicing entries of cell {c} are not in ascending junction order");
            }
            if let Some(&bad) = js.iter().find(|&&x| x as usize >= j) {
                bail!("batch: cell {c} has junction index {bad} ≥ {j}");
            }
        }
        Ok(())
    }
}
