//! The evaluation of model.md §8.1 and §8.4 on one dataset.
//!
//! Imputation (masked-ATSE protocol): per cell, ⌊fraction · #observed ATSEs⌋ (at least 1) of its observed
//! ATSEs are chosen at random (seeded, per cell) and all their junctions removed (k, n, PSI, mask). The
//! model predicts PSI on the masked data; predictions are scored against the original PSI on the
//! "dropped" entries (now unobserved), the "observed" entries (still observed) and "all" of them. As in
//! the authors' evaluation only truths with PSI > 0 are scored by default (§12.23); entries can also be
//! restricted to PSI < 1 and to an original ATSE count ≥ N. Methods: the DM posterior mean (the
//! original's choice for every imputation evaluation), the decoder PSI, and the MeanBayes baseline
//! (dropped entries only, as the original).
//!
//! Latents (§8.1): for the joint, expression and splicing posterior means of (a seeded subsample of) the
//! cells: number of PCs for 90% of the variance, and with a label column the silhouette score, 15-NN
//! accuracy (5-fold) and the held-out accuracy and weighted precision / recall / F1 of a logistic
//! regression (80/20, max_iter 1000, on the latent as it is: §8.1 has no scaler), and with an age
//! column the held-out R² of a ridge regression of the age; for all cells and for the train and test
//! parts of the run's split apart.
//!
//! §8.2's cross-fold classification is in `crossfold` (`evaluate --cross-fold`), §8.3 (Leiden
//! clustering, subcluster splits) in [`super::clustering`] (`--clustering`, `--subcluster-label`).
//! §8.4's `test_impute` and resampled-reads protocol (read down-sampling, in-engine or the authors'
//! resampled files) are in [`super::resample`], scored here ([`evaluate_imputation_with`]).
//! docs/evaluate.md lists what is and is not covered.

use super::impute_metrics::{imputation_metrics_of, Chain, ImputationMetrics};
use super::latent_metrics::{age_r2, knn_accuracy, logistic_scores, pcs_for_variance, silhouette, standardize, ClassScores, AGE_MIN_CELLS};
use super::meanbayes::MeanBayes;
use super::posterior::{dm_posterior_rows, tags, DecodeOptions, Posterior, SplicingFn};
use crate::data::Dataset;
use crate::train::rng::{stream, Purpose};
use anyhow::{bail, Result};
use rand::seq::SliceRandom;

/// One removed (or kept) entry: its cell, junction, original PSI, junction count k and ATSE count n.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Entry {
    pub cell: u32,
    pub junction: u32,
    pub psi: f32,
    pub k: f32,
    pub n: f32,
}

/// Remove ⌊fraction · #observed ATSEs⌋ (≥ 1) observed ATSEs of every cell that has any. Returns the
/// masked dataset and the removed entries (cell-major, junctions ascending). A copy: the input is kept
/// (see [`mask_atses_in_place`] for the form that does not hold the dataset twice).
pub fn mask_atses(ds: &Dataset, fraction: f64, seed: u64) -> Result<(Dataset, Vec<Entry>)> {
    let mut out = ds.clone();
    let dropped = mask_atses_in_place(&mut out, fraction, seed)?;
    Ok((out, dropped))
}

/// [`mask_atses`] without a second copy of the dataset: the kept entries are compacted in place (the
/// write cursor never passes the read cursor), so the extra memory is the removed entries only.
/// [`unmask_atses`] puts them back.
pub fn mask_atses_in_place(ds: &mut Dataset, fraction: f64, seed: u64) -> Result<Vec<Entry>> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        bail!("the mask fraction must be in (0, 1], got {fraction}");
    }
    let m = &mut ds.splicing;
    let mut dropped = Vec::new();
    let mut write = 0usize;
    let mut drop: Vec<u32> = Vec::new();
    let mut atses: Vec<u32> = Vec::new();
    // indptr[c] is rewritten to the compacted start before cell c is read, so keep the original one.
    let mut read_start = m.indptr[0];
    for c in 0..m.n_cells {
        let read = read_start..m.indptr[c + 1];
        read_start = m.indptr[c + 1];
        atses.clear();
        atses.extend(m.junction[read.clone()].iter().map(|&j| m.junc2atse[j as usize]));
        atses.sort_unstable();
        atses.dedup();
        drop.clear();
        if !atses.is_empty() {
            let k = ((fraction * atses.len() as f64).floor() as usize).max(1);
            let mut rng = stream(seed, Purpose::Analysis, tags::MASK, c as u64);
            drop.extend(atses.choose_multiple(&mut rng, k).copied());
            drop.sort_unstable();
        }
        for e in read {
            let j = m.junction[e];
            if drop.binary_search(&m.junc2atse[j as usize]).is_ok() {
                dropped.push(Entry { cell: c as u32, junction: j, psi: m.psi[e], k: m.k[e], n: m.n[e] });
            } else {
                m.junction[write] = j;
                m.k[write] = m.k[e];
                m.n[write] = m.n[e];
                m.psi[write] = m.psi[e];
                write += 1;
            }
        }
        m.indptr[c + 1] = write;
    }
    m.junction.truncate(write);
    m.k.truncate(write);
    m.n.truncate(write);
    m.psi.truncate(write);
    ds.source = format!("{} (masked: {fraction} of each cell's observed ATSEs, seed {seed})", ds.source);
    Ok(dropped)
}

/// Put the entries removed by [`mask_atses_in_place`] back (merged per cell, junctions ascending as
/// the dataset's invariant has them), restoring the dataset exactly; `source` is the unmasked name.
/// In place: the arrays grow once and are filled from the back. The order checks run first; a removed
/// entry that clashes with a kept one is found during the merge, leaving the dataset partly merged (the
/// callers stop on any error).
pub fn unmask_atses(ds: &mut Dataset, dropped: &[Entry], source: &str) -> Result<()> {
    let m = &mut ds.splicing;
    let kept = m.junction.len();
    let total = kept + dropped.len();
    if dropped.windows(2).any(|w| (w[0].cell, w[0].junction) >= (w[1].cell, w[1].junction)) {
        bail!("unmask: the removed entries are not cell-major with junctions ascending");
    }
    if let Some(e) = dropped.iter().find(|e| e.cell as usize >= m.n_cells) {
        bail!("unmask: a removed entry names cell {} of {}", e.cell, m.n_cells);
    }
    m.junction.resize(total, 0);
    m.k.resize(total, 0.0);
    m.n.resize(total, 0.0);
    m.psi.resize(total, 0.0);
    // Walk cells from the last: write cursor w (final positions) never falls below the kept read cursor.
    let mut w = total;
    let mut d = dropped.len();
    for c in (0..m.n_cells).rev() {
        let (lo, mut r) = (m.indptr[c], m.indptr[c + 1]);
        m.indptr[c + 1] = w;
        loop {
            let pending = d > 0 && dropped[d - 1].cell as usize == c;
            if pending && r > lo && dropped[d - 1].junction == m.junction[r - 1] {
                bail!("unmask: junction {} of cell {c} is both kept and removed", dropped[d - 1].junction);
            }
            if pending && (r == lo || dropped[d - 1].junction > m.junction[r - 1]) {
                let e = &dropped[d - 1];
                w -= 1;
                d -= 1;
                m.junction[w] = e.junction;
                m.k[w] = e.k;
                m.n[w] = e.n;
                m.psi[w] = e.psi;
            } else if r > lo {
                w -= 1;
                r -= 1;
                m.junction[w] = m.junction[r];
                m.k[w] = m.k[r];
                m.n[w] = m.n[r];
                m.psi[w] = m.psi[r];
            } else {
                break;
            }
        }
    }
    anyhow::ensure!(w == m.indptr[0] && d == 0, "unmask: {d} removed entries left over (cells out of order)");
    ds.source = source.to_string();
    Ok(())
}

