//! The model's forward and backward on the CUDA backend: one minibatch through the kernels of
//! kernels/*.cu (sparse first layers, cuBLAS GEMMs with the fused FCLayers epilogue, the partial
//! encoder, the latent step, the fused likelihood kernels, the glue kernels), leaving the loss terms
//! and the gradient of every trainable parameter in one flat device buffer laid out as
//! [`crate::model::Params`] (so the optimizer kernels and checkpoints use it as is).
//!
//! It mirrors [`SpliceVae::forward`] and [`SpliceVae::backward`] op for op; tests/cuda_step.rs checks
//! the loss terms and every gradient against them, under the host emulation (src/cuda/emu.rs) and on a
//! GPU where one exists. **It has never run on a GPU.**
//!
//! Host waits: [`DeviceModel::train_step`] enqueues forward, backward and optimizer and copies the loss
//! terms back once, at its end (the GPU never idles mid-step for the host to launch the backward); only
//! an adversary or the MMD-RBF penalty needs values on the host mid-step. Uploads do not wait (a copy
//! from pageable memory returns once the driver has staged it).
//!
//! Memory: parameters, gradients and optimizer moments in persistent buffers; every other buffer of a
//! step comes from a step arena that is rewound each step (no device allocation in steady state). The
//! minibatch is prepared on the host ([`HostBatch`], made on a second thread while the previous step
//! runs) and copied in one transfer: with the dataset resident on the device ([`DeviceModel::attach_dataset`],
//! [`super::resident`]) that is its cells and their covariates only, and the step gathers the entries
//! and builds the index structures on the device (kernels/gather.cu); otherwise every per-entry array
//! is gathered, indexed and packed on the host (streamed).
//! `--precision bf16` rounds GEMM and sparse-decode operands to bf16 (f32 accumulation), once per step
//! each: a layer's backward reads the bf16 copy of its input its forward made. The epilogues write f32.
//! In bf16 the partial encoder's h network runs on tensor cores (`PartialShape::tensor_cores`).
//!
//! The analyses use the same pieces: [`DeviceModel::latents`] (the encoders and the latent step in
//! evaluation mode) and [`DeviceModel::decode_dense`] (the decoders and kernels/decode_dense.cu).
//!
//! Every model option runs here. The MMD-RBF penalty alone is computed on the host from the B × d
//! posteriors copied back (its bandwidth is a median over all pairs of cells), its gradient copied in.
//!
//! Deterministic: no kernel of the step uses float atomics, so a repeated step gives the same bits
//! (tested). There is no faster non-deterministic mode: the sums it would hand to float atomics run by
//! fixed chunks, and whether atomics would beat them needs a GPU to tell.

use super::decode::CudaDecode;
use super::dense_epilogue::{BnDev, CudaDenseEpilogue};
use super::expr_lik::{CudaExprLik, ExprLikInputs, ExprLikOutputs};
use super::gather::{Bits32, CscOut, CscScratch, CudaGather};
use super::gemm::{CudaGemm, GemmPrecision, Operand};
use super::glue::{Cols, CudaGlue, MapOp};
use super::latent::{penalty_scale, CudaLatent, LatentDevFwd, LatentDevGrads, LatentDevIn, LatentShape};
use super::optim::{CudaOptim, GRAD_NORM_MAX_BLOCKS};
use super::partial::{junction_major, CudaPartial, PartialKernels, PartialBatchDev, PartialGradsDev, PartialParamsDev, PartialShape, PartialWork};
use super::runtime::{CudaDevice, DevBuf, DeviceMem, StagingBuf, StagingPool};
use super::resident::{DevCsr, DeviceDataset, ResidentIndex};
use super::sparse_linear::{CudaSparseLinear, SparseDev};
use super::splicing_lik::{CudaSplicingLik, DevGroups, SplLikInputs, SplLikOutputs};
use crate::model::arch::{BnP, ExprDecP, FcLayers, LinearP, SplDecP, SplEncP};
use crate::model::config::*;
use crate::model::dense_epilogue::{BnMode, Epilogue};
use crate::model::expr_lik::ScaleAct;
use crate::model::latent_step::Mix;
use crate::data::Dataset;
use crate::model::ops::{Mode, Sparse};
use crate::model::rng::{self, DropStream};
use crate::model::spl_lik::{AtseGroups, ConcIndex};
use crate::model::tensor::Mat;
use crate::model::vae::{expression_input_values, sparse_input, LIB_EPS, PARTIAL_VAR_EPS};
use crate::model::{Batch, Grads, Noise, Params, SpliceVae, StepOptions};
use crate::optim::{AdamConfig, AdamState};
use anyhow::{bail, ensure, Context, Result};
use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::Arc;

/// Why the CUDA step cannot run this configuration, or None. Every model option is implemented today
/// (callers still ask, so that an option added to the CPU model first is refused here by name).
pub fn unsupported(_cfg: &ModelConfig, _dims: &Dims) -> Option<String> {
    None
}

/// A typed window of device memory: a step-arena allocation, part of the packed minibatch, or an entry
/// of the parameter / gradient buffers. Valid until the next step rewinds the arena.
#[derive(Debug)]
pub struct TView<T> {
    addr: u64,
    len: usize,
    _t: PhantomData<T>,
}

impl<T> Clone for TView<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for TView<T> {}

impl<T> TView<T> {
    fn new(addr: u64, len: usize) -> Self {
        TView { addr, len, _t: PhantomData }
    }
    /// A second view of `m`'s memory (for a launch whose input and output are the same buffer).
    pub fn of(m: &dyn DeviceMem<T>) -> Self {
        TView::new(m.device_address(), m.elements())
    }
}

impl<T> DeviceMem<T> for TView<T> {
    fn device_address(&self) -> u64 {
        self.addr
    }
    fn elements(&self) -> usize {
        self.len
    }
}

/// An f32 step buffer.
type Buf = TView<f32>;

/// Device scratch of the step: a bump allocator over device chunks, rewound at every step. When a step
/// needed more than one chunk, the rewind replaces them by one chunk of the total, so that steady-state
/// steps allocate nothing on the device (design.md §4).
#[derive(Default)]
struct StepArena {
    chunks: Vec<DevBuf<u8>>,
    cur: usize,
    off: usize,
    /// Bytes handed out since the last rewind.
    used: usize,
}

/// Every allocation starts on this boundary.
const STEP_ALIGN: usize = 256;

impl StepArena {
    fn alloc<T>(&mut self, dev: &CudaDevice, n: usize) -> Result<TView<T>> {
        let bytes = (n.max(1) * std::mem::size_of::<T>()).next_multiple_of(STEP_ALIGN);
        self.used += bytes;
        loop {
            if let Some(c) = self.chunks.get(self.cur) {
                if self.off + bytes <= c.len() {
                    let v = TView::new(c.device_address() + self.off as u64, n);
                    self.off += bytes;
                    return Ok(v);
                }
                self.cur += 1;
                self.off = 0;
                continue;
            }
            let last = self.chunks.last().map_or(0, |c| c.len());
            let size = bytes.max(2 * last).max(1 << 20);
            self.chunks.push(dev.zeros::<u8>(size).context("growing the step arena")?);
        }
    }

    /// Frees everything handed out (the previous step's work must be finished).
    fn rewind(&mut self, dev: &CudaDevice) -> Result<()> {
        if self.chunks.len() > 1 {
            let total = self.used.next_multiple_of(1 << 20);
            self.chunks.clear();
            self.chunks.push(dev.zeros::<u8>(total).context("consolidating the step arena")?);
        }
        self.cur = 0;
        self.off = 0;
        self.used = 0;
        Ok(())
    }

    fn bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).sum()
    }
}

/// The minibatch's host arrays packed into one buffer, copied to the device in one transfer.
#[derive(Default)]
struct Pack {
    bytes: Vec<u8>,
}

impl Pack {
    /// Appends `v`; returns its (byte offset, length).
    fn push<T: bytemuck::Pod>(&mut self, v: &[T]) -> (usize, usize) {
        let off = self.bytes.len().next_multiple_of(STEP_ALIGN);
        self.bytes.resize(off, 0);
        self.bytes.extend_from_slice(bytemuck::cast_slice(v));
        (off, v.len())
    }
}

/// What one FCLayers block kept for its backward.
struct BlockTape {
    /// The block's dense input [main | covariates] (None: the sparse first layer).
    x: Option<Buf>,
    n_in: usize,
    n_main: usize,
    n_out: usize,
    y0: Buf,
    pre: Buf,
    ln_inv: Buf,
    epi: Epilogue,
    /// BatchNorm: the statistics the forward used (mean, 1/std; H each) and the block's BnP.
    bn: Option<(Buf, Buf, BnP)>,
}

