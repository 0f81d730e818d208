//! kernels/gather.cu against its CPU twins (splicevi::cuda::gather::twin) on fresh random inputs with
//! poisoned outputs, on every device (`emu::devices`: cuda:0 where usable, always the host emulation).
//! Everything here is integer bookkeeping or a copy: the comparison is exact.
//! Cases: empty rows, rows past one block of threads (> 256 entries), more than 32
//! rows (several tiles of the CSC's bit words), columns no row holds.

#[path = "common/emu.rs"]
mod emu;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use splicevi::cuda::gather::{twin, Bits32, CscOut, CscScratch};
use splicevi::cuda::{CudaDevice, CudaGather};

/// A random CSR of `n` rows over `cols` columns (sorted, distinct columns; some rows empty, some long).
fn csr(r: &mut ChaCha8Rng, n: usize, cols: usize) -> (Vec<i64>, Vec<u32>, Vec<f32>) {
    let mut ptr = vec![0i64];
    let (mut idx, mut val) = (Vec::new(), Vec::new());
    for i in 0..n {
        let p = match i % 7 {
            0 => 0.0,
            1 => 0.9,
            _ => r.gen_range(0.0..0.3),
        };
        for c in 0..cols {
            if r.gen_bool(p) {
                idx.push(c as u32);
                val.push(r.gen_range(-5.0f32..5.0));
            }
        }
        ptr.push(idx.len() as i64);
    }
    (ptr, idx, val)
}

