//! Typed launch of kernels/splicing_lik.cu: the sparse splicing decode (SDDMM over the observed
//! entries) + Dirichlet-multinomial / beta-binomial / binomial / BCE likelihood + d(loss)/d(logit) in one
//! pass, one block per chunk of a cell's ATSE groups (DM) or entries, then the per-cell losses from the
//! chunks' sums in order. CPU twin: [`crate::model::spl_lik`] (the CPU model's own code).
//!
//! **This kernel has never run on a GPU**: it was written and compiled without one (nvcc 13.0, sm_80 /
//! sm_90 SASS + compute_80 PTX); tests/cuda_lik_parity.rs compares it with the CPU twin where a GPU
//! exists and skips (printing `SKIPPED:`) elsewhere. There are no performance numbers for it.

use super::runtime::{CudaDevice, DeviceMem, KernelArg, Kernel};
use crate::model::batch::SplBatch;
use crate::model::config::SplicingLoss;
use crate::model::spl_lik::{AtseGroups, ConcIndex};
use anyhow::{bail, ensure, Result};
use cudarc::driver::{DeviceRepr, LaunchConfig};

/// Threads per block (SPL_THREADS in kernels/splicing_lik.cu).
pub const SPL_THREADS: u32 = 128;
/// ATSE groups per block of the Dirichlet-multinomial (SPL_GCHUNK) and entries per block of the other
/// losses (SPL_ECHUNK).
pub const SPL_GCHUNK: usize = 256;
pub const SPL_ECHUNK: usize = 1024;

/// Blocks of one launch (and f64 chunk sums in `rl_part`) for `b` cells with `nnz` entries in
/// `n_groups` ATSE groups.
pub fn n_chunks(kind: SplicingLoss, b: usize, nnz: usize, n_groups: usize) -> usize {
    match kind {
        SplicingLoss::DirichletMultinomial => super::chunk_ids(b, n_groups, SPL_GCHUNK),
        _ => super::chunk_ids(b, nnz, SPL_ECHUNK),
    }
}

/// Element type of the SDDMM operands S and W: f32 or bf16 (accumulation is f32 either way).
pub trait SplOperand: DeviceRepr + Copy + Send + Sync + 'static {
    const KERNEL: &'static str;
    fn to_f32(self) -> f32;
}
impl SplOperand for f32 {
    const KERNEL: &'static str = "splicing_lik_f32";
    fn to_f32(self) -> f32 {
        self
    }
}
impl SplOperand for half::bf16 {
    const KERNEL: &'static str = "splicing_lik_bf16";
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

/// `kind` argument of the kernel.
pub fn kind_code(kind: SplicingLoss) -> i32 {
    match kind {
        SplicingLoss::DirichletMultinomial => 0,
        SplicingLoss::BetaBinomial => 1,
        SplicingLoss::Binomial => 2,
        SplicingLoss::Bce => 3,
    }
}

/// `conc_mode` argument of the kernel.
pub fn conc_code(conc: ConcIndex) -> i32 {
    match conc {
        ConcIndex::Scalar => 0,
        ConcIndex::Atse => 1,
        ConcIndex::Junction => 2,
    }
}

/// The ATSE grouping on the device (the arrays of [`AtseGroups`]; pointers as i64, `ord` as u32).
pub struct DevGroups<'a> {
    pub cell_ptr: &'a dyn DeviceMem<i64>,
    pub grp_ptr: &'a dyn DeviceMem<i64>,
    pub ord: &'a dyn DeviceMem<u32>,
}

impl DevGroups<'_> {
    /// ATSE groups in the grouping (what [`n_chunks`] takes).
    pub fn n_groups(&self) -> usize {
        self.grp_ptr.elements().saturating_sub(1)
    }
}

/// Device inputs of one launch. B cells, K = decoder input width, J junctions, nnz observed entries.
pub struct SplLikInputs<'a, W> {
    /// Decoder input rows S (B × K, row-major).
    pub s: &'a dyn DeviceMem<W>,
    pub k: usize,
    /// Output-layer weight W (J × K, row-major) and bias (J).
    pub w: &'a dyn DeviceMem<W>,
    pub bias: &'a dyn DeviceMem<f32>,
    /// CSR of the observed entries by cell (B + 1, i64), junction ids, counts k and n (nnz each).
    pub indptr: &'a dyn DeviceMem<i64>,
    pub junction: &'a dyn DeviceMem<u32>,
    pub counts_k: &'a dyn DeviceMem<f32>,
    pub counts_n: &'a dyn DeviceMem<f32>,
    /// PSI per entry: BCE only.
    pub psi: Option<&'a dyn DeviceMem<f32>>,
    /// Dirichlet-multinomial only.
    pub groups: Option<DevGroups<'a>>,
    /// junction → ATSE (J): needed for `ConcIndex::Atse`.
    pub junc2atse: Option<&'a dyn DeviceMem<u32>>,
    /// log φ (pre-softplus): DM and beta-binomial.
    pub log_phi: Option<&'a dyn DeviceMem<f32>>,
    /// The dense decode: the B × J products S·Wᵀ from a GEMM (row-major), read per entry instead of the
    /// SDDMM (+ bias; s and w are then not read).
    pub dense: Option<&'a dyn DeviceMem<f32>>,
}

