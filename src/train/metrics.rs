//! Per-epoch metrics as scvi-tools logs them (model.md §5.5): sums over minibatches divided by the
//! number of cells. Written as `metrics.tsv` and `metrics.jsonl` in the run directory after every epoch.
//! A term that was not computed (the validation terms without validation cells, `adversary_loss`
//! without the adversarial classifier) is NaN here: an empty field in the TSV and null in the JSONL,
//! which pandas reads as missing; the columns stay the same.

use crate::model::StepOutput;
use crate::util::write_atomic;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub kl_weight: f64,
    /// The cross gate of the epoch's training steps (§5.7; validation runs at 1). Missing (NaN) in the
    /// metrics of runs written before it was logged.
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub cross_gate: f64,
    /// The minimised loss (VAE loss + adversarial fool term) averaged over the epoch's cells: each
    /// step's minibatch mean weighted by its cells, as Lightning averages a logged value over an epoch.
    pub train_loss: f64,
    pub reconstruction_loss_train: f64,
    pub reconstruction_loss_expression_train: f64,
    pub reconstruction_loss_splicing_train: f64,
    pub kl_local_train: f64,
    pub elbo_train: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub reconstruction_loss_validation: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub reconstruction_loss_expression_validation: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub reconstruction_loss_splicing_validation: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub kl_local_validation: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub elbo_validation: f64,
    /// Mean adversarial classifier loss over steps (NaN without the adversary).
    #[serde(deserialize_with = "nan_if_null")]
    pub adversary_loss: f64,
    pub seconds: f64,
    pub cells_per_s: f64,
    // Accumulators (not serialised).
    #[serde(skip)]
    pub steps: usize,
    #[serde(skip)]
    pub n_train: usize,
    #[serde(skip)]
    pub rec_train: f64,
    #[serde(skip)]
    pub kl_train: f64,
    #[serde(skip)]
    pub rec_e: f64,
    #[serde(skip)]
    pub rec_s: f64,
    #[serde(skip)]
    pub adv_loss: f64,
    /// Steps that trained the adversarial classifier.
    #[serde(skip)]
    pub adv_steps: usize,
    #[serde(skip)]
    pub n_val: usize,
    #[serde(skip)]
    pub rec_validation: f64,
    #[serde(skip)]
    pub v_kl: f64,
    #[serde(skip)]
    pub v_e: f64,
    #[serde(skip)]
    pub v_s: f64,
}

fn nan() -> f64 {
    f64::NAN
}

/// A missing term (null, as serde_json writes NaN) reads back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn sum(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64).sum()
}

/// Σ_i (RL_e + RL_s), as `StepOutput::reconstruction_loss_sum`.
fn rec_sum(rl_expr: &[f32], rl_spl: &[f32]) -> f64 {
    rl_expr.iter().zip(rl_spl).map(|(&a, &b)| a as f64 + b as f64).sum()
}

/// Σ_i KL + B × penalty, as `StepOutput::kl_local_sum`.
fn kl_sum(kl: &[f32], penalty: f64) -> f64 {
    sum(kl) + kl.len() as f64 * penalty
}

impl EpochMetrics {
    /// The metrics of `epoch` before its steps: the terms that may not be computed are NaN (missing)
    /// until they are.
    pub fn new(epoch: usize, lr: f64) -> Self {
        let nan = f64::NAN;
        EpochMetrics {
            epoch,
            lr,
            reconstruction_loss_validation: nan,
            reconstruction_loss_expression_validation: nan,
            reconstruction_loss_splicing_validation: nan,
            kl_local_validation: nan,
            elbo_validation: nan,
            adversary_loss: nan,
            ..Default::default()
        }
    }

    pub fn add_train(&mut self, out: &StepOutput<f32>, total_loss: f64) {
        self.add_train_terms(&out.rl_expr, &out.rl_spl, &out.kl, out.penalty as f64, total_loss);
    }

    /// [`Self::add_train`] from the per-cell terms and the penalty (the CUDA step reports these).
    pub fn add_train_terms(&mut self, rl_expr: &[f32], rl_spl: &[f32], kl: &[f32], penalty: f64, total_loss: f64) {
        self.steps += 1;
        self.n_train += rl_expr.len();
        self.rec_e += sum(rl_expr);
        self.rec_s += sum(rl_spl);
        self.rec_train += rec_sum(rl_expr, rl_spl);
        self.kl_train += kl_sum(kl, penalty);
        self.train_loss += total_loss * rl_expr.len() as f64;
    }

