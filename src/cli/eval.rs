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
use crate::train::eval::{class_columns, evaluate, evaluate_each, ClassMatch, EvalOptions};
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
    #[arg(long, value_parser = crate::train::range::int::<usize>(8, crate::data::transform::MAX_SIZE as u64), allow_negative_numbers = true)]
    pub size: Option<usize>,
    /// Resize to floor(size / crop_pct) before the crop (timm's rule; default 0.875).
    #[arg(long, value_parser = crate::train::range::float(0.1, 1.0, crate::train::range::Ends::Closed), allow_negative_numbers = true)]
    pub crop_pct: Option<f64>,
    /// Resize filter (default: the checkpoint's, else bilinear).
    #[arg(long, value_enum)]
    pub interpolation: Option<crate::data::resize::Filter>,
    #[arg(long, default_value_t = 128, value_parser = crate::train::range::int::<usize>(1, 65536), allow_negative_numbers = true)]
    pub batch_size: usize,
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: Precision,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Decode threads (0: all cores).
    #[arg(long, default_value_t = 0, value_parser = crate::train::range::int::<usize>(0, 1024), allow_negative_numbers = true)]
    pub workers: usize,
    /// Average the logits of each image and its mirror image (test-time flip, FFCV's `lr_tta`).
    #[arg(long)]
    pub flip_tta: bool,
    /// Also score against ImageNet-ReaL's labels (real.json; the val images under their
    /// original names), as timm's validate.py `--real-labels`.
    #[arg(long)]
    pub real_labels: Option<PathBuf>,
    /// The model's class ids, one per line in class-index order (`LOC_synset_mapping.txt`: the
    /// first word, a wnid), for a checkpoint that records none (e.g. converted torchvision
    /// weights): the class folders are then matched to them by name (ImageNet-A/-R's 200).
    #[arg(long)]
    pub classes: Option<PathBuf>,
    /// Also each class's top-1 and top-5 (a table, and `per_class` in the JSON).
    #[arg(long)]
    pub per_class: bool,
    /// Stop when more than this fraction of the images is unreadable; below it, each unreadable
    /// image is named, left out of the score and counted (`left_out_images` in the JSON).
    #[arg(long, default_value_t = 0.01, value_parser = crate::train::range::float(0.0, 1.0, crate::train::range::Ends::Closed))]
    pub max_bad_fraction: f64,
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
    let data = ImageFolder::open(&root)?;
    let names = match &a.classes {
        Some(p) => {
            let ids = crate::cli::predict::read_class_ids(p)?;
            if ids.len() as i64 != cfg.num_classes {
                return Err(Error::file(
                    p,
                    format!("{} class ids for a model with {} classes", ids.len(), cfg.num_classes),
                ));
            }
            Some(ids)
        }
        None => file.class_names(),
    };
    let ClassMatch { columns, how, left_out: left_out_classes } =
        class_columns(&data.classes, names.as_deref(), cfg.num_classes, &root)?;
    if let Some(how) = &how {
        eprintln!("note: {}: {how}", root.display());
    }
    let data = if left_out_classes.is_empty() {
        Arc::new(data)
    } else {
        let kept = data.without_classes(&left_out_classes);
        eprintln!(
            "warning: {}: left out {} class folder(s) that are none of the model's classes ({} images): {}",
            root.display(),
            left_out_classes.len(),
            data.len() - kept.len(),
            left_out_classes.join(", ")
        );
        Arc::new(kept)
    };
    if data.is_empty() {
        return Err(Error::file(&root, "no image left to evaluate"));
    }
    if a.real_labels.is_some() && columns.as_ref().is_some_and(|c| c.len() as i64 != cfg.num_classes) {
        return Err(Error::Usage(format!(
            "--real-labels scores all {} classes; {} holds {} of them",
            cfg.num_classes,
            root.display(),
            data.classes.len()
        )));
    }
    let mut lc = LoaderConfig::new(a.batch_size, Transform::Eval { size: crop, resize, filter });
    lc.shuffle = false;
    lc.drop_last_batch = false;
    // An unreadable image is left out and counted, never scored as another image.
    lc.leave_out_unreadable = true;
    lc.max_bad_fraction = a.max_bad_fraction;
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
        columns: columns.clone(),
    };
    let mut real = match &a.real_labels {
        Some(p) => Some(RealLabels::read(p, cfg.num_classes)?),
        None => None,
    };
    // Per class: images, top-1 hits, top-5 hits.
    let mut classes = vec![(0usize, 0usize, 0usize); loader.dataset().classes.len()];
    let r = if real.is_none() && !a.per_class {
        evaluate(&model, &loader, &opts)?
    } else {
        // Each image's position in real.json, by dataset index (checked for all before scoring).
        let positions: Vec<usize> = match &real {
            Some(real) => {
                loader.dataset().samples.iter().map(|s| real.position(&s.path)).collect::<Result<_>>()?
            }
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
        evaluate_each(&model, &loader, &opts, &mut score)?.result()
    };
    if r.images == 0 {
        return Err(Error::file(
            &root,
            format!("none of its {} images could be read: nothing scored", r.left_out),
        ));
    }
    println!(
        "{}: {} images (resize {resize} {}, crop {crop}), loss {:.4}, top-1 {:.2}%, top-5 {:.2}%{}",
        root.display(),
        r.images,
        filter.name(),
        r.loss,
        r.top1,
        r.top5,
        match r.left_out {
            0 => String::new(),
            n => format!(" ({n} unreadable image(s) left out, named above; not in the count)"),
        }
    );
    let per_class: Option<Vec<serde_json::Value>> = a.per_class.then(|| {
        // A class with no scored image has no accuracy ("n/a", null), not 0%.
        let percent = |hits: usize, n: usize| (n > 0).then(|| 100.0 * hits as f64 / n as f64);
        let shown = |p: Option<f64>| p.map_or("n/a".to_string(), |p| format!("{p:.2}%"));
        println!("{:>6}  {:<24}  {:>6}  {:>7}  {:>7}", "class", "name", "images", "top-1", "top-5");
        classes
            .iter()
            .enumerate()
            .map(|(i, &(n, t1, t5))| {
                let name = loader.dataset().classes.get(i).map_or("", |s| s.as_str());
                // The model's class index (the folder's, matched by name or number).
                let class = columns.as_ref().map_or(i as i64, |c| c[i]);
                println!("{class:>6}  {name:<24}  {n:>6}  {:>7}  {:>7}", shown(percent(t1, n)), shown(percent(t5, n)));
                serde_json::json!({"class": class, "name": name, "images": n, "top1": percent(t1, n), "top5": percent(t5, n)})
            })
            .collect()
    });
    let real = real.map(|real| {
        if real.images == 0 {
            // No scored image has a ReaL label (real.json's empty lists): no accuracy, not 0%.
            println!("ImageNet-ReaL: no image with ReaL labels, top-1 n/a, top-5 n/a");
            return serde_json::json!({"images": 0, "top1": null, "top5": null});
        }
        let (top1, top5) = real.accuracy();
        println!(
            "ImageNet-ReaL: {} images with ReaL labels, top-1 {top1:.2}%, top-5 {top5:.2}%",
            real.images
        );
        serde_json::json!({"images": real.images, "top1": top1, "top5": top5})
    });
    if let Some(p) = &a.json {
        let v = serde_json::json!({"checkpoint": a.checkpoint, "data": root, "images": r.images, "loss": r.loss, "top1": r.top1, "top5": r.top5,
            "left_out_images": r.left_out, "left_out_classes": left_out_classes,
            "resize": resize, "crop": crop, "interpolation": filter, "real": real, "per_class": per_class,
            "classes_matched": how});
        crate::fsutil::write_atomic(p, format!("{v}\n").as_bytes())?;
    }
    Ok(())
}
