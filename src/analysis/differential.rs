//! The machinery shared by differential expression and splicing (model.md §7.7–§7.8): scvi-tools'
//! `_de_core` / `DifferentialComputation.get_bayes_factors` in "change" mode, as the original calls it.
//!
//! For each group, `n_samples_overall` (5000) "scale" vectors are drawn: cells sampled WITH
//! replacement from the group, each decoded once from its posterior mean (use_z_mean, §12.16) with its
//! observed batch (with `n_samples` S > 1: the average of S decodes of posterior samples of its z,
//! §14.2, instead of the decode of its mean) — or, with batch correction, `n_samples_overall / n_batches` per batch, decoded under that
//! batch. Sample i of group 1 is paired with sample i of group 2 (within the same batch when both
//! groups use the same batches; no permutation). With the change r of each pair,
//! P(DE) = max(P(r ≥ δ), P(r < −δ)), the Bayes factor is ln(P + 1e-8) − ln(1 − P + 1e-8), and the FDR
//! call flags the largest prefix of features sorted by P (descending) whose running mean of 1 − P is
//! ≤ the target. Everything is seeded (the original draws from numpy's global RNG).

use super::posterior::{tags, DecodeOptions, Posterior, SplicingFn};
use crate::data::{Dataset, ObsColumn};
use crate::model::Mat;
use crate::train::rng::{stream, Purpose};
use anyhow::{bail, Result};
use rand::Rng;

/// Options of the change-mode test.
#[derive(Clone, Debug)]
pub struct ChangeOptions {
    /// Minimum |effect| that counts as a change (0.25 log2 fold change for DE, 0.10 ΔPSI for DS).
    pub delta: f64,
    pub fdr: f64,
    /// Scale vectors per group (5000 in the original).
    pub n_samples_overall: usize,
    /// Posterior samples of z per drawn cell, each decoded, the cell's scale vector their average
    /// (§14.2: over samples, never cells). 1 = the decode of the posterior mean, the original's
    /// use_z_mean=True (§12.16: its n_samples changes nothing there).
    pub n_samples: usize,
    /// Decode every sample under every batch (in turn) instead of its observed batch.
    pub batch_correction: bool,
    /// Batches to condition group 1 / group 2 on with batch correction (None = all batches).
    pub batchid1: Option<Vec<u32>>,
    pub batchid2: Option<Vec<u32>>,
    pub seed: u64,
    /// Cells per decoding block.
    pub block_cells: usize,
    /// Differential splicing only: a junction observed (ψ mask 1) in fewer than this many cells of
    /// either group is not tested: `is_ds_fdr` False and left out of the FDR set (its proba_ds and the
    /// other columns are still reported). 0 = every junction is tested (the original).
    pub min_obs_cells: u64,
    /// How P(DE) is formed from the two one-sided probabilities (scvi's `test_mode`).
    pub test_mode: TestMode,
    /// scvi's `filter_outlier_cells`: drop each group's cells outside a robust elliptic envelope of
    /// their joint-latent means (contamination 0.1, `outlier`) before sampling. The empirical columns
    /// still use every cell of the group.
    pub filter_outlier_cells: bool,
    /// Differential splicing only: a junction is tested only where the observed PSI of the two groups
    /// differ with Welch's t-test p-value below this (`ds::empirical_pvalues`; the `emp_pvalue`
    /// column). None = no such requirement (the original).
    pub max_emp_pvalue: Option<f64>,
}

/// How P(DE) is formed from P(r ≥ δ) and P(r ≤ −δ) (scvi-tools' `test_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TestMode {
    /// max(P(r ≥ δ), P(r < −δ)): the original SpliceVI's test.
    Three,
    /// P(r ≥ δ) + P(r < −δ) = P(|r| ≥ δ): scvi-tools' default since 1.2. A change seen in both
    /// directions across cell pairs (a wide spread) still counts as a change of at least δ.
    Two,
}

