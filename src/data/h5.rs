//! Reading anndata (`.h5ad`) and mudata (`.h5mu`) HDF5 files.
//!
//! Supported encodings (anndata ≥ 0.7 / mudata, as written by the Python packages): `anndata`, `dict`,
//! `dataframe` (index named by the `_index` attribute, `column-order`), `array` (dense, any numeric or bool
//! dtype, chunked and/or compressed), `csr_matrix` / `csc_matrix` (also the older `h5sparse_format`
//! attributes), `categorical` (and the anndata 0.7 `__categories` layout), `string-array`,
//! `nullable-integer`, `nullable-boolean`, `nullable-string-array`. Strings may be variable- or
//! fixed-length, ASCII or UTF-8. Obs/var stored as one compound dataset (anndata < 0.7) is refused with a
//! message saying how to convert the file.
//!
//! Matrices are read straight into CSR with zeros dropped: sparse groups in chunks of their arrays, dense
//! datasets in blocks of rows, CSC through a counting-sort transpose. Memory stays proportional to the
//! non-zeros; cells × features is never densified. The splicing layers k, junc_ratio and psi_mask (CSR or
//! dense) are not read whole: [`H5Rows`] hands them to the entry builder a block of rows at a time, so a
//! load holds the dataset it builds plus one block of each.

use super::dataset::{CatStore, Csr, FloatWidth, IntColumn, IntWidth, ObsColumn};
use super::load::{ObsTable, RawData};
use super::options::DataOptions;
use super::validate::{CheckOptions, DataError, Layer, RowSource, ValueRule, ValueTracker};
use anyhow::{anyhow, bail, Context, Result};
use hdf5::types::{FixedAscii, FixedUnicode, TypeDescriptor as TD, VarLenAscii, VarLenUnicode};
use hdf5::{Container, Dataset as HDataset, File, Group, Location};
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

/// Elements per read when streaming sparse arrays, and the budget of one dense row block.
const CHUNK: usize = 1 << 20;
const DENSE_BLOCK: usize = 1 << 22;
/// Largest dense block (elements) accepted to keep row blocks aligned to the dataset's chunks.
const MAX_ALIGNED_BLOCK: usize = 1 << 25;

/// Open an HDF5 file read-only.
pub fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| anyhow!("{}: cannot open as HDF5: {e}", path.display()))
}

/// True when the file is a MuData container (has a `/mod` group).
pub fn is_mudata(f: &File) -> bool {
    f.link_exists("mod") && f.group("mod").is_ok()
}

/// A member of a group: a subgroup or a dataset.
pub enum Node {
    Group(Group),
    Dataset(HDataset),
}

/// Look up `path` (components separated by `/`) below `g`; `None` when any component is absent.
pub fn node(g: &Group, path: &str) -> Option<Node> {
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut cur = g.clone();
    for (i, p) in parts.iter().enumerate() {
        if !cur.link_exists(p) {
            return None;
        }
        if i + 1 == parts.len() {
            return match cur.dataset(p) {
                Ok(d) => Some(Node::Dataset(d)),
                Err(_) => cur.group(p).ok().map(Node::Group),
            };
        }
        cur = cur.group(p).ok()?;
    }
    Some(Node::Group(cur))
}

/// Member names of the group at `path` (empty when it does not exist).
pub fn members(g: &Group, path: &str) -> Vec<String> {
    match node(g, path) {
        Some(Node::Group(s)) => s.member_names().unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn descriptor(c: &Container) -> Result<TD> {
    Ok(c.dtype()?.to_descriptor()?)
}

fn is_string_type(td: &TD) -> bool {
    matches!(td, TD::VarLenUnicode | TD::VarLenAscii | TD::FixedAscii(_) | TD::FixedUnicode(_))
}

/// A string attribute (`None` when absent).
pub fn attr_string(loc: &Location, name: &str) -> Result<Option<String>> {
    if !loc.attr_names()?.iter().any(|n| n == name) {
        return Ok(None);
    }
    let a = loc.attr(name)?;
    Ok(read_strings(&a)?.into_iter().next())
}

/// Attribute as strings (array or scalar); an empty numeric array (how h5py stores `[]`) gives no strings.
pub fn attr_strings(loc: &Location, name: &str) -> Result<Option<Vec<String>>> {
    if !loc.attr_names()?.iter().any(|n| n == name) {
        return Ok(None);
    }
    let a = loc.attr(name)?;
    if a.size() == 0 {
        return Ok(Some(Vec::new()));
    }
    Ok(Some(read_strings(&a)?))
}

fn attr_ints(loc: &Location, name: &str) -> Result<Option<Vec<i64>>> {
    if !loc.attr_names()?.iter().any(|n| n == name) {
        return Ok(None);
    }
    Ok(Some(loc.attr(name)?.read_raw::<i64>()?))
}

fn fixed_ascii<const N: usize>(c: &Container) -> Result<Vec<String>> {
    Ok(read_raw_of::<FixedAscii<N>>(c)?.iter().map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned()).collect())
}

fn fixed_unicode<const N: usize>(c: &Container) -> Result<Vec<String>> {
    Ok(read_raw_of::<FixedUnicode<N>>(c)?.iter().map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned()).collect())
}

/// Fixed-length strings are read into the smallest fixed buffer that holds them (HDF5 pads on conversion).
fn fixed_strings(c: &Container, n: usize, unicode: bool) -> Result<Vec<String>> {
    macro_rules! pick {
        ($($size:literal),*) => {
            $(if n <= $size { return if unicode { fixed_unicode::<$size>(c) } else { fixed_ascii::<$size>(c) }; })*
        };
    }
    pick!(8, 16, 32, 64, 128, 256, 1024, 4096, 65536);
    bail!("fixed-length strings of {n} bytes are too long")
}

