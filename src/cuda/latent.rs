//! Typed launches of kernels/latent.cu: posterior mixing, reparameterisation, KL and the modality
//! penalty, forward and backward, one warp per cell. CPU twin: [`crate::model::latent_step`].
//!
//! **This kernel has never run on a GPU**: it was written and compiled without one. Its logic is
//! checked on the host by tests/cuda_latent_parity.rs (the kernel source compiled against
//! kernels/host_emu.h); the same test compares it on a GPU where one exists and skips elsewhere.

use super::runtime::{CudaDevice, DeviceMem, KernelArg, Kernel};
use crate::model::config::ModalityPenalty;
use crate::model::latent_step::{LatentIn, Mix};
use crate::model::vae::Modality;
use anyhow::{bail, ensure, Result};
use cudarc::driver::LaunchConfig;

/// Threads per block (LAT_THREADS in kernels/latent.cu); one warp per cell.
pub const LAT_THREADS: u32 = 128;
pub const LAT_ROWS_PER_BLOCK: usize = LAT_THREADS as usize / 32;

/// MIX_* of kernels/latent.cu.
pub fn mix_code(m: Mix) -> i32 {
    match m {
        Mix::Concat => 0,
        Mix::Softmax { .. } => 1,
        Mix::PerDim { .. } => 2,
        Mix::Routed(Modality::Expression) => 3,
        Mix::Routed(Modality::Splicing) => 4,
    }
}

/// PEN_* of kernels/latent.cu; MMDRbf is not in the kernel.
pub fn penalty_code(p: ModalityPenalty) -> Result<i32> {
    Ok(match p {
        ModalityPenalty::None => 0,
        ModalityPenalty::Jeffreys => 1,
        ModalityPenalty::Mmd => 2,
        ModalityPenalty::JeffreysExact => 3,
        ModalityPenalty::MmdRbf => bail!("the CUDA latent step does not implement the MMDRbf penalty (its bandwidth is a median over all pairs); use --device cpu"),
    })
}

/// The scale `latent_bwd` gives the penalty gradient: kl_weight for JeffreysExact (the kernel divides
/// by the number of paired cells), 1 for the others.
pub fn penalty_scale(p: ModalityPenalty, kl_weight: f32) -> f32 {
    if p == ModalityPenalty::JeffreysExact {
        kl_weight
    } else {
        1.0
    }
}

/// Sizes and options of one launch.
#[derive(Clone, Copy, Debug)]
pub struct LatentShape {
    pub b: usize,
    pub d: usize,
    pub mix: Mix,
    pub ln: bool,
    pub penalty: ModalityPenalty,
}

impl LatentShape {
    /// Joint latent width.
    pub fn l(&self) -> usize {
        if self.mix == Mix::Concat {
            2 * self.d
        } else {
            self.d
        }
    }
    fn raw_len(&self) -> usize {
        match self.mix {
            Mix::Softmax { .. } => 2 * self.b,
            Mix::PerDim { .. } => self.d,
            _ => 0,
        }
    }
    fn perdim_mask(&self) -> i32 {
        matches!(self.mix, Mix::PerDim { mask_spl: true }) as i32
    }
    fn soft_indep(&self) -> i32 {
        matches!(self.mix, Mix::Softmax { independent: true }) as i32
    }
}

/// Device inputs common to both passes (B × d posteriors, masks as u8).
pub struct LatentDevIn<'a> {
    pub mu_e: &'a dyn DeviceMem<f32>,
    pub v_e: &'a dyn DeviceMem<f32>,
    pub mu_s: &'a dyn DeviceMem<f32>,
    pub v_s: &'a dyn DeviceMem<f32>,
    /// Per-cell raw weights (B × 2, Softmax) or d (PerDim); None otherwise.
    pub raw: Option<&'a dyn DeviceMem<f32>>,
    pub mask_e: &'a dyn DeviceMem<u8>,
    pub mask_s: &'a dyn DeviceMem<u8>,
    /// B × L standard normals.
    pub eps: &'a dyn DeviceMem<f32>,
}

/// Forward outputs (and backward inputs): qz_m, qz_v, z (B × L), KL_i and pen_i (B).
pub struct LatentDevFwd<'a> {
    pub qz_m: &'a mut dyn DeviceMem<f32>,
    pub qz_v: &'a mut dyn DeviceMem<f32>,
    pub z: &'a mut dyn DeviceMem<f32>,
    pub kl_row: &'a mut dyn DeviceMem<f32>,
    pub pen_row: &'a mut dyn DeviceMem<f32>,
}

