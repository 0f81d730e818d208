//! The data invariants of model.md §14.4 and the construction of the observed splicing entries.
//!
//! Every violation becomes a [`DataError`] that names the file, the field (HDF5 path or file name) and,
//! where there is one, the first offending cell and feature by index and name, e.g.
//! `data.h5mu: mod/splicing/layers/cell_by_junction_matrix: cell 17 ("AAAC-1"), junction 42 ("chr1:100-200"): k = 5 > n = 3`.
//!
//! Value checks (finite, non-negative, integer, range) run while a matrix is read (see [`ValueTracker`]);
//! the cross-matrix checks (k ≤ n, k > 0 ⇒ n > 0, n constant over the junctions of an ATSE in a cell,
//! junc_ratio / psi_mask agreeing with the counts) run in [`build_splicing`]; [`check_dataset`] re-checks an
//! in-memory [`Dataset`] (e.g. one made by the simulator).

// DataError is large, but it is only built once, on the way out.
#![allow(clippy::result_large_err)]

use super::dataset::{Csr, Dataset, Splicing};
use std::fmt;

/// Absolute tolerance when comparing a file's `junc_ratio` with k / n.
pub const PSI_TOLERANCE: f64 = 1e-5;

/// A feature (column) named in an error: junction, gene, ATSE.
#[derive(Clone, Debug, PartialEq)]
pub struct Feature {
    pub kind: &'static str,
    pub index: usize,
    pub name: String,
}

/// One violated invariant, with enough context to find it in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct DataError {
    /// The input file (or directory) as given.
    pub file: String,
    /// The field inside it: an HDF5 path such as `mod/splicing/layers/cell_by_junction_matrix`, or a file name.
    pub field: String,
    /// First offending cell (row index, name).
    pub cell: Option<(usize, String)>,
    /// First offending feature of that cell.
    pub feature: Option<Feature>,
    pub message: String,
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: ", self.file, self.field)?;
        let mut located = false;
        if let Some((i, name)) = &self.cell {
            write!(f, "cell {i} ({name:?})")?;
            located = true;
        }
        if let Some(ft) = &self.feature {
            if located {
                write!(f, ", ")?;
            }
            write!(f, "{} {} ({:?})", ft.kind, ft.index, ft.name)?;
            located = true;
        }
        if located {
            write!(f, ": ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for DataError {}

impl DataError {
    pub fn new(file: &str, field: &str, message: impl Into<String>) -> Self {
        DataError { file: file.to_string(), field: field.to_string(), cell: None, feature: None, message: message.into() }
    }
    pub fn cell(mut self, index: usize, names: &[String]) -> Self {
        self.cell = Some((index, name_at(names, index)));
        self
    }
    pub fn feature(mut self, kind: &'static str, index: usize, names: &[String]) -> Self {
        self.feature = Some(Feature { kind, index, name: name_at(names, index) });
        self
    }
}

fn name_at(names: &[String], i: usize) -> String {
    names.get(i).cloned().unwrap_or_else(|| format!("#{i}"))
}

/// What values a matrix may hold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ValueRule {
    /// Word used in messages ("count", "junc_ratio", "psi_mask", "size factor").
    pub what: &'static str,
    pub integer: bool,
    /// Inclusive upper bound, if any (1 for PSI and masks).
    pub max: Option<f64>,
    /// Appended to a non-integer error (how to relax the check).
    pub integer_hint: &'static str,
}

/// The largest count accepted: 2²⁴, up to which every integer is exact in f32, the precision the
/// engine holds counts in. (Single-cell counts are far below; a larger one is a unit or scaling error,
/// and past it the likelihoods read rounded counts: k ≠ Σ of its parts, negative losses.)
pub const MAX_COUNT: f64 = 16_777_216.0;
const MAX_COUNT_HINT: &str = " (2^24, the largest count held exactly in f32, the engine's precision for counts)";

/// The advice of a non-integer splicing count: the flag of the commands that take data options
/// (train, validate, evaluate --train); the analyses rewrite it (`posterior::load_for_run`).
pub const INTEGER_SPLICING_HINT: &str = " (the splicing likelihoods need integer counts; --require-integer-splicing false accepts others)";
/// The advice of a non-integer expression value (as [`INTEGER_SPLICING_HINT`]).
pub const INTEGER_EXPRESSION_HINT: &str = " (the count likelihoods ZINB, NB and Poisson assume integer counts, and the original's \
                                            length_norm layer is floored to integers; --require-integer-expression false accepts \
                                            other values, which scvi-tools only warns about)";

impl ValueRule {
    pub const fn counts(integer: bool) -> Self {
        ValueRule { what: "count", integer, max: Some(MAX_COUNT), integer_hint: INTEGER_SPLICING_HINT }
    }
    pub const fn expression(integer: bool) -> Self {
        ValueRule { what: "expression count", integer, max: Some(MAX_COUNT), integer_hint: INTEGER_EXPRESSION_HINT }
    }
    pub const PSI: ValueRule = ValueRule { what: "junc_ratio", integer: false, max: Some(1.0), integer_hint: "" };
    pub const MASK: ValueRule = ValueRule { what: "psi_mask", integer: true, max: Some(1.0), integer_hint: "" };
    pub const SIZE_FACTOR: ValueRule = ValueRule { what: "size factor", integer: false, max: None, integer_hint: "" };

    /// `None` when `v` is allowed, else a description of the problem.
    pub fn problem(&self, v: f64) -> Option<String> {
        let w = self.what;
        if !v.is_finite() {
            Some(format!("{w} {v} is not finite"))
        } else if v < 0.0 {
            Some(format!("{w} {v} is negative"))
        } else if self.integer && v.fract() != 0.0 {
            Some(format!("{w} {v} is not an integer{}", self.integer_hint))
        } else {
            let why = if self.max == Some(MAX_COUNT) { MAX_COUNT_HINT } else { "" };
            self.max.filter(|&m| v > m).map(|m| format!("{w} {v} is greater than {m}{why}"))
        }
    }
    #[inline]
    pub fn ok(&self, v: f64) -> bool {
        v.is_finite()
            && v >= 0.0
            && (!self.integer || v.fract() == 0.0)
            && self.max.is_none_or(|m| v <= m)
    }
}

/// A value that broke its [`ValueRule`], at (row, col) of the matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct BadValue {
    pub row: usize,
    pub col: usize,
    pub value: f64,
}

