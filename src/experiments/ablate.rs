//! `resnet-train ablate`: the stability grid. Every cell (activation x order x precision, optionally
//! x init x remedy) trains the same base config for the same number of steps from the same seed in
//! its own run folder; one row per cell summarises what happened (from the cell's metrics.jsonl
//! and, when a guard stopped it, the diagnosis). Finished cells are marked by `cell.toml`, so an
//! interrupted ablation, run again, continues with the first unfinished cell.

use super::grid;
use crate::error::{Error, Result};
use crate::model::{ActInit, ActKind};
use crate::train::config::TrainConfig;
use crate::train::run::metrics::{read_steps, StepRecord};
use crate::train::step::amp::Precision;
pub use crate::train::step::stability::Remedy;
use crate::train::step::stability::FP16_MAX;
use crate::train::trainer;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The ablation's file format: the grid, and under `[train]` the base training config of every
/// cell (any key of a training config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AblationConfig {
    /// Optimizer steps per cell.
    pub steps: usize,
    pub acts: Vec<ActKind>,
    /// Polynomial orders (ReLU has none: it runs once per precision and remedy).
    pub orders: Vec<i64>,
    pub precisions: Vec<Precision>,
    pub inits: Vec<ActInit>,
    pub remedies: Vec<Remedy>,
    /// The ablation's folder is `output/name`.
    pub name: String,
    pub output: PathBuf,
    pub train: TrainConfig,
}

impl Default for AblationConfig {
    fn default() -> Self {
        Self {
            steps: 50,
            acts: vec![ActKind::Relu, ActKind::Polyrelu, ActKind::Polynorm],
            orders: (1..=6).collect(),
            precisions: vec![Precision::Fp32, Precision::Bf16, Precision::Fp16],
            inits: vec![ActInit::Paper],
            remedies: vec![Remedy::None],
            name: "ablation".into(),
            output: PathBuf::from("runs"),
            train: TrainConfig::default(),
        }
    }
}

impl AblationConfig {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let c: Self =
            toml::from_str(&text).map_err(|e| Error::file(path, format!("bad ablation config: {e}")))?;
        c.validate().map_err(|e| Error::file(path, e.to_string()))?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::Usage("steps must be at least 1".into()));
        }
        if self.acts.is_empty()
            || self.precisions.is_empty()
            || self.inits.is_empty()
            || self.remedies.is_empty()
        {
            return Err(Error::Usage(
                "acts, precisions, inits and remedies must each list at least one value".into(),
            ));
        }
        if self.orders.is_empty() && self.acts.iter().any(|&a| a != ActKind::Relu) {
            return Err(Error::Usage("orders must list at least one order for PolyReLU/PolyNorm".into()));
        }
        if self.name.is_empty() || self.name.contains(['/', '\\']) {
            return Err(Error::Usage(format!("ablation name {:?} must be a plain folder name", self.name)));
        }
        for c in self.cells() {
            c.config(&self.train, self.steps, Path::new(".")).validate()?;
        }
        Ok(())
    }

    pub fn dir(&self) -> PathBuf {
        self.output.join(&self.name)
    }

    /// The grid in run order: precision, then activation, order, init, remedy. ReLU has no order
    /// or init, and the activation-only remedies (clamp, act-fp32, act-lowp) do not apply to it.
    pub fn cells(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        for &precision in &self.precisions {
            for &act in &self.acts {
                if act == ActKind::Relu {
                    for &remedy in &self.remedies {
                        if matches!(remedy, Remedy::None | Remedy::Clip(_)) {
                            cells.push(Cell { act, order: None, precision, init: None, remedy });
                        }
                    }
                    continue;
                }
                for &order in &self.orders {
                    for &init in &self.inits {
                        for &remedy in &self.remedies {
                            cells.push(Cell { act, order: Some(order), precision, init: Some(init), remedy });
                        }
                    }
                }
            }
        }
        cells
    }
}

/// One cell of the grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cell {
    pub act: ActKind,
    pub order: Option<i64>,
    pub precision: Precision,
    pub init: Option<ActInit>,
    pub remedy: Remedy,
}

fn lower<T: fmt::Debug>(v: T) -> String {
    format!("{v:?}").to_lowercase()
}

fn init_name(init: Option<ActInit>) -> &'static str {
    match init {
        None => "-",
        Some(ActInit::Paper) => "paper",
        Some(ActInit::ReluLike) => "relu-like",
    }
}

