//! The main job end to end through the binary: simulate → train (with flags) → embed, and the
//! embedding read back with Python anndata. Also: bad options and missing obs columns are rejected
//! before any work starts.

use std::process::Command;

#[path = "common/cli.rs"]
mod cli;
use cli::{bin, fails, ok, python};

#[test]
fn simulate_train_embed_and_read_with_anndata() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("toy.h5mu");
    let run = tmp.path().join("run");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "3", "--out"]).arg(&data));
    let log = ok(bin()
        .args(["train"])
        .arg(&data)
        .arg("--out")
        .arg(&run)
        .args(["--batch-key", "batch", "--max-epochs", "3", "--n-epochs-kl-warmup", "1", "--dispersion", "gene-batch", "--n-latent", "5"]));
    assert!(log.contains("epoch 3/3"), "{log}");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model"]["dispersion"], "gene-batch");
    assert_eq!(cfg["model"]["n_latent"], 5);
    assert_eq!(cfg["train"]["max_epochs"], 3);
    let metrics = std::fs::read_to_string(run.join("metrics.tsv")).unwrap();
    assert_eq!(metrics.lines().count(), 4, "{metrics}");

    let out = tmp.path().join("latent.h5ad");
    ok(bin().arg("embed").arg(&run).arg(&data).arg("--out").arg(&out).args(["--modality", "splicing"]));
    let script = r#"
import sys, anndata, numpy as np
a = anndata.read_h5ad(sys.argv[1])
z = a.obsm["X_splicevi"]
assert z.shape == (a.n_obs, 5), z.shape
assert np.isfinite(z).all()
assert np.allclose(z, a.obsm["X_splicevi_splicing"])
assert a.obsm["X_splicevi_joint"].shape[1] == 5
assert "subtype" in a.obs.columns and "batch" in a.obs.columns
print("ok", a.n_obs)
"#;
    let py = Command::new(python()).arg("-c").arg(script).arg(&out).output();
    match py {
        Ok(o) if o.status.success() => assert!(String::from_utf8_lossy(&o.stdout).contains("ok 200")),
        Ok(o) if std::env::var("SPLICEVI_SKIP_PYTHON").is_ok_and(|v| v == "1") => {
            eprintln!("SKIPPED python check: {}", String::from_utf8_lossy(&o.stderr))
        }
        Ok(o) => panic!("anndata could not read the embedding:\n{}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("no python ({e}); set SPLICEVI_SKIP_PYTHON=1 to skip"),
    }
}

#[test]
fn bad_options_fail_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("toy.h5mu");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "0", "--out"]).arg(&data));
    let run = tmp.path().join("run");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--dispersion", "gene-everything"], "gene-everything"),
        (vec!["--gene-likelihood", "gaussian"], "gaussian"),
        (vec!["--batch-key", "no_such_column"], "no_such_column"),
        (vec!["--lr", "-1"], "lr"),
        (vec!["--preset", "fancy"], "fancy"),
        (vec!["--max-epochs", "many"], "max_epochs"),
        (vec!["--device", "tpu"], "tpu"),
        // no GPU here: unavailable, an error (never a fallback to the CPU).
        (vec!["--device", "cuda"], "--device cuda:0"),
    ];
    for (flags, needle) in cases {
        let text = fails(bin().arg("train").arg(&data).arg("--out").arg(&run).args(&flags));
        assert!(text.contains(needle), "{flags:?}: error does not name `{needle}`:\n{text}");
        assert!(!run.join("model.safetensors").exists(), "{flags:?} wrote a checkpoint");
    }
    // `auto` runs on the CPU and says why in one line.
    let text = ok(bin().arg("--device").arg("auto").arg("check-fixture").arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/default-model")));
    assert!(text.contains("device: cpu"), "{text}");
    // A config file with a misspelt option names the file and the key.
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "[model]\nn_latnet = 4\n").unwrap();
    let text = fails(bin().arg("train").arg(&data).arg("--out").arg(&run).arg("--config").arg(&cfg));
    assert!(text.contains("c.toml") && text.contains("n_latnet"), "{text}");
    // The kernel profile needs a CUDA device: refused on the CPU, not silently skipped.
    let text = fails(bin().args(["--device", "cpu", "bench", "--size", "toy", "--profile-steps", "1"]));
    assert!(text.contains("--profile-steps") && text.contains("--device cuda"), "{text}");
}

/// `bench` runs the epoch's minibatches in order, its last smaller one included: at `toy` (200 cells,
/// 180 of them for training with the default split, so minibatches of 64, 64, 52 at batch 64) three
/// steps are one epoch, and the TSV row says so (cells/s × s/step × steps = the training cells).
#[test]
fn bench_times_an_epoch_of_real_minibatches() {
    let tmp = tempfile::tempdir().unwrap();
    let tsv = tmp.path().join("bench.tsv");
    let args = ["bench", "--size", "toy", "--preset", "default", "--batch-size", "64", "--steps", "3", "--tsv"];
    ok(bin().args(args).arg(&tsv));
    let text = std::fs::read_to_string(&tsv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let col = |name: &str| {
        let k = lines[0].split('\t').position(|h| h == name).unwrap_or_else(|| panic!("no column {name}: {text}"));
        lines[1].split('\t').nth(k).unwrap().to_string()
    };
    assert_eq!(col("steps"), "3");
    let (s_step, cps) = (col("s_per_step").parse::<f64>().unwrap(), col("cells_per_s").parse::<f64>().unwrap());
    // (Within the printed rounding; the first minibatch three times would be 192 cells.)
    let cells = cps * s_step * 3.0;
    assert!((cells - 180.0).abs() < 0.04 * 180.0, "3 steps processed {cells:.1} cells, not one epoch of 180: {text}");
}