impl ChangeOptions {
    pub fn new(delta: f64) -> Self {
        ChangeOptions {
            delta,
            fdr: 0.05,
            n_samples_overall: 5000,
            n_samples: 1,
            batch_correction: false,
            batchid1: None,
            batchid2: None,
            seed: 0,
            block_cells: 512,
            min_obs_cells: 0,
            test_mode: TestMode::Three,
            filter_outlier_cells: false,
            max_emp_pvalue: None,
        }
    }
    pub fn validate(&self) -> Result<()> {
        // (the messages name the flags of diff-splicing and diff-expression, which set these)
        anyhow::ensure!(self.delta >= 0.0 && self.delta.is_finite(), "--delta must be a finite number ≥ 0, got {}", self.delta);
        anyhow::ensure!((0.0..=1.0).contains(&self.fdr), "--fdr (the FDR target) must be in [0, 1], got {}", self.fdr);
        anyhow::ensure!(self.n_samples_overall > 0, "--n-samples-overall (posterior samples per group) must be > 0");
        anyhow::ensure!(self.n_samples > 0, "--n-samples (posterior samples of z per drawn cell) must be > 0");
        anyhow::ensure!(self.block_cells > 0, "--block-cells must be > 0");
        if !self.batch_correction && (self.batchid1.is_some() || self.batchid2.is_some()) {
            bail!("--batchid1 / --batchid2 need batch correction, which is off here: give --batch-correction (the original raises \"Unconsistent batch policy\")");
        }
        if let Some(p) = self.max_emp_pvalue {
            anyhow::ensure!(p > 0.0 && p <= 1.0, "--max-emp-pvalue (the empirical p-value bound) must be in (0, 1], got {p}");
        }
        Ok(())
    }
}

/// One comparison: the cells of group 1 and group 2, and their names.
#[derive(Clone, Debug)]
pub struct Comparison {
    pub group1: String,
    pub group2: String,
    pub idx1: Vec<usize>,
    pub idx2: Vec<usize>,
}

/// Most groups a `--groupby` column may hold when no --group1 is given (each group is then one
/// comparison: a continuous or per-cell column would silently run hundreds).
pub const MAX_GROUPS_WITHOUT_GROUP1: usize = 100;

/// The groups of a `--groupby` column: level names in pandas' `astype("category")` order (categories
/// in the column's order, numbers ascending, text sorted), and each cell's level (None: missing).
/// Also the classes of `evaluate --label` ([`obs_groups`]).
pub struct Groups {
    pub names: Vec<String>,
    pub of_cell: Vec<Option<usize>>,
    /// A numeric column's level values: a group given as `214.0` is the level `214`.
    pub values: Option<Vec<f64>>,
}

impl Groups {
    fn of(col: &ObsColumn) -> Groups {
        match col {
            ObsColumn::Categorical { categories, codes, int_categories, .. } => {
                let used: Vec<usize> = (0..categories.len()).filter(|&i| codes.contains(&(i as i32))).collect();
                let mut level = vec![None; categories.len()];
                used.iter().enumerate().for_each(|(l, &c)| level[c] = Some(l));
                let of_cell = codes.iter().map(|&c| if c < 0 { None } else { level[c as usize] }).collect();
                // Integer categories are numbers too: `1.0` finds the category 1.
                let values = int_categories.and_then(|_| used.iter().map(|&c| categories[c].parse::<f64>().ok()).collect::<Option<Vec<f64>>>());
                Groups { names: used.iter().map(|&c| categories[c].clone()).collect(), of_cell, values }
            }
            ObsColumn::Numeric(v, _) => {
                // (NaN is missing, as pandas leaves it out of the categories)
                let mut u: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
                u.sort_by(f64::total_cmp);
                u.dedup();
                let of_cell = v.iter().map(|x| u.binary_search_by(|y| y.total_cmp(x)).ok()).collect();
                Groups { names: u.iter().map(|x| format!("{x}")).collect(), of_cell, values: Some(u) }
            }
            ObsColumn::Int(c) => {
                let mut u: Vec<i128> = c.iter().flatten().collect();
                u.sort_unstable();
                u.dedup();
                let of_cell = c.iter().map(|x| x.and_then(|x| u.binary_search(&x).ok())).collect();
                Groups { names: u.iter().map(|x| x.to_string()).collect(), of_cell, values: Some(u.iter().map(|&x| x as f64).collect()) }
            }
            _ => {
                let values = col.as_strings();
                let mut u = values.clone();
                u.sort();
                u.dedup();
                let of_cell = values.iter().map(|x| u.binary_search(x).ok()).collect();
                Groups { names: u, of_cell, values: None }
            }
        }
    }

    /// The level `g` names: by name, or by value in a numeric column (an integer beyond 2^53 by its
    /// exact name only).
    fn find(&self, g: &str) -> Option<usize> {
        let by_name = self.names.iter().position(|n| n == g);
        match &self.values {
            Some(v) if by_name.is_none() => g.trim().parse::<f64>().ok().and_then(|x| v.iter().position(|&y| y == x)),
            _ => by_name,
        }
    }

