//! Top-1 / top-5 accuracy and loss over a loader, in the run's precision.

use crate::data::loader::{Batch, Loader};
use crate::data::transform::Normalization;
use crate::error::Result;
use crate::model::ResNet;
use crate::train::step::amp::Precision;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvalResult {
    pub loss: f64,
    /// Percent.
    pub top1: f64,
    pub top5: f64,
    /// Images scored.
    pub images: usize,
    /// Images left out because their file could not be read or decoded (not in `images`, not
    /// scored).
    #[serde(default)]
    pub left_out: usize,
}

/// Which evaluation number ranks epochs: picks `best`, the checkpoints `checkpoint_hist` keeps and
/// the ones `average` takes (timm's `eval_metric`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EvalMetric {
    Top1,
    Top5,
    /// The eval loss (lower is better).
    Loss,
}

impl EvalMetric {
    /// The metric's value, oriented so that higher is better (the loss negated).
    pub fn score(self, e: &EvalResult) -> f64 {
        match self {
            EvalMetric::Top1 => e.top1,
            EvalMetric::Top5 => e.top5,
            EvalMetric::Loss => -e.loss,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EvalMetric::Top1 => "top-1",
            EvalMetric::Top5 => "top-5",
            EvalMetric::Loss => "eval loss",
        }
    }
}

/// Moves a uint8 batch to the device and normalises it, channels_last if asked.
pub fn prepare(images: &Tensor, device: Device, channels_last: bool, norm: &Normalization) -> Result<Tensor> {
    let x = norm.apply(&images.f_to_device(device)?);
    if channels_last {
        crate::ffi::to_channels_last(&x)
    } else {
        Ok(x)
    }
}

/// What evaluation adds up over images: summed over the ranks' shards, they give the
/// single-process evaluation's counts exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EvalSums {
    pub loss: f64,
    pub top1: i64,
    pub top5: i64,
    pub images: usize,
    pub left_out: usize,
}

impl EvalSums {
    pub fn result(&self) -> EvalResult {
        let n = self.images.max(1) as f64;
        EvalResult {
            loss: self.loss / n,
            top1: 100.0 * self.top1 as f64 / n,
            top5: 100.0 * self.top5 as f64 / n,
            images: self.images,
            left_out: self.left_out,
        }
    }

    /// As numbers, for an all-reduce (counts stay exact up to 2^53).
    pub fn to_vec(self) -> Vec<f64> {
        vec![self.loss, self.top1 as f64, self.top5 as f64, self.images as f64, self.left_out as f64]
    }

    pub fn from_slice(v: &[f64]) -> EvalSums {
        EvalSums {
            loss: v[0],
            top1: v[1] as i64,
            top5: v[2] as i64,
            images: v[3] as usize,
            left_out: v[4] as usize,
        }
    }
}

/// How evaluation runs: where, in what precision, and how a batch is prepared.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub device: Device,
    pub precision: Precision,
    pub channels_last: bool,
    /// The logits are the mean of the image's and its mirror image's (FFCV's `lr_tta`).
    pub flip_tta: bool,
    pub norm: Normalization,
    /// The model's class of each of the data's classes, when they are not the model's own in its
    /// order: the logits are cut down to these columns, in the data's order (see `class_columns`).
    pub columns: Option<Vec<i64>>,
}

/// How a folder's classes map onto a model's (see `class_columns`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClassMatch {
    /// The model's class of each folder kept (in folder order); None when the folders are the
    /// model's own classes in its order.
    pub columns: Option<Vec<i64>>,
    /// How they were matched, for a note (None: the model's own classes).
    pub how: Option<String>,
    /// Folders that are none of the model's classes: left out of the evaluation (the caller drops
    /// their images, `ImageFolder::keep_classes`), never scored against another class's label.
    pub left_out: Vec<String>,
}

