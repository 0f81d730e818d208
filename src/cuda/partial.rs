//! Typed launches of kernels/partial.cu: the partial splicing encoder's per-pair network and pooling,
//! forward and backward, as chunked scatter aggregation over the observed pairs. CPU twin:
//! [`crate::model::partial`] (`partial_forward` / `partial_backward`).
//!
//! **These kernels have never run on a GPU**: they were written and compiled without one. Their logic is
//! checked on the host by tests/cuda_partial_parity.rs (the kernel source compiled against
//! kernels/host_emu.h); the same test compares them on a GPU where one exists and skips elsewhere.
//!
//! Two sets of kernels run the h network ([`PartialKernels`]): once per pair (kernels/partial.cu, on
//! CUDA cores or, in bf16, on tensor cores), or once per group of pairs with the same input
//! (kernels/partial_grouped.cu, the CPU twin's own scheme: its products as cuBLAS GEMMs over the
//! groups, about 18× fewer at the paper size; see that file). The step runs the grouped ones unless
//! `SPLICEVI_PARTIAL_KERNELS=pairs`.
//!
//! The backward walks the pairs junction by junction; [`junction_major`] builds that order on the host
//! from the cell-major batch (a device-side counting sort belongs with the GPU training step, which
//! does not exist yet).

use super::runtime::{CudaDevice, DeviceMem, KernelArg, Kernel, DevBuf};
use crate::model::arch::PartialEncP;
use crate::model::batch::SplBatch;
use crate::model::ops::Mode;
use crate::model::params::Params;
use crate::model::rng::{streams, DropStream};
use anyhow::{ensure, Result};
use cudarc::driver::LaunchConfig;

/// Threads per block of the per-cell / per-junction kernels (PART_THREADS in kernels/partial.cu).
pub const PART_THREADS: u32 = 128;
/// Limits of the kernels (PART_HMAX, PART_DMAX): h_hidden ≤ 256, code_dim ≤ 128.
pub const PART_HMAX: usize = 256;
pub const PART_DMAX: usize = 128;
/// Most warps (and parameter-sum slots) of the backward: junction j belongs to warp j mod n_warps.
/// Fixed, so the summation order never depends on the device.
pub const PART_BWD_WARPS: usize = 1024;
/// Pairs per warp of the forward pool (PART_POOL_CHUNK in kernels/partial.cu).
pub const PART_POOL_CHUNK: usize = 256;

/// Chunk ids of the forward pool for `b` cells and `nnz` pairs.
pub fn pool_chunks(b: usize, nnz: usize) -> usize {
    super::chunk_ids(b, nnz, PART_POOL_CHUNK)
}

/// Junctions per thread of `partial_unfold_du` (PART_DU_CHUNK in kernels/partial.cu).
pub const PART_DU_CHUNK: usize = 32;

/// Rows per group of `partial_group_sums`, slots per group of `partial_slot_sums` (PART_GROUP).
pub const PART_GROUP: usize = 32;

/// f64 sums over junction chunks of the backward: chunks × [Hh | Hh | Hh] (`partial_unfold_du`).
pub fn jpart_len(j: usize, hh: usize) -> usize {
    j.div_ceil(PART_DU_CHUNK).max(1) * 3 * hh
}

/// Those chunks' sums by groups (`partial_group_sums`).
pub fn jgroups_len(j: usize, hh: usize) -> usize {
    j.div_ceil(PART_DU_CHUNK).div_ceil(PART_GROUP).max(1) * 3 * hh
}

/// f64 sums of the slots by groups (`partial_slot_sums`): groups × (slot floats + e₁, e₃).
pub fn slot_part_len(n_slots: usize, hh: usize, d: usize) -> usize {
    n_slots.div_ceil(PART_GROUP).max(1) * (slot_len(hh, d) + 2)
}

/// Dynamic shared memory one block may use without opting in.
const SMEM_LIMIT: usize = 48 * 1024;

/// POOL_* of kernels/partial.cu.
pub const POOL_SUM: i32 = 0;
pub const POOL_MEAN: i32 = 1;
pub const POOL_FIXED: i32 = 2;

/// `partial_smem_per_warp` of kernels/partial.cu (tests/cuda_partial_parity.rs checks they agree).
pub fn smem_per_warp(hh: usize, d: usize, bwd: bool) -> usize {
    let dp = d.next_power_of_two();
    let g = 32 / dp.min(32);
    let floats = g * hh + g + if bwd { g * d + d * hh } else { 0 };
    let bytes = 16 * g + 4 * floats + 4 * 3 * g;
    bytes.div_ceil(16) * 16
}

/// Warps per block of the backward (its per-warp d W₄ lives in shared memory): up to 4, fewer for wide
/// layers (the `paper` preset's 64 × 128 runs one warp per block).
pub fn bwd_warps_per_block(hh: usize, d: usize) -> usize {
    (SMEM_LIMIT / smem_per_warp(hh, d, true)).clamp(1, 4)
}

/// Warps (cells) per block of the pooled forward: up to 4, fewer where their shared memory would pass
/// the default limit.
pub fn fwd_warps_per_block(hh: usize, d: usize) -> usize {
    (SMEM_LIMIT / smem_per_warp(hh, d, false)).clamp(1, PART_THREADS as usize / 32)
}

/// Whether `partial_pool_fwd_tc` takes these layers: its tiles are 16 hidden units deep and 8 code
/// units wide.
pub fn tensor_cores_fit(hh: usize, d: usize) -> bool {
    hh % 16 == 0 && d % 8 == 0
}

/// `partial_tc_smem_per_warp` of kernels/partial.cu: the 16 × (Hh + 8) bf16 tile, then 16 × (α, β)
/// and 16 × (junction, pair id).
pub fn tc_smem_per_warp(hh: usize) -> usize {
    (16 * (hh + 8) * 2).div_ceil(16) * 16 + 16 * 16 + 16 * 4 * 2
}

/// `partial_tc_bwd_smem` of kernels/partial.cu: a block of `warps` warps shares d W₄ (D × Hh f32 in rows
/// of Hh + 8) and 16 bytes of flags; each warp has its tiles (bf16 h1, dh, dhᵀ, or the f32 da that
/// overlays them), its pass pairs' scalars and their dropout keep words (16 × PART_KW_MAX u64).
pub fn tc_bwd_smem(hh: usize, d: usize, warps: usize) -> usize {
    let d16 = d.div_ceil(16) * 16;
    let bf = (16 * (hh + 8) + 16 * (d16 + 8) + d16 * 24) * 2;
    let da = 16 * (hh + 4) * 4;
    d * (hh + 8) * 4 + 16 + warps * (bf.max(da).div_ceil(16) * 16 + 16 * (16 + 4 + 4) + 16 * (PART_HMAX / 64) * 8)
}

/// Warps per block of `partial_pair_bwd_tc` (they share one d W₄ accumulator): 4 where the block's
/// shared memory fits `smem_limit` (the `paper` preset's 128 × 64 takes 76 KiB, so the launch opts in
/// past 48 KiB), else 2, else 1 (which [`tensor_cores_bwd_fit`] guarantees fits 48 KiB). `requested`
/// (`SPLICEVI_TC_BWD_WARPS`, or [`CudaPartial::set_tc_bwd_warps`]) picks one of 1, 2, 4 instead where
/// it fits.
pub fn tc_bwd_warps_per_block(hh: usize, d: usize, smem_limit: usize, requested: Option<usize>) -> Result<usize> {
    if let Some(w) = requested {
        ensure!(matches!(w, 1 | 2 | 4), "partial_pair_bwd_tc: {w} warps per block requested; it takes 1, 2 or 4");
        ensure!(
            tc_bwd_smem(hh, d, w) <= smem_limit,
            "partial_pair_bwd_tc: {w} warps per block need {} bytes of shared memory at h_hidden_dim {hh}, code_dim {d}; the device allows {smem_limit}",
            tc_bwd_smem(hh, d, w)
        );
        return Ok(w);
    }
    Ok([4, 2, 1].into_iter().find(|&w| tc_bwd_smem(hh, d, w) <= smem_limit).unwrap_or(1))
}

/// `partial_w4frag_words` of kernels/partial.cu: W₄'s bf16 tensor-core fragments that `partial_fold_norm`
/// writes for the tensor-core kernels (u32 words: the forward's D/8 × Hh/16 tiles, then the backward's
/// Hh/8 × ⌈D/16⌉, 64 words each).
pub fn w4frag_words(hh: usize, d: usize) -> usize {
    64 * ((d / 8) * (hh / 16) + (hh / 8) * d.div_ceil(16))
}

/// PART_PASS_THREADS of kernels/partial.cu: the one block of `partial_pass_ptr`.
const PART_PASS_THREADS: u32 = 256;

/// Largest code_dim of `partial_pair_bwd_tc` (PART_TC_DMAX: its LayerNorm sums live in registers).
pub const PART_TC_DMAX: usize = 64;

/// `SPLICEVI_TC_BWD_WARPS` (1, 2 or 4), the warps per block of `partial_pair_bwd_tc` when set: to
/// compare the shared d W₄ accumulator with one warp's on a GPU.
pub fn tc_bwd_warps_requested() -> Result<Option<usize>> {
    match std::env::var("SPLICEVI_TC_BWD_WARPS") {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(w @ (1 | 2 | 4)) => Ok(Some(w)),
            _ => anyhow::bail!("SPLICEVI_TC_BWD_WARPS={v:?}: expected 1, 2 or 4"),
        },
        Err(_) => Ok(None),
    }
}

/// Whether `partial_pair_bwd_tc` takes these layers: Hh in 16-deep tiles, D in 8-wide ones (padded to
/// 16 where the product runs over D), D ≤ PART_TC_DMAX, and a block of one warp within a launch's
/// default 48 KiB of shared memory (the `paper` preset's 128 × 64 uses 44 KiB).
pub fn tensor_cores_bwd_fit(hh: usize, d: usize) -> bool {
    hh % 16 == 0 && d % 8 == 0 && d <= PART_TC_DMAX && hh <= PART_HMAX && tc_bwd_smem(hh, d, 1) <= SMEM_LIMIT
}

