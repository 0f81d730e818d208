//! Model options (model.md §7.1 defaults, §14 extensions) and data-derived dimensions.
//!
//! Option values are spelled as the original spells them ("gene-batch", "dirichlet_multinomial",
//! "Jeffreys", …) both in serde (JSON/TOML) and on the command line.

use serde::{Deserialize, Serialize};

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] #[value(name = $s)] $var),+
        }
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// Expression likelihood (§3.1).
    GeneLikelihood { Zinb = "zinb", Nb = "nb", Poisson = "poisson" }
);
string_enum!(
    /// Expression dispersion θ (§2.8; gene-label and gene-cell as §14.2 defines them).
    Dispersion { Gene = "gene", GeneBatch = "gene-batch", GeneLabel = "gene-label", GeneCell = "gene-cell" }
);
string_enum!(
    /// Splicing encoder (§2.4 vanilla, §2.5 partial).
    SplicingEncoderArch { Vanilla = "vanilla", Partial = "partial" }
);
string_enum!(
    /// Splicing decoder (§2.7 c, d).
    SplicingDecoderArch { Vanilla = "vanilla", Linear = "linear" }
);
string_enum!(
    /// Expression decoder (§2.7 a, b).
    ExpressionArch { Vanilla = "vanilla", Linear = "linear" }
);
string_enum!(
    /// Partial-encoder pooling (§2.5 step 5).
    /// `fixed` (robust option): divide the pooled sum by one data-derived constant, the median number of
    /// observed junctions per training cell (buffer `z_encoder_splicing.pool_divisor`), instead of by the
    /// cell's own count, so that a cell's code grows with the evidence it has.
    PoolMode { Mean = "mean", Sum = "sum", Fixed = "fixed" }
);
string_enum!(
    /// What the expression encoder (and the library encoder) sees (§2.2: raw counts). `log1p`: log(1 + x);
    /// `log1p_normalized`: log(1 + 10⁴ · x / Σ_g x), library-normalised. Robust options; the likelihood
    /// always uses the raw counts.
    ExpressionInput { Raw = "raw", Log1p = "log1p", Log1pNormalized = "log1p_normalized" }
);
string_enum!(
    /// Where BatchNorm / LayerNorm are used (§2.1).
    NormPlacement { None = "none", Encoder = "encoder", Decoder = "decoder", Both = "both" }
);
string_enum!(
    /// Latent distribution (§4.5).
    LatentDistribution { Normal = "normal", Ln = "ln" }
);
string_enum!(
    /// Splicing likelihood (§3.3–3.5; bce = §14.2 fallback).
    SplicingLoss {
        Binomial = "binomial",
        BetaBinomial = "beta_binomial",
        DirichletMultinomial = "dirichlet_multinomial",
        Bce = "bce",
    }
);
string_enum!(
    /// Dirichlet-multinomial concentration: one per ATSE or one scalar (§3.5).
    DmConcentration { Atse = "atse", Scalar = "scalar" }
);
string_enum!(
    /// Posterior mixing (§4).
    ModalityWeights {
        Equal = "equal",
        Cell = "cell",
        Universal = "universal",
        Concatenate = "concatenate",
        PerDimensionWeightedAverage = "per_dimension_weighted_average",
    }
);
string_enum!(
    /// Modality penalty (§5.2; JeffreysExact and MMDRbf are §14.3 options).
    ModalityPenalty {
        Jeffreys = "Jeffreys",
        Mmd = "MMD",
        None = "None",
        JeffreysExact = "JeffreysExact",
        MmdRbf = "MMDRbf",
    }
);
string_enum!(
    /// KL warm-up routing: the original's per-minibatch coin flip, or mixing from the first step (§14.3).
    WarmupRouting { Coin = "coin", Mix = "mix" }
);
string_enum!(
    /// With `concatenate` (§4.4), which decoders read the other modality's half of the latent once the
    /// cross gate opens: `both` as the original, only the `splicing` decoder (the expression decoder then
    /// has only the expression half, so that half must carry what the expression needs), or `none`.
    CrossDecoding { Both = "both", Splicing = "splicing", None = "none" }
);
string_enum!(
    /// Joint variance of the equal / universal / cell mixings (§4.2): the original's √w_e·v_e + √w_s·v_s
    /// (§12.4), or `independent`: w_e²·v_e + w_s²·v_s, the variance of w_e·z_e + w_s·z_s for independent
    /// modality posteriors (§14.3). The per-dimension mixing (§4.3) keeps its (w_e·σ_e + w_s·σ_s)².
    MixingVariance { SqrtWeights = "sqrt_weights", Independent = "independent" }
);
string_enum!(
    /// Initial Dirichlet-multinomial / beta-binomial concentration (§2.9): `log_100`, the original's
    /// log_phi ~ N(log 100, 0.5²) (4.6 for the scalar), so φ = softplus(log_phi) ≈ 4.6 (§12.9); or
    /// `phi_100` (§14.3): log_phi = softplus⁻¹(eˣ) with the same draws x, so φ = eˣ ≈ 100 (100 for the
    /// scalar), the concentration the original's comments intend.
    ConcentrationInit { Log100 = "log_100", Phi100 = "phi_100" }
);

