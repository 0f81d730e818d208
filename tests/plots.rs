//! The pictures (issue 5): each plot from small synthetic inputs, and end to end through the binary
//! (simulate → train → evaluate / diff-splicing / embed, then `splicevi plot ...`). A PNG must decode,
//! have the figure's size and not be blank (many colours, the series' colours present); the SVG must
//! carry the title and the expected number of markers.

use rand::{Rng, SeedableRng};
use splicevi::plot::age_r2::{cell_colour, cell_text, AgeR2Heatmap, MISSING_COLOUR};
use splicevi::plot::curves::{Curves, TRAIN_COLOUR, VALIDATION_COLOUR};
use splicevi::plot::embedding::{pca, Colouring, Embedding, Projection};
use splicevi::plot::impute::ImputeScatter;
use splicevi::plot::volcano::{Volcano, HIT_COLOUR};
use splicevi::plot::{render_svg, save, viridis, Figure, CATEGORICAL, MAX_POINTS};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[path = "common/cli.rs"]
mod cli;
use cli::{bin, ok};

struct Png {
    w: u32,
    h: u32,
    rgb: Vec<[u8; 3]>,
}

fn read_png(p: &Path) -> Png {
    let f = std::fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut reader = png::Decoder::new(f).read_info().expect("a PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG image data");
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let rgb = buf[..info.buffer_size()].chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
    Png { w: info.width, h: info.height, rgb }
}

impl Png {
    fn distinct(&self) -> usize {
        self.rgb.iter().collect::<HashSet<_>>().len()
    }
    /// Pixels within `tol` of a colour.
    fn count_near(&self, c: (u8, u8, u8), tol: i32) -> usize {
        self.rgb.iter().filter(|p| (p[0] as i32 - c.0 as i32).abs() <= tol && (p[1] as i32 - c.1 as i32).abs() <= tol && (p[2] as i32 - c.2 as i32).abs() <= tol).count()
    }
    fn non_white_fraction(&self) -> f64 {
        self.rgb.iter().filter(|p| **p != [255, 255, 255]).count() as f64 / self.rgb.len() as f64
    }
}

fn rgb(c: plotters::style::RGBColor) -> (u8, u8, u8) {
    (c.0, c.1, c.2)
}

/// Save, then check both files: size, not blank, title in the SVG; returns (png, svg text).
fn saved<F: Figure>(fig: &F, dir: &Path, name: &str, title: &str) -> (Png, String) {
    let prefix = dir.join(name);
    let [p, s] = save(fig, &prefix).unwrap();
    assert_eq!(p, dir.join(format!("{name}.png")));
    assert_eq!(s, dir.join(format!("{name}.svg")));
    let png = read_png(&p);
    assert_eq!((png.w, png.h), fig.size());
    assert!(png.distinct() > 30, "{name}: only {} colours", png.distinct());
    let nw = png.non_white_fraction();
    assert!(nw > 0.01 && nw < 0.9, "{name}: {nw} of the pixels are not white");
    let svg = std::fs::read_to_string(&s).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{name}: not an SVG document");
    assert!(svg.contains(title), "{name}: the SVG lacks the title {title:?}");
    // Written atomically: no temporary file is left beside them.
    let leftovers: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).filter(|n| n.ends_with(".tmp")).collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    (png, svg)
}

fn count(svg: &str, needle: &str) -> usize {
    svg.matches(needle).count()
}

/// The text elements' contents.
fn texts(svg: &str) -> Vec<String> {
    svg.split("<text").skip(1).filter_map(|t| Some(t.split_once('>')?.1.split_once("</text>")?.0.trim().to_string())).collect()
}

fn has_text(svg: &str, t: &str) -> bool {
    texts(svg).iter().any(|x| x == t)
}

/// Data lines of the given stroke colour and width (axes and ticks are black polylines too).
fn lines(svg: &str, colour: plotters::style::RGBColor, width: u32) -> usize {
    svg.matches(&format!("stroke=\"#{:02X}{:02X}{:02X}\" stroke-width=\"{width}\"", colour.0, colour.1, colour.2)).count()
}

fn metrics_table(epochs: usize, with_validation: bool) -> (Vec<String>, Vec<Vec<String>>) {
    let header: Vec<String> = "epoch\tlr\tkl_weight\tcross_gate\ttrain_loss\treconstruction_loss_train\treconstruction_loss_expression_train\treconstruction_loss_splicing_train\tkl_local_train\telbo_train\treconstruction_loss_validation\treconstruction_loss_expression_validation\treconstruction_loss_splicing_validation\tkl_local_validation\telbo_validation\tadversary_loss\tseconds\tcells_per_s"
        .split('\t')
        .map(String::from)
        .collect();
    let rows = (0..epochs)
        .map(|e| {
            let t = 100.0 / (1.0 + e as f64) + 50.0;
            let v = if with_validation { t * 1.1 } else { 0.0 };
            let vals = [e as f64, 1e-3, 1.0, 1.0, t + 5.0, t, t * 0.8, t * 0.2, 10.0 - e as f64 * 0.5, t + 10.0, v, v * 0.8, v * 0.2, if with_validation { 11.0 } else { 0.0 }, if with_validation { v + 11.0 } else { 0.0 }, 0.0, 0.5, 1000.0];
            vals.iter().map(|x| x.to_string()).collect()
        })
        .collect();
    (header, rows)
}