/// How `partial_pair_bwd_tc` walks a minibatch (host arithmetic, no device): junction j's ⌈pairs / 16⌉
/// passes go to one warp (see [`TcBwdSchedule::of`]); a block of `wpb` warps runs as many rounds as its
/// busiest warp has passes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TcBwdSchedule {
    /// Passes over all warps.
    pub passes: usize,
    /// Σ over blocks of the block's rounds × its warps: the warp-rounds the launch occupies.
    pub warp_rounds: usize,
    /// Rounds of the longest block (its warps' passes, for one warp per block).
    pub longest: usize,
    pub blocks: usize,
}

impl TcBwdSchedule {
    /// `pairs[j]`: junction j's observed pairs in the minibatch. `contiguous`: the kernel's partition
    /// (each warp the junctions whose first pass falls in its equal share of the passes); otherwise
    /// junction j mod n_warps (`partial_pair_bwd`'s, and the tensor-core kernel's before).
    pub fn of(pairs: &[usize], wpb: usize, contiguous: bool) -> Self {
        let nw = bwd_warps(pairs.len());
        let total: usize = pairs.iter().map(|n| n.div_ceil(16)).sum();
        let mut per_warp = vec![0usize; nw];
        let mut before = 0usize;
        for (j, &n) in pairs.iter().enumerate() {
            // warp w: ⌈w·P / nw⌉ ≤ passes before j < ⌈(w + 1)·P / nw⌉, i.e. w = ⌊before·nw / P⌋
            let w = if contiguous { (before * nw / total.max(1)).min(nw - 1) } else { j % nw };
            per_warp[w] += n.div_ceil(16);
            before += n.div_ceil(16);
        }
        let mut s = TcBwdSchedule { passes: per_warp.iter().sum(), warp_rounds: 0, longest: 0, blocks: nw.div_ceil(wpb) };
        for block in per_warp.chunks(wpb) {
            let rounds = block.iter().copied().max().unwrap_or(0);
            s.warp_rounds += rounds * wpb;
            s.longest = s.longest.max(rounds);
        }
        s
    }

    /// Share of the warp-rounds in which a warp has no pass of its own (it still meets the barriers and
    /// updates its d W₄ tiles).
    pub fn idle(&self) -> f64 {
        if self.warp_rounds == 0 { 0.0 } else { 1.0 - self.passes as f64 / self.warp_rounds as f64 }
    }
}

/// Number of backward warps for J junctions.
pub fn bwd_warps(j: usize) -> usize {
    j.clamp(1, PART_BWD_WARPS)
}

/// Floats per parameter-sum slot: [R | be₁ | W₄ | b₄ | g₅ | be₅].
pub fn slot_len(hh: usize, d: usize) -> usize {
    2 * hh + d * hh + 3 * d
}

/// Sizes and options of one minibatch.
#[derive(Clone, Copy, Debug)]
pub struct PartialShape {
    pub j: usize,
    pub hh: usize,
    pub d: usize,
    pub b: usize,
    pub nnz: usize,
    pub pool_mode: i32,
    /// The `fixed` pool mode's divisor (ignored otherwise).
    pub divisor: f32,
    pub center: bool,
    /// (key, threshold, 1 / (1 − p)) when the h network's dropout acts in this pass.
    pub dropout: Option<(u64, u32, f32)>,
    /// The h network's products on tensor cores with bf16 operands (`--precision bf16`): the pooled
    /// forward's where [`tensor_cores_fit`] (`partial_pool_fwd_tc`), the backward's where also
    /// [`tensor_cores_bwd_fit`] (`partial_pair_bwd_tc`; otherwise the f32 `partial_pair_bwd`).
    pub tensor_cores: bool,
    /// The grouped kernels (kernels/partial_grouped.cu) instead of the per-pair ones; `tensor_cores`
    /// then runs their three GEMMs in TF32 (f32 operands, 10-bit mantissas) instead of f32.
    pub grouped: bool,
}

/// Which kernels run the partial encoder's h network (tests choose; the step takes
/// [`PartialKernels::for_step`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartialKernels {
    /// Once per observed pair, f32 on CUDA cores (`partial_pool_fwd`, `partial_pair_bwd`).
    Pairs,
    /// Once per pair with the h network's products on tensor cores in bf16, where the layers fit
    /// (`partial_pool_fwd_tc`, `partial_pair_bwd_tc`).
    PairsTensorCores,
    /// Once per group of pairs with the same (junction, input) (kernels/partial_grouped.cu), its
    /// products f32 GEMMs.
    Grouped,
    /// The same, its GEMMs on tensor cores in TF32 (`--precision bf16`).
    GroupedTensorCores,
}

impl PartialKernels {
    /// Whether the training step runs the grouped kernels: `SPLICEVI_PARTIAL_KERNELS` is `grouped` (the
    /// default) or `pairs` (per pair, as before the grouped kernels existed).
    pub fn grouped_by_default() -> Result<bool> {
        match std::env::var("SPLICEVI_PARTIAL_KERNELS") {
            Err(_) => Ok(true),
            Ok(v) => match v.trim() {
                "grouped" => Ok(true),
                "pairs" => Ok(false),
                _ => anyhow::bail!("SPLICEVI_PARTIAL_KERNELS={v:?}: expected grouped or pairs"),
            },
        }
    }

    /// The step's kernels: grouped when `grouped`, else per pair; on tensor cores in bf16.
    pub fn for_step(grouped: bool, bf16: bool) -> Self {
        match (grouped, bf16) {
            (true, true) => PartialKernels::GroupedTensorCores,
            (true, false) => PartialKernels::Grouped,
            (false, true) => PartialKernels::PairsTensorCores,
            (false, false) => PartialKernels::Pairs,
        }
    }

    /// `shape` set up for these kernels (tensor cores only where the layers fit).
    pub fn apply(self, shape: PartialShape) -> PartialShape {
        let grouped = matches!(self, PartialKernels::Grouped | PartialKernels::GroupedTensorCores);
        let tensor_cores = match self {
            PartialKernels::PairsTensorCores => tensor_cores_fit(shape.hh, shape.d),
            PartialKernels::GroupedTensorCores => true,
            _ => false,
        };
        PartialShape { tensor_cores, grouped, ..shape }
    }

    pub fn name(self) -> &'static str {
        match self {
            PartialKernels::Pairs => "per pair (f32)",
            PartialKernels::PairsTensorCores => "per pair (bf16 tensor cores)",
            PartialKernels::Grouped => "grouped (f32 GEMMs over the distinct inputs)",
            PartialKernels::GroupedTensorCores => "grouped (TF32 tensor-core GEMMs over the distinct inputs)",
        }
    }
}

impl PartialShape {
    /// The shape of `spl` under the encoder `pe` with parameters `p` in `mode` (as the twin sees it).
    pub fn of(pe: &PartialEncP, p: &Params<f32>, spl: &SplBatch, mode: Mode) -> Self {
        Self::of_counts(pe, p, spl.n_junctions, spl.n_cells(), spl.nnz(), mode)
    }

    /// The shape of a minibatch of `b` cells and `nnz` observed entries over `j` junctions.
    pub fn of_counts(pe: &PartialEncP, p: &Params<f32>, j: usize, b: usize, nnz: usize, mode: Mode) -> Self {
        let (pool_mode, divisor) = match (pe.divisor, pe.pool_mean) {
            (Some(di), _) => (POOL_FIXED, p.get(di)[0]),
            (None, true) => (POOL_MEAN, 1.0),
            (None, false) => (POOL_SUM, 1.0),
        };
        let dropout = (mode.training && pe.dropout > 0.0).then(|| {
            let ds = DropStream::new(mode.seed, streams::PARTIAL_H, pe.dropout);
            (ds.key(), ds.threshold(), (1.0 / (1.0 - pe.dropout)) as f32)
        });
        PartialShape {
            j,
            hh: pe.h_hidden,
            d: pe.code_dim,
            b,
            nnz,
            pool_mode,
            divisor,
            center: pe.center.is_some(),
            dropout,
            tensor_cores: false,
            grouped: false,
        }
    }

    /// Whether the per-pair tensor-core kernels run (not the grouped ones).
    fn tc(&self) -> bool {
        self.tensor_cores && !self.grouped
    }

    /// u64 keep words per pair.
    pub fn keep_words(&self) -> usize {
        self.hh.div_ceil(64)
    }

    fn check(&self) -> Result<()> {
        ensure!(
            self.hh >= 1 && self.hh <= PART_HMAX && self.d >= 1 && self.d <= PART_DMAX,
            "the CUDA partial encoder supports h_hidden_dim ≤ {PART_HMAX} and code_dim ≤ {PART_DMAX} (got {} and {}); use --device cpu",
            self.hh,
            self.d
        );
        ensure!(
            smem_per_warp(self.hh, self.d, true) <= SMEM_LIMIT,
            "the CUDA partial encoder's backward needs {} bytes of shared memory per warp for h_hidden_dim {} and code_dim {} (at most {SMEM_LIMIT}); use smaller layers or --device cpu",
            smem_per_warp(self.hh, self.d, true),
            self.hh,
            self.d
        );
        ensure!(self.j >= 1 && self.b >= 1, "partial: {} junctions, {} cells", self.j, self.b);
        ensure!(self.nnz < i32::MAX as usize && self.j < i32::MAX as usize / self.hh.max(self.d), "partial: the minibatch is too large for 32-bit pair ids");
        Ok(())
    }
}

