//! `splicevi simulate`: write a synthetic dataset in the SpliceVI `.h5mu` layout, with ground truth.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use crate::data::h5write::Compression;
use crate::data::simulate::{simulate_to_file, SimConfig, SimSize};

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// Preset size: toy (200 × 100 × 300), small (2k × 2k × 5k), medium (20k × 5k × 20k),
    /// paper (100k × 10k × 90k); cells × genes × junctions.
    #[arg(long, value_enum, default_value = "toy")]
    pub size: SimSize,
    /// Random seed: the same seed and size give the same file, byte for byte, on any number of threads.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output `.h5mu` path.
    #[arg(long)]
    pub out: PathBuf,
    /// Override the preset's number of cells.
    #[arg(long)]
    pub n_cells: Option<usize>,
    /// Override the preset's number of genes.
    #[arg(long)]
    pub n_genes: Option<usize>,
    /// Override the preset's number of junctions.
    #[arg(long)]
    pub n_junctions: Option<usize>,
    /// Target fraction of unobserved cell × junction entries.
    #[arg(long)]
    pub target_unobserved: Option<f64>,
    /// Number of cell types (each split into two subtypes that differ only in splicing).
    #[arg(long)]
    pub n_cell_types: Option<usize>,
    /// Number of batches.
    #[arg(long)]
    pub n_batches: Option<usize>,
    /// Fraction of multi-junction ATSEs with a planted PSI shift between the two subtypes of a type
    /// (lower = harder to separate the subtypes).
    #[arg(long)]
    pub ds_atse_fraction: Option<f64>,
    /// gzip level of the sparse datasets (0 = uncompressed).
    #[arg(long, default_value_t = 1)]
    pub gzip: u8,
    /// Also write the ground truth as JSON to this file (cell types, subtypes and batches of the
    /// cells, the planted DS junctions); it must differ from --out.
    #[arg(long)]
    pub truth_json: Option<PathBuf>,
}

/// The overriding flags' ranges, named as the user typed them (`SimConfig::validate` names the config
/// fields, for library callers, and still checks what the presets set).
fn check_flags(a: &SimulateArgs) -> anyhow::Result<()> {
    let counts = [("--n-cells", a.n_cells), ("--n-genes", a.n_genes), ("--n-junctions", a.n_junctions), ("--n-cell-types", a.n_cell_types), ("--n-batches", a.n_batches)];
    for (flag, v) in counts {
        match v {
            Some(0) => anyhow::bail!("simulate: {flag} must be positive, got 0"),
            Some(n) if n > u32::MAX as usize => anyhow::bail!("simulate: {flag} must be at most {}, got {n}", u32::MAX),
            _ => {}
        }
    }
    if let Some(t) = a.target_unobserved {
        anyhow::ensure!(t > 0.0 && t < 1.0, "simulate: --target-unobserved must be in (0, 1), got {t}");
    }
    if let Some(f) = a.ds_atse_fraction {
        anyhow::ensure!((0.0..=1.0).contains(&f), "simulate: --ds-atse-fraction must be in [0, 1], got {f}");
    }
    Ok(())
}

pub fn run(a: SimulateArgs) -> anyhow::Result<()> {
    // Every output is checked before any work (found after the .h5mu was written, a bad --truth-json
    // left one of the two outputs behind).
    crate::util::check_output(&a.out, &[], &[])?;
    if let Some(p) = &a.truth_json {
        if crate::util::same_output(p, &a.out) {
            anyhow::bail!("--truth-json {}: is --out {}; give the ground truth another file", p.display(), a.out.display());
        }
        crate::util::check_output_named(&format!("--truth-json {}", p.display()), p, &[], &[])?;
    }
    check_flags(&a)?;
    let mut cfg = SimConfig::preset(a.size, a.seed);
    if let Some(n) = a.n_cells {
        cfg.n_cells = n;
    }
    if let Some(n) = a.n_genes {
        cfg.n_genes = n;
    }
    if let Some(n) = a.n_junctions {
        cfg.n_junctions = n;
    }
    if let Some(t) = a.target_unobserved {
        cfg.target_unobserved = t;
    }
    if let Some(t) = a.n_cell_types {
        cfg.n_cell_types = t;
    }
    if let Some(b) = a.n_batches {
        cfg.n_batches = b;
    }
    if let Some(f) = a.ds_atse_fraction {
        cfg.ds_atse_fraction = f;
    }
    if a.gzip > 9 {
        anyhow::bail!("--gzip must be 0..=9, got {}", a.gzip);
    }
    let compression = Compression { gzip_level: (a.gzip > 0).then_some(a.gzip) };
    let t0 = Instant::now();
    let bar = indicatif::ProgressBar::new(cfg.n_cells as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} cells")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (truth, s) = simulate_to_file(&cfg, &a.out, compression, |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    // (the ground truth first: a reader of stdout that went away ends the command at the line)
    if let Some(p) = a.truth_json {
        let j = serde_json::json!({
            "cell_type_names": truth.cell_type_names,
            "subtype_names": truth.subtype_names,
            "batch_names": truth.batch_names,
            "cell_type": truth.cell_type,
            "subtype": truth.subtype,
            "batch": truth.batch,
            "planted_ds": truth.planted_ds,
            "planted_ds_by_type": truth.planted_ds_by_type,
            "fraction_unobserved": s.fraction_unobserved,
        });
        crate::util::write_atomic(&p, |tmp| Ok(std::fs::write(tmp, serde_json::to_vec(&j)?)?))?;
    }
    println!(
        "wrote {} ({:.1} MB) in {:.2} s: {} cells × {} genes × {} junctions ({} ATSEs); expression nnz {} ({:.1}%); \
         splicing observed entries {} ({:.1}% unobserved); planted DS junctions {}",
        a.out.display(),
        bytes as f64 / 1e6,
        secs,
        s.n_cells,
        s.n_genes,
        s.n_junctions,
        s.n_atse,
        s.expression_nnz,
        100.0 * s.expression_nnz as f64 / (s.n_cells as f64 * s.n_genes as f64),
        s.splicing_observed,
        100.0 * s.fraction_unobserved,
        truth.planted_ds.iter().filter(|&&b| b).count(),
    );
    Ok(())
}
