//! The trainer's set-up, step by step (`Trainer::new` calls them in this order): the process's
//! runtime (shared with `bench`), the settings a resume may change, the data, the run folder and
//! how the run starts. Each step states the ordering rule it depends on.

use super::config::{self, TrainConfig};
use crate::data::dataset::ImageFolder;
use crate::data::loader::{Loader, LoaderConfig};
use crate::data::{synthetic, transform::Transform};
use crate::dist::{Dist, DistBackend, DistEnv};
use crate::error::{Error, Result};
use crate::train::run::run_dir::{self, RunLock};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tch::Device;

/// A training process's runtime, set up before any model: the device (a data-parallel rank's
/// `cuda` is its local rank's card), the process group, libtorch's threads and precision mode.
pub struct Runtime {
    pub device: Device,
    pub dist: Option<Rc<Dist>>,
}

impl Runtime {
    /// A rank of a data-parallel job (torchrun, SLURM, `launch`) joins the rendezvous here: from
    /// then on every rank fails alike.
    pub fn start(
        device: &str,
        backend: DistBackend,
        torch_threads: usize,
        precision: crate::train::step::amp::Precision,
        timeout: Duration,
    ) -> Result<Self> {
        let dist_env = DistEnv::job(backend)?;
        let mut device = crate::runtime::parse_device(device)?;
        if let Some(env) = &dist_env {
            device = env.device(device);
            if let Device::Cuda(n) = device {
                if n as i64 >= tch::Cuda::device_count() {
                    return Err(Error::Usage(format!(
                        "local rank {} wants cuda:{n} but this node has {} CUDA device(s): start at most that many \
                         processes per node",
                        env.local_rank,
                        tch::Cuda::device_count()
                    )));
                }
            }
        }
        crate::runtime::use_device(device);
        let dist = match dist_env {
            Some(env) => {
                Some(Rc::new(Dist::init(env, backend, device, timeout.max(Duration::from_secs(1)))?))
            }
            None => None,
        };
        if torch_threads > 0 {
            tch::set_num_threads(torch_threads as i32);
        }
        precision.configure()?;
        if device.is_cuda() {
            tch::Cuda::cudnn_set_benchmark(true);
        }
        Ok(Self { device, dist })
    }

    /// A run's runtime, from its config (and the decoders' image-size limit, process-wide).
    pub fn for_run(cfg: &TrainConfig) -> Result<Self> {
        let timeout = Duration::from_secs(cfg.dist_timeout);
        let rt = Self::start(&cfg.device, cfg.dist_backend, cfg.torch_threads, cfg.precision, timeout)?;
        crate::data::decode::set_max_image_pixels(cfg.max_image_pixels);
        Ok(rt)
    }

    /// Rank 0 of a data-parallel job, or the only process: it writes the run folder and prints.
    pub fn is_main(&self) -> bool {
        self.dist.as_ref().is_none_or(|d| d.is_main())
    }

    pub fn world(&self) -> usize {
        self.dist.as_ref().map_or(1, |d| d.world())
    }
}

/// How this invocation starts its run, decided once from the command and the run folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Step 0 with the seeded (or `initial_checkpoint`) weights: a new run, or a run killed before
    /// its first checkpoint, started again with its config.
    Fresh,
    /// From `last.safetensors`: the model, every component's state and the loop position.
    Resume,
}

/// A resumed run's saved settings and the changes this invocation makes to them (`epochs`,
/// `workers`, ...). Ordering: checked before any file is touched, so a refused change leaves the
/// run as it was.
pub fn resumed_settings(
    cfg: &TrainConfig,
    resume: Option<&Path>,
) -> Result<Option<(TrainConfig, Vec<String>)>> {
    let Some(dir) = resume else { return Ok(None) };
    let (saved, saved_path) = config::read_run(dir)?;
    cfg.check_resumable_from(&saved, &saved_path)?;
    let changes: Vec<String> = cfg
        .changes_from(&saved)
        .into_iter()
        .filter(|(k, _, _)| k != "max_steps")
        .map(|(k, old, new)| format!("{k} {old} -> {new}"))
        .collect();
    let notes = if changes.is_empty() {
        Vec::new()
    } else {
        vec![format!("resumed with changed settings: {}", changes.join(", "))]
    };
    Ok(Some((saved, notes)))
}

