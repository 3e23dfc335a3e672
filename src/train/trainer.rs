//! The training loop. Read it top to bottom: set-up, then for each epoch the micro-steps through
//! autocast and the loss scaler, unscale, clip, step (or skip), log, checkpoint; evaluate at
//! epoch ends. Everything else lives in its own module and is one call here.

use super::amp::{GradScaler, Precision};
use super::checkpoint::{self, LoopState, Saved};
use super::config::TrainConfig;
use super::eval::{evaluate, prepare, EvalResult};
use super::metrics::{EpochRecord, RunLog, StepRecord};
use super::optim::Sgd;
use super::schedule::Schedule;
use super::stability::{first_beyond, first_nonfinite, forward_monitored, SpikeGuard, FP16_MAX};
use crate::data::dataset::ImageFolder;
use crate::data::loader::{Loader, LoaderConfig};
use crate::data::{synthetic, transform::Transform};
use crate::error::{Error, Result};
use crate::ffi::foreach_clip_grad_norm;
use crate::model::{resnet::count_params, weights, ResNet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{nn, Kind, Tensor};

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub steps: usize,
    pub epochs_done: usize,
    pub last_eval: Option<EvalResult>,
    pub best_top1: f64,
    /// Stopped by `max_steps` before the last epoch (resumable).
    pub stopped_early: bool,
}

/// The train and val splits: `data/train` + `data/val`, or one folder used for both.
fn datasets(cfg: &TrainConfig) -> Result<(Arc<ImageFolder>, Option<Arc<ImageFolder>>)> {
    let root = match &cfg.data {
        Some(p) => p.clone(),
        None => synthetic::ensure_demo_dataset()?,
    };
    let (train_dir, val_dir) = (root.join("train"), root.join("val"));
    let train = Arc::new(ImageFolder::open(if train_dir.is_dir() { &train_dir } else { &root })?);
    let val = if val_dir.is_dir() { Some(Arc::new(ImageFolder::open(&val_dir)?)) } else { None };
    if let Some(v) = &val {
        if v.classes != train.classes {
            return Err(Error::file(
                &val_dir,
                format!(
                    "its {} class folders differ from train's {}: the label indices would not match",
                    v.classes.len(),
                    train.classes.len()
                ),
            ));
        }
    }
    Ok((train, val))
}

fn run_dir(cfg: &TrainConfig) -> PathBuf {
    let name = cfg.name.clone().unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        format!("{}-{:?}{}-{:?}-{t}", cfg.arch.name(), cfg.act, cfg.order, cfg.precision).to_lowercase()
    });
    cfg.output.join(name)
}

/// Names where the activations blow up on `x`: the first site that is non-finite or beyond the
/// precision's range, with its magnitude, for the error message of a stopped run.
fn diagnose(
    model: &ResNet,
    x: &Tensor,
    precision: Precision,
    device: tch::Device,
    step: usize,
    why: &str,
    act_fp32: bool,
) -> Result<String> {
    let (_, stats) = tch::no_grad(|| -> Result<_> {
        let _autocast = precision.autocast(device)?;
        forward_monitored(model, x, true)
    })?;
    let limit = if precision == Precision::Fp16 { FP16_MAX } else { f64::MAX };
    let site = match first_beyond(&stats, limit) {
        Some(s) if s.nonfinite > 0 => format!(
            "the first activation site with non-finite values is {} ({} values; largest finite |x| {:.3e})",
            s.site, s.nonfinite, s.max_abs
        ),
        Some(s) => format!(
            "the first activation site beyond the {precision:?} range is {} (|x| = {:.3e})",
            s.site, s.max_abs
        ),
        None => {
            let worst = stats.iter().max_by(|a, b| a.max_abs.total_cmp(&b.max_abs));
            worst.map_or("no activation site overflowed on this batch".to_string(), |s| {
                format!(
                    "no activation overflowed on this batch (largest |x| {:.3e} at {}): the gradients did",
                    s.max_abs, s.site
                )
            })
        }
    };
    Ok(format!(
        "at step {step}, {why}; {site}. Remedies: --act-init relu-like, --act-clamp C, {}--clip-grad, a lower \
         --lr, --precision bf16/fp32, or --divergence-remedies to apply them automatically",
        if act_fp32 { "" } else { "--act-fp32 true, " }
    ))
}

