//! The training loop. Read it top to bottom: `Trainer::new` sets up (device, data, run folder, the
//! engine with model, optimizer, scaler and EMA, resume), `run` calls `train_epoch` and `end_epoch`
//! until the last epoch; `train_epoch` feeds batches to the engine's `step` and logs what it did;
//! `end_epoch` evaluates (the model and its EMA), records and checkpoints. Each concern lives in
//! its own module and is one call here.
//!
//! Data-parallel (torchrun, SLURM or `resnet-train launch`): every rank runs this same loop on its
//! shard of each batch; the engine averages the gradients, so all ranks take the same steps and
//! decisions; rank 0 alone writes the run folder and prints; evaluation is sharded and summed.

use super::config::TrainConfig;
use super::setup::{self, Data, RunFolder, Runtime, Start};
use crate::data::dataset::ImageFolder;
use crate::data::loader::Loader;
use crate::dist::checksum;
use crate::error::{Error, Result};
use crate::ffi::dist::ReduceOp;
use crate::model::resnet::count_params;
use crate::model::ResNet;
use crate::train::run::checkpoint::{self, EpochEval, LoopState, ModelMeta};
use crate::train::run::eval::{evaluate_sums, prepare, EvalOptions, EvalResult, EvalSums};
use crate::train::run::metrics::{EpochRecord, RunLog, StepRecord};
use crate::train::run::run_dir::RunLock;
use crate::train::step::engine::{Engine, StepResult};
use crate::train::step::guards::{Decision, Stop};
use crate::train::step::schedule::{Schedule, ScheduleStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub steps: usize,
    pub epochs_done: usize,
    pub last_eval: Option<EvalResult>,
    /// The EMA model's last evaluation (with `model_ema`).
    pub last_ema_eval: Option<EvalResult>,
    pub best_top1: f64,
    /// Stopped by `max_steps` before the last epoch (resumable).
    pub stopped_early: bool,
}

/// Trains from scratch (`resume = None`) or continues the run in `resume`.
pub fn train(cfg: TrainConfig, resume: Option<&Path>) -> Result<RunSummary> {
    Trainer::new(cfg, resume)?.run()
}

/// What `--dry-run` measured.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct DryRun {
    pub steps_timed: usize,
    /// Mean seconds per optimizer step, data wait included.
    pub step_s: f64,
    pub steps_per_epoch: usize,
    pub epochs: usize,
}

pub struct Trainer {
    engine: Engine,
    dir: PathBuf,
    /// Held while the trainer lives: one process (one job: rank 0's) per run folder.
    _lock: Option<RunLock>,
    /// Rank 0 of a data-parallel job, or the only process: writes the run folder and prints.
    main: bool,
    train_loader: Loader,
    val_loader: Option<Loader>,
    classes: Vec<String>,
    /// (resize, crop) of the eval transform, recorded in model files.
    eval_size: (usize, usize),
    schedule: Schedule,
    steps_per_epoch: usize,
    /// The step this invocation stops at, resumable (0: the run's end): `max_steps`, or where a
    /// study's branch forks.
    stop_at: usize,
    state: LoopState,
    /// Rank 0's (None on the other ranks).
    log: Option<RunLog>,
    session_start: Instant,
    last_eval: (Option<EvalResult>, Option<EvalResult>),
    /// Said once, with the session's first step record (e.g. the settings a resume changed).
    pending_event: Option<String>,
    /// This epoch's (seconds waiting for the loader, seconds of training steps), this session.
    epoch_data_wait: (f64, f64),
}

/// One optimizer step's wall time and the part of it spent waiting for the loader's batches.
#[derive(Clone, Copy)]
struct StepTiming {
    img_per_s: f64,
    data_s: f64,
    step_s: f64,
}

/// Above this share of an epoch's step time spent waiting for decoded batches, the epoch's line
/// says the run is input-bound and what to change.
const INPUT_BOUND_FRACTION: f64 = 0.2;

/// println! on rank 0 (or the only process) only.
macro_rules! say {
    ($main:expr, $($arg:tt)*) => {
        if $main {
            println!($($arg)*);
        }
    };
}

/// A per-epoch progress bar on a terminal (images/s, loss, lr, ETA); None in logs.
fn progress_bar(len: usize, epoch: usize, position: usize) -> Option<indicatif::ProgressBar> {
    std::io::stdout().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(len as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "epoch {prefix} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_prefix(epoch.to_string());
        b.set_position(position as u64);
        b
    })
}