impl NormPlacement {
    pub fn encoder(self) -> bool {
        matches!(self, NormPlacement::Encoder | NormPlacement::Both)
    }
    pub fn decoder(self) -> bool {
        matches!(self, NormPlacement::Decoder | NormPlacement::Both)
    }
}

/// Every model-level option. `Default` = the SPLICEVI constructor defaults (model.md §7.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    pub gene_likelihood: GeneLikelihood,
    #[serde(alias = "gene_dispersion")]
    pub dispersion: Dispersion,
    /// true: the library is log(size factor + 1e-6); false: the learned library encoder (§2.3).
    pub use_size_factor_key: bool,
    pub splicing_encoder_architecture: SplicingEncoderArch,
    pub splicing_decoder_architecture: SplicingDecoderArch,
    pub expression_architecture: ExpressionArch,
    /// Partial encoder: pairs per chunk (−1 = single pass). Only bounds memory; results are the same.
    pub max_nobs: i64,
    pub pool_mode: PoolMode,
    pub code_dim: usize,
    pub h_hidden_dim: usize,
    pub encoder_hidden_dim: usize,
    /// Initialise the partial encoder's feature embedding from a TruncatedSVD of the training PSI
    /// (done by the caller at model construction, see `SpliceVae::set_feature_embedding`).
    pub initialize_embeddings_from_pca: bool,
    /// None → min(128, ⌊√J⌋) (or ⌊√G⌋ without junctions).
    pub n_hidden: Option<usize>,
    /// None → ⌊√n_hidden⌋. Per-encoder latent size d.
    pub n_latent: Option<usize>,
    pub n_layers_encoder: usize,
    pub n_layers_decoder: usize,
    pub dropout_rate: f64,
    pub use_batch_norm: NormPlacement,
    pub use_layer_norm: NormPlacement,
    pub latent_distribution: LatentDistribution,
    pub deeply_inject_covariates: bool,
    pub encode_covariates: bool,
    #[serde(alias = "splicing_loss")]
    pub splicing_loss_type: SplicingLoss,
    /// Stored and ignored, as in the original (§3.4); `train` refuses it when given (`inert_options`).
    pub splicing_concentration: Option<f64>,
    pub dm_concentration: DmConcentration,
    pub lambda_prior: f64,
    pub splicing_loss_weight: f64,
    pub modality_weights: ModalityWeights,
    pub modality_penalty: ModalityPenalty,
    pub warmup_routing: WarmupRouting,
    pub mask_cells_without_splicing: bool,
    /// Robust option: which decoders read the other modality's half with `concatenate` (see
    /// [`CrossDecoding`]).
    pub cross_decoding: CrossDecoding,
    /// §12.4 correction: the variance of the softmax mixings (see [`MixingVariance`]).
    pub mixing_variance: MixingVariance,
    /// §12.9 correction: the concentration's initial value (see [`ConcentrationInit`]).
    pub concentration_init: ConcentrationInit,
    /// §12.11 correction: the vanilla expression decoder's scale is a softmax over genes even with a
    /// size factor (the original uses softplus then, an unnormalised ρ); without a size factor, and in
    /// the linear decoder, it always is.
    pub expression_scale_softmax: bool,
    /// §12.12: the linear expression decoder's gene logits (scale, zero-inflation and gene-cell
    /// dispersion maps) pass through the parameter-free LayerNorm where `use_layer_norm` covers the
    /// decoders, as in the original; false leaves them plain linear maps of the latent (LDVAE's loadings)
    /// without touching the vanilla decoders' LayerNorm.
    pub linear_expression_layer_norm: bool,
    /// §12.26 correction: the Dirichlet-multinomial's within-ATSE softmax without the original's 1e-8
    /// inside its log-sum-exp, so that each ATSE's probabilities sum to 1 (the original's sum to
    /// s / (s + 1e-8), s ∈ [1, junctions] the sum of e^(lg − max)). Every DM path reads it: the loss
    /// and its gradient, the decoded PSI, the analyses, CPU and CUDA. In f32 (training, the analyses)
    /// the two give the same bits: s ≥ 1 and 1e-8 is below half an f32 ulp of 1, so s + 1e-8 rounds
    /// to s, in the original's PyTorch as here. It acts in f64 (the model run in f64, as the gradient checks run it).
    pub dm_exact_softmax: bool,
    /// Robust option (docs/robust.md): the expression encoder's input transform (default `raw`, §2.2).
    pub expression_input: ExpressionInput,
    /// Robust option: the partial encoder sees centred PSI ψ − ψ̄_j (ψ̄_j = Σ_cells k / Σ_cells n over the
    /// training cells, buffer `z_encoder_splicing.psi_center`) and pools h(t) − h(0), so a junction at its
    /// population ratio contributes exactly zero (h(0) is evaluated without dropout).
    pub partial_center_psi: bool,
    /// Robust option: the last block of the partial encoder's post-pooling MLP is a plain Linear (no
    /// LayerNorm, ReLU or dropout), so the posterior mean can be negative and its variance small.
    pub partial_linear_output: bool,
    /// Robust option: initialise the splicing decoder's output bias from the training data's population
    /// PSI ψ̄_j: ln ψ̄_j for the Dirichlet-multinomial (its within-ATSE softmax then starts at ψ̄), logit ψ̄_j
    /// otherwise (clamped to [1e-3, 1 − 1e-3]; junctions never observed keep the default init).
    pub splicing_bias_from_data: bool,
    /// Robust option: Gaussian prior on the weights of the splicing decoder's output layer
    /// (`z_decoder_splicing.linear` / `.ps_output`, not the bias): the loss gains λ Σ W² / N, N the
    /// training data's cells, so over the data the log joint carries λ Σ W² (W ~ N(0, 1/(2λ))). A
    /// junction observed in few cells then keeps its weights near 0 (its PSI near the bias) unless the
    /// counts support a difference; 0 = off (the original has none).
    pub splicing_decoder_prior: f64,
    /// Robust option: a Gaussian prior on the splicing decoder's *decoded effect* instead of its raw
    /// weights. With S the output layer's input (B × K: the latent and covariates for the linear decoder,
    /// the hidden layer for the vanilla one) and C = (1/B) Σ_i (S_i − S̄)(S_i − S̄)ᵀ its minibatch
    /// covariance, the loss gains λ Σ_j W_j C W_jᵀ / N, N the training cells: λ / N times the sum over
    /// junctions of the variance across the minibatch's cells of the decoded logit S_i · W_j. C is a
    /// stop-gradient quantity (a data-adapted metric on W, as in Zellner's g-prior), so only W gets a
    /// gradient. Unlike `splicing_decoder_prior` the pull does not depend on how spread out the latent
    /// is: rescaling S by a and W by 1/a leaves the penalty unchanged. 0 = off (the original has none).
    pub splicing_decoder_effect_prior: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            gene_likelihood: GeneLikelihood::Zinb,
            dispersion: Dispersion::Gene,
            use_size_factor_key: true,
            splicing_encoder_architecture: SplicingEncoderArch::Partial,
            splicing_decoder_architecture: SplicingDecoderArch::Linear,
            expression_architecture: ExpressionArch::Linear,
            max_nobs: -1,
            pool_mode: PoolMode::Mean,
            code_dim: 16,
            h_hidden_dim: 64,
            encoder_hidden_dim: 128,
            initialize_embeddings_from_pca: false,
            n_hidden: None,
            n_latent: None,
            n_layers_encoder: 2,
            n_layers_decoder: 2,
            dropout_rate: 0.1,
            use_batch_norm: NormPlacement::None,
            use_layer_norm: NormPlacement::Both,
            latent_distribution: LatentDistribution::Normal,
            deeply_inject_covariates: false,
            encode_covariates: false,
            splicing_loss_type: SplicingLoss::DirichletMultinomial,
            splicing_concentration: None,
            dm_concentration: DmConcentration::Atse,
            lambda_prior: 1e-2,
            splicing_loss_weight: 1.0,
            modality_weights: ModalityWeights::Equal,
            modality_penalty: ModalityPenalty::Jeffreys,
            warmup_routing: WarmupRouting::Coin,
            mask_cells_without_splicing: false,
            cross_decoding: CrossDecoding::Both,
            mixing_variance: MixingVariance::SqrtWeights,
            concentration_init: ConcentrationInit::Log100,
            expression_scale_softmax: false,
            linear_expression_layer_norm: true,
            dm_exact_softmax: false,
            expression_input: ExpressionInput::Raw,
            partial_center_psi: false,
            partial_linear_output: false,
            splicing_bias_from_data: false,
            splicing_decoder_prior: 0.0,
            splicing_decoder_effect_prior: 0.0,
        }
    }
}

