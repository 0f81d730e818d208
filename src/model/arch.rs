//! The module tree of SPLICEVAE (model.md §2) as indices into the parameter name table, built from a
//! `ModelConfig` and `Dims`. Building the tree also builds the name table, in the original state_dict
//! order.

use super::config::*;
use super::params::{Init, LayoutBuilder, ParamKind, ParamLayout};
use super::real::softplus_inv;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    None,
    Relu,
    /// LeakyReLU with slope 0.01.
    LeakyRelu,
}

/// nn.Linear: weight [n_out, n_in] (PyTorch layout), optional bias.
#[derive(Clone, Debug)]
pub struct LinearP {
    pub w: usize,
    pub b: Option<usize>,
    pub n_in: usize,
    pub n_out: usize,
}

/// BatchNorm1d(n, momentum 0.01, eps 1e-3).
#[derive(Clone, Debug)]
pub struct BnP {
    pub w: usize,
    pub b: usize,
    pub running_mean: usize,
    pub running_var: usize,
    pub num_batches_tracked: usize,
    pub n: usize,
}

/// One block of scvi's FCLayers: Linear → BN? → LN(no affine)? → act → dropout.
#[derive(Clone, Debug)]
pub struct FcBlock {
    pub lin: LinearP,
    pub bn: Option<BnP>,
    pub ln: bool,
    pub act: Act,
    pub dropout: f64,
    /// Covariates are concatenated to this block's input.
    pub inject: bool,
    /// Width of the block's main input (without covariates).
    pub n_main: usize,
}

/// scvi FCLayers. Covariate vector c = [cont (n_cont), one-hot of each kept categorical].
#[derive(Clone, Debug)]
pub struct FcLayers {
    pub blocks: Vec<FcBlock>,
    pub n_cont: usize,
    /// Levels of each categorical input; 0 = that input is dropped (≤ 1 level, §14.2).
    pub cat_sizes: Vec<usize>,
    /// Distinct id for dropout streams.
    pub id: u64,
}

impl FcLayers {
    pub fn cov_width(&self) -> usize {
        self.n_cont + self.cat_sizes.iter().sum::<usize>()
    }
    pub fn n_out(&self) -> usize {
        self.blocks.last().unwrap().lin.n_out
    }
    pub fn n_in(&self) -> usize {
        self.blocks[0].n_main
    }
}

/// scvi Encoder: FCLayers → mean head, log-variance head (var = exp, var_eps 0).
#[derive(Clone, Debug)]
pub struct EncoderP {
    pub fc: FcLayers,
    pub mean: LinearP,
    pub var: LinearP,
}

/// LibrarySizeEncoder: FCLayers → Linear(H→1) → LeakyReLU.
#[derive(Clone, Debug)]
pub struct LibEncoderP {
    pub fc: FcLayers,
    pub out: LinearP,
}

/// PartialEncoderEDDIFaster (§2.5).
#[derive(Clone, Debug)]
pub struct PartialEncP {
    /// feature_embedding [J, D]
    pub emb: usize,
    pub h0: LinearP,
    pub ln1_w: usize,
    pub ln1_b: usize,
    pub h4: LinearP,
    pub ln5_w: usize,
    pub ln5_b: usize,
    pub mlp: FcLayers,
    pub code_dim: usize,
    pub h_hidden: usize,
    pub dropout: f64,
    pub pool_mean: bool,
    /// `partial_center_psi`: buffer [J] with the population PSI subtracted from every observed ψ; the
    /// pooled codes are h(t) − h(0).
    pub center: Option<usize>,
    /// `pool_mode = fixed`: scalar buffer, the divisor of the pooled sum.
    pub divisor: Option<usize>,
    /// max_nobs (usize::MAX for −1): bounds the pairs processed at once; never changes results.
    pub chunk: usize,
}

#[derive(Clone, Debug)]
pub enum SplEncP {
    Vanilla(EncoderP),
    Partial(PartialEncP),
}

#[derive(Clone, Debug)]
pub enum ExprDecP {
    /// DecoderSCVI: hidden FCLayers, scale head (softplus with size factors, else softmax),
    /// dispersion head (used only for gene-cell), zero-inflation head.
    Vanilla { fc: FcLayers, scale: LinearP, r: LinearP, dropout: LinearP, softplus: bool },
    /// LinearDecoderSCVI: one-block FCLayers (no bias, no activation) for scale logits and for
    /// zero-inflation logits; a third for gene-cell dispersion (§14.2).
    Linear { factor: FcLayers, dropout: FcLayers, r: Option<FcLayers> },
}

