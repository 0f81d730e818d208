//! Pictures of the outputs (issue 5): training curves, imputation density scatter, age R² heatmap, DS
//! volcano and a 2-D embedding of a latent. Each is drawn once per backend into a PNG (RGB buffer encoded with `png`) and an
//! SVG (a string), both written atomically next to a prefix: `PREFIX.png` and `PREFIX.svg`.
//!
//! Text is rendered with plotters' `ab_glyph` support from a font compiled into the binary
//! (`assets/fonts/DejaVuSans-subset.ttf`), so nothing depends on system fonts or fontconfig.

pub mod age_r2;
pub mod curves;
pub mod embedding;
pub mod impute;
pub mod volcano;

use crate::util::write_atomic;
use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};
use std::sync::Once;

/// DejaVu Sans, subset (see assets/fonts/README.md for the licence).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf");

/// Border of a legend's box (the geometry tests find the box by it).
pub const LEGEND_BORDER: RGBColor = RGBColor(180, 180, 180);

/// Most points drawn in one scatter (a seeded subsample above this).
pub const MAX_POINTS: usize = 20_000;

/// Register the bundled font under the family names plotters asks for (once per process).
pub fn init_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for family in ["sans-serif", "serif", "monospace"] {
            for style in [FontStyle::Normal, FontStyle::Bold, FontStyle::Italic, FontStyle::Oblique] {
                // The bytes are a valid TrueType font (checked by the tests); ignore the impossible error.
                let _ = plotters::style::register_font(family, style, FONT);
            }
        }
    });
}

/// A picture that can be drawn on any plotters backend.
pub trait Figure {
    /// Pixel size (width, height) of the PNG; the SVG has the same size in user units.
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Turn a plotters error into anyhow (its error types carry the backend's lifetime).
pub(crate) fn pe<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing: {e}")
}

/// Render `fig` into an RGB buffer (width × height × 3).
pub fn render_rgb<F: Figure>(fig: &F) -> Result<(u32, u32, Vec<u8>)> {
    init_fonts();
    let (w, h) = fig.size();
    let mut buf = vec![255u8; (w as usize) * (h as usize) * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(pe)?;
        fig.draw(&root)?;
        root.present().map_err(pe)?;
    }
    Ok((w, h, buf))
}

/// Render `fig` into an SVG document.
pub fn render_svg<F: Figure>(fig: &F) -> Result<String> {
    init_fonts();
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, fig.size()).into_drawing_area();
        root.fill(&WHITE).map_err(pe)?;
        fig.draw(&root)?;
        root.present().map_err(pe)?;
    }
    Ok(s)
}

/// PNG bytes of an RGB buffer.
pub fn encode_png(w: u32, h: u32, rgb: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Best);
        let mut wr = enc.write_header()?;
        wr.write_image_data(rgb)?;
    }
    Ok(out)
}

/// `PREFIX.ext` (the extension is appended, so a prefix may contain dots). For a picture (png, svg) a
/// prefix that already ends in `.png` or `.svg` loses it first: `--out fig.png` writes fig.png and
/// fig.svg, not fig.png.png.
pub fn with_ext(prefix: &Path, ext: &str) -> PathBuf {
    let picture = |e: &str| e == "png" || e == "svg";
    let prefix = match prefix.extension().and_then(|e| e.to_str()) {
        Some(e) if picture(ext) && picture(&e.to_ascii_lowercase()) => prefix.with_extension(""),
        _ => prefix.to_path_buf(),
    };
    let mut s = prefix.as_os_str().to_os_string();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// Write `PREFIX.png` and `PREFIX.svg` atomically; returns both paths.
pub fn save<F: Figure>(fig: &F, prefix: &Path) -> Result<[PathBuf; 2]> {
    let (w, h, rgb) = render_rgb(fig)?;
    let png_bytes = encode_png(w, h, &rgb)?;
    let svg = render_svg(fig)?;
    let (p, s) = (with_ext(prefix, "png"), with_ext(prefix, "svg"));
    write_atomic(&p, |t| Ok(std::fs::write(t, &png_bytes)?))?;
    write_atomic(&s, |t| Ok(std::fs::write(t, svg.as_bytes())?))?;
    Ok([p, s])
}

/// `PATH` without a trailing `.tsv` / `.h5ad` (etc.) extension, with `.suffix` appended: the default
/// prefix of a plot drawn from `PATH`.
pub fn prefix_beside(path: &Path, suffix: &str) -> PathBuf {
    let stem = match path.extension() {
        Some(_) => path.with_extension(""),
        None => path.to_path_buf(),
    };
    with_ext(&stem, suffix)
}

/// A seeded subsample of `0..n` of at most `max` indices (ascending); all of them when n ≤ max.
pub fn subsample(n: usize, max: usize, seed: u64) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    use rand::seq::index::sample;
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut v = sample(&mut rng, n, max).into_vec();
    v.sort_unstable();
    v
}

