//! `resnet-train study`: full training runs over variants x seeds, and the table that says whether
//! a variant's difference to the baseline is real. Every cell is an ordinary run folder
//! (`output/name/<variant>-s<seed>`), so `report`, `eval` and `--resume` work on each; a finished
//! cell is marked by its `study-cell.toml`. Running the same study again skips finished cells and
//! resumes an interrupted one exactly (the trainer's resume); a changed grid is refused.

use super::grid;
use crate::error::{Error, Result};
use crate::experiments::stats::{paired, Better, Summary};
use crate::fsutil::write_atomic;
use crate::model::ActKind;
use crate::train::config::TrainConfig;
use crate::train::run::metrics::{EpochRecord, RunLog};
use crate::train::trainer;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The study's file format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyConfig {
    /// The study's folder is `output/name`.
    pub name: String,
    #[serde(default = "default_output")]
    pub output: PathBuf,
    /// Every variant runs once per seed (the `seed` key of its training config).
    pub seeds: Vec<u64>,
    /// The variant the others are compared with, paired by seed (default: the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// Also report the metrics after these many epochs (the paper's 50/100/150/200); the end of
    /// each run is always reported.
    #[serde(default)]
    pub at_epochs: Vec<usize>,
    /// With the wsd or rsqrt schedule: measure each of `at_epochs` on its own branch of the run,
    /// forked where a run of that many epochs starts its final decay and annealed to it (folder
    /// `<cell>-e<E>`), so the numbers at E epochs are an E-epoch run's (WSD's cooldown branching;
    /// the extra cost is the decays). Without it, `at_epochs` reads the run mid-schedule.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub branches: bool,
    /// The base training config of every cell (any training key).
    #[serde(default)]
    pub train: toml::Table,
    /// The variants: a `name` and any training keys, applied over `train`. `recipe = "FILE"`
    /// applies a training config file first (keys of the variant win).
    pub variants: Vec<Variant>,
    /// Also measure each variant's training step with `resnet-train bench` (this many timed
    /// steps on synthetic data, at its arch, activation, precision, batch size, train size and
    /// device) for the table's step-time and memory columns; 0: no measurement. Not part of the
    /// grid: it may be added to a running study.
    #[serde(default)]
    pub bench_steps: usize,
    /// The data of every run, over any config's (`study --data`; not in the file).
    #[serde(skip)]
    pub data: Option<PathBuf>,
}

fn default_output() -> PathBuf {
    PathBuf::from("runs")
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    pub name: String,
    #[serde(flatten)]
    pub keys: toml::Table,
}

/// One run of the grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    pub index: usize,
    pub variant: usize,
    pub seed: u64,
    pub name: String,
}

/// How a finished cell ended (its `study-cell.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellOutcome {
    /// "finished", or "diverged" (a stability guard stopped it: a result, not an error).
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Wall time of the invocation that finished it.
    pub seconds: f64,
}

const MARKER: &str = "study-cell.toml";

