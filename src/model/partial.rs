//! The partial splicing encoder's per-pair network and pooling (model.md §2.5 steps 1–6).
//!
//! Per observed pair (i, j): t = [ψ, ψ·F̂_j]; the first Linear is factored as
//! W₀t + b₀ = ψ·u_j + b₀ with u_j = W₀[:,0] + W₀[:,1:]·F̂_j computed once per junction per step.
//! The LayerNorm after it is folded per junction too ([`Fold`]): its input is affine in ψ, so its
//! mean and variance are closed-form in ψ and the affine output is α·(g₁⊙ũ_j) + β·(g₁⊙b̃) + be₁ —
//! two FMAs per element and no per-pair reduction. Then ReLU → dropout → Linear → LayerNorm(affine)
//! → ReLU gives the code c_ij, pooled per cell (sum or mean). The forward keeps the dropout keep bits
//! (one bit per element, so the backward need not hash them again) and, while it fits in
//! [`STASH_MAX_BYTES`], each pair's second-block LayerNorm output (D + 1 values); the Hh-wide first
//! block is never stored. The backward recomputes what it needs chunk by chunk (the first block
//! always, the second block when there is no stash), walking the pairs junction by junction so that
//! each junction's gradient is owned by one work item (deterministic, no atomics).

use super::arch::PartialEncP;
use super::batch::SplBatch;
use super::ops::{ln_row, ln_row_bwd, Mode, LN_EPS};
use super::params::{Grads, Params};
use super::real::{fold8, Real};
use super::rng;
use super::tensor::{matmul_nn, matmul_nt, matmul_tn_acc, Mat};
use rayon::prelude::*;

const NORM_EPS: f64 = 1e-8;

/// The first block folded per junction. With ũ_j = u_j − mean(u_j) and b̃ = b₀ − mean(b₀), the
/// LayerNorm input ψ·u_j + b₀ centres to ψ·ũ_j + b̃, whose variance is
/// ψ²·s_uu(j) + 2ψ·s_ub(j) + s_bb (each s = ⟨·,·⟩/Hh, kept in f64 against cancellation), so
/// x̂ = α·ũ_j + β·b̃ with β = 1/√(var + ε) and α = ψβ.
#[derive(Clone, Debug)]
pub struct Fold<T> {
    /// J × Hh: ũ_j.
    pub ut: Mat<T>,
    /// J × Hh: g₁ ⊙ ũ_j.
    pub ug: Mat<T>,
    pub suu: Vec<f64>,
    pub sub: Vec<f64>,
    /// b̃ and g₁ ⊙ b̃ (Hh), ‖b̃‖²/Hh.
    pub bt: Vec<T>,
    pub bg: Vec<T>,
    pub sbb: f64,
}

impl<T: Real> Fold<T> {
    fn new(u: &Mat<T>, b0: &[T], g1: &[T]) -> Self {
        let hh = b0.len();
        let inv_h = 1.0 / hh as f64;
        let bmean = b0.iter().map(|v| v.to_f64()).sum::<f64>() * inv_h;
        let bt: Vec<T> = b0.iter().map(|&v| T::from_f64(v.to_f64() - bmean)).collect();
        let bg: Vec<T> = bt.iter().zip(g1).map(|(&b, &g)| b * g).collect();
        let sbb = bt.iter().map(|v| v.to_f64() * v.to_f64()).sum::<f64>() * inv_h;
        let j = u.rows;
        let mut ut = Mat::zeros(j, hh);
        let mut ug = Mat::zeros(j, hh);
        let mut suu = vec![0.0; j];
        let mut sub = vec![0.0; j];
        ut.data
            .par_chunks_mut(hh)
            .zip(ug.data.par_chunks_mut(hh))
            .zip(suu.par_iter_mut().zip(sub.par_iter_mut()))
            .enumerate()
            .for_each(|(jj, ((utr, ugr), (su, sb)))| {
                let ur = u.row(jj);
                let m = ur.iter().map(|v| v.to_f64()).sum::<f64>() * inv_h;
                let (mut a, mut c) = (0.0, 0.0);
                for t in 0..hh {
                    let v = ur[t].to_f64() - m;
                    utr[t] = T::from_f64(v);
                    ugr[t] = utr[t] * g1[t];
                    a += utr[t].to_f64() * utr[t].to_f64();
                    c += utr[t].to_f64() * bt[t].to_f64();
                }
                *su = a * inv_h;
                *sb = c * inv_h;
            });
        Fold { ut, ug, suu, sub, bt, bg, sbb }
    }

    /// (α, β) of a pair with input ψ at junction j.
    #[inline]
    fn coefs(&self, j: usize, psi: f64) -> (f64, f64) {
        let var = (psi * psi * self.suu[j] + 2.0 * psi * self.sub[j] + self.sbb).max(0.0);
        let beta = 1.0 / (var + LN_EPS).sqrt();
        (psi * beta, beta)
    }
}

/// What the forward keeps: the pooled codes and the per-junction quantities.
#[derive(Clone, Debug)]
pub struct PartialCache<T> {
    /// B × D pooled codes (input of the post-pooling MLP).
    pub pool: Mat<T>,
    /// Observed pairs per cell.
    pub counts: Vec<usize>,
    /// J × D row-normalised embedding and the row norms.
    pub fhat: Mat<T>,
    pub fnorm: Vec<T>,
    /// The folded first block.
    pub fold: Fold<T>,
    /// Divisor of each cell's pooled sum (1 for `sum`).
    pub den: Vec<T>,
    /// `partial_center_psi`: the reference code h(0) (D), subtracted once per observed pair.
    pub h0: Option<Vec<T>>,
    /// The h network's dropout keep bits, ⌈Hh / 64⌉ words per pair in the batch's pair order (empty
    /// without dropout). One bit per element, so the backward's recompute reads the forward's
    /// decisions instead of hashing them again (16 hashes per pair at Hh = 64).
    pub keep: Vec<u64>,
    /// The second block's LayerNorm output and inverse deviation of every pair, [x̂₂ (D) | 1/σ₂] in the
    /// batch's pair order, so the backward skips the per-pair GEMM and LayerNorm it would otherwise
    /// recompute. Empty when it would exceed [`STASH_MAX_BYTES`]; the backward then recomputes them
    /// (the same values either way).
    pub stash: Vec<T>,
}

