//! Cross-fold classification of obs targets from a latent (model.md §8.2, the original's
//! `cross_fold_classification`): stratified k-fold (k = 5), sklearn's
//! `StandardScaler + LogisticRegression(max_iter=2000, class_weight="balanced")` and
//! `RandomForestClassifier(n_estimators=300, class_weight="balanced_subsample")`, accuracy and weighted
//! precision / recall / F1 per fold (mean and sd over the folds), per-class scores, paired t-tests of
//! the per-fold scores between latent spaces, and a Dummy(prior) and a label-permutation baseline.
//!
//! Where it differs from sklearn: the folds' sizes per class are StratifiedKFold's (the same
//! round-robin allocation), but the shuffle within each class is our seeded permutation, not numpy's
//! `random_state=42` one; the forest's bootstrap draws and feature draws are ours too, so single
//! numbers differ from sklearn's by the folds' and the trees' chance, not in kind.

use super::evaluate::{EvalRow, Labels};
use super::latent_metrics::{confusion_counts, fit_logistic_weighted, logistic_predict, ratio, ClassScores};
use super::posterior::tags;
use crate::train::rng::{stream, Purpose};
use rand::seq::SliceRandom;
use rand::Rng;
use rayon::prelude::*;

/// §8.2's StratifiedKFold(n_splits=5).
pub const N_FOLDS: usize = 5;
/// §8.2's `LogisticRegression(max_iter=2000)`.
pub const LOGISTIC_MAX_ITER: usize = 2000;
/// §8.2's `RandomForestClassifier(n_estimators=300)`.
pub const N_TREES: usize = 300;

/// The fold (0..k) of every sample, as sklearn's `StratifiedKFold(k, shuffle=True)` allocates them:
/// classes numbered by first appearance, the labels sorted and dealt round-robin to the folds (so
/// every fold holds ⌊n_c/k⌋ or ⌈n_c/k⌉ of class c, and the folds' sizes are sklearn's), then the fold
/// numbers of each class shuffled among its members (a seeded permutation of ours, not numpy's).
pub fn stratified_folds(y: &[u32], k: usize, seed: u64) -> Vec<u32> {
    assert!(k >= 2, "stratified_folds: k = {k}");
    let n = y.len();
    let n_codes = y.iter().copied().max().map_or(0, |m| m as usize + 1);
    // class codes → order of first appearance (sklearn's y_encoded)
    let mut order = vec![usize::MAX; n_codes];
    let mut n_classes = 0;
    for &c in y {
        if order[c as usize] == usize::MAX {
            order[c as usize] = n_classes;
            n_classes += 1;
        }
    }
    let mut sorted: Vec<usize> = y.iter().map(|&c| order[c as usize]).collect();
    sorted.sort_unstable();
    let mut alloc = vec![vec![0usize; n_classes]; k];
    for (r, &c) in sorted.iter().enumerate() {
        alloc[r % k][c] += 1;
    }
    let mut fold = vec![0u32; n];
    for code in 0..n_codes {
        let c = order[code];
        if c == usize::MAX {
            continue;
        }
        let mut f: Vec<u32> = (0..k).flat_map(|i| std::iter::repeat(i as u32).take(alloc[i][c])).collect();
        f.shuffle(&mut stream(seed, Purpose::Analysis, tags::CV_FOLDS, c as u64));
        for (i, fi) in (0..n).filter(|&i| y[i] as usize == code).zip(f) {
            fold[i] = fi;
        }
    }
    fold
}

/// sklearn's `compute_class_weight("balanced")` over the classes present in `y`: w_c = n / (K · n_c),
/// K the number of classes present; 0 for a class absent from `y`. (The weights of the samples sum to n.)
pub fn balanced_class_weights(y: &[u32], n_classes: usize) -> Vec<f64> {
    let mut count = vec![0usize; n_classes];
    y.iter().for_each(|&c| count[c as usize] += 1);
    let present = count.iter().filter(|&&m| m > 0).count();
    count.iter().map(|&m| if m == 0 { 0.0 } else { y.len() as f64 / (present * m) as f64 }).collect()
}

/// The classifiers of §8.2 and its baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Classifier {
    /// StandardScaler (fitted on the training fold) + LogisticRegression(max_iter=2000,
    /// class_weight="balanced"): L2 with C = 1, lbfgs, multinomial (binary for two classes).
    Logistic,
    /// RandomForestClassifier(n_estimators, class_weight="balanced_subsample"), sklearn's defaults
    /// otherwise: Gini, max_features √d, bootstrap, fully grown trees, soft vote.
    RandomForest,
    /// DummyClassifier(strategy="prior"): the most frequent class of the training fold.
    DummyPrior,
}

impl Classifier {
    pub fn name(self) -> &'static str {
        match self {
            Classifier::Logistic => "logistic",
            Classifier::RandomForest => "random_forest",
            Classifier::DummyPrior => "dummy_prior",
        }
    }
}

/// Rows `rows` of the n × d matrix `x`.
fn take(x: &[f32], d: usize, rows: &[usize]) -> Vec<f32> {
    rows.iter().flat_map(|&r| x[r * d..(r + 1) * d].iter().copied()).collect()
}

/// StandardScaler fitted on the rows `fit` of `x` (n × d): column means and population sds (a constant
/// column scaled by 1), applied to the rows `rows`.
fn scale_rows(x: &[f32], d: usize, fit: &[usize], rows: &[usize]) -> Vec<f32> {
    let m = fit.len().max(1) as f64;
    let mean: Vec<f64> = (0..d).map(|t| fit.iter().map(|&r| x[r * d + t] as f64).sum::<f64>() / m).collect();
    let sd: Vec<f64> = (0..d)
        .map(|t| {
            let s = (fit.iter().map(|&r| (x[r * d + t] as f64 - mean[t]).powi(2)).sum::<f64>() / m).sqrt();
            if s > 0.0 {
                s
            } else {
                1.0
            }
        })
        .collect();
    rows.iter().flat_map(|&r| (0..d).map(|t| ((x[r * d + t] as f64 - mean[t]) / sd[t]) as f32).collect::<Vec<_>>()).collect()
}