fn gather_on(dev: &CudaDevice) {
    let k = CudaGather::new(dev).unwrap();
    let mut r = ChaCha8Rng::seed_from_u64(11);
    // scan_counts alone: none, one, and one tile of 2,048 entries less, exactly and more; 4.9 tiles
    for n in [0usize, 1, 2047, 2048, 2049, 10_000] {
        let counts: Vec<i32> = (0..n).map(|_| r.gen_range(0..50)).collect();
        let mut want = vec![0i64; n + 1];
        for i in 0..n {
            want[i + 1] = want[i] + counts[i] as i64;
        }
        let cd = dev.upload(if n == 0 { &[0i32][..] } else { &counts[..] }).unwrap();
        let mut o64 = dev.upload(&vec![-7i64; n + 1]).unwrap();
        let mut o32 = dev.upload(&vec![-7i32; n + 1]).unwrap();
        k.scan_counts(&cd, n, &mut o64, Some(&mut o32)).unwrap();
        assert_eq!(dev.download(&o64).unwrap(), want, "scan_counts i64, n {n}");
        assert_eq!(dev.download(&o32).unwrap(), want.iter().map(|&v| v as i32).collect::<Vec<_>>(), "scan_counts i32, n {n}");
    }
    for (n_cells, cols, b) in [(5usize, 3usize, 1usize), (90, 400, 70), (40, 1000, 33)] {
        let (ptr, idx, val) = csr(&mut r, n_cells, cols);
        let mut cells: Vec<u32> = (0..b).map(|_| r.gen_range(0..n_cells as u32)).collect();
        // distinct cells for the CSC (at most one entry per (row, column)); one repeat for the gathers
        let mut seen = std::collections::HashSet::new();
        cells.retain(|c| seen.insert(*c));
        let b = cells.len();
        let (pd, cd) = (dev.upload(&ptr).unwrap(), dev.upload(&cells).unwrap());
        // row pointers, i64 and i32
        let want_ptr = twin::scan_rows(&ptr, &cells);
        let mut p64 = dev.upload(&vec![-7i64; b + 1]).unwrap();
        let mut p32 = dev.upload(&vec![-7i32; b + 1]).unwrap();
        k.scan_rows(&pd, &cd, b, &mut p64, Some(&mut p32)).unwrap();
        assert_eq!(dev.download(&p64).unwrap(), want_ptr, "scan_rows i64, B {b}");
        assert_eq!(dev.download(&p32).unwrap(), want_ptr.iter().map(|&v| v as i32).collect::<Vec<_>>(), "scan_rows i32, B {b}");
        let nnz = *want_ptr.last().unwrap() as usize;
        // gathers of a u32 and an f32 array, rows
        let (want_idx, want_row) = twin::gather_rows(&ptr, &cells, &idx);
        let vbits: Vec<u32> = val.iter().map(|v| v.to_bits()).collect();
        let (want_val, _) = twin::gather_rows(&ptr, &cells, &vbits);
        let (id, vd) = (dev.upload(&idx).unwrap(), dev.upload(&val).unwrap());
        let gi = dev.upload(&vec![u32::MAX; nnz.max(1)]).unwrap();
        let gv = dev.upload(&vec![f32::NAN; nnz.max(1)]).unwrap();
        let mut ro = dev.upload(&vec![-1i32; nnz.max(1)]).unwrap();
        k.gather_rows(&pd, &cd, b, &p64, nnz, &[(Bits32::of(&id), Bits32::of(&gi)), (Bits32::of(&vd), Bits32::of(&gv))], Some(&mut ro)).unwrap();
        assert_eq!(&dev.download(&gi).unwrap()[..nnz], &want_idx[..], "gather_rows u32");
        let got_v: Vec<u32> = dev.download(&gv).unwrap()[..nnz].iter().map(|v| v.to_bits()).collect();
        assert_eq!(got_v, want_val, "gather_rows f32 bits");
        assert_eq!(&dev.download(&ro).unwrap()[..nnz], &want_row[..], "gather_rows row_of");
        // CSC of the gathered minibatch
        let gval: Vec<f32> = want_val.iter().map(|&b| f32::from_bits(b)).collect();
        let (wcp, wrow, wval, word) = twin::csc(&want_row, &want_idx, &gval, cols);
        let (words, counts) = CscScratch::sizes(b, cols);
        let mut mask = dev.upload(&vec![0xdead_beefu32; words]).unwrap();
        let mut toff = dev.upload(&vec![-3i32; words]).unwrap();
        let mut cnt = dev.upload(&vec![-3i32; counts]).unwrap();
        let mut cp = dev.upload(&vec![-7i64; cols + 1]).unwrap();
        let mut cp32 = dev.upload(&vec![-7i32; cols + 1]).unwrap();
        let mut orow = dev.upload(&vec![u32::MAX; nnz.max(1)]).unwrap();
        let mut oval = dev.upload(&vec![f32::NAN; nnz.max(1)]).unwrap();
        let mut oord = dev.upload(&vec![-1i32; nnz.max(1)]).unwrap();
        k.csc(
            &ro,
            &gi,
            Some(&gv),
            nnz,
            b,
            cols,
            CscScratch { mask: &mut mask, tile_off: &mut toff, count: &mut cnt },
            CscOut { cptr: &mut cp, cptr32: Some(&mut cp32), row: Some(&mut orow), val: Some(&mut oval), ord: Some(&mut oord) },
        )
        .unwrap();
        assert_eq!(dev.download(&cp).unwrap(), wcp, "csc pointers, B {b} × {cols}");
        assert_eq!(dev.download(&cp32).unwrap(), wcp.iter().map(|&v| v as i32).collect::<Vec<_>>(), "csc i32 pointers");
        assert_eq!(&dev.download(&orow).unwrap()[..nnz], &wrow[..], "csc rows");
        let gv_bits: Vec<u32> = dev.download(&oval).unwrap()[..nnz].iter().map(|v| v.to_bits()).collect();
        assert_eq!(gv_bits, wval.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "csc values");
        assert_eq!(&dev.download(&oord).unwrap()[..nnz], &word[..], "csc entry ids");
        // The twin itself against the host's csc: ids of column c in row order.
        for c in 0..cols {
            let rows: Vec<u32> = wrow[wcp[c] as usize..wcp[c + 1] as usize].to_vec();
            assert!(rows.windows(2).all(|w| w[0] < w[1]), "column {c}: rows not in order");
        }
    }
}

