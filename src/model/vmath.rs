//! exp, ln and ln(1 + x) for f32 as branch-free polynomials, so that loops over a row of entries
//! vectorise (glibc's `expf` / `logf` / `log1pf` are calls the compiler cannot vectorise; `log1pf`
//! alone was 12% of a training step's forward). Cephes' single-precision reductions and
//! coefficients; the tests below bound the error against f64 over dense samples:
//! exp ≤ 2 ulp on [−87, 88], ln ≤ 2 ulp on normal positive inputs, ln_1p ≤ 4 ulp on [0, 1e30].
//!
//! Domains: `exp` clamps its argument to [−87.33, 88] (below −87.33 it returns ≈ 1.2e−38 instead of a
//! smaller number or 0; above 88, e⁸⁸); `ln` and `ln_1p` are only
//! meaningful for finite positive normal inputs (respectively non-negative finite), which callers
//! check and route elsewhere otherwise. NaN in gives NaN out.

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split so that k·LN2_HI is exact for the k that occur.
const LN2_HI: f32 = 0.693_359_375;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 · 2²³: adding and subtracting it rounds an f32 of magnitude < 2²² to the nearest integer
/// (SSE2 has no vector round instruction).
const ROUND_MAGIC: f32 = 12_582_912.0;

/// eˣ (f32), within 2 ulp on [−87, 88] (clamped outside [−87.33, 88]).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.336_54, 88.0);
    let kr = x * LOG2E + ROUND_MAGIC;
    let k = kr - ROUND_MAGIC;
    let r = x - k * LN2_HI - k * LN2_LO;
    let z = r * r;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r
        + 5.000_000_1e-1)
        * z
        + r
        + 1.0;
    // 2^k through the exponent bits: k ∈ [−126, 127] after the clamp, so 2^k is a normal f32. k is the
    // integer in kr's low mantissa bits (kr's ulp is 1): integer arithmetic, where `k as i32` would
    // be a saturating conversion (compare-and-select per lane).
    let ki = (kr.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    p * f32::from_bits(((ki + 127) as u32) << 23)
}

/// ln x (f32) for finite positive normal x, within 2 ulp.
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let bits = x.to_bits();
    let e = ((bits >> 23) & 0xFF) as i32 - 126; // x = m · 2^e with m ∈ [0.5, 1)
    let m = f32::from_bits((bits & 0x007F_FFFF) | 0x3F00_0000);
    // m < √½: use 2m − 1 and e − 1 (so the reduced argument lies in [√½ − 1, √2 − 1]).
    let small = m < SQRT_HALF;
    let f = if small { m + m - 1.0 } else { m - 1.0 };
    let e = (if small { e - 1 } else { e }) as f32;
    let z = f * f;
    let mut y = ((((((((7.037_683_6e-2 * f - 1.151_461e-1) * f + 1.167_699_9e-1) * f - 1.242_014_1e-1) * f + 1.424_932_3e-1)
        * f
        - 1.666_805_8e-1)
        * f
        + 2.000_071_4e-1)
        * f
        - 2.499_999_4e-1)
        * f
        + 3.333_333_1e-1)
        * f
        * z;
    y += LN2_LO * e;
    y -= 0.5 * z;
    let r = f + y + LN2_HI * e;
    if x.is_nan() {
        x
    } else {
        r
    }
}

/// ln(1 + x) (f32) for finite x ≥ 0, within 4 ulp: u = 1 + x rounded, then ln(u)·x/(u − 1), which
/// corrects the rounding of u (Goldberg's form); x itself when u rounds to 1.
#[inline(always)]
pub fn ln_1p(x: f32) -> f32 {
    let u = 1.0 + x;
    let d = u - 1.0;
    let v = ln(u) * (x / if d == 0.0 { 1.0 } else { d });
    if d == 0.0 {
        x
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place of `want` (rounded to f32).
    fn ulps(got: f32, want: f64) -> f64 {
        let w = want as f32;
        let ulp = (f32::from_bits(w.abs().to_bits() + 1) - w.abs()) as f64;
        (got as f64 - want).abs() / ulp
    }

    /// Log-uniform and uniform samples over [lo, hi].
    fn samples(lo: f64, hi: f64, n: usize) -> Vec<f32> {
        let mut v = Vec::with_capacity(2 * n);
        for i in 0..n {
            let t = (i as f64 + 0.5) / n as f64;
            v.push((lo + (hi - lo) * t) as f32);
            if lo > 0.0 {
                v.push((lo.ln() + (hi.ln() - lo.ln()) * t).exp() as f32);
            }
        }
        v
    }

    /// Worst ulp distance of `f` from the f64 function `want` over `xs`; asserts `bound` at each point.
    /// Where the true value is 0 the result must be exactly 0.
    fn check(name: &str, f: fn(f32) -> f32, want: fn(f64) -> f64, xs: impl Iterator<Item = f32>, bound: f64) -> f64 {
        let mut worst = 0.0f64;
        for x in xs {
            let w = want(x as f64);
            if w == 0.0 {
                assert_eq!(f(x), 0.0, "{name}({x})");
                continue;
            }
            let u = ulps(f(x), w);
            assert!(u <= bound, "{name}({x}) = {} vs {w} ({u} ulp)", f(x));
            worst = worst.max(u);
        }
        println!("{name}: worst {worst:.2} ulp");
        worst
    }

    #[test]
    fn exp_is_within_two_ulp() {
        check("exp", exp, f64::exp, samples(-87.0, 88.0, 2_000_000).into_iter().chain(samples(-1e-3, 1e-3, 100_000)), 2.0);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-200.0) > 0.0 && exp(-200.0) < 1.3e-38, "clamped below");
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn ln_is_within_two_ulp() {
        check("ln", ln, f64::ln, samples(1.2e-38, 3e38, 2_000_000).into_iter().chain(samples(0.5, 2.0, 1_000_000)), 2.0);
        assert_eq!(ln(1.0), 0.0);
        assert!(ln(f32::NAN).is_nan());
    }

    #[test]
    fn ln_1p_is_within_four_ulp() {
        check("ln_1p", ln_1p, f64::ln_1p, samples(1e-30, 1e30, 2_000_000).into_iter().chain(samples(0.0, 2.0, 1_000_000)), 4.0);
        assert_eq!(ln_1p(0.0), 0.0);
        assert_eq!(ln_1p(1e-30), 1e-30);
    }
}
