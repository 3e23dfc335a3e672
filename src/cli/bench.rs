//! `resnet-train bench`: the trainer's own training step (`train::engine`) on synthetic on-device
//! data, printing one JSON line with the fields of ../shared/bench/torch_train_bench.py, for
//! same-run comparisons. Under `resnet-train launch` (or torchrun) it times the data-parallel step
//! (each rank `--batch` images, gradients averaged over the ranks) and the gradient all-reduce on
//! its own, which bounds what overlapping it with the backward pass could save.

use crate::error::Result;
use crate::train::config::{Overrides, TrainConfig};
use crate::train::step::engine::Engine;
use crate::train::step::guards::GuardState;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// A training config (configs/recipes/): its step is timed, as the run would train it (model,
    /// activation, precision, optimizer, clipping, EMA, SyncBN, batch and accumulation); any
    /// training key below overrides it.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Classes of the synthetic labels (the classifier's width).
    #[arg(long, default_value_t = 1000, value_parser = crate::train::config::range::int::<i64>(1, 1_000_000), allow_negative_numbers = true)]
    pub classes: i64,
    /// Timed optimizer steps.
    #[arg(long, default_value_t = 20, value_parser = crate::train::config::range::int::<usize>(1, 1_000_000), allow_negative_numbers = true)]
    pub steps: usize,
    /// Untimed steps before them.
    #[arg(long, default_value_t = 5, value_parser = crate::train::config::range::int::<usize>(0, 1_000_000), allow_negative_numbers = true)]
    pub warmup: usize,
    /// CPU intra-op threads (0: the config's `torch_threads`, else libtorch's default).
    #[arg(long, default_value_t = 0, value_parser = crate::train::config::range::int::<i32>(0, 1024), allow_negative_numbers = true)]
    pub threads: i32,
    /// Which build of the fused activations' CPU kernels runs (auto: the instruction set
    /// libtorch's own CPU kernels use here).
    #[arg(long, value_enum, default_value = "auto")]
    pub cpu_kernels: crate::ffi::CpuIsa,
    /// One JSON line (else pretty-printed JSON).
    #[arg(long)]
    pub json: bool,
    /// Add the trainer's stability guards at their most expensive: per-site monitors every step,
    /// the spike check, and an in-memory snapshot of the whole training state every
    /// `--snapshot-every` steps (default 1 here). Without it: no monitors, spike check or snapshots.
    #[arg(long)]
    pub guards: bool,
    /// Every training key (`resnet-train train --help`); bench's defaults differ in two:
    /// `--batch-size` 32 and `--snapshot-every` 1 (`--batch` and `--res` are accepted for
    /// `--batch-size` and `--train-size`).
    #[command(flatten)]
    pub overrides: Overrides,
}

/// The training config the bench times: defaults (batch 32, a snapshot every step) < `--config` <
/// flags, validated (not yet split over a world size).
pub fn bench_config(a: &BenchArgs) -> Result<TrainConfig> {
    let base = match &a.config {
        Some(p) => crate::train::config::read_file(p)?,
        None => TrainConfig { batch_size: 32, snapshot_every: 1, ..TrainConfig::default() },
    };
    let cfg = a.overrides.apply(&base)?;
    cfg.validate()?;
    Ok(cfg)
}

