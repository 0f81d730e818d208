//! Load time and peak memory for the medium simulated dataset (20,000 cells × 5,000 genes × 20,000
//! junctions, ~80% of cell × junction entries unobserved).
//!
//! `cargo bench --bench load_medium`. The file is `$SPLICEVI_BENCH_MEDIUM` if set, else
//! `target/bench-data/medium_seed0.h5mu`, simulated (streamed) on first use. Peak memory is the process's
//! VmHWM from /proc/self/status, reset (`/proc/self/clear_refs` ← 5) just before the first load so the
//! simulation does not count.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use splicevi::data::h5write::Compression;
use splicevi::data::load::load;
use splicevi::data::simulate::{simulate_to_file, SimConfig, SimSize};
use splicevi::data::DataOptions;

fn status_kb(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn medium_file() -> PathBuf {
    if let Ok(p) = std::env::var("SPLICEVI_BENCH_MEDIUM") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data/medium_seed0.h5mu");
    if !p.exists() {
        let t = Instant::now();
        let cfg = SimConfig::preset(SimSize::Medium, 0);
        simulate_to_file(&cfg, &p, Compression::default(), |_, _| {}).expect("simulating the medium dataset");
        eprintln!("simulated {} in {:.1} s", p.display(), t.elapsed().as_secs_f64());
    }
    p
}

fn bench(c: &mut Criterion) {
    let path = medium_file();
    let opts = DataOptions::default();
    let size_mb = std::fs::metadata(&path).map(|m| m.len() as f64 / 1e6).unwrap_or(f64::NAN);
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = status_kb("VmRSS:").unwrap_or(0);
    let t = Instant::now();
    let ds = load(&path, &opts).expect("loading the medium dataset");
    let secs = t.elapsed().as_secs_f64();
    let hwm = status_kb("VmHWM:").unwrap_or(0);
    let s = &ds.splicing;
    let expr_nnz = ds.expression.as_ref().map_or(0, |x| x.nnz());
    // What the Dataset itself holds: CSR expression (u32 index + f32 value) and splicing entries
    // (u32 junction + f32 k, n, psi), plus the index arrays.
    let held = (expr_nnz * 8 + s.nnz() * 16 + (ds.n_cells() + 1) * 16) as f64 / 1e6;
    eprintln!(
        "load_medium: {} ({size_mb:.0} MB on disk): {} cells × {} genes × {} junctions, expression nnz {expr_nnz}, \
         splicing entries {} ({:.1}% unobserved)\n  first load {secs:.2} s; peak RSS (VmHWM) {:.0} MB{}; RSS before load \
         {:.0} MB; dataset arrays {held:.0} MB",
        path.display(),
        ds.n_cells(),
        ds.n_genes(),
        ds.n_junctions(),
        s.nnz(),
        100.0 * (1.0 - s.nnz() as f64 / (ds.n_cells() * ds.n_junctions()) as f64),
        hwm as f64 / 1024.0,
        if reset { "" } else { " (could not reset VmHWM: includes earlier work)" },
        before as f64 / 1024.0,
    );
    drop(ds);

    let mut g = c.benchmark_group("load");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(60));
    g.bench_function("medium_h5mu", |b| b.iter(|| load(&path, &opts).expect("load")));
    g.finish();
    eprintln!(
        "load_medium: peak RSS over all loads (VmHWM) {:.0} MB",
        status_kb("VmHWM:").unwrap_or(0) as f64 / 1024.0
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
