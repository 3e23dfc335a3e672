//! Checkpoints. `last.safetensors` holds the full training state (weights under their model names,
//! momentum buffers and loss scaler under `train_state.`, and the loop position in the metadata),
//! written atomically, so a run killed at any moment resumes from its last complete checkpoint.
//! `best.safetensors` and `epoch-N.safetensors` hold the model only (for `eval` / `predict`).

use super::optim::Sgd;
use crate::error::{Error, Result};
use crate::model::weights::{self, WeightsFile, META_CLASSES, META_MODEL};
use crate::model::ResNetConfig;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{nn, Kind, Tensor};

pub const STATE_PREFIX: &str = "train_state.";
const META_STATE: &str = "resnet_train.train_state";

/// Where the loop is: enough, with the seed, to continue exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// Epoch in progress (0-based).
    pub epoch: usize,
    /// Next batch of that epoch to load.
    pub next_batch: usize,
    /// Optimizer steps attempted (the learning-rate schedule's clock).
    pub step: usize,
    /// Optimizer steps applied (skipped steps excluded: the momentum's clock).
    pub sgd_steps: usize,
    pub skipped_steps: usize,
    /// Skipped steps in a row, up to now.
    #[serde(default)]
    pub consecutive_skips: usize,
    /// The loss-spike guard's running mean, rollbacks and learning-rate reduction.
    #[serde(default = "super::stability::SpikeState::new")]
    pub spike: super::stability::SpikeState,
    /// Remedies the divergence guard has applied, in order (re-applied on resume).
    #[serde(default)]
    pub remedies: Vec<super::stability::Remedy>,
    pub best_top1: f64,
    pub best_epoch: Option<usize>,
    /// Training wall time before this session, seconds.
    pub elapsed_s: f64,
}

impl Default for LoopState {
    fn default() -> Self {
        Self {
            epoch: 0,
            next_batch: 0,
            step: 0,
            sgd_steps: 0,
            skipped_steps: 0,
            consecutive_skips: 0,
            spike: super::stability::SpikeState::new(),
            remedies: Vec::new(),
            best_top1: 0.0,
            best_epoch: None,
            elapsed_s: 0.0,
        }
    }
}

pub struct Saved<'a> {
    pub vs: &'a nn::VarStore,
    pub model: ResNetConfig,
    pub class_names: &'a [String],
    /// The eval preprocessing the model was trained for: (resize, crop).
    pub eval_size: (usize, usize),
}

fn model_meta(s: &Saved) -> HashMap<String, String> {
    let mut meta = HashMap::new();
    meta.insert(META_MODEL.to_string(), serde_json::to_string(&s.model).expect("config serialises"));
    meta.insert(META_CLASSES.to_string(), serde_json::to_string(s.class_names).expect("names serialise"));
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(
        weights::META_EVAL.to_string(),
        serde_json::json!({"resize": s.eval_size.0, "crop": s.eval_size.1}).to_string(),
    );
    meta
}

/// The model only.
pub fn save_model(path: &Path, s: &Saved) -> Result<()> {
    weights::write(path, &s.vs.variables().into_iter().collect(), model_meta(s))
}

/// The full training state.
pub fn save_last(
    path: &Path,
    s: &Saved,
    sgd: &Sgd,
    scale: &Tensor,
    growth: &Tensor,
    state: &LoopState,
) -> Result<()> {
    let mut tensors: BTreeMap<String, Tensor> = s.vs.variables().into_iter().collect();
    for (name, buf) in sgd.state() {
        tensors.insert(format!("{STATE_PREFIX}momentum.{name}"), buf);
    }
    tensors.insert(format!("{STATE_PREFIX}scaler.scale"), scale.shallow_clone());
    tensors.insert(format!("{STATE_PREFIX}scaler.growth_tracker"), growth.to_kind(Kind::Int64));
    let mut meta = model_meta(s);
    meta.insert(META_STATE.to_string(), serde_json::to_string(state).expect("state serialises"));
    weights::write(path, &tensors, meta)
}

/// Reads a `last` checkpoint: the file (model tensors load with `weights::load_into`) and the state.
pub fn load_last(path: &Path) -> Result<(WeightsFile, LoopState, BTreeMap<String, Tensor>)> {
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
    let momentum = file
        .tensors
        .iter()
        .filter_map(|(k, t)| {
            k.strip_prefix(&format!("{STATE_PREFIX}momentum.")).map(|n| (n.to_string(), t.shallow_clone()))
        })
        .collect();
    Ok((file, state, momentum))
}

/// Deletes `epoch-N.safetensors` files beyond the newest `keep`.
pub fn prune_epochs(dir: &Path, keep: usize) -> Result<()> {
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
    let excess = epochs.len().saturating_sub(keep);
    for (_, p) in epochs.into_iter().take(excess) {
        std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}