/// Pearson correlation of two equally long series (NaN when undefined).
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n < 2 {
        return f64::NAN;
    }
    let (ma, mb) = (a[..n].iter().sum::<f64>() / n as f64, b[..n].iter().sum::<f64>() / n as f64);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (x, y) = (a[i] - ma, b[i] - mb);
        sab += x * y;
        saa += x * x;
        sbb += y * y;
    }
    if saa <= 0.0 || sbb <= 0.0 {
        return f64::NAN;
    }
    sab / (saa * sbb).sqrt()
}

/// Range of the finite values with a margin (a unit interval around a single value).
pub fn padded_range(vals: impl Iterator<Item = f64>, margin: f64) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        let d = if lo.abs() > 0.0 { lo.abs() * 0.1 } else { 0.5 };
        return (lo - d, hi + d);
    }
    let m = (hi - lo) * margin;
    (lo - m, hi + m)
}

/// The viridis colour map at t ∈ [0, 1] (a piecewise-linear fit through 9 anchors of matplotlib's table).
pub fn viridis(t: f64) -> RGBColor {
    const A: [(u8, u8, u8); 9] = [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let x = t * (A.len() - 1) as f64;
    let i = (x.floor() as usize).min(A.len() - 2);
    let f = x - i as f64;
    let lerp = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    RGBColor(lerp(A[i].0, A[i + 1].0), lerp(A[i].1, A[i + 1].1), lerp(A[i].2, A[i + 1].2))
}

/// 20 distinguishable categorical colours (matplotlib's tab10 then its lighter tab20 partners).
pub const CATEGORICAL: [RGBColor; 20] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(174, 199, 232),
    RGBColor(255, 187, 120),
    RGBColor(152, 223, 138),
    RGBColor(255, 152, 150),
    RGBColor(197, 176, 213),
    RGBColor(196, 156, 148),
    RGBColor(247, 182, 210),
    RGBColor(199, 199, 199),
    RGBColor(219, 219, 141),
    RGBColor(158, 218, 229),
];

/// Draw a vertical colour bar for [lo, hi] in `area` with a label.
pub(crate) fn colour_bar<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, lo: f64, hi: f64, label: &str) -> Result<()> {
    let mut chart = ChartBuilder::on(area)
        .margin_top(40)
        .margin_bottom(60)
        .margin_right(10)
        .y_label_area_size(0)
        .x_label_area_size(0)
        .right_y_label_area_size(50)
        .build_cartesian_2d(0.0..1.0, lo..hi)
        .map_err(pe)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_y_mesh()
        .disable_x_axis()
        .y_desc(label)
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .draw()
        .map_err(pe)?;
    let steps = 64;
    let span = hi - lo;
    chart
        .draw_series((0..steps).map(|i| {
            let (a, b) = (lo + span * i as f64 / steps as f64, lo + span * (i + 1) as f64 / steps as f64);
            Rectangle::new([(0.0, a), (1.0, b)], viridis((i as f64 + 0.5) / steps as f64).filled())
        }))
        .map_err(pe)?;
    Ok(())
}

/// A legend entry's mark: a dot (a scatter's point) or a short line (a curve).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Mark {
    Dot(RGBColor),
    Line(RGBColor),
}

/// A legend drawn in a strip of its own below the chart, outside the plotting area, so it never covers a
/// point or a line (a box inside the axes hid 38 junctions of a volcano, whatever corner it took).
/// Entries run left to right and wrap onto another row when the strip is too narrow.
pub(crate) struct Legend {
    /// (mark, text, x offset in the box, row)
    entries: Vec<(Mark, String, i32, i32)>,
    /// The box's width and height in pixels.
    size: (i32, i32),
}

const LEGEND_FONT: u32 = 13;
const LEGEND_ROW: i32 = 20;
const LEGEND_PAD: i32 = 6;
/// The mark and the space before its text.
const LEGEND_MARK_W: i32 = 28;
/// Space between two entries of a row.
const LEGEND_GAP: i32 = 18;