/// The run's data: both splits, their loaders and the eval transform's (resize, crop).
pub struct Data {
    pub train_set: Arc<ImageFolder>,
    pub val_set: Option<Arc<ImageFolder>>,
    pub train_loader: Loader,
    pub val_loader: Option<Loader>,
    pub eval_size: (usize, usize),
}

impl Data {
    /// Ordering: opened before the run folder, so that data that cannot train (no classes, a
    /// batch larger than an epoch) refuses the run with nothing written.
    pub fn open(cfg: &TrainConfig, device: Device, dist: Option<&DistEnv>, world: usize) -> Result<Self> {
        let (train_set, val_set) = datasets(cfg)?;
        let (train_loader, val_loader, eval_size) = loaders(cfg, device, &train_set, val_set.as_ref(), dist)?;
        check_batches_fit(cfg, &train_loader, world)?;
        Ok(Self { train_set, val_set, train_loader, val_loader, eval_size })
    }
}

/// The run folder, held by this process, and how the run starts there.
pub struct RunFolder {
    pub dir: PathBuf,
    /// Held while the trainer lives: one process (one job: rank 0's) per run folder.
    pub lock: Option<RunLock>,
    pub start: Start,
    pub notes: Vec<String>,
}

impl RunFolder {
    /// Locks the folder (rank 0), removes a killed process's temp files, and decides the start:
    /// a folder with a checkpoint resumes (and needs --resume), one without starts fresh.
    pub fn open(cfg: &TrainConfig, resume: Option<&Path>, main: bool) -> Result<Self> {
        let dir = resume.map_or_else(|| run_dir(cfg), Path::to_path_buf);
        let lock = if main { Some(RunLock::acquire(&dir)?) } else { None };
        let stale = if main { run_dir::remove_stale_temp_files(&dir)? } else { 0 };
        if stale > 0 {
            println!("note       removed {stale} temp file(s) of interrupted writes");
        }
        let has_checkpoint = run_dir::holds_checkpoint(&dir);
        if resume.is_none() && has_checkpoint {
            return Err(Error::Usage(format!(
                "{} already holds a run: use --resume {0} or another --name",
                dir.display()
            )));
        }
        if main && resume.is_none() && dir.join("config.toml").exists() {
            println!(
                "note       {} held a run killed before its first checkpoint: starting it again",
                dir.display()
            );
        }
        if main && resume.is_some() && !has_checkpoint {
            println!("note       no checkpoint yet (killed before the first): starting from step 0 with the run's config");
        }
        if main && !has_checkpoint && dir.join("tb").is_dir() {
            // The TensorBoard events of an attempt that never reached a checkpoint are void.
            std::fs::remove_dir_all(dir.join("tb")).map_err(|e| Error::io(dir.join("tb"), e))?;
        }
        let start = if has_checkpoint { Start::Resume } else { Start::Fresh };
        Ok(Self { dir, lock, start, notes: Vec::new() })
    }
}

/// A resumed run's labels must mean what they meant: the class folders (their names and order,
/// which give the label indices) must be those the checkpoint was trained on.
pub fn check_same_classes(saved: &[String], now: &[String], data: &Path, checkpoint: &Path) -> Result<()> {
    if saved == now {
        return Ok(());
    }
    let missing: Vec<&str> = saved.iter().filter(|c| !now.contains(c)).map(String::as_str).collect();
    let new: Vec<&str> = now.iter().filter(|c| !saved.contains(c)).map(String::as_str).collect();
    let first = |v: &[&str]| {
        let shown = v.iter().take(5).copied().collect::<Vec<_>>().join(", ");
        if v.len() > 5 {
            format!("{shown}, ...")
        } else {
            shown
        }
    };
    let mut why =
        format!("{} holds {} classes, the run trained on {}", data.display(), now.len(), saved.len());
    if !missing.is_empty() {
        why += &format!("; missing now: {} ({})", missing.len(), first(&missing));
    }
    if !new.is_empty() {
        why += &format!("; new: {} ({})", new.len(), first(&new));
    }
    if missing.is_empty() && new.is_empty() {
        why += "; the same names in another order";
    }
    Err(Error::file(
        checkpoint,
        format!(
            "cannot resume: the data's classes differ from the run's, so its labels would change meaning ({why}). \
             Point --data at the run's dataset, or start a new run on this one"
        ),
    ))
}

