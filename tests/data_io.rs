//! Reading what the Python anndata / mudata packages write: every storage variant must load to exactly
//! the values the generating script recorded (tests/python/make_anndata_files.py → expected.json).

#[path = "python/harness.rs"]
mod harness;

use serde_json::Value;
use splicevi::data::h5;
use splicevi::data::load::{load, load_with, LoadChecks};
use splicevi::data::validate::{check_dataset, ValueRule, ValueTracker};
use splicevi::data::{DataOptions, Dataset, IntColumn, ObsColumn};
use std::process::Command;

const TAG: &str = "data_io";

fn gen() -> Option<&'static harness::Generated> {
    harness::generated(TAG, true)
}

fn valid_opts() -> DataOptions {
    harness::options(&serde_json::json!({
        "rna_layer": "length_norm",
        "batch_key": "batch",
        "labels_key": "cell_type",
        "categorical_covariate_keys": ["donor"],
        "continuous_covariate_keys": ["age", "qc"],
    }))
}

/// `splicevi simulate --size toy --seed SEED --out OUT`.
fn simulate_toy(seed: u64, out: &std::path::Path) {
    let sim = Command::new(env!("CARGO_BIN_EXE_splicevi")).args(["simulate", "--size", "toy", "--seed", &seed.to_string(), "--out"]).arg(out).output().unwrap();
    assert!(sim.status.success(), "{}", String::from_utf8_lossy(&sim.stderr));
}

/// Runs a python script (`python -c SCRIPT ARGS`): true when it succeeded; false, after a SKIPPED line,
/// when it could not run and SPLICEVI_SKIP_PYTHON=1; a panic naming `needs` otherwise.
fn python_script(script: &str, args: &[&std::path::Path], needs: &str) -> bool {
    match Command::new(harness::python()).arg("-c").arg(script).args(args).output() {
        Ok(o) if o.status.success() => true,
        _ if std::env::var("SPLICEVI_SKIP_PYTHON").is_ok_and(|v| v == "1") => {
            eprintln!("SKIPPED: python with {needs} (SPLICEVI_SKIP_PYTHON=1)");
            false
        }
        o => panic!("python with {needs}: {o:?}"),
    }
}

/// Dense cells × junctions k, n, psi and the observation mask rebuilt from the entries.
type Dense = Vec<Vec<f64>>;

fn dense_splicing(ds: &Dataset) -> (Dense, Dense, Dense, Vec<Vec<bool>>) {
    let s = &ds.splicing;
    let (c, j) = (s.n_cells, s.n_junctions);
    let mut k = vec![vec![0.0; j]; c];
    let mut n = vec![vec![0.0; j]; c];
    let mut p = vec![vec![0.0; j]; c];
    let mut m = vec![vec![false; j]; c];
    for i in 0..c {
        for t in s.cell_range(i) {
            let jj = s.junction[t] as usize;
            k[i][jj] = s.k[t] as f64;
            n[i][jj] = s.n[t] as f64;
            p[i][jj] = s.psi[t] as f64;
            m[i][jj] = true;
        }
    }
    (k, n, p, m)
}

fn assert_splicing(ds: &Dataset, e: &Value, what: &str) {
    let s = &ds.splicing;
    assert_eq!(ds.cell_names, harness::strs(&e["cells"]), "{what}: cells");
    assert_eq!(s.junction_names, harness::strs(&e["junction_ids"]), "{what}: junction names");
    assert_eq!(s.atse_ids, harness::strs(&e["atse_ids"]), "{what}: ATSE ids (sorted)");
    let j2a: Vec<u32> = harness::f64s(&e["junc2atse"]).iter().map(|&x| x as u32).collect();
    assert_eq!(s.junc2atse, j2a, "{what}: junc2atse");
    let (k, n, p, m) = dense_splicing(ds);
    let en = harness::matrix(&e["n"]);
    let ep = harness::matrix(&e["psi"]);
    let mask: Vec<Vec<bool>> = en.iter().map(|r| r.iter().map(|&x| x > 0.0).collect()).collect();
    assert_eq!(m, mask, "{what}: observed entries = [n > 0]");
    assert!(s.indptr.windows(2).all(|w| w[0] <= w[1]));
    for i in 0..ds.n_cells() {
        let cols = &s.junction[s.cell_range(i)];
        assert!(cols.windows(2).all(|w| w[0] < w[1]), "{what}: junctions ascending within a cell");
        for jj in 0..s.n_junctions {
            assert!((p[i][jj] - ep[i][jj]).abs() < 1e-6, "{what}: psi[{i}][{jj}] = {} vs {}", p[i][jj], ep[i][jj]);
        }
    }
    if s.has_counts {
        assert_eq!(k, harness::matrix(&e["k"]), "{what}: k");
        assert_eq!(n, en, "{what}: n");
    }
    let no_junction = e["no_junction_cell"].as_u64().unwrap() as usize;
    assert!(s.cell_range(no_junction).is_empty());
}

fn assert_expression(ds: &Dataset, e: &Value, what: &str) {
    assert_eq!(ds.gene_names, harness::strs(&e["genes"]), "{what}: genes");
    let x = ds.expression.as_ref().expect("expression");
    let mut dense = vec![vec![0.0; x.n_cols]; x.n_rows];
    for (i, row) in dense.iter_mut().enumerate() {
        let (c, v) = x.row(i);
        assert!(c.windows(2).all(|w| w[0] < w[1]));
        assert!(v.iter().all(|&v| v != 0.0), "{what}: zeros stored");
        for (&c, &v) in c.iter().zip(v) {
            row[c as usize] = v as f64;
        }
    }
    assert_eq!(dense, harness::matrix(&e["expression"]), "{what}: expression");
    let lib: Vec<f64> = ds.library_size.iter().map(|&x| x as f64).collect();
    assert_eq!(lib, harness::f64s(&e["library_size"]), "{what}: library size");
}

/// Per-cell labels of a categorical covariate.
fn labels_of(c: &splicevi::data::Categorical) -> Vec<String> {
    c.codes.iter().map(|&x| c.levels[x as usize].clone()).collect()
}

fn assert_covariates(ds: &Dataset, e: &Value, what: &str, exact_batch_levels: bool) {
    let cv = &ds.covariates;
    assert_eq!(labels_of(&cv.batch), harness::strs(&e["batch"]), "{what}: batch");
    if exact_batch_levels {
        // pandas categorical: the file's category order, unused categories kept
        assert_eq!(cv.batch.levels, harness::strs(&e["batch_levels"]), "{what}: batch levels");
    } else {
        let mut l = harness::strs(&e["batch"]);
        l.sort();
        l.dedup();
        assert_eq!(cv.batch.levels, l, "{what}: batch levels = sorted unique values");
    }
    assert_eq!(cv.labels.levels, harness::strs(&e["labels_levels"]), "{what}: label levels");
    assert_eq!(labels_of(&cv.labels), harness::strs(&e["labels"]), "{what}: labels");
    assert_eq!(cv.categorical.len(), 1);
    assert_eq!(cv.categorical[0].name, "donor");
    assert_eq!(cv.categorical[0].levels, harness::strs(&e["donor_levels"]), "{what}: donor levels (numeric sort)");
    assert_eq!(labels_of(&cv.categorical[0]), harness::strs(&e["donor"]), "{what}: donor");
    assert_eq!(cv.continuous_names, vec!["age".to_string(), "qc".to_string()]);
    let want: Vec<f32> = harness::matrix(&e["continuous"]).into_iter().flatten().map(|x| x as f32).collect();
    assert_eq!(cv.continuous, want, "{what}: continuous");
}