/// The pairs junction-major: jptr (J + 1), order (pair ids, cell-major positions), and each pair's cell.
pub fn junction_major(spl: &SplBatch) -> (Vec<i32>, Vec<i32>, Vec<i32>) {
    let j = spl.n_junctions;
    let mut jptr = vec![0i32; j + 1];
    for &jj in &spl.junction {
        jptr[jj as usize + 1] += 1;
    }
    for i in 0..j {
        jptr[i + 1] += jptr[i];
    }
    let mut pos: Vec<i32> = jptr[..j].to_vec();
    let mut order = vec![0i32; spl.nnz()];
    let mut cell_of = vec![0i32; spl.nnz()];
    for c in 0..spl.n_cells() {
        for e in spl.cell_range(c) {
            let jj = spl.junction[e] as usize;
            order[pos[jj] as usize] = e as i32;
            cell_of[e] = c as i32;
            pos[jj] += 1;
        }
    }
    (jptr, order, cell_of)
}

/// The encoder's parameters on the device (model layout; `center` with `partial_center_psi`).
pub struct PartialParamsDev<'a> {
    pub emb: &'a dyn DeviceMem<f32>,
    pub w0: &'a dyn DeviceMem<f32>,
    pub b0: &'a dyn DeviceMem<f32>,
    pub g1: &'a dyn DeviceMem<f32>,
    pub be1: &'a dyn DeviceMem<f32>,
    pub w4: &'a dyn DeviceMem<f32>,
    pub b4: &'a dyn DeviceMem<f32>,
    pub g5: &'a dyn DeviceMem<f32>,
    pub be5: &'a dyn DeviceMem<f32>,
    pub center: Option<&'a dyn DeviceMem<f32>>,
}

/// The minibatch: cell-major pairs, and their junction-major order for the backward.
pub struct PartialBatchDev<'a> {
    pub indptr: &'a dyn DeviceMem<i32>,
    pub junction: &'a dyn DeviceMem<i32>,
    pub psi: &'a dyn DeviceMem<f32>,
    pub jptr: &'a dyn DeviceMem<i32>,
    pub order: &'a dyn DeviceMem<i32>,
    pub cell_of: &'a dyn DeviceMem<i32>,
}

/// Scratch of one step (sizes from [`PartialWork::alloc`]); the forward fills the fold, h(0) and the
/// keep bits, the backward reads them.
pub struct PartialWork {
    pub fhat: DevBuf<f32>,
    pub fnorm: DevBuf<f32>,
    pub ut: DevBuf<f32>,
    pub ug: DevBuf<f32>,
    pub suu: DevBuf<f64>,
    pub sub: DevBuf<f64>,
    pub bt: DevBuf<f32>,
    pub bg: DevBuf<f32>,
    pub sbb: DevBuf<f64>,
    pub w4t: DevBuf<f32>,
    pub h0: DevBuf<f32>,
    pub keep: DevBuf<u64>,
    pub q: DevBuf<f32>,
    pub cj: DevBuf<f64>,
    pub du: DevBuf<f32>,
    pub slots: DevBuf<f32>,
    pub slot_d: DevBuf<f64>,
    /// `partial_unfold_du`'s sums over chunks of junctions, and their sums by groups.
    pub jpart: DevBuf<f64>,
    pub jgroups: DevBuf<f64>,
    /// The slots' sums by groups.
    pub slot_part: DevBuf<f64>,
    /// d F̂ (J × D), the GEMM du·W₀[:,1:].
    pub dfh: DevBuf<f32>,
    /// W₀[:,1:]'s gradient before it is added, duᵀ·F̂ (Hh × D), from cuBLAS.
    pub w0_prod: DevBuf<f32>,
    /// W₀ᵀ ((D + 1) × Hh), the fold's coalesced copy.
    pub w0t: DevBuf<f32>,
    /// The forward pool's per-chunk sums (pool_chunks × D).
    pub pool_part: DevBuf<f32>,
    /// W₄'s bf16 fragments for the tensor-core kernels ([`w4frag_words`]; written by the fold when the
    /// shape's `tensor_cores` is set).
    pub w4frag: DevBuf<u32>,
    /// The tensor-core backward's passes before each junction (J + 1; `partial_pass_ptr`).
    pub pass_ptr: DevBuf<i32>,
    /// d(pool) ÷ each cell's pool divisor (B × D; `partial_dpool_scale`, for the tensor-core backward).
    pub dps: DevBuf<f32>,
    /// [g₁ | b₄ | g₅ | be₅] (Hh + 3D), an aligned copy `partial_fold_norm` writes for the tensor-core
    /// kernels' 8-byte loads ([`PartialWork::tc_net`]).
    pub lnp: DevBuf<f32>,
    /// The grouped kernels' per-minibatch arrays (one element each for the per-pair kernels): each
    /// position's group leader (nnz), the junctions' group counts (J) and their prefix (J + 1), the
    /// group id of each position (junction-major) and of each pair (cell-major), the group count.
    pub lead: DevBuf<i32>,
    pub gcount: DevBuf<i32>,
    pub gptr: DevBuf<i32>,
    pub gid_at: DevBuf<i32>,
    pub gid_of_pair: DevBuf<i32>,
    pub n_groups: DevBuf<i32>,
    /// Each junction's positions ordered by (group, position) (nnz), the backward's walk.
    pub gsorted: DevBuf<i32>,
    /// Per group, room for [`PartialWork::group_capacity`] groups (grown by the forward when a minibatch
    /// has more): junction, input, (α, β), the units with a_gk > 0 (⌈Hh/64⌉ words), a_g (Hh), y_g =
    /// W₄·a_g (D), the code without dropped units (D), S = Σ d h2 (D), d a_g (Hh).
    pub g_jn: DevBuf<i32>,
    pub g_x: DevBuf<f32>,
    pub g_ab: DevBuf<f64>,
    pub g_rpos: DevBuf<u64>,
    pub ga: DevBuf<f32>,
    pub gy: DevBuf<f32>,
    pub gcode: DevBuf<f32>,
    pub gs: DevBuf<f32>,
    pub gda: DevBuf<f32>,
    /// The backward warps' partial sums for group 0 (n_warps × (D + Hh)), and Sᵀ·A (D × Hh).
    pub g0part: DevBuf<f32>,
    pub w4_prod: DevBuf<f32>,
    /// Groups of the last grouped forward (0 before one ran).
    pub n_groups_host: usize,
    /// Whether the last forward ran the grouped kernels (a grouped shape falls back to the per-pair ones
    /// for a minibatch with too few repeated inputs: [`GroupedFallback`]); its backward does the same.
    pub grouped_ran: bool,
}

/// [g_jn, g_x, g_ab, g_rpos, [ga, gy, gcode, gs, gda]] of [`PartialWork`].
type GroupBufs = (DevBuf<i32>, DevBuf<f32>, DevBuf<f64>, DevBuf<u64>, [DevBuf<f32>; 5]);

/// The group buffers for `g` groups (at least one).
fn group_bufs(dev: &CudaDevice, g: usize, hh: usize, d: usize) -> Result<GroupBufs> {
    let g = g.max(1);
    let f = |n: usize| dev.zeros::<f32>(g * n);
    Ok((dev.zeros(g)?, dev.zeros(g)?, dev.zeros(2 * g)?, dev.zeros(g * hh.div_ceil(64))?, [f(hh)?, f(d)?, f(d)?, f(d)?, f(hh)?]))
}

impl PartialWork {
    /// Groups the group buffers hold.
    pub fn group_capacity(&self) -> usize {
        self.g_jn.len()
    }

    /// Makes room for `g` groups (a quarter more, so that a slightly larger minibatch does not
    /// reallocate again); the old contents are not kept.
    fn grow_groups(&mut self, dev: &CudaDevice, g: usize, hh: usize, d: usize) -> Result<()> {
        if g <= self.group_capacity() {
            return Ok(());
        }
        let (jn, x, ab, rpos, [a, y, code, s, da]) = group_bufs(dev, g + g / 4, hh, d)?;
        (self.g_jn, self.g_x, self.g_ab, self.g_rpos) = (jn, x, ab, rpos);
        (self.ga, self.gy, self.gcode, self.gs, self.gda) = (a, y, code, s, da);
        Ok(())
    }

