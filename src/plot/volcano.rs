//! Volcano plot of a differential-splicing table: ΔPSI (`effect_size`) against log10 of the Bayes factor
//! (the table's `bayes_factor` is natural-log), junctions called at the FDR target (`is_ds_fdr`, or
//! recomputed from `proba_ds` at another target) in red. One panel per comparison.

use super::{padded_range, pe, read_tsv, subsample, Figure, MAX_POINTS};
use crate::analysis::differential::fdr_calls;
use anyhow::{bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

pub const HIT_COLOUR: RGBColor = RGBColor(214, 39, 40);
pub const OTHER_COLOUR: RGBColor = RGBColor(150, 150, 150);
/// Panels drawn at most (the first comparisons of the table).
pub const MAX_PANELS: usize = 16;

/// (x, y) points.
pub type Points = Vec<(f64, f64)>;

#[derive(Clone, Debug, PartialEq)]
pub struct VolcanoPanel {
    pub comparison: String,
    /// (ΔPSI, log10 BF, hit)
    pub points: Vec<(f64, f64, bool)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Volcano {
    pub title: String,
    pub fdr_label: String,
    pub panels: Vec<VolcanoPanel>,
}

impl Volcano {
    /// `fdr`: recompute the calls from proba_ds at this target instead of reading is_ds_fdr.
    pub fn from_table(header: &[String], rows: &[Vec<String>], fdr: Option<f64>, title: &str) -> Result<Volcano> {
        let col = |n: &str| header.iter().position(|h| h == n);
        let (Some(es), Some(bf)) = (col("effect_size"), col("bayes_factor")) else { bail!("DS table without effect_size and bayes_factor columns") };
        let (hit, proba, cmp) = (col("is_ds_fdr"), col("proba_ds"), col("comparison"));
        if fdr.is_some() && proba.is_none() {
            bail!("--fdr needs a proba_ds column");
        }
        if fdr.is_none() && hit.is_none() {
            bail!("DS table without is_ds_fdr (give --fdr to call from proba_ds)");
        }
        let mut order: Vec<String> = Vec::new();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            let name = cmp.and_then(|c| r.get(c)).cloned().unwrap_or_default();
            match order.iter().position(|n| *n == name) {
                Some(k) => groups[k].push(i),
                None => {
                    order.push(name);
                    groups.push(vec![i]);
                }
            }
        }
        let get = |r: &Vec<String>, c: usize| r.get(c).map_or(f64::NAN, |s| super::num(s));
        let mut panels = Vec::new();
        for (name, idx) in order.into_iter().zip(groups) {
            let calls: Vec<bool> = match fdr {
                Some(f) => fdr_calls(&idx.iter().map(|&i| get(&rows[i], proba.unwrap())).map(|p| if p.is_finite() { p } else { 0.0 }).collect::<Vec<_>>(), f),
                None => idx.iter().map(|&i| rows[i].get(hit.unwrap()).is_some_and(|s| matches!(s.trim(), "True" | "true" | "1"))).collect(),
            };
            let points = idx
                .iter()
                .zip(calls)
                .map(|(&i, h)| (get(&rows[i], es), get(&rows[i], bf) / std::f64::consts::LN_10, h))
                .filter(|(x, y, _)| x.is_finite() && y.is_finite())
                .collect();
            panels.push(VolcanoPanel { comparison: name, points });
        }
        let fdr_label = match fdr {
            Some(f) => format!("called at FDR {f} (from proba_ds only)"),
            None => "called (is_ds_fdr)".to_string(),
        };
        Ok(Volcano { title: title.to_string(), fdr_label, panels })
    }

    pub fn from_file(path: &Path, fdr: Option<f64>) -> Result<Volcano> {
        let (header, rows) = read_tsv(path)?;
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let mut v = Volcano::from_table(&header, &rows, fdr, &format!("Differential splicing: {name}")).map_err(|e| super::in_file(path, e))?;
        if v.panels.len() > MAX_PANELS {
            eprintln!("volcano: drawing the first {MAX_PANELS} of {} comparisons", v.panels.len());
            v.panels.truncate(MAX_PANELS);
        }
        Ok(v)
    }

    fn grid(&self) -> (usize, usize) {
        let n = self.panels.len().max(1);
        let cols = (n as f64).sqrt().ceil() as usize;
        (cols, n.div_ceil(cols))
    }

    /// The points drawn in a panel: every hit and a seeded subsample of the rest (≤ MAX_POINTS in all).
    pub fn drawn(p: &VolcanoPanel) -> (Points, Points) {
        let hits: Vec<(f64, f64)> = p.points.iter().filter(|q| q.2).map(|q| (q.0, q.1)).collect();
        let others: Vec<(f64, f64)> = p.points.iter().filter(|q| !q.2).map(|q| (q.0, q.1)).collect();
        let hits: Vec<(f64, f64)> = subsample(hits.len(), MAX_POINTS, 1).into_iter().map(|i| hits[i]).collect();
        let room = MAX_POINTS.saturating_sub(hits.len());
        let others = subsample(others.len(), room, 2).into_iter().map(|i| others[i]).collect();
        (hits, others)
    }
}

impl Figure for Volcano {
    fn size(&self) -> (u32, u32) {
        let (c, r) = self.grid();
        (520 * c as u32, 60 + 500 * r as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let (cols, rows) = self.grid();
        let body = root.titled(&self.title, ("sans-serif", 22)).map_err(pe)?;
        let cells = body.split_evenly((rows, cols));
        for (p, area) in self.panels.iter().zip(cells.iter()) {
            let (hits, others) = Volcano::drawn(p);
            let n_hits = p.points.iter().filter(|q| q.2).count();
            let xmax = p.points.iter().map(|q| q.0.abs()).fold(0.0, f64::max).max(0.05) * 1.05;
            let (y0, y1) = padded_range(p.points.iter().map(|q| q.1), 0.05);
            let caption = if p.comparison.is_empty() { format!("{n_hits} of {} junctions called", p.points.len()) } else { format!("{}: {n_hits} of {} called", p.comparison, p.points.len()) };
            // The legend below the chart, outside the axes: inside, it hid points whatever corner it took.
            let legend = super::Legend::new(
                area,
                vec![(super::Mark::Dot(OTHER_COLOUR), format!("not called ({})", p.points.len() - n_hits)), (super::Mark::Dot(HIT_COLOUR), format!("{} ({n_hits})", self.fdr_label))],
            )?;
            let (area, strip) = area.split_vertically(area.dim_in_pixel().1.saturating_sub(legend.height()));
            legend.draw(&strip)?;
            let mut chart = ChartBuilder::on(&area)
                .caption(caption, ("sans-serif", 17))
                .margin(12)
                .margin_right(20)
                .x_label_area_size(45)
                .y_label_area_size(60)
                .build_cartesian_2d(-xmax..xmax, y0..y1)
                .map_err(pe)?;
            chart
                .configure_mesh()
                .x_desc("ΔPSI (effect_size = PSI group 2 − PSI group 1)")
                .y_desc("log10 Bayes factor")
                .x_labels(7)
                .y_labels(7)
                .x_label_formatter(&|x| super::tick(*x, super::tick_decimals(2.0 * xmax)))
                .y_label_formatter(&|y| super::tick(*y, super::tick_decimals(y1 - y0)))
                .max_light_lines(1)
                .label_style(("sans-serif", 13))
                .axis_desc_style(("sans-serif", 14))
                .light_line_style(RGBColor(238, 238, 238))
                .draw()
                .map_err(pe)?;
            chart.draw_series(LineSeries::new([(0.0, y0), (0.0, y1)], RGBColor(120, 120, 120).stroke_width(1))).map_err(pe)?;
            chart.draw_series(others.iter().map(|&(x, y)| Circle::new((x, y), 2, OTHER_COLOUR.mix(0.6).filled()))).map_err(pe)?;
            chart.draw_series(hits.iter().map(|&(x, y)| Circle::new((x, y), 3, HIT_COLOUR.filled()))).map_err(pe)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::record::{circle_in_box, record};

    /// The QA case (robust preset, toy data): junctions with proba_ds 0 (log10 BF -8) at ΔPSI near 0, under
    /// a cloud of others; no drawn point may lie under the legend's box.
    #[test]
    fn the_legend_covers_no_point() {
        let mut points: Vec<(f64, f64, bool)> = (0..38).map(|i| (-0.004 + 0.0003 * i as f64, -8.0, false)).collect();
        points.extend((0..250).map(|i| (0.09 * ((i as f64 * 0.37).sin()), -0.1 - 2.0 * ((i as f64 * 0.11).cos()).abs(), i % 17 == 0)));
        points.extend([(0.1, 0.0, true), (-0.09, -8.0, false), (0.1, -8.0, false)]);
        let v = Volcano { title: "t".into(), fdr_label: "called at FDR 0.05 (from proba_ds only)".into(), panels: vec![VolcanoPanel { comparison: "T0 vs Rest".into(), points }] };
        let log = record(&v);
        let boxes = log.boxes(crate::plot::LEGEND_BORDER);
        assert_eq!(boxes.len(), 1, "one legend box: {:?}", log.rects);
        // The data points: radius 2 (not called) and 3 (called); the legend's own marks are radius 4.
        let drawn: Vec<_> = log.circles.iter().filter(|c| c.1 < 4).collect();
        assert_eq!(drawn.len(), 291);
        let under: Vec<_> = drawn.iter().filter(|c| circle_in_box(c.0, c.1, boxes[0])).collect();
        assert!(under.is_empty(), "{} points under the legend {:?}: {:?}", under.len(), boxes[0], &under[..under.len().min(5)]);
    }
}
