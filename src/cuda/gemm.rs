//! Row-major GEMMs through cuBLAS (the plain products of the dense layers: y₀ = x·Wᵀ, dW += dy₀ᵀ·x,
//! dx = dy₀·W), in f32 or with bf16 operands (f32 accumulation and output, `--precision bf16`).
//! CPU twin: [`crate::model::tensor`]'s matmuls. The FCLayers epilogue around them is
//! kernels/dense_epilogue.cu ([`super::CudaDenseEpilogue`]).
//!
//! **Never run on a GPU yet**: written and compiled without one; tests/cuda_gemm_parity.rs compares it
//! with the CPU matmul on a GPU where one exists and skips elsewhere.
//!
//! cuBLAS is column-major; a row-major C = op(A)·op(B) is the column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, and a
//! row-major matrix read column-major is its transpose, so the call swaps the operands (and m, n) and
//! keeps each one's transposition flag.

use super::runtime::{CudaDevice, DeviceMem};
use anyhow::{anyhow, ensure, Result};
use cudarc::cublas::{result as blas, sys, CudaBlas};
use half::bf16;
use std::ffi::c_void;

/// One side of a product: a row-major `rows × cols` matrix with leading dimension `ld` (≥ cols), read
/// transposed when `t`.
#[derive(Clone, Copy, Debug)]
pub struct Operand {
    pub addr: u64,
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
    pub t: bool,
}

impl Operand {
    pub fn new<T>(m: &dyn DeviceMem<T>, rows: usize, cols: usize, t: bool) -> Result<Self> {
        ensure!(m.elements() >= rows * cols, "gemm: operand has {} elements for {rows} × {cols}", m.elements());
        Ok(Operand { addr: m.device_address(), rows, cols, ld: cols, t })
    }
    /// (rows, cols) of op(X).
    fn op_shape(&self) -> (usize, usize) {
        if self.t {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }
    fn cublas_op(&self) -> sys::cublasOperation_t {
        if self.t {
            sys::cublasOperation_t::CUBLAS_OP_T
        } else {
            sys::cublasOperation_t::CUBLAS_OP_N
        }
    }
}

/// op(X)[i][p] of a host-resident operand, as f32 (bf16 storage widened).
///
/// # Safety
/// `x.addr` must point at host memory holding the operand.
unsafe fn host_at(prec: GemmPrecision, x: &Operand, i: usize, p: usize) -> f32 {
    let (r, c) = if x.t { (p, i) } else { (i, p) };
    let at = r * x.ld + c;
    match prec {
        GemmPrecision::F32 => *(x.addr as *const f32).add(at),
        GemmPrecision::Bf16 => (*(x.addr as *const bf16).add(at)).to_f32(),
    }
}

/// The host emulation's GEMM (cuBLAS does not run there): C = α·op(A)·op(B) + β·C with f32
/// accumulation; β = 0 ignores C's old contents, as cuBLAS does.
///
/// # Safety
/// Every address must be host memory of the sizes the operands describe.
#[allow(clippy::too_many_arguments)]
unsafe fn host_gemm(prec: GemmPrecision, tf32: bool, alpha: f32, a: &Operand, b: &Operand, beta: f32, c: *mut f32, m: usize, n: usize, k: usize) {
    let round = |v: f32| if tf32 { round_tf32(v) } else { v };
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f32;
            for p in 0..k {
                acc += round(host_at(prec, a, i, p)) * round(host_at(prec, b, p, j));
            }
            let out = c.add(i * n + j);
            *out = if beta == 0.0 { alpha * acc } else { alpha * acc + beta * *out };
        }
    }
}

/// `v` rounded to TF32 (10 mantissa bits), to nearest with ties away from zero (`cvt.rna.tf32.f32`).
pub fn round_tf32(v: f32) -> f32 {
    if !v.is_finite() {
        return v;
    }
    f32::from_bits(v.to_bits().wrapping_add(0x1000) & !0x1fff)
}

/// Operand storage of a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPrecision {
    F32,
    /// bf16 A and B, f32 C and accumulation.
    Bf16,
}

