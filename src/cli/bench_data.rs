//! `resnet-train bench-data`: decode + augment throughput of the input pipeline, reading files
//! from disk as training does.

use crate::data::dataset::ImageFolder;
use crate::data::loader::{Loader, LoaderConfig};
use crate::data::transform::Transform;
use crate::error::{Error, Result};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

#[derive(clap::Args, Debug)]
pub struct BenchDataArgs {
    /// An ImageFolder split (root/<class>/<image>), a flat folder of images, or shards (a folder,
    /// `s3://BUCKET/PREFIX` or `http(s)://HOST/PREFIX`; their train split).
    #[arg(long)]
    pub data: PathBuf,
    /// Shards: read as a stream through a shuffle buffer of this many samples, as training does
    /// (unset: by position, as an ImageFolder; a remote source: 8192).
    #[arg(long)]
    pub shuffle_buffer: Option<usize>,
    /// Remote shards: where they are kept while read (unset: a temporary folder, removed after).
    #[arg(long)]
    pub shard_cache: Option<PathBuf>,
    /// Remote shards downloaded at once, and how far ahead.
    #[arg(long, default_value_t = 4, value_parser = crate::train::config::range::int::<usize>(1, 256), allow_negative_numbers = true)]
    pub prefetch_shards: usize,
    #[arg(long, value_enum, default_value = "train")]
    pub mode: Mode,
    /// Decode threads.
    #[arg(long, default_value_t = 1, value_parser = crate::train::config::range::int::<usize>(1, 1024), allow_negative_numbers = true)]
    pub threads: usize,
    /// Batches to time (default: two passes over the data, as torch_data_bench.py's default).
    #[arg(long, value_parser = crate::train::config::range::int::<usize>(1, 1_000_000), allow_negative_numbers = true)]
    pub batches: Option<usize>,
    #[arg(long, default_value_t = 64, value_parser = crate::train::config::range::int::<usize>(1, 65536), allow_negative_numbers = true)]
    pub batch_size: usize,
    /// Output size (train crop / eval crop).
    #[arg(long, default_value_t = 224, value_parser = crate::train::config::range::int::<usize>(8, crate::data::transform::MAX_SIZE as u64), allow_negative_numbers = true)]
    pub size: usize,
    /// Augmentation policy after the crop and flip (train mode; the `aa` config key's values,
    /// e.g. randaugment, trivialaugment, autoaugment, rand-m9-mstd0.5-inc1).
    #[arg(long)]
    pub aa: Option<String>,
    /// ColorJitter strength(s) (train mode; e.g. 0.4 as torch_data_bench.py --policy colorjitter).
    #[arg(long, value_delimiter = ',')]
    pub color_jitter: Option<Vec<f64>>,
    /// timm's `color_jitter_prob`, `grayscale_prob`, `gaussian_blur_prob` (train mode).
    #[arg(long, value_parser = crate::train::config::range::float(0.0, 1.0, crate::train::config::range::Ends::Closed), allow_negative_numbers = true)]
    pub color_jitter_prob: Option<f64>,
    #[arg(long, default_value_t = 0.0, value_parser = crate::train::config::range::float(0.0, 1.0, crate::train::config::range::Ends::Closed), allow_negative_numbers = true)]
    pub grayscale_prob: f64,
    #[arg(long, default_value_t = 0.0, value_parser = crate::train::config::range::float(0.0, 1.0, crate::train::config::range::Ends::Closed), allow_negative_numbers = true)]
    pub gaussian_blur_prob: f64,
    /// The crop's resize filter: bilinear, bicubic, or random (train mode: one per image, and
    /// timm's ops draw theirs, as timm's `train_interpolation = random`).
    #[arg(long, value_enum, default_value = "bilinear")]
    pub interpolation: crate::data::transform::TrainFilter,
    /// Eval mode: resize to floor(size / crop_pct) before the center crop.
    #[arg(long, default_value_t = 0.875, value_parser = crate::train::config::range::float(0.1, 1.0, crate::train::config::range::Ends::Closed), allow_negative_numbers = true)]
    pub crop_pct: f64,
    /// Print one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Only time scanning DIR as an ImageFolder: without and with the index cache.
    #[arg(long)]
    pub scan_only: bool,
}