#[derive(Clone, Debug)]
pub enum SplDecP {
    /// DecoderSplice: hidden FCLayers → Linear(H→J) → sigmoid.
    Vanilla { fc: FcLayers, out: LinearP },
    /// LinearDecoder: sigmoid(W [r; cont; one-hots] + b).
    Linear { lin: LinearP },
}

/// The whole module.
#[derive(Clone, Debug)]
pub struct Arch {
    pub px_r: Option<usize>,
    pub log_phi: usize,
    pub dim_weights: Option<usize>,
    pub mod_weights: usize,
    pub cross_gate: usize,
    pub z_enc_expr: EncoderP,
    pub l_enc_expr: LibEncoderP,
    pub z_dec_expr: ExprDecP,
    pub z_enc_spl: SplEncP,
    pub z_dec_spl: SplDecP,
    // resolved sizes
    pub n_hidden: usize,
    pub d: usize,
    pub l: usize,
    /// Categorical inputs of decoders: [n_batch] + n_cats_per_cov, with ≤1-level inputs dropped (0).
    pub dec_cats: Vec<usize>,
    /// Categorical inputs of encoders (empty unless encode_covariates).
    pub enc_cats: Vec<usize>,
}

struct B<'a> {
    lb: LayoutBuilder,
    cfg: &'a ModelConfig,
    next_id: u64,
}

/// Build one FCLayers (and its entries in `lb`) outside the main model (the adversarial classifier).
#[allow(clippy::too_many_arguments)]
pub fn build_fclayers(
    lb: LayoutBuilder,
    prefix: &str,
    n_in: usize,
    n_out: usize,
    n_hidden: usize,
    n_layers: usize,
    bn: bool,
    act: Act,
    dropout: f64,
    id: u64,
) -> (FcLayers, LayoutBuilder) {
    let cfg = ModelConfig::default();
    let mut b = B { lb, cfg: &cfg, next_id: id };
    let fc = b.fclayers(
        prefix,
        FcSpec { n_in, n_out, n_hidden, n_layers, n_cont: 0, cats: &[], inject: false, bn, ln: false, act, dropout, bias: true },
    );
    (fc, b.lb)
}

/// nn.Linear entries (uniform ±1/√fan_in) outside the main model.
pub fn build_linear(lb: LayoutBuilder, prefix: &str, n_in: usize, n_out: usize) -> (LinearP, LayoutBuilder) {
    let cfg = ModelConfig::default();
    let mut b = B { lb, cfg: &cfg, next_id: 0 };
    let l = b.linear(prefix, n_in, n_out, true);
    (l, b.lb)
}

fn eff_cats(sizes: &[usize]) -> Vec<usize> {
    sizes.iter().map(|&n| if n > 1 { n } else { 0 }).collect()
}

/// Parameters of one FCLayers.
struct FcSpec<'a> {
    n_in: usize,
    n_out: usize,
    n_hidden: usize,
    n_layers: usize,
    n_cont: usize,
    cats: &'a [usize],
    inject: bool,
    bn: bool,
    ln: bool,
    act: Act,
    dropout: f64,
    bias: bool,
}

