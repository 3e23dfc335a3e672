//! The training configuration, declared once, with its rules. Each key is one field of
//! `TrainConfig`, with its doc comment (the `--help` text and the file format's documentation) and its default (a clap
//! attribute; `TrainConfig::default()` is the parse of an empty command line). The same struct is
//! the TOML file format (unknown keys are errors), the resolved copy saved with the run, and the
//! command-line flags (`--key value`, the key with `-` for `_`). Precedence: flags > file > defaults.
//!
//! Names follow timm's train.py where timm has the option (`opt`, `opt_eps`, `opt_betas`,
//! `weight_decay`, `smoothing`, `model_ema*`, `bce_*`), so a timm recipe translates key by key.

use crate::error::{Error, Result};
use crate::model::{ActConfig, ActImpl, ActInit, ActKind, Arch, NormAxis, ResNetConfig};
use crate::train::run::eval::EvalMetric;
use crate::train::step::amp::Precision;
use crate::train::step::clip::ClipMode;
use crate::train::step::ema::{EmaBuffers, EmaConfig, EmaStyle};
use crate::train::step::optim::OptKind;
use crate::train::step::schedule::{DecayFn, LrScaling, ScheduleKind, ScheduleStyle, WarmupMethod};
use crate::train::step::stability::{LiveSettings, Remedy};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, FromArgMatches};
use range::Ends;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub mod range;
mod schedule;
mod validate;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
#[command(next_help_heading = "Config keys (TOML `key = value`; flag `--key value`)")]
pub struct TrainConfig {
    // ---- Data ----
    /// ImageFolder root with train/ and val/ (or validation/, timm's name), one folder of class
    /// folders to train on without evaluating (a warning says so), or a folder of WebDataset shards
    /// (timm's wds layout: `_info.json` or .tar files; `imagenet-prep shards` writes them); unset:
    /// the embedded procedural dataset. On `--resume` (the dataset moved) its classes must be the
    /// checkpoint's.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The training split's folder under `data` (timm's `train_split`; unset: train/, else
    /// `data` itself). Given, it must exist. With shards: the split's `_info.json` name, a brace
    /// pattern (`imagenet1k-train-{0000..1023}.tar`), or a folder of .tar files (unset: train).
    #[arg(long)]
    pub train_split: Option<String>,
    /// The evaluation split's folder under `data` (timm's `val_split`; unset: val/ or
    /// validation/, else no evaluation, said at start). Given, it must exist. With shards: as
    /// `train_split` (unset: validation, else val).
    #[arg(long)]
    pub val_split: Option<String>,
    /// The evaluation data when it lives apart from `data` (e.g. local validation shards, training
    /// shards elsewhere): a folder with val/ or validation/, a class-folder split itself, or a
    /// shard folder (its `val_split`, else validation or val). Its classes must be `data`'s.
    #[arg(long)]
    pub val_data: Option<PathBuf>,
    /// Class names for shards whose `_info.json` names none (timm's `class_map`): a text file
    /// with one class per line, named by the line's first word, the line number being the label
    /// (ImageNet's `LOC_synset_mapping.txt` gives the wnids). Unset: the classes are named by
    /// their index (a remote source's `_info.json` must then give `num_classes`).
    #[arg(long)]
    pub class_map: Option<PathBuf>,
    /// How shards are ordered each epoch: `stream` (timm's: the shards shuffled from (seed, epoch),
    /// every rank an equal contiguous slice of them, the tail of fewer than world-size samples
    /// dropped, then a shuffle buffer of `shuffle_buffer` samples seeded by (seed, epoch, rank))
    /// or `global` (one permutation of all samples, as an ImageFolder's; local shards only, and
    /// what `aug_repeats` needs).
    #[arg(long, value_enum, default_value_t = crate::data::sampler::ShardOrder::Stream)]
    pub shard_order: crate::data::sampler::ShardOrder,
    /// Samples in a shard stream's shuffle buffer (timm's 8192; 0: the shards' own order). The
    /// buffer orders sample positions, not images: it sets how many shards ahead of the stream
    /// must be local (about this / samples per shard), not memory.
    #[arg(long, default_value_t = 8192, value_parser = range::int::<usize>(0, 10_000_000), allow_negative_numbers = true)]
    pub shuffle_buffer: usize,
    /// Remote shards (`data` or `val_data` an s3:// or http(s):// URL) downloaded at once, and
    /// how many shards ahead of reading.
    #[arg(long, default_value_t = 4, value_parser = range::int::<usize>(1, 256), allow_negative_numbers = true)]
    pub prefetch_shards: usize,
    /// Where remote shards are kept while they are read (unset: ~/.cache/resnet-train/shards,
    /// or $RESNET_TRAIN_CACHE/shards).
    #[arg(long)]
    pub shard_cache: Option<PathBuf>,
    /// Gigabytes of remote shards the cache may keep once an epoch has read them (0: each is
    /// deleted once read; the dataset's size or more: downloaded once, later epochs read the disk).
    #[arg(long, default_value_t = 0.0, value_parser = range::float(0.0, 1e9, Ends::Closed), allow_negative_numbers = true)]
    pub shard_cache_gb: f64,
    /// Train crop size (RandomResizedCrop).
    #[arg(long, alias = "res", default_value_t = 224, value_parser = range::int::<usize>(8, crate::data::transform::MAX_SIZE as u64), allow_negative_numbers = true)]
    pub train_size: usize,
    /// Eval crop size (resize to size / crop_pct, then center crop).
    #[arg(long, default_value_t = 224, value_parser = range::int::<usize>(8, crate::data::transform::MAX_SIZE as u64), allow_negative_numbers = true)]
    pub eval_size: usize,
    /// RandomResizedCrop's smallest area fraction (torchvision: 0.08).
    #[arg(long, default_value_t = 0.08, value_parser = range::float(0.0, 1.0, Ends::AboveMin), allow_negative_numbers = true)]
    pub rrc_scale_min: f64,
    /// RandomResizedCrop's aspect-ratio range, drawn log-uniformly (timm's `ratio`; torchvision:
    /// 3/4,4/3).
    #[arg(long, value_delimiter = ',', default_values_t = [0.75, 4.0 / 3.0], value_parser = range::float(0.0, 100.0, Ends::AboveMin), allow_negative_numbers = true)]
    pub ratio: Vec<f64>,
    /// Probability of a horizontal flip of each train crop (timm's `hflip`; 0: off).
    #[arg(long, default_value_t = 0.5, value_parser = range::float(0.0, 1.0, Ends::Closed), allow_negative_numbers = true)]
    pub hflip: f64,
    /// Probability of a vertical flip of each train crop, after the horizontal one (timm's
    /// `vflip`; 0: off).
    #[arg(long, default_value_t = 0.0, value_parser = range::float(0.0, 1.0, Ends::Closed), allow_negative_numbers = true)]
    pub vflip: f64,
    /// No train augmentation at all (timm's `no_aug`): each train image resized (shorter side to
    /// train_size, train_interpolation, bilinear if random) and center-cropped, as eval without
    /// crop_pct; overrides the crop, flips, aa, colour ops and random erasing (Mixup/CutMix, batch
    /// operations, stay as set).
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub no_aug: bool,
    /// Per-channel mean of the RGB values in [0, 1] inputs are normalised with (timm's `mean`;
    /// ImageNet's by default). Recorded in model files for `eval` and `predict`.
    #[arg(long, value_delimiter = ',', default_values_t = crate::data::transform::IMAGENET_MEAN, value_parser = range::float(-100.0, 100.0, Ends::Closed), allow_negative_numbers = true)]
    pub mean: Vec<f64>,
    /// ... and standard deviation (timm's `std`).
    #[arg(long, value_delimiter = ',', default_values_t = crate::data::transform::IMAGENET_STD, value_parser = range::float(0.0, 100.0, Ends::AboveMin), allow_negative_numbers = true)]
    pub std: Vec<f64>,
    /// Eval center crop fraction: resize to floor(eval_size / crop_pct), timm's rule (0.875: 256
    /// for 224; 0.95: 235), then center-crop eval_size.
    #[arg(long, default_value_t = 0.875, value_parser = range::float(0.1, 1.0, Ends::Closed), allow_negative_numbers = true)]
    pub crop_pct: f64,
    /// RandomResizedCrop's filter (timm's `train_interpolation`): bilinear (torchvision's),
    /// bicubic, or random (one of the two per image, timm's default); a fixed filter is also the
    /// one timm's `aa` ops use (random: drawn per op).
    #[arg(long, value_enum, default_value_t = crate::data::transform::TrainFilter::Bilinear)]
    pub train_interpolation: crate::data::transform::TrainFilter,
    /// Eval resize filter (timm's `interpolation`): bilinear (torchvision's) or bicubic (timm's
    /// ResNets, ResNet Strikes Back). Recorded in checkpoints for `eval` and `predict`.
    #[arg(long, value_enum, default_value_t = crate::data::resize::Filter::Bilinear)]
    pub interpolation: crate::data::resize::Filter,
    /// Stop when more than this fraction of images is unreadable.
    #[arg(long, default_value_t = 0.01, value_parser = range::float(0.0, 1.0, Ends::Closed), allow_negative_numbers = true)]
    pub max_bad_fraction: f64,
    /// Images whose header claims more pixels are bad files, refused before decoding
    /// (decompression bombs; PIL's limit).
    #[arg(long, default_value_t = crate::data::decode::DEFAULT_MAX_IMAGE_PIXELS, value_parser = range::int::<u64>(1, 1_000_000_000_000), allow_negative_numbers = true)]
    pub max_image_pixels: u64,
    /// Decode threads (0: all cores).
    #[arg(long, default_value_t = 0, value_parser = range::int::<usize>(0, 1024), allow_negative_numbers = true)]
    pub workers: usize,
    /// Augmentation policy after the crop and flip (timm's `aa`): randaugment (torchvision's
    /// RandAugment n2 m9; randaugment-n3-m7 for others), trivialaugment or ta_wide
    /// (TrivialAugmentWide), autoaugment (torchvision's ImageNet policy), timm's
    /// rand-m9-mstd0.5-inc1 strings (m, n, mstd, mmax, inc, p), v0 or original (timm's
    /// AutoAugment policies), timm's augmix-m3-w3 strings (AugMix: m, w, d, a, mstd); unset: none.
    #[arg(long)]
    pub aa: Option<String>,
    /// ColorJitter strength for brightness, contrast and saturation (one value, or three: b,c,s;
    /// a fourth is the hue shift, at most 0.5), torchvision's semantics, after `aa`; unset: off.
    #[arg(long, value_delimiter = ',', value_parser = range::float(0.0, 100.0, Ends::Closed), allow_negative_numbers = true)]
    pub color_jitter: Option<Vec<f64>>,
    /// Apply the color jitter to each crop with this probability (timm's `color_jitter_prob`,
    /// SimCLR-style; unset: always).
    #[arg(long, value_parser = range::float(0.0, 1.0, Ends::Closed), allow_negative_numbers = true)]
    pub color_jitter_prob: Option<f64>,
    /// Turn each train crop grey with this probability (timm's `grayscale_prob`, torchvision's
    /// RandomGrayscale, after the jitter; 0: off).
    #[arg(long, default_value_t = 0.0, value_parser = range::float(0.0, 1.0, Ends::Closed), allow_negative_numbers = true)]
    pub grayscale_prob: f64,
    /// Blur each train crop with this probability (timm's `gaussian_blur_prob`: torchvision's
    /// GaussianBlur, 23 px kernel, sigma uniform in [0.1, 2]; last of the colour ops; 0: off).
    #[arg(long, default_value_t = 0.0, value_parser = range::float(0.0, 1.0, Ends::Closed), allow_negative_numbers = true)]
    pub gaussian_blur_prob: f64,
    /// Repeated augmentation (timm's `aug_repeats`, RASampler; RSB A1/A2: 3): each sample this
    /// many times in a row per epoch, each copy augmented differently, sharded over the ranks;
    /// each rank then keeps floor(len // 256 * 256 / world) draws per epoch, as timm (0: off).
    #[arg(long, default_value_t = 0, value_parser = range::int::<usize>(0, 16), allow_negative_numbers = true)]
    pub aug_repeats: usize,
    /// AugMix-style splits (timm's `aug_splits`; its AugMix ResNet-50: 3): each sample's crop
    /// and flip appear this many times in the batch, the first copy clean (no aa, no colour
    /// jitter), the others augmented independently; the batch holds split after split, so a step
    /// sees batch_size x aug_splits images. Needs aa, color_jitter, grayscale_prob or gaussian_blur_prob (0: off).
    #[arg(long, default_value_t = 0, value_parser = range::int::<usize>(0, 8), allow_negative_numbers = true)]
    pub aug_splits: usize,
    /// timm's JsdCrossEntropy with aug_splits (timm's `jsd_loss`): cross-entropy (smoothed by
    /// smoothing) on the clean split plus 12 x the Jensen-Shannon divergence of the splits'
    /// predictions.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub jsd_loss: bool,
    /// timm's split BatchNorm with aug_splits (timm's `split_bn`): every BN site gets an
    /// auxiliary BN per augmented split (`aux_bn.N` in checkpoints), which normalises that split
    /// in training; evaluation uses the main BNs only.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub split_bn: bool,
    /// Random erasing spares the clean split (timm's `resplit`; needs aug_splits).
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub resplit: bool,
    /// Progressive resizing (FFCV's `min_res`): train at this size up to epoch `start_ramp`, at
    /// `train_size` from `end_ramp` on, linearly in between in steps of 32 px (0: off).
    #[arg(long, default_value_t = 0, value_parser = range::int::<usize>(0, crate::data::transform::MAX_SIZE as u64), allow_negative_numbers = true)]
    pub min_res: usize,
    /// Progressive resizing: the last epoch at `min_res` (0-based, FFCV's `start_ramp`).
    #[arg(long, default_value_t = 0, value_parser = range::int::<u64>(0, 100_000), allow_negative_numbers = true)]
    pub start_ramp: u64,
    /// Progressive resizing: the first epoch at `train_size` (FFCV's `end_ramp`).
    #[arg(long, default_value_t = 0, value_parser = range::int::<u64>(0, 100_000), allow_negative_numbers = true)]
    pub end_ramp: u64,
    /// Evaluate on each image and its mirror image, averaging the logits (FFCV's `lr_tta`).
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub eval_flip: bool,

