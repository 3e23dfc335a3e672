//! `report`: training curves of one or several runs in one figure — train loss and eval
//! top-1/top-5 against epoch, and train loss against wall time — as SVG or PNG (by extension).

use crate::error::{Error, Result};
use crate::train::metrics::{EpochRecord, RunLog};
use plotters::coord::Shift;
use plotters::prelude::*;
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

/// Draws the figure to `out` (.svg or .png).
pub fn draw(runs: &[RunCurves], out: &Path) -> Result<()> {
    let size = (1400, 900);
    let err = |e: String| Error::file(out, format!("cannot draw: {e}"));
    match out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("svg") => {
            register_font()?; // text is measured with the font even in SVG
            let root = SVGBackend::new(out, size).into_drawing_area();
            panels(&root, runs).map_err(err)?;
            root.present().map_err(|e| err(e.to_string()))
        }
        Some("png") => {
            register_font()?;
            let root = BitMapBackend::new(out, size).into_drawing_area();
            panels(&root, runs).map_err(err)?;
            root.present().map_err(|e| err(e.to_string()))
        }
        _ => Err(Error::Usage(format!("--out {}: use a .svg or .png file", out.display()))),
    }
}

type Series = Vec<(f64, f64)>;

fn panels<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[RunCurves],
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((2, 2));
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
    let specs: [(&str, &str, Vec<Series>); 4] = [
        ("train loss", "epoch", pick(&|e| Some(e.train_loss), false)),
        ("eval top-1 (%)", "epoch", pick(&|e| e.eval_top1, false)),
        ("eval top-5 (%)", "epoch", pick(&|e| e.eval_top5, false)),
        ("train loss", "wall time (min)", pick(&|e| Some(e.train_loss), true)),
    ];
    for (area, (title, xlabel, series)) in areas.iter().zip(specs) {
        let pts = series.iter().flatten();
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in pts {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        let pad = ((y1 - y0) * 0.05).max(1e-6);
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{title} vs {xlabel}"), ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1.max(x0 + 1e-6), (y0 - pad)..(y1 + pad))
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
