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
        ("small18", &["--arch", "resnet18", "--act", "polyrelu", "--order", "4", "--small-stem", "--num-classes", "10"], 32),
    ];
    for (name, flags, size) in cases {
        let (init, saved, io) =
            (dir.path().join(format!("{name}.safetensors")), dir.path().join(format!("{name}-py.safetensors")), dir.path().join(format!("{name}-io.safetensors")));
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

/// A torchvision ResNet-50 (random weights, non-trivial BN statistics), saved by the package for
/// this project, gives torchvision's logits here.
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
}
