//! The main job end to end through the binary: simulate → train (with flags) → embed, and the
//! embedding read back with Python anndata. Also: bad options and missing obs columns are rejected
//! before any work starts.

use std::process::Command;

#[path = "common/cli.rs"]
mod cli;
use cli::{bin, fails, fixtures_dir, ok, python};

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
    // The block size is --block-cells, as in the other analyses (--batch-size, its old name, still
    // works); the means do not depend on it.
    for (flag, name) in [("--block-cells", "b7.h5ad"), ("--batch-size", "b9.h5ad")] {
        let size = if flag == "--block-cells" { "7" } else { "9" };
        ok(bin().arg("embed").arg(&run).arg(&data).arg("--out").arg(tmp.path().join(name)).args(["--modality", "splicing", "--no-plots", flag, size]));
    }
    let text = fails(bin().arg("embed").arg(&run).arg(&data).arg("--out").arg(tmp.path().join("b0.h5ad")).args(["--block-cells", "0"]));
    assert!(text.contains("--block-cells must be at least 1"), "{text}");
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
        // torch's clip_grad_norm_ would zero the gradients at 0 and reverse them below; none turns it off
        (vec!["--gradient-clip", "0"], "gradient_clip"),
        (vec!["--gradient-clip=-5"], "gradient_clip"),
        (vec!["--eps", "0"], "eps"),
        (vec!["--lr-factor", "0"], "lr_factor"),
        // JSON has no NaN: it would reach the option as null
        (vec!["--lr", "nan"], "--lr nan: not a finite number"),
        // finite as f64, infinite in Adam's f32
        (vec!["--lr", "1e39"], "lr must be a positive number that a 32-bit float holds"),
        // a dispersion per label needs labels
        (vec!["--dispersion", "gene-label"], "--dispersion gene-label needs --labels-key"),
    ];
    for (flags, needle) in cases {
        let text = fails(bin().arg("train").arg(&data).arg("--out").arg(&run).args(&flags));
        assert!(text.contains(needle), "{flags:?}: error does not name `{needle}`:\n{text}");
        assert!(!run.join("model.safetensors").exists(), "{flags:?} wrote a checkpoint");
    }
    // `auto` runs on the CPU and says why in one line.
    let text = ok(bin().arg("--device").arg("auto").arg("check-fixture").arg(fixtures_dir().join("default-model")));
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

/// `bench --size small --preset PRESETS --steps 2` (a few seconds): its TSV rows as (preset, column → value).
fn bench_small_rows(presets: &str) -> (Vec<std::collections::HashMap<String, String>>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let tsv = tmp.path().join("bench.tsv");
    let out = ok(bin().args(["--device", "cpu", "bench", "--size", "small", "--preset", presets, "--steps", "2", "--max-seconds", "1", "--tsv"]).arg(&tsv));
    let text = std::fs::read_to_string(&tsv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let rows = lines.map(|l| header.iter().map(|h| h.to_string()).zip(l.split('\t').map(String::from)).collect()).collect();
    (rows, out)
}

/// Each configuration reports its own peak memory, not the process's peak so far: `paper` (hidden 128,
/// code_dim 64) needs more than `default`, so `default` run after it must report less (VmHWM never
/// falls unless reset, so before the reset the second row repeated the first's).
#[test]
fn bench_reports_each_configurations_own_peak_memory() {
    let (rows, out) = bench_small_rows("paper,default");
    assert_eq!(rows.len(), 2, "{out}");
    let peak = |i: usize| rows[i]["peak_rss_mb"].parse::<f64>().unwrap();
    assert!(peak(1) < peak(0), "default after paper reports {} MB, paper {} MB: not its own peak\n{out}", peak(1), peak(0));
    assert!(out.contains("each configuration's own peak"), "{out}");
}

/// The original's timing (default options, batch 256) is compared only with the default preset's row:
/// paper and robust get "-", not a speed-up over another configuration's time.
#[test]
fn bench_compares_only_the_preset_the_original_was_timed_with() {
    let (rows, out) = bench_small_rows("default,paper,robust");
    assert_eq!(rows.len(), 3, "{out}");
    assert_eq!(rows[0]["preset"], "default");
    assert_eq!(rows[0]["original_s_per_step"], "0.7250", "{out}");
    assert!(rows[0]["speedup"].ends_with('x'), "{out}");
    for r in &rows[1..] {
        assert_eq!((r["original_s_per_step"].as_str(), r["speedup"].as_str()), ("-", "-"), "{} is compared with the default preset's timing:\n{out}", r["preset"]);
    }
    assert!(out.contains("timed only with the default preset"), "{out}");
}

/// A misspelt size or preset is refused before the first configuration runs: no result row, no
/// device line (which `bench` prints when it measures the floor, before its first run).
#[test]
fn bench_checks_every_size_and_preset_before_running() {
    for (sizes, presets, bad) in [("toy,tiny", "default", "tiny"), ("toy", "default,nope", "nope")] {
        let text = fails(bin().args(["--device", "cpu", "bench", "--steps", "1", "--size", sizes, "--preset", presets]));
        assert!(text.contains(&format!("`{bad}`")), "the error does not name `{bad}`:\n{text}");
        assert!(!text.contains("GEMM peak") && !text.contains("toy\tdefault"), "bench ran before refusing `{bad}`:\n{text}");
    }
}

/// No command's `--out` may overwrite the data it reads or a file of the run directory it reads, nor be
/// a directory; each is refused before any work, and the inputs keep their bytes.
#[test]
fn outputs_never_overwrite_their_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("toy.h5mu");
    let run = tmp.path().join("run");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "0", "--out"]).arg(&data));
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--max-epochs", "1", "--quiet", "--no-plots"]));
    let (data_bytes, model_bytes) = (std::fs::read(&data).unwrap(), std::fs::read(run.join("model.safetensors")).unwrap());
    let dir = tmp.path().join("a_dir");
    std::fs::create_dir(&dir).unwrap();
    // the same file through another spelling of its path
    let data_again = tmp.path().join(".").join("toy.h5mu");
    let groups = ["--groupby", "subtype", "--group1", "T0_a", "--no-plots"];
    let commands: Vec<(&str, Vec<&str>)> = vec![
        ("embed", vec!["--no-plots"]),
        ("impute", vec![]),
        ("normalize-expression", vec![]),
        ("diff-splicing", groups.to_vec()),
        ("diff-expression", groups[..4].to_vec()),
        ("evaluate", vec!["--no-plots"]),
    ];
    for (cmd, extra) in &commands {
        for (out, needle) in [(&data, "is the input data"), (&data_again, "is the input data"), (&run.join("model.safetensors"), "inside the run directory"), (&run.join("new.tsv"), "inside the run directory"), (&dir, "is a directory")] {
            let text = fails(bin().arg(cmd).arg(&run).arg(&data).args(extra).arg("--out").arg(out));
            assert!(text.contains(needle), "{cmd} --out {}: error does not say `{needle}`:\n{text}", out.display());
        }
    }
    // train's run directory cannot be the data file
    let text = fails(bin().arg("train").arg(&data).arg("--out").arg(&data).args(["--max-epochs", "1"]));
    assert!(text.contains("not a directory"), "{text}");
    assert_eq!(std::fs::read(&data).unwrap(), data_bytes, "the data changed");
    assert_eq!(std::fs::read(run.join("model.safetensors")).unwrap(), model_bytes, "the checkpoint changed");
    assert!(!run.join("new.tsv").exists());
}

