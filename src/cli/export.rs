//! `resnet-train export`: a model for use outside this project. `torchscript` traces the model's
//! forward pass with the eager activation path (aten operations only, the weights as constants),
//! so that `torch.jit.load` in Python, or libtorch's C++ API, runs it without this project;
//! `safetensors` writes the weights alone (no training state), with the model's metadata, which
//! the `polycom_resnet` Python package (python/) loads as a torchvision ResNet. Each export writes
//! a model card beside it (`OUT.md`): the architecture and activation, the eval preprocessing,
//! and for a file of a run folder the run's config and final metrics.

use crate::error::{Error, Result};
use crate::model::activation::ActImpl;
use crate::model::weights::{self, Which, TRAIN_STATE_PREFIX};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Torchscript,
    /// ONNX (opset 18), through the `polycom_resnet` Python package (`pip install ./python`).
    Onnx,
    Safetensors,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// A model file: a run's checkpoint (`best`, `last`, `epoch-N`), an `init` or `average` file.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// What to write: TorchScript (a traced module) or safetensors (the weights alone).
    #[arg(long, value_enum)]
    pub format: Format,
    /// The file to write (its model card goes beside it, with `.md` appended).
    #[arg(long)]
    pub out: PathBuf,
    /// Which weights of a training checkpoint: the model's, or their EMA.
    #[arg(long, value_enum, default_value = "model")]
    pub weights: Which,
    /// The Python that `--format onnx` runs (with torch, onnx and the polycom_resnet package).
    #[arg(long, default_value = "python3")]
    pub python: PathBuf,
}

pub fn run(a: ExportArgs) -> Result<()> {
    let file = weights::read(&a.checkpoint)?;
    if !file.metadata.contains_key(weights::META_MODEL) {
        return Err(Error::file(
            &a.checkpoint,
            format!(
                "no {} metadata: not a model file of this project (init, train or average write them)",
                weights::META_MODEL
            ),
        ));
    }
    let loaded = weights::load_model_weights(&a.checkpoint, Device::Cpu, a.weights)?;
    match a.format {
        Format::Torchscript => torchscript(&a, &loaded)?,
        Format::Onnx => onnx(&a)?,
        Format::Safetensors => {
            let names = file.class_names();
            weights::save_model(&a.out, &loaded.vs, &loaded.config, names.as_deref())?;
            copy_eval_metadata(&a.out, &file)?;
        }
    }
    let card = model_card(&a, &file, &loaded);
    let card_path = PathBuf::from(format!("{}.md", a.out.display()));
    crate::fsutil::write_atomic(&card_path, card.as_bytes())?;
    println!("wrote {} and its model card {}", a.out.display(), card_path.display());
    Ok(())
}

/// The model traced on one image at its eval crop size, with the eager activations.
fn torchscript(a: &ExportArgs, loaded: &weights::LoadedModel) -> Result<()> {
    let mut cfg = loaded.config;
    cfg.act.implementation = ActImpl::Eager;
    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    let model = crate::model::seeded(0, || crate::model::ResNet::new(&vs.root(), cfg))?;
    vs.copy(&loaded.vs).map_err(|e| Error::file(&a.checkpoint, format!("cannot copy the weights: {e}")))?;
    vs.freeze();
    let crop = loaded.file.eval_size().map_or(224, |(_, crop)| crop) as i64;
    let x = Tensor::zeros([1, 3, crop, crop], (Kind::Float, Device::Cpu));
    let module = tch::no_grad(|| {
        tch::CModule::create_by_tracing("ResNet", "forward", &[x], &mut |inputs| {
            vec![model.forward_t(&inputs[0], false)]
        })
    })
    .map_err(|e| Error::file(&a.checkpoint, format!("cannot trace the model: {e}")))?;
    let tmp = PathBuf::from(format!("{}.tmp-{}", a.out.display(), std::process::id()));
    module.save(&tmp).map_err(|e| Error::file(&a.out, format!("cannot write: {e}")))?;
    std::fs::rename(&tmp, &a.out).map_err(|e| Error::io(&a.out, e))
}