#[test]
fn curves_one_panel_per_loss_term_train_and_validation() {
    let dir = tempfile::tempdir().unwrap();
    let (h, r) = metrics_table(12, true);
    let c = Curves::from_table(&h, &r, "Training curves: synthetic").unwrap();
    let terms: Vec<&str> = c.panels.iter().map(|p| p.term.as_str()).collect();
    // adversary_loss is all zero (no adversary): no panel.
    assert_eq!(terms, ["reconstruction_loss", "reconstruction_loss_expression", "reconstruction_loss_splicing", "kl_local", "elbo", "train_loss"]);
    assert!(c.panels[..5].iter().all(|p| p.series.len() == 2 && p.series[1].0 == "validation"));
    assert_eq!(c.panels[0].series[0].1[0], (1.0, 150.0), "epochs are shown 1-based");
    let (png, svg) = saved(&c, dir.path(), "curves", "Training curves: synthetic");
    assert!(png.count_near(rgb(TRAIN_COLOUR), 10) > 200, "train lines missing");
    assert!(png.count_near(rgb(VALIDATION_COLOUR), 10) > 200, "validation lines missing");
    // One line per series, one marker per epoch of each series (12 epochs ≤ 60), legend entries.
    let n_series = 5 * 2 + 1;
    assert_eq!(lines(&svg, TRAIN_COLOUR, 2) + lines(&svg, VALIDATION_COLOUR, 2), n_series);
    assert_eq!(lines(&svg, VALIDATION_COLOUR, 2), 5);
    assert_eq!(count(&svg, "<circle"), n_series * 12);
    assert!(has_text(&svg, "validation") && has_text(&svg, "train") && has_text(&svg, "epoch"));
    assert!(has_text(&svg, "KL divergence (local)"));

    // Without validation cells the validation columns are zeros: train only.
    let (h, r) = metrics_table(1, false);
    let c = Curves::from_table(&h, &r, "one epoch").unwrap();
    assert!(c.panels.iter().all(|p| p.series.len() == 1 && p.series[0].0 == "train"));
    saved(&c, dir.path(), "one", "one epoch");
    assert!(Curves::from_table(&h[..1], &r, "x").is_err(), "no loss column: an error");
}

fn pairs_table(n: usize, seed: u64) -> (Vec<String>, Vec<Vec<String>>, Vec<f64>, Vec<f64>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let header = ["cell", "junction", "truth", "splicevi_decoder", "mean_bayes"].map(String::from).to_vec();
    let (mut t, mut d) = (vec![], vec![]);
    let rows = (0..n)
        .map(|i| {
            let truth: f64 = rng.gen();
            let dec = (truth + rng.gen_range(-0.15..0.15)).clamp(0.0, 1.0);
            let mb: f64 = rng.gen();
            t.push(truth);
            d.push(dec);
            vec![format!("cell_{i}"), format!("j{}", i % 7), truth.to_string(), dec.to_string(), mb.to_string()]
        })
        .collect();
    (header, rows, t, d)
}

#[test]
fn impute_density_scatter_has_r_in_the_title_and_a_heatmap() {
    let dir = tempfile::tempdir().unwrap();
    let (h, rows, t, d) = pairs_table(5000, 1);
    let s = ImputeScatter::from_table(&h, &rows, "Imputation: synthetic").unwrap();
    assert_eq!(s.methods.len(), 2);
    let r = splicevi::plot::pearson(&t, &d);
    assert!((s.methods[0].r() - r).abs() < 1e-12 && r > 0.8);
    assert!(s.methods[1].r().abs() < 0.1, "random predictions: r ≈ 0");
    let hist = s.methods[0].histogram();
    assert_eq!(hist.iter().flatten().sum::<u64>(), 5000);
    let (png, svg) = saved(&s, dir.path(), "impute", "Imputation: synthetic");
    assert!(svg.contains(&format!("SpliceVI, decoder PSI: r = {r:.3}")), "r in the panel title");
    assert!(svg.contains("MeanBayes baseline: r = "));
    // One filled rectangle per non-empty bin (plus the background, the colour bar's 64 steps and frames).
    let nonempty: usize = s.methods.iter().map(|m| m.histogram().iter().flatten().filter(|&&c| c > 0).count()).sum();
    assert!(count(&svg, "<rect") >= nonempty + 64, "{} rects for {nonempty} bins", count(&svg, "<rect"));
    assert!(png.distinct() > 100, "a heatmap has many shades");
    // Rows with a non-numeric prediction are skipped, not fatal.
    let mut rows2 = rows.clone();
    rows2[0][3] = "nan".into();
    assert_eq!(ImputeScatter::from_table(&h, &rows2, "x").unwrap().methods[0].truth.len(), 4999);
    assert!(ImputeScatter::from_table(&h[..3], &rows, "x").is_err(), "no prediction column: an error");
}