/// A run directory is not trained into twice by accident: without --resume or --overwrite it is an
/// error; --resume refuses options other than --max-epochs (they would be ignored); --overwrite
/// removes the old run's files, so an adversary checkpoint of a run with batches does not outlive it.
#[test]
fn an_existing_run_is_resumed_or_overwritten_never_mixed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("toy.h5mu");
    let run = tmp.path().join("run");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "0", "--out"]).arg(&data));
    let quiet = ["--quiet", "--no-plots"];
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--max-epochs", "1", "--batch-key", "batch"]).args(quiet));
    assert!(run.join("adversary.safetensors").exists() && run.join("features.json").exists());
    let text = fails(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--max-epochs", "1"]).args(quiet));
    assert!(text.contains("already holds a run") && text.contains("--resume") && text.contains("--overwrite"), "{text}");
    for (flags, needle) in [(vec!["--lr", "0.5"], "--lr"), (vec!["--preset", "robust"], "--preset robust"), (vec!["--batch-key", "subtype"], "a data option (--batch-key")] {
        let text = fails(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--resume", "--max-epochs", "2"]).args(&flags).args(quiet));
        assert!(text.contains("only --max-epochs may change") && text.contains(needle), "{flags:?}:\n{text}");
    }
    let cfg = std::fs::read_to_string(run.join("config.json")).unwrap();
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--resume", "--max-epochs", "2"]).args(quiet));
    let resumed: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    let before: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(resumed["model"], before["model"]);
    assert_eq!(resumed["train"]["lr"], before["train"]["lr"]);
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--max-epochs", "1", "--overwrite"]).args(quiet));
    assert!(!run.join("adversary.safetensors").exists() && !run.join("adversary_optimizer.safetensors").exists(), "the old run's adversary outlived --overwrite");
    let metrics = std::fs::read_to_string(run.join("metrics.tsv")).unwrap();
    assert_eq!(metrics.lines().count(), 2, "one epoch after --overwrite:\n{metrics}");
    let text = fails(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--resume", "--overwrite"]));
    assert!(text.contains("cannot be used with"), "{text}");
}

/// An interrupted write leaves nothing behind: SIGINT while `simulate` streams its output (the
/// temporary file seen first, so the signal lands mid-write) removes the temporary file, writes no
/// output, and exits with 130.
#[cfg(unix)]
#[test]
fn an_interrupted_write_leaves_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("big.h5mu");
    let mut child = bin().args(["simulate", "--size", "medium", "--n-cells", "6000", "--seed", "0", "--out"]).arg(&out).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let temps = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".big.h5mu.")).collect()
    };
    let t0 = std::time::Instant::now();
    while temps().is_empty() {
        assert!(t0.elapsed().as_secs() < 60, "no temporary file appeared");
        assert!(child.try_wait().unwrap().is_none(), "simulate ended before its temporary file was seen");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "simulate was not interrupted mid-write (it must still be writing 200 ms after its temporary file appeared):\n{err}");
    assert!(err.contains("unfinished output file(s) removed"), "{err}");
    assert!(temps().is_empty(), "temporary files left: {:?}", temps());
    assert!(!out.exists(), "a half-written output was renamed into place");
}

/// A file-size limit (`ulimit -f`) makes the write fail with an error naming the output, and its
/// temporary file is removed (SIGXFSZ used to end the process silently, leaving it behind).
#[test]
fn a_file_size_limit_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("toy.h5mu");
    let o = Command::new("bash")
        .arg("-c")
        .arg("ulimit -f 50; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_splicevi"))
        .args(["simulate", "--size", "toy", "--seed", "0", "--out"])
        .arg(&out)
        .env("HDF5_USE_FILE_LOCKING", "FALSE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "not an error exit (a signal?): {:?}\n{err}", o.status);
    assert!(err.contains(&format!("writing {}", out.display())), "{err}");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A run that diverges in its first epoch leaves no checkpoint: the error says so (not "the last good
/// checkpoint is kept"), the analyses and --resume say there is none, and training into the directory
/// again needs no --overwrite (there is nothing to keep).
#[test]
fn a_run_that_diverges_says_which_checkpoint_it_keeps() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("toy.h5mu");
    let run = tmp.path().join("run");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "0", "--out"]).arg(&data));
    let diverge = ["--lr", "10", "--gradient-clip", "none", "--max-epochs", "3", "--quiet", "--no-plots"];
    let text = fails(bin().arg("train").arg(&data).arg("--out").arg(&run).args(diverge));
    assert!(text.contains("stopped in epoch 1") && text.contains("before any checkpoint was written"), "{text}");
    assert!(!run.join("model.safetensors").exists());
    let text = fails(bin().arg("embed").arg(&run).arg(&data).arg("--out").arg(tmp.path().join("e.h5ad")));
    assert!(text.contains("no checkpoint"), "{text}");
    let text = fails(bin().arg("train").arg(&data).arg("--out").arg(&run).arg("--resume"));
    assert!(text.contains("no checkpoint"), "{text}");
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--max-epochs", "1", "--quiet", "--no-plots"]));
    assert!(run.join("model.safetensors").exists());
}

/// A data set too small to leave a validation cell at the default train_size says so in the last line
/// (it used to blame train_size 1), and the divergence message counts epochs from 1 throughout.
#[test]
fn a_run_without_validation_cells_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("nine.h5mu");
    ok(bin().args(["simulate", "--size", "toy", "--n-cells", "9", "--seed", "0", "--out"]).arg(&data));
    let text = ok(bin().arg("train").arg(&data).arg("--out").arg(tmp.path().join("r9")).args(["--max-epochs", "1", "--no-plots"]));
    assert!(text.contains("no validation cells: train_size 0.9 of 9 cells, rounded up, leaves none (9 train)"), "{text}");
    let text = ok(bin().arg("train").arg(&data).arg("--out").arg(tmp.path().join("r1")).args(["--max-epochs", "1", "--train-size", "1", "--no-plots"]));
    assert!(text.contains("no validation cells: train_size 1)"), "{text}");
}

