//! `imagenet-prep shards`: an ImageFolder split written as WebDataset shards (timm's `wds/`
//! convention: `KEY.jpg` + `KEY.cls` per sample, `_info.json` with the split's shard files and
//! sample counts), its samples shuffled across classes so that a shard is a random slice of the
//! split. The split's entry in `_info.json` is written first and each shard under a temporary
//! name, renamed when whole: a killed writer leaves no half shard that looks whole, and the same
//! command continues where it stopped (finished shards are kept).

use rayon::prelude::*;
use resnet_train::data::dataset::{ImageFolder, Sample};
use resnet_train::data::shards::{Info, SplitInfo, INFO_FILE};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct ShardsArgs {
    /// An ImageFolder split (class folders of images) to write as shards.
    #[arg(long)]
    pub src: PathBuf,
    /// The shard folder (created if missing; other splits' shards and entries are kept).
    #[arg(long)]
    pub out: PathBuf,
    /// The split's name, in `_info.json` and in the shard names (NAME-SPLIT-0000.tar).
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Images per shard (timm's ImageNet shards: about 1,250).
    #[arg(long, default_value_t = 1250, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub shard_size: u64,
    /// Seed of the order of the samples across the shards.
    #[arg(long, default_value_t = 0)]
    pub shuffle_seed: u64,
    /// Keep the ImageFolder's order (class after class) instead of shuffling.
    #[arg(long)]
    pub keep_order: bool,
    /// The shard names' first part (default: the --out folder's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Shards written at once (default: the cores).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub workers: Option<u64>,
}

/// One sample to write: its key, extension, source (a file, or a member of an archive) and label.
struct Planned {
    key: String,
    ext: String,
    src: Sample,
    label: u32,
}

/// The split's samples in shard order, each with a key unique in the split (the file's stem,
/// dots made underscores, `_N` added on a clash).
fn plan(data: &ImageFolder, a: &ShardsArgs) -> Vec<Planned> {
    let mut order: Vec<usize> = (0..data.len()).collect();
    if !a.keep_order {
        // Fisher-Yates, seeded: the same command writes the same shards.
        let mut rng = resnet_train::rng::SplitMix64::keyed(&[a.shuffle_seed, 0x5_4A2D]);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
    }
    let mut used = HashSet::new();
    order
        .into_iter()
        .map(|i| {
            let s = &data.samples[i];
            let image = s.image_name();
            let stem = image.file_stem().map(|n| n.to_string_lossy().replace('.', "_")).unwrap_or_default();
            let mut key = stem.clone();
            let mut n = 1;
            while !used.insert(key.clone()) {
                key = format!("{stem}_{n}");
                n += 1;
            }
            let ext = image.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
            // timm looks for .jpg (its default image keys are jpg, png, webp).
            let ext = if ext == "jpeg" { "jpg".to_string() } else { ext };
            Planned { key, ext, src: s.clone(), label: s.label }
        })
        .collect()
}

/// Writes one shard under a temporary name, then renames it: whole or absent.
fn write_shard(path: &Path, samples: &[Planned]) -> Result<(), String> {
    let tmp = path.with_extension(format!("tar.tmp-{}", std::process::id()));
    let file = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let mut append = |name: &str, bytes: &[u8]| -> Result<(), String> {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, bytes).map_err(|e| format!("{}: {name}: {e}", tmp.display()))
    };
    for s in samples {
        let bytes = s.src.read().map_err(|e| e.to_string())?;
        append(&format!("{}.{}", s.key, s.ext), &bytes)?;
        append(&format!("{}.cls", s.key), s.label.to_string().as_bytes())?;
    }
    let mut out = tar.into_inner().map_err(|e| format!("{}: {e}", tmp.display()))?;
    out.flush().map_err(|e| format!("{}: {e}", tmp.display()))?;
    out.get_ref().sync_all().map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The split's entry in `_info.json`, written before any shard; a folder whose entry for this
/// split differs (other images, size or order) is refused rather than mixed.
fn claim_split(a: &ShardsArgs, data: &ImageFolder, entry: SplitInfo) -> Result<(), String> {
    let info_path = a.out.join(INFO_FILE);
    let mut info = Info::read(&a.out).map_err(|e| e.to_string())?.unwrap_or_default();
    if info.name.is_empty() {
        info.name = a.name.clone().unwrap_or_else(|| folder_name(&a.out));
    }
    match &info.classes {
        Some(c) if *c != data.classes => {
            return Err(format!(
                "{}: its classes ({}) are not {}'s ({}): shards of one dataset share their labels",
                info_path.display(),
                c.len(),
                a.src.display(),
                data.classes.len()
            ))
        }
        _ => info.classes = Some(data.classes.clone()),
    }
    if let Some(old) = info.splits.get(&a.split) {
        if *old != entry {
            return Err(format!(
                "{}: the split {:?} was written with another image count, --shard-size, order or name; \
                 remove its shards and entry, or write to another --out",
                info_path.display(),
                a.split
            ));
        }
        return Ok(());
    }
    info.splits.insert(a.split.clone(), entry);
    let text = serde_json::to_string_pretty(&info).map_err(|e| e.to_string())?;
    resnet_train::fsutil::write_atomic(&info_path, text.as_bytes()).map_err(|e| e.to_string())
}

fn folder_name(p: &Path) -> String {
    p.canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "shards".into())
}

pub fn run(a: ShardsArgs) -> Result<u8, String> {
    let data = ImageFolder::open(&a.src).map_err(|e| e.to_string())?;
    write(&a, &data)
}

/// Writes `data` (read from `a.src`) as the shards `a` asks for.
pub fn write(a: &ShardsArgs, data: &ImageFolder) -> Result<u8, String> {
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let planned = plan(data, a);
    let chunks: Vec<&[Planned]> = planned.chunks(a.shard_size as usize).collect();
    let width = (chunks.len().saturating_sub(1)).to_string().len().max(4);
    let name = a.name.clone().unwrap_or_else(|| folder_name(&a.out));
    let files: Vec<String> =
        (0..chunks.len()).map(|i| format!("{name}-{}-{i:0width$}.tar", a.split)).collect();
    let entry = SplitInfo {
        name: a.split.clone(),
        num_samples: planned.len(),
        filenames: files.clone(),
        shard_lengths: chunks.iter().map(|c| c.len()).collect(),
        order: Some(if a.keep_order {
            "the ImageFolder's".into()
        } else {
            format!("shuffled, seed {}", a.shuffle_seed)
        }),
    };
    claim_split(a, data, entry)?;
    let todo: Vec<usize> = (0..chunks.len()).filter(|&i| !a.out.join(&files[i]).is_file()).collect();
    eprintln!(
        "shards     {}: {} images of {} classes in {} shards of {} ({} to write) -> {}",
        a.split,
        planned.len(),
        data.classes.len(),
        chunks.len(),
        a.shard_size,
        todo.len(),
        a.out.display()
    );
    let threads = a.workers.map_or(0, |w| w as usize);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| e.to_string())?;
    let bar = crate::progress(todo.len() as u64, "shards");
    pool.install(|| {
        todo.par_iter().try_for_each(|&i| {
            write_shard(&a.out.join(&files[i]), chunks[i])?;
            bar.inc(1);
            Ok::<(), String>(())
        })
    })?;
    bar.finish_and_clear();
    Ok(0)
}
