//! One test per data invariant of model.md §14.4: a broken input written by the real anndata / mudata
//! (tests/python/make_anndata_files.py, which also records what the error must name) must fail to load
//! with an error naming the file, the field, and the first offending cell and junction / gene.
//! Plus `check_dataset` on hand-built in-memory datasets (no python needed).

#[path = "python/harness.rs"]
mod harness;

use splicevi::data::load::{load, load_with, LoadChecks};
use splicevi::data::validate::{check_dataset, CheckOptions, DataError};
use splicevi::data::{Categorical, Covariates, Csr, Dataset, Splicing};
use std::process::Command;

const TAG: &str = "invariants";

/// Every case the script writes must be exercised by a test below.
const CASES: &[&str] = &[
    "k_gt_n",
    "k_without_n",
    "n_differs_in_atse",
    "n_missing_in_atse",
    "negative_count",
    "nan_count",
    "inf_expression",
    "noninteger_count",
    "noninteger_expression",
    "no_event_id",
    "missing_event_id",
    "cells_differ",
    "shape_layer",
    "shape_expression",
    "shape_library_size",
    "missing_rna_layer",
    "missing_counts_layer",
    "missing_modality",
    "missing_batch_column",
    "missing_continuous_column",
    "text_continuous_column",
    "batch_missing_value",
    "library_size_nan",
    "junc_ratio_mismatch",
    "junc_ratio_unobserved",
    "psi_mask_missing",
    "psi_mask_extra",
    "compound_obs",
    "mtx_k_gt_n",
];

/// Load the case's file with its options and check the error against what the script recorded.
fn expect_error(case: &str) {
    let Some(g) = harness::generated(TAG, false) else { return };
    let c = &g.expected["broken"][case];
    assert!(!c.is_null(), "case {case} missing from expected.json");
    let path = g.path(c["file"].as_str().unwrap());
    let opts = harness::options(&c["opts"]);
    // The default read, and row blocks of 1 and 3 stored entries (k, junc_ratio and psi_mask are read in
    // blocks while the entries are built): the same error, naming the same first offender.
    let errors = [None, Some(1), Some(3)].map(|entries| {
        let got = match entries {
            None => load(&path, &opts),
            Some(e) => load_with(&path, &opts, &LoadChecks { row_block_entries: e, ..Default::default() }),
        };
        match got {
            Ok(_) => panic!("{case}: {} loaded but must fail (row blocks {entries:?})", path.display()),
            Err(e) => e,
        }
    });
    let first = format!("{:#}", errors[0]);
    for e in &errors[1..] {
        assert_eq!(format!("{e:#}"), first, "{case}: row blocks change the error");
    }
    let err = &errors[0];
    let msg = format!("{err:#}");
    let file = path.display().to_string();
    let field = c["field"].as_str().unwrap();
    let contains = c["contains"].as_str().unwrap();
    assert!(msg.starts_with(&format!("{file}: {field}: ")), "{case}: message does not start with file and field {field:?}:\n{msg}");
    assert!(msg.contains(contains), "{case}: message lacks {contains:?}:\n{msg}");
    let want_cell = c["cell"].as_array().map(|a| (a[0].as_u64().unwrap() as usize, a[1].as_str().unwrap().to_string()));
    let want_feature = c["feature"].as_array().map(|a| (a[0].as_str().unwrap().to_string(), a[1].as_u64().unwrap() as usize, a[2].as_str().unwrap().to_string()));
    match err.downcast_ref::<DataError>() {
        Some(de) => {
            assert_eq!(de.file, file, "{case}");
            assert_eq!(de.field, field, "{case}");
            assert_eq!(de.cell, want_cell, "{case}: cell\n{msg}");
            assert_eq!(de.feature.as_ref().map(|f| (f.kind.to_string(), f.index, f.name.clone())), want_feature, "{case}: feature\n{msg}");
            if let Some((i, name)) = &want_cell {
                assert!(msg.contains(&format!("cell {i} ({name:?})")), "{case}: {msg}");
            }
            if let Some((kind, j, name)) = &want_feature {
                assert!(msg.contains(&format!("{kind} {j} ({name:?})")), "{case}: {msg}");
            }
        }
        None => assert!(want_cell.is_none() && want_feature.is_none(), "{case}: expected a located DataError, got: {msg}"),
    }
}

