//! Writing AnnData / MuData-compatible HDF5 (`.h5mu`) in the SpliceVI layout (model.md §1.1).
//!
//! Encoding follows the anndata on-disk specification (what `anndata.write_h5ad` / `mudata.write_h5mu`
//! produce): every element carries `encoding-type` / `encoding-version` attributes; dataframes have
//! `_index` and `column-order`; categoricals are groups of `categories` + `codes`; sparse matrices are
//! `csr_matrix` groups of `data`, `indices`, `indptr` with a `shape` attribute. Strings are variable-length
//! UTF-8 (h5py reads them back as `str`, which anndata requires for the encoding attributes).
//!
//! Sparse matrices are written through [`CsrAppender`]: rows are appended to chunked, resizable, compressed
//! datasets and only whole chunks are handed to HDF5 (each chunk is compressed exactly once), so a file of
//! any size is written with memory bounded by one block of rows.
//!
//! Layout written by [`SpliceviWriter`]:
//! ```text
//! /                       MuData attrs, 512-byte userblock "MuData (format-version=0.1.0;…)"
//! /obs /var /obsm/X_library_size /varm /obsp /varp /uns
//! /mod/rna                X (csr f32) = layers/length_norm (hard link), obs, var, obsm/X_library_size
//! /mod/splicing           layers/{cell_by_junction_matrix (k), cell_by_cluster_matrix (n), junc_ratio,
//!                         psi_mask (u8)}, X = cell_by_junction_matrix (hard link), obs, var, varm
//! ```

use std::path::Path;

use anyhow::{bail, Context, Result};
use hdf5::types::VarLenUnicode;
use hdf5::{Group, H5Type, Location};

use super::dataset::{CatStore, Dataset, FloatWidth, IntColumn, IntWidth, ObsColumn};

/// Elements per chunk of the 1-D sparse datasets.
const CHUNK: usize = 1 << 18;
/// Fixed-size arrays above this many elements are chunked and compressed.
const COMPRESS_MIN: usize = 1 << 16;

pub const MUDATA_FORMAT_VERSION: &str = "0.1.0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compression {
    /// gzip level 1–9; None = uncompressed (still chunked where resizable).
    pub gzip_level: Option<u8>,
}

impl Default for Compression {
    /// gzip 1: on the medium dataset ~30% larger than level 4 for ~1/4 of the compression CPU time;
    /// reading speed is about the same.
    fn default() -> Self {
        Compression { gzip_level: Some(1) }
    }
}

/// One block of consecutive cells, as the simulator produces them. `*_indptr` start at 0 and have one
/// entry per cell plus one; splicing entries are the observed (cell, junction) pairs with k, n, psi.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CellBlock {
    pub expr_indptr: Vec<usize>,
    pub expr_indices: Vec<u32>,
    pub expr_values: Vec<f32>,
    pub library_size: Vec<f32>,
    pub spl_indptr: Vec<usize>,
    pub spl_junction: Vec<u32>,
    pub k: Vec<f32>,
    pub n: Vec<f32>,
    pub psi: Vec<f32>,
    /// Simulation ground truth per cell (empty when writing a loaded Dataset).
    pub subtype: Vec<u32>,
    pub batch: Vec<u32>,
}

impl CellBlock {
    pub fn with_capacity(cells: usize) -> Self {
        let mut b = CellBlock::default();
        b.expr_indptr.reserve(cells + 1);
        b.expr_indptr.push(0);
        b.spl_indptr.reserve(cells + 1);
        b.spl_indptr.push(0);
        b
    }
    pub fn n_cells(&self) -> usize {
        self.spl_indptr.len() - 1
    }
}

/// A var table: index, columns, and varm matrices (name, row-major values, number of columns).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VarTable {
    pub names: Vec<String>,
    pub columns: Vec<(String, ObsColumn)>,
    pub varm: Vec<(String, Vec<f32>, usize)>,
}

/// Values for `uns`.
#[derive(Clone, Debug, PartialEq)]
pub enum UnsValue {
    String(String),
    Strings(Vec<String>),
    Int(i64),
    Float(f64),
    Dict(Vec<(String, UnsValue)>),
}

/// Everything written after the last cell.
pub struct FileMeta {
    pub cell_names: Vec<String>,
    pub obs: Vec<(String, ObsColumn)>,
    pub library_size: Vec<f32>,
    /// None: no expression modality (splicing-only file).
    pub rna: Option<VarTable>,
    pub splicing: VarTable,
    pub uns: Vec<(String, UnsValue)>,
}

// ------------------------------------------------------------------------------------------------
// Elementary anndata encodings

fn vlu(s: &str) -> Result<VarLenUnicode> {
    s.parse::<VarLenUnicode>().map_err(|e| anyhow::anyhow!("string {s:?} cannot be stored in HDF5: {e}"))
}

fn vlu_vec(v: &[String]) -> Result<Vec<VarLenUnicode>> {
    v.iter().map(|s| vlu(s)).collect()
}

