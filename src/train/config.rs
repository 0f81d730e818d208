//! Training options (model.md §6.1) with the original's defaults.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    /// No scheduler unless `reduce_lr_on_plateau` (the original's "plateau" default with the flag off).
    Plateau,
    /// StepLR(step_size, gamma = lr_factor).
    Step,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub max_epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub weight_decay: f64,
    pub eps: f64,
    /// Fraction of cells used for training (the rest validates); 0.9 as in scvi.
    pub train_size: f64,
    pub early_stopping: bool,
    pub early_stopping_patience: usize,
    /// Validation checks ignored by early stopping; None → n_epochs_kl_warmup.
    pub early_stopping_warmup_epochs: Option<usize>,
    pub n_epochs_kl_warmup: Option<usize>,
    /// scvi's `max_kl_weight`: the KL weight the warm-up ramps to (1 in the original). The cross gate
    /// still opens when the warm-up ends.
    pub max_kl_weight: f64,
    pub adversarial_mixing: bool,
    pub lr_scheduler_type: SchedulerKind,
    pub reduce_lr_on_plateau: bool,
    pub lr_patience: usize,
    pub lr_factor: f64,
    pub step_size: usize,
    pub gradient_clip: Option<f64>,
    /// §14.3: early stopping restores the weights of the best validation epoch.
    pub restore_best: bool,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            max_epochs: 500,
            lr: 1e-4,
            batch_size: 128,
            weight_decay: 1e-3,
            eps: 1e-8,
            train_size: 0.9,
            early_stopping: true,
            early_stopping_patience: 50,
            early_stopping_warmup_epochs: None,
            n_epochs_kl_warmup: Some(50),
            max_kl_weight: 1.0,
            adversarial_mixing: true,
            lr_scheduler_type: SchedulerKind::Plateau,
            reduce_lr_on_plateau: false,
            lr_patience: 30,
            lr_factor: 0.6,
            step_size: 10,
            gradient_clip: Some(5.0),
            restore_best: false,
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// The authors' training setup (model.md §10).
    pub fn paper() -> Self {
        TrainConfig {
            max_epochs: 800,
            lr: 1e-4,
            batch_size: 256,
            weight_decay: 1e-4,
            n_epochs_kl_warmup: Some(200),
            lr_scheduler_type: SchedulerKind::Step,
            step_size: 650,
            lr_factor: 0.1,
            ..TrainConfig::default()
        }
    }

    /// The `robust` preset's training setup (docs/robust.md): batch 256, at most 100 epochs.
    pub fn robust() -> Self {
        TrainConfig {
            max_epochs: 100,
            // 6e-3 with splicing_loss_weight 2 (docs/robust.md): about 500 steps at 1,500 cells.
            lr: 6e-3,
            batch_size: 256,
            // 10 epochs (20 before 2026-12-05), with the scalar DM concentration of
            // `ModelConfig::robust` (docs/robust.md).
            n_epochs_kl_warmup: Some(10),
            restore_best: true,
            ..TrainConfig::default()
        }
    }

    /// The options set to ask for something this configuration leaves out: (field, why), as
    /// [`crate::model::ModelConfig::inert_options`] (away from the default, whatever the data). Early
    /// stopping and the schedulers act at the end of a validation run (model.md §12.20): with
    /// `train_size = 1` there is none.
    pub fn inert_options(&self) -> Vec<(&'static str, String)> {
        let d = TrainConfig::default();
        let mut out = Vec::new();
        let validates = self.train_size < 1.0;
        let no_validation = || "there are no validation cells (train_size = 1), and it acts after each validation run".to_string();
        let mut check = |field: &'static str, set: bool, acts: bool, why: &dyn Fn() -> String| {
            if set && !acts {
                out.push((field, why()));
            }
        };
        let stopping = self.early_stopping;
        let not_stopping = || if stopping { no_validation() } else { "early stopping is off (early_stopping = false)".to_string() };
        check("early_stopping_patience", self.early_stopping_patience != d.early_stopping_patience, stopping && validates, &not_stopping);
        check("early_stopping_warmup_epochs", self.early_stopping_warmup_epochs != d.early_stopping_warmup_epochs, stopping && validates, &not_stopping);
        let kind = self.lr_scheduler_type;
        let plateau = kind == SchedulerKind::Plateau;
        let sched = |what: &'static str| {
            move || if validates { format!("{what} (lr_scheduler_type = {}, reduce_lr_on_plateau = {})", if plateau { "plateau" } else { "step" }, self.reduce_lr_on_plateau) } else { no_validation() }
        };
        // (StepLR steps once per validation run, §12.20: without validation cells it never steps)
        check("lr_scheduler_type", kind != d.lr_scheduler_type, validates, &no_validation);
        check("reduce_lr_on_plateau", self.reduce_lr_on_plateau, plateau && validates, &sched("it belongs to the plateau scheduler"));
        check("lr_patience", self.lr_patience != d.lr_patience, plateau && self.reduce_lr_on_plateau && validates, &sched("only ReduceLROnPlateau has a patience"));
        check("lr_factor", self.lr_factor != d.lr_factor, (!plateau || self.reduce_lr_on_plateau) && validates, &sched("no scheduler runs"));
        check("step_size", self.step_size != d.step_size, !plateau && validates, &sched("only StepLR has a step size"));
        check("restore_best", self.restore_best, stopping && validates, &not_stopping);
        out
    }

    pub fn early_stopping_warmup(&self) -> usize {
        self.early_stopping_warmup_epochs.unwrap_or(self.n_epochs_kl_warmup.unwrap_or(0))
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.batch_size > 0, "batch_size must be > 0");
        // (Adam computes in f32: 1e39 would be infinite there, 1e-46 zero)
        anyhow::ensure!(
            self.lr > 0.0 && (self.lr as f32).is_finite() && self.lr as f32 > 0.0,
            "lr must be a positive number that a 32-bit float holds (at most {:e}; Adam steps in f32), got {}",
            f32::MAX,
            self.lr
        );
        anyhow::ensure!(self.train_size > 0.0 && self.train_size <= 1.0, "train_size must be in (0, 1], got {}", self.train_size);
        anyhow::ensure!(self.weight_decay >= 0.0, "weight_decay must be >= 0");
        anyhow::ensure!(self.max_epochs > 0, "max_epochs must be > 0");
        anyhow::ensure!(self.max_kl_weight > 0.0 && self.max_kl_weight.is_finite(), "max_kl_weight must be a positive number, got {}", self.max_kl_weight);
        if self.lr_scheduler_type == SchedulerKind::Step {
            anyhow::ensure!(self.step_size > 0, "step_size must be > 0 for the step scheduler");
        }
        anyhow::ensure!(self.eps > 0.0 && self.eps.is_finite(), "eps (Adam's denominator term) must be a positive number, got {}", self.eps);
        if let Some(c) = self.gradient_clip {
            // (torch's clip_grad_norm_ would zero the gradients at 0 and reverse them below)
            anyhow::ensure!(c > 0.0 && c.is_finite(), "gradient_clip must be a positive norm (none turns clipping off), got {c}");
        }
        anyhow::ensure!(self.lr_factor > 0.0 && self.lr_factor.is_finite(), "lr_factor must be a positive number, got {}", self.lr_factor);
        if self.lr_scheduler_type == SchedulerKind::Plateau && self.reduce_lr_on_plateau {
            // (torch's ReduceLROnPlateau refuses a factor ≥ 1)
            anyhow::ensure!(self.lr_factor < 1.0, "lr_factor must be below 1 for ReduceLROnPlateau, got {}", self.lr_factor);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The presets list nothing; each listed option is one another option leaves out, one case each.
    #[test]
    fn inert_training_options() {
        let inert = |c: &TrainConfig| -> Vec<&'static str> { c.inert_options().into_iter().map(|(f, _)| f).collect() };
        for c in [TrainConfig::default(), TrainConfig::paper(), TrainConfig::robust()] {
            assert!(inert(&c).is_empty(), "{:?}", inert(&c));
        }
        let d = TrainConfig::default();
        let all_train = TrainConfig { train_size: 1.0, ..d.clone() };
        let no_stop = TrainConfig { early_stopping: false, ..d.clone() };
        let step = TrainConfig { lr_scheduler_type: SchedulerKind::Step, ..d.clone() };
        let plateau = TrainConfig { reduce_lr_on_plateau: true, ..d.clone() };
        assert_eq!(inert(&TrainConfig { early_stopping_patience: 3, ..no_stop.clone() }), ["early_stopping_patience"]);
        assert_eq!(inert(&TrainConfig { early_stopping_warmup_epochs: Some(3), ..all_train.clone() }), ["early_stopping_warmup_epochs"]);
        assert_eq!(inert(&TrainConfig { reduce_lr_on_plateau: true, ..step.clone() }), ["reduce_lr_on_plateau"]);
        assert_eq!(inert(&TrainConfig { lr_patience: 3, ..d.clone() }), ["lr_patience"]);
        assert!(inert(&TrainConfig { lr_patience: 3, ..plateau.clone() }).is_empty());
        assert_eq!(inert(&TrainConfig { lr_factor: 0.5, ..d.clone() }), ["lr_factor"]);
        assert!(inert(&TrainConfig { lr_factor: 0.5, ..step.clone() }).is_empty() && inert(&TrainConfig { lr_factor: 0.5, ..plateau.clone() }).is_empty());
        assert_eq!(inert(&TrainConfig { step_size: 3, ..plateau.clone() }), ["step_size"]);
        assert!(inert(&TrainConfig { step_size: 3, ..step.clone() }).is_empty());
        assert_eq!(inert(&TrainConfig { restore_best: true, ..no_stop }), ["restore_best"]);
        assert_eq!(inert(&TrainConfig { restore_best: true, lr_factor: 0.5, ..TrainConfig { train_size: 1.0, ..step } }), ["lr_scheduler_type", "lr_factor", "restore_best"]);
    }
}
