//! Figures, as SVG or PNG (by extension): `report`'s training curves of one or several runs —
//! train loss, eval top-1/top-5, eval loss and the learning rate against epoch, and train loss
//! against wall time — and the stability ablation's heatmaps.

use crate::error::{Error, Result};
use crate::experiments::ablate::Row;
use crate::model::{ActInit, ActKind};
use crate::train::run::metrics::{EpochRecord, RunLog};
use crate::train::step::amp::Precision;
use crate::train::step::stability::FP16_MAX;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};

/// One run's curves.
pub struct RunCurves {
    pub label: String,
    pub epochs: Vec<EpochRecord>,
}

pub fn load(run: &Path) -> Result<RunCurves> {
    let summary = run.join("summary.csv");
    if !summary.exists() {
        return Err(Error::file(run, "no summary.csv: not a run folder, or no epoch finished yet"));
    }
    let label =
        run.file_name().map_or_else(|| run.display().to_string(), |n| n.to_string_lossy().into_owned());
    Ok(RunCurves { label, epochs: RunLog::read_summary(&summary) })
}

const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    let path = FONT_PATHS.iter().map(PathBuf::from).find(|p| p.exists()).ok_or_else(|| {
        Error::Usage("figures need DejaVuSans.ttf (Debian: apt-get install fonts-dejavu-core; scripts/bootstrap.sh installs it)".into())
    })?;
    let bytes: &'static [u8] =
        Box::leak(std::fs::read(&path).map_err(|e| Error::io(&path, e))?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| Error::file(&path, "not a usable TrueType font"))?;
    let _ = DONE.set(true);
    Ok(())
}

/// Renders `$paint(&root, ...)` to `$out`, SVG or PNG by extension.
macro_rules! render {
    ($out:expr, $size:expr, $paint:ident($($arg:expr),*)) => {{
        let out: &Path = $out;
        let err = |e: String| Error::file(out, format!("cannot draw: {e}"));
        register_font()?; // text is measured with the font even in SVG
        match out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("svg") => {
                let root = SVGBackend::new(out, $size).into_drawing_area();
                $paint(&root, $($arg),*).map_err(err)?;
                root.present().map_err(|e| err(e.to_string()))
            }
            Some("png") => {
                let root = BitMapBackend::new(out, $size).into_drawing_area();
                $paint(&root, $($arg),*).map_err(err)?;
                root.present().map_err(|e| err(e.to_string()))
            }
            _ => Err(Error::Usage(format!("--out {}: use a .svg or .png file", out.display()))),
        }
    }};
}

/// Draws the figure to `out` (.svg or .png).
pub fn draw(runs: &[RunCurves], out: &Path) -> Result<()> {
    render!(out, (2000, 900), panels(runs))
}

/// A learning-rate schedule (epoch, lr) as one line (`resnet-train schedule --out`).
pub fn draw_schedule(points: &[(f64, f64)], title: &str, out: &Path) -> Result<()> {
    render!(out, (1000, 500), schedule_panel(points, title))
}

fn schedule_panel<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    points: &[(f64, f64)],
    title: &str,
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (xs, ys) = axis_ranges(points.iter().copied());
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(xs, ys)
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc("epoch").y_desc("learning rate").draw().map_err(|e| e.to_string())?;
    let color = Palette99::pick(0).to_rgba();
    chart
        .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// A group of runs drawn as one curve: the mean over its runs with a band of ± one standard
/// deviation (a study's variant over its seeds).
pub struct Group {
    pub label: String,
    pub runs: Vec<RunCurves>,
}

/// Train loss, eval top-1 and eval top-5 against epoch, one mean curve and band per group.
pub fn draw_groups(groups: &[Group], out: &Path) -> Result<()> {
    render!(out, (1500, 500), group_panels(groups))
}

/// Per epoch (1-based) with at least one finite value: (epoch, mean, sd) over the group's runs.
fn mean_band(runs: &[RunCurves], f: &dyn Fn(&EpochRecord) -> Option<f64>) -> Vec<(f64, f64, f64)> {
    let last = runs.iter().flat_map(|r| r.epochs.iter().map(|e| e.epoch)).max();
    let Some(last) = last else { return Vec::new() };
    (0..=last)
        .filter_map(|epoch| {
            let vals: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.epochs.iter().find(|e| e.epoch == epoch).and_then(f))
                .filter(|v| v.is_finite())
                .collect();
            if vals.is_empty() {
                return None;
            }
            let s = crate::experiments::stats::Summary::of(&vals);
            Some((epoch as f64 + 1.0, s.mean, if s.sd.is_finite() { s.sd } else { 0.0 }))
        })
        .collect()
}