    fn members(&self, level: usize) -> Vec<usize> {
        self.of_cell.iter().enumerate().filter(|(_, l)| **l == Some(level)).map(|(i, _)| i).collect()
    }

    /// The level names for an error message, in natural order (`T2` before `T10`, numbers by value).
    fn listed(&self) -> String {
        let mut v: Vec<&str> = self.names.iter().map(|s| s.as_str()).collect();
        if self.values.is_none() {
            v.sort_by(|a, b| natural_cmp(a, b));
        }
        v.join(", ")
    }
}

/// Natural order of two names: runs of digits compare by value, everything else as text.
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    // maximal runs of ASCII digits and of everything else (a digit byte is always a char boundary)
    fn runs(s: &str) -> Vec<&str> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut start = 0;
        for i in 1..=b.len() {
            if i == b.len() || b[i].is_ascii_digit() != b[i - 1].is_ascii_digit() {
                out.push(&s[start..i]);
                start = i;
            }
        }
        out
    }
    let (ra, rb) = (runs(a), runs(b));
    for (x, y) in ra.iter().zip(&rb) {
        let o = if x.as_bytes()[0].is_ascii_digit() && y.as_bytes()[0].is_ascii_digit() {
            let (nx, ny) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
            nx.len().cmp(&ny.len()).then_with(|| nx.cmp(ny))
        } else {
            x.cmp(y)
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    // (then the shorter first; `01` and `1` by their text)
    ra.len().cmp(&rb.len()).then_with(|| a.cmp(b))
}

/// Group 2's name when it is every cell outside group 1: scvi's "Rest", unless the column has a group
/// of that name (its row would read "Rest vs Rest"); then "Rest (all other cells)", numbered on in the
/// unlikely case that is a group too.
pub fn rest_label(groups: &[String]) -> String {
    let taken = |s: &str| groups.iter().any(|g| g == s);
    if !taken("Rest") {
        return "Rest".into();
    }
    let base = "Rest (all other cells)";
    std::iter::once(base.to_string()).chain((2..).map(|i| format!("{base} {i}"))).find(|s| !taken(s)).expect("an unused name")
}

/// The groups of the obs column `column` that `flag` names: categorical, text, boolean or
/// integer-valued numbers; a column with non-integer numbers is refused (a measurement, not groups).
pub fn obs_groups(ds: &Dataset, flag: &str, column: &str) -> Result<Groups> {
    let (_, col) = ds.obs_column(column, flag)?;
    if let Some(x) = col.first_non_integer() {
        bail!("{flag} {column}: {}: `{column}` holds non-integer numbers (e.g. {x}), a measurement rather than groups of cells; give a categorical column", ds.source);
    }
    Ok(Groups::of(col))
}

/// The comparisons of `--groupby COL [--group1 A] [--group2 B]`: group 2 defaults to every other cell
/// (named by [`rest_label`]);
/// without group 1, every group in turn (in pandas' `astype("category")` order: categories in the
/// column's order, numbers ascending, text sorted) against group 2, or against the rest. (scvi's
/// `_de_core` loops over every group against group 2 as well, group 2 itself included; that
/// self-comparison is left out here.) A numeric column's groups are matched by value (`214.0` is
/// `214`); a column with non-integer numbers is refused (a measurement, not groups), as is one with
/// more than [`MAX_GROUPS_WITHOUT_GROUP1`] groups when --group1 is not given.
pub fn comparisons(ds: &Dataset, groupby: &str, group1: Option<&str>, group2: Option<&str>) -> Result<Vec<Comparison>> {
    let groups = obs_groups(ds, "--groupby", groupby)?;
    let find = |flag: &str, g: &str| -> Result<usize> {
        match groups.find(g) {
            Some(l) => Ok(l),
            None => bail!("{flag} {g}: {}: obs column `{groupby}` has no cell in group `{g}` (groups: {})", ds.source, groups.listed()),
        }
    };
    let l2 = group2.map(|g| find("--group2", g)).transpose()?;
    let firsts: Vec<usize> = match group1 {
        Some(g) => vec![find("--group1", g)?],
        None => {
            let n = groups.names.len();
            if n < 2 {
                bail!("--groupby {groupby}: {}: obs column `{groupby}` has a single group; nothing to compare", ds.source);
            }
            if n > MAX_GROUPS_WITHOUT_GROUP1 {
                bail!(
                    "--groupby {groupby}: {}: `{groupby}` has {n} groups; without --group1 each would be compared in turn ({} comparisons): give --group1 (at most {MAX_GROUPS_WITHOUT_GROUP1} groups without it)",
                    ds.source,
                    n - usize::from(l2.is_some())
                );
            }
            // with --group2: every other group against it
            (0..n).filter(|&l| Some(l) != l2).collect()
        }
    };
    let rest = rest_label(&groups.names);
    if l2.is_none() && rest != "Rest" {
        eprintln!("note: `{groupby}` has a group called Rest: the other cells of each comparison are called `{rest}`");
    }
    let mut out = Vec::new();
    for l1 in firsts {
        let g1 = groups.names[l1].clone();
        if Some(l1) == l2 {
            bail!("{}: group 1 and group 2 are both `{g1}` in `{groupby}`; nothing to compare", ds.source);
        }
        let idx1 = groups.members(l1);
        let (name2, idx2) = match l2 {
            Some(l) => (groups.names[l].clone(), groups.members(l)),
            None => (rest.clone(), (0..ds.n_cells()).filter(|&i| groups.of_cell[i] != Some(l1)).collect()),
        };
        if idx2.is_empty() {
            bail!("{}: group 2 of `{g1}` vs `{name2}` in `{groupby}` is empty", ds.source);
        }
        out.push(Comparison { group1: g1, group2: name2, idx1, idx2 });
    }
    Ok(out)
}

/// What one group's samples decode: sample i is cell `cells[i]` under batch `batch[i]` (None = observed).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplePlan {
    pub cells: Vec<usize>,
    pub batch: Vec<Option<u32>>,
}

