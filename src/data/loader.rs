//! The batch loader: a rayon pool decodes and transforms the samples of a batch in parallel,
//! a producer thread hands finished batches, in order, through a bounded crossbeam channel
//! (`prefetch` batches ahead; two more are being decoded), so memory stays bounded.
//!
//! Deterministic: the sample order comes from the `Sampler` (seed, epoch) and every random draw of
//! a sample from a generator keyed by (seed, epoch, dataset index), so batches are identical bit
//! for bit with any number of threads. A file that cannot be read or decoded is reported once,
//! counted, and replaced by a deterministic substitute, keeping batch shapes; past
//! `max_bad_fraction` of the dataset the epoch fails with examples.

use super::augment::Augment;
use super::augment_ops::Planes;
use super::dataset::ImageFolder;
use super::sampler::{Sampler, ShardStream};
use super::transform::{self, Transform, Worker};
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tch::{Device, Kind, Tensor};

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub threads: usize,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    pub transform: Transform,
    /// Augmentation after the crop and flip (RandAugment, TrivialAugment, AutoAugment, ColorJitter).
    pub augment: Option<Arc<Augment>>,
    pub seed: u64,
    pub shuffle: bool,
    /// Drop the last partial batch (training) or keep it (evaluation).
    pub drop_last_batch: bool,
    /// Leave an unreadable file out of its batch (evaluation: a score counts only the images it
    /// scored) instead of substituting another sample (training: batch shapes stay).
    pub leave_out_unreadable: bool,
    /// Stop with an error once more than this fraction of the dataset's files proved unreadable.
    pub max_bad_fraction: f64,
    /// Place batches in pinned host memory (for fast, asynchronous copies to a CUDA device).
    pub pin_memory: bool,
    pub rank: usize,
    pub world: usize,
    /// Shard without padding (evaluation; see `Sampler::uneven`).
    pub uneven_shards: bool,
    /// Repeated augmentation (timm's `aug_repeats`; see `Sampler::repeats`).
    pub aug_repeats: usize,
    /// AugMix-style splits (timm's AugMixDataset): with 2 or more, each sample's crop and flip
    /// appear this many times, the first copy without `augment`, the others augmented with the
    /// same generator drawing on; batches hold split after split (images `[splits x n]`, labels
    /// repeated), as timm's collate lays them out.
    pub aug_splits: usize,
    /// Progressive resizing: the train transform's size per epoch.
    pub res_schedule: Option<transform::ResSchedule>,
    /// A shard dataset is read as a stream (shards shuffled, samples through a shuffle buffer of
    /// this many; see `sampler::ShardStream`); None: sampled by position, as files are.
    pub shuffle_buffer: Option<usize>,
}

impl LoaderConfig {
    pub fn new(batch_size: usize, transform: Transform) -> Self {
        Self {
            batch_size,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            prefetch: 2,
            transform,
            augment: None,
            seed: 0,
            shuffle: true,
            drop_last_batch: true,
            leave_out_unreadable: false,
            max_bad_fraction: 0.01,
            pin_memory: false,
            rank: 0,
            world: 1,
            uneven_shards: false,
            aug_repeats: 0,
            aug_splits: 0,
            res_schedule: None,
            shuffle_buffer: None,
        }
    }
}

/// One batch: uint8 NCHW images and int64 labels, on the host.
pub struct Batch {
    pub images: Tensor,
    pub labels: Tensor,
    /// Position of this batch in the epoch (0-based), for resuming.
    pub index: usize,
    /// Samples of this batch that were replaced because their file was bad.
    pub replaced: usize,
    /// The dataset index of each image (row) of the batch (a replaced sample: the one it stood
    /// for).
    pub samples: Vec<usize>,
    /// Samples of this batch left out because their file was bad (`leave_out_unreadable`).
    pub left_out: usize,
}

/// Files that could not be read or decoded: path -> error, each reported once.
#[derive(Default)]
pub struct BadFiles {
    files: Mutex<BTreeMap<PathBuf, String>>,
}