/// An evaluate table with --age and --label `label`: per space the global and per-class R² (a NaN
/// for the last class in splicing), latent_train rows with other values, and unrelated rows.
fn age_table(label: &str, classes: &[(&str, usize)]) -> (Vec<String>, Vec<Vec<String>>, Vec<Vec<f64>>) {
    let header = ["section", "subset", "method", "metric", "value"].map(String::from).to_vec();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut rows: Vec<Vec<String>> = vec![];
    let row = |section: &str, space: &str, metric: String, v: f64| vec![section.to_string(), space.to_string(), "splicevi".into(), metric, v.to_string()];
    rows.push(vec!["imputation".into(), "dropped".into(), "mean_bayes".into(), "pearson".into(), "0.3".into()]);
    // want[row][space]: all cells first, then the classes
    let mut want = vec![vec![f64::NAN; 3]; 1 + classes.len()];
    for section in ["latent", "latent_train"] {
        for (j, space) in ["joint", "expression", "splicing"].into_iter().enumerate() {
            rows.push(row(section, space, "dim".into(), 10.0));
            rows.push(row(section, space, format!("n_cells_labelled_{label}"), 200.0));
            rows.push(row(section, space, "age_n_cells".into(), 180.0));
            let g: f64 = if section == "latent" { rng.gen_range(0.0..1.0) } else { 0.5 };
            rows.push(row(section, space, "age_r2".into(), g));
            if section == "latent" {
                want[0][j] = g;
            }
            for (i, (class, n)) in classes.iter().enumerate() {
                rows.push(row(section, space, format!("age_n_cells:{label}={class}"), *n as f64));
                let v = match (i, space) {
                    (0, "joint") => 0.93,
                    (1, "joint") => -0.4,
                    (i, "splicing") if i + 1 == classes.len() => f64::NAN,
                    _ if section == "latent" => rng.gen_range(0.0..1.0),
                    _ => 0.5,
                };
                rows.push(row(section, space, format!("age_r2:{label}={class}"), v));
                if section == "latent" {
                    want[i + 1][j] = v;
                }
            }
        }
    }
    (header, rows, want)
}

#[test]
fn age_r2_heatmap_has_a_cell_per_class_and_space_coloured_by_viridis() {
    let dir = tempfile::tempdir().unwrap();
    let classes = [("T cell", 60), ("B cell", 55), ("liver | hepatocyte", 40)];
    let (h, rows, want) = age_table("cell_type", &classes);
    let f = AgeR2Heatmap::from_table(&h, &rows, "Age R²: synthetic").unwrap();
    assert_eq!(f.spaces, ["joint", "expression", "splicing"]);
    assert_eq!(f.label.as_deref(), Some("cell_type"));
    let names: Vec<&str> = f.rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["all cells", "T cell", "B cell", "liver | hepatocyte"], "all cells, then the classes in table order");
    // The `latent` rows (all cells) only: latent_train's 0.5 is not drawn.
    for (row, w) in f.rows.iter().zip(&want) {
        for (got, w) in row.r2.iter().zip(w) {
            assert!(got == w || (got.is_nan() && w.is_nan()), "{}: {:?} vs {w:?}", row.name, row.r2);
        }
    }
    let (png, svg) = saved(&f, dir.path(), "age_r2", "Age R²: synthetic");
    // One text per (row, space), two decimals, "n/a" for the NaN; n cells in the row labels.
    for w in &want {
        for v in w {
            assert!(has_text(&svg, &cell_text(*v)), "no cell text {}", cell_text(*v));
        }
    }
    assert_eq!(texts(&svg).iter().filter(|t| *t == "n/a").count(), 1);
    assert!(has_text(&svg, "0.93") && has_text(&svg, "-0.40"));
    for label in ["all cells (n = 180)", "T cell (n = 60)", "B cell (n = 55)", "liver | hepatocyte (n = 40)", "cell_type", "joint", "expression", "splicing"] {
        assert!(has_text(&svg, label), "no text {label:?}");
    }
    // A 130 × 40 cell is thousands of pixels of its colour: R² 0.93 a light viridis yellow-green,
    // −0.4 clamped to the dark purple of 0, the NaN light grey.
    let (high, low) = (cell_colour(0.93), cell_colour(-0.4));
    assert_eq!(high, viridis(0.93));
    assert_eq!(low, viridis(0.0));
    assert_eq!(cell_colour(f64::NAN), MISSING_COLOUR);
    let light = |c: plotters::style::RGBColor| c.0 as u32 + c.1 as u32 + c.2 as u32;
    assert!(light(high) > light(low) + 250 && high.1 > 200 && low.2 > low.1, "{high:?} vs {low:?}");
    for c in [high, low, MISSING_COLOUR] {
        assert!(png.count_near(rgb(c), 2) > 2000, "{c:?}: {} pixels", png.count_near(rgb(c), 2));
    }

    // Without --label: the global row alone. A label or class holding `=` is read whole (the label is
    // the one n_cells_labelled_LABEL names).
    let only: Vec<Vec<String>> = rows.iter().filter(|r| !r[3].contains(':') && !r[3].starts_with("n_cells_labelled")).cloned().collect();
    let f = AgeR2Heatmap::from_table(&h, &only, "x").unwrap();
    assert_eq!((f.rows.len(), f.label.as_deref()), (1, None));
    let (h2, rows2, _) = age_table("a=b", &[("c=d", 30)]);
    let f = AgeR2Heatmap::from_table(&h2, &rows2, "x").unwrap();
    assert_eq!(f.label.as_deref(), Some("a=b"));
    assert_eq!(f.rows[1].label(), "c=d (n = 30)");

    // A table without age rows (evaluate without --age), or not an evaluate table: errors that say so.
    let no_age: Vec<Vec<String>> = rows.iter().filter(|r| !r[3].starts_with("age_")).cloned().collect();
    let e = AgeR2Heatmap::from_table(&h, &no_age, "x").unwrap_err().to_string();
    assert!(e.contains("evaluate was run without --age"), "{e}");
    let train_only: Vec<Vec<String>> = rows.iter().filter(|r| r[0] != "latent").cloned().collect();
    assert!(AgeR2Heatmap::from_table(&h, &train_only, "x").is_err(), "latent_train rows alone are not drawn");
    let e = AgeR2Heatmap::from_table(&h[1..], &rows, "x").unwrap_err().to_string();
    assert!(e.contains("not an evaluate table"), "{e}");
}