pub fn str_attr(loc: &Location, name: &str, value: &str) -> Result<()> {
    loc.new_attr::<VarLenUnicode>()
        .shape(())
        .create(name)
        .with_context(|| format!("attribute {name}"))?
        .write_scalar(&vlu(value)?)?;
    Ok(())
}

pub fn str_array_attr(loc: &Location, name: &str, values: &[String]) -> Result<()> {
    let v = vlu_vec(values)?;
    let a = loc.new_attr::<VarLenUnicode>().shape(v.len()).create(name)?;
    if !v.is_empty() {
        a.write(&v)?;
    }
    Ok(())
}

pub fn encoding(loc: &Location, ty: &str, version: &str) -> Result<()> {
    str_attr(loc, "encoding-type", ty)?;
    str_attr(loc, "encoding-version", version)
}

/// A new group without creation and modification times, so that the same data writes the same bytes
/// (HDF5 stamps groups by default; datasets are already untracked by hdf5-metno, as in h5py).
pub fn new_group(parent: &Group, name: &str) -> Result<Group> {
    Ok(parent.create_group_builder().obj_track_times(false).create(name)?)
}

/// A new HDF5 file whose root group carries no times (see `new_group`); `userblock`: bytes reserved
/// before the HDF5 superblock (0 for none).
pub fn create_file(path: &Path, userblock: u64) -> Result<hdf5::File> {
    hdf5::File::with_options()
        .with_fcpl(|p| p.userblock(userblock).obj_track_times(false))
        .create(path)
        .with_context(|| format!("creating HDF5 file {}", path.display()))
}

pub fn create_dict(parent: &Group, name: &str) -> Result<Group> {
    let g = new_group(parent, name).with_context(|| format!("creating group {name}"))?;
    encoding(&g, "dict", "0.1.0")?;
    Ok(g)
}

pub fn string_array(parent: &Group, name: &str, values: &[String]) -> Result<()> {
    let v = vlu_vec(values)?;
    let ds = parent.new_dataset::<VarLenUnicode>().shape(v.len()).create(name)?;
    if !v.is_empty() {
        ds.write(&v)?;
    }
    encoding(&ds, "string-array", "0.2.0")
}

/// Dense array (any shape) with `encoding-type: array`; large ones are chunked + compressed.
pub fn dense_array<T: H5Type>(parent: &Group, name: &str, data: &[T], shape: &[usize], c: Compression) -> Result<()> {
    let total: usize = shape.iter().product();
    if total != data.len() {
        bail!("array {name}: {} values for shape {shape:?}", data.len());
    }
    let mut b = parent.new_dataset::<T>();
    if total >= COMPRESS_MIN {
        if let Some(level) = c.gzip_level {
            let rows = (CHUNK / shape[1..].iter().product::<usize>().max(1)).clamp(1, shape[0]);
            let mut chunk = shape.to_vec();
            chunk[0] = rows;
            b = b.chunk(chunk).shuffle().deflate(level);
        }
    }
    let ds = b.shape(shape.to_vec()).create(name).with_context(|| format!("creating {name}"))?;
    if total > 0 {
        ds.write_raw(data)?;
    }
    encoding(&ds, "array", "0.2.0")
}

fn scalar<T: H5Type>(parent: &Group, name: &str, v: &T) -> Result<()> {
    let ds = parent.new_dataset::<T>().shape(()).create(name)?;
    ds.write_scalar(v)?;
    encoding(&ds, "numeric-scalar", "0.2.0")
}

fn string_scalar(parent: &Group, name: &str, v: &str) -> Result<()> {
    let ds = parent.new_dataset::<VarLenUnicode>().shape(()).create(name)?;
    ds.write_scalar(&vlu(v)?)?;
    encoding(&ds, "string", "0.2.0")
}

pub fn uns_value(parent: &Group, name: &str, v: &UnsValue) -> Result<()> {
    match v {
        UnsValue::String(s) => string_scalar(parent, name, s),
        UnsValue::Strings(s) => string_array(parent, name, s),
        UnsValue::Int(i) => scalar(parent, name, i),
        UnsValue::Float(f) => scalar(parent, name, f),
        UnsValue::Dict(items) => {
            let g = create_dict(parent, name)?;
            for (k, v) in items {
                uns_value(&g, k, v)?;
            }
            Ok(())
        }
    }
}

