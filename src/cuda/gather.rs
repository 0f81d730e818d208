//! Typed launches of kernels/gather.cu: a minibatch assembled on the device from the dataset resident
//! there (row pointers, row gathers, the Dirichlet-multinomial's ATSE groups, a stable CSR → CSC, the
//! entries grouped by ATSE). CPU twin: [`twin`]; the whole minibatch is also checked against the
//! host's `HostBatch::build` (tests/cuda_step.rs).
//!
//! **These kernels have never run on a GPU**: written and compiled without one. tests/cuda_gather_parity.rs
//! checks them on the host (the kernel source compiled against kernels/host_emu.h) and on a GPU where
//! one exists.

use super::runtime::{elementwise_grid, CudaDevice, DeviceMem, Kernel, KernelArg};
use anyhow::{ensure, Result};
use cudarc::driver::LaunchConfig;

/// Threads per block (GATHER_THREADS in kernels/gather.cu).
pub const GATHER_THREADS: u32 = 256;

/// A 32-bit array (f32 or u32) of a row gather, by address.
#[derive(Clone, Copy)]
pub struct Bits32 {
    addr: u64,
    len: usize,
}

impl Bits32 {
    pub fn of<T>(m: &dyn DeviceMem<T>) -> Self {
        assert_eq!(std::mem::size_of::<T>(), 4, "Bits32 holds 32-bit elements");
        Bits32 { addr: m.device_address(), len: m.elements() }
    }
}

fn addr<T>(m: &Option<&mut dyn DeviceMem<T>>) -> u64 {
    m.as_ref().map_or(0, |m| m.device_address())
}

/// One warp per item, GATHER_THREADS / 32 items per block.
fn per_warp(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (n.div_ceil(GATHER_THREADS as usize / 32).max(1) as u32, 1, 1), block_dim: (GATHER_THREADS, 1, 1), shared_mem_bytes: 0 }
}

fn one_block() -> LaunchConfig {
    LaunchConfig { grid_dim: (1, 1, 1), block_dim: (GATHER_THREADS, 1, 1), shared_mem_bytes: 0 }
}

fn per_block(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (n.max(1) as u32, 1, 1), block_dim: (GATHER_THREADS, 1, 1), shared_mem_bytes: 0 }
}

fn per_thread(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (n.div_ceil(GATHER_THREADS as usize).max(1) as u32, 1, 1), block_dim: (GATHER_THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// Scratch of one CSC: `cols` × ⌈rows / 32⌉ words, as many tile offsets, `cols` counts.
pub struct CscScratch<'a> {
    pub mask: &'a mut dyn DeviceMem<u32>,
    pub tile_off: &'a mut dyn DeviceMem<i32>,
    pub count: &'a mut dyn DeviceMem<i32>,
}

impl CscScratch<'_> {
    /// (mask words and tile offsets, counts) for a rows × cols matrix.
    pub fn sizes(rows: usize, cols: usize) -> (usize, usize) {
        (cols * rows.div_ceil(32).max(1), cols.max(1))
    }
}

/// Outputs of one CSC (each optional but the pointers): the column pointers (i64, and i32), and at each
/// entry's position its row, value and CSR entry id.
pub struct CscOut<'a> {
    pub cptr: &'a mut dyn DeviceMem<i64>,
    pub cptr32: Option<&'a mut dyn DeviceMem<i32>>,
    pub row: Option<&'a mut dyn DeviceMem<u32>>,
    pub val: Option<&'a mut dyn DeviceMem<f32>>,
    pub ord: Option<&'a mut dyn DeviceMem<i32>>,
}

pub struct CudaGather<'d> {
    dev: &'d CudaDevice,
    scan_rows: Kernel,
    scan_counts: Kernel,
    gather_rows: Kernel,
    gather_groups: Kernel,
    csc_mark: Kernel,
    csc_tiles: Kernel,
    csc_place: Kernel,
    count_group_entries: Kernel,
    group_entries: Kernel,
    iota: Kernel,
}