/// Device outputs: per entry (nnz) logits, d rl/d logit, concentration contributions, p; per cell rl;
/// `rl_part`, scratch of [`n_chunks`] f64 chunk sums.
pub struct SplLikOutputs<'a> {
    pub logits: &'a mut dyn DeviceMem<f32>,
    pub rl: &'a mut dyn DeviceMem<f32>,
    pub rl_part: &'a mut dyn DeviceMem<f64>,
    pub g_logit: &'a mut dyn DeviceMem<f32>,
    pub g_conc: &'a mut dyn DeviceMem<f32>,
    pub p: &'a mut dyn DeviceMem<f32>,
}

/// Results copied back to the host (for tests and checks).
#[derive(Clone, Debug)]
pub struct SplLikHost {
    pub logits: Vec<f32>,
    pub rl: Vec<f32>,
    pub g_logit: Vec<f32>,
    pub g_conc: Vec<f32>,
    pub p: Vec<f32>,
}

pub struct CudaSplicingLik<'d> {
    dev: &'d CudaDevice,
    f32_fn: Kernel,
    bf16_fn: Kernel,
    rl_fn: Kernel,
}

fn addr<T>(m: Option<&dyn DeviceMem<T>>) -> u64 {
    m.map(|m| m.device_address()).unwrap_or(0)
}

impl<'d> CudaSplicingLik<'d> {
    pub fn new(dev: &'d CudaDevice) -> Result<Self> {
        Ok(CudaSplicingLik {
            dev,
            f32_fn: dev.function("splicing_lik", <f32 as SplOperand>::KERNEL)?,
            bf16_fn: dev.function("splicing_lik", <half::bf16 as SplOperand>::KERNEL)?,
            rl_fn: dev.function("splicing_lik", "splicing_lik_rl")?,
        })
    }