#[test]
fn every_generated_case_has_a_test() {
    let Some(g) = harness::generated(TAG, false) else { return };
    let mut have: Vec<&str> = g.expected["broken"].as_object().unwrap().keys().map(|s| s.as_str()).collect();
    have.sort();
    let mut want: Vec<&str> = CASES.to_vec();
    want.sort();
    assert_eq!(have, want);
}

#[test]
fn k_greater_than_n() {
    expect_error("k_gt_n");
}
#[test]
fn k_positive_with_n_zero() {
    expect_error("k_without_n");
}
#[test]
fn n_differs_within_an_atse() {
    expect_error("n_differs_in_atse");
}
#[test]
fn n_missing_on_one_junction_of_an_observed_atse() {
    expect_error("n_missing_in_atse");
}
#[test]
fn negative_count() {
    expect_error("negative_count");
}
#[test]
fn nan_count() {
    expect_error("nan_count");
}
#[test]
fn infinite_expression() {
    expect_error("inf_expression");
}
#[test]
fn non_integer_junction_count() {
    expect_error("noninteger_count");
}
#[test]
fn non_integer_expression_is_an_error_by_default() {
    expect_error("noninteger_expression");
}
#[test]
fn non_integer_expression_allowed_when_not_required() {
    let Some(g) = harness::generated(TAG, false) else { return };
    let c = &g.expected["broken"]["noninteger_expression"];
    let path = g.path(c["file"].as_str().unwrap());
    let opts = harness::options(&serde_json::json!({"rna_layer": "length_norm"}));
    let checks = LoadChecks { require_integer_expression: false, ..Default::default() };
    let ds = load_with(&path, &opts, &checks).expect("non-integer expression must load when integers are not required");
    let v = harness::f64s(&g.expected["noninteger_expression_value"]);
    let x = ds.expression.as_ref().unwrap();
    let (cols, vals) = x.row(v[0] as usize);
    let t = cols.iter().position(|&c| c as usize == v[1] as usize).unwrap();
    assert_eq!(vals[t] as f64, v[2]);
    // Splicing counts stay strictly checked.
    let c2 = &g.expected["broken"]["noninteger_count"];
    assert!(load_with(&g.path(c2["file"].as_str().unwrap()), &opts, &checks).is_err());
    // What every command does (`load` with its data options, e.g. `train --require-integer-expression
    // false`): refused by default, with the flag named; accepted with it off.
    let e = format!("{:#}", load(&path, &opts).unwrap_err());
    assert!(e.contains("--require-integer-expression false"), "{e}");
    let relaxed = splicevi::data::DataOptions { require_integer_expression: false, ..opts.clone() };
    assert_eq!(load(&path, &relaxed).unwrap().expression, ds.expression);
}
#[test]
fn missing_event_id_column() {
    expect_error("no_event_id");
}
#[test]
fn missing_event_id_of_a_junction() {
    expect_error("missing_event_id");
}
#[test]
fn cells_differ_between_modalities() {
    expect_error("cells_differ");
}
#[test]
fn splicing_layer_shape_mismatch() {
    expect_error("shape_layer");
}
#[test]
fn expression_shape_mismatch() {
    expect_error("shape_expression");
}
#[test]
fn library_size_shape_mismatch() {
    expect_error("shape_library_size");
}
#[test]
fn missing_rna_layer() {
    expect_error("missing_rna_layer");
}
#[test]
fn missing_junction_counts_layer() {
    expect_error("missing_counts_layer");
}
#[test]
fn missing_modality() {
    expect_error("missing_modality");
}
#[test]
fn missing_batch_column() {
    expect_error("missing_batch_column");
}
#[test]
fn missing_continuous_column() {
    expect_error("missing_continuous_column");
}
#[test]
fn text_column_as_continuous_covariate() {
    expect_error("text_continuous_column");
}
#[test]
fn missing_value_in_batch() {
    expect_error("batch_missing_value");
}
#[test]
fn non_finite_library_size() {
    expect_error("library_size_nan");
}
#[test]
fn junc_ratio_disagrees_with_counts() {
    expect_error("junc_ratio_mismatch");
}
#[test]
fn junc_ratio_on_unobserved_entry() {
    expect_error("junc_ratio_unobserved");
}
#[test]
fn psi_mask_zero_on_observed_entry() {
    expect_error("psi_mask_missing");
}
#[test]
fn psi_mask_one_on_unobserved_entry() {
    expect_error("psi_mask_extra");
}
#[test]
fn old_anndata_compound_obs_is_refused_clearly() {
    expect_error("compound_obs");
}
#[test]
fn matrix_market_k_greater_than_n() {
    expect_error("mtx_k_gt_n");
}