impl Trainer {
    // ---- Set-up: runtime, settings, data, run folder, engine, restore, plan, banner. ----
    pub fn new(cfg: TrainConfig, resume: Option<&Path>) -> Result<Self> {
        let rt = Runtime::for_run(&cfg)?;
        let main = rt.is_main();
        let (saved_config, mut notes) = match setup::resumed_settings(&cfg, resume)? {
            Some((saved, notes)) => (Some(saved), notes),
            None => (None, Vec::new()),
        };
        // The run's settings as given (a global batch, not this world's share of it), before any
        // remedy of its guards: what config.toml keeps and a resume compares with.
        let run_config = cfg.to_toml();
        let cfg = cfg.for_world(rt.world())?;
        let data = Data::open(&cfg, rt.device, rt.dist.as_ref().map(|d| &d.env), rt.world())?;
        let folder = RunFolder::open(&cfg, resume, main)?;
        let mut engine = build_engine(cfg, &rt, &data.train_set.classes, folder.start, &mut notes)?;
        let mut state = restore(&mut engine, &folder, &data.train_set, rt.world(), main)?;
        if let Some(d) = &rt.dist {
            // Identical start (DDP broadcasts rank 0's weights and buffers), checked.
            engine.sync_from_main(true)?;
            let sum = checksum(engine.vs.variables())?;
            d.check_same("the model's checksum after the broadcast", sum)?;
        }
        engine.snapshot_if_due(state.step);
        let saved = saved_config.filter(|_| folder.start == Start::Resume);
        let (steps_per_epoch, schedule, stop_at) =
            plan(&mut engine, &mut state, &data.train_loader, rt.world(), saved.as_ref(), &mut notes)?;
        let experiment =
            setup::Experiment::of(engine.config(), rt.world(), steps_per_epoch, schedule.peak_lr);
        // Ordering: written once the checkpoint loaded and the plan holds, so a failed resume
        // leaves the run as it was.
        if main {
            let text = format!("{}{run_config}", experiment.toml_header());
            crate::fsutil::write_atomic(&folder.dir.join("config.toml"), text.as_bytes())?;
        }
        let mut log = if main { Some(RunLog::open(&folder.dir, state.step, state.epoch)?) } else { None };
        if let (Some(log), Start::Fresh) = (&mut log, folder.start) {
            // Once, at the start (a resume's event files keep the run's).
            log.hparams(engine.config(), &experiment)?;
        }
        let device_words = crate::runtime::describe_device(rt.device);
        if main {
            let session = crate::train::run::sessions::Session::this_process(
                (state.step, state.epoch),
                device_words.clone(),
                rt.world(),
                data.train_loader.config().threads,
                experiment.clone(),
            );
            crate::train::run::sessions::append(&folder.dir, &session)?;
        }
        let mut trainer = Self::assemble(
            engine,
            (folder.dir, folder.lock),
            main,
            data,
            (schedule, steps_per_epoch, stop_at),
            state,
        );
        trainer.log = log;
        trainer.pending_event = (!notes.is_empty()).then(|| notes.join("; "));
        trainer.banner(&device_words, resume.is_some(), &notes);
        crate::fault::point("setup");
        Ok(trainer)
    }

    /// A trainer from its set-up's parts, before its log is opened (a dry run has none).
    fn assemble(
        engine: Engine,
        (dir, lock): (PathBuf, Option<RunLock>),
        main: bool,
        data: Data,
        (schedule, steps_per_epoch, stop_at): (Schedule, usize, usize),
        state: LoopState,
    ) -> Self {
        Self {
            engine,
            dir,
            _lock: lock,
            main,
            train_loader: data.train_loader,
            val_loader: data.val_loader,
            classes: data.train_set.classes.clone(),
            eval_size: data.eval_size,
            schedule,
            steps_per_epoch,
            stop_at,
            state,
            log: None,
            session_start: Instant::now(),
            last_eval: (None, None),
            pending_event: None,
            epoch_data_wait: (0.0, 0.0),
        }
    }

    /// `--dry-run`: everything a run does before its first step (the config resolved, the data
    /// scanned and checked, the model built on the device with its kernels), then `steps` timed
    /// optimizer steps on the run's own batches, and the estimate of an epoch and of the run.
    /// Writes nothing: no run folder, no lock, no log.
    pub fn dry_run(cfg: TrainConfig, resume: Option<&Path>, steps: usize) -> Result<DryRun> {
        let rt = Runtime::for_run(&cfg)?;
        let main = rt.is_main();
        let mut notes = setup::resumed_settings(&cfg, resume)?.map(|(_, n)| n).unwrap_or_default();
        let cfg = cfg.for_world(rt.world())?;
        let data = Data::open(&cfg, rt.device, rt.dist.as_ref().map(|d| &d.env), rt.world())?;
        let dir = resume.map_or_else(|| setup::run_dir(&cfg), Path::to_path_buf);
        if resume.is_none() && crate::train::run::run_dir::holds_checkpoint(&dir) {
            notes.push(format!(
                "{} already holds a run: a real start needs --resume or --auto-resume",
                dir.display()
            ));
        }
        let mut engine = build_engine(cfg, &rt, &data.train_set.classes, Start::Fresh, &mut notes)?;
        let world = rt.world();
        let mut state = fresh_state(&data.train_set, world);
        let (steps_per_epoch, schedule, stop_at) =
            plan(&mut engine, &mut state, &data.train_loader, world, None, &mut notes)?;
        let mut trainer =
            Self::assemble(engine, (dir, None), main, data, (schedule, steps_per_epoch, stop_at), state);
        trainer.banner(&crate::runtime::describe_device(rt.device), resume.is_some(), &notes);
        let seconds = trainer.time_steps(steps)?;
        let epochs = trainer.engine.config().total_epochs();
        let report = DryRun {
            steps_timed: seconds.len(),
            step_s: seconds.iter().sum::<f64>() / seconds.len().max(1) as f64,
            steps_per_epoch,
            epochs,
        };
        say!(
            main,
            "dry run    {} steps timed after one warm-up step: {:.3} s per step (data wait included); an epoch of \
             {steps_per_epoch} steps ~{:.1} min, the run's {epochs} epochs ~{:.1} h (evaluation not counted). \
             Nothing was written",
            report.steps_timed,
            report.step_s,
            report.step_s * steps_per_epoch as f64 / 60.0,
            report.step_s * (steps_per_epoch * epochs) as f64 / 3600.0
        );
        Ok(report)
    }