/// TOML has no null: a --config file clears an optional option with "none", as the flag does, and
/// config.json records the cleared value; an enum's variant spelled "None" keeps its meaning.
#[test]
fn a_config_file_clears_optional_options_and_config_json_records_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("toy.h5mu");
    let run = tmp.path().join("run");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "1", "--out"]).arg(&data));
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "[model]\nn_latent = \"none\"\nmodality_penalty = \"None\"\n[train]\ngradient_clip = \"none\"\nn_epochs_kl_warmup = \"none\"\n").unwrap();
    // robust sets n_latent 10 and a 10-epoch warm-up
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--preset", "robust", "--max-epochs", "1", "--quiet", "--no-plots", "--config"]).arg(&cfg));
    let c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert!(c["model"]["n_latent"].is_null() && c["train"]["gradient_clip"].is_null() && c["train"]["n_epochs_kl_warmup"].is_null(), "{c}");
    assert_eq!(c["model"]["modality_penalty"], "None");
}

/// --resume with nothing left to train changes nothing: 0 with a message when the run already is what
/// was asked, an error when --max-epochs asks for fewer epochs than it has; config.json keeps its
/// max_epochs (it used to be rewritten to the lower value) and the data is not read.
#[test]
fn resume_with_nothing_left_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("toy.h5mu");
    let run = tmp.path().join("run");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "1", "--out"]).arg(&data));
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--max-epochs", "3", "--quiet", "--no-plots"]));
    let files = || ["config.json", "train_state.json", "model.safetensors", "metrics.tsv"].map(|f| std::fs::read(run.join(f)).unwrap());
    let before = files();
    let text = fails(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--resume", "--max-epochs", "2"]));
    assert!(text.contains("already trained 3 epochs") && text.contains("cannot be shortened"), "{text}");
    for extra in [&[][..], &["--max-epochs", "3"]] {
        let text = ok(bin().arg("train").arg(tmp.path().join("no_such.h5mu")).arg("--out").arg(&run).arg("--resume").args(extra));
        assert!(text.contains("nothing left to train") && text.contains("trained 3 epochs") && text.contains("--max-epochs M with M above 3"), "{extra:?}: {text}");
    }
    assert!(files() == before, "a resume with nothing to train changed the run");
}

/// Early stopping says after which epoch it stopped, for how many epochs the loss did not improve and
/// which epoch was best, counted from 1 as the progress lines count (metrics.tsv's `epoch` counts from
/// 0); with restore_best the last line names the restored epoch and its loss. --resume cannot
/// continue a run that stopped itself: it says so (0), or fails when --max-epochs asks for more.
#[test]
fn early_stopping_says_when_and_which_weights_it_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("toy.h5mu");
    let run = tmp.path().join("run");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "1", "--out"]).arg(&data));
    let flags = ["--max-epochs", "200", "--early-stopping-warmup-epochs", "0", "--early-stopping-patience", "3", "--lr", "0.03", "--n-epochs-kl-warmup", "2", "--restore-best", "true", "--no-plots"];
    let text = ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(flags));
    assert!(!text.contains("Some("), "{text}");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("train_state.json")).unwrap()).unwrap();
    assert_eq!(state["stopped_early"], true, "{text}");
    let (done, best) = (state["epochs_done"].as_u64().unwrap(), state["early_stopping"]["best_epoch"].as_u64().unwrap());
    let best_loss = state["early_stopping"]["best"].as_f64().unwrap();
    // metrics.tsv: the best row is `best` (from 0), the last `done - 1`
    let metrics = std::fs::read_to_string(run.join("metrics.tsv")).unwrap();
    let rows: Vec<Vec<&str>> = metrics.lines().map(|l| l.split('\t').collect()).collect();
    let col = |name: &str| rows[0].iter().position(|h| *h == name).unwrap();
    assert_eq!(rows.last().unwrap()[col("epoch")], (done - 1).to_string());
    assert_eq!(rows[1 + best as usize][col("reconstruction_loss_validation")].parse::<f64>().unwrap(), best_loss);
    let stop = format!("early stopping after epoch {done}: reconstruction_loss_validation did not improve for 3 epochs (best {best_loss:.4} at epoch {})", best + 1);
    assert!(text.contains(&stop), "no `{stop}` in:\n{text}");
    assert!(text.contains(&format!("done: {done} epochs (early stopping); restored the weights of epoch {}, the best (validation reconstruction loss {best_loss:.4}", best + 1)), "{text}");
    let config = std::fs::read(run.join("config.json")).unwrap();
    let text = ok(bin().arg("train").arg(&data).arg("--out").arg(&run).arg("--resume"));
    assert!(text.contains(&format!("nothing left to train: {} stopped early after epoch {done}", run.display())) && text.contains("--early-stopping-patience"), "{text}");
    let text = fails(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--resume", "--max-epochs", "300"]));
    assert!(text.contains(&format!("stopped early after epoch {done}")), "{text}");
    assert_eq!(std::fs::read(run.join("config.json")).unwrap(), config, "config.json rewritten");
}

/// The §12 corrections (model.md §14.3) from a --config file and flags reach config.json, and a run
/// trained with them is analysed with them (the analyses rebuild the model from config.json): φ starts
/// near 100 and stays there after an epoch, ρ of the vanilla expression decoder sums to 1 over genes;
/// a run without them keeps the original's φ ≈ 4.6 and unnormalised ρ. `train --help` names the items.
#[test]
fn quirk_corrections_reach_config_json_and_the_analyses() {
    use splicevi::analysis::posterior::{open_run, DecodeOptions};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("toy.h5mu");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "4", "--out"]).arg(&data));
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "[model]\nmixing_variance = \"independent\"\nconcentration_init = \"phi_100\"\n").unwrap();
    let common = ["--expression-architecture", "vanilla", "--max-epochs", "1", "--quiet", "--no-plots"];
    let fixed = tmp.path().join("fixed");
    // (§12.12's option belongs to the linear expression decoder: with the vanilla one it is refused)
    let text = fails(bin().arg("train").arg(&data).arg("--out").arg(&fixed).args(common).args(["--linear-expression-layer-norm", "false"]));
    assert!(text.contains("--linear-expression-layer-norm false has no effect here") && !fixed.join("config.json").exists(), "{text}");
    ok(bin().arg("train").arg(&data).arg("--out").arg(&fixed).args(common).arg("--config").arg(&cfg).args(["--expression-scale-softmax", "true"]));
    let orig = tmp.path().join("orig");
    ok(bin().arg("train").arg(&data).arg("--out").arg(&orig).args(common));
    for (run, on) in [(&fixed, true), (&orig, false)] {
        let c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
        let m = &c["model"];
        let want = if on { ["independent", "phi_100"] } else { ["sqrt_weights", "log_100"] };
        assert_eq!([m["mixing_variance"].as_str().unwrap(), m["concentration_init"].as_str().unwrap()], want, "{c}");
        assert_eq!((m["expression_scale_softmax"].as_bool(), m["linear_expression_layer_norm"].as_bool()), (Some(on), Some(true)), "{c}");
        let o = open_run(run, &data).unwrap();
        assert_eq!(o.model.cfg, o.run.model);
        assert_eq!(o.model.cfg.expression_scale_softmax, on);
        let phi: Vec<f32> = o.params.by_name("log_phi_j").unwrap().iter().map(|&v| splicevi::model::real::softplus(v)).collect();
        let mean = phi.iter().sum::<f32>() / phi.len() as f32;
        assert!(if on { mean > 50.0 } else { mean < 8.0 }, "{}: mean φ {mean}", run.display());
        let cells: Vec<usize> = (0..20).collect();
        let dec = o.posterior().unwrap().decode(&cells, &DecodeOptions { transform_batch: vec![], n_samples: 3, seed: 1 }, None, true).unwrap();
        let rho = dec.expr.unwrap();
        for i in 0..cells.len() {
            let s: f32 = rho.row(i).iter().sum();
            assert_eq!((s - 1.0).abs() < 1e-4, on, "{}: ρ of cell {i} sums to {s}", run.display());
        }
    }
    let help = ok(bin().args(["train", "--help"]));
    for flag in ["--mixing-variance", "--concentration-init", "--expression-scale-softmax", "--linear-expression-layer-norm"] {
        assert!(help.contains(flag), "train --help lacks {flag}");
    }
    for item in ["§12.4", "§12.9", "§12.11", "§12.12"] {
        assert!(help.contains(item), "train --help does not name {item}");
    }
}

