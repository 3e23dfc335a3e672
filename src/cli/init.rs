//! `resnet-train init`: the model a training config would start from, freshly initialised with
//! the config's `seed` (the same weights a run of that config and seed starts with), written as
//! safetensors.

use crate::error::Result;
use crate::model::{resnet, weights, ResNet};
use crate::train::config::{Overrides, TrainConfig};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// A training config (configs/recipes/): its model (arch, activation, order, init, BlurPool,
    /// ...) and `seed`; any training key below overrides it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Classes of the classifier (a run takes them from its dataset).
    #[arg(long, default_value_t = 1000, value_parser = crate::train::config::range::int::<i64>(1, 1_000_000), allow_negative_numbers = true)]
    pub num_classes: i64,
    /// Output file (.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Every training key (`resnet-train train --help`); those of the model and `--seed` matter
    /// here.
    #[command(flatten)]
    pub overrides: Overrides,
}

pub fn run(args: InitArgs) -> Result<()> {
    let base = match &args.config {
        Some(p) => crate::train::config::read_file(p)?,
        None => TrainConfig::default(),
    };
    let train = args.overrides.apply(&base)?;
    train.validate()?;
    let cfg = train.model(args.num_classes);
    cfg.validate()?;
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    // As the trainer's engine builds it: the same seed gives the same weights.
    let _model = crate::model::seeded(train.seed as i64, || ResNet::new(&vs.root(), cfg))?;
    weights::save_model(&args.out, &vs, &cfg, None)?;
    println!(
        "wrote {} ({} {:?} order {}, {} classes, {} parameters)",
        args.out.display(),
        cfg.arch.name(),
        cfg.act.kind,
        cfg.act.order,
        cfg.num_classes,
        resnet::count_params(&vs)
    );
    Ok(())
}