/// Format a number the way it reads as a label: integers without a fraction.
pub fn number_label(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The HDF5 filters splicevi can decode (this build registers lzf next to HDF5's own).
const READABLE_FILTERS: &str = "gzip and lzf, with or without shuffle";

/// A failed read in words. A dataset compressed with a filter this build lacks (blosc, zstd, lz4,
/// bitshuffle… as `hdf5plugin` writes them) fails deep inside HDF5 with a message about its plugin
/// directory (a path of the build machine): name the dataset and the filter, and say what to do.
fn read_failure(c: &Container, filters: &[hdf5::filters::Filter], e: hdf5::Error) -> anyhow::Error {
    let missing: Vec<String> = filters
        .iter()
        .filter(|f| !f.is_available())
        .map(|f| {
            let id = f.id();
            let known = match id {
                307 => " (bzip2)",
                32001 => " (blosc)",
                32004 => " (lz4)",
                32008 => " (bitshuffle)",
                32015 => " (zstd)",
                32017 => " (blosc2)",
                _ => "",
            };
            format!("{id}{known}")
        })
        .collect();
    let text = e.to_string();
    if !missing.is_empty() || text.contains("can't open directory") || text.contains("filter") {
        let which = if missing.is_empty() { "an HDF5 filter".to_string() } else { format!("HDF5 filter {}", missing.join(", ")) };
        anyhow!(
            "{}: compressed with {which}, which splicevi cannot decode (it reads {READABLE_FILTERS}); rewrite the file with gzip, e.g. `adata.write_h5ad(path, compression=\"gzip\")` or `mdata.write(path, compression=\"gzip\")`",
            c.name().trim_start_matches('/')
        )
    } else {
        anyhow!("{}: {e}", c.name().trim_start_matches('/'))
    }
}

/// `c.read_raw()`, failing as [`read_failure`] says.
fn read_raw_of<T: hdf5::H5Type>(c: &Container) -> Result<Vec<T>> {
    c.read_raw::<T>().map_err(|e| read_failure(c, &[], e))
}

/// Read a dataset or attribute of strings (numbers are formatted as labels).
pub fn read_strings(c: &Container) -> Result<Vec<String>> {
    let td = descriptor(c)?;
    Ok(match td {
        TD::VarLenUnicode => read_raw_of::<VarLenUnicode>(c)?.iter().map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned()).collect(),
        TD::VarLenAscii => read_raw_of::<VarLenAscii>(c)?.iter().map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned()).collect(),
        TD::FixedAscii(n) => fixed_strings(c, n, false)?,
        TD::FixedUnicode(n) => fixed_strings(c, n, true)?,
        // (integers exactly: through f64, categories above 2^53 would round and could merge)
        TD::Integer(_) => read_raw_of::<i64>(c)?.iter().map(i64::to_string).collect(),
        TD::Unsigned(_) => read_raw_of::<u64>(c)?.iter().map(u64::to_string).collect(),
        TD::Float(_) => read_raw_of::<f64>(c)?.into_iter().map(number_label).collect(),
        TD::Boolean => read_raw_of::<bool>(c)?.into_iter().map(|b| if b { "True" } else { "False" }.to_string()).collect(),
        other => bail!("expected strings, found HDF5 type {other}"),
    })
}

enum Sel {
    All,
    Range1(Range<usize>),
    Rows2(Range<usize>),
}

fn read_sel<T: hdf5::H5Type>(ds: &HDataset, sel: Sel) -> Result<Vec<T>> {
    let fail = |e| read_failure(ds, &ds.filters(), e);
    Ok(match sel {
        Sel::All => ds.read_raw::<T>().map_err(fail)?,
        Sel::Range1(r) => {
            if r.is_empty() {
                Vec::new()
            } else {
                ds.read_slice_1d::<T, _>(r).map_err(fail)?.into_raw_vec_and_offset().0
            }
        }
        Sel::Rows2(r) => {
            if r.is_empty() || ds.shape()[1] == 0 {
                Vec::new()
            } else {
                ds.read_slice_2d::<T, _>((r, ..)).map_err(fail)?.into_raw_vec_and_offset().0
            }
        }
    })
}

/// Numbers of any integer, float or bool dtype as f64.
fn read_f64_sel(ds: &HDataset, sel: Sel) -> Result<Vec<f64>> {
    match descriptor(ds)? {
        TD::Boolean => Ok(read_sel::<bool>(ds, sel)?.into_iter().map(|b| b as u8 as f64).collect()),
        TD::Integer(_) | TD::Unsigned(_) | TD::Float(_) => read_sel::<f64>(ds, sel),
        other => bail!("expected numbers, found HDF5 type {other}"),
    }
}

fn read_i64_sel(ds: &HDataset, sel: Sel) -> Result<Vec<i64>> {
    match descriptor(ds)? {
        TD::Integer(_) | TD::Unsigned(_) => read_sel::<i64>(ds, sel),
        other => bail!("expected integers, found HDF5 type {other}"),
    }
}

/// The integer type an HDF5 type descriptor names; None for another type.
fn int_width(td: &TD) -> Option<IntWidth> {
    use hdf5::types::IntSize::{U1, U2, U4, U8};
    Some(match td {
        TD::Integer(U1) => IntWidth::I8,
        TD::Integer(U2) => IntWidth::I16,
        TD::Integer(U4) => IntWidth::I32,
        TD::Integer(U8) => IntWidth::I64,
        TD::Unsigned(U1) => IntWidth::U8,
        TD::Unsigned(U2) => IntWidth::U16,
        TD::Unsigned(U4) => IntWidth::U32,
        TD::Unsigned(U8) => IntWidth::U64,
        _ => return None,
    })
}

/// An integer dataset's values and stored type; None for a dataset of another type.
fn read_ints(ds: &HDataset) -> Result<Option<(Vec<i128>, IntWidth)>> {
    let Some(width) = int_width(&descriptor(ds)?) else { return Ok(None) };
    if width == IntWidth::U64 {
        // (read as i64, HDF5 would clamp the values above i64::MAX)
        return Ok(Some((read_sel::<u64>(ds, Sel::All)?.into_iter().map(i128::from).collect(), width)));
    }
    Ok(Some((read_sel::<i64>(ds, Sel::All)?.into_iter().map(i128::from).collect(), width)))
}

/// A whole 1-D numeric dataset as f64.
pub fn read_f64(ds: &HDataset) -> Result<Vec<f64>> {
    read_f64_sel(ds, Sel::All)
}

// ------------------------------------------------------------------------------------------------
// Matrices

enum MatKind {
    Dense(HDataset),
    Sparse { group: Group, csc: bool },
}

/// A cells × features matrix stored as a dense dataset or a CSR/CSC group.
pub struct Matrix {
    /// Path inside the file, for messages.
    pub field: String,
    pub shape: (usize, usize),
    kind: MatKind,
}

impl Matrix {
    pub fn format(&self) -> &'static str {
        match &self.kind {
            MatKind::Dense(_) => "dense",
            MatKind::Sparse { csc: false, .. } => "csr",
            MatKind::Sparse { csc: true, .. } => "csc",
        }
    }
}

/// Open the matrix at `path` below `root`; `Ok(None)` when nothing is there.
pub fn open_matrix(root: &Group, path: &str) -> Result<Option<Matrix>> {
    let field = path.trim_start_matches('/').to_string();
    match node(root, path) {
        None => Ok(None),
        Some(Node::Dataset(ds)) => {
            let shape = ds.shape();
            if shape.len() != 2 {
                // (anndata writes X = None as an empty scalar: the counts are in a layer)
                let hint = if shape.is_empty() && field.ends_with("/X") { "; X holds nothing here: name the layer holding the expression counts with --rna-layer" } else { "" };
                bail!("{field}: expected a 2-D matrix, found a dataset of shape {shape:?}{hint}");
            }
            if !matches!(descriptor(&ds)?, TD::Integer(_) | TD::Unsigned(_) | TD::Float(_) | TD::Boolean) {
                bail!("{field}: expected a numeric matrix, found HDF5 type {}", descriptor(&ds)?);
            }
            Ok(Some(Matrix { field, shape: (shape[0], shape[1]), kind: MatKind::Dense(ds) }))
        }
        Some(Node::Group(g)) => {
            let enc = attr_string(&g, "encoding-type")?;
            let old = attr_string(&g, "h5sparse_format")?;
            let csc = match (enc.as_deref(), old.as_deref()) {
                (Some("csr_matrix"), _) | (None, Some("csr")) => false,
                (Some("csc_matrix"), _) | (None, Some("csc")) => true,
                (e, o) => bail!(
                    "{field}: a group that is not a sparse matrix (encoding-type {:?}); expected a dense array, \
                     csr_matrix or csc_matrix",
                    e.or(o).unwrap_or("none")
                ),
            };
            let shape = match attr_ints(&g, "shape")? {
                Some(s) => s,
                None => attr_ints(&g, "h5sparse_shape")?.ok_or_else(|| anyhow!("{field}: sparse matrix without a shape attribute"))?,
            };
            if shape.len() != 2 || shape.iter().any(|&x| x < 0) {
                bail!("{field}: invalid shape attribute {shape:?}");
            }
            for m in ["data", "indices", "indptr"] {
                if !matches!(node(&g, m), Some(Node::Dataset(_))) {
                    bail!("{field}: sparse matrix without its `{m}` dataset");
                }
            }
            Ok(Some(Matrix { field, shape: (shape[0] as usize, shape[1] as usize), kind: MatKind::Sparse { group: g, csc } }))
        }
    }
}