/// Sizes that come from the data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Dims {
    /// G
    pub n_genes: usize,
    /// J
    pub n_junctions: usize,
    /// A (number of ATSEs)
    pub n_atse: usize,
    pub n_batch: usize,
    pub n_labels: usize,
    /// Cells in the training data (rows of the per-cell weight table for `cell` weights).
    pub n_obs: usize,
    /// Levels of each extra categorical covariate.
    pub n_cats_per_cov: Vec<usize>,
    /// Number of continuous covariates.
    pub n_cont: usize,
}

impl ModelConfig {
    /// The authors' configuration (model.md §10, preset `paper`).
    pub fn paper() -> Self {
        ModelConfig {
            modality_weights: ModalityWeights::PerDimensionWeightedAverage,
            modality_penalty: ModalityPenalty::Jeffreys,
            splicing_encoder_architecture: SplicingEncoderArch::Partial,
            splicing_decoder_architecture: SplicingDecoderArch::Vanilla,
            expression_architecture: ExpressionArch::Vanilla,
            code_dim: 64,
            h_hidden_dim: 128,
            encoder_hidden_dim: 128,
            n_latent: Some(30),
            dropout_rate: 0.01,
            initialize_embeddings_from_pca: true,
            ..ModelConfig::default()
        }
    }