impl B<'_> {
    fn linear(&mut self, prefix: &str, n_in: usize, n_out: usize, bias: bool) -> LinearP {
        let bound = 1.0 / (n_in.max(1) as f64).sqrt();
        let w = self.lb.add(format!("{prefix}.weight"), &[n_out, n_in], ParamKind::Param, Init::Uniform(bound));
        let b = bias.then(|| self.lb.add(format!("{prefix}.bias"), &[n_out], ParamKind::Param, Init::Uniform(bound)));
        LinearP { w, b, n_in, n_out }
    }

    fn fclayers(&mut self, prefix: &str, s: FcSpec) -> FcLayers {
        let cat_sizes = eff_cats(s.cats);
        let cov = s.n_cont + cat_sizes.iter().sum::<usize>();
        let mut dims = vec![s.n_in];
        dims.extend(std::iter::repeat(s.n_hidden).take(s.n_layers - 1));
        dims.push(s.n_out);
        let mut blocks = Vec::new();
        for i in 0..s.n_layers {
            let inject = i == 0 || s.inject;
            let n_main = dims[i];
            let n_in = n_main + if inject { cov } else { 0 };
            let lin = self.linear(&format!("{prefix}.fc_layers.Layer {i}.0"), n_in, dims[i + 1], s.bias);
            let bn = s.bn.then(|| {
                let p = format!("{prefix}.fc_layers.Layer {i}.1");
                let n = dims[i + 1];
                BnP {
                    w: self.lb.add(format!("{p}.weight"), &[n], ParamKind::Param, Init::Const(1.0)),
                    b: self.lb.add(format!("{p}.bias"), &[n], ParamKind::Param, Init::Const(0.0)),
                    running_mean: self.lb.add(format!("{p}.running_mean"), &[n], ParamKind::Buffer, Init::Const(0.0)),
                    running_var: self.lb.add(format!("{p}.running_var"), &[n], ParamKind::Buffer, Init::Const(1.0)),
                    num_batches_tracked: self.lb.add(
                        format!("{p}.num_batches_tracked"),
                        &[],
                        ParamKind::Counter,
                        Init::Const(0.0),
                    ),
                    n,
                }
            });
            blocks.push(FcBlock { lin, bn, ln: s.ln, act: s.act, dropout: s.dropout, inject, n_main });
        }
        self.next_id += 1;
        FcLayers { blocks, n_cont: s.n_cont, cat_sizes, id: self.next_id }
    }

    fn encoder(&mut self, prefix: &str, n_in: usize, cats: &[usize], inject: bool, h: usize, d: usize) -> EncoderP {
        let cfg = self.cfg;
        let fc = self.fclayers(
            &format!("{prefix}.encoder"),
            FcSpec {
                n_in,
                n_out: h,
                n_hidden: h,
                n_layers: cfg.n_layers_encoder,
                n_cont: 0,
                cats,
                inject,
                bn: cfg.use_batch_norm.encoder(),
                ln: cfg.use_layer_norm.encoder(),
                act: Act::LeakyRelu,
                dropout: cfg.dropout_rate,
                bias: true,
            },
        );
        let mean = self.linear(&format!("{prefix}.mean_encoder"), h, d, true);
        let var = self.linear(&format!("{prefix}.var_encoder"), h, d, true);
        EncoderP { fc, mean, var }
    }
}

