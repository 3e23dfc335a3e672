//! Model weights as safetensors (f32) under torchvision's key names plus the activation keys
//! (`act1.weight`, `layer1.0.act3.bias`, ...). The model's shape-defining config travels in the
//! file's `__metadata__`, so `predict`/`eval` need no re-typed flags. Loading is strict: missing,
//! unexpected or mis-shaped keys fail with a report that lists them.

use super::activation::{ActConfig, ActKind};
use super::resnet::{Arch, ResNetConfig};
use crate::data::resize::Filter;
use crate::data::transform::Normalization;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use rayon::prelude::*;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{nn, Kind, Tensor};

/// Metadata key holding the model config as JSON.
pub const META_MODEL: &str = "resnet_train.model";
/// Metadata key holding the class names as a JSON array (optional).
pub const META_CLASSES: &str = "resnet_train.class_names";
/// Metadata key holding the eval preprocessing a trained model expects: {"resize": R, "crop": C}.
pub const META_EVAL: &str = "resnet_train.eval";
/// Keys of a training checkpoint that are not model weights (momentum, loss scaler).
pub const TRAIN_STATE_PREFIX: &str = "train_state.";
/// Buffers torchvision state_dicts carry that this implementation does not track.
const IGNORED_SUFFIXES: [&str; 1] = [".num_batches_tracked"];

/// A weights file in memory: tensors by name (on CPU, as stored) and the metadata.
pub struct WeightsFile {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F64 => Kind::Double,
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        _ => return None,
    })
}

/// Reads every tensor and the metadata of a safetensors file.
pub fn read(path: &Path) -> Result<WeightsFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::file(path, format!("not a valid safetensors file ({e})")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::file(path, format!("not a valid safetensors file ({e})")))?;
    check_tensor_checksums(path, &meta.metadata().clone().unwrap_or_default(), &st)?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype()).ok_or_else(|| {
            Error::file(path, format!("tensor {name} has unsupported dtype {:?}", view.dtype()))
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
        tensors.insert(name, t);
    }
    let metadata = meta.metadata().clone().unwrap_or_default();
    Ok(WeightsFile { tensors, metadata })
}

/// The metadata of a safetensors file, from its header alone (epoch checkpoints are ranked by
/// what their metadata says without reading their tensors).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let bad = |why: String| Error::file(path, format!("not a valid safetensors file ({why})"));
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| bad(format!("no header: {e}")))?;
    let len = u64::from_le_bytes(len);
    // safetensors' own limit on a header (100 MB).
    if len > 100_000_000 {
        return Err(bad(format!("a header of {len} bytes")));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|e| bad(format!("header cut short: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let meta = json.get("__metadata__").and_then(|m| m.as_object());
    Ok(meta
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default())
}

/// The metadata key of the tensors' CRC-32s (a JSON object: tensor name -> 8 hex digits).
pub const META_TENSOR_CRC32: &str = "tensor_crc32";

fn crc32_hex(bytes: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(bytes))
}

/// A file whose tensor bytes changed after it was written (a disk error, a partial overwrite)
/// is refused on load, naming the tensors, instead of resuming and being diagnosed later as a
/// divergence. Files written before the checksums were recorded are read as they are.
fn check_tensor_checksums(
    path: &Path,
    metadata: &HashMap<String, String>,
    st: &safetensors::SafeTensors,
) -> Result<()> {
    let Some(recorded) = metadata.get(META_TENSOR_CRC32) else { return Ok(()) };
    let recorded: BTreeMap<String, String> = serde_json::from_str(recorded)
        .map_err(|e| Error::file(path, format!("bad {META_TENSOR_CRC32} metadata: {e}")))?;
    let mut damaged: Vec<String> = Vec::new();
    for (name, view) in st.tensors() {
        if recorded.get(&name).is_some_and(|crc| *crc != crc32_hex(view.data())) {
            damaged.push(name);
        }
    }
    if damaged.is_empty() {
        return Ok(());
    }
    damaged.sort();
    let shown: Vec<&str> = damaged.iter().take(5).map(String::as_str).collect();
    Err(Error::file(
        path,
        format!(
            "damaged: the bytes of {} tensor(s) differ from the checksums recorded when the file was written ({}{}); \
             the file was changed on disk after it was saved. Use another checkpoint (an epoch-N file, or a copy)",
            damaged.len(),
            shown.join(", "),
            if damaged.len() > shown.len() { ", ..." } else { "" }
        ),
    ))
}

/// Writes tensors (as f32, except integer buffers: i64 and i32) and metadata atomically, with a
/// CRC-32 of each tensor's bytes in the metadata (checked by `read`).
pub fn write(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    mut metadata: HashMap<String, String>,
) -> Result<()> {
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.detach().to_device(tch::Device::Cpu);
        let (t, dtype, width) = match t.kind() {
            Kind::Int64 => (t, Dtype::I64, 8),
            Kind::Int => (t, Dtype::I32, 4),
            _ => (t.to_kind(Kind::Float), Dtype::F32, 4),
        };
        let t = t.contiguous();
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let mut data = vec![0u8; t.numel() * width];
        t.f_copy_data_u8(&mut data, t.numel())?;
        owned.push((name.clone(), dtype, shape, data));
    }
    let crcs: BTreeMap<&str, String> =
        owned.par_iter().map(|(name, _, _, data)| (name.as_str(), crc32_hex(data))).collect();
    metadata.insert(
        META_TENSOR_CRC32.to_string(),
        serde_json::to_string(&crcs).map_err(|e| Error::file(path, format!("cannot serialise: {e}")))?,
    );
    let mut views = Vec::with_capacity(owned.len());
    for (name, dtype, shape, data) in &owned {
        let view = TensorView::new(*dtype, shape.clone(), data)
            .map_err(|e| Error::file(path, format!("tensor {name}: {e}")))?;
        views.push((name.as_str(), view));
    }
    let bytes = safetensors::serialize(views, &Some(metadata))
        .map_err(|e| Error::file(path, format!("cannot serialise: {e}")))?;
    write_atomic(path, &bytes)
}

