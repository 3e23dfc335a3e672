//! What a tar shard holds: its members grouped into samples by key (webdataset's grouping:
//! `KEY.jpg` + `KEY.cls`, the image and its class index as decimal text), each image located by
//! offset and length so that it can be read by position.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A member of a tar file (a shard, see `data::shards`): its name and where its bytes are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub offset: u64,
    pub len: u64,
    /// Why this sample cannot be read (no label, no image, a label that is not a class index, a
    /// shard cut off before it): reading it fails with this, and the loader counts it as a bad
    /// image. None for a good sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad: Option<Box<str>>,
}

impl Member {
    /// A sample that cannot be read, named `name`, for the reason `why`.
    pub fn bad(name: String, why: String) -> Self {
        Self { name, offset: 0, len: 0, bad: Some(why.into()) }
    }
}

/// Image members, in the order a sample's image is chosen (timm's `jpg;png;webp`, and `jpeg`).
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// One sample of a shard: its image member and its label (a bad sample: see `Member::bad`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSample {
    pub image: Member,
    pub label: u32,
}

impl ShardSample {
    /// This sample, or a bad one when its label is not one of `classes` classes.
    pub fn in_range(self, classes: usize) -> ShardSample {
        if self.image.bad.is_some() || (self.label as usize) < classes {
            return self;
        }
        let why = format!("label {} is out of range ({classes} classes)", self.label);
        ShardSample { image: Member::bad(self.image.name, why), label: 0 }
    }
}

/// A shard's samples, in their order in the file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardIndex {
    pub samples: Vec<ShardSample>,
    /// Why reading stopped before the end of the file (truncated or corrupt): the samples
    /// before are whole, those after are missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken: Option<String>,
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
    label: Option<std::result::Result<u32, String>>,
}

impl Pending {
    /// The sample these members make (None: no image and no label, e.g. a `__meta__` key).
    fn finish(self) -> Option<ShardSample> {
        let key = self.key;
        let bad = |why: String| Some(ShardSample { image: Member::bad(key.clone(), why), label: 0 });
        match (self.image, self.label) {
            (None, None) => None,
            (Some(image), Some(Ok(label))) => Some(ShardSample { image, label }),
            (_, Some(Err(why))) => bad(why),
            (None, Some(_)) => bad(format!(
                "sample {key} has a label but no image member (.{})",
                IMAGE_EXTENSIONS.join(", .")
            )),
            (Some(_), None) => bad(format!("sample {key} has no label (a {key}.cls member)")),
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
/// members with the same key are one sample). A sample that cannot be used is kept as a bad one
/// (so that later samples keep their places); a file that stops being a readable tar keeps the
/// samples before and says why (`ShardIndex::broken`). Fails only when the file cannot be opened.
pub fn index_shard(path: &Path) -> Result<ShardIndex> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut index = ShardIndex::default();
    let mut current: Option<Pending> = None;
    let broken = read_members(&mut archive, file_len, &mut |name, member| {
        let Some((key, _)) = key_and_extension(&name) else { return };
        if current.as_ref().is_none_or(|c| c.key != key) {
            index.samples.extend(current.take().and_then(Pending::finish));
            current = Some(Pending { key: key.to_string(), image: None, label: None });
        }
        let Some(cur) = current.as_mut() else { return };
        match member {
            Found::Label(label) => cur.label = Some(label),
            Found::Image(m) => {
                let better = cur.image.as_ref().is_none_or(|old| image_rank(&name) < image_rank(&old.name));
                if better {
                    cur.image = Some(m);
                }
            }
        }
    });
    match broken {
        Some(why) => {
            // The sample being read when the file broke is kept only if it is complete (its
            // other members may have been cut off).
            match current {
                Some(c) if c.image.is_some() && matches!(c.label, Some(Ok(_))) => {
                    index.samples.extend(c.finish());
                    index.broken = Some(why);
                }
                Some(c) => index.broken = Some(format!("{why} (in or after sample {})", c.key)),
                None => index.broken = Some(why),
            }
        }
        None => index.samples.extend(current.and_then(Pending::finish)),
    }
    Ok(index)
}

/// A member that makes up a sample.
enum Found {
    Label(std::result::Result<u32, String>),
    Image(Member),
}

/// Walks the archive's members, calling `each(name, found)` for labels and images;
/// returns why it stopped early (None: the whole file was read).
fn read_members<R: std::io::Read + std::io::Seek>(
    archive: &mut tar::Archive<R>,
    file_len: u64,
    each: &mut dyn FnMut(String, Found),
) -> Option<String> {
    let corrupt = |e: std::io::Error| format!("not a readable tar file: {e}");
    let entries = match archive.entries_with_seek() {
        Ok(e) => e,
        Err(e) => return Some(corrupt(e)),
    };
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => return Some(corrupt(e)),
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = match entry.path() {
            Ok(p) => p.to_string_lossy().into_owned(),
            Err(e) => return Some(corrupt(e)),
        };
        let Some((_, ext)) = key_and_extension(&name) else { continue };
        if ext == "cls" {
            let mut text = String::new();
            if let Err(e) = std::io::Read::read_to_string(&mut entry, &mut text) {
                return Some(format!("member {name}: {e}"));
            }
            let label = text
                .trim()
                .parse::<u32>()
                .map_err(|_| format!("member {name}: the label {:?} is not a class index", text.trim()));
            each(name, Found::Label(label));
        } else if image_rank(&name).is_some() {
            let (offset, len) = (entry.raw_file_position(), entry.size());
            if len > MAX_MEMBER_BYTES || offset.saturating_add(len) > file_len {
                return Some(format!(
                    "member {name}: {len} bytes at byte {offset} do not fit the shard's {file_len} (truncated or corrupt)"
                ));
            }
            each(name.clone(), Found::Image(Member { name, offset, len, bad: None }));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_webdatasets() {
        assert_eq!(key_and_extension("n01_1.JPEG"), Some(("n01_1", "jpeg".into())));
        assert_eq!(key_and_extension("dir.v2/a.b.cls"), Some(("dir.v2/a", "b.cls".into())));
        assert_eq!(key_and_extension("README"), None);
    }
}
