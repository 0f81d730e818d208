//! Simulator, .h5mu writer, train/validation split and minibatch sampler.
//!
//! Python checks (mudata.read_h5mu opens the file; numpy's permutation equals ours) use `$SPLICEVI_PYTHON`
//! (default `.pyvenv/bin/python` when it exists, else `python3`); they FAIL when the packages are missing
//! unless `SPLICEVI_SKIP_PYTHON=1`.

use std::path::{Path, PathBuf};
use std::process::Command;

use splicevi::data::h5write::Compression;
use splicevi::data::load::load;
use splicevi::data::simulate::{simulate, simulate_first, simulate_to_file, write_simulated, SimConfig, SimSize, SUBTYPES_PER_TYPE};
use splicevi::data::split::{
    numpy_permutation, sequential_batches, split_sizes, train_validation_split, Minibatches, SplitConfig,
};
use splicevi::data::{DataOptions, Dataset};

/// Tests in this binary run in parallel threads, and a spawned python child inherits every open file
/// descriptor (HDF5 does not set close-on-exec) together with HDF5's flock on it: a file this process is
/// writing while a sibling test spawns python stays locked until the child exits, and reopening it fails
/// with EAGAIN. Tests that open HDF5 files or spawn python therefore take this lock.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn toy(seed: u64) -> SimConfig {
    SimConfig::preset(SimSize::Toy, seed)
}

/// Every data field the file carries, compared one by one so a failure names the field.
fn assert_same_data(a: &Dataset, b: &Dataset, what: &str) {
    assert_eq!(a.cell_names, b.cell_names, "{what}: cell names");
    assert_eq!(a.gene_names, b.gene_names, "{what}: gene names");
    assert_eq!(a.expression, b.expression, "{what}: expression CSR");
    assert_eq!(a.library_size, b.library_size, "{what}: library sizes");
    let (s, t) = (&a.splicing, &b.splicing);
    assert_eq!((s.n_cells, s.n_junctions), (t.n_cells, t.n_junctions), "{what}: splicing shape");
    assert_eq!(s.indptr, t.indptr, "{what}: splicing indptr");
    assert_eq!(s.junction, t.junction, "{what}: splicing junctions");
    assert_eq!(s.k, t.k, "{what}: k");
    assert_eq!(s.n, t.n, "{what}: n");
    assert_eq!(s.psi, t.psi, "{what}: psi");
    assert_eq!(s.has_counts, t.has_counts, "{what}: has_counts");
    assert_eq!(s.junc2atse, t.junc2atse, "{what}: junc2atse");
    assert_eq!(s.atse_ids, t.atse_ids, "{what}: atse ids");
    assert_eq!(s.junction_names, t.junction_names, "{what}: junction names");
    assert_eq!(s.gene_names, t.gene_names, "{what}: junction gene names");
    for (name, col) in &a.obs {
        assert_eq!(b.obs_column(name, "test").ok().map(|c| c.1), Some(col), "{what}: obs column {name}");
    }
}

#[test]
fn round_trip_in_memory_and_streamed_files_load_identically() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let cfg = toy(3);
    let (ds, truth) = simulate(&cfg).unwrap();
    assert_eq!(ds.n_cells(), 200);
    assert_eq!(ds.n_genes(), 100);
    assert_eq!(ds.n_junctions(), 300);

    let a = dir.path().join("in_memory.h5mu");
    write_simulated(&a, &cfg, &ds, Compression::default()).unwrap();
    let b = dir.path().join("streamed.h5mu");
    let (truth_b, summary) = simulate_to_file(&cfg, &b, Compression { gzip_level: None }, |_, _| {}).unwrap();
    assert_eq!(truth, truth_b, "streamed ground truth differs from the in-memory one");
    assert_eq!(summary.splicing_observed as usize, ds.splicing.nnz());

    let opts = DataOptions::default();
    let la = load(&a, &opts).unwrap();
    assert_same_data(&ds, &la, "in-memory write → load");
    let lb = load(&b, &opts).unwrap();
    assert_same_data(&ds, &lb, "streamed write → load");
    // With the batch key the loader resolves the same batches the simulator drew.
    let with_batch = DataOptions { batch_key: Some("batch".into()), ..DataOptions::default() };
    let lc = load(&b, &with_batch).unwrap();
    assert_eq!(lc.covariates.batch.codes, truth.batch);
    assert_eq!(lc.covariates.batch.levels, truth.batch_names);
    // Nothing but the final file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "leftover files: {names:?}");
}