    // ---- Model ----
    /// resnet18, resnet34, resnet50, resnet101 or resnet152 (torchvision's).
    #[serde(alias = "model")]
    #[arg(long, visible_alias = "model", value_enum, default_value_t = Arch::Resnet50)]
    pub arch: Arch,
    /// Activation at every site.
    #[arg(long, value_enum, default_value_t = ActKind::Relu)]
    pub act: ActKind,
    /// Polynomial order k of PolyReLU/PolyNorm (1..=8).
    #[arg(long, default_value_t = 3, value_parser = range::int::<i64>(1, crate::model::activation::MAX_ORDER as u64), allow_negative_numbers = true)]
    pub order: i64,
    /// Axis of PolyNorm's root mean square.
    #[arg(long, value_enum, default_value_t = NormAxis::Channel)]
    pub norm_axis: NormAxis,
    /// Initial polynomial coefficients: paper (w = 1/k) or relu-like (w = [1, 0, ...]).
    #[arg(long, value_enum, default_value_t = ActInit::Paper)]
    pub act_init: ActInit,
    /// 3x3 stride-1 stem without max-pool, for inputs of 64 px and less.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub small_stem: bool,
    /// Stochastic depth (timm's `drop_path`): the probability of dropping a sample's residual
    /// branch, rising linearly over the blocks from 0 to this (RSB A1/A2: 0.05; 0: off).
    #[arg(long, default_value_t = 0.0, value_parser = range::float(0.0, 1.0, Ends::BelowMax), allow_negative_numbers = true)]
    pub drop_path: f64,
    /// DropBlock (timm's `drop_block`): the rate of zeroed square regions after the middle BN of
    /// every block in stages 3 and 4 (timm's sizes 5 and 3; 0: off). Training only.
    #[arg(long, default_value_t = 0.0, value_parser = range::float(0.0, 1.0, Ends::BelowMax), allow_negative_numbers = true)]
    pub drop_block: f64,
    /// Dropout before the classifier (timm's `drop`; 0: off, as in every ResNet recipe here).
    #[arg(long, default_value_t = 0.0, value_parser = range::float(0.0, 1.0, Ends::BelowMax), allow_negative_numbers = true)]
    pub drop: f64,
    /// FFCV's BlurPool (`use_blurpool`, on in all its ResNet-50 configs): a fixed 3x3 binomial
    /// blur before every convolution with stride > 1 and at least 16 input channels (the strided
    /// 3x3s and projection shortcuts; not the stem). Recorded in model files.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub blurpool: bool,
    /// SyncBatchNorm in data-parallel training (timm's `sync_bn`): BatchNorm normalises with the
    /// statistics of every rank's batch; off: each rank's own, as torchvision and timm default to.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub sync_bn: bool,
    /// Zero-init each residual block's last BN gamma.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub zero_init_residual: bool,
    /// Every BatchNorm's running-statistics momentum (timm's `bn_momentum`; unset: torch's 0.1).
    /// Recorded in model files.
    #[arg(long, value_parser = range::float(0.0, 1.0, Ends::Closed), allow_negative_numbers = true)]
    pub bn_momentum: Option<f64>,
    /// Every BatchNorm's variance epsilon (timm's `bn_eps`; unset: torch's 1e-5). Recorded in
    /// model files, so evaluation uses it too.
    #[arg(long, value_parser = range::float(0.0, 1.0, Ends::AboveMin), allow_negative_numbers = true)]
    pub bn_eps: Option<f64>,
    /// Stability remedy: clamp the polynomial's input to [-C, C].
    #[arg(long, value_parser = range::float(0.0, 1e6, Ends::AboveMin), allow_negative_numbers = true)]
    pub act_clamp: Option<f64>,
    /// Compute the activations in fp32 under autocast (true, as PyTorch's CUDA autocast does for
    /// the reference's `pow`/`rsqrt`; false: in the autocast dtype).
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub act_fp32: bool,
    /// With act_fp32 under bf16/fp16: return each activation in the autocast dtype (rounded once
    /// after the fp32 arithmetic) instead of fp32; the residual stream stays in low precision as
    /// with ReLU. Less GPU time and memory; false keeps the reference's fp32 output (except at a
    /// block's inner sites, which only the next convolution reads: the same values either way).
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub act_out_lowp: bool,
    /// PolyReLU/PolyNorm as one fused operator with its own backward, with the BatchNorm before
    /// each site (and the residual add) folded into it so that a site keeps what a ReLU site keeps
    /// (fused; where it applies, else the next best), the fused activation alone after libtorch's
    /// BatchNorm (fused-act), or the reference's tensor expression (eager). Same values either way.
    #[arg(long, value_enum, default_value_t = ActImpl::Fused)]
    pub act_impl: ActImpl,
    /// Start from these weights instead of the seeded init (timm's `initial_checkpoint`): a
    /// resnet-train model file or checkpoint (its model weights) or a converted torchvision
    /// state_dict, of the same `arch`. A classifier of another size, and activation coefficients
    /// the file lacks or holds for another activation, keep their init (said at start). A resumed
    /// run continues from its own checkpoint instead.
    #[arg(long)]
    pub initial_checkpoint: Option<PathBuf>,
    /// Multiply the classifier's initial weight and bias by this (timm's `head_init_scale`; after
    /// `initial_checkpoint`; not on resume).
    #[arg(long, value_parser = range::float(-1e6, 1e6, Ends::Closed), allow_negative_numbers = true)]
    pub head_init_scale: Option<f64>,
    /// Set the classifier's initial bias to this (timm's `head_init_bias`, e.g. -log(classes - 1)
    /// with BCE; after head_init_scale; not on resume).
    #[arg(long, allow_negative_numbers = true, value_parser = range::float(-1e6, 1e6, Ends::Closed))]
    pub head_init_bias: Option<f64>,