impl StudyConfig {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let c: Self =
            toml::from_str(&text).map_err(|e| Error::file(path, format!("bad study config: {e}")))?;
        c.validate().map_err(|e| Error::file(path, e.to_string()))?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        crate::fsutil::check_folder_name("the study's name", &self.name)?;
        if self.seeds.is_empty() || self.variants.is_empty() {
            return Err(Error::Usage("a study needs at least one seed and one variant".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.seeds {
            if !seen.insert(s) {
                return Err(Error::Usage(format!("seed {s} is listed twice")));
            }
        }
        let mut names = std::collections::HashSet::new();
        for v in &self.variants {
            let plain = v.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if v.name.is_empty() || !plain || v.name.chars().all(|c| c == '.') {
                return Err(Error::Usage(format!(
                    "variant name {:?}: use letters, digits, '-', '_' and '.' (it names run folders)",
                    v.name
                )));
            }
            if !names.insert(&v.name) {
                return Err(Error::Usage(format!("variant {:?} is listed twice", v.name)));
            }
        }
        if let Some(b) = &self.baseline {
            if !names.contains(b) {
                return Err(Error::Usage(format!("baseline {b:?} is not one of the variants")));
            }
        }
        if self.at_epochs.contains(&0) {
            return Err(Error::Usage("at_epochs counts epochs from 1".into()));
        }
        if self.branches && self.at_epochs.is_empty() {
            return Err(Error::Usage("branches = true needs at_epochs: the budgets to branch at".into()));
        }
        for cell in self.cells() {
            let c = self.cell_config(&cell)?;
            let variant = &self.variants[cell.variant].name;
            if c.max_steps > 0 {
                return Err(Error::Usage(format!(
                    "variant {variant:?}: max_steps would stop every run early; a study compares finished runs"
                )));
            }
            if !self.branches {
                continue;
            }
            if !c.schedule.is_wsd() {
                return Err(Error::Usage(format!(
                    "variant {variant:?}: branches = true needs the wsd or rsqrt schedule (a stable phase to branch \
                     from), not {:?}",
                    c.schedule
                )));
            }
            for &e in &self.at_epochs {
                let budget = TrainConfig { epochs: e, ..c.clone() };
                if e >= c.epochs || budget.validate().is_err() {
                    let why = budget
                        .validate()
                        .err()
                        .map_or(format!("not below epochs = {}", c.epochs), |e| e.to_string());
                    return Err(Error::Usage(format!(
                        "variant {variant:?}: at_epochs {e} cannot be a branch of an {}-epoch wsd run: {why}",
                        c.epochs
                    )));
                }
            }
        }
        Ok(())
    }

    /// A cell's branch annealed to `epochs` (`branches = true`).
    pub fn branch_dir(&self, cell: &Cell, epochs: usize) -> PathBuf {
        self.dir().join(format!("{}-e{epochs}", cell.name))
    }

    pub fn dir(&self) -> PathBuf {
        self.output.join(&self.name)
    }

    /// The grid in run order, seed by seed (a partly run study has complete pairs).
    pub fn cells(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        for &seed in &self.seeds {
            for (variant, v) in self.variants.iter().enumerate() {
                cells.push(Cell { index: cells.len(), variant, seed, name: format!("{}-s{seed}", v.name) });
            }
        }
        cells
    }

    pub fn baseline(&self) -> usize {
        self.baseline.as_ref().and_then(|b| self.variants.iter().position(|v| &v.name == b)).unwrap_or(0)
    }

    /// The cell's training config: `train` < the variant's recipe file < the variant's keys, then
    /// its seed, name and folder.
    pub fn cell_config(&self, cell: &Cell) -> Result<TrainConfig> {
        let variant = &self.variants[cell.variant];
        let mut table = self.train.clone();
        let mut keys = variant.keys.clone();
        if let Some(recipe) = keys.remove("recipe") {
            let path = PathBuf::from(recipe.as_str().ok_or_else(|| {
                Error::Usage(format!("variant {:?}: recipe must be a file name", variant.name))
            })?);
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let file: toml::Table =
                toml::from_str(&text).map_err(|e| Error::file(&path, format!("bad training config: {e}")))?;
            table.extend(file);
        }
        table.extend(keys);
        if let Some(d) = &self.data {
            table.insert("data".into(), toml::Value::String(d.display().to_string()));
        }
        table.insert("seed".into(), toml::Value::Integer(cell.seed as i64));
        table.insert("name".into(), toml::Value::String(cell.name.clone()));
        table.insert("output".into(), toml::Value::String(self.dir().display().to_string()));
        crate::train::config::migrate_lr_scaling(&mut table)
            .map_err(|e| Error::Usage(format!("variant {:?}: {e}", variant.name)))?;
        let c: TrainConfig = table
            .try_into()
            .map_err(|e| Error::Usage(format!("variant {:?}: bad training keys: {e}", variant.name)))?;
        c.validate().map_err(|e| Error::Usage(format!("variant {:?}: {e}", variant.name)))?;
        Ok(c)
    }

    pub fn cell_dir(&self, cell: &Cell) -> PathBuf {
        self.dir().join(&cell.name)
    }
}

/// What the tables are computed over: the variants (name and training config), the seeds, the
/// reported epochs and the baseline; from a study config, or from run folders (`report --table`).
pub struct Table {
    pub title: String,
    pub seeds: Vec<u64>,
    pub at_epochs: Vec<usize>,
    /// The `at_epochs` points are branches annealed to them (`branches = true`).
    pub branches: bool,
    pub baseline: usize,
    pub variants: Vec<(String, TrainConfig)>,
    /// Runs planned (variants x seeds for a study).
    pub planned: usize,
    /// Each variant's measured training step, where measured.
    pub step_costs: Vec<Option<StepCost>>,
}

/// A variant's training step as `resnet-train bench` measures it (a fresh process, synthetic
/// data on the device): time, and memory (CUDA: the allocator's peak; CPU: the rise of the
/// process's RSS over the step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepCost {
    pub ms_per_step: f64,
    pub memory_gib: f64,
}

impl StudyConfig {
    pub fn table(&self) -> Result<Table> {
        let cells = self.cells();
        let variants = self
            .variants
            .iter()
            .zip(&cells)
            .map(|(v, cell)| Ok((v.name.clone(), self.cell_config(cell)?)))
            .collect::<Result<Vec<_>>>()?;
        let measured = read_step_costs(&self.dir())?;
        let step_costs = self.variants.iter().map(|v| measured.get(&v.name).cloned()).collect();
        Ok(Table {
            title: format!("Study `{}`", self.name),
            seeds: self.seeds.clone(),
            at_epochs: self.at_epochs.clone(),
            branches: self.branches,
            baseline: self.baseline(),
            variants,
            planned: cells.len(),
            step_costs,
        })
    }
}

/// Where a cell stands.
#[derive(Clone, Debug, PartialEq)]
pub enum CellState {
    Done(CellOutcome),
    /// Started (a run folder exists) but not finished: the next run resumes it.
    Started,
    Pending,
}

pub fn cell_state(cfg: &StudyConfig, cell: &Cell) -> Result<CellState> {
    let dir = cfg.cell_dir(cell);
    if let Some(outcome) = grid::read_marker(&dir.join(MARKER))? {
        return Ok(CellState::Done(outcome));
    }
    Ok(if dir.join("config.toml").is_file() { CellState::Started } else { CellState::Pending })
}

/// Writes `study.toml` on first use; refuses a folder that holds a study with another grid.
pub fn claim_folder(cfg: &StudyConfig) -> Result<()> {
    grid::claim_folder(cfg)
}

impl grid::Grid for StudyConfig {
    const FILE: &'static str = "study.toml";
    const WHAT: &'static str = "study";

