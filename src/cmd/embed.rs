//! `splicevi embed`: the latent posterior means of every cell (model.md §7.2, give_mean=True). A mean
//! needs no posterior samples, so embed has no --n-samples (§14.2 asks for them where a decode is
//! averaged; the sampled z of give_mean=False is noise around this mean, not an estimate of it).

use crate::data::h5ad_out::{write_h5ad, DenseOut, H5adOut};
use crate::data::h5write::UnsValue;
use crate::analysis::posterior::{align_covariates, weight_table_rows, Posterior};
use crate::model::Mat;
use crate::plot::embedding::Projection;
use crate::train::trainer::load_model;
use anyhow::Result;
use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LatentKind {
    /// The joint posterior mean: the modality weighting's mix of the two encoders (with `robust`'s
    /// concatenated latents, the two side by side).
    Joint,
    /// The expression encoder's posterior mean alone.
    Expression,
    /// The splicing (partial) encoder's posterior mean alone.
    Splicing,
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Run directory written by `splicevi train`.
    pub run_dir: PathBuf,
    /// Data to embed (same genes and junctions as the training data).
    pub data: PathBuf,
    /// Output .h5ad: the chosen latent means in obsm["X_splicevi"], all three in obsm["X_splicevi_{joint,expression,splicing}"].
    #[arg(long)]
    pub out: PathBuf,
    /// Which latent goes to obsm["X_splicevi"] and the picture (all three are written either way).
    #[arg(long, value_enum, default_value = "joint")]
    pub modality: LatentKind,
    /// Cells encoded per block (the other analyses' name; `--batch-size`, its old name here, still works).
    #[arg(long, alias = "batch-size", default_value_t = 1024)]
    pub block_cells: usize,
    /// obs column colouring the embedding picture (default: cell_type if present, else the first categorical column).
    #[arg(long)]
    pub color_by: Option<String>,
    /// Do not draw the embedding picture (OUT without .h5ad, then .embedding.png / .svg).
    #[arg(long)]
    pub no_plots: bool,
    /// The picture's 2-D projection: pca, or umap (seeded, scanpy's defaults; also obsm["X_umap"]).
    #[arg(long, value_enum, default_value = "pca")]
    pub projection: Projection,
}

/// Posterior means (joint qz_m, expression mu_e, splicing mu_s) of every cell, row-major, `block_cells`
/// cells at a time; on `device` when it is a GPU (the CUDA step's encoders, `Posterior::use_device`).
pub fn latents(
    run_dir: &std::path::Path,
    ds: &crate::data::Dataset,
    block_cells: usize,
    device: &crate::device::Device,
    precision: crate::cuda::gemm::GemmPrecision,
) -> Result<[Mat<f32>; 3]> {
    let (_run, model, params) = load_model(run_dir, ds)?;
    let mut post = Posterior::new(ds, &model, &params)?;
    // `cell` modality weights: each cell reads its own row of the table, found by name.
    post.cell_rows = weight_table_rows(run_dir, ds, &model)?;
    super::analysis_device(&mut post, device, precision, "embed")?;
    let n = ds.n_cells();
    let cells: Vec<usize> = (0..n).collect();
    let ([a, b, c], [wa, wb, wc]) = post.latent_means(&cells, block_cells)?;
    Ok([Mat::from_vec(n, wa, a), Mat::from_vec(n, wb, b), Mat::from_vec(n, wc, c)])
}