impl Legend {
    /// Lay out `entries` for a strip as wide as `area`.
    pub(crate) fn new<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, entries: Vec<(Mark, String)>) -> Result<Legend> {
        let room = area.dim_in_pixel().0 as i32 - 2 * LEGEND_PAD - 20;
        let font: TextStyle = ("sans-serif", LEGEND_FONT).into();
        let (mut placed, mut x, mut row, mut widest) = (Vec::new(), 0, 0, 0);
        for (mark, text) in entries {
            let w = LEGEND_MARK_W + area.estimate_text_size(&text, &font).map_err(pe)?.0 as i32;
            if x > 0 && x + w > room {
                (x, row) = (0, row + 1);
            }
            placed.push((mark, text, x, row));
            widest = widest.max(x + w);
            x += w + LEGEND_GAP;
        }
        let rows = if placed.is_empty() { 0 } else { row + 1 };
        Ok(Legend { entries: placed, size: (widest + 2 * LEGEND_PAD, rows * LEGEND_ROW + 2 * LEGEND_PAD) })
    }

    /// Height of the strip the legend needs below a chart (its box and a margin under it).
    pub(crate) fn height(&self) -> u32 {
        if self.entries.is_empty() {
            0
        } else {
            (self.size.1 + 10) as u32
        }
    }

    /// Draw the legend centred at the top of `strip` (the area below the chart).
    pub(crate) fn draw<DB: DrawingBackend>(&self, strip: &DrawingArea<DB, Shift>) -> Result<()> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let (x0, y0) = ((strip.dim_in_pixel().0 as i32 - self.size.0) / 2, 0);
        strip.draw(&Rectangle::new([(x0, y0), (x0 + self.size.0, y0 + self.size.1)], LEGEND_BORDER)).map_err(pe)?;
        let font = ("sans-serif", LEGEND_FONT).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
        for (mark, text, x, row) in &self.entries {
            let (x, y) = (x0 + LEGEND_PAD + x, y0 + LEGEND_PAD + row * LEGEND_ROW + LEGEND_ROW / 2);
            match *mark {
                Mark::Dot(c) => strip.draw(&Circle::new((x + 10, y), 4, c.filled())).map_err(pe)?,
                Mark::Line(c) => strip.draw(&PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3))).map_err(pe)?,
            }
            strip.draw(&Text::new(text.clone(), (x + LEGEND_MARK_W, y), font.clone())).map_err(pe)?;
        }
        Ok(())
    }
}

/// Tick labels for an axis spanning `span`: as many decimals as the tick step needs.
pub(crate) fn tick_decimals(span: f64) -> usize {
    if !(span.is_finite() && span > 0.0) {
        return 2;
    }
    (-(span / 6.0).log10()).ceil().clamp(0.0, 6.0) as usize
}

/// A tick label with `dec` decimals ("0" for zero, never "-0").
pub(crate) fn tick(v: f64, dec: usize) -> String {
    let s = format!("{v:.dec$}");
    if s.trim_start_matches('-').chars().all(|c| c == '0' || c == '.') {
        "0".into()
    } else {
        s
    }
}

/// An input error of a picture, naming its file (once: an error that already starts with the path is
/// left as it is).
pub(crate) fn in_file(path: &Path, e: anyhow::Error) -> anyhow::Error {
    let p = path.display().to_string();
    let text = format!("{e:#}");
    if text.starts_with(&p) {
        e
    } else {
        anyhow!("{p}: {text}")
    }
}

/// Split a TSV text into its header and rows (blank lines skipped).
pub(crate) fn read_tsv(path: &Path) -> Result<(Vec<String>, Vec<Vec<String>>)> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut records = tsv_records(&text).into_iter().filter(|r| !(r.len() == 1 && r[0].trim().is_empty()));
    let header: Vec<String> = records.next().ok_or_else(|| anyhow!("{}: empty file", path.display()))?.iter().map(|s| s.trim().to_string()).collect();
    Ok((header, records.collect()))
}