    /// W₀[:,1:]ᵀ (D × Hh; transposed when `t`: W₀[:,1:]) as a GEMM operand: rows 1..=D of W₀ᵀ, contiguous
    /// and aligned (the caller checks that w0t holds (D + 1) × Hh).
    fn w0_rest(&self, hh: usize, d: usize, t: bool) -> super::gemm::Operand {
        super::gemm::Operand { addr: self.w0t.device_address() + (4 * hh) as u64, rows: d, cols: hh, ld: hh, t }
    }

    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        let f32s = [&self.fhat, &self.fnorm, &self.ut, &self.ug, &self.bt, &self.bg, &self.w4t, &self.h0, &self.q, &self.du, &self.slots, &self.w0_prod, &self.w0t, &self.pool_part, &self.dfh, &self.dps, &self.lnp];
        let f64s = [&self.suu, &self.sub, &self.sbb, &self.cj, &self.slot_d, &self.jpart, &self.jgroups, &self.slot_part, &self.g_ab];
        let i32s = [&self.pass_ptr, &self.lead, &self.gcount, &self.gptr, &self.gid_at, &self.gid_of_pair, &self.n_groups, &self.g_jn, &self.gsorted];
        let group_f32s = [&self.g_x, &self.ga, &self.gy, &self.gcode, &self.gs, &self.gda, &self.g0part, &self.w4_prod];
        4 * f32s.iter().chain(group_f32s.iter()).map(|b| b.len()).sum::<usize>() + 8 * f64s.iter().map(|b| b.len()).sum::<usize>() + 8 * (self.keep.len() + self.g_rpos.len()) + 4 * self.w4frag.len() + 4 * i32s.iter().map(|b| b.len()).sum::<usize>()
    }

    pub fn alloc(dev: &CudaDevice, s: &PartialShape) -> Result<Self> {
        let (j, hh, d) = (s.j, s.hh, s.d);
        // the backward's warps, then group 0's (grouped kernels), then the reference code's
        let nslot = bwd_warps(j) + 2;
        let (nnz1, grouped) = (s.nnz.max(1), s.grouped);
        let per = |n: usize| if grouped { n } else { 1 };
        let (g_jn, g_x, g_ab, g_rpos, [ga, gy, gcode, gs, gda]) = group_bufs(dev, 0, hh, d)?;
        Ok(PartialWork {
            fhat: dev.zeros(j * d)?,
            fnorm: dev.zeros(j)?,
            ut: dev.zeros(j * hh)?,
            ug: dev.zeros(j * hh)?,
            suu: dev.zeros(j)?,
            sub: dev.zeros(j)?,
            bt: dev.zeros(hh)?,
            bg: dev.zeros(hh)?,
            sbb: dev.zeros(1)?,
            w4t: dev.zeros(hh * d)?,
            h0: dev.zeros(d)?,
            keep: dev.zeros((s.nnz * s.keep_words()).max(1))?,
            q: dev.zeros(j * hh)?,
            cj: dev.zeros(4 * j)?,
            du: dev.zeros(j * hh)?,
            slots: dev.zeros(nslot * slot_len(hh, d))?,
            slot_d: dev.zeros(2 * nslot)?,
            jpart: dev.zeros(jpart_len(j, hh))?,
            jgroups: dev.zeros(jgroups_len(j, hh))?,
            slot_part: dev.zeros(slot_part_len(nslot, hh, d))?,
            dfh: dev.zeros(j * d)?,
            w0_prod: dev.zeros(hh * d)?,
            w0t: dev.zeros((d + 1) * hh)?,
            pool_part: dev.zeros(pool_chunks(s.b, s.nnz) * d)?,
            w4frag: dev.zeros(if tensor_cores_fit(hh, d) { w4frag_words(hh, d) } else { 1 })?,
            pass_ptr: dev.zeros(j + 1)?,
            dps: dev.zeros(if tensor_cores_bwd_fit(hh, d) || grouped { s.b * d } else { 1 })?,
            lnp: dev.zeros(if tensor_cores_fit(hh, d) { hh + 3 * d } else { 1 })?,
            lead: dev.zeros(per(nnz1))?,
            gcount: dev.zeros(per(j))?,
            gptr: dev.zeros(per(j + 1))?,
            gid_at: dev.zeros(per(nnz1))?,
            gid_of_pair: dev.zeros(per(nnz1))?,
            n_groups: dev.zeros(1)?,
            gsorted: dev.zeros(per(nnz1))?,
            g_jn,
            g_x,
            g_ab,
            g_rpos,
            ga,
            gy,
            gcode,
            gs,
            gda,
            g0part: dev.zeros(per(bwd_warps(j) * (d + hh)))?,
            w4_prod: dev.zeros(per(d * hh))?,
            n_groups_host: 0,
            grouped_ran: false,
        })
    }

    /// `net` (the 12 pointers of [`CudaPartial::net_args`]) with g₁, b₄, g₅, be₅ replaced by their
    /// aligned copies in `lnp`, for the tensor-core kernels (after a fold that wrote them).
    fn tc_net(&self, net: &[u64; 12], hh: usize, d: usize) -> Result<[u64; 12]> {
        ensure!(self.lnp.len() >= hh + 3 * d, "partial: the aligned copy of g₁, b₄, g₅, be₅ holds {} of {} floats", self.lnp.len(), hh + 3 * d);
        let at = |i: usize| self.lnp.device_address() + 4 * i as u64;
        let mut n = *net;
        (n[3], n[6], n[7], n[8]) = (at(0), at(hh), at(hh + d), at(hh + 2 * d));
        Ok(n)
    }
}

/// Gradient buffers the backward adds into (None: frozen, skipped).
#[derive(Default)]
pub struct PartialGradsDev<'a> {
    pub emb: Option<&'a mut dyn DeviceMem<f32>>,
    pub w0: Option<&'a mut dyn DeviceMem<f32>>,
    pub b0: Option<&'a mut dyn DeviceMem<f32>>,
    pub g1: Option<&'a mut dyn DeviceMem<f32>>,
    pub be1: Option<&'a mut dyn DeviceMem<f32>>,
    pub w4: Option<&'a mut dyn DeviceMem<f32>>,
    pub b4: Option<&'a mut dyn DeviceMem<f32>>,
    pub g5: Option<&'a mut dyn DeviceMem<f32>>,
    pub be5: Option<&'a mut dyn DeviceMem<f32>>,
}

/// Results of [`CudaPartial::run_host`], in the twin's layouts.
#[derive(Clone, Debug)]
pub struct PartialHost {
    pub pool: Vec<f32>,
    /// nnz × ⌈Hh/64⌉ (empty without dropout).
    pub keep: Vec<u64>,
    pub h0: Option<Vec<f32>>,
    /// Gradients of [emb, W₀, b₀, g₁, be₁, W₄, b₄, g₅, be₅] (model layouts).
    pub grads: [Vec<f32>; 9],
    /// Groups the grouping found (0 for the per-pair kernels), and whether the grouped kernels ran
    /// (not the per-pair fallback).
    pub n_groups: usize,
    pub grouped_ran: bool,
}

/// When a grouped shape runs the per-pair kernels instead: for a minibatch of at least `min_pairs`
/// observed pairs whose groups number more than `max_share` of them. Data whose inputs rarely repeat
/// (PSI-only input, a continuous ψ) would otherwise pay the grouping for little sharing, and hold
/// G × (2Hh + 2D) floats of group buffers (about 1.5 KB a group at the `paper` preset). Small
/// minibatches always group (cheap either way, and the step tests exercise the grouped kernels).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupedFallback {
    pub max_share: f64,
    pub min_pairs: usize,
}

impl Default for GroupedFallback {
    fn default() -> Self {
        GroupedFallback { max_share: 0.5, min_pairs: 65_536 }
    }
}

impl GroupedFallback {
    /// Whether `groups` groups of `pairs` pairs run the per-pair kernels.
    pub fn falls_back(&self, groups: usize, pairs: usize) -> bool {
        pairs >= self.min_pairs && groups as f64 > self.max_share * pairs as f64
    }
}

/// The shape the kernels run with: `s`, or for a grouped shape whose forward fell back
/// (`!w.grouped_ran`), the per-pair kernels', on tensor cores where `s` asked for them (bf16) and the
/// layers fit.
fn ran_shape(s: &PartialShape, w: &PartialWork) -> PartialShape {
    if s.grouped && !w.grouped_ran {
        PartialShape { grouped: false, tensor_cores: s.tensor_cores && tensor_cores_fit(s.hh, s.d), ..*s }
    } else {
        *s
    }
}

/// kernels/partial_grouped.cu.
struct GroupedKernels {
    find: Kernel,
    ptr: Kernel,
    assign: Kernel,
    rows: Kernel,
    codes: Kernel,
    pool_fwd: Kernel,
    pair_bwd: Kernel,
    zero_sums: Kernel,
    group_bwd: Kernel,
}

/// PGRP_SCAN_THREADS of kernels/partial_grouped.cu: the one block of `pgrp_ptr`.
const PGRP_SCAN_THREADS: u32 = 256;

/// A launch of one warp per item, PART_THREADS / 32 warps per block (the grouped kernels' shape).
fn warps(n: usize) -> LaunchConfig {
    cfg(n.div_ceil(PART_THREADS as usize / 32), PART_THREADS, 0)
}

pub struct CudaPartial<'d> {
    dev: &'d CudaDevice,
    transpose_w0: Kernel,
    fold_norm: Kernel,
    fold_ln: Kernel,
    ref_fwd: Kernel,
    pool_fwd: Kernel,
    pool_fwd_tc: Kernel,
    pool_combine: Kernel,
    pair_bwd: Kernel,
    pair_bwd_tc: Kernel,
    pass_ptr: Kernel,
    dpool_scale: Kernel,
    ref_bwd: Kernel,
    unfold_du: Kernel,
    group_sums: Kernel,
    unfold_emb: Kernel,
    slot_sums: Kernel,
    bwd_params: Kernel,
    grouped: GroupedKernels,
    gemm: super::gemm::CudaGemm<'d>,
    /// Warps per block of `partial_pair_bwd_tc` when set (else [`tc_bwd_warps_per_block`] picks).
    tc_bwd_warps: Option<usize>,
    /// When grouped shapes run the per-pair kernels.
    pub fallback: GroupedFallback,
}

fn addr(m: Option<&dyn DeviceMem<f32>>) -> u64 {
    m.map(|m| m.device_address()).unwrap_or(0)
}

fn addr_mut(m: &Option<&mut dyn DeviceMem<f32>>) -> u64 {
    m.as_ref().map(|m| m.device_address()).unwrap_or(0)
}

fn cfg(blocks: usize, threads: u32, smem: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (blocks.max(1) as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: smem as u32 }
}

impl<'d> CudaPartial<'d> {
    pub fn new(dev: &'d CudaDevice) -> Result<Self> {
        let f = |name: &str| dev.function("partial", name);
        // The tensor-core backward's blocks share d W₄ in more than 48 KiB of shared memory.
        let mut pair_bwd_tc = f("partial_pair_bwd_tc")?;
        dev.opt_in_smem(&mut pair_bwd_tc)?;
        let tc_bwd_warps = tc_bwd_warps_requested()?;
        Ok(CudaPartial {
            dev,
            transpose_w0: f("partial_transpose_w0")?,
            fold_norm: f("partial_fold_norm")?,
            fold_ln: f("partial_fold_ln")?,
            ref_fwd: f("partial_ref_fwd")?,
            pool_fwd: f("partial_pool_fwd")?,
            pool_fwd_tc: f("partial_pool_fwd_tc")?,
            pool_combine: f("partial_pool_combine")?,
            pair_bwd: f("partial_pair_bwd")?,
            pair_bwd_tc,
            pass_ptr: f("partial_pass_ptr")?,
            dpool_scale: f("partial_dpool_scale")?,
            ref_bwd: f("partial_ref_bwd")?,
            unfold_du: f("partial_unfold_du")?,
            group_sums: f("partial_group_sums")?,
            unfold_emb: f("partial_unfold_emb")?,
            slot_sums: f("partial_slot_sums")?,
            bwd_params: f("partial_bwd_params")?,
            grouped: {
                let g = |name: &str| dev.function("partial_grouped", name);
                GroupedKernels {
                    find: g("pgrp_find")?,
                    ptr: g("pgrp_ptr")?,
                    assign: g("pgrp_assign")?,
                    rows: g("pgrp_rows")?,
                    codes: g("pgrp_codes")?,
                    pool_fwd: g("pgrp_pool_fwd")?,
                    pair_bwd: g("pgrp_pair_bwd")?,
                    zero_sums: g("pgrp_zero_sums")?,
                    group_bwd: g("pgrp_group_bwd")?,
                }
            },
            gemm: super::gemm::CudaGemm::new(dev)?,
            tc_bwd_warps,
            fallback: GroupedFallback::default(),
        })
    }