/// Applies a [`ValueRule`] to every value seen by a reader and remembers the first (row-major) offender,
/// whatever order the storage delivers values in (CSC delivers them column by column).
#[derive(Clone, Debug)]
pub struct ValueTracker {
    pub rule: ValueRule,
    pub first_bad: Option<BadValue>,
}

impl ValueTracker {
    pub fn new(rule: ValueRule) -> Self {
        ValueTracker { rule, first_bad: None }
    }
    /// True when `v` is allowed; otherwise records it and returns false.
    #[inline]
    pub fn accept(&mut self, row: usize, col: usize, v: f64) -> bool {
        if self.rule.ok(v) {
            return true;
        }
        let earlier = match &self.first_bad {
            None => true,
            Some(b) => (row, col) < (b.row, b.col),
        };
        if earlier {
            self.first_bad = Some(BadValue { row, col, value: v });
        }
        false
    }
    /// Turn the recorded offender (if any) into an error.
    pub fn into_result(
        self,
        file: &str,
        field: &str,
        cells: &[String],
        feature_kind: &'static str,
        features: &[String],
    ) -> Result<(), DataError> {
        match self.first_bad {
            None => Ok(()),
            Some(b) => Err(DataError::new(file, field, self.rule.problem(b.value).unwrap_or_default())
                .cell(b.row, cells)
                .feature(feature_kind, b.col, features)),
        }
    }
}

/// Junction → ATSE index with ATSEs in sorted order of their ids (as pandas' categorical does).
/// `ids[j]` is `None` for a missing id, which is an error. With `numeric`, ids sort as numbers (a numeric
/// pandas column sorts numerically).
pub fn atse_index(
    ids: &[Option<String>],
    numeric: bool,
    file: &str,
    field: &str,
    junction_names: &[String],
) -> Result<(Vec<u32>, Vec<String>), DataError> {
    if let Some(j) = ids.iter().position(|x| x.as_deref().is_none_or(str::is_empty)) {
        return Err(DataError::new(file, field, "missing ATSE id (every junction must belong to an ATSE)")
            .feature("junction", j, junction_names));
    }
    let mut uniq: Vec<&str> = ids.iter().map(|x| x.as_deref().unwrap()).collect();
    if numeric {
        let key = |s: &str| s.parse::<f64>().unwrap_or(f64::NAN);
        uniq.sort_by(|a, b| key(a).total_cmp(&key(b)));
    } else {
        uniq.sort_unstable();
    }
    uniq.dedup();
    let atse_ids: Vec<String> = uniq.iter().map(|s| s.to_string()).collect();
    let lookup: std::collections::HashMap<&str, u32> =
        atse_ids.iter().enumerate().map(|(a, s)| (s.as_str(), a as u32)).collect();
    let junc2atse = ids.iter().map(|x| lookup[x.as_deref().unwrap()]).collect();
    Ok((junc2atse, atse_ids))
}

/// The junctions of each ATSE, ascending (CSR: ATSE → junctions).
pub fn atse_members(junc2atse: &[u32], n_atse: usize) -> (Vec<usize>, Vec<u32>) {
    let mut indptr = vec![0usize; n_atse + 1];
    for &a in junc2atse {
        indptr[a as usize + 1] += 1;
    }
    for a in 0..n_atse {
        indptr[a + 1] += indptr[a];
    }
    let mut fill = indptr.clone();
    let mut members = vec![0u32; junc2atse.len()];
    for (j, &a) in junc2atse.iter().enumerate() {
        members[fill[a as usize]] = j as u32;
        fill[a as usize] += 1;
    }
    (indptr, members)
}

/// How a cell's row breaks the "n is the ATSE total on every junction of the ATSE" rule.
#[derive(Clone, Debug, PartialEq)]
pub enum AtseIssue {
    /// Junction `j` has n = `n` but junction `j0` of the same ATSE has `n0`.
    Differs { j: u32, n: f32, j0: u32, n0: f32, atse: u32 },
    /// Junction `j` has no entry (n = 0) while junction `j0` of its ATSE has `n0` > 0.
    Missing { j: u32, j0: u32, n0: f32, atse: u32 },
}

/// Per-cell check that the stored n entries cover whole ATSEs with one value each. Reuses scratch space
/// across cells (cost proportional to the row, not to the number of ATSEs).
pub struct AtseChecker<'a> {
    junc2atse: &'a [u32],
    members_ptr: Vec<usize>,
    members: Vec<u32>,
    /// Per ATSE: (first junction seen, its n, entries seen) for the current row.
    seen: Vec<(u32, f32, u32)>,
    touched: Vec<u32>,
}

impl<'a> AtseChecker<'a> {
    pub fn new(junc2atse: &'a [u32], n_atse: usize) -> Self {
        let (members_ptr, members) = atse_members(junc2atse, n_atse);
        AtseChecker { junc2atse, members_ptr, members, seen: vec![(0, 0.0, 0); n_atse], touched: Vec::new() }
    }

    pub fn atse_size(&self, a: usize) -> usize {
        self.members_ptr[a + 1] - self.members_ptr[a]
    }

