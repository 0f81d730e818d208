//! `load`: one entry point for every input format. HDF5 files are recognised by content (a `/mod`
//! group makes a MuData; otherwise the root AnnData is read as splicing-only), directories as Matrix
//! Market (see `mtx`). Readers produce [`RawData`] (matrices already value-checked); [`assemble`] builds the
//! observed splicing entries (checking the cross-matrix invariants), size factors and covariates.

pub use super::dataset::ObsTable;
use super::dataset::{Categorical, Covariates, Csr, Dataset, ObsColumn};
use super::h5::number_label;
use super::options::DataOptions;
use super::validate::{atse_index, build_splicing, CheckOptions, DataError, Layer, SplicingInput, ValueRule};
use anyhow::{bail, Result};
use std::path::Path;

/// Knobs of the load-time checks (see [`CheckOptions`]).
pub type LoadChecks = CheckOptions;

/// What a reader found, before the splicing entries and covariates are built.
#[derive(Debug, Default)]
pub struct RawData {
    pub file: String,
    pub cell_names: Vec<String>,
    pub gene_names: Vec<String>,
    /// (field, cells × genes).
    pub expression: Option<(String, Csr<f32>)>,
    /// (field, column 0 of the size factors).
    pub library_size: Option<(String, Vec<f64>)>,
    pub junction_names: Vec<String>,
    pub junction_gene_names: Vec<String>,
    /// (field, ATSE id per junction (`None` = missing), ids are numbers).
    pub event_ids: (String, Vec<Option<String>>, bool),
    /// k, junc_ratio and psi_mask may be read in row blocks while the entries are built ([`Layer::Rows`]);
    /// n is read whole (its arrays become the dataset's).
    pub k: Option<(String, Layer)>,
    pub n: Option<(String, Csr<f32>)>,
    pub junc_ratio: Option<(String, Layer)>,
    pub psi_mask: Option<(String, Layer)>,
    /// Lookup order for columns named by flags.
    pub obs_tables: Vec<ObsTable>,
    /// Modality whose obs columns are added to `Dataset::obs` after the global ones.
    pub obs_fill_modality: Option<String>,
}

/// Load a dataset with the checks `opts` asks for (integer expression and splicing counts required
/// unless it says otherwise).
pub fn load(path: &Path, opts: &DataOptions) -> Result<Dataset> {
    let checks = LoadChecks {
        require_integer_expression: opts.require_integer_expression,
        require_integer_splicing: opts.require_integer_splicing,
        ..Default::default()
    };
    load_with(path, opts, &checks)
}

/// Load a `.h5mu` (expression + splicing), a splicing-only `.h5ad`, or a Matrix Market directory.
pub fn load_with(path: &Path, opts: &DataOptions, checks: &LoadChecks) -> Result<Dataset> {
    if !path.exists() {
        bail!("{}: no such file or directory", path.display());
    }
    let raw = if path.is_dir() {
        super::mtx::read_dir(path, opts, checks.require_integer_expression, checks.require_integer_splicing)?
    } else {
        let f = super::h5::open(path)?;
        let mudata = super::h5::is_mudata(&f);
        drop(f);
        if mudata {
            super::h5::read_h5mu(path, opts, checks)?
        } else {
            super::h5::read_h5ad(path, opts, checks)?
        }
    };
    assemble(raw, opts)
}