pub struct CudaGemm<'d> {
    dev: &'d CudaDevice,
    /// None under the host emulation: the products run on the host ([`host_gemm`]).
    blas: Option<CudaBlas>,
}

fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow!("gemm: {what} = {v} does not fit cuBLAS's 32-bit sizes"))
}

impl<'d> CudaGemm<'d> {
    /// A cuBLAS handle on the device's stream. cudarc loads libcublas at run time and panics when it
    /// is missing; that becomes an error naming the library.
    pub fn new(dev: &'d CudaDevice) -> Result<Self> {
        let Some(stream) = dev.stream().cloned() else {
            return Ok(CudaGemm { dev, blas: None });
        };
        let blas = std::panic::catch_unwind(move || CudaBlas::new(stream))
            .map_err(|_| anyhow!("cuBLAS could not be loaded (libcublas.so.13 from CUDA 13 is needed next to the driver); use --device cpu"))?
            .map_err(|e| anyhow!("creating a cuBLAS handle: {e:?}"))?;
        Ok(CudaGemm { dev, blas: Some(blas) })
    }

    /// C (m × n, row-major, ld = n) = α·op(A)·op(B) + β·C. Enqueued on the device's stream.
    pub fn gemm(&self, prec: GemmPrecision, alpha: f32, a: &Operand, b: &Operand, beta: f32, c: &mut dyn DeviceMem<f32>, m: usize, n: usize) -> Result<()> {
        self.gemm_any(prec, false, alpha, a, b, beta, c, m, n)
    }

    /// [`CudaGemm::gemm`] of f32 operands on the tensor cores in TF32 (cuBLAS's
    /// `CUBLAS_COMPUTE_32F_FAST_TF32`: each operand reduced to 10 mantissa bits, f32 accumulation). No
    /// conversion pass; 7–8× the f32 peak on an A100 or H100. The host emulation rounds the operands
    /// to nearest (ties away from zero, as `cvt.rna.tf32.f32`); cuBLAS may round or truncate, within
    /// 2⁻¹⁰ relative either way.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_tf32(&self, alpha: f32, a: &Operand, b: &Operand, beta: f32, c: &mut dyn DeviceMem<f32>, m: usize, n: usize) -> Result<()> {
        self.gemm_any(GemmPrecision::F32, true, alpha, a, b, beta, c, m, n)
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm_any(&self, prec: GemmPrecision, tf32: bool, alpha: f32, a: &Operand, b: &Operand, beta: f32, c: &mut dyn DeviceMem<f32>, m: usize, n: usize) -> Result<()> {
        let _r = crate::nvtx_range!("gemm");
        self.dev.count_launch();
        let (am, ak) = a.op_shape();
        let (bk, bn) = b.op_shape();
        ensure!(am == m && bn == n && ak == bk, "gemm: op(A) is {am} × {ak}, op(B) {bk} × {bn}, C {m} × {n}");
        ensure!(c.elements() >= m * n, "gemm: C has {} elements for {m} × {n}", c.elements());
        ensure!(a.ld >= a.cols && b.ld >= b.cols, "gemm: leading dimension below the row length");
        if m == 0 || n == 0 {
            return Ok(());
        }
        let k = ak;
        // (timed under this name while the kernel profile is on)
        let name = match (prec, tf32) {
            (GemmPrecision::F32, false) => "cublas sgemm",
            (GemmPrecision::F32, true) => "cublas gemm tf32",
            (GemmPrecision::Bf16, _) => "cublas gemm bf16",
        };
        self.dev.timed(name, || {
            let Some(blas_handle) = &self.blas else {
                // SAFETY: emulated device memory is host memory; the shapes were checked above.
                unsafe { host_gemm(prec, tf32, alpha, a, b, beta, c.device_address() as *mut f32, m, n, k) };
                return Ok(());
            };
            let (mi, ni, ki) = (int(m, "m")?, int(n, "n")?, int(k, "k")?);
            let (lda, ldb) = (int(a.ld, "lda")?, int(b.ld, "ldb")?);
            let h = *blas_handle.handle();
            // Column-major Cᵀ (n × m) = op(B)ᵀ · op(A)ᵀ: B first.
            unsafe {
                // f32 operands with f32 compute are cuBLAS's sgemm; bf16 operands, or f32 ones in
                // TF32, go through gemm_ex (f32 C and accumulation either way).
                let ex = match (prec, tf32) {
                    (GemmPrecision::F32, false) => None,
                    (GemmPrecision::F32, true) => Some((sys::cudaDataType::CUDA_R_32F, sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32)),
                    (GemmPrecision::Bf16, _) => Some((sys::cudaDataType::CUDA_R_16BF, sys::cublasComputeType_t::CUBLAS_COMPUTE_32F)),
                };
                match ex {
                    None => blas::sgemm(
                        h,
                        b.cublas_op(),
                        a.cublas_op(),
                        ni,
                        mi,
                        ki,
                        &alpha,
                        b.addr as *const f32,
                        ldb,
                        a.addr as *const f32,
                        lda,
                        &beta,
                        c.device_address() as *mut f32,
                        ni,
                    ),
                    Some((operand_type, compute)) => blas::gemm_ex(
                        h,
                        b.cublas_op(),
                        a.cublas_op(),
                        ni,
                        mi,
                        ki,
                        &alpha as *const f32 as *const c_void,
                        b.addr as *const c_void,
                        operand_type,
                        ldb,
                        a.addr as *const c_void,
                        operand_type,
                        lda,
                        &beta as *const f32 as *const c_void,
                        c.device_address() as *mut c_void,
                        sys::cudaDataType::CUDA_R_32F,
                        ni,
                        compute,
                        sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                    ),
                }
            }
            .map_err(|e| anyhow!("cuBLAS gemm ({m} × {n} × {k}, {prec:?}): {e:?}"))
        })
    }