fn ds_table() -> (Vec<String>, Vec<Vec<String>>, usize) {
    let header = "junction_id\tgene_name\tproba_ds\tis_ds_fdr\tbayes_factor\teffect_size\tcomparison".split('\t').map(String::from).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut rows = vec![];
    let mut hits = 0;
    for cmp in ["A vs Rest", "B vs Rest"] {
        for j in 0..300 {
            let es: f64 = rng.gen_range(-0.5..0.5);
            let p = (es.abs() * 2.2).min(0.999);
            let hit = p > 0.9;
            hits += hit as usize;
            let bf = (p + 1e-8).ln() - (1.0 - p + 1e-8).ln();
            rows.push(vec![format!("j{j}"), format!("g{}", j / 3), p.to_string(), if hit { "True" } else { "False" }.to_string(), bf.to_string(), es.to_string(), cmp.to_string()]);
        }
    }
    (header, rows, hits)
}

#[test]
fn volcano_highlights_fdr_hits_one_panel_per_comparison() {
    let dir = tempfile::tempdir().unwrap();
    let (h, rows, hits) = ds_table();
    let v = Volcano::from_table(&h, &rows, None, "Volcano: synthetic").unwrap();
    assert_eq!(v.panels.len(), 2);
    assert_eq!(v.panels.iter().map(|p| p.points.iter().filter(|q| q.2).count()).sum::<usize>(), hits);
    // log10 of the Bayes factor.
    let q = v.panels[0].points[0];
    let bf: f64 = rows[0][4].parse().unwrap();
    assert!((q.1 - bf / std::f64::consts::LN_10).abs() < 1e-12);
    let (png, svg) = saved(&v, dir.path(), "volcano", "Volcano: synthetic");
    // Every junction is a marker, plus one legend marker per class per panel.
    assert_eq!(count(&svg, "<circle"), 600 + 2 * 2);
    assert!(svg.contains("A vs Rest: ") && svg.contains("B vs Rest: "));
    assert!(svg.contains(&format!("called (is_ds_fdr) ({})", v.panels[0].points.iter().filter(|q| q.2).count())));
    assert!(png.count_near(rgb(HIT_COLOUR), 12) > 50, "hits are red");
    // Recomputed calls at another FDR target: a stricter target calls no more.
    let strict = Volcano::from_table(&h, &rows, Some(0.01), "x").unwrap();
    let loose = Volcano::from_table(&h, &rows, Some(0.2), "x").unwrap();
    let n = |v: &Volcano| v.panels.iter().map(|p| p.points.iter().filter(|q| q.2).count()).sum::<usize>();
    assert!(n(&strict) <= n(&loose) && n(&loose) > 0);
    assert!(render_svg(&loose).unwrap().contains("called at FDR 0.2 (from proba_ds only)"));
}

#[test]
fn volcano_subsamples_large_tables_but_keeps_every_hit() {
    let header: Vec<String> = ["proba_ds", "is_ds_fdr", "bayes_factor", "effect_size"].map(String::from).to_vec();
    let rows: Vec<Vec<String>> = (0..30_000).map(|i| vec!["0.5".into(), if i % 100 == 0 { "True" } else { "False" }.into(), "0.1".into(), format!("{}", (i as f64 / 30_000.0) - 0.5)]).collect();
    let v = Volcano::from_table(&header, &rows, None, "big").unwrap();
    let (hits, others) = Volcano::drawn(&v.panels[0]);
    assert_eq!(hits.len(), 300);
    assert_eq!(hits.len() + others.len(), MAX_POINTS);
}

fn clusters(n_per: usize, d: usize) -> (Vec<f64>, Vec<Option<usize>>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let mut x = vec![];
    let mut codes = vec![];
    for k in 0..3 {
        for _ in 0..n_per {
            for j in 0..d {
                let centre = if j == k { 4.0 } else { 0.0 };
                x.push(centre + rng.gen_range(-0.5..0.5));
            }
            codes.push(Some(k));
        }
    }
    (x, codes)
}