/// Fit `c` on the rows `train` of `x` (n × d) with labels `y` (codes < n_classes, of every row) and
/// predict the rows `test`. `n_trees` and `seed`: the forest's.
pub fn fit_predict(c: Classifier, x: &[f32], d: usize, y: &[u32], n_classes: usize, train: &[usize], test: &[usize], n_trees: usize, seed: u64) -> Vec<u32> {
    let yt: Vec<u32> = train.iter().map(|&i| y[i]).collect();
    match c {
        Classifier::DummyPrior => {
            let mut count = vec![0usize; n_classes];
            yt.iter().for_each(|&c| count[c as usize] += 1);
            // (ties: the first class, as numpy's argmax)
            let best = (0..n_classes).fold(0, |b, c| if count[c] > count[b] { c } else { b });
            vec![best as u32; test.len()]
        }
        Classifier::Logistic => {
            // compact codes of the classes of the training fold
            let mut classes = yt.clone();
            classes.sort_unstable();
            classes.dedup();
            if classes.len() < 2 {
                return vec![classes.first().copied().unwrap_or(0); test.len()];
            }
            let code: Vec<u32> = yt.iter().map(|l| classes.binary_search(l).unwrap() as u32).collect();
            let k = classes.len();
            let w = balanced_class_weights(&code, k);
            let sw: Vec<f64> = code.iter().map(|&c| w[c as usize]).collect();
            let xt = scale_rows(x, d, train, train);
            let (wt, b) = fit_logistic_weighted(&xt, d, &code, k, LOGISTIC_MAX_ITER, Some(&sw));
            let xs = scale_rows(x, d, train, test);
            xs.chunks(d).map(|xi| classes[logistic_predict(&wt, &b, k, xi)]).collect()
        }
        Classifier::RandomForest => {
            let forest = Forest::fit(&take(x, d, train), d, &yt, n_classes, n_trees, seed);
            forest.predict(&take(x, d, test))
        }
    }
}

/// sklearn's FEATURE_THRESHOLD: feature values closer than this are one value to the splitter.
const FEATURE_THRESHOLD: f32 = 1e-7;

#[derive(Clone, Debug)]
enum Node {
    /// x[feature] ≤ threshold goes left.
    Split { feature: usize, threshold: f64, left: usize, right: usize },
    /// Class probabilities at `proba[start..start + n_classes]`.
    Leaf { start: usize },
}

/// One CART classification tree (Gini).
#[derive(Clone, Debug)]
pub struct Tree {
    nodes: Vec<Node>,
    proba: Vec<f64>,
}

/// Split search options of one tree.
struct Grow<'a> {
    x: &'a [f32],
    d: usize,
    y: &'a [u32],
    n_classes: usize,
    /// Features drawn per node (sklearn's max_features).
    mtry: usize,
}

impl Tree {
    /// A fully grown tree (min_samples_leaf 1, no depth limit) on the samples `samples` (row indices of
    /// `x`, each once) with weights `w` (a bootstrap's counts times the class weights). A node is a
    /// leaf when it is pure, holds one sample, or no feature varies in it; else it takes the split of
    /// best weighted Gini among `mtry` features drawn without replacement (more while every drawn one is
    /// constant in the node, as sklearn), thresholds at midpoints of consecutive distinct values.
    fn grow(g: &Grow, samples: &mut [usize], w: &[f64], rng: &mut impl Rng) -> Tree {
        let (d, k) = (g.d, g.n_classes);
        let mut tree = Tree { nodes: Vec::new(), proba: Vec::new() };
        // (start, end, node index to fill)
        tree.nodes.push(Node::Leaf { start: 0 });
        let mut stack = vec![(0usize, samples.len(), 0usize)];
        let mut feats: Vec<usize> = (0..d).collect();
        let mut buf: Vec<(f32, usize)> = Vec::with_capacity(samples.len());
        let mut wc = vec![0f64; k];
        let (mut left, mut right) = (vec![0f64; k], vec![0f64; k]);
        while let Some((start, end, at)) = stack.pop() {
            let node = &samples[start..end];
            wc.iter_mut().for_each(|v| *v = 0.0);
            node.iter().for_each(|&i| wc[g.y[i] as usize] += w[i]);
            let total: f64 = wc.iter().sum();
            let sq: f64 = wc.iter().map(|v| v * v).sum();
            let impurity = 1.0 - sq / (total * total);
            let mut best: Option<(f64, usize, f64)> = None;
            if node.len() >= 2 && impurity > f64::EPSILON {
                feats.shuffle(rng);
                let (mut visited, mut found) = (0usize, false);
                for &f in feats.iter() {
                    if visited >= g.mtry && found {
                        break;
                    }
                    visited += 1;
                    buf.clear();
                    buf.extend(node.iter().map(|&i| (g.x[i * d + f], i)));
                    buf.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                    if buf[buf.len() - 1].0 <= buf[0].0 + FEATURE_THRESHOLD {
                        continue;
                    }
                    found = true;
                    left.iter_mut().for_each(|v| *v = 0.0);
                    right.copy_from_slice(&wc);
                    let (mut wl, mut sql, mut sqr) = (0.0f64, 0.0f64, sq);
                    for p in 1..buf.len() {
                        let (v, i) = buf[p - 1];
                        let (c, wi) = (g.y[i] as usize, w[i]);
                        sql += wi * (2.0 * left[c] + wi);
                        sqr -= wi * (2.0 * right[c] - wi);
                        left[c] += wi;
                        right[c] -= wi;
                        wl += wi;
                        if buf[p].0 <= v + FEATURE_THRESHOLD {
                            continue;
                        }
                        // maximise Σ wLc²/WL + Σ wRc²/WR: minimise WL·giniL + WR·giniR
                        let wr = total - wl;
                        let proxy = sql / wl + sqr / wr;
                        if best.is_none_or(|b| proxy > b.0) {
                            let mut thr = v as f64 / 2.0 + buf[p].0 as f64 / 2.0;
                            if thr == buf[p].0 as f64 || !thr.is_finite() {
                                thr = v as f64;
                            }
                            best = Some((proxy, f, thr));
                        }
                    }
                }
            }
            match best {
                Some((_, f, thr)) => {
                    // partition samples[start..end]: x[f] ≤ thr first
                    let node = &mut samples[start..end];
                    let mut m = 0;
                    for q in 0..node.len() {
                        if (g.x[node[q] * d + f] as f64) <= thr {
                            node.swap(m, q);
                            m += 1;
                        }
                    }
                    let (l, r) = (tree.nodes.len(), tree.nodes.len() + 1);
                    tree.nodes.push(Node::Leaf { start: 0 });
                    tree.nodes.push(Node::Leaf { start: 0 });
                    tree.nodes[at] = Node::Split { feature: f, threshold: thr, left: l, right: r };
                    stack.push((start + m, end, r));
                    stack.push((start, start + m, l));
                }
                None => {
                    tree.nodes[at] = Node::Leaf { start: tree.proba.len() };
                    tree.proba.extend(wc.iter().map(|v| v / total));
                }
            }
        }
        tree
    }

