//! `resnet-train coefficients FILE...`: what the PolyReLU/PolyNorm sites learned. Prints each
//! model file's coefficients site by site in forward order (a table, or JSON), and with `--out`
//! draws each coefficient across depth, one line per file (e.g. epoch-10 vs best, or two runs).
//! Given a run folder instead: its coefficients over training, as logged on monitored steps.

use crate::error::{Error, Result};
use crate::experiments::report::{self, CoefficientSet};
use crate::model::weights::{self, Which, TRAIN_STATE_PREFIX};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct CoefficientsArgs {
    /// Model files (checkpoints of `train`, files of `init`), or one run folder (its
    /// metrics.jsonl: the coefficients over training).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Which weights of a training checkpoint: the model's, or their EMA.
    #[arg(long, value_enum, default_value = "model")]
    pub weights: Which,
    /// One JSON object per file on stdout instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Also draw each coefficient across depth (a run folder: over training) to this .svg or .png.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(a: CoefficientsArgs) -> Result<()> {
    if a.files.iter().any(|p| p.is_dir()) {
        return run_folder(&a);
    }
    let mut sets = Vec::new();
    for path in &a.files {
        let file = weights::read(path)?;
        let cfg = file.model_config(path)?;
        let prefix = match a.weights {
            Which::Model => String::new(),
            Which::Ema => format!("{TRAIN_STATE_PREFIX}ema."),
        };
        if a.weights == Which::Ema && !file.tensors.keys().any(|k| k.starts_with(&prefix)) {
            return Err(Error::file(
                path,
                "holds no EMA weights (trained without --model-ema): drop --weights ema",
            ));
        }
        let sites = cfg
            .act_coefficients(&|name| file.tensors.get(&format!("{prefix}{name}")).map(|t| t.shallow_clone()))
            .map_err(|e| match a.weights {
                Which::Ema => {
                    Error::file(path, format!("holds no EMA coefficients ({e}): drop --weights ema"))
                }
                Which::Model => Error::file(path, e.to_string()),
            })?;
        if sites.is_empty() {
            eprintln!("{}: a ReLU model: no coefficients", path.display());
        }
        // The run folder and the file (`runs/NAME/best.safetensors` -> `NAME/best.safetensors`).
        let label = match (path.parent().and_then(|p| p.file_name()), path.file_name()) {
            (Some(dir), Some(f)) => format!("{}/{}", dir.to_string_lossy(), f.to_string_lossy()),
            _ => path.display().to_string(),
        };
        if a.json {
            let v = serde_json::json!({"file": label, "act": cfg.act.kind, "order": cfg.act.order, "sites": sites});
            println!("{v}");
        } else if !sites.is_empty() {
            println!("{label}: {} order {}", format!("{:?}", cfg.act.kind).to_lowercase(), cfg.act.order);
            print_table(&sites);
        }
        sets.push(CoefficientSet { label, sites });
    }
    if let Some(out) = &a.out {
        report::draw_coefficients(&sets, out)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

/// A run folder: the coefficients it logged on its monitored steps (the table: the last of them).
fn run_folder(a: &CoefficientsArgs) -> Result<()> {
    let [dir] = a.files.as_slice() else {
        return Err(Error::Usage(
            "give one run folder, or model files (not both, nor several folders)".into(),
        ));
    };
    if a.weights == Which::Ema {
        return Err(Error::Usage(
            "--weights ema applies to model files: runs log the model's coefficients".into(),
        ));
    }
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut steps = Vec::new();
    for (i, line) in text.lines().enumerate() {
        // A killed run's last line may be torn; every other line must parse.
        let rec: crate::train::run::metrics::StepRecord = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(_) if i + 1 == text.lines().count() => break,
            Err(e) => return Err(Error::file(&path, format!("line {}: {e}", i + 1))),
        };
        if !rec.coefficients.is_empty() {
            steps.push((rec.step, rec.coefficients));
        }
    }
    let Some((last_step, last)) = steps.last() else {
        return Err(Error::file(&path, "no coefficients logged (a ReLU run, or --monitor-every 0)"));
    };
    if a.json {
        let rows: Vec<_> =
            steps.iter().map(|(step, sites)| serde_json::json!({"step": step, "sites": sites})).collect();
        println!("{}", serde_json::json!({"run": dir, "steps": rows}));
    } else {
        println!("{}: {} logged steps; at step {last_step}:", dir.display(), steps.len());
        print_table(last);
    }
    if let Some(out) = &a.out {
        report::draw_coefficient_trajectories(&steps, out)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

fn print_table(sites: &[crate::model::SiteCoefficients]) {
    let k = sites.first().map_or(0, |c| c.weight.len());
    print!("{:<18}", "site");
    for i in 1..=k {
        print!("{:>10}", format!("w{i}"));
    }
    println!("{:>10}", "b");
    for c in sites {
        print!("{:<18}", c.site);
        for w in &c.weight {
            print!("{w:>10.4}");
        }
        println!("{:>10.4}", c.bias);
    }
}