/// Saves a model's variables (parameters and BN running statistics) with its config.
pub fn save_model(
    path: &Path,
    vs: &nn::VarStore,
    cfg: &ResNetConfig,
    class_names: Option<&[String]>,
) -> Result<()> {
    let tensors: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut meta = HashMap::new();
    meta.insert(META_MODEL.to_string(), serde_json::to_string(cfg).expect("config serialises"));
    meta.insert("format".to_string(), "pt".to_string()); // what safetensors' torch loader expects
    if let Some(names) = class_names {
        meta.insert(META_CLASSES.to_string(), serde_json::to_string(names).expect("names serialise"));
    }
    write(path, &tensors, meta)
}

impl WeightsFile {
    /// The model config: from the metadata when present, else inferred from the keys and shapes
    /// (so a converted torchvision `resnetXX` state_dict loads as a ReLU model).
    pub fn model_config(&self, path: &Path) -> Result<ResNetConfig> {
        if let Some(json) = self.metadata.get(META_MODEL) {
            let cfg: ResNetConfig = serde_json::from_str(json)
                .map_err(|e| Error::file(path, format!("bad {META_MODEL} metadata: {e}")))?;
            cfg.validate().map_err(|e| Error::file(path, e.to_string()))?;
            return Ok(cfg);
        }
        self.infer_config().map_err(|msg| Error::file(path, format!("no {META_MODEL} metadata, and {msg}")))
    }

    /// (resize, crop) of the eval preprocessing the model was trained for, when recorded.
    pub fn eval_size(&self) -> Option<(usize, usize)> {
        let v: serde_json::Value = serde_json::from_str(self.metadata.get(META_EVAL)?).ok()?;
        Some((v["resize"].as_u64()? as usize, v["crop"].as_u64()? as usize))
    }

    /// The eval resize filter the model was trained for (files from before it was recorded, and
    /// files that do not say: bilinear, torchvision's).
    pub fn eval_filter(&self) -> Filter {
        let v: Option<serde_json::Value> =
            self.metadata.get(META_EVAL).and_then(|s| serde_json::from_str(s).ok());
        v.and_then(|v| serde_json::from_value(v["interpolation"].clone()).ok()).unwrap_or_default()
    }