/// Which truths are scored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TruthFilter {
    /// Also score truths with PSI = 0 (the original never does).
    pub include_zero: bool,
    /// Skip truths with PSI = 1.
    pub exclude_one: bool,
    /// Minimum original ATSE count n.
    pub min_atse_count: f32,
}

impl Default for TruthFilter {
    fn default() -> Self {
        TruthFilter { include_zero: false, exclude_one: false, min_atse_count: 0.0 }
    }
}

impl TruthFilter {
    pub fn keep(&self, e: &Entry) -> bool {
        (self.include_zero || e.psi > 0.0) && (!self.exclude_one || e.psi < 1.0) && e.n >= self.min_atse_count
    }
}

/// A row of the long-format result table.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalRow {
    pub section: String,
    pub subset: String,
    pub method: String,
    pub metric: String,
    pub value: f64,
}

pub const METHOD_DM: &str = "splicevi_dm_posterior";
pub const METHOD_DECODER: &str = "splicevi_decoder";
pub const METHOD_MEANBAYES: &str = "mean_bayes";

/// Imputation metrics per (subset, method).
#[derive(Clone, Debug, Default)]
pub struct ImputationReport {
    pub results: Vec<(String, String, ImputationMetrics)>,
    /// The scored dropped entries with every method's prediction (for the density scatter).
    pub dropped: DroppedPairs,
}

/// (truth, prediction) of the scored dropped entries, one prediction column per method.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DroppedPairs {
    pub cell: Vec<u32>,
    pub junction: Vec<u32>,
    pub truth: Vec<f64>,
    pub methods: Vec<(String, Vec<f64>)>,
}

impl DroppedPairs {
    /// TSV with columns cell, junction, truth, then one per method; at most `max_rows` rows (a seeded
    /// subsample in entry order above that).
    pub fn tsv(&self, cell_names: &[String], junction_ids: &[String], max_rows: usize, seed: u64) -> String {
        use super::differential::{fmt_f64, tsv_field};
        let n = self.truth.len();
        let mut rows: Vec<usize> = (0..n).collect();
        if n > max_rows {
            rows.shuffle(&mut stream(seed, Purpose::Analysis, tags::SUBSAMPLE, 1));
            rows.truncate(max_rows);
            rows.sort_unstable();
        }
        let mut s = String::from("cell\tjunction\ttruth");
        for (m, _) in &self.methods {
            s.push('\t');
            s.push_str(&tsv_field(m));
        }
        s.push('\n');
        let name = |v: &[String], i: u32| v.get(i as usize).map(|x| tsv_field(x).into_owned()).unwrap_or_else(|| i.to_string());
        for i in rows {
            s.push_str(&format!("{}\t{}\t{}", name(cell_names, self.cell[i]), name(junction_ids, self.junction[i]), fmt_f64(self.truth[i])));
            for (_, p) in &self.methods {
                s.push('\t');
                s.push_str(&fmt_f64(p[i]));
            }
            s.push('\n');
        }
        s
    }
}

impl ImputationReport {
    pub fn get(&self, subset: &str, method: &str) -> Option<&ImputationMetrics> {
        self.results.iter().find(|(s, m, _)| s == subset && m == method).map(|(_, _, x)| x)
    }
}

/// Score imputation on masked data. `post` is bound to the MASKED dataset; `dropped` are the removed
/// entries; `meanbayes_groups` optionally gives MeanBayes a per-cell group (per-group priors);
/// `decode`: the predictions' posterior samples (n_samples 1: the posterior mean, §8.4's
/// get_normalized_splicing_DM, which ignores n_samples, §12.15). The DM posterior mean is linear in
/// p, so it is taken of the sample-averaged decoder p.
pub fn evaluate_imputation(post: &Posterior, dropped: &[Entry], filter: TruthFilter, meanbayes_groups: Option<&[u32]>, decode: &DecodeOptions, block_cells: usize) -> Result<ImputationReport> {
    evaluate_imputation_with(post, &Truths { dropped, observed: None, junctions: None }, filter, meanbayes_groups, decode, block_cells)
}

/// The entries [`evaluate_imputation_with`] scores.
#[derive(Clone, Copy, Debug, Default)]
pub struct Truths<'a> {
    /// Entries the data bound to the posterior no longer observes, with their truth (subset `dropped`).
    pub dropped: &'a [Entry],
    /// Still-observed entries with their truth (subset `observed`), cell-major. None: the dataset's own
    /// observed entries, their truth the PSI the model reads (the masked protocol, `test_impute`); the
    /// resampled-reads protocol gives the original PSI and ATSE count of the entries still observed.
    pub observed: Option<&'a [Entry]>,
    /// Junctions scored (e.g. the top variable ones, [`super::resample::top_variable_junctions`]);
    /// None: every junction.
    pub junctions: Option<&'a [bool]>,
}

