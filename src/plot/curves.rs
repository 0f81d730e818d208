//! Training curves: one panel per loss term of a run's `metrics.tsv`, train and validation against the
//! epoch (1-based).

use super::{padded_range, pe, read_tsv, Figure};
use anyhow::{bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

pub const TRAIN_COLOUR: RGBColor = RGBColor(31, 119, 180);
pub const VALIDATION_COLOUR: RGBColor = RGBColor(255, 127, 14);

/// One panel: a loss term and its series (label, (epoch, value)).
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    pub term: String,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Curves {
    pub title: String,
    pub panels: Vec<Panel>,
}

/// Terms with a `_train` / `_validation` pair, then the train-only ones, in this order.
const PAIRED: [&str; 5] = ["reconstruction_loss", "reconstruction_loss_expression", "reconstruction_loss_splicing", "kl_local", "elbo"];
const SINGLE: [&str; 2] = ["train_loss", "adversary_loss"];

impl Curves {
    /// Panels from a metrics table (header + rows as written by the trainer).
    pub fn from_table(header: &[String], rows: &[Vec<String>], title: &str) -> Result<Curves> {
        let col = |name: &str| header.iter().position(|h| h == name);
        let Some(ep) = col("epoch") else { bail!("metrics table without an `epoch` column") };
        let series = |c: usize| -> Vec<(f64, f64)> {
            rows.iter()
                .filter_map(|r| {
                    let (e, v) = (super::num(r.get(ep)?), super::num(r.get(c)?));
                    (e.is_finite() && v.is_finite()).then_some((e + 1.0, v))
                })
                .collect()
        };
        // A term that was not computed (no validation cells, no adversary) has no values (empty fields),
        // or all zeros in runs written before it was left empty.
        let useful = |s: &Vec<(f64, f64)>| !s.is_empty() && s.iter().any(|&(_, v)| v != 0.0);
        let mut panels = Vec::new();
        for term in PAIRED {
            let mut p = Panel { term: term.to_string(), series: vec![] };
            for (suffix, label) in [("_train", "train"), ("_validation", "validation")] {
                if let Some(c) = col(&format!("{term}{suffix}")) {
                    let s = series(c);
                    if useful(&s) {
                        p.series.push((label.to_string(), s));
                    }
                }
            }
            if !p.series.is_empty() {
                panels.push(p);
            }
        }
        for term in SINGLE {
            if let Some(c) = col(term) {
                let s = series(c);
                if useful(&s) {
                    panels.push(Panel { term: term.to_string(), series: vec![("train".to_string(), s)] });
                }
            }
        }
        if panels.is_empty() {
            bail!("no loss term with values in the metrics table ({} epochs)", rows.len());
        }
        Ok(Curves { title: title.to_string(), panels })
    }

    /// From a run directory's `metrics.tsv`.
    pub fn from_run_dir(dir: &Path) -> Result<Curves> {
        let path = dir.join("metrics.tsv");
        let (header, rows) = read_tsv(&path)?;
        let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| dir.display().to_string());
        let n = rows.len();
        Curves::from_table(&header, &rows, &format!("Training curves: {name} ({n} epoch{})", if n == 1 { "" } else { "s" })).map_err(|e| super::in_file(&path, e))
    }

    fn grid(&self) -> (usize, usize) {
        let n = self.panels.len();
        let cols = n.clamp(1, 3);
        (cols, n.div_ceil(cols))
    }
}

fn pretty(term: &str) -> String {
    match term {
        "reconstruction_loss" => "reconstruction loss (total)".into(),
        "reconstruction_loss_expression" => "reconstruction loss, expression".into(),
        "reconstruction_loss_splicing" => "reconstruction loss, splicing".into(),
        "kl_local" => "KL divergence (local)".into(),
        "elbo" => "ELBO (reconstruction + KL)".into(),
        "train_loss" => "minimised loss (train)".into(),
        "adversary_loss" => "adversarial classifier loss".into(),
        t => t.replace('_', " "),
    }
}

