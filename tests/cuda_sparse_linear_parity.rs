//! The sparse first-layer kernels (kernels/sparse_linear.cu) against their CPU twin
//! `ops::linear_sparse_fwd` / `ops::linear_sparse_bwd` (whose gradient tests/gradcheck.rs checks against
//! f64 finite differences through the encoders).
//!
//! * `host_emu_sparse_linear_matches_twin`: the kernel source compiled by the host C++20 compiler
//!   against kernels/host_emu.h and run on the CPU, on fresh random inputs with y and Wᵀ poisoned (NaN)
//!   first and dW starting from random values (the kernel adds into it), against the f32 twin.
//! * `gpu_sparse_linear_matches_twin`: the same on a GPU; prints SKIPPED without one. (No GPU has run
//!   it yet.)
//!
//! Cases: 128 outputs (four per lane), 40 (a partial second lane round), 5 (most lanes idle); a cell
//! with no entries and columns with none; counts up to 1e4 next to fractional values.
//! Tolerance (f32 vs f32, different summation orders): |kernel − twin| ≤ 2e-4·|twin| + 2e-5·max(max|twin
//! tensor|, 1).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use splicevi::cuda::{CudaDevice, CudaSparseLinear};
use splicevi::model::arch::LinearP;
use splicevi::model::ops::{linear_sparse_bwd, linear_sparse_fwd, Sparse};
use splicevi::model::{Dims, Grads, Mat, ModelConfig, Params, SpliceVae};

#[path = "common/emu.rs"]
mod emu;
use emu::{close, skipped};

struct Case {
    name: String,
    lin: LinearP,
    p: Params<f32>,
    x: Sparse<f32>,
    dy: Vec<f32>,
    gw0: Vec<f32>,
}

fn case(seed: u64, rows: usize, n_genes: usize, n_hidden: usize) -> Case {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let dims = Dims { n_genes, n_junctions: 6, n_atse: 3, n_batch: 1, n_labels: 2, n_obs: 50, n_cats_per_cov: vec![], n_cont: 0 };
    let cfg = ModelConfig { n_hidden: Some(n_hidden), ..ModelConfig::default() };
    let model = SpliceVae::new(cfg, dims, vec![0, 0, 1, 1, 2, 2]).unwrap();
    let lin = model.arch.z_enc_expr.fc.blocks[0].lin.clone();
    assert_eq!((lin.n_in, lin.n_out), (n_genes, n_hidden));
    let p: Params<f32> = model.init_params(seed);
    let mut x = Sparse { rows, cols: n_genes, indptr: vec![0], indices: vec![], values: vec![] };
    for c in 0..rows {
        if c != 2 {
            for g in 0..n_genes.saturating_sub(4) {
                if r.gen_bool(0.25) {
                    x.indices.push(g as u32);
                    x.values.push(if r.gen_bool(0.1) { r.gen_range(100.0..1e4f32).round() } else { r.gen_range(0.0..3.0f32) });
                }
            }
        }
        x.indptr.push(x.indices.len());
    }
    let dy: Vec<f32> = (0..rows * n_hidden).map(|_| r.gen_range(-1.0..1.0f32)).collect();
    let gw0: Vec<f32> = (0..n_hidden * n_genes).map(|_| r.gen_range(-1.0..1.0f32)).collect();
    Case { name: format!("rows {rows} n_in {n_genes} n_out {n_hidden}"), lin, p, x, dy, gw0 }
}

fn cases() -> Vec<Case> {
    vec![case(1, 9, 37, 128), case(2, 13, 20, 40), case(3, 6, 11, 5)]
}

/// The twin's backward walks blocks of input columns over rows in sorted order; rows out of order take
/// the column-major walk instead. Both sum each column's entries in row order, so they give the same
/// bits: checked with each row's entries reversed, on cases with several column blocks (n_in > 128).
#[test]
fn twin_backward_block_walk_equals_column_walk() {
    for c in cases().into_iter().chain([case(4, 21, 300, 40), case(5, 7, 517, 3)]) {
        let mut rev = c.x.clone();
        for r in 0..rev.rows {
            let span = rev.indptr[r]..rev.indptr[r + 1];
            rev.indices[span.clone()].reverse();
            rev.values[span].reverse();
        }
        assert!(splicevi::model::ops::rows_sorted(&c.x.indptr, &c.x.indices));
        let multi = c.x.indptr.windows(2).any(|w| w[1] - w[0] > 1);
        assert_eq!(splicevi::model::ops::rows_sorted(&rev.indptr, &rev.indices), !multi, "{}", c.name);
        let dy = Mat::from_vec(c.x.rows, c.lin.n_out, c.dy.clone());
        let grads = |x: &Sparse<f32>| {
            let mut g = Grads::zeros(c.p.layout.clone());
            g.slot(c.lin.w).unwrap().copy_from_slice(&c.gw0);
            linear_sparse_bwd(&c.lin, x, &dy, &mut g);
            g.data
        };
        let (a, b) = (grads(&c.x), grads(&rev));
        assert!(a.iter().zip(&c.gw0).any(|(x, y)| x != y), "{}: the backward changed nothing", c.name);
        let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{}: block walk and column walk differ", c.name);
    }
}

