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

pub fn run(a: ResizeArgs) -> Result<u8, String> {
    let (limit, by_long) = match (a.max_side, a.short_side) {
        (Some(n), None) => (n, true),
        (None, Some(n)) => (n, false),
        _ => return Err("give one of --max-side N or --short-side N".into()),
    };
    if limit == 0 || !(1..=100).contains(&a.quality) {
        return Err("--max-side/--short-side must be > 0 and --quality in 1..=100".into());
    }
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
