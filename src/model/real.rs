//! The scalar type the CPU model is generic over (f32 in production, f64 for gradient checks), and
//! the special functions the likelihoods need (lgamma, digamma), written once in f64.

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

/// A floating-point scalar: f32 or f64.
pub trait Real:
    Copy
    + Clone
    + Send
    + Sync
    + Default
    + Debug
    + PartialOrd
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + std::iter::Sum
{
    const ZERO: Self;
    const ONE: Self;
    const NAME: &'static str;
    fn from_f64(x: f64) -> Self;
    fn from_f32(x: f32) -> Self;
    fn to_f64(self) -> f64;
    fn to_f32(self) -> f32;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn ln_1p(self) -> Self;
    /// eˣ, ln x and ln(1 + x) for loops meant to vectorise: f32 uses the branch-free polynomials of
    /// [`super::vmath`] (within 1–3 ulp of libm, see its domains), f64 the exact libm functions (the
    /// gradient checks difference the f64 model, so it keeps full precision).
    fn exp_v(self) -> Self;
    fn ln_v(self) -> Self;
    fn ln_1p_v(self) -> Self;
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    fn is_finite(self) -> bool;
    fn max(self, o: Self) -> Self;
    fn min(self, o: Self) -> Self;
    /// log Γ(x). Computed in f64 and rounded.
    fn lgamma(self) -> Self {
        Self::from_f64(lgamma(self.to_f64()))
    }
    /// ψ(x) = d/dx log Γ(x). Computed in f64 and rounded.
    fn digamma(self) -> Self {
        Self::from_f64(digamma(self.to_f64()))
    }
    /// C = alpha·A·B + beta·C with arbitrary strides (A: m×k, B: k×n, C: m×n). When beta == 0, C is
    /// not read.
    ///
    /// # Safety
    /// The pointers and strides must describe valid, non-overlapping (for C) memory.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

macro_rules! impl_real {
    ($t:ty, $name:expr, $gemm:path, $exp_v:path, $ln_v:path, $ln_1p_v:path) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NAME: &'static str = $name;
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn from_f32(x: f32) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn to_f32(self) -> f32 {
                self as f32
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            #[inline(always)]
            fn exp_v(self) -> Self {
                $exp_v(self)
            }
            #[inline(always)]
            fn ln_v(self) -> Self {
                $ln_v(self)
            }
            #[inline(always)]
            fn ln_1p_v(self) -> Self {
                $ln_1p_v(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            #[inline(always)]
            fn max(self, o: Self) -> Self {
                <$t>::max(self, o)
            }
            #[inline(always)]
            fn min(self, o: Self) -> Self {
                <$t>::min(self, o)
            }
            unsafe fn gemm_raw(
                m: usize,
                k: usize,
                n: usize,
                alpha: Self,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
            ) {
                $gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
            }
        }
    };
}
impl_real!(f32, "f32", matrixmultiply::sgemm, super::vmath::exp, super::vmath::ln, super::vmath::ln_1p);
impl_real!(f64, "f64", matrixmultiply::dgemm, f64::exp, f64::ln, f64::ln_1p);

/// Small elementwise helpers matching PyTorch's definitions.
#[inline(always)]
pub fn sigmoid<T: Real>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp())
}