    fn leaf_proba(&self, xi: &[f32], n_classes: usize) -> &[f64] {
        let mut at = 0;
        loop {
            match self.nodes[at] {
                Node::Split { feature, threshold, left, right } => at = if (xi[feature] as f64) <= threshold { left } else { right },
                Node::Leaf { start } => return &self.proba[start..start + n_classes],
            }
        }
    }

    /// Number of leaves.
    pub fn n_leaves(&self) -> usize {
        self.nodes.iter().filter(|n| matches!(n, Node::Leaf { .. })).count()
    }
}

/// sklearn's `RandomForestClassifier(n_estimators, class_weight="balanced_subsample")` with its
/// defaults: each tree on a bootstrap sample of n draws, the class weights recomputed on it ("balanced"
/// over the draws), Gini, max_features = ⌊√d⌋ (at least 1), fully grown; predictions average the
/// trees' leaf class probabilities. Tree t draws from its own seeded stream, so the forest does not
/// depend on the thread count.
#[derive(Clone, Debug)]
pub struct Forest {
    pub trees: Vec<Tree>,
    n_classes: usize,
    d: usize,
}

impl Forest {
    pub fn fit(x: &[f32], d: usize, y: &[u32], n_classes: usize, n_trees: usize, seed: u64) -> Forest {
        let n = y.len();
        assert_eq!(x.len(), n * d, "Forest::fit: {} values for {n}×{d}", x.len());
        assert!(n > 0 && n_trees > 0, "Forest::fit: {n} samples, {n_trees} trees");
        let g = Grow { x, d, y, n_classes, mtry: ((d as f64).sqrt() as usize).max(1) };
        let trees = (0..n_trees)
            .into_par_iter()
            .map(|t| {
                let mut rng = stream(seed, Purpose::Analysis, tags::FOREST, t as u64);
                let mut count = vec![0u32; n];
                (0..n).for_each(|_| count[rng.gen_range(0..n)] += 1);
                // balanced_subsample: the class weights of the drawn labels (with repeats)
                let mut per_class = vec![0usize; n_classes];
                (0..n).for_each(|i| per_class[y[i] as usize] += count[i] as usize);
                let present = per_class.iter().filter(|&&m| m > 0).count();
                let cw: Vec<f64> = per_class.iter().map(|&m| if m == 0 { 0.0 } else { n as f64 / (present * m) as f64 }).collect();
                let w: Vec<f64> = (0..n).map(|i| count[i] as f64 * cw[y[i] as usize]).collect();
                let mut samples: Vec<usize> = (0..n).filter(|&i| count[i] > 0).collect();
                Tree::grow(&g, &mut samples, &w, &mut rng)
            })
            .collect();
        Forest { trees, n_classes, d }
    }

    /// Mean of the trees' leaf class probabilities of each row of `x` (m × d).
    pub fn predict_proba(&self, x: &[f32]) -> Vec<f64> {
        let (d, k) = (self.d, self.n_classes);
        let m = x.len() / d.max(1);
        (0..m)
            .into_par_iter()
            .flat_map_iter(|r| {
                let xi = &x[r * d..(r + 1) * d];
                let mut p = vec![0f64; k];
                for t in &self.trees {
                    p.iter_mut().zip(t.leaf_proba(xi, k)).for_each(|(a, b)| *a += b);
                }
                p.into_iter().map(|v| v / self.trees.len() as f64)
            })
            .collect()
    }

    /// The class of largest mean probability (ties: the first).
    pub fn predict(&self, x: &[f32]) -> Vec<u32> {
        let k = self.n_classes;
        self.predict_proba(x).chunks(k).map(|p| (0..k).fold(0, |b, c| if p[c] > p[b] { c } else { b }) as u32).collect()
    }
}

/// The out-of-fold predictions of `c` and the scores of each fold.
#[derive(Clone, Debug)]
pub struct CvResult {
    pub per_fold: Vec<ClassScores>,
    /// Every sample's prediction, from the model fitted without its fold.
    pub pred: Vec<u32>,
}

/// `c` fitted on all folds but one and scored on that one, for each of the `k` folds (`folds`: each
/// sample's fold). The forest of every fold has the same seed (sklearn's random_state=42 in each fold).
pub fn cross_validate(c: Classifier, x: &[f32], d: usize, y: &[u32], n_classes: usize, folds: &[u32], k: usize, n_trees: usize, seed: u64) -> CvResult {
    let n = y.len();
    let mut pred = vec![0u32; n];
    let mut per_fold = Vec::with_capacity(k);
    for f in 0..k as u32 {
        let (test, train): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| folds[i] == f);
        let p = fit_predict(c, x, d, y, n_classes, &train, &test, n_trees, seed);
        let truth: Vec<u32> = test.iter().map(|&i| y[i]).collect();
        per_fold.push(ClassScores::of(&truth, &p));
        test.iter().zip(&p).for_each(|(&i, &v)| pred[i] = v);
    }
    CvResult { per_fold, pred }
}

/// Precision, recall and F1 of one class (sklearn's `average=None`, zero_division=0) and its support.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PerClass {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

