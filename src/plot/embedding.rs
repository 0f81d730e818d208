//! 2-D picture of a latent space coloured by an obs column. The projection is PCA by default (the first
//! two principal components of the centred latent means, by power iteration on the d × d covariance;
//! the axis labels say "PC1" / "PC2" with the share of variance, so the picture never passes for a
//! UMAP), or on request a seeded UMAP ([`crate::analysis::umap`]; axes "UMAP1" / "UMAP2").

use super::{colour_bar, padded_range, pe, subsample, viridis, Figure, CATEGORICAL, MAX_POINTS};
use crate::data::ObsColumn;
use anyhow::{bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// The picture's 2-D projection of the latent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Projection {
    /// The first two principal components (deterministic, milliseconds).
    #[default]
    Pca,
    /// umap-learn's layout with scanpy's defaults (15 neighbours, min_dist 0.5), seeded; seconds.
    Umap,
}

/// How points are coloured.
#[derive(Clone, Debug, PartialEq)]
pub enum Colouring {
    None,
    /// Category index per point (None = missing) and the category names.
    Categories { codes: Vec<Option<usize>>, names: Vec<String> },
    /// A numeric value per point (NaN = missing).
    Values(Vec<f64>),
}

impl Colouring {
    pub fn from_obs(col: &ObsColumn) -> Colouring {
        match col {
            ObsColumn::Categorical { codes, categories, .. } => Colouring::Categories { codes: codes.iter().map(|&c| (c >= 0).then_some(c as usize)).collect(), names: categories.clone() },
            ObsColumn::Bool(v) => Colouring::Categories { codes: v.iter().map(|&b| Some(b as usize)).collect(), names: vec!["False".into(), "True".into()] },
            ObsColumn::Text(v) => {
                let mut names: Vec<String> = v.clone();
                names.sort();
                names.dedup();
                Colouring::Categories { codes: v.iter().map(|s| names.binary_search(s).ok()).collect(), names }
            }
            ObsColumn::Numeric(v, _) => Colouring::Values(v.clone()),
            ObsColumn::Int(c) => Colouring::Values(c.to_f64()),
        }
    }

    fn select(&self, idx: &[usize]) -> Colouring {
        match self {
            Colouring::None => Colouring::None,
            Colouring::Categories { codes, names } => Colouring::Categories { codes: idx.iter().map(|&i| codes[i]).collect(), names: names.clone() },
            Colouring::Values(v) => Colouring::Values(idx.iter().map(|&i| v[i]).collect()),
        }
    }
}

/// The first `k` principal axes of the rows of `x` (n × d): (projections n × k, variance ratio per axis).
pub fn pca(x: &[f64], d: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let n = x.len().checked_div(d).unwrap_or(0);
    let mut mean = vec![0.0; d];
    for r in x.chunks_exact(d) {
        mean.iter_mut().zip(r).for_each(|(m, v)| *m += v);
    }
    mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
    let mut cov = vec![0.0; d * d];
    for r in x.chunks_exact(d) {
        for a in 0..d {
            let ca = r[a] - mean[a];
            for b in a..d {
                cov[a * d + b] += ca * (r[b] - mean[b]);
            }
        }
    }
    for a in 0..d {
        for b in a..d {
            cov[a * d + b] /= (n.max(2) - 1) as f64;
            cov[b * d + a] = cov[a * d + b];
        }
    }
    let total: f64 = (0..d).map(|a| cov[a * d + a]).sum();
    let mut axes: Vec<Vec<f64>> = Vec::new();
    let mut ratios = Vec::new();
    let mut m = cov.clone();
    for c in 0..k.min(d) {
        // Power iteration from a fixed, generic start; deflate after each axis.
        let mut v: Vec<f64> = (0..d).map(|i| 1.0 + ((i * 7 + c * 13) % 11) as f64 / 11.0).collect();
        let mut lambda = 0.0;
        for _ in 0..500 {
            let mut w: Vec<f64> = (0..d).map(|a| (0..d).map(|b| m[a * d + b] * v[b]).sum()).collect();
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm <= 1e-300 {
                break;
            }
            w.iter_mut().for_each(|x| *x /= norm);
            let delta: f64 = w.iter().zip(&v).map(|(a, b)| (a - b).abs()).sum();
            v = w;
            lambda = norm;
            if delta < 1e-12 {
                break;
            }
        }
        // Sign convention: the largest |component| positive (deterministic pictures).
        let big = v.iter().copied().fold(0.0f64, |acc, x| if x.abs() > acc.abs() { x } else { acc });
        if big < 0.0 {
            v.iter_mut().for_each(|x| *x = -*x);
        }
        for a in 0..d {
            for b in 0..d {
                m[a * d + b] -= lambda * v[a] * v[b];
            }
        }
        ratios.push(if total > 0.0 { lambda / total } else { 0.0 });
        axes.push(v);
    }
    while axes.len() < k {
        axes.push(vec![0.0; d]);
        ratios.push(0.0);
    }
    let mut out = vec![0.0; n * k];
    for (i, r) in x.chunks_exact(d).enumerate() {
        for (c, ax) in axes.iter().enumerate() {
            out[i * k + c] = r.iter().zip(&mean).zip(ax).map(|((v, m), a)| (v - m) * a).sum();
        }
    }
    (out, ratios)
}