impl Cell {
    /// The cell's run folder name, e.g. `polyrelu-k3-fp16-paper-none`.
    pub fn name(&self) -> String {
        let remedy = self.remedy.to_string().replace(':', "");
        match self.order {
            None => format!("{}-{}-{remedy}", lower(self.act), lower(self.precision)),
            Some(k) => {
                format!(
                    "{}-k{k}-{}-{}-{remedy}",
                    lower(self.act),
                    lower(self.precision),
                    init_name(self.init)
                )
            }
        }
    }

    /// The base config with this cell's activation, precision, init and remedy, stopping after
    /// `steps` and monitoring every step (the per-site columns need it).
    pub fn config(&self, base: &TrainConfig, steps: usize, cells_dir: &Path) -> TrainConfig {
        let mut c = base.clone();
        c.act = self.act;
        c.order = self.order.unwrap_or(1);
        c.precision = self.precision;
        c.act_init = self.init.unwrap_or_default();
        c.apply_remedy(self.remedy);
        c.max_steps = steps;
        c.monitor_every = 1;
        c.keep_last = 0;
        c.name = Some(self.name());
        c.output = cells_dir.to_path_buf();
        c
    }
}

/// The stages whose largest activation gets a column: the stem's site (`act1`) and layer1-4.
pub const STAGES: [&str; 5] = ["stem", "layer1", "layer2", "layer3", "layer4"];

fn stage_of(site: &str) -> usize {
    match site.split('.').next() {
        Some(s) if s.starts_with("layer") => s[5..].parse::<usize>().map_or(0, |i| i.min(4)),
        _ => 0,
    }
}

/// Steps averaged for `first_loss` and `final_loss`.
pub const LOSS_WINDOW: usize = 10;

/// One cell's outcome: a row of ablation.csv / ablation.md.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub act: ActKind,
    pub order: Option<i64>,
    pub precision: Precision,
    pub init: Option<ActInit>,
    pub remedy: Remedy,
    pub steps_run: usize,
    /// Steps before the first one whose forward pass produced a non-finite value (all of them if none did).
    pub steps_survived: usize,
    pub first_nonfinite_step: Option<usize>,
    /// The first activation site, in forward order, with a non-finite value at that step
    /// (`loss` when only the loss was).
    pub first_nonfinite_site: Option<String>,
    pub skipped_steps: usize,
    /// Mean train loss of the first `LOSS_WINDOW` steps (NaN if any was non-finite).
    pub first_loss: f64,
    /// Mean train loss of the last `LOSS_WINDOW` steps (NaN if any was non-finite).
    pub final_loss: f64,
    pub min_loss: f64,
    /// Largest |activation| over all sites and steps; inf when some site produced inf/NaN.
    pub max_abs_act: f64,
    /// The same per stage (`STAGES`).
    pub stage_max_abs: Vec<f64>,
    pub final_loss_scale: f64,
    /// Stopped by a guard, or some forward pass produced inf/NaN, or the last loss is not finite.
    /// (A network whose stream overflowed can go on with a finite loss at chance level, e.g.
    /// when batch norm maps inf to 0: it is counted as diverged.)
    pub diverged: bool,
    /// The guard's diagnosis when it stopped the cell.
    pub diagnosis: Option<String>,
    pub seconds: f64,
}

impl Row {
    /// Summarises a cell's step records; `stopped` is the guard's diagnosis if one stopped it.
    pub fn from_records(cell: &Cell, records: &[StepRecord], stopped: Option<String>, seconds: f64) -> Self {
        let mut stage_max = vec![0.0f64; STAGES.len()];
        let mut first_bad: Option<(usize, String)> = None;
        for r in records {
            for a in &r.activations {
                let s = &mut stage_max[stage_of(&a.site)];
                *s = if a.nonfinite > 0 { f64::INFINITY } else { s.max(a.max_abs) };
            }
            if first_bad.is_none() {
                if let Some(a) = r.activations.iter().find(|a| a.nonfinite > 0) {
                    first_bad = Some((r.step, a.site.clone()));
                } else if !r.loss.is_finite() {
                    first_bad = Some((r.step, "loss".into()));
                }
            }
        }
        let finite_losses = records.iter().map(|r| r.loss).filter(|l| l.is_finite());
        let last = records.last();
        // Single-batch losses are noisy: first and final losses are means over LOSS_WINDOW steps.
        let window = LOSS_WINDOW.min(records.len());
        let mean = |rs: &[StepRecord]| rs.iter().map(|r| r.loss).sum::<f64>() / rs.len().max(1) as f64;
        let first_loss = if window == 0 { f64::NAN } else { mean(&records[..window]) };
        let final_loss = if window == 0 { f64::NAN } else { mean(&records[records.len() - window..]) };
        let first_bad_step = first_bad.as_ref().map(|(s, _)| *s);
        Row {
            act: cell.act,
            order: cell.order,
            precision: cell.precision,
            init: cell.init,
            remedy: cell.remedy,
            steps_run: records.len(),
            steps_survived: first_bad.as_ref().map_or(records.len(), |(s, _)| *s),
            first_nonfinite_step: first_bad.as_ref().map(|(s, _)| *s),
            first_nonfinite_site: first_bad.map(|(_, site)| site),
            skipped_steps: records.iter().filter(|r| r.skipped).count(),
            first_loss,
            final_loss,
            min_loss: finite_losses.fold(f64::NAN, f64::min),
            max_abs_act: stage_max.iter().copied().fold(0.0, f64::max),
            stage_max_abs: stage_max,
            final_loss_scale: last.map_or(f64::NAN, |r| r.loss_scale),
            diverged: stopped.is_some()
                || first_bad_step.is_some()
                || !last.is_some_and(|r| r.loss.is_finite()),
            diagnosis: stopped,
            seconds,
        }
    }