/// [`evaluate_imputation`] on any [`Truths`]: the dropped and the observed entries each given with
/// their truth (or the dataset's own observed entries), optionally restricted to some junctions.
pub fn evaluate_imputation_with(post: &Posterior, truths: &Truths, filter: TruthFilter, meanbayes_groups: Option<&[u32]>, decode: &DecodeOptions, block_cells: usize) -> Result<ImputationReport> {
    anyhow::ensure!(block_cells > 0, "the block size must be > 0");
    let ds = post.ds;
    let spl = &ds.splicing;
    let n = ds.n_cells();
    if let Some(m) = truths.junctions {
        anyhow::ensure!(m.len() == spl.n_junctions, "the junction filter has {} junctions, the data {}", m.len(), spl.n_junctions);
    }
    let keep = |e: &Entry| filter.keep(e) && truths.junctions.is_none_or(|m| m[e.junction as usize]);
    // Without a filter the entries are scored as given (no copy).
    let kept = |list: &'_ [Entry]| -> Vec<Entry> { list.iter().copied().filter(|e| keep(e)).collect() };
    let dropped: std::borrow::Cow<[Entry]> = if truths.dropped.iter().all(|e| keep(e)) { std::borrow::Cow::Borrowed(truths.dropped) } else { std::borrow::Cow::Owned(kept(truths.dropped)) };
    let listed: Option<std::borrow::Cow<[Entry]>> =
        truths.observed.map(|o| if o.iter().all(|e| keep(e)) { std::borrow::Cow::Borrowed(o) } else { std::borrow::Cow::Owned(kept(o)) });
    if let Some(e) = dropped.iter().chain(listed.iter().flat_map(|l| l.iter())).find(|e| e.cell as usize >= n || e.junction as usize >= spl.n_junctions) {
        bail!("an entry to score names cell {} / junction {} of {} × {}", e.cell, e.junction, n, spl.n_junctions);
    }
    // The still-observed entries are the dataset's own (CSR order) unless listed; they are read in
    // place, not copied.
    let entry = |c: usize, e: usize| Entry { cell: c as u32, junction: spl.junction[e], psi: spl.psi[e], k: spl.k[e], n: spl.n[e] };
    let mut drop_idx = vec![Vec::new(); n];
    dropped.iter().enumerate().for_each(|(i, e)| drop_idx[e.cell as usize].push(i));
    let mut obs_idx: Vec<Vec<usize>> = vec![Vec::new(); if listed.is_some() { n } else { 0 }];
    if let Some(l) = &listed {
        l.iter().enumerate().for_each(|(i, e)| obs_idx[e.cell as usize].push(i));
    }
    let need_dm = !post.conc.is_empty();
    // Truths and predictions are kept as f32, as the data and the decoder give them (the metrics read
    // them as f64 exactly), and the arrays are sized once.
    let kept_obs: Vec<usize> = match &listed {
        Some(_) => obs_idx.iter().map(|v| v.len()).collect(),
        None => (0..n).map(|c| spl.cell_range(c).filter(|&e| keep(&entry(c, e))).count()).collect(),
    };
    let n_obs: usize = kept_obs.iter().sum();
    let (mut dec_drop, mut dm_drop) = (vec![0f32; dropped.len()], vec![0f32; if need_dm { dropped.len() } else { 0 }]);
    let (mut t_obs, mut dec_obs) = (Vec::with_capacity(n_obs), Vec::with_capacity(n_obs));
    let mut dm_obs = Vec::with_capacity(if need_dm { n_obs } else { 0 });
    // Only cells with something to score are decoded.
    let cells: Vec<usize> = (0..n).filter(|&c| !drop_idx[c].is_empty() || kept_obs[c] > 0).collect();
    drop(kept_obs);
    anyhow::ensure!(decode.transform_batch.is_empty(), "the imputation evaluation decodes each cell under its own batch");
    for block in cells.chunks(block_cells) {
        let p = post.decode(block, decode, Some(SplicingFn::Decoder), false)?.psi.expect("psi requested");
        let dm = if need_dm {
            let mut q = p.clone();
            dm_posterior_rows(&mut q, &post.batch(block)?.spl, &post.conc);
            Some(q)
        } else {
            None
        };
        for (r, &c) in block.iter().enumerate() {
            for &i in &drop_idx[c] {
                let j = dropped[i].junction as usize;
                dec_drop[i] = p.at(r, j);
                if let Some(q) = &dm {
                    dm_drop[i] = q.at(r, j);
                }
            }
            let mut score = |j: usize, truth: f32| {
                t_obs.push(truth);
                dec_obs.push(p.at(r, j));
                if let Some(q) = &dm {
                    dm_obs.push(q.at(r, j));
                }
            };
            match &listed {
                Some(l) => obs_idx[c].iter().for_each(|&i| score(l[i].junction as usize, l[i].psi)),
                None => spl.cell_range(c).filter(|&e| keep(&entry(c, e))).for_each(|e| score(spl.junction[e] as usize, spl.psi[e])),
            }
        }
    }
    drop((drop_idx, obs_idx, listed));
    debug_assert_eq!(t_obs.len(), n_obs);
    let t_drop: Vec<f32> = dropped.iter().map(|e| e.psi).collect();
    let t_all = Chain(&t_drop, &t_obs);
    let mut report = ImputationReport::default();
    let mut methods: Vec<(&str, &[f32], &[f32])> = Vec::new();
    if need_dm {
        methods.push((METHOD_DM, &dm_drop, &dm_obs));
    }
    methods.push((METHOD_DECODER, &dec_drop, &dec_obs));
    for (name, pd, po) in methods {
        report.results.push(("dropped".into(), name.into(), imputation_metrics_of(&t_drop[..], pd)));
        report.results.push(("observed".into(), name.into(), imputation_metrics_of(&t_obs[..], po)));
        report.results.push(("all".into(), name.into(), imputation_metrics_of(&t_all, &Chain(pd, po))));
    }
    drop((t_obs, dec_obs, dm_obs));
    let mb = MeanBayes::fit(spl, meanbayes_groups, 2);
    let mb_pred: Vec<f64> = dropped.iter().map(|e| mb.predict(e.cell as usize, e.junction as usize)).collect();
    report.results.push(("dropped".into(), METHOD_MEANBAYES.into(), imputation_metrics_of(&t_drop[..], &mb_pred[..])));
    let wide = |v: Vec<f32>| -> Vec<f64> { v.into_iter().map(|x| x as f64).collect() };
    report.dropped = DroppedPairs {
        cell: dropped.iter().map(|e| e.cell).collect(),
        junction: dropped.iter().map(|e| e.junction).collect(),
        truth: wide(t_drop),
        methods: Vec::new(),
    };
    if need_dm {
        report.dropped.methods.push((METHOD_DM.into(), wide(dm_drop)));
    }
    report.dropped.methods.push((METHOD_DECODER.into(), wide(dec_drop)));
    report.dropped.methods.push((METHOD_MEANBAYES.into(), mb_pred));
    Ok(report)
}

/// Fewest cells a class needs in the classifier scores (k-NN and logistic regression): the k-NN scores
/// 5 folds and the logistic regression holds one fifth out, and §8.2 drops the classes with fewer
/// members than folds. The silhouette keeps every labelled cell (sklearn scores a lone cell 0).
pub const MIN_CLASS_CELLS: usize = 5;

/// A label column of the latent metrics (`--label`, `--sublabel`): each cell's class (None: no label,
/// a NaN or a missing category) and the class names.
#[derive(Clone, Debug, PartialEq)]
pub struct Labels {
    pub column: String,
    pub of_cell: Vec<Option<u32>>,
    pub classes: Vec<String>,
}

impl Labels {
    /// The obs column `column` (named by `flag`) as labels, with the groups diff-splicing's `--groupby`
    /// takes (categorical, text, boolean or integer-valued; NaN and a missing category are no label).
    /// A numeric column of non-integer numbers, or of more distinct values than a measurement would
    /// have as categories (`validate --labels-key` warns of the same column), is refused: its "classes"
    /// would be one or two cells each. (The original scores `obs[col].astype(str)`: an unlabelled cell
    /// is a class `nan` there, and a continuous column is taken as classes without a word.)
    pub fn of_column(ds: &Dataset, flag: &str, column: &str) -> Result<Labels> {
        let g = super::differential::obs_groups(ds, flag, column)?;
        let labelled = g.of_cell.iter().filter(|c| c.is_some()).count();
        if g.values.is_some() && crate::data::load::looks_like_a_measurement(g.names.len(), labelled) {
            bail!(
                "{flag} {column}: {}: `{column}` is a numeric column with {} distinct values for {labelled} labelled cells, a measurement rather than classes of cells; give a categorical column",
                ds.source,
                g.names.len()
            );
        }
        Ok(Labels { column: column.to_string(), of_cell: g.of_cell.iter().map(|c| c.map(|c| c as u32)).collect(), classes: g.names })
    }

    /// Every cell labelled by its code (class names: the codes).
    pub fn from_codes(column: &str, codes: &[u32]) -> Labels {
        let n = codes.iter().copied().max().map_or(0, |m| m as usize + 1);
        Labels { column: column.to_string(), of_cell: codes.iter().map(|&c| Some(c)).collect(), classes: (0..n).map(|c| c.to_string()).collect() }
    }
}

/// An age column of the latent metrics (`--age`): each cell's age, NaN where it has none.
#[derive(Clone, Debug, PartialEq)]
pub struct Ages {
    pub column: String,
    pub of_cell: Vec<f64>,
}

impl Ages {
    /// The obs column `column` (named by `flag`) read as numbers: numeric columns, and categories or
    /// text that spell numbers (`18`, `24.0`; anndata often stores ages as categories). A NaN, a
    /// missing category or an infinite value is no age; any other text is an error naming it.
    pub fn of_column(ds: &Dataset, flag: &str, column: &str) -> Result<Ages> {
        let (_, col) = ds.obs_column(column, flag)?;
        let text = col.as_strings();
        let mut of_cell = Vec::with_capacity(text.len());
        for (c, t) in text.iter().enumerate() {
            match t.trim().parse::<f64>() {
                Ok(v) => of_cell.push(if v.is_finite() { v } else { f64::NAN }),
                Err(_) => bail!("{flag} {column}: {}: cell {} has `{t}`, not a number (an age column holds numbers)", ds.source, ds.cell_names.get(c).map_or(c.to_string(), |n| format!("`{n}`"))),
            }
        }
        Ok(Ages { column: column.to_string(), of_cell })
    }
}

