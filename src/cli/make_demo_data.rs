//! `resnet-train make-demo-data`: the embedded default dataset, written as an ImageFolder.

use crate::data::synthetic;
use crate::error::{Error, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct MakeDemoDataArgs {
    /// Output folder (gets train/ and val/).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 300, value_parser = crate::train::config::range::int::<u64>(1, 100000), allow_negative_numbers = true)]
    pub train_per_class: u64,
    #[arg(long, default_value_t = 50, value_parser = crate::train::config::range::int::<u64>(0, 100000), allow_negative_numbers = true)]
    pub val_per_class: u64,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64, value_parser = crate::train::config::range::int::<usize>(8, crate::data::transform::MAX_SIZE as u64), allow_negative_numbers = true)]
    pub size: usize,
    #[arg(long, default_value_t = 0, value_parser = crate::train::config::range::int::<u64>(0, i64::MAX as u64), allow_negative_numbers = true)]
    pub seed: u64,
}

pub fn run(a: MakeDemoDataArgs) -> Result<()> {
    if !(8..=1024).contains(&a.size) {
        return Err(Error::Usage(format!("--size {} must be in 8..=1024", a.size)));
    }
    synthetic::write_dataset(&a.out, a.train_per_class, a.val_per_class, a.size, a.seed)?;
    println!(
        "wrote {} classes x ({} train + {} val) {}px JPEGs to {}",
        synthetic::CLASSES.len(),
        a.train_per_class,
        a.val_per_class,
        a.size,
        a.out.display()
    );
    Ok(())
}
