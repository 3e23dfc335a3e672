//! Weight averaging (timm's avg_checkpoints.py): the mean of several checkpoints' weights as one
//! model file, by default of a run's best epoch checkpoints by `eval_metric` (the ones
//! `checkpoint_hist` keeps). BatchNorm's running statistics are averaged like the weights, as
//! timm does; evaluate the result with `resnet-train eval` (or re-estimate them there).

use crate::error::{Error, Result};
use crate::model::weights::{self, Which, META_CLASSES, META_MODEL};
use crate::train::run::checkpoint::{epoch_files, EpochEval, META_WEIGHTS};
use crate::train::run::eval::{EvalMetric, EvalResult};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Metadata key of an averaged file: the files it averages, with their epochs and evaluations.
pub const META_AVERAGED: &str = "resnet_train.averaged_from";

/// One file to average and, for an evaluated epoch's checkpoint, its evaluation.
#[derive(Clone, Debug)]
pub struct Member {
    pub path: PathBuf,
    pub eval: Option<EpochEval>,
}

impl Member {
    /// The evaluation of the weights `which` selects (None: not evaluated).
    pub fn result(&self, which: Which) -> Option<EvalResult> {
        let e = self.eval.as_ref()?;
        match which {
            Which::Model => Some(e.model),
            Which::Ema => e.ema,
        }
    }
}

/// The files `inputs` name: each run folder's `epoch-N.safetensors`, and files as they are.
pub fn members(inputs: &[PathBuf]) -> Result<Vec<Member>> {
    let mut paths = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let files = epoch_files(input)?;
            if files.is_empty() {
                return Err(Error::file(
                    input,
                    "holds no epoch-N.safetensors checkpoints (train with --keep-last or --checkpoint-hist)",
                ));
            }
            paths.extend(files.into_iter().map(|(_, p)| p));
        } else {
            paths.push(input.clone());
        }
    }
    paths
        .into_iter()
        .map(|path| {
            let meta = weights::read_metadata(&path)?;
            Ok(Member { eval: EpochEval::of_file(&meta), path })
        })
        .collect()
}

/// The best `n` members by `metric` on the weights `which` selects, best first (ties: the earlier
/// epoch); every member must be an evaluated epoch's checkpoint.
pub fn best(members: Vec<Member>, n: usize, metric: EvalMetric, which: Which) -> Result<Vec<Member>> {
    let mut ranked = Vec::with_capacity(members.len());
    for m in members {
        let Some(result) = m.result(which) else {
            let what = if m.eval.is_some() { "its EMA was not evaluated" } else { "no evaluation recorded" };
            return Err(Error::file(
                &m.path,
                format!(
                    "cannot be ranked by {} ({what}): pass --no-sort to average the files as given",
                    metric.name()
                ),
            ));
        };
        ranked.push((metric.score(&result), m));
    }
    let epoch = |m: &Member| m.eval.map_or(usize::MAX, |e| e.epoch);
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(epoch(&a.1).cmp(&epoch(&b.1))));
    Ok(ranked.into_iter().take(n).map(|(_, m)| m).collect())
}

/// Writes the mean of the members' weights (`which`) to `out`: floating-point tensors averaged in
/// float64 (stored as float32), integer tensors taken from the first member, the model
/// description (config, classes, eval preprocessing) from the first. Every member must hold the
/// same model: the same tensors, shapes, config and classes; and finite weights.
pub fn average(members: &[Member], which: Which, out: &Path) -> Result<()> {
    let Some(first) = members.first() else {
        return Err(Error::Usage("nothing to average".into()));
    };
    let first_file = weights::read(&first.path)?;
    let mut sums: BTreeMap<String, Tensor> = BTreeMap::new();
    for m in members {
        let file = if m.path == first.path { None } else { Some(weights::read(&m.path)?) };
        let file = file.as_ref().unwrap_or(&first_file);
        same_model(&first_file.metadata, &file.metadata, &first.path, &m.path)?;
        let tensors = weights::weights_of(file, &m.path, which)?;
        if !sums.is_empty() {
            let (have, want): (BTreeSet<&String>, BTreeSet<&String>) =
                (tensors.keys().collect(), sums.keys().collect());
            if let Some(name) = have.symmetric_difference(&want).next() {
                return Err(Error::file(
                    &m.path,
                    format!("holds other tensors than {} ({name} is in one only)", first.path.display()),
                ));
            }
        }
        for (name, t) in tensors {
            let is_float = t.is_floating_point();
            if is_float && t.isfinite().all().int64_value(&[]) == 0 {
                return Err(Error::file(&m.path, format!("tensor {name} holds NaN or inf: not averaged")));
            }
            match sums.get_mut(&name) {
                None => {
                    let t = if is_float { t.to_kind(Kind::Double) } else { t };
                    sums.insert(name, t);
                }
                Some(sum) if sum.size() != t.size() => {
                    return Err(Error::file(
                        &m.path,
                        format!(
                            "tensor {name} is {:?}, {:?} in {}",
                            t.size(),
                            sum.size(),
                            first.path.display()
                        ),
                    ));
                }
                Some(sum) if is_float => *sum += t.to_kind(Kind::Double),
                Some(_) => {} // integer buffers: the first member's
            }
        }
    }
    let n = members.len() as f64;
    let mean: BTreeMap<String, Tensor> = sums
        .into_iter()
        .map(|(k, t)| if t.kind() == Kind::Double { (k, (t / n).to_kind(Kind::Float)) } else { (k, t) })
        .collect();
    let mut metadata: HashMap<String, String> = first_file
        .metadata
        .iter()
        .filter(|(k, _)| {
            k.as_str() == "format" || [META_MODEL, META_CLASSES, weights::META_EVAL].contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata
        .insert(META_WEIGHTS.to_string(), format!("average of {} ({which:?})", members.len()).to_lowercase());
    let from: Vec<serde_json::Value> = members
        .iter()
        .map(|m| serde_json::json!({"file": m.path.display().to_string(), "eval": m.eval}))
        .collect();
    metadata.insert(META_AVERAGED.to_string(), serde_json::Value::Array(from).to_string());
    weights::write(out, &mean, metadata)
}

/// Two files hold the same model: the same config and class names in their metadata.
fn same_model(
    a: &HashMap<String, String>,
    b: &HashMap<String, String>,
    a_path: &Path,
    b_path: &Path,
) -> Result<()> {
    for (key, what) in [(META_MODEL, "model config"), (META_CLASSES, "class names")] {
        if a.get(key) != b.get(key) {
            return Err(Error::file(b_path, format!("has another {what} than {}", a_path.display())));
        }
    }
    Ok(())
}
