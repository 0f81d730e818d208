//! Matrix Market input directory.
//!
//! Layout (every file may also be gzip-compressed with a `.gz` suffix, e.g. `junction_counts.mtx.gz`):
//!
//! | file | required | content |
//! |---|---|---|
//! | `junction_counts.mtx` | yes | junction read counts k, **cells × junctions** (rows = cells) |
//! | `atse_counts.mtx` | yes | ATSE totals n, cells × junctions (n repeated on every junction of the ATSE) |
//! | `expression.mtx` | no | expression input, cells × genes (integer counts for count likelihoods) |
//! | `barcodes.tsv` | yes | cell names, one per line (first tab-separated field), no header |
//! | `junctions.tsv` | yes | header line, then one line per junction; columns `junction_id`, the ATSE id column (`event_id`, or `--event-id-key`), optionally `gene_name` |
//! | `genes.tsv` | with `expression.mtx` | gene names, one per line (first field), no header |
//! | `obs.tsv` | no | header line; first column = cell name (same cells, same order as `barcodes.tsv`); other columns are numeric when every value parses as a number (`NA`, `nan` and empty = missing), else text (categorical when one is missing). A column named like `--size-factor-key` (default `X_library_size`) gives the size factors (a number on every line) |
//!
//! The `.mtx` files are `%%MatrixMarket matrix coordinate real|integer|pattern general` (1-based indices, any
//! entry order; duplicates are summed) or `%%MatrixMarket matrix array real|integer general` (dense,
//! column-major). Without `expression.mtx` the dataset is splicing-only. Every line of `junctions.tsv` and
//! `obs.tsv` has as many tab-separated fields as its header line.

use super::dataset::{Csr, IntColumn, IntWidth, ObsColumn};
use super::h5::canonicalize;
use super::load::{ObsTable, RawData};
use super::options::DataOptions;
use super::validate::{DataError, Layer, ValueRule, ValueTracker};
use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// The file `name` or `name.gz` in `dir`.
fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    let p = dir.join(name);
    if p.is_file() {
        return Some(p);
    }
    let gz = dir.join(format!("{name}.gz"));
    gz.is_file().then_some(gz)
}

fn open_text(path: &Path) -> Result<Box<dyn BufRead>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let r: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else {
        Box::new(f)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 20, r)))
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Lines of a text file (trailing `\r` removed, empty trailing lines dropped).
fn read_lines(path: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, l) in open_text(path)?.lines().enumerate() {
        let mut l = l.with_context(|| format!("{}: line {}", path.display(), i + 1))?;
        if l.ends_with('\r') {
            l.pop();
        }
        out.push(l);
    }
    while out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    Ok(out)
}

fn first_fields(path: &Path) -> Result<Vec<String>> {
    Ok(read_lines(path)?.into_iter().map(|l| l.split('\t').next().unwrap_or("").to_string()).collect())
}