    /// Enqueues the kernel. `lse_eps`: the DM log-sum-exp's epsilon (`ModelConfig::dm_lse_eps`; unused by
    /// the other losses). Checks buffer lengths and that the optional inputs the loss needs are
    /// present; the CSR / grouping contents are trusted (build them with [`AtseGroups::build`], or use
    /// [`Self::run_host`], which validates them).
    #[allow(clippy::too_many_arguments)]
    pub fn launch<W: SplOperand>(
        &self,
        kind: SplicingLoss,
        conc: ConcIndex,
        weight: f32,
        lse_eps: f32,
        n_junctions: usize,
        inp: &SplLikInputs<'_, W>,
        out: &mut SplLikOutputs<'_>,
    ) -> Result<()> {
        let _r = crate::nvtx_range!("splicing_lik {}", kind.as_str());
        let b = inp.indptr.elements().checked_sub(1).ok_or_else(|| anyhow::anyhow!("splicing_lik: indptr is empty"))?;
        let (k, j, nnz) = (inp.k, n_junctions, inp.junction.elements());
        ensure!(k >= 1, "splicing_lik: the decoder input width K must be at least 1");
        ensure!(inp.s.elements() == b * k, "splicing_lik: S has {} elements for {b} cells × K = {k}", inp.s.elements());
        ensure!(inp.w.elements() == j * k, "splicing_lik: W has {} elements for {j} junctions × K = {k}", inp.w.elements());
        ensure!(inp.bias.elements() == j, "splicing_lik: bias has {} elements for {j} junctions", inp.bias.elements());
        ensure!(inp.counts_k.elements() == nnz && inp.counts_n.elements() == nnz, "splicing_lik: counts do not have {nnz} entries");
        ensure!(b <= i32::MAX as usize, "splicing_lik: {b} cells exceed one grid dimension");
        ensure!(out.logits.elements() == nnz && out.g_logit.elements() == nnz && out.g_conc.elements() == nnz && out.p.elements() == nnz, "splicing_lik: per-entry outputs must have {nnz} entries");
        ensure!(out.rl.elements() == b, "splicing_lik: rl must have {b} entries");
        if kind == SplicingLoss::Bce {
            ensure!(inp.psi.is_some_and(|p| p.elements() == nnz), "splicing_lik: BCE needs psi with {nnz} entries");
        }
        if kind == SplicingLoss::DirichletMultinomial {
            let Some(g) = &inp.groups else { bail!("splicing_lik: the Dirichlet-multinomial needs the ATSE grouping") };
            ensure!(g.cell_ptr.elements() == b + 1 && g.ord.elements() == nnz && g.grp_ptr.elements() >= 1, "splicing_lik: ATSE grouping does not match {b} cells / {nnz} entries");
        }
        if matches!(kind, SplicingLoss::DirichletMultinomial | SplicingLoss::BetaBinomial) {
            ensure!(inp.log_phi.is_some(), "splicing_lik: {kind} needs log_phi");
        }
        if conc == ConcIndex::Atse && kind == SplicingLoss::DirichletMultinomial {
            ensure!(inp.junc2atse.is_some_and(|m| m.elements() == j), "splicing_lik: per-ATSE concentration needs junc2atse with {j} entries");
        }
        if let Some(dn) = inp.dense {
            ensure!(dn.elements() == b * j, "splicing_lik: the dense products have {} elements for {b} cells × {j} junctions", dn.elements());
        }
        ensure!(j <= i32::MAX as usize, "splicing_lik: {j} junctions exceed i32");
        if b == 0 {
            return Ok(());
        }
        let f = if W::KERNEL == <f32 as SplOperand>::KERNEL { &self.f32_fn } else { &self.bf16_fn };
        let smem = (k * 4) as u32;
        // a launch may have 48 KiB of shared memory in all; the kernel's own static arrays take 1 KiB
        // (ptxas: 1,024 bytes of smem)
        ensure!(smem <= 47 * 1024, "splicing_lik: K = {k} needs {smem} bytes of dynamic shared memory (max 47 KiB beside the kernel's static 1 KiB)");
        let n_groups = inp.groups.as_ref().map_or(0, |g| g.n_groups());
        let chunks = n_chunks(kind, b, nnz, n_groups);
        ensure!(chunks <= i32::MAX as usize && out.rl_part.elements() >= chunks, "splicing_lik: rl_part has {} entries for {chunks} chunks", out.rl_part.elements());
        let cfg = LaunchConfig { grid_dim: (chunks as u32, 1, 1), block_dim: (SPL_THREADS, 1, 1), shared_mem_bytes: smem };
        let (gc, gp, go) = match &inp.groups {
            Some(g) => (g.cell_ptr.device_address(), g.grp_ptr.device_address(), g.ord.device_address()),
            None => (0, 0, 0),
        };
        let args: [&dyn KernelArg; 27] = [
            &inp.s.device_address(),
            &(k as i32),
            &inp.w.device_address(),
            &inp.bias.device_address(),
            &inp.indptr.device_address(),
            &inp.junction.device_address(),
            &inp.counts_k.device_address(),
            &inp.counts_n.device_address(),
            &addr(inp.psi),
            &gc,
            &gp,
            &go,
            &addr(inp.junc2atse),
            &addr(inp.log_phi),
            &kind_code(kind),
            &conc_code(conc),
            &weight,
            &lse_eps,
            &(b as i32),
            &(chunks as i32),
            &out.logits.device_address(),
            &out.rl_part.device_address(),
            &out.g_logit.device_address(),
            &out.g_conc.device_address(),
            &out.p.device_address(),
            &addr(inp.dense),
            &(j as i32),
        ];
        self.dev.launch(f, cfg, &args)?;
        let args: [&dyn KernelArg; 7] = [&out.rl_part.device_address(), &inp.indptr.device_address(), &gc, &kind_code(kind), &(b as i32), &weight, &out.rl.device_address()];
        let cfg = LaunchConfig { grid_dim: (b.div_ceil(SPL_THREADS as usize) as u32, 1, 1), block_dim: (SPL_THREADS, 1, 1), shared_mem_bytes: 0 };
        self.dev.launch(&self.rl_fn, cfg, &args)
    }

