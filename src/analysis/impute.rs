//! Imputed PSI (cells × junctions, §7.4 / §7.5) and normalized expression (cells × genes, §7.3) written
//! to `.h5ad` block by block: memory is one block of cells times the output width, whatever the number
//! of cells (a 100k × 90k dense PSI matrix is never held).
//!
//! Imputed PSI can also be written sparse (CSR): only the junctions whose ATSE is observed in the cell
//! itself, or in at least one cell of the cell's group (an obs column) — e.g. events expressed in the
//! cell's type — are stored.

use super::posterior::{DecodeOptions, Posterior, SplicingFn};
use crate::data::h5ad_out::{write_h5ad_streaming, H5adOut, XLayout};
use crate::data::h5write::{Compression, UnsValue};
use crate::data::{Dataset, ObsColumn};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Which junctions a sparse PSI matrix keeps for a cell.
#[derive(Clone, Debug, PartialEq)]
pub enum ObservedIn {
    /// Junctions of ATSEs observed in the cell itself.
    Cell,
    /// Junctions of ATSEs observed in at least one cell of the cell's group (`codes[c]`).
    Group { column: String, codes: Vec<u32> },
}

#[derive(Clone, Debug)]
pub struct ImputeOptions {
    pub method: SplicingFn,
    /// Output columns (junction indices, ascending); None = every junction.
    pub junctions: Option<Vec<usize>>,
    pub decode: DecodeOptions,
    pub block_cells: usize,
    /// None = dense X; Some = CSR X restricted to observed ATSEs.
    pub sparse: Option<ObservedIn>,
    pub compression: Compression,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct WriteSummary {
    pub n_cells: usize,
    pub n_cols: usize,
    /// Stored values (cells × columns when dense).
    pub n_stored: u64,
}

/// Names from a file, one per line (blank lines and surrounding spaces ignored), resolved against
/// `known` (dataset order kept, duplicates removed). Unknown names are an error naming file and line.
pub fn read_name_list(path: &Path, known: &[String], what: &str) -> Result<Vec<usize>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // name → its first position, and its second where the data holds it twice (anndata allows that)
    let mut pos: std::collections::HashMap<&str, (usize, Option<usize>)> = std::collections::HashMap::new();
    for (i, n) in known.iter().enumerate() {
        pos.entry(n.as_str()).and_modify(|e| e.1 = e.1.or(Some(i))).or_insert((i, None));
    }
    let mut keep = vec![false; known.len()];
    for (ln, line) in text.lines().enumerate() {
        let name = line.trim();
        if name.is_empty() {
            continue;
        }
        match pos.get(name) {
            Some(&(i, None)) => keep[i] = true,
            Some(&(i, Some(j))) => bail!("{}:{}: {what} `{name}` is ambiguous: the data has it at {i} and {j} (names must be unique to be selected)", path.display(), ln + 1),
            None => bail!("{}:{}: unknown {what} `{name}`", path.display(), ln + 1),
        }
    }
    let out: Vec<usize> = (0..known.len()).filter(|&i| keep[i]).collect();
    if out.is_empty() {
        bail!("{}: no {what} listed", path.display());
    }
    Ok(out)
}

/// Codes of the obs column `column` (named by `flag`; categories in first-appearance order for
/// non-categorical columns).
pub fn group_codes(ds: &Dataset, flag: &str, column: &str) -> Result<Vec<u32>> {
    let (_, col) = ds.obs_column(column, flag)?;
    if let Some(x) = col.first_non_integer() {
        bail!("{flag} {column}: {}: `{column}` holds non-integer numbers (e.g. {x}), a measurement rather than groups of cells; give a categorical column", ds.source);
    }
    let values = col.as_strings();
    let mut seen: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    Ok(values
        .into_iter()
        .map(|v| {
            let n = seen.len() as u32;
            *seen.entry(v).or_insert(n)
        })
        .collect())
}

fn obs_of(ds: &Dataset) -> (Vec<String>, Vec<(String, ObsColumn)>) {
    (ds.cell_names.clone(), ds.obs.clone())
}

