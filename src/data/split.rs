//! Train/validation split (model.md §6.3, scvi-tools `validate_data_split` + `DataSplitter.setup`) and the
//! minibatch sampler.
//!
//! Sizes: n_train = ceil(train_size · N) computed in f64 exactly as Python does (so 0.55 · 100 =
//! 55.00000000000001 gives 56); n_val = N − n_train (or floor(validation_size · N)). When train_size was
//! not given explicitly and n_train mod batch_size ∈ {1, 2} (drop_last false), those cells leave the training
//! set and join validation (or, with an empty validation set, the unused rest) — the original avoids a
//! training minibatch of 1–2 cells that way.
//!
//! Order: the permutation is `numpy.random.RandomState(seed).permutation(N)` (MT19937 + numpy's legacy
//! shuffle, reproduced bit for bit), then the first n_val indices are validation, the next n_train train,
//! the rest unused. With `seed` = the original's `scvi.settings.seed` the split equals the original's.

use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Debug, PartialEq)]
pub struct SplitConfig {
    /// Fraction of cells for training; None = 0.9 and the small-last-batch adjustment applies.
    pub train_size: Option<f64>,
    /// Fraction for validation; None = all cells not in training.
    pub validation_size: Option<f64>,
    pub batch_size: usize,
    pub drop_last: bool,
    /// false: no permutation (validation = first cells, as `shuffle_set_split=False`).
    pub shuffle: bool,
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig { train_size: None, validation_size: None, batch_size: 128, drop_last: false, shuffle: true }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    pub train: Vec<usize>,
    pub validation: Vec<usize>,
    /// Cells in neither set (train_size + validation_size < 1, or cells moved out with no validation set).
    pub unused: Vec<usize>,
    /// Cells moved from training to validation/unused by the small-last-batch rule.
    pub moved: usize,
}

/// (n_train, n_val, moved) for `n` cells.
pub fn split_sizes(n: usize, cfg: &SplitConfig) -> Result<(usize, usize, usize)> {
    let train_size_is_none = cfg.train_size.is_none();
    let train_size = cfg.train_size.unwrap_or(0.9);
    if !(train_size > 0.0 && train_size <= 1.0) {
        bail!("invalid train_size {train_size}: must be 0 < train_size <= 1");
    }
    if cfg.batch_size == 0 {
        bail!("batch_size must be positive");
    }
    let mut n_train = (train_size * n as f64).ceil() as usize;
    let mut n_val = match cfg.validation_size {
        None => n - n_train.min(n),
        Some(v) if !(0.0..1.0).contains(&v) => bail!("invalid validation_size {v}: must be 0 <= validation_size < 1"),
        Some(v) if train_size + v > 1.0 => bail!("train_size + validation_size = {} exceeds 1", train_size + v),
        Some(v) => (n as f64 * v).floor() as usize,
    };
    if n_train == 0 {
        bail!("with {n} cells and train_size {train_size} the training set would be empty");
    }
    let mut moved = 0;
    let rem = n_train % cfg.batch_size;
    if (rem == 1 || rem == 2) && !cfg.drop_last && train_size_is_none {
        n_train -= rem;
        moved = rem;
        if n_val > 0 {
            n_val += rem;
        }
    }
    Ok((n_train, n_val, moved))
}

/// The seeded train/validation split.
pub fn train_validation_split(n: usize, cfg: &SplitConfig, seed: u64) -> Result<Split> {
    let (n_train, n_val, moved) = split_sizes(n, cfg)?;
    let perm = if cfg.shuffle {
        let s = u32::try_from(seed).map_err(|_| {
            anyhow::anyhow!("split seed {seed} must be below 2^32 (numpy RandomState seeds are 32-bit)")
        })?;
        numpy_permutation(n, s)
    } else {
        (0..n).collect()
    };
    Ok(Split {
        validation: perm[..n_val].to_vec(),
        train: perm[n_val..n_val + n_train].to_vec(),
        unused: perm[n_val + n_train..].to_vec(),
        moved,
    })
}

/// MT19937, the generator behind `numpy.random.RandomState`.
pub struct Mt19937 {
    mt: [u32; 624],
    idx: usize,
}

