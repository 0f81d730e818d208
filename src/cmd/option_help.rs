//! One-line `--help` descriptions of the model and training option flags (`option_flags`), keyed by the
//! serde key of `ModelConfig` / `TrainConfig`. Sources: the doc comments of src/model/config.rs and
//! src/train/config.rs, and model.md §6.1, §7.1, §14. The tests keep the tables in step with the configs:
//! every option has a line, every line names an option, and every value listed for an enum is one the
//! flag accepts.

/// The help of one option: what it does and, for an enum, every value the flag accepts (serde spelling).
pub struct OptionHelp {
    pub key: &'static str,
    pub about: &'static str,
    pub values: &'static [&'static str],
}

const fn o(key: &'static str, about: &'static str) -> OptionHelp {
    OptionHelp { key, about, values: &[] }
}

const fn e(key: &'static str, about: &'static str, values: &'static [&'static str]) -> OptionHelp {
    OptionHelp { key, about, values }
}

/// `ModelConfig` (model.md §7.1; §14 for the options beyond the original).
pub const MODEL_HELP: &[OptionHelp] = &[
    e("gene_likelihood", "Expression likelihood: zero-inflated negative binomial, negative binomial or Poisson", &["zinb", "nb", "poisson"]),
    e(
        "dispersion",
        "Expression inverse dispersion θ: per gene, gene × batch, gene × label (--labels-key) or per cell",
        &["gene", "gene-batch", "gene-label", "gene-cell"],
    ),
    o("use_size_factor_key", "true: library = log(size factor + 1e-6) from the data; false: a learned library encoder"),
    e(
        "splicing_encoder_architecture",
        "Splicing encoder: vanilla (MLP on PSI) or partial (junction codes pooled over observed junctions)",
        &["vanilla", "partial"],
    ),
    e("splicing_decoder_architecture", "Splicing decoder: vanilla (MLP) or linear (one linear layer + sigmoid)", &["vanilla", "linear"]),
    e("expression_architecture", "Expression decoder: vanilla (MLP, scVI DecoderSCVI) or linear (LinearDecoderSCVI)", &["vanilla", "linear"]),
    o("max_nobs", "Partial encoder: observed (cell, junction) pairs per chunk, -1 = one pass; bounds memory only"),
    e(
        "pool_mode",
        "Partial encoder pooling: mean over observed junctions, sum, or fixed (sum / training median count)",
        &["mean", "sum", "fixed"],
    ),
    o("code_dim", "Partial encoder: size D of the junction embedding and of each junction's code"),
    o("h_hidden_dim", "Partial encoder: hidden width of the per-junction network"),
    o("encoder_hidden_dim", "Partial encoder: hidden width of the MLP after pooling"),
    o("initialize_embeddings_from_pca", "Partial encoder: start the junction embedding from a TruncatedSVD of the training PSI"),
    o("n_hidden", "Hidden width H of the encoder and decoder MLPs; none = min(128, ⌊√junctions⌋)"),
    o("n_latent", "Latent size d per modality (2d joint with concatenate); none = ⌊√n_hidden⌋, e.g. 11 at 128"),
    o("n_layers_encoder", "Linear layers in each encoder MLP (≥ 1)"),
    o("n_layers_decoder", "Linear layers in the vanilla decoders' MLPs (≥ 1)"),
    o("dropout_rate", "Dropout rate of the encoders and the vanilla splicing decoder, in [0, 1)"),
    e("use_batch_norm", "Where encoder/decoder MLPs use BatchNorm", &["none", "encoder", "decoder", "both"]),
    e("use_layer_norm", "Where encoder/decoder MLPs use LayerNorm (no affine)", &["none", "encoder", "decoder", "both"]),
    e("latent_distribution", "Latent distribution: normal, or ln (logistic normal: samples softmax-ed)", &["normal", "ln"]),
    o("deeply_inject_covariates", "Covariates enter every layer of the expression encoder and vanilla decoder, not just the first"),
    o("encode_covariates", "The encoders also see the covariates (batch and categorical one-hots, continuous)"),
    e(
        "splicing_loss_type",
        "Splicing likelihood of the junction counts; bce fits PSI alone (no counts needed)",
        &["binomial", "beta_binomial", "dirichlet_multinomial", "bce"],
    ),
    o("splicing_concentration", "No effect: the original stores and ignores it (model.md §3.4); refused when given"),
    e("dm_concentration", "Dirichlet-multinomial concentration: one per ATSE or one shared scalar (DM loss only)", &["atse", "scalar"]),
    o("lambda_prior", "Weight λ of the L2 prior on the log concentration (beta-binomial, DM): λ Σ log_phi² / batch"),
    o("splicing_loss_weight", "Multiplier of the splicing reconstruction loss (≥ 0)"),
    e(
        "modality_weights",
        "Joint posterior: equal mix, learned per cell or shared, concatenated, or learned per dimension",
        &["equal", "cell", "universal", "concatenate", "per_dimension_weighted_average"],
    ),
    e(
        "modality_penalty",
        "Penalty tying the two posteriors (0 with concatenate); JeffreysExact = true KL, MMDRbf = kernel MMD",
        &["Jeffreys", "MMD", "None", "JeffreysExact", "MMDRbf"],
    ),
    e("warmup_routing", "During KL warm-up: coin (one modality's posterior per minibatch) or mix from the start", &["coin", "mix"]),
    o("mask_cells_without_splicing", "Cells with no observed junction use the expression posterior alone and leave the penalty"),
    e("cross_decoding", "concatenate: decoders that read the other modality's half (the original: both)", &["both", "splicing", "none"]),
    e(
        "mixing_variance",
        "Joint variance of equal/universal/cell mixing: √w_e·v_e + √w_s·v_s (§12.4) or w_e²·v_e + w_s²·v_s",
        &["sqrt_weights", "independent"],
    ),
    e("concentration_init", "Initial DM / beta-binomial concentration: φ ≈ 4.6 as the original (§12.9) or φ ≈ 100", &["log_100", "phi_100"]),
    o("expression_scale_softmax", "Vanilla expression decoder: softmax scale even with size factors (not softplus, §12.11)"),
    o("linear_expression_layer_norm", "Linear expression decoder: LayerNorm on its gene logits (§12.12); false = none"),
    o("dm_exact_softmax", "DM within-ATSE softmax without the original's +1e-8 in its log-sum-exp (§12.26; same bits in f32)"),
    e(
        "expression_input",
        "Expression encoder input: raw counts, log1p, or log1p of counts per 10⁴ (likelihood uses counts)",
        &["raw", "log1p", "log1p_normalized"],
    ),
    o("partial_center_psi", "Partial encoder sees PSI centred on each junction's training mean (a typical junction adds 0)"),
    o("partial_linear_output", "Partial encoder's last MLP block is a plain linear layer (posterior mean can be negative)"),
    o("splicing_bias_from_data", "Initialise the splicing decoder's output bias from the training data's mean PSI"),
    o("splicing_decoder_prior", "λ of a Gaussian prior on the splicing decoder's output weights (λ Σ W² / cells); 0 = off"),
    o("splicing_decoder_effect_prior", "λ of a Gaussian prior on the splicing decoder's decoded effects across cells; 0 = off"),
];