/// Trains from scratch (`resume = None`) or continues the run in `resume`.
pub fn train(mut cfg: TrainConfig, resume: Option<&Path>) -> Result<RunSummary> {
    // ---- Set-up: device, data, run folder, model, optimizer, scaler, state. ----
    let device = crate::runtime::parse_device(&cfg.device)?;
    if cfg.torch_threads > 0 {
        tch::set_num_threads(cfg.torch_threads as i32);
    }
    cfg.precision.configure()?;
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let (train_set, val_set) = datasets(&cfg)?;
    let dir = match resume {
        Some(d) => d.to_path_buf(),
        None => {
            let d = run_dir(&cfg);
            if d.join("config.toml").exists() {
                return Err(Error::Usage(format!(
                    "{} already holds a run: use --resume {0} or another --name",
                    d.display()
                )));
            }
            d
        }
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    crate::fsutil::write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;

    let workers = if cfg.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cfg.workers
    };
    let mut train_cfg = LoaderConfig::new(
        cfg.batch_size,
        Transform::Train {
            size: cfg.train_size,
            scale: (cfg.rrc_scale_min, 1.0),
            ratio: (0.75, 4.0 / 3.0),
            hflip: 0.5,
        },
    );
    train_cfg.threads = workers;
    train_cfg.seed = cfg.seed;
    train_cfg.max_bad_fraction = cfg.max_bad_fraction;
    train_cfg.pin_memory = device.is_cuda();
    let train_loader = Loader::new(train_set.clone(), train_cfg.clone())?;
    let eval_transform = Transform::eval(cfg.eval_size, cfg.crop_pct);
    let val_loader = match &val_set {
        Some(v) => {
            let mut c = train_cfg.clone();
            c.transform = eval_transform;
            c.shuffle = false;
            c.drop_last_batch = false;
            Some(Loader::new(v.clone(), c)?)
        }
        None => None,
    };

    let num_classes = train_set.classes.len() as i64;
    let mut model_cfg = cfg.model(num_classes);
    let mut vs = nn::VarStore::new(device);
    let mut model = crate::model::seeded(cfg.seed as i64, || ResNet::new(&vs.root(), model_cfg))?;
    let mut sgd = Sgd::new(&vs, cfg.momentum, cfg.nesterov, cfg.weight_decay, cfg.act_weight_decay);
    let mut scaler = GradScaler::new(cfg.precision == Precision::Fp16, device);
    let mut state = LoopState::default();
    let last_path = dir.join("last.safetensors");
    if resume.is_some() {
        let (file, saved, momentum) = checkpoint::load_last(&last_path)?;
        // The divergence guard's remedies so far hold again.
        for r in &saved.remedies {
            r.apply(&mut cfg);
        }
        model_cfg = cfg.model(num_classes);
        model.set_act_compute(model_cfg.act.clamp, model_cfg.act.fp32);
        if file.model_config(&last_path)? != model_cfg {
            return Err(Error::file(&last_path, "its model differs from the run's config.toml"));
        }
        weights::load_into(&mut vs, &file, &last_path)?;
        sgd.load_state(&momentum, saved.sgd_steps)?;
        let get = |k: &str| file.tensors.get(&format!("{}scaler.{k}", checkpoint::STATE_PREFIX));
        if let (Some(s), Some(g)) = (get("scale"), get("growth_tracker")) {
            scaler.scale = s.to_kind(Kind::Float).to_device(device);
            scaler.growth_tracker = g.to_kind(Kind::Int).to_device(device);
        }
        state = saved;
    }
    if cfg.channels_last {
        crate::model::to_channels_last(&vs)?;
    }

    // Everything a rollback restores: the variables (weights, BN statistics), momentum and the
    // loss scale (in place: the live tensors are updated in place).
    let guarded: Vec<Tensor> = vs
        .variables()
        .into_values()
        .chain(sgd.groups.iter().flat_map(|g| g.bufs.iter().map(|b| b.shallow_clone())))
        .chain([scaler.scale.shallow_clone(), scaler.growth_tracker.shallow_clone()])
        .collect();
    let mut spike_guard =
        SpikeGuard::new(cfg.spike_factor, cfg.spike_lr_factor, cfg.max_rollbacks, cfg.snapshot_every);
    spike_guard.warmup = cfg.spike_warmup;
    spike_guard.keep_snapshots = !cfg.divergence_remedies.is_empty();
    spike_guard.maybe_snapshot(state.step, &guarded);

    let steps_per_epoch = (train_loader.batches_per_epoch() / cfg.accum_steps).max(1);
    let global_batch = cfg.batch_size * cfg.accum_steps;
    let schedule = Schedule {
        kind: cfg.schedule,
        peak_lr: cfg.lr * global_batch as f64 / 256.0,
        min_lr: cfg.min_lr,
        warmup_steps: (cfg.warmup_epochs * steps_per_epoch as f64).round() as usize,
        total_steps: cfg.epochs * steps_per_epoch,
        step_every: cfg.step_epochs * steps_per_epoch,
        gamma: cfg.step_gamma,
    };
    let mut log = RunLog::open(&dir, state.step, state.epoch)?;
    let classes = train_set.classes.clone();
    let eval_size = match eval_transform {
        Transform::Eval { size, resize } => (resize, size),
        _ => (cfg.eval_size, cfg.eval_size),
    };
    let mut saved = Saved { vs: &vs, model: model_cfg, class_names: &classes, eval_size };
    let terminal = std::io::stdout().is_terminal();

    println!("run        {}", dir.display());
    println!(
        "device     {device:?}, precision {:?}{}, {} decode threads, {} libtorch threads",
        cfg.precision,
        if cfg.channels_last { ", channels_last" } else { "" },
        workers,
        tch::get_num_threads()
    );
    println!(
        "data       {} train / {} val images, {} classes ({})",
        train_set.len(),
        val_set.as_ref().map_or(0, |v| v.len()),
        classes.len(),
        cfg.data.as_ref().map_or("embedded procedural dataset".to_string(), |p| p.display().to_string())
    );
    println!(
        "model      {} {:?} order {}, {} parameters",
        cfg.arch.name(),
        cfg.act,
        cfg.order,
        count_params(&vs)
    );
    println!(
        "schedule   {} epochs x {steps_per_epoch} steps, global batch {global_batch}, peak lr {:.4}, warmup {} steps{}",
        cfg.epochs,
        schedule.peak_lr,
        schedule.warmup_steps,
        if resume.is_some() { format!(", resuming at epoch {} step {}", state.epoch, state.step) } else { String::new() }
    );

    let session_start = Instant::now();
    let elapsed = |state: &LoopState| state.elapsed_s + session_start.elapsed().as_secs_f64();
    let mut last_eval = None;
    // ---- The loop. ----
    while state.epoch < cfg.epochs {
        let epoch = state.epoch;
        let mut loss_sum = 0.0;
        let mut loss_count = 0usize;
        let mut micro = 0usize;
        let mut micro_loss = 0.0f64;
        let mut step_stats = Vec::new();
        let mut window = (Instant::now(), 0usize);
        // A progress bar on a terminal (images/s, loss, lr, ETA); plain lines in logs.
        let bar = terminal.then(|| {
            let b = indicatif::ProgressBar::new(steps_per_epoch as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {prefix} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_prefix(epoch.to_string());
            b.set_position((state.next_batch / cfg.accum_steps) as u64);
            b
        });
        sgd.zero_grad()?;
        for batch in train_loader.epoch(epoch as u64, state.next_batch) {
            let batch = batch?;
            let x = prepare(&batch.images, device, cfg.channels_last)?;
            let y = batch.labels.to_device(device);
            let monitor = cfg.monitor_every > 0 && state.step % cfg.monitor_every == 0 && micro == 0;
            let (loss, site_stats) = {
                let _autocast = cfg.precision.autocast(device)?;
                let (logits, stats) = forward_monitored(&model, &x, monitor)?;
                let loss = logits.to_kind(Kind::Float).f_cross_entropy_loss(
                    &y,
                    None::<Tensor>,
                    tch::Reduction::Mean,
                    -100,
                    cfg.label_smoothing,
                )?;
                (loss, stats)
            };
            if let Some(s) = first_nonfinite(&site_stats) {
                eprintln!(
                    "warning: step {}: first non-finite activation at {} ({} values; largest finite |x| {:.3e})",
                    state.step, s.site, s.nonfinite, s.max_abs
                );
            }
            if monitor {
                step_stats = site_stats;
            }
            scaler.scale_loss(&(&loss / cfg.accum_steps as f64)).backward();
            micro_loss += loss.double_value(&[]) / cfg.accum_steps as f64;
            micro += 1;
            window.1 += y.size()[0] as usize;
            if micro < cfg.accum_steps {
                continue;
            }
            // One optimizer step: unscale (fp16: finds inf/NaN), clip (the norm finds inf/NaN in
            // every precision), step or skip.
            let grads = sgd.grads();
            let found_inf = scaler.unscale(&grads)?;
            let grad_norm = foreach_clip_grad_norm(&grads, cfg.clip_grad)?.double_value(&[]);
            let lr = schedule.lr(state.step) * state.spike.lr_scale;
            // Loss-spike guard: restore the last snapshot, lower the learning rate, continue.
            let seen_loss =
                if cfg.inject_spike_at == Some(state.step) { micro_loss * 1000.0 } else { micro_loss };
            let mut event = None;
            if spike_guard.check(&mut state.spike, seen_loss) {
                let mean = state.spike.loss_ema.unwrap_or(f64::NAN);
                if state.spike.rollbacks >= cfg.max_rollbacks {
                    log.flush();
                    return Err(Error::Diverged(format!(
                        "at step {}, loss {seen_loss:.4} is over {} x its running mean {mean:.4} after {} rollbacks \
                         (--max-rollbacks); try a lower --lr or --clip-grad",
                        state.step, cfg.spike_factor, state.spike.rollbacks
                    )));
                }
                if let Some(to) = spike_guard.rollback() {
                    state.spike.rollbacks += 1;
                    state.spike.lr_scale *= cfg.spike_lr_factor;
                    let e = format!(
                        "rollback {}: step {} loss {seen_loss:.4} > {} x running mean {mean:.4}; restored the snapshot \
                         of step {to}; learning rate x{} (now x{})",
                        state.spike.rollbacks, state.step, cfg.spike_factor, cfg.spike_lr_factor, state.spike.lr_scale
                    );
                    eprintln!("warning: {e}");
                    event = Some(e);
                }
            }
            let skipped = found_inf || !grad_norm.is_finite() || !micro_loss.is_finite() || event.is_some();
            if skipped {
                state.skipped_steps += 1;
                state.consecutive_skips += (event.is_none()) as usize;
            } else {
                sgd.step(lr)?;
                state.sgd_steps += 1;
                state.consecutive_skips = 0;
                spike_guard.maybe_snapshot(state.step + 1, &guarded);
            }
            scaler.update()?;
            sgd.zero_grad()?;
            // Divergence guard: a run that cannot take a finite step applies the next configured
            // remedy and continues from the last snapshot, or stops with a diagnosis instead of
            // burning hours (its last checkpoint, from before the trouble, is kept).
            let too_many =
                cfg.max_consecutive_skips > 0 && state.consecutive_skips >= cfg.max_consecutive_skips;
            let scale_floor = scaler.enabled && scaler.scale_value() < cfg.min_loss_scale;
            let mut stop = None;
            if too_many || scale_floor {
                let why = if too_many {
                    format!("{} consecutive steps had non-finite loss or gradients", state.consecutive_skips)
                } else {
                    format!(
                        "the fp16 loss scale fell to {:.3e} (floor {:.1e})",
                        scaler.scale_value(),
                        cfg.min_loss_scale
                    )
                };
                let next_remedy = cfg.divergence_remedies.get(state.remedies.len()).copied();
                // (Restores the snapshot only when there is a remedy to continue with: a stopped run
                // is diagnosed as it is.)
                match next_remedy.and_then(|r| spike_guard.rollback().map(|to| (r, to))) {
                    Some((remedy, to)) => {
                        remedy.apply(&mut cfg);
                        model_cfg = cfg.model(num_classes);
                        model.set_act_compute(model_cfg.act.clamp, model_cfg.act.fp32);
                        saved.model = model_cfg;
                        state.remedies.push(remedy);
                        state.consecutive_skips = 0;
                        let e = format!(
                            "divergence guard at step {}: {why}; applied remedy {remedy} and restored the snapshot \
                             of step {to} (weights, BN statistics, momentum, loss scale)",
                            state.step
                        );
                        eprintln!("warning: {e}");
                        event = Some(match event {
                            Some(before) => format!("{before}; {e}"),
                            None => e,
                        });
                    }
                    None => stop = Some(why),
                }
            }
            let secs = window.0.elapsed().as_secs_f64();
            let record = StepRecord {
                step: state.step,
                epoch,
                loss: micro_loss,
                lr,
                grad_norm,
                loss_scale: scaler.scale_value(),
                skipped,
                img_per_s: window.1 as f64 / secs.max(1e-9),
                elapsed_s: elapsed(&state),
                activations: std::mem::take(&mut step_stats),
                event,
            };
            log.step(&record)?;
            if let Some(why) = stop {
                log.flush();
                let applied = if state.remedies.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (after the remedies {})",
                        state.remedies.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
                    )
                };
                return Err(Error::Diverged(diagnose(
                    &model,
                    &x,
                    cfg.precision,
                    device,
                    state.step,
                    &format!("{why}{applied}"),
                    cfg.act_fp32,
                )?));
            }
            if micro_loss.is_finite() {
                loss_sum += micro_loss;
                loss_count += 1;
            }
            let line = format!(
                "loss {:.4}  lr {:.5}  grad {:.3}  {:.0} img/s{}",
                micro_loss,
                lr,
                grad_norm,
                record.img_per_s,
                if skipped { "  (skipped: non-finite)" } else { "" }
            );
            if let Some(bar) = &bar {
                bar.set_message(line);
                bar.inc(1);
            } else if state.step % cfg.log_every.max(1) == 0 {
                println!("epoch {epoch:>3} step {:>7}  {line}", state.step);
            }
            window = (Instant::now(), 0);
            micro = 0;
            micro_loss = 0.0;
            state.step += 1;
            state.next_batch = batch.index + 1;
            let stop = cfg.max_steps > 0 && state.step >= cfg.max_steps;
            if stop || (cfg.checkpoint_every > 0 && state.step % cfg.checkpoint_every == 0) {
                let mut s = state.clone();
                s.elapsed_s = elapsed(&state);
                checkpoint::save_last(&last_path, &saved, &sgd, &scaler.scale, &scaler.growth_tracker, &s)?;
            }
            if stop {
                log.flush();
                println!(
                    "stopped after {} steps (--max-steps); continue with --resume {}",
                    state.step,
                    dir.display()
                );
                return Ok(RunSummary {
                    run_dir: dir,
                    steps: state.step,
                    epochs_done: epoch,
                    last_eval,
                    best_top1: state.best_top1,
                    stopped_early: true,
                });
            }
        }

        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        // ---- Epoch end: evaluate, record, checkpoint. ----
        let train_loss = if loss_count > 0 { loss_sum / loss_count as f64 } else { f64::NAN };
        let eval = match &val_loader {
            Some(l) if (epoch + 1) % cfg.eval_every.max(1) == 0 || epoch + 1 == cfg.epochs => {
                Some(evaluate(&model, l, device, cfg.precision, cfg.channels_last)?)
            }
            _ => None,
        };
        state.epoch += 1;
        state.next_batch = 0;
        if let Some(e) = eval {
            last_eval = Some(e);
            if e.top1 > state.best_top1 || state.best_epoch.is_none() {
                state.best_top1 = e.top1;
                state.best_epoch = Some(epoch);
                checkpoint::save_model(&dir.join("best.safetensors"), &saved)?;
            }
        }
        log.epoch(EpochRecord {
            epoch,
            train_loss,
            eval_loss: eval.map(|e| e.loss),
            eval_top1: eval.map(|e| e.top1),
            eval_top5: eval.map(|e| e.top5),
            lr: schedule.lr(state.step.saturating_sub(1)),
            elapsed_s: elapsed(&state),
        })?;
        println!(
            "epoch {epoch:>3} done: train loss {train_loss:.4}{}{}{}  [{:.0} s]",
            eval.map_or(String::new(), |e| format!(
                "  eval loss {:.4}  top-1 {:.2}%  top-5 {:.2}%",
                e.loss, e.top1, e.top5
            )),
            match train_loader.bad.count() {
                0 => String::new(),
                n => format!("  ({n} unreadable train images replaced, each named once above)"),
            },
            if state.skipped_steps > 0 {
                format!("  ({} steps skipped so far)", state.skipped_steps)
            } else {
                String::new()
            },
            elapsed(&state)
        );
        if cfg.keep_last > 0 {
            checkpoint::save_model(&dir.join(format!("epoch-{epoch}.safetensors")), &saved)?;
            checkpoint::prune_epochs(&dir, cfg.keep_last)?;
        }
        let mut s = state.clone();
        s.elapsed_s = elapsed(&state);
        checkpoint::save_last(&last_path, &saved, &sgd, &scaler.scale, &scaler.growth_tracker, &s)?;
    }
    Ok(RunSummary {
        run_dir: dir,
        steps: state.step,
        epochs_done: state.epoch,
        last_eval,
        best_top1: state.best_top1,
        stopped_early: false,
    })
}
