//! Conformance with the original PyTorch SpliceVI: every case in ../shared/fixtures (or
//! $SPLICEVI_FIXTURES) must reproduce every expected tensor within the README's tolerances, in f32.

use splicevi::cmd::check_fixture::{check_case, check_case_with, print_report};

#[path = "common/emu.rs"]
mod emu;
use std::path::PathBuf;

const CASES: [&str; 7] = [
    "default-model",
    "paper-config",
    "vanilla-binomial",
    "betabinomial-concat",
    "dmscalar-cell-ln",
    "library-encoder",
    "partial-chunked",
];

fn fixtures_dir() -> PathBuf {
    match std::env::var_os("SPLICEVI_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"),
    }
}

fn case_dir(name: &str) -> PathBuf {
    let d = fixtures_dir().join(name);
    assert!(
        d.join("config.json").is_file(),
        "fixture case {} not found (set SPLICEVI_FIXTURES to the fixtures directory)",
        d.display()
    );
    d
}

#[test]
fn all_fixture_cases_pass() {
    let mut failed = Vec::new();
    for name in CASES {
        let r = check_case(&case_dir(name)).unwrap_or_else(|e| panic!("case {name}: {e:#}"));
        print_report(&r, false);
        // Every expected tensor (and the parameter table) was compared.
        assert!(r.checks.len() > 50, "case {name}: only {} checks", r.checks.len());
        assert!(r.checks.iter().any(|c| c.name.starts_with("grad.")), "case {name}: no gradient compared");
        if !r.passed() {
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "fixture cases failed: {failed:?}");
}

/// Every case through the CUDA step on every device (`emu::devices`: cuda:0 where usable, always the
/// host emulation): its loss terms, z and all gradients against the original's, with the same
/// tolerances in f32; with `--precision bf16`, `TOL_BF16` for the loss terms and the whole gradient and
/// `TOL_BF16_TENSOR` for each gradient tensor (the worst error of each is printed). Cases whose options the step lacks are skipped
/// with the reason; the others must run (`MUST_RUN_ON_DEVICE`).
/// The cases whose every option the CUDA step implements (BatchNorm, universal / per-cell weights, the
/// log-normal latent included).
const MUST_RUN_ON_DEVICE: [&str; 7] = ["default-model", "paper-config", "partial-chunked", "vanilla-binomial", "dmscalar-cell-ln", "library-encoder", "betabinomial-concat"];

#[test]
fn fixture_cases_pass_through_the_cuda_step() {
    use splicevi::cuda::gemm::GemmPrecision;
    for dev in emu::devices("fixture cases through the CUDA step") {
        for precision in [GemmPrecision::F32, GemmPrecision::Bf16] {
            let mut failed = Vec::new();
            for name in CASES {
                let r = check_case_with(&case_dir(name), Some(&dev), precision).unwrap_or_else(|e| panic!("case {name}: {e:#}"));
                let worst = r.checks.iter().filter(|c| c.metric == "rel").map(|c| c.err).fold(0.0, f64::max);
                println!("{name} {precision:?}: worst relative error {worst:.2e}");
                print_report(&r, false);
                if MUST_RUN_ON_DEVICE.contains(&name) {
                    assert!(r.skipped.is_none(), "case {name} must run on the device: {:?}", r.skipped);
                }
                if r.skipped.is_some() {
                    continue;
                }
                assert!(r.checks.iter().filter(|c| c.name.starts_with("grad.")).count() > 10, "case {name}: too few gradients compared");
                assert!(r.checks.iter().any(|c| c.name == "loss.loss"), "case {name}: the loss was not compared");
                if precision == GemmPrecision::Bf16 {
                    let whole = r.checks.iter().find(|c| c.name.starts_with("grad (every")).expect("bf16: the whole gradient is checked");
                    println!("{name} Bf16: whole gradient {:.2e}", whole.err);
                }
                if !r.passed() {
                    failed.push(name);
                }
            }
            assert!(failed.is_empty(), "fixture cases failed through the CUDA step on {} in {precision:?}: {failed:?}", dev.info().name);
        }
    }
}

/// The comparison must be able to fail: the same case with a different KL weight breaks the loss and
/// the gradients, and a perturbed parameter breaks the forward outputs.
#[test]
fn perturbed_case_fails() {
    let src = case_dir("default-model");
    let tmp = tempfile::tempdir().unwrap();
    for f in ["inputs.safetensors", "params.safetensors", "expected.safetensors"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["kl_weight"] = serde_json::json!(0.5);
    std::fs::write(tmp.path().join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    let r = check_case(tmp.path()).unwrap();
    let failed: Vec<&str> = r.failures().iter().map(|c| c.name.as_str()).collect();
    assert!(failed.contains(&"loss.loss"), "loss.loss should fail with kl_weight 0.5: {failed:?}");
    assert!(failed.iter().any(|n| n.starts_with("grad.")), "some gradient should fail: {failed:?}");
    assert!(!failed.contains(&"inference.qz_m"), "qz_m does not depend on the KL weight");
    // A different module option changes the parameter table.
    cfg["kl_weight"] = serde_json::json!(1.0);
    cfg["module_args"]["expression_architecture"] = serde_json::json!("vanilla");
    std::fs::write(tmp.path().join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    let err = check_case(tmp.path()).err().expect("loading params into a different architecture must fail");
    assert!(format!("{err:#}").contains("missing"), "{err:#}");
}