impl SamplePlan {
    pub fn len(&self) -> usize {
        self.cells.len()
    }
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }
}

/// The scale sampler: cells drawn uniformly with replacement from `group`, `n_overall` in all, split
/// evenly over `batches` (None = the observed batch; `int(n / n_batches)`, at least 2, per batch).
/// `key` distinguishes the streams of different groups and comparisons.
pub fn sample_plan(group: &[usize], batches: Option<&[u32]>, n_overall: usize, seed: u64, key: u64) -> SamplePlan {
    let list: Vec<Option<u32>> = match batches {
        None => vec![None],
        Some(b) => b.iter().map(|&x| Some(x)).collect(),
    };
    let mut n = n_overall / list.len().max(1);
    if n == 0 {
        n = 2;
    }
    let mut plan = SamplePlan { cells: Vec::with_capacity(n * list.len()), batch: Vec::with_capacity(n * list.len()) };
    for (k, b) in list.iter().enumerate() {
        let mut rng = stream(seed, Purpose::Analysis, tags::DIFF_SAMPLE, key.wrapping_mul(1 << 16) + k as u64);
        for _ in 0..n {
            plan.cells.push(group[rng.gen_range(0..group.len())]);
            plan.batch.push(*b);
        }
    }
    plan
}

/// The two plans of a comparison, ordered so that sample i of group 1 pairs with sample i of group 2
/// (the original's pairing: per batch when both groups are conditioned on the same batch set).
pub fn paired_plans(cmp: &Comparison, n_batch: usize, opts: &ChangeOptions, key: u64) -> Result<(SamplePlan, SamplePlan)> {
    if !opts.batch_correction {
        let p1 = sample_plan(&cmp.idx1, None, opts.n_samples_overall, opts.seed, 2 * key);
        let p2 = sample_plan(&cmp.idx2, None, opts.n_samples_overall, opts.seed, 2 * key + 1);
        return Ok((p1, p2));
    }
    let all: Vec<u32> = (0..n_batch.max(1) as u32).collect();
    let mut b1 = opts.batchid1.clone().unwrap_or_else(|| all.clone());
    let mut b2 = opts.batchid2.clone().unwrap_or_else(|| all.clone());
    let (mut s1, mut s2) = (b1.clone(), b2.clone());
    s1.sort_unstable();
    s1.dedup();
    s2.sort_unstable();
    s2.dedup();
    if s1 == s2 {
        // Same batch set: pairs are formed within each batch, so both plans use one batch order.
        b1 = s1;
        b2 = s2;
    }
    let p1 = sample_plan(&cmp.idx1, Some(&b1), opts.n_samples_overall, opts.seed, 2 * key);
    let p2 = sample_plan(&cmp.idx2, Some(&b2), opts.n_samples_overall, opts.seed, 2 * key + 1);
    if p1.len() != p2.len() {
        bail!("batch correction: {} samples for group 1 but {} for group 2 (batch lists of different lengths cannot be paired)", p1.len(), p2.len());
    }
    Ok((p1, p2))
}

