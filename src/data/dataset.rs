//! ImageFolder datasets (`root/<class>/**/<file>`, class index = position in the sorted class
//! folder names, as torchvision's `ImageFolder`), and flat folders of images.
//!
//! Scanning walks class folders in parallel and caches the index under
//! `~/.cache/resnet-train/index/` (the dataset may be read-only). The cache is keyed by the root
//! path and invalidated when any folder's modification time changes, which adding, removing or
//! renaming a file does.

pub use super::tar_index::Member;
use crate::error::{Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// File extensions taken as images (any case). The format itself is sniffed from the bytes.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

pub fn is_image_path(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

#[derive(Clone, Debug)]
pub struct Sample {
    /// The image file, or the shard that holds it.
    pub path: PathBuf,
    pub label: u32,
    /// Where in the shard `path` the image is (None: `path` is the image).
    pub member: Option<Member>,
}

impl Sample {
    /// The image's encoded bytes.
    pub fn read(&self) -> Result<Vec<u8>> {
        match &self.member {
            None => std::fs::read(&self.path).map_err(|e| Error::io(&self.path, e)),
            Some(Member { bad: Some(why), .. }) => {
                Err(Error::file(self.name().into_owned(), why.to_string()))
            }
            Some(m) => super::shard_reader::read_member(&self.path, m.offset, m.len).map_err(|e| {
                Error::file(self.name().into_owned(), format!("cannot read the shard member: {e}"))
            }),
        }
    }

    /// The image's own file name: its file, or its member's name in the shard (what ImageNet's
    /// validation images are known by).
    pub fn image_name(&self) -> PathBuf {
        self.member.as_ref().map_or_else(|| self.path.clone(), |m| PathBuf::from(&m.name))
    }

    /// The image as messages name it: its file (borrowed: no cost per image), or
    /// `shard.tar:member`.
    pub fn name(&self) -> std::borrow::Cow<'_, Path> {
        match &self.member {
            None => std::borrow::Cow::Borrowed(&self.path),
            Some(m) => std::borrow::Cow::Owned(PathBuf::from(format!("{}:{}", self.path.display(), m.name))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ImageFolder {
    pub root: PathBuf,
    /// Class folder names (e.g. wnids), index = label.
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
    /// For a split of WebDataset shards: how its samples lie in the shards (the order the loader
    /// streams them in), and for a remote one where they come from.
    pub shards: Option<ShardLayout>,
}

/// How a shard dataset's samples lie in its shards (sample i of the split is sample
/// `i - starts[s]` of shard s), and for a remote one its fetcher.
#[derive(Clone, Debug)]
pub struct ShardLayout {
    pub lengths: Vec<usize>,
    starts: Vec<usize>,
    pub fetcher: Option<std::sync::Arc<super::shard_fetch::ShardFetcher>>,
}

impl ShardLayout {
    pub fn new(
        lengths: Vec<usize>,
        fetcher: Option<std::sync::Arc<super::shard_fetch::ShardFetcher>>,
    ) -> Self {
        let starts = lengths
            .iter()
            .scan(0, |acc, n| {
                let s = *acc;
                *acc += n;
                Some(s)
            })
            .collect();
        Self { lengths, starts, fetcher }
    }

    /// (shard, sample within it) of split sample `i`.
    pub fn locate(&self, i: usize) -> (usize, usize) {
        let s = self.starts.partition_point(|&start| start <= i) - 1;
        (s, i - self.starts[s])
    }
}

/// What the cache stores: files relative to their class folder, and folder mtimes.
#[derive(Serialize, Deserialize)]
struct Index {
    version: u32,
    root: PathBuf,
    dirs: Vec<(PathBuf, u128)>,
    classes: Vec<String>,
    files: Vec<Vec<String>>,
}

const INDEX_VERSION: u32 = 2; // 2: hidden folders and looping/escaping symlinks skipped

fn mtime_ns(p: &Path) -> Result<u128> {
    let m = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
    Ok(m.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos()))
}

/// Image files (relative paths), the folders visited with their mtimes, and the folders skipped
/// (hidden ones, and directory symlinks that loop or leave the class folder), with why.
type Walked = (Vec<String>, Vec<(PathBuf, u128)>, Vec<String>);

/// Image files under `dir` (recursively, following torchvision's sorted os.walk order), relative to
/// `dir`. Hidden folders (`.ipynb_checkpoints`) are skipped; a directory symlink is followed once,
/// and only when its target stays inside `class_root` and is not a folder on the current path,
/// so no file is counted twice and no class's images are labelled as another's.
fn walk(dir: &Path, class_root: &Path, ancestors: &mut Vec<PathBuf>) -> Result<Walked> {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let mut dirs = vec![(dir.to_path_buf(), mtime_ns(dir)?)];
    let mut entries: Vec<(String, bool)> = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let is_link = e.file_type().map(|t| t.is_symlink()).unwrap_or(false);
        let is_dir = path.is_dir();
        if is_dir && name.starts_with('.') {
            skipped.push(format!("{} (hidden folder)", path.display()));
            continue;
        }
        if is_dir && is_link {
            let target = path.canonicalize().map_err(|err| Error::io(&path, err))?;
            if ancestors.contains(&target) || !target.starts_with(class_root) {
                skipped.push(format!(
                    "{} -> {} (a symlink that loops or leaves its class folder)",
                    path.display(),
                    target.display()
                ));
                continue;
            }
        }
        entries.push((name, is_dir));
    }
    entries.sort();
    // os.walk yields this folder's files first, then recurses into subfolders in sorted order.
    for (name, is_dir) in &entries {
        if !is_dir && is_image_path(Path::new(name)) {
            files.push(name.clone());
        }
    }
    for (name, is_dir) in &entries {
        if *is_dir {
            let sub = dir.join(name);
            ancestors.push(sub.canonicalize().map_err(|e| Error::io(&sub, e))?);
            let (sub_files, sub_dirs, sub_skipped) = walk(&sub, class_root, ancestors)?;
            ancestors.pop();
            files.extend(sub_files.into_iter().map(|f| format!("{name}/{f}")));
            dirs.extend(sub_dirs);
            skipped.extend(sub_skipped);
        }
    }
    Ok((files, dirs, skipped))
}

/// `walk` from a class folder (or any root).
fn walk_root(dir: &Path) -> Result<Walked> {
    let canonical = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    walk(dir, &canonical, &mut vec![canonical.clone()])
}

/// `$RESNET_TRAIN_CACHE/index`, else `~/.cache/resnet-train/index`.
pub fn default_index_dir() -> Option<PathBuf> {
    Some(crate::runtime::cache_dir()?.join("index"))
}

pub(crate) fn cache_file(index_dir: &Path, root: &Path) -> PathBuf {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in root.as_os_str().as_encoded_bytes() {
        h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
    }
    index_dir.join(format!("{h:016x}.json"))
}

impl ImageFolder {
    /// Opens `root` as an ImageFolder, using the cached index when it is still valid.
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_with_index_dir(root, default_index_dir().as_deref())
    }

    /// `open` with the index cache in `index_dir` (None: no cache).
    pub fn open_with_index_dir(root: &Path, index_dir: Option<&Path>) -> Result<Self> {
        let root = root.canonicalize().map_err(|e| Error::io(root, e))?;
        let cache = index_dir.map(|d| cache_file(d, &root));
        if let Some(index) = cache.as_deref().and_then(|c| Self::read_cache(c, &root)) {
            return Ok(Self::from_index(index));
        }
        let index = Self::scan(&root)?;
        if let Some(c) = cache {
            // A failed cache write only costs the next start a rescan.
            let _ = crate::fsutil::write_atomic(&c, &serde_json::to_vec(&index).unwrap_or_default());
        }
        Ok(Self::from_index(index))
    }

    fn read_cache(path: &Path, root: &Path) -> Option<Index> {
        let index: Index = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        let fresh = index.version == INDEX_VERSION
            && index.root == root
            && index.dirs.par_iter().all(|(d, t)| mtime_ns(d).ok() == Some(*t));
        fresh.then_some(index)
    }

    fn scan(root: &Path) -> Result<Index> {
        let (mut classes, hidden): (Vec<String>, Vec<String>) = std::fs::read_dir(root)
            .map_err(|e| Error::io(root, e))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .partition(|n| !n.starts_with('.'));
        classes.sort();
        let mut skipped: Vec<String> = hidden
            .iter()
            .map(|h| format!("{} (hidden folder, not a class)", root.join(h).display()))
            .collect();
        if classes.is_empty() {
            return Err(Error::file(
                root,
                "no class folders: expected an ImageFolder layout root/<class>/<image>",
            ));
        }
        let walked: Vec<Walked> =
            classes.par_iter().map(|c| walk_root(&root.join(c))).collect::<Result<_>>()?;
        let mut dirs = vec![(root.to_path_buf(), mtime_ns(root)?)];
        let mut files = Vec::with_capacity(classes.len());
        for (f, d, s) in walked {
            files.push(f);
            dirs.extend(d);
            skipped.extend(s);
        }
        if !skipped.is_empty() {
            eprintln!("note: {}: skipped {} folder(s):", root.display(), skipped.len());
            for s in skipped.iter().take(10) {
                eprintln!("  {s}");
            }
        }
        if files.iter().all(|f| f.is_empty()) {
            return Err(Error::file(root, "class folders hold no .jpg/.jpeg/.png files"));
        }
        Ok(Index { version: INDEX_VERSION, root: root.to_path_buf(), dirs, classes, files })
    }

    fn from_index(index: Index) -> Self {
        let mut samples = Vec::with_capacity(index.files.iter().map(Vec::len).sum());
        for (label, (class, files)) in index.classes.iter().zip(&index.files).enumerate() {
            let dir = index.root.join(class);
            samples.extend(files.iter().map(|f| Sample {
                path: dir.join(f),
                label: label as u32,
                member: None,
            }));
        }
        Self { root: index.root, classes: index.classes, samples, shards: None }
    }

    /// A flat folder of images (no class folders); every label is 0.
    pub fn flat(root: &Path) -> Result<Self> {
        let (files, _, _) = walk_root(root)?;
        if files.is_empty() {
            return Err(Error::file(root, "no .jpg/.jpeg/.png files"));
        }
        let samples =
            files.into_iter().map(|f| Sample { path: root.join(f), label: 0, member: None }).collect();
        Ok(Self { root: root.to_path_buf(), classes: vec![String::new()], samples, shards: None })
    }

    /// An ImageFolder when `root` has class folders with images, else a flat folder of images.
    pub fn open_any(root: &Path) -> Result<Self> {
        let has_dirs = std::fs::read_dir(root)
            .map_err(|e| Error::io(root, e))?
            .filter_map(|e| e.ok())
            .any(|e| e.path().is_dir());
        if has_dirs {
            Self::open(root)
        } else {
            Self::flat(root)
        }
    }

    /// The dataset without the class folders `drop` names: the other classes keep their order
    /// and are relabelled 0.. (e.g. a val folder's stray class that the model does not have).
    pub fn without_classes(&self, drop: &[String]) -> ImageFolder {
        let mut label_of = vec![None; self.classes.len()];
        let mut classes = Vec::new();
        for (i, c) in self.classes.iter().enumerate() {
            if !drop.contains(c) {
                label_of[i] = Some(classes.len() as u32);
                classes.push(c.clone());
            }
        }
        let samples = self
            .samples
            .iter()
            .filter_map(|s| Some(Sample { label: label_of[s.label as usize]?, ..s.clone() }))
            .collect();
        // (The samples no longer fill their shards: they are read by position, as files are.)
        ImageFolder { root: self.root.clone(), classes, samples, shards: None }
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// The fetcher of a remote shard split.
    pub fn fetcher(&self) -> Option<&std::sync::Arc<super::shard_fetch::ShardFetcher>> {
        self.shards.as_ref().and_then(|s| s.fetcher.as_ref())
    }

    /// Sample `i`'s encoded image and label.
    pub fn read_sample(&self, i: usize) -> Result<(Vec<u8>, u32)> {
        match (&self.shards, self.fetcher()) {
            (Some(layout), Some(f)) => {
                let (shard, k) = layout.locate(i);
                f.read(shard, k).map(|(bytes, label, _)| (bytes, label))
            }
            _ => {
                let s = &self.samples[i];
                s.read().map(|bytes| (bytes, s.label))
            }
        }
    }

    /// Sample `i` as messages name it: its file, `shard.tar:member`, or for a remote shard
    /// (whose members are known once fetched) `URL#k`, its k-th sample.
    pub fn sample_name(&self, i: usize) -> std::borrow::Cow<'_, Path> {
        match (&self.shards, self.fetcher()) {
            (Some(layout), Some(_)) => {
                let k = layout.locate(i).1;
                std::borrow::Cow::Owned(PathBuf::from(format!("{}#{k}", self.samples[i].path.display())))
            }
            _ => self.samples[i].name(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}