/// `TrainConfig` (model.md §6.1; `restore_best` §14.3).
pub const TRAIN_HELP: &[OptionHelp] = &[
    o("max_epochs", "Maximum number of epochs (the one option --resume may change)"),
    o("lr", "AdamW learning rate"),
    o("batch_size", "Cells per minibatch"),
    o("weight_decay", "AdamW weight decay (decoupled; every parameter, biases included)"),
    o("eps", "AdamW epsilon (> 0)"),
    o("train_size", "Fraction of cells used for training, in (0, 1]; the rest validates"),
    o("early_stopping", "Stop when the validation reconstruction loss stops improving"),
    o("early_stopping_patience", "Epochs without improvement before early stopping (0 acts as 1, as in Lightning)"),
    o("early_stopping_warmup_epochs", "First validation checks ignored by early stopping; none = n_epochs_kl_warmup"),
    o("n_epochs_kl_warmup", "Epochs of KL warm-up (weight 0 → max_kl_weight, then the cross gate opens); none = no warm-up"),
    o("max_kl_weight", "KL weight reached at the end of the warm-up"),
    o("adversarial_mixing", "Adversarial batch classifier on the joint latent (only with more than one batch)"),
    e(
        "lr_scheduler_type",
        "Learning-rate schedule: plateau (only with reduce_lr_on_plateau) or step (StepLR)",
        &["plateau", "step"],
    ),
    o("reduce_lr_on_plateau", "Turn the plateau schedule on: lr × lr_factor after lr_patience epochs with no better validation ELBO"),
    o("lr_patience", "Plateau schedule: epochs without a better validation ELBO before lr is reduced"),
    o("lr_factor", "Factor applied to lr by either schedule (> 0; below 1 for the plateau schedule)"),
    o("step_size", "Step schedule: lr × lr_factor every step_size epochs"),
    o("gradient_clip", "Clip the gradients' total L2 norm to this value (> 0); none = no clipping"),
    o("restore_best", "When early stopping ends training, restore the best validation epoch's weights"),
    o("seed", "Seed of the split, initialisation, dropout, sampling and warm-up routing"),
];