/// `simulate_first` (what `bench` uses at the paper size) gives exactly the full simulation's first
/// cells, across a block boundary and within a block.
#[test]
fn the_first_cells_alone_equal_the_full_simulations_first_cells() {
    let cfg = SimConfig { n_cells: 700, ..toy(5) };
    let (full, full_truth) = simulate(&cfg).unwrap();
    for n in [300, 128, 1] {
        let (ds, truth) = simulate_first(&cfg, n).unwrap();
        let what = format!("first {n}");
        assert_eq!(ds.n_cells(), n, "{what}");
        assert_eq!(ds.cell_names[..], full.cell_names[..n], "{what}: cell names");
        assert_eq!(ds.gene_names, full.gene_names, "{what}: gene names");
        let (e, fe) = (ds.expression.as_ref().unwrap(), full.expression.as_ref().unwrap());
        let end = fe.indptr[n];
        assert_eq!(e.indptr[..], fe.indptr[..=n], "{what}: expression indptr");
        assert_eq!(e.indices[..], fe.indices[..end], "{what}: expression indices");
        assert_eq!(e.values[..], fe.values[..end], "{what}: expression values");
        assert_eq!(ds.library_size[..], full.library_size[..n], "{what}: library sizes");
        let (s, fs) = (&ds.splicing, &full.splicing);
        let end = fs.indptr[n];
        assert_eq!(s.n_cells, n, "{what}: splicing cells");
        assert_eq!(s.indptr[..], fs.indptr[..=n], "{what}: splicing indptr");
        assert_eq!(s.junction[..], fs.junction[..end], "{what}: junctions");
        assert_eq!(s.k[..], fs.k[..end], "{what}: k");
        assert_eq!(s.n[..], fs.n[..end], "{what}: n");
        assert_eq!(s.psi[..], fs.psi[..end], "{what}: psi");
        assert_eq!((&s.junc2atse, &s.atse_ids, &s.junction_names), (&fs.junc2atse, &fs.atse_ids, &fs.junction_names));
        assert_eq!(ds.covariates.batch.codes[..], full.covariates.batch.codes[..n], "{what}: batches");
        assert_eq!(truth.subtype[..], full_truth.subtype[..n], "{what}: subtypes");
        assert_eq!(truth.true_psi, full_truth.true_psi, "{what}: global truth");
        assert_eq!(truth.depth_scale, full_truth.depth_scale, "{what}: calibrated depth");
        for (name, col) in &ds.obs {
            let fcol = full.obs_column(name, "test").unwrap_or_else(|e| panic!("{what}: obs {name}: {e}")).1;
            assert_eq!(col.len(), n, "{what}: obs {name} length");
            assert_eq!(col.as_strings()[..], fcol.as_strings()[..n], "{what}: obs {name}");
        }
    }
    assert!(simulate_first(&cfg, 0).is_err());
    let (all, _) = simulate_first(&cfg, 5_000).unwrap();
    assert_eq!(all, full, "more cells than the size has: the whole dataset");
}