/// The train and val splits: `data/train` + `data/val` (or `data/validation`), the folders
/// `train_split` / `val_split` name, one folder of class folders to train on (no evaluation), or
/// the splits of a shard folder (see `open_shards`).
fn datasets(cfg: &TrainConfig) -> Result<(Arc<ImageFolder>, Option<Arc<ImageFolder>>)> {
    let root = match &cfg.data {
        Some(p) => p.clone(),
        None => synthetic::ensure_demo_dataset()?,
    };
    let (train, val) = if crate::data::remote::is_url(&root) {
        open_remote(cfg, &root)?
    } else if crate::data::shards::is_shard_folder(&root) {
        open_shards(cfg, &root)?
    } else {
        open_folders(cfg, &root)?
    };
    let val = match &cfg.val_data {
        Some(dir) => Some(open_val_data(cfg, dir)?),
        None => val,
    };
    if val.is_none() && crate::dist::DistEnv::is_main_process() {
        eprintln!(
            "warning: {} has no val/ or validation/ folder: this run will not evaluate (--val-split NAME names one)",
            root.display()
        );
    }
    check_splits(&train, val.as_ref())?;
    check_shard_order(cfg, &train)?;
    Ok((Arc::new(train), val.map(Arc::new)))
}

/// `shard_order` and `aug_repeats` that the data can follow.
fn check_shard_order(cfg: &TrainConfig, train: &ImageFolder) -> Result<()> {
    use crate::data::sampler::ShardOrder;
    if train.shards.is_none() {
        return Ok(());
    }
    if cfg.shard_order == ShardOrder::Global && train.fetcher().is_some() {
        return Err(Error::Usage(format!(
            "--shard-order global reads samples in any order, which a remote source ({}) cannot serve: use stream (the default), or copy the shards to a local folder",
            train.root.display()
        )));
    }
    if cfg.shard_order == ShardOrder::Stream && cfg.aug_repeats > 1 {
        return Err(Error::Usage(
            "--aug-repeats repeats samples of one permutation of the dataset, which a shard stream does not have: use --shard-order global (local shards) or --aug-repeats 0".into(),
        ));
    }
    Ok(())
}

/// `class_map`'s class names.
fn class_map(cfg: &TrainConfig) -> Result<Option<Vec<String>>> {
    cfg.class_map.as_deref().map(crate::data::shards::read_class_map).transpose()
}

/// Where remote shards are kept while read (`shard_cache`, `shard_cache_gb`, `prefetch_shards`).
fn shard_cache(cfg: &TrainConfig) -> Result<crate::data::shard_fetch::CacheConfig> {
    let dir = match &cfg.shard_cache {
        Some(d) => d.clone(),
        None => crate::runtime::cache_dir().map(|c| c.join("shards")).ok_or_else(|| {
            Error::Usage("no HOME to keep remote shards under: set --shard-cache DIR".into())
        })?,
    };
    Ok(crate::data::shard_fetch::CacheConfig {
        dir,
        keep_bytes: (cfg.shard_cache_gb * 1e9) as u64,
        prefetch: cfg.prefetch_shards,
    })
}

/// A remote source's splits (`data::shards::open_remote_split`): `train_split` (default train)
/// and `val_split` (default validation, else val), by their `_info.json` entries.
fn open_remote(cfg: &TrainConfig, url: &Path) -> Result<(ImageFolder, Option<ImageFolder>)> {
    let url = url.to_string_lossy();
    let cache = shard_cache(cfg)?;
    let map = class_map(cfg)?;
    let train = crate::data::shards::open_remote_split(
        &url,
        cfg.train_split.as_deref().unwrap_or("train"),
        &cache,
        map.as_deref(),
    )?;
    let val = if cfg.val_data.is_some() { None } else { remote_val(cfg, &url, &cache)? };
    Ok((train, val))
}