impl Figure for Curves {
    fn size(&self) -> (u32, u32) {
        let (c, r) = self.grid();
        (420 * c as u32, 60 + 350 * r as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let (cols, rows) = self.grid();
        let body = root.titled(&self.title, ("sans-serif", 24)).map_err(pe)?;
        let cells = body.split_evenly((rows, cols));
        for (p, area) in self.panels.iter().zip(cells.iter()) {
            let xs = p.series.iter().flat_map(|(_, s)| s.iter().map(|&(x, _)| x));
            let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
            let (x0, x1) = if x1 - x0 < 1.0 { (x0 - 0.5, x1 + 0.5) } else { (x0, x1) };
            // At most one label per whole epoch in the range: plotters then takes a step of 1, 2, 5, 10, …
            // epochs (8 labels over 1–4 epochs gave a step of 0.5, printed "1 2 2 2 3").
            let x_labels = ((x1.floor() - x0.ceil()) as usize + 1).min(8);
            let (y0, y1) = padded_range(p.series.iter().flat_map(|(_, s)| s.iter().map(|&(_, y)| y)), 0.05);
            // The legend below the chart, outside the axes: inside, it covered points in every corner.
            let entries = p.series.iter().map(|(label, _)| (super::Mark::Line(colour_of(label)), label.clone())).collect();
            let legend = super::Legend::new(area, entries)?;
            let (area, strip) = area.split_vertically(area.dim_in_pixel().1.saturating_sub(legend.height()));
            legend.draw(&strip)?;
            let mut chart = ChartBuilder::on(&area)
                .caption(pretty(&p.term), ("sans-serif", 17))
                .margin(10)
                .margin_right(18)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(pe)?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .x_labels(x_labels)
                .y_labels(6)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| if y.abs() >= 1e5 || (y.abs() < 1e-3 && *y != 0.0) { short(*y) } else { super::tick(*y, super::tick_decimals(y1 - y0)) })
                .max_light_lines(1)
                .label_style(("sans-serif", 13))
                .axis_desc_style(("sans-serif", 14))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(pe)?;
            for (label, s) in &p.series {
                let colour = colour_of(label);
                chart.draw_series(LineSeries::new(s.iter().copied(), colour.stroke_width(2))).map_err(pe)?;
                // Markers too, so a run of a few epochs still shows its points.
                if s.len() <= 60 {
                    chart.draw_series(s.iter().map(|&(x, y)| Circle::new((x, y), 3, colour.filled()))).map_err(pe)?;
                }
            }
        }
        Ok(())
    }
}

fn colour_of(label: &str) -> RGBColor {
    if label == "validation" {
        VALIDATION_COLOUR
    } else {
        TRAIN_COLOUR
    }
}

/// A compact tick label.
pub(crate) fn short(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::record::{circle_in_box, record};

    /// A loss that swings between its extremes every epoch has points in every corner, where a legend
    /// inside the axes had to cover some: no marker and no stretch of a curve may lie under the legend.
    #[test]
    fn the_legend_covers_no_point_or_line() {
        let zigzag = |lo: f64, hi: f64| (1..=12).map(|e| (e as f64, if e % 2 == 0 { hi } else { lo })).collect::<Vec<_>>();
        let panel = Panel { term: "elbo".into(), series: vec![("train".into(), zigzag(0.0, 10.0)), ("validation".into(), zigzag(10.0, 0.5))] };
        let log = record(&Curves { title: "t".into(), panels: vec![panel] });
        let boxes = log.boxes(crate::plot::LEGEND_BORDER);
        assert_eq!(boxes.len(), 1, "one legend box: {:?}", log.rects);
        let markers: Vec<_> = log.circles.iter().filter(|c| c.1 == 3).collect();
        assert_eq!(markers.len(), 24);
        let under: Vec<_> = markers.iter().filter(|c| circle_in_box(c.0, c.1, boxes[0])).collect();
        assert!(under.is_empty(), "{} markers under the legend {:?}: {under:?}", under.len(), boxes[0]);
        // The curves (12 vertices each), sampled every pixel or so along each segment.
        let curves: Vec<_> = log.paths.iter().filter(|p| p.0.len() == 12).collect();
        assert_eq!(curves.len(), 2);
        for (path, _) in curves {
            for w in path.windows(2) {
                for k in 0..=100 {
                    let t = k as f64 / 100.0;
                    let q = ((w[0].0 as f64 + t * (w[1].0 - w[0].0) as f64) as i32, (w[0].1 as f64 + t * (w[1].1 - w[0].1) as f64) as i32);
                    assert!(!circle_in_box(q, 1, boxes[0]), "a curve passes under the legend {:?} at {q:?}", boxes[0]);
                }
            }
        }
    }
}
