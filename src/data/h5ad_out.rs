//! Writing analysis outputs as AnnData `.h5ad` (what anndata / scanpy open): obs and var tables, `X`
//! (dense, or CSR), dense `obsm` matrices and simple `uns` values. Written to a temporary file and
//! renamed when complete.
//!
//! `X` can be streamed: [`write_h5ad_streaming`] hands the caller an [`XSink`] that takes blocks of
//! rows, so a cells × features matrix of any size is written with memory bounded by one block. Dense
//! blocks are cut into row chunks that are shuffled + deflated in parallel (rayon) and stored with
//! `H5Dwrite_chunk`, exactly what HDF5's own shuffle and deflate filters would produce (HDF5 compresses
//! on one thread only); sparse blocks go through the `CsrAppender` of `h5write`.

use super::h5write::{create_dict, dataframe, dense_array, encoding, uns_value, Compression, CsrAppender, UnsValue};
use super::ObsColumn;
use crate::util::write_atomic;
use anyhow::{bail, Context, Result};
use hdf5::Group;
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
    /// cells × var_names, row-major; None writes no X (or, with `write_h5ad_streaming`, the streamed X).
    pub x: Option<&'a [f32]>,
    pub obsm: Vec<DenseOut<'a>>,
    pub uns: Vec<(String, UnsValue)>,
}

/// Everything but X.
fn write_meta(f: &hdf5::File, out: &H5adOut, c: Compression) -> Result<()> {
    let n = out.obs_names.len();
    for m in &out.obsm {
        anyhow::ensure!(m.rows == n && m.data.len() == m.rows * m.cols, "obsm/{}: {}×{} for {n} cells", m.name, m.rows, m.cols);
    }
    encoding(f, "anndata", "0.1.0")?;
    dataframe(f, "obs", &out.obs_names, &out.obs, c)?;
    dataframe(f, "var", &out.var_names, &out.var, c)?;
    let obsm = create_dict(f, "obsm")?;
    for m in &out.obsm {
        dense_array(&obsm, &m.name, m.data, &[m.rows, m.cols], c)?;
    }
    for g in ["varm", "obsp", "varp", "layers"] {
        create_dict(f, g)?;
    }
    let uns = create_dict(f, "uns")?;
    for (k, v) in &out.uns {
        uns_value(&uns, k, v)?;
    }
    Ok(())
}

pub fn write_h5ad(path: &Path, out: &H5adOut) -> Result<()> {
    let n = out.obs_names.len();
    write_atomic(path, |tmp| {
        let f = crate::data::h5write::create_file(tmp, 0)?;
        let c = Compression::default();
        write_meta(&f, out, c)?;
        if let Some(x) = out.x {
            anyhow::ensure!(x.len() == n * out.var_names.len(), "X: {} values for {n}×{}", x.len(), out.var_names.len());
            dense_array(&f, "X", x, &[n, out.var_names.len()], c)?;
        }
        Ok(())
    })
}

/// How the streamed X is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XLayout {
    /// Dense f32 cells × var_names.
    Dense,
    /// CSR f32; `max_nnz` is an upper bound of the stored entries (picks int32 or int64 indices).
    Csr { max_nnz: u64 },
}

/// f32 elements per dense chunk (about 1 MiB): whole rows, at least one.
const DENSE_CHUNK_ELEMS: usize = 1 << 18;

/// HDF5's shuffle filter (byte k of element i → k·n + i over the chunk's n elements) then zlib, for a
/// chunk of exactly `n` f32 (edge chunks are zero-padded by the caller: HDF5 stores them at full size).
fn encode_chunk(elems: &[f32], level: u8) -> Vec<u8> {
    use std::io::Write;
    let bytes: &[u8] = bytemuck::cast_slice(elems);
    let n = elems.len();
    let mut shuffled = vec![0u8; bytes.len()];
    for (i, e) in bytes.chunks_exact(4).enumerate() {
        for (k, &b) in e.iter().enumerate() {
            shuffled[k * n + i] = b;
        }
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::with_capacity(bytes.len() / 2), flate2::Compression::new(level as u32));
    z.write_all(&shuffled).expect("in-memory zlib");
    z.finish().expect("in-memory zlib")
}

/// A fixed-shape dense 2-D dataset filled by blocks of rows.
struct DenseRows {
    ds: hdf5::Dataset,
    n_cols: usize,
    /// Rows per chunk.
    chunk_rows: usize,
    gzip: Option<u8>,
    /// Rows not yet forming a whole chunk.
    pending: Vec<f32>,
    written: usize,
}

impl DenseRows {
    fn create(parent: &Group, name: &str, n_rows: usize, n_cols: usize, c: Compression) -> Result<Self> {
        let chunk_rows = (DENSE_CHUNK_ELEMS / n_cols.max(1)).clamp(1, n_rows.max(1));
        let mut b = parent.new_dataset::<f32>();
        let chunked = n_rows > 0 && n_cols > 0;
        if chunked {
            b = b.chunk([chunk_rows, n_cols]);
            if let Some(level) = c.gzip_level {
                // The pipeline encode_chunk reproduces; order matters (shuffle first).
                b = b.shuffle().deflate(level);
            }
        }
        let ds = b.shape([n_rows, n_cols]).create(name).with_context(|| format!("creating {name}"))?;
        encoding(&ds, "array", "0.2.0")?;
        Ok(DenseRows { ds, n_cols, chunk_rows, gzip: c.gzip_level, pending: Vec::new(), written: 0 })
    }

    fn n_rows(&self) -> usize {
        self.ds.shape()[0]
    }