    /// Convenience for tests: C = op(A)·op(B) of host row-major matrices (A is `ar × ac`, B `br × bc`).
    #[allow(clippy::too_many_arguments)]
    pub fn run_host(&self, prec: GemmPrecision, a: &[f32], ar: usize, ac: usize, ta: bool, b: &[f32], br: usize, bc: usize, tb: bool) -> Result<Vec<f32>> {
        self.run_host_any(prec, false, a, ar, ac, ta, b, br, bc, tb)
    }

    /// [`CudaGemm::run_host`] through [`CudaGemm::gemm_tf32`].
    #[allow(clippy::too_many_arguments)]
    pub fn run_host_tf32(&self, a: &[f32], ar: usize, ac: usize, ta: bool, b: &[f32], br: usize, bc: usize, tb: bool) -> Result<Vec<f32>> {
        self.run_host_any(GemmPrecision::F32, true, a, ar, ac, ta, b, br, bc, tb)
    }

    #[allow(clippy::too_many_arguments)]
    fn run_host_any(&self, prec: GemmPrecision, tf32: bool, a: &[f32], ar: usize, ac: usize, ta: bool, b: &[f32], br: usize, bc: usize, tb: bool) -> Result<Vec<f32>> {
        let dev = self.dev;
        let m = if ta { ac } else { ar };
        let n = if tb { br } else { bc };
        let mut c = dev.upload(&vec![f32::NAN; (m * n).max(1)])?;
        match prec {
            GemmPrecision::F32 => {
                let (da, db) = (dev.upload(a)?, dev.upload(b)?);
                self.gemm_any(prec, tf32, 1.0, &Operand::new(&da, ar, ac, ta)?, &Operand::new(&db, br, bc, tb)?, 0.0, &mut c, m, n)?;
                dev.synchronize()?;
            }
            GemmPrecision::Bf16 => {
                let conv = |v: &[f32]| v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<bf16>>();
                let (da, db) = (dev.upload(&conv(a))?, dev.upload(&conv(b))?);
                self.gemm_any(prec, tf32, 1.0, &Operand::new(&da, ar, ac, ta)?, &Operand::new(&db, br, bc, tb)?, 0.0, &mut c, m, n)?;
                dev.synchronize()?;
            }
        }
        let mut out = dev.download(&c)?;
        out.truncate(m * n);
        Ok(out)
    }
}