#[test]
fn mudata_files_in_every_storage_load_identically() {
    let Some(g) = gen() else { return };
    let e = &g.expected;
    let files = e["valid_files"].as_array().unwrap();
    assert!(files.len() >= 5);
    for f in files {
        let name = f["file"].as_str().unwrap();
        let what = format!("{name} ({})", f["storage"].as_str().unwrap());
        let ds = load(&g.path(name), &valid_opts()).unwrap_or_else(|err| panic!("{what}: {err:#}"));
        assert_splicing(&ds, e, &what);
        assert_expression(&ds, e, &what);
        assert_covariates(&ds, e, &what, true);
        assert_eq!(ds.splicing.gene_names, harness::strs(&e["junction_genes"]), "{what}: junction gene names");
        let obs: Vec<String> = ds.obs.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(obs, harness::strs(&e["obs_columns"]), "{what}: obs = global columns then rna columns");
        check_dataset(&ds, &Default::default()).unwrap();
    }
}

#[test]
fn expression_defaults_to_x_and_library_size_from_obsm() {
    let Some(g) = gen() else { return };
    // X holds the raw counts; the size factors still come from obsm (the MuData's), not from X.
    let ds = load(&g.path("mixed.h5mu"), &DataOptions::default()).unwrap();
    let x = ds.expression.as_ref().unwrap();
    let lib = harness::f64s(&g.expected["library_size"]);
    assert_eq!(ds.library_size.iter().map(|&v| v as f64).collect::<Vec<_>>(), lib);
    let ln = harness::matrix(&g.expected["expression"]);
    let differs = (0..x.n_rows).any(|i| {
        let (c, v) = x.row(i);
        c.iter().zip(v).any(|(&c, &v)| v as f64 != ln[i][c as usize])
    });
    assert!(differs, "X (raw) must differ from length_norm in this data");
    assert_eq!(ds.covariates.batch.levels, vec!["0".to_string()]);
    assert!(ds.covariates.batch.codes.iter().all(|&c| c == 0));
}

/// Without size factors under the default key the row sums stand in; a key the user names must exist.
#[test]
fn library_size_falls_back_to_row_sums_for_the_default_key_only() {
    let Some(g) = gen() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let bare = tmp.path().join("no_size_factors.h5mu");
    let script = r#"
import sys, shutil, h5py
shutil.copy(sys.argv[1], sys.argv[2])
with h5py.File(sys.argv[2], "r+") as f:
    for p in ("obsm/X_library_size", "mod/rna/obsm/X_library_size"):
        if p in f:
            del f[p]
print("ok")
"#;
    assert!(python_script(script, &[&g.path("mixed.h5mu"), &bare], "h5py"));
    let ds = load(&bare, &valid_opts()).unwrap();
    let ln = harness::matrix(&g.expected["expression"]);
    let sums: Vec<f32> = ln.iter().map(|r| r.iter().sum::<f64>() as f32).collect();
    assert_eq!(ds.library_size, sums);
    let mut o = valid_opts();
    o.size_factor_key = "not_there".into();
    let e = format!("{:#}", load(&g.path("mixed.h5mu"), &o).unwrap_err());
    assert!(e.contains("obsm/not_there") && e.contains("--size-factor-key"), "{e}");
}

#[test]
fn prefixed_and_modality_columns_resolve() {
    let Some(g) = gen() else { return };
    let o = harness::options(&serde_json::json!({
        "labels_key": "rna:cell_type",
        "categorical_covariate_keys": ["splicing:donor"],
        "continuous_covariate_keys": ["rna:qc"],
        "batch_key": "note",
    }));
    let ds = load(&g.path("mixed.h5mu"), &o).unwrap();
    assert_eq!(labels_of(&ds.covariates.labels), harness::strs(&g.expected["labels"]));
    assert_eq!(labels_of(&ds.covariates.categorical[0]), harness::strs(&g.expected["donor"]));
    let qc: Vec<f32> = harness::matrix(&g.expected["continuous"]).iter().map(|r| r[1] as f32).collect();
    assert_eq!(ds.covariates.continuous, qc);
    // a string-array column (unique values) as batch: sorted unique levels
    assert_eq!(ds.covariates.batch.levels.len(), ds.n_cells());
    assert!(ds.covariates.batch.levels.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn splicing_only_h5ad() {
    let Some(g) = gen() else { return };
    let o = harness::options(&serde_json::json!({"batch_key": "batch"}));
    let ds = load(&g.path("splicing_only.h5ad"), &o).unwrap();
    assert!(ds.expression.is_none());
    assert!(ds.gene_names.is_empty());
    assert!(ds.library_size.iter().all(|&x| x == 1.0));
    assert_splicing(&ds, &g.expected, "splicing_only.h5ad");
    assert_eq!(ds.covariates.batch.levels, harness::strs(&g.expected["batch_levels"]));
    assert_eq!(labels_of(&ds.covariates.batch), harness::strs(&g.expected["batch"]));
    check_dataset(&ds, &Default::default()).unwrap();
}

#[test]
fn psi_only_h5ad_loads_without_counts() {
    let Some(g) = gen() else { return };
    let ds = load(&g.path("psi_only.h5ad"), &DataOptions::default()).unwrap();
    assert!(!ds.splicing.has_counts);
    assert_splicing(&ds, &g.expected, "psi_only.h5ad");
    check_dataset(&ds, &Default::default()).unwrap();
}

#[test]
fn matrix_market_directories() {
    let Some(g) = gen() else { return };
    for dir in ["mtx_dir", "mtx_gz_dir"] {
        let ds = load(&g.path(dir), &valid_opts()).unwrap_or_else(|e| panic!("{dir}: {e:#}"));
        assert_splicing(&ds, &g.expected, dir);
        assert_expression(&ds, &g.expected, dir);
        assert_covariates(&ds, &g.expected, dir, false);
        assert_eq!(ds.splicing.gene_names, harness::strs(&g.expected["junction_genes"]));
        check_dataset(&ds, &Default::default()).unwrap();
    }
}

/// obs.tsv: a column of whole numbers is read as integers (as pandas reads it, and so written back as
/// int64, or uint64 with a value above i64::MAX); with a missing value or a fraction, or whole numbers
/// beyond both types, as floats; anything else as text.
#[test]
fn matrix_market_integer_obs_columns() {
    let Some(g) = gen() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mtx");
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(g.path("mtx_dir")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let obs = std::fs::read_to_string(dir.join("obs.tsv")).unwrap();
    let lines: Vec<String> = obs
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                format!("{l}\tn_counts\tgap\tcode\tid64\tover")
            } else {
                let gap = if i == 2 { "NA".to_string() } else { i.to_string() };
                format!("{l}\t{}\t{gap}\tx{i}\t{}\t{}", 1000 + i, (1u64 << 63) + i as u64, if i == 1 { "-1".to_string() } else { u64::MAX.to_string() })
            }
        })
        .collect();
    std::fs::write(dir.join("obs.tsv"), lines.join("\n") + "\n").unwrap();
    let ds = load(&dir, &valid_opts()).unwrap();
    let n = ds.n_cells() as i64;
    assert_eq!(ds.obs_column("n_counts", "test").ok().map(|c| c.1), Some(&ObsColumn::Int(IntColumn::plain((1..=n).map(|i| 1000 + i).collect()))));
    assert!(matches!(ds.obs_column("gap", "test").ok().map(|c| c.1), Some(ObsColumn::Numeric(v, _)) if v[1].is_nan() && v[0] == 1.0), "{:?}", ds.obs_column("gap", "test").ok().map(|c| c.1));
    assert!(matches!(ds.obs_column("code", "test").ok().map(|c| c.1), Some(ObsColumn::Text(_))));
    let id64 = IntColumn { values: (1..=n).map(|i| (1i128 << 63) + i as i128).collect(), width: splicevi::data::IntWidth::U64, mask: None };
    assert_eq!(ds.obs_column("id64", "test").ok().map(|c| c.1), Some(&ObsColumn::Int(id64)));
    // −1 and u64::MAX fit no one integer type: floats
    assert!(matches!(ds.obs_column("over", "test").ok().map(|c| c.1), Some(ObsColumn::Numeric(v, _)) if v[0] == -1.0), "{:?}", ds.obs_column("over", "test").ok().map(|c| c.1));
    assert!(matches!(ds.obs_column("age", "test").ok().map(|c| c.1), Some(ObsColumn::Numeric(..))), "{:?}", ds.obs_column("age", "test").ok().map(|c| c.1));
}