fn group_panels<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    groups: &[Group],
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((1, 3));
    type Pick = fn(&EpochRecord) -> Option<f64>;
    let specs: [(&str, Pick); 3] = [
        ("train loss", |e| Some(e.train_loss)),
        ("eval top-1 (%)", |e| e.eval_top1),
        ("eval top-5 (%)", |e| e.eval_top5),
    ];
    for (area, (title, pick)) in areas.iter().zip(specs) {
        let bands: Vec<Vec<(f64, f64, f64)>> = groups.iter().map(|g| mean_band(&g.runs, &pick)).collect();
        let (xs, ys) = axis_ranges(bands.iter().flatten().flat_map(|&(x, m, sd)| [(x, m - sd), (x, m + sd)]));
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{title} vs epoch (mean ± sd over seeds)"), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(xs, ys)
            .map_err(|e| e.to_string())?;
        chart.configure_mesh().x_desc("epoch").y_desc(title).draw().map_err(|e| e.to_string())?;
        for (i, (group, band)) in groups.iter().zip(&bands).enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let outline: Vec<(f64, f64)> = band
                .iter()
                .map(|&(x, m, sd)| (x, m + sd))
                .chain(band.iter().rev().map(|&(x, m, sd)| (x, m - sd)))
                .collect();
            chart
                .draw_series(std::iter::once(Polygon::new(outline, color.mix(0.2).filled())))
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(LineSeries::new(band.iter().map(|&(x, m, _)| (x, m)), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(format!("{} (n = {})", group.label, group.runs.len()))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The ablation's heatmaps: for each precision, steps survived (top) and the largest
/// |activation| (bottom) over (activation variant x order).
pub fn draw_ablation(rows: &[Row], steps: usize, out: &Path) -> Result<()> {
    let grid = HeatGrid::new(rows);
    let size = ((grid.precisions.len() as u32 * grid.panel_width()).max(600), 2 * grid.panel_height() + 60);
    render!(out, size, heatmaps(&grid, steps))
}

/// The ablation's rows arranged for heatmaps.
struct HeatGrid<'a> {
    rows: &'a [Row],
    precisions: Vec<Precision>,
    /// (act, init, remedy) variants, one heatmap row each.
    variants: Vec<(ActKind, Option<ActInit>, String)>,
    orders: Vec<i64>,
}

const CELL: (u32, u32) = (66, 34);
const LABEL_W: u32 = 250;

impl<'a> HeatGrid<'a> {
    fn new(rows: &'a [Row]) -> Self {
        let mut g = HeatGrid { rows, precisions: Vec::new(), variants: Vec::new(), orders: Vec::new() };
        for r in rows {
            if !g.precisions.contains(&r.precision) {
                g.precisions.push(r.precision);
            }
            let v = (r.act, r.init, r.remedy.to_string());
            if !g.variants.contains(&v) {
                g.variants.push(v);
            }
            if let Some(k) = r.order {
                if !g.orders.contains(&k) {
                    g.orders.push(k);
                }
            }
        }
        g.orders.sort_unstable();
        if g.orders.is_empty() {
            g.orders.push(1);
        }
        g
    }
    fn panel_width(&self) -> u32 {
        LABEL_W + CELL.0 * self.orders.len() as u32 + 30
    }
    fn panel_height(&self) -> u32 {
        70 + CELL.1 * self.variants.len() as u32 + 40
    }
    /// ReLU has no order: its one row fills every order column.
    fn find(&self, p: Precision, v: &(ActKind, Option<ActInit>, String), k: i64) -> Option<&Row> {
        self.rows.iter().find(|r| {
            r.precision == p
                && r.act == v.0
                && r.init == v.1
                && r.remedy.to_string() == v.2
                && (r.order.is_none() || r.order == Some(k))
        })
    }
}

fn lerp(a: (u8, u8, u8), b: (u8, u8, u8), t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let m = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * t).round() as u8;
    RGBColor(m(a.0, b.0), m(a.1, b.1), m(a.2, b.2))
}

/// Red (none survived) through yellow to green (all survived).
fn survived_color(fraction: f64) -> RGBColor {
    if fraction < 0.5 {
        lerp((215, 48, 39), (254, 224, 139), fraction * 2.0)
    } else {
        lerp((254, 224, 139), (26, 152, 80), fraction * 2.0 - 1.0)
    }
}

/// Blues within fp16's range, orange to dark red beyond it, black for inf/NaN.
fn magnitude_color(v: f64) -> RGBColor {
    if !v.is_finite() {
        return RGBColor(20, 20, 20);
    }
    let l = v.max(1e-3).log10();
    let fp16 = FP16_MAX.log10();
    if l <= fp16 {
        lerp((239, 243, 255), (49, 130, 189), (l + 1.0) / (fp16 + 1.0))
    } else {
        lerp((253, 174, 97), (127, 0, 0), (l - fp16) / (38.0 - fp16))
    }
}

fn heatmaps<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    grid: &HeatGrid,
    steps: usize,
) -> std::result::Result<(), String> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    fn center(size: u32, color: &'static RGBColor) -> TextStyle<'static> {
        TextStyle::from(("sans-serif", size).into_font())
            .color(color)
            .pos(Pos::new(HPos::Center, VPos::Center))
    }
    let left = |size: u32| {
        TextStyle::from(("sans-serif", size).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Left, VPos::Center))
    };
    root.draw(&Text::new(
        format!("Stability ablation: {steps} steps per cell (top: steps before the first inf/NaN; bottom: largest |activation|, fp16 max 65504)"),
        (16, 22),
        left(18),
    ))
    .map_err(e)?;
    for (pi, &p) in grid.precisions.iter().enumerate() {
        for metric in 0..2 {
            let x0 = pi as i32 * grid.panel_width() as i32 + 10;
            let y0 = 50 + metric * grid.panel_height() as i32;
            let title = format!(
                "{} - {}",
                format!("{p:?}").to_lowercase(),
                if metric == 0 { "steps survived" } else { "max |activation|" }
            );
            root.draw(&Text::new(title, (x0 + LABEL_W as i32, y0 + 14), left(17))).map_err(e)?;
            let gy = y0 + 50;
            for (oi, k) in grid.orders.iter().enumerate() {
                let cx = x0 + LABEL_W as i32 + oi as i32 * CELL.0 as i32 + CELL.0 as i32 / 2;
                root.draw(&Text::new(format!("k={k}"), (cx, gy - 12), center(14, &BLACK))).map_err(e)?;
            }
            for (vi, v) in grid.variants.iter().enumerate() {
                let y = gy + vi as i32 * CELL.1 as i32;
                let mut label = format!("{:?}", v.0).to_lowercase();
                if v.0 == ActKind::Relu {
                    label.push_str(" (no order)");
                } else if v.1 == Some(ActInit::ReluLike) {
                    label.push_str(" relu-like init");
                }
                if v.2 != "none" {
                    label.push_str(&format!(" + {}", v.2));
                }
                root.draw(&Text::new(label, (x0, y + CELL.1 as i32 / 2), left(14))).map_err(e)?;
                for (oi, &k) in grid.orders.iter().enumerate() {
                    let cx = x0 + LABEL_W as i32 + oi as i32 * CELL.0 as i32;
                    let Some(r) = grid.find(p, v, k) else { continue };
                    let (fill, text) = if metric == 0 {
                        let frac = r.steps_survived as f64 / steps.max(1) as f64;
                        let mark = if r.diverged { "*" } else { "" };
                        (survived_color(frac), format!("{}{mark}", r.steps_survived))
                    } else {
                        (magnitude_color(r.max_abs_act), crate::experiments::ablate::short(r.max_abs_act))
                    };
                    let ink: &'static RGBColor =
                        if metric == 1 && (!r.max_abs_act.is_finite() || r.max_abs_act > 1e20) {
                            &WHITE
                        } else {
                            &BLACK
                        };
                    root.draw(&Rectangle::new(
                        [(cx + 1, y + 1), (cx + CELL.0 as i32 - 1, y + CELL.1 as i32 - 1)],
                        fill.filled(),
                    ))
                    .map_err(e)?;
                    root.draw(&Text::new(
                        text,
                        (cx + CELL.0 as i32 / 2, y + CELL.1 as i32 / 2),
                        center(13, ink),
                    ))
                    .map_err(e)?;
                }
            }
            if metric == 0 {
                let y = gy + grid.variants.len() as i32 * CELL.1 as i32 + 14;
                root.draw(&Text::new(
                    "* diverged (an inf/NaN forward pass, or stopped by a guard)",
                    (x0 + LABEL_W as i32, y),
                    left(12),
                ))
                .map_err(e)?;
            }
        }
    }
    Ok(())
}

