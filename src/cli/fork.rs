//! `resnet-train fork RUN NEW`: the run in RUN copied at its `last` checkpoint into the new run
//! folder NEW, to be continued with `train --resume NEW` and its own `--epochs`, `--decay-epochs`
//! (WSD's cooldown branching: one stable phase, decays at several budgets).

use crate::error::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ForkArgs {
    /// The run folder to fork (stopped: e.g. by `--max-steps` at the branch point).
    pub run: PathBuf,
    /// The new run folder (must not exist); its name becomes the run's `name`.
    pub new: PathBuf,
}

pub fn run(a: ForkArgs) -> Result<()> {
    let f = crate::experiments::fork::fork(&a.run, &a.new)?;
    println!(
        "forked {} at step {} (epoch {}, batch {}) into {} ({} model files linked, {} files copied)",
        a.run.display(),
        f.state.step,
        f.state.epoch,
        f.state.next_batch,
        f.dir.display(),
        f.files_linked,
        f.files_copied
    );
    println!(
        "continue it with: resnet-train train --resume {} [--epochs N] [--decay-epochs D]",
        f.dir.display()
    );
    Ok(())
}
