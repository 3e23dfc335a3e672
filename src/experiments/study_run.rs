//! Running a study: one cell (a cluster job array's index), or all of them, in this process one
//! after another or `jobs` at a time, each cell its own `resnet-train study --cell I` process
//! under one supervisor (logs in `logs/<cell>.log`); then the step costs, the tables and the
//! figure. A signal stops every cell (each checkpoints); the same command continues.

use super::study::{self, CellRuntime, CellState, StudyConfig};
use crate::error::{Error, Result};
use crate::supervise::Supervisor;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How a study's cells run.
#[derive(Clone, Debug)]
pub struct Jobs {
    /// The study config file (each cell's process reads it again).
    pub config: PathBuf,
    /// Cells at once.
    pub jobs: usize,
    /// Devices handed out to the jobs in turn.
    pub devices: Option<Vec<String>>,
    /// libtorch threads per cell (None: the config's).
    pub threads: Option<usize>,
    /// Decode threads per cell (None: the threads, else the cores / jobs).
    pub workers: Option<usize>,
}

impl Jobs {
    fn runtime(&self, slot: usize) -> CellRuntime {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        CellRuntime {
            threads: self.threads,
            workers: self.workers.or(self.threads).unwrap_or((cores / self.jobs).max(1)),
            device: self.devices.as_ref().map(|d| d[slot % d.len()].clone()),
        }
    }
}

/// Runs cell `index` only, then updates the tables.
pub fn run_one(cfg: &StudyConfig, jobs: &Jobs, index: usize) -> Result<()> {
    let cells = cfg.cells();
    let cell = cells.get(index).ok_or_else(|| {
        Error::Usage(format!("--cell {index}: the study has cells 0..{} (see --list)", cells.len()))
    })?;
    start(cfg)?;
    let outcome = study::run_cell(cfg, cell, &jobs.runtime(0))?;
    println!("study      cell {index} {}: {}", cell.name, outcome.status);
    study::write_tables(cfg)?;
    Ok(())
}