impl Arch {
    /// Build the module tree and its name table (state-dict order).
    pub fn build(cfg: &ModelConfig, dims: &Dims) -> (Arch, ParamLayout) {
        let h = cfg.resolved_n_hidden(dims);
        let d = cfg.resolved_n_latent(dims);
        let l = cfg.joint_latent(dims);
        let (g, j) = (dims.n_genes, dims.n_junctions);
        let mut all_cats = vec![dims.n_batch];
        all_cats.extend(dims.n_cats_per_cov.iter().copied());
        let dec_cats = eff_cats(&all_cats);
        let enc_cats = if cfg.encode_covariates { dec_cats.clone() } else { Vec::new() };
        let enc_cont = if cfg.encode_covariates { dims.n_cont } else { 0 };
        let mut b = B { lb: LayoutBuilder::default(), cfg, next_id: 0 };

        // Module-level parameters, then module-level buffers (PyTorch state_dict order).
        let px_r = match cfg.dispersion {
            Dispersion::Gene => Some(vec![g]),
            Dispersion::GeneBatch => Some(vec![g, dims.n_batch]),
            Dispersion::GeneLabel => Some(vec![g, dims.n_labels]),
            Dispersion::GeneCell => None,
        }
        .map(|shape| b.lb.add("px_r", &shape, ParamKind::Param, Init::Normal { mean: 0.0, std: 1.0 }));
        let log100 = 100f64.ln();
        // §12.9: the original draws log_phi around log 100, so φ = softplus(log_phi) ≈ 4.6; `phi_100`
        // maps the same draws through softplus⁻¹ ∘ exp, so φ ≈ 100.
        let (per_entry, scalar) = match cfg.concentration_init {
            ConcentrationInit::Log100 => (Init::Normal { mean: log100, std: 0.5 }, Init::Const(4.6)),
            ConcentrationInit::Phi100 => {
                (Init::SoftplusInvLogNormal { mean: log100, std: 0.5 }, Init::Const(softplus_inv(100.0)))
            }
        };
        let log_phi = match cfg.splicing_loss_type {
            SplicingLoss::DirichletMultinomial => match cfg.dm_concentration {
                DmConcentration::Atse => b.lb.add("log_phi_j", &[dims.n_atse], ParamKind::Param, per_entry),
                DmConcentration::Scalar => b.lb.add("log_phi_j", &[], ParamKind::Param, scalar),
            },
            SplicingLoss::BetaBinomial => b.lb.add("log_phi_j", &[j], ParamKind::Param, per_entry),
            SplicingLoss::Binomial | SplicingLoss::Bce => b.lb.add("log_phi_j", &[], ParamKind::Frozen, Init::Const(0.0)),
        };
        let dim_weights = (cfg.modality_weights == ModalityWeights::PerDimensionWeightedAverage)
            .then(|| b.lb.add("dim_weights_raw", &[d], ParamKind::Param, Init::Const(0.0)));
        let mod_weights_param = match cfg.modality_weights {
            ModalityWeights::Universal => Some(vec![2]),
            ModalityWeights::Cell | ModalityWeights::Concatenate => Some(vec![dims.n_obs, 2]),
            _ => None,
        };
        let mod_weights = match mod_weights_param {
            Some(shape) => b.lb.add("mod_weights", &shape, ParamKind::Param, Init::Const(1.0)),
            None => b.lb.add("mod_weights", &[2], ParamKind::Buffer, Init::Const(1.0)),
        };
        let cross_gate = b.lb.add("cross_gate", &[], ParamKind::Buffer, Init::Const(0.0));

        // Expression encoder and library encoder see [x; cont if encode_covariates].
        let z_enc_expr = b.encoder("z_encoder_expression", g + enc_cont, &enc_cats, cfg.deeply_inject_covariates, h, d);
        let lfc = b.fclayers(
            "l_encoder_expression.px_decoder",
            FcSpec {
                n_in: g + enc_cont,
                n_out: h,
                n_hidden: h,
                n_layers: cfg.n_layers_encoder,
                n_cont: 0,
                cats: &enc_cats,
                inject: cfg.deeply_inject_covariates,
                bn: cfg.use_batch_norm.encoder(),
                ln: cfg.use_layer_norm.encoder(),
                act: Act::LeakyRelu,
                dropout: 0.0,
                bias: true,
            },
        );
        let lout = b.linear("l_encoder_expression.output.0", h, 1, true);
        let l_enc_expr = LibEncoderP { fc: lfc, out: lout };

        // Expression decoder: input [latent; cont] + one-hots.
        let dec_in = l + dims.n_cont;
        let z_dec_expr = match cfg.expression_architecture {
            ExpressionArch::Vanilla => {
                let fc = b.fclayers(
                    "z_decoder_expression.px_decoder",
                    FcSpec {
                        n_in: dec_in,
                        n_out: h,
                        n_hidden: h,
                        n_layers: cfg.n_layers_decoder,
                        n_cont: 0,
                        cats: &dec_cats,
                        inject: cfg.deeply_inject_covariates,
                        bn: cfg.use_batch_norm.decoder(),
                        ln: cfg.use_layer_norm.decoder(),
                        act: Act::Relu,
                        dropout: 0.0,
                        bias: true,
                    },
                );
                let scale = b.linear("z_decoder_expression.px_scale_decoder.0", h, g, true);
                let r = b.linear("z_decoder_expression.px_r_decoder", h, g, true);
                let dropout = b.linear("z_decoder_expression.px_dropout_decoder", h, g, true);
                // §12.11: softplus with a size factor unless `expression_scale_softmax`.
                let softplus = cfg.use_size_factor_key && !cfg.expression_scale_softmax;
                ExprDecP::Vanilla { fc, scale, r, dropout, softplus }
            }
            ExpressionArch::Linear => {
                let spec = |_: ()| FcSpec {
                    n_in: dec_in,
                    n_out: g,
                    n_hidden: h,
                    n_layers: 1,
                    n_cont: 0,
                    cats: &dec_cats,
                    inject: true,
                    bn: cfg.use_batch_norm.decoder(),
                    // §12.12: the LayerNorm of the gene logits, unless `linear_expression_layer_norm` is off
                    ln: cfg.use_layer_norm.decoder() && cfg.linear_expression_layer_norm,
                    act: Act::None,
                    dropout: 0.0,
                    bias: false,
                };
                let factor = b.fclayers("z_decoder_expression.factor_regressor", spec(()));
                let dropout = b.fclayers("z_decoder_expression.px_dropout_decoder", spec(()));
                let r = (cfg.dispersion == Dispersion::GeneCell)
                    .then(|| b.fclayers("z_decoder_expression.px_r_decoder", spec(())));
                ExprDecP::Linear { factor, dropout, r }
            }
        };

        let z_enc_spl = match cfg.splicing_encoder_architecture {
            SplicingEncoderArch::Vanilla => {
                SplEncP::Vanilla(b.encoder("z_encoder_splicing", j + enc_cont, &enc_cats, true, h, d))
            }
            SplicingEncoderArch::Partial => {
                let (dd, hh) = (cfg.code_dim, cfg.h_hidden_dim);
                let emb = b.lb.add(
                    "z_encoder_splicing.feature_embedding",
                    &[j, dd],
                    ParamKind::Param,
                    Init::Normal { mean: 0.0, std: 1.0 },
                );
                let h0 = b.linear("z_encoder_splicing.h_layer.0", 1 + dd, hh, true);
                let ln1_w = b.lb.add("z_encoder_splicing.h_layer.1.weight", &[hh], ParamKind::Param, Init::Const(1.0));
                let ln1_b = b.lb.add("z_encoder_splicing.h_layer.1.bias", &[hh], ParamKind::Param, Init::Const(0.0));
                let h4 = b.linear("z_encoder_splicing.h_layer.4", hh, dd, true);
                let ln5_w = b.lb.add("z_encoder_splicing.h_layer.5.weight", &[dd], ParamKind::Param, Init::Const(1.0));
                let ln5_b = b.lb.add("z_encoder_splicing.h_layer.5.bias", &[dd], ParamKind::Param, Init::Const(0.0));
                let mut mlp = b.fclayers(
                    "z_encoder_splicing.encoder_mlp",
                    FcSpec {
                        n_in: dd,
                        n_out: 2 * d,
                        n_hidden: cfg.encoder_hidden_dim,
                        n_layers: cfg.n_layers_encoder,
                        n_cont: dims.n_cont,
                        cats: &enc_cats,
                        inject: cfg.encode_covariates,
                        bn: false,
                        ln: true,
                        act: Act::Relu,
                        dropout: cfg.dropout_rate,
                        bias: true,
                    },
                );
                if cfg.partial_linear_output {
                    let last = mlp.blocks.last_mut().unwrap();
                    last.ln = false;
                    last.act = Act::None;
                    last.dropout = 0.0;
                }
                // Data statistics (robust options): buffers, present only when their option is on.
                let center = cfg.partial_center_psi.then(|| {
                    b.lb.add("z_encoder_splicing.psi_center", &[j], ParamKind::Buffer, Init::Const(0.0))
                });
                let divisor = (cfg.pool_mode == PoolMode::Fixed)
                    .then(|| b.lb.add("z_encoder_splicing.pool_divisor", &[], ParamKind::Buffer, Init::Const(1.0)));
                SplEncP::Partial(PartialEncP {
                    emb,
                    center,
                    divisor,
                    h0,
                    ln1_w,
                    ln1_b,
                    h4,
                    ln5_w,
                    ln5_b,
                    mlp,
                    code_dim: dd,
                    h_hidden: hh,
                    dropout: cfg.dropout_rate,
                    pool_mean: cfg.pool_mode == PoolMode::Mean,
                    chunk: if cfg.max_nobs > 0 { cfg.max_nobs as usize } else { usize::MAX },
                })
            }
        };

        let z_dec_spl = match cfg.splicing_decoder_architecture {
            SplicingDecoderArch::Vanilla => {
                let fc = b.fclayers(
                    "z_decoder_splicing.ps_hidden",
                    FcSpec {
                        n_in: dec_in,
                        n_out: h,
                        n_hidden: h,
                        n_layers: cfg.n_layers_decoder,
                        n_cont: 0,
                        cats: &dec_cats,
                        inject: true,
                        bn: cfg.use_batch_norm.decoder(),
                        ln: cfg.use_layer_norm.decoder(),
                        act: Act::Relu,
                        dropout: cfg.dropout_rate,
                        bias: true,
                    },
                );
                let out = b.linear("z_decoder_splicing.ps_output", h, j, true);
                SplDecP::Vanilla { fc, out }
            }
            SplicingDecoderArch::Linear => {
                let k = l + dims.n_cont + dec_cats.iter().sum::<usize>();
                SplDecP::Linear { lin: b.linear("z_decoder_splicing.linear", k, j, true) }
            }
        };

        let layout = b.lb.finish();
        (
            Arch {
                px_r,
                log_phi,
                dim_weights,
                mod_weights,
                cross_gate,
                z_enc_expr,
                l_enc_expr,
                z_dec_expr,
                z_enc_spl,
                z_dec_spl,
                n_hidden: h,
                d,
                l,
                dec_cats,
                enc_cats,
            },
            layout,
        )
    }
}