    /// Trains one warm-up step and then up to `steps` more on the first batches of epoch 0;
    /// returns the timed steps' seconds (each from asking for its first batch to its result).
    fn time_steps(&mut self, steps: usize) -> Result<Vec<f64>> {
        let accum = self.engine.config().accum_steps;
        let mut batches = self.train_loader.epoch(0, 0);
        let mut seconds = Vec::new();
        for i in 0..=steps.min(self.steps_per_epoch.saturating_sub(1)) {
            let t0 = Instant::now();
            let mut micro = Vec::with_capacity(accum);
            while micro.len() < accum {
                let Some(batch) = batches.next() else { return Ok(seconds) };
                let batch = batch?;
                let cfg = &self.engine.config();
                let x = prepare(&batch.images, self.engine.device, cfg.channels_last, &cfg.normalization())?;
                micro.push((x, batch.labels.to_device(self.engine.device)));
            }
            let lr = self.schedule.lr(i);
            let result = self.engine.step(&micro, lr, i, &mut self.state.guards)?;
            if let Decision::Stop(Stop::Spikes(m) | Stop::Diverged(m)) = result.decision {
                return Err(Error::Diverged(m));
            }
            if i > 0 {
                seconds.push(t0.elapsed().as_secs_f64());
            }
        }
        Ok(seconds)
    }

    /// The start-up lines: run folder, ranks, device, data, augmentation, model, schedule, notes.
    fn banner(&self, device_words: &str, resuming: bool, notes: &[String]) {
        let (main, dir, engine, schedule, state) =
            (self.main, &self.dir, &self.engine, &self.schedule, &self.state);
        let steps_per_epoch = self.steps_per_epoch;
        let (train_set, cfg) = (self.train_loader.dataset(), engine.config());
        let classes = &self.classes;
        let global_batch = cfg.batch_size * cfg.accum_steps * engine.dist.as_ref().map_or(1, |d| d.world());
        say!(main, "run        {}", dir.display());
        if let Some(d) = &engine.dist {
            say!(
                main,
                "ranks      {} processes ({} per node, {}), rendezvous {}:{}, {} all-reduce",
                d.world(),
                d.env.local_world,
                d.env.source,
                d.env.master_addr,
                d.env.master_port,
                d.backend_name()
            );
        }
        say!(
            main,
            "device     {device_words}, precision {:?}{}, {} decode threads, {} libtorch threads",
            cfg.precision,
            if cfg.channels_last { ", channels_last" } else { "" },
            self.train_loader.config().threads,
            tch::get_num_threads()
        );
        say!(
            main,
            "data       {} train / {} val images, {} classes ({})",
            train_set.len(),
            self.val_loader.as_ref().map_or(0, |v| v.dataset().len()),
            classes.len(),
            cfg.data.as_ref().map_or("embedded procedural dataset".to_string(), |p| p.display().to_string())
        );
        say!(main, "augment    {}", augment_summary(cfg));
        let split_bn = split_bn_params(&engine.vs);
        say!(
            main,
            "model      {} {:?} order {}, {} parameters{}{}",
            cfg.arch.name(),
            cfg.act,
            cfg.order,
            count_params(&engine.vs) - split_bn,
            match split_bn {
                0 => String::new(),
                n => format!(" (+ {n} in the split BNs, training only)"),
            },
            if cfg.model_ema { format!(", EMA decay {}", cfg.model_ema_decay) } else { String::new() }
        );
        say!(
            main,
            "schedule   {}{}, {} {} x {} epochs{} x {steps_per_epoch} steps, global batch {global_batch}{}, peak lr {:.4}, warmup {}{}",
            format!("{:?}", cfg.opt).to_lowercase(),
            if cfg.corrected_weight_decay { " (corrected weight decay)" } else { "" },
            cfg.schedule_style.name(),
            cfg.schedule.name(),
            cfg.total_epochs(),
            schedule_extras(cfg, schedule, steps_per_epoch),
            match cfg.aug_splits {
                s if s > 1 => format!(" (x {s} AugMix splits{})", if cfg.jsd_loss { ", JSD loss" } else { "" }),
                _ => String::new(),
            },
            schedule.peak_lr,
            match (schedule.warmup, schedule.style) {
                (0, _) => "none".to_string(),
                (w, ScheduleStyle::PerStep) => format!("{w} steps"),
                (w, _) => format!("{w} {} from {:e}", if schedule.steps_per_tick == 1 { "steps" } else { "epochs" }, schedule.warmup_lr),
            },
            if resuming { format!(", resuming at epoch {} step {}", state.epoch, state.step) } else { String::new() }
        );
        let world = engine.dist.as_ref().map_or(1, |d| d.world());
        let experiment = setup::Experiment::of(cfg, world, steps_per_epoch, schedule.peak_lr);
        say!(main, "experiment {}", experiment.describe());
        for n in notes {
            say!(main, "note       {n}");
        }
    }