    // ---- Optimisation ----
    /// Training epochs (the schedule's length).
    #[arg(long, default_value_t = 90, value_parser = range::int::<usize>(1, 100_000), allow_negative_numbers = true)]
    pub epochs: usize,
    /// Images per device per micro-step (with `global_batch` set: derived from it, this ignored).
    #[arg(long, alias = "batch", default_value_t = 256, value_parser = range::int::<usize>(1, 65536), allow_negative_numbers = true)]
    pub batch_size: usize,
    /// Images per optimizer step over all processes (timm's batch_size x world x grad_accum): when
    /// set, each device's batch is global_batch / (processes x accum_steps), so the run is the
    /// same experiment (batch, learning rate, steps) on 1, 8 or 64 GPUs; a process count that does
    /// not divide it is refused with the nearest that do. A resumed run keeps it under another
    /// process count.
    #[arg(long, value_parser = range::int::<usize>(1, 1_048_576), allow_negative_numbers = true)]
    pub global_batch: Option<usize>,
    /// With `global_batch`: the most images a device takes per micro-step; where the share of the
    /// global batch would exceed it, `accum_steps` is raised (the least accumulation that divides
    /// the global batch and fits), so one config trains the same experiment on 1 or 64 GPUs.
    #[arg(long, value_parser = range::int::<usize>(1, 65536), allow_negative_numbers = true)]
    pub max_device_batch: Option<usize>,
    /// Peak learning rate, absolute, at any batch (timm's `lr`). Unset: `lr_base` scaled to the
    /// run's global batch.
    #[arg(long, value_parser = range::float(0.0, 1000.0, Ends::AboveMin), allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// The learning rate for a global batch of `lr_base_size` images, scaled to the run's global
    /// batch (batch_size x accum_steps x processes) by `lr_base_scale` when `lr` is unset (timm's
    /// `lr_base`).
    #[arg(long, default_value_t = 0.1, value_parser = range::float(0.0, 1000.0, Ends::AboveMin), allow_negative_numbers = true)]
    pub lr_base: f64,
    /// The global batch `lr_base` is stated for (timm's `lr_base_size`).
    #[arg(long, default_value_t = 256, value_parser = range::int::<usize>(1, 1_048_576), allow_negative_numbers = true)]
    pub lr_base_size: usize,
    /// How `lr_base` scales with the global batch: linear (x batch / lr_base_size) or sqrt (x
    /// sqrt(batch / lr_base_size)) (timm's `lr_base_scale`; unset: timm's rule, sqrt where the
    /// optimizer's name contains "ada" or "lamb", linear otherwise).
    #[arg(long, value_enum)]
    pub lr_base_scale: Option<LrScaling>,
    /// Optimizer, by timm's names (each value described below; `OPTIMIZERS` in
    /// src/train/step/optim/mod.rs holds their defaults). LARS adapts only the groups that decay (by
    /// default conv/fc weights), as timm's does.
    #[arg(long, value_enum, default_value_t = OptKind::Momentum)]
    pub opt: OptKind,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9, value_parser = range::float(0.0, 1.0, Ends::BelowMax), allow_negative_numbers = true)]
    pub momentum: f64,
    /// Nesterov momentum with `opt = "momentum"` (the same as `opt = "sgd"`).
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub nesterov: bool,
    /// Adam/AdamW/LAMB/LARS/RMSpropTF/Adan/LaProp/RAdam/NAdam/AdaBelief epsilon (unset: the
    /// optimizer's default, 1e-8 Adam, AdamW, LARS, Adan, RAdam and NAdam, 1e-6 LAMB, 1e-10
    /// RMSpropTF, 1e-15 LaProp, 1e-16 AdaBelief).
    #[arg(long, value_parser = range::float(0.0, 1.0, Ends::AboveMin), allow_negative_numbers = true)]
    pub opt_eps: Option<f64>,
    /// Adam-family/LAMB/Lion betas beta1,beta2 (unset: the optimizer's default, 0.9,0.999; Lion
    /// 0.9,0.99; ADOPT 0.9,0.9999); Adan takes three, beta1,beta2,beta3 (default 0.98,0.92,0.99).
    #[arg(long, value_delimiter = ',', value_parser = range::float(0.0, 1.0, Ends::BelowMax), allow_negative_numbers = true)]
    pub opt_betas: Option<Vec<f64>>,
    /// LARS trust coefficient (timm's Lars `trust_coeff`; unset: 0.001): a tensor's update is
    /// lr x trust_coeff x |w| / (|g| + weight_decay |w|) times its decayed gradient.
    #[arg(long, value_parser = range::float(0.0, 1000.0, Ends::AboveMin), allow_negative_numbers = true)]
    pub trust_coeff: Option<f64>,
    /// timm's corrected weight decay (`corrected_weight_decay`, its `adamc`, `nadamc`, `adoptc`,
    /// `lionc` optimizers): the decoupled decay of each step scaled by lr / peak lr, so a step
    /// multiplies the weights by 1 - lr^2 / peak_lr x weight_decay (decoupled optimizers only:
    /// sgdw, adamw, cadamw, nadamw, cnadamw, adoptw, cadoptw, lion, clion, lambw, lambcw, clambw,
    /// laprop, claprop; timm's `lapropc` is laprop with it).
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub corrected_weight_decay: bool,
    /// Weight decay of conv/fc weights (BatchNorm parameters, biases and activation coefficients:
    /// see norm_weight_decay, bias_weight_decay, act_weight_decay). AdamW and LAMB decouple it
    /// from the gradient.
    #[arg(long, default_value_t = 1e-4, value_parser = range::float(0.0, 100.0, Ends::Closed), allow_negative_numbers = true)]
    pub weight_decay: f64,
    /// Weight decay of BatchNorm's gammas and betas (torchvision's `norm_weight_decay`; unset: 0,
    /// timm's practice. torchvision's classic recipe decays them like the weights).
    #[arg(long, value_parser = range::float(0.0, 100.0, Ends::Closed), allow_negative_numbers = true)]
    pub norm_weight_decay: Option<f64>,
    /// Weight decay of the classifier's bias (torchvision's `bias_weight_decay`; unset: 0, timm's
    /// practice. torchvision's recipes decay it like the weights. Unlike torchvision's, whose
    /// `bias` key also takes BatchNorm's betas when set, BatchNorm stays under norm_weight_decay:
    /// both torchvision recipes in configs/ are exact either way).
    #[arg(long, value_parser = range::float(0.0, 100.0, Ends::Closed), allow_negative_numbers = true)]
    pub bias_weight_decay: Option<f64>,
    /// Learning-rate multiplier of the PolyCom coefficients (their own parameter group): 0
    /// freezes them at their init (no gradients, none in the clipped norm; with act_init
    /// relu-like, PolyReLU is then exactly ReLU).
    #[arg(long, default_value_t = 1.0, value_parser = range::float(0.0, 1000.0, Ends::Closed), allow_negative_numbers = true)]
    pub act_lr_scale: f64,
    /// Apply weight decay to the PolyCom coefficients too.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub act_weight_decay: bool,
    /// Learning-rate schedule after warmup: cosine (to min_lr), step (x step_gamma every
    /// step_epochs; step_epochs = 1 is torch's ExponentialLR, torchvision's `exponentiallr`), multistep (x step_gamma at each of
    /// decay_milestones), linear (to min_lr; with a warmup, FFCV's triangular schedule), poly ((1 -
    /// t/T)^poly_power to min_lr), tanh (timm's hyperbolic-tangent decay to min_lr), constant
    /// (the peak after the warmup), wsd (warmup-stable-decay: the peak, then a decay to min_lr over
    /// the last decay_epochs) or rsqrt (1/sqrt decay, then that final decay); wsd and rsqrt are
    /// timm's WSDLRScheduler.
    #[serde(alias = "sched")]
    #[arg(long, visible_alias = "sched", value_enum, default_value_t = ScheduleKind::Cosine)]
    pub schedule: ScheduleKind,
    /// Whose schedule semantics: per-step (a new lr every optimizer step: warmup from 0 inside
    /// `epochs`, the decay over the epochs after it), torchvision (its classification
    /// reference's: one change per epoch, warmup from `lr_warmup_decay` x the peak, the decay
    /// over the epochs after it) or timm (train.py's: one change per epoch, warmup from
    /// `warmup_lr`, the decay over all `epochs` counting the warmup ones).
    #[arg(long, value_enum, default_value_t = ScheduleStyle::PerStep)]
    pub schedule_style: ScheduleStyle,
    /// Linear warmup, in epochs (fractions allowed with the per-step style), inside `epochs`
    /// (before them with timm's `warmup_prefix`).
    #[arg(long, default_value_t = 0.0, value_parser = range::float(0.0, 100_000.0, Ends::Closed), allow_negative_numbers = true)]
    pub warmup_epochs: f64,
    /// timm style: the warmup's first learning rate, absolute (timm's `warmup_lr`; unset: timm's
    /// default 1e-5).
    #[arg(long, value_parser = range::float(0.0, 1000.0, Ends::Closed), allow_negative_numbers = true)]
    pub warmup_lr: Option<f64>,
    /// torchvision style: the warmup's first learning rate as a fraction of the peak
    /// (torchvision's `lr_warmup_decay`, LinearLR's start factor; unset: its default 0.01).
    #[arg(long, value_parser = range::float(0.0, 1.0, Ends::AboveMin), allow_negative_numbers = true)]
    pub lr_warmup_decay: Option<f64>,
    /// timm style: the decay starts after the warmup epochs, which are added to the run (timm's
    /// `warmup_prefix`).
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub warmup_prefix: bool,
    /// timm style: change the learning rate every optimizer step instead of every epoch (timm's
    /// `sched_on_updates`).
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub sched_on_updates: bool,
    /// Epochs trained at `min_lr` after `epochs` (cosine, linear, poly and tanh schedules; timm's
    /// `cooldown_epochs`).
    #[arg(long, default_value_t = 0, value_parser = range::int::<usize>(0, 100_000), allow_negative_numbers = true)]
    pub cooldown_epochs: usize,
    /// The cosine, linear, poly and tanh schedules' final learning rate (a floor for step and
    /// multistep, except in the timm style, as timm).
    #[arg(long, default_value_t = 0.0, value_parser = range::float(0.0, 1000.0, Ends::Closed), allow_negative_numbers = true)]
    pub min_lr: f64,
    /// Step schedule: decay every this many epochs...
    #[arg(long, default_value_t = 30, value_parser = range::int::<usize>(1, 100_000), allow_negative_numbers = true)]
    pub step_epochs: usize,
    /// ... by this factor (also multistep's factor; timm's `decay_rate`).
    #[serde(alias = "decay_rate")]
    #[arg(long, visible_alias = "decay-rate", default_value_t = 0.1, value_parser = range::float(0.0, 1.0, Ends::AboveMin), allow_negative_numbers = true)]
    pub step_gamma: f64,
    /// Multistep schedule: the epochs at which the learning rate is multiplied by step_gamma
    /// (Goyal et al.'s 90-epoch ResNet-50: 30,60,80). Per-step and torchvision styles count them
    /// after the warmup, as torch's MultiStepLR in a SequentialLR does; the timm style counts them
    /// from epoch 0 and applies milestone m from epoch m - 1 on, as timm's MultiStepLRScheduler
    /// does (timm's `decay_milestones`).
    #[arg(long, value_delimiter = ',', default_values_t = [30, 60, 80], value_parser = range::int::<usize>(0, 100_000), allow_negative_numbers = true)]
    pub decay_milestones: Vec<usize>,
    /// Poly schedule's power (timm's `--sched poly` takes it from `decay_rate`, default 0.1;
    /// torch's PolynomialLR: `power`, default 1).
    #[arg(long, default_value_t = 1.0, value_parser = range::float(0.0, 100.0, Ends::AboveMin), allow_negative_numbers = true)]
    pub poly_power: f64,
    /// torchvision style: the warmup's shape, linear (LinearLR from lr_warmup_decay x the peak) or
    /// constant (ConstantLR: lr_warmup_decay x the peak throughout) (torchvision's
    /// `lr_warmup_method`; unset: linear).
    #[arg(long, value_enum)]
    pub lr_warmup_method: Option<WarmupMethod>,
    /// timm style, cosine/tanh/poly/linear: the learning rate restarts every cycle; this many cycles
    /// (timm's `lr_cycle_limit`; unset: 1, no restart). The run trains them all.
    #[arg(long, value_parser = range::int::<usize>(1, 1000), allow_negative_numbers = true)]
    pub lr_cycle_limit: Option<usize>,
    /// timm style: each cycle is this many times longer than the last (timm's `lr_cycle_mul`;
    /// unset: 1).
    #[arg(long, value_parser = range::float(0.0, 100.0, Ends::AboveMin), allow_negative_numbers = true)]
    pub lr_cycle_mul: Option<f64>,
    /// timm style: each cycle's peak is the last one's times this (timm's `lr_cycle_decay`;
    /// unset: timm train.py's 0.5).
    #[arg(long, value_parser = range::float(0.0, 10.0, Ends::AboveMin), allow_negative_numbers = true)]
    pub lr_cycle_decay: Option<f64>,
    /// timm style, cosine/poly/linear: k-decay (Zhang et al. 2020): the decay follows t^k / T^k instead of
    /// t / T (timm's `lr_k_decay`; unset: 1).
    #[arg(long, value_parser = range::float(0.0, 100.0, Ends::AboveMin), allow_negative_numbers = true)]
    pub lr_k_decay: Option<f64>,
    /// timm style: learning-rate noise from this fraction of `epochs` on, or between two
    /// fractions (`0.4,0.9`): lr x (1 + n), n ~ N(0, lr_noise_std) redrawn until |n| <
    /// lr_noise_pct, seeded by `seed` + the schedule's tick, drawn by torch's own generator, so
    /// the values are timm's (timm's `lr_noise`).
    #[arg(long, value_delimiter = ',', value_parser = range::float(0.0, 100_000.0, Ends::Closed), allow_negative_numbers = true)]
    pub lr_noise: Option<Vec<f64>>,
    /// timm style: the noise's bound (timm's `lr_noise_pct`; unset: 0.67).
    #[arg(long, value_parser = range::float(0.0, 100.0, Ends::AboveMin), allow_negative_numbers = true)]
    pub lr_noise_pct: Option<f64>,
    /// timm style: the noise's standard deviation (timm's `lr_noise_std`; unset: 1).
    #[arg(long, value_parser = range::float(0.0, 100.0, Ends::Closed), allow_negative_numbers = true)]
    pub lr_noise_std: Option<f64>,
    /// wsd / rsqrt: the final decay's length, a fraction in (0, 1) of the epochs after the warmup
    /// or a number of epochs >= 1 (timm's `decay_epochs` for these; unset: 0.2).
    #[arg(long, value_parser = range::float(0.0, 100_000.0, Ends::AboveMin), allow_negative_numbers = true)]
    pub decay_epochs: Option<f64>,
    /// wsd / rsqrt: the final decay's shape, linear, 1-sqrt, cosine, power or exp (timm's
    /// `lr_decay_fn`; unset: 1-sqrt for wsd, linear for rsqrt).
    #[arg(long, value_enum)]
    pub lr_decay_fn: Option<DecayFn>,
    /// rsqrt: the stable phase is (1 + t / timescale)^-1/2, t and the timescale in epochs after
    /// the warmup (timm's `lr_stable_timescale`; unset: warmup_epochs).
    #[arg(long, value_parser = range::float(0.0, 100_000.0, Ends::AboveMin), allow_negative_numbers = true)]
    pub lr_stable_timescale: Option<f64>,
    /// Micro-steps per optimizer step (gradient accumulation).
    #[serde(alias = "grad_accum_steps")]
    #[arg(long, visible_alias = "grad-accum-steps", default_value_t = 1, value_parser = range::int::<usize>(1, 4096), allow_negative_numbers = true)]
    pub accum_steps: usize,
    /// Clip the gradients at this value (0: off): their global norm, each value, or the AGC clip
    /// factor, by clip_mode.
    #[arg(long, default_value_t = 0.0, value_parser = range::float(0.0, 1e6, Ends::Closed), allow_negative_numbers = true)]
    pub clip_grad: f64,
    /// How clip_grad clips (timm's `clip_mode`): norm (the global gradient norm at most clip_grad,
    /// torch's clip_grad_norm_), value (each gradient value within ±clip_grad, clip_grad_value_)
    /// or agc (adaptive gradient clipping, NFNets: each output unit's gradient norm at most
    /// clip_grad x that unit's weight norm, the classifier left out, as timm's train.py; typical
    /// clip_grad 0.01-0.16).
    #[arg(long, value_enum, default_value_t = ClipMode::Norm)]
    pub clip_mode: ClipMode,

    // ---- Loss ----
    /// Label smoothing (alias: label_smoothing).
    #[serde(alias = "label_smoothing")]
    #[arg(long, alias = "label-smoothing", default_value_t = 0.0, value_parser = range::float(0.0, 1.0, Ends::BelowMax), allow_negative_numbers = true)]
    pub smoothing: f64,
    /// timm's BinaryCrossEntropy (one-vs-all sigmoid; ResNet Strikes Back) instead of softmax
    /// cross-entropy.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub bce_loss: bool,
    /// BCE: targets above this become 1, the rest 0 (RSB: 0.2).
    #[arg(long, value_parser = range::float(0.0, 1.0, Ends::BelowMax), allow_negative_numbers = true)]
    pub bce_target_thresh: Option<f64>,
    /// BCE: sum the loss over the classes, then average over the batch (timm's `bce_sum`;
    /// false: the mean over every sample and class, 1/classes of the sum).
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub bce_sum: bool,
    /// BCE: the weight of the positive term of every class (timm's `bce_pos_weight`; unset: 1).
    #[arg(long, value_parser = range::float(0.0, 1e6, Ends::AboveMin), allow_negative_numbers = true)]
    pub bce_pos_weight: Option<f64>,
    /// Mixup's Beta alpha (timm's `mixup`; 0: off). Batches are mixed with their reverse on the
    /// device; label smoothing goes into the mixed targets.
    #[arg(long, default_value_t = 0.0, value_parser = range::float(0.0, 100.0, Ends::Closed), allow_negative_numbers = true)]
    pub mixup: f64,
    /// CutMix's Beta alpha (timm's `cutmix`; 0: off).
    #[arg(long, default_value_t = 0.0, value_parser = range::float(0.0, 100.0, Ends::Closed), allow_negative_numbers = true)]
    pub cutmix: f64,
    /// CutMix box side as fractions min,max of the image's (timm's `cutmix_minmax`; overrides
    /// the alpha).
    #[arg(long, value_delimiter = ',', value_parser = range::float(0.0, 1.0, Ends::AboveMin), allow_negative_numbers = true)]
    pub cutmix_minmax: Option<Vec<f64>>,
    /// Probability that a batch is mixed (timm's `mixup_prob`).
    #[arg(long, default_value_t = 1.0, value_parser = range::float(0.0, 1.0, Ends::Closed), allow_negative_numbers = true)]
    pub mixup_prob: f64,
    /// Probability of CutMix rather than Mixup when both are on (timm's `mixup_switch_prob`).
    #[arg(long, default_value_t = 0.5, value_parser = range::float(0.0, 1.0, Ends::Closed), allow_negative_numbers = true)]
    pub mixup_switch_prob: f64,
    /// How Mixup/CutMix draws (timm's `mixup_mode`): batch (one draw per batch), pair (per pair
    /// of samples i and N-1-i) or elem (per sample, mixed with sample N-1-i).
    #[arg(long, value_enum, default_value_t = crate::data::mixup::MixMode::Batch)]
    pub mixup_mode: crate::data::mixup::MixMode,
    /// Turn Mixup/CutMix off from this epoch on (0: never; timm's `mixup_off_epoch`); the
    /// targets stay label-smoothed.
    #[arg(long, default_value_t = 0, value_parser = range::int::<usize>(0, 100_000), allow_negative_numbers = true)]
    pub mixup_off_epoch: usize,
    /// Random erasing probability per image (timm's `reprob`; 0: off), on the normalised batch.
    #[arg(long, default_value_t = 0.0, value_parser = range::float(0.0, 1.0, Ends::Closed), allow_negative_numbers = true)]
    pub reprob: f64,
    /// What fills an erased box (timm's `remode`): pixel (normal per pixel), rand (per channel),
    /// const (zeros).
    #[arg(long, value_enum, default_value_t = crate::data::erasing::EraseMode::Pixel)]
    pub remode: crate::data::erasing::EraseMode,
    /// Boxes erased per image (timm's `recount`).
    #[arg(long, default_value_t = 1, value_parser = range::int::<usize>(1, 100), allow_negative_numbers = true)]
    pub recount: usize,

    // ---- Weight averaging ----
    /// Keep an exponential moving average of the weights (timm's ModelEmaV3), evaluated every
    /// epoch next to the raw model.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub model_ema: bool,
    /// EMA decay per update.
    #[arg(long, default_value_t = 0.9998, value_parser = range::float(0.0, 1.0, Ends::BelowMax), allow_negative_numbers = true)]
    pub model_ema_decay: f64,
    /// Warm the decay up: min(decay, 1 - (1 + step)^(-2/3)) (timm's use_warmup).
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub model_ema_warmup: bool,
    /// Update the EMA every N optimizer steps (with the decay raised to the power N).
    #[arg(long, default_value_t = 1, value_parser = range::int::<usize>(1, 1_000_000), allow_negative_numbers = true)]
    pub model_ema_every: usize,
    /// BN running statistics: copy (from the live model; timm's exclude_buffers) or average.
    #[arg(long, value_enum, default_value_t = EmaBuffers::Copy)]
    pub model_ema_buffers: EmaBuffers,
    /// Whose EMA: timm (ModelEmaV3: `model_ema_decay` per optimizer step) or torchvision (its
    /// reference's ExponentialMovingAverage: the decay adjusted to 1 - min(1, (1 - decay) x
    /// global batch x model_ema_every / epochs) per update every model_ema_every steps, buffers
    /// averaged, the average restarted at each update of the lr warmup).
    #[arg(long, value_enum, default_value_t = EmaStyle::Timm)]
    pub model_ema_style: EmaStyle,

    // ---- Precision and device ----
    /// fp32, tf32 (CUDA matmuls/convolutions), bf16 or fp16 (autocast; fp16 with a loss scaler).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// NHWC memory format for the model and batches.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub channels_last: bool,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Seeds the initial weights, the data order and the augmentations.
    #[arg(long, default_value_t = 0, value_parser = range::int::<u64>(0, i64::MAX as u64), allow_negative_numbers = true)]
    pub seed: u64,
    /// libtorch intra-op threads on CPU (0: libtorch's default).
    #[arg(long, default_value_t = 0, value_parser = range::int::<usize>(0, 1024), allow_negative_numbers = true)]
    pub torch_threads: usize,
    /// Data-parallel jobs (torchrun, SLURM, `resnet-train launch`): seconds a rank waits for the
    /// others at the rendezvous and in each collective before it fails (a rank died or hangs).
    #[arg(long, default_value_t = 1800, value_parser = range::int::<u64>(1, 604_800), allow_negative_numbers = true)]
    pub dist_timeout: u64,
    /// Data-parallel collectives: auto (NCCL on CUDA, Gloo on CPU), gloo or nccl. Naming one makes
    /// a world of one (`launch --nproc-per-node 1`) join a process group too (auto: a plain
    /// process).
    #[arg(long, value_enum, default_value_t = crate::dist::DistBackend::Auto)]
    pub dist_backend: crate::dist::DistBackend,
    /// Overlap the gradient all-reduce with backward, bucket by bucket as gradients become
    /// ready (DDP's reducer); false: one bucketed all-reduce after backward. Same values.
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub dist_overlap: bool,
    /// Data-parallel runs without sync_bn: the BatchNorm running statistics every rank evaluates
    /// and saves (timm's `dist_bn`): broadcast (rank 0's, as DDP's buffer broadcast and
    /// torchvision) or reduce (the mean over the ranks, timm's default).
    #[arg(long, value_enum, default_value_t = crate::dist::DistBn::Broadcast)]
    pub dist_bn: crate::dist::DistBn,

    // ---- Evaluation, checkpoints, logs ----
    /// Evaluate every N epochs (and after the last).
    #[arg(long, default_value_t = 1, value_parser = range::int::<usize>(1, 100_000), allow_negative_numbers = true)]
    pub eval_every: usize,
    /// Keep this many most recent epoch checkpoints (besides last and best).
    #[arg(long, default_value_t = 2, value_parser = range::int::<usize>(0, 100_000), allow_negative_numbers = true)]
    pub keep_last: usize,
    /// Also keep this many best epoch checkpoints by eval_metric (timm's `checkpoint_hist`,
    /// its CheckpointSaver's top-N; `resnet-train average` averages them). Each epoch-N file
    /// records its evaluation.
    #[arg(long, default_value_t = 0, value_parser = range::int::<usize>(0, 1000), allow_negative_numbers = true)]
    pub checkpoint_hist: usize,
    /// What ranks evaluated epochs: top1, top5 or loss (timm's `eval_metric`). Picks
    /// best.safetensors (the model or its EMA, whichever ranks higher) and the checkpoints
    /// checkpoint_hist keeps.
    #[arg(long, value_enum, default_value_t = EvalMetric::Top1)]
    pub eval_metric: EvalMetric,
    /// Also write the `last` checkpoint every N optimizer steps (0: only at epoch ends).
    #[serde(alias = "recovery_interval")]
    #[arg(long, visible_alias = "recovery-interval", default_value_t = 0, value_parser = range::int::<usize>(0, 1_000_000_000), allow_negative_numbers = true)]
    pub checkpoint_every: usize,
    /// Console line every N steps (logs without a terminal).
    #[serde(alias = "log_interval")]
    #[arg(long, visible_alias = "log-interval", default_value_t = 50, value_parser = range::int::<usize>(1, 1_000_000_000), allow_negative_numbers = true)]
    pub log_every: usize,
    /// Stop after this many optimizer steps in total (0: no limit); the run can be resumed.
    /// Per invocation: not written to the run's resolved config.toml.
    #[arg(long, default_value_t = 0, value_parser = range::int::<usize>(0, 1_000_000_000_000), allow_negative_numbers = true)]
    pub max_steps: usize,
    /// Stop where a run of this many epochs would start its final wsd / rsqrt decay (a study's
    /// branch point; set by `study`, not a flag, never saved).
    #[arg(skip)]
    #[serde(skip)]
    pub stop_before_decay_of: Option<usize>,
    /// Run folder name (default: arch-act-order-precision-time).
    #[serde(alias = "experiment")]
    #[arg(long, visible_alias = "experiment")]
    pub name: Option<String>,
    /// Parent folder of run folders.
    #[arg(long, default_value = "runs")]
    pub output: PathBuf,

    // ---- Stability: monitors, guards, remedies ----
    /// Record per-site activation statistics (largest absolute output, non-finite count) every N
    /// steps (0: off).
    #[arg(long, default_value_t = 50, value_parser = range::int::<usize>(0, 1_000_000_000), allow_negative_numbers = true)]
    pub monitor_every: usize,
    /// Stop with a diagnosis after this many consecutive skipped (non-finite) steps (0: never).
    #[arg(long, default_value_t = 25, value_parser = range::int::<usize>(0, 1_000_000_000), allow_negative_numbers = true)]
    pub max_consecutive_skips: usize,
    /// Stop with a diagnosis when the fp16 loss scale falls below this.
    #[arg(long, default_value_t = 1e-4, value_parser = range::float(0.0, 1e6, Ends::Closed), allow_negative_numbers = true)]
    pub min_loss_scale: f64,
    /// Instead of stopping, the divergence guard applies the next of these remedies (clamp:C,
    /// clip:C, act-fp32, act-lowp; comma-separated), restores the last snapshot and continues.
    #[arg(long, value_delimiter = ',')]
    pub divergence_remedies: Vec<Remedy>,
    /// Loss-spike guard: roll back when the loss exceeds this x its running mean (0: off).
    #[arg(long, default_value_t = 3.0, value_parser = range::float(0.0, 1e6, Ends::Closed), allow_negative_numbers = true)]
    pub spike_factor: f64,
    /// Learning-rate multiplier applied at each rollback.
    #[arg(long, default_value_t = 0.5, value_parser = range::float(0.0, 1.0, Ends::AboveMin), allow_negative_numbers = true)]
    pub spike_lr_factor: f64,
    /// Rollbacks allowed before the spike guard stops the run.
    #[arg(long, default_value_t = 3, value_parser = range::int::<usize>(0, 1_000_000), allow_negative_numbers = true)]
    pub max_rollbacks: usize,
    /// Steps between in-memory snapshots for rollbacks.
    #[arg(long, default_value_t = 100, value_parser = range::int::<usize>(1, 1_000_000_000), allow_negative_numbers = true)]
    pub snapshot_every: usize,
    /// Steps before the loss's running mean is trusted.
    #[arg(long, default_value_t = 50, value_parser = range::int::<usize>(0, 1_000_000_000), allow_negative_numbers = true)]
    pub spike_warmup: usize,
    /// Testing aid: multiply the loss the spike guard sees at this step by 1000 (fault injection).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[arg(long, hide = true, value_parser = range::int::<usize>(0, 1_000_000_000_000), allow_negative_numbers = true)]
    pub inject_spike_at: Option<usize>,
}

