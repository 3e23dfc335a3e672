//! `resnet-train bench`: training-step throughput on synthetic on-device data, printing one JSON
//! line with the fields of ../shared/bench/torch_train_bench.py, for same-run comparisons.

use crate::error::Result;
use crate::ffi::foreach_clip_grad_norm;
use crate::model::{ActConfig, ActKind, Arch, ResNet, ResNetConfig};
use crate::train::amp::{GradScaler, Precision};
use crate::train::optim::Sgd;
use crate::train::stability::{forward_monitored, SpikeGuard, SpikeState};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "resnet50")]
    pub arch: Arch,
    #[arg(long, value_enum, default_value = "relu")]
    pub act: ActKind,
    #[arg(long, default_value_t = 3)]
    pub order: i64,
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: Precision,
    #[arg(long, default_value_t = 32)]
    pub batch: i64,
    #[arg(long, default_value_t = 224)]
    pub res: i64,
    #[arg(long, default_value_t = 1000)]
    pub classes: i64,
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub channels_last: bool,
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// CPU intra-op threads (0: libtorch's default).
    #[arg(long, default_value_t = 0)]
    pub threads: i32,
    #[arg(long)]
    pub json: bool,
    /// Add the trainer's stability guards at their most expensive: per-site monitors every step,
    /// the gradient norm and the loss read back every step (non-finite and spike checks), and an
    /// in-memory snapshot of weights, BN statistics and momentum every `--snapshot-every` steps.
    #[arg(long)]
    pub guards: bool,
    #[arg(long, default_value_t = 1)]
    pub snapshot_every: usize,
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.threads > 0 {
        tch::set_num_threads(a.threads);
    }
    let device = crate::runtime::parse_device(&a.device)?;
    a.precision.configure()?;
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let mut cfg = ResNetConfig::new(a.arch, ActConfig::new(a.act, a.order));
    cfg.num_classes = a.classes;
    let vs = tch::nn::VarStore::new(device);
    let model = crate::model::seeded(0, || ResNet::new(&vs.root(), cfg))?;
    let mut x = Tensor::randn([a.batch, 3, a.res, a.res], (Kind::Float, device));
    if a.channels_last {
        crate::model::to_channels_last(&vs)?;
        x = crate::ffi::to_channels_last(&x)?;
    }
    let y = Tensor::randint(a.classes, [a.batch], (Kind::Int64, device));
    let mut sgd = Sgd::new(&vs, 0.9, false, 1e-4, false);
    let mut scaler = GradScaler::new(a.precision == Precision::Fp16, device);
    // The same step as torch_train_bench.py: forward + loss under autocast, backward through the
    // scaler, unscale/inf check, SGD step, scaler update.
    let guarded: Vec<Tensor> = vs.variables().into_values().collect();
    let mut spike_guard = SpikeGuard::new(3.0, 0.5, 3, a.snapshot_every.max(1));
    let mut spike_state = SpikeState::new();
    let mut step_index = 0usize;
    let mut step = || -> Result<Tensor> {
        let loss = {
            let _ac = a.precision.autocast(device)?;
            let (logits, _stats) = forward_monitored(&model, &x, a.guards)?;
            logits.to_kind(Kind::Float).cross_entropy_for_logits(&y)
        };
        sgd.zero_grad()?;
        scaler.scale_loss(&loss).backward();
        let grads = sgd.grads();
        let found_inf = scaler.unscale(&grads)?;
        let mut take = !found_inf;
        if a.guards {
            let grad_norm = foreach_clip_grad_norm(&grads, 0.0)?.double_value(&[]);
            let spike = spike_guard.check(&mut spike_state, loss.double_value(&[]));
            take = take && grad_norm.is_finite() && !spike;
        }
        if take {
            sgd.step(0.1)?;
            if a.guards {
                // The momentum buffers exist after the first step.
                step_index += 1;
                let all: Vec<Tensor> = guarded
                    .iter()
                    .map(|t| t.shallow_clone())
                    .chain(sgd.groups.iter().flat_map(|g| g.bufs.iter().map(|b| b.shallow_clone())))
                    .collect();
                spike_guard.maybe_snapshot(step_index, &all);
            }
        }
        // (Without --guards, no gradient norm: torch_train_bench.py does not compute one.)
        scaler.update()?;
        Ok(loss)
    };
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    for _ in 0..a.warmup {
        let _ = step()?;
    }
    sync();
    let t0 = Instant::now();
    let mut loss = Tensor::zeros([], (Kind::Float, device));
    for _ in 0..a.steps {
        loss = step()?;
    }
    sync();
    let dt = t0.elapsed().as_secs_f64();
    let out = serde_json::json!({
        "impl": "resnet-train", "tch": "0.24.0", "arch": a.arch.name(), "act": format!("{:?}", a.act).to_lowercase(),
        "order": a.order, "precision": format!("{:?}", a.precision).to_lowercase(), "batch": a.batch, "res": a.res,
        "device": a.device, "channels_last": a.channels_last, "guards": a.guards, "threads": tch::get_num_threads(), "steps": a.steps,
        "img_per_s": ((a.batch as f64 * a.steps as f64 / dt) * 100.0).round() / 100.0,
        "ms_per_step": (1000.0 * dt / a.steps as f64 * 100.0).round() / 100.0,
        "final_loss": loss.double_value(&[]),
    });
    if a.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    }
    Ok(())
}