type Series = Vec<(f64, f64)>;

/// The x range of the points and their y range padded by 5% (unit ranges when there are none).
fn axis_ranges(points: impl Iterator<Item = (f64, f64)>) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    (x0..x1.max(x0 + 1e-6), (y0 - pad)..(y1 + pad))
}

fn panels<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[RunCurves],
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((2, 3));
    let pick = |f: &dyn Fn(&EpochRecord) -> Option<f64>, x_time: bool| -> Vec<Series> {
        runs.iter()
            .map(|r| {
                r.epochs
                    .iter()
                    .filter_map(|e| {
                        let x = if x_time { e.elapsed_s / 60.0 } else { e.epoch as f64 + 1.0 };
                        f(e).filter(|v| v.is_finite()).map(|v| (x, v))
                    })
                    .collect()
            })
            .collect()
    };
    let specs: [(&str, &str, Vec<Series>); 6] = [
        ("train loss", "epoch", pick(&|e| Some(e.train_loss), false)),
        ("eval top-1 (%)", "epoch", pick(&|e| e.eval_top1, false)),
        ("eval top-5 (%)", "epoch", pick(&|e| e.eval_top5, false)),
        ("eval loss", "epoch", pick(&|e| e.eval_loss, false)),
        // The epoch's last step: shows the schedule style's shape (warmup, decay, cooldown).
        ("learning rate", "epoch", pick(&|e| Some(e.lr), false)),
        ("train loss", "wall time (min)", pick(&|e| Some(e.train_loss), true)),
    ];
    for (area, (title, xlabel, series)) in areas.iter().zip(specs) {
        let (xs, ys) = axis_ranges(series.iter().flatten().copied());
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{title} vs {xlabel}"), ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(xs, ys)
            .map_err(|e| e.to_string())?;
        chart.configure_mesh().x_desc(xlabel).y_desc(title).draw().map_err(|e| e.to_string())?;
        for (i, (run, s)) in runs.iter().zip(series).enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(s, color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(run.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The learned coefficients of one model file, labelled.
pub struct CoefficientSet {
    pub label: String,
    pub sites: Vec<crate::model::SiteCoefficients>,
}

/// Each PolyReLU/PolyNorm coefficient (w_1 ... w_k, b) across depth: one panel per coefficient,
/// the site's forward index on x, one line per model file; filled dots mark the sites after a
/// residual add.
pub fn draw_coefficients(sets: &[CoefficientSet], out: &Path) -> Result<()> {
    let k = sets.iter().flat_map(|s| s.sites.iter().map(|c| c.weight.len())).max().unwrap_or(0);
    if k == 0 {
        return Err(Error::Usage("no PolyReLU/PolyNorm coefficients to draw (ReLU models have none)".into()));
    }
    let panels = (0..=k)
        .map(|j| CoefficientPanel {
            title: format!("{} by site", coefficient_name(j, k)),
            x_desc: "site (forward order; filled: after the residual add)",
            lines: sets
                .iter()
                .enumerate()
                .map(|(i, s)| CoefficientLine {
                    points: s
                        .sites
                        .iter()
                        .enumerate()
                        .filter_map(|(x, c)| coefficient_value(j, k, c).map(|v| (x as f64, v)))
                        .collect(),
                    color: Palette99::pick(i).to_rgba(),
                    label: Some(s.label.clone()),
                    filled: Some(after_residual_add(&s.sites)),
                })
                .collect(),
        })
        .collect();
    draw_coefficient_panels(panels, k, out)
}

/// Each PolyReLU/PolyNorm coefficient of one run over training: one panel per coefficient, one
/// line per site, coloured by depth (yellow: the stem, purple: the last block), from the
/// `(step, coefficients)` a run logged on its monitored steps.
pub fn draw_coefficient_trajectories(
    steps: &[(usize, Vec<crate::model::SiteCoefficients>)],
    out: &Path,
) -> Result<()> {
    let k = steps.iter().flat_map(|(_, s)| s.iter().map(|c| c.weight.len())).max().unwrap_or(0);
    if k == 0 {
        return Err(Error::Usage("the run logged no coefficients (a ReLU run, or --monitor-every 0)".into()));
    }
    let sites: Vec<String> =
        steps.last().map(|(_, s)| s.iter().map(|c| c.site.clone()).collect()).unwrap_or_default();
    let n = sites.len().max(2);
    let panels = (0..=k)
        .map(|j| CoefficientPanel {
            title: format!("{} over training", coefficient_name(j, k)),
            x_desc: "step",
            lines: sites
                .iter()
                .enumerate()
                .map(|(i, site)| CoefficientLine {
                    points: steps
                        .iter()
                        .filter_map(|(step, s)| {
                            s.get(i).and_then(|c| coefficient_value(j, k, c)).map(|v| (*step as f64, v))
                        })
                        .collect(),
                    color: lerp((240, 200, 30), (68, 1, 84), i as f64 / (n - 1) as f64).to_rgba(),
                    // Only the first and the last site in the legend: the colours between run by depth.
                    label: (i == 0 || i + 1 == sites.len()).then(|| site.clone()),
                    filled: None,
                })
                .collect(),
        })
        .collect();
    draw_coefficient_panels(panels, k, out)
}

/// `w1` ... `wk`, then `b`.
fn coefficient_name(j: usize, k: usize) -> String {
    if j < k {
        format!("w{}", j + 1)
    } else {
        "b".to_string()
    }
}

/// Coefficient `j` of a site (`k` weights, then the bias); None when missing or not finite.
fn coefficient_value(j: usize, k: usize, c: &crate::model::SiteCoefficients) -> Option<f64> {
    if j < k { c.weight.get(j).copied() } else { Some(c.bias) }.filter(|v| v.is_finite())
}

/// One line of a coefficient panel; `filled` says, per point, whether its dot is filled (None: no dots).
struct CoefficientLine {
    points: Series,
    color: RGBAColor,
    label: Option<String>,
    filled: Option<Vec<bool>>,
}

struct CoefficientPanel {
    title: String,
    x_desc: &'static str,
    lines: Vec<CoefficientLine>,
}

/// The coefficient figures: panels for w1 ... wk and b, three to a row.
fn draw_coefficient_panels(panels: Vec<CoefficientPanel>, k: usize, out: &Path) -> Result<()> {
    let cols = (k + 1).min(3);
    let rows = (k + 1).div_ceil(cols);
    render!(out, (480 * cols as u32, 380 * rows as u32), coefficient_panels(&panels, k, rows, cols))
}

fn coefficient_panels<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    panels: &[CoefficientPanel],
    k: usize,
    rows: usize,
    cols: usize,
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    for (j, (area, panel)) in root.split_evenly((rows, cols)).iter().zip(panels).enumerate() {
        let name = coefficient_name(j, k);
        let (xs, ys) = axis_ranges(panel.lines.iter().flat_map(|l| l.points.iter().copied()));
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(34)
            .y_label_area_size(56)
            .build_cartesian_2d(xs, ys)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(panel.x_desc)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc(name.as_str())
            .draw()
            .map_err(|e| e.to_string())?;
        for line in &panel.lines {
            let color = line.color;
            if let Some(filled) = &line.filled {
                let dots = line.points.iter().map(|&(x, y)| {
                    let style = if filled.get(x as usize) == Some(&true) {
                        color.filled()
                    } else {
                        color.stroke_width(2)
                    };
                    Circle::new((x, y), 4, style)
                });
                chart.draw_series(dots).map_err(|e| e.to_string())?;
            }
            let drawn = chart
                .draw_series(LineSeries::new(line.points.iter().copied(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?;
            if let Some(label) = &line.label {
                drawn
                    .label(label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Whether each site is the last of its block (`layerX.Y.actN` with the block's largest N): the
/// activation after the residual add. The stem's `act1` is not.
fn after_residual_add(sites: &[crate::model::SiteCoefficients]) -> Vec<bool> {
    let split = |site: &str| {
        site.rsplit_once(".act").map(|(block, n)| (block.to_string(), n.parse::<u32>().unwrap_or(0)))
    };
    let mut last: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    for (block, n) in sites.iter().filter_map(|c| split(&c.site)) {
        let e = last.entry(block).or_insert(0);
        *e = (*e).max(n);
    }
    sites.iter().map(|c| split(&c.site).is_some_and(|(block, n)| last.get(&block) == Some(&n))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ActConfig, ActKind, Arch, ResNetConfig};

    #[test]
    fn the_last_site_of_each_block_is_after_the_residual_add() {
        let names = |arch| {
            let cfg = ResNetConfig::new(arch, ActConfig::new(ActKind::Polynorm, 2));
            let sites: Vec<crate::model::SiteCoefficients> = cfg
                .activation_sites()
                .into_iter()
                .map(|site| crate::model::SiteCoefficients { site, weight: vec![0.5, 0.5], bias: 0.0 })
                .collect();
            let flags = after_residual_add(&sites);
            sites.into_iter().zip(flags).filter(|(_, f)| *f).map(|(c, _)| c.site).collect::<Vec<_>>()
        };
        let r18 = names(Arch::Resnet18);
        assert_eq!(r18.len(), 8);
        assert!(r18.iter().all(|s| s.ends_with(".act2")), "{r18:?}");
        let r50 = names(Arch::Resnet50);
        assert_eq!(r50.len(), 16);
        assert!(r50.iter().all(|s| s.ends_with(".act3")) && !r50.contains(&"act1".to_string()), "{r50:?}");
    }
}