/// Largest stash of second-block activations kept between the forward and the backward (D + 1
/// values per observed pair: 16.5 MB at `small` and 66 MB at `medium` with the default code_dim 16).
/// Above it, as for the authors' configuration at full size, the backward recomputes them instead.
pub const STASH_MAX_BYTES: usize = 256 << 20;

/// Where a micro-chunk's dropout keep bits come from.
enum Keep<'a> {
    /// No dropout in this pass.
    None,
    /// Hash them and store micro-chunk pair q's words at `[q·kw ..]` (the forward).
    Store(&'a mut [u64]),
    /// Read the words of global pair id p at `[p·kw ..]` (the backward's recompute).
    Load(&'a [u64]),
}

struct Net<'a, T> {
    be1: &'a [T],
    g1: &'a [T],
    w4: &'a [T],
    b4: &'a [T],
    g5: &'a [T],
    be5: &'a [T],
    hh: usize,
    dd: usize,
    dropout: f64,
}

/// Pairs per work item (fixed, so the reduction order never depends on the thread count).
const ITEM_PAIRS: usize = 8192;
/// Pairs per micro-chunk: the activations of a micro-chunk stay in cache.
const MICRO: usize = 256;

/// Activations of a micro-chunk of pairs (buffers reused across micro-chunks).
#[derive(Default)]
struct Scratch<T> {
    /// Per pair: α and β of the folded first block.
    alpha: Vec<f64>,
    beta: Vec<f64>,
    /// Post-ReLU, post-dropout (input of the second Linear).
    d1: Vec<T>,
    h2: Vec<T>,
    xhat2: Vec<T>,
    inv2: Vec<T>,
    a2: Vec<T>,
    /// Codes c (n × D).
    c: Vec<T>,
    dh2: Vec<T>,
    dd1: Vec<T>,
    pairs: Vec<usize>,
    psi: Vec<T>,
    jn: Vec<u32>,
    /// 256 × 8: element l of row b is 1 when bit l of byte b is set, else 0 (the dropout keep bits
    /// as multipliers).
    mask8: Vec<T>,
}

impl<T: Real> Scratch<T> {
    fn new(hh: usize, dd: usize, n: usize) -> Self {
        let z = |k: usize| vec![T::ZERO; k];
        Scratch {
            alpha: vec![0.0; n],
            beta: vec![0.0; n],
            d1: z(n * hh),
            h2: z(n * dd),
            xhat2: z(n * dd),
            inv2: z(n),
            a2: z(n * dd),
            c: z(n * dd),
            dh2: z(n * dd),
            dd1: z(n * hh),
            pairs: Vec::with_capacity(n),
            psi: Vec::with_capacity(n),
            jn: Vec::with_capacity(n),
            mask8: (0..256 * 8).map(|i| if (i / 8) >> (i % 8) & 1 == 1 { T::ONE } else { T::ZERO }).collect(),
        }
    }
}

/// Backward accumulators of one work item (junctions j0 .. j0 + q.len()/Hh).
struct BwdAcc<T> {
    /// [R | be1 | W4 | b4 | g5 | be5] with R = Σ β·d(a1).
    small: Vec<T>,
    j0: usize,
    /// Per junction (Hh): Q_j = Σ α·d(a1).
    q: Vec<T>,
    /// Per junction: Σ ψβm₁, Σ ψβm₂α, Σ ψβm₂β, Σ βm₂α (m₁, m₂ the LayerNorm backward's two means).
    c: Vec<[f64; 4]>,
    /// Σ βm₁ and Σ βm₂β.
    e1: f64,
    e3: f64,
}

impl<T: Real> BwdAcc<T> {
    fn new(hh: usize, dd: usize, j0: usize, nj: usize) -> Self {
        BwdAcc { small: vec![T::ZERO; hh + hh + dd * hh + 3 * dd], j0, q: vec![T::ZERO; nj * hh], c: vec![[0.0; 4]; nj], e1: 0.0, e3: 0.0 }
    }
}