impl Default for TrainConfig {
    /// The defaults declared on the fields: the parse of an empty command line.
    fn default() -> Self {
        let m = Self::command().try_get_matches_from(["defaults"]).expect("the declared defaults parse");
        Self::from_arg_matches(&m).expect("the declared defaults are valid")
    }
}

/// Keys that describe one invocation, not the run: never written to the run's config.toml.
const PER_INVOCATION: [&str; 1] = ["max_steps"];

/// Keys a resumed run may change: how it runs, not what it computes up to now (`epochs` extends
/// or shortens the schedule from here, as do wsd's final-decay keys; the guards' thresholds and
/// remedies only act on trouble).
/// Any other key given with `--resume` that differs from the run's config.toml is refused.
pub const RESUMABLE: [&str; 33] = [
    // The dataset may move (a cluster job staging it to local disk); the trainer then checks that
    // its classes are the run's and warns if its size changed.
    "data",
    "val_data",
    "train_split",
    "val_split",
    // How remote shards arrive, not which samples a batch holds.
    "prefetch_shards",
    "shard_cache",
    "shard_cache_gb",
    // The schedule from here on: a longer or shorter run, or a wsd branch (`fork`) that decays
    // at another budget.
    "epochs",
    "cooldown_epochs",
    "decay_epochs",
    "lr_decay_fn",
    "max_steps",
    "workers",
    "torch_threads",
    "dist_timeout",
    "dist_backend",
    "device",
    "log_every",
    "checkpoint_every",
    "keep_last",
    "checkpoint_hist",
    "eval_every",
    "monitor_every",
    "max_consecutive_skips",
    "min_loss_scale",
    "divergence_remedies",
    "spike_factor",
    "spike_lr_factor",
    "max_rollbacks",
    "snapshot_every",
    "spike_warmup",
    "max_bad_fraction",
    "inject_spike_at",
];

