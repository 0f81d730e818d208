//! kernels/glue.cu against its CPU twins (splicevi::cuda::glue::twin) on fresh random inputs, outputs
//! poisoned with NaN first (or random where the launch accumulates), on every device
//! (`emu::devices`: cuda:0 where usable, always the host emulation).
//! Tolerance (f32): 1e-5 relative + 1e-6 × the output's scale (device expf/log1pf differ from the
//! host's by a few ulps; sums run in f64 on both sides).

#[path = "common/emu.rs"]
mod emu;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use splicevi::cuda::glue::{twin, Cols, MapOp};
use splicevi::cuda::{CudaDevice, CudaGlue};

fn rand_vec(r: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| r.gen_range(lo..hi)).collect()
}

fn check(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-30f64, |a, &v| a.max((v as f64).abs()));
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-5 * (w as f64).abs() + 1e-6 * scale;
        assert!(g.is_finite() && ((g - w) as f64).abs() <= tol, "{what}[{k}] = {g:e}, twin {w:e} (tolerance {tol:e})");
    }
}

/// A random CSR over `t` targets with up to `per` entries each (some empty), and a permutation of the
/// entries as `ids`.
fn segments(r: &mut ChaCha8Rng, t: usize, per: usize) -> (Vec<i32>, Vec<i32>) {
    let mut ptr = vec![0i32];
    for _ in 0..t {
        let n = if r.gen_bool(0.2) { 0 } else { r.gen_range(0..=per) };
        ptr.push(ptr.last().unwrap() + n as i32);
    }
    let m = *ptr.last().unwrap() as usize;
    let mut ids: Vec<i32> = (0..m as i32).collect();
    for i in (1..m).rev() {
        ids.swap(i, r.gen_range(0..=i));
    }
    (ptr, ids)
}

