//! Weights on disk: round trip with metadata, strict key checking, torchvision state_dicts, and
//! (when a reference Python is available) loading our file into the reference PolyResNet.

mod common;

use resnet_train::model::weights::{self, load_into, save_model};
use resnet_train::model::{ActConfig, ActInit, ActKind, Arch, ResNet, ResNetConfig};
use std::collections::{BTreeMap, HashMap};
use tch::{nn, Device, Kind, Tensor};

fn model(cfg: ResNetConfig) -> (nn::VarStore, ResNet) {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = ResNet::new(&vs.root(), cfg).unwrap();
    (vs, m)
}

fn small_cfg() -> ResNetConfig {
    let mut c = ResNetConfig::new(Arch::Resnet18, ActConfig::new(ActKind::Polynorm, 2));
    c.num_classes = 7;
    c
}

#[test]
fn round_trip_restores_config_names_and_values() {
    let dir = common::tmpdir();
    let path = dir.path().join("w.safetensors");
    let cfg = small_cfg();
    let (vs, m) = model(cfg);
    let names: Vec<String> = (0..7).map(|i| format!("class {i}")).collect();
    save_model(&path, &vs, &cfg, Some(&names)).unwrap();

    let file = weights::read(&path).unwrap();
    assert_eq!(file.model_config(&path).unwrap(), cfg);
    assert_eq!(file.class_names().unwrap(), names);
    assert!(file.tensors.values().all(|t| t.kind() == Kind::Float), "weights are stored as f32");
    let (mut vs2, m2) = model(cfg);
    load_into(&mut vs2, &file, &path).unwrap();
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let (a, b) = tch::no_grad(|| (m.forward_t(&x, false), m2.forward_t(&x, false)));
    assert_eq!(common::rel_err(&a, &b), 0.0);
}

#[test]
fn mismatched_files_fail_listing_every_problem() {
    let dir = common::tmpdir();
    let path = dir.path().join("w.safetensors");
    let (vs, _) = model(small_cfg());
    let mut tensors: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    tensors.remove("layer1.0.act1.weight");
    tensors.remove("fc.bias");
    tensors.insert("layer9.0.conv1.weight".into(), Tensor::zeros([1], (Kind::Float, Device::Cpu)));
    tensors.insert("conv1.weight".into(), Tensor::zeros([64, 3, 3, 3], (Kind::Float, Device::Cpu)));
    weights::write(&path, &tensors, HashMap::new()).unwrap();

    let file = weights::read(&path).unwrap();
    let (mut vs2, _) = model(small_cfg());
    let before = vs2.variables()["layer1.0.conv1.weight"].copy();
    let err = load_into(&mut vs2, &file, &path).unwrap_err().to_string();
    for needle in [
        "w.safetensors",
        "missing keys (2)",
        "fc.bias",
        "layer1.0.act1.weight",
        "unexpected keys (1)",
        "layer9.0.conv1.weight",
        "shape mismatches (1)",
        "conv1.weight: file [64, 3, 3, 3], model [64, 3, 7, 7]",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(vs2.variables()["layer1.0.conv1.weight"].equal(&before), "nothing is copied on failure");
}

#[test]
fn torchvision_state_dict_loads_as_relu_resnet() {
    // A torchvision state_dict has no metadata and carries `num_batches_tracked` buffers (int64).
    let dir = common::tmpdir();
    let path = dir.path().join("tv.safetensors");
    let cfg = ResNetConfig::new(Arch::Resnet50, ActConfig::new(ActKind::Relu, 3));
    let (vs, _) = model(cfg);
    let mut tensors: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let bns: Vec<String> = tensors
        .keys()
        .filter(|k| k.ends_with(".running_mean"))
        .map(|k| k.replace(".running_mean", ""))
        .collect();
    for bn in bns {
        tensors.insert(format!("{bn}.num_batches_tracked"), Tensor::from(7i64));
    }
    weights::write(&path, &tensors, HashMap::new()).unwrap();
    let file = weights::read(&path).unwrap();
    let inferred = file.model_config(&path).unwrap();
    assert_eq!(inferred.arch, Arch::Resnet50);
    assert_eq!(inferred.act.kind, ActKind::Relu);
    assert_eq!(inferred.num_classes, 1000);
    let (mut vs2, _) = model(inferred);
    load_into(&mut vs2, &file, &path).unwrap();
}

#[test]
fn corrupt_and_missing_files_are_clear_errors() {
    let dir = common::tmpdir();
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"this is not safetensors").unwrap();
    let err = weights::read(&bad).err().unwrap().to_string();
    assert!(err.contains("bad.safetensors") && err.contains("not a valid safetensors"), "{err}");
    let err = weights::read(&dir.path().join("nope.safetensors")).err().unwrap().to_string();
    assert!(err.contains("nope.safetensors"), "{err}");
}

/// Our file strict-loads into the reference PolyResNet and gives the same logits. Needs a Python
/// with torch 2.11 + torchvision 0.26 in RESNET_TRAIN_REF_PYTHON; skips loudly otherwise.
#[test]
fn file_loads_into_reference_polyresnet_strict() {
    let Ok(python) = std::env::var("RESNET_TRAIN_REF_PYTHON") else {
        eprintln!("SKIP file_loads_into_reference_polyresnet_strict: set RESNET_TRAIN_REF_PYTHON to a python with torch==2.11.0 torchvision==0.26.0 safetensors");
        return;
    };
    if common::shared("file_loads_into_reference_polyresnet_strict").is_none() {
        return;
    }
    let dir = common::tmpdir();
    for (kind, init) in [
        (ActKind::Relu, ActInit::Paper),
        (ActKind::Polyrelu, ActInit::ReluLike),
        (ActKind::Polynorm, ActInit::Paper),
    ] {
        let mut cfg = ResNetConfig::new(Arch::Resnet50, ActConfig::new(kind, 3));
        cfg.act.init = init;
        let (vs, m) = model(cfg);
        common::fill_deterministic(&vs, &cfg);
        let path = dir.path().join(format!("{kind:?}.safetensors"));
        save_model(&path, &vs, &cfg, None).unwrap();
        let out = std::process::Command::new(&python)
            .arg(common::repo().join("tests/golden/make_golden.py"))
            .arg("check")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{kind:?}: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let theirs: Vec<f32> =
            v["eval"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let ours = tch::no_grad(|| m.forward_t(&common::det_input(), false));
        let err = common::rel_err(&ours, &Tensor::from_slice(&theirs).view([2, 1000]));
        assert!(err < 1e-4, "{kind:?}: relative error {err:e}");
    }
}
