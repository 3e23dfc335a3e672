//! `resnet-train [train]`: the main job.

use crate::error::{Error, Result};
use crate::train::config::{TrainArgs, TrainConfig};
use crate::train::trainer;
use std::path::PathBuf;

pub fn run(args: TrainArgs) -> Result<()> {
    // SIGINT/SIGTERM: the trainer finishes its step, saves `last` and exits 130/143; a second
    // signal exits at once.
    crate::ffi::process::install_termination_handlers()
        .map_err(|e| Error::Usage(format!("cannot install the signal handlers: {e}")))?;
    let (cfg, resume) = match &args.resume {
        Some(dir) => (TrainConfig::resume(dir, &args)?, Some(dir.clone())),
        None => {
            let cfg = TrainConfig::resolve(&args)?;
            let resume = if args.auto_resume { auto_resume_dir(&cfg)? } else { None };
            (cfg, resume)
        }
    };
    if args.dry_run {
        trainer::Trainer::dry_run(cfg, resume.as_deref(), args.dry_run_steps)?;
        return Ok(());
    }
    let summary = trainer::train(cfg, resume.as_deref())?;
    let main_rank = crate::dist::DistEnv::is_main_process();
    if !summary.stopped_early && main_rank {
        println!(
            "finished: {} steps, best top-1 {:.2}%; outputs in {}",
            summary.steps,
            summary.best_top1,
            summary.run_dir.display()
        );
    }
    Ok(())
}

/// `--auto-resume`: the run folder to continue, if `--output/--name` holds a run (its config.toml)
/// whose defining keys this config keeps; None to start it.
fn auto_resume_dir(cfg: &TrainConfig) -> Result<Option<PathBuf>> {
    let Some(name) = &cfg.name else {
        return Err(Error::Usage(
            "--auto-resume needs --name: the run folder the first start creates and each requeue continues"
                .into(),
        ));
    };
    let dir = cfg.output.join(name);
    if !dir.join("config.toml").is_file() {
        return Ok(None);
    }
    let (saved, saved_path) = crate::train::config::read_run(&dir)?;
    cfg.check_resumable_from(&saved, &saved_path)?;
    Ok(Some(dir))
}
