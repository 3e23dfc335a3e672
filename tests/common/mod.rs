//! Shared test helpers: golden files, the deterministic weight formula mirrored from
//! tests/golden/make_golden.py, and ../shared lookup (tests skip loudly without it).
#![allow(dead_code)]

use resnet_train::model::{ActInit, ResNetConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{nn, Kind, Tensor};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn golden(name: &str) -> BTreeMap<String, Tensor> {
    resnet_train::model::weights::read(&repo().join("tests/golden").join(name))
        .expect("golden file reads")
        .tensors
}

/// `../shared` when present; otherwise prints a loud SKIP line and returns None.
pub fn shared(test: &str) -> Option<PathBuf> {
    let p = repo().join("../shared");
    if p.join("data").is_dir() {
        Some(p)
    } else {
        eprintln!("SKIP {test}: ../shared is absent (a fresh clone has none); this test did not run");
        None
    }
}

fn fnv1a(name: &str) -> i64 {
    let mut h: u32 = 0x811C9DC5;
    for b in name.bytes() {
        h = (h ^ b as u32).wrapping_mul(0x01000193);
    }
    h as i64
}

/// ((j * 2654435761 + fnv1a(name)) mod 2^32) / 2^32 - 0.5, exact in f64, as make_golden.py.
pub fn det_values(name: &str, shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    let j = Tensor::arange(n, (Kind::Int64, tch::Device::Cpu));
    let u =
        (j * 2654435761i64 + fnv1a(name)).remainder(4294967296i64).to_kind(Kind::Double) / 4294967296.0 - 0.5;
    u.reshape(shape)
}

/// The value every golden model uses for variable `name` (f32), as make_golden.py's det_tensor.
pub fn det_tensor(name: &str, shape: &[i64], order: i64, init: ActInit) -> Tensor {
    let u = det_values(name, shape);
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let is_act = name.split('.').any(|s| s.starts_with("act") && s[3..].chars().all(|c| c.is_ascii_digit()));
    if is_act {
        if leaf == "bias" {
            return Tensor::zeros(shape, (Kind::Float, tch::Device::Cpu));
        }
        let w: Vec<f64> = (0..order)
            .map(|i| match init {
                ActInit::ReluLike => (i == 0) as i64 as f64,
                ActInit::Paper => 1.0 / order as f64,
            })
            .collect();
        return Tensor::from_slice(&w).to_kind(Kind::Float);
    }
    let out = if shape.len() > 1 {
        let fan_in: i64 = shape[1..].iter().product();
        u * (24.0 / fan_in as f64).sqrt()
    } else if leaf == "running_var" {
        u * 0.5 + 1.0
    } else if leaf == "weight" {
        u * 0.2 + 1.0
    } else {
        u * 0.1
    };
    out.to_kind(Kind::Float)
}

pub fn det_input() -> Tensor {
    (det_values("input", &[2, 3, 64, 64]) * 4.0).to_kind(Kind::Float)
}

/// Sets every variable of a model built from `cfg` to its deterministic value.
pub fn fill_deterministic(vs: &nn::VarStore, cfg: &ResNetConfig) {
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            var.copy_(&det_tensor(&name, &var.size(), cfg.act.order, cfg.act.init));
        }
    });
}

/// max |a - b| / max |b|.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_kind(Kind::Double);
    let b = b.to_kind(Kind::Double);
    let num = (&a - &b).abs().max().double_value(&[]);
    let den = b.abs().max().double_value(&[]).max(1e-30);
    num / den
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_resnet-train")
}

pub fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Polls `ready` every 20 ms until it holds; fails with `what` after `secs` seconds.
pub fn wait_until(secs: u64, what: &str, ready: impl Fn() -> bool) {
    let t0 = std::time::Instant::now();
    while !ready() {
        assert!(t0.elapsed().as_secs() < secs, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Lines of a run folder's metrics.jsonl so far (0 before it exists).
pub fn logged_steps(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |t| t.lines().count())
}

/// The per-step records of a run folder's metrics.jsonl.
pub fn step_records(run: &Path) -> Vec<resnet_train::train::run::metrics::StepRecord> {
    resnet_train::train::run::metrics::read_steps(run).expect("metrics.jsonl")
}

/// Serialises the tests of one binary that change process-wide settings (thread count, kernels).
pub fn global_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// libnvrtc for the CUDA kernels' compile check: $RESNET_TRAIN_NVRTC, or the nvidia-cuda-nvrtc
/// wheel beside the libtorch this build links (a pip install's site-packages/nvidia/cu13/lib).
pub fn nvrtc_library() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("RESNET_TRAIN_NVRTC") {
        return Some(PathBuf::from(p));
    }
    let lib = Path::new(env!("RESNET_TRAIN_LIBTORCH_LIB"));
    let candidate = lib.join("../../nvidia/cu13/lib/libnvrtc.so.13");
    candidate.exists().then_some(candidate)
}

/// libnvrtc for `test`, or None after a loud SKIP line (the CI machine has it: bootstrap installs
/// the nvidia-cuda-nvrtc wheel).
pub fn nvrtc_or_skip(test: &str) -> Option<PathBuf> {
    let lib = nvrtc_library();
    if lib.is_none() {
        eprintln!("SKIP {test}: no libnvrtc (scripts/bootstrap.sh installs it); this test did not run");
    }
    lib
}

/// A command's stdout and stderr, for assertion messages.
pub fn output_text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A run's metrics.jsonl records without their wall-clock fields, and its summary.csv without
/// times: what an interrupted and resumed run must reproduce.
pub fn history_without_wall_clock(run: &Path) -> (Vec<serde_json::Value>, Vec<String>) {
    let steps = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            for wall_clock in ["img_per_s", "elapsed_s", "data_s", "step_s"] {
                v.as_object_mut().unwrap().remove(wall_clock);
            }
            v
        })
        .collect();
    (steps, summary_without_time(run))
}

/// A run's summary.csv lines without the wall-clock column (elapsed_s), for run-to-run equality.
pub fn summary_without_time(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("summary.csv"))
        .expect("summary.csv")
        .lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split(',').collect();
            f.remove(6); // elapsed_s
            f.join(",")
        })
        .collect()
}

/// A Python that imports `module`: scripts/bootstrap.sh's tools venv, else `python3`; otherwise
/// prints a loud SKIP line and returns None.
pub fn python_with(module: &str, test: &str) -> Option<PathBuf> {
    let venv = resnet_train::runtime::cache_dir().map(|c| c.join("pytools/bin/python"));
    let candidates = venv.into_iter().chain([PathBuf::from("python3")]);
    for py in candidates {
        let ok = std::process::Command::new(&py)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(py);
        }
    }
    eprintln!(
        "SKIP {test}: no Python with {module} (scripts/bootstrap.sh installs it); this test did not run"
    );
    None
}