/// Runs every unfinished cell, then measures the step costs and writes the tables and figure.
pub fn run_all(cfg: &StudyConfig, jobs: &Jobs) -> Result<()> {
    start(cfg)?;
    let cells = cfg.cells();
    println!("study      {} runs in {}", cells.len(), cfg.dir().display());
    if jobs.jobs == 1 {
        for cell in &cells {
            let state = study::cell_state(cfg, cell)?;
            if let CellState::Done(_) = state {
                println!("study      run {}/{} {}: done earlier", cell.index + 1, cells.len(), cell.name);
                continue;
            }
            let verb = if state == CellState::Started { "resuming" } else { "starting" };
            println!("study      run {}/{} {}: {verb}", cell.index + 1, cells.len(), cell.name);
            let outcome = study::run_cell(cfg, cell, &jobs.runtime(0))?;
            println!("study      run {}: {} in {:.1} min", cell.name, outcome.status, outcome.seconds / 60.0);
            study::write_tables(cfg)?;
        }
    } else {
        run_parallel(cfg, jobs)?;
    }
    // After the runs, so that the measurements have the machine to themselves.
    study::measure_step_costs(cfg, &crate::runtime::this_program()?)?;
    let results = study::write_tables(cfg)?;
    let mut outputs = vec![cfg.dir().join("study.md"), cfg.dir().join("study.csv")];
    // The tables are written; a figure that cannot be drawn (no font) is a warning.
    let groups = study::curve_groups(&cfg.table()?, &results, |r| cfg.cell_dir(&r.cell))?;
    for ext in ["svg", "png"] {
        let figure = cfg.dir().join(format!("study.{ext}"));
        match super::report::draw_groups(&groups, &figure) {
            Ok(()) => outputs.push(figure),
            Err(e) => eprintln!("warning: {} not drawn: {e}", figure.display()),
        }
    }
    println!(
        "study      done: {} of {} runs; {}",
        results.len(),
        cells.len(),
        outputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

/// The folder claimed for this study's grid, and signals turned into a clean stop.
fn start(cfg: &StudyConfig) -> Result<()> {
    study::claim_folder(cfg)?;
    crate::ffi::process::install_termination_handlers()
        .map_err(|e| Error::Usage(format!("cannot install the signal handlers: {e}")))
}

/// The command that runs one cell in its own process, its output appended to `log`.
fn cell_command(
    cfg: &StudyConfig,
    jobs: &Jobs,
    cell: &study::Cell,
    slot: usize,
    log: &Path,
) -> Result<Command> {
    let out =
        std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(|e| Error::io(log, e))?;
    let err = out.try_clone().map_err(|e| Error::io(log, e))?;
    let rt = jobs.runtime(slot);
    let mut cmd = Command::new(crate::runtime::this_program()?);
    cmd.arg("study").arg("--config").arg(&jobs.config);
    cmd.arg("--name").arg(&cfg.name).arg("--output").arg(&cfg.output);
    cmd.arg("--cell").arg(cell.index.to_string()).arg("--workers").arg(rt.workers.to_string());
    if let Some(d) = &cfg.data {
        cmd.arg("--data").arg(d);
    }
    if let Some(t) = jobs.threads {
        cmd.arg("--threads").arg(t.to_string());
    }
    if let Some(d) = rt.device {
        cmd.arg("--devices").arg(d);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::from(out)).stderr(Stdio::from(err));
    Ok(cmd)
}

/// Runs the unfinished cells `jobs` at a time, each in its own process. A failed cell stops the
/// queue (the running ones finish); a signal stops them all.
fn run_parallel(cfg: &StudyConfig, jobs: &Jobs) -> Result<()> {
    let logs = cfg.dir().join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| Error::io(&logs, e))?;
    let log_of = |cell: &study::Cell| logs.join(format!("{}.log", cell.name));
    let mut pending: Vec<study::Cell> = Vec::new();
    for cell in cfg.cells() {
        if !matches!(study::cell_state(cfg, &cell)?, CellState::Done(_)) {
            pending.push(cell);
        }
    }
    pending.reverse(); // pop() takes them in grid order
    let total = cfg.cells().len();
    let mut running: Supervisor<(study::Cell, usize)> = Supervisor::default();
    let mut failed: Vec<String> = Vec::new();
    loop {
        while running.forwarded().is_none() && failed.is_empty() && running.len() < jobs.jobs {
            let Some(cell) = pending.pop() else { break };
            let slot = (0..jobs.jobs).find(|s| !running.running().any(|r| r.1 == *s)).unwrap_or(0);
            let cmd = cell_command(cfg, jobs, &cell, slot, &log_of(&cell))?;
            let (name, index) = (cell.name.clone(), cell.index);
            if let Err(e) = running.spawn((cell, slot), cmd) {
                // Not `?`: the cells already running must still be waited for.
                failed.push(format!("{name} (cannot start: {e})"));
                break;
            }
            println!(
                "study      run {}/{total} {name}: started (log {})",
                index + 1,
                logs.join(format!("{name}.log")).display()
            );
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        for ((cell, _), ended) in running.poll() {
            match ended {
                Ok(status) if status.success() => println!("study      run {}: done", cell.name),
                Ok(status) => {
                    let log = log_of(&cell);
                    let why = last_error(&log).map_or(String::new(), |e| format!(": {e}"));
                    failed.push(format!("{} ({status}{why}; see {})", cell.name, log.display()));
                }
                Err(e) => failed.push(format!("{} ({e})", cell.name)),
            }
        }
    }
    if let Some(signal) = running.forwarded() {
        return Err(Error::Interrupted {
            signal,
            msg: format!("study stopped; rerun the same command to continue {}", cfg.dir().display()),
        });
    }
    if !failed.is_empty() {
        return Err(Error::Usage(format!("study runs failed: {}", failed.join(", "))));
    }
    Ok(())
}

/// The last `error:` line of a cell's log (e.g. another process holding its run folder).
fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find_map(|l| l.strip_prefix("error: ")).map(str::to_owned)
}
