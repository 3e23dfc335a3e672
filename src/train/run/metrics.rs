//! What a run records: per-step `metrics.jsonl`, per-epoch `summary.csv` (timm's columns),
//! TensorBoard event files under `tb/` (`tensorboard --logdir runs`), and the console. On resume, records past the checkpoint are dropped so the files describe one
//! consistent history.

use super::tensorboard::EventWriter;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// JSON has no NaN/inf: serde_json writes them as null, which reads back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    pub epoch: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub lr: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub grad_norm: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub loss_scale: f64,
    pub skipped: bool,
    #[serde(deserialize_with = "nan_if_null")]
    pub img_per_s: f64,
    /// Seconds of this step spent waiting for the loader's batches (input-bound when a large
    /// share of `step_s`); 0 in records from before it was logged.
    #[serde(default)]
    pub data_s: f64,
    /// Wall seconds of this step: gathering its batches, forward, backward, update.
    #[serde(default)]
    pub step_s: f64,
    pub elapsed_s: f64,
    /// Per-site activation statistics, on monitored steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub activations: Vec<crate::train::step::stability::SiteStats>,
    /// Per-site PolyReLU/PolyNorm coefficients after this step, on monitored steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coefficients: Vec<crate::model::SiteCoefficients>,
    /// A guard's action at this step (e.g. a rollback), in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub eval_loss: Option<f64>,
    pub eval_top1: Option<f64>,
    pub eval_top5: Option<f64>,
    pub lr: f64,
    pub elapsed_s: f64,
    /// The EMA model's evaluation (with `model_ema`).
    #[serde(default)]
    pub ema_top1: Option<f64>,
    #[serde(default)]
    pub ema_top5: Option<f64>,
}

pub struct RunLog {
    dir: PathBuf,
    jsonl: std::fs::File,
    epochs: Vec<EpochRecord>,
    tb: EventWriter,
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or(String::new(), |x| format!("{x:.6}"))
}

/// The step records of a run folder's `metrics.jsonl` (a torn last line, from a process killed
/// mid-write, is ignored).
pub fn read_steps(dir: &Path) -> Result<Vec<StepRecord>> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

impl RunLog {
    /// Opens the run's logs, keeping only steps `< keep_steps` and epochs `< keep_epochs`.
    /// TensorBoard's HParams for the run: the config as given and what it resolved to.
    pub fn hparams(
        &mut self,
        cfg: &crate::train::config::TrainConfig,
        experiment: &crate::train::setup::Experiment,
    ) -> Result<()> {
        use super::tensorboard::HParam;
        let mut values = Vec::new();
        let table = toml::Table::try_from(cfg).unwrap_or_default();
        for (k, v) in table {
            let h = match v {
                toml::Value::Integer(i) => HParam::Number(i as f64),
                toml::Value::Float(f) => HParam::Number(f),
                toml::Value::Boolean(b) => HParam::Bool(b),
                toml::Value::String(s) => HParam::Text(s),
                other => HParam::Text(other.to_string()),
            };
            values.push((k, h));
        }
        let e = experiment;
        for (k, v) in [
            ("world_size", e.world_size as f64),
            ("device_batch", e.device_batch as f64),
            ("accum_steps", e.accum_steps as f64),
            ("global_batch", e.global_batch as f64),
            ("peak_lr", e.peak_lr),
            ("steps_per_epoch", e.steps_per_epoch as f64),
            ("total_steps", e.total_steps as f64),
        ] {
            values.push((format!("resolved/{k}"), HParam::Number(v)));
        }
        self.tb.hparams(&values)
    }

    pub fn open(dir: &Path, keep_steps: usize, keep_epochs: usize) -> Result<Self> {
        let jsonl_path = dir.join("metrics.jsonl");
        let kept: Vec<String> = std::fs::read_to_string(&jsonl_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| serde_json::from_str::<StepRecord>(l).is_ok_and(|r| r.step < keep_steps))
            .map(str::to_string)
            .collect();
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        write_atomic(&jsonl_path, text.as_bytes())?;
        let jsonl = std::fs::OpenOptions::new()
            .append(true)
            .open(&jsonl_path)
            .map_err(|e| Error::io(&jsonl_path, e))?;
        let epochs: Vec<EpochRecord> = Self::read_summary(&dir.join("summary.csv"))
            .into_iter()
            .filter(|e| e.epoch < keep_epochs)
            .collect();
        // A resumed run whose logs lost records (a file deleted or cut by hand) says so: training
        // continues exactly, but the curves have a gap that no later step fills.
        let steps: std::collections::BTreeSet<usize> =
            kept.iter().filter_map(|l| serde_json::from_str::<StepRecord>(l).ok().map(|r| r.step)).collect();
        if steps.len() < keep_steps {
            eprintln!(
                "warning: {} holds {} of the run's first {keep_steps} step records (deleted or cut since they were \
                 written): the loss curve will have a gap there; training resumes exactly",
                jsonl_path.display(),
                steps.len()
            );
        }
        let epochs_seen: std::collections::BTreeSet<usize> = epochs.iter().map(|e| e.epoch).collect();
        if epochs_seen.len() < keep_epochs {
            eprintln!(
                "warning: {} holds {} of the run's {keep_epochs} finished epochs (deleted or cut since they were \
                 written): their rows stay missing; the epoch-N checkpoints record their evaluations",
                dir.join("summary.csv").display(),
                epochs_seen.len()
            );
        }
        // Earlier attempts' event files keep what precedes the checkpoint; this attempt adds a
        // file (TensorBoard merges the files of one folder).
        let tb_dir = dir.join("tb");
        let keep_steps = keep_steps as i64;
        let keep_epochs = keep_epochs as i64;
        super::tensorboard::truncate(&tb_dir, |tag, step| {
            // The run's hparams (written once, at its start) stay.
            tag == super::tensorboard::HPARAMS_TAG
                || step < if tag.starts_with("epoch/") { keep_epochs } else { keep_steps }
        })?;
        let tb = EventWriter::create(&tb_dir)?;
        Ok(Self { dir: dir.to_path_buf(), jsonl, epochs, tb })
    }