/// torch.nn.functional.softplus (beta 1, threshold 20): x above 20 is returned as is.
#[inline(always)]
pub fn softplus<T: Real>(x: T) -> T {
    if x > T::from_f64(20.0) {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// The inverse of `softplus` (threshold included): y above 20 is its own preimage, else ln(eʸ − 1).
pub fn softplus_inv(y: f64) -> f64 {
    if y > 20.0 {
        y
    } else {
        y.exp_m1().ln()
    }
}

/// Derivative of `softplus` as PyTorch computes it (1 above the threshold).
#[inline(always)]
pub fn softplus_grad<T: Real>(x: T) -> T {
    if x > T::from_f64(20.0) {
        T::ONE
    } else {
        sigmoid(x)
    }
}

/// `softplus(x)` and `softplus_grad(x)` sharing one exp: for x ≤ 20, e = eˣ, ln(1 + e) and e / (1 + e).
#[inline(always)]
pub fn softplus_and_grad<T: Real>(x: T) -> (T, T) {
    if x > T::from_f64(20.0) {
        (x, T::ONE)
    } else {
        let e = x.exp();
        (e.ln_1p(), e / (T::ONE + e))
    }
}

/// [`softplus_and_grad`] through [`Real::exp_v`] / [`Real::ln_1p_v`] and selects instead of a branch, for
/// loops meant to vectorise (the same formula; for f64 the same bits).
#[inline(always)]
pub fn softplus_and_grad_v<T: Real>(x: T) -> (T, T) {
    let big = x > T::from_f64(20.0);
    let e = (if big { T::ZERO } else { x }).exp_v();
    let sp = e.ln_1p_v();
    let g = e / (T::ONE + e);
    (if big { x } else { sp }, if big { T::ONE } else { g })
}

/// The combination [`sum8`] and [`dot8`] end with: eight lane accumulators, pairwise, plus the
/// remainder `s` (shared so that fused loops reproduce their bits).
#[inline(always)]
pub fn fold8<T: Real>(acc: &[T; 8], s: T) -> T {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + s
}

/// Sum with 8 independent accumulators (vectorisable; float adds are not reassociated otherwise).
#[inline]
pub fn sum8<T: Real>(x: &[T]) -> T {
    let mut acc = [T::ZERO; 8];
    let mut ch = x.chunks_exact(8);
    for c in &mut ch {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    let mut s = T::ZERO;
    for &v in ch.remainder() {
        s += v;
    }
    fold8(&acc, s)
}

/// Dot product with 8 independent accumulators.
#[inline]
pub fn dot8<T: Real>(a: &[T], b: &[T]) -> T {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [T::ZERO; 8];
    let n8 = a.len() / 8 * 8;
    let (a8, ar) = a.split_at(n8);
    let (b8, br) = b.split_at(n8);
    for (ca, cb) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += ca[l] * cb[l];
        }
    }
    let mut s = T::ZERO;
    for (&x, &y) in ar.iter().zip(br) {
        s += x * y;
    }
    fold8(&acc, s)
}

const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_8;

/// log Γ(x) for real x (reflection below 0.5; recurrence up to 10, then Stirling's series).
/// Absolute error ≲ 1e-14 on (0, 1e10]; +inf at the poles (0, −1, −2, …).
pub fn lgamma(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x == f64::INFINITY {
        return f64::INFINITY;
    }
    if x <= 0.0 && x == x.floor() {
        return f64::INFINITY;
    }
    if x < 0.5 {
        // Γ(x)Γ(1−x) = π / sin(πx)
        let s = (std::f64::consts::PI * x).sin().abs();
        return (std::f64::consts::PI / s).ln() - lgamma(1.0 - x);
    }
    let mut x = x;
    let mut shift = 0.0;
    if x < 10.0 {
        let mut prod = 1.0;
        while x < 10.0 {
            prod *= x;
            x += 1.0;
        }
        shift = -prod.ln();
    }
    let r = 1.0 / x;
    let r2 = r * r;
    // Stirling: B_{2n} / (2n (2n−1) x^{2n−1})
    let series = r
        * (1.0 / 12.0
            - r2 * (1.0 / 360.0
                - r2 * (1.0 / 1260.0
                    - r2 * (1.0 / 1680.0 - r2 * (1.0 / 1188.0 - r2 * (691.0 / 360360.0 - r2 * (1.0 / 156.0)))))));
    (x - 0.5) * x.ln() - x + LN_SQRT_2PI + series + shift
}

/// ψ(x) for real x (reflection below 0; recurrence up to 10, then the asymptotic series).
pub fn digamma(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 && x == x.floor() {
        return f64::NAN;
    }
    if x < 0.0 {
        // ψ(1−x) − ψ(x) = π cot(πx)
        return digamma(1.0 - x) - std::f64::consts::PI / (std::f64::consts::PI * x).tan();
    }
    let mut x = x;
    let mut acc = 0.0;
    while x < 10.0 {
        acc -= 1.0 / x;
        x += 1.0;
    }
    let f = 1.0 / (x * x);
    let series = f
        * (1.0 / 12.0
            - f * (1.0 / 120.0
                - f * (1.0 / 252.0 - f * (1.0 / 240.0 - f * (1.0 / 132.0 - f * (691.0 / 32760.0 - f / 12.0))))));
    acc + x.ln() - 0.5 / x - series
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lgamma_known_values() {
        // (x, log Γ(x)) from high-precision references.
        let cases = [
            (1.0, 0.0),
            (2.0, 0.0),
            (0.5, 0.572_364_942_924_700_1),
            (3.0, std::f64::consts::LN_2),
            (10.0, 12.801_827_480_081_469),
            (0.1, 2.252_712_651_734_206),
            (1e-6, 13.815_509_980_749_43),
            (100.0, 359.134_205_369_575_4),
            (1e6, 12_815_504.569_147_612),
            (4.6, 2.593_857_154_038_48),
            (-0.5, 1.265_512_123_484_645_4),
        ];
        for (x, want) in cases {
            let got = lgamma(x);
            let tol = 1e-13 * want.abs().max(1.0);
            assert!((got - want).abs() <= tol, "lgamma({x}) = {got}, want {want}");
        }
    }

    #[test]
    fn digamma_known_values() {
        let euler = 0.577_215_664_901_532_9;
        let cases = [
            (1.0, -euler),
            (0.5, -euler - 2.0 * std::f64::consts::LN_2),
            (2.0, 1.0 - euler),
            (10.0, 2.251_752_589_066_721),
            (100.0, 4.600_161_852_738_087),
            (1e-3, -1000.575_571_931_810_4),
            (-0.5, 0.036_489_973_978_576_52),
        ];
        for (x, want) in cases {
            let got = digamma(x);
            assert!((got - want).abs() <= 1e-12 * want.abs().max(1.0), "digamma({x}) = {got}, want {want}");
        }
    }

    #[test]
    fn digamma_is_derivative_of_lgamma() {
        for &x in &[0.03, 0.7, 1.3, 4.6, 9.99, 10.01, 57.0, 3000.5] {
            let h = 1e-5 * x.max(1.0);
            let fd = (lgamma(x + h) - lgamma(x - h)) / (2.0 * h);
            assert!((fd - digamma(x)).abs() < 1e-7 * digamma(x).abs().max(1.0), "x={x}");
        }
    }
}