/// The same data written twice, more than a second apart, gives the same bytes: HDF5 stamps every
/// group with its creation and modification time unless told not to, and the writers tell it not to
/// (the .h5mu, and the .h5ad that `embed`, `impute` and `normalize-expression` write).
#[test]
fn the_same_data_written_twice_gives_the_same_bytes() {
    use splicevi::data::dataset::ObsColumn;
    use splicevi::data::h5ad_out::{write_h5ad, DenseOut, H5adOut};
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let cfg = toy(4);
    let write_both = |tag: &str| {
        let h5mu = dir.path().join(format!("{tag}.h5mu"));
        simulate_to_file(&cfg, &h5mu, Compression::default(), |_, _| {}).unwrap();
        let h5ad = dir.path().join(format!("{tag}.h5ad"));
        let latent = [0.5f32, -1.0, 2.0, 0.25];
        let out = H5adOut {
            obs_names: vec!["c0".into(), "c1".into()],
            obs: vec![("cell_type".into(), ObsColumn::Categorical { codes: vec![0, 1], categories: vec!["A".into(), "B".into()], int_categories: None, store: splicevi::data::CatStore::Unordered })],
            var_names: vec!["g0".into(), "g1".into()],
            var: vec![],
            x: Some(&latent),
            obsm: vec![DenseOut { name: "X_splicevi".into(), data: &latent, rows: 2, cols: 2 }],
            uns: vec![],
        };
        write_h5ad(&h5ad, &out).unwrap();
        (std::fs::read(h5mu).unwrap(), std::fs::read(h5ad).unwrap())
    };
    let first = write_both("first");
    // HDF5's object times have a resolution of one second.
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let second = write_both("second");
    let differing = |a: &[u8], b: &[u8]| a.iter().zip(b).filter(|(x, y)| x != y).count() + a.len().abs_diff(b.len());
    assert_eq!(differing(&first.0, &second.0), 0, ".h5mu: the second write differs");
    assert_eq!(differing(&first.1, &second.1), 0, ".h5ad: the second write differs");
}

#[test]
fn output_depends_on_seed_not_on_threads() {
    let cfg = SimConfig { n_cells: 700, ..toy(11) }; // several blocks
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let four = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
    let (d1, t1) = one.install(|| simulate(&cfg)).unwrap();
    let (d4, t4) = four.install(|| simulate(&cfg)).unwrap();
    assert_eq!(d1, d4);
    assert_eq!(t1, t4);
    let (d2, _) = simulate(&SimConfig { seed: 12, ..cfg.clone() }).unwrap();
    assert_ne!(d1.expression, d2.expression);
    assert_ne!(d1.splicing.k, d2.splicing.k);
}