impl<T: Real> Net<'_, T> {
    /// Whether the h network's dropout acts in this pass.
    fn dropout_on(&self, mode: Mode) -> bool {
        mode.training && self.dropout > 0.0
    }

    /// Forward for the micro-chunk in `sc.pairs / sc.psi / sc.jn` (global pair ids are used for the
    /// dropout stream); leaves the codes in `sc.c` and the activations in `sc`.
    fn chunk_fwd(&self, fold: &Fold<T>, mode: Mode, sc: &mut Scratch<T>, keep: Keep<'_>) {
        self.first_block(fold, mode, sc, keep);
        self.second_block(sc, None);
    }

    /// What `chunk_bwd` needs of the micro-chunk when the forward stashed its second block's
    /// LayerNorm output (see [`PartialCache::stash`]): the first block recomputed (cheap: two FMAs
    /// and the keep bits per element), x̂₂ and 1/σ₂ read from the stash by global pair id, and a₂
    /// recomputed from x̂₂ by the forward's own expression. The same values as [`Net::chunk_fwd`] without
    /// its GEMM and LayerNorm.
    fn chunk_fwd_stashed(&self, fold: &Fold<T>, mode: Mode, sc: &mut Scratch<T>, keep: Keep<'_>, stash: &[T]) {
        self.first_block(fold, mode, sc, keep);
        let (dd, n) = (self.dd, sc.pairs.len());
        let (g5, be5) = (&self.g5[..dd], &self.be5[..dd]);
        for q in 0..n {
            let src = &stash[sc.pairs[q] * (dd + 1)..(sc.pairs[q] + 1) * (dd + 1)];
            sc.inv2[q] = src[dd];
            let (xr, a2r) = (&mut sc.xhat2[q * dd..(q + 1) * dd], &mut sc.a2[q * dd..(q + 1) * dd]);
            // One loop for both (a bare copy of D values would be a memcpy call per pair).
            for t in 0..dd {
                let x = src[t];
                xr[t] = x;
                a2r[t] = x * g5[t] + be5[t];
            }
        }
    }

    /// The folded first block, ReLU and dropout: α, β and d1 of every pair of the micro-chunk.
    fn first_block(&self, fold: &Fold<T>, mode: Mode, sc: &mut Scratch<T>, mut keep: Keep<'_>) {
        let (hh, n) = (self.hh, sc.pairs.len());
        let dropout = self.dropout_on(mode);
        let scale = T::from_f64(1.0 / (1.0 - self.dropout));
        let ds = rng::DropStream::new(mode.seed, rng::streams::PARTIAL_H, self.dropout);
        // Mask index space: pair·Hh_pad + t with Hh_pad a multiple of 4 (4 decisions per hash).
        let hh_pad = hh.div_ceil(4) * 4;
        let kw = hh.div_ceil(64);
        // α and β of every pair first: the f64 square roots and divisions of independent pairs
        // overlap instead of each waiting behind the element loops of the pair before.
        for q in 0..n {
            let (al, be) = fold.coefs(sc.jn[q] as usize, sc.psi[q].to_f64());
            sc.alpha[q] = al;
            sc.beta[q] = be;
        }
        // The forward hashes the whole micro-chunk's keep bits in one call when its pairs' words are
        // contiguous in the mask index space (consecutive pair ids, Hh a multiple of 64): the same
        // words as one call per pair.
        let mut hashed = false;
        if let (true, Keep::Store(out)) = (dropout, &mut keep) {
            if n > 0 && hh % 64 == 0 && sc.pairs[n - 1] - sc.pairs[0] == n - 1 {
                ds.fill_bits((sc.pairs[0] * hh_pad) as u64, n * hh, &mut out[..n * kw]);
                hashed = true;
            }
        }
        for q in 0..n {
            let jj = sc.jn[q] as usize;
            let (a, b) = (T::from_f64(sc.alpha[q]), T::from_f64(sc.beta[q]));
            let (ug, bg, be1) = (&fold.ug.row(jj)[..hh], &fold.bg[..hh], &self.be1[..hh]);
            let d1r = &mut sc.d1[q * hh..(q + 1) * hh];
            for t in 0..hh {
                let v = a * ug[t] + (b * bg[t] + be1[t]);
                d1r[t] = if v > T::ZERO { v } else { T::ZERO };
            }
            if dropout {
                let start = (sc.pairs[q] * hh_pad) as u64;
                let words: &[u64] = match &mut keep {
                    Keep::Load(bits) => &bits[sc.pairs[q] * kw..(sc.pairs[q] + 1) * kw],
                    Keep::Store(out) => {
                        let w = &mut out[q * kw..(q + 1) * kw];
                        if !hashed {
                            ds.fill_bits(start, hh, w);
                        }
                        w
                    }
                    Keep::None => unreachable!("dropout is on but the pass has no keep bits"),
                };
                // Eight elements per keep byte through a 0/1 table: branchless and vectorised (a
                // branch per element mispredicts one time in ten at p = 0.1). Kept: d·scale·1 = d·scale;
                // dropped: d·scale·0 = +0 (d ≥ 0 after the ReLU), as a select would give.
                let full = hh / 8 * 8;
                for (g, ch) in d1r[..full].chunks_exact_mut(8).enumerate() {
                    let byte = ((words[g / 8] >> (8 * (g % 8))) & 0xFF) as usize;
                    let m = &sc.mask8[byte * 8..byte * 8 + 8];
                    for l in 0..8 {
                        ch[l] = ch[l] * scale * m[l];
                    }
                }
                for t in full..hh {
                    let kept = (words[t / 64] >> (t % 64)) & 1 == 1;
                    d1r[t] = if kept { d1r[t] * scale } else { T::ZERO };
                }
            }
        }
    }

    /// The second Linear, its LayerNorm (affine) and ReLU: h2, x̂₂, 1/σ₂, a₂ and the codes c.
    /// With `stash`, also writes each pair's [x̂₂ | 1/σ₂] there (D + 1 values per pair of the chunk).
    fn second_block(&self, sc: &mut Scratch<T>, mut stash: Option<&mut [T]>) {
        let (hh, dd, n) = (self.hh, self.dd, sc.pairs.len());
        matmul_nt_serial(&sc.d1[..n * hh], n, hh, self.w4, dd, &mut sc.h2[..n * dd]);
        let (b4, g5, be5) = (&self.b4[..dd], &self.g5[..dd], &self.be5[..dd]);
        for q in 0..n {
            let row = &mut sc.h2[q * dd..(q + 1) * dd];
            for t in 0..dd {
                row[t] += b4[t];
            }
            let xr = &mut sc.xhat2[q * dd..(q + 1) * dd];
            sc.inv2[q] = ln_row(row, xr);
            let (a2r, cr) = (&mut sc.a2[q * dd..(q + 1) * dd], &mut sc.c[q * dd..(q + 1) * dd]);
            match stash.as_deref_mut() {
                None => {
                    for t in 0..dd {
                        let a = xr[t] * g5[t] + be5[t];
                        a2r[t] = a;
                        cr[t] = if a > T::ZERO { a } else { T::ZERO };
                    }
                }
                Some(st) => {
                    let dst = &mut st[q * (dd + 1)..(q + 1) * (dd + 1)];
                    dst[dd] = sc.inv2[q];
                    let dst = &mut dst[..dd];
                    // The stash row is written in the same loop (a separate copy of D values would
                    // be a memcpy call per pair).
                    for t in 0..dd {
                        let x = xr[t];
                        let a = x * g5[t] + be5[t];
                        a2r[t] = a;
                        cr[t] = if a > T::ZERO { a } else { T::ZERO };
                        dst[t] = x;
                    }
                }
            }
        }
    }

    /// Backward for the micro-chunk whose forward activations are in `sc` (call `chunk_fwd` first), given
    /// d(code) of pair q as `dcode(q)`; accumulates into `acc` (whose junction range holds the chunk's).
    fn chunk_bwd<'c>(&self, fold: &Fold<T>, mode: Mode, sc: &mut Scratch<T>, dcode: impl Fn(usize) -> &'c [T], acc: &mut BwdAcc<T>)
    where
        T: 'c,
    {
        // (`sc.pairs` may be moved out by the caller; `sc.psi` holds one value per pair.)
        let (hh, dd, n) = (self.hh, self.dd, sc.psi.len());
        let (sr, rest) = acc.small.split_at_mut(hh);
        let (sbe1, rest) = rest.split_at_mut(hh);
        let (sw4, rest) = rest.split_at_mut(dd * hh);
        let (sb4, rest) = rest.split_at_mut(dd);
        let (sg5, sbe5) = rest.split_at_mut(dd);
        // d(a2) = dcode · [a2 > 0]; LN5 affine; LN5 backward → dh2
        // (Every slice cut to length dd first, so the loops carry no bounds checks and vectorise.)
        let (sg5, sbe5, sb4, g5) = (&mut sg5[..dd], &mut sbe5[..dd], &mut sb4[..dd], &self.g5[..dd]);
        for q in 0..n {
            let dc = &dcode(q)[..dd];
            let (a2r, xr) = (&sc.a2[q * dd..(q + 1) * dd], &sc.xhat2[q * dd..(q + 1) * dd]);
            let row = &mut sc.dh2[q * dd..(q + 1) * dd];
            for t in 0..dd {
                let da = if a2r[t] > T::ZERO { dc[t] } else { T::ZERO };
                sg5[t] += da * xr[t];
                sbe5[t] += da;
                row[t] = da * g5[t];
            }
            ln_row_bwd(xr, sc.inv2[q], row);
            for t in 0..dd {
                sb4[t] += row[t];
            }
        }
        // W4 gradient (dh2ᵀ·d1) and d(d1) = dh2·W4
        unsafe {
            T::gemm_raw(dd, n, hh, T::ONE, sc.dh2.as_ptr(), 1, dd as isize, sc.d1.as_ptr(), hh as isize, 1, T::ONE, sw4.as_mut_ptr(), hh as isize, 1);
            T::gemm_raw(n, dd, hh, T::ONE, sc.dh2.as_ptr(), dd as isize, 1, self.w4.as_ptr(), hh as isize, 1, T::ZERO, sc.dd1.as_mut_ptr(), hh as isize, 1);
        }
        // d(a1) = d(d1) · scale · [d1 > 0] (d1 > 0 exactly when a1 > 0 and the unit was kept).
        let scale = if self.dropout_on(mode) { T::from_f64(1.0 / (1.0 - self.dropout)) } else { T::ONE };
        let inv_h = 1.0 / hh as f64;
        for q in 0..n {
            let jj = sc.jn[q] as usize;
            let jl = jj - acc.j0;
            let (al, be) = (sc.alpha[q], sc.beta[q]);
            let (a, b) = (T::from_f64(al), T::from_f64(be));
            let qj = &mut acc.q[jl * hh..(jl + 1) * hh];
            // One pass: d(a1), its sums, and the three dot products of the LayerNorm backward
            // (`dot8`'s lanes and combination order, so the same bits as three separate `dot8`s).
            let (d1r, dd1) = (&sc.d1[q * hh..(q + 1) * hh], &sc.dd1[q * hh..(q + 1) * hh]);
            let dots = fused_a1_backward(d1r, dd1, scale, a, b, [self.g1, fold.ug.row(jj), &fold.bg], sbe1, sr, qj);
            // LayerNorm backward means of d(x̂) = g₁⊙d(a1): m₁ = mean(d x̂), m₂ = mean(d x̂ ⊙ x̂).
            let m1 = dots[0].to_f64() * inv_h;
            let m2 = (al * dots[1].to_f64() + be * dots[2].to_f64()) * inv_h;
            let psi = sc.psi[q].to_f64();
            let c = &mut acc.c[jl];
            c[0] += psi * be * m1;
            c[1] += psi * be * m2 * al;
            c[2] += psi * be * m2 * be;
            c[3] += be * m2 * al;
            acc.e1 += be * m1;
            acc.e3 += be * m2 * be;
        }
    }

    /// The reference code h(0) (ψ = 0, so the junction does not matter), without dropout; the
    /// activations stay in `sc` for `chunk_bwd`.
    fn reference_fwd(&self, fold: &Fold<T>, sc: &mut Scratch<T>) -> Vec<T> {
        sc.pairs.clear();
        sc.pairs.push(0);
        sc.psi.clear();
        sc.psi.push(T::ZERO);
        sc.jn.clear();
        sc.jn.push(0);
        self.chunk_fwd(fold, Mode { training: false, seed: 0 }, sc, Keep::None);
        sc.c[..self.dd].to_vec()
    }
}