/// A dataframe column in the anndata encoding.
pub fn column(parent: &Group, name: &str, col: &ObsColumn, c: Compression) -> Result<()> {
    match col {
        ObsColumn::Categorical { codes, categories, store: CatStore::NullableBool, .. } => {
            // pandas `boolean`, as anndata writes it: values and a mask of the missing ones.
            let mut values = Vec::with_capacity(codes.len());
            for &x in codes {
                values.push(match categories.get(x.max(0) as usize).map(String::as_str) {
                    _ if x < 0 => false,
                    Some("True") => true,
                    Some("False") => false,
                    other => bail!("boolean column {name}: category {other:?} is neither True nor False"),
                });
            }
            let mask: Vec<bool> = codes.iter().map(|&x| x < 0).collect();
            let g = new_group(parent, name)?;
            encoding(&g, "nullable-boolean", "0.1.0")?;
            dense_array(&g, "values", &values, &[values.len()], c)?;
            dense_array(&g, "mask", &mask, &[mask.len()], c)
        }
        ObsColumn::Categorical { codes, categories, int_categories, store } => {
            let g = new_group(parent, name)?;
            encoding(&g, "categorical", "0.2.0")?;
            g.new_attr::<bool>().shape(()).create("ordered")?.write_scalar(&(*store == CatStore::Ordered))?;
            match int_categories {
                Some(width) => {
                    let v = categories.iter().map(|s| s.parse::<i128>().map_err(|_| anyhow::anyhow!("categorical column {name}: category {s:?} is not an integer"))).collect::<Result<Vec<i128>>>()?;
                    int_array(&g, "categories", &v, *width, c)?;
                }
                None => string_array(&g, "categories", categories)?,
            }
            if let Some(&bad) = codes.iter().find(|&&x| x < -1 || x >= categories.len() as i32) {
                bail!("categorical column {name}: code {bad} outside 0..{}", categories.len());
            }
            // anndata uses the smallest signed integer type holding the codes.
            if categories.len() < i8::MAX as usize {
                let v: Vec<i8> = codes.iter().map(|&x| x as i8).collect();
                dense_array(&g, "codes", &v, &[v.len()], c)
            } else if categories.len() < i16::MAX as usize {
                let v: Vec<i16> = codes.iter().map(|&x| x as i16).collect();
                dense_array(&g, "codes", &v, &[v.len()], c)
            } else {
                dense_array(&g, "codes", codes, &[codes.len()], c)
            }
        }
        ObsColumn::Numeric(v, FloatWidth::F64) => dense_array(parent, name, v, &[v.len()], c),
        ObsColumn::Numeric(v, FloatWidth::F32) => {
            // (read from float32: every value is exact there)
            let v32: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            dense_array(parent, name, &v32, &[v32.len()], c)
        }
        ObsColumn::Int(ints) => int_column(parent, name, ints, c),
        ObsColumn::Bool(v) => dense_array(parent, name, v, &[v.len()], c),
        ObsColumn::Text(v) => string_array(parent, name, v),
    }
}

/// An integer column with the type it was read with; a nullable one as anndata writes a pandas
/// `Int64` (…) column: a `nullable-integer` group of `values` and `mask`.
fn int_column(parent: &Group, name: &str, col: &IntColumn, c: Compression) -> Result<()> {
    let Some(mask) = &col.mask else {
        return int_array(parent, name, &col.values, col.width, c);
    };
    let g = new_group(parent, name)?;
    encoding(&g, "nullable-integer", "0.1.0")?;
    int_array(&g, "values", &col.values, col.width, c)?;
    dense_array(&g, "mask", mask, &[mask.len()], c)
}

fn int_array(parent: &Group, name: &str, v: &[i128], width: IntWidth, c: Compression) -> Result<()> {
    fn narrow<T: H5Type + TryFrom<i128>>(parent: &Group, name: &str, v: &[i128], c: Compression) -> Result<()> {
        let w = v
            .iter()
            .map(|&x| T::try_from(x).map_err(|_| anyhow::anyhow!("{name}: value {x} does not fit its stored type {}", std::any::type_name::<T>())))
            .collect::<Result<Vec<T>>>()?;
        dense_array(parent, name, &w, &[w.len()], c)
    }
    match width {
        IntWidth::I8 => narrow::<i8>(parent, name, v, c),
        IntWidth::I16 => narrow::<i16>(parent, name, v, c),
        IntWidth::I32 => narrow::<i32>(parent, name, v, c),
        IntWidth::I64 => narrow::<i64>(parent, name, v, c),
        IntWidth::U8 => narrow::<u8>(parent, name, v, c),
        IntWidth::U16 => narrow::<u16>(parent, name, v, c),
        IntWidth::U32 => narrow::<u32>(parent, name, v, c),
        IntWidth::U64 => narrow::<u64>(parent, name, v, c),
    }
}