/// The `resnet-train train` command line: a config file or a run to resume, and any config key as
/// a flag.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TrainArgs {
    /// A TOML config file (see configs/recipes/): any key below.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in this folder from its `last` checkpoint.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Start the run `--output/--name`, or continue it if that folder holds it (the same command
    /// serves a job's first start and every requeue): the config must equal the saved run's on
    /// every key that defines it (those a resume may change aside), else it is refused, naming
    /// the keys. Needs --name.
    #[arg(long, conflicts_with = "resume")]
    pub auto_resume: bool,
    /// Do everything a run does before its first step (resolve the config, scan and check the
    /// data, build the model on the device), time a few steps on the run's batches, print the
    /// resolved experiment with an estimate per epoch and for the run, and exit: nothing is
    /// written. Exits 0 only where the run would start.
    #[arg(long)]
    pub dry_run: bool,
    /// Optimizer steps `--dry-run` times (after one warm-up step).
    #[arg(long, default_value_t = 3, value_parser = range::int::<usize>(1, 1000))]
    pub dry_run_steps: usize,
    #[command(flatten)]
    pub overrides: Overrides,
}

/// The config keys given on a command line, with their parsed values.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    values: Option<Box<TrainConfig>>,
    given: Vec<String>,
}

impl clap::Args for Overrides {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        TrainConfig::augment_args(cmd)
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        TrainConfig::augment_args_for_update(cmd)
    }
}