    /// The input normalization the model was trained with (files that do not say: ImageNet's).
    pub fn normalization(&self) -> Normalization {
        let v: Option<serde_json::Value> =
            self.metadata.get(META_EVAL).and_then(|s| serde_json::from_str(s).ok());
        let channel =
            |key: &str| v.as_ref().and_then(|v| serde_json::from_value::<[f64; 3]>(v[key].clone()).ok());
        let default = Normalization::default();
        Normalization {
            mean: channel("mean").unwrap_or(default.mean),
            std: channel("std").unwrap_or(default.std),
        }
    }

    pub fn class_names(&self) -> Option<Vec<String>> {
        self.metadata.get(META_CLASSES).and_then(|s| serde_json::from_str(s).ok())
    }

    fn infer_config(&self) -> std::result::Result<ResNetConfig, String> {
        let fc = self.tensors.get("fc.weight").ok_or("it has no fc.weight, so it is not a ResNet")?;
        let conv1 =
            self.tensors.get("conv1.weight").ok_or("it has no conv1.weight, so it is not a ResNet")?;
        let bottleneck = self.tensors.contains_key("layer1.0.conv3.weight");
        let mut layers = [0usize; 4];
        for (s, n) in layers.iter_mut().enumerate() {
            while self.tensors.contains_key(&format!("layer{}.{}.conv1.weight", s + 1, *n)) {
                *n += 1;
            }
        }
        let arch = Arch::all()
            .into_iter()
            .find(|a| a.layers() == layers && a.bottleneck() == bottleneck)
            .ok_or_else(|| format!("its blocks per stage {layers:?} match no known ResNet"))?;
        if self.tensors.keys().any(|k| k.contains(".act") || k.starts_with("act")) {
            return Err("it has activation parameters, so its activation kind is ambiguous".into());
        }
        let mut cfg = ResNetConfig::new(arch, ActConfig::new(ActKind::Relu, 1));
        cfg.num_classes = fc.size()[0];
        cfg.small_stem = conv1.size().get(2) == Some(&3);
        Ok(cfg)
    }
}

/// Copies `file`'s tensors into the model's variables. Fails, listing every problem, when a key is
/// missing, unexpected, or has the wrong shape; nothing is copied then.
pub fn load_into(vs: &mut nn::VarStore, file: &WeightsFile, path: &Path) -> Result<()> {
    let vars = vs.variables();
    let mut missing: Vec<&str> =
        vars.keys().filter(|k| !file.tensors.contains_key(*k)).map(|k| k.as_str()).collect();
    let mut unexpected: Vec<&str> = file
        .tensors
        .keys()
        .filter(|k| {
            !vars.contains_key(*k)
                && !IGNORED_SUFFIXES.iter().any(|s| k.ends_with(s))
                && !k.starts_with(TRAIN_STATE_PREFIX)
        })
        .map(|k| k.as_str())
        .collect();
    let mut mis_shaped: Vec<String> = file
        .tensors
        .iter()
        .filter_map(|(k, t)| {
            let v = vars.get(k)?;
            (v.size() != t.size()).then(|| format!("{k}: file {:?}, model {:?}", t.size(), v.size()))
        })
        .collect();
    if !(missing.is_empty() && unexpected.is_empty() && mis_shaped.is_empty()) {
        missing.sort();
        unexpected.sort();
        mis_shaped.sort();
        let mut report = String::new();
        let mut section = |title: &str, items: Vec<String>| {
            if !items.is_empty() {
                report.push_str(&format!("  {title} ({}):\n", items.len()));
                for i in items {
                    report.push_str(&format!("    {i}\n"));
                }
            }
        };
        section("missing keys", missing.iter().map(|s| s.to_string()).collect());
        section("unexpected keys", unexpected.iter().map(|s| s.to_string()).collect());
        section("shape mismatches", mis_shaped);
        return Err(Error::KeyMismatch { path: path.to_path_buf(), report: report.trim_end().to_string() });
    }
    tch::no_grad(|| -> Result<()> {
        for (name, var) in vars {
            let src = &file.tensors[&name];
            let mut var = var;
            var.f_copy_(&src.f_to_kind(var.kind())?.f_to_device(var.device())?)?;
        }
        Ok(())
    })
}

