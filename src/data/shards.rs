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

use super::dataset::{ImageFolder, Member, Sample};
use crate::error::{Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The split description timm reads first.
pub const INFO_FILE: &str = "_info.json";

/// Image members, in the order a sample's image is chosen (timm's `jpg;png;webp`, and `jpeg`).
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

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

/// One sample of a shard: its image member and its label.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSample {
    pub image: Member,
    pub label: u32,
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

/// A member name's key and extension, as webdataset's `base_plus_ext`: the key is the path up to
/// the first dot of the file name, the extension the rest, lower-cased. None for a name without
/// one (not part of a sample).
pub fn key_and_extension(name: &str) -> Option<(&str, String)> {
    let file_start = name.rfind('/').map_or(0, |i| i + 1);
    let dot = file_start + name[file_start..].find('.')?;
    Some((&name[..dot], name[dot + 1..].to_lowercase()))
}

/// The members of one key seen so far.
struct Pending {
    key: String,
    image: Option<Member>,
    label: Option<u32>,
}

impl Pending {
    /// The sample these members make (None: no image and no label, e.g. a `__meta__` key).
    fn finish(self, shard: &Path) -> Result<Option<ShardSample>> {
        let key = self.key;
        match (self.image, self.label) {
            (None, None) => Ok(None),
            (Some(image), Some(label)) => Ok(Some(ShardSample { image, label })),
            (None, Some(_)) => Err(Error::file(
                shard,
                format!("sample {key} has a label but no image member (.{})", IMAGE_EXTENSIONS.join(", .")),
            )),
            (Some(_), None) => {
                Err(Error::file(shard, format!("sample {key} has no label (a {key}.cls member)")))
            }
        }
    }
}

/// The position of an image member's extension in `IMAGE_EXTENSIONS` (the preferred one first).
fn image_rank(name: &str) -> Option<usize> {
    key_and_extension(name).and_then(|(_, e)| IMAGE_EXTENSIONS.iter().position(|x| *x == e))
}

/// The largest image member read (a header claiming more is a corrupt shard, not an allocation).
const MAX_MEMBER_BYTES: u64 = 1 << 30;

/// The samples of one shard, in their order in the file (webdataset's grouping: consecutive
/// members with the same key are one sample).
pub fn index_shard(path: &Path) -> Result<Vec<ShardSample>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let corrupt = |e: std::io::Error| Error::file(path, format!("not a readable tar file: {e}"));
    let mut samples = Vec::new();
    let mut current: Option<Pending> = None;
    for entry in archive.entries_with_seek().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_err(corrupt)?.to_string_lossy().into_owned();
        let Some((key, ext)) = key_and_extension(&name) else { continue };
        if current.as_ref().is_none_or(|c| c.key != key) {
            if let Some(done) = current.take() {
                samples.extend(done.finish(path)?);
            }
            current = Some(Pending { key: key.to_string(), image: None, label: None });
        }
        let Some(cur) = current.as_mut() else { continue };
        if ext == "cls" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text)
                .map_err(|e| Error::file(path, format!("member {name}: {e}")))?;
            let label = text.trim().parse::<u32>().map_err(|_| {
                Error::file(path, format!("member {name}: the label {:?} is not a class index", text.trim()))
            })?;
            cur.label = Some(label);
        } else if image_rank(&name).is_some() {
            let better = cur.image.as_ref().is_none_or(|m| image_rank(&name) < image_rank(&m.name));
            let (offset, len) = (entry.raw_file_position(), entry.size());
            if len > MAX_MEMBER_BYTES || offset.saturating_add(len) > file_len {
                return Err(Error::file(
                    path,
                    format!("member {name}: {len} bytes at byte {offset} do not fit the shard's {file_len} (truncated or corrupt)"),
                ));
            }
            if better {
                cur.image = Some(Member { name, offset, len });
            }
        }
    }
    if let Some(done) = current {
        samples.extend(done.finish(path)?);
    }
    Ok(samples)
}

/// What the shard index cache keeps for one shard: enough to tell it changed.
#[derive(Serialize, Deserialize)]
struct CachedShard {
    path: PathBuf,
    size: u64,
    mtime_ns: u128,
    samples: Vec<ShardSample>,
}

const INDEX_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct ShardIndex {
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
fn index_shards(files: &[PathBuf], cache: Option<&Path>) -> Result<Vec<Vec<ShardSample>>> {
    let cached: BTreeMap<PathBuf, CachedShard> = cache
        .and_then(|c| std::fs::read(c).ok())
        .and_then(|b| serde_json::from_slice::<ShardIndex>(&b).ok())
        .filter(|i| i.version == INDEX_VERSION)
        .map(|i| i.shards.into_iter().map(|s| (s.path.clone(), s)).collect())
        .unwrap_or_default();
    let indexed: Vec<CachedShard> = files
        .par_iter()
        .map(|f| {
            let (size, mtime_ns) = stamp(f)?;
            match cached.get(f) {
                Some(c) if (c.size, c.mtime_ns) == (size, mtime_ns) => {
                    Ok(CachedShard { path: f.clone(), size, mtime_ns, samples: c.samples.clone() })
                }
                _ => Ok(CachedShard { path: f.clone(), size, mtime_ns, samples: index_shard(f)? }),
            }
        })
        .collect::<Result<_>>()?;
    let index = ShardIndex { version: INDEX_VERSION, shards: indexed };
    if let Some(c) = cache {
        // A failed cache write only costs the next start a rescan.
        let _ = crate::fsutil::write_atomic(c, &serde_json::to_vec(&index).unwrap_or_default());
    }
    Ok(index.shards.into_iter().map(|s| s.samples).collect())
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
    for ((path, want), samples) in files.iter().zip(&shards) {
        if let Some(n) = want.filter(|n| *n != samples.len()) {
            return Err(Error::file(
                path,
                format!("holds {} samples where {INFO_FILE} says {n}: the shard is truncated or the info is stale", samples.len()),
            ));
        }
        max_label = samples.iter().map(|s| s.label).fold(max_label, u32::max);
    }
    let classes = match info.as_ref().and_then(|i| i.classes.clone()) {
        Some(c) => c,
        None => (0..=max_label).map(|i| i.to_string()).collect(),
    };
    let mut samples = Vec::with_capacity(shards.iter().map(Vec::len).sum());
    for ((path, _), shard) in files.iter().zip(shards) {
        for s in shard {
            if s.label as usize >= classes.len() {
                return Err(Error::file(
                    path,
                    format!(
                        "{}: label {} is out of range ({} classes)",
                        s.image.name,
                        s.label,
                        classes.len()
                    ),
                ));
            }
            samples.push(Sample { path: path.clone(), label: s.label, member: Some(s.image) });
        }
    }
    if samples.is_empty() {
        return Err(Error::file(&root, format!("the split {split:?} holds no samples")));
    }
    Ok(ImageFolder { root, classes, samples })
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

    #[test]
    fn keys_are_webdatasets() {
        assert_eq!(key_and_extension("n01_1.JPEG"), Some(("n01_1", "jpeg".into())));
        assert_eq!(key_and_extension("dir.v2/a.b.cls"), Some(("dir.v2/a", "b.cls".into())));
        assert_eq!(key_and_extension("README"), None);
    }
}