pub fn run(args: EmbedArgs, device: &crate::device::Device, precision: crate::cuda::gemm::GemmPrecision) -> Result<()> {
    crate::util::check_output(&args.out, &[&args.data], &[&args.run_dir])?;
    if !args.no_plots {
        super::plot::check_picture_outputs(&crate::plot::prefix_beside(&args.out, "embedding"), &[&args.data], &[&args.run_dir])?;
    }
    anyhow::ensure!(args.block_cells >= 1, "--block-cells must be at least 1");
    let run = crate::train::trainer::read_run_config(&args.run_dir)?;
    let mut ds = crate::analysis::posterior::load_for_run(&args.data, &run.data, &args.run_dir)?;
    // the covariates' codes in the run's order (the encoders' covariates, with --encode-covariates)
    align_covariates(&mut ds, &run, &args.run_dir)?;
    // found as training finds its columns (`rna:COL`, a modality's own), before the work
    let color_by = match &args.color_by {
        Some(c) => Some((c.clone(), ds.obs_column(c, "--color-by")?.1)),
        None => None,
    };
    // Without the picture, --color-by only carries a modality's column into the output's obs.
    if let (true, Some((c, _))) = (args.no_plots, &color_by) {
        if ds.obs.iter().any(|(n, _)| n == c) {
            anyhow::bail!("--color-by {c} has no effect with --no-plots: it colours the picture, which --no-plots leaves out, and `{c}` is in the output's obs already; leave it out");
        }
    }
    let [joint, expr, spl] = latents(&args.run_dir, &ds, args.block_cells, device, precision)?;
    let chosen = match args.modality {
        LatentKind::Joint => &joint,
        LatentKind::Expression => &expr,
        LatentKind::Splicing => &spl,
    };
    let n = ds.n_cells();
    // The picture is made before the .h5ad is written: a UMAP's coordinates also go to obsm["X_umap"].
    let fig = (!args.no_plots || args.projection == Projection::Umap).then(|| {
        use crate::plot::embedding::{default_colour_column, Colouring, Embedding};
        let col = color_by.clone().or_else(|| default_colour_column(&ds.obs).and_then(|c| ds.obs.iter().find(|(n, _)| *n == c).map(|(_, v)| (c, v))));
        let (colouring, label) = match col {
            Some((c, v)) => (Colouring::from_obs(v), c),
            None => (Colouring::None, String::new()),
        };
        let name = args.out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let what = format!("{name} ({} latent)", format!("{:?}", args.modality).to_lowercase());
        Embedding::of(&chosen.data, chosen.cols, args.projection, colouring, &label, &what)
    });
    let x_umap: Option<Vec<f32>> = match (&fig, args.projection) {
        (Some(Ok(e)), Projection::Umap) if e.xy.len() == n => Some(e.xy.iter().flat_map(|&(a, b)| [a as f32, b as f32]).collect()),
        (Some(Ok(e)), Projection::Umap) => {
            eprintln!("note: obsm[\"X_umap\"] not written: the UMAP lays out the {} drawn cells only, of {n}", e.xy.len());
            None
        }
        (Some(Err(e)), Projection::Umap) if args.no_plots => {
            eprintln!("warning: the UMAP was not computed: {e:#}");
            None
        }
        _ => None,
    };
    let mut obsm = vec![
        DenseOut { name: "X_splicevi".into(), rows: n, cols: chosen.cols, data: &chosen.data },
        DenseOut { name: "X_splicevi_joint".into(), rows: n, cols: joint.cols, data: &joint.data },
        DenseOut { name: "X_splicevi_expression".into(), rows: n, cols: expr.cols, data: &expr.data },
        DenseOut { name: "X_splicevi_splicing".into(), rows: n, cols: spl.cols, data: &spl.data },
    ];
    if let Some(u) = &x_umap {
        obsm.push(DenseOut { name: "X_umap".into(), rows: n, cols: 2, data: u });
    }
    // The --color-by column goes into the output's obs under the name it was given (`splicing:X`, or a
    // column of the splicing obs only), so `plot embedding L.h5ad --color-by NAME` can redraw the picture.
    let mut obs = ds.obs.clone();
    if let Some((c, col)) = &color_by {
        if !obs.iter().any(|(n, _)| n == c) {
            obs.push((c.clone(), (*col).clone()));
        }
    }
    let out = H5adOut {
        obs_names: ds.cell_names.clone(),
        obs,
        obsm,
        uns: vec![
            ("splicevi_run".into(), UnsValue::String(args.run_dir.display().to_string())),
            ("splicevi_modality".into(), UnsValue::String(format!("{:?}", args.modality).to_lowercase())),
        ],
        ..Default::default()
    };
    write_h5ad(&args.out, &out)?;
    let umap_note = if x_umap.is_some() { ", its UMAP in obsm[\"X_umap\"]" } else { "" };
    eprintln!("wrote {} ({} cells, {} latent dims in obsm[\"X_splicevi\"]{umap_note})", args.out.display(), n, chosen.cols);
    if let (false, Some(fig)) = (args.no_plots, fig) {
        super::plot::auto("embedding", fig, &crate::plot::prefix_beside(&args.out, "embedding"));
    }
    Ok(())
}
