//! Training schedules (model.md §5.7, §6.1–§6.2): KL warm-up, the cross gate, early stopping with its
//! warm-up, and the two learning-rate schedulers. Each mirrors the PyTorch / Lightning semantics the
//! original relies on, and is plain state so checkpoints can store it.

use serde::{Deserialize, Serialize};

/// κ_KL(epoch) = min(epoch / n_epochs_kl_warmup, 1), constant within an epoch (0-based epochs).
/// With no warm-up (None or 0) the weight is 1 from the start.
pub fn kl_weight(epoch: usize, n_epochs_kl_warmup: Option<usize>) -> f32 {
    match n_epochs_kl_warmup {
        Some(w) if w > 0 => (epoch as f32 / w as f32).clamp(0.0, 1.0),
        _ => 1.0,
    }
}

/// The step's KL weight and cross gate: the warm-up κ_KL ramps to `max_kl_weight` (scvi's option; 1 in
/// the original), and the gate follows the warm-up alone, so it still opens when the warm-up ends.
pub fn kl_and_gate(epoch: usize, n_epochs_kl_warmup: Option<usize>, max_kl_weight: f64) -> (f32, f32) {
    let warm = kl_weight(epoch, n_epochs_kl_warmup);
    (warm * max_kl_weight as f32, cross_gate(warm))
}

/// Cross gate in "hard" mode: 1 once κ_KL ≥ 0.999, else 0.
pub fn cross_gate(kl_weight: f32) -> f32 {
    if kl_weight >= 0.999 {
        1.0
    } else {
        0.0
    }
}

/// Lightning's EarlyStopping (mode min, min_delta 0) with scvi's warm-up: the first `warmup_checks`
/// validation checks neither count as improvements nor as patience.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EarlyStopping {
    pub patience: usize,
    pub min_delta: f64,
    pub warmup_checks: usize,
    pub checks_seen: usize,
    /// Best monitored value so far (None before the first counted check; JSON has no infinity).
    pub best: Option<f64>,
    pub best_epoch: Option<usize>,
    pub wait: usize,
}

impl EarlyStopping {
    pub fn new(patience: usize, warmup_checks: usize) -> Self {
        EarlyStopping { patience, min_delta: 0.0, warmup_checks, checks_seen: 0, best: None, best_epoch: None, wait: 0 }
    }

    /// Record one validation value. Returns (improved, should_stop).
    pub fn update(&mut self, epoch: usize, value: f64) -> (bool, bool) {
        self.checks_seen += 1;
        if self.checks_seen <= self.warmup_checks {
            return (false, false);
        }
        if value < self.best.unwrap_or(f64::INFINITY) - self.min_delta {
            self.best = Some(value);
            self.best_epoch = Some(epoch);
            self.wait = 0;
            (true, false)
        } else {
            self.wait += 1;
            (false, self.wait >= self.patience)
        }
    }
}

/// Learning-rate schedulers, stepped only at validation-epoch end (§6.2 step 6).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum LrScheduler {
    None,
    /// torch StepLR: lr = lr0 · gamma^(floor(n_steps / step_size)).
    Step { step_size: usize, gamma: f64, steps: usize },
    /// torch ReduceLROnPlateau(mode min, threshold_mode abs, cooldown 0, eps 1e-8).
    Plateau { patience: usize, factor: f64, threshold: f64, min_lr: f64, best: Option<f64>, bad_epochs: usize },
}

impl LrScheduler {
    pub fn step_lr(step_size: usize, gamma: f64) -> Self {
        LrScheduler::Step { step_size, gamma, steps: 0 }
    }
    pub fn plateau(patience: usize, factor: f64) -> Self {
        LrScheduler::Plateau { patience, factor, threshold: 0.0, min_lr: 0.0, best: None, bad_epochs: 0 }
    }

    /// One scheduler step after validation with the monitored metric; returns the new learning rate.
    pub fn step(&mut self, lr: f64, lr0: f64, metric: f64) -> f64 {
        match self {
            LrScheduler::None => lr,
            LrScheduler::Step { step_size, gamma, steps } => {
                *steps += 1;
                lr0 * gamma.powi((*steps / (*step_size).max(1)) as i32)
            }
            LrScheduler::Plateau { patience, factor, threshold, min_lr, best, bad_epochs } => {
                if metric < best.unwrap_or(f64::INFINITY) - *threshold {
                    *best = Some(metric);
                    *bad_epochs = 0;
                } else {
                    *bad_epochs += 1;
                }
                if *bad_epochs > *patience {
                    *bad_epochs = 0;
                    let new_lr = (lr * *factor).max(*min_lr);
                    if lr - new_lr > 1e-8 {
                        return new_lr;
                    }
                }
                lr
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_warmup_is_linear_then_flat() {
        assert_eq!(kl_weight(0, Some(50)), 0.0);
        // max_kl_weight scales the weight, not the gate; at 1 it changes nothing.
        assert_eq!(kl_and_gate(1, Some(4), 0.5), (0.125, 0.0));
        assert_eq!(kl_and_gate(4, Some(4), 0.5), (0.5, 1.0));
        assert_eq!(kl_and_gate(7, None, 2.0), (2.0, 1.0));
        for e in 0..6 {
            assert_eq!(kl_and_gate(e, Some(4), 1.0), (kl_weight(e, Some(4)), cross_gate(kl_weight(e, Some(4)))));
        }
        assert_eq!(kl_weight(25, Some(50)), 0.5);
        assert_eq!(kl_weight(49, Some(50)), 0.98);
        assert_eq!(kl_weight(50, Some(50)), 1.0);
        assert_eq!(kl_weight(80, Some(50)), 1.0);
        assert_eq!(kl_weight(0, None), 1.0);
        assert_eq!(cross_gate(kl_weight(49, Some(50))), 0.0);
        assert_eq!(cross_gate(kl_weight(50, Some(50))), 1.0);
    }

    #[test]
    fn early_stopping_ignores_warmup_then_counts_patience() {
        let mut es = EarlyStopping::new(2, 3);
        // Warm-up checks never improve nor count, however good.
        for e in 0..3 {
            assert_eq!(es.update(e, -1e9), (false, false));
        }
        assert_eq!(es.update(3, 10.0), (true, false));
        assert_eq!(es.update(4, 10.0), (false, false)); // equal is not an improvement
        assert_eq!(es.update(5, 9.0), (true, false));
        assert_eq!(es.update(6, 9.5), (false, false));
        assert_eq!(es.update(7, 9.5), (false, true));
        assert_eq!(es.best_epoch, Some(5));
    }

    #[test]
    fn step_lr_matches_torch() {
        let mut s = LrScheduler::step_lr(2, 0.1);
        let lrs: Vec<f64> = (0..5).map(|_| s.step(0.0, 1.0, 0.0)).collect();
        let want = [1.0, 0.1, 0.1, 0.01, 0.01];
        for (a, b) in lrs.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{lrs:?}");
        }
    }

    #[test]
    fn plateau_reduces_after_patience_bad_epochs() {
        let mut s = LrScheduler::plateau(2, 0.5);
        let mut lr = 1.0;
        lr = s.step(lr, 1.0, 5.0); // improvement
        assert_eq!(lr, 1.0);
        lr = s.step(lr, 1.0, 5.0); // bad 1
        lr = s.step(lr, 1.0, 6.0); // bad 2
        assert_eq!(lr, 1.0);
        lr = s.step(lr, 1.0, 6.0); // bad 3 > patience → reduce
        assert_eq!(lr, 0.5);
        lr = s.step(lr, 1.0, 4.0);
        assert_eq!(lr, 0.5);
    }
}
