//! WebDataset shards as timm reads them (`--data` naming a shard folder): POSIX tar files whose
//! members are grouped into samples by key (`KEY.jpg` + `KEY.cls`: the image and its class index
//! as decimal text; other members are ignored), a split described by `_info.json` (timm's
//! `reader_wds.py` layout: `splits.<name>` with `filenames` and `shard_lengths`) or named by a
//! brace pattern (`imagenet1k-train-{0000..1023}.tar`).
//!
//! A local shard folder is indexed once (where each sample's image lies in its shard, and its
//! label; the index is cached like an ImageFolder's) and then read by random access: one open file
//! per shard and thread, no per-image open or stat. The samples are an `ImageFolder`'s, so the
//! sampler's order, the split over ranks and decode threads, and exact resume are the ones the
//! ImageFolder path has.

use super::dataset::{ImageFolder, Sample, ShardLayout};
use super::remote::Remote;
use super::shard_fetch::{CacheConfig, ShardFetcher};
pub use super::tar_index::IMAGE_EXTENSIONS;
use super::tar_index::{index_shard, Member, ShardIndex};
use crate::error::{Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The split description timm reads first.
pub const INFO_FILE: &str = "_info.json";

/// timm's `_info.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Info {
    #[serde(default)]
    pub name: String,
    pub splits: BTreeMap<String, SplitInfo>,
    /// Class names, index = label (this project's addition; timm ignores it). Without it the
    /// classes are named by their index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    /// The number of classes, where `classes` is absent (needed for a remote source, whose labels
    /// are not all read up front).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
}

/// One split of `_info.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SplitInfo {
    pub name: String,
    pub num_samples: usize,
    /// The shard files, relative to the info file's folder.
    pub filenames: Vec<String>,
    /// Samples per shard, in `filenames`' order.
    pub shard_lengths: Vec<usize>,
    /// How `imagenet-prep shards` ordered the samples (this project's addition), so that a
    /// rerun continues only the same split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
}

impl Info {
    /// Reads `dir/_info.json`; None when there is none.
    pub fn read(dir: &Path) -> Result<Option<Info>> {
        let path = dir.join(INFO_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let info: Info = serde_json::from_str(&text).map_err(|e| {
            Error::file(&path, format!("not a WebDataset info file (timm's _info.json layout): {e}"))
        })?;
        for (name, s) in &info.splits {
            if s.filenames.len() != s.shard_lengths.len() {
                return Err(Error::file(
                    &path,
                    format!(
                        "split {name}: {} filenames but {} shard_lengths",
                        s.filenames.len(),
                        s.shard_lengths.len()
                    ),
                ));
            }
        }
        Ok(Some(info))
    }
}

/// Whether `root` holds shards: an `_info.json`, or `.tar` files.
pub fn is_shard_folder(root: &Path) -> bool {
    root.join(INFO_FILE).is_file() || tar_files(root).is_ok_and(|t| !t.is_empty())
}

/// The `.tar` files directly in `dir`, sorted.
fn tar_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "tar"))
        .collect();
    files.sort();
    Ok(files)
}

/// Expands a brace pattern as webdataset's `braceexpand` does: `{0000..0003}` (zero-padded to
/// the first bound's width) and `{a,b}`, any number of groups.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>> {
    let bad = |why: &str| Error::Usage(format!("shard pattern {pattern:?}: {why}"));
    let Some(open) = pattern.find('{') else { return Ok(vec![pattern.to_string()]) };
    let close = pattern[open..].find('}').map(|c| open + c).ok_or_else(|| bad("a { without its }"))?;
    let (head, body, tail) = (&pattern[..open], &pattern[open + 1..close], &pattern[close + 1..]);
    let choices: Vec<String> = if let Some((a, b)) = body.split_once("..") {
        let (from, to): (u64, u64) = match (a.parse(), b.parse()) {
            (Ok(f), Ok(t)) if f <= t && t - f < 10_000_000 => (f, t),
            _ => return Err(bad(&format!("{{{body}}} is not a range a..b of numbers, a <= b"))),
        };
        let width = if a.starts_with('0') { a.len() } else { 0 };
        (from..=to).map(|i| format!("{i:0width$}")).collect()
    } else {
        body.split(',').map(str::to_string).collect()
    };
    // The order of braceexpand: the first group varies slowest.
    let rests = expand_braces(tail)?;
    Ok(choices.iter().flat_map(|c| rests.iter().map(move |rest| format!("{head}{c}{rest}"))).collect())
}

