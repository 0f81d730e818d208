//! Shared by tests/data_io.rs and tests/invariants.rs (included with `#[path]`): run
//! tests/python/make_anndata_files.py once per test binary and hand out the generated files.
//!
//! Python: env `SPLICEVI_PYTHON`, else `.pyvenv/bin/python` under the crate if it exists, else `python3`.
//! If the python packages are missing the tests fail, unless `SPLICEVI_SKIP_PYTHON=1` (then they skip).
#![allow(dead_code)]

use splicevi::data::DataOptions;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

#[path = "../common/cli.rs"]
mod cli;
pub use cli::python;

pub struct Generated {
    pub dir: PathBuf,
    pub expected: serde_json::Value,
}

impl Generated {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn skip_python() -> bool {
    std::env::var("SPLICEVI_SKIP_PYTHON").is_ok_and(|v| v == "1")
}

/// The generated files for this test binary (`tag` names its directory), or `None` when skipping.
pub fn generated(tag: &str, large: bool) -> Option<&'static Generated> {
    static CELL: OnceLock<Option<Generated>> = OnceLock::new();
    CELL.get_or_init(|| {
        let py = python();
        let probe = Command::new(&py).args(["-c", "import numpy, scipy, h5py, pandas, anndata, mudata"]).output();
        let ok = matches!(&probe, Ok(o) if o.status.success());
        if !ok {
            let why = match &probe {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            if skip_python() {
                eprintln!("SKIPPED: python with numpy/scipy/h5py/pandas/anndata/mudata not available ({}); SPLICEVI_SKIP_PYTHON=1", py.display());
                return None;
            }
            panic!(
                "these tests need python with numpy, scipy, h5py, pandas, anndata and mudata ({}): {why}\n\
                 install them (python3 -m venv .pyvenv && .pyvenv/bin/pip install numpy scipy h5py pandas anndata mudata), \
                 point SPLICEVI_PYTHON at such a python, or set SPLICEVI_SKIP_PYTHON=1 to skip",
                py.display()
            );
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("splicevi-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/make_anndata_files.py");
        let mut cmd = Command::new(&py);
        cmd.arg(&script).arg(&dir);
        if large {
            cmd.arg("--large");
        }
        let out = cmd.output().expect("running make_anndata_files.py");
        assert!(
            out.status.success(),
            "make_anndata_files.py failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let expected = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
        Some(Generated { dir, expected })
    })
    .as_ref()
}

/// DataOptions from the JSON `opts` object of a case (keys = DataOptions field names).
pub fn options(v: &serde_json::Value) -> DataOptions {
    let mut o = DataOptions::default();
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let list = |k: &str| -> Option<Vec<String>> {
        v.get(k).and_then(|x| x.as_array()).map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
    };
    if let Some(x) = s("rna_modality") {
        o.rna_modality = x;
    }
    if let Some(x) = s("splicing_modality") {
        o.splicing_modality = x;
    }
    o.rna_layer = s("rna_layer").or(o.rna_layer);
    if let Some(x) = s("junc_counts_layer") {
        o.junc_counts_layer = x;
    }
    if let Some(x) = s("atse_counts_layer") {
        o.atse_counts_layer = x;
    }
    if let Some(x) = s("event_id_key") {
        o.event_id_key = x;
    }
    o.batch_key = s("batch_key").or(o.batch_key);
    o.labels_key = s("labels_key").or(o.labels_key);
    if let Some(x) = list("categorical_covariate_keys") {
        o.categorical_covariate_keys = x;
    }
    if let Some(x) = list("continuous_covariate_keys") {
        o.continuous_covariate_keys = x;
    }
    o
}

pub fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

pub fn strs(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
}

pub fn matrix(v: &serde_json::Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(f64s).collect()
}