    /// Trains to the last epoch (or `max_steps`, or a termination signal).
    pub fn run(mut self) -> Result<RunSummary> {
        let max_steps = self.stop_at;
        if max_steps > 0
            && self.state.step >= max_steps
            && self.state.epoch < self.engine.config().total_epochs()
        {
            // Resumed at or past --max-steps: nothing to train in this invocation.
            say!(
                self.main,
                "already at step {} (--max-steps {max_steps}): nothing to train",
                self.state.step
            );
            return Ok(self.summary(true));
        }
        while self.state.epoch < self.engine.config().total_epochs() {
            if self.train_epoch()? {
                return Ok(self.summary(true));
            }
            self.end_epoch()?;
            self.stop_if_signalled()?;
        }
        Ok(self.summary(false))
    }

    /// On SIGINT/SIGTERM (see `ffi::process`): saves `last` at this step boundary and stops with
    /// `Error::Interrupted` (exit code 130/143); `--resume` continues exactly from here. On
    /// SIGUSR1 (e.g. SLURM's `--signal=USR1@120`): saves `last` here and goes on.
    fn stop_if_signalled(&mut self) -> Result<()> {
        let mut signal = crate::ffi::process::termination_requested();
        let mut save = crate::ffi::process::take_save_request();
        if let Some(d) = &self.engine.dist {
            // Every rank stops (or saves) at the same step boundary, whichever rank caught it.
            let any = d.reduce_f64(&[signal.is_some() as u8 as f64, save as u8 as f64], ReduceOp::Max)?;
            signal = if any[0] > 0.0 { signal.or(Some(libc::SIGTERM)) } else { None };
            save = any[1] > 0.0;
        }
        if save && signal.is_none() {
            self.save_last()?;
            say!(
                self.main,
                "SIGUSR1: saved the run at step {} in {}; training goes on",
                self.state.step,
                self.dir.join("last.safetensors").display()
            );
        }
        let Some(signal) = signal else { return Ok(()) };
        self.save_last()?;
        let name = if signal == libc::SIGINT { "SIGINT" } else { "SIGTERM" };
        Err(Error::Interrupted {
            signal,
            msg: format!(
                "{name}: saved the run at step {} in {}; continue with --resume {}",
                self.state.step,
                self.dir.join("last.safetensors").display(),
                self.dir.display()
            ),
        })
    }

    /// One epoch from `state.next_batch`; returns whether `max_steps` stopped it.
    fn train_epoch(&mut self) -> Result<bool> {
        let epoch = self.state.epoch;
        let off = self.engine.config().mixup_off_epoch;
        self.engine.mixup_enabled = off == 0 || epoch < off;
        let accum = self.engine.config().accum_steps;
        let bar =
            progress_bar(self.steps_per_epoch, epoch, self.state.next_batch / accum).filter(|_| self.main);
        let mut micro = Vec::with_capacity(accum);
        // (start, images, seconds blocked on the loader) of the step being gathered.
        let mut window = (Instant::now(), 0usize, 0f64);
        let mut batches = self.train_loader.epoch(epoch as u64, self.state.next_batch);
        loop {
            let asked = Instant::now();
            let Some(batch) = batches.next() else { break };
            window.2 += asked.elapsed().as_secs_f64();
            let batch = batch?;
            let cfg = &self.engine.config();
            let x = prepare(&batch.images, self.engine.device, cfg.channels_last, &cfg.normalization())?;
            window.1 += batch.labels.size()[0] as usize;
            micro.push((x, batch.labels.to_device(self.engine.device)));
            if micro.len() < accum {
                continue;
            }
            let lr = self.schedule.lr(self.state.schedule_step()) * self.state.guards.spike.lr_scale;
            let step = self.state.step;
            let result = self.engine.step(&micro, lr, step, &mut self.state.guards)?;
            micro.clear();
            let step_s = window.0.elapsed().as_secs_f64().max(1e-9);
            let timing = StepTiming { img_per_s: window.1 as f64 / step_s, data_s: window.2, step_s };
            self.epoch_data_wait.0 += timing.data_s;
            self.epoch_data_wait.1 += timing.step_s;
            self.log_step(&result, lr, timing, bar.as_ref())?;
            if let Decision::Stop(stop) = result.decision {
                return Err(Error::Diverged(match stop {
                    Stop::Spikes(m) | Stop::Diverged(m) => m,
                }));
            }
            if result.loss.is_finite() {
                self.state.train_loss_sum += result.loss;
                self.state.train_loss_steps += 1;
            }
            window = (Instant::now(), 0, 0.0);
            self.state.step += 1;
            self.state.next_batch = batch.index + 1;
            let cfg = &self.engine.config();
            let stop = self.stop_at > 0 && self.state.step >= self.stop_at;
            if stop || (cfg.checkpoint_every > 0 && self.state.step.is_multiple_of(cfg.checkpoint_every)) {
                self.save_last()?;
            }
            if stop {
                say!(
                    self.main,
                    "stopped after {} steps (--max-steps); continue with --resume {}",
                    self.state.step,
                    self.dir.display()
                );
                return Ok(true);
            }
            crate::fault::point("step");
            self.stop_if_signalled()?;
        }
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        Ok(false)
    }