/// Which cells of `rows` (dataset cells) the label metrics score: positions in `rows` of the labelled
/// cells (silhouette) and of those whose class has at least [`MIN_CLASS_CELLS`] of them (classifiers),
/// and the classes left out of the classifiers (name, cells), in class order.
pub fn label_rows(labels: &Labels, rows: &[usize]) -> (Vec<usize>, Vec<usize>, Vec<(String, usize)>) {
    let labelled: Vec<usize> = (0..rows.len()).filter(|&r| labels.of_cell[rows[r]].is_some()).collect();
    let mut size = vec![0usize; labels.classes.len()];
    labelled.iter().for_each(|&r| size[labels.of_cell[rows[r]].unwrap() as usize] += 1);
    let kept = |r: &&usize| size[labels.of_cell[rows[**r]].unwrap() as usize] >= MIN_CLASS_CELLS;
    let classified: Vec<usize> = labelled.iter().filter(kept).copied().collect();
    let dropped = (0..size.len()).filter(|&c| size[c] > 0 && size[c] < MIN_CLASS_CELLS).map(|c| (labels.classes[c].clone(), size[c])).collect();
    (labelled, classified, dropped)
}

/// Rows `rows` of the n × d matrix `x`.
fn take_rows(x: &[f32], d: usize, rows: &[usize]) -> Vec<f32> {
    rows.iter().flat_map(|&r| x[r * d..(r + 1) * d].iter().copied()).collect()
}

/// Latent metrics of one latent space.
#[derive(Clone, Debug, PartialEq)]
pub struct LatentReport {
    /// `all`, `train` or `test` ([`Part`]).
    pub split: String,
    pub space: String,
    pub dim: usize,
    pub n_cells: usize,
    pub pcs_90: usize,
    /// With a label: the cells with one (silhouette) and those of the classes the classifiers keep.
    pub n_labelled: Option<usize>,
    pub n_classified: Option<usize>,
    /// With a label: silhouette, 15-NN accuracy (5-fold), logistic regression scores (80/20).
    pub silhouette: Option<f64>,
    pub knn_accuracy: Option<f64>,
    pub logistic: Option<ClassScores>,
    /// With an age column: the cells with an age and the held-out R² of their age (§8.1), and per
    /// label class of at least 25 such cells (class, cells, R²; the authors' groups are tissue | cell
    /// type pairs: a column of such pairs as --label gives them).
    pub age_cells: Option<usize>,
    pub age_r2: Option<f64>,
    pub age_r2_by_label: Vec<(String, usize, f64)>,
}

/// What [`evaluate_latents`] scores: the label and age columns, the run's split (each dataset cell's
/// part), and the options of the metrics.
#[derive(Clone, Copy, Debug)]
pub struct LatentOptions<'a> {
    pub labels: Option<&'a Labels>,
    pub ages: Option<&'a Ages>,
    pub parts: Option<&'a [Option<Part>]>,
    /// Cells scored at most (a seeded subsample above).
    pub max_cells: usize,
    /// Neighbours of the k-NN classifier.
    pub k: usize,
    pub seed: u64,
    pub block_cells: usize,
}

/// §8.1's `LogisticRegression(max_iter=1000)`.
pub const LOGISTIC_MAX_ITER: usize = 1000;

/// The part of a run's train/validation split a cell is in. §8.1 scores the train and test splits
/// apart: here the cells the model trained on, and the others (its validation cells, which only
/// monitored the training, and cells of the data it never saw).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Train,
    Test,
}

impl Part {
    pub fn name(self) -> &'static str {
        match self {
            Part::Train => "train",
            Part::Test => "test",
        }
    }
}

/// The part of each cell of `ds` in the split a run records: by position when the data's cells are the
/// run's training cells in order, else by name (a cell the run never saw is Test; a name the run
/// holds twice, in both parts, is in neither: None). With a line saying what was matched.
pub fn split_parts(split: &crate::train::trainer::RunSplit, ds: &Dataset) -> (Vec<Option<Part>>, String) {
    let mut part_of = vec![Part::Train; split.cells.len()];
    split.validation.iter().for_each(|&v| part_of[v] = Part::Test);
    let count = |p: &[Option<Part>], x: Part| p.iter().filter(|&&q| q == Some(x)).count();
    if split.cells == ds.cell_names {
        let parts: Vec<Option<Part>> = part_of.into_iter().map(Some).collect();
        let line = format!(
            "the run's train/validation split: {} cells it trained on (rows latent_train), {} validation cells (latent_test)",
            count(&parts, Part::Train),
            count(&parts, Part::Test)
        );
        return (parts, line);
    }
    let mut by_name: std::collections::HashMap<&str, Option<Part>> = std::collections::HashMap::with_capacity(split.cells.len());
    for (name, &p) in split.cells.iter().zip(&part_of) {
        let e = by_name.entry(name.as_str()).or_insert(Some(p));
        if *e != Some(p) {
            *e = None;
        }
    }
    let found: Vec<Option<Option<Part>>> = ds.cell_names.iter().map(|c| by_name.get(c.as_str()).copied()).collect();
    let unseen = found.iter().filter(|f| f.is_none()).count();
    let ambiguous = found.iter().filter(|f| **f == Some(None)).count();
    let parts: Vec<Option<Part>> = found.into_iter().map(|f| f.unwrap_or(Some(Part::Test))).collect();
    let mut line = format!(
        "{}'s cells are not the run's training cells in order; by name, {} are cells it trained on (rows latent_train) and {} are not (latent_test: {} validation cells, {unseen} cells it never saw)",
        ds.source,
        count(&parts, Part::Train),
        count(&parts, Part::Test),
        count(&parts, Part::Test) - unseen
    );
    if ambiguous > 0 {
        line.push_str(&format!("; {ambiguous} cells whose name the run holds in both parts are in neither"));
    }
    (parts, line)
}

/// The cells the latent metrics score: all `n`, or a seeded subsample of `max` (ascending).
pub fn latent_subsample(n: usize, max: usize, seed: u64) -> Vec<usize> {
    let mut cells: Vec<usize> = (0..n).collect();
    if n > max {
        cells.shuffle(&mut stream(seed, Purpose::Analysis, tags::SUBSAMPLE, 0));
        cells.truncate(max);
        cells.sort_unstable();
    }
    cells
}

/// Latent metrics of the joint, expression and splicing posterior means of up to `max_cells` cells
/// (a seeded subsample when there are more): of all of them (split `all`), and with `parts` (each
/// dataset cell's part of the run's split) of the train and test cells apart, each scored on its own
/// as §8.1's evaluate_split scores a split. The label metrics leave out the cells without a label,
/// and the classifiers the classes of fewer than [`MIN_CLASS_CELLS`] cells; the returned lines say
/// how many and which.
pub fn evaluate_latents(post: &Posterior, opts: &LatentOptions) -> Result<(Vec<LatentReport>, Vec<String>)> {
    Ok(evaluate_latent_sample(&LatentSample::of(post, opts.max_cells, opts.seed, opts.block_cells)?, opts))
}

/// The joint, expression and splicing posterior means of the cells the latent metrics score
/// ([`latent_subsample`]): encoded once, read by §8.1's metrics and by `evaluate`'s other latent blocks.
pub struct LatentSample {
    /// Dataset rows, ascending.
    pub cells: Vec<usize>,
    /// Row-major cells × dims[i], for the joint, expression and splicing latents.
    pub lat: [Vec<f32>; 3],
    pub dims: [usize; 3],
}