fn uns_common(post: &Posterior, decode: &DecodeOptions, extra: Vec<(String, UnsValue)>) -> Vec<(String, UnsValue)> {
    let levels = &post.ds.covariates.batch.levels;
    let tb: Vec<String> = decode.transform_batch.iter().map(|&b| levels.get(b as usize).cloned().unwrap_or_else(|| b.to_string())).collect();
    let mut uns = vec![
        ("splicevi_n_samples".to_string(), UnsValue::Int(decode.n_samples.max(1) as i64)),
        ("splicevi_transform_batch".to_string(), UnsValue::Strings(tb)),
        ("splicevi_seed".to_string(), UnsValue::Int(decode.seed as i64)),
    ];
    uns.extend(extra);
    uns
}

/// Imputed PSI of every cell into `path`.
pub fn write_imputed_psi(post: &Posterior, path: &Path, opts: &ImputeOptions, extra_uns: Vec<(String, UnsValue)>) -> Result<WriteSummary> {
    anyhow::ensure!(opts.block_cells > 0, "the block size must be > 0");
    let ds = post.ds;
    let spl = &ds.splicing;
    let cols: Vec<usize> = opts.junctions.clone().unwrap_or_else(|| (0..spl.n_junctions).collect());
    let n = ds.n_cells();
    let m = cols.len();
    let mut var = vec![("event_id".to_string(), ObsColumn::Text(cols.iter().map(|&j| spl.atse_ids[spl.junc2atse[j] as usize].clone()).collect()))];
    if spl.gene_names.len() == spl.n_junctions {
        var.push(("gene_name".to_string(), ObsColumn::Text(cols.iter().map(|&j| spl.gene_names[j].clone()).collect())));
    }
    let (obs_names, obs) = obs_of(ds);
    let mut extra = vec![("splicevi_psi".to_string(), UnsValue::String(opts.method.name().to_string()))];
    extra.push((
        "splicevi_psi_stored".to_string(),
        UnsValue::String(match &opts.sparse {
            None => "all".to_string(),
            Some(ObservedIn::Cell) => "atse_observed_in_cell".to_string(),
            Some(ObservedIn::Group { column, .. }) => format!("atse_observed_in_group:{column}"),
        }),
    ));
    extra.extend(extra_uns);
    let out = H5adOut {
        obs_names,
        obs,
        var_names: cols.iter().map(|&j| spl.junction_names[j].clone()).collect(),
        var,
        uns: uns_common(post, &opts.decode, extra),
        ..Default::default()
    };
    // Allowed ATSEs per group (sparse, group mode).
    let n_atse = spl.n_atse();
    let group_atse: Option<(Vec<u32>, Vec<Vec<bool>>)> = match &opts.sparse {
        Some(ObservedIn::Group { codes, .. }) => {
            anyhow::ensure!(codes.len() == n, "{} group codes for {n} cells", codes.len());
            let n_groups = codes.iter().copied().max().map_or(0, |x| x as usize + 1);
            let mut seen = vec![vec![false; n_atse]; n_groups];
            for c in 0..n {
                for e in spl.cell_range(c) {
                    seen[codes[c] as usize][spl.junc2atse[spl.junction[e] as usize] as usize] = true;
                }
            }
            Some((codes.clone(), seen))
        }
        _ => None,
    };
    let layout = match opts.sparse {
        None => XLayout::Dense,
        Some(_) => XLayout::Csr { max_nnz: n as u64 * m as u64 },
    };
    let mut stored = 0u64;
    let all: Vec<usize> = (0..n).collect();
    write_h5ad_streaming(path, &out, layout, opts.compression, |x| {
        for block in all.chunks(opts.block_cells) {
            let dec = post.decode(block, &opts.decode, Some(opts.method), false)?;
            let psi = dec.psi.expect("psi requested");
            let j = psi.cols;
            match &opts.sparse {
                None => {
                    let data: Vec<f32> = if m == j {
                        psi.data
                    } else {
                        let mut d = Vec::with_capacity(block.len() * m);
                        for r in 0..block.len() {
                            d.extend(cols.iter().map(|&c| psi.data[r * j + c]));
                        }
                        d
                    };
                    stored += data.len() as u64;
                    x.push_dense(block.len(), &data)?;
                }
                Some(mode) => {
                    let (mut indptr, mut indices, mut values) = (vec![0usize], Vec::new(), Vec::new());
                    let mut own = vec![false; n_atse];
                    for (r, &c) in block.iter().enumerate() {
                        let allowed: &[bool] = match (mode, &group_atse) {
                            (ObservedIn::Group { .. }, Some((codes, seen))) => &seen[codes[c] as usize],
                            _ => {
                                own.iter_mut().for_each(|v| *v = false);
                                for e in spl.cell_range(c) {
                                    own[spl.junc2atse[spl.junction[e] as usize] as usize] = true;
                                }
                                &own
                            }
                        };
                        for (k, &jj) in cols.iter().enumerate() {
                            if allowed[spl.junc2atse[jj] as usize] {
                                indices.push(k as u32);
                                values.push(psi.data[r * j + jj]);
                            }
                        }
                        indptr.push(indices.len());
                    }
                    stored += values.len() as u64;
                    x.push_csr(&indptr, &indices, &values)?;
                }
            }
        }
        Ok(())
    })?;
    Ok(WriteSummary { n_cells: n, n_cols: m, n_stored: stored })
}