/// Build the dataset from what a reader found: ATSE index, observed splicing entries (with the
/// cross-matrix checks), size factors, covariates, obs.
pub fn assemble(raw: RawData, opts: &DataOptions) -> Result<Dataset> {
    let file = raw.file.clone();
    let cells = &raw.cell_names;
    if cells.is_empty() {
        // (every command needs cells: training splits them, the analyses write one row each)
        return Err(DataError::new(&file, "obs", "no cells".to_string()).into());
    }
    if let Some((a, b)) = super::h5::first_repeat(cells) {
        // anndata allows it (with a warning) and so do we; what is keyed by cell name cannot tell the
        // two apart.
        eprintln!(
            "warning: {file}: the cell name {:?} repeats (cells {a} and {b}): outputs keep the names as they are, and a lookup by name (a `cell` run's modality weights) takes such cells as unseen",
            cells[b]
        );
    }
    let nj = raw.junction_names.len();
    if nj == 0 {
        // (training refuses it, and an analysis needs the junctions of its model: it passed `validate`)
        return Err(DataError::new(&file, "var", "no junctions: SpliceVI models junction counts, so every command needs at least one".to_string()).into());
    }
    let (ev_field, ids, numeric) = &raw.event_ids;
    if ids.len() != nj {
        return Err(DataError::new(&file, ev_field, format!("{} ATSE ids for {nj} junctions", ids.len())).into());
    }
    if !raw.junction_gene_names.is_empty() && raw.junction_gene_names.len() != nj {
        return Err(DataError::new(&file, "gene_name", format!("{} gene names for {nj} junctions", raw.junction_gene_names.len())).into());
    }
    let (junc2atse, atse_ids) = atse_index(ids, *numeric, &file, ev_field, &raw.junction_names)?;

    let library_size = match &raw.library_size {
        Some((field, v)) => {
            if v.len() != cells.len() {
                return Err(DataError::new(&file, field, format!("{} size factors for {} cells", v.len(), cells.len())).into());
            }
            if let Some(i) = v.iter().position(|&x| !ValueRule::SIZE_FACTOR.ok(x)) {
                return Err(DataError::new(&file, field, ValueRule::SIZE_FACTOR.problem(v[i]).unwrap_or_default()).cell(i, cells).into());
            }
            v.iter().map(|&x| x as f32).collect()
        }
        None => match &raw.expression {
            Some((_, x)) => (0..x.n_rows).map(|i| x.row(i).1.iter().map(|&v| v as f64).sum::<f64>() as f32).collect(),
            None => vec![1.0; cells.len()],
        },
    };

    let covariates = resolve_covariates(&raw, opts)?;

    let mut obs: Vec<(String, ObsColumn)> = Vec::new();
    let global = raw.obs_tables.iter().find(|t| t.modality.is_none());
    if let Some(g) = global {
        obs.extend(g.columns.iter().cloned());
    }
    if let Some(m) = &raw.obs_fill_modality {
        if let Some(t) = raw.obs_tables.iter().find(|t| t.modality.as_ref() == Some(m)) {
            for (n, c) in &t.columns {
                if !obs.iter().any(|(o, _)| o == n) {
                    obs.push((n.clone(), c.clone()));
                }
            }
        }
    }

    let RawData { k, n, junc_ratio, mut psi_mask, junction_names, junction_gene_names, expression, gene_names, cell_names, obs_tables, .. } = raw;
    // The mask's values carry nothing once read (zeros are not stored and the reader rejected anything
    // but 0 / 1): keep its pattern only, 4 bytes per observed entry less at the load peak.
    if let Some((_, Layer::Whole(m))) = psi_mask.as_mut() {
        m.values = Vec::new();
    }
    let splicing = build_splicing(SplicingInput {
        file: &file,
        cell_names: &cell_names,
        junction_names,
        gene_names: junction_gene_names,
        junc2atse,
        atse_ids,
        k,
        n,
        junc_ratio,
        psi_mask,
    })?;
    Ok(Dataset {
        source: file,
        cell_names,
        gene_names,
        expression: expression.map(|(_, x)| x),
        library_size,
        splicing,
        obs,
        obs_tables,
        covariates,
    })
}

/// Find an obs column named by a flag ([`lookup_column`] in the reader's tables).
pub fn find_column<'a>(raw: &'a RawData, name: &str, flag: &str) -> Result<(String, &'a ObsColumn)> {
    lookup_column(&raw.file, &raw.obs_tables, name, flag)
}

