//! Imputation density scatter: for each method, a 2-D histogram (heatmap of log10(1 + count)) of the
//! true PSI against the predicted PSI of the dropped entries, with the y = x diagonal and Pearson r (over
//! every pair in the file) in the panel title.
//!
//! Input: the pairs TSV `splicevi evaluate` writes beside its output (`cell`, `junction`, `truth`, then
//! one column of predictions per method).

use super::{colour_bar, pe, pearson, read_tsv, viridis, Figure};
use anyhow::{bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// Bins per axis.
pub const BINS: usize = 50;

#[derive(Clone, Debug, PartialEq)]
pub struct MethodPairs {
    pub method: String,
    pub truth: Vec<f64>,
    pub pred: Vec<f64>,
}

impl MethodPairs {
    pub fn r(&self) -> f64 {
        pearson(&self.truth, &self.pred)
    }

    /// Counts per bin, [truth bin][pred bin], over [0, 1]² (values outside are clamped to the edge bins).
    pub fn histogram(&self) -> Vec<Vec<u64>> {
        let mut h = vec![vec![0u64; BINS]; BINS];
        let bin = |v: f64| ((v.clamp(0.0, 1.0) * BINS as f64) as usize).min(BINS - 1);
        for (&t, &p) in self.truth.iter().zip(&self.pred) {
            if t.is_finite() && p.is_finite() {
                h[bin(t)][bin(p)] += 1;
            }
        }
        h
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ImputeScatter {
    pub title: String,
    pub methods: Vec<MethodPairs>,
}

/// Display name of a method column.
pub fn method_label(m: &str) -> String {
    match m {
        "splicevi_dm_posterior" => "SpliceVI, DM posterior mean".into(),
        "splicevi_decoder" => "SpliceVI, decoder PSI".into(),
        "mean_bayes" => "MeanBayes baseline".into(),
        other => other.replace('_', " "),
    }
}

impl ImputeScatter {
    pub fn from_table(header: &[String], rows: &[Vec<String>], title: &str) -> Result<ImputeScatter> {
        let Some(t) = header.iter().position(|h| h == "truth") else { bail!("pairs table without a `truth` column") };
        let methods: Vec<usize> = (0..header.len()).filter(|&c| c != t && header[c] != "cell" && header[c] != "junction").collect();
        if methods.is_empty() {
            bail!("pairs table without prediction columns (expected truth and one column per method)");
        }
        let truth: Vec<f64> = rows.iter().map(|r| r.get(t).map_or(f64::NAN, |s| super::num(s))).collect();
        let methods = methods
            .into_iter()
            .map(|c| {
                let pred: Vec<f64> = rows.iter().map(|r| r.get(c).map_or(f64::NAN, |s| super::num(s))).collect();
                let (truth, pred): (Vec<f64>, Vec<f64>) = truth.iter().zip(&pred).filter(|(a, b)| a.is_finite() && b.is_finite()).map(|(&a, &b)| (a, b)).unzip();
                MethodPairs { method: header[c].clone(), truth, pred }
            })
            .collect();
        Ok(ImputeScatter { title: title.to_string(), methods })
    }

    pub fn from_file(path: &Path) -> Result<ImputeScatter> {
        let (header, rows) = read_tsv(path)?;
        ImputeScatter::from_table(&header, &rows, &format!("Imputation of dropped entries ({} entries): true vs predicted PSI", rows.len())).map_err(|e| super::in_file(path, e))
    }

    fn max_log_count(&self) -> f64 {
        self.methods.iter().flat_map(|m| m.histogram().into_iter().flatten()).map(|c| (1.0 + c as f64).log10()).fold(0.0, f64::max).max(1e-9)
    }
}

impl Figure for ImputeScatter {
    fn size(&self) -> (u32, u32) {
        (440 * self.methods.len() as u32 + 90, 520)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let body = root.titled(&self.title, ("sans-serif", 22)).map_err(pe)?;
        let (w, _) = body.dim_in_pixel();
        let (panels, bar) = body.split_horizontally(w.saturating_sub(90));
        let cells = panels.split_evenly((1, self.methods.len().max(1)));
        let vmax = self.max_log_count();
        for (m, area) in self.methods.iter().zip(cells.iter()) {
            let r = m.r();
            let rs = if r.is_finite() { format!("{r:.3}") } else { "n/a".into() };
            let mut chart = ChartBuilder::on(area)
                .caption(format!("{}: r = {rs}", method_label(&m.method)), ("sans-serif", 17))
                .margin(12)
                .x_label_area_size(45)
                .y_label_area_size(55)
                .build_cartesian_2d(0.0..1.0, 0.0..1.0)
                .map_err(pe)?;
            chart
                .configure_mesh()
                .disable_mesh()
                .x_desc(format!("true PSI ({} dropped entries)", m.truth.len()))
                .y_desc("predicted PSI")
                .x_labels(6)
                .y_labels(6)
                .x_label_formatter(&|x| format!("{x:.1}"))
                .y_label_formatter(&|y| format!("{y:.1}"))
                .label_style(("sans-serif", 13))
                .axis_desc_style(("sans-serif", 14))
                .draw()
                .map_err(pe)?;
            let h = m.histogram();
            let step = 1.0 / BINS as f64;
            chart
                .draw_series(h.iter().enumerate().flat_map(|(i, row)| {
                    row.iter().enumerate().filter(|(_, &c)| c > 0).map(move |(j, &c)| {
                        let v = (1.0 + c as f64).log10() / vmax;
                        Rectangle::new([(i as f64 * step, j as f64 * step), ((i + 1) as f64 * step, (j + 1) as f64 * step)], viridis(v).filled())
                    })
                }))
                .map_err(pe)?;
            chart.draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], RGBColor(200, 30, 30).stroke_width(1))).map_err(pe)?;
        }
        colour_bar(&bar, 0.0, vmax, "log10 (1 + entries per bin)")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::record::record;

    /// No text is drawn over the heatmap: the entry count sat in its upper-left corner, over the bins of
    /// truth ≈ 0 predicted ≈ 1. The plotting area is where the y = x diagonal runs, corner to corner.
    #[test]
    fn no_text_over_the_bins() {
        let truth: Vec<f64> = (0..400).map(|i| (i % 20) as f64 / 19.0).collect();
        let pred: Vec<f64> = (0..400).map(|i| (i / 20) as f64 / 19.0).collect();
        let fig = ImputeScatter { title: "t".into(), methods: vec![MethodPairs { method: "mean_bayes".into(), truth, pred }] };
        let log = record(&fig);
        let diag: Vec<_> = log.paths.iter().filter(|p| p.1 == (200, 30, 30)).collect();
        assert_eq!(diag.len(), 1, "{:?}", log.paths);
        let (a, b) = (diag[0].0[0], *diag[0].0.last().unwrap());
        let (x0, x1, y0, y1) = (a.0.min(b.0), a.0.max(b.0), a.1.min(b.1), a.1.max(b.1));
        let inside: Vec<_> = log.texts.iter().filter(|(_, p)| p.0 > x0 && p.0 < x1 && p.1 > y0 && p.1 < y1).collect();
        assert!(inside.is_empty(), "text over the heatmap [{x0}, {x1}] × [{y0}, {y1}]: {inside:?}");
        assert!(log.texts.iter().any(|(t, _)| t.contains("400 dropped entries")), "the entry count is not shown: {:?}", log.texts);
    }
}