/// Peak resident set size of this process in MiB (Linux VmHWM).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub fn run(a: BenchDataArgs) -> Result<()> {
    if a.threads == 0 {
        return Err(Error::Usage("--threads must be at least 1".into()));
    }
    if a.scan_only {
        return scan(&a);
    }
    let started = std::time::Instant::now();
    let temp_cache = std::env::temp_dir().join(format!("resnet-train-bench-shards-{}", std::process::id()));
    let remote = crate::data::remote::is_url(&a.data);
    let dataset = Arc::new(if remote {
        let cache = crate::data::shard_fetch::CacheConfig {
            dir: a.shard_cache.clone().unwrap_or_else(|| temp_cache.clone()),
            keep_bytes: 0,
            prefetch: a.prefetch_shards,
        };
        crate::data::shards::open_remote_split(&a.data.to_string_lossy(), "train", &cache, None)?
    } else if crate::data::shards::is_shard_folder(&a.data) {
        crate::data::shards::open_split(
            &a.data,
            "train",
            crate::data::dataset::default_index_dir().as_deref(),
        )?
    } else {
        ImageFolder::open_any(&a.data)?
    });
    let open_s = started.elapsed().as_secs_f64();
    if !remote {
        for s in &dataset.samples {
            let _ = s.read(); // warm the page cache, untimed (as the PyTorch baseline)
        }
    }
    let result = bench(&a, dataset, open_s);
    let _ = std::fs::remove_dir_all(&temp_cache);
    result
}