/// How a folder's classes map onto a model's.
/// - Folders named as the model's classes (its recorded names, e.g. wnids), fewer of them or in
///   another order: matched by name. Fewer is the ImageNet-A / ImageNet-R protocol (Hendrycks
///   et al.): top-k and the loss among those classes' logits only. Folders that match no class
///   are left out and named.
/// - Folders named by class index, `0` .. `N-1` (ImageNet-V2's layout, whose folders sort as
///   text, 0, 1, 10, 100, ...): each folder is the class its number says.
/// - A model that records no names: as many folders as it has classes, in their sorted order
///   (torchvision's ImageFolder rule); another count is an error.
/// - A model that records names none of the folders has: an error (a sorted-order guess would
///   score every image against whichever class sorts there).
pub fn class_columns(
    data: &[String],
    model_names: Option<&[String]>,
    num_classes: i64,
    root: &std::path::Path,
) -> Result<ClassMatch> {
    if let Some(names) = model_names {
        if names == data {
            return Ok(ClassMatch::default());
        }
        let index: std::collections::HashMap<&str, i64> =
            names.iter().enumerate().map(|(i, n)| (n.as_str(), i as i64)).collect();
        let (kept, left_out): (Vec<&String>, Vec<&String>) =
            data.iter().partition(|d| index.contains_key(d.as_str()));
        if !kept.is_empty() {
            let columns: Vec<i64> = kept.iter().map(|d| index[d.as_str()]).collect();
            let how = if kept.len() == names.len() {
                "matched to the model's classes by name (another order)".to_string()
            } else {
                format!(
                    "{} of the model's {} classes, matched by name: top-1/top-5 and the loss among those classes' \
                     logits only (the ImageNet-A/-R protocol)",
                    kept.len(),
                    names.len()
                )
            };
            let left_out = left_out.into_iter().cloned().collect();
            return Ok(ClassMatch { columns: Some(columns), how: Some(how), left_out });
        }
    }
    let numbered: Option<Vec<i64>> = data
        .iter()
        .map(|d| d.parse::<i64>().ok().filter(|i| (0..num_classes).contains(i) && d == &i.to_string()))
        .collect();
    if let Some(columns) = numbered {
        let how = format!(
            "class folders named by class index ({} of {}; ImageNet-V2's layout){}",
            data.len(),
            num_classes,
            if data.len() < num_classes as usize {
                ": top-1/top-5 and the loss among those classes' logits only"
            } else {
                ""
            }
        );
        return Ok(ClassMatch { columns: Some(columns), how: Some(how), left_out: Vec::new() });
    }
    let first = |v: &[String]| v.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    if let Some(names) = model_names {
        return Err(crate::error::Error::Usage(format!(
            "{}: none of its {} class folders ({}, ...) is one of the model's {} classes ({}, ...) or a class \
             index: scoring them in sorted order would label each image as another class. Name the folders as \
             the model's classes, or give the model's class ids with --classes FILE",
            root.display(),
            data.len(),
            first(data),
            names.len(),
            first(names)
        )));
    }
    if data.len() as i64 != num_classes {
        return Err(crate::error::Error::Usage(format!(
            "{}: {} class folders, but the model has {} classes, and the folders are not class indices 0..{} \
             (the checkpoint records no class names: give them with --classes)",
            root.display(),
            data.len(),
            num_classes,
            num_classes - 1
        )));
    }
    Ok(ClassMatch::default())
}

pub fn evaluate(model: &ResNet, loader: &Loader, opts: &EvalOptions) -> Result<EvalResult> {
    Ok(evaluate_sums(model, loader, opts)?.result())
}

/// The loss sum and top-1/top-5 hits over the loader's images (this rank's shard).
pub fn evaluate_sums(model: &ResNet, loader: &Loader, opts: &EvalOptions) -> Result<EvalSums> {
    evaluate_each(model, loader, opts, &mut |_, _| Ok(()))
}