impl LatentSample {
    pub const SPACES: [&'static str; 3] = ["joint", "expression", "splicing"];

    /// At most `max_cells` cells of `post`'s data (a subsample seeded by `seed` above), encoded in
    /// blocks of `block_cells`.
    pub fn of(post: &Posterior, max_cells: usize, seed: u64, block_cells: usize) -> Result<Self> {
        let cells = latent_subsample(post.ds.n_cells(), max_cells, seed);
        let (lat, dims) = post.latent_means(&cells, block_cells)?;
        Ok(LatentSample { cells, lat, dims })
    }
}

/// [`evaluate_latents`] on latents already encoded (`opts.max_cells` and `block_cells` chose them).
pub fn evaluate_latent_sample(sample: &LatentSample, opts: &LatentOptions) -> (Vec<LatentReport>, Vec<String>) {
    let LatentOptions { labels, ages, parts, seed, k, .. } = *opts;
    let LatentSample { cells, lat, dims } = sample;
    let mut notes = Vec::new();
    // (split name, its rows in `cells`)
    let mut splits: Vec<(&str, Vec<usize>)> = vec![("all", (0..cells.len()).collect())];
    if let Some(parts) = parts {
        for part in [Part::Train, Part::Test] {
            let rows: Vec<usize> = (0..cells.len()).filter(|&r| parts[cells[r]] == Some(part)).collect();
            if rows.is_empty() {
                notes.push(format!("no {} cell among the {} cells scored: no latent_{} rows", part.name(), cells.len(), part.name()));
            } else {
                splits.push((part.name(), rows));
            }
        }
    }
    let mut out = Vec::new();
    for (split, rows) in &splits {
        let lab = labels.map(|l| (l, label_rows(l, &rows.iter().map(|&r| cells[r]).collect::<Vec<_>>())));
        let scope = if *split == "all" { String::new() } else { format!(" ({split} cells)") };
        if let (Some(a), "all") = (ages, *split) {
            let aged = rows.iter().filter(|&&r| a.of_cell[cells[r]].is_finite()).count();
            if aged < rows.len() {
                notes.push(format!("--age {}: {aged} of the {} cells scored have an age (a finite number); the age R² reads those", a.column, rows.len()));
            }
        }
        if let Some((l, (labelled, classified, dropped))) = &lab {
            if *split == "all" && labelled.len() < rows.len() {
                notes.push(format!(
                    "--label {}: {} of the {} cells scored have no label (NaN or a missing category); the label metrics leave them out",
                    l.column,
                    rows.len() - labelled.len(),
                    rows.len()
                ));
            }
            if !dropped.is_empty() {
                let list: Vec<String> = dropped.iter().map(|(c, m)| format!("`{c}` ({m} cell{})", if *m == 1 { "" } else { "s" })).collect();
                notes.push(format!(
                    "--label {}{scope}: the k-NN and logistic scores leave out the classes of fewer than {MIN_CLASS_CELLS} cells ({} cells): {}",
                    l.column,
                    labelled.len() - classified.len(),
                    list.join(", ")
                ));
            }
        }
        for (i, space) in LatentSample::SPACES.into_iter().enumerate() {
            let d = dims[i];
            let x = take_rows(&lat[i], d, rows);
            let mut rep = LatentReport {
                split: split.to_string(),
                space: space.to_string(),
                dim: d,
                n_cells: rows.len(),
                pcs_90: pcs_for_variance(&x, d, 0.9),
                n_labelled: None,
                n_classified: None,
                silhouette: None,
                knn_accuracy: None,
                logistic: None,
                age_cells: None,
                age_r2: None,
                age_r2_by_label: Vec::new(),
            };
            if let Some(a) = ages {
                // (StandardScaler on the Z of the cells with an age, as the authors scale before the split)
                let aged: Vec<usize> = (0..rows.len()).filter(|&r| a.of_cell[cells[rows[r]]].is_finite()).collect();
                let y: Vec<f64> = aged.iter().map(|&r| a.of_cell[cells[rows[r]]]).collect();
                let z = standardize(&take_rows(&x, d, &aged), d);
                rep.age_cells = Some(aged.len());
                rep.age_r2 = Some(age_r2(&z, d, &y, seed));
                if let Some(l) = labels {
                    for (c, class) in l.classes.iter().enumerate() {
                        let members: Vec<usize> = (0..aged.len()).filter(|&i| l.of_cell[cells[rows[aged[i]]]] == Some(c as u32)).collect();
                        if members.len() < AGE_MIN_CELLS {
                            continue;
                        }
                        let zg: Vec<f64> = members.iter().flat_map(|&i| z[i * d..(i + 1) * d].iter().copied()).collect();
                        let yg: Vec<f64> = members.iter().map(|&i| y[i]).collect();
                        rep.age_r2_by_label.push((class.clone(), members.len(), age_r2(&zg, d, &yg, seed)));
                    }
                }
            }
            if let Some((l, (labelled, classified, _))) = &lab {
                let codes = |rs: &[usize]| -> Vec<u32> { rs.iter().map(|&r| l.of_cell[cells[rows[r]]].unwrap()).collect() };
                rep.n_labelled = Some(labelled.len());
                rep.n_classified = Some(classified.len());
                rep.silhouette = Some(silhouette(&take_rows(&x, d, labelled), d, &codes(labelled)));
                let (xc, yc) = (take_rows(&x, d, classified), codes(classified));
                // one class left classifies every cell right: nan, as sklearn refuses to fit it
                if yc.iter().any(|&c| c != yc[0]) {
                    rep.knn_accuracy = Some(knn_accuracy(&xc, d, &yc, k, 5, seed));
                    rep.logistic = Some(logistic_scores(&xc, d, &yc, 0.2, seed, LOGISTIC_MAX_ITER));
                } else {
                    rep.knn_accuracy = Some(f64::NAN);
                    rep.logistic = Some(ClassScores::NAN);
                }
            }
            out.push(rep);
        }
    }
    (out, notes)
}

/// The TSV section of a split's latent rows: `latent` for all cells, `latent_train`, `latent_test`.
pub fn latent_section(split: &str) -> String {
    if split == "all" {
        "latent".to_string()
    } else {
        format!("latent_{split}")
    }
}

/// Long-format rows of an imputation report under `section` (`imputation`: the masked protocol;
/// `resampled`, `test_impute`: [`super::resample`]).
pub fn imputation_rows(section: &str, imp: &ImputationReport) -> Vec<EvalRow> {
    let mut out = Vec::new();
    for (subset, method, m) in &imp.results {
        for (metric, value) in m.named() {
            out.push(EvalRow { section: section.into(), subset: subset.clone(), method: method.clone(), metric: metric.into(), value });
        }
    }
    out
}

/// Long-format rows of both reports.
pub fn rows(imp: Option<&ImputationReport>, lat: &[LatentReport], label: Option<&str>, k: usize) -> Vec<EvalRow> {
    let mut out = imp.map(|i| imputation_rows("imputation", i)).unwrap_or_default();
    for l in lat {
        let section = latent_section(&l.split);
        let mut push = |metric: String, value: f64| out.push(EvalRow { section: section.clone(), subset: l.space.clone(), method: "splicevi".into(), metric, value });
        push("dim".into(), l.dim as f64);
        push("n_cells".into(), l.n_cells as f64);
        push("pcs_90pct_variance".into(), l.pcs_90 as f64);
        let lab = label.unwrap_or("label");
        if let Some(v) = l.n_labelled {
            push(format!("n_cells_labelled_{lab}"), v as f64);
        }
        if let Some(v) = l.n_classified {
            push(format!("n_cells_classified_{lab}"), v as f64);
        }
        if let Some(v) = l.silhouette {
            push(format!("silhouette_{lab}"), v);
        }
        if let Some(v) = l.knn_accuracy {
            push(format!("knn{k}_accuracy_{lab}"), v);
        }
        if let Some(v) = l.logistic {
            push(format!("logistic_accuracy_{lab}"), v.accuracy);
            push(format!("logistic_precision_weighted_{lab}"), v.precision);
            push(format!("logistic_recall_weighted_{lab}"), v.recall);
            push(format!("logistic_f1_weighted_{lab}"), v.f1);
        }
        if let Some(v) = l.age_cells {
            push("age_n_cells".into(), v as f64);
        }
        if let Some(v) = l.age_r2 {
            push("age_r2".into(), v);
        }
        for (class, cells, r2) in &l.age_r2_by_label {
            // (the table quotes a metric name holding a tab or line break as a whole: `tsv_field`)
            push(format!("age_n_cells:{lab}={class}"), *cells as f64);
            push(format!("age_r2:{lab}={class}"), *r2);
        }
    }
    out
}

/// One line per group of `nan` values in the table, naming the metrics and why they are undefined. The
/// table keeps `nan` (an undefined metric has no number); these lines go to stderr, so that it is not
/// read as a result. `filter`: the truths scored, for the imputation rows.
pub fn nan_warnings(table: &[EvalRow], filter: &TruthFilter) -> Vec<String> {
    let mut out = imputation_nan_warnings(table, "imputation", filter, &[]);
    out.extend(latent_nan_warnings(table));
    out
}

/// [`nan_warnings`]' lines for the imputation rows of `section`; `extra_rules` name the restrictions
/// beyond `filter` (the top variable junctions) in the line of a subset with no entry scored.
pub fn imputation_nan_warnings(table: &[EvalRow], section: &str, filter: &TruthFilter, extra_rules: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    // Imputation: a subset with no entry scored (every metric nan), else the metrics of a constant input.
    let mut subsets: Vec<&str> = Vec::new();
    table.iter().filter(|r| r.section == section).for_each(|r| {
        if !subsets.contains(&r.subset.as_str()) {
            subsets.push(&r.subset);
        }
    });
    let scored_none = |subset: &str| table.iter().any(|r| r.section == section && r.subset == subset && r.metric == "n" && r.value == 0.0);
    let empty: Vec<String> = subsets.iter().filter(|s| scored_none(s)).map(|s| format!("`{s}`")).collect();
    if !empty.is_empty() {
        let mut rule = vec![if filter.include_zero { "any PSI".to_string() } else { "PSI > 0 (--include-zero-truth scores 0 too)".to_string() }];
        if filter.exclude_one {
            rule.push("PSI < 1 (--exclude-psi-one)".into());
        }
        if filter.min_atse_count > 0.0 {
            rule.push(format!("ATSE count ≥ {} (--min-atse-count)", filter.min_atse_count));
        }
        rule.extend(extra_rules.iter().cloned());
        out.push(format!("{section} {}: every metric is nan: no entry is scored (the truths kept: {})", empty.join(", "), rule.join(", ")));
    }
    for subset in subsets.into_iter().filter(|s| !scored_none(s)) {
        let rows: Vec<&EvalRow> = table.iter().filter(|r| r.section == section && r.subset == subset).collect();
        let mut by_method: Vec<(String, Vec<&str>)> = Vec::new();
        for r in rows.iter().filter(|r| r.value.is_nan()) {
            match by_method.iter_mut().find(|(m, _)| *m == r.method) {
                Some((_, v)) => v.push(&r.metric),
                None => by_method.push((r.method.clone(), vec![&r.metric])),
            }
        }
        for (method, metrics) in by_method {
            let why = if metrics.iter().all(|m| *m == "pearson" || *m == "spearman") { "a correlation is undefined when the truths or the predictions are all equal" } else { "undefined for these entries" };
            out.push(format!("{section} `{subset}` {method}: {} nan ({why})", metrics.join(", ")));
        }
    }
    out
}

/// [`nan_warnings`]' lines for the latent rows.
pub fn latent_nan_warnings(table: &[EvalRow]) -> Vec<String> {
    let mut out = Vec::new();
    // A latent with no variance (every cell's posterior mean at one point): its metrics are those of a
    // constant, which the numbers alone do not say.
    for r in table.iter().filter(|r| r.section.starts_with("latent") && r.metric == "pcs_90pct_variance" && r.value == 0.0) {
        out.push(format!("{} {}: every cell's posterior mean is the same point (no variance; a collapsed posterior), so its metrics describe no structure", r.section, r.subset));
    }
    // Latent: per split (section) and metric, the spaces where it is nan.
    let mut metrics: Vec<(&str, &str, Vec<&str>)> = Vec::new();
    for r in table.iter().filter(|r| r.section.starts_with("latent") && r.value.is_nan()) {
        match metrics.iter_mut().find(|(s, m, _)| *s == r.section && *m == r.metric) {
            Some((_, _, v)) => v.push(&r.subset),
            None => metrics.push((&r.section, &r.metric, vec![&r.subset])),
        }
    }
    for (section, metric, spaces) in metrics {
        // the cells the metric scored: the labelled ones (silhouette), those of the classes kept
        // (classifiers), else every cell
        let row = |name: &dyn Fn(&str) -> bool| table.iter().find(|r| r.section == section && r.subset == spaces[0] && name(&r.metric)).map(|r| r.value);
        let count = |prefix: &str| row(&|m: &str| m.starts_with(prefix));
        let cells = row(&|m: &str| m == "n_cells").unwrap_or(f64::NAN);
        let why = if metric.contains("_within_") {
            "no --label group holds two or more cells of two or more --sublabel groups".to_string()
        } else if metric.starts_with("silhouette_") {
            format!("a silhouette needs two or more --label groups among the {} labelled cells scored", count("n_cells_labelled_").unwrap_or(cells))
        } else if metric.starts_with("age_r2") {
            // (a class's R², age_r2:COL=CLASS, counts its own aged cells, age_n_cells:COL=CLASS)
            let n_aged = metric.replacen("age_r2", "age_n_cells", 1);
            format!("an age regression needs {AGE_MIN_CELLS} or more cells with an age ({}), with ages that vary in both its 80% and its 20%", row(&|m: &str| m == n_aged).unwrap_or(f64::NAN))
        } else if metric.starts_with("logistic_") || metric.starts_with("knn") {
            format!("too few cells ({}, in classes of {MIN_CLASS_CELLS} or more) to hold some out, or fewer than two such classes", count("n_cells_classified_").unwrap_or(cells))
        } else {
            "undefined for these cells".to_string()
        };
        out.push(format!("{section} {metric} is nan ({}): {why}", spaces.join(", ")));
    }
    out
}

pub fn rows_tsv(rows: &[EvalRow]) -> String {
    let mut s = String::from("section\tsubset\tmethod\tmetric\tvalue\n");
    for r in rows {
        // (the metric names hold the --label / --sublabel column names)
        let f = super::differential::tsv_field;
        s.push_str(&format!("{}\t{}\t{}\t{}\t{}\n", f(&r.section), f(&r.subset), f(&r.method), f(&r.metric), super::differential::fmt_f64(r.value)));
    }
    s
}

/// A human-readable table of both reports.
pub fn render(imp: Option<&ImputationReport>, lat: &[LatentReport], label: Option<&str>, k: usize) -> String {
    let mut s = String::new();
    let f = |v: f64| if v.is_nan() { "nan".to_string() } else { format!("{v:.4}") };
    if let Some(imp) = imp {
        s.push_str(&format!(
            "{:<9} {:<22} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
            "subset", "method", "n", "pearson", "spearman", "l1_mean", "l1_med", "l1_p90", "rmse", "smape", "cosine"
        ));
        for (subset, method, m) in &imp.results {
            s.push_str(&format!(
                "{:<9} {:<22} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
                subset, method, m.n, f(m.pearson), f(m.spearman), f(m.l1_mean), f(m.l1_median), f(m.l1_p90), f(m.rmse), f(m.smape), f(m.cosine_sim)
            ));
        }
        s.push('\n');
    }
    let lab = label.unwrap_or("-");
    // (the age R² column with --age; its per-class values are in the TSV and the age R² heatmap)
    let ages = lat.iter().any(|l| l.age_r2.is_some());
    let age_head = if ages { format!(" {:>8}", "age_r2") } else { String::new() };
    s.push_str(&format!(
        "{:<6} {:<11} {:>4} {:>7} {:>7} {:>11} {:>9} {:>9} {:>9}{age_head}   (label: {lab}; logistic: accuracy, weighted F1)\n",
        "split", "latent", "dim", "cells", "pcs_90", "silhouette", &format!("knn{k}"), "logistic", "f1_w"
    ));
    let o = |v: Option<f64>| v.map(f).unwrap_or_else(|| "-".into());
    for l in lat {
        let age = if ages { format!(" {:>8}", o(l.age_r2)) } else { String::new() };
        s.push_str(&format!(
            "{:<6} {:<11} {:>4} {:>7} {:>7} {:>11} {:>9} {:>9} {:>9}{age}\n",
            l.split, l.space, l.dim, l.n_cells, l.pcs_90, o(l.silhouette), o(l.knn_accuracy), o(l.logistic.map(|v| v.accuracy)), o(l.logistic.map(|v| v.f1))
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::simulate::{simulate, SimConfig, SimSize};

    /// Names in evaluate's TSVs (cells, junctions, a --label column inside a metric name) are quoted
    /// when they hold a tab, a line break or `"`, as in the diff TSVs, and read back unchanged.
    #[test]
    fn evaluate_tables_quote_names_that_would_break_them() {
        let row = EvalRow { section: "latent".into(), subset: "joint".into(), method: "splicevi".into(), metric: "silhouette_cell\ttype".into(), value: 0.5 };
        let t = rows_tsv(&[row]);
        assert_eq!(t.lines().nth(1), Some("latent\tjoint\tsplicevi\t\"silhouette_cell\ttype\"\t0.5"));
        let pairs = DroppedPairs { cell: vec![0], junction: vec![0], truth: vec![0.25], methods: vec![("m".into(), vec![0.5])] };
        let t = pairs.tsv(&["cell \"1\"\n".to_string()], &["j\t0".to_string()], 10, 0);
        let rec = crate::plot::tsv_records(&t);
        assert_eq!(rec[1], ["cell \"1\"\n", "j\t0", "0.25", "0.5"]);
    }

    /// A class's nan age R² says how many aged cells that class has, not the whole latent's count.
    #[test]
    fn a_class_age_r2_warning_counts_the_class_cells() {
        let r = |metric: &str, value: f64| EvalRow { section: "latent".into(), subset: "joint".into(), method: "splicevi".into(), metric: metric.into(), value };
        let table = [r("n_cells", 200.0), r("age_n_cells", 200.0), r("age_r2", 0.1), r("age_n_cells:ct=T0", 60.0), r("age_r2:ct=T0", f64::NAN)];
        let w = latent_nan_warnings(&table);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("age_r2:ct=T0 is nan") && w[0].contains("with an age (60)"), "{w:?}");
    }

    /// A latent without variance (every cell at one point: pcs_90pct_variance 0) is named, and only it.
    #[test]
    fn a_constant_latent_is_named() {
        let r = |subset: &str, metric: &str, value: f64| EvalRow { section: "latent".into(), subset: subset.into(), method: "splicevi".into(), metric: metric.into(), value };
        let table = [r("joint", "pcs_90pct_variance", 3.0), r("splicing", "pcs_90pct_variance", 0.0), r("splicing", "silhouette_ct", 0.0)];
        let w = latent_nan_warnings(&table);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("latent splicing: every cell's posterior mean is the same point"), "{w:?}");
    }

    #[test]
    fn masking_removes_whole_atses_and_keeps_the_rest() {
        let (ds, _) = simulate(&SimConfig::preset(SimSize::Toy, 1)).unwrap();
        let (m, dropped) = mask_atses(&ds, 0.5, 3).unwrap();
        let s = &ds.splicing;
        let ms = &m.splicing;
        assert_eq!(ms.nnz() + dropped.len(), s.nnz());
        for c in 0..s.n_cells {
            let atses = |sp: &crate::data::Splicing| {
                let mut a: Vec<u32> = sp.junction[sp.cell_range(c)].iter().map(|&j| sp.junc2atse[j as usize]).collect();
                a.dedup();
                a
            };
            let (before, after) = (atses(s), atses(ms));
            let gone: Vec<u32> = {
                let mut g: Vec<u32> = dropped.iter().filter(|e| e.cell == c as u32).map(|e| s.junc2atse[e.junction as usize]).collect();
                g.dedup();
                g
            };
            if before.is_empty() {
                assert!(gone.is_empty());
                continue;
            }
            assert_eq!(gone.len(), ((0.5 * before.len() as f64).floor() as usize).max(1), "cell {c}");
            assert_eq!(after.len() + gone.len(), before.len());
            assert!(gone.iter().all(|a| !after.contains(a)), "a dropped ATSE is still partly observed in cell {c}");
        }
        // Seeded: same seed, same mask; another seed, another mask.
        assert_eq!(mask_atses(&ds, 0.5, 3).unwrap().1, dropped);
        assert_ne!(mask_atses(&ds, 0.5, 4).unwrap().1, dropped);
        assert!(mask_atses(&ds, 0.0, 3).is_err() && mask_atses(&ds, 1.5, 3).is_err());
    }

    /// A nan in the table comes with a line saying which metric and why: no entry scored, a constant
    /// input, a single label group.
    #[test]
    fn nan_metrics_are_named_with_their_reason() {
        let mut t: Vec<EvalRow> = Vec::new();
        let mut push = |section: &str, subset: &str, method: &str, metric: &str, value: f64| {
            t.push(EvalRow { section: section.into(), subset: subset.into(), method: method.into(), metric: metric.into(), value })
        };
        for m in [METHOD_DM, METHOD_MEANBAYES] {
            push("imputation", "dropped", m, "n", 0.0);
            push("imputation", "dropped", m, "pearson", f64::NAN);
            push("imputation", "observed", m, "n", 5.0);
            push("imputation", "observed", m, "pearson", if m == METHOD_DM { 0.5 } else { f64::NAN });
            push("imputation", "observed", m, "rmse", 0.1);
        }
        for space in ["joint", "splicing"] {
            push("latent", space, "splicevi", "n_cells", 200.0);
            push("latent", space, "splicevi", "silhouette_batch", f64::NAN);
            push("latent", space, "splicevi", "knn15_accuracy_batch", 0.9);
        }
        let filter = TruthFilter { min_atse_count: 100000.0, ..Default::default() };
        let w = nan_warnings(&t, &filter);
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].starts_with("imputation `dropped`: every metric is nan: no entry is scored") && w[0].contains("ATSE count ≥ 100000 (--min-atse-count)"), "{}", w[0]);
        assert!(w[1].starts_with("imputation `observed` mean_bayes: pearson nan") && w[1].contains("all equal"), "{}", w[1]);
        assert!(w[2].starts_with("latent silhouette_batch is nan (joint, splicing)") && w[2].contains("two or more --label groups among the 200 labelled cells"), "{}", w[2]);
        // nothing nan, nothing said
        t.retain(|r| !r.value.is_nan() && r.value != 0.0);
        assert!(nan_warnings(&t, &TruthFilter::default()).is_empty());
    }