/// Backward outputs: the posteriors' gradients (B × d), d(raw) per cell (B × 2, Softmax), the
/// per-dimension mixing's per-cell rows (B × d scratch) and its d(raw) (d).
pub struct LatentDevGrads<'a> {
    pub d_mu_e: &'a mut dyn DeviceMem<f32>,
    pub d_v_e: &'a mut dyn DeviceMem<f32>,
    pub d_mu_s: &'a mut dyn DeviceMem<f32>,
    pub d_v_s: &'a mut dyn DeviceMem<f32>,
    pub d_raw_cell: Option<&'a mut dyn DeviceMem<f32>>,
    pub d_ws_rows: Option<&'a mut dyn DeviceMem<f32>>,
    pub d_raw_perdim: Option<&'a mut dyn DeviceMem<f32>>,
}

/// Results copied back to the host by [`CudaLatent::run_host`].
#[derive(Clone, Debug)]
pub struct LatentHost {
    pub qz_m: Vec<f32>,
    pub qz_v: Vec<f32>,
    pub z: Vec<f32>,
    pub kl_row: Vec<f32>,
    pub pen_row: Vec<f32>,
    pub d_mu_e: Vec<f32>,
    pub d_v_e: Vec<f32>,
    pub d_mu_s: Vec<f32>,
    pub d_v_s: Vec<f32>,
    /// B × 2 (Softmax) or d (PerDim); empty otherwise.
    pub d_raw: Vec<f32>,
}

pub struct CudaLatent<'d> {
    dev: &'d CudaDevice,
    fwd: Kernel,
    bwd: Kernel,
    perdim: Kernel,
}

fn addr(m: Option<&dyn DeviceMem<f32>>) -> u64 {
    m.map(|m| m.device_address()).unwrap_or(0)
}

/// Checks the buffer sizes of one launch.
fn check_inputs(s: &LatentShape, inp: &LatentDevIn<'_>) -> Result<()> {
    let (b, d) = (s.b, s.d);
    ensure!(b >= 1 && b <= i32::MAX as usize && d >= 1 && s.l() <= i32::MAX as usize, "latent: B = {b}, d = {d} out of range");
    for (name, m) in [("mu_e", inp.mu_e), ("v_e", inp.v_e), ("mu_s", inp.mu_s), ("v_s", inp.v_s)] {
        ensure!(m.elements() == b * d, "latent: {name} has {} entries for {b} × {d}", m.elements());
    }
    ensure!(inp.mask_e.elements() == b && inp.mask_s.elements() == b, "latent: the masks need {b} entries");
    ensure!(inp.eps.elements() == b * s.l(), "latent: eps has {} entries for {b} × {}", inp.eps.elements(), s.l());
    let want = s.raw_len();
    if want > 0 {
        ensure!(inp.raw.is_some_and(|r| r.elements() == want), "latent: {:?} mixing needs {want} raw weights", s.mix);
    }
    if matches!(s.mix, Mix::PerDim { .. }) {
        ensure!(d <= LAT_THREADS as usize, "latent: the per-dimension mixing supports d ≤ {LAT_THREADS}, got {d}");
    }
    Ok(())
}

impl<'d> CudaLatent<'d> {
    pub fn new(dev: &'d CudaDevice) -> Result<Self> {
        Ok(CudaLatent {
            dev,
            fwd: dev.function("latent", "latent_fwd")?,
            bwd: dev.function("latent", "latent_bwd")?,
            perdim: dev.function("latent", "latent_perdim_raw_bwd")?,
        })
    }

    fn grid(b: usize) -> LaunchConfig {
        LaunchConfig { grid_dim: (b.div_ceil(LAT_ROWS_PER_BLOCK) as u32, 1, 1), block_dim: (LAT_THREADS, 1, 1), shared_mem_bytes: 0 }
    }