    fn push(&mut self, rows: usize, data: &[f32]) -> Result<()> {
        if data.len() != rows * self.n_cols {
            bail!("X block: {} values for {rows} rows × {} columns", data.len(), self.n_cols);
        }
        let total = self.written + self.pending.len() / self.n_cols.max(1) + rows;
        if total > self.n_rows() {
            bail!("X: more rows than the {} cells", self.n_rows());
        }
        if self.n_cols == 0 {
            self.written += rows;
            return Ok(());
        }
        self.pending.extend_from_slice(data);
        let chunk = self.chunk_rows * self.n_cols;
        let whole = self.pending.len() / chunk;
        if whole > 0 {
            self.write_chunks(&self.pending[..whole * chunk])?;
            self.written += whole * self.chunk_rows;
            self.pending.drain(..whole * chunk);
        }
        Ok(())
    }

    /// Encode whole chunks in parallel (shuffle + deflate, or raw bytes without compression) and hand
    /// them to HDF5, starting at row `self.written`.
    fn write_chunks(&self, data: &[f32]) -> Result<()> {
        use rayon::prelude::*;
        let chunk = self.chunk_rows * self.n_cols;
        let gzip = self.gzip;
        let encoded: Vec<Vec<u8>> = data
            .par_chunks(chunk)
            .map(|c| {
                let mut padded;
                let full = if c.len() == chunk {
                    c
                } else {
                    padded = c.to_vec();
                    padded.resize(chunk, 0.0);
                    &padded[..]
                };
                match gzip {
                    Some(level) => encode_chunk(full, level),
                    None => bytemuck::cast_slice(full).to_vec(),
                }
            })
            .collect();
        let id = self.ds.id();
        for (i, e) in encoded.iter().enumerate() {
            let offset: [u64; 2] = [(self.written + i * self.chunk_rows) as u64, 0];
            // Under the hdf5 crate's global lock: the C library is not thread-safe.
            let rc = hdf5::sync::sync(|| unsafe {
                hdf5_sys::h5d::H5Dwrite_chunk(id, hdf5_sys::h5p::H5P_DEFAULT, 0, offset.as_ptr(), e.len(), e.as_ptr() as *const std::ffi::c_void)
            });
            if rc < 0 {
                // (an I/O error: the write itself failed, e.g. on a full disk)
                return Err(std::io::Error::other(format!("H5Dwrite_chunk failed for {} at row {}", self.ds.name(), offset[0])).into());
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        if !self.pending.is_empty() {
            let rows = self.pending.len() / self.n_cols;
            let pending = std::mem::take(&mut self.pending);
            self.write_chunks(&pending)?;
            self.written += rows;
        }
        if self.written != self.n_rows() {
            bail!("X: {} rows written for {} cells", self.written, self.n_rows());
        }
        Ok(())
    }
}

enum Sink {
    Dense(DenseRows),
    Csr(CsrAppender<f32>),
}

/// Receives X block by block (rows in order).
pub struct XSink {
    sink: Sink,
    n_rows: usize,
    n_cols: usize,
    rows: usize,
}

impl XSink {
    pub fn n_cols(&self) -> usize {
        self.n_cols
    }

    /// Append `rows` dense rows (row-major, `rows × n_cols` values). Dense layout only.
    pub fn push_dense(&mut self, rows: usize, data: &[f32]) -> Result<()> {
        match &mut self.sink {
            Sink::Dense(d) => d.push(rows, data)?,
            Sink::Csr(_) => bail!("X is sparse: push_csr, not push_dense"),
        }
        self.rows += rows;
        Ok(())
    }

    /// Append CSR rows (`indptr` has rows + 1 offsets into `indices` / `values`). CSR layout only.
    pub fn push_csr(&mut self, indptr: &[usize], indices: &[u32], values: &[f32]) -> Result<()> {
        let rows = indptr.len().saturating_sub(1);
        if self.rows + rows > self.n_rows {
            bail!("X: more rows than the {} cells", self.n_rows);
        }
        match &mut self.sink {
            Sink::Csr(a) => a.append(indptr, indices, values)?,
            Sink::Dense(_) => bail!("X is dense: push_dense, not push_csr"),
        }
        self.rows += rows;
        Ok(())
    }

    fn finish(self) -> Result<()> {
        if self.rows != self.n_rows {
            bail!("X: {} rows written for {} cells", self.rows, self.n_rows);
        }
        match self.sink {
            Sink::Dense(d) => d.finish(),
            Sink::Csr(a) => a.finish(),
        }
    }
}

/// Write an .h5ad whose X (cells × `out.var_names`) is produced block by block by `fill`; `out.x` must
/// be None. The file appears at `path` only when `fill` succeeded and every row was written.
pub fn write_h5ad_streaming<F>(path: &Path, out: &H5adOut, layout: XLayout, c: Compression, fill: F) -> Result<()>
where
    F: FnOnce(&mut XSink) -> Result<()>,
{
    anyhow::ensure!(out.x.is_none(), "write_h5ad_streaming: X comes from the sink, not H5adOut::x");
    let (n, m) = (out.obs_names.len(), out.var_names.len());
    write_atomic(path, |tmp| {
        let f = crate::data::h5write::create_file(tmp, 0)?;
        write_meta(&f, out, c)?;
        let sink = match layout {
            XLayout::Dense => Sink::Dense(DenseRows::create(&f, "X", n, m, c)?),
            XLayout::Csr { max_nnz } => Sink::Csr(CsrAppender::create(&f, "X", m, max_nnz, c)?),
        };
        let mut x = XSink { sink, n_rows: n, n_cols: m, rows: 0 };
        fill(&mut x)?;
        x.finish()
    })
}