    /// Records one step: metrics.jsonl, TensorBoard, the progress bar or a console line.
    fn log_step(
        &mut self,
        r: &StepResult,
        lr: f64,
        timing: StepTiming,
        bar: Option<&indicatif::ProgressBar>,
    ) -> Result<()> {
        let StepTiming { img_per_s, data_s, step_s } = timing;
        if self.log.is_none() {
            return Ok(());
        }
        if let Some(e) = r.decision.event() {
            eprintln!("warning: {e}");
        }
        let record = StepRecord {
            step: self.state.step,
            epoch: self.state.epoch,
            loss: r.loss,
            lr,
            grad_norm: r.grad_norm,
            loss_scale: r.loss_scale,
            skipped: r.skipped(),
            img_per_s,
            data_s,
            step_s,
            elapsed_s: self.elapsed(),
            activations: r.activations.clone(),
            coefficients: r.coefficients.clone(),
            event: match (self.pending_event.take(), r.decision.event()) {
                (Some(a), Some(b)) => Some(format!("{a}; {b}")),
                (a, b) => a.or(b),
            },
        };
        if let Some(log) = &mut self.log {
            log.step(&record)?;
        }
        let line = format!(
            "loss {:.4}  lr {lr:.5}  grad {:.3}  {img_per_s:.0} img/s  data {:.0}%{}",
            r.loss,
            r.grad_norm,
            100.0 * data_s / step_s,
            if r.skipped() { "  (skipped: non-finite)" } else { "" }
        );
        if let Some(bar) = bar {
            bar.set_message(line);
            bar.inc(1);
        } else if self.state.step.is_multiple_of(self.engine.config().log_every.max(1)) {
            println!("epoch {:>3} step {:>7}  {line}", self.state.epoch, self.state.step);
        }
        Ok(())
    }

    // ---- Epoch end: evaluate (model and EMA), record, checkpoint. ----
    fn end_epoch(&mut self) -> Result<()> {
        let epoch = self.state.epoch;
        let cfg = &self.engine.config();
        let s = &self.state;
        let train_loss =
            if s.train_loss_steps > 0 { s.train_loss_sum / s.train_loss_steps as f64 } else { f64::NAN };
        let due = (epoch + 1).is_multiple_of(cfg.eval_every.max(1)) || epoch + 1 == cfg.total_epochs();
        let (eval, ema_eval) = match &self.val_loader {
            Some(l) if due => {
                crate::fault::point("eval");
                // Every rank evaluates rank 0's model (BN statistics included) on its shard.
                self.engine.sync_from_main(false)?;
                let raw = self.evaluate(&self.engine.model, l)?;
                let ema = match &self.engine.ema {
                    Some(ema) => Some(self.evaluate(&ema.model, l)?),
                    None => None,
                };
                (Some(raw), ema)
            }
            _ => (None, None),
        };
        self.state.epoch += 1;
        self.state.next_batch = 0;
        (self.state.train_loss_sum, self.state.train_loss_steps) = (0.0, 0);
        let epoch_eval = eval.map(|model| EpochEval { epoch, model, ema: ema_eval });
        if let Some(ee) = &epoch_eval {
            self.last_eval = (eval, ema_eval);
            // `best` holds whichever of the model and its EMA ranks higher by eval_metric.
            let metric = cfg.eval_metric;
            let (best, use_ema) = match ema_eval {
                Some(e) if metric.score(&e) > metric.score(&ee.model) => (e, true),
                _ => (ee.model, false),
            };
            // Checkpoints from before eval_metric ranked by top-1 (the key cannot change on resume).
            let previous = self.state.best_score.or(self.state.best_epoch.map(|_| self.state.best_top1));
            if previous.is_none_or(|b| metric.score(&best) > b) {
                self.state.best_score = Some(metric.score(&best));
                self.state.best_top1 = best.top1;
                self.state.best_epoch = Some(epoch);
            }
            if self.state.best_epoch == Some(epoch) && self.main {
                let (weights, kind) = match self.engine.ema_weights().filter(|_| use_ema) {
                    Some(w) => (w, "ema"),
                    None => (self.engine.model_state(), "model"),
                };
                checkpoint::save_model(
                    &self.dir.join("best.safetensors"),
                    weights,
                    Vec::new(),
                    &self.meta(),
                    kind,
                    Some(ee),
                )?;
            }
        }
        let record = EpochRecord {
            epoch,
            train_loss,
            eval_loss: eval.map(|e| e.loss),
            eval_top1: eval.map(|e| e.top1),
            eval_top5: eval.map(|e| e.top5),
            lr: self.schedule.lr(self.state.schedule_step().saturating_sub(1)),
            elapsed_s: self.elapsed(),
            ema_top1: ema_eval.map(|e| e.top1),
            ema_top5: ema_eval.map(|e| e.top5),
        };
        if let Some(log) = &mut self.log {
            log.epoch(record)?;
        }
        let (waited, stepped) = std::mem::take(&mut self.epoch_data_wait);
        let data_share = if stepped > 0.0 { waited / stepped } else { 0.0 };
        say!(
            self.main,
            "epoch {epoch:>3} done: train loss {train_loss:.4}{}{}{}{}  [{:.0} s, data wait {:.0}%{}]",
            eval.map_or(String::new(), |e| format!(
                "  eval loss {:.4}  top-1 {:.2}%  top-5 {:.2}%{}",
                e.loss,
                e.top1,
                e.top5,
                match e.left_out {
                    0 => String::new(),
                    n => format!(" (of {} val images: {n} unreadable left out, named above)", e.images + n),
                }
            )),
            ema_eval.map_or(String::new(), |e| format!("  EMA top-1 {:.2}%  top-5 {:.2}%", e.top1, e.top5)),
            match self.train_loader.bad.count() {
                0 => String::new(),
                n => format!("  ({n} unreadable train images replaced, each named once above)"),
            },
            match self.state.guards.skipped_steps {
                0 => String::new(),
                n => format!("  ({n} steps skipped so far)"),
            },
            self.elapsed(),
            100.0 * data_share,
            self.fetch_note()
        );
        if data_share > INPUT_BOUND_FRACTION && self.main {
            eprintln!(
                "note: input-bound: training waited for decoded batches {:.0}% of epoch {epoch}'s step time \
                 (--workers {}, {} cores); more workers, or smaller files (imagenet-prep), would speed it up",
                100.0 * data_share,
                self.train_loader.config().threads.max(1),
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            );
        }
        let cfg = &self.engine.config();
        if (cfg.keep_last > 0 || cfg.checkpoint_hist > 0) && self.main {
            let ema = self
                .engine
                .ema_weights()
                .map(|w| crate::train::run::state::prefixed("ema", w))
                .unwrap_or_default();
            let path = self.dir.join(format!("epoch-{epoch}.safetensors"));
            let (model, meta) = (self.engine.model_state(), self.meta());
            checkpoint::save_model(&path, model, ema, &meta, "model", epoch_eval.as_ref())?;
            checkpoint::prune_epochs(&self.dir, cfg.keep_last, cfg.checkpoint_hist, cfg.eval_metric)?;
        }
        self.save_last()
    }