/// `--cross-decoding` acts with concatenated latents only: given without them it is refused; `robust`
/// switched to an averaged latent keeps its preset value without a word; with `concatenate` it trains
/// and is recorded in `config.json`.
#[test]
fn cross_decoding_needs_concatenated_latents() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("toy.h5mu");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "0", "--out"]).arg(&data));
    let quiet = ["--max-epochs", "1", "--quiet", "--no-plots"];
    let text = fails(bin().arg("train").arg(&data).arg("--out").arg(tmp.path().join("a")).args(quiet).args(["--cross-decoding", "none"]));
    assert!(text.contains("--cross-decoding none has no effect here") && text.contains("modality_weights = equal"), "{text}");
    ok(bin().arg("train").arg(&data).arg("--out").arg(tmp.path().join("b")).args(quiet).args(["--preset", "robust", "--modality-weights", "equal"]));
    let run = tmp.path().join("c");
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(quiet).args(["--modality-weights", "concatenate", "--cross-decoding", "splicing"]));
    let c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(c["model"]["cross_decoding"], "splicing", "{c}");
}

/// A covariate named twice is refused before the data is read (it trained two identical one-hot
/// blocks or inputs).
#[test]
fn a_covariate_named_twice_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("toy.h5mu");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "0", "--out"]).arg(&data));
    for (flag, col) in [("--categorical-covariate", "cell_type"), ("--continuous-covariate", "library_size")] {
        let text = fails(bin().arg("train").arg(&data).arg("--out").arg(tmp.path().join("r")).args(["--max-epochs", "1", "--quiet", "--no-plots", flag, col, flag, col]));
        assert!(text.contains(&format!("{flag} {col} is given twice")), "{text}");
        assert!(!tmp.path().join("r").join("config.json").exists());
    }
}

/// A copy of `data` with PSI only: `junc_ratio` and `psi_mask`, no count layers (model.md §14.2).
fn psi_only_copy(data: &std::path::Path, out: &std::path::Path) {
    let mut ds = splicevi::data::load::load(data, &Default::default()).unwrap();
    ds.splicing.has_counts = false;
    splicevi::data::h5write::write_h5mu(out, &ds, None, None, &[], Default::default()).unwrap();
}

/// PSI-only data has no counts (the loader's k = 0, n = 1 are placeholders): every count likelihood and
/// everything that reads k or n refuses it before any work, naming the file and the flag to use;
/// `validate` says the same, and the BCE loss and `--method decoder` run.
#[test]
fn psi_only_data_is_refused_by_whatever_reads_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, psi) = (tmp.path().join("toy.h5mu"), tmp.path().join("psi_only.h5mu"));
    ok(bin().args(["simulate", "--size", "toy", "--seed", "0", "--out"]).arg(&data));
    psi_only_copy(&data, &psi);
    let quiet = ["--max-epochs", "1", "--quiet", "--no-plots"];
    let run = tmp.path().join("r");
    for loss in [None, Some("binomial"), Some("beta_binomial"), Some("dirichlet_multinomial")] {
        let text = fails(bin().arg("train").arg(&psi).arg("--out").arg(&run).args(quiet).args(loss.map(|l| vec!["--splicing-loss-type", l]).unwrap_or_default()));
        assert!(text.contains("psi_only.h5mu: has PSI only") && text.contains("--splicing-loss-type bce"), "{loss:?}:\n{text}");
        assert!(!run.join("config.json").exists(), "{loss:?}: a run was started");
    }
    // robust's scalar DM concentration rests under another loss (a preset's option, not the user's):
    // the advice is the loss alone, and it trains
    let text = fails(bin().arg("train").arg(&psi).arg("--out").arg(&run).args(quiet).args(["--preset", "robust"]));
    assert!(text.contains("--splicing-loss-type bce,") && !text.contains("--dm-concentration"), "{text}");
    ok(bin().arg("train").arg(&psi).arg("--out").arg(tmp.path().join("robust_bce")).args(quiet).args(["--preset", "robust", "--splicing-loss-type", "bce"]));
    let text = fails(bin().arg("evaluate").arg("--train").arg(&psi).arg("--out").arg(tmp.path().join("e.tsv")).args(quiet));
    assert!(text.contains("psi_only.h5mu: has PSI only") && text.contains("--splicing-loss-type bce"), "{text}");
    let bce = tmp.path().join("bce");
    ok(bin().arg("train").arg(&psi).arg("--out").arg(&bce).args(quiet).args(["--splicing-loss-type", "bce"]));
    let text = fails(bin().arg("evaluate").arg("--train").arg(&psi).arg("--out").arg(tmp.path().join("e.tsv")).args(quiet).args(["--splicing-loss-type", "bce", "--min-atse-count", "5"]));
    assert!(text.contains("psi_only.h5mu: has PSI only") && text.contains("--min-atse-count 5"), "{text}");
    // a run trained on counts, applied to the PSI-only copy (same features)
    let dm = tmp.path().join("dm");
    ok(bin().arg("train").arg(&data).arg("--out").arg(&dm).args(quiet));
    let out = tmp.path().join("psi.h5ad");
    let text = fails(bin().arg("impute").arg(&dm).arg(&psi).arg("--out").arg(&out));
    assert!(text.contains("psi_only.h5mu: has PSI only") && text.contains("--method dm-posterior") && text.contains("use --method decoder"), "{text}");
    assert!(!out.exists());
    ok(bin().arg("impute").arg(&dm).arg(&psi).arg("--out").arg(&out).args(["--method", "decoder"]));
    let ds_tsv = tmp.path().join("ds.tsv");
    let text = fails(bin().arg("diff-splicing").arg(&dm).arg(&psi).args(["--groupby", "cell_type", "--group1", "T0", "--no-plots", "--out"]).arg(&ds_tsv));
    assert!(text.contains("psi_only.h5mu: has PSI only") && text.contains("use --method decoder"), "{text}");
    assert!(!ds_tsv.exists());
    let text = fails(bin().arg("evaluate").arg(&dm).arg(&psi).arg("--out").arg(tmp.path().join("e.tsv")).arg("--no-plots"));
    assert!(text.contains("psi_only.h5mu: has PSI only") && text.contains("DM posterior mean"), "{text}");
    assert!(!tmp.path().join("e.tsv").exists());
    // validate says what such data can be used with, and reports no count range
    let text = ok(bin().arg("validate").arg(&psi));
    assert!(text.contains("none (PSI and mask only: train with --splicing-loss-type bce; analyses with --method decoder)"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&ok(bin().arg("validate").arg(&psi).arg("--json"))).unwrap();
    assert_eq!((json["has_counts"].as_bool(), json["k_range"].is_null(), json["n_range"].is_null()), (Some(false), true, true), "{json}");
}