impl BadFiles {
    /// Records a bad file, naming it the first time it is seen; fails once more than `allowed`
    /// files are bad. Naming, counting and the failure happen under one lock, so the count in
    /// the error is the number of files named before it, even with many decode threads.
    fn record(
        &self,
        path: &std::path::Path,
        err: &Error,
        dataset: &ImageFolder,
        fraction: f64,
    ) -> Result<()> {
        let (root, total) = (&dataset.root, dataset.len());
        let allowed = (fraction * total as f64).floor() as usize;
        let mut f = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() > allowed {
            return Err(Error::file(root, "stopped: too many unreadable images (named above)"));
        }
        if !f.contains_key(path) {
            eprintln!("warning: unreadable image: {err}");
            f.insert(path.to_path_buf(), err.to_string());
        }
        if f.len() <= allowed {
            return Ok(());
        }
        let examples: Vec<String> =
            f.iter().take(10).map(|(p, e)| format!("  {}: {e}", p.display())).collect();
        Err(Error::file(
            root,
            format!(
                "{} unreadable images, more than the allowed fraction {fraction} of {total} files; for example:\n{}",
                f.len(),
                examples.join("\n")
            ),
        ))
    }

    pub fn count(&self) -> usize {
        self.files.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn examples(&self, n: usize) -> Vec<(PathBuf, String)> {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .take(n)
            .map(|(p, e)| (p.clone(), e.clone()))
            .collect()
    }
}

pub struct Loader {
    dataset: Arc<ImageFolder>,
    cfg: LoaderConfig,
    pool: Arc<rayon::ThreadPool>,
    pub bad: Arc<BadFiles>,
}

thread_local! {
    static WORKER: RefCell<Worker> = RefCell::new(Worker::default());
}

/// Batches being decoded at once (besides the `prefetch` finished ones waiting in the channel).
const IN_FLIGHT: usize = 2;

/// Attempts at a substitute for a bad sample before giving up on the batch.
const MAX_SUBSTITUTES: u64 = 16;

impl Loader {
    pub fn new(dataset: Arc<ImageFolder>, cfg: LoaderConfig) -> Result<Self> {
        if cfg.batch_size == 0 {
            return Err(Error::Usage("--batch-size must be at least 1".into()));
        }
        if dataset.is_empty() {
            return Err(Error::file(&dataset.root, "the dataset is empty"));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads.max(1))
            .thread_name(|i| format!("decode-{i}"))
            .build()
            .map_err(|e| Error::Usage(format!("cannot start {} decode threads: {e}", cfg.threads)))?;
        Ok(Self { dataset, cfg, pool: Arc::new(pool), bad: Arc::default() })
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    pub fn dataset(&self) -> &ImageFolder {
        &self.dataset
    }

    pub fn sampler(&self) -> Sampler {
        Sampler {
            len: self.dataset.len(),
            shuffle: self.cfg.shuffle,
            seed: self.cfg.seed,
            rank: self.cfg.rank,
            world: self.cfg.world,
            drop_last: false,
            uneven: self.cfg.uneven_shards,
            repeats: self.cfg.aug_repeats,
        }
    }

    /// The shard stream the samples are read in, if the dataset is shards read as a stream.
    fn stream(&self) -> Option<ShardStream> {
        let buffer = self.cfg.shuffle_buffer?;
        self.dataset.shards.as_ref().map(|s| ShardStream { lengths: s.lengths.clone(), buffer })
    }

    /// This rank's draws of `epoch`: (dataset index, repeat number).
    pub fn draws(&self, epoch: u64) -> Vec<(usize, usize)> {
        match self.stream() {
            Some(stream) => self.sampler().stream_draws(&stream, epoch),
            None => self.sampler().draws(epoch),
        }
    }

    /// Samples per rank per epoch.
    pub fn per_rank(&self) -> usize {
        match self.stream() {
            Some(stream) => self.sampler().stream_per_rank(&stream),
            None => self.sampler().per_rank(),
        }
    }

    /// Batches per epoch for this rank.
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.per_rank();
        if self.cfg.drop_last_batch {
            n / self.cfg.batch_size
        } else {
            n.div_ceil(self.cfg.batch_size)
        }
    }