    /// `cols` ascending, `ns` their n values (all > 0).
    pub fn check_row(&mut self, cols: &[u32], ns: &[f32]) -> Result<(), AtseIssue> {
        for &a in &self.touched {
            self.seen[a as usize].2 = 0;
        }
        self.touched.clear();
        let mut issue = None;
        for (&j, &n) in cols.iter().zip(ns) {
            let a = self.junc2atse[j as usize];
            let s = &mut self.seen[a as usize];
            if s.2 == 0 {
                *s = (j, n, 1);
                self.touched.push(a);
            } else {
                s.2 += 1;
                if n != s.1 && issue.is_none() {
                    issue = Some(AtseIssue::Differs { j, n, j0: s.0, n0: s.1, atse: a });
                }
            }
        }
        if let Some(i) = issue {
            return Err(i);
        }
        // An ATSE seen in this row must have all its junctions; report the lowest missing junction.
        let mut first_missing: Option<AtseIssue> = None;
        for &a in &self.touched {
            let s = self.seen[a as usize];
            if (s.2 as usize) < self.atse_size(a as usize) {
                let m = &self.members[self.members_ptr[a as usize]..self.members_ptr[a as usize + 1]];
                let j = *m.iter().find(|&&j| cols.binary_search(&j).is_err()).expect("a member is missing");
                if first_missing.as_ref().is_none_or(|f| matches!(f, AtseIssue::Missing { j: fj, .. } if j < *fj)) {
                    first_missing = Some(AtseIssue::Missing { j, j0: s.0, n0: s.1, atse: a });
                }
            }
        }
        first_missing.map_or(Ok(()), Err)
    }
}

/// A reader that hands out a splicing layer a block of rows at a time (an HDF5 CSR group or dense dataset):
/// [`build_splicing`] consumes each block as it goes, so only one block of k, junc_ratio and psi_mask is in
/// memory next to the dataset being built.
pub trait RowSource {
    /// Rows `r0..r1` for some `r1 > r0` of the source's choosing (at most `n_rows`), as a CSR whose row 0 is
    /// row `r0` (zeros dropped, columns ascending). A value breaking the layer's [`ValueRule`] is an error
    /// naming the first offender of the block in row-major order (blocks come in row order, so it is the
    /// first in the file).
    fn block(&mut self, r0: usize, cells: &[String], junctions: &[String]) -> anyhow::Result<Csr<f32>>;
    /// Stored entries of a sparse source (an upper bound of the non-zeros: explicit zeros are dropped when
    /// read); `None` for dense storage, whose size says nothing about the non-zeros.
    fn nnz_hint(&self) -> Option<usize>;
}

/// A cells × junctions splicing layer: read whole, or read in row blocks while the entries are built.
pub enum Layer {
    /// Already in memory (Matrix Market, CSC storage, tests); every value passed its rule.
    Whole(Csr<f32>),
    /// Read on demand, a block of rows at a time.
    Rows(Box<dyn RowSource>),
}

impl std::fmt::Debug for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Layer::Whole(m) => write!(f, "Layer::Whole({} × {}, {} entries)", m.n_rows, m.n_cols, m.nnz()),
            Layer::Rows(s) => match s.nnz_hint() {
                Some(n) => write!(f, "Layer::Rows(≤ {n} entries)"),
                None => write!(f, "Layer::Rows(dense)"),
            },
        }
    }
}

impl Layer {
    fn nnz_hint(&self) -> Option<usize> {
        match self {
            Layer::Whole(m) => Some(m.nnz()),
            Layer::Rows(s) => s.nnz_hint(),
        }
    }
}

/// Walks a [`Layer`] row by row in increasing order, holding at most one block of a [`Layer::Rows`].
struct RowCursor<'a> {
    layer: &'a mut Layer,
    block: Csr<f32>,
    r0: usize,
}

impl<'a> RowCursor<'a> {
    fn new(layer: &'a mut Layer) -> Self {
        RowCursor { layer, block: Csr::empty(0, 0), r0: 0 }
    }
    /// The matrix holding row `i` and the row's index in it (reads the next block when `i` is past it).
    fn at(&mut self, i: usize, cells: &[String], junctions: &[String]) -> anyhow::Result<(&Csr<f32>, usize)> {
        match self.layer {
            Layer::Whole(m) => Ok((m, i)),
            Layer::Rows(src) => {
                if i < self.r0 || i >= self.r0 + self.block.n_rows {
                    self.block = src.block(i, cells, junctions)?;
                    self.r0 = i;
                    anyhow::ensure!(self.block.n_rows > 0, "a row source returned no rows at row {i}");
                }
                Ok((&self.block, i - self.r0))
            }
        }
    }
    /// Columns and values of row `i`; rows must be asked for in increasing order.
    fn row(&mut self, i: usize, cells: &[String], junctions: &[String]) -> anyhow::Result<(&[u32], &[f32])> {
        let (m, r) = self.at(i, cells, junctions)?;
        Ok(m.row(r))
    }
    /// Columns of row `i` (also of a pattern-only matrix).
    fn cols(&mut self, i: usize, cells: &[String], junctions: &[String]) -> anyhow::Result<&[u32]> {
        let (m, r) = self.at(i, cells, junctions)?;
        Ok(m.cols(r))
    }
}

/// Inputs of [`build_splicing`]: the splicing matrices as CSR (cells × junctions, zeros dropped, columns
/// ascending within a row; every value of a whole matrix already passed its [`ValueRule`], a row source
/// checks its blocks as they are read), with names for messages.
pub struct SplicingInput<'a> {
    pub file: &'a str,
    pub cell_names: &'a [String],
    pub junction_names: Vec<String>,
    pub gene_names: Vec<String>,
    pub junc2atse: Vec<u32>,
    pub atse_ids: Vec<String>,
    /// (field, layer) of junction counts k.
    pub k: Option<(String, Layer)>,
    /// (field, matrix) of ATSE totals n: read whole, its arrays become the dataset's.
    pub n: Option<(String, Csr<f32>)>,
    pub junc_ratio: Option<(String, Layer)>,
    /// Only its pattern is used (its values are all 1 once read).
    pub psi_mask: Option<(String, Layer)>,
}