fn glue_on(dev: &CudaDevice) {
    let g = CudaGlue::new(dev).unwrap();
    let mut r = ChaCha8Rng::seed_from_u64(11);
    // copy_cols: a 7-column window of a 13-wide source into columns 3.. of a 12-wide destination.
    for beta in [0.0f32, 0.5] {
        let (rows, cols) = (37, 7);
        let src = rand_vec(&mut r, rows * 13, -2.0, 2.0);
        let dst0 = if beta == 0.0 { vec![f32::NAN; rows * 12] } else { rand_vec(&mut r, rows * 12, -1.0, 1.0) };
        let (s, mut d) = (dev.upload(&src).unwrap(), dev.upload(&dst0).unwrap());
        g.copy_cols(Cols::from(&s, 13, 4), Cols::from(&d, 12, 3), rows, cols, -1.5, beta).unwrap();
        let got = dev.download(&d).unwrap();
        let mut want = dst0.clone();
        twin::copy_cols(&src, 4, 13, &mut want, 3, 12, rows, cols, -1.5, beta);
        // Columns outside the window are untouched (NaN stays NaN): compare the window only.
        let pick = |v: &[f32]| (0..rows).flat_map(|i| v[i * 12 + 3..i * 12 + 10].to_vec()).collect::<Vec<f32>>();
        check(&format!("copy_cols beta {beta}"), &pick(&got), &pick(&want));
        let outside = (0..rows).all(|i| (0..12).filter(|c| !(3..10).contains(c)).all(|c| got[i * 12 + c].to_bits() == dst0[i * 12 + c].to_bits()));
        assert!(outside, "copy_cols wrote outside its window");
        let _ = &mut d;
    }
    // to_bf16: the bits of half::bf16::from_f32 (ties, subnormals, infinities, NaN) in a window.
    {
        let (rows, cols) = (19, 23);
        let mut src = rand_vec(&mut r, rows * 25, -3.0, 3.0);
        let specials = [1.0f32 + f32::EPSILON * 64.0, 1.00390625, -1.01171875, 1e-40, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::NAN];
        for (k, &v) in specials.iter().enumerate() {
            src[k * 3 + 2] = v;
        }
        let s = dev.upload(&src).unwrap();
        let mut d = dev.upload(&vec![half::bf16::from_bits(0xdead); rows * 24]).unwrap();
        g.to_bf16(Cols::from(&s, 25, 2), &mut d, 24, rows, cols).unwrap();
        let got = dev.download(&d).unwrap();
        let mut want = vec![half::bf16::from_bits(0xdead); rows * 24];
        twin::to_bf16(&src, 2, 25, &mut want, 24, rows, cols);
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            let same = a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
            assert!(same, "to_bf16[{k}]: {:#06x}, twin {:#06x}", a.to_bits(), b.to_bits());
        }
    }
    // map: every op, including softplus past its threshold.
    for op in [MapOp::Exp, MapOp::SoftplusEps(1e-4), MapOp::Mul, MapOp::MulSoftplusGrad, MapOp::LeakyRelu, MapOp::MulLeakyReluGrad] {
        let n = 1000;
        let x = rand_vec(&mut r, n, -25.0, 25.0);
        let a = rand_vec(&mut r, n, -25.0, 25.0);
        let x = if op == MapOp::Exp { x.iter().map(|v| v / 3.0).collect() } else { x };
        let (xd, ad, mut yd) = (dev.upload(&x).unwrap(), dev.upload(&a).unwrap(), dev.upload(&vec![f32::NAN; n]).unwrap());
        g.map(op, &xd, Some(&ad), &mut yd).unwrap();
        let mut want = vec![0f32; n];
        twin::map(op, &x, &a, &mut want);
        check(&format!("map {op:?}"), &dev.download(&yd).unwrap(), &want);
    }
    // col_sum over a window, overwrite and accumulate; strips of 32 columns (a partial last one), narrow
    // ones whose blocks put 128 or 256 row lanes on a column, and a tall input's strips of 4
    // (glue::col_sum_strip).
    for (beta, rows, cols, strip) in [(0.0f32, 53, 300, 32), (1.0, 53, 300, 32), (0.0, 1000, 1, 1), (1.0, 700, 3, 4), (0.0, 37, 17, 32), (0.0, 0, 4, 4), (0.0, 1500, 40, 4)] {
        assert_eq!(splicevi::cuda::glue::col_sum_strip(rows, cols), strip, "{rows} × {cols}");
        let x = rand_vec(&mut r, (rows * 310).max(1), -1.0, 1.0);
        let o0 = if beta == 0.0 { vec![f32::NAN; cols] } else { rand_vec(&mut r, cols, -1.0, 1.0) };
        let (xd, mut od) = (dev.upload(&x).unwrap(), dev.upload(&o0).unwrap());
        g.col_sum(Cols::from(&xd, 310, 5), rows, cols, 0.25, beta, &mut od).unwrap();
        let mut want = o0.clone();
        twin::col_sum(&x, 5, 310, rows, cols, 0.25, beta, &mut want);
        check(&format!("col_sum {rows} × {cols} beta {beta}"), &dev.download(&od).unwrap(), &want);
    }
    // seg_sum with and without ids and the softplus' factor.
    for (with_ids, with_sg, beta) in [(false, false, 0.0f32), (true, true, 0.0), (true, false, 1.0)] {
        let t = 300;
        let (ptr, ids) = segments(&mut r, t, 9);
        let m = *ptr.last().unwrap() as usize;
        let vals = rand_vec(&mut r, m.max(1), -1.0, 1.0);
        let sg = rand_vec(&mut r, t, -30.0, 30.0);
        let o0 = if beta == 0.0 { vec![f32::NAN; t] } else { rand_vec(&mut r, t, -1.0, 1.0) };
        let (pd, idd, vd, sgd, mut od) =
            (dev.upload(&ptr).unwrap(), dev.upload(&ids).unwrap(), dev.upload(&vals).unwrap(), dev.upload(&sg).unwrap(), dev.upload(&o0).unwrap());
        g.seg_sum(&pd, with_ids.then_some(&idd as _), &vd, with_sg.then_some(&sgd as _), 0.7, beta, &mut od).unwrap();
        let mut want = o0.clone();
        twin::seg_sum(&ptr, with_ids.then_some(&ids[..]), &vals, with_sg.then_some(&sg[..]), 0.7, beta, &mut want);
        check(&format!("seg_sum ids {with_ids} sg {with_sg} beta {beta}"), &dev.download(&od).unwrap(), &want);
    }
    // scatter: distinct (row, column) pairs of a 23 × 57 matrix in random order; the rest untouched.
    {
        let (rows, ld) = (23usize, 57usize);
        let mut cells: Vec<(i32, i32)> = (0..rows as i32).flat_map(|i| (0..ld as i32).map(move |j| (i, j))).filter(|_| r.gen_bool(0.3)).collect();
        for i in (1..cells.len()).rev() {
            cells.swap(i, r.gen_range(0..=i));
        }
        let (ro, co): (Vec<i32>, Vec<i32>) = cells.iter().copied().unzip();
        let vals = rand_vec(&mut r, cells.len(), -1.0, 1.0);
        let o0 = rand_vec(&mut r, rows * ld, -1.0, 1.0);
        let (rd, cd, vd, mut od) = (dev.upload(&ro).unwrap(), dev.upload(&co).unwrap(), dev.upload(&vals).unwrap(), dev.upload(&o0).unwrap());
        g.scatter(&rd, &cd, &vd, ld, -0.25, &mut od).unwrap();
        let mut want = o0.clone();
        twin::scatter(&ro, &co, &vals, ld, -0.25, &mut want);
        let got = dev.download(&od).unwrap();
        assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "scatter");
        assert!(cells.len() > 100 && got.iter().zip(&o0).filter(|(a, b)| a != b).count() == cells.len(), "scatter: only the named elements change");
        // into bf16 (the dense decode's d(logits) in --precision bf16): the twin's round-to-nearest-even
        // bits, which are also the f32 scatter's converted by to_bf16; the rest untouched.
        let o16: Vec<half::bf16> = o0.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let mut od16 = dev.upload(&o16).unwrap();
        g.scatter_bf16(&rd, &cd, &vd, ld, -0.25, &mut od16).unwrap();
        let mut want16 = o16.clone();
        twin::scatter_bf16(&ro, &co, &vals, ld, -0.25, &mut want16);
        let got16 = dev.download(&od16).unwrap();
        assert_eq!(got16.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want16.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "scatter_bf16");
        let fd = dev.upload(&got).unwrap();
        let mut conv = dev.upload(&vec![half::bf16::from_f32(f32::NAN); rows * ld]).unwrap();
        g.to_bf16(Cols::all(&fd, ld), &mut conv, ld, rows, ld).unwrap();
        let conv = dev.download(&conv).unwrap();
        let named: std::collections::HashSet<usize> = cells.iter().map(|&(i, j)| i as usize * ld + j as usize).collect();
        for k in 0..rows * ld {
            if named.contains(&k) {
                assert_eq!(got16[k].to_bits(), conv[k].to_bits(), "scatter_bf16[{k}] vs scatter then to_bf16");
            } else {
                assert_eq!(got16[k].to_bits(), o16[k].to_bits(), "scatter_bf16: element {k} changed");
            }
        }
        // A value that rounds up and one that ties to even, at a known place.
        let (one_r, one_c) = (dev.upload(&[3i32]).unwrap(), dev.upload(&[5i32]).unwrap());
        for (v, bits) in [(1.0f32 + 3.0 * f32::EPSILON * 16384.0, 0x3f81u16), (f32::from_bits(0x3f80_8000), 0x3f80)] {
            let mut m = dev.upload(&vec![half::bf16::ZERO; rows * ld]).unwrap();
            g.scatter_bf16(&one_r, &one_c, &dev.upload(&[v]).unwrap(), ld, 1.0, &mut m).unwrap();
            assert_eq!(dev.download(&m).unwrap()[3 * ld + 5].to_bits(), bits, "scatter_bf16 of {v:e}");
        }
    }
    // gather_rows: K below, at and above a warp's width.
    for (k, with_ids, beta) in [(5usize, false, 0.0f32), (32, true, 0.0), (70, true, 1.0)] {
        let (t, n_src) = (41, 29);
        let (ptr, ids) = segments(&mut r, t, 7);
        let m = *ptr.last().unwrap() as usize;
        let rows_of: Vec<i32> = (0..m.max(1)).map(|_| r.gen_range(0..n_src as i32)).collect();
        let w = rand_vec(&mut r, m.max(1), -1.0, 1.0);
        let src = rand_vec(&mut r, n_src * k, -2.0, 2.0);
        let o0 = if beta == 0.0 { vec![f32::NAN; t * k] } else { rand_vec(&mut r, t * k, -1.0, 1.0) };
        let up = |v: &[i32]| dev.upload(v).unwrap();
        let (pd, idd, rd) = (up(&ptr), up(&ids), up(&rows_of));
        let (wd, sd, mut od) = (dev.upload(&w).unwrap(), dev.upload(&src).unwrap(), dev.upload(&o0).unwrap());
        g.gather_rows(&pd, with_ids.then_some(&idd as _), &rd, &wd, &sd, k, 0.5, beta, &mut od).unwrap();
        let mut want = o0.clone();
        twin::gather_rows(&ptr, with_ids.then_some(&ids[..]), &rows_of, &w, &src, k, 0.5, beta, &mut want);
        check(&format!("gather_rows K {k} ids {with_ids} beta {beta}"), &dev.download(&od).unwrap(), &want);
        // chunked (segments of up to 7 entries in chunks of 1, 3 and 7): the same sums, and with one
        // chunk per segment the same bits
        for chunk in [1usize, 3, 7] {
            let mut part = dev.upload(&vec![f64::NAN; splicevi::cuda::glue::gather_rows_part_len(t, m, k, chunk)]).unwrap();
            let mut oc = dev.upload(&o0).unwrap();
            g.gather_rows_chunked(&pd, with_ids.then_some(&idd as _), &rd, &wd, &sd, k, 0.5, beta, m, chunk, &mut part, &mut oc).unwrap();
            let got = dev.download(&oc).unwrap();
            check(&format!("gather_rows_chunked K {k} ids {with_ids} beta {beta} chunk {chunk}"), &got, &want);
            if chunk == 7 {
                let one: Vec<u32> = dev.download(&od).unwrap().iter().map(|v| v.to_bits()).collect();
                assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), one, "gather_rows_chunked with one chunk per segment");
            }
        }
    }
}

#[test]
fn device_glue_matches_twin() {
    for dev in emu::devices("glue kernels vs cuda::glue::twin") {
        glue_on(&dev);
    }
}