#[test]
fn missing_obs_column_lists_available_columns() {
    let Some(g) = harness::generated(TAG, false) else { return };
    let opts = harness::options(&serde_json::json!({"batch_key": "mouse.id"}));
    let msg = format!("{:#}", load(&g.path("mixed.h5mu"), &opts).unwrap_err());
    for col in harness::strs(&g.expected["obs_columns"]) {
        assert!(msg.contains(&format!("{col:?}")) || msg.contains(&format!("\"rna:{col}\"")), "{col} not listed:\n{msg}");
    }
}

#[test]
fn cli_validate_reports_the_first_error_with_nonzero_exit() {
    let Some(g) = harness::generated(TAG, false) else { return };
    let c = &g.expected["broken"]["k_gt_n"];
    let path = g.path(c["file"].as_str().unwrap());
    let out = Command::new(env!("CARGO_BIN_EXE_splicevi")).arg("validate").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(c["contains"].as_str().unwrap()) && err.contains(c["field"].as_str().unwrap()), "{err}");
}

// ------------------------------------------------------------------------------------------------
// check_dataset on in-memory datasets (what the simulator or code builds).

/// 2 cells, 3 junctions: junctions 0 and 2 form ATSE "a", junction 1 ATSE "b".
fn small() -> Dataset {
    let cells: Vec<String> = vec!["c0".into(), "c1".into()];
    let splicing = Splicing {
        n_cells: 2,
        n_junctions: 3,
        indptr: vec![0, 3, 5],
        junction: vec![0, 1, 2, 0, 2],
        k: vec![1.0, 2.0, 3.0, 0.0, 5.0],
        n: vec![4.0, 2.0, 4.0, 5.0, 5.0],
        psi: vec![0.25, 1.0, 0.75, 0.0, 1.0],
        has_counts: true,
        junc2atse: vec![0, 1, 0],
        atse_ids: vec!["a".into(), "b".into()],
        junction_names: vec!["j0".into(), "j1".into(), "j2".into()],
        gene_names: vec![String::new(); 3],
    };
    let one = |name: &str| Categorical { name: name.into(), codes: vec![0, 0], levels: vec!["0".into()] };
    Dataset {
        source: "mem".into(),
        cell_names: cells,
        gene_names: vec!["g0".into(), "g1".into()],
        expression: Some(Csr { n_rows: 2, n_cols: 2, indptr: vec![0, 1, 3], indices: vec![1, 0, 1], values: vec![3.0, 1.0, 2.0] }),
        library_size: vec![3.0, 3.0],
        splicing,
        obs: Vec::new(),
        obs_tables: Vec::new(),
        covariates: Covariates { batch: one("batch"), labels: one("labels"), ..Default::default() },
    }
}