/// Read a Matrix Market file into CSR (zeros dropped), checking values with `tracker`.
pub fn read_mtx(path: &Path, tracker: &mut ValueTracker) -> Result<Csr<f32>> {
    let disp = path.display();
    let mut lines = open_text(path)?.lines().enumerate();
    let (_, header) = lines.next().ok_or_else(|| anyhow!("{disp}: empty file"))?;
    let header = header?;
    let h: Vec<String> = header.split_whitespace().map(|s| s.to_ascii_lowercase()).collect();
    if h.len() < 5 || h[0] != "%%matrixmarket" || h[1] != "matrix" {
        bail!("{disp}: line 1: not a Matrix Market header: {header:?}");
    }
    let coordinate = match h[2].as_str() {
        "coordinate" => true,
        "array" => false,
        f => bail!("{disp}: line 1: unsupported format {f:?} (coordinate or array)"),
    };
    let pattern = match h[3].as_str() {
        "real" | "integer" | "double" => false,
        "pattern" if coordinate => true,
        f => bail!("{disp}: line 1: unsupported field {f:?} (real, integer or pattern)"),
    };
    if h[4] != "general" {
        bail!("{disp}: line 1: unsupported symmetry {:?} (only general)", h[4]);
    }
    let mut size: Option<(usize, usize, usize)> = None;
    let mut rows: Vec<u32> = Vec::new();
    let mut cols: Vec<u32> = Vec::new();
    let mut vals: Vec<f32> = Vec::new();
    let mut seen = 0usize;
    for (ln, line) in lines {
        let line = line.with_context(|| format!("{disp}: line {}", ln + 1))?;
        let t = line.trim();
        if t.is_empty() || t.starts_with('%') {
            continue;
        }
        let mut it = t.split_whitespace();
        let mut num = |what: &str| -> Result<&str> { it.next().ok_or_else(|| anyhow!("{disp}: line {}: missing {what}", ln + 1)) };
        match size {
            None => {
                let r: usize = num("row count")?.parse().with_context(|| format!("{disp}: line {}: size line", ln + 1))?;
                let c: usize = num("column count")?.parse().with_context(|| format!("{disp}: line {}: size line", ln + 1))?;
                let nnz = if coordinate { num("entry count")?.parse().with_context(|| format!("{disp}: line {}: size line", ln + 1))? } else { r * c };
                if r > u32::MAX as usize || c > u32::MAX as usize {
                    bail!("{disp}: matrix too large ({r} × {c})");
                }
                size = Some((r, c, nnz));
                if coordinate {
                    rows.reserve(nnz);
                    cols.reserve(nnz);
                    vals.reserve(nnz);
                }
            }
            Some((nr, nc, nnz)) => {
                if seen >= nnz {
                    bail!("{disp}: line {}: more entries than the {nnz} announced", ln + 1);
                }
                let (r, c, v) = if coordinate {
                    let r: usize = num("row")?.parse().with_context(|| format!("{disp}: line {}: row index", ln + 1))?;
                    let c: usize = num("column")?.parse().with_context(|| format!("{disp}: line {}: column index", ln + 1))?;
                    if r == 0 || r > nr || c == 0 || c > nc {
                        bail!("{disp}: line {}: entry ({r}, {c}) outside 1..={nr} × 1..={nc}", ln + 1);
                    }
                    let v: f64 = if pattern { 1.0 } else { parse_value(num("value")?).with_context(|| format!("{disp}: line {}", ln + 1))? };
                    (r - 1, c - 1, v)
                } else {
                    let v = parse_value(num("value")?).with_context(|| format!("{disp}: line {}", ln + 1))?;
                    (seen % nr.max(1), seen / nr.max(1), v)
                };
                seen += 1;
                if v != 0.0 && tracker.accept(r, c, v) {
                    rows.push(r as u32);
                    cols.push(c as u32);
                    vals.push(v as f32);
                }
            }
        }
    }
    let (nr, nc, nnz) = size.ok_or_else(|| anyhow!("{disp}: no size line"))?;
    if seen != nnz {
        bail!("{disp}: {seen} entries but the size line announces {nnz}");
    }
    // Counting sort by row; stable, so a row's columns keep file order until canonicalize sorts them.
    let mut indptr = vec![0usize; nr + 1];
    for &r in &rows {
        indptr[r as usize + 1] += 1;
    }
    for r in 0..nr {
        indptr[r + 1] += indptr[r];
    }
    let mut fill = indptr.clone();
    let mut indices = vec![0u32; vals.len()];
    let mut values = vec![0f32; vals.len()];
    for t in 0..vals.len() {
        let p = &mut fill[rows[t] as usize];
        indices[*p] = cols[t];
        values[*p] = vals[t];
        *p += 1;
    }
    let mut m = Csr { n_rows: nr, n_cols: nc, indptr, indices, values };
    canonicalize(&mut m);
    Ok(m)
}

fn parse_value(s: &str) -> Result<f64> {
    match s.to_ascii_lowercase().as_str() {
        "nan" => Ok(f64::NAN),
        "inf" | "+inf" | "infinity" => Ok(f64::INFINITY),
        "-inf" | "-infinity" => Ok(f64::NEG_INFINITY),
        _ => s.parse::<f64>().map_err(|_| anyhow!("value {s:?} is not a number")),
    }
}