/// Random per-cell ATSE groups: each cell's entries are split into runs (groups) of 1–4 entries, each
/// run given an ATSE, and `ord_rel` a random permutation of the row (the kernels only copy it).
fn groups_on(dev: &CudaDevice) {
    let k = CudaGather::new(dev).unwrap();
    let mut r = ChaCha8Rng::seed_from_u64(12);
    let (n_cells, n_atse) = (120usize, 50usize);
    let (mut s_ptr, mut g_ptr) = (vec![0i64], vec![0i64]);
    let (mut start_rel, mut atse, mut ord_rel) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n_cells {
        let n_groups = if i % 9 == 0 { 0 } else { r.gen_range(1..40) };
        let mut at: Vec<u32> = (0..n_atse as u32).collect();
        for q in (1..n_atse).rev() {
            at.swap(q, r.gen_range(0..=q));
        }
        let mut len = 0u32;
        for gq in 0..n_groups {
            start_rel.push(len);
            atse.push(at[gq]);
            len += r.gen_range(1..=4);
        }
        let mut perm: Vec<u32> = (0..len).collect();
        for q in (1..len as usize).rev() {
            perm.swap(q, r.gen_range(0..=q));
        }
        ord_rel.extend(perm);
        s_ptr.push(s_ptr.last().unwrap() + len as i64);
        g_ptr.push(g_ptr.last().unwrap() + n_groups as i64);
    }
    // (94 cells: ATSEs with more than 32 groups, so that group_entries' warps take several rounds)
    let mut cells: Vec<u32> = vec![3, 0, 17, 9, 42, 5, 1, 59, 33, 34, 35, 36, 37, 38, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 2];
    cells.extend(60..120);
    let b = cells.len();
    let (wg, wo, wrow, watse) = twin::gather_groups(&g_ptr, &cells, &s_ptr, &start_rel, &atse, &ord_rel);
    let n_groups = wrow.len();
    let nnz = wo.len();
    let up = |v: &[u32]| dev.upload(v).unwrap();
    let (gpd, spd, cd) = (dev.upload(&g_ptr).unwrap(), dev.upload(&s_ptr).unwrap(), up(&cells));
    let (srd, atd, ord) = (up(&start_rel), up(&atse), up(&ord_rel));
    let mut g_cell = dev.upload(&vec![-7i64; b + 1]).unwrap();
    k.scan_rows(&gpd, &cd, b, &mut g_cell, None).unwrap();
    assert_eq!(dev.download(&g_cell).unwrap(), twin::scan_rows(&g_ptr, &cells), "group pointers");
    let mut s_dst = dev.upload(&vec![-7i64; b + 1]).unwrap();
    k.scan_rows(&spd, &cd, b, &mut s_dst, None).unwrap();
    let mut g_grp = dev.upload(&vec![-7i64; n_groups + 1]).unwrap();
    let mut g_ord = dev.upload(&vec![u32::MAX; nnz]).unwrap();
    let mut g_row = dev.upload(&vec![-1i32; n_groups]).unwrap();
    let mut g_at = dev.upload(&vec![u32::MAX; n_groups]).unwrap();
    k.gather_groups(&gpd, &cd, b, &g_cell, &spd, &s_dst, &srd, &atd, &ord, &mut g_grp, &mut g_ord, Some(&mut g_row), Some(&mut g_at)).unwrap();
    assert_eq!(dev.download(&g_grp).unwrap(), wg, "g_grp");
    assert_eq!(dev.download(&g_ord).unwrap(), wo, "g_ord");
    assert_eq!(dev.download(&g_row).unwrap(), wrow, "group rows");
    assert_eq!(dev.download(&g_at).unwrap(), watse, "group ATSEs");
    // groups by ATSE (a CSC with one group per (cell, ATSE)), then their entries
    let (words, counts) = CscScratch::sizes(b, n_atse);
    let mut mask = dev.upload(&vec![7u32; words]).unwrap();
    let mut toff = dev.upload(&vec![-3i32; words]).unwrap();
    let mut cnt = dev.upload(&vec![-3i32; counts]).unwrap();
    let mut gcp = dev.upload(&vec![-7i64; n_atse + 1]).unwrap();
    let mut gorder = dev.upload(&vec![-1i32; n_groups]).unwrap();
    k.csc(
        &g_row,
        &g_at,
        None,
        n_groups,
        b,
        n_atse,
        CscScratch { mask: &mut mask, tile_off: &mut toff, count: &mut cnt },
        CscOut { cptr: &mut gcp, cptr32: None, row: None, val: None, ord: Some(&mut gorder) },
    )
    .unwrap();
    let gcp_host = dev.download(&gcp).unwrap();
    assert!(gcp_host.windows(2).any(|w| w[1] - w[0] > 32), "some ATSE should have more than 32 groups");
    let mut ecnt = dev.upload(&vec![-3i32; n_atse]).unwrap();
    let mut p64 = dev.upload(&vec![-7i64; n_atse + 1]).unwrap();
    let mut p32 = dev.upload(&vec![-7i32; n_atse + 1]).unwrap();
    let mut ids = dev.upload(&vec![-1i32; nnz]).unwrap();
    k.group_entries(&gcp, &gorder, &g_grp, &g_ord, n_atse, &mut ecnt, &mut p64, &mut p32, &mut ids).unwrap();
    let (wp, wids) = twin::group_entries(&wg, &wo, &wrow, &watse, n_atse);
    assert_eq!(dev.download(&p32).unwrap(), wp, "entries by ATSE: pointers");
    assert_eq!(dev.download(&ids).unwrap(), wids, "entries by ATSE: ids");
    let mut io = dev.upload(&vec![-1i32; 1000]).unwrap();
    k.iota(1000, &mut io).unwrap();
    assert_eq!(dev.download(&io).unwrap(), (0..1000).collect::<Vec<i32>>(), "iota");
}

#[test]
fn gather_kernels_match_twins() {
    for dev in emu::devices("gather kernels vs their CPU twins") {
        gather_on(&dev);
        groups_on(&dev);
    }
}
