//! Synthetic paired expression + splicing data with known ground truth, in the SpliceVI layout.
//!
//! Generative story (all seeded):
//! * `n_cell_types` cell types (3) that differ in expression: a fraction of genes carries a log-fold change
//!   of ±U(1, 2.5) in one type. Each type splits into two subtypes ("T0_a", "T0_b") that share the
//!   expression distribution EXACTLY and differ only in splicing: in a fraction (25%) of the multi-junction
//!   ATSEs, δ ~ U(0.3, 0.6) of PSI moves from one junction to another between the two subtypes
//!   (`planted_ds`). Cell types also differ in splicing among themselves (30% of ATSEs type-specific).
//! * `n_batches` batches (2): a per-gene multiplicative expression factor and a small depth shift.
//! * Expression: per-cell library size log-normal, negative-binomial counts with per-gene dispersion.
//! * Splicing: ATSEs of 1–7 junctions (mostly 2–3), each attached to a gene; per-cell splicing depth
//!   (log-normal, correlated with the library size); ATSE total n ~ NB(depth × ATSE abundance, θ = 2),
//!   observed iff n > 0. The depth scale is calibrated so that `target_unobserved` (≈ 82%) of the
//!   cell × junction entries are unobserved. Junction counts k | n ~ Dirichlet-multinomial(n, c_a · psi).
//!
//! Determinism: global parameters come from ChaCha stream 0 of the seed; cells are generated in fixed
//! blocks of [`BLOCK_CELLS`] cells, block b from stream b + 1. Blocks are generated in parallel (rayon)
//! but never depend on the thread count or on each other, so in-memory and streamed output are identical.

use std::path::Path;

use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Binomial, Distribution, Gamma, Poisson, StandardNormal};
use rayon::prelude::*;

use super::dataset::{Categorical, Covariates, Csr, Dataset, ObsColumn, ObsTable, Splicing};
use super::h5write::{self, CellBlock, Compression, FileMeta, UnsValue, VarTable};

/// Cells per generation block. Fixed: changing it changes the output for a given seed.
pub const BLOCK_CELLS: usize = 128;
/// Subtypes per cell type (the planted pair "a" / "b").
pub const SUBTYPES_PER_TYPE: usize = 2;
/// NB inverse dispersion of the ATSE totals.
const ATSE_THETA: f64 = 2.0;
/// ATSE size distribution for sizes 1..=7 (mostly 2–3, a few single-junction ATSEs as in real data).
const ATSE_SIZE_WEIGHTS: [f64; 7] = [0.08, 0.45, 0.22, 0.11, 0.07, 0.04, 0.03];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum SimSize {
    /// ≈ 200 cells × 100 genes × 300 junctions.
    Toy,
    /// 2,000 × 2,000 × 5,000.
    Small,
    /// 20,000 × 5,000 × 20,000.
    Medium,
    /// 100,000 × 10,000 × 90,000 (the authors' data scale; streamed to disk).
    Paper,
}

