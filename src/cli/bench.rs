//! `resnet-train bench`: the trainer's own training step (`train::engine`) on synthetic on-device
//! data, printing one JSON line with the fields of ../shared/bench/torch_train_bench.py, for
//! same-run comparisons. Under `resnet-train launch` (or torchrun) it times the data-parallel step
//! (each rank `--batch` images, gradients averaged over the ranks) and the gradient all-reduce on
//! its own, which bounds what overlapping it with the backward pass could save.

use crate::error::Result;
use crate::model::{ActImpl, ActKind, Arch};
use crate::train::amp::Precision;
use crate::train::config::TrainConfig;
use crate::train::engine::Engine;
use crate::train::guards::GuardState;
use crate::train::optim::OptKind;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "resnet50")]
    pub arch: Arch,
    #[arg(long, value_enum, default_value = "relu")]
    pub act: ActKind,
    #[arg(long, default_value_t = 3, value_parser = crate::train::range::int::<i64>(1, crate::model::activation::MAX_ORDER as u64), allow_negative_numbers = true)]
    pub order: i64,
    /// PolyReLU/PolyNorm fused (one operator with its own backward) or eager.
    #[arg(long, value_enum, default_value = "fused")]
    pub act_impl: ActImpl,
    /// Return the activations in the autocast dtype (bf16/fp16) instead of fp32 (`act_out_lowp`).
    #[arg(long)]
    pub act_out_lowp: bool,
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: Precision,
    #[arg(long, default_value_t = 32, value_parser = crate::train::range::int::<i64>(1, 65536), allow_negative_numbers = true)]
    pub batch: i64,
    #[arg(long, default_value_t = 224, value_parser = crate::train::range::int::<i64>(8, crate::data::transform::MAX_SIZE as u64), allow_negative_numbers = true)]
    pub res: i64,
    #[arg(long, default_value_t = 1000, value_parser = crate::train::range::int::<i64>(1, 1_000_000), allow_negative_numbers = true)]
    pub classes: i64,
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub channels_last: bool,
    /// FFCV's BlurPool before the strided convolutions (the `blurpool` config key).
    #[arg(long)]
    pub blurpool: bool,
    #[arg(long, default_value_t = 20, value_parser = crate::train::range::int::<usize>(1, 1_000_000), allow_negative_numbers = true)]
    pub steps: usize,
    #[arg(long, default_value_t = 5, value_parser = crate::train::range::int::<usize>(0, 1_000_000), allow_negative_numbers = true)]
    pub warmup: usize,
    /// CPU intra-op threads (0: libtorch's default).
    #[arg(long, default_value_t = 0, value_parser = crate::train::range::int::<i32>(0, 1024), allow_negative_numbers = true)]
    pub threads: i32,
    /// Which build of the fused activations' CPU kernels runs (auto: the instruction set
    /// libtorch's own CPU kernels use here).
    #[arg(long, value_enum, default_value = "auto")]
    pub cpu_kernels: crate::ffi::CpuIsa,
    #[arg(long)]
    pub json: bool,
    /// The optimizer (as the training key `opt`).
    #[arg(long, value_enum, default_value = "momentum")]
    pub opt: OptKind,
    /// Keep an EMA of the weights, updated every step.
    #[arg(long)]
    pub model_ema: bool,
    /// Add the trainer's stability guards at their most expensive: per-site monitors every step,
    /// the spike check, and an in-memory snapshot of the whole training state every
    /// `--snapshot-every` steps.
    #[arg(long)]
    pub guards: bool,
    #[arg(long, default_value_t = 1, value_parser = crate::train::range::int::<usize>(1, 1_000_000_000), allow_negative_numbers = true)]
    pub snapshot_every: usize,
    /// Under `launch`/torchrun: overlap the gradient all-reduce with backward (DDP's reducer);
    /// false: one bucketed all-reduce after backward.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub dist_overlap: bool,
    /// Under `launch`/torchrun: the c10d backend (auto: NCCL on CUDA, Gloo on CPU). Naming one
    /// makes a world of one take the data-parallel path too (its overhead against a plain run).
    #[arg(long, value_enum, default_value_t = crate::dist::DistBackend::Auto)]
    pub dist_backend: crate::dist::DistBackend,
}