/// A remote source's validation split: `val_split`, else validation, else val (None: none).
fn remote_val(
    cfg: &TrainConfig,
    url: &str,
    cache: &crate::data::shard_fetch::CacheConfig,
) -> Result<Option<ImageFolder>> {
    use crate::data::shards;
    let split = match &cfg.val_split {
        Some(s) => Some(s.clone()),
        None => {
            let splits = shards::remote_splits(url)?;
            ["validation", "val"].iter().map(|s| s.to_string()).find(|s| splits.contains(s))
        }
    };
    let map = class_map(cfg)?;
    split.map(|s| shards::open_remote_split(url, &s, cache, map.as_deref())).transpose()
}

/// A shard folder's splits (`data::shards`): `train_split` (default train) and `val_split`
/// (default validation, else val), each by its `_info.json` entry, a brace pattern, a folder of
/// `.tar` files, or the `.tar` files named after it.
fn open_shards(cfg: &TrainConfig, root: &Path) -> Result<(ImageFolder, Option<ImageFolder>)> {
    let index = crate::data::dataset::default_index_dir();
    let train = crate::data::shards::open_split_named(
        root,
        cfg.train_split.as_deref().unwrap_or("train"),
        index.as_deref(),
        class_map(cfg)?.as_deref(),
    )?;
    // With `val_data`, the validation split is there, not here.
    let val = if cfg.val_data.is_some() { None } else { shard_val(cfg, root)? };
    Ok((train, val))
}

/// A shard folder's validation split: `val_split`, else validation, else val (None: none).
fn shard_val(cfg: &TrainConfig, root: &Path) -> Result<Option<ImageFolder>> {
    use crate::data::shards;
    let split = match &cfg.val_split {
        Some(s) => Some(s.clone()),
        None => ["validation", "val"]
            .iter()
            .map(|s| s.to_string())
            .find(|s| shards::has_split(root, s).unwrap_or(false)),
    };
    let index = crate::data::dataset::default_index_dir();
    let map = class_map(cfg)?;
    split.map(|s| shards::open_split_named(root, &s, index.as_deref(), map.as_deref())).transpose()
}

/// `val_data`: the validation split of a shard folder, a folder's `val_split` (else val/ or
/// validation/), or the folder itself as the split.
fn open_val_data(cfg: &TrainConfig, dir: &Path) -> Result<ImageFolder> {
    if crate::data::remote::is_url(dir) {
        let url = dir.to_string_lossy();
        return remote_val(cfg, &url, &shard_cache(cfg)?)?.ok_or_else(|| {
            Error::file(dir, "--val-data: no validation split in its _info.json (--val-split NAME names one)")
        });
    }
    if crate::data::shards::is_shard_folder(dir) {
        return shard_val(cfg, dir)?.ok_or_else(|| {
            Error::file(dir, "--val-data: no validation split among its shards (--val-split NAME names one)")
        });
    }
    let named = cfg.val_split.iter().map(|s| dir.join(s));
    let split = named.chain(["val", "validation"].iter().map(|s| dir.join(s))).find(|d| d.is_dir());
    ImageFolder::open(split.as_deref().unwrap_or(dir))
}

/// An ImageFolder's splits: `data/train` + `data/val` (or `data/validation`), the folders
/// `train_split` / `val_split` name, or `data` itself as the training split.
fn open_folders(cfg: &TrainConfig, root: &Path) -> Result<(ImageFolder, Option<ImageFolder>)> {
    let named = |split: &Option<String>, flag: &str| -> Result<Option<PathBuf>> {
        let Some(name) = split else { return Ok(None) };
        let dir = root.join(name);
        match dir.is_dir() {
            true => Ok(Some(dir)),
            false => Err(Error::file(&dir, format!("is not a folder (--{flag} {name} under --data)"))),
        }
    };
    let train_dir = named(&cfg.train_split, "train-split")?.unwrap_or_else(|| {
        Some(root.join("train")).filter(|d| d.is_dir()).unwrap_or_else(|| root.to_path_buf())
    });
    // With `val_data`, the validation split is there, not here.
    let val_dir = match cfg.val_data {
        Some(_) => None,
        None => match named(&cfg.val_split, "val-split")? {
            Some(dir) => Some(dir),
            None => ["val", "validation"].iter().map(|s| root.join(s)).find(|d| d.is_dir()),
        },
    };
    let train = ImageFolder::open(&train_dir)?;
    let val = val_dir.as_deref().map(ImageFolder::open).transpose()?;
    Ok((train, val))
}