    pub fn finish_train(&mut self) {
        let n = self.n_train.max(1) as f64;
        self.reconstruction_loss_train = self.rec_train / n;
        self.reconstruction_loss_expression_train = self.rec_e / n;
        self.reconstruction_loss_splicing_train = self.rec_s / n;
        self.kl_local_train = self.kl_train / n;
        self.elbo_train = self.reconstruction_loss_train + self.kl_local_train;
        self.adversary_loss = if self.adv_steps > 0 { self.adv_loss / self.steps.max(1) as f64 } else { f64::NAN };
        self.train_loss /= n;
        // Keep the running value for the progress message consistent after finishing.
        self.rec_train = self.reconstruction_loss_train * n;
    }

    pub fn add_validation(&mut self, out: &StepOutput<f32>) {
        self.add_validation_terms(&out.rl_expr, &out.rl_spl, &out.kl, out.penalty as f64);
    }

    /// [`Self::add_validation`] from the per-cell terms.
    pub fn add_validation_terms(&mut self, rl_expr: &[f32], rl_spl: &[f32], kl: &[f32], penalty: f64) {
        self.n_val += rl_expr.len();
        self.v_e += sum(rl_expr);
        self.v_s += sum(rl_spl);
        self.v_kl += kl_sum(kl, penalty);
    }

    pub fn finish_validation(&mut self) {
        let n = self.n_val.max(1) as f64;
        self.reconstruction_loss_expression_validation = self.v_e / n;
        self.reconstruction_loss_splicing_validation = self.v_s / n;
        self.reconstruction_loss_validation = (self.v_e + self.v_s) / n;
        self.kl_local_validation = self.v_kl / n;
        self.elbo_validation = self.reconstruction_loss_validation + self.kl_local_validation;
        self.rec_validation = self.reconstruction_loss_validation;
    }

    pub fn summary_line(&self, max_epochs: usize) -> String {
        let mut s = format!(
            "epoch {}/{max_epochs}: loss {:.3} | rec expr {:.3} spl {:.3} | kl {:.3} (κ {:.2})",
            self.epoch + 1,
            self.train_loss,
            self.reconstruction_loss_expression_train,
            self.reconstruction_loss_splicing_train,
            self.kl_local_train,
            self.kl_weight
        );
        if self.n_val > 0 {
            s += &format!(" | val rec {:.3} elbo {:.3}", self.reconstruction_loss_validation, self.elbo_validation);
        }
        s += &format!(" | {:.2}s, {:.0} cells/s", self.seconds, self.cells_per_s);
        s
    }
}

/// The metrics of every epoch of a run.
#[derive(Clone, Debug, Default)]
pub struct MetricsLog {
    pub epochs: Vec<EpochMetrics>,
}

const COLUMNS: &[&str] = &[
    "epoch",
    "lr",
    "kl_weight",
    "cross_gate",
    "train_loss",
    "reconstruction_loss_train",
    "reconstruction_loss_expression_train",
    "reconstruction_loss_splicing_train",
    "kl_local_train",
    "elbo_train",
    "reconstruction_loss_validation",
    "reconstruction_loss_expression_validation",
    "reconstruction_loss_splicing_validation",
    "kl_local_validation",
    "elbo_validation",
    "adversary_loss",
    "seconds",
    "cells_per_s",
];

impl MetricsLog {
    pub fn push(&mut self, m: EpochMetrics) {
        self.epochs.push(m);
    }

    pub fn truncate(&mut self, n: usize) {
        self.epochs.truncate(n);
    }

