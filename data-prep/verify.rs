//! `verify`: decode every image of a tree in parallel; count formats and colour spaces; list bad files.

use rayon::prelude::*;
use resnet_train::data::decode;
use resnet_train::ffi::jpeg;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Folder to check (recursively).
    dir: PathBuf,
    /// Exit 0 even when bad files are found.
    #[arg(long)]
    allow_bad: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Images whose header claims more pixels are bad files (decompression bombs).
    #[arg(long, default_value_t = decode::DEFAULT_MAX_IMAGE_PIXELS)]
    max_image_pixels: u64,
}

/// What one file turned out to be: (format / colour space) or an error.
fn check(path: &PathBuf) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        let h = jpeg::header(&bytes)?;
        decode::check_pixels(h.width, h.height, path).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        match jpeg::decode(&bytes, &h, 8, None, &mut out) {
            Ok(_) => {}
            Err(e) if e.contains("truncated") => return Err(e),
            // libjpeg-turbo cannot convert CMYK/YCCK to RGB; the loader's fallback can.
            Err(_) => {
                decode::decode_bytes(&bytes, path).map_err(|e| e.to_string())?;
            }
        }
        return Ok(format!("JPEG/{:?}", h.colorspace));
    }
    let img = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let format = img.format().map_or("unknown".to_string(), |f| format!("{f:?}").to_uppercase());
    let decoded = img.decode().map_err(|e| e.to_string())?;
    Ok(format!("{format}/{:?}", decoded.color()))
}

pub fn run(a: VerifyArgs) -> Result<u8, String> {
    decode::set_max_image_pixels(a.max_image_pixels);
    let files = crate::image_files(&a.dir)?;
    let bar = crate::progress(files.len() as u64, "verify");
    let results: Vec<(PathBuf, Result<String, String>)> = files
        .par_iter()
        .map(|p| {
            let r = check(p);
            bar.inc(1);
            (p.clone(), r)
        })
        .collect();
    bar.finish_and_clear();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut bad = Vec::new();
    for (p, r) in results {
        match r {
            Ok(k) => *kinds.entry(k).or_default() += 1,
            Err(e) => bad.push((p, e)),
        }
    }
    if a.json {
        let bad_json: Vec<_> = bad.iter().map(|(p, e)| serde_json::json!({"file": p, "error": e})).collect();
        println!("{}", serde_json::json!({"files": files.len(), "kinds": kinds, "bad": bad_json}));
    } else {
        println!("{} files in {}", files.len(), a.dir.display());
        for (k, n) in &kinds {
            println!("  {k:<24} {n}");
        }
        println!("  bad                      {}", bad.len());
        for (p, e) in &bad {
            println!("    {}: {e}", p.display());
        }
    }
    Ok(if bad.is_empty() || a.allow_bad { 0 } else { 1 })
}