/// Find an obs column named by a flag: the global obs first (also as `<modality>:<name>`), then the
/// modalities' obs tables in order, then `<modality>:<column>` in that modality's table. Training and
/// every analysis look columns up here. Returns the column's field (`<table>/<column>`).
pub fn lookup_column<'a>(file: &str, tables: &'a [ObsTable], name: &str, flag: &str) -> Result<(String, &'a ObsColumn)> {
    let mut candidates: Vec<(&ObsTable, String)> = Vec::new();
    let modalities: Vec<&String> = tables.iter().filter_map(|t| t.modality.as_ref()).collect();
    for t in tables.iter().filter(|t| t.modality.is_none()) {
        candidates.push((t, name.to_string()));
        for m in &modalities {
            candidates.push((t, format!("{m}:{name}")));
        }
    }
    for t in tables.iter().filter(|t| t.modality.is_some()) {
        candidates.push((t, name.to_string()));
    }
    if let Some((m, rest)) = name.split_once(':') {
        for t in tables.iter().filter(|t| t.modality.as_deref() == Some(m)) {
            candidates.push((t, rest.to_string()));
        }
    }
    for (t, col) in &candidates {
        if let Some((_, c)) = t.columns.iter().find(|(n, _)| n == col) {
            if t.modality.is_some() && !name.contains(':') {
                // found in the first modality's obs: say so if another modality's differs
                for other in tables.iter().filter(|o| o.modality.is_some() && o.modality != t.modality) {
                    if let Some((_, oc)) = other.columns.iter().find(|(n, _)| n == col) {
                        if oc.as_strings() != c.as_strings() {
                            eprintln!(
                                "warning: {}: obs column {name:?} ({flag}) differs between {} and {}; using {}'s (name one with `{}:{name}`)",
                                file,
                                t.field,
                                other.field,
                                t.modality.as_deref().unwrap_or_default(),
                                other.modality.as_deref().unwrap_or_default()
                            );
                        }
                    }
                }
            }
            return Ok((format!("{}/{}", t.field, col), c));
        }
        if let Some((_, why)) = t.unreadable.iter().find(|(n, _)| n == col) {
            return Err(DataError::new(file, &format!("{}/{}", t.field, col), format!("column named by {flag} cannot be read: {why}")).into());
        }
    }
    let mut avail: Vec<String> = Vec::new();
    for t in tables {
        for n in t.columns.iter().map(|(n, _)| n).chain(t.unreadable.iter().map(|(n, _)| n)) {
            avail.push(match &t.modality {
                None => n.clone(),
                Some(m) => format!("{m}:{n}"),
            });
        }
    }
    let field = tables.first().map_or("obs".to_string(), |t| t.field.clone());
    let list = if avail.is_empty() { "none".to_string() } else { avail.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ") };
    Err(DataError::new(file, &field, format!("no obs column {name:?} (set by {flag}); columns present: {list}")).into())
}

/// Resolve a column to a categorical covariate: a categorical keeps its categories (unused ones
/// included, as pandas does); other columns get their sorted unique values as levels. Missing values are
/// an error (scvi refuses them too).
pub fn to_categorical(file: &str, field: &str, name: &str, flag: &str, col: &ObsColumn, cells: &[String]) -> Result<Categorical> {
    let missing = |i: usize| -> anyhow::Error {
        DataError::new(file, field, format!("missing value (a missing category, NaN, or in obs.tsv an empty or NA field) in the column named by {flag}: a categorical covariate needs a level for every cell")).cell(i, cells).into()
    };
    let (codes, levels) = match col {
        ObsColumn::Categorical { codes, categories, .. } => {
            if let Some(i) = codes.iter().position(|&c| c < 0) {
                return Err(missing(i));
            }
            (codes.iter().map(|&c| c as u32).collect(), categories.clone())
        }
        ObsColumn::Text(v) => {
            let mut levels: Vec<String> = v.clone();
            levels.sort();
            levels.dedup();
            (v.iter().map(|s| levels.binary_search(s).unwrap() as u32).collect(), levels)
        }
        ObsColumn::Numeric(v, _) => {
            if let Some(i) = v.iter().position(|x| x.is_nan()) {
                return Err(missing(i));
            }
            let mut uniq = v.clone();
            uniq.sort_by(|a, b| a.total_cmp(b));
            uniq.dedup();
            let codes = v.iter().map(|x| uniq.binary_search_by(|u| u.total_cmp(x)).unwrap() as u32).collect();
            (codes, uniq.into_iter().map(number_label).collect())
        }
        ObsColumn::Int(c) => {
            if let Some(i) = (0..c.values.len()).find(|&i| c.is_missing(i)) {
                return Err(missing(i));
            }
            let mut uniq = c.values.clone();
            uniq.sort_unstable();
            uniq.dedup();
            let codes = c.values.iter().map(|x| uniq.binary_search(x).unwrap() as u32).collect();
            (codes, uniq.iter().map(|x| x.to_string()).collect())
        }
        ObsColumn::Bool(v) => {
            let mut uniq: Vec<bool> = v.clone();
            uniq.sort();
            uniq.dedup();
            let codes = v.iter().map(|b| uniq.binary_search(b).unwrap() as u32).collect();
            (codes, uniq.iter().map(|&b| if b { "True" } else { "False" }.to_string()).collect())
        }
    };
    Ok(Categorical { name: name.to_string(), codes, levels })
}

/// A numeric column with more than 50 distinct values, more than one for every two cells, is more
/// likely a measurement (a library size, a count) than categories: `--labels-key` and the other
/// covariate keys warn, `evaluate --label` refuses it.
pub fn looks_like_a_measurement(n_levels: usize, n_cells: usize) -> bool {
    n_levels > 50 && n_levels * 2 > n_cells
}

fn single_level(name: &str, n: usize) -> Categorical {
    Categorical { name: name.to_string(), codes: vec![0; n], levels: vec!["0".to_string()] }
}

fn resolve_covariates(raw: &RawData, opts: &DataOptions) -> Result<Covariates> {
    let n = raw.cell_names.len();
    let cat = |key: &Option<String>, flag: &str, default: &str| -> Result<Categorical> {
        match key {
            None => Ok(single_level(default, n)),
            Some(k) => {
                let (field, col) = find_column(raw, k, flag)?;
                let c = to_categorical(&raw.file, &field, k, flag, col, &raw.cell_names)?;
                // (a numeric column is taken as categories, as scvi-tools does; one with a level for most
                // cells is more likely a measurement named by mistake)
                if matches!(col, ObsColumn::Numeric(..) | ObsColumn::Int(_)) && looks_like_a_measurement(c.levels.len(), n) {
                    eprintln!(
                        "warning: {flag} {k}: a numeric column with {} distinct values for {n} cells, each taken as its own category",
                        c.levels.len()
                    );
                }
                Ok(c)
            }
        }
    };
    let batch = cat(&opts.batch_key, "--batch-key", "batch")?;
    let labels = cat(&opts.labels_key, "--labels-key", "labels")?;
    let categorical = opts
        .categorical_covariate_keys
        .iter()
        .map(|k| cat(&Some(k.clone()), "--categorical-covariate", k))
        .collect::<Result<Vec<_>>>()?;
    let nc = opts.continuous_covariate_keys.len();
    let mut continuous = vec![0f32; n * nc];
    for (c, k) in opts.continuous_covariate_keys.iter().enumerate() {
        let (field, col) = find_column(raw, k, "--continuous-covariate")?;
        let vals: Vec<f64> = match col {
            ObsColumn::Bool(v) => v.iter().map(|&b| b as u8 as f64).collect(),
            _ => match col.numbers() {
                Some(v) => v,
                None => return Err(DataError::new(&raw.file, &field, "a continuous covariate must be a numeric column (this one holds text or categories)").into()),
            },
        };
        if let Some(i) = vals.iter().position(|x| !x.is_finite()) {
            return Err(DataError::new(&raw.file, &field, format!("continuous covariate value {} is not finite", vals[i])).cell(i, &raw.cell_names).into());
        }
        for i in 0..n {
            continuous[i * nc + c] = vals[i] as f32;
        }
    }
    Ok(Covariates { batch, labels, categorical, continuous_names: opts.continuous_covariate_keys.clone(), continuous })
}
