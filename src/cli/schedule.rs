//! `resnet-train schedule --config FILE [flags]`: the learning rate a config trains with, epoch by
//! epoch, without training: the steps per epoch for a dataset size and world size, the epochs
//! trained (warmup prefix, cycles and cooldown included) and the lr of each epoch's first and last
//! step, computed by the trainer's own `Schedule`. Check a recipe before a week of GPU time.

use crate::data::sampler::Sampler;
use crate::error::{Error, Result};
use crate::train::config::{TrainArgs, TrainConfig};

#[derive(clap::Args, Debug)]
pub struct ScheduleArgs {
    /// Training images (default: ImageNet-1k's train split).
    #[arg(long, default_value_t = 1_281_167, value_parser = crate::train::config::range::int::<usize>(1, 10_000_000_000), allow_negative_numbers = true)]
    pub images: usize,
    /// Data-parallel processes (the global batch is batch_size x accum_steps x this, or the
    /// config's `global_batch` split over them).
    #[arg(long, default_value_t = 1, value_parser = crate::train::config::range::int::<usize>(1, 1_000_000), allow_negative_numbers = true)]
    pub world_size: usize,
    /// One JSON object (epochs, steps per epoch, every epoch's first and last lr) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// wsd / rsqrt: where a branch of these shorter budgets (epochs) forks from this run: the
    /// `--max-steps` to stop it at before `resnet-train fork` (what `study` with `branches = true`
    /// does by itself).
    #[arg(long, value_delimiter = ',', value_parser = crate::train::config::range::int::<usize>(1, 100000), allow_negative_numbers = true)]
    pub branches: Vec<usize>,
    /// Also draw the learning rate of every step (at most 4,000 points) to this .svg or .png.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub train: TrainArgs,
}

pub fn run(a: ScheduleArgs) -> Result<()> {
    if a.train.resume.is_some() {
        return Err(Error::Usage("schedule takes --config and flags, not --resume".into()));
    }
    if a.images == 0 || a.world_size == 0 {
        return Err(Error::Usage("--images and --world-size must be at least 1".into()));
    }
    // The config as `world_size` processes train it (a global batch split over them).
    let cfg = TrainConfig::resolve(&a.train)?.for_world(a.world_size)?;
    // What the trainer's loader yields: this rank's share (repeated augmentation included), in
    // whole batches, then whole optimizer steps.
    let sampler =
        Sampler { world: a.world_size, repeats: cfg.aug_repeats, ..Sampler::new(a.images, true, cfg.seed) };
    let steps_per_epoch = (sampler.per_rank() / cfg.batch_size / cfg.accum_steps.max(1)).max(1);
    let global_batch = cfg.batch_size * cfg.accum_steps.max(1) * a.world_size;
    let schedule = cfg.lr_schedule(steps_per_epoch, global_batch);
    let epochs = cfg.total_epochs();
    let mut branches = Vec::new();
    for &budget in &a.branches {
        let step = cfg.branch_step(budget, steps_per_epoch, global_batch).ok_or_else(|| {
            Error::Usage(format!(
                "--branches {budget}: a branch needs the wsd or rsqrt schedule and a budget below --epochs {} \
                 whose own decay fits (check it with --epochs {budget})",
                cfg.epochs
            ))
        })?;
        branches.push((budget, step));
    }
    let per_epoch: Vec<(f64, f64)> = (0..epochs)
        .map(|e| (schedule.lr(e * steps_per_epoch), schedule.lr((e + 1) * steps_per_epoch - 1)))
        .collect();
    if let Some(out) = &a.out {
        let steps = epochs * steps_per_epoch;
        let every = steps.div_ceil(4000).max(1);
        let points: Vec<(f64, f64)> = (0..steps)
            .step_by(every)
            .chain(std::iter::once(steps - 1))
            .map(|s| (s as f64 / steps_per_epoch as f64, schedule.lr(s)))
            .collect();
        let title = format!(
            "{} {} schedule, {epochs} epochs, global batch {global_batch}",
            cfg.schedule_style.name(),
            cfg.schedule.name()
        );
        crate::experiments::report::draw_schedule(&points, &title, out)?;
        eprintln!("wrote {}", out.display());
    }
    if a.json {
        let v = serde_json::json!({
            "style": cfg.schedule_style.name(), "schedule": cfg.schedule.name(),
            "epochs": epochs, "steps_per_epoch": steps_per_epoch, "global_batch": global_batch,
            "peak_lr": schedule.peak_lr, "first_lr": per_epoch.iter().map(|p| p.0).collect::<Vec<_>>(),
            "last_lr": per_epoch.iter().map(|p| p.1).collect::<Vec<_>>(),
            "branches": branches.iter().map(|&(e, s)| serde_json::json!({"epochs": e, "max_steps": s})).collect::<Vec<_>>(),
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "{} {} schedule: {epochs} epochs x {steps_per_epoch} steps ({} images, global batch {global_batch}), peak lr {:.6}",
        cfg.schedule_style.name(),
        cfg.schedule.name(),
        a.images,
        schedule.peak_lr
    );
    println!("{:>6}  {:>12}  {:>12}", "epoch", "first lr", "last lr");
    for (e, (first, last)) in per_epoch.iter().enumerate() {
        println!("{e:>6}  {first:>12.6e}  {last:>12.6e}");
    }
    for (budget, step) in branches {
        println!(
            "branch {budget:>4} epochs: train with --max-steps {step} (epoch {}, step {} of its {steps_per_epoch}), \
             then `resnet-train fork` and --resume the fork with --epochs {budget}",
            step / steps_per_epoch,
            step % steps_per_epoch
        );
    }
    Ok(())
}