/// PSI-only input without its mask is refused for the missing mask (model.md §14.2: "A mask is
/// required"), not for a missing count layer.
#[test]
fn psi_only_data_without_a_mask_names_the_mask() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, psi) = (tmp.path().join("toy.h5mu"), tmp.path().join("psi_only.h5mu"));
    ok(bin().args(["simulate", "--size", "toy", "--seed", "0", "--out"]).arg(&data));
    psi_only_copy(&data, &psi);
    hdf5::File::open_rw(&psi).unwrap().unlink("mod/splicing/layers/psi_mask").unwrap();
    let text = fails(bin().arg("validate").arg(&psi));
    assert!(text.contains("psi_only.h5mu: mod/splicing/layers/psi_mask: PSI-only input") && text.contains("needs a mask layer") && text.contains("--psi-mask-layer"), "{text}");
}

/// A training minibatch of one cell cannot go through BatchNorm in training mode. The adversarial
/// batch classifier has BatchNorm (and the model with --use-batch-norm): --batch-size 1, or a split
/// that leaves one cell in the last minibatch, is refused before training starts, naming the
/// classifier and the flags to change, instead of failing in the first epoch.
#[test]
fn a_one_cell_minibatch_with_batch_norm_is_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("toy.h5mu");
    let run = tmp.path().join("run");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "0", "--out"]).arg(&data));
    let quiet = ["--max-epochs", "1", "--quiet", "--no-plots"];
    let text = fails(bin().arg("train").arg(&data).arg("--out").arg(&run).args(quiet).args(["--batch-key", "batch", "--batch-size", "1"]));
    assert!(text.contains("--batch-size 1 makes every training minibatch 1 cell") && text.contains("the adversarial batch classifier") && text.contains("--adversarial-mixing false"), "{text}");
    assert!(!run.join("config.json").exists(), "training started");
    // 200 cells, --train-size 0.905: 181 training cells, the last minibatch of 30 holds 1
    let text = fails(bin().arg("train").arg(&data).arg("--out").arg(&run).args(quiet).args(["--batch-key", "batch", "--batch-size", "30", "--train-size", "0.905"]));
    assert!(text.contains("the last training minibatch would hold 1 cell (181 training cells, --batch-size 30") && text.contains("adversarial batch classifier"), "{text}");
    let text = fails(bin().arg("evaluate").arg("--train").arg(&data).arg("--out").arg(tmp.path().join("e.tsv")).args(quiet).args(["--batch-key", "batch", "--batch-size", "1"]));
    assert!(text.contains("--batch-size 1") && text.contains("adversarial batch classifier"), "{text}");
    let text = fails(bin().arg("train").arg(&data).arg("--out").arg(&run).args(quiet).args(["--use-batch-norm", "encoder", "--batch-size", "1"]));
    assert!(text.contains("the model's BatchNorm (--use-batch-norm encoder)") && !text.contains("adversarial"), "{text}");
    assert!(!run.join("config.json").exists(), "training started");
    // without BatchNorm a minibatch of one cell trains
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(quiet).args(["--batch-key", "batch", "--batch-size", "30", "--train-size", "0.905", "--adversarial-mixing", "false"]));
}

/// `--dispersion gene-batch` without `--batch-key` trains the original's G × 1 table (one batch),
/// which is the gene dispersion: it says so instead of passing in silence.
#[test]
fn gene_batch_dispersion_without_a_batch_key_warns() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("toy.h5mu");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "0", "--out"]).arg(&data));
    let text = ok(bin().arg("train").arg(&data).arg("--out").arg(tmp.path().join("run")).args(["--dispersion", "gene-batch", "--max-epochs", "1", "--quiet", "--no-plots"]));
    assert!(text.contains("warning: --dispersion gene-batch without --batch-key"), "{text}");
    let text = ok(bin().arg("train").arg(&data).arg("--out").arg(tmp.path().join("run2")).args(["--dispersion", "gene-batch", "--batch-key", "batch", "--max-epochs", "1", "--quiet", "--no-plots"]));
    assert!(!text.contains("warning: --dispersion"), "{text}");
}

/// `simulate` checks both of its outputs before it simulates: --truth-json may not be --out (it
/// overwrote the .h5mu with JSON), nor a directory (found after the .h5mu was written); both are
/// refused with nothing written.
#[test]
fn simulate_checks_its_two_outputs_first() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("a.h5mu");
    for truth in [out.clone(), tmp.path().join(".").join("a.h5mu")] {
        let text = fails(bin().args(["simulate", "--size", "toy", "--out"]).arg(&out).arg("--truth-json").arg(&truth));
        assert!(text.contains("--truth-json") && text.contains("is --out"), "{text}");
        assert!(!out.exists(), "the .h5mu was written");
    }
    let text = fails(bin().args(["simulate", "--size", "toy", "--out"]).arg(&out).arg("--truth-json").arg(tmp.path()));
    assert!(text.contains("--truth-json") && text.contains("is a directory"), "{text}");
    assert!(!out.exists(), "the .h5mu was written before --truth-json was found wrong");
    let truth = tmp.path().join("truth.json");
    ok(bin().args(["simulate", "--size", "toy", "--out"]).arg(&out).arg("--truth-json").arg(&truth));
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&truth).unwrap()).unwrap();
    assert_eq!(j["cell_type"].as_array().map(|a| a.len()), Some(200));
    assert!(splicevi::data::load::load(&out, &Default::default()).is_ok());
    let help = ok(bin().args(["simulate", "--help"]));
    assert!(help.contains("as JSON to this file") && !help.contains("next to the file"), "{help}");
}