    fn dir(&self) -> PathBuf {
        StudyConfig::dir(self)
    }

    /// The saved file as it was written (already checked when the study started).
    fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::file(path, format!("bad study config: {e}")))
    }

    /// Everything but `bench_steps`, which changes no run.
    fn grid_text(&self) -> Result<String> {
        grid::to_toml(&StudyConfig { bench_steps: 0, ..self.clone() }, "study")
    }
}

/// Runtime settings of a cell.
#[derive(Clone, Debug, Default)]
pub struct CellRuntime {
    /// The cell's libtorch threads (`study --threads`; None: the config's `torch_threads`, else
    /// this machine's cores). The thread count changes libtorch's CPU reduction order, so it is
    /// fixed whatever `--jobs` is: a study's numbers do not depend on how many cells run at once.
    pub threads: Option<usize>,
    /// The cell's decode threads (0: the config's `workers`); the loader's batches are the same
    /// with any number.
    pub workers: usize,
    pub device: Option<String>,
}

impl CellRuntime {
    /// The libtorch threads a cell of config `c` runs with.
    pub fn torch_threads(&self, c: &TrainConfig) -> usize {
        match (self.threads, c.torch_threads) {
            (Some(t), _) if t > 0 => t,
            (_, t) if t > 0 => t,
            _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Runs (or resumes) one cell to its end and marks it done; a cell stopped by a stability guard
/// is done too (status "diverged"). An interruption (signal) or any other error is returned.
pub fn run_cell(cfg: &StudyConfig, cell: &Cell, rt: &CellRuntime) -> Result<CellOutcome> {
    if let CellState::Done(outcome) = cell_state(cfg, cell)? {
        return Ok(outcome);
    }
    let mut c = cfg.cell_config(cell)?;
    c.torch_threads = rt.torch_threads(&c);
    if rt.workers > 0 {
        c.workers = rt.workers;
    }
    if let Some(d) = &rt.device {
        c.device = d.clone();
    }
    let dir = cfg.cell_dir(cell);
    let start = Instant::now();
    // The branches' own training is theirs (their rows in the tables), not the cell's.
    let mut branch_seconds = 0.0;
    if cfg.branches {
        let (diverged, seconds) = run_branches(cfg, cell, &c)?;
        branch_seconds = seconds;
        if let Some(diverged) = diverged {
            let seconds = start.elapsed().as_secs_f64() - branch_seconds;
            return mark_done(&dir, CellOutcome { seconds, ..diverged });
        }
    }
    let resume = dir.join("config.toml").is_file().then_some(dir.as_path());
    let mut outcome = finished(trainer::train(c, resume), &cell.name, start)?;
    outcome.seconds -= branch_seconds;
    mark_done(&dir, outcome)
}

fn mark_done(dir: &Path, outcome: CellOutcome) -> Result<CellOutcome> {
    grid::write_marker(&dir.join(MARKER), &outcome)?;
    Ok(outcome)
}

/// The outcome of a training invocation that should finish its run.
fn finished(result: Result<trainer::RunSummary>, name: &str, start: Instant) -> Result<CellOutcome> {
    let seconds = start.elapsed().as_secs_f64();
    match grid::diverged_or(result)? {
        Ok(s) if s.stopped_early => Err(Error::Usage(format!("{name}: stopped before its last epoch"))),
        Ok(_) => Ok(CellOutcome { status: "finished".into(), reason: None, seconds }),
        Err(why) => Ok(CellOutcome { status: "diverged".into(), reason: Some(why), seconds }),
    }
}

/// `branches = true`: for each budget in increasing order, the cell's run is trained to where a
/// run of that budget starts its decay, forked there, and the fork trained to the budget (each
/// fork's folder is marked done as a cell is). Every stage is resumable: a killed study reruns
/// into the same state. Returns the outcome if the cell's own run diverged before a branch point,
/// and the seconds this invocation spent training branches.
fn run_branches(cfg: &StudyConfig, cell: &Cell, c: &TrainConfig) -> Result<(Option<CellOutcome>, f64)> {
    let dir = cfg.cell_dir(cell);
    let mut budgets = cfg.at_epochs.clone();
    budgets.sort_unstable();
    let mut branch_seconds = 0.0;
    for e in budgets {
        let branch = cfg.branch_dir(cell, e);
        if branch.join(MARKER).is_file() {
            continue;
        }
        if !branch.join("config.toml").is_file() {
            let resume = dir.join("config.toml").is_file().then_some(dir.as_path());
            let to_branch_point = TrainConfig { stop_before_decay_of: Some(e), ..c.clone() };
            match trainer::train(to_branch_point, resume) {
                Ok(s) if s.stopped_early => {}
                Ok(_) => {
                    return Err(Error::Usage(format!(
                        "{}: finished before its {e}-epoch branch point",
                        cell.name
                    )))
                }
                Err(Error::Diverged(why)) => {
                    let outcome = CellOutcome { status: "diverged".into(), reason: Some(why), seconds: 0.0 };
                    return Ok((Some(outcome), branch_seconds));
                }
                Err(e) => return Err(e),
            }
            super::fork::fork(&dir, &branch)?;
        }
        let start = Instant::now();
        let (saved, _) = crate::train::config::read_run(&branch)?;
        let own = TrainConfig {
            epochs: e,
            torch_threads: c.torch_threads,
            workers: c.workers,
            device: c.device.clone(),
            ..saved
        };
        let outcome = finished(trainer::train(own, Some(&branch)), &format!("{}-e{e}", cell.name), start)?;
        branch_seconds += start.elapsed().as_secs_f64();
        mark_done(&branch, outcome)?;
    }
    Ok((None, branch_seconds))
}

// ---- The tables ----

/// The three metrics of a point of a run: train loss, eval top-1, eval top-5 (NaN: missing).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub train_loss: f64,
    pub top1: f64,
    pub top5: f64,
}

impl Point {
    const MISSING: Point = Point { train_loss: f64::NAN, top1: f64::NAN, top5: f64::NAN };

    fn of(r: &EpochRecord) -> Self {
        Point {
            train_loss: r.train_loss,
            top1: r.eval_top1.unwrap_or(f64::NAN),
            top5: r.eval_top5.unwrap_or(f64::NAN),
        }
    }
}

/// One finished cell's numbers: at each of `at_epochs`, and at its end (NaN for a diverged run's
/// end, and where no evaluation ran).
#[derive(Clone, Debug)]
pub struct RunResult {
    pub cell: Cell,
    pub outcome: CellOutcome,
    pub epochs_done: usize,
    pub at: Vec<Point>,
    pub end: Point,
    /// `branches = true`: each finished branch's folder name, outcome, epochs and end.
    pub branches: Vec<(String, CellOutcome, usize, Point)>,
    /// What the stability guards did to the run.
    pub interventions: Interventions,
}

/// What the stability guards did to a run, from its `metrics.jsonl`: a comparison must treat
/// its variants alike, so the tables show these per run and mark a variant intervened on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Interventions {
    /// Steps skipped on a non-finite loss or gradient (no update).
    pub skipped: usize,
    /// Loss-spike rollbacks (each restored a snapshot and cut the learning rate).
    pub rollbacks: usize,
    /// The divergence guard's remedies, in the order they were applied.
    pub remedies: Vec<String>,
}

impl Interventions {
    pub fn read(dir: &Path) -> Self {
        let mut out = Self::default();
        for r in crate::train::run::metrics::read_steps(dir).unwrap_or_default() {
            let mut guarded = false;
            for e in r.event.as_deref().unwrap_or("").split("; ") {
                if e.starts_with("rollback ") {
                    out.rollbacks += 1;
                    guarded = true;
                } else if let Some(rest) = e.split("applied remedy ").nth(1) {
                    out.remedies.push(rest.split(' ').next().unwrap_or(rest).to_string());
                    guarded = true;
                }
            }
            // A rolled-back step is not also counted as skipped.
            out.skipped += (r.skipped && !guarded) as usize;
        }
        out
    }