    /// Enqueues the forward.
    pub fn forward(&self, s: &LatentShape, inp: &LatentDevIn<'_>, out: &mut LatentDevFwd<'_>) -> Result<()> {
        let _r = crate::nvtx_range!("latent_fwd");
        check_inputs(s, inp)?;
        let (b, l) = (s.b, s.l());
        for (name, m) in [("qz_m", &*out.qz_m), ("qz_v", &*out.qz_v), ("z", &*out.z)] {
            ensure!(m.elements() == b * l, "latent: {name} has {} entries for {b} × {l}", m.elements());
        }
        ensure!(out.kl_row.elements() == b && out.pen_row.elements() == b, "latent: kl_row and pen_row need {b} entries");
        let args: [&dyn KernelArg; 20] = [
            &inp.mu_e.device_address(),
            &inp.v_e.device_address(),
            &inp.mu_s.device_address(),
            &inp.v_s.device_address(),
            &(b as i32),
            &(s.d as i32),
            &mix_code(s.mix),
            &addr(inp.raw),
            &inp.mask_e.device_address(),
            &inp.mask_s.device_address(),
            &s.perdim_mask(),
            &s.soft_indep(),
            &inp.eps.device_address(),
            &(s.ln as i32),
            &penalty_code(s.penalty)?,
            &out.qz_m.device_address(),
            &out.qz_v.device_address(),
            &out.z.device_address(),
            &out.kl_row.device_address(),
            &out.pen_row.device_address(),
        ];
        self.dev.launch(&self.fwd, Self::grid(b), &args)
    }