    /// Fixes the warps per block of `partial_pair_bwd_tc` (1, 2 or 4; None: the largest that fits).
    /// Only d W₄'s f32 summation grouping depends on it.
    pub fn set_tc_bwd_warps(&mut self, warps: Option<usize>) {
        self.tc_bwd_warps = warps;
    }

    /// The warps per block `partial_pair_bwd_tc` runs with at these layers.
    pub fn tc_bwd_warps(&self, hh: usize, d: usize) -> Result<usize> {
        tc_bwd_warps_per_block(hh, d, self.pair_bwd_tc.smem_limit(), self.tc_bwd_warps)
    }

    /// The 12 pointers (fold and network parameters) every kernel after the fold takes first.
    fn net_args<'a>(p: &'a PartialParamsDev<'_>, w: &'a PartialWork, addrs: &'a mut [u64; 12]) -> &'a [u64; 12] {
        *addrs = [
            w.ug.device_address(),
            w.bg.device_address(),
            p.be1.device_address(),
            p.g1.device_address(),
            p.w4.device_address(),
            w.w4t.device_address(),
            p.b4.device_address(),
            p.g5.device_address(),
            p.be5.device_address(),
            w.suu.device_address(),
            w.sub.device_address(),
            w.sbb.device_address(),
        ];
        addrs
    }

    /// Enqueues the forward: the fold, h(0) (centred), the pooled codes (B × D) and the keep bits.
    pub fn forward(&self, s: &PartialShape, p: &PartialParamsDev<'_>, bt: &PartialBatchDev<'_>, w: &mut PartialWork, pool: &mut dyn DeviceMem<f32>) -> Result<()> {
        let _r = crate::nvtx_range!("partial_fwd");
        s.check()?;
        // The grouping first (it needs only the batch): its group count picks the kernels.
        w.grouped_ran = false;
        if s.grouped {
            let g = self.grouped_count(s, p, bt, w)?;
            w.grouped_ran = !self.fallback.falls_back(g, s.nnz);
        }
        let s = &ran_shape(s, w);
        let (j, hh, d, b) = (s.j, s.hh, s.d, s.b);
        ensure!(p.emb.elements() == j * d && p.w0.elements() == hh * (d + 1) && p.w4.elements() == d * hh, "partial: parameter sizes do not match J = {j}, Hh = {hh}, D = {d}");
        ensure!(bt.indptr.elements() == b + 1 && bt.junction.elements() == s.nnz && bt.psi.elements() == s.nnz, "partial: batch arrays do not match B = {b}, nnz = {}", s.nnz);
        ensure!(pool.elements() == b * d, "partial: pool has {} entries for {b} × {d}", pool.elements());
        ensure!(s.center == p.center.is_some(), "partial: the centre buffer must be given exactly when centring");
        // (before the fold, which writes W₄'s fragments for the tensor-core kernels)
        ensure!(!s.tc() || tensor_cores_fit(hh, d), "partial: the tensor-core forward needs h_hidden_dim % 16 == 0 and code_dim % 8 == 0 (got {hh}, {d})");
        let wpb = (PART_THREADS / 32) as usize;
        let n = hh * (d + 1);
        let args: [&dyn KernelArg; 4] = [&p.w0.device_address(), &(hh as i32), &(d as i32), &w.w0t.device_address()];
        let grid = super::runtime::elementwise_grid(n, PART_THREADS, self.dev.info().multiprocessors) as usize;
        self.dev.launch(&self.transpose_w0, cfg(grid, PART_THREADS, 0), &args)?;
        // W₄'s bf16 fragments and the aligned copy of g₁, b₄, g₅, be₅ only where the tensor-core
        // kernels read them
        let w4frag = if s.tc() { w.w4frag.device_address() } else { 0 };
        let lnp = if s.tc() { w.lnp.device_address() } else { 0 };
        let args: [&dyn KernelArg; 18] = [
            &p.emb.device_address(),
            &p.b0.device_address(),
            &p.g1.device_address(),
            &p.w4.device_address(),
            &(j as i32),
            &(hh as i32),
            &(d as i32),
            &w.fhat.device_address(),
            &w.fnorm.device_address(),
            &w.bt.device_address(),
            &w.bg.device_address(),
            &w.sbb.device_address(),
            &w.w4t.device_address(),
            &w4frag,
            &p.b4.device_address(),
            &p.g5.device_address(),
            &p.be5.device_address(),
            &lnp,
        ];
        self.dev.launch(&self.fold_norm, cfg(j.div_ceil(wpb).max(1), PART_THREADS, 0), &args)?;
        if j > 0 {
            // u − W₀[:,0] = F̂·W₀[:,1:]ᵀ (J × D · D × Hh) into ut: W₀[:,1:]ᵀ is rows 1..=D of W₀ᵀ.
            use super::gemm::{GemmPrecision, Operand};
            ensure!(w.w0t.len() >= (d + 1) * hh && w.ut.len() >= j * hh, "partial: the W₀ᵀ / ũ scratch is too small");
            self.gemm.gemm(GemmPrecision::F32, 1.0, &Operand::new(&w.fhat, j, d, false)?, &w.w0_rest(hh, d, false), 0.0, &mut w.ut, j, hh)?;
            let args: [&dyn KernelArg; 9] = [
                &w.w0t.device_address(),
                &w.bt.device_address(),
                &p.g1.device_address(),
                &(j as i32),
                &(hh as i32),
                &w.ut.device_address(),
                &w.ug.device_address(),
                &w.suu.device_address(),
                &w.sub.device_address(),
            ];
            self.dev.launch(&self.fold_ln, cfg(j.div_ceil(wpb), PART_THREADS, 0), &args)?;
        }
        let mut na = [0u64; 12];
        let n = *Self::net_args(p, w, &mut na);
        if s.center {
            let args: [&dyn KernelArg; 15] = [&n[0], &n[1], &n[2], &n[3], &n[4], &n[5], &n[6], &n[7], &n[8], &n[9], &n[10], &n[11], &(hh as i32), &(d as i32), &w.h0.device_address()];
            self.dev.launch(&self.ref_fwd, cfg(1, 32, smem_per_warp(hh, d, false)), &args)?;
        }
        let (drop_on, key, thr, scale) = match s.dropout {
            Some((k, t, sc)) => (1i32, k, t, sc),
            None => (0, 0, 0, 1.0),
        };
        let h0 = if s.center { w.h0.device_address() } else { 0 };
        // One warp per chunk of PART_POOL_CHUNK pairs of a cell, then the chunks summed per cell.
        let n_chunks = pool_chunks(b, s.nnz);
        ensure!(w.pool_part.len() >= n_chunks * d && n_chunks <= i32::MAX as usize, "partial: the pool's chunk scratch is too small for B = {b}, nnz = {}", s.nnz);
        // (the tensor-core kernel reads the aligned copies of g₁, b₄, g₅, be₅)
        let pn = if s.tc() { w.tc_net(&n, hh, d)? } else { n };
        let args: [&dyn KernelArg; 26] = [
            &pn[0], &pn[1], &pn[2], &pn[3], &pn[4], &pn[5], &pn[6], &pn[7], &pn[8], &pn[9], &pn[10], &pn[11],
            &(hh as i32),
            &(d as i32),
            &(b as i32),
            &(n_chunks as i32),
            &bt.indptr.device_address(),
            &bt.junction.device_address(),
            &bt.psi.device_address(),
            &addr(p.center),
            &drop_on,
            &key,
            &thr,
            &scale,
            &w.pool_part.device_address(),
            &w.keep.device_address(),
        ];
        if s.grouped {
            self.grouped_pool(s, p, bt, w, n_chunks)?;
        } else if s.tc() {
            // 16 pairs per pass, the second Linear as 16 × 8 × 16 tensor-core tiles; 4 warps per block
            // (4 × 8.8 KiB of tiles at Hh = 256).
            let pw = PART_THREADS as usize / 32;
            let args: Vec<&dyn KernelArg> = args.iter().copied().chain([&w4frag as &dyn KernelArg]).collect();
            self.dev.launch(&self.pool_fwd_tc, cfg(n_chunks.div_ceil(pw), PART_THREADS, pw * tc_smem_per_warp(hh)), &args)?;
        } else {
            // Up to 4 warps (chunks) per block, fewer where their shared memory would pass the 48 KiB
            // a launch gets without opting in (small D with a wide h layer: 32 pairs per warp at a time).
            let pw = fwd_warps_per_block(hh, d);
            self.dev.launch(&self.pool_fwd, cfg(n_chunks.div_ceil(pw), 32 * pw as u32, pw * smem_per_warp(hh, d, false)), &args)?;
        }
        let args: [&dyn KernelArg; 8] = [
            &w.pool_part.device_address(),
            &bt.indptr.device_address(),
            &(b as i32),
            &(d as i32),
            &h0,
            &s.pool_mode,
            &s.divisor,
            &pool.device_address(),
        ];
        self.dev.launch(&self.pool_combine, cfg((b * d).div_ceil(PART_THREADS as usize).max(1), PART_THREADS, 0), &args)
    }

