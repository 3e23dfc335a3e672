//! `imagenet-prep train --tar ILSVRC2012_img_train.tar --out DIR`: the official training archive
//! (a tar of one tar per class, `n01440764.tar` ...) extracted to `DIR/<wnid>/<file>`, streamed:
//! the archive is read once, front to back, and no class is held whole in memory. Each class is
//! written to a hidden temporary folder and renamed when whole, so a killed extraction leaves no
//! half class that looks whole, and the same command continues it (finished classes are skipped).
//!
//! With `--shards DIR` nothing is extracted: the archive is indexed (where each image lies in it,
//! found by seeking from header to header) and the images are copied from there straight into
//! shuffled WebDataset shards, as `imagenet-prep shards` writes them from a folder.

use resnet_train::data::dataset::{ImageFolder, Member, Sample};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct TrainTarArgs {
    /// The official training archive (ILSVRC2012_img_train.tar: one tar per class inside).
    #[arg(long)]
    pub tar: PathBuf,
    /// Output folder (gets <wnid>/ subfolders: an ImageFolder's train split).
    #[arg(long, required_unless_present = "shards", conflicts_with = "shards")]
    pub out: Option<PathBuf>,
    /// Write the images as WebDataset shards into this folder instead (the `train` split; see
    /// `imagenet-prep shards` for the layout), without extracting them.
    #[arg(long)]
    pub shards: Option<PathBuf>,
    /// With --shards: images per shard.
    #[arg(long, default_value_t = 1250, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub shard_size: u64,
    /// With --shards: the seed of the order of the samples across the shards.
    #[arg(long, default_value_t = 0)]
    pub shuffle_seed: u64,
    /// With --shards: shards written at once (default: the cores).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub workers: Option<u64>,
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

/// A stretch of a file (an inner tar of the archive), readable and seekable on its own.
struct Window<'a> {
    file: &'a std::fs::File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        let got = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
        };
        if pos < 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start"));
        }
        self.pos = pos as u64;
        Ok(self.pos)
    }
}

/// The archive as a dataset: each image a member of it (where its bytes lie in the archive), its
/// label its class's place among the sorted class names.
fn index_archive(tar: &Path) -> Result<ImageFolder, String> {
    let file = std::fs::File::open(tar).map_err(|e| format!("{}: {e}", tar.display()))?;
    let bad =
        |e: std::io::Error| format!("{}: not a readable tar (the training archive): {e}", tar.display());
    let reader = Window { file: &file, start: 0, len: file.metadata().map_err(bad)?.len(), pos: 0 };
    let mut outer = tar::Archive::new(reader);
    let mut by_class: Vec<(String, Vec<Member>)> = Vec::new();
    for entry in outer.entries_with_seek().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let Some(class) = plain_name(&name).and_then(|n| n.strip_suffix(".tar")) else { continue };
        let start = entry.raw_file_position();
        let inner_bad =
            |e: std::io::Error| format!("{}: {class}.tar is not a readable tar: {e}", tar.display());
        let window = Window { file: &file, start, len: entry.size(), pos: 0 };
        let mut inner = tar::Archive::new(window);
        let mut members = Vec::new();
        for e in inner.entries_with_seek().map_err(inner_bad)? {
            let e = e.map_err(inner_bad)?;
            let n = e.path().map_err(inner_bad)?.to_string_lossy().into_owned();
            let Some(file_name) = plain_name(&n).filter(|_| e.header().entry_type().is_file()) else {
                continue;
            };
            if resnet_train::data::dataset::is_image_path(Path::new(file_name)) {
                let (offset, len) = (start + e.raw_file_position(), e.size());
                members.push(Member { name: file_name.to_string(), offset, len, bad: None });
            }
        }
        by_class.push((class.to_string(), members));
    }
    if by_class.is_empty() {
        return Err(format!(
            "{}: holds no per-class .tar members: not ILSVRC2012_img_train.tar",
            tar.display()
        ));
    }
    by_class.sort_by(|a, b| a.0.cmp(&b.0));
    let classes: Vec<String> = by_class.iter().map(|(c, _)| c.clone()).collect();
    let samples = by_class
        .into_iter()
        .enumerate()
        .flat_map(|(label, (_, members))| {
            members.into_iter().map(move |m| Sample {
                path: tar.to_path_buf(),
                label: label as u32,
                member: Some(m),
            })
        })
        .collect();
    Ok(ImageFolder { root: tar.to_path_buf(), classes, samples, shards: None })
}

pub fn run(a: TrainTarArgs) -> Result<u8, String> {
    if let Some(out) = &a.shards {
        let data = index_archive(&a.tar)?;
        let args = crate::shards::ShardsArgs {
            src: a.tar.clone(),
            out: out.clone(),
            split: "train".into(),
            shard_size: a.shard_size,
            shuffle_seed: a.shuffle_seed,
            keep_order: false,
            name: None,
            workers: a.workers,
        };
        return crate::shards::write(&args, &data);
    }
    let Some(out) = a.out.clone() else { return Err("--out DIR or --shards DIR".into()) };
    extract(&a.tar, &out)
}

/// Extracts the archive into `out/<wnid>/`.
fn extract(tar: &Path, out: &Path) -> Result<u8, String> {
    let file = std::fs::File::open(tar).map_err(|e| format!("{}: {e}", tar.display()))?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    // Leftovers of a killed extraction: their classes are extracted again.
    for e in std::fs::read_dir(out).map_err(|e| format!("{}: {e}", out.display()))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp-") {
            std::fs::remove_dir_all(e.path()).map_err(|err| format!("{}: {err}", e.path().display()))?;
        }
    }
    let bad =
        |e: std::io::Error| format!("{}: not a readable tar (the training archive): {e}", tar.display());
    let mut outer = tar::Archive::new(std::io::BufReader::new(file));
    let bar = crate::progress(1000, "classes");
    let (mut classes, mut skipped, mut images) = (0, 0, 0);
    for entry in outer.entries_with_seek().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let Some(class) = plain_name(&name).and_then(|n| n.strip_suffix(".tar")) else { continue };
        let class = class.to_string();
        if out.join(&class).is_dir() {
            skipped += 1;
        } else {
            images += extract_class(entry, out, &class, tar)?;
            classes += 1;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if classes + skipped == 0 {
        return Err(format!(
            "{}: holds no per-class .tar members: not ILSVRC2012_img_train.tar",
            tar.display()
        ));
    }
    eprintln!(
        "train      {classes} classes extracted ({images} images), {skipped} already there -> {}",
        out.display()
    );
    Ok(0)
}