/// The twin's y and gw0 + dW.
fn twin(c: &Case) -> (Vec<f32>, Vec<f32>) {
    let mut p = c.p.clone();
    if let Some(b) = c.lin.b {
        p.get_mut(b).iter_mut().for_each(|v| *v = 0.0); // the kernel's y₀ has no bias (the epilogue adds it)
    }
    let y = linear_sparse_fwd(&c.lin, &p, &c.x);
    let mut g = Grads::zeros(p.layout.clone());
    g.slot(c.lin.w).unwrap().copy_from_slice(&c.gw0);
    linear_sparse_bwd(&c.lin, &c.x, &Mat::from_vec(c.x.rows, c.lin.n_out, c.dy.clone()), &mut g);
    (y.data, g.get(c.lin.w).unwrap().to_vec())
}

fn compare(c: &Case, y: &[f32], gw: &[f32]) {
    let (wy, wg) = twin(c);
    close("y", &c.name, y, &wy, 1.0);
    close("dW", &c.name, gw, &wg, 1.0);
}

const SPARSE_LINEAR_CU: &str = include_str!("../kernels/sparse_linear.cu");

const HARNESS: &str = r#"
int main(int argc, char** argv) {
    if (argc != 2) return 2;
    const std::string d = argv[1];
    FILE* f = std::fopen((d + "/params.txt").c_str(), "r");
    if (!f) return 3;
    int rows, n_in, n_out;
    if (std::fscanf(f, "%d %d %d", &rows, &n_in, &n_out) != 3) return 4;
    std::fclose(f);
    auto indptr = rd<long long>(d, "indptr"); auto indices = rd<unsigned>(d, "indices"); auto values = rd<float>(d, "values");
    auto cptr = rd<long long>(d, "cptr"); auto crow = rd<unsigned>(d, "crow"); auto cval = rd<float>(d, "cval");
    auto w = rd<float>(d, "w"); auto dy = rd<float>(d, "dy"); auto gw = rd<float>(d, "gw0");
    std::vector<float> wt(w.size(), NAN), y((size_t)rows * n_out, NAN);
    emu::launch(3, SPL_THREADS, 0, [&] { sparse_linear_transpose(w.data(), n_out, n_in, wt.data()); });
    const int n_chunks = rows + (int)indices.size() / SPL_CHUNK + 1;
    std::vector<float> part((size_t)n_chunks * n_out, NAN);
    emu::launch((n_chunks + SPL_WARPS - 1) / SPL_WARPS, SPL_THREADS, 0, [&] {
        sparse_linear_fwd(indptr.data(), ptr(indices), ptr(values), rows, n_chunks, wt.data(), n_out, part.data());
    });
    emu::launch((rows * n_out + SPL_THREADS - 1) / SPL_THREADS + 1, SPL_THREADS, 0, [&] {
        sparse_linear_combine(part.data(), indptr.data(), rows, n_out, y.data());
    });
    emu::launch((n_in + SPL_WARPS - 1) / SPL_WARPS, SPL_THREADS, 0, [&] {
        sparse_linear_bwd_w(cptr.data(), ptr(crow), ptr(cval), n_in, dy.data(), n_out, gw.data());
    });
    wr(d, "y", y); wr(d, "gw", gw);
    return 0;
}
"#;

fn write_bytes<T: Copy>(dir: &std::path::Path, name: &str, v: &[T], to: impl Fn(T) -> Vec<u8>) {
    std::fs::write(dir.join(format!("{name}.bin")), v.iter().flat_map(|&x| to(x)).collect::<Vec<u8>>()).unwrap();
}

#[test]
fn host_emu_sparse_linear_matches_twin() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Chunks of 3 entries here (256 in the build), so that rows span several.
    let src = format!("#define SPL_CHUNK 3\n{SPARSE_LINEAR_CU}");
    let exe = match emu::build(d, "sparse_linear.cu", &src, HARNESS) {
        Ok(e) => e,
        Err(reason) => {
            skipped(&format!("host build (emulation) of kernels/sparse_linear.cu: {reason}"));
            return;
        }
    };
    for c in cases() {
        std::fs::write(d.join("params.txt"), format!("{} {} {}", c.x.rows, c.lin.n_in, c.lin.n_out)).unwrap();
        let (cptr, crow, cval) = c.x.to_csc();
        let i64s = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<i64>>();
        write_bytes(d, "indptr", &i64s(&c.x.indptr), |x: i64| x.to_le_bytes().to_vec());
        write_bytes(d, "cptr", &i64s(&cptr), |x: i64| x.to_le_bytes().to_vec());
        write_bytes(d, "indices", &c.x.indices, |x: u32| x.to_le_bytes().to_vec());
        write_bytes(d, "crow", &crow, |x: u32| x.to_le_bytes().to_vec());
        emu::write_f32(d, "values", &c.x.values);
        emu::write_f32(d, "cval", &cval);
        emu::write_f32(d, "w", c.p.get(c.lin.w));
        emu::write_f32(d, "dy", &c.dy);
        emu::write_f32(d, "gw0", &c.gw0);
        emu::run(&exe, d);
        compare(&c, &emu::read_f32(d, "y"), &emu::read_f32(d, "gw"));
    }
}

#[test]
fn device_sparse_linear_matches_twin() {
    for dev in emu::devices("sparse first-layer kernels vs ops::linear_sparse_*") {
        device_sparse_linear_matches_twin_on(&dev);
    }
}

fn device_sparse_linear_matches_twin_on(dev: &CudaDevice) {
    let kern = CudaSparseLinear::new(&dev).unwrap();
    for c in cases() {
        let (y, gw) = kern.run_host(&c.x, c.p.get(c.lin.w), c.lin.n_out, &c.dy, &c.gw0).unwrap();
        compare(&c, &y, &gw);
    }
}