impl<'d> CudaGather<'d> {
    pub fn new(dev: &'d CudaDevice) -> Result<Self> {
        let f = |n: &str| dev.function("gather", n);
        Ok(CudaGather {
            dev,
            scan_rows: f("scan_rows")?,
            scan_counts: f("scan_counts")?,
            gather_rows: f("gather_rows")?,
            gather_groups: f("gather_groups")?,
            csc_mark: f("csc_mark")?,
            csc_tiles: f("csc_tiles")?,
            csc_place: f("csc_place")?,
            count_group_entries: f("count_group_entries")?,
            group_entries: f("group_entries")?,
            iota: f("iota_i32")?,
        })
    }

    /// The minibatch's row pointers (B + 1): the exclusive prefix of the row lengths of `cells` in the
    /// dataset CSR `src_ptr`, as i64 and (when given) i32.
    pub fn scan_rows(
        &self,
        src_ptr: &dyn DeviceMem<i64>,
        cells: &dyn DeviceMem<u32>,
        b: usize,
        out: &mut dyn DeviceMem<i64>,
        out32: Option<&mut dyn DeviceMem<i32>>,
    ) -> Result<()> {
        let _r = crate::nvtx_range!("scan_rows");
        ensure!(cells.elements() >= b && out.elements() > b, "scan_rows: {b} cells need {b} ids and {} pointers", b + 1);
        ensure!(out32.as_ref().is_none_or(|o| o.elements() > b), "scan_rows: the i32 pointers need {} entries", b + 1);
        ensure!(b <= i32::MAX as usize, "scan_rows: B = {b} out of range");
        let args: [&dyn KernelArg; 5] = [&src_ptr.device_address(), &cells.device_address(), &(b as i32), &out.device_address(), &addr(&out32)];
        self.dev.launch(&self.scan_rows, one_block(), &args)
    }

    /// out (n + 1) = the exclusive prefix of `count` (n), as i64 and (when given) i32.
    pub fn scan_counts(&self, count: &dyn DeviceMem<i32>, n: usize, out: &mut dyn DeviceMem<i64>, out32: Option<&mut dyn DeviceMem<i32>>) -> Result<()> {
        let _r = crate::nvtx_range!("scan_counts");
        ensure!(count.elements() >= n && out.elements() > n, "scan_counts: {n} counts need {} pointers", n + 1);
        ensure!(out32.as_ref().is_none_or(|o| o.elements() > n), "scan_counts: the i32 pointers need {} entries", n + 1);
        ensure!(n <= i32::MAX as usize, "scan_counts: n = {n} out of range");
        let args: [&dyn KernelArg; 4] = [&count.device_address(), &(n as i32), &out.device_address(), &addr(&out32)];
        self.dev.launch(&self.scan_counts, one_block(), &args)
    }

    /// Copies the rows of `cells` (dataset CSR `src_ptr`) of up to four 32-bit arrays (src, dst) to the
    /// minibatch rows `dst_ptr` (from [`Self::scan_rows`]); `row_of` gets each entry's row.
    pub fn gather_rows(
        &self,
        src_ptr: &dyn DeviceMem<i64>,
        cells: &dyn DeviceMem<u32>,
        b: usize,
        dst_ptr: &dyn DeviceMem<i64>,
        nnz: usize,
        arrays: &[(Bits32, Bits32)],
        row_of: Option<&mut dyn DeviceMem<i32>>,
    ) -> Result<()> {
        let _r = crate::nvtx_range!("gather_rows");
        ensure!(arrays.len() <= 4, "gather_rows: at most four arrays per launch");
        ensure!(cells.elements() >= b && dst_ptr.elements() > b, "gather_rows: {b} cells");
        for (s, d) in arrays {
            ensure!(d.len >= nnz && s.len > 0 || nnz == 0, "gather_rows: an output of {} elements for {nnz} entries", d.len);
        }
        ensure!(row_of.as_ref().is_none_or(|r| r.elements() >= nnz), "gather_rows: row_of needs {nnz} entries");
        if b == 0 {
            return Ok(());
        }
        let mut s = [0u64; 4];
        let mut d = [0u64; 4];
        for (k, (a, o)) in arrays.iter().enumerate() {
            s[k] = a.addr;
            d[k] = o.addr;
        }
        let args: [&dyn KernelArg; 13] = [
            &src_ptr.device_address(),
            &cells.device_address(),
            &(b as i32),
            &dst_ptr.device_address(),
            &s[0],
            &s[1],
            &s[2],
            &s[3],
            &d[0],
            &d[1],
            &d[2],
            &d[3],
            &addr(&row_of),
        ];
        self.dev.launch(&self.gather_rows, per_block(b), &args)
    }