#[test]
fn tiny_read_chunks_give_the_same_matrices() {
    let Some(g) = gen() else { return };
    // gzip.h5mu: chunked + compressed datasets, dense / CSR / CSC; read across every chunk boundary.
    let f = h5::open(&g.path("gzip.h5mu")).unwrap();
    let mut formats = Vec::new();
    for path in [
        "mod/rna/layers/length_norm",
        "mod/rna/X",
        "mod/splicing/layers/cell_by_junction_matrix",
        "mod/splicing/layers/cell_by_cluster_matrix",
        "mod/splicing/layers/junc_ratio",
        "mod/splicing/layers/psi_mask",
    ] {
        let m = h5::open_matrix(&f, path).unwrap().unwrap_or_else(|| panic!("{path} missing"));
        formats.push(m.format());
        let rule = ValueRule::counts(false);
        let whole = m.read_csr(&mut ValueTracker::new(rule)).unwrap();
        for (chunk, block) in [(1, 1), (2, 3), (3, 7), (5, 16)] {
            let part = m.read_csr_chunked(&mut ValueTracker::new(rule), chunk, block).unwrap();
            assert_eq!(part, whole, "{path} with chunk {chunk}, block {block}");
        }
    }
    formats.sort();
    formats.dedup();
    assert_eq!(formats, vec!["csc", "csr", "dense"]);
}

#[test]
fn row_blocks_of_any_size_load_the_same_dataset() {
    let Some(g) = gen() else { return };
    // k, junc_ratio and psi_mask are read in row blocks while the entries are built; blocks of 1, 2, 3,
    // 7 and 16 stored entries cross every row and block boundary (a row larger than a block is one block).
    let mut cases: Vec<(String, DataOptions)> =
        g.expected["valid_files"].as_array().unwrap().iter().map(|f| (f["file"].as_str().unwrap().to_string(), valid_opts())).collect();
    cases.push(("splicing_only.h5ad".into(), harness::options(&serde_json::json!({"batch_key": "batch"}))));
    cases.push(("psi_only.h5ad".into(), DataOptions::default()));
    for (name, opts) in &cases {
        let whole = load(&g.path(name), opts).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        for entries in [1, 2, 3, 7, 16] {
            let checks = LoadChecks { row_block_entries: entries, ..Default::default() };
            let got = load_with(&g.path(name), opts, &checks).unwrap_or_else(|e| panic!("{name}, blocks of {entries}: {e:#}"));
            assert!(got == whole, "{name}: blocks of {entries} entries load a different dataset");
        }
    }
}

#[test]
fn first_bad_value_is_row_major_first_even_for_csc() {
    let Some(g) = gen() else { return };
    // CSC delivers values column by column; the reported offender must still be the row-major first.
    // Pick a threshold t such that, among the k values > t, the row-major first and the column-major
    // first differ, and reject exactly those values.
    let f = h5::open(&g.path("csc.h5mu")).unwrap();
    let m = h5::open_matrix(&f, "mod/splicing/layers/cell_by_junction_matrix").unwrap().unwrap();
    assert_eq!(m.format(), "csc");
    let k = harness::matrix(&g.expected["k"]);
    let (c, j) = (k.len(), k[0].len());
    let above = |t: f64| -> Vec<(usize, usize)> { (0..c).flat_map(|i| (0..j).map(move |jj| (i, jj))).filter(|&(i, jj)| k[i][jj] > t).collect() };
    let mut thresholds: Vec<f64> = k.iter().flatten().copied().collect();
    thresholds.sort_by(|a, b| a.total_cmp(b));
    thresholds.dedup();
    let (t, first) = thresholds
        .iter()
        .find_map(|&t| {
            let s = above(t);
            let row_first = *s.first()?;
            let col_first = *s.iter().min_by_key(|&&(i, jj)| (jj, i))?;
            (row_first != col_first).then_some((t, row_first))
        })
        .expect("data where row-major and column-major firsts differ");
    let rule = ValueRule { what: "x", integer: false, max: Some(t), integer_hint: "" };
    let mut tr = ValueTracker::new(rule);
    m.read_csr(&mut tr).unwrap();
    let b = tr.first_bad.unwrap();
    assert_eq!((b.row, b.col, b.value), (first.0, first.1, k[first.0][first.1]));
}

#[test]
fn content_decides_the_format_not_the_extension() {
    let Some(g) = gen() else { return };
    let copy = g.dir.join("mudata_named.h5");
    std::fs::copy(g.path("mixed.h5mu"), &copy).unwrap();
    let ds = load(&copy, &valid_opts()).unwrap();
    assert!(ds.expression.is_some());
    let err = load(&g.dir.join("nope.h5mu"), &valid_opts()).unwrap_err();
    assert!(format!("{err:#}").contains("no such file"));
}

