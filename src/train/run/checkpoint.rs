//! Checkpoints, the sum of the components' named state (as timm's CheckpointSaver saves each
//! component's state_dict). `last.safetensors` holds the model weights under their model names,
//! everything else training updates under `train_state.<component>.` (optimizer, scaler, EMA)
//! and the loop position in the metadata; it is written atomically, so a run killed at any moment
//! resumes from its last complete checkpoint. `best.safetensors` and `epoch-N.safetensors` hold the
//! model (and `epoch-N` and `last` the EMA weights, under `train_state.ema.`) for `eval`/`predict`.

use super::eval::{EvalMetric, EvalResult};
use super::state::Named;
use crate::error::{Error, Result};
use crate::model::weights::{self, WeightsFile, META_CLASSES, META_MODEL};
use crate::model::ResNetConfig;
use crate::train::step::guards::GuardState;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::Tensor;

pub const STATE_PREFIX: &str = "train_state";
const META_STATE: &str = "resnet_train.train_state";
/// Which weights a model file's top-level tensors are: "model" (the trained weights) or "ema".
pub const META_WEIGHTS: &str = "resnet_train.weights";
/// An epoch's evaluation, in `epoch-N` and `best` files (an `EpochEval` as JSON): what ranks them.
pub const META_EPOCH_EVAL: &str = "resnet_train.epoch_eval";

/// The evaluation of the weights an epoch ended with: the model's and its EMA's.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochEval {
    pub epoch: usize,
    pub model: EvalResult,
    pub ema: Option<EvalResult>,
}

impl EpochEval {
    /// The file's rank by `metric`: the better of the model and its EMA (higher is better).
    pub fn score(&self, metric: EvalMetric) -> f64 {
        let model = metric.score(&self.model);
        self.ema.map_or(model, |e| model.max(metric.score(&e)))
    }

    /// The epoch evaluation a model file records (None: not an evaluated epoch's file).
    pub fn of_file(metadata: &HashMap<String, String>) -> Option<EpochEval> {
        serde_json::from_str(metadata.get(META_EPOCH_EVAL)?).ok()
    }
}

/// Where the loop is: enough, with the seed and the components' state, to continue exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// Epoch in progress (0-based).
    pub epoch: usize,
    /// Next batch of that epoch to load.
    pub next_batch: usize,
    /// Optimizer steps attempted (the learning-rate schedule's clock).
    pub step: usize,
    /// Skips, rollbacks and remedies so far.
    #[serde(flatten)]
    pub guards: GuardState,
    /// The epoch in progress's running train-loss sum and step count (finite losses), so that a
    /// run resumed mid-epoch reports the same epoch mean.
    #[serde(default)]
    pub train_loss_sum: f64,
    #[serde(default)]
    pub train_loss_steps: usize,
    /// The best epoch's eval top-1 (of the model or its EMA, whichever ranked higher).
    pub best_top1: f64,
    pub best_epoch: Option<usize>,
    /// The best epoch's `eval_metric` score (higher is better; None in checkpoints from before
    /// eval_metric, which ranked by top-1).
    #[serde(default)]
    pub best_score: Option<f64>,
    /// Training wall time before this session, seconds.
    pub elapsed_s: f64,
    /// Data-parallel processes the run trains with (the data order and the global batch depend
    /// on it).
    #[serde(default = "one")]
    pub world_size: usize,
    /// How many optimizer steps the learning-rate schedule's clock is behind `step`: 0, unless
    /// the run was resumed with another world size, which changes the steps per epoch (the
    /// schedule then continues from the same point of training, while `step` keeps counting).
    #[serde(default)]
    pub schedule_offset: i64,
    /// Images in the training set when the run started (0: not recorded, in older checkpoints):
    /// a resume on a training set of another size warns that the data order changes.
    #[serde(default)]
    pub train_images: usize,
}

impl LoopState {
    /// The learning-rate schedule's clock.
    pub fn schedule_step(&self) -> usize {
        (self.step as i64 - self.schedule_offset).max(0) as usize
    }
}

fn one() -> usize {
    1
}

impl Default for LoopState {
    fn default() -> Self {
        Self {
            epoch: 0,
            next_batch: 0,
            step: 0,
            guards: GuardState::default(),
            train_loss_sum: 0.0,
            train_loss_steps: 0,
            best_top1: 0.0,
            best_epoch: None,
            best_score: None,
            elapsed_s: 0.0,
            world_size: 1,
            schedule_offset: 0,
            train_images: 0,
        }
    }
}

/// What a model file says about its model.
pub struct ModelMeta<'a> {
    pub model: ResNetConfig,
    pub class_names: &'a [String],
    /// The eval preprocessing the model was trained for: (resize, crop) and the resize filter.
    pub eval_size: (usize, usize),
    pub eval_filter: crate::data::resize::Filter,
    /// The input normalization it was trained with.
    pub normalization: crate::data::transform::Normalization,
}