#[test]
fn embedding_is_a_pca_coloured_by_category_with_a_legend() {
    let dir = tempfile::tempdir().unwrap();
    let (x, codes) = clusters(100, 5);
    let names = vec!["alpha".to_string(), "beta".into(), "gamma".into()];
    let e = Embedding::pca_of(&x, 5, Colouring::Categories { codes, names }, "cell_type", "synthetic").unwrap();
    assert!(e.x_label.starts_with("PC1 (") && e.y_label.starts_with("PC2 ("), "the axes say PCA");
    assert!(e.title.contains("PCA"));
    let (png, svg) = saved(&e, dir.path(), "embedding", "synthetic: PCA of the latent (300 cells, 5 dims)");
    assert_eq!(count(&svg, "<circle"), 300 + 3, "one marker per cell and one per legend entry");
    for name in ["alpha (100)", "beta (100)", "gamma (100)", "cell_type"] {
        assert!(has_text(&svg, name), "legend lacks {name}");
    }
    for c in &CATEGORICAL[..3] {
        assert!(png.count_near(rgb(*c), 50) > 100, "category colour {c:?} missing");
    }
    // Numeric colouring: a colour bar instead of a legend.
    let vals: Vec<f64> = (0..300).map(|i| i as f64).collect();
    let e = Embedding::pca_of(&x, 5, Colouring::Values(vals), "library_size", "numeric").unwrap();
    let (_, svg) = saved(&e, dir.path(), "numeric", "numeric: PCA");
    assert!(svg.contains("library_size"));
    // More cells than MAX_POINTS: a subsample is drawn and the title says so.
    let (big, _) = clusters(7000, 4);
    let e = Embedding::pca_of(&big, 4, Colouring::None, "", "big").unwrap();
    assert_eq!(e.xy.len(), MAX_POINTS);
    assert!(e.title.contains(&format!("{MAX_POINTS} of 21000 cells")));
}

#[test]
fn embedding_umap_says_umap_and_lays_out_the_drawn_cells() {
    let dir = tempfile::tempdir().unwrap();
    let (x, codes) = clusters(100, 5);
    let names = vec!["alpha".to_string(), "beta".into(), "gamma".into()];
    let e = Embedding::of(&x, 5, Projection::Umap, Colouring::Categories { codes, names }, "cell_type", "synthetic").unwrap();
    assert_eq!((e.x_label.as_str(), e.y_label.as_str()), ("UMAP1", "UMAP2"), "no share of variance on UMAP axes");
    // (three far clusters: the kNN graph has three components, so the layout starts from PCA and says so)
    let (_, svg) = saved(&e, dir.path(), "umap", "synthetic: UMAP of the latent (300 cells, 5 dims; n_neighbors 15, min_dist 0.5, PCA start)");
    assert!(has_text(&svg, "UMAP1") && has_text(&svg, "UMAP2") && !svg.contains("PC1"));
    assert_eq!(count(&svg, "<circle"), 300 + 3);
    // More cells than MAX_POINTS: only the drawn subsample is laid out (the same cells as the PCA's).
    let (big, _) = clusters(7000, 4);
    let u = Embedding::of(&big, 4, Projection::Umap, Colouring::None, "", "big").unwrap();
    assert_eq!(u.xy.len(), MAX_POINTS);
    assert!(u.title.contains(&format!("UMAP of the latent ({MAX_POINTS} of 21000 cells")), "{}", u.title);
}

#[test]
fn pca_finds_the_principal_axes() {
    // Points on a line along (3, 4)/5 plus small noise along (−4, 3)/5.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let mut x = vec![];
    for _ in 0..500 {
        let (a, b): (f64, f64) = (rng.gen_range(-10.0..10.0), rng.gen_range(-1.0..1.0));
        x.extend([a * 0.6 - b * 0.8, a * 0.8 + b * 0.6]);
    }
    let (p, ratio) = pca(&x, 2, 2);
    assert!(ratio[0] > 0.95 && ratio[0] + ratio[1] > 0.999, "{ratio:?}");
    // PC1 scores are the positions along the line (up to sign).
    let along: Vec<f64> = x.chunks(2).map(|r| r[0] * 0.6 + r[1] * 0.8).collect();
    let pc1: Vec<f64> = (0..500).map(|i| p[2 * i]).collect();
    assert!(splicevi::plot::pearson(&along, &pc1).abs() > 0.999);
}

// ------------------------------------------------------------------------------------------------
// End to end through the binary.

fn both(prefix: &Path) -> (Png, String) {
    let p = PathBuf::from(format!("{}.png", prefix.display()));
    let s = PathBuf::from(format!("{}.svg", prefix.display()));
    let png = read_png(&p);
    assert!(png.distinct() > 30 && png.non_white_fraction() > 0.01, "{} looks blank", p.display());
    (png, std::fs::read_to_string(&s).unwrap_or_else(|e| panic!("{}: {e}", s.display())))
}