/// Walk two sorted column lists together, calling `f(j, a_pos, b_pos)` for every column in either.
fn merge_cols(a: &[u32], b: &[u32], mut f: impl FnMut(u32, Option<usize>, Option<usize>) -> Result<(), DataError>) -> Result<(), DataError> {
    let (mut p, mut q) = (0, 0);
    while p < a.len() || q < b.len() {
        let ja = a.get(p).copied().unwrap_or(u32::MAX);
        let jb = b.get(q).copied().unwrap_or(u32::MAX);
        if ja == jb {
            f(ja, Some(p), Some(q))?;
            p += 1;
            q += 1;
        } else if ja < jb {
            f(ja, Some(p), None)?;
            p += 1;
        } else {
            f(jb, None, Some(q))?;
            q += 1;
        }
    }
    Ok(())
}

/// Build the observed entries (n > 0) and check k ≤ n, k > 0 ⇒ n > 0, n constant and complete over the
/// junctions of an ATSE in each cell, and, when present, junc_ratio = k / n (within [`PSI_TOLERANCE`],
/// its value is then used as psi) and psi_mask = [n > 0]. Without counts (neither k nor n), the entries come
/// from psi_mask and the values from junc_ratio (`has_counts = false`, k = 0 and n = 1 as placeholders).
pub fn build_splicing(mut inp: SplicingInput<'_>) -> anyhow::Result<Splicing> {
    let file = inp.file;
    let cells = inp.cell_names;
    let jn = &inp.junction_names;
    let n_cells = cells.len();
    let n_junctions = jn.len();
    let n_atse = inp.atse_ids.len();
    let mut checker = AtseChecker::new(&inp.junc2atse, n_atse);
    let atse_name = |a: u32| inp.atse_ids[a as usize].clone();

    let mut out = Splicing {
        n_cells,
        n_junctions,
        indptr: Vec::with_capacity(n_cells + 1),
        has_counts: inp.n.is_some(),
        ..Default::default()
    };
    out.indptr.push(0);
    let mask_nnz = inp.psi_mask.as_ref().and_then(|(_, m)| m.nnz_hint());
    let mut ratio = inp.junc_ratio.as_mut().map(|(f, l)| (f.as_str(), RowCursor::new(l)));
    let mut mask = inp.psi_mask.as_mut().map(|(f, l)| (f.as_str(), RowCursor::new(l)));

    match (inp.k.as_mut(), inp.n.as_ref()) {
        (Some((kf, k)), Some((nf, n))) => {
            let kf = kf.as_str();
            let mut k = RowCursor::new(k);
            // The entries are n's: its indices and values become the junction and n arrays (moved after
            // the checks, not copied); only k and PSI are new.
            out.k.reserve_exact(n.nnz());
            out.psi.reserve_exact(n.nnz());
            let mut kk: Vec<f32> = Vec::new();
            let mut psi: Vec<f32> = Vec::new();
            for i in 0..n_cells {
                let (nc, nv) = n.row(i);
                let (kc, kv) = k.row(i, cells, jn)?;
                kk.clear();
                kk.resize(nc.len(), 0.0);
                merge_cols(kc, nc, |j, pk, pn| match (pk, pn) {
                    (Some(t), None) => Err(DataError::new(file, kf, format!("k = {} > 0 but n = 0 in {nf}", kv[t]))
                        .cell(i, cells)
                        .feature("junction", j as usize, jn)),
                    (Some(t), Some(p)) if kv[t] > nv[p] => {
                        Err(DataError::new(file, kf, format!("k = {} > n = {}", kv[t], nv[p]))
                            .cell(i, cells)
                            .feature("junction", j as usize, jn))
                    }
                    (Some(t), Some(p)) => {
                        kk[p] = kv[t];
                        Ok(())
                    }
                    _ => Ok(()),
                })?;
                checker.check_row(nc, nv).map_err(|issue| {
                    let (j, msg) = match issue {
                        AtseIssue::Differs { j, n, j0, n0, atse } => (
                            j,
                            format!(
                                "n = {n} differs from n = {n0} at junction {j0} ({:?}) of the same ATSE {:?} \
                                 (n is the ATSE total, equal on all its junctions)",
                                jn[j0 as usize],
                                atse_name(atse)
                            ),
                        ),
                        AtseIssue::Missing { j, j0, n0, atse } => (
                            j,
                            format!(
                                "n = 0 but junction {j0} ({:?}) of the same ATSE {:?} has n = {n0} \
                                 (n is the ATSE total, equal on all its junctions)",
                                jn[j0 as usize],
                                atse_name(atse)
                            ),
                        ),
                    };
                    DataError::new(file, nf, msg).cell(i, cells).feature("junction", j as usize, jn)
                })?;
                psi.clear();
                psi.extend(kk.iter().zip(nv).map(|(&k, &n)| k / n));
                if let Some((rf, r)) = ratio.as_mut() {
                    let rf: &str = rf;
                    let (rc, rv) = r.row(i, cells, jn)?;
                    merge_cols(rc, nc, |j, pr, pn| {
                        let fail = |m: String| Err(DataError::new(file, rf, m).cell(i, cells).feature("junction", j as usize, jn));
                        match (pr, pn) {
                            (Some(t), None) => fail(format!("junc_ratio = {} but n = 0 (unobserved) in {nf}", rv[t])),
                            (pr, Some(p)) => {
                                let rv = pr.map_or(0.0, |t| rv[t]);
                                let want = kk[p] as f64 / nv[p] as f64;
                                if (rv as f64 - want).abs() > PSI_TOLERANCE {
                                    fail(format!("junc_ratio = {rv} but k / n = {} / {} = {want}", kk[p], nv[p]))
                                } else {
                                    psi[p] = rv;
                                    Ok(())
                                }
                            }
                            (None, None) => Ok(()),
                        }
                    })?;
                }
                if let Some((mf, m)) = mask.as_mut() {
                    let mf: &str = mf;
                    let mc = m.cols(i, cells, jn)?;
                    merge_cols(mc, nc, |j, pm, pn| {
                        let fail = |m: String| Err(DataError::new(file, mf, m).cell(i, cells).feature("junction", j as usize, jn));
                        match (pm, pn) {
                            (Some(_), None) => fail(format!("psi_mask = 1 but n = 0 in {nf}")),
                            (None, Some(p)) => fail(format!("psi_mask = 0 but n = {} > 0 in {nf}", nv[p])),
                            _ => Ok(()),
                        }
                    })?;
                }
                out.k.extend_from_slice(&kk);
                out.psi.extend_from_slice(&psi);
                out.indptr.push(out.k.len());
            }
            drop((ratio, mask));
            let (_, n) = inp.n.take().expect("matched Some");
            let (lo, hi) = (n.indptr[0], n.indptr[n_cells]);
            let (mut junction, mut nv) = (n.indices, n.values);
            junction.truncate(hi);
            nv.truncate(hi);
            if lo > 0 {
                junction.drain(..lo);
                nv.drain(..lo);
            }
            out.junction = junction;
            out.n = nv;
        }
        (Some((kf, _)), None) => {
            return Err(DataError::new(file, kf, "ATSE totals n are missing: k and n must be given together").into());
        }
        (None, Some((nf, _))) => {
            return Err(DataError::new(file, nf, "junction counts k are missing: k and n must be given together").into());
        }
        (None, None) => {
            let ((rf, r), (mf, m)) = match (ratio.as_mut(), mask.as_mut()) {
                (Some(r), Some(m)) => (r, m),
                (Some((rf, _)), None) => {
                    return Err(DataError::new(
                        file,
                        *rf,
                        "PSI-only input (no junction counts k or ATSE totals n; trained with the BCE loss) needs a mask layer \
                         (psi_mask): without it an observed PSI of 0 cannot be told from an unobserved one",
                    )
                    .into())
                }
                _ => {
                    return Err(DataError::new(
                        file,
                        "splicing layers",
                        "neither junction counts k and ATSE totals n nor junc_ratio and psi_mask were found",
                    )
                    .into())
                }
            };
            let (rf, mf): (&str, &str) = (rf, mf);
            // The output arrays are sized once when the mask's entries are known (no doubling while they
            // grow; a sparse source's bound counts explicit zeros, so the slack is returned at the end). A
            // dense mask's size is cells × junctions, never reserved: the arrays grow instead.
            let cap = mask_nnz.unwrap_or(0);
            for v in [&mut out.k, &mut out.n, &mut out.psi] {
                v.reserve_exact(cap);
            }
            out.junction.reserve_exact(cap);
            for i in 0..n_cells {
                let mc = m.cols(i, cells, jn)?;
                let ones = vec![1.0f32; mc.len()];
                checker.check_row(mc, &ones).map_err(|issue| {
                    let (j, j0, atse) = match issue {
                        AtseIssue::Differs { j, j0, atse, .. } | AtseIssue::Missing { j, j0, atse, .. } => (j, j0, atse),
                    };
                    DataError::new(
                        file,
                        mf,
                        format!(
                            "psi_mask = 0 but junction {j0} ({:?}) of the same ATSE {:?} has psi_mask = 1 \
                             (the mask is constant over an ATSE)",
                            jn[j0 as usize],
                            atse_name(atse)
                        ),
                    )
                    .cell(i, cells)
                    .feature("junction", j as usize, jn)
                })?;
                let (rc, rv) = r.row(i, cells, jn)?;
                let mut psi = vec![0.0f32; mc.len()];
                merge_cols(rc, mc, |j, pr, pm| match (pr, pm) {
                    (Some(t), None) => Err(DataError::new(file, rf, format!("junc_ratio = {} but psi_mask = 0", rv[t]))
                        .cell(i, cells)
                        .feature("junction", j as usize, jn)),
                    (Some(t), Some(p)) => {
                        psi[p] = rv[t];
                        Ok(())
                    }
                    _ => Ok(()),
                })?;
                out.junction.extend_from_slice(mc);
                out.k.extend(std::iter::repeat_n(0.0, mc.len()));
                out.n.extend(std::iter::repeat_n(1.0, mc.len()));
                out.psi.extend_from_slice(&psi);
                out.indptr.push(out.junction.len());
            }
            for v in [&mut out.k, &mut out.n, &mut out.psi] {
                v.shrink_to_fit();
            }
            out.junction.shrink_to_fit();
        }
    }
    out.junc2atse = inp.junc2atse;
    out.atse_ids = inp.atse_ids;
    out.junction_names = inp.junction_names;
    out.gene_names = if inp.gene_names.is_empty() { vec![String::new(); n_junctions] } else { inp.gene_names };
    Ok(out)
}

