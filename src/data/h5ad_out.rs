//! Writing analysis outputs as AnnData `.h5ad` (what anndata / scanpy open): obs and var tables, an
//! optional dense `X`, dense `obsm` matrices and simple `uns` values. Written to a temporary file and
//! renamed when complete.

use super::h5write::{create_dict, dataframe, dense_array, encoding, uns_value, Compression, UnsValue};
use super::ObsColumn;
use crate::util::write_atomic;
use anyhow::{Context, Result};
use std::path::Path;

/// A row-major dense matrix to store.
pub struct DenseOut<'a> {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [f32],
}

#[derive(Default)]
pub struct H5adOut<'a> {
    pub obs_names: Vec<String>,
    pub obs: Vec<(String, ObsColumn)>,
    pub var_names: Vec<String>,
    pub var: Vec<(String, ObsColumn)>,
    /// cells × var_names, row-major; None writes no X.
    pub x: Option<&'a [f32]>,
    pub obsm: Vec<DenseOut<'a>>,
    pub uns: Vec<(String, UnsValue)>,
}

pub fn write_h5ad(path: &Path, out: &H5adOut) -> Result<()> {
    let n = out.obs_names.len();
    for m in &out.obsm {
        anyhow::ensure!(m.rows == n && m.data.len() == m.rows * m.cols, "obsm/{}: {}×{} for {n} cells", m.name, m.rows, m.cols);
    }
    write_atomic(path, |tmp| {
        let f = hdf5::File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
        encoding(&f, "anndata", "0.1.0")?;
        let c = Compression::default();
        dataframe(&f, "obs", &out.obs_names, &out.obs, c)?;
        dataframe(&f, "var", &out.var_names, &out.var, c)?;
        if let Some(x) = out.x {
            anyhow::ensure!(x.len() == n * out.var_names.len(), "X: {} values for {n}×{}", x.len(), out.var_names.len());
            dense_array(&f, "X", x, &[n, out.var_names.len()], c)?;
        }
        let obsm = create_dict(&f, "obsm")?;
        for m in &out.obsm {
            dense_array(&obsm, &m.name, m.data, &[m.rows, m.cols], c)?;
        }
        for g in ["varm", "obsp", "varp", "layers"] {
            create_dict(&f, g)?;
        }
        let uns = create_dict(&f, "uns")?;
        for (k, v) in &out.uns {
            uns_value(&uns, k, v)?;
        }
        Ok(())
    })
}
