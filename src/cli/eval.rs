//! `resnet-train eval`: top-1 / top-5 / loss of a checkpoint on a folder of class folders (and, on
//! request, per class and against ImageNet-ReaL's labels), with the same code as the in-training
//! evaluation.

use crate::data::dataset::ImageFolder;
use crate::data::loader::{Loader, LoaderConfig};
use crate::data::transform::Transform;
use crate::error::{Error, Result};
use crate::model::weights;
use crate::train::run::eval::{class_columns, score, ClassMatch, ClassScore, EvalOptions, Scored};
use crate::train::run::real_labels::RealLabels;
use crate::train::step::amp::Precision;
use std::path::PathBuf;
use std::sync::Arc;

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
    #[arg(long, value_parser = crate::train::config::range::int::<usize>(8, crate::data::transform::MAX_SIZE as u64), allow_negative_numbers = true)]
    pub size: Option<usize>,
    /// Resize to floor(size / crop_pct) before the crop (timm's rule; default 0.875).
    #[arg(long, value_parser = crate::train::config::range::float(0.1, 1.0, crate::train::config::range::Ends::Closed), allow_negative_numbers = true)]
    pub crop_pct: Option<f64>,
    /// Resize filter (default: the checkpoint's, else bilinear).
    #[arg(long, value_enum)]
    pub interpolation: Option<crate::data::resize::Filter>,
    #[arg(long, default_value_t = 128, value_parser = crate::train::config::range::int::<usize>(1, 65536), allow_negative_numbers = true)]
    pub batch_size: usize,
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: Precision,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Decode threads (0: all cores).
    #[arg(long, default_value_t = 0, value_parser = crate::train::config::range::int::<usize>(0, 1024), allow_negative_numbers = true)]
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
    #[arg(long, default_value_t = 0.01, value_parser = crate::train::config::range::float(0.0, 1.0, crate::train::config::range::Ends::Closed))]
    pub max_bad_fraction: f64,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let device = crate::runtime::parse_device(&a.device)?;
    let weights::LoadedModel { model, config: cfg, file, .. } =
        weights::load_model_weights(&a.checkpoint, device, a.weights)?;
    let (resize, crop, filter) = preprocessing(&a, &file)?;
    let set = open_eval_set(&a, cfg.num_classes, &file)?;
    let mut lc = LoaderConfig::new(a.batch_size, Transform::Eval { size: crop, resize, filter });
    lc.shuffle = false;
    lc.drop_last_batch = false;
    // An unreadable image is left out and counted, never scored as another image.
    lc.leave_out_unreadable = true;
    lc.max_bad_fraction = a.max_bad_fraction;
    if a.workers > 0 {
        lc.threads = a.workers;
    }
    let loader = Loader::new(set.data, lc)?;
    let opts = EvalOptions {
        device,
        precision: a.precision,
        channels_last: false,
        flip_tta: a.flip_tta,
        norm: file.normalization(),
        columns: set.columns,
    };
    let real = match &a.real_labels {
        Some(p) => Some(RealLabels::read(p, cfg.num_classes)?),
        None => None,
    };
    let Scored { result: r, per_class, real } = score(&model, &loader, &opts, real, a.per_class)?;
    let root = set.root;
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
    if let Some(classes) = &per_class {
        print_per_class(classes);
    }
    let real = real.map(|real| real_summary(&real));
    if let Some(p) = &a.json {
        let v = serde_json::json!({"checkpoint": a.checkpoint, "data": root, "images": r.images, "loss": r.loss, "top1": r.top1, "top5": r.top5,
            "left_out_images": r.left_out, "left_out_classes": set.left_out_classes,
            "resize": resize, "crop": crop, "interpolation": filter, "real": real, "per_class": per_class,
            "classes_matched": set.how});
        crate::fsutil::write_atomic(p, format!("{v}\n").as_bytes())?;
    }
    Ok(())
}