impl Matrix {
    /// Read as CSR (zeros dropped, columns ascending, duplicates summed). Values failing the tracker's
    /// rule are recorded in it (first in row-major order) and left out.
    pub fn read_csr(&self, tracker: &mut ValueTracker) -> Result<Csr<f32>> {
        self.read_csr_chunked(tracker, CHUNK, DENSE_BLOCK)
    }

    /// [`Matrix::read_csr`] with explicit read sizes: `chunk` elements per read of a sparse group's arrays,
    /// `block` elements per dense row block (tests use tiny values to cross every boundary).
    pub fn read_csr_chunked(&self, tracker: &mut ValueTracker, chunk: usize, block: usize) -> Result<Csr<f32>> {
        let (nr, nc) = self.shape;
        let mut out = match &self.kind {
            MatKind::Dense(ds) => {
                let rows_per_block = dense_rows_per_block(ds, nc, block);
                let mut csr = Csr { n_rows: nr, n_cols: nc, indptr: Vec::with_capacity(nr + 1), indices: Vec::new(), values: Vec::new() };
                csr.indptr.push(0);
                let mut r0 = 0;
                while r0 < nr {
                    let r1 = (r0 + rows_per_block).min(nr);
                    let block = read_f64_sel(ds, Sel::Rows2(r0..r1)).with_context(|| format!("{}: reading rows {r0}..{r1}", self.field))?;
                    push_dense_rows(&mut csr, &block, nc, r1 - r0, r0, tracker);
                    r0 = r1;
                }
                csr
            }
            MatKind::Sparse { group, csc } => {
                let (major, minor) = if *csc { (nc, nr) } else { (nr, nc) };
                let m = read_compressed(group, &self.field, major, minor, *csc, tracker, chunk.max(1))?;
                if *csc {
                    transpose(&m)
                } else {
                    m
                }
            }
        };
        canonicalize(&mut out);
        Ok(out)
    }
}

/// The data and indices datasets of a compressed sparse group and its checked indptr (starts at 0, never
/// decreases, `major + 1` long, within the arrays).
fn open_compressed(g: &Group, field: &str, major: usize, csc: bool) -> Result<(HDataset, HDataset, Vec<i64>)> {
    let data = g.dataset("data")?;
    let indices = g.dataset("indices")?;
    let indptr_ds = g.dataset("indptr")?;
    let indptr = read_i64_sel(&indptr_ds, Sel::All).with_context(|| format!("{field}/indptr"))?;
    if indptr.len() != major + 1 {
        bail!("{field}/indptr: length {} but the matrix has {} {} (+1)", indptr.len(), major, if csc { "columns" } else { "rows" });
    }
    let nnz = *indptr.last().unwrap();
    if indptr[0] != 0 {
        bail!("{field}/indptr: starts at {}, not 0", indptr[0]);
    }
    if let Some(i) = indptr.windows(2).position(|w| w[0] > w[1]) {
        let what = if csc { "column" } else { "row" };
        bail!("{field}/indptr: decreases at {what} {i} ({} then {}); it must never decrease", indptr[i], indptr[i + 1]);
    }
    let nnz = nnz as usize;
    if data.size() < nnz || indices.size() < nnz {
        bail!("{field}: indptr ends at {nnz} but data has {} and indices {} entries", data.size(), indices.size());
    }
    Ok((data, indices, indptr))
}

/// Rows per dense read block: about `block` elements, in whole chunks of the dataset when they fit (a chunk
/// cut by a block boundary would be decompressed twice).
fn dense_rows_per_block(ds: &HDataset, nc: usize, block: usize) -> usize {
    let mut rows_per_block = (block / nc.max(1)).max(1);
    if let Some(cr) = ds.chunk().and_then(|c| c.first().copied()).filter(|&cr| cr > 0) {
        if cr.saturating_mul(nc) <= block.max(MAX_ALIGNED_BLOCK) {
            rows_per_block = cr.max(rows_per_block / cr * cr);
        }
    }
    rows_per_block
}

/// Append the non-zero values of dense rows `r0..` (row-major, `nc` per row) to `csr`, rows numbered from
/// `r0` for the tracker.
fn push_dense_rows(csr: &mut Csr<f32>, block: &[f64], nc: usize, n_rows: usize, r0: usize, tracker: &mut ValueTracker) {
    for (bi, row) in block.chunks(nc.max(1)).enumerate().take(n_rows) {
        for (j, &v) in row.iter().enumerate() {
            if v != 0.0 && tracker.accept(r0 + bi, j, v) {
                csr.indices.push(j as u32);
                csr.values.push(v as f32);
            }
        }
        csr.indptr.push(csr.values.len());
    }
}

enum RowsKind {
    Csr { data: HDataset, indices: HDataset, indptr: Vec<i64> },
    Dense { ds: HDataset, rows_per_block: usize },
}

/// A splicing layer stored as a CSR group or a dense dataset, read a block of rows at a time while the
/// observed entries are built ([`Layer::Rows`]): the load then holds one block of it, not the whole layer.
/// Its value rule is applied as each block is read.
pub struct H5Rows {
    file: String,
    field: String,
    n_rows: usize,
    n_cols: usize,
    rule: ValueRule,
    kind: RowsKind,
    block_entries: usize,
}