#[test]
fn generative_invariants_hold() {
    let cfg = SimConfig { n_cells: 600, n_genes: 200, n_junctions: 1500, ..toy(5) };
    let (ds, truth) = simulate(&cfg).unwrap();
    let s = &ds.splicing;
    let (nj, na, ns) = (s.n_junctions, s.n_atse(), truth.n_subtypes());

    // ATSE sizes 1..=7, junctions contiguous per ATSE, single-junction ATSEs present but a minority.
    let mut size = vec![0usize; na];
    for (j, &a) in s.junc2atse.iter().enumerate() {
        size[a as usize] += 1;
        if j > 0 {
            assert!(a >= s.junc2atse[j - 1], "ATSE order is not junction order at junction {j}");
        }
    }
    assert!(size.iter().all(|&m| (1..=7).contains(&m)), "ATSE sizes {:?}", size.iter().max());
    let singles = size.iter().filter(|&&m| m == 1).count() as f64 / na as f64;
    assert!(singles > 0.0 && singles < 0.2, "fraction of single-junction ATSEs {singles}");

    // Sparsity: 70–95% of cell × junction entries unobserved.
    let unobserved = 1.0 - s.nnz() as f64 / (ds.n_cells() * nj) as f64;
    assert!((0.70..=0.95).contains(&unobserved), "fraction unobserved {unobserved}");

    // Per cell: every junction of an observed ATSE is stored, n is shared, Σ k = n, psi = k / n.
    for c in 0..ds.n_cells() {
        let r = s.cell_range(c);
        let mut e = r.start;
        while e < r.end {
            let a = s.junc2atse[s.junction[e] as usize] as usize;
            let m = size[a];
            let ksum: f32 = s.k[e..e + m].iter().sum();
            assert!(s.n[e] > 0.0);
            assert_eq!(ksum, s.n[e], "cell {c}, ATSE {a}: Σk != n");
            for i in e..e + m {
                assert_eq!(s.junc2atse[s.junction[i] as usize] as usize, a, "cell {c}: ATSE {a} partly observed");
                assert_eq!(s.n[i], s.n[e]);
                assert_eq!(s.psi[i], s.k[i] / s.n[i]);
            }
            e += m;
        }
    }

    // Expression: integer counts, library size = row sums.
    let x = ds.expression.as_ref().unwrap();
    for c in 0..ds.n_cells() {
        let (_, v) = x.row(c);
        assert!(v.iter().all(|&y| y > 0.0 && y.fract() == 0.0));
        assert_eq!(ds.library_size[c], v.iter().sum::<f32>());
    }

    // Ground truth: PSI sums to 1 within ATSEs; subtypes of a type differ exactly at the planted junctions,
    // by 0.3–0.6; about 25% of multi-junction ATSEs are planted per type.
    let multi = size.iter().filter(|&&m| m > 1).count() as f64;
    for sub in 0..ns {
        let mut acc = vec![0f64; na];
        for j in 0..nj {
            acc[s.junc2atse[j] as usize] += truth.true_psi[j * ns + sub] as f64;
        }
        assert!(acc.iter().all(|&x| (x - 1.0).abs() < 1e-5), "true psi of subtype {sub} does not sum to 1");
    }
    for (t, planted) in truth.planted_ds_by_type.iter().enumerate() {
        let (a, b) = (SUBTYPES_PER_TYPE * t, SUBTYPES_PER_TYPE * t + 1);
        let mut atses = std::collections::BTreeSet::new();
        for j in 0..nj {
            let d = (truth.true_psi[j * ns + a] - truth.true_psi[j * ns + b]).abs();
            if planted[j] {
                assert!((0.3 - 1e-5..=0.6 + 1e-5).contains(&d), "type {t} junction {j}: planted shift {d}");
                atses.insert(s.junc2atse[j]);
            } else {
                assert!(d < 1e-6, "type {t} junction {j}: unplanted junction differs by {d}");
            }
        }
        let frac = atses.len() as f64 / multi;
        assert!((0.15..=0.35).contains(&frac), "type {t}: {frac} of ATSEs planted");
    }
    // obs: all subtypes, cell types and batches present.
    for (k, want) in [("subtype", ns), ("cell_type", cfg.n_cell_types), ("batch", cfg.n_batches)] {
        let col = ds.obs_column(k, "test").unwrap().1.as_strings();
        let distinct: std::collections::BTreeSet<_> = col.iter().collect();
        assert_eq!(distinct.len(), want, "obs {k}");
    }
}

#[test]
fn presets_have_the_requested_sizes() {
    assert_eq!(SimSize::Toy.dims(), (200, 100, 300));
    assert_eq!(SimSize::Small.dims(), (2_000, 2_000, 5_000));
    assert_eq!(SimSize::Medium.dims(), (20_000, 5_000, 20_000));
    assert_eq!(SimSize::Paper.dims(), (100_000, 10_000, 90_000));
    assert!(SimConfig { target_unobserved: 1.0, ..toy(0) }.validate().is_err());
}

#[test]
fn cli_writes_a_loadable_file() {
    let _serial = serial();
    use clap::Parser;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cli.h5mu");
    let cli = splicevi::cmd::Cli::try_parse_from([
        "splicevi",
        "simulate",
        "--size",
        "toy",
        "--seed",
        "3",
        "--out",
        out.to_str().unwrap(),
    ])
    .unwrap();
    splicevi::cmd::run(cli).unwrap();
    let (ds, _) = simulate(&toy(3)).unwrap();
    assert_same_data(&ds, &load(&out, &DataOptions::default()).unwrap(), "CLI file");
}

// ------------------------------------------------------------------------------------------------
// Python: mudata opens the file; numpy's permutation

fn python() -> Option<PathBuf> {
    if std::env::var("SPLICEVI_SKIP_PYTHON").as_deref() == Ok("1") {
        eprintln!("SPLICEVI_SKIP_PYTHON=1: skipping the Python check");
        return None;
    }
    if let Ok(p) = std::env::var("SPLICEVI_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".pyvenv/bin/python");
    Some(if venv.exists() { venv } else { PathBuf::from("python3") })
}

fn run_python(py: &Path, args: &[&str]) -> String {
    let out = Command::new(py)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}); set SPLICEVI_PYTHON or SPLICEVI_SKIP_PYTHON=1", py.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} {:?} failed (missing packages? install numpy scipy h5py anndata mudata pandas, or set SPLICEVI_SKIP_PYTHON=1):\n{stderr}",
        py.display(),
        args
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(name).to_string_lossy().to_string()
}