/// d(a1) = d(d1)·scale·[d1 > 0] of one pair (d1 > 0 exactly when a1 > 0 and the unit was kept), added
/// to Σ d(a1) (`sbe1`), Σ β·d(a1) (`sr`) and the junction's Σ α·d(a1) (`qj`); returns ⟨d(a1), v⟩ for the
/// three vectors `v`, each summed exactly as [`super::real::dot8`] sums (eight lanes, then the same combination), so
/// the result is bit-identical to separate passes.
///
/// Compiled twice: for x86-64's baseline (SSE2, four f32 lanes) and for AVX2 (eight), picked at run
/// time. Each lane does the same operations in the same order either way (no FMA contraction), so
/// both give the same bits.
#[allow(clippy::too_many_arguments)]
#[inline]
fn fused_a1_backward<T: Real>(d1r: &[T], dd1: &[T], scale: T, a: T, b: T, v: [&[T]; 3], sbe1: &mut [T], sr: &mut [T], qj: &mut [T]) -> [T; 3] {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { fused_a1_backward_avx2(d1r, dd1, scale, a, b, v, sbe1, sr, qj) };
    }
    fused_a1_backward_any(d1r, dd1, scale, a, b, v, sbe1, sr, qj)
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn fused_a1_backward_avx2<T: Real>(d1r: &[T], dd1: &[T], scale: T, a: T, b: T, v: [&[T]; 3], sbe1: &mut [T], sr: &mut [T], qj: &mut [T]) -> [T; 3] {
    fused_a1_backward_any(d1r, dd1, scale, a, b, v, sbe1, sr, qj)
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn fused_a1_backward_any<T: Real>(d1r: &[T], dd1: &[T], scale: T, a: T, b: T, v: [&[T]; 3], sbe1: &mut [T], sr: &mut [T], qj: &mut [T]) -> [T; 3] {
    let hh = d1r.len();
    let (d1r, dd1, sbe1, sr, qj) = (&d1r[..hh], &dd1[..hh], &mut sbe1[..hh], &mut sr[..hh], &mut qj[..hh]);
    let (v0, v1, v2) = (&v[0][..hh], &v[1][..hh], &v[2][..hh]);
    let mut acc = [[T::ZERO; 8]; 3];
    let n8 = hh / 8 * 8;
    // Fixed-size blocks of eight: no bounds checks, so the loop body vectorises.
    let block = |x: &[T], c: usize| -> [T; 8] { x[c..c + 8].try_into().unwrap() };
    for c in (0..n8).step_by(8) {
        let (x, g, w0, w1, w2) = (block(d1r, c), block(dd1, c), block(v0, c), block(v1, c), block(v2, c));
        let (mut s1, mut s2, mut s3) = (block(sbe1, c), block(sr, c), block(qj, c));
        for l in 0..8 {
            let d = if x[l] > T::ZERO { g[l] * scale } else { T::ZERO };
            s1[l] += d;
            s2[l] += b * d;
            s3[l] += a * d;
            acc[0][l] += d * w0[l];
            acc[1][l] += d * w1[l];
            acc[2][l] += d * w2[l];
        }
        sbe1[c..c + 8].copy_from_slice(&s1);
        sr[c..c + 8].copy_from_slice(&s2);
        qj[c..c + 8].copy_from_slice(&s3);
    }
    let mut rest = [T::ZERO; 3];
    for t in n8..hh {
        let d = if d1r[t] > T::ZERO { dd1[t] * scale } else { T::ZERO };
        sbe1[t] += d;
        sr[t] += b * d;
        qj[t] += a * d;
        rest[0] += d * v0[t];
        rest[1] += d * v1[t];
        rest[2] += d * v2[t];
    }
    [fold8(&acc[0], rest[0]), fold8(&acc[1], rest[1]), fold8(&acc[2], rest[2])]
}

/// Single-threaded GEMM (the callers already run in parallel): y[n×m] = x[n×k]·wᵀ (w is m×k).
fn matmul_nt_serial<T: Real>(x: &[T], n: usize, k: usize, w: &[T], m: usize, y: &mut [T]) {
    if n == 0 {
        return;
    }
    unsafe {
        T::gemm_raw(n, k, m, T::ONE, x.as_ptr(), k as isize, 1, w.as_ptr(), 1, k as isize, T::ZERO, y.as_mut_ptr(), m as isize, 1)
    }
}

fn net<'a, T: Real>(pe: &PartialEncP, p: &'a Params<T>) -> Net<'a, T> {
    Net {
        g1: p.get(pe.ln1_w),
        be1: p.get(pe.ln1_b),
        w4: p.get(pe.h4.w),
        b4: p.get(pe.h4.b.unwrap()),
        g5: p.get(pe.ln5_w),
        be5: p.get(pe.ln5_b),
        hh: pe.h_hidden,
        dd: pe.code_dim,
        dropout: pe.dropout,
    }
}