/// The input of an FCLayers.
enum FcIn<'a> {
    Dense(&'a Buf),
    /// CSR of the first layer's sparse input (its CSC goes to the backward).
    Sparse { csr: SparseDev<'a> },
}

/// The minibatch on the device.
struct DevBatch {
    b: usize,
    /// The per-entry arrays.
    e: EntryViews,
    library: Buf,
    mask_e: TView<u8>,
    mask_s: TView<u8>,
    expr_weight: Buf,
    /// B ones (the bias broadcast of the Linear heads).
    ones: Buf,
    // decoders' covariates (one-hots), B × cov_w
    cov: Option<Buf>,
    cov_w: usize,
    // continuous covariates (B × n_cont), and [cont | one-hots] for FCLayers that take both
    cont: Option<Buf>,
    cov_cont: Option<Buf>,
    n_cont: usize,
    eps_joint: Buf,
    /// Softmax modality weights: the table row each cell reads (B; 0 for `equal` / `universal` and for
    /// the mean row of unseen cells), and 0..=B (the gathers' pointers and row ids).
    w_row: TView<i32>,
    iota: TView<i32>,
    /// `cell` weights: the minibatch's cells grouped by table row (CSR over the n_obs rows), or, for
    /// unseen cells (the mean row), every table row reading entry 0 (n_obs + 1 pointers, n_obs zeros
    /// and ones).
    w_grad: Option<(TView<i32>, TView<i32>, Buf)>,
    /// gene-batch / gene-label dispersion: the one-hot of each cell's code (B × levels).
    disp_onehot: Option<(Buf, usize)>,
}

/// The per-entry arrays of a [`DevBatch`] (from the pack, or gathered on the device).
struct EntryViews {
    // expression: CSR of the raw counts (likelihood)
    x_ptr: TView<i64>,
    x_idx: TView<u32>,
    x_val: Buf,
    // the expression encoders' sparse input: the counts (transformed), with `encode_covariates` the
    // continuous covariates and one-hots as extra columns; CSR and CSC
    xe_ptr: TView<i64>,
    xe_idx: TView<u32>,
    xe_val: Buf,
    xe_cptr: TView<i64>,
    xe_crow: TView<u32>,
    xe_cval: Buf,
    // splicing entries: CSR by cell (i64 and i32 pointers), junction (u32 and i32), PSI, counts
    s_ptr64: TView<i64>,
    s_ptr32: TView<i32>,
    s_junc: TView<u32>,
    s_junc32: TView<i32>,
    s_psi: Buf,
    s_k: Buf,
    s_n: Buf,
    // junction-major order (jptr over J, entry ids, cell of each entry)
    jptr: TView<i32>,
    jorder: TView<i32>,
    cell_of: TView<i32>,
    // the vanilla splicing encoder's sparse input (ψ, and the covariates as for expression): CSR, CSC
    ps_ptr: TView<i64>,
    ps_idx: TView<u32>,
    ps_val: Buf,
    ps_cptr: TView<i64>,
    ps_crow: TView<u32>,
    ps_cval: Buf,
    // DM grouping
    g_cell: Option<TView<i64>>,
    g_grp: Option<TView<i64>>,
    g_ord: Option<TView<u32>>,
    // concentration targets: CSR over log_phi entries of the batch entries
    conc_ptr: TView<i32>,
    conc_ids: TView<i32>,
}

/// (byte offset, length) of one array in a [`HostBatch`]'s pack.
type Part = (usize, usize);

/// The per-entry arrays of a minibatch packed on the host (the streamed path).
#[derive(Clone, Copy)]
struct EntryParts {
    x_ptr: Part,
    x_idx: Part,
    x_val: Part,
    xe_ptr: Part,
    xe_idx: Part,
    xe_val: Part,
    xe_cptr: Part,
    xe_crow: Part,
    xe_cval: Part,
    s_ptr64: Part,
    s_ptr32: Part,
    s_junc: Part,
    s_junc32: Part,
    s_psi: Part,
    s_k: Part,
    s_n: Part,
    jptr: Part,
    jorder: Part,
    cell_of: Part,
    ps_ptr: Part,
    ps_idx: Part,
    ps_val: Part,
    ps_cptr: Part,
    ps_crow: Part,
    ps_cval: Part,
    conc_ptr: Part,
    conc_ids: Part,
    groups: Option<(Part, Part, Part)>,
}

/// A minibatch whose entries are gathered on the device from the resident dataset: its cells (packed
/// as u32) and the sizes of what the gather writes.
#[derive(Clone, Copy)]
struct ResidentCells {
    cells: Part,
    x_nnz: usize,
    xe_nnz: usize,
    ps_nnz: usize,
    n_groups: usize,
    /// The concentration targets' pointers when the host knows them (a scalar φ: [0, nnz]).
    conc_ptr: Option<Part>,
}

/// A minibatch prepared on the host for the device step: every array the kernels read, packed into
/// one buffer (one copy per step), plus what the loss terms need on the host. Built without a device,
/// so it can be made ahead of the step that uses it. Either every per-entry array is in the pack (the
/// streamed path, [`HostBatch::build`]) or only the cells are, and the step gathers the entries from
/// the dataset resident on the device ([`HostBatch::build_resident`]).
pub struct HostBatch {
    b: usize,
    nnz: usize,
    pack: Pack,
    /// Bytes in the pack (also once it has moved to `staged`).
    pack_len: usize,
    /// The pack in a staging buffer ([`HostBatch::stage`]): copied without the host waiting.
    staged: Option<StagingBuf>,
    entries: Option<EntryParts>,
    resident: Option<ResidentCells>,
    library: Part,
    mask_e: Part,
    mask_s: Part,
    expr_weight: Part,
    ones: Part,
    eps: Part,
    cov: Option<Part>,
    cov_w: usize,
    cont: Option<Part>,
    cov_cont: Option<Part>,
    n_cont: usize,
    w_row: Part,
    iota: Part,
    w_grad: Option<(Part, Part, Part)>,
    /// `cell` weights of cells without a table row: the mean row.
    w_mean: bool,
    /// `cell` weights, some cells seen in training and some not (an analysis of other data): the unseen
    /// cells' `w_row` is n_obs, a mean row appended to a copy of the table (forward only).
    w_mixed: bool,
    disp_onehot: Option<(Part, usize)>,
    /// MMD-RBF: ε of the expression and the splicing samples (host only).
    mmd_eps: Option<(Vec<f32>, Vec<f32>)>,
    mask_e_host: Vec<bool>,
    mask_s_host: Vec<bool>,
}

/// The encoders' sparse inputs where they are not the likelihood's CSRs: the expression encoder's
/// values transformed by `expression_input`, and with `encode_covariates` [cont | one-hots] as extra
/// columns of it and of the vanilla splicing encoder's ψ (the CPU model's own `sparse_input` +
/// `concat_sparse`). None: the likelihood's CSR itself.
pub(crate) struct EncoderInputs {
    /// Transformed expression values (the counts' sparsity pattern), without covariate columns.
    pub xe_vals: Option<Vec<f32>>,
    pub xe_cov: Option<Sparse<f32>>,
    pub ps_cov: Option<Sparse<f32>>,
}

impl EncoderInputs {
    pub(crate) fn of(m: &SpliceVae, batch: &Batch) -> EncoderInputs {
        let cfg = &m.cfg;
        let e = &batch.expr;
        let raw_input = cfg.expression_input == ExpressionInput::Raw;
        let xe_vals: Option<Vec<f32>> = (!raw_input).then(|| expression_input_values(cfg.expression_input, &e.indptr, &e.values).into_owned());
        let xe_v: &[f32] = xe_vals.as_deref().unwrap_or(&e.values);
        let enc_cov = cfg.encode_covariates && (batch.n_cont > 0 || m.arch.dec_cats.iter().sum::<usize>() > 0);
        let cov_all = m.cov(batch);
        let with_cov = |indptr: &[usize], indices: &[u32], values: &[f32], n_cols: usize| {
            let s = sparse_input::<f32>(indptr, indices, values, n_cols, batch, batch.n_cont);
            cov_all.concat_sparse(&s, 0, &m.arch.dec_cats)
        };
        let xe_cov = enc_cov.then(|| with_cov(&e.indptr, &e.indices, xe_v, e.n_cols));
        let vanilla_spl = matches!(m.arch.z_enc_spl, SplEncP::Vanilla(_));
        let spl = &batch.spl;
        let ps_cov = (enc_cov && vanilla_spl).then(|| with_cov(&spl.indptr, &spl.junction, &spl.psi, spl.n_junctions));
        EncoderInputs { xe_vals, xe_cov, ps_cov }
    }
}

/// The cell-level arrays of a minibatch, pushed into `pk` (shared by both paths).
struct CellParts {
    library: Part,
    mask_e: Part,
    mask_s: Part,
    expr_weight: Part,
    ones: Part,
    eps: Part,
    cov: Option<Part>,
    cov_w: usize,
    cont: Option<Part>,
    cov_cont: Option<Part>,
    n_cont: usize,
    w_row: Part,
    iota: Part,
    w_grad: Option<(Part, Part, Part)>,
    w_mean: bool,
    w_mixed: bool,
    disp_onehot: Option<(Part, usize)>,
    mmd_eps: Option<(Vec<f32>, Vec<f32>)>,
}

fn cell_parts(m: &SpliceVae, batch: &Batch, opts: &StepOptions, mask_e_host: &[bool], mask_s_host: &[bool], pk: &mut Pack) -> Result<CellParts> {
    let cfg = &m.cfg;
    let b = batch.n_cells();
    let inv_b = 1.0 / b as f64;
    let expr_weight: Vec<f32> = mask_e_host.iter().map(|&mk| if mk { inv_b as f32 } else { 0.0 }).collect();
    let library: Vec<f32> = batch.library.iter().map(|&s| ((s as f64) + LIB_EPS).ln() as f32).collect();
    let cov_all = m.cov(batch);
    // Decoder covariates: [one-hot of each categorical with more than one level].
    let cov_w: usize = m.arch.dec_cats.iter().sum();
    let empty = Mat::<f32>::zeros(b, 0);
    let cov = if cov_w > 0 {
        let c = cov_all.concat_dense(&empty, 0, &m.arch.dec_cats);
        ensure!(c.cols == cov_w, "decoder covariates: {} columns, expected {cov_w}", c.cols);
        Some(c.data)
    } else {
        None
    };
    // Continuous covariates: the decoders' inputs [latent | cont], and [cont | one-hots] for the
    // partial encoder's MLP with encode_covariates.
    let n_cont = batch.n_cont;
    let cov_cont = (n_cont > 0).then(|| cov_all.concat_dense(&empty, n_cont, &m.arch.dec_cats).data);
    // The step's noise, as the CPU model draws it: the joint sample's on the device, the per-modality
    // samples' on the host for MMD-RBF.
    let (eps_e, eps_s, eps_j) = m.noise::<f32>(b, opts)?;
    let mmd_eps = (cfg.modality_penalty == ModalityPenalty::MmdRbf && cfg.modality_weights != ModalityWeights::Concatenate).then(|| (eps_e.data, eps_s.data));
    // Softmax modality weights: the table row of each cell, and the CSR that sends each cell's d(raw)
    // back to its row (`cell`).
    let iota: Vec<i32> = (0..=b as i32).collect();
    let (w_row, w_grad, w_mean, w_mixed) = match (cfg.modality_weights, &batch.cell_idx) {
        (ModalityWeights::Cell, Some(ci)) if !ci.iter().all(|&r| r == u32::MAX) => {
            let n_obs = m.dims.n_obs;
            if let Some((i, &r)) = ci.iter().enumerate().find(|(_, &r)| r != u32::MAX && r as usize >= n_obs) {
                bail!("cell {i} has cell_idx {r} but the per-cell weight table has {n_obs} rows");
            }
            if ci.contains(&u32::MAX) {
                // unseen cells (u32::MAX) read row n_obs, the mean row the forward appends
                (ci.iter().map(|&r| if r == u32::MAX { n_obs as i32 } else { r as i32 }).collect(), None, false, true)
            } else {
                let (ptr, ids) = group_by(ci, n_obs);
                (ci.iter().map(|&r| r as i32).collect(), Some((ptr, ids, vec![1f32; b])), false, false)
            }
        }
        // no cell seen in training (no cell_idx, or every one u32::MAX)
        (ModalityWeights::Cell, _) => {
            let n_obs = m.dims.n_obs;
            (vec![0i32; b], Some(((0..=n_obs as i32).collect(), vec![0i32; n_obs], vec![1f32; n_obs])), true, false)
        }
        _ => (vec![0i32; b], None, false, false),
    };
    // gene-batch / gene-label dispersion: θ of each cell is its code's column of px_r (G × levels),
    // gathered by a GEMM with the codes' one-hot (exact: one non-zero product per entry).
    let disp_onehot = match cfg.dispersion {
        Dispersion::GeneBatch | Dispersion::GeneLabel => {
            let (codes, n) = if cfg.dispersion == Dispersion::GeneBatch { (&batch.batch, m.dims.n_batch) } else { (&batch.labels, m.dims.n_labels) };
            let mut oh = vec![0f32; b * n];
            for (i, &c) in codes.iter().enumerate() {
                ensure!((c as usize) < n, "cell {i} has code {c} for the dispersion covariate, which has {n} levels");
                oh[i * n + c as usize] = 1.0;
            }
            Some((oh, n))
        }
        _ => None,
    };
    let u8s = |v: &[bool]| v.iter().map(|&x| x as u8).collect::<Vec<u8>>();
    Ok(CellParts {
        library: pk.push(&library),
        mask_e: pk.push(&u8s(mask_e_host)),
        mask_s: pk.push(&u8s(mask_s_host)),
        expr_weight: pk.push(&expr_weight),
        ones: pk.push(&vec![1f32; b]),
        eps: pk.push(&eps_j.data),
        cov: cov.as_ref().map(|c| pk.push(c)),
        cov_w,
        cont: (n_cont > 0).then(|| pk.push(&batch.cont)),
        cov_cont: cov_cont.as_ref().map(|c| pk.push(c)),
        n_cont,
        w_row: pk.push(&w_row),
        iota: pk.push(&iota),
        w_grad: w_grad.as_ref().map(|(p, i, w)| (pk.push(p), pk.push(i), pk.push(w))),
        w_mean,
        w_mixed,
        disp_onehot: disp_onehot.as_ref().map(|(oh, n)| (pk.push(oh), *n)),
        mmd_eps,
    })
}

impl HostBatch {
    /// Everything the device step of `model` needs from `batch` (with `opts`' noise).
    pub fn build(m: &SpliceVae, batch: &Batch, opts: &StepOptions) -> Result<HostBatch> {
        batch.check(m.dims.n_genes, m.dims.n_junctions)?;
        ensure!(batch.n_cells() > 0, "empty minibatch");
        ensure!(batch.cats.len() == m.dims.n_cats_per_cov.len() && batch.n_cont == m.dims.n_cont, "minibatch covariates do not match the model");
        let cfg = &m.cfg;
        let b = batch.n_cells();
        let e = &batch.expr;
        let x_ptr: Vec<i64> = e.indptr.iter().map(|&v| v as i64).collect();
        let raw_input = cfg.expression_input == ExpressionInput::Raw;
        let mask_e_host: Vec<bool> = (0..b).map(|i| e.row(i).1.iter().map(|&v| v as f64).sum::<f64>() > 0.0).collect();
        // The encoders' inputs: the likelihood's CSRs, or (transformed / with covariate columns) their own.
        let enc = EncoderInputs::of(m, batch);
        let xe_v: &[f32] = enc.xe_vals.as_deref().unwrap_or(&e.values);
        let spl = &batch.spl;
        let mask_s_host: Vec<bool> =
            if cfg.mask_cells_without_splicing { (0..b).map(|i| !spl.cell_range(i).is_empty()).collect() } else { vec![true; b] };
        let vanilla_spl = matches!(m.arch.z_enc_spl, SplEncP::Vanilla(_));
        let conc = ConcIndex::for_loss(cfg.splicing_loss_type, cfg.dm_concentration);
        let n_targets = m.layout.entries[m.arch.log_phi].len.max(1);
        let uses_conc = matches!(cfg.splicing_loss_type, SplicingLoss::DirichletMultinomial | SplicingLoss::BetaBinomial);
        // The index structures are independent: built side by side.
        let ((xe_csc, (jm, ps_csc)), (groups, (conc_ptr, conc_ids))) = rayon::join(
            || {
                rayon::join(
                    || match &enc.xe_cov {
                        Some(s) => csc(b, s.cols, &s.indptr, &s.indices, &s.values),
                        None => csc(b, e.n_cols, &e.indptr, &e.indices, xe_v),
                    },
                    || {
                        // The splicing encoder's CSC only for the vanilla encoder (its sparse first layer).
                        let ps = vanilla_spl.then(|| match &enc.ps_cov {
                            Some(s) => csc(b, s.cols, &s.indptr, &s.indices, &s.values),
                            None => csc(b, spl.n_junctions, &spl.indptr, &spl.junction, &spl.psi),
                        });
                        (junction_major(spl), ps)
                    },
                )
            },
            || {
                rayon::join(
                    || match cfg.splicing_loss_type {
                        SplicingLoss::DirichletMultinomial => AtseGroups::build(spl, &m.junc2atse, &m.atse_ptr).map(Some),
                        _ => Ok(None),
                    },
                    // Concentration targets of the entries, grouped (counting sort, entries in order).
                    || if uses_conc { conc_targets(spl, conc, &m.junc2atse, n_targets) } else { (vec![0i32; n_targets + 1], Vec::new()) },
                )
            },
        );
        let groups = groups?;
        let (cptr, crow, cval) = xe_csc;
        let (jptr, jorder, cell_of) = jm;
        let (pcptr, pcrow, pcval) = ps_csc.unwrap_or_else(|| (vec![0i64; spl.n_junctions + 1], Vec::new(), Vec::new()));
        let i32s = |v: &[usize]| v.iter().map(|&x| x as i32).collect::<Vec<i32>>();
        let i64s = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<i64>>();
        // Every array into one host buffer and one copy.
        let mut pk = Pack::default();
        let x_ptr_p = pk.push(&x_ptr);
        let x_idx_p = pk.push(&e.indices);
        let x_val_p = pk.push(&e.values);
        let (xe_ptr_p, xe_idx_p, xe_val_p) = match &enc.xe_cov {
            Some(s) => (pk.push(&i64s(&s.indptr)), pk.push(&s.indices), pk.push(&s.values)),
            // Raw counts in: the encoder's values are the likelihood's (one copy).
            None => (x_ptr_p, x_idx_p, if raw_input { x_val_p } else { pk.push(xe_v) }),
        };
        let xe_cptr_p = pk.push(&cptr);
        let xe_crow_p = pk.push(&crow);
        let xe_cval_p = pk.push(&cval);
        let s_ptr64_p = pk.push(&i64s(&spl.indptr));
        let s_ptr32_p = pk.push(&i32s(&spl.indptr));
        let s_junc_p = pk.push(&spl.junction);
        let s_psi_p = pk.push(&spl.psi);
        let (ps_ptr_p, ps_idx_p, ps_val_p) = match &enc.ps_cov {
            Some(sc) => (pk.push(&i64s(&sc.indptr)), pk.push(&sc.indices), pk.push(&sc.values)),
            None => (s_ptr64_p, s_junc_p, s_psi_p),
        };
        let entries = EntryParts {
            x_ptr: x_ptr_p,
            x_idx: x_idx_p,
            x_val: x_val_p,
            xe_ptr: xe_ptr_p,
            xe_idx: xe_idx_p,
            xe_val: xe_val_p,
            xe_cptr: xe_cptr_p,
            xe_crow: xe_crow_p,
            xe_cval: xe_cval_p,
            s_ptr64: s_ptr64_p,
            s_ptr32: s_ptr32_p,
            s_junc: s_junc_p,
            // The same bits as i32 (junction ids < 2³¹, checked by Batch::check against J).
            s_junc32: s_junc_p,
            s_psi: s_psi_p,
            s_k: pk.push(&spl.k),
            s_n: pk.push(&spl.n),
            jptr: pk.push(&jptr),
            jorder: pk.push(&jorder),
            cell_of: pk.push(&cell_of),
            ps_ptr: ps_ptr_p,
            ps_idx: ps_idx_p,
            ps_val: ps_val_p,
            ps_cptr: pk.push(&pcptr),
            ps_crow: pk.push(&pcrow),
            ps_cval: pk.push(&pcval),
            conc_ptr: pk.push(&conc_ptr),
            conc_ids: pk.push(&conc_ids),
            groups: groups.as_ref().map(|g| (pk.push(&i64s(&g.cell_ptr)), pk.push(&i64s(&g.grp_ptr)), pk.push(&g.ord))),
        };
        let cp = cell_parts(m, batch, opts, &mask_e_host, &mask_s_host, &mut pk)?;
        Ok(HostBatch::assemble(b, spl.nnz(), pk, Some(entries), None, cp, mask_e_host, mask_s_host))
    }

    /// The minibatch of dataset rows `cells` for a model whose dataset is resident on the device
    /// ([`DeviceModel::attach_dataset`] with this `index`): only the cell-level arrays and the cells are
    /// packed; the step gathers the entries on the device. `with_cell_idx` as [`Batch::from_dataset`].
    pub fn build_resident(m: &SpliceVae, ds: &Dataset, index: &ResidentIndex, cells: &[usize], with_cell_idx: bool, opts: &StepOptions) -> Result<HostBatch> {
        ensure!(index.n_cells == ds.n_cells(), "the resident dataset has {} cells, this one {}", index.n_cells, ds.n_cells());
        Self::build_resident_from(m, &Batch::cells_only(ds, cells, with_cell_idx)?, index, cells, opts)
    }

    /// [`Self::build_resident`] from the cells-only minibatch of `cells` ([`Batch::cells_only`]), for a
    /// caller that keeps it.
    pub fn build_resident_from(m: &SpliceVae, batch: &Batch, index: &ResidentIndex, cells: &[usize], opts: &StepOptions) -> Result<HostBatch> {
        ensure!(!cells.is_empty(), "empty minibatch");
        ensure!(batch.n_cells() == cells.len(), "a cells-only minibatch of {} cells for {} cells", batch.n_cells(), cells.len());
        if let Some(&c) = cells.iter().find(|&&c| c >= index.n_cells) {
            bail!("cell {c} is not in the dataset ({} cells)", index.n_cells);
        }
        ensure!(batch.cats.len() == m.dims.n_cats_per_cov.len() && batch.n_cont == m.dims.n_cont, "minibatch covariates do not match the model");
        let b = cells.len();
        let len = |p: &[i64], c: usize| (p[c + 1] - p[c]) as usize;
        let nnz: usize = cells.iter().map(|&c| len(&index.s_ptr, c)).sum();
        let x_nnz: usize = cells.iter().map(|&c| len(&index.x_ptr, c)).sum();
        let xe_nnz: usize = index.xe_ptr.as_ref().map_or(x_nnz, |p| cells.iter().map(|&c| len(p, c)).sum());
        let ps_nnz: usize = index.ps_ptr.as_ref().map_or(nnz, |p| cells.iter().map(|&c| len(p, c)).sum());
        let n_groups: usize = index.g_ptr.as_ref().map_or(0, |p| cells.iter().map(|&c| len(p, c)).sum());
        ensure!(nnz <= i32::MAX as usize && x_nnz <= i32::MAX as usize, "a minibatch of {nnz} observed junctions / {x_nnz} expression entries (at most 2³¹ − 1)");
        let mask_e_host: Vec<bool> = cells.iter().map(|&c| index.has_expr[c]).collect();
        let mask_s_host: Vec<bool> = if m.cfg.mask_cells_without_splicing { cells.iter().map(|&c| index.has_spl[c]).collect() } else { vec![true; b] };
        let mut pk = Pack::default();
        let cells_u32: Vec<u32> = cells.iter().map(|&c| c as u32).collect();
        let cells_p = pk.push(&cells_u32);
        let scalar_conc = m.cfg.splicing_loss_type == SplicingLoss::DirichletMultinomial && m.cfg.dm_concentration == DmConcentration::Scalar;
        let conc_ptr = scalar_conc.then(|| pk.push(&[0i32, nnz as i32]));
        let res = ResidentCells { cells: cells_p, x_nnz, xe_nnz, ps_nnz, n_groups, conc_ptr };
        let cp = cell_parts(m, batch, opts, &mask_e_host, &mask_s_host, &mut pk)?;
        Ok(HostBatch::assemble(b, nnz, pk, None, Some(res), cp, mask_e_host, mask_s_host))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        b: usize,
        nnz: usize,
        pack: Pack,
        entries: Option<EntryParts>,
        resident: Option<ResidentCells>,
        cp: CellParts,
        mask_e_host: Vec<bool>,
        mask_s_host: Vec<bool>,
    ) -> HostBatch {
        HostBatch {
            b,
            nnz,
            pack_len: pack.bytes.len(),
            pack,
            staged: None,
            entries,
            resident,
            library: cp.library,
            mask_e: cp.mask_e,
            mask_s: cp.mask_s,
            expr_weight: cp.expr_weight,
            ones: cp.ones,
            eps: cp.eps,
            cov: cp.cov,
            cov_w: cp.cov_w,
            cont: cp.cont,
            cov_cont: cp.cov_cont,
            n_cont: cp.n_cont,
            w_row: cp.w_row,
            iota: cp.iota,
            w_grad: cp.w_grad,
            w_mean: cp.w_mean,
            w_mixed: cp.w_mixed,
            disp_onehot: cp.disp_onehot,
            mmd_eps: cp.mmd_eps,
            mask_e_host,
            mask_s_host,
        }
    }

    /// Bytes copied to the device per step.
    pub fn bytes(&self) -> usize {
        self.pack_len
    }

    /// Moves the pack into a staging buffer from `pool` (page-locked on a GPU), so that the step only
    /// enqueues its copy and the host goes on launching kernels. The preparation thread does this; the
    /// step's thread gives the buffer back ([`Self::take_staged`]) once the step has finished.
    pub fn stage(&mut self, pool: &StagingPool) -> Result<()> {
        let mut buf = pool.take(self.pack_len);
        buf.fill(&self.pack.bytes)?;
        self.pack.bytes = Vec::new();
        self.staged = Some(buf);
        Ok(())
    }

    /// The staging buffer, for its pool (after the step that copied it).
    pub fn take_staged(&mut self) -> Option<StagingBuf> {
        self.staged.take()
    }

    /// Whether the entries are gathered on the device from the resident dataset.
    pub fn is_resident(&self) -> bool {
        self.resident.is_some()
    }
}

/// Column-major index of a CSR matrix: (column pointers as i64, row of each entry, value).
fn csc(rows: usize, cols: usize, indptr: &[usize], indices: &[u32], values: &[f32]) -> (Vec<i64>, Vec<u32>, Vec<f32>) {
    let mut ptr = vec![0i64; cols + 1];
    for &c in indices {
        ptr[c as usize + 1] += 1;
    }
    for i in 0..cols {
        ptr[i + 1] += ptr[i];
    }
    let mut pos: Vec<i64> = ptr[..cols].to_vec();
    let mut row = vec![0u32; indices.len()];
    let mut val = vec![0f32; indices.len()];
    for r in 0..rows {
        for e in indptr[r]..indptr[r + 1] {
            let c = indices[e] as usize;
            row[pos[c] as usize] = r as u32;
            val[pos[c] as usize] = values[e];
            pos[c] += 1;
        }
    }
    (ptr, row, val)
}

/// The batch's entries grouped by concentration target (CSR over the `n_targets` log φ entries, each
/// target's entries in order).
fn conc_targets(spl: &crate::model::SplBatch, conc: ConcIndex, junc2atse: &[u32], n_targets: usize) -> (Vec<i32>, Vec<i32>) {
    let target: Vec<u32> = spl.junction.iter().map(|&jj| conc.target(jj as usize, junc2atse).min(n_targets - 1) as u32).collect();
    group_by(&target, n_targets)
}

/// Items grouped by their target (< n_targets): a CSR over the targets (n_targets + 1 pointers) and
/// the item ids, each target's in order (a counting sort).
fn group_by(target: &[u32], n_targets: usize) -> (Vec<i32>, Vec<i32>) {
    let mut ptr = vec![0i32; n_targets + 1];
    for &t in target {
        ptr[t as usize + 1] += 1;
    }
    for t in 0..n_targets {
        ptr[t + 1] += ptr[t];
    }
    let mut fill: Vec<i32> = ptr[..n_targets].to_vec();
    let mut ids = vec![0i32; target.len()];
    for (e, &t) in target.iter().enumerate() {
        ids[fill[t as usize] as usize] = e as i32;
        fill[t as usize] += 1;
    }
    (ptr, ids)
}

/// The posterior means of a minibatch (row-major): the joint qz_m (B × L), the expression and the
/// splicing encoders' means (B × d each), as `SpliceVae::inference_only` gives them.
pub struct DeviceLatents {
    pub qz_m: Vec<f32>,
    pub mu_e: Vec<f32>,
    pub mu_s: Vec<f32>,
    /// The joint posterior's variance (B × L) and the library (B; log size factor or the library
    /// encoder's), for posterior samples and the decode.
    pub qz_v: Vec<f32>,
    pub library: Vec<f32>,
}

/// The analyses' dense decode of a minibatch (row-major), as `SpliceVae::decode_dense` gives them.
pub struct DeviceDecode {
    /// Splicing probabilities of every junction (B × J), when asked for.
    pub p: Option<Vec<f32>>,
    /// Expression scale (B × G), when asked for.
    pub px_scale: Option<Vec<f32>>,
}

/// The loss terms of one step (per cell as the CPU model reports them).
#[derive(Clone, Debug)]
pub struct DeviceStepOutput {
    /// Expression reconstruction loss × mask, splicing loss × weight, KL of the joint posterior.
    pub rl_expr: Vec<f32>,
    pub rl_spl: Vec<f32>,
    pub kl: Vec<f32>,
    pub penalty: f64,
    pub concentration_prior: f64,
    /// `splicing_decoder_prior` and `splicing_decoder_effect_prior` (0 when off).
    pub decoder_prior: f64,
    pub decoder_effect_prior: f64,
    /// mean(RL_e + RL_s + κ KL) + penalty + priors, as `StepOutput::loss`.
    pub loss: f64,
    /// The sampled joint latent z (B × L): the adversary's input.
    pub z: Vec<f32>,
}

impl DeviceStepOutput {
    fn empty() -> Self {
        DeviceStepOutput { rl_expr: vec![], rl_spl: vec![], kl: vec![], penalty: 0.0, concentration_prior: 0.0, decoder_prior: 0.0, decoder_effect_prior: 0.0, loss: f64::NAN, z: vec![] }
    }
}

/// The model's parameters and gradients on one device, and the step that fills the gradients.
pub struct DeviceModel<'d> {
    dev: &'d CudaDevice,
    model: Arc<SpliceVae>,
    /// Host copy of the parameters as uploaded: the partial encoder's pool divisor is read from it, and
    /// `download_params` fills its layout.
    host: Params<f32>,
    pub params: DevBuf<f32>,
    pub grads: DevBuf<f32>,
    junc2atse: DevBuf<u32>,
    /// The junctions of each ATSE (CSR over A) for the dense decode.
    atse_ptr: DevBuf<i64>,
    atse_junc: DevBuf<u32>,
    gemm: CudaGemm<'d>,
    decode: CudaDecode<'d>,
    epi: CudaDenseEpilogue<'d>,
    sparse: CudaSparseLinear<'d>,
    partial: CudaPartial<'d>,
    latent: CudaLatent<'d>,
    expr: CudaExprLik<'d>,
    spl: CudaSplicingLik<'d>,
    glue: CudaGlue<'d>,
    optim: CudaOptim<'d>,
    gather: CudaGather<'d>,
    /// The dataset on the device ([`Self::attach_dataset`]), for resident minibatches.
    resident: Option<DeviceDataset>,
    /// Staging buffers for streamed minibatches ([`HostBatch::stage`]).
    staging: Arc<StagingPool>,
    /// Every buffer of a step (activations, gradients of activations, the packed minibatch).
    arena: RefCell<StepArena>,
    /// The partial encoder's scratch, kept across steps (regrown when a minibatch has more entries).
    partial_work: RefCell<Option<(PartialShape, PartialWork)>>,
    /// BatchNorm running-statistics updates of this step's forward (training): (new value, entry),
    /// written into the parameters once the step goes on to its backward. A `num_batches_tracked`
    /// entry comes with the B ones of the minibatch: its first one is added.
    bn_pending: RefCell<Vec<(Buf, usize)>>,
    /// Set by [`Self::latents`]: the forward stops after the latent step and leaves the posterior means
    /// here.
    latents_only: Option<RefCell<Option<[Vec<f32>; 5]>>>,
    /// Fill step buffers with NaN before use, so that an element a kernel fails to write shows up
    /// (tests; one memset per buffer).
    pub poison: bool,
    /// GEMM operands (and the sparse splicing decode's S and W) in f32, or rounded to bf16 with f32
    /// accumulation (`--precision bf16`). Everything else, parameters and optimizer state included,
    /// stays f32.
    pub precision: GemmPrecision,
    /// The partial encoder's h network once per group of pairs with the same input (kernels/
    /// partial_grouped.cu: one more wait for the device per forward, for the group count) rather than
    /// once per pair. From `SPLICEVI_PARTIAL_KERNELS` ([`PartialKernels::grouped_by_default`]).
    pub partial_grouped: bool,
    /// bf16: convert each GEMM operand once per step and keep the copy (on by default; off for tests).
    pub bf16_reuse: bool,
    /// How the splicing decoder's output layer meets the likelihood: the SDDMM over the observed
    /// entries, or the dense B × J GEMM ([`SplicingDecode`]; `--splicing-decode`, default auto).
    pub splicing_decode: SplicingDecode,
    /// The step's bf16 operand copies by (address, rows, cols, stride).
    bf16_cache: RefCell<std::collections::HashMap<(u64, usize, usize, usize), u64>>,
}

