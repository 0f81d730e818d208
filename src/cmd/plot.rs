//! `splicevi plot`: redraw any of the pictures the other commands write beside their outputs (each as
//! PREFIX.png and PREFIX.svg).

use crate::plot::{age_r2::AgeR2Heatmap, curves::Curves, embedding::{Embedding, Projection}, impute::ImputeScatter, prefix_beside, save, volcano::Volcano, Figure};
use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct PlotArgs {
    #[command(subcommand)]
    pub kind: PlotKind,
}

#[derive(Subcommand, Debug)]
pub enum PlotKind {
    /// Training curves: one panel per loss term of RUN_DIR/metrics.tsv, train vs validation per epoch.
    #[command(allow_negative_numbers = true)]
    Curves {
        /// Run directory written by `splicevi train` (its metrics.tsv is read).
        run_dir: PathBuf,
        /// Output prefix (default: RUN_DIR/curves).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Imputation density scatter (true vs predicted PSI of the dropped entries, Pearson r) from the
    /// pairs TSV `splicevi evaluate` writes (OUT.pairs.tsv).
    #[command(allow_negative_numbers = true)]
    Impute {
        /// Pairs TSV written by `splicevi evaluate --out E.tsv` (E.pairs.tsv).
        pairs: PathBuf,
        /// Output prefix (default: PAIRS without .pairs.tsv, then .impute: E.pairs.tsv → E.impute, as
        /// evaluate draws it; another name without its extension: P.tsv → P.impute).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Age R² heatmap (held-out R² of age per latent, all cells and per --label class) from the TSV
    /// `splicevi evaluate --age COL` writes.
    #[command(allow_negative_numbers = true)]
    AgeR2 {
        /// Evaluate TSV written with --age (E.tsv; its `latent` rows are read).
        eval_tsv: PathBuf,
        /// Output prefix (default: EVAL_TSV without .tsv, then .age_r2: E.tsv → E.age_r2, as evaluate draws it).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Volcano plot of a diff-splicing TSV: ΔPSI vs log10 Bayes factor, FDR calls highlighted.
    #[command(allow_negative_numbers = true)]
    Volcano {
        /// Differential splicing TSV written by `splicevi diff-splicing`.
        ds_tsv: PathBuf,
        /// Call hits from proba_ds at this posterior-expected FDR, in [0, 1] as diff-splicing's --fdr
        /// (default: the table's is_ds_fdr).
        #[arg(long)]
        fdr: Option<f64>,
        /// Output prefix (default: DS_TSV without .tsv, then .volcano).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// 2-D embedding (PCA, or UMAP with --projection umap) of a latent .h5ad (as `splicevi embed` writes)
    /// coloured by an obs column.
    #[command(allow_negative_numbers = true)]
    Embedding {
        /// Latent .h5ad written by `splicevi embed` (or any .h5ad with the latent in obsm).
        latent_h5ad: PathBuf,
        /// obs column to colour by (default: cell_type if present, else the first categorical column).
        #[arg(long)]
        color_by: Option<String>,
        /// obsm key of the latent.
        #[arg(long, default_value = "X_splicevi")]
        obsm: String,
        /// 2-D projection: pca, or umap (scanpy's sc.tl.umap defaults, seeded; lays out the drawn cells).
        #[arg(long, value_enum, default_value = "pca")]
        projection: Projection,
        /// Output prefix (default: LATENT_H5AD without .h5ad, then .embedding).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn written<F: Figure>(fig: &F, prefix: &Path) -> Result<()> {
    let [p, s] = save(fig, prefix)?;
    eprintln!("wrote {} and {}", p.display(), s.display());
    Ok(())
}

pub fn run(args: PlotArgs) -> Result<()> {
    match args.kind {
        PlotKind::Curves { run_dir, out } => written(&Curves::from_run_dir(&run_dir)?, &out.unwrap_or_else(|| run_dir.join("curves"))),
        PlotKind::Impute { pairs, out } => written(&ImputeScatter::from_file(&pairs)?, &out.unwrap_or_else(|| impute_prefix(&pairs))),
        PlotKind::AgeR2 { eval_tsv, out } => written(&AgeR2Heatmap::from_file(&eval_tsv)?, &out.unwrap_or_else(|| prefix_beside(&eval_tsv, "age_r2"))),
        PlotKind::Volcano { ds_tsv, fdr, out } => {
            if let Some(f) = fdr {
                // (the range of diff-splicing's --fdr: 1 calls every junction, 0 those with P = 1)
                anyhow::ensure!((0.0..=1.0).contains(&f), "--fdr (the FDR target) must be in [0, 1], got {f}");
            }
            let fig = Volcano::from_file(&ds_tsv, fdr)?;
            written(&fig, &out.unwrap_or_else(|| prefix_beside(&ds_tsv, "volcano")))
        }
        PlotKind::Embedding { latent_h5ad, color_by, obsm, projection, out } => {
            anyhow::ensure!(latent_h5ad.is_file(), "{}: no such file", latent_h5ad.display());
            written(&Embedding::from_h5ad(&latent_h5ad, &obsm, color_by.as_deref(), projection)?, &out.unwrap_or_else(|| prefix_beside(&latent_h5ad, "embedding")))
        }
    }
}

/// `plot impute`'s default prefix, where `evaluate --out E.tsv` draws it: E.pairs.tsv → E.impute (another
/// PAIRS loses its extension: P.tsv → P.impute).
fn impute_prefix(pairs: &Path) -> PathBuf {
    let s = pairs.to_string_lossy();
    let stem = match s.strip_suffix(".pairs.tsv") {
        Some(base) => PathBuf::from(format!("{base}.tsv")),
        None => pairs.to_path_buf(),
    };
    prefix_beside(&stem, "impute")
}

/// Checks the two files of a picture a command draws beside its output (`PREFIX.png`, `PREFIX.svg`) as
/// [`crate::util::check_output`] checks `--out`, before the command's work.
pub fn check_picture_outputs(prefix: &Path, inputs: &[&Path], run_dirs: &[&Path]) -> Result<()> {
    for (label, p) in picture_outputs(prefix) {
        crate::util::check_output_named(&label, &p, inputs, run_dirs)?;
    }
    Ok(())
}

/// The files a picture at `prefix` is written to (PNG and SVG), each with its label for messages.
pub fn picture_outputs(prefix: &Path) -> Vec<(String, std::path::PathBuf)> {
    ["png", "svg"]
        .into_iter()
        .map(|ext| {
            let p = crate::plot::with_ext(prefix, ext);
            (format!("{} (the picture beside --out; --no-plots skips it)", p.display()), p)
        })
        .collect()
}

/// Draw a picture beside a command's output; a failure is reported, never fatal (the output is written).
pub fn auto<F: Figure>(what: &str, fig: Result<F>, prefix: &Path) {
    match fig.and_then(|f| save(&f, prefix)) {
        Ok([p, s]) => eprintln!("wrote {} and {}", p.display(), s.display()),
        Err(e) => eprintln!("warning: the {what} plot was not drawn: {e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `plot impute`'s default prefix is the one evaluate draws beside its output, and --out's help
    /// says so (it said "PAIRS without .tsv", which would be E.pairs.impute).
    #[test]
    fn impute_prefix_matches_its_help() {
        use clap::CommandFactory;
        assert_eq!(impute_prefix(Path::new("d/E.pairs.tsv")), Path::new("d/E.impute"));
        assert_eq!(impute_prefix(Path::new("E.pairs.tsv")), crate::plot::prefix_beside(Path::new("E.tsv"), "impute"));
        assert_eq!(impute_prefix(Path::new("P.tsv")), Path::new("P.impute"));
        let cli = crate::cmd::Cli::command();
        let plot = cli.find_subcommand("plot").unwrap();
        let out = plot.find_subcommand("impute").unwrap().get_arguments().find(|a| a.get_id() == "out").unwrap();
        let help = out.get_help().unwrap().to_string();
        assert!(help.contains("E.pairs.tsv → E.impute") && help.contains("P.tsv → P.impute"), "{help}");
    }
}