    fn with_obs(n: usize, obs: Vec<(&str, crate::data::ObsColumn)>) -> Dataset {
        Dataset {
            source: "d.h5mu".into(),
            cell_names: (0..n).map(|i| format!("c{i}")).collect(),
            obs_tables: vec![crate::data::ObsTable { field: "obs".into(), columns: obs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(), ..Default::default() }],
            ..Default::default()
        }
    }

    /// Cells without a label (a missing category, a NaN) are no class of the label metrics (they were
    /// a class of their own); a class of fewer than 5 cells is left out of the classifiers and named;
    /// a numeric column of a value per cell or two (a measurement) is refused, as are non-integers.
    #[test]
    fn label_columns_drop_unlabelled_cells_and_rare_classes() {
        use crate::data::ObsColumn;
        // 14 cells: A × 6, B × 5, C × 2, missing × 1
        let codes = vec![0, 0, 1, -1, 0, 1, 2, 1, 0, 1, 0, 2, 1, 0];
        let ds = with_obs(14, vec![("ct", ObsColumn::Categorical { codes, categories: vec!["A".into(), "B".into(), "C".into(), "unused".into()], int_categories: None, store: crate::data::CatStore::Unordered })]);
        let l = Labels::of_column(&ds, "--label", "ct").unwrap();
        assert_eq!(l.classes, ["A", "B", "C"]);
        assert_eq!(l.of_cell[3], None);
        assert_eq!(&l.of_cell[..3], &[Some(0), Some(0), Some(1)]);
        let all: Vec<usize> = (0..14).collect();
        let (labelled, classified, dropped) = label_rows(&l, &all);
        assert_eq!(labelled, [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
        assert_eq!(classified, [0, 1, 2, 4, 5, 7, 8, 9, 10, 12, 13]);
        assert_eq!(dropped, [("C".to_string(), 2)]);
        // on a subset of the cells, the counts are the subset's: B has 4 of its 5 there
        let (_, classified, dropped) = label_rows(&l, &[0, 1, 2, 4, 5, 7, 8, 9, 10]);
        assert_eq!(classified, [0, 1, 3, 6, 8]);
        assert_eq!(dropped, [("B".to_string(), 4)]);
        // numbers: NaN is no label; integer values are classes; many values per cell are refused
        let ds = with_obs(4, vec![("n", ObsColumn::numeric(vec![3.0, f64::NAN, 18.0, 3.0]))]);
        let l = Labels::of_column(&ds, "--label", "n").unwrap();
        assert_eq!(l.of_cell, [Some(0), None, Some(1), Some(0)]);
        assert_eq!(l.classes, ["3", "18"]);
        let ds = with_obs(200, vec![("library_size", ObsColumn::numeric((0..200).map(|i| (1000 + i % 131) as f64).collect()))]);
        let e = Labels::of_column(&ds, "--label", "library_size").unwrap_err().to_string();
        assert!(e.starts_with("--label library_size: d.h5mu: `library_size` is a numeric column with 131 distinct values for 200 labelled cells, a measurement"), "{e}");
        let ds = with_obs(2, vec![("x", ObsColumn::numeric(vec![0.5, 1.0]))]);
        let e = Labels::of_column(&ds, "--sublabel", "x").unwrap_err().to_string();
        assert!(e.starts_with("--sublabel x:") && e.contains("non-integer"), "{e}");
        // text columns: every value a class
        let ds = with_obs(3, vec![("t", ObsColumn::Text(vec!["b".into(), "a".into(), "b".into()]))]);
        assert_eq!(Labels::of_column(&ds, "--label", "t").unwrap().of_cell, [Some(1), Some(0), Some(1)]);
    }

    /// An age column: numbers, or categories / text spelling numbers; NaN, a missing category and
    /// infinities are no age; other text is refused, naming the cell.
    #[test]
    fn age_columns_read_numbers() {
        use crate::data::ObsColumn;
        let ds = with_obs(4, vec![("age", ObsColumn::numeric(vec![3.0, f64::NAN, 24.0, f64::INFINITY]))]);
        let a = Ages::of_column(&ds, "--age", "age").unwrap();
        assert!(a.of_cell[0] == 3.0 && a.of_cell[1].is_nan() && a.of_cell[2] == 24.0 && a.of_cell[3].is_nan(), "{a:?}");
        let ds = with_obs(3, vec![("age", ObsColumn::Categorical { codes: vec![1, -1, 0], categories: vec!["18".into(), "3.0".into()], int_categories: None, store: crate::data::CatStore::Unordered })]);
        let a = Ages::of_column(&ds, "--age", "age").unwrap();
        assert!(a.of_cell[0] == 3.0 && a.of_cell[1].is_nan() && a.of_cell[2] == 18.0, "{a:?}");
        let ds = with_obs(2, vec![("age", ObsColumn::Text(vec!["3".into(), "3m".into()]))]);
        let e = Ages::of_column(&ds, "--age", "age").unwrap_err().to_string();
        assert!(e.starts_with("--age age: d.h5mu: cell `c1` has `3m`, not a number"), "{e}");
        assert!(Ages::of_column(&ds, "--age", "nocol").unwrap_err().to_string().contains("no obs column \"nocol\" (set by --age)"));
    }

    /// A run's split applies to the cells of the data: by position when they are the training cells
    /// in order, else by name (cells the run never saw are test cells; a name the run holds in both
    /// parts is in neither).
    #[test]
    fn split_parts_follow_the_cells() {
        use crate::train::trainer::RunSplit;
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let split = RunSplit { cells: names(&["a", "b", "c", "d", "b"]), validation: vec![1, 3] };
        let ds = Dataset { source: "d.h5mu".into(), cell_names: split.cells.clone(), ..Default::default() };
        let (p, line) = split_parts(&split, &ds);
        assert_eq!(p, [Some(Part::Train), Some(Part::Test), Some(Part::Train), Some(Part::Test), Some(Part::Train)]);
        assert!(line.contains("3 cells it trained on") && line.contains("2 validation cells"), "{line}");
        let ds = Dataset { source: "d.h5mu".into(), cell_names: names(&["d", "x", "a", "b", "c"]), ..Default::default() };
        let (p, line) = split_parts(&split, &ds);
        assert_eq!(p, [Some(Part::Test), Some(Part::Test), Some(Part::Train), None, Some(Part::Train)]);
        assert!(line.contains("by name, 2 are cells it trained on (rows latent_train) and 2 are not (latent_test: 1 validation cells, 1 cells it never saw)"), "{line}");
        assert!(line.contains("1 cells whose name the run holds in both parts are in neither"), "{line}");
    }

    /// The in-place mask is the copying one, and unmasking restores the dataset bit for bit.
    #[test]
    fn in_place_mask_and_unmask_round_trip() {
        let (ds, _) = simulate(&SimConfig::preset(SimSize::Toy, 2)).unwrap();
        for (fraction, seed) in [(0.25, 0u64), (0.5, 7), (1.0, 1)] {
            let (copy, dropped_copy) = mask_atses(&ds, fraction, seed).unwrap();
            let mut inplace = ds.clone();
            let dropped = mask_atses_in_place(&mut inplace, fraction, seed).unwrap();
            assert_eq!(dropped, dropped_copy);
            assert_eq!(inplace.splicing, copy.splicing, "fraction {fraction}");
            assert!(!dropped.is_empty());
            unmask_atses(&mut inplace, &dropped, &ds.source).unwrap();
            assert_eq!(inplace.splicing, ds.splicing, "fraction {fraction}: unmask did not restore");
            assert_eq!(inplace.source, ds.source);
        }
        // A removed entry that collides with a kept one, or out of order, is an error, not a silent merge.
        let mut masked = ds.clone();
        let mut dropped = mask_atses_in_place(&mut masked, 0.5, 3).unwrap();
        let mut bad = masked.clone();
        let c = (0..bad.splicing.n_cells).find(|&c| !bad.splicing.cell_range(c).is_empty()).unwrap();
        let kept = bad.splicing.junction[bad.splicing.indptr[c]];
        let mut clash = dropped.clone();
        clash.push(Entry { cell: c as u32, junction: kept, psi: 0.5, k: 1.0, n: 2.0 });
        clash.sort_by_key(|e| (e.cell, e.junction));
        assert!(unmask_atses(&mut bad, &clash, "x").is_err());
        dropped.swap(0, 1);
        assert!(unmask_atses(&mut masked.clone(), &dropped, "x").is_err());
    }
}
