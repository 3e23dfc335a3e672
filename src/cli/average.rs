//! `resnet-train average RUN|FILE... --out FILE`: the mean of checkpoints' weights as one model
//! file (timm's avg_checkpoints.py), by default of a run's best `--n` epoch checkpoints by
//! `--metric`.

use crate::error::{Error, Result};
use crate::experiments::average::{self, Member};
use crate::model::weights::Which;
use crate::train::run::eval::EvalMetric;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct AverageArgs {
    /// Run folders (their epoch-N.safetensors checkpoints) or model files.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// The averaged model file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Average the best N (timm's avg_checkpoints default: 10).
    #[arg(long, default_value_t = 10, value_parser = crate::train::config::range::int::<usize>(1, 100000), allow_negative_numbers = true)]
    pub n: usize,
    /// What ranks the checkpoints (their recorded evaluation).
    #[arg(long, value_enum, default_value = "top1")]
    pub metric: EvalMetric,
    /// Which weights of each checkpoint: the model's, or their EMA.
    #[arg(long, value_enum, default_value = "model")]
    pub weights: Which,
    /// Average the first N inputs as given, unranked (files without recorded evaluations).
    #[arg(long)]
    pub no_sort: bool,
}

pub fn run(a: AverageArgs) -> Result<()> {
    if a.n == 0 {
        return Err(Error::Usage("--n must be at least 1".into()));
    }
    if a.inputs.contains(&a.out) {
        return Err(Error::file(&a.out, "is one of the inputs: --out must name a new file"));
    }
    let members = average::members(&a.inputs)?;
    let chosen: Vec<Member> = if a.no_sort {
        members.into_iter().take(a.n).collect()
    } else {
        average::best(members, a.n, a.metric, a.weights)?
    };
    average::average(&chosen, a.weights, &a.out)?;
    println!("averaged {} checkpoints ({:?} weights) into {}:", chosen.len(), a.weights, a.out.display());
    for m in &chosen {
        let result = m.result(a.weights).map_or(String::from("not evaluated"), |r| {
            format!("top-1 {:.2}%  top-5 {:.2}%  eval loss {:.4}", r.top1, r.top5, r.loss)
        });
        println!("  {}  {result}", m.path.display());
    }
    println!("evaluate it with: resnet-train eval --checkpoint {} --data DIR", a.out.display());
    Ok(())
}
