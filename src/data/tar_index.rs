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
}

/// Image members, in the order a sample's image is chosen (timm's `jpg;png;webp`, and `jpeg`).
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// One sample of a shard: its image member and its label.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSample {
    pub image: Member,
    pub label: u32,
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