/// Options of the checks that depend on what the model will do with the data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CheckOptions {
    /// Expression values must be integers (count likelihoods: ZINB, NB, Poisson).
    pub require_integer_expression: bool,
    /// Junction counts k and ATSE totals n must be integers (binomial, beta-binomial and
    /// Dirichlet-multinomial likelihoods; only the BCE fallback does without).
    pub require_integer_splicing: bool,
    /// Stored entries of k, junc_ratio and psi_mask a load reads at a time when it reads them in row
    /// blocks (the bound of what the read holds besides the dataset; tests use tiny values to cross every
    /// block boundary). Not a check: ignored by [`check_dataset`].
    pub row_block_entries: usize,
}

/// Default [`CheckOptions::row_block_entries`]: 16 MB of f64 values and as much of indices in flight.
pub const ROW_BLOCK_ENTRIES: usize = 1 << 21;

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { require_integer_expression: true, require_integer_splicing: true, row_block_entries: ROW_BLOCK_ENTRIES }
    }
}

/// Check every invariant on an in-memory dataset (sizes, sorted indices, value rules, k ≤ n, ATSE
/// consistency, covariate lengths). Loaders guarantee these; this catches datasets built in code.
pub fn check_dataset(ds: &Dataset, opts: &CheckOptions) -> Result<(), DataError> {
    let file = ds.source.as_str();
    let cells = &ds.cell_names;
    let nc = cells.len();
    let err = |field: &str, m: String| DataError::new(file, field, m);

    if let Some(x) = &ds.expression {
        if x.n_rows != nc || x.n_cols != ds.gene_names.len() || x.indptr.len() != nc + 1 {
            return Err(err(
                "expression",
                format!("shape {} × {} but {} cells and {} genes", x.n_rows, x.n_cols, nc, ds.gene_names.len()),
            ));
        }
        check_csr_structure(x, file, "expression", cells, "gene", &ds.gene_names)?;
        let rule = ValueRule::expression(opts.require_integer_expression);
        for i in 0..nc {
            let (cols, vals) = x.row(i);
            if let Some(t) = vals.iter().position(|&v| !rule.ok(v as f64)) {
                return Err(err("expression", rule.problem(vals[t] as f64).unwrap_or_default())
                    .cell(i, cells)
                    .feature("gene", cols[t] as usize, &ds.gene_names));
            }
        }
    }
    if ds.library_size.len() != nc {
        return Err(err("library_size", format!("{} values for {} cells", ds.library_size.len(), nc)));
    }
    if let Some(i) = ds.library_size.iter().position(|&v| !ValueRule::SIZE_FACTOR.ok(v as f64)) {
        return Err(err("library_size", ValueRule::SIZE_FACTOR.problem(ds.library_size[i] as f64).unwrap_or_default())
            .cell(i, cells));
    }

    let s = &ds.splicing;
    let jn = &s.junction_names;
    let nj = s.n_junctions;
    if s.n_cells != nc || s.indptr.len() != nc + 1 || jn.len() != nj || s.junc2atse.len() != nj {
        return Err(err(
            "splicing",
            format!(
                "inconsistent sizes: n_cells {} (cells {nc}), indptr {}, n_junctions {nj}, junction names {}, junc2atse {}",
                s.n_cells,
                s.indptr.len(),
                jn.len(),
                s.junc2atse.len()
            ),
        ));
    }
    let m = s.junction.len();
    if s.k.len() != m || s.n.len() != m || s.psi.len() != m || s.indptr[nc] != m || s.indptr[0] != 0 {
        return Err(err("splicing", "entry arrays (junction, k, n, psi) and indptr disagree in length".into()));
    }
    // The loader sorts ATSE ids as numbers when the column holds numbers (`atse_index`), else as strings.
    let num = |a: &str| a.parse::<f64>().ok();
    let numeric_order = s.atse_ids.iter().all(|a| num(a).is_some()) && s.atse_ids.windows(2).all(|w| num(&w[0]) < num(&w[1]));
    if !numeric_order {
        if let Some(w) = s.atse_ids.windows(2).position(|w| w[0] >= w[1]) {
            return Err(err("splicing ATSE ids", format!("not sorted and unique at ATSE {w}: {:?} >= {:?}", s.atse_ids[w], s.atse_ids[w + 1])));
        }
    }
    if let Some(j) = s.junc2atse.iter().position(|&a| a as usize >= s.atse_ids.len()) {
        return Err(err("splicing/junc2atse", format!("ATSE index {} out of range ({} ATSEs)", s.junc2atse[j], s.atse_ids.len()))
            .feature("junction", j, jn));
    }
    let mut checker = AtseChecker::new(&s.junc2atse, s.atse_ids.len());
    let count_rule = ValueRule::counts(s.has_counts && opts.require_integer_splicing);
    for i in 0..nc {
        let r = s.cell_range(i);
        if r.start > r.end {
            return Err(err("splicing/indptr", "decreasing".into()).cell(i, cells));
        }
        let cols = &s.junction[r.clone()];
        for t in 0..cols.len() {
            let j = cols[t] as usize;
            let at = |m: String| err("splicing", m).cell(i, cells).feature("junction", j, jn);
            if j >= nj || (t > 0 && cols[t - 1] >= cols[t]) {
                return Err(at("junction indices must be ascending and < n_junctions".into()));
            }
            let (k, n, p) = (s.k[r.start + t] as f64, s.n[r.start + t] as f64, s.psi[r.start + t] as f64);
            if let Some(pr) = count_rule.problem(k).or_else(|| count_rule.problem(n)) {
                return Err(at(pr));
            }
            if n <= 0.0 {
                return Err(at(format!("stored entry with n = {n} (only observed entries, n > 0, are stored)")));
            }
            if k > n {
                return Err(at(format!("k = {k} > n = {n}")));
            }
            if let Some(pr) = ValueRule::PSI.problem(p) {
                return Err(at(pr));
            }
            if s.has_counts && (p - k / n).abs() > PSI_TOLERANCE {
                return Err(at(format!("psi = {p} but k / n = {}", k / n)));
            }
        }
        if let Err(issue) = checker.check_row(cols, &s.n[r]) {
            let (j, msg) = match issue {
                AtseIssue::Differs { j, n, j0, n0, .. } => (j, format!("n = {n} differs from n = {n0} at junction {j0} of the same ATSE")),
                AtseIssue::Missing { j, j0, .. } => (j, format!("unobserved but junction {j0} of the same ATSE is observed")),
            };
            return Err(err("splicing", msg).cell(i, cells).feature("junction", j as usize, jn));
        }
    }

    let cv = &ds.covariates;
    for c in std::iter::once(&cv.batch).chain(std::iter::once(&cv.labels)).chain(cv.categorical.iter()) {
        if c.codes.len() != nc {
            return Err(err(&format!("covariate {}", c.name), format!("{} codes for {nc} cells", c.codes.len())));
        }
        if let Some(i) = c.codes.iter().position(|&x| x as usize >= c.levels.len()) {
            return Err(err(&format!("covariate {}", c.name), format!("code {} out of range ({} levels)", c.codes[i], c.levels.len()))
                .cell(i, cells));
        }
    }
    if cv.continuous.len() != nc * cv.continuous_names.len() {
        return Err(err("continuous covariates", format!("{} values for {nc} cells × {} covariates", cv.continuous.len(), cv.continuous_names.len())));
    }
    if let Some(p) = cv.continuous.iter().position(|v| !v.is_finite()) {
        let c = cv.continuous_names.len();
        return Err(err(&format!("covariate {}", cv.continuous_names[p % c]), "value is not finite".into()).cell(p / c, cells));
    }
    Ok(())
}

