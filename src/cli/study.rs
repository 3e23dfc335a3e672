//! `resnet-train study --config configs/studies/cpu.toml`: variants x seeds of full training runs
//! and the table of their differences (see `train::study`). Running the same command again
//! continues an interrupted study.

use crate::error::Result;
use crate::experiments::study::{self, CellState, StudyConfig};
use crate::experiments::study_run::{self, Jobs};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct StudyArgs {
    /// A study config (configs/studies/).
    #[arg(long)]
    pub config: PathBuf,
    /// The study's folder is OUTPUT/NAME (default: the config's).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// The data of every run (an ImageFolder), over the config's [train], recipes and variants.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Cells run at once, each in its own process (the CPU threads split between them, or one
    /// device each from --devices).
    #[arg(long, default_value_t = 1, value_parser = crate::train::config::range::int::<usize>(1, 1024))]
    pub jobs: usize,
    /// Devices handed out to the jobs in turn, e.g. cuda:0,cuda:1 (default: each cell's config).
    #[arg(long, value_delimiter = ',')]
    pub devices: Option<Vec<String>>,
    /// libtorch threads per cell (default: the config's `torch_threads`, else this machine's
    /// cores, whatever --jobs is: the thread count changes libtorch's CPU reduction order, so it is
    /// fixed to keep a study's numbers independent of --jobs; with --jobs N on a CPU, --threads
    /// cores/N avoids oversubscription). Also the decode threads when --workers is unset.
    #[arg(long, value_parser = crate::train::config::range::int::<usize>(1, 1024))]
    pub threads: Option<usize>,
    /// Decode threads per cell (default: --threads, else the cores / --jobs; any number gives the
    /// same batches).
    #[arg(long, value_parser = crate::train::config::range::int::<usize>(1, 1024))]
    pub workers: Option<usize>,
    /// Run only cell I of --list (e.g. a cluster job array's index), then update the tables.
    #[arg(long, value_parser = crate::train::config::range::int::<usize>(0, 1_000_000), allow_negative_numbers = true)]
    pub cell: Option<usize>,
    /// Print the cells (index, run folder, state) and exit.
    #[arg(long)]
    pub list: bool,
}

pub fn run(a: StudyArgs) -> Result<()> {
    let mut cfg = StudyConfig::read(&a.config)?;
    if let Some(n) = &a.name {
        cfg.name = n.clone();
    }
    if let Some(o) = &a.output {
        cfg.output = o.clone();
    }
    cfg.data = a.data.clone();
    cfg.validate()?;
    let cells = cfg.cells();
    if a.list {
        for cell in &cells {
            let state = match study::cell_state(&cfg, cell)? {
                CellState::Done(o) => o.status,
                CellState::Started => "started".into(),
                CellState::Pending => "pending".into(),
            };
            println!("{}\t{}\t{state}", cell.index, cfg.cell_dir(cell).display());
        }
        return Ok(());
    }
    let jobs = Jobs {
        config: a.config.clone(),
        jobs: a.jobs,
        devices: a.devices.clone(),
        threads: a.threads,
        workers: a.workers,
    };
    match a.cell {
        Some(i) => study_run::run_one(&cfg, &jobs, i),
        None => study_run::run_all(&cfg, &jobs),
    }
}