fn is_missing(s: &str) -> bool {
    matches!(s, "" | "NA" | "na" | "NaN" | "nan")
}

/// The tab-separated fields of the lines after the header line (`lines[0]`), each line checked to
/// have as many as the header: a field more or less would drop or shift a column's values unseen.
fn table_rows<'a>(file: &str, field: &str, lines: &'a [String]) -> Result<Vec<Vec<&'a str>>> {
    let width = lines.first().map_or(0, |h| h.split('\t').count());
    let mut rows = Vec::with_capacity(lines.len().saturating_sub(1));
    for (i, l) in lines.iter().enumerate().skip(1) {
        let f: Vec<&str> = l.split('\t').collect();
        if f.len() != width {
            return Err(DataError::new(file, field, format!("line {} has {} tab-separated fields, the header line {width}", i + 1, f.len())).into());
        }
        rows.push(f);
    }
    Ok(rows)
}

/// Read a Matrix Market directory (layout in the module docs).
pub fn read_dir(dir: &Path, opts: &DataOptions, integer_expression: bool, integer_counts: bool) -> Result<RawData> {
    let file = dir.display().to_string();
    let need = |name: &str| -> Result<PathBuf> {
        find(dir, name).ok_or_else(|| {
            DataError::new(&file, name, format!("missing (a Matrix Market input directory needs {name} or {name}.gz; see `splicevi validate --help`)")).into()
        })
    };
    let barcodes = need("barcodes.tsv")?;
    let cells = first_fields(&barcodes)?;
    let jpath = need("junctions.tsv")?;
    let jfield = file_name(&jpath);
    let jlines = read_lines(&jpath)?;
    let header: Vec<&str> = jlines.first().map(|h| h.split('\t').collect()).unwrap_or_default();
    let col_of = |name: &str| header.iter().position(|h| *h == name);
    let ev_col = col_of(&opts.event_id_key).ok_or_else(|| {
        DataError::new(&file, &jfield, format!("no ATSE id column {:?} in the header line (set by --event-id-key); columns present: {:?}", opts.event_id_key, header))
    })?;
    let id_col = col_of("junction_id");
    let gene_col = col_of("gene_name");
    let mut raw = RawData { file: file.clone(), cell_names: cells.clone(), ..Default::default() };
    let mut ids = Vec::new();
    for (t, f) in table_rows(&file, &jfield, &jlines)?.iter().enumerate() {
        raw.junction_names.push(match id_col {
            Some(c) => f[c].to_string(),
            None => format!("{t}"),
        });
        let e = f[ev_col];
        ids.push((!is_missing(e)).then(|| e.to_string()));
        if let Some(c) = gene_col {
            raw.junction_gene_names.push(f[c].to_string());
        }
    }
    raw.event_ids = (format!("{jfield}:{}", opts.event_id_key), ids, false);
    let nj = raw.junction_names.len();

    let read = |path: &Path, rule: ValueRule, kind: &'static str, features: &[String]| -> Result<(String, Csr<f32>)> {
        let field = file_name(path);
        let mut tr = ValueTracker::new(rule);
        let m = read_mtx(path, &mut tr)?;
        if m.n_rows != cells.len() || m.n_cols != features.len() {
            return Err(DataError::new(
                &file,
                &field,
                format!("shape {} × {} but there are {} cells and {} {kind}s (rows must be cells)", m.n_rows, m.n_cols, cells.len(), features.len()),
            )
            .into());
        }
        tr.into_result(&file, &field, &cells, kind, features)?;
        Ok((field, m))
    };
    let jn = raw.junction_names.clone();
    let (kf, k) = read(&need("junction_counts.mtx")?, ValueRule::counts(integer_counts), "junction", &jn)?;
    debug_assert_eq!(k.n_cols, nj);
    raw.k = Some((kf, Layer::Whole(k)));
    raw.n = Some(read(&need("atse_counts.mtx")?, ValueRule::counts(integer_counts), "junction", &jn)?);

    if let Some(x) = find(dir, "expression.mtx") {
        raw.gene_names = first_fields(&need("genes.tsv")?)?;
        let genes = raw.gene_names.clone();
        raw.expression = Some(read(&x, ValueRule::expression(integer_expression), "gene", &genes)?);
    }

    if let Some(op) = find(dir, "obs.tsv") {
        let field = file_name(&op);
        let lines = read_lines(&op)?;
        let header: Vec<String> = lines.first().map(|h| h.split('\t').map(str::to_string).collect()).unwrap_or_default();
        let rows = table_rows(&file, &field, &lines)?;
        if rows.len() != cells.len() {
            bail!("{file}: {field}: {} rows but {} cells in barcodes.tsv", rows.len(), cells.len());
        }
        if let Some(i) = (0..cells.len()).find(|&i| rows[i].first().copied().unwrap_or("") != cells[i]) {
            return Err(DataError::new(&file, &field, format!("first column {:?} differs from barcodes.tsv at the same row", rows[i].first().copied().unwrap_or(""))).cell(i, &cells).into());
        }
        let mut table = ObsTable { field: field.clone(), modality: None, ..Default::default() };
        for (c, name) in header.iter().enumerate().skip(1) {
            let vals: Vec<&str> = rows.iter().map(|r| r[c]).collect();
            // (whole numbers without a gap are integers, as pandas reads them, int64 or, with a value
            // above i64::MAX, uint64; with a gap, or beyond both, floats)
            let ints: Option<Vec<i128>> = vals.iter().map(|v| v.parse::<i128>().ok().filter(|&x| x >= i64::MIN as i128 && x <= u64::MAX as i128)).collect();
            let ints = ints.filter(|i| i.iter().all(|&x| x <= i64::MAX as i128) || i.iter().all(|&x| x >= 0));
            let nums = || -> Option<Vec<f64>> { vals.iter().map(|v| if is_missing(v) { Some(f64::NAN) } else { v.parse::<f64>().ok() }).collect() };
            let col = if let Some(i) = ints {
                let width = if i.iter().all(|&x| x <= i64::MAX as i128) { IntWidth::I64 } else { IntWidth::U64 };
                ObsColumn::Int(IntColumn { values: i, width, mask: None })
            } else if let Some(n) = nums() {
                ObsColumn::numeric(n)
            } else if vals.iter().any(|v| is_missing(v)) {
                // text with a missing value: NaN there, as pandas reads it (a categorical, as anndata
                // writes it), not a value "" that would be a batch or a group of its own
                let mut categories: Vec<String> = vals.iter().filter(|v| !is_missing(v)).map(|s| s.to_string()).collect();
                categories.sort();
                categories.dedup();
                let codes = vals.iter().map(|v| if is_missing(v) { -1 } else { categories.binary_search_by(|c| c.as_str().cmp(v)).unwrap() as i32 }).collect();
                ObsColumn::Categorical { codes, categories, int_categories: None, store: crate::data::CatStore::Unordered }
            } else {
                ObsColumn::Text(vals.iter().map(|s| s.to_string()).collect())
            };
            if name == &opts.size_factor_key {
                // (required for every cell: a missing one is named here, with its line, not as a NaN)
                let sf = format!("{field}:{name}");
                if let Some(i) = vals.iter().position(|v| is_missing(v) || v.parse::<f64>().is_err()) {
                    let v = vals[i];
                    let what = if v.is_empty() { "empty".to_string() } else if is_missing(v) { format!("{v:?} (missing)") } else { format!("{v:?}, not a number") };
                    return Err(DataError::new(&file, &sf, format!("line {}: the size factor is {what}; the column needs a number for every cell", i + 2)).cell(i, &cells).into());
                }
                raw.library_size = Some((sf, col.numbers().expect("every value a number")));
            }
            table.columns.push((name.clone(), col));
        }
        raw.obs_tables.push(table);
    }
    if raw.library_size.is_none() {
        super::h5::size_factor_key_absent(&file, opts, &["a column of obs.tsv".to_string()])?;
    }
    Ok(raw)
}