    /// The cell's coordinates as table text: act, order, precision, init, remedy.
    fn cell_columns(&self) -> [String; 5] {
        [
            lower(self.act),
            self.order.map_or("-".into(), |k| k.to_string()),
            lower(self.precision),
            init_name(self.init).into(),
            self.remedy.to_string(),
        ]
    }
}

fn num(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        "inf".into()
    } else {
        format!("{v:.4}")
    }
}

fn sci(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3e}")
    } else {
        num(v)
    }
}

pub const CSV_HEADER: &str = "act,order,precision,init,remedy,steps_run,steps_survived,first_nonfinite_step,\
first_nonfinite_site,skipped_steps,final_loss,min_loss,max_abs_act,final_loss_scale,diverged,\
max_abs_stem,max_abs_layer1,max_abs_layer2,max_abs_layer3,max_abs_layer4,first_loss,seconds";

pub fn to_csv(rows: &[Row]) -> String {
    let mut out = format!("{CSV_HEADER}\n");
    for r in rows {
        let stages: Vec<String> = r.stage_max_abs.iter().map(|&v| sci(v)).collect();
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{:.1}\n",
            r.cell_columns().join(","),
            r.steps_run,
            r.steps_survived,
            r.first_nonfinite_step.map_or(String::new(), |s| s.to_string()),
            r.first_nonfinite_site.clone().unwrap_or_default(),
            r.skipped_steps,
            num(r.final_loss),
            num(r.min_loss),
            sci(r.max_abs_act),
            sci(r.final_loss_scale),
            r.diverged,
            stages.join(","),
            num(r.first_loss),
            r.seconds
        ));
    }
    out
}

pub fn to_markdown(cfg: &AblationConfig, rows: &[Row], total: usize) -> String {
    let t = &cfg.train;
    let mut out = format!(
        "# Ablation `{}`\n\n{} of {} cells done. Each cell: {} steps of {} at {} px, batch {}, peak lr {}, \
         seed {}, on {}. Monitors every step; guards: stop after {} consecutive skipped steps \
         or an fp16 loss scale under {:e}. First and final loss: means over the first and last {LOSS_WINDOW} \
         steps. Survived: steps before the first forward pass with inf/NaN. max|act|: the largest \
         |activation| over all steps and sites, per stage to the right (inf: some site produced inf/NaN; \
         fp16's largest value is {FP16_MAX}).\n\n",
        cfg.name,
        rows.len(),
        total,
        cfg.steps,
        t.arch.name(),
        t.train_size,
        t.batch_size,
        t.peak_lr(t.batch_size * t.accum_steps.max(1)),
        t.seed,
        t.data.as_ref().map_or("the embedded procedural dataset".into(), |p| format!("`{}`", p.display())),
        t.max_consecutive_skips,
        t.min_loss_scale,
    );
    out.push_str(
        "| act | order | precision | init | remedy | steps run | survived | first non-finite | skipped \
         | first loss | final loss | min loss | max\\|act\\| | stem | layer1 | layer2 | layer3 | layer4 \
         | loss scale | diverged |\n",
    );
    out.push_str(&format!("|{}\n", "---|".repeat(20)));
    for r in rows {
        let first = match (&r.first_nonfinite_step, &r.first_nonfinite_site) {
            (Some(s), Some(site)) => format!("step {s} at {site}"),
            _ => "-".into(),
        };
        let stages: Vec<String> = r.stage_max_abs.iter().map(|&v| short(v)).collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.cell_columns().join(" | "),
            r.steps_run,
            r.steps_survived,
            first,
            r.skipped_steps,
            num(r.first_loss),
            num(r.final_loss),
            num(r.min_loss),
            short(r.max_abs_act),
            stages.join(" | "),
            if r.precision == Precision::Fp16 { short(r.final_loss_scale) } else { "-".into() },
            if r.diverged { "**yes**" } else { "no" }
        ));
    }
    let stopped: Vec<&Row> = rows.iter().filter(|r| r.diagnosis.is_some()).collect();
    if !stopped.is_empty() {
        out.push_str("\n## Cells stopped by a guard\n\n");
        for r in stopped {
            let [act, order, precision, init, remedy] = r.cell_columns();
            let why = r.diagnosis.as_deref().unwrap_or_default();
            out.push_str(&format!("- {act} k={order} {precision} {init} {remedy}: {why}\n"));
        }
    }
    out
}