#[derive(Clone, Debug, PartialEq)]
pub struct Embedding {
    pub title: String,
    pub colour_label: String,
    /// 2-D points (x, y) of the (subsampled) cells.
    pub xy: Vec<(f64, f64)>,
    pub colouring: Colouring,
    pub x_label: String,
    pub y_label: String,
    /// Cells in the latent (before any subsample).
    pub n_cells: usize,
}

/// The cells drawn of a latent (n × d, row-major): a seeded subsample of at most MAX_POINTS, their rows
/// in f64 (only the subsample is converted, so an embed of millions of cells stays cheap), and the
/// title's count ("200 cells", "20000 of 50000 cells").
fn drawn_cells<T: Copy + Into<f64>>(x: &[T], d: usize) -> Result<(usize, Vec<usize>, Vec<f64>, String)> {
    if d == 0 || x.len() % d != 0 {
        bail!("latent of {} values is not n × {d}", x.len());
    }
    let n = x.len() / d;
    if n == 0 {
        bail!("latent with no cells");
    }
    let idx = subsample(n, MAX_POINTS, 0);
    let sub: Vec<f64> = idx.iter().flat_map(|&i| x[i * d..(i + 1) * d].iter().map(|&v| v.into())).collect();
    let shown = if idx.len() < n { format!("{} of {n} cells", idx.len()) } else { format!("{n} cells") };
    Ok((n, idx, sub, shown))
}

impl Embedding {
    /// The latent (n × d, row-major) projected to 2-D as `projection` says (UMAP with scanpy's defaults).
    pub fn of<T: Copy + Into<f64>>(x: &[T], d: usize, projection: Projection, colouring: Colouring, colour_label: &str, what: &str) -> Result<Embedding> {
        match projection {
            Projection::Pca => Embedding::pca_of(x, d, colouring, colour_label, what),
            Projection::Umap => Embedding::umap_of(x, d, colouring, colour_label, what, &crate::analysis::umap::UmapOptions::default()),
        }
    }

    /// PCA of a latent (n × d, row-major) to 2-D, on a seeded subsample of at most MAX_POINTS cells.
    pub fn pca_of<T: Copy + Into<f64>>(x: &[T], d: usize, colouring: Colouring, colour_label: &str, what: &str) -> Result<Embedding> {
        let (n, idx, sub, shown) = drawn_cells(x, d)?;
        let (p, ratio) = pca(&sub, d, 2);
        let xy = (0..idx.len()).map(|i| (p[2 * i], p[2 * i + 1])).collect();
        Ok(Embedding {
            title: format!("{what}: PCA of the latent ({shown}, {d} dims)"),
            colour_label: colour_label.to_string(),
            xy,
            colouring: colouring.select(&idx),
            // Whole percents: plotters' rotated text (the y label) drops a '.' glyph, so "32.1%" read "321%".
            x_label: format!("PC1 ({:.0}% of variance)", 100.0 * ratio[0]),
            y_label: format!("PC2 ({:.0}% of variance)", 100.0 * ratio[1]),
            n_cells: n,
        })
    }

