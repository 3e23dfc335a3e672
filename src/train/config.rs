//! The training configuration: one serde struct (the file format and the resolved copy saved
//! with the run) and the command-line flags that override it. Precedence: flags > file > defaults.
//! Unknown keys in a file are errors.

use super::amp::Precision;
use super::schedule::ScheduleKind;
use crate::error::{Error, Result};
use crate::model::{ActConfig, ActInit, ActKind, Arch, NormAxis, ResNetConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// ImageFolder root with train/ and val/ (or a folder of class folders used for both);
    /// empty: the embedded procedural dataset.
    pub data: Option<PathBuf>,
    pub arch: Arch,
    pub act: ActKind,
    pub order: i64,
    pub norm_axis: NormAxis,
    pub act_init: ActInit,
    pub small_stem: bool,
    pub zero_init_residual: bool,
    /// Stability remedy: clamp the polynomial's input to [-C, C].
    pub act_clamp: Option<f64>,
    /// Compute the activations in fp32 under autocast (default true, as PyTorch's CUDA autocast
    /// does for the reference's `pow`/`rsqrt`; false: in the autocast dtype).
    pub act_fp32: bool,

    pub epochs: usize,
    /// Per device, per micro-step.
    pub batch_size: usize,
    /// Base learning rate for a global batch of 256 (scaled linearly with the global batch).
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    /// Apply weight decay to the PolyCom coefficients too.
    pub act_weight_decay: bool,
    pub schedule: ScheduleKind,
    pub warmup_epochs: f64,
    pub min_lr: f64,
    pub step_epochs: usize,
    pub step_gamma: f64,
    pub label_smoothing: f64,
    /// Micro-steps per optimizer step (gradient accumulation).
    pub accum_steps: usize,
    /// Clip the gradient norm to this value (0: off).
    pub clip_grad: f64,

    pub precision: Precision,
    pub channels_last: bool,
    /// cpu, cuda, cuda:N or auto.
    pub device: String,
    pub seed: u64,
    /// Decode threads (0: all cores).
    pub workers: usize,
    /// libtorch intra-op threads on CPU (0: libtorch's default).
    pub torch_threads: usize,
    pub train_size: usize,
    pub eval_size: usize,
    /// RandomResizedCrop's smallest area fraction (torchvision: 0.08).
    pub rrc_scale_min: f64,
    pub crop_pct: f64,
    pub max_bad_fraction: f64,

    pub eval_every: usize,
    /// Keep this many most recent epoch checkpoints (besides last and best).
    pub keep_last: usize,
    /// Also write the `last` checkpoint every N optimizer steps (0: only at epoch ends).
    pub checkpoint_every: usize,
    pub log_every: usize,
    /// Stop with a diagnosis after this many consecutive skipped (non-finite) steps (0: never).
    pub max_consecutive_skips: usize,
    /// Stop with a diagnosis when the fp16 loss scale falls below this.
    pub min_loss_scale: f64,
    /// Instead of stopping, the divergence guard applies the next of these remedies (`clamp:C`,
    /// `clip:C`, `act-fp32`, `act-lowp`), restores the last snapshot and continues; it stops when
    /// none is left.
    pub divergence_remedies: Vec<super::stability::Remedy>,
    /// Loss-spike guard: roll back when the loss exceeds this x its running mean (0: off).
    pub spike_factor: f64,
    /// Learning-rate multiplier applied at each rollback.
    pub spike_lr_factor: f64,
    pub max_rollbacks: usize,
    /// Steps between in-memory snapshots for rollbacks.
    pub snapshot_every: usize,
    /// Steps before the loss's running mean is trusted.
    pub spike_warmup: usize,
    /// Testing aid: multiply the loss the spike guard sees at this step by 1000 (fault injection).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inject_spike_at: Option<usize>,
    /// Record per-site activation statistics (max |output|, non-finite count) every N steps (0: off).
    pub monitor_every: usize,
    /// Stop after this many optimizer steps in total (0: no limit); the run can be resumed.
    /// Per invocation: not written to the run's resolved config.toml.
    #[serde(skip_serializing)]
    pub max_steps: usize,
    pub name: Option<String>,
    pub output: PathBuf,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: None,
            arch: Arch::Resnet50,
            act: ActKind::Relu,
            order: 3,
            norm_axis: NormAxis::Channel,
            act_init: ActInit::Paper,
            small_stem: false,
            zero_init_residual: false,
            act_clamp: None,
            act_fp32: true,
            epochs: 90,
            batch_size: 256,
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-4,
            act_weight_decay: false,
            schedule: ScheduleKind::Cosine,
            warmup_epochs: 0.0,
            min_lr: 0.0,
            step_epochs: 30,
            step_gamma: 0.1,
            label_smoothing: 0.0,
            accum_steps: 1,
            clip_grad: 0.0,
            precision: Precision::Fp32,
            channels_last: false,
            device: "auto".into(),
            seed: 0,
            workers: 0,
            torch_threads: 0,
            train_size: 224,
            eval_size: 224,
            rrc_scale_min: 0.08,
            crop_pct: 0.875,
            max_bad_fraction: 0.01,
            eval_every: 1,
            keep_last: 2,
            checkpoint_every: 0,
            log_every: 50,
            monitor_every: 50,
            max_consecutive_skips: 25,
            spike_factor: 3.0,
            spike_lr_factor: 0.5,
            max_rollbacks: 3,
            snapshot_every: 100,
            spike_warmup: 50,
            inject_spike_at: None,
            min_loss_scale: 1e-4,
            divergence_remedies: Vec::new(),
            max_steps: 0,
            name: None,
            output: PathBuf::from("runs"),
        }
    }
}