#[test]
fn commands_draw_their_pictures_and_plot_redraws_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("toy.h5mu");
    let run = d.join("run");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "4", "--out"]).arg(&data));
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--max-epochs", "3", "--quiet"]));
    let (_, svg) = both(&run.join("curves"));
    assert!(svg.contains("Training curves: run (3 epochs)"));
    assert_eq!(lines(&svg, TRAIN_COLOUR, 2), 6, "train: five terms and the minimised loss");
    assert_eq!(lines(&svg, VALIDATION_COLOUR, 2), 5, "validation: five terms");

    ok(bin().arg("embed").arg(&run).arg(&data).arg("--out").arg(d.join("lat.h5ad")));
    let (_, svg) = both(&d.join("lat.embedding"));
    assert!(svg.contains("PCA of the latent (200 cells") && has_text(&svg, "cell_type"));
    assert_eq!(count(&svg, "<circle"), 200 + 3, "toy: 200 cells, 3 cell types");
    // --projection umap: a seeded UMAP of the same latent, its axes UMAP1 / UMAP2, its coordinates in
    // obsm["X_umap"] (float32, cells × 2); the PCA embed writes none.
    ok(bin().arg("embed").arg(&run).arg(&data).args(["--projection", "umap", "--out"]).arg(d.join("lat_umap.h5ad")));
    let (_, umap_svg) = both(&d.join("lat_umap.embedding"));
    assert!(has_text(&umap_svg, "UMAP1") && has_text(&umap_svg, "UMAP2") && !umap_svg.contains("PC1"), "the axes say UMAP");
    assert!(umap_svg.contains("UMAP of the latent (200 cells") && umap_svg.contains("n_neighbors 15, min_dist 0.5"));
    assert_eq!(count(&umap_svg, "<circle"), 200 + 3);
    let x_umap = hdf5::File::open(d.join("lat_umap.h5ad")).unwrap().dataset("obsm/X_umap").unwrap();
    assert_eq!(x_umap.shape(), vec![200, 2]);
    assert!(x_umap.dtype().unwrap().is::<f32>() && x_umap.read_raw::<f32>().unwrap().iter().all(|v| v.is_finite()));
    assert!(hdf5::File::open(d.join("lat.h5ad")).unwrap().dataset("obsm/X_umap").is_err());

    // (library_size is the toy data's numeric obs column: an age for --age's R² and its heatmap)
    ok(bin().arg("evaluate").arg(&run).arg(&data).args(["--label", "cell_type", "--age", "library_size", "--out"]).arg(d.join("eval.tsv")));
    let pairs = std::fs::read_to_string(d.join("eval.pairs.tsv")).unwrap();
    assert!(pairs.starts_with("cell\tjunction\ttruth\tsplicevi_dm_posterior\tsplicevi_decoder\tmean_bayes\n"));
    // The scatter's r is the table's dropped-entry Pearson r.
    let table = std::fs::read_to_string(d.join("eval.tsv")).unwrap();
    let r: f64 = table.lines().find(|l| l.starts_with("imputation\tdropped\tsplicevi_decoder\tpearson\t")).unwrap().rsplit('\t').next().unwrap().parse().unwrap();
    let (_, svg) = both(&d.join("eval.impute"));
    assert!(svg.contains(&format!("SpliceVI, decoder PSI: r = {r:.3}")), "r = {r:.3} not in the scatter title");
    let n_pairs = pairs.lines().count() - 1;
    assert!(svg.contains(&format!("({n_pairs} entries)")));
    // The age R² heatmap: all cells and the three cell types (about 67 cells each) by three latents.
    let (_, age_svg) = both(&d.join("eval.age_r2"));
    assert!(age_svg.contains("Age R² per latent, all cells and by cell_type: eval.tsv"));
    assert!(has_text(&age_svg, "all cells (n = 200)") && ["T0", "T1", "T2"].iter().all(|t| texts(&age_svg).iter().any(|x| x.starts_with(&format!("{t} (n = ")))), "{:?}", texts(&age_svg));
    let r2: f64 = table.lines().find(|l| l.starts_with("latent\tjoint\tsplicevi\tage_r2\t")).unwrap().rsplit('\t').next().unwrap().parse().unwrap();
    assert!(has_text(&age_svg, &cell_text(r2)), "the joint R² {r2} is not in the heatmap");

    ok(bin().arg("diff-splicing").arg(&run).arg(&data).args(["--groupby", "cell_type", "--group1", "T0", "--n-samples-overall", "300"]).arg("--out").arg(d.join("ds.tsv")));
    let (_, svg) = both(&d.join("ds.volcano"));
    assert_eq!(count(&svg, "<circle"), 300 + 2, "300 junctions and two legend markers");

    // `splicevi plot ...` redraws each, at a chosen prefix or beside its input.
    let re = d.join("re");
    ok(bin().args(["plot", "curves"]).arg(&run).arg("--out").arg(re.join("curves")));
    ok(bin().args(["plot", "impute"]).arg(d.join("eval.pairs.tsv")).arg("--out").arg(re.join("impute")));
    ok(bin().args(["plot", "volcano"]).arg(d.join("ds.tsv")).args(["--fdr", "0.5", "--out"]).arg(re.join("volcano")));
    ok(bin().args(["plot", "age-r2"]).arg(d.join("eval.tsv")).arg("--out").arg(re.join("age_r2")));
    ok(bin().args(["plot", "embedding"]).arg(d.join("lat.h5ad")).args(["--color-by", "library_size", "--obsm", "X_splicevi_expression", "--out"]).arg(re.join("embedding")));
    for name in ["curves", "impute", "volcano", "embedding", "age_r2"] {
        both(&re.join(name));
    }
    // evaluate drew its heatmap from the table it wrote: the redraw is the same picture.
    assert_eq!(both(&re.join("age_r2")).1, age_svg);
    assert!(both(&re.join("volcano")).1.contains("called at FDR 0.5 (from proba_ds only)"));
    // --fdr takes diff-splicing's range: 1 calls every junction (it was refused as outside (0, 1)).
    ok(bin().args(["plot", "volcano"]).arg(d.join("ds.tsv")).args(["--fdr", "1", "--out"]).arg(re.join("volcano1")));
    assert!(both(&re.join("volcano1")).1.contains("called at FDR 1 (from proba_ds only) (300)"));
    let out = bin().args(["plot", "volcano"]).arg(d.join("ds.tsv")).args(["--fdr", "1.5", "--out"]).arg(re.join("volcano2")).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--fdr (the FDR target) must be in [0, 1], got 1.5"));
    assert!(both(&re.join("embedding")).1.contains("obsm[X_splicevi_expression]"));
    // `plot embedding --projection umap` of the written latent redraws embed's UMAP point for point (x
    // only: the titles differ, and a long title is set smaller, which moves the plot area vertically).
    ok(bin().args(["plot", "embedding"]).arg(d.join("lat_umap.h5ad")).args(["--projection", "umap", "--out"]).arg(re.join("umap")));
    let xs = |svg: &str| svg.split("<circle cx=\"").skip(1).map(|t| t.split('"').next().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(xs(&both(&re.join("umap")).1), xs(&umap_svg), "the same latent and seed, another layout");
    std::fs::remove_file(d.join("ds.volcano.png")).unwrap();
    ok(bin().args(["plot", "volcano"]).arg(d.join("ds.tsv")));
    both(&d.join("ds.volcano"));
    std::fs::remove_file(d.join("eval.age_r2.svg")).unwrap();
    ok(bin().args(["plot", "age-r2"]).arg(d.join("eval.tsv")));
    assert_eq!(both(&d.join("eval.age_r2")).1, age_svg, "plot age-r2 E.tsv draws at E.age_r2");

    // Errors name what is missing; --no-plots draws nothing.
    let out = bin().args(["plot", "embedding"]).arg(d.join("lat.h5ad")).args(["--color-by", "nope"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no obs column `nope`"));
    let run2 = d.join("run2");
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run2).args(["--max-epochs", "1", "--quiet", "--no-plots"]));
    assert!(run2.join("metrics.tsv").exists() && !run2.join("curves.png").exists());
    ok(bin().arg("embed").arg(&run2).arg(&data).arg("--out").arg(d.join("lat2.h5ad")).arg("--no-plots"));
    assert!(!d.join("lat2.embedding.png").exists());
    // evaluate --age checks its heatmap's files before any work, and --no-plots skips both pictures.
    std::fs::create_dir_all(d.join("o/e.age_r2.svg")).unwrap();
    let out = bin().arg("evaluate").arg(&run).arg(&data).args(["--age", "library_size", "--out"]).arg(d.join("o/e.tsv")).output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("e.age_r2.svg (the picture beside --out; --no-plots skips it)") && !e.contains("masked"), "{e}");
    ok(bin().arg("evaluate").arg(&run2).arg(&data).args(["--age", "library_size", "--no-plots", "--out"]).arg(d.join("e2.tsv")));
    assert!(d.join("e2.tsv").exists() && !d.join("e2.age_r2.png").exists() && !d.join("e2.impute.png").exists());
}