    /// The `robust` preset (docs/robust.md): the options of §14.3 and the robust options above, chosen by
    /// measurement on simulated data. Not faithful to the original by design.
    pub fn robust() -> Self {
        ModelConfig {
            // Concatenated per-modality latents: the joint latent keeps the splicing-only signal that
            // averaging with the expression posterior dilutes (and there is no modality penalty).
            modality_weights: ModalityWeights::Concatenate,
            // ⌊√H⌋ (6 at 2,000 junctions) is too small for 3 types × 2 subtypes of splicing patterns.
            n_latent: Some(10),
            // The partial encoder learns the subtype shifts once a junction at its usual ratio
            // contributes nothing, the pooled sum grows with the evidence, the posterior can be
            // negative and sharp, and the junction embedding starts from the PSI's principal axes.
            partial_center_psi: true,
            partial_linear_output: true,
            pool_mode: PoolMode::Fixed,
            initialize_embeddings_from_pca: true,
            splicing_bias_from_data: true,
            expression_input: ExpressionInput::Log1p,
            // The splicing reconstruction counted twice against the KL: sharper splicing posteriors
            // and decoded subtype effects less shrunk (DS recall 0.14 → 0.30 at the acceptance shape,
            // 1,500 × 300 × 1,200; docs/robust.md, "Splicing weight and learning rate").
            splicing_loss_weight: 2.0,
            // One DM concentration for every ATSE instead of one each: at 1,500 cells a per-ATSE
            // concentration is fitted from a few dozen observing cells. With the 10-epoch KL warm-up
            // of `TrainConfig::robust`, DS recall at the acceptance shape goes 0.51 → 0.67 (6 seeds,
            // whole data, robust's test without batch correction; docs/robust.md, "The
            // differential-splicing test of `robust`").
            dm_concentration: DmConcentration::Scalar,
            // Each decoder reads its own half only: with `both` the expression decoder took the cell
            // type from the splicing half and the expression half collapsed onto the prior (its 15-NN
            // cell type 0.47 at `small`, 1.00 with `none`; docs/robust.md, "The expression half").
            cross_decoding: CrossDecoding::None,
            // §14.3 fixes; they act when the mixing is switched back to a weighted average.
            modality_penalty: ModalityPenalty::JeffreysExact,
            warmup_routing: WarmupRouting::Mix,
            mask_cells_without_splicing: true,
            ..ModelConfig::default()
        }
    }

    /// The epsilon inside the Dirichlet-multinomial's within-ATSE log-sum-exp: the original's 1e-8
    /// (§12.26), or 0 with `dm_exact_softmax`.
    pub fn dm_lse_eps(&self) -> f64 {
        if self.dm_exact_softmax {
            0.0
        } else {
            crate::model::spl_lik::DM_LSE_EPS
        }
    }

    /// H (§2.1).
    pub fn resolved_n_hidden(&self, dims: &Dims) -> usize {
        match self.n_hidden {
            Some(h) => h,
            None if dims.n_junctions > 0 => 128.min(isqrt(dims.n_junctions)),
            None => isqrt(dims.n_genes),
        }
    }
    /// d, the per-encoder latent size.
    pub fn resolved_n_latent(&self, dims: &Dims) -> usize {
        match self.n_latent {
            Some(d) => d,
            None => isqrt(self.resolved_n_hidden(dims)),
        }
    }
    /// L, the joint latent size (2d for concatenate).
    pub fn joint_latent(&self, dims: &Dims) -> usize {
        let d = self.resolved_n_latent(dims);
        if self.modality_weights == ModalityWeights::Concatenate {
            2 * d
        } else {
            d
        }
    }

    /// The checks that need no data (ranges of the options themselves): run when the options are
    /// resolved, before any data is read, and again by [`Self::validate`].
    pub fn validate_options(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        if self.n_hidden == Some(0) {
            bail!("model: n_hidden must be ≥ 1");
        }
        if self.n_latent == Some(0) {
            bail!("model: n_latent must be ≥ 1");
        }
        if self.n_layers_encoder == 0 || self.n_layers_decoder == 0 {
            bail!("model: n_layers_encoder and n_layers_decoder must be ≥ 1");
        }
        if !(0.0..1.0).contains(&self.dropout_rate) {
            bail!("model: dropout_rate must be in [0, 1), got {}", self.dropout_rate);
        }
        if self.splicing_encoder_architecture == SplicingEncoderArch::Partial {
            if self.code_dim == 0 || self.h_hidden_dim == 0 || self.encoder_hidden_dim == 0 {
                bail!("model: the partial encoder needs code_dim, h_hidden_dim and encoder_hidden_dim ≥ 1");
            }
            if self.max_nobs == 0 || self.max_nobs < -1 {
                bail!("model: max_nobs must be −1 (single pass) or a positive chunk size, got {}", self.max_nobs);
            }
        }
        if !(self.splicing_decoder_prior.is_finite() && self.splicing_decoder_prior >= 0.0) {
            bail!("model: splicing_decoder_prior must be a finite number ≥ 0, got {}", self.splicing_decoder_prior);
        }
        if !(self.splicing_decoder_effect_prior.is_finite() && self.splicing_decoder_effect_prior >= 0.0) {
            bail!(
                "model: splicing_decoder_effect_prior must be a finite number ≥ 0, got {}",
                self.splicing_decoder_effect_prior
            );
        }
        if !(self.lambda_prior.is_finite() && self.lambda_prior >= 0.0) {
            bail!("model: lambda_prior must be a finite number ≥ 0, got {}", self.lambda_prior);
        }
        if !(self.splicing_loss_weight.is_finite() && self.splicing_loss_weight >= 0.0) {
            bail!("model: splicing_loss_weight must be a finite number ≥ 0, got {}", self.splicing_loss_weight);
        }
        Ok(())
    }