/// The splicing decoder's output layer (S·Wᵀ + b, J outputs) in the training step.
/// - `Sparse`: the SDDMM (design.md §3 kernel 3): a logit for each observed entry only, from one row of
///   W per entry, and backward row gathers (d S: a W row per entry; d W: an S row per entry). Its
///   traffic grows with the entries: about 3 · nnz · K · 4 bytes through L2 per step.
/// - `Dense`: the B × J products S·Wᵀ from one GEMM that splicing_lik reads per entry (adding the
///   bias), and for the backward d(logits) scattered into a zeroed B × J matrix G and the Linear's two
///   GEMMs (d S = G·W, d W = Gᵀ·S; d b from the entries as the sparse path): about 5 · B · J · 4 bytes
///   per step (written, read, zeroed, read twice), independent of K, on the tensor cores in bf16. The
///   rule below counts 7 to leave room for bf16's operand copies.
/// - `Auto`: dense where 7 · B · J < 3 · nnz · K, i.e. where more than 7 / (3K) of the minibatch's cell
///   × junction entries are observed (2% at K = 128). An estimate of memory traffic, not a measurement:
///   `bench --splicing-decode` and the kernel profile compare the two on a GPU.
/// Both are deterministic; their sums run in different orders (f32 round-off apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplicingDecode {
    Auto,
    Sparse,
    Dense,
}

impl std::str::FromStr for SplicingDecode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(SplicingDecode::Auto),
            "sparse" => Ok(SplicingDecode::Sparse),
            "dense" => Ok(SplicingDecode::Dense),
            o => Err(format!("invalid splicing decode `{o}`: expected auto, sparse or dense")),
        }
    }
}

impl SplicingDecode {
    /// Whether a minibatch of `b` cells with `nnz` entries over `j` junctions, decoder input width `k`,
    /// takes the dense decode.
    pub fn dense_for(self, b: usize, j: usize, nnz: usize, k: usize) -> bool {
        match self {
            SplicingDecode::Sparse => false,
            SplicingDecode::Dense => true,
            SplicingDecode::Auto => 7 * (b as u128) * (j as u128) < 3 * (nnz as u128) * (k as u128),
        }
    }
}

static SPLICING_DECODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The process' choice (`--splicing-decode`, a global option of the CLI); new device models take it.
pub fn set_splicing_decode(d: SplicingDecode) {
    SPLICING_DECODE.store(d as u8, std::sync::atomic::Ordering::Relaxed);
}

pub fn splicing_decode() -> SplicingDecode {
    match SPLICING_DECODE.load(std::sync::atomic::Ordering::Relaxed) {
        1 => SplicingDecode::Sparse,
        2 => SplicingDecode::Dense,
        _ => SplicingDecode::Auto,
    }
}

/// A non-finite gradient met by the optimizer (nothing was updated): the message names the first
/// parameter that has one. (A type of its own, so that callers tell it from a device failure.)
#[derive(Debug)]
pub struct NonFiniteGradient(pub String);

impl std::fmt::Display for NonFiniteGradient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NonFiniteGradient {}

/// The optimizer step of a [`DeviceModel::train_step`]: the state, the settings, the step number
/// (1-based, the optimizer's count after incrementing) and the gradient clip.
pub struct Update<'a> {
    pub adam: &'a mut DeviceAdam,
    pub config: &'a AdamConfig,
    pub step: u64,
    pub clip: Option<f32>,
}

/// AdamW moments on the device (over the trainable parameters) and the clipping scratch.
pub struct DeviceAdam {
    exp_avg: DevBuf<f32>,
    exp_avg_sq: DevBuf<f32>,
    partials: DevBuf<f64>,
    /// (global norm, clip scale) of the last step.
    norm: DevBuf<f32>,
    sumsq: DevBuf<f64>,
}

impl<'d> DeviceModel<'d> {
    /// Uploads `params`; errors (with the reason) for configurations the CUDA step does not implement.
    pub fn new(dev: &'d CudaDevice, model: &SpliceVae, params: &Params<f32>) -> Result<Self> {
        if let Some(why) = unsupported(&model.cfg, &model.dims) {
            bail!(why);
        }
        ensure!(params.layout.total == model.layout.total, "parameters do not match the model's layout");
        let j2a = if model.junc2atse.is_empty() { vec![0u32] } else { model.junc2atse.clone() };
        Ok(DeviceModel {
            dev,
            model: Arc::new(model.clone()),
            host: params.clone(),
            params: dev.upload(&params.data)?,
            grads: dev.zeros(model.layout.n_trainable.max(1))?,
            junc2atse: dev.upload(&j2a)?,
            atse_ptr: dev.upload(&model.atse_ptr.iter().map(|&v| v as i64).collect::<Vec<i64>>())?,
            atse_junc: dev.upload(&if model.atse_junc.is_empty() { vec![0u32] } else { model.atse_junc.clone() })?,
            gemm: CudaGemm::new(dev)?,
            decode: CudaDecode::new(dev)?,
            epi: CudaDenseEpilogue::new(dev)?,
            sparse: CudaSparseLinear::new(dev)?,
            partial: CudaPartial::new(dev)?,
            latent: CudaLatent::new(dev)?,
            expr: CudaExprLik::new(dev)?,
            spl: CudaSplicingLik::new(dev)?,
            glue: CudaGlue::new(dev)?,
            optim: CudaOptim::new(dev)?,
            gather: CudaGather::new(dev)?,
            resident: None,
            staging: dev.staging_pool(),
            arena: RefCell::new(StepArena::default()),
            partial_work: RefCell::new(None),
            bn_pending: RefCell::new(Vec::new()),
            latents_only: None,
            poison: false,
            precision: GemmPrecision::F32,
            partial_grouped: PartialKernels::grouped_by_default()?,
            bf16_reuse: true,
            splicing_decode: splicing_decode(),
            bf16_cache: RefCell::new(std::collections::HashMap::new()),
        })
    }

    /// Bytes the step arena holds (after a step: what a step of this size needs).
    pub fn arena_bytes(&self) -> usize {
        self.arena.borrow().bytes()
    }

    /// Device memory held, by use: one line for logs (the step arena's size is known after a step).
    pub fn memory_summary(&self, adam: Option<&DeviceAdam>) -> String {
        let mb = |b: usize| b as f64 / (1u64 << 20) as f64;
        let moments = adam.map_or(0, |a| 4 * (a.exp_avg.len() + a.exp_avg_sq.len()));
        let work = self.partial_work.borrow().as_ref().map_or(0, |(_, w)| w.bytes());
        format!(
            "device memory: parameters {:.1} MiB, gradients {:.1} MiB, optimizer moments {:.1} MiB, step arena {:.1} MiB, partial-encoder scratch {:.1} MiB, resident dataset {:.1} MiB",
            mb(4 * self.params.len()),
            mb(4 * self.grads.len()),
            mb(moments),
            mb(self.arena_bytes()),
            mb(work),
            mb(self.resident_bytes())
        )
    }