/// The eval resize, crop and filter: the run's recorded preprocessing unless the flags say
/// otherwise.
fn preprocessing(
    a: &EvalArgs,
    file: &weights::WeightsFile,
) -> Result<(usize, usize, crate::data::resize::Filter)> {
    let max = crate::data::transform::MAX_SIZE;
    let (size, crop_pct) = (a.size.unwrap_or(224), a.crop_pct.unwrap_or(0.875));
    if !(8..=max).contains(&size) || !(0.1..=1.0).contains(&crop_pct) || a.batch_size == 0 {
        return Err(Error::Usage(format!(
            "--size must be in 8..={max}, --crop-pct in [0.1, 1] and --batch-size at least 1 (got {size}, {crop_pct}, {})",
            a.batch_size
        )));
    }
    let filter = a.interpolation.unwrap_or_else(|| file.eval_filter());
    let (resize, crop) = match file.eval_size() {
        Some((resize, crop)) if a.size.is_none() && a.crop_pct.is_none() => {
            let what = format!("{}'s recorded eval preprocessing", a.checkpoint.display());
            crate::data::transform::check_eval_sizes(resize, crop, &what)?;
            (resize, crop)
        }
        _ => (crate::data::transform::eval_resize(size, crop_pct), size),
    };
    Ok((resize, crop, filter))
}

/// The folder evaluated, with its class folders matched to the model's classes.
struct EvalSet {
    root: PathBuf,
    data: Arc<ImageFolder>,
    /// The model's class index of each folder kept (None: the same order).
    columns: Option<Vec<i64>>,
    how: Option<String>,
    left_out_classes: Vec<String>,
}

/// `--data`'s val/ (or validation/, or the folder itself), its class folders matched to the
/// model's classes by name (stray folders left out, said); refused where nothing is left.
fn open_eval_set(a: &EvalArgs, num_classes: i64, file: &weights::WeightsFile) -> Result<EvalSet> {
    let root = ["val", "validation"]
        .iter()
        .map(|s| a.data.join(s))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| a.data.clone());
    let data = ImageFolder::open(&root)?;
    let names = match &a.classes {
        Some(p) => {
            let ids = crate::cli::predict::read_class_ids(p)?;
            if ids.len() as i64 != num_classes {
                return Err(Error::file(
                    p,
                    format!("{} class ids for a model with {} classes", ids.len(), num_classes),
                ));
            }
            Some(ids)
        }
        None => file.class_names(),
    };
    let ClassMatch { columns, how, left_out } =
        class_columns(&data.classes, names.as_deref(), num_classes, &root)?;
    if let Some(how) = &how {
        eprintln!("note: {}: {how}", root.display());
    }
    let data = if left_out.is_empty() {
        Arc::new(data)
    } else {
        let kept = data.without_classes(&left_out);
        eprintln!(
            "warning: {}: left out {} class folder(s) that are none of the model's classes ({} images): {}",
            root.display(),
            left_out.len(),
            data.len() - kept.len(),
            left_out.join(", ")
        );
        Arc::new(kept)
    };
    if data.is_empty() {
        return Err(Error::file(&root, "no image left to evaluate"));
    }
    if a.real_labels.is_some() && columns.as_ref().is_some_and(|c| c.len() as i64 != num_classes) {
        return Err(Error::Usage(format!(
            "--real-labels scores all {} classes; {} holds {} of them",
            num_classes,
            root.display(),
            data.classes.len()
        )));
    }
    Ok(EvalSet { root, data, columns, how, left_out_classes: left_out })
}

/// The per-class table (a class with no scored image: "n/a", not 0%).
fn print_per_class(classes: &[ClassScore]) {
    let shown = |p: Option<f64>| p.map_or("n/a".to_string(), |p| format!("{p:.2}%"));
    println!("{:>6}  {:<24}  {:>6}  {:>7}  {:>7}", "class", "name", "images", "top-1", "top-5");
    for c in classes {
        println!(
            "{:>6}  {:<24}  {:>6}  {:>7}  {:>7}",
            c.class,
            c.name,
            c.images,
            shown(c.top1),
            shown(c.top5)
        );
    }
}

/// ImageNet-ReaL's line and JSON (no image with ReaL labels: no accuracy, not 0%).
fn real_summary(real: &RealLabels) -> serde_json::Value {
    if real.images == 0 {
        println!("ImageNet-ReaL: no image with ReaL labels, top-1 n/a, top-5 n/a");
        return serde_json::json!({"images": 0, "top1": null, "top5": null});
    }
    let (top1, top5) = real.accuracy();
    println!("ImageNet-ReaL: {} images with ReaL labels, top-1 {top1:.2}%, top-5 {top5:.2}%", real.images);
    serde_json::json!({"images": real.images, "top1": top1, "top5": top5})
}
