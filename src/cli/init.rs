//! `resnet-train init`: a freshly initialised model, written as safetensors.

use super::ModelArgs;
use crate::error::Result;
use crate::model::{resnet, weights, ResNet};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Seed of the initialisation.
    #[arg(long, default_value_t = 0, value_parser = crate::train::config::range::int::<i64>(0, i64::MAX as u64), allow_negative_numbers = true)]
    pub seed: i64,
    /// Output file (.safetensors).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: InitArgs) -> Result<()> {
    let cfg = args.model.to_config();
    cfg.validate()?;
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _model = crate::model::seeded(args.seed, || ResNet::new(&vs.root(), cfg))?;
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