    /// Enqueues the backward from d(pool) (B × D), after [`CudaPartial::forward`] filled `w`; adds into
    /// the gradient buffers.
    pub fn backward(&self, s: &PartialShape, p: &PartialParamsDev<'_>, bt: &PartialBatchDev<'_>, w: &mut PartialWork, dpool: &dyn DeviceMem<f32>, g: &mut PartialGradsDev<'_>) -> Result<()> {
        let _r = crate::nvtx_range!("partial_bwd");
        s.check()?;
        // (the kernels the forward ran)
        let s = &ran_shape(s, w);
        let (j, hh, d, b) = (s.j, s.hh, s.d, s.b);
        ensure!(dpool.elements() == b * d, "partial: dpool has {} entries for {b} × {d}", dpool.elements());
        ensure!(bt.jptr.elements() == j + 1 && bt.order.elements() == s.nnz && bt.cell_of.elements() == s.nnz, "partial: junction-major arrays do not match J = {j}, nnz = {}", s.nnz);
        let nw = bwd_warps(j);
        let wpb = bwd_warps_per_block(hh, d);
        let mut na = [0u64; 12];
        let n = *Self::net_args(p, w, &mut na);
        let (drop_on, scale) = match s.dropout {
            Some((_, _, sc)) => (1i32, sc),
            None => (0, 1.0),
        };
        let args: [&dyn KernelArg; 32] = [
            &n[0], &n[1], &n[2], &n[3], &n[4], &n[5], &n[6], &n[7], &n[8], &n[9], &n[10], &n[11],
            &(hh as i32),
            &(d as i32),
            &(j as i32),
            &(nw as i32),
            &bt.indptr.device_address(),
            &bt.jptr.device_address(),
            &bt.order.device_address(),
            &bt.cell_of.device_address(),
            &bt.psi.device_address(),
            &addr(p.center),
            &dpool.device_address(),
            &s.pool_mode,
            &s.divisor,
            &drop_on,
            &scale,
            &w.keep.device_address(),
            &w.q.device_address(),
            &w.cj.device_address(),
            &w.slots.device_address(),
            &w.slot_d.device_address(),
        ];
        // d W₄ is in every warp's slot, or (tensor cores) in the first slot of each block of w4_stride
        let mut w4_stride = 1usize;
        if s.grouped {
            self.grouped_backward(s, p, bt, w, dpool)?;
        } else if s.tc() && tensor_cores_bwd_fit(hh, d) {
            // 16 pairs of a junction per pass, the three products as mma tiles; the block's warps share
            // d W₄'s accumulator in shared memory.
            let wpb = self.tc_bwd_warps(hh, d)?;
            w4_stride = wpb;
            // each warp's junctions: a contiguous range with an equal share of the passes
            let (jp, pp) = (bt.jptr.device_address(), w.pass_ptr.device_address());
            self.dev.launch(&self.pass_ptr, cfg(1, PART_PASS_THREADS, 0), &[&jp, &(j as i32), &pp])?;
            // d(pool) ÷ each cell's pool divisor, once per cell (the kernel reads two code units at a
            // time: 8-byte loads from the aligned buffer)
            ensure!(w.dps.len() >= b * d, "partial: the d(pool) scratch holds {} entries for {b} × {d}", w.dps.len());
            let dps = w.dps.device_address();
            let (ip, dp) = (bt.indptr.device_address(), dpool.device_address());
            let scale_args: [&dyn KernelArg; 7] = [&dp, &ip, &(b as i32), &(d as i32), &s.pool_mode, &s.divisor, &dps];
            self.dev.launch(&self.dpool_scale, cfg((b * d).div_ceil(PART_THREADS as usize), PART_THREADS, 0), &scale_args)?;
            // W₄'s bf16 fragments, written by the forward's fold
            let w4frag = w.w4frag.device_address();
            let (jptr, order, cell_of, psi) = (bt.jptr.device_address(), bt.order.device_address(), bt.cell_of.device_address(), bt.psi.device_address());
            let (keep, q, cj, slots, slot_d) = (w.keep.device_address(), w.q.device_address(), w.cj.device_address(), w.slots.device_address(), w.slot_d.device_address());
            let center = addr(p.center);
            let n = w.tc_net(&n, hh, d)?;
            let tc_args: [&dyn KernelArg; 31] = [
                &n[0], &n[1], &n[2], &n[3], &n[4], &n[5], &n[6], &n[7], &n[8], &n[9], &n[10], &n[11],
                &(hh as i32),
                &(d as i32),
                &(j as i32),
                &(nw as i32),
                &jptr,
                &order,
                &cell_of,
                &psi,
                &center,
                &dps,
                &drop_on,
                &scale,
                &keep,
                &q,
                &cj,
                &slots,
                &slot_d,
                &w4frag,
                &pp,
            ];
            self.dev.launch(&self.pair_bwd_tc, cfg(nw.div_ceil(wpb), 32 * wpb as u32, tc_bwd_smem(hh, d, wpb)), &tc_args)?;
        } else {
            self.dev.launch(&self.pair_bwd, cfg(nw.div_ceil(wpb), 32 * wpb as u32, wpb * smem_per_warp(hh, d, true)), &args)?;
        }
        // (the grouped kernels' group 0 takes slot nw, the reference code the next)
        let ref_slot = nw + s.grouped as usize;
        if s.center {
            let args: [&dyn KernelArg; 22] = [
                &n[0], &n[1], &n[2], &n[3], &n[4], &n[5], &n[6], &n[7], &n[8], &n[9], &n[10], &n[11],
                &(hh as i32),
                &(d as i32),
                &(b as i32),
                &bt.indptr.device_address(),
                &dpool.device_address(),
                &s.pool_mode,
                &s.divisor,
                &(ref_slot as i32),
                &w.slots.device_address(),
                &w.slot_d.device_address(),
            ];
            self.dev.launch(&self.ref_bwd, cfg(1, 32, smem_per_warp(hh, d, true)), &args)?;
        }
        // d u (J × Hh) and its sums over junctions: by chunks of PART_DU_CHUNK, then groups of chunks.
        let t = PART_THREADS as usize;
        let (n_du, n_slots) = (j.div_ceil(PART_DU_CHUNK), ref_slot + s.center as usize);
        let (n_jgroups, n_slot_groups) = (n_du.div_ceil(PART_GROUP), n_slots.div_ceil(PART_GROUP));
        let sg = n_slot_groups * (slot_len(hh, d) + 2);
        ensure!(w.slot_part.len() >= sg && w.jgroups.len() >= n_jgroups * 3 * hh && w.jpart.len() >= n_du * 3 * hh, "partial: the backward's sum scratch is too small for J = {j}");
        ensure!(w.w0t.len() >= (d + 1) * hh && w.dfh.len() >= j * d, "partial: the W₀ᵀ / d F̂ scratch is too small");
        let args: [&dyn KernelArg; 9] = [
            &w.q.device_address(),
            &w.cj.device_address(),
            &w.ut.device_address(),
            &w.bt.device_address(),
            &p.g1.device_address(),
            &(j as i32),
            &(hh as i32),
            &w.du.device_address(),
            &w.jpart.device_address(),
        ];
        self.dev.launch(&self.unfold_du, cfg((n_du * hh).div_ceil(t).max(1), PART_THREADS, 0), &args)?;
        let args: [&dyn KernelArg; 4] = [&w.jpart.device_address(), &(n_du as i32), &(3 * hh as i32), &w.jgroups.device_address()];
        self.dev.launch(&self.group_sums, cfg((n_jgroups * 3 * hh).div_ceil(t).max(1), PART_THREADS, 0), &args)?;
        {
            use super::gemm::{GemmPrecision, Operand};
            // W₀[:,1:]'s gradient Σ_j du_j ⊗ F̂_j = duᵀ·F̂ (Hh × J · J × D).
            let (a, b) = (Operand::new(&w.du, j, hh, true)?, Operand::new(&w.fhat, j, d, false)?);
            self.gemm.gemm(GemmPrecision::F32, 1.0, &a, &b, 0.0, &mut w.w0_prod, hh, d)?;
            if g.emb.is_some() {
                // d F̂ = du·W₀[:,1:] (J × Hh · Hh × D): W₀[:,1:]ᵀ is rows 1..=D of the forward's W₀ᵀ.
                self.gemm.gemm(GemmPrecision::F32, 1.0, &Operand::new(&w.du, j, hh, false)?, &w.w0_rest(hh, d, true), 0.0, &mut w.dfh, j, d)?;
            }
        }
        if let Some(g_emb) = &g.emb {
            let wpr = t / 32;
            let args: [&dyn KernelArg; 6] = [
                &w.dfh.device_address(),
                &w.fhat.device_address(),
                &w.fnorm.device_address(),
                &(j as i32),
                &(d as i32),
                &g_emb.device_address(),
            ];
            self.dev.launch(&self.unfold_emb, cfg(j.div_ceil(wpr).max(1), PART_THREADS, 0), &args)?;
        }
        // The slots by groups, then every parameter element.
        let args: [&dyn KernelArg; 8] = [
            &w.slots.device_address(),
            &w.slot_d.device_address(),
            &(n_slots as i32),
            &(nw as i32),
            &(w4_stride as i32),
            &(hh as i32),
            &(d as i32),
            &w.slot_part.device_address(),
        ];
        self.dev.launch(&self.slot_sums, cfg(sg.div_ceil(t), PART_THREADS, 0), &args)?;
        let total = 4 * hh + 2 * hh * d + 3 * d;
        // (the grouped kernels' d W₄ over the groups, Sᵀ·A; the slots hold the dropped units' share)
        let w4_prod = if s.grouped { w.w4_prod.device_address() } else { 0 };
        let args: [&dyn KernelArg; 18] = [
            &w.bt.device_address(),
            &p.g1.device_address(),
            &w.slot_part.device_address(),
            &(n_slot_groups as i32),
            &w.jgroups.device_address(),
            &(n_jgroups as i32),
            &w.w0_prod.device_address(),
            &w4_prod,
            &(hh as i32),
            &(d as i32),
            &addr_mut(&g.w0),
            &addr_mut(&g.b0),
            &addr_mut(&g.g1),
            &addr_mut(&g.be1),
            &addr_mut(&g.w4),
            &addr_mut(&g.b4),
            &addr_mut(&g.g5),
            &addr_mut(&g.be5),
        ];
        self.dev.launch(&self.bwd_params, cfg(total.div_ceil(t), PART_THREADS, 0), &args)
    }

