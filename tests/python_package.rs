//! The PyTorch package in python/ (`polycom_resnet`) against this project's model: a file written
//! by `resnet-train init`, loaded by the package, perturbed (every weight, BN statistic and
//! activation coefficient) and saved back by it, gives the same logits in both; and a torchvision
//! ResNet saved by `save_torchvision` gives torchvision's logits here. Needs a Python with torch,
//! torchvision and safetensors (scripts/bootstrap.sh installs one); skips loudly without.

mod common;

use resnet_train::model::weights;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind, Tensor};

/// A Python that imports torch, torchvision and safetensors, else None (with a SKIP line).
fn torch_python(test: &str) -> Option<PathBuf> {
    let venv = resnet_train::runtime::cache_dir().map(|c| c.join("pytorch/bin/python"));
    let ok = |py: &Path| {
        Command::new(py)
            .args(["-c", "import torch, torchvision, safetensors"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if let Some(py) = venv.into_iter().chain([PathBuf::from("python3")]).find(|p| ok(p)) {
        return Some(py);
    }
    eprintln!("SKIP {test}: no Python with torch, torchvision and safetensors (scripts/bootstrap.sh installs one); this test did not run");
    None
}

/// Runs `script` with the package importable; panics with its output on failure.
fn python(py: &Path, script: &str, args: &[&Path]) {
    let o = Command::new(py)
        .arg("-c")
        .arg(script)
        .args(args)
        .env("PYTHONPATH", common::repo().join("python"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::output_text(&o));
}

/// The logits the model in `weights_file` gives here for the input saved in `io` (key `x`),
/// and the package's (key `logits`).
/// Both in float64, so that the comparison tests the arithmetic's meaning, not float32's
/// rounding through 50 layers in another order.
fn both_logits(weights_file: &Path, io: &Path) -> (Tensor, Tensor) {
    let mut loaded = weights::load_model(weights_file, Device::Cpu).unwrap();
    loaded.vs.double();
    let saved = weights::read(io).unwrap();
    let x = saved.tensors["x"].to_kind(Kind::Double);
    let ours = tch::no_grad(|| loaded.model.forward_t(&x, false));
    (ours, saved.tensors["logits"].to_kind(Kind::Double))
}

const ROUND_TRIP: &str = r#"
import sys, torch, polycom_resnet as p
from safetensors.torch import save_file
src, dst, io, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
m = p.load(src)
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    for name, t in list(m.named_parameters()) + list(m.named_buffers()):
        if name.endswith("num_batches_tracked"):
            continue
        noise = torch.randn(t.shape, generator=g)
        if name.endswith("running_var"):
            t.copy_(0.5 + noise.abs())
        elif name.endswith("running_mean"):
            t.copy_(0.1 * noise)
        elif ".act" in name or name.startswith("act"):
            t.add_(0.05 * noise)
        else:
            t.add_(0.02 * noise)
p.save(m, dst)
m = p.load(dst).double()
# Small inputs: PolyReLU's random-init ResNets raise the residual stream to the k-th power per
# block, and larger ones overflow float32.
x = 0.1 * torch.randn(2, 3, size, size, generator=g, dtype=torch.float64)
with torch.no_grad():
    logits = m(x)
assert torch.isfinite(logits).all(), "the logits overflow: no comparison"
save_file({"x": x, "logits": logits}, io)
"#;

/// init -> package (load, perturb, save) -> both: the same logits (float64, to 1e-9 of their
/// scale), for each activation, basic and bottleneck blocks, both PolyNorm axes, the small stem
/// and BlurPool.
#[test]
fn the_package_computes_this_projects_logits() {
    let Some(py) = torch_python("the_package_computes_this_projects_logits") else { return };
    let dir = common::tmpdir();
    let cases: [(&str, &[&str], i64); 6] = [
        ("relu18", &["--arch", "resnet18", "--act", "relu"], 64),
        ("polyrelu18", &["--arch", "resnet18", "--act", "polyrelu", "--order", "3"], 64),
        ("polynorm50", &["--arch", "resnet50", "--act", "polynorm", "--order", "3"], 64),
        ("blur18", &["--arch", "resnet18", "--act", "polynorm", "--order", "3", "--blurpool"], 64),
        ("layer34", &["--arch", "resnet34", "--act", "polynorm", "--order", "2", "--norm-axis", "layer"], 64),
        (
            "small18",
            &[
                "--arch",
                "resnet18",
                "--act",
                "polyrelu",
                "--order",
                "4",
                "--small-stem",
                "--num-classes",
                "10",
            ],
            32,
        ),
    ];
    for (name, flags, size) in cases {
        let (init, saved, io) = (
            dir.path().join(format!("{name}.safetensors")),
            dir.path().join(format!("{name}-py.safetensors")),
            dir.path().join(format!("{name}-io.safetensors")),
        );
        let o = Command::new(common::bin()).arg("init").args(flags).arg("--out").arg(&init).output().unwrap();
        assert!(o.status.success(), "{name}: {}", common::output_text(&o));
        let size = PathBuf::from(size.to_string());
        python(&py, ROUND_TRIP, &[&init, &saved, &io, &size]);
        let (ours, theirs) = both_logits(&saved, &io);
        let scale = theirs.abs().max().double_value(&[]).max(1.0);
        let diff = (&ours - &theirs).abs().max().double_value(&[]);
        assert!(diff <= 1e-9 * scale, "{name}: logits differ by {diff} (scale {scale})");
    }
}

/// A torchvision ResNet-50 and a timm one (random weights, non-trivial BN statistics), saved by
/// the package for this project, give their own logits here.
#[test]
fn torchvision_weights_saved_by_the_package_load_here() {
    let Some(py) = torch_python("torchvision_weights_saved_by_the_package_load_here") else { return };
    let dir = common::tmpdir();
    let (file, io) = (dir.path().join("tv.safetensors"), dir.path().join("io.safetensors"));
    let script = r#"
import sys, torch, torchvision, polycom_resnet as p
from safetensors.torch import save_file
torch.manual_seed(0)
tv = torchvision.models.resnet50(num_classes=7)
with torch.no_grad():
    for name, t in tv.named_buffers():
        if name.endswith("running_var"):
            t.copy_(0.5 + torch.rand(t.shape))
        elif name.endswith("running_mean"):
            t.copy_(0.1 * torch.randn(t.shape))
tv.eval()
p.save_torchvision(tv, sys.argv[1])
tv = tv.double()
x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
with torch.no_grad():
    save_file({"x": x, "logits": tv(x)}, sys.argv[2])
"#;
    python(&py, script, &[&file, &io]);
    let (ours, theirs) = both_logits(&file, &io);
    let scale = theirs.abs().max().double_value(&[]).max(1.0);
    let diff = (&ours - &theirs).abs().max().double_value(&[]);
    assert!(diff <= 1e-9 * scale, "logits differ by {diff} (scale {scale})");
    // timm's ResNet-50 (the same names and network): its weights too.
    let has_timm = Command::new(&py).args(["-c", "import timm"]).output().is_ok_and(|o| o.status.success());
    if !has_timm {
        eprintln!("SKIP torchvision_weights_saved_by_the_package_load_here (timm part): no timm in {} (scripts/bootstrap.sh installs it)", py.display());
        return;
    }
    let timm_script = script.replace(
        "tv = torchvision.models.resnet50(num_classes=7)",
        "import timm; tv = timm.create_model('resnet50', pretrained=False, num_classes=7)",
    );
    python(&py, &timm_script, &[&file, &io]);
    let (ours, theirs) = both_logits(&file, &io);
    let diff = (&ours - &theirs).abs().max().double_value(&[]);
    assert!(diff <= 1e-9 * theirs.abs().max().double_value(&[]).max(1.0), "timm: logits differ by {diff}");
}

/// `export`: TorchScript that libtorch (here) and PyTorch (`torch.jit.load`) run with this
/// project's logits, at another batch size and resolution than it was traced with, holding
/// aten operations only; ONNX that onnxruntime runs with them; the weights alone as
/// safetensors; a model card with the run's recipe and final metrics; clear errors for files
/// that are not ours.
#[test]
fn export_writes_torchscript_and_weights_that_compute_our_logits() {
    let dir = common::tmpdir();
    let (runs, img) = (dir.path().join("runs"), dir.path().join("img"));
    resnet_train::data::synthetic::write_dataset(&img, 2, 1, 32, 3).unwrap();
    let o = Command::new(common::bin())
        .args(["--data", img.to_str().unwrap(), "--arch", "resnet18", "--act", "polynorm"])
        .args(["--train-size", "32", "--eval-size", "32", "--batch-size", "8", "--epochs", "1"])
        .args(["--device", "cpu", "--output", runs.to_str().unwrap(), "--name", "r"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::output_text(&o));
    let ckpt = runs.join("r/last.safetensors");
    let export = |format: &str, out: &Path| {
        Command::new(common::bin())
            .args(["export", "--checkpoint"])
            .arg(&ckpt)
            .args(["--format", format, "--out"])
            .arg(out)
            .output()
            .unwrap()
    };
    let (pt, st) = (dir.path().join("model.pt"), dir.path().join("model.safetensors"));
    for (format, out) in [("torchscript", &pt), ("safetensors", &st)] {
        let o = export(format, out);
        assert!(o.status.success(), "{format}: {}", common::output_text(&o));
    }
    let loaded = weights::load_model(&ckpt, Device::Cpu).unwrap();
    let x = Tensor::randn([3, 3, 48, 48], (Kind::Float, Device::Cpu));
    let ours = tch::no_grad(|| loaded.model.forward_t(&x, false));
    let module = tch::CModule::load(&pt).unwrap();
    let traced = tch::no_grad(|| module.forward_ts(&[&x])).unwrap();
    let diff = (&ours - &traced).abs().max().double_value(&[]);
    assert!(diff <= 1e-5, "TorchScript differs by {diff}");
    let alone = weights::load_model(&st, Device::Cpu).unwrap();
    assert!(!alone.file.tensors.keys().any(|k| k.starts_with("train_state.")), "training state left in");
    let again = tch::no_grad(|| alone.model.forward_t(&x, false));
    assert_eq!((&ours - &again).abs().max().double_value(&[]), 0.0);
    let card = std::fs::read_to_string(dir.path().join("model.pt.md")).unwrap();
    for want in ["resnet18", "polynorm, order 3", "center-cropped to 32 x 32", "summary.csv", "config.toml"] {
        assert!(card.contains(want), "the model card lacks {want:?}:\n{card}");
    }
    // Not ours: a clear error naming the file.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a safetensors file").unwrap();
    let o = Command::new(common::bin())
        .args(["export", "--checkpoint"])
        .arg(&junk)
        .args(["--format", "torchscript", "--out"])
        .arg(dir.path().join("j.pt"))
        .output()
        .unwrap();
    let text = common::output_text(&o);
    assert!(!o.status.success() && text.contains("junk.safetensors") && !text.contains("panicked"), "{text}");
    // PyTorch runs the TorchScript file as it is.
    let Some(py) = torch_python("export_writes_torchscript_and_weights_that_compute_our_logits") else {
        return;
    };
    let io = dir.path().join("io.safetensors");
    let script = r#"
import sys, torch
from safetensors.torch import save_file
m = torch.jit.load(sys.argv[1])
kinds = {n.kind().split("::")[0] for n in m.inlined_graph.nodes()}
assert kinds <= {"aten", "prim"}, kinds
x = torch.randn(2, 3, 40, 40)
with torch.no_grad():
    save_file({"x": x, "logits": m(x)}, sys.argv[2])
"#;
    python(&py, script, &[&pt, &io]);
    let saved = weights::read(&io).unwrap();
    let ours = tch::no_grad(|| loaded.model.forward_t(&saved.tensors["x"], false));
    let diff = (&ours - &saved.tensors["logits"]).abs().max().double_value(&[]);
    assert!(diff <= 1e-5, "PyTorch's run of the TorchScript differs by {diff}");
    // ONNX (opset 18, through the package): onnxruntime gives our logits at another batch size
    // and resolution.
    let has_onnx =
        Command::new(&py).args(["-c", "import onnx, onnxruntime"]).output().is_ok_and(|o| o.status.success());
    if !has_onnx {
        eprintln!("SKIP export_writes_torchscript_and_weights_that_compute_our_logits (ONNX part): no onnx/onnxruntime in {} (scripts/bootstrap.sh installs them)", py.display());
        return;
    }
    let onnx_file = dir.path().join("model.onnx");
    let o = Command::new(common::bin())
        .args(["export", "--checkpoint"])
        .arg(&ckpt)
        .args(["--format", "onnx", "--out"])
        .arg(&onnx_file)
        .arg("--python")
        .arg(&py)
        .env("PYTHONPATH", common::repo().join("python"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::output_text(&o));
    let script = r#"
import sys, numpy as np, onnx, onnxruntime as ort, torch
from safetensors.torch import save_file
assert onnx.load(sys.argv[1]).opset_import[0].version == 18
x = np.random.RandomState(0).randn(3, 3, 40, 56).astype(np.float32)
y = ort.InferenceSession(sys.argv[1]).run(None, {"images": x})[0]
save_file({"x": torch.from_numpy(x), "logits": torch.from_numpy(y)}, sys.argv[2])
"#;
    python(&py, script, &[&onnx_file, &io]);
    let saved = weights::read(&io).unwrap();
    let ours = tch::no_grad(|| loaded.model.forward_t(&saved.tensors["x"], false));
    let diff = (&ours - &saved.tensors["logits"]).abs().max().double_value(&[]);
    assert!(diff <= 1e-4, "onnxruntime's logits differ by {diff}");
}