/// The records of a TSV text, fields quoted as splicevi and pandas write them: a field that starts
/// with `"` runs to the next lone `"` (tabs and line breaks inside it included, `""` for a `"`).
pub fn tsv_records(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let (mut record, mut field) = (Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut fresh = true; // at the first character of a field
    while let Some(c) = chars.next() {
        match c {
            '"' if fresh => {
                while let Some(q) = chars.next() {
                    if q != '"' {
                        field.push(q);
                    } else if chars.peek() == Some(&'"') {
                        chars.next();
                        field.push('"');
                    } else {
                        break;
                    }
                }
                fresh = false;
            }
            '\t' => {
                record.push(std::mem::take(&mut field));
                fresh = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                fresh = true;
            }
            c => {
                field.push(c);
                fresh = false;
            }
        }
    }
    if !fresh || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    records
}

/// Parse a TSV number as written by splicevi (or pandas): nan / inf allowed.
pub(crate) fn num(s: &str) -> f64 {
    s.trim().parse::<f64>().unwrap_or(f64::NAN)
}

/// A backend that draws nothing and records the shapes it is given (pixel coordinates), for tests of a
/// figure's geometry: where the points, lines, boxes and texts land.
#[cfg(test)]
pub(crate) mod record {
    use plotters::prelude::*;
    use plotters_backend::{BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind};
    use std::cell::RefCell;
    use std::rc::Rc;

    #[derive(Debug, Default)]
    pub struct Log {
        /// (centre, radius, rgb, filled)
        pub circles: Vec<(BackendCoord, u32, (u8, u8, u8), bool)>,
        /// (upper left, bottom right, rgb, filled)
        pub rects: Vec<(BackendCoord, BackendCoord, (u8, u8, u8), bool)>,
        /// (points, rgb)
        pub paths: Vec<(Vec<BackendCoord>, (u8, u8, u8))>,
        /// (text, anchor)
        pub texts: Vec<(String, BackendCoord)>,
    }

    impl Log {
        /// The boxes stroked in `colour` (unfilled rectangles).
        pub fn boxes(&self, colour: RGBColor) -> Vec<(BackendCoord, BackendCoord)> {
            self.rects.iter().filter(|r| !r.3 && r.2 == colour.rgb()).map(|r| (r.0, r.1)).collect()
        }
    }

    /// Whether a circle (centre, radius) reaches into the box (upper left, bottom right).
    pub fn circle_in_box(c: BackendCoord, r: u32, b: (BackendCoord, BackendCoord)) -> bool {
        let r = r as i32;
        c.0 + r >= b.0 .0 && c.0 - r <= b.1 .0 && c.1 + r >= b.0 .1 && c.1 - r <= b.1 .1
    }

    pub struct Recorder {
        pub size: (u32, u32),
        pub log: Rc<RefCell<Log>>,
    }

    /// Draw `fig` on a recorder; returns what was drawn.
    pub fn record<F: super::Figure>(fig: &F) -> Log {
        super::init_fonts();
        let log = Rc::new(RefCell::new(Log::default()));
        let root = Recorder { size: fig.size(), log: log.clone() }.into_drawing_area();
        fig.draw(&root).unwrap();
        drop(root);
        Rc::try_unwrap(log).unwrap().into_inner()
    }

    impl DrawingBackend for Recorder {
        type ErrorType = std::io::Error;
        fn get_size(&self) -> (u32, u32) {
            self.size
        }
        fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
            Ok(())
        }
        fn present(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
            Ok(())
        }
        fn draw_pixel(&mut self, _: BackendCoord, _: BackendColor) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
            Ok(())
        }
        fn draw_line<S: BackendStyle>(&mut self, from: BackendCoord, to: BackendCoord, style: &S) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
            self.log.borrow_mut().paths.push((vec![from, to], style.color().rgb));
            Ok(())
        }
        fn draw_rect<S: BackendStyle>(&mut self, ul: BackendCoord, br: BackendCoord, style: &S, fill: bool) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
            self.log.borrow_mut().rects.push((ul, br, style.color().rgb, fill));
            Ok(())
        }
        fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(&mut self, path: I, style: &S) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
            self.log.borrow_mut().paths.push((path.into_iter().collect(), style.color().rgb));
            Ok(())
        }
        fn draw_circle<S: BackendStyle>(&mut self, c: BackendCoord, r: u32, style: &S, fill: bool) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
            self.log.borrow_mut().circles.push((c, r, style.color().rgb, fill));
            Ok(())
        }
        fn draw_text<T: BackendTextStyle>(&mut self, text: &str, _: &T, pos: BackendCoord) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
            self.log.borrow_mut().texts.push((text.to_string(), pos));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A picture's prefix given with its extension is not doubled; other extensions and dots stay.
    #[test]
    fn with_ext_does_not_double_a_picture_extension() {
        let p = |s: &str, e: &str| with_ext(Path::new(s), e).to_string_lossy().into_owned();
        assert_eq!(p("out/fig.png", "png"), "out/fig.png");
        assert_eq!(p("out/fig.png", "svg"), "out/fig.svg");
        assert_eq!(p("out/fig.SVG", "png"), "out/fig.png");
        assert_eq!(p("out/E.impute", "png"), "out/E.impute.png");
        assert_eq!(p("out/E.pairs", "tsv"), "out/E.pairs.tsv");
        assert_eq!(p("out/x.png", "tsv"), "out/x.png.tsv");
    }

    /// A tiny negative R² prints as 0.00, not -0.00; other values keep their sign.
    #[test]
    fn age_r2_cell_text_has_no_negative_zero() {
        use super::age_r2::cell_text;
        assert_eq!(cell_text(-0.001), "0.00");
        assert_eq!(cell_text(-0.4), "-0.40");
        assert_eq!(cell_text(0.934), "0.93");
        assert_eq!(cell_text(f64::NAN), "n/a");
    }
}