/// Without validation cells (--train-size 1) and without an adversary, metrics.tsv leaves those
/// columns empty (not 0.0; pandas reads them as missing), keeps its columns, and `plot curves` draws
/// the train series only; --resume reads the missing values back.
#[test]
fn a_run_without_validation_writes_empty_fields_and_still_draws() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("toy.h5mu");
    let run = d.join("run");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "4", "--out"]).arg(&data));
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--max-epochs", "2", "--train-size", "1", "--quiet", "--no-plots"]));
    let check = |epochs: usize| {
        let text = std::fs::read_to_string(run.join("metrics.tsv")).unwrap();
        let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
        let (header, _) = metrics_table(0, false);
        assert_eq!(rows[0], header, "the columns stay the same");
        assert_eq!(rows.len(), 1 + epochs, "{text}");
        for r in &rows[1..] {
            assert_eq!(r.len(), header.len(), "{text}");
            for (h, v) in header.iter().zip(r) {
                let missing = h.ends_with("_validation") || h == "adversary_loss";
                assert_eq!(v.is_empty(), missing, "{h} = {v:?}:\n{text}");
            }
        }
        let jsonl = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        assert!(jsonl.lines().all(|l| l.contains("\"elbo_validation\":null") && l.contains("\"adversary_loss\":null")), "{jsonl}");
    };
    check(2);
    ok(bin().args(["plot", "curves"]).arg(&run));
    let (_, svg) = both(&run.join("curves"));
    assert_eq!(lines(&svg, TRAIN_COLOUR, 2), 6, "train: five terms and the minimised loss");
    assert_eq!(lines(&svg, VALIDATION_COLOUR, 2), 0, "no validation series");
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--resume", "--max-epochs", "3", "--quiet", "--no-plots"]));
    check(3);
}