pub fn dataframe(
    parent: &Group,
    name: &str,
    index: &[String],
    columns: &[(String, ObsColumn)],
    c: Compression,
) -> Result<()> {
    let g = new_group(parent, name).with_context(|| format!("creating dataframe {name}"))?;
    encoding(&g, "dataframe", "0.2.0")?;
    str_attr(&g, "_index", "_index")?;
    let names: Vec<String> = columns.iter().map(|(n, _)| n.clone()).collect();
    str_array_attr(&g, "column-order", &names)?;
    string_array(&g, "_index", index)?;
    for (n, col) in columns {
        if n == "_index" {
            bail!("dataframe {name}: a column may not be called _index");
        }
        if col.len() != index.len() {
            bail!("dataframe {name}: column {n} has {} rows, the index {}", col.len(), index.len());
        }
        column(&g, n, col, c).with_context(|| format!("dataframe {name}, column {n}"))?;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Streaming 1-D datasets and CSR matrices

/// A chunked, resizable 1-D dataset that is appended to. Values are buffered and handed over in whole
/// chunks, [`FLUSH_CHUNKS`] at a time. With compression the chunks are shuffled + deflated in parallel
/// (rayon) exactly as HDF5's shuffle and deflate filters would, and stored with `H5Dwrite_chunk`: HDF5
/// compresses on one thread only, which would otherwise bound the write speed of big files. The file is
/// indistinguishable from one HDF5 compressed itself (same filter pipeline in the dataset header).
///
/// The dataset is created at the first flush. One whose values all fit in the buffer is created at
/// [`Appender::finish`], at its size: contiguous when uncompressed, else with one chunk of its size,
/// since HDF5 stores every chunk whole (an uncompressed dataset of a few values in a chunk of
/// [`CHUNK`] would take 1 MiB of the file).
pub struct Appender<T: H5Type + bytemuck::Pod> {
    parent: Group,
    name: String,
    ds: Option<hdf5::Dataset>,
    buf: Vec<T>,
    written: usize,
    gzip: Option<u8>,
    /// Elements per chunk ([`CHUNK`], or less for a dataset created at its size).
    chunk: usize,
}

/// Chunks compressed per parallel batch.
const FLUSH_CHUNKS: usize = 8;

/// HDF5's shuffle filter (byte k of element i → position k·n + i over the whole chunk of n = `chunk`
/// elements), then zlib (the deflate filter's format). `elems` shorter than a chunk is zero-padded:
/// HDF5 stores edge chunks at full size.
fn encode_chunk<T: bytemuck::Pod>(elems: &[T], chunk: usize, level: u8) -> Vec<u8> {
    use std::io::Write;
    let size = std::mem::size_of::<T>();
    let bytes: &[u8] = bytemuck::cast_slice(elems);
    let mut shuffled = vec![0u8; chunk * size];
    if size == 1 {
        shuffled[..bytes.len()].copy_from_slice(bytes);
    } else {
        for (i, e) in bytes.chunks_exact(size).enumerate() {
            for (k, &b) in e.iter().enumerate() {
                shuffled[k * chunk + i] = b;
            }
        }
    }
    let mut z =
        flate2::write::ZlibEncoder::new(Vec::with_capacity(shuffled.len() / 4), flate2::Compression::new(level as u32));
    z.write_all(&shuffled).expect("in-memory zlib");
    z.finish().expect("in-memory zlib")
}

impl<T: H5Type + bytemuck::Pod + Send + Sync> Appender<T> {
    pub fn create(parent: &Group, name: &str, c: Compression) -> Result<Self> {
        Ok(Appender {
            parent: parent.clone(),
            name: name.to_string(),
            ds: None,
            buf: Vec::with_capacity(FLUSH_CHUNKS * CHUNK),
            written: 0,
            gzip: c.gzip_level,
            chunk: CHUNK,
        })
    }

    /// The chunked, resizable dataset, created empty with chunks of `self.chunk`.
    fn create_resizable(&self) -> Result<hdf5::Dataset> {
        let mut b = self.parent.new_dataset::<T>().chunk(self.chunk);
        if let Some(level) = self.gzip {
            // The pipeline encode_chunk reproduces; order matters (shuffle first).
            b = b.shuffle().deflate(level);
        }
        b.shape(hdf5::SimpleExtents::resizable([0]))
            .create(self.name.as_str())
            .with_context(|| format!("creating resizable dataset {}", self.name))
    }

    pub fn len(&self) -> usize {
        self.written + self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push_slice(&mut self, v: &[T]) -> Result<()> {
        let mut v = v;
        while !v.is_empty() {
            let take = (FLUSH_CHUNKS * CHUNK - self.buf.len()).min(v.len());
            self.buf.extend_from_slice(&v[..take]);
            v = &v[take..];
            if self.buf.len() == FLUSH_CHUNKS * CHUNK {
                self.flush()?;
            }
        }
        Ok(())
    }

    pub fn push_iter(&mut self, it: impl Iterator<Item = T>) -> Result<()> {
        for x in it {
            self.buf.push(x);
            if self.buf.len() == FLUSH_CHUNKS * CHUNK {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Write the buffer (whole chunks, except at `finish`), starting at a chunk boundary.
    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.ds.is_none() {
            self.ds = Some(self.create_resizable()?);
        }
        let ds = self.ds.as_ref().expect("created above");
        let chunk = self.chunk;
        debug_assert_eq!(self.written % chunk, 0);
        let end = self.written + self.buf.len();
        ds.resize([end])?;
        match self.gzip {
            None => ds.write_slice(&self.buf[..], self.written..end)?,
            Some(level) => {
                use rayon::prelude::*;
                let encoded: Vec<Vec<u8>> = self.buf.par_chunks(chunk).map(|c| encode_chunk(c, chunk, level)).collect();
                let id = ds.id();
                for (i, e) in encoded.iter().enumerate() {
                    let offset: [u64; 1] = [(self.written + i * chunk) as u64];
                    // Under the hdf5 crate's global lock: the C library is not thread-safe.
                    let rc = hdf5::sync::sync(|| unsafe {
                        hdf5_sys::h5d::H5Dwrite_chunk(
                            id,
                            hdf5_sys::h5p::H5P_DEFAULT,
                            0,
                            offset.as_ptr(),
                            e.len(),
                            e.as_ptr() as *const std::ffi::c_void,
                        )
                    });
                    if rc < 0 {
                        // (a write failure, as an I/O error: `write_atomic` then says "writing PATH")
                        return Err(std::io::Error::other(format!("H5Dwrite_chunk failed for {} at element {}", ds.name(), offset[0])).into());
                    }
                }
            }
        }
        self.written = end;
        self.buf.clear();
        Ok(())
    }

    pub fn finish(mut self) -> Result<hdf5::Dataset> {
        if self.ds.is_none() {
            // Every value is in the buffer: the dataset gets its size.
            let n = self.buf.len();
            if self.gzip.is_none() && n > 0 {
                let ds = self
                    .parent
                    .new_dataset::<T>()
                    .shape([n])
                    .create(self.name.as_str())
                    .with_context(|| format!("creating dataset {}", self.name))?;
                ds.write_raw(&self.buf[..])?;
                return Ok(ds);
            }
            self.chunk = n.clamp(1, CHUNK);
        }
        self.flush()?;
        match self.ds {
            Some(ds) => Ok(ds),
            // nothing was appended: an empty dataset
            None => self.create_resizable(),
        }
    }
}

/// Index arrays of a CSR group. scipy expects `indices` and `indptr` of ONE dtype (mixed int32/int64
/// matrices break e.g. `tocoo`), so the width is fixed up front from an upper bound of the nnz.
enum IndexArrays {
    I32 { indices: Appender<i32>, indptr: Appender<i32> },
    I64 { indices: Appender<i64>, indptr: Appender<i64> },
}

/// A `csr_matrix` group whose rows are appended block by block.
pub struct CsrAppender<T: H5Type + bytemuck::Pod + Send + Sync> {
    group: Group,
    data: Appender<T>,
    index: IndexArrays,
    n_rows: usize,
    n_cols: usize,
}

impl<T: H5Type + bytemuck::Pod + Send + Sync> CsrAppender<T> {
    /// `max_nnz`: an upper bound of the non-zeros (e.g. rows × columns); int64 indices beyond int32.
    pub fn create(parent: &Group, name: &str, n_cols: usize, max_nnz: u64, c: Compression) -> Result<Self> {
        let group = new_group(parent, name).with_context(|| format!("creating {name}"))?;
        encoding(&group, "csr_matrix", "0.1.0")?;
        let data = Appender::create(&group, "data", c)?;
        let index = if max_nnz <= i32::MAX as u64 && n_cols <= i32::MAX as usize {
            let mut indptr = Appender::create(&group, "indptr", c)?;
            indptr.push_slice(&[0i32])?;
            IndexArrays::I32 { indices: Appender::create(&group, "indices", c)?, indptr }
        } else {
            let mut indptr = Appender::create(&group, "indptr", c)?;
            indptr.push_slice(&[0i64])?;
            IndexArrays::I64 { indices: Appender::create(&group, "indices", c)?, indptr }
        };
        Ok(CsrAppender { group, data, index, n_rows: 0, n_cols })
    }

    pub fn nnz(&self) -> usize {
        self.data.len()
    }

    /// Append rows: `indptr` (rows + 1 offsets into `indices`/`values`, any starting offset).
    pub fn append(&mut self, indptr: &[usize], indices: &[u32], values: &[T]) -> Result<()> {
        if indptr.is_empty() {
            return Ok(());
        }
        let (first, last) = (indptr[0], *indptr.last().unwrap());
        if indices.len() < last || values.len() < last || first > last {
            bail!("CSR block: indptr {first}..{last} outside {} indices", indices.len());
        }
        if let Some(&bad) = indices[first..last].iter().find(|&&j| j as usize >= self.n_cols) {
            bail!("CSR block: column index {bad} >= {} columns", self.n_cols);
        }
        let base = self.data.len() as i64 - first as i64;
        self.data.push_slice(&values[first..last])?;
        match &mut self.index {
            IndexArrays::I32 { indices: ix, indptr: ip } => {
                if (self.data.len() as u64) > i32::MAX as u64 {
                    bail!("CSR matrix: more than 2^31 non-zeros but int32 indices were chosen");
                }
                ix.push_iter(indices[first..last].iter().map(|&j| j as i32))?;
                ip.push_iter(indptr[1..].iter().map(|&p| (p as i64 + base) as i32))?;
            }
            IndexArrays::I64 { indices: ix, indptr: ip } => {
                ix.push_iter(indices[first..last].iter().map(|&j| j as i64))?;
                ip.push_iter(indptr[1..].iter().map(|&p| p as i64 + base))?;
            }
        }
        self.n_rows += indptr.len() - 1;
        Ok(())
    }

    pub fn finish(self) -> Result<()> {
        self.data.finish()?;
        match self.index {
            IndexArrays::I32 { indices, indptr } => {
                indices.finish()?;
                indptr.finish()?;
            }
            IndexArrays::I64 { indices, indptr } => {
                indices.finish()?;
                indptr.finish()?;
            }
        }
        self.group.new_attr::<i64>().shape(2).create("shape")?.write(&[self.n_rows as i64, self.n_cols as i64])?;
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------------
// The SpliceVI MuData layout

/// Streams cells into a new `.h5mu` file (call on a temporary path; see [`crate::util::write_atomic`]).
pub struct SpliceviWriter {
    file: hdf5::File,
    path: std::path::PathBuf,
    n_genes: usize,
    n_junctions: usize,
    compression: Compression,
    rna_x: Option<CsrAppender<f32>>,
    k: Option<CsrAppender<f32>>,
    n: Option<CsrAppender<f32>>,
    psi: CsrAppender<f32>,
    mask: CsrAppender<u8>,
    n_cells: usize,
    // scratch for the k > 0 entries
    s_indptr: Vec<usize>,
    s_idx: Vec<u32>,
    s_k: Vec<f32>,
    s_psi: Vec<f32>,
}

impl SpliceviWriter {
    /// `with_rna`: write the expression modality; `has_counts`: write k and n (else PSI + mask only).
    /// `n_cells_bound`: the number of cells that will be appended (an upper bound; sizes the index dtype).
    pub fn create(
        path: &Path,
        n_cells_bound: usize,
        n_genes: usize,
        n_junctions: usize,
        with_rna: bool,
        has_counts: bool,
        compression: Compression,
    ) -> Result<Self> {
        // mudata writes a 512-byte userblock starting with "MuData"; read_h5mu warns without it.
        let file = create_file(path, 512)?;
        let m = new_group(&file, "mod")?;
        let n_cells = n_cells_bound as u64;
        let mut rna_x = None;
        if with_rna {
            let rna = new_group(&m, "rna")?;
            rna_x = Some(CsrAppender::create(&rna, "X", n_genes, n_cells * n_genes as u64, compression)?);
        }
        let spl = new_group(&m, "splicing")?;
        let layers = create_dict(&spl, "layers")?;
        let (k, n) = if has_counts {
            (
                Some(CsrAppender::create(
                    &layers,
                    "cell_by_junction_matrix",
                    n_junctions,
                    n_cells * n_junctions as u64,
                    compression,
                )?),
                Some(CsrAppender::create(
                    &layers,
                    "cell_by_cluster_matrix",
                    n_junctions,
                    n_cells * n_junctions as u64,
                    compression,
                )?),
            )
        } else {
            (None, None)
        };
        let psi = CsrAppender::create(&layers, "junc_ratio", n_junctions, n_cells * n_junctions as u64, compression)?;
        let mask = CsrAppender::create(&layers, "psi_mask", n_junctions, n_cells * n_junctions as u64, compression)?;
        Ok(SpliceviWriter {
            file,
            path: path.to_path_buf(),
            n_genes,
            n_junctions,
            compression,
            rna_x,
            k,
            n,
            psi,
            mask,
            n_cells: 0,
            s_indptr: Vec::new(),
            s_idx: Vec::new(),
            s_k: Vec::new(),
            s_psi: Vec::new(),
        })
    }

    pub fn n_cells(&self) -> usize {
        self.n_cells
    }

    pub fn append(&mut self, b: &CellBlock) -> Result<()> {
        let cells = b.n_cells();
        if let Some(x) = &mut self.rna_x {
            if b.expr_indptr.len() != cells + 1 {
                bail!("cell block: {} expression rows for {cells} cells", b.expr_indptr.len().saturating_sub(1));
            }
            x.append(&b.expr_indptr, &b.expr_indices, &b.expr_values)?;
        }
        let nnz = *b.spl_indptr.last().unwrap();
        if b.spl_junction.len() != nnz
            || b.psi.len() != nnz
            || (self.k.is_some() && (b.k.len() != nnz || b.n.len() != nnz))
        {
            bail!("cell block: splicing arrays disagree with indptr ({nnz} entries)");
        }
        if let Some(n) = &mut self.n {
            n.append(&b.spl_indptr, &b.spl_junction, &b.n)?;
        }
        self.mask.append(&b.spl_indptr, &b.spl_junction, &vec![1u8; nnz])?;
        // k and psi: only the non-zeros are stored (sparse semantics); observed zeros are implied by n / mask.
        self.s_indptr.clear();
        self.s_idx.clear();
        self.s_k.clear();
        self.s_psi.clear();
        self.s_indptr.push(0);
        for c in 0..cells {
            for e in b.spl_indptr[c]..b.spl_indptr[c + 1] {
                if b.psi[e] != 0.0 || (self.k.is_some() && b.k[e] != 0.0) {
                    self.s_idx.push(b.spl_junction[e]);
                    self.s_psi.push(b.psi[e]);
                    if self.k.is_some() {
                        self.s_k.push(b.k[e]);
                    }
                }
            }
            self.s_indptr.push(self.s_idx.len());
        }
        if let Some(k) = &mut self.k {
            k.append(&self.s_indptr, &self.s_idx, &self.s_k)?;
        }
        self.psi.append(&self.s_indptr, &self.s_idx, &self.s_psi)?;
        self.n_cells += cells;
        Ok(())
    }

    /// Write obs/var/obsm/varm/uns and the MuData attributes; close the file.
    pub fn finish(self, meta: &FileMeta) -> Result<()> {
        let c = self.compression;
        let n = self.n_cells;
        if meta.cell_names.len() != n || meta.library_size.len() != n {
            bail!(
                "finish: {} cell names / {} library sizes for {n} cells",
                meta.cell_names.len(),
                meta.library_size.len()
            );
        }
        if meta.splicing.names.len() != self.n_junctions {
            bail!("finish: {} junction names for {} junctions", meta.splicing.names.len(), self.n_junctions);
        }
        if self.rna_x.is_some() != meta.rna.is_some() {
            bail!("finish: the rna var table must be given exactly when the rna modality is written");
        }
        let f = &self.file;
        let m = f.group("mod")?;
        let lib = &meta.library_size;

        // modalities
        let mut mod_order = Vec::new();
        if let (Some(x), Some(rv)) = (self.rna_x, &meta.rna) {
            if rv.names.len() != self.n_genes {
                bail!("finish: {} gene names for {} genes", rv.names.len(), self.n_genes);
            }
            x.finish()?;
            let rna = m.group("rna")?;
            let layers = create_dict(&rna, "layers")?;
            // The expression input is the integer counts; X and layers/length_norm are the same object.
            layers.link_hard("/mod/rna/X", "length_norm")?;
            anndata_rest(&rna, &meta.cell_names, &meta.obs, rv, Some(lib), c)?;
            mod_order.push("rna".to_string());
        }
        if let Some(k) = self.k {
            k.finish()?;
        }
        if let Some(nn) = self.n {
            nn.finish()?;
        }
        self.psi.finish()?;
        self.mask.finish()?;
        let spl = m.group("splicing")?;
        let x_target = if f.link_exists("/mod/splicing/layers/cell_by_junction_matrix") {
            "/mod/splicing/layers/cell_by_junction_matrix"
        } else {
            "/mod/splicing/layers/junc_ratio"
        };
        spl.link_hard(x_target, "X")?;
        anndata_rest(&spl, &meta.cell_names, &meta.obs, &meta.splicing, None, c)?;
        mod_order.push("splicing".to_string());
        str_array_attr(&m, "mod-order", &mod_order)?;

        // global (MuData) level
        let root: &Group = f;
        dataframe(root, "obs", &meta.cell_names, &meta.obs, c)?;
        let mut var_names: Vec<String> = meta.rna.as_ref().map(|r| r.names.clone()).unwrap_or_default();
        var_names.extend(meta.splicing.names.iter().cloned());
        dataframe(root, "var", &var_names, &[], c)?;
        let obsm = create_dict(root, "obsm")?;
        dense_array(&obsm, "X_library_size", lib, &[n, 1], c)?;
        for name in ["varm", "obsp", "varp"] {
            create_dict(root, name)?;
        }
        let uns = create_dict(root, "uns")?;
        for (k, v) in &meta.uns {
            uns_value(&uns, k, v)?;
        }
        encoding(root, "MuData", MUDATA_FORMAT_VERSION)?;
        str_attr(root, "encoder", "splicevi")?;
        str_attr(root, "encoder-version", env!("CARGO_PKG_VERSION"))?;
        drop(m);
        drop(spl);
        drop(uns);
        drop(obsm);
        self.file.close().context("closing HDF5 file")?;

        // mudata recognises its files by this userblock header.
        use std::io::{Seek, SeekFrom, Write};
        let mut fh = std::fs::OpenOptions::new().write(true).open(&self.path)?;
        fh.seek(SeekFrom::Start(0))?;
        let header = format!(
            "MuData (format-version={MUDATA_FORMAT_VERSION};creator=splicevi;creator-version={})",
            env!("CARGO_PKG_VERSION")
        );
        fh.write_all(header.as_bytes())?;
        fh.sync_all()?;
        // The temporary file behind write_atomic is created 0600; a data file should be readable like
        // any other output.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o644))?;
        }
        Ok(())
    }
}

/// obs, var, obsm, varm, uns, attributes of one AnnData group (X/layers already written).
fn anndata_rest(
    g: &Group,
    cells: &[String],
    obs: &[(String, ObsColumn)],
    var: &VarTable,
    library: Option<&[f32]>,
    c: Compression,
) -> Result<()> {
    dataframe(g, "obs", cells, obs, c)?;
    dataframe(g, "var", &var.names, &var.columns, c)?;
    let obsm = create_dict(g, "obsm")?;
    if let Some(lib) = library {
        dense_array(&obsm, "X_library_size", lib, &[lib.len(), 1], c)?;
    }
    let varm = create_dict(g, "varm")?;
    for (name, vals, cols) in &var.varm {
        dense_array(&varm, name, vals, &[var.names.len(), *cols], c)?;
    }
    for name in ["obsp", "varp", "uns"] {
        create_dict(g, name)?;
    }
    encoding(g, "anndata", "0.1.0")?;
    Ok(())
}

/// Default var tables for a Dataset that carries no annotations beyond its names and ATSE map.
pub fn default_var_tables(ds: &Dataset) -> (Option<VarTable>, VarTable) {
    let rna = ds.expression.as_ref().map(|_| VarTable {
        names: ds.gene_names.clone(),
        columns: vec![(
            "modality".into(),
            ObsColumn::Categorical { codes: vec![0; ds.n_genes()], categories: vec!["Gene_Expression".into()], int_categories: None, store: crate::data::CatStore::Unordered },
        )],
        varm: vec![],
    });
    let s = &ds.splicing;
    let mut cols = vec![
        (
            "event_id".to_string(),
            ObsColumn::Text(s.junc2atse.iter().map(|&a| s.atse_ids[a as usize].clone()).collect()),
        ),
        ("junction_id".to_string(), ObsColumn::Text(s.junction_names.clone())),
    ];
    if s.gene_names.len() == s.n_junctions {
        cols.push(("gene_name".into(), ObsColumn::Text(s.gene_names.clone())));
    }
    cols.push((
        "modality".into(),
        ObsColumn::Categorical { codes: vec![0; s.n_junctions], categories: vec!["Splicing".into()], int_categories: None, store: crate::data::CatStore::Unordered },
    ));
    (rna, VarTable { names: s.junction_names.clone(), columns: cols, varm: vec![] })
}

/// Write a Dataset as a SpliceVI `.h5mu` (atomically). `rna_var` / `splicing_var` replace the default
/// var tables (their names must equal the Dataset's); `uns` goes to the MuData `uns`.
pub fn write_h5mu(
    path: &Path,
    ds: &Dataset,
    rna_var: Option<&VarTable>,
    splicing_var: Option<&VarTable>,
    uns: &[(String, UnsValue)],
    compression: Compression,
) -> Result<()> {
    let (def_rna, def_spl) = default_var_tables(ds);
    let rna = match (rna_var, def_rna) {
        (Some(r), Some(_)) => Some(r.clone()),
        (_, d) => d,
    };
    let spl = splicing_var.cloned().unwrap_or(def_spl);
    if let Some(r) = &rna {
        if r.names != ds.gene_names {
            bail!("write_h5mu: rna var names differ from the dataset's gene names");
        }
    }
    if spl.names != ds.splicing.junction_names {
        bail!("write_h5mu: splicing var names differ from the dataset's junction names");
    }
    let s = &ds.splicing;
    let n = ds.n_cells();
    if s.indptr.len() != n + 1 {
        bail!("write_h5mu: splicing indptr has {} entries for {n} cells", s.indptr.len());
    }
    let meta = FileMeta {
        cell_names: ds.cell_names.clone(),
        obs: ds.obs.clone(),
        library_size: ds.library_size.clone(),
        rna,
        splicing: spl,
        uns: uns.to_vec(),
    };
    crate::util::write_atomic(path, |tmp| {
        let mut w = SpliceviWriter::create(
            tmp,
            n,
            ds.n_genes(),
            s.n_junctions,
            ds.expression.is_some(),
            s.has_counts,
            compression,
        )?;
        // Hand the rows over in blocks so the writer's scratch stays small.
        const ROWS: usize = 4096;
        let mut r0 = 0;
        while r0 < n {
            let r1 = (r0 + ROWS).min(n);
            let mut b = CellBlock::default();
            if let Some(e) = &ds.expression {
                let (a, z) = (e.indptr[r0], e.indptr[r1]);
                b.expr_indptr = e.indptr[r0..=r1].iter().map(|&p| p - a).collect();
                b.expr_indices = e.indices[a..z].to_vec();
                b.expr_values = e.values[a..z].to_vec();
            }
            let (a, z) = (s.indptr[r0], s.indptr[r1]);
            b.spl_indptr = s.indptr[r0..=r1].iter().map(|&p| p - a).collect();
            b.spl_junction = s.junction[a..z].to_vec();
            b.psi = s.psi[a..z].to_vec();
            if s.has_counts {
                b.k = s.k[a..z].to_vec();
                b.n = s.n[a..z].to_vec();
            }
            w.append(&b)?;
            r0 = r1;
        }
        w.finish(&meta)
    })
}