/// Command-line flags; each one given overrides the file and the defaults.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct TrainArgs {
    /// A TOML config file (see configs/).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in this folder from its `last` checkpoint.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// ImageFolder root with train/ and val/ (default: the embedded procedural dataset).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
    #[arg(long, value_enum)]
    pub act: Option<ActKind>,
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=crate::model::activation::MAX_ORDER))]
    pub order: Option<i64>,
    #[arg(long, value_enum)]
    pub norm_axis: Option<NormAxis>,
    #[arg(long, value_enum)]
    pub act_init: Option<ActInit>,
    #[arg(long)]
    pub small_stem: Option<bool>,
    /// Stability remedy: clamp the polynomial's input to [-C, C].
    #[arg(long)]
    pub act_clamp: Option<f64>,
    /// Compute the activations in fp32 under autocast (default true, as PyTorch's CUDA autocast
    /// does with the reference; false: in fp16/bf16).
    #[arg(long)]
    pub act_fp32: Option<bool>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Base learning rate per 256 images.
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleKind>,
    #[arg(long)]
    pub warmup_epochs: Option<f64>,
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    #[arg(long)]
    pub accum_steps: Option<usize>,
    #[arg(long)]
    pub clip_grad: Option<f64>,
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    #[arg(long)]
    pub channels_last: Option<bool>,
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub workers: Option<usize>,
    #[arg(long)]
    pub torch_threads: Option<usize>,
    #[arg(long)]
    pub train_size: Option<usize>,
    #[arg(long)]
    pub eval_size: Option<usize>,
    #[arg(long)]
    pub eval_every: Option<usize>,
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    #[arg(long)]
    pub log_every: Option<usize>,
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Activation statistics every N steps (0: off).
    #[arg(long)]
    pub monitor_every: Option<usize>,
    /// Stop with a diagnosis after N consecutive skipped steps (0: never).
    #[arg(long)]
    pub max_consecutive_skips: Option<usize>,
    /// Stop with a diagnosis when the fp16 loss scale falls below this.
    #[arg(long)]
    pub min_loss_scale: Option<f64>,
    /// Instead of stopping, apply the next of these remedies and continue from the last snapshot:
    /// clamp:C, clip:C, act-fp32, act-lowp (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub divergence_remedies: Option<Vec<super::stability::Remedy>>,
    /// Roll back when the loss exceeds this x its running mean (0: off).
    #[arg(long)]
    pub spike_factor: Option<f64>,
    #[arg(long)]
    pub max_rollbacks: Option<usize>,
    /// Run folder name (default: arch-act-precision-time).
    #[arg(long)]
    pub name: Option<String>,
    /// Parent folder of run folders.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

impl TrainArgs {
    fn apply(&self, c: &mut TrainConfig) {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f { c.$f = v.clone(); } )* };
        }
        set!(
            arch,
            act,
            order,
            norm_axis,
            act_init,
            small_stem,
            epochs,
            batch_size,
            lr,
            weight_decay,
            schedule
        );
        set!(warmup_epochs, label_smoothing, accum_steps, clip_grad, precision, channels_last, device, seed);
        set!(
            workers,
            torch_threads,
            train_size,
            eval_size,
            eval_every,
            checkpoint_every,
            log_every,
            max_steps,
            output
        );
        set!(act_fp32, monitor_every, max_consecutive_skips, min_loss_scale, spike_factor, max_rollbacks);
        set!(divergence_remedies);
        if self.act_clamp.is_some() {
            c.act_clamp = self.act_clamp;
        }
        if self.data.is_some() {
            c.data = self.data.clone();
        }
        if self.name.is_some() {
            c.name = self.name.clone();
        }
    }
}

pub fn read_file(path: &Path) -> Result<TrainConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    toml::from_str(&text).map_err(|e| Error::file(path, format!("bad config: {e}")))
}

impl TrainConfig {
    /// defaults < file < flags; then validated.
    pub fn resolve(args: &TrainArgs) -> Result<Self> {
        let mut c = match &args.config {
            Some(p) => read_file(p)?,
            None => TrainConfig::default(),
        };
        args.apply(&mut c);
        c.validate()?;
        Ok(c)
    }

    /// The saved config of a run, with the flags given now applied on top (a resumed run may
    /// change e.g. `--epochs` or `--device`; the model's shape comes from the checkpoint).
    pub fn resume(run_dir: &Path, args: &TrainArgs) -> Result<Self> {
        let mut c = read_file(&run_dir.join("config.toml"))?;
        args.apply(&mut c);
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Usage(m));
        self.model(1).validate()?;
        if self.batch_size == 0 || self.accum_steps == 0 {
            return bad("--batch-size and --accum-steps must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("--lr must be positive, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(format!("--label-smoothing must be in [0, 1), got {}", self.label_smoothing));
        }
        if self.train_size < 8 || self.eval_size < 8 || !(0.1..=1.0).contains(&self.crop_pct) {
            return bad("--train-size and --eval-size must be >= 8 and crop_pct in [0.1, 1]".into());
        }
        if !(0.0 < self.rrc_scale_min && self.rrc_scale_min <= 1.0) {
            return bad(format!("rrc_scale_min must be in (0, 1], got {}", self.rrc_scale_min));
        }
        if self.epochs == 0 {
            return bad("--epochs must be at least 1".into());
        }
        if self.divergence_remedies.contains(&super::stability::Remedy::None) {
            return bad("--divergence-remedies: `none` is not a remedy".into());
        }
        Ok(())
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
            },
            num_classes,
            zero_init_residual: self.zero_init_residual,
            small_stem: self.small_stem,
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}