    /// The grouping's first half (kernels/partial_grouped.cu): each position's leader, the junctions'
    /// group counts and their prefix, and the group count, read back from the device (one wait: cuBLAS
    /// takes the GEMM's size from the host, and the count picks the kernels). Sets `w.n_groups_host`.
    fn grouped_count(&self, s: &PartialShape, p: &PartialParamsDev<'_>, bt: &PartialBatchDev<'_>, w: &mut PartialWork) -> Result<usize> {
        let _r = crate::nvtx_range!("partial_grouping");
        let (j, hh, d) = (s.j, s.hh, s.d);
        let k = &self.grouped;
        ensure!(bt.jptr.elements() == j + 1 && bt.order.elements() >= s.nnz, "partial: junction-major arrays do not match J = {j}, nnz = {}", s.nnz);
        ensure!(
            w.lead.len() >= s.nnz && w.gid_at.len() >= s.nnz && w.gid_of_pair.len() >= s.nnz && w.gsorted.len() >= s.nnz && w.gcount.len() >= j && w.gptr.len() > j,
            "partial: the scratch was not sized for the grouped kernels (PartialShape::grouped) at nnz = {}",
            s.nnz
        );
        ensure!(hh <= PART_HMAX && d <= PART_DMAX, "partial: the grouped kernels take h_hidden_dim ≤ {PART_HMAX}, code_dim ≤ {PART_DMAX}");
        let (jptr, order, psi, center) = (bt.jptr.device_address(), bt.order.device_address(), bt.psi.device_address(), addr(p.center));
        let (lead, gcount, gptr) = (w.lead.device_address(), w.gcount.device_address(), w.gptr.device_address());
        let ji = j as i32;
        self.dev.launch(&k.find, warps(j), &[&jptr, &order, &psi, &center, &ji, &lead, &gcount])?;
        let n_groups = w.n_groups.device_address();
        self.dev.launch(&k.ptr, cfg(1, PGRP_SCAN_THREADS, 0), &[&gcount, &ji, &gptr, &n_groups])?;
        let g = self.dev.read(&w.n_groups)?[0];
        ensure!(g >= 1 && g as usize <= s.nnz + 1, "partial: {g} groups for {} pairs", s.nnz);
        w.n_groups_host = g as usize;
        Ok(g as usize)
    }

    /// The grouped forward after the fold and [`CudaPartial::grouped_count`]: the group ids, the groups'
    /// first block and y = A·W₄ᵀ, then each chunk's pooled sum into `w.pool_part`. Grows the group
    /// buffers to the group count.
    fn grouped_pool(&self, s: &PartialShape, p: &PartialParamsDev<'_>, bt: &PartialBatchDev<'_>, w: &mut PartialWork, n_chunks: usize) -> Result<()> {
        let _r = crate::nvtx_range!("partial_grouped_fwd");
        let (j, hh, d, b) = (s.j, s.hh, s.d, s.b);
        let k = &self.grouped;
        let g = w.n_groups_host;
        w.grow_groups(self.dev, g, hh, d)?;
        let (jptr, order, psi, center) = (bt.jptr.device_address(), bt.order.device_address(), bt.psi.device_address(), addr(p.center));
        let (lead, gptr) = (w.lead.device_address(), w.gptr.device_address());
        let (ji, hi, di) = (j as i32, hh as i32, d as i32);
        let (gid_at, gid_of_pair, g_jn, g_x) = (w.gid_at.device_address(), w.gid_of_pair.device_address(), w.g_jn.device_address(), w.g_x.device_address());
        let sorted = w.gsorted.device_address();
        self.dev.launch(&k.assign, warps(j), &[&jptr, &order, &psi, &center, &ji, &lead, &gptr, &gid_at, &gid_of_pair, &g_jn, &g_x, &sorted])?;
        let (drop_on, key, thr, scale) = match s.dropout {
            Some((key, thr, sc)) => (1i32, key, thr, sc),
            None => (0, 0, 0, 1.0f32),
        };
        let (ug, bg, suu, sub, sbb) = (w.ug.device_address(), w.bg.device_address(), w.suu.device_address(), w.sub.device_address(), w.sbb.device_address());
        let (g_ab, ga, rpos) = (w.g_ab.device_address(), w.ga.device_address(), w.g_rpos.device_address());
        let be1 = p.be1.device_address();
        self.dev.launch(&k.rows, warps(g), &[&(g as i32), &hi, &g_jn, &g_x, &ug, &bg, &be1, &suu, &sub, &sbb, &scale, &g_ab, &ga, &rpos])?;
        // Y (G × D) = A (G × Hh) · W₄ᵀ (W₄: D × Hh)
        use super::gemm::Operand;
        self.group_gemm(s, &Operand::new(&w.ga, g, hh, false)?, &Operand::new(p.w4, d, hh, true)?, 0.0, &mut w.gy, g, d)?;
        let (ip, gy, w4t, code) = (bt.indptr.device_address(), w.gy.device_address(), w.w4t.device_address(), w.gcode.device_address());
        let (b4, g5, be5) = (p.b4.device_address(), p.g5.device_address(), p.be5.device_address());
        // each group's code without dropped units: every clean pair's
        self.dev.launch(&k.codes, warps(g), &[&(g as i32), &hi, &di, &gy, &b4, &g5, &be5, &code])?;
        let (part, keep) = (w.pool_part.device_address(), w.keep.device_address());
        let args: [&dyn KernelArg; 19] = [&hi, &di, &(b as i32), &(n_chunks as i32), &ip, &gid_of_pair, &ga, &rpos, &code, &gy, &w4t, &b4, &g5, &be5, &drop_on, &key, &thr, &part, &keep];
        self.dev.launch(&k.pool_fwd, warps(n_chunks), &args)
    }

    /// One of the grouped kernels' three products: f32, or TF32 on tensor cores (`s.tensor_cores`).
    #[allow(clippy::too_many_arguments)]
    fn group_gemm(&self, s: &PartialShape, a: &super::gemm::Operand, b: &super::gemm::Operand, beta: f32, c: &mut dyn DeviceMem<f32>, m: usize, n: usize) -> Result<()> {
        if s.tensor_cores {
            self.gemm.gemm_tf32(1.0, a, b, beta, c, m, n)
        } else {
            self.gemm.gemm(super::gemm::GemmPrecision::F32, 1.0, a, b, beta, c, m, n)
        }
    }

    /// The grouped backward up to the slots, Q and the junction scalars (kernels/partial_grouped.cu):
    /// the pair walk into S and the corrections, group 0's sums, d W₄ = Sᵀ·A and d A += S·W₄ as cuBLAS
    /// GEMMs, then each group's first block. The rest (the unfold, the sums over slots) is the per-pair
    /// kernels' own.
    fn grouped_backward(&self, s: &PartialShape, p: &PartialParamsDev<'_>, bt: &PartialBatchDev<'_>, w: &mut PartialWork, dpool: &dyn DeviceMem<f32>) -> Result<()> {
        let _r = crate::nvtx_range!("partial_grouped_bwd");
        let (j, hh, d, b) = (s.j, s.hh, s.d, s.b);
        let k = &self.grouped;
        let g = w.n_groups_host;
        ensure!(w.grouped_ran && g >= 1 && w.group_capacity() >= g, "partial: the grouped backward runs after a grouped forward (none ran on this scratch)");
        let nw = bwd_warps(j);
        ensure!(w.g0part.len() >= nw * (d + hh) && w.w4_prod.len() >= d * hh && w.dps.len() >= b * d, "partial: the grouped backward's scratch is too small");
        let (drop_on, scale) = match s.dropout {
            Some((_, _, sc)) => (1i32, sc),
            None => (0, 1.0f32),
        };
        let (ip, dp, dps) = (bt.indptr.device_address(), dpool.device_address(), w.dps.device_address());
        let scale_args: [&dyn KernelArg; 7] = [&dp, &ip, &(b as i32), &(d as i32), &s.pool_mode, &s.divisor, &dps];
        self.dev.launch(&self.dpool_scale, cfg((b * d).div_ceil(PART_THREADS as usize), PART_THREADS, 0), &scale_args)?;
        let (hi, di, ji, nwi) = (hh as i32, d as i32, j as i32, nw as i32);
        let (jptr, order, cell_of) = (bt.jptr.device_address(), bt.order.device_address(), bt.cell_of.device_address());
        let (gid_at, sorted, gptr, ga, gy, w4t) = (w.gid_at.device_address(), w.gsorted.device_address(), w.gptr.device_address(), w.ga.device_address(), w.gy.device_address(), w.w4t.device_address());
        let (b4, g5, be5) = (p.b4.device_address(), p.g5.device_address(), p.be5.device_address());
        let (keep, gs, gda, slots, g0part) = (w.keep.device_address(), w.gs.device_address(), w.gda.device_address(), w.slots.device_address(), w.g0part.device_address());
        let rpos = w.g_rpos.device_address();
        let args: [&dyn KernelArg; 24] = [&hi, &di, &ji, &nwi, &jptr, &order, &cell_of, &gid_at, &sorted, &gptr, &ga, &rpos, &gy, &w4t, &b4, &g5, &be5, &dps, &drop_on, &keep, &gs, &gda, &slots, &g0part];
        self.dev.launch(&k.pair_bwd, warps(nw), &args)?;
        self.dev.launch(&k.zero_sums, warps(d + hh), &[&hi, &di, &nwi, &g0part, &gs, &gda])?;
        // d W₄ over the groups, Sᵀ·A (D × G · G × Hh), and d A (+)= S·W₄ (G × D · D × Hh): added to the
        // dropped units' corrections with dropout, else written
        use super::gemm::Operand;
        self.group_gemm(s, &Operand::new(&w.gs, g, d, true)?, &Operand::new(&w.ga, g, hh, false)?, 0.0, &mut w.w4_prod, d, hh)?;
        let beta = if s.dropout.is_some() { 1.0 } else { 0.0 };
        self.group_gemm(s, &Operand::new(&w.gs, g, d, false)?, &Operand::new(p.w4, d, hh, false)?, beta, &mut w.gda, g, hh)?;
        let (g_x, g_ab, ug, bg, g1) = (w.g_x.device_address(), w.g_ab.device_address(), w.ug.device_address(), w.bg.device_address(), p.g1.device_address());
        let (q, cj, slot_d) = (w.q.device_address(), w.cj.device_address(), w.slot_d.device_address());
        let args: [&dyn KernelArg; 17] = [&hi, &di, &ji, &nwi, &gptr, &g_x, &g_ab, &ga, &gda, &ug, &bg, &g1, &scale, &q, &cj, &slots, &slot_d];
        self.dev.launch(&k.group_bwd, warps(nw + 1), &args)
    }