/// What the shard index cache keeps for one shard: enough to tell it changed.
#[derive(Serialize, Deserialize)]
struct CachedShard {
    path: PathBuf,
    size: u64,
    mtime_ns: u128,
    index: ShardIndex,
}

const INDEX_VERSION: u32 = 2;

#[derive(Serialize, Deserialize)]
struct IndexCache {
    version: u32,
    shards: Vec<CachedShard>,
}

fn stamp(path: &Path) -> Result<(u64, u128)> {
    let m = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let t = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok((m.len(), t))
}

/// Every shard's samples, from the cache where the shard is unchanged, else read (in parallel).
fn index_shards(files: &[PathBuf], cache: Option<&Path>) -> Result<Vec<ShardIndex>> {
    let cached: BTreeMap<PathBuf, CachedShard> = cache
        .and_then(|c| std::fs::read(c).ok())
        .and_then(|b| serde_json::from_slice::<IndexCache>(&b).ok())
        .filter(|i| i.version == INDEX_VERSION)
        .map(|i| i.shards.into_iter().map(|s| (s.path.clone(), s)).collect())
        .unwrap_or_default();
    let indexed: Vec<CachedShard> = files
        .par_iter()
        .map(|f| {
            let (size, mtime_ns) = stamp(f)?;
            match cached.get(f) {
                Some(c) if (c.size, c.mtime_ns) == (size, mtime_ns) => {
                    Ok(CachedShard { path: f.clone(), size, mtime_ns, index: c.index.clone() })
                }
                _ => Ok(CachedShard { path: f.clone(), size, mtime_ns, index: index_shard(f)? }),
            }
        })
        .collect::<Result<_>>()?;
    let index = IndexCache { version: INDEX_VERSION, shards: indexed };
    if let Some(c) = cache {
        // A failed cache write only costs the next start a rescan.
        let _ = crate::fsutil::write_atomic(c, &serde_json::to_vec(&index).unwrap_or_default());
    }
    Ok(index.shards.into_iter().map(|s| s.index).collect())
}

/// The shard files of split `split` under `root`: a brace pattern (`...-{0000..0099}.tar`, as
/// timm's `--train-split`), the split's `filenames` in `_info.json`, a folder `root/<split>` of
/// `.tar` files, or the `.tar` files of `root` whose name has `-<split>-` or `-<split>.` in it.
/// Returns them with their expected sample counts where the info file gives them.
pub fn split_files(root: &Path, split: &str, info: Option<&Info>) -> Result<Vec<(PathBuf, Option<usize>)>> {
    if split.contains(".tar") {
        let files: Vec<(PathBuf, Option<usize>)> =
            expand_braces(split)?.into_iter().map(|f| (root.join(f), None)).collect();
        if let Some((missing, _)) = files.iter().find(|(f, _)| !f.is_file()) {
            return Err(Error::file(missing, format!("a shard of the split {split:?} is missing")));
        }
        return Ok(files);
    }
    if let Some(s) = info.and_then(|i| i.splits.get(split)) {
        return Ok(s.filenames.iter().zip(&s.shard_lengths).map(|(f, n)| (root.join(f), Some(*n))).collect());
    }
    let folder = root.join(split);
    let files = if folder.is_dir() {
        tar_files(&folder)?
    } else {
        let named = |p: &PathBuf| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            n.contains(&format!("-{split}-")) || n.contains(&format!("-{split}."))
        };
        tar_files(root)?.into_iter().filter(named).collect()
    };
    Ok(files.into_iter().map(|f| (f, None)).collect())
}

