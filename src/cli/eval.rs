//! `resnet-train eval`: top-1 / top-5 / loss of a checkpoint on a folder of class folders (and, on
//! request, per class and against ImageNet-ReaL's labels), with the same code as the in-training
//! evaluation.

use crate::data::dataset::ImageFolder;
use crate::data::loader::Batch;
use crate::data::loader::{Loader, LoaderConfig};
use crate::data::transform::Transform;
use crate::error::{Error, Result};
use crate::model::weights;
use crate::train::amp::Precision;
use crate::train::eval::{evaluate, evaluate_each, EvalOptions};
use crate::train::real_labels::RealLabels;
use std::path::PathBuf;
use std::sync::Arc;
use tch::Tensor;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Which weights of a training checkpoint: the model's, or their EMA (`last`/`epoch-N` of a
    /// run trained with --model-ema).
    #[arg(long, value_enum, default_value = "model")]
    pub weights: weights::Which,
    /// A folder of class folders, or a dataset root with val/ (or validation/).
    #[arg(long)]
    pub data: PathBuf,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Center-crop size. Unset with --crop-pct unset: the eval preprocessing the checkpoint
    /// records (its run's resize, crop and filter), else 224.
    #[arg(long)]
    pub size: Option<usize>,
    /// Resize to floor(size / crop_pct) before the crop (timm's rule; default 0.875).
    #[arg(long)]
    pub crop_pct: Option<f64>,
    /// Resize filter (default: the checkpoint's, else bilinear).
    #[arg(long, value_enum)]
    pub interpolation: Option<crate::data::resize::Filter>,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: Precision,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Decode threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Average the logits of each image and its mirror image (test-time flip, FFCV's `lr_tta`).
    #[arg(long)]
    pub flip_tta: bool,
    /// Also score against ImageNet-ReaL's labels (real.json; the val images under their
    /// original names), as timm's validate.py `--real-labels`.
    #[arg(long)]
    pub real_labels: Option<PathBuf>,
    /// Also each class's top-1 and top-5 (a table, and `per_class` in the JSON).
    #[arg(long)]
    pub per_class: bool,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let max = crate::data::transform::MAX_SIZE;
    let (size, crop_pct) = (a.size.unwrap_or(224), a.crop_pct.unwrap_or(0.875));
    if !(8..=max).contains(&size) || !(0.1..=1.0).contains(&crop_pct) || a.batch_size == 0 {
        return Err(Error::Usage(format!(
            "--size must be in 8..={max}, --crop-pct in [0.1, 1] and --batch-size at least 1 (got {size}, {crop_pct}, {})",
            a.batch_size
        )));
    }
    let device = crate::runtime::parse_device(&a.device)?;
    let weights::LoadedModel { model, config: cfg, file, .. } =
        weights::load_model_weights(&a.checkpoint, device, a.weights)?;
    let filter = a.interpolation.unwrap_or_else(|| file.eval_filter());
    // The run's own eval preprocessing unless the flags say otherwise.
    let (resize, crop) = match file.eval_size() {
        Some((resize, crop)) if a.size.is_none() && a.crop_pct.is_none() => {
            let what = format!("{}'s recorded eval preprocessing", a.checkpoint.display());
            crate::data::transform::check_eval_sizes(resize, crop, &what)?;
            (resize, crop)
        }
        _ => (crate::data::transform::eval_resize(size, crop_pct), size),
    };
    let root = ["val", "validation"]
        .iter()
        .map(|s| a.data.join(s))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| a.data.clone());
    let data = Arc::new(ImageFolder::open(&root)?);
    if data.classes.len() as i64 != cfg.num_classes {
        return Err(Error::Usage(format!(
            "{}: {} class folders, but the model has {} classes",
            root.display(),
            data.classes.len(),
            cfg.num_classes
        )));
    }
    if let Some(names) = file.class_names() {
        if names != data.classes {
            eprintln!(
                "warning: the class folders of {} differ from the checkpoint's class names",
                root.display()
            );
        }
    }
    let mut lc = LoaderConfig::new(a.batch_size, Transform::Eval { size: crop, resize, filter });
    lc.shuffle = false;
    lc.drop_last_batch = false;
    if a.workers > 0 {
        lc.threads = a.workers;
    }
    let loader = Loader::new(data, lc)?;
    let opts = EvalOptions {
        device,
        precision: a.precision,
        channels_last: false,
        flip_tta: a.flip_tta,
        norm: file.normalization(),
    };
    let mut real = match &a.real_labels {
        Some(p) => Some(RealLabels::read(p, cfg.num_classes)?),
        None => None,
    };
    // Per class: images, top-1 hits, top-5 hits.
    let mut classes = vec![(0usize, 0usize, 0usize); cfg.num_classes as usize];
    let r = if real.is_none() && !a.per_class {
        evaluate(&model, &loader, &opts)?
    } else {
        // Unshuffled and unsharded: batch b holds the samples draws[b * batch ..].
        let positions: Vec<usize> = match &real {
            Some(real) => loader
                .sampler()
                .draws(0)
                .iter()
                .map(|&(i, _)| real.position(&loader.dataset().samples[i].path))
                .collect::<Result<_>>()?,
            None => Vec::new(),
        };
        let mut score = |batch: &Batch, top: &Tensor| -> Result<()> {
            let top: Vec<Vec<i64>> = Vec::try_from(top)?;
            let labels: Vec<i64> = Vec::try_from(&batch.labels)?;
            for (predicted, &label) in top.iter().zip(&labels) {
                let c = &mut classes[label as usize];
                c.0 += 1;
                c.1 += (predicted[0] == label) as usize;
                c.2 += predicted.contains(&label) as usize;
            }
            if let Some(real) = real.as_mut() {
                if batch.replaced > 0 {
                    return Err(Error::Usage(format!(
                        "{} unreadable images (named above): ReaL accuracy needs every image",
                        batch.replaced
                    )));
                }
                for (j, predicted) in top.iter().enumerate() {
                    real.score(positions[batch.index * a.batch_size + j], predicted);
                }
            }
            Ok(())
        };
        evaluate_each(&model, &loader, &opts, &mut score)?.result()
    };
    println!(
        "{}: {} images (resize {resize} {}, crop {crop}), loss {:.4}, top-1 {:.2}%, top-5 {:.2}%",
        root.display(),
        r.images,
        filter.name(),
        r.loss,
        r.top1,
        r.top5
    );
    let per_class: Option<Vec<serde_json::Value>> = a.per_class.then(|| {
        let percent = |hits: usize, n: usize| 100.0 * hits as f64 / n.max(1) as f64;
        println!("{:>6}  {:<24}  {:>6}  {:>7}  {:>7}", "class", "name", "images", "top-1", "top-5");
        classes
            .iter()
            .enumerate()
            .map(|(i, &(n, t1, t5))| {
                let name = loader.dataset().classes.get(i).map_or("", |s| s.as_str());
                println!("{i:>6}  {name:<24}  {n:>6}  {:>6.2}%  {:>6.2}%", percent(t1, n), percent(t5, n));
                serde_json::json!({"class": i, "name": name, "images": n, "top1": percent(t1, n), "top5": percent(t5, n)})
            })
            .collect()
    });
    let real = real.map(|real| {
        let (top1, top5) = real.accuracy();
        println!(
            "ImageNet-ReaL: {} images with ReaL labels, top-1 {top1:.2}%, top-5 {top5:.2}%",
            real.images
        );
        serde_json::json!({"images": real.images, "top1": top1, "top5": top5})
    });
    if let Some(p) = &a.json {
        let v = serde_json::json!({"checkpoint": a.checkpoint, "data": root, "images": r.images, "loss": r.loss, "top1": r.top1, "top5": r.top5,
            "resize": resize, "crop": crop, "interpolation": filter, "real": real, "per_class": per_class});
        crate::fsutil::write_atomic(p, format!("{v}\n").as_bytes())?;
    }
    Ok(())
}
