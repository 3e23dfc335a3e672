//! What a run records: per-step `metrics.jsonl`, per-epoch `summary.csv` (timm's columns), and
//! the console. On resume, records past the checkpoint are dropped so the files describe one
//! consistent history.

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub loss_scale: f64,
    pub skipped: bool,
    pub img_per_s: f64,
    pub elapsed_s: f64,
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
}

pub struct RunLog {
    dir: PathBuf,
    jsonl: std::fs::File,
    epochs: Vec<EpochRecord>,
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or(String::new(), |x| format!("{x:.6}"))
}

impl RunLog {
    /// Opens the run's logs, keeping only steps `< keep_steps` and epochs `< keep_epochs`.
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
        let epochs = Self::read_summary(&dir.join("summary.csv"))
            .into_iter()
            .filter(|e| e.epoch < keep_epochs)
            .collect();
        Ok(Self { dir: dir.to_path_buf(), jsonl, epochs })
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
                })
            })
            .collect()
    }

    pub fn step(&mut self, r: &StepRecord) -> Result<()> {
        let line = serde_json::to_string(r).expect("record serialises");
        writeln!(self.jsonl, "{line}").map_err(|e| Error::io(self.dir.join("metrics.jsonl"), e))
    }

    pub fn epoch(&mut self, r: EpochRecord) -> Result<()> {
        self.epochs.retain(|e| e.epoch != r.epoch);
        self.epochs.push(r);
        let mut csv = String::from("epoch,train_loss,eval_loss,eval_top1,eval_top5,lr,elapsed_s\n");
        for e in &self.epochs {
            csv.push_str(&format!(
                "{},{:.6},{},{},{},{:.8},{:.1}\n",
                e.epoch,
                e.train_loss,
                fmt_opt(e.eval_loss),
                fmt_opt(e.eval_top1),
                fmt_opt(e.eval_top5),
                e.lr,
                e.elapsed_s
            ));
        }
        write_atomic(&self.dir.join("summary.csv"), csv.as_bytes())
    }

    pub fn epochs(&self) -> &[EpochRecord] {
        &self.epochs
    }
}