/// Whether `root` has a split of this name.
pub fn has_split(root: &Path, split: &str) -> Result<bool> {
    let info = Info::read(root)?;
    Ok(!split_files(root, split, info.as_ref())?.is_empty())
}

/// Opens split `split` of the shard folder `root` as a dataset (index cache in `index_dir`).
pub fn open_split(root: &Path, split: &str, index_dir: Option<&Path>) -> Result<ImageFolder> {
    open_split_named(root, split, index_dir, None)
}

/// `open_split`, the classes named by `class_map` where `_info.json` names none.
pub fn open_split_named(
    root: &Path,
    split: &str,
    index_dir: Option<&Path>,
    class_map: Option<&[String]>,
) -> Result<ImageFolder> {
    let root = root.canonicalize().map_err(|e| Error::io(root, e))?;
    let info = Info::read(&root)?;
    let files = split_files(&root, split, info.as_ref())?;
    if files.is_empty() {
        return Err(Error::file(&root, format!("no shards of the split {split:?} (no {INFO_FILE} entry, no {split}/ folder of .tar files, no *-{split}-*.tar)")));
    }
    let paths: Vec<PathBuf> = files.iter().map(|(f, _)| f.clone()).collect();
    let cache = index_dir.map(|d| super::dataset::cache_file(d, &root.join(format!("{split}.shards"))));
    let shards = index_shards(&paths, cache.as_deref())?;
    let mut max_label = 0;
    for ((path, want), index) in files.iter().zip(&shards) {
        if let Some(n) = want.filter(|n| *n < index.samples.len()) {
            return Err(Error::file(
                path,
                format!(
                    "holds {} samples where {INFO_FILE} says {n}: the info is stale",
                    index.samples.len()
                ),
            ));
        }
        if let Some(why) = &index.broken {
            eprintln!("warning: {}: {why}; the samples after it are unreadable", path.display());
        }
        let good = index.samples.iter().filter(|s| s.image.bad.is_none());
        max_label = good.map(|s| s.label).fold(max_label, u32::max);
    }
    let classes = match (info.as_ref().and_then(|i| i.classes.clone()), class_map) {
        (Some(c), _) => c,
        (None, Some(m)) => m.to_vec(),
        (None, None) => {
            let n = info.as_ref().and_then(|i| i.num_classes).unwrap_or(max_label as usize + 1);
            (0..n).map(|i| i.to_string()).collect()
        }
    };
    let mut samples = Vec::with_capacity(shards.iter().map(|s| s.samples.len()).sum());
    let mut lengths = Vec::with_capacity(shards.len());
    for ((path, want), index) in files.iter().zip(shards) {
        let held = index.samples.len();
        let n = want.unwrap_or(held);
        lengths.push(n);
        for s in index.samples {
            let s = s.in_range(classes.len());
            samples.push(Sample { path: path.clone(), label: s.label, member: Some(s.image) });
        }
        // Samples `_info.json` counts that the shard does not hold (cut off): unreadable.
        let cut = index.broken.as_deref().map_or(String::new(), |why| format!(" ({why})"));
        for k in held..n {
            let why = format!("missing: the shard holds {held} samples where {INFO_FILE} says {n}{cut}");
            samples.push(Sample {
                path: path.clone(),
                label: 0,
                member: Some(Member::bad(format!("#{k}"), why)),
            });
        }
    }
    if samples.is_empty() {
        return Err(Error::file(&root, format!("the split {split:?} holds no samples")));
    }
    Ok(ImageFolder { root, classes, samples, shards: Some(ShardLayout::new(lengths, None)) })
}

