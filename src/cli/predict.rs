//! `resnet-train predict`: classify images with a model file. Architecture and activation come
//! from the file's metadata.

use crate::data::transform;
use crate::error::{Error, Result};
use crate::model::weights;
use crate::rng::SplitMix64;
use std::path::{Path, PathBuf};
use tch::Kind;

#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// Model weights (.safetensors) written by `init` or training, or a converted torchvision state_dict.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Which weights of a training checkpoint: the model's, or their EMA (`last`/`epoch-N` of a
    /// run trained with --model-ema).
    #[arg(long, value_enum, default_value = "model")]
    pub weights: weights::Which,
    /// Class names, one per line in class-index order (`LOC_synset_mapping.txt` format: `wnid name...`).
    #[arg(long)]
    pub classes: Option<PathBuf>,
    #[arg(long, default_value_t = 5, value_parser = crate::train::config::range::int::<i64>(1, 1_000_000), allow_negative_numbers = true)]
    pub topk: i64,
    /// One JSON object per image on stdout.
    #[arg(long)]
    pub json: bool,
    /// Shorter side after resizing (default: what the checkpoint was trained for, else 256).
    #[arg(long, value_parser = crate::train::config::range::int::<usize>(8, 2 * crate::data::transform::MAX_SIZE as u64), allow_negative_numbers = true)]
    pub resize: Option<usize>,
    /// Center-crop size (default: what the checkpoint was trained for, else 224).
    #[arg(long, value_parser = crate::train::config::range::int::<usize>(8, crate::data::transform::MAX_SIZE as u64), allow_negative_numbers = true)]
    pub crop: Option<usize>,
    /// Resize filter (default: what the checkpoint was trained for, else bilinear).
    #[arg(long, value_enum)]
    pub interpolation: Option<crate::data::resize::Filter>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// Reads a `LOC_synset_mapping.txt`-style file: `<wnid> <name, name, ...>` or a bare name per line.
pub fn read_class_names(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let l = l.trim();
            match l.split_once(' ') {
                Some((id, rest)) if id.starts_with('n') && id[1..].chars().all(|c| c.is_ascii_digit()) => {
                    rest.trim().to_string()
                }
                _ => l.to_string(),
            }
        })
        .collect())
}

/// The class ids of a `LOC_synset_mapping.txt`-style file: each line's first word (`n01440764`),
/// or the line when it is one word.
pub fn read_class_ids(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect())
}

#[derive(serde::Serialize)]
struct Prediction<'a> {
    file: &'a str,
    top_indices: Vec<i64>,
    top_names: Option<Vec<String>>,
    top_probs: Vec<f64>,
    logits: Vec<f32>,
}

pub fn run(args: PredictArgs) -> Result<()> {
    if args.topk < 1 {
        return Err(Error::Usage(format!("--topk must be at least 1, got {}", args.topk)));
    }
    let device = crate::runtime::parse_device(&args.device)?;
    let weights::LoadedModel { model, config: cfg, file, .. } =
        weights::load_model_weights(&args.checkpoint, device, args.weights)?;
    let (resize, crop) = {
        let (r, c) = file.eval_size().unwrap_or((256, 224));
        (args.resize.unwrap_or(r), args.crop.unwrap_or(c))
    };
    let what = if args.resize.is_some() || args.crop.is_some() {
        "--resize/--crop".to_string()
    } else {
        format!("{}'s recorded eval preprocessing", args.checkpoint.display())
    };
    transform::check_eval_sizes(resize, crop, &what)?;
    let names = match &args.classes {
        Some(p) => Some(read_class_names(p)?),
        None => file.class_names(),
    };
    if let Some(n) = &names {
        if n.len() as i64 != cfg.num_classes {
            return Err(Error::Usage(format!(
                "{}: {} class names for a model with {} classes",
                args.classes.as_ref().map_or("checkpoint metadata".into(), |p| p.display().to_string()),
                n.len(),
                cfg.num_classes
            )));
        }
    }
    let filter = args.interpolation.unwrap_or_else(|| file.eval_filter());
    let k = args.topk.min(cfg.num_classes);
    let norm = file.normalization();
    let mut failures = 0;
    for path in &args.images {
        let eval = transform::Transform::Eval { size: crop, resize, filter };
        let input = match transform::load_tensor(path, &eval, &mut SplitMix64::new(0)) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                failures += 1;
                continue;
            }
        };
        let logits =
            tch::no_grad(|| model.forward_t(&norm.apply(&input.unsqueeze(0).to_device(device)), false))
                .squeeze_dim(0)
                .to_kind(Kind::Float)
                .to_device(tch::Device::Cpu);
        let probs = logits.softmax(0, Kind::Double);
        let (top_p, top_i) = probs.topk(k, 0, true, true);
        let top_indices: Vec<i64> = Vec::try_from(&top_i)?;
        let top_probs: Vec<f64> = Vec::try_from(&top_p)?;
        let top_names =
            names.as_ref().map(|n| top_indices.iter().map(|&i| n[i as usize].clone()).collect::<Vec<_>>());
        let shown = path.display().to_string();
        if args.json {
            let logits: Vec<f32> = Vec::try_from(&logits)?;
            let p = Prediction { file: &shown, top_indices, top_names, top_probs, logits };
            println!("{}", serde_json::to_string(&p).expect("prediction serialises"));
        } else {
            println!("{shown}");
            for (rank, (&i, &p)) in top_indices.iter().zip(&top_probs).enumerate() {
                let name = top_names.as_ref().map_or(String::new(), |n| format!("  {}", n[rank]));
                println!("  {:>2}. class {i:>4}  p={p:.4}{name}", rank + 1);
            }
        }
    }
    if failures > 0 {
        return Err(Error::Usage(format!("{failures} of {} images could not be read", args.images.len())));
    }
    Ok(())
}