    /// Rewrite `metrics.tsv` and `metrics.jsonl` (atomically; they are small).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let (tsv, jsonl) = self.to_text()?;
        write_atomic(&dir.join("metrics.tsv"), |p| Ok(std::fs::write(p, tsv.as_bytes())?))?;
        write_atomic(&dir.join("metrics.jsonl"), |p| Ok(std::fs::write(p, jsonl.as_bytes())?))
    }

    /// The texts of `metrics.tsv` and `metrics.jsonl`.
    pub fn to_text(&self) -> Result<(String, String)> {
        let mut tsv = COLUMNS.join("\t");
        tsv.push('\n');
        let mut jsonl = String::new();
        for m in &self.epochs {
            let v = serde_json::to_value(m)?;
            // (NaN is null in JSON: an empty field, which pandas reads as missing)
            let row: Vec<String> = COLUMNS.iter().map(|c| v.get(*c).filter(|x| !x.is_null()).map(|x| x.to_string()).unwrap_or_default()).collect();
            tsv += &row.join("\t");
            tsv.push('\n');
            jsonl += &serde_json::to_string(m)?;
            jsonl.push('\n');
        }
        Ok((tsv, jsonl))
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(_) => return Ok(MetricsLog::default()),
        };
        let epochs = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{}: line {}", path.display(), i + 1)))
            .collect::<Result<Vec<_>>>()?;
        Ok(MetricsLog { epochs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `train_loss` averages the steps' minibatch means over the epoch's cells (a small last minibatch
    /// counts for its cells, as Lightning weights a logged value by the batch size), and `cross_gate` is
    /// a column of both files.
    #[test]
    fn train_loss_is_weighted_by_the_minibatch_cells() {
        let mut m = EpochMetrics::new(0, 1e-3);
        m.add_train_terms(&[1.0; 4], &[1.0; 4], &[0.0; 4], 0.0, 10.0);
        m.add_train_terms(&[1.0; 1], &[1.0; 1], &[0.0; 1], 0.0, 20.0);
        m.finish_train();
        assert_eq!(m.train_loss, (4.0 * 10.0 + 20.0) / 5.0);
        m.cross_gate = 0.0;
        let log = MetricsLog { epochs: vec![m] };
        let (tsv, jsonl) = log.to_text().unwrap();
        let head: Vec<&str> = tsv.lines().next().unwrap().split('\t').collect();
        let row: Vec<&str> = tsv.lines().nth(1).unwrap().split('\t').collect();
        let at = head.iter().position(|c| *c == "cross_gate").expect("a cross_gate column");
        assert_eq!(row[at], "0.0");
        assert!(jsonl.contains("\"cross_gate\":0.0"), "{jsonl}");
        // metrics written before the column read back with it missing
        let old: EpochMetrics = serde_json::from_str(&jsonl.replace("\"cross_gate\":0.0,", "")).unwrap();
        assert!(old.cross_gate.is_nan());
    }

    /// A term that was not computed (no validation cells, no adversary) is an empty field in the TSV
    /// (pandas reads it as missing) and null in the JSONL, never 0; the columns stay the same, and a
    /// resumed run reads both back.
    #[test]
    fn missing_terms_are_empty_not_zero() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = MetricsLog::default();
        let mut a = EpochMetrics::new(0, 1e-3);
        a.add_train_terms(&[1.0, 2.0], &[0.5, 0.5], &[0.1, 0.1], 0.0, 4.0);
        a.finish_train();
        log.push(a);
        let mut b = EpochMetrics::new(1, 1e-3);
        b.add_train_terms(&[1.0, 2.0], &[0.5, 0.5], &[0.1, 0.1], 0.0, 4.0);
        (b.adv_loss, b.adv_steps) = (0.75, 1);
        b.finish_train();
        b.add_validation_terms(&[1.0], &[0.25], &[0.5], 0.0);
        b.finish_validation();
        log.push(b.clone());
        log.save(dir.path()).unwrap();
        let tsv = std::fs::read_to_string(dir.path().join("metrics.tsv")).unwrap();
        let rows: Vec<Vec<&str>> = tsv.lines().map(|l| l.split('\t').collect()).collect();
        assert_eq!(rows[0], COLUMNS);
        let missing: Vec<&str> = COLUMNS.iter().copied().filter(|c| c.ends_with("_validation") || *c == "adversary_loss").collect();
        assert_eq!(missing.len(), 6);
        for c in 0..COLUMNS.len() {
            let (first, second) = (rows[1][c], rows[2][c]);
            assert_eq!(first.is_empty(), missing.contains(&COLUMNS[c]), "{}: {first:?}", COLUMNS[c]);
            assert!(!second.is_empty(), "{}", COLUMNS[c]);
        }
        assert_eq!(rows[2][COLUMNS.iter().position(|c| *c == "adversary_loss").unwrap()], "0.75");
        let jsonl = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        let first: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
        assert!(missing.iter().all(|c| first[*c].is_null()), "{first}");
        let back = MetricsLog::load(dir.path()).unwrap();
        assert!(back.epochs[0].elbo_validation.is_nan() && back.epochs[0].adversary_loss.is_nan());
        assert_eq!((back.epochs[1].elbo_validation, back.epochs[1].adversary_loss), (b.elbo_validation, 0.75));
    }
}