    /// Convenience for tests: validates and uploads host data, poisons every output with NaN, launches,
    /// and copies the results back. `s` is B × k, `w` J × k (row-major). `dense`: the dense decode, its
    /// B × J products S·Wᵀ computed here in f64 (rounded to f32).
    #[allow(clippy::too_many_arguments)]
    pub fn run_host<W: SplOperand>(
        &self,
        kind: SplicingLoss,
        conc: ConcIndex,
        weight: f32,
        lse_eps: f32,
        s: &[W],
        k: usize,
        w: &[W],
        bias: &[f32],
        spl: &SplBatch,
        groups: Option<&AtseGroups>,
        junc2atse: &[u32],
        log_phi: &[f32],
        dense: bool,
    ) -> Result<SplLikHost> {
        let (b, j, nnz) = (spl.n_cells(), spl.n_junctions, spl.nnz());
        // (Device buffers cannot be empty; the kernel itself handles cells without entries.)
        ensure!(b > 0 && nnz > 0, "splicing_lik run_host: the batch needs at least one cell and one observed entry");
        ensure!(spl.indptr.first() == Some(&0) && spl.indptr.windows(2).all(|x| x[0] <= x[1]) && spl.indptr[b] == nnz, "splicing_lik: malformed CSR indptr");
        ensure!(spl.junction.iter().all(|&x| (x as usize) < j), "splicing_lik: a junction id is ≥ J = {j}");
        ensure!(junc2atse.is_empty() || junc2atse.len() == j, "splicing_lik: junc2atse has {} entries for {j} junctions", junc2atse.len());
        if let Some(g) = groups {
            ensure!(g.cell_ptr.len() == b + 1 && g.ord.len() == nnz && g.grp_ptr.last() == Some(&nnz), "splicing_lik: ATSE grouping does not match the batch");
            for i in 0..b {
                let r = spl.cell_range(i);
                for gg in g.cell_ptr[i]..g.cell_ptr[i + 1] {
                    ensure!(g.ord[g.grp_ptr[gg]..g.grp_ptr[gg + 1]].iter().all(|&e| r.contains(&(e as usize))), "splicing_lik: group {gg} holds entries outside cell {i}");
                    ensure!(g.grp_ptr[gg + 1] > g.grp_ptr[gg], "splicing_lik: group {gg} is empty");
                }
            }
        }
        let conc_len = match (kind, conc) {
            (SplicingLoss::Binomial | SplicingLoss::Bce, _) => 0,
            (_, ConcIndex::Scalar) => 1,
            (_, ConcIndex::Atse) => junc2atse.iter().map(|&a| a as usize + 1).max().unwrap_or(0),
            (_, ConcIndex::Junction) => j,
        };
        ensure!(log_phi.len() >= conc_len, "splicing_lik: log_phi has {} entries, {conc_len} needed", log_phi.len());
        let dev = self.dev;
        let i64s = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<i64>>();
        let (sd, wd, bd) = (dev.upload(s)?, dev.upload(w)?, dev.upload(bias)?);
        let (ip, jd, kd, nd) = (dev.upload(&i64s(&spl.indptr))?, dev.upload(&spl.junction)?, dev.upload(&spl.k)?, dev.upload(&spl.n)?);
        let psi = if kind == SplicingLoss::Bce { Some(dev.upload(&spl.psi)?) } else { None };
        let gdev = match groups {
            Some(g) => Some((dev.upload(&i64s(&g.cell_ptr))?, dev.upload(&i64s(&g.grp_ptr))?, dev.upload(&g.ord)?)),
            None => None,
        };
        let j2a = if junc2atse.is_empty() { None } else { Some(dev.upload(junc2atse)?) };
        let lp = if log_phi.is_empty() { None } else { Some(dev.upload(log_phi)?) };
        let dn = if dense {
            let mut l = vec![0f32; b * j];
            for i in 0..b {
                for jj in 0..j {
                    let dot: f64 = (0..k).map(|t| s[i * k + t].to_f32() as f64 * w[jj * k + t].to_f32() as f64).sum();
                    l[i * j + jj] = dot as f32;
                }
            }
            Some(dev.upload(&l)?)
        } else {
            None
        };
        // Outputs poisoned with NaN: an entry the kernel fails to write cannot pass as a result.
        let nan = |n: usize| dev.upload(&vec![f32::NAN; n]);
        let (mut lo, mut rl, mut gl, mut gc, mut pe) = (nan(nnz)?, nan(b)?, nan(nnz)?, nan(nnz)?, nan(nnz)?);
        let mut rl_part = dev.upload(&vec![f64::NAN; n_chunks(kind, b, nnz, groups.map_or(0, |g| g.grp_ptr.len() - 1))])?;
        let inp = SplLikInputs {
            s: &sd,
            k,
            w: &wd,
            bias: &bd,
            indptr: &ip,
            junction: &jd,
            counts_k: &kd,
            counts_n: &nd,
            psi: psi.as_ref().map(|p| p as &dyn DeviceMem<f32>),
            groups: gdev.as_ref().map(|(a, b, c)| DevGroups { cell_ptr: a, grp_ptr: b, ord: c }),
            junc2atse: j2a.as_ref().map(|p| p as &dyn DeviceMem<u32>),
            log_phi: lp.as_ref().map(|p| p as &dyn DeviceMem<f32>),
            dense: dn.as_ref().map(|p| p as &dyn DeviceMem<f32>),
        };
        let mut out = SplLikOutputs { logits: &mut lo, rl: &mut rl, rl_part: &mut rl_part, g_logit: &mut gl, g_conc: &mut gc, p: &mut pe };
        self.launch(kind, conc, weight, lse_eps, j, &inp, &mut out)?;
        dev.synchronize()?;
        Ok(SplLikHost { logits: dev.download(&lo)?, rl: dev.download(&rl)?, g_logit: dev.download(&gl)?, g_conc: dev.download(&gc)?, p: dev.download(&pe)? })
    }
}