/// A training split a classifier can learn from, and a validation split with its classes.
fn check_splits(train: &ImageFolder, val: Option<&ImageFolder>) -> Result<()> {
    if train.classes.len() < 2 {
        return Err(Error::file(
            &train.root,
            format!(
                "{} class(es): a classifier needs at least 2 (with one, every prediction is right)",
                train.classes.len()
            ),
        ));
    }
    if let Some(v) = val {
        if v.classes != train.classes {
            return Err(Error::file(
                &v.root,
                format!(
                    "its {} class folders differ from train's {}: the label indices would not match",
                    v.classes.len(),
                    train.classes.len()
                ),
            ));
        }
    }
    Ok(())
}

/// An epoch must hold at least one optimizer step: with fewer images per rank than
/// batch_size x accum_steps, every epoch would train nothing and the run would report success.
/// Refused rather than trained with a partial batch: the batch defines the experiment (its
/// learning rate scales with it, BatchNorm normalises over it), so a smaller one would silently
/// be another experiment.
fn check_batches_fit(cfg: &TrainConfig, loader: &Loader, world: usize) -> Result<()> {
    let per_rank = loader.per_rank();
    let batches = loader.batches_per_epoch();
    if batches / cfg.accum_steps.max(1) > 0 {
        return Ok(());
    }
    let images = loader.dataset().len();
    let per_step = cfg.batch_size * cfg.accum_steps;
    let accum = cfg.accum_steps.max(1);
    let mut ways = Vec::new();
    if per_rank / accum > 0 {
        ways.push(format!("--batch-size {} or less (with --accum-steps {accum})", per_rank / accum));
    }
    if per_rank / cfg.batch_size > 0 && accum > 1 {
        ways.push(format!(
            "--accum-steps {} or less (with --batch-size {})",
            per_rank / cfg.batch_size,
            cfg.batch_size
        ));
    }
    ways.push("fewer processes, or more data".into());
    Err(Error::Usage(format!(
        "{}: {images} training images give each of the {world} process(es) {per_rank} per epoch{}, fewer than \
         one optimizer step takes (--batch-size {} x --accum-steps {} = {per_step}): every epoch would train \
         nothing. Use {}",
        loader.dataset().root.display(),
        if cfg.aug_repeats > 1 { format!(" (with --aug-repeats {})", cfg.aug_repeats) } else { String::new() },
        cfg.batch_size,
        cfg.accum_steps,
        ways.join(", ")
    )))
}

/// The run folder: `output/name`, or a new name from the run's arch, activation, order, precision and time.
pub fn run_dir(cfg: &TrainConfig) -> PathBuf {
    let name = cfg.name.clone().unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        format!("{}-{:?}{}-{:?}-{t}", cfg.arch.name(), cfg.act, cfg.order, cfg.precision).to_lowercase()
    });
    cfg.output.join(name)
}

