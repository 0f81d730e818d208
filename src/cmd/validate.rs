//! `splicevi validate <data>`: load a dataset with every check of model.md §14.4 and print a summary,
//! or the first violated invariant (non-zero exit).

use crate::data::load::{load_with, LoadChecks};
use crate::data::validate::check_dataset;
use crate::data::{Categorical, DataOptions, Dataset};
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// Input: a .h5mu (SpliceVI layout), a splicing-only .h5ad, or a Matrix Market directory
    /// (junction_counts.mtx, atse_counts.mtx, barcodes.tsv, junctions.tsv[, expression.mtx, genes.tsv, obs.tsv]).
    pub data: PathBuf,
    #[command(flatten)]
    pub data_options: DataOptions,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Range3 {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Levels {
    pub name: String,
    /// (level, number of cells).
    pub sizes: Vec<(String, usize)>,
}

/// What `validate` reports about a dataset that passed every check.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Summary {
    pub source: String,
    pub cells: usize,
    /// `None` for splicing-only data.
    pub genes: Option<usize>,
    pub junctions: usize,
    pub atses: usize,
    pub junctions_per_atse: Option<Range3>,
    pub observed_entries: usize,
    /// Percentage of cell × junction entries observed (n > 0; the loader refuses data without cells or
    /// junctions).
    pub observed_percent: f64,
    pub cells_without_observed_junction: usize,
    pub has_counts: bool,
    /// Over observed entries.
    pub k_range: Option<(f64, f64)>,
    pub n_range: Option<(f64, f64)>,
    pub expression_nonzeros: Option<usize>,
    pub expression_nonzero_range: Option<(f64, f64)>,
    pub cells_with_zero_expression: Option<usize>,
    pub library_size: Option<Range3>,
    /// `None` without --batch-key (the model's one placeholder batch is no column of the data).
    pub batch: Option<Levels>,
    pub labels: Option<Levels>,
    pub categorical_covariates: Vec<Levels>,
    pub continuous_covariates: Vec<(String, f32, f32)>,
}

fn range3(mut v: Vec<f64>) -> Option<Range3> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len();
    let median = if m % 2 == 1 { v[m / 2] } else { 0.5 * (v[m / 2 - 1] + v[m / 2]) };
    Some(Range3 { min: v[0], median, max: v[m - 1] })
}

fn min_max(v: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    v.fold(None, |acc, x| match acc {
        None => Some((x, x)),
        Some((a, b)) => Some((a.min(x), b.max(x))),
    })
}

fn levels(c: &Categorical) -> Levels {
    let mut counts = vec![0usize; c.levels.len()];
    for &x in &c.codes {
        counts[x as usize] += 1;
    }
    Levels { name: c.name.clone(), sizes: c.levels.iter().cloned().zip(counts).collect() }
}

pub fn summarize(ds: &Dataset, opts: &DataOptions) -> Summary {
    let s = &ds.splicing;
    let mut per_atse = vec![0f64; s.n_atse()];
    for &a in &s.junc2atse {
        per_atse[a as usize] += 1.0;
    }
    let total = ds.n_cells() as f64 * s.n_junctions as f64;
    let nc = ds.covariates.continuous_names.len();
    Summary {
        source: ds.source.clone(),
        cells: ds.n_cells(),
        genes: ds.expression.as_ref().map(|_| ds.n_genes()),
        junctions: s.n_junctions,
        atses: s.n_atse(),
        junctions_per_atse: range3(per_atse),
        observed_entries: s.nnz(),
        observed_percent: 100.0 * s.nnz() as f64 / total,
        cells_without_observed_junction: (0..s.n_cells).filter(|&c| s.cell_range(c).is_empty()).count(),
        has_counts: s.has_counts,
        // (PSI-only data has no counts: the loader's k = 0, n = 1 are placeholders, not a range)
        k_range: if s.has_counts { min_max(s.k.iter().map(|&x| x as f64)) } else { None },
        n_range: if s.has_counts { min_max(s.n.iter().map(|&x| x as f64)) } else { None },
        expression_nonzeros: ds.expression.as_ref().map(|x| x.nnz()),
        expression_nonzero_range: ds.expression.as_ref().and_then(|x| min_max(x.values.iter().map(|&v| v as f64))),
        cells_with_zero_expression: ds.expression.as_ref().map(|x| (0..x.n_rows).filter(|&r| x.row(r).1.iter().all(|&v| v == 0.0)).count()),
        // Without expression the loader fills the library sizes with 1s that nothing reads: no range.
        library_size: if ds.expression.is_some() { range3(ds.library_size.iter().map(|&x| x as f64).collect()) } else { None },
        batch: opts.batch_key.as_ref().map(|_| levels(&ds.covariates.batch)),
        labels: opts.labels_key.as_ref().map(|_| levels(&ds.covariates.labels)),
        categorical_covariates: ds.covariates.categorical.iter().map(levels).collect(),
        continuous_covariates: (0..nc)
            .map(|c| {
                let (lo, hi) = min_max((0..ds.n_cells()).map(|i| ds.covariates.continuous[i * nc + c] as f64)).unwrap_or((0.0, 0.0));
                (ds.covariates.continuous_names[c].clone(), lo as f32, hi as f32)
            })
            .collect(),
    }
}