impl RowSource for H5Rows {
    fn block(&mut self, r0: usize, cells: &[String], junctions: &[String]) -> Result<Csr<f32>> {
        let (nr, nc) = (self.n_rows, self.n_cols);
        anyhow::ensure!(r0 < nr, "{}: {}: row {r0} asked of {nr} rows", self.file, self.field);
        let mut tracker = ValueTracker::new(self.rule);
        let (r1, mut csr) = match &self.kind {
            RowsKind::Csr { data, indices, indptr } => {
                let start = indptr[r0] as usize;
                // The most rows whose entries fit in a block, at least one.
                let r1 = (r0 + 1).max(indptr.partition_point(|&p| p as usize <= start + self.block_entries).saturating_sub(1)).min(nr);
                let csr = read_major_range(data, indices, indptr, r0..r1, nc, false, &self.field, &mut tracker, self.block_entries)
                    .map_err(|e| anyhow!("{}: {e:#}", self.file))?;
                (r1, csr)
            }
            RowsKind::Dense { ds, rows_per_block } => {
                let r1 = (r0 + rows_per_block).min(nr);
                let block = read_f64_sel(ds, Sel::Rows2(r0..r1)).map_err(|e| anyhow!("{}: {}: reading rows {r0}..{r1}: {e:#}", self.file, self.field))?;
                let mut csr = Csr { n_rows: r1 - r0, n_cols: nc, indptr: Vec::with_capacity(r1 - r0 + 1), indices: Vec::new(), values: Vec::new() };
                csr.indptr.push(0);
                push_dense_rows(&mut csr, &block, nc, r1 - r0, r0, &mut tracker);
                (r1, csr)
            }
        };
        tracker.into_result(&self.file, &self.field, cells, "junction", junctions)?;
        debug_assert_eq!(csr.n_rows, r1 - r0);
        canonicalize(&mut csr);
        Ok(csr)
    }

    fn nnz_hint(&self) -> Option<usize> {
        match &self.kind {
            RowsKind::Csr { indptr, .. } => Some(*indptr.last().unwrap() as usize),
            RowsKind::Dense { .. } => None,
        }
    }
}

impl Matrix {
    /// A reader of this matrix in row blocks ([`H5Rows`]), for CSR and dense storage; `None` for CSC (its
    /// rows are scattered over the whole file: read it whole).
    /// A block holds about `block_entries` stored entries (CSR) or `block_entries` elements (dense, in whole
    /// chunks of the dataset when they fit), and at least one row.
    pub fn row_source(&self, file: &str, rule: ValueRule, block_entries: usize) -> Result<Option<H5Rows>> {
        let block_entries = block_entries.max(1);
        let (nr, nc) = self.shape;
        let kind = match &self.kind {
            MatKind::Sparse { csc: true, .. } => return Ok(None),
            MatKind::Sparse { group, csc: false } => {
                let (data, indices, indptr) = open_compressed(group, &self.field, nr, false).map_err(|e| anyhow!("{file}: {e:#}"))?;
                RowsKind::Csr { data, indices, indptr }
            }
            MatKind::Dense(ds) => RowsKind::Dense { ds: ds.clone(), rows_per_block: dense_rows_per_block(ds, nc, block_entries) },
        };
        Ok(Some(H5Rows { file: file.to_string(), field: self.field.clone(), n_rows: nr, n_cols: nc, rule, kind, block_entries }))
    }
}

/// Read a compressed sparse group along its major axis into a `Csr` (rows = major axis).
fn read_compressed(
    g: &Group,
    field: &str,
    major: usize,
    minor: usize,
    csc: bool,
    tracker: &mut ValueTracker,
    chunk: usize,
) -> Result<Csr<f32>> {
    let (data, indices, indptr) = open_compressed(g, field, major, csc)?;
    read_major_range(&data, &indices, &indptr, 0..major, minor, csc, field, tracker, chunk)
}

/// Major-axis slices `rows` of a compressed sparse group (checked `indptr`, see [`open_compressed`]) as a
/// `Csr` whose row 0 is `rows.start`, reading `chunk` entries at a time. The tracker sees global
/// (row, column) positions.
#[allow(clippy::too_many_arguments)]
fn read_major_range(
    data: &HDataset,
    indices: &HDataset,
    indptr: &[i64],
    rows: Range<usize>,
    minor: usize,
    csc: bool,
    field: &str,
    tracker: &mut ValueTracker,
    chunk: usize,
) -> Result<Csr<f32>> {
    let (first, last) = (indptr[rows.start] as usize, indptr[rows.end] as usize);
    let n_rows = rows.len();
    // Sized once (explicit zeros are dropped, so the stored count is an upper bound): no doubling.
    let mut out = Csr { n_rows, n_cols: minor, indptr: vec![0usize; n_rows + 1], indices: Vec::with_capacity(last - first), values: Vec::with_capacity(last - first) };
    let mut row = rows.start;
    let mut start = first;
    while start < last {
        let end = (start + chunk).min(last);
        let vals = read_f64_sel(data, Sel::Range1(start..end)).with_context(|| format!("{field}/data"))?;
        let idx = read_i64_sel(indices, Sel::Range1(start..end)).with_context(|| format!("{field}/indices"))?;
        for (t, (&v, &c)) in vals.iter().zip(&idx).enumerate() {
            let p = start + t;
            while p >= indptr[row + 1] as usize {
                row += 1;
                out.indptr[row - rows.start] = out.values.len();
            }
            if c < 0 || c as usize >= minor {
                let (what, other) = if csc { ("column", "row") } else { ("row", "column") };
                bail!("{field}/indices: {what} {row}: {other} index {c} (stored entry {p}) is outside 0..{minor}");
            }
            let (r, col) = if csc { (c as usize, row) } else { (row, c as usize) };
            if v != 0.0 && tracker.accept(r, col, v) {
                out.indices.push(c as u32);
                out.values.push(v as f32);
            }
        }
        start = end;
    }
    while row < rows.end {
        row += 1;
        out.indptr[row - rows.start] = out.values.len();
    }
    Ok(out)
}

/// Transpose by counting sort (stable: within each output row, columns come out ascending).
pub fn transpose(m: &Csr<f32>) -> Csr<f32> {
    let mut indptr = vec![0usize; m.n_cols + 1];
    for &c in &m.indices {
        indptr[c as usize + 1] += 1;
    }
    for c in 0..m.n_cols {
        indptr[c + 1] += indptr[c];
    }
    let mut fill = indptr.clone();
    let mut indices = vec![0u32; m.nnz()];
    let mut values = vec![0f32; m.nnz()];
    for r in 0..m.n_rows {
        let (cols, vals) = m.row(r);
        for (&c, &v) in cols.iter().zip(vals) {
            let p = fill[c as usize];
            indices[p] = r as u32;
            values[p] = v;
            fill[c as usize] += 1;
        }
    }
    Csr { n_rows: m.n_cols, n_cols: m.n_rows, indptr, indices, values }
}

/// Sort columns within rows and sum duplicates (scipy allows both unsorted and duplicate indices).
pub fn canonicalize(m: &mut Csr<f32>) {
    let sorted = (0..m.n_rows).all(|r| m.row(r).0.windows(2).all(|w| w[0] < w[1]));
    if sorted {
        return;
    }
    let mut indptr = Vec::with_capacity(m.n_rows + 1);
    indptr.push(0);
    let mut indices = Vec::with_capacity(m.nnz());
    let mut values = Vec::with_capacity(m.nnz());
    let mut buf: Vec<(u32, f32)> = Vec::new();
    for r in 0..m.n_rows {
        let (c, v) = m.row(r);
        buf.clear();
        buf.extend(c.iter().copied().zip(v.iter().copied()));
        buf.sort_by_key(|e| e.0);
        for &(c, v) in &buf {
            if indices.len() > *indptr.last().unwrap() && *indices.last().unwrap() == c {
                *values.last_mut().unwrap() += v;
            } else {
                indices.push(c);
                values.push(v);
            }
        }
        indptr.push(indices.len());
    }
    m.indptr = indptr;
    m.indices = indices;
    m.values = values;
}

