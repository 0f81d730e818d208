//! Counter-based random numbers: every draw is a pure function of (seed, stream, index), so dropout
//! masks can be recomputed in the backward pass, work can be split across threads in any way, and the
//! numbers never depend on the thread count.

#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[inline(always)]
pub fn hash3(seed: u64, stream: u64, idx: u64) -> u64 {
    mix64(mix64(seed ^ mix64(stream.wrapping_mul(0xD6E8_FEB8_6659_FD93))) ^ idx)
}

/// Uniform in [0, 1).
#[inline(always)]
pub fn uniform(seed: u64, stream: u64, idx: u64) -> f64 {
    (hash3(seed, stream, idx) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Standard normal (Box–Muller on two independent uniforms).
#[inline]
pub fn normal(seed: u64, stream: u64, idx: u64) -> f64 {
    let u1 = 1.0 - uniform(seed, stream, 2 * idx); // (0, 1]
    let u2 = uniform(seed, stream, 2 * idx + 1);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Dropout decisions of one stream: element i is kept iff the i-th 16-bit lane of the hash sequence is
/// ≥ ⌊p·65536⌉ (four decisions per hash; p is quantised to 1/65536).
#[derive(Clone, Copy, Debug)]
pub struct DropStream {
    key: u64,
    threshold: u32,
}

impl DropStream {
    pub fn new(seed: u64, stream: u64, p: f64) -> Self {
        let threshold = (p * 65536.0).round().clamp(0.0, 65536.0) as u32;
        DropStream { key: mix64(seed ^ mix64(stream.wrapping_mul(0xD6E8_FEB8_6659_FD93))), threshold }
    }
    #[inline(always)]
    pub fn keep(&self, idx: u64) -> bool {
        let h = mix64(self.key ^ (idx >> 2).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        (((h >> (16 * (idx & 3))) & 0xFFFF) as u32) >= self.threshold
    }
}

impl DropStream {
    /// The stream's hash key (for the CUDA kernels, which make the same decisions).
    pub fn key(&self) -> u64 {
        self.key
    }
    /// Drop threshold in 1/65536 units: element kept when its 16-bit hash lane is ≥ this.
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// Keep bits of elements `start .. start + n` (bit t of word t / 64 set = kept; the same decisions
    /// as [`DropStream::keep`]); `start` must be a multiple of 4 and `out` hold ⌈n / 64⌉ words.
    /// Branchless, one word at a time: at p = 0.1 a branch per decision mispredicts one time in ten.
    ///
    /// The 16 hashes of a word vectorise. x86-64's baseline (SSE2) has no 64-bit vector multiply, so
    /// the compiler emulates it with 32-bit ones, which is slower than scalar code; where the CPU has
    /// AVX-512DQ (vpmullq) the same code is compiled for it and picked at run time. Integer
    /// arithmetic only, so every path gives the same bits.
    #[inline]
    pub fn fill_bits(&self, start: u64, n: usize, out: &mut [u64]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512dq") {
            // SAFETY: the CPU supports AVX-512F and AVX-512DQ (checked just above).
            return unsafe { self.fill_bits_avx512(start, n, out) };
        }
        self.fill_bits_any(start, n, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn fill_bits_avx512(&self, start: u64, n: usize, out: &mut [u64]) {
        self.fill_bits_any(start, n, out)
    }

    #[inline(always)]
    fn fill_bits_any(&self, start: u64, n: usize, out: &mut [u64]) {
        debug_assert_eq!(start % 4, 0);
        let base = start >> 2;
        let words = n.div_ceil(64);
        for (w, word) in out.iter_mut().enumerate() {
            if w >= words {
                *word = 0;
                continue;
            }
            let lanes = (n - 64 * w).min(64);
            // The four 16-bit lanes of a hash are compared with the threshold two at a time in 32-bit
            // fields (SWAR): lane + 2¹⁶ − threshold reaches bit 16 of its field exactly when
            // lane ≥ threshold, and never carries into the next field (it stays below 2¹⁷).
            const LANES_0_2: u64 = 0x0000_FFFF_0000_FFFF;
            let bias = (0x1_0000 - self.threshold as u64) * 0x0000_0001_0000_0001;
            let mut acc = 0u64;
            for g in 0..lanes.div_ceil(4) {
                let h = mix64(self.key ^ (base + (16 * w + g) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let even = (h & LANES_0_2) + bias; // lanes 0 and 2
                let odd = ((h >> 16) & LANES_0_2) + bias; // lanes 1 and 3
                let nibble = ((even >> 16) & 1) | ((odd >> 15) & 2) | ((even >> 46) & 4) | ((odd >> 45) & 8);
                acc |= nibble << (4 * g);
            }
            *word = if lanes < 64 { acc & ((1u64 << lanes) - 1) } else { acc };
        }
    }
}

/// Dropout keep decision for element `idx` of stream `stream` (drop with probability p).
#[inline(always)]
pub fn keep(seed: u64, stream: u64, idx: u64, p: f64) -> bool {
    DropStream::new(seed, stream, p).keep(idx)
}

/// Stream ids used by the model (distinct per purpose).
pub mod streams {
    pub const EPS_EXPR: u64 = 1;
    pub const EPS_SPL: u64 = 2;
    pub const EPS_JOINT: u64 = 3;
    /// Dropout of FCLayers `id`, block `b`: DROPOUT_BASE + id·64 + b.
    pub const DROPOUT_BASE: u64 = 1 << 20;
    /// Partial encoder h-network dropout.
    pub const PARTIAL_H: u64 = 17;
    pub const ADVERSARY: u64 = 1 << 30;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_moments() {
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|i| normal(7, 1, i)).collect();
        let m = xs.iter().sum::<f64>() / n as f64;
        let v = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n as f64;
        assert!(m.abs() < 0.01 && (v - 1.0).abs() < 0.01, "mean {m} var {v}");
        let keep_frac = (0..n).filter(|&i| keep(3, 2, i, 0.25)).count() as f64 / n as f64;
        assert!((keep_frac - 0.75).abs() < 0.01);
        // fill_bits makes the same decisions as keep (odd length: a partial last word), at the edges
        // of the threshold range too (p = 0 keeps all, p = 1 drops all).
        for p in [0.0, 1e-5, 0.1, 0.3, 0.5, 0.99999, 1.0] {
            let ds = DropStream::new(5, 9, p);
            let (start, len): (u64, usize) = (4 * 1234, 101);
            let mut bits = vec![u64::MAX; len.div_ceil(64)];
            ds.fill_bits(start, len, &mut bits);
            for t in 0..len {
                let bit = (bits[t / 64] >> (t % 64)) & 1 == 1;
                assert_eq!(bit, ds.keep(start + t as u64), "p = {p}, element {t}");
            }
            assert_eq!(bits[1] >> (len - 64), 0, "bits past the end stay clear");
            let kept = bits.iter().map(|w| w.count_ones()).sum::<u32>();
            if p == 0.0 {
                assert_eq!(kept as usize, len);
            }
            if p == 1.0 {
                assert_eq!(kept, 0);
            }
            // The portable code gives the same words as the path picked for this CPU.
            let mut portable = vec![u64::MAX; len.div_ceil(64)];
            ds.fill_bits_any(start, len, &mut portable);
            assert_eq!(portable, bits, "p = {p}: portable fill_bits");
        }
        // One call over consecutive rows of a multiple of 64 elements gives the words of one call
        // per row (the partial encoder hashes a micro-chunk of pairs at once).
        let ds = DropStream::new(3, 17, 0.1);
        for hh in [64usize, 128] {
            let (p0, rows) = (1000usize, 7usize);
            let mut bulk = vec![0u64; rows * hh / 64];
            ds.fill_bits((p0 * hh) as u64, rows * hh, &mut bulk);
            for r in 0..rows {
                let mut one = vec![0u64; hh / 64];
                ds.fill_bits(((p0 + r) * hh) as u64, hh, &mut one);
                assert_eq!(one, bulk[r * hh / 64..(r + 1) * hh / 64], "hh {hh}, row {r}");
            }
        }
    }
}