    /// Reject option combinations the model cannot run, with a message naming the option.
    pub fn validate(&self, dims: &Dims) -> anyhow::Result<()> {
        use anyhow::bail;
        if dims.n_genes == 0 {
            bail!("model: the expression modality has 0 genes; SpliceVI needs both expression and splicing");
        }
        if dims.n_junctions == 0 {
            bail!("model: the splicing modality has 0 junctions");
        }
        if dims.n_batch == 0 {
            bail!("model: n_batch must be ≥ 1 (use 1 when there is no batch key)");
        }
        if dims.n_labels == 0 {
            bail!("model: n_labels must be ≥ 1 (use 1 when there is no labels key)");
        }
        if self.splicing_loss_type == SplicingLoss::DirichletMultinomial && dims.n_atse == 0 {
            bail!("model: splicing_loss_type = dirichlet_multinomial needs the junction → ATSE map (0 ATSEs given)");
        }
        self.validate_options()?;
        if self.resolved_n_hidden(dims) == 0 {
            bail!("model: n_hidden resolved to 0 (too few junctions/genes); set n_hidden explicitly");
        }
        if self.resolved_n_latent(dims) == 0 {
            bail!("model: n_latent must be ≥ 1");
        }
        if self.modality_weights == ModalityWeights::Cell && dims.n_obs == 0 {
            bail!("model: modality_weights = cell needs n_obs (the number of training cells) ≥ 1");
        }
        if dims.n_cats_per_cov.iter().any(|&n| n == 0) {
            bail!("model: a categorical covariate has 0 levels");
        }
        Ok(())
    }
}