#[derive(Clone, Debug)]
pub struct ExpressionOptions {
    /// Output genes (indices, ascending); None = every gene.
    pub genes: Option<Vec<usize>>,
    pub decode: DecodeOptions,
    pub block_cells: usize,
    /// Multiply px_scale by this common library size.
    pub library_size: Option<f64>,
    pub compression: Compression,
}

/// `--library-size`: X is written as f32, px_scale × the library size, so the size must be a positive
/// normal f32 (1e300 was accepted and wrote inf everywhere; 1e-300 would write zeros).
pub fn check_library_size(l: f64) -> Result<()> {
    let f = l as f32;
    if !(f.is_finite() && f >= f32::MIN_POSITIVE) {
        bail!("--library-size {l:e}: must be a positive number from {:e} to {:e} (the output is f32)", f32::MIN_POSITIVE, f32::MAX);
    }
    Ok(())
}

/// Normalized expression (px_scale, §7.3) of every cell into `path` (dense X).
pub fn write_normalized_expression(post: &Posterior, path: &Path, opts: &ExpressionOptions, extra_uns: Vec<(String, UnsValue)>) -> Result<WriteSummary> {
    anyhow::ensure!(opts.block_cells > 0, "the block size must be > 0");
    if let Some(l) = opts.library_size {
        check_library_size(l)?;
    }
    let ds = post.ds;
    if ds.expression.is_none() {
        bail!("{}: no expression modality to normalize", ds.source);
    }
    let cols: Vec<usize> = opts.genes.clone().unwrap_or_else(|| (0..ds.n_genes()).collect());
    let n = ds.n_cells();
    let m = cols.len();
    let (obs_names, obs) = obs_of(ds);
    let mut extra = vec![("splicevi_expression".to_string(), UnsValue::String("px_scale".into()))];
    if let Some(l) = opts.library_size {
        extra.push(("splicevi_library_size".to_string(), UnsValue::Float(l)));
    }
    extra.extend(extra_uns);
    let out = H5adOut {
        obs_names,
        obs,
        var_names: cols.iter().map(|&g| ds.gene_names[g].clone()).collect(),
        uns: uns_common(post, &opts.decode, extra),
        ..Default::default()
    };
    let scale = opts.library_size.unwrap_or(1.0) as f32;
    let all: Vec<usize> = (0..n).collect();
    write_h5ad_streaming(path, &out, XLayout::Dense, opts.compression, |x| {
        for block in all.chunks(opts.block_cells) {
            let e = post.decode(block, &opts.decode, None, true)?.expr.expect("expression requested");
            let g = e.cols;
            let mut d = Vec::with_capacity(block.len() * m);
            for r in 0..block.len() {
                d.extend(cols.iter().map(|&c| e.data[r * g + c] * scale));
            }
            x.push_dense(block.len(), &d)?;
        }
        Ok(())
    })?;
    Ok(WriteSummary { n_cells: n, n_cols: m, n_stored: (n * m) as u64 })
}

#[cfg(test)]
mod tests {
    /// X is f32: a library size outside the positive normal f32 range wrote inf (1e300) or 0 everywhere.
    #[test]
    fn library_size_must_be_a_positive_normal_f32() {
        for ok in [1.0, 1e4, 3e38, 1.2e-38] {
            super::check_library_size(ok).unwrap();
        }
        for bad in [1e300, 1e39, 1e-300, 0.0, -5.0, f64::NAN, f64::INFINITY] {
            let e = super::check_library_size(bad).unwrap_err().to_string();
            assert!(e.starts_with("--library-size") && e.contains("(the output is f32)"), "{bad}: {e}");
        }
    }
}