    /// UMAP of a latent (n × d, row-major) to 2-D: only the drawn cells (the PCA's seeded subsample of at
    /// most MAX_POINTS) are laid out, so its exact kNN stays O(MAX_POINTS²). With every cell drawn, `xy`
    /// is the layout of all n cells in order.
    pub fn umap_of<T: Copy + Into<f64>>(x: &[T], d: usize, colouring: Colouring, colour_label: &str, what: &str, o: &crate::analysis::umap::UmapOptions) -> Result<Embedding> {
        use crate::analysis::umap::{umap_layout_init, Init};
        let (n, idx, sub, shown) = drawn_cells(x, d)?;
        let sub: Vec<f32> = sub.iter().map(|&v| v as f32).collect();
        let (p, init) = umap_layout_init(&sub, d, o);
        let xy = (0..idx.len()).map(|i| (p[2 * i], p[2 * i + 1])).collect();
        // (a graph of several components starts from PCA, not umap-learn's per-component layout: say so)
        let start = if init == Init::Pca { ", PCA start" } else { "" };
        Ok(Embedding {
            title: format!("{what}: UMAP of the latent ({shown}, {d} dims; n_neighbors {}, min_dist {}{start})", o.n_neighbors, o.min_dist),
            colour_label: colour_label.to_string(),
            xy,
            colouring: colouring.select(&idx),
            x_label: "UMAP1".into(),
            y_label: "UMAP2".into(),
            n_cells: n,
        })
    }

    /// From an .h5ad written by `splicevi embed`: obsm[`obsm`] projected as `projection` says, coloured
    /// by obs[`colour_by`] (or, without one, `cell_type` when present).
    pub fn from_h5ad(path: &Path, obsm: &str, colour_by: Option<&str>, projection: Projection) -> Result<Embedding> {
        use crate::data::h5::{node, open, read_frame, Node};
        let f = open(path)?;
        let x = match node(&f, &format!("obsm/{obsm}")) {
            Some(Node::Dataset(ds)) => {
                let shape = ds.shape();
                if shape.len() != 2 {
                    bail!("{}: obsm/{obsm} has shape {shape:?}, expected cells × dims", path.display());
                }
                (ds.read_raw::<f64>().with_context(|| format!("{}: reading obsm/{obsm}", path.display()))?, shape[1])
            }
            _ => {
                let keys = crate::data::h5::members(&f, "obsm");
                bail!("{}: no dense obsm/{obsm} (obsm has: {})", path.display(), keys.join(", "))
            }
        };
        let obs = read_frame(&f, "obs").map_err(|e| super::in_file(path, e))?;
        let (colouring, label) = match colour_by.map(str::to_string).or_else(|| default_colour_column(&obs.columns)) {
            Some(c) => match obs.column(&c) {
                Some(col) => (Colouring::from_obs(col), c),
                None => bail!("{}: no obs column `{c}` (obs has: {})", path.display(), obs.column_names().join(", ")),
            },
            None => (Colouring::None, String::new()),
        };
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        Embedding::of(&x.0, x.1, projection, colouring, &label, &format!("{name} obsm[{obsm}]")).map_err(|e| super::in_file(path, anyhow::anyhow!("obsm/{obsm}: {e:#}")))
    }
}

/// The obs column to colour by when none is named: cell_type (or a close spelling), else the first
/// categorical column with 2..=40 categories.
pub fn default_colour_column(cols: &[(String, ObsColumn)]) -> Option<String> {
    for want in ["cell_type", "celltype", "cell_types", "leiden", "louvain", "cluster"] {
        if let Some((n, _)) = cols.iter().find(|(n, _)| n.eq_ignore_ascii_case(want)) {
            return Some(n.clone());
        }
    }
    cols.iter().find(|(_, c)| matches!(c, ObsColumn::Categorical { categories, .. } if (2..=40).contains(&categories.len()))).map(|(n, _)| n.clone())
}

