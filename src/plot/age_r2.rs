//! Age R² heatmap (the original's `age_r2_heatmap` block, model.md §8.1): the held-out R² of a ridge
//! regression of age on each latent (columns: joint, expression, splicing), for all cells with an age
//! and for each class of the label column with 25 or more of them (rows), coloured by viridis on [0, 1].
//!
//! Input: the long TSV `splicevi evaluate --age COL [--label COL]` writes (section, subset, method,
//! metric, value): its `latent` rows (all cells; the latent_train / latent_test rows are not drawn)
//! `age_r2`, `age_n_cells`, `age_r2:LABEL=CLASS` and `age_n_cells:LABEL=CLASS`.

use super::{colour_bar, pe, read_tsv, viridis, Figure};
use crate::analysis::latent_metrics::AGE_MIN_CELLS;
use anyhow::{bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

/// Colour of a cell without a number (NaN, or no row for that space).
pub const MISSING_COLOUR: RGBColor = RGBColor(220, 220, 220);
/// The latent spaces in the order evaluate writes them (other subsets follow in table order).
pub const SPACES: [&str; 3] = ["joint", "expression", "splicing"];
/// Name of the first row (the global R²).
pub const ALL_CELLS: &str = "all cells";

const CELL_W: u32 = 130;
const CELL_H: u32 = 40;
const HEADER_H: u32 = 50;
const FOOTER_H: u32 = 60;
const BAR_W: u32 = 100;
const PAD: u32 = 20;
/// Row labels longer than this are cut (a tissue | cell type pair can be long).
const MAX_LABEL_CHARS: usize = 60;

#[derive(Clone, Debug, PartialEq)]
pub struct AgeRow {
    /// [`ALL_CELLS`] or the class.
    pub name: String,
    /// Cells with an age in the row (the same cells for every space; NaN when the table lacks it).
    pub n_cells: f64,
    /// R² per column of [`AgeR2Heatmap::spaces`] (NaN: undefined or missing).
    pub r2: Vec<f64>,
}

impl AgeRow {
    /// The row's label: its name and the number of aged cells.
    pub fn label(&self) -> String {
        let name = if self.name.chars().count() > MAX_LABEL_CHARS { format!("{}...", self.name.chars().take(MAX_LABEL_CHARS - 3).collect::<String>()) } else { self.name.clone() };
        if self.n_cells.is_finite() {
            format!("{name} (n = {})", self.n_cells.round() as i64)
        } else {
            name
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct AgeR2Heatmap {
    pub title: String,
    /// The --label column of the per-class rows (None: the table has the global row only).
    pub label: Option<String>,
    pub spaces: Vec<String>,
    pub rows: Vec<AgeRow>,
}

/// The text printed in a cell: two decimals ("0.00", not "-0.00", for a tiny negative R²), "n/a" for NaN.
pub fn cell_text(v: f64) -> String {
    if v.is_finite() {
        let t = format!("{v:.2}");
        if t == "-0.00" {
            "0.00".into()
        } else {
            t
        }
    } else {
        "n/a".into()
    }
}

/// The colour of a cell: viridis on [0, 1] (R² below 0 at the bottom colour), light grey for NaN.
pub fn cell_colour(v: f64) -> RGBColor {
    if v.is_finite() {
        viridis(v.clamp(0.0, 1.0))
    } else {
        MISSING_COLOUR
    }
}

impl AgeR2Heatmap {
    /// The --label column of the table: the one `n_cells_labelled_LABEL` names (a label or class may
    /// hold `=`), else the text before the first `=` of an `age_r2:LABEL=CLASS` metric.
    fn label_of<'a>(metrics: impl Iterator<Item = &'a str> + Clone) -> Option<String> {
        let named = metrics.clone().find_map(|m| m.strip_prefix("n_cells_labelled_"));
        named.or_else(|| metrics.clone().find_map(|m| m.strip_prefix("age_r2:")).and_then(|s| s.split_once('=')).map(|(l, _)| l)).map(String::from)
    }

    pub fn from_table(header: &[String], rows: &[Vec<String>], title: &str) -> Result<AgeR2Heatmap> {
        let col = |n: &str| header.iter().position(|h| h == n);
        let (Some(sec), Some(sub), Some(met), Some(val)) = (col("section"), col("subset"), col("metric"), col("value")) else {
            bail!("not an evaluate table (expected the columns section, subset, method, metric, value)")
        };
        fn field(r: &[String], c: usize) -> &str {
            r.get(c).map_or("", |s| s.as_str())
        }
        // (only the all-cells rows: the train / test splits are sections of their own)
        let latent: Vec<&Vec<String>> = rows.iter().filter(|r| field(r, sec) == "latent").collect();
        if !latent.iter().any(|r| field(r, met) == "age_r2") {
            bail!("no age_r2 row in section `latent`: evaluate was run without --age (give --age COL, a numeric obs column)");
        }
        let mut spaces: Vec<String> = SPACES.iter().filter(|s| latent.iter().any(|r| field(r, sub) == **s && field(r, met) == "age_r2")).map(|s| s.to_string()).collect();
        for r in latent.iter().filter(|r| field(r, met).starts_with("age_r2")) {
            if !spaces.iter().any(|s| s == field(r, sub)) {
                spaces.push(field(r, sub).to_string());
            }
        }
        let label = Self::label_of(latent.iter().map(|r| field(r, met)));
        let class_of = |m: &str, prefix: &str| -> Option<String> { m.strip_prefix(prefix)?.strip_prefix(&format!("{}=", label.as_deref()?)).map(String::from) };
        let mut names: Vec<String> = vec![ALL_CELLS.to_string()];
        for r in &latent {
            if let Some(c) = class_of(field(r, met), "age_r2:") {
                if !names[1..].contains(&c) {
                    names.push(c);
                }
            }
        }
        // (the first row of a name and space counts, as the table has one)
        let value = |space: &str, metric: &dyn Fn(&str) -> bool| -> f64 {
            latent.iter().find(|r| field(r, sub) == space && metric(field(r, met))).map_or(f64::NAN, |r| super::num(field(r, val)))
        };
        let rows = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let is = |m: &str, global: &str, prefix: &str| if i == 0 { m == global } else { class_of(m, prefix).as_deref() == Some(name.as_str()) };
                let r2 = spaces.iter().map(|s| value(s, &|m| is(m, "age_r2", "age_r2:"))).collect();
                let n_cells = spaces.iter().map(|s| value(s, &|m| is(m, "age_n_cells", "age_n_cells:"))).find(|v| v.is_finite()).unwrap_or(f64::NAN);
                AgeRow { name: name.clone(), n_cells, r2 }
            })
            .collect();
        Ok(AgeR2Heatmap { title: title.to_string(), label, spaces, rows })
    }

    pub fn from_file(path: &Path) -> Result<AgeR2Heatmap> {
        let (header, rows) = read_tsv(path)?;
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let mut fig = AgeR2Heatmap::from_table(&header, &rows, "").map_err(|e| super::in_file(path, e))?;
        fig.title = match &fig.label {
            Some(l) => format!("Age R² per latent, all cells and by {l}: {name}"),
            None => format!("Age R² per latent, all cells: {name}"),
        };
        Ok(fig)
    }

    /// The two lines under the grid: what the numbers are and how they are coloured.
    fn notes(&self) -> [String; 2] {
        let mut second = "R² below 0 in the bottom colour; grey: n/a (too few aged cells, or constant ages)".to_string();
        if let (Some(l), 1) = (&self.label, self.rows.len()) {
            second = format!("no class of {l} has {AGE_MIN_CELLS} or more aged cells; {second}");
        }
        ["held-out R² of a ridge regression of age on the standardised latent (80/20 split)".to_string(), second]
    }

    fn label_width(&self) -> u32 {
        // (about 8.5 px a character at 15 px; the label column's name heads the row labels)
        let chars = self.rows.iter().map(|r| r.label().chars().count()).chain(self.label.iter().map(|l| l.chars().count())).max().unwrap_or(0);
        (chars as f64 * 8.5) as u32 + 20
    }
}

impl Figure for AgeR2Heatmap {
    fn size(&self) -> (u32, u32) {
        let grid_w = PAD + self.label_width() + CELL_W * self.spaces.len().max(1) as u32 + PAD;
        let title_w = (self.title.chars().count() as f64 * 11.5) as u32 + 40;
        let notes_w = self.notes().iter().map(|n| (n.chars().count() as f64 * 7.0) as u32 + 2 * PAD).max().unwrap_or(0);
        let w = (grid_w + BAR_W).max(title_w).max(notes_w + BAR_W).max(520);
        let h = (40 + HEADER_H + CELL_H * self.rows.len() as u32 + FOOTER_H).max(360);
        (w, h)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let body = root.titled(&self.title, ("sans-serif", 22)).map_err(pe)?;
        let (w, _) = body.dim_in_pixel();
        let (grid, bar) = body.split_horizontally(w.saturating_sub(BAR_W));
        let font = |size: u32, colour: RGBColor, h: HPos, v: VPos| ("sans-serif", size).into_font().color(&colour).pos(Pos::new(h, v));
        let x0 = (PAD + self.label_width()) as i32;
        let y0 = HEADER_H as i32;
        let (cw, ch) = (CELL_W as i32, CELL_H as i32);
        for (j, s) in self.spaces.iter().enumerate() {
            grid.draw(&Text::new(s.clone(), (x0 + j as i32 * cw + cw / 2, y0 - 10), font(16, BLACK, HPos::Center, VPos::Bottom))).map_err(pe)?;
        }
        if let Some(l) = &self.label {
            grid.draw(&Text::new(l.clone(), (x0 - 10, y0 - 10), font(14, RGBColor(90, 90, 90), HPos::Right, VPos::Bottom))).map_err(pe)?;
        }
        for (i, row) in self.rows.iter().enumerate() {
            let y = y0 + i as i32 * ch;
            grid.draw(&Text::new(row.label(), (x0 - 10, y + ch / 2), font(15, BLACK, HPos::Right, VPos::Center))).map_err(pe)?;
            for (j, &v) in row.r2.iter().enumerate() {
                let x = x0 + j as i32 * cw;
                grid.draw(&Rectangle::new([(x, y), (x + cw, y + ch)], cell_colour(v).filled())).map_err(pe)?;
                grid.draw(&Rectangle::new([(x, y), (x + cw, y + ch)], WHITE.stroke_width(2))).map_err(pe)?;
                // (white on the dark half of viridis, black on the light half and on grey)
                let ink = if v.is_finite() && v < 0.55 { WHITE } else { BLACK };
                grid.draw(&Text::new(cell_text(v), (x + cw / 2, y + ch / 2), font(15, ink, HPos::Center, VPos::Center))).map_err(pe)?;
            }
            if i == 0 && self.rows.len() > 1 {
                // (the global row apart from the classes)
                let yl = y + ch;
                grid.draw(&PathElement::new(vec![(PAD as i32, yl), (x0 + cw * self.spaces.len() as i32, yl)], BLACK.stroke_width(1))).map_err(pe)?;
            }
        }
        let yf = y0 + ch * self.rows.len() as i32 + 18;
        for (k, note) in self.notes().into_iter().enumerate() {
            grid.draw(&Text::new(note, (PAD as i32, yf + 18 * k as i32), font(13, RGBColor(90, 90, 90), HPos::Left, VPos::Center))).map_err(pe)?;
        }
        colour_bar(&bar, 0.0, 1.0, "held-out R² of age")?;
        Ok(())
    }
}