/// The host commands (simulate, validate, plot, info) ignore --device, and so the CUDA step's options
/// too: `--device cuda --precision bf16 validate` runs (it said bf16 needs --device cuda); `info`
/// reports them. A compute command on the CPU still refuses them.
#[test]
fn host_commands_ignore_the_cuda_step_options() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("toy.h5mu");
    let step = ["--device", "cuda", "--precision", "bf16", "--data-residency", "host", "--splicing-decode", "dense"];
    ok(bin().args(step).args(["simulate", "--size", "toy", "--out"]).arg(&data));
    ok(bin().args(step).arg("validate").arg(&data));
    let run = tmp.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join("metrics.tsv"), "epoch\ttrain_loss\n0\t5.0\n1\t4.0\n").unwrap();
    ok(bin().args(step).args(["plot", "curves"]).arg(&run));
    let text = ok(bin().args(step).arg("info"));
    assert!(text.contains("CUDA step options given: --precision bf16 --data-residency host --splicing-decode dense"), "{text}");
    let text = fails(bin().args(["--device", "cpu", "--precision", "bf16", "train"]).arg(&data).arg("--out").arg(tmp.path().join("r")));
    assert!(text.contains("--precision bf16 is a CUDA option"), "{text}");
}

/// A negative number after a flag reaches the flag's own check, in every command (it was clap's
/// "unexpected argument '-0' found").
#[test]
fn negative_numbers_reach_the_range_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.h5mu");
    let text = fails(bin().args(["simulate", "--size", "toy", "--target-unobserved", "-0.5", "--out"]).arg(&out));
    assert!(text.contains("--target-unobserved must be in (0, 1), got -0.5"), "{text}");
    let text = fails(bin().args(["simulate", "--size", "toy", "--ds-atse-fraction", "-1", "--out"]).arg(&out));
    assert!(text.contains("--ds-atse-fraction must be in [0, 1], got -1"), "{text}");
    // (each count flag by its own name, not the config field's)
    for flag in ["--n-cells", "--n-genes", "--n-junctions", "--n-cell-types", "--n-batches"] {
        let text = fails(bin().args(["simulate", "--size", "toy", flag, "0", "--out"]).arg(&out));
        assert!(text.contains(&format!("simulate: {flag} must be positive, got 0")), "{flag}: {text}");
    }
    assert!(!out.exists());
    let text = fails(bin().args(["plot", "volcano", "ds.tsv", "--fdr", "-1"]));
    assert!(text.contains("--fdr (the FDR target) must be in [0, 1], got -1"), "{text}");
    let text = fails(bin().args(["--threads", "-1", "info"]));
    assert!(text.contains("`-1` is not a number of threads"), "{text}");
}

/// The command's stdout, a pipe whose reader is already gone (`splicevi … | head` once head exited).
#[cfg(unix)]
fn closed_pipe() -> std::process::Stdio {
    use std::os::fd::FromRawFd;
    let mut fds = [0i32; 2];
    // SAFETY: pipe(2) fills the two descriptors; the read end is closed at once, the write end owned.
    unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        libc::close(fds[0]);
        std::process::Stdio::from(std::os::fd::OwnedFd::from_raw_fd(fds[1]))
    }
}

/// A closed stdout ends a command quietly (exit 141, as SIGPIPE ends other tools), without a panic
/// message: `check-fixture --verbose | head` panicked with "failed printing to stdout"; and a command
/// that writes files writes them before its stdout table, so `evaluate … | head` keeps all of them.
#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("toy.h5mu");
    let run = tmp.path().join("run");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "0", "--out"]).arg(&data));
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--max-epochs", "1", "--quiet", "--no-plots"]));
    let case = fixtures_dir().join("default-model");
    let eval = tmp.path().join("e.tsv");
    let truth = tmp.path().join("truth.json");
    let commands: Vec<Vec<std::ffi::OsString>> = vec![
        vec!["info".into()],
        vec!["validate".into(), data.clone().into()],
        vec!["check-fixture".into(), "--verbose".into(), case.into()],
        vec!["simulate".into(), "--size".into(), "toy".into(), "--out".into(), tmp.path().join("s.h5mu").into(), "--truth-json".into(), truth.clone().into()],
        vec!["evaluate".into(), run.clone().into(), data.clone().into(), "--out".into(), eval.clone().into()],
    ];
    for args in &commands {
        let o = bin().args(args).stdout(closed_pipe()).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(141), "{args:?}:\n{err}");
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}:\n{err}");
    }
    assert!(truth.exists(), "simulate's --truth-json was not written");
    for f in ["e.tsv", "e.pairs.tsv", "e.impute.png", "e.impute.svg"] {
        assert!(tmp.path().join(f).exists(), "evaluate did not write {f}");
    }
}