/// Compact magnitudes for tables: 3.2e1, inf.
pub fn short(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1e}")
    } else {
        num(v)
    }
}

/// What `run` reports.
#[derive(Debug)]
pub struct AblationSummary {
    pub dir: PathBuf,
    pub rows: Vec<Row>,
    pub ran: usize,
}

/// Runs (or continues) the ablation in `cfg.dir()`; writes ablation.csv / .md after every cell
/// (the heatmap figure is `report::draw_ablation` of the rows: drawing sits above this module).
pub fn run(cfg: &AblationConfig) -> Result<AblationSummary> {
    cfg.validate()?;
    let dir = cfg.dir();
    grid::claim_folder(cfg)?;
    let cells = cfg.cells();
    let cells_dir = dir.join("cells");
    let mut rows = Vec::new();
    let mut ran = 0;
    for (i, cell) in cells.iter().enumerate() {
        let name = cell.name();
        let cell_dir = cells_dir.join(&name);
        let done = cell_dir.join(MARKER);
        if let Some(row) = grid::read_marker::<Row>(&done)? {
            // Recomputed from the cell's records, so the tables follow this version's definitions.
            rows.push(Row::from_records(cell, &read_steps(&cell_dir)?, row.diagnosis, row.seconds));
            println!("ablation   cell {}/{} {name}: done earlier", i + 1, cells.len());
            continue;
        }
        if cell_dir.exists() {
            // Interrupted mid-cell: cells are short and deterministic, so it starts over.
            println!("ablation   cell {}/{} {name}: unfinished, starting it again", i + 1, cells.len());
            std::fs::remove_dir_all(&cell_dir).map_err(|e| Error::io(&cell_dir, e))?;
        }
        println!("ablation   cell {}/{} {name}", i + 1, cells.len());
        let start = Instant::now();
        let stopped =
            grid::diverged_or(trainer::train(cell.config(&cfg.train, cfg.steps, &cells_dir), None))?.err();
        let row = Row::from_records(cell, &read_steps(&cell_dir)?, stopped, start.elapsed().as_secs_f64());
        // The cell's weights are not needed for the table; the metrics and config stay.
        let last = cell_dir.join("last.safetensors");
        if last.exists() {
            std::fs::remove_file(&last).map_err(|e| Error::io(&last, e))?;
        }
        grid::write_marker(&done, &row)?;
        println!(
            "ablation   cell {name}: {} of {} steps survived, {} skipped, final loss {}, max|act| {}{}",
            row.steps_survived,
            row.steps_run,
            row.skipped_steps,
            num(row.final_loss),
            short(row.max_abs_act),
            if row.diverged { ", diverged" } else { "" }
        );
        rows.push(row);
        ran += 1;
        write_tables(cfg, &dir, &rows, cells.len())?;
    }
    write_tables(cfg, &dir, &rows, cells.len())?;
    Ok(AblationSummary { dir, rows, ran })
}

fn write_tables(cfg: &AblationConfig, dir: &Path, rows: &[Row], total: usize) -> Result<()> {
    grid::write_tables(dir, "ablation", &to_csv(rows), &to_markdown(cfg, rows, total))
}

/// A finished cell's marker (its table row), in the cell's run folder.
const MARKER: &str = "cell.toml";

impl grid::Grid for AblationConfig {
    const FILE: &'static str = "ablation.toml";
    const WHAT: &'static str = "ablation";

    fn dir(&self) -> PathBuf {
        AblationConfig::dir(self)
    }

    fn read(path: &Path) -> Result<Self> {
        AblationConfig::read(path)
    }

    fn grid_text(&self) -> Result<String> {
        grid::to_toml(self, "ablation")
    }
}