/// W₀[:, 1:] as a contiguous Hh × D matrix.
fn w0_tail<T: Real>(pe: &PartialEncP, p: &Params<T>) -> Vec<T> {
    let (hh, dd) = (pe.h_hidden, pe.code_dim);
    let w0 = p.get(pe.h0.w);
    let mut out = vec![T::ZERO; hh * dd];
    for t in 0..hh {
        out[t * dd..(t + 1) * dd].copy_from_slice(&w0[t * (dd + 1) + 1..(t + 1) * (dd + 1)]);
    }
    out
}

/// Pooled codes P (B × D) of the observed pairs of a minibatch.
pub fn partial_forward<T: Real>(pe: &PartialEncP, p: &Params<T>, spl: &SplBatch, mode: Mode) -> PartialCache<T> {
    let (hh, dd) = (pe.h_hidden, pe.code_dim);
    let j = spl.n_junctions;
    let b = spl.n_cells();
    // F̂ and u
    let emb = p.get(pe.emb);
    let mut fhat = Mat::zeros(j, dd);
    let mut fnorm = vec![T::ZERO; j];
    for jj in 0..j {
        let row = &emb[jj * dd..(jj + 1) * dd];
        let nrm = row.iter().map(|&v| v * v).sum::<T>().sqrt();
        fnorm[jj] = nrm;
        let den = nrm.max(T::from_f64(NORM_EPS));
        for (o, &v) in fhat.row_mut(jj).iter_mut().zip(row) {
            *o = v / den;
        }
    }
    let w0t = w0_tail(pe, p);
    let mut u = Mat::zeros(j, hh);
    matmul_nt(&fhat.data, j, dd, &w0t, hh, &mut u.data, T::ZERO);
    let w0 = p.get(pe.h0.w);
    u.data.par_chunks_mut(hh).for_each(|row| {
        for t in 0..hh {
            row[t] += w0[t * (dd + 1)];
        }
    });

    let nt = net(pe, p);
    let fold = Fold::new(&u, p.get(pe.h0.b.unwrap()), nt.g1);
    drop(u);

    let counts: Vec<usize> = (0..b).map(|c| spl.indptr[c + 1] - spl.indptr[c]).collect();
    let psi_t = pair_inputs(pe, p, spl);
    // Work items: runs of whole cells with about ITEM_PAIRS pairs; micro-chunks inside.
    let micro = pe.chunk.clamp(1, MICRO);
    let mut items: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    while start < b {
        let mut end = start + 1;
        while end < b && spl.indptr[end + 1] - spl.indptr[start] <= ITEM_PAIRS {
            end += 1;
        }
        items.push((start, end));
        start = end;
    }
    let dropout = nt.dropout_on(mode);
    let kw = hh.div_ceil(64);
    let nnz = spl.nnz();
    let stashed = nnz * (dd + 1) * std::mem::size_of::<T>() <= STASH_MAX_BYTES;
    let mut keep = vec![0u64; if dropout { nnz * kw } else { 0 }];
    let mut stash = vec![T::ZERO; if stashed { nnz * (dd + 1) } else { 0 }];
    // Each work item writes its own pairs' keep bits and stash rows: disjoint slices, in item order.
    let (mut keep_parts, mut stash_parts) = (Vec::with_capacity(items.len()), Vec::with_capacity(items.len()));
    let (mut keep_rest, mut stash_rest) = (keep.as_mut_slice(), stash.as_mut_slice());
    for &(c0, c1) in &items {
        let pairs = spl.indptr[c1] - spl.indptr[c0];
        let (k, kr) = std::mem::take(&mut keep_rest).split_at_mut(if dropout { pairs * kw } else { 0 });
        let (st, sr) = std::mem::take(&mut stash_rest).split_at_mut(if stashed { pairs * (dd + 1) } else { 0 });
        keep_parts.push(k);
        stash_parts.push(st);
        keep_rest = kr;
        stash_rest = sr;
    }
    let pooled: Vec<Vec<T>> = items
        .par_iter()
        .zip(keep_parts.into_par_iter().zip(stash_parts.into_par_iter()))
        .map(|(&(c0, c1), (bits, stash))| {
            let mut acc = vec![T::ZERO; (c1 - c0) * dd];
            let mut sc = Scratch::new(hh, dd, micro);
            let (e0, e1) = (spl.indptr[c0], spl.indptr[c1]);
            let mut cell = c0;
            let mut s = e0;
            while s < e1 {
                let e = (s + micro).min(e1);
                sc.pairs.clear();
                sc.pairs.extend(s..e);
                sc.psi.clear();
                sc.psi.extend_from_slice(&psi_t[s..e]);
                sc.jn.clear();
                sc.jn.extend_from_slice(&spl.junction[s..e]);
                let keep = if dropout { Keep::Store(&mut bits[(s - e0) * kw..(e - e0) * kw]) } else { Keep::None };
                nt.first_block(&fold, mode, &mut sc, keep);
                let rows = if stashed { Some(&mut stash[(s - e0) * (dd + 1)..(e - e0) * (dd + 1)]) } else { None };
                nt.second_block(&mut sc, rows);
                // Add each pair's code to its cell in pair order.
                for q in 0..e - s {
                    while spl.indptr[cell + 1] <= s + q {
                        cell += 1;
                    }
                    let dst = &mut acc[(cell - c0) * dd..(cell - c0 + 1) * dd];
                    for (a, &v) in dst.iter_mut().zip(&sc.c[q * dd..(q + 1) * dd]) {
                        *a += v;
                    }
                }
                s = e;
            }
            acc
        })
        .collect();
    let mut pool = Mat::zeros(b, dd);
    for (&(c0, _), acc) in items.iter().zip(pooled) {
        pool.data[c0 * dd..c0 * dd + acc.len()].copy_from_slice(&acc);
    }
    let h0 = pe.center.map(|_| {
        let mut sc = Scratch::new(hh, dd, 1);
        let h0 = nt.reference_fwd(&fold, &mut sc);
        for c in 0..b {
            let n = T::from_f64(counts[c] as f64);
            pool.row_mut(c).iter_mut().zip(&h0).for_each(|(v, &r)| *v -= n * r);
        }
        h0
    });
    let den = pool_divisors(pe, p, &counts);
    for c in 0..b {
        let n = den[c];
        if n != T::ONE {
            pool.row_mut(c).iter_mut().for_each(|v| *v /= n);
        }
    }
    PartialCache { pool, counts, fhat, fnorm, fold, den, h0, keep, stash }
}

