//! `resize`: a pre-resized copy of a tree (shorter or longer side at most N, JPEG quality q), as
//! FFCV does for faster epochs. Images already small enough are copied unchanged. Resumable:
//! finished files are skipped, and each file is written atomically.

use rayon::prelude::*;
use resnet_train::data::{decode, resize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(clap::Args)]
pub struct ResizeArgs {
    src: PathBuf,
    out: PathBuf,
    /// Longer side at most N (FFCV's max_resolution).
    #[arg(long, conflicts_with = "short_side")]
    max_side: Option<usize>,
    /// Shorter side at most N.
    #[arg(long)]
    short_side: Option<usize>,
    #[arg(long, default_value_t = 90)]
    quality: u8,
}

fn resize_one(src: &Path, dst: &Path, limit: usize, by_long: bool, quality: u8) -> Result<bool, String> {
    let bytes = std::fs::read(src).map_err(|e| e.to_string())?;
    let img = decode::decode_bytes(&bytes, src).map_err(|e| e.to_string())?;
    let (w, h) = (img.width, img.height);
    let side = if by_long { w.max(h) } else { w.min(h) };
    let out = if side <= limit {
        bytes // already small enough: keep the original bytes
    } else {
        let s = limit as f64 / side as f64;
        let (ow, oh) = (((w as f64 * s).round() as usize).max(1), ((h as f64 * s).round() as usize).max(1));
        let ha = resize::Axis::new(resize::Filter::Bilinear, 0, w, 0.0, w as f64, ow, 0..ow);
        let va = resize::Axis::new(resize::Filter::Bilinear, 0, h, 0.0, h as f64, oh, 0..oh);
        let mut chw = vec![0u8; 3 * ow * oh];
        let source = resize::Source { pixels: &img.pixels, stride: w * 3, x0: 0, y0: 0 };
        resize::resample(&source, &ha, &va, false, false, &mut Vec::new(), &mut chw);
        let plane = ow * oh;
        let hwc: Vec<u8> = (0..plane).flat_map(|i| [chw[i], chw[plane + i], chw[2 * plane + i]]).collect();
        let mut buf = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, quality)
            .encode(&hwc, ow as u32, oh as u32, image::ExtendedColorType::Rgb8)
            .map_err(|e| e.to_string())?;
        buf
    };
    resnet_train::fsutil::write_atomic(dst, &out).map_err(|e| e.to_string())?;
    Ok(side > limit)
}

/// The file in the output folder that records the settings its images were made with.
const SETTINGS: &str = ".imagenet-prep-resize.toml";

/// The source and the output must be separate trees: the same folder would count every image as
/// already done, and an output inside the source would be read as source on the next run (one
/// level deeper each time).
fn check_separate(src: &Path, out: &Path) -> Result<(), String> {
    let src_abs = src.canonicalize().map_err(|e| format!("{}: {e}", src.display()))?;
    // The output may not exist yet: resolve its nearest existing ancestor.
    let mut existing = out.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        let Some(name) = existing.file_name() else { break };
        rest.push(name.to_owned());
        existing = existing.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        if existing.as_os_str().is_empty() {
            existing = PathBuf::from(".");
        }
    }
    let mut out_abs = existing.canonicalize().map_err(|e| format!("{}: {e}", existing.display()))?;
    for name in rest.into_iter().rev() {
        out_abs.push(name);
    }
    if out_abs.starts_with(&src_abs) || src_abs.starts_with(&out_abs) {
        return Err(format!(
            "the output {} and the source {} overlap (the same folder, or one inside the other): give an output \
             folder outside the source",
            out.display(),
            src.display()
        ));
    }
    Ok(())
}

/// Records the settings in a new output folder; an output made with other settings (or with
/// unknown ones) is refused, since its finished files would be kept as "already done".
fn claim_output(out: &Path, settings: &str) -> Result<(), String> {
    let record = out.join(SETTINGS);
    match std::fs::read_to_string(&record) {
        Ok(saved) if saved == settings => return Ok(()),
        Ok(saved) => {
            let shown = |t: &str| t.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join(", ");
            return Err(format!(
                "{} was resized with {}; this run asks {}: its finished files would be kept as they are. Use \
                 another output folder, or delete this one to redo it",
                out.display(),
                shown(&saved),
                shown(settings)
            ));
        }
        Err(_) => {}
    }
    let holds_files = std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(false);
    if holds_files {
        return Err(format!(
            "{} is not empty and does not record the settings its files were made with ({SETTINGS}): they \
             would be kept as \"already done\" whatever their size. Use an empty or new output folder",
            out.display()
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    resnet_train::fsutil::write_atomic(&record, settings.as_bytes()).map_err(|e| e.to_string())
}

pub fn run(a: ResizeArgs) -> Result<u8, String> {
    let (limit, by_long) = match (a.max_side, a.short_side) {
        (Some(n), None) => (n, true),
        (None, Some(n)) => (n, false),
        _ => return Err("give one of --max-side N or --short-side N".into()),
    };
    if limit == 0 || !(1..=100).contains(&a.quality) {
        return Err("--max-side/--short-side must be > 0 and --quality in 1..=100".into());
    }
    check_separate(&a.src, &a.out)?;
    let settings = format!(
        "# imagenet-prep resize's settings for the files in this folder (a rerun must use the same)\n{} = {limit}\nquality = {}\n",
        if by_long { "max_side" } else { "short_side" },
        a.quality
    );
    claim_output(&a.out, &settings)?;
    let files = crate::image_files(&a.src)?;
    let jobs: Vec<(PathBuf, PathBuf)> = files
        .iter()
        .filter_map(|f| {
            let rel = f.strip_prefix(&a.src).ok()?;
            Some((f.clone(), a.out.join(rel)))
        })
        .filter(|(_, d)| !d.exists())
        .collect();
    println!("{} files, {} to do ({} already done)", files.len(), jobs.len(), files.len() - jobs.len());
    let bar = crate::progress(jobs.len() as u64, "resize");
    let resized = AtomicUsize::new(0);
    let failures: Vec<String> = jobs
        .par_iter()
        .filter_map(|(s, d)| {
            let r = resize_one(s, d, limit, by_long, a.quality);
            bar.inc(1);
            match r {
                Ok(changed) => {
                    resized.fetch_add(changed as usize, Ordering::Relaxed);
                    None
                }
                Err(e) => Some(format!("{}: {e}", s.display())),
            }
        })
        .collect();
    bar.finish_and_clear();
    println!(
        "resized {}, copied {}, failed {}",
        resized.load(Ordering::Relaxed),
        jobs.len() - failures.len() - resized.load(Ordering::Relaxed),
        failures.len()
    );
    for f in failures.iter().take(20) {
        eprintln!("  {f}");
    }
    Ok(if failures.is_empty() { 0 } else { 1 })
}