#[test]
fn mudata_reads_the_file_and_sees_the_planted_structure() {
    let _serial = serial();
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    // The toy preset (layout) and a larger one (enough cells per subtype for the statistical checks).
    for (name, cfg) in
        [("toy", toy(0)), ("mid", SimConfig { n_cells: 1500, n_genes: 400, n_junctions: 1200, ..toy(1) })]
    {
        let path = dir.path().join(format!("{name}.h5mu"));
        let (_, summary) = simulate_to_file(&cfg, &path, Compression::default(), |_, _| {}).unwrap();
        let out = run_python(
            &py,
            &[
                &script("check_simulated.py"),
                path.to_str().unwrap(),
                "--cells",
                &cfg.n_cells.to_string(),
                "--genes",
                &cfg.n_genes.to_string(),
                "--junctions",
                &cfg.n_junctions.to_string(),
            ],
        );
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["splicing_observed"].as_u64().unwrap(), summary.splicing_observed, "{name}");
        assert_eq!(v["expression_nnz"].as_u64().unwrap(), summary.expression_nnz, "{name}");
        assert_eq!(v["n_atse"].as_u64().unwrap() as usize, summary.n_atse, "{name}");
    }
}

#[test]
fn split_permutation_equals_numpy() {
    let _serial = serial();
    let Some(py) = python() else { return };
    let cases: &[(usize, u32)] = &[(1, 0), (10, 0), (100, 42), (1000, 0), (2500, 7), (70000, 4294967295)];
    let arg = cases.iter().map(|(n, s)| format!("{n}:{s}")).collect::<Vec<_>>().join(",");
    let out = run_python(&py, &[&script("check_simulated_split.py"), &arg]);
    let v: Vec<Vec<usize>> = serde_json::from_str(out.trim()).unwrap();
    for (&(n, seed), want) in cases.iter().zip(&v) {
        assert_eq!(&numpy_permutation(n, seed), want, "RandomState({seed}).permutation({n})");
    }
}

#[test]
fn split_rule_and_minibatches() {
    // Sizes (model.md §6.3), including the move of a 1–2 cell remainder to validation.
    let cfg = SplitConfig { batch_size: 128, ..Default::default() };
    for n in [1usize, 2, 3, 10, 100, 129, 1000, 1424, 2000, 20000] {
        let (tr, va, moved) = split_sizes(n, &cfg).unwrap();
        let raw_train = (0.9 * n as f64).ceil() as usize;
        let rem = raw_train % 128;
        if rem == 1 || rem == 2 {
            assert_eq!((tr, moved), (raw_train - rem, rem), "n = {n}");
            let raw_val = n - raw_train;
            assert_eq!(va, if raw_val > 0 { raw_val + rem } else { 0 }, "n = {n}");
        } else {
            assert_eq!((tr, va, moved), (raw_train, n - raw_train, 0), "n = {n}");
        }
        assert!(tr % 128 == 0 || tr % 128 > 2 || moved == 0);
    }

    let n = 1424;
    let s = train_validation_split(n, &cfg, 0).unwrap();
    assert_eq!((s.train.len(), s.validation.len(), s.moved), (1280, 144, 2));
    let perm = numpy_permutation(n, 0);
    assert_eq!(s.validation, perm[..144].to_vec(), "validation = first n_val of the permutation");
    assert_eq!(s.train, perm[144..].to_vec(), "train = the next n_train");
    let mut all: Vec<usize> = s.train.iter().chain(&s.validation).chain(&s.unused).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..n).collect::<Vec<_>>());
    assert_ne!(s, train_validation_split(n, &cfg, 1).unwrap());
    assert_eq!(s, train_validation_split(n, &cfg, 0).unwrap());
    // train_size + validation_size < 1 leaves cells unused; shuffle off keeps file order.
    let part = SplitConfig { train_size: Some(0.5), validation_size: Some(0.2), shuffle: false, ..cfg.clone() };
    let p = train_validation_split(100, &part, 0).unwrap();
    assert_eq!(p.validation, (0..20).collect::<Vec<_>>());
    assert_eq!(p.train, (20..70).collect::<Vec<_>>());
    assert_eq!(p.unused, (70..100).collect::<Vec<_>>());
    assert!(train_validation_split(10, &cfg, 1 << 40).is_err());

    // Minibatches: each epoch a permutation of the training cells in ceil(n / B) batches, the last one
    // partial; reproducible per (seed, epoch); different across epochs.
    let mb = Minibatches::new(s.train.clone(), 300, 9).unwrap();
    assert_eq!(mb.n_batches(), 5);
    let e0 = mb.epoch(0);
    assert_eq!(e0.iter().map(Vec::len).collect::<Vec<_>>(), vec![300, 300, 300, 300, 80]);
    let mut flat: Vec<usize> = e0.concat();
    flat.sort_unstable();
    let mut want = s.train.clone();
    want.sort_unstable();
    assert_eq!(flat, want);
    assert_eq!(e0, mb.epoch(0));
    assert_ne!(e0, mb.epoch(1));
    assert_ne!(e0, Minibatches::new(s.train.clone(), 300, 10).unwrap().epoch(0));
    assert_ne!(e0.concat(), s.train, "epoch order is not shuffled");
    // Validation: sequential, in split order.
    let v: Vec<&[usize]> = sequential_batches(&s.validation, 100).collect();
    assert_eq!(v.len(), 2);
    assert_eq!(v.concat(), s.validation);
}