/// The train loader (RandomResizedCrop + flips, or resize + center crop with no_aug), the val loader (resize + center crop) and the
/// eval transform's (resize, crop).
fn loaders(
    cfg: &TrainConfig,
    device: Device,
    train_set: &Arc<ImageFolder>,
    val_set: Option<&Arc<ImageFolder>>,
    dist: Option<&DistEnv>,
) -> Result<(Loader, Option<Loader>, (usize, usize))> {
    let mut train_cfg = LoaderConfig::new(cfg.batch_size, cfg.train_transform());
    // The machine's cores shared by the processes on this node.
    let local_world = dist.map_or(1, |d| d.local_world);
    train_cfg.threads = if cfg.workers == 0 {
        (std::thread::available_parallelism().map_or(1, |n| n.get()) / local_world).max(1)
    } else {
        cfg.workers
    };
    if let Some(d) = dist {
        (train_cfg.rank, train_cfg.world) = (d.rank, d.world);
    }
    train_cfg.seed = cfg.seed;
    train_cfg.augment = cfg.augment(cfg.train_size)?.map(Arc::new);
    train_cfg.aug_repeats = cfg.aug_repeats;
    train_cfg.aug_splits = cfg.aug_splits;
    train_cfg.res_schedule = cfg.res_schedule();
    train_cfg.max_bad_fraction = cfg.max_bad_fraction;
    train_cfg.pin_memory = device.is_cuda();
    if cfg.shard_order == crate::data::sampler::ShardOrder::Stream {
        train_cfg.shuffle_buffer = Some(cfg.shuffle_buffer);
    }
    let train_loader = Loader::new(train_set.clone(), train_cfg.clone())?;
    let eval_transform = Transform::eval(cfg.eval_size, cfg.crop_pct).with_filter(cfg.interpolation);
    let val_loader = match val_set {
        Some(v) => {
            let mut c = train_cfg;
            c.transform = eval_transform;
            c.augment = None;
            c.aug_repeats = 0;
            c.aug_splits = 0;
            c.res_schedule = None;
            c.shuffle = false;
            c.drop_last_batch = false;
            c.uneven_shards = true;
            // An unreadable val image is left out of the score (and counted), not replaced.
            c.leave_out_unreadable = true;
            Some(Loader::new(v.clone(), c)?)
        }
        None => None,
    };
    let eval_size = match eval_transform {
        Transform::Eval { size, resize, .. } => (resize, size),
        _ => (cfg.eval_size, cfg.eval_size),
    };
    Ok((train_loader, val_loader, eval_size))
}

/// The experiment a run trains, resolved for this process count: what a config's `global_batch`,
/// `lr` / `lr_base` and accumulation come to. Printed at start, written as the head of the run's
/// config.toml and into each session's line of sessions.jsonl.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Experiment {
    pub world_size: usize,
    pub device_batch: usize,
    pub accum_steps: usize,
    pub global_batch: usize,
    pub peak_lr: f64,
    /// Where the peak comes from: "lr" (absolute) or the lr_base rule, e.g.
    /// "lr_base 0.1 x 1024 / 256 (linear)".
    pub lr_from: String,
    pub steps_per_epoch: usize,
    /// Optimizer steps of the whole schedule (warmup, cooldown and cycles included).
    pub total_steps: usize,
}

impl Experiment {
    pub fn of(cfg: &TrainConfig, world: usize, steps_per_epoch: usize, peak_lr: f64) -> Self {
        let global_batch = cfg.batch_size * cfg.accum_steps * world;
        let lr_from = match cfg.lr {
            Some(_) => "lr".to_string(),
            None => format!(
                "lr_base {} x {global_batch} / {} ({})",
                cfg.lr_base,
                cfg.lr_base_size,
                format!("{:?}", cfg.lr_base_rule()).to_lowercase()
            ),
        };
        Self {
            world_size: world,
            device_batch: cfg.batch_size,
            accum_steps: cfg.accum_steps,
            global_batch,
            peak_lr,
            lr_from,
            steps_per_epoch,
            total_steps: cfg.total_epochs() * steps_per_epoch,
        }
    }

    /// One line: "1 process x batch 256 x accumulation 4 = global batch 1024, peak lr 0.4 (...)".
    pub fn describe(&self) -> String {
        format!(
            "{} process{} x batch {} x accumulation {} = global batch {}, peak lr {} ({}), {} steps per epoch, {} steps",
            self.world_size,
            if self.world_size == 1 { "" } else { "es" },
            self.device_batch,
            self.accum_steps,
            self.global_batch,
            self.peak_lr,
            self.lr_from,
            self.steps_per_epoch,
            self.total_steps
        )
    }

    /// The head of the run's config.toml: the keys below are the run's as given; this is what
    /// they came to in the session that wrote the file.
    pub fn toml_header(&self) -> String {
        format!(
            "# The run's settings as given (a resume compares with these). Resolved in the session that\n\
             # wrote this file: {}.\n",
            self.describe()
        )
    }
}