#[test]
fn large_sparse_file_loads_without_densifying() {
    let Some(g) = gen() else { return };
    let l = &g.expected["large"];
    let t = std::time::Instant::now();
    let ds = load_with(&g.path(l["file"].as_str().unwrap()), &DataOptions::default(), &LoadChecks::default()).unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(ds.n_cells() as u64, l["cells"].as_u64().unwrap());
    assert_eq!(ds.n_junctions() as u64, l["junctions"].as_u64().unwrap());
    assert_eq!(ds.splicing.n_atse() as u64, l["atses"].as_u64().unwrap());
    assert_eq!(ds.splicing.nnz() as u64, l["observed"].as_u64().unwrap());
    // cells × junctions as f32 would be 1.6 GB; the whole test process must stay far below.
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let hwm_kb: u64 = status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap();
        assert!(hwm_kb < 800 * 1024, "peak resident memory {} MB", hwm_kb / 1024);
    }
    eprintln!("large file: {} observed entries loaded in {secs:.2} s", ds.splicing.nnz());
}

#[test]
fn cli_validate_prints_a_summary() {
    let Some(g) = gen() else { return };
    let out = Command::new(env!("CARGO_BIN_EXE_splicevi"))
        .args(["validate"])
        .arg(g.path("mixed.h5mu"))
        .args(["--rna-layer", "length_norm", "--batch-key", "batch", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    let e = &g.expected;
    let n = harness::matrix(&e["n"]);
    let observed = n.iter().flatten().filter(|&&x| x > 0.0).count();
    assert_eq!(s["cells"], e["cells"].as_array().unwrap().len());
    assert_eq!(s["genes"], e["genes"].as_array().unwrap().len());
    assert_eq!(s["junctions"], e["junction_ids"].as_array().unwrap().len());
    assert_eq!(s["atses"], e["atse_ids"].as_array().unwrap().len());
    assert_eq!(s["observed_entries"], observed);
    assert_eq!(s["cells_with_zero_expression"], 1);
    let sizes: Vec<(String, u64)> = s["batch"]["sizes"].as_array().unwrap().iter().map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_u64().unwrap())).collect();
    let batch = harness::strs(&e["batch"]);
    for (level, count) in &sizes {
        assert_eq!(*count as usize, batch.iter().filter(|b| *b == level).count(), "batch {level}");
    }
    // text output, non-zero exit on error
    let out = Command::new(env!("CARGO_BIN_EXE_splicevi")).arg("validate").arg(g.path("mtx_dir")).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("junctions per ATSE") && text.contains("OK"), "{text}");
    assert!(text.contains("library size"), "{text}");
    // splicing only: no library size (the loader's placeholder 1s are not data)
    let out = Command::new(env!("CARGO_BIN_EXE_splicevi")).arg("validate").arg(g.path("splicing_only.h5ad")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("none (splicing only)") && !text.contains("library size"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_splicevi")).arg("validate").arg(g.path("splicing_only.h5ad")).arg("--json").output().unwrap();
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(s["library_size"].is_null() && s["genes"].is_null(), "{s}");
    let out = Command::new(env!("CARGO_BIN_EXE_splicevi")).args(["validate", "/nonexistent/x.h5mu"]).output().unwrap();
    assert!(!out.status.success());
}

/// Without --batch-key the JSON summary has no batch (null, as the text says none), not the model's
/// placeholder level "0" under the name "batch"; with it, the column's levels.
#[test]
fn validate_json_reports_no_batch_without_batch_key() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("toy.h5mu");
    simulate_toy(0, &data);
    let validate = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_splicevi")).arg("validate").arg(&data).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let s: Value = serde_json::from_str(&validate(&["--json"])).unwrap();
    assert!(s["batch"].is_null() && s["labels"].is_null(), "{s}");
    let text = validate(&[]);
    assert!(text.contains("none (no --batch-key") && !text.contains("levels"), "{text}");
    let s: Value = serde_json::from_str(&validate(&["--json", "--batch-key", "batch"])).unwrap();
    assert_eq!(s["batch"]["name"], "batch", "{s}");
    let total: u64 = s["batch"]["sizes"].as_array().unwrap().iter().map(|p| p[1].as_u64().unwrap()).sum();
    assert!(s["batch"]["sizes"].as_array().unwrap().len() == 2 && total == 200, "{s}");
    assert!(s["observed_percent"].as_f64().is_some_and(|p| p > 0.0 && p < 100.0), "{s}");
}

/// A dataset without junctions is refused on load, naming the file (it passed `validate`, and then
/// `train` refused it as "model: the splicing modality has 0 junctions").
#[test]
fn a_dataset_without_junctions_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let z = tmp.path().join("nojunctions");
    std::fs::create_dir(&z).unwrap();
    std::fs::write(z.join("barcodes.tsv"), "c1\nc2\n").unwrap();
    std::fs::write(z.join("junctions.tsv"), "junction_id\tevent_id\n").unwrap();
    for m in ["junction_counts.mtx", "atse_counts.mtx"] {
        std::fs::write(z.join(m), "%%MatrixMarket matrix coordinate integer general\n2 0 0\n").unwrap();
    }
    for cmd in ["validate", "train"] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_splicevi"));
        c.arg(cmd).arg(&z);
        if cmd == "train" {
            c.arg("--out").arg(tmp.path().join("run"));
        }
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd}: {err}");
        assert!(err.contains("nojunctions") && err.contains("no junctions"), "{cmd}: {err}");
    }
    // one junction observed in one cell loads
    std::fs::write(z.join("junctions.tsv"), "junction_id\tevent_id\nj0\ta0\n").unwrap();
    std::fs::write(z.join("junction_counts.mtx"), "%%MatrixMarket matrix coordinate integer general\n2 1 1\n1 1 1\n").unwrap();
    std::fs::write(z.join("atse_counts.mtx"), "%%MatrixMarket matrix coordinate integer general\n2 1 1\n1 1 2\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_splicevi")).arg("validate").arg(&z).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A file without cells is refused on load (it used to pass `validate`, and `embed` wrote a 0 × 0
/// latent); the same directory with one cell loads.
#[test]
fn a_dataset_without_cells_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |dir: &std::path::Path, cells: &[&str]| {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("barcodes.tsv"), cells.iter().map(|c| format!("{c}\n")).collect::<String>()).unwrap();
        std::fs::write(dir.join("junctions.tsv"), "junction_id\tevent_id\nj0\ta0\nj1\ta0\n").unwrap();
        let entries: String = (1..=cells.len()).map(|i| format!("{i} 1 1\n{i} 2 2\n")).collect();
        let atse: String = (1..=cells.len()).map(|i| format!("{i} 1 3\n{i} 2 3\n")).collect();
        let header = |nnz: usize| format!("%%MatrixMarket matrix coordinate integer general\n{} 2 {nnz}\n", cells.len());
        std::fs::write(dir.join("junction_counts.mtx"), header(2 * cells.len()) + &entries).unwrap();
        std::fs::write(dir.join("atse_counts.mtx"), header(2 * cells.len()) + &atse).unwrap();
    };
    let (none, one) = (tmp.path().join("none"), tmp.path().join("one"));
    write(&none, &[]);
    write(&one, &["c0"]);
    let opts = splicevi::data::DataOptions::default();
    assert_eq!(splicevi::data::load::load(&one, &opts).unwrap().n_cells(), 1);
    let e = format!("{:#}", splicevi::data::load::load(&none, &opts).unwrap_err());
    assert!(e.contains("none") && e.contains("no cells"), "{e}");
}