    pub fn any(&self) -> bool {
        self.skipped > 0 || self.rollbacks > 0 || !self.remedies.is_empty()
    }
}

pub fn read_result(dir: &Path, at_epochs: &[usize], cell: &Cell, outcome: CellOutcome) -> RunResult {
    let epochs = RunLog::read_summary(&dir.join("summary.csv"));
    let at = at_epochs
        .iter()
        .map(|&e| epochs.iter().find(|r| r.epoch + 1 == e).map_or(Point::MISSING, Point::of))
        .collect();
    let end = match epochs.last() {
        Some(r) if outcome.status == "finished" => Point::of(r),
        _ => Point::MISSING,
    };
    let interventions = Interventions::read(dir);
    RunResult {
        cell: cell.clone(),
        outcome,
        epochs_done: epochs.len(),
        at,
        end,
        branches: Vec::new(),
        interventions,
    }
}

/// A study's branch as a row of the runs table (None: not done).
fn branch_result(dir: &Path) -> Option<(String, CellOutcome, usize, Point)> {
    Some(branch_row(dir, grid::read_marker(&dir.join(MARKER)).ok()??))
}

/// A branch's folder name, outcome, epochs and end (missing unless it finished).
fn branch_row(dir: &Path, outcome: CellOutcome) -> (String, CellOutcome, usize, Point) {
    let name = dir.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
    let epochs = RunLog::read_summary(&dir.join("summary.csv"));
    let end = epochs.last().filter(|_| outcome.status == "finished").map_or(Point::MISSING, Point::of);
    (name, outcome, epochs.len(), end)
}

/// The parameters each PolyReLU/PolyNorm variant adds: k + 1 scalars per activation site.
pub fn activation_params(c: &TrainConfig) -> usize {
    if c.act == ActKind::Relu {
        return 0;
    }
    c.model(1).activation_sites().len() * (c.order as usize + 1)
}

/// Forward MFLOPs per image of all activation sites at the training resolution (see
/// `ActKind::flops_per_element`), and the convolutions' GMACs for scale.
pub fn activation_cost(c: &TrainConfig) -> (f64, f64) {
    let cost = c.model(1000).forward_cost(c.train_size as i64);
    (cost.act_elements * c.act.flops_per_element(c.order) / 1e6, cost.macs / 1e9)
}

fn pm(s: &Summary, digits: usize) -> String {
    if s.n == 0 {
        return "-".into();
    }
    if s.sd.is_nan() {
        return format!("{:.digits$}", s.mean);
    }
    format!("{:.digits$} ± {:.digits$}", s.mean, s.sd)
}

fn interval(s: &Summary, digits: usize) -> String {
    if s.ci95.is_finite() {
        format!("[{:.digits$}, {:.digits$}]", s.low(), s.high())
    } else {
        "-".into()
    }
}

/// The labels and metrics of every reported point: `after E epochs`, then `end`.
fn points(cfg: &Table) -> Vec<String> {
    let label = |e: &usize| if cfg.branches { format!("{e}-epoch branch") } else { format!("epoch {e}") };
    cfg.at_epochs.iter().map(label).chain(std::iter::once("end".into())).collect()
}

fn point_of(r: &RunResult, i: usize) -> Point {
    r.at.get(i).copied().unwrap_or(r.end)
}

/// Per variant and point: the values over seeds, in seed order (NaN where a run is missing).
fn values(
    cfg: &Table,
    results: &[RunResult],
    variant: usize,
    point: usize,
    f: fn(&Point) -> f64,
) -> Vec<f64> {
    cfg.seeds
        .iter()
        .map(|&s| {
            results
                .iter()
                .find(|r| r.cell.variant == variant && r.cell.seed == s)
                .map_or(f64::NAN, |r| f(&point_of(r, point)))
        })
        .collect()
}

pub fn to_csv(cfg: &Table, results: &[RunResult]) -> String {
    let mut out = String::from(
        "variant,point,runs,top1_mean,top1_sd,top1_ci_low,top1_ci_high,top5_mean,top5_sd,train_loss_mean,\
         train_loss_sd,d_top1_mean,d_top1_ci_low,d_top1_ci_high,d_top1_pairs,verdict_top1,act_params,act_mflops,\
         ms_per_step,step_memory_gib,d_train_loss_mean,d_train_loss_ci_low,d_train_loss_ci_high,verdict_train_loss,\
         runs_intervened\n",
    );
    let base = cfg.baseline;
    for (v, (variant, cell_cfg)) in cfg.variants.iter().enumerate() {
        let (params, mflops) = (activation_params(cell_cfg), activation_cost(cell_cfg).0);
        let (ms, mem) = cfg.step_costs[v].as_ref().map_or((String::new(), String::new()), |c| {
            (format!("{:.2}", c.ms_per_step), format!("{:.3}", c.memory_gib))
        });
        let intervened = results.iter().filter(|r| r.cell.variant == v && r.interventions.any()).count();
        for (p, label) in points(cfg).iter().enumerate() {
            let top1 = values(cfg, results, v, p, |x| x.top1);
            let (s1, s5, sl) = (
                Summary::of(&top1),
                Summary::of(&values(cfg, results, v, p, |x| x.top5)),
                Summary::of(&values(cfg, results, v, p, |x| x.train_loss)),
            );
            let d = paired(&top1, &values(cfg, results, base, p, |x| x.top1), Better::Higher);
            let verdict = if v == base { "baseline".to_string() } else { d.verdict.words(d.diff.n) };
            let dl = paired(
                &values(cfg, results, v, p, |x| x.train_loss),
                &values(cfg, results, base, p, |x| x.train_loss),
                Better::Lower,
            );
            let loss_verdict = if v == base { "baseline".to_string() } else { dl.verdict.words(dl.diff.n) };
            let f = |x: f64| if x.is_finite() { format!("{x:.4}") } else { String::new() };
            writeln!(
                out,
                "{variant},{label},{},{},{},{},{},{},{},{},{},{},{},{},{},{verdict},{params},{mflops:.3},{ms},{mem},{},{},{},{loss_verdict},{intervened}",
                s1.n,
                f(s1.mean),
                f(s1.sd),
                f(s1.low()),
                f(s1.high()),
                f(s5.mean),
                f(s5.sd),
                f(sl.mean),
                f(sl.sd),
                f(d.diff.mean),
                f(d.diff.low()),
                f(d.diff.high()),
                d.diff.n,
                f(dl.diff.mean),
                f(dl.diff.low()),
                f(dl.diff.high()),
            )
            .ok();
        }
    }
    out
}

pub fn to_markdown(cfg: &Table, results: &[RunResult]) -> String {
    let base = cfg.baseline;
    let first = &cfg.variants[0].1;
    let mut md = format!("# {}\n\n", cfg.title);
    writeln!(
        md,
        "{} of {} runs done ({} variants x {} seeds: {:?}). Base: {} for {} epochs at {} px, global batch {}, on {}. \
         Baseline: `{}`. Values: mean ± sample sd over seeds; 95% CI: mean ± t(0.975, n-1)·sd/√n; Δ top-1 and Δ train \
         loss: the differences to the baseline paired by seed, each with its own 95% CI; verdict: better / worse when \
         that interval excludes 0, else not distinguishable at this n; not enough runs with fewer than two pairs or pairs that all differ alike (zero spread). Diverged runs (a stability guard \
         stopped them) count as runs but give no end values. Intervened: runs in which a stability guard \
         skipped a step (non-finite loss or gradients), rolled back a loss spike or applied a remedy (per run in \
         the runs table); † marks a variant with such runs, whose comparison is not like for like. Act params: the scalars the activations \
         add; act MFLOPs: their forward cost per image at {} px (ReLU 1, PolyReLU 2k+1, PolyNorm 5k-1 \
         per element), next to the convolutions' {:.3} GMACs. ms/step and step memory: `resnet-train bench` \
         of the variant's training step (with `bench_steps`; CUDA: the allocator's peak, CPU: the RSS rise).\n",
        results.len(),
        cfg.planned,
        cfg.variants.len(),
        cfg.seeds.len(),
        cfg.seeds,
        first.arch.name(),
        first.total_epochs(),
        first.train_size,
        first.global_batch.map_or(format!("{} per process", first.batch_size * first.accum_steps), |g| g.to_string()),
        first.data.as_ref().map_or("the embedded procedural dataset".into(), |d| format!("`{}`", d.display())),
        cfg.variants[base].0,
        first.train_size,
        activation_cost(first).1,
    )
    .ok();
    if cfg.branches {
        writeln!(
            md,
            "\nThe k-epoch branch points: each run forked where a k-epoch run starts its final wsd decay and \
             annealed to k epochs (folder `<run>-e<k>`), so they are k-epoch runs' numbers, not the run's midpoint \
             (the branch rows of the runs table: their own training; a run's minutes leave them out).\n"
        )
        .ok();
    }
    for (p, label) in points(cfg).iter().enumerate() {
        writeln!(md, "## Top-1 / top-5 / train loss at {label}\n").ok();
        md.push_str(
            "| variant | runs | diverged | intervened | top-1 (%) | 95% CI | top-5 (%) | train loss | Δ top-1 vs baseline | 95% CI | verdict | act params | act MFLOPs | ms/step | step memory (GiB) | Δ train loss vs baseline (95% CI) | verdict |\n\
             |---|---:|---:|---:|---:|---|---:|---:|---:|---|---|---:|---:|---:|---:|---|---|\n",
        );
        for (v, (variant, cell_cfg)) in cfg.variants.iter().enumerate() {
            let runs: Vec<&RunResult> = results.iter().filter(|r| r.cell.variant == v).collect();
            let diverged = runs.iter().filter(|r| r.outcome.status == "diverged").count();
            let intervened = runs.iter().filter(|r| r.interventions.any()).count();
            let mark = if intervened > 0 { " †" } else { "" };
            let top1 = values(cfg, results, v, p, |x| x.top1);
            let s1 = Summary::of(&top1);
            let s5 = Summary::of(&values(cfg, results, v, p, |x| x.top5));
            let sl = Summary::of(&values(cfg, results, v, p, |x| x.train_loss));
            let (delta, delta_ci, verdict) = if v == base {
                ("-".to_string(), "-".to_string(), "baseline".to_string())
            } else {
                let d = paired(&top1, &values(cfg, results, base, p, |x| x.top1), Better::Higher);
                let sign = if d.diff.mean >= 0.0 { "+" } else { "" };
                let delta = if d.diff.n == 0 {
                    "-".to_string()
                } else {
                    format!("{sign}{:.2} (n = {})", d.diff.mean, d.diff.n)
                };
                (delta, interval(&d.diff, 2), d.verdict.words(d.diff.n))
            };
            let (loss_delta, loss_verdict) = if v == base {
                ("-".to_string(), "baseline".to_string())
            } else {
                let loss = values(cfg, results, v, p, |x| x.train_loss);
                let d = paired(&loss, &values(cfg, results, base, p, |x| x.train_loss), Better::Lower);
                let ci = interval(&d.diff, 4);
                let delta = match d.diff.n {
                    0 => "-".to_string(),
                    // One pair has no interval: say so, as the top-1 column does.
                    n if ci == "-" => format!("{:+.4} (n = {n})", d.diff.mean),
                    _ => format!("{:+.4} {ci}", d.diff.mean),
                };
                (delta, d.verdict.words(d.diff.n))
            };
            let (params, mflops) = (activation_params(cell_cfg), activation_cost(cell_cfg).0);
            let (ms, mem) = cfg.step_costs[v].as_ref().map_or(("-".into(), "-".into()), |c| {
                (format!("{:.1}", c.ms_per_step), format!("{:.3}", c.memory_gib))
            });
            writeln!(
                md,
                "| {variant}{mark} | {} | {diverged} | {intervened} | {} | {} | {} | {} | {delta} | {delta_ci} | {verdict} | {params} | {mflops:.2} | {ms} | {mem} | {loss_delta} | {loss_verdict} |",
                runs.len(),
                pm(&s1, 2),
                interval(&s1, 2),
                pm(&s5, 2),
                pm(&sl, 4),
            )
            .ok();
        }
        md.push('\n');
    }
    md.push_str(&runs_table(results));
    md
}

/// The runs table: each run (and its branches) with its end, time and what the guards did.
fn runs_table(results: &[RunResult]) -> String {
    let mut md = String::new();
    md.push_str(
        "## Runs\n\n| run | status | epochs | top-1 | top-5 | train loss | minutes | skipped steps | rollbacks | remedies | note |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---|---|\n",
    );
    for r in results {
        let f = |x: f64, d: usize| if x.is_finite() { format!("{x:.d$}") } else { "-".into() };
        let own = (r.cell.name.clone(), r.outcome.clone(), r.epochs_done, r.end);
        for (i, (name, outcome, epochs, end)) in std::iter::once(&own).chain(&r.branches).enumerate() {
            // A branch's guards are its parent run's up to the fork: counted on the run's row.
            let g = &r.interventions;
            let (skipped, rollbacks, remedies) = if i == 0 {
                (g.skipped.to_string(), g.rollbacks.to_string(), g.remedies.join(", "))
            } else {
                ("-".into(), "-".into(), String::new())
            };
            writeln!(
                md,
                "| {name} | {} | {epochs} | {} | {} | {} | {} | {skipped} | {rollbacks} | {remedies} | {} |",
                outcome.status,
                f(end.top1, 2),
                f(end.top5, 2),
                f(end.train_loss, 4),
                f(outcome.seconds / 60.0, 1),
                outcome.reason.as_deref().unwrap_or("").replace('|', "/"),
            )
            .ok();
        }
    }
    md
}

/// The finished cells' results, in grid order.
pub fn results(cfg: &StudyConfig) -> Result<Vec<RunResult>> {
    let mut out = Vec::new();
    for cell in cfg.cells() {
        if let CellState::Done(outcome) = cell_state(cfg, &cell)? {
            let mut result = read_result(&cfg.cell_dir(&cell), &cfg.at_epochs, &cell, outcome);
            if cfg.branches {
                // Each budget's numbers are its branch's end.
                result.at = Vec::new();
                for &e in &cfg.at_epochs {
                    let dir = cfg.branch_dir(&cell, e);
                    let branch = branch_result(&dir);
                    result.at.push(branch.as_ref().map_or(Point::MISSING, |b| b.3));
                    result.branches.extend(branch);
                }
            }
            out.push(result);
        }
    }
    Ok(out)
}

/// Rewrites study.csv and study.md from every finished cell.
pub fn write_tables(cfg: &StudyConfig) -> Result<Vec<RunResult>> {
    let results = results(cfg)?;
    let dir = cfg.dir();
    let table = cfg.table()?;
    grid::write_tables(&dir, "study", &to_csv(&table, &results), &to_markdown(&table, &results))?;
    Ok(results)
}

/// A table over finished run folders (`report --table`): runs named `<variant>-s<seed>` (a study's
/// cells) are grouped by variant, anything else is a variant of its own; the seed is the run's
/// own `seed`. A run counts as finished when its `study-cell.toml` says so or all its epochs are
/// in summary.csv; others ("partial") give values at the epochs they reached and no end values.
/// A folder `<run>-e<E>` next to a listed `<run>` is that run's E-epoch branch (a study's
/// `branches = true`, or `fork`): the table's points are then the branches' ends, as in the
/// study's own table, and `at_epochs` may only name budgets that have branches.
pub fn table_of_runs(
    runs: &[PathBuf],
    at_epochs: &[usize],
    baseline: Option<&str>,
) -> Result<(Table, Vec<RunResult>)> {
    let folder_of =
        |dir: &PathBuf| dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let folders: Vec<String> = runs.iter().map(folder_of).collect();
    // The (index of the branched run, budget) of a branch's folder name.
    let branch_of = |folder: &str| -> Option<(usize, usize)> {
        let (base, e) = folder.rsplit_once("-e")?;
        let epochs = e.parse::<usize>().ok().filter(|&e| e > 0)?;
        Some((folders.iter().position(|f| f == base)?, epochs))
    };
    // (index of the branched run, budget, branch folder) for each branch among the runs.
    let mut branches: Vec<(usize, usize, &PathBuf)> = Vec::new();
    let mut own_runs: Vec<(usize, &PathBuf)> = Vec::new();
    for (i, dir) in runs.iter().enumerate() {
        match branch_of(&folders[i]) {
            Some((of, e)) => branches.push((of, e, dir)),
            None => own_runs.push((i, dir)),
        }
    }
    let mut budgets: Vec<usize> = branches.iter().map(|b| b.1).collect();
    budgets.sort_unstable();
    budgets.dedup();
    let at_epochs = if budgets.is_empty() {
        at_epochs.to_vec()
    } else if at_epochs.is_empty() {
        budgets.clone()
    } else {
        if let Some(e) = at_epochs.iter().find(|e| !budgets.contains(e)) {
            return Err(Error::Usage(format!(
                "--at {e}: the runs have branches at {} epochs, and a point of a longer run is not the \
                 result of an {e}-epoch run; name only branch budgets (or leave --at out)",
                budgets.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", ")
            )));
        }
        at_epochs.to_vec()
    };