/// As `evaluate_sums`, handing each batch and its top-k class indices (a CPU [n, k] tensor,
/// best first, k = min(5, classes)) to `each` (e.g. to score them against other labels).
pub fn evaluate_each(
    model: &ResNet,
    loader: &Loader,
    opts: &EvalOptions,
    each: &mut dyn FnMut(&Batch, &Tensor) -> Result<()>,
) -> Result<EvalSums> {
    let EvalOptions { device, precision, channels_last, flip_tta, norm, ref columns } = *opts;
    let (mut loss_sum, mut c1, mut c5, mut n, mut left_out) = (0f64, 0i64, 0i64, 0usize, 0usize);
    let columns = columns.as_ref().map(|c| Tensor::from_slice(c).to_device(device));
    let classes = columns.as_ref().map_or(model.config().num_classes, |c| c.size()[0]);
    let k = 5.min(classes);
    for batch in loader.epoch(0, 0) {
        let batch = batch?;
        left_out += batch.left_out;
        if batch.samples.is_empty() {
            continue; // every image of the batch was unreadable
        }
        let x = prepare(&batch.images, device, channels_last, &norm)?;
        let y = batch.labels.f_to_device(device)?;
        let logits = tch::no_grad(|| -> Result<Tensor> {
            let _ac = precision.autocast(device)?;
            let logits = model.forward_t(&x, false).to_kind(Kind::Float);
            let logits = if flip_tta {
                (logits + model.forward_t(&x.flip([3]), false).to_kind(Kind::Float)) / 2.0
            } else {
                logits
            };
            Ok(match &columns {
                Some(c) => logits.f_index_select(1, c)?,
                None => logits,
            })
        })?;
        let loss = logits.f_cross_entropy_loss(&y, None::<Tensor>, tch::Reduction::Sum, -100, 0.0)?;
        let (_, top) = logits.topk(k, 1, true, true);
        each(&batch, &top.f_to_device(Device::Cpu)?)?;
        let hit = top.eq_tensor(&y.unsqueeze(1));
        c1 += hit.narrow(1, 0, 1).sum(Kind::Int64).int64_value(&[]);
        c5 += hit.sum(Kind::Int64).int64_value(&[]);
        loss_sum += loss.double_value(&[]);
        n += y.size()[0] as usize;
    }
    Ok(EvalSums { loss: loss_sum, top1: c1, top5: c5, images: n, left_out })
}

/// One class's share of an evaluation (`eval --per-class`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ClassScore {
    /// The model's class index.
    pub class: i64,
    /// The folder's name.
    pub name: String,
    pub images: usize,
    /// None: no image of the class was scored (not 0%).
    pub top1: Option<f64>,
    pub top5: Option<f64>,
}

/// An evaluation with the scores beyond top-1/top-5 over the whole set.
pub struct Scored {
    pub result: EvalResult,
    pub per_class: Option<Vec<ClassScore>>,
    /// ImageNet-ReaL's labels with this evaluation's hits counted.
    pub real: Option<super::real_labels::RealLabels>,
}

/// Evaluates `model` on `loader`, also per class (`per_class`) and against ImageNet-ReaL's labels
/// (`real`, looked up by each image's file name, all checked before scoring).
pub fn score(
    model: &ResNet,
    loader: &Loader,
    opts: &EvalOptions,
    mut real: Option<super::real_labels::RealLabels>,
    per_class: bool,
) -> Result<Scored> {
    if real.is_none() && !per_class {
        return Ok(Scored { result: evaluate(model, loader, opts)?, per_class: None, real: None });
    }
    let dataset = loader.dataset();
    // Each image's position in real.json, by dataset index.
    let positions: Vec<usize> = match &real {
        Some(real) => {
            dataset.samples.iter().map(|s| real.position(&s.image_name())).collect::<Result<_>>()?
        }
        None => Vec::new(),
    };
    // Per class: images, top-1 hits, top-5 hits.
    let mut counts = vec![(0usize, 0usize, 0usize); dataset.classes.len()];
    let columns = opts.columns.clone();
    let mut count = |batch: &Batch, top: &Tensor| -> Result<()> {
        let top: Vec<Vec<i64>> = Vec::try_from(top)?;
        let labels: Vec<i64> = Vec::try_from(&batch.labels)?;
        for (predicted, &label) in top.iter().zip(&labels) {
            let c = &mut counts[label as usize];
            c.0 += 1;
            c.1 += (predicted[0] == label) as usize;
            c.2 += predicted.contains(&label) as usize;
        }
        if let Some(real) = real.as_mut() {
            for (&sample, predicted) in batch.samples.iter().zip(&top) {
                // ReaL's labels are the model's class indices.
                let predicted: Vec<i64> = match &columns {
                    Some(c) => predicted.iter().map(|&p| c[p as usize]).collect(),
                    None => predicted.clone(),
                };
                real.score(positions[sample], &predicted);
            }
        }
        Ok(())
    };
    let result = evaluate_each(model, loader, opts, &mut count)?.result();
    let percent = |hits: usize, n: usize| (n > 0).then(|| 100.0 * hits as f64 / n as f64);
    let per_class = per_class.then(|| {
        counts
            .iter()
            .enumerate()
            .map(|(i, &(n, t1, t5))| ClassScore {
                // The model's class index (the folder's, matched by name or number).
                class: opts.columns.as_ref().map_or(i as i64, |c| c[i]),
                name: dataset.classes.get(i).cloned().unwrap_or_default(),
                images: n,
                top1: percent(t1, n),
                top5: percent(t5, n),
            })
            .collect()
    });
    Ok(Scored { result, per_class, real })
}
