//! `resnet-train [train]`: the main job.

use crate::error::{Error, Result};
use crate::train::config::{TrainArgs, TrainConfig};
use crate::train::trainer;

pub fn run(args: TrainArgs) -> Result<()> {
    // SIGINT/SIGTERM: the trainer finishes its step, saves `last` and exits 130/143; a second
    // signal exits at once.
    crate::ffi::process::install_termination_handlers()
        .map_err(|e| Error::Usage(format!("cannot install the signal handlers: {e}")))?;
    let (cfg, resume) = match &args.resume {
        Some(dir) => (TrainConfig::resume(dir, &args)?, Some(dir.as_path())),
        None => (TrainConfig::resolve(&args)?, None),
    };
    let summary = trainer::train(cfg, resume)?;
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