/// Matrix Market text tables: a line with a field more or less than its header line is an error naming
/// the file, the line and both counts (the extra field was dropped, a missing one read as missing);
/// an empty size factor is named as empty at its line (it said "size factor NaN is not finite"); an
/// empty text field is a missing value (NA, as pandas reads it), not a batch "" of its own.
#[test]
fn matrix_market_tables_check_their_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, junctions: &str, obs: &str| -> std::path::PathBuf {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("barcodes.tsv"), "c0\nc1\nc2\n").unwrap();
        std::fs::write(dir.join("junctions.tsv"), junctions).unwrap();
        let header = "%%MatrixMarket matrix coordinate integer general\n3 2 6\n";
        std::fs::write(dir.join("junction_counts.mtx"), format!("{header}1 1 1\n1 2 2\n2 1 1\n2 2 2\n3 1 1\n3 2 2\n")).unwrap();
        std::fs::write(dir.join("atse_counts.mtx"), format!("{header}1 1 3\n1 2 3\n2 1 3\n2 2 3\n3 1 3\n3 2 3\n")).unwrap();
        std::fs::write(dir.join("obs.tsv"), obs).unwrap();
        dir
    };
    let junctions = "junction_id\tevent_id\nj0\ta0\nj1\ta0\n";
    let obs = |row2: &str| format!("cell\tbatch\tX_library_size\nc0\tb1\t10\n{row2}\nc2\tb2\t30\n");
    let load_err = |dir: &std::path::Path, batch: bool| {
        let opts = DataOptions { batch_key: batch.then(|| "batch".into()), ..DataOptions::default() };
        format!("{:#}", load(dir, &opts).unwrap_err())
    };
    let good = write("good", junctions, &obs("c1\tb1\t20"));
    let ds = load(&good, &DataOptions { batch_key: Some("batch".into()), ..DataOptions::default() }).unwrap();
    assert_eq!(ds.covariates.batch.levels, ["b1", "b2"]);
    let e = load_err(&write("extra", junctions, &obs("c1\tb1\t20\textra")), false);
    assert!(e.contains("extra: obs.tsv: line 3 has 4 tab-separated fields, the header line 3"), "{e}");
    let e = load_err(&write("fewer", junctions, &obs("c1\tb1")), false);
    assert!(e.contains("fewer: obs.tsv: line 3 has 2 tab-separated fields, the header line 3"), "{e}");
    let e = load_err(&write("jextra", "junction_id\tevent_id\nj0\ta0\tGENE\nj1\ta0\n", &obs("c1\tb1\t20")), false);
    assert!(e.contains("jextra: junctions.tsv: line 2 has 3 tab-separated fields, the header line 2"), "{e}");
    // an empty batch and size factor: the size factor is required, and named as empty at its line
    let blank = write("blank", junctions, &obs("c1\t\t"));
    let e = load_err(&blank, true);
    assert!(e.contains("obs.tsv:X_library_size: cell 1 (\"c1\"): line 3: the size factor is empty") && !e.contains("NaN"), "{e}");
    let e = load_err(&write("nasf", junctions, &obs("c1\tb1\tNA")), false);
    assert!(e.contains("line 3: the size factor is \"NA\" (missing)"), "{e}");
    // the empty batch alone: a missing value of the batch key, not a level ""
    let e = load_err(&write("blank_batch", junctions, &obs("c1\t\t20")), true);
    assert!(e.contains("obs.tsv/batch: cell 1 (\"c1\"): missing value") && e.contains("--batch-key"), "{e}");
}

/// A MuData's global obs may list its cells in another order than the modalities do (mudata matches
/// them by name): its columns and the global obsm's size factors follow the cells by name. (The size
/// factors were read by row position, so such a file trained with them on the wrong cells, silently.)
/// And a size-factor key the user names must exist: a misspelled one fell back to the row sums.
#[test]
fn global_obs_rows_follow_the_cells_by_name_and_a_named_size_factor_key_must_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    simulate_toy(3, &p("base.h5mu"));
    // gperm: the global obs index, its columns and obsm permuted together (the same data);
    // obsm_only: only the obsm rows permuted (other size factors for the same cells)
    let script = r#"
import sys, shutil, h5py, numpy as np
base, gperm, obsm_only = sys.argv[1:4]
for path, whole in ((gperm, True), (obsm_only, False)):
    shutil.copy(base, path)
    with h5py.File(path, "r+") as f:
        n = f["obs/_index"].shape[0]
        perm = np.random.RandomState(1).permutation(n)
        def put(name, data):
            attrs = dict(f[name].attrs)
            del f[name]
            f.create_dataset(name, data=data)
            f[name].attrs.update(attrs)
        put("obsm/X_library_size", f["obsm/X_library_size"][:][perm])
        if whole:
            put("obs/_index", f["obs/_index"][:][perm])
            for k, v in list(f["obs"].items()):
                if k == "_index":
                    continue
                if isinstance(v, h5py.Group):
                    put(f"obs/{k}/codes", v["codes"][:][perm])
                else:
                    put(f"obs/{k}", v[:][perm])
print("ok")
"#;
    if !python_script(script, &[&p("base.h5mu"), &p("gperm.h5mu"), &p("obsm_only.h5mu")], "h5py") {
        return;
    }
    let opts = DataOptions { batch_key: Some("batch".into()), ..DataOptions::default() };
    let (base, gperm, obsm_only) = (load(&p("base.h5mu"), &opts).unwrap(), load(&p("gperm.h5mu"), &opts).unwrap(), load(&p("obsm_only.h5mu"), &opts).unwrap());
    assert_eq!(gperm.cell_names, base.cell_names);
    assert_eq!(gperm.library_size, base.library_size, "the global obsm follows the global obs's rows");
    assert_eq!(gperm.obs, base.obs, "the global obs columns follow its rows");
    assert_eq!(gperm.covariates.batch, base.covariates.batch);
    assert_ne!(obsm_only.library_size, base.library_size, "the test cannot see where the size factors go");
    // a named key that is not there
    let opts = DataOptions { size_factor_key: "X_libary_size".into(), ..DataOptions::default() };
    let e = format!("{:#}", load(&p("base.h5mu"), &opts).unwrap_err());
    assert!(e.contains("base.h5mu") && e.contains("obsm/X_libary_size") && e.contains("--size-factor-key"), "{e}");
    let out = Command::new(env!("CARGO_BIN_EXE_splicevi")).arg("validate").arg(p("base.h5mu")).args(["--size-factor-key", "X_libary_size"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("X_libary_size"));
    // a column only the modalities hold, with different values in each: the first (rna) is used, and a
    // warning says so
    let script = r#"
import sys, shutil, h5py, numpy as np
shutil.copy(sys.argv[1], sys.argv[2])
with h5py.File(sys.argv[2], "r+") as f:
    n = f["obs/_index"].shape[0]
    for mod, values in (("rna", np.arange(n) % 2), ("splicing", np.arange(n) % 3)):
        obs = f[f"mod/{mod}/obs"]
        obs.create_dataset("b2", data=values.astype(np.int64))
        obs["b2"].attrs["encoding-type"] = "array"
        obs["b2"].attrs["encoding-version"] = "0.2.0"
        obs.attrs["column-order"] = list(obs.attrs["column-order"]) + ["b2"]
print("ok")
"#;
    assert!(python_script(script, &[&p("base.h5mu"), &p("b2.h5mu")], "h5py"));
    let out = Command::new(env!("CARGO_BIN_EXE_splicevi")).arg("validate").arg(p("b2.h5mu")).args(["--batch-key", "b2"]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("\"b2\" (--batch-key) differs between mod/rna/obs and mod/splicing/obs; using rna's"), "{stderr}");
    assert!(stdout.contains("2 levels"), "{stdout}");
}