    /// For remote training shards: what was downloaded so far, and how long decoding waited for it.
    fn fetch_note(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        self.train_loader.dataset().fetcher().map_or(String::new(), |f| {
            format!(
                ", {} shards ({:.2} GB) fetched so far, decode threads waited {:.0} s for them",
                f.stats.shards.load(Relaxed),
                f.stats.bytes.load(Relaxed) as f64 / 1e9,
                f.stats.wait_ns.load(Relaxed) as f64 / 1e9
            )
        })
    }

    /// Writes `last.safetensors`: the model, every component's state, the loop position (rank 0's
    /// buffers: every rank calls this at the same step).
    fn save_last(&self) -> Result<()> {
        self.engine.sync_from_main(false)?;
        if !self.main {
            return Ok(());
        }
        let mut s = self.state.clone();
        s.elapsed_s = self.elapsed();
        let path = self.dir.join("last.safetensors");
        checkpoint::save_last(&path, self.engine.model_state(), self.engine.train_state(), &self.meta(), &s)
    }

    /// Top-1/top-5/loss over the val set: this rank's shard, summed over the ranks.
    fn evaluate(&self, model: &ResNet, loader: &Loader) -> Result<EvalResult> {
        let e = &self.engine;
        let opts = EvalOptions {
            device: e.device,
            precision: e.config().precision,
            channels_last: e.config().channels_last,
            flip_tta: e.config().eval_flip,
            norm: e.config().normalization(),
            columns: None,
        };
        let sums = evaluate_sums(model, loader, &opts)?;
        Ok(match &e.dist {
            Some(d) => EvalSums::from_slice(&d.reduce_f64(&sums.to_vec(), ReduceOp::Sum)?).result(),
            None => sums.result(),
        })
    }

    fn meta(&self) -> ModelMeta<'_> {
        ModelMeta {
            model: self.engine.model_config(),
            class_names: &self.classes,
            eval_size: self.eval_size,
            eval_filter: self.engine.config().interpolation,
            normalization: self.engine.config().normalization(),
        }
    }

    fn elapsed(&self) -> f64 {
        self.state.elapsed_s + self.session_start.elapsed().as_secs_f64()
    }

    fn summary(&self, stopped_early: bool) -> RunSummary {
        RunSummary {
            run_dir: self.dir.clone(),
            steps: self.state.step,
            epochs_done: self.state.epoch,
            last_eval: self.last_eval.0,
            last_ema_eval: self.last_eval.1,
            best_top1: self.state.best_top1,
            stopped_early,
        }
    }
}