fn metadata(m: &ModelMeta, weights_kind: &str) -> HashMap<String, String> {
    let mut meta = HashMap::new();
    meta.insert(META_MODEL.to_string(), serde_json::to_string(&m.model).expect("config serialises"));
    meta.insert(META_CLASSES.to_string(), serde_json::to_string(m.class_names).expect("names serialise"));
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(
        weights::META_EVAL.to_string(),
        serde_json::json!({"resize": m.eval_size.0, "crop": m.eval_size.1, "interpolation": m.eval_filter,
            "mean": m.normalization.mean, "std": m.normalization.std})
        .to_string(),
    );
    meta.insert(META_WEIGHTS.to_string(), weights_kind.to_string());
    meta
}

/// A model file: `model` at the top level (`weights_kind` says whose weights they are), and
/// optionally more state (e.g. the EMA) under `train_state.`, with the epoch's evaluation if any.
pub fn save_model(
    path: &Path,
    model: Named,
    extra: Named,
    m: &ModelMeta,
    weights_kind: &str,
    eval: Option<&EpochEval>,
) -> Result<()> {
    let mut tensors: BTreeMap<String, Tensor> = model.into_iter().collect();
    tensors.extend(super::state::prefixed(STATE_PREFIX, extra));
    let mut meta = metadata(m, weights_kind);
    if let Some(e) = eval {
        meta.insert(META_EPOCH_EVAL.to_string(), serde_json::to_string(e).expect("results serialise"));
    }
    weights::write(path, &tensors, meta)
}

/// The full training state: the model, every component's state, the loop position.
pub fn save_last(
    path: &Path,
    model: Named,
    train_state: Named,
    m: &ModelMeta,
    state: &LoopState,
) -> Result<()> {
    let mut tensors: BTreeMap<String, Tensor> = model.into_iter().collect();
    tensors.extend(super::state::prefixed(STATE_PREFIX, train_state));
    let mut meta = metadata(m, "model");
    meta.insert(META_STATE.to_string(), serde_json::to_string(state).expect("state serialises"));
    weights::write(path, &tensors, meta)
}

/// Reads a `last` checkpoint: the file (model tensors load with `weights::load_into`; the
/// components' state is `state::under(STATE_PREFIX, &file.tensors)`) and the loop state.
pub fn load_last(path: &Path) -> Result<(WeightsFile, LoopState)> {
    let file = weights::read(path)?;
    let state: LoopState = file
        .metadata
        .get(META_STATE)
        .ok_or_else(|| {
            Error::file(path, "not a training checkpoint (no train state): resume needs last.safetensors")
        })
        .and_then(|s| {
            serde_json::from_str(s).map_err(|e| Error::file(path, format!("bad train state: {e}")))
        })?;
    Ok((file, state))
}

/// A `last` checkpoint's loop state, from its header alone.
pub fn read_last_state(path: &Path) -> Result<LoopState> {
    let meta = weights::read_metadata(path)?;
    let text = meta
        .get(META_STATE)
        .ok_or_else(|| Error::file(path, "not a training checkpoint (no train state)"))?;
    serde_json::from_str(text).map_err(|e| Error::file(path, format!("bad train state: {e}")))
}

/// The run folder's `epoch-N.safetensors` files, by epoch.
pub fn epoch_files(dir: &Path) -> Result<Vec<(usize, std::path::PathBuf)>> {
    let mut epochs: Vec<(usize, std::path::PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix("epoch-")?.strip_suffix(".safetensors")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    epochs.sort();
    Ok(epochs)
}

/// Deletes the `epoch-N.safetensors` files that are neither among the newest `keep_last` nor
/// among the `keep_best` best evaluated ones by `metric` (ties: the earlier epoch), as timm's
/// CheckpointSaver keeps its top `checkpoint_hist`. A file whose header cannot be read ranks last.
pub fn prune_epochs(dir: &Path, keep_last: usize, keep_best: usize, metric: EvalMetric) -> Result<()> {
    let epochs = epoch_files(dir)?;
    let mut keep: Vec<usize> = epochs.iter().rev().take(keep_last).map(|(n, _)| *n).collect();
    let mut ranked: Vec<(f64, usize)> = epochs
        .iter()
        .filter_map(|(n, p)| {
            let meta = weights::read_metadata(p).ok()?;
            Some((EpochEval::of_file(&meta)?.score(metric), *n))
        })
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    keep.extend(ranked.iter().take(keep_best).map(|(_, n)| *n));
    for (_, p) in epochs.iter().filter(|(n, _)| !keep.contains(n)) {
        std::fs::remove_file(p).map_err(|e| Error::io(p, e))?;
    }
    Ok(())
}