    /// Waits for the device's queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.dev.synchronize()
    }

    /// Replaces the device gradients (for tests of [`Self::optimizer_step`]).
    pub fn upload_grads(&mut self, g: &Grads<f32>) -> Result<()> {
        ensure!(g.data.len() == self.model.layout.n_trainable, "gradients do not match the model's layout");
        let mut v = Buf::new(self.grads.device_address(), g.data.len());
        self.dev.write(&g.data, &mut v)
    }

    /// Optimizer moments on the device, from `state` (zeros for a fresh run).
    pub fn adam_state(&self, state: &AdamState) -> Result<DeviceAdam> {
        let n = self.model.layout.n_trainable;
        ensure!(state.len() == n, "optimizer state has {} entries for {n} parameters", state.len());
        let one = |v: &[f32]| if v.is_empty() { vec![0f32] } else { v.to_vec() };
        Ok(DeviceAdam {
            exp_avg: self.dev.upload(&one(&state.exp_avg))?,
            exp_avg_sq: self.dev.upload(&one(&state.exp_avg_sq))?,
            partials: self.dev.zeros(GRAD_NORM_MAX_BLOCKS)?,
            norm: self.dev.zeros(2)?,
            sumsq: self.dev.zeros(1)?,
        })
    }

    /// The device moments copied back, with step count `step`.
    pub fn download_adam(&self, a: &DeviceAdam, step: u64) -> Result<AdamState> {
        let n = self.model.layout.n_trainable;
        let mut m = self.dev.download(&a.exp_avg)?;
        let mut v = self.dev.download(&a.exp_avg_sq)?;
        m.truncate(n);
        v.truncate(n);
        Ok(AdamState { exp_avg: m, exp_avg_sq: v, step })
    }

    /// One optimizer step on the device over the gradients of the last [`Self::forward_backward`]:
    /// the global norm (and, with `clip`, the scale that brings it to at most `clip`), then AdamW with
    /// the scalars of step number `step` (1-based). A non-finite gradient is an error naming the first
    /// parameter that has one, and nothing is updated. Returns the gradient norm.
    /// ([`Self::train_step`] runs it as part of the step, with one wait for the device in all.)
    pub fn optimizer_step(&mut self, adam: &mut DeviceAdam, config: &AdamConfig, step: u64, clip: Option<f32>) -> Result<f64> {
        let sumsq = self.optimizer_enqueue(adam, config, step, clip)?;
        let sumsq = self.dev.read(&sumsq)?[0];
        if !sumsq.is_finite() {
            return Err(self.non_finite_gradient()?.into());
        }
        Ok(sumsq.sqrt())
    }

    /// Enqueues the optimizer step of [`Self::optimizer_step`] without waiting: the norm, then AdamW,
    /// which skips every update when the gradient's sum of squares is not finite (so a bad gradient
    /// changes nothing, though the host learns of it only when it next reads). Returns the device
    /// scalar holding that f64 sum of squares.
    fn optimizer_enqueue(&mut self, adam: &mut DeviceAdam, config: &AdamConfig, step: u64, clip: Option<f32>) -> Result<TView<f64>> {
        let _r = crate::nvtx_range!("optimizer");
        let n = self.model.layout.n_trainable;
        if n == 0 {
            self.dev.memset(&mut adam.sumsq, 0)?;
            return Ok(TView::of(&adam.sumsq));
        }
        let g = Buf::new(self.grads.device_address(), n);
        self.optim.grad_norm(&g, None, clip.unwrap_or(f32::MAX), &mut adam.partials, &mut adam.norm, Some(&mut adam.sumsq))?;
        let mut p = Buf::new(self.params.device_address(), n);
        let mut m = Buf::new(adam.exp_avg.device_address(), n);
        let mut v = Buf::new(adam.exp_avg_sq.device_address(), n);
        let scale = clip.map(|_| (&adam.norm as &dyn DeviceMem<f32>, 1usize));
        self.optim.adam_step(config, step, &mut p, &g, &mut m, &mut v, None, scale, Some(&adam.sumsq))?;
        Ok(TView::of(&adam.sumsq))
    }

    /// The error for a non-finite gradient: the first parameter that has one (copies the gradients back).
    fn non_finite_gradient(&self) -> Result<NonFiniteGradient> {
        let n = self.model.layout.n_trainable;
        let all = self.dev.download(&self.grads)?;
        let i = all[..n].iter().position(|v| !v.is_finite()).unwrap_or(0);
        let name = self.model.layout.entries.iter().find(|e| e.kind.trainable() && e.offset <= i && i < e.offset + e.len).map(|e| e.name.clone()).unwrap_or_default();
        Ok(NonFiniteGradient(format!("non-finite gradient of `{name}` (entry {i}) on the device")))
    }

    /// Replaces the device parameters by `params`.
    pub fn upload_params(&mut self, params: &Params<f32>) -> Result<()> {
        self.host = params.clone();
        self.dev.write(&params.data, &mut self.params)
    }

    /// The device parameters, copied back.
    pub fn download_params(&self) -> Result<Params<f32>> {
        let mut p = self.host.clone();
        p.data = self.dev.download(&self.params)?;
        Ok(p)
    }

    /// The gradients of the last step, copied back.
    pub fn download_grads(&self) -> Result<Grads<f32>> {
        let mut g = Grads::zeros(self.model.layout.clone());
        let all = self.dev.download(&self.grads)?;
        let n = g.data.len();
        g.data.copy_from_slice(&all[..n]);
        Ok(g)
    }

    fn p(&self, idx: usize) -> Buf {
        let e = &self.model.layout.entries[idx];
        Buf::new(self.params.device_address() + (e.offset * 4) as u64, e.len)
    }

    /// The gradient slot of a trainable entry.
    fn g(&self, idx: usize) -> Buf {
        let e = &self.model.layout.entries[idx];
        debug_assert!(e.kind.trainable());
        Buf::new(self.grads.device_address() + (e.offset * 4) as u64, e.len)
    }

    /// A step buffer every element of which the caller writes (NaN-filled when `poison`).
    fn nan(&self, n: usize) -> Result<Buf> {
        let mut b: Buf = self.arena.borrow_mut().alloc(self.dev, n)?;
        if self.poison {
            self.dev.memset(&mut b, 0xff)?;
        }
        Ok(b)
    }

    /// The partial encoder's scratch for `shape` and the shape it was sized for: the kept one when it is
    /// large enough (put both back with `partial_work.replace`), else a new one with a quarter more room
    /// for entries.
    fn take_partial_work(&self, shape: &PartialShape) -> Result<(PartialShape, PartialWork)> {
        if let Some((cap, w)) = self.partial_work.borrow_mut().take() {
            if (cap.j, cap.hh, cap.d, cap.grouped) == (shape.j, shape.hh, shape.d, shape.grouped) && cap.nnz >= shape.nnz && cap.b >= shape.b {
                return Ok((cap, w));
            }
        }
        let cap = PartialShape { nnz: shape.nnz + shape.nnz / 4, ..*shape };
        Ok((cap, PartialWork::alloc(self.dev, &cap)?))
    }

    /// A zero-filled step buffer.
    fn zeros<T>(&self, n: usize) -> Result<TView<T>> {
        let mut b: TView<T> = self.arena.borrow_mut().alloc(self.dev, n)?;
        self.dev.memset(&mut b, 0)?;
        Ok(b)
    }

    /// A step buffer holding `data`.
    fn upload_step<T: bytemuck::Pod + cudarc::driver::DeviceRepr>(&self, data: &[T]) -> Result<TView<T>> {
        let mut b: TView<T> = self.arena.borrow_mut().alloc(self.dev, data.len())?;
        self.dev.write(data, &mut b)?;
        Ok(b)
    }

    /// A typed step buffer every element of which a kernel writes (poisoned when `poison`).
    fn scratch<T>(&self, n: usize) -> Result<TView<T>> {
        let mut v: TView<T> = self.arena.borrow_mut().alloc(self.dev, n)?;
        if self.poison {
            self.dev.memset(&mut v, 0xff)?;
        }
        Ok(v)
    }

    /// Keeps `ds` on the device: minibatches built by [`HostBatch::build_resident`] gather their
    /// entries from it.
    pub fn attach_dataset(&mut self, ds: DeviceDataset) {
        self.resident = Some(ds);
    }

    /// The staging buffers of streamed minibatches (shared with the thread that prepares them).
    pub fn staging_pool(&self) -> Arc<StagingPool> {
        self.staging.clone()
    }

    /// The resident dataset's host index (for [`HostBatch::build_resident`]), when one is attached.
    pub fn resident_index(&self) -> Option<Arc<ResidentIndex>> {
        self.resident.as_ref().map(|d| d.index.clone())
    }

    /// Device bytes of the resident dataset (0 when none).
    pub fn resident_bytes(&self) -> usize {
        self.resident.as_ref().map_or(0, |d| d.bytes())
    }

    /// The packed minibatch on the device (one copy into the step arena); a resident one's entries
    /// gathered from the dataset on the device.
    fn upload_batch(&self, host: &HostBatch) -> Result<DevBatch> {
        let (dev, hb) = (self.dev, host);
        let mut base: TView<u8> = self.arena.borrow_mut().alloc(dev, hb.pack_len)?;
        match &hb.staged {
            // enqueued: the step's kernels queue behind it while the host goes on
            Some(buf) => dev.write_staged(buf, &mut base)?,
            None => dev.write(&hb.pack.bytes, &mut base)?,
        }
        fn at<T>(base: &TView<u8>, (off, len): (usize, usize)) -> TView<T> {
            TView::new(base.addr + off as u64, len)
        }
        let e = match (&hb.entries, &hb.resident) {
            (Some(p), None) => EntryViews {
                x_ptr: at(&base, p.x_ptr),
                x_idx: at(&base, p.x_idx),
                x_val: at(&base, p.x_val),
                xe_ptr: at(&base, p.xe_ptr),
                xe_idx: at(&base, p.xe_idx),
                xe_val: at(&base, p.xe_val),
                xe_cptr: at(&base, p.xe_cptr),
                xe_crow: at(&base, p.xe_crow),
                xe_cval: at(&base, p.xe_cval),
                s_ptr64: at(&base, p.s_ptr64),
                s_ptr32: at(&base, p.s_ptr32),
                s_junc: at(&base, p.s_junc),
                s_junc32: at(&base, p.s_junc32),
                s_psi: at(&base, p.s_psi),
                s_k: at(&base, p.s_k),
                s_n: at(&base, p.s_n),
                jptr: at(&base, p.jptr),
                jorder: at(&base, p.jorder),
                cell_of: at(&base, p.cell_of),
                ps_ptr: at(&base, p.ps_ptr),
                ps_idx: at(&base, p.ps_idx),
                ps_val: at(&base, p.ps_val),
                ps_cptr: at(&base, p.ps_cptr),
                ps_crow: at(&base, p.ps_crow),
                ps_cval: at(&base, p.ps_cval),
                g_cell: p.groups.map(|g| at(&base, g.0)),
                g_grp: p.groups.map(|g| at(&base, g.1)),
                g_ord: p.groups.map(|g| at(&base, g.2)),
                conc_ptr: at(&base, p.conc_ptr),
                conc_ids: at(&base, p.conc_ids),
            },
            (None, Some(rc)) => self.gather_entries(hb, rc, at(&base, rc.cells), rc.conc_ptr.map(|p| at(&base, p)))?,
            _ => bail!("a minibatch with both or neither of packed and resident entries"),
        };
        Ok(DevBatch {
            b: hb.b,
            e,
            library: at(&base, hb.library),
            mask_e: at(&base, hb.mask_e),
            mask_s: at(&base, hb.mask_s),
            expr_weight: at(&base, hb.expr_weight),
            ones: at(&base, hb.ones),
            cov: hb.cov.map(|c| at(&base, c)),
            cov_w: hb.cov_w,
            cont: hb.cont.map(|c| at(&base, c)),
            cov_cont: hb.cov_cont.map(|c| at(&base, c)),
            n_cont: hb.n_cont,
            eps_joint: at(&base, hb.eps),
            w_row: at(&base, hb.w_row),
            iota: at(&base, hb.iota),
            w_grad: hb.w_grad.map(|(p, i, w)| (at(&base, p), at(&base, i), at(&base, w))),
            disp_onehot: hb.disp_onehot.map(|(p, n)| (at(&base, p), n)),
        })
    }

    /// A resident minibatch's per-entry arrays, gathered and indexed on the device (kernels/gather.cu):
    /// the same arrays, in the same order, as [`HostBatch::build`] packs (tests/cuda_step.rs compares
    /// them bit for bit).
    fn gather_entries(&self, hb: &HostBatch, rc: &ResidentCells, cells: TView<u32>, conc_ptr_host: Option<TView<i32>>) -> Result<EntryViews> {
        let _r = crate::nvtx_range!("minibatch gather");
        let ds = self.resident.as_ref().context("a minibatch prepared for the resident dataset, but none is on the device")?;
        let m = &*self.model;
        let (cfg, k) = (&m.cfg, &self.gather);
        let (b, nnz, j_n) = (hb.b, hb.nnz, m.dims.n_junctions);
        let idx = &ds.index;
        // A CSR gathered from the dataset: pointers, columns, values, each entry's row.
        let gather_csr = |src: &DevCsr, n: usize| -> Result<(TView<i64>, TView<u32>, Buf, TView<i32>)> {
            let mut ptr = self.scratch::<i64>(b + 1)?;
            k.scan_rows(&src.ptr, &cells, b, &mut ptr, None)?;
            let (ci, cv, mut row) = (self.scratch::<u32>(n)?, self.scratch::<f32>(n)?, self.scratch::<i32>(n)?);
            k.gather_rows(&src.ptr, &cells, b, &ptr, n, &[(Bits32::of(&src.idx), Bits32::of(&ci)), (Bits32::of(&src.val), Bits32::of(&cv))], Some(&mut row))?;
            Ok((ptr, ci, cv, row))
        };
        // The stable CSC of a gathered CSR of `cols` columns: pointers (i64), rows, values.
        let csc_of = |row: &TView<i32>, col: &TView<u32>, val: &Buf, n: usize, cols: usize| -> Result<(TView<i64>, TView<u32>, Buf)> {
            let (words, counts) = CscScratch::sizes(b, cols);
            let (mut mask, mut toff, mut cnt) = (self.scratch::<u32>(words)?, self.scratch::<i32>(words)?, self.scratch::<i32>(counts)?);
            let (mut cptr, mut crow, mut cval) = (self.scratch::<i64>(cols + 1)?, self.scratch::<u32>(n)?, self.scratch::<f32>(n)?);
            k.csc(
                row,
                col,
                Some(val),
                n,
                b,
                cols,
                CscScratch { mask: &mut mask, tile_off: &mut toff, count: &mut cnt },
                CscOut { cptr: &mut cptr, cptr32: None, row: Some(&mut crow), val: Some(&mut cval), ord: None },
            )?;
            Ok((cptr, crow, cval))
        };
        // expression: the counts, the encoder's input (its own CSR or the counts'), its CSC
        let (x_ptr, x_idx, x_val, x_row) = gather_csr(&ds.x, rc.x_nnz)?;
        let (xe_ptr, xe_idx, xe_val, xe_row) = match &ds.xe {
            Some(src) => gather_csr(src, rc.xe_nnz)?,
            None => (x_ptr, x_idx, x_val, x_row),
        };
        let (xe_cptr, xe_crow, xe_cval) = csc_of(&xe_row, &xe_idx, &xe_val, rc.xe_nnz, idx.xe_cols)?;
        // splicing entries
        let (mut s_ptr64, mut s_ptr32) = (self.scratch::<i64>(b + 1)?, self.scratch::<i32>(b + 1)?);
        k.scan_rows(&ds.s_ptr, &cells, b, &mut s_ptr64, Some(&mut s_ptr32))?;
        let (s_junc, s_psi, s_k, s_n) = (self.scratch::<u32>(nnz)?, self.scratch::<f32>(nnz)?, self.scratch::<f32>(nnz)?, self.scratch::<f32>(nnz)?);
        let mut cell_of = self.scratch::<i32>(nnz)?;
        let pairs = [
            (Bits32::of(&ds.s_junc), Bits32::of(&s_junc)),
            (Bits32::of(&ds.s_psi), Bits32::of(&s_psi)),
            (Bits32::of(&ds.s_k), Bits32::of(&s_k)),
            (Bits32::of(&ds.s_n), Bits32::of(&s_n)),
        ];
        k.gather_rows(&ds.s_ptr, &cells, b, &s_ptr64, nnz, &pairs, Some(&mut cell_of))?;
        // junction-major order: the entries' CSC by junction (entry ids)
        let (words, counts) = CscScratch::sizes(b, j_n);
        let (mut mask, mut toff, mut cnt) = (self.scratch::<u32>(words)?, self.scratch::<i32>(words)?, self.scratch::<i32>(counts)?);
        let (mut jptr64, mut jptr, mut jorder) = (self.scratch::<i64>(j_n + 1)?, self.scratch::<i32>(j_n + 1)?, self.scratch::<i32>(nnz)?);
        k.csc(
            &cell_of,
            &s_junc,
            None,
            nnz,
            b,
            j_n,
            CscScratch { mask: &mut mask, tile_off: &mut toff, count: &mut cnt },
            CscOut { cptr: &mut jptr64, cptr32: Some(&mut jptr), row: None, val: None, ord: Some(&mut jorder) },
        )?;
        // the vanilla splicing encoder's input (ψ, or its own CSR with covariate columns) and its CSC
        let vanilla = matches!(m.arch.z_enc_spl, SplEncP::Vanilla(_));
        let (ps_ptr, ps_idx, ps_val, ps_row) = match &ds.ps {
            Some(src) => gather_csr(src, rc.ps_nnz)?,
            None => (s_ptr64, s_junc, s_psi, cell_of),
        };
        let (ps_cptr, ps_crow, ps_cval) =
            if vanilla { csc_of(&ps_row, &ps_idx, &ps_val, rc.ps_nnz, idx.ps_cols)? } else { (TView::new(0, 0), TView::new(0, 0), TView::new(0, 0)) };
        // Dirichlet-multinomial: the ATSE groups
        let dm = cfg.splicing_loss_type == SplicingLoss::DirichletMultinomial;
        let conc = ConcIndex::for_loss(cfg.splicing_loss_type, cfg.dm_concentration);
        let mut groups = None;
        let mut by_atse = None;
        if dm {
            let g = ds.groups.as_ref().context("the resident dataset has no ATSE groups (uploaded for another loss)")?;
            let ng = rc.n_groups;
            let mut g_cell = self.scratch::<i64>(b + 1)?;
            k.scan_rows(&g.ptr, &cells, b, &mut g_cell, None)?;
            let (mut g_grp, mut g_ord) = (self.scratch::<i64>(ng + 1)?, self.scratch::<u32>(nnz)?);
            let per_atse = conc == ConcIndex::Atse;
            let (mut g_row, mut g_atse) = if per_atse { (Some(self.scratch::<i32>(ng)?), Some(self.scratch::<u32>(ng)?)) } else { (None, None) };
            k.gather_groups(
                &g.ptr,
                &cells,
                b,
                &g_cell,
                &ds.s_ptr,
                &s_ptr64,
                &g.start_rel,
                &g.atse,
                &g.ord_rel,
                &mut g_grp,
                &mut g_ord,
                g_row.as_mut().map(|v| v as &mut dyn DeviceMem<i32>),
                g_atse.as_mut().map(|v| v as &mut dyn DeviceMem<u32>),
            )?;
            if let (Some(g_row), Some(g_atse)) = (g_row, g_atse) {
                // The entries by ATSE: the groups' CSC by ATSE, then each group's entries.
                let n_atse = self.atse_ptr.len() - 1;
                let (words, counts) = CscScratch::sizes(b, n_atse);
                let (mut mask, mut toff, mut cnt) = (self.scratch::<u32>(words)?, self.scratch::<i32>(words)?, self.scratch::<i32>(counts)?);
                let (mut gcptr, mut gorder) = (self.scratch::<i64>(n_atse + 1)?, self.scratch::<i32>(ng)?);
                k.csc(
                    &g_row,
                    &g_atse,
                    None,
                    ng,
                    b,
                    n_atse,
                    CscScratch { mask: &mut mask, tile_off: &mut toff, count: &mut cnt },
                    CscOut { cptr: &mut gcptr, cptr32: None, row: None, val: None, ord: Some(&mut gorder) },
                )?;
                let (mut ecount, mut p64, mut ptr, mut ids) = (self.scratch::<i32>(n_atse.max(1))?, self.scratch::<i64>(n_atse + 1)?, self.scratch::<i32>(n_atse + 1)?, self.scratch::<i32>(nnz)?);
                k.group_entries(&gcptr, &gorder, &g_grp, &g_ord, n_atse, &mut ecount, &mut p64, &mut ptr, &mut ids)?;
                by_atse = Some((ptr, ids));
            }
            groups = Some((g_cell, g_grp, g_ord));
        }
        // The concentration targets (CSR over log φ of the entries, each target's entries in order).
        let uses_conc = matches!(cfg.splicing_loss_type, SplicingLoss::DirichletMultinomial | SplicingLoss::BetaBinomial);
        let n_targets = m.layout.entries[m.arch.log_phi].len.max(1);
        let (conc_ptr, conc_ids) = match (uses_conc, conc) {
            (false, _) => (TView::new(0, 0), TView::new(0, 0)),
            (true, ConcIndex::Scalar) => {
                let mut ids = self.scratch::<i32>(nnz)?;
                k.iota(nnz, &mut ids)?;
                (conc_ptr_host.context("the scalar concentration's pointers were not packed")?, ids)
            }
            (true, ConcIndex::Junction) => {
                ensure!(n_targets == j_n, "per-junction concentrations: {n_targets} values for {j_n} junctions");
                (jptr, jorder)
            }
            (true, ConcIndex::Atse) => {
                let (ptr, ids) = by_atse.context("per-ATSE concentrations without the ATSE groups")?;
                ensure!(n_targets == ptr.len - 1, "per-ATSE concentrations: {n_targets} values for {} ATSEs", ptr.len - 1);
                (ptr, ids)
            }
        };
        Ok(EntryViews {
            x_ptr,
            x_idx,
            x_val,
            xe_ptr,
            xe_idx,
            xe_val,
            xe_cptr,
            xe_crow,
            xe_cval,
            s_ptr64,
            s_ptr32,
            s_junc,
            s_junc32: TView::new(s_junc.addr, s_junc.len),
            s_psi,
            s_k,
            s_n,
            jptr,
            jorder,
            cell_of,
            ps_ptr,
            ps_idx,
            ps_val,
            ps_cptr,
            ps_crow,
            ps_cval,
            g_cell: groups.map(|g| g.0),
            g_grp: groups.map(|g| g.1),
            g_ord: groups.map(|g| g.2),
            conc_ptr,
            conc_ids,
        })
    }

    /// Every array of the minibatch as the step sees it on the device, by name (tests: the resident
    /// gather against the host pack).
    #[doc(hidden)]
    pub fn minibatch_arrays(&mut self, hb: &HostBatch) -> Result<Vec<(&'static str, Vec<u8>)>> {
        self.rewind()?;
        let bt = self.upload_batch(hb)?;
        let rd = |v: u64, bytes: usize| -> Result<Vec<u8>> { self.dev.read(&TView::<u8>::new(v, bytes)) };
        macro_rules! arrays {
            ($b:expr; $($f:ident),*) => { vec![$((stringify!($f), rd($b.$f.addr, $b.$f.len * elem_size(&$b.$f))?)),*] };
        }
        fn elem_size<T>(_: &TView<T>) -> usize {
            std::mem::size_of::<T>()
        }
        let e = &bt.e;
        let mut out = arrays!(e; x_ptr, x_idx, x_val, xe_ptr, xe_idx, xe_val, xe_cptr, xe_crow, xe_cval, s_ptr64, s_ptr32, s_junc, s_junc32, s_psi, s_k, s_n, jptr, jorder, cell_of, ps_ptr, ps_idx, ps_val);
        out.extend(arrays!(bt; library, mask_e, mask_s, expr_weight, ones, eps_joint, w_row, iota));
        if matches!(self.model.arch.z_enc_spl, SplEncP::Vanilla(_)) {
            out.extend(arrays!(e; ps_cptr, ps_crow, ps_cval));
        }
        let m = &self.model;
        if matches!(m.cfg.splicing_loss_type, SplicingLoss::DirichletMultinomial | SplicingLoss::BetaBinomial) {
            out.extend(arrays!(e; conc_ptr, conc_ids));
        }
        if let (Some(c), Some(g), Some(o)) = (bt.e.g_cell, bt.e.g_grp, bt.e.g_ord) {
            out.push(("g_cell", rd(c.addr, c.len * 8)?));
            out.push(("g_grp", rd(g.addr, g.len * 8)?));
            out.push(("g_ord", rd(o.addr, o.len * 4)?));
        }
        for (name, v) in [("cov", bt.cov), ("cont", bt.cont), ("cov_cont", bt.cov_cont)] {
            if let Some(v) = v {
                out.push((name, rd(v.addr, v.len * 4)?));
            }
        }
        self.dev.synchronize()?;
        Ok(out)
    }

    /// C = α op(A) op(B) + β C in the model's precision: f32, or with both operands rounded to bf16
    /// (f32 accumulation and output) for `--precision bf16`.
    #[allow(clippy::too_many_arguments)]
    fn mm(&self, alpha: f32, a: &Operand, b: &Operand, beta: f32, c: &mut dyn DeviceMem<f32>, m: usize, n: usize) -> Result<()> {
        match self.precision {
            GemmPrecision::F32 => self.gemm.gemm(GemmPrecision::F32, alpha, a, b, beta, c, m, n),
            GemmPrecision::Bf16 => {
                let (a16, b16) = (self.bf16_operand(a)?, self.bf16_operand(b)?);
                self.gemm.gemm(GemmPrecision::Bf16, alpha, &a16, &b16, beta, c, m, n)
            }
        }
    }

    /// A bf16 copy of an f32 GEMM operand (its rows × cols window, packed: ld = cols). With `bf16_reuse`
    /// each window is converted once per step and its copy kept: the weights serve the forward and the
    /// backward, and the activations a block's backward reads are the bf16 copies its forward made (the
    /// stored activations of `--precision bf16`). Step buffers are written once, and parameters change
    /// only between steps, so a kept copy never goes stale (tests/cuda_step.rs checks the step's bits
    /// with and without reuse).
    fn bf16_operand(&self, x: &Operand) -> Result<Operand> {
        let (rows, cols) = (x.rows, x.cols);
        let key = (x.addr, rows, cols, x.ld);
        if self.bf16_reuse {
            if let Some(&addr) = self.bf16_cache.borrow().get(&key) {
                return Ok(Operand { addr, rows, cols, ld: cols, t: x.t });
            }
        }
        let mut d: TView<half::bf16> = self.arena.borrow_mut().alloc(self.dev, rows * cols)?;
        let src = Buf::new(x.addr, if rows == 0 { 0 } else { (rows - 1) * x.ld + cols });
        self.glue.to_bf16(Cols { mem: &src, offset: 0, ld: x.ld }, &mut d, cols, rows, cols)?;
        if self.bf16_reuse {
            self.bf16_cache.borrow_mut().insert(key, d.addr);
        }
        Ok(Operand { addr: d.addr, rows, cols, ld: cols, t: x.t })
    }

    /// Frees every step buffer (the previous step's work must be finished) and the bf16 copies.
    fn rewind(&self) -> Result<()> {
        self.bf16_cache.borrow_mut().clear();
        self.arena.borrow_mut().rewind(self.dev)
    }

    /// y0 (B × n_out) = X · Wᵀ for a dense `x` (B × n_in).
    fn gemm_xwt(&self, x: &dyn DeviceMem<f32>, b: usize, n_in: usize, w: Buf, n_out: usize, y0: &mut dyn DeviceMem<f32>) -> Result<()> {
        let a = Operand::new(x, b, n_in, false)?;
        let bw = Operand::new(&w, n_out, n_in, true)?;
        self.mm(1.0, &a, &bw, 0.0, y0, b, n_out)
    }

    /// An FCLayers forward (model.md §2.1): per block, [main | covariates] → GEMM → epilogue.
    fn fc_forward(&self, fc: &FcLayers, x: FcIn<'_>, bt: &DevBatch, mode: Mode) -> Result<(Buf, Vec<BlockTape>)> {
        let b = bt.b;
        let mut tapes = Vec::with_capacity(fc.blocks.len());
        let mut h: Option<Buf> = None;
        // The first block always takes the layer's covariates, later ones when injected (as ops::fc_forward).
        let cov_w = fc.cov_width();
        // The covariates of this FCLayers: [cont (if it takes them) | one-hots (if it takes them)].
        let with_cats = fc.cat_sizes.iter().sum::<usize>() > 0;
        let cov_buf = match (fc.n_cont > 0, with_cats) {
            (true, true) => bt.cov_cont.as_ref(),
            (true, false) => bt.cont.as_ref(),
            _ => bt.cov.as_ref(),
        };
        for (bi, blk) in fc.blocks.iter().enumerate() {
            let (n_main, n_out) = (blk.n_main, blk.lin.n_out);
            let inject = blk.inject && cov_w > 0;
            let n_in = blk.lin.n_in;
            ensure!(n_in == n_main + if blk.inject { fc.cov_width() } else { 0 }, "FCLayers block {bi}: input width {n_in} ≠ {n_main} + covariates");
            let mut y0 = self.nan(b * n_out)?;
            let w = self.p(blk.lin.w);
            let xbuf = match (bi, &x) {
                (0, FcIn::Sparse { csr, .. }) => {
                    // A sparse input carries its covariates as extra columns (HostBatch, encode_covariates).
                    ensure!(!inject || fc.n_cont == 0, "continuous covariates injected into a sparse first layer");
                    let mut wt = self.nan(n_in * n_out)?;
                    let mut part = self.nan(super::sparse_linear::part_len(b, csr.idx.elements(), n_out))?;
                    self.sparse.forward(csr, b, n_in, n_out, &w, &mut wt, &mut part, &mut y0)?;
                    None
                }
                _ => {
                    let main: &Buf = match (bi, &x) {
                        (0, FcIn::Dense(m)) => m,
                        _ => h.as_ref().unwrap(),
                    };
                    let xin = if inject {
                        let cov = cov_buf.context("covariates missing")?;
                        let have = if with_cats { bt.cov_w } else { 0 } + if fc.n_cont > 0 { bt.n_cont } else { 0 };
                        ensure!(have == fc.cov_width(), "covariate width {have} ≠ the layer's {}", fc.cov_width());
                        let xc = self.nan(b * n_in)?;
                        self.glue.copy_cols(Cols::all(main, n_main), Cols::from(&xc, n_in, 0), b, n_main, 1.0, 0.0)?;
                        self.glue.copy_cols(Cols::all(cov, cov_w), Cols::from(&xc, n_in, n_main), b, cov_w, 1.0, 0.0)?;
                        xc
                    } else {
                        // The input itself (step buffers are written once and live until the next step).
                        *main
                    };
                    self.gemm_xwt(&xin, b, n_in, w, n_out, &mut y0)?;
                    Some(xin)
                }
            };
            let dropout = (mode.training && blk.dropout > 0.0)
                .then(|| (DropStream::new(mode.seed, rng::streams::DROPOUT_BASE + fc.id * 64 + bi as u64, blk.dropout), blk.dropout));
            let bn_mode = match (&blk.bn, mode.training) {
                (None, _) => BnMode::None,
                (Some(_), true) => BnMode::Batch,
                (Some(_), false) => BnMode::Running,
            };
            let epi = Epilogue { bn: bn_mode, ln: blk.ln, act: blk.act, dropout };
            let (bias_view, zero_bias);
            let bias: &dyn DeviceMem<f32> = match blk.lin.b {
                Some(bb) => {
                    bias_view = self.p(bb);
                    &bias_view
                }
                None => {
                    zero_bias = self.zeros(n_out)?;
                    &zero_bias
                }
            };
            let bn = match &blk.bn {
                Some(bnp) => {
                    // Training: the minibatch's statistics, and the running statistics' update kept
                    // aside until the step goes on to its backward (as the CPU trainer applies it).
                    let (mean, inv_std) = (self.nan(n_out)?, self.nan(n_out)?);
                    let upd = if mode.training { Some((self.nan(n_out)?, self.nan(n_out)?)) } else { None };
                    let views = self.bn_views(bnp);
                    let bd = bn_dev(&views, &mean, &inv_std);
                    let upd_mem = upd.as_ref().map(|(m, v)| (m as &dyn DeviceMem<f32>, v as &dyn DeviceMem<f32>));
                    self.epi.bn_stats(&epi, b, n_out, &y0, bias, &bd, upd_mem)?;
                    if let Some((m, v)) = upd {
                        let mut pend = self.bn_pending.borrow_mut();
                        pend.push((m, bnp.running_mean));
                        pend.push((v, bnp.running_var));
                        pend.push((bt.ones, bnp.num_batches_tracked));
                    }
                    Some((mean, inv_std, bnp.clone()))
                }
                None => None,
            };
            let (mut out, mut pre, mut ln_inv) = (self.nan(b * n_out)?, self.nan(b * n_out)?, self.nan(b)?);
            let views = bn.as_ref().map(|(_, _, bnp)| self.bn_views(bnp));
            let bd = bn.as_ref().zip(views.as_ref()).map(|((m, v, _), vw)| bn_dev(vw, m, v));
            self.epi.forward(&epi, b, n_out, &y0, bias, bd.as_ref(), &mut out, &mut pre, &mut ln_inv)?;
            tapes.push(BlockTape { x: xbuf, n_in, n_main, n_out, y0, pre, ln_inv, epi, bn });
            h = Some(out);
        }
        Ok((h.unwrap(), tapes))
    }

    /// An FCLayers backward from d(output); returns d(main input) of the first block when it is dense.
    fn fc_backward(&self, fc: &FcLayers, tapes: &[BlockTape], dout: Buf, b: usize, sparse_csc: Option<&SparseDev<'_>>) -> Result<Option<Buf>> {
        let mut d = dout;
        for (bi, (blk, t)) in fc.blocks.iter().zip(tapes).enumerate().rev() {
            let (n_in, n_out) = (t.n_in, t.n_out);
            let (mut gsc, mut dy0) = (self.nan(b * n_out)?, self.nan(b * n_out)?);
            // A layer without bias gets zeros for it and a scratch for its (unused) gradient.
            let (mut gb_view, mut sink, bias_view, zero_bias);
            let db: &mut dyn DeviceMem<f32> = match blk.lin.b {
                Some(bb) => {
                    gb_view = self.g(bb);
                    &mut gb_view
                }
                None => {
                    sink = self.nan(n_out)?;
                    &mut sink
                }
            };
            let bias: &dyn DeviceMem<f32> = match blk.lin.b {
                Some(bb) => {
                    bias_view = self.p(bb);
                    &bias_view
                }
                None => {
                    zero_bias = self.zeros(n_out)?;
                    &zero_bias
                }
            };
            let views = t.bn.as_ref().map(|(_, _, bnp)| self.bn_views(bnp));
            let bd = t.bn.as_ref().zip(views.as_ref()).map(|((m, v, _), vw)| bn_dev(vw, m, v));
            let (mut g_gamma, mut g_beta) = match &t.bn {
                Some((_, _, bnp)) => (Some(self.g(bnp.w)), Some(self.g(bnp.b))),
                None => (None, None),
            };
            let bn_grads = match (&mut g_gamma, &mut g_beta) {
                (Some(x), Some(y)) => Some((x as &mut dyn DeviceMem<f32>, y as &mut dyn DeviceMem<f32>)),
                _ => None,
            };
            self.epi.backward(&t.epi, b, n_out, &d, &t.pre, &t.ln_inv, &t.y0, bias, bd.as_ref(), &mut gsc, &mut dy0, db, bn_grads)?;
            let mut gw = self.g(blk.lin.w);
            match &t.x {
                None => {
                    let csc = sparse_csc.context("the sparse first layer's CSC is missing")?;
                    self.sparse.backward_w(csc, b, n_in, n_out, &dy0, &mut gw)?;
                }
                Some(x) => {
                    // dW (n_out × n_in) += dy0ᵀ · X
                    let a = Operand::new(&dy0, b, n_out, true)?;
                    let xb = Operand::new(x, b, n_in, false)?;
                    self.mm(1.0, &a, &xb, 1.0, &mut gw, n_out, n_in)?;
                }
            }
            if bi == 0 && t.x.is_none() {
                return Ok(None);
            }
            // d(main) (B × n_main) = dy0 · W[:, :n_main]
            let w = self.p(blk.lin.w);
            let mut dx = self.nan(b * t.n_main)?;
            let a = Operand::new(&dy0, b, n_out, false)?;
            let wb = Operand { addr: w.addr, rows: n_out, cols: t.n_main, ld: n_in, t: false };
            self.mm(1.0, &a, &wb, 0.0, &mut dx, b, t.n_main)?;
            d = dx;
        }
        Ok(Some(d))
    }

    /// A Linear head with bias: y = x · Wᵀ + b.
    fn linear_fwd(&self, lin: &LinearP, x: &Buf, bt: &DevBatch) -> Result<Buf> {
        let b = bt.b;
        let mut y = self.nan(b * lin.n_out)?;
        self.gemm_xwt(x, b, lin.n_in, self.p(lin.w), lin.n_out, &mut y)?;
        let bias = self.p(lin.b.context("a Linear head without bias")?);
        // y += 1 · bias (row-broadcast: a GEMM of a column of ones with the bias row, kept in f32)
        let a = Operand::new(&bt.ones, b, 1, false)?;
        let bb = Operand::new(&bias, 1, lin.n_out, false)?;
        self.gemm.gemm(GemmPrecision::F32, 1.0, &a, &bb, 1.0, &mut y, b, lin.n_out)?;
        Ok(y)
    }

    /// A Linear head's backward: dW += dyᵀ x, db += Σ_rows dy; d(x) (B × n_in) += dy · W into `dx`
    /// (β = 0 overwrites).
    fn linear_bwd(&self, lin: &LinearP, x: &Buf, dy: &Buf, b: usize, dx: &mut Buf, beta: f32) -> Result<()> {
        let mut gw = self.g(lin.w);
        let a = Operand::new(dy, b, lin.n_out, true)?;
        let xb = Operand::new(x, b, lin.n_in, false)?;
        self.mm(1.0, &a, &xb, 1.0, &mut gw, lin.n_out, lin.n_in)?;
        if let Some(bb) = lin.b {
            let mut gb = self.g(bb);
            self.glue.col_sum(Cols::all(dy, lin.n_out), b, lin.n_out, 1.0, 1.0, &mut gb)?;
        }
        let a = Operand::new(dy, b, lin.n_out, false)?;
        let wb = Operand::new(&self.p(lin.w), lin.n_out, lin.n_in, false)?;
        self.mm(1.0, &a, &wb, beta, dx, b, lin.n_in)
    }

    /// One forward + backward: the loss terms, and the gradients in [`Self::grads`] (overwritten).
    /// `extra_dz` is called with the sampled z (B × L) once the forward has it and may return an
    /// additional gradient w.r.t. z (the adversary's fool term). Without `backward` only the loss
    /// terms are computed (validation).
    pub fn forward_backward(
        &mut self,
        batch: &Batch,
        opts: &StepOptions,
        extra_dz: &mut dyn FnMut(&[f32]) -> Result<Option<Vec<f32>>>,
        backward: bool,
    ) -> Result<DeviceStepOutput> {
        let hb = HostBatch::build(&self.model, batch, opts)?;
        self.forward_backward_prepared(&hb, opts, extra_dz, backward)
    }

    /// The posterior means of `batch` in evaluation mode (no dropout, BatchNorm's running statistics,
    /// no noise), as `SpliceVae::inference_only`: the encoders and the latent step only, on the device.
    pub fn latents(&mut self, batch: &Batch) -> Result<DeviceLatents> {
        let hb = HostBatch::build(&self.model, batch, &Self::latent_options())?;
        self.latents_prepared(&hb)
    }

    /// [`Self::latents`] of dataset rows `cells` (`batch` is theirs): their entries gathered on the
    /// device when the dataset is resident there ([`Self::attach_dataset`]; then `batch` may be
    /// [`Batch::cells_only`]), else packed from `batch` on the host.
    pub fn latents_of_cells(&mut self, batch: &Batch, cells: &[usize]) -> Result<DeviceLatents> {
        let opts = Self::latent_options();
        let hb = match self.resident_index() {
            Some(index) => HostBatch::build_resident_from(&self.model, batch, &index, cells, &opts)?,
            None => HostBatch::build(&self.model, batch, &opts)?,
        };
        self.latents_prepared(&hb)
    }

    /// Evaluation mode, no noise: the posterior means.
    fn latent_options() -> StepOptions {
        StepOptions { training: false, use_z_mean: true, noise: Noise::Zero, kl_weight: 1.0, cross_gate: 1.0, routing: None, seed: 0 }
    }

    fn latents_prepared(&mut self, hb: &HostBatch) -> Result<DeviceLatents> {
        let opts = Self::latent_options();
        self.latents_only = Some(RefCell::new(None));
        let r = self.forward_backward_prepared(hb, &opts, &mut |_| Ok(None), false);
        let got = self.latents_only.take().and_then(|c| c.into_inner());
        r?;
        let [qz_m, mu_e, mu_s, qz_v, library] = got.context("the forward did not reach the latent step")?;
        Ok(DeviceLatents { qz_m, mu_e, mu_s, qz_v, library })
    }

    /// The dense decode of `batch` from the latent `lat` (B × L) in evaluation mode, as
    /// `SpliceVae::decode_dense` with the cross gate `gate`: the splicing probabilities of every junction
    /// (`psi`) and the expression scale (`expr`), on the device.
    pub fn decode_dense(&mut self, lat: &[f32], batch: &Batch, gate: f64, psi: bool, expr: bool) -> Result<DeviceDecode> {
        let _r = crate::nvtx_range!("dense decode");
        let model = self.model.clone();
        let (m, a) = (&*model, &model.arch);
        let (b, l, g_n, j_n) = (batch.n_cells(), a.l, m.dims.n_genes, m.dims.n_junctions);
        ensure!(lat.len() == b * l, "decode: the latent has {} values for {b} cells × {l}", lat.len());
        let opts = StepOptions { training: false, use_z_mean: true, noise: Noise::Zero, kl_weight: 1.0, cross_gate: gate, routing: None, seed: 0 };
        let mode = Mode { training: false, seed: 0 };
        // The decoders read only the covariates: the minibatch without its counts, so that the host packs
        // O(B) values (the decode runs once per posterior sample and transform batch).
        let light = Batch {
            expr: crate::data::Csr { n_rows: b, n_cols: g_n, indptr: vec![0; b + 1], indices: Vec::new(), values: Vec::new() },
            spl: crate::model::SplBatch { n_junctions: j_n, indptr: vec![0; b + 1], ..Default::default() },
            library: batch.library.clone(),
            batch: batch.batch.clone(),
            labels: batch.labels.clone(),
            cats: batch.cats.clone(),
            cont: batch.cont.clone(),
            n_cont: batch.n_cont,
            cell_idx: batch.cell_idx.clone(),
        };
        let hb = HostBatch::build(m, &light, &opts)?;
        self.rewind()?;
        self.bn_pending.borrow_mut().clear();
        let bt = self.upload_batch(&hb)?;
        let latb = self.upload_step(lat)?;
        let (main_e, main_s) = self.decoder_inputs(&latb, &bt, gate)?;
        let mut out = DeviceDecode { p: None, px_scale: None };
        if expr {
            let mut scale = match &a.z_dec_expr {
                ExprDecP::Vanilla { fc, scale, softplus, .. } => {
                    let (h, _) = self.fc_forward(fc, FcIn::Dense(&main_e), &bt, mode)?;
                    let raw = self.linear_fwd(scale, &h, &bt)?;
                    (raw, !*softplus)
                }
                ExprDecP::Linear { factor, .. } => (self.fc_forward(factor, FcIn::Dense(&main_e), &bt, mode)?.0, true),
            };
            let raw = TView::of(&scale.0);
            if scale.1 {
                self.decode.row_softmax(&raw, b, g_n, &mut scale.0)?;
            } else {
                self.glue.map(MapOp::SoftplusEps(0.0), &raw, None, &mut scale.0)?;
            }
            out.px_scale = Some(self.dev.read(&scale.0)?);
        }
        if psi {
            let (s_in, out_lin) = match &a.z_dec_spl {
                SplDecP::Vanilla { fc, out } => (self.fc_forward(fc, FcIn::Dense(&main_s), &bt, mode)?.0, out),
                SplDecP::Linear { lin } => (self.linear_spl_input(&main_s, &bt, lin.n_in)?, lin),
            };
            let mut logits = self.linear_fwd(out_lin, &s_in, &bt)?;
            let dm = m.cfg.splicing_loss_type == SplicingLoss::DirichletMultinomial;
            let src = TView::of(&logits);
            self.decode.psi(&src, b, j_n, &self.atse_ptr, &self.atse_junc, dm, m.cfg.dm_lse_eps() as f32, &mut logits)?;
            out.p = Some(self.dev.read(&logits)?);
        }
        self.dev.synchronize()?;
        Ok(out)
    }

    /// [`Self::forward_backward`] with the minibatch already prepared on the host ([`HostBatch::build`]
    /// of the same `batch` and `opts`, e.g. on another thread while the previous step ran).
    pub fn forward_backward_prepared(
        &mut self,
        hb: &HostBatch,
        opts: &StepOptions,
        extra_dz: &mut dyn FnMut(&[f32]) -> Result<Option<Vec<f32>>>,
        backward: bool,
    ) -> Result<DeviceStepOutput> {
        let r = self.step(hb, opts, Some(extra_dz), backward, None);
        if r.is_err() {
            // A failed step may leave work queued (the minibatch's staged copy among it): wait for it,
            // so that the minibatch's buffers may be freed.
            let _ = self.dev.synchronize();
        }
        r.map(|(out, _)| out)
    }

    /// One training step: [`Self::forward_backward_prepared`] (backward on) and then
    /// [`Self::optimizer_step`] with `update`'s arguments, as one call. Returns the loss terms and the
    /// gradient norm. A non-finite gradient is the same error, and nothing is updated.
    ///
    /// Without `extra_dz` (no adversary) and without the MMD-RBF penalty (its value is computed on the
    /// host), the host waits for the device once per step: the forward, the backward and the optimizer
    /// are enqueued back to back and the loss terms come back in one copy at the end (the step functions
    /// alone wait twice, and the optimizer once more). The results are the same bits either way. The
    /// difference: a non-finite loss is then seen after the backward and the optimizer have run (the
    /// update happens if the gradient is finite, the BatchNorm running statistics are updated); the
    /// caller stops training on it either way, and its checkpoint is the last good one.
    pub fn train_step(
        &mut self,
        hb: &HostBatch,
        opts: &StepOptions,
        extra_dz: Option<&mut dyn FnMut(&[f32]) -> Result<Option<Vec<f32>>>>,
        update: Update<'_>,
    ) -> Result<(DeviceStepOutput, Option<f64>)> {
        let r = self.step(hb, opts, extra_dz, true, Some(update));
        if r.is_err() {
            let _ = self.dev.synchronize();
        }
        r
    }

    /// The step: forward, then (`backward`) the backward, then (`update`) the optimizer. Returns the loss
    /// terms and, with `update` and a finite loss, the gradient norm.
    fn step(
        &mut self,
        hb: &HostBatch,
        opts: &StepOptions,
        extra_dz: Option<&mut dyn FnMut(&[f32]) -> Result<Option<Vec<f32>>>>,
        backward: bool,
        update: Option<Update<'_>>,
    ) -> Result<(DeviceStepOutput, Option<f64>)> {
        let _r = crate::nvtx_range!("device step");
        let model = self.model.clone();
        let m = &*model;
        let (cfg, a) = (&m.cfg, &m.arch);
        let dev = self.dev;
        let b = hb.b;
        let (d, l, g_n, j_n) = (a.d, a.l, m.dims.n_genes, m.dims.n_junctions);
        let mode = Mode { training: opts.training, seed: opts.seed };
        // The previous step's work is finished (every step ends synchronised): its buffers are free.
        self.rewind()?;
        self.bn_pending.borrow_mut().clear();
        let bt = self.upload_batch(hb)?;
        let inv_b = 1.0 / b as f32;

        // ---- expression encoder --------------------------------------------------------------
        let r_phase = crate::nvtx_range!("expression encoder");
        let xe_csr = SparseDev { ptr: &bt.e.xe_ptr, idx: &bt.e.xe_idx, val: &bt.e.xe_val };
        let xe_csc = SparseDev { ptr: &bt.e.xe_cptr, idx: &bt.e.xe_crow, val: &bt.e.xe_cval };
        let enc = &a.z_enc_expr;
        let (h_e, enc_tape) = self.fc_forward(&enc.fc, FcIn::Sparse { csr: xe_csr }, &bt, mode)?;
        let mu_e = self.linear_fwd(&enc.mean, &h_e, &bt)?;
        let lv_e = self.linear_fwd(&enc.var, &h_e, &bt)?;
        let mut v_e = self.nan(b * d)?;
        self.glue.map(MapOp::Exp, &lv_e, None, &mut v_e)?;
        // The library: log(s + ε) of the size factors, or the library encoder's LeakyReLU(Linear(FCLayers
        // of the same input)) (use_size_factor_key = false).
        let lib_enc = if cfg.use_size_factor_key {
            None
        } else {
            let le = &a.l_enc_expr;
            let csr = SparseDev { ptr: &bt.e.xe_ptr, idx: &bt.e.xe_idx, val: &bt.e.xe_val };
            let (h_l, tape_l) = self.fc_forward(&le.fc, FcIn::Sparse { csr }, &bt, mode)?;
            let pre = self.linear_fwd(&le.out, &h_l, &bt)?;
            let mut lib = self.nan(b)?;
            self.glue.map(MapOp::LeakyRelu, &pre, None, &mut lib)?;
            Some((h_l, tape_l, pre, lib))
        };
        let library: Buf = lib_enc.as_ref().map_or(bt.library, |x| x.3);

        // ---- splicing encoder ----------------------------------------------------------------
        drop(r_phase);
        let r_phase = crate::nvtx_range!("splicing encoder");
        enum SplEnc {
            Partial { shape: PartialShape, cap: PartialShape, work: PartialWork, pool: Buf, mlp: Vec<BlockTape>, raw_v: Buf },
            Vanilla { h: Buf, tape: Vec<BlockTape> },
        }
        let (mu_s, v_s, spl_enc) = match &a.z_enc_spl {
            SplEncP::Partial(pe) => {
                let mut shape = PartialShape::of_counts(pe, &self.host, m.dims.n_junctions, b, hb.nnz, mode);
                // Grouped kernels by default; per pair otherwise, their products on tensor cores in bf16
                // where the tiles fit.
                shape = PartialKernels::for_step(self.partial_grouped, matches!(self.precision, GemmPrecision::Bf16)).apply(shape);
                let (cap, mut work) = self.take_partial_work(&shape)?;
                let (pv, pc) = self.partial_views(pe);
                let pp = partial_params(&pv, &pc);
                let pb = PartialBatchDev { indptr: &bt.e.s_ptr32, junction: &bt.e.s_junc32, psi: &bt.e.s_psi, jptr: &bt.e.jptr, order: &bt.e.jorder, cell_of: &bt.e.cell_of };
                let mut pool = self.nan(b * pe.code_dim)?;
                self.partial.forward(&shape, &pp, &pb, &mut work, &mut pool)?;
                let (out, mlp) = self.fc_forward(&pe.mlp, FcIn::Dense(&pool), &bt, mode)?;
                let (mut mu, mut raw_v, mut v) = (self.nan(b * d)?, self.nan(b * d)?, self.nan(b * d)?);
                self.glue.copy_cols(Cols::from(&out, 2 * d, 0), Cols::all(&mu, d), b, d, 1.0, 0.0)?;
                self.glue.copy_cols(Cols::from(&out, 2 * d, d), Cols::all(&raw_v, d), b, d, 1.0, 0.0)?;
                self.glue.map(MapOp::SoftplusEps(PARTIAL_VAR_EPS as f32), &raw_v, None, &mut v)?;
                let _ = (&mut mu, &mut raw_v);
                (mu, v, SplEnc::Partial { shape, cap, work, pool, mlp, raw_v })
            }
            SplEncP::Vanilla(enc) => {
                let csr = SparseDev { ptr: &bt.e.ps_ptr, idx: &bt.e.ps_idx, val: &bt.e.ps_val };
                let (h, tape) = self.fc_forward(&enc.fc, FcIn::Sparse { csr }, &bt, mode)?;
                let mu = self.linear_fwd(&enc.mean, &h, &bt)?;
                let lv = self.linear_fwd(&enc.var, &h, &bt)?;
                let mut v = self.nan(b * d)?;
                self.glue.map(MapOp::Exp, &lv, None, &mut v)?;
                (mu, v, SplEnc::Vanilla { h, tape })
            }
        };

        // ---- latent ----------------------------------------------------------------------------
        drop(r_phase);
        let r_phase = crate::nvtx_range!("latent");
        let concat = cfg.modality_weights == ModalityWeights::Concatenate;
        let (mix, raw) = match (cfg.modality_weights, opts.routing) {
            (ModalityWeights::Concatenate, _) => (Mix::Concat, None),
            (_, Some(r)) => (Mix::Routed(r), None),
            (ModalityWeights::PerDimensionWeightedAverage, None) => {
                (Mix::PerDim { mask_spl: cfg.mask_cells_without_splicing }, Some(self.p(a.dim_weights.unwrap())))
            }
            _ => (Mix::Softmax { independent: cfg.mixing_variance == MixingVariance::Independent }, None),
        };
        let softmax_raw = if matches!(mix, Mix::Softmax { .. }) {
            // Each cell's two raw weights, gathered from the (possibly trained) table on the device:
            // one row (`equal`, `universal`), the cell's row, or the mean row for unseen cells (`cell`).
            let table = self.p(a.mod_weights);
            let src = if hb.w_mean || hb.w_mixed {
                let n_obs = table.len / 2;
                let mut mean = self.nan(2)?;
                self.glue.col_sum(Cols::all(&table, 2), n_obs, 2, 1.0 / n_obs as f32, 0.0, &mut mean)?;
                if hb.w_mean {
                    mean
                } else {
                    // the table, then the mean row (row n_obs)
                    let ext = self.nan(2 * (n_obs + 1))?;
                    self.glue.copy_cols(Cols::all(&table, 2), Cols::all(&ext, 2), n_obs, 2, 1.0, 0.0)?;
                    let last = Cols { mem: &ext, offset: 2 * n_obs, ld: 2 * (n_obs + 1) };
                    self.glue.copy_cols(Cols::all(&mean, 2), last, 1, 2, 1.0, 0.0)?;
                    ext
                }
            } else {
                table
            };
            let mut r = self.nan(2 * b)?;
            self.glue.gather_rows(&bt.iota, None, &bt.w_row, &bt.ones, &src, 2, 1.0, 0.0, &mut r)?;
            Some(r)
        } else {
            None
        };
        // Concatenated latents have no modality penalty (§4.4).
        // MMD-RBF is computed on the host from the B × d posteriors (its bandwidth is a median over all
        // pairs of cells: O(B²) on B × d values), the latent kernel leaves it out.
        let penalty_kind = if concat || cfg.modality_penalty == ModalityPenalty::MmdRbf { ModalityPenalty::None } else { cfg.modality_penalty };
        let ln = cfg.latent_distribution == LatentDistribution::Ln;
        let ls = LatentShape { b, d, mix, ln, penalty: penalty_kind };
        ensure!(ls.l() == l, "latent width {} ≠ the model's {l}", ls.l());
        let raw_mem: Option<&dyn DeviceMem<f32>> = match (&softmax_raw, &raw) {
            (Some(r), _) => Some(r),
            (None, Some(v)) => Some(v),
            _ => None,
        };
        let lin = LatentDevIn { mu_e: &mu_e, v_e: &v_e, mu_s: &mu_s, v_s: &v_s, raw: raw_mem, mask_e: &bt.mask_e, mask_s: &bt.mask_s, eps: &bt.eps_joint };
        let (mut qz_m, mut qz_v, mut z, mut kl_row, mut pen_row) = (self.nan(b * l)?, self.nan(b * l)?, self.nan(b * l)?, self.nan(b)?, self.nan(b)?);
        self.latent.forward(&ls, &lin, &mut LatentDevFwd { qz_m: &mut qz_m, qz_v: &mut qz_v, z: &mut z, kl_row: &mut kl_row, pen_row: &mut pen_row })?;
        if let Some(slot) = &self.latents_only {
            // [`Self::latents`]: the posterior means are all that is wanted.
            *slot.borrow_mut() = Some([dev.read(&qz_m)?, dev.read(&mu_e)?, dev.read(&mu_s)?, dev.read(&qz_v)?, dev.read(&library)?]);
            if let SplEnc::Partial { cap, work, .. } = spl_enc {
                self.partial_work.replace(Some((cap, work)));
            }
            return Ok((DeviceStepOutput::empty(), None));
        }
        let lat: &Buf = if opts.use_z_mean { &qz_m } else { &z };
        let (into_e, into_s) = self.model.cross_gates(opts.cross_gate);
        let (into_e, into_s) = (into_e as f32, into_s as f32);
        let gated = concat && (into_e != 1.0 || into_s != 1.0);
        let n_cont = bt.n_cont;
        let (main_e, main_s) = self.decoder_inputs(lat, &bt, opts.cross_gate)?;

        // ---- expression decoder + likelihood -----------------------------------------------------
        drop(r_phase);
        let r_phase = crate::nvtx_range!("expression decoder + likelihood");
        enum ExprDec {
            Vanilla { h: Buf, tape: Vec<BlockTape> },
            Linear { factor: Vec<BlockTape>, dropout: Vec<BlockTape>, r: Option<Vec<BlockTape>> },
        }
        let gene_cell = cfg.dispersion == Dispersion::GeneCell;
        // (log θ of gene-cell dispersion: the decoder's dispersion head, B × G.)
        let (raw_scale, pi, act, expr_dec, log_theta_cell) = match &a.z_dec_expr {
            ExprDecP::Vanilla { fc, scale, dropout, softplus, r } => {
                let (h, tape) = self.fc_forward(fc, FcIn::Dense(&main_e), &bt, mode)?;
                let raw = self.linear_fwd(scale, &h, &bt)?;
                let pi = self.linear_fwd(dropout, &h, &bt)?;
                let lt = if gene_cell { Some(self.linear_fwd(r, &h, &bt)?) } else { None };
                (raw, pi, if *softplus { ScaleAct::Softplus } else { ScaleAct::Softmax }, ExprDec::Vanilla { h, tape }, lt)
            }
            ExprDecP::Linear { factor, dropout, r } => {
                let (raw, ft) = self.fc_forward(factor, FcIn::Dense(&main_e), &bt, mode)?;
                let (pi, dt) = self.fc_forward(dropout, FcIn::Dense(&main_e), &bt, mode)?;
                let (lt, rt) = match (gene_cell, r) {
                    (true, Some(rf)) => {
                        let (o, t) = self.fc_forward(rf, FcIn::Dense(&main_e), &bt, mode)?;
                        (Some(o), Some(t))
                    }
                    (true, None) => bail!("gene-cell dispersion without the decoder's dispersion layers"),
                    _ => (None, None),
                };
                (raw, pi, ScaleAct::Softmax, ExprDec::Linear { factor: ft, dropout: dt, r: rt }, lt)
            }
        };
        // θ: one row of G (gene), or B × G (gene-batch / gene-label: each cell's code's column of px_r;
        // gene-cell: the dispersion head).
        let (theta, theta_stride) = match (&log_theta_cell, &bt.disp_onehot) {
            (Some(lt), _) => {
                let mut th = self.nan(b * g_n)?;
                self.glue.map(MapOp::Exp, lt, None, &mut th)?;
                (th, g_n)
            }
            (None, Some((oh, n))) => {
                let mut lt = self.nan(b * g_n)?;
                let pxr = self.p(a.px_r.context("gene-batch dispersion without px_r")?);
                // log θ (B × G) = one-hot (B × n) · px_rᵀ, in f32 whatever the precision (a gather).
                self.gemm.gemm(GemmPrecision::F32, 1.0, &Operand::new(oh, b, *n, false)?, &Operand::new(&pxr, g_n, *n, true)?, 0.0, &mut lt, b, g_n)?;
                let mut th = self.nan(b * g_n)?;
                self.glue.map(MapOp::Exp, &lt, None, &mut th)?;
                (th, g_n)
            }
            (None, None) => {
                let mut th = self.nan(g_n)?;
                self.glue.map(MapOp::Exp, &self.p(a.px_r.context("gene dispersion without px_r")?), None, &mut th)?;
                (th, 0)
            }
        };
        let (mut rl_e, mut d_raw, mut d_lth, mut d_pi, mut d_lib) = (self.nan(b)?, self.nan(b * g_n)?, self.nan(b * g_n)?, self.nan(b * g_n)?, self.nan(b)?);
        let lik = cfg.gene_likelihood;
        self.expr.launch(
            lik,
            act,
            g_n,
            &ExprLikInputs {
                raw: &raw_scale,
                pi: Some(&pi),
                theta: Some(&theta),
                theta_stride,
                library: &library,
                x_ptr: &bt.e.x_ptr,
                x_idx: &bt.e.x_idx,
                x_val: &bt.e.x_val,
                grad_weight: Some(&bt.expr_weight),
            },
            &mut ExprLikOutputs { rl: &mut rl_e, d_raw: &mut d_raw, d_log_theta: Some(&mut d_lth), d_pi: Some(&mut d_pi), d_library: &mut d_lib },
        )?;

        // ---- splicing decoder + likelihood -------------------------------------------------------
        drop(r_phase);
        let r_phase = crate::nvtx_range!("splicing decoder + likelihood");
        let (s_in, k_in, spl_tape, out_lin) = match &a.z_dec_spl {
            SplDecP::Vanilla { fc, out } => {
                let (h, tape) = self.fc_forward(fc, FcIn::Dense(&main_s), &bt, mode)?;
                (h, out.n_in, Some(tape), out)
            }
            SplDecP::Linear { lin } => {
                let k = lin.n_in;
                (self.linear_spl_input(&main_s, &bt, k)?, k, None, lin)
            }
        };
        let nnz = hb.nnz;
        let kind = cfg.splicing_loss_type;
        let conc = ConcIndex::for_loss(kind, cfg.dm_concentration);
        // The dense decode: the B × J products S·Wᵀ from the output layer's GEMM (splicing_lik adds the
        // bias per entry, as its SDDMM does, which spares a pass over the B × J matrix).
        let dense_decode = self.splicing_decode.dense_for(b, j_n, nnz, k_in);
        let dense_logits = if dense_decode {
            let mut y = self.nan(b * j_n)?;
            self.gemm_xwt(&s_in, b, k_in, self.p(out_lin.w), j_n, &mut y)?;
            Some(y)
        } else {
            None
        };
        let (logits, mut rl_s, g_logit, g_conc, p_ent) = (self.nan(nnz)?, self.nan(b)?, self.nan(nnz)?, self.nan(nnz)?, self.nan(nnz)?);
        {
            let grp = match (&bt.e.g_cell, &bt.e.g_grp, &bt.e.g_ord) {
                (Some(c), Some(g), Some(o)) => Some(DevGroups { cell_ptr: c, grp_ptr: g, ord: o }),
                _ => None,
            };
            let (sk, sn, sj, psi) = (bt.e.s_k, bt.e.s_n, bt.e.s_junc, bt.e.s_psi);
            let (mut lo, mut gl, mut gc, mut pe) = (logits, g_logit, g_conc, p_ent);
            let (w_spl, bias_spl, lphi) = (self.p(out_lin.w), self.p(out_lin.b.context("splicing output layer without bias")?), self.p(a.log_phi));
            let j2a = (conc == ConcIndex::Atse).then_some(&self.junc2atse as &dyn DeviceMem<u32>);
            let mut rl_part = self.scratch::<f64>(super::splicing_lik::n_chunks(kind, b, nnz, grp.as_ref().map_or(0, |g| g.n_groups())))?;
            let mut outs = SplLikOutputs { logits: &mut lo, rl: &mut rl_s, rl_part: &mut rl_part, g_logit: &mut gl, g_conc: &mut gc, p: &mut pe };
            let (wgt, lse_eps) = (cfg.splicing_loss_weight as f32, cfg.dm_lse_eps() as f32);
            // The inputs, with the SDDMM's operands S and W in f32 or bf16.
            macro_rules! inputs {
                ($s:expr, $w:expr) => {
                    SplLikInputs {
                        s: $s,
                        k: k_in,
                        w: $w,
                        bias: &bias_spl,
                        indptr: &bt.e.s_ptr64,
                        junction: &sj,
                        counts_k: &sk,
                        counts_n: &sn,
                        psi: Some(&psi),
                        groups: grp,
                        junc2atse: j2a,
                        log_phi: Some(&lphi),
                        dense: dense_logits.as_ref().map(|d| d as &dyn DeviceMem<f32>),
                    }
                };
            }
            // (the dense decode reads no operand: the f32 launch, nothing converted)
            if self.precision == GemmPrecision::F32 || dense_decode {
                self.spl.launch::<f32>(kind, conc, wgt, lse_eps, j_n, &inputs!(&s_in, &w_spl), &mut outs)?
            } else {
                // Rounded to bf16 (f32 accumulation), as the dense GEMMs' operands.
                let s16 = self.bf16_operand(&Operand::new(&s_in, b, k_in, false)?)?;
                let w16 = self.bf16_operand(&Operand::new(&w_spl, j_n, k_in, false)?)?;
                let (s16, w16) = (TView::<half::bf16>::new(s16.addr, b * k_in), TView::<half::bf16>::new(w16.addr, j_n * k_in));
                self.spl.launch::<half::bf16>(kind, conc, wgt, lse_eps, j_n, &inputs!(&s16, &w16), &mut outs)?
            }
        }

        // ---- loss terms (host) -------------------------------------------------------------------
        drop(r_phase);
        // Everything the host needs in one copy (one synchronisation): the per-cell terms, z, Σ log φ² of
        // the concentration prior, the decoder priors' column sums, and (a training step with the
        // optimizer, `update`) the gradient's f64 sum of squares. Without an adversary or the MMD-RBF
        // penalty nothing of it is needed before the backward: such a step (`deferred`) enqueues its
        // forward, backward and optimizer and copies this back once, at its end, so that the GPU never
        // idles mid-step waiting for the host to launch the backward.
        let deferred = backward && update.is_some() && extra_dz.is_none() && hb.mmd_eps.is_none();
        let inv_n = 1.0 / m.dims.n_obs.max(1) as f64;
        let w_out = self.p(out_lin.w);
        let prior_cols = if cfg.splicing_decoder_prior != 0.0 { k_in } else { 0 };
        let effect_cols = if cfg.splicing_decoder_effect_prior != 0.0 { k_in } else { 0 };
        let lpv = self.p(a.log_phi);
        let n_out = 4 * b + b * l + 1 + prior_cols + effect_cols + 2;
        let outb = self.nan(n_out)?;
        let at = |off: usize, n: usize| Buf::new(outb.addr + (off * 4) as u64, n);
        for (k, src) in [&rl_e, &rl_s, &kl_row, &pen_row].into_iter().enumerate() {
            dev.copy(src, &mut at(k * b, b), b)?;
        }
        dev.copy(&z, &mut at(4 * b, b * l), b * l)?;
        let mut sumsq = at(4 * b + b * l, 1);
        let mut sq = self.nan(lpv.len)?;
        self.glue.map(MapOp::Mul, &lpv, Some(&lpv), &mut sq)?;
        self.glue.col_sum(Cols::all(&sq, 1), lpv.len, 1, 1.0, 0.0, &mut sumsq)?;
        // The decoder priors on the splicing output layer W (J × K), N the data's cells (docs/robust.md):
        // λ Σ W² / N, and λ_e Σ_j W_j C W_jᵀ / N with C the minibatch covariance of S (held fixed in the
        // gradient, as the CPU model does); their column sums go back with the rest, summed in f64 there.
        let o_prior = 4 * b + b * l + 1;
        if prior_cols > 0 {
            self.frob_cols(&w_out, &w_out, j_n, k_in, &mut at(o_prior, k_in))?;
        }
        let effect_wc = if effect_cols > 0 {
            let c = self.input_covariance(&s_in, &bt, b, k_in)?;
            let mut wc = self.nan(j_n * k_in)?;
            self.gemm.gemm(GemmPrecision::F32, 1.0, &Operand::new(&w_out, j_n, k_in, false)?, &Operand::new(&c, k_in, k_in, true)?, 0.0, &mut wc, j_n, k_in)?;
            self.frob_cols(&w_out, &wc, j_n, k_in, &mut at(o_prior + prior_cols, k_in))?;
            Some(wc)
        } else {
            None
        };
        // (the gradient's sum of squares, f64, lands in the last two floats: `deferred` only)
        let o_sumsq = n_out - 2;
        // The step's output from the copy: `rbf`, the MMD-RBF penalty's value when there is one.
        let finish = |host_out: &[f32], rbf: f64| -> DeviceStepOutput {
            let part = |k: usize, n: usize| host_out[k..k + n].to_vec();
            let (rl_e_h, rl_s_h, kl_h, pen_h) = (part(0, b), part(b, b), part(2 * b, b), part(3 * b, b));
            let rl_expr: Vec<f32> = rl_e_h.iter().zip(&hb.mask_e_host).map(|(&v, &mk)| if mk { v } else { 0.0 }).collect();
            let pen_sum: f64 = pen_h.iter().map(|&v| v as f64).sum();
            let penalty = match penalty_kind {
                ModalityPenalty::JeffreysExact => {
                    let np = hb.mask_e_host.iter().zip(&hb.mask_s_host).filter(|(x, y)| **x && **y).count();
                    if np == 0 {
                        0.0
                    } else {
                        pen_sum * opts.kl_weight / np as f64
                    }
                }
                _ => pen_sum,
            };
            let penalty = penalty + rbf;
            let concentration_prior = match kind {
                SplicingLoss::DirichletMultinomial | SplicingLoss::BetaBinomial => cfg.lambda_prior * host_out[4 * b + b * l] as f64 / b as f64,
                _ => 0.0,
            };
            let col_sum = |off: usize, n: usize| host_out[off..off + n].iter().map(|&v| v as f64).sum::<f64>();
            let decoder_prior = if prior_cols > 0 { cfg.splicing_decoder_prior * inv_n * col_sum(o_prior, prior_cols) } else { 0.0 };
            let decoder_effect_prior = if effect_cols > 0 { cfg.splicing_decoder_effect_prior * inv_n * col_sum(o_prior + prior_cols, effect_cols) } else { 0.0 };
            let mean_terms: f64 = (0..b).map(|i| rl_expr[i] as f64 + rl_s_h[i] as f64 + opts.kl_weight * kl_h[i] as f64).sum::<f64>() / b as f64;
            let loss = mean_terms + penalty + concentration_prior + decoder_prior + decoder_effect_prior;
            let z_host = part(4 * b, b * l);
            DeviceStepOutput { rl_expr, rl_spl: rl_s_h, kl: kl_h, penalty, concentration_prior, decoder_prior, decoder_effect_prior, loss, z: z_host }
        };
        let rbf = match &hb.mmd_eps {
            Some((eps_e, eps_s)) => {
                let rd = |x: &Buf| -> Result<Mat<f32>> { Ok(Mat::from_vec(b, d, dev.read(x)?)) };
                let (ve, vs) = (rd(&v_e)?, rd(&v_s)?);
                let (ee, es) = (Mat::from_vec(b, d, eps_e.clone()), Mat::from_vec(b, d, eps_s.clone()));
                let ln = cfg.latent_distribution == LatentDistribution::Ln;
                let ze = crate::model::vae::sample(&rd(&mu_e)?, &ve, &ee, ln);
                let zs = crate::model::vae::sample(&rd(&mu_s)?, &vs, &es, ln);
                let paired: Vec<bool> = hb.mask_e_host.iter().zip(&hb.mask_s_host).map(|(&x, &y)| x && y).collect();
                let (value, info) = crate::model::latent::mmd_rbf_fwd(&ze, &zs, &paired);
                Some((value as f64, info, ze, zs, ee, es, ve, vs, paired))
            }
            None => None,
        };
        // Not deferred: the copy now (the adversary needs z, and a non-finite loss stops here).
        let out = if deferred {
            None
        } else {
            let out = finish(&dev.read(&outb)?, rbf.as_ref().map_or(0.0, |r| r.0));
            if !backward || !out.loss.is_finite() {
                // (A non-finite loss is the caller's to report, with the term that went bad.)
                if let SplEnc::Partial { cap, work, .. } = spl_enc {
                    self.partial_work.replace(Some((cap, work)));
                }
                return Ok((out, None));
            }
            Some(out)
        };
        let extra = match (&out, extra_dz) {
            (Some(o), Some(f)) => f(&o.z)?,
            _ => None,
        };
        self.apply_bn_updates()?;
        dev.memset(&mut self.grads, 0)?;

        // ---- backward: expression ----------------------------------------------------------------
        let r_phase = crate::nvtx_range!("backward: expression decoder");
        // d px_r: Σ over cells (gene), or d log θᵀ · one-hot (gene-batch / gene-label); gene-cell's goes
        // through the dispersion head below. Poisson has no θ.
        let uses_theta = lik != GeneLikelihood::Poisson;
        if let (Some(idx), true) = (a.px_r, uses_theta) {
            if m.layout.entries[idx].kind.trainable() {
                let mut g_pxr = self.g(idx);
                match &bt.disp_onehot {
                    None => self.glue.col_sum(Cols::all(&d_lth, g_n), b, g_n, 1.0, 0.0, &mut g_pxr)?,
                    Some((oh, n)) => {
                        self.gemm.gemm(GemmPrecision::F32, 1.0, &Operand::new(&d_lth, b, g_n, true)?, &Operand::new(oh, b, *n, false)?, 0.0, &mut g_pxr, g_n, *n)?
                    }
                }
            }
        }
        let uses_pi = lik == GeneLikelihood::Zinb;
        let theta_head = gene_cell && uses_theta;
        // d(main input) of the expression decoder (B × (L + n_cont)); its first L columns are d(latent).
        let w_e = l + n_cont;
        let dr_e: Buf = match (&a.z_dec_expr, expr_dec) {
            (ExprDecP::Vanilla { fc, scale, dropout, .. }, ExprDec::Vanilla { h, tape }) => {
                let mut dh = self.nan(b * fc.n_out())?;
                self.linear_bwd(scale, &h, &d_raw, b, &mut dh, 0.0)?;
                if uses_pi {
                    self.linear_bwd(dropout, &h, &d_pi, b, &mut dh, 1.0)?;
                }
                if theta_head {
                    let ExprDecP::Vanilla { r, .. } = &a.z_dec_expr else { unreachable!() };
                    self.linear_bwd(r, &h, &d_lth, b, &mut dh, 1.0)?;
                }
                self.fc_backward(fc, &tape, dh, b, None)?.context("expression decoder input gradient")?
            }
            (ExprDecP::Linear { factor, dropout, r }, ExprDec::Linear { factor: ft, dropout: dt, r: rt }) => {
                let dm = self.fc_backward(factor, &ft, d_raw, b, None)?.context("expression decoder input gradient")?;
                if uses_pi {
                    let d2 = self.fc_backward(dropout, &dt, d_pi, b, None)?.context("dropout head input gradient")?;
                    self.glue.copy_cols(Cols::all(&d2, w_e), Cols::all(&dm, w_e), b, w_e, 1.0, 1.0)?;
                }
                if let (true, Some(rf), Some(rt)) = (theta_head, r, &rt) {
                    let d3 = self.fc_backward(rf, rt, d_lth, b, None)?.context("dispersion head input gradient")?;
                    self.glue.copy_cols(Cols::all(&d3, w_e), Cols::all(&dm, w_e), b, w_e, 1.0, 1.0)?;
                }
                dm
            }
            _ => unreachable!("decoder tape does not match the architecture"),
        };

        // ---- backward: splicing ------------------------------------------------------------------
        drop(r_phase);
        let r_phase = crate::nvtx_range!("backward: splicing decoder");
        let mut ds = self.nan(b * k_in)?;
        if dense_decode {
            // d(logits) / B scattered into a zeroed B × J matrix G, then the Linear's products: d W = Gᵀ·S,
            // d S = G·W.
            let mut gw = self.g(out_lin.w);
            let (s_op, w_op) = (Operand::new(&s_in, b, k_in, false)?, Operand::new(&self.p(out_lin.w), j_n, k_in, false)?);
            if self.precision == GemmPrecision::Bf16 {
                // Scattered straight into the GEMMs' bf16 operand: the bits `mm` would get from an f32 G
                // and its conversion, without the f32 matrix or the conversion pass (B × J: 92 MB at the
                // paper size).
                let mut g16: TView<half::bf16> = self.zeros(b * j_n)?;
                self.glue.scatter_bf16(&bt.e.cell_of, &bt.e.s_junc32, &g_logit, j_n, inv_b, &mut g16)?;
                let (s16, w16) = (self.bf16_operand(&s_op)?, self.bf16_operand(&w_op)?);
                self.gemm.gemm(GemmPrecision::Bf16, 1.0, &Operand::new(&g16, b, j_n, true)?, &s16, 0.0, &mut gw, j_n, k_in)?;
                self.gemm.gemm(GemmPrecision::Bf16, 1.0, &Operand::new(&g16, b, j_n, false)?, &w16, 0.0, &mut ds, b, k_in)?;
            } else {
                let mut g_dense = self.zeros(b * j_n)?;
                self.glue.scatter(&bt.e.cell_of, &bt.e.s_junc32, &g_logit, j_n, inv_b, &mut g_dense)?;
                self.mm(1.0, &Operand::new(&g_dense, b, j_n, true)?, &s_op, 0.0, &mut gw, j_n, k_in)?;
                self.mm(1.0, &Operand::new(&g_dense, b, j_n, false)?, &w_op, 0.0, &mut ds, b, k_in)?;
            }
        } else {
            // (a cell's entries in chunks: one warp per cell would leave the GPU B warps for every entry)
            let chunk = super::glue::GATHER_ROWS_CHUNK;
            let mut part = self.scratch::<f64>(super::glue::gather_rows_part_len(b, nnz, k_in, chunk))?;
            self.glue.gather_rows_chunked(&bt.e.s_ptr32, None, &bt.e.s_junc32, &g_logit, &self.p(out_lin.w), k_in, inv_b, 0.0, nnz, chunk, &mut part, &mut ds)?;
            let mut gw = self.g(out_lin.w);
            self.glue.gather_rows(&bt.e.jptr, Some(&bt.e.jorder), &bt.e.cell_of, &g_logit, &s_in, k_in, inv_b, 0.0, &mut gw)?;
        }
        // d b: the entries' d(logits) summed per junction (both decodes)
        let mut gbias = self.g(out_lin.b.unwrap());
        self.glue.seg_sum(&bt.e.jptr, Some(&bt.e.jorder), &g_logit, None, inv_b, 0.0, &mut gbias)?;
        let gw = self.g(out_lin.w);
        // The decoder priors' gradients: 2λ W / N and 2λ_e W C / N.
        if cfg.splicing_decoder_prior != 0.0 {
            let lam = (2.0 * cfg.splicing_decoder_prior * inv_n) as f32;
            self.glue.copy_cols(Cols::all(&w_out, w_out.len), Cols::all(&gw, w_out.len), 1, w_out.len, lam, 1.0)?;
        }
        if let Some(wc) = &effect_wc {
            let lam = (2.0 * cfg.splicing_decoder_effect_prior * inv_n) as f32;
            self.glue.copy_cols(Cols::all(wc, wc.len), Cols::all(&gw, wc.len), 1, wc.len, lam, 1.0)?;
        }
        if matches!(kind, SplicingLoss::DirichletMultinomial | SplicingLoss::BetaBinomial) && m.layout.entries[a.log_phi].kind.trainable() {
            let (lpv, mut gphi) = (self.p(a.log_phi), self.g(a.log_phi));
            self.glue.seg_sum(&bt.e.conc_ptr, Some(&bt.e.conc_ids), &g_conc, Some(&lpv), inv_b, 0.0, &mut gphi)?;
            let lam = (2.0 * cfg.lambda_prior / b as f64) as f32;
            self.glue.copy_cols(Cols::all(&lpv, lpv.len), Cols::all(&gphi, lpv.len), 1, lpv.len, lam, 1.0)?;
        }
        // d(main input) of the splicing decoder and its width (its first L columns are d(latent)).
        let (dr_s, w_s): (Buf, usize) = match (&a.z_dec_spl, spl_tape) {
            (SplDecP::Vanilla { fc, .. }, Some(tape)) => (self.fc_backward(fc, &tape, ds, b, None)?.context("splicing decoder input gradient")?, l + n_cont),
            (SplDecP::Linear { .. }, None) => (ds, k_in),
            _ => unreachable!(),
        };

        // ---- backward: latent --------------------------------------------------------------------
        drop(r_phase);
        let r_phase = crate::nvtx_range!("backward: latent");
        let dlat = self.nan(b * l)?;
        if gated {
            // d lat = [d r_e + g_s d r_s | g_e d r_e + d r_s] (the two halves; g_e gates the splicing
            // half into the expression decoder, g_s the expression half into the splicing decoder)
            for (c0, ae, as_) in [(0, 1.0, into_s), (d, into_e, 1.0)] {
                self.glue.copy_cols(Cols::from(&dr_e, w_e, c0), Cols::from(&dlat, l, c0), b, d, ae, 0.0)?;
                self.glue.copy_cols(Cols::from(&dr_s, w_s, c0), Cols::from(&dlat, l, c0), b, d, as_, 1.0)?;
            }
        } else {
            self.glue.copy_cols(Cols::from(&dr_e, w_e, 0), Cols::all(&dlat, l), b, l, 1.0, 0.0)?;
            self.glue.copy_cols(Cols::from(&dr_s, w_s, 0), Cols::all(&dlat, l), b, l, 1.0, 1.0)?;
        }
        let mut dz = self.zeros(b * l)?;
        if !opts.use_z_mean {
            self.dev.copy(&dlat, &mut dz, b * l)?;
        }
        if let Some(x) = &extra {
            ensure!(x.len() == b * l, "extra dz has {} values for {b} × {l}", x.len());
            let xd = self.upload_step(x)?;
            self.glue.copy_cols(Cols::all(&xd, l), Cols::all(&dz, l), b, l, 1.0, 1.0)?;
        }
        let (mut gme, mut gve, mut gms, mut gvs) = (self.nan(b * d)?, self.nan(b * d)?, self.nan(b * d)?, self.nan(b * d)?);
        let mut raw_cell = self.nan(2 * b)?;
        let mut ws_rows = self.nan(b * d)?;
        let mut d_dimw = match a.dim_weights {
            Some(idx) if matches!(mix, Mix::PerDim { .. }) => Some(self.g(idx)),
            _ => None,
        };
        let mut lg = LatentDevGrads {
            d_mu_e: &mut gme,
            d_v_e: &mut gve,
            d_mu_s: &mut gms,
            d_v_s: &mut gvs,
            d_raw_cell: matches!(mix, Mix::Softmax { .. }).then_some(&mut raw_cell as &mut dyn DeviceMem<f32>),
            d_ws_rows: matches!(mix, Mix::PerDim { .. }).then_some(&mut ws_rows as &mut dyn DeviceMem<f32>),
            d_raw_perdim: d_dimw.as_mut().map(|v| v as &mut dyn DeviceMem<f32>),
        };
        let kl_scale = (opts.kl_weight / b as f64) as f32;
        let pscale = penalty_scale(penalty_kind, opts.kl_weight as f32);
        let dqm_in: Option<&dyn DeviceMem<f32>> = if opts.use_z_mean { Some(&dlat) } else { None };
        self.latent.backward(&ls, &lin, &qz_m, &qz_v, &z, &dz, dqm_in, kl_scale, pscale, &mut lg)?;
        drop(lg);
        if let Some((_, info, ze, zs, ee, es, ve, vs, paired)) = &rbf {
            // MMD-RBF's gradient on the host, through each modality's sample to its posterior, added in.
            let ln = cfg.latent_distribution == LatentDistribution::Ln;
            let (mut dze, mut dzs) = (Mat::<f32>::zeros(b, d), Mat::<f32>::zeros(b, d));
            crate::model::latent::mmd_rbf_bwd(ze, zs, paired, info, 1.0, &mut dze, &mut dzs);
            let (mut dme, mut dve, mut dms, mut dvs) = (Mat::<f32>::zeros(b, d), Mat::<f32>::zeros(b, d), Mat::<f32>::zeros(b, d), Mat::<f32>::zeros(b, d));
            crate::model::vae::sample_bwd(ve, ee, ze, ln, &dze, &mut dme, &mut dve);
            crate::model::vae::sample_bwd(vs, es, zs, ln, &dzs, &mut dms, &mut dvs);
            for (host, dst) in [(&dme, &gme), (&dve, &gve), (&dms, &gms), (&dvs, &gvs)] {
                let up = self.upload_step(&host.data)?;
                self.glue.copy_cols(Cols::all(&up, d), Cols::all(dst, d), b, d, 1.0, 1.0)?;
            }
        }
        if matches!(mix, Mix::Softmax { .. }) && m.layout.entries[a.mod_weights].kind.trainable() {
            // d(raw) of each cell back to the table: summed (`universal`), to each cell's row, or spread
            // evenly over every row for the mean row of unseen cells (`cell`).
            ensure!(!hb.w_mixed, "modality weights `cell`: no backward for a minibatch that mixes cells seen in training with unseen ones");
            let mut gw = self.g(a.mod_weights);
            match (&bt.w_grad, hb.w_mean) {
                (None, _) => self.glue.col_sum(Cols::all(&raw_cell, 2), b, 2, 1.0, 0.0, &mut gw)?,
                (Some((ptr, ids, ones)), false) => self.glue.gather_rows(ptr, Some(ids), &bt.iota, ones, &raw_cell, 2, 1.0, 0.0, &mut gw)?,
                (Some((ptr, zeros, ones)), true) => {
                    let n_obs = gw.len / 2;
                    let mut s = self.nan(2)?;
                    self.glue.col_sum(Cols::all(&raw_cell, 2), b, 2, 1.0 / n_obs as f32, 0.0, &mut s)?;
                    self.glue.gather_rows(ptr, None, zeros, ones, &s, 2, 1.0, 0.0, &mut gw)?;
                }
            }
        }

        // ---- backward: encoders ------------------------------------------------------------------
        drop(r_phase);
        let r_phase = crate::nvtx_range!("backward: encoders");
        let mut dlv_e = self.nan(b * d)?;
        self.glue.map(MapOp::Mul, &gve, Some(&v_e), &mut dlv_e)?;
        let h_w = enc.fc.n_out();
        let mut dh_e = self.nan(b * h_w)?;
        self.linear_bwd(&enc.mean, &h_e, &gme, b, &mut dh_e, 0.0)?;
        self.linear_bwd(&enc.var, &h_e, &dlv_e, b, &mut dh_e, 1.0)?;
        self.fc_backward(&enc.fc, &enc_tape, dh_e, b, Some(&xe_csc))?;
        if let Some((h_l, tape_l, pre, _)) = &lib_enc {
            let le = &a.l_enc_expr;
            let mut dpre = self.nan(b)?;
            self.glue.map(MapOp::MulLeakyReluGrad, &d_lib, Some(pre), &mut dpre)?;
            let mut dh = self.nan(b * le.fc.n_out())?;
            self.linear_bwd(&le.out, h_l, &dpre, b, &mut dh, 0.0)?;
            self.fc_backward(&le.fc, tape_l, dh, b, Some(&xe_csc))?;
        }

        match (&a.z_enc_spl, spl_enc) {
            (SplEncP::Partial(pe), SplEnc::Partial { shape, cap, mut work, pool: _pool, mlp, raw_v }) => {
                let dout = self.nan(b * 2 * d)?;
                self.glue.copy_cols(Cols::all(&gms, d), Cols::from(&dout, 2 * d, 0), b, d, 1.0, 0.0)?;
                let mut dv = self.nan(b * d)?;
                self.glue.map(MapOp::MulSoftplusGrad, &gvs, Some(&raw_v), &mut dv)?;
                self.glue.copy_cols(Cols::all(&dv, d), Cols::from(&dout, 2 * d, d), b, d, 1.0, 0.0)?;
                let dpool = self.fc_backward(&pe.mlp, &mlp, dout, b, None)?.context("partial encoder pool gradient")?;
                let (pv, pc) = self.partial_views(pe);
                let pp = partial_params(&pv, &pc);
                let pb = PartialBatchDev { indptr: &bt.e.s_ptr32, junction: &bt.e.s_junc32, psi: &bt.e.s_psi, jptr: &bt.e.jptr, order: &bt.e.jorder, cell_of: &bt.e.cell_of };
                let mut gv: Vec<Buf> = [pe.emb, pe.h0.w, pe.h0.b.unwrap(), pe.ln1_w, pe.ln1_b, pe.h4.w, pe.h4.b.unwrap(), pe.ln5_w, pe.ln5_b].iter().map(|&i| self.g(i)).collect();
                let [e0, e1, e2, e3, e4, e5, e6, e7, e8] = &mut gv[..] else { unreachable!() };
                let mut pg = PartialGradsDev {
                    emb: Some(e0),
                    w0: Some(e1),
                    b0: Some(e2),
                    g1: Some(e3),
                    be1: Some(e4),
                    w4: Some(e5),
                    b4: Some(e6),
                    g5: Some(e7),
                    be5: Some(e8),
                };
                self.partial.backward(&shape, &pp, &pb, &mut work, &dpool, &mut pg)?;
                self.partial_work.replace(Some((cap, work)));
            }
            (SplEncP::Vanilla(enc_s), SplEnc::Vanilla { h, tape }) => {
                let mut dlv = self.nan(b * d)?;
                self.glue.map(MapOp::Mul, &gvs, Some(&v_s), &mut dlv)?;
                let mut dh = self.nan(b * enc_s.fc.n_out())?;
                self.linear_bwd(&enc_s.mean, &h, &gms, b, &mut dh, 0.0)?;
                self.linear_bwd(&enc_s.var, &h, &dlv, b, &mut dh, 1.0)?;
                let csc = SparseDev { ptr: &bt.e.ps_cptr, idx: &bt.e.ps_crow, val: &bt.e.ps_cval };
                self.fc_backward(&enc_s.fc, &tape, dh, b, Some(&csc))?;
            }
            _ => unreachable!(),
        }
        drop(r_phase);
        let Some(up) = update else {
            dev.synchronize()?;
            return Ok((out.expect("a step without the optimizer is not deferred"), None));
        };
        // ---- optimizer ---------------------------------------------------------------------------
        let sumsq = self.optimizer_enqueue(up.adam, up.config, up.step, up.clip)?;
        let (out, sumsq) = match out {
            Some(out) => (out, self.dev.read(&sumsq)?[0]),
            None => {
                // The f64 sum of squares rides in two f32 slots of the one copy (bit for bit).
                dev.copy(&Buf::new(sumsq.device_address(), 2), &mut at(o_sumsq, 2), 2)?;
                let host_out = dev.read(&outb)?;
                let bits = (host_out[o_sumsq].to_bits() as u64) | ((host_out[o_sumsq + 1].to_bits() as u64) << 32);
                (finish(&host_out, 0.0), f64::from_bits(bits))
            }
        };
        if !out.loss.is_finite() {
            // The caller names the loss term (AdamW skipped the update if the gradient was bad too).
            return Ok((out, None));
        }
        if !sumsq.is_finite() {
            return Err(self.non_finite_gradient()?.into());
        }
        Ok((out, Some(sumsq.sqrt())))
    }

    /// The decoders' inputs from the latent (B × L): both see it, except concatenated latents with a
    /// gate below 1 (§4.4; `SpliceVae::cross_gates`): expression [z_e; g_e z_s], splicing [g_s z_e; z_s]; and with continuous
    /// covariates the main inputs [latent | cont]. Returns (expression's, splicing's).
    fn decoder_inputs(&self, lat: &Buf, bt: &DevBatch, gate: f64) -> Result<(Buf, Buf)> {
        let (b, l, d) = (bt.b, self.model.arch.l, self.model.arch.d);
        let (into_e, into_s) = self.model.cross_gates(gate);
        let (into_e, into_s) = (into_e as f32, into_s as f32);
        let gated = self.model.cfg.modality_weights == ModalityWeights::Concatenate && (into_e != 1.0 || into_s != 1.0);
        let (lat_e, lat_s) = if gated {
            let (re, rs) = (self.nan(b * l)?, self.nan(b * l)?);
            for (dst, scale_e, scale_s) in [(&re, 1.0, into_e), (&rs, into_s, 1.0)] {
                self.glue.copy_cols(Cols::from(lat, l, 0), Cols::from(dst, l, 0), b, d, scale_e, 0.0)?;
                self.glue.copy_cols(Cols::from(lat, l, d), Cols::from(dst, l, d), b, d, scale_s, 0.0)?;
            }
            (re, rs)
        } else {
            (*lat, *lat)
        };
        let n_cont = bt.n_cont;
        let with_cont = |x: &Buf| -> Result<Buf> {
            let Some(cont) = &bt.cont else { return Ok(*x) };
            let w = l + n_cont;
            let o = self.nan(b * w)?;
            self.glue.copy_cols(Cols::all(x, l), Cols::from(&o, w, 0), b, l, 1.0, 0.0)?;
            self.glue.copy_cols(Cols::all(cont, n_cont), Cols::from(&o, w, l), b, n_cont, 1.0, 0.0)?;
            Ok(o)
        };
        Ok((with_cont(&lat_e)?, with_cont(&lat_s)?))
    }

    /// The linear splicing decoder's input S = [latent | cont | one-hots] (B × K) from its main input.
    fn linear_spl_input(&self, main_s: &Buf, bt: &DevBatch, k: usize) -> Result<Buf> {
        let (b, l, n_cont, cov_w) = (bt.b, self.model.arch.l, bt.n_cont, bt.cov_w);
        ensure!(k == l + n_cont + cov_w, "linear splicing decoder input {k} ≠ {l} + {n_cont} + {cov_w}");
        let s = self.nan(b * k)?;
        self.glue.copy_cols(Cols::all(main_s, l + n_cont), Cols::from(&s, k, 0), b, l + n_cont, 1.0, 0.0)?;
        if let Some(c) = &bt.cov {
            self.glue.copy_cols(Cols::all(c, cov_w), Cols::from(&s, k, l + n_cont), b, cov_w, 1.0, 0.0)?;
        }
        Ok(s)
    }

    /// The column sums of x∘y over two rows × cols matrices into `cs` (cols values; the host sums them
    /// in f64 for Σ x∘y).
    fn frob_cols(&self, x: &Buf, y: &Buf, rows: usize, cols: usize, cs: &mut Buf) -> Result<()> {
        let mut xy = self.nan(rows * cols)?;
        self.glue.map(MapOp::Mul, x, Some(y), &mut xy)?;
        self.glue.col_sum(Cols::all(&xy, cols), rows, cols, 1.0, 0.0, cs)
    }

    /// The minibatch covariance of S (B × K): (S − S̄)ᵀ (S − S̄) / B (zeros for one cell), as
    /// `vae::spl_input_covariance`.
    fn input_covariance(&self, s: &Buf, bt: &DevBatch, b: usize, k: usize) -> Result<Buf> {
        let mut c = self.zeros(k * k)?;
        if b <= 1 {
            return Ok(c);
        }
        let mut mean = self.nan(k)?;
        self.glue.col_sum(Cols::all(s, k), b, k, 1.0 / b as f32, 0.0, &mut mean)?;
        // S − 1 S̄ᵀ (a rank-one GEMM update of a copy)
        let mut sc = self.nan(b * k)?;
        self.dev.copy(s, &mut sc, b * k)?;
        self.gemm.gemm(GemmPrecision::F32, -1.0, &Operand::new(&bt.ones, b, 1, false)?, &Operand::new(&mean, 1, k, false)?, 1.0, &mut sc, b, k)?;
        let sco = Operand::new(&sc, b, k, true)?;
        self.gemm.gemm(GemmPrecision::F32, 1.0 / b as f32, &sco, &Operand::new(&sc, b, k, false)?, 0.0, &mut c, k, k)?;
        Ok(c)
    }

    /// Writes the BatchNorm running-statistics updates of the step's forward into the device parameters.
    fn apply_bn_updates(&self) -> Result<()> {
        for (src, idx) in self.bn_pending.borrow_mut().drain(..) {
            let dst = self.p(idx);
            if self.model.layout.entries[idx].name.ends_with("num_batches_tracked") {
                // counter + 1
                self.glue.copy_cols(Cols::all(&src, 1), Cols::all(&dst, 1), 1, 1, 1.0, 1.0)?;
            } else {
                let mut d = dst;
                self.dev.copy(&src, &mut d, dst.len)?;
            }
        }
        Ok(())
    }

    /// BatchNorm's device buffers of a block: its parameters and running statistics, and the step's
    /// statistics `mean` / `inv_std`.
    fn bn_views(&self, bnp: &BnP) -> [Buf; 4] {
        [self.p(bnp.w), self.p(bnp.b), self.p(bnp.running_mean), self.p(bnp.running_var)]
    }

    /// The partial encoder's parameter views: emb, h0 w/b, ln1 w/b, h4 w/b, ln5 w/b, center.
    fn partial_views(&self, pe: &crate::model::arch::PartialEncP) -> ([Buf; 9], Option<Buf>) {
        let ids = [pe.emb, pe.h0.w, pe.h0.b.unwrap(), pe.ln1_w, pe.ln1_b, pe.h4.w, pe.h4.b.unwrap(), pe.ln5_w, pe.ln5_b];
        (ids.map(|i| self.p(i)), pe.center.map(|c| self.p(c)))
    }
}

/// BatchNorm's buffers of a block (γ, β, running mean, running variance) with the step's statistics.
fn bn_dev<'a>(v: &'a [Buf; 4], mean: &'a Buf, inv_std: &'a Buf) -> BnDev<'a> {
    BnDev { gamma: &v[0], beta: &v[1], running_mean: &v[2], running_var: &v[3], mean, inv_std }
}

fn partial_params<'a>(v: &'a [Buf; 9], center: &'a Option<Buf>) -> PartialParamsDev<'a> {
    PartialParamsDev {
        emb: &v[0],
        w0: &v[1],
        b0: &v[2],
        g1: &v[3],
        be1: &v[4],
        w4: &v[5],
        b4: &v[6],
        g5: &v[7],
        be5: &v[8],
        center: center.as_ref().map(|c| c as &dyn DeviceMem<f32>),
    }
}