    let mut variants: Vec<(String, TrainConfig)> = Vec::new();
    let mut seeds: Vec<u64> = Vec::new();
    let mut results = Vec::new();
    for (index, dir) in own_runs {
        let (c, _) = crate::train::config::read_run(dir)?;
        let folder = folders[index].clone();
        let name = match folder.rsplit_once("-s") {
            Some((v, seed)) if !v.is_empty() && seed.parse::<u64>().is_ok() => v.to_string(),
            _ => folder.clone(),
        };
        let variant = match variants.iter().position(|v| v.0 == name) {
            Some(i) => i,
            None => {
                variants.push((name.clone(), c.clone()));
                variants.len() - 1
            }
        };
        if results.iter().any(|r: &RunResult| r.cell.variant == variant && r.cell.seed == c.seed) {
            return Err(Error::Usage(format!(
                "{}: a second run of {name} with seed {}",
                dir.display(),
                c.seed
            )));
        }
        if !seeds.contains(&c.seed) {
            seeds.push(c.seed);
        }
        let outcome = run_outcome(dir, &c)?;
        let cell = Cell { index, variant, seed: c.seed, name: folder };
        let mut result = read_result(dir, &at_epochs, &cell, outcome);
        if !budgets.is_empty() {
            // Each budget's numbers are its branch's end (none: no branch of this run at it).
            result.at = Vec::new();
            for &e in &at_epochs {
                let branch = branches.iter().find(|b| b.0 == index && b.1 == e);
                let end = match branch {
                    Some(&(_, _, branch_dir)) => {
                        let (bc, _) = crate::train::config::read_run(branch_dir)?;
                        let row = branch_row(branch_dir, run_outcome(branch_dir, &bc)?);
                        let end = row.3;
                        result.branches.push(row);
                        end
                    }
                    None => Point::MISSING,
                };
                result.at.push(end);
            }
        }
        results.push(result);
    }
    if variants.is_empty() {
        return Err(Error::Usage("report --table needs at least one run folder (not only branches)".into()));
    }
    let baseline = match baseline {
        Some(b) => variants.iter().position(|v| v.0 == b).ok_or_else(|| {
            Error::Usage(format!(
                "--baseline {b}: not one of the runs' variants ({})",
                variants.iter().map(|v| v.0.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })?,
        None => 0,
    };
    let table = Table {
        title: format!("{} runs", results.len()),
        seeds,
        at_epochs,
        branches: !budgets.is_empty(),
        baseline,
        step_costs: vec![None; variants.len()],
        variants,
        planned: results.len(),
    };
    Ok((table, results))
}

/// How a run folder ended: its `study-cell.toml`, else "finished" when summary.csv holds all its
/// epochs, else "partial".
fn run_outcome(dir: &Path, c: &TrainConfig) -> Result<CellOutcome> {
    if let Some(outcome) = grid::read_marker(&dir.join(MARKER))? {
        return Ok(outcome);
    }
    let done = RunLog::read_summary(&dir.join("summary.csv")).len() >= c.total_epochs();
    Ok(CellOutcome {
        status: if done { "finished" } else { "partial" }.into(),
        reason: None,
        seconds: f64::NAN,
    })
}

/// The runs of each variant, for `report::draw_groups`; `dir_of` gives a result's run folder.
pub fn curve_groups(
    table: &Table,
    results: &[RunResult],
    dir_of: impl Fn(&RunResult) -> PathBuf,
) -> Result<Vec<crate::experiments::report::Group>> {
    table
        .variants
        .iter()
        .enumerate()
        .map(|(v, (name, _))| {
            let runs = results
                .iter()
                .filter(|r| r.cell.variant == v)
                .map(|r| crate::experiments::report::load(&dir_of(r)))
                .collect::<Result<Vec<_>>>()?;
            Ok(crate::experiments::report::Group { label: name.clone(), runs })
        })
        .collect()
}

const STEP_COSTS: &str = "bench.toml";

fn read_step_costs(dir: &Path) -> Result<std::collections::BTreeMap<String, StepCost>> {
    let path = dir.join(STEP_COSTS);
    if !path.is_file() {
        return Ok(Default::default());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    toml::from_str(&text).map_err(|e| Error::file(&path, format!("unreadable: {e}")))
}

/// `resnet-train bench` flags for a cell config's training step.
/// `resnet-train bench`'s arguments for a cell's step: its whole training config, as a file in
/// the study's `bench/` folder, so the step timed is the step trained.
pub fn bench_args(cfg: &StudyConfig, variant: &str, c: &TrainConfig, steps: usize) -> Result<Vec<String>> {
    let dir = cfg.dir().join("bench");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let file = dir.join(format!("{variant}.toml"));
    write_atomic(&file, c.to_toml().as_bytes())?;
    let warmup = steps.div_ceil(3).max(1);
    Ok([
        "--config",
        &file.display().to_string(),
        "--steps",
        &steps.to_string(),
        "--warmup",
        &warmup.to_string(),
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect())
}

pub fn measure_step_costs(cfg: &StudyConfig, exe: &Path) -> Result<()> {
    if cfg.bench_steps == 0 {
        return Ok(());
    }
    let dir = cfg.dir();
    let mut costs = read_step_costs(&dir)?;
    for (v, cell) in cfg.variants.iter().zip(cfg.cells()) {
        if costs.contains_key(&v.name) {
            continue;
        }
        let flags = bench_args(cfg, &v.name, &cfg.cell_config(&cell)?, cfg.bench_steps)?;
        println!("study      bench {}: resnet-train bench {}", v.name, flags.join(" "));
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("bench").args(&flags);
        crate::ffi::process::own_group_dies_with_parent(&mut cmd);
        let out = cmd.output().map_err(|e| Error::Usage(format!("cannot run bench: {e}")))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let row: Option<serde_json::Value> = stdout.lines().last().and_then(|l| serde_json::from_str(l).ok());
        let Some(row) = row.filter(|_| out.status.success()) else {
            return Err(Error::Usage(format!(
                "bench of variant {} failed: {}",
                v.name,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        };
        let memory =
            row.get("max_mem_gib").or(row.get("step_rss_gib")).and_then(|m| m.as_f64()).unwrap_or(f64::NAN);
        let ms = row.get("ms_per_step").and_then(|m| m.as_f64()).unwrap_or(f64::NAN);
        costs.insert(v.name.clone(), StepCost { ms_per_step: ms, memory_gib: memory });
        let text = toml::to_string(&costs).map_err(|e| Error::Usage(format!("cannot serialise: {e}")))?;
        write_atomic(&dir.join(STEP_COSTS), text.as_bytes())?;
    }
    Ok(())
}