impl ModelConfig {
    /// The options set to ask for something this configuration has no part for: (field, why), in field
    /// order. Each is an option away from its default (for `modality_penalty`: away from both its
    /// default and `None`) whose part of the model another option leaves out (whatever the data: an
    /// option that rests only for some data, e.g. deep injection without covariates, is not listed),
    /// e.g. `code_dim` with the vanilla splicing encoder
    /// or `mixing_variance` with the concatenated latent. The model ignores them, as the original
    /// ignores its own (`modality_penalty` under concatenate); `splicevi train` refuses one given
    /// explicitly (a flag or --config), since it would silently do nothing (cmd::train::resolve).
    pub fn inert_options(&self) -> Vec<(&'static str, String)> {
        let d = ModelConfig::default();
        let mut out = Vec::new();
        let mut check = |field: &'static str, set: bool, acts: bool, why: &dyn Fn() -> String| {
            if set && !acts {
                out.push((field, why()));
            }
        };
        let partial = self.splicing_encoder_architecture == SplicingEncoderArch::Partial;
        let no_partial = || format!("only the partial splicing encoder has it (splicing_encoder_architecture = {})", self.splicing_encoder_architecture);
        let loss = self.splicing_loss_type;
        let concentration = matches!(loss, SplicingLoss::DirichletMultinomial | SplicingLoss::BetaBinomial);
        let mixing = self.modality_weights;
        let concat = mixing == ModalityWeights::Concatenate;
        let no_mixing = || "the concatenated latent (modality_weights = concatenate) mixes no modality posteriors".to_string();
        check("dispersion", self.dispersion != d.dispersion, self.gene_likelihood != GeneLikelihood::Poisson, &|| "the Poisson likelihood (gene_likelihood = poisson) has no dispersion".into());
        check("max_nobs", self.max_nobs != d.max_nobs, partial, &no_partial);
        check("pool_mode", self.pool_mode != d.pool_mode, partial, &no_partial);
        check("code_dim", self.code_dim != d.code_dim, partial, &no_partial);
        check("h_hidden_dim", self.h_hidden_dim != d.h_hidden_dim, partial, &no_partial);
        check("encoder_hidden_dim", self.encoder_hidden_dim != d.encoder_hidden_dim, partial, &no_partial);
        check("initialize_embeddings_from_pca", self.initialize_embeddings_from_pca, partial, &no_partial);
        let vanilla_expr = self.expression_architecture == ExpressionArch::Vanilla;
        let hidden_decoder = vanilla_expr || self.splicing_decoder_architecture == SplicingDecoderArch::Vanilla;
        check("n_layers_decoder", self.n_layers_decoder != d.n_layers_decoder, hidden_decoder, &|| {
            "only the vanilla decoders have hidden layers (expression_architecture and splicing_decoder_architecture are linear)".into()
        });
        // (the vanilla splicing decoder always injects its covariates into every layer, model.md §12.10)
        check(
            "deeply_inject_covariates",
            self.deeply_inject_covariates,
            (self.encode_covariates && self.n_layers_encoder > 1) || (vanilla_expr && self.n_layers_decoder > 1),
            &|| "no layer past the first would get the covariates: they reach the encoders only with encode_covariates and n_layers_encoder > 1, the decoders only in the vanilla expression decoder with n_layers_decoder > 1".into(),
        );
        // (kept for the original's argument list: its SPLICEVI stores it and reads it nowhere, §3.4)
        check("splicing_concentration", self.splicing_concentration.is_some(), false, &|| "the original stores it and reads it nowhere (model.md §3.4), and so does splicevi".into());
        check("dm_concentration", self.dm_concentration != d.dm_concentration, loss == SplicingLoss::DirichletMultinomial, &|| {
            format!("only the Dirichlet-multinomial has it (splicing_loss_type = {loss})")
        });
        let no_concentration = || format!("the splicing likelihood has no concentration (splicing_loss_type = {loss})");
        check("lambda_prior", self.lambda_prior != d.lambda_prior, concentration, &no_concentration);
        check("modality_penalty", self.modality_penalty != ModalityPenalty::None && self.modality_penalty != d.modality_penalty, !concat, &no_mixing);
        check("warmup_routing", self.warmup_routing != d.warmup_routing, !concat, &no_mixing);
        check("mask_cells_without_splicing", self.mask_cells_without_splicing, !concat, &no_mixing);
        check("cross_decoding", self.cross_decoding != d.cross_decoding, concat, &|| {
            format!("only the concatenated latent has halves for the decoders to share (modality_weights = {mixing})")
        });
        check("mixing_variance", self.mixing_variance != d.mixing_variance, !concat && mixing != ModalityWeights::PerDimensionWeightedAverage, &|| {
            format!("it is the variance of the equal, universal and cell mixings (modality_weights = {mixing})")
        });
        check("concentration_init", self.concentration_init != d.concentration_init, concentration, &no_concentration);
        check(
            "expression_scale_softmax",
            self.expression_scale_softmax,
            self.expression_architecture == ExpressionArch::Vanilla && self.use_size_factor_key,
            &|| "the expression scale is a softmax already: in the linear decoder, and in the vanilla one without a size factor".into(),
        );
        check(
            "linear_expression_layer_norm",
            self.linear_expression_layer_norm != d.linear_expression_layer_norm,
            self.expression_architecture == ExpressionArch::Linear && self.use_layer_norm.decoder(),
            &|| format!("it is the linear expression decoder's LayerNorm (expression_architecture = {}, use_layer_norm = {})", self.expression_architecture, self.use_layer_norm),
        );
        check("dm_exact_softmax", self.dm_exact_softmax, loss == SplicingLoss::DirichletMultinomial, &|| {
            format!("only the Dirichlet-multinomial has the within-ATSE softmax (splicing_loss_type = {loss})")
        });
        check("partial_center_psi", self.partial_center_psi, partial, &no_partial);
        check("partial_linear_output", self.partial_linear_output, partial, &no_partial);
        out
    }
}