/// sklearn's `precision_recall_fscore_support(truth, pred, average=None, zero_division=0)` for the
/// classes 0..n_classes.
pub fn per_class_scores(truth: &[u32], pred: &[u32], n_classes: usize) -> Vec<PerClass> {
    confusion_counts(truth, pred, n_classes)
        .iter().map(|&(tp, fp, fn_)| PerClass { precision: ratio(tp, tp + fp), recall: ratio(tp, tp + fn_), f1: ratio(2 * tp, 2 * tp + fp + fn_), support: tp + fn_ }).collect()
}

/// Mean and standard deviation (numpy's default ddof = 0) of `v`.
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    (mean, (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt())
}

/// scipy's `ttest_rel(a, b)`: t = mean(a − b) / (sd(a − b; ddof 1) / √n) and the two-sided p from
/// Student's t with n − 1 degrees of freedom. Differences all zero: (nan, nan), as scipy; equal
/// nonzero differences: (±inf, 0). Fewer than 2 pairs: nan.
pub fn ttest_rel(a: &[f64], b: &[f64]) -> (f64, f64) {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    assert_eq!(a.len(), b.len());
    let n = a.len();
    if n < 2 {
        return (f64::NAN, f64::NAN);
    }
    let diff: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let mean = diff.iter().sum::<f64>() / n as f64;
    let var = diff.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let t = mean / (var / n as f64).sqrt();
    if t.is_nan() {
        return (f64::NAN, f64::NAN);
    }
    let dist = StudentsT::new(0.0, 1.0, (n - 1) as f64).expect("df ≥ 1");
    (t, 2.0 * dist.sf(t.abs()))
}

/// A target column restricted to the cells scored: the positions (in the cells given) of the cells
/// kept, their class codes (compact, in the column's class order), the class names, and what was left
/// out.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub column: String,
    pub rows: Vec<usize>,
    pub y: Vec<u32>,
    pub classes: Vec<String>,
    /// Cells without a label among those given.
    pub unlabelled: usize,
    /// Classes of fewer than k cells (name, cells), in class order.
    pub dropped: Vec<(String, usize)>,
}

impl Target {
    /// The labelled cells of `cells` (dataset cells) whose class has at least `k` of them (§8.2 drops
    /// the rest, which StratifiedKFold cannot spread over k folds).
    pub fn of(labels: &Labels, cells: &[usize], k: usize) -> Target {
        let mut size = vec![0usize; labels.classes.len()];
        cells.iter().filter_map(|&c| labels.of_cell[c]).for_each(|l| size[l as usize] += 1);
        let mut code = vec![u32::MAX; size.len()];
        let mut classes = Vec::new();
        for (l, &m) in size.iter().enumerate() {
            if m >= k {
                code[l] = classes.len() as u32;
                classes.push(labels.classes[l].clone());
            }
        }
        let (mut rows, mut y) = (Vec::new(), Vec::new());
        for (r, &c) in cells.iter().enumerate() {
            if let Some(l) = labels.of_cell[c] {
                if code[l as usize] != u32::MAX {
                    rows.push(r);
                    y.push(code[l as usize]);
                }
            }
        }
        let dropped = (0..size.len()).filter(|&l| size[l] > 0 && size[l] < k).map(|l| (labels.classes[l].clone(), size[l])).collect();
        let unlabelled = cells.iter().filter(|&&c| labels.of_cell[c].is_none()).count();
        Target { column: labels.column.clone(), rows, y, classes, unlabelled, dropped }
    }
}

/// What [`cross_fold_rows`] runs.
#[derive(Clone, Copy, Debug)]
pub struct CrossFoldOptions {
    pub folds: usize,
    pub n_trees: usize,
    /// Also the label-permutation baseline (both classifiers on seeded, shuffled labels).
    pub permuted: bool,
    pub seed: u64,
}