fn check_csr_structure<T: Copy>(
    x: &Csr<T>,
    file: &str,
    field: &str,
    cells: &[String],
    kind: &'static str,
    names: &[String],
) -> Result<(), DataError> {
    if x.indptr.first() != Some(&0) || x.indptr.last() != Some(&x.values.len()) || x.indices.len() != x.values.len() {
        return Err(DataError::new(file, field, "indptr / indices / values disagree in length"));
    }
    for i in 0..x.n_rows {
        if x.indptr[i] > x.indptr[i + 1] {
            return Err(DataError::new(file, field, "indptr decreases").cell(i, cells));
        }
        let (c, _) = x.row(i);
        if let Some(t) = (0..c.len()).find(|&t| c[t] as usize >= x.n_cols || (t > 0 && c[t - 1] >= c[t])) {
            return Err(DataError::new(file, field, "column indices must be ascending and in range")
                .cell(i, cells)
                .feature(kind, c[t] as usize, names));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts past 2²⁴ are not exact in f32: refused, with the reason, whether integers are required
    /// or not; 2²⁴ itself is accepted.
    #[test]
    fn counts_above_two_to_the_24_are_refused() {
        for rule in [ValueRule::counts(true), ValueRule::counts(false), ValueRule::expression(true), ValueRule::expression(false)] {
            assert!(rule.ok(MAX_COUNT) && rule.problem(MAX_COUNT).is_none());
            assert!(!rule.ok(MAX_COUNT + 2.0));
            let p = rule.problem(3e38).unwrap();
            assert!(p.contains("is greater than 16777216") && p.contains("2^24"), "{p}");
        }
        // PSI keeps its own bound and message
        assert_eq!(ValueRule::PSI.problem(1.5).unwrap(), "junc_ratio 1.5 is greater than 1");
    }

    fn csr(indptr: Vec<usize>, indices: Vec<u32>, values: Vec<f32>) -> Csr<f32> {
        Csr { n_rows: indptr.len() - 1, n_cols: 3, indptr, indices, values }
    }

    fn input<'a>(cells: &'a [String], k: Csr<f32>, n: Csr<f32>) -> SplicingInput<'a> {
        SplicingInput {
            file: "t.h5mu",
            cell_names: cells,
            junction_names: vec!["j0".into(), "j1".into(), "j2".into()],
            gene_names: vec![],
            junc2atse: vec![0, 0, 1],
            atse_ids: vec!["a0".into(), "a1".into()],
            k: Some(("k".into(), Layer::Whole(k))),
            n: Some(("n".into(), n)),
            junc_ratio: None,
            psi_mask: None,
        }
    }

    /// A row source over an in-memory matrix handing out `rows` rows per block.
    struct Blocks {
        m: Csr<f32>,
        rows: usize,
        /// First row of every block handed out.
        asked: std::rc::Rc<std::cell::RefCell<Vec<usize>>>,
        /// Pretend to be dense storage (no entry count known).
        dense: bool,
    }

    impl RowSource for Blocks {
        fn block(&mut self, r0: usize, _: &[String], _: &[String]) -> anyhow::Result<Csr<f32>> {
            self.asked.borrow_mut().push(r0);
            let r1 = (r0 + self.rows).min(self.m.n_rows);
            let (a, b) = (self.m.indptr[r0], self.m.indptr[r1]);
            Ok(Csr {
                n_rows: r1 - r0,
                n_cols: self.m.n_cols,
                indptr: self.m.indptr[r0..=r1].iter().map(|p| p - a).collect(),
                indices: self.m.indices[a..b].to_vec(),
                values: self.m.values[a..b].to_vec(),
            })
        }
        fn nnz_hint(&self) -> Option<usize> {
            (!self.dense).then(|| self.m.nnz())
        }
    }

    /// k, junc_ratio and psi_mask read in blocks of 1, 2 or 3 rows build the same entries as whole matrices.
    #[test]
    fn row_blocks_build_the_same_entries_as_whole_layers() {
        let cells: Vec<String> = (0..4).map(|i| format!("c{i}")).collect();
        // Cells 0 and 2 observe ATSE 0 (j0, j1), cells 1 and 2 ATSE 1 (j2), cell 3 nothing.
        let n = || csr(vec![0, 2, 3, 6, 6], vec![0, 1, 2, 0, 1, 2], vec![4.0, 4.0, 2.0, 5.0, 5.0, 3.0]);
        let k = || csr(vec![0, 2, 2, 4, 4], vec![0, 1, 0, 2], vec![1.0, 3.0, 5.0, 3.0]);
        let ratio = || csr(vec![0, 2, 2, 4, 4], vec![0, 1, 0, 2], vec![0.25, 0.75, 1.0, 1.0]);
        let mask = || csr(vec![0, 2, 3, 6, 6], vec![0, 1, 2, 0, 1, 2], vec![1.0; 6]);
        let with = |layer: &dyn Fn(Csr<f32>) -> Layer| {
            let mut inp = input(&cells, k(), n());
            inp.k = Some(("k".into(), layer(k())));
            inp.junc_ratio = Some(("r".into(), layer(ratio())));
            inp.psi_mask = Some(("m".into(), layer(mask())));
            build_splicing(inp).unwrap()
        };
        let whole = with(&Layer::Whole);
        assert_eq!(whole.indptr, vec![0, 2, 3, 6, 6]);
        assert_eq!(whole.k, vec![1.0, 3.0, 0.0, 5.0, 0.0, 3.0]);
        assert_eq!(whole.psi, vec![0.25, 0.75, 0.0, 1.0, 0.0, 1.0]);
        for rows in 1..=3 {
            let got = with(&|m| Layer::Rows(Box::new(Blocks { m, rows, asked: Default::default(), dense: false })));
            assert_eq!(got, whole, "blocks of {rows} rows");
        }
        // PSI only (no counts): the entries come from the mask, also when its entry count is unknown.
        let psi_only = |layer: &dyn Fn(Csr<f32>) -> Layer| {
            let mut inp = input(&cells, k(), n());
            (inp.k, inp.n) = (None, None);
            inp.junc_ratio = Some(("r".into(), layer(ratio())));
            inp.psi_mask = Some(("m".into(), layer(mask())));
            build_splicing(inp).unwrap()
        };
        let whole_psi = psi_only(&Layer::Whole);
        assert!(!whole_psi.has_counts);
        assert_eq!(whole_psi.psi, whole.psi);
        for dense in [false, true] {
            let got = psi_only(&|m| Layer::Rows(Box::new(Blocks { m, rows: 2, asked: Default::default(), dense })));
            assert_eq!(got, whole_psi, "psi only, dense {dense}");
        }
        // Each block is read once, in row order.
        let asked = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut layer = Layer::Rows(Box::new(Blocks { m: k(), rows: 3, asked: asked.clone(), dense: false }));
        let mut cur = RowCursor::new(&mut layer);
        for i in 0..4 {
            let (c, v) = cur.row(i, &cells, &[]).unwrap();
            assert_eq!((c, v), k().row(i));
        }
        assert_eq!(*asked.borrow(), vec![0, 3]);
        // A bad value found in a block stops the build with the source's error.
        struct Broken;
        impl RowSource for Broken {
            fn block(&mut self, r0: usize, _: &[String], _: &[String]) -> anyhow::Result<Csr<f32>> {
                anyhow::bail!("bad value in the block at row {r0}")
            }
            fn nnz_hint(&self) -> Option<usize> {
                None
            }
        }
        let mut inp = input(&cells, k(), n());
        inp.junc_ratio = Some(("r".into(), Layer::Rows(Box::new(Broken))));
        let err = build_splicing(inp).unwrap_err();
        assert_eq!(format!("{err:#}"), "bad value in the block at row 0");
    }

    /// PSI without counts and without a mask: the error says that PSI-only input needs its mask
    /// (model.md §14.2), naming the file and the PSI layer, not a missing count layer.
    #[test]
    fn psi_only_input_needs_a_mask() {
        let cells: Vec<String> = vec!["c0".into(), "c1".into()];
        let n = csr(vec![0, 2, 3], vec![0, 1, 2], vec![4.0, 4.0, 2.0]);
        let mut inp = input(&cells, n.clone(), n);
        (inp.k, inp.n) = (None, None);
        inp.junc_ratio = Some(("mod/splicing/layers/junc_ratio".into(), Layer::Whole(csr(vec![0, 1, 2], vec![0, 2], vec![0.25, 1.0]))));
        let e = format!("{:#}", build_splicing(inp).unwrap_err());
        assert!(e.starts_with("t.h5mu: mod/splicing/layers/junc_ratio: PSI-only input"), "{e}");
        assert!(e.contains("needs a mask layer (psi_mask)"), "{e}");
    }

    /// n's arrays become the dataset's (moved, not copied), also when its rows start past entry 0.
    #[test]
    fn entries_come_from_n_also_with_an_offset_indptr() {
        let cells: Vec<String> = vec!["c0".into(), "c1".into()];
        // Cell 0 observes ATSE 0 (j0, j1; n = 4), cell 1 observes ATSE 1 (j2; n = 2).
        let k = || csr(vec![0, 2, 3], vec![0, 1, 2], vec![1.0, 3.0, 2.0]);
        let plain = build_splicing(input(&cells, k(), csr(vec![0, 2, 3], vec![0, 1, 2], vec![4.0, 4.0, 2.0]))).unwrap();
        assert_eq!(plain.indptr, vec![0, 2, 3]);
        assert_eq!(plain.junction, vec![0, 1, 2]);
        assert_eq!(plain.n, vec![4.0, 4.0, 2.0]);
        assert_eq!(plain.k, vec![1.0, 3.0, 2.0]);
        assert_eq!(plain.psi, vec![0.25, 0.75, 1.0]);
        // The same rows behind two leading entries and before a trailing one that no row owns.
        let shifted = csr(vec![2, 4, 5], vec![2, 2, 0, 1, 2, 1], vec![9.0, 9.0, 4.0, 4.0, 2.0, 7.0]);
        let got = build_splicing(input(&cells, k(), shifted)).unwrap();
        assert_eq!(got, plain);
    }
}