#[test]
fn appender_chunks_read_back_through_hdf5_filters() {
    let _serial = serial();
    // Crosses chunk and flush boundaries with uneven pieces; compressed chunks are encoded by us and
    // decoded by HDF5's own shuffle + deflate filters, so this checks the encoding bit for bit.
    use splicevi::data::h5write::Appender;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.h5");
    let n = 2_300_017usize;
    for gzip in [Some(1u8), Some(6), None] {
        let f = hdf5::File::create(&path).unwrap();
        let c = Compression { gzip_level: gzip };
        let mut a = Appender::<i64>::create(&f, "i64", c).unwrap();
        let mut b = Appender::<f32>::create(&f, "f32", c).unwrap();
        let mut u = Appender::<u8>::create(&f, "u8", c).unwrap();
        let mut i = 0usize;
        let mut step = 1usize;
        while i < n {
            let j = (i + step).min(n);
            a.push_iter((i..j).map(|x| (x as i64) * 3 - 7)).unwrap();
            b.push_slice(&(i..j).map(|x| (x % 1000) as f32 * 0.5).collect::<Vec<_>>()).unwrap();
            u.push_slice(&(i..j).map(|x| (x % 251) as u8).collect::<Vec<_>>()).unwrap();
            i = j;
            step = step * 7 % 500_009 + 1;
        }
        assert_eq!(a.len(), n);
        a.finish().unwrap();
        b.finish().unwrap();
        u.finish().unwrap();
        drop(f);
        let f = hdf5::File::open(&path).unwrap();
        let ra: Vec<i64> = f.dataset("i64").unwrap().read_raw().unwrap();
        let rb: Vec<f32> = f.dataset("f32").unwrap().read_raw().unwrap();
        let ru: Vec<u8> = f.dataset("u8").unwrap().read_raw().unwrap();
        assert_eq!(ra.len(), n, "gzip {gzip:?}");
        assert!(ra.iter().enumerate().all(|(x, &v)| v == (x as i64) * 3 - 7), "i64, gzip {gzip:?}");
        assert!(rb.iter().enumerate().all(|(x, &v)| v == (x % 1000) as f32 * 0.5), "f32, gzip {gzip:?}");
        assert!(ru.iter().enumerate().all(|(x, &v)| v == (x % 251) as u8), "u8, gzip {gzip:?}");
    }
}

