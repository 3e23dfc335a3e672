//! `resnet-train study --config configs/studies/cpu.toml`: variants x seeds of full training runs
//! and the table of their differences (see `train::study`). Running the same command again
//! continues an interrupted study.

use crate::error::{Error, Result};
use crate::experiments::study::{self, CellRuntime, CellState, StudyConfig};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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
    study::claim_folder(&cfg)?;
    crate::ffi::process::install_termination_handlers()
        .map_err(|e| Error::Usage(format!("cannot install the signal handlers: {e}")))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = a.threads;
    let workers = a.workers.or(threads).unwrap_or((cores / a.jobs).max(1));
    let device_of = |slot: usize| a.devices.as_ref().map(|d| d[slot % d.len()].clone());
    let runtime = |slot: usize| CellRuntime { threads, workers, device: device_of(slot) };
    if let Some(i) = a.cell {
        let cell = cells.get(i).ok_or_else(|| {
            Error::Usage(format!("--cell {i}: the study has cells 0..{} (see --list)", cells.len()))
        })?;
        let rt = runtime(0);
        let outcome = study::run_cell(&cfg, cell, &rt)?;
        println!("study      cell {i} {}: {}", cell.name, outcome.status);
        study::write_tables(&cfg)?;
        return Ok(());
    }
    println!("study      {} runs in {}", cells.len(), cfg.dir().display());
    if a.jobs == 1 {
        for cell in &cells {
            let state = study::cell_state(&cfg, cell)?;
            if let CellState::Done(_) = state {
                println!("study      run {}/{} {}: done earlier", cell.index + 1, cells.len(), cell.name);
                continue;
            }
            let verb = if state == CellState::Started { "resuming" } else { "starting" };
            println!("study      run {}/{} {}: {verb}", cell.index + 1, cells.len(), cell.name);
            let outcome = study::run_cell(&cfg, cell, &runtime(0))?;
            println!("study      run {}: {} in {:.1} min", cell.name, outcome.status, outcome.seconds / 60.0);
            study::write_tables(&cfg)?;
        }
    } else {
        run_parallel(&a, &cfg, workers)?;
    }
    // After the runs, so that the measurements have the machine to themselves.
    study::measure_step_costs(&cfg, &crate::runtime::this_program()?)?;
    let results = study::write_tables(&cfg)?;
    let mut outputs = vec![cfg.dir().join("study.md"), cfg.dir().join("study.csv")];
    // The tables are written; a figure that cannot be drawn (no font) is a warning.
    let groups = study::curve_groups(&cfg.table()?, &results, |r| cfg.cell_dir(&r.cell))?;
    for ext in ["svg", "png"] {
        let figure = cfg.dir().join(format!("study.{ext}"));
        match crate::experiments::report::draw_groups(&groups, &figure) {
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

/// Runs the unfinished cells `--jobs` at a time, each as `resnet-train study --cell I` with its
/// output in `logs/<cell>.log`. A signal stops them all (each checkpoints; rerun to continue).
fn run_parallel(a: &StudyArgs, cfg: &StudyConfig, workers: usize) -> Result<()> {
    let exe = crate::runtime::this_program()?;
    let logs = cfg.dir().join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| Error::io(&logs, e))?;
    let mut pending: Vec<study::Cell> = Vec::new();
    for cell in cfg.cells() {
        if !matches!(study::cell_state(cfg, &cell)?, CellState::Done(_)) {
            pending.push(cell);
        }
    }
    pending.reverse(); // pop() takes them in grid order
    let mut running: Vec<(Child, study::Cell, usize)> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    let mut stopping = false;
    loop {
        if !stopping && crate::ffi::process::termination_requested().is_some() {
            stopping = true;
            for (child, _, _) in &running {
                crate::ffi::process::terminate(child.id());
            }
        }
        while !stopping && failed.is_empty() && running.len() < a.jobs {
            let Some(cell) = pending.pop() else { break };
            let slot = (0..a.jobs).find(|s| !running.iter().any(|r| r.2 == *s)).unwrap_or(0);
            let log_path = logs.join(format!("{}.log", cell.name));
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| Error::io(&log_path, e))?;
            let err = log.try_clone().map_err(|e| Error::io(&log_path, e))?;
            let mut cmd = Command::new(&exe);
            cmd.arg("study").arg("--config").arg(&a.config);
            cmd.arg("--name").arg(&cfg.name).arg("--output").arg(&cfg.output);
            cmd.arg("--cell").arg(cell.index.to_string()).arg("--workers").arg(workers.to_string());
            if let Some(d) = &cfg.data {
                cmd.arg("--data").arg(d);
            }
            if let Some(t) = a.threads {
                cmd.arg("--threads").arg(t.to_string());
            }
            if let Some(d) = a.devices.as_ref().map(|d| d[slot % d.len()].clone()) {
                cmd.arg("--devices").arg(d);
            }
            // A killed study takes its cells with it (SIGTERM: each checkpoints), so a rerun finds
            // no cell still running.
            crate::ffi::process::own_group_dies_with_parent(&mut cmd);
            let child = cmd.stdin(Stdio::null()).stdout(Stdio::from(log)).stderr(Stdio::from(err)).spawn();
            let child = match child {
                Ok(c) => c,
                Err(e) => {
                    // Not `?`: the jobs already running must still be waited for.
                    failed.push(format!("{} (cannot start: {e})", cell.name));
                    break;
                }
            };
            println!(
                "study      run {}/{} {}: started (log {})",
                cell.index + 1,
                cfg.cells().len(),
                cell.name,
                log_path.display()
            );
            running.push((child, cell, slot));
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut still = Vec::new();
        for (mut child, cell, slot) in running {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => println!("study      run {}: done", cell.name),
                Ok(Some(status)) => {
                    let log = logs.join(format!("{}.log", cell.name));
                    let why = last_error(&log).map_or(String::new(), |e| format!(": {e}"));
                    failed.push(format!("{} ({status}{why}; see {})", cell.name, log.display()));
                }
                Ok(None) => still.push((child, cell, slot)),
                Err(e) => failed.push(format!("{} ({e})", cell.name)),
            }
        }
        running = still;
    }
    if stopping {
        return Err(Error::Interrupted {
            signal: crate::ffi::process::termination_requested().unwrap_or(15),
            msg: format!("study stopped; rerun the same command to continue {}", cfg.dir().display()),
        });
    }
    if !failed.is_empty() {
        return Err(Error::Usage(format!("study runs failed: {}", failed.join(", "))));
    }
    Ok(())
}

/// The last `error:` line of a cell's log (e.g. another process holding its run folder).
fn last_error(log: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find_map(|l| l.strip_prefix("error: ")).map(str::to_owned)
}