/// model.md §8.4's resampled-reads protocol and `test_impute`, end to end on a toy run: in-engine
/// down-sampling (rows `resampled`, none `imputation`) with test_impute rows; an authors'-style
/// resampled file written by tests/python/make_resampled_file.py, whose truths numpy counts there (the
/// ATSE-count filter reads the original counts, PSI = 1 is left out by default, the top variable
/// junctions); and the errors naming the file and the missing layer.
#[test]
fn evaluate_scores_resampled_reads_and_test_impute() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |f: &str| tmp.path().join(f);
    let (data, run) = (p("toy.h5mu"), p("run"));
    ok(bin().args(["simulate", "--size", "toy", "--seed", "0", "--out"]).arg(&data));
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--max-epochs", "1", "--quiet", "--no-plots"]));
    let table = |f: &std::path::Path| -> Vec<Vec<String>> { std::fs::read_to_string(f).unwrap().lines().skip(1).map(|l| l.split('\t').map(String::from).collect()).collect() };
    let val = |t: &[Vec<String>], key: [&str; 4]| -> f64 {
        let r = t.iter().find(|r| r[..4] == key).unwrap_or_else(|| panic!("no row {key:?}"));
        r[4].parse().unwrap()
    };
    let sections = |t: &[Vec<String>]| -> std::collections::BTreeSet<String> { t.iter().map(|r| r[0].clone()).filter(|s| !s.starts_with("latent")).collect() };
    let dm = "splicevi_dm_posterior";
    // in-engine: half of every cell's reads removed
    let e = p("e.tsv");
    ok(bin().arg("evaluate").arg(&run).arg(&data).arg("--out").arg(&e).args(["--no-plots", "--resample-fraction", "0.5", "--min-atse-count", "0", "--test-impute"]));
    let t = table(&e);
    assert_eq!(sections(&t).into_iter().collect::<Vec<_>>(), ["resampled", "test_impute"]);
    let n = |s: &str, m: &str| val(&t, ["resampled", s, m, "n"]);
    assert!(n("dropped", dm) > 0.0 && n("observed", dm) > 0.0);
    assert_eq!(n("dropped", dm) + n("observed", dm), n("all", dm));
    assert_eq!(n("dropped", "mean_bayes"), n("dropped", dm));
    // an entry no longer observed has n = 0: its DM posterior mean is the decoder's PSI
    let l1 = |m: &str| val(&t, ["resampled", "dropped", m, "l1_mean"]);
    assert!((l1(dm) - l1("splicevi_decoder")).abs() < 1e-6, "{} vs {}", l1(dm), l1("splicevi_decoder"));
    assert!(val(&t, ["test_impute", "observed", dm, "n"]) > 0.0);
    assert!(!t.iter().any(|r| r[0] == "test_impute" && r[1] != "observed"));
    // the authors' files
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/make_resampled_file.py");
    let (file, nocounts, expected) = (p("RESAMPLED_50_PERCENT_toy.h5mu"), p("nocounts.h5mu"), p("expected.json"));
    let py = Command::new(python()).arg(script).arg(&data).arg(&file).arg(&nocounts).arg(&expected).output();
    match py {
        Ok(o) if o.status.success() => {}
        Ok(o) if std::env::var("SPLICEVI_SKIP_PYTHON").is_ok_and(|v| v == "1") => return eprintln!("SKIPPED python part: {}", String::from_utf8_lossy(&o.stderr)),
        Ok(o) => panic!("make_resampled_file.py failed:\n{}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("no python ({e}); set SPLICEVI_SKIP_PYTHON=1 to skip"),
    }
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&expected).unwrap()).unwrap();
    let w = |k: &str| want[k].as_f64().unwrap();
    assert_eq!(val(&t, ["test_impute", "observed", dm, "n"]), w("test_impute"));
    let f = p("f.tsv");
    ok(bin().arg("evaluate").arg(&run).arg(&file).arg("--out").arg(&f).args(["--no-plots", "--resampled-input", "--min-atse-count", "3", "--top-variable-junctions", "0"]));
    let t = table(&f);
    assert_eq!((val(&t, ["resampled", "dropped", dm, "n"]), val(&t, ["resampled", "observed", dm, "n"])), (w("dropped"), w("observed")));
    assert_eq!(val(&t, ["resampled", "dropped", "mean_bayes", "n"]), w("dropped"));
    let top = want["top"].as_u64().unwrap().to_string();
    ok(bin().arg("evaluate").arg(&run).arg(&file).arg("--out").arg(&f).args(["--no-plots", "--resampled-input", "--min-atse-count", "3", "--top-variable-junctions", &top]));
    let t = table(&f);
    assert_eq!((val(&t, ["resampled", "dropped", dm, "n"]), val(&t, ["resampled", "observed", dm, "n"])), (w("top_dropped"), w("top_observed")));
    // a missing layer: the file and the layer named
    let text = fails(bin().arg("evaluate").arg(&run).arg(&nocounts).arg("--out").arg(&f).args(["--no-plots", "--resampled-input"]));
    assert!(text.contains("nocounts.h5mu") && text.contains("\"cell_by_cluster_matrix_original\"") && text.contains("--min-atse-count 0"), "{text}");
    ok(bin().arg("evaluate").arg(&run).arg(&nocounts).arg("--out").arg(&f).args(["--no-plots", "--resampled-input", "--min-atse-count", "0"]));
    let text = fails(bin().arg("evaluate").arg(&run).arg(&data).arg("--out").arg(&f).args(["--no-plots", "--resampled-input"]));
    assert!(text.contains("toy.h5mu") && text.contains("\"junc_ratio_original\""), "{text}");
    let text = fails(bin().arg("evaluate").arg(&run).arg(&file).arg("--out").arg(&f).args(["--no-plots", "--resampled-input", "--test-impute"]));
    assert!(text.contains("--test-impute"), "{text}");
    // the authors' PSI < 1 default of this block is turned off with `=false`; a bare flag before the
    // positional arguments takes none of them as its value
    ok(bin().arg("evaluate").arg(&run).arg(&file).arg("--out").arg(&f).args(["--no-plots", "--resampled-input", "--min-atse-count", "3", "--top-variable-junctions", "0", "--exclude-psi-one=false"]));
    let with_one = val(&table(&f), ["resampled", "all", dm, "n"]);
    assert_eq!(with_one, w("dropped") + w("observed") + w("psi_one"));
    ok(bin().arg("evaluate").arg("--exclude-psi-one").arg(&run).arg(&data).arg("--out").arg(&f).arg("--no-plots"));
}

/// The QA's divergence without validation cells: the last step's NaN parameters used to be saved and
/// the run reported success; now it fails naming a parameter and leaves no model for the analyses.
#[test]
fn a_run_without_validation_that_diverges_saves_no_nan_model() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("toy.h5mu");
    let run = tmp.path().join("divx");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "0", "--out"]).arg(&data));
    let text = fails(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--lr", "1e38", "--train-size", "1", "--batch-size", "256", "--max-epochs", "1", "--no-plots"]));
    assert!(text.contains("non-finite parameter `") && text.contains("before any checkpoint was written"), "{text}");
    assert!(!run.join("model.safetensors").exists());
    let text = fails(bin().arg("embed").arg(&run).arg(&data).arg("--out").arg(tmp.path().join("e.h5ad")));
    assert!(text.contains("no checkpoint"), "{text}");
}

/// --overwrite removes the old run only once every check has passed: a 2-cell file, whose training
/// cells the small-last-batch rule moves out, is refused with the rule explained and the old run kept.
#[test]
fn overwrite_keeps_the_old_run_when_the_new_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, two) = (tmp.path().join("toy.h5mu"), tmp.path().join("cells2.h5mu"));
    let run = tmp.path().join("existing_run");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "0", "--out"]).arg(&data));
    ok(bin().args(["simulate", "--size", "toy", "--n-cells", "2", "--seed", "0", "--out"]).arg(&two));
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--max-epochs", "1", "--quiet", "--no-plots"]));
    let names = ["config.json", "model.safetensors", "train_state.json", "features.json", "split.json", "metrics.jsonl"];
    let before = names.map(|f| std::fs::read(run.join(f)).unwrap());
    let text = fails(bin().arg("train").arg(&two).arg("--out").arg(&run).args(["--overwrite", "--max-epochs", "1", "--no-plots"]));
    assert!(text.contains("no training cells after the split (2 cells)") && text.contains("small-last-batch rule") && text.contains("--train-size 1"), "{text}");
    assert!(names.map(|f| std::fs::read(run.join(f)).unwrap()) == before, "--overwrite removed the old run before refusing the new one");
    ok(bin().arg("train").arg(&two).arg("--out").arg(tmp.path().join("r2")).args(["--train-size", "1", "--max-epochs", "1", "--no-plots"]));
}