/// Loads a training run's starting weights (`initial_checkpoint`) into the freshly initialised
/// model in `vs`, whose config is `model`: strict for the convolutions and BatchNorms, with two
/// exceptions fine-tuning needs, each reported in the returned notes: a classifier of another
/// size (other classes) and activation coefficients the file lacks or holds for another
/// activation (a torchvision ReLU ResNet started as PolyNorm) keep their init. `classes`: the
/// data's class names, compared with those the file records when the counts match.
pub fn load_initial(
    vs: &mut nn::VarStore,
    model: &ResNetConfig,
    classes: &[String],
    path: &Path,
) -> Result<Vec<String>> {
    let file = read(path)?;
    let source = file.model_config(path)?;
    if (source.arch, source.small_stem) != (model.arch, model.small_stem) {
        let name = |c: &ResNetConfig| {
            format!("{}{}", c.arch.name(), if c.small_stem { " (small stem)" } else { "" })
        };
        return Err(Error::file(
            path,
            format!(
                "holds a {}, the run trains a {}: --arch (and --small-stem) must match",
                name(&source),
                name(model)
            ),
        ));
    }
    let live = vs.variables();
    let recorded_classes = file.class_names();
    let mut tensors = file.tensors;
    let mut notes = Vec::new();
    // The model's own (initial) values for the keys `keep` selects; the file's others of them go.
    let keep_init = |tensors: &mut BTreeMap<String, Tensor>, keep: &dyn Fn(&str) -> bool| {
        for (name, var) in &live {
            if keep(name) {
                tensors.insert(name.clone(), var.shallow_clone());
            }
        }
        tensors.retain(|k, _| live.contains_key(k) || !keep(k));
    };
    let is_fc = |k: &str| k == "fc.weight" || k == "fc.bias";
    if source.num_classes != model.num_classes {
        keep_init(&mut tensors, &is_fc);
        notes.push(format!(
            "{} has {} classes, the data {}: the classifier (fc) starts at its init",
            path.display(),
            source.num_classes,
            model.num_classes
        ));
    } else if let Some(names) = recorded_classes.filter(|n| n.as_slice() != classes) {
        if let Some((i, (a, b))) = names.iter().zip(classes).enumerate().find(|(_, (a, b))| a != b) {
            notes.push(format!(
                "{}'s classes differ from the data's (class {i}: {a} in the file, {b} in the data): the \
                 classifier's rows are taken as they are",
                path.display()
            ));
        }
    }
    let is_act = |k: &str| super::resnet::param_group(k, &[]) == super::ParamGroup::Activation;
    let same_act = (source.act.kind, source.act.order) == (model.act.kind, model.act.order);
    if !same_act {
        keep_init(&mut tensors, &is_act);
        let describe = |c: &ActConfig| match c.kind {
            ActKind::Relu => "ReLU".to_string(),
            ActKind::Polyrelu => format!("PolyReLU order {}", c.order),
            ActKind::Polynorm => format!("PolyNorm order {}", c.order),
        };
        if model.act.kind != ActKind::Relu {
            notes.push(format!(
                "{} is a {} model: the activation coefficients start at their init ({})",
                path.display(),
                describe(&source.act),
                describe(&model.act)
            ));
        } else if source.act.kind != ActKind::Relu {
            notes.push(format!(
                "{} is a {} model: its activation coefficients are not used (the run trains ReLU)",
                path.display(),
                describe(&source.act)
            ));
        }
    }
    if source.blurpool != model.blurpool {
        let with = |b: bool| if b { "with" } else { "without" };
        notes.push(format!(
            "{} was trained {} BlurPool, the run trains {} it: the same weights, a different network at first",
            path.display(),
            with(source.blurpool),
            with(model.blurpool)
        ));
    }
    // Split BN: auxiliary BNs the file lacks start as copies of its main BNs (timm's
    // convert_splitbn_model copies them so); auxiliary BNs the run does not train are dropped.
    let mut copied = 0;
    for name in live.keys() {
        if let Some(main) = main_bn_of_aux(name).filter(|_| !tensors.contains_key(name)) {
            if let Some(t) = tensors.get(&main) {
                let t = t.copy();
                tensors.insert(name.clone(), t);
                copied += 1;
            }
        }
    }
    if copied > 0 {
        notes.push(format!(
            "{} has no split BatchNorms: the auxiliary BNs start as copies of its BNs",
            path.display()
        ));
    }
    tensors.retain(|k, _| live.contains_key(k) || main_bn_of_aux(k).is_none());
    load_into(vs, &WeightsFile { tensors, metadata: file.metadata }, path)?;
    check_finite(vs, path)?;
    Ok(notes)
}