fn fails(ds: &Dataset, contains: &str, cell: Option<usize>, junction: Option<usize>) {
    let e = check_dataset(ds, &CheckOptions::default()).expect_err("must fail");
    assert!(e.to_string().contains(contains), "{e}");
    assert_eq!(e.cell.as_ref().map(|c| c.0), cell, "{e}");
    assert_eq!(e.feature.as_ref().map(|f| f.index), junction, "{e}");
}

#[test]
fn check_dataset_accepts_a_valid_dataset() {
    check_dataset(&small(), &CheckOptions::default()).unwrap();
}

#[test]
fn check_dataset_k_greater_than_n() {
    let mut ds = small();
    ds.splicing.k[1] = 3.0;
    fails(&ds, "k = 3 > n = 2", Some(0), Some(1));
}

#[test]
fn check_dataset_n_differs_in_atse() {
    let mut ds = small();
    ds.splicing.n[4] = 6.0;
    ds.splicing.psi[4] = 5.0 / 6.0;
    fails(&ds, "differs", Some(1), Some(2));
}

#[test]
fn check_dataset_incomplete_atse() {
    let mut ds = small();
    // cell 1 observes junction 0 but not junction 2 of the same ATSE
    ds.splicing.indptr = vec![0, 3, 4];
    ds.splicing.junction.truncate(4);
    ds.splicing.k.truncate(4);
    ds.splicing.n.truncate(4);
    ds.splicing.psi.truncate(4);
    fails(&ds, "same ATSE", Some(1), Some(2));
}

#[test]
fn check_dataset_unsorted_junctions_and_bad_values() {
    let mut ds = small();
    ds.splicing.junction.swap(0, 1);
    fails(&ds, "ascending", Some(0), Some(0));
    let mut ds = small();
    ds.splicing.k[3] = 0.5;
    ds.splicing.psi[3] = 0.1;
    fails(&ds, "not an integer", Some(1), Some(0));
    let mut ds = small();
    ds.splicing.psi[0] = 0.5;
    fails(&ds, "psi = 0.5 but k / n", Some(0), Some(0));
    let mut ds = small();
    ds.expression.as_mut().unwrap().values[0] = 1.5;
    let e = check_dataset(&ds, &CheckOptions::default()).unwrap_err();
    assert_eq!(e.feature.as_ref().map(|f| (f.kind, f.index)), Some(("gene", 1)), "{e}");
    check_dataset(&ds, &CheckOptions { require_integer_expression: false, ..Default::default() }).unwrap();
}

#[test]
fn check_dataset_sizes() {
    let mut ds = small();
    ds.library_size.pop();
    fails(&ds, "1 values for 2 cells", None, None);
    let mut ds = small();
    ds.covariates.batch.codes = vec![0, 1];
    fails(&ds, "out of range", Some(1), None);
}

/// ATSE ids that are numbers are sorted as numbers by the loader (`atse_index`), so `check_dataset`
/// accepts that order (`validate` refused whole-number event ids that every other command loaded),
/// as well as string order, and still refuses ids in neither order or repeated.
#[test]
fn check_dataset_atse_ids_in_numeric_or_string_order() {
    let n = small().splicing.atse_ids.len();
    assert!(n >= 2);
    let with_ids = |ids: Vec<String>| {
        let mut ds = small();
        ds.splicing.atse_ids = ids;
        check_dataset(&ds, &CheckOptions::default())
    };
    // 9, 10 (numeric order; as strings "10" < "9")
    with_ids((0..n).map(|a| (a + 9).to_string()).collect()).unwrap();
    with_ids((0..n).map(|a| format!("atse_{a:03}")).collect()).unwrap();
    let mut back: Vec<String> = (0..n).map(|a| format!("atse_{a:03}")).collect();
    back.reverse();
    let e = with_ids(back).unwrap_err();
    assert!(e.to_string().contains("not sorted and unique"), "{e}");
    let mut same: Vec<String> = (0..n).map(|a| (a + 9).to_string()).collect();
    same[1] = same[0].clone();
    assert!(with_ids(same).is_err());
}