/// anndata and mudata write gzip or lzf (`compression="lzf"`), and float16 arrays: all load, to the
/// same data (float16 was refused as "Invalid size of float datatype"). Filters
/// from `hdf5plugin` (blosc, zstd…; fixtures in tests/data, written by h5py + hdf5plugin) are refused
/// naming the dataset, the filter where HDF5 records it, and what to do instead (the message was
/// HDF5's, about a plugin directory of the build machine).
#[test]
fn lzf_files_load_and_other_filters_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    simulate_toy(5, &p("gzip.h5mu"));
    let script = r#"
import sys, warnings, mudata, h5py
warnings.simplefilter("ignore")
import numpy as np, shutil
mudata.read_h5mu(sys.argv[1]).write(sys.argv[2], compression="lzf")
with h5py.File(sys.argv[2]) as f:
    assert f["mod/splicing/layers/cell_by_junction_matrix/data"].compression == "lzf"
shutil.copy(sys.argv[1], sys.argv[3])
with h5py.File(sys.argv[3], "r+") as f:
    for name in ("mod/rna/X/data", "mod/splicing/layers/cell_by_junction_matrix/data", "mod/splicing/layers/cell_by_cluster_matrix/data", "obsm/X_library_size"):
        d = f[name][()]
        assert (d.astype(np.float16).astype(d.dtype) == d).all()
        attrs = dict(f[name].attrs)
        del f[name]
        f.create_dataset(name, data=d.astype(np.float16))
        f[name].attrs.update(attrs)
print("ok")
"#;
    if python_script(script, &[&p("gzip.h5mu"), &p("lzf.h5mu"), &p("f16.h5mu")], "mudata (the lzf and f16 half)") {
        let opts = DataOptions::default();
        let a = load(&p("gzip.h5mu"), &opts).unwrap();
        for other in ["lzf.h5mu", "f16.h5mu"] {
            let b = load(&p(other), &opts).unwrap();
            assert_eq!((&a.expression, &a.library_size, &a.cell_names, &a.gene_names), (&b.expression, &b.library_size, &b.cell_names, &b.gene_names), "{other}");
            let (s, t) = (&a.splicing, &b.splicing);
            assert_eq!((&s.indptr, &s.junction, &s.k, &s.n, &s.psi, &s.junc2atse), (&t.indptr, &t.junction, &t.k, &t.n, &t.psi, &t.junc2atse), "{other}");
        }
    }
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    for (file, field, filter) in [("blosc_layer.h5ad", "layers/cell_by_junction_matrix", "filter 32001 (blosc)"), ("zstd_index.h5ad", "obs/_index", "an HDF5 filter")] {
        let e = format!("{:#}", load(&data.join(file), &DataOptions::default()).unwrap_err());
        assert!(e.contains(file) && e.contains(field) && e.contains(filter) && e.contains("compression=\"gzip\""), "{e}");
        assert!(!e.contains("plugin"), "{e}");
    }
}

/// Errors that used to leave out the file, the field or the flag (QA, stop 30): each names them now.
#[test]
fn malformed_files_name_the_file_the_field_and_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    simulate_toy(8, &p("base.h5mu"));
    let script = r#"
import sys, shutil, h5py, numpy as np, warnings, mudata
warnings.simplefilter("ignore")
base, d = sys.argv[1], sys.argv[2]
def variant(name, change):
    shutil.copy(base, f"{d}/{name}.h5mu")
    with h5py.File(f"{d}/{name}.h5mu", "r+") as f:
        change(f)
variant("novar", lambda f: f.__delitem__("mod/splicing/var"))
def libstr(f):
    n = f["obsm/X_library_size"].shape[0]
    del f["obsm/X_library_size"]
    f.create_dataset("obsm/X_library_size", data=np.array([b"x"] * n, dtype=h5py.string_dtype()))
variant("libstr", libstr)
def nox(f):
    attrs = dict(f["mod/rna/X"].attrs)
    del f["mod/rna/X"]
    f.create_dataset("mod/rna/X", data=h5py.Empty("f4"))
variant("nox", nox)
def nanbatch(f):
    codes = f["obs/batch/codes"][()]
    codes[17] = -1
    f["obs/batch/codes"][...] = codes
variant("nanbatch", nanbatch)
def jdup(f):
    ids = f["mod/splicing/var/junction_id"]
    v = ids[()]
    v[1] = v[0]
    ids[...] = v
variant("jdup", jdup)
def celldup(f):
    for g in ["obs", "mod/rna/obs", "mod/splicing/obs"]:
        ds = f[g + "/" + f[g].attrs["_index"]]
        v = ds[()]
        v[5] = v[4]
        ds[...] = v
variant("celldup", celldup)
mudata.read_h5mu(base).mod["splicing"].write_h5ad(f"{d}/splicing_only.h5ad")
print("ok")
"#;
    if !python_script(script, &[&p("base.h5mu"), tmp.path()], "h5py and mudata") {
        return;
    }
    // A junction_id column that repeats a name gives way to the var index (names must be unique).
    let base = load(&p("base.h5mu"), &DataOptions::default()).unwrap();
    let jdup = load(&p("jdup.h5mu"), &DataOptions::default()).unwrap();
    let var_index = splicevi::data::h5::read_frame(&h5::open(&p("jdup.h5mu")).unwrap(), "mod/splicing/var").unwrap().index;
    assert_eq!(jdup.splicing.junction_names, var_index);
    assert_ne!(base.splicing.junction_names[1], base.splicing.junction_names[0]);
    let o = Command::new(env!("CARGO_BIN_EXE_splicevi")).arg("validate").arg(p("jdup.h5mu")).output().unwrap();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stderr).contains("junction_id repeats"), "{}", String::from_utf8_lossy(&o.stderr));
    // A cell name that repeats loads (anndata allows it) with a warning naming both rows.
    let o = Command::new(env!("CARGO_BIN_EXE_splicevi")).arg("validate").arg(p("celldup.h5mu")).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("celldup.h5mu") && err.contains("repeats") && err.contains("cells 4 and 5"), "{err}");
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_splicevi")).current_dir(tmp.path()).args(args).output().unwrap();
        assert!(!o.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    for (args, must) in [
        (&["validate", "novar.h5mu"][..], &["novar.h5mu", "mod/splicing/var"][..]),
        (&["validate", "libstr.h5mu"], &["libstr.h5mu", "obsm/X_library_size", "expected numbers"]),
        (&["validate", "nox.h5mu"], &["nox.h5mu", "mod/rna/X", "--rna-layer"]),
        (&["validate", "nanbatch.h5mu", "--batch-key", "batch"], &["nanbatch.h5mu", "obs/batch", "cell 17", "--batch-key"]),
        (&["train", "splicing_only.h5ad", "--out", "run"], &["splicing_only.h5ad", "expression"]),
    ] {
        let e = run(args);
        assert!(must.iter().all(|m| e.contains(m)), "{args:?}: {e}");
    }
}