    /// The batches of `epoch`, starting at batch `start` (to resume mid-epoch).
    pub fn epoch(&self, epoch: u64, start: usize) -> Epoch {
        let indices = self.draws(epoch);
        let n_batches = self.batches_per_epoch();
        if let (Some(layout), Some(fetcher)) = (&self.dataset.shards, self.dataset.fetcher()) {
            // The remote shards this epoch reads from here on, in the order it reads them.
            let end = (n_batches * self.cfg.batch_size).min(indices.len());
            let from = (start * self.cfg.batch_size).min(end);
            fetcher.plan(indices[from..end].iter().map(|&(i, _)| layout.locate(i).0));
        }
        let (tx, rx) = crossbeam_channel::bounded(self.cfg.prefetch.max(1));
        let (dataset, mut cfg, pool, bad) =
            (self.dataset.clone(), self.cfg.clone(), self.pool.clone(), self.bad.clone());
        if let Some(r) = cfg.res_schedule {
            let size = r.size_at(epoch);
            if size != cfg.transform.size() {
                cfg.transform = cfg.transform.with_size(size);
                cfg.augment = cfg.augment.map(|a| Arc::new(a.resized(size)));
            }
        }
        let producer = std::thread::Builder::new()
            .name("loader".into())
            .spawn(move || {
                // Batches overlap on the pool (up to IN_FLIGHT at once), so threads that finish
                // their share of one batch start on the next instead of waiting for the slowest
                // image; they are delivered in order.
                let mut in_flight = std::collections::VecDeque::new();
                let mut next = start;
                loop {
                    // (One thread gains nothing from overlapping and measured ~4% slower with it.)
                    let depth = if cfg.threads > 1 { IN_FLIGHT } else { 1 };
                    while in_flight.len() < depth && next < n_batches {
                        let (b, (btx, brx)) = (next, crossbeam_channel::bounded(1));
                        let chunk = indices
                            [b * cfg.batch_size..((b + 1) * cfg.batch_size).min(indices.len())]
                            .to_vec();
                        let (dataset, cfg, bad) = (dataset.clone(), cfg.clone(), bad.clone());
                        pool.spawn(move || {
                            let _ = btx.send(make_batch(&dataset, &cfg, &bad, epoch, b, &chunk));
                        });
                        in_flight.push_back(brx);
                        next += 1;
                    }
                    let Some(brx) = in_flight.pop_front() else { return };
                    let batch = brx.recv().unwrap_or_else(|_| {
                        Err(Error::Usage("a decode thread panicked building a batch".into()))
                    });
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        // The consumer is gone, or the epoch cannot continue. The batches being
                        // decoded are waited for, so that once this epoch is dropped none of its
                        // reads is left running (a remote source counts the next epoch's reads).
                        for brx in in_flight {
                            let _ = brx.recv();
                        }
                        return;
                    }
                }
            })
            .expect("spawning the loader thread");
        Epoch { rx, producer: Some(producer) }
    }
}

/// Decodes one sample into `dst`, substituting deterministically for bad files (or, with
/// `leave_out_unreadable`, leaving them out: None). Returns the label used and whether the sample
/// was replaced.
fn load_sample(
    dataset: &ImageFolder,
    cfg: &LoaderConfig,
    bad: &BadFiles,
    epoch: u64,
    (index, repeat): (usize, usize),
    dst: &mut [u8],
) -> Result<Option<(u32, bool)>> {
    let mut candidate = index;
    for attempt in 0..=MAX_SUBSTITUTES {
        // Repeated copies of a sample (RASampler) draw their own crops and augmentations.
        let mut rng = if repeat == 0 {
            SplitMix64::keyed(&[cfg.seed, epoch, candidate as u64])
        } else {
            SplitMix64::keyed(&[cfg.seed, epoch, candidate as u64, 0x004E_9EA7, repeat as u64])
        };
        crate::fault::slow_read();
        let name = dataset.sample_name(candidate);
        let result = dataset.read_sample(candidate).and_then(|(bytes, label)| {
            WORKER.with(|w| {
                let w = &mut *w.borrow_mut();
                let size = cfg.transform.size();
                let (first, splits) = dst.split_at_mut(3 * size * size);
                transform::apply(w, &bytes, &name, &cfg.transform, &mut rng, first)?;
                if let Some(aug) = &cfg.augment {
                    if splits.is_empty() {
                        aug.apply(&mut Planes { px: first, h: size, w: size }, &mut rng, &mut w.augment);
                    }
                    // AugMix splits: the first copy stays clean, each other one is augmented.
                    for split in splits.chunks_mut(first.len()) {
                        split.copy_from_slice(first);
                        aug.apply(&mut Planes { px: split, h: size, w: size }, &mut rng, &mut w.augment);
                    }
                }
                Ok(label)
            })
        });
        match result {
            Ok(label) => return Ok(Some((label, attempt > 0))),
            Err(e) => {
                bad.record(&name, &e, dataset, cfg.max_bad_fraction)?;
                if cfg.leave_out_unreadable {
                    return Ok(None);
                }
                let mut r = SplitMix64::keyed(&[cfg.seed, epoch, index as u64, attempt + 1]);
                candidate = r.below(dataset.len() as u64) as usize;
            }
        }
    }
    Err(Error::file(dataset.sample_name(index), "unreadable, and so were all substitutes tried"))
}