/// Per-pair inputs ψ (or ψ − ψ̄_j with `partial_center_psi`).
fn pair_inputs<T: Real>(pe: &PartialEncP, p: &Params<T>, spl: &SplBatch) -> Vec<T> {
    match pe.center {
        None => spl.psi.iter().map(|&v| T::from_f32(v)).collect(),
        Some(ci) => {
            let cen = p.get(ci);
            spl.psi.iter().zip(&spl.junction).map(|(&v, &j)| T::from_f32(v) - cen[j as usize]).collect()
        }
    }
}

/// Divisor of each cell's pooled sum: max(#obs, 1) for `mean`, the `pool_divisor` buffer for `fixed`,
/// 1 for `sum`.
fn pool_divisors<T: Real>(pe: &PartialEncP, p: &Params<T>, counts: &[usize]) -> Vec<T> {
    match (pe.divisor, pe.pool_mean) {
        (Some(di), _) => {
            let v = p.get(di)[0].max(T::from_f64(1e-6));
            vec![v; counts.len()]
        }
        (None, true) => counts.iter().map(|&n| T::from_f64(n.max(1) as f64)).collect(),
        (None, false) => vec![T::ONE; counts.len()],
    }
}

/// Backward from d(pool) (B × D): accumulates the gradients of the embedding and the h network.
pub fn partial_backward<T: Real>(
    pe: &PartialEncP,
    p: &Params<T>,
    spl: &SplBatch,
    cache: &PartialCache<T>,
    dpool: &Mat<T>,
    mode: Mode,
    g: &mut Grads<T>,
) {
    let (hh, dd) = (pe.h_hidden, pe.code_dim);
    let j = spl.n_junctions;
    let b = spl.n_cells();
    let nnz = spl.nnz();
    // d(code) per cell
    let mut dcell = dpool.clone();
    for c in 0..b {
        let n = cache.den[c];
        if n != T::ONE {
            dcell.row_mut(c).iter_mut().for_each(|v| *v /= n);
        }
    }
    // Pairs in junction-major order.
    let mut cnt = vec![0usize; j + 1];
    for &jj in &spl.junction {
        cnt[jj as usize + 1] += 1;
    }
    for i in 0..j {
        cnt[i + 1] += cnt[i];
    }
    let mut pos = cnt.clone();
    let mut order = vec![0usize; nnz];
    let mut cell_of = vec![0u32; nnz];
    for c in 0..b {
        for e in spl.indptr[c]..spl.indptr[c + 1] {
            let jj = spl.junction[e] as usize;
            order[pos[jj]] = e;
            cell_of[e] = c as u32;
            pos[jj] += 1;
        }
    }
    let psi_t = pair_inputs(pe, p, spl);
    let micro = pe.chunk.clamp(1, MICRO);
    let mut items: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    while start < j {
        let mut end = start + 1;
        while end < j && cnt[end + 1] - cnt[start] <= ITEM_PAIRS {
            end += 1;
        }
        items.push((start, end));
        start = end;
    }
    let nt = net(pe, p);
    assert!(
        !nt.dropout_on(mode) || nnz == 0 || !cache.keep.is_empty(),
        "partial_backward: dropout is on but the forward ran without it (no keep bits)"
    );
    let fold = &cache.fold;
    let accs: Vec<BwdAcc<T>> = items
        .par_iter()
        .map(|&(j0, j1)| {
            let mut acc = BwdAcc::new(hh, dd, j0, j1 - j0);
            let mut sc = Scratch::new(hh, dd, micro);
            let (p0, p1) = (cnt[j0], cnt[j1]);
            let mut s = p0;
            while s < p1 {
                let e = (s + micro).min(p1);
                sc.pairs.clear();
                sc.pairs.extend_from_slice(&order[s..e]);
                sc.psi.clear();
                sc.psi.extend(order[s..e].iter().map(|&q| psi_t[q]));
                sc.jn.clear();
                sc.jn.extend(order[s..e].iter().map(|&q| spl.junction[q]));
                let keep = if nt.dropout_on(mode) { Keep::Load(&cache.keep) } else { Keep::None };
                if cache.stash.is_empty() {
                    nt.chunk_fwd(fold, mode, &mut sc, keep);
                } else {
                    nt.chunk_fwd_stashed(fold, mode, &mut sc, keep, &cache.stash);
                }
                let pairs = std::mem::take(&mut sc.pairs);
                nt.chunk_bwd(fold, mode, &mut sc, |q| dcell.row(cell_of[pairs[q]] as usize), &mut acc);
                sc.pairs = pairs;
                s = e;
            }
            acc
        })
        .collect();
    // Merge in item order: [R | be1 | W4 | b4 | g5 | be5], Q_j, the per-junction and global scalars.
    let mut small = vec![T::ZERO; hh + hh + dd * hh + 3 * dd];
    let mut q = Mat::zeros(j, hh);
    let mut cj = vec![[0.0f64; 4]; j];
    let (mut e1, mut e3) = (0.0f64, 0.0f64);
    let mut merge = |acc: &BwdAcc<T>, small: &mut Vec<T>, with_junctions: bool| {
        small.iter_mut().zip(&acc.small).for_each(|(a, &v)| *a += v);
        e1 += acc.e1;
        e3 += acc.e3;
        if with_junctions {
            q.data[acc.j0 * hh..acc.j0 * hh + acc.q.len()].copy_from_slice(&acc.q);
            cj[acc.j0..acc.j0 + acc.c.len()].copy_from_slice(&acc.c);
        }
    };
    for acc in &accs {
        merge(acc, &mut small, true);
    }
    // The reference code: pool_i −= n_i · h(0), so d h(0) = −Σ_i n_i · dcell_i. Its pair has ψ = 0, so it
    // adds nothing to Q_j or the per-junction scalars.
    if cache.h0.is_some() {
        let mut dh0 = vec![T::ZERO; dd];
        for c in 0..b {
            let n = T::from_f64(cache.counts[c] as f64);
            dh0.iter_mut().zip(dcell.row(c)).for_each(|(a, &v)| *a -= n * v);
        }
        let mut sc = Scratch::new(hh, dd, 1);
        nt.reference_fwd(fold, &mut sc);
        let mut acc = BwdAcc::new(hh, dd, 0, 1);
        nt.chunk_bwd(fold, Mode { training: false, seed: 0 }, &mut sc, |_| dh0.as_slice(), &mut acc);
        merge(&acc, &mut small, false);
    }
    // Unfold the first block (see `Fold`):
    //   d u_j = g₁⊙Q_j − Σψβm₁ − (Σψβm₂α)·ũ_j − (Σψβm₂β)·b̃
    //   d b₀  = g₁⊙R − Σβm₁ − Σ_j (Σβm₂α)_j·ũ_j − (Σβm₂β)·b̃
    //   d g₁  = Σ_j ũ_j⊙Q_j + b̃⊙R,   d be₁ = Σ d(a1)
    let g1 = nt.g1;
    let (sr, rest) = small.split_at(hh);
    let mut du = Mat::zeros(j, hh);
    du.data.par_chunks_mut(hh).enumerate().for_each(|(jj, row)| {
        let (qj, ut, c) = (q.row(jj), fold.ut.row(jj), &cj[jj]);
        for t in 0..hh {
            row[t] = T::from_f64(
                g1[t].to_f64() * qj[t].to_f64() - c[0] - c[1] * ut[t].to_f64() - c[2] * fold.bt[t].to_f64(),
            );
        }
    });
    let mut db0 = vec![0.0f64; hh];
    let mut dg1 = vec![0.0f64; hh];
    for jj in 0..j {
        let (qj, ut, c3) = (q.row(jj), fold.ut.row(jj), cj[jj][3]);
        for t in 0..hh {
            db0[t] -= c3 * ut[t].to_f64();
            dg1[t] += ut[t].to_f64() * qj[t].to_f64();
        }
    }
    for t in 0..hh {
        db0[t] += g1[t].to_f64() * sr[t].to_f64() - e1 - e3 * fold.bt[t].to_f64();
        dg1[t] += fold.bt[t].to_f64() * sr[t].to_f64();
    }
    let put = |idx: Option<usize>, vals: &mut dyn Iterator<Item = T>, g: &mut Grads<T>| {
        if let Some(idx) = idx {
            if let Some(sl) = g.slot(idx) {
                sl.iter_mut().zip(vals).for_each(|(a, v)| *a += v);
            }
        }
    };
    put(pe.h0.b, &mut db0.iter().map(|&v| T::from_f64(v)), g);
    put(Some(pe.ln1_w), &mut dg1.iter().map(|&v| T::from_f64(v)), g);
    let mut off = 0;
    let mut take = |len: usize| {
        let s = &rest[off..off + len];
        off += len;
        s
    };
    put(Some(pe.ln1_b), &mut take(hh).iter().copied(), g);
    put(Some(pe.h4.w), &mut take(dd * hh).iter().copied(), g);
    put(pe.h4.b, &mut take(dd).iter().copied(), g);
    put(Some(pe.ln5_w), &mut take(dd).iter().copied(), g);
    put(Some(pe.ln5_b), &mut take(dd).iter().copied(), g);

    // u_j = W₀[:,0] + W₀[:,1:]·F̂_j
    if let Some(gw0) = g.slot(pe.h0.w) {
        let mut tail = vec![T::ZERO; hh * dd];
        matmul_tn_acc(&du.data, j, hh, &cache.fhat.data, dd, &mut tail);
        for t in 0..hh {
            let mut s0 = T::ZERO;
            for jj in 0..j {
                s0 += du.data[jj * hh + t];
            }
            gw0[t * (dd + 1)] += s0;
            for c in 0..dd {
                gw0[t * (dd + 1) + 1 + c] += tail[t * dd + c];
            }
        }
    }
    if let Some(gemb) = g.slot(pe.emb) {
        let w0t = w0_tail(pe, p);
        let mut dfhat = Mat::zeros(j, dd);
        matmul_nn(&du.data, j, hh, &w0t, dd, &mut dfhat.data, T::ZERO);
        for jj in 0..j {
            let nrm = cache.fnorm[jj];
            let fh = cache.fhat.row(jj);
            let dfh = dfhat.row(jj);
            let dst = &mut gemb[jj * dd..(jj + 1) * dd];
            if nrm > T::from_f64(NORM_EPS) {
                let dot = fh.iter().zip(dfh).map(|(&a, &b)| a * b).sum::<T>();
                for c in 0..dd {
                    dst[c] += (dfh[c] - fh[c] * dot) / nrm;
                }
            } else {
                for c in 0..dd {
                    dst[c] += dfh[c] / T::from_f64(NORM_EPS);
                }
            }
        }
    }
}