impl Figure for Embedding {
    fn size(&self) -> (u32, u32) {
        (900, 680)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        // A long title (a UMAP's parameters, "20000 of … cells", a long file name) shrinks to stay inside
        // the 900 px: about half an em per character.
        let title_size = (1720 / self.title.chars().count().max(1) as u32).clamp(12, 20);
        let body = root.titled(&self.title, ("sans-serif", title_size)).map_err(pe)?;
        let (w, _) = body.dim_in_pixel();
        let side = match &self.colouring {
            Colouring::None => 0,
            Colouring::Values(_) => 110,
            Colouring::Categories { .. } => 230,
        };
        let (plot, legend) = body.split_horizontally(w - side);
        let (x0, x1) = padded_range(self.xy.iter().map(|p| p.0), 0.04);
        let (y0, y1) = padded_range(self.xy.iter().map(|p| p.1), 0.04);
        let mut chart = ChartBuilder::on(&plot)
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(pe)?;
        chart
            .configure_mesh()
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .x_labels(7)
            .y_labels(7)
            .x_label_formatter(&|x| super::tick(*x, super::tick_decimals(x1 - x0)))
            .y_label_formatter(&|y| super::tick(*y, super::tick_decimals(y1 - y0)))
            .max_light_lines(1)
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .light_line_style(RGBColor(242, 242, 242))
            .draw()
            .map_err(pe)?;
        let radius = if self.xy.len() > 5000 { 2 } else { 3 };
        // Paint in a shuffled order so no category sits on top of another just by its position in the file.
        let order = {
            use rand::seq::SliceRandom;
            use rand::SeedableRng;
            let mut o: Vec<usize> = (0..self.xy.len()).collect();
            o.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(7));
            o
        };
        let missing = RGBColor(200, 200, 200);
        match &self.colouring {
            Colouring::None => {
                chart.draw_series(order.iter().map(|&i| Circle::new(self.xy[i], radius, CATEGORICAL[0].mix(0.7).filled()))).map_err(pe)?;
            }
            Colouring::Categories { codes, names } => {
                chart
                    .draw_series(order.iter().map(|&i| {
                        let c = codes[i].map_or(missing, |k| CATEGORICAL[k % CATEGORICAL.len()]);
                        Circle::new(self.xy[i], radius, c.mix(0.8).filled())
                    }))
                    .map_err(pe)?;
                let mut counts = vec![0usize; names.len()];
                codes.iter().flatten().for_each(|&k| counts[k] += 1);
                let present: Vec<usize> = (0..names.len()).filter(|&k| counts[k] > 0).collect();
                let shown = present.len().min(24);
                legend.draw(&Text::new(self.colour_label.clone(), (10, 30), ("sans-serif", 16).into_font().color(&BLACK))).map_err(pe)?;
                for (row, &k) in present.iter().take(shown).enumerate() {
                    let y = 58 + row as i32 * 22;
                    legend.draw(&Circle::new((18, y), 6, CATEGORICAL[k % CATEGORICAL.len()].filled())).map_err(pe)?;
                    let mut name = names[k].clone();
                    if name.chars().count() > 22 {
                        name = name.chars().take(21).collect::<String>() + "…";
                    }
                    legend.draw(&Text::new(format!("{name} ({})", counts[k]), (30, y - 8), ("sans-serif", 13).into_font().color(&BLACK))).map_err(pe)?;
                }
                if present.len() > shown {
                    let y = 58 + shown as i32 * 22;
                    legend.draw(&Text::new(format!("… {} more", present.len() - shown), (30, y - 8), ("sans-serif", 13).into_font().color(&BLACK))).map_err(pe)?;
                }
            }
            Colouring::Values(v) => {
                let (lo, hi) = padded_range(v.iter().copied(), 0.0);
                chart
                    .draw_series(order.iter().map(|&i| {
                        let c = if v[i].is_finite() { viridis((v[i] - lo) / (hi - lo)) } else { missing };
                        Circle::new(self.xy[i], radius, c.mix(0.85).filled())
                    }))
                    .map_err(pe)?;
                colour_bar(&legend, lo, hi, &self.colour_label)?;
            }
        }
        Ok(())
    }
}