pub fn run(a: BenchArgs) -> Result<()> {
    let cpu_kernels = super::use_cpu_kernels(a.cpu_kernels)?;
    // The trainer's runtime set-up (device, process group, threads, precision).
    let timeout = std::time::Duration::from_secs(600);
    let given = bench_config(&a)?;
    let threads = usize::try_from(a.threads).ok().filter(|&t| t > 0).unwrap_or(given.torch_threads);
    let rt = crate::train::setup::Runtime::start(
        &given.device,
        given.dist_backend,
        threads,
        given.precision,
        timeout,
    )?;
    let device = rt.device;
    // The trainer's own step (engine.rs), on synthetic on-device data, for this world's share of
    // the batch. Without --guards: no monitors, no spike check and no snapshots (the loss and
    // gradient norm are still read back, as the trainer logs them every step).
    let cfg = TrainConfig {
        monitor_every: if a.guards { 1 } else { 0 },
        spike_factor: if a.guards { 3.0 } else { 0.0 },
        max_consecutive_skips: 0,
        seed: 0,
        ..given.for_world(rt.world())?
    };
    if device == Device::Cpu {
        // Count the CPU allocator's bytes from here on: the model, the optimizer and the steps,
        // as CUDA's max allocated counts them.
        crate::ffi::cpu_memory_allocated(false)?;
    }
    let mut engine = Engine::new(cfg.clone(), device, a.classes)?;
    if rt.dist.is_some() {
        engine.dist = rt.dist.clone();
        engine.sync_from_main(true)?;
    }
    let dist = engine.dist.clone();
    let world = dist.as_ref().map_or(1, |d| d.world());
    let (batch, res) = (cfg.batch_size as i64, cfg.train_size as i64);
    let images_per_step = (cfg.batch_size * cfg.accum_steps.max(1) * world) as f64;
    let lr = cfg.peak_lr(images_per_step as usize);
    let micro = synthetic_step(&cfg, a.classes, device)?;
    let mut guards = GuardState::default();
    let mut loss = f64::NAN;
    let mut step = 0usize;
    let mut run_steps = |n: usize, loss: &mut f64| -> Result<()> {
        for _ in 0..n {
            let r = engine.step(&micro, lr, step, &mut guards)?;
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
    let allreduce_ms = match &dist {
        Some(d) => Some(time_allreduce(&engine, d, a.steps, &sync)?),
        None => None,
    };
    let mut out = serde_json::json!({
        "impl": "resnet-train", "tch": "0.24.0", "arch": cfg.arch.name(), "act": format!("{:?}", cfg.act).to_lowercase(),
        "order": cfg.order, "precision": format!("{:?}", cfg.precision).to_lowercase(), "batch": batch, "res": res,
        "accum_steps": cfg.accum_steps,
        "device": cfg.device, "channels_last": cfg.channels_last, "opt": cfg.opt.name(),
        "model_ema": cfg.model_ema, "guards": a.guards, "threads": tch::get_num_threads(), "steps": a.steps,
        "cpu_kernels": format!("{cpu_kernels:?}").to_lowercase(),
        "world": world, "img_per_s": ((images_per_step * a.steps as f64 / dt) * 100.0).round() / 100.0,
        "ms_per_step": (1000.0 * dt / a.steps as f64 * 100.0).round() / 100.0,
        "final_loss": loss, "act_impl": cfg.act_impl, "act_out_lowp": cfg.act_out_lowp,
        // The training config the step ran with (every key, after --config and the flags).
        "config": toml::Table::try_from(&cfg).ok(),
        // CPU memory: the process's peak RSS, and its rise over the RSS before the first step
        // (what the training step itself holds: activations, gradients, workspace).
        "peak_rss_gib": gib(peak_rss), "step_rss_gib": gib(peak_rss.saturating_sub(rss_before)),
    });
    // Which card or CPU made the numbers (a CPU's model and vector extensions matter as much).
    out["device_name"] = serde_json::json!(crate::runtime::describe_device(device));
    if dist.is_some() {
        out["dist_overlap"] = serde_json::json!(cfg.dist_overlap);
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

/// One optimizer step's synthetic micro-batches on the device: `accum_steps` of them, as the
/// trainer takes them (the same tensors: the data's values do not change the step's cost).
fn synthetic_step(cfg: &TrainConfig, classes: i64, device: Device) -> Result<Vec<(Tensor, Tensor)>> {
    let (batch, res) = (cfg.batch_size as i64, cfg.train_size as i64);
    let mut x = Tensor::randn([batch, 3, res, res], (Kind::Float, device));
    if cfg.channels_last {
        x = crate::ffi::to_channels_last(&x)?;
    }
    let y = Tensor::randint(classes, [batch], (Kind::Int64, device));
    Ok((0..cfg.accum_steps.max(1)).map(|_| (x.shallow_clone(), y.shallow_clone())).collect())
}

/// Milliseconds of the gradient all-reduce alone (the mean of `steps`), on gradients of the
/// model's sizes: what overlapping it with the backward pass could save at most.
fn time_allreduce(engine: &Engine, d: &crate::dist::Dist, steps: usize, sync: &dyn Fn()) -> Result<f64> {
    let grads: Vec<Tensor> = engine.vs.trainable_variables().iter().map(|t| t.zeros_like()).collect();
    d.barrier()?;
    let t = Instant::now();
    for _ in 0..steps {
        d.average(&grads)?;
    }
    sync();
    Ok((1000.0 * t.elapsed().as_secs_f64() / steps as f64 * 100.0).round() / 100.0)
}