impl Mt19937 {
    /// `init_genrand(seed)`, which RandomState uses for an integer seed.
    pub fn new(seed: u32) -> Self {
        let mut mt = [0u32; 624];
        mt[0] = seed;
        for i in 1..624 {
            mt[i] = 1812433253u32.wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_add(i as u32);
        }
        Mt19937 { mt, idx: 624 }
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        for i in 0..624 {
            let y = (self.mt[i] & UPPER) | (self.mt[(i + 1) % 624] & LOWER);
            let mut v = self.mt[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            self.mt[i] = v;
        }
        self.idx = 0;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.idx >= 624 {
            self.twist();
        }
        let mut y = self.mt[self.idx];
        self.idx += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    pub fn next_u64(&mut self) -> u64 {
        let hi = self.next_u32() as u64;
        (hi << 32) | self.next_u32() as u64
    }

    /// numpy's `random_interval(max)`: uniform in 0..=max by masked rejection.
    pub fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for s in [1, 2, 4, 8, 16, 32] {
            mask |= mask >> s;
        }
        if max <= 0xffff_ffff {
            loop {
                let v = self.next_u32() as u64 & mask;
                if v <= max {
                    return v;
                }
            }
        } else {
            loop {
                let v = self.next_u64() & mask;
                if v <= max {
                    return v;
                }
            }
        }
    }
}

/// `numpy.random.RandomState(seed).permutation(n)`.
pub fn numpy_permutation(n: usize, seed: u32) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut rng = Mt19937::new(seed);
    for i in (1..n).rev() {
        let j = rng.interval(i as u64) as usize;
        v.swap(i, j);
    }
    v
}

/// Minibatches over the training cells: a fresh seeded shuffle every epoch (a pure function of (seed,
/// epoch), so a run resumed at an epoch boundary sees the same batches), drop_last false.
#[derive(Clone, Debug)]
pub struct Minibatches {
    indices: Vec<usize>,
    batch_size: usize,
    seed: u64,
}

impl Minibatches {
    pub fn new(indices: Vec<usize>, batch_size: usize, seed: u64) -> Result<Self> {
        if batch_size == 0 {
            bail!("batch_size must be positive");
        }
        Ok(Minibatches { indices, batch_size, seed })
    }

    pub fn n_cells(&self) -> usize {
        self.indices.len()
    }

    pub fn n_batches(&self) -> usize {
        self.indices.len().div_ceil(self.batch_size)
    }

    /// The cell order of `epoch`.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        // Stream per epoch; the high bit keeps it apart from other users of stream ids under this seed.
        rng.set_stream((1u64 << 63) | epoch);
        self.epoch_order_with(&mut rng)
    }

    /// The cell order for an epoch drawn from a caller-supplied RNG.
    pub fn epoch_order_with(&self, rng: &mut impl rand::Rng) -> Vec<usize> {
        let mut v = self.indices.clone();
        v.shuffle(rng);
        v
    }

    /// The minibatches of `epoch` (the last may be smaller).
    pub fn epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        self.epoch_order(epoch).chunks(self.batch_size).map(|c| c.to_vec()).collect()
    }
}

/// Sequential minibatches (validation / inference): `indices` in their given order.
pub fn sequential_batches(indices: &[usize], batch_size: usize) -> impl Iterator<Item = &[usize]> {
    indices.chunks(batch_size.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_reference_output() {
        // Reference values of the MT19937 authors' mt19937ar.c for init_genrand(5489).
        let mut r = Mt19937::new(5489);
        assert_eq!(r.next_u32(), 3499211612);
        assert_eq!(r.next_u32(), 581869302);
        let mut r = Mt19937::new(5489);
        for _ in 0..9999 {
            r.next_u32();
        }
        assert_eq!(r.next_u32(), 4123659995);
    }

    #[test]
    fn sizes_follow_the_rule() {
        let c = SplitConfig { batch_size: 128, ..Default::default() };
        assert_eq!(split_sizes(100, &c).unwrap(), (90, 10, 0));
        // 0.55 * 100 is 55.00000000000001 in f64 (as in Python), so ceil gives 56.
        let t = SplitConfig { train_size: Some(0.55), ..c.clone() };
        assert_eq!(split_sizes(100, &t).unwrap(), (56, 44, 0));
        // 0.9 * 1000 = 900 → 900 % 128 = 4: nothing moved.
        assert_eq!(split_sizes(1000, &c).unwrap(), (900, 100, 0));
        // 0.9 * 2000 = 1800 → 1800 % 128 = 8; N = 1424 → 1282 % 128 = 2 → moved.
        assert_eq!(split_sizes(1424, &c).unwrap(), (1280, 144, 2));
        // explicit train_size: only a warning in the original, nothing moved.
        let e = SplitConfig { train_size: Some(0.9), ..c.clone() };
        assert_eq!(split_sizes(1424, &e).unwrap(), (1282, 142, 0));
        // drop_last: nothing moved.
        let d = SplitConfig { drop_last: true, ..c.clone() };
        assert_eq!(split_sizes(1424, &d).unwrap(), (1282, 142, 0));
        assert!(split_sizes(10, &SplitConfig { train_size: Some(0.0), ..c.clone() }).is_err());
        assert!(split_sizes(10, &SplitConfig { validation_size: Some(0.5), train_size: Some(0.9), ..c }).is_err());
    }
}