/// A dataset whose values fit in the appender's buffer is made at its size (HDF5 stores every chunk
/// whole, so a few values in an uncompressed chunk of 2^18 took 1 MiB): the values read back exactly,
/// and an uncompressed `toy` simulation is about as small as its data (it was 15 MB for 0.3 MB).
#[test]
fn small_appended_datasets_take_their_size() {
    let _serial = serial();
    use splicevi::data::h5write::Appender;
    let dir = tempfile::tempdir().unwrap();
    for gzip in [None, Some(1u8)] {
        let path = dir.path().join("small.h5");
        let sizes = [0usize, 1, 3, 1000, (1 << 18) + 5, 3 << 18];
        let f = hdf5::File::create(&path).unwrap();
        for &n in &sizes {
            let mut a = Appender::<f32>::create(&f, &format!("a{n}"), Compression { gzip_level: gzip }).unwrap();
            a.push_slice(&(0..n).map(|x| x as f32 * 0.5).collect::<Vec<_>>()).unwrap();
            a.finish().unwrap();
        }
        drop(f);
        let f = hdf5::File::open(&path).unwrap();
        for &n in &sizes {
            let back: Vec<f32> = f.dataset(&format!("a{n}")).unwrap().read_raw().unwrap();
            assert_eq!(back, (0..n).map(|x| x as f32 * 0.5).collect::<Vec<_>>(), "{n} values, gzip {gzip:?}");
        }
        drop(f);
        if gzip.is_none() {
            let bytes = std::fs::metadata(&path).unwrap().len() as usize;
            let data: usize = sizes.iter().sum::<usize>() * 4;
            assert!(bytes < data + (64 << 10), "{bytes} bytes for {data} bytes of values");
        }
    }
    let (a, b) = (dir.path().join("gzip0.h5mu"), dir.path().join("gzip1.h5mu"));
    for (out, level) in [(&a, "0"), (&b, "1")] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_splicevi")).args(["simulate", "--size", "toy", "--seed", "2", "--gzip", level, "--out"]).arg(out).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let size = std::fs::metadata(&a).unwrap().len();
    assert!(size < 1 << 20, "toy uncompressed: {size} bytes");
    let opts = DataOptions::default();
    assert_same_data(&load(&b, &opts).unwrap(), &load(&a, &opts).unwrap(), "--gzip 0 vs --gzip 1");
}

#[test]
fn int64_indexed_files_load_too() {
    // Files with more than 2^31 possible non-zeros (the paper size) get int64 indices/indptr; force that
    // on the toy data and check the reader (and scipy, through mudata) take it.
    use splicevi::data::h5write::{FileMeta, SpliceviWriter};
    use splicevi::data::simulate::{file_extras, SimModel};
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.h5mu");
    let cfg = toy(4);
    let model = SimModel::new(&cfg).unwrap();
    let mut w =
        SpliceviWriter::create(&path, 1 << 40, cfg.n_genes, cfg.n_junctions, true, true, Compression::default())
            .unwrap();
    for b in 0..model.n_blocks() {
        w.append(&model.generate_block(b)).unwrap();
    }
    let (ds, _) = simulate(&cfg).unwrap();
    let (rna, spl, uns) = file_extras(&cfg).unwrap();
    w.finish(&FileMeta {
        cell_names: ds.cell_names.clone(),
        obs: ds.obs.clone(),
        library_size: ds.library_size.clone(),
        rna: Some(rna),
        splicing: spl,
        uns,
    })
    .unwrap();
    {
        let f = hdf5::File::open(&path).unwrap();
        for m in ["mod/rna/X", "mod/splicing/layers/cell_by_cluster_matrix", "mod/splicing/layers/psi_mask"] {
            for a in ["indices", "indptr"] {
                let d = f.dataset(&format!("{m}/{a}")).unwrap();
                assert_eq!(d.dtype().unwrap().size(), 8, "{m}/{a} is not int64");
            }
        }
    }
    assert_same_data(&ds, &load(&path, &DataOptions::default()).unwrap(), "int64-indexed file");
    if let Some(py) = python() {
        run_python(
            &py,
            &[
                &script("check_simulated.py"),
                path.to_str().unwrap(),
                "--cells",
                "200",
                "--genes",
                "100",
                "--junctions",
                "300",
            ],
        );
    }
}