impl SimSize {
    pub fn name(self) -> &'static str {
        match self {
            SimSize::Toy => "toy",
            SimSize::Small => "small",
            SimSize::Medium => "medium",
            SimSize::Paper => "paper",
        }
    }
    /// (cells, genes, junctions).
    pub fn dims(self) -> (usize, usize, usize) {
        match self {
            SimSize::Toy => (200, 100, 300),
            SimSize::Small => (2_000, 2_000, 5_000),
            SimSize::Medium => (20_000, 5_000, 20_000),
            SimSize::Paper => (100_000, 10_000, 90_000),
        }
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SimConfig {
    pub n_cells: usize,
    pub n_genes: usize,
    pub n_junctions: usize,
    pub n_cell_types: usize,
    pub n_batches: usize,
    pub seed: u64,
    /// Fraction of genes with a cell-type log-fold change.
    pub de_gene_fraction: f64,
    /// |log-fold change| range of those genes (natural log).
    pub de_lfc_range: (f64, f64),
    /// Fraction of multi-junction ATSEs whose PSI differs between cell types.
    pub type_specific_splicing_fraction: f64,
    /// Fraction of multi-junction ATSEs with a planted PSI shift between the two subtypes of a type.
    pub ds_atse_fraction: f64,
    /// Range of the planted PSI shift δ.
    pub ds_shift_range: (f64, f64),
    /// Mean expression counts per gene per cell (library size scale = this × n_genes).
    pub mean_counts_per_gene: f64,
    pub library_log_sd: f64,
    /// SD of the per-gene log batch factor.
    pub batch_gene_log_sd: f64,
    /// Log depth shift per batch index (expression and splicing).
    pub batch_depth_log_shift: f64,
    /// Cell-specific splicing depth noise (log SD) on top of the library-size correlation.
    pub splicing_depth_log_sd: f64,
    /// Target fraction of unobserved cell × junction entries.
    pub target_unobserved: f64,
}

impl SimConfig {
    pub fn preset(size: SimSize, seed: u64) -> Self {
        let (n_cells, n_genes, n_junctions) = size.dims();
        SimConfig {
            n_cells,
            n_genes,
            n_junctions,
            n_cell_types: 3,
            n_batches: 2,
            seed,
            de_gene_fraction: 0.15,
            de_lfc_range: (1.0, 2.5),
            type_specific_splicing_fraction: 0.3,
            ds_atse_fraction: 0.25,
            ds_shift_range: (0.3, 0.6),
            mean_counts_per_gene: 1.5,
            library_log_sd: 0.35,
            batch_gene_log_sd: 0.3,
            batch_depth_log_shift: 0.15,
            splicing_depth_log_sd: 0.4,
            target_unobserved: 0.82,
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.n_cells == 0 || self.n_genes == 0 || self.n_junctions == 0 {
            bail!("simulate: n_cells, n_genes and n_junctions must be positive");
        }
        if self.n_cell_types == 0 || self.n_batches == 0 {
            bail!("simulate: n_cell_types and n_batches must be positive");
        }
        if self.n_cells > u32::MAX as usize || self.n_junctions > u32::MAX as usize || self.n_genes > u32::MAX as usize
        {
            bail!("simulate: dimensions must fit in u32");
        }
        if !(self.target_unobserved > 0.0 && self.target_unobserved < 1.0) {
            bail!("simulate: target_unobserved must be in (0, 1), got {}", self.target_unobserved);
        }
        for (name, v) in [
            ("de_gene_fraction", self.de_gene_fraction),
            ("type_specific_splicing_fraction", self.type_specific_splicing_fraction),
            ("ds_atse_fraction", self.ds_atse_fraction),
        ] {
            if !(0.0..=1.0).contains(&v) {
                bail!("simulate: {name} must be in [0, 1], got {v}");
            }
        }
        let (lo, hi) = self.ds_shift_range;
        if !(0.0 < lo && lo <= hi && hi < 1.0) {
            bail!("simulate: ds_shift_range must satisfy 0 < lo <= hi < 1, got ({lo}, {hi})");
        }
        if self.mean_counts_per_gene <= 0.0 {
            bail!("simulate: mean_counts_per_gene must be positive");
        }
        Ok(())
    }

    pub fn n_subtypes(&self) -> usize {
        self.n_cell_types * SUBTYPES_PER_TYPE
    }
}

/// What was planted, for evaluating a model on the simulated data.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroundTruth {
    pub cell_type_names: Vec<String>,
    /// "T0_a", "T0_b", "T1_a", …: subtype s belongs to cell type s / 2.
    pub subtype_names: Vec<String>,
    pub batch_names: Vec<String>,
    pub cell_type: Vec<u32>,
    pub subtype: Vec<u32>,
    pub batch: Vec<u32>,
    /// True PSI, junctions × subtypes, row-major (`true_psi[j * n_subtypes + s]`).
    pub true_psi: Vec<f32>,
    /// Per cell type t: junctions whose PSI differs between subtypes 2t and 2t+1.
    pub planted_ds_by_type: Vec<Vec<bool>>,
    /// Union over cell types.
    pub planted_ds: Vec<bool>,
    /// True natural-log fold change of each gene in each cell type, types × genes row-major.
    pub de_lfc: Vec<f32>,
    pub de_gene: Vec<bool>,
    /// Calibrated splicing depth scale (reads per unit ATSE abundance).
    pub depth_scale: f64,
}

impl GroundTruth {
    pub fn n_subtypes(&self) -> usize {
        self.subtype_names.len()
    }
    /// The pair of subtypes compared for `planted_ds_by_type[t]`.
    pub fn planted_pair(&self, t: usize) -> (&str, &str) {
        (&self.subtype_names[SUBTYPES_PER_TYPE * t], &self.subtype_names[SUBTYPES_PER_TYPE * t + 1])
    }
}

/// Global (cell-independent) parameters.
pub struct SimModel {
    pub cfg: SimConfig,
    pub gene_names: Vec<String>,
    pub gene_ids: Vec<String>,
    pub transcript_length: Vec<f64>,
    /// Relative gene rate per (type, batch), normalised to sum 1: index (t * B + b) * G + g.
    rate: Vec<f64>,
    theta: Vec<f64>,
    /// Junction range of ATSE a: atse_start[a]..atse_start[a+1].
    pub atse_start: Vec<usize>,
    pub atse_gene: Vec<u32>,
    pub atse_ids: Vec<String>,
    pub junction_names: Vec<String>,
    /// ATSE abundance per type: t * A + a.
    atse_abund: Vec<f64>,
    /// Dirichlet-multinomial concentration per ATSE.
    conc: Vec<f64>,
    /// True PSI per subtype, subtype-major: s * J + j (f64 for the sampler; f32 copy in the truth).
    psi: Vec<f64>,
    pub truth: GroundTruth,
}

fn pad_width(n: usize) -> usize {
    format!("{}", n.saturating_sub(1)).len().max(1)
}

fn normal(rng: &mut impl Rng) -> f64 {
    rng.sample::<f64, _>(StandardNormal)
}

/// Flat Dirichlet(α·1_m) draw.
fn dirichlet(rng: &mut impl Rng, m: usize, alpha: f64) -> Vec<f64> {
    let g = Gamma::new(alpha, 1.0).expect("valid gamma");
    loop {
        let v: Vec<f64> = (0..m).map(|_| g.sample(rng)).collect();
        let s: f64 = v.iter().sum();
        if s > 0.0 && s.is_finite() {
            return v.into_iter().map(|x| x / s).collect();
        }
    }
}

/// Negative binomial with mean `mu` and inverse dispersion `theta`: inversion for small means (one
/// uniform, exact pmf recursion), gamma-Poisson otherwise.
fn sample_nb(rng: &mut impl Rng, mu: f64, theta: f64) -> u32 {
    if mu.is_nan() || mu <= 0.0 {
        return 0;
    }
    if mu < 30.0 {
        let q = mu / (theta + mu);
        let mut p = (theta * (theta / (theta + mu)).ln()).exp();
        let u: f64 = rng.gen();
        let mut cdf = p;
        let mut k: u32 = 0;
        while u >= cdf {
            p *= (k as f64 + theta) / (k as f64 + 1.0) * q;
            k += 1;
            cdf += p;
            // Rounding can leave the cdf a hair below u forever; the tail past here is negligible.
            if p < 1e-18 && k as f64 > mu {
                break;
            }
        }
        k
    } else {
        let lam = Gamma::new(theta, mu / theta).expect("valid gamma").sample(rng);
        if lam <= 0.0 {
            return 0;
        }
        let x: f64 = Poisson::new(lam).expect("valid poisson").sample(rng);
        x.min(u32::MAX as f64) as u32
    }
}

/// Probability that NB(mu, θ = 2) is zero.
fn nb2_p0(mu: f64) -> f64 {
    let r = 1.0 / (1.0 + mu / ATSE_THETA);
    r * r
}

impl SimModel {
    pub fn new(cfg: &SimConfig) -> anyhow::Result<Self> {
        cfg.validate()?;
        let cfg = cfg.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(0);
        let (g_n, j_n, t_n, b_n) = (cfg.n_genes, cfg.n_junctions, cfg.n_cell_types, cfg.n_batches);
        let s_n = cfg.n_subtypes();

        // ---- genes
        let gw = pad_width(g_n);
        let gene_names: Vec<String> = (0..g_n).map(|g| format!("gene_{g:0gw$}")).collect();
        let gene_ids: Vec<String> = (0..g_n).map(|g| format!("SIMG{g:08}")).collect();
        let transcript_length: Vec<f64> =
            (0..g_n).map(|_| (2500f64.ln() + 0.5 * normal(&mut rng)).exp().round().max(200.0)).collect();
        let base: Vec<f64> = (0..g_n).map(|_| (1.2 * normal(&mut rng)).exp()).collect();
        let theta: Vec<f64> = (0..g_n).map(|_| (2f64.ln() + 0.5 * normal(&mut rng)).exp()).collect();
        let mut de_lfc = vec![0f32; t_n * g_n];
        let mut de_gene = vec![false; g_n];
        for g in 0..g_n {
            if rng.gen::<f64>() < cfg.de_gene_fraction {
                let t = rng.gen_range(0..t_n);
                let mag = rng.gen_range(cfg.de_lfc_range.0..=cfg.de_lfc_range.1);
                let sign = if rng.gen::<bool>() { 1.0 } else { -1.0 };
                de_lfc[t * g_n + g] = (sign * mag) as f32;
                de_gene[g] = t_n > 1;
            }
        }
        let batch_factor: Vec<f64> = (0..b_n * g_n).map(|_| (cfg.batch_gene_log_sd * normal(&mut rng)).exp()).collect();
        let mut rate = vec![0f64; t_n * b_n * g_n];
        for t in 0..t_n {
            for b in 0..b_n {
                let row = &mut rate[(t * b_n + b) * g_n..(t * b_n + b + 1) * g_n];
                for g in 0..g_n {
                    row[g] = base[g] * (de_lfc[t * g_n + g] as f64).exp() * batch_factor[b * g_n + g];
                }
                let s: f64 = row.iter().sum();
                row.iter_mut().for_each(|x| *x /= s);
            }
        }

        // ---- ATSE structure: sizes 1..=7, junctions contiguous per ATSE, ATSEs ordered by gene.
        let cum: Vec<f64> = ATSE_SIZE_WEIGHTS
            .iter()
            .scan(0.0, |acc, w| {
                *acc += w;
                Some(*acc)
            })
            .collect();
        let total_w = *cum.last().unwrap();
        let mut sizes = Vec::new();
        let mut used = 0usize;
        while used < j_n {
            let u = rng.gen::<f64>() * total_w;
            let m = cum.iter().position(|&c| u < c).unwrap_or(6) + 1;
            let m = m.min(j_n - used);
            sizes.push(m);
            used += m;
        }
        let a_n = sizes.len();
        let mut genes_of: Vec<u32> = (0..a_n).map(|_| rng.gen_range(0..g_n as u32)).collect();
        genes_of.sort_unstable();
        let mut atse_start = Vec::with_capacity(a_n + 1);
        atse_start.push(0usize);
        for &m in &sizes {
            atse_start.push(atse_start.last().unwrap() + m);
        }
        let aw = pad_width(a_n);
        let jw = pad_width(j_n);
        // Zero-padded ids: sorted event_id order == ATSE order == junction order.
        let atse_ids: Vec<String> = (0..a_n).map(|a| format!("atse_{a:0aw$}")).collect();
        let junction_names: Vec<String> = (0..j_n).map(|j| format!("junc_{j:0jw$}")).collect();

        let mut atse_abund = vec![0f64; t_n * a_n];
        let mut conc = vec![0f64; a_n];
        let mean_base = base.iter().sum::<f64>() / g_n as f64;
        for a in 0..a_n {
            let g = genes_of[a] as usize;
            let own = (0.8 * normal(&mut rng)).exp();
            for t in 0..t_n {
                atse_abund[t * a_n + a] = (base[g] / mean_base).sqrt() * (0.5 * de_lfc[t * g_n + g] as f64).exp() * own;
            }
            conc[a] = (15f64.ln() + 0.5 * normal(&mut rng)).exp();
        }

        // ---- PSI per subtype
        let mut psi = vec![0f64; s_n * j_n];
        let mut planted_by_type = vec![vec![false; j_n]; t_n];
        for a in 0..a_n {
            let (lo, hi) = (atse_start[a], atse_start[a + 1]);
            let m = hi - lo;
            if m == 1 {
                for s in 0..s_n {
                    psi[s * j_n + lo] = 1.0;
                }
                continue;
            }
            let shared = dirichlet(&mut rng, m, 0.8);
            for t in 0..t_n {
                let r_t = if rng.gen::<f64>() < cfg.type_specific_splicing_fraction {
                    dirichlet(&mut rng, m, 0.8)
                } else {
                    shared.clone()
                };
                let planted = rng.gen::<f64>() < cfg.ds_atse_fraction;
                // Planted: psi_a = (1-δ) r + δ e_j1, psi_b = (1-δ) r + δ e_j2, so exactly j1 and j2 move by δ.
                let (j1, j2, delta) = if planted {
                    let j1 = rng.gen_range(0..m);
                    let mut j2 = rng.gen_range(0..m - 1);
                    if j2 >= j1 {
                        j2 += 1;
                    }
                    (j1, j2, rng.gen_range(cfg.ds_shift_range.0..=cfg.ds_shift_range.1))
                } else {
                    (0, 0, 0.0)
                };
                for (k, sub) in [j1, j2].into_iter().enumerate() {
                    let s = t * SUBTYPES_PER_TYPE + k;
                    for i in 0..m {
                        let mut p = (1.0 - delta) * r_t[i];
                        if planted && i == sub {
                            p += delta;
                        }
                        psi[s * j_n + lo + i] = p;
                    }
                }
                if planted {
                    planted_by_type[t][lo + j1] = true;
                    planted_by_type[t][lo + j2] = true;
                }
            }
        }

        let cell_type_names: Vec<String> = (0..t_n).map(|t| format!("T{t}")).collect();
        let subtype_names: Vec<String> = (0..s_n)
            .map(|s| format!("T{}_{}", s / SUBTYPES_PER_TYPE, (b'a' + (s % SUBTYPES_PER_TYPE) as u8) as char))
            .collect();
        let batch_names: Vec<String> = (0..b_n).map(|b| format!("batch{b}")).collect();
        let mut true_psi = vec![0f32; j_n * s_n];
        for j in 0..j_n {
            for s in 0..s_n {
                true_psi[j * s_n + s] = psi[s * j_n + j] as f32;
            }
        }
        let planted_ds: Vec<bool> = (0..j_n).map(|j| planted_by_type.iter().any(|v| v[j])).collect();

        let mut model = SimModel {
            cfg,
            gene_names,
            gene_ids,
            transcript_length,
            rate,
            theta,
            atse_start,
            atse_gene: genes_of,
            atse_ids,
            junction_names,
            atse_abund,
            conc,
            psi,
            truth: GroundTruth {
                cell_type_names,
                subtype_names,
                batch_names,
                true_psi,
                planted_ds_by_type: planted_by_type,
                planted_ds,
                de_lfc,
                de_gene,
                ..Default::default()
            },
        };
        model.truth.depth_scale = model.calibrate_depth();
        Ok(model)
    }

    pub fn n_atse(&self) -> usize {
        self.atse_ids.len()
    }

    fn library_scale(&self) -> f64 {
        self.cfg.mean_counts_per_gene * self.cfg.n_genes as f64
    }

    /// Depth scale D such that the expected fraction of unobserved cell × junction entries is the target.
    /// Expectation over types and batches (uniform, as sampled), a fixed Monte-Carlo sample of depth
    /// noise, and (for large A) a strided subset of ATSEs; bisection on log D.
    fn calibrate_depth(&self) -> f64 {
        let cfg = &self.cfg;
        let a_n = self.n_atse();
        let stride = a_n.div_ceil(2048).max(1);
        let atses: Vec<usize> = (0..a_n).step_by(stride).collect();
        let junctions: f64 = atses.iter().map(|&a| (self.atse_start[a + 1] - self.atse_start[a]) as f64).sum();
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5EED_CA1B);
        let depth_sd = ((0.5 * cfg.library_log_sd).powi(2) + cfg.splicing_depth_log_sd.powi(2)).sqrt();
        let noise: Vec<f64> = (0..64).map(|_| depth_sd * normal(&mut rng)).collect();
        let observed = |d: f64| -> f64 {
            let mut tot = 0.0;
            for t in 0..cfg.n_cell_types {
                for b in 0..cfg.n_batches {
                    for &e in &noise {
                        let z = d * (b as f64 * cfg.batch_depth_log_shift + e).exp();
                        for &a in &atses {
                            let m = (self.atse_start[a + 1] - self.atse_start[a]) as f64;
                            tot += m * (1.0 - nb2_p0(z * self.atse_abund[t * a_n + a]));
                        }
                    }
                }
            }
            tot / (junctions * (cfg.n_cell_types * cfg.n_batches * noise.len()) as f64)
        };
        let target = 1.0 - cfg.target_unobserved;
        let (mut lo, mut hi) = (-20f64, 20f64);
        for _ in 0..50 {
            let mid = 0.5 * (lo + hi);
            if observed(mid.exp()) < target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        (0.5 * (lo + hi)).exp()
    }

    /// Generate block `b` (cells b*BLOCK_CELLS .. min(N, (b+1)*BLOCK_CELLS)).
    pub fn generate_block(&self, block: usize) -> CellBlock {
        let cfg = &self.cfg;
        let start = block * BLOCK_CELLS;
        let end = (start + BLOCK_CELLS).min(cfg.n_cells);
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(block as u64 + 1);
        let (g_n, j_n, b_n) = (cfg.n_genes, cfg.n_junctions, cfg.n_batches);
        let a_n = self.n_atse();
        let s_n = cfg.n_subtypes();
        let lib0 = self.library_scale();
        let mut out = CellBlock::with_capacity(end - start);
        let mut gam: Vec<f64> = Vec::with_capacity(8);
        let mut kbuf: Vec<u32> = Vec::with_capacity(8);
        for _cell in start..end {
            let s = rng.gen_range(0..s_n);
            let t = s / SUBTYPES_PER_TYPE;
            let b = rng.gen_range(0..b_n);
            let e_lib = normal(&mut rng);
            let e_depth = normal(&mut rng);
            let shift = b as f64 * cfg.batch_depth_log_shift;

            // expression
            let lib = lib0 * (shift + cfg.library_log_sd * e_lib).exp();
            let rate = &self.rate[(t * b_n + b) * g_n..(t * b_n + b + 1) * g_n];
            let mut total = 0f64;
            for g in 0..g_n {
                let x = sample_nb(&mut rng, lib * rate[g], self.theta[g]);
                if x > 0 {
                    out.expr_indices.push(g as u32);
                    out.expr_values.push(x as f32);
                    total += x as f64;
                }
            }
            out.expr_indptr.push(out.expr_indices.len());
            out.library_size.push(total as f32);

            // splicing
            let z = self.truth.depth_scale
                * (shift + 0.5 * cfg.library_log_sd * e_lib + cfg.splicing_depth_log_sd * e_depth).exp();
            let abund = &self.atse_abund[t * a_n..(t + 1) * a_n];
            let psi_s = &self.psi[s * j_n..(s + 1) * j_n];
            for a in 0..a_n {
                let n = sample_nb(&mut rng, z * abund[a], ATSE_THETA);
                if n == 0 {
                    continue;
                }
                let (lo, hi) = (self.atse_start[a], self.atse_start[a + 1]);
                kbuf.clear();
                if hi - lo == 1 {
                    kbuf.push(n);
                } else {
                    // Dirichlet-multinomial: p ~ Dir(c·psi), then sequential binomials.
                    gam.clear();
                    for j in lo..hi {
                        let alpha = (self.conc[a] * psi_s[j]).max(1e-3);
                        gam.push(Gamma::new(alpha, 1.0).expect("valid gamma").sample(&mut rng));
                    }
                    let mut rest: f64 = gam.iter().sum();
                    let mut remaining = n as u64;
                    let m = hi - lo;
                    for (i, &gi) in gam.iter().enumerate() {
                        // The last junction (or any once the remaining mass is exhausted) takes the rest.
                        let ki = if i + 1 == m || remaining == 0 || rest <= 0.0 {
                            remaining
                        } else {
                            let p = (gi / rest).clamp(0.0, 1.0);
                            Binomial::new(remaining, p).expect("valid binomial").sample(&mut rng)
                        };
                        kbuf.push(ki as u32);
                        remaining -= ki;
                        rest -= gi;
                    }
                }
                let nf = n as f32;
                for (i, &k) in kbuf.iter().enumerate() {
                    out.spl_junction.push((lo + i) as u32);
                    out.k.push(k as f32);
                    out.n.push(nf);
                    out.psi.push(k as f32 / nf);
                }
            }
            out.spl_indptr.push(out.spl_junction.len());
            out.subtype.push(s as u32);
            out.batch.push(b as u32);
        }
        out
    }

    pub fn n_blocks(&self) -> usize {
        self.cfg.n_cells.div_ceil(BLOCK_CELLS)
    }

    pub fn cell_names(&self) -> Vec<String> {
        let w = pad_width(self.cfg.n_cells);
        (0..self.cfg.n_cells).map(|i| format!("cell_{i:0w$}")).collect()
    }

    /// Splicing var table, rna var table, uns entries and varm for the file (everything not per cell).
    fn file_tables(&self) -> FileExtras {
        let t = &self.truth;
        let g_n = self.cfg.n_genes;
        let mut rna_cols: Vec<(String, ObsColumn)> = vec![
            ("gene_id".into(), ObsColumn::Text(self.gene_ids.clone())),
            (
                "modality".into(),
                ObsColumn::Categorical { codes: vec![0; g_n], categories: vec!["Gene_Expression".into()], int_categories: None, store: crate::data::CatStore::Unordered },
            ),
            ("mean_transcript_length".into(), ObsColumn::numeric(self.transcript_length.clone())),
            ("de_gene".into(), ObsColumn::Bool(t.de_gene.clone())),
        ];
        for (ti, name) in t.cell_type_names.iter().enumerate() {
            rna_cols.push((
                format!("true_lfc_{name}"),
                ObsColumn::numeric(t.de_lfc[ti * g_n..(ti + 1) * g_n].iter().map(|&x| x as f64).collect()),
            ));
        }
        let rna = VarTable { names: self.gene_names.clone(), columns: rna_cols, varm: vec![] };

        let j_n = self.cfg.n_junctions;
        let mut event = Vec::with_capacity(j_n);
        let mut gene = Vec::with_capacity(j_n);
        for a in 0..self.n_atse() {
            for _ in self.atse_start[a]..self.atse_start[a + 1] {
                event.push(self.atse_ids[a].clone());
                gene.push(self.gene_names[self.atse_gene[a] as usize].clone());
            }
        }
        let mut spl_cols: Vec<(String, ObsColumn)> = vec![
            ("event_id".into(), ObsColumn::Text(event)),
            ("junction_id".into(), ObsColumn::Text(self.junction_names.clone())),
            ("gene_name".into(), ObsColumn::Text(gene)),
            ("modality".into(), ObsColumn::Categorical { codes: vec![0; j_n], categories: vec!["Splicing".into()], int_categories: None, store: crate::data::CatStore::Unordered }),
            ("planted_ds".into(), ObsColumn::Bool(t.planted_ds.clone())),
        ];
        for (ti, name) in t.cell_type_names.iter().enumerate() {
            spl_cols.push((format!("planted_ds_{name}"), ObsColumn::Bool(t.planted_ds_by_type[ti].clone())));
        }
        let spl = VarTable {
            names: self.junction_names.clone(),
            columns: spl_cols,
            varm: vec![("true_psi".into(), t.true_psi.clone(), t.n_subtypes())],
        };

        let pairs: Vec<String> = (0..t.cell_type_names.len())
            .map(|ti| {
                let (a, b) = t.planted_pair(ti);
                format!("{a}|{b}")
            })
            .collect();
        let c = &self.cfg;
        let uns = vec![
            ("subtype_names".into(), UnsValue::Strings(t.subtype_names.clone())),
            ("cell_type_names".into(), UnsValue::Strings(t.cell_type_names.clone())),
            ("planted_pairs".into(), UnsValue::Strings(pairs)),
            (
                "simulation".into(),
                UnsValue::Dict(vec![
                    ("generator".into(), UnsValue::String("splicevi simulate".into())),
                    ("seed".into(), UnsValue::Int(c.seed as i64)),
                    ("n_cell_types".into(), UnsValue::Int(c.n_cell_types as i64)),
                    ("n_batches".into(), UnsValue::Int(c.n_batches as i64)),
                    ("n_atse".into(), UnsValue::Int(self.n_atse() as i64)),
                    ("target_unobserved".into(), UnsValue::Float(c.target_unobserved)),
                    ("depth_scale".into(), UnsValue::Float(t.depth_scale)),
                    ("ds_atse_fraction".into(), UnsValue::Float(c.ds_atse_fraction)),
                    ("de_gene_fraction".into(), UnsValue::Float(c.de_gene_fraction)),
                    ("config_json".into(), UnsValue::String(serde_json::to_string(c).unwrap_or_default())),
                ]),
            ),
        ];
        (rna, spl, uns)
    }

    fn obs_columns(&self, subtype: &[u32], batch: &[u32], library: &[f32]) -> Vec<(String, ObsColumn)> {
        let t = &self.truth;
        vec![
            (
                "cell_type".into(),
                ObsColumn::Categorical {
                    codes: subtype.iter().map(|&s| (s as usize / SUBTYPES_PER_TYPE) as i32).collect(),
                    categories: t.cell_type_names.clone(),
                    int_categories: None, store: crate::data::CatStore::Unordered,
                },
            ),
            (
                "subtype".into(),
                ObsColumn::Categorical {
                    codes: subtype.iter().map(|&s| s as i32).collect(),
                    categories: t.subtype_names.clone(),
                    int_categories: None, store: crate::data::CatStore::Unordered,
                },
            ),
            (
                "batch".into(),
                ObsColumn::Categorical {
                    codes: batch.iter().map(|&b| b as i32).collect(),
                    categories: t.batch_names.clone(),
                    int_categories: None, store: crate::data::CatStore::Unordered,
                },
            ),
            ("library_size".into(), ObsColumn::numeric(library.iter().map(|&x| x as f64).collect())),
        ]
    }
}

/// Summary of a simulation run (printed by the CLI, used by tests).
#[derive(Clone, Debug, Default)]
pub struct SimSummary {
    pub n_cells: usize,
    pub n_genes: usize,
    pub n_junctions: usize,
    pub n_atse: usize,
    pub expression_nnz: u64,
    pub splicing_observed: u64,
    pub fraction_unobserved: f64,
}

/// Generate the whole dataset in memory. `dataset.covariates.batch` is resolved from obs "batch"
/// (what loading the file with `--batch-key batch` gives).
pub fn simulate(cfg: &SimConfig) -> anyhow::Result<(Dataset, GroundTruth)> {
    simulate_first(cfg, cfg.n_cells)
}

/// The first `n_cells` cells of `cfg`'s dataset, without generating the rest: the same global
/// parameters (they do not depend on the cell count) and the same generation blocks, so these cells are
/// exactly the full simulation's first `n_cells` (tested). `bench` uses it at the paper size, whose
/// 100,000 cells hold about 1.6 billion observed cell × junction entries (tens of GB): a training step's
/// cost depends on its minibatch, not on the cells around it.
pub fn simulate_first(cfg: &SimConfig, n_cells: usize) -> anyhow::Result<(Dataset, GroundTruth)> {
    let mut model = SimModel::new(cfg)?;
    if n_cells == 0 {
        bail!("simulate: the number of cells to simulate must be positive");
    }
    let n = n_cells.min(cfg.n_cells);
    model.cfg.n_cells = n;
    let blocks: Vec<CellBlock> = (0..model.n_blocks()).into_par_iter().map(|b| model.generate_block(b)).collect();
    let mut source = format!("simulate(n_cells={}, seed={})", cfg.n_cells, cfg.seed);
    if n < cfg.n_cells {
        source += &format!(", its first {n} cells");
    }
    let (mut ds, truth) = assemble(&model, blocks, source);
    if n < cfg.n_cells {
        // the whole dataset's names (padded for its cell count)
        let w = pad_width(cfg.n_cells);
        ds.cell_names = (0..n).map(|i| format!("cell_{i:0w$}")).collect();
    }
    Ok((ds, truth))
}

fn assemble(model: &SimModel, blocks: Vec<CellBlock>, source: String) -> (Dataset, GroundTruth) {
    let cfg = &model.cfg;
    let n_cells = cfg.n_cells;
    let expr_nnz: usize = blocks.iter().map(|b| b.expr_indices.len()).sum();
    let spl_nnz: usize = blocks.iter().map(|b| b.spl_junction.len()).sum();
    let mut expr = Csr::<f32> {
        n_rows: n_cells,
        n_cols: cfg.n_genes,
        indptr: Vec::with_capacity(n_cells + 1),
        indices: Vec::with_capacity(expr_nnz),
        values: Vec::with_capacity(expr_nnz),
    };
    expr.indptr.push(0);
    let mut spl = Splicing {
        n_cells,
        n_junctions: cfg.n_junctions,
        indptr: Vec::with_capacity(n_cells + 1),
        junction: Vec::with_capacity(spl_nnz),
        k: Vec::with_capacity(spl_nnz),
        n: Vec::with_capacity(spl_nnz),
        psi: Vec::with_capacity(spl_nnz),
        has_counts: true,
        junc2atse: Vec::with_capacity(cfg.n_junctions),
        atse_ids: model.atse_ids.clone(),
        junction_names: model.junction_names.clone(),
        gene_names: Vec::with_capacity(cfg.n_junctions),
    };
    spl.indptr.push(0);
    let mut truth = model.truth.clone();
    let mut library = Vec::with_capacity(n_cells);
    for blk in blocks {
        let eo = expr.indices.len();
        expr.indptr.extend(blk.expr_indptr[1..].iter().map(|&p| p + eo));
        expr.indices.extend_from_slice(&blk.expr_indices);
        expr.values.extend_from_slice(&blk.expr_values);
        let so = spl.junction.len();
        spl.indptr.extend(blk.spl_indptr[1..].iter().map(|&p| p + so));
        spl.junction.extend_from_slice(&blk.spl_junction);
        spl.k.extend_from_slice(&blk.k);
        spl.n.extend_from_slice(&blk.n);
        spl.psi.extend_from_slice(&blk.psi);
        truth.subtype.extend_from_slice(&blk.subtype);
        truth.batch.extend_from_slice(&blk.batch);
        library.extend_from_slice(&blk.library_size);
    }
    truth.cell_type = truth.subtype.iter().map(|&s| s / SUBTYPES_PER_TYPE as u32).collect();
    for a in 0..model.n_atse() {
        for _ in model.atse_start[a]..model.atse_start[a + 1] {
            spl.junc2atse.push(a as u32);
            spl.gene_names.push(model.gene_names[model.atse_gene[a] as usize].clone());
        }
    }
    let obs = model.obs_columns(&truth.subtype, &truth.batch, &library);
    let covariates = Covariates {
        batch: Categorical { name: "batch".into(), codes: truth.batch.clone(), levels: truth.batch_names.clone() },
        labels: Categorical { name: "labels".into(), codes: vec![0; n_cells], levels: vec!["0".into()] },
        ..Default::default()
    };
    let ds = Dataset {
        source,
        cell_names: model.cell_names(),
        gene_names: model.gene_names.clone(),
        expression: Some(expr),
        library_size: library,
        splicing: spl,
        obs_tables: vec![ObsTable { field: "obs".into(), modality: None, columns: obs.clone(), unreadable: Vec::new() }],
        obs,
        covariates,
    };
    (ds, truth)
}

/// rna var table, splicing var table (with varm), uns entries.
pub type FileExtras = (VarTable, VarTable, Vec<(String, UnsValue)>);

/// Everything `write_h5mu` needs besides the Dataset: var annotations, varm and uns of a simulation.
pub fn file_extras(cfg: &SimConfig) -> anyhow::Result<FileExtras> {
    Ok(SimModel::new(cfg)?.file_tables())
}

/// Write an in-memory simulation (from [`simulate`]) to `path`, identical to [`simulate_to_file`].
pub fn write_simulated(path: &Path, cfg: &SimConfig, ds: &Dataset, compression: Compression) -> anyhow::Result<()> {
    let (rna, spl, uns) = file_extras(cfg)?;
    h5write::write_h5mu(path, ds, Some(&rna), Some(&spl), &uns, compression)
}

/// Stream a simulation to `path` block by block: memory is bounded by a few blocks plus O(cells + genes +
/// junctions) metadata, never by the whole dataset. The file is written under a temporary name and
/// renamed when complete.
pub fn simulate_to_file(
    cfg: &SimConfig,
    path: &Path,
    compression: Compression,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<(GroundTruth, SimSummary)> {
    let model = SimModel::new(cfg)?;
    let n_blocks = model.n_blocks();
    // Blocks generated per wave: enough to keep every thread busy; memory ~ 2 waves.
    let wave = (2 * rayon::current_num_threads()).max(2);
    let mut truth = model.truth.clone();
    let mut library: Vec<f32> = Vec::with_capacity(cfg.n_cells);
    let mut summary = SimSummary {
        n_cells: cfg.n_cells,
        n_genes: cfg.n_genes,
        n_junctions: cfg.n_junctions,
        n_atse: model.n_atse(),
        ..Default::default()
    };
    let gen_wave = |w: usize| -> Vec<CellBlock> {
        let lo = w * wave;
        let hi = ((w + 1) * wave).min(n_blocks);
        (lo..hi).into_par_iter().map(|b| model.generate_block(b)).collect()
    };
    let n_waves = n_blocks.div_ceil(wave);
    crate::util::write_atomic(path, |tmp| {
        let mut w =
            h5write::SpliceviWriter::create(tmp, cfg.n_cells, cfg.n_genes, cfg.n_junctions, true, true, compression)
                .with_context(|| format!("creating {}", path.display()))?;
        let mut current = gen_wave(0);
        for wi in 0..n_waves {
            // Write wave wi on this thread while the pool generates wave wi + 1.
            let (res, next) = rayon::join(
                || -> anyhow::Result<()> {
                    for blk in &current {
                        w.append(blk)?;
                    }
                    Ok(())
                },
                || if wi + 1 < n_waves { gen_wave(wi + 1) } else { Vec::new() },
            );
            res?;
            for blk in &current {
                summary.expression_nnz += blk.expr_indices.len() as u64;
                summary.splicing_observed += blk.spl_junction.len() as u64;
                truth.subtype.extend_from_slice(&blk.subtype);
                truth.batch.extend_from_slice(&blk.batch);
                library.extend_from_slice(&blk.library_size);
            }
            progress((((wi + 1) * wave).min(n_blocks) * BLOCK_CELLS).min(cfg.n_cells), cfg.n_cells);
            current = next;
        }
        truth.cell_type = truth.subtype.iter().map(|&s| s / SUBTYPES_PER_TYPE as u32).collect();
        let (rna, spl, uns) = model.file_tables();
        let meta = FileMeta {
            cell_names: model.cell_names(),
            obs: model.obs_columns(&truth.subtype, &truth.batch, &library),
            library_size: library.clone(),
            rna: Some(rna),
            splicing: spl,
            uns,
        };
        w.finish(&meta)
    })?;
    summary.fraction_unobserved =
        1.0 - summary.splicing_observed as f64 / (cfg.n_cells as f64 * cfg.n_junctions as f64);
    Ok((truth, summary))
}