fn isqrt(n: usize) -> usize {
    let mut r = (n as f64).sqrt() as usize;
    while r * r > n {
        r -= 1;
    }
    while (r + 1) * (r + 1) <= n {
        r += 1;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each option is listed exactly when another option leaves out its part, and only when it asks
    /// for something (away from its default): one case each way per option.
    #[test]
    fn inert_options_are_those_another_option_leaves_out() {
        let d = ModelConfig::default();
        let inert = |c: &ModelConfig| -> Vec<&'static str> { c.inert_options().into_iter().map(|(f, _)| f).collect() };
        for c in [ModelConfig::default(), ModelConfig::paper()] {
            assert!(inert(&c).is_empty(), "{:?}", inert(&c));
        }
        // robust keeps its §14.3 fixes for a weighted average: under its concatenated latent they rest
        assert_eq!(inert(&ModelConfig::robust()), ["modality_penalty", "warmup_routing", "mask_cells_without_splicing"]);
        // the penalty at its default or None asks for nothing under concatenate
        for p in [ModalityPenalty::Jeffreys, ModalityPenalty::None] {
            assert!(inert(&ModelConfig { modality_weights: ModalityWeights::Concatenate, modality_penalty: p, ..d.clone() }).is_empty());
        }
        let vanilla = ModelConfig { splicing_encoder_architecture: SplicingEncoderArch::Vanilla, ..d.clone() };
        let binomial = ModelConfig { splicing_loss_type: SplicingLoss::Binomial, ..d.clone() };
        let beta_binomial = ModelConfig { splicing_loss_type: SplicingLoss::BetaBinomial, ..d.clone() };
        let concat = ModelConfig { modality_weights: ModalityWeights::Concatenate, ..d.clone() };
        let perdim = ModelConfig { modality_weights: ModalityWeights::PerDimensionWeightedAverage, ..d.clone() };
        let vanilla_expr = ModelConfig { expression_architecture: ExpressionArch::Vanilla, ..d.clone() };
        let vanilla_spl_dec = ModelConfig { splicing_decoder_architecture: SplicingDecoderArch::Vanilla, ..d.clone() };
        let encode_cov = ModelConfig { encode_covariates: true, ..d.clone() };
        type Set = fn(&mut ModelConfig);
        // (field, the setting, a base where it acts, a base where it does not)
        let cases: Vec<(&str, Set, &ModelConfig, ModelConfig)> = vec![
            ("dispersion", |c| c.dispersion = Dispersion::GeneBatch, &d, ModelConfig { gene_likelihood: GeneLikelihood::Poisson, ..d.clone() }),
            ("max_nobs", |c| c.max_nobs = 64, &d, vanilla.clone()),
            ("pool_mode", |c| c.pool_mode = PoolMode::Sum, &d, vanilla.clone()),
            ("code_dim", |c| c.code_dim = 8, &d, vanilla.clone()),
            ("h_hidden_dim", |c| c.h_hidden_dim = 8, &d, vanilla.clone()),
            ("encoder_hidden_dim", |c| c.encoder_hidden_dim = 8, &d, vanilla.clone()),
            ("initialize_embeddings_from_pca", |c| c.initialize_embeddings_from_pca = true, &d, vanilla.clone()),
            ("dm_concentration", |c| c.dm_concentration = DmConcentration::Scalar, &d, beta_binomial.clone()),
            ("lambda_prior", |c| c.lambda_prior = 0.5, &beta_binomial, binomial.clone()),
            ("n_layers_decoder", |c| c.n_layers_decoder = 3, &vanilla_expr, d.clone()),
            ("n_layers_decoder", |c| c.n_layers_decoder = 3, &vanilla_spl_dec, d.clone()),
            ("deeply_inject_covariates", |c| c.deeply_inject_covariates = true, &vanilla_expr, d.clone()),
            ("deeply_inject_covariates", |c| c.deeply_inject_covariates = true, &encode_cov, ModelConfig { n_layers_encoder: 1, ..encode_cov.clone() }),
            ("deeply_inject_covariates", |c| c.deeply_inject_covariates = true, &vanilla_expr, ModelConfig { n_layers_decoder: 1, ..vanilla_expr.clone() }),
            ("modality_penalty", |c| c.modality_penalty = ModalityPenalty::Mmd, &d, concat.clone()),
            ("warmup_routing", |c| c.warmup_routing = WarmupRouting::Mix, &perdim, concat.clone()),
            ("mask_cells_without_splicing", |c| c.mask_cells_without_splicing = true, &perdim, concat.clone()),
            ("cross_decoding", |c| c.cross_decoding = CrossDecoding::Splicing, &concat, d.clone()),
            ("mixing_variance", |c| c.mixing_variance = MixingVariance::Independent, &d, perdim.clone()),
            ("mixing_variance", |c| c.mixing_variance = MixingVariance::Independent, &d, concat.clone()),
            ("concentration_init", |c| c.concentration_init = ConcentrationInit::Phi100, &beta_binomial, ModelConfig { splicing_loss_type: SplicingLoss::Bce, ..d.clone() }),
            ("expression_scale_softmax", |c| c.expression_scale_softmax = true, &vanilla_expr, d.clone()),
            ("expression_scale_softmax", |c| c.expression_scale_softmax = true, &vanilla_expr, ModelConfig { use_size_factor_key: false, ..vanilla_expr.clone() }),
            ("linear_expression_layer_norm", |c| c.linear_expression_layer_norm = false, &d, vanilla_expr.clone()),
            ("linear_expression_layer_norm", |c| c.linear_expression_layer_norm = false, &d, ModelConfig { use_layer_norm: NormPlacement::Encoder, ..d.clone() }),
            ("dm_exact_softmax", |c| c.dm_exact_softmax = true, &d, beta_binomial.clone()),
            ("partial_center_psi", |c| c.partial_center_psi = true, &d, vanilla.clone()),
            ("partial_linear_output", |c| c.partial_linear_output = true, &d, vanilla.clone()),
        ];
        // splicing_concentration never acts: set, it is listed whatever the rest
        assert_eq!(inert(&ModelConfig { splicing_concentration: Some(5.0), ..d.clone() }), ["splicing_concentration"]);
        for (field, set, acts, rests) in cases {
            let (mut a, mut r) = (acts.clone(), rests.clone());
            assert!(inert(&r).is_empty() && inert(&a).is_empty(), "{field}: the bases list nothing");
            set(&mut a);
            set(&mut r);
            assert!(inert(&a).is_empty(), "{field} acts here: {:?}", inert(&a));
            assert_eq!(inert(&r), [field]);
            let why = &r.inert_options()[0].1;
            assert!(!why.is_empty() && !why.contains("{"), "{field}: {why}");
        }
    }

    #[test]
    fn defaults_and_sizes() {
        let c = ModelConfig::default();
        let dims = Dims { n_genes: 10572, n_junctions: 89831, n_atse: 1, n_batch: 1, n_labels: 1, ..Dims::default() };
        assert_eq!(c.resolved_n_hidden(&dims), 128);
        assert_eq!(c.resolved_n_latent(&dims), 11);
        let small = Dims { n_junctions: 50, ..dims.clone() };
        assert_eq!(c.resolved_n_hidden(&small), 7);
        assert_eq!(c.resolved_n_latent(&small), 2);
        c.validate(&dims).unwrap();
    }

    #[test]
    fn serde_uses_original_spellings() {
        let c: ModelConfig = serde_json::from_str(
            r#"{"gene_dispersion":"gene-batch","modality_weights":"per_dimension_weighted_average",
                "modality_penalty":"MMD","splicing_loss_type":"beta_binomial","use_layer_norm":"encoder"}"#,
        )
        .unwrap();
        assert_eq!(c.dispersion, Dispersion::GeneBatch);
        assert_eq!(c.modality_penalty, ModalityPenalty::Mmd);
        assert_eq!(c.splicing_loss_type, SplicingLoss::BetaBinomial);
        let back = serde_json::to_string(&c).unwrap();
        assert!(back.contains("\"gene-batch\"") && back.contains("\"MMD\""));
        assert!(serde_json::from_str::<ModelConfig>(r#"{"dispersionn":"gene"}"#).is_err());
    }

    /// The §12 corrections (§14.3) are off in every preset: `default` and `paper` are pinned by the
    /// fixtures, `robust` was measured without them. A config.json written before they existed reads
    /// the original behaviour; the serde spellings are the flags'.
    #[test]
    fn quirk_corrections_are_off_unless_chosen() {
        for c in [ModelConfig::default(), ModelConfig::paper(), ModelConfig::robust(), serde_json::from_str("{}").unwrap()] {
            assert_eq!(c.mixing_variance, MixingVariance::SqrtWeights);
            assert_eq!(c.concentration_init, ConcentrationInit::Log100);
            assert!(!c.expression_scale_softmax && c.linear_expression_layer_norm);
            assert!(!c.dm_exact_softmax && c.dm_lse_eps() == 1e-8);
        }
        let c: ModelConfig = serde_json::from_str(
            r#"{"mixing_variance":"independent","concentration_init":"phi_100","expression_scale_softmax":true,
                "linear_expression_layer_norm":false,"dm_exact_softmax":true}"#,
        )
        .unwrap();
        assert_eq!((c.mixing_variance, c.concentration_init), (MixingVariance::Independent, ConcentrationInit::Phi100));
        assert!(c.expression_scale_softmax && !c.linear_expression_layer_norm);
        assert!(c.dm_exact_softmax && c.dm_lse_eps() == 0.0);
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!((back["mixing_variance"].as_str(), back["concentration_init"].as_str()), (Some("independent"), Some("phi_100")));
        assert!(serde_json::from_str::<ModelConfig>(r#"{"mixing_variance":"squared"}"#).is_err());
    }

    #[test]
    fn validate_rejects_bad_combinations() {
        let dims = Dims { n_genes: 10, n_junctions: 20, n_atse: 5, n_batch: 1, n_labels: 1, ..Dims::default() };
        // (a DM concentration with another loss rests: inert_options, refused when given explicitly)
        let rests = ModelConfig { dm_concentration: DmConcentration::Scalar, splicing_loss_type: SplicingLoss::Binomial, ..ModelConfig::default() };
        assert!(rests.validate(&dims).is_ok());
        let bad = ModelConfig { max_nobs: 0, ..ModelConfig::default() };
        assert!(bad.validate(&dims).unwrap_err().to_string().contains("max_nobs"));
        let bad = ModelConfig { modality_weights: ModalityWeights::Cell, ..ModelConfig::default() };
        assert!(bad.validate(&dims).unwrap_err().to_string().contains("n_obs"));
        let bad = ModelConfig { dropout_rate: 1.0, ..ModelConfig::default() };
        assert!(bad.validate(&dims).is_err());
        for v in [-1.0, f64::NAN, f64::INFINITY] {
            let bad = ModelConfig { splicing_decoder_effect_prior: v, ..ModelConfig::robust() };
            assert!(bad.validate(&dims).unwrap_err().to_string().contains("splicing_decoder_effect_prior"));
        }
        ModelConfig { splicing_decoder_effect_prior: 30.0, ..ModelConfig::robust() }.validate(&dims).unwrap();
        // Off in every preset unless chosen: `default` and `paper` stay faithful.
        assert_eq!(ModelConfig::default().splicing_decoder_effect_prior, 0.0);
        assert_eq!(ModelConfig::paper().splicing_decoder_effect_prior, 0.0);
    }
}