/// Decode samples `range` of a plan: rows in plan order, each the decode of the cell's posterior mean or
/// the average over `opts.n_samples` posterior samples. Consecutive samples with the same batch are
/// decoded together in blocks of `opts.block_cells` cells.
pub fn decode_plan(post: &Posterior, plan: &SamplePlan, range: std::ops::Range<usize>, psi: Option<SplicingFn>, expr: bool, opts: &ChangeOptions) -> Result<Mat<f32>> {
    let block = opts.block_cells;
    let width = if psi.is_some() { post.ds.n_junctions() } else { post.ds.n_genes() };
    let mut out = Mat::<f32>::zeros(range.len(), width);
    let mut i = range.start;
    while i < range.end {
        let b = plan.batch[i];
        let mut e = i + 1;
        while e < range.end && e - i < block && plan.batch[e] == b {
            e += 1;
        }
        let dec_opts = DecodeOptions { transform_batch: b.into_iter().collect(), n_samples: opts.n_samples, seed: opts.seed };
        let dec = post.decode(&plan.cells[i..e], &dec_opts, psi, expr)?;
        let m = if psi.is_some() { dec.psi } else { dec.expr }.expect("requested output");
        let r0 = i - range.start;
        out.data[r0 * width..(r0 + (e - i)) * width].copy_from_slice(&m.data);
        i = e;
    }
    Ok(out)
}

/// Posterior probability of a change from the counts of pairs with r ≥ δ and r < −δ: their max
/// ("three", the original) or their sum ("two").
pub fn proba_de(n_plus: f64, n_minus: f64, n: f64, mode: TestMode) -> f64 {
    match mode {
        TestMode::Three => (n_plus / n).max(n_minus / n),
        TestMode::Two => ((n_plus + n_minus) / n).min(1.0),
    }
}

/// The comparison the sampler draws from: with `filter_outlier_cells`, each group without the cells
/// outside the robust envelope of its joint-latent means (`outlier::envelope_inliers`). A group too
/// small for a covariance is kept whole, with a note on stderr (scvi warns and does the same).
pub fn sampled_groups(post: &Posterior, cmp: &Comparison, opts: &ChangeOptions) -> Result<Comparison> {
    if !opts.filter_outlier_cells {
        return Ok(cmp.clone());
    }
    let filter = |cells: &[usize], name: &str, key: u64| -> Result<Vec<usize>> {
        let ([joint, ..], [p, ..]) = post.latent_means(cells, opts.block_cells)?;
        let x: Vec<f64> = joint.iter().map(|&v| v as f64).collect();
        match super::outlier::envelope_inliers(&x, p, super::outlier::CONTAMINATION, opts.seed.wrapping_mul(1 << 20) + key) {
            Ok(keep) => Ok(cells.iter().zip(keep).filter(|(_, k)| *k).map(|(&c, _)| c).collect()),
            Err(e) => {
                eprintln!("filter_outlier_cells: keeping every cell of `{name}` ({e})");
                Ok(cells.to_vec())
            }
        }
    };
    Ok(Comparison { group1: cmp.group1.clone(), group2: cmp.group2.clone(), idx1: filter(&cmp.idx1, &cmp.group1, 1)?, idx2: filter(&cmp.idx2, &cmp.group2, 2)? })
}

/// ln(P + 1e-8) − ln(1 − P + 1e-8).
pub fn bayes_factor(p: f64) -> f64 {
    (p + 1e-8).ln() - (1.0 - p + 1e-8).ln()
}

/// Indices sorted by `p` descending; ties keep their original order.
pub fn order_desc(p: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    idx
}

/// The original's `_fdr_de_prediction`: sort by P descending, running mean of 1 − P, flag the first d
/// features where d = #{running mean ≤ fdr}. Returned in the input order.
pub fn fdr_calls(p: &[f64], fdr: f64) -> Vec<bool> {
    let order = order_desc(p);
    let mut cum = 0.0;
    let mut d = 0;
    for (r, &i) in order.iter().enumerate() {
        cum += 1.0 - p[i];
        if cum / (r + 1) as f64 <= fdr {
            d += 1;
        }
    }
    let mut out = vec![false; p.len()];
    for &i in &order[..d] {
        out[i] = true;
    }
    out
}