fn fmt_levels(l: &Levels) -> String {
    let parts: Vec<String> = l.sizes.iter().map(|(n, c)| format!("{n} ({c})")).collect();
    format!("{} levels: {}", l.sizes.len(), parts.join(", "))
}

fn fmt_range(r: Option<(f64, f64)>) -> String {
    r.map_or("-".into(), |(a, b)| format!("{a} .. {b}"))
}

fn fmt_range3(r: &Option<Range3>) -> String {
    r.as_ref().map_or("-".into(), |r| format!("min {} / median {} / max {}", r.min, r.median, r.max))
}

pub fn render(s: &Summary) -> String {
    let mut o = String::new();
    let mut line = |k: &str, v: String| o.push_str(&format!("{k:<34}{v}\n"));
    line("source", s.source.clone());
    line("cells", s.cells.to_string());
    line("genes", s.genes.map_or("none (splicing only)".into(), |g| g.to_string()));
    line("junctions", s.junctions.to_string());
    line("ATSEs", s.atses.to_string());
    line("junctions per ATSE", fmt_range3(&s.junctions_per_atse));
    line("observed cell × junction entries", format!("{} ({:.3}%)", s.observed_entries, s.observed_percent));
    line("cells without observed junctions", s.cells_without_observed_junction.to_string());
    if s.has_counts {
        line("junction counts k (observed)", fmt_range(s.k_range));
        line("ATSE totals n (observed)", fmt_range(s.n_range));
    } else {
        line("splicing counts", "none (PSI and mask only: train with --splicing-loss-type bce; analyses with --method decoder)".into());
    }
    if let Some(nz) = s.expression_nonzeros {
        line("expression non-zeros", format!("{nz} (values {})", fmt_range(s.expression_nonzero_range)));
        line("cells with all-zero expression", s.cells_with_zero_expression.unwrap_or(0).to_string());
    }
    if s.genes.is_some() {
        line("library size", fmt_range3(&s.library_size));
    }
    match &s.batch {
        Some(b) => line(&format!("batch {}", b.name), fmt_levels(b)),
        None => line("batch", "none (no --batch-key: every cell in one batch)".into()),
    }
    if let Some(l) = &s.labels {
        line(&format!("labels {}", l.name), fmt_levels(l));
    }
    for l in &s.categorical_covariates {
        line(&format!("categorical {}", l.name), fmt_levels(l));
    }
    for (n, lo, hi) in &s.continuous_covariates {
        line(&format!("continuous {n}"), format!("{lo} .. {hi}"));
    }
    o
}

/// How many names occur more than once, and the first of them with its first two positions.
fn repeated_names(names: &[String]) -> Option<(usize, String, usize, usize)> {
    let mut first: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut found: Option<(String, usize, usize)> = None;
    let mut n = 0;
    for (i, name) in names.iter().enumerate() {
        match first.get(name.as_str()) {
            Some(&f) => {
                n += 1;
                found.get_or_insert((name.clone(), f, i));
            }
            None => {
                first.insert(name, i);
            }
        }
    }
    found.map(|(name, i, j)| (n, name, i, j))
}

pub fn run(args: ValidateArgs) -> anyhow::Result<()> {
    let checks = LoadChecks {
        require_integer_expression: args.data_options.require_integer_expression,
        require_integer_splicing: args.data_options.require_integer_splicing,
        ..Default::default()
    };
    let ds = load_with(&args.data, &args.data_options, &checks)?;
    // The loader guarantees these; re-checking the result costs one pass and guards the loader itself.
    check_dataset(&ds, &checks)?;
    // anndata allows repeated names (with a warning); selections by name (--junctions, --genes) refuse them
    for (what, names) in [("cell", &ds.cell_names), ("gene", &ds.gene_names), ("junction", &ds.splicing.junction_names)] {
        if let Some((n, first, i, j)) = repeated_names(names) {
            eprintln!("warning: {n} repeated {what} name(s) (first: `{first}` at {i} and {j}); selecting {what}s by name needs unique names");
        }
    }
    let s = summarize(&ds, &args.data_options);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", render(&s));
        println!("OK: every check passed");
    }
    Ok(())
}