// ------------------------------------------------------------------------------------------------
// Data frames (obs / var)

/// An obs or var table.
#[derive(Clone, Debug, Default)]
pub struct Frame {
    /// Path in the file, for messages.
    pub field: String,
    pub index: Vec<String>,
    pub columns: Vec<(String, ObsColumn)>,
    /// Columns that could not be decoded, with the reason; an error only if a flag names them.
    pub unreadable: Vec<(String, String)>,
}

impl Frame {
    pub fn column(&self, name: &str) -> Option<&ObsColumn> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }
    pub fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|(n, _)| n.clone()).chain(self.unreadable.iter().map(|(n, _)| n.clone())).collect()
    }
}

/// Read the dataframe at `path` (obs or var of an AnnData, or the global obs of a MuData).
pub fn read_frame(root: &Group, path: &str) -> Result<Frame> {
    let field = path.trim_start_matches('/').to_string();
    let g = match node(root, path) {
        None => bail!("{field}: missing"),
        Some(Node::Dataset(_)) => bail!(
            "{field}: stored as one compound dataset (anndata < 0.7 format), which splicevi does not read; \
             convert it with a recent anndata: `anndata.read_h5ad(old).write_h5ad(new)`"
        ),
        Some(Node::Group(g)) => g,
    };
    let index_name = attr_string(&g, "_index")?.unwrap_or_else(|| "_index".to_string());
    let index = match node(&g, &index_name) {
        Some(Node::Dataset(ds)) => read_strings(&ds).with_context(|| format!("{field}/{index_name}: reading the index"))?,
        _ => bail!("{field}: no index dataset `{index_name}`"),
    };
    let order = match attr_strings(&g, "column-order")? {
        Some(o) => o,
        None => {
            let mut m = g.member_names()?;
            m.retain(|n| n != &index_name && n != "__categories");
            m.sort();
            m
        }
    };
    let mut frame = Frame { field: field.clone(), index, columns: Vec::new(), unreadable: Vec::new() };
    let n = frame.index.len();
    for name in order {
        match read_column(&g, &name, n) {
            Ok(c) => frame.columns.push((name, c)),
            Err(e) => frame.unreadable.push((name, format!("{e:#}"))),
        }
    }
    Ok(frame)
}

fn codes_and_categories(codes_ds: &HDataset, cats: &Container) -> Result<ObsColumn> {
    let codes: Vec<i32> = read_i64_sel(codes_ds, Sel::All)?.into_iter().map(|c| c.max(-1) as i32).collect();
    let categories = read_strings(cats)?;
    if let Some(i) = codes.iter().position(|&c| c >= categories.len() as i32) {
        bail!("row {i}: categorical code {} out of range ({} categories)", codes[i], categories.len());
    }
    // (integer categories keep their stored type for the writers; read_strings gave their exact digits)
    let int_categories = int_width(&descriptor(cats)?);
    Ok(ObsColumn::Categorical { codes, categories, int_categories, store: CatStore::Unordered })
}

/// Categorical with sorted unique values of `vals` as categories, `None` as missing (code -1).
fn categorical_from(vals: Vec<Option<String>>) -> ObsColumn {
    let mut categories: Vec<String> = vals.iter().flatten().cloned().collect();
    categories.sort();
    categories.dedup();
    let codes = vals.iter().map(|v| v.as_ref().map_or(-1, |s| categories.binary_search(s).unwrap() as i32)).collect();
    ObsColumn::Categorical { codes, categories, int_categories: None, store: CatStore::Unordered }
}

/// A float column's stored width (f16 and integers read as floats are written back as float64).
fn float_width(td: &TD) -> FloatWidth {
    match td {
        TD::Float(hdf5::types::FloatSize::U4) => FloatWidth::F32,
        _ => FloatWidth::F64,
    }
}

fn read_column(g: &Group, name: &str, n: usize) -> Result<ObsColumn> {
    let col = match node(g, name) {
        None => bail!("missing"),
        Some(Node::Dataset(ds)) => {
            // anndata 0.7: codes here, categories in `__categories/<name>`.
            if ds.attr_names()?.iter().any(|a| a == "categories") {
                match node(g, &format!("__categories/{name}")) {
                    Some(Node::Dataset(c)) => codes_and_categories(&ds, &c)?,
                    _ => bail!("categorical codes without `__categories/{name}`"),
                }
            } else {
                let td = descriptor(&ds)?;
                if is_string_type(&td) {
                    ObsColumn::Text(read_strings(&ds)?)
                } else if matches!(td, TD::Boolean) {
                    ObsColumn::Bool(read_sel::<bool>(&ds, Sel::All)?)
                } else if matches!(td, TD::Integer(_) | TD::Unsigned(_) | TD::Float(_)) {
                    if ds.ndim() != 1 {
                        bail!("expected a 1-D column, found shape {:?}", ds.shape());
                    }
                    match read_ints(&ds)? {
                        Some((values, width)) => ObsColumn::Int(IntColumn { values, width, mask: None }),
                        None => ObsColumn::Numeric(read_f64(&ds)?, float_width(&td)),
                    }
                } else {
                    bail!("unsupported column type {td}");
                }
            }
        }
        Some(Node::Group(sub)) => {
            let enc = attr_string(&sub, "encoding-type")?.unwrap_or_default();
            let ds = |m: &str| -> Result<HDataset> {
                match node(&sub, m) {
                    Some(Node::Dataset(d)) => Ok(d),
                    _ => bail!("{enc} column without `{m}`"),
                }
            };
            match enc.as_str() {
                "categorical" => {
                    let mut col = codes_and_categories(&ds("codes")?, &*ds("categories")?)?;
                    // (pandas' ordered flag, written back by the outputs; a flag that does not read is unordered)
                    let has = sub.attr_names()?.iter().any(|a| a == "ordered");
                    let ordered = has && sub.attr("ordered").and_then(|a| a.read_scalar::<bool>()).unwrap_or(false);
                    if let (true, ObsColumn::Categorical { store, .. }) = (ordered, &mut col) {
                        *store = CatStore::Ordered;
                    }
                    col
                }
                "nullable-integer" | "nullable-float" => {
                    let values = ds("values")?;
                    let m = read_sel::<bool>(&ds("mask")?, Sel::All)?;
                    if m.len() != values.size() {
                        bail!("{} values but {} mask entries", values.size(), m.len());
                    }
                    // (a nullable-float column stays floats, whatever its values' type)
                    let ints = if enc == "nullable-integer" { read_ints(&values)? } else { None };
                    match ints {
                        Some((values, width)) => ObsColumn::Int(IntColumn { values, width, mask: Some(m) }),
                        None => {
                            let v = read_f64(&values)?;
                            let width = float_width(&descriptor(&values)?);
                            ObsColumn::Numeric(v.into_iter().zip(m).map(|(v, m)| if m { f64::NAN } else { v }).collect(), width)
                        }
                    }
                }
                "nullable-boolean" => {
                    let v = read_sel::<bool>(&ds("values")?, Sel::All)?;
                    let m = read_sel::<bool>(&ds("mask")?, Sel::All)?;
                    let codes = v.iter().zip(&m).map(|(&v, &m)| if m { -1 } else { v as i32 }).collect();
                    ObsColumn::Categorical { codes, categories: vec!["False".into(), "True".into()], int_categories: None, store: CatStore::NullableBool }
                }
                "nullable-string-array" => {
                    let v = read_strings(&*ds("values")?)?;
                    let m = read_sel::<bool>(&ds("mask")?, Sel::All)?;
                    categorical_from(v.into_iter().zip(m).map(|(v, m)| (!m).then_some(v)).collect())
                }
                other => bail!("unsupported column encoding {other:?}"),
            }
        }
    };
    if col.len() != n {
        bail!("{} values but the index has {n}", col.len());
    }
    Ok(col)
}