/// Integer obs columns (int32, int64 beyond 2^53, uint8, uint64 beyond i64::MAX, and anndata's nullable Int64 / Int32
/// with missing values; a categorical column with uint64 categories) come out of every command that
/// writes obs, and out of the .h5mu writer, with
/// their dtype, values and missing values: they came back as float64, the large ones rounded and the
/// nullable ones as NaN floats. They still serve as a batch key, a continuous covariate, a `--groupby`
/// (groups named `214`, not `214.0`), an impute `--groupby` and a `--color-by`.
#[test]
fn integer_obs_columns_stay_integers_in_every_output() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    simulate_toy(4, &p("base.h5mu"));
    let script = r#"
import sys, shutil, h5py, numpy as np
shutil.copy(sys.argv[1], sys.argv[2])
with h5py.File(sys.argv[2], "r+") as f:
    obs = f["obs"]
    n = obs["_index"].shape[0]
    def array(g, name, data):
        g.create_dataset(name, data=data)
        g[name].attrs["encoding-type"] = "array"
        g[name].attrs["encoding-version"] = "0.2.0"
    i = np.arange(n)
    cols = {
        "batch_id": (i % 2).astype(np.int32),
        "grp": np.where(i % 3 == 0, 214, 9).astype(np.int32),
        "n_counts": np.random.RandomState(0).randint(1000, 5000, n).astype(np.int64),
        "big": (2**60 + i).astype(np.int64),
        "small": (i % 256).astype(np.uint8),
        "huge": np.uint64(2**63) + i.astype(np.uint64),
    }
    for k, v in cols.items():
        array(obs, k, v)
    for k, dt in (("nint", np.int64), ("nint32", np.int32)):
        g = obs.create_group(k)
        g.attrs["encoding-type"] = "nullable-integer"
        g.attrs["encoding-version"] = "0.1.0"
        array(g, "values", (i * 7 - 50).astype(dt))
        array(g, "mask", i % 5 == 1)
    # integer categories beyond f64's integers (they were read through f64: rounded, then merged)
    g = obs.create_group("icat")
    g.attrs["encoding-type"] = "categorical"
    g.attrs["encoding-version"] = "0.2.0"
    g.attrs["ordered"] = False
    array(g, "codes", (i % 3).astype(np.int8))
    array(g, "categories", np.array([2**64 - 1, 2**63 + 1, 2**63], dtype=np.uint64))
    obs.attrs["column-order"] = list(obs.attrs["column-order"]) + list(cols) + ["nint", "nint32", "icat"]