/// The help of option `key` (model or training).
pub fn lookup(key: &str) -> Option<&'static OptionHelp> {
    MODEL_HELP.iter().chain(TRAIN_HELP).find(|h| h.key == key)
}

impl OptionHelp {
    /// "<about> [default: <shown>]" and, for an enum, " [possible values: a, b, c]".
    pub fn render(&self, shown: &str) -> String {
        let mut s = format!("{} [default: {shown}]", self.about);
        if !self.values.is_empty() {
            s.push_str(&format!(" [possible values: {}]", self.values.join(", ")));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::option_flags::parse_value;
    use crate::model::config::{
        ConcentrationInit, CrossDecoding, Dispersion, DmConcentration, ExpressionArch, ExpressionInput, GeneLikelihood, LatentDistribution,
        MixingVariance, ModalityPenalty, ModalityWeights, ModelConfig, NormPlacement, PoolMode, SplicingDecoderArch,
        SplicingEncoderArch, SplicingLoss, WarmupRouting,
    };
    use crate::train::config::SchedulerKind;
    use crate::train::TrainConfig;
    use serde_json::Value;
    use std::collections::BTreeSet;

    fn default_object<T: serde::Serialize>(t: &T) -> serde_json::Map<String, Value> {
        match serde_json::to_value(t).unwrap() {
            Value::Object(m) => m,
            _ => panic!("config is not an object"),
        }
    }

    /// The serde spelling of every variant of an option enum.
    fn variants<E: clap::ValueEnum + serde::Serialize>() -> BTreeSet<String> {
        E::value_variants().iter().map(|v| serde_json::to_value(v).unwrap().as_str().unwrap().to_string()).collect()
    }

    /// The variants of the enum behind option `key`; None for a non-enum option.
    fn enum_variants(key: &str) -> Option<BTreeSet<String>> {
        Some(match key {
            "gene_likelihood" => variants::<GeneLikelihood>(),
            "dispersion" => variants::<Dispersion>(),
            "splicing_encoder_architecture" => variants::<SplicingEncoderArch>(),
            "splicing_decoder_architecture" => variants::<SplicingDecoderArch>(),
            "expression_architecture" => variants::<ExpressionArch>(),
            "pool_mode" => variants::<PoolMode>(),
            "use_batch_norm" | "use_layer_norm" => variants::<NormPlacement>(),
            "latent_distribution" => variants::<LatentDistribution>(),
            "splicing_loss_type" => variants::<SplicingLoss>(),
            "dm_concentration" => variants::<DmConcentration>(),
            "modality_weights" => variants::<ModalityWeights>(),
            "modality_penalty" => variants::<ModalityPenalty>(),
            "warmup_routing" => variants::<WarmupRouting>(),
            "cross_decoding" => variants::<CrossDecoding>(),
            "mixing_variance" => variants::<MixingVariance>(),
            "concentration_init" => variants::<ConcentrationInit>(),
            "expression_input" => variants::<ExpressionInput>(),
            "lr_scheduler_type" => variants::<SchedulerKind>(),
            _ => return None,
        })
    }

    fn check_table<T>(name: &str, table: &[OptionHelp], default: &T)
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        let obj = default_object(default);
        let keys: BTreeSet<&str> = table.iter().map(|h| h.key).collect();
        assert_eq!(keys.len(), table.len(), "{name}: an option has two help lines");
        for k in obj.keys() {
            assert!(keys.contains(k.as_str()), "{name}: option `{k}` has no help line");
        }
        for h in table {
            let default = obj.get(h.key).unwrap_or_else(|| panic!("{name}: help line for unknown option `{}`", h.key));
            assert!(!h.about.is_empty() && !h.about.contains('\n'), "{name}: `{}` needs a one-line description", h.key);
            assert!(h.about.chars().count() <= 100, "{name}: `{}`: keep the description under 100 characters", h.key);
            match enum_variants(h.key) {
                Some(all) => {
                    // The help lists exactly the values serde accepts, and the default is among them.
                    let listed: BTreeSet<String> = h.values.iter().map(|v| v.to_string()).collect();
                    assert_eq!(listed.len(), h.values.len(), "{name}: `{}` lists a value twice", h.key);
                    assert_eq!(listed, all, "{name}: `{}` must list every accepted value", h.key);
                    assert!(listed.contains(default.as_str().unwrap()), "{name}: `{}`: default not listed", h.key);
                }
                None => {
                    assert!(!default.is_string(), "{name}: string option `{}`: add its enum to enum_variants", h.key);
                    assert!(h.values.is_empty(), "{name}: `{}` is not an enum but lists values", h.key);
                }
            }
            // Each listed value, given as the flag (`--key value`), yields a config that deserialises.
            for v in h.values {
                let mut one = obj.clone();
                let parsed = parse_value(v, default);
                assert_eq!(parsed, Value::from(*v), "{name}: `--{} {v}` is not passed through as a string", h.key);
                one.insert(h.key.to_string(), parsed);
                let back = serde_json::from_value::<T>(Value::Object(one.clone()))
                    .unwrap_or_else(|e| panic!("{name}: `{} = {v}` is listed but rejected: {e}", h.key));
                assert_eq!(default_object(&back)[h.key], Value::from(*v), "{name}: `{} = {v}` does not round-trip", h.key);
            }
        }
    }

    #[test]
    fn option_help_covers_every_model_option() {
        check_table("model", MODEL_HELP, &ModelConfig::default());
    }

    #[test]
    fn option_help_covers_every_training_option() {
        check_table("train", TRAIN_HELP, &TrainConfig::default());
    }

    #[test]
    fn option_help_keys_are_unique_across_sections() {
        for h in MODEL_HELP {
            assert!(TRAIN_HELP.iter().all(|t| t.key != h.key), "`{}` is in both tables", h.key);
        }
    }

    #[test]
    fn option_help_renders_default_and_values() {
        let h = lookup("modality_penalty").unwrap();
        let s = h.render("Jeffreys");
        assert!(s.contains("[default: Jeffreys]") && s.ends_with("[possible values: Jeffreys, MMD, None, JeffreysExact, MMDRbf]"), "{s}");
        assert_eq!(lookup("lr").unwrap().render("0.0001"), "AdamW learning rate [default: 0.0001]");
        assert!(lookup("no_such_option").is_none());
    }
}