    /// The minibatch's ATSE groups from the dataset's per-cell ones (see kernels/gather.cu): `g_cell`
    /// (B + 1, from [`Self::scan_rows`] over `grp_src_ptr`), the entries' row pointers in the dataset and
    /// the minibatch. Writes g_grp (n_groups + 1), g_ord (nnz), and when given each group's row and ATSE.
    #[allow(clippy::too_many_arguments)]
    pub fn gather_groups(
        &self,
        grp_src_ptr: &dyn DeviceMem<i64>,
        cells: &dyn DeviceMem<u32>,
        b: usize,
        g_cell: &dyn DeviceMem<i64>,
        s_src_ptr: &dyn DeviceMem<i64>,
        s_dst_ptr: &dyn DeviceMem<i64>,
        grp_start_rel: &dyn DeviceMem<u32>,
        grp_atse: &dyn DeviceMem<u32>,
        ord_rel: &dyn DeviceMem<u32>,
        g_grp: &mut dyn DeviceMem<i64>,
        g_ord: &mut dyn DeviceMem<u32>,
        grp_row: Option<&mut dyn DeviceMem<i32>>,
        grp_atse_out: Option<&mut dyn DeviceMem<u32>>,
    ) -> Result<()> {
        let _r = crate::nvtx_range!("gather_groups");
        ensure!(b > 0 && cells.elements() >= b && g_cell.elements() > b && s_dst_ptr.elements() > b, "gather_groups: {b} cells");
        let args: [&dyn KernelArg; 13] = [
            &grp_src_ptr.device_address(),
            &cells.device_address(),
            &(b as i32),
            &g_cell.device_address(),
            &s_src_ptr.device_address(),
            &s_dst_ptr.device_address(),
            &grp_start_rel.device_address(),
            &grp_atse.device_address(),
            &ord_rel.device_address(),
            &g_grp.device_address(),
            &g_ord.device_address(),
            &addr(&grp_row),
            &addr(&grp_atse_out),
        ];
        self.dev.launch(&self.gather_groups, per_block(b), &args)
    }