/// The main BN's key of an auxiliary (split) BN's: `layer1.0.bn1.aux_bn.0.weight` ->
/// `layer1.0.bn1.weight`; None for any other key.
fn main_bn_of_aux(key: &str) -> Option<String> {
    let at = key.find(".aux_bn.")?;
    let rest = &key[at + ".aux_bn.".len()..];
    let (index, leaf) = rest.split_once('.')?;
    index.parse::<usize>().ok()?;
    Some(format!("{}.{leaf}", &key[..at]))
}

/// A model ready for inference: built from a file's config and loaded with its weights.
pub struct LoadedModel {
    pub vs: nn::VarStore,
    pub model: super::ResNet,
    pub config: ResNetConfig,
    pub file: WeightsFile,
}

/// Reads `path`, builds the model its metadata (or keys) describe on `device`, loads the weights.
pub fn load_model(path: &Path, device: tch::Device) -> Result<LoadedModel> {
    load_model_from(read(path)?, path, device)
}

/// As `load_model`, with the weights `which` selects: the model's, or the EMA weights a training
/// checkpoint (`last`, `epoch-N`) holds under `train_state.ema.`.
pub fn load_model_weights(path: &Path, device: tch::Device, which: Which) -> Result<LoadedModel> {
    let file = read(path)?;
    let tensors = weights_of(&file, path, which)?;
    load_model_from(WeightsFile { tensors, metadata: file.metadata }, path, device)
}

/// The model weights `which` selects in a file read from `path`, under their model names: the
/// top-level tensors but a checkpoint's training state, or the EMA weights under
/// `train_state.ema.`.
pub fn weights_of(file: &WeightsFile, path: &Path, which: Which) -> Result<BTreeMap<String, Tensor>> {
    let prefix = match which {
        Which::Model => String::new(),
        Which::Ema => format!("{TRAIN_STATE_PREFIX}ema."),
    };
    let tensors: BTreeMap<String, Tensor> = file
        .tensors
        .iter()
        .filter(|(k, _)| which == Which::Ema || !k.starts_with(TRAIN_STATE_PREFIX))
        .filter_map(|(k, t)| k.strip_prefix(&prefix).map(|n| (n.to_string(), t.shallow_clone())))
        .filter(|(n, _)| which == Which::Model || n != "updates")
        .collect();
    if tensors.is_empty() && which == Which::Ema {
        return Err(Error::file(
            path,
            "holds no EMA weights (trained without --model-ema, or not a training checkpoint): drop --weights ema",
        ));
    }
    Ok(tensors)
}

/// Which weights of a checkpoint to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// The trained model's weights.
    Model,
    /// The exponential moving average of the weights (`--model-ema`).
    Ema,
}

fn load_model_from(file: WeightsFile, path: &Path, device: tch::Device) -> Result<LoadedModel> {
    let config = file.model_config(path)?;
    let mut vs = nn::VarStore::new(device);
    let model = super::seeded(0, || super::ResNet::new(&vs.root(), config))?; // (values overwritten; the lock keeps other threads' seeded inits intact)
    load_into(&mut vs, &file, path)?;
    check_finite(&vs, path)?;
    Ok(LoadedModel { vs, model, config, file })
}

/// A checkpoint of a diverged run holds NaN/inf: say so (naming the file and the first tensors)
/// instead of printing p=NaN or training from it.
fn check_finite(vs: &nn::VarStore, path: &Path) -> Result<()> {
    let mut bad: Vec<String> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.isfinite().all().int64_value(&[]) == 0)
        .map(|(n, _)| n)
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    bad.sort();
    Err(Error::file(
        path,
        format!(
            "{} tensor(s) hold NaN or infinite values ({}{}): the run had diverged when this was saved",
            bad.len(),
            bad.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
            if bad.len() > 3 { ", ..." } else { "" }
        ),
    ))
}