/// Every `plot` input error names its file (the pairs table's said "pairs table without a `truth`
/// column" and nothing else).
#[test]
fn plot_input_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fail = |args: &[&std::ffi::OsStr]| -> String {
        let o = bin().args(args).output().unwrap();
        assert!(!o.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let write = |name: &str, text: &str| -> PathBuf {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let no_truth = write("no_truth.tsv", "cell\tjunction\tpred\nc\tj\t0.5\n");
    let only_truth = write("only_truth.tsv", "cell\tjunction\ttruth\nc\tj\t0.5\n");
    for (p, needle) in [(&no_truth, "pairs table without a `truth` column"), (&only_truth, "pairs table without prediction columns")] {
        let e = fail(&["plot".as_ref(), "impute".as_ref(), p.as_os_str()]);
        assert!(e.contains(&format!("{}: {needle}", p.display())), "{e}");
    }
    let ds = write("ds.tsv", "junction\teffect_size\n");
    let e = fail(&["plot".as_ref(), "volcano".as_ref(), ds.as_os_str()]);
    assert!(e.contains(&format!("{}: DS table without effect_size and bayes_factor", ds.display())), "{e}");
    let ds2 = write("ds2.tsv", "effect_size\tbayes_factor\tis_ds_fdr\n0.1\t2\tTrue\n");
    let e = fail(&["plot".as_ref(), "volcano".as_ref(), ds2.as_os_str(), "--fdr".as_ref(), "0.1".as_ref()]);
    assert!(e.contains(&format!("{}: --fdr needs a proba_ds column", ds2.display())) && e.matches(&ds2.display().to_string()).count() == 1, "{e}");
    let ev = write("eval.tsv", "section\tsubset\tmethod\tmetric\tvalue\nlatent\tjoint\tsplicevi\tdim\t10\n");
    let e = fail(&["plot".as_ref(), "age-r2".as_ref(), ev.as_os_str()]);
    assert!(e.contains(&format!("{}: no age_r2 row in section `latent`: evaluate was run without --age", ev.display())), "{e}");
    let run = d.join("run");
    std::fs::create_dir(&run).unwrap();
    for (text, needle) in [("lr\ttrain_loss\n0.1\t5\n", "without an `epoch` column"), ("epoch\ttrain_loss\n0\t\n", "no loss term with values")] {
        std::fs::write(run.join("metrics.tsv"), text).unwrap();
        let e = fail(&["plot".as_ref(), "curves".as_ref(), run.as_os_str()]);
        assert!(e.contains(&format!("error: {}: ", run.join("metrics.tsv").display())) && e.contains(needle), "{e}");
    }
    // an .h5ad with a latent of no cells, and one without obs
    for (name, rows, with_obs, needle) in [("empty.h5ad", 0usize, true, "obsm/X_splicevi: latent with no cells"), ("no_obs.h5ad", 3, false, "obs: missing")] {
        let p = d.join(name);
        let f = hdf5::File::create(&p).unwrap();
        f.create_group("obsm").unwrap().new_dataset::<f64>().shape([rows, 2]).create("X_splicevi").unwrap();
        if with_obs {
            f.create_group("obs").unwrap().new_dataset::<hdf5::types::VarLenUnicode>().shape([0]).create("_index").unwrap();
        }
        drop(f);
        let e = fail(&["plot".as_ref(), "embedding".as_ref(), p.as_os_str()]);
        assert!(e.contains(&format!("error: {}: {needle}", p.display())), "{name}: {e}");
    }
}

/// The x tick labels of a curves picture (centred numbers below the axis), left to right.
fn x_tick_labels(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter(|t| t.contains("text-anchor=\"middle\"") && t.contains("dy=\"0.76em\""))
        .filter_map(|t| Some(t.split_once('>')?.1.split_once("</text>")?.0.trim().to_string()))
        .filter(|t| t.parse::<f64>().is_ok())
        .collect()
}

/// The epoch axis has whole-epoch ticks, each once: with ≤ 4 epochs it read "1 2 2 2 3" (ticks every
/// half epoch, rounded) and with one "1 1 1 1 1"; the title counts "1 epoch".
#[test]
fn curves_epoch_ticks_are_whole_and_distinct() {
    let dir = tempfile::tempdir().unwrap();
    for epochs in [1usize, 2, 3, 4, 5, 8, 9, 12, 40, 800] {
        let header = vec!["epoch".to_string(), "train_loss".to_string()];
        let rows: Vec<Vec<String>> = (0..epochs).map(|e| vec![e.to_string(), (500.0 - e as f64 * 0.1).to_string()]).collect();
        let c = Curves::from_table(&header, &rows, "ticks").unwrap();
        let (_, svg) = saved(&c, dir.path(), &format!("e{epochs}"), "ticks");
        let labels = x_tick_labels(&svg);
        let values: Vec<f64> = labels.iter().map(|l| l.parse().unwrap()).collect();
        assert!(!values.is_empty(), "{epochs} epochs: no tick labels");
        assert!(values.iter().all(|v| v.fract() == 0.0 && *v >= 1.0 && *v <= epochs as f64), "{epochs} epochs: {labels:?}");
        assert!(values.windows(2).all(|w| w[0] < w[1]), "{epochs} epochs: repeated or unordered ticks {labels:?}");
        if epochs <= 8 {
            assert_eq!(values, (1..=epochs).map(|e| e as f64).collect::<Vec<_>>(), "{epochs} epochs");
        }
    }
    let run = dir.path().join("one");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join("metrics.tsv"), "epoch\ttrain_loss\n0\t5.0\n").unwrap();
    assert_eq!(Curves::from_run_dir(&run).unwrap().title, "Training curves: one (1 epoch)");
    std::fs::write(run.join("metrics.tsv"), "epoch\ttrain_loss\n0\t5.0\n1\t4.0\n").unwrap();
    assert_eq!(Curves::from_run_dir(&run).unwrap().title, "Training curves: one (2 epochs)");
}