fn make_batch(
    dataset: &ImageFolder,
    cfg: &LoaderConfig,
    bad: &BadFiles,
    epoch: u64,
    batch_index: usize,
    indices: &[(usize, usize)],
) -> Result<Batch> {
    let size = cfg.transform.size();
    let splits = cfg.aug_splits.max(1);
    let per = 3 * size * size * splits;
    let n = indices.len() as i64;
    let shape = [n * splits as i64, 3, size as i64, size as i64];
    // Decode straight into the batch tensor (pinned when it will go to a GPU); AugMix splits are
    // decoded sample by sample, then laid out split after split.
    let empty = Tensor::f_empty(shape, (Kind::Uint8, Device::Cpu))?;
    let mut images = if cfg.pin_memory && splits == 1 { crate::ffi::pin_memory(&empty)? } else { empty };
    let results: Vec<Result<Option<(u32, bool)>>> = crate::ffi::uint8_bytes_mut(&mut images)?
        .par_chunks_mut(per)
        .zip(indices.par_iter())
        .map(|(dst, &draw)| load_sample(dataset, cfg, bad, epoch, draw, dst))
        .collect();
    let mut labels = Vec::with_capacity(indices.len());
    let mut samples = Vec::with_capacity(indices.len());
    let mut kept = Vec::with_capacity(indices.len());
    let mut replaced = 0;
    for (row, (r, &(index, _))) in results.into_iter().zip(indices).enumerate() {
        let Some((label, was_replaced)) = r? else { continue };
        labels.push(label as i64);
        samples.push(index);
        kept.push(row as i64);
        replaced += was_replaced as usize;
    }
    let left_out = indices.len() - kept.len();
    if left_out > 0 {
        // (Evaluation only, one split.) An empty batch stays a [0, 3, size, size] tensor.
        images = images.f_index_select(0, &Tensor::from_slice(&kept))?;
    }
    let mut labels = Tensor::from_slice(&labels);
    if splits > 1 {
        let s = size as i64;
        let by_split = images.f_view([n, splits as i64, 3, s, s])?.f_transpose(0, 1)?.f_contiguous()?;
        let by_split = by_split.f_view(shape)?;
        images = if cfg.pin_memory { crate::ffi::pin_memory(&by_split)? } else { by_split };
        labels = labels.f_repeat([splits as i64])?;
    }
    Ok(Batch { images, labels, index: batch_index, replaced, samples, left_out })
}

/// An epoch in progress; yields batches in order. Dropping it stops the producer.
pub struct Epoch {
    rx: crossbeam_channel::Receiver<Result<Batch>>,
    producer: Option<std::thread::JoinHandle<()>>,
}

impl Iterator for Epoch {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        // Unblock a producer waiting on a full channel, then wait for it.
        let (_, empty) = crossbeam_channel::bounded(0);
        self.rx = empty;
        if let Some(p) = self.producer.take() {
            let _ = p.join();
        }
    }
}
