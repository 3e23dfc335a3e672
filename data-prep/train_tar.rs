//! `imagenet-prep train --tar ILSVRC2012_img_train.tar --out DIR`: the official training archive
//! (a tar of one tar per class, `n01440764.tar` ...) extracted to `DIR/<wnid>/<file>`, streamed:
//! the archive is read once, front to back, and no class is held whole in memory. Each class is
//! written to a hidden temporary folder and renamed when whole, so a killed extraction leaves no
//! half class that looks whole, and the same command continues it (finished classes are skipped).

use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct TrainTarArgs {
    /// The official training archive (ILSVRC2012_img_train.tar: one tar per class inside).
    #[arg(long)]
    pub tar: PathBuf,
    /// Output folder (gets <wnid>/ subfolders: an ImageFolder's train split).
    #[arg(long)]
    pub out: PathBuf,
}

/// A member name that is safe as one file name (no folders, no `..`).
fn plain_name(name: &str) -> Option<&str> {
    let base = name.rsplit('/').next()?;
    (!base.is_empty() && base != "." && base != ".." && !base.starts_with('.')).then_some(base)
}

/// Extracts one class's inner tar into `out/<class>` (via a temporary folder); returns the images.
fn extract_class(inner: impl Read, out: &Path, class: &str, outer: &Path) -> Result<usize, String> {
    let tmp = out.join(format!(".{class}.tmp-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let bad = |e: std::io::Error| format!("{}: {class}.tar is not a readable tar: {e}", outer.display());
    let mut n = 0;
    for entry in tar::Archive::new(inner).entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let Some(file) = plain_name(&name).filter(|_| entry.header().entry_type().is_file()) else {
            continue;
        };
        if !resnet_train::data::dataset::is_image_path(Path::new(file)) {
            continue;
        }
        let dst = tmp.join(file);
        let mut f = std::fs::File::create(&dst).map_err(|e| format!("{}: {e}", dst.display()))?;
        std::io::copy(&mut entry, &mut f)
            .map_err(|e| format!("{}: {class}.tar/{name}: {e}", outer.display()))?;
        n += 1;
    }
    let done = out.join(class);
    std::fs::rename(&tmp, &done).map_err(|e| format!("{}: {e}", done.display()))?;
    Ok(n)
}

pub fn run(a: TrainTarArgs) -> Result<u8, String> {
    let file = std::fs::File::open(&a.tar).map_err(|e| format!("{}: {e}", a.tar.display()))?;
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    // Leftovers of a killed extraction: their classes are extracted again.
    for e in std::fs::read_dir(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp-") {
            std::fs::remove_dir_all(e.path()).map_err(|err| format!("{}: {err}", e.path().display()))?;
        }
    }
    let bad =
        |e: std::io::Error| format!("{}: not a readable tar (the training archive): {e}", a.tar.display());
    let mut outer = tar::Archive::new(std::io::BufReader::new(file));
    let bar = crate::progress(1000, "classes");
    let (mut classes, mut skipped, mut images) = (0, 0, 0);
    for entry in outer.entries_with_seek().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let Some(class) = plain_name(&name).and_then(|n| n.strip_suffix(".tar")) else { continue };
        let class = class.to_string();
        if a.out.join(&class).is_dir() {
            skipped += 1;
        } else {
            images += extract_class(entry, &a.out, &class, &a.tar)?;
            classes += 1;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if classes + skipped == 0 {
        return Err(format!(
            "{}: holds no per-class .tar members: not ILSVRC2012_img_train.tar",
            a.tar.display()
        ));
    }
    eprintln!(
        "train      {classes} classes extracted ({images} images), {skipped} already there -> {}",
        a.out.display()
    );
    Ok(0)
}