/// The engine (model, optimizer, scaler, EMA) with its initial weights: a fresh run's seeded init,
/// or `initial_checkpoint`'s weights, then the head's init; a resumed run's weights come from its
/// checkpoint instead (`restore`).
fn build_engine(
    cfg: TrainConfig,
    rt: &Runtime,
    classes: &[String],
    start: Start,
    notes: &mut Vec<String>,
) -> Result<Engine> {
    let mut engine = Engine::new(cfg, rt.device, classes.len() as i64)?;
    engine.dist = rt.dist.clone();
    if start == Start::Fresh {
        if let Some(path) = engine.config().initial_checkpoint.clone() {
            notes.push(format!("model weights from {}", path.display()));
            notes.extend(engine.load_initial(&path, classes)?);
        }
        let (scale, bias) = (engine.config().head_init_scale, engine.config().head_init_bias);
        engine.init_head(scale, bias)?;
    }
    if engine.config().sync_bn && rt.dist.is_none() {
        eprintln!(
            "warning: --sync-bn has no effect in a single process (BatchNorm already sees the whole batch)"
        );
    }
    Ok(engine)
}

/// A new run's loop state: step 0 of epoch 0.
fn fresh_state(train_set: &ImageFolder, world: usize) -> LoopState {
    LoopState { world_size: world, train_images: train_set.len(), ..LoopState::default() }
}

/// The loop state to start from: step 0 (fresh) or the checkpoint's (resume), with the model and
/// every component's state loaded. Ordering: the divergence guard's remedies so far are applied
/// before `engine.load` (they change the model the state is loaded into).
fn restore(
    engine: &mut Engine,
    folder: &RunFolder,
    train_set: &ImageFolder,
    world: usize,
    main: bool,
) -> Result<LoopState> {
    if folder.start == Start::Fresh {
        return Ok(fresh_state(train_set, world));
    }
    let (dir, classes) = (&folder.dir, &train_set.classes);
    let last = dir.join("last.safetensors");
    let (file, saved) = checkpoint::load_last(&last)?;
    // The divergence guard's remedies so far hold again.
    for r in &saved.guards.remedies {
        engine.apply_remedy(*r);
    }
    if let Some(saved_classes) = file.class_names() {
        setup::check_same_classes(&saved_classes, classes, &train_set.root, &last)?;
    }
    if file.model_config(&last)? != engine.model_config() {
        return Err(Error::file(&last, "its model differs from the run's config.toml"));
    }
    if saved.train_images != 0 && saved.train_images != train_set.len() {
        say!(
            main,
            "warning: {} holds {} training images, the run started with {}: the data order (and the \
                 steps per epoch) change from here on",
            train_set.root.display(),
            train_set.len(),
            saved.train_images
        );
    }
    if saved.world_size != world && engine.config().global_batch.is_none() {
        say!(
                main,
                "warning: the run trained with {} data-parallel process(es), this job has {world}: the global \
                 batch (and with it the learning rate, where `lr` is unset and lr_base scales) and each rank's data order change from here on \
                 (set global_batch to keep the batch); \
                 the position in the epoch and the schedule are carried over by images seen",
                saved.world_size
            );
    }
    engine.load(&file, &last)?;
    Ok(LoopState { train_images: train_set.len(), ..saved })
}

/// The run's plan: optimizer steps per epoch, the position after a world-size change, the
/// schedule and a study's stop point. Ordering: after `restore` (the loop state is the
/// checkpoint's), and corrected weight decay after `Schedule::new` (timm snapshots the peak lr the
/// optimizer is built with).
fn plan(
    engine: &mut Engine,
    state: &mut LoopState,
    train_loader: &Loader,
    world: usize,
    saved: Option<&TrainConfig>,
    notes: &mut Vec<String>,
) -> Result<(usize, Schedule, usize)> {
    let cfg = engine.config();
    // At least 1: `check_batches_fit` refused a run whose epoch holds no optimizer step.
    let steps_per_epoch = (train_loader.batches_per_epoch() / cfg.accum_steps).max(1);
    // The step this invocation stops at (0: the run's end): --max-steps, or a study's branch point.
    let mut stop_at = cfg.max_steps;
    if state.world_size != world {
        // Another world size: resume at the batch that has seen as many of the epoch's
        // images, in whole optimizer steps, and move the schedule's clock to the same point.
        // (With global_batch, each rank's batch changed with the world size too.)
        let accum = cfg.accum_steps.max(1);
        let batch_then = cfg.global_batch.map_or(cfg.batch_size, |g| g / (state.world_size * accum).max(1));
        let seen = state.next_batch * batch_then * state.world_size;
        state.next_batch =
            (seen / (cfg.batch_size * world) / accum * accum).min(train_loader.batches_per_epoch());
        let at = state.epoch * steps_per_epoch + state.next_batch / accum;
        state.schedule_offset = state.step as i64 - at as i64;
        state.world_size = world;
    }
    let global_batch = cfg.batch_size * cfg.accum_steps * world;
    let schedule = cfg.lr_schedule(steps_per_epoch, global_batch);
    engine.set_steps_per_epoch(steps_per_epoch);
    if engine.config().corrected_weight_decay {
        // timm snapshots the lr the optimizer is built with: the peak, before the schedule.
        engine.optimizer.set_corrected_weight_decay(schedule.peak_lr);
    }
    let cfg = engine.config();
    if let Some(budget) = cfg.stop_before_decay_of {
        // A study's branch point: stop where a run of `budget` epochs starts its decay.
        let at = cfg.branch_step(budget, steps_per_epoch, global_batch).ok_or_else(|| {
            Error::Usage(format!(
                "no {budget}-epoch branch of this run: it needs the wsd or rsqrt schedule ({:?}) and a \
                     budget below its {} epochs",
                cfg.schedule, cfg.epochs
            ))
        })?;
        let at = (at as i64 + state.schedule_offset).max(1) as usize;
        stop_at = if cfg.max_steps > 0 { cfg.max_steps.min(at) } else { at };
    }
    if let Some(saved) = saved {
        // A resume that reshapes the schedule (--epochs, a wsd branch's --decay-epochs) says
        // where the learning rate continues from, and where the run's own schedule had it.
        let (step, before) = (state.schedule_step(), saved.lr_schedule(steps_per_epoch, global_batch));
        let (now, was) = (schedule.lr(step), before.lr(step));
        if (now - was).abs() > 1e-12 * was.abs().max(1e-12) {
            notes.push(format!(
                    "the changed schedule continues at lr {now:.6e} at step {step} (the run's schedule: {was:.6e}){}",
                    if now > was { "; the learning rate rises here" } else { "" }
                ));
        }
    }
    Ok((steps_per_epoch, schedule, stop_at))
}