    /// The stable CSC of an n-entry `rows` × `cols` matrix given by each entry's row and column (at
    /// most one entry per (row, column)); `val` (optional) is carried along.
    #[allow(clippy::too_many_arguments)]
    pub fn csc(
        &self,
        row_of: &dyn DeviceMem<i32>,
        col: &dyn DeviceMem<u32>,
        val: Option<&dyn DeviceMem<f32>>,
        n: usize,
        rows: usize,
        cols: usize,
        scratch: CscScratch<'_>,
        out: CscOut<'_>,
    ) -> Result<()> {
        let _r = crate::nvtx_range!("csc");
        let nt = rows.div_ceil(32).max(1);
        let (words, _) = CscScratch::sizes(rows, cols);
        ensure!(row_of.elements() >= n && col.elements() >= n && val.is_none_or(|v| v.elements() >= n), "csc: inputs shorter than {n} entries");
        ensure!(scratch.mask.elements() >= words && scratch.tile_off.elements() >= words && scratch.count.elements() >= cols, "csc: scratch too small for {rows} × {cols}");
        ensure!(out.cptr.elements() > cols, "csc: {cols} columns need {} pointers", cols + 1);
        ensure!(out.row.as_ref().is_none_or(|o| o.elements() >= n) && out.ord.as_ref().is_none_or(|o| o.elements() >= n), "csc: outputs shorter than {n}");
        ensure!(out.val.as_ref().is_none_or(|o| o.elements() >= n) && (val.is_some() || out.val.is_none()), "csc: values out without values in");
        ensure!(n <= i32::MAX as usize && cols <= i32::MAX as usize, "csc: {n} entries × {cols} columns out of range");
        self.dev.memset(scratch.mask, 0)?;
        if n > 0 {
            let cfg = LaunchConfig {
                grid_dim: (elementwise_grid(n, GATHER_THREADS, self.dev.info().multiprocessors), 1, 1),
                block_dim: (GATHER_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let args: [&dyn KernelArg; 5] = [&row_of.device_address(), &col.device_address(), &(n as i64), &(nt as i32), &scratch.mask.device_address()];
            self.dev.launch(&self.csc_mark, cfg, &args)?;
        }
        if cols > 0 {
            let args: [&dyn KernelArg; 5] =
                [&scratch.mask.device_address(), &(cols as i32), &(nt as i32), &scratch.tile_off.device_address(), &scratch.count.device_address()];
            self.dev.launch(&self.csc_tiles, per_thread(cols), &args)?;
        }
        let CscOut { cptr, cptr32, row, val: oval, ord } = out;
        self.scan_counts(&*scratch.count, cols, &mut *cptr, cptr32)?;
        if n > 0 {
            let cfg = LaunchConfig {
                grid_dim: (elementwise_grid(n, GATHER_THREADS, self.dev.info().multiprocessors), 1, 1),
                block_dim: (GATHER_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let args: [&dyn KernelArg; 11] = [
                &row_of.device_address(),
                &col.device_address(),
                &val.map_or(0, |v| v.device_address()),
                &(n as i64),
                &(nt as i32),
                &scratch.mask.device_address(),
                &scratch.tile_off.device_address(),
                &cptr.device_address(),
                &addr(&row),
                &addr(&oval),
                &addr(&ord),
            ];
            self.dev.launch(&self.csc_place, cfg, &args)?;
        }
        Ok(())
    }

    /// The entries grouped by ATSE: `ptr` (n_atse + 1, i32) and `ids`, from the groups' CSC by ATSE
    /// (`gcptr`, `gorder`) and the groups (`g_grp`, `g_ord`). `count` is n_atse of scratch; `ptr64`
    /// n_atse + 1.
    #[allow(clippy::too_many_arguments)]
    pub fn group_entries(
        &self,
        gcptr: &dyn DeviceMem<i64>,
        gorder: &dyn DeviceMem<i32>,
        g_grp: &dyn DeviceMem<i64>,
        g_ord: &dyn DeviceMem<u32>,
        n_atse: usize,
        count: &mut dyn DeviceMem<i32>,
        ptr64: &mut dyn DeviceMem<i64>,
        ptr: &mut dyn DeviceMem<i32>,
        ids: &mut dyn DeviceMem<i32>,
    ) -> Result<()> {
        let _r = crate::nvtx_range!("group_entries");
        ensure!(gcptr.elements() > n_atse && count.elements() >= n_atse && ptr.elements() > n_atse && ptr64.elements() > n_atse, "group_entries: {n_atse} ATSEs");
        ensure!(ids.elements() >= g_ord.elements(), "group_entries: ids shorter than the entries");
        if n_atse > 0 {
            let args: [&dyn KernelArg; 5] = [&gcptr.device_address(), &gorder.device_address(), &g_grp.device_address(), &(n_atse as i32), &count.device_address()];
            self.dev.launch(&self.count_group_entries, per_warp(n_atse), &args)?;
        }
        self.scan_counts(&*count, n_atse, ptr64, Some(&mut *ptr))?;
        if n_atse > 0 {
            let args: [&dyn KernelArg; 7] = [
                &gcptr.device_address(),
                &gorder.device_address(),
                &g_grp.device_address(),
                &g_ord.device_address(),
                &ptr.device_address(),
                &(n_atse as i32),
                &ids.device_address(),
            ];
            self.dev.launch(&self.group_entries, per_warp(n_atse), &args)?;
        }
        Ok(())
    }

    /// out[e] = e for e < n.
    pub fn iota(&self, n: usize, out: &mut dyn DeviceMem<i32>) -> Result<()> {
        ensure!(out.elements() >= n && n <= i32::MAX as usize, "iota: {n} out of range");
        if n == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig { grid_dim: (elementwise_grid(n, GATHER_THREADS, self.dev.info().multiprocessors), 1, 1), block_dim: (GATHER_THREADS, 1, 1), shared_mem_bytes: 0 };
        let args: [&dyn KernelArg; 2] = [&(n as i64), &out.device_address()];
        self.dev.launch(&self.iota, cfg, &args)
    }
}

/// The CPU twins, on host slices.
pub mod twin {
    /// The minibatch row pointers of `cells` in the CSR `src_ptr`.
    pub fn scan_rows(src_ptr: &[i64], cells: &[u32]) -> Vec<i64> {
        let mut out = vec![0i64];
        for &c in cells {
            out.push(out.last().unwrap() + src_ptr[c as usize + 1] - src_ptr[c as usize]);
        }
        out
    }

    /// The exclusive prefix of `count` (n + 1).
    pub fn scan_counts(count: &[i32]) -> Vec<i64> {
        let mut out = vec![0i64];
        for &c in count {
            out.push(out.last().unwrap() + c as i64);
        }
        out
    }

    /// The rows of `cells` of `array` (CSR `src_ptr`), and each entry's row.
    pub fn gather_rows(src_ptr: &[i64], cells: &[u32], array: &[u32]) -> (Vec<u32>, Vec<i32>) {
        let (mut out, mut row_of) = (Vec::new(), Vec::new());
        for (i, &c) in cells.iter().enumerate() {
            let r = src_ptr[c as usize] as usize..src_ptr[c as usize + 1] as usize;
            row_of.extend(std::iter::repeat_n(i as i32, r.len()));
            out.extend_from_slice(&array[r]);
        }
        (out, row_of)
    }

    /// (g_grp, g_ord, group rows, group ATSEs) of the minibatch `cells` (see kernels/gather.cu).
    pub fn gather_groups(
        grp_src_ptr: &[i64],
        cells: &[u32],
        s_src_ptr: &[i64],
        grp_start_rel: &[u32],
        grp_atse: &[u32],
        ord_rel: &[u32],
    ) -> (Vec<i64>, Vec<u32>, Vec<i32>, Vec<u32>) {
        let (mut g_grp, mut g_ord, mut rows, mut atse) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut base = 0i64;
        for (i, &c) in cells.iter().enumerate() {
            let c = c as usize;
            for g in grp_src_ptr[c] as usize..grp_src_ptr[c + 1] as usize {
                g_grp.push(base + grp_start_rel[g] as i64);
                rows.push(i as i32);
                atse.push(grp_atse[g]);
            }
            for e in s_src_ptr[c] as usize..s_src_ptr[c + 1] as usize {
                g_ord.push((base + ord_rel[e] as i64) as u32);
            }
            base += s_src_ptr[c + 1] - s_src_ptr[c];
        }
        g_grp.push(base);
        (g_grp, g_ord, rows, atse)
    }

    /// The stable CSC (a counting sort by column, rows in entry order): (cptr, row, value, entry id).
    pub fn csc(row_of: &[i32], col: &[u32], val: &[f32], cols: usize) -> (Vec<i64>, Vec<u32>, Vec<f32>, Vec<i32>) {
        let n = row_of.len();
        let mut ptr = vec![0i64; cols + 1];
        for &c in col {
            ptr[c as usize + 1] += 1;
        }
        for c in 0..cols {
            ptr[c + 1] += ptr[c];
        }
        let mut fill: Vec<i64> = ptr[..cols].to_vec();
        let (mut row, mut v, mut ord) = (vec![0u32; n], vec![0f32; if val.is_empty() { 0 } else { n }], vec![0i32; n]);
        // Entries in row order (a CSR's order); the twin sorts them first so that any input order works.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&e| (row_of[e], e));
        for e in order {
            let c = col[e] as usize;
            let p = fill[c] as usize;
            row[p] = row_of[e] as u32;
            if !val.is_empty() {
                v[p] = val[e];
            }
            ord[p] = e as i32;
            fill[c] += 1;
        }
        (ptr, row, v, ord)
    }

    /// (ptr, ids): the entries grouped by the ATSE of their group, each ATSE's groups in row order.
    pub fn group_entries(g_grp: &[i64], g_ord: &[u32], grp_row: &[i32], grp_atse: &[u32], n_atse: usize) -> (Vec<i32>, Vec<i32>) {
        let mut groups: Vec<usize> = (0..grp_row.len()).collect();
        groups.sort_by_key(|&g| (grp_atse[g], grp_row[g], g));
        let mut ptr = vec![0i32; n_atse + 1];
        let mut ids = Vec::new();
        for &g in &groups {
            ptr[grp_atse[g] as usize + 1] += (g_grp[g + 1] - g_grp[g]) as i32;
            ids.extend(g_ord[g_grp[g] as usize..g_grp[g + 1] as usize].iter().map(|&e| e as i32));
        }
        for a in 0..n_atse {
            ptr[a + 1] += ptr[a];
        }
        (ptr, ids)
    }
}