/// Two trainings never write one run directory at once: while one holds its lock, a second (new run,
/// --overwrite or --resume) is refused naming the directory, and the run is left as it was. The lock's
/// holder removes the temporary files a killed training left.
#[test]
fn a_second_training_into_a_locked_run_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("toy.h5mu");
    let run = tmp.path().join("run");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "0", "--out"]).arg(&data));
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--max-epochs", "1", "--quiet", "--no-plots"]));
    let model = std::fs::read(run.join("model.safetensors")).unwrap();
    let lock = splicevi::train::trainer::lock_run_dir(&run).unwrap();
    for flags in [&["--overwrite", "--max-epochs", "1"][..], &["--resume", "--max-epochs", "2"]] {
        let text = fails(bin().arg("train").arg(&data).arg("--out").arg(&run).args(flags).args(["--quiet", "--no-plots"]));
        assert!(text.contains(&format!("--out {}: another training is writing this run directory", run.display())), "{flags:?}: {text}");
    }
    let fresh = tmp.path().join("fresh");
    let _other = splicevi::train::trainer::lock_run_dir(&fresh).unwrap();
    let text = fails(bin().arg("train").arg(&data).arg("--out").arg(&fresh).args(["--max-epochs", "1", "--quiet", "--no-plots"]));
    assert!(text.contains("another training is writing"), "{text}");
    assert_eq!(std::fs::read(run.join("model.safetensors")).unwrap(), model);
    drop(lock);
    // what a SIGKILL mid-checkpoint leaves is removed by the next training there (only the run's own)
    std::fs::write(run.join(".model.safetensors.Ab12Cd.tmp"), "half").unwrap();
    std::fs::write(run.join(".notes.txt.Ab12Cd.tmp"), "mine").unwrap();
    let text = ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--resume", "--max-epochs", "2", "--quiet", "--no-plots"]));
    assert!(text.contains("removed 1 temporary file(s) left by an interrupted training"), "{text}");
    assert!(!run.join(".model.safetensors.Ab12Cd.tmp").exists() && run.join(".notes.txt.Ab12Cd.tmp").exists());
}

/// `train` finds out that --out cannot be a run directory before it reads the data (a missing data
/// file here, which it would otherwise report first).
#[test]
fn train_checks_its_run_directory_before_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("afile"), "x").unwrap();
    let missing = tmp.path().join("no_such.h5mu");
    let text = fails(bin().arg("train").arg(&missing).arg("--out").arg(tmp.path().join("afile/sub")).args(["--max-epochs", "1"]));
    assert!(text.contains("afile is not a directory") && !text.contains("no_such"), "{text}");
    if std::path::Path::new("/proc/self").exists() {
        let text = fails(bin().arg("train").arg(&missing).arg("--out").arg("/proc/splicevi_run").args(["--max-epochs", "1"]));
        assert!(text.contains("cannot write in /proc") && !text.contains("no_such"), "{text}");
    }
}

/// A training stopped by a signal (a batch job's time limit) says which checkpoint is kept and the
/// command that continues it; `evaluate --train`'s temporary run directory goes too (QA pass G: it
/// stayed in the temporary directory, a full checkpoint, and the message named neither).
#[cfg(unix)]
#[test]
fn a_signal_names_the_checkpoint_kept_and_leaves_no_temporary_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (data, run, scratch) = (d.join("d.h5mu"), d.join("run"), d.join("scratch"));
    std::fs::create_dir(&scratch).unwrap();
    ok(bin().args(["simulate", "--n-cells", "3000", "--n-genes", "200", "--n-junctions", "1500", "--seed", "0", "--out"]).arg(&data));
    let wait_for = |what: &str, child: &mut std::process::Child, found: &dyn Fn() -> bool| {
        let t0 = std::time::Instant::now();
        while !found() {
            assert!(t0.elapsed().as_secs() < 120, "{what} did not appear");
            assert!(child.try_wait().unwrap().is_none(), "the command ended before {what}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let stop = |child: std::process::Child| -> String {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(130));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let mut child = bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--max-epochs", "500", "--no-plots", "--quiet", "--threads", "1"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let state = run.join("train_state.json");
    wait_for("the first checkpoint", &mut child, &|| state.exists());
    let err = stop(child);
    let done = splicevi::train::trainer::read_train_state(&run).unwrap().epochs_done;
    assert!(err.contains(&format!("the checkpoint after epoch {done} is kept")) && err.contains("--resume"), "{err}");
    // evaluate --train without --train-dir: its run lives in the temporary directory
    let mut child = bin().args(["evaluate", "--train"]).arg(&data).args(["--max-epochs", "500", "--no-plots", "--quiet", "--threads", "1", "--out"]).arg(d.join("e.tsv")).env("TMPDIR", &scratch).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let runs = || std::fs::read_dir(&scratch).unwrap().flatten().filter(|e| e.path().join("train_state.json").exists()).count();
    wait_for("the temporary run's first checkpoint", &mut child, &|| runs() > 0);
    stop(child);
    let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // a log whose disk is full (stderr to /dev/full): an error, exit 1, not a panic's 101
    if std::path::Path::new("/dev/full").exists() {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let o = bin().arg("train").arg(&data).arg("--out").arg(d.join("full_log")).args(["--max-epochs", "1"]).stderr(full).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "stderr to a full disk");
    }
    // a requeued job's --resume before the run exists is told what to do
    let e = fails(bin().arg("train").arg(&data).arg("--out").arg(d.join("none")).arg("--resume"));
    assert!(e.contains("holds no run to continue") && e.contains("leave --resume out"), "{e}");
}

/// An output on a full disk: HDF5's write error carries no system reason ("H5Dwrite_chunk failed …",
/// and the error read "PSI not written", as if the analysis had failed); it now names the full disk,
/// and nothing is left there. Needs a small tmpfs (mount, as root); skipped where it cannot mount one.
#[cfg(target_os = "linux")]
#[test]
fn an_output_on_a_full_disk_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mnt = d.join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"]).arg(&mnt).output().is_ok_and(|o| o.status.success());
    if !mounted {
        eprintln!("SKIPPED an_output_on_a_full_disk_says_so: cannot mount a tmpfs here");
        return;
    }
    let (data, run) = (d.join("d.h5mu"), d.join("run"));
    let r = std::panic::catch_unwind(|| {
        ok(bin().args(["simulate", "--n-cells", "2000", "--n-genes", "100", "--n-junctions", "2000", "--seed", "1", "--out"]).arg(&data));
        ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--max-epochs", "1", "--no-plots", "--quiet"]));
        let e = fails(bin().arg("impute").arg(&run).arg(&data).args(["--gzip", "0", "--out"]).arg(mnt.join("psi.h5ad")));
        assert!(e.contains("no space left on the disk holding") && e.contains("psi.h5ad"), "{e}");
        assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0, "files left on the full disk");
    });
    let _ = Command::new("umount").arg(&mnt).output();
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}