print("ok")
"#;
    if !python_script(script, &[&p("base.h5mu"), &p("ints.h5mu")], "h5py") {
        return;
    }
    let bin = || Command::new(env!("CARGO_BIN_EXE_splicevi"));
    let ok = |c: &mut Command| {
        let o = c.output().unwrap();
        assert!(o.status.success(), "{c:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    };
    let (data, run) = (p("ints.h5mu"), p("run"));
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--max-epochs", "1", "--batch-key", "batch_id", "--continuous-covariate", "n_counts", "--quiet", "--no-plots"]));
    let cfg = std::fs::read_to_string(run.join("config.json")).unwrap();
    assert!(cfg.contains("batch_id") && cfg.contains("n_counts"), "{cfg}");
    ok(bin().arg("embed").arg(&run).arg(&data).arg("--out").arg(p("emb.h5ad")).args(["--color-by", "nint"]));
    assert!(p("emb.embedding.png").exists(), "no picture coloured by an integer column");
    ok(bin().arg("impute").arg(&run).arg(&data).arg("--out").arg(p("psi.h5ad")));
    ok(bin().arg("impute").arg(&run).arg(&data).arg("--out").arg(p("psi_grp.h5ad")).args(["--observed-only", "--groupby", "grp"]));
    ok(bin().arg("normalize-expression").arg(&run).arg(&data).arg("--out").arg(p("expr.h5ad")));
    let said = ok(bin().arg("diff-splicing").arg(&run).arg(&data).args(["--groupby", "grp", "--group1", "214", "--n-samples-overall", "100", "--no-plots", "--out"]).arg(p("ds.tsv")));
    assert!(said.contains("214 vs Rest") && !said.contains("214.0"), "{said}");
    ok(bin().arg("diff-expression").arg(&run).arg(&data).args(["--groupby", "grp", "--group2", "9", "--n-samples-overall", "100", "--out"]).arg(p("de.tsv")));
    // As categorical covariates: levels by value, named as integers; a missing value is refused.
    let ds = load(&data, &DataOptions { batch_key: Some("grp".into()), ..DataOptions::default() }).unwrap();
    assert_eq!(ds.covariates.batch.levels, ["9", "214"]);
    assert_eq!(&ds.covariates.batch.codes[..3], [1, 0, 0]);
    match ds.obs_column("icat", "test").ok().map(|c| c.1) {
        Some(ObsColumn::Categorical { categories, .. }) => assert_eq!(categories, &["18446744073709551615", "9223372036854775809", "9223372036854775808"]),
        other => panic!("icat: {other:?}"),
    }
    // uint64 above i64::MAX: integers, exactly (they came back as floats)
    match ds.obs_column("huge", "test").ok().map(|c| c.1) {
        Some(ObsColumn::Int(c)) => {
            assert_eq!(c.width, splicevi::data::IntWidth::U64);
            assert_eq!(&c.values[..2], [1i128 << 63, (1i128 << 63) + 1]);
        }
        other => panic!("huge: {other:?}"),
    }
    let e = format!("{:#}", load(&data, &DataOptions { batch_key: Some("nint".into()), ..DataOptions::default() }).unwrap_err());
    assert!(e.contains("obs/nint") && e.contains("missing value") && e.contains("cell 1"), "{e}");
    // The .h5mu writer: the loaded dataset written back.
    splicevi::data::h5write::write_h5mu(&p("again.h5mu"), &ds, None, None, &[], splicevi::data::h5write::Compression { gzip_level: None }).unwrap();

    let check = r#"
import sys, os, h5py, numpy as np, pandas as pd, anndata
d = sys.argv[1]
P = lambda n: os.path.join(d, n)
with h5py.File(P("ints.h5mu"), "r") as f:
    want = anndata.io.read_elem(f["obs"])
plain = {"batch_id": np.int32, "grp": np.int32, "n_counts": np.int64, "big": np.int64, "small": np.uint8, "huge": np.uint64}
nullable = {"nint": pd.Int64Dtype(), "nint32": pd.Int32Dtype()}
assert want["nint"].isna().sum() == 40 and want["big"].iloc[1] == 2**60 + 1 and want["huge"].iloc[1] == 2**63 + 1, want
def same(obs, what):
    for k, dt in plain.items():
        assert obs[k].dtype == dt, (what, k, obs[k].dtype)
        assert np.array_equal(obs[k].values, want[k].values), (what, k)
    for k, dt in nullable.items():
        assert obs[k].dtype == dt, (what, k, obs[k].dtype)
        assert obs[k].equals(want[k]), (what, k, obs[k], want[k])
    # integer categories keep their type and exact values (they were rounded through f64 and merged)
    assert obs["icat"].cat.categories.dtype == np.uint64, (what, obs["icat"].cat.categories)
    assert list(obs["icat"].cat.categories) == list(want["icat"].cat.categories) and (obs["icat"] == want["icat"]).all(), (what, obs["icat"])
for out in ("emb.h5ad", "psi.h5ad", "psi_grp.h5ad", "expr.h5ad"):
    same(anndata.read_h5ad(P(out)).obs, out)
    with h5py.File(P(out), "r") as f:
        assert f["obs/nint"].attrs["encoding-type"] == "nullable-integer", out
        assert f["obs/nint32/values"].dtype == np.int32 and f["obs/small"].dtype == np.uint8, out
with h5py.File(P("again.h5mu"), "r") as f:
    same(anndata.io.read_elem(f["obs"]), "again.h5mu")
ds = pd.read_csv(P("ds.tsv"), sep="\t", dtype=str)
assert (ds["group1"] == "214").all() and (ds["comparison"] == "214 vs Rest").all(), ds["comparison"].unique()
de = pd.read_csv(P("de.tsv"), sep="\t", dtype=str)
assert (de["comparison"] == "214 vs 9").all(), de["comparison"].unique()
print("ok")
"#;
    assert!(python_script(check, &[tmp.path()], "h5py, pandas and anndata"));
}

/// Columns pandas users write (QA pass E): a nullable boolean (with a missing value), an ordered
/// categorical and a float32 column come out of `embed` with their type (they came back as a string
/// category, unordered, float64); a numpy bool column's groups are `True` / `False` as pandas prints them (they were
/// `true` / `false`, and `--group1 True` was refused); a categorical of integers finds `1.0` by value;
/// a category no cell has, which the run never saw (mudata's slices keep every category), is not
/// refused and changes nothing; `obsm/X_library_size` stored as a pandas DataFrame is read.
#[test]
fn pandas_column_types_round_trip_and_are_found_as_pandas_names_them() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    simulate_toy(5, &p("base.h5mu"));
    let script = r#"
import sys, os, warnings, numpy as np, pandas as pd, mudata as md
warnings.simplefilter("ignore")
d = sys.argv[1]
P = lambda n: os.path.join(d, n)
m = md.read_h5mu(P("base.h5mu")); n = m.n_obs
m.obs["nb"] = pd.array([[True, False, None][i % 3] for i in range(n)], dtype="boolean")
m.obs["ord"] = pd.Categorical([["lo", "hi"][i % 2] for i in range(n)], categories=["lo", "hi"], ordered=True)
m.obs["b"] = np.arange(n) % 2 == 0
m.obs["ci"] = pd.Categorical([i % 3 for i in range(n)])
m.obs["f32"] = (np.arange(n) / 3).astype("float32")
m.write(P("cols.h5mu"))
m.obs["batch"] = m.obs["batch"].cat.add_categories(["batch_unused"])
m.write(P("unused.h5mu"))
m = md.read_h5mu(P("base.h5mu"))
for x in [m] + list(m.mod.values()):
    if "X_library_size" in x.obsm:
        a = np.asarray(x.obsm["X_library_size"])
        x.obsm["X_library_size"] = pd.DataFrame(a[:, :1] * 2, index=x.obs_names, columns=["size"])
m.write(P("libdf.h5mu"))
print("ok")
"#;
    if !python_script(script, &[tmp.path()], "mudata and pandas") {
        return;
    }
    let bin = || Command::new(env!("CARGO_BIN_EXE_splicevi"));
    let run_ok = |c: &mut Command| {
        let o = c.output().unwrap();
        assert!(o.status.success(), "{c:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    };
    let run = p("run");
    run_ok(bin().arg("train").arg(p("base.h5mu")).arg("--out").arg(&run).args(["--max-epochs", "1", "--batch-key", "batch", "--quiet", "--no-plots"]));
    run_ok(bin().arg("embed").arg(&run).arg(p("cols.h5mu")).arg("--out").arg(p("cols.h5ad")).arg("--no-plots"));
    run_ok(bin().arg("embed").arg(&run).arg(p("base.h5mu")).arg("--out").arg(p("base.h5ad")).arg("--no-plots"));
    run_ok(bin().arg("embed").arg(&run).arg(p("unused.h5mu")).arg("--out").arg(p("unused.h5ad")).arg("--no-plots"));
    let ds_args = ["--n-samples-overall", "50", "--no-plots", "--out"];
    let said = run_ok(bin().arg("diff-splicing").arg(&run).arg(p("cols.h5mu")).args(["--groupby", "b", "--group1", "True"]).args(ds_args).arg(p("b.tsv")));
    assert!(said.contains("True vs Rest"), "{said}");
    let said = run_ok(bin().arg("diff-splicing").arg(&run).arg(p("cols.h5mu")).args(["--groupby", "ci", "--group1", "1.0"]).args(ds_args).arg(p("ci.tsv")));
    assert!(said.contains("1 vs Rest"), "{said}");
    // The DataFrame's column is read (twice the array's there).
    let base = load(&p("base.h5mu"), &DataOptions::default()).unwrap();
    let libdf = load(&p("libdf.h5mu"), &DataOptions::default()).unwrap();
    assert!(base.library_size.iter().any(|&s| s != 0.0));
    assert_eq!(base.library_size.iter().map(|&s| 2.0 * s).collect::<Vec<f32>>(), libdf.library_size);
    let check = r#"
import sys, os, warnings, numpy as np, pandas as pd, anndata
warnings.simplefilter("ignore")
d = sys.argv[1]
P = lambda n: os.path.join(d, n)
o = anndata.read_h5ad(P("cols.h5ad")).obs
assert str(o["nb"].dtype) == "boolean", o["nb"].dtype
assert o["nb"].isna().sum() > 0 and list(o["nb"].iloc[:3].astype(object)) == [True, False, pd.NA], o["nb"].iloc[:3]
assert o["ord"].cat.ordered and list(o["ord"].cat.categories) == ["lo", "hi"], o["ord"].dtype
assert o["b"].dtype == bool, o["b"].dtype
assert list(o["ci"].cat.categories) == [0, 1, 2], o["ci"].cat.categories
assert o["f32"].dtype == np.float32 and np.array_equal(o["f32"].values, (np.arange(len(o)) / 3).astype("float32")), o["f32"]
t = pd.read_csv(P("b.tsv"), sep="\t", dtype=str)
assert (t["group1"] == "True").all(), t["group1"].unique()
a, b = anndata.read_h5ad(P("base.h5ad")), anndata.read_h5ad(P("unused.h5ad"))
assert np.array_equal(a.X, b.X), "an unused category changed the embedding"
print("ok")
"#;
    assert!(python_script(check, &[tmp.path()], "anndata and pandas"));
}