/// The four fold scores, named as the rows name them.
fn named(s: &ClassScores) -> [(&'static str, f64); 4] {
    [("accuracy", s.accuracy), ("precision_weighted", s.precision), ("recall_weighted", s.recall), ("f1_weighted", s.f1)]
}

/// §8.2 on one target for each latent space (`spaces`: name, n × d values of the cells given, d),
/// as TSV rows of section `cross_fold`, notes for stderr (the cells and classes left out) and warnings
/// (why a metric is nan). Rows: subset `all` method `data`: `n_cells_COL`, `n_classes_COL`, `n_cells:COL=CLASS`;
/// per space and method (`logistic`, `random_forest`, `dummy_prior`, with `opts.permuted` also
/// `permuted_logistic` and `permuted_random_forest`): `METRIC_mean_COL` and `METRIC_sd_COL` over the
/// folds (METRIC: accuracy, precision_weighted, recall_weighted, f1_weighted), and per class
/// `precision:COL=CLASS`, `recall:COL=CLASS`, `f1:COL=CLASS` of the out-of-fold predictions of all
/// cells together; per pair of spaces (subset `joint_vs_expression`, …) and classifier:
/// `ttest_t_METRIC_COL` and `ttest_p_METRIC_COL` of the paired per-fold scores.
pub fn cross_fold_rows(spaces: &[(&str, &[f32], usize)], target: &Target, opts: &CrossFoldOptions) -> (Vec<EvalRow>, Vec<String>, Vec<String>) {
    let col = &target.column;
    let k = opts.folds;
    let mut rows = Vec::new();
    let (mut notes, mut warnings) = (Vec::new(), Vec::new());
    let mut push = |subset: &str, method: &str, metric: String, value: f64| rows.push(EvalRow { section: "cross_fold".into(), subset: subset.into(), method: method.into(), metric, value });
    if target.unlabelled > 0 {
        notes.push(format!("--cross-fold {col}: {} cells without a label (NaN or a missing category) are left out", target.unlabelled));
    }
    if !target.dropped.is_empty() {
        let list: Vec<String> = target.dropped.iter().map(|(c, m)| format!("`{c}` ({m} cell{})", if *m == 1 { "" } else { "s" })).collect();
        notes.push(format!("--cross-fold {col}: classes of fewer than {k} cells (one per fold) are left out ({} cells): {}", target.dropped.iter().map(|d| d.1).sum::<usize>(), list.join(", ")));
    }
    let n_classes = target.classes.len();
    push("all", "data", format!("n_cells_{col}"), target.y.len() as f64);
    push("all", "data", format!("n_classes_{col}"), n_classes as f64);
    let mut support = vec![0usize; n_classes];
    target.y.iter().for_each(|&c| support[c as usize] += 1);
    for (c, name) in target.classes.iter().enumerate() {
        push("all", "data", format!("n_cells:{col}={name}"), support[c] as f64);
    }
    let mut methods: Vec<(String, Classifier, bool)> =
        vec![("logistic".into(), Classifier::Logistic, false), ("random_forest".into(), Classifier::RandomForest, false), ("dummy_prior".into(), Classifier::DummyPrior, false)];
    if opts.permuted {
        methods.push(("permuted_logistic".into(), Classifier::Logistic, true));
        methods.push(("permuted_random_forest".into(), Classifier::RandomForest, true));
    }
    if n_classes < 2 {
        warnings.push(format!("--cross-fold {col}: every cross_fold score is nan: {n_classes} class{} of {k} or more cells among the {} labelled cells scored (a classifier needs two)", if n_classes == 1 { "" } else { "es" }, target.y.len()));
        for (space, _, _) in spaces {
            for (m, _, _) in &methods {
                for (metric, _) in named(&ClassScores::NAN) {
                    push(space, m, format!("{metric}_mean_{col}"), f64::NAN);
                    push(space, m, format!("{metric}_sd_{col}"), f64::NAN);
                }
            }
        }
        return (rows, notes, warnings);
    }
    let folds = stratified_folds(&target.y, k, opts.seed);
    // the permutation baseline: labels shuffled (seeded), then the same pipeline (folds stratified on them)
    let y_perm = {
        let mut p = target.y.clone();
        p.shuffle(&mut stream(opts.seed, Purpose::Analysis, tags::PERMUTE, 0));
        p
    };
    let perm_folds = stratified_folds(&y_perm, k, opts.seed);
    // per-fold scores by (space, classifier), for the t-tests
    let mut by_space: Vec<Vec<(Classifier, Vec<ClassScores>)>> = Vec::new();
    for (space, x, d) in spaces {
        let xs: Vec<f32> = take(x, *d, &target.rows);
        let mut mine = Vec::new();
        for (m, c, permuted) in &methods {
            let (y, f) = if *permuted { (&y_perm, &perm_folds) } else { (&target.y, &folds) };
            let cv = cross_validate(*c, &xs, *d, y, n_classes, f, k, opts.n_trees, opts.seed);
            for (i, (metric, _)) in named(&ClassScores::NAN).into_iter().enumerate() {
                let v: Vec<f64> = cv.per_fold.iter().map(|s| named(s)[i].1).collect();
                let (mean, sd) = mean_sd(&v);
                push(space, m, format!("{metric}_mean_{col}"), mean);
                push(space, m, format!("{metric}_sd_{col}"), sd);
            }
            for (c, s) in per_class_scores(y, &cv.pred, n_classes).iter().enumerate() {
                let name = &target.classes[c];
                push(space, m, format!("precision:{col}={name}"), s.precision);
                push(space, m, format!("recall:{col}={name}"), s.recall);
                push(space, m, format!("f1:{col}={name}"), s.f1);
            }
            if !permuted && *c != Classifier::DummyPrior {
                mine.push((*c, cv.per_fold));
            }
        }
        by_space.push(mine);
    }
    for a in 0..spaces.len() {
        for b in a + 1..spaces.len() {
            let subset = format!("{}_vs_{}", spaces[a].0, spaces[b].0);
            for ((c, fa), (_, fb)) in by_space[a].iter().zip(&by_space[b]) {
                for (i, (metric, _)) in named(&ClassScores::NAN).into_iter().enumerate() {
                    let va: Vec<f64> = fa.iter().map(|s| named(s)[i].1).collect();
                    let vb: Vec<f64> = fb.iter().map(|s| named(s)[i].1).collect();
                    let (t, p) = ttest_rel(&va, &vb);
                    if t.is_nan() {
                        warnings.push(format!("cross_fold {subset} {} ttest {metric}_{col} is nan: the two spaces score the same in every fold", c.name()));
                    }
                    push(&subset, c.name(), format!("ttest_t_{metric}_{col}"), t);
                    push(&subset, c.name(), format!("ttest_p_{metric}_{col}"), p);
                }
            }
        }
    }
    (rows, notes, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Uniform points in [-1, 1]² (n × 2) and their XOR label (x > 0) ≠ (y > 0): no line separates
    /// the classes, axis-aligned splits do.
    fn xor(n: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let x: Vec<f32> = (0..2 * n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let y = (0..n).map(|i| u32::from((x[2 * i] > 0.0) != (x[2 * i + 1] > 0.0))).collect();
        (x, y)
    }

    /// Every cell in exactly one of k folds; each class spread ⌊n_c/k⌋ or ⌈n_c/k⌉ per fold; the folds'
    /// sizes per class are sklearn 1.9.1's `StratifiedKFold(5, shuffle=True, random_state=42).split` on
    /// the same labels (the allocation does not depend on the shuffle; only which cells go where does).
    #[test]
    fn folds_are_stratified_disjoint_and_cover_every_cell() {
        // classes 2, 0, 1, 3 in order of first appearance, sizes 7, 12, 5, 23 interleaved
        let mut y: Vec<u32> = Vec::new();
        let sizes = [(2u32, 7usize), (0, 12), (1, 5), (3, 23)];
        let mut left: Vec<usize> = sizes.iter().map(|s| s.1).collect();
        while left.iter().any(|&l| l > 0) {
            for (i, &(c, _)) in sizes.iter().enumerate() {
                if left[i] > 0 {
                    y.push(c);
                    left[i] -= 1;
                }
            }
        }
        let f = stratified_folds(&y, 5, 0);
        assert_eq!(f.len(), y.len());
        assert!(f.iter().all(|&v| v < 5));
        let count = |fold: u32, c: u32| (0..y.len()).filter(|&i| f[i] == fold && y[i] == c).count();
        // sklearn's test-fold counts per class (rows: folds; columns: classes 2, 0, 1, 3)
        let sklearn = [[2, 2, 1, 5], [2, 2, 1, 5], [1, 3, 1, 4], [1, 3, 1, 4], [1, 2, 1, 5]];
        for (fold, want) in sklearn.iter().enumerate() {
            let got: Vec<usize> = [2, 0, 1, 3].iter().map(|&c| count(fold as u32, c)).collect();
            assert_eq!(got, want.to_vec(), "fold {fold}");
        }
        for &(c, m) in &sizes {
            assert!((0..5).all(|fold| count(fold, c) == m / 5 || count(fold, c) == m.div_ceil(5)), "class {c}");
        }
        // seeded: the same seed gives the same folds, another seed others with the same sizes
        assert_eq!(stratified_folds(&y, 5, 0), f);
        let g = stratified_folds(&y, 5, 1);
        assert_ne!(g, f);
        assert!((0..5u32).all(|fold| [0, 1, 2, 3].iter().all(|&c| (0..y.len()).filter(|&i| g[i] == fold && y[i] == c).count() == count(fold, c))));
    }

    #[test]
    fn balanced_class_weights_are_n_over_k_n_c() {
        // n = 6, three classes present of sizes 3, 1, 2; class 3 absent
        let w = balanced_class_weights(&[0, 0, 2, 0, 1, 2], 4);
        let want = [6.0 / 9.0, 2.0, 1.0, 0.0];
        assert!(w.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-15), "{w:?}");
        let per_sample: f64 = [0usize, 0, 2, 0, 1, 2].iter().map(|&c| w[c]).sum();
        assert!((per_sample - 6.0).abs() < 1e-12);
    }

    /// The scaler is fitted on the training rows only: training rows (1, 5), (3, 5) give means (2, 5)
    /// and sds (1, 1) (the second column is constant there, so scaled by 1), and the far test rows
    /// (10, 7), (12, 9) are scaled with those, not with the statistics of all four rows.
    #[test]
    fn scale_rows_uses_the_training_rows_statistics_only() {
        let x = [1.0f32, 5.0, 3.0, 5.0, 10.0, 7.0, 12.0, 9.0];
        assert_eq!(scale_rows(&x, 2, &[0, 1], &[0, 1]), vec![-1.0, 0.0, 1.0, 0.0]);
        assert_eq!(scale_rows(&x, 2, &[0, 1], &[2, 3]), vec![8.0, 2.0, 10.0, 4.0]);
        assert_eq!(scale_rows(&x, 2, &[0, 1], &[3, 0]), vec![10.0, 4.0, -1.0, 0.0]);
        // fitted on the test rows instead: means (11, 8), sds (1, 1)
        assert_eq!(scale_rows(&x, 2, &[2, 3], &[0, 3]), vec![-10.0, -3.0, 1.0, 1.0]);
    }

    /// A sample of weight 2 is the sample twice; and the balanced, scaled fit is sklearn 1.9.1's
    /// `make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced",
    /// tol=1e-10))` on the same cells (its `coef_` and `intercept_`; without the class weights sklearn
    /// gives 1.1004, −1.3690 on the two-class case).
    #[test]
    fn weighted_logistic_is_repeated_samples_and_balanced_as_sklearn() {
        let x = [-2.0f32, 0.5, -1.0, -0.3, 0.2, 1.0, 1.0, 0.1, 2.0, -0.7, 0.5, 0.4, -0.4, -1.1];
        let y = [0u32, 0, 1, 1, 2, 2, 1];
        let mut w = vec![1.0; 7];
        w[4] = 2.0;
        let (a, ab) = fit_logistic_weighted(&x, 2, &y, 3, 1000, Some(&w));
        let mut x2 = x.to_vec();
        x2.extend_from_slice(&x[8..10]);
        let mut y2 = y.to_vec();
        y2.push(2);
        let (b, bb) = super::super::latent_metrics::fit_logistic(&x2, 2, &y2, 3, 1000);
        assert!(a.iter().chain(&ab).zip(b.iter().chain(&bb)).all(|(p, q)| (p - q).abs() < 1e-6), "{a:?} {b:?}");
        let close = |got: &[f64], want: &[f64]| got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5);
        let balanced = |x: &[f32], d: usize, y: &[u32], k: usize| {
            let all: Vec<usize> = (0..y.len()).collect();
            let cw = balanced_class_weights(y, k);
            let sw: Vec<f64> = y.iter().map(|&c| cw[c as usize]).collect();
            fit_logistic_weighted(&scale_rows(x, d, &all, &all), d, y, k, LOGISTIC_MAX_ITER, Some(&sw))
        };
        // two classes, 6 against 2 (weights 2/3 and 2): the binary model
        let (w, b) = balanced(&[0.0, 0.3, 0.5, 0.8, 1.1, 1.3, 1.4, 2.0], 1, &[0, 0, 0, 0, 0, 0, 1, 1], 2);
        assert!(close(&w, &[0.0, 1.2246397]) && close(&b, &[0.0, -0.56179537]), "{w:?} {b:?}");
        // the classifier of the folds: sklearn's balanced pipeline predicts 0 1 1 1 for these four
        // points, without the class weights 0 0 0 1
        let xs = [0.0f32, 0.3, 0.5, 0.8, 1.1, 1.3, 1.4, 2.0, 1.0, 1.3, 1.6, 1.8];
        let ys = [0u32, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0];
        assert_eq!(fit_predict(Classifier::Logistic, &xs, 1, &ys, 2, &(0..8).collect::<Vec<_>>(), &[8, 9, 10, 11], 1, 0), vec![0, 1, 1, 1]);
        // three classes: multinomial
        let (w, b) = balanced(&x, 2, &y, 3);
        let want = [-0.99224708, 0.03046847, 0.17289985, 0.0161252, 0.81934723, -0.04659367];
        assert!(close(&w, &want) && close(&b, &[-0.213612, 0.23157685, -0.01796484]), "{w:?} {b:?}");
    }

    /// The forest learns XOR (no line separates it: the logistic regression stays near chance), and its
    /// trees are each grown on a bootstrap: fitted on the cells themselves, a forest is perfect on them,
    /// but held-out cells near the axes are where trees disagree.
    #[test]
    fn forest_separates_xor_where_the_logistic_regression_cannot() {
        let (x, y) = xor(400, 3);
        let folds = stratified_folds(&y, 5, 0);
        let rf = cross_validate(Classifier::RandomForest, &x, 2, &y, 2, &folds, 5, 100, 0);
        let lr = cross_validate(Classifier::Logistic, &x, 2, &y, 2, &folds, 5, 100, 0);
        let acc = |r: &CvResult| mean_sd(&r.per_fold.iter().map(|s| s.accuracy).collect::<Vec<_>>()).0;
        assert!(acc(&rf) > 0.93, "forest {}", acc(&rf));
        assert!(acc(&lr) < 0.65, "logistic {}", acc(&lr));
        let dummy = cross_validate(Classifier::DummyPrior, &x, 2, &y, 2, &folds, 5, 1, 0);
        // the prior: each fold's most frequent training class for every cell of the fold
        assert!(acc(&dummy) < 0.6 && (0..400).all(|i| (0..400).all(|j| folds[i] != folds[j] || dummy.pred[i] == dummy.pred[j])));
    }

    /// A node is split by weighted Gini: on binary features, feature 0 cuts (1 of class 0, 3 of class 1)
    /// from the rest and feature 1 cuts one class-1 cell; Gini prefers feature 0 (9.375 against 9.474,
    /// times 1/20), entropy feature 1. Second set: feature 0 cuts one class-1 cell, feature 1 (3, 5);
    /// Gini prefers feature 0 (9.474 against 9.583), the misclassification count feature 1 (9 against 8).
    /// The threshold is the midpoint, and the tree is grown until its leaves are pure.
    #[test]
    fn splits_follow_weighted_gini() {
        let y: Vec<u32> = (0..20).map(|i| u32::from(i >= 10)).collect();
        for (f0, f1) in [(vec![0usize, 10, 11, 12], vec![13usize]), (vec![10], vec![0, 1, 2, 11, 12, 13, 14, 15])] {
            let mut x = vec![0f32; 40];
            f0.iter().for_each(|&i| x[2 * i] = 1.0);
            f1.iter().for_each(|&i| x[2 * i + 1] = 1.0);
            let g = Grow { x: &x, d: 2, y: &y, n_classes: 2, mtry: 2 };
            for seed in 0..4 {
                let mut samples: Vec<usize> = (0..20).collect();
                let tree = Tree::grow(&g, &mut samples, &[1.0; 20], &mut stream(seed, Purpose::Analysis, 99, 0));
                match tree.nodes[0] {
                    Node::Split { feature, threshold, .. } => assert!(feature == 0 && threshold == 0.5, "{f0:?}: feature {feature} at {threshold}"),
                    Node::Leaf { .. } => panic!("no split"),
                }
                // every leaf pure except where the cells cannot be told apart (same x, both classes)
                for i in 0..20 {
                    let p = tree.leaf_proba(&x[2 * i..2 * i + 2], 2);
                    let same: Vec<usize> = (0..20).filter(|&j| x[2 * j..2 * j + 2] == x[2 * i..2 * i + 2]).collect();
                    let frac1 = same.iter().filter(|&&j| y[j] == 1).count() as f64 / same.len() as f64;
                    assert!((p[1] - frac1).abs() < 1e-12, "cell {i}: {p:?}");
                }
            }
        }
    }

    /// balanced_subsample on cells that no split can tell apart (every x equal; 3 of class 0, 1 of class
    /// 1): each tree is one leaf, and its class probabilities are those of its bootstrap's weighted
    /// counts. With the class weights of the bootstrap, a draw holding both classes gives exactly
    /// (½, ½), one holding class 0 only (probability (3/4)⁴) (1, 0), class 1 only ((1/4)⁴) (0, 1): the
    /// forest's mean for class 0 is ½ + ½((3/4)⁴ − (1/4)⁴) = 0.65625. Without a bootstrap every tree
    /// gives (½, ½); class weights of the whole training set instead give other values per tree.
    #[test]
    fn forest_draws_bootstraps_with_their_own_balanced_weights() {
        let x = [0.5f32; 4];
        let y = [0u32, 0, 1, 0];
        let forest = Forest::fit(&x, 1, &y, 2, N_TREES, 7);
        for t in &forest.trees {
            assert_eq!(t.n_leaves(), 1);
            let p = t.leaf_proba(&x[..1], 2);
            assert!([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]].iter().any(|w| (p[0] - w[0]).abs() < 1e-12 && (p[1] - w[1]).abs() < 1e-12), "{p:?}");
        }
        let p = forest.predict_proba(&x[..1]);
        // sd of the mean over 300 trees ≈ 0.0136
        assert!((p[0] - 0.65625).abs() < 0.05 && (p[0] + p[1] - 1.0).abs() < 1e-12, "{p:?}");
        assert_eq!(forest.predict(&x[..1]), vec![0]);
    }

    /// The forest is the same on 1, 2 and 3 threads (one seeded stream per tree).
    #[test]
    fn forest_does_not_depend_on_the_thread_count() {
        let (x, y) = xor(300, 9);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| Forest::fit(&x, 2, &y, 2, 50, 4).predict_proba(&x).iter().map(|v| v.to_bits()).collect::<Vec<_>>())
        };
        let one = run(1);
        assert_eq!(run(2), one);
        assert_eq!(run(3), one);
        // another seed, another forest
        assert_ne!(Forest::fit(&x, 2, &y, 2, 50, 5).predict_proba(&x).iter().map(|v| v.to_bits()).collect::<Vec<_>>(), one);
    }

    /// scipy 1.17.1's `ttest_rel` on the same pairs (t, two-sided p).
    #[test]
    fn paired_t_test_as_scipy() {
        let cases: [(&[f64], &[f64], f64, f64); 4] = [
            (&[0.9, 0.85, 0.88, 0.91, 0.87], &[0.8, 0.82, 0.86, 0.84, 0.8], 3.96479837674305, 0.016610795177490197),
            (&[0.5, 0.6, 0.7, 0.65, 0.55], &[0.52, 0.58, 0.71, 0.66, 0.5], 0.46569031542379974, 0.6656634261609808),
            (&[1.0, 2.0, 3.0], &[1.5, 1.9, 3.6], -1.524985703326046, 0.26676442489323365),
            (&[0.1, 0.2], &[0.3, 0.1], -0.33333333333333326, 0.7951672353008665),
        ];
        for (a, b, t, p) in cases {
            let (gt, gp) = ttest_rel(a, b);
            assert!((gt - t).abs() < 1e-10 * t.abs().max(1.0) && (gp - p).abs() < 1e-10, "{a:?}: ({gt}, {gp}) against ({t}, {p})");
        }
        let (t, p) = ttest_rel(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]);
        assert!(t.is_nan() && p.is_nan());
        assert_eq!(ttest_rel(&[1.0, 2.0, 3.0], &[0.0, 1.0, 2.0]), (f64::INFINITY, 0.0));
        assert_eq!(mean_sd(&[1.0, 2.0, 3.0, 4.0]), (2.5, 1.25f64.sqrt()));
    }

    /// Per class, as sklearn's `precision_recall_fscore_support(average=None, zero_division=0)`; the
    /// support-weighted means are [`ClassScores`]'s weighted scores.
    #[test]
    fn per_class_scores_by_hand() {
        let (t, p) = ([0u32, 0, 0, 1, 1, 2, 4], [0u32, 0, 1, 1, 2, 2, 3]);
        let s = per_class_scores(&t, &p, 5);
        let want = [(1.0, 2.0 / 3.0, 0.8, 3), (0.5, 0.5, 0.5, 2), (0.5, 1.0, 2.0 / 3.0, 1), (0.0, 0.0, 0.0, 0), (0.0, 0.0, 0.0, 1)];
        for (c, w) in want.iter().enumerate() {
            assert!((s[c].precision - w.0).abs() < 1e-15 && (s[c].recall - w.1).abs() < 1e-15 && (s[c].f1 - w.2).abs() < 1e-15 && s[c].support == w.3, "class {c}: {:?}", s[c]);
        }
        let weighted = ClassScores::of(&t, &p);
        let f1: f64 = s.iter().map(|c| c.f1 * c.support as f64).sum::<f64>() / 7.0;
        assert!((f1 - weighted.f1).abs() < 1e-15);
    }

    fn labels(classes: &[&str], of_cell: Vec<Option<u32>>) -> Labels {
        Labels { column: "ct".into(), of_cell, classes: classes.iter().map(|s| s.to_string()).collect() }
    }

    /// The rows of one target on a latent that holds it and one that does not: the classes of fewer than
    /// k cells and the unlabelled cells are left out and named, the informative space wins and its
    /// paired t-test says so, the baselines stay at chance; a target left with one class is nan.
    #[test]
    fn rows_score_spaces_and_compare_them() {
        let n = 150;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        // classes a, b, c of 50 cells, but cells 0..3 of class `rare` and cell 4 (of b) unlabelled: 49, 48, 49
        let mut of_cell: Vec<Option<u32>> = (0..n).map(|i| Some((i % 3) as u32)).collect();
        (0..3).for_each(|i| of_cell[i] = Some(3));
        of_cell[4] = None;
        let lab = labels(&["a", "b", "c", "rare"], of_cell.clone());
        let good: Vec<f32> = (0..n).flat_map(|i| [(i % 3) as f32 * 3.0 + rng.gen_range(-1.0f32..1.0), rng.gen_range(-1.0f32..1.0)]).collect();
        let noise: Vec<f32> = (0..2 * n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let cells: Vec<usize> = (0..n).collect();
        let target = Target::of(&lab, &cells, 5);
        assert_eq!((target.y.len(), target.classes.len(), target.unlabelled), (n - 4, 3, 1));
        assert_eq!(target.dropped, vec![("rare".to_string(), 3)]);
        let opts = CrossFoldOptions { folds: 5, n_trees: 50, permuted: true, seed: 0 };
        let (rows, notes, warnings) = cross_fold_rows(&[("good", &good, 2), ("noise", &noise, 2)], &target, &opts);
        let get = |subset: &str, method: &str, metric: &str| rows.iter().find(|r| r.subset == subset && r.method == method && r.metric == metric).unwrap_or_else(|| panic!("{subset} {method} {metric}")).value;
        assert!(notes.iter().any(|l| l.contains("`rare` (3 cells)")) && notes.iter().any(|l| l.contains("1 cells without a label")), "{notes:?}");
        assert_eq!((get("all", "data", "n_cells_ct"), get("all", "data", "n_classes_ct"), get("all", "data", "n_cells:ct=b")), (146.0, 3.0, 48.0));
        for m in ["logistic", "random_forest"] {
            assert!(get("good", m, "accuracy_mean_ct") > 0.9 && get("noise", m, "accuracy_mean_ct") < 0.5, "{m}");
            assert!(get("good", m, "accuracy_sd_ct") >= 0.0 && get("good", m, "f1:ct=a") > 0.85);
            assert!(get("good_vs_noise", m, "ttest_t_accuracy_ct") > 0.0 && get("good_vs_noise", m, "ttest_p_accuracy_ct") < 0.01, "{m}");
            assert!(get("good", &format!("permuted_{m}"), "accuracy_mean_ct") < 0.5, "{m}");
        }
        assert!(get("good", "dummy_prior", "accuracy_mean_ct") < 0.4);
        assert!(rows.iter().all(|r| r.section == "cross_fold" && !r.value.is_nan()) && warnings.is_empty(), "{warnings:?}");
        // one class left of 5 or more cells: nan rows and a line saying why
        let one = labels(&["a", "b"], (0..n).map(|i| Some(u32::from(i < 3))).collect());
        let (rows, _, warnings) = cross_fold_rows(&[("good", &good, 2)], &Target::of(&one, &cells, 5), &opts);
        assert!(rows.iter().filter(|r| r.method != "data").all(|r| r.value.is_nan()) && rows.iter().any(|r| r.metric == "accuracy_mean_ct"));
        assert!(warnings.iter().any(|l| l.contains("every cross_fold score is nan: 1 class")), "{warnings:?}");
    }
}