/// A class map (timm's `class_map`): one class per line, named by the line's first word (so
/// ImageNet's `LOC_synset_mapping.txt`, `n01440764 tench, Tinca tinca`, gives the wnids); the
/// line number is the label.
pub fn read_class_map(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let names: Vec<String> =
        text.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect();
    if names.len() < 2 {
        return Err(Error::file(path, "a class map needs a class per line (at least 2)"));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = names.iter().find(|n| !seen.insert(*n)) {
        return Err(Error::file(path, format!("the class {dup:?} is named twice")));
    }
    Ok(names)
}

/// The split names of a remote source's `_info.json` (none without one).
pub fn remote_splits(url: &str) -> Result<Vec<String>> {
    let remote = Remote::open(url)?;
    let Some(bytes) = remote.get_small(INFO_FILE)? else { return Ok(Vec::new()) };
    let info: Info = serde_json::from_slice(&bytes)
        .map_err(|e| Error::file(remote.url_of(INFO_FILE), format!("not timm's layout: {e}")))?;
    Ok(info.splits.into_keys().collect())
}

/// Opens split `split` of the remote shard source `url` (`data::remote`): its `_info.json` gives
/// the shards, their lengths and the classes (`classes` or `num_classes`); the shards are fetched
/// as the epochs read them (`data::shard_fetch`).
pub fn open_remote_split(
    url: &str,
    split: &str,
    cache: &CacheConfig,
    class_map: Option<&[String]>,
) -> Result<ImageFolder> {
    let remote = Remote::open(url)?;
    let need = |why: &str| {
        Error::file(
            remote.url_of(INFO_FILE),
            format!("{why}: a remote source needs timm's {INFO_FILE} with the split's filenames and shard_lengths, and classes or num_classes (imagenet-prep shards writes one)"),
        )
    };
    let bytes = remote.get_small(INFO_FILE)?.ok_or_else(|| need("not found"))?;
    let info: Info = serde_json::from_slice(&bytes).map_err(|e| need(&format!("not timm's layout ({e})")))?;
    let s = info.splits.get(split).ok_or_else(|| need(&format!("no split {split:?}")))?;
    if s.filenames.len() != s.shard_lengths.len() || s.filenames.is_empty() {
        return Err(need(&format!(
            "the split {split:?} has {} filenames and {} shard_lengths",
            s.filenames.len(),
            s.shard_lengths.len()
        )));
    }
    let classes = match (&info.classes, class_map, info.num_classes) {
        (Some(c), _, _) => c.clone(),
        (None, Some(m), _) => m.to_vec(),
        (None, None, Some(n)) => (0..n).map(|i| i.to_string()).collect(),
        (None, None, None) => return Err(need("no classes (or give --class-map FILE)")),
    };
    let root = PathBuf::from(remote.url());
    let mut samples = Vec::with_capacity(s.shard_lengths.iter().sum());
    for (name, n) in s.filenames.iter().zip(&s.shard_lengths) {
        let path = PathBuf::from(remote.url_of(name));
        samples.extend(std::iter::repeat_n(Sample { path, label: 0, member: None }, *n));
    }
    if samples.is_empty() {
        return Err(need(&format!("the split {split:?} holds no samples")));
    }
    let fetcher =
        ShardFetcher::start(remote, s.filenames.clone(), s.shard_lengths.clone(), classes.len(), cache)?;
    Ok(ImageFolder {
        root,
        classes,
        samples,
        shards: Some(ShardLayout::new(s.shard_lengths.clone(), Some(fetcher))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_expand_as_braceexpand() {
        assert_eq!(expand_braces("a-{0000..0002}.tar").unwrap(), ["a-0000.tar", "a-0001.tar", "a-0002.tar"]);
        assert_eq!(expand_braces("{x,y}-{1..2}").unwrap(), ["x-1", "x-2", "y-1", "y-2"]);
        assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
        assert!(expand_braces("a-{3..1}.tar").is_err() && expand_braces("a-{1..2.tar").is_err());
    }
}