impl FromArgMatches for Overrides {
    fn from_arg_matches(m: &ArgMatches) -> std::result::Result<Self, clap::Error> {
        let values = TrainConfig::from_arg_matches(m)?;
        let given = TrainConfig::keys()
            .into_iter()
            .filter(|k| m.value_source(k) == Some(ValueSource::CommandLine))
            .collect();
        Ok(Self { values: Some(Box::new(values)), given })
    }
    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> std::result::Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Overrides {
    /// Parses flags as the command line would (`["--lr", "0.5", "--opt", "adamw"]`).
    pub fn parse<S: AsRef<str>>(flags: &[S]) -> Result<Self> {
        let argv = std::iter::once("flags").chain(flags.iter().map(|s| s.as_ref()));
        let m = TrainConfig::command().try_get_matches_from(argv).map_err(|e| Error::Usage(e.to_string()))?;
        Self::from_arg_matches(&m).map_err(|e| Error::Usage(e.to_string()))
    }

    /// The keys given, in declaration order.
    pub fn keys(&self) -> &[String] {
        &self.given
    }

    /// `base` with the given keys replaced by the flags' values.
    pub fn apply(&self, base: &TrainConfig) -> Result<TrainConfig> {
        let Some(values) = self.values.as_deref().filter(|_| !self.given.is_empty()) else {
            return Ok(base.clone());
        };
        let mut table = to_table(base)?;
        let flags = to_table(values)?;
        for k in &self.given {
            match flags.get(k) {
                Some(v) => table.insert(k.clone(), v.clone()),
                None => table.remove(k),
            };
        }
        table.try_into().map_err(|e| Error::Usage(format!("bad flag value: {e}")))
    }
}

fn to_table(c: &TrainConfig) -> Result<toml::Table> {
    toml::Table::try_from(c).map_err(|e| Error::Usage(format!("cannot serialise the config: {e}")))
}

/// A run folder's saved config and its path; a folder without one is not a run.
pub fn read_run(run_dir: &Path) -> Result<(TrainConfig, PathBuf)> {
    let path = run_dir.join("config.toml");
    if !path.is_file() {
        return Err(Error::Usage(format!(
            "--resume {}: not a run folder (it has no config.toml)",
            run_dir.display()
        )));
    }
    Ok((read_file(&path)?, path))
}

pub fn read_file(path: &Path) -> Result<TrainConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    // A value of the wrong type or sign (`seed = -1`) is a usage error (exit 2), naming the file.
    let bad = |e: &dyn std::fmt::Display| Error::Usage(format!("{}: bad config: {e}", path.display()));
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| bad(&e))?;
    if !table.contains_key("lr_scaling") {
        // Parsed from the text, so that an error gives the line.
        return toml::from_str(&text).map_err(|e| bad(&e));
    }
    migrate_lr_scaling(&mut table).map_err(|e| bad(&e))?;
    table.try_into().map_err(|e| bad(&e))
}

/// Files written before `lr` was absolute (timm's meaning) gave `lr` per 256 images, scaled to the
/// global batch by `lr_scaling`: read as the same learning rate in today's keys, so that a saved
/// run resumes with the learning rate it started with.
pub fn migrate_lr_scaling(table: &mut toml::Table) -> std::result::Result<(), String> {
    let Some(rule) = table.remove("lr_scaling") else { return Ok(()) };
    match rule.as_str() {
        // `lr` was already absolute.
        Some("none") => Ok(()),
        Some("linear" | "sqrt") => {
            let lr = table.remove("lr").unwrap_or(toml::Value::Float(0.1));
            table.insert("lr_base".into(), lr);
            table.insert("lr_base_size".into(), toml::Value::Integer(256));
            table.insert("lr_base_scale".into(), rule);
            Ok(())
        }
        _ => Err(format!(
            "lr_scaling = {rule}: must be linear, sqrt or none (an older key: `lr` is now absolute, and \
             lr_base / lr_base_size / lr_base_scale give a learning rate scaled to the global batch)"
        )),
    }
}

impl TrainConfig {
    /// The keys' command: every key as a flag with its doc and default.
    pub fn command() -> clap::Command {
        <Self as clap::Args>::augment_args(clap::Command::new("resnet-train").no_binary_name(false))
    }

    /// Every config key, in declaration order.
    pub fn keys() -> Vec<String> {
        Self::command().get_arguments().map(|a| a.get_id().to_string()).collect()
    }

    /// defaults < file < flags; then validated.
    pub fn resolve(args: &TrainArgs) -> Result<Self> {
        let base = match &args.config {
            Some(p) => read_file(p)?,
            None => TrainConfig::default(),
        };
        let c = args.overrides.apply(&base)?;
        if c.global_batch.is_some() && args.overrides.keys().iter().any(|k| k == "batch_size") {
            return Err(Error::Usage(format!(
                "--batch-size is derived from --global-batch {} (per device: global / (processes x \
                 accumulation)): give --global-batch, --accum-steps or --max-device-batch instead",
                c.global_batch.unwrap_or_default()
            )));
        }
        c.validate()?;
        Ok(c)
    }

    /// The saved config of a run, with the flags given now applied on top. Only `RESUMABLE` keys
    /// may change (e.g. `--epochs`, `--workers`); others are refused, naming them, before any file
    /// is touched.
    pub fn resume(run_dir: &Path, args: &TrainArgs) -> Result<Self> {
        let (saved, saved_path) = read_run(run_dir)?;
        let c = args.overrides.apply(&saved)?;
        c.validate()?;
        c.check_resumable_from(&saved, &saved_path)?;
        Ok(c)
    }