    /// Enqueues the backward (and, for the per-dimension mixing, the reduction of its d(raw)).
    /// `fwd` holds the forward's qz_m, qz_v, z; `dz` and `dqm_in` are B × L.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        s: &LatentShape,
        inp: &LatentDevIn<'_>,
        qz_m: &dyn DeviceMem<f32>,
        qz_v: &dyn DeviceMem<f32>,
        z: &dyn DeviceMem<f32>,
        dz: &dyn DeviceMem<f32>,
        dqm_in: Option<&dyn DeviceMem<f32>>,
        kl_scale: f32,
        pen_scale: f32,
        out: &mut LatentDevGrads<'_>,
    ) -> Result<()> {
        let _r = crate::nvtx_range!("latent_bwd");
        check_inputs(s, inp)?;
        let (b, d, l) = (s.b, s.d, s.l());
        for (name, m) in [("qz_m", qz_m), ("qz_v", qz_v), ("z", z), ("dz", dz)] {
            ensure!(m.elements() == b * l, "latent: {name} has {} entries for {b} × {l}", m.elements());
        }
        if let Some(m) = dqm_in {
            ensure!(m.elements() == b * l, "latent: dqm_in has {} entries for {b} × {l}", m.elements());
        }
        for (name, m) in [("d_mu_e", &*out.d_mu_e), ("d_v_e", &*out.d_v_e), ("d_mu_s", &*out.d_mu_s), ("d_v_s", &*out.d_v_s)] {
            ensure!(m.elements() == b * d, "latent: {name} has {} entries for {b} × {d}", m.elements());
        }
        let (raw_cell, ws_rows) = (out.d_raw_cell.as_ref().map(|m| m.device_address()), out.d_ws_rows.as_ref().map(|m| m.device_address()));
        match s.mix {
            Mix::Softmax { .. } => ensure!(out.d_raw_cell.as_ref().is_some_and(|m| m.elements() == 2 * b), "latent: softmax mixing needs d_raw_cell with {} entries", 2 * b),
            Mix::PerDim { .. } => {
                ensure!(out.d_ws_rows.as_ref().is_some_and(|m| m.elements() == b * d), "latent: per-dimension mixing needs d_ws_rows with {b} × {d} entries");
                ensure!(out.d_raw_perdim.as_ref().is_some_and(|m| m.elements() == d), "latent: per-dimension mixing needs d_raw_perdim with {d} entries");
            }
            _ => {}
        }
        let args: [&dyn KernelArg; 28] = [
            &inp.mu_e.device_address(),
            &inp.v_e.device_address(),
            &inp.mu_s.device_address(),
            &inp.v_s.device_address(),
            &(b as i32),
            &(d as i32),
            &mix_code(s.mix),
            &addr(inp.raw),
            &inp.mask_e.device_address(),
            &inp.mask_s.device_address(),
            &s.perdim_mask(),
            &s.soft_indep(),
            &inp.eps.device_address(),
            &(s.ln as i32),
            &penalty_code(s.penalty)?,
            &qz_m.device_address(),
            &qz_v.device_address(),
            &z.device_address(),
            &dz.device_address(),
            &addr(dqm_in),
            &kl_scale,
            &pen_scale,
            &out.d_mu_e.device_address(),
            &out.d_v_e.device_address(),
            &out.d_mu_s.device_address(),
            &out.d_v_s.device_address(),
            &raw_cell.unwrap_or(0),
            &ws_rows.unwrap_or(0),
        ];
        self.dev.launch(&self.bwd, Self::grid(b), &args)?;
        if let (Mix::PerDim { .. }, Some(rows), Some(draw)) = (s.mix, ws_rows, out.d_raw_perdim.as_ref()) {
            let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (LAT_THREADS, 1, 1), shared_mem_bytes: 0 };
            let args: [&dyn KernelArg; 5] = [&rows, &(b as i32), &(d as i32), &addr(inp.raw), &draw.device_address()];
            self.dev.launch(&self.perdim, cfg, &args)?;
        }
        Ok(())
    }

    /// Convenience for tests: uploads the twin's inputs, poisons every output with NaN, runs the
    /// forward and the backward, copies back.
    pub fn run_host(&self, inp: &LatentIn<'_, f32>, dz: &[f32], dqm_in: Option<&[f32]>, kl_scale: f32, kl_weight: f32) -> Result<LatentHost> {
        let s = LatentShape { b: inp.mu_e.rows, d: inp.mu_e.cols, mix: inp.mix, ln: inp.ln, penalty: inp.penalty };
        let (b, d, l) = (s.b, s.d, s.l());
        let dev = self.dev;
        let nan = |n: usize| dev.upload(&vec![f32::NAN; n.max(1)]);
        let u8s = |m: &[bool]| m.iter().map(|&x| x as u8).collect::<Vec<u8>>();
        let (me, ve, ms, vs) = (dev.upload(&inp.mu_e.data)?, dev.upload(&inp.v_e.data)?, dev.upload(&inp.mu_s.data)?, dev.upload(&inp.v_s.data)?);
        let raw = if s.raw_len() > 0 { Some(dev.upload(inp.raw)?) } else { None };
        let (mke, mks) = (dev.upload(&u8s(inp.mask_e))?, dev.upload(&u8s(inp.mask_s))?);
        let eps = dev.upload(&inp.eps.data)?;
        let din = LatentDevIn { mu_e: &me, v_e: &ve, mu_s: &ms, v_s: &vs, raw: raw.as_ref().map(|r| r as &dyn DeviceMem<f32>), mask_e: &mke, mask_s: &mks, eps: &eps };
        let (mut qm, mut qv, mut z, mut kl, mut pen) = (nan(b * l)?, nan(b * l)?, nan(b * l)?, nan(b)?, nan(b)?);
        self.forward(&s, &din, &mut LatentDevFwd { qz_m: &mut qm, qz_v: &mut qv, z: &mut z, kl_row: &mut kl, pen_row: &mut pen })?;
        let dzd = dev.upload(dz)?;
        let dqd = match dqm_in {
            Some(x) => Some(dev.upload(x)?),
            None => None,
        };
        let (mut gme, mut gve, mut gms, mut gvs) = (nan(b * d)?, nan(b * d)?, nan(b * d)?, nan(b * d)?);
        let (mut rc, mut rows, mut rp) = (nan(2 * b)?, nan(b * d)?, nan(d)?);
        let soft = matches!(s.mix, Mix::Softmax { .. });
        let perdim = matches!(s.mix, Mix::PerDim { .. });
        let mut g = LatentDevGrads {
            d_mu_e: &mut gme,
            d_v_e: &mut gve,
            d_mu_s: &mut gms,
            d_v_s: &mut gvs,
            d_raw_cell: soft.then_some(&mut rc as &mut dyn DeviceMem<f32>),
            d_ws_rows: perdim.then_some(&mut rows as &mut dyn DeviceMem<f32>),
            d_raw_perdim: perdim.then_some(&mut rp as &mut dyn DeviceMem<f32>),
        };
        let pscale = penalty_scale(s.penalty, kl_weight);
        self.backward(&s, &din, &qm, &qv, &z, &dzd, dqd.as_ref().map(|x| x as &dyn DeviceMem<f32>), kl_scale, pscale, &mut g)?;
        dev.synchronize()?;
        let d_raw = if soft {
            dev.download(&rc)?
        } else if perdim {
            dev.download(&rp)?
        } else {
            Vec::new()
        };
        Ok(LatentHost {
            qz_m: dev.download(&qm)?,
            qz_v: dev.download(&qv)?,
            z: dev.download(&z)?,
            kl_row: dev.download(&kl)?,
            pen_row: dev.download(&pen)?,
            d_mu_e: dev.download(&gme)?,
            d_v_e: dev.download(&gve)?,
            d_mu_s: dev.download(&gms)?,
            d_v_s: dev.download(&gvs)?,
            d_raw,
        })
    }
}