/// A number for a TSV cell: plain decimals in the usual range, scientific notation outside it (both
/// read back exactly by Python's float()).
pub fn fmt_f64(x: f64) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf".into() } else { "-inf".into() }
    } else if x == 0.0 || (1e-4..1e15).contains(&x.abs()) {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}

/// Python's str() of a bool, as pandas writes it.
pub fn fmt_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// A TSV field holding text from the data (a name): one with a tab, a line break or a `"` is quoted
/// as pandas' `to_csv(sep="\t")` quotes it (in `"`, its `"` doubled), so `pd.read_csv(sep="\t")` and
/// `plot`'s reader give the name back unchanged; any other is written as is.
pub fn tsv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['\t', '\n', '\r', '"']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

/// Write a TSV atomically.
pub fn write_tsv(path: &std::path::Path, text: &str) -> Result<()> {
    crate::util::write_atomic(path, |tmp| Ok(std::fs::write(tmp, text.as_bytes())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdr_flags_the_largest_prefix_with_running_mean_below_target() {
        // Sorted: 1.0, 0.99, 0.9, 0.5 → running mean of 1−P: 0, 0.005, 0.0367, 0.1525.
        let p = [0.5, 1.0, 0.9, 0.99];
        assert_eq!(fdr_calls(&p, 0.05), vec![false, true, true, true]);
        assert_eq!(fdr_calls(&p, 0.004), vec![false, true, false, false]);
        assert_eq!(fdr_calls(&p, 0.2), vec![true; 4]);
        assert_eq!(fdr_calls(&[0.3, 0.2], 0.05), vec![false, false]);
        assert!(fdr_calls(&[], 0.05).is_empty());
    }

    #[test]
    fn bayes_factor_and_proba() {
        assert!((bayes_factor(0.5)).abs() < 1e-12);
        assert!((bayes_factor(0.9) - (0.9f64 + 1e-8).ln() + (0.1f64 + 1e-8).ln()).abs() < 1e-12);
        assert_eq!(proba_de(30.0, 60.0, 100.0, TestMode::Three), 0.6);
        assert_eq!(proba_de(30.0, 60.0, 100.0, TestMode::Two), 0.9);
        assert_eq!(fmt_f64(0.25), "0.25");
        assert_eq!(fmt_f64(1e-10), "1e-10");
        assert_eq!(fmt_f64(-2.5e-7), "-2.5e-7");
        assert_eq!(fmt_f64(0.0), "0");
    }

    fn with_obs(n: usize, obs: Vec<(&str, ObsColumn)>) -> Dataset {
        Dataset {
            source: "d.h5mu".into(),
            cell_names: (0..n).map(|i| format!("c{i}")).collect(),
            obs_tables: vec![crate::data::ObsTable { field: "obs".into(), columns: obs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(), ..Default::default() }],
            ..Default::default()
        }
    }

    fn pairs(c: &[Comparison]) -> Vec<(String, String, usize, usize)> {
        c.iter().map(|c| (c.group1.clone(), c.group2.clone(), c.idx1.len(), c.idx2.len())).collect()
    }

    /// `--group2 B` without `--group1`: every other group against B (scvi loops over every group, B
    /// itself included; it said "group 1 and group 2 are both B" here).
    #[test]
    fn group2_alone_compares_every_other_group_with_it() {
        let t = |v: &[&str]| ObsColumn::Text(v.iter().map(|s| s.to_string()).collect());
        let ds = with_obs(6, vec![("g", t(&["T0", "T1", "T2", "T2", "T1", "T0"]))]);
        let c = comparisons(&ds, "g", None, Some("T2")).unwrap();
        assert_eq!(pairs(&c), vec![("T0".into(), "T2".into(), 2, 2), ("T1".into(), "T2".into(), 2, 2)]);
        assert_eq!(c[1].idx1, vec![1, 4]);
        assert_eq!(pairs(&comparisons(&ds, "g", None, None).unwrap()).len(), 3);
        let e = comparisons(&ds, "g", Some("T2"), Some("T2")).unwrap_err().to_string();
        assert!(e.contains("both `T2`"), "{e}");
        let e = comparisons(&ds, "g", None, Some("T9")).unwrap_err().to_string();
        assert!(e.starts_with("--group2 T9") && e.contains("groups: T0, T1, T2"), "{e}");
        let two = with_obs(2, vec![("g", t(&["a", "b"]))]);
        assert_eq!(pairs(&comparisons(&two, "g", None, Some("b")).unwrap()), vec![("a".into(), "b".into(), 1, 1)]);
    }

    /// A numeric column: groups by value (`214.0` is `214`), listed and compared in numeric order; a
    /// column of non-integer numbers (a measurement) is refused, and so is a column of more than
    /// MAX_GROUPS_WITHOUT_GROUP1 groups without --group1 (it ran one comparison per value).
    #[test]
    fn numeric_and_many_level_groupby_columns() {
        let ds = with_obs(5, vec![("n", ObsColumn::numeric(vec![214.0, 9.0, 10.0, 214.0, f64::NAN]))]);
        let c = comparisons(&ds, "n", Some("214.0"), None).unwrap();
        assert_eq!(pairs(&c), vec![("214".into(), "Rest".into(), 2, 3)]);
        assert_eq!(c[0].idx1, vec![0, 3]);
        assert_eq!(pairs(&comparisons(&ds, "n", Some("9"), Some("2.14e2")).unwrap()), vec![("9".into(), "214".into(), 1, 2)]);
        let all: Vec<String> = comparisons(&ds, "n", None, None).unwrap().into_iter().map(|c| c.group1).collect();
        assert_eq!(all, ["9", "10", "214"], "numeric groups in numeric order, NaN in none");
        let e = comparisons(&ds, "n", Some("11"), None).unwrap_err().to_string();
        assert!(e.contains("groups: 9, 10, 214"), "{e}");
        let e = comparisons(&ds, "n", Some("214"), Some("214.0")).unwrap_err().to_string();
        assert!(e.contains("both `214`"), "{e}");

        let cont = with_obs(3, vec![("library_size", ObsColumn::numeric(vec![1234.5, 2000.0, 17.25]))]);
        for g1 in [None, Some("2000")] {
            let e = comparisons(&cont, "library_size", g1, None).unwrap_err().to_string();
            assert!(e.contains("non-integer numbers (e.g. 1234.5)"), "{e}");
        }
        let n = MAX_GROUPS_WITHOUT_GROUP1 + 1;
        let many = with_obs(n, vec![("id", ObsColumn::Text((0..n).map(|i| format!("cell{i}")).collect()))]);
        let e = comparisons(&many, "id", None, None).unwrap_err().to_string();
        assert!(e.contains(&format!("{n} groups")) && e.contains("give --group1"), "{e}");
        assert_eq!(comparisons(&many, "id", Some("cell7"), None).unwrap().len(), 1);
        let e = comparisons(&many, "id", Some("nope"), None).unwrap_err().to_string();
        assert!(e.contains("groups: cell0, cell1, cell2, cell3"), "natural order: {e}");
        let few = with_obs(n - 1, vec![("id", ObsColumn::Text((0..n - 1).map(|i| format!("cell{i}")).collect()))]);
        assert_eq!(comparisons(&few, "id", None, None).unwrap().len(), n - 1);
    }

    /// An integer column (read as such, not as floats) groups as a numeric one does: names `214`,
    /// found by value (`214.0`), missing values in no group; integers too large for a float stay
    /// apart and are found by their exact name.
    #[test]
    fn integer_groupby_columns() {
        use crate::data::{IntColumn, IntWidth};
        let col = IntColumn { values: vec![214, 9, 10, 214, 0], width: IntWidth::I32, mask: Some(vec![false, false, false, false, true]) };
        let ds = with_obs(5, vec![("n", ObsColumn::Int(col))]);
        let c = comparisons(&ds, "n", Some("214.0"), None).unwrap();
        assert_eq!(pairs(&c), vec![("214".into(), "Rest".into(), 2, 3)]);
        assert_eq!(pairs(&comparisons(&ds, "n", Some("9"), Some("2.14e2")).unwrap()), vec![("9".into(), "214".into(), 1, 2)]);
        let all: Vec<String> = comparisons(&ds, "n", None, None).unwrap().into_iter().map(|c| c.group1).collect();
        assert_eq!(all, ["9", "10", "214"], "integer groups in numeric order, the missing value in none");
        let e = comparisons(&ds, "n", Some("0"), None).unwrap_err().to_string();
        assert!(e.contains("groups: 9, 10, 214"), "{e}");
        let big = 1i64 << 60;
        let ds = with_obs(3, vec![("id", ObsColumn::Int(IntColumn::plain(vec![big, big + 1, big + 1])))]);
        let c = comparisons(&ds, "id", Some(&(big + 1).to_string()), None).unwrap();
        assert_eq!(pairs(&c), vec![((big + 1).to_string(), "Rest".into(), 2, 1)]);
        assert_eq!(comparisons(&ds, "id", None, None).unwrap().len(), 2);
    }

    /// A group called "Rest" against every other cell read "Rest vs Rest": the other side is then
    /// "Rest (all other cells)", in every comparison of the column, and with --group2 a group's name.
    #[test]
    fn the_other_cells_never_share_a_group_name() {
        let t = |v: &[&str]| ObsColumn::Text(v.iter().map(|s| s.to_string()).collect());
        let ds = with_obs(4, vec![("g", t(&["Rest", "A", "A", "Rest"]))]);
        let c = comparisons(&ds, "g", None, None).unwrap();
        assert_eq!(pairs(&c), vec![("A".into(), "Rest (all other cells)".into(), 2, 2), ("Rest".into(), "Rest (all other cells)".into(), 2, 2)]);
        assert_eq!(pairs(&comparisons(&ds, "g", Some("A"), Some("Rest")).unwrap()), vec![("A".into(), "Rest".into(), 2, 2)]);
        let plain = with_obs(2, vec![("g", t(&["rest", "A"]))]);
        assert_eq!(comparisons(&plain, "g", Some("A"), None).unwrap()[0].group2, "Rest");
        let both: Vec<String> = ["Rest", "Rest (all other cells)", "x"].iter().map(|s| s.to_string()).collect();
        assert_eq!(rest_label(&both), "Rest (all other cells) 2");
    }

    /// Names with a tab, a line break or `"` are quoted in the TSVs (they became spaces) and read back
    /// unchanged by `plot`'s reader; other names are written as they are.
    #[test]
    fn tsv_fields_quote_what_would_break_the_table() {
        assert_eq!(tsv_field("T0_a"), "T0_a");
        assert_eq!(tsv_field("a b"), "a b");
        assert_eq!(tsv_field("a\tb"), "\"a\tb\"");
        assert_eq!(tsv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        let names = ["plain", "tab\there", "two\nlines", "cr\r\nlf", "\"quoted\"", "", "end\""];
        let mut text = String::from("name\tn\n");
        for (i, n) in names.iter().enumerate() {
            text.push_str(&format!("{}\t{i}\n", tsv_field(n)));
        }
        let rec = crate::plot::tsv_records(&text);
        assert_eq!(rec.len(), names.len() + 1, "{rec:?}");
        for (i, n) in names.iter().enumerate() {
            assert_eq!(rec[i + 1], vec![n.to_string(), i.to_string()]);
        }
        // CRLF line ends, no final line break, an empty last field
        assert_eq!(crate::plot::tsv_records("a\tb\r\nc\t"), vec![vec!["a", "b"], vec!["c", ""]]);
    }

    #[test]
    fn natural_order_compares_digit_runs_by_value() {
        let mut v = vec!["T10", "T2", "T1_b", "T1_a", "b", "a10", "a9", "x01", "x1", ""];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["", "T1_a", "T1_b", "T2", "T10", "a9", "a10", "b", "x01", "x1"]);
    }

    #[test]
    fn plans_are_seeded_and_split_over_batches() {
        let g: Vec<usize> = (10..20).collect();
        let a = sample_plan(&g, None, 100, 7, 3);
        assert_eq!(a, sample_plan(&g, None, 100, 7, 3));
        assert_ne!(a, sample_plan(&g, None, 100, 8, 3));
        assert_ne!(a.cells, sample_plan(&g, None, 100, 7, 4).cells);
        assert!(a.cells.iter().all(|c| g.contains(c)) && a.len() == 100);
        let b = sample_plan(&g, Some(&[1, 0, 2]), 100, 7, 3);
        assert_eq!(b.len(), 99);
        assert_eq!(b.batch.iter().filter(|x| **x == Some(0)).count(), 33);
        assert_eq!(sample_plan(&g, Some(&[0, 1, 2]), 2, 0, 0).len(), 6, "at least 2 per batch");
    }
}