    /// The keys whose values differ between `self` and `other`, with both values as TOML.
    pub fn changes_from(&self, other: &TrainConfig) -> Vec<(String, String, String)> {
        let (Ok(a), Ok(b)) = (to_table(other), to_table(self)) else { return Vec::new() };
        let show = |v: Option<&toml::Value>| v.map_or("unset".to_string(), |v| v.to_string());
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| (k.clone(), show(a.get(k)), show(b.get(k))))
            .collect()
    }

    /// Fails, naming the keys, when `self` changes a key of the run `saved` that a resumed run
    /// must keep.
    pub fn check_resumable_from(&self, saved: &TrainConfig, saved_path: &Path) -> Result<()> {
        let refused: Vec<String> = self
            .changes_from(saved)
            .into_iter()
            .filter(|(k, _, _)| !RESUMABLE.contains(&k.as_str()))
            .map(|(k, old, new)| format!("--{} ({old} -> {new})", k.replace('_', "-")))
            .collect();
        if refused.is_empty() {
            return Ok(());
        }
        Err(Error::Usage(format!(
            "--resume keeps the run's settings; these would change it: {}. The run's settings are in {}; start a new run (another --name) to change them. A resumed run may change only: {}",
            refused.join(", "),
            saved_path.display(),
            RESUMABLE.join(", ")
        )))
    }

    /// The config a run of `world` processes trains with: with `global_batch` set, `batch_size`
    /// is its share per device and micro-step, with `accum_steps` raised where `max_device_batch`
    /// says the share would not fit; refused where no accumulation divides it, naming the
    /// process counts and global batches that would.
    pub fn for_world(&self, world: usize) -> Result<TrainConfig> {
        let Some(global) = self.global_batch else { return Ok(self.clone()) };
        let world = world.max(1);
        let accum = self.accum_steps.max(1);
        let fits = |a: usize| global % (world * a) == 0;
        let small_enough = |a: usize| self.max_device_batch.is_none_or(|m| global / (world * a) <= m);
        // The configured accumulation, or with max_device_batch the least one from it that divides
        // the global batch and fits.
        let last = if self.max_device_batch.is_some() { (global / world).max(accum) } else { accum };
        if let Some(a) = (accum..=last).find(|&a| fits(a) && small_enough(a)) {
            return Ok(TrainConfig { batch_size: global / (world * a), accum_steps: a, ..self.clone() });
        }
        if fits(accum) {
            let m = self.max_device_batch.unwrap_or(0);
            return Err(Error::Usage(format!(
                "--global-batch {global} on {world} process(es) cannot keep each device's batch within \
                 --max-device-batch {m} with any accumulation that divides it"
            )));
        }
        let per_step = world * accum;
        let worlds: Vec<String> =
            (1..=global / accum).filter(|w| global % (w * accum) == 0).map(|w| w.to_string()).collect();
        let (below, above) = (global / per_step * per_step, global.div_ceil(per_step) * per_step);
        Err(Error::Usage(format!(
            "--global-batch {global} is not divisible by {world} process(es) x --accum-steps {accum}: use {} \
             process(es), or --global-batch {}{}",
            worlds.join(", "),
            if below > 0 { format!("{below} or ") } else { String::new() },
            above
        )))
    }

    /// The EMA's settings for `world` processes and `steps_per_epoch` optimizer steps per epoch.
    pub fn ema_config(&self, world: usize, steps_per_epoch: usize) -> EmaConfig {
        let every = self.model_ema_every.max(1);
        match self.model_ema_style {
            EmaStyle::Timm => EmaConfig {
                decay: self.model_ema_decay,
                warmup: self.model_ema_warmup,
                every,
                buffers: self.model_ema_buffers,
                per_update: false,
                restart_until: 0,
            },
            EmaStyle::Torchvision => {
                // torchvision's train.py: adjust = world x batch x model_ema_steps / epochs.
                let global = self.batch_size * self.accum_steps.max(1) * world.max(1);
                let adjust = (global * every) as f64 / self.epochs.max(1) as f64;
                let alpha = ((1.0 - self.model_ema_decay) * adjust).min(1.0);
                EmaConfig {
                    decay: 1.0 - alpha,
                    warmup: false,
                    every,
                    buffers: EmaBuffers::Average,
                    per_update: true,
                    restart_until: (self.warmup_epochs * steps_per_epoch as f64).round() as usize,
                }
            }
        }
    }

    /// The peak learning rate at a global batch of `global_batch` images: `lr` when given, else
    /// `lr_base` scaled from `lr_base_size` images (timm train.py's rule).
    pub fn peak_lr(&self, global_batch: usize) -> f64 {
        self.lr.unwrap_or_else(|| self.lr_base_rule().scale(self.lr_base, self.lr_base_size, global_batch))
    }

    /// How `lr_base` scales: `lr_base_scale`, else timm's choice for the optimizer.
    pub fn lr_base_rule(&self) -> LrScaling {
        self.lr_base_scale.unwrap_or_else(|| LrScaling::timm_default(&self.opt.name()))
    }

    pub fn model(&self, num_classes: i64) -> ResNetConfig {
        ResNetConfig {
            arch: self.arch,
            act: ActConfig {
                kind: self.act,
                order: self.order,
                axis: self.norm_axis,
                init: self.act_init,
                clamp: self.act_clamp,
                fp32: self.act_fp32,
                out_lowp: self.act_out_lowp,
                implementation: self.act_impl,
            },
            num_classes,
            zero_init_residual: self.zero_init_residual,
            small_stem: self.small_stem,
            drop_path_rate: self.drop_path,
            drop_block_rate: self.drop_block,
            drop_rate: self.drop,
            blurpool: self.blurpool,
            bn_splits: if self.split_bn { self.aug_splits } else { 0 },
            bn_momentum: self.bn_momentum,
            bn_eps: self.bn_eps,
        }
    }

    /// Mixup/CutMix as configured (None when both are off).
    pub fn mixup_config(&self) -> Option<crate::data::mixup::MixupConfig> {
        let m = crate::data::mixup::MixupConfig {
            mixup_alpha: self.mixup,
            cutmix_alpha: self.cutmix,
            cutmix_minmax: self.cutmix_minmax.as_ref().filter(|v| v.len() == 2).map(|v| (v[0], v[1])),
            prob: self.mixup_prob,
            switch_prob: self.mixup_switch_prob,
            label_smoothing: self.smoothing,
            mode: self.mixup_mode,
        };
        m.active().then_some(m)
    }

    /// The train images' crop: RandomResizedCrop and flips, or with `no_aug` timm's
    /// `transforms_noaug_train` (resize, center crop).
    pub fn train_transform(&self) -> crate::data::transform::Transform {
        use crate::data::{resize::Filter, transform::Transform};
        if self.no_aug {
            let filter = self.train_interpolation.fixed().unwrap_or(Filter::Bilinear);
            return Transform::Eval { size: self.train_size, resize: self.train_size, filter };
        }
        Transform::Train {
            size: self.train_size,
            scale: (self.rrc_scale_min, 1.0),
            ratio: (self.ratio[0], self.ratio[1]),
            hflip: self.hflip,
            vflip: self.vflip,
            filter: self.train_interpolation,
        }
    }

    /// The decode workers' augmentation for `size`-pixel crops (None when off, or `no_aug`).
    pub fn augment(&self, size: usize) -> Result<Option<crate::data::augment::Augment>> {
        use crate::data::augment::{parse_jitter, Augment, Policy};
        if self.no_aug {
            return Ok(None);
        }
        let policy = Policy::parse(self.aa.as_deref().unwrap_or(""))?;
        let jitter = parse_jitter(self.color_jitter.as_deref().unwrap_or(&[]))?;
        let a = Augment::new(policy, jitter, size)
            .with_probabilities(self.color_jitter_prob, self.grayscale_prob, self.gaussian_blur_prob)
            .with_timm_filter(self.train_interpolation.fixed());
        Ok((!a.is_identity()).then_some(a))
    }

    /// Progressive resizing as configured (None when off).
    pub fn res_schedule(&self) -> Option<crate::data::transform::ResSchedule> {
        (self.min_res > 0).then_some(crate::data::transform::ResSchedule {
            min_res: self.min_res,
            max_res: self.train_size,
            start_ramp: self.start_ramp,
            end_ramp: self.end_ramp,
        })
    }

    /// The input normalization (validate() checks three values each, std > 0).
    pub fn normalization(&self) -> crate::data::transform::Normalization {
        let three = |v: &[f64], default: [f64; 3]| v.try_into().unwrap_or(default);
        let d = crate::data::transform::Normalization::default();
        crate::data::transform::Normalization {
            mean: three(&self.mean, d.mean),
            std: three(&self.std, d.std),
        }
    }

    /// Random erasing as configured (None when off).
    pub fn erasing_config(&self) -> Option<crate::data::erasing::ErasingConfig> {
        let e =
            crate::data::erasing::ErasingConfig { prob: self.reprob, mode: self.remode, count: self.recount };
        (self.reprob > 0.0 && !self.no_aug).then_some(e)
    }

    /// Applies a stability remedy (an ablation cell's variant, or the divergence guard's choice).
    pub fn apply_remedy(&mut self, r: Remedy) {
        let mut live = self.live();
        live.apply(r);
        (self.act_clamp, self.act_fp32, self.clip_grad, self.clip_mode) =
            (live.act_clamp, live.act_fp32, live.clip_grad, live.clip_mode);
    }

    /// The settings a remedy may change during the run.
    pub fn live(&self) -> LiveSettings {
        LiveSettings {
            act_clamp: self.act_clamp,
            act_fp32: self.act_fp32,
            clip_grad: self.clip_grad,
            clip_mode: self.clip_mode,
        }
    }

    /// The run's resolved config as saved in `config.toml` (per-invocation keys left out).
    pub fn to_toml(&self) -> String {
        let Ok(mut table) = to_table(self) else { return String::new() };
        for k in PER_INVOCATION {
            table.remove(k);
        }
        toml::to_string_pretty(&table).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_declared_once_and_every_key_is_a_flag() {
        let c = TrainConfig::default();
        assert_eq!(
            (c.arch, c.epochs, c.lr, c.lr_base, c.opt, c.act_fp32),
            (Arch::Resnet50, 90, None, 0.1, OptKind::Momentum, true)
        );
        assert_eq!(c.opt_betas, None);
        // The file format and the flags have the same keys.
        let file_keys: Vec<String> =
            to_table(&TrainConfig { data: Some("d".into()), ..c.clone() }).unwrap().keys().cloned().collect();
        for k in &file_keys {
            assert!(TrainConfig::keys().contains(k), "{k} has no flag");
        }
        // An empty file is the defaults.
        assert_eq!(toml::from_str::<TrainConfig>("").unwrap(), c);
    }

    #[test]
    fn flags_override_the_file_and_keep_the_rest() {
        let base = TrainConfig { epochs: 7, lr: Some(0.3), ..TrainConfig::default() };
        let o = Overrides::parse(&["--lr", "0.5", "--opt", "adamw", "--model-ema", "--opt-betas", "0.8,0.9"])
            .unwrap();
        assert_eq!(o.keys(), ["lr", "opt", "opt_betas", "model_ema"]);
        let c = o.apply(&base).unwrap();
        assert_eq!((c.epochs, c.lr, c.opt, c.model_ema), (7, Some(0.5), OptKind::Adamw, true));
        assert_eq!(c.opt_betas, Some(vec![0.8, 0.9]));
        // The alias of timm's `smoothing`, in files and flags.
        let c: TrainConfig = toml::from_str("label_smoothing = 0.2").unwrap();
        assert_eq!(c.smoothing, 0.2);
        let c = Overrides::parse(&["--label-smoothing", "0.3"]).unwrap().apply(&base).unwrap();
        assert_eq!(c.smoothing, 0.3);
        // Bad values and unknown flags are errors naming the flag.
        let e = Overrides::parse(&["--opt", "adamx"]).unwrap_err().to_string();
        assert!(e.contains("--opt") && e.contains("adamw"), "{e}");
        let e = Overrides::parse(&["--learning-rate", "1"]).unwrap_err().to_string();
        assert!(e.contains("--learning-rate"), "{e}");
    }

    /// configs/README.md's table of every key, from the declarations: each key's flag doc and
    /// default as `--help` gives them, under the section comments of this file.
    fn keys_table() -> String {
        let mut section_of = std::collections::HashMap::new();
        let mut section = "";
        for line in include_str!("mod.rs").lines().map(str::trim) {
            if let Some(name) = line.strip_prefix("// ---- ").and_then(|l| l.strip_suffix(" ----")) {
                section = name;
            } else if let Some(field) = line.strip_prefix("pub ").and_then(|l| l.split_once(':')) {
                section_of.entry(field.0.to_string()).or_insert(section);
            }
        }
        let mut out = String::from("| key (flag `--key-name`) | default | what |\n|---|---|---|\n");
        let mut last = "";
        for a in TrainConfig::command().get_arguments().filter(|a| !a.is_hide_set()) {
            let id = a.get_id().as_str();
            let section = section_of.get(id).copied().unwrap_or("");
            if section != last {
                out += &format!("| **{section}** | | |\n");
                last = section;
            }
            let defaults: Vec<String> =
                a.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
            let default = if defaults.is_empty() { "unset".to_string() } else { defaults.join(",") };
            let help = a.get_long_help().or(a.get_help()).map(|h| h.to_string()).unwrap_or_default();
            let mut what = help.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|");
            if !what.ends_with('.') {
                what.push('.');
            }
            // An enum whose doc does not name its values: each value with its own doc.
            let values: Vec<String> = a
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set() && v.get_help().is_some())
                .map(|v| {
                    format!("`{}`: {}", v.get_name(), v.get_help().map(|h| h.to_string()).unwrap_or_default())
                })
                .collect();
            if !values.is_empty() && a.get_possible_values().iter().any(|v| !what.contains(v.get_name())) {
                what += &format!(" Values: {}.", values.join("; ").replace('|', "\\|"));
            }
            let aliases: Vec<String> =
                a.get_visible_aliases().unwrap_or_default().iter().map(|a| a.replace('-', "_")).collect();
            if !aliases.is_empty() {
                what += &format!(" Also `{}` (timm's name).", aliases.join("`, `"));
            }
            if RESUMABLE.contains(&id) {
                what += " May change on `--resume`.";
            }
            out += &format!("| `{id}` | `{default}` | {what} |\n");
        }
        out
    }

    /// The table is generated (`UPDATE_CONFIGS_README=1 cargo test configs_readme` rewrites it).
    #[test]
    fn configs_readme_lists_every_key_as_declared() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/README.md");
        let text = std::fs::read_to_string(&p).unwrap();
        let start = text.find("| key (flag `--key-name`)").expect("the table's header");
        let end = text[start..].find("\n\n").map_or(text.len(), |e| start + e + 1);
        let table = keys_table();
        if std::env::var_os("UPDATE_CONFIGS_README").is_some() {
            std::fs::write(&p, format!("{}{table}{}", &text[..start], &text[end..])).unwrap();
            return;
        }
        assert!(
            text[start..end] == table,
            "configs/README.md's key table is not the declarations': rerun with UPDATE_CONFIGS_README=1"
        );
    }

    #[test]
    fn a_fixed_train_filter_is_also_timms_ops_filter() {
        use crate::data::augment_ops::Interp;
        use crate::data::transform::TrainFilter;
        let with = |f| {
            let c = TrainConfig {
                aa: Some("rand-m9-mstd0.5-inc1".into()),
                train_interpolation: f,
                ..TrainConfig::default()
            };
            c.augment(224).unwrap().unwrap().timm_filter
        };
        assert_eq!(with(TrainFilter::Bicubic), Some(Interp::Bicubic));
        assert_eq!(with(TrainFilter::Bilinear), Some(Interp::Bilinear));
        assert_eq!(with(TrainFilter::Random), None); // drawn per op, timm's default
                                                     // Runs saved before the filters existed resume with torchvision's.
        let old: TrainConfig = toml::from_str("epochs = 3").unwrap();
        assert_eq!((old.train_interpolation, old.interpolation), (TrainFilter::Bilinear, Default::default()));
        let c: TrainConfig =
            toml::from_str("train_interpolation = \"random\"\ninterpolation = \"bicubic\"").unwrap();
        assert_eq!(
            (c.train_interpolation, c.interpolation),
            (TrainFilter::Random, crate::data::resize::Filter::Bicubic)
        );
        assert!(toml::from_str::<TrainConfig>("interpolation = \"random\"").is_err());
    }

    #[test]
    fn crop_ratio_and_flip_probability_are_validated() {
        let with =
            |ratio: Vec<f64>, hflip: f64| TrainConfig { ratio, hflip, ..TrainConfig::default() }.validate();
        assert!(with(vec![1.0, 1.0], 0.0).is_ok());
        for (ratio, hflip) in
            [(vec![2.0, 1.0], 0.5), (vec![1.0], 0.5), (vec![0.0, 1.0], 0.5), (vec![0.75, 1.33], 1.5)]
        {
            let e = with(ratio.clone(), hflip).unwrap_err().to_string();
            assert!(e.contains("--ratio") || e.contains("--hflip"), "{ratio:?} {hflip}: {e}");
        }
        let flags = Overrides::parse(&["--ratio", "0.5,2", "--hflip", "0"]).unwrap();
        let c = flags.values.as_deref().unwrap();
        assert_eq!((c.ratio.as_slice(), c.hflip), ([0.5, 2.0].as_slice(), 0.0));
    }

    #[test]
    fn colour_probabilities_drop_block_and_bn_settings_are_validated_and_reach_the_model() {
        let bad = [
            TrainConfig { grayscale_prob: 1.5, ..TrainConfig::default() },
            TrainConfig { gaussian_blur_prob: -0.1, ..TrainConfig::default() },
            TrainConfig {
                color_jitter: Some(vec![0.4]),
                color_jitter_prob: Some(2.0),
                ..TrainConfig::default()
            },
            TrainConfig { color_jitter_prob: Some(0.5), ..TrainConfig::default() },
            TrainConfig { drop_block: 1.0, ..TrainConfig::default() },
            TrainConfig { bn_momentum: Some(1.1), ..TrainConfig::default() },
            TrainConfig { bn_eps: Some(0.0), ..TrainConfig::default() },
        ];
        let flags = [
            "--grayscale-prob",
            "--gaussian-blur-prob",
            "--color-jitter-prob",
            "--color-jitter",
            "--drop-block",
            "--bn-momentum",
            "--bn-eps",
        ];
        for (c, flag) in bad.iter().zip(flags) {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(flag), "{flag}: {e}");
        }
        let flags = Overrides::parse(&[
            "--grayscale-prob",
            "0.2",
            "--gaussian-blur-prob",
            "0.1",
            "--color-jitter",
            "0.4",
            "--color-jitter-prob",
            "0.8",
            "--drop-block",
            "0.1",
            "--bn-momentum",
            "0.01",
            "--bn-eps",
            "1e-3",
        ])
        .unwrap();
        let c = flags.values.as_deref().unwrap().clone();
        c.validate().unwrap();
        let a = c.augment(224).unwrap().unwrap();
        assert_eq!((a.jitter_prob, a.grayscale_prob, a.blur_prob), (Some(0.8), 0.2, 0.1));
        let m = c.model(10);
        assert_eq!((m.drop_block_rate, m.bn_momentum, m.bn_eps), (0.1, Some(0.01), Some(1e-3)));
        // Saved with the run and read back alike (resume).
        let saved: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(saved, c);
        // Grayscale or blur alone is an augmentation for AugMix-style splits.
        let splits = TrainConfig { aug_splits: 2, grayscale_prob: 0.5, ..TrainConfig::default() };
        assert!(splits.validate().is_ok());
    }

    /// timm's `no_aug` (`transforms_noaug_train`): Resize(train_size) + CenterCrop(train_size)
    /// with the train filter (bilinear for random), no aa, colour ops or random erasing; Mixup
    /// and CutMix stay; split augmentation is refused as timm refuses it.
    #[test]
    fn no_aug_is_timms_resize_and_center_crop() {
        use crate::data::{
            resize::Filter,
            transform::{TrainFilter, Transform},
        };
        let flags = Overrides::parse(&[
            "--no-aug",
            "--aa",
            "rand-m9-mstd0.5",
            "--color-jitter",
            "0.4",
            "--reprob",
            "0.25",
            "--vflip",
            "0.5",
            "--mixup",
            "0.2",
        ])
        .unwrap();
        let c = flags.values.as_deref().unwrap().clone();
        c.validate().unwrap();
        assert_eq!(c.train_transform(), Transform::eval(224, 1.0));
        assert!(c.augment(224).unwrap().is_none() && c.erasing_config().is_none());
        assert!(c.mixup_config().is_some());
        let bicubic = TrainConfig { no_aug: true, train_interpolation: TrainFilter::Bicubic, ..c.clone() };
        assert_eq!(bicubic.train_transform(), Transform::eval(224, 1.0).with_filter(Filter::Bicubic));
        let on = TrainConfig { no_aug: false, ..c.clone() };
        assert!(matches!(on.train_transform(), Transform::Train { vflip: 0.5, hflip: 0.5, .. }));
        assert!(on.augment(224).unwrap().is_some() && on.erasing_config().is_some());
        let splits = TrainConfig { aug_splits: 2, ..c.clone() };
        assert!(splits.validate().unwrap_err().to_string().contains("--no-aug"));
        let corrected = |opt| TrainConfig { opt, corrected_weight_decay: true, ..TrainConfig::default() };
        assert!(corrected(OptKind::Adoptw).validate().is_ok() && corrected(OptKind::Lion).validate().is_ok());
        for opt in [OptKind::Momentum, OptKind::Adam, OptKind::Adopt, OptKind::Lamb] {
            let e = corrected(opt).validate().unwrap_err().to_string();
            assert!(e.contains("--corrected-weight-decay"), "{opt:?}: {e}");
        }
        let bad = TrainConfig { vflip: 1.5, ..TrainConfig::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("--vflip"));
        let saved: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(saved, c);
    }

    #[test]
    fn bce_options_need_the_bce_loss_and_a_positive_weight() {
        let with = |bce_loss, bce_sum, bce_pos_weight| {
            TrainConfig { bce_loss, bce_sum, bce_pos_weight, ..TrainConfig::default() }.validate()
        };
        assert!(with(true, true, Some(2.0)).is_ok());
        for (bce, sum, w) in [(false, true, None), (false, false, Some(2.0)), (true, false, Some(0.0))] {
            let e = with(bce, sum, w).unwrap_err().to_string();
            assert!(e.contains("--bce-"), "{e}");
        }
    }

    #[test]
    fn max_steps_is_not_saved_with_the_run() {
        let c = TrainConfig { max_steps: 5, ..TrainConfig::default() };
        let saved: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(saved.max_steps, 0);
        assert_eq!(saved, TrainConfig { max_steps: 0, ..c });
    }
}