    pub fn read_summary(path: &Path) -> Vec<EpochRecord> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let num = |s: &str| s.parse::<f64>().ok();
        text.lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f.len() >= 7).then(|| EpochRecord {
                    epoch: f[0].parse().unwrap_or(0),
                    train_loss: num(f[1]).unwrap_or(f64::NAN),
                    eval_loss: num(f[2]),
                    eval_top1: num(f[3]),
                    eval_top5: num(f[4]),
                    lr: num(f[5]).unwrap_or(0.0),
                    elapsed_s: num(f[6]).unwrap_or(0.0),
                    ema_top1: f.get(7).and_then(|s| num(s)),
                    ema_top5: f.get(8).and_then(|s| num(s)),
                })
            })
            .collect()
    }

    pub fn step(&mut self, r: &StepRecord) -> Result<()> {
        let mut scalars: Vec<(String, f64)> = [
            ("train/loss", r.loss),
            ("train/lr", r.lr),
            ("train/grad_norm", r.grad_norm),
            ("train/loss_scale", r.loss_scale),
            ("train/img_per_s", r.img_per_s),
            ("train/data_wait_fraction", if r.step_s > 0.0 { r.data_s / r.step_s } else { 0.0 }),
        ]
        .into_iter()
        .map(|(tag, v)| (tag.to_string(), v))
        .collect();
        for a in &r.activations {
            scalars.push((format!("act_max_abs/{}", a.site), a.max_abs));
            scalars.push((format!("act_nonfinite/{}", a.site), a.nonfinite as f64));
        }
        for c in &r.coefficients {
            for (i, w) in c.weight.iter().enumerate() {
                scalars.push((format!("act_coef/{}/w{}", c.site, i + 1), *w));
            }
            scalars.push((format!("act_coef/{}/b", c.site), c.bias));
        }
        let scalars: Vec<(&str, f64)> = scalars.iter().map(|(t, v)| (t.as_str(), *v)).collect();
        self.tb.scalars(r.step, &scalars)?;
        let line = serde_json::to_string(r).expect("record serialises");
        writeln!(self.jsonl, "{line}").map_err(|e| Error::io(self.dir.join("metrics.jsonl"), e))
    }

    pub fn epoch(&mut self, r: EpochRecord) -> Result<()> {
        let opt = |v: Option<f64>| v.unwrap_or(f64::NAN);
        self.tb.scalars(
            r.epoch,
            &[
                ("epoch/train_loss", r.train_loss),
                ("epoch/eval_loss", opt(r.eval_loss)),
                ("epoch/eval_top1", opt(r.eval_top1)),
                ("epoch/eval_top5", opt(r.eval_top5)),
                ("epoch/ema_top1", opt(r.ema_top1)),
                ("epoch/ema_top5", opt(r.ema_top5)),
            ],
        )?;
        self.epochs.retain(|e| e.epoch != r.epoch);
        self.epochs.push(r);
        let mut csv =
            String::from("epoch,train_loss,eval_loss,eval_top1,eval_top5,lr,elapsed_s,ema_top1,ema_top5\n");
        for e in &self.epochs {
            csv.push_str(&format!(
                "{},{:.6},{},{},{},{:.8},{:.1},{},{}\n",
                e.epoch,
                e.train_loss,
                fmt_opt(e.eval_loss),
                fmt_opt(e.eval_top1),
                fmt_opt(e.eval_top5),
                e.lr,
                e.elapsed_s,
                fmt_opt(e.ema_top1),
                fmt_opt(e.ema_top5)
            ));
        }
        write_atomic(&self.dir.join("summary.csv"), csv.as_bytes())
    }

    pub fn epochs(&self) -> &[EpochRecord] {
        &self.epochs
    }
}