/// Times the loader on `dataset` (opened in `open_s` seconds).
fn bench(a: &BenchDataArgs, dataset: Arc<ImageFolder>, open_s: f64) -> Result<()> {
    let max = crate::data::transform::MAX_SIZE;
    if !(8..=max).contains(&a.size) || a.batch_size == 0 || !(0.1..=1.0).contains(&a.crop_pct) {
        return Err(crate::error::Error::Usage(format!(
            "--size must be in 8..={max}, --batch-size at least 1 and --crop-pct in [0.1, 1], got {}, {} and {}",
            a.size, a.batch_size, a.crop_pct
        )));
    }
    let transform = match (a.mode, a.interpolation.fixed()) {
        (Mode::Train, _) => Transform::train(a.size).with_train_filter(a.interpolation),
        (Mode::Eval, Some(filter)) => Transform::eval(a.size, a.crop_pct).with_filter(filter),
        (Mode::Eval, None) => {
            return Err(Error::Usage("--interpolation random applies to --mode train".into()));
        }
    };
    let mut cfg = LoaderConfig::new(a.batch_size, transform);
    let policy = crate::data::augment::Policy::parse(a.aa.as_deref().unwrap_or(""))?;
    let jitter = crate::data::augment::parse_jitter(a.color_jitter.as_deref().unwrap_or(&[]))?;
    let augment = crate::data::augment::Augment::new(policy, jitter, a.size)
        .with_probabilities(a.color_jitter_prob, a.grayscale_prob, a.gaussian_blur_prob)
        .with_timm_filter(a.interpolation.fixed());
    if !augment.is_identity() {
        if a.mode != Mode::Train {
            return Err(crate::error::Error::Usage(
                "--aa, --color-jitter, --grayscale-prob and --gaussian-blur-prob apply to --mode train"
                    .into(),
            ));
        }
        cfg.augment = Some(Arc::new(augment));
    }
    let mut policy_name = match (&a.aa, &a.color_jitter) {
        (Some(p), _) => p.clone(),
        (None, Some(j)) => format!("colorjitter{j:?}"),
        _ => "none".to_string(),
    };
    for (name, p) in [
        ("jitter_p", a.color_jitter_prob.unwrap_or(0.0)),
        ("grayscale_p", a.grayscale_prob),
        ("blur_p", a.gaussian_blur_prob),
    ] {
        if p > 0.0 {
            policy_name += &format!("+{name}{p}");
        }
    }
    cfg.threads = a.threads;
    cfg.drop_last_batch = false;
    let remote = dataset.fetcher().is_some();
    cfg.shuffle_buffer = a.shuffle_buffer.or(remote.then_some(8192));
    let loader = Loader::new(dataset.clone(), cfg)?;
    let per_epoch = loader.batches_per_epoch();
    let want = a.batches.unwrap_or(2 * per_epoch).max(1);
    // One untimed batch: thread start-up and first allocations (and, from a remote source, the
    // first shards: the time to the first batch).
    let started = std::time::Instant::now();
    let mut first = loader.epoch(u64::MAX, 0);
    first.next().transpose()?;
    // The split opened (its index read or its _info.json fetched) and its first batch made.
    let first_batch_s = open_s + started.elapsed().as_secs_f64();
    drop(first);
    let t0 = std::time::Instant::now();
    let mut images = 0usize;
    let mut done = 0usize;
    let mut epoch = 0u64;
    while done < want {
        for batch in loader.epoch(epoch, 0).take(want - done) {
            images += batch?.images.size()[0] as usize;
            done += 1;
        }
        epoch += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    let rate = images as f64 / secs;
    let mode = if a.mode == Mode::Train { "train" } else { "eval" };
    let rss = peak_rss_mb();
    let stats = dataset.fetcher().map(|f| &f.stats);
    let fetched_gb = stats.map_or(0.0, |s| s.bytes.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e9);
    let wait_s = stats.map_or(0.0, |s| s.wait_ns.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e9);
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "impl": "resnet-train", "mode": mode, "policy": policy_name,
                "interpolation": a.interpolation, "size": a.size, "threads": a.threads,
                "batch_size": a.batch_size, "images": images, "seconds": (secs * 1000.0).round() / 1000.0,
                "img_per_s": (rate * 10.0).round() / 10.0,
                "img_per_s_per_thread": (rate / a.threads as f64 * 10.0).round() / 10.0,
                "peak_rss_mb": rss.round(), "bad_files": loader.bad.count(),
                "first_batch_s": (first_batch_s * 1000.0).round() / 1000.0,
                "fetched_gb": (fetched_gb * 1000.0).round() / 1000.0,
                "fetch_wait_s": (wait_s * 1000.0).round() / 1000.0,
                "device_name": crate::runtime::describe_device(tch::Device::Cpu),
            })
        );
    } else {
        println!(
            "{mode} {policy_name} {:?} {}px: {images} images in {secs:.2} s = {rate:.1} img/s ({:.1} per thread, {} threads), peak RSS {rss:.0} MiB, {} bad files, first batch after {first_batch_s:.2} s",
            a.interpolation,
            a.size,
            rate / a.threads as f64,
            a.threads,
            loader.bad.count()
        );
        if stats.is_some() {
            println!("fetched {fetched_gb:.3} GB; decode threads waited {wait_s:.2} s for shards in all");
        }
    }
    Ok(())
}

/// Times an ImageFolder scan with no index cache (a fresh temporary cache folder), then again
/// with the index that scan wrote.
fn scan(a: &BenchDataArgs) -> Result<()> {
    let cache = std::env::temp_dir().join(format!("resnet-train-scan-{}", std::process::id()));
    let t0 = std::time::Instant::now();
    let cold = ImageFolder::open_with_index_dir(&a.data, Some(&cache))?;
    let scan_s = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let warm = ImageFolder::open_with_index_dir(&a.data, Some(&cache))?;
    let cached_s = t1.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&cache);
    let out = serde_json::json!({
        "files": cold.len(), "classes": cold.classes.len(), "scan_s": (scan_s * 1000.0).round() / 1000.0,
        "cached_s": (cached_s * 1000.0).round() / 1000.0, "same_index": warm.len() == cold.len(),
        "workers": rayon::current_num_threads(),
    });
    println!("{out}");
    Ok(())
}