/// Trainable parameters of split BatchNorm's auxiliary BNs (not part of the evaluated network).
fn split_bn_params(vs: &tch::nn::VarStore) -> i64 {
    let aux = vs.variables().into_iter().filter(|(n, t)| n.contains(".aux_bn.") && t.requires_grad());
    aux.map(|(_, t)| t.numel() as i64).sum()
}

/// The train images' preprocessing in one line: "crop 224 (scale 0.08-1, ratio 0.75-1.33,
/// random filter), hflip 0.5, aa rand-m9-mstd0.5, reprob 0.25, mixup 0.1, cutmix 1".
fn augment_summary(cfg: &TrainConfig) -> String {
    let mut parts = vec![if cfg.no_aug {
        format!("none (--no-aug: resize + center crop {})", cfg.train_size)
    } else {
        format!(
            "crop {} (scale {}-1, ratio {:.2}-{:.2}, {} filter)",
            cfg.train_size,
            cfg.rrc_scale_min,
            cfg.ratio[0],
            cfg.ratio[1],
            format!("{:?}", cfg.train_interpolation).to_lowercase()
        )
    }];
    if !cfg.no_aug {
        let probability = [("hflip", cfg.hflip), ("vflip", cfg.vflip)];
        parts.extend(probability.iter().filter(|(_, p)| *p > 0.0).map(|(n, p)| format!("{n} {p}")));
        parts.extend(cfg.aa.as_ref().map(|aa| format!("aa {aa}")));
        if let Some(j) = &cfg.color_jitter {
            let values: Vec<String> = j.iter().map(|v| v.to_string()).collect();
            let p = cfg.color_jitter_prob.map_or(String::new(), |p| format!(" (p {p})"));
            parts.push(format!("color jitter {}{p}", values.join(",")));
        }
        let colour = [("grayscale", cfg.grayscale_prob), ("blur", cfg.gaussian_blur_prob)];
        parts.extend(colour.iter().filter(|(_, p)| *p > 0.0).map(|(n, p)| format!("{n} {p}")));
    }
    parts.extend(cfg.erasing_config().map(|e| format!("reprob {}", e.prob)));
    let batch = [("mixup", cfg.mixup), ("cutmix", cfg.cutmix), ("smoothing", cfg.smoothing)];
    parts.extend(batch.iter().filter(|(_, v)| *v > 0.0).map(|(n, v)| format!("{n} {v}")));
    parts.join(", ")
}

/// What a schedule adds to its epochs, for the start-up line: " (3 cycles, 1 cooldown, lr noise)",
/// " (1-sqrt decay over the last 40 epochs)".
fn schedule_extras(cfg: &TrainConfig, schedule: &Schedule, steps_per_epoch: usize) -> String {
    let ticks_per_epoch = (steps_per_epoch / schedule.steps_per_tick.max(1)).max(1);
    let wsd = schedule.wsd.as_ref().map(|w| {
        let name = serde_json::to_value(w.decay_fn).ok().and_then(|v| v.as_str().map(str::to_owned));
        let epochs = (w.decay as f64 / ticks_per_epoch as f64 * 1e4).round() / 1e4;
        format!("{} decay over the last {epochs} epochs", name.unwrap_or_default())
    });
    let cycles = cfg.lr_cycle_limit.filter(|&c| c > 1).map(|c| format!("{c} cycles"));
    let cooldown = (cfg.cooldown_epochs > 0).then(|| format!("{} cooldown", cfg.cooldown_epochs));
    let noise = cfg.lr_noise.as_ref().map(|_| "lr noise".to_string());
    let extras: Vec<String> = [wsd, cycles, cooldown, noise].into_iter().flatten().collect();
    if extras.is_empty() {
        String::new()
    } else {
        format!(" ({})", extras.join(", "))
    }
}