/// ONNX through the Python package's exporter (PyTorch's), in a child process.
fn onnx(a: &ExportArgs) -> Result<()> {
    let which = format!("{:?}", a.weights).to_lowercase();
    let o = std::process::Command::new(&a.python)
        .args(["-m", "polycom_resnet.onnx"])
        .arg(&a.checkpoint)
        .arg(&a.out)
        .args(["--weights", &which])
        .output()
        .map_err(|e| Error::Usage(format!("--format onnx runs {} (--python): {e}", a.python.display())))?;
    if o.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&o.stderr);
    let hint = if err.contains("No module named") {
        " (it needs torch, onnx and the polycom_resnet package: pip install ./python onnx)"
    } else {
        ""
    };
    Err(Error::file(
        &a.out,
        format!("{} -m polycom_resnet.onnx failed{hint}: {}", a.python.display(), err.trim()),
    ))
}

/// The source file's eval preprocessing and class names, kept in the exported weights file.
fn copy_eval_metadata(out: &Path, file: &weights::WeightsFile) -> Result<()> {
    let written = weights::read(out)?;
    let mut meta = written.metadata;
    for key in [weights::META_EVAL, weights::META_CLASSES] {
        if let Some(v) = file.metadata.get(key) {
            meta.insert(key.to_string(), v.clone());
        }
    }
    let tensors = written.tensors.into_iter().filter(|(k, _)| !k.starts_with(TRAIN_STATE_PREFIX)).collect();
    weights::write(out, &tensors, meta)
}

/// The model card: what the model is, how to feed it, and where it comes from.
fn model_card(a: &ExportArgs, file: &weights::WeightsFile, loaded: &weights::LoadedModel) -> String {
    let cfg = &loaded.config;
    let (resize, crop) = file.eval_size().unwrap_or((256, 224));
    let norm = file.normalization();
    let params: i64 = loaded.vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    let mut card = format!(
        "# {} ({})\n\nExported by `resnet-train export --format {}` from `{}` ({} weights).\n\n\
         | | |\n|---|---|\n| architecture | {} (torchvision's ResNet v1.5{}{}) |\n| activation | {}, order {}, \
         norm axis {} |\n| classes | {} |\n| parameters | {params} |\n\n## Input\n\nRGB, resized so that the shorter \
         side is {resize} ({} interpolation, antialiased), center-cropped to {crop} x {crop}, scaled to [0, 1] and \
         normalised with mean {:?} and std {:?}; NCHW float32.\n",
        a.out.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned()),
        cfg.arch.name(),
        format!("{:?}", a.format).to_lowercase(),
        a.checkpoint.display(),
        format!("{:?}", a.weights).to_lowercase(),
        cfg.arch.name(),
        if cfg.small_stem { ", 3x3 stride-1 stem without max-pool" } else { "" },
        if cfg.blurpool { ", BlurPool before strided convolutions" } else { "" },
        format!("{:?}", cfg.act.kind).to_lowercase(),
        cfg.act.order,
        format!("{:?}", cfg.act.axis).to_lowercase(),
        cfg.num_classes,
        format!("{:?}", file.eval_filter()).to_lowercase(),
        norm.mean,
        norm.std,
    );
    let run = a.checkpoint.parent().unwrap_or(Path::new("."));
    if let Ok(summary) = std::fs::read_to_string(run.join("summary.csv")) {
        let lines: Vec<&str> = summary.lines().collect();
        if let (Some(head), Some(last)) = (lines.first(), lines.last().filter(|_| lines.len() > 1)) {
            card += &format!("\n## The run's final metrics (summary.csv)\n\n```\n{head}\n{last}\n```\n");
        }
    }
    if let Ok(config) = std::fs::read_to_string(run.join("config.toml")) {
        card += &format!(
            "\n## The training recipe (the run's config.toml)\n\n```toml\n{}\n```\n",
            config.trim_end()
        );
    }
    card
}