// ------------------------------------------------------------------------------------------------
// obsm

/// Column 0 of `obsm/<key>` (a 1-D or 2-D dense array, or the first column of a dataframe, as
/// anndata stores a pandas DataFrame put in obsm); `None` when absent.
pub fn read_obsm_column0(root: &Group, path: &str) -> Result<Option<Vec<f64>>> {
    let field = path.trim_start_matches('/');
    match node(root, path) {
        None => Ok(None),
        Some(Node::Group(g)) => {
            if attr_string(&g, "encoding-type")?.as_deref() != Some("dataframe") {
                bail!("{field}: expected a dense array (cells × k) or a dataframe, found a group");
            }
            let frame = read_frame(root, path)?;
            let Some(first) = attr_strings(&g, "column-order")?.and_then(|o| o.into_iter().next()) else {
                bail!("{field}: a dataframe without columns");
            };
            if let Some((_, why)) = frame.unreadable.iter().find(|(n, _)| *n == first) {
                bail!("{field}/{first}: {why}");
            }
            match frame.column(&first).and_then(|c| c.numbers()) {
                Some(v) => Ok(Some(v)),
                None => bail!("{field}/{first}: expected numbers in the dataframe's first column"),
            }
        }
        Some(Node::Dataset(ds)) => {
            let shape = ds.shape();
            let v = match shape.len() {
                1 => read_f64(&ds).with_context(|| field.to_string())?,
                2 if shape[1] >= 1 => {
                    if shape[0] == 0 {
                        Vec::new()
                    } else {
                        read_f64_2d_col0(&ds).with_context(|| field.to_string())?
                    }
                }
                _ => bail!("{field}: expected shape (cells,) or (cells, k ≥ 1), found {shape:?}"),
            };
            Ok(Some(v))
        }
    }
}

fn read_f64_2d_col0(ds: &HDataset) -> Result<Vec<f64>> {
    let a = match descriptor(ds)? {
        TD::Integer(_) | TD::Unsigned(_) | TD::Float(_) => ds.read_slice_2d::<f64, _>((.., 0..1)).map_err(|e| read_failure(ds, &ds.filters(), e))?,
        other => bail!("expected numbers, found HDF5 type {other}"),
    };
    Ok(a.into_raw_vec_and_offset().0)
}

// ------------------------------------------------------------------------------------------------
// The SpliceVI layouts

/// `layers` is the path of the layers group ("layers" or "mod/<m>/layers").
fn layer_error(file: &str, layers: &str, layer: &str, flag: &str, root: &Group) -> anyhow::Error {
    let avail = members(root, layers);
    DataError::new(
        file,
        &format!("{layers}/{layer}"),
        format!("missing layer {layer:?} (set by {flag}); layers present: {}", list(&avail)),
    )
    .into()
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")
    }
}

fn check_shape(file: &str, m: &Matrix, rows: usize, cols: usize, what: &str) -> Result<()> {
    if m.shape != (rows, cols) {
        return Err(DataError::new(
            file,
            &m.field,
            format!("shape {} × {} but there are {rows} cells and {cols} {what}", m.shape.0, m.shape.1),
        )
        .into());
    }
    Ok(())
}

/// Read a matrix with a value rule; value errors name the cell and feature.
fn read_checked(
    file: &str,
    m: &Matrix,
    rule: ValueRule,
    cells: &[String],
    kind: &'static str,
    features: &[String],
) -> Result<(String, Csr<f32>)> {
    let mut tr = ValueTracker::new(rule);
    let csr = m.read_csr(&mut tr).map_err(|e| anyhow!("{file}: {e:#}"))?;
    tr.into_result(file, &m.field, cells, kind, features)?;
    Ok((m.field.clone(), csr))
}

/// Event ids of the splicing var table as optional strings (`None` = missing), and whether the column is
/// numeric (then ATSEs sort numerically, as pandas does).
pub fn event_ids(col: &ObsColumn) -> (Vec<Option<String>>, bool) {
    match col {
        ObsColumn::Categorical { codes, categories, .. } => {
            (codes.iter().map(|&c| (c >= 0).then(|| categories[c as usize].clone())).collect(), false)
        }
        ObsColumn::Text(v) => (v.iter().map(|s| Some(s.clone())).collect(), false),
        ObsColumn::Numeric(v, _) => (v.iter().map(|&x| x.is_finite().then(|| number_label(x))).collect(), true),
        ObsColumn::Int(c) => (c.iter().map(|v| v.map(|v| v.to_string())).collect(), true),
        ObsColumn::Bool(v) => (v.iter().map(|&b| Some(if b { "True" } else { "False" }.to_string())).collect(), false),
    }
}

/// Reorder `frame`'s columns to the cells `cells` (by name when the index differs).
/// The row of `frame` (the MuData's global obs) holding each of `cells` (the modalities' order), by
/// name; None when the orders agree. Whatever is indexed like the global obs (its columns, the global
/// obsm) is reordered with these rows, as mudata matches them.
fn frame_rows(file: &str, frame: &Frame, cells: &[String]) -> Result<Option<Vec<usize>>> {
    if frame.index == cells {
        return Ok(None);
    }
    let pos: HashMap<&str, usize> = frame.index.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
    let mut rows = Vec::with_capacity(cells.len());
    for (i, c) in cells.iter().enumerate() {
        match pos.get(c.as_str()) {
            Some(&r) => rows.push(r),
            None => {
                return Err(DataError::new(file, &frame.field, "cell of the modalities is missing from this obs index")
                    .cell(i, cells)
                    .into())
            }
        }
    }
    Ok(Some(rows))
}

fn take_rows(c: &ObsColumn, rows: &[usize]) -> ObsColumn {
    match c {
        ObsColumn::Categorical { codes, categories, int_categories, store } => ObsColumn::Categorical {
            codes: rows.iter().map(|&r| codes[r]).collect(),
            categories: categories.clone(),
            int_categories: *int_categories,
            store: *store,
        },
        ObsColumn::Numeric(v, w) => ObsColumn::Numeric(rows.iter().map(|&r| v[r]).collect(), *w),
        ObsColumn::Int(c) => ObsColumn::Int(c.take(rows)),
        ObsColumn::Text(v) => ObsColumn::Text(rows.iter().map(|&r| v[r].clone()).collect()),
        ObsColumn::Bool(v) => ObsColumn::Bool(rows.iter().map(|&r| v[r]).collect()),
    }
}