    /// Convenience for tests: uploads the twin's inputs, poisons the outputs (pool with NaN; the
    /// gradients start at zero, as the twin's), runs the forward (with `kernels`) and, given `dpool`,
    /// the backward.
    pub fn run_host(&self, pe: &PartialEncP, p: &Params<f32>, spl: &SplBatch, mode: Mode, dpool: &[f32], kernels: PartialKernels) -> Result<PartialHost> {
        let s = kernels.apply(PartialShape::of(pe, p, spl, mode));
        let dev = self.dev;
        let up = |idx: usize| dev.upload(p.get(idx));
        let (emb, w0, b0, g1, be1) = (up(pe.emb)?, up(pe.h0.w)?, up(pe.h0.b.unwrap())?, up(pe.ln1_w)?, up(pe.ln1_b)?);
        let (w4, b4, g5, be5) = (up(pe.h4.w)?, up(pe.h4.b.unwrap())?, up(pe.ln5_w)?, up(pe.ln5_b)?);
        let center = match pe.center {
            Some(ci) => Some(up(ci)?),
            None => None,
        };
        let pd = PartialParamsDev { emb: &emb, w0: &w0, b0: &b0, g1: &g1, be1: &be1, w4: &w4, b4: &b4, g5: &g5, be5: &be5, center: center.as_ref().map(|c| c as &dyn DeviceMem<f32>) };
        let indptr: Vec<i32> = spl.indptr.iter().map(|&v| v as i32).collect();
        let junction: Vec<i32> = spl.junction.iter().map(|&v| v as i32).collect();
        let (jptr, order, cell_of) = junction_major(spl);
        let nz = |v: &[i32]| if v.is_empty() { vec![0i32] } else { v.to_vec() };
        let (ip, jn, ps) = (dev.upload(&indptr)?, dev.upload(&nz(&junction))?, dev.upload(if spl.psi.is_empty() { &[0.0f32][..] } else { &spl.psi[..] })?);
        let (jp, od, co) = (dev.upload(&jptr)?, dev.upload(&nz(&order))?, dev.upload(&nz(&cell_of))?);
        // (an empty minibatch still gets one-element buffers; the kernels never read them)
        let bd = PartialBatchDev { indptr: &ip, junction: &jn, psi: &ps, jptr: &jp, order: &od, cell_of: &co };
        let mut w = PartialWork::alloc(dev, &s)?;
        if s.grouped {
            // room for every pair in its own group, so that the buffers poisoned below are the ones used
            w.grow_groups(dev, s.nnz + 1, s.hh, s.d)?;
            for b in [&mut w.ga, &mut w.gy, &mut w.gcode, &mut w.gs, &mut w.gda, &mut w.g_x, &mut w.g0part, &mut w.w4_prod] {
                dev.memset(b, 0xff)?;
            }
            dev.memset(&mut w.g_ab, 0xff)?;
            dev.memset(&mut w.g_rpos, 0xff)?;
            for b in [&mut w.lead, &mut w.gcount, &mut w.gptr, &mut w.gid_at, &mut w.gid_of_pair, &mut w.g_jn, &mut w.gsorted] {
                dev.memset(b, 0xff)?;
            }
        }
        // The scratch poisoned (all bits set: NaN in f32 and f64), as a reused step buffer may hold
        // anything: what a kernel reads without writing first (a slot's d W₄ that only the block's
        // first warp writes, say) shows up as NaN.
        for b in [&mut w.fhat, &mut w.fnorm, &mut w.ut, &mut w.ug, &mut w.bt, &mut w.bg, &mut w.slots, &mut w.dfh, &mut w.du, &mut w.q, &mut w.w0_prod, &mut w.dps, &mut w.lnp] {
            dev.memset(b, 0xff)?;
        }
        for b in [&mut w.suu, &mut w.sub, &mut w.sbb, &mut w.slot_d, &mut w.slot_part, &mut w.jpart, &mut w.jgroups, &mut w.cj] {
            dev.memset(b, 0xff)?;
        }
        let mut pool = dev.upload(&vec![f32::NAN; s.b * s.d])?;
        let sizes = [p.get(pe.emb).len(), p.get(pe.h0.w).len(), s.hh, s.hh, s.hh, s.d * s.hh, s.d, s.d, s.d];
        let mut gbufs: Vec<DevBuf<f32>> = sizes.iter().map(|&n| dev.zeros(n)).collect::<Result<_>>()?;
        self.forward(&s, &pd, &bd, &mut w, &mut pool)?;
        let dp = dev.upload(dpool)?;
        {
            let mut it = gbufs.iter_mut();
            let mut next = || it.next().map(|b| b as &mut dyn DeviceMem<f32>);
            let mut g = PartialGradsDev { emb: next(), w0: next(), b0: next(), g1: next(), be1: next(), w4: next(), b4: next(), g5: next(), be5: next() };
            self.backward(&s, &pd, &bd, &mut w, &dp, &mut g)?;
        }
        dev.synchronize()?;
        let keep = if s.dropout.is_some() { dev.download(&w.keep)?[..s.nnz * s.keep_words()].to_vec() } else { Vec::new() };
        let h0 = if s.center { Some(dev.download(&w.h0)?) } else { None };
        let mut grads: [Vec<f32>; 9] = Default::default();
        for (o, b) in grads.iter_mut().zip(&gbufs) {
            *o = dev.download(b)?;
        }
        Ok(PartialHost { pool: dev.download(&pool)?, keep, h0, grads, n_groups: w.n_groups_host, grouped_ran: w.grouped_ran })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Junction j's passes go to warp j mod n_warps; a block runs its busiest warp's passes.
    #[test]
    fn tc_bwd_schedule_counts_rounds() {
        // 6 junctions, 6 warps: passes 2, 3, 0, 1, 2, 1 (17, 33, 0, 16, 20, 1 pairs).
        let pairs = [17, 33, 0, 16, 20, 1];
        let one = TcBwdSchedule::of(&pairs, 1, false);
        assert_eq!((one.passes, one.warp_rounds, one.longest, one.blocks), (9, 9, 3, 6));
        assert_eq!(one.idle(), 0.0);
        // blocks [2, 3, 0, 1] and [2, 1, padding, padding]: 3 · 4 + 2 · 4 warp-rounds
        let four = TcBwdSchedule::of(&pairs, 4, false);
        assert_eq!((four.passes, four.warp_rounds, four.longest, four.blocks), (9, 20, 3, 2));
        assert!((four.idle() - 0.55).abs() < 1e-12);
        // more junctions than warps: warp w takes j = w, w + 1024, ...
        let mut many = vec![16; 1030];
        many[1029] = 40;
        let s = TcBwdSchedule::of(&many, 4, false);
        assert_eq!((s.passes, s.longest, s.blocks), (1030 - 1 + 3, 4, 256));
    }

    /// The kernel's partition: warp ⌊(passes before j)·n_warps / P⌋ takes junction j.
    #[test]
    fn tc_bwd_contiguous_schedule_balances() {
        // 6 junctions, 6 warps, P = 9 passes: before = 0, 2, 5, 5, 6, 8 → warps 0, 1, 3, 3, 4, 5
        let pairs = [17, 33, 0, 16, 20, 1];
        let one = TcBwdSchedule::of(&pairs, 1, true);
        assert_eq!((one.passes, one.warp_rounds, one.longest), (9, 9, 3));
        // 2,000 junctions of one pass and one of 20: no warp above ⌈P / n_warps⌉ + 20 passes
        let mut many = vec![16; 2000];
        many[7] = 320;
        let s = TcBwdSchedule::of(&many, 4, true);
        let strided = TcBwdSchedule::of(&many, 4, false);
        assert_eq!(s.passes, 2019);
        assert!(s.longest <= 2019usize.div_ceil(1024) + 20, "{s:?}");
        assert_eq!(strided.longest, 21);
    }

    #[test]
    fn tc_bwd_block_size() {
        // the paper preset's 128 × 64: 44 KiB for one warp, 76 KiB for four
        assert_eq!(tc_bwd_smem(128, 64, 1), 45_456);
        assert_eq!(tc_bwd_smem(128, 64, 4), 77_328);
        assert_eq!(tc_bwd_warps_per_block(128, 64, 48 * 1024, None).unwrap(), 1);
        assert_eq!(tc_bwd_warps_per_block(128, 64, 100 * 1024, None).unwrap(), 4);
        assert_eq!(tc_bwd_warps_per_block(128, 64, 64 * 1024, None).unwrap(), 2);
        assert!(tc_bwd_warps_per_block(128, 64, 48 * 1024, Some(4)).is_err());
        assert_eq!(tc_bwd_warps_per_block(128, 64, 227 * 1024, Some(1)).unwrap(), 1);
    }
}