pub fn run(a: BenchArgs) -> Result<()> {
    let cpu_kernels = super::use_cpu_kernels(a.cpu_kernels)?;
    // The trainer's runtime set-up (device, process group, threads, precision).
    let timeout = std::time::Duration::from_secs(600);
    let threads = usize::try_from(a.threads).unwrap_or(0);
    let rt = crate::train::setup::Runtime::start(&a.device, a.dist_backend, threads, a.precision, timeout)?;
    let device = rt.device;
    // The trainer's own step (engine.rs), on synthetic on-device data. Without --guards: no
    // monitors, no spike check and no snapshots (the loss and gradient norm are still read back,
    // as the trainer logs them every step).
    let cfg = TrainConfig {
        arch: a.arch,
        act: a.act,
        order: a.order,
        act_impl: a.act_impl,
        act_out_lowp: a.act_out_lowp,
        precision: a.precision,
        channels_last: a.channels_last,
        blurpool: a.blurpool,
        opt: a.opt,
        model_ema: a.model_ema,
        monitor_every: if a.guards { 1 } else { 0 },
        spike_factor: if a.guards { 3.0 } else { 0.0 },
        snapshot_every: a.snapshot_every.max(1),
        max_consecutive_skips: 0,
        seed: 0,
        dist_overlap: a.dist_overlap,
        ..TrainConfig::default()
    };
    if device == Device::Cpu {
        // Count the CPU allocator's bytes from here on: the model, the optimizer and the steps,
        // as CUDA's max allocated counts them.
        crate::ffi::cpu_memory_allocated(false)?;
    }
    let mut engine = Engine::new(cfg, device, a.classes)?;
    if rt.dist.is_some() {
        engine.dist = rt.dist.clone();
        engine.sync_from_main(true)?;
    }
    let dist = engine.dist.clone();
    let world = dist.as_ref().map_or(1, |d| d.world());
    let mut x = Tensor::randn([a.batch, 3, a.res, a.res], (Kind::Float, device));
    if a.channels_last {
        x = crate::ffi::to_channels_last(&x)?;
    }
    let y = Tensor::randint(a.classes, [a.batch], (Kind::Int64, device));
    let micro = [(x, y)];
    let mut guards = GuardState::default();
    let mut loss = f64::NAN;
    let mut step = 0usize;
    let mut run_steps = |n: usize, loss: &mut f64| -> Result<()> {
        for _ in 0..n {
            let r = engine.step(&micro, 0.1, step, &mut guards)?;
            *loss = r.loss;
            step += 1;
        }
        Ok(())
    };
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let rss_before = crate::ffi::process::current_rss_bytes();
    let mem_before = if device == Device::Cpu { crate::ffi::cpu_memory_allocated(false)?.0 } else { 0 };
    run_steps(a.warmup, &mut loss)?;
    sync();
    let t0 = Instant::now();
    run_steps(a.steps, &mut loss)?;
    sync();
    let dt = t0.elapsed().as_secs_f64();
    let peak_rss = crate::ffi::process::peak_rss_bytes();
    // The gradient all-reduce alone (as many times as steps), on gradients of the real sizes.
    let allreduce_ms = match &dist {
        Some(d) => {
            let grads: Vec<Tensor> = engine.vs.trainable_variables().iter().map(|t| t.zeros_like()).collect();
            d.barrier()?;
            let t = Instant::now();
            for _ in 0..a.steps {
                d.average(&grads)?;
            }
            sync();
            Some((1000.0 * t.elapsed().as_secs_f64() / a.steps as f64 * 100.0).round() / 100.0)
        }
        None => None,
    };
    let mut out = serde_json::json!({
        "impl": "resnet-train", "tch": "0.24.0", "arch": a.arch.name(), "act": format!("{:?}", a.act).to_lowercase(),
        "order": a.order, "precision": format!("{:?}", a.precision).to_lowercase(), "batch": a.batch, "res": a.res,
        "device": a.device, "channels_last": a.channels_last, "opt": format!("{:?}", a.opt).to_lowercase(),
        "model_ema": a.model_ema, "guards": a.guards, "threads": tch::get_num_threads(), "steps": a.steps,
        "cpu_kernels": format!("{cpu_kernels:?}").to_lowercase(),
        "world": world, "img_per_s": ((a.batch as f64 * world as f64 * a.steps as f64 / dt) * 100.0).round() / 100.0,
        "ms_per_step": (1000.0 * dt / a.steps as f64 * 100.0).round() / 100.0,
        "final_loss": loss, "act_impl": a.act_impl, "act_out_lowp": a.act_out_lowp,
        // CPU memory: the process's peak RSS, and its rise over the RSS before the first step
        // (what the training step itself holds: activations, gradients, workspace).
        "peak_rss_gib": gib(peak_rss), "step_rss_gib": gib(peak_rss.saturating_sub(rss_before)),
    });
    // Which card or CPU made the numbers (a CPU's model and vector extensions matter as much).
    out["device_name"] = serde_json::json!(crate::runtime::describe_device(device));
    if dist.is_some() {
        out["dist_overlap"] = serde_json::json!(a.dist_overlap);
    }
    if let Ok(tuning) = std::env::var("RESNET_TRAIN_CUDA_TUNING") {
        out["cuda_tuning"] = serde_json::json!(tuning);
    }
    if let (Some(ms), Some(d)) = (allreduce_ms, &dist) {
        out["allreduce_ms"] = serde_json::json!(ms);
        out["dist_backend"] = serde_json::json!(d.backend_name());
        if !d.is_main() {
            return Ok(());
        }
    }
    // Peak bytes in tensors since the model was built (CUDA: the caching allocator's; CPU:
    // libtorch's CPU allocator's, counted by the shim).
    let max_mem = match device {
        Device::Cuda(i) => crate::ffi::cuda_max_memory_allocated(i)?,
        _ => crate::ffi::cpu_memory_allocated(false)?.1,
    };
    out["max_mem_gib"] = serde_json::json!(gib(max_mem));
    out["max_mem_bytes"] = serde_json::json!(max_mem);
    if device == Device::Cpu {
        // What the steps add to the model's weights: activations, gradients, optimizer state.
        out["step_mem_gib"] = serde_json::json!(gib(max_mem.saturating_sub(mem_before)));
    }
    if a.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    }
    Ok(())
}

fn gib(bytes: u64) -> f64 {
    (bytes as f64 / (1u64 << 30) as f64 * 1000.0).round() / 1000.0
}