/// The first name that occurs twice: (its first row, the repeat's row).
pub(crate) fn first_repeat(names: &[String]) -> Option<(usize, usize)> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        if let Some(&first) = seen.get(n.as_str()) {
            return Some((first, i));
        }
        seen.insert(n, i);
    }
    None
}

/// No size factors under `opts.size_factor_key` in `groups`: the row sums stand in for the default key
/// (data without size factors), but a key the user named must exist (a misspelling would otherwise
/// train on row sums without a word).
pub fn size_factor_key_absent(file: &str, opts: &DataOptions, places: &[String]) -> Result<()> {
    let default = DataOptions::default().size_factor_key;
    if opts.size_factor_key == default {
        return Ok(());
    }
    Err(DataError::new(file, &places[0], format!("no size factors {:?} (set by --size-factor-key): looked for {}; without the flag, `{default}` is used where present, else the expression row sums", opts.size_factor_key, places.join(" and "))).into())
}

/// The splicing part of an AnnData at `base` ("" for a root .h5ad, "mod/splicing" in a .h5mu).
fn read_splicing_anndata(file: &str, root: &Group, base: &str, opts: &DataOptions, checks: &CheckOptions, cells: &[String], raw: &mut RawData) -> Result<()> {
    let integer_counts = checks.require_integer_splicing;
    let p = |rel: &str| if base.is_empty() { rel.to_string() } else { format!("{base}/{rel}") };
    let var = read_frame(root, &p("var")).map_err(|e| anyhow!("{file}: {e:#}"))?;
    let nj = var.index.len();
    // Junctions are named by var's `junction_id` (SpliceVI's coordinates; its var index may be a plain
    // row number), else by the var index. Names must tell junctions apart (outputs are indexed by them,
    // --junctions looks them up), so a junction_id that repeats gives way to the index.
    raw.junction_names = match var.column("junction_id").map(|c| c.as_strings()) {
        Some(ids) => match first_repeat(&ids) {
            None => ids,
            Some((a, b)) => {
                eprintln!(
                    "warning: {file}: {}/junction_id repeats {:?} (junctions {a} and {b}): junctions are named by the var index instead",
                    var.field, ids[b]
                );
                var.index.clone()
            }
        },
        None => var.index.clone(),
    };
    raw.junction_gene_names = var.column("gene_name").map(|c| c.as_strings()).unwrap_or_default();
    let ev_field = format!("{}/{}", var.field, opts.event_id_key);
    let ev = match var.column(&opts.event_id_key) {
        Some(c) => c,
        None => {
            let why = var.unreadable.iter().find(|(n, _)| n == &opts.event_id_key).map(|(_, w)| format!(" (unreadable: {w})"));
            return Err(DataError::new(
                file,
                &ev_field,
                format!(
                    "no ATSE id column {:?}{} (set by --event-id-key); columns present: {}",
                    opts.event_id_key,
                    why.unwrap_or_default(),
                    list(&var.column_names())
                ),
            )
            .into());
        }
    };
    let (ids, numeric) = event_ids(ev);
    raw.event_ids = (ev_field, ids, numeric);

    let layer = |name: &str| -> Result<Option<Matrix>> {
        let m = open_matrix(root, &p(&format!("layers/{name}"))).map_err(|e| anyhow!("{file}: {e:#}"))?;
        if let Some(m) = &m {
            check_shape(file, m, cells.len(), nj, "junctions (splicing var)")?;
        }
        Ok(m)
    };
    let k = layer(&opts.junc_counts_layer)?;
    let n = layer(&opts.atse_counts_layer)?;
    let r = layer(&opts.junc_ratio_layer)?;
    let m = layer(&opts.psi_mask_layer)?;
    let psi_only = k.is_none() && n.is_none() && r.is_some() && m.is_some();
    if k.is_none() && n.is_none() && r.is_some() && m.is_none() {
        // (model.md §14.2: a mask is required, an observed ψ = 0 cannot be told from a missing one)
        return Err(DataError::new(
            file,
            &p(&format!("layers/{}", opts.psi_mask_layer)),
            format!(
                "PSI-only input ({:?} without the count layers {:?} and {:?}; trained with the BCE loss) needs a mask layer: missing {:?} (set by --psi-mask-layer), without which an observed PSI of 0 cannot be told from an unobserved one; layers present: {}",
                opts.junc_ratio_layer,
                opts.junc_counts_layer,
                opts.atse_counts_layer,
                opts.psi_mask_layer,
                list(&members(root, &p("layers")))
            ),
        )
        .into());
    }
    if !psi_only {
        if k.is_none() {
            return Err(layer_error(file, &p("layers"), &opts.junc_counts_layer, "--junc-counts-layer", root));
        }
        if n.is_none() {
            return Err(layer_error(file, &p("layers"), &opts.atse_counts_layer, "--atse-counts-layer", root));
        }
    }
    let jn = raw.junction_names.clone();
    let rd = |m: &Option<Matrix>, rule| m.as_ref().map(|m| read_checked(file, m, rule, cells, "junction", &jn)).transpose();
    // k, junc_ratio and psi_mask are read in row blocks while the entries are built (CSC ones whole).
    let rows = |m: &Option<Matrix>, rule| -> Result<Option<(String, Layer)>> {
        let Some(mat) = m else { return Ok(None) };
        Ok(Some(match mat.row_source(file, rule, checks.row_block_entries)? {
            Some(src) => (mat.field.clone(), Layer::Rows(Box::new(src))),
            None => {
                let (f, csr) = read_checked(file, mat, rule, cells, "junction", &jn)?;
                (f, Layer::Whole(csr))
            }
        }))
    };
    raw.n = rd(&n, ValueRule::counts(integer_counts))?;
    raw.k = rows(&k, ValueRule::counts(integer_counts))?;
    raw.junc_ratio = rows(&r, ValueRule::PSI)?;
    raw.psi_mask = rows(&m, ValueRule::MASK)?;
    Ok(())
}

/// A layer of the splicing modality beyond the ones the dataset is built from (a .h5mu's
/// `mod/<splicing>/layers/NAME`, a splicing-only .h5ad's `layers/NAME`; e.g. the resampled files'
/// `junc_ratio_original`), as CSR over the dataset's `cells` and `junctions`, its values checked by
/// `rule`. `Ok(Err(layers present))` when the file has no such layer; a Matrix Market directory
/// holds none.
pub fn read_splicing_layer(path: &Path, opts: &DataOptions, name: &str, rule: ValueRule, cells: &[String], junctions: &[String]) -> Result<std::result::Result<(String, Csr<f32>), Vec<String>>> {
    let file = path.display().to_string();
    if path.is_dir() {
        bail!("{file}: a Matrix Market directory holds no splicing layer `{name}`; give an .h5mu or .h5ad file that has it");
    }
    let f = open(path)?;
    let root: &Group = &f;
    let layers = if is_mudata(&f) { format!("mod/{}/layers", opts.splicing_modality) } else { "layers".to_string() };
    let Some(m) = open_matrix(root, &format!("{layers}/{name}")).map_err(|e| anyhow!("{file}: {e:#}"))? else {
        return Ok(Err(members(root, &layers)));
    };
    check_shape(&file, &m, cells.len(), junctions.len(), "junctions (splicing var)")?;
    read_checked(&file, &m, rule, cells, "junction", junctions).map(Ok)
}

