//! The embedded default dataset: ten classes of procedural shapes and textures, drawn
//! deterministically from a seed and written as real JPEG files in ImageFolder layout
//! (`root/{train,val}/<class>/<n>.jpg`), so the whole pipeline runs with no download.
//!
//! Each image has a random background (flat colour plus noise), a random foreground colour,
//! and one class-defining pattern at a random position and scale.

use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use std::path::Path;

pub const CLASSES: [&str; 10] =
    ["circle", "square", "triangle", "cross", "ring", "hstripes", "vstripes", "checker", "diagonal", "dots"];

fn colour(rng: &mut SplitMix64) -> [f64; 3] {
    [rng.range(0.0, 255.0), rng.range(0.0, 255.0), rng.range(0.0, 255.0)]
}

/// Draws image `index` of class `class` (deterministic in (seed, class, index)) as RGB bytes.
pub fn draw(class: usize, index: u64, size: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(
        seed ^ (class as u64).wrapping_mul(0x1000_0000_01B3) ^ index.wrapping_mul(0x9E37_79B9),
    );
    for _ in 0..4 {
        rng.next_u64();
    }
    let bg = colour(&mut rng);
    let mut fg = colour(&mut rng);
    // Keep the pattern visible: push the foreground away from the background.
    if (0..3).map(|c| (fg[c] - bg[c]).abs()).sum::<f64>() < 150.0 {
        fg = [255.0 - bg[0], 255.0 - bg[1], 255.0 - bg[2]];
    }
    let s = size as f64;
    let (cx, cy) = (rng.range(0.3, 0.7) * s, rng.range(0.3, 0.7) * s);
    let r = rng.range(0.15, 0.3) * s;
    let period = rng.range(0.08, 0.16) * s;
    let angle = rng.range(-0.3, 0.3);
    let noise = rng.range(5.0, 30.0);
    let (sin, cos) = angle.sin_cos();
    let mut px = vec![0u8; size * size * 3];
    for y in 0..size {
        for x in 0..size {
            let (fx, fy) = (x as f64 + 0.5, y as f64 + 0.5);
            // Coordinates relative to the centre, rotated by the image's angle.
            let (dx, dy) = (fx - cx, fy - cy);
            let (u, v) = (dx * cos + dy * sin, -dx * sin + dy * cos);
            let inside = match class {
                0 => u * u + v * v <= r * r,
                1 => u.abs() <= r * 0.85 && v.abs() <= r * 0.85,
                2 => v <= r * 0.7 && v >= -r && u.abs() <= (v + r) * 0.6,
                3 => (u.abs() <= r * 0.3 && v.abs() <= r) || (v.abs() <= r * 0.3 && u.abs() <= r),
                4 => {
                    let d = (u * u + v * v).sqrt();
                    d <= r && d >= r * 0.6
                }
                5 => (v / period).rem_euclid(2.0) < 1.0,
                6 => (u / period).rem_euclid(2.0) < 1.0,
                7 => (((u / period).floor() + (v / period).floor()) as i64).rem_euclid(2) == 0,
                8 => ((u + v) / (period * 1.4)).rem_euclid(2.0) < 1.0,
                _ => {
                    let (gu, gv) = ((u / period).rem_euclid(2.0) - 1.0, (v / period).rem_euclid(2.0) - 1.0);
                    gu * gu + gv * gv <= 0.35
                }
            };
            let base = if inside { fg } else { bg };
            for c in 0..3 {
                let n = (rng.uniform() - 0.5) * 2.0 * noise;
                px[(y * size + x) * 3 + c] = (base[c] + n).clamp(0.0, 255.0) as u8;
            }
        }
    }
    px
}

/// Writes the dataset (`per_class_train` + `per_class_val` images per class) as JPEGs under `root`,
/// skipping files already present (reruns after an interruption finish the job).
pub fn write_dataset(
    root: &Path,
    per_class_train: u64,
    per_class_val: u64,
    size: usize,
    seed: u64,
) -> Result<()> {
    for (split, count, offset) in [("train", per_class_train, 0u64), ("val", per_class_val, 1 << 32)] {
        for (c, name) in CLASSES.iter().enumerate() {
            let dir = root.join(split).join(name);
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            for i in 0..count {
                let path = dir.join(format!("{i:05}.jpg"));
                if path.exists() {
                    continue;
                }
                let px = draw(c, offset + i, size, seed);
                let mut bytes = Vec::new();
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
                    .encode(&px, size as u32, size as u32, image::ExtendedColorType::Rgb8)
                    .map_err(|e| Error::file(&path, format!("cannot encode JPEG: {e}")))?;
                crate::fsutil::write_atomic(&path, &bytes)?;
            }
        }
    }
    Ok(())
}

/// Images per class of the embedded default dataset (train, val) and their size.
pub const DEMO_TRAIN_PER_CLASS: u64 = 260;
pub const DEMO_VAL_PER_CLASS: u64 = 50;
pub const DEMO_SIZE: usize = 64;

/// The embedded default dataset under the cache folder (`~/.cache/resnet-train/demo-data-v1`),
/// generated on first use (about 10 s) and reused after; a `DONE` marker means complete.
pub fn ensure_demo_dataset() -> Result<std::path::PathBuf> {
    let cache =
        crate::runtime::cache_dir().unwrap_or_else(|| std::path::PathBuf::from(".resnet-train-cache"));
    let root = cache.join("demo-data-v1");
    let done = root.join("DONE");
    if !done.exists() {
        // Written aside and renamed into place: processes that start together (the ranks of a
        // data-parallel job) never read a half-written file; the first rename wins.
        let tmp = cache.join(format!("demo-data-v1.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        write_dataset(&tmp, DEMO_TRAIN_PER_CLASS, DEMO_VAL_PER_CLASS, DEMO_SIZE, 0)?;
        std::fs::write(tmp.join("DONE"), b"").map_err(|e| Error::io(tmp.join("DONE"), e))?;
        if root.exists() && !done.exists() {
            // A folder left by an older, interrupted version of this step.
            let _ = std::fs::remove_dir_all(&root);
        }
        if std::fs::rename(&tmp, &root).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
            if !done.exists() {
                return Err(Error::file(
                    &root,
                    "cannot write the embedded dataset here (set RESNET_TRAIN_CACHE)",
                ));
            }
        }
    }
    Ok(root)
}