/// Read a MuData file in the SpliceVI layout (model.md §1.1).
pub fn read_h5mu(path: &Path, opts: &DataOptions, checks: &CheckOptions) -> Result<RawData> {
    let file = path.display().to_string();
    let f = open(path)?;
    let root: &Group = &f;
    let mods = members(root, "mod");
    let rna = format!("mod/{}", opts.rna_modality);
    let spl = format!("mod/{}", opts.splicing_modality);
    for (m, flag) in [(&opts.rna_modality, "--rna-modality"), (&opts.splicing_modality, "--splicing-modality")] {
        if !mods.contains(m) {
            return Err(DataError::new(&file, &format!("mod/{m}"), format!("no modality {m:?} (set by {flag}); modalities present: {}", list(&mods))).into());
        }
    }
    let rna_obs = read_frame(root, &format!("{rna}/obs")).map_err(|e| anyhow!("{file}: {e:#}"))?;
    let spl_obs = read_frame(root, &format!("{spl}/obs")).map_err(|e| anyhow!("{file}: {e:#}"))?;
    let cells = rna_obs.index.clone();
    if spl_obs.index.len() != cells.len() {
        return Err(DataError::new(
            &file,
            &format!("{}/_index", spl_obs.field),
            format!("{} cells but {}/_index has {}; the modalities must hold the same cells in the same order", spl_obs.index.len(), rna_obs.field, cells.len()),
        )
        .into());
    }
    if let Some(i) = (0..cells.len()).find(|&i| spl_obs.index[i] != cells[i]) {
        return Err(DataError::new(
            &file,
            &format!("{}/_index", spl_obs.field),
            format!("cell name {:?} differs from {:?} in {}/_index at the same row; the modalities must hold the same cells in the same order", spl_obs.index[i], cells[i], rna_obs.field),
        )
        .cell(i, &spl_obs.index)
        .into());
    }
    let mut raw = RawData { file: file.clone(), cell_names: cells.clone(), ..Default::default() };

    // Expression.
    let var = read_frame(root, &format!("{rna}/var")).map_err(|e| anyhow!("{file}: {e:#}"))?;
    raw.gene_names = var.index.clone();
    let xpath = match &opts.rna_layer {
        Some(l) if l != "X" => format!("{rna}/layers/{l}"),
        _ => format!("{rna}/X"),
    };
    let x = match open_matrix(root, &xpath).map_err(|e| anyhow!("{file}: {e:#}"))? {
        Some(x) => x,
        None => match &opts.rna_layer {
            Some(l) if l != "X" => return Err(layer_error(&file, &format!("{rna}/layers"), l, "--rna-layer", root)),
            _ => return Err(DataError::new(&file, &xpath, "missing expression matrix X").into()),
        },
    };
    check_shape(&file, &x, cells.len(), raw.gene_names.len(), "genes (rna var)")?;
    raw.expression = Some(read_checked(&file, &x, ValueRule::expression(checks.require_integer_expression), &cells, "gene", &raw.gene_names)?);

    read_splicing_anndata(&file, root, &spl, opts, checks, &cells, &mut raw)?;

    // The MuData's global obs: its rows may be in another order than the modalities' (mudata matches
    // them by name), and the global obsm follows its rows.
    let global = if node(root, "obs").is_some() { Some(read_frame(root, "obs").map_err(|e| anyhow!("{file}: {e:#}"))?) } else { None };
    let global_rows = match &global {
        Some(g) => frame_rows(&file, g, &cells)?,
        None => None,
    };

    // Size factors: the MuData's obsm first, then the rna modality's.
    for base in ["", rna.as_str()] {
        let p = if base.is_empty() { format!("obsm/{}", opts.size_factor_key) } else { format!("{base}/obsm/{}", opts.size_factor_key) };
        if let Some(v) = read_obsm_column0(root, &p).map_err(|e| anyhow!("{file}: {e:#}"))? {
            let v = match (base.is_empty(), &global_rows, &global) {
                (true, Some(rows), Some(g)) => {
                    if v.len() != g.index.len() {
                        return Err(DataError::new(&file, &p, format!("{} rows for the {} cells of {}", v.len(), g.index.len(), g.field)).into());
                    }
                    rows.iter().map(|&r| v[r]).collect()
                }
                _ => v,
            };
            raw.library_size = Some((p, v));
            break;
        }
    }
    if raw.library_size.is_none() {
        let key = &opts.size_factor_key;
        size_factor_key_absent(&file, opts, &[format!("obsm/{key}"), format!("{rna}/obsm/{key}")])?;
    }

    // Obs tables, in lookup order: global, rna, splicing.
    if let Some(g) = global {
        let columns = match &global_rows {
            None => g.columns.clone(),
            Some(rows) => g.columns.iter().map(|(n, c)| (n.clone(), take_rows(c, rows))).collect(),
        };
        raw.obs_tables.push(ObsTable { field: g.field.clone(), modality: None, columns, unreadable: g.unreadable.clone() });
    }
    for (m, fr) in [(&opts.rna_modality, rna_obs), (&opts.splicing_modality, spl_obs)] {
        raw.obs_tables.push(ObsTable { field: fr.field.clone(), modality: Some(m.clone()), columns: fr.columns, unreadable: fr.unreadable });
    }
    raw.obs_fill_modality = Some(opts.rna_modality.clone());
    Ok(raw)
}

/// Read a splicing-only AnnData (.h5ad): the splicing layers at the root, no expression.
pub fn read_h5ad(path: &Path, opts: &DataOptions, checks: &CheckOptions) -> Result<RawData> {
    let file = path.display().to_string();
    let f = open(path)?;
    let root: &Group = &f;
    let obs = read_frame(root, "obs").map_err(|e| anyhow!("{file}: {e:#}"))?;
    let cells = obs.index.clone();
    let mut raw = RawData { file: file.clone(), cell_names: cells.clone(), ..Default::default() };
    read_splicing_anndata(&file, root, "", opts, checks, &cells, &mut raw)?;
    let p = format!("obsm/{}", opts.size_factor_key);
    match read_obsm_column0(root, &p).map_err(|e| anyhow!("{file}: {e:#}"))? {
        Some(v) => raw.library_size = Some((p, v)),
        None => size_factor_key_absent(&file, opts, &[format!("obsm/{}", opts.size_factor_key)])?,
    }
    raw.obs_tables.push(ObsTable { field: obs.field.clone(), modality: None, columns: obs.columns, unreadable: obs.unreadable });
    Ok(raw)
}
